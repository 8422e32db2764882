"""LapeViT model configuration and named presets.

LaPE (Layer-adaptive Position Embedding, arXiv 2212.05262 / ICCV 2023) gives every transformer layer its own
LayerNorm for the position embedding (PE) and joins the normalized PE to the normalized tokens only at the attention
input. This file is also shipped as Hub remote code: it imports only torch/transformers.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

POSITION_EMBEDDING_TYPES = ("learnable", "sinusoidal_1d", "sinusoidal_2d", "none")
PE_JOINS = ("lape", "lape_shared", "add", "share", "unshare")
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


def _conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class LapeViTConfig(PreTrainedConfig):
    r"""
    Configuration of a LapeViT model: a ViT/DeiT/CCT-style encoder whose position embedding (PE) is joined to the
    tokens in one of the ways studied by the LaPE paper.

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
        position_embedding_type (`str`): one of `"learnable"`, `"sinusoidal_1d"`, `"sinusoidal_2d"`, `"none"`.
        pe_join (`str`): how the PE meets the tokens: `"lape"` (per-layer LayerNorm, chained across layers: the
            paper's method), `"lape_shared"` (per-layer LayerNorm of the raw PE), `"add"` (added once before the
            first layer), `"share"` (the raw PE added before every layer), `"unshare"` (a learnable PE per layer).
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

    Example:

    ```python
    >>> from lape_hf import LapeViTConfig, LapeViTForImageClassification
    >>> config = LapeViTConfig.from_preset("vit-lite-7/4", pe_join="lape", num_labels=10)
    >>> model = LapeViTForImageClassification(config)
    ```
    """

    model_type = "lape_vit"

    image_size: int | list[int] = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 192
    num_hidden_layers: int = 12
    num_attention_heads: int = 3
    intermediate_size: int = 768
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    drop_path_rate: float = 0.0
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    initializer_range: float = 0.02
    position_embedding_type: str = "learnable"
    pe_join: str = "lape"
    relative_position_bias: str = "none"
    relative_position_layer_norm_eps: float = 1e-5
    tokenizer_type: str = "patch"
    conv_num_layers: int = 1
    conv_kernel_size: int = 3
    conv_stride: int = 1
    conv_padding: int = 1
    conv_pooling_kernel_size: int = 3
    conv_pooling_stride: int = 2
    conv_pooling_padding: int = 1
    conv_intermediate_channels: int = 64
    pooler_type: str = "cls"
    use_distillation_token: bool = False
    encoder_layer_form: str = "pre_norm"

    def __post_init__(self, **kwargs):
        if isinstance(self.image_size, (list, tuple)):
            self.image_size = [int(s) for s in self.image_size]
        super().__post_init__(**kwargs)
        # AutoModelForImageClassification picks the plain or distilled classifier by `architectures` and iterates it
        # (transformers' `_get_model_class`), so `from_config` on a fresh config needs a list, not None.
        if self.architectures is None:
            self.architectures = []
        self._validate_lape_arguments()

    # ----------------------------------------------------------------------------------------------------------------
    # Derived shapes: one place that knows how many tokens the tokenizer makes
    # ----------------------------------------------------------------------------------------------------------------
    @property
    def image_size_2d(self) -> tuple[int, int]:
        if isinstance(self.image_size, (list, tuple)):
            return int(self.image_size[0]), int(self.image_size[1])
        return int(self.image_size), int(self.image_size)

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
    def from_preset(cls, name: str, **overrides: Any) -> LapeViTConfig:
        """A config for a named preset (see `LapeViTConfig.preset_names()`), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; allowed: {', '.join(sorted(PRESETS))}.")
        return cls(**{**copy.deepcopy(PRESETS[name]), **overrides})

    # ----------------------------------------------------------------------------------------------------------------
    # Validation: every bad value fails here, naming the value and what is allowed
    # ----------------------------------------------------------------------------------------------------------------
    def _validate_lape_arguments(self) -> None:
        def choice(name: str, allowed: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not supported; allowed: {', '.join(map(repr, allowed))}.")

        def positive_int(name: str, minimum: int = 1) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name}={value!r} must be an integer >= {minimum}.")

        def rate(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value!r} must be a number in [0, 1).")

        choice("position_embedding_type", POSITION_EMBEDDING_TYPES)
        choice("pe_join", PE_JOINS)
        choice("relative_position_bias", RELATIVE_POSITION_BIAS_TYPES)
        choice("tokenizer_type", TOKENIZER_TYPES)
        choice("pooler_type", POOLER_TYPES)
        choice("encoder_layer_form", ENCODER_LAYER_FORMS)
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not a known activation; allowed: {sorted(ACT2FN)}.")

        for name in ("patch_size", "num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads"):
            positive_int(name)
        positive_int("intermediate_size")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"):
            rate(name)
        for name in ("layer_norm_eps", "relative_position_layer_norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive number.")
        if not isinstance(self.initializer_range, (int, float)) or self.initializer_range < 0:
            raise ValueError(f"initializer_range={self.initializer_range!r} must be a number >= 0.")

        image_size = self.image_size if isinstance(self.image_size, list) else [self.image_size]
        if len(image_size) not in (1, 2) or any(isinstance(s, bool) or not isinstance(s, int) for s in image_size):
            raise ValueError(f"image_size={self.image_size!r} must be an integer or a [height, width] pair.")
        if any(s < 1 for s in image_size):
            raise ValueError(f"image_size={self.image_size!r} must be positive.")

        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be divisible by num_attention_heads={self.num_attention_heads}."
            )
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

        height, width = self.image_size_2d
        if self.tokenizer_type == "patch":
            if height % self.patch_size or width % self.patch_size:
                raise ValueError(f"image_size={self.image_size!r} must be divisible by patch_size={self.patch_size}.")
        else:
            positive_int("conv_num_layers")
            positive_int("conv_kernel_size")
            positive_int("conv_stride")
            positive_int("conv_padding", minimum=0)
            positive_int("conv_intermediate_channels")
            positive_int("conv_pooling_kernel_size", minimum=0)
            if self.conv_pooling_kernel_size > 0:
                positive_int("conv_pooling_stride")
                positive_int("conv_pooling_padding", minimum=0)
                if 2 * self.conv_pooling_padding > self.conv_pooling_kernel_size:
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

        if self.use_distillation_token and self.pooler_type != "cls":
            raise ValueError(
                f"use_distillation_token=True needs pooler_type='cls' (DeiT), got pooler_type={self.pooler_type!r}."
            )


__all__ = ["LapeViTConfig", "PRESETS"]
