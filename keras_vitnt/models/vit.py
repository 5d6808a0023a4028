"""ViT (Dosovitskiy et al.) and DeiT (Touvron et al.), as timm's `VisionTransformer`."""

import numpy as np

from keras_vitnt.layers import PatchEmbedding, PrefixTokens, TransformerBlock
from keras_vitnt.layers.base import layer_norm
from keras_vitnt.models import builder, registry

BASE_DOCSTRING = """Instantiates {title}, as timm's `{timm}` (same numbers for the same checkpoint).

    Args:
        {variant_doc}
        include_top: whether to include the classifier head.
        weights: None (random init, as timm initialises), "imagenet" (the timm default
            pretrained tag), another tag name of the model (see `keras_vitnt.list_models(
            pretrained=True)`), or a local file: timm `.safetensors`, torch `.pth`/`.bin`
            (loaded with `weights_only=True`), or a Keras `.weights.h5`.
        input_tensor: optional Keras tensor to use as the image input.
        input_shape: (height, width, 3); any size the patch size divides. Defaults to the
            model's resolution (224 or 384).
        pooling: with include_top=False: None returns the normalised token sequence
            (B, prefix + N, D); "token" the class token (the mean of class and distillation
            tokens for distilled DeiT, as timm); "avg" the mean of the patch tokens.
        classes: number of classes of the head. None (default): the head follows the weights,
            as in timm (1000 without weights; a headless feature checkpoint with
            include_top=True is an error). A count the checkpoint does not have loads the
            backbone and initialises a fresh head (logged).
        classifier_activation: activation of the head; None returns logits.
        include_preprocessing: if True the model takes RGB in [0, 255] and normalises with
            the weights' mean/std inside; if False it takes inputs normalised as timm's.
        mean, std: the normalisation inside the model (3 values each, for RGB in 0..1;
            timm's pretrained_cfg names). Default: the pretrained tag's; for a weights file
            (which does not record it) or no weights, those of the model's default timm
            weights, with a logged warning for a file. The model's config (layer
            "preprocess") and the export sidecar say which values are inside.
        drop_rate: dropout before the head.
        drop_path_rate: stochastic depth rate, increased linearly over the blocks.
        name: model name (defaults to the timm name).
        **overrides: architecture overrides with timm's keyword names: {overrides}.

    Returns:
        A `keras.Model`.
    """

VIT_OVERRIDES = ", ".join(k for k in registry.VIT_DEFAULTS if k != "img_size")


def vit_trunk(x, arch, drop_path_rate):
    """Normalised image -> (tokens (B, prefix + N, D), num_prefix, normed)."""
    num_prefix = int(arch["class_token"]) + int(arch["distilled"])
    x = PatchEmbedding(arch["patch_size"], arch["embed_dim"], name="patch_embed")(x)
    if num_prefix:
        # timm: normal_(cls_token, std=1e-6); DeiT's trunc_normal_(dist_token, std=.02)
        x = PrefixTokens(num_prefix, token_init_std=1e-6, dist_token_init_std=0.02, name="cls_token")(x)
    x = builder.position_embedding(arch, num_prefix, name="pos_embed")(x)
    rates = np.linspace(0.0, drop_path_rate, arch["depth"]) if arch["depth"] else []
    for i in range(arch["depth"]):
        x = TransformerBlock(
            arch["embed_dim"],
            arch["num_heads"],
            mlp_ratio=arch["mlp_ratio"],
            qkv_bias=arch["qkv_bias"],
            drop_path=float(rates[i]),
            norm_eps=1e-6,
            name=f"blocks_{i}",
        )(x)
    # timm: global_pool="avg" moves the final norm after pooling (fc_norm)
    normed = arch["global_pool"] != "avg"
    if normed:
        x = layer_norm(1e-6, "norm")(x)
    return x, num_prefix, normed


def ViT(
    variant="B/16",
    *,
    include_top=True,
    weights="imagenet",
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=None,
    classifier_activation="softmax",
    include_preprocessing=True,
    mean=None,
    std=None,
    drop_rate=0.0,
    drop_path_rate=0.0,
    name=None,
    **overrides,
):
    size, patch = registry.vit_variant(variant)
    arch, timm_name = registry.vit_arch(size, patch, distilled=overrides.pop("distilled", False))
    return builder.create(
        "vit",
        vit_trunk,
        arch,
        timm_name,
        overrides,
        name=name or timm_name or f"vit_{registry.VIT_SIZES[size][0]}_patch{patch}",
        include_top=include_top,
        weights=weights,
        input_tensor=input_tensor,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing,
        mean=mean,
        std=std,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
    )


def DeiT(
    variant="B/16",
    *,
    distilled=False,
    include_top=True,
    weights="imagenet",
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=None,
    classifier_activation="softmax",
    include_preprocessing=True,
    mean=None,
    std=None,
    drop_rate=0.0,
    drop_path_rate=0.0,
    name=None,
    **overrides,
):
    size, patch = registry.vit_variant(variant)
    word = registry.VIT_SIZES[size][0]
    timm_name = f"deit_{word}{'_distilled' if distilled else ''}_patch{patch}_224"
    arch, _ = registry.vit_arch(size, patch, distilled=distilled)
    return builder.create(
        "vit",
        vit_trunk,
        arch,
        timm_name if timm_name in registry.REGISTRY else None,
        overrides,
        name=name or timm_name,
        include_top=include_top,
        weights=weights,
        input_tensor=input_tensor,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing,
        mean=mean,
        std=std,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
    )


ViT.__doc__ = BASE_DOCSTRING.format(
    title="a Vision Transformer (ViT)",
    timm="vision_transformer.VisionTransformer",
    variant_doc='variant: "<size>/<patch>" with size Ti, S, B, L or H and any patch size, e.g. "B/16", '
    '"H/14", "Ti/4".',
    overrides=VIT_OVERRIDES,
)
DeiT.__doc__ = BASE_DOCSTRING.format(
    title="a Data-efficient image Transformer (DeiT)",
    timm="deit.VisionTransformerDistilled" + "` / `vision_transformer.VisionTransformer",
    variant_doc='variant: "Ti/16", "S/16" or "B/16"; distilled=True adds the distillation token and head.',
    overrides=VIT_OVERRIDES,
)
