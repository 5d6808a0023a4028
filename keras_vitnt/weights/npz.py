"""Original Google ViT checkpoints (`.npz` from vit_jax / big_vision) as timm state dicts.

Mirrors timm's `vision_transformer._load_weights` for plain ViTs: the vit_jax layout
(`Transformer/encoderblock_{i}/...`) and the big_vision one (`params/` prefix,
`pos_embedding`, blocks optionally stacked under `Transformer/encoderblock/`). The result
goes through the same loader as every other checkpoint; a position table for another grid
is resampled bilinearly (no antialias), as timm does for `.npz` files.
"""

import numpy as np

from keras_vitnt.weights.errors import CheckpointMismatchError

PREFIXES = ("", "opt/target/", "params/", "params/img/")


def _t(w):
    """Flax kernel -> torch layout (timm's `_n2p`)."""
    if w.ndim == 4:
        return w.transpose(3, 2, 0, 1)
    if w.ndim == 3:
        return w.transpose(2, 0, 1)
    if w.ndim == 2:
        return w.T
    return w


def is_google_npz(keys):
    return any(f"{p}embedding/kernel" in keys for p in PREFIXES)


def npz_to_timm(w, source="<npz>"):
    """{flax path: array} -> {timm key: array} (torch layout)."""
    keys = set(w)
    prefix = next((p for p in PREFIXES[1:] if f"{p}embedding/kernel" in keys), "")
    if f"{prefix}embedding/kernel" not in keys:
        raise ValueError(f"{source} is not a Google ViT .npz checkpoint (no 'embedding/kernel')")
    big_vision = prefix.startswith("params/") or f"{prefix}pos_embedding" in keys or (
        f"{prefix}Transformer/encoderblock/LayerNorm_0/scale" in keys)
    stacked = f"{prefix}Transformer/encoderblock/LayerNorm_0/scale" in keys
    mha, mlp, ln2 = (0, 0, 1) if big_vision else (1, 3, 2)
    used = set()

    def get(name, idx=None):
        if prefix + name not in keys:
            raise CheckpointMismatchError(
                f"{source} has no array {prefix + name!r}: it is not a plain ViT checkpoint in the vit_jax or "
                "big_vision layout (hybrid, Mixer and other variants do not load from .npz), or it is incomplete."
            )
        used.add(prefix + name)
        a = np.asarray(w[prefix + name])
        return a[idx] if idx is not None else a

    sd = {
        "patch_embed.proj.weight": _t(get("embedding/kernel")),
        "patch_embed.proj.bias": get("embedding/bias"),
        "norm.weight": get("Transformer/encoder_norm/scale"),
        "norm.bias": get("Transformer/encoder_norm/bias"),
        "pos_embed": get("pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding"),
    }
    if f"{prefix}cls" in keys:
        sd["cls_token"] = get("cls")
    if f"{prefix}head/kernel" in keys and np.asarray(w[f"{prefix}head/kernel"]).size:
        sd["head.weight"] = _t(get("head/kernel"))
        sd["head.bias"] = get("head/bias")
    else:
        used.update(k for k in (f"{prefix}head/kernel", f"{prefix}head/bias") if k in keys)

    if stacked:
        depth = np.asarray(w[f"{prefix}Transformer/encoderblock/LayerNorm_0/scale"]).shape[0]
    else:
        depth = 0
        while f"{prefix}Transformer/encoderblock_{depth}/LayerNorm_0/scale" in keys:
            depth += 1
    for i in range(depth):
        bp, idx = ("Transformer/encoderblock/", i) if stacked else (f"Transformer/encoderblock_{i}/", None)
        mp = f"{bp}MultiHeadDotProductAttention_{mha}/"
        t = f"blocks.{i}."
        sd[t + "norm1.weight"] = get(f"{bp}LayerNorm_0/scale", idx)
        sd[t + "norm1.bias"] = get(f"{bp}LayerNorm_0/bias", idx)
        sd[t + "attn.qkv.weight"] = np.concatenate(
            [get(f"{mp}{n}/kernel", idx).reshape(get(f"{mp}{n}/kernel", idx).shape[0], -1).T
             for n in ("query", "key", "value")])
        sd[t + "attn.qkv.bias"] = np.concatenate([get(f"{mp}{n}/bias", idx).reshape(-1) for n in ("query", "key", "value")])
        out = _t(get(f"{mp}out/kernel", idx))
        sd[t + "attn.proj.weight"] = out.reshape(out.shape[0], -1)
        sd[t + "attn.proj.bias"] = get(f"{mp}out/bias", idx)
        sd[t + "norm2.weight"] = get(f"{bp}LayerNorm_{ln2}/scale", idx)
        sd[t + "norm2.bias"] = get(f"{bp}LayerNorm_{ln2}/bias", idx)
        for r in range(2):
            sd[t + f"mlp.fc{r + 1}.weight"] = _t(get(f"{bp}MlpBlock_{mlp}/Dense_{r}/kernel", idx))
            sd[t + f"mlp.fc{r + 1}.bias"] = get(f"{bp}MlpBlock_{mlp}/Dense_{r}/bias", idx)

    # tensors of the file that a plain ViT has no place for (pre_logits, MAP head, ...):
    # keep them under their own names so the loader reports them as unexpected
    for k in keys - used:
        if not k.startswith(prefix) or k[len(prefix):].startswith(("opt/", "optimizer")):
            continue
        sd["npz:" + k] = np.asarray(w[k])
    return {k: np.asarray(v, dtype="float32") if np.asarray(v).dtype.kind == "f" else np.asarray(v)
            for k, v in sd.items()}
