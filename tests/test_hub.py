"""`weights="imagenet"` end to end against a hub stand-in on 127.0.0.1: the real
huggingface_hub download code, the HF cache, the conversion cache, offline use, and
failures that are fast and say what to do. Each load runs in a fresh process, since
huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE when it is imported; the
`fake_hub` tests replace huggingface_hub's download functions in this process instead."""

import errno
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import keras_vitnt
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


# --- local disk failures: an OSError with its errno, naming the cache, never "weights unavailable" ---------------


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """huggingface_hub's download functions replaced in this process: `fake_hub(local=..., network=...)` sets what the
    cache look-up (local_files_only=True) and the download raise. No request leaves the process."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import LocalEntryNotFoundError

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))

    def setup(local=None, network=None):
        def hf_hub_download(repo_id, filename, local_files_only=False, **kw):
            raise (local or LocalEntryNotFoundError("not cached")) if local_files_only else network

        def get_hf_file_metadata(*a, **kw):
            if isinstance(network, ConnectionError):
                raise network

        monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
        monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", get_hf_file_metadata)

    return setup


def deit_tag():
    from keras_vitnt.models.registry import get_model_info

    return get_model_info("deit_tiny_patch16_224").default_tag


@pytest.mark.parametrize("name, hint", [("ENOSPC", "free space"), ("EDQUOT", "free space"), ("EROFS", "writable"),
                                        ("EACCES", "writable")])
def test_full_or_unwritable_disk_during_download_is_an_oserror_naming_the_cache(fake_hub, tmp_path, name, hint):
    from keras_vitnt.weights.hub import download

    err = getattr(errno, name)
    cause = OSError(err, os.strerror(err))
    fake_hub(network=cause)
    with pytest.raises(OSError) as e:
        download(deit_tag())
    assert not isinstance(e.value, keras_vitnt.WeightsUnavailableError)
    assert e.value.errno == err and e.value.__cause__ is cause
    msg = str(e.value)
    assert str(tmp_path / "hf" / "hub" / "models--timm--deit_tiny_patch16_224.fb_in1k") in msg
    assert str(tmp_path / "keras") in msg and "HF_HOME" in msg and "KERAS_HOME" in msg and hint in msg


def test_network_failure_is_still_weights_unavailable(fake_hub):
    from keras_vitnt.weights.hub import download

    cause = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    fake_hub(network=cause)
    with pytest.raises(keras_vitnt.WeightsUnavailableError, match="ConnectionRefusedError") as e:
        download(deit_tag())
    assert e.value.__cause__ is cause


@pytest.mark.parametrize("kind", ["unreadable", "damaged"])
def test_unreadable_or_damaged_cache_is_not_taken_for_a_missing_file(fake_hub, tmp_path, kind):
    """A cache entry that cannot be read is reported as such, not silently skipped for a download."""
    from keras_vitnt.weights.hub import download

    folder = str(tmp_path / "hf" / "hub" / "models--timm--deit_tiny_patch16_224.fb_in1k")
    cause, expected, says = {
        "unreadable": (PermissionError(errno.EACCES, "Permission denied", folder + "/refs/main"), PermissionError,
                       "Could not read"),
        # what huggingface_hub raises for a refs file that points outside the snapshots
        "damaged": (ValueError("Invalid pointer path"), ValueError, "Delete it"),
    }[kind]
    fake_hub(local=cause, network=ConnectionError("the test hub is unreachable"))
    with pytest.raises(expected) as e:
        download(deit_tag())
    assert not isinstance(e.value, keras_vitnt.WeightsUnavailableError) and e.value.__cause__ is cause
    assert says in str(e.value) and folder in str(e.value)


def test_an_error_type_that_takes_no_message_keeps_the_hint_and_its_cause(monkeypatch, tmp_path):
    """load_pretrained adds "delete the cache folder" to a ValueError; one that cannot be rebuilt from a message
    (UnicodeDecodeError) must not turn into a TypeError that hides it."""
    from keras_vitnt.weights import convert, hub

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(hub, "download", lambda tag: str(tmp_path / "model.safetensors"))
    cause = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    def read_state_dict(path):
        raise cause

    monkeypatch.setattr(convert, "read_state_dict", read_state_dict)
    with pytest.raises(ValueError, match="UnicodeDecodeError") as e:
        hub.load_pretrained(None, deit_tag(), "vit")
    assert e.value.__cause__ is cause and "models--timm--deit_tiny_patch16_224.fb_in1k" in str(e.value)


def test_unreadable_conversion_cache_says_so_instead_of_delete_it(monkeypatch, tmp_path):
    import h5py

    from keras_vitnt.weights import hub

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    path = hub.converted_path(deit_tag())
    os.makedirs(os.path.dirname(path))
    open(path, "wb").close()
    cause = PermissionError(errno.EACCES, "Permission denied", path)

    def h5_file(*a, **kw):
        raise cause

    monkeypatch.setattr(h5py, "File", h5_file)
    with pytest.raises(PermissionError, match="KERAS_HOME") as e:
        hub.read_converted(deit_tag())
    assert e.value.__cause__ is cause and path in str(e.value)


def test_a_write_past_the_disk_limit_in_a_real_download_names_the_cache(tmp_path):
    """The real huggingface_hub download code, with the file-size limit (RLIMIT_FSIZE) standing in for a full disk:
    the failed write reaches the caller as an OSError with its errno (EFBIG), and no half file stays in the cache."""
    child = (
        "import errno, resource, signal\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        "from keras_vitnt.models.registry import get_model_info\n"
        "from keras_vitnt.weights.hub import download\n"
        "try:\n"
        "    download(get_model_info('deit_tiny_patch16_224').default_tag)\n"
        "except OSError as e:\n"
        "    print('ERROR:', type(e).__name__, errno.errorcode.get(e.errno), e)\n"
    )
    with HubServer() as hub:
        hub.add("timm/deit_tiny_patch16_224.fb_in1k", "model.safetensors", os.urandom(1_000_000))
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", HF_HUB_DISABLE_TELEMETRY="1",
                   **cache_env(tmp_path, HF_ENDPOINT=hub.url))
        proc = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert "ERROR: OSError EFBIG" in out, out + proc.stderr[-3000:]
    assert "WeightsUnavailableError" not in out and "Could not write" in out
    assert str(tmp_path / "hf" / "hub" / "models--timm--deit_tiny_patch16_224.fb_in1k") in out and "HF_HOME" in out
    assert not files_named(tmp_path / "hf", "model.safetensors")
    assert not [f for d, _, fs in os.walk(tmp_path / "hf") for f in fs if f.endswith(".incomplete")]
