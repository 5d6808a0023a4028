"""The `keras-vitnt` command line: list, predict, export, train, visualize, demo, benchmark."""

import argparse
import logging
import os
import sys
import traceback


def cmd_list(args):
    from keras_vitnt.models import registry

    rows = []
    for name in registry.list_models(args.pattern):
        info = registry.REGISTRY[name]
        tags = info.tags or ()
        # parameters as timm counts them: with the default weights' head (none for headless tags)
        params = info.config.count_params(classes=tags[0].num_classes if tags else 1000)
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


DEFAULT_MODEL = "tnt_s_patch16_224"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _model_and_inputs(args, default=None):
    """(MODEL, the command's other positionals). MODEL comes first, or with --model (the older
    spelling). predict and visualize keep their default model: without --model, a first
    positional that is an image (a file other than .keras, or a name with an image extension)
    is an input."""
    takes_inputs = hasattr(args, "inputs")
    inputs, first = list(getattr(args, "inputs", None) or []), args.model
    if args.model_option:
        if first is not None and takes_inputs:
            inputs.insert(0, first)  # with --model, every positional is an input
        elif first is not None and first != args.model_option:
            raise ValueError(f"MODEL given twice: {first} and --model {args.model_option}; give one")
        return args.model_option, inputs
    if first and takes_inputs and default and _is_image_path(first):
        return default, [first, *inputs]
    if first or default:
        return first or default, inputs
    raise ValueError("give MODEL: a timm name (keras-vitnt list), <family>:<variant>, or a .keras model / run "
                     "folder")


def _is_image_path(path):
    return path.lower().endswith(IMAGE_EXTS) or (os.path.isfile(path) and not path.endswith(".keras"))


def _saved_model_path(model_arg):
    """A saved model on the command line: a .keras file, or a run folder (its model.keras); None for a name."""
    if model_arg.endswith(".keras"):
        return model_arg
    if os.path.isdir(model_arg):
        path = os.path.join(model_arg, "model.keras")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{model_arg} is a folder without model.keras: pass a training run folder, a "
                                    ".keras file or a timm model name")
        return path
    return None


def _load_model_arg(model_arg, weights, include_top=True, pooling=None, mean=None, std=None, input_size=None):
    """MODEL on the command line (see registry.MODEL_NAME_RULE) -> a Keras model (a timm name
    built at `input_size` when given, its position table resampled to it)."""
    import keras

    from keras_vitnt.models import create_model

    saved = _saved_model_path(model_arg)
    if saved:
        if weights or mean or std or pooling:
            raise ValueError("--weights, --mean, --std and --pooling apply to a timm model name, not to a saved "
                             ".keras model (which holds its own)")
        # without its optimizer: these commands only infer (and a file compiled on PyTorch would import torch here)
        return keras.models.load_model(saved, compile=False)
    try:
        shape = None if input_size is None else (*input_size, 3)
        return create_model(model_arg, weights=weights or "imagenet", include_top=include_top and pooling is None,
                            pooling=pooling, mean=mean, std=std, input_shape=shape)
    except ValueError as e:
        if "no classifier head" not in str(e):
            raise
        raise ValueError(f"{e}\nOn the command line: pass --pooling token (or avg) for the pooled features.") from e


def cmd_predict(args):
    """Classify image files with a registered model (or a fine-tuned one) and print the top classes."""
    import numpy as np

    from keras_vitnt.data import decode_predictions, load_images
    from keras_vitnt.data.imagenet import has_class_names
    from keras_vitnt.models.resolve import DEFAULT_CROP_PCT

    model_arg, images = _model_and_inputs(args, DEFAULT_MODEL)
    if not images:
        raise ValueError("give the image files after MODEL: keras-vitnt predict MODEL IMAGE [IMAGE ...]")
    saved = _saved_model_path(model_arg)
    if saved:
        model = _load_model_arg(model_arg, args.weights, mean=args.mean, std=args.std)
        size, crop_pct, interpolation, what = _input_size(model)[0], DEFAULT_CROP_PCT, "bicubic", f"model {saved}"
        class_names = _run_class_names(saved)
    else:
        model, size, crop_pct, interpolation, what = _pretrained_classifier(model_arg, args)
        class_names = None
    batch = load_images(images, size=size, crop_pct=crop_pct, interpolation=interpolation)
    probs = np.asarray(model.predict(batch, verbose=0, batch_size=8))
    if class_names and len(class_names) == probs.shape[1]:
        order = np.argsort(-probs, axis=1)[:, : args.top]
        decoded = [[(class_names[i], "", float(row[i])) for i in idx] for row, idx in zip(probs, order)]
    elif has_class_names(probs.shape[1]):
        decoded = decode_predictions(probs, top=args.top)
    else:
        order = np.argsort(-probs, axis=1)[:, : args.top]
        decoded = [[(f"class {i}", "", float(row[i])) for i in idx] for row, idx in zip(probs, order)]
    print(f"{what}, input {size}x{size} (crop_pct {crop_pct})")
    for path, rows in zip(images, decoded):
        print(f"\n{path}")
        print(f"  {'rank':<5}{'class':<11}{'score':>8}  description")
        for rank, (wnid, desc, score) in enumerate(rows, 1):
            print(f"  {rank:<5}{wnid:<11}{score:>8.4f}  {desc}")
    return 0


def _pretrained_classifier(model_arg, args):
    """-> (model, input size, crop_pct, interpolation, description) for a timm name; refuses weights without a
    trained head."""
    from keras_vitnt.models import create_model
    from keras_vitnt.models.registry import parse_model_name
    from keras_vitnt.models.resolve import resolve_weights

    spec = parse_model_name(model_arg)
    weights = resolve_weights(args.weights or (spec.tag.tag if spec.tag else "imagenet"), spec.config, spec.info)
    if weights.kind == "none":
        raise ValueError("predict shows what trained weights see; --weights none would print classes from a random "
                         "head. Pass imagenet, a tag or a checkpoint file.")
    if weights.kind == "tag" and weights.num_classes == 0:
        with_head = [t.tag for t in spec.info.tags if t.num_classes]
        raise ValueError(f"{weights.tag.hub_id} is a feature checkpoint without a classifier head, so there is nothing "
                         f"to predict. Tags of {spec.info.name} with a head: {', '.join(with_head) or 'none'}.")
    # classes=None: the head is the weights' own (the builder refuses a headless file)
    model = create_model(model_arg, weights=weights.tag.tag if weights.tag else weights.path, mean=args.mean,
                         std=args.std)
    return (model, weights.input_size, weights.crop_pct, weights.interpolation,
            f"model {spec.name}, weights {weights.description}")


def _run_class_names(model_arg):
    """The class names of a recipe run (summary.json beside its model.keras): predict's labels, the export's
    sidecar."""
    import json

    summary = os.path.join(os.path.dirname(model_arg), "summary.json")
    if not model_arg.endswith(".keras") or not os.path.isfile(summary):
        return None
    try:
        with open(summary) as f:
            classes = json.load(f).get("classes")
    except (OSError, ValueError, AttributeError):
        return None
    return list(classes) if isinstance(classes, list) else None


def _input_size(model):
    """(H, W) to load images at: the model's input size, or its native size when it takes any."""
    h, w = model.input_shape[1:3]
    if h is None or w is None:
        from keras_vitnt.exporter import native_size

        size = native_size(model)
        if size is None:
            raise ValueError(f"{model.name} takes any input size and has no position table to tell its own size")
        return size
    return h, w


def _size2(text):
    """argparse type for --input-size: H,W (or one number for a square)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the input height and width, e.g. 224,224 (or 224)")
    return values


def _floats3(text):
    """argparse type for --mean/--std: three comma-separated numbers."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: three comma-separated numbers for R,G,B, e.g. 0.485,0.456,0.406")
    return values


def cmd_export(args):
    """Export a model and print the parity report of the exported file."""
    from keras_vitnt.data import load_images
    from keras_vitnt.exporter import export, sidecar_path

    model_arg, _ = _model_and_inputs(args)
    quant = None if args.quantize in (None, "none") else args.quantize
    calibration = _calibration_images(args.calibration, quant)  # checked before the model loads (or downloads)
    saved = _saved_model_path(model_arg)
    model = _load_model_arg(model_arg, args.weights, pooling=args.pooling, mean=args.mean, std=args.std,
                            input_size=None if saved else args.input_size)
    out = args.out or _default_export_path(saved or model_arg, args.format, quant, saved is not None)
    figure = _report_figure_path(out, args) if args.report else None
    representative = None
    if calibration:
        from keras_vitnt.exporter import artifact_size

        h, w = artifact_size(model, "litert", args.input_size)
        if h != w:
            raise ValueError(f"--calibration loads square crops; this model takes {h}x{w} images: pass "
                             "representative_data= to keras_vitnt.export in Python instead")
        representative = load_images(calibration, size=h)
        print(f"{quant} calibration on {len(calibration)} images from {args.calibration}")
    report = export(model, out, format=args.format, quantization=quant,
                    representative_data=representative, overwrite=args.overwrite,
                    class_names=_run_class_names(saved) if saved else None,
                    input_size=args.input_size if saved else None, layer_report=args.report)
    print(f"exported {report['path']} ({args.format}, {quant or 'fp32'}, {report['size_bytes'] / 1e6:.2f} MB)")
    print(f"parity vs Keras on {report['samples']} samples: max relative error {report['max_relative_error']:.2e}, "
          f"top-1 agreement {report.get('top1_agreement', float('nan')):.2%}, correlation {report['correlation']:.6f}")
    for precision in ("bf16", "f16"):
        if precision in report:
            low = report[precision]
            print(f"  run at precision='{precision}' (OpenVINOModel): max relative error "
                  f"{low['max_relative_error']:.2e}, top-1 agreement {low.get('top1_agreement', float('nan')):.2%}")
    print(f"metadata: {sidecar_path(report['path'], args.format)}")
    if figure:
        from keras_vitnt.quantization import report_figure, summary_lines

        print("\nwhere full int8 loses accuracy (the sidecar's int8_layers has every op):")
        print("\n".join(summary_lines(report["int8_layers"])))
        report_figure(report["int8_layers"], figure, title=f"{os.path.basename(out)}: full int8, per op group and op")
        print(f"figure: {figure}")
    return 0


def _report_figure_path(out, args):
    """<out>.int8_report.png, checked before any work: --report needs a calibrated --quantize, and an
    existing figure is replaced only with --overwrite."""
    from keras_vitnt.litert import CALIBRATED

    if args.quantize not in CALIBRATED:
        raise ValueError(f"--report is for --quantize int8, int16x8 or mixed_int8, not {args.quantize or 'fp32'}")
    figure = out + ".int8_report.png"
    if os.path.lexists(figure) and not args.overwrite:
        raise FileExistsError(f"{figure} already exists; pass --overwrite to replace it (and the export), or another "
                              "--out")
    return figure


def _calibration_images(folder, quant):
    """The --calibration images: at most 200, spread evenly over the sorted list so that every class folder
    contributes."""
    if not folder:
        return []
    from keras_vitnt.litert import CALIBRATED

    if quant not in CALIBRATED:
        raise ValueError(f"--calibration is for a calibrated --quantize (int8, int16x8, mixed_int8), not "
                         f"{quant or 'fp32'}")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--calibration {folder}: no such folder")
    images = sorted(os.path.join(d, f) for d, _, names in os.walk(folder) for f in names
                    if f.lower().endswith(IMAGE_EXTS) and not f.startswith("."))
    if not images:
        raise ValueError(f"--calibration {folder}: no images found (looked for {', '.join(IMAGE_EXTS)} files in the "
                         "folder and its subfolders); pass a folder of images like those the model will see")
    return images[:: -(-len(images) // 200)][:200]


def _default_export_path(model_arg, fmt, quant, saved):
    """A saved model (a run's model.keras) exports beside itself, inside its run: two runs never share one
    default path. A timm name exports to saved_models/<name>."""
    if saved:
        stem = os.path.basename(model_arg).removesuffix(".keras").split(".")[0]
    else:
        stem = model_arg.split(".")[0].replace(":", "_").replace("/", "_")
    suffix = {"litert": f"{'_' + quant if quant else ''}.tflite", "onnx": ".onnx", "saved_model": "_saved_model",
              "openvino": "_openvino"}
    return os.path.join(os.path.dirname(model_arg) if saved else "saved_models", stem + suffix[fmt])


def cmd_visualize(args):
    """Attention rollout / attention heads / TNT inner maps / feature maps as a PNG."""
    from keras_vitnt import visualize as vz
    from keras_vitnt.data import load_image

    # before the model loads; the PNG itself is written atomically (visualize.save_figure)
    if not args.out.lower().endswith(".png"):
        raise ValueError(f"--out {args.out}: visualize writes a PNG; give a .png path")
    if os.path.lexists(args.out) and not args.overwrite:
        raise FileExistsError(f"{args.out} already exists; pass --overwrite to replace it, or another --out "
                              "(it was left untouched)")
    model_arg, inputs = _model_and_inputs(args, DEFAULT_MODEL)
    if len(inputs) != 1:
        raise ValueError("give one IMAGE after MODEL: keras-vitnt visualize MODEL IMAGE")
    # the maps come from the blocks: no head needed (so feature checkpoints such as .dino work too)
    pca = args.kind == "pca" and not _saved_model_path(model_arg)
    # PCA compares sizes: a timm name is built for any size (its table resampled in the graph)
    model = _load_model_arg(model_arg, args.weights, include_top=False, mean=args.mean, std=args.std,
                            input_size=(None, None) if pca else None)
    h, w = _input_size(model)
    if h != w:
        raise ValueError("visualize loads square crops; build the model at a square input size")
    image = load_image(inputs[0], size=h)
    if args.kind == "rollout":
        vz.overlay(image, vz.attention_rollout(model, image), args.out, title="attention rollout")
    elif args.kind == "attention":
        vz.attention_grid(model, image, args.out, block=args.block)
    elif args.kind == "pca":
        sizes = [(h, w)] + ([(2 * h, 2 * w)] if None in model.input_shape[1:3] else [])
        vz.pca_figure(model, load_image(inputs[0], size=2 * h), args.out, sizes, block=args.block)
    elif args.kind == "tnt-inner":
        vz.overlay(image, vz.tnt_inner_maps(model, image, block=args.block), args.out, title="TNT inner attention")
    else:
        (block, tokens), = vz.feature_maps(model, image, blocks=[args.block]).items()  # block: -1 resolved
        vz.overlay(image, vz.upsample(vz.feature_map_image(tokens), (h, w)), args.out,
                   title=f"features, block {block} (PC 1)")
    print(f"wrote {args.out}")
    return 0


def cmd_demo(args):
    """The offline demo: two transformers trained on the bundled digits, exported to LiteRT."""
    from keras_vitnt import demo

    results = demo.run(out=args.out, epochs=args.epochs, overwrite=args.overwrite, weights=args.weights,
                       verbose=2 if args.verbose else 0)
    print(f"\nreport: {os.path.join(args.out, 'report.md')}")
    for kind, r in results.items():
        print(f"  {kind.upper():<4} test accuracy {r['test_accuracy']:.4f}   LiteRT parity "
              f"{r['litert']['max_relative_error']:.1e}   {os.path.join(args.out, kind + '.tflite')}")
    return 0


def cmd_train(args):
    """Fine-tune (or train from scratch) with the library's recipe."""
    import json as _json

    from keras_vitnt.train import TrainConfig, train

    model_arg, _ = _model_and_inputs(args, DEFAULT_MODEL)
    if _saved_model_path(model_arg):
        raise ValueError(f"train starts from a timm name or <family>:<variant>, not {model_arg}: to continue a run, "
                         "pass its folder as --out with a larger --epochs")
    overrides = _json.loads(args.overrides) if args.overrides else {}
    cfg = TrainConfig(
        model=model_arg, weights=args.weights or "imagenet", data=args.data, out=args.out, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing, layer_decay=args.layer_decay, drop_path_rate=args.drop_path_rate,
        image_size=args.image_size, augment=args.augment, flip=not args.no_flip, mixup=args.mixup,
        cutmix=args.cutmix, mixed_precision=args.mixed_precision, strategy=args.strategy, seed=args.seed,
        overrides=overrides, mean=args.mean, std=args.std,
    )
    result = train(cfg, verbose=2 if args.verbose else 1, overwrite=args.overwrite)
    if result.status == "finished":
        print(f"\n{cfg.out} is a finished run: nothing was trained (pass a larger --epochs to continue it, "
              "--overwrite to train it again, or another --out)")
    print(f"\nvalidation accuracy {result.val_accuracy:.4f} after {result.epochs_run} epochs")
    print(f"model: {os.path.join(cfg.out, 'model.keras')} (best: best.keras), curves: "
          f"{os.path.join(cfg.out, 'curves.png')}, log: {os.path.join(cfg.out, 'log.csv')}")
    print(f"export it: keras-vitnt export {os.path.join(cfg.out, 'model.keras')} --format litert")
    return 0


def build_parser():
    from keras_vitnt.models.registry import MODEL_NAME_RULE

    p = argparse.ArgumentParser(prog="keras-vitnt", description="ViT, DeiT and TNT for Keras 3, identical to timm.",
                                epilog=MODEL_NAME_RULE)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level and show tracebacks of errors")
    # -v also after the subcommand; SUPPRESS keeps a -v given before it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log at INFO level and show tracebacks of errors")
    # MODEL and its weights, for every command that builds or loads a model
    model_opts = argparse.ArgumentParser(add_help=False)
    model_opts.add_argument("--model", dest="model_option", default=None, metavar="MODEL",
                            help="MODEL as an option (the same as giving it first)")
    model_opts.add_argument("--weights", default=None,
                            help="imagenet (the default tag), a tag name, a checkpoint file (.safetensors, .pth, .bin, "
                                 ".npz, .weights.h5), or none")
    model_opts.add_argument("--mean", type=_floats3, default=None, metavar="R,G,B",
                            help="normalisation mean inside the model (RGB in 0..1), e.g. 0.485,0.456,0.406 for a DeiT "
                                 "file; default: the weights' tag, or the model's default weights for a file")
    model_opts.add_argument("--std", type=_floats3, default=None, metavar="R,G,B",
                            help="normalisation std (with --mean)")
    sub = p.add_subparsers(dest="command", required=True)
    model_help = f"the model ({DEFAULT_MODEL} when the first argument is an image file)"

    def add(name, with_model=False, **kw):
        q = sub.add_parser(name, parents=[common, model_opts] if with_model else [common], epilog=MODEL_NAME_RULE
                           if with_model else None, **kw)
        q.set_defaults(func=globals()[f"cmd_{name}"])
        return q

    q = add("list", help="registered models with their default tag, parameters and top-1")
    q.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'vit_*' or '*distilled*'")
    q.add_argument("--tags", action="store_true", help="one row per pretrained tag")
    q = add("predict", with_model=True, help="classify image files with a pretrained or fine-tuned model")
    q.add_argument("model", nargs="?", metavar="MODEL", help=model_help)
    q.add_argument("inputs", nargs="*", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    q.add_argument("--top", type=int, default=5, help="classes to show per image (default 5)")
    q = add("export", with_model=True, help="export to LiteRT (.tflite), SavedModel, ONNX or OpenVINO, with a parity "
                                            "check")
    q.add_argument("model", nargs="?", metavar="MODEL", help="the model to export")
    q.add_argument("--pooling", default=None, choices=["token", "avg", "avgmax", "max", "map"],
                   help="export the pooled features instead of the classifier (feature checkpoints have no head)")
    q.add_argument("--format", default="litert", choices=["litert", "saved_model", "onnx", "openvino"],
                   help="litert (.tflite, mobile), saved_model (TF Serving), onnx, openvino (a folder: fast CPU "
                        "inference with keras_vitnt.OpenVINOModel)")
    q.add_argument("--input-size", type=_size2, default=None, metavar="H,W",
                   help="the exported input size: a timm name is built for it (position table resampled); a saved "
                        "model that takes any size is exported at it (LiteRT default: its native size)")
    q.add_argument("--quantize", default=None,
                   choices=["none", "float16", "dynamic_int8", "int8", "int16x8", "mixed_int8"],
                   help="LiteRT quantization (README: Quantisation); int8, int16x8 and mixed_int8 are calibrated")
    q.add_argument("--calibration", default=None,
                   help="folder of images for calibration (int8, int16x8, mixed_int8; default: bundled photos)")
    q.add_argument("--report", action="store_true",
                   help="with a calibrated --quantize: where full int8 loses accuracy, per quantized op and per op "
                        "group, into the sidecar JSON and <out>.int8_report.png (slow: one conversion per group)")
    q.add_argument("--out", default=None, help="destination (default: inside the run for a run folder or .keras "
                                               "MODEL, e.g. <run>/model.tflite; else saved_models/<name>.tflite)")
    q.add_argument("--overwrite", action="store_true", help="replace an earlier keras_vitnt export there")
    q = add("train", with_model=True, help="fine-tune or train with the library's recipe (model.fit)")
    q.add_argument("model", nargs="?", metavar="MODEL",
                   help=f"timm name or <family>:<variant> (default {DEFAULT_MODEL}); --weights defaults to imagenet")
    q.add_argument("--data", default="digits", help="digits, tfds:NAME, or an image folder root/class/*.jpg")
    q.add_argument("--out", default="saved_models/run",
                   help="run folder: re-running resumes an interrupted run, shows a finished one, or continues it "
                        "when --epochs grew")
    q.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out (only its own files)")
    q.add_argument("--epochs", type=int, default=10)
    q.add_argument("--batch-size", type=int, default=32)
    q.add_argument("--lr", type=float, default=1e-4, help="peak learning rate after warmup")
    q.add_argument("--weight-decay", type=float, default=0.05)
    q.add_argument("--warmup-epochs", type=float, default=1.0)
    q.add_argument("--label-smoothing", type=float, default=0.1)
    q.add_argument("--layer-decay", type=float, default=None, help="layer-wise lr decay, e.g. 0.75")
    q.add_argument("--drop-path-rate", type=float, default=0.1)
    q.add_argument("--image-size", type=int, default=None, help="default: the model's input size")
    q.add_argument("--augment", default="light", choices=["none", "light", "randaugment"])
    q.add_argument("--no-flip", action="store_true", help="no horizontal flips (digits, text)")
    q.add_argument("--mixup", type=float, default=0.0, help="MixUp alpha (0: off)")
    q.add_argument("--cutmix", type=float, default=0.0, help="CutMix factor (0: off)")
    q.add_argument("--mixed-precision", default="none",
                   choices=["none", "auto", "mixed_float16", "mixed_bfloat16"])
    q.add_argument("--strategy", default="auto",
                   help="auto (every device), none; TensorFlow: mirrored, tpu, multiworker (TF_CONFIG); JAX: "
                        "data_parallel, model_parallel[:N] (N devices per model copy). Checked against the backend")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--overrides", default=None, help='architecture overrides as JSON, e.g. \'{"depth": 4}\'')
    q = add("visualize", with_model=True,
            help="attention rollout, attention heads, TNT inner maps or features as a PNG")
    q.add_argument("model", nargs="?", metavar="MODEL", help=model_help)
    q.add_argument("inputs", nargs="*", metavar="IMAGE", help="the image")
    q.add_argument("--kind", default="rollout", choices=["rollout", "attention", "tnt-inner", "features", "pca"],
                   help="pca: the first 3 principal components of the patch features as RGB, at the model's size "
                        "and twice it (a timm name is built for any size)")
    q.add_argument("--block", type=int, default=-1, help="block for attention / tnt-inner / features")
    q.add_argument("--out", default="attention.png", help="PNG to write (default attention.png)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    q = add("demo", help="offline demo: train a ViT and a TNT on digits, export to LiteRT")
    q.add_argument("--out", default="saved_models/demo")
    q.add_argument("--epochs", type=int, default=None, help="for both models (default: 40 ViT, 45 TNT)")
    q.add_argument("--weights", default="none", help="none (from scratch) or imagenet (fine-tune TNT-S)")
    q.add_argument("--overwrite", action="store_true", help="replace an earlier demo run in --out")
    q = sub.add_parser("benchmark", add_help=False,  # its own parser takes every option
                       help="speed, memory and bf16 accuracy next to timm (keras-vitnt benchmark --help)")
    q.add_argument("options", nargs=argparse.REMAINDER)
    q.set_defaults(func=cmd_benchmark)
    return p


def cmd_benchmark(args):
    from keras_vitnt.benchmark import main as benchmark_main

    return benchmark_main(args.options)


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    argv = sys.argv[1:] if argv is None else list(argv)
    lead = [a for a in argv[:2] if a in ("-v", "--verbose")]
    if argv[len(lead):len(lead) + 1] == ["benchmark"]:  # its own parser takes every option, --help and -v included
        from keras_vitnt.benchmark import main as benchmark_main

        return benchmark_main(argv[len(lead) + 1:] + lead)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from keras_vitnt.exporter import ExportParityError
    from keras_vitnt.weights import CheckpointMismatchError, WeightsUnavailableError

    try:
        return args.func(args)
    except (ValueError, FileExistsError, FileNotFoundError, WeightsUnavailableError, CheckpointMismatchError,
            ExportParityError, ImportError, OSError) as e:
        # user errors: the message says what to do; the traceback (with its causes) only with -v
        if args.verbose:
            traceback.print_exc()
        print(f"keras-vitnt {args.command}: error: {e}", file=sys.stderr)
        if not args.verbose:
            print("(run with -v for the full traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
