"""Where full-integer (int8) LiteRT quantization loses accuracy: a per-layer and per-op-group
report, and its figure.

`int8_report(model, ...)` calibrates the model as `export(..., quantization="int8")` does,
then
  1. runs LiteRT's QuantizationDebugger on the scored images: after every quantized op, its
     int8 output against the float op run on the same (dequantized) inputs. `rmse_over_scale`
     is that error in units of the output's quantization step; pure rounding gives
     1/sqrt(12) = 0.29, and larger values are the ops that lose information themselves;
  2. measures, end to end, what each group of ops costs: the output correlation with Keras of
     full int8, of full int8 with one group left in float, of that group alone in int8 (every
     other op in float), and of the `mixed_int8` mode.
Groups ("roles") are read from the op type and the Keras layer that made the tensor.
`keras-vitnt export MODEL --quantize int8 --report` writes it into the export's sidecar JSON and
draws it as `<export>.int8_report.png`.
"""

import contextlib
import csv
import io
import os
import re
import tempfile
import warnings

import numpy as np

# (role, what it holds), in the order reports show them
ROLES = (
    ("layernorm", "LayerNorm / RmsNorm (MEAN, SQUARED_DIFFERENCE, RSQRT, ...)"),
    ("softmax", "attention SOFTMAX"),
    ("output", "the classifier's SOFTMAX (a model with probabilities out)"),
    ("attention_matmul", "attention BATCH_MATMUL (q k^T, weights v)"),
    ("residual", "residual ADDs"),
    ("dense", "Dense layers (FULLY_CONNECTED: qkv, proj, fc1, fc2, head, ...)"),
    ("conv", "patch / pixel CONV_2D"),
    ("gelu", "GELU and other activations"),
    ("other", "everything else (preprocessing, position table, attention scale, reshapes, ...)"),
)
ROLE_NAMES = tuple(r for r, _ in ROLES)


def tensor_role(op, tensor):
    """The role of a quantized op's output, from its op type and tensor (Keras layer) name."""
    if re.search(r"/(norm[^/]*|fc_norm|embed_norm)/", tensor):
        return "layernorm"
    if op == "SOFTMAX":
        return "softmax" if re.search(r"/attn[^/]*/", tensor) else "output"
    if op == "BATCH_MATMUL":
        return "attention_matmul"
    if op == "FULLY_CONNECTED":
        return "dense"
    if op == "CONV_2D":
        return "conv"
    if op in ("GELU", "LOGISTIC", "TANH", "HARD_SWISH"):
        return "gelu"
    if op == "ADD" and re.search(r"/(add|add_\d+)$", tensor) and re.search(r"/(blocks|block)", tensor):
        return "residual"
    return "other"


@contextlib.contextmanager
def _quiet():
    """tf.lite.Interpreter (used inside LiteRT's debugger) warns on every creation."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def layer_statistics(calibrated, samples):
    """Per quantized op of the int8 model made from `calibrated`: LiteRT's QuantizationDebugger
    run on `samples` -> list of dicts (op, tensor, role, rmse_over_scale, ...), in graph order."""
    import tensorflow as tf

    from keras_vitnt.litert import as_batches, quantize_calibrated

    batches = as_batches(samples)
    with _quiet():
        debugger = tf.lite.experimental.QuantizationDebugger(
            quant_debug_model_content=quantize_calibrated(calibrated, debug=True),
            debug_dataset=lambda: ([b] for b in batches))
        debugger.run()
        buf = io.StringIO()
        debugger.layer_statistics_dump(buf)
    rows = []
    for r in csv.DictReader(io.StringIO(buf.getvalue())):
        scale, mse = float(r["scale"]), float(r["mean_squared_error"])
        rows.append({
            "tensor_index": int(r["tensor_idx"]),
            "op": r["op_name"],
            "tensor": r["tensor_name"],
            "role": tensor_role(r["op_name"], r["tensor_name"]),
            "rmse_over_scale": float(np.sqrt(mse) / scale) if scale > 0 and np.isfinite(mse) else None,
            "max_abs_error": _finite(r["max_abs_error"]),
            "mean_error": _finite(r["mean_error"]),
            "scale": scale,
        })
    rows.sort(key=lambda row: row["tensor_index"])
    return rows


def _finite(text):
    v = float(text)
    return v if np.isfinite(v) else None


def int8_report(model, representative_data, samples, size, batch_size=1):
    """The report described in the module docstring for a float32 Keras `model` exported at
    `size` (H, W): calibrated on `representative_data`, scored on `samples` (which calibration
    must not contain). Returns a JSON-ready dict: "layers" (every quantized op), "groups" (per
    op group: end to end with that group in float, and under "alone" with only that group in
    int8), "full_int8" and "mixed_int8" (correlation, top-1 agreement, max relative error
    versus Keras)."""
    from keras_vitnt.litert import (
        MIXED_INT8_OPS,
        calibrate,
        litert_converter,
        mixed_int8_floats,
        parity_report,
        quantize_calibrated,
        run_litert,
    )

    samples = np.asarray(samples, "float32")
    reference = np.asarray(model.predict(samples, verbose=0, batch_size=8))
    with _quiet():
        calibrated = calibrate(litert_converter(model, "int8", representative_data, batch_size, size))
    layers = layer_statistics(calibrated, samples)

    def score(**denylist):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "m.tflite")
            with _quiet(), open(path, "wb") as f:
                f.write(quantize_calibrated(calibrated, **denylist))
            out = parity_report(reference, run_litert(path, samples))
        return {k: out[k] for k in ("correlation", "top1_agreement", "max_relative_error") if k in out}

    groups = []
    for role, description in ROLES:
        tensors = [row["tensor"] for row in layers if row["role"] == role]
        others = [row["tensor"] for row in layers if row["role"] != role]
        if tensors:
            groups.append({"group": role, "description": description, "quantized_ops": len(tensors),
                           **score(denylisted_nodes=tensors),
                           # the converse: this group alone in int8, every other op in float
                           "alone": score(denylisted_nodes=others)})
    floats = mixed_int8_floats(calibrated)
    return {
        "samples": len(samples),
        "full_int8": score(),
        "groups": groups,
        "mixed_int8": {"integer_ops": list(MIXED_INT8_OPS), "float_ops": floats["denylisted_ops"],
                       "float_dense": floats["denylisted_nodes"], **score(**floats)},
        "layers": layers,
    }


def summary_lines(report):
    """Markdown: the end-to-end table (one row per op group), then the 10 worst layers."""
    full = report["full_int8"]
    lines = ["| op group | quantized ops | correlation: this group alone in int8 | correlation: all int8 but this "
             "group |", "|---|---:|---:|---:|",
             f"| all (full int8) | {len(report['layers'])} | {full['correlation']:.4f} | |"]
    for g in sorted(report["groups"], key=lambda g: g["alone"]["correlation"]):
        lines.append(f"| {g['description']} | {g['quantized_ops']} | {g['alone']['correlation']:.4f} | "
                     f"{g['correlation']:.4f} |")
    mixed = report["mixed_int8"]
    lines.append(f"| mixed_int8: {', '.join(mixed['integer_ops'])} in int8 (attention's proj in float) | | "
                 f"{mixed['correlation']:.4f} | |")
    worst = sorted((r for r in report["layers"] if r["rmse_over_scale"] is not None),
                   key=lambda r: -r["rmse_over_scale"])[:10]
    lines += ["", "| layer output (worst 10) | op | RMSE / quantization step |", "|---|---|---:|"]
    lines += [f"| {_short(r['tensor'])} | {r['op']} | {r['rmse_over_scale']:.2f} |" for r in worst]
    return lines


def _pct(row):
    return f"{100 * row['top1_agreement']:.1f}%" if "top1_agreement" in row else ""


def _short(tensor):
    """The Keras layer path of a LiteRT tensor name: its first name, without the model prefix
    and Keras's call suffixes (`blocks_0_1/attn_1/MatMul;...` -> `blocks_0/attn/MatMul`)."""
    name = tensor.split(";")[0]
    parts = name.split("/")[1:] or [name]
    return "/".join([re.sub(r"_1$", "", p) for p in parts[:-1]] + parts[-1:])


def report_figure(report, path, title=None):
    """Two panels: end-to-end correlation with each op group left in float (bars; full int8 and
    mixed_int8 as lines), and every quantized op's RMSE / quantization step by position in the
    graph, coloured by group."""
    from keras_vitnt.visualize import pyplot, save_figure

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [1, 1.5]})
    colors = dict(zip(ROLE_NAMES, plt.get_cmap("tab10").colors))
    groups = sorted(report["groups"], key=lambda g: -g["alone"]["correlation"])
    full, mixed = report["full_int8"]["correlation"], report["mixed_int8"]["correlation"]
    ys = np.arange(len(groups))

    def gap(correlation):  # on a log axis
        return max(1.0 - correlation, 1e-6)

    left.barh(ys + 0.2, [gap(g["alone"]["correlation"]) for g in groups], height=0.4,
              color=[colors[g["group"]] for g in groups], label="this group alone in int8")
    left.barh(ys - 0.2, [gap(g["correlation"]) for g in groups], height=0.4, color="lightgray",
              label="all int8 but this group")
    left.set_yticks(ys, [g["group"] for g in groups])
    left.axvline(gap(full), color="black", linestyle="--", label=f"full int8 (correlation {full:.3f})")
    left.axvline(gap(mixed), color="tab:green", linestyle=":", label=f"mixed_int8 ({mixed:.4f})")
    left.set_xscale("log")
    left.set_xlabel("1 - output correlation with Keras (lower is better)")
    left.set_title("what each op group costs, end to end")
    left.legend(loc="lower right", fontsize=7)
    for i, row in enumerate(report["layers"]):
        if row["rmse_over_scale"] is not None:
            right.scatter(i, max(row["rmse_over_scale"], 1e-3), s=10, color=colors[row["role"]])
    for role in ROLE_NAMES:
        if any(r["role"] == role for r in report["layers"]):
            right.scatter([], [], color=colors[role], label=role)
    right.axhline(12**-0.5, color="gray", linewidth=0.8, linestyle="--", label="rounding only (0.29)")
    right.set_yscale("log")
    right.set_xlabel("quantized op (graph order)")
    right.set_ylabel("RMSE / quantization step")
    right.set_title("error each op adds (LiteRT quantization debugger)")
    right.legend(fontsize=7, ncol=2, loc="upper left")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path, rect=(0, 0, 1, 0.95) if title else None)
