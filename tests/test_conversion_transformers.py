"""transformers ViT / DeiT classifiers -> LapeViT (add join): the same logits, every head type; and the distilled
LapeViT form (`LapeViTForImageClassificationWithTeacher`) builds, runs and round-trips through the Auto classes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import randomize_
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    ViTModel,
)

from lape_hf import (
    CheckpointConversionError,
    LapeViTConfig,
    LapeViTForImageClassification,
    LapeViTForImageClassificationWithTeacher,
    convert_checkpoint,
    convert_transformers_model,
)

TINY = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    num_labels=4,
)
TOLERANCE = 1e-5


def pixels(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    difference = (got - expected).abs().max().item()
    assert difference < TOLERANCE, f"max |difference| {difference:.2e}"


@pytest.mark.parametrize(
    ("model_class", "config"),
    [
        (ViTForImageClassification, ViTConfig(**TINY)),  # layer_norm_eps 1e-12 (ViT's default)
        (ViTForImageClassification, ViTConfig(**TINY, qkv_bias=False, hidden_act="gelu_new", layer_norm_eps=1e-6)),
        (DeiTForImageClassification, DeiTConfig(**TINY)),
    ],
    ids=["vit", "vit-no-qkv-bias-gelu-new", "deit"],
)
def test_plain_classifiers_give_the_same_logits(model_class, config) -> None:
    source = randomize_(model_class(config)).eval()
    model = convert_transformers_model(source)

    assert type(model) is LapeViTForImageClassification
    assert (model.config.pe_join, model.config.position_embedding_type) == ("add", "learnable")
    assert model.config.layer_norm_eps == config.layer_norm_eps and model.config.hidden_act == config.hidden_act
    assert model.config.use_distillation_token is (config.model_type == "deit")  # DeiT always has the token
    with torch.no_grad():
        assert_close(model(pixels()).logits, source(pixels()).logits)


def test_distilled_deit_keeps_both_heads() -> None:
    source = randomize_(DeiTForImageClassificationWithTeacher(DeiTConfig(**TINY))).eval()
    model = convert_transformers_model(source)

    assert type(model) is LapeViTForImageClassificationWithTeacher
    with torch.no_grad():
        expected, got = source(pixels()), model(pixels())
    for name in ("logits", "cls_logits", "distillation_logits"):
        assert_close(getattr(got, name), getattr(expected, name))


def test_labels_and_overrides_carry_over() -> None:
    config = ViTConfig(**{**TINY, "num_labels": 2}, id2label={0: "cat", 1: "dog"}, label2id={"cat": 0, "dog": 1})
    model = convert_transformers_model(ViTForImageClassification(config), drop_path_rate=0.1)
    assert model.config.id2label == {0: "cat", 1: "dog"} and model.config.drop_path_rate == 0.1


def test_other_architectures_are_refused() -> None:
    with pytest.raises(CheckpointConversionError, match="Cannot convert a ViTModel; supported: ViTForImage"):
        convert_transformers_model(ViTModel(ViTConfig(**TINY)))


def test_a_saved_vit_directory_converts_to_a_loadable_model_with_its_image_processing(tmp_path: Path) -> None:
    source = randomize_(ViTForImageClassification(ViTConfig(**TINY))).eval()
    source.save_pretrained(tmp_path / "vit")
    ViTImageProcessor(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], resample=2).save_pretrained(
        tmp_path / "vit"
    )

    output = convert_checkpoint("transformers", tmp_path / "vit", tmp_path / "lape")

    assert sorted(path.name for path in output.iterdir()) == [
        "config.json",
        "configuration_lape_vit.py",
        "model.safetensors",
        "modeling_lape_vit.py",
        "preprocessor_config.json",
    ]
    model = AutoModelForImageClassification.from_pretrained(output).eval()
    processor = AutoImageProcessor.from_pretrained(output)
    assert type(model) is LapeViTForImageClassification
    assert list(processor.image_mean) == [0.5, 0.5, 0.5] and processor.resample == 2
    with torch.no_grad():
        assert_close(model(pixels()).logits, source(pixels()).logits)


def test_a_saved_distilled_deit_directory_loads_back_as_the_teacher_form(tmp_path: Path) -> None:
    source = randomize_(DeiTForImageClassificationWithTeacher(DeiTConfig(**TINY))).eval()
    source.save_pretrained(tmp_path / "deit")

    output = convert_checkpoint("transformers", tmp_path / "deit", tmp_path / "lape")

    model = AutoModelForImageClassification.from_pretrained(output).eval()
    assert type(model) is LapeViTForImageClassificationWithTeacher
    with torch.no_grad():
        assert_close(model(pixels()).logits, source(pixels()).logits)


# ---------------------------------------------------------------------------------------------------------------------
# The distilled LapeViT form itself
# ---------------------------------------------------------------------------------------------------------------------
def distilled_config(**overrides) -> LapeViTConfig:
    return LapeViTConfig.from_preset("deit-tiny-distilled", **{**TINY, "drop_path_rate": 0.0, **overrides})


def test_teacher_model_builds_and_averages_its_two_heads() -> None:
    model = randomize_(LapeViTForImageClassificationWithTeacher(distilled_config())).eval()
    assert model.lape_vit.embeddings.position_embedding.position_embeddings.shape == (1, 16 + 2, 32)
    with torch.no_grad():
        outputs = model(pixels(), output_hidden_states=True)
        tokens = outputs.hidden_states[-1]
    assert outputs.logits.shape == outputs.cls_logits.shape == outputs.distillation_logits.shape == (3, 4)
    assert torch.allclose(outputs.logits, (outputs.cls_logits + outputs.distillation_logits) / 2)
    assert not torch.allclose(outputs.cls_logits, outputs.distillation_logits)
    final = model.lape_vit.layernorm(tokens)  # the heads read the class (0) and distillation (1) tokens
    assert torch.allclose(outputs.cls_logits, model.cls_classifier(final[:, 0]), atol=1e-6)
    assert torch.allclose(outputs.distillation_logits, model.distillation_classifier(final[:, 1]), atol=1e-6)


def test_teacher_model_trains_on_labels_and_teacher_labels() -> None:
    model = randomize_(LapeViTForImageClassificationWithTeacher(distilled_config()))
    labels, teacher_labels = torch.tensor([0, 1, 2]), torch.tensor([3, 3, 3])
    outputs = model(pixels(), labels=labels, distillation_labels=teacher_labels)
    expected = (
        torch.nn.functional.cross_entropy(outputs.cls_logits, labels)
        + torch.nn.functional.cross_entropy(outputs.distillation_logits, teacher_labels)
    ) / 2
    assert torch.allclose(outputs.loss, expected)
    outputs.loss.backward()
    assert model.distillation_classifier.weight.grad.abs().sum() > 0


def test_teacher_model_needs_the_distillation_token() -> None:
    with pytest.raises(ValueError, match="needs use_distillation_token=True"):
        LapeViTForImageClassificationWithTeacher(LapeViTConfig(**TINY))


@pytest.mark.parametrize("model_class", [LapeViTForImageClassification, LapeViTForImageClassificationWithTeacher])
def test_auto_class_picks_the_saved_form(model_class, tmp_path: Path) -> None:
    """One config, two classifiers: AutoModelForImageClassification follows the saved `architectures`."""
    model = randomize_(model_class(distilled_config())).eval()
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is model_class
    with torch.no_grad():
        assert torch.equal(reloaded(pixels()).logits, model(pixels()).logits)
