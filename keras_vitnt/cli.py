"""The `keras-vitnt` command line: `list` and `demo` (more subcommands arrive with the
predict / train / export / benchmark / visualize features)."""

import argparse
import logging
import os
import sys
import time


def cmd_list(args):
    from keras_vitnt.models import registry

    rows = []
    for name in registry.list_models(args.pattern):
        info = registry.REGISTRY[name]
        tags = info.tags or ()
        # parameters as timm counts them: with the default weights' head (none for headless tags)
        params = registry.count_params(info.family, info.arch, classes=tags[0].num_classes if tags else 1000)
        if not args.tags:
            tags = tags[:1]
        if not tags:
            rows.append((name, "-", f"{params / 1e6:.2f}M", "-", "-"))
        for t in tags:
            top1 = f"{t.top1:.2f}" if t.top1 else "-"
            rows.append((name, t.tag, f"{params / 1e6:.2f}M", str(t.num_classes), top1))
    header = ("model", "default tag" if not args.tags else "tag", "params", "classes", "top-1")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*header))
    print(fmt.format(*("-" * w for w in widths)))
    for r in rows:
        print(fmt.format(*r))
    return 0


def cmd_predict(args):
    """Classify image files with a registered model and print the top classes."""
    import numpy as np

    import keras_vitnt
    from keras_vitnt.data import decode_predictions, load_images
    from keras_vitnt.models import registry

    info = registry.get_model_info(args.model)
    _, name_tag = registry.split_name(args.model)
    weights = args.weights or name_tag or "imagenet"
    if weights == "imagenet":
        tag = info.default_tag
    elif any(t.tag == weights for t in info.tags):
        tag = info.get_tag(weights)
    else:  # a file, or "none": crop as the default weights were evaluated
        tag = None
    ref = tag or info.default_tag
    size, crop_pct = info.arch["img_size"], (ref.crop_pct if ref else 0.9)
    model = keras_vitnt.create_model(info.name, weights=None if weights == "none" else weights)
    images = load_images(args.images, size=size, crop_pct=crop_pct)
    probs = np.asarray(model.predict(images, verbose=0, batch_size=8))
    if probs.shape[1] == 1000:
        decoded = decode_predictions(probs, top=args.top)
    else:
        order = np.argsort(-probs, axis=1)[:, : args.top]
        decoded = [[(f"class {i}", "", float(row[i])) for i in idx] for row, idx in zip(probs, order)]
    print(f"model {info.name}, weights {tag.hub_id if tag else weights}, input {size}x{size} (crop_pct {crop_pct})")
    for path, rows in zip(args.images, decoded):
        print(f"\n{path}")
        print(f"  {'rank':<5}{'class':<11}{'score':>8}  description")
        for rank, (wnid, desc, score) in enumerate(rows, 1):
            print(f"  {rank:<5}{wnid:<11}{score:>8.4f}  {desc}")
    return 0


def _load_model_arg(model_arg, weights):
    """MODEL on the command line: a saved `.keras` model (fine-tuned) or a timm name."""
    import keras

    import keras_vitnt

    if model_arg.endswith(".keras"):
        if weights:
            raise SystemExit("--weights applies to a timm model name, not to a saved .keras model")
        return keras.models.load_model(model_arg)
    return keras_vitnt.create_model(model_arg, weights=None if weights == "none" else (weights or "imagenet"))


def cmd_export(args):
    """Export a model and print the parity report of the exported file."""
    import glob

    import keras_vitnt
    from keras_vitnt.data import load_images

    model = _load_model_arg(args.model, args.weights)
    quant = None if args.quantize in (None, "none") else args.quantize
    if args.out:
        out = args.out
    else:
        stem = os.path.basename(args.model).removesuffix(".keras").split(".")[0]
        suffix = {"litert": f"{'_' + quant if quant else ''}.tflite", "onnx": ".onnx", "saved_model": "_saved_model"}
        out = os.path.join("saved_models", stem + suffix[args.format])
    representative = None
    if args.calibration:
        files = sorted(f for ext in ("jpg", "jpeg", "png", "bmp") for f in glob.glob(
            os.path.join(args.calibration, "**", f"*.{ext}"), recursive=True))
        if not files:
            raise SystemExit(f"--calibration {args.calibration}: no .jpg/.png images found")
        representative = load_images(files[:200], size=model.input_shape[1])
    report = keras_vitnt.export(model, out, format=args.format, quantization=quant,
                                representative_data=representative, overwrite=args.overwrite)
    print(f"exported {report['path']} ({args.format}, {quant or 'fp32'}, {report['size_bytes'] / 1e6:.2f} MB)")
    print(f"parity vs Keras on {report['samples']} samples: max relative error {report['max_relative_error']:.2e}, "
          f"top-1 agreement {report.get('top1_agreement', float('nan')):.2%}, correlation {report['correlation']:.6f}")
    print(f"metadata: {report['path'] + ('/keras_vitnt.json' if args.format == 'saved_model' else '.json')}")
    return 0


def cmd_demo(args):
    """Offline demo: builds one model of each family with random weights, shows its
    summary, checks its parameter count against the registry, and times a forward pass."""
    import numpy as np

    import keras_vitnt
    from keras_vitnt.models import registry

    names = ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "tnt_s_patch16_224", "tnt_s_legacy_patch16_224"]
    images = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype("float32")
    print("keras_vitnt demo: one model per family, random init (no download)\n")
    small = keras_vitnt.ViT("Ti/4", weights=None, input_shape=(32, 32, 3), classes=10, depth=4)
    small.summary()
    rows = []
    for name in names:
        model = keras_vitnt.create_model(name, weights=None)
        info = registry.REGISTRY[name]
        expected = registry.count_params(info.family, info.arch)
        model.predict_on_batch(images)  # trace once
        t0 = time.perf_counter()
        probs = np.asarray(model.predict_on_batch(images))
        dt = (time.perf_counter() - t0) / len(images)
        if model.count_params() != expected or not np.allclose(probs.sum(-1), 1.0, atol=1e-4):
            print(f"FAILED: {name} has {model.count_params()} parameters, expected {expected}", file=sys.stderr)
            return 1
        rows.append((name, model.count_params(), f"{dt * 1000:.0f} ms"))
    print(f"\n{'model':<34}{'parameters':>14}{'CPU time/img':>16}")
    for name, n, t in rows:
        print(f"{name:<34}{n:>14,}{t:>16}")
    print("\nParameter counts equal timm's. Pretrained weights: keras_vitnt.create_model(name, weights='imagenet').")
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="keras-vitnt", description="ViT, DeiT and TNT for Keras 3, identical to timm.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("list", help="registered models with their default tag, parameters and top-1")
    q.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'vit_*' or '*distilled*'")
    q.add_argument("--tags", action="store_true", help="one row per pretrained tag")
    q.set_defaults(func=cmd_list)
    q = sub.add_parser("predict", help="classify image files with a pretrained model")
    q.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    q.add_argument("--model", default="tnt_s_patch16_224", help="timm model name, optionally with .tag")
    q.add_argument("--weights", default=None, help="imagenet (default tag), a tag name, a checkpoint file, or none")
    q.add_argument("--top", type=int, default=5, help="classes to show per image (default 5)")
    q.set_defaults(func=cmd_predict)
    q = sub.add_parser("export", help="export to LiteRT (.tflite), SavedModel or ONNX, with a parity check")
    q.add_argument("model", help="timm model name (optionally .tag) or a saved .keras model")
    q.add_argument("--weights", default=None, help="imagenet (default), a tag, a checkpoint file, or none")
    q.add_argument("--format", default="litert", choices=["litert", "saved_model", "onnx"])
    q.add_argument("--quantize", default=None, choices=["none", "float16", "dynamic_int8", "int8"])
    q.add_argument("--calibration", default=None, help="folder of images for int8 calibration")
    q.add_argument("--out", default=None, help="destination (default: saved_models/<model>...)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    q.set_defaults(func=cmd_export)
    q = sub.add_parser("demo", help="offline demo: build each family, check and time it")
    q.set_defaults(func=cmd_demo)
    return p


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from keras_vitnt.exporter import ExportParityError
    from keras_vitnt.weights import CheckpointMismatchError, WeightsUnavailableError

    try:
        return args.func(args)
    except (ValueError, FileExistsError, FileNotFoundError, WeightsUnavailableError, CheckpointMismatchError,
            ExportParityError) as e:
        # user errors: the message says what to do; no traceback
        print(f"keras-vitnt {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
