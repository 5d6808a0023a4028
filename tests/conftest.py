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
    # without Keras's gc.collect(): it took 0.3-0.6 s after every test (a heap holding torch, timm and
    # TensorFlow); Python's own collector still frees the cycles
    keras.backend.clear_session(free_memory=False)


@pytest.fixture
def fast_quantize(monkeypatch):
    """Keras runs gc.collect() each time `model.quantize` deletes a float kernel: 0.35 s per Dense
    layer in this process's heap (torch, timm and TensorFlow), most of the quantizing tests' time.
    Python's collector still runs on its own."""
    import gc

    monkeypatch.setattr(gc, "collect", lambda *args: 0)


@pytest.fixture(scope="session")
def digits_runs(tmp_path_factory):
    """A small ViT and a small TNT trained from scratch on the bundled digits with the
    demo's recipe (fewer epochs): real trained models for the accuracy floors, int8
    export and visualisation tests. {kind: (TrainResult, (x_test, y_test))}."""
    from keras_vitnt import demo
    from keras_vitnt.data.digits import load_digits
    from keras_vitnt.train import train

    out = tmp_path_factory.mktemp("digits_runs")
    runs = {}
    for kind, epochs in (("vit", 15), ("tnt", 20)):
        result = train(demo.demo_config(kind, str(out), epochs), verbose=0)
        (_, _), test = load_digits(size=demo.IMAGE_SIZE)
        runs[kind] = (result, test)
    return runs
