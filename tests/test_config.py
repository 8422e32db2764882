"""LapeViTConfig: presets are data, and every invalid value fails at construction naming the value and the rule."""

from __future__ import annotations

import pytest
from conftest import tiny_config

from lape_hf import PRESETS, LapeViTConfig


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
    ],
)
def test_invalid_values_fail_at_construction_with_a_clear_message(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


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


def test_config_round_trips_through_json(tmp_path):
    config = tiny_config(pe_join="lape_shared", position_embedding_type="sinusoidal_2d", image_size=[32, 16])
    config.save_pretrained(tmp_path)
    loaded = LapeViTConfig.from_pretrained(tmp_path)
    assert loaded.pe_join == "lape_shared" and loaded.image_size_2d == (32, 16)
    assert loaded.to_diff_dict() == config.to_diff_dict()
