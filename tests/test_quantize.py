"""Quantisation: Keras's own `model.quantize` on every block kind (outputs kept; test_families
reloads the int8 copies in a new process), on the trained digits models (top-1 kept); LiteRT int16x8 and
mixed_int8 exports with their parity; the per-layer int8 report and its figure; calibration
images that fit the model and never overlap the scored ones."""

import json
import os
import warnings

import keras
import numpy as np
import pytest
from test_families import BLOCK_KINDS, _tiny

import keras_vitnt
from keras_vitnt.data.samples import photo_crops
from keras_vitnt.exporter import default_samples, input_normalisation, litert_ops, run_litert

pytestmark = pytest.mark.usefixtures("fast_quantize")

# correlation of the logits with the float model's, per Keras mode (random tiny models)
KERAS_FLOORS = {"int8": 0.995, "float8": 0.99, "int4": 0.95}


def _tnt_tiny():
    model = keras_vitnt.create_model("tnt_s_patch16_224", weights=None, depth=1, input_shape=(32, 32, 3), classes=5,
                                     classifier_activation=None)
    rng = np.random.default_rng(1)
    for w in model.weights:
        w.assign(np.asarray(w) + rng.normal(0.0, 0.02, w.shape).astype(w.dtype))
    return model


TINY = {  # name -> what it adds to BLOCK_KINDS
    "vit_small_patch16_224": "Block",
    "deit_small_distilled_patch16_224": "two heads (class and distillation tokens)",
    "vit_base_patch16_siglip_224": "attention pooling (map)",
    "vit_small_patch14_reg4_dinov2": "LayerScale, registers",
    **BLOCK_KINDS,
}


def _dense_layers(model):
    return [layer for layer in model._flatten_layers(include_self=False) if isinstance(layer, keras.layers.Dense)]


def _corr(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def test_keras_quantize_every_block_kind_keeps_outputs():
    """(The int8 copies of the block kinds are saved and loaded in a new process by test_families'
    new-process test.)"""
    x = photo_crops(4, 32)
    for name in [*TINY, "tnt_s_patch16_224"]:
        model = _tnt_tiny() if name.startswith("tnt") else _tiny(name)
        ref = np.asarray(model.predict_on_batch(x))
        modes = ("int8", "int4", "float8") if name in ("vit_small_patch16_224", "tnt_s_patch16_224") else ("int8",)
        for mode in modes:
            q = keras.models.clone_model(model)
            q.set_weights(model.get_weights())
            q.quantize(mode)
            dense = _dense_layers(q)
            assert dense and all(layer.quantization_mode == mode for layer in dense), (name, mode)
            out = np.asarray(q.predict_on_batch(x))
            corr = _corr(out, ref)
            print(name, mode, f"{corr:.5f}")
            assert corr >= KERAS_FLOORS[mode], (name, mode, corr)
            assert np.max(np.abs(out - ref)) > 0  # it did change the arithmetic


def test_keras_int8_keeps_top1_on_the_trained_digits_models(digits_runs):
    for kind in ("vit", "tnt"):
        result, (x_test, y_test) = digits_runs[kind]
        fp32 = np.asarray(result.model.predict(x_test, verbose=0))
        q = keras.models.clone_model(result.model)
        q.set_weights(result.model.get_weights())
        q.quantize("int8")
        out = np.asarray(q.predict(x_test, verbose=0))
        agree = float(np.mean(out.argmax(1) == fp32.argmax(1)))
        acc32, acc8 = (float(np.mean(p.argmax(1) == y_test)) for p in (fp32, out))
        print(kind, f"agreement {agree:.4f}, accuracy {acc32:.4f} -> {acc8:.4f}")
        assert acc32 >= 0.9 and agree >= 0.98 and acc8 >= acc32 - 0.01, kind


def test_exporting_a_keras_quantized_model_says_what_to_do(tmp_path):
    model = _tiny("vit_small_patch16_224")
    model.quantize("int8")
    with pytest.raises(ValueError, match="model.quantize.*Export the float model"):
        keras_vitnt.export(model, tmp_path / "q.tflite")
    assert not os.listdir(tmp_path)


def _tensor_dtypes(path, op_name):
    """The dtypes of the first input of every `op_name` op in a .tflite file."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path)
    tensors = {t["index"]: t["dtype"] for t in interp.get_tensor_details()}
    return {np.dtype(tensors[op["inputs"][0]]).name for op in interp._get_ops_details() if op["op_name"] == op_name}


@pytest.mark.parametrize("name", ["vit_small_patch16_224", "tnt_s_patch16_224"])
def test_litert_int16x8_and_mixed_int8(name, tmp_path):
    """Real widths, one block, random weights, calibrated on photo crops, scored on others."""
    model = keras_vitnt.create_model(name, weights=None, depth=1, classifier_activation=None)
    reports = {}
    for q in ("int16x8", "mixed_int8"):
        path = str(tmp_path / f"{q}.tflite")
        reports[q] = keras_vitnt.export(model, path, quantization=q)
        print(name, q, {k: reports[q][k] for k in ("correlation", "max_relative_error", "size_bytes")})
        assert reports[q]["ops"] == litert_ops(path) and "FLEX" not in " ".join(reports[q]["ops"])
    assert reports["int16x8"]["correlation"] >= 0.99
    assert reports["mixed_int8"]["correlation"] >= 0.95
    # int16x8: int16 activations into the matmuls; mixed: float softmax and norms
    assert _tensor_dtypes(str(tmp_path / "int16x8.tflite"), "FULLY_CONNECTED") == {"int16"}
    assert _tensor_dtypes(str(tmp_path / "int16x8.tflite"), "SOFTMAX") == {"int16"}
    # mixed: int8 into the Dense layers but attention's output projection (float)
    assert _tensor_dtypes(str(tmp_path / "mixed_int8.tflite"), "FULLY_CONNECTED") == {"int8", "float32"}
    assert _tensor_dtypes(str(tmp_path / "mixed_int8.tflite"), "SOFTMAX") == {"float32"}
    assert _tensor_dtypes(str(tmp_path / "mixed_int8.tflite"), "MEAN") == {"float32"}
    # the file runs on inputs the export never saw, as its report says
    x = default_samples(model, n=2, skip=60)
    assert _corr(run_litert(str(tmp_path / "int16x8.tflite"), x), model.predict_on_batch(x)) >= 0.98


def test_int8_report_lists_every_quantized_op_and_the_cli_draws_it(tmp_path, capsys):
    from ai_edge_litert.interpreter import Interpreter

    from keras_vitnt.quantization import ROLE_NAMES, summary_lines
    from test_cli import main_here

    model = keras_vitnt.create_model("vit_small_patch16_224", weights=None, depth=1, input_shape=(64, 64, 3),
                                     classifier_activation=None)
    model.save(tmp_path / "m.keras")
    out = tmp_path / "m_int8.tflite"
    proc = main_here(capsys, "export", str(tmp_path / "m.keras"), "--quantize", "int8", "--report", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    report = json.loads((tmp_path / "m_int8.tflite.json").read_text())["report"]["int8_layers"]
    # every op of the full int8 file that computes in int8 (not the QUANTIZE/DEQUANTIZE at its edges) is listed
    interp = Interpreter(model_path=str(out))
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    quantized = [op for op in interp._get_ops_details() if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE")
                 and np.dtype(tensors[op["outputs"][0]]["dtype"]) == np.int8]
    layers = report["layers"]
    assert len(layers) == len(quantized) > 20
    assert sorted(r["op"] for r in layers) == sorted(op["op_name"] for op in quantized)
    assert all(r["role"] in ROLE_NAMES for r in layers)
    roles = {r["role"] for r in layers}
    assert {"layernorm", "softmax", "attention_matmul", "dense", "conv", "gelu", "residual"} <= roles
    assert {g["group"] for g in report["groups"]} == roles
    assert all(0 < g["quantized_ops"] and -1 <= g["correlation"] <= 1 and -1 <= g["alone"]["correlation"] <= 1
               for g in report["groups"])
    # the finding mixed_int8 rests on: the norms alone in int8 cost more than all the Dense layers alone
    alone = {g["group"]: g["alone"]["correlation"] for g in report["groups"]}
    assert alone["layernorm"] < alone["dense"]
    # the same numbers as the export's own parity report of the full int8 file
    top = json.loads((tmp_path / "m_int8.tflite.json").read_text())["report"]
    assert report["full_int8"]["correlation"] == pytest.approx(top["correlation"], abs=1e-6)
    assert _tensor_dtypes(str(out), "SOFTMAX") == {"int8"}
    mixed = report["mixed_int8"]
    assert mixed["correlation"] > report["full_int8"]["correlation"]
    assert mixed["float_ops"] and "FULLY_CONNECTED" not in mixed["float_ops"]
    assert len(mixed["float_dense"]) == 1 and "/attn" in mixed["float_dense"][0]  # one block: one attention proj
    assert "this group alone in int8" in proc.stdout and len(summary_lines(report)) > 10
    figure = tmp_path / "m_int8.tflite.int8_report.png"
    assert figure.stat().st_size > 10_000
    # an existing figure is kept without --overwrite, and nothing is exported
    from keras_vitnt import cli

    os.remove(out)
    before = figure.read_bytes()
    assert cli.main(["export", str(tmp_path / "m.keras"), "--quantize", "int8", "--report", "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err and not out.exists() and figure.read_bytes() == before


def test_calibration_images_fit_the_model_and_never_overlap_the_scored_ones(tmp_path, caplog):
    # a model without preprocessing inside: photos normalised with its registered tag's mean/std
    model = keras_vitnt.create_model("deit_tiny_patch16_224", weights=None, depth=1, include_preprocessing=False,
                                     classifier_activation=None)
    norm = input_normalisation(model)
    assert norm["mean"] == pytest.approx((0.485, 0.456, 0.406)) and norm["std"] == pytest.approx((0.229, 0.224, 0.225))
    x = default_samples(model, n=2, **norm)
    raw = photo_crops(2, 224)
    assert np.allclose(x, (raw / 255.0 - np.asarray(norm["mean"])) / np.asarray(norm["std"]), atol=1e-5)
    # scored images given as calibration are left out of it
    scored = default_samples(model, n=4, **norm)
    calibration = np.concatenate([scored[:2], default_samples(model, n=6, skip=4, **norm)])
    with caplog.at_level("WARNING", logger="keras_vitnt"):
        keras_vitnt.export(model, tmp_path / "m.tflite", quantization="int8", sample_data=scored,
                           representative_data=calibration)
    assert "left out 2 images" in caplog.text
    with pytest.raises(ValueError, match="all 2 images are among"):
        keras_vitnt.export(model, tmp_path / "m2.tflite", quantization="int8", sample_data=scored,
                           representative_data=scored[:2])


def test_benchmark_quant_rows_cover_every_mode(tmp_path):
    """The README's quantisation table: one row per Keras and LiteRT mode, scored against Keras fp32."""
    from keras_vitnt import benchmark

    model = _tiny("vit_small_patch16_224")
    x = photo_crops(12, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = benchmark._quant_rows("tiny", model, x[:6], x[6:], np.arange(6) % 5, threads=2, rounds=1,
                                     tmp=str(tmp_path))
    # Keras's "Layer InputLayer does not have a `quantize` method implemented" (one per such layer) is not
    # the benchmark's to print
    assert not [w for w in caught if "does not have a `quantize` method" in str(w.message)]
    cells = {row.split("|")[2].strip(): [c.strip() for c in row.split("|")[3:-1]] for row in rows}
    modes = ["Keras fp32", "Keras mixed_bfloat16", *(f'Keras quantize("{m}")' for m in benchmark.KERAS_QUANTS),
             *(f"LiteRT {q or 'fp32'}" for q in benchmark.LITERT_QUANTS)]
    assert list(cells) == modes
    assert cells["Keras fp32"][2:4] == ["1.0000", "100.0%"]
    assert float(cells["LiteRT fp32"][2]) >= 0.9999 and float(cells['Keras quantize("int8")'][2]) >= 0.99
    # sizes: int8 files are about a quarter of fp32
    assert float(cells["LiteRT dynamic_int8"][0]) < 0.5 * float(cells["LiteRT fp32"][0])
    assert all(c[4].endswith("%") for c in cells.values())  # accuracy against the labels given
