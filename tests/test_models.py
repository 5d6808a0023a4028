"""Model construction: keras.applications conventions, .keras round trips, any input
size, training of the position-embedding kinds, no rank > 4 tensors in the graph."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_vitnt


def small_vit(**kw):
    kw = {"weights": None, "input_shape": (32, 32, 3), "classes": 10, "depth": 2, **kw}
    return keras_vitnt.ViT("Ti/4", **kw)


def small_tnt(**kw):
    kw = {"weights": None, "input_shape": (32, 32, 3), "classes": 10, "patch_size": 8, "first_stride": 2,
          "depth": 2, **kw}
    return keras_vitnt.TNT("S", **kw)


def images(n=2, h=32, w=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, h, w, 3)).astype("float32")


def test_small_vit_for_32x32_images():
    model = keras_vitnt.ViT("Ti/4", weights=None, input_shape=(32, 32, 3), classes=10, depth=4)
    assert model.output_shape == (None, 10)
    assert len([layer for layer in model.layers if layer.name.startswith("blocks_")]) == 4
    probs = np.asarray(model.predict_on_batch(images()))
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("build", [small_vit, small_tnt,
                                   lambda: small_vit(distilled=True, pos_embed="learned_2d"),
                                   lambda: small_tnt(legacy=True, pos_embed="sincos_2d", drop_path_rate=0.1)],
                         ids=["vit", "tnt", "deit-distilled-2d", "tnt-legacy-sincos"])
def test_keras_save_load_round_trip(build, tmp_path):
    model = build()
    x = images()
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded.predict_on_batch(x)), np.asarray(model.predict_on_batch(x)))
    assert loaded.count_params() == model.count_params()


def test_weights_h5_round_trip(tmp_path):
    a, b = small_vit(), small_vit()
    path = str(tmp_path / "w.weights.h5")
    a.save_weights(path)
    b2 = keras_vitnt.ViT("Ti/4", weights=path, input_shape=(32, 32, 3), classes=10, depth=2)
    x = images()
    np.testing.assert_array_equal(np.asarray(b2.predict_on_batch(x)), np.asarray(a.predict_on_batch(x)))
    assert not np.allclose(np.asarray(b.predict_on_batch(x)), np.asarray(a.predict_on_batch(x)))


@pytest.mark.parametrize("pooling,shape", [(None, (None, 17, 192)), ("token", (None, 192)), ("avg", (None, 192))])
def test_include_top_false_pooling_shapes(pooling, shape):
    model = small_vit(include_top=False, pooling=pooling, input_shape=(16, 16, 3))
    assert model.output_shape == shape
    assert np.asarray(model.predict_on_batch(images(h=16, w=16))).shape == (2,) + shape[1:]


def test_tnt_include_top_false():
    model = small_tnt(include_top=False, pooling=None)
    assert model.output_shape == (None, 17, 384)


def test_non_square_inputs():
    vit = keras_vitnt.create_model("vit_tiny_patch16_224", weights=None, input_shape=(48, 80, 3), depth=1)
    assert vit.get_layer("pos_embed").pos_embed.shape == (1, 1 + 3 * 5, 192)
    assert np.asarray(vit.predict_on_batch(images(h=48, w=80))).shape == (2, 1000)
    tnt = keras_vitnt.TNT("S", weights=None, input_shape=(32, 64, 3), depth=1)
    assert np.asarray(tnt.predict_on_batch(images(h=32, w=64))).shape == (2, 1000)


def test_input_tensor():
    inp = keras.Input((32, 32, 3))
    model = small_vit(input_tensor=inp, input_shape=None)
    assert model.inputs[0] is inp and model.output_shape == (None, 10)


@pytest.mark.parametrize("kwargs,match", [
    (dict(input_shape=(30, 32, 3)), "not divisible by the patch size 4"),
    (dict(input_shape=(None, None, 3)), "must be fixed"),
    (dict(input_shape=(32, 32)), r"\(height, width, 3\)"),
    (dict(pooling="token"), "include_top=False"),
    (dict(include_top=False, pooling="max"), "pooling"),
    (dict(dept=3), "dept"),
    (dict(pos_embed="rope"), "pos_embed"),
    (dict(class_token=False), "global_pool='avg'"),
    (dict(weights="imagenet"), "not a registered timm model"),
    (dict(weights="no_such_file.safetensors"), "does not exist"),
])
def test_bad_arguments_raise_clearly(kwargs, match):
    with pytest.raises((ValueError, TypeError, FileNotFoundError), match=match):
        small_vit(**kwargs)


def _fit_losses(model, steps=12, seed=0):
    rng = np.random.default_rng(seed)
    x = images(32, seed=seed)
    y = rng.integers(0, 10, 32)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    hist = model.fit(x, y, batch_size=8, epochs=steps // 4, verbose=0, shuffle=False)
    return hist.history["loss"]


@pytest.mark.parametrize("build", [
    lambda: small_vit(pos_embed="learned_2d", drop_path_rate=0.1),
    lambda: small_vit(pos_embed="sincos_2d"),
    lambda: small_vit(class_token=False, global_pool="avg", pos_embed="none"),
    lambda: small_tnt(drop_path_rate=0.1),
], ids=["vit-learned_2d", "vit-sincos_2d", "vit-gap-none", "tnt-32x32"])
def test_small_models_train(build):
    model = build()
    before = [np.asarray(w).copy() for w in model.trainable_weights]
    losses = _fit_losses(model)
    assert losses[-1] < losses[0] * 0.9, losses
    moved = [not np.array_equal(b, np.asarray(w)) for b, w in zip(before, model.trainable_weights)]
    assert all(moved), [w.path for w, m in zip(model.trainable_weights, moved) if not m]


def max_graph_rank(model, shape):
    fn = tf.function(lambda x: model(x, training=False))
    graph = fn.get_concrete_function(tf.TensorSpec((None,) + shape, tf.float32)).graph
    ranks = [(op.name, len(t.shape)) for op in graph.get_operations() for t in op.outputs if t.shape.rank is not None]
    return max(ranks, key=lambda r: r[1])


@pytest.mark.parametrize("build,shape", [
    (lambda: keras_vitnt.create_model("deit_tiny_distilled_patch16_224", weights=None, depth=2), (224, 224, 3)),
    (lambda: keras_vitnt.create_model("tnt_s_patch16_224", weights=None, depth=2), (224, 224, 3)),
    (lambda: keras_vitnt.create_model("tnt_s_legacy_patch16_224", weights=None, depth=2), (224, 224, 3)),
], ids=["deit", "tnt", "tnt-legacy"])
def test_inference_graph_has_no_tensor_of_rank_above_4(build, shape):
    name, rank = max_graph_rank(build(), shape)
    assert rank <= 4, f"{name} has rank {rank}"
