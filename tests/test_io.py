"""Atomic writes: a crash while saving never leaves a half-written or mismatched file, nor a
temporary file behind; two writers at once never share a temporary name."""

import json
import os
import threading

import keras
import numpy as np
import pytest

import keras_vitnt
from keras_vitnt.io_utils import atomic_path, save_model, write_json


def tiny():
    return keras_vitnt.ViT("Ti/4", weights=None, input_shape=(16, 16, 3), classes=10, depth=1, embed_dim=48,
                           num_heads=3)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    write_json(path, {"run": 1})
    with pytest.raises(RuntimeError, match="disk died"):
        with atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write('{"run": 2, "half')
            raise RuntimeError("disk died")
    assert json.loads(path.read_text()) == {"run": 1}
    assert os.listdir(tmp_path) == ["summary.json"]


def test_a_crash_inside_model_save_keeps_the_previous_model(tmp_path, monkeypatch):
    path = tmp_path / "model.keras"
    model = tiny()
    save_model(model, path)
    before = path.read_bytes()
    real_save = keras.Model.save

    def dies_half_way(self, filepath, *a, **kw):
        real_save(self, filepath, *a, **kw)
        with open(filepath, "r+b") as f:  # what a killed process leaves: a truncated archive
            f.truncate(100)
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_model(model, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["model.keras"]
    monkeypatch.undo()
    x = np.zeros((1, 16, 16, 3), "float32")
    np.testing.assert_allclose(keras.models.load_model(path).predict_on_batch(x), model.predict_on_batch(x))


def test_concurrent_writers_never_share_a_temporary_name(tmp_path):
    names, lock = [], threading.Lock()

    def writer(i):
        with atomic_path(tmp_path / "out.json") as tmp:
            with lock:
                names.append(tmp)
            with open(tmp, "w") as f:
                json.dump({"writer": i}, f)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(names)) == 8
    assert json.loads((tmp_path / "out.json").read_text())["writer"] in range(8)
    assert os.listdir(tmp_path) == ["out.json"]


def test_the_export_sidecar_names_the_file_it_describes(tmp_path):
    import hashlib

    report = keras_vitnt.export(tiny(), tmp_path / "m.tflite")
    meta = json.loads((tmp_path / "m.tflite.json").read_text())
    assert meta["sha256"] == hashlib.sha256((tmp_path / "m.tflite").read_bytes()).hexdigest()
    assert meta["report"]["max_relative_error"] == report["max_relative_error"]
    assert sorted(os.listdir(tmp_path)) == ["m.tflite", "m.tflite.json"]


def test_export_overwrite_replaces_its_own_exports_only(tmp_path):
    model = tiny()
    keras_vitnt.export(model, tmp_path / "m.tflite")
    keras_vitnt.export(model, tmp_path / "m.tflite", overwrite=True)  # its own: replaced
    (tmp_path / "mine.tflite").write_bytes(b"a model of my own")
    with pytest.raises(FileExistsError, match="not a keras_vitnt litert export"):
        keras_vitnt.export(model, tmp_path / "mine.tflite", overwrite=True)
    assert (tmp_path / "mine.tflite").read_bytes() == b"a model of my own"
    folder = tmp_path / "my_saved_model"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a keras_vitnt saved_model export"):
        keras_vitnt.export(model, folder, format="saved_model", overwrite=True)
    assert os.listdir(folder) == ["notes.txt"]


def test_benchmark_overwrite_replaces_only_a_benchmark_result(tmp_path):
    from keras_vitnt import benchmark

    out = tmp_path / "notes.md"
    out.write_text("my own notes\n")
    with pytest.raises(SystemExit, match="not a keras_vitnt benchmark result"):
        benchmark.main(["--out", str(out), "--overwrite"])
    assert out.read_text() == "my own notes\n"


def test_a_mixed_precision_backbone_inside_a_users_model_exports_in_float32(tmp_path):
    """float32_copy reaches nested models: a bf16 keras_vitnt backbone wrapped in the user's model."""
    from keras_vitnt.precision import dtype_policy, float32_copy, model_policies

    with dtype_policy("mixed_bfloat16"):
        backbone = keras_vitnt.ViT("Ti/4", weights=None, input_shape=(16, 16, 3), include_top=False,
                                   pooling="token", depth=1, embed_dim=48, num_heads=3)
        inputs = keras.Input((16, 16, 3))
        model = keras.Model(inputs, keras.layers.Dense(3, dtype="float32")(backbone(inputs)))
    copy = float32_copy(model)
    assert "mixed_bfloat16" in model_policies(model) and model_policies(copy) == ["float32"]
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    with dtype_policy("float32"):
        reference = keras.models.clone_model(copy)
    reference.set_weights(model.get_weights())
    np.testing.assert_allclose(copy.predict_on_batch(x), reference.predict_on_batch(x), rtol=1e-6)
    report = keras_vitnt.export(model, tmp_path / "m.tflite", sample_data=x)
    assert report["max_relative_error"] < 1e-4


def test_a_sidecar_name_taken_by_a_user_file_is_refused(tmp_path):
    (tmp_path / "m.tflite.json").write_text('{"mine": true}')
    with pytest.raises(FileExistsError, match="m.tflite.json already exists"):
        keras_vitnt.export(tiny(), tmp_path / "m.tflite")
    assert sorted(os.listdir(tmp_path)) == ["m.tflite.json"]
    assert json.loads((tmp_path / "m.tflite.json").read_text()) == {"mine": True}


def test_demo_overwrite_does_not_mistake_a_users_folder_for_an_old_demo(tmp_path):
    from keras_vitnt import demo

    (tmp_path / "report.md").write_text("# my report\n")
    (tmp_path / "summary.json").write_text('{"models": {}, "figures": null}')
    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "mine.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="does not hold a keras_vitnt demo run"):
        demo.prepare_out(str(tmp_path), overwrite=True)
    assert (tmp_path / "vit" / "mine.txt").read_text() == "mine" and (tmp_path / "summary.json").exists()
