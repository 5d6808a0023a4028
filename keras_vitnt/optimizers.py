"""Optimizers of the fine-tuning recipe that `.keras` files refer to.

Imported with the package (like the layers), so that a model saved with its optimizer
(`keras-vitnt train --layer-decay ...`) loads with plain `keras.models.load_model` after
`import keras_vitnt`, in any process.
"""

import re

import keras

# the model's top-level layers whose weights sit below block 0 (layer id 0)
EMBEDDING_LAYERS = ("patch_embed", "cls_token", "pos_embed", "pixel_embed", "patch_pos", "preprocess")


def layer_id(path, depth):
    """0 for the embeddings, i + 1 for block i, depth + 1 for the final norm and head."""
    m = re.match(r"blocks_(\d+)/", path)
    if m:
        return int(m.group(1)) + 1
    if path.split("/")[0] in EMBEDDING_LAYERS:
        return 0
    return depth + 1


@keras.saving.register_keras_serializable(package="keras_vitnt")
class LayerDecayAdamW(keras.optimizers.AdamW):
    """AdamW whose learning rate is scaled per variable by
    `layer_decay ** (depth + 1 - layer_id)` (BEiT/timm layer-wise decay)."""

    def __init__(self, layer_decay=0.75, depth=12, **kwargs):
        super().__init__(**kwargs)
        self.layer_decay = float(layer_decay)
        self.depth = int(depth)

    def build(self, var_list):
        super().build(var_list)
        self._lr_scales = [self.layer_decay ** (self.depth + 1 - layer_id(v.path, self.depth)) for v in var_list]

    def update_step(self, gradient, variable, learning_rate):
        scale = self._lr_scales[self._get_variable_index(variable)]
        return super().update_step(gradient, variable, learning_rate * scale)

    def get_config(self):
        return {**super().get_config(), "layer_decay": self.layer_decay, "depth": self.depth}
