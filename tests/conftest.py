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


# --- jobs in processes of their own (tests/background_jobs.py) ------------------------------------
# Run when their first test needs them, one at a time. (Started at collection beside the suite, niced or
# not, they saved no time measurably here: 22.2 and 24 min from a fresh clone against 22.7 run one at a
# time, and they add 5-8 GB beside the suite's 15 GB peak.)

JOB_TIMEOUT = 1500  # seconds


def pytest_configure(config):
    config.addinivalue_line("markers", "background(job): the test reads the result of a tests/background_jobs.py job")


def pytest_collection_modifyitems(session, config, items):
    """The `background` tests go last, each job's tests together."""
    waiting = [item for item in items if item.get_closest_marker("background")]
    items[:] = [item for item in items if not item.get_closest_marker("background")] + waiting


@pytest.fixture(scope="session")
def background_job(tmp_path_factory):
    """run(job) -> the job's folder (a pathlib.Path), once tests/background_jobs.py has run it."""
    import json
    import subprocess

    work = tmp_path_factory.mktemp("jobs")
    script = os.path.join(os.path.dirname(__file__), "background_jobs.py")

    def run(job):
        done = work / f"{job}.done.json"
        if not done.exists():
            proc = subprocess.run([sys.executable, script, str(work), job], capture_output=True, text=True,
                                  timeout=JOB_TIMEOUT)
            if not done.exists():
                pytest.fail(f"job {job!r} ended (code {proc.returncode}) without a result: {proc.stdout[-3000:]}"
                            f"{proc.stderr[-3000:]}")
        status = json.loads(done.read_text())
        folder = work / job
        if not status["ok"]:
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(folder.glob("*.log")))
            pytest.fail(f"job {job!r} failed:\n{status['error']}\n{logs}")
        print(f"job {job}: {status['seconds']:.0f} s")
        return folder

    return run
