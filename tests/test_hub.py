"""`weights="imagenet"` end to end against a hub stand-in on 127.0.0.1: the real
huggingface_hub download code, the HF cache, the conversion cache, offline use, and
failures that are fast and say what to do. Each load runs in a fresh process, since
huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE when it is imported."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from hub_server import HubServer
from timm_oracle import perturbed_timm_model, relative_error, save_checkpoint, timm_logits

LOAD = """
import sys, numpy as np, keras_vitnt
name, out = sys.argv[1], sys.argv[2]
x = np.load(out + ".in.npy")
try:
    m = keras_vitnt.create_model(name, weights="imagenet", classifier_activation=None)
    np.save(out, np.asarray(m.predict_on_batch(x)))
    print("LOADED")
except (keras_vitnt.WeightsUnavailableError, ValueError) as e:
    print("ERROR:", type(e).__name__, e)
"""


def load_in_subprocess(name, tmp_path, env, x):
    out = str(tmp_path / "logits")
    np.save(out + ".in.npy", x)
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", HF_HUB_DISABLE_TELEMETRY="1", **env)
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", LOAD, name, out], env=full_env, capture_output=True, text=True,
                          timeout=300)
    elapsed = time.time() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    logits = np.load(out + ".npy") if "LOADED" in proc.stdout else None
    return proc.stdout, logits, elapsed


def cache_env(tmp_path, **extra):
    return {"HF_HOME": str(tmp_path / "hf"), "KERAS_HOME": str(tmp_path / "keras"), **extra}


def files_named(root, name):
    return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f == name]


@pytest.fixture(scope="module")
def tnt_checkpoint(tmp_path_factory):
    tm = perturbed_timm_model("tnt_s_patch16_224", seed=7)
    path = save_checkpoint(tm, tmp_path_factory.mktemp("hub") / "model.safetensors")
    return tm, path.read_bytes()


def test_imagenet_weights_download_convert_cache_and_work_offline(tnt_checkpoint, tmp_path):
    tm, data = tnt_checkpoint
    rgb = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype("float32")
    ref = timm_logits(tm, (rgb / 255.0 - 0.5) / 0.5)  # TNT's mean = std = 0.5, inside our model
    with HubServer() as hub:
        hub.add("timm/tnt_s_patch16_224.in1k", "model.safetensors", data)
        out, logits, _ = load_in_subprocess("tnt_s_patch16_224", tmp_path, cache_env(tmp_path, HF_ENDPOINT=hub.url), rgb)
        assert logits is not None, out
        assert ("GET", "/timm/tnt_s_patch16_224.in1k/resolve/main/model.safetensors") in hub.requests
    assert relative_error(logits, ref) <= 1e-4
    assert len(files_named(tmp_path / "hf", "model.safetensors")) == 1  # the shared HF cache
    converted = tmp_path / "keras" / "keras_vitnt" / "tnt_s_patch16_224.in1k.h5"
    assert converted.is_file()

    # server gone, offline: the conversion cache serves the load
    offline = cache_env(tmp_path, HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    out, logits2, _ = load_in_subprocess("tnt_s_patch16_224", tmp_path, offline, rgb)
    assert logits2 is not None, out
    np.testing.assert_array_equal(logits2, logits)
    # without the conversion cache, the HF cache alone serves it (no network either)
    converted.unlink()
    out, logits3, _ = load_in_subprocess("tnt_s_patch16_224", tmp_path, offline, rgb)
    assert logits3 is not None, out
    np.testing.assert_array_equal(logits3, logits)
    assert converted.is_file()


def test_unreachable_hub_fails_fast_with_what_to_do_and_leaves_no_file(tmp_path):
    x = np.zeros((1, 224, 224, 3), "float32")
    env = cache_env(tmp_path, HF_ENDPOINT="http://127.0.0.1:9")  # nothing listens on port 9
    out, logits, elapsed = load_in_subprocess("deit_tiny_patch16_224", tmp_path, env, x)
    assert logits is None and "WeightsUnavailableError" in out, out
    assert "timm/deit_tiny_patch16_224.fb_in1k/model.safetensors" in out
    assert str(tmp_path / "hf") in out and str(tmp_path / "keras") in out
    assert "weights=<path" in out and "HF_ENDPOINT" in out
    assert elapsed < 60
    assert not files_named(tmp_path, "model.safetensors") and not (tmp_path / "keras" / "keras_vitnt").exists()


def test_damaged_hub_file_names_the_cache_folder_to_delete(tnt_checkpoint, tmp_path):
    _, data = tnt_checkpoint
    x = np.zeros((1, 224, 224, 3), "float32")
    with HubServer() as hub:
        hub.add("timm/tnt_s_patch16_224.in1k", "model.safetensors", data[: len(data) // 3])
        out, logits, _ = load_in_subprocess("tnt_s_patch16_224", tmp_path, cache_env(tmp_path, HF_ENDPOINT=hub.url), x)
    assert logits is None, out
    assert "models--timm--tnt_s_patch16_224.in1k" in out and "delete" in out
    assert not (tmp_path / "keras" / "keras_vitnt").exists()  # no conversion of a bad file


def test_foreign_architecture_on_the_hub_is_an_error(tnt_checkpoint, tmp_path):
    _, data = tnt_checkpoint  # a TNT file served as a DeiT checkpoint
    x = np.zeros((1, 224, 224, 3), "float32")
    with HubServer() as hub:
        hub.add("timm/deit_tiny_patch16_224.fb_in1k", "model.safetensors", data)
        out, logits, _ = load_in_subprocess("deit_tiny_patch16_224", tmp_path,
                                            cache_env(tmp_path, HF_ENDPOINT=hub.url), x)
    assert logits is None and "CheckpointMismatchError" in out and "looks like a TNT checkpoint" in out, out


def test_unknown_tag_lists_the_tags():
    import keras_vitnt

    with pytest.raises(ValueError, match="augreg_in21k_ft_in1k"):
        keras_vitnt.create_model("vit_tiny_patch16_224.nope", weights="imagenet")
    with pytest.raises(ValueError, match="augreg_in21k_ft_in1k"):
        keras_vitnt.create_model("vit_tiny_patch16_224", weights="nope")
