"""The single builder behind ViT(), DeiT(), TNT() and create_model(): a config, the options
every constructor takes (keras.applications conventions) and the weights go in, a
functional model with its preprocessing, trunk, pooling/head and loaded weights comes out."""

import dataclasses

import keras

from keras_vitnt.layers import AttentionPoolLatent, Preprocess, TokenPool
from keras_vitnt.layers.base import dense, layer_norm
from keras_vitnt.layers.embedding import grid_for
from keras_vitnt.models import tnt, vit
from keras_vitnt.models.resolve import resolve_weights

TRUNKS = {"vit": vit.trunk, "tnt": tnt.trunk}


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """The keywords every constructor takes, with their defaults (a test checks that each
    constructor's signature lists exactly these)."""

    include_top: bool = True
    weights: object = "imagenet"
    input_tensor: object = None
    input_shape: tuple = None
    pooling: str = None
    classes: int = None
    classifier_activation: object = "softmax"
    include_preprocessing: bool = True
    mean: tuple = None
    std: tuple = None
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    name: str = None

    @classmethod
    def of(cls, arguments):
        """The options from a constructor's arguments (`locals()` at its first line)."""
        return cls(**{f.name: arguments[f.name] for f in dataclasses.fields(cls)})

    def check(self):
        if self.include_top and self.pooling is not None:
            raise ValueError(
                f"pooling={self.pooling!r} applies to include_top=False only; with a classifier head, choose the "
                "pooling with global_pool ('token', 'avg', 'avgmax', 'max' or 'map')."
            )
        if self.pooling not in (None, "token", "avg", "avgmax", "max", "map"):
            raise ValueError(f"pooling={self.pooling!r}: choose None (token sequence), 'token', 'avg', 'avgmax', 'max' "
                             "or 'map' (the attention pooling of a model with global_pool='map')")
        classes = self.classes
        if classes is not None and (not isinstance(classes, int) or isinstance(classes, bool) or classes < 1):
            raise ValueError(f"classes must be a positive integer (or None: the weights' classes), got {classes!r}")
        if not self.include_preprocessing and (self.mean is not None or self.std is not None):
            raise ValueError("mean/std apply to include_preprocessing=True (normalisation inside the model) only")
        shape = self.input_shape
        if shape is not None and (len(shape) != 3 or shape[-1] != 3):
            raise ValueError(f"input_shape must be (height, width, 3), got {shape}")


def create(spec, overrides, options):
    """Build the model a `registry.ModelSpec` names, with timm-named architecture `overrides`
    and the constructor's `BuildOptions`."""
    config = spec.config.replace(**overrides)
    weights = resolve_weights(options.weights, config, spec.info)
    options.check()
    weights.read()  # a file is read (and checked) before any graph is built
    classes = weights.head_classes(options.classes) if options.include_top else None
    inputs, x, config = _inputs(config, options)
    if not config.dynamic_img_size:
        grid_for(config.img_size, config.patch_size, what=options.name or spec.name,
                 drop_remainder=config.drop_remainder or config.dynamic_img_pad)
    if options.include_preprocessing:
        x = Preprocess(*weights.mean_std(options.mean, options.std), name="preprocess")(x)
    tokens, head_norm = TRUNKS[config.family](x, config, options.drop_path_rate)
    if options.include_top:
        outputs = _head(tokens, config, head_norm, classes, options)
    else:
        outputs = _features(tokens, config, head_norm, options.pooling)
    model = keras.Model(inputs, outputs, name=options.name or spec.name)
    weights.load(model)
    return model


def _dynamic(config, size):
    """The config for an input of (height, width) `size`: at that size, or, when either is None
    (or the config asks for dynamic_img_size), at its own size with the table resampled in the
    graph to each input."""
    if None not in size:
        config = config.with_input_size(*size)  # dynamic_img_size=True too: the table at this size, as timm's img_size
        if not config.dynamic_img_size:
            return config
    return dataclasses.replace(config, dynamic_img_size=True)


def _inputs(config, options):
    """-> (model inputs, image tensor, config at the input's size)."""
    if options.input_tensor is None:
        if options.input_shape is not None:
            config = _dynamic(config, tuple(options.input_shape[:2]))
        size = (None, None) if config.dynamic_img_size else config.img_size
        inputs = keras.Input(shape=(*size, 3), name="image")
        return inputs, inputs, config
    tensor = options.input_tensor
    if not keras.backend.is_keras_tensor(tensor):
        tensor = keras.Input(tensor=tensor)
    shape = tuple(tensor.shape[1:])
    if options.input_shape is not None and tuple(options.input_shape) != shape:
        raise ValueError(f"input_shape {options.input_shape} does not match input_tensor's shape {shape}")
    return keras.utils.get_source_inputs(tensor), tensor, _dynamic(config, shape[:2])


def _head(tokens, config, head_norm, classes, options):
    """Pooling, fc_norm (`head_norm`), dropout and the classifier, as timm's `forward_head`."""
    prefix = config.num_prefix_tokens
    if getattr(config, "distilled", False):
        a = dense(classes, "head")(TokenPool("token", prefix, name="pool")(tokens))
        b = dense(classes, "head_dist")(TokenPool("dist", prefix, name="pool_dist")(tokens))
        y = keras.layers.Average(name="head_avg")([a, b])
    else:
        y = _pooled(tokens, config, head_norm, config.global_pool)
        y = keras.layers.Dropout(options.drop_rate, name="head_drop")(y)
        y = dense(classes, "head")(y)
    return keras.layers.Activation(options.classifier_activation, dtype="float32", name="predictions")(y)


def _features(tokens, config, head_norm, pooling):
    """include_top=False: the token sequence, or the pooled features timm's `forward_head(pre_logits=True)` gives."""
    if pooling is None:
        return tokens
    if pooling == "map" and config.global_pool != "map":
        raise ValueError(f"pooling='map' is the attention-pooling head of global_pool='map' models; this one pools "
                         f"with {config.global_pool!r} (use pooling='token' or 'avg')")
    if pooling == "token" and not getattr(config, "class_token", True):
        raise ValueError("pooling='token' needs a class token; this model has none (use pooling='avg')")
    if pooling == "token" and getattr(config, "distilled", False):
        return TokenPool("dist_avg", config.num_prefix_tokens, name="pool")(tokens)
    return _pooled(tokens, config, head_norm, pooling)


def _pooled(tokens, config, head_norm, pooling):
    if pooling == "map":
        y = AttentionPoolLatent(config.embed_dim, config.num_heads, mlp_ratio=config.mlp_ratio,
                                num_prefix_tokens=config.pool_prefix_tokens, norm_eps=config.norm_eps,
                                act=config.act_layer, norm_layer=config.norm_layer, name="attn_pool")(tokens)
    elif pooling == "token":
        y = TokenPool(pooling, config.num_prefix_tokens, name="pool")(tokens)
    else:
        y = TokenPool(pooling, config.pool_prefix_tokens, name="pool")(tokens)
    return layer_norm(config.norm_eps, "fc_norm", config.norm_layer)(y) if head_norm else y
