"""Image loading as timm evaluates: resize the shorter side to floor(size / crop_pct) with
the tag's interpolation (bicubic for every registered model), then center-crop to size.
Returns float32 RGB in [0, 255], the input `include_preprocessing=True` models take."""

import math
import os

import numpy as np

_PIL_FILTERS = {"bicubic": "BICUBIC", "bilinear": "BILINEAR", "nearest": "NEAREST"}


def load_image(path, size=224, crop_pct=0.9, interpolation="bicubic"):
    """Load one image file -> (size, size, 3) float32 RGB in [0, 255].

    Matches timm's `create_transform(..., is_training=False)` for a square size (PIL resize
    of the shorter side, center crop rounded as torchvision's CenterCrop does)."""
    from PIL import Image

    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file {path!r} does not exist")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except OSError as e:
        raise ValueError(f"{path!r} is not an image PIL can read ({e})") from e
    return center_crop_resize(im, size, crop_pct, interpolation)


def center_crop_resize(im, size=224, crop_pct=0.9, interpolation="bicubic"):
    """A PIL image -> (size, size, 3) float32, timm's eval resize + center crop."""
    from PIL import Image

    if interpolation not in _PIL_FILTERS:
        raise ValueError(f"interpolation {interpolation!r}: choose one of {sorted(_PIL_FILTERS)}")
    scale = math.floor(size / crop_pct)
    w, h = im.size
    if w <= h:
        new_w, new_h = scale, int(scale * h / w)
    else:
        new_w, new_h = int(scale * w / h), scale
    im = im.resize((new_w, new_h), getattr(Image.Resampling, _PIL_FILTERS[interpolation]))
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    im = im.crop((left, top, left + size, top + size))
    return np.asarray(im, dtype="float32")


def load_images(paths, size=224, crop_pct=0.9, interpolation="bicubic"):
    """Several files -> (N, size, size, 3) float32 batch."""
    return np.stack([load_image(p, size, crop_pct, interpolation) for p in paths])
