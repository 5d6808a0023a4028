"""keras_vitnt.feature_extractor against timm's forward_intermediates (random weights, every
tensor perturbed, loaded through the hub loader), and its weights shared with the model."""

import keras
import numpy as np
import pytest

import keras_vitnt
from timm_oracle import normalised_images, perturbed_timm_model, relative_error, save_checkpoint

TOL = 1e-5


def _pair(name, tmp_path, size=64, **kw):
    tm = perturbed_timm_model(name, num_classes=10, img_size=size, **kw)
    path = save_checkpoint(tm, tmp_path / f"{name}.safetensors")
    model = keras_vitnt.create_model(name, weights=str(path), input_shape=(size, size, 3), include_preprocessing=False,
                                     **kw)
    return tm, model


def _timm(tm, x, **kw):
    import torch

    with torch.no_grad():
        out = tm.forward_intermediates(torch.from_numpy(x).permute(0, 3, 1, 2), intermediates_only=True, **kw)
    return out


@pytest.mark.parametrize("indices,norm", [(2, False), ([0, -1], True), (None, True)])
def test_vit_maps_equal_timm_forward_intermediates(indices, norm, tmp_path):
    tm, model = _pair("vit_small_patch14_reg4_dinov2", tmp_path, size=56, depth=3)  # class token + 4 registers
    x = normalised_images(2, 56, 56)
    ours = keras_vitnt.feature_extractor(model, indices=indices, norm=norm).predict_on_batch(x)
    ref = _timm(tm, x, indices=indices, norm=norm)
    assert len(ours) == len(ref) == (len(indices) if isinstance(indices, list) else indices or 3)
    for a, b in zip(ours, ref):
        assert a.shape == (2, 4, 4, 384)
        assert relative_error(np.asarray(a), b.permute(0, 2, 3, 1).numpy()) <= TOL


def test_distilled_deit_prefix_tokens_and_formats(tmp_path):
    tm, model = _pair("deit_tiny_distilled_patch16_224", tmp_path, depth=2)
    x = normalised_images(2, 64, 64)
    maps = keras_vitnt.feature_extractor(model, indices=1, norm=True, return_prefix_tokens=True).predict_on_batch(x)
    (ref_map, ref_prefix), = _timm(tm, x, indices=1, norm=True, return_prefix_tokens=True)
    ours_map, ours_prefix = maps  # one block: Keras returns its output alone
    assert ours_prefix.shape == (2, 2, 192)  # class and distillation tokens
    assert relative_error(np.asarray(ours_map), ref_map.permute(0, 2, 3, 1).numpy()) <= TOL
    assert relative_error(np.asarray(ours_prefix), ref_prefix.numpy()) <= TOL
    nchw = keras_vitnt.feature_extractor(model, indices=[0], output_fmt="NCHW").predict_on_batch(x)
    nlc = keras_vitnt.feature_extractor(model, indices=[0], output_fmt="NLC").predict_on_batch(x)
    assert relative_error(np.asarray(nchw), _timm(tm, x, indices=[0])[0].numpy()) <= TOL
    np.testing.assert_array_equal(np.asarray(nlc), np.asarray(nchw).reshape(2, 192, 16).transpose(0, 2, 1))


def test_tnt_maps_equal_timm(tmp_path):
    tm, model = _pair("tnt_s_patch16_224", tmp_path, depth=2)
    x = normalised_images(2, 64, 64)
    ours = keras_vitnt.feature_extractor(model, indices=2, norm=True).predict_on_batch(x)
    for a, b in zip(ours, _timm(tm, x, indices=2, norm=True)):
        assert relative_error(np.asarray(a), b.permute(0, 2, 3, 1).numpy()) <= TOL


def test_weights_are_shared_saved_and_fine_tuned_with_the_backbone(tmp_path):
    model = keras_vitnt.ViT("Ti/16", weights=None, input_shape=(32, 32, 3), depth=2, classes=3)
    ext = keras_vitnt.feature_extractor(model, indices=[-1])
    assert {id(w) for w in ext.weights} <= {id(w) for w in model.weights}
    # a 1x1-conv segmentation head on the last map, trained: the backbone's own weights move
    head = keras.layers.Conv2D(2, 1)(ext.outputs[0])
    seg = keras.Model(ext.inputs, head)
    before = np.asarray(model.get_layer("blocks_1").weights[0]).copy()
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = np.random.default_rng(1).integers(0, 2, (8, 2, 2))
    seg.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    seg.fit(x, y, epochs=1, verbose=0)
    assert not np.array_equal(before, np.asarray(model.get_layer("blocks_1").weights[0]))
    ext.save(tmp_path / "ext.keras")
    again = keras.models.load_model(tmp_path / "ext.keras")
    np.testing.assert_allclose(again.predict_on_batch(x), ext.predict_on_batch(x), rtol=1e-5, atol=1e-6)


def test_bad_indices_and_models_raise_clearly():
    model = keras_vitnt.ViT("Ti/16", weights=None, input_shape=(32, 32, 3), depth=2, classes=3)
    with pytest.raises(ValueError, match="from 1 to 2"):
        keras_vitnt.feature_extractor(model, indices=3)
    with pytest.raises(ValueError, match="block 5 does not exist"):
        keras_vitnt.feature_extractor(model, indices=[0, 5])
    with pytest.raises(ValueError, match="output_fmt"):
        keras_vitnt.feature_extractor(model, output_fmt="NWHC")
    wrapper = keras.Sequential([keras.Input((32, 32, 3)), model])
    with pytest.raises(ValueError, match="not a model wrapping it"):
        keras_vitnt.feature_extractor(wrapper)
