"""Loading a checkpoint at another input size resamples the position embedding with
timm's numbers: the logits equal timm's model created with `img_size=` from the same file."""

import numpy as np
import pytest

import keras_vitnt
from keras_vitnt.weights.resample import aa_bicubic_matrix, resample_abs_pos_embed
from timm_oracle import normalised_images, perturbed_timm_model, relative_error, save_checkpoint, timm_logits


@pytest.mark.parametrize("old,new,prefix", [(14, (18, 18), 1), (14, (10, 10), 2), (24, (7, 13), 1), (14, (14, 20), 0)])
def test_resample_function_equals_timm(old, new, prefix):
    import torch
    from timm.layers import resample_abs_pos_embed as timm_resample

    pe = np.random.default_rng(0).standard_normal((1, prefix + old * old, 16)).astype("float32")
    ref = timm_resample(torch.from_numpy(pe), new_size=list(new), num_prefix_tokens=prefix).numpy()
    out = resample_abs_pos_embed(pe, new, num_prefix_tokens=prefix)
    assert out.shape == ref.shape
    assert relative_error(out, ref) <= 1e-5


def test_interpolation_rows_sum_to_one():
    for a, b in [(14, 18), (14, 7), (5, 5)]:
        np.testing.assert_allclose(aa_bicubic_matrix(a, b).sum(1), 1.0)


@pytest.mark.parametrize("name,size,kw", [
    ("vit_tiny_patch16_224", (288, 288), {}),
    ("deit_tiny_distilled_patch16_224", (160, 160), {}),
    ("tnt_s_patch16_224", (256, 256), {}),
    ("vit_tiny_patch16_224", (160, 256), {}),
    # no_embed_class + 4 registers (the table has no prefix rows), from 518x518 to a non-square size
    ("vit_small_patch14_reg4_dinov2", (224, 168), {"depth": 2}),
])
def test_loading_at_another_size_matches_timm(name, size, kw, tmp_path):
    import timm

    src = perturbed_timm_model(name, num_classes=1000, **kw)
    path = save_checkpoint(src, tmp_path / f"{name}.safetensors")
    img_size = size if size[0] != size[1] else size[0]
    if src.pretrained_cfg["num_classes"] == 0:
        # timm's pretrained path drops the head of a model whose default tag is headless (DINOv2): the
        # state dict goes through timm's own checkpoint_filter_fn (the resampling) and is loaded whole
        from timm.models.vision_transformer import checkpoint_filter_fn

        tm = timm.create_model(name, img_size=img_size, num_classes=1000, **kw).eval()
        tm.load_state_dict(checkpoint_filter_fn(src.state_dict(), tm))
    else:
        tm = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                               img_size=img_size, num_classes=1000, **kw).eval()
    x = normalised_images(2, *size)
    model = keras_vitnt.create_model(name, weights=str(path), input_shape=size + (3,),
                                     include_preprocessing=False, classifier_activation=None, **kw)
    err = relative_error(np.asarray(model.predict_on_batch(x)), timm_logits(tm, x))
    print(f"{name} at {size}: relative max error {err:.2e}")
    assert err <= 1e-4
