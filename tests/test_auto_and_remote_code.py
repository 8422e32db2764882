"""Saving and loading: safetensors only, the Auto classes, Hub remote code in a process that cannot import lape_hf,
and `pipeline("image-classification")` on PIL images of any size and mode."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import randomize_, tiny_config
from hub_helpers import run_without_lape_hf
from PIL import Image
from safetensors import safe_open
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, pipeline

from lape_hf import (
    PRESETS,
    LapeViTConfig,
    LapeViTForImageClassification,
    LapeViTForImageClassificationWithTeacher,
    LapeViTModel,
)
from lape_hf.models.lape_vit.image_processing_lape_vit import build_image_processor

# Runs where `import lape_hf` raises (hub_helpers.run_without_lape_hf): the model can only come from the code files.
REMOTE_CODE_LOADING = textwrap.dedent(
    """
    import json
    import torch
    from transformers import AutoModelForImageClassification

    report = {}
    for directory in json.loads(DIRECTORIES):
        model = AutoModelForImageClassification.from_pretrained(directory, trust_remote_code=True).eval()
        inputs = torch.load(f"{directory}/inputs.pt")
        with torch.no_grad():
            logits = model(inputs).logits
        expected = torch.load(f"{directory}/expected_logits.pt")
        report[directory] = {
            "class": type(model).__name__,
            "module": type(model).__module__,
            "max_abs_diff": (logits - expected).abs().max().item(),
        }
    print(json.dumps(report))
    """
)


def save_with_expected_output(model: torch.nn.Module, directory: Path) -> None:
    model.eval().save_pretrained(directory)
    build_image_processor(model.config).save_pretrained(directory)
    height, width = model.config.image_size_2d
    inputs = torch.randn(2, 3, height, width)
    with torch.no_grad():
        torch.save(model(inputs).logits, directory / "expected_logits.pt")
    torch.save(inputs, directory / "inputs.pt")


def load_in_process_without_lape_hf(directories: list[Path], tmp_path: Path) -> dict:
    code = f"DIRECTORIES = {json.dumps(json.dumps([str(d) for d in directories]))}\n" + REMOTE_CODE_LOADING
    completed = run_without_lape_hf(code, cwd=tmp_path, hub_cache=tmp_path / "hub", timeout=600)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_save_pretrained_writes_safetensors_config_and_code(tmp_path):
    model = randomize_(LapeViTForImageClassification(tiny_config(position_embedding_type="sinusoidal_2d")))
    save_with_expected_output(model, tmp_path)
    files = {path.name for path in tmp_path.iterdir()}
    assert {"model.safetensors", "config.json", "preprocessor_config.json"} <= files
    assert {"configuration_lape_vit.py", "modeling_lape_vit.py"} <= files
    assert not any(name.endswith((".bin", ".pt.bin", ".pth")) for name in files)
    with safe_open(tmp_path / "model.safetensors", "pt") as weights:  # what the Hub and loaders read the format from
        assert weights.metadata() == {"format": "pt"}
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_lape_vit.LapeViTConfig",
        "AutoModelForImageClassification": "modeling_lape_vit.LapeViTForImageClassification",
        "AutoModel": "modeling_lape_vit.LapeViTModel",
        "AutoBackbone": "modeling_lape_vit.LapeViTBackbone",
    }
    for code in ("configuration_lape_vit.py", "modeling_lape_vit.py"):
        imports = [line for line in (tmp_path / code).read_text().splitlines() if line.startswith(("import ", "from "))]
        assert all(
            line.split()[1].split(".")[0]
            in {
                "__future__",
                "torch",
                "transformers",
                "huggingface_hub",
                "",
                "math",
                "copy",
                "typing",
                "collections",
                "dataclasses",
            }
            for line in imports
        ), imports


@pytest.mark.parametrize(
    "overrides",
    [
        dict(pe_join="lape", position_embedding_type="sinusoidal_1d"),
        dict(pe_join="unshare", relative_position_bias="lape"),
        dict(tokenizer_type="conv", conv_intermediate_channels=8, pooler_type="sequence", pe_join="lape_shared"),
    ],
    ids=["sinusoidal", "unshare-rpe", "conv-sequence"],
)
def test_round_trip_gives_identical_logits_through_the_auto_classes(tmp_path, overrides):
    model = randomize_(LapeViTForImageClassification(tiny_config(**overrides)))
    save_with_expected_output(model, tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is LapeViTForImageClassification
    with torch.no_grad():
        assert torch.equal(
            loaded(torch.load(tmp_path / "inputs.pt")).logits, torch.load(tmp_path / "expected_logits.pt")
        )
    assert isinstance(AutoConfig.from_pretrained(tmp_path), LapeViTConfig)
    assert type(AutoModel.from_pretrained(tmp_path)) is LapeViTModel


def test_auto_class_picks_the_distilled_model_from_the_checkpoint(tmp_path):
    config = tiny_config(use_distillation_token=True)
    save_with_expected_output(randomize_(LapeViTForImageClassificationWithTeacher(config)), tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert type(loaded) is LapeViTForImageClassificationWithTeacher
    assert type(AutoModelForImageClassification.from_config(tiny_config())) is LapeViTForImageClassification


def test_a_checkpoint_that_does_not_match_the_config_is_refused(tmp_path):
    """transformers refuses it (its load report above the error names each key and both shapes)."""
    randomize_(LapeViTForImageClassification(tiny_config(pe_join="add"))).save_pretrained(tmp_path)
    config = tiny_config(pe_join="add", hidden_size=64)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        LapeViTForImageClassification.from_pretrained(tmp_path, config=config)


def test_remote_code_loads_in_a_process_that_cannot_import_lape_hf(tmp_path):
    plain = tmp_path / "plain"
    distilled = tmp_path / "distilled"
    save_with_expected_output(
        randomize_(LapeViTForImageClassification(tiny_config(relative_position_bias="lape"))), plain
    )
    teacher_config = tiny_config(use_distillation_token=True, position_embedding_type="sinusoidal_2d")
    save_with_expected_output(randomize_(LapeViTForImageClassificationWithTeacher(teacher_config)), distilled)
    report = load_in_process_without_lape_hf([plain, distilled], tmp_path)
    assert report[str(plain)]["class"] == "LapeViTForImageClassification"
    assert report[str(distilled)]["class"] == "LapeViTForImageClassificationWithTeacher"
    for entry in report.values():
        assert entry["module"].startswith("transformers_modules."), entry
        assert entry["max_abs_diff"] < 1e-6, entry


def test_pipeline_classifies_pil_images_of_any_size_and_mode(tmp_path):
    config = tiny_config(id2label={i: f"digit {i}" for i in range(5)}, label2id={f"digit {i}": i for i in range(5)})
    model = randomize_(LapeViTForImageClassification(config)).eval()
    save_with_expected_output(model, tmp_path)
    classifier = pipeline("image-classification", model=str(tmp_path), top_k=5)
    processor = build_image_processor(config)
    generator = torch.Generator().manual_seed(1)
    for mode, size in [("L", (17, 45)), ("RGBA", (64, 64)), ("RGB", (32, 32)), ("RGB", (100, 20))]:
        pixels = torch.randint(0, 256, (size[1], size[0], len(mode)), generator=generator, dtype=torch.uint8)
        image = Image.fromarray(pixels.squeeze(-1).numpy(), mode=mode)
        predictions = classifier(image)
        assert [p["label"] for p in predictions] != [] and {p["label"] for p in predictions} == set(config.label2id)
        with torch.no_grad():
            expected = model(**processor(image.convert("RGB"), return_tensors="pt")).logits.softmax(-1)[0]
        best = max(predictions, key=lambda p: p["score"])
        assert best["label"] == f"digit {expected.argmax().item()}"
        assert best["score"] == pytest.approx(expected.max().item(), abs=1e-5)


def preset_model(name: str, **overrides) -> LapeViTForImageClassification | LapeViTForImageClassificationWithTeacher:
    config = LapeViTConfig.from_preset(name, num_labels=3, **overrides)
    model_class = (
        LapeViTForImageClassificationWithTeacher if config.use_distillation_token else LapeViTForImageClassification
    )
    return model_class(config)


@pytest.fixture(scope="module")
def saved_presets(tmp_path_factory) -> tuple[dict[str, Path], dict]:
    """A shallow (one layer), trained-one-step version of each preset, saved; and the remote-code load report of all
    of them from one process that cannot import lape_hf."""
    root = tmp_path_factory.mktemp("presets")
    directories = {}
    for index, preset in enumerate(sorted(PRESETS)):
        model = preset_model(preset, num_hidden_layers=1, pe_join="lape")
        height, width = model.config.image_size_2d
        model.train()(torch.randn(2, 3, height, width), labels=torch.tensor([0, 2])).loss.backward()
        assert model.lape_vit.encoder.layers[0].position_layernorm.weight.grad is not None
        directories[preset] = root / f"preset-{index}"
        save_with_expected_output(model, directories[preset])
    return directories, load_in_process_without_lape_hf(list(directories.values()), root)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_trains_saves_and_loads_through_auto_and_remote_code(saved_presets, preset):
    """Shallow versions of each preset; the full-depth forward/backward is the slow test below."""
    directories, remote_report = saved_presets
    directory = directories[preset]
    loaded = AutoModelForImageClassification.from_pretrained(directory).eval()
    with torch.no_grad():
        logits = loaded(torch.load(directory / "inputs.pt")).logits
    assert torch.equal(logits, torch.load(directory / "expected_logits.pt"))
    assert remote_report[str(directory)]["class"] == type(loaded).__name__
    assert remote_report[str(directory)]["max_abs_diff"] < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_full_size_preset_runs_forward_and_backward(preset):
    model = preset_model(preset, pe_join="lape").train()
    height, width = model.config.image_size_2d
    model(torch.randn(1, 3, height, width), labels=torch.tensor([1])).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
