"""The TNT trunk (timm's `tnt.TNT`, Han et al. 2021): normalised image -> patch tokens, built
from a `TNTConfig`."""

from keras_vitnt.layers import PixelEmbed, PixelToPatch, PrefixTokens, TNTBlock
from keras_vitnt.layers.base import layer_norm
from keras_vitnt.layers.embedding import grid_for
from keras_vitnt.layers.tnt import words_per_side
from keras_vitnt.models.vit import drop_path_rates, position_embedding


def trunk(x, config, drop_path_rate):
    """Normalised image -> (patch tokens (B, 1 + N, D), head_norm=False: the final norm is here)."""
    gh, gw = grid_for(config.img_size, config.patch_size)
    words = words_per_side(config.patch_size, config.first_stride) ** 2
    image = x
    pixels = PixelEmbed(config.patch_size, config.inner_dim, stride=config.first_stride, legacy=config.legacy,
                        name="pixel_embed")(x)
    if config.dynamic_img_size:  # any input size: the patch count and position table follow the image
        patches = PixelToPatch(None, config.embed_dim, norm_eps=config.norm_eps, name="patch_embed")(pixels, image)
    else:
        patches = PixelToPatch(gh * gw, config.embed_dim, norm_eps=config.norm_eps, name="patch_embed")(pixels)
    patches = PrefixTokens(1, token_init_std=config.cls_token_std, name="cls_token")(patches)
    pos = position_embedding(config, name="patch_pos")
    patches = pos(patches, image) if config.dynamic_img_size else pos(patches)
    for i, rate in enumerate(drop_path_rates(config.depth, drop_path_rate)):
        pixels, patches = TNTBlock(
            config.inner_dim, config.embed_dim, words, num_heads_inner=config.num_heads_inner,
            num_heads_outer=config.num_heads_outer, mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias,
            drop_path=rate, legacy=config.legacy, norm_eps=config.norm_eps, inner_mlp_ratio=config.inner_mlp_ratio,
            name=f"blocks_{i}",
        )([pixels, patches])
    return layer_norm(config.norm_eps, "norm")(patches), False
