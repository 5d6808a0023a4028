"""Visualisation: attention maps from the model's own blocks, rollout, TNT inner maps,
feature maps, t-SNE and the PNGs, on non-square inputs and 1 or 2 prefix tokens."""

import numpy as np
import pytest
from PIL import Image

import keras_vitnt
from keras_vitnt import visualize as vz

H, W = 32, 48  # non-square: a 4 x 6 patch grid at P = 8


def vit(**kw):
    return keras_vitnt.ViT("Ti/8", weights=None, input_shape=(H, W, 3), classes=5, depth=2, **kw)


def tnt(**kw):
    return keras_vitnt.TNT("S", weights=None, input_shape=(H, W, 3), classes=5, patch_size=8, first_stride=2,
                           depth=2, **kw)


def image(seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (H, W, 3)).astype("float32")


@pytest.mark.parametrize("build,prefix", [(vit, 1), (lambda: vit(distilled=True), 2)], ids=["vit", "deit-distilled"])
def test_vit_attention_maps_and_rollout(build, prefix):
    model = build()
    maps = vz.attention_maps(model, np.stack([image(0), image(1)]))
    t = prefix + 4 * 6
    assert maps.shape == (2, 2, 3, t, t)
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-5)
    roll = vz.attention_rollout(model, image(0))
    assert roll.shape == (H, W) and roll.min() >= 0 and roll.max() == pytest.approx(1.0)
    other = vz.attention_rollout(model, image(1))
    assert not np.allclose(roll, other)  # the map follows the image
    assert vz.attention_rollout(model, image(0), head_fusion="max", discard_ratio=0.5).shape == (H, W)


def test_tnt_outer_and_inner_maps():
    model = tnt()
    maps = vz.attention_maps(model, image())
    assert maps["outer"].shape == (1, 2, 6, 25, 25)
    assert maps["inner"].shape == (1, 2, 24, 4, 16, 16)  # 24 patches, 4 heads, 4x4 words
    np.testing.assert_allclose(maps["inner"].sum(-1), 1.0, rtol=1e-5)
    inner = vz.tnt_inner_maps(model, image())
    assert inner.shape == (H, W) and 0 <= inner.min() and inner.max() == pytest.approx(1.0)
    assert vz.attention_rollout(model, image()).shape == (H, W)


def test_uniform_attention_gives_a_uniform_rollout():
    model = vit()
    for i in range(2):  # q = k = 0: every logit equal, every attention row uniform
        qkv = model.get_layer(f"blocks_{i}").attn.qkv
        kernel, bias = np.asarray(qkv.kernel), np.asarray(qkv.bias)
        kernel[:, : 2 * 192] = 0
        bias[: 2 * 192] = 0
        qkv.kernel.assign(kernel)
        qkv.bias.assign(bias)
    maps = vz.attention_maps(model, image())
    np.testing.assert_allclose(maps, 1.0 / 25, rtol=1e-5)
    np.testing.assert_allclose(vz.attention_rollout(model, image()), 1.0, rtol=1e-5)


def test_block_attention_equals_softmax_qk_from_the_weights():
    model = vit()
    import keras

    block = model.get_layer("blocks_0")
    x = np.asarray(keras.Model(model.inputs, block.input).predict_on_batch(image()[None]))
    norm = block.norm1
    y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + norm.epsilon)
    y = y * np.asarray(norm.gamma) + np.asarray(norm.beta)
    qkv = y @ np.asarray(block.attn.qkv.kernel) + np.asarray(block.attn.qkv.bias)
    q, k = qkv[..., :192], qkv[..., 192:384]
    heads = lambda a: a.reshape(1, 25, 3, 64).transpose(0, 2, 1, 3)  # noqa: E731
    logits = heads(q) @ heads(k).transpose(0, 1, 3, 2) / 8.0
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(vz.attention_maps(model, image())[0, 0], expected[0], rtol=1e-4, atol=1e-6)


def test_feature_maps_and_features():
    model = tnt()
    fm = vz.feature_maps(model, image(), blocks=[0, -1])
    assert set(fm) == {0, 1} and fm[1].shape == (4, 6, 384)
    assert vz.feature_map_image(fm[1]).shape == (4, 6)
    feats = vz.extract_features(model, np.stack([image(0), image(1)]))
    assert feats.shape == (2, 384)


def test_pngs_are_written_with_the_expected_size(tmp_path):
    model = vit()
    roll = vz.attention_rollout(model, image())
    vz.overlay(image(), roll, tmp_path / "overlay.png")
    vz.attention_grid(model, image(), tmp_path / "heads.png")
    rng = np.random.default_rng(0)
    feats = {"A": rng.standard_normal((40, 8)), "B": rng.standard_normal((40, 8))}
    vz.tsne_plot(feats, np.arange(40) % 4, tmp_path / "tsne.png")
    for name, size in (("overlay.png", (704, 374)), ("tsne.png", (1012, 484))):
        with Image.open(tmp_path / name) as im:
            im.verify()
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and im.size == size, (name, im.size)
    with Image.open(tmp_path / "heads.png") as im:
        assert im.format == "PNG" and im.size[0] > 100


def test_visualize_cli_writes_an_overlay(tmp_path):
    from test_cli import run_cli
    from timm_oracle import perturbed_timm_model, save_checkpoint

    ckpt = save_checkpoint(perturbed_timm_model("deit_tiny_distilled_patch16_224"), tmp_path / "d.safetensors")
    Image.fromarray(image().astype("uint8")).save(tmp_path / "img.png")
    for kind in ("rollout", "attention"):
        out = run_cli("visualize", str(tmp_path / "img.png"), "--model", "deit_tiny_distilled_patch16_224",
                      "--weights", str(ckpt), "--kind", kind, "--out", str(tmp_path / f"{kind}.png"))
        assert out.returncode == 0, out.stderr[-2000:]
        with Image.open(tmp_path / f"{kind}.png") as im:
            assert im.format == "PNG"
