"""Regenerates keras_vitnt/models/tags.py from timm itself: every architecture timm builds with
its `VisionTransformer` (vision_transformer.py, deit.py) and `TNT` classes, with the keywords its
constructor gets (read by intercepting timm's model factories, so nothing is built), and the
pretrained tags of each from timm's pretrained configs.

Developer tool (needs timm installed); the library never imports timm at run time.
    .venv/bin/python scripts/gen_tags.py
"""

import functools
import pathlib
import pprint

import timm
import timm.models.deit as deit
import timm.models.tnt as tnt
import timm.models.vision_transformer as vt
from timm.models import get_pretrained_cfg
from timm.models._registry import _model_default_cfgs
from timm_results import top1_table

NORMS = {
    (0.5, 0.5, 0.5): "INCEPTION",
    (0.485, 0.456, 0.406): "IMAGENET",
    (0.48145466, 0.4578275, 0.40821073): "CLIP",
    (0.0, 0.0, 0.0): "NONE",
}
# timm keyword -> the config field of the same meaning (same name unless listed)
VIT_KEYS = {"embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio", "qkv_bias", "class_token", "reg_tokens",
            "no_embed_class", "init_values", "pre_norm", "fc_norm", "final_norm", "global_pool", "distilled",
            "img_size", "act_layer", "qk_norm", "proj_bias", "scale_attn_norm", "scale_mlp_norm",
            "pool_include_prefix"}
TNT_KEYS = {"embed_dim", "inner_dim", "depth", "num_heads_inner", "num_heads_outer", "patch_size", "mlp_ratio",
            "qkv_bias", "first_stride", "legacy", "img_size"}
IGNORED = {"pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "dynamic_img_size"}  # same numbers at a fixed size
SUPPORTED_POOLS = ("token", "avg", "avgmax", "max", "map")
SUPPORTED_BLOCKS = ("Block", "ResPostBlock", "ParallelScalingBlock", "ParallelThingsBlock", "DiffParallelScalingBlock")
SUPPORTED_ACTS = ("gelu", "gelu_tanh", "quick_gelu", "silu")
ACT_CLASSES = {"SiLU": "silu", "GELU": "gelu"}  # act_layer given as a torch class


class _Captured(Exception):
    pass


def constructor_kwargs():
    """{model name: (family, the keywords timm's entrypoint passes to the model class)}."""
    captured = {}

    def capture(family, variant, pretrained=False, **kwargs):
        captured[variant] = (family, kwargs)
        raise _Captured

    vt._create_vision_transformer = functools.partial(capture, "vit")
    deit._create_deit = functools.partial(capture, "vit")
    tnt._create_tnt = functools.partial(capture, "tnt")
    names = [n for module in ("vision_transformer", "deit", "tnt") for n in timm.list_models(module=module)]
    for name in names:
        try:
            timm.create_model(name)
        except _Captured:
            pass
    return {n: captured[n] for n in names}


def _norm(norm_layer):
    """(kind, eps) of a timm norm_layer argument: kind "layernorm" or "rmsnorm"; None if neither."""
    if norm_layer is None:
        return "layernorm", 1e-6  # VisionTransformer's default: timm's LayerNorm, eps 1e-6
    func = norm_layer.func if isinstance(norm_layer, functools.partial) else norm_layer
    name = func if isinstance(func, str) else getattr(func, "__name__", "")
    kind = {"layernorm": "layernorm", "rmsnorm": "rmsnorm"}.get(name.replace("_", "").lower())
    if kind is None:
        return None
    # torch's nn.LayerNorm defaults to 1e-5, timm's LayerNorm and RmsNorm to 1e-6
    default = 1e-5 if getattr(func, "__module__", "").startswith("torch") else 1e-6
    return kind, norm_layer.keywords.get("eps", default) if isinstance(norm_layer, functools.partial) else default


def _shown(value):
    return getattr(value, "__name__", None) or getattr(getattr(value, "func", None), "__name__", None) or value


def config_kwargs(name, family, kwargs):
    """-> (our config's keywords, None) or (None, why it is not supported)."""
    cfg = get_pretrained_cfg(name).to_dict() if name in _model_default_cfgs else {}
    out, problems = {}, []
    keys = VIT_KEYS if family == "vit" else TNT_KEYS
    for key, value in kwargs.items():
        if key in IGNORED:
            continue
        if key == "embed_norm_layer" and value is None:
            continue  # no norm in the patch embedding (None means the default LayerNorm only for norm_layer)
        if key in ("norm_layer", "embed_norm_layer") and family == "vit":
            norm = _norm(value)
            if norm is None:
                problems.append(f"{key}={_shown(value)}")
            elif key == "norm_layer":
                out["norm_layer"], out["norm_eps"] = norm
            else:
                out["embed_norm_layer"], embed_eps = norm
        elif key == "attn_layer" and value in ("", "attn", "diff"):
            out["attn_layer"] = value or "attn"
        elif key == "block_fn":
            block = value if isinstance(value, str) else value.__name__
            if block in SUPPORTED_BLOCKS:
                out["block_fn"] = block
            else:
                problems.append(f"block_fn={block}")
        elif key == "act_layer":
            name = value if isinstance(value, str) else ACT_CLASSES.get(getattr(value, "__name__", ""))
            if name in SUPPORTED_ACTS:
                out["act_layer"] = name
            else:
                problems.append(f"act_layer={_shown(value)}")
        elif key == "mlp_layer":
            glu = isinstance(value, functools.partial) and value.func.__name__ == "GluMlp"
            if glu and value.keywords.get("gate_last") is False and _shown(value.keywords.get("act_layer")) == "SiLU":
                out["mlp_layer"] = "glu"  # SwiGLUPacked; the block's act_layer (SiLU) is the gate's
            elif getattr(value, "__name__", "") == "SwiGLU" or value == "SwiGLU":
                out["mlp_layer"] = "swiglu"  # its activation is the block's act_layer (AIMv2: silu)
            else:
                problems.append(f"mlp_layer={_shown(value)}")
        elif key == "global_pool" and value not in SUPPORTED_POOLS:
            problems.append(f"global_pool={value!r}")
        elif key in keys:
            out[key] = value
        else:
            problems.append(f"{key}={_shown(value)}")
    if "img_size" not in out:
        h, w = (cfg.get("input_size") or (3, 224, 224))[1:]
        out["img_size"] = h if h == w else (h, w)
    if "embed_norm_layer" in out and (out.get("norm_layer", "layernorm"), out.get("norm_eps", 1e-6)) != (
            out["embed_norm_layer"], embed_eps):
        problems.append("embed_norm_layer differs from norm_layer")  # the config has one eps for both
    size, patch = out["img_size"], out.get("patch_size", 16)
    if any(s % patch for s in ((size, size) if isinstance(size, int) else size)):
        if family == "vit":
            out["drop_remainder"] = True  # timm's patch conv drops the last pixels (so400m/14 at 384)
        else:
            problems.append(f"img_size {size} not divisible by patch_size {patch}")
    if problems:
        return None, ", ".join(sorted(problems))
    return out, None


def tag_rows(name):
    rows = []
    for tag in _model_default_cfgs[name].tags:  # timm's own order: the first tag is the default one
        full = f"{name}.{tag}"
        cfg = get_pretrained_cfg(full).to_dict()
        if cfg.get("hf_hub_id") != "timm/" + full or cfg.get("hf_hub_filename"):
            continue  # no weights on the hub, or not timm's model.safetensors (e.g. an open_clip file)
        _, h, w = cfg["input_size"]
        rows.append((tag, cfg["num_classes"], h if h == w else (h, w), NORMS[tuple(cfg["mean"])], cfg["crop_pct"],
                     cfg["interpolation"]))
    return rows


def main():
    archs, tags, unsupported = {}, {}, {}
    results = top1_table()
    for name, (family, kwargs) in constructor_kwargs().items():
        config, why = config_kwargs(name, family, kwargs)
        if why:
            unsupported[name] = why
            continue
        archs[name] = (family, config)
        tags[name] = tag_rows(name)
    top1 = {key: value for key, value in results.items()
            if any(f"{name}.{row[0]}" == key for name, rows in tags.items() for row in rows)}
    text = (
        '"""Every registered model, generated by scripts/gen_tags.py from timm itself. Do not edit by hand.\n\n'
        "ARCHS[model] = (family, config keywords): the keywords timm's entrypoint passes to its model\n"
        "class, in the config's names (norm_layer read as norm_eps).\n"
        "TAGS[model] = [(tag, num_classes, input_size, norm, crop_pct, interpolation), ...], the default tag\n"
        "first; norm names a (mean, std) pair in keras_vitnt.models.config.NORMS.\n"
        "UNSUPPORTED[model] = the options of timm models not registered yet.\n"
        "TOP1[model.tag] = ImageNet-1k top-1 from timm's results table (scripts/timm_results_imagenet.csv).\n"
        '"""\n\n'
        f"ARCHS = {pprint.pformat(archs, width=120, sort_dicts=True)}\n\n"
        f"TAGS = {pprint.pformat(tags, width=120, sort_dicts=True)}\n\n"
        f"UNSUPPORTED = {pprint.pformat(unsupported, width=120, sort_dicts=True)}\n\n"
        f"TOP1 = {pprint.pformat(top1, width=120, sort_dicts=True)}\n"
    )
    out = pathlib.Path(__file__).resolve().parents[1] / "keras_vitnt" / "models" / "tags.py"
    out.write_text(text)
    print(f"wrote {out}: {len(archs)} models registered, {len(unsupported)} not yet supported")


if __name__ == "__main__":
    main()
