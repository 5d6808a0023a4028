"""Original Google ViT `.npz` checkpoints: our reader against timm's own `.npz` loader
(`vision_transformer._load_weights`) on the same file, at the native and another size."""

import numpy as np
import pytest

import keras_vitnt
from timm_oracle import normalised_images, perturbed_timm_model, relative_error, timm_logits


def write_google_npz(tm, path, layout="vit_jax"):
    """A timm ViT's weights in Google's layout (vit_jax per-block keys, or big_vision's
    `params/` prefix with scanned, stacked blocks)."""
    sd = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    d = sd["cls_token"].shape[-1]
    heads = tm.blocks[0].attn.num_heads
    big = layout == "big_vision"
    p = "params/" if big else ""
    mha, mlp, ln2 = (0, 0, 1) if big else (1, 3, 2)
    out = {
        p + "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        p + "embedding/bias": sd["patch_embed.proj.bias"],
        p + "cls": sd["cls_token"],
        p + ("pos_embedding" if big else "Transformer/posembed_input/pos_embedding"): sd["pos_embed"],
        p + "Transformer/encoder_norm/scale": sd["norm.weight"],
        p + "Transformer/encoder_norm/bias": sd["norm.bias"],
        p + "head/kernel": sd["head.weight"].T,
        p + "head/bias": sd["head.bias"],
    }
    blocks = []
    for i in range(len(tm.blocks)):
        b = f"blocks.{i}."
        q, k, v = np.split(sd[b + "attn.qkv.weight"], 3)
        qb, kb, vb = np.split(sd[b + "attn.qkv.bias"], 3)
        m = f"MultiHeadDotProductAttention_{mha}/"
        blk = {
            "LayerNorm_0/scale": sd[b + "norm1.weight"], "LayerNorm_0/bias": sd[b + "norm1.bias"],
            f"LayerNorm_{ln2}/scale": sd[b + "norm2.weight"], f"LayerNorm_{ln2}/bias": sd[b + "norm2.bias"],
            m + "out/kernel": sd[b + "attn.proj.weight"].T.reshape(heads, d // heads, d),
            m + "out/bias": sd[b + "attn.proj.bias"],
        }
        for n, w_, b_ in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
            blk[m + f"{n}/kernel"] = w_.T.reshape(d, heads, d // heads)
            blk[m + f"{n}/bias"] = b_.reshape(heads, d // heads)
        for r in range(2):
            blk[f"MlpBlock_{mlp}/Dense_{r}/kernel"] = sd[b + f"mlp.fc{r + 1}.weight"].T
            blk[f"MlpBlock_{mlp}/Dense_{r}/bias"] = sd[b + f"mlp.fc{r + 1}.bias"]
        blocks.append(blk)
    if big:
        for key in blocks[0]:
            out[p + "Transformer/encoderblock/" + key] = np.stack([blk[key] for blk in blocks])
    else:
        for i, blk in enumerate(blocks):
            out.update({f"Transformer/encoderblock_{i}/{key}": val for key, val in blk.items()})
    np.savez(path, **out)
    return path


def timm_from_npz(path, **kw):
    import timm
    from timm.models.vision_transformer import _load_weights

    tm = timm.create_model("vit_tiny_patch16_224", num_classes=10, depth=3, **kw).eval()
    _load_weights(tm, str(path))
    return tm


@pytest.mark.parametrize("layout", ["vit_jax", "big_vision"])
@pytest.mark.parametrize("size", [224, 288])
def test_google_npz_matches_timms_npz_loader(layout, size, tmp_path):
    src = perturbed_timm_model("vit_tiny_patch16_224", num_classes=10, depth=3)
    path = write_google_npz(src, tmp_path / "ViT-Ti_16.npz", layout)
    tm = timm_from_npz(path, img_size=size)
    model = keras_vitnt.ViT("Ti/16", weights=str(path), input_shape=(size, size, 3), classes=10, depth=3,
                            include_preprocessing=False, classifier_activation=None)
    x = normalised_images(2, size, size)
    err = relative_error(np.asarray(model.predict_on_batch(x)), timm_logits(tm, x))
    print(f"npz {layout} at {size}: {err:.2e}")
    assert err <= 1e-4
    if size == 224:  # the file is the source model itself
        assert relative_error(timm_logits(src, x), timm_logits(tm, x)) <= 1e-5


def test_npz_with_tensors_a_plain_vit_lacks_is_an_error(tmp_path):
    src = perturbed_timm_model("vit_tiny_patch16_224", num_classes=10, depth=1)
    path = write_google_npz(src, tmp_path / "with_pre_logits.npz")
    data = dict(np.load(path))
    data["pre_logits/kernel"] = np.zeros((192, 192), "float32")
    np.savez(path, **data)
    with pytest.raises(keras_vitnt.CheckpointMismatchError, match="pre_logits/kernel"):
        keras_vitnt.ViT("Ti/16", weights=str(path), classes=10, depth=1)


def test_npz_that_is_not_a_vit(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(ValueError, match="not a Google ViT checkpoint"):
        keras_vitnt.ViT("Ti/16", weights=str(path), depth=1)
    with pytest.raises(ValueError, match="ViT only"):
        keras_vitnt.TNT("S", weights=str(path), depth=1)
