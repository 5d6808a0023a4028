"""create_model(timm_name[.tag]): any registered model by the name timm users know."""

from keras_vitnt.models import builder, registry
from keras_vitnt.models.tnt import tnt_trunk
from keras_vitnt.models.vit import vit_trunk

TRUNKS = {"vit": vit_trunk, "tnt": tnt_trunk}


def create_model(
    model_name,
    *,
    include_top=True,
    weights="imagenet",
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=None,
    classifier_activation="softmax",
    include_preprocessing=True,
    mean=None,
    std=None,
    drop_rate=0.0,
    drop_path_rate=0.0,
    name=None,
    **overrides,
):
    """Build any registered model by its timm name, optionally with a pretrained tag:
    `create_model("vit_base_patch16_224.augreg_in21k_ft_in1k")`. A `.tag` in the name
    is used as `weights` unless `weights` is given as something other than "imagenet".
    Keywords as for `ViT` / `TNT` (see their docstrings)."""
    info = registry.get_model_info(model_name)
    _, tag = registry.split_name(model_name)
    if tag is not None and weights == "imagenet":
        info.get_tag(tag)  # raises with the list of tags if unknown
        weights = tag
    return builder.create(
        info.family,
        TRUNKS[info.family],
        info.arch,
        info.name,
        overrides,
        name=name or info.name,
        include_top=include_top,
        weights=weights,
        input_tensor=input_tensor,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing,
        mean=mean,
        std=std,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
    )
