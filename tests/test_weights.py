"""Loading checkpoint files: timm's head rules, clear errors for every bad input, no
partial assignment, and the hub path failing fast and loudly when offline."""

import errno
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


class NotATensor:
    """A custom object in a checkpoint: torch.load(weights_only=True) refuses to build it."""


def test_truncated_pth_is_told_apart_from_a_pickle_that_would_run_code(vit_ckpt, tmp_path):
    import functools

    import torch

    tm, _ = vit_ckpt
    data_path = tmp_path / "whole.pth"
    torch.save(tm.state_dict(), data_path)
    data = data_path.read_bytes()
    legacy_path = tmp_path / "legacy.pth"
    torch.save(tm.state_dict(), legacy_path, _use_new_zipfile_serialization=False)
    legacy = legacy_path.read_bytes()
    # cut inside the zip directory, inside a tensor, at the very start, and a legacy (pre-zip) file cut short
    cuts = [data[: len(data) - 100], data[: len(data) // 2], data[:100], b"", legacy[: len(legacy) // 2]]
    for i, cut in enumerate(cuts):
        path = tmp_path / f"cut{i}.pth"
        path.write_bytes(cut)
        with pytest.raises(ValueError, match=rf"cut{i}\.pth.*truncated or corrupt.*download it again") as e:
            read_state_dict(path)
        assert "pickled code" not in str(e.value) and e.value.__cause__ is not None

    for name, obj in (("custom", NotATensor()), ("partial", functools.partial(print, 1))):
        path = tmp_path / f"{name}.pth"
        torch.save({"blocks.0.norm1.weight": torch.ones(3), "extra": obj}, path)
        with pytest.raises(ValueError, match=rf"{name}\.pth.*weights_only=True.*pickled code") as e:
            read_state_dict(path)
        msg = str(e.value)
        assert ("NotATensor" if name == "custom" else "functools.partial") in msg
        assert "truncated or corrupt" not in msg
        assert "will likely succeed" not in msg  # nor torch's advice to set weights_only=False


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_a_file_the_system_will_not_let_us_read_is_a_permission_error_not_a_corrupt_file(vit_ckpt, tmp_path,
                                                                                          monkeypatch, fmt):
    import safetensors.numpy
    import torch

    _, st_path = vit_ckpt
    path = tmp_path / f"locked.{fmt}"
    path.write_bytes(st_path.read_bytes())
    cause = PermissionError(errno.EACCES, "Permission denied", str(path))

    def refuse(*a, **kw):
        raise cause

    monkeypatch.setattr(safetensors.numpy, "load_file", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(PermissionError, match=rf"locked\.{fmt}.*permissions") as e:
        read_state_dict(path)
    assert e.value.errno == errno.EACCES and e.value.__cause__ is cause


def test_bfloat16_safetensors_load_as_float32_and_other_tensors_keep_their_dtype(tmp_path):
    import torch
    from safetensors.torch import save_file

    tm = perturbed_timm_model("vit_tiny_patch16_224", **SMALL_VIT)
    sd = {k: v.detach().to(torch.bfloat16) for k, v in tm.state_dict().items()}
    sd["norm.weight"] = tm.state_dict()["norm.weight"].detach().clone()  # one float32 tensor: must stay exact
    sd["steps"] = torch.arange(3)
    path = tmp_path / "bf16.safetensors"
    save_file(sd, path)
    read = read_state_dict(path)
    assert read["blocks.1.attn.qkv.weight"].dtype == np.float32 and read["steps"].dtype == np.int64
    np.testing.assert_array_equal(read["blocks.1.attn.qkv.weight"], sd["blocks.1.attn.qkv.weight"].float().numpy())
    np.testing.assert_array_equal(read["norm.weight"], tm.state_dict()["norm.weight"].numpy())
    del read["steps"]
    model = small(None)
    load_state_dict(model, read, family="vit")
    np.testing.assert_array_equal(block_kernel(model), sd["blocks.1.attn.qkv.weight"].float().numpy().T)


@pytest.fixture(scope="module")
def google_npz(tmp_path_factory):
    from test_npz import write_google_npz

    tm = perturbed_timm_model("vit_tiny_patch16_224", **SMALL_VIT)
    return write_google_npz(tm, tmp_path_factory.mktemp("npz") / "vit.npz")


def test_damaged_npz_files_name_the_file_and_what_is_wrong(google_npz, tmp_path):
    data = google_npz.read_bytes()
    for i, cut in enumerate([data[: len(data) // 2], data[:10], b""]):
        path = tmp_path / f"cut{i}.npz"
        path.write_bytes(cut)
        with pytest.raises(ValueError, match=rf"cut{i}\.npz.*truncated or corrupt.*download it again") as e:
            read_state_dict(path)
        assert e.value.__cause__ is not None

    path = tmp_path / "objects.npz"
    np.savez(path, **{"embedding/kernel": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match=r"objects\.npz.*holds object arrays.*refused"):
        read_state_dict(path)

    with np.load(google_npz) as f:
        arrays = {k: f[k] for k in f.files}
    del arrays["Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel"]
    path = tmp_path / "incomplete.npz"
    np.savez(path, **arrays)
    with pytest.raises(CheckpointMismatchError, match=r"incomplete\.npz.*encoderblock_1/MlpBlock_3/Dense_0/kernel"):
        read_state_dict(path)
