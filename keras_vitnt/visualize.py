"""What the transformers see: attention maps of every block and head, attention rollout
(Abnar & Zuidema, 2020), TNT's inner (pixel-level) attention stitched back to the image,
token feature maps, and t-SNE plots of pooled features.

All attention weights are computed by the model's own blocks (`return_attention_scores`),
not by a re-implementation, for any input size the model accepts, square or not.
"""

import numpy as np


# --- walking the model ---------------------------------------------------------------


def _blocks(model):
    from keras_vitnt.layers import TNTBlock, TransformerBlock

    blocks = [layer for layer in model.layers if isinstance(layer, (TransformerBlock, TNTBlock))]
    if not blocks:
        raise ValueError(f"model {model.name!r} has no keras_vitnt transformer blocks to visualise")
    return blocks


def _image_size(model, image=None):
    """(H, W) the model sees: its input size, or the image's for a model that takes any size."""
    h, w = model.input_shape[1:3]
    if h is None or w is None:
        shape = np.shape(image)
        h, w = shape[-3:-1]
    return h, w


def _structure(model, image=None):
    """(number of prefix tokens: class, distillation and register tokens, (gh, gw) patch grid, patch
    size) of a keras_vitnt model (for one that takes any size, at the size of `image`)."""
    from keras_vitnt.layers import PatchEmbedding, PixelEmbed, PositionEmbedding, PrefixTokens

    prefix = sum(layer.num_tokens + layer.reg_tokens for layer in model.layers if isinstance(layer, PrefixTokens))
    pos = next((layer for layer in model.layers if isinstance(layer, PositionEmbedding)), None)
    patch = next(layer for layer in model.layers if isinstance(layer, (PatchEmbedding, PixelEmbed)))
    h, w = _image_size(model, image)
    p = patch.patch_size
    if None in model.input_shape[1:3]:  # the grid of this image, rounded up when the model pads
        grid = tuple(-(-s // p) if getattr(patch, "dynamic_img_pad", False) else s // p for s in (h, w))
    else:
        grid = pos.grid_size if pos is not None else (h // p, w // p)
    return prefix, tuple(grid), p


def _run_blocks(model, images, blocks_wanted=None):
    """Run the model's blocks with attention scores. Returns per block: ViT (tokens,
    weights); TNT (pixels, patches, inner weights, outer weights)."""
    import keras

    from keras_vitnt.layers import TNTBlock

    images = np.asarray(images, "float32")
    if images.ndim == 3:
        images = images[None]
    blocks = _blocks(model)
    stem = keras.Model(model.inputs, blocks[0].input)
    state = stem.predict_on_batch(images)
    outs = []
    last = max(blocks_wanted) if blocks_wanted else len(blocks) - 1
    numpy = keras.ops.convert_to_numpy  # any backend's tensors (torch's carry autograd: np.asarray refuses them)
    for block in blocks[: last + 1]:
        if isinstance(block, TNTBlock):
            p, x, wi, wo = (numpy(t) for t in block([state[0], state[1]], return_attention_scores=True))
            state = [p, x]
            outs.append((p, x, wi, wo))
        else:
            state, w = (numpy(t) for t in block(state, return_attention_scores=True))
            outs.append((state, w))
    return outs


def attention_maps(model, images):
    """Attention weights of every block and head, computed by the model's blocks.

    ViT / DeiT: array (B, blocks, heads, T, T) with T = prefix tokens + patches.
    TNT: {"outer": (B, blocks, heads, T, T), "inner": (B, blocks, N, heads, words, words)}.
    """
    from keras_vitnt.layers import TNTBlock

    images = np.asarray(images, "float32")
    images = images[None] if images.ndim == 3 else images
    outs = _run_blocks(model, images)
    if isinstance(_blocks(model)[0], TNTBlock):
        b = images.shape[0]
        inner = np.stack([o[2] for o in outs], axis=0)  # (L, B*N, h, w, w)
        inner = inner.reshape(inner.shape[0], b, -1, *inner.shape[2:]).transpose(1, 0, 2, 3, 4, 5)
        outer = np.stack([o[3] for o in outs], axis=1)
        return {"outer": outer, "inner": inner}
    return np.stack([o[1] for o in outs], axis=1)


def _fuse_heads(a, head_fusion):
    if head_fusion == "mean":
        return a.mean(axis=0)
    if head_fusion == "max":
        return a.max(axis=0)
    if head_fusion == "min":
        return a.min(axis=0)
    raise ValueError(f"head_fusion={head_fusion!r}: choose 'mean', 'max' or 'min'")


def upsample(grid_map, size):
    """(gh, gw) map -> (H, W) float32 with bilinear interpolation (PIL)."""
    from PIL import Image

    h, w = size
    im = Image.fromarray(np.asarray(grid_map, "float32"), mode="F")
    return np.asarray(im.resize((w, h), Image.Resampling.BILINEAR), dtype="float32")


def _normalise(m):
    m = np.asarray(m, "float64")
    m = m - min(m.min(), 0.0)
    top = m.max()
    return (m / top if top > 0 else np.ones_like(m)).astype("float32")


def attention_rollout(model, image, head_fusion="mean", discard_ratio=0.0):
    """Abnar & Zuidema's attention rollout from the class token, as an (H, W) heat map of
    the image in [0, 1] (max = 1).

    Each block's attention is fused over heads, optionally the lowest `discard_ratio`
    weights are zeroed (never the class token's), the identity is added for the residual,
    rows are renormalised, and the blocks are multiplied. For TNT the outer (patch-level)
    attention is rolled out; distilled DeiT's two prefix tokens and register tokens take part
    in the rollout but are not patches, so they are not on the map.
    """
    from keras_vitnt.layers import PrefixTokens

    prefix, (gh, gw), _ = _structure(model, image)
    if not any(layer.num_tokens for layer in model.layers if isinstance(layer, PrefixTokens)):
        raise ValueError("attention rollout reads the class token's row; this model has no class token")
    maps = attention_maps(model, image)
    att = maps["outer"] if isinstance(maps, dict) else maps
    att = att[0]  # (L, heads, T, T)
    t = att.shape[-1]
    rollout = np.eye(t)
    for layer_att in att:
        a = _fuse_heads(layer_att.astype("float64"), head_fusion)
        if discard_ratio > 0:
            flat = a.reshape(-1).copy()
            k = int(flat.size * discard_ratio)
            if k:
                idx = np.argsort(flat)[:k]
                idx = idx[idx % t != 0]  # keep attention to the class token
                flat[idx] = 0
            a = flat.reshape(t, t)
        a = 0.5 * a + 0.5 * np.eye(t)
        a = a / a.sum(axis=-1, keepdims=True)
        rollout = a @ rollout
    cls_to_patches = rollout[0, prefix:].reshape(gh, gw)
    h, w = _image_size(model, image)
    return _normalise(upsample(cls_to_patches, (h, w)))


def tnt_inner_maps(model, image, block=-1, head_fusion="mean"):
    """TNT's pixel-level attention stitched back to image resolution: for every patch, the
    attention each of its "visual words" receives (averaged over queries and heads) in
    one block, laid out on the patch grid. Returns an (H, W) map in [0, 1]."""
    maps = attention_maps(model, image)
    if not isinstance(maps, dict):
        raise ValueError("tnt_inner_maps needs a TNT model")
    _, (gh, gw), _ = _structure(model, image)
    inner = maps["inner"][0, block]  # (N, heads, words, words)
    received = np.stack([_fuse_heads(a, head_fusion).mean(axis=0) for a in inner])  # (N, words)
    side = int(round(received.shape[1] ** 0.5))
    tiles = received.reshape(gh, gw, side, side).transpose(0, 2, 1, 3).reshape(gh * side, gw * side)
    h, w = _image_size(model, image)
    return _normalise(upsample(tiles, (h, w)))


def feature_maps(model, image, blocks=None):
    """Token features after the given blocks (default: all), on the patch grid:
    {block index: (gh, gw, D)} (the TNT paper's feature-map figure uses these)."""
    prefix, (gh, gw), _ = _structure(model, image)
    n = len(_blocks(model))
    wanted = sorted({b % n for b in (range(n) if blocks is None else blocks)})
    outs = _run_blocks(model, image, wanted)
    out = {}
    for i in wanted:
        tokens = outs[i][1] if len(outs[i]) == 4 else outs[i][0]
        out[i] = tokens[0, prefix:].reshape(gh, gw, -1)
    return out


def feature_map_image(features):
    """(gh, gw, D) -> (gh, gw) in [0, 1]: the first principal component of the tokens."""
    f = features.reshape(-1, features.shape[-1]).astype("float64")
    f = f - f.mean(0)
    _, _, vt = np.linalg.svd(f, full_matrices=False)
    pc = (f @ vt[0]).reshape(features.shape[:2])
    pc = pc - pc.min()
    return (pc / pc.max() if pc.max() > 0 else np.ones_like(pc)).astype("float32")


def pca_rgb(features):
    """(gh, gw, D) patch features -> (gh, gw, 3) in [0, 1]: their first three principal
    components as red, green and blue, each min-max scaled (the DINOv2 picture)."""
    f = features.reshape(-1, features.shape[-1]).astype("float64")
    f = f - f.mean(0)
    _, _, vt = np.linalg.svd(f, full_matrices=False)
    pcs = f @ vt[:3].T  # (N, 3); fewer than 3 components are padded with zeros
    pcs = np.pad(pcs, ((0, 0), (0, 3 - pcs.shape[1])))
    lo, hi = pcs.min(0), pcs.max(0)
    rgb = (pcs - lo) / np.where(hi > lo, hi - lo, 1.0)
    return rgb.reshape(*features.shape[:2], 3).astype("float32")


def pca_maps(model, image, sizes, block=-1):
    """{(H, W): (PCA image (gh, gw, 3), the image resized to (H, W))} for one image at several
    input sizes: the final-normed patch features after `block` (`feature_extractor`), at each
    size. A model built for one size takes only that one; build it with input_shape=(None,
    None, 3) to compare sizes."""
    from PIL import Image

    from keras_vitnt.features import feature_extractor

    extractor = feature_extractor(model, indices=[block], norm=True)
    image = np.asarray(image, "float32")
    out = {}
    for h, w in sizes:
        fixed = model.input_shape[1:3]
        if None not in fixed and tuple(fixed) != (h, w):
            raise ValueError(f"this model takes {fixed[0]}x{fixed[1]} images only; build it with input_shape=(None, "
                             "None, 3) for several sizes")
        resized = np.asarray(Image.fromarray(np.clip(image, 0, 255).astype("uint8")).resize(
            (w, h), Image.Resampling.BICUBIC), "float32")
        maps = np.asarray(extractor.predict_on_batch(resized[None]))[0]
        out[(h, w)] = (pca_rgb(maps), resized)
    return out


def pca_figure(model, image, path, sizes, block=-1):
    """A PNG: the image and the PCA of its patch features at each size (`pca_maps`)."""
    plt = pyplot()
    maps = pca_maps(model, image, sizes, block)
    fig, axes = plt.subplots(1, 1 + len(maps), figsize=(3.2 * (1 + len(maps)), 3.4), squeeze=False)
    first = next(iter(maps.values()))[1]
    axes[0, 0].imshow(first / 255.0)
    axes[0, 0].set_title("input")
    for ax, ((h, w), (rgb, _)) in zip(axes[0, 1:], maps.items()):
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(f"PCA of patch features, {h}x{w}\n({rgb.shape[0]}x{rgb.shape[1]} patches)", fontsize=9)
    for ax in axes[0]:
        ax.axis("off")
    return save_figure(fig, path)


def extract_features(model, images, batch_size=64):
    """Pooled features (B, D) of a classifier or feature model: the input of its head
    (the pooled, normalised class token or patch mean)."""
    import keras

    names = [layer.name for layer in model.layers]
    if len(model.output_shape) == 2 and "head" not in names and "head_avg" not in names:
        feats = model  # already pooled features (include_top=False, pooling=...)
    else:
        layer = next((model.get_layer(n) for n in ("fc_norm", "pool") if n in names), None)
        if layer is None:
            raise ValueError(f"model {model.name!r} has no pooled feature layer ('pool' or 'fc_norm')")
        feats = keras.Model(model.inputs, layer.output)
    return np.asarray(feats.predict(np.asarray(images, "float32"), batch_size=batch_size, verbose=0))


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, rect=None):
    """Lay out, write as a PNG (110 dpi) and close `fig`; returns the path."""
    from keras_vitnt.io_utils import atomic_path

    fig.tight_layout(rect=rect)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        pyplot().close(fig)
    return path


def tsne_embedding(features, seed=0):
    from sklearn.manifold import TSNE

    features = np.asarray(features, "float64")
    perplexity = float(min(30, max(2, features.shape[0] // 4)))
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(features)


def tsne_plot(features, labels, path, title=None, class_names=None):
    """t-SNE of features coloured by label, saved as a PNG. `features` may be a dict
    {panel title: features} to draw several models side by side (the TNT paper's DeiT vs
    TNT figure). Returns the path."""
    plt = pyplot()
    panels = features if isinstance(features, dict) else {title or "t-SNE": features}
    labels = np.asarray(labels)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), squeeze=False)
    for ax, (name, feats) in zip(axes[0], panels.items()):
        emb = tsne_embedding(feats)
        sc = ax.scatter(emb[:, 0], emb[:, 1], c=labels, cmap="tab10", s=7)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, _ = sc.legend_elements()
    names = class_names or [str(c) for c in np.unique(labels)]
    fig.legend(handles, names, loc="center right", fontsize=8)
    return save_figure(fig, path, rect=(0, 0, 0.93, 1))


def overlay(image, heat, path, title=None, alpha=0.5):
    """Save an image with a heat map (H, W in [0, 1]) over it, side by side with the image."""
    plt = pyplot()
    image = np.asarray(image, "float32")
    image = image / 255.0 if image.max() > 1.5 else image
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.4))
    axes[0].imshow(np.clip(image, 0, 1))
    axes[0].set_title("input")
    axes[1].imshow(np.clip(image, 0, 1))
    axes[1].imshow(heat, cmap="jet", alpha=alpha, vmin=0, vmax=1)
    axes[1].set_title(title or "attention")
    for ax in axes:
        ax.axis("off")
    return save_figure(fig, path)


def attention_grid(model, image, path, block=-1):
    """All heads of one block: the class token's attention to the patches, as a PNG."""
    plt = pyplot()
    prefix, (gh, gw), _ = _structure(model, image)
    maps = attention_maps(model, image)
    att = (maps["outer"] if isinstance(maps, dict) else maps)[0, block]  # (heads, T, T)
    heads = att.shape[0]
    cols = min(heads, 6)
    rows = int(np.ceil(heads / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < heads:
            ax.imshow(att[i, 0, prefix:].reshape(gh, gw), cmap="viridis")
            ax.set_title(f"head {i}", fontsize=8)
    return save_figure(fig, path)
