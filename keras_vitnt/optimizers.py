"""Optimizers of the fine-tuning recipe that `.keras` files refer to.

Imported with the package (like the layers), so that a model saved with its optimizer
(`keras-vitnt train ...`) loads with plain `keras.models.load_model` after
`import keras_vitnt`, in any process and on any backend.
"""

import re

import keras
from keras import ops

# the model's top-level layers whose weights sit below block 0 (layer id 0): timm's "stem" group
EMBEDDING_LAYERS = ("patch_embed", "cls_token", "pos_embed", "pixel_embed", "patch_pos", "preprocess", "norm_pre")


def layer_id(path, depth):
    """The layer id of a weight for layer-wise learning-rate decay, as timm groups VisionTransformer's and
    TNT's parameters (`group_matcher`, `timm.optim.param_groups_layer_decay`): 0 for the embeddings (class,
    register and distillation tokens, position embeddings, patch/pixel embeddings, the pre-norm), i + 1 for
    block i, `depth` for the final norm (timm keeps it with the last block), depth + 1 for what follows it
    (fc_norm, the attention pool, the heads). (A timm model without a head, num_classes=0, counts one
    layer fewer: its top layer is `depth`; the recipe's models always have one.)"""
    m = re.match(r"blocks_(\d+)/", path)
    if m:
        return int(m.group(1)) + 1
    top = path.split("/")[0]
    if top in EMBEDDING_LAYERS:
        return 0
    return depth if top == "norm" else depth + 1


@keras.saving.register_keras_serializable(package="keras_vitnt")
class AdamW(keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` (the same arguments, the same update, the same numbers: Keras's own
    PyTorch AdamW's to the bit) whose update on the PyTorch backend goes one variable at a time, in
    place, as `torch.optim.AdamW` does on CPU (its default there).

    Keras's PyTorch AdamW updates the whole list of variables with `torch._foreach_*` ops, which
    allocate a model-sized temporary list for each of g*g, m*alpha, sqrt(v) + eps and their quotient:
    its update of ViT-S/16's 22M weights took 207-339 ms against 64-85 ms this way (torch.optim.AdamW:
    58-73 ms), TNT-S's 261-366 against 95-120 ms (five runs of 11-15 interleaved rounds, 2 threads, AMD
    EPYC; benchmarks/torch_forms.py --kinds update), out of a 4-8 s training step at batch 16.
    On TensorFlow and JAX this is Keras's AdamW itself; on PyTorch with the weights on a GPU (where
    torch's own AdamW takes the list form too) or with `amsgrad=True`, Keras's PyTorch update runs.
    The recipe (`keras_vitnt.train`) trains with it.

    Two arguments beyond Keras's, both saved with the optimizer (Keras's `exclude_from_weight_decay`
    is not: a model reloaded from a `.keras` file would go on decaying what was excluded):
    `weight_decay_exclude_names`: variable names (regular expressions searched in `variable.name`; Keras
    searches the whole variable path on TensorFlow, e.g. "cls_token/reg_token", the bare name on JAX and
    PyTorch) to exclude from weight decay, what `exclude_from_weight_decay(var_names=...)` sets (which
    also records them); `weight_decay_exclude_1d`: also exclude every variable of at most one dimension (biases, norm
    scales, LayerScale), timm's `weight_decay_exclude_1d`."""

    def __init__(self, *args, weight_decay_exclude_names=None, weight_decay_exclude_1d=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_decay_exclude_1d = bool(weight_decay_exclude_1d)
        self._exclude_names = ()
        if weight_decay_exclude_names:
            self.exclude_from_weight_decay(var_names=weight_decay_exclude_names)

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        super().exclude_from_weight_decay(var_list=var_list, var_names=var_names)
        self._exclude_names = tuple(var_names or ())

    def _use_weight_decay(self, variable):
        if self.weight_decay_exclude_1d and len(variable.shape) <= 1:
            return False
        return super()._use_weight_decay(variable)

    def get_config(self):
        return {**super().get_config(), "weight_decay_exclude_names": list(self._exclude_names),
                "weight_decay_exclude_1d": self.weight_decay_exclude_1d}

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if keras.backend.backend() != "torch":
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        if not self.amsgrad and all(v.value.device.type == "cpu" for v in trainable_variables):
            return _torch_adam_update(self, grads, trainable_variables, learning_rate)
        return self._keras_torch_update(grads, trainable_variables, learning_rate)

    def _keras_torch_update(self, grads, trainable_variables, learning_rate):
        """Keras's own PyTorch AdamW update (its list form)."""
        import torch
        from keras.src.backend.torch.optimizers.torch_adam import Adam

        with torch.no_grad():
            Adam._parallel_update_step(self, grads, trainable_variables, learning_rate)

    # True: weight decay runs in each variable's update at its scaled learning rate (LayerDecayAdamW), not
    # in Keras's `_apply_weight_decay` before the update
    _decay_in_update = False

    def _learning_rate_scale(self, index):
        """The factor on the learning rate of the `index`-th variable (1 here; layer decay scales it)."""
        return 1.0


def _torch_adam_update(opt, grads, variables, learning_rate):
    """Keras's PyTorch Adam update (keras/src/backend/torch/optimizers/torch_adam.py), op for op with
    the same operands, so the same float32 results; per variable instead of on lists of all of them."""
    import torch

    dtype = variables[0].value.dtype
    lr = ops.cast(learning_rate, dtype)
    local_step = ops.cast(opt.iterations + 1, dtype)
    beta_1_power = ops.power(ops.cast(opt.beta_1, dtype), local_step)
    beta_2_power = ops.power(ops.cast(opt.beta_2, dtype), local_step)
    alpha = lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
    with torch.no_grad():
        for variable, grad in zip(variables, grads):
            index = opt._get_variable_index(variable)
            m, v, value = opt._momentums[index].value, opt._velocities[index].value, variable.value
            scale = opt._learning_rate_scale(index)
            if opt._decay_in_update and opt.weight_decay is not None and opt._use_weight_decay(variable):
                value.mul_(1 - opt.weight_decay * lr * scale)
            m.mul_(opt.beta_1).add_(grad, alpha=1 - opt.beta_1)
            v.mul_(opt.beta_2).add_(torch.mul(grad, grad), alpha=1 - opt.beta_2)
            step = torch.mul(m, alpha if scale == 1.0 else alpha * scale)
            value.add_(step.div_(torch.sqrt(v).add_(opt.epsilon)), alpha=-1)


@keras.saving.register_keras_serializable(package="keras_vitnt")
class LayerDecayAdamW(AdamW):
    """AdamW whose learning rate, its weight decay's included, is scaled per variable by
    `layer_decay ** (depth + 1 - layer_id)` (timm's layer-wise decay, its layer ids: see `layer_id`)."""

    _decay_in_update = True

    def __init__(self, layer_decay=0.75, depth=12, **kwargs):
        super().__init__(**kwargs)
        self.layer_decay = float(layer_decay)
        self.depth = int(depth)

    def build(self, var_list):
        super().build(var_list)
        self._lr_scales = [self.layer_decay ** (self.depth + 1 - layer_id(v.path, self.depth)) for v in var_list]

    def _learning_rate_scale(self, index):
        return self._lr_scales[index]

    def _apply_weight_decay(self, variables):
        """Nothing here: each variable's weight decay runs in its own update (`update_step`, and on PyTorch
        `_torch_adam_update`), at its scaled learning rate (p -= p * wd * lr * scale), as timm's layer
        decay scales a parameter group's whole learning rate, its weight decay's included. (Per variable,
        as TensorFlow's distributed update calls `update_step` for each variable on each replica.)"""

    def _decay(self, variable, learning_rate):
        if self.weight_decay is not None and self._use_weight_decay(variable):
            wd = ops.cast(self.weight_decay, variable.dtype)
            self.assign(variable, variable - variable * wd * ops.cast(learning_rate, variable.dtype))

    def _keras_torch_update(self, grads, trainable_variables, learning_rate):
        """Keras's list form has no per-variable learning rate: Keras's per-variable update, scaled below."""
        for grad, variable in zip(grads, trainable_variables):
            self.update_step(grad, variable, learning_rate)

    def update_step(self, gradient, variable, learning_rate):
        scale = self._lr_scales[self._get_variable_index(variable)]
        self._decay(variable, learning_rate * scale)
        return super().update_step(gradient, variable, learning_rate * scale)

    def get_config(self):
        return {**super().get_config(), "layer_decay": self.layer_decay, "depth": self.depth}
