"""One model for any input size (timm's dynamic_img_size): the position table resampled inside
the graph with timm's kernel; logits against timm's dynamic models, padding, fit with mixed
sizes, save/load, SavedModel and LiteRT exports, maps and rollout at the image's size."""

import numpy as np
import pytest

import keras_vitnt
from keras_vitnt.layers.embedding import aa_bicubic_weights
from keras_vitnt.weights.resample import aa_bicubic_matrix
from timm_oracle import normalised_images, perturbed_timm_model, relative_error, save_checkpoint

TOL = 1e-5


@pytest.mark.parametrize("in_size,out_size", [(14, 4), (14, 5), (14, 14), (14, 16), (37, 6), (7, 30), (24, 23)])
def test_in_graph_kernel_equals_the_checkpoint_resampler(in_size, out_size):
    """The graph's antialiased bicubic weights (any out size at run time) equal the numpy kernel
    the loader resamples files with (itself tested against timm)."""
    np.testing.assert_allclose(np.asarray(aa_bicubic_weights(in_size, out_size)), aa_bicubic_matrix(in_size, out_size),
                               rtol=1e-5, atol=1e-6)  # float32 against float64; a = -0.75 instead of -0.5: 1e-2


def _dynamic_pair(name, tmp_path, **kw):
    tm = perturbed_timm_model(name, num_classes=10, depth=2, dynamic_img_size=True, **kw)
    path = save_checkpoint(tm, tmp_path / f"{name}.safetensors")
    model = keras_vitnt.create_model(name, weights=str(path), depth=2, input_shape=(None, None, 3),
                                     include_preprocessing=False, classifier_activation=None, **kw)
    return tm, model


def _timm_logits(tm, x):
    import torch

    with torch.no_grad():
        return tm(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224",
                                  "vit_small_patch14_reg4_dinov2"])
def test_one_model_matches_timm_dynamic_at_three_sizes(name, tmp_path):
    tm, model = _dynamic_pair(name, tmp_path)
    assert model.input_shape == (None, None, None, 3)
    p = tm.patch_embed.patch_size[0]
    for h, w in ((4 * p, 4 * p), (2 * p, 5 * p), (17 * p, 15 * p)):  # down (antialiased), non-square, up
        x = normalised_images(1, h, w)
        err = relative_error(np.asarray(model.predict_on_batch(x)), _timm_logits(tm, x))
        assert err <= TOL, (h, w, err)


def test_dynamic_img_pad_matches_timm_at_sizes_the_patch_does_not_divide(tmp_path):
    tm, model = _dynamic_pair("vit_tiny_patch16_224", tmp_path, dynamic_img_pad=True)
    for h, w in ((50, 70), (33, 48)):
        x = normalised_images(2, h, w)
        assert relative_error(np.asarray(model.predict_on_batch(x)), _timm_logits(tm, x)) <= TOL
    # the token maps of a padding model have the rounded-up grid
    assert keras_vitnt.feature_extractor(model, indices=1).predict_on_batch(x).shape == (2, 3, 3, 192)


def test_dynamic_img_size_with_a_fixed_input_shape_keeps_the_table_at_that_size():
    """timm's img_size=64, dynamic_img_size=True: a 4x4 table, any input."""
    from keras_vitnt.exporter import native_size

    model = keras_vitnt.create_model("vit_tiny_patch16_224", weights=None, depth=1, input_shape=(64, 64, 3),
                                     dynamic_img_size=True)
    assert model.input_shape == (None, None, None, 3) and model.get_layer("pos_embed").grid_size == (4, 4)
    assert native_size(model) == (64, 64)
    tnt = keras_vitnt.create_model("tnt_s_patch16_224", weights=None, depth=1, input_shape=(None, None, 3))
    assert native_size(tnt) == (224, 224)
    with pytest.raises(ValueError, match="DiffParallelScalingBlock"):
        keras_vitnt.create_model("vit_pwee_patch16_reg1_gap_256", weights=None, attn_layer="diff")


def test_fit_with_mixed_sizes_save_load_and_exports(tmp_path):
    """model.fit on batches of two sizes; the .keras file and a SavedModel with unknown height and
    width, served by plain TensorFlow at two sizes in a process that had not imported keras_vitnt
    (which then loads the .keras file);
    LiteRT at the native size (said in the log) or at input_size; maps and rollout at the image's size."""
    import subprocess
    import sys

    import keras
    import tensorflow as tf

    from keras_vitnt import visualize as vz

    model = keras_vitnt.ViT("Ti/16", weights=None, input_shape=(None, None, 3), depth=2, classes=3)
    rng = np.random.default_rng(0)

    def batches():
        for i in range(4):
            size = (32, 48) if i % 2 else (64, 32)
            yield rng.uniform(0, 255, (4, *size, 3)).astype("float32"), rng.integers(0, 3, 4)

    ds = tf.data.Dataset.from_generator(batches, output_signature=(
        tf.TensorSpec((None, None, None, 3), tf.float32), tf.TensorSpec((None,), tf.int64)))
    before = np.asarray(model.get_layer("pos_embed").pos_embed).copy()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(ds, epochs=1, verbose=0)
    assert not np.array_equal(before, np.asarray(model.get_layer("pos_embed").pos_embed))  # trained through resampling

    xs = [rng.uniform(0, 255, (2, h, w, 3)).astype("float32") for h, w in ((48, 80), (224, 224))]
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    for x in xs:
        np.testing.assert_allclose(again.predict_on_batch(x), model.predict_on_batch(x), rtol=1e-5, atol=1e-6)

    keras_vitnt.export(model, tmp_path / "sm", format="saved_model")
    np.savez(tmp_path / "io.npz", a=xs[0], b=xs[1], ya=model.predict_on_batch(xs[0]), yb=model.predict_on_batch(xs[1]))
    code = f"""
import sys, numpy as np, tensorflow as tf
io = np.load({str(tmp_path / "io.npz")!r})
loaded = tf.saved_model.load({str(tmp_path / "sm")!r})  # kept: it holds the variables
for x, y in (("a", "ya"), ("b", "yb")):
    assert np.allclose(loaded.serve(io[x]).numpy(), io[y], rtol=1e-5, atol=1e-6), x
assert "keras_vitnt" not in sys.modules
import keras, keras_vitnt  # and the .keras file in a new process, with plain Keras after import keras_vitnt
model = keras.models.load_model({str(tmp_path / "m.keras")!r})
for x, y in (("a", "ya"), ("b", "yb")):
    assert np.allclose(model.predict_on_batch(io[x]), io[y], rtol=1e-5, atol=1e-6), x
print("served")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "served" in out.stdout, out.stderr[-3000:]

    report = keras_vitnt.export(model, tmp_path / "native.tflite")
    assert report["max_relative_error"] <= 1e-4
    import json

    assert json.loads((tmp_path / "native.tflite.json").read_text())["input_shape"] == [224, 224, 3]
    from keras_vitnt.exporter import artifact_size

    assert artifact_size(model, "litert", (48, 80)) == (48, 80) and artifact_size(model, "onnx") == (None, None)

    heat = vz.attention_rollout(model, xs[0][0])
    assert heat.shape == (48, 80)
    maps = keras_vitnt.feature_extractor(model, indices=1)
    assert maps.predict_on_batch(xs[0]).shape == (2, 3, 5, 192)


@pytest.mark.parametrize("name", ["tnt_s_patch16_224", "tnt_s_legacy_patch16_224"])
def test_tnt_for_any_size_equals_tnts_built_for_each_size_from_the_same_file(name, tmp_path):
    """timm has no dynamic TNT: the dynamic one (patch count and outer position table in the
    graph) against TNTs built for each size, whose tables the loader resamples."""
    path = save_checkpoint(perturbed_timm_model(name, num_classes=10, depth=1), tmp_path / "t.safetensors")
    common = dict(weights=str(path), depth=1, include_preprocessing=False, classifier_activation=None)
    dyn = keras_vitnt.create_model(name, input_shape=(None, None, 3), **common)
    for h, w in ((64, 96), (256, 240)):
        fixed = keras_vitnt.create_model(name, input_shape=(h, w, 3), **common)
        x = normalised_images(1, h, w)
        assert relative_error(np.asarray(dyn.predict_on_batch(x)), np.asarray(fixed.predict_on_batch(x))) <= TOL
