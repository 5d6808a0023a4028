"""Fast CPU inference: a keras_vitnt model exported with `format="openvino"`, run by Intel's
OpenVINO runtime.

    keras_vitnt.export(model, "saved_models/vit_s_openvino", format="openvino")
    fast = keras_vitnt.OpenVINOModel("saved_models/vit_s_openvino", precision="bf16")
    logits = fast.predict(images)  # numpy in, numpy out, like model.predict

Why a second runtime: on these CPUs TensorFlow's bfloat16 path runs ViTs at a fraction of the
CPU's bfloat16 matmul peak, and its per-call overhead dominates at batch 1; OpenVINO's CPU
plugin compiles the whole graph for the CPU it runs on (AMX, AVX-512 bf16/VNNI, AVX2) and
beats timm's fastest settings there (README, Performance). The exported graph is the Keras
model's, checked by the export in float32 (max relative error <= 1e-4).

Precision is chosen when the model is loaded, not exported (the file holds float32 weights):
"f32" gives the Keras model's numbers; "bf16" computes in bfloat16 where the CPU has it
(OpenVINO's own default on such CPUs: here it is never implicit), with the error the export's
report states under "bf16"; "f16" for CPUs with AVX512-FP16/AMX-FP16 and GPUs.
"""

import json
import operator
import os

import numpy as np

from keras_vitnt.io_utils import SIDECAR

MODEL_FILE = "model.xml"  # with model.bin beside it, in the export's directory
PRECISIONS = ("f32", "bf16", "f16")
_CAPABILITY = {"bf16": "BF16", "f16": "FP16"}


def _openvino():
    try:
        import openvino
    except ImportError as e:
        raise ImportError("OpenVINO export and inference need the openvino package: "
                          "pip install 'keras_vitnt[openvino]'") from e
    return openvino


_CORE = None


def core():
    """One `openvino.Core` per process (it holds the plugins)."""
    global _CORE
    if _CORE is None:
        _CORE = _openvino().Core()
    return _CORE


def model_file(path):
    """The .xml of an export directory (or the .xml itself); FileNotFoundError naming what is missing."""
    path = os.fspath(path)
    xml = os.path.join(path, MODEL_FILE) if os.path.isdir(path) else path
    if os.path.isfile(xml) and not xml.endswith(".xml"):
        raise ValueError(f"{xml} is not an OpenVINO model (.xml): pass the folder keras_vitnt.export(..., "
                         "format='openvino') wrote, or the model.xml inside it")
    if not os.path.isfile(xml):
        raise FileNotFoundError(f"{xml}: no OpenVINO model there; export one with keras_vitnt.export(model, "
                                f"{path!r}, format='openvino') (or `keras-vitnt export MODEL --format openvino`)")
    if not os.path.isfile(xml[: -len(".xml")] + ".bin"):
        raise FileNotFoundError(f"{xml[: -len('.xml')]}.bin: the weights of {xml} are missing; export it again")
    return xml


def supported_precisions(device="CPU"):
    """The PRECISIONS this machine's `device` computes natively (f32 always on CPU)."""
    caps = set(core().get_property(device, "OPTIMIZATION_CAPABILITIES"))
    return tuple(p for p in PRECISIONS if p == "f32" or _CAPABILITY[p] in caps)


def _config(precision, threads, device):
    """The compile settings: `precision` checked against the device (never OpenVINO's implicit choice)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: choose one of {PRECISIONS}")
    supported = supported_precisions(device)
    if precision not in supported:
        import platform

        raise ValueError(f"precision={precision!r}: this {device} ({platform.processor() or platform.machine()}) has "
                         f"no native {precision} ({'/'.join(supported)} only); OpenVINO would emulate it slowly. "
                         "Use precision='f32'")
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def _streams_config(config, streams=None):
    """`config` for `streams` requests running at once, each on its share of the threads (None: as
    many as OpenVINO's THROUGHPUT hint picks)."""
    config = {**config, "PERFORMANCE_HINT": "THROUGHPUT"}
    return config if streams is None else {**config, "NUM_STREAMS": int(streams)}


def _split(batch, streams):
    """How many equal parts a batch of `batch` images runs as: the most, up to `streams`, that divide
    it (1: the whole batch on one request with every thread)."""
    return max(d for d in range(1, min(batch, streams) + 1) if batch % d == 0)


def compile_model(path, precision="f32", threads=None, device="CPU", input_shape=None):
    """The compiled OpenVINO model of an export at `precision`; with `input_shape` (a full shape,
    batch included), compiled for that shape only, which OpenVINO runs faster than its dynamic
    shapes (ViT-S +10-25%, TNT-S +10-35% here)."""
    return _compile(core().read_model(model_file(path)), _config(precision, threads, device), device, input_shape)


def _compile(model, config, device, input_shape=None):
    """`model` (an `openvino.Model`, left as it is) compiled with `config`, for `input_shape` if given."""
    if input_shape is not None:
        model = model.clone()
        model.reshape({0: list(input_shape)})
    return core().compile_model(model, device, config)


def run_openvino(path, x, precision="f32", threads=None):
    """Outputs of the export at `path` on the images `x`, in batches of its fixed batch size if it
    has one (the exporter's parity check)."""
    return OpenVINOModel(path, precision=precision, threads=threads).predict(x, batch_size=max(len(x), 1))


class OpenVINOModel:
    """A `format="openvino"` export, compiled for this CPU at `precision` ("f32", "bf16", "f16").

    `model(images)` runs one batch, `model.predict(images, batch_size=32)` any number; images
    are float32 arrays (B, H, W, 3) as the Keras model takes them (0-255 when it normalises
    itself: `metadata["preprocessing_inside"]`). Outputs are numpy arrays, as `model.predict`.
    `threads`: OpenVINO's inference threads (default: all cores).

    The export's batch (and, for an any-size model, height and width) are dynamic; each input
    shape met is compiled for that shape on its first call (a second or two; the last
    `max_shapes` are kept), since OpenVINO runs static shapes faster. `static_shapes=False`
    compiles once for every shape instead.

    `streams`: a batch of several images is split into equal parts run at the same time, each
    on its share of the threads (OpenVINO's streams): more images per second than one request
    spreading every layer over all threads (measured on 2 cores of an AVX2 EPYC, batch 16: +2-7%
    for each of ViT-Ti/S/B, DeiT-S and TNT-S/B, benchmarks/openvino_streams.py; not measured on
    more cores), the same numbers (to 1e-6; the kernels may differ with the batch). None: as many
    as OpenVINO's THROUGHPUT hint picks for this model and CPU (asked once, with one more compile;
    on another device, 1); 1: the whole batch as one request (its LATENCY hint, what a single
    image always gets); never more than `threads`. A batch splits into the most parts, up to
    `streams`, that divide it: 16 images on 2 streams run as 2 x 8, 15 as one request. Static
    shapes of an export without a fixed batch only.
    """

    def __init__(self, path, precision="f32", threads=None, device="CPU", static_shapes=True, max_shapes=4,
                 streams=None):
        self.path = os.fspath(path)
        self.precision = precision
        self.static_shapes = bool(static_shapes)
        self.max_shapes = int(max_shapes)
        if self.max_shapes < 1:
            raise ValueError(f"max_shapes={max_shapes!r}: at least 1 compiled shape is kept")
        if streams is not None:
            try:
                count = None if isinstance(streams, bool) else operator.index(streams)  # numpy integers too
            except TypeError:
                count = None
            if count is None or count < 1:
                raise ValueError(f"streams={streams!r}: a whole number >= 1, or None for OpenVINO's choice")
            streams = count
        if streams not in (None, 1) and not self.static_shapes:
            raise ValueError(f"streams={streams!r} splits batches of static shapes; with static_shapes=False "
                             "every batch runs as one request (streams=1)")
        self._device = device
        self._config = _config(precision, threads, device)  # the precision checked now, not at the first call
        xml = model_file(self.path)
        self._model = core().read_model(xml)  # read once; each shape compiles a reshaped copy
        shape = self._model.inputs[0].get_partial_shape()
        self.input_shape = tuple(None if d.is_dynamic else d.get_length() for d in shape)
        if streams not in (None, 1) and self.input_shape[0] is not None:
            raise ValueError(f"streams={streams!r}: {xml} was exported for batches of {self.input_shape[0]} exactly "
                             "(its graph holds that batch), which do not split; export it without batch_size to "
                             "split batches across streams, or pass streams=1")
        # None: OpenVINO's choice on a CPU, asked at the first batch of several images (other devices: 1)
        if not self.static_shapes or self.input_shape[0] is not None or (streams is None and device != "CPU"):
            streams = 1
        if streams is not None and threads:
            streams = min(streams, int(threads))  # OpenVINO runs at most one stream per thread
        self.streams = streams
        self._requests = {}  # input shape (or None: every shape) -> [infer request, ...], oldest first
        if not self.static_shapes:
            self._requests[None] = [_compile(self._model, self._config, device).create_infer_request()]
        try:
            with open(os.path.join(os.path.dirname(xml), SIDECAR)) as f:
                self.metadata = json.load(f)
        except (OSError, ValueError):
            self.metadata = {}

    def _openvino_streams(self):
        """The streams OpenVINO's THROUGHPUT hint runs this model with on this device."""
        if self.streams is None:
            compiled = _compile(self._model, _streams_config(self._config), self._device)
            self.streams = max(1, int(compiled.get_property("NUM_STREAMS")))
        return self.streams

    def parts(self, batch):
        """How many equal parts a batch of `batch` images runs as, each an infer request on a stream
        of its own (1: one request with every thread). Asks OpenVINO for its streams when `streams`
        is None."""
        return _split(int(batch), self._openvino_streams()) if batch > 1 else 1

    def _compiled_requests(self, shape):
        """The requests a batch of `shape` runs on: one, or one per equal part."""
        parts = self.parts(shape[0])
        if parts == 1:
            return [_compile(self._model, self._config, self._device, shape).create_infer_request()]
        compiled = _compile(self._model, _streams_config(self._config, parts), self._device,
                            (shape[0] // parts,) + tuple(shape[1:]))
        return [compiled.create_infer_request() for _ in range(parts)]

    def _request(self, shape):
        """-> [infer request, ...] for a batch of `shape` (compiled on its first use)."""
        if not self.static_shapes:
            return self._requests[None]
        if shape in self._requests:
            self._requests[shape] = self._requests.pop(shape)  # the most recently used goes last
        else:
            if len(self._requests) >= self.max_shapes:
                self._requests.pop(next(iter(self._requests)))  # the least recently used
            self._requests[shape] = self._compiled_requests(shape)
        return self._requests[shape]

    def __call__(self, images):
        x = np.ascontiguousarray(images, dtype="float32")
        if x.ndim != len(self.input_shape) or any(s is not None and s != d for s, d in zip(self.input_shape, x.shape)):
            raise ValueError(f"{self.path} takes inputs of shape {self.input_shape} (None: any), got {x.shape}")
        requests = self._request(x.shape)
        if len(requests) == 1:
            return requests[0].infer({0: x})[0].copy()  # the request reuses its output buffer
        part = len(x) // len(requests)
        started, outputs = [], []
        try:
            for i, request in enumerate(requests):
                request.start_async({0: x[i * part : (i + 1) * part]})  # the input is copied into the request
                started.append(request)
            for request in started:
                request.wait()
                outputs.append(request.get_output_tensor(0).data.copy())
        finally:  # after a failed part or an interrupt, none is left running into the next call
            for request in started:
                try:
                    request.wait()
                except Exception:
                    pass  # the first error is the one raised
        return np.concatenate(outputs)

    def predict(self, images, batch_size=32):
        """Outputs for any number of images, `batch_size` at a time (the last batch may be smaller).
        An export with a fixed batch runs batches of that size, the last one padded with zeros
        (their outputs are dropped)."""
        x = np.asarray(images, dtype="float32")
        fixed = self.input_shape[0]
        step = fixed or int(batch_size)
        outputs = []
        for i in range(0, len(x), step):
            chunk = x[i : i + step]
            if fixed and len(chunk) < fixed:
                chunk = np.concatenate([chunk, np.zeros((fixed - len(chunk),) + chunk.shape[1:], chunk.dtype)])
            outputs.append(self(chunk)[: min(step, len(x) - i)])
        return np.concatenate(outputs)

    def __repr__(self):
        return (f"OpenVINOModel({self.path!r}, precision={self.precision!r}, input_shape={self.input_shape}, "
                f"streams={self.streams!r})")
