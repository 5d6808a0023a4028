"""The registry: every timm name, its parameter count (formula == timm == Keras), tags."""

import keras
import pytest

import keras_vitnt
from keras_vitnt.models import registry

# The names timm registers for plain ViT/DeiT and TNT (timm 1.0.x).
EXPECTED = {
    "deit_base_distilled_patch16_224", "deit_base_distilled_patch16_384", "deit_base_patch16_224",
    "deit_base_patch16_384", "deit_small_distilled_patch16_224", "deit_small_patch16_224",
    "deit_tiny_distilled_patch16_224", "deit_tiny_patch16_224", "tnt_b_patch16_224", "tnt_s_legacy_patch16_224",
    "tnt_s_patch16_224", "vit_base_patch8_224", "vit_base_patch16_224", "vit_base_patch16_384",
    "vit_base_patch32_224", "vit_base_patch32_384", "vit_huge_patch14_224", "vit_large_patch14_224",
    "vit_large_patch16_224", "vit_large_patch16_384", "vit_large_patch32_224", "vit_large_patch32_384",
    "vit_small_patch8_224", "vit_small_patch16_224", "vit_small_patch16_384", "vit_small_patch32_224",
    "vit_small_patch32_384", "vit_tiny_patch16_224", "vit_tiny_patch16_384",
}
KERAS_FAST = ["vit_tiny_patch16_384", "vit_small_patch8_224", "deit_small_distilled_patch16_224",
              "tnt_s_patch16_224", "tnt_s_legacy_patch16_224", "tnt_b_patch16_224"]


def test_registry_holds_every_plain_timm_vit_deit_tnt_name():
    import re

    import timm

    pattern = re.compile(
        r"^(vit_(tiny|small|base|large|huge)_patch(8|14|16|32)_(224|384)"
        r"|deit_(tiny|small|base)(_distilled)?_patch16_(224|384)|tnt_\w+)$"
    )
    assert {n for n in timm.list_models() if pattern.match(n)} == EXPECTED
    assert EXPECTED <= set(registry.list_models())


def test_registry_is_timms_vision_transformer_family():
    """Every architecture timm builds with VisionTransformer (vision_transformer.py, deit.py) or TNT is
    registered or listed as not supported yet, with the options that keep it out."""
    import timm

    from keras_vitnt.models.tags import UNSUPPORTED

    timm_names = {n for m in ("vision_transformer", "deit", "tnt") for n in timm.list_models(module=m)}
    assert set(registry.list_models()) | set(UNSUPPORTED) == timm_names
    assert not set(registry.list_models()) & set(UNSUPPORTED)
    assert len(registry.list_models()) >= 152
    deit3 = registry.REGISTRY["deit3_small_patch16_224"].config
    assert deit3.init_values == 1e-6 and deit3.no_embed_class and deit3.num_prefix_tokens == 1
    reg = registry.REGISTRY["vit_small_patch14_reg4_dinov2"].config
    assert reg.reg_tokens == 4 and reg.img_size == (518, 518) and reg.num_prefix_tokens == 5
    clip = registry.REGISTRY["vit_base_patch16_clip_224"].config
    assert clip.pre_norm and clip.norm_eps == 1e-5


@pytest.mark.parametrize("name", registry.list_models())
def test_param_formula_equals_timm(name):
    import timm
    import torch

    info = registry.REGISTRY[name]
    with torch.device("meta"):  # one build per name (149 of them): 10 classes, so the head term counts too
        tm = timm.create_model(name, num_classes=10)
    assert info.config.count_params(classes=10) == sum(p.numel() for p in tm.parameters())


def test_tnt_param_counts_are_the_published_ones():
    counts = {n: registry.REGISTRY[n].config.count_params() for n in
              ("tnt_s_patch16_224", "tnt_b_patch16_224", "tnt_s_legacy_patch16_224")}
    assert counts == {"tnt_s_patch16_224": 23_768_584, "tnt_b_patch16_224": 65_428_680,
                      "tnt_s_legacy_patch16_224": 23_755_336}
    # the older spelling (a family and its timm keywords, ModelInfo.arch) still counts the same
    legacy = registry.REGISTRY["tnt_s_legacy_patch16_224"]
    assert legacy.arch["legacy"] is True and legacy.arch["img_size"] == 224
    assert registry.count_params("tnt", legacy.arch) == 23_755_336


def _keras_count(name):
    info = registry.REGISTRY[name]
    model = keras_vitnt.create_model(name, weights=None)
    n = model.count_params()
    del model
    keras.backend.clear_session()
    return n, info.config.count_params()


@pytest.mark.parametrize("name", KERAS_FAST)
def test_keras_param_count_equals_formula(name):
    n, expected = _keras_count(name)
    assert n == expected


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED - set(KERAS_FAST)))
def test_keras_param_count_equals_formula_all(name):
    n, expected = _keras_count(name)
    assert n == expected


def test_tags_and_normalisation():
    vit = registry.get_model_info("vit_base_patch16_224")
    assert vit.default_tag.tag == "augreg2_in21k_ft_in1k"
    assert vit.default_tag.hub_id == "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"
    assert vit.default_tag.mean == (0.5, 0.5, 0.5)
    assert vit.get_tag("augreg_in21k").num_classes == 21843
    deit = registry.get_model_info("deit_small_distilled_patch16_224.fb_in1k")
    assert deit.default_tag.mean == (0.485, 0.456, 0.406) and deit.default_tag.top1 == 81.204  # timm's results table
    assert registry.get_model_info("tnt_s_patch16_224").default_tag.top1 == 81.506
    assert registry.get_model_info("tnt_b_patch16_224").default_tag.top1 == 82.864
    with pytest.raises(ValueError, match="augreg_in21k_ft_in1k"):
        vit.get_tag("nope")


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match="vit_base_patch16_224"):
        keras_vitnt.create_model("vit_base_patch16_244", weights=None)


def test_list_models_patterns():
    assert keras_vitnt.list_models("tnt_*") == ["tnt_b_patch16_224", "tnt_s_legacy_patch16_224", "tnt_s_patch16_224"]
    assert "deit_tiny_patch16_224.fb_in1k" in keras_vitnt.list_models(pretrained=True)


def test_vit_variant_decoding():
    assert registry.vit_variant("Ti/4") == ("Ti", 4)
    assert registry.vit_variant("H/14") == ("H", 14)
    for bad in ("X/16", "B16", "B/"):
        with pytest.raises(ValueError, match="variant"):
            registry.vit_variant(bad)


@pytest.mark.parametrize("ctor", ["ViT", "DeiT", "TNT", "create_model"])
def test_every_constructor_takes_exactly_the_builders_options(ctor):
    """The keras.applications keywords are spelled out in each signature (help() and IDEs show them),
    and each one reaches the builder: the same names, in the same order, with the same defaults."""
    import dataclasses
    import inspect

    from keras_vitnt.models.builder import BuildOptions

    params = inspect.signature(getattr(keras_vitnt, ctor)).parameters.values()
    shared = [(p.name, p.default) for p in params if p.kind is p.KEYWORD_ONLY and p.name != "distilled"]
    assert shared == [(f.name, f.default) for f in dataclasses.fields(BuildOptions)]


def test_model_names_follow_one_rule():
    spec = registry.parse_model_name("deit_small_patch16_224.fb_in1k")
    assert spec.info.name == spec.name == "deit_small_patch16_224" and spec.tag.tag == "fb_in1k"
    assert spec.config.embed_dim == 384 and spec.config.norm_eps == 1e-6
    spec = registry.parse_model_name("vit:Ti/4")
    assert spec.info is None and spec.name == "vit_tiny_patch4" and spec.config.patch_size == 4
    assert registry.parse_model_name("tnt:S").info is registry.REGISTRY["tnt_s_patch16_224"]
    assert registry.parse_model_name("vit:B/16").info is registry.REGISTRY["vit_base_patch16_224"]
    with pytest.raises(ValueError, match="Unknown TNT variant"):
        registry.parse_model_name("tnt:M")


def test_overrides_use_timms_names_and_are_checked():
    config = registry.REGISTRY["vit_tiny_patch16_224"].config
    assert config.replace(depth=2, pos_embed="learn").pos_embed == "learned_1d"
    with pytest.raises(TypeError, match="norm_eps"):  # a fact of the family, not one of timm's keywords
        config.replace(norm_eps=1e-5)
    with pytest.raises(ValueError, match="global_pool='avg'"):
        config.replace(class_token=False)


def test_the_model_table_in_docs_lists_every_registered_name():
    """docs/models.md is generated (scripts/gen_model_table.py): regenerate it when the registry changes."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "models.md").read_text()
    assert re.findall(r"^\| `([\w.]+)` \|", text, flags=re.M) == registry.list_models()
