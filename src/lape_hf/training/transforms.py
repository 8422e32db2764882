"""Augmentation (torchvision.transforms.v2): the dataset that applies per-image transforms, and the collator that
normalizes batches and applies random erasing and MixUp/CutMix.

Reproducibility is by construction: every random draw of a training batch (crop, flip, RandAugment, erasing,
MixUp/CutMix) comes from torch's RNG seeded with (training seed, epoch, the batch's example indices), inside
`torch.random.fork_rng` so the global RNG that dropout and drop-path use is left alone. A run resumed mid-epoch from
a checkpoint, or run with a different number of dataloader workers, therefore sees exactly the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import Dataset
from torchvision.transforms import v2
from transformers import BaseImageProcessor, TrainerCallback

from ..models.lape_vit.image_processing_lape_vit import output_size

# Keeps the collator's draws (erasing, MixUp/CutMix) independent of the per-sample draws from the same batch seed.
_BATCH_SEED_SALT = 0x9E3779B97F4A7C15
# Splits whose uint8 pixels fit in this many bytes are held as one tensor: indexing Arrow per batch costs ~0.4 ms
# per image, indexing a tensor almost nothing. Larger splits are read from the (memory-mapped) Arrow table.
DEFAULT_MAX_IN_MEMORY_BYTES = 2**30


@dataclass
class AugmentationArguments:
    """Training-time augmentation, DeiT's recipe by default; every part can be switched off."""

    random_resized_crop: bool = field(
        default=True, metadata={"help": "RandomResizedCrop back to the model's resolution."}
    )
    crop_scale_min: float = field(
        default=0.08, metadata={"help": "Smallest crop area of RandomResizedCrop, as a fraction of the image."}
    )
    horizontal_flip: bool | None = field(
        default=None,
        metadata={"help": "Random horizontal flips. Default: on, except for sklearn-digits (a flip changes a digit)."},
    )
    rand_augment: bool = field(default=True, metadata={"help": "RandAugment (uint8, before normalization)."})
    rand_augment_num_ops: int = field(default=2, metadata={"help": "RandAugment: operations per image."})
    # torchvision's magnitude runs 0..30 where timm's runs 0..10: DeiT's "rand-m9" is 27 here.
    rand_augment_magnitude: int = field(
        default=27, metadata={"help": "RandAugment: magnitude on torchvision's 0..30 scale (DeiT's m9 = 27)."}
    )
    random_erasing: float = field(default=0.25, metadata={"help": "Probability of RandomErasing (0 disables)."})
    mixup: float = field(default=0.8, metadata={"help": "MixUp alpha (0 disables)."})
    cutmix: float = field(default=1.0, metadata={"help": "CutMix alpha (0 disables)."})

    def __post_init__(self) -> None:
        if not 0.0 < self.crop_scale_min <= 1.0:
            raise ValueError(f"crop_scale_min={self.crop_scale_min!r} must be in (0, 1].")
        if self.rand_augment_num_ops < 1:
            raise ValueError(f"rand_augment_num_ops={self.rand_augment_num_ops!r} must be >= 1.")
        if not 0 <= self.rand_augment_magnitude <= 30:
            raise ValueError(f"rand_augment_magnitude={self.rand_augment_magnitude!r} must be in 0..30.")
        if not 0.0 <= self.random_erasing <= 1.0:
            raise ValueError(f"random_erasing={self.random_erasing!r} must be a probability in [0, 1].")
        for name in ("mixup", "cutmix"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be an alpha >= 0 (0 disables it).")


def normalize_transform(image_processor: BaseImageProcessor) -> v2.Transform:
    """The image processor's rescale and normalize, on uint8 tensors it has already resized: the eval transform.

    Fused as the processor fuses them (mean and std divided by the rescale factor), so the result is bit-identical
    to `image_processor(images)["pixel_values"]`.
    """
    scale = 1.0 / image_processor.rescale_factor
    mean = (torch.tensor(image_processor.image_mean) * scale).tolist()
    std = (torch.tensor(image_processor.image_std) * scale).tolist()
    return v2.Compose([v2.ToDtype(torch.float32, scale=False), v2.Normalize(mean=mean, std=std)])


def build_train_transform(
    augmentation: AugmentationArguments,
    image_processor: BaseImageProcessor,
    horizontal_flip: bool,
    from_original: bool = False,
) -> v2.Transform | None:
    """Per-sample training transform to uint8 `(3, H, W)` at the model's resolution (None: nothing to do).

    Prepared data (`from_original=False`): uint8 tensors already at the model's resolution, cropped and resized back
    (bilinear). From the original image (`from_original=True`, the on-the-fly and streaming paths): a decoded PIL
    image of any size, cropped as DeiT does (`RandomResizedCrop` of `crop_scale_min`-100% of the original image,
    ratio 3/4-4/3, bicubic; a bicubic resize when crops are off), then made a uint8 tensor.
    Normalization and random erasing (which follows it) run on the whole batch in the collator: one call per batch
    instead of one per image, which is most of the cost for small images.
    """
    size = output_size(image_processor)
    interpolation = v2.InterpolationMode.BICUBIC if from_original else v2.InterpolationMode.BILINEAR
    steps: list[v2.Transform] = []
    if augmentation.random_resized_crop:
        steps.append(
            v2.RandomResizedCrop(
                size, scale=(augmentation.crop_scale_min, 1.0), interpolation=interpolation, antialias=True
            )
        )
    elif from_original:
        steps.append(v2.Resize(size, interpolation=interpolation, antialias=True))
    if horizontal_flip:
        steps.append(v2.RandomHorizontalFlip())
    if from_original:
        steps.append(v2.PILToTensor())
    if augmentation.rand_augment:
        steps.append(
            v2.RandAugment(num_ops=augmentation.rand_augment_num_ops, magnitude=augmentation.rand_augment_magnitude)
        )
    return v2.Compose(steps) if steps else None


def batch_seed(seed: int, epoch: int, indices: Sequence[int]) -> int:
    """A 63-bit seed that depends on the training seed, the epoch and exactly which examples form the batch."""
    entropy = [int(seed) & 0xFFFFFFFF, int(epoch), *map(int, indices)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def transform_seeded(transform: Callable, images: Sequence, seed: int) -> list:
    """`transform` of each image, its random draws from torch's RNG seeded with `seed` inside `fork_rng` (the global
    RNG that dropout and drop-path use is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [transform(image) for image in images]


class ImageClassificationDataset(torch.utils.data.Dataset):
    """A prepared split (`lape_hf.training.data.prepare_split`) with its per-sample uint8 transform, if any.

    With `seed` set (training), random draws are keyed by (seed, epoch, batch indices) and each example carries
    `augmentation_seed` for the collator's batch-level augmentation; without it (evaluation) the images are returned
    as prepared. Implements `__getitems__` so the DataLoader fetches a whole batch in one read.
    """

    def __init__(
        self,
        split: Dataset,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        seed: int | None = None,
        max_in_memory_bytes: int = DEFAULT_MAX_IN_MEMORY_BYTES,
    ):
        self.transform = transform
        self.seed = seed
        # Shared memory: `set_epoch` in the main process reaches persistent dataloader workers too.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._labels = torch.as_tensor(np.asarray(split.with_format(None)["labels"], dtype=np.int64))
        shape = split.features["pixel_values"].shape
        uint8_pixels = split.with_format("numpy", columns=["pixel_values"], dtype=np.uint8)
        if len(split) * math.prod(shape) <= max_in_memory_bytes:
            self._pixels: torch.Tensor | None = torch.from_numpy(uint8_pixels[:]["pixel_values"])
            self._arrow: Dataset | None = None
        else:
            self._pixels, self._arrow = None, uint8_pixels

    def __len__(self) -> int:
        return len(self._labels)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def _read_pixels(self, indices: list[int]) -> torch.Tensor:
        if self._pixels is not None:
            return self._pixels[indices]
        return torch.from_numpy(self._arrow[indices]["pixel_values"])

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor | int]]:
        indices = [int(index) for index in indices]
        images, labels = self._read_pixels(indices), self._labels[indices].tolist()
        if self.seed is None:
            return [{"pixel_values": image, "labels": label} for image, label in zip(images, labels, strict=True)]
        seed = batch_seed(self.seed, self.epoch, indices)
        if self.transform is not None:
            images = transform_seeded(self.transform, images, seed)
        return [
            {"pixel_values": image, "labels": label, "augmentation_seed": seed}
            for image, label in zip(images, labels, strict=True)
        ]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        return self.__getitems__([index])[0]


class ImageClassificationCollator:
    """Batches uint8 examples into normalized `pixel_values` and `labels`, and augments training batches.

    Normalization is the image processor's (so evaluation batches equal `image_processor(images)`). Training batches
    (examples from a seeded `ImageClassificationDataset`, which carry `augmentation_seed`) then get random erasing
    per image and MixUp or CutMix per batch, with soft `labels` `(batch, num_labels)` when mixed; the loss in
    `lape_hf.training.LapeTrainer` takes both label forms. One collator thus serves the train and eval dataloaders.
    """

    def __init__(
        self,
        image_processor: BaseImageProcessor,
        num_labels: int,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        random_erasing: float = 0.0,
    ):
        self.normalize = normalize_transform(image_processor)
        # Erasing with 0 after normalization fills with the mean colour, as DeiT's "const" mode does.
        self.erase = v2.RandomErasing(p=random_erasing, value=0) if random_erasing > 0 else None
        choices: list[v2.Transform] = []
        if mixup > 0:
            choices.append(v2.MixUp(alpha=mixup, num_classes=num_labels))
        if cutmix > 0:
            choices.append(v2.CutMix(alpha=cutmix, num_classes=num_labels))
        # DeiT/timm switch between the two with probability 0.5 per batch.
        self.mix: v2.Transform | None = v2.RandomChoice(choices) if choices else None

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        pixel_values = self.normalize(torch.stack([example["pixel_values"] for example in examples]))
        labels = torch.tensor([example["labels"] for example in examples], dtype=torch.long)
        seed = examples[0].get("augmentation_seed")
        if seed is not None and (self.erase is not None or self.mix is not None):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed ^ _BATCH_SEED_SALT)
                if self.erase is not None:
                    pixel_values = torch.stack([self.erase(image) for image in pixel_values])
                if self.mix is not None:
                    pixel_values, labels = self.mix(pixel_values, labels)
        return {"pixel_values": pixel_values, "labels": labels}


class EpochCallback(TrainerCallback):
    """Tells training datasets which epoch starts (also when resuming mid-epoch), for their augmentation seeds."""

    def __init__(self, *datasets: ImageClassificationDataset):
        self.datasets = datasets

    def on_epoch_begin(self, args, state, control, **kwargs):
        # `state.epoch` is exactly the epoch index at an epoch boundary and epoch + fraction when resuming mid-epoch.
        epoch = math.floor(state.epoch or 0.0)
        for dataset in self.datasets:
            # A stream's pass count is not `state.epoch` (the Trainer counts a stream's epoch as max_steps): the
            # Trainer sets it on the dataloader at each new pass.
            if not isinstance(dataset, torch.utils.data.IterableDataset):
                dataset.set_epoch(epoch)
