"""timm's side of `keras-vitnt benchmark` and its peak-memory probe, whose text runs without Keras.

The memory section runs this file's own text (`child_code`) in a fresh `python -c` process per
framework, so that the timm process holds PyTorch alone and the keras_vitnt process TensorFlow
alone. Each framework's libraries take hundreds of MB of resident memory (importing PyTorch into
a TensorFlow process added 460 MB here); before, the timm process carried TensorFlow, loaded by
importing the benchmark module, and the keras_vitnt one PyTorch, loaded by its thread setting.
So this module imports nothing of keras_vitnt (whose package import loads Keras) and no
framework at the top; `import keras_vitnt.peers` itself does load Keras, through the package.
"""

import json  # noqa: F401  (used by the line child_code appends)
import sys

FRAMEWORKS = ("tensorflow", "torch", "jax")


def torch_model(name):
    import timm

    if name == "resnet50":
        import torchvision

        return torchvision.models.resnet50()
    return timm.create_model(name, pretrained=False)


def torch_train_step(name, batch, compiled=False):
    """One AdamW step of the timm model; `compiled`: its forward and backward through
    `torch.compile(model, dynamic=False)` (the optimizer step stays eager)."""
    import numpy as np
    import torch

    model = torch_model(name).train()
    net = model
    if compiled:
        import torch._dynamo

        torch._dynamo.reset()  # a fresh cache per model: see timm_inference_runners
        net = torch.compile(model, dynamic=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    size = 224
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype("float32"))
    y = torch.from_numpy(np.random.default_rng(1).integers(0, 1000, batch))

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    return step


def torch_memory_step(name, mode, batch, threads):
    """The timm work the memory section measures: inference (under inference_mode) or an AdamW step."""
    import torch

    torch.set_num_threads(threads)
    if mode != "infer":
        return torch_train_step(name, batch)
    model = torch_model(name).eval()
    x = torch.zeros((batch, 3, 224, 224))

    def step():
        with torch.inference_mode():
            model(x)

    return step


def status_mb(field):
    """VmRSS / VmHWM (peak) of this process in MB. (getrusage's ru_maxrss would carry the
    parent's peak over the fork.)"""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def reset_peak():
    """Resets this process's VmHWM to its current RSS (Linux: /proc/self/clear_refs); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_peak(step):
    """Runs `step` twice, then twice more after resetting the peak: {"base": MB before the first
    call, "peak": MB, "steady": MB or None, "frameworks": the ones loaded}. "steady" is the peak of
    the later calls: the first calls' peak also holds one-off work (XLA's or Inductor's compiler,
    buffer pools set up)."""
    base = status_mb("VmRSS")
    step()
    step()
    peak = status_mb("VmHWM")
    steady = None
    if reset_peak():
        step()
        step()
        steady = status_mb("VmHWM")
    return {"base": base, "peak": peak, "steady": steady,
            "frameworks": [m for m in FRAMEWORKS if m in sys.modules]}


def child_code(framework, name, mode, batch, threads):
    """Source for `python -c` that builds `framework`'s ("keras" or "timm") work in that process
    and prints measure_peak's result as JSON on its last line."""
    with open(__file__) as f:
        source = f.read()
    make = ("from keras_vitnt.benchmark import keras_memory_step as make_step" if framework == "keras"
            else "make_step = torch_memory_step")
    return (f"{source}\n{make}\n"
            f"print(json.dumps(measure_peak(make_step({name!r}, {mode!r}, {int(batch)}, {int(threads)}))))\n")
