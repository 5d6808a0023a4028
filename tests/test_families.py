"""The newer VisionTransformer options end to end: a DINOv2-with-registers model (LayerScale,
4 register tokens, a position table without prefix rows) and a SigLIP tower (attention pooling):
save/load, LiteRT, attention maps, pooled features."""

import keras
import numpy as np

import keras_vitnt
from keras_vitnt import visualize as vz
from keras_vitnt.data.samples import photo_crops
from timm_oracle import perturbed_timm_model, save_checkpoint


def test_dinov2_with_registers_round_trips_exports_and_rolls_out_over_patches_only(tmp_path):
    name = "vit_small_patch14_reg4_dinov2"
    ckpt = save_checkpoint(perturbed_timm_model(name, num_classes=10, depth=1, img_size=56), tmp_path / "d.safetensors")
    model = keras_vitnt.create_model(name, weights=str(ckpt), depth=1, input_shape=(56, 56, 3))
    x = photo_crops(2, 56)
    y = np.asarray(model.predict_on_batch(x))
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(np.asarray(again.predict_on_batch(x)), y, rtol=1e-5, atol=1e-6)

    report = keras_vitnt.export(model, str(tmp_path / "m.tflite"), sample_data=x)  # raises above 1e-4
    assert report["max_relative_error"] <= 1e-4 and report["top1_agreement"] == 1.0

    prefix, grid, _ = vz._structure(model)
    assert prefix == 5 and grid == (4, 4)  # class token + 4 registers before the 16 patches
    att = vz.attention_maps(model, x[:1])[0, -1].mean(0)  # (T, T), T = 21
    assert att.shape == (21, 21)
    heat = vz.attention_rollout(model, x[0])
    # one block: the rollout is 0.5 * attention + 0.5 * identity, read on the patch columns only
    expected = (0.5 * att + 0.5 * np.eye(21))[0, prefix:].reshape(4, 4)
    expected = vz._normalise(vz.upsample(expected / (0.5 * att + 0.5 * np.eye(21)).sum(1)[0], (56, 56)))
    np.testing.assert_allclose(heat, expected, atol=1e-5)


def test_siglip_attention_pool_matches_timm_pre_logits_round_trips_and_exports(tmp_path):
    """global_pool="map" (timm's AttentionPoolLatent): the pooled features equal timm's
    forward_head(pre_logits=True); the model saves, loads and exports to LiteRT."""
    import torch

    from timm_oracle import relative_error

    name = "vit_base_patch16_siglip_224"
    tm = perturbed_timm_model(name, num_classes=10, depth=1, img_size=64)
    ckpt = save_checkpoint(tm, tmp_path / "s.safetensors")
    x = photo_crops(2, 64)
    features = keras_vitnt.create_model(name, weights=str(ckpt), depth=1, input_shape=(64, 64, 3), include_top=False,
                                        pooling="map", include_preprocessing=False)
    with torch.no_grad():
        ref = tm.forward_head(tm.forward_features(torch.from_numpy(x).permute(0, 3, 1, 2)), pre_logits=True).numpy()
    assert relative_error(np.asarray(features.predict_on_batch(x)), ref) <= 1e-5
    model = keras_vitnt.create_model(name, weights=str(ckpt), depth=1, input_shape=(64, 64, 3))
    y = np.asarray(model.predict_on_batch(x))
    model.save(tmp_path / "m.keras")
    np.testing.assert_allclose(np.asarray(keras.models.load_model(tmp_path / "m.keras").predict_on_batch(x)), y,
                               rtol=1e-5, atol=1e-6)
    report = keras_vitnt.export(model, str(tmp_path / "m.tflite"), sample_data=x)
    assert report["max_relative_error"] <= 1e-4


# timm's other block kinds and norms, as tiny models of the registered architectures (real options,
# small widths): name -> what it brings
BLOCK_KINDS = {
    "aimv2_large_patch14_224": "SwiGLU, RmsNorm, a norm in the patch embedding, no proj bias",
    "vit_base_patch16_xp_224": "ParallelScalingBlock with qk_norm and RmsNorm",
    "vit_small_patch16_18x2_224": "ParallelThingsBlock (branches in lists)",
    "vit_base_patch16_rpn_224": "ResPostBlock",
    "vit_dpwee_patch16_reg1_gap_256": "DiffParallelScalingBlock (differential attention)",
    "vit_dwee_patch16_reg1_gap_256": "DiffAttention in a Block",
    "beit3_base_patch16_224": "scale_attn_norm, scale_mlp_norm",
}


def _tiny(name):
    """The architecture at 32x32, width 64, 2 blocks, every weight moved off its init (so a
    LayerScale of 1e-5 or a near-zero gate cannot hide a block that was not restored)."""
    model = keras_vitnt.create_model(name, weights=None, depth=2, embed_dim=64, num_heads=4, patch_size=8,
                                     input_shape=(32, 32, 3), classes=5, classifier_activation=None)
    rng = np.random.default_rng(0)
    for w in model.weights:
        w.assign(np.asarray(w) + rng.normal(0.0, 0.1, w.shape).astype(w.dtype))
    return model


def test_every_block_kind_saves_and_loads_in_a_new_process_and_keeps_rank_4(tmp_path, fast_quantize):
    """Each block kind and norm: a .keras file (two of them saved under mixed_bfloat16, the others
    also as int8 copies made by `model.quantize`) loads in a fresh process with plain Keras after
    `import keras_vitnt` and gives the same outputs; the
    inference graph has no tensor of rank > 4; attention maps come out of every block kind."""
    bf16 = ("vit_small_patch16_18x2_224", "aimv2_large_patch14_224")
    import subprocess
    import sys

    from keras_vitnt.precision import dtype_policy
    from test_models import max_graph_rank

    x = photo_crops(2, 32)
    expected = {}
    for name in BLOCK_KINDS:
        with dtype_policy("mixed_bfloat16" if name in bf16 else "float32"):
            model = _tiny(name)
        expected[name] = np.asarray(model.predict_on_batch(x), "float32")
        model.save(tmp_path / f"{name}.keras")
        if name not in bf16:  # an int8 copy (model.quantize), whose quantized sub-layers must come back int8
            q = keras.models.clone_model(model)
            q.set_weights(model.get_weights())
            q.quantize("int8")
            expected[name + "_int8"] = np.asarray(q.predict_on_batch(x), "float32")
            q.save(tmp_path / f"{name}_int8.keras")
        op, rank = max_graph_rank(model, (32, 32, 3))
        assert rank <= 4, f"{name}: {op} has rank {rank}"
        maps = vz.attention_maps(model, x[:1])
        assert maps.shape[:3] == (1, 2, 4) and np.all(np.isfinite(maps)), name
    np.savez(tmp_path / "io.npz", x=x, **expected)
    code = f"""
import sys, numpy as np, keras, keras_vitnt
io = np.load({str(tmp_path / "io.npz")!r})
for name in {list(expected)!r}:
    model = keras.models.load_model({str(tmp_path)!r} + "/" + name + ".keras")
    dense = [l for l in model._flatten_layers(include_self=False) if isinstance(l, keras.layers.Dense)]
    assert all((l.quantization_mode == "int8") == name.endswith("_int8") for l in dense), name
    # nested layers (lists of branches too) keep the saved policy in a float32 process
    policies = {{layer.dtype_policy.name for block in model.layers if block.name.startswith("blocks_")
                for layer in block._flatten_layers()}}
    assert len(policies) == 1 or name not in {bf16!r}, (name, policies)
    got = np.asarray(model.predict_on_batch(io["x"]), "float32")
    err = float(np.max(np.abs(got - io[name])) / np.max(np.abs(io[name])))
    print(name, err)
    assert err <= 1e-5, (name, err)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert len(out.stdout.splitlines()) == len(expected) > len(BLOCK_KINDS)


def test_aimv2_swiglu_rmsnorm_exports_to_litert(tmp_path):
    model = _tiny("aimv2_large_patch14_224")
    report = keras_vitnt.export(model, str(tmp_path / "m.tflite"), sample_data=photo_crops(2, 32))
    assert report["max_relative_error"] <= 1e-4 and report["top1_agreement"] == 1.0
