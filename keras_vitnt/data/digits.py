"""The bundled real dataset for offline use: scikit-learn's handwritten digits (1,797
8x8 grey images of 0-9, UCI ML hand-written digits), upscaled to RGB images."""

import numpy as np

CLASS_NAMES = [str(i) for i in range(10)]


def load_digits(size=32, test_fraction=0.2, seed=0):
    """((x_train, y_train), (x_test, y_test)): float32 RGB in [0, 255] of shape
    (n, size, size, 3) (bilinear upscaling of the 8x8 originals) and int labels, split
    stratified and reproducibly."""
    from PIL import Image
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    data = sk_digits()
    grey = (data.images * (255.0 / 16.0)).astype("uint8")
    up = np.stack([np.asarray(Image.fromarray(g).resize((size, size), Image.Resampling.BILINEAR)) for g in grey])
    x = np.repeat(up[..., None], 3, axis=-1).astype("float32")
    y = data.target.astype("int64")
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return (x_tr, y_tr), (x_te, y_te)
