"""TNT, Transformer in Transformer (Han et al., 2021), as timm's `tnt.TNT`."""

import numpy as np

from keras_vitnt.layers import PixelEmbed, PixelToPatch, PrefixTokens, TNTBlock
from keras_vitnt.layers.base import layer_norm
from keras_vitnt.layers.embedding import grid_for
from keras_vitnt.layers.tnt import words_per_side
from keras_vitnt.models import builder, registry
from keras_vitnt.models.vit import BASE_DOCSTRING

TNT_OVERRIDES = ", ".join(k for k in registry.TNT_DEFAULTS if k != "img_size")


def tnt_trunk(x, arch, drop_path_rate):
    """Normalised image -> (patch tokens (B, 1 + N, D), 1, normed=True)."""
    gh, gw = grid_for(arch["img_size"], arch["patch_size"])
    words = words_per_side(arch["patch_size"], arch["first_stride"]) ** 2
    pixels = PixelEmbed(
        arch["patch_size"], arch["inner_dim"], stride=arch["first_stride"], legacy=arch["legacy"], name="pixel_embed"
    )(x)
    patches = PixelToPatch(gh * gw, arch["embed_dim"], norm_eps=1e-5, name="patch_embed")(pixels)
    patches = PrefixTokens(1, token_init_std=0.02, name="cls_token")(patches)  # timm: trunc_normal_(std=.02)
    patches = builder.position_embedding(arch, 1, name="patch_pos")(patches)
    rates = np.linspace(0.0, drop_path_rate, arch["depth"]) if arch["depth"] else []
    for i in range(arch["depth"]):
        pixels, patches = TNTBlock(
            arch["inner_dim"],
            arch["embed_dim"],
            words,
            num_heads_inner=arch["num_heads_inner"],
            num_heads_outer=arch["num_heads_outer"],
            mlp_ratio=arch["mlp_ratio"],
            qkv_bias=arch["qkv_bias"],
            drop_path=float(rates[i]),
            legacy=arch["legacy"],
            norm_eps=1e-5,
            name=f"blocks_{i}",
        )([pixels, patches])
    patches = layer_norm(1e-5, "norm")(patches)
    return patches, 1, True


def TNT(
    variant="S",
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
    arch, timm_name = registry.tnt_variant(variant)
    return builder.create(
        "tnt",
        tnt_trunk,
        arch,
        timm_name,
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


TNT.__doc__ = BASE_DOCSTRING.format(
    title="a Transformer-in-Transformer (TNT) model",
    timm="tnt.TNT",
    variant_doc='variant: "S" (TNT-S, 81.5 top-1), "B" (TNT-B, 82.9) or "S-legacy" (the original TNT-S '
    "layout: conv on the whole image, per-block norm over c, biased proj).",
    overrides=TNT_OVERRIDES,
)
