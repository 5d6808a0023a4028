"""Model constructors: ViT, DeiT, TNT and create_model(timm_name), over one builder.

  config.py        one typed config per architecture (every number of a model)
  registry.py      timm names -> config + pretrained tags; the model naming rule
  resolve.py       the `weights` argument -> what the weights are and how to load them
  vit.py, tnt.py   the trunks (layers wired from a config)
  builder.py       preprocessing + trunk + head, weights loaded
  applications.py  the public constructors

A new architecture option of a family: a field in its config (`timm_field(default)`, under
timm's keyword name; overridable by name, listed in the constructors' docstrings and checked
by `replace`), its use in the trunk (passed to a layer), and its term in `count_params`; a
layer that gains weights gets its row in weights/timm_map.py. A new family: a config class
(in `CONFIGS`), a trunk (in `builder.TRUNKS`), its timm name pattern in the registry, and the
map rows of any new layer. Constructors, builder, resolver, CLI and loader stay as they are.
"""

from keras_vitnt.models.applications import DeiT, TNT, ViT, create_model
from keras_vitnt.models.registry import get_model_info, list_models

__all__ = ["DeiT", "TNT", "ViT", "create_model", "get_model_info", "list_models"]
