"""Classifying local image files with a LapeViT model (a directory or a Hub id) through transformers' pipeline.

Inputs are files, folders (searched recursively for images) and glob patterns; URLs are refused, so nothing is
fetched. Images are decoded here, one by one, so that a file that cannot be read is reported with its path and the
reason while every other file is still classified; the readable ones go to the pipeline in batches.
"""

from __future__ import annotations

import csv
import glob
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from PIL import Image
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    ImageClassificationPipeline,
    pipeline,
)

from .atomic_files import atomic_write, check_writable_dir
from .cli import one_line
from .images import UNREADABLE_IMAGE_ERRORS, decode_image

# What loading a model directory or Hub id raises for a path or id that cannot be loaded (transformers' OSError
# naming the missing file or id, a ValueError for a config it cannot read) or for damaged weights (SafetensorError).
MODEL_LOADING_ERRORS = (OSError, ValueError, SafetensorError)

IMAGE_EXTENSIONS = frozenset(
    {".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}
)  # what a folder or a glob contributes; a file named explicitly is always tried
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float


@dataclass(frozen=True)
class ImageResult:
    """The top-k predictions for one file, or why it could not be classified."""

    path: str
    predictions: list[Prediction] = field(default_factory=list)
    error: str | None = None


def find_images(inputs: Sequence[str]) -> list[str]:
    """Expand files, folders and globs into image paths, in the given order, each once.

    A path that does not exist is kept (and reported as unreadable later) rather than stopping the run; a URL or a
    glob that matches nothing is a usage error.
    """
    if not inputs:
        raise ValueError("No inputs: give image files, folders or glob patterns.")
    found: dict[str, None] = {}
    for item in inputs:
        if _URL.match(item):
            raise ValueError(f"{item!r} is a URL; only local files, folders and globs are classified (download it).")
        path = Path(item)
        if path.is_dir():
            matches = [str(p) for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
            if not matches:
                raise ValueError(f"The folder {item!r} contains no images ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
        elif _GLOB_CHARACTERS & set(item) and not path.exists():
            matches = [
                match
                for match in sorted(glob.glob(item, recursive=True))
                if Path(match).is_file() and Path(match).suffix.lower() in IMAGE_EXTENSIONS
            ]
            if not matches:
                raise ValueError(f"The pattern {item!r} matches no image files.")
        else:
            matches = [item]
        found.update(dict.fromkeys(matches))
    return list(found)


def read_image(path: str) -> Image.Image:
    """Decode a file by the one rule training used (`lape_hf.images.decode_image`), failing here, not mid-batch."""
    return decode_image(path)


def load_classifier(
    model: str,
    *,
    revision: str | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
) -> ImageClassificationPipeline:
    """An image-classification pipeline for a model directory or Hub id (`import lape_hf` has registered LapeViT).

    The config, the weights and the image processor are loaded one by one, so that a model that cannot be loaded (a
    missing or incomplete directory, truncated weights, a corrupt config, an unknown Hub id) is a one-line
    `ValueError` naming the part that failed, not pipeline()'s list of tracebacks.
    """
    if not _URL.match(model) and Path(model).exists() and not Path(model).is_dir():
        raise ValueError(f"--model {model!r} is a file; give a model directory (save_pretrained output) or a Hub id.")
    options = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(model, **options)
        weights = AutoModelForImageClassification.from_pretrained(model, config=config, **options)
        image_processor = AutoImageProcessor.from_pretrained(model, **options)
    except MODEL_LOADING_ERRORS as error:
        raise ValueError(f"cannot load the model {model!r}: {one_line(error)}") from error
    return pipeline("image-classification", model=weights, image_processor=image_processor, device=device)


def classify_images(
    classifier: ImageClassificationPipeline, paths: Sequence[str], *, top_k: int = 5, batch_size: int = 8
) -> Iterator[ImageResult]:
    """Yield one result per path, in order: the top-k predictions, or the reason the file could not be read."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k={top_k!r} must be an integer >= 1.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1.")
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images: dict[str, Image.Image] = {}
        errors: dict[str, str] = {}
        for path in chunk:
            try:
                images[path] = read_image(path)
            except UNREADABLE_IMAGE_ERRORS as error:
                errors[path] = f"{type(error).__name__}: {error}"
        outputs = classifier(list(images.values()), top_k=top_k, batch_size=batch_size) if images else []
        predictions = dict(zip(images, outputs, strict=True))
        for path in chunk:
            if path in errors:
                yield ImageResult(path=path, error=errors[path])
            else:
                yield ImageResult(
                    path=path,
                    predictions=[Prediction(item["label"], float(item["score"])) for item in predictions[path]],
                )


# ---------------------------------------------------------------------------------------------------------------------
# Output: a table on the terminal, or JSON / CSV files
# ---------------------------------------------------------------------------------------------------------------------
def format_table(results: Sequence[ImageResult]) -> str:
    rows = [("path", "rank", "label", "score")]
    for result in results:
        if result.error is not None:
            rows.append((result.path, "-", "UNREADABLE", result.error))
        for rank, prediction in enumerate(result.predictions, start=1):
            rows.append((result.path, str(rank), prediction.label, f"{prediction.score:.4f}"))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + "  " + row[3]
        for row in rows
    )


def write_json(results: Sequence[ImageResult], stream: IO[str]) -> None:
    json.dump([asdict(result) for result in results], stream, indent=2)
    stream.write("\n")


def write_csv(results: Sequence[ImageResult], stream: IO[str]) -> None:
    """One row per prediction (path, rank, label, score), and one row with the error for an unreadable file."""
    writer = csv.writer(stream)
    writer.writerow(["path", "rank", "label", "score", "error"])
    for result in results:
        if result.error is not None:
            writer.writerow([result.path, "", "", "", result.error])
        for rank, prediction in enumerate(result.predictions, start=1):
            writer.writerow([result.path, rank, prediction.label, f"{prediction.score:.6f}", ""])


OUTPUT_FORMATS = {".json": write_json, ".csv": write_csv}


def check_writable(path: Path) -> None:
    """Fail before any work when `path`'s folder cannot be created or written to (a `PermissionError` naming it)."""
    check_writable_dir(path.parent)


def write_results(results: Sequence[ImageResult], path: Path) -> None:
    """Write `results` in the format `path`'s suffix names, to a temporary file moved into place when complete."""
    check_writable(path)
    with atomic_write(path, newline="") as stream:
        OUTPUT_FORMATS[path.suffix.lower()](results, stream)


__all__ = [
    "IMAGE_EXTENSIONS",
    "MODEL_LOADING_ERRORS",
    "OUTPUT_FORMATS",
    "ImageResult",
    "Prediction",
    "check_writable",
    "classify_images",
    "find_images",
    "format_table",
    "load_classifier",
    "read_image",
    "write_csv",
    "write_json",
    "write_results",
]
