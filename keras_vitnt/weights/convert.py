"""Loading timm checkpoints into keras_vitnt models: one conversion for every family.

Reads checkpoint files (.safetensors, .pth/.bin, Google .npz), applies the family's
renames (timm's checkpoint filters), and loads: `timm_map` says which timm tensor is
which Keras weight and in which layout; here they are matched and checked (every tensor
must be consumed and every Keras weight assigned, the classifier head by timm's rules)
and only then assigned, so a failed load changes nothing.
"""

import errno
import logging
import os
import pickle
import re
import zipfile
import zlib
from typing import NamedTuple

import keras
import numpy as np

from keras_vitnt.weights.errors import CheckpointMismatchError
from keras_vitnt.weights.npz import is_google_npz, npz_to_timm
from keras_vitnt.weights.resample import resample_abs_pos_embed
from keras_vitnt.weights.timm_map import change_layout, model_timm_params

log = logging.getLogger("keras_vitnt")

KERAS_WEIGHTS = ".weights.h5"  # a Keras weights file, loaded as it is (it fits one model structure only)

HEAD_PREFIXES = ("head.", "head_dist.")


def fit_grid(array, layout, key="", source="", interpolation="bicubic"):
    """A ("pos_embed", grid, prefix) layout resamples a 1-D position table from the
    checkpoint's square grid to `grid` exactly as timm does; other layouts pass."""
    if not isinstance(layout, tuple) or array.ndim != 3:
        return array
    _, grid, prefix = layout
    old_n = array.shape[1] - prefix
    if old_n == grid[0] * grid[1]:
        return array
    try:
        out = resample_abs_pos_embed(array, grid, num_prefix_tokens=prefix, interpolation=interpolation)
    except ValueError as e:
        raise CheckpointMismatchError(f"{source}: cannot resample {key} {array.shape}: {e}") from e
    side = int(round(old_n**0.5))
    log.info("%s: resampled %s from a %dx%d to a %dx%d patch grid", source, key, side, side, *grid)
    return out


# --- reading files -----------------------------------------------------------------


def read_state_dict(path):
    """A checkpoint file -> {name: numpy array}. `.safetensors` needs no torch; `.pth`/`.bin`
    import torch lazily and load with `weights_only=True` (no pickled code runs)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            errno.ENOENT, f"checkpoint file {path!r} does not exist (or is not a file): check the path"
        )
    lower = path.lower()
    if lower.endswith(".safetensors"):
        return _read_safetensors(path)
    if lower.endswith((".pth", ".bin", ".pt", ".pth.tar")):
        return _read_torch(path)
    if lower.endswith(".npz"):
        return _read_npz(path)
    raise ValueError(
        f"Unsupported checkpoint format {path!r}: expected .safetensors, .pth/.bin (torch state dict), .npz "
        "(Google ViT) or .weights.h5 (Keras)."
    )


def _unreadable(path, e):
    """An OSError of the file system itself (permissions, I/O error) as an OSError with its errno, naming the file;
    None for the errors that mean damaged content."""
    if isinstance(e, OSError) and e.errno not in (None, errno.EINVAL):  # EINVAL: torch's zip reader on a cut file
        return OSError(e.errno, f"Cannot read the checkpoint file {path!r} ({e}): check its permissions and the disk.")
    return None


def _corrupt(path, e, what):
    return ValueError(
        f"{path!r} is not a readable {what}: the file is truncated or corrupt ({type(e).__name__}: {_gist(e)}): "
        "delete it and download it again (or check that it is of this format)."
    )


def _gist(e):
    """The first sentence of an error message (torch's go on for lines)."""
    msg = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return (msg.splitlines() or ["no detail"])[0].split(". ")[0][:200]


def _read_safetensors(path):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        try:
            sd = load_file(path)
        except TypeError:  # a dtype numpy does not know (bfloat16 before ml_dtypes is imported)
            sd = _read_safetensors_any_dtype(path)
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise (_unreadable(path, e) or _corrupt(path, e, "safetensors file")) from e
    return {k: _standard_float(np.asarray(v)) for k, v in sd.items()}


def _read_safetensors_any_dtype(path):
    import ml_dtypes  # noqa: F401  (registers bfloat16 and the float8 types with numpy)
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _standard_float(a):
    """bfloat16 / float8 (ml_dtypes) -> float32, which the loader takes as a float; other dtypes as they are."""
    if a.dtype.name == "bfloat16" or a.dtype.name.startswith(("float8_", "float6_", "float4_")):
        return a.astype("float32")
    return a


def _read_npz(path):
    try:
        f = np.load(path, allow_pickle=False)
        if isinstance(f, np.lib.npyio.NpzFile):
            with f:  # arrays are read (and their CRCs checked) here
                w = {k: f[k] for k in f.files}
    except ValueError as e:
        if "Object arrays" in str(e):  # would need pickle: refused, as for .pth files
            raise ValueError(
                f"{path!r} holds object arrays, which only pickle can load: refused (allow_pickle=False). A Google ViT "
                "checkpoint holds plain arrays; re-save it with numpy.savez."
            ) from e
        raise _corrupt(path, e, ".npz file") from e
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise (_unreadable(path, e) or _corrupt(path, e, ".npz file")) from e
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f"{path!r} holds a single .npy array, not an .npz archive of a Google ViT checkpoint")
    if not is_google_npz(w):
        raise ValueError(
            f"{path!r} is not a Google ViT checkpoint: it has no 'embedding/kernel' array (its arrays: "
            f"{', '.join(sorted(w)[:8])}{' ...' if len(w) > 8 else ''})"
        )
    return npz_to_timm(w, source=repr(path))


# the weights_only unpickler's refusals of a global / a call / an object (as opposed to damaged bytes)
_PICKLED_CODE = re.compile(r"GLOBAL|unrecognized function|Can only (?:create new object|build)|must be \S+ to load")


def _read_torch(path):
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"Reading {path!r} needs PyTorch (torch.load). Install torch, or convert the file to .safetensors."
        ) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # damaged bytes make torch.load raise almost any type (RuntimeError from the zip
        # reader, EOFError, KeyError for a bad legacy magic number, OSError EINVAL, struct.error): told apart below
        if isinstance(e, pickle.UnpicklingError) and _PICKLED_CODE.search(str(e)):
            found = re.search(r"GLOBAL (\S+)", str(e))
            raise ValueError(
                f"{path!r} holds pickled objects that torch.load(weights_only=True) refuses"
                f"{' (' + found.group(1) + ')' if found else ''}: a file that needs arbitrary pickled code is refused "
                "on purpose. If you trust it, re-save it as a plain state dict (torch.save(model.state_dict(), ...)) "
                "or as .safetensors."
            ) from e
        shown = e
        if isinstance(e, pickle.UnpicklingError) and isinstance(e.__context__, pickle.UnpicklingError):
            shown = e.__context__  # torch re-raises `from None` with a preamble; the inner message says what broke
        raise (_unreadable(path, e) or _corrupt(path, shown, "torch checkpoint")) from e
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise ValueError(
            f"{path!r} holds a {type(obj).__name__}, not a state dict: re-save it with "
            "torch.save(model.state_dict(), path)"
        )
    out = {}
    for k, v in obj.items():
        if not hasattr(v, "detach"):
            continue
        k = k[len("module.") :] if k.startswith("module.") else k
        out[k] = v.detach().to(torch.float32).numpy() if v.is_floating_point() else v.numpy()
    return out


# --- family filters (timm's checkpoint_filter_fn, the parts that rename) -----------

_TNT_RENAMES = [
    ("outer_pos", "patch_pos"),
    ("inner_pos", "pixel_pos"),
    ("patch_embed", "pixel_embed"),
    ("proj_norm1", "norm1_proj"),
    ("proj_norm2", "norm2_proj"),
    ("inner_norm1", "norm_in"),
    ("inner_attn", "attn_in"),
    ("inner_norm2", "norm_mlp_in"),
    ("inner_mlp", "mlp_in"),
    ("outer_norm1", "norm_out"),
    ("outer_attn", "attn_out"),
    ("outer_norm2", "norm_mlp"),
    ("outer_mlp", "mlp"),
]


def _filter_tnt(sd):
    """Accept the original TNT release's names as timm does (timm-format files pass as is)."""
    sd = dict(sd)
    sd.pop("outer_tokens", None)
    if "patch_pos" in sd:
        return sd
    out = {}
    for k, v in sd.items():
        for old, new in _TNT_RENAMES:
            k = k.replace(old, new)
        if k == "pixel_pos" and v.ndim == 3:  # (1, words, c) -> (1, c, w, w)
            b, n, c = v.shape
            side = int(round(n**0.5))
            v = v.transpose(0, 2, 1).reshape(b, c, side, side)
        out[k] = v
    return out


def _filter_vit(sd):
    return dict(sd)


FILTERS = {"vit": _filter_vit, "tnt": _filter_tnt}


# --- loading ----------------------------------------------------------------------


def _guess_family(sd):
    if "pixel_pos" in sd or "patch_pos" in sd:
        return "tnt"
    if "pos_embed" in sd or "patch_embed.proj.weight" in sd:
        return "vit"
    return None


def _fmt(keys, limit=8):
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


class LoadResult:
    """What a load consumed: `converted` holds every mapped checkpoint tensor in Keras
    layout (before resampling); `complete` is True when no checkpoint tensor was left over,
    so `converted` can stand for the whole checkpoint (the conversion cache)."""

    def __init__(self, converted, complete):
        self.converted = converted
        self.complete = complete


def load_state_dict(model, state_dict, *, family, source="<state dict>", keras_layout=False,
                    pos_interpolation="bicubic"):
    """Assign a timm state dict ({name: array}) to a keras_vitnt model.

    Classifier rules (timm's): a checkpoint head whose class count differs from the model's,
    or a model without a head, leaves the head out (logged); a checkpoint without a head
    leaves the model's head at its random init (logged). A position embedding for another
    patch grid is resampled as timm does. Any other missing or unexpected tensor, shape
    mismatch or non-float tensor raises CheckpointMismatchError naming the tensors, before
    anything is assigned. `keras_layout=True`: the arrays are already in Keras layout (the
    conversion cache). `pos_interpolation`: "bicubic" (timm checkpoints) or "bilinear"
    (Google .npz files), as timm resamples each. Returns a LoadResult.
    """
    sd = state_dict if keras_layout else FILTERS[family](state_dict)
    params = model_timm_params(model)
    match = _match(params, sd, keras_layout, source, pos_interpolation)
    _check(match, sd, family, source, model.name)
    values = _head_rule(match, params, sd, source)
    _assign(params, values)
    log.info("loaded %d tensors from %s into %s", len(values), source, model.name)
    return LoadResult(match.converted, complete=not match.unexpected)


def _is_head(key):
    return key.startswith(HEAD_PREFIXES)


class _Match(NamedTuple):
    """A state dict against the model's weights ({timm_key: (variable, layout)})."""

    converted: dict  # every mapped float tensor in Keras layout, before resampling
    values: dict  # those that fit their variable (resampled to the model's grid)
    mismatched: list  # (key, checkpoint shape, model shape), body tensors
    head_mismatch: list  # the same for the head: timm's rule drops these, it does not fail
    bad_dtype: list
    missing: list  # model weights the checkpoint lacks
    unexpected: list  # checkpoint tensors the model has no place for


def _match(params, sd, keras_layout, source, interpolation):
    """Pair each model weight with its checkpoint tensor, converted and fitted to the model's
    grid. Raises only for a position table that cannot be resampled; `_check` judges the rest."""
    converted, values, mismatched, head_mismatch, bad_dtype = {}, {}, [], [], []
    for key, (var, layout) in params.items():
        if key not in sd:
            continue
        value = np.asarray(sd[key])
        if not np.issubdtype(value.dtype, np.floating):
            bad_dtype.append(f"{key} ({value.dtype})")
            continue
        converted[key] = value = value if keras_layout else change_layout(value, layout)
        value = fit_grid(value, layout, key, source, interpolation)
        if tuple(value.shape) != tuple(var.shape):
            (head_mismatch if _is_head(key) else mismatched).append((key, value.shape, tuple(var.shape)))
            continue
        values[key] = value
    missing = [k for k in params if k not in sd]
    unexpected = [k for k in sd if k not in params]
    return _Match(converted, values, mismatched, head_mismatch, bad_dtype, missing, unexpected)


def _check(match, sd, family, source, model_name):
    """Raise CheckpointMismatchError naming everything that does not fit, the head aside."""
    errors = [f"tensors that are not floating point: {_fmt(match.bad_dtype)}"] if match.bad_dtype else []
    if match.mismatched:
        lines = [f"  {k}: checkpoint {tuple(a)} vs model {b} (Keras layout)" for k, a, b in match.mismatched[:12]]
        errors.append("shape mismatches:\n" + "\n".join(lines))
    body_missing = [k for k in match.missing if not _is_head(k)]
    body_unexpected = [k for k in match.unexpected if not _is_head(k)]
    if body_missing:
        errors.append(f"tensors the model needs but the checkpoint lacks: {_fmt(body_missing)}")
    if body_unexpected:
        errors.append(f"tensors in the checkpoint the model has no place for: {_fmt(body_unexpected)}")
    if errors:
        guess = _guess_family(sd)
        if guess and guess != family:
            errors.insert(0, f"this looks like a {guess.upper()} checkpoint, the model is a {family.upper()}")
        raise CheckpointMismatchError(
            f"Checkpoint {source} does not fit model {model_name!r}:\n"
            + "\n".join(errors)
            + "\nCheck that the file is for this architecture (the timm model name) and the overrides match."
        )


def _head_rule(match, params, sd, source):
    """timm's classifier rules: the values to assign, less the head when it is left out (logged)."""
    head_keys = [k for k in params if _is_head(k)]
    drop_head = False
    if match.head_mismatch:
        ckpt_classes = np.shape(sd["head.bias"])[0] if "head.bias" in sd else "?"
        log.warning(
            "%s: the checkpoint's classifier has %s classes, the model's %d: backbone loaded, a fresh "
            "head initialised.",
            source,
            ckpt_classes,
            params["head.weight"][0].shape[-1],
        )
        drop_head = True
    elif head_keys and any(k in match.missing for k in head_keys):
        log.warning("%s has no classifier head: backbone loaded, head left at its random init.", source)
        drop_head = True
    if not head_keys and any(_is_head(k) for k in match.unexpected):
        log.info("%s: classifier head not used (include_top=False).", source)
    return {k: v for k, v in match.values.items() if not (drop_head and _is_head(k))}


def _assign(params, values):
    for key, value in values.items():
        var = params[key][0]
        var.assign(value.astype(keras.backend.standardize_dtype(var.dtype)))


def read_weights_file(path, *, family):
    """A timm/torch/npz checkpoint file -> (state dict, position-table interpolation timm uses
    for it: bilinear for Google .npz files, bicubic otherwise)."""
    path = os.fspath(path)
    if path.lower().endswith(".npz") and family != "vit":
        raise ValueError(f"{path!r}: Google .npz checkpoints exist for ViT only, not for {family.upper()}")
    interpolation = "bilinear" if path.lower().endswith(".npz") else "bicubic"
    return read_state_dict(path), interpolation


def load_weights_file(model, path, *, family, checkpoint=None):
    """Load any supported weights file into the model (format from the extension).
    `checkpoint`: the file's `read_weights_file` result when the caller has read it already."""
    path = os.fspath(path)
    if path.endswith(KERAS_WEIGHTS):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights file {path!r} does not exist")
        model.load_weights(path)
        return None
    state_dict, interpolation = checkpoint or read_weights_file(path, family=family)
    return load_state_dict(model, state_dict, family=family, source=repr(path), pos_interpolation=interpolation)
