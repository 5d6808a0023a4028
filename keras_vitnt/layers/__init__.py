"""Keras layers of keras_vitnt, all registered for `.keras` save/load."""

from keras_vitnt.layers.attention import Attention, DiffAttention, TNTAttention
from keras_vitnt.layers.base import Dense, LayerNorm, RmsNorm
from keras_vitnt.layers.blocks import (
    ATTN_LAYERS,
    BLOCKS,
    AttentionPoolLatent,
    DiffParallelScalingBlock,
    DropPath,
    GluMlp,
    LayerScale,
    Mlp,
    ParallelScalingBlock,
    ParallelThingsBlock,
    ResPostBlock,
    SwiGLU,
    TransformerBlock,
)
from keras_vitnt.layers.embedding import (
    POS_EMBED_KINDS,
    PatchEmbedding,
    PositionEmbedding,
    PrefixTokens,
    Preprocess,
    TokenMap,
    TokenPool,
    unfold_patches,
)
from keras_vitnt.layers.tnt import PixelEmbed, PixelToPatch, TNTBlock

__all__ = [
    "ATTN_LAYERS",
    "Attention",
    "BLOCKS",
    "Dense",
    "DiffAttention",
    "DiffParallelScalingBlock",
    "AttentionPoolLatent",
    "DropPath",
    "GluMlp",
    "LayerNorm",
    "LayerScale",
    "Mlp",
    "ParallelScalingBlock",
    "ParallelThingsBlock",
    "ResPostBlock",
    "RmsNorm",
    "SwiGLU",
    "POS_EMBED_KINDS",
    "PatchEmbedding",
    "PixelEmbed",
    "PixelToPatch",
    "PositionEmbedding",
    "PrefixTokens",
    "Preprocess",
    "TNTAttention",
    "TNTBlock",
    "TokenMap",
    "TokenPool",
    "TransformerBlock",
    "unfold_patches",
]
