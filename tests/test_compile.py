"""torch.compile(fullgraph=True) on every PE type and join, the relative position bias, the convolutional tokenizer
and sequence pooling: one graph (a graph break would raise), no recompilation for new inputs of the same shape, and
the logits and gradients of eager mode.

Inductor (the default backend) compiles C++ kernels, which takes tens of seconds to minutes per model on two CPU
cores (less once its kernel cache is warm). The default suite compiles the paper's model for inference with it and
checks the training graphs and the optional modules through `aot_eager` (the same graphs, run with eager kernels);
the slow suite compiles everything with inductor, and the backward of two representative models.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_CCT, randomize_, tiny_config

from lape_hf import LapeViTForImageClassification, LapeViTForImageClassificationWithTeacher

JOIN_AND_PE = [
    dict(pe_join=join, position_embedding_type=pe)
    for join in ("lape", "lape_shared", "add", "share", "unshare")
    for pe in ("learnable", "sinusoidal_1d", "sinusoidal_2d", "none")
    if join != "unshare" or pe == "learnable"
]
STRUCTURES = [
    dict(relative_position_bias="plain", pe_join="add"),
    dict(relative_position_bias="lape", pe_join="lape"),
    TINY_CCT,
    dict(pooler_type="mean", pe_join="lape_shared"),
]
# The paper's method, and one model that exercises every optional module at once.
LAPE = dict(pe_join="lape", position_embedding_type="learnable")
EVERY_MODULE = dict(
    pe_join="lape",
    position_embedding_type="sinusoidal_2d",
    relative_position_bias="lape",
    tokenizer_type="conv",
    conv_intermediate_channels=8,
    pooler_type="sequence",
    encoder_layer_form="post_attention_norm",
)


def case_id(overrides: dict) -> str:
    return ",".join(f"{value}" for value in overrides.values())


def gradients(model: torch.nn.Module, forward, pixel_values: torch.Tensor, labels: torch.Tensor) -> dict:
    """The gradients `forward` (the model or its compiled form, which shares its parameters) gives the model."""
    model.zero_grad(set_to_none=True)
    forward(pixel_values, labels=labels).loss.backward()
    return {name: parameter.grad for name, parameter in model.named_parameters() if parameter.grad is not None}


def assert_compiles_like_eager(
    model: torch.nn.Module, eval_backend: str = "inductor", training_backend: str = "inductor"
) -> None:
    """Eval logits and training gradients of the fullgraph-compiled model equal eager mode's, and a second batch of
    the same shape runs without recompiling. `aot_eager` traces the same graphs (forward and backward) as inductor
    but runs them with eager kernels: the cheap check that the model compiles as one graph."""
    pixel_values, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 3])

    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=eval_backend)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(pixel_values).logits, model(pixel_values).logits, atol=1e-5, rtol=1e-5)
        with torch.compiler.set_stance("fail_on_recompile"):
            other = torch.randn(2, 3, 32, 32)
            torch.testing.assert_close(compiled(other).logits, model(other).logits, atol=1e-5, rtol=1e-5)

    compiled = torch.compile(model, fullgraph=True, backend=training_backend)
    model.train()
    compiled_gradients = gradients(model, compiled, pixel_values, labels)
    eager_gradients = gradients(model, model, pixel_values, labels)
    assert compiled_gradients.keys() == eager_gradients.keys()
    for name, gradient in eager_gradients.items():
        torch.testing.assert_close(compiled_gradients[name], gradient, atol=1e-5, rtol=1e-4, msg=name)


def random_model(**overrides) -> LapeViTForImageClassification:
    return randomize_(LapeViTForImageClassification(tiny_config(**overrides)))


def test_lape_compiles_with_inductor_like_eager():
    assert_compiles_like_eager(random_model(**LAPE), training_backend="aot_eager")


def test_optional_modules_compile_as_one_graph():
    assert_compiles_like_eager(random_model(**EVERY_MODULE), eval_backend="aot_eager", training_backend="aot_eager")


def test_other_batch_sizes_share_one_dynamic_graph():
    """The second batch size makes dynamo trace the batch dimension symbolically; from then on any batch size runs
    without recompiling, still as one graph."""
    model = random_model(**EVERY_MODULE).eval()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        for batch_size in (2, 3, 5, 8):
            pixel_values = torch.randn(batch_size, 3, 32, 32)
            with torch.compiler.set_stance("fail_on_recompile" if batch_size > 3 else "default"):
                logits = compiled(pixel_values).logits
            torch.testing.assert_close(logits, model(pixel_values).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [LAPE, EVERY_MODULE], ids=["lape", "every-module"])
def test_representative_models_train_with_inductor_like_eager(overrides):
    assert_compiles_like_eager(random_model(**overrides))


@pytest.mark.slow
@pytest.mark.parametrize("overrides", JOIN_AND_PE + STRUCTURES, ids=case_id)
def test_every_join_pe_type_and_module_compiles_like_eager(overrides):
    """Inductor for inference; the training graphs through aot_eager (inductor compiles the backward of the two
    representative models above: compiling every backward with it would take most of an hour on two cores)."""
    assert_compiles_like_eager(random_model(**overrides), training_backend="aot_eager")


@pytest.mark.slow
def test_distilled_model_and_other_resolutions_compile_as_one_graph():
    model = randomize_(LapeViTForImageClassificationWithTeacher(tiny_config(use_distillation_token=True)))
    assert_compiles_like_eager(model, training_backend="aot_eager")

    torch._dynamo.reset()
    model = random_model(relative_position_bias="lape", position_embedding_type="sinusoidal_2d").eval()
    compiled = torch.compile(model, fullgraph=True)
    pixel_values = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            compiled(pixel_values, interpolate_pos_encoding=True, output_position_embeddings=True).logits,
            model(pixel_values, interpolate_pos_encoding=True).logits,
            atol=1e-5,
            rtol=1e-5,
        )
