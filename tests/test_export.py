"""Export: LiteRT (fp32 / float16 / dynamic_int8 / int8), SavedModel and ONNX, each run
after export and compared with the Keras model; atomic writes; the CLI."""

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import keras_vitnt
from keras_vitnt.exporter import ExportParityError, run_litert
from timm_oracle import relative_error


@pytest.fixture(scope="module")
def vit_tiny():
    return keras_vitnt.create_model("vit_tiny_patch16_224", weights=None, classifier_activation=None)


def tiny_vit(**kw):
    return keras_vitnt.ViT("Ti/4", weights=None, input_shape=(16, 16, 3), classes=10, depth=1, embed_dim=48,
                           num_heads=3, classifier_activation=None, **kw)


def rgb(n, size, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def input_batch_dim(tflite_path):
    from ai_edge_litert.interpreter import Interpreter

    return int(Interpreter(model_path=str(tflite_path)).get_input_details()[0]["shape_signature"][0])


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
    # fp16 weights are off by ~1e-3 relative, int8 weights by ~3e-2: a file quantised the other way fails
    assert reports["float16"]["max_relative_error"] <= 5e-3 and reports["float16"]["correlation"] >= 0.9999
    assert reports["dynamic_int8"]["max_relative_error"] <= 0.15
    assert reports["dynamic_int8"]["correlation"] >= 0.99
    # the report's numbers are those of the written files, on inputs the export did not see
    x = rgb(2, 224, seed=5)
    ref = np.asarray(vit_tiny.predict_on_batch(x))
    assert relative_error(run_litert(str(tmp_path / "vit_None.tflite"), x), ref) <= 1e-4
    assert relative_error(run_litert(str(tmp_path / "vit_float16.tflite"), x), ref) <= 5e-3
    meta = json.loads((tmp_path / "vit_float16.tflite.json").read_text())
    assert meta["input_shape"] == [224, 224, 3] and meta["input_range"] == [0, 255]
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["output"] == "logits" and len(meta["class_names"]) == 1000
    assert meta["report"]["quantization"] == "float16"


def test_tnt_s_litert_fp32_and_dynamic_int8(tmp_path):
    # real widths and input size, 2 blocks (the full 12 took 36 s of make test; `make demo` and the
    # benchmark export full-depth TNTs)
    model = keras_vitnt.TNT("S", weights=None, classifier_activation=None, depth=2)
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
    from keras_vitnt import demo
    from keras_vitnt.data.digits import load_digits

    # calibrated on training digits, scored on the test digits it never saw
    (x_train, _), _ = load_digits(size=demo.IMAGE_SIZE)
    rng = np.random.default_rng(0)
    calibration = x_train[rng.choice(len(x_train), 64, replace=False)]
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
    from keras_vitnt.exporter import run_onnx

    x = rgb(3, 64, seed=5)  # dynamic batch, inputs the export did not see
    assert relative_error(run_onnx(str(tmp_path / "tnt.onnx"), x), np.asarray(model.predict_on_batch(x))) <= 1e-4


def test_existing_destination_is_not_overwritten(tmp_path):
    small = keras_vitnt.ViT("Ti/16", weights=None, input_shape=(32, 32, 3), classes=3, depth=1)
    dest = tmp_path / "model.tflite"
    dest.write_bytes(b"old contents")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        keras_vitnt.export(small, dest)
    with pytest.raises(FileExistsError, match="not a keras_vitnt litert export"):  # not ours: not even then
        keras_vitnt.export(small, dest, overwrite=True)
    assert dest.read_bytes() == b"old contents" and os.listdir(tmp_path) == ["model.tflite"]
    # an earlier export is replaced by the new model, sidecar included
    dest.unlink()
    keras_vitnt.export(small, dest)
    other = keras_vitnt.ViT("Ti/16", weights=None, input_shape=(32, 32, 3), classes=3, depth=1)
    keras_vitnt.export(other, dest, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["model.tflite", "model.tflite.json"]
    x = rgb(2, 32)
    new, old = np.asarray(other.predict_on_batch(x)), np.asarray(small.predict_on_batch(x))
    assert not np.allclose(new, old, atol=1e-4)
    np.testing.assert_allclose(run_litert(str(dest), x), new, rtol=1e-4, atol=1e-6)


def test_litert_batch_size_none_is_a_dynamic_batch(tmp_path):
    """README: LiteRT files have batch 1 by default, `batch_size=None` gives a dynamic batch."""
    small = tiny_vit()
    x = rgb(3, 16)
    keras_vitnt.export(small, tmp_path / "static.tflite", sample_data=x)
    report = keras_vitnt.export(small, tmp_path / "dynamic.tflite", batch_size=None, sample_data=x)
    assert input_batch_dim(tmp_path / "static.tflite") == 1
    assert input_batch_dim(tmp_path / "dynamic.tflite") == -1
    assert report["max_relative_error"] <= 1e-4
    lite = run_litert(str(tmp_path / "dynamic.tflite"), x)  # one call at batch 3
    assert lite.shape == (3, 10)
    assert relative_error(lite, np.asarray(small.predict_on_batch(x))) <= 1e-4


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


def test_export_cli_with_a_checkpoint_file(tmp_path, capsys):
    from test_cli import main_here
    from timm_oracle import perturbed_timm_model, save_checkpoint

    ckpt = save_checkpoint(perturbed_timm_model("deit_tiny_patch16_224"), tmp_path / "deit.safetensors")
    out_path = tmp_path / "out" / "deit_fp16.tflite"
    out = main_here(capsys, "export", "deit_tiny_patch16_224", "--weights", str(ckpt), "--quantize", "float16",
                    "--out", str(out_path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "max relative error" in out.stdout and "top-1 agreement" in out.stdout
    assert json.loads(out_path.with_name(out_path.name + ".json").read_text())["report"]["quantization"] == "float16"
    # the file holds the checkpoint's weights (a model left at random init would be far off)
    model = keras_vitnt.create_model("deit_tiny_patch16_224", weights=str(ckpt))  # probabilities, as the file
    x = rgb(2, 224, seed=5)
    assert relative_error(run_litert(str(out_path), x), np.asarray(model.predict_on_batch(x))) <= 5e-3
    again = main_here(capsys, "export", "deit_tiny_patch16_224", "--weights", str(ckpt), "--out", str(out_path))
    assert again.returncode == 1 and "already exists" in again.stderr and "Traceback" not in again.stderr


def test_export_cli_int8_reads_the_calibration_folder(tmp_path, capsys):
    from PIL import Image

    from keras_vitnt.data import load_images
    from test_cli import main_here

    model = tiny_vit()
    model.save(tmp_path / "m.keras")
    out_path = tmp_path / "m_int8.tflite"
    cmd = ["export", str(tmp_path / "m.keras"), "--quantize", "int8", "--out", str(out_path), "--calibration"]

    empty = tmp_path / "empty"
    (empty / "class_a").mkdir(parents=True)
    (empty / "class_a" / "notes.txt").write_text("no images here")
    res = main_here(capsys, *cmd, str(empty))
    assert res.returncode == 1 and f"--calibration {empty}: no images found" in res.stderr
    assert "Traceback" not in res.stderr and not out_path.exists()

    # a folder of class folders, extensions in any case; a damaged file is named: the files are read
    calib = tmp_path / "calib"
    rng = np.random.default_rng(0)
    for i in range(9):
        (calib / f"class_{i % 3}").mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (24, 20, 3), dtype="uint8")
        Image.fromarray(pixels).save(calib / f"class_{i % 3}" / f"img{i}.{'JPG' if i % 2 else 'jpg'}", quality=95)
    (calib / "class_0" / "broken.jpg").write_text("not a jpeg")
    res = main_here(capsys, *cmd, str(calib))
    assert res.returncode == 1 and "broken.jpg" in res.stderr and not out_path.exists()

    (calib / "class_0" / "broken.jpg").unlink()
    res = main_here(capsys, *cmd, str(calib))
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"int8 calibration on 9 images from {calib}" in res.stdout and "(litert, int8," in res.stdout
    assert json.loads((tmp_path / "m_int8.tflite.json").read_text())["report"]["quantization"] == "int8"
    # calibrated on those images: the same file as an export with them as representative_data
    files = sorted(str(p) for p in calib.rglob("*") if p.is_file())
    keras_vitnt.export(model, tmp_path / "here.tflite", quantization="int8",
                       representative_data=load_images(files, size=16))
    x = rgb(4, 16, seed=5)
    np.testing.assert_array_equal(run_litert(str(out_path), x), run_litert(str(tmp_path / "here.tflite"), x))


def test_openvino_export_runs_at_each_precision(tmp_path):
    """format="openvino": a folder (model.xml/.bin + sidecar) checked in f32; OpenVINOModel runs it at the
    precision asked for, never at OpenVINO's own default (bf16 on CPUs that have it), with the error the
    export's report states for each lower precision."""
    from keras_vitnt.openvino_runtime import OpenVINOModel, supported_precisions

    model = keras_vitnt.TNT("S-legacy", weights=None, input_shape=(64, 64, 3), classes=10, depth=2,
                            classifier_activation=None)
    dest = tmp_path / "tnt_openvino"
    report = keras_vitnt.export(model, dest, format="openvino")
    assert sorted(os.listdir(dest)) == ["keras_vitnt.json", "model.bin", "model.xml"]
    assert os.listdir(tmp_path) == ["tnt_openvino"]  # no temporary left
    assert report["format"] == "openvino" and report["max_relative_error"] <= 1e-5
    assert json.loads((dest / "keras_vitnt.json").read_text())["report"]["max_relative_error"] == \
        report["max_relative_error"]

    x = rgb(5, 64, seed=3)  # a dynamic batch, inputs the export did not see
    ref = np.asarray(model.predict_on_batch(x))
    f32 = OpenVINOModel(dest, precision="f32", threads=2)
    assert f32.input_shape == (None, 64, 64, 3) and f32.metadata["output"] == "logits"
    assert relative_error(f32(x), ref) <= 1e-5
    assert relative_error(f32.predict(x, batch_size=2), ref) <= 1e-5  # batches of 2, 2 and 1
    assert sorted(f32._requests) == [(1, 64, 64, 3), (2, 64, 64, 3), (5, 64, 64, 3)]  # compiled per shape
    one_for_all = OpenVINOModel(dest, static_shapes=False, max_shapes=1)
    assert relative_error(one_for_all.predict(x, batch_size=2), ref) <= 1e-5 and list(one_for_all._requests) == [None]
    for precision in supported_precisions():
        if precision == "f32":
            continue
        low = OpenVINOModel(dest, precision=precision)
        err = relative_error(low(x), ref)
        assert 1e-5 < err < 5e-2, (precision, err)  # computed at that precision, and close
        assert report[precision]["correlation"] > 0.999 and 1e-5 < report[precision]["max_relative_error"] < 5e-2
    # traced in the forms OpenVINO fuses: every LayerNorm one MVN kernel, GELU inside its matmul kernel
    # (TensorFlow's own forms stay chains of elementwise ops there: 25-40% slower on TNT-S)
    runtime = [(op.get_rt_info()["layerType"].astype(str), op.get_rt_info()["originalLayersNames"].astype(str))
               for op in f32._requests[(5, 64, 64, 3)][0].get_compiled_model().get_runtime_model().get_ordered_ops()]
    norms = [layer for layer in model._flatten_layers() if isinstance(layer, keras_vitnt.layers.LayerNorm)]
    assert sum(kind == "MVN" for kind, _ in runtime) == len(norms) > 0
    assert not [names for kind, names in runtime if "Erf" in names and kind != "FullyConnected"]
    with pytest.raises(ValueError, match=r"takes inputs of shape \(None, 64, 64, 3\)"):
        f32(rgb(1, 32))
    with pytest.raises(ValueError, match="precision='int4'"):
        OpenVINOModel(dest, precision="int4")
    with pytest.raises(FileNotFoundError, match="no OpenVINO model there"):
        OpenVINOModel(tmp_path / "elsewhere")
    # another format's overwrite does not take this folder
    with pytest.raises(FileExistsError, match="a keras_vitnt openvino export"):
        keras_vitnt.export(model, dest, format="saved_model", overwrite=True)
    assert sorted(os.listdir(dest)) == ["keras_vitnt.json", "model.bin", "model.xml"]


def test_openvino_export_of_an_any_size_model(tmp_path):
    """A model built for any input size exports with dynamic height and width, as SavedModel and ONNX."""
    import openvino as ov

    from keras_vitnt.openvino_runtime import OpenVINOModel

    model = keras_vitnt.DeiT("Ti/16", weights=None, distilled=True, input_shape=(None, None, 3), depth=1,
                             classes=7, classifier_activation=None)
    dest = tmp_path / "deit_any"
    keras_vitnt.export(model, dest, format="openvino", sample_data=rgb(2, 32))
    fast = OpenVINOModel(dest, max_shapes=1)
    assert fast.input_shape == (None, None, None, 3)
    for h, w in ((32, 32), (48, 16)):
        x = np.random.default_rng(h).uniform(0, 255, (2, h, w, 3)).astype("float32")
        assert relative_error(fast(x), np.asarray(model.predict_on_batch(x))) <= 1e-5
    assert list(fast._requests) == [(2, 48, 16, 3)]  # the oldest shape's compiled model was let go
    # a plain OpenVINO user reads it without keras_vitnt
    compiled = ov.Core().compile_model(str(dest / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert relative_error(compiled(x)[0], fast(x)) <= 1e-6


def test_openvino_fixed_batch_overwrite_and_refusals(monkeypatch, tmp_path):
    from keras_vitnt import openvino_runtime
    from keras_vitnt.openvino_runtime import OpenVINOModel

    small = tiny_vit()
    x = rgb(3, 16, seed=2)
    ref = np.asarray(small.predict_on_batch(x))
    dest = tmp_path / "vit_openvino"
    # a fixed batch: the parity check and predict run 3 images as batches of 2, the last one padded
    report = keras_vitnt.export(small, dest, format="openvino", batch_size=2, sample_data=x)
    assert report["max_relative_error"] <= 1e-5
    fixed = OpenVINOModel(dest, max_shapes=2)
    assert fixed.input_shape == (2, 16, 16, 3) and relative_error(fixed.predict(x), ref) <= 1e-5

    # overwrite replaces its own openvino export, and no other format's folder
    other = tiny_vit()
    keras_vitnt.export(other, dest, format="openvino", overwrite=True, sample_data=x)
    assert relative_error(OpenVINOModel(dest)(x), np.asarray(other.predict_on_batch(x))) <= 1e-5
    keras_vitnt.export(small, tmp_path / "vit_sm", format="saved_model", sample_data=x)
    with pytest.raises(FileExistsError, match="a keras_vitnt saved_model export"):
        keras_vitnt.export(small, tmp_path / "vit_sm", format="openvino", overwrite=True, sample_data=x)
    assert "saved_model.pb" in os.listdir(tmp_path / "vit_sm")
    with pytest.raises(ValueError, match="an openvino export is a folder"):
        keras_vitnt.export(small, tmp_path / "vit.xml", format="openvino")
    for wrong in ("model.bin", "keras_vitnt.json"):
        with pytest.raises(ValueError, match="is not an OpenVINO model"):
            OpenVINOModel(dest / wrong)
    assert relative_error(OpenVINOModel(dest / "model.xml")(x), np.asarray(other.predict_on_batch(x))) <= 1e-5

    # the compiled shapes are kept least recently used first
    lru = OpenVINOModel(dest, max_shapes=2)
    for n in (1, 2, 1, 3):
        lru(x[:n])
    assert list(lru._requests) == [(1, 16, 16, 3), (3, 16, 16, 3)]
    with pytest.raises(ValueError, match="max_shapes=0"):
        OpenVINOModel(dest, max_shapes=0)

    # a CPU without native bf16: refused, not emulated, and the export reports no bf16 error
    monkeypatch.setattr(openvino_runtime, "supported_precisions", lambda device="CPU": ("f32",))
    with pytest.raises(ValueError, match="has no native bf16"):
        OpenVINOModel(dest, precision="bf16")
    report = keras_vitnt.export(small, tmp_path / "no_bf16", format="openvino", sample_data=x)
    assert "bf16" not in report and "f16" not in report


def test_openvino_splits_a_batch_across_streams_with_the_same_numbers(tmp_path):
    """A batch runs as equal parts on OpenVINO's streams at once (`streams`), with the outputs of one
    request; a batch that does not split evenly, and a single image, run as one request."""
    from keras_vitnt import openvino_runtime
    from keras_vitnt.openvino_runtime import OpenVINOModel

    small = tiny_vit()
    dest = tmp_path / "vit_openvino"
    keras_vitnt.export(small, dest, format="openvino", sample_data=rgb(2, 16))
    x = rgb(6, 16, seed=4)
    one = OpenVINOModel(dest, streams=1)
    ref = one(x)
    assert len(one._requests[x.shape]) == 1
    assert relative_error(ref, np.asarray(small.predict_on_batch(x))) <= 1e-5
    same = lambda a, b: relative_error(a, b) <= 1e-6  # noqa: E731  (kernels may differ with the batch)
    two = OpenVINOModel(dest, streams=2, threads=2)
    assert same(two(x), ref)  # 2 x 3 images, in order
    requests = two._requests[x.shape]
    assert len(requests) == 2
    compiled = requests[0].get_compiled_model()
    assert int(compiled.get_property("NUM_STREAMS")) == 2 and list(compiled.inputs[0].shape) == [3, 16, 16, 3]
    three = OpenVINOModel(dest, streams=3)
    assert same(three(x), ref) and len(three._requests[x.shape]) == 3  # 3 x 2
    assert same(three(x[:4]), one(x[:4]))  # 2 x 2: the most parts, up to 3, that divide 4
    assert len(three._requests[(4, 16, 16, 3)]) == 2
    for n in (5, 1):  # 5 does not split into 2 or 3 equal parts
        assert same(three(x[:n]), one(x[:n]))
        assert len(three._requests[(n, 16, 16, 3)]) == 1
    assert [three.parts(n) for n in (1, 4, 5, 6, 9)] == [1, 2, 1, 3, 3] and one.parts(6) == 1 and two.parts(6) == 2
    assert same(three.predict(x, batch_size=4), ref)

    class Part:  # a request that fails to start or to finish: the error comes out, and no part is left running
        def __init__(self, fails=None):
            self.fails, self.started, self.waited = fails, False, False

        def start_async(self, inputs):
            if self.fails == "start":
                raise RuntimeError("this part did not start")
            self.started = True

        def wait(self):
            self.waited = True
            if self.fails == "wait":
                raise RuntimeError("this part failed")

        def get_output_tensor(self, index):
            return types.SimpleNamespace(data=np.zeros((3, 10), "float32"))

    parts = two._requests[x.shape] = [Part("wait"), Part()]
    with pytest.raises(RuntimeError, match="this part failed"):
        two(x)
    assert [p.waited for p in parts] == [True, True]
    parts = two._requests[x.shape] = [Part(), Part("start")]
    with pytest.raises(RuntimeError, match="this part did not start"):
        two(x)
    assert parts[0].started and parts[0].waited and not parts[1].waited
    auto = OpenVINOModel(dest)  # OpenVINO's choice for this model and CPU
    assert same(auto(x), ref)
    assert auto.streams >= 1 and "streams=" in repr(auto)
    assert len(auto._requests[x.shape]) == openvino_runtime._split(6, auto.streams)
    assert OpenVINOModel(dest, streams=np.int64(2)).streams == 2
    capped = OpenVINOModel(dest, streams=3, threads=1)  # at most one stream per thread
    assert capped.streams == 1 and same(capped(x), ref) and len(capped._requests[x.shape]) == 1
    for wrong in (0, 1.5, True, "2"):
        with pytest.raises(ValueError, match="streams="):
            OpenVINOModel(dest, streams=wrong)
    with pytest.raises(ValueError, match="static_shapes=False"):
        OpenVINOModel(dest, streams=2, static_shapes=False)
    # an export for a fixed batch: its graph holds the batch, so batches run whole
    keras_vitnt.export(small, tmp_path / "fixed", format="openvino", batch_size=4, sample_data=x[:4])
    fixed = OpenVINOModel(tmp_path / "fixed")
    assert fixed.streams == 1 and same(fixed(x[:4]), ref[:4])
    with pytest.raises(ValueError, match="exported for batches of 4 exactly"):
        OpenVINOModel(tmp_path / "fixed", streams=2)


def test_export_cli_openvino(tmp_path, capsys):
    from test_cli import main_here

    model = tiny_vit()
    model.save(tmp_path / "m.keras")
    out = main_here(capsys, "export", str(tmp_path / "m.keras"), "--format", "openvino")
    assert out.returncode == 0, out.stderr[-2000:]
    dest = tmp_path / "m_openvino"  # inside the model's folder, beside it
    assert f"metadata: {dest / 'keras_vitnt.json'}" in out.stdout and "max relative error" in out.stdout
    from keras_vitnt.openvino_runtime import OpenVINOModel, supported_precisions

    for precision in supported_precisions():
        if precision != "f32":
            assert f"run at precision='{precision}' (OpenVINOModel)" in out.stdout
    x = rgb(2, 16)
    assert relative_error(OpenVINOModel(dest)(x), np.asarray(model.predict_on_batch(x))) <= 1e-5
