#!/usr/bin/env python3
"""The data paths at scale, measured: an image folder of natural-size JPEGs, DeiT-Ti at 224, per data mode.

    python scripts/benchmark_data.py --image_dir /tmp/jpegs --num_images 20000      # make the folder (once)
    python scripts/benchmark_data.py --image_dir /tmp/jpegs --measure                # print the figures

The JPEGs (500x375, quality 90) are made from scikit-image's sample photographs (`skimage.data`: astronaut, coffee,
chelsea, rocket, ...), each a random crop (20-100% of the area), rotation (-30..30 degrees) and flip of one of them,
sorted into 10 class folders: real picture content, offline. Measured:
- decode + augment images/s of one dataloader worker (the on-the-fly path's work per image);
- per mode (prepared, on_the_fly) and per folder size (the first 5,000 and all images): bytes written to disk (the
  datasets cache and the output directory), peak RSS of the run and its workers, seconds from start to the first
  training step, and the data-wait fraction of a short training run with 1 and 2 dataloader workers.
Runs are short (--max_steps, default 30) because the machine is shared; figures are printed as a Markdown table and
written to --output_file as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image

from lape_hf.cli import parse_args, script

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "hubble_deep_field")
JPEG_SIZE = (500, 375)
EVAL_IMAGES = 64  # the validation folder of every run (the last images made)
# Runs a command and prints, last on stderr, the peak RSS (KiB) of the largest process it started (the training
# process or one of its dataloader workers): RUSAGE_CHILDREN of a fresh wrapper covers exactly that run.
PEAK_RSS_WRAPPER = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)"
)


@dataclass
class BenchmarkDataArguments:
    image_dir: str = field(metadata={"help": "The JPEG folder (made with --num_images, read with --measure)."})
    num_images: int = field(default=0, metadata={"help": "Make this many JPEGs in --image_dir first."})
    measure: bool = field(default=False, metadata={"help": "Run the measurements."})
    sizes: str = field(default="5000,20000", metadata={"help": "Folder sizes (first N images) to train on."})
    modes: str = field(default="prepared,on_the_fly,streaming", metadata={"help": "Data modes to measure."})
    workers: str = field(
        default="1,2", metadata={"help": "Dataloader workers: every count at the first size, the first count after."}
    )
    max_steps: int = field(default=30, metadata={"help": "Training steps per run (short: the machine is shared)."})
    batch_size: int = field(default=32, metadata={"help": "Per-device batch size."})
    output_file: str = field(default="outputs/benchmark/data.json", metadata={"help": "Where the figures go."})


def sample_photos() -> list[PIL.Image.Image]:
    """The scikit-image sample photographs that ship with the wheel (those that need a download are skipped)."""
    import skimage.data

    photos = []
    for name in SAMPLE_PHOTOS:
        try:
            pixels = getattr(skimage.data, name)()
        except Exception:  # noqa: BLE001 - a sample that must be downloaded: offline, skip it
            continue
        photos.append(PIL.Image.fromarray(pixels).convert("RGB"))
    if not photos:
        raise ValueError("scikit-image has no sample photographs offline; pip install scikit-image.")
    return photos


def make_images(directory: Path, count: int, seed: int = 0) -> None:
    """`count` JPEGs of 500x375 in 10 class folders, each a random crop, rotation and flip of a sample photo."""
    rng = np.random.default_rng(seed)
    photos = sample_photos()
    for index in range(count):
        photo = photos[index % len(photos)]
        rotated = photo.rotate(float(rng.uniform(-30, 30)), resample=PIL.Image.Resampling.BILINEAR, expand=False)
        width, height = rotated.size
        scale = np.sqrt(rng.uniform(0.2, 1.0))
        crop_width, crop_height = int(width * scale), int(height * scale)
        left, top = int(rng.integers(0, width - crop_width + 1)), int(rng.integers(0, height - crop_height + 1))
        image = rotated.crop((left, top, left + crop_width, top + crop_height)).resize(JPEG_SIZE, PIL.Image.BICUBIC)
        if rng.random() < 0.5:
            image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
        folder = directory / f"class_{index % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:06d}.jpg", quality=90)


def subset_folders(image_dir: Path, count: int, root: Path) -> tuple[Path, Path]:
    """Train and validation folders of links: the first `count` images (sorted by name) and the last
    `EVAL_IMAGES`, class folders kept."""
    files = sorted(image_dir.glob("class_*/*.jpg"), key=lambda path: path.name)  # classes interleaved
    if len(files) < count + EVAL_IMAGES:
        raise ValueError(f"{image_dir} holds {len(files)} JPEGs, fewer than {count} + {EVAL_IMAGES}; make more.")
    folders = (root / f"first_{count}" / "train", root / f"first_{count}" / "val")
    for folder, chosen in zip(folders, (files[:count], files[-EVAL_IMAGES:]), strict=True):
        for path in chosen:
            (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
            (folder / path.parent.name / path.name).symlink_to(path)
    return folders


def decode_augment_rate(image_dir: Path, count: int = 200) -> float:
    """Images/s of one worker: decode a JPEG (the one rule) and DeiT's crop/flip/RandAugment to 224 px."""
    import torch
    from datasets import ClassLabel, Dataset, Features, Image

    from lape_hf.models.lape_vit.configuration_lape_vit import LapeViTConfig
    from lape_hf.models.lape_vit.image_processing_lape_vit import build_image_processor
    from lape_hf.training.data_modes import DecodeErrors, OnTheFlyDataset
    from lape_hf.training.transforms import AugmentationArguments, build_train_transform

    torch.set_num_threads(1)  # a dataloader worker runs single-threaded
    files = sorted(image_dir.glob("class_*/*.jpg"), key=lambda path: path.name)[:count]
    split = Dataset.from_dict(
        {"image": [str(path) for path in files], "label": [0] * len(files)},
        features=Features({"image": Image(), "label": ClassLabel(names=["any"])}),
    )
    count = len(split)
    processor = build_image_processor(LapeViTConfig.from_preset("deit-tiny", num_labels=10), crop_pct=0.875)
    transform = build_train_transform(AugmentationArguments(), processor, horizontal_flip=True, from_original=True)
    dataset = OnTheFlyDataset(split, processor, DecodeErrors(False, "train"), transform, seed=0)
    start = time.perf_counter()
    for first in range(0, count, 32):
        dataset.__getitems__(list(range(first, min(first + 32, count))))
    return count / (time.perf_counter() - start)


def directory_bytes(path: Path) -> int:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file() and not item.is_symlink())


def training_run(
    folders: tuple[Path, Path], size: int, mode: str, workers: int, args: BenchmarkDataArguments, scratch: Path
) -> dict:
    """One short run of scripts/train.py in a fresh process with its own datasets cache: its figures."""
    cache, output = scratch / f"cache_{mode}_{workers}", scratch / f"out_{mode}_{workers}"
    command = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        "--preset=deit-tiny",
        f"--train_dir={folders[0]}",
        f"--validation_dir={folders[1]}",
        f"--data_mode={mode}",
        f"--output_dir={output}",
        f"--max_steps={args.max_steps}",
        f"--per_device_train_batch_size={args.batch_size}",
        f"--dataloader_num_workers={workers}",
        "--eval_strategy=no",
        "--save_strategy=no",
        "--torch_num_threads=1",
        "--logging_steps=1000",
        "--disable_tqdm=true",
    ]
    environment = {**os.environ, "HF_DATASETS_CACHE": str(cache)}
    start = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_WRAPPER, *command], env=environment, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    peak_rss = int(completed.stderr.strip().splitlines()[-1])  # KiB
    results = json.loads((output / "results.json").read_text())
    timing = results["timing"]
    written = directory_bytes(cache) if cache.exists() else 0
    return {
        "mode": results["dataset"]["data_mode"],
        "images": size,
        "workers": workers,
        "bytes_written_cache": written,
        "bytes_written_output": directory_bytes(output),
        "peak_rss_mib": peak_rss / 1024,
        "seconds_to_first_step": timing["data_preparation_seconds"],
        "train_seconds": timing["train_runtime_seconds"],
        "seconds_per_step": timing["train_runtime_seconds"] / args.max_steps,
        "data_wait_fraction": timing["data_wait_fraction"],
        "wall_seconds": wall,
    }


@script
def main(argv: list[str] | None = None) -> int:
    args = parse_args(BenchmarkDataArguments, argv, description=__doc__)
    image_dir = Path(args.image_dir)
    if args.num_images:
        make_images(image_dir, args.num_images)
        print(f"{args.num_images} JPEGs of {JPEG_SIZE[0]}x{JPEG_SIZE[1]} in {image_dir}")
    if not args.measure:
        return 0
    figures: dict = {"decode_augment_images_per_second_per_worker": decode_augment_rate(image_dir), "runs": []}
    print(f"decode + augment (224 px, one worker): {figures['decode_augment_images_per_second_per_worker']:.1f} img/s")
    print(
        "| mode | images | workers | written: datasets cache (MB) | written: output dir (MB) | peak RSS (MiB) "
        "| s to first step | s/step | data wait |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        worker_counts = [int(item) for item in args.workers.split(",")]
        for position, size in enumerate(int(item) for item in args.sizes.split(",")):
            folders = subset_folders(image_dir, size, scratch / "folders")
            for mode in args.modes.split(","):
                for workers in worker_counts if position == 0 else worker_counts[:1]:
                    run = training_run(folders, size, mode, workers, args, scratch / f"{size}")
                    figures["runs"].append(run)
                    print(
                        f"| {run['mode']} | {run['images']} | {workers} | {run['bytes_written_cache'] / 1e6:.1f} | "
                        f"{run['bytes_written_output'] / 1e6:.0f} | "
                        f"{run['peak_rss_mib']:.0f} | {run['seconds_to_first_step']:.1f} | "
                        f"{run['seconds_per_step']:.2f} | {100 * run['data_wait_fraction']:.1f}% |",
                        flush=True,
                    )
    Path(args.output_file).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output_file).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
