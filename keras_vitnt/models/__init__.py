"""Model constructors: ViT, DeiT, TNT and create_model(timm_name). The registry
(`keras_vitnt.models.registry`) imports without TensorFlow; the constructors load it."""

import importlib

_PUBLIC = {
    "ViT": "keras_vitnt.models.vit",
    "DeiT": "keras_vitnt.models.vit",
    "TNT": "keras_vitnt.models.tnt",
    "create_model": "keras_vitnt.models.factory",
    "get_model_info": "keras_vitnt.models.registry",
    "list_models": "keras_vitnt.models.registry",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'keras_vitnt.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value
