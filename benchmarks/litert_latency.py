"""LiteRT latency next to Keras, batch 1, for each quantisation, side by side in one run.

    .venv/bin/python benchmarks/litert_latency.py [--models vit_small_patch16_224 tnt_s_patch16_224]
                                                  [--threads 2] [--rounds 20] [--out FILE]

Exports each model (random weights, preprocessing inside, logits) to fp32 / float16 /
dynamic_int8 / int8 .tflite files in a temporary folder, then times the stock
`ai-edge-litert` interpreter (XNNPACK, `--threads`) and `model.predict_on_batch` on one
image, alternating round by round. Prints a markdown table: median ms, speed-up versus
LiteRT fp32, file size, and the export's parity against Keras.
"""

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from timing import emit_table, interleaved_medians  # noqa: E402

QUANTS = [None, "float16", "dynamic_int8", "int8"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vit_small_patch16_224", "tnt_s_patch16_224"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    import keras_vitnt
    from keras_vitnt.data.samples import photo_crops

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = keras_vitnt.create_model(name, weights=None, classifier_activation=None)
            size = model.input_shape[1]
            x = photo_crops(1, size)
            runners = {"keras": lambda: model.predict_on_batch(x)}
            info = {}
            for q in QUANTS:
                path = os.path.join(tmp, f"{name}_{q}.tflite")
                report = keras_vitnt.export(model, path, quantization=q)
                interp = Interpreter(model_path=path, num_threads=args.threads)
                interp.allocate_tensors()
                inp, out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]

                def run(interp=interp, inp=inp, out=out):
                    interp.set_tensor(inp, x)
                    interp.invoke()
                    return interp.get_tensor(out)

                runners[q or "fp32"] = run
                info[q or "fp32"] = report
            med = {k: v * 1000 for k, v in interleaved_medians(runners, args.rounds).items()}
            for k in runners:
                r = info.get(k)
                rows.append((name, "Keras predict_on_batch" if k == "keras" else f"LiteRT {k}", med[k],
                             med["fp32"] / med[k], r["size_bytes"] / 1e6 if r else None,
                             r["max_relative_error"] if r else None, r.get("correlation") if r else None))
                print(rows[-1], flush=True)

    table = [
        f"batch 1, {args.threads} threads (LiteRT: XNNPACK), median of {args.rounds} interleaved rounds, "
        "real-photo input, random weights",
        "",
        "| model | runtime | ms / image | speed-up vs LiteRT fp32 | file MB | max rel. error vs Keras | correlation |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for n, k, ms, sp, mb, err, corr in rows:
        table.append(f"| {n} | {k} | {ms:.1f} | {sp:.2f} | {'' if mb is None else f'{mb:.1f}'} | "
                     f"{'' if err is None else f'{err:.1e}'} | {'' if corr is None else f'{corr:.4f}'} |")
    emit_table(table, args.out)


if __name__ == "__main__":
    main()
