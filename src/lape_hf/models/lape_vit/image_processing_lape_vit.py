"""The image processor saved beside every LapeViT model: transformers' own ViTImageProcessor, configured from the
model config so that `pipeline("image-classification")` takes PIL images of any size and mode (L, RGBA, RGB)."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import ViTImageProcessor
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

from .configuration_lape_vit import LapeViTConfig


def build_image_processor(
    config: LapeViTConfig,
    image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
    resample: PILImageResampling = PILImageResampling.BICUBIC,
) -> ViTImageProcessor:
    """Resize to `config.image_size`, convert any mode to RGB, rescale to [0, 1] and normalize (DeiT's defaults)."""
    if config.num_channels != 3:
        raise ValueError(
            f"The ViT image processor makes RGB images; the model has num_channels={config.num_channels} (allowed: 3)."
        )
    height, width = config.image_size_2d
    return ViTImageProcessor(
        size={"height": height, "width": width},
        resample=resample,
        image_mean=list(image_mean),
        image_std=list(image_std),
        do_convert_rgb=True,
    )
