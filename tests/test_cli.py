"""The keras-vitnt command line: `cli.main` in the test process where no fresh process is needed, the installed
entry point (run_cli) where it is."""

import os
import shutil
import subprocess
import sys

import pytest

import keras_vitnt


def run_cli(*args, timeout=300):
    exe = shutil.which("keras-vitnt", path=os.path.dirname(sys.executable))
    assert exe, "the keras-vitnt entry point is not installed in this environment"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout, env=env)


def main_here(capsys, *args):
    """`keras-vitnt ARGS` as `cli.main(ARGS)` in this process -> a CompletedProcess (exit code, stdout,
    stderr). For the commands that need no fresh process: each console-script run imports TensorFlow
    again (10-14 s here); the entry point itself is run by the tests that use run_cli."""
    from keras_vitnt import cli

    try:
        code = cli.main(list(args))
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["keras-vitnt", *args], code, out.out, out.err)


def test_list_prints_every_model_with_params_and_top1(capsys):
    out = main_here(capsys, "list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 + len(keras_vitnt.list_models())
    tnt = next(line for line in lines if line.startswith("tnt_s_patch16_224 "))
    assert "23.77M" in tnt and "81.51" in tnt and "in1k" in tnt  # timm's results table: 81.506
    huge = next(line for line in lines if line.startswith("vit_huge_patch14_224 "))
    assert "630.76M" in huge  # headless default weights: counted as timm does


def test_list_tags_filter(capsys):
    out = main_here(capsys, "list", "vit_base_patch16_224", "--tags")
    assert out.returncode == 0, out.stderr
    assert "augreg_in21k " in out.stdout and "21843" in out.stdout and "mae" in out.stdout


@pytest.mark.parametrize("args,message", [(["nope"], "invalid choice: 'nope'"),
                                          (["list", "--bogus"], "unrecognized arguments: --bogus")])
def test_bad_usage_exits_non_zero(args, message, capsys):
    out = main_here(capsys, *args)
    assert out.returncode == 2 and message in out.stderr and "usage: keras-vitnt" in out.stderr


def test_verbose_before_or_after_the_subcommand_shows_the_traceback_of_a_user_error(tmp_path, capsys):
    missing = str(tmp_path / "nope.keras")
    quiet = main_here(capsys, "export", missing, "--format", "litert")
    assert quiet.returncode == 1
    assert f"keras-vitnt export: error: File not found: filepath={missing}" in quiet.stderr
    assert "Traceback" not in quiet.stderr and "(run with -v for the full traceback)" in quiet.stderr
    for args in (["export", missing, "--format", "litert", "-v"], ["-v", "export", missing, "--format", "litert"]):
        loud = main_here(capsys, *args)
        assert loud.returncode == 1, (args, loud.stderr[-2000:])
        # the frames down to where the error was raised, then the same one-line message
        assert "Traceback (most recent call last)" in loud.stderr and "in cmd_export" in loud.stderr, args
        traceback_at = loud.stderr.index("Traceback (most recent call last)")
        assert loud.stderr.index(f"keras-vitnt export: error: File not found: filepath={missing}") > traceback_at
        assert "run with -v" not in loud.stderr


@pytest.mark.parametrize("argv,expected", [
    (["predict", "deit_tiny_patch16_224", "a.jpg", "b.jpg"], ("deit_tiny_patch16_224", ["a.jpg", "b.jpg"])),
    (["predict", "a.jpg", "b.jpg", "--model", "vit:Ti/4"], ("vit:Ti/4", ["a.jpg", "b.jpg"])),  # the older spelling
    (["predict", "a.jpg"], ("tnt_s_patch16_224", ["a.jpg"])),  # an image first: the default model
    (["visualize", "saved_models/run", "cat.png"], ("saved_models/run", ["cat.png"])),
    (["export", "tnt:S"], ("tnt:S", [])),
    (["export", "--model", "tnt:S"], ("tnt:S", [])),
    (["train", "--model", "vit:Ti/4"], ("vit:Ti/4", [])),
    (["train"], ("tnt_s_patch16_224", [])),
])
def test_model_is_positional_everywhere_and_model_option_is_an_alias(argv, expected):
    from keras_vitnt import cli

    args = cli.build_parser().parse_args(argv)
    assert cli._model_and_inputs(args, None if args.command == "export" else cli.DEFAULT_MODEL) == expected


def test_model_given_twice_or_not_at_all_is_refused():
    from keras_vitnt import cli

    parser = cli.build_parser()
    with pytest.raises(ValueError, match="MODEL given twice"):
        cli._model_and_inputs(parser.parse_args(["export", "tnt:S", "--model", "vit:Ti/4"]))
    with pytest.raises(ValueError, match="give MODEL"):
        cli._model_and_inputs(parser.parse_args(["export"]))
    assert cli._default_export_path("saved_models/run/model.keras", "litert", "float16", True) == \
        os.path.join("saved_models/run", "model_float16.tflite")
    expected = os.path.join("saved_models", "vit_Ti_4.tflite")
    assert cli._default_export_path("vit:Ti/4", "litert", None, False) == expected
