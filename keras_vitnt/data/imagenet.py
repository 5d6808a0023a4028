"""ImageNet-1k and ImageNet-21k class names (bundled, generated from timm's class lists by
scripts/gen_imagenet_classes.py) and `decode_predictions` in the keras.applications style."""

import functools
import gzip
import json
import os

import numpy as np

_CLASSES_FILE = os.path.join(os.path.dirname(__file__), "imagenet_classes.json")
_CLASSES_21K_FILE = os.path.join(os.path.dirname(__file__), "imagenet21k_classes.json.gz")


@functools.lru_cache(maxsize=1)
def imagenet_classes():
    """[(wnid, description)] for the 1000 ImageNet-1k classes, in the checkpoints' order."""
    with open(_CLASSES_FILE) as f:
        return [tuple(c) for c in json.load(f)]


@functools.lru_cache(maxsize=1)
def imagenet21k_classes():
    """[(wnid, description)] for the 21843 classes of Google's ImageNet-21k heads (the
    `*_in21k` tags), in the checkpoints' order."""
    with gzip.open(_CLASSES_21K_FILE, "rt") as f:
        return [tuple(c) for c in json.load(f)]


CLASS_LISTS = {1000: imagenet_classes, 21843: imagenet21k_classes}


def has_class_names(num_classes):
    return num_classes in CLASS_LISTS


def decode_predictions(preds, top=5):
    """(B, 1000) ImageNet-1k or (B, 21843) ImageNet-21k scores -> for each image a list of
    `top` (wnid, description, score), best first. Works on probabilities or logits (the
    order is the same)."""
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] not in CLASS_LISTS:
        raise ValueError(
            f"decode_predictions expects a batch of ImageNet-1k (batch, 1000) or ImageNet-21k (batch, 21843) "
            f"scores, got {preds.shape}. For a head of your own classes, index your label list with argmax."
        )
    classes = CLASS_LISTS[preds.shape[1]]()
    top = int(top)
    order = np.argsort(-preds, axis=1, kind="stable")[:, :top]
    return [[(*classes[i], float(row[i])) for i in idx] for row, idx in zip(preds, order)]
