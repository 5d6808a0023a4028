import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# timm (through torchvision) imports triton, whose native library crashes the process
# when it is loaded after TensorFlow. Load the oracle first.
import timm  # noqa: E402,F401
import torch  # noqa: E402

torch.set_num_threads(max(1, os.cpu_count() or 1))
sys.path.insert(0, os.path.dirname(__file__))

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()
