"""Regenerates keras_vitnt/data/imagenet_classes.json (ImageNet-1k index -> [wnid, lemma]) and
imagenet21k_classes.json.gz (the 21843 classes of Google's ImageNet-21k heads, in the
checkpoints' order) from the class lists that ship with timm. Developer tool; run once and commit the file.
    .venv/bin/python scripts/gen_imagenet_classes.py
"""

import gzip
import json
import pathlib

import timm

INFO = pathlib.Path(timm.__file__).parent / "data" / "_info"


def main():
    synsets = (INFO / "imagenet_synsets.txt").read_text().split()
    lemmas = dict(line.split("\t", 1) for line in (INFO / "imagenet_synset_to_lemma.txt").read_text().splitlines())
    assert len(synsets) == 1000
    classes = [[wnid, lemmas[wnid].strip()] for wnid in synsets]
    out = pathlib.Path(__file__).resolve().parents[1] / "keras_vitnt" / "data" / "imagenet_classes.json"
    out.write_text("[\n" + ",\n".join(json.dumps(c) for c in classes) + "\n]\n")
    print(f"wrote {out}: {len(classes)} classes")
    synsets21k = (INFO / "imagenet21k_goog_synsets.txt").read_text().split()
    assert len(synsets21k) == 21843
    classes21k = [[wnid, lemmas[wnid].strip()] for wnid in synsets21k]
    out = out.with_name("imagenet21k_classes.json.gz")
    # mtime=0: the same bytes on every run
    out.write_bytes(gzip.compress(json.dumps(classes21k, separators=(",", ":")).encode(), mtime=0))
    print(f"wrote {out}: {len(classes21k)} classes")


if __name__ == "__main__":
    main()
