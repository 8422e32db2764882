"""Data loading and preparation: the bundled digits, image folders, Hub-style datasets, and bad data (corrupt files,
grayscale/RGBA images, labels outside the label set)."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import tiny_config
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from sklearn.datasets import load_digits

from lape_hf.models.lape_vit.image_processing_lape_vit import build_image_processor
from lape_hf.training.data import (
    DIGITS_DATASET_NAME,
    label_names_of,
    load_digits_dataset,
    load_raw_splits,
    prepare_splits,
)
from lape_hf.training.transforms import normalize_transform


def processor(image_size: int = 16):
    return build_image_processor(tiny_config(image_size=image_size, patch_size=4))


def write_image_folder(root: Path, classes: dict[str, list[PIL.Image.Image]]) -> Path:
    for name, images in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images):
            image.save(root / name / f"{index}.png")
    return root


def random_image(seed: int, size=(12, 10), mode: str = "RGB") -> PIL.Image.Image:
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    return PIL.Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode)


def test_digits_are_the_sklearn_images_with_a_fixed_stratified_split():
    digits = load_digits_dataset()
    assert {name: len(split) for name, split in digits.items()} == {"train": 1437, "test": 360}
    assert isinstance(digits["train"].features["image"], Image)
    assert digits["train"].features["label"] == ClassLabel(names=[str(digit) for digit in range(10)])
    # Stratified: every class is in the test split in proportion (the digits have 174 to 183 images per class).
    test_counts = Counter(digits["test"]["label"])
    assert set(test_counts) == set(range(10)) and min(test_counts.values()) >= 34 and max(test_counts.values()) <= 38
    # Fixed: loading again gives the same split, and the images are sklearn's pixels scaled from 0..16 to 0..255.
    assert list(load_digits_dataset()["test"]["label"]) == list(digits["test"]["label"])
    sklearn_images = load_digits().images
    image = digits["test"][0]["image"]
    assert image.mode == "L" and image.size == (8, 8)
    scaled = np.rint(sklearn_images * 255 / 16).astype(np.uint8)
    matches = [index for index in range(len(scaled)) if np.array_equal(scaled[index], np.asarray(image))]
    assert matches, "the test image is not one of sklearn's digits"


def test_default_source_is_the_digits():
    raw, name = load_raw_splits()
    assert name == DIGITS_DATASET_NAME and set(raw) == {"train", "test"}
    assert label_names_of(raw) == [str(digit) for digit in range(10)]


def test_prepared_pixels_are_what_the_image_processor_makes(tmp_path):
    """Decoded once at the model's resolution; rescale+normalize then gives the processor's output exactly."""
    images = {
        "a": [random_image(0, (12, 10), "RGB"), random_image(1, (7, 9), "L")],
        "b": [random_image(2, mode="RGBA")],
    }
    root = write_image_folder(tmp_path / "train", images)
    raw, name = load_raw_splits(train_dir=str(root), validation_dir=str(root))
    image_processor = processor(16)
    data = prepare_splits(raw, name, image_processor)
    assert name == "imagefolder" and data.label_names == ["a", "b"] and data.eval_split == "validation"
    assert data.train.column_names == ["pixel_values", "labels"]
    pixels = torch.as_tensor(np.asarray(data.train.with_format("numpy", dtype=np.uint8)["pixel_values"]))
    assert pixels.shape == (3, 3, 16, 16) and pixels.dtype == torch.uint8
    raw_images = [PIL.Image.open(path) for path in sorted((tmp_path / "train").rglob("*.png"))]
    expected = image_processor(raw_images, return_tensors="pt")["pixel_values"]
    normalize = normalize_transform(image_processor)
    torch.testing.assert_close(torch.stack([normalize(image) for image in pixels]), expected, atol=1e-6, rtol=0)


def test_grayscale_and_rgba_images_become_rgb(tmp_path):
    gray = PIL.Image.new("L", (16, 16), 77)
    transparent = PIL.Image.new("RGBA", (16, 16), (10, 200, 30, 0))  # fully transparent: composited on white
    opaque = PIL.Image.new("RGBA", (16, 16), (10, 200, 30, 255))
    root = write_image_folder(tmp_path / "train", {"a": [gray], "b": [transparent], "c": [opaque]})
    raw, name = load_raw_splits(train_dir=str(root), validation_dir=str(root))
    data = prepare_splits(raw, name, processor(16))
    pixels = np.asarray(data.train.with_format("numpy", dtype=np.uint8)["pixel_values"])
    labels = list(data.train.with_format(None)["labels"])
    by_class = {data.label_names[label]: pixels[row] for row, label in enumerate(labels)}
    assert all(image.shape == (3, 16, 16) for image in by_class.values())
    assert (by_class["a"] == 77).all()
    assert (by_class["b"] == 255).all()
    assert (by_class["c"][:, 0, 0] == [10, 200, 30]).all()


@pytest.fixture
def folder_with_a_corrupt_file(tmp_path) -> tuple[Path, Path]:
    root = write_image_folder(tmp_path / "train", {"a": [random_image(0), random_image(1)], "b": [random_image(2)]})
    corrupt = root / "b" / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not image data")
    return root, corrupt


def test_a_corrupt_image_is_an_error_naming_its_path(folder_with_a_corrupt_file):
    root, corrupt = folder_with_a_corrupt_file
    raw, name = load_raw_splits(train_dir=str(root), validation_dir=str(root))
    with pytest.raises(ValueError, match="cannot be decoded") as error:
        prepare_splits(raw, name, processor(16))
    assert str(corrupt) in str(error.value) and "--skip_corrupt_images" in str(error.value)


def test_a_corrupt_image_can_be_skipped_with_a_warning(folder_with_a_corrupt_file, caplog):
    root, corrupt = folder_with_a_corrupt_file
    raw, name = load_raw_splits(train_dir=str(root), validation_dir=str(root))
    with caplog.at_level(logging.WARNING, logger="lape_hf.training.data"):
        data = prepare_splits(raw, name, processor(16), skip_corrupt_images=True)
    assert len(raw["train"]) == 4 and len(data.train) == 3 and len(data.eval) == 3
    assert str(corrupt) in caplog.text and "Skipping 1 image" in caplog.text


def digits_like(labels: list, label_feature=None) -> Dataset:
    features = Features({"image": Image(), "label": label_feature}) if label_feature is not None else None
    images = [PIL.Image.new("L", (8, 8), 10 * index) for index in range(len(labels))]
    return Dataset.from_dict({"image": images, "label": labels}, features=features)


def test_a_label_outside_the_label_set_is_a_clear_error():
    classes = ClassLabel(names=["cat", "dog"])
    raw = DatasetDict(train=digits_like([0, 1, 1], classes), test=digits_like([1, -1, 0], classes))
    with pytest.raises(ValueError, match=r"Split 'test' has 1 label\(s\) outside the label set 0..1") as error:
        prepare_splits(raw, "toy", processor(16))
    assert "row 1: -1" in str(error.value) and "'cat', 'dog'" in str(error.value)


def test_plain_labels_get_the_train_label_set_and_unknown_eval_labels_fail():
    raw = DatasetDict(train=digits_like(["dog", "cat", "dog"]), test=digits_like(["cat", "dog"]))
    assert label_names_of(raw) == ["cat", "dog"]
    data = prepare_splits(raw, "toy", processor(16))
    assert data.label_names == ["cat", "dog"] and list(data.train.with_format(None)["labels"]) == [1, 0, 1]

    raw = DatasetDict(train=digits_like(["dog", "cat"]), test=digits_like(["cat", "bird"]))
    with pytest.raises(ValueError, match=r"not in the train split's label set \['cat', 'dog'\]: \['bird'\]"):
        prepare_splits(raw, "toy", processor(16))


def test_a_local_hub_style_dataset_loads_by_name_with_a_held_out_split(tmp_path):
    """`--dataset_name` goes through `datasets.load_dataset`: here a local directory of parquet files, offline."""
    classes = ClassLabel(names=["x", "y"])
    digits_like([0, 1] * 10, classes).to_parquet(str(tmp_path / "train.parquet"))
    raw, name = load_raw_splits(dataset_name=str(tmp_path))
    assert name == str(tmp_path) and list(raw) == ["train"]
    data = prepare_splits(raw, name, processor(16), train_val_split=0.2)
    assert (len(data.train), len(data.eval)) == (16, 4)
    assert data.eval_split == "train[held-out 0.2]"
    assert Counter(data.eval.with_format(None)["labels"]) == {0: 2, 1: 2}  # stratified by class


def test_conflicting_or_missing_sources_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="either dataset_name"):
        load_raw_splits(dataset_name="org/data", train_dir=str(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        load_raw_splits(train_dir=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="eval_split='dev' is not in the dataset"):
        prepare_splits(load_digits_dataset(), "digits", processor(16), eval_split="dev")
