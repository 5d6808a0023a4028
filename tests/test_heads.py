"""timm's head rule (the head follows the weights unless `classes` asks otherwise) and the
normalisation rule (the tag's mean/std, or `mean=`/`std=` for a file), with nothing ever
predicting from a random head."""

import json
import logging

import numpy as np
import pytest

import keras_vitnt
from keras_vitnt.data.imagenet import decode_predictions, imagenet21k_classes
from timm_oracle import normalised_images, perturbed_timm_model, relative_error, save_checkpoint, timm_logits

SMALL = dict(img_size=32, patch_size=8, depth=1)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def small(weights, **kw):
    kw = {"input_shape": (32, 32, 3), "patch_size": 8, "depth": 1, **kw}
    return keras_vitnt.create_model("vit_tiny_patch16_224", weights=weights, **kw)


def checkpoint(tmp_path, num_classes, name="vit"):
    tm = perturbed_timm_model("vit_tiny_patch16_224", num_classes=num_classes, **SMALL)
    return tm, str(save_checkpoint(tm, tmp_path / f"{name}_{num_classes}.safetensors"))


def test_without_classes_the_head_is_the_checkpoints(tmp_path):
    tm, path = checkpoint(tmp_path, 10)
    model = small(path, include_preprocessing=False, classifier_activation=None)
    assert model.output_shape == (None, 10)
    x = normalised_images(2, 32, 32)
    assert relative_error(np.asarray(model.predict_on_batch(x)), timm_logits(tm, x)) <= 1e-5


def test_a_headless_checkpoint_with_a_head_is_an_error_that_says_what_to_pass(tmp_path):
    _, path = checkpoint(tmp_path, 0)
    with pytest.raises(ValueError, match=r"no classifier head.*include_top=False.*classes=N"):
        small(path)
    assert small(path, include_top=False, pooling="token").output_shape == (None, 192)
    assert small(path, classes=5).output_shape == (None, 5)  # asked for: a fresh head to fine-tune


@pytest.mark.parametrize("name", ["vit_small_patch8_224.dino", "vit_huge_patch14_224"])
def test_a_headless_pretrained_tag_is_refused_before_any_download(name, monkeypatch):
    from keras_vitnt.weights import hub

    monkeypatch.setattr(hub, "download", lambda tag: pytest.fail("must fail before downloading"))
    with pytest.raises(ValueError, match="no classifier head"):
        keras_vitnt.create_model(name, weights="imagenet", depth=1)


def test_an_imagenet21k_head_is_kept_and_decoded_with_21k_names(tmp_path):
    tm, path = checkpoint(tmp_path, 21843)
    model = small(path, include_preprocessing=False)
    assert model.output_shape == (None, 21843)
    probs = np.asarray(model.predict_on_batch(normalised_images(1, 32, 32)))
    top = decode_predictions(probs, top=3)[0]
    names = imagenet21k_classes()
    assert len(names) == 21843 and names[0][0] == "n00004475"  # timm's imagenet21k_goog order
    assert top[0][:2] == names[int(probs[0].argmax())]
    with pytest.raises(ValueError, match="21843"):
        decode_predictions(np.zeros((1, 10)))


def test_a_file_normalises_as_the_model_default_and_says_so_unless_mean_std_are_given(tmp_path, caplog):
    """A DeiT file loaded by ViT("Ti/16") normalises with the ViT default (0.5) and warns;
    with DeiT's mean/std it gives timm's logits on 0..255 input, and the model's config and
    the export sidecar say which mean/std is inside."""
    tm, path = checkpoint(tmp_path, 1000, name="deit")
    rgb = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    mean, std = (np.asarray(v, "float32") for v in IMAGENET)
    ref = timm_logits(tm, ((rgb / 255.0 - mean) / std).astype("float32"))
    kw = dict(input_shape=(32, 32, 3), patch_size=8, depth=1, classifier_activation=None)
    with caplog.at_level(logging.WARNING, logger="keras_vitnt"):
        guessed = keras_vitnt.ViT("Ti/16", weights=path, **kw)
    assert "mean=(0.5, 0.5, 0.5)" in caplog.text and "pass mean= and std=" in caplog.text
    assert relative_error(np.asarray(guessed.predict_on_batch(rgb)), ref) > 1e-2  # the wrong normalisation shows

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="keras_vitnt"):
        model = keras_vitnt.ViT("Ti/16", weights=path, mean=IMAGENET[0], std=IMAGENET[1], **kw)
    assert "pass mean=" not in caplog.text
    assert relative_error(np.asarray(model.predict_on_batch(rgb)), ref) <= 1e-5
    pre = model.get_layer("preprocess").get_config()
    np.testing.assert_allclose(pre["mean"], IMAGENET[0]) and np.testing.assert_allclose(pre["std"], IMAGENET[1])
    report = keras_vitnt.export(model, tmp_path / "m.tflite", sample_data=rgb)
    sidecar = json.loads(open(report["path"] + ".json").read())
    np.testing.assert_allclose(sidecar["mean"], IMAGENET[0]) and np.testing.assert_allclose(sidecar["std"], IMAGENET[1])


def test_mean_std_errors():
    with pytest.raises(ValueError, match="together"):
        keras_vitnt.ViT("Ti/16", weights=None, mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="include_preprocessing=True"):
        keras_vitnt.ViT("Ti/16", weights=None, include_preprocessing=False, mean=(0, 0, 0), std=(1, 1, 1))


def test_predict_never_prints_labels_from_an_untrained_head(capsys):
    from test_cli import main_here

    res = main_here(capsys, "predict", "x.jpg", "--model", "vit_tiny_patch16_224", "--weights", "none")
    assert res.returncode == 1 and "random" in res.stderr and "n0" not in res.stdout
    res = main_here(capsys, "predict", "x.jpg", "--model", "vit_small_patch8_224.dino")
    assert res.returncode == 1 and "without a classifier head" in res.stderr and "n0" not in res.stdout


def test_visualize_takes_a_feature_checkpoint(tmp_path, capsys):
    """Attention maps need no head: a headless file works with the CLI (no random head built)."""
    from PIL import Image

    from test_cli import main_here

    tm = perturbed_timm_model("vit_tiny_patch16_224", num_classes=0)
    path = save_checkpoint(tm, tmp_path / "features.safetensors")
    Image.fromarray(np.full((64, 64, 3), 128, "uint8")).save(tmp_path / "grey.png")
    res = main_here(capsys, "visualize", str(tmp_path / "grey.png"), "--model", "vit_tiny_patch16_224",
                    "--weights", str(path),
                    "--out", str(tmp_path / "rollout.png"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert Image.open(tmp_path / "rollout.png").size[0] > 100


def test_cli_export_of_a_feature_checkpoint_takes_pooling_and_mean_std(tmp_path, capsys):
    import json

    from test_cli import main_here

    tm = perturbed_timm_model("vit_tiny_patch16_224", num_classes=0)
    path = save_checkpoint(tm, tmp_path / "features.safetensors")
    res = main_here(capsys, "export", "vit_tiny_patch16_224", "--weights", str(path),
                    "--out", str(tmp_path / "f.tflite"))
    assert res.returncode == 1 and "--pooling token" in res.stderr and not (tmp_path / "f.tflite").exists()
    res = main_here(capsys, "export", "vit_tiny_patch16_224", "--weights", str(path), "--pooling", "token", "--mean",
                    "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--out", str(tmp_path / "f.tflite"))
    assert res.returncode == 0, res.stderr[-2000:]
    meta = json.loads((tmp_path / "f.tflite.json").read_text())
    assert meta["output"] == "features" and meta["output_shape"] == [192]
    np.testing.assert_allclose(meta["mean"], IMAGENET[0]) and np.testing.assert_allclose(meta["std"], IMAGENET[1])
    assert main_here(capsys, "export", "vit_tiny_patch16_224", "--mean", "0.5,0.5").returncode == 2  # three values
