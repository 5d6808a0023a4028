"""The fine-tuning recipe behind `keras-vitnt train`, the demo and the notebook: plain
`model.fit` with the DeiT-style choices, all from Keras core.

- AdamW without weight decay on 1-D weights (norms, biases, LayerScale), tokens and position
  embeddings, as timm's; linear warmup then cosine decay; optional layer-wise learning-rate decay
  (timm's layer ids, the weight decay scaled with the learning rate); label smoothing.
- drop_path (stochastic depth); augmentation: random resized crop (+ flip for natural
  images), optionally RandAugment, MixUp / CutMix (Keras core layers), in `tf.data`
  pipelines with prefetch.
- Mixed precision (with `auto`: `mixed_float16` on GPU, `mixed_bfloat16` on TPU and on CPUs with
  bfloat16 instructions, float32 on other CPUs); the
  models keep tokens, position embeddings and the head's output in float32 correctly.
- Distribution: on TensorFlow `tf.distribute`'s MirroredStrategy (several GPUs), TPUStrategy
  (Colab TPU) or MultiWorkerMirroredStrategy (several machines, from TF_CONFIG); on JAX
  Keras's distribution API, DataParallel or ModelParallel (LAYOUT_RULES: Megatron-style
  sharding of the attention and MLP kernels).
- Checkpoint of the best model, `BackupAndRestore` (a killed run resumes where it
  stopped), CSV + TensorBoard logs, a training-curve PNG and a summary JSON in `out`.
"""

import contextlib
import dataclasses
import json
import logging
import os
import shutil

from keras_vitnt.cpu import BF16_FLAGS, native_bf16
from keras_vitnt.io_utils import remove, save_model, write_json, write_text
from keras_vitnt.optimizers import AdamW, LayerDecayAdamW, layer_id  # noqa: F401  (layer_id: public here too)

log = logging.getLogger("keras_vitnt")

# no weight decay (as timm: every weight of at most one dimension, and its models' `no_weight_decay()`):
# variable names searched in `variable.name`; biases, norms and LayerScale are also 1-D
NO_DECAY = ["bias", "gamma", "beta", "cls_token", "reg_token", "dist_token", "pos_embed", "pixel_pos"]


@dataclasses.dataclass
class TrainConfig:
    """Everything a run needs; the CLI flags map one to one."""

    model: str = "tnt_s_patch16_224"
    weights: str = "imagenet"  # "imagenet", a tag, a checkpoint file, or "none"
    data: str = "digits"  # "digits", "tfds:NAME", or an image folder root/class/*.jpg
    out: str = "saved_models/run"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4  # peak learning rate, reached after the warmup
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    layer_decay: float = None  # e.g. 0.75: lr * decay^(depth + 1 - layer id)
    drop_path_rate: float = 0.1
    image_size: int = None  # default: the model's input size
    augment: str = "light"  # "none", "light" (random resized crop + flip), "randaugment"
    flip: bool = True
    crop_scale: float = 0.35  # random resized crop: smallest fraction of the image area kept
    mixup: float = 0.0  # alpha; 0 disables
    cutmix: float = 0.0
    mixed_precision: str = "none"  # "none", "auto", "mixed_float16", "mixed_bfloat16"
    strategy: object = "auto"  # a name of STRATEGIES[backend], a tf.distribute.Strategy or a keras.distribution one
    val_fraction: float = 0.1
    seed: int = 0
    jit_compile: bool = True
    overrides: dict = dataclasses.field(default_factory=dict)  # timm-named architecture overrides
    mean: tuple = None  # normalisation inside the model (RGB 0..1); default: the weights' (see ViT's docstring)
    std: tuple = None


# --- data ---------------------------------------------------------------------------


def load_data(spec, image_size, val_fraction=0.1, seed=0):
    """-> (train, val, class_names): unbatched tf.data datasets of (float32 RGB 0..255
    image at image_size, int label)."""
    import tensorflow as tf

    if spec == "digits":
        from keras_vitnt.data.digits import CLASS_NAMES, load_digits

        (x_tr, y_tr), (x_te, y_te) = load_digits(size=image_size, seed=seed)
        return (tf.data.Dataset.from_tensor_slices((x_tr, y_tr)), tf.data.Dataset.from_tensor_slices((x_te, y_te)),
                CLASS_NAMES)
    if spec.startswith("tfds:"):
        try:
            import tensorflow_datasets as tfds
        except ImportError as e:
            raise ImportError(f"data={spec!r} needs tensorflow-datasets: pip install 'keras_vitnt[datasets]'") from e
        name = spec[len("tfds:"):]
        builder = tfds.builder(name)
        splits = builder.info.splits
        pct = int(round(100 * (1 - val_fraction)))
        split = ["train", "validation"] if "validation" in splits else [f"train[:{pct}%]", f"train[{pct}%:]"]
        train, val = tfds.load(name, split=split, as_supervised=True, shuffle_files=True)
        names = builder.info.features["label"].names
        resize = lambda x, y: (tf.image.resize(tf.cast(x, tf.float32), (image_size, image_size)), y)  # noqa: E731
        return train.map(resize, num_parallel_calls=tf.data.AUTOTUNE), val.map(resize), names
    if not os.path.isdir(spec):
        raise FileNotFoundError(
            f"data={spec!r}: not 'digits', 'tfds:NAME', nor an image folder (root/class_name/*.jpg)"
        )
    import keras

    train, val = keras.utils.image_dataset_from_directory(
        spec, validation_split=val_fraction, subset="both", seed=seed, image_size=(image_size, image_size),
        batch_size=None, interpolation="bicubic", crop_to_aspect_ratio=True,
    )
    return train, val, list(train.class_names)


def random_resized_crop(image, size, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3), seed=None):
    """timm's RandomResizedCrop for one image (Inception-style box sampling)."""
    import tensorflow as tf

    shape = tf.shape(image)
    begin, crop, _ = tf.image.sample_distorted_bounding_box(
        shape, bounding_boxes=tf.zeros((1, 0, 4)), min_object_covered=0.0, aspect_ratio_range=ratio,
        area_range=scale, max_attempts=10, use_image_if_no_bounding_boxes=True,
    )
    channels = image.shape[-1]
    image = tf.slice(image, begin, crop)
    # the dynamic slice loses the static channel count, which RandAugment checks
    return tf.ensure_shape(tf.image.resize(image, (size, size), method="bicubic"), (size, size, channels))


def pipelines(train, val, num_classes, cfg, image_size):
    """Batched, augmented, prefetched (train, val) datasets with one-hot labels."""
    import keras
    import tensorflow as tf

    auto = tf.data.AUTOTUNE

    def one_hot(x, y):
        return x, tf.one_hot(tf.cast(y, tf.int32), num_classes)

    def augment_one(x, y):
        if cfg.augment != "none":
            x = random_resized_crop(x, image_size, scale=(cfg.crop_scale, 1.0))
            if cfg.flip:
                x = tf.image.random_flip_left_right(x)
        return tf.clip_by_value(x, 0.0, 255.0), y

    train = train.shuffle(4096, seed=cfg.seed, reshuffle_each_iteration=True).map(augment_one, num_parallel_calls=auto)
    train = train.batch(cfg.batch_size, drop_remainder=True).map(one_hot, num_parallel_calls=auto)
    batch_layers = []
    # the input pipeline stays float32 under a mixed-precision policy (labels and pixels alike)
    if cfg.augment == "randaugment":
        batch_layers.append(("images", keras.layers.RandAugment(value_range=(0, 255), seed=cfg.seed,
                                                                dtype="float32")))
    if cfg.mixup > 0:
        batch_layers.append(("both", keras.layers.MixUp(alpha=cfg.mixup, seed=cfg.seed, dtype="float32")))
    if cfg.cutmix > 0:
        batch_layers.append(("both", keras.layers.CutMix(factor=cfg.cutmix, seed=cfg.seed, dtype="float32")))
    if batch_layers:

        def batch_aug(x, y):
            for kind, layer in batch_layers:
                if kind == "images":
                    x = layer(x, training=True)
                else:
                    out = layer({"images": x, "labels": y}, training=True)
                    x, y = out["images"], out["labels"]
            return x, y

        train = train.map(batch_aug, num_parallel_calls=auto)
    if len(val.element_spec) == 3:  # padded for JAX's distributions: (x, y, sample weight 0 on the padding)
        val = val.batch(cfg.batch_size).map(lambda x, y, w: (*one_hot(x, y), w), num_parallel_calls=auto)
    else:
        val = val.batch(cfg.batch_size).map(one_hot, num_parallel_calls=auto)
    return train.prefetch(auto), val.prefetch(auto)


# --- optimisation -------------------------------------------------------------------


def make_optimizer(cfg, steps_per_epoch, depth):
    import keras

    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(min(total - 1, round(cfg.warmup_epochs * steps_per_epoch)))
    peak = cfg.lr
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else peak, decay_steps=max(1, total - warmup),
        alpha=cfg.min_lr / peak if peak > 0 else 0.0, warmup_target=peak if warmup else None,
        warmup_steps=warmup,
    )
    decay = {"learning_rate": schedule, "weight_decay": cfg.weight_decay, "weight_decay_exclude_names": NO_DECAY,
             "weight_decay_exclude_1d": True}
    if cfg.layer_decay:
        return LayerDecayAdamW(layer_decay=cfg.layer_decay, depth=depth, **decay)
    return AdamW(**decay)


# the recipe's --strategy per Keras backend; "auto": every device this process sees
STRATEGIES = {
    "tensorflow": ("auto", "none", "mirrored", "tpu", "multiworker"),
    "jax": ("auto", "none", "data_parallel", "model_parallel"),  # model_parallel[:N]: N devices per model copy
    "torch": ("auto", "none"),
}
# ModelParallel on JAX (regexes on variable paths -> sharding of each axis): attention's qkv (TNT: qk, v)
# and fc1 split by output column, attention's proj and fc2 by input row (Megatron-LM's layout: one
# all-reduce per attention and per MLP); norms, embeddings and the head are replicated
LAYOUT_RULES = (
    (r".*/(qkv|qk|v|fc1)/kernel", (None, "model")),
    (r".*/(qkv|qk|v|fc1)/bias", ("model",)),
    (r".*/attn\w*/proj/kernel", ("model", None)),
    (r".*/fc2/kernel", ("model", None)),
)


def get_strategy(name):
    """The distribution `name` (a STRATEGIES entry of this Keras backend) asks for: a
    tf.distribute.Strategy on TensorFlow, a keras.distribution.Distribution (or None: one
    device) on JAX, None on PyTorch. A Strategy or Distribution instance is used as is.
    On TensorFlow call it before any other TensorFlow op (MultiWorkerMirroredStrategy must be)."""
    import keras

    backend = keras.backend.backend()
    if not isinstance(name, str):
        if backend == "tensorflow":
            import tensorflow as tf

            kind = tf.distribute.Strategy
        else:
            kind = keras.distribution.Distribution if backend == "jax" else ()
        if not isinstance(name, kind):
            raise ValueError(f"strategy={name!r}: on the {backend} backend give one of {STRATEGIES.get(backend)}"
                             + (f" or a {kind.__module__.split('.')[0]} {kind.__name__}" if kind else ""))
        return name
    if name not in STRATEGIES.get(backend, ()) and not (backend == "jax" and name.startswith("model_parallel:")):
        raise ValueError(f"strategy {name!r} is not one for the {backend} backend: choose one of "
                         f"{STRATEGIES.get(backend)} (set KERAS_BACKEND for the others: "
                         + "; ".join(f"{b}: {', '.join(n)}" for b, n in STRATEGIES.items() if b != backend) + ")")
    if backend == "jax":
        return _jax_distribution(name)
    if backend != "tensorflow":
        return None
    return _tf_strategy(name)


def _tf_strategy(name):
    import tensorflow as tf

    if name == "none":
        return tf.distribute.get_strategy()
    if name == "multiworker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError("--strategy multiworker reads the cluster from the TF_CONFIG environment variable, which "
                             "is not set: see the README's 'Several machines' for one per worker")
        return tf.distribute.MultiWorkerMirroredStrategy()
    tpu_hint = any(os.environ.get(k) for k in ("TPU_NAME", "COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE")) or any(
        n.startswith(("accel", "vfio")) for n in (os.listdir("/dev") if os.path.isdir("/dev") else []))
    # "auto" only probes for a TPU where one is announced: the probe can wait on a metadata server
    if name == "tpu" or (name == "auto" and tpu_hint):
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            return tf.distribute.TPUStrategy(resolver)
        except (ValueError, RuntimeError, tf.errors.NotFoundError) as e:
            if name == "tpu":
                raise RuntimeError(f"--strategy tpu: no TPU found ({e})") from e
    if name == "mirrored" or (name == "auto" and len(tf.config.list_logical_devices("GPU")) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _jax_distribution(name):
    """keras.distribution's DataParallel or ModelParallel over this process's devices (None: one device)."""
    import keras

    devices = keras.distribution.list_devices()
    if name == "none" or (name == "auto" and len(devices) == 1):
        return None
    if name in ("auto", "data_parallel"):
        return keras.distribution.DataParallel(devices=devices)
    count = name.split(":", 1)[1] if ":" in name else str(len(devices))
    model = int(count) if count.isdigit() else 0
    if model < 1 or len(devices) % model:
        raise ValueError(f"strategy {name!r}: the devices per model copy must divide the {len(devices)} devices")
    mesh = keras.distribution.DeviceMesh((len(devices) // model, model), ["batch", "model"], devices)
    return keras.distribution.ModelParallel(layout_map=layout_map(mesh), batch_dim_name="batch")


def layout_map(mesh):
    """A keras.distribution.LayoutMap of LAYOUT_RULES on `mesh` (axes "batch", "model"): for
    `keras.distribution.ModelParallel` with any keras_vitnt model."""
    import keras

    layouts = keras.distribution.LayoutMap(mesh)
    for pattern, axes in LAYOUT_RULES:
        layouts[pattern] = axes
    return layouts


def _scope(strategy):
    """The block in which the model is built, compiled and trained."""
    return contextlib.nullcontext() if strategy is None else strategy.scope()


def mixed_precision_policy(name, strategy=None):
    """The Keras policy for `mixed_precision=name` (None: float32). "auto": float16 on a GPU, bfloat16 on a
    TPU and on a CPU with bfloat16 instructions (AVX512_BF16, AMX), float32 on a CPU without them, where
    TensorFlow and PyTorch would only emulate bfloat16 (slower than float32)."""
    if name != "auto":
        return None if name == "none" else name
    device = _accelerator(strategy)
    if device == "gpu":
        return "mixed_float16"
    if device == "tpu" or native_bf16():
        return "mixed_bfloat16"
    log.info("--mixed-precision auto: float32, since this CPU has none of %s (bfloat16 would be emulated, "
             "and slower)", ", ".join(BF16_FLAGS))
    return None


def _accelerator(strategy=None):
    """"gpu", "tpu" or None (CPU only), as the Keras backend sees the devices (and `strategy`, a TPUStrategy)."""
    if "TPU" in type(strategy).__name__:
        return "tpu"
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        platforms = {d.platform for d in jax.devices()}
    elif backend == "torch":
        import torch

        platforms = {"gpu"} if torch.cuda.is_available() else set()
    else:
        import tensorflow as tf

        platforms = {d.device_type.lower() for d in tf.config.list_physical_devices()}
    return next((p for p in ("gpu", "tpu") if p in platforms), None)


# --- the run -------------------------------------------------------------------------


@dataclasses.dataclass
class TrainResult:
    model: object
    history: dict
    val_accuracy: float
    out: str
    epochs_run: int
    class_names: list
    status: str = "trained"  # "trained", "resumed", "continued", or "finished" (nothing to do: loaded as is)


def build_model(cfg, num_classes, image_size):
    """The model `cfg.model` names (a timm name or "<family>:<variant>", see
    registry.MODEL_NAME_RULE) at `image_size`, with a `num_classes` head."""
    from keras_vitnt.models import create_model

    return create_model(cfg.model, weights=cfg.weights, input_shape=(image_size, image_size, 3), classes=num_classes,
                        drop_path_rate=cfg.drop_path_rate, mean=cfg.mean, std=cfg.std, **cfg.overrides)


def default_image_size(cfg):
    """`cfg.image_size`, else the input size of the weights (of the model's default weights for a file)."""
    from keras_vitnt.models.registry import parse_model_name
    from keras_vitnt.models.resolve import resolve_weights

    if cfg.image_size:
        return cfg.image_size
    spec = parse_model_name(cfg.model)
    if spec.info is None:
        raise ValueError(f"model {cfg.model!r}: pass image_size (e.g. 32)")
    weights = spec.tag.tag if spec.tag and cfg.weights == "imagenet" else cfg.weights
    return resolve_weights(weights, spec.config, spec.info).input_size


# --- the run folder ----------------------------------------------------------------

RUN_MARKER = "run.json"  # written first: marks a folder as a keras_vitnt run (and holds its config)
# everything a run writes; --overwrite removes exactly these and nothing else
RUN_FILES = (RUN_MARKER, "summary.json", "model.keras", "best.keras", "log.csv", "curves.png", "backup",
             "tensorboard")
# settings that may differ between a run and its resumption or continuation
EXECUTION_FIELDS = ("epochs", "out", "strategy", "jit_compile")


def _json_config(cfg):
    config = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()}
    return {k: (v if isinstance(v, (str, int, float, bool, dict, list, type(None))) else repr(v))
            for k, v in config.items()}


SUMMARY_KEYS = ("config", "epochs_run", "classes", "val_accuracy")


def _is_legacy_run(out):
    """A run written before run.json existed: its summary.json has a run's keys, or its backup
    shows an interrupted run (BackupAndRestore's metadata beside a log)."""
    try:
        with open(os.path.join(out, "summary.json")) as f:
            summary = json.load(f)
        if isinstance(summary, dict) and all(k in summary for k in SUMMARY_KEYS):
            return True
    except (OSError, ValueError):
        pass
    return (os.path.isfile(os.path.join(out, "backup", "training_metadata.json"))
            and os.path.isfile(os.path.join(out, "log.csv")))


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is unreadable ({e}); move the run folder away or pass --overwrite") from e


def run_state(cfg, overwrite=False):
    """What `train` does with `cfg.out`: "new", "resume" (interrupted), "continue" (finished, more
    epochs asked) or "finished". Refuses (FileExistsError) a folder that is not a run, and a run
    made with other settings unless `overwrite`; with `overwrite`, removes only the run's own files."""
    out = cfg.out
    if not os.path.exists(out) or (os.path.isdir(out) and not os.listdir(out)):
        return "new"
    if not os.path.isdir(out):
        raise FileExistsError(f"--out {out} is a file, not a run folder; choose another --out")
    marker = os.path.join(out, RUN_MARKER)
    legacy = os.path.join(out, "summary.json")  # runs written before run.json existed
    if not os.path.isfile(marker) and not _is_legacy_run(out):
        raise FileExistsError(
            f"--out {out} exists and is not a keras_vitnt run folder (it has no {RUN_MARKER}); nothing in it was "
            "touched. Choose a new or empty folder for --out."
        )
    if overwrite:
        removed = [name for name in RUN_FILES if os.path.lexists(os.path.join(out, name))]
        for name in removed:
            remove(os.path.join(out, name))
        log.info("--overwrite: removed the earlier run's %s from %s", ", ".join(removed), out)
        return "new"
    stored = _read_json(marker) if os.path.isfile(marker) else (
        _read_json(legacy).get("config", {}) if os.path.isfile(legacy) else {})
    current = _json_config(cfg)
    differ = sorted(k for k in current if k not in EXECUTION_FIELDS and k in stored and stored[k] != current[k])
    if differ:
        changes = ", ".join(f"{k}: {stored[k]!r} -> {current[k]!r}" for k in differ)
        raise FileExistsError(
            f"--out {out} holds a run with other settings ({changes}). Pass --overwrite to replace that run, "
            "or choose another --out."
        )
    summary = os.path.join(out, "summary.json")
    if os.path.isfile(summary) and not os.path.isdir(os.path.join(out, "backup")):
        epochs_run = _read_json(summary).get("epochs_run")
        if not isinstance(epochs_run, int):
            raise ValueError(f"{summary} has no epochs_run: the run is damaged; pass --overwrite to train it again")
        return "finished" if epochs_run >= cfg.epochs else "continue"
    return "resume"


def _resume_log(out):
    """Drop log rows of epochs the backup does not hold (they are trained again): no epoch twice."""
    import csv

    path, meta = os.path.join(out, "log.csv"), os.path.join(out, "backup", "training_metadata.json")
    if not os.path.isfile(path):
        return
    next_epoch = _read_json(meta)["epoch"] if os.path.isfile(meta) else 0
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    col = rows[0].index("epoch")
    kept = [rows[0]] + [r for r in rows[1:] if r and int(float(r[col])) < next_epoch]
    if len(kept) != len(rows):
        import io

        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(kept)
        write_text(path, buf.getvalue())


def _finished_result(cfg):
    import keras

    summary = _read_json(os.path.join(cfg.out, "summary.json"))
    model = keras.models.load_model(os.path.join(cfg.out, "model.keras"))
    return TrainResult(model, read_log(os.path.join(cfg.out, "log.csv")), summary["val_accuracy"], cfg.out,
                       summary["epochs_run"], list(summary["classes"]), "finished")


def _copy_optimizer_state(model, old_optimizer, cfg):
    """The finished run's optimizer state (moments, step count) into the freshly compiled
    `model`'s optimizer, whose learning-rate schedule spans the new, larger number of epochs."""
    model.optimizer.build(model.trainable_variables)
    new_vars, old_vars = model.optimizer.variables, old_optimizer.variables
    if [tuple(v.shape) for v in new_vars] != [tuple(v.shape) for v in old_vars]:
        raise ValueError(f"{cfg.out}/model.keras: its optimizer state does not fit this run; pass --overwrite")
    for new, value in zip(new_vars, old_vars):
        new.assign(value)


def best_checkpoint(path, best=None):
    """A callback saving `path` atomically whenever val_accuracy improves (Keras's
    ModelCheckpoint writes in place), starting from the best value already in the run's log."""
    import keras

    class BestCheckpoint(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best = -float("inf") if best is None else best

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get("val_accuracy")
            if value is not None and value > self.best:
                self.best = float(value)
                save_model(self.model, path)

    return BestCheckpoint()


def memory_release():
    """A callback returning the C heap's free pages to the system (`keras_vitnt.cpu.release_free_memory`)
    after the first training step, which compiles (XLA's compiler frees hundreds of MB then, which glibc
    would otherwise keep for the rest of the run), and after every epoch (validation compiled and ran)."""
    import keras

    from keras_vitnt.cpu import release_free_memory

    class MemoryRelease(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.first = True

        def on_train_batch_end(self, batch, logs=None):
            if self.first:
                self.first = False
                release_free_memory()

        def on_epoch_end(self, epoch, logs=None):
            release_free_memory()

    return MemoryRelease()


def train(cfg, extra_callbacks=(), verbose=1, overwrite=False):
    """Run the recipe; returns a TrainResult.

    The run folder `cfg.out` is never lost by a re-run: a crashed run resumes from its last
    completed epoch (BackupAndRestore); a finished run is loaded and returned as it is
    (`status="finished"`), or continued to `cfg.epochs` when that grew; a run with other
    settings, or a folder that is not a run, is refused. `overwrite=True` replaces an earlier
    run (removing only the files a run writes).

    With `strategy="multiworker"` (or a MultiWorkerMirroredStrategy) every worker runs this with
    the same `cfg`; the chief writes `cfg.out`, worker i (not the chief) its own run beside it,
    `<out>.worker<i>`, so that a restarted, re-run or continued worker does what the chief does."""
    import keras

    worker = secondary_worker(cfg)
    if worker is not None:
        cfg = dataclasses.replace(cfg, out=_worker_out(cfg.out, worker))
    state = run_state(cfg, overwrite)
    if state == "finished":
        log.info("%s: finished earlier; loaded as it is (pass more epochs to continue it)", cfg.out)
        return _finished_result(cfg)
    strategy = get_strategy(cfg.strategy)  # first: MultiWorkerMirroredStrategy wants it before any other op
    groups = _data_parallel_groups(strategy)
    if cfg.batch_size % groups:  # JAX's distributions split each batch over the mesh's batch axis
        raise ValueError(f"--batch-size {cfg.batch_size} does not split over the {groups} data-parallel device groups "
                         f"of strategy {cfg.strategy!r}: give a multiple of {groups}")
    keras.utils.set_random_seed(cfg.seed)
    image_size = default_image_size(cfg)
    _prepare_folder(cfg, state)
    with _global_dtype_policy(cfg.mixed_precision, strategy) as policy, _scope(strategy):
        data = _datasets(cfg, image_size, _data_parallel_groups(strategy))
        model, initial_epoch = _compiled_model(cfg, state, data, image_size, strategy)
        callbacks = _callbacks(cfg, extra_callbacks)
        log.info("training %s on %s: %d classes, %d steps/epoch, epochs %d..%d, %s", model.name, cfg.data,
                 len(data.class_names), data.steps, initial_epoch, cfg.epochs, policy or "float32")
        with _distributed_fit(model, data, strategy):
            # shuffle=False: the tf.data pipeline shuffles itself (`pipelines`); with fit's default, Keras
            # warned on every run that it ignores `shuffle=True` for a tf.data.Dataset
            model.fit(data.train, validation_data=data.val, epochs=cfg.epochs, initial_epoch=initial_epoch,
                      callbacks=callbacks, verbose=verbose, shuffle=False)
            result = _finish(cfg, state, model, data, image_size)
    return result


def _data_parallel_groups(strategy):
    """How many parts a JAX distribution splits each batch into (its mesh's batch axis); 1 otherwise."""
    mesh = getattr(strategy, "device_mesh", None)
    return 1 if mesh is None else mesh.shape[list(mesh.axis_names).index(strategy.batch_dim_name)]


def secondary_worker(cfg):
    """The task index of a multi-worker run's worker that is not the chief (TF_CONFIG's "chief",
    else worker 0), or None."""
    if cfg.strategy != "multiworker" and type(cfg.strategy).__name__ != "MultiWorkerMirroredStrategy":
        return None
    spec = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task, cluster = spec.get("task", {}), spec.get("cluster", {})
    if task.get("type") == "chief" or (task.get("type") == "worker" and task.get("index", 0) == 0
                                       and "chief" not in cluster):
        return None
    return int(task.get("index", 0))


def _worker_out(out, index):
    """Where worker `index` (not the chief) keeps its run: beside the chief's `out` (a folder of
    its own on a shared file system, never inside the chief's run)."""
    return os.path.normpath(out) + f".worker{index}"


def _padded(val, multiple):
    """(x, y) -> (x, y, 1.0), and (zeros, 0, 0.0) appended up to a multiple of `multiple` elements."""
    import tensorflow as tf

    count = int(val.cardinality())
    if count < 0:
        count = sum(1 for _ in val)
    weighted = val.map(lambda x, y: (x, y, tf.constant(1.0)))
    missing = -count % multiple
    if missing:
        x_spec, y_spec = val.element_spec
        zeros = (tf.zeros(x_spec.shape, x_spec.dtype), tf.zeros(y_spec.shape, y_spec.dtype), tf.constant(0.0))
        weighted = weighted.concatenate(tf.data.Dataset.from_tensors(zeros).repeat(missing))
    return weighted


@dataclasses.dataclass
class _Data:
    """A run's batched input pipelines."""

    train: object
    val: object
    class_names: list
    steps: int  # per epoch


def _prepare_folder(cfg, state):
    """Creates `cfg.out` and marks it as a run (run.json), or trims a resumed run's log."""
    os.makedirs(cfg.out, exist_ok=True)
    if not os.path.isfile(os.path.join(cfg.out, RUN_MARKER)):
        write_json(os.path.join(cfg.out, RUN_MARKER), _json_config(cfg))
    elif state == "resume":
        _resume_log(cfg.out)


@contextlib.contextmanager
def _global_dtype_policy(name, strategy=None):
    """Keras's global dtype policy set to the mixed-precision policy `name` asks for (yielded;
    None for float32) inside the block, and the previous one restored after it."""
    import keras

    policy = mixed_precision_policy(name, strategy)
    previous_policy = keras.config.dtype_policy()
    if policy:
        keras.mixed_precision.set_global_policy(policy)
    try:
        yield policy
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _datasets(cfg, image_size, groups=1):
    """`cfg.data` loaded and turned into the training and validation pipelines. With `groups` > 1
    (a JAX distribution), the validation set is padded to a multiple of `groups` with images of
    sample weight 0: every batch, the last one too, splits over the devices, and no image is dropped."""
    import keras

    if keras.backend.backend() != "tensorflow":  # TensorFlow reads the data only: the GPUs are JAX's or torch's
        import tensorflow as tf

        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # TensorFlow already started in this process: its devices stay as they are
            log.info("TensorFlow had started before the recipe: it may hold GPU memory beside %s",
                     keras.backend.backend())
    train_raw, val_raw, class_names = load_data(cfg.data, image_size, cfg.val_fraction, cfg.seed)
    if groups > 1:
        val_raw = _padded(val_raw, groups)
    train_ds, val_ds = pipelines(train_raw, val_raw, len(class_names), cfg, image_size)
    steps = int(train_ds.cardinality().numpy())
    if steps <= 0:
        steps = max(1, int(sum(1 for _ in train_raw) // cfg.batch_size))
    return _Data(train_ds, val_ds, class_names, steps)


def _compiled_model(cfg, state, data, image_size, strategy):
    """The model, compiled in the run's distribution strategy -> (model, initial epoch): a new one,
    or, to continue a finished run, that run's model with its optimizer state."""
    import keras

    with _scope(strategy):
        if state == "continue":
            # the finished model itself (its weights, normalisation and head): no download, no conversion
            model = keras.models.load_model(os.path.join(cfg.out, "model.keras"))
            old_optimizer = model.optimizer
            initial_epoch = int(_read_json(os.path.join(cfg.out, "summary.json"))["epochs_run"])
        else:
            model = build_model(cfg, len(data.class_names), image_size)
            initial_epoch = 0
        _compile(model, cfg, data.steps, strategy)
        if state == "continue":
            _copy_optimizer_state(model, old_optimizer, cfg)
    return model, initial_epoch


def _compile(model, cfg, steps_per_epoch, strategy):
    """The recipe's optimizer, loss and metric; call inside `strategy.scope()`."""
    import keras

    depth = sum(1 for layer in model.layers if layer.name.startswith("blocks_"))
    accuracy = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    # a JAX distribution's validation set is padded with images of weight 0 (see _datasets): the loss and
    # accuracy are then averaged over the weights, i.e. over the real images only
    padded = _data_parallel_groups(strategy) > 1
    model.compile(
        optimizer=make_optimizer(cfg, steps_per_epoch, depth),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing,
                                                  reduction="mean_with_sample_weight" if padded else "sum_over_batch_size"),
        metrics=None if padded else accuracy,
        weighted_metrics=accuracy if padded else None,
        jit_compile=_jit_compile(cfg, strategy),
    )


@contextlib.contextmanager
def _distributed_fit(model, data, strategy):
    """Mends Keras 3's TensorFlow trainer for the recipe's fit and evaluate under MirroredStrategy and
    MultiWorkerMirroredStrategy with more than one replica:
    1. fit draws a first batch to build the model symbolically (`_maybe_symbolic_build`): that
       advances the shuffle, so a distributed run saw other batches than a one-device run of the
       same global batch (measured: 0.26 against 0.16 validation accuracy after 2 digits epochs),
       and under MultiWorkerMirroredStrategy the batch's average across workers fails
       (keras-team/keras#20585). The model, optimizer, loss and metrics are built here from the
       dataset's element spec instead, in the strategy's scope, where fit then finds the strategy;
    2. under MultiWorkerMirroredStrategy the logs (scalars) are averaged across workers along axis 0,
       which a scalar lacks: they are averaged as scalars."""
    import tensorflow as tf

    if not isinstance(strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)) or \
            strategy.num_replicas_in_sync < 2:
        yield
        return
    from keras.src.backend.tensorflow import trainer as tf_trainer

    model._symbolic_build(data_batch=data.train.element_spec)
    model.optimizer.build(model.trainable_variables)
    own_strategy, model._distribute_strategy = model._distribute_strategy, None
    original = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            def mean(v):  # a PerReplica (several replicas per worker) has no shape: its parts do
                rank = strategy.experimental_local_results(v)[0].shape.rank
                return strategy.reduce("MEAN", v, axis=0 if rank else None)

            return tf.nest.map_structure(mean, values)
        return original(values, strategy, reduction)

    tf_trainer.reduce_per_replica = reduce_per_replica
    try:
        yield
    finally:
        tf_trainer.reduce_per_replica = original
        model._distribute_strategy = own_strategy


def _jit_compile(cfg, strategy):
    """XLA on TensorFlow (one device: per replica; TPUs compile on their own) and JAX. Not torch.compile on
    PyTorch: it recompiles Keras's train step again and again (the 2-epoch digits run: 155 s, 6 s without)."""
    import keras

    backend = keras.backend.backend()
    if not cfg.jit_compile or backend == "torch":
        return False
    if backend == "jax":
        return True
    import tensorflow as tf

    return strategy.num_replicas_in_sync == 1 and not isinstance(strategy, tf.distribute.TPUStrategy)


def _callbacks(cfg, extra_callbacks):
    """Backup, best checkpoint (from the best val_accuracy already logged), CSV log, the freed heap
    returned to the system, the caller's callbacks, and TensorBoard where it is installed."""
    import keras

    earlier = read_log(os.path.join(cfg.out, "log.csv")).get("val_accuracy")
    callbacks = [
        # the backup stays until summary.json is written, so a crash in between still resumes
        keras.callbacks.BackupAndRestore(os.path.join(cfg.out, "backup"), delete_checkpoint=False),
        best_checkpoint(os.path.join(cfg.out, "best.keras"), best=max(earlier) if earlier else None),
        keras.callbacks.CSVLogger(os.path.join(cfg.out, "log.csv"), append=True),
        memory_release(),
        *extra_callbacks,
    ]
    if _has_tensorboard():
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(cfg.out, "tensorboard"), write_graph=False))
    else:
        log.info("tensorboard is not installed: CSV log only (pip install tensorboard for TensorBoard logs)")
    return callbacks


def _finish(cfg, state, model, data, image_size):
    """Final evaluation; model.keras, curves.png and summary.json written, then the backup
    removed -> the TrainResult."""
    history = read_log(os.path.join(cfg.out, "log.csv"))
    val_accuracy = float(model.evaluate(data.val, verbose=0, return_dict=True)["accuracy"])
    save_model(model, os.path.join(cfg.out, "model.keras"))
    plot_curves(history, os.path.join(cfg.out, "curves.png"), title=f"{model.name} on {cfg.data}")
    summary = {"config": _json_config(cfg), "image_size": image_size, "classes": data.class_names,
               "val_accuracy": val_accuracy, "epochs_run": len(history.get("epoch", [])),
               "params": int(model.count_params())}
    write_json(os.path.join(cfg.out, "summary.json"), summary)
    _remove_backup(cfg.out)
    status = {"new": "trained", "resume": "resumed", "continue": "continued"}[state]
    return TrainResult(model, history, val_accuracy, cfg.out, summary["epochs_run"], list(data.class_names),
                       status)


def _remove_backup(out):
    """Removes the run's backup once summary.json is written; failing to only warns."""
    backup = os.path.join(out, "backup")
    try:
        shutil.rmtree(backup)
    except FileNotFoundError:
        pass
    except OSError as e:  # a leftover backup would make the next re-run resume instead of reporting "finished"
        log.warning("could not remove %s (%s); delete it by hand", backup, e)


def _has_tensorboard():
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def read_log(path):
    """The CSVLogger file -> {column: [values]} (all epochs, across resumed runs)."""
    import csv

    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if rows and "epoch" in rows[0]:  # one row per epoch, the last one written (logs of older versions repeat)
        rows = [r for _, r in sorted({int(float(r["epoch"])): r for r in rows}.items())]
    return {k: [float(r[k]) for r in rows if r.get(k) not in (None, "")] for k in (rows[0] if rows else {})}


def plot_curves(history, path, title=""):
    """Loss and accuracy per epoch (train and validation) as a PNG."""
    from keras_vitnt.visualize import pyplot, save_figure

    if not history:
        return None
    epochs = [int(e) + 1 for e in history.get("epoch", range(len(history.get("loss", []))))]
    fig, axes = pyplot().subplots(1, 2, figsize=(9, 3.4))
    for ax, key in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + key in history:
                ax.plot(epochs, history[prefix + key], style, label=(prefix or "train_") + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return save_figure(fig, path)
