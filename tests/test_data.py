"""Inference helpers: class names, image loading as timm evaluates, the predict command."""

import numpy as np
import pytest

from keras_vitnt.data import decode_predictions, imagenet_classes, load_image


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photos that ship with scikit-learn, written as JPEG and PNG files."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(load_sample_image("china.jpg")).save(d / "china.jpg", quality=95)
    Image.fromarray(load_sample_image("flower.jpg")).save(d / "flower.png")
    return [str(d / "china.jpg"), str(d / "flower.png")]


def test_imagenet_class_names():
    classes = imagenet_classes()
    assert len(classes) == 1000
    assert classes[0] == ("n01440764", "tench, Tinca tinca")
    assert classes[281] == ("n02123045", "tabby, tabby cat")
    assert classes[999][0] == "n15075141"


def test_decode_predictions_orders_by_score():
    preds = np.zeros((2, 1000), "float32")
    preds[0, [281, 285, 1]] = [0.7, 0.2, 0.1]
    preds[1, 999] = 5.0
    out = decode_predictions(preds, top=3)
    assert [r[:2] for r in out[0]] == [("n02123045", "tabby, tabby cat"), ("n02124075", "Egyptian cat"),
                                       ("n01443537", "goldfish, Carassius auratus")]
    assert out[0][0][2] == pytest.approx(0.7) and out[1][0][0] == "n15075141"
    with pytest.raises(ValueError, match="1000.*21843"):  # other heads need their own label list
        decode_predictions(np.zeros((1, 10)))


@pytest.mark.parametrize("size,crop_pct", [(224, 0.9), (384, 1.0), (160, 0.875)])
def test_load_image_equals_timm_eval_transform(photos, size, crop_pct):
    from PIL import Image
    from timm.data import create_transform

    tf = create_transform(input_size=(3, size, size), crop_pct=crop_pct, interpolation="bicubic",
                          is_training=False, mean=(0, 0, 0), std=(1 / 255,) * 3)
    for path in photos:
        with Image.open(path) as im:
            ref = tf(im.convert("RGB")).numpy().transpose(1, 2, 0)
        out = load_image(path, size=size, crop_pct=crop_pct)
        assert out.shape == (size, size, 3) and out.dtype == np.float32
        np.testing.assert_allclose(out, ref, atol=1e-3)


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_image(str(tmp_path / "nope.jpg"))
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="bad.jpg"):
        load_image(str(bad))


def test_predict_command_on_real_photos_with_a_local_checkpoint(photos, tmp_path, capsys):
    import keras_vitnt
    from test_cli import main_here
    from timm_oracle import perturbed_timm_model, save_checkpoint

    path = save_checkpoint(perturbed_timm_model("deit_tiny_patch16_224"), tmp_path / "deit.safetensors")
    out = main_here(capsys, "predict", "deit_tiny_patch16_224", *photos, "--weights", str(path), "--top", "3")
    assert out.returncode == 0, out.stderr[-2000:]
    # the printed classes are those of the same model in Python, on the same crops
    model = keras_vitnt.create_model("deit_tiny_patch16_224", weights=str(path))
    expected = decode_predictions(model.predict_on_batch(np.stack([load_image(p) for p in photos])), top=3)
    for photo, rows in zip(photos, expected):
        block = out.stdout.split(photo, 1)[1]
        for wnid, _, score in rows:
            assert wnid in block and f"{score:.4f}" in block
