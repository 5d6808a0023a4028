"""MLP with exact GELU, per-sample stochastic depth, and the pre-norm transformer block."""

import contextlib
import math
import threading

import keras
from keras import ops

from keras_vitnt.layers.attention import Attention, tokens_2d
from keras_vitnt.layers.base import SharedDtypePolicy, dense, layer_norm, register


_GELU_FORM = threading.local()


@contextlib.contextmanager
def gelu_as_erf():
    """While tracing inside this context, exact GELU is written as 0.5 x (1 + erf(x / sqrt 2))
    instead of `ops.gelu` (the same function). TensorFlow's gelu lowers to Erfc, which ONNX
    lacks; Erf it has. LiteRT export keeps `ops.gelu`, which becomes its GELU builtin."""
    previous = getattr(_GELU_FORM, "erf", False)
    _GELU_FORM.erf = True
    try:
        yield
    finally:
        _GELU_FORM.erf = previous


def gelu(x):
    """Exact (erf) GELU."""
    if getattr(_GELU_FORM, "erf", False):
        return 0.5 * x * (1.0 + ops.erf(x * ops.cast(1.0 / math.sqrt(2.0), x.dtype)))
    return ops.gelu(x, approximate=False)


# timm's act_layer names -> the function (timm.layers.create_act)
ACTIVATIONS = {
    "gelu": gelu,
    "gelu_tanh": lambda x: ops.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * ops.sigmoid(ops.cast(1.702, x.dtype) * x),  # CLIP's
    "silu": ops.silu,
}


def activation(name):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}: choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


@register
class Mlp(SharedDtypePolicy, keras.layers.Layer):
    """fc1 -> activation (exact GELU unless `act` names another) -> fc2, timm's `Mlp`."""

    def __init__(self, hidden_dim, out_dim, drop=0.0, act="gelu", **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = int(hidden_dim)
        self.out_dim = int(out_dim)
        self.drop = float(drop)
        self.act = str(act)
        self.act_fn = activation(self.act)
        self.fc1 = dense(self.hidden_dim, "fc1")
        self.fc2 = dense(self.out_dim, "fc2")
        self.dropout = keras.layers.Dropout(self.drop)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.fc1.build(input_shape)
        self.fc2.build(input_shape[:-1] + (self.hidden_dim,))

    def call(self, x, training=None):
        # on (rows, channels): fc1 + bias + GELU is then one fused oneDNN kernel (see attention.py)
        if len(x.shape) == 2:
            return self._rows(x, training)
        shape = ops.shape(x)[:-1] if None in x.shape[:-1] else x.shape[:-1]
        y = self._rows(ops.reshape(x, (-1, x.shape[-1])), training)
        return ops.reshape(y, tuple(shape) + (self.out_dim,))

    def _rows(self, x, training):
        x = self.dropout(self.act_fn(self.fc1(x)), training=training)
        return self.dropout(self.fc2(x), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape[:-1] + (self.out_dim,)

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim, "out_dim": self.out_dim, "drop": self.drop,
                "act": self.act}


@register
class GluMlp(Mlp):
    """timm's `GluMlp` (SwiGLUPacked in DINOv2-giant): fc1 to `hidden_dim`, split in halves, one
    half gated by act(the other): `act(first) * second` (gate_last=False, as DINOv2), else
    `first * act(second)`; then fc2 from hidden_dim / 2."""

    def __init__(self, hidden_dim, out_dim, drop=0.0, act="silu", gate_last=False, **kwargs):
        super().__init__(hidden_dim, out_dim, drop=drop, act=act, **kwargs)
        if self.hidden_dim % 2:
            raise ValueError(f"GluMlp: hidden_dim must be even, got {hidden_dim}")
        self.gate_last = bool(gate_last)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.fc1.build(input_shape)
        self.fc2.build(input_shape[:-1] + (self.hidden_dim // 2,))
        # timm's GluMlp.init_weights: the second half of fc1 starts near zero (N(0, 1e-6)) with bias 1
        half = self.hidden_dim // 2
        kernel = ops.convert_to_tensor(self.fc1.kernel)
        tail = keras.random.normal((kernel.shape[0], self.hidden_dim - half), stddev=1e-6, dtype=kernel.dtype)
        self.fc1.kernel.assign(ops.concatenate([kernel[:, :half], tail], axis=1))
        bias = ops.convert_to_tensor(self.fc1.bias)
        self.fc1.bias.assign(ops.concatenate([bias[:half], ops.ones((self.hidden_dim - half,), bias.dtype)]))

    def _rows(self, x, training):
        x = self.fc1(x)
        half = self.hidden_dim // 2
        a, b = x[:, :half], x[:, half:]
        x = a * self.act_fn(b) if self.gate_last else self.act_fn(a) * b
        x = self.dropout(x, training=training)
        return self.dropout(self.fc2(x), training=training)

    def get_config(self):
        return {**super().get_config(), "gate_last": self.gate_last}


MLP_LAYERS = {"mlp": Mlp, "glu": GluMlp}


@register
class LayerScale(keras.layers.Layer):
    """x * gamma per channel, timm's `LayerScale` (DeiT III, DINOv2): gamma starts at `init_values`."""

    def __init__(self, init_values=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.init_values = float(init_values)

    def build(self, input_shape):
        self.gamma = self.add_weight(shape=(input_shape[-1],), initializer=keras.initializers.Constant(
            self.init_values), name="gamma")

    def call(self, x):
        return x * ops.cast(self.gamma, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "init_values": self.init_values}


@register
class DropPath(keras.layers.Layer):
    """Stochastic depth: drops the whole residual branch per sample while training and
    rescales the kept ones by 1 / (1 - rate). Identity at inference."""

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath: rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if self.rate > 0 else None

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = ops.floor(keep + keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype))
        return x / ops.cast(keep, x.dtype) * mask

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def add_residual(rows, y, tokens, drop_path, training):
    """rows + drop_path(y) on (B*T, D) rows. Stochastic depth drops whole samples, so while
    training with a rate it works on the (B, T, D) view; otherwise it is a plain add, which
    TensorFlow fuses into the MatMul that made y."""
    if training and drop_path.rate > 0:
        dim = rows.shape[-1]
        y = ops.reshape(drop_path(ops.reshape(y, (-1, tokens, dim)), training=training), (-1, dim))
    return rows + y


@register
class TransformerBlock(SharedDtypePolicy, keras.layers.Layer):
    """Pre-norm ViT block: `x + ls1(attn(norm1(x)))`, then `x + ls2(mlp(norm2(x)))`; the
    LayerScales only with `init_values` (timm's `Block`)."""

    def __init__(
        self,
        dim,
        num_heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop_path=0.0,
        attn_drop=0.0,
        proj_drop=0.0,
        norm_eps=1e-6,
        init_values=None,
        act="gelu",
        mlp_layer="mlp",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.num_heads = int(num_heads)
        self.mlp_ratio = float(mlp_ratio)
        self.qkv_bias = bool(qkv_bias)
        self.drop_path = float(drop_path)
        self.attn_drop = float(attn_drop)
        self.proj_drop = float(proj_drop)
        self.norm_eps = float(norm_eps)
        self.init_values = None if init_values is None else float(init_values)
        self.act = str(act)
        self.mlp_layer = str(mlp_layer)
        self.norm1 = layer_norm(self.norm_eps, "norm1")
        self.attn = Attention(
            self.dim, self.num_heads, qkv_bias=self.qkv_bias, attn_drop=self.attn_drop, proj_drop=self.proj_drop,
            name="attn",
        )
        self.norm2 = layer_norm(self.norm_eps, "norm2")
        if self.mlp_layer not in MLP_LAYERS:
            raise ValueError(f"mlp_layer={mlp_layer!r}: choose one of {', '.join(MLP_LAYERS)}")
        self.mlp = MLP_LAYERS[self.mlp_layer](int(self.dim * self.mlp_ratio), self.dim, drop=self.proj_drop,
                                              act=self.act, name="mlp")
        scaled = self.init_values is not None
        self.ls1 = LayerScale(self.init_values, name="ls1") if scaled else None
        self.ls2 = LayerScale(self.init_values, name="ls2") if scaled else None
        self.drop_path_layer = DropPath(self.drop_path)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        for layer in (self.norm1, self.attn, self.norm2, self.mlp, self.ls1, self.ls2):
            if layer is not None:
                layer.build(input_shape)

    def call(self, x, training=None, return_attention_scores=False):
        rows, t = tokens_2d(x)  # the residual stream as (B*T, D) rows: see attention.py
        y = self.attn(self.norm1(rows), training=training, return_attention_scores=return_attention_scores, tokens=t)
        if return_attention_scores:
            y, weights = y
        if self.ls1 is not None:
            y = self.ls1(y)
        rows = add_residual(rows, y, t, self.drop_path_layer, training)
        y = self.mlp(self.norm2(rows), training=training)
        if self.ls2 is not None:
            y = self.ls2(y)
        rows = add_residual(rows, y, t, self.drop_path_layer, training)
        x = ops.reshape(rows, (-1, t, self.dim))
        return (x, weights) if return_attention_scores else x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "qkv_bias": self.qkv_bias,
            "drop_path": self.drop_path,
            "attn_drop": self.attn_drop,
            "proj_drop": self.proj_drop,
            "norm_eps": self.norm_eps,
            "init_values": self.init_values,
            "act": self.act,
            "mlp_layer": self.mlp_layer,
        }


@register
class AttentionPoolLatent(SharedDtypePolicy, keras.layers.Layer):
    """timm's `AttentionPoolLatent` (global_pool="map", SigLIP): one learned latent query attends
    over the tokens after the `num_prefix_tokens` leading ones, then `proj` and a residual MLP
    (`x + mlp(norm(x))`): (B, T, D) -> (B, D). Written with rank-4 tensors only."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, num_prefix_tokens=0, norm_eps=1e-6, act="gelu", **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.num_heads = int(num_heads)
        self.mlp_ratio = float(mlp_ratio)
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.norm_eps = float(norm_eps)
        self.act = str(act)
        self.q = dense(self.dim, "q")
        self.kv = dense(2 * self.dim, "kv")
        self.proj = dense(self.dim, "proj")
        self.norm = layer_norm(self.norm_eps, "norm")
        self.mlp = Mlp(int(self.dim * self.mlp_ratio), self.dim, act=self.act, name="mlp")

    def build(self, input_shape):
        d = self.dim
        # timm: trunc_normal_tf_(latent, std=dim ** -0.5), cut at +-2 std as Keras's TruncatedNormal
        self.latent = self.add_weight(shape=(1, 1, d), initializer=keras.initializers.TruncatedNormal(stddev=d**-0.5),
                                      name="latent")
        for layer, shape in ((self.q, (None, d)), (self.kv, (None, None, d)), (self.proj, (None, d)),
                             (self.norm, (None, d)), (self.mlp, (None, d))):
            layer.build(shape)

    def call(self, x):
        x = x[:, self.num_prefix_tokens:]
        b, n = ops.shape(x)[0], ops.shape(x)[1]
        h, hd = self.num_heads, self.dim // self.num_heads
        q = ops.reshape(self.q(ops.cast(self.latent[0], x.dtype)), (1, h, 1, hd))
        q = ops.broadcast_to(q, (b, h, 1, hd)) * ops.cast(hd**-0.5, x.dtype)
        kv = self.kv(x)
        k = ops.transpose(ops.reshape(kv[..., : self.dim], (b, n, h, hd)), (0, 2, 3, 1))  # (B, h, hd, N)
        v = ops.transpose(ops.reshape(kv[..., self.dim:], (b, n, h, hd)), (0, 2, 1, 3))  # (B, h, N, hd)
        attn = ops.softmax(ops.matmul(q, k), axis=-1)
        y = ops.reshape(ops.matmul(attn, v), (b, self.dim))  # (B, h, 1, hd): heads in order, as timm's
        y = self.proj(y)
        return y + self.mlp(self.norm(y))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio,
                "num_prefix_tokens": self.num_prefix_tokens, "norm_eps": self.norm_eps, "act": self.act}
