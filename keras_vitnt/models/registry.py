"""The one table of registered models, keyed by timm names.

Each entry holds the architecture config (`config.py`, with the keywords timm's entrypoint
passes to its model class) and the pretrained tags, both generated from timm (`tags.py`).
Everything else, the constructors, `list_models()`, the CLI and the parameter counts, reads
from here. The one naming rule of
the CLI and `create_model` (`parse_model_name`) lives here too.
"""

import dataclasses
import difflib
import fnmatch
import re

from keras_vitnt.models.config import CONFIGS, NORMS, ArchConfig, TNTConfig, ViTConfig
from keras_vitnt.models.tags import ARCHS, TAGS, TOP1  # TOP1: timm's results table


# ViT size letter -> (timm size word, widths); MLP ratio 4 for all.
VIT_SIZES = {
    "Ti": ("tiny", dict(embed_dim=192, depth=12, num_heads=3)),
    "S": ("small", dict(embed_dim=384, depth=12, num_heads=6)),
    "B": ("base", dict(embed_dim=768, depth=12, num_heads=12)),
    "L": ("large", dict(embed_dim=1024, depth=24, num_heads=16)),
    "H": ("huge", dict(embed_dim=1280, depth=32, num_heads=16)),
}
# TNT variant -> (timm name stem, widths)
TNT_SIZES = {
    "S": ("tnt_s", dict(embed_dim=384, inner_dim=24, num_heads_outer=6)),
    "B": ("tnt_b", dict(embed_dim=640, inner_dim=40, num_heads_outer=10)),
    "S-legacy": ("tnt_s_legacy", dict(embed_dim=384, inner_dim=24, num_heads_outer=6, legacy=True)),
}


@dataclasses.dataclass(frozen=True)
class Tag:
    """One pretrained checkpoint: `timm/<model>.<tag>` on the hub."""

    model: str
    tag: str
    num_classes: int
    input_size: int
    mean: tuple
    std: tuple
    crop_pct: float
    interpolation: str = "bicubic"

    @property
    def hub_id(self):
        return f"timm/{self.model}.{self.tag}"

    @property
    def top1(self):
        return TOP1.get(f"{self.model}.{self.tag}")


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """A registered timm model: its architecture config and its pretrained tags (default first)."""

    name: str
    config: ArchConfig
    tags: tuple

    @property
    def family(self):
        return self.config.family

    @property
    def default_tag(self):
        return self.tags[0] if self.tags else None

    def get_tag(self, tag):
        for t in self.tags:
            if t.tag == tag:
                return t
        known = ", ".join(t.tag for t in self.tags) or "none"
        raise ValueError(f"{self.name} has no pretrained tag {tag!r}. Its tags: {known}.")

    @property
    def arch(self):
        """The architecture in timm's keyword names, as a dict (the config's timm fields)."""
        return self.config.timm_kwargs()

    @property
    def mean_std(self):
        """Normalisation of the default weights (the config's when there are none)."""
        t = self.default_tag
        return (t.mean, t.std) if t else self.config.mean_std


def config_from_name(name):
    """The architecture config of a registered timm model name."""
    family, kwargs = ARCHS[name]
    return CONFIGS[family](**kwargs)


def _make_registry():
    out = {}
    for name in ARCHS:
        tags = tuple(
            Tag(name, tag, n, size, *NORMS[norm], crop_pct, interpolation)
            for tag, n, size, norm, crop_pct, interpolation in TAGS[name]
        )
        out[name] = ModelInfo(name, config_from_name(name), tags)
    return out


REGISTRY = _make_registry()


def count_params(family, arch, classes=1000, include_top=True):
    """Parameter count of a family's model from its timm keywords (`ModelInfo.arch`)."""
    return CONFIGS[family](**arch).count_params(classes=classes, include_top=include_top)


def list_models(pattern=None, pretrained=False):
    """Registered timm model names, sorted; `pattern` is a shell-style wildcard
    ("vit_*", "*distilled*"); `pretrained=True` lists `name.tag` for every tag instead."""
    names = sorted(REGISTRY)
    if pretrained:
        names = [f"{n}.{t.tag}" for n in names for t in REGISTRY[n].tags]
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def split_name(name):
    """"vit_base_patch16_224.augreg_in21k" -> ("vit_base_patch16_224", "augreg_in21k")."""
    model, _, tag = name.partition(".")
    return model, (tag or None)


def get_model_info(name):
    """The registry entry for a timm model name (a `.tag` suffix is ignored here)."""
    model, _ = split_name(name)
    if model not in REGISTRY:
        close = difflib.get_close_matches(model, REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"Unknown model name {name!r}.{hint} keras_vitnt.list_models() lists the {len(REGISTRY)} "
            "registered timm names."
        )
    return REGISTRY[model]


def vit_variant(variant):
    """Decode big_vision-style "Ti/16", "B/32", "H/14" into (size letter, patch size)."""
    m = re.fullmatch(r"(Ti|S|B|L|H)/(\d+)", str(variant).strip())
    if not m:
        raise ValueError(
            f"Unknown ViT variant {variant!r}: use '<size>/<patch>' with size one of "
            f"{', '.join(VIT_SIZES)} and any patch size, e.g. 'B/16' or 'Ti/4'."
        )
    return m.group(1), int(m.group(2))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a model name stands for: its config, registry entry (None for a variant timm does not
    register), the tag named in it (None) and the model's default name."""

    config: ArchConfig
    info: object
    tag: object
    name: str


def _spec(config, name, default_name=None):
    info = REGISTRY.get(name)
    return ModelSpec(info.config if info else config, info, None, name if info else (default_name or name))


def vit_spec(variant, distilled=False):
    """ViT "<size>/<patch>" (any patch size) at 224, with DeiT's distillation token if asked."""
    size, patch_size = vit_variant(variant)
    word, widths = VIT_SIZES[size]
    name = f"{'deit_' + word + '_distilled' if distilled else 'vit_' + word}_patch{patch_size}_224"
    return _spec(ViTConfig(patch_size=patch_size, distilled=distilled, **widths), name, f"vit_{word}_patch{patch_size}")


def deit_spec(variant, distilled=False):
    """DeiT "<size>/<patch>" at 224 (the registered deit_* model of that name, if any)."""
    size, patch_size = vit_variant(variant)
    word, widths = VIT_SIZES[size]
    name = f"deit_{word}{'_distilled' if distilled else ''}_patch{patch_size}_224"
    return _spec(ViTConfig(patch_size=patch_size, distilled=distilled, **widths), name)


def tnt_spec(variant):
    """TNT "S", "B" or "S-legacy" (patch 16 at 224)."""
    if variant not in TNT_SIZES:
        raise ValueError(f"Unknown TNT variant {variant!r}: choose one of {', '.join(TNT_SIZES)}.")
    stem, widths = TNT_SIZES[variant]
    return _spec(TNTConfig(**widths), f"{stem}_patch16_224")


# --- the one naming rule of the CLI and create_model -----------------------------------

MODEL_NAME_RULE = (
    "MODEL is a timm model name, optionally with a pretrained tag (vit_base_patch16_224, "
    "deit_small_patch16_224.fb_in1k; `keras-vitnt list` shows them), or an architecture timm does not "
    "register, as <family>:<variant> (vit:Ti/4, vit:B/32, deit:S/16, tnt:S). predict, export and visualize also "
    "take a saved .keras model or a training run folder."
)


FAMILY_SPECS = {"vit": vit_spec, "deit": deit_spec, "tnt": tnt_spec}


def parse_model_name(spec, overrides=None):
    """A timm name ("vit_base_patch16_224[.tag]") or a "<family>:<variant>" ("vit:Ti/4", "tnt:S").
    For a ViT/DeiT variant, `distilled` is taken out of `overrides` (a dict): it names DeiT's
    distilled model (its own tags and name), as `ViT(variant, distilled=True)` does."""
    family, sep, variant = str(spec).partition(":")
    if sep and family in FAMILY_SPECS:
        if family in ("vit", "deit") and overrides and "distilled" in overrides:
            return FAMILY_SPECS[family](variant, overrides.pop("distilled"))
        return FAMILY_SPECS[family](variant)
    info = get_model_info(spec)
    _, tag = split_name(spec)
    return ModelSpec(info.config, info, info.get_tag(tag) if tag else None, info.name)
