"""Transformer-in-Transformer layers: the pixel ("visual word") embedding, the projection
of pixel tokens into patch ("visual sentence") tokens, and the TNT block (inner
transformer on each patch's words, fuse into the patch token, outer transformer).

Inner tokens are kept as (B * N, words, c): attention over all patches of all images
runs as one batched call, with no Python loop and no rank-5 tensor.
"""

import math

import keras
from keras import ops

from keras_vitnt.layers.attention import TNTAttention, tokens_2d
from keras_vitnt.layers.base import SharedDtypePolicy, conv, dense, layer_norm, register, timm_normal
from keras_vitnt.layers.blocks import DropPath, Mlp, add_residual
from keras_vitnt.layers.embedding import unfold_patches


def words_per_side(patch_size, stride):
    """Side of the word grid inside a patch: ceil(P / stride), as timm's `new_patch_size`."""
    return math.ceil(patch_size / stride)


@register
class PixelEmbed(SharedDtypePolicy, keras.layers.Layer):
    """Image (B, H, W, 3) -> pixel tokens (B * N, w * w, c) plus the learned `pixel_pos`.

    Default: unfold the image into P x P patches, then Conv2D(c, 7, stride) with a
    symmetric padding of 3 on each patch. Legacy (`tnt_s_legacy`): the conv runs on the
    whole image first and its output is unfolded into w x w windows.
    """

    def __init__(self, patch_size, inner_dim, stride=4, legacy=False, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = int(patch_size)
        self.inner_dim = int(inner_dim)
        self.stride = int(stride)
        self.legacy = bool(legacy)
        self.words = words_per_side(self.patch_size, self.stride)
        self.pad = keras.layers.ZeroPadding2D(3)
        self.proj = conv(self.inner_dim, 7, strides=self.stride)  # after an explicit symmetric pad of 3

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        _, h, w, c = input_shape
        if self.legacy and self.patch_size % self.stride:
            raise ValueError(
                f"PixelEmbed(legacy=True): patch_size {self.patch_size} must be a multiple of the stride {self.stride}"
            )
        self.pad.build((None, None, None, c))  # weightless, but model.quantize() wants every layer built
        self.proj.build((None, None, None, c))
        self.pixel_pos = self.add_weight(
            shape=(1, self.words, self.words, self.inner_dim),
            initializer=timm_normal(0.02),  # timm's trunc_normal_(pixel_pos, std=.02)
            name="pixel_pos",
        )

    def call(self, x):
        if self.legacy:
            x = unfold_patches(self.proj(self.pad(x)), self.words)
        else:
            x = self.proj(self.pad(unfold_patches(x, self.patch_size)))
        x = x + ops.cast(self.pixel_pos, x.dtype)
        return ops.reshape(x, (-1, self.words * self.words, self.inner_dim))

    def compute_output_shape(self, input_shape):
        return (None, self.words * self.words, self.inner_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "patch_size": self.patch_size,
            "inner_dim": self.inner_dim,
            "stride": self.stride,
            "legacy": self.legacy,
        }


@register
class PixelToPatch(SharedDtypePolicy, keras.layers.Layer):
    """Pixel tokens (B * N, words, c) -> patch tokens (B, N, D):
    `norm2_proj(proj(norm1_proj(flatten)))`. Its sub-layers are timm's top-level
    `norm1_proj`, `proj` and `norm2_proj`. `num_patches=None` (a model for any input size):
    called as `layer(pixels, image)`, the batch is read from the image."""

    def __init__(self, num_patches, embed_dim, norm_eps=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.num_patches = None if num_patches is None else int(num_patches)
        self.embed_dim = int(embed_dim)
        self.norm_eps = float(norm_eps)
        self.norm1_proj = layer_norm(self.norm_eps, "norm1_proj")
        self.proj = dense(self.embed_dim, "proj")
        self.norm2_proj = layer_norm(self.norm_eps, "norm2_proj")

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        flat = (None, self.num_patches, input_shape[1] * input_shape[2])
        self.norm1_proj.build(flat)
        self.proj.build(flat)
        self.norm2_proj.build(flat[:-1] + (self.embed_dim,))

    def call(self, pixels, image=None):
        flat = pixels.shape[1] * pixels.shape[2]
        if self.num_patches is None:
            x = ops.reshape(pixels, (ops.shape(image)[0], -1, flat))
        else:
            x = ops.reshape(pixels, (-1, self.num_patches, flat))
        return self.norm2_proj(self.proj(self.norm1_proj(x)))

    def compute_output_shape(self, input_shape):
        return (None, self.num_patches, self.embed_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "num_patches": self.num_patches,
            "embed_dim": self.embed_dim,
            "norm_eps": self.norm_eps,
        }


@register
class TNTBlock(SharedDtypePolicy, keras.layers.Layer):
    """One TNT block on `[pixel_tokens (B*N, words, c), patch_tokens (B, 1+N, D)]`.

    inner:  p = p + attn_in(norm_in(p));  p = p + mlp_in(norm_mlp_in(p))
    fuse:   patch[:, 1:] += norm2_proj(proj(norm1_proj(p.reshape(B, N, words*c))))
            (legacy: proj(norm1_proj(p).reshape(...)) with a biased proj, no norm2_proj)
    outer:  x = x + attn_out(norm_out(x));  x = x + mlp(norm_mlp(x))
    """

    def __init__(
        self,
        inner_dim,
        embed_dim,
        num_words,
        num_heads_inner=4,
        num_heads_outer=6,
        mlp_ratio=4.0,
        qkv_bias=False,
        drop_path=0.0,
        attn_drop=0.0,
        proj_drop=0.0,
        legacy=False,
        norm_eps=1e-5,
        inner_mlp_ratio=4.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.inner_dim = int(inner_dim)
        self.embed_dim = int(embed_dim)
        self.num_words = int(num_words)
        self.num_heads_inner = int(num_heads_inner)
        self.num_heads_outer = int(num_heads_outer)
        self.mlp_ratio = float(mlp_ratio)
        self.qkv_bias = bool(qkv_bias)
        self.drop_path = float(drop_path)
        self.attn_drop = float(attn_drop)
        self.proj_drop = float(proj_drop)
        self.legacy = bool(legacy)
        self.norm_eps = float(norm_eps)
        self.inner_mlp_ratio = float(inner_mlp_ratio)
        c, d = self.inner_dim, self.embed_dim
        attn_kw = dict(qkv_bias=self.qkv_bias, attn_drop=self.attn_drop, proj_drop=self.proj_drop)
        self.norm_in = layer_norm(self.norm_eps, "norm_in")
        self.attn_in = TNTAttention(c, self.num_heads_inner, name="attn_in", **attn_kw)
        self.norm_mlp_in = layer_norm(self.norm_eps, "norm_mlp_in")
        self.mlp_in = Mlp(int(c * self.inner_mlp_ratio), c, drop=self.proj_drop, name="mlp_in")
        self.norm1_proj = layer_norm(self.norm_eps, "norm1_proj")
        self.proj = dense(d, "proj", use_bias=self.legacy)
        self.norm2_proj = None if self.legacy else layer_norm(self.norm_eps, "norm2_proj")
        self.norm_out = layer_norm(self.norm_eps, "norm_out")
        self.attn_out = TNTAttention(d, self.num_heads_outer, name="attn_out", **attn_kw)
        self.norm_mlp = layer_norm(self.norm_eps, "norm_mlp")
        self.mlp = Mlp(int(d * self.mlp_ratio), d, drop=self.proj_drop, name="mlp")
        self.drop_path_layer = DropPath(self.drop_path)

    def build(self, input_shape):
        pixel_shape, patch_shape = (tuple(s) for s in input_shape)
        flat = patch_shape[:-1] + (self.num_words * self.inner_dim,)
        for layer in (self.norm_in, self.attn_in, self.norm_mlp_in, self.mlp_in):
            layer.build(pixel_shape)
        self.norm1_proj.build(pixel_shape if self.legacy else flat)
        self.proj.build(flat)
        if self.norm2_proj is not None:
            self.norm2_proj.build(patch_shape)
        for layer in (self.norm_out, self.attn_out, self.norm_mlp, self.mlp):
            layer.build(patch_shape)

    def call(self, inputs, training=None, return_attention_scores=False):
        pixels, patches = inputs
        dp = self.drop_path_layer
        scores = return_attention_scores
        # both residual streams as 2-D rows, as in TransformerBlock (see attention.py)
        rows, words = tokens_2d(pixels)
        y = self.attn_in(self.norm_in(rows), training=training, return_attention_scores=scores, tokens=words)
        if scores:
            y, inner_weights = y
        rows = add_residual(rows, y, words, dp, training)
        rows = add_residual(rows, self.mlp_in(self.norm_mlp_in(rows), training=training), words, dp, training)
        pixels = ops.reshape(rows, (-1, words, self.inner_dim))

        flat_dim = self.num_words * self.inner_dim
        # (B, N, words * c): N static when the input size is, else read from the batch
        sentences = (-1, patches.shape[1] - 1, flat_dim) if patches.shape[1] else (ops.shape(patches)[0], -1, flat_dim)
        if self.legacy:
            fused = self.proj(ops.reshape(self.norm1_proj(pixels), sentences))
        else:
            fused = self.norm2_proj(self.proj(self.norm1_proj(ops.reshape(pixels, sentences))))
        # add to the patch tokens only; the class token (row 0) is left as it is
        patches = patches + ops.pad(fused, [[0, 0], [1, 0], [0, 0]])

        rows, tokens = tokens_2d(patches)
        y = self.attn_out(self.norm_out(rows), training=training, return_attention_scores=scores, tokens=tokens)
        if scores:
            y, outer_weights = y
        rows = add_residual(rows, y, tokens, dp, training)
        rows = add_residual(rows, self.mlp(self.norm_mlp(rows), training=training), tokens, dp, training)
        patches = ops.reshape(rows, (-1, tokens, self.embed_dim))
        if scores:
            return pixels, patches, inner_weights, outer_weights
        return pixels, patches

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "inner_dim": self.inner_dim,
            "embed_dim": self.embed_dim,
            "num_words": self.num_words,
            "num_heads_inner": self.num_heads_inner,
            "num_heads_outer": self.num_heads_outer,
            "mlp_ratio": self.mlp_ratio,
            "qkv_bias": self.qkv_bias,
            "drop_path": self.drop_path,
            "attn_drop": self.attn_drop,
            "proj_drop": self.proj_drop,
            "legacy": self.legacy,
            "norm_eps": self.norm_eps,
            "inner_mlp_ratio": self.inner_mlp_ratio,
        }
