"""Run by tests/test_backends.py in a new process with KERAS_BACKEND=jax or torch:

    KERAS_BACKEND=jax python tests/backend_checks.py WORK_DIR

WORK_DIR holds what the TensorFlow-side test prepared (timm checkpoints at one block, the
input and timm's logits: cases.json, *.safetensors, *.npy). Every check's outcome is written
to WORK_DIR/<backend>.json; the test asserts on it. A .keras file of a small ViT and TNT saved
by an earlier backend (`<backend>_saved_*.keras`) is loaded and compared, and this backend
saves its own for the next one.

One process per backend runs every check, in the order that matters: first everything that
must not import TensorFlow (models, weights, maps, features, fit on arrays), then what may
(the tf.data recipe and the export, which runs TensorFlow in a subprocess).
"""

import json
import os
import re
import sys
import time
import zipfile

import numpy as np

from timm_oracle import grad_weights, layer_decay_steps, relative_error  # tests/ is this script's folder: on sys.path


def _recipe(out, work, backend, demo, train):
    """The demo's ViT recipe for 2 epochs; its model.keras reloads with the same outputs."""
    import keras

    result = train(demo.demo_config("vit", os.path.join(work, f"{backend}_runs"), 2), verbose=0)
    out["recipe"] = {"val_accuracy": result.val_accuracy, "epochs_run": result.epochs_run,
                     "files": sorted(os.listdir(result.out))}
    reloaded = keras.models.load_model(os.path.join(result.out, "model.keras"))
    digits = np.load(os.path.join(work, "digits.npy"))
    out["recipe"]["reload_error"] = relative_error(reloaded.predict_on_batch(digits),
                                                   np.asarray(result.model.predict_on_batch(digits)))


def keras_gradients(model, x):
    """d sum(logits * grad_weights) / d model.trainable_weights with this backend's autodiff, in training
    mode (the step `fit` takes: compiled by XLA on TensorFlow), as numpy arrays."""
    import keras

    backend = keras.backend.backend()
    r = grad_weights(model.output_shape[-1], len(x))
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=True)  # as fit's step (the recipe's default)
        def grads(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(model(x, training=True) * r)
            return tape.gradient(loss, model.trainable_weights)

        return [np.asarray(g) for g in grads(tf.constant(x))]
    if backend == "torch":
        import torch

        model.zero_grad()
        (model(x, training=True) * torch.from_numpy(r)).sum().backward()
        return [v.value.grad.numpy() for v in model.trainable_weights]
    import jax

    def loss(trainable):
        out, _ = model.stateless_call(trainable, [v.value for v in model.non_trainable_weights], x, training=True)
        return (out * r).sum()

    return [np.asarray(g) for g in jax.grad(loss)([v.value for v in model.trainable_weights])]


def gradient_errors(name, model, x, timm_gradients, **kwargs):
    """{weight path: relative error} of this backend's gradients against timm's (timm_oracle's file of them,
    read by the weight loader into a second model, so that they come in Keras's layout)."""
    import keras_vitnt

    ref = keras_vitnt.create_model(name, weights=timm_gradients, include_preprocessing=False,
                                   classifier_activation=None, **kwargs)
    ours = keras_gradients(model, x)
    assert len(ours) == len(ref.trainable_weights)
    return {v.path: relative_error(g, w.numpy()) for v, w, g in zip(model.trainable_weights, ref.trainable_weights, ours)}


def _dense_matches_keras():
    """keras_vitnt's Dense (torch's `linear` on PyTorch) against keras.layers.Dense with the same weights:
    {case: relative error}, on a 3-D input, with LoRA enabled (nonzero), and under mixed_bfloat16 (whose
    output must be bfloat16)."""
    import keras

    from keras_vitnt.layers import Dense

    x = np.random.default_rng(2).standard_normal((2, 5, 12)).astype("float32")
    out = {}
    for case in ("float32", "lora", "mixed_bfloat16"):
        policy = "mixed_bfloat16" if case == "mixed_bfloat16" else "float32"
        ours, ref = Dense(7, dtype=policy), keras.layers.Dense(7, dtype=policy)
        for layer in (ours, ref):
            layer.build(x.shape)
            if case == "lora":
                layer.enable_lora(2)
        for a, b in zip(ours.weights, ref.weights):
            b.assign(np.random.default_rng(len(out)).standard_normal(a.shape).astype("float32"))
            a.assign(b.value)
        y = ours(x)
        if case == "mixed_bfloat16" and keras.backend.standardize_dtype(y.dtype) != "bfloat16":
            out[case] = f"dtype {y.dtype}"
            continue
        out[case] = relative_error(keras.ops.convert_to_numpy(keras.ops.cast(y, "float32")),
                                   keras.ops.convert_to_numpy(keras.ops.cast(ref(x), "float32")))
    return out


# the recipe's layer decay against timm's on this backend: a register token (excluded from weight decay by its
# name here, by its layer's path, cls_token/, on TensorFlow), differential attention's 1-D lambdas, fc_norm
LAYER_DECAY_CASES = ("vit_dlittle_patch16_reg1_gap_256",)


def _adamw_matches_keras():
    """keras_vitnt's AdamW (its own update on PyTorch) against keras.optimizers.AdamW, and the recipe's layer
    decay against timm's, on this backend: {"difference": {"amsgrad=False|True": the largest |difference| of any
    weight or optimizer slot after 3 `train_on_batch` steps from the same weights (a cosine schedule,
    weight decay with the recipe's exclusions)}, "layer_decay": {model: the largest relative error of any
    weight's change against timm's layer-decay AdamW, and on PyTorch with amsgrad too} (timm_oracle.
    layer_decay_steps: the recipe's LayerDecayAdamW, 3 steps; Keras matches exclusion names against the whole path on TensorFlow and
    against the variable's name on JAX and PyTorch), "own_updates": the steps the package's PyTorch update
    took}."""
    import keras

    import keras_vitnt
    from keras_vitnt import optimizers
    from keras_vitnt.optimizers import AdamW
    from keras_vitnt.train import NO_DECAY

    own, calls = optimizers._torch_adam_update, []
    optimizers._torch_adam_update = lambda *args: calls.append(1) or own(*args)

    def vit():
        return keras_vitnt.ViT("Ti/4", weights=None, input_shape=(16, 16, 3), classes=10, embed_dim=48, depth=2,
                               num_heads=3, include_preprocessing=False)

    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((4, 16, 16, 3)).astype("float32"), rng.integers(0, 10, 4)
    first = vit()
    out = {"difference": {}}
    for amsgrad in (False, True):  # with amsgrad, Keras's own PyTorch update runs
        states = []
        for opt in (keras.optimizers.AdamW, AdamW):
            model = vit()
            model.set_weights(first.get_weights())
            opt = opt(keras.optimizers.schedules.CosineDecay(1e-3, 10), weight_decay=0.05, amsgrad=amsgrad)
            opt.exclude_from_weight_decay(var_names=NO_DECAY)
            model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
            for _ in range(3):
                model.train_on_batch(x, y)
            states.append([keras.ops.convert_to_numpy(v.value) for v in model.trainable_variables + opt.variables])
        out["difference"][f"amsgrad={amsgrad}"] = max(float(np.max(np.abs(a - b))) for a, b in zip(*states))
    out["layer_decay"] = {name: max(layer_decay_steps(name).values()) for name in LAYER_DECAY_CASES}
    if keras.backend.backend() == "torch":  # Keras's own update under LayerDecayAdamW (a GPU's path, or amsgrad)
        out["layer_decay"]["amsgrad"] = max(layer_decay_steps(LAYER_DECAY_CASES[0], amsgrad=True).values())
    optimizers._torch_adam_update = own
    out["own_updates"] = len(calls)
    return out


def _training_forms():
    """JAX: the gradient forms training takes (GELU's written-out gradient, GELU + fc2 recomputing
    GELU) against autodiff's gradients of the inference forms, for a ViT and a TNT block's inputs and
    weights: {"vit": max relative error, "tnt": ..., "calls": gelu_dense calls in training}.
    None on backends without them (PyTorch)."""
    import keras

    from keras_vitnt import layers as L
    from keras_vitnt.layers import blocks

    if keras.backend.backend() not in blocks.TRAINING_FORM_BACKENDS:
        return None
    import jax
    import jax.numpy as jnp

    calls = []
    inner = blocks.gelu_dense
    blocks.gelu_dense = lambda *a: calls.append(1) or inner(*a)
    rng = np.random.default_rng(0)
    result = {}
    try:
        for kind in ("vit", "tnt"):
            if kind == "vit":
                block, inputs = L.TransformerBlock(dim=64, num_heads=4), rng.standard_normal((3, 7, 64))
            else:
                block = L.TNTBlock(inner_dim=16, embed_dim=64, num_words=16, num_heads_inner=2, num_heads_outer=4)
                inputs = [rng.standard_normal((15, 16, 16)), rng.standard_normal((3, 6, 64))]
            inputs = jax.tree_util.tree_map(lambda a: jnp.asarray(a, "float32"), inputs)
            block(inputs)
            weights = [v.value for v in block.trainable_variables]
            fixed = [v.value for v in block.non_trainable_variables]

            def loss(weights, inputs, training):
                out, _ = block.stateless_call(weights, fixed, inputs, training=training)
                return sum(jnp.sum(o.astype("float32") ** 2) for o in jax.tree_util.tree_leaves(out))

            trained = jax.tree_util.tree_leaves(jax.grad(loss, argnums=(0, 1))(weights, inputs, True))
            autodiff = jax.tree_util.tree_leaves(jax.grad(loss, argnums=(0, 1))(weights, inputs, False))
            result[kind] = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in zip(trained, autodiff))
    finally:
        blocks.gelu_dense = inner
    result["calls"] = len(calls)
    return result


def main(work):
    import keras

    backend = keras.backend.backend()
    out = {"backend": backend, "times": {}}
    t0 = time.time()

    import keras_vitnt
    from keras_vitnt import feature_extractor
    from keras_vitnt.visualize import attention_maps, attention_rollout, tnt_inner_maps

    cases = json.load(open(os.path.join(work, "cases.json")))
    x = np.load(os.path.join(work, "x.npy"))
    # 1. timm parity from the checkpoint files (the hub weights' path)
    out["parity"] = {}
    models = {}
    for name, kwargs in cases.items():
        model = keras_vitnt.create_model(name, weights=os.path.join(work, name + ".safetensors"),
                                         include_preprocessing=False, classifier_activation=None, **kwargs)
        models[name] = model
        out["parity"][name] = relative_error(model.predict_on_batch(x), np.load(os.path.join(work, name + ".npy")))
    # the gradients of a training step, against timm's autograd on the same weights
    out["gradients"] = {name: max(gradient_errors(name, models[name], x, os.path.join(work, name + ".grads.safetensors"),
                                                  **kwargs).values()) for name, kwargs in cases.items()}
    out["times"]["parity"] = time.time() - t0

    # 2. attention maps, rollout, TNT inner maps, feature extractor
    vit, tnt = models["vit_small_patch16_224"], models["tnt_s_patch16_224"]
    maps = attention_maps(vit, x[:1])
    out["attention_rows_sum"] = float(np.max(np.abs(maps.sum(-1) - 1.0)))
    out["attention_shape"] = list(maps.shape)
    heat = attention_rollout(vit, x[0])
    out["rollout"] = {"shape": list(heat.shape), "max": float(heat.max()), "min": float(heat.min())}
    inner = tnt_inner_maps(tnt, x[0])
    out["tnt_inner_shape"] = list(np.asarray(inner).shape)
    feats = feature_extractor(vit, indices=1, output_fmt="NLC").predict_on_batch(x)
    # the last block's patch tokens, before the final norm: the model's own pre-norm tokens
    out["features_shape"] = list(np.asarray(feats).shape)
    np.save(os.path.join(work, f"{backend}_features.npy"), np.asarray(feats))

    out["training_forms"] = _training_forms()
    out["dense"] = _dense_matches_keras()
    out["adamw"] = _adamw_matches_keras()

    # 3. fit on arrays (the model learns: it fits 8 samples, the loss falls by 4x or more). Not seeded:
    # keras.utils.set_random_seed seeds TensorFlow too, importing it
    small = keras_vitnt.ViT("Ti/16", input_shape=(32, 32, 3), patch_size=8, embed_dim=64, depth=2, num_heads=4,
                            classes=3, include_preprocessing=False, weights=None)
    small.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    xs, ys = rng.standard_normal((8, 32, 32, 3)).astype("float32"), rng.integers(0, 3, 8)
    before = float(small.evaluate(xs, ys, verbose=0))
    small.fit(xs, ys, epochs=15, batch_size=8, verbose=0)
    out["fit_loss"] = [before, float(small.evaluate(xs, ys, verbose=0))]

    # Keras's .keras saving imports TensorFlow where it is installed (serialization_lib checks for
    # tf.TensorShape): keras_vitnt's own paths above must not
    out["tensorflow_imported"] = "tensorflow" in sys.modules

    # the modules a saved optimizer record names (keras_vitnt's save_model: public ones on every backend),
    # also inside a LossScaleOptimizer's record (the recipe's float16 on a GPU)
    from keras_vitnt.io_utils import save_model

    small.compile(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.AdamW(1e-3)),
                  loss="sparse_categorical_crossentropy")
    small.fit(xs, ys, epochs=1, batch_size=8, verbose=0)
    save_model(small, os.path.join(work, f"{backend}_loss_scaled.keras"))
    with zipfile.ZipFile(os.path.join(work, f"{backend}_loss_scaled.keras")) as f:
        record = json.dumps(json.loads(f.read("config.json"))["compile_config"]["optimizer"])
    out["optimizer_modules"] = sorted(set(re.findall(r'"module": "([^"]*optimizers[^"]*)"', record)))

    # 4. .keras files: the previous backend's load here with the same outputs; ours for the next
    out["loaded"] = {}
    for kind, model in (("vit", vit), ("tnt", tnt)):
        for name in sorted(os.listdir(work)):
            if name.endswith(f"_saved_{kind}.keras"):
                loaded = keras.models.load_model(os.path.join(work, name))
                ref = np.load(os.path.join(work, name[: -len(".keras")] + ".npy"))
                out["loaded"][name] = relative_error(loaded.predict_on_batch(x), ref)
        model.save(os.path.join(work, f"{backend}_saved_{kind}.keras"))
        np.save(os.path.join(work, f"{backend}_saved_{kind}.npy"), np.asarray(model.predict_on_batch(x)))
    out["times"]["maps_fit_save"] = time.time() - t0 - out["times"]["parity"]

    # 5. the recipe (tf.data pipelines: TensorFlow comes in here, for data only); on JAX the distribution
    # job (tests/distributed_run.py) runs it three times
    from keras_vitnt import demo
    from keras_vitnt.train import train

    t1 = time.time()
    if backend == "jax":
        out["recipe"] = None
    else:
        _recipe(out, work, backend, demo, train)
    out["times"]["recipe"] = time.time() - t1


    # 6. export from this backend: the same artefact as from TensorFlow, checked against this model
    # (one format per backend: the path through TensorFlow is the same for all three)
    t1 = time.time()
    out["export"] = {}
    for fmt, path in ((("litert", "vit.tflite"),) if backend == "jax" else (("onnx", "vit.onnx"),)):
        path = os.path.join(work, f"{backend}_{path}")
        try:
            report = keras_vitnt.export(vit, path, format=fmt, sample_data=x)
            out["export"][fmt] = {"max_relative_error": report["max_relative_error"],
                                  "source_backend": report.get("source_backend"),
                                  "exists": os.path.exists(path)}
        except Exception as e:  # reported, the test names it
            out["export"][fmt] = {"error": f"{type(e).__name__}: {e}"}
        try:  # refused before any work: the destination is checked on this side
            keras_vitnt.export(vit, path, format=fmt, sample_data=x)
        except FileExistsError as e:
            out["export"][fmt]["again"] = str(e)
    out["times"]["export"] = time.time() - t1
    out["times"]["total"] = time.time() - t0
    with open(os.path.join(work, f"{backend}.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
