"""Model cards: the metadata parses with huggingface_hub and carries results.json's numbers exactly, the body
describes the checkpoint from its own files, and the card's usage code runs as written, with lape_hf and without it
(remote code), against a tiny model placed in an offline Hub cache under the card's repository id."""

from __future__ import annotations

import ast
import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_helpers import LABELS, TEMPLATE, go_offline, run_without_lape_hf, save_tiny_checkpoint, tiny_results
from huggingface_hub import ModelCard, metadata_load
from PIL import Image
from transformers import ViTImageProcessor

from lape_hf import LapeViTConfig, LapeViTForImageClassification
from lape_hf.hub import install_in_hub_cache, prepare_upload
from lape_hf.hub.model_card import CardSource, CardSourceError, build_card_data, usage_code_blocks

REPO_ID = "lape-test/card-model"
MODEL_CARDS = TEMPLATE.parent


def render(tmp_path: Path, results: dict | None = None, source: CardSource | None = None, **config_overrides):
    model_dir = save_tiny_checkpoint(tmp_path / "model", results=results, **config_overrides)
    return prepare_upload(model_dir, REPO_ID, template_path=TEMPLATE, card_source=source)


# ---------------------------------------------------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------------------------------------------------
def test_the_metadata_parses_and_carries_the_results_numbers(tmp_path: Path):
    results = tiny_results()
    card_file = tmp_path / "README.md"
    render(tmp_path, results).card.save(card_file)

    metadata = metadata_load(card_file)  # what the Hub reads
    assert metadata["license"] == "apache-2.0"
    assert metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == "image-classification"
    assert {"lape", "vision-transformer", "pe-join-lape", "pe-learnable"} <= set(metadata["tags"])
    assert metadata["metrics"] == ["accuracy", "top_5_accuracy"]
    assert "datasets" not in metadata  # sklearn-digits is not a Hub dataset

    evaluations = ModelCard.load(card_file).data.eval_results
    assert [(e.metric_type, e.metric_value) for e in evaluations] == [
        ("accuracy", results["metrics"]["eval_accuracy"]),
        ("top_5_accuracy", results["metrics"]["eval_top5_accuracy"]),
    ]
    for evaluation in evaluations:
        assert evaluation.task_type == "image-classification"
        assert evaluation.dataset_type == "sklearn-digits"
        assert evaluation.dataset_split == "test"
    assert metadata["model-index"][0]["name"] == "card-model"


def test_a_hub_dataset_is_listed_and_names_the_model_index(tmp_path: Path):
    dataset = dict(tiny_results()["dataset"], name="uoft-cs/cifar10", eval_split="validation")
    card = render(tmp_path, tiny_results(dataset=dataset)).card
    assert card.data.datasets == ["uoft-cs/cifar10"]
    assert card.data.eval_results[0].dataset_type == "uoft-cs/cifar10"
    assert card.data.eval_results[0].dataset_split == "validation"


def test_without_results_the_card_has_no_model_index_and_says_why(tmp_path: Path):
    card = render(tmp_path, results=None).card
    assert card.data.eval_results is None
    assert "model-index" not in card.data.to_dict()
    assert "No evaluation results were supplied with this checkpoint" in card.text
    assert "The training recipe was not recorded" in card.text


# ---------------------------------------------------------------------------------------------------------------------
# Body
# ---------------------------------------------------------------------------------------------------------------------
def test_the_body_shows_the_results_and_the_recipe_of_the_run(tmp_path: Path):
    text = render(tmp_path, tiny_results()).card.text
    assert "| `eval_accuracy` | 81.39% |" in text
    assert "| `eval_top5_accuracy` | 99.72% |" in text
    assert "| `eval_loss` | 0.61 |" in text
    assert "eval_runtime" not in text and "eval_samples_per_second" not in text and "| `epoch`" not in text
    for row in (
        "| Epochs | 30 |",
        "| Peak learning rate | 0.0005 |",
        "| Processes (devices) | 2 |",
        "| Mixup alpha | 0.8 |",
        "| RandAugment | yes |",
        "| Evaluation split | `test` (360 images) |",
        "| Wall time | 12.6 min |",
    ):
        assert row in text
    assert "Maximum steps" not in text  # -1: not set


@pytest.mark.parametrize(
    ("geometry", "line"), [("resize", "without keeping the aspect ratio"), ("center_crop", "centre-cropped")]
)
def test_the_limitations_describe_the_saved_eval_geometry(tmp_path: Path, geometry: str, line: str):
    results = tiny_results()
    results["dataset"]["eval_geometry"] = geometry
    text = render(tmp_path, results).card.text
    other = {"resize": "centre-cropped", "center_crop": "without keeping the aspect ratio"}[geometry]
    assert line in text and other not in text


def test_a_run_stopped_by_max_steps_shows_the_epochs_it_ran(tmp_path: Path):
    results = tiny_results()
    results["training"]["max_steps"] = 5
    results["metrics"]["epoch"] = 0.2173913
    text = render(tmp_path, results).card.text
    assert "| Epochs | 0.217 (stopped by max_steps) |" in text
    assert "| Maximum steps | 5 |" in text


def test_a_changed_preset_is_described_with_its_changes(tmp_path: Path):
    card = render(tmp_path, tiny_results(preset="vit-lite-7/4")).card
    row = next(line for line in card.text.splitlines() if line.startswith("| Architecture |"))
    assert "(preset `vit-lite-7/4` with " in row
    for change in ("`patch_size=8`", "`num_hidden_layers=3`", "`hidden_size=32`", "`num_attention_heads=2`"):
        assert change in row
    assert "`image_size=" not in row  # 32, as in the preset
    assert not any(tag.startswith("preset-") for tag in card.data.tags)


def test_an_unchanged_preset_is_tagged():
    config = LapeViTConfig.from_preset("cct-7/3x1", num_labels=3, id2label=dict(enumerate(LABELS)))
    card_data = build_card_data(config, tiny_results(preset="cct-7/3x1"), REPO_ID, CardSource())
    assert "preset-cct-7-3x1" in card_data.tags


def test_the_body_describes_the_checkpoint_from_its_config(tmp_path: Path):
    plan = render(tmp_path, tiny_results(pe_join="lape_shared"), pe_join="lape_shared")
    text = plan.card.text
    parameters = LapeViTForImageClassification.from_pretrained(plan.model.path).num_parameters()
    assert f"| Parameters | {parameters:,} |" in text
    assert "| Encoder | 3 layers, width 32, 2 heads, MLP 64, `patch` tokenizer (patch 8), `cls` pooling |" in text
    assert "| Classes | 3: `cat`, `dog`, `bird` |" in text
    assert '`pe_join="lape_shared"`' in text and "normalizes the raw position embedding" in text
    assert "pe-join-lape_shared" in plan.card.data.tags


def test_the_card_cites_the_paper(tmp_path: Path):
    text = render(tmp_path, tiny_results()).card.text
    assert "author    = {Yu, Runyi and" in text
    assert "LaPE: Layer-adaptive Position Embedding for Vision Transformers" in text
    assert "International Conference on Computer Vision (ICCV)" in text and "2212.05262" in text


# ---------------------------------------------------------------------------------------------------------------------
# Per-model sources
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source_file", sorted(MODEL_CARDS.glob("*.yaml")), ids=lambda path: path.name)
def test_every_card_source_in_model_cards_renders(tmp_path: Path, source_file: Path):
    source = CardSource.from_yaml(source_file)
    card = render(tmp_path, tiny_results(), source=source).card
    assert card.data.model_name == source.title
    assert f"# {source.title}" in card.text
    assert all(limitation in card.text for limitation in source.limitations)
    assert set(source.tags) <= set(card.data.tags)


def test_the_digits_source_describes_the_demo(tmp_path: Path):
    source = CardSource.from_yaml(MODEL_CARDS / "lape-vit-digits.yaml")
    text = render(tmp_path, tiny_results(), source=source).card.text
    assert "Trained on the scikit-learn digits (8x8 handwritten digits). The set has 1,797" in text
    assert "### Intended uses" in text


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("title: A\nlicence: mit\n", "unknown key(s) ['licence']"),
        ("tags: lape\n", "tags must be a list of strings, got 'lape'"),
        ("title: [a, b]\n", "title must be a string"),
        ("- a list\n", "must be a YAML mapping, got list"),
    ],
)
def test_a_bad_card_source_is_refused_naming_the_key(tmp_path: Path, yaml_text: str, message: str):
    source_file = tmp_path / "source.yaml"
    source_file.write_text(yaml_text)
    with pytest.raises(CardSourceError) as refusal:
        CardSource.from_yaml(source_file)
    assert message in str(refusal.value)


# ---------------------------------------------------------------------------------------------------------------------
# The usage code, run as written
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The card's repository in an offline Hub cache, an `image.jpg` in the working directory, and the prediction
    for it computed directly from the model directory (processor + model + softmax)."""
    plan = render(tmp_path, tiny_results())
    cache = tmp_path / "hub"
    install_in_hub_cache(plan.repository_files(), REPO_ID, cache)
    work = tmp_path / "work"
    work.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, size=(28, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(work / "image.jpg")
    monkeypatch.chdir(work)

    model = LapeViTForImageClassification.from_pretrained(plan.model.path).eval()
    processor = ViTImageProcessor.from_pretrained(plan.model.path)
    with torch.no_grad():
        logits = model(**processor(images=Image.open(work / "image.jpg"), return_tensors="pt")).logits[0]
    probabilities = logits.softmax(-1)
    order = probabilities.argsort(descending=True).tolist()
    expected = [(LABELS[index], probabilities[index].item()) for index in order]
    return plan, cache, work, expected


def test_the_card_has_one_usage_block_with_lape_hf_and_one_with_remote_code(published):
    plan, *_ = published
    with_package, remote_code = usage_code_blocks(plan.card)
    assert "import lape_hf" in with_package and "trust_remote_code" not in with_package
    assert "lape_hf" not in remote_code and "trust_remote_code=True" in remote_code
    assert all(f'"{REPO_ID}"' in block for block in (with_package, remote_code))


def test_the_usage_code_with_lape_hf_runs_as_written(published, monkeypatch: pytest.MonkeyPatch):
    plan, cache, _, expected = published
    go_offline(monkeypatch, cache)
    with_package = usage_code_blocks(plan.card)[0]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(with_package, "card usage (lape_hf)", "exec"), {})
    predictions = ast.literal_eval(printed.getvalue().strip())
    assert [p["label"] for p in predictions] == [label for label, _ in expected]
    assert [p["score"] for p in predictions] == pytest.approx([score for _, score in expected], abs=1e-6)


def test_the_usage_code_with_remote_code_runs_as_written_without_lape_hf(published):
    plan, cache, work, expected = published
    remote_code = usage_code_blocks(plan.card)[1]
    completed = run_without_lape_hf(remote_code, cwd=work, hub_cache=cache)
    tokens = (32 // 8) ** 2 + 1  # patches + class token
    assert completed.stdout.splitlines() == [expected[0][0], f"3 layers, PE shape (1, {tokens}, 32)"]
