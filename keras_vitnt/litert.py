"""LiteRT conversion and checking, shared by the exporter and the int8 report: the converter
for each quantization, calibration and quantization with ops left in float, and running a
.tflite file. (Below `exporter` and `quantization`, which both use it.)"""

import contextlib

import numpy as np

QUANTIZATIONS = (None, "float16", "dynamic_int8", "int8", "int16x8", "mixed_int8")
CALIBRATED = ("int8", "int16x8", "mixed_int8")  # the modes that need representative data
# mixed_int8: the op types kept in integer; every other op computes in float. Measured with the
# per-layer report (README, "Where full int8 loses accuracy"): LayerNorm's decomposition
# (MEAN, SQUARED_DIFFERENCE, RSQRT, ...) and the attention SOFTMAX carry most of full int8's
# error, the attention BATCH_MATMULs and the residual ADDs the rest; the Dense layers, the
# patch / pixel convolution and GELU lose little and hold nearly all the FLOPs. One Dense is the
# exception: attention's output projection, whose input (the heads' outputs side by side) has
# ranges that differ by head, which one int8 scale for the whole tensor cannot hold (in TNT-S
# it alone took the correlation from 0.996 to 0.955): it stays float too.
MIXED_INT8_OPS = ("FULLY_CONNECTED", "CONV_2D", "GELU")
MIXED_FLOAT_DENSE = r"/attn[^/]*/proj[^/]*/"  # Keras layer path of attention's output projection


def as_batches(data):
    """A generator/iterable/array of images -> list of (1, H, W, C) float32 arrays."""
    out = []
    for item in data if not isinstance(data, np.ndarray) else [data]:
        if isinstance(item, (list, tuple)):  # (images, labels) or [images]
            item = item[0]
        a = np.asarray(item, dtype="float32")
        a = a[None] if a.ndim == 3 else a
        out.extend(a[i : i + 1] for i in range(a.shape[0]))
    return out


def run_litert(path, x, num_threads=2):
    """Run a .tflite file on a batch, one image at a time (the file's batch is 1)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path, num_threads=num_threads)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    if inp["shape"][0] != x.shape[0] and inp["shape_signature"][0] == -1:
        interp.resize_tensor_input(inp["index"], [x.shape[0], *inp["shape"][1:]])
        interp.allocate_tensors()
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        return interp.get_tensor(out["index"]).copy()
    interp.allocate_tensors()
    ys = []
    for i in range(x.shape[0]):
        interp.set_tensor(inp["index"], x[i : i + 1])
        interp.invoke()
        ys.append(interp.get_tensor(out["index"]).copy())
    return np.concatenate(ys)


def litert_ops(path):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path)
    return sorted({op["op_name"] for op in interp._get_ops_details()})


def parity_report(reference, exported):
    reference, exported = np.asarray(reference, "float64"), np.asarray(exported, "float64")
    rel = float(np.max(np.abs(reference - exported)) / max(np.max(np.abs(reference)), 1e-12))
    report = {"samples": int(reference.shape[0]), "max_relative_error": rel}
    if reference.ndim == 2 and reference.shape[1] > 1:
        report["top1_agreement"] = float(np.mean(reference.argmax(1) == exported.argmax(1)))
    report["correlation"] = float(np.corrcoef(reference.ravel(), exported.ravel())[0, 1])
    return report


def litert_converter(model, quantization, representative_data, batch_size, size):
    """A TFLiteConverter on the frozen forward pass, set up for `quantization`."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from keras_vitnt.layers.base import square_as_mul

    (h, w), c = size, model.input_shape[-1]
    # int16x8: the norms square with MUL (LiteRT's SQUARED_DIFFERENCE has no int16 kernel)
    with square_as_mul() if quantization == "int16x8" else contextlib.nullcontext():
        fn = tf.function(lambda image: model(image, training=False)).get_concrete_function(
            tf.TensorSpec((batch_size, h, w, c), tf.float32, name="image")
        )
        # frozen weights: a few seconds, where the SavedModel round trip Keras uses takes several times that
        converter = tf.lite.TFLiteConverter.from_concrete_functions([convert_variables_to_constants_v2(fn)])
    # builtin ops only: the file must run in the stock interpreter and on mobile delegates
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "dynamic_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization in CALIBRATED:
        samples = as_batches(representative_data)
        if not samples:
            raise ValueError(f"{quantization} quantisation needs representative_data with at least one image")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([s] for s in samples)
        converter.target_spec.supported_ops = {
            "int8": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8],
            # int8 weights, int16 activations; an op without a 16x8 kernel would fail the conversion
            "int16x8": [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8],
            # integer where MIXED_INT8_OPS says, float builtins elsewhere
            "mixed_int8": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS],
        }[quantization]
    return converter


def calibrate(converter):
    """The float model with the calibration statistics of the converter's representative data
    (what LiteRT's QuantizationDebugger starts from), to be quantized by `quantize_calibrated`."""
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True
    return converter.convert()


def quantize_calibrated(calibrated, denylisted_ops=None, denylisted_nodes=None, debug=False):
    """int8-quantize a calibrated model, leaving `denylisted_ops` (op types) and
    `denylisted_nodes` (output tensor names) in float; `debug`: with LiteRT's NumericVerify ops
    after every quantized op (for the per-layer report)."""
    from tensorflow.lite.python import convert

    return convert.mlir_quantize(calibrated, enable_numeric_verify=debug, denylisted_ops=denylisted_ops,
                                 denylisted_nodes=denylisted_nodes)


def ops_and_outputs(model_content):
    """[(op type, name of its first output tensor)] of a .tflite model, in graph order."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model_content)
    names = {t["index"]: t["name"] for t in interp.get_tensor_details()}
    return [(op["op_name"], names.get(op["outputs"][0], "")) for op in interp._get_ops_details()]


def mixed_int8_floats(calibrated):
    """What mixed_int8 leaves in float in a calibrated model: {"denylisted_ops": every op type
    but MIXED_INT8_OPS, "denylisted_nodes": the attention output projections}."""
    import re

    ops = ops_and_outputs(calibrated)
    return {"denylisted_ops": sorted({op for op, _ in ops} - set(MIXED_INT8_OPS)),
            "denylisted_nodes": sorted({name for op, name in ops
                                        if op == "FULLY_CONNECTED" and re.search(MIXED_FLOAT_DENSE, name)})}
