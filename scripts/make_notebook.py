"""Writes notebooks/finetune_tnt_tf_flowers.ipynb (the Colab notebook) from the cells below.
    .venv/bin/python scripts/make_notebook.py
"""

import pathlib

import nbformat

CELLS = [
    ("md", """# Fine-tune TNT-S on tf_flowers and export it to TFLite

keras_vitnt gives Keras the Transformer-in-Transformer (TNT) with timm's exact numbers.
This notebook fine-tunes the ImageNet-pretrained **TNT-S** (81.5% top-1) on the 3,670 photos of
`tf_flowers` with plain `model.fit` (layer-wise learning-rate decay, mixed precision), evaluates it, exports it
to a float16 `.tflite` file for phones (checked in the LiteRT interpreter) and classifies a photo.

Runtime: *GPU* (T4 is fine) or *TPU*. On a CPU it runs, slowly. Change the parameters below to fine-tune
another model (any `keras_vitnt.list_models()` name) on your own image folder (`root/class_name/*.jpg`)."""),
    ("code", """# Parameters
import os
# Where to install keras_vitnt from: this repository's git URL, or leave it empty and upload a wheel
# (`make wheel` builds dist/keras_vitnt-*.whl) to the session's working folder.
REPO_URL = ""
MODEL, WEIGHTS, DATA = "tnt_s_patch16_224", "imagenet", "tfds:tf_flowers"   # DATA: or "path/to/root/class/*.jpg"
EPOCHS, BATCH_SIZE, IMAGE_SIZE, OVERRIDES = 5, 64, None, {}                 # IMAGE_SIZE None: the model's own
OUT = "saved_models/tnt_flowers"
IMAGE = None   # a photo to classify at the end (default: a bundled sample photo)
# The test suite runs exactly these cells with a 1-block TNT-S at 64x64 on an image folder, offline, with the
# pretrained file served by a local stand-in of the hub: only the model's size differs from the run above.
if os.environ.get("KERAS_VITNT_NOTEBOOK_TEST") == "1":
    DATA, OUT, IMAGE = (os.environ[f"KERAS_VITNT_NOTEBOOK_{k}"] for k in ("DATA", "OUT", "IMAGE"))
    EPOCHS, BATCH_SIZE, IMAGE_SIZE, OVERRIDES = 2, 8, 64, {"depth": 1}"""),
    ("code", """# Install keras_vitnt (with the tensorflow-datasets extra) unless it is already there.
import glob, importlib.util, subprocess, sys
if importlib.util.find_spec("keras_vitnt") is None:
    wheels = sorted(glob.glob("keras_vitnt-*.whl"))
    if wheels:
        source = f"keras_vitnt[datasets] @ file://{os.path.abspath(wheels[-1])}"
    elif REPO_URL:
        source = f"keras_vitnt[datasets] @ git+{REPO_URL}"
    else:
        raise RuntimeError("keras_vitnt is not installed: set REPO_URL in the parameters cell to this repository's "
                           "git URL, or upload a keras_vitnt-*.whl (built with `make wheel`) to this folder")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", source], check=True)"""),
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
layer-wise learning-rate decay, label smoothing, stochastic depth, random resized crops and flips in a `tf.data`
pipeline, mixed precision (`auto`: float16 on a GPU, bfloat16 on a TPU or CPU), the best checkpoint,
`BackupAndRestore` (re-run the cell after a disconnect and it resumes; re-run a finished run and it is shown, not
retrained) and a CSV log."""),
    ("code", """cfg = TrainConfig(model=MODEL, weights=WEIGHTS, data=DATA, epochs=EPOCHS, batch_size=BATCH_SIZE,
                  image_size=IMAGE_SIZE, lr=1e-4, layer_decay=0.75, mixed_precision="auto", out=OUT,
                  strategy=strategy, overrides=OVERRIDES)
result = train(cfg, verbose=2)
print(f"validation accuracy: {result.val_accuracy:.4f} ({result.status}, {result.epochs_run} epochs)")"""),
    ("code", """from IPython.display import Image, display
display(Image(os.path.join(OUT, "curves.png")))"""),
    ("md", "## Export to TFLite (LiteRT) and check it in the interpreter"),
    ("code", """report = keras_vitnt.export(result.model, os.path.join(OUT, "model_fp16.tflite"), quantization="float16",
                            class_names=result.class_names, overwrite=True)
print({k: report[k] for k in ("size_bytes", "max_relative_error", "top1_agreement", "correlation")})"""),
    ("md", "## Classify a photo with the exported file"),
    ("code", """from ai_edge_litert.interpreter import Interpreter
import json
from keras_vitnt.data.samples import photo_crops
meta = json.load(open(os.path.join(OUT, "model_fp16.tflite.json")))
size = meta["input_shape"][0]
# the file takes RGB 0..255 at its input size; load_image crops and resizes as timm evaluates
image = keras_vitnt.load_image(IMAGE, size=size)[None] if IMAGE else photo_crops(1, size)
interp = Interpreter(model_path=os.path.join(OUT, "model_fp16.tflite"))
interp.allocate_tensors()
interp.set_tensor(interp.get_input_details()[0]["index"], image.astype("float32"))
interp.invoke()
probs = interp.get_tensor(interp.get_output_details()[0]["index"])[0]
print("predicted:", meta["class_names"][int(probs.argmax())], f"({probs.max():.2%})")"""),
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
