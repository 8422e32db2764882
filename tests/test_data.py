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
from transformers import pipeline
from transformers.image_utils import load_image

from lape_hf import LapeViTForImageClassification
from lape_hf.images import decode_image
from lape_hf.models.lape_vit.image_processing_lape_vit import build_image_processor
from lape_hf.predict import read_image
from lape_hf.training.data import (
    DIGITS_DATASET_NAME,
    label_feature_of,
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
    # What pipeline() feeds the processor for a file path (transformers' load_image: EXIF orientation, RGB).
    raw_images = [load_image(str(path)) for path in sorted((tmp_path / "train").rglob("*.png"))]
    expected = image_processor(raw_images, return_tensors="pt")["pixel_values"]
    normalize = normalize_transform(image_processor)
    torch.testing.assert_close(torch.stack([normalize(image) for image in pixels]), expected, atol=1e-6, rtol=0)


def test_grayscale_and_rgba_images_become_rgb(tmp_path):
    gray = PIL.Image.new("L", (16, 16), 77)
    transparent = PIL.Image.new("RGBA", (16, 16), (10, 200, 30, 0))  # alpha dropped, as pipeline() does for a file
    opaque = PIL.Image.new("RGBA", (16, 16), (10, 200, 30, 255))
    root = write_image_folder(tmp_path / "train", {"a": [gray], "b": [transparent], "c": [opaque]})
    raw, name = load_raw_splits(train_dir=str(root), validation_dir=str(root))
    data = prepare_splits(raw, name, processor(16))
    pixels = np.asarray(data.train.with_format("numpy", dtype=np.uint8)["pixel_values"])
    labels = list(data.train.with_format(None)["labels"])
    by_class = {data.label_names[label]: pixels[row] for row, label in enumerate(labels)}
    assert all(image.shape == (3, 16, 16) for image in by_class.values())
    assert (by_class["a"] == 77).all()
    assert (by_class["b"][:, 0, 0] == [10, 200, 30]).all()
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


def test_the_label_set_is_the_whole_train_splits_even_for_a_subset():
    """One label set, computed once (as `class_encode_column` does): the model's, and the prepared data's, also when
    the sampled subset lacks a class."""
    raw = DatasetDict(train=digits_like([10, 2, 1, 2]), test=digits_like([1, 10]))
    assert label_feature_of(raw["train"], "label") == ClassLabel(names=["1", "10", "2"])  # sorted as strings
    data = prepare_splits(raw, "toy", processor(16), max_train_samples=1)
    assert data.label_names == label_names_of(raw) == ["1", "10", "2"] and len(data.train) == 1
    assert list(data.eval.with_format(None)["labels"]) == [0, 1]


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


# ---------------------------------------------------------------------------------------------------------------------
# One decode rule for an image file: training, predict.py and pipeline() see the same pixels
# ---------------------------------------------------------------------------------------------------------------------
def gradient(size=(24, 12)) -> np.ndarray:
    """An RGB image that is neither symmetric nor uniform, so a rotation or a lost channel shows."""
    columns, rows = np.meshgrid(np.linspace(0, 255, size[0]), np.linspace(0, 255, size[1]))
    return np.stack([columns, rows, 255 - columns], axis=-1).astype(np.uint8)


def sixteen_bit_values() -> np.ndarray:
    """16-bit gray values over the whole range, most of them above 255."""
    return (gradient()[..., 0].astype(np.int64) * 257 + 100).clip(0, 65535)


def write_unusual_images(root: Path) -> dict[str, Path]:
    """One file per class folder, of the modes and formats that decoders disagree on."""
    rgb = PIL.Image.fromarray(gradient())
    rgba = rgb.copy()
    rgba.putalpha(PIL.Image.fromarray(gradient()[..., 0]))  # alpha from 0 to 255 across the image
    gray_alpha = rgb.convert("L")
    gray_alpha.putalpha(PIL.Image.fromarray(gradient()[..., 1]))
    palette = rgb.convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=16)
    rotated = PIL.Image.fromarray(gradient((24, 12)))
    exif = rotated.getexif()
    exif[0x0112] = 6  # Orientation: the stored image must be turned 90 degrees clockwise to be upright
    frames = [PIL.Image.new("RGB", (12, 12), color) for color in ((200, 30, 40), (10, 220, 90))]
    sixteen_bit = PIL.Image.fromarray(sixteen_bit_values().astype(np.uint16))
    files = {
        "rgba": (rgba, "png", {}),
        "la": (gray_alpha, "png", {}),
        "palette_transparent": (palette, "png", {"transparency": 3}),
        "cmyk": (rgb.convert("CMYK"), "tiff", {}),
        "gray16": (sixteen_bit, "png", {}),
        "exif_rotated": (rotated, "jpg", {"exif": exif}),
        "animated": (frames[0], "gif", {"save_all": True, "append_images": frames[1:], "duration": 100}),
    }
    paths = {}
    for name, (image, extension, options) in files.items():
        (root / name).mkdir(parents=True)
        paths[name] = root / name / f"image.{extension}"
        image.save(paths[name], **options)
    return paths


@pytest.fixture(scope="module")
def unusual_images(tmp_path_factory) -> tuple[dict[str, Path], dict[str, torch.Tensor]]:
    """The files, and each one's pixels as training prepares them (normalized as the eval collator does)."""
    root = tmp_path_factory.mktemp("unusual")
    paths = write_unusual_images(root)
    raw, name = load_raw_splits(train_dir=str(root), validation_dir=str(root))
    image_processor = processor(16)
    data = prepare_splits(raw, name, image_processor)
    pixels = torch.as_tensor(np.asarray(data.eval.with_format("numpy", dtype=np.uint8)["pixel_values"]))
    labels = data.eval.with_format(None)["labels"]
    normalize = normalize_transform(image_processor)
    return paths, {data.label_names[label]: normalize(pixels[row]) for row, label in enumerate(labels)}


UNUSUAL = ["rgba", "la", "palette_transparent", "cmyk", "gray16", "exif_rotated", "animated"]


@pytest.mark.parametrize("kind", UNUSUAL)
def test_training_and_predict_see_the_pixels_pipeline_makes_of_a_file(unusual_images, kind):
    paths, trained = unusual_images
    image_processor = processor(16)
    classifier = pipeline(
        "image-classification",
        model=LapeViTForImageClassification(tiny_config(image_size=16, patch_size=4)),
        image_processor=image_processor,
    )
    predicted = image_processor(read_image(str(paths[kind])), return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(trained[kind], predicted, atol=1e-6, rtol=0)
    if kind != "gray16":  # pipeline() itself clips 16-bit gray (PIL's convert("RGB")); see the next test
        from_path = classifier.preprocess(str(paths[kind]))["pixel_values"][0]
        torch.testing.assert_close(predicted, from_path, atol=1e-6, rtol=0)
    # Given the decoded image instead of the path, pipeline() prepares the same pixels again.
    from_image = classifier.preprocess(read_image(str(paths[kind])))["pixel_values"][0]
    torch.testing.assert_close(predicted, from_image, atol=1e-6, rtol=0)


def test_the_decode_rule_on_each_kind_of_file(unusual_images):
    """Checked against what each file holds, computed independently of PIL's conversions where it matters."""
    paths, _ = unusual_images
    source = gradient()
    # 16-bit gray is scaled (value / 257, rounded), not clipped at 255.
    sixteen = np.asarray(decode_image(paths["gray16"]))
    expected = np.rint(sixteen_bit_values() / 257).astype(np.uint8)
    assert sixteen.shape == (12, 24, 3) and (sixteen == expected[..., None]).all()
    assert (sixteen < 255).mean() > 0.9  # clipping would have made nearly every pixel white
    # RGBA and LA: the colour channels kept, alpha dropped (not composited).
    assert np.array_equal(np.asarray(decode_image(paths["rgba"])), source)
    gray = np.asarray(PIL.Image.fromarray(source).convert("L"))
    assert np.array_equal(np.asarray(decode_image(paths["la"])), np.repeat(gray[..., None], 3, axis=-1))
    # EXIF orientation 6: the 24x12 stored image is upright as 12x24, turned 90 degrees clockwise.
    rotated = decode_image(paths["exif_rotated"])
    assert rotated.size == (12, 24)
    upright = np.rot90(source, k=-1).astype(np.int16)
    assert np.abs(np.asarray(rotated).astype(np.int16) - upright).mean() < 8  # JPEG loss only
    # An animated GIF gives its first frame; CMYK becomes RGB.
    assert (np.asarray(decode_image(paths["animated"])) == [200, 30, 40]).all()
    assert decode_image(paths["cmyk"]).mode == "RGB"
    for path in paths.values():  # bytes and dataset cells decode like the path
        expected = np.asarray(decode_image(path))
        assert np.array_equal(np.asarray(decode_image(path.read_bytes())), expected)
        assert np.array_equal(np.asarray(decode_image({"path": str(path), "bytes": None})), expected)


def test_with_a_centre_crop_eval_the_prepared_train_split_keeps_the_whole_image(tmp_path, caplog):
    """DeiT's eval geometry (crop_pct 0.875) cuts off the border: the eval split is stored so, the train split as the
    whole image resized (bicubic) to the model's resolution, so that training's random crops can reach the border."""
    images = {"a": [random_image(0, (40, 24), "RGB")], "b": [random_image(1, (20, 36), "RGB")]}
    root = write_image_folder(tmp_path / "train", images)
    raw, name = load_raw_splits(train_dir=str(root), validation_dir=str(root))
    image_processor = build_image_processor(tiny_config(image_size=16, patch_size=4), crop_pct=0.875)
    with caplog.at_level(logging.WARNING, logger="lape_hf.training.data"):
        data = prepare_splits(raw, name, image_processor, data_mode="prepared")
    assert "squashes non-square images (2 of the first 2, e.g. " in caplog.text and "on_the_fly" in caplog.text
    originals = [load_image(str(path)) for path in sorted(root.rglob("*.png"))]
    stored = {
        split: np.asarray(dataset.with_format("numpy", dtype=np.uint8)["pixel_values"])
        for split, dataset in (("train", data.train), ("eval", data.eval))
    }
    whole = np.stack([np.asarray(image.resize((16, 16), PIL.Image.Resampling.BICUBIC)) for image in originals])
    assert np.abs(stored["train"].astype(int) - whole.transpose(0, 3, 1, 2)).max() <= 1
    cropped = image_processor(originals, do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(stored["eval"], np.asarray(cropped).round().clip(0, 255).astype(np.uint8))
    assert np.abs(stored["train"].astype(int) - stored["eval"]).mean() > 10  # the two geometries differ


@pytest.mark.parametrize(("crop_pct", "sizes"), [(0.875, [(24, 24), (30, 30)]), (None, [(40, 24), (20, 36)])])
def test_prepared_warns_of_squashing_only_non_square_images_under_a_centre_crop(tmp_path, caplog, crop_pct, sizes):
    """Square images under the centre crop, or any images under a straight resize (which squashes them in eval
    too), are stored as evaluation sees them: no warning."""
    images = {"a": [random_image(0, sizes[0], "RGB")], "b": [random_image(1, sizes[1], "RGB")]}
    root = write_image_folder(tmp_path / "train", images)
    raw, name = load_raw_splits(train_dir=str(root), validation_dir=str(root))
    image_processor = build_image_processor(tiny_config(image_size=16, patch_size=4), crop_pct=crop_pct)
    with caplog.at_level(logging.WARNING, logger="lape_hf.training.data"):
        prepare_splits(raw, name, image_processor, data_mode="prepared")
    assert "squashes" not in caplog.text
