"""Compact Transformers (SHI-Labs/Compact-Transformers) state dicts -> LapeViT, checked against an independent
functional forward of the original CCT written here from docs/method.md and the original code's names (plain torch).

The CCT layer: x = x + Attn(LN_pre(x)); x = LN_1(x); x = x + MLP(x). Sequence pooling: softmax(Linear(D->1)(x)) over
tokens, weighted sum. Tokenizer: (conv without bias, ReLU, max-pool 3/2/1) per layer; ViT-Lite: one patch conv."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lape_hf import CheckpointConversionError, convert_cct_state_dict, init_lape_from_add

EPS = 1e-5  # CCT's LayerNorms are PyTorch's default
TOLERANCE = 1e-5


def cct_sine(num_tokens: int, dim: int) -> torch.Tensor:
    """The original `TransformerClassifier.sinusoidal_embedding`, shape (1, N, D)."""
    table = torch.FloatTensor([[p / (10000 ** (2 * (i // 2) / dim)) for i in range(dim)] for p in range(num_tokens)])
    table[:, 0::2] = torch.sin(table[:, 0::2])
    table[:, 1::2] = torch.cos(table[:, 1::2])
    return table.unsqueeze(0)


def cct_state_dict(
    hidden: int = 32,
    layers: int = 2,
    mlp: int = 64,
    conv_layers: int = 1,
    kernel: int = 3,
    image: int = 16,
    classes: int = 3,
    pe: str = "learnable",
    vit_lite_patch: int | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A random CCT state dict (or, with `vit_lite_patch`, the original ViT-Lite: class token, patch conv with bias)."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.3, center: float = 0.0) -> torch.Tensor:
        return center + scale * torch.randn(*shape, generator=generator)

    state: dict[str, torch.Tensor] = {}
    if vit_lite_patch is None:
        channels = [3] + [64] * (conv_layers - 1) + [hidden]
        for i in range(conv_layers):
            state[f"tokenizer.conv_layers.{i}.0.weight"] = rand(channels[i + 1], channels[i], kernel, kernel, scale=0.2)
            image = (image + 2 * max(1, kernel // 2) - kernel) // max(1, kernel // 2 - 1) + 1  # conv
            image = (image + 2 - 3) // 2 + 1  # max-pool 3/2/1
        num_tokens = image * image
        state["classifier.attention_pool.weight"] = rand(1, hidden)
        state["classifier.attention_pool.bias"] = rand(1)
    else:
        state["tokenizer.conv_layers.0.0.weight"] = rand(hidden, 3, vit_lite_patch, vit_lite_patch, scale=0.1)
        state["tokenizer.conv_layers.0.0.bias"] = rand(hidden)
        num_tokens = (image // vit_lite_patch) ** 2 + 1
        state["classifier.class_emb"] = rand(1, 1, hidden)
    if pe == "learnable":
        state["classifier.positional_emb"] = rand(1, num_tokens, hidden)
    elif pe == "sine":
        state["classifier.positional_emb"] = cct_sine(num_tokens, hidden)
    for i in range(layers):
        block = f"classifier.blocks.{i}"
        state.update({f"{block}.pre_norm.weight": rand(hidden, center=1.0), f"{block}.pre_norm.bias": rand(hidden)})
        state[f"{block}.self_attn.qkv.weight"] = rand(3 * hidden, hidden, scale=hidden**-0.5)
        state[f"{block}.self_attn.proj.weight"] = rand(hidden, hidden, scale=hidden**-0.5)
        state[f"{block}.self_attn.proj.bias"] = rand(hidden)
        state.update(
            {f"{block}.linear1.weight": rand(mlp, hidden, scale=hidden**-0.5), f"{block}.linear1.bias": rand(mlp)}
        )
        state.update({f"{block}.norm1.weight": rand(hidden, center=1.0), f"{block}.norm1.bias": rand(hidden)})
        state.update(
            {f"{block}.linear2.weight": rand(hidden, mlp, scale=mlp**-0.5), f"{block}.linear2.bias": rand(hidden)}
        )
    state.update({"classifier.norm.weight": rand(hidden, center=1.0), "classifier.norm.bias": rand(hidden)})
    state.update({"classifier.fc.weight": rand(classes, hidden), "classifier.fc.bias": rand(classes)})
    return state


def cct_reference_logits(state: dict[str, torch.Tensor], pixel_values: torch.Tensor, heads: int) -> torch.Tensor:
    def norm(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], state[f"{prefix}.weight"], state[f"{prefix}.bias"], EPS)

    def linear(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.linear(x, state[f"{prefix}.weight"], state.get(f"{prefix}.bias"))

    x = pixel_values
    if "tokenizer.conv_layers.0.0.bias" in state:  # ViT-Lite: conv == patchify, no activation, no pooling
        weight = state["tokenizer.conv_layers.0.0.weight"]
        x = F.conv2d(x, weight, state["tokenizer.conv_layers.0.0.bias"], stride=weight.shape[-1])
    else:
        i = 0
        while f"tokenizer.conv_layers.{i}.0.weight" in state:
            weight = state[f"tokenizer.conv_layers.{i}.0.weight"]
            kernel = weight.shape[-1]
            x = F.conv2d(x, weight, stride=max(1, kernel // 2 - 1), padding=max(1, kernel // 2))
            x = F.max_pool2d(F.relu(x), kernel_size=3, stride=2, padding=1)
            i += 1
    x = x.flatten(2).transpose(1, 2)
    if "classifier.class_emb" in state:
        x = torch.cat([state["classifier.class_emb"].expand(x.shape[0], -1, -1), x], dim=1)
    if "classifier.positional_emb" in state:
        x = x + state["classifier.positional_emb"]
    i = 0
    while f"classifier.blocks.{i}.pre_norm.weight" in state:
        block = f"classifier.blocks.{i}"
        batch, tokens, channels = x.shape
        qkv = linear(norm(x, f"{block}.pre_norm"), f"{block}.self_attn.qkv")
        q, k, v = qkv.reshape(batch, tokens, 3, heads, channels // heads).permute(2, 0, 3, 1, 4)
        attention = ((q @ k.transpose(-2, -1)) * (channels // heads) ** -0.5).softmax(dim=-1)
        x = x + linear((attention @ v).transpose(1, 2).reshape(batch, tokens, channels), f"{block}.self_attn.proj")
        x = norm(x, f"{block}.norm1")
        x = x + linear(F.gelu(linear(x, f"{block}.linear1")), f"{block}.linear2")
        i += 1
    x = norm(x, "classifier.norm")
    if "classifier.attention_pool.weight" in state:
        weights = F.softmax(linear(x, "classifier.attention_pool"), dim=1)
        pooled = torch.matmul(weights.transpose(-1, -2), x).squeeze(-2)
    else:
        pooled = x[:, 0]
    return linear(pooled, "classifier.fc")


def assert_same_logits(model: torch.nn.Module, state: dict, heads: int, image: int) -> None:
    pixel_values = torch.randn(2, 3, image, image, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = cct_reference_logits(state, pixel_values, heads), model(pixel_values).logits
    difference = (got - expected).abs().max().item()
    assert difference < TOLERANCE, f"max |difference| {difference:.2e}"


@pytest.mark.parametrize("conv_layers", [1, 2])
def test_cct_matches_the_functional_forward(conv_layers: int) -> None:
    state = cct_state_dict(conv_layers=conv_layers, image=32 if conv_layers == 2 else 16)
    model = convert_cct_state_dict(state, num_attention_heads=2)

    config = model.config
    assert (config.tokenizer_type, config.pooler_type, config.encoder_layer_form) == (
        "conv",
        "sequence",
        "post_attention_norm",
    )
    assert (config.pe_join, config.position_embedding_type, config.layer_norm_eps) == ("add", "learnable", 1e-5)
    assert config.conv_num_layers == conv_layers and config.qkv_bias is False
    assert config.image_size == (32 if conv_layers == 2 else 16)  # read from the PE's token grid
    assert_same_logits(model, state, heads=2, image=config.image_size)


def test_cct_sine_is_lapevit_sinusoidal_1d() -> None:
    state = cct_state_dict(pe="sine")
    model = convert_cct_state_dict(state, num_attention_heads=2)
    assert model.config.position_embedding_type == "sinusoidal_1d"
    assert_same_logits(model, state, heads=2, image=16)


def test_cct_without_position_embedding_needs_the_image_size() -> None:
    state = cct_state_dict(pe="none")
    model = convert_cct_state_dict(state, num_attention_heads=2, image_size=16)
    assert model.config.position_embedding_type == "none"
    assert_same_logits(model, state, heads=2, image=16)


def test_vit_lite_of_the_compact_transformers_code() -> None:
    """The original ViT-Lite: class token, a patch convolution with bias, and CCT's post-attention-norm layer."""
    state = cct_state_dict(vit_lite_patch=4)
    model = convert_cct_state_dict(state, num_attention_heads=2)
    config = model.config
    assert (config.tokenizer_type, config.patch_size, config.pooler_type) == ("patch", 4, "cls")
    assert config.encoder_layer_form == "post_attention_norm"
    assert_same_logits(model, state, heads=2, image=16)


def test_cct_7_3x1_shapes_pick_the_preset() -> None:
    state = cct_state_dict(hidden=256, layers=7, mlp=512, image=32, classes=10)
    model = convert_cct_state_dict(state)  # no heads given: the cct-7/3x1 preset matches the shapes
    assert (model.config.num_attention_heads, model.config.image_size) == (4, 32)
    assert_same_logits(model, state, heads=4, image=32)


def test_a_cct_preset_that_contradicts_the_weights_is_refused() -> None:
    with pytest.raises(CheckpointConversionError, match=r"Preset 'cct-7/3x1' does not fit .*hidden_size=32"):
        convert_cct_state_dict(cct_state_dict(), preset="cct-7/3x1")


def test_a_converted_cct_starts_a_lape_model() -> None:
    model = convert_cct_state_dict(cct_state_dict(), num_attention_heads=2)
    lape = init_lape_from_add(model, "lape")
    assert lape.config.pe_join == "lape" and lape.config.encoder_layer_form == "post_attention_norm"
    assert all(layer.position_layernorm is not None for layer in lape.lape_vit.encoder.layers)
