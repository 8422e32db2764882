"""LapeViT model configuration and named presets.

LaPE (Layer-adaptive Position Embedding, arXiv 2212.05262 / ICCV 2023) gives every transformer layer its own
LayerNorm for the position embedding (PE) and joins the normalized PE to the normalized tokens only at the attention
input. This file is also shipped as Hub remote code: it imports only torch, transformers and huggingface_hub (a
dependency of transformers, whose own configs take `strict` from it).

The config is a typed, strict dataclass as transformers' own configs are: every field is type-checked (a string is
not a bool, 31.5 is not an integer) and range-checked when it is set, and the rules between fields are `validate_*`
methods run after construction and before saving. Every bad value raises `LapeViTConfigError`, a `ValueError` naming
the field, the value and what is allowed.
"""

import copy
import math
from collections.abc import Callable
from typing import Any

from huggingface_hub.dataclasses import strict, validated_field
from huggingface_hub.errors import (
    StrictDataclassClassValidationError,
    StrictDataclassError,
    StrictDataclassFieldValidationError,
)
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneConfigMixin

# The allowed values of the two options the LaPE paper studies, each with the phrase the model card prints for it
# ("a <position embedding description> position embedding joined to the tokens by pe_join=..., <join description>").
PE_JOIN_DESCRIPTIONS = {
    "lape": "LaPE, the paper's method: every layer normalizes the previous layer's position embedding with its own "
    "LayerNorm and adds it to the normalized tokens at the attention input",
    "lape_shared": "LaPE with a shared raw position embedding: every layer normalizes the raw position embedding with "
    "its own LayerNorm and adds it at the attention input",
    "add": "the ViT/DeiT default: the position embedding is added to the tokens once, before the first layer",
    "share": "the same raw position embedding is added to the token stream before every layer",
    "unshare": "a separate learnable position embedding is added to the token stream before every layer",
}
POSITION_EMBEDDING_DESCRIPTIONS = {
    "learnable": "learnable",
    "sinusoidal_1d": "fixed 1-D sinusoidal",
    "sinusoidal_2d": "fixed 2-D sinusoidal",
    "none": "no",
}
PE_JOINS = tuple(PE_JOIN_DESCRIPTIONS)
POSITION_EMBEDDING_TYPES = tuple(POSITION_EMBEDDING_DESCRIPTIONS)
# The joins with a PE LayerNorm in every layer (the PE is normalized and joined at the attention input).
LAPE_JOINS = ("lape", "lape_shared")
RELATIVE_POSITION_BIAS_TYPES = ("none", "plain", "lape")
TOKENIZER_TYPES = ("patch", "conv")
POOLER_TYPES = ("cls", "sequence", "mean")
ENCODER_LAYER_FORMS = ("pre_norm", "post_attention_norm")

# Presets are data: keyword arguments of LapeViTConfig. Shapes follow the original model papers' code.
_DEIT = dict(
    image_size=224,
    patch_size=16,
    num_hidden_layers=12,
    layer_norm_eps=1e-6,
    qkv_bias=True,
    drop_path_rate=0.1,
)
# Compact Transformers (Hassani et al. 2021): ViT-Lite, CVT and CCT share the encoder shape.
_COMPACT_32 = dict(
    image_size=32,
    layer_norm_eps=1e-5,
    qkv_bias=False,
    attention_probs_dropout_prob=0.1,
    drop_path_rate=0.1,
)
_CCT_TOKENIZER = dict(
    tokenizer_type="conv",
    conv_kernel_size=3,
    conv_stride=1,
    conv_padding=1,
    conv_pooling_kernel_size=3,
    conv_pooling_stride=2,
    conv_pooling_padding=1,
    conv_intermediate_channels=64,
    pooler_type="sequence",
    encoder_layer_form="post_attention_norm",
)

PRESETS: dict[str, dict[str, Any]] = {
    "deit-tiny": dict(_DEIT, hidden_size=192, num_attention_heads=3, intermediate_size=768),
    "deit-small": dict(_DEIT, hidden_size=384, num_attention_heads=6, intermediate_size=1536),
    "deit-base": dict(_DEIT, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
    "deit-tiny-distilled": dict(
        _DEIT, hidden_size=192, num_attention_heads=3, intermediate_size=768, use_distillation_token=True
    ),
    "deit-small-distilled": dict(
        _DEIT, hidden_size=384, num_attention_heads=6, intermediate_size=1536, use_distillation_token=True
    ),
    "deit-base-distilled": dict(
        _DEIT, hidden_size=768, num_attention_heads=12, intermediate_size=3072, use_distillation_token=True
    ),
    "vit-lite-7/4": dict(
        _COMPACT_32, patch_size=4, num_hidden_layers=7, hidden_size=256, num_attention_heads=4, intermediate_size=512
    ),
    "vit-lite-6/4": dict(
        _COMPACT_32, patch_size=4, num_hidden_layers=6, hidden_size=256, num_attention_heads=4, intermediate_size=512
    ),
    "cvt-7/4": dict(
        _COMPACT_32,
        patch_size=4,
        num_hidden_layers=7,
        hidden_size=256,
        num_attention_heads=4,
        intermediate_size=512,
        pooler_type="sequence",
        encoder_layer_form="post_attention_norm",
    ),
    "cct-7/3x1": dict(
        _COMPACT_32,
        **_CCT_TOKENIZER,
        conv_num_layers=1,
        num_hidden_layers=7,
        hidden_size=256,
        num_attention_heads=4,
        intermediate_size=512,
    ),
    "cct-2/3x2": dict(
        _COMPACT_32,
        **_CCT_TOKENIZER,
        conv_num_layers=2,
        num_hidden_layers=2,
        hidden_size=128,
        num_attention_heads=2,
        intermediate_size=128,
    ),
    "cct-14/7x2": dict(
        _COMPACT_32,
        **dict(_CCT_TOKENIZER, conv_kernel_size=7, conv_stride=2, conv_padding=3),
        image_size=224,
        conv_num_layers=2,
        num_hidden_layers=14,
        hidden_size=384,
        num_attention_heads=6,
        intermediate_size=1152,
    ),
}


def check_preset_name(name: str) -> None:
    """The one check of a preset name: a ValueError naming the allowed ones."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; allowed: {', '.join(sorted(PRESETS))}.")


def _conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


# ---------------------------------------------------------------------------------------------------------------------
# Field rules. The strict dataclass checks the type first (bool is not an int, an int is not a bool or a str); a rule
# then gets a value of the right type and raises a ValueError saying what the value must be. `LapeViTConfigError`
# puts the field name and the value in front.
# ---------------------------------------------------------------------------------------------------------------------
class LapeViTConfigError(StrictDataclassError, ValueError):
    """A config value that cannot be right. A `ValueError` (what the library raises for a user's mistake) and a
    `StrictDataclassError` (what transformers' typed configs raise)."""


def _integer_at_least(minimum: int) -> Callable[[int], None]:
    def rule(value: int) -> None:
        if value < minimum:
            raise ValueError(f"must be an integer >= {minimum}.")

    return rule


def _rate(value: float) -> None:
    if not 0.0 <= value < 1.0:  # NaN fails too
        raise ValueError("must be a number in [0, 1).")


def _positive_finite(value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError("must be a positive number (finite, > 0).")


def _non_negative_finite(value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError("must be a finite number >= 0.")


def _one_of(allowed: tuple[str, ...]) -> Callable[[str], None]:
    def rule(value: str) -> None:
        if value not in allowed:
            raise ValueError(f"is not supported; allowed: {', '.join(map(repr, allowed))}.")

    return rule


def _activation(value: str) -> None:
    if value not in ACT2FN:
        raise ValueError(f"is not a known activation; allowed: {', '.join(sorted(ACT2FN))}.")


def _image_size(value: int | list[int] | tuple[int, ...]) -> None:
    sizes = list(value) if isinstance(value, (list, tuple)) else [value]
    if isinstance(value, (list, tuple)) and len(sizes) != 2:
        raise ValueError("must be an integer or a [height, width] pair.")
    if any(size < 1 for size in sizes):
        raise ValueError("must be positive.")


_TYPE_PHRASES: dict[Any, str] = {
    bool: "true or false (a bool)",
    int: "an integer",
    float | int: "a number",
    str: "a string",
    int | list[int] | tuple[int, ...]: "an integer or a [height, width] pair of integers",
}


def _field_error(config: PreTrainedConfig, name: str, value: Any, cause: BaseException | None) -> LapeViTConfigError:
    if isinstance(cause, TypeError):
        expected = config.__dataclass_fields__[name].type
        return LapeViTConfigError(
            f"{name}={value!r} must be {_TYPE_PHRASES.get(expected, str(expected))}, got {type(value).__name__}."
        )
    return LapeViTConfigError(f"{name}={value!r} {cause}")


def _raise_value_errors(cls: type[PreTrainedConfig]) -> type[PreTrainedConfig]:
    """Turn the strict dataclass's wrapped errors (field and class validation) into `LapeViTConfigError`s that say
    the field, the value and the rule in one line."""
    strict_setattr, strict_validate = cls.__setattr__, cls.validate

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            strict_setattr(self, name, value)
        except StrictDataclassFieldValidationError as error:
            raise _field_error(self, name, value, error.__cause__) from error.__cause__

    def validate(self) -> None:
        try:
            strict_validate(self)
        except StrictDataclassClassValidationError as error:
            raise LapeViTConfigError(str(error.__cause__)) from error.__cause__

    validate.__is_defined_by_strict_decorator__ = True  # subclasses may be made strict in turn
    cls.__setattr__, cls.validate = __setattr__, validate
    return cls


@_raise_value_errors
@strict
class LapeViTConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a LapeViT model: a ViT/DeiT/CCT-style encoder whose position embedding (PE) is joined to the
    tokens in one of the ways studied by the LaPE paper. Every field is type- and range-checked; a bad value raises
    `LapeViTConfigError` (a `ValueError`) naming the field and what is allowed.

    Args:
        image_size (`int` or `list[int]`, defaults to 224): input resolution (square, or `[height, width]`).
        patch_size (`int`, defaults to 16): patch size of the `"patch"` tokenizer.
        num_channels (`int`, defaults to 3): input channels.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: encoder shape (DeiT-Ti defaults).
        hidden_act (`str`, defaults to `"gelu"`): MLP activation, a key of `transformers.activations.ACT2FN`.
        hidden_dropout_prob (`float`): dropout on the token stream, the attention output and the MLP.
        attention_probs_dropout_prob (`float`): dropout on the attention probabilities.
        drop_path_rate (`float`): stochastic depth rate of the last layer (linearly increasing from 0).
        layer_norm_eps (`float`, defaults to 1e-6): eps of every LayerNorm, the PE LayerNorms included.
        qkv_bias (`bool`): bias of the fused query/key/value projection.
        initializer_range (`float`): std of the truncated-normal initialisation.
        position_embedding_type (`str`, defaults to `"learnable"`): the absolute PE, a key of
            `POSITION_EMBEDDING_DESCRIPTIONS` (this file).
        pe_join (`str`, defaults to `"lape"`): how the PE meets the tokens, a key of `PE_JOIN_DESCRIPTIONS` (this
            file, the allowed values and what each does; the rule itself is `LapeViTPositionStream` in the modeling
            file).
        relative_position_bias (`str`): `"none"`, `"plain"` (a Swin-style 2-D relative position bias table per layer
            on the patch-to-patch logits) or `"lape"` (that bias normalized by a per-layer LayerNorm over keys).
        relative_position_layer_norm_eps (`float`, defaults to 1e-5): eps of that key-axis LayerNorm; the official
            LaPE code builds it with PyTorch's default, whatever `layer_norm_eps` is.
        tokenizer_type (`str`): `"patch"` (a strided convolution) or `"conv"` (CCT's convolutional tokenizer).
        conv_num_layers, conv_kernel_size, conv_stride, conv_padding, conv_intermediate_channels: CCT tokenizer
            convolutions (no bias, each followed by ReLU and, if `conv_pooling_kernel_size > 0`, a max-pool with
            `conv_pooling_kernel_size`, `conv_pooling_stride`, `conv_pooling_padding`).
        pooler_type (`str`): `"cls"` (class token), `"sequence"` (CCT's attention pooling) or `"mean"`.
        use_distillation_token (`bool`): DeiT's distillation token (needs `pooler_type="cls"`).
        encoder_layer_form (`str`): `"pre_norm"` (ViT/DeiT) or `"post_attention_norm"` (CCT: the MLP input is the
            normalized residual stream).
        apply_layernorm (`bool`, defaults to `True`): `LapeViTBackbone` applies the final LayerNorm to its feature maps.
        reshape_hidden_states (`bool`, defaults to `True`): `LapeViTBackbone` returns `(batch, hidden, rows, columns)`
            maps of the patch tokens; `False`: the `(batch, tokens, hidden)` sequences, prefix tokens included.
        out_features, out_indices (keywords, as for every transformers backbone): the stages `LapeViTBackbone` returns,
            by name (`"stem"` for the embeddings, `"stage1"`.. for the layers) or index (default: the last).
        num_labels (`int`, a keyword of every transformers config): classes of the classifier head; `0` builds the
            classification models without a head (their logits are the pooled features, as timm's `num_classes=0`).

    Example:

    ```python
    >>> from lape_hf import LapeViTConfig, LapeViTForImageClassification
    >>> config = LapeViTConfig.from_preset("vit-lite-7/4", pe_join="lape", num_labels=10)
    >>> model = LapeViTForImageClassification(config)
    ```
    """

    model_type = "lape_vit"

    image_size: int | list[int] | tuple[int, ...] = validated_field(_image_size, default=224)
    patch_size: int = validated_field(_integer_at_least(1), default=16)
    num_channels: int = validated_field(_integer_at_least(1), default=3)
    hidden_size: int = validated_field(_integer_at_least(1), default=192)
    num_hidden_layers: int = validated_field(_integer_at_least(1), default=12)
    num_attention_heads: int = validated_field(_integer_at_least(1), default=3)
    intermediate_size: int = validated_field(_integer_at_least(1), default=768)
    hidden_act: str = validated_field(_activation, default="gelu")
    hidden_dropout_prob: float | int = validated_field(_rate, default=0.0)
    attention_probs_dropout_prob: float | int = validated_field(_rate, default=0.0)
    drop_path_rate: float | int = validated_field(_rate, default=0.0)
    layer_norm_eps: float | int = validated_field(_positive_finite, default=1e-6)
    qkv_bias: bool = True
    initializer_range: float | int = validated_field(_non_negative_finite, default=0.02)
    position_embedding_type: str = validated_field(_one_of(POSITION_EMBEDDING_TYPES), default="learnable")
    pe_join: str = validated_field(_one_of(PE_JOINS), default="lape")
    relative_position_bias: str = validated_field(_one_of(RELATIVE_POSITION_BIAS_TYPES), default="none")
    relative_position_layer_norm_eps: float | int = validated_field(_positive_finite, default=1e-5)
    tokenizer_type: str = validated_field(_one_of(TOKENIZER_TYPES), default="patch")
    conv_num_layers: int = validated_field(_integer_at_least(1), default=1)
    conv_kernel_size: int = validated_field(_integer_at_least(1), default=3)
    conv_stride: int = validated_field(_integer_at_least(1), default=1)
    conv_padding: int = validated_field(_integer_at_least(0), default=1)
    conv_pooling_kernel_size: int = validated_field(_integer_at_least(0), default=3)
    conv_pooling_stride: int = validated_field(_integer_at_least(1), default=2)
    conv_pooling_padding: int = validated_field(_integer_at_least(0), default=1)
    conv_intermediate_channels: int = validated_field(_integer_at_least(1), default=64)
    pooler_type: str = validated_field(_one_of(POOLER_TYPES), default="cls")
    use_distillation_token: bool = False
    encoder_layer_form: str = validated_field(_one_of(ENCODER_LAYER_FORMS), default="pre_norm")
    apply_layernorm: bool = True
    reshape_hidden_states: bool = True

    def __post_init__(self, **kwargs):
        if isinstance(self.image_size, tuple):
            self.image_size = list(self.image_size)  # one form, as JSON gives it back
        # The backbone's stages (transformers' BackboneConfigMixin): the embeddings, then one per layer; derived from
        # the depth, so a stored list is not read back.
        kwargs.pop("stage_names", None)
        self.stage_names = ["stem"] + [f"stage{index}" for index in range(1, self.num_hidden_layers + 1)]
        self.set_output_features_output_indices(
            out_indices=kwargs.pop("out_indices", None), out_features=kwargs.pop("out_features", None)
        )
        super().__post_init__(**kwargs)
        # AutoModelForImageClassification picks the plain or distilled classifier by `architectures` and iterates it
        # (transformers' `_get_model_class`), so `from_config` on a fresh config needs a list, not None.
        if self.architectures is None:
            self.architectures = []

    def to_dict(self) -> dict[str, Any]:
        """The saved form. The default backbone output (the last stage) is saved as None, so it stays "the last
        stage" when a later config changes the depth; the stage names are derived, not saved."""
        output = super().to_dict()
        output.pop("stage_names", None)
        if output.get("out_indices") == [len(self.stage_names) - 1]:
            output["out_features"] = output["out_indices"] = None
        return output

    @property
    def num_labels(self) -> int | None:
        return PreTrainedConfig.num_labels.fget(self)

    @num_labels.setter
    def num_labels(self, num_labels: int) -> None:
        # transformers turns a negative count into an empty label map (no head) without a word: refuse it instead.
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 0:
            raise LapeViTConfigError(
                f"num_labels={num_labels!r} must be an integer >= 0 (0: no classifier head, the logits are the "
                "pooled features)."
            )
        PreTrainedConfig.num_labels.fset(self, num_labels)

    # ----------------------------------------------------------------------------------------------------------------
    # Rules between fields: the strict dataclass runs every `validate_*` method after construction and before saving
    # ----------------------------------------------------------------------------------------------------------------
    def validate_attention_shape(self) -> None:
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be divisible by num_attention_heads={self.num_attention_heads}."
            )

    def validate_position_embedding(self) -> None:
        if self.position_embedding_type == "sinusoidal_2d" and self.hidden_size % 4 != 0:
            raise ValueError(
                f"position_embedding_type='sinusoidal_2d' needs hidden_size divisible by 4, got {self.hidden_size}."
            )
        if self.position_embedding_type == "sinusoidal_1d" and self.hidden_size % 2 != 0:
            raise ValueError(
                f"position_embedding_type='sinusoidal_1d' needs an even hidden_size, got {self.hidden_size}."
            )
        if self.pe_join == "unshare" and self.position_embedding_type != "learnable":
            raise ValueError(
                f"pe_join='unshare' learns one PE per layer and needs position_embedding_type='learnable', got "
                f"{self.position_embedding_type!r} (a fixed PE is the same in every layer: use pe_join='share')."
            )

    def validate_token_grid(self) -> None:
        if self.tokenizer_type == "patch":
            height, width = self.image_size_2d
            if height % self.patch_size or width % self.patch_size:
                raise ValueError(f"image_size={self.image_size!r} must be divisible by patch_size={self.patch_size}.")
            return
        if self.conv_pooling_kernel_size > 0 and 2 * self.conv_pooling_padding > self.conv_pooling_kernel_size:
            raise ValueError(
                f"conv_pooling_padding={self.conv_pooling_padding} must be at most half of "
                f"conv_pooling_kernel_size={self.conv_pooling_kernel_size}."
            )
        rows, columns = self.token_grid_size()
        if rows < 1 or columns < 1:
            raise ValueError(
                f"The convolutional tokenizer turns image_size={self.image_size!r} into a {rows}x{columns} grid; "
                "use a larger image or fewer/smaller-stride conv layers."
            )

    def validate_prefix_tokens(self) -> None:
        if self.use_distillation_token and self.pooler_type != "cls":
            raise ValueError(
                f"use_distillation_token=True needs pooler_type='cls' (DeiT), got pooler_type={self.pooler_type!r}."
            )

    # ----------------------------------------------------------------------------------------------------------------
    # Derived shapes: one place that knows how many tokens the tokenizer makes
    # ----------------------------------------------------------------------------------------------------------------
    @property
    def image_size_2d(self) -> tuple[int, int]:
        if isinstance(self.image_size, (list, tuple)):
            return self.image_size[0], self.image_size[1]
        return self.image_size, self.image_size

    def token_grid_size(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """The (rows, columns) grid of patch tokens the tokenizer makes from an image of this size."""
        default_height, default_width = self.image_size_2d
        height = default_height if height is None else height
        width = default_width if width is None else width
        if self.tokenizer_type == "patch":
            return height // self.patch_size, width // self.patch_size
        for _ in range(self.conv_num_layers):
            height = _conv_output_size(height, self.conv_kernel_size, self.conv_stride, self.conv_padding)
            width = _conv_output_size(width, self.conv_kernel_size, self.conv_stride, self.conv_padding)
            if self.conv_pooling_kernel_size > 0:
                height = _conv_output_size(
                    height, self.conv_pooling_kernel_size, self.conv_pooling_stride, self.conv_pooling_padding
                )
                width = _conv_output_size(
                    width, self.conv_pooling_kernel_size, self.conv_pooling_stride, self.conv_pooling_padding
                )
        return height, width

    @property
    def num_patches(self) -> int:
        rows, columns = self.token_grid_size()
        return rows * columns

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens: the class token and, for distilled models, the distillation token."""
        return int(self.pooler_type == "cls") + int(self.use_distillation_token)

    @property
    def num_tokens(self) -> int:
        return self.num_prefix_tokens + self.num_patches

    # ----------------------------------------------------------------------------------------------------------------
    # Presets
    # ----------------------------------------------------------------------------------------------------------------
    @classmethod
    def preset_names(cls) -> list[str]:
        return sorted(PRESETS)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "LapeViTConfig":
        """A config for a named preset (see `LapeViTConfig.preset_names()`), with any field overridden."""
        check_preset_name(name)
        return cls(**{**copy.deepcopy(PRESETS[name]), **overrides})


__all__ = [
    "LAPE_JOINS",
    "PE_JOIN_DESCRIPTIONS",
    "POSITION_EMBEDDING_DESCRIPTIONS",
    "PRESETS",
    "LapeViTConfig",
    "LapeViTConfigError",
    "check_preset_name",
]
