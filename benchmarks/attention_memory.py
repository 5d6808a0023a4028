"""What training attention without kept softmax weights buys on TensorFlow: the recipe's XLA AdamW
step with `keras_vitnt.layers.attention.attend_recomputed` (the default in training: the weights are
computed again in the backward pass) against autodiff's attention (the weights kept from the forward
pass until the backward pass), random weights.

    .venv/bin/python benchmarks/attention_memory.py [--models ...] [--batch 16] [--rounds 9] [--out FILE]

Peak resident memory: a fresh process per form and model, `--memory-rounds` times, alternating
(`keras_vitnt.peers.measure_peak`: the first two steps, which compile, and the two after them).
Speed: both steps in one process, interleaved round by round, `--threads` threads (2). The table
goes to stdout, and to --out if given.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

MODELS = ["vit_small_patch16_224", "tnt_s_patch16_224"]


def use_autodiff_attention():
    """Training attention as autodiff takes it (the softmax weights kept for the backward pass):
    `attend`'s inference form, also in training."""
    import keras

    from keras_vitnt.layers import attention

    def attend_autodiff(q, k, v, scale):
        return attention.attend(q, k, v, scale, False, keras.layers.Dropout(0.0), False)[0]

    attention.attend_recomputed = attend_autodiff


def child(form, name, batch, threads):
    """In a fresh process: measure_peak of the recipe's XLA step, as JSON on the last line."""
    from keras_vitnt.benchmark import keras_memory_step
    from keras_vitnt.peers import measure_peak

    if form == "kept":
        use_autodiff_attention()
    print(json.dumps(measure_peak(keras_memory_step(name, "train", batch, threads))), flush=True)


def memory(form, name, batch, threads):
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"import attention_memory; attention_memory.child({form!r}, {name!r}, {batch}, {threads})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"the memory measurement of {name} ({form}) failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds")
    p.add_argument("--memory-rounds", type=int, default=2, help="fresh processes per form and model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="also write the table here (refused if the file exists)")
    args = p.parse_args(argv)

    import timm  # noqa: F401  before TensorFlow (triton crashes when loaded after it); not in the memory children

    from keras_vitnt.benchmark import (
        _keras_train_step,
        interleaved_times,
        machine_line,
        refuse_existing_out,
        set_tf_threads,
        speedup,
        write_table,
    )
    from keras_vitnt.layers import attention

    refuse_existing_out(args.out)

    set_tf_threads(args.threads)
    command = "python benchmarks/attention_memory.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["# Training attention on TensorFlow: softmax weights computed again in the backward pass, "
             "against kept", "", f"Machine: {machine_line(args.threads)}.", "", f"Command: `{command}`", "",
             f"The recipe's XLA AdamW step, batch {args.batch}. Peak resident memory of a fresh process "
             f"({args.memory_rounds} each, alternating; \"first\": the first two steps, which compile; "
             "\"steady\": the two after them), MB. Speed: img/s from the median time of "
             f"{args.rounds} interleaved rounds; the ratio is the median over rounds of the two times taken back "
             "to back.", "",
             "| model | first peak, kept | first peak, recomputed | steady peak, kept | **steady peak, recomputed** "
             "| kept img/s | recomputed img/s | **recomputed / kept speed** |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    recomputed = attention.attend_recomputed
    for name in args.models:
        peaks = {"kept": [], "recomputed": []}
        for _ in range(args.memory_rounds):
            for form in peaks:
                peaks[form].append(memory(form, name, args.batch, args.threads))

        def mb(form, key):
            return " / ".join(f"{r[key]:.0f}" for r in peaks[form])

        attention.attend_recomputed = recomputed
        steps = {"recomputed": _keras_train_step(name, args.batch, True)}
        steps["recomputed"]()  # traced now, with the form in place
        use_autodiff_attention()
        steps["kept"] = _keras_train_step(name, args.batch, True)
        steps["kept"]()
        attention.attend_recomputed = recomputed
        times = interleaved_times(steps, args.rounds)
        ips = {k: args.batch / statistics.median(v) for k, v in times.items()}
        lines.append(f"| {name} | {mb('kept', 'peak')} | {mb('recomputed', 'peak')} | {mb('kept', 'steady')} | "
                     f"**{mb('recomputed', 'steady')}** | {ips['kept']:.2f} | {ips['recomputed']:.2f} | "
                     f"**{speedup(times, 'recomputed', 'kept'):.2f}** |")
        print(lines[-1], flush=True)
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
