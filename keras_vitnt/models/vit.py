"""The ViT / DeiT trunk (timm's `VisionTransformer`, `VisionTransformerDistilled`): normalised
image -> token sequence, built from a `ViTConfig`."""

import numpy as np

from keras_vitnt.layers import PatchEmbedding, PositionEmbedding, PrefixTokens, TransformerBlock
from keras_vitnt.layers.base import layer_norm
from keras_vitnt.layers.embedding import grid_for


def drop_path_rates(depth, rate):
    """timm's stochastic depth schedule: linear from 0 to `rate` over the blocks."""
    return [float(r) for r in np.linspace(0.0, rate, depth)] if depth else []


def position_embedding(config, name):
    grid = grid_for(config.img_size, config.patch_size)
    return PositionEmbedding(grid, config.num_prefix_tokens, kind=config.pos_embed, name=name)


def trunk(x, config, drop_path_rate):
    """Normalised image -> (tokens (B, prefix + N, D), normed: whether the final norm is applied;
    timm's global_pool="avg" moves it after pooling, as fc_norm)."""
    x = PatchEmbedding(config.patch_size, config.embed_dim, name="patch_embed")(x)
    if config.num_prefix_tokens:
        x = PrefixTokens(config.num_prefix_tokens, token_init_std=config.cls_token_std,
                         dist_token_init_std=config.dist_token_std, name="cls_token")(x)
    x = position_embedding(config, name="pos_embed")(x)
    for i, rate in enumerate(drop_path_rates(config.depth, drop_path_rate)):
        x = TransformerBlock(config.embed_dim, config.num_heads, mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias,
                             drop_path=rate, norm_eps=config.norm_eps, name=f"blocks_{i}")(x)
    normed = config.global_pool != "avg"
    if normed:
        x = layer_norm(config.norm_eps, "norm")(x)
    return x, normed
