"""Shared helpers for the tests: tiny configs and models whose every parameter is random (so that LayerNorm
affines, biases and position embeddings all matter when numbers are compared)."""

from __future__ import annotations

import math

import pytest
import torch

import lape_hf
from lape_hf import LapeViTConfig

TINY = dict(
    image_size=32,
    patch_size=8,
    num_channels=3,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=64,
    num_labels=5,
)


# A tiny Compact-Transformer-style model: two-layer convolutional tokenizer, sequence pooling, post-attention norm.
TINY_CCT = dict(
    tokenizer_type="conv",
    conv_num_layers=2,
    conv_intermediate_channels=8,
    pooler_type="sequence",
    encoder_layer_form="post_attention_norm",
    position_embedding_type="sinusoidal_2d",
)


def tiny_config(**overrides) -> LapeViTConfig:
    return LapeViTConfig(**{**TINY, **overrides})


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter a random value of moderate size (LayerNorm weights around 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if name.endswith("weight") and parameter.ndim == 1:
                parameter.copy_(1.0 + 0.3 * noise)
            else:
                parameter.copy_(0.3 * noise)
    return model


def reference_sinusoidal_1d(num_positions: int, dim: int) -> torch.Tensor:
    """docs/method.md's 1-D sinusoidal PE, by explicit loops: sin/cos(pos / 10000^(2*(i//2)/D)) for even/odd i."""
    table = torch.zeros(num_positions, dim, dtype=torch.float64)
    for pos in range(num_positions):
        for i in range(dim):
            angle = pos / 10000 ** (2 * (i // 2) / dim)
            table[pos, i] = math.sin(angle) if i % 2 == 0 else math.cos(angle)
    return table.float()


def reference_sinusoidal_2d(rows: int, columns: int, dim: int) -> torch.Tensor:
    """docs/method.md's 2-D sinusoidal PE, by explicit loops: column in the first half of the channels, row second."""
    d = dim // 2
    table = torch.zeros(rows * columns, dim, dtype=torch.float64)
    for h in range(rows):
        for w in range(columns):
            for k in range(d // 2):
                div = math.exp(-2 * k * math.log(10000) / d)
                table[h * columns + w, 2 * k] = math.sin(w * div)
                table[h * columns + w, 2 * k + 1] = math.cos(w * div)
                table[h * columns + w, d + 2 * k] = math.sin(h * div)
                table[h * columns + w, d + 2 * k + 1] = math.cos(h * div)
    return table.float()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def registered() -> None:
    """`import lape_hf` registers the family; this fixture only documents the dependency."""
    assert lape_hf.LapeViTConfig.model_type == "lape_vit"
