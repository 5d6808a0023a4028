"""MLP with exact GELU, per-sample stochastic depth, and the pre-norm transformer block."""

import math

import keras
from keras import ops

from keras_vitnt.layers.attention import (
    Attention,
    DiffAttention,
    DiffLambdas,
    attend,
    head_groups,
    heads_first,
    merge_heads,
    tokens_2d,
)
from keras_vitnt.layers.base import (
    KeepsFloat,
    SharedDtypePolicy,
    dense,
    dense_init,
    in_form,
    layer_norm,
    recompute_after,
    register,
    traced_form,
)


def gelu_as_erf():
    """While tracing inside this context, exact GELU is written as 0.5 x (1 + erf(x / sqrt 2))
    instead of `ops.gelu` (the same function). TensorFlow's gelu lowers to Erfc, which ONNX
    lacks; Erf it has. LiteRT export keeps `ops.gelu`, which becomes its GELU builtin."""
    return traced_form("gelu_as_erf")


# the backends whose training steps take the gradient forms below (`ops.custom_gradient`; not
# enabled nor measured on PyTorch, whose own GELU keeps only its input). On JAX they took ViT-S/16's
# XLA step at batch 16 from 2627 to 2017 MB and TNT-S's from 5469 to 4247 MB, 1.03x as fast; being
# custom VJPs there, they rule out forward-mode autodiff (jax.jvp) of a call with training=True.
TRAINING_FORM_BACKENDS = ("tensorflow", "jax")


def _normal_cdf(x):
    """Phi(x) = (1 + erf(x / sqrt 2)) / 2."""
    return 0.5 * (1.0 + ops.erf(x * ops.cast(1.0 / math.sqrt(2.0), x.dtype)))


def _gelu_derivative(x):
    """d gelu / dx = Phi(x) + x phi(x) (exact GELU)."""
    return _normal_cdf(x) + x * ops.exp(-0.5 * ops.square(x)) * ops.cast(1.0 / math.sqrt(2.0 * math.pi), x.dtype)


@ops.custom_gradient
def _gelu_keeping_input(x):
    """Exact GELU whose gradient keeps only x and recomputes Phi(x) + x phi(x) from it. TensorFlow's
    own gradient of gelu keeps three more tensors of the MLP's hidden width (x / sqrt 2, x / 2 and
    erfc), which XLA does not recompute: measured 430 MB of ViT-S/16's 2.5 GB training step at
    batch 16, a third more than timm keeps per block."""

    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        return upstream * _gelu_derivative(x)

    return ops.gelu(x, approximate=False), grad


def gelu_dense(h, kernel, bias=None):
    """`gelu(h) @ kernel + bias` (the MLP's GELU and fc2 on rows), whose gradient keeps only h and
    recomputes gelu(h) for fc2's weight gradient: autodiff keeps gelu(h) as well (as timm does), a
    tensor of the hidden width, 4x the tokens', per MLP. The backward pass does autodiff's matmuls
    plus one elementwise pass. Measured on the XLA training step at batch 16: 190 MB less for
    ViT-S/16, 380 MB for TNT-S, at 1-2% of the step's time."""

    def forward(h, kernel, *bias):
        y = ops.matmul(ops.gelu(h, approximate=False), kernel)
        return y + bias[0] if bias else y

    @ops.custom_gradient
    def fn(h, kernel, *bias):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream, h_again = recompute_after(upstream, h)
            a = ops.gelu(h_again, approximate=False)
            grads = (ops.matmul(upstream, ops.transpose(kernel)) * _gelu_derivative(h_again),
                     ops.matmul(ops.transpose(a), upstream))
            return grads + ((ops.sum(upstream, axis=0),) if bias else ())

        return forward(h, kernel, *bias), grad

    return fn(h, kernel) if bias is None else fn(h, kernel, bias)


def gelu(x, training=None):
    """Exact (erf) GELU. `training` on TensorFlow and JAX: the same values, with a gradient that
    keeps only x (`_gelu_keeping_input`); inference keeps `ops.gelu`, which oneDNN fuses into fc1."""
    if in_form("gelu_as_erf"):  # this exact form: OpenVINO's GELU fusion matches it (tests/test_export.py)
        return 0.5 * x * (1.0 + ops.erf(x * ops.cast(1.0 / math.sqrt(2.0), x.dtype)))
    if training and keras.backend.backend() in TRAINING_FORM_BACKENDS:
        return _gelu_keeping_input(x)
    return ops.gelu(x, approximate=False)


# timm's act_layer names -> the function (timm.layers.create_act), each called as f(x, training=...)
ACTIVATIONS = {
    "gelu": gelu,
    "gelu_tanh": lambda x, training=None: ops.gelu(x, approximate=True),
    "quick_gelu": lambda x, training=None: x * ops.sigmoid(ops.cast(1.702, x.dtype) * x),  # CLIP's
    "silu": lambda x, training=None: ops.silu(x),
}


def activation(name):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}: choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


@register
class Mlp(SharedDtypePolicy, keras.layers.Layer):
    """fc1 -> activation (exact GELU unless `act` names another) -> fc2, timm's `Mlp`.
    `bias=False`: neither Dense has one (timm's proj_bias=False); `norm_layer` ("layernorm" or
    "rmsnorm"): a norm of the hidden units before fc2 (timm's scale_mlp_norm, BEiT-3)."""

    def __init__(self, hidden_dim, out_dim, drop=0.0, act="gelu", bias=True, norm_layer=None, norm_eps=1e-6,
                 **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = int(hidden_dim)
        self.out_dim = int(out_dim)
        self.drop = float(drop)
        self.act = str(act)
        self.bias = bool(bias)
        self.norm_layer = norm_layer
        self.norm_eps = float(norm_eps)
        self.act_fn = activation(self.act)
        self._make_fc1()
        self.norm = layer_norm(self.norm_eps, "norm", norm_layer) if norm_layer else None
        self.fc2 = dense(self.out_dim, "fc2", use_bias=self.bias)
        self.dropout = keras.layers.Dropout(self.drop)

    @property
    def fc2_width(self):
        return self.hidden_dim

    def _make_fc1(self):
        self.fc1 = dense(self.hidden_dim, "fc1", use_bias=self.bias)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        for layer in self._fc1_layers():
            layer.build(input_shape)
        if self.norm is not None:
            self.norm.build(input_shape[:-1] + (self.fc2_width,))
        self.fc2.build(input_shape[:-1] + (self.fc2_width,))

    def _fc1_layers(self):
        return (self.fc1,)

    def _hidden(self, x, training=None):
        """(rows, D) -> the activated hidden units that go into fc2."""
        return self.act_fn(self.fc1(x), training=training)

    def call(self, x, training=None):
        # on (rows, channels): fc1 + bias + GELU is then one fused oneDNN kernel (see attention.py)
        if len(x.shape) == 2:
            return self._rows(x, training)
        shape = ops.shape(x)[:-1] if None in x.shape[:-1] else x.shape[:-1]
        y = self._rows(ops.reshape(x, (-1, x.shape[-1])), training)
        return ops.reshape(y, tuple(shape) + (self.out_dim,))

    def _recomputes_gelu(self, training):
        """In training on TensorFlow and JAX, a plain GELU MLP runs GELU and fc2 as `gelu_dense`, which keeps
        fc1's output only (not what a dropout, a hidden norm or a quantized or LoRA fc2 needs)."""
        fc2 = self.fc2
        return (bool(training) and keras.backend.backend() in TRAINING_FORM_BACKENDS and self.act == "gelu"
                and type(self)._hidden is Mlp._hidden and self.norm is None and self.drop == 0
                and fc2.quantization_mode is None and not fc2.lora_enabled)

    def _rows(self, x, training):
        if self._recomputes_gelu(training):
            h = self.fc1(x)
            bias = ops.cast(self.fc2.bias, h.dtype) if self.bias else None
            return gelu_dense(h, ops.cast(self.fc2.kernel, h.dtype), bias)
        x = self.dropout(self._hidden(x, training), training=training)
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(self.fc2(x), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape[:-1] + (self.out_dim,)

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim, "out_dim": self.out_dim, "drop": self.drop,
                "act": self.act, "bias": self.bias, "norm_layer": self.norm_layer, "norm_eps": self.norm_eps}


def _gate_init(tail_start):
    """Kernel initialiser of timm's GLU MLPs: N(0, .02) (dense_init), except the columns from
    `tail_start` on, which start near zero (N(0, 1e-6)); `tail_start=0`: all of them."""
    def init(shape, dtype=None):
        head = dense_init()((shape[0], tail_start), dtype=dtype) if tail_start else None
        tail = keras.random.normal((shape[0], shape[1] - tail_start), stddev=1e-6, dtype=dtype)
        return tail if head is None else ops.concatenate([head, tail], axis=1)
    return init


def _ones_from(start):
    """Bias initialiser: zeros, then ones from column `start` (timm's gate bias of 1)."""
    def init(shape, dtype=None):
        return ops.concatenate([ops.zeros((start,), dtype), ops.ones((shape[0] - start,), dtype)])
    return init


@register
class GluMlp(Mlp):
    """timm's `GluMlp` (SwiGLUPacked in DINOv2-giant): fc1 to `hidden_dim`, split in halves, one
    half gated by act(the other): `act(first) * second` (gate_last=False, as DINOv2), else
    `first * act(second)`; then fc2 from hidden_dim / 2. Starts as timm's `init_weights`:
    the second half of fc1 near zero (N(0, 1e-6)) with bias 1."""

    def __init__(self, hidden_dim, out_dim, drop=0.0, act="silu", bias=True, norm_layer=None, norm_eps=1e-6,
                 gate_last=False, **kwargs):
        if int(hidden_dim) % 2:
            raise ValueError(f"GluMlp: hidden_dim must be even, got {hidden_dim}")
        self.gate_last = bool(gate_last)
        super().__init__(hidden_dim, out_dim, drop=drop, act=act, bias=bias, norm_layer=norm_layer, norm_eps=norm_eps,
                         **kwargs)

    @property
    def fc2_width(self):
        return self.hidden_dim // 2

    def _make_fc1(self):
        half = self.hidden_dim // 2
        self.fc1 = dense(self.hidden_dim, "fc1", use_bias=self.bias, kernel_initializer=_gate_init(half),
                         bias_initializer=_ones_from(half))

    def _hidden(self, x, training=None):
        x = self.fc1(x)
        half = self.hidden_dim // 2
        a, b = x[:, :half], x[:, half:]
        return a * self.act_fn(b, training=training) if self.gate_last else self.act_fn(a, training=training) * b

    def get_config(self):
        return {**super().get_config(), "gate_last": self.gate_last}


@register
class SwiGLU(Mlp):
    """timm's `SwiGLU` (AIMv2): `act(fc1_g(x)) * fc1_x(x)`, then fc2; act is SiLU in the
    checkpoints. Starts as timm's `init_weights`: fc1_g near zero (N(0, 1e-6)) with bias 1."""

    def __init__(self, hidden_dim, out_dim, drop=0.0, act="silu", bias=True, norm_layer=None, norm_eps=1e-6, **kwargs):
        super().__init__(hidden_dim, out_dim, drop=drop, act=act, bias=bias, norm_layer=norm_layer, norm_eps=norm_eps,
                         **kwargs)

    def _make_fc1(self):
        self.fc1_g = dense(self.hidden_dim, "fc1_g", use_bias=self.bias, kernel_initializer=_gate_init(0),
                           bias_initializer="ones")
        self.fc1_x = dense(self.hidden_dim, "fc1_x", use_bias=self.bias)

    def _fc1_layers(self):
        return (self.fc1_g, self.fc1_x)

    def _hidden(self, x, training=None):
        return self.act_fn(self.fc1_g(x), training=training) * self.fc1_x(x)


# timm's attn_layer names -> the attention ("" is timm's spelling of "attn")
ATTN_LAYERS = {"attn": Attention, "diff": DiffAttention}

# timm's mlp_layer -> the layer: "glu" is GluMlp with the gate first (SwiGLUPacked), "swiglu" SwiGLU
MLP_LAYERS = {"mlp": Mlp, "glu": GluMlp, "swiglu": SwiGLU}


@register
class LayerScale(KeepsFloat, keras.layers.Layer):
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
class DropPath(KeepsFloat, keras.layers.Layer):
    """Stochastic depth: drops the whole residual branch per sample while training and
    rescales the kept ones by 1 / (1 - rate). Identity at inference."""

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath: rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if self.rate > 0 else None
        # no weights to build, and the blocks skip the call at rate 0: built from the start, so that
        # `model.quantize()` (which wants every layer built) does not stop here
        self.built = True

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
    LayerScales only with `init_values` (timm's `Block`). The options are timm's Block
    keywords: `qk_norm`, `proj_bias` (attention proj and MLP), `scale_attn_norm` /
    `scale_mlp_norm` (BEiT-3's inner norms), `norm_layer` ("layernorm" or "rmsnorm"),
    `act` (timm's act_layer), `mlp_layer` (a MLP_LAYERS key) and `attn_layer` ("attn", or
    "diff": DiffAttention, whose lambda_init depends on `block_index`, timm's `depth`). The
    subclasses are timm's other `block_fn`s, with the same options."""

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
        qk_norm=False,
        proj_bias=True,
        scale_attn_norm=False,
        scale_mlp_norm=False,
        norm_layer="layernorm",
        attn_layer="attn",
        block_index=0,
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
        self.qk_norm = bool(qk_norm)
        self.proj_bias = bool(proj_bias)
        self.scale_attn_norm = bool(scale_attn_norm)
        self.scale_mlp_norm = bool(scale_mlp_norm)
        self.norm_layer = str(norm_layer)
        self.attn_layer = str(attn_layer)
        self.block_index = int(block_index)
        if self.attn_layer not in ATTN_LAYERS:
            raise ValueError(f"attn_layer={attn_layer!r}: choose one of {', '.join(ATTN_LAYERS)}")
        if self.mlp_layer not in MLP_LAYERS:
            raise ValueError(f"mlp_layer={mlp_layer!r}: choose one of {', '.join(MLP_LAYERS)}")
        self.drop_path_layer = DropPath(self.drop_path)
        self._make_layers()

    # the sub-layers, with the block's options (timm's names)
    def _norm(self, name, gamma_init=1.0):
        return layer_norm(self.norm_eps, name, self.norm_layer, gamma_init=gamma_init)

    def _attention(self, name="attn"):
        extra = {"block_index": self.block_index} if self.attn_layer == "diff" else {}
        return ATTN_LAYERS[self.attn_layer](
            self.dim, self.num_heads, qkv_bias=self.qkv_bias, attn_drop=self.attn_drop, proj_drop=self.proj_drop,
            proj_bias=self.proj_bias, qk_norm=self.qk_norm, scale_norm=self.scale_attn_norm, norm_layer=self.norm_layer,
            norm_eps=self.norm_eps, name=name, **extra)

    def _mlp(self, name="mlp"):
        return MLP_LAYERS[self.mlp_layer](int(self.dim * self.mlp_ratio), self.dim, drop=self.proj_drop, act=self.act,
                                          bias=self.proj_bias, norm_eps=self.norm_eps, name=name,
                                          norm_layer=self.norm_layer if self.scale_mlp_norm else None)

    def _layer_scale(self, name):
        return LayerScale(self.init_values, name=name) if self.init_values is not None else None

    def _make_layers(self):
        self.norm1 = self._norm("norm1")
        self.attn = self._attention()
        self.ls1 = self._layer_scale("ls1")
        self.norm2 = self._norm("norm2")
        self.mlp = self._mlp()
        self.ls2 = self._layer_scale("ls2")

    def _sublayers(self):
        return (self.norm1, self.attn, self.ls1, self.norm2, self.mlp, self.ls2)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        for layer in self._sublayers():
            if layer is not None:
                layer.build(input_shape)

    def call(self, x, training=None, return_attention_scores=False):
        rows, t = tokens_2d(x)  # the residual stream as (B*T, D) rows: see attention.py
        rows, weights = self._rows(rows, t, training, return_attention_scores)
        x = ops.reshape(rows, (-1, t, self.dim))
        return (x, weights) if return_attention_scores else x

    def _rows(self, rows, t, training, return_attention_scores):
        """(B*T, D) rows -> (rows after the block, attention weights or None)."""
        y = self.attn(self.norm1(rows), training=training, return_attention_scores=return_attention_scores, tokens=t)
        weights = None
        if return_attention_scores:
            y, weights = y
        if self.ls1 is not None:
            y = self.ls1(y)
        rows = add_residual(rows, y, t, self.drop_path_layer, training)
        y = self.mlp(self.norm2(rows), training=training)
        if self.ls2 is not None:
            y = self.ls2(y)
        return add_residual(rows, y, t, self.drop_path_layer, training), weights

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
            "qk_norm": self.qk_norm,
            "proj_bias": self.proj_bias,
            "scale_attn_norm": self.scale_attn_norm,
            "scale_mlp_norm": self.scale_mlp_norm,
            "norm_layer": self.norm_layer,
            "attn_layer": self.attn_layer,
            "block_index": self.block_index,
        }


@register
class ResPostBlock(TransformerBlock):
    """timm's `ResPostBlock` (res-post-norm, `vit_base_patch16_rpn_224`): the norms after the
    branches, `x + norm1(attn(x))`, then `x + norm2(mlp(x))`; no LayerScale, but with
    `init_values` the norms' scales start at that value."""

    def _make_layers(self):
        start = 1.0 if self.init_values is None else self.init_values
        self.attn = self._attention()
        self.norm1 = self._norm("norm1", gamma_init=start)
        self.mlp = self._mlp()
        self.norm2 = self._norm("norm2", gamma_init=start)
        self.ls1 = self.ls2 = None

    def _rows(self, rows, t, training, return_attention_scores):
        y = self.attn(rows, training=training, return_attention_scores=return_attention_scores, tokens=t)
        weights = None
        if return_attention_scores:
            y, weights = y
        rows = add_residual(rows, self.norm1(y), t, self.drop_path_layer, training)
        rows = add_residual(rows, self.norm2(self.mlp(rows, training=training)), t, self.drop_path_layer, training)
        return rows, weights


class Branch(SharedDtypePolicy, keras.layers.Layer):
    """One branch of a ParallelThingsBlock, `ls(f(norm(x)))` with f its `attn` or its `mlp`
    (timm's `nn.Sequential(norm, attn | mlp, ls, drop_path)`)."""

    def __init__(self, norm, attn=None, mlp=None, ls=None, **kwargs):
        super().__init__(**kwargs)
        self.norm, self.attn, self.mlp, self.ls = norm, attn, mlp, ls

    def build(self, input_shape):
        for layer in (self.norm, self.attn, self.mlp, self.ls):
            if layer is not None:
                layer.build(input_shape)

    def call(self, rows, tokens, training=None, return_attention_scores=False):
        y, weights = self.norm(rows), None
        if self.attn is not None:
            y = self.attn(y, training=training, return_attention_scores=return_attention_scores, tokens=tokens)
            if return_attention_scores:
                y, weights = y
        else:
            y = self.mlp(y, training=training)
        if self.ls is not None:
            y = self.ls(y)
        return y, weights


@register
class ParallelThingsBlock(TransformerBlock):
    """timm's `ParallelThingsBlock` (`vit_*_18x2_224`, "Three things everyone should know about
    ViTs"): `num_parallel` attention branches on the same input, summed into the residual,
    then as many MLP branches. With return_attention_scores, the branches' mean weights."""

    def __init__(self, dim, num_heads, num_parallel=2, **kwargs):
        self.num_parallel = int(num_parallel)
        super().__init__(dim, num_heads, **kwargs)

    def _make_layers(self):
        n = self.num_parallel
        self.attns = [Branch(self._norm("norm"), attn=self._attention(), ls=self._layer_scale("ls"), name=f"attns_{i}")
                      for i in range(n)]
        self.ffns = [Branch(self._norm("norm"), mlp=self._mlp(), ls=self._layer_scale("ls"), name=f"ffns_{i}")
                     for i in range(n)]

    def _sublayers(self):
        return (*self.attns, *self.ffns)

    def _rows(self, rows, t, training, return_attention_scores):
        outs = [branch(rows, tokens=t, training=training, return_attention_scores=return_attention_scores)
                for branch in self.attns]
        for y, _ in outs:
            rows = add_residual(rows, y, t, self.drop_path_layer, training)
        weights = None
        if return_attention_scores:
            weights = ops.mean(ops.stack([w for _, w in outs]), axis=0)
        ys = [branch(rows, tokens=t, training=training)[0] for branch in self.ffns]
        for y in ys:
            rows = add_residual(rows, y, t, self.drop_path_layer, training)
        return rows, weights

    def get_config(self):
        return {**super().get_config(), "num_parallel": self.num_parallel}


@register
class ParallelScalingBlock(TransformerBlock):
    """timm's `ParallelScalingBlock` (ViT-22B style, the `xp` and `pwee` ViTs): one norm, one
    fused `in_proj` to [MLP hidden, q, k, v] (its bias, or `mlp_bias` when qkv_bias=False, for
    the MLP part), attention and MLP in parallel, `attn_out_proj(attn) + mlp_out_proj(act(mlp))`
    added through `ls`. The MLP is always timm's plain one (mlp_layer unused)."""

    def _make_layers(self):
        self.hidden = int(self.mlp_ratio * self.dim)
        if self.dim % self.num_heads:
            raise ValueError(f"ParallelScalingBlock: dim {self.dim} is not divisible by num_heads {self.num_heads}")
        self.head_dim = self.dim // self.num_heads
        self.act_fn = activation(self.act)
        self.in_norm = self._norm("in_norm")
        self.in_proj = dense(self.hidden + 3 * self.dim, "in_proj", use_bias=self.qkv_bias)
        self.q_norm = self._norm("q_norm") if self.qk_norm else None
        self.k_norm = self._norm("k_norm") if self.qk_norm else None
        self._make_out_proj()
        self.ls = self._layer_scale("ls")
        self.attn_dropout = keras.layers.Dropout(self.attn_drop)
        self.dropout = keras.layers.Dropout(self.proj_drop)

    def _make_out_proj(self):
        self.attn_out_proj = dense(self.dim, "attn_out_proj", use_bias=self.proj_bias)
        self.mlp_out_proj = dense(self.dim, "mlp_out_proj", use_bias=self.proj_bias)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        lead = input_shape[:-1]
        self.in_norm.build(input_shape)
        self.in_proj.build(input_shape)
        self.mlp_bias = None if self.qkv_bias else self.add_weight(shape=(self.hidden,), initializer="zeros",
                                                                   name="mlp_bias")
        self._build_attention(lead)
        if self.ls is not None:
            self.ls.build(input_shape)

    def _build_attention(self, lead):
        for norm in (self.q_norm, self.k_norm):
            if norm is not None:
                norm.build(lead + (self.head_dim,))
        self.attn_out_proj.build(lead + (self.dim,))
        self.mlp_out_proj.build(lead + (self.hidden,))

    def _rows(self, rows, t, training, return_attention_scores):
        y = self.in_proj(self.in_norm(rows))
        x_mlp = y[:, : self.hidden]
        if self.mlp_bias is not None:
            x_mlp = x_mlp + ops.cast(self.mlp_bias, x_mlp.dtype)
        q, k, v = head_groups(y[:, self.hidden :], t, 3, self.num_heads)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        needs_weights = return_attention_scores or bool(training and self.attn_drop > 0)
        out, weights = attend(q, k, v, self.head_dim**-0.5, needs_weights, self.attn_dropout, training)
        x_mlp = self.dropout(self.act_fn(x_mlp, training=training), training=training)
        y = self.attn_out_proj(merge_heads(out, self.dim)) + self.mlp_out_proj(x_mlp)
        if self.ls is not None:
            y = self.ls(y)
        return add_residual(rows, y, t, self.drop_path_layer, training), weights


@register
class DiffParallelScalingBlock(DiffLambdas, ParallelScalingBlock):
    """timm's `DiffParallelScalingBlock` (`vit_dpwee_patch16_reg1_gap_256`): ParallelScalingBlock
    with differential attention (`DiffLambdas`: half-width q/k heads, `sub_norm`, lambdas set
    by `block_index`) and one fused `out_proj` of [attention, MLP]."""

    def _make_out_proj(self):
        self.out_proj = dense(self.dim, "out_proj", use_bias=self.proj_bias)
        self._make_diff(self.block_index)

    def _build_attention(self, lead):
        for norm in (self.q_norm, self.k_norm):
            if norm is not None:
                norm.build(lead + (self.half_dim,))
        self._build_diff(lead)
        self.out_proj.build(lead + (self.dim + self.hidden,))

    def _rows(self, rows, t, training, return_attention_scores):
        y = self.in_proj(self.in_norm(rows))
        x_mlp = y[:, : self.hidden]
        if self.mlp_bias is not None:
            x_mlp = x_mlp + ops.cast(self.mlp_bias, x_mlp.dtype)
        q, k = self._diff_qk(y[:, self.hidden : self.hidden + 2 * self.dim], t)
        v = heads_first(y[:, self.hidden + 2 * self.dim :], t, 1, self.num_heads)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        needs_weights = return_attention_scores or bool(training and self.attn_drop > 0)
        out, weights = self._diff_mix(q, k, v, needs_weights, self.attn_dropout, training)
        x_mlp = self.dropout(self.act_fn(x_mlp, training=training), training=training)
        y = self.out_proj(ops.concatenate([merge_heads(out, self.dim), x_mlp], axis=-1))
        if self.ls is not None:
            y = self.ls(y)
        return add_residual(rows, y, t, self.drop_path_layer, training), weights


# timm's block_fn names -> the block
BLOCKS = {"Block": TransformerBlock, "ResPostBlock": ResPostBlock, "ParallelScalingBlock": ParallelScalingBlock,
          "ParallelThingsBlock": ParallelThingsBlock, "DiffParallelScalingBlock": DiffParallelScalingBlock}


@register
class AttentionPoolLatent(SharedDtypePolicy, keras.layers.Layer):
    """timm's `AttentionPoolLatent` (global_pool="map", SigLIP): one learned latent query attends
    over the tokens after the `num_prefix_tokens` leading ones, then `proj` and a residual MLP
    (`x + mlp(norm(x))`): (B, T, D) -> (B, D). Written with rank-4 tensors only."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, num_prefix_tokens=0, norm_eps=1e-6, act="gelu",
                 norm_layer="layernorm", **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.num_heads = int(num_heads)
        self.mlp_ratio = float(mlp_ratio)
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.norm_eps = float(norm_eps)
        self.act = str(act)
        self.norm_layer = str(norm_layer)
        self.q = dense(self.dim, "q")
        self.kv = dense(2 * self.dim, "kv")
        self.proj = dense(self.dim, "proj")
        self.norm = layer_norm(self.norm_eps, "norm", self.norm_layer)
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
                "num_prefix_tokens": self.num_prefix_tokens, "norm_eps": self.norm_eps, "act": self.act,
                "norm_layer": self.norm_layer}
