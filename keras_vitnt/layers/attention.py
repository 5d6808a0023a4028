"""Multi-head self-attention: ViT's fused `qkv` projection and TNT's separate `qk` / `v`.

Both run through `keras.ops.dot_product_attention` on (B, T, heads, head_dim) tensors
(rank 4, no transposes needed before the call) and can also return the attention
weights (B, heads, T, T) for visualisation.
"""

import keras
from keras import ops

from keras_vitnt.layers.base import TimmMapped, dense, register


def _split_heads(x, num_heads):
    t, d = x.shape[1], x.shape[2]
    return ops.reshape(x, (-1, t, num_heads, d // num_heads))


def _attend(q, k, v, num_heads, scale, attn_drop, training, return_weights, dropout_layer):
    """q, k, v: (B, T, D) -> (B, T, D) and optionally the (B, heads, T, T) weights."""
    t = q.shape[1]
    q, k, v = (_split_heads(a, num_heads) for a in (q, k, v))
    needs_weights = return_weights or (attn_drop > 0 and training)
    if not needs_weights:
        out = ops.dot_product_attention(q, k, v, scale=scale)
        weights = None
    else:
        qh = ops.transpose(q, (0, 2, 1, 3))  # (B, h, T, hd)
        kh = ops.transpose(k, (0, 2, 3, 1))  # (B, h, hd, T)
        vh = ops.transpose(v, (0, 2, 1, 3))
        weights = ops.softmax(ops.matmul(qh * ops.cast(scale, qh.dtype), kh), axis=-1)
        probs = dropout_layer(weights, training=training) if attn_drop > 0 else weights
        out = ops.transpose(ops.matmul(probs, vh), (0, 2, 1, 3))
    out = ops.reshape(out, (-1, t, out.shape[2] * out.shape[3]))
    return out, weights


class _AttentionBase(TimmMapped, keras.layers.Layer):
    def __init__(self, dim, num_heads, attn_drop=0.0, proj_drop=0.0, **kwargs):
        super().__init__(**kwargs)
        if dim % num_heads:
            raise ValueError(f"{type(self).__name__}: dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = int(dim)
        self.num_heads = int(num_heads)
        self.head_dim = self.dim // self.num_heads
        self.scale = self.head_dim**-0.5
        self.attn_drop = float(attn_drop)
        self.proj_drop = float(proj_drop)
        self.proj = dense(self.dim, "proj")
        self.attn_dropout = keras.layers.Dropout(self.attn_drop)
        self.proj_dropout = keras.layers.Dropout(self.proj_drop)

    def _qkv(self, x):
        raise NotImplementedError

    def call(self, x, training=None, return_attention_scores=False):
        q, k, v = self._qkv(x)
        out, weights = _attend(
            q, k, v, self.num_heads, self.scale, self.attn_drop, training, return_attention_scores, self.attn_dropout
        )
        out = self.proj_dropout(self.proj(out), training=training)
        return (out, weights) if return_attention_scores else out

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "attn_drop": self.attn_drop,
            "proj_drop": self.proj_drop,
        }


@register
class Attention(_AttentionBase):
    """ViT/DeiT attention: one fused `qkv` Dense (D -> 3D), `proj` Dense with bias."""

    timm_children = ("qkv", "proj")

    def __init__(self, dim, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0, **kwargs):
        super().__init__(dim, num_heads, attn_drop=attn_drop, proj_drop=proj_drop, **kwargs)
        self.qkv_bias = bool(qkv_bias)
        self.qkv = dense(3 * self.dim, "qkv", use_bias=self.qkv_bias)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.qkv.build(input_shape)
        self.proj.build(input_shape[:-1] + (self.dim,))

    def _qkv(self, x):
        qkv = self.qkv(x)
        d = self.dim
        return qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]

    def get_config(self):
        return {**super().get_config(), "qkv_bias": self.qkv_bias}


@register
class TNTAttention(_AttentionBase):
    """TNT attention: separate `qk` (D -> 2D) and `v` (D -> D) Dense layers, no bias by
    default (timm's `qkv_bias=False`), and `proj` with bias."""

    timm_children = ("qk", "v", "proj")

    def __init__(self, dim, num_heads, qkv_bias=False, attn_drop=0.0, proj_drop=0.0, **kwargs):
        super().__init__(dim, num_heads, attn_drop=attn_drop, proj_drop=proj_drop, **kwargs)
        self.qkv_bias = bool(qkv_bias)
        self.qk = dense(2 * self.dim, "qk", use_bias=self.qkv_bias)
        self.v = dense(self.dim, "v", use_bias=self.qkv_bias)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.qk.build(input_shape)
        self.v.build(input_shape)
        self.proj.build(input_shape[:-1] + (self.dim,))

    def _qkv(self, x):
        qk = self.qk(x)
        return qk[..., : self.dim], qk[..., self.dim :], self.v(x)

    def get_config(self):
        return {**super().get_config(), "qkv_bias": self.qkv_bias}
