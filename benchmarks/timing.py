"""Shared by the benchmark scripts: interleaved timing and the markdown table output."""

import statistics
import time


def interleaved_medians(runners, rounds, warmup=2):
    """{name: fn} -> {name: median seconds}. Every runner is warmed up, then they alternate
    round by round, so drift on a shared machine hits all of them alike."""
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in runners}
    for _ in range(rounds):
        for key, fn in runners.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def emit_table(lines, out=None):
    """Print a markdown table (list of lines) and write it to `out` if given."""
    print("\n" + "\n".join(lines))
    if out:
        with open(out, "w") as f:
            f.write("\n".join(lines) + "\n")
