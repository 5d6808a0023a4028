"""Keras 3's JAX and PyTorch backends: tests/backend_checks.py runs in a new process per backend
(KERAS_BACKEND=jax, then torch; a job of tests/background_jobs.py, run after the rest of the suite)
on timm checkpoints made there, and the tests here assert on what it reports: timm parity, maps
and features, fit, the recipe, .keras files across backends, export, and no TensorFlow import on
the model/weights/maps path."""

import json

import numpy as np
import pytest

from background_jobs import BACKEND_CASES as CASES
from background_jobs import BACKENDS
from timm_oracle import relative_error

TOL = 1e-5  # test_parity's: a wrong eps, GELU or scale is 1e-4 off
pytestmark = pytest.mark.background("backends")


@pytest.fixture(scope="module")
def backend_runs(background_job):
    """{backend: its report}, and the work folder."""
    work = background_job("backends")
    return {backend: json.load(open(work / f"{backend}.json")) for backend in BACKENDS}, work


@pytest.mark.parametrize("backend", BACKENDS)
def test_timm_parity_on_every_backend(backend_runs, backend):
    reports, _ = backend_runs
    report = reports[backend]
    assert report["backend"] == backend
    assert set(report["parity"]) == set(CASES)
    assert max(report["parity"].values()) <= TOL, report["parity"]


@pytest.mark.parametrize("backend", BACKENDS + ("tensorflow",))
def test_training_gradients_are_timms_on_every_backend(backend_runs, backend):
    """The gradients of a training step (training=True: the forms training takes on each backend, XLA on
    TensorFlow) for every weight of a one-block ViT, DeiT and TNT, against timm's autograd on the same
    weights and inputs (tests/background_jobs.py saves them)."""
    reports, work = backend_runs
    if backend == "tensorflow":  # here, in the test process
        from backend_checks import gradient_errors

        import keras_vitnt

        x = np.load(work / "x.npy")
        errors = {}
        for name, kwargs in CASES.items():
            model = keras_vitnt.create_model(name, weights=str(work / f"{name}.safetensors"),
                                             include_preprocessing=False, classifier_activation=None, **kwargs)
            errors[name] = max(gradient_errors(name, model, x, str(work / f"{name}.grads.safetensors"),
                                               **kwargs).values())
    else:
        errors = reports[backend]["gradients"]
    assert set(errors) == set(CASES)
    assert max(errors.values()) <= TOL, errors  # measured <= 2.1e-6 on each backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_package_dense_is_keras_dense_on_every_backend(backend_runs, backend):
    """keras_vitnt.layers.Dense (torch's `linear` on PyTorch) gives keras.layers.Dense's outputs, with LoRA
    and under mixed_bfloat16 too (in bfloat16, both rounded alike)."""
    dense = backend_runs[0][backend]["dense"]
    assert set(dense) == {"float32", "lora", "mixed_bfloat16"}, dense
    assert dense["float32"] < 1e-6 and dense["lora"] < 1e-6 and dense["mixed_bfloat16"] < 1e-2, dense


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_package_adamw_is_keras_adamw_and_layer_decay_steps_as_timms(backend_runs, backend):
    """keras_vitnt.optimizers.AdamW (on PyTorch its own in-place update, one variable at a time) leaves every
    weight and optimizer slot as keras.optimizers.AdamW does, to the bit, after 3 steps with a schedule and
    weight decay (also with amsgrad, where Keras's own PyTorch update runs); the recipe's LayerDecayAdamW
    moves every weight as timm's layer-decay AdamW does (its layer ids, exclusions and scaled weight decay;
    3 steps, see test_train's test of it on TensorFlow)."""
    adamw = backend_runs[0][backend]["adamw"]
    assert adamw["difference"] == {"amsgrad=False": 0.0, "amsgrad=True": 0.0}, adamw
    assert adamw["own_updates"] == (6 if backend == "torch" else 0), adamw  # 3 steps of AdamW, 3 of layer decay
    # on PyTorch also with amsgrad, where LayerDecayAdamW takes Keras's own update (as with weights on a GPU)
    assert len(adamw["layer_decay"]) == (2 if backend == "torch" else 1), adamw
    assert max(adamw["layer_decay"].values()) < 1e-4, adamw


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_weights_and_maps_do_not_import_tensorflow(backend_runs, backend):
    reports, work = backend_runs
    report = reports[backend]
    assert report["tensorflow_imported"] is False
    assert report["attention_shape"] == [1, 1, 6, 197, 197]
    assert report["attention_rows_sum"] < 1e-4  # softmax rows
    assert report["rollout"]["shape"] == [224, 224] and report["rollout"]["max"] == pytest.approx(1.0)
    assert report["tnt_inner_shape"] == [224, 224]  # the inner maps stitched back to the image
    # the same features as TensorFlow's extractor on the same weights
    import keras

    import keras_vitnt

    model = keras.models.load_model(work / "jax_saved_vit.keras")
    x = np.load(work / "x.npy")
    ours = keras_vitnt.feature_extractor(model, indices=1, output_fmt="NLC").predict_on_batch(x)
    assert report["features_shape"] == [2, 196, 384]
    assert relative_error(np.load(work / f"{backend}_features.npy"), np.asarray(ours)) < TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_forms_give_autodiffs_gradients_on_every_backend(backend_runs, backend):
    """JAX's training step takes the same gradient forms as TensorFlow's (test_layers checks those);
    PyTorch's does not take them (not enabled there: its own GELU keeps only its input)."""
    forms = backend_runs[0][backend]["training_forms"]
    if backend == "torch":
        assert forms is None
        return
    assert forms["calls"] >= 3, forms  # the ViT block's MLP, the TNT block's inner and outer MLPs
    assert forms["vit"] < 2e-6 and forms["tnt"] < 2e-6, forms


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_and_the_recipe_train_on_every_backend(backend_runs, backend):
    """fit on arrays on both; the recipe on PyTorch here, on JAX in test_train's JAX distribution test
    (three runs, one of them on one device, against which the others are compared)."""
    report = backend_runs[0][backend]
    before, after = report["fit_loss"]
    assert after < 0.25 * before
    recipe = report["recipe"]
    if backend == "jax":
        assert recipe is None
        return
    assert recipe["epochs_run"] == 2
    assert recipe["val_accuracy"] > 0.25  # 10 classes: chance is 0.1; 2 warmup epochs: TensorFlow gets 0.34
    assert {"model.keras", "best.keras", "summary.json", "log.csv", "curves.png"} <= set(recipe["files"])
    assert "backup" not in recipe["files"]
    assert recipe["reload_error"] < 1e-6


def test_keras_files_move_between_backends(backend_runs):
    """jax saves -> torch loads; torch saves -> TensorFlow (here) loads; same outputs."""
    import keras

    reports, work = backend_runs
    assert sorted(reports["torch"]["loaded"]) == ["jax_saved_tnt.keras", "jax_saved_vit.keras"]
    assert max(reports["torch"]["loaded"].values()) < 1e-5
    x = np.load(work / "x.npy")
    for backend in BACKENDS:
        for kind in ("vit", "tnt"):
            model = keras.models.load_model(work / f"{backend}_saved_{kind}.keras")
            assert relative_error(model.predict_on_batch(x), np.load(work / f"{backend}_saved_{kind}.npy")) < 1e-5


def test_a_recipe_run_on_pytorch_loads_in_a_fresh_tensorflow_process_with_its_optimizer(backend_runs):
    """Keras records an optimizer made on PyTorch under its PyTorch class's module, whose import on
    TensorFlow loads torch, and triton (through torch) crashes a process that loaded TensorFlow first:
    keras_vitnt's save_model names the public class instead; the recipe's files name the package's AdamW
    (keras_vitnt.optimizers, on every backend), and load there with the optimizer's state."""
    import os
    import subprocess
    import sys
    import zipfile

    reports, work = backend_runs
    for backend in BACKENDS:  # save_model, a LossScaleOptimizer around AdamW: both records public
        assert reports[backend]["optimizer_modules"] == ["keras.optimizers"], (backend, reports[backend])
    path = work / "torch_runs" / "vit" / "model.keras"
    with zipfile.ZipFile(path) as f:
        record = json.loads(f.read("config.json"))["compile_config"]["optimizer"]
    assert (record["module"], record["registered_name"]) == ("keras_vitnt.optimizers", "keras_vitnt>AdamW"), record
    code = ("import sys, keras, keras_vitnt; m = keras.models.load_model(sys.argv[1]); "
            "print(type(m.optimizer).__module__, int(m.optimizer.iterations))")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "KERAS_BACKEND": "tensorflow"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    module, steps = proc.stdout.split()[-2:]
    assert module == "keras_vitnt.optimizers" and int(steps) > 0


@pytest.mark.parametrize("backend, fmt", [("jax", "litert"), ("torch", "onnx")])
def test_export_from_every_backend(backend_runs, backend, fmt):
    """The exporter rebuilds the model on TensorFlow in a subprocess and checks the file against this
    backend's own outputs (the same path for every format)."""
    report = backend_runs[0][backend]["export"][fmt]
    assert "error" not in report, report
    assert report["exists"] and report["source_backend"] == backend
    assert report["max_relative_error"] < 1e-4
    assert "already exists; pass overwrite=True" in report["again"]
