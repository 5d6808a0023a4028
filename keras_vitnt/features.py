"""Intermediate features for dense prediction: timm's `forward_intermediates` as a Keras model.

    extractor = keras_vitnt.feature_extractor(model, indices=4)   # the last 4 blocks
    maps = extractor.predict(images)                              # 4 x (B, H/P, W/P, D)

The extractor is a functional model over the same layers as `model` (the weights are shared:
fine-tuning it fine-tunes the backbone), with timm's semantics: `indices` an int takes the
last n blocks, a list takes those blocks (negative from the end), None all of them; `norm`
applies the model's final norm (`norm`, which timm's fc_norm models do not have: there it is
a no-op, as in timm); prefix tokens (class, distillation, registers) are dropped from the maps
and, with `return_prefix_tokens`, returned beside them.
"""

import keras

from keras_vitnt.layers import PatchEmbedding, PixelEmbed, PrefixTokens, TNTBlock, TokenMap, TransformerBlock


def take_indices(num_blocks, indices):
    """timm's `feature_take_indices`: None -> every block, an int n -> the last n, a list ->
    those blocks (negative counts from the end), as absolute indices."""
    if indices is None:
        indices = num_blocks
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= num_blocks:
            raise ValueError(f"indices={indices}: the last n blocks, n from 1 to {num_blocks} (the model's blocks)")
        return list(range(num_blocks - indices, num_blocks))
    taken = []
    for i in indices:
        if not isinstance(i, int) or not -num_blocks <= i < num_blocks:
            raise ValueError(f"indices={list(indices)}: block {i!r} does not exist; the model has {num_blocks} "
                             f"blocks (0 to {num_blocks - 1}, or negative from the end)")
        taken.append(i % num_blocks)
    return taken


def feature_extractor(model, indices=None, norm=False, output_fmt="NHWC", return_prefix_tokens=False, name=None):
    """A Keras model: image -> the token maps after the selected blocks of `model` (a
    keras_vitnt ViT, DeiT or TNT; built by this package, with or without its head).

    Args:
        model: the model whose blocks to read; its weights are shared, not copied.
        indices: None (every block), an int n (the last n blocks) or a list of block indices
            (negative from the end), as timm's `forward_intermediates`.
        norm: apply the model's final norm to each map (timm's `norm=True`; a no-op for models
            whose final norm comes after pooling, fc_norm, exactly as in timm).
        output_fmt: "NHWC" (B, H/P, W/P, D), "NCHW" (timm's default layout) or "NLC" (B, N, D).
        return_prefix_tokens: each output is then a pair (map, prefix tokens (B, prefix, D)), as
            timm's; a model without prefix tokens returns the maps alone, as timm.
        name: the extractor's name (default: `<model name>_features`).

    Returns:
        A `keras.Model` with one output per selected block, in block order (Keras returns a
        single output alone, not in a list).
    """
    blocks = [layer for layer in model.layers if isinstance(layer, (TransformerBlock, TNTBlock))]
    patch = next((layer for layer in model.layers if isinstance(layer, (PatchEmbedding, PixelEmbed))), None)
    if not blocks or patch is None:
        raise ValueError(f"feature_extractor: {model.name!r} has no keras_vitnt blocks at its top level; pass the "
                         "model keras_vitnt built (ViT, DeiT, TNT or create_model), not a model wrapping it")
    prefix = sum(layer.num_tokens + layer.reg_tokens for layer in model.layers if isinstance(layer, PrefixTokens))
    final_norm = next((layer for layer in model.layers if layer.name == "norm"), None) if norm else None
    image = model.inputs[0]
    outputs = []
    for i in take_indices(len(blocks), indices):
        tokens = blocks[i].output
        if isinstance(blocks[i], TNTBlock):
            tokens = tokens[1]  # (pixels, patches): the patch tokens
        if final_norm is not None:
            tokens = final_norm(tokens)
        outputs.append(TokenMap(prefix, patch.patch_size, output_fmt, return_prefix=return_prefix_tokens and prefix > 0,
                                dynamic_img_pad=getattr(patch, "dynamic_img_pad", False),
                                name=f"features_{i}")(tokens, image))
    return keras.Model(model.inputs, outputs, name=name or f"{model.name}_features")
