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


def test_the_scripts_tables_are_written_whole_and_never_over_a_file(tmp_path, monkeypatch):
    """benchmarks/*.py write their table through write_table: a file that exists (refused before the run,
    or one that appears while the table is written) is left as it was, and no temporary file stays."""
    out = tmp_path / "table.md"
    benchmark.write_table(["| a |", "| b |"], str(out))
    assert out.read_text() == "| a |\n| b |\n"
    for refuse in (lambda: benchmark.refuse_existing_out(str(out)), lambda: benchmark.write_table(["| c |"], str(out))):
        with pytest.raises(SystemExit, match="table.md exists; choose another --out"):
            refuse()
    assert out.read_text() == "| a |\n| b |\n" and os.listdir(tmp_path) == ["table.md"]
    benchmark.write_table(["| d |"], None)  # no --out: stdout only
    assert os.listdir(tmp_path) == ["table.md"]
    # a file that appears between the check and the write (another run, the user) is not replaced
    late, link = tmp_path / "late.md", os.link
    monkeypatch.setattr(os, "link", lambda src, dst: (late.write_text("theirs"), link(src, dst)))
    with pytest.raises(SystemExit, match="late.md exists"):
        benchmark.write_table(["| e |"], str(late))
    assert late.read_text() == "theirs" and sorted(os.listdir(tmp_path)) == ["late.md", "table.md"]


def test_cli_benchmark_runs_and_writes_the_table(tmp_path):
    # through the console entry point, which loads TensorFlow first: the benchmark must
    # restart itself with timm imported first instead of crashing
    out = tmp_path / "bench.md"
    # two sections: each runs in a process of its own, which hands its tables back to the run
    cmd = [os.path.join(os.path.dirname(sys.executable), "keras-vitnt"), "benchmark", "--sections", "inference",
           "int8", "--models", "vit_tiny_patch16_224", "--batches", "1", "--rounds", "1", "--no-compile",
           "--int8-models", "vit_tiny_patch16_224", "--litert-rounds", "1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    int8_rows = [line for line in text[text.index("## int8 on CPU"):].splitlines() if line.startswith("| vit_tiny")]
    assert [row.split("|")[2].strip() for row in int8_rows] == ["timm fp32 eager", "timm quantize_dynamic int8",
                                                                 "keras_vitnt fp32", "keras_vitnt LiteRT dynamic_int8"]
    assert "Measured matmul peak" in text and "| vit_tiny_patch16_224 | 1 | 2.5 |" in text
    assert re.search(r"Machine: .*\((flags: [a-z0-9_ ]+|none of avx2 .*|CPU flags unknown)\)", text), text[:500]
    fp32_peaks = re.search(r"fp32 tf (\d+) / torch (\d+), bf16", text)
    peak = max(fp32_peaks.groups(), key=float)  # the faster framework's
    fp32_table = text[text.index("### fp32"):text.index("### bfloat16")]
    bf16_table = text[text.index("### bfloat16"):]
    row = next(line for line in fp32_table.splitlines() if line.startswith("| vit_tiny"))
    _, _, batch, gflop, keras_ips, ov_ips, timm_ips, compiled, ratio, ov_ratio, peak_pct, _ = \
        (c.strip().strip("*%") for c in row.split("|"))
    assert compiled == "-", row  # --no-compile
    # one round: a ratio (median of per-round ratios) is the two img/s columns divided; each
    # printed number is rounded, so the check is against the interval the rounding leaves
    assert within(ratio, divided(keras_ips, timm_ips)), row
    assert within(ov_ratio, divided(ov_ips, timm_ips)), row  # the OpenVINO path ran (openvino is in the test extra)
    peak_tf, peak_ov = peak_pct.split(" / ")
    for pct, ips in ((peak_tf, keras_ips), (peak_ov, ov_ips)):
        assert within(pct.strip("%"), [100 * v / p for v in times(ips, gflop) for p in bounds(str(peak))]), row
    row = next(line for line in bf16_table.splitlines() if line.startswith("| vit_tiny"))
    _, _, batch, bf16_ips, ov_bf16_ips, timm_bf16, compiled_bf16, bf16_ratio, ov_bf16_ratio, _ = \
        (c.strip().strip("*%") for c in row.split("|"))
    assert compiled_bf16 == "-", row
    assert within(bf16_ratio, divided(bf16_ips, timm_bf16)), row  # against timm's bf16, not its fp32
    from keras_vitnt.openvino_runtime import supported_precisions

    if "bf16" in supported_precisions():
        assert within(ov_bf16_ratio, divided(ov_bf16_ips, timm_bf16)), row
    else:
        assert ov_bf16_ips == ov_bf16_ratio == "-" and ("no native bfloat16" in text or "none of avx512_bf16" in text), row


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


def test_speedup_best_takes_the_fastest_reference_of_each_round():
    times = {"keras": [1.0, 1.0, 1.0], "eager": [2.0, 1.0, 3.0], "compiled": [1.5, 4.0, 0.5]}
    # rounds: min(2, 1.5) / 1, min(1, 4) / 1, min(3, 0.5) / 1 -> 1.5, 1, 0.5
    assert benchmark.speedup_best(times, "keras", ["eager", "compiled"]) == 1.0
    assert benchmark.speedup_best(times, "keras", ["eager"]) == 2.0


def test_cpu_info_reads_the_model_and_the_flags_that_pick_kernels(tmp_path):
    from keras_vitnt import cpu

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n"
                    "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16 amx_int8\n\n"
                    "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu\n")
    assert cpu.cpu_info(str(info)) == ("Intel(R) Xeon(R) Processor", ["avx2", "avx512f", "avx512_bf16",
                                                                            "amx_bf16", "amx_int8"])
    info.write_text("processor\t: 0\nFeatures\t: fp asimd\n")  # an Arm CPU names them on a Features line
    assert cpu.cpu_info(str(info))[1] == ["asimd"]
    info.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n")  # Graviton3: bf16 instructions
    assert cpu.cpu_info(str(info))[1] == ["asimd", "sve", "bf16", "i8mm"]
    info.write_text("processor\t: 0\nmodel name\t: a CPU\n")  # no flags line
    assert cpu.cpu_info(str(info))[1] is None
    assert cpu.cpu_info(str(tmp_path / "absent"))[1] is None


def test_the_matmul_peak_is_the_faster_frameworks_and_the_header_names_both():
    peak = benchmark.matmul_peak(2, rounds=1, n=256)
    assert {"tf_float32", "torch_float32", "tf_bfloat16"} <= set(peak)
    assert peak["float32"] == max(peak["tf_float32"], peak["torch_float32"]) > 0
    line = benchmark.peak_line({"tf_float32": 101.4, "torch_float32": 167.0, "tf_bfloat16": 85.0,
                                "float32": 167.0, "bfloat16": 85.0})
    assert "fp32 tf 101 / torch 167, bf16 tf 85 (PyTorch's bf16 not timed" in line, line


def test_timm_runners_compiled_and_bf16_give_the_eager_fp32_outputs():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 10)).eval()
    x = torch.randn(4, 32)
    runners, compile_s = benchmark.timm_inference_runners(model, x)
    assert sorted(runners) == ["timm", "timm_bf16", "timm_bf16_compiled", "timm_compiled"]
    assert sorted(compile_s) == ["timm_bf16_compiled", "timm_compiled"] and min(compile_s.values()) > 0
    from torch._dynamo.utils import counters

    assert counters["stats"]["unique_graphs"] >= 2  # compiled, not a silent eager fallback (checked inside too)
    outs = {k: run() for k, run in runners.items()}
    assert outs["timm_bf16"].dtype == outs["timm_bf16_compiled"].dtype == torch.bfloat16  # autocast is on
    ref = outs["timm"]
    assert torch.allclose(outs["timm_compiled"], ref, atol=1e-5)
    for key in ("timm_bf16", "timm_bf16_compiled"):
        assert 0 < (outs[key].float() - ref).abs().max() < 0.05 * ref.abs().max(), key  # bf16: close, not equal


def test_int8_section_times_both_int8_paths_on_the_same_weights():
    lines = benchmark.bench_int8(["vit_tiny_patch16_224"], threads=2, rounds=1, n_images=8)
    rows = {c[2]: c for c in ([x.strip().strip("*%") for x in line.split("|")] for line in lines[2:])}
    assert sorted(rows) == ["keras_vitnt LiteRT dynamic_int8", "keras_vitnt fp32", "timm fp32 eager",
                            "timm quantize_dynamic int8"]
    assert rows["timm quantize_dynamic int8"][4] == "1.00"  # the reference of the speed-ups
    # keras_vitnt fp32 gives timm's logits: the two int8 paths start from the same model
    assert rows["keras_vitnt fp32"][5:7] == ["100.0", "1.0000"], rows["keras_vitnt fp32"]
    for key in ("timm quantize_dynamic int8", "keras_vitnt LiteRT dynamic_int8"):
        assert 0.98 < float(rows[key][6]) < 1.0, rows[key]  # quantized: close to fp32, not equal


def test_memory_child_reports_the_first_and_the_steady_peak():
    """The memory section's fresh process: it loads its own framework only (the other's libraries are
    hundreds of MB), and the steady peak (after resetting VmHWM) is the later calls' own."""
    import json

    from keras_vitnt.peers import child_code

    for fw, own, other in (("timm", "torch", "tensorflow"), ("keras", "tensorflow", "torch")):
        code = child_code(fw, "vit_tiny_patch16_224", "infer", 2, 1)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        assert own in res["frameworks"] and other not in res["frameworks"], (fw, res)
        assert 0 < res["base"] <= res["peak"]
        if sys.platform.startswith("linux"):
            # the later calls' own peak: at least the resident base, and it may pass the first peak by a little
            # (a fresh clone measured 1887.8 against 1887.5 MB), so it is not bounded by it
            assert res["steady"] is not None and res["base"] <= res["steady"] <= res["peak"] * 1.05


def test_training_section_times_timm_compiled_beside_eager(monkeypatch):
    import torch

    def tiny_step(name, batch, compiled=False):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
        net = torch.compile(model, dynamic=False) if compiled else model
        opt = torch.optim.AdamW(model.parameters())
        x, y = torch.randn(batch, 8), torch.arange(batch) % 4

        def step():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()

        return step

    monkeypatch.setattr(benchmark, "torch_train_step", tiny_step)
    monkeypatch.setattr(benchmark, "_keras_train_step", lambda name, batch, jit: lambda: time.sleep(0.002))
    lines = benchmark.bench_training(["tiny"], 4, 1)
    row = next(line for line in lines if line.startswith("| tiny"))
    cells = [c.strip().strip("*") for c in row.split("|")[1:-1]]
    assert len(cells) == 8 and cells[5] != "-" and float(cells[5]) > 0, row  # the compiled step was timed
    assert any(line.startswith("torch.compile's first training step") for line in lines)


def test_a_failing_section_keeps_the_others_results(monkeypatch, tmp_path):
    """A section that fails late in a long run does not take the finished sections with it: their
    tables are written, the failure is named in the file, and the exit code says so."""
    def broken(*args, **kwargs):
        raise RuntimeError("no such kernel")

    in_this_process(monkeypatch)
    monkeypatch.setattr(benchmark, "bench_training", lambda *args, **kwargs: ["| the training table |"])
    monkeypatch.setattr(benchmark, "bench_int8", broken)
    out = tmp_path / "bench.md"
    assert benchmark.main(["--sections", "training", "int8", "--out", str(out)]) == 1
    text = out.read_text()
    assert "| the training table |" in text
    assert "**This section failed**: RuntimeError: no such kernel" in text
    assert not os.path.exists(f"{out}.partial")  # the run ended: only the result stays


def in_this_process(monkeypatch):
    """Runs every section of a multi-section run in the test's process (as a run of one section does), so that
    the sections stubbed by monkeypatch are the ones that run."""
    monkeypatch.setattr(benchmark, "_section_in_child", lambda argv, section, peak: benchmark._run_section(
        benchmark.parse_args([*argv, "--sections", section]), peak, section))


def test_a_section_whose_process_dies_is_named_with_its_exit_code(monkeypatch, tmp_path):
    """A section's process killed from outside (the OOM killer, say) leaves no tables: the run says so and
    which exit code (the run goes on with the next section, as after a section that raised)."""
    monkeypatch.setattr(benchmark, "_REEXEC", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    lines, error = benchmark._section_in_child(["--out", str(tmp_path / "b.md")], "quant", {"float32": 1.0})
    assert lines == []
    assert error == "its process ended with exit code -9 (killed: out of memory?) before writing its tables"
    # a section's process writes its lines and error, which the run reads back
    monkeypatch.setattr(benchmark, "_REEXEC", (
        "import sys, json; a = sys.argv[1:]; last = max(i for i, v in enumerate(a) if v == '--sections'); "
        "assert a[last + 1:last + 3] == ['quant', '--section-lines-to'], a; "
        "json.dump({'lines': ['| a row |'], 'error': None}, open(a[a.index('--section-lines-to') + 1], 'w'))"))
    assert benchmark._section_in_child(["--sections", "inference", "quant"], "quant", {}) == (["| a row |"], None)
    # the `--sections` appended to the run's own is the one the section's process reads
    assert benchmark.parse_args(["--sections", "inference", "quant", "--sections", "quant"]).sections == ["quant"]


def test_an_interrupted_run_keeps_its_finished_sections_and_the_next_run_keeps_them_too(monkeypatch, tmp_path):
    """Ctrl-C (or a killed job) in the third hour of a run leaves the sections that finished, marked as an
    unfinished run, beside the untouched earlier result; a new run neither overwrites that file unasked
    nor makes a result of it."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    in_this_process(monkeypatch)
    monkeypatch.setattr(benchmark, "matmul_peak", lambda threads: {"tf_float32": 100.0, "tf_bfloat16": 200.0,
                                                                   "float32": 100.0, "bfloat16": 200.0})
    monkeypatch.setattr(benchmark, "bench_training", lambda *args, **kwargs: ["| the training table |"])
    monkeypatch.setattr(benchmark, "bench_int8", interrupted)
    out = tmp_path / "bench.md"
    out.write_text(benchmark.HEADER + "\nan earlier run\n")
    with pytest.raises(KeyboardInterrupt):
        benchmark.main(["--sections", "training", "int8", "--out", str(out), "--overwrite"])
    assert out.read_text() == benchmark.HEADER + "\nan earlier run\n"
    kept = (tmp_path / "bench.md.partial").read_text()
    assert "| the training table |" in kept and "**Unfinished run**" in kept and "after 'training'" in kept
    out.unlink()
    with pytest.raises(SystemExit, match="bench.md.partial exists"):
        benchmark.main(["--sections", "training", "--out", str(out)])
    (tmp_path / "other.md.partial").write_text("my notes\n")  # not ours: --overwrite does not replace it
    with pytest.raises(SystemExit, match="not a keras_vitnt benchmark result"):
        benchmark.main(["--sections", "training", "--out", str(tmp_path / "other.md"), "--overwrite"])
    assert (tmp_path / "other.md.partial").read_text() == "my notes\n"


def test_a_cpu_without_bf16_instructions_times_bf16_once(monkeypatch):
    """On an AVX2-only CPU, bf16 is emulated (timm's autocast ViT-S ran 6x slower than fp32 on such an
    EPYC): the benchmark shows that once instead of spending an hour on it."""
    import torch

    from keras_vitnt import cpu

    for flags, native in ((["avx2"], False), (["avx2", "avx512f", "avx512_bf16"], True), (["amx_bf16"], True),
                          (["asimd"], False), (["asimd", "bf16"], True), (None, True)):
        monkeypatch.setattr(cpu, "cpu_info", lambda flags=flags: ("a CPU", flags))
        assert cpu.native_bf16() is native, flags
    model = torch.nn.Linear(8, 4).eval()
    runners, compile_s = benchmark.timm_inference_runners(model, torch.randn(2, 8), compiled=False, bf16=False)
    assert sorted(runners) == ["timm"] and compile_s == {}

    # the inference section on such a CPU, every contender stubbed: bf16 in the first row only, also where
    # OpenVINO offers bf16 itself (it does on AVX2-VNNI-2 CPUs), and only timed rows in the bf16 table
    class Model:
        input_shape = (None, 8, 8, 3)

        def predict_on_batch(self, x):
            return x

        def get_weights(self):
            return []

        def set_weights(self, weights):
            pass

        def eval(self):
            return self

    def timm_runners(tm, xt, compiled=True, bf16=True):
        return {k: (lambda: time.sleep(0.001)) for k in (["timm", "timm_bf16"] if bf16 else ["timm"])}, {}

    monkeypatch.setattr(benchmark, "native_bf16", lambda: False)
    monkeypatch.setattr(benchmark, "keras_model", lambda name, policy=None: Model())
    monkeypatch.setattr(benchmark, "torch_model", lambda name: Model())
    monkeypatch.setattr(benchmark, "matmul_flops", lambda model: 1e9)
    monkeypatch.setattr(benchmark, "timm_inference_runners", timm_runners)
    monkeypatch.setattr(benchmark, "openvino_runners", lambda km, x, workdir, threads: {
        "ov": lambda: time.sleep(0.001), "ov_bf16": lambda: time.sleep(0.001)})
    lines = benchmark.bench_inference(["m1", "m2"], [1, 2], 1, {"float32": 100.0}, compiled=False)
    bf16_table = lines[lines.index("### bfloat16"):]
    assert [line.split("|")[1:3] for line in bf16_table if re.match(r"\| m\d ", line)] == [[" m1 ", " 1 "]]
    fp32_rows = [line for line in lines[:lines.index("### bfloat16")] if re.match(r"\| m\d ", line)]
    assert len(fp32_rows) == 4 and all("**" in row for row in fp32_rows)
    assert any(line.startswith("bfloat16 is timed in the first row only") for line in lines)
