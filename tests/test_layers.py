"""Layers: config round trips, attention weights against an independent computation,
unfold order, DropPath, position-embedding kinds, initialisation as timm's."""

import inspect

import keras
import numpy as np
import pytest

from keras_vitnt import layers as L
from timm_oracle import ks_distance

LAYERS = [
    L.Preprocess(mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4)),
    L.PatchEmbedding(patch_size=4, embed_dim=8, bias=False),
    L.PrefixTokens(num_tokens=2, token_init_std=0.02, dist_token_init_std=0.01),
    L.PrefixTokens(num_tokens=1, reg_tokens=4, reg_token_init_std=0.01),
    L.PositionEmbedding(grid_size=(2, 3), num_prefix_tokens=1, kind="learned_2d"),
    L.TokenPool(mode="dist_avg", num_prefix_tokens=2),
    L.Attention(dim=8, num_heads=2, qkv_bias=False, attn_drop=0.1, proj_drop=0.2),
    L.TNTAttention(dim=8, num_heads=2),
    L.Mlp(hidden_dim=16, out_dim=8, drop=0.1, act="quick_gelu"),
    L.GluMlp(hidden_dim=16, out_dim=8, act="silu", gate_last=True),
    L.LayerScale(init_values=1e-6),
    L.AttentionPoolLatent(dim=8, num_heads=2, mlp_ratio=3.0, num_prefix_tokens=1, norm_eps=1e-5, act="gelu_tanh"),
    L.DropPath(rate=0.2, seed=3),
    L.TransformerBlock(dim=8, num_heads=2, mlp_ratio=2.0, drop_path=0.1, norm_eps=1e-5),
    L.TransformerBlock(dim=8, num_heads=2, init_values=1e-5, act="gelu_tanh"),
    L.TransformerBlock(dim=8, num_heads=2, mlp_ratio=4.0, act="silu", mlp_layer="glu"),
    L.TransformerBlock(dim=8, num_heads=2, qk_norm=True, proj_bias=False, scale_attn_norm=True, scale_mlp_norm=True,
                       norm_layer="rmsnorm", mlp_layer="swiglu", act="silu"),
    L.ResPostBlock(dim=8, num_heads=2, init_values=1e-5, qkv_bias=False),
    L.ParallelThingsBlock(dim=8, num_heads=2, num_parallel=3, init_values=1e-5),
    L.ParallelScalingBlock(dim=8, num_heads=2, qkv_bias=False, qk_norm=True, norm_layer="rmsnorm"),
    L.RmsNorm(epsilon=1e-5, gamma_init=0.5),
    L.DiffAttention(dim=8, num_heads=2, block_index=3, qk_norm=True),
    L.DiffParallelScalingBlock(dim=8, num_heads=2, block_index=2, init_values=1e-5),
    L.TransformerBlock(dim=8, num_heads=2, attn_layer="diff", block_index=1),
    L.SwiGLU(hidden_dim=12, out_dim=8, bias=False, norm_layer="layernorm", norm_eps=1e-5),
    L.Attention(dim=8, num_heads=2, qk_norm=True, scale_norm=True, proj_bias=False, norm_layer="rmsnorm"),
    L.PatchEmbedding(patch_size=4, embed_dim=8, norm_layer="rmsnorm", norm_eps=1e-5),
    L.TokenPool(mode="avgmax", num_prefix_tokens=0),
    L.TokenMap(num_prefix_tokens=5, patch_size=14, output_fmt="NCHW", return_prefix=True),
    L.PixelEmbed(patch_size=8, inner_dim=4, stride=2, legacy=True),
    L.PixelToPatch(num_patches=4, embed_dim=8),
    L.TNTBlock(inner_dim=4, embed_dim=8, num_words=16, num_heads_inner=2, num_heads_outer=2, legacy=True),
]


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: type(layer).__name__)
def test_get_config_is_init_args_and_round_trips(layer):
    config = layer.get_config()
    # the constructor's arguments, with those a subclass passes on to its keras_vitnt base through **kwargs
    own = set().union(*(inspect.signature(c.__init__).parameters for c in type(layer).__mro__
                        if c.__module__.startswith("keras_vitnt") and "__init__" in vars(c))) - {"self", "kwargs"}
    base = set(keras.layers.Layer().get_config())
    assert set(config) - base == own
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    # registered: resolvable by name as load_model does
    assert keras.saving.get_registered_object(f"keras_vitnt>{type(layer).__name__}") is type(layer)


def test_attention_weights_equal_independent_softmax():
    rng = np.random.default_rng(0)
    layer = L.Attention(dim=12, num_heads=3)
    x = rng.standard_normal((2, 5, 12)).astype("float32")
    out, weights = layer(x, return_attention_scores=True)
    w, b = (np.asarray(v) for v in (layer.qkv.kernel, layer.qkv.bias))
    b = rng.standard_normal(b.shape).astype("float32")
    layer.qkv.bias.assign(b)
    out, weights = layer(x, return_attention_scores=True)
    qkv = x @ w + b
    q, k, v = np.split(qkv, 3, axis=-1)
    heads = lambda a: a.reshape(2, 5, 3, 4).transpose(0, 2, 1, 3)  # noqa: E731
    logits = heads(q) @ heads(k).transpose(0, 1, 3, 2) / np.sqrt(4)
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(weights), expected, rtol=1e-5, atol=1e-6)
    # the path that does not keep the weights gives the same output
    np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(out), rtol=1e-5, atol=1e-6)
    proj_in = (expected @ heads(v)).transpose(0, 2, 1, 3).reshape(2, 5, 12)
    expected_out = proj_in @ np.asarray(layer.proj.kernel) + np.asarray(layer.proj.bias)
    np.testing.assert_allclose(np.asarray(out), expected_out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 7, 12), (9, 12)])
def test_layer_norm_matches_keras_layer_normalization(shape):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 3 + 1).astype("float32")
    ours, ref = L.LayerNorm(epsilon=1e-6), keras.layers.LayerNormalization(epsilon=1e-6)
    for layer in (ours, ref):
        layer.build(shape)
    gamma, beta = rng.standard_normal(12).astype("float32"), rng.standard_normal(12).astype("float32")
    for layer in (ours, ref):
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(ref(x)), rtol=1e-5, atol=1e-5)


def test_layer_norm_other_axis_and_mixed_precision():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 5, 6)).astype("float32")
    # a non-last axis takes the parent's path
    np.testing.assert_allclose(np.asarray(L.LayerNorm(axis=1)(x)), np.asarray(keras.layers.LayerNormalization(axis=1)(x)),
                               rtol=1e-5, atol=1e-6)
    # under mixed_bfloat16 it returns bfloat16 computed in float32 (error of one bf16 rounding)
    layer = L.LayerNorm(epsilon=1e-6, dtype="mixed_bfloat16")
    y = layer(x)
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(np.asarray(keras.ops.cast(y, "float32")), expected, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("make", [
    lambda: L.TransformerBlock(dim=8, num_heads=2, drop_path=0.9),
    lambda: L.TNTBlock(inner_dim=4, embed_dim=8, num_words=4, num_heads_inner=2, num_heads_outer=2, drop_path=0.9),
], ids=["vit", "tnt"])
def test_blocks_drop_whole_samples_in_training(make):
    # the blocks run on (B*T, D) rows; stochastic depth must still drop per sample
    block = make()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 5, 8)).astype("float32")
    if isinstance(block, L.TNTBlock):
        # the inner stream: a "sample" is one patch's pixel tokens, as in timm (the outer
        # tokens always receive the fused pixels, which stochastic depth does not touch)
        x = rng.standard_normal((64, 4, 4)).astype("float32")
        out = np.asarray(block([x, rng.standard_normal((16, 5, 8)).astype("float32")], training=True)[0])
    else:
        out = np.asarray(block(x, training=True))
    same = np.all(np.isclose(out, x), axis=-1)  # (samples, tokens): token left as it was
    assert np.all(same.all(1) | ~same.any(1)), "a sample was partly dropped"
    assert 0 < same.all(1).sum() < 64


def test_unfold_patches_row_major():
    x = np.arange(2 * 8 * 12 * 3, dtype="float32").reshape(2, 8, 12, 3)
    p = np.asarray(L.unfold_patches(keras.ops.convert_to_tensor(x), 4))
    assert p.shape == (2 * 2 * 3, 4, 4, 3)
    expected = [x[b, i * 4:(i + 1) * 4, j * 4:(j + 1) * 4] for b in range(2) for i in range(2) for j in range(3)]
    np.testing.assert_array_equal(p, np.stack(expected))


def test_drop_path_drops_whole_samples_and_rescales():
    layer = L.DropPath(0.5, seed=1)
    x = np.ones((400, 3, 2), "float32")
    assert np.array_equal(np.asarray(layer(x, training=False)), x)
    y = np.asarray(layer(x, training=True))
    per_sample = y.reshape(400, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert np.all(per_sample.min(1) == per_sample.max(1))  # a sample is kept or dropped whole
    assert 0.35 < (per_sample[:, 0] > 0).mean() < 0.65


@pytest.mark.parametrize("kind,trainable", [("learned_1d", 1), ("learned_2d", 3), ("sincos_2d", 0), ("none", 0)])
def test_position_embedding_kinds(kind, trainable):
    layer = L.PositionEmbedding((2, 3), num_prefix_tokens=1, kind=kind)
    x = np.zeros((2, 7, 8), "float32")
    y = np.asarray(layer(x))
    assert y.shape == (2, 7, 8) and len(layer.trainable_weights) == trainable
    if kind == "none":
        assert not y.any()
    else:
        assert np.abs(y[0, 1:]).sum() > 0
    if kind == "learned_2d":  # patch (i, j) = [row_i, col_j]
        row, col = np.asarray(layer.pos_embed_row), np.asarray(layer.pos_embed_col)
        np.testing.assert_allclose(y[0, 1 + 1 * 3 + 2], np.concatenate([row[1], col[2]]))
    if kind == "sincos_2d":
        assert not y[0, 0].any()  # the class token gets no position


def test_sincos_2d_equals_timm_build_sincos2d_pos_embed():
    from timm.layers import build_sincos2d_pos_embed

    grid, dim = (6, 10), 64  # non-square: a swapped x / y shows
    ref = build_sincos2d_pos_embed(list(grid), dim=dim).numpy()
    np.testing.assert_allclose(L.embedding.sincos_2d(grid, dim), ref, rtol=0, atol=1e-6)
    y = np.asarray(L.PositionEmbedding(grid, num_prefix_tokens=2, kind="sincos_2d")(np.zeros((1, 62, dim), "float32")))
    np.testing.assert_allclose(y[0, 2:], ref, rtol=0, atol=1e-6)


def test_prefix_tokens_config_without_dist_std_loads():
    # configs saved before dist_token_init_std existed
    layer = L.PrefixTokens.from_config({"name": "cls_token", "num_tokens": 2, "token_init_std": 1e-6})
    assert layer.dist_token_init_std == 0.02 and layer(np.zeros((1, 3, 4), "float32")).shape == (1, 5, 4)


@pytest.mark.parametrize("wrong", [None, "zero_bias", "normal_kernel", "keras_glorot"])
def test_patch_embedding_init_is_pytorch_conv2d_default(wrong):
    """timm leaves patch_embed.proj at PyTorch's Conv2d default, U(+-1/sqrt(fan_in)) for the
    kernel and the bias; the check rejects the wrong initialisers (the old zero bias among them)."""
    import torch

    torch.manual_seed(0)
    ref = torch.nn.Conv2d(3, 192, 16, 16)
    ref_w, ref_b = ref.weight.detach().numpy(), ref.bias.detach().numpy()
    layer = L.PatchEmbedding(patch_size=16, embed_dim=192)
    layer.build((None, 32, 32, 3))
    w, b = np.asarray(layer.proj.kernel), np.asarray(layer.proj.bias)
    bound = 1 / np.sqrt(3 * 16 * 16)
    if wrong == "zero_bias":
        b = np.zeros_like(b)
    elif wrong == "normal_kernel":  # the right std, the wrong distribution
        w = np.asarray(keras.initializers.RandomNormal(stddev=bound / np.sqrt(3))(w.shape))
    elif wrong == "keras_glorot":  # Keras's default
        w = np.asarray(keras.initializers.GlorotUniform()(w.shape))
    # KS critical value at p ~ 1e-4 for two samples of these sizes
    same = [ks_distance(x, r) < 2.2 * np.sqrt(2 / x.size) and np.abs(x).max() <= bound
            for x, r in ((w, ref_w), (b, ref_b))]
    assert all(same) == (wrong is None), (wrong, same)


def test_bad_arguments_raise_clearly():
    with pytest.raises(ValueError, match="not divisible"):
        L.Attention(dim=10, num_heads=3)
    with pytest.raises(ValueError, match="kind"):
        L.PositionEmbedding((2, 2), kind="relative")
    with pytest.raises(ValueError, match="num_tokens"):
        L.PrefixTokens(3)
    with pytest.raises(ValueError, match="registers"):
        L.PrefixTokens(2, reg_tokens=4)  # timm's distilled DeiT has no registers
    with pytest.raises(ValueError, match="activation"):
        L.Mlp(8, 8, act="relu6")


def test_tnt_block_returns_inner_and_outer_attention():
    block = L.TNTBlock(inner_dim=8, embed_dim=16, num_words=4, num_heads_inner=2, num_heads_outer=4)
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((2 * 6, 4, 8)).astype("float32")  # B=2, N=6 patches, 4 words
    patches = rng.standard_normal((2, 7, 16)).astype("float32")
    p1, x1 = block([pixels, patches])
    p2, x2, inner, outer = block([pixels, patches], return_attention_scores=True)
    assert inner.shape == (12, 2, 4, 4) and outer.shape == (2, 4, 7, 7)
    np.testing.assert_allclose(np.asarray(inner).sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(outer).sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(p1), np.asarray(p2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(x1), np.asarray(x2), rtol=1e-5, atol=1e-5)


def test_a_sincos_model_saved_before_timms_order_keeps_its_numbers():
    """0.1.0 saved PositionEmbedding configs without `sincos_order` and built MoCo's order:
    such a config still builds that table, a new one builds timm's."""
    from keras_vitnt.layers.embedding import sincos_2d

    old = L.PositionEmbedding.from_config({"name": "pos_embed", "grid_size": (2, 3), "num_prefix_tokens": 1,
                                           "kind": "sincos_2d"})
    new = L.PositionEmbedding((2, 3), 1, kind="sincos_2d")
    x = np.zeros((1, 7, 8), "float32")
    np.testing.assert_allclose(np.asarray(old(x))[0, 1:], sincos_2d((2, 3), 8, order="moco"))
    np.testing.assert_allclose(np.asarray(new(x))[0, 1:], sincos_2d((2, 3), 8, order="timm"))
    assert L.PositionEmbedding.from_config(new.get_config()).sincos_order == "timm"


@pytest.mark.parametrize("dtype, tol", [("float32", 3e-7), ("bfloat16", 8e-3)])
def test_training_gelu_gradient_is_exact_gelus(dtype, tol):
    """In training on TensorFlow, exact GELU's gradient is written out so that it keeps only its
    input (TensorFlow's own keeps three more hidden-width tensors): same values as ops.gelu and
    the derivative Phi(x) + x phi(x), computed here in float64."""
    import math

    from keras_vitnt.layers import blocks

    x64 = np.linspace(-9.0, 9.0, 4001)
    phi = np.exp(-0.5 * x64**2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + np.vectorize(math.erf)(x64 / math.sqrt(2)))
    x = keras.ops.cast(x64.astype("float32"), dtype)
    if keras.backend.backend() != "tensorflow":
        pytest.skip("checked with TensorFlow's GradientTape here; JAX's in the backends job")
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(x)
        y = blocks.gelu(x, training=True)
    grad = keras.ops.convert_to_numpy(keras.ops.cast(tape.gradient(y, x), "float32"))
    exact = keras.ops.convert_to_numpy(keras.ops.cast(blocks.gelu(x), "float32"))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(keras.ops.cast(y, "float32")), exact)
    np.testing.assert_allclose(grad, cdf + x64 * phi, rtol=0, atol=tol * 1.2)


def test_mlp_takes_its_training_forms_in_training_only(monkeypatch):
    """In training on TensorFlow a plain GELU MLP runs GELU and fc2 as `gelu_dense`; with a dropout
    between them, GELU alone keeps its input only (`_gelu_keeping_input`); inference takes neither."""
    from keras_vitnt.layers import blocks

    calls = []
    dense_fn, gelu_fn = blocks.gelu_dense, blocks._gelu_keeping_input
    monkeypatch.setattr(blocks, "gelu_dense", lambda *a: calls.append("gelu_dense") or dense_fn(*a))
    monkeypatch.setattr(blocks, "_gelu_keeping_input", lambda x: calls.append("gelu") or gelu_fn(x))
    x = np.random.default_rng(0).standard_normal((6, 8)).astype("float32")
    on_tf = keras.backend.backend() in blocks.TRAINING_FORM_BACKENDS
    cases = ((L.Mlp(hidden_dim=16, out_dim=8), "gelu_dense"), (L.Mlp(hidden_dim=16, out_dim=8, drop=0.5), "gelu"))
    for mlp, form in cases:
        y_infer = mlp(x, training=False)
        assert not calls
        y_train = mlp(x, training=True)
        assert calls == ([form] if on_tf else []), calls
        calls.clear()
        if not mlp.drop:
            np.testing.assert_allclose(np.asarray(y_train), np.asarray(y_infer), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("kind", ["vit", "tnt", "parallel"])
def test_training_forms_give_autodiffs_gradients(kind, policy):
    """The training forms (written-out GELU gradient, GELU + fc2 recomputing GELU, attention
    recomputing its softmax weights) against the inference forms' autodiff gradients, for the
    inputs and every weight of a ViT, TNT and parallel block; under
    mixed_bfloat16 both are compared with the float32 autodiff gradients and must be as close."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("checked with TensorFlow's GradientTape here; JAX's in the backends job")
    import tensorflow as tf

    rng = np.random.default_rng(0)
    if kind != "tnt":
        inputs = [rng.standard_normal((3, 7, 64)).astype("float32")]
    else:
        inputs = [rng.standard_normal((15, 16, 16)).astype("float32"),
                  rng.standard_normal((3, 6, 64)).astype("float32")]

    def make(dtype):
        keras.utils.set_random_seed(1)
        if kind == "vit":
            block = L.TransformerBlock(dim=64, num_heads=4, dtype=dtype)
        elif kind == "parallel":  # timm's ParallelScalingBlock: the same attention, beside a fused MLP
            block = L.ParallelScalingBlock(dim=64, num_heads=4, dtype=dtype)
        else:
            block = L.TNTBlock(inner_dim=16, embed_dim=64, num_words=16, num_heads_inner=2, num_heads_outer=4,
                               dtype=dtype)
        block(inputs[0] if kind != "tnt" else list(inputs))
        return block

    def grads(block, training):
        xs = [tf.constant(a) for a in inputs]
        with tf.GradientTape() as tape:
            tape.watch(xs)
            out = block(xs[0] if kind != "tnt" else xs, training=training)
            loss = sum(tf.reduce_sum(tf.cast(o, "float32") ** 2) for o in tf.nest.flatten(out))
        return [np.asarray(tf.cast(g, "float32")) for g in tape.gradient(loss, xs + block.trainable_variables)]

    def err(a, b):
        return max(float(np.max(np.abs(u - v)) / np.max(np.abs(v))) for u, v in zip(a, b))

    ref_block = make("float32")
    ref = grads(ref_block, False)
    block = make(policy)
    for v, w in zip(block.weights, ref_block.weights):
        v.assign(w)
    trained, autodiff = grads(block, True), grads(block, False)
    assert len(trained) == len(ref) == len(block.trainable_variables) + len(inputs)
    if policy == "float32":
        assert err(trained, autodiff) < 2e-6
    else:  # the same rounding error as autodiff's in bfloat16 (measured 1.7e-2 / 4.0e-2 for both)
        assert err(trained, ref) <= max(1.25 * err(autodiff, ref), 1e-2)


def test_gelu_dense_keeps_no_gelu_output_for_the_backward_pass():
    """XLA's CSE would merge the backward pass's recomputed gelu(h) with the forward one (then kept
    until the backward pass, as autodiff keeps it); in the compiled training step, the forward
    fc2 matmul's input must feed no other matmul."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("checked with TensorFlow's GradientTape here; JAX's in the backends job")
    import re

    import tensorflow as tf

    mlp = L.Mlp(hidden_dim=48, out_dim=20)
    x = tf.constant(np.random.default_rng(0).standard_normal((36, 20)).astype("float32"))
    mlp(x)

    @tf.function(jit_compile=True)
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(mlp(x, training=True) ** 2)
        return tape.gradient(loss, mlp.trainable_variables)

    hlo = step.experimental_get_compiler_ir(x)(stage="optimized_hlo")
    dots = re.findall(r"%(\S+) = f32\[(\d+),(\d+)\]\S* dot\(%([^,\s]+), %([^,\s)]+)\)", hlo)
    forward = [d for d in dots if d[1:3] == ("36", "20") and "fusion" in d[3]]  # fc2: gelu(h) @ kernel
    assert len(forward) == 1, dots
    gelu_out = forward[0][3]
    assert not [d for d in dots if d is not forward[0] and gelu_out in d[3:]], (gelu_out, dots)


def _live_at_once(hlo, shape):
    """The most values of `shape` (e.g. "2,3,11,11") alive at one time in a scheduled optimized HLO
    module's entry computation: each alive from the instruction that makes it to its last use."""
    import re

    assert "is_scheduled=true" in hlo  # the entry computation's instructions are in the order they run
    entry = hlo[hlo.index("\nENTRY"):]
    lines = [line for line in entry[: entry.index("\n}")].splitlines()[1:] if " = " in line]
    made, last_use = {}, {}
    for i, line in enumerate(lines):
        name, rest = line.split(" = ", 1)
        made[name.replace("ROOT", "").strip().lstrip("%")] = (i, rest.split(" ")[0])
        for used in re.findall(r"%([\w.\-]+)", rest):
            last_use[used] = i
    spans = [(i, last_use.get(name, i)) for name, (i, s) in made.items() if f"[{shape}]" in s]
    return max(sum(a <= i <= b for a, b in spans) for i in range(len(lines)))


def test_training_attention_keeps_no_softmax_weights_for_the_backward_pass(monkeypatch):
    """In training on TensorFlow, attention keeps the row log-sum-exp and computes the softmax
    weights again in the backward pass (`attend_recomputed`). In the XLA-compiled gradient of six
    layers, at most a few (heads, B, T, T) tensors are alive at once (one layer's backward work),
    where autodiff keeps every layer's weights until the backward pass reaches it; so does the
    recomputation when nothing ties it to the backward pass (XLA then moves it into the forward
    pass). Its gradients are autodiff's (test_training_forms_give_autodiffs_gradients)."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's attention; the other backends take ops.dot_product_attention")
    import tensorflow as tf

    from keras_vitnt.layers import attention

    x = tf.constant(np.random.default_rng(0).standard_normal((3, 11, 16)).astype("float32"))

    def live_weights():
        stack = [L.Attention(dim=16, num_heads=2) for _ in range(6)]
        for layer in stack:
            layer(x)

        @tf.function(jit_compile=True)
        def step(x):
            with tf.GradientTape() as tape:
                y = x
                for layer in stack:
                    y = layer(y, training=True)
                loss = tf.reduce_sum(y**2)
            return tape.gradient(loss, [w for layer in stack for w in layer.trainable_variables])

        return _live_at_once(step.experimental_get_compiler_ir(x)(stage="optimized_hlo"), "2,3,11,11")

    assert live_weights() <= 3
    monkeypatch.setattr(attention, "recompute_after", lambda upstream, *tensors: (upstream, *tensors))
    assert live_weights() >= 6  # not tied to the backward pass
    monkeypatch.setattr(attention, "attend_recomputed", lambda q, k, v, scale: attention.attend(
        q, k, v, scale, False, keras.layers.Dropout(0.0), False)[0])
    assert live_weights() >= 6  # autodiff's gradient
