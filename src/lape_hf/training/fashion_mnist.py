"""Fashion-MNIST (Xiao et al. 2017, MIT) from the official IDX files, as a `datasets.DatasetDict`.

The system package `dataset-fashion-mnist` puts the four official files in `/usr/share/datasets/fashion-mnist/`;
`load_fashion_mnist_dataset` reads them with numpy (no network) and returns the official split: "train" (60,000
images) and "test" (10,000), 28x28 grayscale, 10 classes.
"""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import numpy as np
import PIL.Image
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

FASHION_MNIST_DATASET_NAME = "fashion-mnist"
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = "apt-get install dataset-fashion-mnist"
FASHION_MNIST_LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
# split -> (images file, labels file, number of examples)
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000),
}
IDX_UBYTE_TYPE = 0x08  # the only element type the Fashion-MNIST files use


def read_idx(path: str | os.PathLike, num_dims: int) -> np.ndarray:
    """An IDX file (gzip-compressed or not) of unsigned bytes with `num_dims` dimensions, as a uint8 array.

    The header is two zero bytes, the element type (0x08: unsigned byte), the number of dimensions, then one
    big-endian int32 per dimension; the data follows in C order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            content = file.read()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot read the IDX file ({error}).") from error
    expected_magic = (IDX_UBYTE_TYPE << 8) | num_dims
    if len(content) < 4 + 4 * num_dims:
        raise ValueError(f"{path}: {len(content)} bytes is too short for an IDX header with {num_dims} dimension(s).")
    magic = int.from_bytes(content[:4], "big")
    if magic != expected_magic:
        raise ValueError(
            f"{path}: magic number 0x{magic:08x}, expected 0x{expected_magic:08x} (unsigned bytes, {num_dims} "
            "dimension(s)); not the IDX file expected here."
        )
    shape = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(num_dims))
    data = np.frombuffer(content, dtype=np.uint8, offset=4 + 4 * num_dims)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: the header announces shape {shape} but the file holds {data.size} data bytes.")
    return data.reshape(shape)


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(image, mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def load_fashion_mnist_split(
    images_path: str | os.PathLike, labels_path: str | os.PathLike, expected_count: int | None = None
) -> Dataset:
    """One split from its images and labels IDX files, checked against each other (and `expected_count`)."""
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images_path} holds {images.shape[0]} images but {labels_path} {labels.shape[0]} labels.")
    if expected_count is not None and images.shape[0] != expected_count:
        raise ValueError(f"{images_path}: {images.shape[0]} images, expected {expected_count}.")
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: images of shape {images.shape[1:]}, expected (28, 28).")
    if labels.size and labels.max() >= len(FASHION_MNIST_LABELS):
        raise ValueError(f"{labels_path}: label {labels.max()} is outside 0..{len(FASHION_MNIST_LABELS) - 1}.")
    features = Features({"image": Image(), "label": ClassLabel(names=FASHION_MNIST_LABELS)})
    return Dataset.from_dict(
        {
            "image": [{"bytes": _png_bytes(image), "path": None} for image in images],
            "label": labels.astype(np.int64).tolist(),
        },
        features=features,
    )


def load_fashion_mnist_dataset(data_dir: str | os.PathLike | None = None, check_counts: bool = True) -> DatasetDict:
    """The official Fashion-MNIST split ("train" 60,000, "test" 10,000) from the IDX files in `data_dir`.

    `data_dir` defaults to where `apt-get install dataset-fashion-mnist` puts them. Images are 28x28 grayscale
    ("L" PNGs in an `Image()` column), labels a `ClassLabel` with the ten class names. `check_counts=False`
    accepts files of other sizes (tests).
    """
    directory = Path(data_dir if data_dir is not None else DEFAULT_FASHION_MNIST_DIR)
    missing = [
        name
        for images, labels, _ in FASHION_MNIST_FILES.values()
        for name in (images, labels)
        if not (directory / name).is_file()
    ]
    if missing:
        raise ValueError(
            f"Fashion-MNIST files {missing} are not in {str(directory)!r}: run `{INSTALL_HINT}` (puts them in "
            f"{DEFAULT_FASHION_MNIST_DIR}) or pass --data_dir with the directory that holds them."
        )
    return DatasetDict(
        {
            split: load_fashion_mnist_split(
                directory / images, directory / labels, expected_count=count if check_counts else None
            )
            for split, (images, labels, count) in FASHION_MNIST_FILES.items()
        }
    )
