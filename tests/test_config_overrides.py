"""The command-line syntax for LapeViTConfig fields, shared by train.py and convert_checkpoint.py."""

from __future__ import annotations

import pytest
from script_loader import load_script as load_script_module

from lape_hf.config_overrides import parse_config_overrides
from lape_hf.training import ModelArguments
from lape_hf.training.run import build_config


def test_values_take_the_declared_type_of_their_field():
    assert parse_config_overrides("image_size=16,qkv_bias=false,hidden_act=gelu,drop_path_rate=0.1") == {
        "image_size": 16,
        "qkv_bias": False,
        "hidden_act": "gelu",
        "drop_path_rate": 0.1,
    }
    assert parse_config_overrides("problem_type=multi_label_classification") == {
        "problem_type": "multi_label_classification"
    }


def test_a_list_or_a_dict_is_one_value_whatever_commas_it_holds():
    # transformers' update_from_string would split these at their commas.
    assert parse_config_overrides("image_size=[16,32],patch_size=4") == {"image_size": [16, 32], "patch_size": 4}
    assert parse_config_overrides('id2label={"0":"cat","1":"dog"},num_hidden_layers=2') == {
        "id2label": {"0": "cat", "1": "dog"},
        "num_hidden_layers": 2,
    }


def test_quoted_strings_hold_any_character_and_null_clears_an_optional_field():
    assert parse_config_overrides('id2label={"0":"a)","1":"b,c"},hidden_act="gelu",problem_type=null') == {
        "id2label": {"0": "a)", "1": "b,c"},
        "hidden_act": "gelu",
        "problem_type": None,
    }
    # A stray closing bracket does not hide the commas after it.
    assert parse_config_overrides("hidden_act=a),qkv_bias=true") == {"hidden_act": "a)", "qkv_bias": True}


def test_a_repeated_flag_reads_as_one_comma_separated_list():
    assert parse_config_overrides(["qkv_bias=true", "layer_norm_eps=1e-5,hidden_size=8"]) == {
        "qkv_bias": True,
        "layer_norm_eps": 1e-5,
        "hidden_size": 8,
    }
    assert parse_config_overrides([]) == parse_config_overrides(None) == parse_config_overrides("") == {}
    # Each flag is read on its own: an unbalanced bracket in one does not swallow the next.
    with pytest.raises(ValueError, match=r"image_size='\[16' is not a list"):
        parse_config_overrides(["image_size=[16", "qkv_bias=true"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hiden_size=3", "'hiden_size' is not a LapeViTConfig field; allowed: .*'hidden_size'"),
        ("image_size", "item 'image_size' is not of the form name=value"),
        ("qkv_bias=no", "qkv_bias='no' must be true or false"),
        ("hidden_size=1.5", "hidden_size='1.5' is not of the field's type"),
        ("image_size=[16,", "image_size='\\[16,' is not a list such as \\[16,32\\]"),
        ("id2label=cat", "id2label='cat' is not a dict such as"),
        ("id2label=[1]", "id2label='\\[1\\]' is not a dict such as"),
        ("problem_type=ranking", "problem_type='ranking' is not of the field's type"),
        ("qkv_bias=null", "qkv_bias='null' must be true or false"),
        ("model_type=vit", "'model_type' is not a LapeViTConfig field"),
    ],
)
def test_a_bad_item_names_itself_and_what_is_allowed(text: str, message: str):
    with pytest.raises(ValueError, match=message):
        parse_config_overrides(text)


def test_train_builds_its_config_from_the_overrides():
    model_args = ModelArguments(preset="vit-lite-7/4", config_overrides="image_size=16,patch_size=4,qkv_bias=false")
    config = build_config(model_args, ["a", "b"])
    assert (config.image_size, config.patch_size, config.qkv_bias, config.num_labels) == (16, 4, False, 2)


def test_train_refuses_to_name_the_classes_the_data_names():
    with pytest.raises(ValueError, match="cannot set id2label: the label set comes from the data's classes"):
        ModelArguments(config_overrides='id2label={"0":"cat"}')


def test_convert_checkpoint_reads_the_same_syntax():
    arguments_class = load_script_module("convert_checkpoint").ConvertArguments
    arguments = arguments_class(
        source="timm",
        checkpoint="unused.pth",
        output_dir="unused",
        config_overrides=["layer_norm_eps=1e-5,qkv_bias=true", "image_size=[16,32]"],
        num_attention_heads=2,
    )
    assert arguments.overrides() == {
        "layer_norm_eps": 1e-5,
        "qkv_bias": True,
        "image_size": [16, 32],
        "num_attention_heads": 2,
    }


def test_convert_checkpoint_refuses_a_bad_override_in_one_line(capsys: pytest.CaptureFixture):
    script = load_script_module("convert_checkpoint")
    argv = ["--source", "timm", "--checkpoint", "missing.pth", "--output_dir", "out", "--set", "hiden_size=3"]
    with pytest.raises(SystemExit) as exit_info:
        script.main(argv)
    assert exit_info.value.code == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and "'hiden_size' is not a LapeViTConfig field" in error_lines[0]
