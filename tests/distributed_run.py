"""Run by tests/test_train.py's distribution tests in new processes:

    python tests/distributed_run.py OUT_PREFIX STRATEGY [STRATEGY ...]

trains the same small ViT on the bundled digits with the recipe, once per strategy (in this
process, one after another, into OUT_PREFIX-<strategy>), and writes OUT_PREFIX-<strategy>.json
("mirrored": MirroredStrategy over two logical CPUs, made here)
with the run's log, its predictions on 64 test digits and, on JAX, how the attention and MLP
kernels are laid out on the devices.
"""

import json
import sys

import numpy as np


def main(prefix, strategies):
    import keras

    if "mirrored" in strategies:  # two logical CPUs, before TensorFlow starts
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from keras_vitnt.data.digits import load_digits
    from keras_vitnt.train import TrainConfig, get_strategy, secondary_worker, train

    (_, _), (x_test, _) = load_digits(size=16)
    for strategy in strategies:
        out = f"{prefix}-{strategy.replace(':', '_')}"
        # no augmentation, no drop path: the same data and computation on every replica count; layer decay, whose
        # weight decay runs per variable in each replica's update
        cfg = TrainConfig(model="vit:Ti/4", weights="none", data="digits", image_size=16, epochs=2, warmup_epochs=0,
                          batch_size=64, lr=2e-3, augment="none", flip=False, drop_path_rate=0.0, layer_decay=0.75,
                          out=out, strategy=_strategy(strategy), overrides=dict(embed_dim=48, depth=2, num_heads=3))
        result = train(cfg, verbose=0)
        report = {"out": result.out, "val_accuracy": result.val_accuracy, "loss": result.history["loss"],
                  "predictions": keras.ops.convert_to_numpy(result.model(x_test[:64])).tolist(),
                  "optimizer": [type(result.model.optimizer).__name__, float(result.model.optimizer.weight_decay)]}
        # (called directly: predict_on_batch would distribute the batch, and gather it from every worker)
        if keras.backend.backend() == "jax":
            block = result.model.get_layer("blocks_0")
            report["devices"] = len(keras.distribution.list_devices())
            try:
                get_strategy("model_parallel:3")
            except ValueError as e:
                report["refused"] = str(e)
            # the dimensions split over the "model" axis ([] when replicated)
            report["layouts"] = {name: [i for i, a in enumerate(getattr(v.value.sharding, "spec", ())) if a == "model"]
                                 for name, v in
                                 (("qkv", block.attn.qkv.kernel), ("fc2", block.mlp.fc2.kernel),
                                  ("norm", block.norm1.gamma))}
        worker = secondary_worker(cfg)  # a multi-worker run's other workers: out + ".worker<i>"
        with open(out + (f".worker{worker}.json" if worker else ".json"), "w") as f:
            json.dump(report, f)


def _strategy(name):
    if name != "mirrored":
        return name
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
