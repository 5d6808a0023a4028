"""keras_vitnt: Vision Transformers (ViT, DeiT) and Transformer-in-Transformer (TNT) for
Keras 3, numerically identical to timm, in the style of keras.applications."""

from keras_vitnt import layers
from keras_vitnt.models import DeiT, TNT, ViT, create_model, get_model_info, list_models
from keras_vitnt.weights import CheckpointMismatchError, WeightsUnavailableError

__version__ = "0.1.0"

__all__ = [
    "CheckpointMismatchError",
    "DeiT",
    "TNT",
    "ViT",
    "WeightsUnavailableError",
    "create_model",
    "get_model_info",
    "layers",
    "list_models",
]
