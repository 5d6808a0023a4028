"""What keras_vitnt's PyTorch-backend forms buy (the recipe's AdamW step and `predict_on_batch`, batch 16,
random weights): the package's Dense as torch's `linear` (the bias added by the `addmm`), attention
through torch's `scaled_dot_product_attention` on views with q, k and v taken by `unbind` (timm's own
calls) and the package's AdamW (`keras_vitnt.optimizers.AdamW`: the update one variable at a time, in
place), against the forms Keras gives (`keras.layers.Dense.call`: a matmul and an add;
`keras.ops.dot_product_attention`, which copies q, k and v to contiguous tensors on CPU; q, k and v
as slices of one tensor; `keras.optimizers.AdamW`, whose update allocates model-sized temporaries),
with timm's eager step and forward beside them.

    KERAS_BACKEND=torch .venv/bin/python benchmarks/torch_forms.py [--models ...] [--rounds 11]
        [--kinds train inference update] [--out FILE]

(the script sets KERAS_BACKEND=torch itself). All contenders in one process, interleaved round by
round, `--threads` threads (2); a ratio is the median over rounds of two times taken back to back.
The table goes to stdout, and to --out if given.
"""

import argparse
import os
import statistics
import sys

os.environ["KERAS_BACKEND"] = "torch"

MODELS = ["vit_small_patch16_224", "tnt_s_patch16_224"]
KINDS = ("train", "inference", "update")


def keras_forms():
    """Switches the package's PyTorch forms off while `state["keras"]` is true: Keras's Dense call,
    Keras's dot_product_attention, q/k/v as slices (the forms before 2026-12-07)."""
    import keras
    from keras import ops

    from keras_vitnt.layers import attention, base, blocks

    state = {"keras": False}
    ours_call, ours_groups, ours_attend = base.Dense.call, attention.head_groups, attention.attend

    def call(self, inputs, training=None):
        return (keras.layers.Dense.call if state["keras"] else ours_call)(self, inputs, training=training)

    def head_groups(x, t, groups, num_heads):
        if not state["keras"]:
            return ours_groups(x, t, groups, num_heads)
        x = attention.heads_first(x, t, groups, num_heads)
        return tuple(x[i * num_heads : (i + 1) * num_heads] for i in range(groups))

    def attend(q, k, v, scale, needs_weights, dropout, training):
        if not state["keras"] or needs_weights:
            return ours_attend(q, k, v, scale, needs_weights, dropout, training)
        q, k, v = (ops.transpose(a, (1, 2, 0, 3)) for a in (q, k, v))
        return ops.transpose(ops.dot_product_attention(q, k, v, scale=scale), (2, 0, 1, 3)), None

    base.Dense.call = call
    for module in (attention, blocks):
        module.head_groups, module.attend = head_groups, attend
    return state


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=11, help="interleaved timing rounds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS),
                   help="train and inference: the first table; update: the AdamW update alone, the second")
    p.add_argument("--out", help="also write the table here (refused if the file exists)")
    args = p.parse_args(argv)

    import timm  # noqa: F401  before TensorFlow (machine_line imports it for its version)
    import keras
    import numpy as np
    import torch

    from keras_vitnt.benchmark import (
        _keras_train_step,
        _timm_runners,
        interleaved_times,
        keras_model,
        machine_line,
        refuse_existing_out,
        speedup,
        write_table,
    )

    refuse_existing_out(args.out)

    torch.set_num_threads(args.threads)
    state = keras_forms()

    def under(forms, fn):
        def run():
            state["keras"] = forms == "keras"
            fn()

        return run

    command = "python benchmarks/torch_forms.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["# Keras on PyTorch: keras_vitnt's forms (torch's linear, SDPA on views, unbind, its AdamW) against Keras's",
             "", f"Machine: {machine_line(args.threads)}.", "", f"Command: `{command}`", "",
             f"Batch {args.batch}, random weights; img/s from the median time of {args.rounds} interleaved rounds; "
             "a ratio is the median over rounds of the two times taken back to back. Train: an AdamW step "
             "(`train_on_batch`, eager, as the recipe runs on PyTorch; Keras's forms with `keras.optimizers.AdamW`, "
             "keras_vitnt's with `keras_vitnt.optimizers.AdamW`) and timm's eager AdamW step; inference: "
             "`predict_on_batch` and timm's eager forward.", "",
             "| model | | Keras's forms img/s | **keras_vitnt's** img/s | timm eager img/s | **ours / Keras's** "
             "| Keras's / timm | **ours / timm** |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    if not {"train", "inference"} & set(args.kinds):
        del lines[-4:]  # the first table's description and header
    print("\n".join(lines), flush=True)
    for name in args.models if {"train", "inference"} & set(args.kinds) else []:
        model = keras_model(name)
        x = np.random.default_rng(0).standard_normal((args.batch,) + model.input_shape[1:]).astype("float32")
        timm_infer, timm_step = _timm_runners(name, args.batch, bf16=False)
        runs = {
            "train": {"keras": under("keras", _keras_train_step(name, args.batch, False, keras.optimizers.AdamW(1e-4))),
                      "ours": under("ours", _keras_train_step(name, args.batch, False)), "timm": timm_step},
            "inference": {"keras": under("keras", lambda: model.predict_on_batch(x)),
                          "ours": under("ours", lambda: model.predict_on_batch(x)), "timm": timm_infer["timm"]},
        }
        for kind, runners in ((k, r) for k, r in runs.items() if k in args.kinds):
            times = interleaved_times(runners, args.rounds)
            ips = {k: args.batch / statistics.median(v) for k, v in times.items()}
            lines.append(f"| {name} | {kind} | {ips['keras']:.2f} | {ips['ours']:.2f} | {ips['timm']:.2f} | "
                         f"**{speedup(times, 'ours', 'keras'):.3f}** | {speedup(times, 'keras', 'timm'):.3f} | "
                         f"**{speedup(times, 'ours', 'timm'):.3f}** |")
            print(lines[-1], flush=True)
    if "update" in args.kinds:
        lines += update_table(args.models, args.rounds)
    write_table(lines, args.out)


def update_table(models, rounds):
    """The AdamW update alone (`optimizer.apply` on given gradients: no forward or backward pass), Keras's
    against keras_vitnt's on the Keras model's weights, torch.optim.AdamW (its CPU default) on timm's;
    beside them LayerDecayAdamW (decay 0.75), before 2026-12-07 on Keras's generic per-variable update."""
    import keras
    import numpy as np
    import timm
    import torch

    from keras_vitnt.benchmark import interleaved_times, keras_model, speedup
    from keras_vitnt.optimizers import AdamW, LayerDecayAdamW

    lines = ["", f"AdamW's update alone (weight decay 0.05; `optimizer.apply` on fixed gradients, no forward or "
             f"backward pass), median ms of {rounds} interleaved rounds:", "",
             "| model | weights | `keras.optimizers.AdamW` ms | **`keras_vitnt.optimizers.AdamW`** ms "
             "| `torch.optim.AdamW` (timm's step) ms | **ours / Keras's** | ours / torch | `LayerDecayAdamW` ms "
             "| its generic update ms |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    for name in models:
        variables = keras_model(name).trainable_variables
        grads = [keras.ops.convert_to_tensor(np.random.default_rng(i).standard_normal(v.shape).astype("float32") * 1e-3)
                 for i, v in enumerate(variables)]
        runners = {}
        generic = LayerDecayAdamW(0.75, 12, learning_rate=1e-4, weight_decay=0.05)
        generic._backend_update_step = generic._keras_torch_update  # Keras's per-variable update_step, scaled
        for key, opt in (("keras", keras.optimizers.AdamW(1e-4, weight_decay=0.05)),
                         ("ours", AdamW(1e-4, weight_decay=0.05)),
                         ("decay", LayerDecayAdamW(0.75, 12, learning_rate=1e-4, weight_decay=0.05)),
                         ("generic", generic)):
            opt.build(variables)
            runners[key] = lambda opt=opt, grads=grads, variables=variables: opt.apply(grads, variables)
        reference = timm.create_model(name)
        for param in reference.parameters():
            param.grad = torch.randn_like(param) * 1e-3
        runners["torch"] = torch.optim.AdamW(reference.parameters(), lr=1e-4, weight_decay=0.05).step
        times = interleaved_times(runners, rounds)
        ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
        lines.append(f"| {name} | {sum(int(np.prod(v.shape)) for v in variables) / 1e6:.1f}M | {ms['keras']:.0f} | "
                     f"**{ms['ours']:.0f}** | {ms['torch']:.0f} | **{speedup(times, 'ours', 'keras'):.2f}** | "
                     f"{speedup(times, 'ours', 'torch'):.2f} | {ms['decay']:.0f} | {ms['generic']:.0f} |")
        print(lines[-1], flush=True)
    return lines


if __name__ == "__main__":
    main()
