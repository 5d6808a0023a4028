"""Multi-head self-attention: ViT's fused `qkv` projection and TNT's separate `qk` / `v`.

Where the time goes on CPU (TensorFlow 2.21 + oneDNN, measured with the TF profiler on
ViT-S/16 at batch 16; the README's Performance section has the numbers):

- Dense layers run on 2-D (tokens, channels) tensors. Keras's Dense on a rank-3 input
  goes through Tensordot (reshape, MatMul, reshape), and the reshape between MatMul and
  BiasAdd stops TensorFlow's remapper from fusing them: the bias became a separate pass
  (3% of the time) and, in the MLP, GELU three more (Neg, Erfc, Mul). On 2-D inputs
  MatMul + BiasAdd (+ GELU) is one oneDNN kernel. The blocks keep their residual stream
  as rows too, so the residual adds after `proj` and `fc2` fuse into those kernels.
- Attention is two batched matmuls on (heads, B, T, head_dim). `ops.dot_product_attention`
  lowers to einsums in the TF backend, which took 13% of ViT-S and 18% of TNT-S;
  BatchMatMul with the key transpose folded in is about a third faster. One transpose
  of the fused projection puts q, k and v in that layout at once, and with the heads
  leading they are slices along axis 0, which cost no copy (slices along axis 1 were
  another 2%). Other backends keep `ops.dot_product_attention` (flash
  kernels on GPU) whenever the weights are not needed.
"""

import keras
from keras import ops

from keras_vitnt.layers.base import SharedDtypePolicy, dense, register


def tokens_2d(x):
    """(B, T, D) -> (B*T, D) and the static (or dynamic) token count T."""
    t = x.shape[1] if x.shape[1] is not None else ops.shape(x)[1]
    return ops.reshape(x, (-1, x.shape[-1])), t


def _heads_first(x, t, groups, num_heads):
    """(B*T, groups*D) -> (groups*heads, B, T, head_dim) with one transpose. Heads lead, so
    q, k and v are slices along axis 0, which TensorFlow takes without a copy."""
    head_dim = x.shape[-1] // (groups * num_heads)
    return ops.transpose(ops.reshape(x, (-1, t, groups * num_heads, head_dim)), (2, 0, 1, 3))


def _merge_heads(x, dim):
    """(heads, B, T, head_dim) -> (B*T, heads*head_dim)."""
    return ops.reshape(ops.transpose(x, (1, 2, 0, 3)), (-1, dim))


def _attend(q, k, v, scale, needs_weights, dropout, training):
    """q, k, v: (heads, B, T, head_dim) -> (heads, B, T, head_dim) and the softmax weights
    as (B, heads, T, T), or None when they were not computed."""
    if not needs_weights and keras.backend.backend() != "tensorflow":
        # (B, T, heads, head_dim) is the layout dot_product_attention takes
        q, k, v = (ops.transpose(a, (1, 2, 0, 3)) for a in (q, k, v))
        out = ops.dot_product_attention(q, k, v, scale=scale)
        return ops.transpose(out, (2, 0, 1, 3)), None
    scores = ops.matmul(q * ops.cast(scale, q.dtype), ops.swapaxes(k, -1, -2))
    weights = ops.softmax(scores, axis=-1)
    probs = dropout(weights, training=training) if dropout.rate > 0 else weights
    out = ops.matmul(probs, v)
    return out, (ops.transpose(weights, (1, 0, 2, 3)) if needs_weights else None)


class _AttentionBase(SharedDtypePolicy, keras.layers.Layer):
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

    def _qkv(self, x, t):
        """(B*T, D) rows -> q, k, v as (heads, B, T, head_dim)."""
        raise NotImplementedError

    def call(self, x, training=None, return_attention_scores=False, tokens=None):
        """x: (B, T, D) tokens, or (B*T, D) rows with `tokens=T` (how the blocks call it,
        so that the residual add fuses into `proj`); the output has the shape of x."""
        rows, t = (x, tokens) if tokens is not None else tokens_2d(x)
        q, k, v = self._qkv(rows, t)
        needs_weights = return_attention_scores or bool(training and self.attn_drop > 0)
        out, weights = _attend(q, k, v, self.scale, needs_weights, self.attn_dropout, training)
        out = self.proj_dropout(self.proj(_merge_heads(out, self.dim)), training=training)
        if tokens is None:
            out = ops.reshape(out, (-1, t, self.dim))
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

    def __init__(self, dim, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0, **kwargs):
        super().__init__(dim, num_heads, attn_drop=attn_drop, proj_drop=proj_drop, **kwargs)
        self.qkv_bias = bool(qkv_bias)
        self.qkv = dense(3 * self.dim, "qkv", use_bias=self.qkv_bias)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.qkv.build(input_shape)
        self.proj.build(input_shape[:-1] + (self.dim,))

    def _qkv(self, x, t):
        qkv = _heads_first(self.qkv(x), t, 3, self.num_heads)
        h = self.num_heads
        return qkv[:h], qkv[h : 2 * h], qkv[2 * h :]

    def get_config(self):
        return {**super().get_config(), "qkv_bias": self.qkv_bias}


@register
class TNTAttention(_AttentionBase):
    """TNT attention: separate `qk` (D -> 2D) and `v` (D -> D) Dense layers, no bias by
    default (timm's `qkv_bias=False`), and `proj` with bias."""

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

    def _qkv(self, x, t):
        qk = _heads_first(self.qk(x), t, 2, self.num_heads)
        v = _heads_first(self.v(x), t, 1, self.num_heads)
        return qk[: self.num_heads], qk[self.num_heads :], v

    def get_config(self):
        return {**super().get_config(), "qkv_bias": self.qkv_bias}
