"""Position-embedding resampling with timm's numbers, as a pure numpy function.

timm's `resample_abs_pos_embed` keeps the prefix tokens and resizes the square grid part
with `F.interpolate(mode="bicubic", align_corners=False, antialias=True)`. With
antialias=True PyTorch uses its separable anti-aliased kernel in both directions (the
Pillow-style filter: Keys cubic with a = -0.5, support widened by the scale when
downsampling, weights renormalised at the borders), not the a = -0.75 kernel of its
plain bicubic mode; `tf.image.resize` matches neither. This reimplements that kernel.
"""

import math

import numpy as np


def _cubic_aa(x, a=-0.5):
    x = np.abs(x)
    return np.where(
        x < 1.0,
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
        np.where(x < 2.0, (((x - 5.0) * x + 8.0) * x - 4.0) * a, 0.0),
    )


def aa_bicubic_matrix(in_size, out_size):
    """(out_size, in_size) interpolation matrix of PyTorch's antialiased bicubic resize
    (align_corners=False): row i holds the weights of output sample i."""
    scale = in_size / out_size
    support = 2.0 * scale if scale >= 1.0 else 2.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    m = np.zeros((out_size, in_size), dtype="float64")
    for i in range(out_size):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)  # int() truncates toward zero, as C does
        xmax = min(int(center + support + 0.5), in_size)
        j = np.arange(xmin, xmax)
        w = _cubic_aa((j - center + 0.5) * invscale)
        total = w.sum()
        m[i, xmin:xmax] = w / total if total != 0 else w
    return m


def bilinear_matrix(in_size, out_size):
    """(out_size, in_size) matrix of PyTorch's bilinear resize, align_corners=False, no
    antialias (what timm uses for Google `.npz` position tables)."""
    scale = in_size / out_size
    m = np.zeros((out_size, in_size), dtype="float64")
    for i in range(out_size):
        src = max(scale * (i + 0.5) - 0.5, 0.0)
        i0 = int(src)
        i1 = i0 + 1 if i0 < in_size - 1 else i0
        frac = src - i0
        m[i, i0] += 1.0 - frac
        m[i, i1] += frac
    return m


INTERPOLATIONS = {"bicubic": aa_bicubic_matrix, "bilinear": bilinear_matrix}


def resample_grid(grid, new_size, interpolation="bicubic"):
    """(h, w, D) -> (new_h, new_w, D) with timm's resize: "bicubic" (antialiased, the default
    for timm checkpoints) or "bilinear" (timm's choice for Google `.npz` files)."""
    h, w, _ = grid.shape
    mh = INTERPOLATIONS[interpolation](h, new_size[0])
    mw = INTERPOLATIONS[interpolation](w, new_size[1])
    out = np.einsum("ij,jkc,lk->ilc", mh, grid.astype("float64"), mw)
    return out.astype(grid.dtype)


def resample_abs_pos_embed(posemb, new_size, num_prefix_tokens=1, old_size=None, interpolation="bicubic"):
    """timm's `resample_abs_pos_embed` for a (1, prefix + h*w, D) table.

    `old_size` defaults to the square grid the checkpoint holds (as timm assumes);
    `new_size` = (rows, cols) may be non-square.
    """
    posemb = np.asarray(posemb)
    n = posemb.shape[1] - num_prefix_tokens
    if old_size is None:
        side = int(math.isqrt(n))
        if side * side != n:
            raise ValueError(
                f"position embedding with {n} grid tokens is not a square grid: pass old_size=(rows, cols)"
            )
        old_size = (side, side)
    if tuple(old_size) == tuple(new_size):
        return posemb
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[0, num_prefix_tokens:]
    grid = resample_grid(grid.reshape(old_size[0], old_size[1], -1), new_size, interpolation)
    return np.concatenate([prefix, grid.reshape(1, -1, grid.shape[-1])], axis=1)
