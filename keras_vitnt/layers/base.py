"""Shared plumbing for keras_vitnt layers: serialisation registration, initialisers that
match timm's, and the dtype-policy mixin for nested layers.

Layer and sub-layer attribute names mirror timm's module names (`attn.qkv`, `norm1_proj`);
which timm tensor is which weight is not known to the layers but to
`keras_vitnt.weights.timm_map`."""

import contextlib
import math
import threading

import keras
from keras import ops

PACKAGE = "keras_vitnt"


def register(cls):
    """Register a layer class for `.keras` save/load under the package name."""
    return keras.saving.register_keras_serializable(package=PACKAGE)(cls)


def timm_normal(stddev):
    """timm's `trunc_normal_(std=stddev)` (and `normal_`): timm cuts at +-2 absolute, which for
    stddev <= 0.02 is >= 100 std out, so it is the plain normal. Keras's TruncatedNormal cuts
    at +-2 std and so draws a narrower distribution (std 0.88 * stddev)."""
    if stddev > 0.1:
        raise ValueError(f"timm_normal: the cut at +-2 matters for stddev {stddev}; only <= 0.1 is supported")
    return keras.initializers.RandomNormal(stddev=stddev)


def dense_init():
    """timm's `trunc_normal_(std=.02)` for Linear weights (biases start at zero)."""
    return timm_normal(0.02)


class KeepsFloat:
    """Mixin for layers that stay in float under `model.quantize(...)`: Keras quantizes Dense
    layers (every matmul of a ViT but the patch projection, attention's two batched matmuls
    aside); norms, embeddings, the patch convolution and weightless layers keep their dtype.
    A no-op `quantize` says so instead of Keras's warning that the method is missing."""

    def quantize(self, mode=None, type_check=True, config=None):
        """Nothing to quantize: this layer keeps its float weights and computation."""


@register
class TorchConv2D(KeepsFloat, keras.layers.Conv2D):
    """Conv2D initialised as PyTorch's `nn.Conv2d` (timm leaves its convs at that default):
    kernel and bias both U(+-1/sqrt(fan_in)), fan_in = in_channels * kh * kw. The bias bound
    needs the input channels, so the bias initialiser is set when the layer is built."""

    def build(self, input_shape):
        bound = 1.0 / math.sqrt(input_shape[-1] * math.prod(self.kernel_size))
        self.bias_initializer = keras.initializers.RandomUniform(-bound, bound)
        super().build(input_shape)


def conv(filters, kernel_size, strides, name="proj", use_bias=True):
    """A "valid" TorchConv2D (padding, where needed, is explicit)."""
    # kaiming_uniform(a=sqrt(5)): U(+-sqrt(6 / ((1 + 5) fan_in))) = U(+-1/sqrt(fan_in))
    kernel_init = keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")
    return TorchConv2D(filters, kernel_size, strides=strides, padding="valid", kernel_initializer=kernel_init,
                       use_bias=use_bias, name=name)


_FORMS = threading.local()


@contextlib.contextmanager
def traced_form(name):
    """While tracing inside this context, layers write one function in another, equal form that
    an export target needs (`in_form(name)` tells them): "gelu_as_erf", "square_as_mul"."""
    previous = getattr(_FORMS, name, False)
    setattr(_FORMS, name, True)
    try:
        yield
    finally:
        setattr(_FORMS, name, previous)


def in_form(name):
    return getattr(_FORMS, name, False)


def square_as_mul():
    """The norms square with `x * x` instead of `ops.square`. LiteRT fuses square(x - mean) into
    SQUARED_DIFFERENCE, which its runtime has no int16 kernel for; MUL it has (the int16x8
    export traces in this form)."""
    return traced_form("square_as_mul")


def layernorm_as_mvn():
    """LayerNorm written as `(x - mean) / sqrt(var + eps) * gamma + beta`, the form OpenVINO's
    converter fuses into its MVN op (the OpenVINO export traces in this form)."""
    return traced_form("layernorm_as_mvn")


def recompute_after(upstream, *tensors):
    """`tensors` plus zeros taken from the backward pass's `upstream` gradient: for a gradient that
    recomputes a forward value from them. XLA's CSE merges a recomputation from the very same
    tensors with the forward computation, which then stays alive until the backward pass (its
    opt-barrier op is expanded away before CSE on CPU); `x + 0 * upstream[..., :1]` is a new value
    XLA cannot prove equal to x (0 * y is not 0 for every float) and cannot compute before the
    backward pass reaches it. One zero per row (the tensors share upstream's leading axes): a
    batch split across devices needs no exchange, an empty one works, and a non-finite gradient
    spreads only within its row. Returns (upstream, *tensors)."""
    zero = upstream[..., :1] * 0
    return (upstream, *(t + ops.cast(zero, t.dtype) for t in tensors))


def square(x):
    return x * x if in_form("square_as_mul") else ops.square(x)


@register
class LayerNorm(KeepsFloat, keras.layers.LayerNormalization):
    """keras.layers.LayerNormalization over the last axis, written as
    `(x - mean) * (rsqrt(var + eps) * gamma) + beta`: five passes over the tensor instead of
    the seven Keras's TF lowering takes (25% less time per call on ViT-S/16's tokens).
    On the PyTorch backend, torch's fused `layer_norm`. Like Keras, it computes in float32
    under a mixed policy. Other axes or options fall back to the parent."""

    def call(self, inputs):
        last = len(inputs.shape) - 1
        if self.axis not in (-1, last, [last], [-1]) or self.rms_scaling or not (self.center and self.scale):
            return super().call(inputs)
        x = ops.cast(inputs, "float32") if self.compute_dtype in ("float16", "bfloat16") else inputs
        if in_form("layernorm_as_mvn"):
            # the textbook form, axes as a 1-D list: OpenVINO fuses it into one MVN kernel (with a scalar axis
            # its MVN fusion fails; our form below it leaves as 5 passes, 30% of TNT-S's time there)
            xc = x - ops.mean(x, axis=(-1,), keepdims=True)
            std = ops.sqrt(ops.mean(ops.square(xc), axis=(-1,), keepdims=True) + ops.cast(self.epsilon, x.dtype))
            out = xc / std * ops.cast(self.gamma, x.dtype) + ops.cast(self.beta, x.dtype)
            return ops.cast(out, self.compute_dtype)
        if keras.backend.backend() == "torch":
            # PyTorch's fused kernel: autograd of the form below took a training step (AdamW, batch 16, Keras on
            # PyTorch, 2-core AVX2 EPYC) 7% longer for ViT-S/16 and 13% for TNT-S; inference the same
            import torch

            out = torch.nn.functional.layer_norm(x, (x.shape[-1],), ops.cast(self.gamma, x.dtype),
                                                 ops.cast(self.beta, x.dtype), self.epsilon)
            return ops.cast(out, self.compute_dtype)
        xc = x - ops.mean(x, axis=-1, keepdims=True)
        inv = ops.rsqrt(ops.mean(square(xc), axis=-1, keepdims=True) + ops.cast(self.epsilon, x.dtype))
        out = xc * (inv * ops.cast(self.gamma, x.dtype)) + ops.cast(self.beta, x.dtype)
        return ops.cast(out, self.compute_dtype)


@register
class RmsNorm(KeepsFloat, keras.layers.Layer):
    """timm's `RmsNorm`: `x * rsqrt(mean(x^2) + eps) * gamma` over the last axis, no centring
    and no bias (AIMv2, the `xp` ViTs). Computes in float32 under a mixed policy, as LayerNorm."""

    def __init__(self, epsilon=1e-6, gamma_init=1.0, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)
        self.gamma_init = float(gamma_init)

    def build(self, input_shape):
        self.gamma = self.add_weight(shape=(input_shape[-1],), initializer=keras.initializers.Constant(
            self.gamma_init), name="gamma", autocast=False)  # read in float32 under a mixed policy

    def call(self, inputs):
        x = ops.cast(inputs, "float32") if self.compute_dtype in ("float16", "bfloat16") else inputs
        inv = ops.rsqrt(ops.mean(square(x), axis=-1, keepdims=True) + ops.cast(self.epsilon, x.dtype))
        return ops.cast(x * (inv * ops.cast(self.gamma, x.dtype)), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon, "gamma_init": self.gamma_init}


# timm's norm_layer names (get_norm_layer's lower-case spelling) -> the layer
NORM_LAYERS = ("layernorm", "rmsnorm")


def layer_norm(epsilon, name, kind="layernorm", gamma_init=1.0):
    """timm's `norm_layer` with an explicit epsilon (Keras's default 1e-3 is never right here):
    `kind` "layernorm" (LayerNorm) or "rmsnorm" (RmsNorm); `gamma_init`: the scale's start
    (timm's ResPostBlock starts its norms at init_values)."""
    if kind == "rmsnorm":
        return RmsNorm(epsilon=epsilon, gamma_init=gamma_init, name=name)
    if kind != "layernorm":
        raise ValueError(f"norm_layer={kind!r}: choose one of {', '.join(NORM_LAYERS)}")
    gamma = "ones" if gamma_init == 1.0 else keras.initializers.Constant(gamma_init)
    return LayerNorm(epsilon=epsilon, gamma_initializer=gamma, name=name)


@register
class Dense(keras.layers.Dense):
    """keras.layers.Dense (same weights, options, quantization and LoRA), which on the PyTorch
    backend computes `x @ kernel + bias` as torch's `linear` (one `addmm`, the bias added by the
    matmul; Keras's Dense takes a matmul and an add, whose backward pass is one more op too).
    With attention's torch forms (`attend`, `head_groups`): Keras's AdamW step on PyTorch 1.01-1.05x
    (ViT-S/16) and 1.06x (TNT-S) as fast, inference 1.05x / 1.08x (batch 16, 2-core AVX2 EPYC;
    benchmarks/torch_forms.py). Other backends: the parent's call."""

    def call(self, inputs, training=None):
        if keras.backend.backend() != "torch":
            return super().call(inputs, training=training)
        import torch

        kernel = ops.convert_to_tensor(self.kernel)  # the autocast (and LoRA-merged) kernel
        bias = None if self.bias is None else ops.convert_to_tensor(self.bias)
        x = torch.nn.functional.linear(inputs, kernel.t(), bias)
        return self.activation(x) if self.activation is not None else x

    def quantize(self, mode=None, type_check=True, config=None):
        """Keras's Dense.quantize, which refuses subclasses (their call may differ): this one's quantized
        call is Keras's own (`quantized_call` does not go through `call`). Subclasses of it are refused
        as Keras refuses them."""
        if type_check and type(self) is not Dense:
            raise self._not_implemented_error(self.quantize)
        super().quantize(mode, type_check=False, config=config)


def dense(units, name, use_bias=True, kernel_initializer=None, bias_initializer="zeros"):
    """The package's Dense, initialised as timm's Linear layers unless told otherwise."""
    return Dense(units, use_bias=use_bias, kernel_initializer=kernel_initializer or dense_init(),
                 bias_initializer=bias_initializer, name=name)


class SharedDtypePolicy:
    """Mixin for layers made of sub-layers: each sub-layer assigned as an attribute takes the
    outer layer's dtype policy, as Keras's own nested layers do. Without it a model saved under
    `mixed_bfloat16` and loaded in a float32 process would mix bfloat16 and float32 tensors
    (the outer layer's policy comes from its config, the sub-layers' from the global one)."""

    def __setattr__(self, name, value):
        if getattr(self, "_dtype_policy", None) is not None:
            # a layer, or a list of them (ParallelThingsBlock's branches)
            items = value if isinstance(value, (list, tuple)) else (value,)
            for item in items:
                if isinstance(item, keras.layers.Layer):
                    for layer in item._flatten_layers(include_self=True):  # its own sub-layers too
                        layer.dtype_policy = self.dtype_policy
        super().__setattr__(name, value)

    # `model.quantize(...)` (Keras's int8 / int4 / float8) turns the Dense layers inside this layer
    # into quantized ones. The sub-layers are made by __init__, not by the config, so the config
    # records their quantized policies and from_config sets them before the build: a saved
    # quantized model loads with its int8 variables instead of failing on their shapes.
    def get_config(self):
        config = super().get_config()
        quantized = {path: keras.dtype_policies.serialize(layer.dtype_policy)
                     for path, layer in sublayer_paths(self) if layer.quantization_mode is not None}
        if quantized:
            config["quantized_sublayers"] = quantized
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        quantized = config.pop("quantized_sublayers", None) or {}
        layer = super().from_config(config)
        paths = dict(sublayer_paths(layer))
        for path, policy in quantized.items():
            if path not in paths:
                raise ValueError(f"{cls.__name__} {config.get('name')!r}: the saved config has a quantized sub-layer "
                                 f"{path!r} this version does not make; save the model again with this version")
            paths[path].dtype_policy = keras.dtype_policies.deserialize(policy)
        return layer


def sublayer_paths(layer, prefix=""):
    """(relative path, sub-layer) for every layer nested in `layer`, depth first in tracking
    order: "attn/qkv", "mlp/fc1", "attns/0/attn/qkv" (branches in a list take their index)."""
    seen = {}
    for sub in layer._layers:
        key = prefix + sub.name
        if key in seen:  # names are unique among a layer's own sub-layers; keep paths unique anyway
            seen[key] += 1
            key = f"{key}#{seen[key]}"
        else:
            seen[key] = 0
        yield key, sub
        yield from sublayer_paths(sub, key + "/")

