"""Which timm tensor is which Keras weight: the single table, per layer class, and its walk.

keras_vitnt's layers mirror timm's module names: a model's top-level layers are named as
timm's top-level modules ("blocks_3" for `blocks.3`), and sub-layers sit in attributes named
as timm's sub-modules (`attn.qkv`, `mlp.fc1`, `norm1_proj`). A weight's timm key is then
its path of names, and the conversion is a lookup plus a layout change. The layers know
nothing of checkpoints; everything timm-specific beyond the names is in `TIMM_MAP`.
"""

import re
from typing import NamedTuple

import keras

from keras_vitnt import layers as L
from keras_vitnt.layers.blocks import Branch

# torch layout -> Keras layout, per tensor kind
LAYOUTS = {
    "identity": lambda a: a,
    "linear": lambda a: a.T,  # (out, in) -> (in, out)
    "conv": lambda a: a.transpose(2, 3, 1, 0),  # (O, I, kh, kw) -> (kh, kw, I, O)
    "nchw_to_nhwc": lambda a: a.transpose(0, 2, 3, 1),
}


def change_layout(array, layout):
    """torch layout -> Keras layout for one tensor (position tables keep theirs)."""
    return array if isinstance(layout, tuple) else LAYOUTS[layout](array)


class Entry(NamedTuple):
    """How one layer class maps. `children`: sub-layer attributes, each a timm sub-module of
    the same name (an attribute that is None is absent from that configuration, e.g.
    TNTBlock's `norm2_proj` when legacy). `own(layer, prefix)`: yields (timm_key, variable,
    layout) for the weights the layer holds itself, after its children's. `root`: the layer
    holds timm top-level tensors, so its own name is no part of their keys."""

    children: tuple = ()
    own: object = None
    root: bool = False


def _kernel_bias(layout):
    def own(layer, prefix):
        yield f"{prefix}.weight", layer.kernel, layout
        if layer.use_bias:
            yield f"{prefix}.bias", layer.bias, "identity"

    return own


def _norm(layer, prefix):
    yield f"{prefix}.weight", layer.gamma, "identity"
    if getattr(layer, "beta", None) is not None:  # RmsNorm has none
        yield f"{prefix}.bias", layer.beta, "identity"


def _mlp_bias(layer, prefix):
    if layer.mlp_bias is not None:
        yield f"{prefix}.mlp_bias", layer.mlp_bias, "identity"


def _lambdas(layer, prefix):
    for name in layer.LAMBDAS:
        yield f"{prefix}.{name}", getattr(layer, name), "identity"


def _mlp_bias_and_lambdas(layer, prefix):
    yield from _mlp_bias(layer, prefix)
    yield from _lambdas(layer, prefix)


def _prefix_tokens(layer, prefix):
    yield from zip(("cls_token", "dist_token"), layer.tokens, ("identity", "identity"))
    if layer.registers is not None:
        yield "reg_token", layer.registers, "identity"


def _latent(layer, prefix):
    yield f"{prefix}.latent", layer.latent, "identity"


def _layer_scale(layer, prefix):
    yield f"{prefix}.gamma", layer.gamma, "identity"


def _position_embedding(layer, prefix):
    # the layer's name is the timm key ("pos_embed"; TNT's "patch_pos"); sincos_2d and none hold nothing
    if layer.kind == "learned_1d":
        # resampled to this layer's grid when the checkpoint's differs (timm's rule)
        yield prefix, layer.pos_embed, ("pos_embed", layer.grid_size, layer.num_prefix_tokens)
    elif layer.kind == "learned_2d":
        yield prefix + "_row", layer.pos_embed_row, "identity"
        yield prefix + "_col", layer.pos_embed_col, "identity"
        if layer.num_prefix_tokens:
            yield prefix + "_prefix", layer.pos_embed_prefix, "identity"


def _pixel_pos(layer, prefix):
    yield "pixel_pos", layer.pixel_pos, "nchw_to_nhwc"  # a timm top-level tensor, not under pixel_embed


# Looked up along the class's MRO, so subclasses (TorchConv2D, LayerNorm) map as their base.
TIMM_MAP = {
    keras.layers.Dense: Entry(own=_kernel_bias("linear")),
    keras.layers.Conv2D: Entry(own=_kernel_bias("conv")),
    keras.layers.LayerNormalization: Entry(own=_norm),
    L.RmsNorm: Entry(own=_norm),
    L.PatchEmbedding: Entry(children=("proj", "norm")),
    L.PrefixTokens: Entry(own=_prefix_tokens, root=True),
    L.PositionEmbedding: Entry(own=_position_embedding),
    L.Attention: Entry(children=("qkv", "q_norm", "k_norm", "norm", "proj")),
    L.TNTAttention: Entry(children=("qk", "v", "proj")),
    L.Mlp: Entry(children=("fc1", "norm", "fc2")),
    L.SwiGLU: Entry(children=("fc1_g", "fc1_x", "norm", "fc2")),
    # ls1, ls2: None without init_values
    L.TransformerBlock: Entry(children=("norm1", "attn", "ls1", "norm2", "mlp", "ls2")),
    L.ParallelThingsBlock: Entry(children=("attns", "ffns")),  # lists: attns.0, attns.1, ...
    Branch: Entry(children=("norm", "attn", "mlp", "ls")),
    L.ParallelScalingBlock: Entry(children=("in_norm", "in_proj", "q_norm", "k_norm", "attn_out_proj", "mlp_out_proj",
                                            "ls"), own=_mlp_bias),
    L.DiffAttention: Entry(children=("qkv", "q_norm", "k_norm", "sub_norm", "norm", "proj"), own=_lambdas),
    L.DiffParallelScalingBlock: Entry(children=("in_norm", "in_proj", "q_norm", "k_norm", "sub_norm", "out_proj", "ls"),
                                      own=_mlp_bias_and_lambdas),
    L.LayerScale: Entry(own=_layer_scale),
    L.AttentionPoolLatent: Entry(children=("q", "kv", "proj", "norm", "mlp"), own=_latent),
    L.PixelEmbed: Entry(children=("proj",), own=_pixel_pos),
    L.PixelToPatch: Entry(children=("norm1_proj", "proj", "norm2_proj"), root=True),
    L.TNTBlock: Entry(
        children=("norm_in", "attn_in", "norm_mlp_in", "mlp_in", "norm1_proj", "proj", "norm2_proj",
                  "norm_out", "attn_out", "norm_mlp", "mlp"),
    ),
}


def _entry(layer):
    return next((TIMM_MAP[c] for c in type(layer).__mro__ if c in TIMM_MAP), None)


def layer_timm_params(layer, prefix):
    """Yield (timm_key, variable, layout) for the weights of one layer (recursively)."""
    entry = _entry(layer)
    if entry is None:
        if layer.weights:
            raise TypeError(f"layer {layer.name!r} ({type(layer).__name__}) has weights but no timm mapping")
        return
    for name in entry.children:
        child = getattr(layer, name)
        key = f"{prefix}.{name}" if prefix else name
        if isinstance(child, (list, tuple)):  # an nn.ModuleList: one key per index
            for i, item in enumerate(child):
                yield from layer_timm_params(item, f"{key}.{i}")
        elif child is not None:
            yield from layer_timm_params(child, key)
    if entry.own is not None:
        yield from entry.own(layer, prefix)


def timm_name(layer):
    """Keras layer name -> timm module prefix: "blocks_3" -> "blocks.3" ("" for a root layer)."""
    entry = _entry(layer)
    if entry is not None and entry.root:
        return ""
    return re.sub(r"_(\d+)$", r".\1", layer.name)


def model_timm_params(model):
    """{timm_key: (variable, layout)} for every weight of the model."""
    out = {}
    for layer in model.layers:
        for key, var, layout in layer_timm_params(layer, timm_name(layer)):
            if key in out:
                raise RuntimeError(f"two weights of the model map to the timm tensor {key!r}")
            out[key] = (var, layout)
    return out
