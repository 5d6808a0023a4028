"""ImageNet-1k class names (bundled, generated from timm's class lists) and
`decode_predictions` in the keras.applications style."""

import functools
import json
import os

import numpy as np

_CLASSES_FILE = os.path.join(os.path.dirname(__file__), "imagenet_classes.json")


@functools.lru_cache(maxsize=1)
def imagenet_classes():
    """[(wnid, description)] for the 1000 ImageNet-1k classes, in the checkpoints' order."""
    with open(_CLASSES_FILE) as f:
        return [tuple(c) for c in json.load(f)]


def decode_predictions(preds, top=5):
    """(B, 1000) scores -> for each image a list of `top` (wnid, description, score),
    best first. Works on probabilities or logits (the order is the same)."""
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] != 1000:
        raise ValueError(
            f"decode_predictions expects a batch of ImageNet-1k scores of shape (batch, 1000), got {preds.shape}. "
            "Checkpoints with other heads (e.g. 21843 ImageNet-21k classes) need their own label list."
        )
    classes = imagenet_classes()
    top = int(top)
    order = np.argsort(-preds, axis=1, kind="stable")[:, :top]
    return [[(*classes[i], float(row[i])) for i in idx] for row, idx in zip(preds, order)]
