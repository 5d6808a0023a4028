"""Loading checkpoint files: timm's head rules, clear errors for every bad input, no
partial assignment, and the hub path failing fast and loudly when offline."""

import logging
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest

import keras_vitnt
from keras_vitnt.weights import CheckpointMismatchError, load_state_dict, read_state_dict
from timm_oracle import normalised_images, perturbed_timm_model, relative_error, save_checkpoint, timm_logits

SMALL_VIT = dict(img_size=32, patch_size=8, depth=2)


@pytest.fixture(scope="module")
def vit_ckpt(tmp_path_factory):
    tm = perturbed_timm_model("vit_tiny_patch16_224", **SMALL_VIT)
    return tm, save_checkpoint(tm, tmp_path_factory.mktemp("ckpt") / "vit.safetensors")


def small(weights, **kw):
    kw = {"input_shape": (32, 32, 3), "patch_size": 8, "depth": 2, "include_preprocessing": False, **kw}
    return keras_vitnt.create_model("vit_tiny_patch16_224", weights=weights, **kw)


def block_kernel(model):
    return np.asarray(model.get_layer("blocks_1").attn.qkv.kernel)


def test_fewer_classes_loads_backbone_and_starts_fresh_head(vit_ckpt, caplog):
    tm, path = vit_ckpt
    with caplog.at_level(logging.WARNING, logger="keras_vitnt"):
        model = small(str(path), classes=10)
    assert "1000 classes" in caplog.text and "fresh" in caplog.text
    expected = tm.blocks[1].attn.qkv.weight.detach().numpy().T
    np.testing.assert_allclose(block_kernel(model), expected)
    assert model.get_layer("head").kernel.shape == (192, 10)
    assert np.abs(np.asarray(model.get_layer("head").bias)).max() == 0  # fresh: zero bias


def test_include_top_false_drops_the_head(vit_ckpt):
    tm, path = vit_ckpt
    model = small(str(path), include_top=False, pooling="token")
    import torch

    x = normalised_images(2, 32, 32)
    with torch.inference_mode():
        ref = tm.forward_head(tm.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())),
                              pre_logits=True).numpy()
    assert relative_error(np.asarray(model.predict_on_batch(x)), ref) <= 1e-4


def test_checkpoint_of_another_architecture_names_the_tensors(tmp_path):
    tnt = perturbed_timm_model("tnt_s_patch16_224", img_size=32, patch_size=8, first_stride=2, depth=1)
    path = save_checkpoint(tnt, tmp_path / "tnt.safetensors")
    with pytest.raises(CheckpointMismatchError) as e:
        small(str(path))
    msg = str(e.value)
    assert "tnt.safetensors" in msg and "looks like a TNT checkpoint" in msg
    assert "blocks.0.attn.qkv.weight" in msg and "blocks.0.attn_in.qk.weight" in msg


def test_depth_mismatch_names_the_missing_blocks(vit_ckpt):
    _, path = vit_ckpt
    with pytest.raises(CheckpointMismatchError, match=r"blocks\.2\.attn\.qkv\.weight"):
        small(str(path), depth=3)


def test_position_embedding_for_another_grid_is_resampled_and_logged(vit_ckpt, caplog):
    _, path = vit_ckpt
    with caplog.at_level(logging.INFO, logger="keras_vitnt"):
        model = small(str(path), input_shape=(48, 48, 3))
    assert "resampled pos_embed from a 4x4 to a 6x6 patch grid" in caplog.text
    assert model.get_layer("pos_embed").pos_embed.shape == (1, 37, 192)


def test_non_float_tensor_is_refused(vit_ckpt):
    _, path = vit_ckpt
    sd = read_state_dict(path)
    sd["norm.weight"] = sd["norm.weight"].astype("int64")
    with pytest.raises(CheckpointMismatchError, match=r"not floating point: norm\.weight \(int64\)"):
        load_state_dict(small(None), sd, family="vit")


def test_failed_load_assigns_nothing(vit_ckpt):
    _, path = vit_ckpt
    model = small(None)
    before = [np.asarray(w).copy() for w in model.weights]
    sd = read_state_dict(path)
    sd["blocks.1.mlp.fc2.weight"] = sd["blocks.1.mlp.fc2.weight"][:, :10]
    with pytest.raises(CheckpointMismatchError, match=r"blocks\.1\.mlp\.fc2\.weight"):
        load_state_dict(model, sd, family="vit")
    assert all(np.array_equal(b, np.asarray(w)) for b, w in zip(before, model.weights))


def test_truncated_safetensors_names_the_file(vit_ckpt, tmp_path):
    _, path = vit_ckpt
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated.safetensors.*delete it"):
        small(str(bad))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path, pickle_module=pickle)
    with pytest.raises(ValueError, match="evil.pth.*weights_only=True"):
        small(str(path))


def test_unsupported_format(tmp_path):
    path = tmp_path / "weights.onnx"
    path.write_bytes(b"xx")
    with pytest.raises(ValueError, match="Unsupported checkpoint format"):
        small(str(path))


def test_original_tnt_release_names_are_accepted(tmp_path):
    """The filter renames the original TNT release's keys as timm's checkpoint_filter_fn."""
    kw = dict(img_size=32, patch_size=8, first_stride=2, depth=1, num_classes=5)
    tm = perturbed_timm_model("tnt_s_patch16_224", **kw)
    back = {"patch_pos": "outer_pos", "pixel_pos": "inner_pos", "pixel_embed": "patch_embed",
            "norm1_proj": "proj_norm1", "norm2_proj": "proj_norm2", "norm_in": "inner_norm1",
            "attn_in": "inner_attn", "norm_mlp_in": "inner_norm2", "mlp_in": "inner_mlp",
            "norm_out": "outer_norm1", "attn_out": "outer_attn", "norm_mlp": "outer_norm2", "mlp": "outer_mlp"}
    sd = {}
    for k, v in tm.state_dict().items():
        v = v.numpy()
        if k == "pixel_pos":
            v = v.reshape(1, v.shape[1], -1).transpose(0, 2, 1)  # original: (1, words, c)
        sd[".".join(back.get(p, p) for p in k.split("."))] = v
    assert "blocks.0.outer_mlp.fc1.weight" in sd
    model = keras_vitnt.TNT("S", weights=None, input_shape=(32, 32, 3), classes=5, patch_size=8, first_stride=2,
                            depth=1, include_preprocessing=False, classifier_activation=None)
    load_state_dict(model, sd, family="tnt")
    x = normalised_images(2, 32, 32)
    assert relative_error(np.asarray(model.predict_on_batch(x)), timm_logits(tm, x)) <= 1e-4


def test_pretrained_download_fails_fast_and_clearly_when_offline(tmp_path):
    code = (
        "import keras_vitnt\n"
        "try:\n"
        "    keras_vitnt.create_model('deit_tiny_patch16_224', weights='imagenet')\n"
        "except keras_vitnt.WeightsUnavailableError as e:\n"
        "    print('ERROR:', e)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), TF_CPP_MIN_LOG_LEVEL="3")
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.time() - t0
    assert "ERROR:" in out.stdout, out.stdout + out.stderr
    msg = out.stdout
    assert "timm/deit_tiny_patch16_224.fb_in1k/model.safetensors" in msg
    assert str(tmp_path / "hf") in msg and "HF_HUB_OFFLINE" in msg and "weights=<path" in msg
    assert elapsed < 60


def test_headless_checkpoint_with_include_top_starts_fresh_head_and_logs(tmp_path, caplog):
    """Like the in21k `orig_in21k` tags: a checkpoint without head, loaded with a head."""
    tm = perturbed_timm_model("vit_tiny_patch16_224", num_classes=0, **SMALL_VIT)
    path = save_checkpoint(tm, tmp_path / "headless.safetensors")
    with caplog.at_level(logging.WARNING, logger="keras_vitnt"):
        model = small(str(path), classes=1000)
    assert "has no classifier head" in caplog.text
    np.testing.assert_allclose(block_kernel(model), tm.blocks[1].attn.qkv.weight.detach().numpy().T)
    features = small(str(path), include_top=False, pooling="token")
    x = normalised_images(1, 32, 32)
    assert relative_error(np.asarray(features.predict_on_batch(x)), timm_logits(tm, x)) <= 1e-4
