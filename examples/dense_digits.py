"""Dense prediction with keras_vitnt.feature_extractor: a linear (1x1 conv) head on the token
map of a small ViT, trained with plain model.fit on a segmentation target made offline from the
bundled digits: which 4x4 patches of the 32x32 image are mostly ink (digit vs background).

    .venv/bin/python examples/dense_digits.py [--epochs 8]

Prints the test patch accuracy and the intersection-over-union of the "digit" class, next to
the all-background baseline. The README quotes one run.
"""

import argparse

import keras
import numpy as np

import keras_vitnt
from keras_vitnt.data.digits import load_digits

PATCH = 4


def patch_masks(images, patch=PATCH):
    """(N, H, W, 3) RGB 0..255 -> (N, H/patch, W/patch) int: 1 where more than half the patch is ink."""
    ink = images.mean(-1) / 255.0 > 0.5
    n, h, w = ink.shape
    return (ink.reshape(n, h // patch, patch, w // patch, patch).mean((2, 4)) > 0.5).astype("int64")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    (x_train, _), (x_test, _) = load_digits(size=32)
    m_train, m_test = patch_masks(x_train), patch_masks(x_test)

    backbone = keras_vitnt.ViT("Ti/4", weights=None, input_shape=(32, 32, 3), include_top=False, depth=4,
                               embed_dim=96, num_heads=3)
    features = keras_vitnt.feature_extractor(backbone, indices=1, norm=True)  # (B, 8, 8, 96)
    logits = keras.layers.Conv2D(2, 1, name="seg_head")(features.outputs[0])  # the linear head
    seg = keras.Model(features.inputs, logits)
    seg.compile(keras.optimizers.AdamW(1e-3, weight_decay=0.05),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    seg.fit(x_train, m_train, epochs=args.epochs, batch_size=64, verbose=2)

    pred = np.argmax(seg.predict(x_test, batch_size=128, verbose=0), axis=-1)
    accuracy = float((pred == m_test).mean())
    iou = float(((pred == 1) & (m_test == 1)).sum() / ((pred == 1) | (m_test == 1)).sum())
    baseline = float((m_test == 0).mean())
    print(f"test patches: {m_test.size}, digit share {m_test.mean():.3f}")
    print(f"patch accuracy {accuracy:.4f} (all-background baseline {baseline:.4f}), digit IoU {iou:.4f}")
    return accuracy, iou


if __name__ == "__main__":
    main()
