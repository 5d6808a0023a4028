import gc
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Threads per process: `make test` runs as many pytest-xdist workers as the machine has cores (2), and each
# worker computed on every core: 4 busy threads on 2 cores. With one thread per worker, tests/test_parity.py's
# reduced- and full-depth tests under `-n 2` took 199 s against 253 s (2-core AMD EPYC, one run each); the
# whole suite 1212 s, inside the 1148-1445 s of five earlier runs. So each worker, and the processes it starts
# (CLI runs, the background jobs: TensorFlow's and PyTorch's pools; JAX sizes its own), computes on
# cores / workers threads. Set before TensorFlow loads.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, (os.cpu_count() or 1) // WORKERS)
if WORKERS > 1:
    for var, value in (("TF_NUM_INTRAOP_THREADS", THREADS), ("TF_NUM_INTEROP_THREADS", 1),
                       ("OMP_NUM_THREADS", THREADS)):
        os.environ.setdefault(var, str(value))

# timm (through torchvision) imports triton, whose native library crashes the process
# when it is loaded after TensorFlow. Load the oracle first.
import timm  # noqa: E402,F401
import torch  # noqa: E402

torch.set_num_threads(THREADS)
sys.path.insert(0, os.path.dirname(__file__))

import keras  # noqa: E402
import pytest  # noqa: E402


GC_GROWTH_MB = 1024  # collect when the process has grown this much since the last collection
_rss_after_gc = [0.0]


def _rss_mb():
    from keras_vitnt.peers import status_mb

    try:
        return status_mb("VmRSS")
    except (OSError, StopIteration):  # not Linux: no measure, Python's own collector only
        return 0.0


def _malloc_trim():
    """Hand the freed heap back to the system (glibc keeps it otherwise)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    keras.utils.set_random_seed(0)
    yield
    # without Keras's gc.collect() after every test: it took 0.3-0.6 s each (a heap holding torch, timm and
    # TensorFlow). But the models' cycles wait for Python's oldest generation, and the process grew to
    # 9.7 GB in the reduced-depth parity tests alone (7.6 GB collecting after each): two pytest-xdist
    # workers and a job beside them came to 20.4 of this machine's 24 GB (17-19 GB since this). So
    # collect when the worker grew by 1 GB.
    keras.backend.clear_session(free_memory=False)
    rss = _rss_mb()
    if rss - _rss_after_gc[0] > GC_GROWTH_MB:
        gc.collect()
        _malloc_trim()
        _rss_after_gc[0] = _rss_mb()


@pytest.fixture
def fast_quantize(monkeypatch):
    """Keras runs gc.collect() each time `model.quantize` deletes a float kernel: 0.35 s per Dense
    layer in this process's heap (torch, timm and TensorFlow), most of the quantizing tests' time.
    Python's collector still runs on its own."""
    monkeypatch.setattr(gc, "collect", lambda *args: 0)


DIGITS_EPOCHS = {"vit": 15, "tnt": 20}  # the demo's are 40 / 45


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The demo itself (`keras_vitnt.demo.run`, its settings and XLA) with fewer epochs: a small ViT and a
    small TNT trained from scratch on the bundled digits, exported to LiteRT, the figures drawn. The demo's
    test reads its files; its trained models serve the accuracy floors and the int8 tests (one training for
    all: the demo's test used to train both models again, 1 epoch each, 138 s of a 30-min suite).
    -> (out folder, demo.run's results, {kind: TrainResult})."""
    from keras_vitnt import demo

    out = tmp_path_factory.mktemp("demo_run") / "demo"
    trained = {}

    def train_and_keep(cfg, **kw):
        result = demo_train(cfg, **kw)
        trained[os.path.basename(cfg.out)] = result
        return result

    demo_train = demo.train
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "DEMO_EPOCHS", DIGITS_EPOCHS)
        mp.setattr(demo, "train", train_and_keep)
        results = demo.run(out=str(out), verbose=0)
    assert set(trained) == {"vit", "tnt"}
    return out, results, trained


@pytest.fixture(scope="session")
def digits_runs(demo_run):
    """The demo run's trained models: {kind: (TrainResult, (x_test, y_test))}."""
    from keras_vitnt import demo
    from keras_vitnt.data.digits import load_digits

    (_, _), test = load_digits(size=demo.IMAGE_SIZE)
    return {kind: (result, test) for kind, result in demo_run[2].items()}


# --- jobs in processes of their own (tests/background_jobs.py) ------------------------------------
# Run when their first test needs them, one at a time. (Started at collection beside the suite, niced or
# not, they saved no time measurably here: 22.2 and 24 min from a fresh clone against 22.7 run one at a
# time, and they add 5-8 GB beside the suite's 15 GB peak.)

JOB_TIMEOUT = 1500  # seconds


def pytest_configure(config):
    config.addinivalue_line("markers", "background(job): the test reads the result of a tests/background_jobs.py job")
    config.addinivalue_line("markers", "xdist_group(name): pytest-xdist runs the group's tests in one worker")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's loadgroup reads the groups
def pytest_collection_modifyitems(session, config, items):
    """The `background` tests go last, each job's tests together (in one process). Under pytest-xdist
    (`make test` runs `-n 2 --dist loadgroup`) the tests that share a costly session fixture (a job, the
    digits runs) go to one worker, so that it runs once; xdist then sends the largest groups first."""
    for item in items:
        job = item.get_closest_marker("background")
        if job is not None:
            item.add_marker(pytest.mark.xdist_group(f"job_{job.args[0]}"))
        elif "demo_run" in item.fixturenames:  # digits_runs too: it uses demo_run
            item.add_marker(pytest.mark.xdist_group("digits_runs"))
    waiting = [item for item in items if item.get_closest_marker("background")]
    items[:] = [item for item in items if not item.get_closest_marker("background")] + waiting


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """On the pytest-xdist controller: a worker's grouped tests carry "@group" in their ids. Without it,
    each worker would run the jobs and the digits training again (pytest 9.2 broke it silently:
    pytest-dev/pytest-xdist#1386)."""
    if node.config.getvalue("dist") == "loadgroup":
        lost = [i for i in ids if i.startswith("tests/test_backends.py") and "@" not in i]
        if lost:
            pytest.exit(f"pytest-xdist's --dist loadgroup kept no group (e.g. {lost[0]}): this pytest and "
                        f"pytest-xdist do not work together; install pytest<9.2 (pip install -e '.[test]')",
                        returncode=4)


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
