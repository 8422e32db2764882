"""The machinery every converter shares.

A converter reads the architecture off the source weights, resolves a `LapeViTConfig` (shapes from the weights, the
rest from a preset or the user's overrides), builds the LapeViT model and then fills it through a *plan*: for every
key of the model's own `state_dict()` (introspected, never hard-coded) the source tensors it is made of. Keys the plan
does not use, keys it needs but the source lacks, and tensors of the wrong shape are all collected and reported in one
`CheckpointConversionError`, so a user sees everything that is wrong with a checkpoint at once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from transformers.utils import logging

from ..models.lape_vit.configuration_lape_vit import PRESETS, LapeViTConfig
from ..models.lape_vit.configuration_lape_vit import check_preset_name as check_config_preset_name
from ..models.lape_vit.modeling_lape_vit import LapeViTPositionEmbedding

logger = logging.get_logger(__name__)

# A fixed sinusoidal table stored in a checkpoint is compared with the one LapeViT computes from its config. The
# original codes build it in float32 (LapeViT in float64, then rounds): at 384 px entries differ by up to ~3e-5.
SINUSOIDAL_TOLERANCE = 1e-4
SINUSOIDAL_TYPES = ("sinusoidal_1d", "sinusoidal_2d")

# Config arguments a user may override besides the LapeViTConfig fields themselves.
_LABEL_ARGUMENTS = ("num_labels", "id2label", "label2id", "problem_type")


class CheckpointConversionError(ValueError):
    """A checkpoint cannot be turned into a LapeViT model. Lists every missing, unexpected and mis-shaped key."""

    def __init__(
        self,
        message: str,
        *,
        missing: Iterable[str] = (),
        unexpected: Iterable[str] = (),
        mismatched: Iterable[str] = (),
        problems: Iterable[str] = (),
    ):
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.mismatched = list(mismatched)
        self.problems = list(problems)
        lines = [message]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}): {', '.join(self.unexpected)}")
        if self.mismatched:
            lines.append(f"  mis-shaped keys ({len(self.mismatched)}):")
            lines.extend(f"    {entry}" for entry in self.mismatched)
        lines.extend(f"  {problem}" for problem in self.problems)
        super().__init__("\n".join(lines))


# ---------------------------------------------------------------------------------------------------------------------
# Plans: which source tensors make each LapeViT weight
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightSource:
    """The source keys one LapeViT weight is made of, and how (`combine`; default: the single tensor as it is)."""

    keys: tuple[str, ...]
    combine: Callable[[list[torch.Tensor]], torch.Tensor] | None = None

    def build(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return tensors[0] if self.combine is None else self.combine(tensors)


def renamed(key: str) -> WeightSource:
    return WeightSource((key,))


def concatenated(*keys: str) -> WeightSource:
    """Separate query/key/value projections fused into one `qkv` weight, in the order q, k, v."""
    return WeightSource(tuple(keys), lambda tensors: torch.cat(tensors, dim=0))


def as_position_table(tensor: torch.Tensor) -> torch.Tensor:
    """(T, D) or (1, T, D) -> (1, T, D). The official LaPE code keeps its 1-D sinusoidal table as (T, D)."""
    return tensor.reshape(1, *tensor.shape[-2:]) if tensor.ndim == 2 else tensor


def position_tables(*keys: str) -> WeightSource:
    """One PE table, or one per layer (`pe_join="unshare"`), stacked into LapeViT's (num_tables, T, D)."""
    return WeightSource(tuple(keys), lambda tensors: torch.cat([as_position_table(t) for t in tensors], dim=0))


# A check verifies a source tensor that LapeViT recomputes instead of loading (a fixed sinusoidal PE, the relative
# position index): it returns a message describing the disagreement, or None.
Check = Callable[[torch.Tensor], "str | None"]


def fill_model(
    model: torch.nn.Module,
    source: Mapping[str, Any],
    plan: Mapping[str, WeightSource],
    checks: Mapping[str, Check],
    layout: str,
) -> None:
    """Load `source` into `model` through `plan`, or raise one error listing every problem and load nothing."""
    target = model.state_dict()
    problems = [
        f"LapeViT weight {key!r} has no counterpart in the {layout} layout." for key in target if key not in plan
    ]
    problems += [
        f"key {key!r} holds a {type(value).__name__}, not a tensor."
        for key, value in source.items()
        if not isinstance(value, torch.Tensor)
    ]
    used = {key for weight in plan.values() for key in weight.keys} | set(checks)
    missing = sorted(key for key in used if key not in source)
    unexpected = sorted(key for key in source if key not in used)

    mismatched: list[str] = []
    converted: dict[str, torch.Tensor] = {}
    for target_key, weight in plan.items():
        if target_key not in target:
            problems.append(f"internal: the plan names {target_key!r}, which the LapeViT model does not have.")
            continue
        tensors = [source.get(key) for key in weight.keys]
        if any(not isinstance(tensor, torch.Tensor) for tensor in tensors):
            continue
        shapes = " + ".join(f"{key} {tuple(tensor.shape)}" for key, tensor in zip(weight.keys, tensors, strict=True))
        expected = tuple(target[target_key].shape)
        try:
            value = weight.build(tensors)
        except RuntimeError:
            mismatched.append(f"{shapes} cannot form {target_key} {expected}")
            continue
        if tuple(value.shape) != expected:
            mismatched.append(f"{shapes} -> {target_key} needs {expected}")
            continue
        converted[target_key] = value

    for key, check in checks.items():
        value = source.get(key)
        if isinstance(value, torch.Tensor) and (message := check(value)) is not None:
            problems.append(message)

    if missing or unexpected or mismatched or problems:
        raise CheckpointConversionError(
            f"Cannot convert this {layout} state dict into {type(model).__name__} "
            f"({model.config.num_hidden_layers} layers, hidden_size={model.config.hidden_size}):",
            missing=missing,
            unexpected=unexpected,
            mismatched=mismatched,
            problems=problems,
        )
    model.load_state_dict(converted, strict=True)


def layer_indices(keys: Iterable[str], prefix: str) -> list[int]:
    """The layer numbers i of keys `prefix{i}.…`, sorted."""
    indices = set()
    for key in keys:
        if key.startswith(prefix):
            head = key[len(prefix) :].split(".", 1)[0]
            if head.isdigit():
                indices.add(int(head))
    return sorted(indices)


# ---------------------------------------------------------------------------------------------------------------------
# Config resolution: shapes from the weights, the rest from a preset or the user's overrides
# ---------------------------------------------------------------------------------------------------------------------
def _config_defaults() -> dict[str, Any]:
    return {
        field.name: field.default
        for field in dataclasses.fields(LapeViTConfig)
        if field.default is not dataclasses.MISSING
    }


def check_override_names(overrides: Mapping[str, Any]) -> None:
    allowed = set(LapeViTConfig.__annotations__) | set(_LABEL_ARGUMENTS)
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise CheckpointConversionError(
            f"Unknown config override(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(allowed))}."
        )


def check_choice(name: str, value: str | None, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        raise CheckpointConversionError(f"{name}={value!r} is not supported; allowed: {', '.join(allowed)}.")


def check_preset_name(preset: str | None) -> None:
    """The config's preset check (`configuration_lape_vit.check_preset_name`), raised as a conversion error."""
    if preset is not None:
        try:
            check_config_preset_name(preset)
        except ValueError as error:
            raise CheckpointConversionError(str(error)) from None


def _token_stride(kwargs: Mapping[str, Any]) -> int:
    """How many pixels one token spans along a side, for the tokenizer these config arguments describe."""
    if kwargs["tokenizer_type"] == "patch":
        return int(kwargs["patch_size"])
    pooling = kwargs["conv_pooling_stride"] if kwargs["conv_pooling_kernel_size"] > 0 else 1
    return int((kwargs["conv_stride"] * pooling) ** kwargs["conv_num_layers"])


def resolve_config(
    *,
    layout: str,
    inferred: Mapping[str, Any],
    token_grid_side: int | None,
    preset: str | None,
    overrides: Mapping[str, Any],
    layout_defaults: Mapping[str, Any],
    preset_family: tuple[str, ...],
) -> tuple[LapeViTConfig, str | None]:
    """
    Build the config of a converted model. Precedence: overrides > values read from the weights (`inferred`) >
    preset > the layout's defaults > LapeViTConfig's defaults. A preset that contradicts the weights is an error (its
    other values, the number of heads above all, would then be wrong too). Without a preset, the one preset of the
    layout's family (`preset_family` name prefixes) whose shapes match the weights, if exactly one does, is used.
    The image size is derived from the PE's token grid unless overridden. Returns the config and the preset used.
    """
    check_override_names(overrides)
    check_preset_name(preset)
    architecture = {key: value for key, value in inferred.items() if key not in _LABEL_ARGUMENTS}
    used_preset = _choose_preset(layout, architecture, preset, overrides, layout_defaults, preset_family)
    kwargs: dict[str, Any] = {
        **layout_defaults,
        **(PRESETS[used_preset] if used_preset else {}),
        **inferred,
        **overrides,
    }
    resolved = {**_config_defaults(), **kwargs}
    if "num_attention_heads" not in overrides and "num_attention_heads" not in inferred and used_preset is None:
        raise CheckpointConversionError(
            f"The number of attention heads cannot be read from this {layout} state dict (hidden_size="
            f"{resolved['hidden_size']}) and no preset matches its shapes: pass a preset (one of "
            f"{', '.join(name for name in sorted(PRESETS) if name.startswith(preset_family))}) or num_attention_heads."
        )
    if "image_size" not in overrides and token_grid_side is not None:
        kwargs["image_size"] = token_grid_side * _token_stride(resolved)
    return _checked_config(layout, kwargs, token_grid_side), used_preset


def _choose_preset(
    layout: str,
    architecture: Mapping[str, Any],
    preset: str | None,
    overrides: Mapping[str, Any],
    layout_defaults: Mapping[str, Any],
    preset_family: tuple[str, ...],
) -> str | None:
    """The preset given (refused when the weights contradict it), else the one of the family that fits, if one."""
    config_defaults = _config_defaults()

    def preset_view(name: str) -> dict[str, Any]:
        return {**config_defaults, **layout_defaults, **PRESETS[name]}

    if preset is not None:
        view = preset_view(preset)
        conflicts = [
            f"the weights have {key}={value!r}, preset {preset!r} has {view.get(key)!r}"
            for key, value in architecture.items()
            if key not in overrides and view.get(key) != value
        ]
        if conflicts:
            raise CheckpointConversionError(
                f"Preset {preset!r} does not fit this {layout} checkpoint ({'; '.join(conflicts)}). Choose another "
                "preset, or override those fields if you know the preset's other values still apply."
            )
        return preset
    matches = [
        name
        for name in sorted(PRESETS)
        if name.startswith(preset_family)
        and all(preset_view(name).get(key) == value for key, value in architecture.items())
    ]
    if len(matches) != 1:
        return None
    logger.info(f"The {layout} weights have the shapes of preset {matches[0]!r}; using its other values.")
    return matches[0]


def _checked_config(layout: str, kwargs: Mapping[str, Any], token_grid_side: int | None) -> LapeViTConfig:
    """The config, refused when it is invalid or its token grid differs from the checkpoint's PE."""
    try:
        config = LapeViTConfig(**kwargs)
    except ValueError as error:
        raise CheckpointConversionError(f"The config read from this {layout} checkpoint is invalid: {error}") from None
    if token_grid_side is not None and config.token_grid_size() != (token_grid_side, token_grid_side):
        rows, columns = config.token_grid_size()
        raise CheckpointConversionError(
            f"The checkpoint's position embedding covers a {token_grid_side}x{token_grid_side} token grid, but "
            f"image_size={config.image_size!r} makes {rows}x{columns} with this tokenizer: pass the image_size the "
            "checkpoint was trained at."
        )
    return config


def square_side(count: int) -> int | None:
    """The side of a square grid of `count` tokens, or None if `count` is not a square."""
    side = math.isqrt(count) if count > 0 else 0
    return side if side > 0 and side * side == count else None


# ---------------------------------------------------------------------------------------------------------------------
# Fixed sinusoidal position embeddings stored in checkpoints
# ---------------------------------------------------------------------------------------------------------------------
def sinusoidal_table(config: LapeViTConfig, position_embedding_type: str) -> torch.Tensor | None:
    """The (1, T, D) table LapeViT computes for this config and sinusoidal type, or None if the type cannot apply."""
    try:
        candidate = LapeViTConfig.from_dict({**config.to_dict(), "position_embedding_type": position_embedding_type})
    except ValueError:
        return None
    return LapeViTPositionEmbedding(candidate).position_embeddings


def table_difference(stored: torch.Tensor, expected: torch.Tensor) -> float | None:
    """Max absolute difference between a stored table and LapeViT's, or None if their shapes differ."""
    stored = as_position_table(stored).float()
    return None if stored.shape != expected.shape else (stored - expected).abs().max().item()


def detect_position_embedding_type(config: LapeViTConfig, stored: torch.Tensor) -> str:
    """'sinusoidal_1d'/'sinusoidal_2d' if `stored` is that fixed table (within tolerance), else 'learnable'."""
    for candidate in SINUSOIDAL_TYPES:
        expected = sinusoidal_table(config, candidate)
        difference = None if expected is None else table_difference(stored, expected)
        if difference is not None and difference <= SINUSOIDAL_TOLERANCE:
            return candidate
    return "learnable"


def sinusoidal_check(config: LapeViTConfig, key: str) -> Check:
    """A check that the stored table under `key` is the fixed table LapeViT recomputes from `config`."""
    expected = sinusoidal_table(config, config.position_embedding_type)

    def check(stored: torch.Tensor) -> str | None:
        difference = table_difference(stored, expected)
        if difference is not None and difference <= SINUSOIDAL_TOLERANCE:
            return None
        found = detect_position_embedding_type(config, stored)
        if difference is None:
            detail = f"its shape {tuple(stored.shape)} is not the model's {tuple(expected.shape)}"
        else:
            detail = f"max absolute difference {difference:.3g} > {SINUSOIDAL_TOLERANCE:g}"
        return (
            f"{key!r} is not the {config.position_embedding_type} table LapeViT computes from the config ({detail}); "
            f"it looks {found!r}: convert with position_embedding_type={found!r}."
        )

    return check


# ---------------------------------------------------------------------------------------------------------------------
# The steps every state-dict converter shares: a layout differs only in its rename table, what it infers from the
# shapes and its fixed choices
# ---------------------------------------------------------------------------------------------------------------------
POSITION_EMBEDDING_KEY = "lape_vit.embeddings.position_embedding.position_embeddings"


@dataclass(frozen=True)
class Layout:
    """What a source layout fixes for `resolve_layout_config`: its name in messages, the config values its code
    always used (`defaults`), and the name prefixes of the presets that describe its models."""

    name: str
    defaults: Mapping[str, Any]
    preset_family: tuple[str, ...]


def resolve_layout_config(
    layout: Layout,
    *,
    inferred: Mapping[str, Any],
    token_grid_side: int | None,
    preset: str | None,
    choices: Mapping[str, Any],
    overrides: Mapping[str, Any],
    stored_table: Any,
    detect_position_embedding: bool,
) -> LapeViTConfig:
    """`resolve_config` for `layout`, with its fixed `choices` (facts of the layout, not shapes: they go with the
    overrides, so that no preset can contradict them). When `detect_position_embedding`, the PE type is then read from
    the stored table (a sinusoidal table is that fixed type, checked by value) and the config resolved again."""

    def resolve(choices: Mapping[str, Any]) -> LapeViTConfig:
        return resolve_config(
            layout=layout.name,
            inferred=inferred,
            token_grid_side=token_grid_side,
            preset=preset,
            overrides={**choices, **overrides},
            layout_defaults=layout.defaults,
            preset_family=layout.preset_family,
        )[0]

    config = resolve(choices)
    if detect_position_embedding and isinstance(stored_table, torch.Tensor):
        detected = detect_position_embedding_type(config, stored_table)
        config = resolve({**choices, "position_embedding_type": detected})
    return config


def plan_position_embedding(
    config: LapeViTConfig,
    plan: dict[str, WeightSource],
    checks: dict[str, Check],
    source_keys: tuple[str, ...],
    check_key: str | None = None,
) -> None:
    """Add the absolute PE to a conversion: a learnable table is loaded from `source_keys` (one per layer for
    'unshare'); a sinusoidal one is recomputed by LapeViT, so the stored table (`check_key`, by default the first
    source key) is only checked against it."""
    if config.position_embedding_type == "learnable":
        plan[POSITION_EMBEDDING_KEY] = position_tables(*source_keys)
    elif config.position_embedding_type != "none":
        key = check_key or source_keys[0]
        checks[key] = sinusoidal_check(config, key)
