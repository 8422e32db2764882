"""The streaming data path: a `datasets.IterableDataset` read as it comes, never stored.

Sources: a Hub id (`load_dataset(..., streaming=True)`), local folders (`--train_dir`/`--validation_dir`: an image
folder, or `.parquet` files, or webdataset `.tar` shards), or the built-in digits / Fashion-MNIST as an iterable of
`STREAM_SHARDS` shards. With N processes each one reads its own shards of the train stream (`split_dataset_by_node`:
by shard, or by example when there are fewer shards than processes), so each example is read by exactly one process
per pass; the eval stream is split the same way by accelerate (`dispatch_batches` off). The train stream
(`ResumableStream`) is shuffled with a buffer (`--shuffle_buffer_size`, reseeded every pass), decoded and augmented
from the original image in the dataloader workers, and resumes exactly where a checkpoint stopped. A stream has no
length: the Trainer needs `--max_steps`.
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import datasets
import numpy as np
import PIL.Image
import torch
from accelerate import PartialState
from datasets import ClassLabel, IterableDataset, load_dataset
from datasets.distributed import split_dataset_by_node
from transformers import BaseImageProcessor

from ..models.lape_vit.image_processing_lape_vit import eval_geometry
from .data import (
    DIGITS_DATASET_NAME,
    EVAL_SPLIT_CANDIDATES,
    IMAGE_COLUMN_CANDIDATES,
    LABEL_COLUMN_CANDIDATES,
    ImageClassificationSplits,
    load_raw_splits,
    processor_pixels,
)
from .data_modes import DecodeErrors, decode_batch
from .fashion_mnist import FASHION_MNIST_DATASET_NAME
from .transforms import batch_seed, build_train_transform, transform_seeded

STREAM_SHARDS = 16  # built-in datasets as iterables: divisible among 1, 2, 4, 8 or 16 processes
MAP_BATCH_SIZE = 32  # eval examples decoded together


def _local_builder(directory: str) -> tuple[str, str]:
    """The `datasets` builder for a local folder and its file pattern: parquet, webdataset shards or an image folder."""
    if not os.path.isdir(directory):
        raise ValueError(f"Directory {directory!r} does not exist or is not a directory.")
    for builder, extension in (("parquet", "parquet"), ("webdataset", "tar")):
        if glob.glob(os.path.join(directory, "**", f"*.{extension}"), recursive=True):
            return builder, os.path.join(directory, "**", f"*.{extension}")
    return "imagefolder", os.path.join(directory, "**")


def load_streaming_splits(
    dataset_name: str | None,
    dataset_config_name: str | None,
    train_dir: str | None,
    validation_dir: str | None,
    cache_dir: str | None,
    data_dir: str | None,
) -> tuple[datasets.IterableDatasetDict, str]:
    """The splits as `IterableDataset`s, and the dataset's name (as `data.load_raw_splits` names it)."""
    if train_dir is not None:
        builder, pattern = _local_builder(train_dir)
        data_files = {"train": pattern}
        if validation_dir is not None:
            data_files["validation"] = _local_builder(validation_dir)[1]
        if builder == "imagefolder" and all(pattern.endswith(os.sep + "**") for pattern in data_files.values()):
            # A streamed image folder is one shard in `datasets` (its file list is not split), so a second worker or
            # process would get nothing: its table of file paths (the images stay files) is streamed in shards.
            raw, name = load_raw_splits(train_dir=train_dir, validation_dir=validation_dir, cache_dir=cache_dir)
            return _sharded(raw), name
        return load_dataset(builder, data_files=data_files, streaming=True, cache_dir=cache_dir), builder
    if dataset_name in (None, DIGITS_DATASET_NAME, FASHION_MNIST_DATASET_NAME) or data_dir is not None:
        raw, name = load_raw_splits(dataset_name, data_dir=data_dir)
        return _sharded(raw), name
    return load_dataset(dataset_name, dataset_config_name, streaming=True, cache_dir=cache_dir), dataset_name


def _sharded(raw: datasets.DatasetDict) -> datasets.IterableDatasetDict:
    """Each split as an `IterableDataset` of `STREAM_SHARDS` shards (fewer for a split of fewer rows)."""
    return datasets.IterableDatasetDict(
        {split: raw[split].to_iterable_dataset(num_shards=max(1, min(STREAM_SHARDS, len(raw[split])))) for split in raw}
    )


def _column(features: datasets.Features | None, requested: str | None, candidates: tuple, role: str) -> str:
    names = list(features or {})
    if requested is not None:
        if requested not in names:
            raise ValueError(f"{role} column {requested!r} is not in the stream; its columns are {names}.")
        return requested
    found = next((name for name in candidates if name in names), None)
    if found is None:
        raise ValueError(f"Cannot find the {role} column among {names}; name it with --{role}_column_name.")
    return found


def stream_label_feature(split: IterableDataset, label_column: str) -> ClassLabel:
    """The label set of a stream: its `ClassLabel` (a stream cannot be read whole to collect the labels)."""
    feature = split.features[label_column]
    if not isinstance(feature, ClassLabel):
        raise ValueError(
            f"Streaming needs a ClassLabel label column; {label_column!r} is {feature}. Cast it "
            "(`cast_column(..., ClassLabel(names=[...]))`) or use --data_mode on_the_fly."
        )
    return feature


def _decode_eval_batch(
    batch: dict[str, list], indices: list[int], image_processor: BaseImageProcessor, errors: DecodeErrors
) -> dict[str, list]:
    """One `.map` batch of the eval stream: decode (the one rule; a corrupt image raises naming it, or is skipped and
    counted) and the processor's geometry."""
    where = [_where(cell, index) for cell, index in zip(batch["image"], indices, strict=True)]
    images, kept = decode_batch(batch["image"], where, errors)
    pixels = list(processor_pixels(images, image_processor)) if images else []
    return {"pixel_values": pixels, "labels": [batch["label"][position] for position in kept]}


def _where(cell: Any, index: int) -> str:
    path = cell.get("path") if isinstance(cell, dict) else None
    return f"{path!r} (stream position {index})" if path else f"stream position {index}"


def _decoded(stream: IterableDataset, **decode_arguments: Any) -> IterableDataset:
    """`stream` mapped through `_decode_eval_batch` (`decode_arguments`), `MAP_BATCH_SIZE` examples at a time."""
    return stream.map(
        _decode_eval_batch,
        batched=True,
        batch_size=MAP_BATCH_SIZE,
        with_indices=True,
        remove_columns=["image", "label"],
        fn_kwargs=decode_arguments,
    )


@dataclasses.dataclass
class _Reader:
    """Where one reader (a dataloader worker of one process) is: its pass, the stream it reads in that pass, its
    shuffle buffer of still-encoded examples (each with its position in the pass), the buffer's RNG, how many
    examples it has read and yielded."""

    pass_index: int
    source: IterableDataset
    buffer: list[tuple[int, dict]]  # (position in this pass, example)
    rng: np.random.Generator
    read: int = 0
    yielded: int = 0

    def state_dict(self) -> dict[str, Any]:
        source = self.source
        return {
            "pass": self.pass_index,
            "buffer": list(self.buffer),
            "rng": self.rng.bit_generator.state,
            "read": self.read,
            "yielded": self.yielded,
            "source": source.state_dict(),
        }


class ResumableStream(torch.utils.data.IterableDataset):
    """The train stream: this process's shards of a `datasets.IterableDataset`, read pass after pass without end
    (`--max_steps` ends training), shuffled with a buffer, then decoded and augmented example by example.

    The shuffle is ours, not `IterableDataset.shuffle`, because resuming must continue exactly: `datasets` saves the
    stream's position but drops its shuffle buffer (the examples in it at the checkpoint would never be trained on).
    Here the state of a reader (`state_dict`: the stream's own `datasets` state, the buffer's encoded examples, the
    RNG, the pass) is everything its next example depends on, so a resumed run sees the examples of the uninterrupted
    run, in order, without reading the consumed part of the stream again. torchdata's `StatefulDataLoader` collects
    this state from each dataloader worker (`LapeTrainer` saves it with every checkpoint). Each worker keeps its own
    pass and reads the same shards in the same order every pass (see `_start_pass`); the buffer is reseeded every
    pass from (seed, pass, process, worker), and the augmentation of an example is seeded by (seed, pass, process,
    worker, its position in the worker's stream): the same with or without a resume, but not the same batches with
    another number of processes or workers (they read other shards), so a resume keeps both.
    """

    def __init__(
        self,
        source: IterableDataset,
        buffer_size: int,
        seed: int,
        rank: int,
        transform: Callable[[PIL.Image.Image], torch.Tensor],
        errors: DecodeErrors,
        identity: dict[str, Any] | None = None,
    ):
        self.source = source
        self.identity = dict(identity or {})
        self.buffer_size = buffer_size
        self.seed = seed
        self.rank = rank
        self.transform = transform
        self.errors = errors
        self._resume_from: dict[str, Any] | None = None
        self._reader: _Reader | None = None

    def resume_settings(self) -> dict[str, Any]:
        """What a saved state is only valid with (a resume with other values would read other examples)."""
        return {
            **self.identity,
            "seed": self.seed,
            "shuffle_buffer_size": self.buffer_size,
            "shards": self.source.num_shards,
        }

    def state_dict(self) -> dict[str, Any]:
        """The state after the last example this reader yielded (before reading: the state it would resume from)."""
        if self._reader is None:
            return dict(self._resume_from or {})
        return self._reader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` (of the same process and worker) at the next iteration."""
        self._resume_from = dict(state) or None

    def _start_pass(self, pass_index: int, worker: int) -> _Reader:
        state, self._resume_from = self._resume_from, None
        if state is not None:
            pass_index = state["pass"]
        # No `self.source.set_epoch(pass_index)`: `datasets` keeps the epoch in one shared-memory tensor that all
        # dataloader workers inherit, so workers in different passes (unequal shards, a resume) would overwrite each
        # other's, read their shards in another order and drop their saved position. The source stays at epoch 0:
        # each worker reads the same shards in the same order every pass, and the buffer (seeded from --seed and
        # the pass) does the shuffling.
        if state is None:
            rng = np.random.default_rng([self.seed & 0xFFFFFFFF, pass_index, self.rank, worker])
            return _Reader(pass_index, self.source, [], rng)
        # Only this pass continues from the saved position, so a copy loads it: `datasets` would apply a loaded
        # state to every later pass at the same epoch, and writes it into the iterables a shallow copy shares.
        # (`datasets` tables are not copied by a deep copy.)
        source = copy.deepcopy(self.source)
        source.load_state_dict(state["source"])
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]
        return _Reader(pass_index, source, list(state["buffer"]), rng, state["read"], state["yielded"])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        pass_index = 0
        while True:
            reader = self._reader = self._start_pass(pass_index, worker)
            for example in reader.source:
                reader.read += 1
                if len(reader.buffer) < self.buffer_size:
                    reader.buffer.append((reader.read - 1, example))
                    continue
                slot = int(reader.rng.integers(len(reader.buffer)))
                chosen, reader.buffer[slot] = reader.buffer[slot], (reader.read - 1, example)
                yield from self._decode(reader, worker, *chosen)
            while reader.buffer:
                slot = int(reader.rng.integers(len(reader.buffer)))
                reader.buffer[slot], reader.buffer[-1] = reader.buffer[-1], reader.buffer[slot]
                yield from self._decode(reader, worker, *reader.buffer.pop())
            if reader.read == 0:  # this worker has no shard of the stream
                return
            if reader.yielded == 0:  # passes of skipped images only would go on for ever
                raise ValueError(
                    f"None of the {reader.read} images of a pass over this reader's part of split "
                    f"{self.errors.split_name!r} can be decoded (all skipped by --skip_corrupt_images)."
                )
            pass_index = reader.pass_index + 1

    def _decode(self, reader: _Reader, worker: int, position: int, example: dict) -> Iterator[dict[str, Any]]:
        """The example read at `position` of this worker's pass decoded (the one rule) and augmented from the original
        image; nothing for a corrupt image that is skipped."""
        key = batch_seed(self.seed, reader.pass_index, [self.rank, worker, position])
        where = _where(example["image"], position)
        images, _ = decode_batch([example["image"]], [where], self.errors)
        for pixels in transform_seeded(self.transform, images, key):
            reader.yielded += 1
            yield {"pixel_values": pixels, "labels": example["label"], "augmentation_seed": key}


def build_streaming_datasets(
    data: ImageClassificationSplits, image_processor: BaseImageProcessor, augmentation, seed: int, skip: bool
) -> tuple[ResumableStream, IterableDataset]:
    """The train stream (this process's shards, shuffled, decoded and augmented in the workers; resumable) and the
    eval stream (processor geometry; a `datasets.IterableDataset` that accelerate splits among processes by shard)."""
    transform = build_train_transform(
        augmentation, image_processor, bool(augmentation.horizontal_flip), from_original=True
    )
    process = PartialState()
    train = ResumableStream(
        split_dataset_by_node(data.train, rank=process.process_index, world_size=process.num_processes),
        buffer_size=data.shuffle_buffer_size,
        seed=seed,
        rank=process.process_index,
        transform=transform,
        errors=DecodeErrors(skip, data.train_split),
        identity=data.stream_identity,
    )
    evaluation = _decoded(data.eval, image_processor=image_processor, errors=DecodeErrors(skip, data.eval_split))
    return train, evaluation


def prepare_streaming_run(model_args, data_args, augmentation, training_args):
    """`run.prepare_run` for `--data_mode streaming`: the streams, the label set from their features, the model."""
    from .run import _PreparedRun, build_model_and_processor, dataset_source, with_eval_geometry

    check_streaming_training_arguments(training_args)
    start = time.perf_counter()
    streams, dataset_name = load_streaming_splits(**dataset_source(model_args, data_args))
    train_name, eval_name = _stream_split_names(streams, data_args.train_split, data_args.eval_split)
    train, evaluation, label_feature = _standard_streams(streams[train_name], streams[eval_name], data_args)
    model, image_processor = build_model_and_processor(model_args, list(label_feature.names))
    image_processor = with_eval_geometry(image_processor, model.config, data_args)
    # Each process reads its own shards of the eval stream (accelerate's default for an iterable is that process 0
    # reads everything and sends the batches out).
    training_args.accelerator_config.dispatch_batches = False
    # A resumed train stream continues from its saved state (`LapeTrainer`), so the Trainer must not skip batches.
    training_args.ignore_data_skip = True
    data = StreamingSplits(
        train=train,
        eval=evaluation,
        label_names=list(label_feature.names),
        dataset_name=dataset_name,
        train_split=train_name,
        eval_split=eval_name,
        raw_eval=evaluation,
        data_mode="streaming",
        eval_geometry=eval_geometry(image_processor),
        shuffle_buffer_size=data_args.shuffle_buffer_size,
        stream_identity={
            "dataset": data_args.dataset_name or os.path.basename(os.path.normpath(data_args.train_dir or "")),
            "dataset_config_name": data_args.dataset_config_name,
            "train_split": train_name,
            "max_train_samples": data_args.max_train_samples,
        },
    )
    if augmentation.horizontal_flip is None:
        augmentation = dataclasses.replace(augmentation, horizontal_flip=dataset_name != DIGITS_DATASET_NAME)
    return _PreparedRun(
        model, image_processor, data, augmentation, time.perf_counter() - start, data_args.skip_corrupt_images
    )


def check_streaming_training_arguments(training_args) -> None:
    """Refuse the Trainer settings a train stream cannot honour, each in one line naming the value."""
    if training_args.max_steps is None or training_args.max_steps <= 0:
        raise ValueError(
            "data_mode='streaming' needs --max_steps: a stream has no length, so the Trainer cannot count epochs "
            f"(got max_steps={training_args.max_steps!r})."
        )
    if not training_args.dataloader_in_order:
        raise ValueError(
            "data_mode='streaming' needs --dataloader_in_order true: torchdata saves no exact stream state for "
            "batches taken out of order (got dataloader_in_order=False)."
        )
    if training_args.accelerator_config.split_batches:
        raise ValueError(
            "data_mode='streaming' cannot use accelerator_config split_batches=True: each process reads its own "
            "shards, so its batches are never split among processes."
        )


def _stream_split_names(
    streams: datasets.IterableDatasetDict, train_split: str, eval_split: str | None
) -> tuple[str, str]:
    """The train and eval split names; a stream has no held-out fraction, so it needs an eval split of its own."""
    if train_split not in streams:
        raise ValueError(f"train_split={train_split!r} is not in the stream; its splits are {list(streams)}.")
    eval_name = eval_split or next((name for name in EVAL_SPLIT_CANDIDATES if name in streams), None)
    if eval_name is None or eval_name not in streams:
        raise ValueError(
            f"Streaming needs an eval split (a stream cannot be split by holding out a fraction); the splits are "
            f"{list(streams)} (eval_split={eval_split!r})."
        )
    return train_split, eval_name


def _standard_streams(
    train: IterableDataset, evaluation: IterableDataset, data_args
) -> tuple[IterableDataset, IterableDataset, ClassLabel]:
    """Both streams as "image" (still encoded) and "label" columns, cut to `--max_*_samples`; the label set."""
    image_column = _column(train.features, data_args.image_column_name, IMAGE_COLUMN_CANDIDATES, "image")
    label_column = _column(train.features, data_args.label_column_name, LABEL_COLUMN_CANDIDATES, "label")
    label_feature = stream_label_feature(train, label_column)
    renames = {old: new for old, new in ((image_column, "image"), (label_column, "label")) if old != new}

    def standardize(split: IterableDataset) -> IterableDataset:
        split = split.select_columns([image_column, label_column])
        split = split.rename_columns(renames) if renames else split
        return split.cast_column("image", datasets.Image(decode=False))

    train, evaluation = standardize(train), standardize(evaluation)
    if data_args.max_train_samples is not None:
        train = train.take(data_args.max_train_samples)
    if data_args.max_eval_samples is not None:
        evaluation = evaluation.take(data_args.max_eval_samples)
    return train, evaluation, label_feature


@dataclasses.dataclass
class StreamingSplits(ImageClassificationSplits):
    """`ImageClassificationSplits` whose splits are streams (no length), with the shuffle buffer's size and what
    names the train stream (a saved stream state is only resumed on the same one)."""

    shuffle_buffer_size: int = 10_000
    stream_identity: dict[str, Any] = dataclasses.field(default_factory=dict)
