"""`keras-vitnt benchmark`: keras_vitnt next to timm, side by side in one run.

    keras-vitnt benchmark [--sections inference training memory litert int8 bf16 quant backends]
                          [--models ...] [--batches 1 16] [--threads 2] [--rounds 3]
                          [--out benchmarks/results.md] [--overwrite]

Every comparison alternates the contenders round by round and reports medians, because
these machines are shared and drift by 2x from hour to hour: only ratios taken in the
same run are stable. A run of several sections runs each in a fresh process of its own (what
a section leaves in memory would otherwise pile up: 18 GB after seven of them). Sections:

- inference: keras_vitnt's two CPU paths, `model.predict_on_batch` (TensorFlow, the plain user
  path) in fp32 and under Keras's `mixed_bfloat16` policy, and the OpenVINO export run by
  `OpenVINOModel` at f32 and bf16, next to timm's fastest settings: fp32 and bf16 autocast, each
  eager and through `torch.compile` with Inductor's freezing (compile time reported apart,
  `--no-compile` leaves it out), under `torch.inference_mode`; the ratios are to the fastest
  timm setting of the same precision.
  `keras.applications.ResNet50` (next to torchvision's, eager) is the CNN baseline. The matmul
  FLOPs of each model are counted on its graph; "% of peak" is the fp32 path's FLOP rate
  over the fp32 matmul peak (a 2048^3 matmul, the faster of TensorFlow's and PyTorch's) measured at the start
  of the run.
- training: one optimizer step on a batch (Keras `train_on_batch` with AdamW, with and
  without XLA) next to a PyTorch AdamW step on the timm model, eager and with the model
  through `torch.compile` (its first step, which compiles, reported apart).
- memory: peak resident memory of a fresh process that builds the model and runs
  inference / a training step, for both frameworks.
- litert: batch-1 latency of the exported .tflite files (fp32, float16, dynamic_int8,
  int8) under the stock interpreter, next to Keras.
- int8: batch-1 latency of keras_vitnt's LiteRT dynamic_int8 file next to timm with
  `torch.ao.quantization.quantize_dynamic` (Linear layers), same weights, each with its
  agreement with timm fp32 (which keras_vitnt fp32 equals).
- bf16: accuracy of mixed_bfloat16 and of the OpenVINO export run in bf16 against fp32: logit
  error and top-1 agreement on the real digits images for the demo's trained ViT and TNT, and
  the logit error of the ImageNet-size models on real photos.
- backends: the same models on Keras's TensorFlow, JAX and PyTorch backends, one fresh process
  per backend: inference fp32 and mixed_bfloat16 (`predict_on_batch`: a tf.function on
  TensorFlow, jitted on JAX, eager on PyTorch, and with `jit_compile=True`, i.e.
  torch.compile, on PyTorch) and an AdamW training step (the recipe's settings: XLA on
  TensorFlow and JAX, eager on PyTorch), each next to timm (fp32 eager, bf16 autocast, its
  AdamW step) interleaved in the same process, so that the ratios to timm compare backends.
- quant: every way to make a model smaller, per model and mode: Keras fp32, mixed_bfloat16,
  `model.quantize("int8" | "int4" | "float8")`, and LiteRT fp32 / float16 / dynamic_int8 /
  int8 / int16x8 / mixed_int8: file size, batch-1 latency, correlation and top-1 agreement
  with Keras fp32 (and accuracy for the demo's trained digits models). Calibration and
  scoring images are disjoint: digits train / test images, and two separate sets of photo
  crops for the ImageNet-size models (random weights, or `--weights imagenet`).

Needs timm and torch (the `test` extra). timm must be imported before TensorFlow (its
triton dependency crashes otherwise), so `main` re-executes itself in a fresh Python
when TensorFlow is already loaded.
"""

import argparse
import datetime
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

from keras_vitnt.cpu import BF16_FLAGS, PERF_FLAGS, cpu_info, native_bf16, release_free_memory
from keras_vitnt.peers import child_code, torch_model, torch_train_step
from keras_vitnt.precision import dtype_policy, policy_copy

INFERENCE_MODELS = [
    "vit_tiny_patch16_224",
    "vit_small_patch16_224",
    "vit_base_patch16_224",
    "deit_small_patch16_224",
    "tnt_s_patch16_224",
    "tnt_b_patch16_224",
    "resnet50",
]
TRAIN_MODELS = ["vit_small_patch16_224", "tnt_s_patch16_224"]
LITERT_MODELS = ["vit_small_patch16_224", "tnt_s_patch16_224"]
SECTIONS = ("inference", "training", "memory", "litert", "int8", "bf16", "quant", "backends")
BACKENDS = ("tensorflow", "jax", "torch")
QUANT_MODELS = ["vit_small_patch16_224", "tnt_s_patch16_224"]
KERAS_QUANTS = ("int8", "int4", "float8")  # model.quantize modes (gptq/awq need a calibration structure)
LITERT_QUANTS = (None, "float16", "dynamic_int8", "int8", "int16x8", "mixed_int8")
QUANTS = (None, "float16", "dynamic_int8", "int8")
_REEXEC = "import timm, sys; from keras_vitnt.benchmark import main; sys.exit(main(sys.argv[1:]))"


# --- timing ----------------------------------------------------------------------------


def interleaved_times(runners, rounds, warmup=2):
    """{name: fn} -> {name: [seconds per round]}. Every runner is warmed up, then they take
    turns round by round (in reversed order every other round), so drift on a shared
    machine hits all of them alike."""
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in runners}
    order = list(runners)
    for r in range(rounds):
        for key in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            runners[key]()
            times[key].append(time.perf_counter() - t0)
    return times


def interleaved_medians(runners, rounds, warmup=2):
    """{name: fn} -> {name: median seconds} (see interleaved_times)."""
    return {k: statistics.median(v) for k, v in interleaved_times(runners, rounds, warmup).items()}


def speedup(times, key, reference):
    """Median over rounds of reference time / key time: each round's pair ran back to back,
    so this ratio is steadier than the ratio of the two medians."""
    return statistics.median(r / k for r, k in zip(times[reference], times[key]))


def speedup_best(times, key, references):
    """Median over rounds of (the fastest reference's time in that round) / key's time: the
    ratio to the best of several peer settings (timm eager and torch.compile'd, say)."""
    return statistics.median(min(times[r][i] for r in references) / k for i, k in enumerate(times[key]))


# --- the scripts in benchmarks/: a table to stdout and to --out ---------------------------


def refuse_existing_out(out):
    """Before any work: a script's --out never replaces a file (one of the user's, or an earlier table)."""
    if out and os.path.exists(out):
        raise SystemExit(f"{out} exists; choose another --out (it was left untouched)")


def write_table(lines, out):
    """The finished table to `out` (if given), whole or not at all, refused if a file appeared there since:
    written beside it, then linked to its name, which fails if the name exists (a rename would replace it)."""
    if not out:
        return
    from keras_vitnt.io_utils import write_text

    refuse_existing_out(out)
    try:
        write_text(out, "\n".join(lines) + "\n", replace=False)
    except FileExistsError:
        raise SystemExit(f"{out} exists; choose another --out (it was left untouched)") from None


def set_tf_threads(threads):
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised in this process: keep its setting
        pass


def set_threads(threads):
    """TensorFlow's and (where installed) PyTorch's threads."""
    set_tf_threads(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass


# --- models and FLOPs ---------------------------------------------------------------------


def keras_model(name, policy=None, weights=None, include_preprocessing=False):
    """A keras_vitnt model (or keras.applications.ResNet50 for "resnet50") with logits
    output, built under `policy` ("mixed_bfloat16") if given."""
    import keras

    from keras_vitnt.models import create_model

    with dtype_policy(policy):
        if name == "resnet50":
            return keras.applications.ResNet50(weights=None, classifier_activation=None)
        return create_model(name, weights=weights, include_preprocessing=include_preprocessing,
                            classifier_activation=None)


def matmul_flops(model):
    """FLOPs per image of the matrix products (MatMul, BatchMatMul, Conv2D: 2 per
    multiply-add), counted on the traced graph at batch 1."""
    import tensorflow as tf

    shape = (1,) + tuple(model.input_shape[1:])
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec(shape, model.inputs[0].dtype)
    ).graph
    total = 0
    for op in graph.get_operations():
        if op.type in ("MatMul", "BatchMatMulV2", "BatchMatMulV3", "BatchMatMul"):
            a = op.inputs[0].shape
            adj = op.get_attr("transpose_a" if op.type == "MatMul" else "adj_x")
            k = a[-2] if adj else a[-1]
            total += 2 * op.outputs[0].shape.num_elements() * k
        elif op.type == "Conv2D":
            kh, kw, cin, _ = op.inputs[1].shape
            total += 2 * op.outputs[0].shape.num_elements() * kh * kw * cin
    return total


def matmul_peak(threads, rounds=5, n=2048):
    """Measured GFLOP/s of an n^3 matmul, interleaved medians: {"tf_float32", "tf_bfloat16", "torch_float32",
    "torch_bfloat16" (only where the CPU has bf16 instructions: emulated, PyTorch's took minutes), and per dtype
    "float32" / "bfloat16": the faster framework's, the peak the tables' percentages are of}. TensorFlow's alone
    would understate it on some CPUs (an AVX2 EPYC: TF 119, PyTorch 159 GFLOP/s fp32 in one run)."""
    import tensorflow as tf
    import torch

    set_threads(threads)
    runners = {}
    for dtype in ("float32", "bfloat16"):
        a = tf.cast(tf.random.normal((n, n), dtype="float32"), dtype)
        fn = tf.function(lambda x: tf.matmul(x, x))
        runners["tf_" + dtype] = lambda fn=fn, a=a: fn(a).numpy()
        if dtype == "float32" or native_bf16():
            t = torch.randn(n, n).to(getattr(torch, dtype))
            runners["torch_" + dtype] = lambda t=t: torch.mm(t, t)
    peak = {k: 2 * n**3 / v / 1e9 for k, v in interleaved_medians(runners, rounds).items()}
    for dtype in ("float32", "bfloat16"):
        peak[dtype] = max(v for k, v in peak.items() if k.endswith("_" + dtype))
    return peak


def peak_line(peak):
    """The header line of the run's measured matmul peaks."""
    def per_framework(dtype):
        return " / ".join(f"{fw} {peak[f'{fw}_{dtype}']:.0f}" for fw in ("tf", "torch") if f"{fw}_{dtype}" in peak)

    return (f"Measured matmul peak (2048^3, median of 5, GFLOP/s; the faster framework's is the tables' peak): fp32 "
            f"{per_framework('float32')}, bf16 {per_framework('bfloat16')}"
            + ("" if "torch_bfloat16" in peak else " (PyTorch's bf16 not timed: this CPU has no bf16 instructions)")
            + ".")


# --- sections --------------------------------------------------------------------------------


def timm_inference_runners(tm, xt, compiled=True, bf16=True):
    """The PyTorch user's settings for inference, each under `torch.inference_mode()`: timm fp32
    ("timm"), under `torch.autocast("cpu", dtype=torch.bfloat16)` ("timm_bf16", left out with
    `bf16=False`), and both through
    `torch.compile` with Inductor's `freezing` (weights folded and prepacked for oneDNN, PyTorch's
    recommended CPU inference setting: +10% fp32, +50% bf16 on ViT-S here; "timm_compiled",
    "timm_bf16_compiled"; compiled by a first call, whose seconds are returned apart:
    {name: fn}, {name: compile seconds})."""
    import torch

    def fp32(x):
        return tm(x)

    def autocast(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return tm(x)

    fns, compile_s = {"timm": fp32, "timm_bf16": autocast} if bf16 else {"timm": fp32}, {}
    if compiled:
        import torch._dynamo
        import torch._inductor.config
        from torch._dynamo.utils import counters

        # fp32/bf16 are one code object for every model and batch: dynamo's cache for it would pass its
        # recompile limit (8) within the default model list and run the rest eager, with only a warning
        torch._dynamo.reset()
        for key in list(fns):
            fn = torch.compile(fns[key], dynamic=False)
            graphs = counters["stats"]["unique_graphs"]
            t0 = time.perf_counter()
            with torch.inference_mode(), torch._inductor.config.patch(freezing=True):  # read when it compiles
                fn(xt)
            compile_s[key + "_compiled"] = time.perf_counter() - t0
            if counters["stats"]["unique_graphs"] == graphs:
                raise RuntimeError(f"torch.compile made no graph for {key} ({type(tm).__name__}): it would time eager")
            fns[key + "_compiled"] = fn

    def runner(fn):
        def run():
            with torch.inference_mode():
                return fn(xt)

        return run

    return {k: runner(fn) for k, fn in fns.items()}, compile_s


def openvino_runners(km, x, workdir, threads):
    """keras_vitnt's OpenVINO path on the batch `x`: `export(km, format="openvino")` (checked in
    f32 by the export) run by `OpenVINOModel` at "f32" ("ov") and, where the CPU computes
    bfloat16 natively, "bf16" ("ov_bf16"). {} without the openvino package."""
    if importlib.util.find_spec("openvino") is None:
        return {}
    from keras_vitnt.exporter import export
    from keras_vitnt.openvino_runtime import OpenVINOModel, supported_precisions

    path = os.path.join(workdir, f"{km.name}_openvino")
    runners = {}
    try:
        if not os.path.exists(path):
            export(km, path, format="openvino")
        for key, precision in (("ov", "f32"), ("ov_bf16", "bf16")):
            if precision in supported_precisions():
                model = OpenVINOModel(path, precision=precision, threads=threads)
                model(x)  # compiles for this shape
                runners[key] = lambda model=model: model(x)
    except Exception as e:  # one model's failure leaves its cells empty, not the section
        print(f"  {km.name}: the OpenVINO path failed ({type(e).__name__}: {e}); its columns stay empty", flush=True)
        return {}
    return runners


FP32_PATHS = (("keras", "keras_vitnt TF `predict_on_batch`"), ("ov", "keras_vitnt OpenVINO f32"))
BF16_PATHS = (("bf16", "keras_vitnt TF mixed_bfloat16"), ("ov_bf16", "keras_vitnt OpenVINO bf16"))


def bench_inference(models, batches, rounds, peak, compiled=True, threads=2):
    import numpy as np
    import torch

    rows, every_bf16 = [], native_bf16()  # without native bf16: the first row only shows what emulation costs
    with tempfile.TemporaryDirectory(prefix="keras_vitnt_bench-") as workdir:
        for name in models:
            km, kb = keras_model(name), None
            tm = torch_model(name).eval()
            gflop = matmul_flops(km) / 1e9
            size = km.input_shape[1]
            for batch in batches:
                bf16 = every_bf16 or not rows
                x = np.random.default_rng(0).standard_normal((batch, size, size, 3)).astype("float32")
                xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
                runners, compile_s = timm_inference_runners(tm, xt, compiled and name != "resnet50", bf16=bf16)
                runners["keras"] = lambda: km.predict_on_batch(x)
                if bf16:
                    if kb is None:
                        kb = keras_model(name, policy="mixed_bfloat16")
                        kb.set_weights(km.get_weights())
                    runners["bf16"] = lambda: kb.predict_on_batch(x)
                runners.update(openvino_runners(km, x, workdir, threads))
                if not bf16:  # OpenVINO may offer bf16 where the flags show none (AVX2-VNNI-2): not timed either
                    runners.pop("ov_bf16", None)
                times = interleaved_times(runners, rounds)
                ips = {k: batch / statistics.median(v) for k, v in times.items()}
                refs = {"fp32": [k for k in ("timm", "timm_compiled") if k in times],
                        "bf16": [k for k in ("timm_bf16", "timm_bf16_compiled") if k in times]}
                ref_of = {k: refs["bf16" if "bf16" in k else "fp32"] for k, _ in FP32_PATHS + BF16_PATHS if k in times}
                ratio = {k: speedup_best(times, k, ref) for k, ref in ref_of.items() if ref}
                row = dict(model=name, batch=batch, gflop=gflop, ips=ips, compile_s=compile_s, ratio=ratio,
                           peak_pct={k: 100 * ips[k] * gflop / peak["float32"] for k, _ in FP32_PATHS if k in ips})
                rows.append(row)
                print(f"  {name} batch {batch}: " + ", ".join(f"{k} {v:.1f}" for k, v in ips.items())
                      + " img/s; to the fastest timm of the same precision: "
                      + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items()), flush=True)

    def cell(values, key, fmt="{:.1f}", bold=False):
        if key not in values:
            return "-"
        text = fmt.format(values[key])
        return f"**{text}**" if bold else text

    def label(r):
        return "resnet50 (keras.applications / torchvision)" if r["model"] == "resnet50" else r["model"]

    lines = ["### fp32", "",
             "| model | batch | GFLOP/img | " + " | ".join(f"{t} img/s" for _, t in FP32_PATHS)
             + " | timm eager | timm torch.compile | " + " | ".join(f"**{t} / fastest timm**" for _, t in FP32_PATHS)
             + " | % of the fp32 matmul peak: TF / OpenVINO |",
             "|---|---:|---:|" + "---:|" * (2 * len(FP32_PATHS) + 3)]
    for r in rows:
        lines.append(f"| {label(r)} | {r['batch']} | {r['gflop']:.1f} | "
                     + " | ".join(cell(r["ips"], k) for k, _ in FP32_PATHS)
                     + f" | {cell(r['ips'], 'timm')} | {cell(r['ips'], 'timm_compiled')} | "
                     + " | ".join(cell(r["ratio"], k, "{:.2f}", bold=True) for k, _ in FP32_PATHS)
                     + " | " + " / ".join(cell(r["peak_pct"], k, "{:.0f}%") for k, _ in FP32_PATHS) + " |")
    lines += ["", "### bfloat16", "",
              "| model | batch | " + " | ".join(f"{t} img/s" for _, t in BF16_PATHS)
              + " | timm autocast eager | timm autocast torch.compile | "
              + " | ".join(f"**{t} / fastest timm bf16**" for _, t in BF16_PATHS) + " |",
              "|---|---:|" + "---:|" * (2 * len(BF16_PATHS) + 2)]
    for r in (r for r in rows if any("bf16" in k for k in r["ips"])):
        lines.append(f"| {label(r)} | {r['batch']} | " + " | ".join(cell(r["ips"], k) for k, _ in BF16_PATHS)
                     + f" | {cell(r['ips'], 'timm_bf16')} | {cell(r['ips'], 'timm_bf16_compiled')} | "
                     + " | ".join(cell(r["ratio"], k, "{:.2f}", bold=True) for k, _ in BF16_PATHS) + " |")
    compiles = [f"{r['model']} batch {r['batch']}: "
                + ", ".join(f"{'bf16' if 'bf16' in k else 'fp32'} {v:.0f} s" for k, v in r["compile_s"].items())
                for r in rows if r["compile_s"]]
    if compiles:
        lines += ["", "torch.compile's first call (not counted above): " + "; ".join(compiles) + "."]
    if not every_bf16:
        lines += ["", f"bfloat16 is timed in the first row only: this CPU has none of {', '.join(BF16_FLAGS)}, so "
                  "TensorFlow and PyTorch emulate it (that row shows the cost). Use fp32 here."]
    if not any("ov" in r["ips"] for r in rows):
        lines += ["", "OpenVINO columns: the openvino package is not installed (pip install 'keras_vitnt[openvino]')."]
    elif every_bf16 and not any("ov_bf16" in r["ips"] for r in rows):
        lines += ["", "OpenVINO bf16: this CPU has no native bfloat16 (OpenVINO would emulate it)."]
    return lines


def _keras_train_step(name, batch, jit_compile, optimizer=None):
    """The recipe's step: `train_on_batch` with its AdamW (`keras_vitnt.optimizers.AdamW`) unless another is given."""
    import keras
    import numpy as np

    from keras_vitnt.optimizers import AdamW

    model = keras_model(name)
    model.compile(optimizer=AdamW(1e-4) if optimizer is None else optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit_compile)
    size = model.input_shape[1]
    x = np.random.default_rng(0).standard_normal((batch, size, size, 3)).astype("float32")
    y = np.random.default_rng(1).integers(0, 1000, batch)
    first = [True]

    def step():
        model.train_on_batch(x, y)
        if first[0]:  # as the recipe does (train.memory_release): the heap XLA's compiler freed goes back
            first[0] = False
            release_free_memory()

    return step


def bench_training(models, batch, rounds, compiled=True):
    rows = []
    for name in models:
        runners = {"xla": _keras_train_step(name, batch, True), "plain": _keras_train_step(name, batch, False),
                   "timm": torch_train_step(name, batch)}
        compile_s = None
        if compiled:
            step = torch_train_step(name, batch, compiled=True)
            t0 = time.perf_counter()
            step()  # compiles forward and backward
            compile_s = time.perf_counter() - t0
            runners["timm_compiled"] = step
        times = interleaved_times(runners, rounds)
        ips = {k: batch / statistics.median(v) for k, v in times.items()}
        refs = [k for k in ("timm", "timm_compiled") if k in times]
        ratio = {k: speedup_best(times, k, refs) for k in ("xla", "plain")}
        rows.append((name, ips, ratio, compile_s))
        print(f"  {name} train step batch {batch}: " + ", ".join(f"{k} {v:.2f}" for k, v in ips.items())
              + f" img/s; keras XLA {ratio['xla']:.2f}x the fastest timm", flush=True)
    lines = [
        "| model | batch | keras_vitnt XLA (recipe default) img/s | keras_vitnt no XLA img/s | timm + torch AdamW img/s "
        "| timm torch.compile + AdamW img/s | **XLA / fastest timm** | no XLA / fastest timm |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, ips, ratio, _ in rows:
        compiled_ips = f"{ips['timm_compiled']:.2f}" if "timm_compiled" in ips else "-"
        lines.append(f"| {name} | {batch} | {ips['xla']:.2f} | {ips['plain']:.2f} | {ips['timm']:.2f} | {compiled_ips} | "
                     f"**{ratio['xla']:.2f}** | {ratio['plain']:.2f} |")
    compiles = [f"{name}: {s:.0f} s" for name, _, _, s in rows if s is not None]
    if compiles:
        lines += ["", "torch.compile's first training step (not counted above): " + "; ".join(compiles) + "."]
    return lines


def keras_memory_step(name, mode, batch, threads):
    """The keras_vitnt work the memory section measures (in a process without PyTorch, see
    keras_vitnt.peers): `predict_on_batch`, or the recipe's XLA AdamW step."""
    import numpy as np

    set_tf_threads(threads)
    if mode != "infer":
        return _keras_train_step(name, batch, True)
    model = keras_model(name)
    x = np.zeros((batch,) + tuple(model.input_shape[1:]), "float32")
    return lambda: model.predict_on_batch(x)


def bench_memory(models, batch, threads):
    rows = []
    for name in models:
        for mode in ("infer", "train"):
            res = {}
            for fw in ("keras", "timm"):
                code = child_code(fw, name, mode, batch, threads)
                proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
                if proc.returncode:
                    raise RuntimeError(f"memory measurement of {fw} {name} {mode} failed:\n{proc.stderr[-2000:]}")
                res[fw] = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append((name, mode, res))
            print(f"  {name} {mode}: keras peak {res['keras']['peak']:.0f} MB, timm {res['timm']['peak']:.0f} MB",
                  flush=True)
    lines = [
        "| model | work (batch) | keras_vitnt peak RSS MB | of which during the run | keras_vitnt steady peak "
        "| timm peak RSS MB | of which during the run | timm steady peak | **peak keras_vitnt / timm** "
        "| during the run keras_vitnt / timm |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def mb(value):
        return "-" if value is None else f"{value:.0f}"

    for name, mode, res in rows:
        k, t = res["keras"], res["timm"]
        work = "inference" if mode == "infer" else "training step (AdamW)"
        run_k, run_t = k["peak"] - k["base"], t["peak"] - t["base"]
        lines.append(f"| {name} | {work} ({batch}) | {k['peak']:.0f} | {run_k:.0f} | {mb(k.get('steady'))} | "
                     f"{t['peak']:.0f} | {run_t:.0f} | {mb(t.get('steady'))} | **{k['peak'] / t['peak']:.2f}** | "
                     f"{run_k / max(run_t, 1.0):.2f} |")
    if rows:
        loaded = {fw: ", ".join(rows[0][2][fw].get("frameworks", [])) or "-" for fw in ("keras", "timm")}
        lines += ["", f"Frameworks loaded in the measured processes: keras_vitnt {loaded['keras']}; "
                      f"timm {loaded['timm']}."]
    return lines


def _litert_call(path, x, threads):
    """A call that runs the .tflite file at `path` on the batch-1 input `x` with one interpreter
    kept across calls (what a latency measurement times)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path, num_threads=threads)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]

    def run():
        interp.set_tensor(inp, x)
        interp.invoke()
        return interp.get_tensor(out)

    return run


def bench_litert(models, threads, rounds):
    from keras_vitnt.data.samples import photo_crops
    from keras_vitnt.exporter import export
    from keras_vitnt.models import create_model

    lines = [
        "| model | runtime | ms / image | speed-up vs LiteRT fp32 | file MB | max rel. error vs Keras | correlation |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            model = create_model(name, weights=None, classifier_activation=None)
            x = photo_crops(1, model.input_shape[1])
            runners, info = {"keras": lambda: model.predict_on_batch(x)}, {}
            for q in QUANTS:
                path = os.path.join(tmp, f"{name}_{q}.tflite")
                info[q or "fp32"] = export(model, path, quantization=q)
                runners[q or "fp32"] = _litert_call(path, x, threads)
            med = {k: v * 1000 for k, v in interleaved_medians(runners, rounds).items()}
            for k in runners:
                r = info.get(k)
                label = "Keras predict_on_batch" if k == "keras" else f"LiteRT {k}"
                cells = ["", "", ""] if r is None else [
                    f"{r['size_bytes'] / 1e6:.1f}", f"{r['max_relative_error']:.1e}", f"{r.get('correlation', 1.0):.4f}"]
                lines.append(f"| {name} | {label} | {med[k]:.1f} | {med['fp32'] / med[k]:.2f} | " + " | ".join(cells)
                             + " |")
            print(f"  {name}: LiteRT fp32 {med['fp32']:.1f} ms, keras {med['keras']:.1f} ms", flush=True)
    return lines


def _compare(p32, p16):
    import numpy as np

    p32, p16 = np.asarray(p32, "float64"), np.asarray(p16, "float64")
    agree = float(np.mean(p32.argmax(-1) == p16.argmax(-1)))
    rel = float(np.abs(p32 - p16).max() / np.abs(p32).max())
    return agree, rel


def _demo_model(kind, workdir):
    """The demo's trained digits model (saved_models/demo/<kind>/model.keras when `make demo`
    ran), else a fresh 15-epoch training; -> (fp32 model, its TrainConfig)."""
    import keras

    from keras_vitnt.demo import demo_config
    from keras_vitnt.train import train

    saved = os.path.join("saved_models", "demo", kind, "model.keras")
    cfg = demo_config(kind, workdir, 15)
    if os.path.exists(saved):
        return keras.models.load_model(saved), cfg, saved
    return train(cfg, verbose=0).model, cfg, "trained for 15 epochs by this run"


def _openvino_bf16(m32, x, workdir):
    """The outputs of `m32`'s OpenVINO export run in bf16 on `x`, or None (no openvino, no native bf16)."""
    if importlib.util.find_spec("openvino") is None:
        return None
    from keras_vitnt.exporter import export
    from keras_vitnt.openvino_runtime import OpenVINOModel, supported_precisions

    if "bf16" not in supported_precisions():
        return None
    # a fresh folder per call: the demo's TNT and tnt_s_patch16_224 share a model name
    path = os.path.join(tempfile.mkdtemp(dir=workdir), f"{m32.name}_openvino")
    try:
        export(m32, path, format="openvino", sample_data=x[:8])
        return OpenVINOModel(path, precision="bf16").predict(x)
    except Exception as e:  # its cells stay empty, the section goes on
        print(f"  {m32.name}: the OpenVINO export failed ({type(e).__name__}: {e})", flush=True)
        return None


def bench_bf16(models, weights):
    from keras_vitnt.data.digits import load_digits
    from keras_vitnt.data.samples import photo_crops
    from keras_vitnt.train import build_model

    lines = [
        "| model | weights | images | top-1 agreement: TF mixed_bfloat16 vs fp32 | max error / max abs fp32 output | "
        "top-1 agreement: OpenVINO bf16 vs fp32 | max error / max abs fp32 output |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]

    def ov_cells(p32, ov, meaningful=True):
        if ov is None:
            return "- | -"
        agree, rel = _compare(p32, ov)
        return f"**{100 * agree:.1f}%**{'' if meaningful else ' (not meaningful)'} | {rel:.1e}"

    (_, _), (x_digits, _) = load_digits(size=16)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("vit", "tnt"):
            m32, cfg, source = _demo_model(kind, tmp)
            with dtype_policy("mixed_bfloat16"):
                m16 = build_model(cfg, m32.output_shape[-1], m32.input_shape[1])
            m16.set_weights(m32.get_weights())
            p32 = m32.predict(x_digits, verbose=0)
            agree, rel = _compare(p32, m16.predict(x_digits, verbose=0))
            lines.append(f"| demo {dict(vit='ViT', tnt='TNT')[kind]} (digits, {cfg.model}) | trained ({source}) | "
                         f"{len(x_digits)} | **{100 * agree:.1f}%** | {rel:.1e} (probabilities) | "
                         f"{ov_cells(p32, _openvino_bf16(m32, x_digits, tmp))} |")
            print(f"  demo {kind}: bf16 top-1 agreement {100 * agree:.1f}%, rel. error {rel:.1e}", flush=True)
        for name in models:
            m32 = keras_model(name, weights=weights, include_preprocessing=True)
            m16 = keras_model(name, policy="mixed_bfloat16", weights=weights, include_preprocessing=True)
            m16.set_weights(m32.get_weights())
            x = photo_crops(32, m32.input_shape[1])
            p32 = m32.predict(x, verbose=0)
            agree, rel = _compare(p32, m16.predict(x, verbose=0))
            label = weights or "random"
            lines.append(f"| {name} | {label} | {len(x)} | {100 * agree:.1f}%{'' if weights else ' (not meaningful)'} | "
                         f"{rel:.1e} (logits) | {ov_cells(p32, _openvino_bf16(m32, x, tmp), bool(weights))} |")
            print(f"  {name}: bf16 logit rel. error {rel:.1e}", flush=True)
    return lines


def _file_mb(path):
    return os.path.getsize(path) / 1e6


def _quant_rows(label, model, x_score, x_calib, y, threads, rounds, tmp):
    """Rows of the quant table for one fp32 Keras model: every Keras and LiteRT mode, scored on
    `x_score` (labels `y`, or None) against the fp32 model's own outputs."""
    import keras
    import numpy as np

    from keras_vitnt.exporter import export, run_litert

    keras_path = os.path.join(tmp, "fp32.keras")
    model.save(keras_path)
    reference = np.asarray(model.predict(x_score, verbose=0, batch_size=16))
    contenders = {}  # name -> (predict on the scored set, one batch-1 call, MB)
    one = x_score[:1]
    contenders["Keras fp32"] = (lambda: reference, lambda: model.predict_on_batch(one), _file_mb(keras_path))
    m16 = policy_copy(model, "mixed_bfloat16")
    contenders["Keras mixed_bfloat16"] = (lambda: m16.predict(x_score, verbose=0, batch_size=16),
                                          lambda: m16.predict_on_batch(one), None)
    for mode in KERAS_QUANTS:
        mq = keras.models.load_model(keras_path)
        with warnings.catch_warnings():  # Keras warns for each layer type without quantize (InputLayer, Dropout, ...)
            warnings.filterwarnings("ignore", message="Layer .* does not have a `quantize` method implemented")
            mq.quantize(mode)
        path = os.path.join(tmp, f"{mode}.keras")
        mq.save(path)
        contenders[f"Keras quantize(\"{mode}\")"] = (
            lambda mq=mq: mq.predict(x_score, verbose=0, batch_size=16), lambda mq=mq: mq.predict_on_batch(one),
            _file_mb(path))
    for q in LITERT_QUANTS:
        path = os.path.join(tmp, f"{q or 'fp32'}.tflite")
        export(model, path, quantization=q, sample_data=x_score[:8], representative_data=x_calib)
        contenders[f"LiteRT {q or 'fp32'}"] = (lambda path=path: run_litert(path, x_score, num_threads=threads),
                                              _litert_call(path, one, threads), _file_mb(path))
    latency = interleaved_medians({k: v[1] for k, v in contenders.items()}, rounds)
    rows = []
    for name, (predict, _, mb) in contenders.items():
        out = np.asarray(predict(), "float64")
        corr = float(np.corrcoef(reference.ravel(), out.ravel())[0, 1])
        agree = float(np.mean(out.argmax(-1) == reference.argmax(-1)))
        acc = f"{100 * float(np.mean(out.argmax(-1) == y)):.1f}%" if y is not None else ""
        size = f"{mb:.3g}" if mb is not None else "(fp32 file)"
        rows.append(f"| {label} | {name} | {size} | {1000 * latency[name]:.1f} | {corr:.4f} | {100 * agree:.1f}% | "
                    f"{acc} |")
        print(f"  {label} {name}: {1000 * latency[name]:.1f} ms, correlation {corr:.4f}, agreement "
              f"{100 * agree:.1f}% {acc}", flush=True)
    return rows


def bench_quant(models, weights, threads, rounds):
    from keras_vitnt.data.digits import load_digits
    from keras_vitnt.data.samples import photo_crops
    from keras_vitnt.demo import IMAGE_SIZE

    lines = [
        "| model | mode | file MB | ms / image (batch 1) | correlation with Keras fp32 | top-1 agreement | "
        "accuracy |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    (x_train, _), (x_test, y_test) = load_digits(size=IMAGE_SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("vit", "tnt"):
            model, cfg, _ = _demo_model(kind, tmp)
            label = f"demo {dict(vit='ViT', tnt='TNT')[kind]} (digits, trained)"
            # calibration on training images, scores on the test images
            lines += _quant_rows(label, model, x_test, x_train[:64], y_test, threads, rounds,
                                 tempfile.mkdtemp(dir=tmp))
        for name in models:
            model = keras_model(name, weights=weights, include_preprocessing=True)
            size = model.input_shape[1]
            crops = photo_crops(64, size)  # the first 32 scored, the other 32 calibrate
            label = f"{name} ({weights or 'random weights'}, photos)"
            lines += _quant_rows(label, model, crops[:32], crops[32:], None, threads, rounds, tempfile.mkdtemp(dir=tmp))
    return lines


def _torch_dynamic_int8(tm):
    """timm's model with its Linear layers quantized by `torch.ao.quantization.quantize_dynamic`
    (int8 weights, activations quantized per call): PyTorch's CPU int8 path."""
    import copy

    import torch

    with warnings.catch_warnings():  # torch 2.10+ says the API moves to torchao; it still is PyTorch's own
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(tm), {torch.nn.Linear}, dtype=torch.qint8)


def bench_int8(models, threads, rounds, n_images=32):
    """Batch-1 int8 inference: keras_vitnt's LiteRT dynamic_int8 next to timm + quantize_dynamic, both
    from the same (random) weights, each with its agreement with timm fp32 (which keras_vitnt fp32
    equals) on real photos. (Full int8 LiteRT is slower and less exact on ViTs: the quant section.)"""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from keras_vitnt.data.samples import photo_crops
    from keras_vitnt.exporter import export, run_litert

    lines = [
        f"| model | contender | ms / image (batch 1) | speed-up vs timm quantize_dynamic | top-1 agreement with timm "
        f"fp32 ({n_images} photos) | correlation with timm fp32 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            torch.manual_seed(0)
            tm = torch_model(name).eval()
            ckpt = os.path.join(tmp, f"{name}.safetensors")
            save_file({k: v.detach().contiguous() for k, v in tm.state_dict().items()}, ckpt)
            model = keras_model(name, weights=ckpt)  # timm's weights, timm's input (normalised)
            cfg = tm.pretrained_cfg
            x = photo_crops(n_images, model.input_shape[1]) / 255.0
            x = ((x - np.array(cfg["mean"])) / np.array(cfg["std"])).astype("float32")
            tq = _torch_dynamic_int8(tm)
            xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

            def torch_out(m):
                with torch.inference_mode():
                    return torch.cat([m(xt[i:i + 1]) for i in range(len(xt))]).numpy()

            def torch_call(m):
                one = xt[:1]

                def run():
                    with torch.inference_mode():
                        m(one)

                return run

            contenders = {"timm fp32 eager": tm, "timm quantize_dynamic int8": tq}
            outs = {k: torch_out(m) for k, m in contenders.items()}
            runners = {k: torch_call(m) for k, m in contenders.items()}
            outs["keras_vitnt fp32"] = np.asarray(model.predict(x, verbose=0, batch_size=16))
            runners["keras_vitnt fp32"] = lambda: model.predict_on_batch(x[:1])
            path = os.path.join(tmp, f"{name}_dynamic_int8.tflite")
            export(model, path, quantization="dynamic_int8", sample_data=x[:4])
            outs["keras_vitnt LiteRT dynamic_int8"] = run_litert(path, x, num_threads=threads)
            runners["keras_vitnt LiteRT dynamic_int8"] = _litert_call(path, x[:1], threads)
            times = interleaved_times(runners, rounds)
            for key in runners:
                ref = outs["timm fp32 eager"]  # keras_vitnt fp32 gives the same logits (same weights)
                out = np.asarray(outs[key], "float64")
                agree = float(np.mean(out.argmax(-1) == ref.argmax(-1)))
                corr = float(np.corrcoef(np.ravel(ref), np.ravel(out))[0, 1])
                ms = 1000 * statistics.median(times[key])
                ratio = speedup(times, key, "timm quantize_dynamic int8")
                lines.append(f"| {name} | {key} | {ms:.1f} | **{ratio:.2f}** | {100 * agree:.1f}% | {corr:.4f} |")
                print(f"  {name} {key}: {ms:.1f} ms, {ratio:.2f}x timm int8, agreement {100 * agree:.1f}%, "
                      f"correlation {corr:.4f}", flush=True)
    return lines


def _timm_runners(name, batch, bf16=True):
    """timm fp32 eager, bf16 autocast eager (with `bf16`), and an AdamW step: the in-process references."""
    import numpy as np
    import torch

    tm = torch_model(name).eval()
    size = tm.pretrained_cfg["input_size"][1]
    xt = torch.from_numpy(np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype("float32"))
    runners, _ = timm_inference_runners(tm, xt, compiled=False, bf16=bf16)
    return runners, torch_train_step(name, batch)


def backend_child(models, batch, rounds, threads):
    """Runs in a fresh process under KERAS_BACKEND: prints one JSON row per model."""
    import keras
    import numpy as np

    backend = keras.backend.backend()
    if backend == "tensorflow":
        set_threads(threads)
    import torch

    torch.set_num_threads(threads)
    bf16 = native_bf16()  # emulated bf16 is not timed (see bench_inference)
    for name in models:
        km = keras_model(name)
        size = km.input_shape[1]
        x = np.random.default_rng(0).standard_normal((batch, size, size, 3)).astype("float32")
        runners, timm_step = _timm_runners(name, batch, bf16)
        runners["fp32"] = lambda: km.predict_on_batch(x)
        if bf16:
            kb = keras_model(name, policy="mixed_bfloat16")
            kb.set_weights(km.get_weights())
            runners["bf16"] = lambda: kb.predict_on_batch(x)
        row = {"backend": backend, "model": name, "batch": batch}
        if backend == "torch":  # Keras's jit_compile on PyTorch is torch.compile; its first call compiles
            kc = keras_model(name)
            kc.set_weights(km.get_weights())
            kc.compile(jit_compile=True)
            t0 = time.perf_counter()
            kc.predict_on_batch(x)
            row["compile_s"] = time.perf_counter() - t0
            runners["fp32_compiled"] = lambda: kc.predict_on_batch(x)
        times = interleaved_times(runners, rounds)
        for key, v in times.items():
            row[key] = batch / statistics.median(v)
        for key in ("fp32", "fp32_compiled"):
            if key in times:
                row[key + "_ratio"] = speedup(times, key, "timm")
        if bf16:
            row["bf16_ratio"] = speedup(times, "bf16", "timm_bf16")
        # the recipe's step: XLA on TensorFlow and JAX, eager on PyTorch (torch.compile recompiles Keras's step)
        train = {"train": _keras_train_step(name, batch, backend != "torch"), "timm_train": timm_step}
        ttimes = interleaved_times(train, rounds)
        row.update({k: batch / statistics.median(v) for k, v in ttimes.items()})
        row["train_ratio"] = speedup(ttimes, "train", "timm_train")
        print("ROW " + json.dumps(row), flush=True)


def bench_backends(models, batch, rounds, threads):
    rows = []
    for backend in BACKENDS:
        code = ("import timm, sys; from keras_vitnt.benchmark import backend_child; "
                f"backend_child({list(models)!r}, {batch}, {rounds}, {threads})")
        env = {**os.environ, "KERAS_BACKEND": backend}
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        got = [json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("ROW ")]
        if proc.returncode or not got:
            print(f"  {backend}: failed ({proc.stderr.strip().splitlines()[-1:]})", flush=True)
            rows.append({"backend": backend, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]})
            continue
        for row in got:
            bf16 = (f", bf16 {row['bf16']:.1f} ({row['bf16_ratio']:.2f}x timm bf16)" if "bf16" in row else "")
            print(f"  {backend} {row['model']}: fp32 {row['fp32']:.1f} img/s ({row['fp32_ratio']:.2f}x timm){bf16}, "
                  f"train {row['train']:.2f} ({row['train_ratio']:.2f}x)", flush=True)
        rows += got

    def value(r, key, fmt):
        return fmt.format(r[key]) if key in r else "-"

    lines = [
        f"| backend | model | fp32 img/s | / timm fp32 | mixed_bfloat16 img/s | / timm bf16 autocast | train step "
        f"img/s | / timm step | timm fp32 / bf16 / step img/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['backend']} | failed: {r['error']} | | | | | | | |")
            continue
        lines.append(f"| {r['backend']} | {r['model']} | {r['fp32']:.1f} | **{r['fp32_ratio']:.2f}** | "
                     f"{value(r, 'bf16', '{:.1f}')} | {value(r, 'bf16_ratio', '**{:.2f}**')} | {r['train']:.2f} | "
                     f"**{r['train_ratio']:.2f}** | {r['timm']:.1f} / {value(r, 'timm_bf16', '{:.1f}')} / "
                     f"{r['timm_train']:.2f} |")
        if "fp32_compiled" in r:
            lines.append(f"| torch + torch.compile (`jit_compile=True`; compiling took {r['compile_s']:.0f} s) | "
                         f"{r['model']} | {r['fp32_compiled']:.1f} | **{r['fp32_compiled_ratio']:.2f}** | | | | | |")
    if any("error" not in r and "bf16" not in r for r in rows):
        lines += ["", f"bfloat16 not timed: this CPU has none of {', '.join(BF16_FLAGS)} (emulated bf16; see the "
                  "inference section)."]
    return lines


# --- the run -------------------------------------------------------------------------------------


def machine_line(threads):
    cpu, flags = cpu_info()
    if flags is None:
        flags = "CPU flags unknown"
    else:
        flags = "flags: " + " ".join(flags) if flags else "none of " + " ".join(PERF_FLAGS)
    import keras
    import tensorflow as tf

    versions = f"TensorFlow {tf.__version__}, Keras {keras.__version__}"
    try:
        import timm
        import torch

        versions += f", torch {torch.__version__}, timm {timm.__version__}"
    except ImportError:
        pass
    return (f"{datetime.date.today()}, {cpu} ({flags}), {os.cpu_count()} cores visible, {threads} threads "
            f"per framework; {versions}")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="keras-vitnt benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--models", nargs="+", default=INFERENCE_MODELS, help="inference section ('resnet50' included)")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    p.add_argument("--train-models", nargs="+", default=TRAIN_MODELS)
    p.add_argument("--litert-models", nargs="+", default=LITERT_MODELS)
    p.add_argument("--quant-models", nargs="+", default=QUANT_MODELS)
    p.add_argument("--backend-models", nargs="+", default=TRAIN_MODELS)
    p.add_argument("--int8-models", nargs="+", default=LITERT_MODELS)
    p.add_argument("--no-compile", action="store_true", help="inference and training sections: leave out timm + "
                   "torch.compile (with freezing, its first inference call compiles for 17-99 s per model, batch and "
                   "precision here)")
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--litert-rounds", type=int, default=10)
    p.add_argument("--weights", default=None, help="weights for the bf16 and quant accuracy of the ImageNet-size "
                   "models (e.g. imagenet when cached); default random")
    p.add_argument("--out", default="benchmarks/results.md", help="markdown file the tables go to")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    # internal: one section in a process of its own (see main), its lines written as JSON to this file
    p.add_argument("--section-lines-to", help=argparse.SUPPRESS)
    p.add_argument("--matmul-peak", type=json.loads, help=argparse.SUPPRESS)
    return p.parse_args(argv)


HEADER = "# keras_vitnt benchmark"


def _is_benchmark_result(path):
    try:
        with open(path) as f:
            return f.readline().rstrip("\n") == HEADER
    except (OSError, UnicodeDecodeError):
        return False


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.verbose:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.section_lines_to:
        return _section_child(args)
    if os.path.exists(args.out):
        if not args.overwrite:
            raise SystemExit(f"keras-vitnt benchmark: {args.out} exists; pass --overwrite to replace it or --out FILE")
        if not _is_benchmark_result(args.out):  # --overwrite replaces only what the benchmark wrote
            raise SystemExit(f"keras-vitnt benchmark: {args.out} exists and is not a keras_vitnt benchmark result "
                             f"(it does not start with '{HEADER}'); it was left untouched: choose another --out")
    partial = args.out + ".partial"  # the finished sections while the run goes on, so that an interrupted run keeps them
    if os.path.exists(partial) and not _is_benchmark_result(partial):
        raise SystemExit(f"keras-vitnt benchmark: {partial} (where this run keeps its finished sections) exists and is "
                         "not a keras_vitnt benchmark result; it was left untouched: move it or choose another --out")
    if os.path.exists(partial) and not args.overwrite:
        raise SystemExit(f"keras-vitnt benchmark: {partial} exists (the finished sections of a run that did not end); "
                         "keep it by moving it, or pass --overwrite to replace it")
    if importlib.util.find_spec("timm") is None:  # not imported here: see below
        raise SystemExit("keras-vitnt benchmark compares with timm: pip install 'keras_vitnt[test]' "
                         "(timm, torch==2.14.1, torchvision==0.29.1)")
    if "tensorflow" in sys.modules and "triton" not in sys.modules and os.environ.get("_KERAS_VITNT_REEXEC") != "1":
        # TensorFlow came first in this process, and triton (imported by torch) crashes after
        # it: start again in a fresh interpreter that imports timm first.
        env = {**os.environ, "_KERAS_VITNT_REEXEC": "1"}
        return subprocess.run([sys.executable, "-c", _REEXEC, *argv], env=env).returncode

    set_threads(args.threads)
    out = [HEADER, "", f"Machine: {machine_line(args.threads)}.", "",
           f"Command: `keras-vitnt benchmark {' '.join(argv)}`", ""]
    t0 = time.time()
    peak = matmul_peak(args.threads)
    out += [peak_line(peak), ""]
    print(out[-2], flush=True)
    from keras_vitnt.io_utils import write_text

    failed = []
    for section, heading, _ in _plan(args, peak):
        if section in args.sections:
            print(section, flush=True)
            if len(args.sections) == 1:  # this process is fresh: run it here
                lines, error = _run_section(args, peak, section)
            else:
                lines, error = _section_in_child(argv, section, peak)
            if error:
                failed.append(section)
                lines = lines + [f"**This section failed**: {error}"]
            out += heading + [""] + lines + [""]
            write_text(partial, "\n".join(out) + f"\n**Unfinished run**: after {(time.time() - t0) / 60:.1f} min; "
                       f"the sections after '{section}' did not finish.\n")
            print(f"  {section} done; the finished sections are in {partial} until the run ends", flush=True)
    out += [f"Total time {(time.time() - t0) / 60:.1f} min."]
    text = "\n".join(out) + "\n"
    print("\n" + text)
    write_text(args.out, text)
    if os.path.exists(partial):
        os.remove(partial)
    print(f"written to {args.out}")
    if failed:
        print(f"keras-vitnt benchmark: section(s) failed: {', '.join(failed)} (the error is in {args.out})",
              file=sys.stderr)
        return 1
    return 0


def _run_section(args, peak, section):
    """(lines, None), or ([], "ExceptionType: message") where the section raised (traceback printed)."""
    run = next(run for name, _, run in _plan(args, peak) if name == section)
    try:
        return run(), None
    except Exception as e:  # the other sections' results are kept; the failure is in the file and the exit code
        import traceback

        traceback.print_exc()
        return [], f"{type(e).__name__}: {e}"


def _section_in_child(argv, section, peak):
    """Runs one section in a fresh process (this run's arguments; the `--sections` appended last wins), so
    that what a section leaves in memory is gone before the next: in one process, a full run held 18 GB after
    the quant section (what the sections' models, compiled graphs and framework caches leave; not traced
    further) on a 24 GB machine (AMD EPYC, 2026-12-07), and the OOM killer ended it when the backends section
    started its own processes. (Sections timed alone and after others in one process gave the same ratios
    within this machine's spread, AVX2 EPYC, 2026-12-07.) Each process imports the frameworks again: 10-17 s."""
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "lines.json")
        env = {**os.environ, "_KERAS_VITNT_REEXEC": "1"}
        proc = subprocess.run([sys.executable, "-c", _REEXEC, *argv, "--sections", section,
                               "--section-lines-to", result, "--matmul-peak", json.dumps(peak)], env=env)
        if not os.path.exists(result):
            why = " (killed: out of memory?)" if proc.returncode == -9 else ""
            return [], f"its process ended with exit code {proc.returncode}{why} before writing its tables"
        with open(result) as f:
            got = json.load(f)
    return got["lines"], got["error"]


def _section_child(args):
    """The process of one section (`_section_in_child`): its lines and error as JSON."""
    set_threads(args.threads)
    [section] = args.sections
    lines, error = _run_section(args, args.matmul_peak, section)
    with open(args.section_lines_to, "w") as f:
        json.dump({"lines": lines, "error": error}, f)
    return 0


def _plan(args, peak):
    return [  # (section, heading lines, run) in the order they are reported
        ("inference", [f"## Inference ({args.rounds} interleaved rounds, random weights)", "",
                       "img/s from the median time; a ratio is the median over rounds of the two times taken "
                       "back to back.", "",
                       "keras_vitnt TF: `model.predict_on_batch` in fp32 and under "
                       "`keras.config.set_dtype_policy(\"mixed_bfloat16\")`. keras_vitnt OpenVINO: "
                       "`keras_vitnt.export(model, path, format=\"openvino\")` run by "
                       "`keras_vitnt.OpenVINOModel(path, precision=\"f32\" | \"bf16\", threads=...)` (its default `streams`: "
                       "a batch of several images runs as equal parts on OpenVINO's streams at once). timm under "
                       "`torch.inference_mode()`, in fp32 and under `torch.autocast(\"cpu\", dtype=torch.bfloat16)`, "
                       "eager and through `torch.compile(dynamic=False)` with "
                       "`torch._inductor.config.freezing = True` (ResNet-50: eager only). Each keras_vitnt ratio is "
                       "to the fastest timm setting of its precision, round by round."],
         lambda: bench_inference(args.models, args.batches, args.rounds, peak, compiled=not args.no_compile,
                                 threads=args.threads)),
        ("training", [f"## Training step (AdamW, cross-entropy, batch {args.train_batch}, {args.rounds} "
                      "interleaved rounds, ratios as above)"],
         lambda: bench_training(args.train_models, args.train_batch, args.rounds, compiled=not args.no_compile)),
        ("memory", ["## Peak resident memory (a fresh process each, which loads its own framework only; "
                    "\"during the run\" is the growth from the built model to the peak of the first two calls, which "
                    "includes compiling; \"steady\" is the peak of two more calls after resetting the peak)"],
         lambda: bench_memory(args.train_models, 16, args.threads)),
        ("litert", [f"## LiteRT, batch 1 (XNNPACK, {args.threads} threads, median of {args.litert_rounds} "
                    "rounds, real-photo input, random weights)"],
         lambda: bench_litert(args.litert_models, args.threads, args.litert_rounds)),
        ("int8", [f"## int8 on CPU, batch 1 ({args.threads} threads, median of {args.litert_rounds} interleaved "
                  "rounds, timm's random weights in both)", "",
                  "keras_vitnt: `keras_vitnt.export(model, path, quantization=\"dynamic_int8\")` under the stock "
                  "LiteRT interpreter (full int8 is slower on ViTs: see the quantisation table); timm: "
                  "`torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)`. Agreement: "
                  "with timm fp32 on real photos (random weights: it shows how much quantization moves the "
                  "outputs, not accuracy)."],
         lambda: bench_int8(args.int8_models, args.threads, args.litert_rounds)),
        ("bf16", ["## bfloat16 accuracy against fp32 (TF mixed_bfloat16, OpenVINO bf16)"], lambda: bench_bf16(args.train_models, args.weights)),
        ("quant", [f"## Quantisation: size, batch-1 latency ({args.threads} threads, median of {args.litert_rounds} "
                   "interleaved rounds) and agreement with Keras fp32", "",
                   "Keras rows: `model.predict_on_batch`; Keras `quantize` rows: `model.quantize(mode)` on the fp32 "
                   "model, sized as saved `.keras` files. LiteRT rows: `keras_vitnt.export(..., quantization=...)` "
                   "under the stock interpreter (XNNPACK). Calibration images are never scored."],
         lambda: bench_quant(args.quant_models, args.weights, args.threads, args.litert_rounds)),
        ("backends", [f"## Keras backends (batch {args.train_batch}, {args.rounds} interleaved rounds; one process "
                      "per backend, each timing timm beside itself: compare backends by their ratios)", "",
                      "Inference: `predict_on_batch` (TensorFlow: tf.function; JAX: jit; PyTorch: eager). Training: "
                      "`train_on_batch`, AdamW, as the recipe runs it (XLA on TensorFlow and JAX, eager on PyTorch)."],
         lambda: bench_backends(args.backend_models, args.train_batch, args.rounds, args.threads)),
    ]


if __name__ == "__main__":
    sys.exit(main())
