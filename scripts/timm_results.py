"""Published ImageNet-1k top-1 of timm's pretrained weights.

``timm_results_imagenet.csv`` (beside this script) is a filtered copy of timm's
own results table, ``results/results-imagenet.csv`` in
https://github.com/huggingface/pytorch-image-models at commit
aa4b5850c1543fa488abf260f18390eda46cf85d (2026-08-08, "Cpubone (#2733)").
Each row is top-1 / top-5 accuracy (percent) on the ImageNet-1k validation set,
evaluated at the tag's own input size and crop (its pretrained config).

Only rows whose architecture (the part of ``model`` before the '.') is one that
timm builds with its VisionTransformer / TNT classes are kept, i.e. the names
from ``timm.list_models(module=m)`` for m in ('vision_transformer', 'deit',
'tnt') (timm 1.0.31), and only the columns ``model,img_size,top1,top5``.
At that commit timm's file has exactly one row per ``name.tag`` for these
models and every ``img_size`` equals the tag's default input size.

To refresh: take ``results/results-imagenet.csv`` from a newer timm checkout,
keep the rows whose ``model.split('.')[0]`` is in the list above and the four
columns (header line first, no comments), overwrite the CSV, and update the
commit named here. If a ``name.tag`` ever appears more than once (several
img_size values), keep the row at the tag's default input size
(``timm.models.get_pretrained_cfg(name_tag).input_size``).
"""
import csv
import os

_DEFAULT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                             "timm_results_imagenet.csv")


def top1_table(path=None) -> dict:
    """Return {"name.tag": top1 (float, percent)} read from the CSV.

    If a ``name.tag`` occurs more than once, the first row wins.
    """
    table = {}
    with open(path or _DEFAULT_PATH, newline="") as f:
        for row in csv.DictReader(f):
            table.setdefault(row["model"], float(row["top1"]))
    return table
