"""What the model accepts: bad input fails at the model's entry with what was given and what is expected, and
`interpolate_pos_encoding` runs a model at another resolution for every PE type."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_, tiny_config

from lape_hf import LapeViTForImageClassification


def model_with(**overrides) -> LapeViTForImageClassification:
    return randomize_(LapeViTForImageClassification(tiny_config(**overrides))).eval()


@pytest.mark.parametrize(
    "pixel_values,message",
    [
        (torch.randn(2, 1, 32, 32), "pixel_values has 1 channels, but the model expects num_channels=3"),
        (torch.randn(2, 4, 32, 32), "pixel_values has 4 channels, but the model expects num_channels=3"),
        (torch.randn(2, 3, 64, 64), r"Input image size \(64x64\) does not match the model \(32x32\).*interpolate_pos"),
        (torch.randn(3, 32, 32), r"must be 4-D \(batch, channels, height, width\), got shape \(3, 32, 32\)"),
        (torch.randn(1, 1, 3, 32, 32), r"got shape \(1, 1, 3, 32, 32\)"),
        (torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8), "floating point tensor, got dtype torch.uint8"),
        (torch.ones(2, 3, 32, 32, dtype=torch.int64), "got dtype torch.int64"),
        (None, "pixel_values is required"),
        (torch.randn(0, 3, 32, 32), r"no image \(batch size 0\)"),
    ],
)
def test_bad_input_gets_a_clear_value_error(pixel_values, message):
    with pytest.raises(ValueError, match=message):
        model_with()(pixel_values)


@pytest.mark.parametrize("bad_class", [-1, 5])
def test_a_label_outside_the_classes_is_named_with_the_allowed_range(bad_class):
    model = model_with()
    assert model.config.num_labels == 5
    labels = torch.tensor([0, bad_class])
    with pytest.raises(ValueError, match=rf"labels holds class {bad_class}; allowed: 0\.\.4"):
        model(torch.randn(2, 3, 32, 32), labels=labels)
    assert model(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 4])).loss.isfinite()


def test_too_small_input_is_refused_even_with_interpolation():
    with pytest.raises(ValueError, match=r"Input image size \(4x4\) is too small"):
        model_with()(torch.randn(1, 3, 4, 4), interpolate_pos_encoding=True)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(position_embedding_type="learnable", pe_join="lape"),
        dict(position_embedding_type="learnable", pe_join="unshare"),
        dict(position_embedding_type="sinusoidal_1d", pe_join="lape_shared"),
        dict(position_embedding_type="sinusoidal_2d", pe_join="share"),
        dict(position_embedding_type="none", pe_join="add"),
        dict(relative_position_bias="lape", pe_join="lape"),
        dict(
            tokenizer_type="conv", conv_intermediate_channels=8, pooler_type="sequence", relative_position_bias="plain"
        ),
    ],
    ids=lambda overrides: ",".join(f"{v}" for v in overrides.values()),
)
def test_interpolation_is_exact_at_the_native_size_and_runs_at_twice_the_size(overrides):
    model = model_with(**overrides)
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            model(pixel_values, interpolate_pos_encoding=True).logits, model(pixel_values).logits
        )
        larger = model(torch.randn(2, 3, 64, 64), interpolate_pos_encoding=True)
        non_square = model(torch.randn(2, 3, 64, 48), interpolate_pos_encoding=True)
    assert larger.logits.shape == non_square.logits.shape == (2, 5)
    assert torch.isfinite(larger.logits).all()


@pytest.mark.parametrize("position_embedding_type", ["sinusoidal_1d", "sinusoidal_2d"])
def test_sinusoidal_pe_is_recomputed_for_the_new_grid(position_embedding_type):
    """At 64x64 a sinusoidal model equals the same weights configured natively for 64x64."""
    small = model_with(position_embedding_type=position_embedding_type, pe_join="lape")
    native = LapeViTForImageClassification(tiny_config(position_embedding_type=position_embedding_type, image_size=64))
    native.load_state_dict(small.state_dict())
    native.eval()
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            small(pixel_values, interpolate_pos_encoding=True).logits, native(pixel_values).logits, atol=1e-5, rtol=0
        )


def test_learnable_pe_is_resized_bicubically_keeping_the_class_token():
    model = model_with(position_embedding_type="learnable")
    module = model.lape_vit.embeddings.position_embedding
    table = module.position_embeddings.detach()
    resized = module((8, 6)).detach()
    grid = table[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(8, 6), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(resized[:, 0], table[:, 0])
    torch.testing.assert_close(resized[:, 1:], expected.reshape(1, 48, 32))


def test_relative_position_bias_touches_only_patch_pairs():
    model = model_with(relative_position_bias="lape")
    bias = model.lape_vit.encoder.layers[0].attention.relative_position_bias((4, 4)).detach()
    assert bias.shape == (1, 2, 17, 17)
    assert torch.count_nonzero(bias[..., 0, :]) == 0 and torch.count_nonzero(bias[..., :, 0]) == 0
    # The LaPE form normalizes over the key axis: with the affine undone, each row has mean 0 and variance 1.
    layernorm = model.lape_vit.encoder.layers[0].attention.relative_position_bias.layernorm
    normalized = (bias[0, :, 1:, 1:] - layernorm.bias) / layernorm.weight
    torch.testing.assert_close(normalized.mean(-1), torch.zeros(2, 16), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalized.var(-1, unbiased=False), torch.ones(2, 16), atol=1e-3, rtol=0)
