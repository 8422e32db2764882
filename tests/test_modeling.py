"""LapeViT against docs/method.md: every join, PE type, tokenizer, pooler and layer form matches a functional forward
written here from the formulas, reading the parameters by name."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CCT, randomize_, reference_sinusoidal_1d, reference_sinusoidal_2d, tiny_config

from lape_hf import LapeViTConfig, LapeViTForImageClassification, LapeViTForImageClassificationWithTeacher, LapeViTModel

JOIN_AND_PE = [
    (join, pe)
    for join in ("lape", "lape_shared", "add", "share", "unshare")
    for pe in ("learnable", "sinusoidal_1d", "sinusoidal_2d", "none")
    if join != "unshare" or pe == "learnable"
]


# ---------------------------------------------------------------------------------------------------------------------
# The reference: docs/method.md written out with torch.nn.functional
# ---------------------------------------------------------------------------------------------------------------------
def reference_position_embedding(config, params) -> torch.Tensor | None:
    """(tables, T, D) as docs/method.md defines each PE type; prefix tokens at positions 0.. (1-D) or zeros (2-D)."""
    prefix = config.num_prefix_tokens
    rows, columns = config.token_grid_size()
    if config.position_embedding_type == "learnable":
        return params["lape_vit.embeddings.position_embedding.position_embeddings"]
    if config.position_embedding_type == "sinusoidal_1d":
        return reference_sinusoidal_1d(prefix + rows * columns, config.hidden_size)[None]
    if config.position_embedding_type == "sinusoidal_2d":
        patches = reference_sinusoidal_2d(rows, columns, config.hidden_size)
        return torch.cat([torch.zeros(prefix, config.hidden_size), patches])[None]
    return None


def reference_relative_bias(config, params, prefix: str) -> torch.Tensor:
    """(heads, N, N): bias[h, i, j] = table[offset(i, j), h], LayerNorm over j for the LaPE form."""
    rows, columns = config.token_grid_size()
    table = params[f"{prefix}.relative_position_bias.table"]
    n = rows * columns
    bias = torch.zeros(table.shape[1], n, n)
    for i in range(n):
        for j in range(n):
            dr, dc = i // columns - j // columns, i % columns - j % columns
            bias[:, i, j] = table[(dr + rows - 1) * (2 * columns - 1) + (dc + columns - 1)]
    if config.relative_position_bias == "lape":
        weight = params[f"{prefix}.relative_position_bias.layernorm.weight"]
        shift = params[f"{prefix}.relative_position_bias.layernorm.bias"]
        bias = F.layer_norm(bias, (n,), weight, shift, config.relative_position_layer_norm_eps)
    return bias


def reference_forward(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Logits of a LapeViT classifier from docs/method.md's formulas (eval mode: no dropout, no drop path)."""
    config = model.config
    params = dict(model.named_parameters())
    eps = config.layer_norm_eps

    def layer_norm(x, name):
        return F.layer_norm(x, (x.shape[-1],), params[f"{name}.weight"], params[f"{name}.bias"], eps)

    def linear(x, name):
        return F.linear(x, params[f"{name}.weight"], params.get(f"{name}.bias"))

    def attention(x, name):
        batch, tokens, dim = x.shape
        heads = config.num_attention_heads
        q, k, v = linear(x, f"{name}.qkv").split(dim, dim=-1)
        q, k, v = (t.reshape(batch, tokens, heads, dim // heads).transpose(1, 2) for t in (q, k, v))
        logits = q @ k.transpose(-1, -2) / math.sqrt(dim // heads)
        if config.relative_position_bias != "none":
            p = config.num_prefix_tokens
            logits[:, :, p:, p:] += reference_relative_bias(config, params, name)
        out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return linear(out, f"{name}.proj")

    def mlp(x, name):
        return linear(F.gelu(linear(x, f"{name}.fc1")), f"{name}.fc2")

    # tokens
    if config.tokenizer_type == "patch":
        x = F.conv2d(
            pixel_values,
            params["lape_vit.embeddings.tokenizer.projection.weight"],
            params["lape_vit.embeddings.tokenizer.projection.bias"],
            stride=config.patch_size,
        )
    else:
        x = pixel_values
        for index in range(config.conv_num_layers):
            weight = params[f"lape_vit.embeddings.tokenizer.layers.{3 * index}.weight"]
            x = F.conv2d(x, weight, stride=config.conv_stride, padding=config.conv_padding).relu()
            x = F.max_pool2d(
                x, config.conv_pooling_kernel_size, config.conv_pooling_stride, config.conv_pooling_padding
            )
    x = x.flatten(2).transpose(1, 2)
    prefix_tokens = [
        params[name].expand(x.shape[0], -1, -1)
        for name in ("lape_vit.embeddings.cls_token", "lape_vit.embeddings.distillation_token")
        if name in params
    ]
    x = torch.cat([*prefix_tokens, x], dim=1)

    # encoder, one join at a time
    p0 = reference_position_embedding(config, params)
    join = config.pe_join
    if join == "add" and p0 is not None:
        x = x + p0[0]
    p = None if p0 is None else p0[0]
    for layer in range(config.num_hidden_layers):
        name = f"lape_vit.encoder.layers.{layer}"
        if p0 is not None and join == "share":
            x = x + p0[0]
        if p0 is not None and join == "unshare":
            x = x + p0[layer]
        attention_input = layer_norm(x, f"{name}.layernorm_before")
        if p0 is not None and join == "lape":
            p = layer_norm(p, f"{name}.position_layernorm")  # p_l = LN_pe_l(p_{l-1})
            attention_input = attention_input + p
        if p0 is not None and join == "lape_shared":
            attention_input = attention_input + layer_norm(p0[0], f"{name}.position_layernorm")
        x = x + attention(attention_input, f"{name}.attention")
        if config.encoder_layer_form == "post_attention_norm":
            x = layer_norm(x, f"{name}.layernorm_after")
            x = x + mlp(x, f"{name}.mlp")
        else:
            x = x + mlp(layer_norm(x, f"{name}.layernorm_after"), f"{name}.mlp")
    x = layer_norm(x, "lape_vit.layernorm")

    if isinstance(model, LapeViTForImageClassificationWithTeacher):
        return (linear(x[:, 0], "cls_classifier") + linear(x[:, 1], "distillation_classifier")) / 2
    if config.pooler_type == "cls":
        pooled = x[:, 0]
    elif config.pooler_type == "mean":
        pooled = x.mean(1)
    else:
        weights = linear(x, "lape_vit.pooler.attention_pool").softmax(dim=1)
        pooled = (weights * x).sum(1)
    return linear(pooled, "classifier")


def random_model(model_class=LapeViTForImageClassification, **overrides):
    return randomize_(model_class(tiny_config(**overrides))).eval()


# ---------------------------------------------------------------------------------------------------------------------
# Exactness against the reference
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pe_join,position_embedding_type", JOIN_AND_PE)
def test_every_join_and_pe_type_matches_the_formulas(pe_join, position_embedding_type):
    model = random_model(pe_join=pe_join, position_embedding_type=position_embedding_type)
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            model(pixel_values).logits, reference_forward(model, pixel_values), atol=1e-5, rtol=0
        )


@pytest.mark.parametrize(
    "overrides",
    [
        dict(pooler_type="mean"),
        dict(pooler_type="sequence", encoder_layer_form="post_attention_norm"),
        TINY_CCT,
        dict(relative_position_bias="plain"),
        dict(relative_position_bias="lape", pe_join="lape", position_embedding_type="learnable"),
        dict(relative_position_bias="lape", position_embedding_type="none"),
        dict(relative_position_bias="lape", pooler_type="sequence", encoder_layer_form="post_attention_norm"),
        dict(qkv_bias=False, hidden_act="gelu"),
    ],
    ids=lambda overrides: ",".join(f"{k}={v}" for k, v in overrides.items()),
)
def test_tokenizers_poolers_layer_forms_and_relative_bias_match_the_formulas(overrides):
    model = random_model(**overrides)
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            model(pixel_values).logits, reference_forward(model, pixel_values), atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("pe_join", ["lape", "add"])
def test_distilled_model_averages_class_and_distillation_heads(pe_join):
    model = random_model(LapeViTForImageClassificationWithTeacher, use_distillation_token=True, pe_join=pe_join)
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        output = model(pixel_values)
    assert model.config.num_tokens == 16 + 2
    torch.testing.assert_close(output.logits, reference_forward(model, pixel_values), atol=1e-5, rtol=0)
    torch.testing.assert_close(output.logits, (output.cls_logits + output.distillation_logits) / 2)


def test_single_lape_layer_follows_the_layer_formula():
    model = random_model(pe_join="lape")
    layer = model.lape_vit.encoder.layers[0]
    x, p = torch.randn(2, 17, 32), torch.randn(1, 17, 32)
    with torch.no_grad():
        out, p_next = layer(x, p, (4, 4))
        p_expected = F.layer_norm(p, (32,), layer.position_layernorm.weight, layer.position_layernorm.bias, 1e-6)
        attention_input = F.layer_norm(x, (32,), layer.layernorm_before.weight, layer.layernorm_before.bias, 1e-6)
        after_attention = x + layer.attention(attention_input + p_expected, (4, 4))[0]
        mlp_input = F.layer_norm(after_attention, (32,), layer.layernorm_after.weight, layer.layernorm_after.bias, 1e-6)
        expected = after_attention + layer.mlp(mlp_input)
    torch.testing.assert_close(p_next, p_expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_lape_costs_exactly_two_d_parameters_per_layer():
    def count(**overrides):
        return sum(p.numel() for p in LapeViTModel(tiny_config(**overrides)).parameters())

    d, layers = 32, 3
    assert count(pe_join="lape") - count(pe_join="add") == 2 * d * layers
    assert count(pe_join="lape_shared") == count(pe_join="lape")
    assert count(pe_join="share") == count(pe_join="add")
    assert count(pe_join="unshare") - count(pe_join="add") == (layers - 1) * 17 * d


def test_sinusoidal_tables_follow_lape_md():
    model = LapeViTModel(tiny_config(position_embedding_type="sinusoidal_1d"))
    torch.testing.assert_close(
        model.embeddings.position_embedding.position_embeddings[0], reference_sinusoidal_1d(17, 32), atol=1e-6, rtol=0
    )
    model = LapeViTModel(tiny_config(position_embedding_type="sinusoidal_2d"))
    table = model.embeddings.position_embedding.position_embeddings[0]
    assert torch.equal(table[0], torch.zeros(32))  # the class token gets a zero vector
    torch.testing.assert_close(table[1:], reference_sinusoidal_2d(4, 4, 32), atol=1e-6, rtol=0)


def test_layer_position_embeddings_output_is_the_pe_stream():
    model = random_model(pe_join="lape")
    with torch.no_grad():
        received = model(torch.randn(1, 3, 32, 32), output_position_embeddings=True).layer_position_embeddings
        p = model.lape_vit.embeddings.position_embedding.position_embeddings
        for layer, p_layer in zip(model.lape_vit.encoder.layers, received, strict=True):
            p = layer.position_layernorm(p)
            torch.testing.assert_close(p_layer, p)

    # For "add" the PE a layer sees is its norm1 applied to the raw PE (the paper's analysis).
    model = random_model(pe_join="add")
    with torch.no_grad():
        received = model(torch.randn(1, 3, 32, 32), output_position_embeddings=True).layer_position_embeddings
        p0 = model.lape_vit.embeddings.position_embedding.position_embeddings
        for layer, p_layer in zip(model.lape_vit.encoder.layers, received, strict=True):
            torch.testing.assert_close(p_layer, layer.layernorm_before(p0))
    assert model(torch.randn(1, 3, 32, 32)).layer_position_embeddings is None


# ---------------------------------------------------------------------------------------------------------------------
# transformers conventions
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides",
    [dict(pe_join="lape"), dict(pe_join="unshare"), dict(relative_position_bias="lape", pooler_type="sequence")],
    ids=["lape", "unshare", "rpe-lape"],
)
def test_eager_and_sdpa_agree(overrides):
    eager = random_model(**overrides)
    eager.set_attn_implementation("eager")
    sdpa = random_model(**overrides)
    sdpa.set_attn_implementation("sdpa")
    assert (eager.config._attn_implementation, sdpa.config._attn_implementation) == ("eager", "sdpa")
    pixel_values = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(eager(pixel_values).logits, sdpa(pixel_values).logits, atol=1e-5, rtol=0)


def test_relative_position_bias_refuses_flex_attention_which_would_give_every_head_head_0s_bias():
    model = random_model(relative_position_bias="lape", pooler_type="sequence")
    model.config._attn_implementation = "flex_attention"  # the check reads the name; no flex kernel runs
    with pytest.raises(ValueError, match=r"needs an attention implementation.*got 'flex_attention'"):
        model(torch.randn(1, 3, 32, 32))


def test_relative_position_bias_refuses_flex_attention_at_load_and_when_switched(tmp_path):
    model = random_model(relative_position_bias="plain", pooler_type="sequence")
    model.save_pretrained(tmp_path)
    refused = r"relative_position_bias='plain' needs .*'eager' or 'sdpa'.*got 'flex_attention'"
    with pytest.raises(ValueError, match=refused):
        LapeViTForImageClassification.from_pretrained(tmp_path, attn_implementation="flex_attention")
    with pytest.raises(ValueError, match=refused):
        model.set_attn_implementation("flex_attention")
    assert model.config._attn_implementation == "sdpa"  # unchanged by the refused switch
    assert (
        LapeViTForImageClassification.from_pretrained(tmp_path, attn_implementation="eager").config._attn_implementation
        == "eager"
    )


def test_flex_attention_is_allowed_without_relative_position_bias():
    model = random_model()
    model.set_attn_implementation("flex_attention")
    assert model.config._attn_implementation == "flex_attention"


def test_hidden_states_and_attentions_are_returned():
    model = random_model()
    model.set_attn_implementation("eager")
    output = model(torch.randn(2, 3, 32, 32), output_hidden_states=True, output_attentions=True)
    assert len(output.hidden_states) == 3 + 1
    assert all(h.shape == (2, 17, 32) for h in output.hidden_states)
    assert len(output.attentions) == 3 and output.attentions[0].shape == (2, 2, 17, 17)
    torch.testing.assert_close(output.attentions[0].sum(-1), torch.ones(2, 2, 17))
    tuple_output = model(torch.randn(2, 3, 32, 32), return_dict=False)
    assert isinstance(tuple_output, tuple) and tuple_output[0].shape == (2, 5)


@pytest.mark.parametrize(
    "problem_type,labels,expected",
    [
        ("single_label_classification", torch.tensor([1, 4]), lambda logits, y: F.cross_entropy(logits, y)),
        (
            "multi_label_classification",
            torch.tensor([[1.0, 0, 0, 1, 0], [0, 1, 0, 0, 0]]),
            F.binary_cross_entropy_with_logits,
        ),
    ],
)
def test_loss_follows_problem_type(problem_type, labels, expected):
    model = random_model(problem_type=problem_type)
    output = model(torch.randn(2, 3, 32, 32), labels=labels)
    torch.testing.assert_close(output.loss, expected(output.logits, labels))


def test_gradient_checkpointing_gives_the_same_gradients():
    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = random_model(pe_join="lape", relative_position_bias="lape").train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(torch.ones(2, 3, 32, 32), labels=torch.tensor([0, 3])).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)
    assert plain["lape_vit.encoder.layers.0.position_layernorm.weight"].abs().sum() > 0


def test_stochastic_depth_rates_increase_linearly_and_only_act_in_training():
    model = random_model(drop_path_rate=0.3)
    rates = [layer.drop_path.drop_prob for layer in model.lape_vit.encoder.layers]
    assert rates == pytest.approx([0.0, 0.15, 0.3])
    pixel_values = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values).logits, model(pixel_values).logits)
        model.train()
        assert not torch.allclose(model(pixel_values).logits, model(pixel_values).logits)


@pytest.mark.parametrize("preset", ["vit-lite-7/4", "cvt-7/4", "cct-7/3x1", "cct-2/3x2", "cct-14/7x2", "deit-tiny"])
def test_preset_tokenizers_and_poolers_make_the_expected_shapes(preset):
    config = LapeViTConfig.from_preset(preset, num_hidden_layers=1)
    embeddings = LapeViTModel(config).embeddings.eval()
    height, width = config.image_size_2d
    with torch.no_grad():
        tokens, grid = embeddings.tokenizer(torch.randn(2, 3, height, width))
        encoder_input, position_stream, _ = embeddings(torch.randn(2, 3, height, width))
    assert grid == config.token_grid_size()
    assert tokens.shape == (2, grid[0] * grid[1], config.hidden_size)
    assert encoder_input.shape == (2, config.num_tokens, config.hidden_size)
    assert position_stream.tables.shape == (1, config.num_tokens, config.hidden_size)


def test_sequence_pooling_is_a_softmax_weighted_sum_over_tokens():
    model = random_model(pooler_type="sequence")
    pooler = model.lape_vit.pooler
    hidden = torch.randn(3, 16, 32)
    with torch.no_grad():
        scores = hidden @ pooler.attention_pool.weight[0] + pooler.attention_pool.bias[0]  # (3, 16)
        weights = scores.exp() / scores.exp().sum(1, keepdim=True)
        expected = torch.stack([sum(weights[b, t] * hidden[b, t] for t in range(16)) for b in range(3)])
        torch.testing.assert_close(pooler(hidden), expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Construction on the meta device (for loading big checkpoints without allocating twice)
# ---------------------------------------------------------------------------------------------------------------------
META_CASES = {
    "learnable": dict(position_embedding_type="learnable"),
    "sinusoidal_1d": dict(position_embedding_type="sinusoidal_1d", pe_join="lape_shared"),
    "sinusoidal_2d": dict(position_embedding_type="sinusoidal_2d", pe_join="share"),
    "none": dict(position_embedding_type="none", pe_join="add"),
    "unshare": dict(pe_join="unshare"),
    "rpe-plain": dict(relative_position_bias="plain"),
    "rpe-lape": dict(relative_position_bias="lape", position_embedding_type="sinusoidal_2d"),
    "conv-tokenizer": TINY_CCT,
    "distilled": dict(use_distillation_token=True, position_embedding_type="sinusoidal_1d"),
}
META_MODELS = [
    (name, model_class)
    for name, overrides in META_CASES.items()
    for model_class in (LapeViTModel, LapeViTForImageClassification, LapeViTForImageClassificationWithTeacher)
    if model_class is not LapeViTForImageClassificationWithTeacher or overrides.get("use_distillation_token")
]


@pytest.mark.parametrize("case,model_class", META_MODELS, ids=[f"{name}-{cls.__name__}" for name, cls in META_MODELS])
def test_a_model_built_on_meta_and_initialized_equals_a_normally_built_one(case, model_class):
    """`with torch.device("meta")`, then `to_empty` + `init_weights`: the fixed buffers (sinusoidal tables, relative
    position index) are exactly the normally built ones, constant-initialized parameters are equal and random ones
    have the same spread (to_empty leaves arbitrary memory: none of it may survive)."""
    config = tiny_config(**META_CASES[case])
    with torch.device("meta"):
        model = model_class(config)
    assert all(tensor.is_meta for tensor in [*model.parameters(), *model.buffers()])
    model.to_empty(device="cpu")
    model.init_weights()
    reference = model_class(config)

    buffers, reference_buffers = dict(model.named_buffers()), dict(reference.named_buffers())
    assert buffers.keys() == reference_buffers.keys()
    for name, buffer in reference_buffers.items():
        assert torch.equal(buffers[name], buffer), name
    parameters = dict(model.named_parameters())
    for name, expected in reference.named_parameters():
        actual = parameters[name]
        if expected.unique().numel() == 1:  # LayerNorm affines, biases: set to constants
            assert torch.equal(actual, expected), name
        else:
            assert actual.std().item() == pytest.approx(expected.std().item(), rel=0.35), name
            assert actual.abs().max().item() <= 5 * expected.abs().max().item(), name
    with torch.no_grad():
        logits = model.eval()(torch.randn(2, 3, 32, 32))
    output = logits.last_hidden_state if model_class is LapeViTModel else logits.logits
    assert torch.isfinite(output).all()


def _plain_tensors(value) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (list, tuple, set)):
        return any(_plain_tensors(item) for item in value)
    return isinstance(value, dict) and any(_plain_tensors(item) for item in value.values())


@pytest.mark.parametrize("case,model_class", META_MODELS, ids=[f"{name}-{cls.__name__}" for name, cls in META_MODELS])
def test_every_tensor_a_model_holds_is_a_parameter_or_a_buffer(case, model_class):
    """A plain tensor attribute is not moved by `to()`, not materialized by `to_empty()` and not in the state dict."""
    model = model_class(tiny_config(**META_CASES[case]))
    registries = ("_parameters", "_buffers", "_modules")
    plain = [
        f"{prefix or '<model>'}.{name}"
        for prefix, module in model.named_modules()
        for name, value in vars(module).items()
        if name not in registries and _plain_tensors(value)
    ]
    assert plain == []


# ---------------------------------------------------------------------------------------------------------------------
# The classifier head
# ---------------------------------------------------------------------------------------------------------------------
def test_zero_labels_build_classifiers_whose_logits_are_the_pooled_features():
    model = random_model(num_labels=0)
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values).logits, model.lape_vit(pixel_values).pooler_output)
    distilled = random_model(LapeViTForImageClassificationWithTeacher, num_labels=0, use_distillation_token=True)
    with torch.no_grad():
        hidden = distilled.lape_vit(pixel_values).last_hidden_state
        torch.testing.assert_close(distilled(pixel_values).logits, (hidden[:, 0] + hidden[:, 1]) / 2)
