"""LapeViTBackbone: feature maps for detection/segmentation heads (transformers' BackboneMixin), AutoBackbone (also by
remote code without lape_hf), and `pipeline("image-feature-extraction")`."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from conftest import TINY_CCT, randomize_, tiny_config
from hub_helpers import run_without_lape_hf
from PIL import Image
from transformers import AutoBackbone, pipeline
from transformers.models.auto.auto_factory import _BaseAutoBackboneClass

from lape_hf import LapeViTBackbone, LapeViTForImageClassification, LapeViTModel
from lape_hf.models.lape_vit.image_processing_lape_vit import build_image_processor


def bare_model_with_backbone_weights(backbone: LapeViTBackbone) -> LapeViTModel:
    model = LapeViTModel(backbone.config).eval()
    missing, unexpected = model.load_state_dict(backbone.state_dict(), strict=False)
    assert not unexpected and all(name.startswith("pooler.") for name in missing)  # a backbone has no pooler
    return model


@pytest.mark.parametrize("overrides", [dict(), dict(image_size=[32, 16], relative_position_bias="lape"), TINY_CCT])
def test_feature_maps_are_the_normalized_hidden_states_as_patch_grids(overrides):
    config = tiny_config(out_indices=[0, 2, 3], **overrides)
    backbone = randomize_(LapeViTBackbone(config)).eval()
    model = bare_model_with_backbone_weights(backbone)
    height, width = config.image_size_2d
    pixel_values = torch.randn(2, 3, height, width)
    with torch.no_grad():
        output = backbone(pixel_values, output_hidden_states=True)
        hidden_states = model(pixel_values, output_hidden_states=True).hidden_states
    rows, columns = config.token_grid_size()
    assert backbone.out_features == ["stem", "stage2", "stage3"] and backbone.channels == [32, 32, 32]
    assert [tuple(feature_map.shape) for feature_map in output.feature_maps] == [(2, 32, rows, columns)] * 3
    prefix = config.num_prefix_tokens
    for feature_map, index in zip(output.feature_maps, [0, 2, 3], strict=True):
        tokens = torch.nn.functional.layer_norm(
            hidden_states[index], (32,), model.layernorm.weight, model.layernorm.bias, config.layer_norm_eps
        )[:, prefix:]
        expected = tokens.reshape(2, rows, columns, 32).permute(0, 3, 1, 2)
        torch.testing.assert_close(feature_map, expected, rtol=0, atol=1e-6)
    for ours, theirs in zip(output.hidden_states, hidden_states, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_feature_maps_without_layernorm_or_reshape_are_the_raw_sequences():
    config = tiny_config(apply_layernorm=False, reshape_hidden_states=False)  # default: the last stage
    backbone = randomize_(LapeViTBackbone(config)).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        (feature_map,) = backbone(pixel_values).feature_maps
        last = bare_model_with_backbone_weights(backbone)(pixel_values, output_hidden_states=True).hidden_states[-1]
    assert backbone.out_features == ["stage3"]
    torch.testing.assert_close(feature_map, last, rtol=0, atol=0)


def test_feature_maps_at_another_resolution_follow_the_token_grid():
    backbone = randomize_(LapeViTBackbone(tiny_config(out_indices=[-1]))).eval()
    with torch.no_grad():
        (feature_map,) = backbone(torch.randn(1, 3, 48, 24), interpolate_pos_encoding=True).feature_maps
    assert tuple(feature_map.shape) == (1, 32, 6, 3)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(out_indices=[4]), r"out_indices must be valid indices for stage_names \['stem', 'stage1'"),
        (dict(out_features=["stage9"]), r"out_features must be a subset of stage_names: \['stem'"),
    ],
)
def test_an_out_of_range_stage_names_the_stages_allowed(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


# transformers 5's `AutoBackbone.from_pretrained` first asks the Hub whether the name is a repository (else it loads a
# timm backbone), which fails for a local directory and offline; the Auto class's own loading, which it then calls, is
# `_BaseAutoModelClass.from_pretrained`, reached here through `super()` past that check.
AUTO_BACKBONE_LOADING = "super(_BaseAutoBackboneClass, AutoBackbone).from_pretrained"


def test_autobackbone_loads_a_saved_classifier_directory(tmp_path):
    classifier = randomize_(LapeViTForImageClassification(tiny_config())).eval()
    classifier.save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoBackbone"] == "modeling_lape_vit.LapeViTBackbone"
    backbone = super(_BaseAutoBackboneClass, AutoBackbone).from_pretrained(tmp_path, out_indices=[1, 3]).eval()
    assert type(backbone) is LapeViTBackbone and backbone.out_features == ["stage1", "stage3"]
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        hidden = classifier.lape_vit(pixel_values, output_hidden_states=True).hidden_states[3]
        last_map = backbone(pixel_values).feature_maps[-1]
    expected = classifier.lape_vit.layernorm(hidden)[:, 1:].reshape(2, 4, 4, 32).permute(0, 3, 1, 2)
    torch.testing.assert_close(last_map, expected, rtol=0, atol=1e-6)


def test_autobackbone_by_remote_code_without_lape_hf(tmp_path):
    model_dir = tmp_path / "model"
    classifier = randomize_(LapeViTForImageClassification(tiny_config(relative_position_bias="lape"))).eval()
    classifier.save_pretrained(model_dir)
    pixel_values = torch.randn(2, 3, 32, 32)
    backbone = LapeViTBackbone.from_pretrained(model_dir, out_indices=[2]).eval()
    with torch.no_grad():
        torch.save(backbone(pixel_values).feature_maps[0], tmp_path / "expected.pt")
    torch.save(pixel_values, tmp_path / "inputs.pt")
    code = textwrap.dedent(
        f"""
        import json, torch
        from transformers import AutoBackbone
        from transformers.models.auto.auto_factory import _BaseAutoBackboneClass
        load = {AUTO_BACKBONE_LOADING}
        backbone = load({str(model_dir)!r}, trust_remote_code=True, out_indices=[2]).eval()
        with torch.no_grad():
            (feature_map,) = backbone(torch.load({str(tmp_path / "inputs.pt")!r})).feature_maps
        difference = (feature_map - torch.load({str(tmp_path / "expected.pt")!r})).abs().max().item()
        print(json.dumps({{"class": type(backbone).__name__, "module": type(backbone).__module__, "diff": difference}}))
        """
    )
    completed = run_without_lape_hf(code, cwd=tmp_path, hub_cache=tmp_path / "hub", timeout=600)
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["class"] == "LapeViTBackbone" and not report["module"].startswith("lape_hf")
    assert report["diff"] == 0.0


def test_image_feature_extraction_pipeline_gives_token_features_or_the_pooled_output(tmp_path):
    model = randomize_(LapeViTModel(tiny_config())).eval()
    model.save_pretrained(tmp_path)
    processor = build_image_processor(model.config)
    processor.save_pretrained(tmp_path)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 24, 3), dtype=np.uint8))
    extractor = pipeline("image-feature-extraction", model=str(tmp_path))
    with torch.no_grad():
        expected = model(**processor(image, return_tensors="pt"))
    tokens = torch.tensor(extractor(image))
    pooled = torch.tensor(extractor(image, pool=True))
    torch.testing.assert_close(tokens, expected.last_hidden_state, rtol=0, atol=1e-5)
    torch.testing.assert_close(pooled, expected.pooler_output, rtol=0, atol=1e-5)


def test_the_backbone_builds_on_meta_and_initializes_like_a_normally_built_one():
    config = tiny_config(relative_position_bias="lape", position_embedding_type="sinusoidal_2d", out_indices=[1, 3])
    with torch.device("meta"):
        backbone = LapeViTBackbone(config)
    backbone.to_empty(device="cpu")
    backbone.init_weights()
    reference = LapeViTBackbone(config)
    for (name, buffer), (_, expected) in zip(backbone.named_buffers(), reference.named_buffers(), strict=True):
        assert torch.equal(buffer, expected), name
    with torch.no_grad():
        feature_maps = backbone.eval()(torch.randn(1, 3, 32, 32)).feature_maps
    assert [tuple(feature_map.shape) for feature_map in feature_maps] == [(1, 32, 4, 4)] * 2
    assert all(torch.isfinite(feature_map).all() for feature_map in feature_maps)
