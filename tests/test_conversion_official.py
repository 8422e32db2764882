"""Official LaPE checkpoints (timm VisionTransformer names) -> LapeViT, checked against an independent functional
forward written here from docs/method.md and the official code's names (plain torch, no lape_hf module), for every join,
every absolute PE type, the relative position bias, and the plain and distilled models; plus timm state dicts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lape_hf import (
    CheckpointConversionError,
    LapeViTForImageClassification,
    LapeViTForImageClassificationWithTeacher,
    convert_official_state_dict,
    convert_timm_state_dict,
)

HIDDEN, HEADS, LAYERS, MLP, PATCH, IMAGE, CLASSES = 32, 2, 2, 64, 8, 32, 5
GRID = IMAGE // PATCH
NUM_PATCHES = GRID * GRID
EPS = 1e-6  # the official DeiT models' norm_layer
OFFICIAL_RPE_EPS = 1e-5  # the official RPE `nn.LayerNorm(num_patches)`
TOLERANCE = 1e-5


# ---------------------------------------------------------------------------------------------------------------------
# Official tables, written as the official code builds them
# ---------------------------------------------------------------------------------------------------------------------
def official_sinusoidal_1d(num_tokens: int, dim: int) -> torch.Tensor:
    """The official '1D_sin' table: a (T, D) tensor (its `unsqueeze(0)` result is discarded), float32 throughout."""
    table = torch.FloatTensor([[p / (10000 ** (2 * (i // 2) / dim)) for i in range(dim)] for p in range(num_tokens)])
    table[:, 0::2] = torch.sin(table[:, 0::2])
    table[:, 1::2] = torch.cos(table[:, 1::2])
    return table


def official_sinusoidal_2d(dim: int, height: int, width: int, prefix_tokens: int = 1) -> torch.Tensor:
    """The official '2D_sin' table (`_positionalencoding2d`), prefix tokens zero, shape (1, prefix + H*W, D)."""
    table = torch.zeros(dim, height, width)
    half = dim // 2
    div_term = torch.exp(torch.arange(0.0, half, 2) * -(math.log(10000.0) / half))
    pos_w = torch.arange(0.0, width).unsqueeze(1)
    pos_h = torch.arange(0.0, height).unsqueeze(1)
    table[0:half:2] = torch.sin(pos_w * div_term).transpose(0, 1).unsqueeze(1).repeat(1, height, 1)
    table[1:half:2] = torch.cos(pos_w * div_term).transpose(0, 1).unsqueeze(1).repeat(1, height, 1)
    table[half::2] = torch.sin(pos_h * div_term).transpose(0, 1).unsqueeze(2).repeat(1, 1, width)
    table[half + 1 :: 2] = torch.cos(pos_h * div_term).transpose(0, 1).unsqueeze(2).repeat(1, 1, width)
    table = table.view(dim, -1).permute(1, 0)
    return torch.cat([torch.zeros(prefix_tokens, dim), table])[None]


def official_relative_index(height: int, width: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid([torch.arange(height), torch.arange(width)], indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    relative[:, :, 0] += height - 1
    relative[:, :, 1] += width - 1
    relative[:, :, 0] *= 2 * width - 1
    return relative.sum(-1)


# ---------------------------------------------------------------------------------------------------------------------
# A random checkpoint in official names
# ---------------------------------------------------------------------------------------------------------------------
def official_state_dict(
    join: str = "lape",
    pe: str = "learnable",
    distilled: bool = False,
    rpe: str | None = None,
    qkv_bias: bool = True,
    seed: int = 0,
    hidden: int = HIDDEN,
    layers: int = LAYERS,
    mlp: int = MLP,
    image: int = IMAGE,
    patch: int = PATCH,
    classes: int = CLASSES,
) -> dict[str, torch.Tensor]:
    """`join` in lape/add/share/unshare (the official 'LaPE', 'basic', 'share', 'unshare'); `pe` in learnable/
    sinusoidal_1d/sinusoidal_2d/none; `rpe` None, "plain" or "lape" (the official '2D_RPE' with join 'LN').
    The official distilled model always learns its table; a distilled sinusoidal one here follows docs/method.md
    (1-D over all tokens, 2-D with a zero vector for each prefix token)."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.3, center: float = 0.0) -> torch.Tensor:
        return center + scale * torch.randn(*shape, generator=generator)

    def layer_norm(prefix: str, size: int = hidden) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": rand(size, center=1.0), f"{prefix}.bias": rand(size)}

    def linear(prefix: str, out_features: int, in_features: int, bias: bool = True) -> dict[str, torch.Tensor]:
        weights = {f"{prefix}.weight": rand(out_features, in_features)}
        if bias:
            weights[f"{prefix}.bias"] = rand(out_features)
        return weights

    grid = image // patch
    num_tokens = grid * grid + 1 + int(distilled)
    state = {
        "cls_token": rand(1, 1, hidden),
        "patch_embed.proj.weight": rand(hidden, 3, patch, patch, scale=0.05),
        "patch_embed.proj.bias": rand(hidden),
    }
    if distilled:
        state["dist_token"] = rand(1, 1, hidden)
    if pe == "learnable":
        if join == "unshare":
            state.update({f"pos_embed{i}": rand(1, num_tokens, hidden) for i in range(layers)})
        else:
            state["pos_embed"] = rand(1, num_tokens, hidden)
    elif pe == "sinusoidal_1d":
        state["pos_embed"] = official_sinusoidal_1d(num_tokens, hidden)
    elif pe == "sinusoidal_2d":
        state["pos_embed"] = official_sinusoidal_2d(hidden, grid, grid, prefix_tokens=1 + int(distilled))
    for i in range(layers):
        block = f"blocks.{i}"
        state.update(layer_norm(f"{block}.norm1"))
        if join == "lape" and pe != "none":
            state.update(layer_norm(f"{block}.pe_norm"))
        state.update(linear(f"{block}.attn.qkv", 3 * hidden, hidden, bias=qkv_bias))
        state.update(linear(f"{block}.attn.proj", hidden, hidden))
        if rpe is not None:
            state[f"{block}.attn.relative_position_bias_table"] = rand((2 * grid - 1) ** 2, HEADS)
            state[f"{block}.attn.relative_position_index"] = official_relative_index(grid, grid)
            if rpe == "lape":
                state.update(layer_norm(f"{block}.attn.pe_norm", grid * grid))
        state.update(layer_norm(f"{block}.norm2"))
        state.update(linear(f"{block}.mlp.fc1", mlp, hidden))
        state.update(linear(f"{block}.mlp.fc2", hidden, mlp))
    state.update(layer_norm("norm"))
    state.update(linear("head", classes, hidden))
    if distilled:
        state.update(linear("head_dist", classes, hidden))
    return state


# ---------------------------------------------------------------------------------------------------------------------
# The independent functional forward (docs/method.md, official names)
# ---------------------------------------------------------------------------------------------------------------------
def reference_logits(
    state: dict[str, torch.Tensor],
    pixel_values: torch.Tensor,
    join: str,
    eps: float = EPS,
    rpe_eps: float = OFFICIAL_RPE_EPS,
) -> torch.Tensor:
    """Logits of the official model at inference; the distilled one averages its two heads. `join` here is the
    LapeViT name: lape (chain), lape_shared (each layer normalizes the raw PE), add, share, unshare."""

    def norm(x: torch.Tensor, prefix: str, size: int = HIDDEN, norm_eps: float = eps) -> torch.Tensor:
        return F.layer_norm(x, (size,), state[f"{prefix}.weight"], state[f"{prefix}.bias"], norm_eps)

    def linear(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.linear(x, state[f"{prefix}.weight"], state.get(f"{prefix}.bias"))

    def attention(x: torch.Tensor, block: str) -> torch.Tensor:
        batch, tokens, channels = x.shape
        qkv = linear(x, f"{block}.attn.qkv").reshape(batch, tokens, 3, HEADS, channels // HEADS).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        logits = (q @ k.transpose(-2, -1)) * (channels // HEADS) ** -0.5
        table_key = f"{block}.attn.relative_position_bias_table"
        if table_key in state:
            index = state[f"{block}.attn.relative_position_index"]
            bias = state[table_key][index.view(-1)].view(NUM_PATCHES, NUM_PATCHES, -1).permute(2, 0, 1)
            if f"{block}.attn.pe_norm.weight" in state:
                bias = norm(bias, f"{block}.attn.pe_norm", NUM_PATCHES, rpe_eps)
            prefix = tokens - NUM_PATCHES
            logits = logits.clone()
            logits[:, :, prefix:, prefix:] += bias[None]
        out = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, tokens, channels)
        return linear(out, f"{block}.attn.proj")

    def mlp(x: torch.Tensor, block: str) -> torch.Tensor:
        return linear(F.gelu(linear(x, f"{block}.mlp.fc1")), f"{block}.mlp.fc2")

    batch = pixel_values.shape[0]
    patches = F.conv2d(pixel_values, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=PATCH)
    x = patches.flatten(2).transpose(1, 2)
    prefix_tokens = [state["cls_token"].expand(batch, -1, -1)]
    if "dist_token" in state:
        prefix_tokens.append(state["dist_token"].expand(batch, -1, -1))
    x = torch.cat([*prefix_tokens, x], dim=1)
    pos_embed = state.get("pos_embed")
    if join == "add" and pos_embed is not None:
        x = x + pos_embed
    raw_pe, chained_pe = pos_embed, pos_embed
    for i in range(LAYERS):
        block = f"blocks.{i}"
        if join in ("share", "unshare"):
            x = x + (state[f"pos_embed{i}"] if join == "unshare" else raw_pe)
        attention_input = norm(x, f"{block}.norm1")
        if join == "lape":
            chained_pe = norm(chained_pe, f"{block}.pe_norm")
            attention_input = attention_input + chained_pe
        elif join == "lape_shared":
            attention_input = attention_input + norm(raw_pe, f"{block}.pe_norm")
        x = x + attention(attention_input, block)
        x = x + mlp(norm(x, f"{block}.norm2"), block)
    x = norm(x, "norm")
    logits = linear(x[:, 0], "head")
    if "head_dist.weight" in state:
        logits = (logits + linear(x[:, 1], "head_dist")) / 2
    return logits


def assert_same_logits(model: torch.nn.Module, state: dict, join: str, **reference_options) -> torch.Tensor:
    pixel_values = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference_logits(state, pixel_values, join, **reference_options)
        got = model(pixel_values).logits
    assert got.shape == (2, CLASSES)
    difference = (got - expected).abs().max().item()
    assert difference < TOLERANCE, f"max |difference| {difference:.2e}"
    return got


# ---------------------------------------------------------------------------------------------------------------------
# Parity
# ---------------------------------------------------------------------------------------------------------------------
JOINS_AND_TYPES = [
    (join, pe)
    for join in ("lape", "lape_shared", "add", "share", "unshare")
    for pe in ("learnable", "sinusoidal_1d", "sinusoidal_2d")
    if not (join == "unshare" and pe != "learnable")  # the official 'unshare' learns one table per layer
]


@pytest.mark.parametrize("distilled", [False, True], ids=["plain", "distilled"])
@pytest.mark.parametrize(("join", "pe"), JOINS_AND_TYPES)
def test_official_checkpoint_matches_the_functional_forward(join: str, pe: str, distilled: bool) -> None:
    state = official_state_dict("lape" if join == "lape_shared" else join, pe, distilled)
    model = convert_official_state_dict(state, pe_join=join, num_attention_heads=HEADS)

    assert type(model) is (LapeViTForImageClassificationWithTeacher if distilled else LapeViTForImageClassification)
    assert model.config.pe_join == join
    assert model.config.position_embedding_type == pe  # a stored sinusoidal table is recognized by its values
    assert model.config.image_size == IMAGE and model.config.num_labels == CLASSES
    assert_same_logits(model, state, join)


def test_lape_and_lape_shared_share_keys_but_not_logits() -> None:
    state = official_state_dict("lape")
    chained = convert_official_state_dict(state, pe_join="lape", num_attention_heads=HEADS)
    shared = convert_official_state_dict(state, pe_join="lape_shared", num_attention_heads=HEADS)
    pixel_values = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        assert not torch.allclose(chained(pixel_values).logits, shared(pixel_values).logits, atol=1e-3)


@pytest.mark.parametrize("keys", ["lape", "add"])
def test_a_join_the_keys_leave_open_must_be_named(keys: str) -> None:
    alternatives = {"lape": "'lape' and 'lape_shared'", "add": "'add' and 'share'"}[keys]
    with pytest.raises(CheckpointConversionError, match=f"pe_join is needed: .* fit {alternatives}"):
        convert_official_state_dict(official_state_dict(keys), num_attention_heads=HEADS)


def test_unshare_is_read_from_the_per_layer_tables() -> None:
    state = official_state_dict("unshare")
    model = convert_official_state_dict(state, num_attention_heads=HEADS)
    assert model.config.pe_join == "unshare"
    tables = model.lape_vit.embeddings.position_embedding.position_embeddings
    assert tables.shape == (LAYERS, NUM_PATCHES + 1, HIDDEN)
    assert torch.equal(tables[1], state["pos_embed1"][0])


@pytest.mark.parametrize("rpe", ["plain", "lape"])
def test_relative_position_bias_layers_match(rpe: str) -> None:
    state = official_state_dict("add", pe="none", rpe=rpe)
    # The official RPE LayerNorm has eps 1e-5 while the rest uses the model's eps (1e-6 here): the converted config
    # carries both (relative_position_layer_norm_eps). Heads are read from the bias table.
    model = convert_official_state_dict(state)
    assert (model.config.layer_norm_eps, model.config.relative_position_layer_norm_eps) == (EPS, OFFICIAL_RPE_EPS)
    assert model.config.relative_position_bias == rpe
    assert model.config.position_embedding_type == "none"
    assert model.config.num_attention_heads == HEADS
    assert_same_logits(model, state, "add")


def test_a_wrong_relative_position_index_is_reported() -> None:
    state = official_state_dict("add", pe="none", rpe="plain")
    state["blocks.1.attn.relative_position_index"] = state["blocks.1.attn.relative_position_index"].flip(0)
    with pytest.raises(CheckpointConversionError, match=r"'blocks.1.attn.relative_position_index' is not"):
        convert_official_state_dict(state)


# ---------------------------------------------------------------------------------------------------------------------
# Sinusoidal tables stored in the checkpoint
# ---------------------------------------------------------------------------------------------------------------------
def test_a_stored_sinusoidal_table_is_recomputed_not_stored() -> None:
    state = official_state_dict("lape", "sinusoidal_2d")
    model = convert_official_state_dict(state, pe_join="lape", num_attention_heads=HEADS)
    assert "lape_vit.embeddings.position_embedding.position_embeddings" not in model.state_dict()
    table = model.lape_vit.embeddings.position_embedding.position_embeddings
    assert torch.allclose(table, state["pos_embed"], atol=1e-6)


def test_a_sinusoidal_table_that_does_not_match_is_reported_with_what_it_looks_like() -> None:
    state = official_state_dict("add", "sinusoidal_1d")
    with pytest.raises(
        CheckpointConversionError, match=r"'pos_embed' is not the sinusoidal_2d table .* 'sinusoidal_1d'"
    ):
        convert_official_state_dict(
            state, pe_join="add", position_embedding_type="sinusoidal_2d", num_attention_heads=2
        )
    state["pos_embed"] = state["pos_embed"] + 0.01  # e.g. a table that was trained after all
    with pytest.raises(CheckpointConversionError, match=r"max absolute difference 0.01 .* looks 'learnable'"):
        convert_official_state_dict(
            state, pe_join="add", position_embedding_type="sinusoidal_1d", num_attention_heads=2
        )
    model = convert_official_state_dict(state, pe_join="add", num_attention_heads=HEADS)
    assert model.config.position_embedding_type == "learnable"
    assert_same_logits(model, state, "add")


# ---------------------------------------------------------------------------------------------------------------------
# What the weights cannot tell
# ---------------------------------------------------------------------------------------------------------------------
def test_heads_are_required_when_no_preset_matches_the_shapes() -> None:
    with pytest.raises(CheckpointConversionError, match="number of attention heads cannot be read .* deit-tiny"):
        convert_official_state_dict(official_state_dict("add"), pe_join="add")


def test_a_preset_that_contradicts_the_weights_is_refused() -> None:
    with pytest.raises(CheckpointConversionError, match=r"Preset 'deit-tiny' does not fit .* hidden_size=32"):
        convert_official_state_dict(official_state_dict("add"), pe_join="add", preset="deit-tiny")


def test_deit_shapes_pick_the_deit_preset() -> None:
    """A DeiT-Ti-shaped checkpoint needs no heads: the deit-tiny preset matches its shapes (3 heads, eps 1e-6)."""
    state = official_state_dict("add", hidden=192, layers=12, mlp=768, image=224, patch=16, classes=10)
    model = convert_official_state_dict(state, pe_join="add")
    config = model.config
    assert (config.num_attention_heads, config.layer_norm_eps, config.image_size, config.patch_size) == (
        3,
        1e-6,
        224,
        16,
    )


def test_an_unknown_override_is_refused() -> None:
    with pytest.raises(CheckpointConversionError, match="Unknown config override.*'num_heads'"):
        convert_official_state_dict(official_state_dict("add"), pe_join="add", num_heads=2)


# ---------------------------------------------------------------------------------------------------------------------
# timm
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("distilled", [False, True], ids=["vit", "deit-distilled"])
def test_timm_state_dict_is_an_add_join_model(distilled: bool) -> None:
    state = official_state_dict("add", distilled=distilled, qkv_bias=False)
    model = convert_timm_state_dict(state, num_attention_heads=HEADS)
    assert model.config.pe_join == "add" and model.config.qkv_bias is False
    assert_same_logits(model, state, "add")


def test_timm_extras_that_lapevit_does_not_have_are_listed() -> None:
    state = official_state_dict("add")
    state["blocks.0.ls1.gamma"] = torch.ones(HIDDEN)
    state["fc_norm.weight"] = torch.ones(HIDDEN)
    with pytest.raises(CheckpointConversionError, match=r"unexpected keys \(2\): blocks.0.ls1.gamma, fc_norm.weight"):
        convert_timm_state_dict(state, num_attention_heads=HEADS)


def test_timm_refuses_lape_keys() -> None:
    with pytest.raises(CheckpointConversionError, match=r"unexpected keys \(4\): blocks.0.pe_norm.bias"):
        convert_timm_state_dict(official_state_dict("lape"), num_attention_heads=HEADS)


@pytest.mark.parametrize("distilled", [False, True], ids=["vit", "deit-distilled"])
def test_real_timm_models_give_the_same_logits(distilled: bool) -> None:
    """With timm installed (the `bench` extra), timm's own VisionTransformer is the reference."""
    vision_transformer = pytest.importorskip("timm.models.vision_transformer")
    deit = pytest.importorskip("timm.models.deit")
    model_class = deit.VisionTransformerDistilled if distilled else vision_transformer.VisionTransformer
    source = model_class(
        img_size=IMAGE, patch_size=PATCH, embed_dim=HIDDEN, depth=LAYERS, num_heads=HEADS, mlp_ratio=2, num_classes=5
    ).eval()
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))  # timm zero-initializes biases and the head
    model = convert_timm_state_dict(source.state_dict(), num_attention_heads=HEADS)
    pixel_values = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        difference = (model(pixel_values).logits - source(pixel_values)).abs().max().item()
    assert difference < TOLERANCE
