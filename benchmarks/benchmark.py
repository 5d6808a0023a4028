"""The one benchmark script: keras_vitnt next to timm, side by side in one run.

    .venv/bin/python benchmarks/benchmark.py [options]     # same as: keras-vitnt benchmark [options]

See `keras_vitnt/benchmark.py` (or `--help`) for the sections and options. The tables
go to benchmarks/results.md by default.
"""

import sys

import timm  # noqa: F401  before TensorFlow: triton (imported by torch) crashes when loaded after it

from keras_vitnt.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
