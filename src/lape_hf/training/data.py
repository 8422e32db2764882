"""Image-classification data for training LapeViT: the bundled digits, Fashion-MNIST, image folders and Hub datasets.

Every source ends as the same two `datasets.Dataset` splits with a `pixel_values` column (uint8 RGB images at the
model's resolution, `(3, height, width)`) and a `labels` column (`ClassLabel`). Images are decoded to RGB once by
the one decode rule of `lape_hf.images` (what `pipeline()` does with a file) and resized by the model's own image
processor, so training and evaluation see the pixels a user's prediction sees; per-sample augmentation then works
on small uint8 tensors and stays cheap.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from datasets import Array3D, ClassLabel, Dataset, DatasetDict, Features, Image, Value, load_dataset
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
from transformers import BaseImageProcessor, ViTImageProcessor

from ..images import UNREADABLE_IMAGE_ERRORS, decode_image
from ..models.lape_vit.image_processing_lape_vit import eval_geometry, output_size
from .fashion_mnist import FASHION_MNIST_DATASET_NAME, load_fashion_mnist_dataset

logger = logging.getLogger(__name__)
SQUASH_CHECK_IMAGES = 16  # train images whose shape is checked before a prepared copy squashes them

DIGITS_DATASET_NAME = "sklearn-digits"
DIGITS_TEST_SIZE = 360  # 20% of the 1797 images, stratified by class
DIGITS_SPLIT_SEED = 0  # fixed: the split is part of the benchmark, not of a training run
IMAGE_COLUMN_CANDIDATES = ("image", "img", "pixel_values")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "fine_label", "class")
EVAL_SPLIT_CANDIDATES = ("validation", "test", "valid", "val")  # the eval split when none is named, first found


@dataclass
class ImageClassificationSplits:
    """The prepared train and eval splits and where they came from (written to `results.json`)."""

    train: Dataset
    eval: Dataset
    label_names: list[str]
    dataset_name: str
    train_split: str
    eval_split: str
    raw_eval: Dataset  # the eval images as loaded (columns "image", "label"): what a user would classify
    data_mode: str = "prepared"  # prepared: uint8 arrays; on_the_fly: train/eval are the encoded splits
    eval_geometry: str = "resize"  # the image processor's (image_processing_lape_vit.eval_geometry)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def load_digits_dataset() -> DatasetDict:
    """scikit-learn's 8x8 handwritten digits (1797 images, classes 0-9) with a fixed, stratified train/test split.

    The images ship inside the scikit-learn wheel, so this works offline. Pixel values 0..16 become grayscale
    0..255 ("L" mode PIL images); the image processor converts them to RGB like any other grayscale image.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    features = Features({"image": Image(), "label": ClassLabel(names=[str(digit) for digit in range(10)])})
    dataset = Dataset.from_dict(
        {"image": [PIL.Image.fromarray(image, mode="L") for image in pixels], "label": digits.target.tolist()},
        features=features,
    )
    return dataset.train_test_split(test_size=DIGITS_TEST_SIZE, stratify_by_column="label", seed=DIGITS_SPLIT_SEED)


def load_raw_splits(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_dir: str | None = None,
    validation_dir: str | None = None,
    cache_dir: str | None = None,
    data_dir: str | None = None,
) -> tuple[DatasetDict, str]:
    """The raw dataset (images still encoded) and its name: the digits by default, Fashion-MNIST's IDX files (from
    `data_dir` or the system package's directory), an image folder or a Hub id."""
    if data_dir is not None and dataset_name != FASHION_MNIST_DATASET_NAME:
        raise ValueError(
            f"data_dir={data_dir!r} is only read with dataset_name={FASHION_MNIST_DATASET_NAME!r} "
            f"(got dataset_name={dataset_name!r})."
        )
    if dataset_name is not None and (train_dir is not None or validation_dir is not None):
        raise ValueError(
            f"Pass either dataset_name ({dataset_name!r}) or train_dir/validation_dir ({train_dir!r}, "
            f"{validation_dir!r}), not both."
        )
    if train_dir is not None or validation_dir is not None:
        if train_dir is None:
            raise ValueError(f"validation_dir={validation_dir!r} needs a train_dir too.")
        data_files = {}
        for split, directory in (("train", train_dir), ("validation", validation_dir)):
            if directory is None:
                continue
            if not os.path.isdir(directory):
                raise ValueError(f"{split} directory {directory!r} does not exist or is not a directory.")
            data_files[split] = os.path.join(directory, "**")
        check_class_folders(train_dir, validation_dir)
        return load_dataset("imagefolder", data_files=data_files, cache_dir=cache_dir), "imagefolder"
    if dataset_name is None or dataset_name == DIGITS_DATASET_NAME:
        return load_digits_dataset(), DIGITS_DATASET_NAME
    if dataset_name == FASHION_MNIST_DATASET_NAME:
        return load_fashion_mnist_dataset(data_dir), FASHION_MNIST_DATASET_NAME
    return load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir), dataset_name


def class_folders(directory: str) -> dict[str, int]:
    """The class folders of an image folder (its sub-folders) and how many image files each holds (recursively)."""
    extensions = {extension.lower() for extension in ImageFolder.EXTENSIONS}
    counts = {}
    for entry in sorted(os.scandir(directory), key=lambda entry: entry.name):
        if entry.is_dir() and not entry.name.startswith("."):
            counts[entry.name] = sum(
                os.path.splitext(name)[1].lower() in extensions for _, _, names in os.walk(entry.path) for name in names
            )
    return counts


def check_class_folders(train_dir: str, validation_dir: str | None = None) -> None:
    """The label set of image folders is the train folder's non-empty class folders: fewer than two, or a class
    that only the validation folder has (it would become an untrained class), is an error naming the folders."""
    layout = "one folder per class holding its images (train_dir/<class>/<image>)"
    counts = class_folders(train_dir)
    classes = [name for name, count in counts.items() if count]
    if not classes:
        empty = f"its class folders {list(counts)} hold no images" if counts else "it has no class folders"
        if any(entry.is_file() for entry in os.scandir(train_dir)):
            empty += " (images directly in it have no class)"
        raise ValueError(f"train_dir {train_dir!r} has no images to train on: {empty}; it needs {layout}.")
    if len(classes) < 2:
        raise ValueError(
            f"train_dir {train_dir!r} has {len(classes)} class folder with images ({classes}); a classifier needs at "
            f"least two: {layout}."
        )
    if validation_dir is not None:
        untrained = sorted({name for name, count in class_folders(validation_dir).items() if count} - set(classes))
        if untrained:
            raise ValueError(
                f"validation_dir {validation_dir!r} has class folder(s) {untrained} with no images in train_dir "
                f"{train_dir!r} (whose classes are {classes}); every class evaluated on must be trained on."
            )


def _pick_column(dataset: Dataset, requested: str | None, candidates: Sequence[str], role: str) -> str:
    if requested is not None:
        if requested not in dataset.column_names:
            raise ValueError(
                f"{role} column {requested!r} is not in the dataset; its columns are {dataset.column_names}."
            )
        return requested
    for name in candidates:
        if name in dataset.column_names:
            return name
    raise ValueError(
        f"Cannot find the {role} column among {dataset.column_names} (tried {list(candidates)}); "
        f"name it with --{role}_column_name."
    )


def open_images(split: Dataset, image_column: str = "image") -> list[PIL.Image.Image | None]:
    """The split's images decoded by the one rule (`lape_hf.images.decode_image`), `None` where an image does not
    decode (reported in a warning by path)."""
    split = undecoded(split, image_column)
    images: list[PIL.Image.Image | None] = []
    for row, value in enumerate(split[image_column]):
        try:
            images.append(decode_image(value))
        except UNREADABLE_IMAGE_ERRORS as error:
            logger.warning("Cannot decode image %s: %s", _describe(value, row), error)
            images.append(None)
    return images


def undecoded(split: Dataset, image_column: str) -> Dataset:
    """The split with its image cells as stored (`{"bytes", "path"}`): decoding is ours, one image at a time."""
    if isinstance(split.features[image_column], Image):
        return split.cast_column(image_column, Image(decode=False))
    return split


def processor_pixels(images: list[PIL.Image.Image], image_processor: BaseImageProcessor) -> torch.Tensor:
    """The processor's own geometry (resize, and centre crop if it has one) without rescale/normalize, as uint8: what
    it would normalize at inference (the prepared path stores the same)."""
    pixels = image_processor(images=images, do_rescale=False, do_normalize=False, return_tensors="pt")["pixel_values"]
    return pixels if pixels.dtype == torch.uint8 else pixels.round().clamp(0, 255).to(torch.uint8)


def _describe(value: object, row: int) -> str:
    path = value.get("path") if isinstance(value, dict) else None
    return f"{path!r} (row {row})" if path else f"row {row}"


def _decode_and_resize(
    batch: dict[str, list],
    indices: list[int],
    image_column: str,
    label_column: str,
    image_processor: BaseImageProcessor,
    height: int,
    width: int,
) -> dict[str, list]:
    """One batched `map` step: decode (the one rule) and resize each image; record failures instead of raising."""
    images, errors = [], []
    for value, row in zip(batch[image_column], indices, strict=True):
        try:
            images.append(decode_image(value))
            errors.append("")
        except UNREADABLE_IMAGE_ERRORS as error:
            images.append(PIL.Image.new("RGB", (width, height)))
            errors.append(f"{_describe(value, row)}: {type(error).__name__}: {error}")
    # For the RGB image that pipeline() makes of a file, exactly what the processor would normalize at inference.
    pixels = processor_pixels(images, image_processor)
    return {"pixel_values": pixels.numpy(), "labels": batch[label_column], "decode_error": errors}


def prepare_split(
    dataset: Dataset,
    image_processor: BaseImageProcessor,
    split_name: str,
    image_column: str,
    label_column: str,
    label_feature: ClassLabel,
    skip_corrupt_images: bool = False,
    num_proc: int | None = None,
) -> Dataset:
    """Decode, RGB-convert and resize a split once; check its labels; drop or report images that do not decode.

    Returns a dataset with exactly `pixel_values` (`Array3D` uint8, `(3, height, width)`) and `labels`
    (`label_feature`); read it with `with_format("numpy", dtype=np.uint8)` to keep the uint8 type.
    """
    height, width = output_size(image_processor)
    check_labels(dataset[label_column], label_feature, split_name)
    dataset = undecoded(dataset, image_column)
    features = Features(
        {
            "pixel_values": Array3D(shape=(3, height, width), dtype="uint8"),
            "labels": label_feature,
            "decode_error": Value("string"),
        }
    )
    prepared = dataset.map(
        _decode_and_resize,
        batched=True,
        batch_size=256,
        with_indices=True,
        remove_columns=dataset.column_names,
        features=features,
        num_proc=num_proc,
        fn_kwargs=dict(
            image_column=image_column,
            label_column=label_column,
            image_processor=image_processor,
            height=height,
            width=width,
        ),
        desc=f"Decoding and resizing {split_name} images to {height}x{width}",
    )
    errors = [error for error in prepared["decode_error"] if error]
    if errors:
        listing = "\n  ".join(errors[:20]) + ("\n  ..." if len(errors) > 20 else "")
        if not skip_corrupt_images:
            raise ValueError(
                f"{len(errors)} image(s) in split {split_name!r} cannot be decoded:\n  {listing}\n"
                "Fix or remove them, or pass --skip_corrupt_images to train without them."
            )
        logger.warning(
            "Skipping %d image(s) of split %r that cannot be decoded:\n  %s", len(errors), split_name, listing
        )
        prepared = prepared.filter(lambda error: not error, input_columns="decode_error")
    return prepared.remove_columns("decode_error")


def check_labels(labels: Sequence[int], label_feature: ClassLabel, split_name: str) -> None:
    """Fail early, naming the rows and values, when a label is outside the label set (e.g. -1 for "unlabelled")."""
    values = np.asarray(labels, dtype=np.int64)
    bad_rows = np.flatnonzero((values < 0) | (values >= label_feature.num_classes))
    if bad_rows.size:
        shown = ", ".join(f"row {row}: {values[row]}" for row in bad_rows[:10])
        allowed = f"0..{label_feature.num_classes - 1} ({label_feature.names})"
        raise ValueError(
            f"Split {split_name!r} has {bad_rows.size} label(s) outside the label set {allowed}: "
            f"{shown}{', ...' if bad_rows.size > 10 else ''}."
        )


def label_feature_of(train: Dataset, label_column: str) -> ClassLabel:
    """The label set of a train split: its `ClassLabel`, or for plain int/str labels the one that `datasets`'
    `class_encode_column` makes (the sorted distinct values as strings). Read without decoding any image."""
    feature = train.features[label_column]
    if isinstance(feature, ClassLabel):
        return feature
    return train.select_columns([label_column]).class_encode_column(label_column).features[label_column]


def encode_labels(split: Dataset, label_column: str, label_feature: ClassLabel, split_name: str) -> Dataset:
    """`split` with its label column cast to `label_feature`: plain values by name (`ClassLabel.str2int`, through
    `cast_column`), a `ClassLabel` column only when it has the same names."""
    feature = split.features[label_column]
    if isinstance(feature, ClassLabel):
        if feature.names != label_feature.names:
            raise ValueError(
                f"The {split_name!r} split's labels {feature.names} differ from the train split's "
                f"{label_feature.names}."
            )
        return split
    unknown = sorted({str(value) for value in split.unique(label_column)} - set(label_feature.names))
    if unknown:
        raise ValueError(
            f"The {split_name!r} split has labels that are not in the train split's label set "
            f"{label_feature.names}: {unknown[:10]}."
        )
    return split.cast_column(label_column, Value("string")).cast_column(label_column, label_feature)


def resolve_splits(
    raw: DatasetDict,
    train_split: str = "train",
    eval_split: str | None = None,
    train_val_split: float = 0.15,
    seed: int = 0,
) -> tuple[Dataset, Dataset, str, str]:
    """The train and eval splits; without an eval split, a stratified `train_val_split` fraction of train."""
    if train_split not in raw:
        raise ValueError(f"train_split={train_split!r} is not in the dataset; its splits are {list(raw)}.")
    if eval_split is None:
        eval_split = next((name for name in EVAL_SPLIT_CANDIDATES if name in raw), None)
    if eval_split is not None:
        if eval_split not in raw:
            raise ValueError(f"eval_split={eval_split!r} is not in the dataset; its splits are {list(raw)}.")
        return raw[train_split], raw[eval_split], train_split, eval_split
    if not 0.0 < train_val_split < 1.0:
        raise ValueError(f"train_val_split={train_val_split!r} must be in (0, 1) when the dataset has no eval split.")
    label_column = next((name for name in LABEL_COLUMN_CANDIDATES if name in raw[train_split].column_names), None)
    stratify = (
        label_column if label_column and isinstance(raw[train_split].features[label_column], ClassLabel) else None
    )
    split = raw[train_split].train_test_split(test_size=train_val_split, stratify_by_column=stratify, seed=seed)
    held_out = f"{train_split}[held-out {train_val_split:g}]"
    return split["train"], split["test"], f"{train_split}[rest]", held_out


def _standard_columns(split: Dataset, image_column: str, label_column: str) -> Dataset:
    split = split.select_columns([image_column, label_column])
    renames = {old: new for old, new in ((image_column, "image"), (label_column, "label")) if old != new}
    return split.rename_columns(renames) if renames else split


def label_names_of(raw: DatasetDict, train_split: str = "train", label_column_name: str | None = None) -> list[str]:
    """The label names training will use (the model is built before the data is prepared): those of
    `label_feature_of` on the whole train split, as `prepare_splits` uses them."""
    if train_split not in raw:
        raise ValueError(f"train_split={train_split!r} is not in the dataset; its splits are {list(raw)}.")
    column = _pick_column(raw[train_split], label_column_name, LABEL_COLUMN_CANDIDATES, "label")
    return list(label_feature_of(raw[train_split], column).names)


def prepare_splits(
    raw: DatasetDict,
    dataset_name: str,
    image_processor: BaseImageProcessor,
    train_split: str = "train",
    eval_split: str | None = None,
    train_val_split: float = 0.15,
    image_column_name: str | None = None,
    label_column_name: str | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    skip_corrupt_images: bool = False,
    preprocessing_num_workers: int | None = None,
    seed: int = 0,
    data_mode: str = "prepared",
) -> ImageClassificationSplits:
    """Pick the train/eval splits of `raw` and prepare both for `image_processor`'s resolution (see module doc), or
    with `data_mode` "on_the_fly" (or "auto" choosing it, `data_modes.choose_data_mode`) keep them encoded."""
    train, evaluation, train_split_name, eval_split_name = resolve_splits(
        raw, train_split, eval_split, train_val_split, seed
    )
    image_column, label_column = _split_columns(
        train, evaluation, eval_split_name, image_column_name, label_column_name
    )
    train = _subset(train, "max_train_samples", max_train_samples, seed)
    evaluation = _subset(evaluation, "max_eval_samples", max_eval_samples, seed)
    # The label set of the whole train split, as `label_names_of` gave it to the model (a subset or a held-out
    # fraction may lack a class).
    label_feature = label_feature_of(raw[train_split], label_column)
    train = encode_labels(train, label_column, label_feature, train_split_name)
    evaluation = encode_labels(evaluation, label_column, label_feature, eval_split_name)
    data_mode = _resolve_data_mode(data_mode, train, evaluation, image_column, image_processor)
    raw_eval = _standard_columns(evaluation, image_column, label_column)
    train, evaluation = _training_datasets(
        data_mode,
        ((train, train_split_name), (evaluation, eval_split_name)),
        image_processor,
        image_column,
        label_column,
        label_feature,
        skip_corrupt_images,
        preprocessing_num_workers,
    )
    return ImageClassificationSplits(
        train=train,
        eval=evaluation,
        label_names=list(label_feature.names),
        dataset_name=dataset_name,
        train_split=train_split_name,
        eval_split=eval_split_name,
        raw_eval=raw_eval,
        data_mode=data_mode,
        eval_geometry=eval_geometry(image_processor),
    )


def _training_datasets(
    data_mode: str,
    named_splits: tuple[tuple[Dataset, str], tuple[Dataset, str]],
    image_processor: BaseImageProcessor,
    image_column: str,
    label_column: str,
    label_feature: ClassLabel,
    skip_corrupt_images: bool,
    num_proc: int | None,
) -> tuple[Dataset, Dataset]:
    """The train and eval datasets the trainer reads: prepared at the processor's resolution, or for "on_the_fly"
    the encoded images in standard columns (their labels checked here, as `prepare_split` checks them)."""
    if data_mode == "on_the_fly":
        for split, split_name in named_splits:
            check_labels(split[label_column], label_feature, split_name)
        train, evaluation = (_standard_columns(split, image_column, label_column) for split, _ in named_splits)
        return train, evaluation
    if eval_geometry(image_processor) == "center_crop":
        _warn_if_squashed(named_splits[0][0], image_column)
    train, evaluation = (
        prepare_split(
            split,
            processor,
            split_name,
            image_column,
            label_column,
            label_feature,
            skip_corrupt_images=skip_corrupt_images,
            num_proc=num_proc,
        )
        for (split, split_name), processor in zip(
            named_splits, (whole_image_processor(image_processor), image_processor), strict=True
        )
    )
    return train, evaluation


def _warn_if_squashed(train: Dataset, image_column: str) -> None:
    """Warn when the train split's first images are not square: the prepared copy squashes them (see
    `whole_image_processor`) while the centre-crop eval keeps the aspect ratio."""
    sample = open_images(train.select(range(min(SQUASH_CHECK_IMAGES, len(train)))), image_column)
    sizes = [image.size for image in sample if image is not None and image.width != image.height]
    if sizes:
        width, height = sizes[0]
        logger.warning(
            "data_mode='prepared' stores each train image resized to a square, which squashes non-square images "
            "(%d of the first %d, e.g. %dx%d) while the centre-crop evaluation keeps their aspect ratio; "
            "--data_mode on_the_fly crops from the original image instead.",
            len(sizes),
            len(sample),
            width,
            height,
        )


def whole_image_processor(image_processor: BaseImageProcessor) -> BaseImageProcessor:
    """The processor whose output the prepared train split stores: the whole image resized to the model's resolution.

    With the centre-crop eval geometry the processor cuts off the image's border; training's random crops must be
    able to see it (DeiT crops the original image), so only the eval split is stored in the eval geometry. A stored
    square copy of a non-square image loses either its border or its aspect ratio; this one keeps the border and
    squashes (a warning says so; `auto` decodes large natural-image sets on the fly, from the original)."""
    if eval_geometry(image_processor) != "center_crop":
        return image_processor
    height, width = output_size(image_processor)
    return ViTImageProcessor(
        size={"height": height, "width": width}, resample=image_processor.resample, do_convert_rgb=True
    )


def _split_columns(
    train: Dataset,
    evaluation: Dataset,
    eval_split_name: str,
    image_column_name: str | None,
    label_column_name: str | None,
) -> tuple[str, str]:
    """The image and label columns, picked in the train split; the eval split must have them too."""
    image_column = _pick_column(train, image_column_name, IMAGE_COLUMN_CANDIDATES, "image")
    label_column = _pick_column(train, label_column_name, LABEL_COLUMN_CANDIDATES, "label")
    missing = [column for column in (image_column, label_column) if column not in evaluation.column_names]
    if missing:
        raise ValueError(
            f"Split {eval_split_name!r} has no column(s) {missing}; its columns are {evaluation.column_names}."
        )
    return image_column, label_column


def _subset(split: Dataset, option: str, max_samples: int | None, seed: int) -> Dataset:
    """A seeded random `max_samples` rows of `split` (all of it when it is smaller or `max_samples` is None)."""
    if max_samples is None:
        return split
    if max_samples < 1:
        raise ValueError(f"{option}={max_samples!r} must be at least 1 (or not given, for the whole split).")
    return split.shuffle(seed=seed).select(range(min(max_samples, len(split))))


def _resolve_data_mode(
    requested: str, train: Dataset, evaluation: Dataset, image_column: str, image_processor: BaseImageProcessor
) -> str:
    """`data_modes.choose_data_mode` from the splits' row counts, encoded size and free disk, said in the log."""
    from .data_modes import choose_data_mode, encoded_bytes, free_disk_bytes

    if requested == "streaming":
        raise ValueError("data_mode='streaming' reads an IterableDataset: load it with lape_hf.training.streaming.")
    height, width = output_size(image_processor)
    mode = choose_data_mode(
        requested,
        len(train) + len(evaluation),
        height,
        width,
        source_bytes=encoded_bytes(train, image_column) + encoded_bytes(evaluation, image_column),
        free_bytes=free_disk_bytes(train),
    )
    logger.info("Data mode: %s%s", mode, " (chosen automatically)" if requested == "auto" else "")
    return mode
