"""The one table of registered models, keyed by timm names.

Each entry holds the family ("vit" or "tnt"), the architecture in timm's keyword names,
and the pretrained tags (from `tags.py`, generated from timm). Everything else, the
constructors, `list_models()`, the CLI and the parameter counts, reads from here.
"""

import dataclasses
import difflib
import math
import re

from keras_vitnt.models.tags import TAGS

NORMS = {
    "INCEPTION": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "IMAGENET": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "CLIP": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}

# Published ImageNet-1k top-1 of the pretrained weights (timm's results table for the
# augreg ViTs; the DeiT and TNT papers for theirs).
TOP1 = {
    "vit_tiny_patch16_224.augreg_in21k_ft_in1k": 75.45,
    "vit_small_patch16_224.augreg_in21k_ft_in1k": 81.40,
    "vit_base_patch16_224.augreg2_in21k_ft_in1k": 85.11,
    "vit_base_patch16_384.augreg_in21k_ft_in1k": 86.01,
    "vit_large_patch16_384.augreg_in21k_ft_in1k": 87.10,
    "deit_tiny_patch16_224.fb_in1k": 72.2,
    "deit_small_patch16_224.fb_in1k": 79.9,
    "deit_base_patch16_224.fb_in1k": 81.8,
    "deit_base_patch16_384.fb_in1k": 83.1,
    "deit_tiny_distilled_patch16_224.fb_in1k": 74.5,
    "deit_small_distilled_patch16_224.fb_in1k": 81.2,
    "deit_base_distilled_patch16_224.fb_in1k": 83.4,
    "deit_base_distilled_patch16_384.fb_in1k": 85.2,
    "tnt_s_patch16_224.in1k": 81.5,
    "tnt_b_patch16_224.in1k": 82.9,
}

# ViT size letter -> (timm size word, embed_dim, depth, num_heads); MLP ratio 4 for all.
VIT_SIZES = {
    "Ti": ("tiny", 192, 12, 3),
    "S": ("small", 384, 12, 6),
    "B": ("base", 768, 12, 12),
    "L": ("large", 1024, 24, 16),
    "H": ("huge", 1280, 32, 16),
}
# TNT variant -> (timm stem, embed_dim, inner_dim, num_heads_outer, legacy)
TNT_SIZES = {
    "S": ("tnt_s", 384, 24, 6, False),
    "B": ("tnt_b", 640, 40, 10, False),
    "S-legacy": ("tnt_s_legacy", 384, 24, 6, True),
}

VIT_DEFAULTS = dict(
    patch_size=16,
    embed_dim=768,
    depth=12,
    num_heads=12,
    mlp_ratio=4.0,
    qkv_bias=True,
    class_token=True,
    distilled=False,
    global_pool="token",
    pos_embed="learned_1d",
    img_size=224,
)
TNT_DEFAULTS = dict(
    patch_size=16,
    embed_dim=384,
    inner_dim=24,
    depth=12,
    num_heads_inner=4,
    num_heads_outer=6,
    mlp_ratio=4.0,
    qkv_bias=False,
    first_stride=4,
    legacy=False,
    global_pool="token",
    pos_embed="learned_1d",
    img_size=224,
)
FAMILY_DEFAULTS = {"vit": VIT_DEFAULTS, "tnt": TNT_DEFAULTS}


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
    name: str
    family: str
    arch: dict
    tags: tuple

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
    def mean_std(self):
        """Normalisation of the default weights (ImageNet-style 0.5 when there are none)."""
        t = self.default_tag
        return (t.mean, t.std) if t else NORMS["INCEPTION"]


_VIT_NAME = re.compile(r"^vit_(tiny|small|base|large|huge)_patch(\d+)_(\d+)$")
_DEIT_NAME = re.compile(r"^deit_(tiny|small|base)(_distilled)?_patch(\d+)_(\d+)$")
_TNT_NAME = re.compile(r"^(tnt_s|tnt_b|tnt_s_legacy)_patch(\d+)_(\d+)$")


def _arch_from_name(name):
    words = {v[0]: v for v in VIT_SIZES.values()}
    m = _VIT_NAME.match(name) or _DEIT_NAME.match(name)
    if m:
        size = words[m.group(1)]
        deit = name.startswith("deit")
        return "vit", dict(
            VIT_DEFAULTS,
            embed_dim=size[1],
            depth=size[2],
            num_heads=size[3],
            patch_size=int(m.group(3) if deit else m.group(2)),
            img_size=int(m.group(4) if deit else m.group(3)),
            distilled=bool(deit and m.group(2)),
        )
    m = _TNT_NAME.match(name)
    stems = {v[0]: v for v in TNT_SIZES.values()}
    stem = stems[m.group(1)]
    return "tnt", dict(
        TNT_DEFAULTS,
        embed_dim=stem[1],
        inner_dim=stem[2],
        num_heads_outer=stem[3],
        legacy=stem[4],
        patch_size=int(m.group(2)),
        img_size=int(m.group(3)),
    )


def _make_registry():
    out = {}
    for name, rows in TAGS.items():
        family, arch = _arch_from_name(name)
        tags = tuple(
            Tag(name, tag, n, size, *NORMS[norm], crop_pct) for tag, n, size, norm, crop_pct in rows
        )
        out[name] = ModelInfo(name, family, arch, tags)
    return out


REGISTRY = _make_registry()


def list_models(pattern=None, pretrained=False):
    """Registered timm model names, sorted; `pattern` is a shell-style wildcard
    ("vit_*", "*distilled*"); `pretrained=True` lists `name.tag` for every tag instead."""
    import fnmatch

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


def vit_arch(size, patch_size, img_size=224, distilled=False):
    """Architecture dict of a ViT size letter at a patch size (any P), and the timm name
    it corresponds to (None if timm registers no such model)."""
    word, dim, depth, heads = VIT_SIZES[size]
    arch = dict(VIT_DEFAULTS, embed_dim=dim, depth=depth, num_heads=heads, patch_size=patch_size, img_size=img_size)
    arch["distilled"] = distilled
    stem = f"deit_{word}_distilled" if distilled else f"vit_{word}"
    name = f"{stem}_patch{patch_size}_{img_size}"
    return arch, (name if name in REGISTRY else None)


def tnt_variant(variant):
    if variant not in TNT_SIZES:
        raise ValueError(f"Unknown TNT variant {variant!r}: choose one of {', '.join(TNT_SIZES)}.")
    stem, dim, inner, heads, legacy = TNT_SIZES[variant]
    arch = dict(TNT_DEFAULTS, embed_dim=dim, inner_dim=inner, num_heads_outer=heads, legacy=legacy)
    return arch, f"{stem}_patch16_224"


def count_params(family, arch, classes=1000, include_top=True):
    """Parameter count of a model, from its architecture alone (no build): the figure
    `list_models`/README use, and tested against both timm and the built Keras model."""
    d, p, img = arch["embed_dim"], arch["patch_size"], arch["img_size"]
    h, w = (img, img) if isinstance(img, int) else img
    mlp = lambda dim, hidden: dim * hidden + hidden + hidden * dim + dim  # noqa: E731
    norm = lambda dim: 2 * dim  # noqa: E731
    hidden = int(d * arch["mlp_ratio"])
    head = d * classes + classes if include_top and classes else 0
    pos = arch["pos_embed"]

    def pos_params(prefix, grid_h, grid_w):
        if pos == "learned_1d":
            return (prefix + grid_h * grid_w) * d
        if pos == "learned_2d":
            return (grid_h + grid_w) * (d // 2) + prefix * d
        return 0

    if family == "vit":
        prefix = int(arch["class_token"]) + int(arch["distilled"])
        qkv = 3 * d * d + (3 * d if arch["qkv_bias"] else 0)
        block = 2 * norm(d) + qkv + d * d + d + mlp(d, hidden)
        total = 3 * p * p * d + d + prefix * d + pos_params(prefix, h // p, w // p) + arch["depth"] * block + norm(d)
        return total + head * (2 if arch["distilled"] else 1)

    c = arch["inner_dim"]
    words = math.ceil(p / arch["first_stride"]) ** 2
    bias = arch["qkv_bias"]

    def tnt_attn(dim):
        return 2 * dim * dim + dim * dim + (3 * dim if bias else 0) + dim * dim + dim

    stem = 3 * 49 * c + c + words * c + norm(words * c) + words * c * d + d + norm(d) + d + pos_params(1, h // p, w // p)
    inner = norm(c) + tnt_attn(c) + norm(c) + mlp(c, 4 * c)
    if arch["legacy"]:
        fuse = norm(c) + words * c * d + d
    else:
        fuse = norm(words * c) + words * c * d + norm(d)
    outer = norm(d) + tnt_attn(d) + norm(d) + mlp(d, hidden)
    return stem + arch["depth"] * (inner + fuse + outer) + norm(d) + head
