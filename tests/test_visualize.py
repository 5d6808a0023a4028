"""Visualisation: attention maps from the model's own blocks, rollout, TNT inner maps,
feature maps, t-SNE and the PNGs, on non-square inputs and 1 or 2 prefix tokens; the
`keras-vitnt visualize` command for every --kind."""

import os

import keras
import numpy as np
import pytest
from PIL import Image

import keras_vitnt
from keras_vitnt import visualize as vz
from keras_vitnt.data import load_image
from keras_vitnt.data.samples import photo_crops

H, W = 32, 48  # non-square: a 4 x 6 patch grid at P = 8
OVERLAY_PNG = (704, 374)  # vz.overlay: 6.4 x 3.4 inches at 110 dpi


def vit(**kw):
    return keras_vitnt.ViT("Ti/8", weights=None, input_shape=(H, W, 3), classes=5, depth=2, **kw)


def tnt(**kw):
    return keras_vitnt.TNT("S", weights=None, input_shape=(H, W, 3), classes=5, patch_size=8, first_stride=2,
                           depth=2, **kw)


def image(seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (H, W, 3)).astype("float32")


def reference_rollout(att, prefix, grid):
    """Abnar & Zuidema's rollout from the class token, written out from the paper for one
    image's maps (L, heads, T, T): mean over heads, + identity for the residual, rows
    renormalised, blocks multiplied in order; the class token's row over the patches."""
    t = att.shape[-1]
    rollout = np.eye(t)
    for a in att.astype("float64"):
        a = 0.5 * a.mean(0) + 0.5 * np.eye(t)
        rollout = (a / a.sum(-1, keepdims=True)) @ rollout
    return rollout[0, prefix:].reshape(grid)


def reference_inner_map(inner, grid):
    """TNT's inner maps of one image and block (N, heads, words, words) laid out by hand: patch
    n = (row, col) of the grid, its words row by row inside the patch; each word's value is the
    attention it receives (mean over heads and queries)."""
    gh, gw = grid
    side = int(round(inner.shape[-1] ** 0.5))
    tiles = np.zeros((gh * side, gw * side))
    for n in range(gh * gw):
        row, col = divmod(n, gw)
        tiles[row * side:(row + 1) * side, col * side:(col + 1) * side] = inner[n].mean(0).mean(0).reshape(side, side)
    return tiles


def at_image_size(grid_map, size=(H, W)):
    m = vz.upsample(grid_map, size)
    return m / m.max()


def png_pixels(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"), "int16")


def assert_same_picture(a, b):
    """Two renderings of the same arrays (a map computed in another process may differ in the
    last bit: allow a handful of pixels one colour level off)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = np.abs(a - b)
    assert np.mean(diff > 2) < 1e-3 and diff.mean() < 0.05, (diff.max(), np.mean(diff > 2))


@pytest.mark.parametrize("build,prefix", [(vit, 1), (lambda: vit(distilled=True), 2)], ids=["vit", "deit-distilled"])
def test_vit_attention_maps_and_rollout(build, prefix):
    model = build()
    maps = vz.attention_maps(model, np.stack([image(0), image(1)]))
    t = prefix + 4 * 6
    assert maps.shape == (2, 2, 3, t, t)
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-5)
    roll = vz.attention_rollout(model, image(0))
    # the rolled-out class-token row past the `prefix` tokens, on the 4 x 6 grid, at image size
    np.testing.assert_allclose(roll, at_image_size(reference_rollout(maps[0], prefix, (4, 6))), rtol=1e-5, atol=1e-6)
    other = vz.attention_rollout(model, image(1))
    np.testing.assert_allclose(other, at_image_size(reference_rollout(maps[1], prefix, (4, 6))), rtol=1e-5, atol=1e-6)
    assert not np.allclose(roll, other, atol=1e-3)  # the map follows the image
    fused = vz.attention_rollout(model, image(0), head_fusion="max", discard_ratio=0.5)
    assert fused.shape == (H, W) and not np.allclose(fused, roll, atol=1e-3)


def test_tnt_outer_and_inner_maps():
    model = tnt()
    maps = vz.attention_maps(model, image())
    assert maps["outer"].shape == (1, 2, 6, 25, 25)
    assert maps["inner"].shape == (1, 2, 24, 4, 16, 16)  # 24 patches, 4 heads, 4x4 words
    np.testing.assert_allclose(maps["inner"].sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(maps["outer"].sum(-1), 1.0, rtol=1e-5)
    for block in (0, -1):
        inner = vz.tnt_inner_maps(model, image(), block=block)
        expected = at_image_size(reference_inner_map(maps["inner"][0, block], (4, 6)))
        np.testing.assert_allclose(inner, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(vz.tnt_inner_maps(model, image(), block=0), inner, atol=1e-4)
    roll = vz.attention_rollout(model, image())  # TNT: the outer (patch-level) attention rolled out
    np.testing.assert_allclose(roll, at_image_size(reference_rollout(maps["outer"][0], 1, (4, 6))), rtol=1e-5,
                               atol=1e-6)


def test_upsample_keeps_the_grid_orientation():
    grid = np.arange(24, dtype="float32").reshape(4, 6)
    up = vz.upsample(grid, (H, W))
    assert up.shape == (H, W)
    # bilinear: each 8 x 8 cell is centred on its grid value
    cells = up.reshape(4, 8, 6, 8).mean(axis=(1, 3))
    np.testing.assert_allclose(cells[1:-1, 1:-1], grid[1:-1, 1:-1], atol=1e-4)
    assert up[4, 4] < up[4, W - 4] < up[H - 4, 4]  # across a row +5, down a column +18


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


def test_feature_maps_are_the_blocks_patch_tokens_on_the_grid():
    model = tnt(classifier_activation=None)
    fm = vz.feature_maps(model, image(), blocks=[0, -1])
    assert set(fm) == {0, 1} and fm[1].shape == (4, 6, 384)
    for i in (0, 1):  # the block's patch tokens, class token dropped, row by row on the 4 x 6 grid
        _, tokens = keras.Model(model.inputs, model.get_layer(f"blocks_{i}").output).predict_on_batch(image()[None])
        tokens = np.asarray(tokens)[0]
        for row, col in ((0, 0), (2, 5), (3, 1)):
            np.testing.assert_allclose(fm[i][row, col], tokens[1 + row * 6 + col], rtol=1e-4, atol=1e-5)
    assert not np.allclose(fm[0], fm[1], atol=1e-3)


def test_feature_map_image_is_the_first_principal_component():
    rng = np.random.default_rng(0)
    p1, p2 = rng.standard_normal(24), rng.standard_normal(24)
    p1 -= p1.mean()
    p2 -= p2.mean()
    p2 -= (p2 @ p1) / (p1 @ p1) * p1  # uncorrelated patterns; p1 carries 9x the variance
    d = np.linalg.qr(rng.standard_normal((16, 2)))[0]  # two orthonormal feature directions
    feats = 3 * np.outer(p1 / np.linalg.norm(p1), d[:, 0]) + np.outer(p2 / np.linalg.norm(p2), d[:, 1]) + 5.0
    img = vz.feature_map_image(feats.reshape(4, 6, 16))
    ref = ((p1 - p1.min()) / np.ptp(p1)).reshape(4, 6)
    assert img.shape == (4, 6)
    assert np.allclose(img, ref, atol=1e-5) or np.allclose(img, 1 - ref, atol=1e-5)  # a PC's sign is arbitrary


def test_extract_features_are_the_input_of_the_head():
    model = tnt(classifier_activation=None)
    head = model.get_layer("head")
    head.kernel.assign(np.asarray(head.kernel) * 50)  # logits well apart: a wrong feature layer shows
    x = np.stack([image(0), image(1)])
    feats = vz.extract_features(model, x)
    assert feats.shape == (2, 384)
    logits = feats @ np.asarray(head.kernel) + np.asarray(head.bias)
    ref = np.asarray(model.predict_on_batch(x))
    assert np.max(np.abs(logits - ref)) <= 1e-4 * np.max(np.abs(ref))


def test_tsne_keeps_separated_clusters_apart():
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 4
    centres = 10 * rng.standard_normal((4, 8))
    emb = vz.tsne_embedding(centres[labels] + rng.standard_normal((60, 8)))
    assert emb.shape == (60, 2)
    dist = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    assert np.mean(labels[dist.argmin(1)] == labels) == 1.0  # every point's nearest neighbour: its cluster


def test_pngs_are_written_with_the_expected_size(tmp_path):
    model = vit()
    roll = vz.attention_rollout(model, image())
    vz.overlay(image(), roll, tmp_path / "overlay.png")
    vz.overlay(image(), np.ones_like(roll), tmp_path / "flat.png")
    vz.attention_grid(model, image(), tmp_path / "heads.png")
    rng = np.random.default_rng(0)
    feats = {"A": rng.standard_normal((40, 8)), "B": rng.standard_normal((40, 8))}
    vz.tsne_plot(feats, np.arange(40) % 4, tmp_path / "tsne.png")
    # figure size x 110 dpi; heads: 3 heads of ViT-Ti in one row of 2.2-inch panels
    for name, size in (("overlay.png", OVERLAY_PNG), ("tsne.png", (1012, 484)), ("heads.png", (726, 242))):
        with Image.open(tmp_path / name) as im:
            im.verify()
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and im.size == size, (name, im.size)
    # the heat map is drawn: the same image under a flat map looks different
    assert np.abs(png_pixels(tmp_path / "overlay.png") - png_pixels(tmp_path / "flat.png")).mean() > 1.0
    assert sorted(os.listdir(tmp_path)) == ["flat.png", "heads.png", "overlay.png", "tsne.png"]  # no temporaries


# --- the command line ---------------------------------------------------------------------


def write_image(path, size, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype="uint8")).save(path)
    return str(path)


def test_visualize_cli_writes_an_overlay(tmp_path, capsys):
    from test_cli import main_here
    from timm_oracle import perturbed_timm_model, save_checkpoint

    ckpt = save_checkpoint(perturbed_timm_model("deit_tiny_distilled_patch16_224"), tmp_path / "d.safetensors")
    img = write_image(tmp_path / "img.png", (H, W))
    for kind, size in (("rollout", OVERLAY_PNG), ("attention", (726, 242))):
        out = main_here(capsys, "visualize", img, "--model", "deit_tiny_distilled_patch16_224",
                        "--weights", str(ckpt), "--kind", kind, "--out", str(tmp_path / f"{kind}.png"))
        assert out.returncode == 0, out.stderr[-2000:]
        with Image.open(tmp_path / f"{kind}.png") as im:
            assert im.format == "PNG" and im.size == size
    # the rollout of the checkpoint's weights (not of a random model) on the loaded crop
    model = keras_vitnt.create_model("deit_tiny_distilled_patch16_224", weights=str(ckpt))
    crop = load_image(img, size=224)
    vz.overlay(crop, vz.attention_rollout(model, crop), tmp_path / "expected.png", title="attention rollout")
    assert_same_picture(png_pixels(tmp_path / "rollout.png"), png_pixels(tmp_path / "expected.png"))


def tiny_tnt():
    """A 4 x 4 grid of 8-pixel patches with 4 x 4 words; the inner attention sharpened (q.k
    scaled) so that its map has structure (at random init it is uniform within 1%)."""
    model = keras_vitnt.TNT("S", weights=None, input_shape=(32, 32, 3), classes=10, patch_size=8, first_stride=2,
                            depth=1, embed_dim=48, inner_dim=12, num_heads_inner=2, num_heads_outer=3)
    qk = model.get_layer("blocks_0").attn_in.qk
    qk.kernel.assign(np.asarray(qk.kernel) * 50)
    return model


def tiny_vit():
    return keras_vitnt.ViT("Ti/4", weights=None, input_shape=(16, 16, 3), classes=10, depth=2, embed_dim=48,
                           num_heads=3)


def test_visualize_cli_tnt_inner_map(tmp_path, capsys):
    from test_cli import main_here

    model = tiny_tnt()
    model.save(tmp_path / "tnt.keras")
    img = write_image(tmp_path / "img.png", (40, 40))
    out = main_here(capsys, "visualize", img, "--model", str(tmp_path / "tnt.keras"), "--kind", "tnt-inner",
                    "--block", "0",
                    "--out", str(tmp_path / "inner.png"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "wrote" in out.stdout
    with Image.open(tmp_path / "inner.png") as im:
        im.verify()
    png = png_pixels(tmp_path / "inner.png")
    assert png.shape == (OVERLAY_PNG[1], OVERLAY_PNG[0], 3)
    # what the command drew is TNT's inner map of this image (computed here), and that map has structure
    crop = load_image(img, size=32)
    heat = vz.tnt_inner_maps(model, crop, block=0)
    assert heat.shape == (32, 32) and heat.std() > 0.1, heat.std()
    vz.overlay(crop, heat, tmp_path / "expected.png", title="TNT inner attention")
    vz.overlay(crop, np.full_like(heat, heat.mean()), tmp_path / "flat.png", title="TNT inner attention")
    assert_same_picture(png, png_pixels(tmp_path / "expected.png"))
    assert np.abs(png - png_pixels(tmp_path / "flat.png")).mean() > 1.0


def test_visualize_cli_features_and_an_existing_out_file(tmp_path, capsys):
    from test_cli import main_here

    model = tiny_vit()
    model.save(tmp_path / "vit.keras")
    img = write_image(tmp_path / "img.png", (20, 24))
    users = tmp_path / "attention.png"
    users.write_bytes(b"the user's own picture")
    args = ["visualize", img, "--model", str(tmp_path / "vit.keras"), "--kind", "features", "--out", str(users)]
    refused = main_here(capsys, *args)
    assert refused.returncode == 1 and "already exists" in refused.stderr and "--overwrite" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert users.read_bytes() == b"the user's own picture"
    assert sorted(os.listdir(tmp_path)) == ["attention.png", "img.png", "vit.keras"]

    out = main_here(capsys, *args, "--overwrite")
    assert out.returncode == 0, out.stderr[-2000:]
    png = png_pixels(users)
    assert png.shape == (OVERLAY_PNG[1], OVERLAY_PNG[0], 3)
    assert sorted(os.listdir(tmp_path)) == ["attention.png", "img.png", "vit.keras"]  # replaced in place
    crop = load_image(img, size=16)
    (block, tokens), = vz.feature_maps(model, crop, blocks=[-1]).items()
    assert block == 1 and tokens.shape == (4, 4, 48)
    heat = vz.upsample(vz.feature_map_image(tokens), (16, 16))
    assert heat.std() > 0.1, heat.std()
    vz.overlay(crop, heat, tmp_path / "expected.png", title="features, block 1 (PC 1)")
    assert_same_picture(png, png_pixels(tmp_path / "expected.png"))


def test_pca_rgb_puts_the_main_directions_of_the_features_in_red_green_blue():
    rng = np.random.default_rng(0)
    gh, gw, d = 6, 8, 32
    left = (np.arange(gw) < gw // 2)[None, :, None]  # the first direction: left half vs right half
    top = (np.arange(gh) < gh // 2)[:, None, None]  # the second, weaker: top vs bottom
    a, b = rng.standard_normal(d), rng.standard_normal(d)
    feats = 10 * left * a + 3 * top * b + 0.01 * rng.standard_normal((gh, gw, d))
    rgb = vz.pca_rgb(feats)
    assert rgb.shape == (gh, gw, 3) and rgb.min() >= 0 and rgb.max() <= 1
    red = rgb[..., 0]
    assert np.ptp(red[:, : gw // 2]) < 0.1 and abs(red[:, :4].mean() - red[:, 4:].mean()) > 0.9
    green = rgb[..., 1]
    assert abs(green[:3].mean() - green[3:].mean()) > 0.9


def test_pca_maps_of_one_dynamic_model_at_two_sizes_and_the_cli(tmp_path, capsys):
    from test_cli import main_here

    model = keras_vitnt.ViT("Ti/4", weights=None, input_shape=(None, None, 3), include_top=False, depth=2,
                            embed_dim=48, num_heads=3)
    image = np.asarray(photo_crops(1, 32)[0])
    maps = vz.pca_maps(model, image, [(16, 16), (32, 24)])
    assert [rgb.shape for rgb, _ in maps.values()] == [(4, 4, 3), (8, 6, 3)]
    fixed = keras_vitnt.ViT("Ti/4", weights=None, input_shape=(16, 16, 3), include_top=False, depth=2, embed_dim=48,
                            num_heads=3)
    with pytest.raises(ValueError, match="input_shape=\\(None, None, 3\\)"):
        vz.pca_maps(fixed, image, [(32, 32)])
    model.save(tmp_path / "dyn.keras")
    img = write_image(tmp_path / "img.png", (40, 36))
    out = main_here(capsys, "visualize", str(tmp_path / "dyn.keras"), img, "--kind", "pca",
                    "--out", str(tmp_path / "pca.png"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert png_pixels(tmp_path / "pca.png").shape[2] == 3
