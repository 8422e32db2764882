"""LapeViTConfig: presets are data, and every invalid value fails at construction naming the value and the rule."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from pathlib import Path

import pytest
from conftest import tiny_config
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, PreTrainedConfig

from lape_hf import PRESETS, LapeViTConfig
from lape_hf.hub import model_card
from lape_hf.models.lape_vit.configuration_lape_vit import (
    PE_JOIN_DESCRIPTIONS,
    PE_JOINS,
    POSITION_EMBEDDING_DESCRIPTIONS,
    POSITION_EMBEDDING_TYPES,
    LapeViTConfigError,
    check_preset_name,
)

# The fields LapeViTConfig adds to transformers' own; derived, so that a new field is covered by the tests below.
LAPE_FIELDS = [
    field
    for field in dataclasses.fields(LapeViTConfig)
    if field.name not in {base.name for base in dataclasses.fields(PreTrainedConfig)}
]
# Wrong for every field: not finite, negative, missing, of a container type, or strings spelling a number or a bool.
INVALID_FOR_EVERY_FIELD = [math.nan, math.inf, -math.inf, -1, -0.5, "1", "no", "False", "true", "", None, [], {}]


def invalid_values(field: dataclasses.Field) -> list[typing.Any]:
    """A few values of the wrong type or range for `field`: those above, plus near misses of its own type."""
    types = typing.get_args(field.type) or (field.type,)
    values = list(INVALID_FOR_EVERY_FIELD)
    if int in types and float not in types:
        values += [31.5, 2.0, True]  # a fraction, an integral float, a bool: none is an integer
    if float in types:
        values += [True, "1e-6"]
    if bool in types:
        values += [0, 1, 1.0]
    return values


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(pe_join="mode2"), "pe_join='mode2' is not supported; allowed: 'lape', 'lape_shared', 'add'"),
        (dict(position_embedding_type="rope"), "position_embedding_type='rope' is not supported"),
        (dict(relative_position_bias="swin"), "relative_position_bias='swin' is not supported"),
        (dict(tokenizer_type="hybrid"), "tokenizer_type='hybrid' is not supported; allowed: 'patch', 'conv'"),
        (dict(pooler_type="max"), "pooler_type='max' is not supported; allowed: 'cls', 'sequence', 'mean'"),
        (dict(encoder_layer_form="post_norm"), "encoder_layer_form='post_norm' is not supported"),
        (dict(hidden_act="swishy"), "hidden_act='swishy' is not a known activation"),
        (dict(hidden_size=33), "hidden_size=33 must be divisible by num_attention_heads=2"),
        (
            dict(hidden_size=34, num_attention_heads=2, position_embedding_type="sinusoidal_2d"),
            "divisible by 4, got 34",
        ),
        (dict(image_size=30), "image_size=30 must be divisible by patch_size=8"),
        (dict(image_size=[32, 36]), r"image_size=\[32, 36\] must be divisible by patch_size=8"),
        (dict(image_size=[32, 32, 3]), "must be an integer or a"),
        (dict(hidden_dropout_prob=-0.1), r"hidden_dropout_prob=-0.1 must be a number in \[0, 1\)"),
        (dict(attention_probs_dropout_prob=1.5), "attention_probs_dropout_prob=1.5 must be a number in"),
        (dict(drop_path_rate=-1), "drop_path_rate=-1 must be a number in"),
        (dict(num_hidden_layers=0), "num_hidden_layers=0 must be an integer >= 1"),
        (dict(patch_size=0), "patch_size=0 must be an integer >= 1"),
        (dict(layer_norm_eps=0), "layer_norm_eps=0 must be a positive number"),
        (dict(relative_position_layer_norm_eps=-1e-5), "relative_position_layer_norm_eps=-1e-05 must be a positive"),
        (dict(pe_join="unshare", position_embedding_type="sinusoidal_1d"), "needs position_embedding_type='learnable'"),
        (dict(use_distillation_token=True, pooler_type="mean"), "use_distillation_token=True needs pooler_type='cls'"),
        (dict(tokenizer_type="conv", conv_num_layers=0), "conv_num_layers=0 must be an integer >= 1"),
        (dict(tokenizer_type="conv", conv_stride=0), "conv_stride=0 must be an integer >= 1"),
        (dict(tokenizer_type="conv", conv_pooling_kernel_size=2, conv_pooling_padding=2), "at most half of"),
        (
            dict(tokenizer_type="conv", image_size=4, conv_kernel_size=7, conv_padding=0),
            "turns image_size=4 into a -1x-1 grid",
        ),
        (dict(layer_norm_eps=math.nan), r"layer_norm_eps=nan must be a positive number \(finite"),
        (dict(relative_position_layer_norm_eps=math.inf), "relative_position_layer_norm_eps=inf must be a positive"),
        (dict(initializer_range=math.nan), "initializer_range=nan must be a finite number >= 0"),
        (dict(initializer_range=math.inf), "initializer_range=inf must be a finite number >= 0"),
        (dict(qkv_bias="no"), r"qkv_bias='no' must be true or false \(a bool\), got str"),
        (dict(use_distillation_token="False"), r"use_distillation_token='False' must be true or false"),
        (dict(image_size=31.5), r"image_size=31.5 must be an integer or a \[height, width\] pair of integers"),
        (dict(image_size="32"), "image_size='32' must be an integer or a"),
        (dict(image_size=[32]), r"image_size=\[32\] must be an integer or a \[height, width\] pair"),
        (dict(num_hidden_layers=2.0), "num_hidden_layers=2.0 must be an integer, got float"),
        (dict(num_labels=-1), r"num_labels=-1 must be an integer >= 0 \(0: no classifier head"),
        (dict(num_labels=2.5), "num_labels=2.5 must be an integer >= 0"),
        (dict(num_labels="3"), "num_labels='3' must be an integer >= 0"),
    ],
)
def test_invalid_values_fail_at_construction_with_a_clear_message(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


@pytest.mark.parametrize("field", LAPE_FIELDS, ids=lambda field: field.name)
def test_every_field_refuses_values_of_the_wrong_type_or_range_naming_the_field(field):
    for value in invalid_values(field):
        with pytest.raises(ValueError, match=f"^{re.escape(field.name)}=") as error:
            tiny_config(**{field.name: value})
        assert isinstance(error.value, StrictDataclassError), "also what transformers' typed configs raise"


def test_every_lape_field_is_typed_and_checked_by_the_strict_dataclass():
    assert len(LAPE_FIELDS) == 32  # 30 of the model, apply_layernorm and reshape_hidden_states of its backbone
    assert all(field.name in LapeViTConfig.__validators__ for field in LAPE_FIELDS)


def test_a_bad_value_set_after_construction_is_refused_at_once():
    config = tiny_config()
    with pytest.raises(ValueError, match="pe_join='mode2' is not supported"):
        config.pe_join = "mode2"
    with pytest.raises(ValueError, match="layer_norm_eps=nan"):
        config.layer_norm_eps = math.nan
    with pytest.raises(ValueError, match="num_labels=-1"):
        config.num_labels = -1
    assert (config.pe_join, config.layer_norm_eps, config.num_labels) == ("lape", 1e-6, 5)


def test_a_rule_between_fields_broken_after_construction_is_refused_when_saving(tmp_path):
    config = tiny_config()
    config.hidden_size = 33
    with pytest.raises(LapeViTConfigError, match="hidden_size=33 must be divisible by num_attention_heads=2"):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_valid_spellings_are_kept_or_normalized():
    config = tiny_config(image_size=(32, 16), hidden_dropout_prob=0, layer_norm_eps=1, num_labels=0)
    assert config.image_size == [32, 16] and config.image_size_2d == (32, 16)  # a tuple is stored as JSON gives it back
    assert (config.hidden_dropout_prob, config.layer_norm_eps) == (0, 1)  # integers are numbers
    assert config.num_labels == 0 and config.id2label == {}  # no classifier head


def test_descriptions_are_the_one_home_of_the_allowed_joins_and_pe_types():
    assert PE_JOINS == tuple(PE_JOIN_DESCRIPTIONS) == ("lape", "lape_shared", "add", "share", "unshare")
    assert POSITION_EMBEDDING_TYPES == tuple(POSITION_EMBEDDING_DESCRIPTIONS)
    assert POSITION_EMBEDDING_TYPES == ("learnable", "sinusoidal_1d", "sinusoidal_2d", "none")
    assert model_card.PE_JOIN_DESCRIPTIONS is PE_JOIN_DESCRIPTIONS
    assert model_card.POSITION_EMBEDDING_DESCRIPTIONS is POSITION_EMBEDDING_DESCRIPTIONS


def test_token_counts_follow_tokenizer_and_pooler():
    assert tiny_config().num_tokens == 16 + 1
    assert tiny_config(use_distillation_token=True).num_tokens == 16 + 2
    assert tiny_config(pooler_type="sequence").num_tokens == 16  # no class token: PE over patches only
    assert tiny_config(image_size=[32, 16]).token_grid_size() == (4, 2)
    assert tiny_config().token_grid_size(64, 48) == (8, 6)


@pytest.mark.parametrize(
    "preset,grid,prefix",
    [
        ("deit-tiny", (14, 14), 1),
        ("deit-small", (14, 14), 1),
        ("deit-base", (14, 14), 1),
        ("deit-tiny-distilled", (14, 14), 2),
        ("vit-lite-7/4", (8, 8), 1),
        ("vit-lite-6/4", (8, 8), 1),
        ("cvt-7/4", (8, 8), 0),
        ("cct-7/3x1", (16, 16), 0),  # 3x3 conv stride 1 + 3x3/2 max-pool: 32 -> 16
        ("cct-2/3x2", (8, 8), 0),  # twice: 32 -> 16 -> 8
        ("cct-14/7x2", (14, 14), 0),  # 7x7/2 conv + pool, twice: 224 -> 112 -> 56 -> 28 -> 14
    ],
)
def test_presets_have_the_papers_token_grids(preset, grid, prefix):
    config = LapeViTConfig.from_preset(preset)
    assert config.token_grid_size() == grid
    assert config.num_prefix_tokens == prefix


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("pe_join", ["lape", "lape_shared", "add", "share", "unshare"])
def test_every_preset_combines_with_every_join(preset, pe_join):
    config = LapeViTConfig.from_preset(preset, pe_join=pe_join, position_embedding_type="learnable")
    assert config.pe_join == pe_join
    for position_embedding_type in ("sinusoidal_1d", "sinusoidal_2d", "none"):
        if pe_join != "unshare":
            LapeViTConfig.from_preset(preset, pe_join=pe_join, position_embedding_type=position_embedding_type)


def test_deit_tiny_preset_matches_the_paper_shape():
    config = LapeViTConfig.from_preset("deit-tiny")
    shape = (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size)
    assert shape == (192, 12, 3, 768)
    assert (config.layer_norm_eps, config.qkv_bias, config.image_size, config.patch_size) == (1e-6, True, 224, 16)


def test_unknown_preset_names_the_allowed_ones():
    with pytest.raises(ValueError, match="Unknown preset 'deit-huge'; allowed: .*deit-tiny"):
        LapeViTConfig.from_preset("deit-huge")
    with pytest.raises(ValueError, match="Unknown preset 'vit-huge'; allowed: cct-14/7x2, cct-2/3x2, "):
        check_preset_name("vit-huge")
    for name in PRESETS:
        check_preset_name(name)


def test_config_round_trips_through_json(tmp_path):
    config = tiny_config(pe_join="lape_shared", position_embedding_type="sinusoidal_2d", image_size=[32, 16])
    config.save_pretrained(tmp_path)
    loaded = LapeViTConfig.from_pretrained(tmp_path)
    assert loaded.pe_join == "lape_shared" and loaded.image_size_2d == (32, 16)
    assert loaded.to_diff_dict() == config.to_diff_dict()


@pytest.mark.parametrize(
    "overrides",
    [dict(), dict(image_size=[32, 16], pe_join="unshare", qkv_bias=False), dict(tokenizer_type="conv", num_labels=0)],
    ids=["default", "pair-unshare", "conv-headless"],
)
def test_config_round_trips_through_its_dict_and_json(overrides):
    config = tiny_config(**overrides)
    assert LapeViTConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
    assert LapeViTConfig.from_dict(json.loads(config.to_json_string())).to_dict() == config.to_dict()


def test_a_config_json_written_before_the_typed_config_loads(tmp_path):
    """A config.json as lape_hf 0.1.0 wrote it (from the saved-model fixture) loads through AutoConfig, every field
    as written."""
    saved = Path(__file__).resolve().parent / "fixtures" / "saved_0_1" / "distilled" / "config.json"
    (tmp_path / "config.json").write_text(saved.read_text())
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is LapeViTConfig
    written = json.loads(saved.read_text())
    assert {field.name: getattr(config, field.name) for field in LAPE_FIELDS if field.name in written} == {
        field.name: written[field.name] for field in LAPE_FIELDS if field.name in written
    }
    later_fields = [field for field in LAPE_FIELDS if field.name not in written]
    assert [field.name for field in later_fields] == ["apply_layernorm", "reshape_hidden_states"]
    assert all(getattr(config, field.name) == field.default for field in later_fields)
    assert config.id2label == {0: "cat", 1: "dog", 2: "bird"} and config.num_labels == 3
