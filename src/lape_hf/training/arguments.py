"""The command-line arguments of training, in the shape of transformers' image-classification example.

`ModelArguments`, `DataArguments`, `AugmentationArguments` (in `transforms`), `LapeTrainingArguments` (the DeiT
recipe's defaults) and `RunArguments`, parsed together by `HfArgumentParser(ARGUMENT_CLASSES)`; `DEMO_ARGS` is the
README demo's recipe.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from ..config_overrides import CONFIG_OVERRIDES_HELP, parse_config_overrides
from ..models.lape_vit.configuration_lape_vit import PRESETS, check_preset_name
from ..models.lape_vit.image_processing_lape_vit import DEIT_CROP_PCT, EVAL_GEOMETRIES
from .data import DIGITS_DATASET_NAME
from .data_modes import DATA_MODES
from .fashion_mnist import DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_DATASET_NAME
from .lora import LoraArguments
from .transforms import AugmentationArguments

DEFAULT_PRESET = "vit-lite-7/4"
# eval_geometry "auto": DeiT's centre crop for models at natural-image resolutions (ImageNet's 224, 160 or 128 for
# small-budget runs), a straight resize below (digits, MNIST-like, CIFAR-like at 16-64 px).
CENTER_CROP_MIN_SIZE = 128

# `--demo`: the README's main command. A 4-layer, width-128 LaPE ViT on the digits upsampled to 16x16 (patch 4,
# 16 patches + class token), 30 epochs with random resized crops only (no flips: they change digits), which reached
# 98.3-100% test accuracy over seeds and recipe variants while tuning. One intra-op thread trains while one dataloader
# worker augments: on 2 cores that beats 2 threads, which wait for each other. Arguments after `--demo` override these.
DEMO_ARGS: list[str] = [
    "--preset=vit-lite-7/4",
    "--config_overrides=image_size=16,patch_size=4,num_hidden_layers=4,hidden_size=128,num_attention_heads=4,"
    "intermediate_size=256,drop_path_rate=0.0,attention_probs_dropout_prob=0.0",
    "--pe_join=lape",
    "--output_dir=outputs/demo",
    "--num_train_epochs=30",
    "--per_device_train_batch_size=64",
    "--per_device_eval_batch_size=360",
    "--learning_rate=1e-3",
    "--weight_decay=0.05",
    "--warmup_steps=0.05",
    "--label_smoothing_factor=0.1",
    "--crop_scale_min=0.6",
    "--rand_augment=false",
    "--random_erasing=0.0",
    "--mixup=0.0",
    "--cutmix=0.0",
    "--eval_strategy=no",
    "--save_strategy=no",
    "--logging_steps=50",
    "--classify_examples=8",
    "--torch_num_threads=1",
    "--dataloader_num_workers=1",
    "--dataloader_persistent_workers=true",
]


@dataclass
class ModelArguments(LoraArguments):
    """Which model to train: a preset or config from scratch, or a checkpoint (local dir or Hub id) to fine-tune,
    in full or with LoRA (the `--lora_*` arguments of `LoraArguments`)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A LapeViT checkpoint to fine-tune: a local directory or a Hub model id."}
    )
    preset: str | None = field(
        default=None,
        metadata={"help": f"Preset to train from scratch (default {DEFAULT_PRESET}); one of {', '.join(PRESETS)}."},
    )
    config_name: str | None = field(
        default=None, metadata={"help": "A config.json (or a directory holding one) to train from scratch."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": CONFIG_OVERRIDES_HELP},
    )
    pe_join: str | None = field(
        default=None, metadata={"help": "Override the PE join: lape, lape_shared, add, share or unshare."}
    )
    position_embedding_type: str | None = field(
        default=None,
        metadata={"help": "Override the PE type: learnable, sinusoidal_1d, sinusoidal_2d or none."},
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Fine-tuning on a new label set: start a new classifier head instead of failing."},
    )
    image_mean: list[float] | None = field(
        default=None, metadata={"help": "Normalization mean of a new image processor (default: ImageNet's)."}
    )
    image_std: list[float] | None = field(
        default=None, metadata={"help": "Normalization std of a new image processor (default: ImageNet's)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub models and datasets are cached."})
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit)."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow a Hub checkpoint's own code (not needed with lape_hf installed)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lora_r > 0 and self.model_name_or_path is None:
            raise ValueError(
                f"--lora_r {self.lora_r} trains an adapter for a trained model: give --model_name_or_path."
            )
        sources = [name for name in ("model_name_or_path", "preset", "config_name") if getattr(self, name)]
        if len(sources) > 1:
            raise ValueError(f"Give one of --model_name_or_path, --preset, --config_name; got {sources}.")
        if self.preset is not None:
            check_preset_name(self.preset)
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if values is None:
                continue
            if len(values) != 3 or not all(math.isfinite(value) for value in values):
                raise ValueError(f"--{name} takes 3 finite numbers (one per RGB channel), got {values}.")
            if name == "image_std" and min(values) <= 0:
                raise ValueError(f"--image_std values must be > 0 (they divide the pixels), got {values}.")
        label_fields = sorted(set(parse_config_overrides(self.config_overrides)) & {"id2label", "label2id"})
        if label_fields:
            raise ValueError(
                f"--config_overrides cannot set {', '.join(label_fields)}: the label set comes from the data's classes "
                "(name them with the class folders or the dataset's label column)."
            )


@dataclass
class DataArguments:
    """Which data: a Hub dataset, image folders, Fashion-MNIST, or by default the bundled scikit-learn digits."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": f"A Hub dataset id, {FASHION_MNIST_DATASET_NAME!r} (the official IDX files, see --data_dir) or "
            f"{DIGITS_DATASET_NAME!r} (the default when no folders are given)."
        },
    )
    data_dir: str | None = field(
        default=None,
        metadata={"help": f"Directory of the Fashion-MNIST IDX files (default {DEFAULT_FASHION_MNIST_DIR})."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    train_dir: str | None = field(
        default=None, metadata={"help": "Image folder (one sub-folder per class) to train on."}
    )
    validation_dir: str | None = field(default=None, metadata={"help": "Image folder to evaluate on."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(
        default=None, metadata={"help": "Split to evaluate on (default: validation, else test, else held out)."}
    )
    train_val_split: float = field(
        default=0.15, metadata={"help": "Fraction of the train split held out when there is no eval split."}
    )
    image_column_name: str | None = field(default=None, metadata={"help": "Image column (default: image or img)."})
    label_column_name: str | None = field(default=None, metadata={"help": "Label column (default: label or labels)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on a random subset of this size."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on a random subset of this size."})
    skip_corrupt_images: bool = field(
        default=False, metadata={"help": "Skip images that do not decode (with a warning) instead of failing."}
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for the one-time decode-and-resize pass."}
    )
    data_mode: str = field(
        default="auto",
        metadata={
            "help": "prepared (decode and resize once, uint8 arrays), on_the_fly (decode and augment from the original "
            "image in the dataloader workers), streaming (an IterableDataset; needs --max_steps) or auto (prepared "
            "when its arrays are small, else on_the_fly)."
        },
    )
    shuffle_buffer_size: int = field(
        default=10_000, metadata={"help": "Streaming: examples shuffled together (a window of the stream)."}
    )
    eval_geometry: str = field(
        default="auto",
        metadata={
            "help": f"resize (straight, small images), center_crop (shorter side to size / crop_pct, then a centre "
            f"crop: DeiT's) or auto (center_crop at {CENTER_CROP_MIN_SIZE} px and above); saved in the processor."
        },
    )
    crop_pct: float = field(default=DEIT_CROP_PCT, metadata={"help": "center_crop: crop size / resized shorter side."})

    def __post_init__(self) -> None:
        if self.data_mode not in DATA_MODES:
            raise ValueError(f"data_mode={self.data_mode!r} is not one of {', '.join(DATA_MODES)}.")
        if self.eval_geometry not in ("auto", *EVAL_GEOMETRIES):
            raise ValueError(f"eval_geometry={self.eval_geometry!r} is not one of auto, {', '.join(EVAL_GEOMETRIES)}.")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct={self.crop_pct!r} must be in (0, 1] (DeiT: {DEIT_CROP_PCT}).")
        if self.shuffle_buffer_size < 1:
            raise ValueError(f"shuffle_buffer_size={self.shuffle_buffer_size!r} must be >= 1.")


@dataclass
class RunArguments:
    """What to do around training."""

    demo: bool = field(default=False, metadata={"help": "The README's demo recipe (see lape_hf.training.DEMO_ARGS)."})
    classify_examples: int = field(
        default=0, metadata={"help": "After training, classify this many held-out images with pipeline()."}
    )
    torch_num_threads: int | None = field(
        default=None,
        metadata={
            "help": "Intra-op threads per process (default: torch's choice). 1 is fastest for tiny models and on a "
            "busy machine, where threads that wait for each other spin."
        },
    )

    def __post_init__(self) -> None:
        if self.torch_num_threads is not None and self.torch_num_threads < 1:
            raise ValueError(f"torch_num_threads={self.torch_num_threads!r} must be >= 1.")


def _accelerator_available() -> bool:
    """A GPU or other torch accelerator is usable in this process."""
    accelerator = getattr(torch, "accelerator", None)
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


@dataclass
class LapeTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the defaults of DeiT's recipe (AdamW, cosine, warmup, label smoothing 0.1)."""

    output_dir: str | None = field(default="outputs/lape-vit", metadata={"help": "Checkpoints and the final model."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Train into an output_dir that already holds a finished model, replacing it."}
    )
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(
        default=0.05, metadata={"help": "AdamW weight decay (not on PE, tokens, norms, biases)."}
    )
    num_train_epochs: float = field(default=100.0, metadata={"help": "Training epochs."})
    per_device_train_batch_size: int = field(default=128, metadata={"help": "Batch size per process."})
    per_device_eval_batch_size: int = field(default=256, metadata={"help": "Eval batch size per process."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warmup steps, or a fraction of all steps if < 1."})
    label_smoothing_factor: float = field(default=0.1, metadata={"help": "Label smoothing of the training loss."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate: no, steps or epoch."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to checkpoint: no, steps or epoch."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept."})
    logging_steps: float = field(default=50, metadata={"help": "Log every this many steps."})
    dataloader_num_workers: int = field(
        default=1, metadata={"help": "Worker processes for augmentation (they run single-threaded)."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the collator needs each example's augmentation seed."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of initialization, data order and augmentation."})
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "DDP: look for unused parameters each step (LapeViT uses all of them)."}
    )

    def __post_init__(self) -> None:
        if not self.use_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _accelerator_available():
            # Launched as several processes (accelerate launch --multi_gpu, torchrun) on a machine without GPUs:
            # data-parallel on CPU processes over gloo, which accelerate only selects with use_cpu.
            self.use_cpu = True
        if not _accelerator_available():
            self.dataloader_pin_memory = False  # nothing to pin for; torch warns on every dataloader otherwise
        if self.remove_unused_columns:
            raise ValueError(
                "remove_unused_columns=True is not supported: the collator needs each example's augmentation seed "
                "(the datasets already hold only pixel_values and labels)."
            )
        super().__post_init__()


ARGUMENT_CLASSES = (ModelArguments, DataArguments, AugmentationArguments, LapeTrainingArguments, RunArguments)
