"""Inference speed of keras_vitnt next to timm, measured side by side in one run.

    .venv/bin/python benchmarks/speed.py [--models vit_small_patch16_224 tnt_s_patch16_224]
                                         [--batch 16] [--threads 2] [--rounds 5] [--out FILE]

Both frameworks run the same architecture with random weights, fp32, the same number of
threads, and alternate round by round (these machines are shared and drift; only the
ratio of two numbers taken side by side is stable). Prints a markdown table of median
images/second and the ratio keras_vitnt / timm. Needs the test extra (timm, torch).
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# timm before TensorFlow: triton's native library crashes when loaded after TensorFlow
import timm  # noqa: E402
import torch  # noqa: E402
from timing import emit_table, interleaved_medians  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vit_small_patch16_224", "tnt_s_patch16_224"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=None, help="also write the table to this file")
    args = p.parse_args()

    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    torch.set_num_threads(args.threads)
    import keras_vitnt

    rows = []
    for name in args.models:
        km = keras_vitnt.create_model(name, weights=None, include_preprocessing=False)
        tm = timm.create_model(name, pretrained=False).eval()
        size = tm.pretrained_cfg["input_size"][1]
        x = np.random.default_rng(0).standard_normal((args.batch, size, size, 3)).astype("float32")
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

        def run_keras():
            km.predict_on_batch(x)

        def run_timm():
            with torch.inference_mode():
                tm(xt)

        med = interleaved_medians({"keras": run_keras, "timm": run_timm}, args.rounds)
        k, t = args.batch / med["keras"], args.batch / med["timm"]
        rows.append((name, k, t, k / t))
        print(f"{name}: keras_vitnt {k:.1f} img/s, timm {t:.1f} img/s, ratio {k / t:.2f}", flush=True)

    table = [
        f"batch {args.batch}, {args.threads} threads, fp32, median of {args.rounds} interleaved rounds",
        "",
        "| model | keras_vitnt img/s | timm img/s | ratio |",
        "|---|---:|---:|---:|",
    ] + [f"| {n} | {k:.1f} | {t:.1f} | {r:.2f} |" for n, k, t, r in rows]
    emit_table(table, args.out)


if __name__ == "__main__":
    main()
