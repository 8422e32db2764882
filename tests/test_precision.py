"""Half precision: loading with `dtype=`, the position-embedding resize computed in float32 whatever the model's dtype,
and the measuring tool's agreement count (its figures are in the README; no timing here)."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_, tiny_config
from transformers import AutoModelForImageClassification

from lape_hf import LapeViTForImageClassification
from lape_hf.tools.precision import top1_agreement


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("precision")
    model = randomize_(LapeViTForImageClassification(tiny_config(relative_position_bias="lape"))).eval()
    model.save_pretrained(directory)
    return model, directory


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_resized_position_tables_are_the_float32_resize_rounded_once(saved, dtype):
    model, directory = saved
    half = AutoModelForImageClassification.from_pretrained(directory, dtype=dtype).eval()
    assert {parameter.dtype for parameter in half.parameters()} == {dtype}
    # The reference: the float32 model's tables rounded to `dtype` (what the half model stores), resized in float32.
    reference = LapeViTForImageClassification(model.config).eval()
    reference.load_state_dict({name: value.to(dtype).float() for name, value in model.state_dict().items()})
    grid = (6, 3)
    with torch.no_grad():
        resized = half.lape_vit.embeddings.position_embedding(grid)
        expected = reference.lape_vit.embeddings.position_embedding(grid).to(dtype)
        bias = half.lape_vit.encoder.layers[0].attention.relative_position_bias(grid)
        expected_bias = reference.lape_vit.encoder.layers[0].attention.relative_position_bias(grid)
    assert resized.dtype == dtype
    torch.testing.assert_close(resized, expected, rtol=0, atol=0)
    # The bias's LayerNorm then runs in `dtype`: equal to the float32 one within that dtype's rounding.
    torch.testing.assert_close(bias.float(), expected_bias, rtol=0, atol=0.05)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_at_another_resolution_close_to_float32(saved, dtype):
    model, directory = saved
    half = AutoModelForImageClassification.from_pretrained(directory, dtype=dtype).eval()
    pixel_values = torch.randn(4, 3, 48, 24)
    with torch.no_grad():
        logits = half(pixel_values.to(dtype), interpolate_pos_encoding=True).logits
        expected = model(pixel_values, interpolate_pos_encoding=True).logits
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    assert (logits.float() - expected).abs().max() <= 0.05 * expected.abs().max()


def test_top1_agreement_names_the_images_whose_class_differs(saved):
    model, _ = saved
    pixel_values = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        reference = model(pixel_values).logits
    assert top1_agreement(model, reference, pixel_values).tolist() == []
    flipped = reference.clone()
    flipped[2] = -flipped[2]  # the reference's top-1 of image 2 becomes its lowest class
    assert top1_agreement(model, flipped, pixel_values).tolist() == [2]
