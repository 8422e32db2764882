"""Official LaPE checkpoints and timm VisionTransformer state dicts (the same names) -> LapeViT.

The official LaPE code (Ingrid725/LaPE, `vision_transformer.py`) is DeiT's timm VisionTransformer with, per layer, a
`blocks.i.pe_norm` LayerNorm; its 'unshare' join stores `pos_embed0..pos_embed{L-1}`, its RPE layers
`blocks.i.attn.relative_position_bias_table` (+ the buffer `relative_position_index`, + `blocks.i.attn.pe_norm`, a
LayerNorm over the patches, for the LaPE form), and its sinusoidal PEs are stored as non-trainable `pos_embed`
parameters (the 1-D one as a (T, D) tensor). The keys of 'lape' and 'lape_shared' are the same, and 'add' and 'share'
have the same keys too, so where the keys leave the join open the caller names it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..models.lape_vit.configuration_lape_vit import PE_JOINS, POSITION_EMBEDDING_TYPES, LapeViTConfig
from ..models.lape_vit.modeling_lape_vit import (
    LapeViTForImageClassification,
    LapeViTForImageClassificationWithTeacher,
    LapeViTRelativePositionBias,
)
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

OFFICIAL_LAYOUT = "official LaPE"
TIMM_LAYOUT = "timm VisionTransformer"

# The official RPE LayerNorm is `nn.LayerNorm(num_patches)`: PyTorch's default eps, whatever the model's norm_layer.
OFFICIAL_RPE_LAYER_NORM_EPS = 1e-5

# Everything the official DeiT-based code and timm's DeiT share; what the weights cannot tell (heads, eps) comes from a
# matching `deit-*` preset or the caller.
_LAYOUT_DEFAULTS: dict[str, Any] = {
    "layer_norm_eps": 1e-6,
    "relative_position_layer_norm_eps": OFFICIAL_RPE_LAYER_NORM_EPS,
    "hidden_act": "gelu",
}
_PRESET_FAMILY = ("deit-",)

# Names in the official checkpoint of LapeViT's per-layer modules (LapeViT name -> official name).
_LAYER_MODULES = {
    "layernorm_before": "norm1",
    "position_layernorm": "pe_norm",
    "attention.qkv": "attn.qkv",
    "attention.proj": "attn.proj",
    "attention.relative_position_bias.layernorm": "attn.pe_norm",
    "layernorm_after": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_TOP_LEVEL = {
    "lape_vit.embeddings.cls_token": "cls_token",
    "lape_vit.embeddings.distillation_token": "dist_token",
    "lape_vit.embeddings.tokenizer.projection.weight": "patch_embed.proj.weight",
    "lape_vit.embeddings.tokenizer.projection.bias": "patch_embed.proj.bias",
    "lape_vit.layernorm.weight": "norm.weight",
    "lape_vit.layernorm.bias": "norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
    "cls_classifier.weight": "head.weight",
    "cls_classifier.bias": "head.bias",
    "distillation_classifier.weight": "head_dist.weight",
    "distillation_classifier.bias": "head_dist.bias",
}
_LAYER_PREFIX = "lape_vit.encoder.layers."


def _official_name(target_key: str) -> WeightSource | None:
    """The official key(s) a LapeViT state-dict key comes from (None: not part of this layout)."""
    if target_key in _TOP_LEVEL:
        return renamed(_TOP_LEVEL[target_key])
    if target_key == "lape_vit.embeddings.position_embedding.position_embeddings":
        return None  # depends on the join and the number of layers: built by the caller
    if target_key.startswith(_LAYER_PREFIX):
        index, rest = target_key[len(_LAYER_PREFIX) :].split(".", 1)
        if rest == "attention.relative_position_bias.table":
            return renamed(f"blocks.{index}.attn.relative_position_bias_table")
        module, parameter = rest.rsplit(".", 1)
        if module in _LAYER_MODULES:
            return renamed(f"blocks.{index}.{_LAYER_MODULES[module]}.{parameter}")
    return None


def _infer_architecture(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], int | None]:
    """Config values the weights determine, and the side of the square token grid (None if unknown)."""

    def shape(key: str) -> tuple[int, ...] | None:
        value = state_dict.get(key)
        return tuple(value.shape) if isinstance(value, torch.Tensor) else None

    inferred: dict[str, Any] = {"tokenizer_type": "patch", "pooler_type": "cls"}
    projection = shape("patch_embed.proj.weight")
    if projection is not None and len(projection) == 4:
        hidden_size, channels, patch_height, patch_width = projection
        if patch_height != patch_width:
            raise CheckpointConversionError(
                f"patch_embed.proj.weight {projection} has a non-square {patch_height}x{patch_width} patch; LapeViT "
                "supports square patches only."
            )
        inferred.update(hidden_size=hidden_size, num_channels=channels, patch_size=patch_height)
    layers = layer_indices(state_dict, "blocks.")
    if layers:
        inferred["num_hidden_layers"] = max(layers) + 1
    fc1 = shape("blocks.0.mlp.fc1.weight")
    if fc1 is not None:
        inferred["intermediate_size"] = fc1[0]
    if layers:
        inferred["qkv_bias"] = "blocks.0.attn.qkv.bias" in state_dict
    inferred["use_distillation_token"] = "dist_token" in state_dict
    head = shape("head.weight")
    if head is not None:
        inferred["num_labels"] = head[0]

    relative_table = shape("blocks.0.attn.relative_position_bias_table")
    if relative_table is not None:
        inferred["relative_position_bias"] = "lape" if "blocks.0.attn.pe_norm.weight" in state_dict else "plain"
        inferred["num_attention_heads"] = relative_table[1]

    grid_side = None
    table = shape("pos_embed") or shape("pos_embed0")
    if table is not None:
        num_patches = table[-2] - 1 - int(inferred["use_distillation_token"])
        grid_side = square_side(num_patches)
    elif relative_table is not None:
        relative_side = square_side(relative_table[0])  # (2H-1)(2W-1) entries
        grid_side = (relative_side + 1) // 2 if relative_side is not None and relative_side % 2 == 1 else None
    return inferred, grid_side


def _join_candidates(state_dict: Mapping[str, Any]) -> tuple[str, ...]:
    """The joins whose keys this state dict has."""
    if "pos_embed0" in state_dict:
        return ("unshare",)
    if any(key.startswith("blocks.") and ".pe_norm." in key and ".attn." not in key for key in state_dict):
        return ("lape", "lape_shared")
    if "pos_embed" in state_dict:
        return ("add", "share")
    return ("add",)  # no absolute PE: the join does not matter


def _relative_index_check(config: LapeViTConfig, key: str) -> Check:
    expected = LapeViTRelativePositionBias.relative_position_index(config.token_grid_size())

    def check(stored: torch.Tensor) -> str | None:
        if tuple(stored.shape) == tuple(expected.shape) and torch.equal(stored.long(), expected):
            return None
        return f"{key!r} is not the Swin-style relative position index of a {config.token_grid_size()} token grid."

    return check


def _convert_timm_names(
    state_dict: Mapping[str, Any],
    *,
    layout: str,
    pe_join: str | None,
    position_embedding_type: str | None,
    preset: str | None,
    overrides: dict[str, Any],
) -> LapeViTForImageClassification | LapeViTForImageClassificationWithTeacher:
    check_choice("pe_join", pe_join, PE_JOINS)
    check_choice("position_embedding_type", position_embedding_type, POSITION_EMBEDDING_TYPES)
    check_preset_name(preset)
    check_override_names(overrides)
    inferred, grid_side = _infer_architecture(state_dict)

    if pe_join is None:
        candidates = _join_candidates(state_dict)
        if len(candidates) > 1:
            raise CheckpointConversionError(
                f"pe_join is needed: the keys of this {layout} checkpoint fit {' and '.join(map(repr, candidates))} "
                "alike (a checkpoint does not record which it was trained with). The official code's 'LaPE' join "
                "chains the normalized PE across layers ('lape'), its first public version normalized the raw PE in "
                "every layer ('lape_shared'); its 'basic' join is 'add'."
            )
        pe_join = candidates[0]
    stored_table = state_dict.get("pos_embed0" if pe_join == "unshare" else "pos_embed")
    choices = {
        "pe_join": pe_join,
        "encoder_layer_form": "pre_norm",
        "position_embedding_type": position_embedding_type
        or ("learnable" if isinstance(stored_table, torch.Tensor) else "none"),
        "relative_position_bias": inferred.pop("relative_position_bias", "none"),
    }
    config = resolve_layout_config(
        Layout(layout, _LAYOUT_DEFAULTS, _PRESET_FAMILY),
        inferred=inferred,
        token_grid_side=grid_side,
        preset=preset,
        choices=choices,
        overrides=overrides,
        stored_table=stored_table,
        detect_position_embedding=position_embedding_type is None and pe_join != "unshare",
    )

    is_teacher = "head_dist.weight" in state_dict and config.use_distillation_token
    model_class = LapeViTForImageClassificationWithTeacher if is_teacher else LapeViTForImageClassification
    model = model_class(config)

    plan = {key: weight for key in model.state_dict() if (weight := _official_name(key)) is not None}
    checks: dict[str, Check] = {}
    per_layer = tuple(f"pos_embed{i}" for i in range(config.num_hidden_layers))
    tables = per_layer if config.pe_join == "unshare" else ("pos_embed",)
    plan_position_embedding(config, plan, checks, tables, check_key="pos_embed")
    if config.relative_position_bias != "none":
        for index in range(config.num_hidden_layers):
            key = f"blocks.{index}.attn.relative_position_index"
            if key in state_dict:  # a buffer: timm-style checkpoints may or may not carry it
                checks[key] = _relative_index_check(config, key)
    fill_model(model, state_dict, plan, checks, layout)
    return model.eval()


def convert_official_state_dict(
    state_dict: Mapping[str, Any],
    pe_join: str | None = None,
    position_embedding_type: str | None = None,
    preset: str | None = None,
    **overrides: Any,
) -> LapeViTForImageClassification | LapeViTForImageClassificationWithTeacher:
    """
    An official LaPE checkpoint's state dict (`checkpoint["model"]`) as a LapeViT classification model, with the
    distilled DeiT form (`LapeViTForImageClassificationWithTeacher`) when it has `dist_token` and `head_dist`.

    Args:
        state_dict: the official weights (timm VisionTransformer names).
        pe_join: `"lape"`, `"lape_shared"`, `"add"`, `"share"` or `"unshare"`. Needed when the keys fit two joins
            ('lape'/'lape_shared' have the same keys, and so do 'add'/'share'); checked against the keys otherwise.
        position_embedding_type: by default read from the weights: a stored `pos_embed` equal to LapeViT's 1-D or
            2-D sinusoidal table is that fixed table, anything else is learnable. When given as a sinusoidal type, the
            stored table must match LapeViT's (a mismatch is reported with the type it does look like).
        preset: a `LapeViTConfig` preset for what the weights cannot tell (the number of heads, LayerNorm eps);
            by default the `deit-*` preset whose shapes match, if one does.
        **overrides: any `LapeViTConfig` field (e.g. `num_attention_heads=3`, `image_size=384`, `id2label=...`).
    """
    return _convert_timm_names(
        state_dict,
        layout=OFFICIAL_LAYOUT,
        pe_join=pe_join,
        position_embedding_type=position_embedding_type,
        preset=preset,
        overrides=overrides,
    )


def convert_timm_state_dict(
    state_dict: Mapping[str, Any],
    position_embedding_type: str | None = None,
    preset: str | None = None,
    **overrides: Any,
) -> LapeViTForImageClassification | LapeViTForImageClassificationWithTeacher:
    """
    A timm `VisionTransformer` (or DeiT, distilled or not) state dict as a LapeViT model with `pe_join="add"`. Only
    the class-token, pre-norm ViT is representable: timm extras such as layer scale (`blocks.i.ls1.gamma`), register
    tokens or a `fc_norm` are reported as unexpected keys. Arguments as for `convert_official_state_dict`.
    """
    return _convert_timm_names(
        state_dict,
        layout=TIMM_LAYOUT,
        pe_join="add",
        position_embedding_type=position_embedding_type,
        preset=preset,
        overrides=overrides,
    )
