"""The one decode rule for an image file, used by training, evaluation and `lape_hf.predict`.

It is what `pipeline("image-classification")` does with a file path (transformers' `load_image`): open the file,
apply the EXIF orientation (`PIL.ImageOps.exif_transpose`), convert to RGB (alpha is dropped, not composited;
palette, CMYK and grayscale images get PIL's conversion; an animated GIF gives its first frame). One deliberate
difference: 16-bit grayscale ("I;16*" and "I" modes) is scaled to 8 bits (value / 257, rounded), where PIL's
`convert("RGB")`, and so `load_image`, clips every value above 255 to white. Files are opened by
`datasets.Image().decode_example`, the decoder of dataset image cells, which also reads whole files (so truncated
data fails here, not later) and applies the EXIF orientation.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
from datasets import Image

# What opening and decoding an image can raise for a file that is not a readable image: missing or unreadable
# (OSError), not an image or an unknown format (PIL's UnidentifiedImageError is an OSError; ValueError,
# SyntaxError), truncated (OSError, EOFError), or too large to decode safely (DecompressionBombError).
UNREADABLE_IMAGE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    PIL.Image.DecompressionBombError,
)
SIXTEEN_BIT_GRAY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_DECODER = Image()


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """An opened image as the model's input: upright by its EXIF orientation, 16-bit gray scaled, RGB."""
    image = PIL.ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT_GRAY_MODES:
        # 65535 / 255 = 257 exactly: an 8-bit value v stored as v * 257 comes back as v.
        values = np.clip(np.asarray(image, dtype=np.float64), 0, 65535)
        image = PIL.Image.fromarray(np.rint(values / 257.0).astype(np.uint8), mode="L")
    return image.convert("RGB")


def decode_image(source: str | os.PathLike | bytes | dict[str, Any] | PIL.Image.Image) -> PIL.Image.Image:
    """Decode a file path, file bytes, a dataset image cell (`{"path", "bytes"}`) or a PIL image, by the one rule.

    Raises one of `UNREADABLE_IMAGE_ERRORS` when the source is not a readable image.
    """
    if isinstance(source, (str, os.PathLike)):
        source = {"path": os.fspath(source), "bytes": None}
    elif isinstance(source, bytes):
        source = {"path": None, "bytes": source}
    elif isinstance(source, dict):
        if source.get("bytes") is None and not source.get("path"):
            raise ValueError("not an image: a dataset cell without bytes or a path")
        source = {"path": source.get("path"), "bytes": source.get("bytes")}
    elif not isinstance(source, PIL.Image.Image):
        raise ValueError(f"not an image: a {type(source).__name__}")
    opened = _DECODER.decode_example(source)  # a PIL image passes through unchanged
    opened.load()  # PIL opens lazily: truncated or corrupt pixel data only fails here
    image = to_rgb(opened)  # always a new image
    if opened is not source:
        opened.close()  # a multi-frame file (animated GIF) keeps its file open until closed
    return image


__all__ = ["SIXTEEN_BIT_GRAY_MODES", "UNREADABLE_IMAGE_ERRORS", "decode_image", "to_rgb"]
