"""Writes notebooks/finetune_tnt_tf_flowers.ipynb (the Colab notebook) from the cells below.
    .venv/bin/python scripts/make_notebook.py
"""

import pathlib

import nbformat

CELLS = [
    ("md", """# Fine-tune TNT-S on tf_flowers and export it to TFLite

[keras_vitnt](https://github.com/) gives Keras the Transformer-in-Transformer (TNT) with timm's exact numbers.
This notebook fine-tunes the ImageNet-pretrained **TNT-S** (81.5% top-1) on the 3,670 photos of
`tf_flowers` with plain `model.fit`, evaluates it, exports it to a `.tflite` file for phones (checked in the
LiteRT interpreter) and classifies an image.

Runtime: *GPU* (T4 is fine) or *TPU*. On a CPU it runs, slowly."""),
    ("code", """# Parameters. FAST=1 (set by the test suite) trains a small TNT on the bundled digits, offline, in a minute.
import os
FAST = os.environ.get("KERAS_VITNT_NOTEBOOK_FAST") == "1"
OUT = os.environ.get("KERAS_VITNT_NOTEBOOK_OUT", "saved_models/tnt_flowers")
EPOCHS = 2 if FAST else 5"""),
    ("code", """# Install (Colab): the package with the tensorflow-datasets extra.
import importlib.util, subprocess, sys
if importlib.util.find_spec("keras_vitnt") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "keras_vitnt[datasets]"], check=True)"""),
    ("code", """import numpy as np
import tensorflow as tf
import keras
import keras_vitnt
from keras_vitnt.train import TrainConfig, train, get_strategy

# TPU on a Colab TPU runtime, all GPUs with MirroredStrategy, else the default device
strategy = get_strategy("auto")
print("replicas:", strategy.num_replicas_in_sync, "| devices:", [d.name for d in tf.config.list_logical_devices()])"""),
    ("md", """## Fine-tune with `model.fit`
`keras_vitnt.train` is the recipe: AdamW (no decay on norms, biases, tokens, position embeddings), warmup + cosine,
label smoothing, stochastic depth, random resized crops and flips in a `tf.data` pipeline, mixed precision, the
best checkpoint, `BackupAndRestore` (re-run the cell after a disconnect and it resumes) and a CSV log."""),
    ("code", """if FAST:
    cfg = TrainConfig(model="tnt:S", weights="none", data="digits", image_size=16, epochs=EPOCHS, batch_size=64,
                      lr=3e-3, augment="none", flip=False, out=OUT, strategy=strategy,
                      overrides=dict(patch_size=4, first_stride=2, embed_dim=96, inner_dim=16, depth=2,
                                     num_heads_outer=3, num_heads_inner=2))
else:
    cfg = TrainConfig(model="tnt_s_patch16_224", weights="imagenet", data="tfds:tf_flowers", epochs=EPOCHS,
                      batch_size=64, lr=1e-4, layer_decay=0.75, mixed_precision="auto", out=OUT, strategy=strategy)
result = train(cfg, verbose=2)
print(f"validation accuracy: {result.val_accuracy:.4f}")"""),
    ("code", """from IPython.display import Image, display
display(Image(os.path.join(OUT, "curves.png")))"""),
    ("md", "## Export to TFLite (LiteRT) and check it in the interpreter"),
    ("code", """report = keras_vitnt.export(result.model, os.path.join(OUT, "tnt.tflite"), quantization="float16",
                            class_names=result.class_names, overwrite=True)
print({k: report[k] for k in ("size_bytes", "max_relative_error", "top1_agreement", "correlation")})"""),
    ("md", "## Classify an image with the exported file"),
    ("code", """from ai_edge_litert.interpreter import Interpreter
import json
meta = json.load(open(os.path.join(OUT, "tnt.tflite.json")))
size = meta["input_shape"][0]
if FAST:
    from keras_vitnt.data.digits import load_digits
    (_, _), (x_test, y_test) = load_digits(size=size)
    image, truth = x_test[:1], int(y_test[0])
else:
    from keras_vitnt.data.samples import photo_crops
    image, truth = photo_crops(1, size), None   # or keras_vitnt.load_image("your_photo.jpg", size=size)[None]
interp = Interpreter(model_path=os.path.join(OUT, "tnt.tflite"))
interp.allocate_tensors()
interp.set_tensor(interp.get_input_details()[0]["index"], image.astype("float32"))
interp.invoke()
probs = interp.get_tensor(interp.get_output_details()[0]["index"])[0]
print("predicted:", meta["class_names"][int(probs.argmax())], f"({probs.max():.2%})", "| truth:", truth)"""),
]


def main():
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "accelerator": "GPU", "colab": {"provenance": []}}
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                for kind, src in CELLS]
    out = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "finetune_tnt_tf_flowers.ipynb"
    nbformat.write(nb, out)
    print("wrote", out)


if __name__ == "__main__":
    main()
