"""Keras dtype policies: a scoped global policy, and the float32 twin of a mixed-precision
model (what the exporters convert: LiteRT's builtin ops and ONNX have no bfloat16 kernels)."""

import contextlib
import logging

log = logging.getLogger("keras_vitnt")


@contextlib.contextmanager
def dtype_policy(policy):
    """Build under Keras's global dtype policy `policy` (None: leave it), then restore it."""
    import keras

    previous = keras.config.dtype_policy().name
    if policy:
        keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def model_policies(model):
    """The dtype policy names used by a model's layers (nested ones included)."""
    return sorted({layer.dtype_policy.name for layer in model._flatten_layers(include_self=False)})


def policy_copy(model, policy):
    """A copy of `model` rebuilt with every layer under the dtype policy `policy` ("float32",
    "mixed_bfloat16", ...) and the same weights (mixed-precision variables are float32, so
    the values carry over exactly)."""
    import keras

    def clone(layer):
        config = layer.get_config()
        if "dtype" in config:
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    with dtype_policy(policy):
        copy = keras.models.clone_model(model, clone_function=clone, recursive=True)  # nested models too
    copy.set_weights(model.get_weights())
    return copy


def float32_copy(model):
    """`model` itself if it computes in float32 throughout; else a copy rebuilt with every layer
    in float32 and the same weights (mixed-precision variables are float32 already, so the
    copy holds exactly the trained values)."""
    policies = model_policies(model)
    if policies == ["float32"]:
        return model
    quantized = keras_quantized(model)
    if quantized:
        raise ValueError(f"{model.name} was quantized with model.quantize() ({', '.join(quantized)}): "
                         "its int8 weights cannot be converted back to float. Export the float model instead, "
                         "with quantization= (e.g. 'dynamic_int8' or 'int16x8') for LiteRT")
    copy = policy_copy(model, "float32")
    if model_policies(copy) != ["float32"]:
        raise ValueError(f"could not rebuild {model.name} in float32 for export (policies left: "
                         f"{model_policies(copy)}); build it under the float32 policy and load its weights")
    log.info("%s computes in %s: exporting its float32 copy (same weights)", model.name, ", ".join(policies))
    return copy


def keras_quantized(model):
    """The quantization modes of a model's layers (`model.quantize(...)`), sorted; empty if none."""
    return sorted({layer.quantization_mode for layer in model._flatten_layers(include_self=False)
                   if layer.quantization_mode is not None})
