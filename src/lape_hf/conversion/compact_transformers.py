"""Compact Transformers (SHI-Labs/Compact-Transformers: CCT, CVT, ViT-Lite) state dicts -> LapeViT (`pe_join="add"`).

The original layout: `tokenizer.conv_layers.{i}.0.weight` (each tokenizer layer a Sequential(conv, activation,
pool); CCT's convolutions have no bias and are followed by ReLU and a max-pool, ViT-Lite/CVT's single patch convolution
has a bias), then under `classifier.`: `class_emb` (ViT-Lite) or `attention_pool` (sequence pooling),
`positional_emb` (1, N, D), `blocks.{i}.pre_norm`, `.self_attn.qkv` (no bias), `.self_attn.proj`, `.norm1`,
`.linear1`, `.linear2`, and `norm`, `fc`. Its encoder layer normalizes after the attention residual
(`encoder_layer_form="post_attention_norm"`), every LayerNorm has PyTorch's default eps 1e-5, and the PE is added once.

Its 'sine' PE is `value[p, i] = sin/cos(p / 10000^(2*(i//2)/D))` over all N positions (the class token at 0): the
same formula as LapeViT's `sinusoidal_1d`, so a stored 'sine' table converts to that fixed type (checked by value).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..models.lape_vit.configuration_lape_vit import POSITION_EMBEDDING_TYPES
from ..models.lape_vit.modeling_lape_vit import LapeViTForImageClassification
from .core import (
    Check,
    CheckpointConversionError,
    Layout,
    WeightSource,
    check_choice,
    check_override_names,
    check_preset_name,
    fill_model,
    layer_indices,
    plan_position_embedding,
    renamed,
    resolve_layout_config,
    square_side,
)

CCT_LAYOUT = "Compact Transformers (CCT/CVT/ViT-Lite)"
_PRESET_FAMILY = ("cct-", "cvt-", "vit-lite-")
_CONV_PREFIX = "tokenizer.conv_layers."
_PE_KEY = "classifier.positional_emb"

_LAYER_MODULES = {
    "layernorm_before": "pre_norm",
    "attention.qkv": "self_attn.qkv",
    "attention.proj": "self_attn.proj",
    "layernorm_after": "norm1",
    "mlp.fc1": "linear1",
    "mlp.fc2": "linear2",
}
_TOP_LEVEL = {
    "lape_vit.embeddings.cls_token": "classifier.class_emb",
    "lape_vit.embeddings.tokenizer.projection.weight": "tokenizer.conv_layers.0.0.weight",
    "lape_vit.embeddings.tokenizer.projection.bias": "tokenizer.conv_layers.0.0.bias",
    "lape_vit.layernorm.weight": "classifier.norm.weight",
    "lape_vit.layernorm.bias": "classifier.norm.bias",
    "lape_vit.pooler.attention_pool.weight": "classifier.attention_pool.weight",
    "lape_vit.pooler.attention_pool.bias": "classifier.attention_pool.bias",
    "classifier.weight": "classifier.fc.weight",
    "classifier.bias": "classifier.fc.bias",
}
_LAYER_PREFIX = "lape_vit.encoder.layers."


def _cct_rule_defaults(kernel_size: int) -> dict[str, Any]:
    """The original `_cct()` factory's stride and padding for a kernel size, and its fixed 3/2/1 max-pool."""
    return dict(
        conv_stride=max(1, kernel_size // 2 - 1),
        conv_padding=max(1, kernel_size // 2),
        conv_pooling_kernel_size=3,
        conv_pooling_stride=2,
        conv_pooling_padding=1,
    )


def _infer_architecture(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], int | None]:
    """(values the weights determine, the CCT code's defaults for the rest, the side of the token grid)."""

    def shape(key: str) -> tuple[int, ...] | None:
        value = state_dict.get(key)
        return tuple(value.shape) if isinstance(value, torch.Tensor) else None

    inferred: dict[str, Any] = {"qkv_bias": False}
    defaults: dict[str, Any] = {"layer_norm_eps": 1e-5, "hidden_act": "gelu", "attention_probs_dropout_prob": 0.1}
    conv_layers = layer_indices(state_dict, _CONV_PREFIX)
    convs = [shape(f"{_CONV_PREFIX}{i}.0.weight") for i in conv_layers]
    if convs and all(conv is not None and len(conv) == 4 for conv in convs):
        kernel_sizes = {(conv[2], conv[3]) for conv in convs}
        if len(kernel_sizes) != 1 or any(height != width for height, width in kernel_sizes):
            raise CheckpointConversionError(
                f"The tokenizer convolutions have kernels {sorted(kernel_sizes)}; LapeViT needs one square kernel size."
            )
        kernel_size = convs[0][2]
        inferred.update(hidden_size=convs[-1][0], num_channels=convs[0][1])
        if f"{_CONV_PREFIX}0.0.bias" in state_dict and len(convs) == 1:
            inferred.update(tokenizer_type="patch", patch_size=kernel_size)  # ViT-Lite / CVT: conv == patchify
        else:
            inferred.update(tokenizer_type="conv", conv_num_layers=len(convs), conv_kernel_size=kernel_size)
            if len(convs) > 1:
                inferred["conv_intermediate_channels"] = convs[0][0]
            defaults.update(_cct_rule_defaults(kernel_size))
    inferred["pooler_type"] = "cls" if "classifier.class_emb" in state_dict else "sequence"
    layers = layer_indices(state_dict, "classifier.blocks.")
    if layers:
        inferred["num_hidden_layers"] = max(layers) + 1
    linear1 = shape("classifier.blocks.0.linear1.weight")
    if linear1 is not None:
        inferred["intermediate_size"] = linear1[0]
    head = shape("classifier.fc.weight")
    if head is not None:
        inferred["num_labels"] = head[0]

    grid_side = None
    table = shape("classifier.positional_emb")
    if table is not None:
        grid_side = square_side(table[-2] - int(inferred["pooler_type"] == "cls"))
    return inferred, defaults, grid_side


def _source_name(target_key: str, conv_keys: list[str]) -> WeightSource | None:
    if target_key in _TOP_LEVEL:
        return renamed(_TOP_LEVEL[target_key])
    if target_key in conv_keys:  # the n-th convolution of LapeViT's flat (conv, ReLU, pool)* Sequential
        return renamed(f"{_CONV_PREFIX}{conv_keys.index(target_key)}.0.weight")
    if target_key.startswith(_LAYER_PREFIX):
        index, rest = target_key[len(_LAYER_PREFIX) :].split(".", 1)
        module, parameter = rest.rsplit(".", 1)
        if module in _LAYER_MODULES:
            return renamed(f"classifier.blocks.{index}.{_LAYER_MODULES[module]}.{parameter}")
    return None


def convert_cct_state_dict(
    state_dict: Mapping[str, Any],
    position_embedding_type: str | None = None,
    preset: str | None = None,
    **overrides: Any,
) -> LapeViTForImageClassification:
    """
    A Compact Transformers (CCT, CVT or ViT-Lite) state dict as a LapeViT classifier with the original's encoder
    layer form, sequence pooling or class token, tokenizer and PE added once (`pe_join="add"`; see
    `init_lape_from_add` to start a LaPE model from it).

    Args:
        state_dict: the original model's `state_dict()`.
        position_embedding_type: by default read from the weights: a stored 'sine' table is LapeViT's
            `sinusoidal_1d` (same formula), anything else learnable, no `positional_emb` is `"none"`.
        preset: a `cct-*`/`cvt-*`/`vit-lite-*` preset for what the weights cannot tell (heads); by default the one
            whose shapes match, if one does. The tokenizer's stride/padding default to the original `_cct()` rule.
        **overrides: any `LapeViTConfig` field (e.g. `num_attention_heads=2`, `image_size=32`).
    """
    check_choice("position_embedding_type", position_embedding_type, POSITION_EMBEDDING_TYPES)
    check_preset_name(preset)
    check_override_names(overrides)
    inferred, defaults, grid_side = _infer_architecture(state_dict)
    stored_table = state_dict.get(_PE_KEY)
    # e.g. the `vit-lite-*` presets keep ViT's pre-norm layer, while these weights were trained with CCT's.
    choices = {
        "pe_join": "add",
        "encoder_layer_form": "post_attention_norm",
        "position_embedding_type": position_embedding_type
        or ("learnable" if isinstance(stored_table, torch.Tensor) else "none"),
    }
    config = resolve_layout_config(
        Layout(CCT_LAYOUT, defaults, _PRESET_FAMILY),
        inferred=inferred,
        token_grid_side=grid_side,
        preset=preset,
        choices=choices,
        overrides=overrides,
        stored_table=stored_table,
        detect_position_embedding=position_embedding_type is None,
    )

    model = LapeViTForImageClassification(config)
    target_keys = list(model.state_dict())
    conv_keys = [key for key in target_keys if key.startswith("lape_vit.embeddings.tokenizer.layers.")]
    plan = {key: weight for key in target_keys if (weight := _source_name(key, conv_keys)) is not None}
    checks: dict[str, Check] = {}
    plan_position_embedding(config, plan, checks, (_PE_KEY,))
    fill_model(model, state_dict, plan, checks, CCT_LAYOUT)
    return model.eval()
