"""Export for serving and mobile: SavedModel, LiteRT (.tflite, fp32 / float16 /
dynamic_int8 / int8), ONNX and OpenVINO (fast CPU inference, `OpenVINOModel`), each checked by
running the exported artifact.

Every export:
  1. writes into a temporary sibling of the destination,
  2. runs the artifact (LiteRT interpreter, `tf.saved_model.load`, onnxruntime, OpenVINO in f32) on sample
     inputs (real photos by default) and compares with the Keras model,
  3. refuses fp32 artifacts whose outputs differ by more than 1e-4 relative (nothing is
     left behind), and otherwise moves the artifact into place atomically,
  4. writes a sidecar JSON (`<path>.json`; inside the directory for SavedModel and OpenVINO) with the
     input size, value range, mean/std, output kind, label names and the parity report
     (for OpenVINO also the error of each lower precision the CPU computes natively).
An existing destination is never replaced unless `overwrite=True`, and then only if it is an
earlier export of this package (its sidecar says so). A mixed-precision model is exported as
its float32 copy (same weights): LiteRT's builtin ops and ONNX have no bfloat16 kernels.
On the JAX and PyTorch backends the model is saved as .keras and rebuilt on TensorFlow in a
subprocess, which writes the same artifact, checked against the source backend's outputs.
"""

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile

import numpy as np

from keras_vitnt.io_utils import SIDECAR
from keras_vitnt.litert import (  # noqa: F401  (run_litert, litert_ops, parity_report: public here too)
    CALIBRATED,
    MIXED_INT8_OPS,
    QUANTIZATIONS,
    as_batches,
    calibrate,
    litert_converter,
    litert_ops,
    mixed_int8_floats,
    parity_report,
    quantize_calibrated,
    run_litert,
)

log = logging.getLogger("keras_vitnt")

FORMATS = ("litert", "saved_model", "onnx", "openvino")
DIRECTORY_FORMATS = ("saved_model", "openvino")  # the others are one file with a <file>.json sidecar
FP32_TOLERANCE = 1e-4


class ExportParityError(RuntimeError):
    """The exported artifact does not reproduce the Keras model; nothing was written."""

    def __init__(self, message, report):
        super().__init__(message)
        self.report = report


# --- what the model expects -------------------------------------------------------


def native_size(model):
    """(H, W) a keras_vitnt model's position table is built for (the size a dynamic-size model
    runs without resampling), or None when it has none."""
    from keras_vitnt.layers import PatchEmbedding, PixelEmbed, PositionEmbedding

    pos = next((layer for layer in model.layers if isinstance(layer, PositionEmbedding)), None)
    patch = next((layer for layer in model.layers if isinstance(layer, (PatchEmbedding, PixelEmbed))), None)
    if pos is None or patch is None:
        return None
    return tuple(g * patch.patch_size for g in pos.grid_size)


def artifact_size(model, format, input_size=None):
    """(H, W) of the exported input: the model's own for a fixed-size model; for a dynamic-size
    one, `input_size`, else (None, None) for SavedModel/ONNX and the native size for LiteRT
    (whose delegates want static shapes), said in the log."""
    h, w = model.input_shape[1:3]
    if h is not None and w is not None:
        if input_size is not None and tuple(input_size) != (h, w):
            raise ValueError(f"input_size={tuple(input_size)}: this model takes {h}x{w} images; build it for "
                             "another size (create_model(..., input_shape=(H, W, 3))) or with any size "
                             "(input_shape=(None, None, 3))")
        return h, w
    if input_size is not None:
        return tuple(int(s) for s in input_size)
    if format != "litert":
        return None, None
    native = native_size(model)
    if native is None:
        raise ValueError("a LiteRT export needs a fixed input size: pass input_size=(H, W)")
    log.warning("%s takes any input size; LiteRT wants a fixed one: exporting at %dx%d, the size of its position "
                "table (pass input_size=(H, W), or --input-size H,W, for another)", model.name, *native)
    return native


def model_io(model, size=None):
    """Input size (`size` when given: the artifact's), whether normalisation is inside, its
    mean/std and the output kind."""
    from keras_vitnt.layers import Preprocess

    _, h, w, c = model.input_shape
    if size is not None:
        h, w = size
    pre = next((layer for layer in model.layers if isinstance(layer, Preprocess)), None)
    out_layer = model.layers[-1]
    activation = getattr(getattr(out_layer, "activation", None), "__name__", None)
    output = "probabilities" if activation == "softmax" else "logits" if activation == "linear" else "features"
    if len(model.output_shape) != 2:
        output = "features"
    return {
        "input_shape": [h, w, c],
        "input_dtype": "float32",
        "input_range": [0, 255] if pre else None,
        "preprocessing_inside": pre is not None,
        "mean": list(pre.mean) if pre else None,
        "std": list(pre.std) if pre else None,
        "output": output,
        "output_shape": list(model.output_shape[1:]),
    }


def default_samples(model, n=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), skip=0, size=None):
    """Real-photo crops at `size` (default: the model's input size, or its native size when it
    takes any), normalised if the model expects it. `skip` drops the first crops of the
    sequence (the calibration set skips the parity samples)."""
    from keras_vitnt.data.samples import photo_crops

    io = model_io(model)
    size = tuple(size) if size is not None and None not in size else tuple(io["input_shape"][:2])
    if None in size:
        size = native_size(model)
        if size is None:
            raise ValueError(f"{model.name} takes any input size and has no position table to tell its own: pass "
                             "sample_data (and input_size for LiteRT)")
    x = photo_crops(skip + n, size)[skip:]
    if not io["preprocessing_inside"]:
        x = (x / 255.0 - np.asarray(mean, "float32")) / np.asarray(std, "float32")
    return x.astype("float32")


def input_normalisation(model, mean=None, std=None):
    """{"mean", "std"} the sample and calibration photos are normalised with for a model that
    takes normalised input: the caller's, else the registered tag's (the model is named after
    its timm name), else 0.5/0.5 (said in the log)."""
    if (mean is None) != (std is None):
        raise ValueError("pass mean and std together (3 values each, for RGB in 0..1), or neither")
    if mean is not None:
        return {"mean": tuple(float(v) for v in mean), "std": tuple(float(v) for v in std)}
    from keras_vitnt.models.registry import REGISTRY

    name = model.name.split(".")[0]
    if name in REGISTRY:
        mean, std = REGISTRY[name].mean_std
        return {"mean": tuple(mean), "std": tuple(std)}
    log.warning("%s takes normalised input and is not a registered name: sample and calibration photos are "
                "normalised with mean = std = 0.5; pass mean= and std= (--mean/--std) if it expects others",
                model.name)
    return {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def _without_scored(calibration, samples):
    """`calibration` without the images the parity report scores (`samples`): calibrating on them
    would flatter the report. Says how many it dropped; ValueError if none is left."""
    import hashlib

    def digest(x):
        return hashlib.sha1(np.ascontiguousarray(x, "float32").tobytes()).hexdigest()

    scored = {digest(x) for x in samples}
    keep = np.asarray([digest(x) not in scored for x in calibration], bool)
    if not keep.any():
        raise ValueError(f"representative_data: all {len(calibration)} images are among the images the parity report "
                         "scores (sample_data); calibrate on other images")
    if not keep.all():
        log.warning("representative_data: left out %d images that the parity report scores (calibration never sees "
                    "them)", int((~keep).sum()))
    return calibration[keep]


# --- runners for exported artifacts ------------------------------------------------


def run_saved_model(path, x):
    import tensorflow as tf

    fn = tf.saved_model.load(path).signatures["serving_default"]
    return next(iter(fn(image=tf.constant(x)).values())).numpy()


def run_onnx(path, x):
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def run_openvino(path, x):
    from keras_vitnt.openvino_runtime import run_openvino as run

    return run(path, x, precision="f32")


RUNNERS = {"litert": run_litert, "saved_model": run_saved_model, "onnx": run_onnx, "openvino": run_openvino}


# --- writers -------------------------------------------------------------------------


def _write_saved_model(model, directory, batch_size, size):
    import tensorflow as tf
    from keras.export import ExportArchive

    (h, w), c = size, model.input_shape[-1]
    archive = ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve",
        lambda image: model(image, training=False),
        input_signature=[tf.TensorSpec((batch_size, h, w, c), tf.float32, name="image")],
    )
    archive.write_out(directory, verbose=False)


def _write_litert(model, path, quantization, representative_data, batch_size, size):
    """Converts `model` to a .tflite file at `path`."""
    converter = litert_converter(model, quantization, representative_data, batch_size, size)
    try:
        if quantization == "mixed_int8":
            calibrated = calibrate(converter)
            data = quantize_calibrated(calibrated, **mixed_int8_floats(calibrated))
        else:
            data = converter.convert()
    except Exception as e:
        raise RuntimeError(
            f"LiteRT conversion failed for {os.path.basename(path)} (quantization={quantization}): {e}"
        ) from e
    with open(path, "wb") as f:
        f.write(data)


def _write_onnx(model, path, batch_size, size):
    import importlib.util

    if importlib.util.find_spec("tf2onnx") is None:
        raise ImportError("ONNX export needs tf2onnx and onnxruntime: pip install 'keras_vitnt[onnx]'")
    import tensorflow as tf

    from keras_vitnt.layers.blocks import gelu_as_erf

    (h, w), c = size, model.input_shape[-1]
    with gelu_as_erf():  # TF's exact gelu lowers to Erfc, which ONNX lacks; Erf it has
        model.export(
            path,
            format="onnx",
            verbose=False,
            input_signature=[tf.TensorSpec((batch_size, h, w, c), tf.float32, name="image")],
        )


def _write_openvino(model, directory, batch_size, size):
    """An OpenVINO IR (model.xml + model.bin, float32 weights) in `directory`, through Keras's own
    exporter (the TensorFlow graph converted by `openvino.convert_model`)."""
    import tensorflow as tf

    from keras_vitnt.layers.base import layernorm_as_mvn
    from keras_vitnt.layers.blocks import gelu_as_erf
    from keras_vitnt.openvino_runtime import MODEL_FILE, _openvino

    _openvino()  # ImportError with the install hint before any work
    import importlib.util

    import keras

    if importlib.util.find_spec("keras.src.export.openvino") is None:
        raise ImportError(f"this Keras ({keras.__version__}) has no OpenVINO export (model.export(format='openvino')); "
                          "upgrade it: pip install -U keras")
    (h, w), c = size, model.input_shape[-1]
    os.makedirs(directory)
    # traced in the forms OpenVINO's converter fuses: LayerNorm into MVN, GELU (as erf) into Gelu;
    # TensorFlow's own forms it leaves as chains of elementwise ops (about 25% of TNT-S's time)
    with layernorm_as_mvn(), gelu_as_erf():
        model.export(os.path.join(directory, MODEL_FILE), format="openvino", verbose=False,
                     input_signature=[tf.TensorSpec((batch_size, h, w, c), tf.float32, name="image")])


def _low_precision_reports(tmp, target, samples, reference):
    """For an OpenVINO export: how far each lower precision this CPU computes natively (bf16, f16)
    moves the outputs, under report["bf16"] / ["f16"] (the precision is picked at load time)."""
    if target.format != "openvino":
        return {}
    from keras_vitnt.openvino_runtime import run_openvino, supported_precisions

    return {p: parity_report(reference, run_openvino(tmp, samples, precision=p))
            for p in supported_precisions() if p != "f32"}


# --- the public function ---------------------------------------------------------------


def export(
    model,
    path,
    format="litert",
    quantization=None,
    representative_data=None,
    overwrite=False,
    sample_data=None,
    class_names=None,
    batch_size="default",
    input_size=None,
    mean=None,
    std=None,
    layer_report=False,
):
    """Export a Keras model (any keras_vitnt model, fine-tuned or not) and check the result.

    Args:
        model: a `keras.Model` taking (B, H, W, 3) images.
        path: destination; `.tflite` for "litert", `.onnx` for "onnx", a directory for
            "saved_model" and "openvino" (model.xml + model.bin: run it with
            `keras_vitnt.OpenVINOModel(path, precision="f32" | "bf16")`).
        format: "litert", "saved_model", "onnx" or "openvino".
        quantization: LiteRT only: None (fp32), "float16" (fp16 weights), "dynamic_int8"
            (int8 weights), or, calibrated on `representative_data` (default: 32 crops of the
            bundled real photos): "int8" (full integer), "int16x8" (int8 weights, int16
            activations) or "mixed_int8" (integer Dense layers, convolution and GELU,
            everything else in float: see MIXED_INT8_OPS).
        representative_data: images (array (N, H, W, 3), or an iterable of arrays /
            (images, labels) batches) for calibration, as the model takes them. Images that
            are also in `sample_data` are left out (calibration never sees what is scored).
        overwrite: replace an earlier keras_vitnt export at `path`; otherwise, or when
            `path` holds anything else, a FileExistsError (and `path` is left untouched).
        sample_data: images for the parity check (default: 8 real-photo crops).
        class_names: label names for the sidecar JSON (default: ImageNet-1k names for a
            1000-class output, none otherwise).
        batch_size: batch dimension of the artifact: an int, or None for a dynamic batch.
            Default: 1 for LiteRT (static shapes suit mobile delegates), dynamic for
            SavedModel, ONNX and OpenVINO.
        input_size: (H, W) of the artifact's input, for a model that takes any size
            (input_shape=(None, None, 3)). Default: any size for SavedModel, ONNX and OpenVINO, the
            model's native size (its position table's) for LiteRT, which wants a fixed one.
        mean, std: the normalisation a model without preprocessing inside expects, for the
            default sample and calibration images (default: the registered tag's for a timm
            name, else 0.5/0.5, said in the log). Ignored when the model normalises itself.
        layer_report: with a calibrated quantization, add "int8_layers" to the report: where
            full int8 loses accuracy, per quantized op and per op group
            (`keras_vitnt.quantization.int8_report`; slow: one conversion per group).

    Returns:
        The report dict (also in the sidecar JSON): path, format, quantization, size in
        bytes, max relative error, top-1 agreement and correlation versus Keras.

    Raises:
        FileExistsError, ValueError on bad arguments; ExportParityError when an fp32
        artifact is off by more than 1e-4 relative (the file is not written), or, on JAX and
        PyTorch, when the model rebuilt on TensorFlow differs from this one by as much.
    """
    import keras

    target = _validated_target(path, format, quantization, overwrite, batch_size)

    from keras_vitnt.precision import float32_copy, model_policies

    policies = model_policies(model)
    model = float32_copy(model)  # LiteRT builtins and ONNX have no bfloat16 kernels
    size = artifact_size(model, target.format, input_size)
    io = model_io(model, size)
    if layer_report and target.quantization not in CALIBRATED:
        raise ValueError(f"layer_report needs a calibrated quantization ({', '.join(CALIBRATED)}), not "
                         f"{target.quantization}")
    default_photos = sample_data is None or (target.quantization in CALIBRATED and representative_data is None)
    norm = input_normalisation(model, mean, std) if default_photos and not io["preprocessing_inside"] else None
    if sample_data is not None:
        samples = np.asarray(sample_data, "float32")
    else:
        samples = default_samples(model, size=size, **(norm or {}))
    if target.quantization in CALIBRATED:
        if representative_data is None:
            # calibration never sees the images the parity report scores
            representative_data = default_samples(model, n=32, skip=0 if sample_data is not None else len(samples),
                                                  size=size, **(norm or {}))
            log.info("%s calibration on 32 crops of the bundled sample photos; pass representative_data "
                     "drawn from your own data for a better calibration", target.quantization)
        else:
            batches = as_batches(representative_data)
            if not batches:
                raise ValueError(f"{target.quantization} quantisation needs representative_data with at least one "
                                 "image")
            representative_data = _without_scored(np.concatenate(batches), samples)

    meta = {**io, "model": model.name, "source_dtype_policies": policies, "class_names": _class_names(class_names, io)}
    if keras.backend.backend() != "tensorflow":
        report = _export_through_tensorflow(model, target, samples, representative_data, size, layer_report, meta)
    else:
        report = _export_checked(model, target, samples, representative_data, size, layer_report, meta)
    log.info("exported %s (%s, %s): %s", target.path, target.format, target.quantization or "fp32",
             _fmt_report(report))
    return report


@dataclasses.dataclass(frozen=True)
class _Target:
    """The checked destination and settings of one export."""

    path: str  # absolute
    format: str
    quantization: object
    batch_size: object  # an int, or None for a dynamic batch
    overwrite: bool


def _validated_target(path, format, quantization, overwrite, batch_size):
    """`export`'s arguments checked (ValueError, FileExistsError) before any model work starts."""
    path = os.path.abspath(os.fspath(path))
    if format not in FORMATS:
        raise ValueError(f"format={format!r}: choose one of {FORMATS}")
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization={quantization!r}: choose one of {QUANTIZATIONS}")
    if quantization and format != "litert":
        raise ValueError(f"quantization applies to format='litert' only, not {format!r}")
    suffix = {"litert": ".tflite", "onnx": ".onnx"}.get(format)
    if suffix and not path.endswith(suffix):
        raise ValueError(f"a {format} export is a {suffix} file; got {path!r}")
    if format == "openvino" and path.endswith((".xml", ".bin")):
        raise ValueError(f"an openvino export is a folder (model.xml, model.bin and keras_vitnt.json inside); got "
                         f"{path!r}: pass the folder's path, e.g. {path[:-4] + '_openvino'!r}")
    _check_destination(path, format, overwrite)
    if batch_size == "default":  # a sentinel: None asks for a dynamic batch in every format
        batch_size = 1 if format == "litert" else None
    elif batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size={batch_size!r}: a positive integer, or None for a dynamic batch")
    return _Target(path, format, quantization, batch_size, overwrite)


@contextlib.contextmanager
def _work_dir(path):
    """Yields a temporary path beside `path` (same file system, so the final move is a rename);
    the temporary folder goes whatever happens."""
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        yield os.path.join(work, os.path.basename(path))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _write_artifact(model, tmp, target, representative_data, size):
    """Converts `model` into `target`'s format at `tmp`, input (batch, *size, C)."""
    if target.format == "saved_model":
        _write_saved_model(model, tmp, target.batch_size, size)
    elif target.format == "onnx":
        _write_onnx(model, tmp, target.batch_size, size)
    elif target.format == "openvino":
        _write_openvino(model, tmp, target.batch_size, size)
    else:
        _write_litert(model, tmp, target.quantization, representative_data, target.batch_size, size)


def _export_checked(model, target, samples, representative_data, size, layer_report, meta, reference=None,
                    extra_report=None):
    """Writes, checks and moves into place the artifact of a TensorFlow-backend `model` -> its report.
    `reference`: the outputs to check against (default: `model`'s on `samples`)."""
    with _work_dir(target.path) as tmp:
        _write_artifact(model, tmp, target, representative_data, size)
        report = _check_parity(model, tmp, target, samples, reference, extra_report)
        if layer_report:
            from keras_vitnt.quantization import int8_report

            report["int8_layers"] = int8_report(model, representative_data, samples, size,
                                                batch_size=target.batch_size or 1)
        meta_tmp = _write_sidecar(tmp, target.format, {**meta, "report": report})
        _move_into_place(tmp, target.path, meta_tmp, target.format, target.overwrite)
    return report


def _outputs(model, samples):
    return np.asarray(model.predict(samples, verbose=0, batch_size=8))


def _check_parity(model, tmp, target, samples, reference=None, extra_report=None):
    """The artifact at `tmp` run on `samples` beside the Keras model (or `reference`, its outputs)
    -> the export's report; ExportParityError for an fp32 artifact off by more than FP32_TOLERANCE."""
    if reference is None:
        reference = _outputs(model, samples)
    try:
        exported = RUNNERS[target.format](tmp, samples)
    except RuntimeError as e:  # e.g. an op the runtime has no kernel for at this precision
        hint = "; try another quantization" if target.format == "litert" else ""
        raise RuntimeError(f"the exported {target.format} file ({target.quantization or 'fp32'}) does not run: {e}. "
                           f"Nothing was written to {target.path}{hint}") from e
    report = {
        "path": target.path,
        "format": target.format,
        "quantization": target.quantization,
        "size_bytes": _size(tmp),
        **parity_report(reference, exported),
        **(extra_report or {}),
    }
    if target.format == "litert":
        report["ops"] = litert_ops(tmp)
    if target.quantization is None and report["max_relative_error"] > FP32_TOLERANCE:
        raise ExportParityError(
            f"the exported {target.format} model differs from the Keras model by "
            f"{report['max_relative_error']:.2e} (relative, > {FP32_TOLERANCE:g}); nothing was written to "
            f"{target.path}",
            report,
        )
    report.update(_low_precision_reports(tmp, target, samples, reference))
    return report


# --- from the JAX and PyTorch backends ----------------------------------------------------
# LiteRT, SavedModel and ONNX are made from TensorFlow graphs. A model on another Keras backend is
# saved as .keras and rebuilt on TensorFlow in a subprocess (KERAS_BACKEND=tensorflow), which
# writes the same artefact the TensorFlow backend would, checked against this backend's outputs.


def _export_through_tensorflow(model, target, samples, representative_data, size, layer_report, meta):
    import subprocess
    import sys

    import keras

    backend = keras.backend.backend()
    with tempfile.TemporaryDirectory(prefix="keras_vitnt_export-") as job:
        try:
            model.save(os.path.join(job, "model.keras"))
        except Exception as e:
            raise RuntimeError(
                f"export from the {backend} backend saves the model as .keras and rebuilds it on TensorFlow; saving "
                f"{model.name!r} failed: {e}. Build the model with KERAS_BACKEND=tensorflow and export it there"
            ) from e
        np.save(os.path.join(job, "samples.npy"), samples)
        np.save(os.path.join(job, "reference.npy"), _outputs(model, samples))
        if target.quantization in CALIBRATED:  # materialised by export() already
            np.save(os.path.join(job, "representative.npy"), representative_data)
        with open(os.path.join(job, "job.json"), "w") as f:
            json.dump({"target": dataclasses.asdict(target), "size": list(size), "layer_report": layer_report,
                       "meta": {**meta, "source_backend": backend}}, f)
        log.info("exporting from the %s backend: the model is rebuilt on TensorFlow in a subprocess", backend)
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from keras_vitnt.exporter import _tensorflow_worker; "
             "_tensorflow_worker(sys.argv[1])", job],
            # TensorFlow would take the GPU memory this process's backend holds: it grows as needed
            env={**os.environ, "KERAS_BACKEND": "tensorflow", "TF_FORCE_GPU_ALLOW_GROWTH": "true"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            output = proc.communicate()[0]
        except BaseException:  # e.g. Ctrl-C: the worker is stopped so that it removes its temporary files
            proc.terminate()
            proc.wait()
            raise
        try:
            with open(os.path.join(job, "result.json")) as f:
                result = json.load(f)
        except (OSError, ValueError):
            raise RuntimeError(f"export from the {backend} backend: the TensorFlow subprocess failed (exit code "
                               f"{proc.returncode}); nothing was written to {target.path}. Its output ends:\n"
                               f"{output[-3000:]}") from None
    if "error" in result:
        message = f"{result['error']} (export from the {backend} backend, rebuilt on TensorFlow)"
        if result["type"] == "ExportParityError":
            raise ExportParityError(message, result["report"])
        import builtins

        error = getattr(builtins, result["type"], None)  # ValueError, FileExistsError, ModuleNotFoundError, ...
        if not (isinstance(error, type) and issubclass(error, Exception)):
            error, message = RuntimeError, f"{result['type']}: {message}\n{result['traceback']}"
        raise error(message)
    return result["report"]


def _tensorflow_worker(job):
    """The subprocess side of `_export_through_tensorflow` (KERAS_BACKEND=tensorflow): loads the
    job, checks the rebuilt model against the source backend's outputs, exports; result.json."""
    import signal
    import sys

    import keras

    from keras_vitnt import layers, optimizers  # noqa: F401  (register their classes for load_model)

    # terminated by the parent: unwind, so that the export's temporary folder goes
    signal.signal(signal.SIGTERM, lambda *args: sys.exit(1))

    with open(os.path.join(job, "job.json")) as f:
        spec = json.load(f)
    target = _Target(**spec["target"])
    samples, reference = np.load(os.path.join(job, "samples.npy")), np.load(os.path.join(job, "reference.npy"))
    rep_path = os.path.join(job, "representative.npy")
    representative_data = np.load(rep_path) if os.path.exists(rep_path) else None
    meta = spec["meta"]
    try:
        model = keras.models.load_model(os.path.join(job, "model.keras"), compile=False)
        rebuild = parity_report(reference, _outputs(model, samples))
        extra = {"source_backend": meta["source_backend"], "rebuild_relative_error": rebuild["max_relative_error"]}
        if rebuild["max_relative_error"] > FP32_TOLERANCE:
            raise ExportParityError(
                f"the model rebuilt on TensorFlow differs from the {meta['source_backend']} model by "
                f"{rebuild['max_relative_error']:.2e} (relative, > {FP32_TOLERANCE:g}); nothing was written to "
                f"{target.path}", {**rebuild, **extra})
        result = {"report": _export_checked(model, target, samples, representative_data, tuple(spec["size"]),
                                            spec["layer_report"], meta, reference=reference, extra_report=extra)}
    except Exception as e:
        import traceback

        result = {"error": str(e), "type": type(e).__name__, "report": getattr(e, "report", None),
                  "traceback": traceback.format_exc()[-4000:]}
    with open(os.path.join(job, "result.json"), "w") as f:
        json.dump(result, f)


def _write_sidecar(tmp, format, meta):
    """Writes `meta` as the sidecar of the artifact at `tmp`: inside a SavedModel directory (it
    moves with it; returns None), else `<tmp>.json` (returned, to be moved beside the file)."""
    if format not in DIRECTORY_FORMATS:  # ties the sidecar to the file it describes
        meta["sha256"] = _sha256(tmp)
    meta_tmp = os.path.join(tmp, SIDECAR) if format in DIRECTORY_FORMATS else tmp + ".json"
    with open(meta_tmp, "w") as f:
        json.dump(meta, f, indent=1)
    return meta_tmp if format not in DIRECTORY_FORMATS else None


def _size(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    return os.path.getsize(path)


def _class_names(class_names, io):
    if class_names is not None:
        return list(class_names)
    if io["output_shape"] == [1000]:
        from keras_vitnt.data.imagenet import imagenet_classes

        return [desc for _, desc in imagenet_classes()]
    return None


def _is_our_export(path, format):
    """Whether `path` holds an export of this `format` that this package wrote (its sidecar JSON with a report)."""
    try:
        with open(sidecar_path(path, format)) as f:
            report = json.load(f).get("report")
    except (OSError, ValueError, AttributeError):
        return False
    # sidecars of the first exports had no "format": those are the file formats and SavedModel
    return isinstance(report, dict) and report.get("format", None if format == "openvino" else format) == format


def sidecar_path(path, format):
    """Where an export's metadata JSON is: inside a directory format's folder, else `<file>.json`."""
    return os.path.join(path, SIDECAR) if format in DIRECTORY_FORMATS else path + ".json"


def _check_destination(path, format, overwrite):
    """Nothing the user made is replaced: an existing destination (or, for a file, its sidecar
    name) needs `overwrite=True` and must be an earlier keras_vitnt export of the same format."""
    sidecar = sidecar_path(path, format)
    taken = [p for p in ((path,) if format in DIRECTORY_FORMATS else (path, sidecar)) if os.path.lexists(p)]
    if not taken:
        return
    if not overwrite:
        raise FileExistsError(f"{taken[0]} already exists; pass overwrite=True (--overwrite) to replace an earlier "
                              "export there (it is left untouched)")
    is_dir = os.path.isdir(path) and not os.path.islink(path)
    if (os.path.lexists(path) and is_dir != (format in DIRECTORY_FORMATS)) or not _is_our_export(path, format):
        other = next((f for f in FORMATS if f != format and _is_our_export(path, f)), None)
        what = f"a keras_vitnt {other} export" if other else f"no {sidecar} written by keras_vitnt"
        raise FileExistsError(
            f"{path} exists and is not a keras_vitnt {format} export ({what}): overwrite only replaces the "
            f"package's own exports of the same format. It was left untouched; choose another path or remove it "
            "yourself."
        )


def _sha256(path):
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _move_into_place(tmp, path, meta_tmp, format, overwrite):
    """Atomic for files; a directory replaces an old export via a rename aside (and is put back if
    the swap fails). The destination is checked again here, since the export took minutes: a
    file that appeared meanwhile is never replaced without `overwrite` (a hard link is a rename
    that refuses to clobber). An old sidecar goes first, so a crash in between leaves a file
    without a sidecar, never a file with another file's sidecar (whose sha256 would not match)."""
    _check_destination(path, format, overwrite)
    if os.path.isdir(tmp):
        if not os.path.lexists(path):
            os.rename(tmp, path)  # fails on a non-empty folder that appeared meanwhile
            return
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=os.path.dirname(path))
        os.replace(path, os.path.join(old, "export"))
        try:
            os.replace(tmp, path)
        except OSError:
            os.replace(os.path.join(old, "export"), path)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
        return
    if overwrite:
        if os.path.lexists(path + ".json"):
            os.remove(path + ".json")
        os.replace(tmp, path)
        os.replace(meta_tmp, path + ".json")
    else:
        for src, dst in ((tmp, path), (meta_tmp, path + ".json")):
            try:
                os.link(src, dst)  # FileExistsError if dst appeared since the check
                os.remove(src)
            except FileExistsError:
                raise
            except OSError:  # a file system without hard links: the check above has to do
                os.replace(src, dst)


def _fmt_report(report):
    parts = [f"size {report['size_bytes'] / 1e6:.2f} MB", f"max rel. error {report['max_relative_error']:.2e}"]
    if "top1_agreement" in report:
        parts.append(f"top-1 agreement {report['top1_agreement']:.2%}")
    parts.append(f"correlation {report['correlation']:.5f}")
    return ", ".join(parts)
