"""transformers ViT / DeiT image classifiers -> LapeViT with `pe_join="add"` (the same function, to float precision).

transformers' ViT and DeiT are pre-norm ViTs with separate query/key/value projections (`q_proj`, `k_proj`,
`v_proj`, `o_proj` in transformers 5; older checkpoints are renamed by transformers itself when loaded), LayerNorm eps
1e-12 by default (ViT), and DeiT always carries a distillation token (its plain classifier reads the class token only).
`ViTModel`'s tanh pooler is not part of the classifiers and is not converted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import transformers
from transformers import AutoConfig, PreTrainedModel

from ..models.lape_vit.configuration_lape_vit import LapeViTConfig
from ..models.lape_vit.modeling_lape_vit import LapeViTForImageClassification, LapeViTForImageClassificationWithTeacher
from .core import CheckpointConversionError, WeightSource, check_override_names, concatenated, fill_model, renamed

SUPPORTED_ARCHITECTURES = (
    "ViTForImageClassification",
    "DeiTForImageClassification",
    "DeiTForImageClassificationWithTeacher",
)
TRANSFORMERS_LAYOUT = "transformers ViT/DeiT"

_LAYER_PREFIX = "lape_vit.encoder.layers."
_SAME_IN_LAYER = ("layernorm_before", "layernorm_after", "mlp.fc1", "mlp.fc2")


def _square(name: str, value: Any) -> int | list[int]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise CheckpointConversionError(f"{name}={value!r} must be an integer or a (height, width) pair.")
        return int(value[0]) if value[0] == value[1] else [int(value[0]), int(value[1])]
    return int(value)


def _lape_config(model: PreTrainedModel, overrides: dict[str, Any]) -> LapeViTConfig:
    source = model.config
    head_dim = getattr(source, "head_dim", None)
    if head_dim is not None and head_dim * source.num_attention_heads != source.hidden_size:
        raise CheckpointConversionError(
            f"head_dim={head_dim} with num_attention_heads={source.num_attention_heads} does not span "
            f"hidden_size={source.hidden_size}; LapeViT's heads always split hidden_size evenly."
        )
    patch_size = _square("patch_size", source.patch_size)
    if not isinstance(patch_size, int):
        raise CheckpointConversionError(
            f"patch_size={source.patch_size!r} is not square; LapeViT needs square patches."
        )
    arguments: dict[str, Any] = dict(
        image_size=_square("image_size", source.image_size),
        patch_size=patch_size,
        num_channels=source.num_channels,
        hidden_size=source.hidden_size,
        num_hidden_layers=source.num_hidden_layers,
        num_attention_heads=source.num_attention_heads,
        intermediate_size=source.intermediate_size,
        hidden_act=source.hidden_act,
        hidden_dropout_prob=source.hidden_dropout_prob,
        attention_probs_dropout_prob=source.attention_probs_dropout_prob,
        layer_norm_eps=source.layer_norm_eps,
        qkv_bias=source.qkv_bias,
        initializer_range=source.initializer_range,
        position_embedding_type="learnable",
        pe_join="add",
        use_distillation_token=source.model_type == "deit",
        id2label=dict(source.id2label),
        label2id=dict(source.label2id),
        problem_type=source.problem_type,
    )
    check_override_names(overrides)
    try:
        return LapeViTConfig(**{**arguments, **overrides})
    except ValueError as error:
        raise CheckpointConversionError(f"The config of this {TRANSFORMERS_LAYOUT} model is invalid: {error}") from None


def _source_name(target_key: str, prefix: str) -> WeightSource | None:
    """The transformers key(s) a LapeViT state-dict key comes from (`prefix` is "vit" or "deit")."""
    fixed = {
        "lape_vit.embeddings.cls_token": f"{prefix}.embeddings.cls_token",
        "lape_vit.embeddings.distillation_token": f"{prefix}.embeddings.distillation_token",
        "lape_vit.embeddings.position_embedding.position_embeddings": f"{prefix}.embeddings.position_embeddings",
        "lape_vit.embeddings.tokenizer.projection.weight": f"{prefix}.embeddings.patch_embeddings.projection.weight",
        "lape_vit.embeddings.tokenizer.projection.bias": f"{prefix}.embeddings.patch_embeddings.projection.bias",
        "lape_vit.layernorm.weight": f"{prefix}.layernorm.weight",
        "lape_vit.layernorm.bias": f"{prefix}.layernorm.bias",
    }
    if target_key in fixed:
        return renamed(fixed[target_key])
    if target_key.split(".")[0] in ("classifier", "cls_classifier", "distillation_classifier"):
        return renamed(target_key)
    if target_key.startswith(_LAYER_PREFIX):
        index, rest = target_key[len(_LAYER_PREFIX) :].split(".", 1)
        module, parameter = rest.rsplit(".", 1)
        layer = f"{prefix}.layers.{index}"
        if module in _SAME_IN_LAYER:
            return renamed(f"{layer}.{rest}")
        if module == "attention.qkv":
            return concatenated(*(f"{layer}.attention.{name}_proj.{parameter}" for name in "qkv"))
        if module == "attention.proj":
            return renamed(f"{layer}.attention.o_proj.{parameter}")
    return None


def convert_transformers_model(
    model: PreTrainedModel, **overrides: Any
) -> LapeViTForImageClassification | LapeViTForImageClassificationWithTeacher:
    """
    A transformers `ViTForImageClassification`, `DeiTForImageClassification` or
    `DeiTForImageClassificationWithTeacher` as the LapeViT classifier computing the same logits (`pe_join="add"`,
    learnable PE; DeiT keeps its distillation token; the teacher form keeps both heads). `overrides` set further
    `LapeViTConfig` fields, e.g. `drop_path_rate=0.1` for fine-tuning.
    """
    architecture = type(model).__name__
    if architecture not in SUPPORTED_ARCHITECTURES or not isinstance(model, getattr(transformers, architecture)):
        raise CheckpointConversionError(
            f"Cannot convert a {architecture}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}."
        )
    config = _lape_config(model, overrides)
    is_teacher = architecture.endswith("WithTeacher")
    lape_model = (LapeViTForImageClassificationWithTeacher if is_teacher else LapeViTForImageClassification)(config)
    plan = {}
    for target_key in lape_model.state_dict():
        weight = _source_name(target_key, model.base_model_prefix)
        if weight is not None:
            plan[target_key] = weight
    fill_model(lape_model, model.state_dict(), plan, {}, TRANSFORMERS_LAYOUT)
    return lape_model.eval()


def load_transformers_classifier(path: str | Path) -> PreTrainedModel:
    """Load a saved ViT/DeiT classifier as the class its config's `architectures` names (refusing any other)."""
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise CheckpointConversionError(f"Cannot load a transformers model config from {path}: {error}") from None
    architectures = list(getattr(config, "architectures", None) or [])
    if config.model_type not in ("vit", "deit") or not architectures or architectures[0] not in SUPPORTED_ARCHITECTURES:
        raise CheckpointConversionError(
            f"{path} holds a {config.model_type!r} model with architectures={architectures}; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}."
        )
    return getattr(transformers, architectures[0]).from_pretrained(path).eval()
