"""PyTorch LapeViT: Vision Transformers with Layer-adaptive Position Embedding (LaPE).

LaPE (Yu et al., "LaPE: Layer-adaptive Position Embedding for Vision Transformers with Independent Layer
Normalization", ICCV 2023) gives every layer its own LayerNorm for the position embedding (PE) and joins the result
to the normalized tokens only at the attention input; the normalized PE of one layer is what the next layer
normalizes again. The module is laid out top to bottom: tokenizers, position embeddings, embeddings, attention,
MLP, the encoder layer (the only place where the PE meets the tokens), the encoder, poolers and the heads.

This file is also shipped as Hub remote code: it imports only torch, transformers and its configuration file.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BackboneOutput, BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import ModelOutput, logging
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .configuration_lape_vit import LAPE_JOINS, LapeViTConfig

logger = logging.get_logger(__name__)


# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class LapeViTModelOutput(BaseModelOutputWithPooling):
    r"""
    layer_position_embeddings (`tuple(torch.FloatTensor)`, *optional*, returned when
    `output_position_embeddings=True`): one `(1, num_tokens, hidden_size)` tensor per layer, the PE that layer
    receives. For the LaPE joins this is the layer's normalized PE `p_l`; for the additive joins it is the PE added to
    the stream seen through the layer's pre-attention LayerNorm (`norm1_l`), the quantity the LaPE paper plots.
    """

    layer_position_embeddings: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class LapeViTImageClassifierOutput(ImageClassifierOutput):
    r"""
    layer_position_embeddings (`tuple(torch.FloatTensor)`, *optional*): see `LapeViTModelOutput`.
    """

    layer_position_embeddings: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class LapeViTForImageClassificationWithTeacherOutput(ModelOutput):
    r"""
    Output of the distilled (DeiT) form: `logits` is the average of the class-token and distillation-token heads,
    which is the prediction at inference; both heads' logits are returned for training with a teacher.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cls_logits: torch.FloatTensor | None = None
    distillation_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    layer_position_embeddings: tuple[torch.FloatTensor, ...] | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizers: pixels -> (batch, num_patches, hidden_size) plus the token grid they form
# ---------------------------------------------------------------------------------------------------------------------
class LapeViTPatchTokenizer(nn.Module):
    """ViT's patch embedding: one strided convolution, one token per non-overlapping patch."""

    def __init__(self, config: LapeViTConfig):
        super().__init__()
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        features = self.projection(pixel_values)
        return features.flatten(2).transpose(1, 2), (features.shape[-2], features.shape[-1])


class LapeViTConvTokenizer(nn.Module):
    """CCT's convolutional tokenizer: (conv without bias -> ReLU -> max-pool) x n, overlapping receptive fields."""

    def __init__(self, config: LapeViTConfig):
        super().__init__()
        channels = [config.num_channels]
        channels += [config.conv_intermediate_channels] * (config.conv_num_layers - 1)
        channels += [config.hidden_size]
        layers: list[nn.Module] = []
        for in_channels, out_channels in zip(channels[:-1], channels[1:], strict=True):
            layers.append(
                nn.Conv2d(
                    in_channels,
                    out_channels,
                    kernel_size=config.conv_kernel_size,
                    stride=config.conv_stride,
                    padding=config.conv_padding,
                    bias=False,
                )
            )
            layers.append(nn.ReLU())
            if config.conv_pooling_kernel_size > 0:
                layers.append(
                    nn.MaxPool2d(
                        kernel_size=config.conv_pooling_kernel_size,
                        stride=config.conv_pooling_stride,
                        padding=config.conv_pooling_padding,
                    )
                )
        self.layers = nn.Sequential(*layers)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        features = self.layers(pixel_values)
        return features.flatten(2).transpose(1, 2), (features.shape[-2], features.shape[-1])


TOKENIZER_CLASSES: dict[str, type[nn.Module]] = {"patch": LapeViTPatchTokenizer, "conv": LapeViTConvTokenizer}


# ---------------------------------------------------------------------------------------------------------------------
# Position embeddings
# ---------------------------------------------------------------------------------------------------------------------
def sinusoidal_1d_position_embedding(num_positions: int, dim: int) -> torch.Tensor:
    """(num_positions, dim): value[pos, i] = sin/cos(pos / 10000^(2*(i//2)/dim)) for even/odd i."""
    positions = torch.arange(num_positions, dtype=torch.float64)[:, None]
    exponents = 2 * (torch.arange(dim) // 2).to(torch.float64) / dim
    angles = positions / torch.pow(10000.0, exponents)[None, :]
    table = torch.empty(num_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.float()


def sinusoidal_2d_position_embedding(height: int, width: int, dim: int) -> torch.Tensor:
    """(height * width, dim), row-major: the first half of the channels encodes the column, the second the row."""
    half = dim // 2
    frequencies = torch.exp(torch.arange(0, half, 2, dtype=torch.float64) * -(math.log(10000.0) / half))
    column_angles = torch.arange(width, dtype=torch.float64)[:, None] * frequencies  # (width, half/2)
    row_angles = torch.arange(height, dtype=torch.float64)[:, None] * frequencies  # (height, half/2)
    table = torch.empty(height, width, dim, dtype=torch.float64)
    table[:, :, 0:half:2] = torch.sin(column_angles)[None, :, :]
    table[:, :, 1:half:2] = torch.cos(column_angles)[None, :, :]
    table[:, :, half::2] = torch.sin(row_angles)[:, None, :]
    table[:, :, half + 1 :: 2] = torch.cos(row_angles)[:, None, :]
    return table.reshape(height * width, dim).float()


def is_stored_grid(grid_size: tuple[int, int], stored_grid_size: tuple[int, int]) -> bool:
    """Whether a token grid is the one the PE tables are stored for (then they are used as they are).

    Always False while `torch.export` traces: comparing a symbolic size with the stored grid would specialize the
    exported graph to one side of the comparison. The general path gives the same values at the stored grid (bicubic
    resizing to the same size is the identity; a sinusoidal table recomputed for it is the same table).
    """
    return not torch.compiler.is_exporting() and tuple(grid_size) == tuple(stored_grid_size)


class LapeViTPositionEmbedding(nn.Module):
    """
    The model's absolute PE, `(num_tables, num_tokens, hidden_size)`: one table, or one per layer for
    `pe_join="unshare"`. Learnable tables are resized bicubically for another token grid; sinusoidal ones are
    recomputed for it. Prefix tokens (class/distillation) get position 0.. of the 1-D table and zeros in 2-D.
    """

    def __init__(self, config: LapeViTConfig):
        super().__init__()
        self.type = config.position_embedding_type
        self.num_prefix_tokens = config.num_prefix_tokens
        self.hidden_size = config.hidden_size
        self.grid_size = config.token_grid_size()
        num_tables = LapeViTPositionStream.num_tables(config.pe_join, config.num_hidden_layers)
        if self.type == "learnable":
            self.position_embeddings = nn.Parameter(torch.zeros(num_tables, config.num_tokens, config.hidden_size))
        elif self.type in ("sinusoidal_1d", "sinusoidal_2d"):
            # Fixed, derived from the config: recomputed in `_init_weights`, never stored in checkpoints.
            self.register_buffer("position_embeddings", self.sinusoidal_table(self.grid_size), persistent=False)

    def sinusoidal_table(self, grid_size: tuple[int, int]) -> torch.Tensor:
        num_patches = grid_size[0] * grid_size[1]
        if self.type == "sinusoidal_1d":
            table = sinusoidal_1d_position_embedding(self.num_prefix_tokens + num_patches, self.hidden_size)
        else:
            patches = sinusoidal_2d_position_embedding(grid_size[0], grid_size[1], self.hidden_size)
            table = torch.cat([patches.new_zeros(self.num_prefix_tokens, self.hidden_size), patches])
        return table[None]

    def forward(self, grid_size: tuple[int, int]) -> torch.Tensor | None:
        if self.type == "none":
            return None
        if is_stored_grid(grid_size, self.grid_size):
            return self.position_embeddings
        if self.type == "learnable":
            return self._resize_learnable(grid_size)
        return self.sinusoidal_table(grid_size).to(self.position_embeddings)

    def _resize_learnable(self, grid_size: tuple[int, int]) -> torch.Tensor:
        tables = self.position_embeddings
        prefix, patches = tables[:, : self.num_prefix_tokens], tables[:, self.num_prefix_tokens :]
        patches = patches.reshape(tables.shape[0], *self.grid_size, self.hidden_size).permute(0, 3, 1, 2)
        patches = nn.functional.interpolate(
            patches.float(), size=tuple(grid_size), mode="bicubic", align_corners=False
        ).to(tables.dtype)
        patches = patches.permute(0, 2, 3, 1).reshape(tables.shape[0], -1, self.hidden_size)
        return torch.cat([prefix, patches], dim=1)


class LapeViTRelativePositionBias(nn.Module):
    """
    Swin-style 2-D relative position bias of one layer: a `((2H-1)(2W-1), heads)` table indexed by the offset between
    two patches, added to the patch-to-patch attention logits (never to class-token rows or columns). Its LaPE form
    normalizes the bias with a LayerNorm over the key axis before adding it.
    """

    def __init__(self, config: LapeViTConfig):
        super().__init__()
        self.grid_size = config.token_grid_size()
        self.num_prefix_tokens = config.num_prefix_tokens
        rows, columns = self.grid_size
        self.table = nn.Parameter(torch.zeros((2 * rows - 1) * (2 * columns - 1), config.num_attention_heads))
        self.register_buffer("index", self.relative_position_index(self.grid_size), persistent=False)
        num_patches = rows * columns
        self.layernorm = (
            nn.LayerNorm(num_patches, eps=config.relative_position_layer_norm_eps)
            if config.relative_position_bias == "lape"
            else None
        )

    @staticmethod
    def relative_position_index(grid_size: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
        """`(N, N)` row of the table for each pair of patches; made on `device` directly (no host-to-device copy)."""
        rows, columns = grid_size
        grid = torch.meshgrid(torch.arange(rows, device=device), torch.arange(columns, device=device), indexing="ij")
        coords = torch.stack(grid).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
        return (relative[..., 0] + rows - 1) * (2 * columns - 1) + (relative[..., 1] + columns - 1)

    def forward(self, grid_size: tuple[int, int]) -> torch.Tensor:
        """The `(1, heads, num_tokens, num_tokens)` additive attention bias for this token grid."""
        table, index, layernorm_weight, layernorm_bias = self.table, self.index, None, None
        if self.layernorm is not None:
            layernorm_weight, layernorm_bias = self.layernorm.weight, self.layernorm.bias
        if not is_stored_grid(grid_size, self.grid_size):
            table, layernorm_weight, layernorm_bias = self._resized(grid_size)
            index = self.relative_position_index(grid_size, table.device)
        num_patches = grid_size[0] * grid_size[1]
        bias = table[index.reshape(-1)].reshape(num_patches, num_patches, -1).permute(2, 0, 1)
        if self.layernorm is not None:
            bias = nn.functional.layer_norm(bias, (num_patches,), layernorm_weight, layernorm_bias, self.layernorm.eps)
        prefix = self.num_prefix_tokens
        return nn.functional.pad(bias, (prefix, 0, prefix, 0))[None]

    def _resized(self, grid_size: tuple[int, int]):
        """Table (and key-axis LayerNorm affine) bicubically resized to another grid."""
        rows, columns = self.grid_size
        heads = self.table.shape[1]
        table = self.table.T.reshape(1, heads, 2 * rows - 1, 2 * columns - 1)
        new_size = (2 * grid_size[0] - 1, 2 * grid_size[1] - 1)
        table = nn.functional.interpolate(table.float(), size=new_size, mode="bicubic", align_corners=False)
        table = table.reshape(heads, -1).T.to(self.table.dtype)
        if self.layernorm is None:
            return table, None, None
        affine = torch.stack([self.layernorm.weight, self.layernorm.bias]).reshape(1, 2, rows, columns)
        affine = nn.functional.interpolate(affine.float(), size=tuple(grid_size), mode="bicubic", align_corners=False)
        affine = affine.reshape(2, -1).to(self.layernorm.weight.dtype)
        return table, affine[0], affine[1]


# ---------------------------------------------------------------------------------------------------------------------
# The PE stream: the one place that knows the joins
# ---------------------------------------------------------------------------------------------------------------------
class LapeViTPositionStream:
    """
    What the position embedding does on its way through the encoder, by `pe_join`. Given the model's PE tables
    `(num_tables, tokens, hidden)`, it says what reaches the tokens before the first layer, what PE each layer
    receives, and what each layer passes on; it also keeps the PE each layer sees for `output_position_embeddings`.

    ============  =====================  ==========================  ==================================
    pe_join       before the 1st layer   layer l receives            joined
    ============  =====================  ==========================  ==================================
    lape          nothing                p_{l-1} (p_0 for l = 1)     p_l = LN_pe_l(...) at attention input
    lape_shared   nothing                p_0                         p_l = LN_pe_l(p_0) at attention input
    add           x + p_0                nothing                     (in the residual stream)
    share         nothing                p_0                         added to the residual stream
    unshare       nothing                its own table p_0^(l)       added to the residual stream
    ============  =====================  ==========================  ==================================

    The layer applies what it receives: with a PE LayerNorm (the LaPE joins) at the attention input, otherwise to
    the residual stream. The PE a layer "sees" is what its attention input gets from the PE: `p_l` for the LaPE joins,
    and for the additive joins the added PE through the layer's pre-attention LayerNorm (the quantity the paper plots).
    """

    def __init__(self, pe_join: str, tables: torch.Tensor | None, record: bool = False):
        self.pe_join = pe_join
        self.tables = tables
        self.carried = tables[:1] if tables is not None else None
        self.seen: list[torch.Tensor] | None = [] if record and tables is not None else None

    @staticmethod
    def num_tables(pe_join: str, num_layers: int) -> int:
        """How many PE tables the join needs: one per layer for "unshare", else one."""
        return num_layers if pe_join == "unshare" else 1

    def join_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The tokens entering the encoder: `x + p_0` for "add" (before the token dropout), else unchanged."""
        return tokens + self.tables[:1] if self.pe_join == "add" and self.tables is not None else tokens

    def _added(self, index: int) -> torch.Tensor:
        return self.tables[index : index + 1] if self.pe_join == "unshare" else self.tables[:1]

    def layer_input(self, index: int) -> torch.Tensor | None:
        """The PE layer `index` receives (None: the layer does nothing with a PE)."""
        if self.tables is None or self.pe_join == "add":
            return None
        return self.carried if self.pe_join == "lape" else self._added(index)

    def layer_output(self, index: int, layer: nn.Module, received: torch.Tensor | None) -> None:
        """Take what layer `index` returned as its PE: the chain's next link for "lape"; record what it saw."""
        if self.pe_join == "lape":
            self.carried = received
        if self.seen is not None:
            normalized = self.pe_join in LAPE_JOINS
            self.seen.append(received if normalized else layer.layernorm_before(self._added(index)))

    def recorded(self) -> tuple[torch.Tensor, ...] | None:
        return tuple(self.seen) if self.seen is not None else None


# ---------------------------------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------------------------------
class LapeViTEmbeddings(nn.Module):
    """
    Tokenizer, class/distillation tokens and the model's PE: returns the tokens entering the encoder (joined with
    the PE as the PE stream says: only "add" joins here) and the PE stream. Dropout applies to the tokens.
    """

    def __init__(self, config: LapeViTConfig):
        super().__init__()
        self.pe_join = config.pe_join
        self.tokenizer = TOKENIZER_CLASSES[config.tokenizer_type](config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.pooler_type == "cls" else None
        self.distillation_token = (
            nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.use_distillation_token else None
        )
        self.position_embedding = LapeViTPositionEmbedding(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, pixel_values: torch.Tensor, output_position_embeddings: bool = False
    ) -> tuple[torch.Tensor, LapeViTPositionStream, tuple[int, int]]:
        embeddings, grid_size = self.tokenizer(pixel_values)
        batch_size = embeddings.shape[0]
        prefix = [
            token.expand(batch_size, -1, -1) for token in (self.cls_token, self.distillation_token) if token is not None
        ]
        if prefix:
            embeddings = torch.cat([*prefix, embeddings], dim=1)
        stream = LapeViTPositionStream(
            self.pe_join, self.position_embedding(grid_size), record=output_position_embeddings
        )
        return self.dropout(stream.join_tokens(embeddings)), stream, grid_size


# ---------------------------------------------------------------------------------------------------------------------
# Attention and MLP
# ---------------------------------------------------------------------------------------------------------------------
def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


# flash takes no additive bias; flex would apply head 0's bias to every head: only these two are exact.
ATTENTION_WITH_BIAS = ("eager", "sdpa")


def check_attention_takes_bias(config: LapeViTConfig, attn_implementation: str | None) -> None:
    """A relative position bias reaches attention as an additive mask, which only some implementations apply."""
    if config.relative_position_bias != "none" and attn_implementation not in ATTENTION_WITH_BIAS:
        raise ValueError(
            f"relative_position_bias={config.relative_position_bias!r} needs an attention implementation that takes "
            f"an additive bias ({' or '.join(map(repr, ATTENTION_WITH_BIAS))}), got {attn_implementation!r}."
        )


class LapeViTAttention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection, through transformers' attention interface."""

    def __init__(self, config: LapeViTConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        self.is_causal = False
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.proj_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.relative_position_bias = (
            LapeViTRelativePositionBias(config) if config.relative_position_bias != "none" else None
        )

    def forward(
        self, hidden_states: torch.Tensor, grid_size: tuple[int, int], **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, num_tokens, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch_size, num_tokens, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)

        # The relative position bias reaches both eager and sdpa as an additive float attention mask.
        attention_mask = None
        if self.relative_position_bias is not None:
            # Checked at load time too; here for a config whose implementation was changed by hand since.
            check_attention_takes_bias(self.config, self.config._attn_implementation)
            attention_mask = self.relative_position_bias(grid_size).to(query.dtype)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
            **kwargs,
        )
        attn_output = attn_output.reshape(batch_size, num_tokens, -1)
        return self.proj_dropout(self.proj(attn_output)), attn_weights


class LapeViTMLP(nn.Module):
    def __init__(self, config: LapeViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout(self.activation(self.fc1(hidden_states)))
        return self.dropout(self.fc2(hidden_states))


class LapeViTDropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample during training."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        mask = hidden_states.new_empty(shape).bernoulli_(keep_prob)
        return hidden_states * mask / keep_prob

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


# ---------------------------------------------------------------------------------------------------------------------
# The encoder layer: where the PE meets the tokens
# ---------------------------------------------------------------------------------------------------------------------
class LapeViTLayer(GradientCheckpointingLayer):
    """
    One encoder layer. With the LaPE joins it owns a LayerNorm for the PE it receives (see `LapeViTPositionStream`):

        p_l = LN_pe_l(p_in);  x = x + DropPath(Attn(LN1_l(x) + p_l));  x = x + DropPath(MLP(LN2_l(x)))

    and returns `p_l`; without a PE LayerNorm (the additive joins) a PE it receives is added to the residual stream
    before the layer. The `"post_attention_norm"` form (CCT) normalizes the stream after the attention residual and
    feeds the MLP with it.
    """

    def __init__(self, config: LapeViTConfig, drop_path_rate: float = 0.0):
        super().__init__()
        self.post_attention_norm = config.encoder_layer_form == "post_attention_norm"
        uses_pe_norm = config.pe_join in LAPE_JOINS and config.position_embedding_type != "none"
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.position_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if uses_pe_norm else None
        self.attention = LapeViTAttention(config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = LapeViTMLP(config)
        self.drop_path = LapeViTDropPath(drop_path_rate)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embedding: torch.Tensor | None,
        grid_size: tuple[int, int],
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # One name per stream, rebound as soon as a tensor is used up: in inference every (batch, tokens, hidden)
        # intermediate is freed at once instead of living until the layer returns.
        if position_embedding is not None and self.position_layernorm is None:
            hidden_states = hidden_states + position_embedding
        residual = hidden_states
        hidden_states = self.layernorm_before(hidden_states)
        if position_embedding is not None and self.position_layernorm is not None:
            position_embedding = self.position_layernorm(position_embedding)
            hidden_states = hidden_states + position_embedding
        hidden_states, _ = self.attention(hidden_states, grid_size, **kwargs)
        hidden_states = residual + self.drop_path(hidden_states)

        if self.post_attention_norm:
            hidden_states = self.layernorm_after(hidden_states)
            residual = hidden_states
        else:
            residual = hidden_states
            hidden_states = self.layernorm_after(hidden_states)
        hidden_states = residual + self.drop_path(self.mlp(hidden_states))
        return hidden_states, position_embedding


class LapeViTEncoder(nn.Module):
    """The layer stack; each layer receives the PE the stream gives it and hands back the PE it passes on."""

    def __init__(self, config: LapeViTConfig):
        super().__init__()
        last = max(config.num_hidden_layers - 1, 1)
        # Stochastic depth rises linearly to drop_path_rate (computed in Python: a model can be built on "meta").
        rates = [config.drop_path_rate * index / last for index in range(config.num_hidden_layers)]
        self.layers = nn.ModuleList(LapeViTLayer(config, rate) for rate in rates)

    def forward(
        self,
        hidden_states: torch.Tensor,
        stream: LapeViTPositionStream,
        grid_size: tuple[int, int],
        layer_outputs: list[torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """`layer_outputs`, when given, receives every layer's output (the backbone's stages)."""
        for index, layer in enumerate(self.layers):
            hidden_states, position_embedding = layer(hidden_states, stream.layer_input(index), grid_size, **kwargs)
            stream.layer_output(index, layer, position_embedding)
            if layer_outputs is not None:
                layer_outputs.append(hidden_states)
        return hidden_states


# ---------------------------------------------------------------------------------------------------------------------
# Poolers: (batch, tokens, hidden) -> (batch, hidden)
# ---------------------------------------------------------------------------------------------------------------------
class LapeViTClassTokenPooler(nn.Module):
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states[:, 0]


class LapeViTMeanPooler(nn.Module):
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states.mean(dim=1)


class LapeViTSequencePooler(nn.Module):
    """CCT's sequence pooling: a softmax over tokens of a learned score, then the weighted sum of the tokens."""

    def __init__(self, config: LapeViTConfig):
        super().__init__()
        self.attention_pool = nn.Linear(config.hidden_size, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weights = nn.functional.softmax(self.attention_pool(hidden_states), dim=1)  # (batch, tokens, 1)
        return torch.matmul(weights.transpose(-1, -2), hidden_states).squeeze(-2)


def build_pooler(config: LapeViTConfig) -> nn.Module:
    if config.pooler_type == "sequence":
        return LapeViTSequencePooler(config)
    return LapeViTMeanPooler() if config.pooler_type == "mean" else LapeViTClassTokenPooler()


def build_classifier(config: LapeViTConfig) -> nn.Module:
    """A linear head over the pooled features, or none for `num_labels=0` (the logits are then the features)."""
    return nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()


# ---------------------------------------------------------------------------------------------------------------------
# Pre-trained model base
# ---------------------------------------------------------------------------------------------------------------------
class LapeViTPreTrainedModel(PreTrainedModel):
    config_class = LapeViTConfig
    config: LapeViTConfig
    base_model_prefix = "lape_vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["LapeViTEmbeddings", "LapeViTLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    _can_record_outputs = {"hidden_states": LapeViTLayer, "attentions": LapeViTAttention}

    def _check_and_adjust_attn_implementation(self, attn_implementation: str | None, *args, **kwargs) -> str:
        """transformers' choice of attention (at load and at `set_attn_implementation`), refused early when the
        relative position bias could not reach it."""
        chosen = super()._check_and_adjust_attn_implementation(attn_implementation, *args, **kwargs)
        check_attention_takes_bias(self.config, chosen)
        return chosen

    def _check_pixel_values(self, pixel_values: torch.Tensor | None, interpolate_pos_encoding: bool) -> None:
        """Bad input fails here with what was given and what is expected, not as a shape error deep inside."""
        if pixel_values is None:
            raise ValueError("pixel_values is required: a float tensor (batch, channels, height, width).")
        if not isinstance(pixel_values, torch.Tensor):
            raise ValueError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}.")
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must be 4-D (batch, channels, height, width), got shape {tuple(pixel_values.shape)}."
            )
        if pixel_values.shape[0] == 0:
            raise ValueError("pixel_values holds no image (batch size 0); pass at least one.")
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values must be a floating point tensor, got dtype {pixel_values.dtype}; "
                "use the image processor (AutoImageProcessor) or convert and normalize the images first."
            )
        channels, height, width = pixel_values.shape[1:]
        if channels != self.config.num_channels:
            raise ValueError(
                f"pixel_values has {channels} channels, but the model expects num_channels={self.config.num_channels}."
            )
        expected = self.config.image_size_2d
        if not interpolate_pos_encoding and (height, width) != expected:
            raise ValueError(
                f"Input image size ({height}x{width}) does not match the model ({expected[0]}x{expected[1]}); "
                "resize the images (the image processor does) or pass interpolate_pos_encoding=True."
            )
        rows, columns = self.config.token_grid_size(height, width)
        if rows < 1 or columns < 1:
            raise ValueError(
                f"Input image size ({height}x{width}) is too small: the tokenizer makes a {rows}x{columns} grid."
            )

    def _check_class_labels(self, labels: torch.Tensor) -> None:
        """Class indices outside 0..num_labels-1 fail with the value, not as an IndexError inside the loss. Checked
        for CPU tensors only (on an accelerator the check would wait for the device at every step), and not while
        torch.compile traces (a value-dependent branch would break the graph)."""
        if torch.compiler.is_compiling() or labels.device.type != "cpu" or labels.is_floating_point():
            return
        if labels.numel() == 0:
            return
        if self.config.problem_type not in (None, "single_label_classification") or self.config.num_labels <= 1:
            return
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= self.config.num_labels:
            bad = low if low < 0 else high
            raise ValueError(f"labels holds class {bad}; allowed: 0..{self.config.num_labels - 1} (num_labels).")

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' `save_pretrained`; `auto_map` also names the other classes of this file registered for remote
        code (the bare model, the backbone), so that AutoModel and AutoBackbone load any saved LapeViT directory with
        `trust_remote_code=True` (transformers itself writes only the saved class)."""
        if self._auto_class is not None:
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            for model_class in (LapeViTModel, LapeViTBackbone):  # defined below; looked up when saving
                if model_class._auto_class is not None:
                    auto_map.setdefault(
                        model_class._auto_class, f"{__name__.rsplit('.', 1)[-1]}.{model_class.__name__}"
                    )
            self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters DeiT trains without weight decay besides the 1-D ones (biases, norms): the
        position embeddings, the class/distillation tokens and the relative position bias tables (timm's method)."""
        owned = []
        for prefix, module in self.named_modules():
            if isinstance(module, LapeViTPositionEmbedding):
                owned += [f"{prefix}.{name}" for name, _ in module.named_parameters()]
            elif isinstance(module, LapeViTRelativePositionBias):
                owned.append(f"{prefix}.table")
            elif isinstance(module, LapeViTEmbeddings):
                owned += [
                    f"{prefix}.{name}"
                    for name in ("cls_token", "distillation_token")
                    if getattr(module, name) is not None
                ]
        return set(owned)

    def _init_weights(self, module: nn.Module) -> None:
        """DeiT's initialisation: truncated normal for linear layers and learnable PEs/tokens, identity LayerNorms."""
        std = self.config.initializer_range
        if isinstance(module, nn.Conv2d) and module.bias is None:  # CCT's bias-free tokenizer convolutions
            init.kaiming_normal_(module.weight)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, LapeViTEmbeddings):
            for token in (module.cls_token, module.distillation_token):
                if token is not None:
                    init.trunc_normal_(token, mean=0.0, std=std)
        elif isinstance(module, LapeViTPositionEmbedding):
            if module.type == "learnable":
                init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)
            elif module.type != "none":
                init.copy_(module.position_embeddings, module.sinusoidal_table(module.grid_size))
        elif isinstance(module, LapeViTRelativePositionBias):
            init.trunc_normal_(module.table, mean=0.0, std=std)
            init.copy_(module.index, module.relative_position_index(module.grid_size))


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------
class LapeViTModel(LapeViTPreTrainedModel):
    """The bare encoder: embeddings, LaPE layers, final LayerNorm and the pooler chosen by `pooler_type`."""

    def __init__(self, config: LapeViTConfig):
        super().__init__(config)
        self.embeddings = LapeViTEmbeddings(config)
        self.encoder = LapeViTEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = build_pooler(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.tokenizer

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_position_embeddings: bool | None = None,
        **kwargs,
    ) -> LapeViTModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch, num_channels, height, width)`): normalized images.
        interpolate_pos_encoding (`bool`): run at a resolution other than `config.image_size` (learnable PEs and
            relative position tables are resized bicubically, sinusoidal PEs recomputed for the new grid).
        output_position_embeddings (`bool`): also return the PE each layer receives (`layer_position_embeddings`).
        """
        self._check_pixel_values(pixel_values, bool(interpolate_pos_encoding))
        pixel_values = pixel_values.to(self.layernorm.weight.dtype)
        # The PE each layer sees is collected by the stream, not by transformers' output recorder: for the additive
        # joins it is not the output of any module (the plotted quantity is the added PE through norm1_l).
        hidden_states, stream, grid_size = self.embeddings(pixel_values, bool(output_position_embeddings))
        hidden_states = self.encoder(hidden_states, stream, grid_size, **kwargs)
        sequence_output = self.layernorm(hidden_states)
        return LapeViTModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=self.pooler(sequence_output),
            layer_position_embeddings=stream.recorded(),
        )


class LapeViTForImageClassification(LapeViTPreTrainedModel):
    """LapeViT with a linear classifier on the pooled output (class token, sequence pooling or mean)."""

    def __init__(self, config: LapeViTConfig):
        super().__init__(config)
        self.lape_vit = LapeViTModel(config)
        self.classifier = build_classifier(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_position_embeddings: bool | None = None,
        **kwargs,
    ) -> LapeViTImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch,)`, *optional*): class indices (or targets for regression /
            multi-label, by `config.problem_type`); the loss is computed as for transformers' ViT.
        """
        outputs: LapeViTModelOutput = self.lape_vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_position_embeddings=output_position_embeddings,
            **kwargs,
        )
        logits = self.classifier(outputs.pooler_output)
        loss = None
        if labels is not None:
            self._check_class_labels(labels)
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return LapeViTImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            layer_position_embeddings=outputs.layer_position_embeddings,
        )


class LapeViTForImageClassificationWithTeacher(LapeViTPreTrainedModel):
    """
    The distilled DeiT form: a class-token head and a distillation-token head. Both logits are returned; `logits`,
    the prediction, is their average. With `labels` the loss is the mean of both heads' cross-entropy, the
    distillation head against `distillation_labels` (the teacher's hard labels) when given.
    """

    def __init__(self, config: LapeViTConfig):
        if not config.use_distillation_token:
            raise ValueError(
                "LapeViTForImageClassificationWithTeacher needs use_distillation_token=True (e.g. the "
                "'deit-tiny-distilled' preset), got use_distillation_token=False."
            )
        super().__init__(config)
        self.lape_vit = LapeViTModel(config)
        self.cls_classifier = build_classifier(config)
        self.distillation_classifier = build_classifier(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        distillation_labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_position_embeddings: bool | None = None,
        **kwargs,
    ) -> LapeViTForImageClassificationWithTeacherOutput:
        outputs: LapeViTModelOutput = self.lape_vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_position_embeddings=output_position_embeddings,
            **kwargs,
        )
        cls_logits = self.cls_classifier(outputs.last_hidden_state[:, 0])
        distillation_logits = self.distillation_classifier(outputs.last_hidden_state[:, 1])
        logits = (cls_logits + distillation_logits) / 2
        loss = None
        if labels is not None:
            teacher_labels = labels if distillation_labels is None else distillation_labels
            self._check_class_labels(labels)
            self._check_class_labels(teacher_labels)
            loss = (
                self.loss_function(labels, cls_logits, self.config, **kwargs)
                + self.loss_function(teacher_labels, distillation_logits, self.config, **kwargs)
            ) / 2
        return LapeViTForImageClassificationWithTeacherOutput(
            loss=loss,
            logits=logits,
            cls_logits=cls_logits,
            distillation_logits=distillation_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            layer_position_embeddings=outputs.layer_position_embeddings,
        )


class LapeViTBackbone(BackboneMixin, LapeViTPreTrainedModel):
    """
    LapeViT as a backbone for detection and segmentation heads (transformers' `BackboneMixin`, as `Dinov2Backbone`):
    the hidden states of the stages in `config.out_features` ("stem" is the embeddings, "stageN" the output of layer
    N), each through the final LayerNorm (`config.apply_layernorm`) and, with `config.reshape_hidden_states`, as
    `(batch, hidden, rows, columns)` maps of the patch tokens (the class/distillation tokens dropped).
    """

    def __init__(self, config: LapeViTConfig):
        super().__init__(config)
        self.num_features = [config.hidden_size] * (config.num_hidden_layers + 1)
        self.embeddings = LapeViTEmbeddings(config)
        self.encoder = LapeViTEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.tokenizer

    @can_return_tuple
    def forward(
        self, pixel_values: torch.Tensor | None = None, interpolate_pos_encoding: bool | None = None, **kwargs
    ) -> BackboneOutput:
        self._check_pixel_values(pixel_values, bool(interpolate_pos_encoding))
        pixel_values = pixel_values.to(self.layernorm.weight.dtype)
        hidden_states, stream, grid_size = self.embeddings(pixel_values)
        stages = [hidden_states]
        self.encoder(hidden_states, stream, grid_size, layer_outputs=stages, **kwargs)
        feature_maps = tuple(
            self._feature_map(stage, grid_size)
            for name, stage in zip(self.stage_names, stages, strict=True)
            if name in self.out_features
        )
        output_hidden_states = kwargs.get("output_hidden_states", self.config.output_hidden_states)
        return BackboneOutput(feature_maps=feature_maps, hidden_states=tuple(stages) if output_hidden_states else None)

    def _feature_map(self, hidden_states: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        if self.config.apply_layernorm:
            hidden_states = self.layernorm(hidden_states)
        if not self.config.reshape_hidden_states:
            return hidden_states
        patches = hidden_states[:, self.config.num_prefix_tokens :]
        return patches.reshape(patches.shape[0], grid_size[0], grid_size[1], -1).permute(0, 3, 1, 2).contiguous()


__all__ = [
    "LapeViTBackbone",
    "LapeViTForImageClassification",
    "LapeViTForImageClassificationWithTeacher",
    "LapeViTModel",
    "LapeViTPreTrainedModel",
]
