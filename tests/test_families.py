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
