"""Shared plumbing for keras_vitnt layers: serialisation registration, initialisers
that match timm's, and the mapping of each layer's weights to timm tensor names."""

import keras

PACKAGE = "keras_vitnt"


def register(cls):
    """Register a layer class for `.keras` save/load under the package name."""
    return keras.saving.register_keras_serializable(package=PACKAGE)(cls)


def dense_init():
    """timm's `trunc_normal_(std=.02)` for Linear weights."""
    return keras.initializers.TruncatedNormal(stddev=0.02)


def torch_conv_init():
    """PyTorch's default Conv2d init (kaiming_uniform with a=sqrt(5)): U(+-1/sqrt(fan_in))."""
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def conv(filters, kernel_size, strides, name="proj"):
    """A "valid" Conv2D initialised as PyTorch's (padding, where needed, is explicit)."""
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="valid",
        kernel_initializer=torch_conv_init(),
        bias_initializer="zeros",
        name=name,
    )


def layer_norm(epsilon, name):
    """LayerNormalization with an explicit epsilon (Keras's default 1e-3 is never right here)."""
    return keras.layers.LayerNormalization(epsilon=epsilon, name=name)


def dense(units, name, use_bias=True):
    return keras.layers.Dense(
        units, use_bias=use_bias, kernel_initializer=dense_init(), bias_initializer="zeros", name=name
    )


def join(prefix, name):
    return f"{prefix}.{name}" if prefix else name


class TimmMapped:
    """Mixin: a layer that knows the timm state-dict names of its weights.

    `timm_children` names the sub-layers (attribute name == timm module name); the
    converter walks them. Layers that own weights directly override `timm_params`.
    """

    timm_children = ()

    def timm_params(self, prefix):
        """Yield (timm_key, keras_variable, layout) for every weight of this layer."""
        from keras_vitnt.weights.convert import layer_timm_params  # local: avoids an import cycle

        for child in self.timm_children:
            yield from layer_timm_params(getattr(self, child), join(prefix, child))
