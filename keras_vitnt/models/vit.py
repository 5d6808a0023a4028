"""The ViT / DeiT trunk (timm's `VisionTransformer`, `VisionTransformerDistilled`): normalised
image -> token sequence, built from a `ViTConfig`."""

import numpy as np

from keras_vitnt.layers import PatchEmbedding, PositionEmbedding, PrefixTokens
from keras_vitnt.layers.base import layer_norm
from keras_vitnt.layers.blocks import BLOCKS
from keras_vitnt.layers.embedding import grid_for


def drop_path_rates(depth, rate):
    """timm's stochastic depth schedule: linear from 0 to `rate` over the blocks."""
    return [float(r) for r in np.linspace(0.0, rate, depth)] if depth else []


def position_embedding(config, name):
    """The table at the config's size; a dynamic model resamples it to each input in the graph."""
    grid = grid_for(config.img_size, config.patch_size, drop_remainder=config.drop_remainder or config.dynamic_img_pad)
    if config.dynamic_img_pad:  # the patch embedding pads: the grid is rounded up
        grid = tuple(-(-s // config.patch_size) for s in config.img_size)
    if not config.dynamic_img_size:
        return PositionEmbedding(grid, config.pos_prefix_tokens, kind=config.pos_embed, name=name)
    return PositionEmbedding(grid, config.pos_prefix_tokens, kind=config.pos_embed, patch_size=config.patch_size,
                             dynamic_img_pad=config.dynamic_img_pad, name=name)


def trunk(x, config, drop_path_rate):
    """Normalised image -> (tokens (B, prefix + N, D), head_norm: whether the final norm comes
    after pooling, timm's fc_norm, instead of here)."""
    # timm: no patch-embedding bias when a norm follows it (pre_norm, CLIP)
    image = x
    x = PatchEmbedding(config.patch_size, config.embed_dim, bias=not config.pre_norm, norm_eps=config.norm_eps,
                       norm_layer=config.embed_norm_layer, dynamic_img_pad=config.dynamic_img_pad, name="patch_embed")(x)
    prefix = None
    if config.num_prefix_tokens:
        prefix = PrefixTokens(int(config.class_token) + int(config.distilled), token_init_std=config.cls_token_std,
                              dist_token_init_std=config.dist_token_std, reg_tokens=config.reg_tokens,
                              reg_token_init_std=config.reg_token_std, name="cls_token")
    if prefix and not config.no_embed_class:  # the table has rows for the prefix tokens: concatenate, then add
        x = prefix(x)
    pos = position_embedding(config, name="pos_embed")
    x = pos(x, image) if config.dynamic_img_size else pos(x)
    if prefix and config.no_embed_class:  # DeiT III, registers: add to the patches, then concatenate
        x = prefix(x)
    if config.pre_norm:
        x = layer_norm(config.norm_eps, "norm_pre", config.norm_layer)(x)
    block = BLOCKS[config.block_fn]
    for i, rate in enumerate(drop_path_rates(config.depth, drop_path_rate)):
        x = block(config.embed_dim, config.num_heads, mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias,
                  drop_path=rate, norm_eps=config.norm_eps, init_values=config.init_values, act=config.act_layer,
                  mlp_layer=config.mlp_layer, qk_norm=config.qk_norm, proj_bias=config.proj_bias,
                  scale_attn_norm=config.scale_attn_norm, scale_mlp_norm=config.scale_mlp_norm,
                  norm_layer=config.norm_layer, attn_layer=config.attn_layer, block_index=i, name=f"blocks_{i}")(x)
    if config.final_norm and not config.head_norm:
        x = layer_norm(config.norm_eps, "norm", config.norm_layer)(x)
    return x, config.head_norm
