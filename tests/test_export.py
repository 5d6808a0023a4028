"""Export: LiteRT (fp32 / float16 / dynamic_int8 / int8), SavedModel and ONNX, each run
after export and compared with the Keras model; atomic writes; the CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import keras_vitnt
from keras_vitnt.exporter import ExportParityError, run_litert


@pytest.fixture(scope="module")
def vit_tiny():
    return keras_vitnt.create_model("vit_tiny_patch16_224", weights=None, classifier_activation=None)


def max_tensor_rank(tflite_path):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=tflite_path)
    return max(len(t["shape"]) for t in interp.get_tensor_details())


def test_vit_litert_fp32_fp16_dynamic_int8(vit_tiny, tmp_path):
    reports = {q: keras_vitnt.export(vit_tiny, tmp_path / f"vit_{q}.tflite", quantization=q)
               for q in (None, "float16", "dynamic_int8")}
    fp32 = reports[None]
    print({q: (r["size_bytes"], r["max_relative_error"], r["correlation"]) for q, r in reports.items()})
    assert fp32["max_relative_error"] <= 1e-4 and fp32["top1_agreement"] == 1.0
    assert "FLEX" not in " ".join(fp32["ops"]) and "GELU" in fp32["ops"]  # builtin exact GELU, no Flex
    assert max_tensor_rank(str(tmp_path / "vit_None.tflite")) <= 4
    assert reports["float16"]["size_bytes"] <= 0.6 * fp32["size_bytes"]
    assert reports["dynamic_int8"]["size_bytes"] <= 0.35 * fp32["size_bytes"]
    for q in ("float16", "dynamic_int8"):
        assert reports[q]["correlation"] >= 0.99
    meta = json.loads((tmp_path / "vit_float16.tflite.json").read_text())
    assert meta["input_shape"] == [224, 224, 3] and meta["input_range"] == [0, 255]
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["output"] == "logits" and len(meta["class_names"]) == 1000
    assert meta["report"]["quantization"] == "float16"


def test_tnt_s_litert_fp32_and_dynamic_int8(tmp_path):
    model = keras_vitnt.TNT("S", weights=None, classifier_activation=None)
    fp32 = keras_vitnt.export(model, tmp_path / "tnt_s.tflite")
    dyn = keras_vitnt.export(model, tmp_path / "tnt_s_int8.tflite", quantization="dynamic_int8")
    print(fp32["max_relative_error"], dyn["size_bytes"] / fp32["size_bytes"], dyn["correlation"])
    assert fp32["max_relative_error"] <= 1e-4
    assert max_tensor_rank(str(tmp_path / "tnt_s.tflite")) <= 4
    assert dyn["size_bytes"] <= 0.35 * fp32["size_bytes"] and dyn["correlation"] >= 0.99


def test_int8_keeps_top1_on_real_digits(digits_runs, tmp_path):
    result, (x_test, y_test) = digits_runs["vit"]
    model, keras_acc = result.model, result.val_accuracy
    assert keras_acc >= 0.9  # a trained model: its predictions mean something
    rng = np.random.default_rng(0)
    calibration = x_test[rng.choice(len(x_test), 64, replace=False)]
    report = keras_vitnt.export(model, tmp_path / "digits_int8.tflite", quantization="int8",
                                representative_data=calibration, sample_data=x_test)
    lite = run_litert(str(tmp_path / "digits_int8.tflite"), x_test)
    lite_acc = float(np.mean(lite.argmax(1) == y_test))
    print(f"keras {keras_acc:.3f}, int8 {lite_acc:.3f}, agreement {report['top1_agreement']:.3f}")
    assert report["top1_agreement"] >= 0.95
    assert lite_acc >= keras_acc - 0.03


def test_saved_model_served_without_keras_vitnt(vit_tiny, tmp_path):
    report = keras_vitnt.export(vit_tiny, tmp_path / "vit_sm", format="saved_model")
    assert report["max_relative_error"] <= 1e-4
    x = np.random.default_rng(0).uniform(0, 255, (3, 224, 224, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys, numpy as np, tensorflow as tf\n"
        "fn = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
        "out = fn(image=tf.constant(np.load(sys.argv[2])))\n"
        "np.save(sys.argv[3], next(iter(out.values())).numpy())\n"
        "assert 'keras_vitnt' not in sys.modules\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "vit_sm"), str(tmp_path / "x.npy"),
                           str(tmp_path / "y.npy")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    served = np.load(tmp_path / "y.npy")
    ref = np.asarray(vit_tiny.predict_on_batch(x))
    assert np.max(np.abs(served - ref)) / np.max(np.abs(ref)) <= 1e-4
    assert (tmp_path / "vit_sm" / "keras_vitnt.json").is_file()


def test_onnx_export(tmp_path):
    model = keras_vitnt.TNT("S-legacy", weights=None, input_shape=(64, 64, 3), classes=10, depth=2,
                            classifier_activation=None)
    report = keras_vitnt.export(model, tmp_path / "tnt.onnx", format="onnx")
    assert report["max_relative_error"] <= 1e-4


def test_existing_destination_is_not_overwritten(vit_tiny, tmp_path):
    small = keras_vitnt.ViT("Ti/16", weights=None, input_shape=(32, 32, 3), classes=3, depth=1)
    dest = tmp_path / "model.tflite"
    dest.write_bytes(b"old contents")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        keras_vitnt.export(small, dest)
    assert dest.read_bytes() == b"old contents"
    keras_vitnt.export(small, dest, overwrite=True)
    assert dest.stat().st_size > 1000 and sorted(os.listdir(tmp_path)) == ["model.tflite", "model.tflite.json"]


def test_failing_export_leaves_nothing_behind(monkeypatch, tmp_path):
    import keras_vitnt.exporter as ex

    small = keras_vitnt.ViT("Ti/16", weights=None, input_shape=(32, 32, 3), classes=3, depth=1)
    monkeypatch.setitem(ex.RUNNERS, "litert", lambda path, x: np.asarray(small.predict(x, verbose=0)) + 1.0)
    with pytest.raises(ExportParityError, match="nothing was written") as e:
        keras_vitnt.export(small, tmp_path / "bad.tflite")
    assert e.value.report["max_relative_error"] > 1e-4
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kwargs,match", [
    (dict(format="tflite"), "format"),
    (dict(format="saved_model", quantization="float16"), "applies to format=.litert. only"),
    (dict(quantization="int4"), "quantization"),
])
def test_bad_export_arguments(kwargs, match, tmp_path):
    small = keras_vitnt.ViT("Ti/16", weights=None, input_shape=(32, 32, 3), classes=3, depth=1)
    with pytest.raises(ValueError, match=match):
        keras_vitnt.export(small, tmp_path / "m.tflite", **kwargs)


def test_export_cli_with_a_checkpoint_file(tmp_path):
    from test_cli import run_cli
    from timm_oracle import perturbed_timm_model, save_checkpoint

    ckpt = save_checkpoint(perturbed_timm_model("deit_tiny_patch16_224"), tmp_path / "deit.safetensors")
    out_path = tmp_path / "out" / "deit_fp16.tflite"
    out = run_cli("export", "deit_tiny_patch16_224", "--weights", str(ckpt), "--quantize", "float16",
                  "--out", str(out_path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "max relative error" in out.stdout and "top-1 agreement" in out.stdout
    assert out_path.is_file()
    again = run_cli("export", "deit_tiny_patch16_224", "--weights", str(ckpt), "--out", str(out_path))
    assert again.returncode == 1 and "already exists" in again.stderr and "Traceback" not in again.stderr
