"""Parity with timm: a timm model with every tensor perturbed is saved to a file, loaded
through keras_vitnt's loader (the path hub weights take) and its logits compared."""

import numpy as np
import pytest

import keras_vitnt
from keras_vitnt.models import registry
from timm_oracle import normalised_images, perturbed_timm_model, relative_error, save_checkpoint, timm_logits

TOL = 1e-4
FAST = [
    "vit_tiny_patch16_224",
    "vit_small_patch32_384",
    "deit_tiny_distilled_patch16_224",
    "tnt_s_patch16_224",
    "tnt_s_legacy_patch16_224",
]
SLOW = [n for n in registry.list_models() if n not in FAST]


def _parity(name, tmp_path, ext=".safetensors", **timm_kwargs):
    # num_classes explicit: timm takes the default tag's class count, 0 for headless tags (orig_in21k, dino)
    tm = perturbed_timm_model(name, **{"num_classes": 1000, **timm_kwargs})
    path = save_checkpoint(tm, tmp_path / f"{name}{ext}")
    size = tm.pretrained_cfg["input_size"][1]
    x = normalised_images(2, size, size)
    model = keras_vitnt.create_model(name, weights=str(path), include_preprocessing=False, classifier_activation=None)
    err = relative_error(np.asarray(model.predict_on_batch(x)), timm_logits(tm, x))
    print(f"{name}{ext}: relative max error {err:.2e}")
    return err


@pytest.mark.parametrize("name", FAST)
def test_parity_fast(name, tmp_path):
    assert _parity(name, tmp_path) <= TOL


def test_parity_from_torch_pth(tmp_path):
    assert _parity("deit_tiny_patch16_224", tmp_path, ext=".pth") <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_parity_slow(name, tmp_path):
    assert _parity(name, tmp_path) <= TOL


@pytest.fixture(scope="module")
def deit_distilled(tmp_path_factory):
    tm = perturbed_timm_model("deit_tiny_distilled_patch16_224", seed=3)
    return tm, save_checkpoint(tm, tmp_path_factory.mktemp("ckpt") / "deit.safetensors")


def test_preprocessing_inside_matches_timm_normalisation(deit_distilled):
    """include_preprocessing=True takes 0..255 RGB and normalises with the DeiT mean/std."""
    tm, path = deit_distilled
    rgb = np.random.default_rng(1).uniform(0, 255, (2, 224, 224, 3)).astype("float32")
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    ref = timm_logits(tm, ((rgb / 255.0 - mean) / std).astype("float32"))
    model = keras_vitnt.create_model(
        "deit_tiny_distilled_patch16_224", weights=str(path), classifier_activation=None
    )
    assert relative_error(np.asarray(model.predict_on_batch(rgb)), ref) <= TOL


def test_headless_outputs_match_timm_features_and_pre_logits(deit_distilled):
    import torch

    tm, path = deit_distilled
    x = normalised_images(2, 224, 224, seed=2)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    with torch.inference_mode():
        feats = tm.forward_features(xt)
        pre = tm.forward_head(feats, pre_logits=True).numpy()
        feats = feats.numpy()
    kw = dict(weights=str(path), include_preprocessing=False, include_top=False)
    seq = keras_vitnt.create_model("deit_tiny_distilled_patch16_224", pooling=None, **kw)
    tok = keras_vitnt.create_model("deit_tiny_distilled_patch16_224", pooling="token", **kw)
    avg = keras_vitnt.create_model("deit_tiny_distilled_patch16_224", pooling="avg", **kw)
    assert relative_error(np.asarray(seq.predict_on_batch(x)), feats) <= TOL
    assert relative_error(np.asarray(tok.predict_on_batch(x)), pre) <= TOL  # mean of cls and dist tokens
    assert relative_error(np.asarray(avg.predict_on_batch(x)), feats[:, 2:].mean(1)) <= TOL


def test_small_custom_tnt_matches_timm(tmp_path):
    """Overrides use timm's keyword names: the same keywords give the same network."""
    kw = dict(img_size=32, patch_size=8, first_stride=2, depth=2, num_classes=10)
    tm = perturbed_timm_model("tnt_s_patch16_224", **kw)
    path = save_checkpoint(tm, tmp_path / "small_tnt.safetensors")
    x = normalised_images(3, 32, 32)
    model = keras_vitnt.TNT(
        "S", weights=str(path), input_shape=(32, 32, 3), classes=10, patch_size=8, first_stride=2, depth=2,
        include_preprocessing=False, classifier_activation=None,
    )
    assert relative_error(np.asarray(model.predict_on_batch(x)), timm_logits(tm, x)) <= TOL


def test_global_avg_pool_vit_matches_timm_fc_norm(tmp_path):
    kw = dict(img_size=64, depth=2, class_token=False, global_pool="avg", num_classes=7)
    tm = perturbed_timm_model("vit_tiny_patch16_224", **kw)
    path = save_checkpoint(tm, tmp_path / "gap.safetensors")
    x = normalised_images(2, 64, 64)
    model = keras_vitnt.ViT(
        "Ti/16", weights=str(path), input_shape=(64, 64, 3), classes=7, depth=2, class_token=False,
        global_pool="avg", include_preprocessing=False, classifier_activation=None,
    )
    assert relative_error(np.asarray(model.predict_on_batch(x)), timm_logits(tm, x)) <= TOL
