"""Checkpoint reading, timm -> Keras conversion and hub download."""

from keras_vitnt.weights.convert import (
    CheckpointMismatchError,
    load_state_dict,
    load_weights_file,
    read_state_dict,
)
from keras_vitnt.weights.hub import WeightsUnavailableError, download, load_pretrained
from keras_vitnt.weights.resample import resample_abs_pos_embed

__all__ = [
    "CheckpointMismatchError",
    "WeightsUnavailableError",
    "download",
    "load_pretrained",
    "resample_abs_pos_embed",
    "load_state_dict",
    "load_weights_file",
    "read_state_dict",
]
