"""Shared helpers for the tests: tiny configs and models whose every parameter is random (so that LayerNorm
affines, biases and position embeddings all matter when numbers are compared)."""

from __future__ import annotations

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


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def registered() -> None:
    """`import lape_hf` registers the family; this fixture only documents the dependency."""
    assert lape_hf.LapeViTConfig.model_type == "lape_vit"
