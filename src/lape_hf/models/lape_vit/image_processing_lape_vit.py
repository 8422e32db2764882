"""The image processor saved beside every LapeViT model: one of transformers' own, configured from the model config
so that `pipeline("image-classification")` takes PIL images of any size and mode (L, RGBA, RGB).

Two evaluation geometries, recorded in the saved `preprocessor_config.json` (never guessed at load time):
- a straight resize to the model's resolution (`ViTImageProcessor`): small images (digits, MNIST-like, CIFAR-like);
- DeiT's: resize the shorter side to `image_size / crop_pct`, then a centre crop of the model's resolution
  (`DeiTImageProcessor` with `size={"shortest_edge": ...}` and `crop_size`; DeiT's `crop_pct` is 0.875, i.e. 256 then
  224): natural images, as the model was trained on crops of them.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import BaseImageProcessor, DeiTImageProcessor, ViTImageProcessor
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

from .configuration_lape_vit import LapeViTConfig

DEIT_CROP_PCT = 0.875
EVAL_GEOMETRIES = ("resize", "center_crop")


def build_image_processor(
    config: LapeViTConfig,
    image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
    resample: PILImageResampling = PILImageResampling.BICUBIC,
    crop_pct: float | None = None,
) -> ViTImageProcessor | DeiTImageProcessor:
    """Resize to `config.image_size` (or with `crop_pct`: shorter side to `image_size / crop_pct`, then centre crop),
    convert any mode to RGB, rescale to [0, 1] and normalize (DeiT's defaults)."""
    if config.num_channels != 3:
        raise ValueError(
            f"The ViT image processor makes RGB images; the model has num_channels={config.num_channels} (allowed: 3)."
        )
    height, width = config.image_size_2d
    common = dict(resample=resample, image_mean=list(image_mean), image_std=list(image_std), do_convert_rgb=True)
    if crop_pct is None:
        return ViTImageProcessor(size={"height": height, "width": width}, **common)
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct={crop_pct!r} must be in (0, 1] (DeiT: {DEIT_CROP_PCT}).")
    return DeiTImageProcessor(
        size={"shortest_edge": int(max(height, width) / crop_pct)},
        crop_size={"height": height, "width": width},
        do_center_crop=True,
        **common,
    )


def eval_geometry(image_processor: BaseImageProcessor) -> str:
    """ "center_crop" when the processor crops after resizing, else "resize" (as recorded in its config)."""
    return "center_crop" if getattr(image_processor, "do_center_crop", False) else "resize"


def output_size(image_processor: BaseImageProcessor) -> tuple[int, int]:
    """(height, width) of the images the processor makes: its crop size when it crops, else its resize target."""
    size = image_processor.crop_size if eval_geometry(image_processor) == "center_crop" else image_processor.size
    return size["height"], size["width"]
