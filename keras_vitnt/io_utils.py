"""Atomic writes: every file the package saves appears whole or not at all.

Each writer goes to a uniquely named temporary sibling of the destination (same folder,
so the final `os.replace` is an atomic rename on one file system) and renames it into
place; on any failure the temporary file is removed and the destination is untouched. The
temporary names are random (unique across processes and threads), not the pid.
"""

import contextlib
import json
import os
import shutil
import uuid

SIDECAR = "keras_vitnt.json"  # an export's metadata: inside a directory export; `<file>.json` beside a file


@contextlib.contextmanager
def atomic_path(path, suffix="", replace=True):
    """Yields a temporary path beside `path`; renames it onto `path` when the block ends
    without an exception, deletes it otherwise. `suffix` keeps writers that check the
    extension (`model.save` wants `.keras`) happy. `replace=False`: links it to `path` instead,
    which raises FileExistsError if `path` exists by then (a rename would replace it)."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    # a fresh random name, not a created file: the writer creates it with the usual permissions
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp{suffix}")
    try:
        yield tmp
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            finally:
                os.remove(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_text(path, text, replace=True):
    with atomic_path(path, replace=replace) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the file
    return path


def write_json(path, obj):
    return write_text(path, json.dumps(obj, indent=1) + "\n")


def save_model(model, path):
    """`model.save(path)` for a `.keras` file, atomically, its optimizer named by its public class."""
    with atomic_path(path, suffix=".keras") as tmp, _public_optimizer_record(model):
        model.save(tmp)
    return path


@contextlib.contextmanager
def _public_optimizer_record(model):
    """On the PyTorch backend `keras.optimizers.AdamW(...)` makes Keras's PyTorch subclass, and
    `model.save` records the optimizer under that module (keras.src.backend.torch.optimizers.torch_adamw):
    loading the file on TensorFlow or JAX then imports torch, and in a process that loaded TensorFlow
    first, triton's native library (imported by torch) crashes it. Within this block the model's
    compile config names the public class (keras.optimizers.AdamW), also inside a LossScaleOptimizer's
    record, which each backend loads as its own class, the optimizer's state included."""
    if getattr(model, "optimizer", None) is None:
        yield
        return
    import keras

    def public(record):
        if isinstance(record, list):
            return [public(item) for item in record]
        if not isinstance(record, dict):
            return record
        out = {key: public(value) for key, value in record.items()}
        module, name = record.get("module"), record.get("class_name")
        if (isinstance(module, str) and module.startswith("keras.src.backend.") and ".optimizers" in module
                and isinstance(name, str) and isinstance(getattr(keras.optimizers, name, None), type)):
            out["module"] = "keras.optimizers"
        return out

    def get_compile_config():
        config = type(model).get_compile_config(model)
        if isinstance(config, dict) and "optimizer" in config:
            config = {**config, "optimizer": public(config["optimizer"])}
        return config

    object.__setattr__(model, "get_compile_config", get_compile_config)  # this instance only, past Keras's tracking
    try:
        yield
    finally:
        object.__delattr__(model, "get_compile_config")


def remove(path):
    """Delete a file, link or folder tree that the package wrote (callers decide what is theirs)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)
