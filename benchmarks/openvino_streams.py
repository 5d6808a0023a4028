"""What `OpenVINOModel`'s default `streams` buys: the same OpenVINO export run with a batch split into
equal parts on OpenVINO's streams at once (the default, `streams=None`) and as one request with every
thread (`streams=1`), interleaved round by round in one process.

    .venv/bin/python benchmarks/openvino_streams.py [--models ...] [--batch 16] [--rounds 11] [--out FILE]

Random weights, f32, `--threads` threads (2). The table goes to stdout, and to --out if given.
"""

import argparse
import os
import sys
import tempfile

import timm  # noqa: F401  before TensorFlow: triton (imported by torch) crashes when loaded after it

MODELS = ["vit_tiny_patch16_224", "vit_small_patch16_224", "deit_small_patch16_224", "vit_base_patch16_224",
          "tnt_s_patch16_224", "tnt_b_patch16_224"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="also write the table here (refused if the file exists)")
    args = p.parse_args(argv)

    import numpy as np

    import keras_vitnt
    from keras_vitnt.benchmark import (
        interleaved_times,
        keras_model,
        machine_line,
        refuse_existing_out,
        set_threads,
        speedup,
        write_table,
    )
    from keras_vitnt.openvino_runtime import OpenVINOModel

    refuse_existing_out(args.out)

    set_threads(args.threads)
    command = "python benchmarks/openvino_streams.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["# OpenVINOModel: a batch split across streams, against one request", "",
             f"Machine: {machine_line(args.threads)}.", "", f"Command: `{command}`", "",
             f"Batch {args.batch}, f32, {args.rounds} interleaved rounds; img/s from the median time, the ratio is "
             "the median over rounds of the two times taken back to back.", "",
             "| model | parts on streams | one request (`streams=1`) img/s | split (default) img/s | **split / one request** |",
             "|---|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory(prefix="keras_vitnt_streams-") as work:
        for name in args.models:
            km = keras_model(name)
            path = os.path.join(work, name)
            keras_vitnt.export(km, path, format="openvino")
            x = np.random.default_rng(0).uniform(0, 255, (args.batch,) + tuple(km.input_shape[1:])).astype("float32")
            one = OpenVINOModel(path, threads=args.threads, streams=1)
            split = OpenVINOModel(path, threads=args.threads)
            np.testing.assert_allclose(split(x), one(x), rtol=1e-5, atol=1e-5)  # also compiles both
            times = interleaved_times({"one": lambda: one(x), "split": lambda: split(x)}, args.rounds)
            ips = {k: args.batch / float(np.median(v)) for k, v in times.items()}
            lines.append(f"| {name} | {split.parts(args.batch)} on {split.streams} | {ips['one']:.1f} | "
                         f"{ips['split']:.1f} | **{speedup(times, 'split', 'one'):.2f}** |")
            print(lines[-1], flush=True)
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
