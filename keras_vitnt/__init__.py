"""keras_vitnt: Vision Transformers (ViT, DeiT) and Transformer-in-Transformer (TNT) for
Keras 3, numerically identical to timm, in the style of keras.applications.

The layers and the recipe's optimizers are imported (and so registered for
`keras.models.load_model`) with the package; the constructors and weight tools on first use.
Because of that registration, `import keras_vitnt` imports Keras and its backend
(TensorFlow); so does `list_models()`.

Where things live (each package imports only those listed before it):

  layers/    Keras layers. Sub-layer attributes and layer names mirror timm's module names
             (`blocks_3` holds `attn.qkv`), but the layers know nothing of checkpoints.
  weights/   checkpoint reading, the hub and its cache, resampling, and `timm_map.py`: the
             one table of which timm tensor is which Keras weight (and in which layout).
  models/    one typed config per architecture (`config.py`), the registry of timm names,
             the resolver of the `weights` argument, the trunks, the builder, the constructors.
  exporter, features, train, visualize, benchmark, demo   use models/ and weights/
  openvino_runtime   runs OpenVINO exports (OpenVINOModel); imports no Keras
  cli        the `keras-vitnt` command, over all of the above
"""

import importlib

from keras_vitnt import layers  # noqa: F401  registers every layer for .keras loading
from keras_vitnt import optimizers  # noqa: F401  registers the recipe's optimizers for .keras loading
from keras_vitnt.exporter import ExportParityError, export  # noqa: F401

__version__ = "0.1.0"

_PUBLIC = {
    "ViT": "keras_vitnt.models",
    "DeiT": "keras_vitnt.models",
    "TNT": "keras_vitnt.models",
    "create_model": "keras_vitnt.models",
    "get_model_info": "keras_vitnt.models.registry",
    "list_models": "keras_vitnt.models.registry",
    "feature_extractor": "keras_vitnt.features",
    "decode_predictions": "keras_vitnt.data.imagenet",
    "load_image": "keras_vitnt.data.images",
    "OpenVINOModel": "keras_vitnt.openvino_runtime",
    "CheckpointMismatchError": "keras_vitnt.weights.convert",
    "WeightsUnavailableError": "keras_vitnt.weights.hub",
}
_SUBMODULES = ("data", "models", "weights")

__all__ = sorted(_PUBLIC) + ["ExportParityError", "data", "export", "layers", "models", "optimizers", "weights"]


def __getattr__(name):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"keras_vitnt.{name}")
    else:
        raise AttributeError(f"module 'keras_vitnt' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return __all__
