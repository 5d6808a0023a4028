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
  another 2%). Whenever the weights are not needed, PyTorch runs torch's
  `scaled_dot_product_attention` on (B, heads, T, head_dim) views and takes q, k and v by
  `unbind`, as timm does (Keras's `ops.dot_product_attention` copies them to contiguous
  tensors on CPU; slices' gradients fill a zero tensor each); JAX keeps
  `ops.dot_product_attention` (flash kernels on GPU).
- Training on TensorFlow keeps no (T, T) softmax weights for the backward pass: it keeps the
  row log-sum-exp (T values) and computes the weights again from q and k there
  (`attend_recomputed`), as PyTorch's flash attention does for timm. The XLA training step of
  ViT-S/16 at batch 16 needs 169 MiB less (1158 -> 989 MiB of XLA buffers: the twelve
  (6, 16, 197, 197) weight tensors), TNT-S 297 MiB less (2169 -> 1871 MiB, its inner attention
  too), at 0.98x and 1.04x the speed on an AVX2 AMD EPYC (benchmarks/attention_memory.py).
"""

import math

import keras
from keras import ops

from keras_vitnt.layers.base import SharedDtypePolicy, dense, layer_norm, recompute_after, register


def tokens_2d(x):
    """(B, T, D) -> (B*T, D) and the static (or dynamic) token count T."""
    t = x.shape[1] if x.shape[1] is not None else ops.shape(x)[1]
    return ops.reshape(x, (-1, x.shape[-1])), t


def heads_first(x, t, groups, num_heads):
    """(B*T, groups*D) -> (groups*heads, B, T, head_dim) with one transpose. Heads lead, so
    q, k and v are slices along axis 0, which TensorFlow takes without a copy."""
    head_dim = x.shape[-1] // (groups * num_heads)
    return ops.transpose(ops.reshape(x, (-1, t, groups * num_heads, head_dim)), (2, 0, 1, 3))


def head_groups(x, t, groups, num_heads):
    """(B*T, groups*D) -> `groups` tensors (q, k, v, ...) of (heads, B, T, head_dim). On
    TensorFlow, slices of `heads_first` (no copy); on the other backends, an unstack (PyTorch's
    `unbind`, as timm's attention), whose backward pass stacks the gradients once, where each
    slice's fills a zero tensor of the whole width and adds into it."""
    x = heads_first(x, t, groups, num_heads)
    if keras.backend.backend() == "tensorflow":
        return tuple(x[i * num_heads : (i + 1) * num_heads] for i in range(groups))
    return tuple(ops.unstack(ops.reshape(x, (groups, num_heads, -1, t, x.shape[-1])), num=groups, axis=0))


def merge_heads(x, dim):
    """(heads, B, T, head_dim) -> (B*T, heads*head_dim)."""
    return ops.reshape(ops.transpose(x, (1, 2, 0, 3)), (-1, dim))


def attend(q, k, v, scale, needs_weights, dropout, training):
    """q, k, v: (heads, B, T, head_dim) -> (heads, B, T, head_dim) and the softmax weights
    as (B, heads, T, T), or None when they were not computed."""
    if not needs_weights and keras.backend.backend() == "torch":
        # torch's own attention on (B, heads, T, head_dim) views, as timm calls it: Keras's
        # dot_product_attention copies q, k and v to contiguous tensors first on CPU
        import torch

        out = torch.nn.functional.scaled_dot_product_attention(*(a.transpose(0, 1) for a in (q, k, v)), scale=scale)
        return out.transpose(0, 1), None
    if not needs_weights and keras.backend.backend() != "tensorflow":
        # (B, T, heads, head_dim) is the layout dot_product_attention takes
        q, k, v = (ops.transpose(a, (1, 2, 0, 3)) for a in (q, k, v))
        out = ops.dot_product_attention(q, k, v, scale=scale)
        return ops.transpose(out, (2, 0, 1, 3)), None
    if training and not needs_weights:  # TensorFlow, training: no (T, T) weights kept for the backward pass
        return attend_recomputed(q, k, v, scale), None
    scores = ops.matmul(q * ops.cast(scale, q.dtype), ops.swapaxes(k, -1, -2))
    weights = ops.softmax(scores, axis=-1)
    probs = dropout(weights, training=training) if dropout.rate > 0 else weights
    out = ops.matmul(probs, v)
    return out, (ops.transpose(weights, (1, 0, 2, 3)) if needs_weights else None)


def attend_recomputed(q, k, v, scale):
    """Softmax attention (TensorFlow) whose gradient computes the softmax weights again from q, k
    and the row log-sum-exp instead of keeping them from the forward pass: (heads, B, T, T) per
    layer less to hold between the two passes, one more q k^T product in the backward pass."""
    import tensorflow as tf

    @tf.custom_gradient
    def mix(q, k, v):
        q_scaled = q * tf.cast(scale, q.dtype)
        scores = tf.matmul(q_scaled, k, transpose_b=True)
        lse = tf.reduce_logsumexp(tf.cast(scores, "float32"), axis=-1, keepdims=True)  # (heads, B, T, 1)
        out = tf.matmul(tf.nn.softmax(scores, axis=-1), v)

        def grad(d_out):
            # q, k and v tied to d_out (recompute_after): otherwise XLA computed every layer's weights again
            # in the forward pass and kept them all (measured: no memory saved)
            d_out, qs, kt, vt = recompute_after(d_out, q_scaled, k, v)
            # the weights transposed, (keys, queries): no transposes in the products below
            wt = tf.cast(tf.exp(tf.cast(tf.matmul(kt, qs, transpose_b=True), "float32")
                                - tf.linalg.matrix_transpose(lse)), q.dtype)
            d_v = tf.matmul(wt, d_out)
            d_wt = tf.matmul(vt, d_out, transpose_b=True)
            d_st = wt * (d_wt - tf.reduce_sum(d_wt * wt, axis=-2, keepdims=True))  # softmax's gradient
            d_q = tf.matmul(d_st, kt, transpose_a=True) * tf.cast(scale, q.dtype)
            d_k = tf.matmul(d_st, qs)
            return d_q, d_k, d_v

        return out, grad

    return mix(q, k, v)


class _AttentionBase(SharedDtypePolicy, keras.layers.Layer):
    def __init__(self, dim, num_heads, attn_drop=0.0, proj_drop=0.0, proj_bias=True, **kwargs):
        super().__init__(**kwargs)
        if dim % num_heads:
            raise ValueError(f"{type(self).__name__}: dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = int(dim)
        self.num_heads = int(num_heads)
        self.head_dim = self.dim // self.num_heads
        self.scale = self.head_dim**-0.5
        self.attn_drop = float(attn_drop)
        self.proj_drop = float(proj_drop)
        self.proj_bias = bool(proj_bias)
        self.proj = dense(self.dim, "proj", use_bias=self.proj_bias)
        self.norm = None  # timm's scale_norm: a norm of the heads' output before proj (BEiT-3)
        self.attn_dropout = keras.layers.Dropout(self.attn_drop)
        self.proj_dropout = keras.layers.Dropout(self.proj_drop)

    def _qkv(self, x, t):
        """(B*T, D) rows -> q, k, v as (heads, B, T, head_dim)."""
        raise NotImplementedError

    def _mix(self, q, k, v, needs_weights, training):
        """-> (heads, B, T, head_dim) outputs and the weights (B, heads, T, T) or None."""
        return attend(q, k, v, self.scale, needs_weights, self.attn_dropout, training)

    def call(self, x, training=None, return_attention_scores=False, tokens=None):
        """x: (B, T, D) tokens, or (B*T, D) rows with `tokens=T` (how the blocks call it,
        so that the residual add fuses into `proj`); the output has the shape of x."""
        rows, t = (x, tokens) if tokens is not None else tokens_2d(x)
        q, k, v = self._qkv(rows, t)
        needs_weights = return_attention_scores or bool(training and self.attn_drop > 0)
        out, weights = self._mix(q, k, v, needs_weights, training)
        out = merge_heads(out, self.dim)
        if self.norm is not None:
            out = self.norm(out)
        out = self.proj_dropout(self.proj(out), training=training)
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
            "proj_bias": self.proj_bias,
        }


@register
class Attention(_AttentionBase):
    """ViT/DeiT attention (timm's `Attention`): one fused `qkv` Dense (D -> 3D) and `proj`
    (bias unless proj_bias=False). `qk_norm`: q and k normalised per head (`q_norm`, `k_norm`);
    `scale_norm`: a norm of the heads' output before `proj` (`norm`, BEiT-3); both of timm's
    `norm_layer` kind ("layernorm" or "rmsnorm") with `norm_eps`."""

    def __init__(self, dim, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0, proj_bias=True, qk_norm=False,
                 scale_norm=False, norm_layer="layernorm", norm_eps=1e-6, **kwargs):
        super().__init__(dim, num_heads, attn_drop=attn_drop, proj_drop=proj_drop, proj_bias=proj_bias, **kwargs)
        self.qkv_bias = bool(qkv_bias)
        self.qk_norm = bool(qk_norm)
        self.scale_norm = bool(scale_norm)
        self.norm_layer = str(norm_layer)
        self.norm_eps = float(norm_eps)
        self.qkv = dense(3 * self.dim, "qkv", use_bias=self.qkv_bias)
        self.q_norm = layer_norm(self.norm_eps, "q_norm", self.norm_layer) if self.qk_norm else None
        self.k_norm = layer_norm(self.norm_eps, "k_norm", self.norm_layer) if self.qk_norm else None
        if self.scale_norm:
            self.norm = layer_norm(self.norm_eps, "norm", self.norm_layer)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.qkv.build(input_shape)
        for layer, width in ((self.q_norm, self.head_dim), (self.k_norm, self.head_dim), (self.norm, self.dim)):
            if layer is not None:
                layer.build(input_shape[:-1] + (width,))
        self.proj.build(input_shape[:-1] + (self.dim,))

    def _qkv(self, x, t):
        q, k, v = head_groups(self.qkv(x), t, 3, self.num_heads)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def get_config(self):
        return {**super().get_config(), "qkv_bias": self.qkv_bias, "qk_norm": self.qk_norm,
                "scale_norm": self.scale_norm, "norm_layer": self.norm_layer, "norm_eps": self.norm_eps}


@register
class TNTAttention(_AttentionBase):
    """TNT attention: separate `qk` (D -> 2D) and `v` (D -> D) Dense layers, no bias by
    default (timm's `qkv_bias=False`), and `proj` with bias."""

    def __init__(self, dim, num_heads, qkv_bias=False, attn_drop=0.0, proj_drop=0.0, proj_bias=True, **kwargs):
        super().__init__(dim, num_heads, attn_drop=attn_drop, proj_drop=proj_drop, proj_bias=proj_bias, **kwargs)
        self.qkv_bias = bool(qkv_bias)
        self.qk = dense(2 * self.dim, "qk", use_bias=self.qkv_bias)
        self.v = dense(self.dim, "v", use_bias=self.qkv_bias)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.qk.build(input_shape)
        self.v.build(input_shape)
        self.proj.build(input_shape[:-1] + (self.dim,))

    def _qkv(self, x, t):
        q, k = head_groups(self.qk(x), t, 2, self.num_heads)
        return q, k, heads_first(self.v(x), t, 1, self.num_heads)

    def get_config(self):
        return {**super().get_config(), "qkv_bias": self.qkv_bias}


class DiffLambdas:
    """The differential-attention part of a layer (timm's `DiffAttention`, "Differential
    Transformer"): q and k have 2 x heads half-width heads, paired; each pair's softmax maps
    give `w_even - lambda * w_odd`, which mixes v in full-width heads, then `sub_norm` (RmsNorm,
    eps 1e-5) and `* (1 - lambda_init)`. lambda = exp(lambda_q1 . lambda_k1) - exp(lambda_q2 .
    lambda_k2) + lambda_init, with lambda_init = 0.8 - 0.6 exp(-0.3 block_index)."""

    LAMBDAS = ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")

    def _make_diff(self, block_index):
        self.block_index = int(block_index)
        self.lambda_init = 0.8 - 0.6 * math.exp(-0.3 * self.block_index)
        self.half_dim = self.dim // self.num_heads // 2
        self.sub_norm = layer_norm(1e-5, "sub_norm", "rmsnorm")

    def _build_diff(self, lead):
        for name in self.LAMBDAS:  # timm: normal_(std=0.1), float32 whatever the policy
            setattr(self, name, self.add_weight(shape=(self.half_dim,), dtype="float32", name=name, autocast=False,
                                                initializer=keras.initializers.RandomNormal(stddev=0.1)))
        self.sub_norm.build(lead + (2 * self.half_dim,))

    def _diff_qk(self, qk, t):
        """(rows, 2D) -> q, k as (2 heads, B, T, half_dim)."""
        return head_groups(qk, t, 2, 2 * self.num_heads)

    def _diff_mix(self, q, k, v, needs_weights, dropout, training):
        """q, k: (2 heads, B, T, half_dim); v: (heads, B, T, 2 half_dim)."""
        lam = (ops.exp(ops.sum(self.lambda_q1 * self.lambda_k1)) - ops.exp(ops.sum(self.lambda_q2 * self.lambda_k2))
               + self.lambda_init)  # in float32, then cast, as timm's .type_as(q)
        lam = ops.cast(lam, q.dtype)
        scores = ops.matmul(q * ops.cast(self.half_dim**-0.5, q.dtype), ops.swapaxes(k, -1, -2))
        weights = ops.softmax(scores, axis=-1)
        if dropout.rate > 0:
            weights = dropout(weights, training=training)
        t = ops.shape(weights)[-1]
        pairs = ops.reshape(weights, (self.num_heads, 2, -1, t))  # heads 2h and 2h + 1 pair up, as timm's view
        diff = ops.reshape(pairs[:, 0] - lam * pairs[:, 1], (self.num_heads, -1, t, t))  # (heads, B, T, T)
        out = self.sub_norm(ops.matmul(diff, v)) * ops.cast(1.0 - self.lambda_init, q.dtype)
        return out, (ops.transpose(diff, (1, 0, 2, 3)) if needs_weights else None)


@register
class DiffAttention(DiffLambdas, Attention):
    """timm's `DiffAttention` (attn_layer="diff", the `vit_d*` ViTs): Attention's `qkv`,
    norms and `proj`, with the differential mixing of `DiffLambdas`; `block_index` is timm's
    `depth` argument, the block's index, which sets lambda_init."""

    def __init__(self, dim, num_heads, block_index=0, **kwargs):
        super().__init__(dim, num_heads, **kwargs)
        self._make_diff(block_index)  # q_norm / k_norm act on the half-width heads

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        lead = input_shape[:-1]
        self.qkv.build(input_shape)
        for layer, width in ((self.q_norm, self.half_dim), (self.k_norm, self.half_dim), (self.norm, self.dim)):
            if layer is not None:
                layer.build(lead + (width,))
        self.proj.build(lead + (self.dim,))
        self._build_diff(lead)

    def _qkv(self, x, t):
        y = self.qkv(x)
        q, k = self._diff_qk(y[:, : 2 * self.dim], t)
        v = heads_first(y[:, 2 * self.dim :], t, 1, self.num_heads)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def _mix(self, q, k, v, needs_weights, training):
        return self._diff_mix(q, k, v, needs_weights, self.attn_dropout, training)

    def get_config(self):
        return {**super().get_config(), "block_index": self.block_index}
