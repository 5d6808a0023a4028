"""The benchmark module: its FLOP count, the CLI end to end on a tiny run, and that it
refuses to overwrite its output. (Speed itself is measured by the benchmark, not tested.)"""

import os
import re
import subprocess
import sys
import time

import pytest

from keras_vitnt import benchmark


def test_matmul_flops_equals_the_architecture_count():
    import keras_vitnt

    model = keras_vitnt.create_model("vit_tiny_patch16_224", weights=None, include_preprocessing=False)
    n, t, d, mlp, classes = 196, 197, 192, 768, 1000
    patch = 2 * n * (16 * 16 * 3) * d
    block = 2 * t * d * (3 * d + d + 2 * mlp) + 2 * 2 * t * t * d  # linears; q k^T and weights v
    assert benchmark.matmul_flops(model) == patch + 12 * block + 2 * d * classes


def test_benchmark_refuses_to_overwrite(tmp_path):
    out = tmp_path / "results.md"
    out.write_text("earlier run\n")
    with pytest.raises(SystemExit, match="exists; pass --overwrite"):
        benchmark.main(["--out", str(out)])
    assert out.read_text() == "earlier run\n"


def test_cli_benchmark_runs_and_writes_the_table(tmp_path):
    # through the console entry point, which loads TensorFlow first: the benchmark must
    # restart itself with timm imported first instead of crashing
    out = tmp_path / "bench.md"
    cmd = [os.path.join(os.path.dirname(sys.executable), "keras-vitnt"), "benchmark", "--sections", "inference",
           "--models", "vit_tiny_patch16_224", "--batches", "1", "--rounds", "1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "Measured matmul peak" in text and "| vit_tiny_patch16_224 | 1 | 2.5 |" in text
    peak = float(re.search(r"fp32 (\d+) GFLOP/s", text).group(1))
    row = next(line for line in text.splitlines() if line.startswith("| vit_tiny"))
    _, _, batch, gflop, keras_ips, timm_ips, ratio, bf16_ips, bf16_ratio, peak_pct, _ = (
        c.strip().strip("*%") for c in row.split("|"))
    # one round: a ratio (median of per-round ratios) is the two img/s columns divided; each
    # printed number is rounded, so the check is against the interval the rounding leaves
    assert within(ratio, divided(keras_ips, timm_ips)), row
    assert within(bf16_ratio, divided(bf16_ips, timm_ips)), row
    assert within(peak_pct, [100 * v / p for v in times(keras_ips, gflop) for p in bounds(str(peak))]), row


def bounds(printed):
    """The interval a number printed with this many decimals was rounded from."""
    half = 0.5 * 10.0 ** -(len(printed.split(".")[1]) if "." in printed else 0)
    return float(printed) - half, float(printed) + half


def divided(a, b):
    return [x / y for x in bounds(a) for y in bounds(b)]


def times(a, b):
    return [x * y for x in bounds(a) for y in bounds(b)]


def within(printed, candidates):
    lo, hi = bounds(printed)
    return min(candidates) <= hi and max(candidates) >= lo


def test_interleaved_times_alternate_order_and_speedup_pairs_rounds():
    calls = []
    runners = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = benchmark.interleaved_times(runners, rounds=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then a b / b a / a b
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    # per-round ratios: a drift that slows both in round 2 cancels out
    times = {"keras": [1.0, 3.0, 1.0], "timm": [2.0, 6.0, 2.0]}
    assert benchmark.speedup(times, "keras", "timm") == 2.0
    assert benchmark.speedup(times, "timm", "keras") == 0.5  # the slower one: < 1
    # the median of the per-round ratios (2, 2.2, 0.75), not the ratio of the medians (3 / 2)
    times = {"keras": [1.0, 2.0, 4.0], "timm": [2.0, 4.4, 3.0]}
    assert benchmark.speedup(times, "keras", "timm") == pytest.approx(2.0)


def test_a_slower_contender_times_longer_and_gets_a_ratio_below_one():
    times = benchmark.interleaved_times({"slow": lambda: time.sleep(0.02), "fast": lambda: time.sleep(0.002)},
                                        rounds=3, warmup=0)
    assert min(times["slow"]) >= 0.02 and max(times["fast"]) < min(times["slow"])  # each time is its own runner's
    assert benchmark.speedup(times, "slow", "fast") < 0.5 < 2 < benchmark.speedup(times, "fast", "slow")
