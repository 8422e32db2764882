"""Classifying local images: which files the inputs expand to, batching, top-k, unreadable files reported by path
without stopping the run, and the script's table / JSON / CSV output. Predictions are checked against the model
applied directly (processor + forward + softmax)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_helpers import LABELS, save_tiny_checkpoint
from PIL import Image
from script_loader import load_script
from transformers import ViTImageProcessor

from lape_hf import LapeViTForImageClassification
from lape_hf.predict import classify_images, find_images, load_classifier


def save_image(path: Path, seed: int, size: tuple[int, int] = (24, 20), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("predict") / "model")


@pytest.fixture(scope="module")
def classifier(model_dir: Path):
    return load_classifier(str(model_dir))


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    """Three good images (one grayscale, one RGBA), a file that is not an image and a truncated PNG."""
    good = {
        "a": save_image(tmp_path / "photos" / "a.png", 1),
        "b": save_image(tmp_path / "photos" / "nested" / "b.jpg", 2, mode="L"),
        "c": save_image(tmp_path / "photos" / "c.png", 3, mode="RGBA"),
    }
    (tmp_path / "photos" / "notes.txt").write_text("not an image, ignored in folders")
    corrupt = tmp_path / "bad" / "corrupt.png"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"this is not a PNG")
    truncated = tmp_path / "bad" / "truncated.png"
    truncated.write_bytes(save_image(tmp_path / "full.png", 4, size=(64, 64)).read_bytes()[:200])
    return {**good, "corrupt": corrupt, "truncated": truncated}


def direct_top_k(model_dir: Path, image_path: Path, k: int) -> list[tuple[str, float]]:
    """The prediction computed without the pipeline: processor, forward pass, softmax, sort."""
    model = LapeViTForImageClassification.from_pretrained(model_dir).eval()
    processor = ViTImageProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        logits = model(**processor(images=Image.open(image_path), return_tensors="pt")).logits[0]
    probabilities = logits.softmax(-1)
    return [(LABELS[i], probabilities[i].item()) for i in probabilities.argsort(descending=True)[:k].tolist()]


# ---------------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------------
def test_inputs_expand_to_image_files_in_order_each_once(images: dict[str, Path], tmp_path: Path):
    photos = tmp_path / "photos"
    found = find_images([str(images["c"]), str(photos), str(tmp_path / "bad" / "*.png"), str(images["a"])])
    expected = [images["c"], images["a"], images["b"], images["corrupt"], images["truncated"]]
    assert found == [str(path) for path in expected]  # the folder adds a.png and nested/b.jpg, not notes.txt


def test_a_recursive_glob_and_an_explicit_non_image_name(images: dict[str, Path], tmp_path: Path):
    assert find_images([str(tmp_path / "photos" / "**" / "*.jpg")]) == [str(images["b"])]
    notes = str(tmp_path / "photos" / "notes.txt")
    assert find_images([notes]) == [notes]  # named explicitly: tried, and reported if unreadable


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (["https://example.com/cat.jpg"], "is a URL; only local files"),
        (["hf://datasets/x/y.png"], "is a URL"),
        ([], "No inputs"),
        (["{tmp}/nothing-*.png"], "matches no image files"),
        (["{tmp}/empty"], "contains no images"),
    ],
)
def test_bad_inputs_are_refused_before_loading_the_model(tmp_path: Path, inputs: list[str], message: str):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=message):
        find_images([item.format(tmp=tmp_path) for item in inputs])


# ---------------------------------------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------------------------------------
class RecordingClassifier:
    """Wraps the pipeline and records the batches it is given."""

    def __init__(self, classifier):
        self.classifier = classifier
        self.batches: list[int] = []

    def __call__(self, images, **kwargs):
        self.batches.append(len(images))
        return self.classifier(images, **kwargs)


def test_unreadable_files_are_reported_and_the_rest_are_classified(
    classifier, model_dir: Path, images: dict[str, Path]
):
    order = ["a", "corrupt", "b", "truncated", "c"]
    recording = RecordingClassifier(classifier)
    results = list(classify_images(recording, [str(images[name]) for name in order], top_k=2, batch_size=2))

    assert [result.path for result in results] == [str(images[name]) for name in order]
    assert recording.batches == [1, 1, 1]  # batches of 2 paths, minus the unreadable file in each of the first two
    for name, result in zip(order, results, strict=True):
        if name in ("corrupt", "truncated"):
            assert result.predictions == [] and result.error
        else:
            assert result.error is None
            expected = direct_top_k(model_dir, images[name], k=2)
            assert [p.label for p in result.predictions] == [label for label, _ in expected]
            assert [p.score for p in result.predictions] == pytest.approx([s for _, s in expected], abs=1e-6)
    assert "cannot identify image file" in results[1].error
    assert results[3].error.startswith("OSError")


def test_a_missing_file_is_reported_without_calling_the_model(classifier, tmp_path: Path):
    recording = RecordingClassifier(classifier)
    missing = str(tmp_path / "gone.png")
    (result,) = classify_images(recording, find_images([missing]))
    assert result.path == missing and result.error.startswith("FileNotFoundError")
    assert recording.batches == []


def test_top_k_is_capped_at_the_number_of_classes(classifier, images: dict[str, Path]):
    (result,) = classify_images(classifier, [str(images["a"])], top_k=10)
    assert sorted(p.label for p in result.predictions) == sorted(LABELS)
    assert sum(p.score for p in result.predictions) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(("argument", "value"), [("top_k", 0), ("batch_size", 0), ("top_k", 2.5)])
def test_bad_top_k_or_batch_size_is_refused(classifier, argument: str, value):
    with pytest.raises(ValueError, match=f"{argument}={value!r}"):
        list(classify_images(classifier, ["x.png"], **{argument: value}))


# ---------------------------------------------------------------------------------------------------------------------
# The script
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def predict_script():
    return load_script("predict").main


def test_the_script_prints_a_table_and_reports_unreadable_files(
    predict_script, model_dir: Path, images: dict[str, Path], tmp_path: Path, capsys
):
    status = predict_script(
        ["--model", str(model_dir), str(tmp_path / "photos"), str(images["corrupt"]), "--top_k", "1"]
    )
    output = capsys.readouterr()
    assert status == 1  # one file could not be classified
    assert f"cannot read {images['corrupt']}: UnidentifiedImageError" in output.err
    lines = output.out.splitlines()
    assert lines[0].split() == ["path", "rank", "label", "score"]
    assert len(lines) == 1 + 3 + 1
    label, score = direct_top_k(model_dir, images["a"], k=1)[0]
    assert lines[1].split() == [str(images["a"]), "1", label, f"{score:.4f}"]
    assert lines[4].split()[:3] == [str(images["corrupt"]), "-", "UNREADABLE"]


def test_the_script_writes_json(predict_script, model_dir: Path, images: dict[str, Path], tmp_path: Path):
    output = tmp_path / "out" / "predictions.json"
    inputs = [str(images["a"]), str(images["truncated"])]
    assert predict_script(["--model", str(model_dir), *inputs, "--top_k", "3", "--output", str(output)]) == 1
    records = json.loads(output.read_text())
    assert [record["path"] for record in records] == inputs
    expected = direct_top_k(model_dir, images["a"], k=3)
    assert [p["label"] for p in records[0]["predictions"]] == [label for label, _ in expected]
    assert [p["score"] for p in records[0]["predictions"]] == pytest.approx([s for _, s in expected], abs=1e-6)
    assert records[0]["error"] is None
    assert records[1]["predictions"] == [] and records[1]["error"].startswith("OSError")


def test_the_script_writes_csv(predict_script, model_dir: Path, images: dict[str, Path], tmp_path: Path):
    output = tmp_path / "predictions.csv"
    assert predict_script(["--model", str(model_dir), str(images["b"]), "--top_k", "2", "--output", str(output)]) == 0
    rows = list(csv.DictReader(output.open()))
    expected = direct_top_k(model_dir, images["b"], k=2)
    assert [(row["rank"], row["label"]) for row in rows] == [("1", expected[0][0]), ("2", expected[1][0])]
    assert float(rows[0]["score"]) == pytest.approx(expected[0][1], abs=1e-6)
    assert {row["path"] for row in rows} == {str(images["b"])} and {row["error"] for row in rows} == {""}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--top_k", "0", "x.png"], "--top_k=0 must be >= 1"),
        (["--output", "out.txt", "x.png"], "must end in one of .json, .csv"),
    ],
)
def test_the_script_refuses_bad_options(predict_script, model_dir: Path, capsys, arguments: list[str], message: str):
    with pytest.raises(SystemExit) as exit_info:
        predict_script(["--model", str(model_dir), *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_script_refuses_a_url(predict_script, model_dir: Path, capsys):
    assert predict_script(["--model", str(model_dir), "https://example.com/cat.jpg"]) == 2
    assert "is a URL" in capsys.readouterr().err
