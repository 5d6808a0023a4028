"""The keras-vitnt command line, run as users run it (the installed entry point)."""

import os
import shutil
import subprocess
import sys

import pytest


def run_cli(*args, timeout=300):
    exe = shutil.which("keras-vitnt", path=os.path.dirname(sys.executable))
    assert exe, "the keras-vitnt entry point is not installed in this environment"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_list_prints_every_model_with_params_and_top1():
    out = run_cli("list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 + 29
    tnt = next(line for line in lines if line.startswith("tnt_s_patch16_224 "))
    assert "23.77M" in tnt and "81.50" in tnt and "in1k" in tnt
    huge = next(line for line in lines if line.startswith("vit_huge_patch14_224 "))
    assert "630.76M" in huge  # headless default weights: counted as timm does


def test_list_tags_filter():
    out = run_cli("list", "vit_base_patch16_224", "--tags")
    assert out.returncode == 0, out.stderr
    assert "augreg_in21k " in out.stdout and "21843" in out.stdout and "mae" in out.stdout


@pytest.mark.parametrize("args", [["nope"], ["list", "--bogus"]])
def test_bad_usage_exits_non_zero(args):
    assert run_cli(*args).returncode == 2
