"""Keras layers of keras_vitnt, all registered for `.keras` save/load."""

from keras_vitnt.layers.attention import Attention, TNTAttention
from keras_vitnt.layers.base import LayerNorm
from keras_vitnt.layers.blocks import AttentionPoolLatent, DropPath, GluMlp, LayerScale, Mlp, TransformerBlock
from keras_vitnt.layers.embedding import (
    POS_EMBED_KINDS,
    PatchEmbedding,
    PositionEmbedding,
    PrefixTokens,
    Preprocess,
    TokenPool,
    unfold_patches,
)
from keras_vitnt.layers.tnt import PixelEmbed, PixelToPatch, TNTBlock

__all__ = [
    "Attention",
    "AttentionPoolLatent",
    "DropPath",
    "GluMlp",
    "LayerNorm",
    "LayerScale",
    "Mlp",
    "POS_EMBED_KINDS",
    "PatchEmbedding",
    "PixelEmbed",
    "PixelToPatch",
    "PositionEmbedding",
    "PrefixTokens",
    "Preprocess",
    "TNTAttention",
    "TNTBlock",
    "TokenPool",
    "TransformerBlock",
    "unfold_patches",
]
