"""Model constructors: ViT, DeiT, TNT and create_model(timm_name), over one builder.

  config.py        one typed config per architecture (every number of a model)
  registry.py      timm names -> config + pretrained tags; the model naming rule
  resolve.py       the `weights` argument -> what the weights are and how to load them
  vit.py, tnt.py   the trunks (layers wired from a config)
  builder.py       preprocessing + trunk + head, weights loaded
  applications.py  the public constructors
"""

from keras_vitnt.models.applications import DeiT, TNT, ViT, create_model
from keras_vitnt.models.registry import get_model_info, list_models

__all__ = ["DeiT", "TNT", "ViT", "create_model", "get_model_info", "list_models"]
