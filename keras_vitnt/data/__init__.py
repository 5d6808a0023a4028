"""Inference data helpers: ImageNet-1k class names and image loading with timm's
evaluation resize + center crop."""

from keras_vitnt.data.images import load_image, load_images
from keras_vitnt.data.imagenet import decode_predictions, imagenet_classes

__all__ = ["decode_predictions", "imagenet_classes", "load_image", "load_images"]
