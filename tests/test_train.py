"""The fine-tuning recipe: accuracy floors on the bundled digits, fine-tuning from a
checkpoint file, resuming a killed run, MirroredStrategy, bf16, the notebook, the CLI."""

import logging
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_vitnt import demo
from keras_vitnt.train import TrainConfig, layer_id, read_log, train

# measured with these seeds and epochs (15 / 20): ViT 0.944, TNT see the test output;
# the full demo (ViT 40 epochs, TNT 30) reaches 0.961 and 0.967
FLOOR = 0.90


@pytest.mark.parametrize("kind", ["vit", "tnt"])
def test_from_scratch_on_digits_reaches_the_floor(digits_runs, kind):
    result, _ = digits_runs[kind]
    print(f"{kind}: test accuracy {result.val_accuracy:.4f} after {result.epochs_run} epochs")
    assert result.val_accuracy >= FLOOR
    for name in ("model.keras", "best.keras", "log.csv", "curves.png", "summary.json"):
        assert os.path.isfile(os.path.join(result.out, name)), name
    loaded = keras.models.load_model(os.path.join(result.out, "model.keras"))
    x = np.zeros((2, demo.IMAGE_SIZE, demo.IMAGE_SIZE, 3), "float32")
    np.testing.assert_allclose(loaded.predict_on_batch(x), result.model.predict_on_batch(x), rtol=1e-5, atol=1e-6)


def small_cfg(out, **kw):
    base = dict(model="vit:Ti/4", weights="none", data="digits", image_size=16, epochs=2, batch_size=64, lr=2e-3,
                augment="none", flip=False, out=str(out), overrides=dict(embed_dim=48, depth=2, num_heads=3))
    return TrainConfig(**{**base, **kw})


def test_fine_tune_from_checkpoint_file_with_a_fresh_head(tmp_path, caplog):
    from timm_oracle import perturbed_timm_model, save_checkpoint

    tm = perturbed_timm_model("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=2)
    path = save_checkpoint(tm, tmp_path / "pretrained.safetensors")
    cfg = small_cfg(tmp_path / "run", model="vit_tiny_patch16_224", weights=str(path), epochs=1, layer_decay=0.75,
                    augment="light", overrides=dict(patch_size=4, depth=2))
    with caplog.at_level(logging.WARNING, logger="keras_vitnt"):
        result = train(cfg, verbose=0)
    assert "fresh" in caplog.text
    assert result.model.get_layer("head").kernel.shape == (192, 10)
    loaded = tm.blocks[0].attn.qkv.weight.detach().numpy().T
    trained = np.asarray(result.model.get_layer("blocks_0").attn.qkv.kernel)
    assert trained.shape == loaded.shape and not np.allclose(trained, loaded)  # the backbone moved
    assert np.abs(trained - loaded).max() < 0.5  # ... from the checkpoint, not from a random init


def test_layer_ids_for_layer_decay():
    assert layer_id("patch_embed/proj/kernel", 12) == 0
    assert layer_id("cls_token/cls_token", 12) == 0
    assert layer_id("blocks_0/attn/qkv/kernel", 12) == 1
    assert layer_id("blocks_11/mlp/fc2/bias", 12) == 12
    assert layer_id("head/kernel", 12) == 13 and layer_id("norm/gamma", 12) == 13


class Crash(keras.callbacks.Callback):
    def __init__(self, after_batches):
        super().__init__()
        self.after, self.seen = after_batches, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.after:
            raise RuntimeError("simulated crash")


def test_killed_run_resumes_from_backup_and_finishes_the_epochs(tmp_path):
    cfg = small_cfg(tmp_path / "run", epochs=3)
    steps_per_epoch = 1437 // 64
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, extra_callbacks=[Crash(steps_per_epoch + 5)], verbose=0)  # dies inside epoch 2
    assert len(read_log(str(tmp_path / "run" / "log.csv"))["epoch"]) == 1
    result = train(cfg, verbose=0)
    assert result.epochs_run == 3
    assert read_log(str(tmp_path / "run" / "log.csv"))["epoch"] == [0.0, 1.0, 2.0]


def test_mixed_bfloat16_training(tmp_path):
    result = train(small_cfg(tmp_path / "run", epochs=1, mixed_precision="mixed_bfloat16"), verbose=0)
    assert np.isfinite(result.history["loss"]).all()
    assert result.model.dtype_policy.name == "mixed_bfloat16"
    out = result.model.predict_on_batch(np.zeros((2, 16, 16, 3), "float32"))
    assert np.asarray(out).dtype == np.float32
    assert all(v.dtype == "float32" for v in result.model.weights)
    assert keras.config.dtype_policy().name == "float32"  # restored after the run


def test_mirrored_strategy_over_two_logical_cpus(tmp_path):
    code = f"""
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np
from keras_vitnt.train import TrainConfig, train
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
cfg = TrainConfig(model="vit:Ti/4", weights="none", data="digits", image_size=16, epochs=1, batch_size=64,
                  lr=2e-3, augment="none", flip=False, out={str(tmp_path / "run")!r}, strategy=strategy,
                  overrides=dict(embed_dim=48, depth=2, num_heads=3))
r = train(cfg, verbose=0)
print("REPLICAS", strategy.num_replicas_in_sync, "LOSS", r.history["loss"][-1])
"""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("REPLICAS"))
    assert line.split()[1] == "2" and np.isfinite(float(line.split()[3]))


def test_notebook_executes_offline(tmp_path):
    import nbclient
    import nbformat

    path = os.path.join(os.path.dirname(__file__), "..", "notebooks", "finetune_tnt_tf_flowers.ipynb")
    nb = nbformat.read(path, as_version=4)
    env_backup = dict(os.environ)
    os.environ.update(KERAS_VITNT_NOTEBOOK_FAST="1", KERAS_VITNT_NOTEBOOK_OUT=str(tmp_path / "nb"),
                      TF_CPP_MIN_LOG_LEVEL="3")
    try:
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "validation accuracy" in outputs and "predicted:" in outputs
    assert (tmp_path / "nb" / "tnt.tflite").is_file()


def test_train_cli(tmp_path):
    from test_cli import run_cli

    out = run_cli("train", "--model", "vit:Ti/4", "--weights", "none", "--data", "digits", "--image-size", "16",
                  "--epochs", "1", "--batch-size", "64", "--lr", "2e-3", "--augment", "none", "--no-flip",
                  "--overrides", '{"embed_dim": 48, "depth": 1, "num_heads": 3}', "--out", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "validation accuracy" in out.stdout and (tmp_path / "run" / "model.keras").is_file()


def test_image_folder_data_source(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("red", "blue"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(12):
            a = rng.integers(0, 60, (20, 24, 3)).astype("uint8")
            a[..., 0 if cls == "red" else 2] += 180
            Image.fromarray(a).save(tmp_path / "data" / cls / f"{i}.jpg")
    cfg = small_cfg(tmp_path / "run", data=str(tmp_path / "data"), epochs=2, batch_size=8, val_fraction=0.25,
                    augment="light")
    result = train(cfg, verbose=0)
    assert result.class_names == ["blue", "red"] and result.model.output_shape == (None, 2)
