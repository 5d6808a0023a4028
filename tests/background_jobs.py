"""The suite's jobs that run in processes of their own (other Keras backends, several workers).
conftest.py's `background_job` fixture runs each once, when the first test marked
`background(JOB)` needs it (those tests run last in one process; under `make test`'s pytest-xdist,
each job's tests on one worker), and the tests assert on what it wrote.

    python tests/background_jobs.py WORK_DIR JOB [JOB ...]

Each job writes into WORK_DIR/JOB/ and then WORK_DIR/JOB.done.json ({"ok", "seconds",
"error"}); its processes' output goes to WORK_DIR/JOB/*.log.
"""

import json
import os
import socket
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
# the backend checks' cases: one block, real widths
BACKEND_CASES = {"vit_small_patch16_224": {"depth": 1}, "deit_small_distilled_patch16_224": {"depth": 1},
                 "tnt_s_patch16_224": {"depth": 1}}
BACKENDS = ("jax", "torch")  # in this order: torch loads what jax saved, the test process what torch saved


def _start(work, name, args, env=None):
    """A process of this job -> (process, log file)."""
    log = open(os.path.join(work, name + ".log"), "w+")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    return subprocess.Popen([sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT), log


def _wait(runs, timeout=900):
    """Waits for every (process, log); kills the rest when one fails or hangs."""
    try:
        for proc, _ in runs:
            proc.wait(timeout=timeout)
    finally:
        for proc, log in runs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    failed = [proc.args for proc, _ in runs if proc.returncode]
    if failed:
        raise RuntimeError(f"failed: {failed} (see the logs beside)")


def backends(work):
    """timm checkpoints and logits for tests/backend_checks.py, then that script on JAX and PyTorch."""
    import numpy as np
    import timm  # noqa: F401  (before TensorFlow)

    sys.path.insert(0, HERE)
    from timm_oracle import normalised_images, perturbed_timm_model, save_checkpoint, save_timm_gradients, timm_logits

    from keras_vitnt.data.digits import load_digits
    from keras_vitnt.demo import IMAGE_SIZE

    x = normalised_images(2, 224, 224)
    np.save(os.path.join(work, "x.npy"), x)
    for name, kwargs in BACKEND_CASES.items():
        tm = perturbed_timm_model(name, num_classes=1000, **kwargs)
        save_checkpoint(tm, os.path.join(work, f"{name}.safetensors"))
        np.save(os.path.join(work, f"{name}.npy"), timm_logits(tm, x))
        save_timm_gradients(tm, x, os.path.join(work, f"{name}.grads.safetensors"))
    with open(os.path.join(work, "cases.json"), "w") as f:
        json.dump(BACKEND_CASES, f)
    (_, _), (x_test, _) = load_digits(size=IMAGE_SIZE)
    np.save(os.path.join(work, "digits.npy"), x_test[:16])
    for backend in BACKENDS:
        _wait([_start(work, backend, [os.path.join(HERE, "backend_checks.py"), work], {"KERAS_BACKEND": backend})])


def jax_distribution(work):
    """The recipe on two JAX host devices: one device, DataParallel, ModelParallel."""
    _wait([_start(work, "jax", [os.path.join(HERE, "distributed_run.py"), os.path.join(work, "j"), "none",
                                "data_parallel", "model_parallel"],
                  {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})])


def tf_distribution(work):
    """Two MultiWorkerMirroredStrategy workers on 127.0.0.1 and, beside them, a one-replica run and a
    MirroredStrategy run over two logical CPUs."""
    socks = [socket.socket() for _ in range(2)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    cluster = {"worker": [f"127.0.0.1:{sock.getsockname()[1]}" for sock in socks]}
    for sock in socks:
        sock.close()
    script = os.path.join(HERE, "distributed_run.py")
    runs = [_start(work, f"worker{i}", [script, os.path.join(work, "mw"), "multiworker"], {"TF_CONFIG": json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": i}})}) for i in range(2)]
    runs.append(_start(work, "one", [script, os.path.join(work, "one"), "none", "mirrored"]))
    _wait(runs)


JOBS = {"backends": backends, "jax_distribution": jax_distribution, "tf_distribution": tf_distribution}


def main(work, jobs):
    for job in jobs:
        t0 = time.time()
        folder = os.path.join(work, job)
        os.makedirs(folder, exist_ok=True)
        try:
            JOBS[job](folder)
            status = {"ok": True}
        except Exception:
            status = {"ok": False, "error": traceback.format_exc()}
        status["seconds"] = time.time() - t0
        with open(os.path.join(work, job + ".done.json"), "w") as f:
            json.dump(status, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
