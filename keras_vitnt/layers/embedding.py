"""Layers that turn an image into a token sequence: input normalisation, patching
(Conv2D k=s=P, and a rank-4 unfold for TNT), prefix tokens (class and distillation)
and position embeddings (learned 1-D, learned 2-D, fixed sin-cos 2-D, none)."""

import math

import keras
import numpy as np
from keras import ops

from keras_vitnt.layers.base import KeepsFloat, SharedDtypePolicy, conv, layer_norm, register, timm_normal

POS_EMBED_KINDS = ("learned_1d", "learned_2d", "sincos_2d", "none")


@register
class Preprocess(KeepsFloat, keras.layers.Layer):
    """Maps RGB in [0, 255] to `(x / 255 - mean) / std`, timm's input normalisation."""

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._scale = np.array([1.0 / (255.0 * s) for s in self.std], "float32")
        self._offset = np.array([-m / s for m, s in zip(self.mean, self.std)], "float32")

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        return x * ops.cast(self._scale, x.dtype) + ops.cast(self._offset, x.dtype)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


def unfold_patches(x, patch_size):
    """(B, H, W, C) -> (B * N, P, P, C), patches in row-major grid order.

    Uses only rank-4 reshapes and one transpose (no tf.image.extract_patches, which is
    a Flex op in LiteRT, and no rank-6 reshape). C must be static; H and W may not be.
    """
    _, h, w, c = x.shape
    p = patch_size
    if h is None or w is None:  # any size: whole patches only (the rest dropped, as a conv), never a row
        gh, gw = (ops.shape(x)[i] // p for i in (1, 2))  # of one image wrapped into the next
        x = x[:, : gh * p, : gw * p]
    gw = (w if w is not None else ops.shape(x)[2]) // p
    x = ops.reshape(x, (-1, p, gw, p * c))  # (B*gh, dy, gx, dx*C + c)
    x = ops.transpose(x, (0, 2, 1, 3))  # (B*gh, gx, dy, dx*C + c)
    return ops.reshape(x, (-1, p, p, c))


@register
class PatchEmbedding(SharedDtypePolicy, keras.layers.Layer):
    """Conv2D with kernel = stride = P, flattened to (B, N, D) in row-major order; initialised
    as timm's `patch_embed.proj` (PyTorch's Conv2d default, see `TorchConv2D`). `bias=False`
    for the models that normalise right after it (timm's pre_norm, CLIP). `norm_layer`
    ("layernorm" or "rmsnorm", eps `norm_eps`): a norm of the patch tokens (timm's
    embed_norm_layer, AIMv2). A size P does not divide loses its last pixels, as timm's conv,
    or with `dynamic_img_pad` is padded with zeros at the bottom and right to the next
    multiple, as timm's. Any input size (H, W may be None)."""

    def __init__(self, patch_size, embed_dim, bias=True, norm_layer=None, norm_eps=1e-6, dynamic_img_pad=False,
                 **kwargs):
        super().__init__(**kwargs)
        self.patch_size = int(patch_size)
        self.embed_dim = int(embed_dim)
        self.bias = bool(bias)
        self.norm_layer = norm_layer
        self.norm_eps = float(norm_eps)
        self.dynamic_img_pad = bool(dynamic_img_pad)
        self.proj = conv(self.embed_dim, self.patch_size, strides=self.patch_size, use_bias=self.bias)
        self.norm = layer_norm(self.norm_eps, "norm", norm_layer) if norm_layer else None

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.proj.build(input_shape)
        if self.norm is not None:
            self.norm.build((None, self.embed_dim))

    def call(self, x):
        if self.dynamic_img_pad:
            x = pad_to_multiple(x, self.patch_size)
        x = self.proj(x)
        _, gh, gw, d = x.shape
        x = ops.reshape(x, (-1, gh * gw, d) if gh and gw else (ops.shape(x)[0], -1, d))
        return x if self.norm is None else self.norm(x)

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        if h is None or w is None:
            return (b, None, self.embed_dim)
        gh, gw = (-(-s // self.patch_size) if self.dynamic_img_pad else s // self.patch_size for s in (h, w))
        return (b, gh * gw, self.embed_dim)

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size, "embed_dim": self.embed_dim, "bias": self.bias,
                "norm_layer": self.norm_layer, "norm_eps": self.norm_eps, "dynamic_img_pad": self.dynamic_img_pad}


def pad_to_multiple(x, multiple):
    """(B, H, W, C) -> zeros appended at the bottom and right up to multiples of `multiple`
    (timm's dynamic_img_pad: F.pad(x, (0, pad_w, 0, pad_h)))."""
    for axis in (1, 2):
        size = x.shape[axis] if x.shape[axis] is not None else ops.shape(x)[axis]
        pad = (multiple - size % multiple) % multiple
        if isinstance(pad, int) and pad == 0:
            continue
        shape = [ops.shape(x)[i] if x.shape[i] is None else x.shape[i] for i in range(4)]
        shape[axis] = pad
        x = ops.concatenate([x, ops.zeros(shape, x.dtype)], axis=axis)
    return x


@register
class PrefixTokens(KeepsFloat, keras.layers.Layer):
    """Prepends learned tokens, in timm's order: the class token, DeiT's distillation token,
    then `reg_tokens` register tokens (DINOv2 with registers, the `reg*` ViTs).

    `num_tokens`: 0 (no class token), 1 `[cls]` or 2 `[cls, dist]` (timm's distilled DeiT).
    All start normal as in timm: `token_init_std` is the class token's std (1e-6 for ViT and
    DeiT, 0.02 for TNT), `dist_token_init_std` the distillation token's (0.02), the registers' 1e-6.
    """

    WEIGHT_NAMES = ("cls_token", "dist_token")  # variable names: saved .keras files depend on them

    def __init__(self, num_tokens=1, token_init_std=1e-6, dist_token_init_std=0.02, reg_tokens=0,
                 reg_token_init_std=1e-6, **kwargs):
        super().__init__(**kwargs)
        if num_tokens not in (0, 1, 2) or reg_tokens < 0 or (num_tokens == 2 and reg_tokens):
            raise ValueError(f"PrefixTokens: num_tokens must be 0, 1 (class) or 2 (class + distillation, no "
                             f"registers), got {num_tokens} with {reg_tokens} registers")
        self.num_tokens = int(num_tokens)
        self.token_init_std = float(token_init_std)
        self.dist_token_init_std = float(dist_token_init_std)
        self.reg_tokens = int(reg_tokens)
        self.reg_token_init_std = float(reg_token_init_std)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        dim = input_shape[-1]
        stds = (self.token_init_std, self.dist_token_init_std)
        self.tokens = [
            self.add_weight(shape=(1, 1, dim), initializer=timm_normal(stds[i]), name=self.WEIGHT_NAMES[i])
            for i in range(self.num_tokens)
        ]
        self.registers = None
        if self.reg_tokens:
            self.registers = self.add_weight(shape=(1, self.reg_tokens, dim),
                                             initializer=timm_normal(self.reg_token_init_std), name="reg_token")

    def call(self, x):
        batch = ops.shape(x)[0]
        dim = x.shape[-1]
        tokens = [ops.broadcast_to(ops.cast(t, x.dtype), (batch, 1, dim)) for t in self.tokens]
        if self.registers is not None:
            tokens.append(ops.broadcast_to(ops.cast(self.registers, x.dtype), (batch, self.reg_tokens, dim)))
        return ops.concatenate(tokens + [x], axis=1)

    def compute_output_shape(self, input_shape):
        b, n, d = input_shape
        return (b, None if n is None else n + self.num_tokens + self.reg_tokens, d)

    def get_config(self):
        return {
            **super().get_config(),
            "num_tokens": self.num_tokens,
            "token_init_std": self.token_init_std,
            "dist_token_init_std": self.dist_token_init_std,
            "reg_tokens": self.reg_tokens,
            "reg_token_init_std": self.reg_token_init_std,
        }


SINCOS_ORDERS = {"timm": ("sin_y", "sin_x", "cos_y", "cos_x"), "moco": ("sin_x", "cos_x", "sin_y", "cos_y")}


def sincos_2d(grid_size, dim, temperature=10000.0, order="timm"):
    """Fixed 2-D sin-cos table, (gh*gw, dim) in row-major patch order: timm's
    `build_sincos2d_pos_embed(grid_size, dim)` with its defaults, i.e. channels
    [sin y, sin x, cos y, cos x], each over dim/4 frequencies temperature**(-i / (dim/4)).
    `order="moco"` ([sin x, cos x, sin y, cos y]) is what keras_vitnt 0.1.0 built; models saved
    then keep it."""
    gh, gw = grid_size
    if dim % 4:
        raise ValueError(f"sincos_2d position embedding needs embed_dim divisible by 4, got {dim}")
    pos_dim = dim // 4
    omega = 1.0 / temperature ** (np.arange(pos_dim, dtype="float64") / pos_dim)
    yy, xx = np.meshgrid(np.arange(gh, dtype="float64"), np.arange(gw, dtype="float64"), indexing="ij")
    out_y = yy.reshape(-1, 1) * omega[None]
    out_x = xx.reshape(-1, 1) * omega[None]
    parts = {"sin_y": np.sin(out_y), "sin_x": np.sin(out_x), "cos_y": np.cos(out_y), "cos_x": np.cos(out_x)}
    return np.concatenate([parts[p] for p in SINCOS_ORDERS[order]], axis=1).astype("float32")


def _cubic_aa(x, a=-0.5):
    x = ops.abs(x)
    return ops.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
                     ops.where(x < 2.0, (((x - 5.0) * x + 8.0) * x - 4.0) * a, 0.0))


def aa_bicubic_weights(in_size, out_size):
    """(out_size, in_size) float32 matrix of PyTorch's antialiased bicubic resize
    (align_corners=False), the kernel timm resamples position tables with, for an `out_size`
    known only when the graph runs (a scalar tensor). The same numbers as
    `keras_vitnt.weights.resample.aa_bicubic_matrix` (tested against it)."""
    out = ops.cast(out_size, "float32")
    scale = float(in_size) / out
    support = ops.where(scale >= 1.0, 2.0 * scale, 2.0)
    invscale = ops.where(scale >= 1.0, 1.0 / scale, 1.0)
    center = scale * (ops.cast(ops.arange(out_size), "float32") + 0.5)[:, None]  # (out, 1)
    # the window [xmin, xmax) of each output sample (C's int() truncation = floor here, clipped at 0)
    xmin = ops.maximum(ops.floor(center - support + 0.5), 0.0)
    xmax = ops.minimum(ops.floor(center + support + 0.5), float(in_size))
    j = ops.cast(ops.arange(in_size), "float32")[None]  # (1, in)
    w = ops.where((j >= xmin) & (j < xmax), _cubic_aa((j - center + 0.5) * invscale), 0.0)
    total = ops.sum(w, axis=1, keepdims=True)
    return w / ops.where(total != 0.0, total, 1.0)


def resample_grid_table(table, old_grid, new_grid):
    """(old_h * old_w, D) table -> (new_h * new_w, D), separable antialiased bicubic as timm's
    `resample_abs_pos_embed`; `new_grid` may hold scalar tensors. Ranks <= 3."""
    (oh, ow), (nh, nw) = old_grid, new_grid
    d = table.shape[-1]
    t = ops.reshape(ops.cast(table, "float32"), (oh, ow, d))
    t = ops.tensordot(aa_bicubic_weights(oh, nh), t, axes=1)  # (nh, ow, D)
    t = ops.tensordot(aa_bicubic_weights(ow, nw), ops.transpose(t, (1, 0, 2)), axes=1)  # (nw, nh, D)
    return ops.reshape(ops.transpose(t, (1, 0, 2)), (-1, d))


def patch_grid(image, patch_size, pad=False):
    """(gh, gw) of an image tensor (B, H, W, C): static ints when the size is, else scalar
    tensors; `pad`: rounded up (timm's dynamic_img_pad), else down (the conv drops the rest)."""
    out = []
    for i in (1, 2):
        size = image.shape[i] if image.shape[i] is not None else ops.shape(image)[i]
        out.append(-(-size // patch_size) if pad else size // patch_size)
    return tuple(out)


def sincos_2d_ops(grid_size, dim, order="timm", temperature=10000.0):
    """`sincos_2d` for a grid known only when the graph runs (float32, (gh*gw, dim))."""
    gh, gw = grid_size
    pos_dim = dim // 4
    omega = ops.convert_to_tensor((1.0 / temperature ** (np.arange(pos_dim, dtype="float64") / pos_dim)).astype(
        "float32"))
    yy = ops.repeat(ops.cast(ops.arange(gh), "float32"), gw)  # row-major: y slow, x fast
    xx = ops.tile(ops.cast(ops.arange(gw), "float32"), [gh])
    out_y, out_x = yy[:, None] * omega[None], xx[:, None] * omega[None]
    parts = {"sin_y": ops.sin(out_y), "sin_x": ops.sin(out_x), "cos_y": ops.cos(out_y), "cos_x": ops.cos(out_x)}
    return ops.concatenate([parts[p] for p in SINCOS_ORDERS[order]], axis=1)


@register
class PositionEmbedding(KeepsFloat, keras.layers.Layer):
    """Adds a position embedding to (B, prefix + N, D) tokens.

    kind:
      - "learned_1d": one learned table (1, prefix + N, D), as every timm checkpoint has.
      - "learned_2d": the ViT paper's 2-D variant: a row table (gh, D/2) and a column table
        (gw, D/2), concatenated per patch; prefix tokens get their own learned rows.
      - "sincos_2d": fixed 2-D sin-cos, timm's `build_sincos2d_pos_embed` (not trained); prefix
        tokens get zeros.
      - "none": adds nothing.
    `sincos_order`: the sin-cos channel order ("timm"; "moco" only for models saved by 0.1.0).

    Called as `layer(tokens, image)` (any input size; `patch_size` set), the table is resampled
    inside the graph to the image's patch grid (rounded up with `dynamic_img_pad`) as timm's
    `dynamic_img_size=True` does: the learned grid part with timm's antialiased bicubic (the
    2-D row and column tables likewise, each along its axis), sin-cos computed for the grid.
    """

    def __init__(self, grid_size, num_prefix_tokens=1, kind="learned_1d", sincos_order="timm", patch_size=None,
                 dynamic_img_pad=False, **kwargs):
        super().__init__(**kwargs)
        if kind not in POS_EMBED_KINDS:
            raise ValueError(f"PositionEmbedding: unknown kind {kind!r}; choose one of {POS_EMBED_KINDS}")
        if sincos_order not in SINCOS_ORDERS:
            raise ValueError(f"PositionEmbedding: sincos_order={sincos_order!r}; choose one of {tuple(SINCOS_ORDERS)}")
        self.grid_size = tuple(int(g) for g in grid_size)
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.kind = kind
        self.sincos_order = sincos_order
        self.patch_size = None if patch_size is None else int(patch_size)
        self.dynamic_img_pad = bool(dynamic_img_pad)

    def build(self, input_shape):  # the tokens' shape (Keras passes the first input's)
        input_shape = tuple(input_shape)
        dim = input_shape[-1]
        gh, gw = self.grid_size
        init = timm_normal(0.02)  # timm's trunc_normal_(pos_embed, std=.02)
        if self.kind == "learned_1d":
            self.pos_embed = self.add_weight(
                shape=(1, self.num_prefix_tokens + gh * gw, dim), initializer=init, name="pos_embed"
            )
        elif self.kind == "learned_2d":
            if dim % 2:
                raise ValueError(f"learned_2d position embedding needs an even embed_dim, got {dim}")
            self.pos_embed_row = self.add_weight(shape=(gh, dim // 2), initializer=init, name="pos_embed_row")
            self.pos_embed_col = self.add_weight(shape=(gw, dim // 2), initializer=init, name="pos_embed_col")
            if self.num_prefix_tokens:
                self.pos_embed_prefix = self.add_weight(
                    shape=(1, self.num_prefix_tokens, dim), initializer=init, name="pos_embed_prefix"
                )
        elif self.kind == "sincos_2d":
            table = sincos_2d(self.grid_size, dim, order=self.sincos_order)
            table = np.concatenate([np.zeros((self.num_prefix_tokens, dim), "float32"), table])
            self._sincos = table[None]

    def embedding(self, dtype):
        """The full (1, prefix + N, D) table in `dtype`, or None for kind="none"."""
        if self.kind == "learned_1d":
            return ops.cast(self.pos_embed, dtype)
        if self.kind == "sincos_2d":
            return ops.cast(self._sincos, dtype)
        if self.kind == "learned_2d":
            gh, gw = self.grid_size
            half = self.pos_embed_row.shape[-1]
            rows = ops.broadcast_to(ops.expand_dims(self.pos_embed_row, 1), (gh, gw, half))
            cols = ops.broadcast_to(ops.expand_dims(self.pos_embed_col, 0), (gh, gw, half))
            grid = ops.reshape(ops.concatenate([rows, cols], axis=-1), (1, gh * gw, 2 * half))
            if self.num_prefix_tokens:
                grid = ops.concatenate([self.pos_embed_prefix, grid], axis=1)
            return ops.cast(grid, dtype)
        return None

    def call(self, x, image=None):
        if image is None:
            table = self.embedding(x.dtype)
        else:
            if self.patch_size is None:
                raise ValueError("PositionEmbedding: called with an image but built without patch_size")
            table = self.resampled(patch_grid(image, self.patch_size, self.dynamic_img_pad), x.dtype)
        return x if table is None else x + table

    def resampled(self, grid, dtype):
        """The (1, prefix + gh * gw, D) table for another patch grid (None for kind="none")."""
        gh, gw = grid
        p = self.num_prefix_tokens
        if self.kind == "none":
            return None
        if self.kind == "learned_1d":
            table = ops.concatenate([ops.cast(self.pos_embed[0, :p], "float32"),
                                     resample_grid_table(self.pos_embed[0, p:], self.grid_size, grid)], axis=0)
        elif self.kind == "learned_2d":
            oh, ow = self.grid_size
            rows = ops.tensordot(aa_bicubic_weights(oh, gh), ops.cast(self.pos_embed_row, "float32"), axes=1)
            cols = ops.tensordot(aa_bicubic_weights(ow, gw), ops.cast(self.pos_embed_col, "float32"), axes=1)
            half = rows.shape[-1]
            rows = ops.broadcast_to(ops.expand_dims(rows, 1), (gh, gw, half))
            cols = ops.broadcast_to(ops.expand_dims(cols, 0), (gh, gw, half))
            table = ops.reshape(ops.concatenate([rows, cols], axis=-1), (-1, 2 * half))
            if p:
                table = ops.concatenate([ops.cast(self.pos_embed_prefix[0], "float32"), table], axis=0)
        else:  # sincos_2d for the grid, zeros for the prefix tokens
            dim = self._sincos.shape[-1]
            table = ops.concatenate([ops.zeros((p, dim)), sincos_2d_ops((gh, gw), dim, self.sincos_order)], axis=0)
        return ops.cast(table[None], dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "grid_size": self.grid_size,
            "num_prefix_tokens": self.num_prefix_tokens,
            "kind": self.kind,
            "sincos_order": self.sincos_order,
            "patch_size": self.patch_size,
            "dynamic_img_pad": self.dynamic_img_pad,
        }

    @classmethod
    def from_config(cls, config):
        # a config without the key was saved by 0.1.0, whose sin-cos table had MoCo's order:
        # the saved model keeps its numbers
        return cls(**{"sincos_order": "moco", **config})


@register
class TokenPool(KeepsFloat, keras.layers.Layer):
    """Reduces (B, T, D) tokens to (B, D).

    mode "token": the class token (index 0); "dist": DeiT's distillation token (index 1);
    "avg": mean of the patch tokens (after the prefix; all tokens with num_prefix_tokens=0);
    "max": their maximum; "avgmax": (mean + max) / 2 (timm's global_pool names); "dist_avg":
    mean of the class and distillation tokens (timm's DeiT pre-logits).
    """

    MODES = ("token", "dist", "avg", "max", "avgmax", "dist_avg")
    REDUCTIONS = ("avg", "max", "avgmax")

    def __init__(self, mode="token", num_prefix_tokens=1, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"TokenPool: unknown mode {mode!r}; choose one of {self.MODES}")
        if mode not in self.REDUCTIONS and num_prefix_tokens < (1 if mode == "token" else 2):
            raise ValueError(f"TokenPool: mode {mode!r} needs prefix tokens, the model has {num_prefix_tokens}")
        self.mode = mode
        self.num_prefix_tokens = int(num_prefix_tokens)

    def call(self, x):
        if self.mode == "token":
            return x[:, 0]
        if self.mode == "dist":
            return x[:, 1]
        if self.mode == "dist_avg":
            return (x[:, 0] + x[:, 1]) * 0.5
        x = x[:, self.num_prefix_tokens :]
        if self.mode == "avg":
            return ops.mean(x, axis=1)
        if self.mode == "max":
            return ops.max(x, axis=1)
        return 0.5 * (ops.max(x, axis=1) + ops.mean(x, axis=1))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "num_prefix_tokens": self.num_prefix_tokens}


OUTPUT_FORMATS = ("NHWC", "NCHW", "NLC")  # timm's output_fmt names, and NHWC


@register
class TokenMap(KeepsFloat, keras.layers.Layer):
    """(tokens (B, prefix + N, D), image (B, H, W, C)) -> the N patch tokens as a map:
    (B, H/P, W/P, D) for "NHWC", (B, D, H/P, W/P) for "NCHW" (timm's layout), (B, N, D) for
    "NLC"; the grid is read from the image's size, so any input size works. With
    `return_prefix`, also the prefix tokens (B, prefix, D)."""

    def __init__(self, num_prefix_tokens, patch_size, output_fmt="NHWC", return_prefix=False, dynamic_img_pad=False,
                 **kwargs):
        super().__init__(**kwargs)
        if output_fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output_fmt={output_fmt!r}: choose one of {', '.join(OUTPUT_FORMATS)}")
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.patch_size = int(patch_size)
        self.output_fmt = output_fmt
        self.return_prefix = bool(return_prefix)
        self.dynamic_img_pad = bool(dynamic_img_pad)  # the model pads the image: its grid is rounded up

    def call(self, tokens, image):
        x = tokens[:, self.num_prefix_tokens :]
        if self.output_fmt != "NLC":
            gh, gw = patch_grid(image, self.patch_size, self.dynamic_img_pad)
            batch = ops.shape(image)[0] if image.shape[0] is None else image.shape[0]
            x = ops.reshape(x, (batch, gh, gw, tokens.shape[-1]))
            if self.output_fmt == "NCHW":
                x = ops.transpose(x, (0, 3, 1, 2))
        return (x, tokens[:, : self.num_prefix_tokens]) if self.return_prefix else x

    def compute_output_spec(self, tokens, image):
        b, _, d = tokens.shape
        p, pad = self.patch_size, self.dynamic_img_pad
        h, w = (None if s is None else -(-s // p) if pad else s // p for s in image.shape[1:3])
        n = None if h is None or w is None else h * w
        shape = {"NHWC": (b, h, w, d), "NCHW": (b, d, h, w), "NLC": (b, n, d)}[self.output_fmt]
        out = keras.KerasTensor(shape, dtype=tokens.dtype)
        return (out, keras.KerasTensor((b, self.num_prefix_tokens, d), dtype=tokens.dtype)) if self.return_prefix else out

    def get_config(self):
        return {**super().get_config(), "num_prefix_tokens": self.num_prefix_tokens, "patch_size": self.patch_size,
                "output_fmt": self.output_fmt, "return_prefix": self.return_prefix,
                "dynamic_img_pad": self.dynamic_img_pad}


def grid_for(image_size, patch_size, what="model", drop_remainder=False):
    """(gh, gw) for an (H, W) input, with a clear error when P does not divide it (unless
    `drop_remainder`: the model's patch conv drops the last pixels, as timm's)."""
    h, w = image_size
    if h is None or w is None:
        raise ValueError(
            f"{what}: the input height and width must be fixed (got {image_size}); position embeddings "
            "are built for one patch grid. Pass input_shape=(H, W, 3)."
        )
    if (h % patch_size or w % patch_size) and not drop_remainder:
        raise ValueError(
            f"{what}: input size {h}x{w} is not divisible by the patch size {patch_size}. "
            f"Use a size that is, e.g. {math.ceil(h / patch_size) * patch_size}x{math.ceil(w / patch_size) * patch_size}."
        )
    return h // patch_size, w // patch_size
