"""The three data paths: the automatic choice and its refusals, on-the-fly decoding and augmentation from the original
image (same batches with any number of workers, after a resume), the evaluation geometry, corrupt images."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from conftest import tiny_config
from datasets import ClassLabel, Dataset, Features, Image
from safetensors.torch import load_file
from test_training import TINY_MODEL, parse, pattern_image, train
from torchvision.transforms import v2
from transformers import AutoImageProcessor

from lape_hf.models.lape_vit.image_processing_lape_vit import build_image_processor, eval_geometry
from lape_hf.training.data_modes import (
    DecodeErrors,
    OnTheFlyDataset,
    choose_data_mode,
    encoded_bytes,
    prepared_bytes,
)
from lape_hf.training.transforms import (
    AugmentationArguments,
    ImageClassificationCollator,
    build_train_transform,
)


def natural_like(seed: int, size=(50, 38)) -> PIL.Image.Image:
    """A smooth random RGB image (bicubic-upsampled noise): resizing it is not trivially exact."""
    small = np.random.default_rng(seed).integers(0, 256, size=(size[1] // 5, size[0] // 5, 3), dtype=np.uint8)
    return PIL.Image.fromarray(small).resize(size, PIL.Image.Resampling.BICUBIC)


def encoded_split(images: list[PIL.Image.Image], labels: list[int], corrupt_rows=()) -> Dataset:
    cells = []
    for row, image in enumerate(images):
        if row in corrupt_rows:
            cells.append({"bytes": b"not an image", "path": f"broken-{row}.jpg"})
            continue
        buffer = __import__("io").BytesIO()
        image.save(buffer, format="PNG")
        cells.append({"bytes": buffer.getvalue(), "path": None})
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    return Dataset.from_dict({"image": cells, "label": labels}, features=features)


@pytest.fixture(scope="module")
def pattern_folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("patterns")
    for split, count, offset in (("train", 24, 0), ("val", 12, 1000)):
        for kind in ("checker", "horizontal", "vertical"):
            (root / split / kind).mkdir(parents=True)
            for index in range(count):
                pattern_image(kind, offset + index, size=24).save(root / split / kind / f"{index}.png")
    return root / "train", root / "val"


def test_auto_prepares_small_arrays_and_decodes_large_ones_on_the_fly():
    # Digits at 16 px: 1.4 MB of arrays, under the memory budget.
    assert choose_data_mode("auto", 1797, 16, 16, source_bytes=0, free_bytes=0) == "prepared"
    # 20,000 JPEGs of 40 kB at 224 px: 3.0 GB of arrays against 0.8 GB encoded, over a 1 GiB budget.
    assert prepared_bytes(20_000, 224, 224) == 20_000 * 3 * 224 * 224
    assert choose_data_mode("auto", 20_000, 224, 224, source_bytes=20_000 * 40_000, free_bytes=10**12) == "on_the_fly"
    # Arrays no larger than the encoded source (e.g. uncompressed images) are prepared whatever their size.
    big = prepared_bytes(100_000, 64, 64)
    assert choose_data_mode("auto", 100_000, 64, 64, source_bytes=big, free_bytes=10**12, memory_budget=0) == (
        "prepared"
    )


def test_prepared_is_refused_with_the_estimate_when_the_disk_is_too_small():
    # ImageNet-1k at 224 px: 1,281,167 x 150,528 bytes = 192.9 GB.
    with pytest.raises(ValueError, match=r"about 192\.9 GB .*1281167 images x 3 x 224 x 224.*only 50\.0 GB"):
        choose_data_mode("prepared", 1_281_167, 224, 224, source_bytes=0, free_bytes=50 * 10**9)
    assert choose_data_mode("prepared", 1000, 224, 224, source_bytes=0, free_bytes=0) == "prepared"  # in memory
    with pytest.raises(ValueError, match="data_mode='fast' is not one of auto, prepared, on_the_fly, streaming"):
        choose_data_mode("fast", 10, 16, 16, source_bytes=0, free_bytes=0)


def test_encoded_size_is_the_bytes_of_the_stored_images():
    split = encoded_split([natural_like(seed) for seed in range(6)], [0, 1] * 3)
    expected = sum(len(cell["bytes"]) for cell in split.cast_column("image", Image(decode=False))["image"])
    assert encoded_bytes(split, "image") == pytest.approx(expected, rel=1e-9)
    assert encoded_bytes(split, "image", sample=2) > 0


def test_from_original_without_crops_is_a_bicubic_resize_of_the_original_image():
    processor = build_image_processor(tiny_config(image_size=16, patch_size=4))
    augmentation = AugmentationArguments(random_resized_crop=False, rand_augment=False)
    transform = build_train_transform(augmentation, processor, horizontal_flip=False, from_original=True)
    image = natural_like(0)
    expected = np.asarray(image.resize((16, 16), PIL.Image.Resampling.BICUBIC)).transpose(2, 0, 1)
    np.testing.assert_array_equal(transform(image).numpy(), expected)


def test_random_resized_crops_are_taken_from_the_original_resolution():
    """The crop box is drawn in the original image's pixels and only the crop is resized (bicubic): the same as
    PIL cropping the 64 px original at the box torchvision draws from the same seed, then resizing to 16 px."""
    processor = build_image_processor(tiny_config(image_size=16, patch_size=4))
    augmentation = AugmentationArguments(crop_scale_min=0.08, rand_augment=False)
    transform = build_train_transform(augmentation, processor, horizontal_flip=False, from_original=True)
    image = natural_like(1, size=(64, 64))
    boxes = set()
    for seed in range(5):
        torch.manual_seed(seed)
        actual = transform(image).numpy()
        torch.manual_seed(seed)
        box = v2.RandomResizedCrop(16, scale=(0.08, 1.0)).make_params([image])
        left, top, width, height = box["left"], box["top"], box["width"], box["height"]
        crop = image.crop((left, top, left + width, top + height)).resize((16, 16), PIL.Image.Resampling.BICUBIC)
        np.testing.assert_array_equal(actual, np.asarray(crop).transpose(2, 0, 1))
        boxes.add((left, top, width, height))
    assert len(boxes) == 5 and min(width for _, _, width, _ in boxes) < 32  # small crops of the original occur


def _batches(dataset: OnTheFlyDataset, num_workers: int, batch_size: int = 4) -> list[torch.Tensor]:
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=lambda examples: examples
    )
    return [torch.stack([example["pixel_values"] for example in batch]) for batch in loader]


def test_on_the_fly_batches_are_the_same_with_any_number_of_workers_and_per_epoch():
    processor = build_image_processor(tiny_config(image_size=16, patch_size=4))
    transform = build_train_transform(AugmentationArguments(), processor, horizontal_flip=True, from_original=True)
    split = encoded_split([natural_like(seed) for seed in range(12)], [0, 1] * 6)
    dataset = OnTheFlyDataset(split, processor, DecodeErrors(False, "train"), transform, seed=3)
    in_process, two_workers = _batches(dataset, 0), _batches(dataset, 2)
    assert len(in_process) == 3
    for expected, actual in zip(in_process, two_workers, strict=True):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    dataset.set_epoch(1)
    assert not torch.equal(_batches(dataset, 0)[0], in_process[0])  # another epoch, other crops


def test_center_crop_eval_is_the_saved_processor_output_to_1e_6(tmp_path):
    """Eval batches on the fly (decode, the processor's geometry, the collator's normalization) equal what the saved
    processor gives pipeline(): shorter side to 224 / 0.875 = 256, centre crop 224."""
    config = tiny_config(image_size=224, patch_size=16)
    processor = build_image_processor(config, crop_pct=0.875)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert (saved["size"], saved["crop_size"], saved["do_center_crop"]) == (
        {"shortest_edge": 256},
        {"height": 224, "width": 224},
        True,
    )
    reloaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert eval_geometry(reloaded) == "center_crop"
    images = [natural_like(seed, size=(300, 225)) for seed in range(3)]
    dataset = OnTheFlyDataset(encoded_split(images, [0, 1, 0]), processor, DecodeErrors(False, "eval"))
    batch = ImageClassificationCollator(processor, 2)(dataset.__getitems__([0, 1, 2]))
    expected = reloaded(images=images, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(batch["pixel_values"], expected, rtol=0, atol=1e-6)
    # Independent of transformers: the 300x225 image resized to 341x256 (bicubic), its centre 224x224.
    resized = np.asarray(images[0].resize((341, 256), PIL.Image.Resampling.BICUBIC), dtype=np.float32)
    centre = resized[16:240, 58:282].transpose(2, 0, 1) / 255.0
    mean, std = np.asarray(processor.image_mean)[:, None, None], np.asarray(processor.image_std)[:, None, None]
    np.testing.assert_allclose(batch["pixel_values"][0].numpy(), (centre - mean) / std, atol=0.05)


def test_a_corrupt_image_stops_the_batch_naming_it_or_is_skipped_and_counted():
    processor = build_image_processor(tiny_config(image_size=16, patch_size=4))
    transform = build_train_transform(AugmentationArguments(), processor, horizontal_flip=False, from_original=True)
    split = encoded_split([natural_like(seed) for seed in range(4)], [0, 1, 0, 1], corrupt_rows=(2,))
    strict = OnTheFlyDataset(split, processor, DecodeErrors(False, "train"), transform, seed=0)
    with pytest.raises(ValueError, match=r"'broken-2\.jpg' \(row 2\) of split 'train' cannot be decoded.*--skip"):
        strict.__getitems__([0, 1, 2, 3])
    errors = DecodeErrors(True, "train")
    lenient = OnTheFlyDataset(split, processor, errors, transform, seed=0)
    batch = lenient.__getitems__([0, 1, 2, 3])
    assert [example["labels"] for example in batch] == [0, 1, 1] and errors.skipped == 1


def test_a_batch_whose_every_image_is_skipped_is_an_error_naming_them():
    """--skip_corrupt_images drops corrupt images from their batch; a batch left empty stops naming all of them."""
    processor = build_image_processor(tiny_config(image_size=16, patch_size=4))
    split = encoded_split([natural_like(seed) for seed in range(4)], [0, 1, 0, 1], corrupt_rows=(1, 2))
    errors = DecodeErrors(True, "train")
    dataset = OnTheFlyDataset(split, processor, errors)
    assert [example["labels"] for example in dataset.__getitems__([0, 1])] == [0]
    with pytest.raises(ValueError, match=r"Every image of a batch of split 'train' .*broken-1.jpg.*broken-2.jpg"):
        dataset.__getitems__([1, 2])
    assert errors.skipped == 3


def test_a_stream_whose_every_image_is_skipped_stops_instead_of_reading_for_ever():
    from lape_hf.training.streaming import ResumableStream

    split = encoded_split([natural_like(seed) for seed in range(3)], [0, 1, 0], corrupt_rows=(0, 1, 2))
    stream = ResumableStream(
        split.cast_column("image", Image(decode=False)).to_iterable_dataset(num_shards=3),
        buffer_size=2,
        seed=0,
        rank=0,
        transform=lambda image: image,
        errors=DecodeErrors(True, "train"),
    )
    with pytest.raises(ValueError, match=r"None of the 3 images of a pass .* split 'train' can be decoded"):
        next(iter(stream))


class SlowToResumeInWorker0(datasets.IterableDataset):
    """A stream whose dataloader worker 0 takes a second to load its saved position, so that worker 1 starts its
    pass meanwhile (a pass number the workers shared would be worker 1's when worker 0 starts reading)."""

    def load_state_dict(self, state_dict: dict) -> None:
        info = torch.utils.data.get_worker_info()
        if info is not None and info.id == 0:
            time.sleep(1.0)
        super().load_state_dict(state_dict)


def unequal_shard_stream(seed: int = 0):
    """20 examples in 5 shards of 4 (label = example number): 2 dataloader workers read 3 and 2 shards, so their
    passes end at different batches and they drift apart by passes."""
    from lape_hf.training.streaming import ResumableStream

    split = encoded_split([natural_like(index, size=(10, 10)) for index in range(20)], [0] * 20)
    split = split.cast_column("label", datasets.Value("int64")).map(
        lambda row, index: {"label": index}, with_indices=True
    )
    source = split.cast_column("image", Image(decode=False)).to_iterable_dataset(num_shards=5)
    source.__class__ = SlowToResumeInWorker0
    return ResumableStream(
        source,
        buffer_size=3,
        seed=seed,
        rank=0,
        transform=v2.PILToTensor(),
        errors=DecodeErrors(False, "train"),
    )


def stream_loader(stream, snapshot_every: int = 1):
    from torchdata.stateful_dataloader import StatefulDataLoader

    return StatefulDataLoader(
        stream,
        batch_size=2,
        num_workers=2,
        collate_fn=lambda examples: [example["labels"] for example in examples],
        snapshot_every_n_steps=snapshot_every,
    )


@pytest.mark.parametrize("stop_after", [9, 10, 20])
def test_workers_passes_apart_resume_to_the_uninterrupted_batches(stop_after):
    """Worker 0 reads 12 examples a pass (6 batches), worker 1 8 (4), taking turns: after 10 and 20 batches they are
    a pass apart (0 and 1, 1 and 2), after 9 worker 1 is at the end of its pass. Each worker keeps its own pass (with
    one pass number shared by the workers, worker 0 resumed in worker 1's shard order and dropped its position)."""
    uninterrupted = list(itertools.islice(stream_loader(unequal_shard_stream()), 30))
    per_worker = [uninterrupted[0::2][:6], uninterrupted[1::2][:4]]
    assert sorted(label for batch in per_worker[0] + per_worker[1] for label in batch) == list(range(20))
    stopped = stream_loader(unequal_shard_stream())
    assert list(itertools.islice(stopped, stop_after)) == uninterrupted[:stop_after]
    state = stopped.state_dict()
    resumed = stream_loader(unequal_shard_stream())
    resumed.load_state_dict(state)
    assert list(itertools.islice(resumed, 30 - stop_after)) == uninterrupted[stop_after:]


def test_a_run_on_the_fly_records_its_mode_and_resumes_to_the_uninterrupted_run(pattern_folders, tmp_path):
    """As the prepared path's resume test: stop after 3 of 8 steps, resume with a dataloader worker; on the fly,
    the datasets cache aside, nothing but the model and its checkpoints is written."""
    train_dir, val_dir = pattern_folders
    recipe = [
        f"--train_dir={train_dir}",
        f"--validation_dir={val_dir}",
        "--data_mode=on_the_fly",
        "--max_train_samples=40",
        "--per_device_train_batch_size=8",
        "--max_steps=8",
        "--save_strategy=steps",
        "--save_steps=3",
        "--save_total_limit=5",
        "--config_overrides=image_size=16,patch_size=4,hidden_size=32,num_hidden_layers=2,num_attention_heads=2,"
        "intermediate_size=64,drop_path_rate=0.2,attention_probs_dropout_prob=0.1,hidden_dropout_prob=0.1",
    ]
    uninterrupted = train(*recipe, f"--output_dir={tmp_path / 'uninterrupted'}")
    assert (uninterrupted["dataset"]["data_mode"], uninterrupted["dataset"]["eval_geometry"]) == (
        "on_the_fly",
        "resize",
    )
    assert not list((tmp_path / "uninterrupted").rglob("*.arrow"))
    resumed = train(
        *recipe,
        f"--output_dir={tmp_path / 'resumed'}",
        f"--resume_from_checkpoint={tmp_path / 'uninterrupted' / 'checkpoint-3'}",
        "--dataloader_num_workers=1",
    )
    expected = load_file(tmp_path / "uninterrupted" / "model.safetensors")
    actual = load_file(tmp_path / "resumed" / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-6, rtol=0, msg=name)
    assert resumed["metrics"]["eval_accuracy"] == pytest.approx(uninterrupted["metrics"]["eval_accuracy"], abs=1e-6)


def test_streaming_without_max_steps_is_refused_before_anything_is_written(pattern_folders, tmp_path):
    train_dir, val_dir = pattern_folders
    with pytest.raises(ValueError, match=r"data_mode='streaming' needs --max_steps.*max_steps=-1"):
        train(
            f"--train_dir={train_dir}",
            f"--validation_dir={val_dir}",
            "--data_mode=streaming",
            f"--output_dir={tmp_path / 'out'}",
        )
    assert not (tmp_path / "out").exists()


def test_streaming_with_classify_examples_is_refused_before_training(pattern_folders, tmp_path):
    train_dir, val_dir = pattern_folders
    with pytest.raises(ValueError, match=r"classify_examples=2 needs an eval split it can index"):
        train(
            f"--train_dir={train_dir}",
            f"--validation_dir={val_dir}",
            "--data_mode=streaming",
            "--max_steps=2",
            "--classify_examples=2",
            f"--output_dir={tmp_path / 'out'}",
        )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("checkpoint_step", [5, 10])
def test_a_resumed_stream_trains_as_the_uninterrupted_run(pattern_folders, tmp_path, checkpoint_step):
    """Streaming with 2 dataloader workers: 72 images, 8 per batch, so each worker's pass ends within step 9; resume
    from before (5) and after (10) that boundary: the same weights and metrics as the uninterrupted 14 steps."""
    train_dir, val_dir = pattern_folders
    recipe = [
        f"--train_dir={train_dir}",
        f"--validation_dir={val_dir}",
        "--data_mode=streaming",
        "--shuffle_buffer_size=16",
        "--per_device_train_batch_size=8",
        "--dataloader_num_workers=2",
        "--max_steps=14",
        "--save_strategy=steps",
        "--save_steps=5",
        "--save_total_limit=5",
        "--config_overrides=image_size=16,patch_size=4,hidden_size=32,num_hidden_layers=2,num_attention_heads=2,"
        "intermediate_size=64,drop_path_rate=0.2,attention_probs_dropout_prob=0.1,hidden_dropout_prob=0.1",
    ]
    uninterrupted = train(*recipe, f"--output_dir={tmp_path / 'uninterrupted'}")
    assert uninterrupted["dataset"]["data_mode"] == "streaming" and "num_train" not in uninterrupted["dataset"]
    resumed = train(
        *recipe,
        f"--output_dir={tmp_path / 'resumed'}",
        f"--resume_from_checkpoint={tmp_path / 'uninterrupted' / f'checkpoint-{checkpoint_step}'}",
    )
    expected = load_file(tmp_path / "uninterrupted" / "model.safetensors")
    actual = load_file(tmp_path / "resumed" / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-6, rtol=0, msg=name)
    assert resumed["metrics"]["eval_loss"] == pytest.approx(uninterrupted["metrics"]["eval_loss"], abs=1e-6)


@pytest.fixture
def one_image_per_class(tmp_path) -> Path:
    """48 images, each the only one of its class: a batch's labels name exactly which images it holds."""
    root = tmp_path / "classes"
    for index in range(48):
        (root / f"c{index:02d}").mkdir(parents=True)
        pattern_image(("checker", "horizontal", "vertical")[index % 3], index, size=24).save(
            root / f"c{index:02d}" / "image.png"
        )
    return root


def stream_trainer(train_dir: Path, output_dir: Path, *overrides: str):
    """The Trainer of a streaming run (2 dataloader workers, 4 images per batch, a checkpoint every 2 steps; the
    command line's `overrides` win)."""
    from lape_hf.training.run import build_trainer, prepare_run

    model_args, data_args, augmentation, training_args, _ = parse(
        *TINY_MODEL,
        f"--train_dir={train_dir}",
        f"--validation_dir={train_dir}",
        "--data_mode=streaming",
        "--shuffle_buffer_size=4",
        "--per_device_train_batch_size=4",
        "--dataloader_num_workers=2",
        "--max_steps=40",
        "--save_strategy=steps",
        "--save_steps=2",
        "--mixup=0",
        "--cutmix=0",
        f"--output_dir={output_dir}",
        *overrides,
    )
    return build_trainer(prepare_run(model_args, data_args, augmentation, training_args), training_args)


def batch_labels(trainer, count: int) -> list[list[int]]:
    loader = trainer.get_train_dataloader()
    batches = []
    for batch in loader:
        batches.append(batch["labels"].tolist())
        if len(batches) == count:
            return batches
    raise AssertionError(f"the stream ended after {len(batches)} batches")


def test_a_resumed_stream_sees_the_examples_of_the_uninterrupted_run_in_order(one_image_per_class, tmp_path):
    """Stop after 2 of 20 batches (a checkpoint's saved stream state), resume in a new Trainer: the next 18 batches
    are those of the uninterrupted run, across the pass boundary (each worker's 24 images make 6 batches)."""
    uninterrupted = batch_labels(stream_trainer(one_image_per_class, tmp_path / "a"), 20)
    seen_per_pass = sorted(label for batch in uninterrupted[:12] for label in batch)
    assert seen_per_pass == list(range(48))  # the first 12 batches are one pass: each image exactly once
    stopped = stream_trainer(one_image_per_class, tmp_path / "b")
    assert batch_labels(stopped, 2) == uninterrupted[:2]
    stopped._save_rng_state(str(tmp_path / "checkpoint"))
    resumed = stream_trainer(one_image_per_class, tmp_path / "c")
    resumed._stream_resume_state = resumed._load_stream_state(str(tmp_path / "checkpoint"))
    assert batch_labels(resumed, 18) == uninterrupted[2:]


@pytest.mark.parametrize(
    ("workers", "stop_after"), [("0", 3), ("0", 8), ("2", 3), ("2", 7)], ids=["0-3", "0-8", "2-3", "2-7"]
)
def test_a_stream_resumes_from_a_checkpoint_between_snapshots(one_image_per_class, tmp_path, workers, stop_after):
    """Workers snapshot every 2 batches (save_steps=2): a checkpoint after an odd batch (a Ctrl-C save) replays the
    batch since the snapshot and still continues as the uninterrupted run; without workers there is no snapshot."""
    settings = [f"--dataloader_num_workers={workers}"]
    uninterrupted = batch_labels(stream_trainer(one_image_per_class, tmp_path / "a", *settings), 16)
    stopped = stream_trainer(one_image_per_class, tmp_path / "b", *settings)
    assert batch_labels(stopped, stop_after) == uninterrupted[:stop_after]
    stopped._save_rng_state(str(tmp_path / "checkpoint"))
    resumed = stream_trainer(one_image_per_class, tmp_path / "c", *settings)
    resumed._stream_resume_state = resumed._load_stream_state(str(tmp_path / "checkpoint"))
    assert batch_labels(resumed, 16 - stop_after) == uninterrupted[stop_after:]


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        ("--dataloader_num_workers=1", r"dataloader_num_workers=2 but this run has dataloader_num_workers=1"),
        ("--seed=7", r"seed=0 but this run has seed=7"),
        ("--shuffle_buffer_size=5", r"shuffle_buffer_size=4 but this run has shuffle_buffer_size=5"),
        ("--max_train_samples=30", r"max_train_samples=None but this run has max_train_samples=30"),
    ],
)
def test_a_stream_resumed_with_other_settings_is_refused_naming_both_values(
    one_image_per_class, tmp_path, changed, message
):
    stopped = stream_trainer(one_image_per_class, tmp_path / "b")
    batch_labels(stopped, 2)
    stopped._save_rng_state(str(tmp_path / "checkpoint"))
    resumed = stream_trainer(one_image_per_class, tmp_path / "c", changed)
    with pytest.raises(ValueError, match=rf"saved its stream with {message}: a stream resumes only with the settings"):
        resumed._load_stream_state(str(tmp_path / "checkpoint"))


def test_a_stream_resumed_with_another_number_of_processes_is_refused(one_image_per_class, tmp_path):
    """A state saved by a 2-process run (its process 0's file, as a 1-process resume reads it) names both counts."""
    from lape_hf.training.trainer import STREAM_STATE_NAME

    stopped = stream_trainer(one_image_per_class, tmp_path / "b")
    batch_labels(stopped, 2)
    stopped._save_rng_state(str(tmp_path / "checkpoint"))
    path = tmp_path / "checkpoint" / STREAM_STATE_NAME.format(rank=0)
    saved = torch.load(path, weights_only=True)
    torch.save({**saved, "settings": {**saved["settings"], "processes": 2}}, path)
    resumed = stream_trainer(one_image_per_class, tmp_path / "c")
    with pytest.raises(ValueError, match=r"saved its stream with processes=2 but this run has processes=1"):
        resumed._load_stream_state(str(tmp_path / "checkpoint"))


def test_a_checkpoint_without_stream_state_names_save_only_model(one_image_per_class, tmp_path):
    (tmp_path / "checkpoint").mkdir()
    trainer = stream_trainer(one_image_per_class, tmp_path / "c")
    with pytest.raises(ValueError, match=r"has no saved stream state .* or written with --save_only_model"):
        trainer._load_stream_state(str(tmp_path / "checkpoint"))


class RunsCodeWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_a_stream_state_that_would_run_code_is_refused_without_running_it(one_image_per_class, tmp_path):
    from lape_hf.training.trainer import STREAM_STATE_NAME

    (tmp_path / "checkpoint").mkdir()
    marker = tmp_path / "marker"
    torch.save(
        {"settings": {}, "loader": RunsCodeWhenUnpickled(marker)},
        tmp_path / "checkpoint" / STREAM_STATE_NAME.format(rank=0),
    )
    trainer = stream_trainer(one_image_per_class, tmp_path / "c")
    with pytest.raises(ValueError, match=r"stream_state_rank0.pt cannot be read as a stream state"):
        trainer._load_stream_state(str(tmp_path / "checkpoint"))
    assert not marker.exists()


def test_a_missing_stream_state_of_this_process_is_refused_when_the_process_count_is_unchanged(
    one_image_per_class, tmp_path, monkeypatch
):
    """Process 1 of 2 without its own file must not take process 0's buffer and positions (of other shards); with
    its file it resumes."""
    import transformers

    from lape_hf.training.trainer import STREAM_STATE_NAME

    stopped = stream_trainer(one_image_per_class, tmp_path / "b")
    batch_labels(stopped, 2)
    stopped._save_rng_state(str(tmp_path / "checkpoint"))
    first = tmp_path / "checkpoint" / STREAM_STATE_NAME.format(rank=0)
    saved = torch.load(first, weights_only=True)
    torch.save({**saved, "settings": {**saved["settings"], "processes": 2}}, first)
    resumed = stream_trainer(one_image_per_class, tmp_path / "c")
    monkeypatch.setattr(transformers.TrainingArguments, "process_index", property(lambda self: 1))
    monkeypatch.setattr(transformers.TrainingArguments, "world_size", property(lambda self: 2))
    with pytest.raises(ValueError, match=r"has no stream_state_rank1.pt, although it was saved by 2 processes"):
        resumed._load_stream_state(str(tmp_path / "checkpoint"))
    (tmp_path / "checkpoint" / STREAM_STATE_NAME.format(rank=1)).write_bytes(first.read_bytes())
    assert resumed._load_stream_state(str(tmp_path / "checkpoint")) == saved["loader"]


@pytest.mark.parametrize("damage", ["truncated", "empty", "a list", "settings not a dict", "no loader"])
def test_a_damaged_stream_state_is_refused_naming_its_path(one_image_per_class, tmp_path, damage):
    from lape_hf.training.trainer import STREAM_STATE_NAME

    stopped = stream_trainer(one_image_per_class, tmp_path / "b")
    batch_labels(stopped, 2)
    stopped._save_rng_state(str(tmp_path / "checkpoint"))
    path = tmp_path / "checkpoint" / STREAM_STATE_NAME.format(rank=0)
    saved = torch.load(path, weights_only=True)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        wrong = {
            "a list": [saved["settings"], saved["loader"]],
            "settings not a dict": {**saved, "settings": 3},
            "no loader": {"settings": saved["settings"]},
        }[damage]
        torch.save(wrong, path)
    trainer = stream_trainer(one_image_per_class, tmp_path / "c")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} cannot be read as a stream state: it (is|holds)"):
        trainer._load_stream_state(str(tmp_path / "checkpoint"))


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("--dataloader_in_order=false", r"needs --dataloader_in_order true: .*dataloader_in_order=False"),
        ('--accelerator_config={"split_batches": true}', r"cannot use accelerator_config split_batches=True"),
    ],
)
def test_trainer_settings_a_stream_cannot_honour_are_refused_before_anything_is_written(
    pattern_folders, tmp_path, argument, message
):
    train_dir, val_dir = pattern_folders
    with pytest.raises(ValueError, match=message):
        train(
            f"--train_dir={train_dir}",
            f"--validation_dir={val_dir}",
            "--data_mode=streaming",
            "--max_steps=2",
            argument,
            f"--output_dir={tmp_path / 'out'}",
        )
    assert not (tmp_path / "out").exists()


def test_a_stream_run_with_the_default_save_strategy_checkpoints_at_max_steps_and_resumes(
    one_image_per_class, tmp_path
):
    """The default save_strategy "epoch": training stops at max_steps inside the stream's one endless epoch, and the
    Trainer's end of that epoch saves checkpoint-<max_steps>, on a worker snapshot; it resumes the stream where the
    run stopped (the next batches are the uninterrupted stream's)."""
    assert parse("--output_dir=unused")[3].save_strategy.value == "epoch"
    strategy = ["--save_strategy=epoch", "--max_steps=3", "--eval_strategy=no"]
    uninterrupted = batch_labels(stream_trainer(one_image_per_class, tmp_path / "a", *strategy), 8)
    stopped = stream_trainer(one_image_per_class, tmp_path / "b", *strategy)
    stopped.train()
    checkpoints = sorted(path.name for path in (tmp_path / "b").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-3"]
    resumed = stream_trainer(one_image_per_class, tmp_path / "c", *strategy)
    resumed._stream_resume_state = resumed._load_stream_state(str(tmp_path / "b" / "checkpoint-3"))
    assert batch_labels(resumed, 5) == uninterrupted[3:]


def test_a_stream_runs_final_checkpoint_between_snapshots_resumes_by_replaying(one_image_per_class, tmp_path):
    """save_steps=2, max_steps=3: the Trainer also saves at max_steps, between the workers' snapshots (every 2
    batches); resuming from it replays the batch since the snapshot and continues as the uninterrupted stream."""
    strategy = ["--save_strategy=steps", "--save_steps=2", "--max_steps=3", "--eval_strategy=no"]
    uninterrupted = batch_labels(stream_trainer(one_image_per_class, tmp_path / "a", *strategy), 8)
    stopped = stream_trainer(one_image_per_class, tmp_path / "b", *strategy)
    stopped.train()
    assert sorted(path.name for path in (tmp_path / "b").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    resumed = stream_trainer(one_image_per_class, tmp_path / "c", *strategy)
    resumed._stream_resume_state = resumed._load_stream_state(str(tmp_path / "b" / "checkpoint-3"))
    assert batch_labels(resumed, 5) == uninterrupted[3:]


@pytest.mark.parametrize(("strategy", "checkpoints"), [("no", []), ("epoch", ["checkpoint-1"])])
def test_a_ctrl_c_stop_checkpoints_a_stream_unless_save_strategy_is_no(
    one_image_per_class, tmp_path, strategy, checkpoints
):
    """Ctrl-C (the callback's flag, set before the first step) stops after step 1 with a checkpoint of it, except
    with save_strategy no: then there is nothing to resume from."""
    trainer = stream_trainer(one_image_per_class, tmp_path, f"--save_strategy={strategy}", "--eval_strategy=no")
    trainer.interrupt.requested = True
    trainer.train()
    assert trainer.state.global_step == 1
    assert sorted(path.name for path in tmp_path.glob("checkpoint-*")) == checkpoints


def test_a_resumed_stream_does_not_read_the_examples_it_already_trained_on(one_image_per_class, tmp_path):
    """The images of the 2 batches trained before the checkpoint are made undecodable before resuming: the resumed
    run (which stops on an undecodable image) reads on without them, as the uninterrupted run's next 4 batches."""
    uninterrupted = batch_labels(stream_trainer(one_image_per_class, tmp_path / "a"), 6)
    stopped = stream_trainer(one_image_per_class, tmp_path / "b")
    consumed = [label for batch in batch_labels(stopped, 2) for label in batch]
    stopped._save_rng_state(str(tmp_path / "checkpoint"))
    for label in consumed:
        (one_image_per_class / f"c{label:02d}" / "image.png").write_bytes(b"consumed: unreadable now")
    resumed = stream_trainer(one_image_per_class, tmp_path / "c")
    resumed._stream_resume_state = resumed._load_stream_state(str(tmp_path / "checkpoint"))
    assert batch_labels(resumed, 4) == uninterrupted[2:]
    fresh = stream_trainer(one_image_per_class, tmp_path / "d")
    with pytest.raises(ValueError, match=r"c\d\d.image\.png.* cannot be decoded"):
        batch_labels(fresh, 6)  # the same stream from its start does meet them


def test_a_corrupt_image_mid_stream_stops_the_run_naming_it(pattern_folders, tmp_path):
    train_dir, val_dir = pattern_folders
    broken = tmp_path / "train"
    for path in sorted(train_dir.rglob("*.png")):
        (broken / path.parent.name).mkdir(parents=True, exist_ok=True)
        (broken / path.parent.name / path.name).symlink_to(path)
    (broken / "checker" / "zz-broken.png").write_bytes(b"not a png")
    recipe = [f"--train_dir={broken}", f"--validation_dir={val_dir}", "--data_mode=streaming", "--max_steps=12"]
    with pytest.raises(ValueError, match=r"zz-broken\.png.* of split 'train' cannot be decoded.*--skip_corrupt"):
        train(*recipe, f"--output_dir={tmp_path / 'strict'}")
    results = train(*recipe, "--skip_corrupt_images=true", f"--output_dir={tmp_path / 'lenient'}")
    assert results["dataset"]["data_mode"] == "streaming"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["on_the_fly", "streaming"])
def test_two_processes_see_every_example_exactly_once_per_pass(pattern_folders, tmp_path, mode):
    train_dir, val_dir = pattern_folders
    root = Path(__file__).resolve().parent.parent
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes=2",
            "--num_machines=1",
            "--mixed_precision=no",
            "--dynamo_backend=no",
            str(root / "tests" / "two_process_pass.py"),
            *(["--batches=9"] if mode == "streaming" else []),  # a stream has no end: its pass is 9 batches of 4
            "--config_overrides=image_size=16,patch_size=4,hidden_size=32,num_hidden_layers=1,num_attention_heads=2,"
            "intermediate_size=64",
            f"--train_dir={train_dir}",
            f"--validation_dir={val_dir}",
            f"--data_mode={mode}",
            f"--output_dir={tmp_path}",
            "--max_steps=100",
            "--per_device_train_batch_size=4",
            "--random_resized_crop=false",
            "--horizontal_flip=false",
            "--rand_augment=false",
            "--random_erasing=0",
            "--mixup=0",
            "--cutmix=0",
            "--dataloader_num_workers=0",
            "--torch_num_threads=1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    seen = [json.loads((tmp_path / f"pass_rank{rank}.json").read_text()) for rank in (0, 1)]
    # 72 distinct training images (3 classes x 24): each read by exactly one of the two processes, half each.
    assert [len(part) for part in seen] == [36, 36]
    hashes = [digest for part in seen for digest, _ in part]
    assert len(set(hashes)) == 72
    assert sorted(label for part in seen for _, label in part) == sorted([0, 1, 2] * 24)


@pytest.mark.parametrize(
    ("image_size", "requested", "expected"),
    [
        (16, "auto", "resize"),
        (224, "auto", "center_crop"),
        (224, "resize", "resize"),
        (32, "center_crop", "center_crop"),
    ],
)
def test_the_eval_geometry_follows_the_resolution_unless_asked(image_size, requested, expected):
    from lape_hf.training.arguments import DataArguments
    from lape_hf.training.run import with_eval_geometry

    config = tiny_config(image_size=image_size, patch_size=4 if image_size < 64 else 16)
    processor = with_eval_geometry(build_image_processor(config), config, DataArguments(eval_geometry=requested))
    assert eval_geometry(processor) == expected
    pixels = processor(images=natural_like(0, size=(300, 200)), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, image_size, image_size)


def test_bad_data_arguments_name_the_value_and_what_is_allowed():
    from lape_hf.training.arguments import DataArguments

    with pytest.raises(ValueError, match="data_mode='fast' is not one of auto, prepared, on_the_fly, streaming"):
        DataArguments(data_mode="fast")
    with pytest.raises(ValueError, match="eval_geometry='crop' is not one of auto, resize, center_crop"):
        DataArguments(eval_geometry="crop")
    with pytest.raises(ValueError, match=r"crop_pct=1\.5 must be in \(0, 1\]"):
        DataArguments(crop_pct=1.5)
