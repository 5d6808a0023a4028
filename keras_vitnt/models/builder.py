"""The single builder behind ViT(), DeiT(), TNT() and create_model(): input handling,
preprocessing, the family's trunk, pooling and head, and weight loading, following the
keras.applications conventions."""

import logging

import keras

from keras_vitnt.layers import PositionEmbedding, Preprocess, TokenPool
from keras_vitnt.layers.base import dense, layer_norm
from keras_vitnt.layers.embedding import POS_EMBED_KINDS, grid_for
from keras_vitnt.models import registry

log = logging.getLogger("keras_vitnt")

# timm's spelling of position-embedding kinds, accepted as aliases
_POS_ALIASES = {"learn": "learned_1d", "": "none", None: "none"}


def resolve_arch(family, base_arch, overrides, input_shape):
    """Apply timm-named architecture overrides and the input size to a registry arch."""
    allowed = set(registry.FAMILY_DEFAULTS[family]) - {"img_size"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise TypeError(
            f"Unknown keyword argument(s) {unknown} for a {family.upper()} model. Architecture overrides "
            f"use timm's names: {sorted(allowed)}."
        )
    arch = dict(base_arch, **overrides)
    arch["pos_embed"] = _POS_ALIASES.get(arch["pos_embed"], arch["pos_embed"])
    if arch["pos_embed"] not in POS_EMBED_KINDS:
        raise ValueError(f"pos_embed={arch['pos_embed']!r}: choose one of {POS_EMBED_KINDS}")
    if arch["global_pool"] not in ("token", "avg"):
        raise ValueError(f"global_pool={arch['global_pool']!r}: choose 'token' (class token) or 'avg'")
    if family == "vit" and not arch["class_token"]:
        if arch["distilled"]:
            raise ValueError("distilled=True needs class_token=True (DeiT has both tokens)")
        if arch["global_pool"] == "token":
            raise ValueError("class_token=False needs global_pool='avg': there is no token to classify from")
    if input_shape is not None:
        if len(input_shape) != 3 or input_shape[-1] != 3:
            raise ValueError(f"input_shape must be (height, width, 3), got {input_shape}")
        arch["img_size"] = (input_shape[0], input_shape[1])
    img = arch["img_size"]
    arch["img_size"] = (img, img) if isinstance(img, int) else tuple(img)
    return arch


def _resolve_weights(info, weights):
    """-> (kind, value): ("none", None) | ("tag", Tag) | ("file", path)."""
    import os

    if weights is None:
        return "none", None
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be None, 'imagenet', a tag name or a file path, got {type(weights).__name__}")
    weights = os.fspath(weights)
    if info is not None and (weights == "imagenet" or any(t.tag == weights for t in info.tags)):
        if weights == "imagenet":
            if info.default_tag is None:
                raise ValueError(f"{info.name} has no pretrained weights on the hub; use weights=None or a file.")
            return "tag", info.default_tag
        return "tag", info.get_tag(weights)
    if os.path.exists(weights) or os.sep in weights or "." in os.path.basename(weights):
        if not os.path.isfile(weights):
            raise FileNotFoundError(
                f"weights file {weights!r} does not exist. Pass an existing .safetensors/.pth/.bin/.weights.h5 "
                "file, 'imagenet', or None."
            )
        return "file", weights
    if info is None:
        raise ValueError(
            f"weights={weights!r}: this architecture is not a registered timm model, so only None or a "
            "local file can be loaded. Use create_model('<timm name>') for pretrained tags."
        )
    tags = ", ".join(t.tag for t in info.tags) or "none"
    raise ValueError(
        f"weights={weights!r} is neither 'imagenet', a tag of {info.name} ({tags}), nor an existing file."
    )


def create(family, trunk, base_arch, timm_name, overrides, *, input_shape, **kwargs):
    """Resolve overrides against a base architecture and build. `timm_name` names the
    registry entry whose pretrained tags and normalisation apply (None if timm has no
    such model: then only weights=None or a file are possible)."""
    info = registry.REGISTRY.get(timm_name) if timm_name else None
    arch = resolve_arch(family, base_arch, overrides, input_shape)
    return build(family, arch, trunk, info=info, input_shape=input_shape, **kwargs)


def build(
    family,
    arch,
    trunk,
    *,
    info,
    include_top,
    weights,
    input_tensor,
    input_shape,
    pooling,
    classes,
    classifier_activation,
    include_preprocessing,
    drop_rate,
    drop_path_rate,
    name,
    mean=None,
    std=None,
):
    """Build a functional model. `trunk(x, arch, drop_path_rate)` maps the normalised image
    to (tokens, num_prefix, normed); `info` is the registry entry the weights refer to
    (None for architectures timm does not register)."""
    kind, wvalue = _resolve_weights(info, weights)
    if include_top and pooling is not None:
        raise ValueError(
            f"pooling={pooling!r} applies to include_top=False only; with a classifier head, choose the pooling "
            "with global_pool='token' or 'avg'."
        )
    if pooling not in (None, "token", "avg"):
        raise ValueError(f"pooling={pooling!r}: choose None (token sequence), 'token' or 'avg'")
    if classes is not None and (not isinstance(classes, int) or isinstance(classes, bool) or classes < 1):
        raise ValueError(f"classes must be a positive integer (or None: the weights' classes), got {classes!r}")
    state_dict, interpolation = None, "bicubic"
    if kind == "file" and not wvalue.endswith(".weights.h5"):
        from keras_vitnt.weights.convert import read_weights_file

        state_dict, interpolation = read_weights_file(wvalue, family=family)
    if include_top:
        classes = _head_classes(classes, kind, wvalue, state_dict)

    if input_tensor is None:
        h, w = arch["img_size"]
        inputs = keras.Input(shape=(h, w, 3), name="image")
        x = inputs
    else:
        if not keras.backend.is_keras_tensor(input_tensor):
            input_tensor = keras.Input(tensor=input_tensor)
        shape = tuple(input_tensor.shape[1:])
        if input_shape is not None and tuple(input_shape) != shape:
            raise ValueError(f"input_shape {input_shape} does not match input_tensor's shape {shape}")
        arch["img_size"] = shape[:2]
        inputs, x = input_tensor, input_tensor
    grid_for(arch["img_size"], arch["patch_size"], what=name)

    tag = wvalue if kind == "tag" else None
    if include_preprocessing:
        x = Preprocess(*normalisation(info, kind, wvalue, mean, std), name="preprocess")(x)
    elif mean is not None or std is not None:
        raise ValueError("mean/std apply to include_preprocessing=True (normalisation inside the model) only")

    tokens, num_prefix, normed = trunk(x, arch, drop_path_rate)
    eps = 1e-6 if family == "vit" else 1e-5
    distilled = arch.get("distilled", False)
    if include_top:
        if arch["global_pool"] == "avg":
            y = TokenPool("avg", num_prefix, name="pool")(tokens)
            if not normed:
                y = layer_norm(eps, "fc_norm")(y)
            y = keras.layers.Dropout(drop_rate, name="head_drop")(y)
            y = dense(classes, "head")(y)
        elif distilled:
            a = dense(classes, "head")(TokenPool("token", num_prefix, name="pool")(tokens))
            b = dense(classes, "head_dist")(TokenPool("dist", num_prefix, name="pool_dist")(tokens))
            y = keras.layers.Average(name="head_avg")([a, b])
        else:
            y = TokenPool("token", num_prefix, name="pool")(tokens)
            y = keras.layers.Dropout(drop_rate, name="head_drop")(y)
            y = dense(classes, "head")(y)
        outputs = keras.layers.Activation(classifier_activation, dtype="float32", name="predictions")(y)
    elif pooling == "token":
        if num_prefix == 0:
            raise ValueError("pooling='token' needs a class token; this model has none (use pooling='avg')")
        outputs = TokenPool("dist_avg" if distilled else "token", num_prefix, name="pool")(tokens)
    elif pooling == "avg":
        outputs = TokenPool("avg", num_prefix, name="pool")(tokens)
        if not normed:
            outputs = layer_norm(eps, "fc_norm")(outputs)
    else:
        outputs = tokens

    if input_tensor is not None:
        inputs = keras.utils.get_source_inputs(input_tensor)
    model = keras.Model(inputs, outputs, name=name)

    if kind == "tag":
        from keras_vitnt.weights.hub import load_pretrained

        load_pretrained(model, tag, family)
    elif kind == "file":
        from keras_vitnt.weights.convert import load_weights_file

        load_weights_file(model, wvalue, family=family, checkpoint=(state_dict, interpolation))
    return model


def _checkpoint_classes(kind, wvalue, state_dict):
    """Class count of the weights' head: 0 for a headless checkpoint, None when unknown (no
    weights, or a Keras .weights.h5 file, which fits one model structure only)."""
    if kind == "tag":
        return wvalue.num_classes
    if state_dict is not None:
        head = state_dict.get("head.bias", state_dict.get("head.weight"))
        return int(head.shape[0]) if head is not None else 0
    return None


def _head_classes(classes, kind, wvalue, state_dict):
    """timm's rule: without `classes`, the head is the checkpoint's."""
    ckpt = _checkpoint_classes(kind, wvalue, state_dict)
    if classes is not None:
        return classes  # a class count the weights lack gets a fresh head, logged by the loader
    if ckpt is None:
        return 1000
    if ckpt == 0:
        what = wvalue.hub_id if kind == "tag" else repr(wvalue)
        raise ValueError(
            f"The weights {what} have no classifier head (a feature checkpoint), so include_top=True would "
            "predict from a random head. Pass include_top=False (with pooling='token' or 'avg') for features, or "
            "classes=N for a fresh N-class head to fine-tune."
        )
    return ckpt


def normalisation(info, kind, wvalue, mean=None, std=None):
    """(mean, std) the model normalises with: the caller's `mean`/`std` if given, else the
    tag's, else (a file or no weights) those of the registered model's default weights
    (0.5/0.5 for an architecture timm does not register). A file gets a logged note: its
    normalisation cannot be read from it."""
    if (mean is None) != (std is None):
        raise ValueError("pass mean and std together (3 values each, for RGB in 0..1), or neither")
    if mean is not None:
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each (std > 0), got mean={mean}, std={std}")
        return mean, std
    if kind == "tag":
        return wvalue.mean, wvalue.std
    mean, std = info.mean_std if info else registry.NORMS["INCEPTION"]
    if kind == "file":
        source = f"the default weights of {info.name}" if info else "timm's default for unregistered ViTs"
        log.warning(
            "weights file %r: the model normalises inputs with mean=%s, std=%s (%s). If the file was trained "
            "with another normalisation (e.g. DeiT's ImageNet mean/std), pass mean= and std=.",
            wvalue, mean, std, source,
        )
    return mean, std


def position_embedding(arch, num_prefix, name):
    grid = grid_for(arch["img_size"], arch["patch_size"])
    return PositionEmbedding(grid, num_prefix, kind=arch["pos_embed"], name=name)
