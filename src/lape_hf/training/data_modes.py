"""The three data paths of training, one interface: which one a run takes, and the on-the-fly datasets.

- *prepared*: every image decoded and resized once to the model's resolution, stored as uint8 (`data.prepare_split`);
  cheap per step, but the arrays grow with the dataset (3 x height x width bytes per image).
- *on_the_fly*: images stay encoded in the Arrow table (or as files of an image folder); dataloader workers decode
  each batch and augment from the original resolution (DeiT's `RandomResizedCrop` of 8-100% of the *original* image,
  bicubic). Nothing is written beyond what `datasets` caches for the source.
- *streaming*: a `datasets.IterableDataset` read as it comes (`lape_hf.training.streaming`).

`choose_data_mode` picks prepared when its arrays are small (at most the encoded source, or under a memory budget),
on the fly otherwise, and refuses prepared when the arrays would not fit the disk (estimated before writing anything).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable

import numpy as np
import PIL.Image
import torch
from datasets import Dataset
from transformers import BaseImageProcessor

from ..images import UNREADABLE_IMAGE_ERRORS, decode_image
from ..models.lape_vit.image_processing_lape_vit import output_size
from .data import processor_pixels, undecoded
from .transforms import batch_seed, transform_seeded

logger = logging.getLogger(__name__)

DATA_MODES = ("auto", "prepared", "on_the_fly", "streaming")
# Prepared arrays up to this size are always fine (held in memory by the training dataset, see transforms).
PREPARED_MEMORY_BUDGET_BYTES = 2**30
# The disk must keep this much free beyond the prepared arrays (the Arrow writer's own buffers, other jobs).
DISK_HEADROOM_BYTES = 2**30
ENCODED_SIZE_SAMPLE = 256  # rows whose encoded size is measured to estimate the whole split's


def prepared_bytes(num_rows: int, height: int, width: int) -> int:
    """Bytes of the prepared uint8 arrays: 3 x height x width per image."""
    return num_rows * 3 * height * width


def encoded_bytes(split: Dataset, image_column: str, sample: int = ENCODED_SIZE_SAMPLE) -> int:
    """The split's encoded images' size, estimated from `sample` evenly spaced rows (bytes in the table, or the size
    of the file a row points to), without decoding any image."""
    if len(split) == 0:
        return 0
    split = undecoded(split, image_column)
    rows = np.linspace(0, len(split) - 1, num=min(sample, len(split))).round().astype(int).tolist()
    sizes = []
    for cell in split.select(rows)[image_column]:
        if isinstance(cell, dict) and cell.get("bytes"):
            sizes.append(len(cell["bytes"]))
        elif isinstance(cell, dict) and cell.get("path") and os.path.isfile(cell["path"]):
            sizes.append(os.path.getsize(cell["path"]))
        elif isinstance(cell, PIL.Image.Image):  # an in-memory image: count it as its raw pixels
            sizes.append(len(cell.tobytes()))
    return int(np.mean(sizes) * len(split)) if sizes else 0


def free_disk_bytes(split: Dataset) -> int:
    """Free bytes where `datasets` would write the prepared split (beside the source's cache files)."""
    import datasets

    directory = (
        os.path.dirname(split.cache_files[0]["filename"]) if split.cache_files else datasets.config.HF_DATASETS_CACHE
    )
    while directory and not os.path.isdir(directory):
        directory = os.path.dirname(directory)
    return shutil.disk_usage(directory or ".").free


def choose_data_mode(
    requested: str,
    num_rows: int,
    height: int,
    width: int,
    source_bytes: int,
    free_bytes: int,
    memory_budget: int = PREPARED_MEMORY_BUDGET_BYTES,
) -> str:
    """The data mode of a run: `requested`, or for "auto" prepared when the prepared arrays (`num_rows` images at
    height x width) are at most `source_bytes` or `memory_budget`, else on_the_fly. Refuses prepared arrays that
    would not fit in `free_bytes` of disk (arrays above the memory budget are written to the datasets cache)."""
    if requested not in DATA_MODES:
        raise ValueError(f"data_mode={requested!r} is not one of {', '.join(DATA_MODES)}.")
    needed = prepared_bytes(num_rows, height, width)
    if requested == "auto":
        mode = "prepared" if needed <= max(source_bytes, memory_budget) else "on_the_fly"
        logger.info(
            "data_mode auto -> %s: prepared arrays would be %.1f MB for %d images at %dx%d (encoded source %.1f MB)",
            mode,
            needed / 1e6,
            num_rows,
            height,
            width,
            source_bytes / 1e6,
        )
        return mode
    if requested == "prepared" and needed > memory_budget and needed + DISK_HEADROOM_BYTES > free_bytes:
        raise ValueError(
            f"data_mode='prepared' would write about {needed / 1e9:.1f} GB of uint8 arrays ({num_rows} images x 3 x "
            f"{height} x {width}) but only {free_bytes / 1e9:.1f} GB of disk is free; use --data_mode on_the_fly "
            "or streaming, which write nothing."
        )
    return requested


class DecodeErrors:
    """What to do with an image that does not decode: raise naming it, or skip it and count it (shared memory, so
    the count from dataloader workers reaches the main process). The count is of this process's decodes since it
    started: a resumed run starts again from 0, and counts again an image of a batch it replays (each skip is also
    logged with the image's name)."""

    def __init__(self, skip: bool, split_name: str):
        self.skip = skip
        self.split_name = split_name
        self._count = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def skipped(self) -> int:
        return int(self._count.item())

    def handle(self, where: str, error: Exception) -> None:
        if not self.skip:
            raise ValueError(
                f"Image {where} of split {self.split_name!r} cannot be decoded ({type(error).__name__}: {error}); "
                "fix or remove it, or pass --skip_corrupt_images to train without it."
            )
        self._count += 1
        logger.warning("Skipping image %s of split %r that cannot be decoded: %s", where, self.split_name, error)


def decode_batch(cells: list, where: list[str], errors: DecodeErrors) -> tuple[list[PIL.Image.Image], list[int]]:
    """The decodable images of a batch (the one decode rule) and their positions in it."""
    images, kept = [], []
    for position, (cell, name) in enumerate(zip(cells, where, strict=True)):
        try:
            images.append(decode_image(cell))
            kept.append(position)
        except UNREADABLE_IMAGE_ERRORS as error:
            errors.handle(name, error)
    return images, kept


class OnTheFlyDataset(torch.utils.data.Dataset):
    """An encoded split (columns "image", "label") decoded batch by batch in the dataloader workers.

    Training (`transform` and `seed` set): each image is augmented from its original resolution with torch's RNG
    seeded by (seed, epoch, batch indices), the rule of `transforms.ImageClassificationDataset`, so the batches are
    the same with any number of workers and after a resume. Evaluation: the image processor's geometry.
    """

    def __init__(
        self,
        split: Dataset,
        image_processor: BaseImageProcessor,
        errors: DecodeErrors,
        transform: Callable[[PIL.Image.Image], torch.Tensor] | None = None,
        seed: int | None = None,
    ):
        self.split = undecoded(split, "image")
        self.image_processor = image_processor
        self.errors = errors
        self.transform = transform
        self.seed = seed
        self.size = output_size(image_processor)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.split)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor | int]]:
        indices = [int(index) for index in indices]
        rows = self.split[indices]
        where = [_where(cell, index) for cell, index in zip(rows["image"], indices, strict=True)]
        images, kept = decode_batch(rows["image"], where, self.errors)
        if not images:
            # The collator cannot stack an empty batch, and a process that skipped its step would stall the others.
            raise ValueError(
                f"Every image of a batch of split {self.errors.split_name!r} cannot be decoded ({', '.join(where)}): "
                "--skip_corrupt_images skips a corrupt image but a batch cannot be empty; remove these images."
            )
        labels = [rows["label"][position] for position in kept]
        if self.seed is None:
            pixels = list(processor_pixels(images, self.image_processor))
            return [{"pixel_values": image, "labels": label} for image, label in zip(pixels, labels, strict=True)]
        seed = batch_seed(self.seed, self.epoch, indices)
        pixels = transform_seeded(self.transform, images, seed)
        return [
            {"pixel_values": image, "labels": label, "augmentation_seed": seed}
            for image, label in zip(pixels, labels, strict=True)
        ]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        return self.__getitems__([index])[0]


def _where(cell: object, row: int) -> str:
    path = cell.get("path") if isinstance(cell, dict) else None
    return f"{path!r} (row {row})" if path else f"row {row}"


def build_training_datasets(
    data, image_processor: BaseImageProcessor, augmentation, seed: int, skip_corrupt_images: bool
) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
    """The train and eval torch datasets of `data` (`data.ImageClassificationSplits`) for its data mode."""
    from .transforms import ImageClassificationDataset, build_train_transform

    flip = bool(augmentation.horizontal_flip)
    if data.data_mode == "prepared":
        train = ImageClassificationDataset(
            data.train, build_train_transform(augmentation, image_processor, flip), seed=seed
        )
        return train, ImageClassificationDataset(data.eval)
    if data.data_mode == "on_the_fly":
        transform = build_train_transform(augmentation, image_processor, flip, from_original=True)
        train = OnTheFlyDataset(
            data.train, image_processor, DecodeErrors(skip_corrupt_images, data.train_split), transform, seed
        )
        return train, OnTheFlyDataset(data.eval, image_processor, DecodeErrors(skip_corrupt_images, data.eval_split))
    from .streaming import build_streaming_datasets

    return build_streaming_datasets(data, image_processor, augmentation, seed, skip_corrupt_images)
