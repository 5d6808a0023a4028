"""The public constructors, in the keras.applications style: `ViT("B/16")`, `DeiT("S/16")`,
`TNT("S")` and `create_model(timm_name)`. Each decodes its variant into a config and a
registry entry and hands its options to the one builder (`builder.create`)."""

import dataclasses

from keras_vitnt.models import builder, registry
from keras_vitnt.models.builder import BuildOptions
from keras_vitnt.models.config import TNTConfig, ViTConfig


BASE_DOCSTRING = """Instantiates {title}, as timm's `{timm}` (same numbers for the same checkpoint).

    Args:
        {variant_doc}
        include_top: whether to include the classifier head.
        weights: None (random init, as timm initialises), "imagenet" (the timm default
            pretrained tag), another tag name of the model (see `keras_vitnt.list_models(
            pretrained=True)`), or a local file: timm `.safetensors`, torch `.pth`/`.bin`
            (loaded with `weights_only=True`), a Google ViT `.npz`, or a Keras `.weights.h5`.
            "none" is the same as None.
        input_tensor: optional Keras tensor to use as the image input.
        input_shape: (height, width, 3); any size the patch size divides. Defaults to the
            model's resolution (224, 384, DINOv2's 518, ...).
        pooling: with include_top=False: None returns the normalised token sequence
            (B, prefix + N, D); "token" the class token (the mean of class and distillation
            tokens for distilled DeiT, as timm); "avg" the mean of the patch tokens, "max" their
            maximum, "avgmax" the mean of both; "map" the attention-pooling head of
            global_pool="map" models (SigLIP). Each as timm's pre-logits features (fc_norm
            included where the model has one).
        classes: number of classes of the head. None (default): the head follows the weights,
            as in timm (1000 without weights; a headless feature checkpoint with
            include_top=True is an error). A count the checkpoint does not have loads the
            backbone and initialises a fresh head (logged).
        classifier_activation: activation of the head; None returns logits.
        include_preprocessing: if True the model takes RGB in [0, 255] and normalises with
            the weights' mean/std inside; if False it takes inputs normalised as timm's.
        mean, std: the normalisation inside the model (3 values each, for RGB in 0..1;
            timm's pretrained_cfg names). Default: the pretrained tag's; for a weights file
            (which does not record it) or no weights, those of the model's default timm
            weights, with a logged warning for a file. The model's config (layer
            "preprocess") and the export sidecar say which values are inside.
        drop_rate: dropout before the head.
        drop_path_rate: stochastic depth rate, increased linearly over the blocks.
        name: model name (defaults to the timm name).
        **overrides: architecture overrides with timm's keyword names: {overrides}.

    Returns:
        A `keras.Model`.
    """


def ViT(variant="B/16", *, include_top=True, weights="imagenet", input_tensor=None, input_shape=None, pooling=None,
        classes=None, classifier_activation="softmax", include_preprocessing=True, mean=None, std=None,
        drop_rate=0.0, drop_path_rate=0.0, name=None, **overrides):
    options = BuildOptions.of(locals())
    return builder.create(registry.vit_spec(variant, overrides.pop("distilled", False)), overrides, options)


def DeiT(variant="B/16", *, distilled=False, include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
         pooling=None, classes=None, classifier_activation="softmax", include_preprocessing=True, mean=None, std=None,
         drop_rate=0.0, drop_path_rate=0.0, name=None, **overrides):
    options = BuildOptions.of(locals())
    return builder.create(registry.deit_spec(variant, distilled), overrides, options)


def TNT(variant="S", *, include_top=True, weights="imagenet", input_tensor=None, input_shape=None, pooling=None,
        classes=None, classifier_activation="softmax", include_preprocessing=True, mean=None, std=None,
        drop_rate=0.0, drop_path_rate=0.0, name=None, **overrides):
    options = BuildOptions.of(locals())
    return builder.create(registry.tnt_spec(variant), overrides, options)


def create_model(model_name, *, include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
                 pooling=None, classes=None, classifier_activation="softmax", include_preprocessing=True, mean=None,
                 std=None, drop_rate=0.0, drop_path_rate=0.0, name=None, **overrides):
    """Build any registered model by its timm name, optionally with a pretrained tag:
    `create_model("vit_base_patch16_224.augreg_in21k_ft_in1k")`. A `.tag` in the name
    is used as `weights` unless `weights` is given as something other than "imagenet" (it must
    be a tag of the model either way).
    An architecture timm does not register can be named "<family>:<variant>" ("vit:Ti/4",
    "tnt:S"), as on the command line. Keywords as for `ViT` / `TNT` (see their docstrings)."""
    options = BuildOptions.of(locals())
    spec = registry.parse_model_name(model_name, overrides)
    if spec.tag is not None and weights == "imagenet":
        options = dataclasses.replace(options, weights=spec.tag.tag)
    return builder.create(spec, overrides, options)


def _overrides(config_cls):
    return ", ".join(config_cls.overridable())


ViT.__doc__ = BASE_DOCSTRING.format(
    title="a Vision Transformer (ViT)",
    timm="vision_transformer.VisionTransformer",
    variant_doc='variant: "<size>/<patch>" with size Ti, S, B, L or H and any patch size, e.g. "B/16", '
    '"H/14", "Ti/4".',
    overrides=_overrides(ViTConfig),
)
DeiT.__doc__ = BASE_DOCSTRING.format(
    title="a Data-efficient image Transformer (DeiT)",
    timm="deit.VisionTransformerDistilled" + "` / `vision_transformer.VisionTransformer",
    variant_doc='variant: "Ti/16", "S/16" or "B/16"; distilled=True adds the distillation token and head.',
    overrides=_overrides(ViTConfig),
)
TNT.__doc__ = BASE_DOCSTRING.format(
    title="a Transformer-in-Transformer (TNT) model",
    timm="tnt.TNT",
    variant_doc='variant: "S" (TNT-S, 81.5 top-1), "B" (TNT-B, 82.9) or "S-legacy" (the original TNT-S '
    "layout: conv on the whole image, per-block norm over c, biased proj).",
    overrides=_overrides(TNTConfig),
)
