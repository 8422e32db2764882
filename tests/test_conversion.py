"""Checkpoint files and directories: what the converter loads (and refuses to), the one error that lists every bad
key, all-or-nothing output, the command-line script, and starting a LaPE model from a converted add-join model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from script_loader import load_script as load_script_module
from transformers import AutoImageProcessor, AutoModelForImageClassification
from transformers.image_utils import IMAGENET_DEFAULT_MEAN

from lape_hf import (
    CheckpointConversionError,
    LapeViTConfig,
    LapeViTForImageClassification,
    convert_checkpoint,
    convert_timm_state_dict,
    init_lape_from_add,
)
from lape_hf.conversion import checkpoint_files

HIDDEN, LAYERS, PATCH, IMAGE, CLASSES = 32, 2, 8, 32, 5
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "convert_checkpoint.py"


def timm_state_dict(seed: int = 0, layers: int = LAYERS) -> dict[str, torch.Tensor]:
    """A random class-token ViT in timm/official names (add join, learnable PE), 2 heads' worth of width."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return 0.1 * torch.randn(*shape, generator=generator)

    state = {
        "cls_token": rand(1, 1, HIDDEN),
        "pos_embed": rand(1, (IMAGE // PATCH) ** 2 + 1, HIDDEN),
        "patch_embed.proj.weight": rand(HIDDEN, 3, PATCH, PATCH),
        "patch_embed.proj.bias": rand(HIDDEN),
        "norm.weight": 1 + rand(HIDDEN),
        "norm.bias": rand(HIDDEN),
        "head.weight": rand(CLASSES, HIDDEN),
        "head.bias": rand(CLASSES),
    }
    for i in range(layers):
        for name, shape in [
            ("norm1", (HIDDEN,)),
            ("attn.qkv", (3 * HIDDEN, HIDDEN)),
            ("attn.proj", (HIDDEN, HIDDEN)),
            ("norm2", (HIDDEN,)),
            ("mlp.fc1", (4 * HIDDEN, HIDDEN)),
            ("mlp.fc2", (HIDDEN, 4 * HIDDEN)),
        ]:
            state[f"blocks.{i}.{name}.weight"] = (1 + rand(*shape)) if name.startswith("norm") else rand(*shape)
            state[f"blocks.{i}.{name}.bias"] = rand(shape[0])
    return state


def leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


# ---------------------------------------------------------------------------------------------------------------------
# One error that names every bad key
# ---------------------------------------------------------------------------------------------------------------------
def test_missing_unexpected_and_misshaped_keys_are_listed_together() -> None:
    state = timm_state_dict()
    del state["blocks.1.norm2.bias"]
    state["blocks.0.attn.qkv.weight"] = torch.zeros(3 * HIDDEN, HIDDEN + 1)
    state["blocks.0.attn.q_bias"] = torch.zeros(HIDDEN)
    with pytest.raises(CheckpointConversionError) as caught:
        convert_timm_state_dict(state, num_attention_heads=2)
    error = caught.value
    assert error.missing == ["blocks.1.norm2.bias"]
    assert error.unexpected == ["blocks.0.attn.q_bias"]
    assert error.mismatched == [
        "blocks.0.attn.qkv.weight (96, 33) -> lape_vit.encoder.layers.0.attention.qkv.weight needs (96, 32)"
    ]
    message = str(error)
    assert "missing keys (1): blocks.1.norm2.bias" in message
    assert "unexpected keys (1): blocks.0.attn.q_bias" in message
    assert "mis-shaped keys (1):" in message


def test_non_tensor_values_are_reported() -> None:
    state = timm_state_dict()
    state["pos_embed"] = [0.0] * 10
    with pytest.raises(CheckpointConversionError, match=r"key 'pos_embed' holds a list, not a tensor"):
        convert_timm_state_dict(state, num_attention_heads=2)


# ---------------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------------
def test_an_official_training_checkpoint_with_args_converts(tmp_path: Path) -> None:
    """DeiT-style checkpoints store `args` (an argparse.Namespace): allowed; their --pe/--join-type fill the options."""
    state = timm_state_dict()
    args = argparse.Namespace(model="tiny", pe="learnable", join_type="share", lr=5e-4)
    torch.save({"model": state, "epoch": 299, "args": args}, tmp_path / "checkpoint.pth")

    output = convert_checkpoint(
        "official", tmp_path / "checkpoint.pth", tmp_path / "out", overrides={"num_attention_heads": 2}
    )

    config = json.loads((output / "config.json").read_text())
    assert (config["pe_join"], config["position_embedding_type"], config["architectures"]) == (
        "share",
        "learnable",
        ["LapeViTForImageClassification"],
    )
    processor = AutoImageProcessor.from_pretrained(output)
    assert list(processor.image_mean) == list(IMAGENET_DEFAULT_MEAN) and processor.do_convert_rgb
    assert processor.size["height"] == IMAGE


def test_a_safetensors_timm_file_converts(tmp_path: Path) -> None:
    state = timm_state_dict()
    save_file(state, tmp_path / "model.safetensors")
    output = convert_checkpoint(
        "timm", tmp_path / "model.safetensors", tmp_path / "out", overrides={"num_attention_heads": 2}
    )
    model = AutoModelForImageClassification.from_pretrained(output)
    assert torch.equal(model.lape_vit.embeddings.cls_token, state["cls_token"])


class NotAWeight:
    """Stands for any object a pickle would have to construct by running its code."""


def test_a_pickle_that_needs_more_than_weights_is_refused(tmp_path: Path) -> None:
    torch.save({"model": timm_state_dict(), "extra": NotAWeight()}, tmp_path / "unsafe.pth")
    with pytest.raises(CheckpointConversionError, match=r"weights_only=True.*NotAWeight.*refused"):
        convert_checkpoint("timm", tmp_path / "unsafe.pth", tmp_path / "out")
    assert leftovers(tmp_path) == ["unsafe.pth"]


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04 truncated zip"])
def test_an_unreadable_file_is_reported(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "broken.pth").write_bytes(content)
    with pytest.raises(CheckpointConversionError, match="is not a readable PyTorch checkpoint"):
        convert_checkpoint("official", tmp_path / "broken.pth", tmp_path / "out")
    assert leftovers(tmp_path) == ["broken.pth"]


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(CheckpointConversionError, match="does not exist"):
        convert_checkpoint("official", tmp_path / "nope.pth", tmp_path / "out")


# ---------------------------------------------------------------------------------------------------------------------
# All or nothing
# ---------------------------------------------------------------------------------------------------------------------
def test_a_failed_conversion_leaves_no_output(tmp_path: Path) -> None:
    state = timm_state_dict()
    state["pos_embed"] = state["pos_embed"][:, :-1]  # a corrupt checkpoint: one position short
    del state["head.bias"]
    torch.save({"model": state}, tmp_path / "corrupt.pth")

    with pytest.raises(CheckpointConversionError) as caught:
        convert_checkpoint(
            "timm", tmp_path / "corrupt.pth", tmp_path / "nested" / "out", overrides={"num_attention_heads": 2}
        )

    assert "head.bias" in caught.value.missing
    assert leftovers(tmp_path) == ["corrupt.pth"]  # no output, no parent created, no staging directory


def test_a_failure_while_saving_removes_the_staging_directory(tmp_path: Path, monkeypatch) -> None:
    torch.save(timm_state_dict(), tmp_path / "model.pth")

    def reload_fails(*args, **kwargs):
        raise CheckpointConversionError("the saved model does not reproduce the converted one")

    monkeypatch.setattr(checkpoint_files, "_check_same_logits", reload_fails)
    with pytest.raises(CheckpointConversionError, match="does not reproduce"):
        convert_checkpoint("timm", tmp_path / "model.pth", tmp_path / "out", overrides={"num_attention_heads": 2})
    assert leftovers(tmp_path) == ["model.pth"]


def test_an_existing_output_is_never_touched(tmp_path: Path) -> None:
    torch.save(timm_state_dict(), tmp_path / "model.pth")
    existing = tmp_path / "out"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointConversionError, match="already exists"):
        convert_checkpoint("timm", tmp_path / "model.pth", existing, overrides={"num_attention_heads": 2})
    assert leftovers(existing) == ["notes.txt"] and (existing / "notes.txt").read_text() == "mine"
    assert leftovers(tmp_path) == ["model.pth", "out"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(source="keras"), "source='keras' is not supported; allowed: official, timm, transformers, cct"),
        (dict(source="timm", pe_join="lape"), "timm checkpoints add the PE once"),
        (dict(source="official", init_lape_join="add"), "init_lape_join='add' is not a LaPE join"),
        (dict(source="official", preset="deit-huge"), "Unknown preset 'deit-huge'"),
        (dict(source="official", pe_join="chained"), "pe_join='chained' is not supported"),
        (dict(source="transformers"), "Cannot load a transformers model config from"),
    ],
)
def test_bad_options_are_refused_by_name(tmp_path: Path, options: dict, message: str) -> None:
    torch.save(timm_state_dict(), tmp_path / "model.pth")
    source = options.pop("source")
    with pytest.raises(CheckpointConversionError, match=message):
        convert_checkpoint(source, tmp_path / "model.pth", tmp_path / "out", **options)
    assert leftovers(tmp_path) == ["model.pth"]


# ---------------------------------------------------------------------------------------------------------------------
# Fine-tuning start: LaPE from add
# ---------------------------------------------------------------------------------------------------------------------
def test_init_lape_from_add_copies_every_weight_and_adds_identity_pe_norms() -> None:
    add_model = convert_timm_state_dict(timm_state_dict(), num_attention_heads=2)
    lape_model = init_lape_from_add(add_model, "lape")

    assert lape_model.config.pe_join == "lape" and add_model.config.pe_join == "add"
    lape_weights, add_weights = lape_model.state_dict(), add_model.state_dict()
    new = sorted(set(lape_weights) - set(add_weights))
    assert new == [
        f"lape_vit.encoder.layers.{i}.position_layernorm.{p}" for i in range(LAYERS) for p in ("bias", "weight")
    ]
    for key in new:
        assert torch.equal(lape_weights[key], torch.ones(HIDDEN) if key.endswith("weight") else torch.zeros(HIDDEN))
    assert all(torch.equal(lape_weights[key], value) for key, value in add_weights.items())


def test_init_lape_from_add_is_an_initialization_not_an_equivalence() -> None:
    add_model = convert_timm_state_dict(timm_state_dict(), num_attention_heads=2)
    lape_model = init_lape_from_add(add_model, "lape_shared")
    pixel_values = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        assert not torch.allclose(add_model(pixel_values).logits, lape_model(pixel_values).logits, atol=1e-4)


def test_init_lape_from_add_needs_an_add_model_with_a_pe() -> None:
    config = dict(image_size=IMAGE, patch_size=PATCH, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2)
    with pytest.raises(CheckpointConversionError, match="starts from an add-join model, got pe_join='lape'"):
        init_lape_from_add(LapeViTForImageClassification(LapeViTConfig(**config, pe_join="lape")))
    with pytest.raises(CheckpointConversionError, match="position_embedding_type='none'"):
        init_lape_from_add(
            LapeViTForImageClassification(LapeViTConfig(**config, pe_join="add", position_embedding_type="none"))
        )


# ---------------------------------------------------------------------------------------------------------------------
# The script
# ---------------------------------------------------------------------------------------------------------------------
def load_script():
    return load_script_module("convert_checkpoint")


def test_script_converts_and_starts_lape(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.save({"model": timm_state_dict()}, tmp_path / "deit.pth")
    argv = ["--source", "timm", "--checkpoint", str(tmp_path / "deit.pth"), "--output", str(tmp_path / "out")]
    argv += ["--num-attention-heads", "2", "--set", "drop_path_rate=0.1", "--init-lape", "lape"]
    argv += ["--image-mean", "0.5", "0.5", "0.5", "--image-std", "0.25", "0.25", "0.25"]

    assert load_script().main(argv) == 0

    assert f"Saved the converted model to {tmp_path / 'out'}" in capsys.readouterr().out
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["pe_join"], config["drop_path_rate"], config["num_attention_heads"]) == ("lape", 0.1, 2)
    assert json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())["image_std"] == [0.25] * 3


def test_script_reports_a_failed_conversion(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    state = timm_state_dict()
    state["blocks.0.ls1.gamma"] = torch.ones(HIDDEN)
    torch.save(state, tmp_path / "deit3.pth")
    argv = ["--source", "timm", "--checkpoint", str(tmp_path / "deit3.pth"), "--output", str(tmp_path / "out")]

    assert load_script().main([*argv, "--num-attention-heads", "2"]) == 2

    assert "unexpected keys (1): blocks.0.ls1.gamma" in capsys.readouterr().err
    assert leftovers(tmp_path) == ["deit3.pth"]
