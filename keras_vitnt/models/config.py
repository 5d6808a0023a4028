"""One typed config per architecture: every fact of a model (widths, depth, norm eps, token
init, pooling, position embedding, default input size and normalisation) in one frozen
dataclass, which the registry holds and the builder, the trunks and the parameter count
read: the trunks pass every number to the layers from here (the layers' own defaults are
only those of a layer used on its own).

Fields marked `timm=True` are the keywords of timm's constructor for the family (same name,
same meaning) and can be overridden by name: `create_model("vit_small_patch16_224",
depth=4)`. The others are facts timm hard-codes (init stds) or gives as objects: `norm_eps`
is read from timm's `norm_layer` by scripts/gen_tags.py (1e-5 for the CLIP towers). A new
architecture option is one field here plus its use in the family's trunk.
"""

import dataclasses
import typing

from keras_vitnt.layers.base import NORM_LAYERS
from keras_vitnt.layers.blocks import ACTIVATIONS, ATTN_LAYERS, BLOCKS, MLP_LAYERS
from keras_vitnt.layers.embedding import POS_EMBED_KINDS
from keras_vitnt.layers.tnt import words_per_side

# (mean, std) pairs of timm's pretrained configs, by timm's constant names
NORMS = {
    "INCEPTION": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "IMAGENET": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "CLIP": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "NONE": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # inputs in 0..1, as these checkpoints were trained
}

# timm's spelling of position-embedding kinds, accepted as aliases
_POS_ALIASES = {"learn": "learned_1d", "": "none", None: "none"}


def timm_field(default):
    """A field that is one of timm's constructor keywords (overridable by name)."""
    return dataclasses.field(default=default, metadata={"timm": True})


@dataclasses.dataclass(frozen=True)
class ArchConfig:
    """Fields and checks every family shares."""

    family: typing.ClassVar[str] = ""
    POOLS: typing.ClassVar[tuple] = ("token", "avg")

    img_size: object = timm_field(224)  # int or (height, width); the default input size
    patch_size: int = timm_field(16)
    embed_dim: int = timm_field(768)
    depth: int = timm_field(12)
    mlp_ratio: float = timm_field(4.0)
    global_pool: str = timm_field("token")  # one of POOLS: "token" (class token), "avg" (patch mean), ViT: "map"
    pos_embed: str = timm_field("learned_1d")  # one of POS_EMBED_KINDS (timm's "learn" / "none" accepted)
    norm_eps: float = 1e-6  # timm's LayerNorm eps for the family
    norm_layer: str = "layernorm"  # the kind of every norm (a timm keyword of ViT only)
    cls_token_std: float = 0.02  # timm's init std of the class token
    norm: str = "INCEPTION"  # the normalisation (a NORMS key) when the weights name none
    # any input size, the position table resampled in the graph (ViT: timm's keyword; TNT: timm has none)
    dynamic_img_size: bool = False
    dynamic_img_pad: bool = False
    # the patch size need not divide the input: the last pixels are dropped, as timm's conv does
    # (set by scripts/gen_tags.py for the architectures whose own size needs it: so400m/14 at 384)
    drop_remainder: bool = False

    @classmethod
    def overridable(cls):
        """timm's keyword names a caller may override (the input size comes from input_shape)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("timm") and f.name != "img_size")

    def timm_kwargs(self):
        """The timm keyword fields as a dict (a square input size as one int, as timm writes it)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("timm")}
        h, w = self.img_size
        out["img_size"] = h if h == w else (h, w)
        return out

    def replace(self, **overrides):
        """A checked copy with timm-named overrides applied."""
        unknown = sorted(set(overrides) - set(self.overridable()))
        if unknown:
            raise TypeError(
                f"Unknown keyword argument(s) {unknown} for a {self.family.upper()} model. Architecture overrides "
                f"use timm's names: {sorted(self.overridable())}."
            )
        return dataclasses.replace(self, **overrides)

    def __post_init__(self):
        pos = _POS_ALIASES.get(self.pos_embed, self.pos_embed)
        if pos not in POS_EMBED_KINDS:
            raise ValueError(f"pos_embed={self.pos_embed!r}: choose one of {POS_EMBED_KINDS}")
        object.__setattr__(self, "pos_embed", pos)
        img = self.img_size
        object.__setattr__(self, "img_size", (img, img) if isinstance(img, int) else tuple(img))
        if self.global_pool not in self.POOLS:
            raise ValueError(f"global_pool={self.global_pool!r}: choose one of {', '.join(self.POOLS)} ('token': the "
                             "class token, 'avg': the mean of the patch tokens, 'map': attention pooling)")

    @property
    def mean_std(self):
        return NORMS[self.norm]

    @property
    def num_prefix_tokens(self):
        return 1

    @property
    def pos_prefix_tokens(self):
        """Prefix tokens the position table has rows for."""
        return self.num_prefix_tokens

    @property
    def pool_prefix_tokens(self):
        """Leading tokens the avg/max/map pooling skips."""
        return self.num_prefix_tokens

    def with_input_size(self, height, width):
        return dataclasses.replace(self, img_size=(height, width))

    def _pos_params(self, dim):
        gh, gw = (s // self.patch_size for s in self.img_size)  # floored, as the patch conv
        prefix = self.pos_prefix_tokens
        if self.pos_embed == "learned_1d":
            return (prefix + gh * gw) * dim
        if self.pos_embed == "learned_2d":
            return (gh + gw) * (dim // 2) + prefix * dim
        return 0


def _mlp_params(dim, hidden):
    return dim * hidden + hidden + hidden * dim + dim


@dataclasses.dataclass(frozen=True)
class ViTConfig(ArchConfig):
    """timm's `VisionTransformer` (and DeiT's `VisionTransformerDistilled` with distilled=True)."""

    family: typing.ClassVar[str] = "vit"
    POOLS: typing.ClassVar[tuple] = ("token", "avg", "avgmax", "max", "map")  # map: AttentionPoolLatent (SigLIP)

    num_heads: int = timm_field(12)
    qkv_bias: bool = timm_field(True)
    class_token: bool = timm_field(True)
    distilled: bool = timm_field(False)  # DeiT's distillation token and second head
    reg_tokens: int = timm_field(0)  # register tokens after the class token (DINOv2 with registers)
    no_embed_class: bool = timm_field(False)  # the position table covers the patches only (DeiT III, registers)
    init_values: float = timm_field(None)  # LayerScale in every block, starting at this value (DeiT III, DINOv2)
    pre_norm: bool = timm_field(False)  # a LayerNorm before the blocks (CLIP's norm_pre)
    fc_norm: bool = timm_field(None)  # final norm after pooling; None: for global_pool="avg" only
    final_norm: bool = timm_field(True)  # False: neither norm nor fc_norm
    act_layer: str = timm_field("gelu")  # MLP activation: gelu (exact), gelu_tanh, quick_gelu, silu
    mlp_layer: str = timm_field("mlp")  # "mlp", "glu" (GluMlp, gate first: SwiGLUPacked) or "swiglu" (SwiGLU)
    norm_layer: str = timm_field("layernorm")  # every norm: "layernorm" or "rmsnorm" (AIMv2, xp), eps norm_eps
    embed_norm_layer: str = timm_field(None)  # a norm of the patch tokens (AIMv2), eps norm_eps
    qk_norm: bool = timm_field(False)  # q and k normalised per head (the xp ViTs)
    proj_bias: bool = timm_field(True)  # False: no bias in attention proj nor the MLP (AIMv2)
    scale_attn_norm: bool = timm_field(False)  # a norm before attention proj (BEiT-3)
    scale_mlp_norm: bool = timm_field(False)  # a norm before MLP fc2 (BEiT-3)
    block_fn: str = timm_field("Block")  # a BLOCKS key: Block, ResPostBlock, Parallel(Scaling|Things)Block, ...
    attn_layer: str = timm_field("attn")  # "attn", or "diff": differential attention (the vit_d* ViTs)
    pool_include_prefix: bool = timm_field(False)  # avg/max/map pooling over the prefix tokens too
    # any input size at run time, the position table resampled in the graph (also: input_shape=(None, None, 3))
    dynamic_img_size: bool = timm_field(False)
    dynamic_img_pad: bool = timm_field(False)  # pad inputs the patch size does not divide (bottom, right)
    norm_eps: float = 1e-6  # partial(nn.LayerNorm, eps=1e-6); 1e-5 for CLIP towers
    cls_token_std: float = 1e-6  # normal_(cls_token, std=1e-6)
    dist_token_std: float = 0.02  # trunc_normal_(dist_token, std=.02)
    reg_token_std: float = 1e-6  # normal_(reg_token, std=1e-6)

    def __post_init__(self):
        super().__post_init__()
        if not self.class_token:
            if self.distilled:
                raise ValueError("distilled=True needs class_token=True (DeiT has both tokens)")
            if self.global_pool == "token":
                raise ValueError("class_token=False needs global_pool='avg': there is no token to classify from")
        if self.distilled and self.reg_tokens:
            raise ValueError("distilled=True takes no reg_tokens (timm's distilled DeiT has none)")
        if self.act_layer not in ACTIVATIONS:
            raise ValueError(f"act_layer={self.act_layer!r}: choose one of {', '.join(ACTIVATIONS)}")
        if self.mlp_layer not in MLP_LAYERS:
            raise ValueError(f"mlp_layer={self.mlp_layer!r}: choose one of {', '.join(MLP_LAYERS)}")
        for key in ("norm_layer", "embed_norm_layer"):
            value = getattr(self, key)
            if value is not None and value not in NORM_LAYERS:
                raise ValueError(f"{key}={value!r}: choose one of {', '.join(NORM_LAYERS)}")
        if self.attn_layer == "":  # timm's spelling of the default
            object.__setattr__(self, "attn_layer", "attn")
        if self.attn_layer not in ATTN_LAYERS:
            raise ValueError(f"attn_layer={self.attn_layer!r}: choose one of {', '.join(ATTN_LAYERS)}")
        if self.block_fn not in BLOCKS:
            raise ValueError(f"block_fn={self.block_fn!r}: choose one of {', '.join(BLOCKS)}")
        if "ParallelScaling" in self.block_fn and self.attn_layer != "attn":
            raise ValueError(f"block_fn={self.block_fn!r} has its own attention: attn_layer={self.attn_layer!r} does not "
                             "apply (use block_fn='DiffParallelScalingBlock' for differential attention)")
        if "ParallelScaling" in self.block_fn and (self.scale_attn_norm or self.scale_mlp_norm):
            raise ValueError(f"block_fn={self.block_fn!r} takes no scale_attn_norm/scale_mlp_norm (as in timm)")

    @property
    def num_prefix_tokens(self):
        return int(self.class_token) + int(self.distilled) + self.reg_tokens

    @property
    def pos_prefix_tokens(self):
        return 0 if self.no_embed_class else self.num_prefix_tokens

    @property
    def head_norm(self):
        """Whether the final norm comes after pooling (timm's fc_norm) rather than before it."""
        use_fc_norm = self.global_pool in ("avg", "avgmax", "max") if self.fc_norm is None else self.fc_norm
        return self.final_norm and use_fc_norm

    @property
    def pool_prefix_tokens(self):
        """Leading tokens the avg/max/map pooling skips."""
        return 0 if self.pool_include_prefix else self.num_prefix_tokens

    def count_params(self, classes=1000, include_top=True):
        """Parameter count from the config alone (tested against timm and the built model)."""
        d, p, h = self.embed_dim, self.patch_size, int(self.embed_dim * self.mlp_ratio)

        def norm(width):
            return width * (2 if self.norm_layer == "layernorm" else 1)

        bias = int(self.proj_bias)
        diff = self.attn_layer == "diff" or self.block_fn == "DiffParallelScalingBlock"
        head = d // self.num_heads // (2 if diff else 1)  # differential attention: half-width q/k heads
        qk_norms = 2 * norm(head) if self.qk_norm else 0
        qk_norms += 4 * head + 2 * head if diff else 0  # lambda_q1, k1, q2, k2 and sub_norm (RmsNorm, 2 head)
        attn = 3 * d * d + 3 * d * self.qkv_bias + qk_norms + norm(d) * self.scale_attn_norm + d * d + d * bias
        inner = {"mlp": h, "glu": h // 2, "swiglu": h}[self.mlp_layer]  # the width into fc2
        fc1 = 2 * h if self.mlp_layer == "swiglu" else h
        mlp = d * fc1 + fc1 * bias + inner * d + d * bias + norm(inner) * self.scale_mlp_norm
        scale = d if self.init_values is not None else 0  # one LayerScale
        if "ParallelScaling" in self.block_fn:  # attn_out_proj + mlp_out_proj, or Diff's one fused out_proj
            block = norm(d) + d * (h + 3 * d) + (h + 3 * d if self.qkv_bias else h) + qk_norms + d * d + h * d
            block += (1 if diff else 2) * d * bias + scale
        elif self.block_fn == "ParallelThingsBlock":
            block = 2 * (norm(d) + attn + scale) + 2 * (norm(d) + mlp + scale)
        else:
            block = 2 * norm(d) + attn + mlp + (2 * scale if self.block_fn == "Block" else 0)
        norms = norm(d) * (int(self.pre_norm) + int(self.final_norm))
        if self.global_pool == "map":  # latent, q, kv, proj, norm, mlp
            norms += d + 4 * (d * d + d) + norm(d) + _mlp_params(d, h)
        stem = 3 * p * p * d + (0 if self.pre_norm else d) + self.num_prefix_tokens * d + self._pos_params(d)
        stem += d * (2 if self.embed_norm_layer == "layernorm" else 1) if self.embed_norm_layer else 0
        total = stem + self.depth * block + norms
        classifier = d * classes + classes if include_top and classes else 0
        return total + classifier * (2 if self.distilled else 1)


@dataclasses.dataclass(frozen=True)
class TNTConfig(ArchConfig):
    """timm's `tnt.TNT`: inner (pixel) and outer (patch) transformers."""

    family: typing.ClassVar[str] = "tnt"

    embed_dim: int = timm_field(384)
    inner_dim: int = timm_field(24)
    num_heads_inner: int = timm_field(4)
    num_heads_outer: int = timm_field(6)
    qkv_bias: bool = timm_field(False)
    first_stride: int = timm_field(4)
    legacy: bool = timm_field(False)  # the original release's layout (tnt_s_legacy_patch16_224)
    norm_eps: float = 1e-5  # nn.LayerNorm's default
    cls_token_std: float = 0.02  # trunc_normal_(cls_token, std=.02)
    inner_mlp_ratio: float = 4.0  # timm's Block: Mlp(hidden_features=4 * inner_dim)

    def count_params(self, classes=1000, include_top=True):
        """Parameter count from the config alone (tested against timm and the built model)."""
        d, c, bias = self.embed_dim, self.inner_dim, self.qkv_bias
        words = words_per_side(self.patch_size, self.first_stride) ** 2

        def attn(dim):
            return 4 * dim * dim + (3 * dim if bias else 0) + dim

        stem = 3 * 49 * c + c + words * c + 2 * words * c + words * c * d + d + 2 * d + d + self._pos_params(d)
        inner = 2 * c + attn(c) + 2 * c + _mlp_params(c, int(c * self.inner_mlp_ratio))
        fuse = 2 * c + words * c * d + d if self.legacy else 2 * words * c + words * c * d + 2 * d
        outer = 2 * d + attn(d) + 2 * d + _mlp_params(d, int(d * self.mlp_ratio))
        head = d * classes + classes if include_top and classes else 0
        return stem + self.depth * (inner + fuse + outer) + 2 * d + head


CONFIGS = {cls.family: cls for cls in (ViTConfig, TNTConfig)}
