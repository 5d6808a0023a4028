"""Model construction: keras.applications conventions, .keras round trips, any input
size, training of the position-embedding kinds, no rank > 4 tensors in the graph."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_vitnt
from timm_oracle import normalised_images, perturbed_timm_model, relative_error, save_checkpoint, timm_logits

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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


@pytest.mark.parametrize("name,size", [("vit_tiny_patch16_224", (48, 80)), ("tnt_s_patch16_224", (32, 64))],
                         ids=["vit", "tnt"])
def test_non_square_inputs_give_timms_logits(name, size, tmp_path):
    """Built at a non-square size, with a checkpoint of timm's model at that size (a 3 x 5 /
    2 x 4 grid, no resampling): timm's logits, so rows and columns are not swapped anywhere."""
    tm = perturbed_timm_model(name, img_size=size, depth=1)
    path = save_checkpoint(tm, tmp_path / "non_square.safetensors")
    model = keras_vitnt.create_model(name, weights=str(path), input_shape=size + (3,), depth=1,
                                     include_preprocessing=False, classifier_activation=None)
    if name.startswith("vit"):
        assert model.get_layer("pos_embed").pos_embed.shape == (1, 1 + 3 * 5, 192)
    x = normalised_images(2, *size)
    logits = np.asarray(model.predict_on_batch(x))
    assert logits.shape == (2, 1000)
    assert relative_error(logits, timm_logits(tm, x)) <= 1e-5


@pytest.mark.parametrize("distilled", [False, True], ids=["deit", "deit-distilled"])
def test_deit_builds_deits_structure(distilled):
    model = keras_vitnt.DeiT("Ti/16", distilled=distilled, weights=None, input_shape=(32, 32, 3), classes=10,
                             depth=1, classifier_activation=None)
    assert model.name == f"deit_tiny{'_distilled' if distilled else ''}_patch16_224"
    assert model.get_layer("cls_token").num_tokens == 1 + distilled  # class (+ distillation) token
    assert model.get_layer("pos_embed").pos_embed.shape == (1, 1 + distilled + 2 * 2, 192)
    pre = model.get_layer("preprocess").get_config()  # DeiT normalises as ImageNet, ViT with 0.5 / 0.5
    np.testing.assert_allclose(pre["mean"], IMAGENET_MEAN)
    np.testing.assert_allclose(pre["std"], IMAGENET_STD)
    names = [layer.name for layer in model.layers]
    assert ("head_dist" in names) == distilled
    # the output: the head on the class token, averaged with the distillation head on the
    # distillation token (timm's inference output of the distilled model)
    x = images()
    tokens = np.asarray(keras.Model(model.inputs, model.get_layer("norm").output).predict_on_batch(x))
    assert tokens.shape == (2, 1 + distilled + 4, 192)

    def dense(name, t):
        layer = model.get_layer(name)
        return t @ np.asarray(layer.kernel) + np.asarray(layer.bias)

    cls = dense("head", tokens[:, 0])
    expected = (cls + dense("head_dist", tokens[:, 1])) / 2 if distilled else cls
    out = np.asarray(model.predict_on_batch(x))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)
    if distilled:
        assert not np.allclose(out, cls, atol=1e-3)  # both heads count


@pytest.mark.parametrize("distilled", [False, True], ids=["deit", "deit-distilled"])
def test_deit_with_a_timm_checkpoint_gives_timms_logits(distilled, tmp_path):
    name = f"deit_tiny{'_distilled' if distilled else ''}_patch16_224"
    tm = perturbed_timm_model(name, img_size=32, depth=2)
    path = save_checkpoint(tm, tmp_path / f"{name}.safetensors")
    # RGB 0..255 in: DeiT's own (ImageNet) normalisation inside the model
    model = keras_vitnt.DeiT("Ti/16", distilled=distilled, weights=str(path), input_shape=(32, 32, 3), depth=2,
                             classifier_activation=None)
    rgb = images()
    x = ((rgb / 255.0 - np.asarray(IMAGENET_MEAN, "float32")) / np.asarray(IMAGENET_STD, "float32")).astype("float32")
    assert relative_error(np.asarray(model.predict_on_batch(rgb)), timm_logits(tm, x)) <= 1e-5


def test_input_tensor():
    inp = keras.Input((32, 32, 3))
    model = small_vit(input_tensor=inp, input_shape=None)
    assert model.inputs[0] is inp and model.output_shape == (None, 10)


@pytest.mark.parametrize("kwargs,match", [
    (dict(input_shape=(30, 32, 3)), "not divisible by the patch size 4"),
    (dict(input_shape=(32, 32)), r"\(height, width, 3\)"),
    (dict(pooling="token"), "include_top=False"),
    (dict(include_top=False, pooling="gem"), "pooling"),
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
