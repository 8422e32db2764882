"""Fashion-MNIST from IDX files: tiny hand-written files in tmp_path, and the real ones when installed."""

from __future__ import annotations

import gzip
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Image

from lape_hf.training.data import load_raw_splits, resolve_splits
from lape_hf.training.fashion_mnist import (
    DEFAULT_FASHION_MNIST_DIR,
    FASHION_MNIST_FILES,
    FASHION_MNIST_LABELS,
    load_fashion_mnist_dataset,
)


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> None:
    header = struct.pack(">I", magic if magic is not None else 0x0800 | array.ndim)
    header += b"".join(struct.pack(">I", size) for size in array.shape)
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def write_tiny_fashion_mnist(directory: Path, counts=(("train", 6), ("test", 4))) -> dict:
    rng = np.random.default_rng(0)
    written = {}
    for split, count in counts:
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        images_name, labels_name, _ = FASHION_MNIST_FILES[split]
        write_idx(directory / images_name, images)
        write_idx(directory / labels_name, labels)
        written[split] = (images, labels)
    return written


def test_loaded_splits_hold_exactly_the_pixels_and_labels_written(tmp_path):
    written = write_tiny_fashion_mnist(tmp_path)
    dataset = load_fashion_mnist_dataset(tmp_path, check_counts=False)
    assert list(dataset) == ["train", "test"]
    for split, (images, labels) in written.items():
        assert len(dataset[split]) == len(labels)
        assert isinstance(dataset[split].features["image"], Image)
        assert dataset[split].features["label"] == ClassLabel(names=FASHION_MNIST_LABELS)
        assert dataset[split]["label"] == labels.tolist()
        for row, image in enumerate(dataset[split]["image"]):
            assert image.mode == "L" and image.size == (28, 28)
            np.testing.assert_array_equal(np.asarray(image), images[row])


def test_official_counts_are_checked_unless_asked_not_to(tmp_path):
    write_tiny_fashion_mnist(tmp_path)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: 6 images, expected 60000"):
        load_fashion_mnist_dataset(tmp_path)


def test_a_bad_magic_number_names_the_file(tmp_path):
    write_tiny_fashion_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(4, dtype=np.uint8), magic=0x0803)
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz: magic number 0x00000803, expected 0x00000801"):
        load_fashion_mnist_dataset(tmp_path, check_counts=False)


def test_a_truncated_file_and_mismatched_counts_are_clear_errors(tmp_path):
    write_tiny_fashion_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as file:
        file.write(struct.pack(">IIII", 0x0803, 6, 28, 28) + bytes(100))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: the header announces shape \(6, 28, 28\)"):
        load_fashion_mnist_dataset(tmp_path, check_counts=False)
    write_idx(path, np.zeros((5, 28, 28), dtype=np.uint8))
    with pytest.raises(ValueError, match="5 images but .* 6 labels"):
        load_fashion_mnist_dataset(tmp_path, check_counts=False)


def test_a_missing_directory_says_how_to_install_the_files(tmp_path):
    with pytest.raises(ValueError, match=r"apt-get install dataset-fashion-mnist.*--data_dir"):
        load_fashion_mnist_dataset(tmp_path / "nowhere")


def test_dataset_name_fashion_mnist_evaluates_on_the_official_test_split(tmp_path):
    write_tiny_fashion_mnist(tmp_path)
    with pytest.raises(ValueError, match="expected 60000"):  # load_raw_splits checks the official sizes
        load_raw_splits("fashion-mnist", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="only read with dataset_name='fashion-mnist'"):
        load_raw_splits(None, data_dir=str(tmp_path))
    raw = load_fashion_mnist_dataset(tmp_path, check_counts=False)
    train, evaluation, train_name, eval_name = resolve_splits(raw)
    assert (train_name, eval_name, len(train), len(evaluation)) == ("train", "test", 6, 4)


@pytest.mark.slow
@pytest.mark.skipif(
    not Path(DEFAULT_FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist",
)
def test_the_real_files_are_the_official_balanced_split():
    raw, name = load_raw_splits("fashion-mnist")
    assert name == "fashion-mnist"
    assert {split: len(raw[split]) for split in raw} == {"train": 60_000, "test": 10_000}
    assert Counter(raw["train"]["label"]) == {label: 6000 for label in range(10)}
    assert Counter(raw["test"]["label"]) == {label: 1000 for label in range(10)}
    image = raw["test"][0]["image"]
    assert image.mode == "L" and image.size == (28, 28)
    assert raw["test"].features["label"].names[raw["test"][0]["label"]] == "Ankle boot"  # the first test image
