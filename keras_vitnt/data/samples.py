"""Real photos for checks that need real images offline (export parity, int8
calibration): the two sample photos that ship with scikit-learn (CC BY 2.0, see
sklearn/datasets/images/README.txt), cut into crops at any size."""

import numpy as np


def sample_photos():
    """[(H, W, 3) uint8] RGB photos bundled with scikit-learn (a temple, a flower)."""
    from sklearn.datasets import load_sample_image

    return [load_sample_image("china.jpg"), load_sample_image("flower.jpg")]


def photo_crops(n, size, seed=0):
    """n float32 RGB crops in [0, 255] of shape (n, h, w, 3) from the sample photos: the
    first ones center crops, then random crops of 30-100% of the area, resized bicubic."""
    from PIL import Image

    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(p) for p in sample_photos()]
    out = []
    for i in range(n):
        im = photos[i % len(photos)]
        W, H = im.size
        if i < len(photos):
            side = min(W, H)
            box = ((W - side) // 2, (H - side) // 2, (W + side) // 2, (H + side) // 2)
        else:
            area = rng.uniform(0.3, 1.0) * W * H
            ch = int(min(H, np.sqrt(area * h / w)))
            cw = int(min(W, ch * w / h))
            top, left = rng.integers(0, H - ch + 1), rng.integers(0, W - cw + 1)
            box = (left, top, left + cw, top + ch)
        out.append(np.asarray(im.crop(box).resize((w, h), Image.Resampling.BICUBIC), dtype="float32"))
    return np.stack(out)
