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


# --- jobs in processes of their own, beside the suite (tests/background_jobs.py) ----------------

BACKGROUND_TIMEOUT = 1500  # seconds a test waits for its job (which started with the suite)


def pytest_configure(config):
    config.addinivalue_line("markers", "background(job): the test reads the result of a tests/background_jobs.py job")


def pytest_collection_modifyitems(session, config, items):
    """The `background` tests go last, and their jobs start now in one background process."""
    waiting = [item for item in items if item.get_closest_marker("background")]
    if not waiting:
        return
    items[:] = [item for item in items if not item.get_closest_marker("background")] + waiting
    jobs = list(dict.fromkeys(item.get_closest_marker("background").args[0] for item in waiting))
    import subprocess
    import tempfile

    work = tempfile.mkdtemp(prefix="keras_vitnt_background-")
    log = open(os.path.join(work, "driver.log"), "w")
    script = os.path.join(os.path.dirname(__file__), "background_jobs.py")
    # at the lowest priority: the jobs take the CPU time the suite leaves idle (it averages 1.15 of 2 cores)
    # and do not slow the tests beside them; their processes inherit it
    config._background = (work, subprocess.Popen([sys.executable, script, work, *jobs], stdout=log,
                                                 stderr=subprocess.STDOUT, env=dict(os.environ),
                                                 preexec_fn=lambda: os.nice(19)))


def pytest_sessionfinish(session, exitstatus):
    import shutil

    work, proc = getattr(session.config, "_background", (None, None))
    if proc is not None:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def background_job(request):
    """wait(job) -> the job's folder (a pathlib.Path), once tests/background_jobs.py finished it."""
    import json
    import pathlib
    import time

    def wait(job):
        work, proc = request.config._background
        done = pathlib.Path(work) / f"{job}.done.json"
        start = time.time()
        while not done.exists():
            if proc.poll() is not None and not done.exists():
                pytest.fail(f"the background jobs' process ended (code {proc.returncode}) before {job!r}: "
                            + (pathlib.Path(work) / "driver.log").read_text()[-3000:])
            if time.time() - start > BACKGROUND_TIMEOUT:
                pytest.fail(f"background job {job!r} did not finish {BACKGROUND_TIMEOUT} s after its test began")
            time.sleep(0.5)
        status = json.loads(done.read_text())
        folder = pathlib.Path(work) / job
        if not status["ok"]:
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(folder.glob("*.log")))
            pytest.fail(f"background job {job!r} failed:\n{status['error']}\n{logs}")
        print(f"background job {job}: {status['seconds']:.0f} s")
        return folder

    return wait
