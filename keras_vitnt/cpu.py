"""What this machine's CPU computes natively, read from /proc/cpuinfo (no framework imported), and
`release_free_memory`, which hands the C heap's free pages back to the system.

The flags decide which bf16/int8 kernels oneDNN, PyTorch and OpenVINO use (AMX, AVX-512 or AVX2):
the benchmark prints them with every table, and `--mixed-precision auto` trains in float32 rather
than bfloat16 on a CPU that would only emulate bfloat16.
"""

import ctypes
import functools
import platform

# what the kernels pick: x86 flags, then Arm's (its /proc/cpuinfo names them on a "Features" line)
PERF_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "asimd", "sve", "bf16", "i8mm")
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_info(path="/proc/cpuinfo"):
    """(model name, [the CPU flags of PERF_FLAGS it has], or None where no flags or Features line could be read)."""
    model, flags = None, None  # flags None: not read (no /proc/cpuinfo, no flags line)
    try:
        with open(path) as f:
            info = f.read()
    except OSError:
        info = ""
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model is None:
            model = value.strip()
        elif key.strip() in ("flags", "Features"):
            have = set(value.split())
            flags = [f for f in PERF_FLAGS if f in have]
            break
    return model or platform.processor() or "unknown CPU", flags


def native_bf16():
    """False where /proc/cpuinfo's flags show no bfloat16 instructions (an AVX2-only AMD EPYC, say): there
    TensorFlow and PyTorch emulate bf16 (timm's autocast ViT-S/16 ran 6x slower than its fp32 on one) and
    OpenVINO refused it there. True where the flags could not be read: timed rather than left out."""
    flags = cpu_info()[1]
    return flags is None or any(f in flags for f in BF16_FLAGS)


def release_free_memory():
    """Returns the free pages of the C heap to the system (glibc's `malloc_trim(0)`); True where done,
    False where the C library has none (macOS, Windows, musl). glibc keeps what a process frees for its
    next allocations, and XLA's compiler frees hundreds of MB after compiling a training step: the
    recipe calls this after its first step and at the end of every epoch. Measured on the XLA AdamW
    step (batch 16, AMD EPYC): the peak of the later steps 2712 -> 2521 MB (ViT-S/16), 4450 -> 4166
    MB (TNT-S); the call takes milliseconds."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    """glibc's malloc_trim from the symbols already loaded in this process, or None."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # no such symbol (macOS, musl); Windows: no CDLL(None)
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim
