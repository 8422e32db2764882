"""Train or fine-tune LapeViT image classifiers with the Hugging Face Trainer (plain, or under `accelerate launch`).

The pieces a user may want on their own: `ModelArguments`, `DataArguments`, `LapeTrainingArguments` (the DeiT
recipe's defaults), `build_config`, `build_model_and_processor`, `LapeTrainer` (DeiT's weight-decay groups, soft-target
loss), `load_accuracy_metric`, `classify_images`; `run_training` ties them together for `scripts/train.py`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import evaluate
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    EvalPrediction,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
    ViTImageProcessor,
    pipeline,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

try:
    import resource
except ImportError:  # Windows
    resource = None

from . import __version__
from .configuration_lape_vit import PRESETS, LapeViTConfig
from .data import (
    DIGITS_DATASET_NAME,
    ImageClassificationSplits,
    label_names_of,
    load_raw_splits,
    open_images,
    prepare_splits,
)
from .image_processing import build_image_processor
from .modeling_lape_vit import (
    LapeViTForImageClassification,
    LapeViTForImageClassificationWithTeacher,
    LapeViTPreTrainedModel,
)
from .transforms import (
    AugmentationArguments,
    EpochCallback,
    ImageClassificationCollator,
    ImageClassificationDataset,
    build_train_transform,
)

logger = logging.getLogger(__name__)

METRIC_PATH = Path(__file__).resolve().parent / "metrics" / "top_k_accuracy"
RESULTS_FILE_NAME = "results.json"
DEFAULT_PRESET = "vit-lite-7/4"
# Parameters that DeiT/timm train without weight decay besides all 1-D ones (biases, LayerNorms): the position
# embeddings, the class/distillation tokens and relative position bias tables.
NO_WEIGHT_DECAY_NAME_PARTS = ("position_embedding", "cls_token", "distillation_token", "relative_position_bias")

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


# ---------------------------------------------------------------------------------------------------------------------
# Arguments (the shape of transformers' image-classification example)
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class ModelArguments:
    """Which model to train: a preset or config from scratch, or a checkpoint (local dir or Hub id) to fine-tune."""

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
        metadata={"help": "Comma-separated config fields, e.g. 'image_size=16,hidden_size=128,num_hidden_layers=4'."},
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
        sources = [name for name in ("model_name_or_path", "preset", "config_name") if getattr(self, name)]
        if len(sources) > 1:
            raise ValueError(f"Give one of --model_name_or_path, --preset, --config_name; got {sources}.")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"Unknown preset {self.preset!r}; allowed: {', '.join(sorted(PRESETS))}.")


@dataclass
class DataArguments:
    """Which data: a Hub dataset, image folders, or by default the bundled scikit-learn digits."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": f"A Hub dataset id, or {DIGITS_DATASET_NAME!r} (the default when no folders are given)."},
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


# ---------------------------------------------------------------------------------------------------------------------
# Model, config and image processor
# ---------------------------------------------------------------------------------------------------------------------
def _parse_override_value(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text.strip()


def parse_config_overrides(text: str | None) -> dict[str, Any]:
    """'a=1,b=gelu,c=true' -> {'a': 1, 'b': 'gelu', 'c': True}; keys must be LapeViTConfig fields."""
    if not text:
        return {}
    allowed = {field_.name for field_ in dataclasses.fields(LapeViTConfig)}
    overrides = {}
    for item in text.split(","):
        key, separator, value = item.partition("=")
        key = key.strip()
        if not separator or not key:
            raise ValueError(f"config_overrides item {item!r} is not of the form name=value (in {text!r}).")
        if key not in allowed:
            raise ValueError(f"config_overrides: {key!r} is not a LapeViTConfig field; allowed: {sorted(allowed)}.")
        overrides[key] = _parse_override_value(value)
    return overrides


def build_config(model_args: ModelArguments, label_names: Sequence[str]) -> LapeViTConfig:
    """The config to train: from a checkpoint, a config file or a preset, with the overrides and this label set."""
    overrides = parse_config_overrides(model_args.config_overrides)
    for name in ("pe_join", "position_embedding_type"):
        if getattr(model_args, name) is not None:
            overrides[name] = getattr(model_args, name)
    labels = {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: index for index, name in enumerate(label_names)},
    }
    if model_args.model_name_or_path is not None:
        config = AutoConfig.from_pretrained(
            model_args.model_name_or_path,
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
            trust_remote_code=model_args.trust_remote_code,
        )
        if config.model_type != LapeViTConfig.model_type:
            raise ValueError(
                f"{model_args.model_name_or_path!r} is a {config.model_type!r} model; this script trains "
                f"{LapeViTConfig.model_type!r} models (convert other checkpoints first)."
            )
        _check_label_set(config, label_names, model_args)
        return LapeViTConfig(**{**config.to_dict(), **overrides, **labels})
    if model_args.config_name is not None:
        base = LapeViTConfig.from_pretrained(model_args.config_name).to_dict()
        return LapeViTConfig(**{**base, **overrides, **labels})
    return LapeViTConfig.from_preset(model_args.preset or DEFAULT_PRESET, **overrides, **labels)


def _check_label_set(config: LapeViTConfig, label_names: Sequence[str], model_args: ModelArguments) -> None:
    checkpoint_names = [config.id2label[index] for index in sorted(config.id2label)]
    if list(checkpoint_names) == list(label_names):
        return
    if len(checkpoint_names) != len(label_names) and not model_args.ignore_mismatched_sizes:
        raise ValueError(
            f"{model_args.model_name_or_path!r} classifies {len(checkpoint_names)} labels ({checkpoint_names[:10]}), "
            f"the dataset has {len(label_names)} ({list(label_names)[:10]}); pass --ignore_mismatched_sizes to train "
            "a new classifier head."
        )
    logger.warning(
        "The checkpoint's labels %s differ from the dataset's %s; the head is %s.",
        checkpoint_names[:10],
        list(label_names)[:10],
        "re-initialized" if len(checkpoint_names) != len(label_names) else "reused with the dataset's label names",
    )


def build_model_and_processor(
    model_args: ModelArguments, label_names: Sequence[str]
) -> tuple[LapeViTPreTrainedModel, ViTImageProcessor]:
    """The model (new, or loaded for fine-tuning) and the image processor saved beside it."""
    config = build_config(model_args, label_names)
    image_mean, image_std = model_args.image_mean, model_args.image_std
    if model_args.model_name_or_path is not None:
        if image_mean is None or image_std is None:
            try:
                pretrained = AutoImageProcessor.from_pretrained(
                    model_args.model_name_or_path, cache_dir=model_args.cache_dir, revision=model_args.model_revision
                )
                image_mean = image_mean or pretrained.image_mean
                image_std = image_std or pretrained.image_std
            except (OSError, ValueError):
                logger.warning(
                    "%r has no image processor; using ImageNet normalization.", model_args.model_name_or_path
                )
        model = AutoModelForImageClassification.from_pretrained(
            model_args.model_name_or_path,
            config=config,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
            trust_remote_code=model_args.trust_remote_code,
        )
    elif config.use_distillation_token:
        model = LapeViTForImageClassificationWithTeacher(config)
    else:
        model = LapeViTForImageClassification(config)
    processor_kwargs = {}
    if image_mean is not None:
        processor_kwargs["image_mean"] = image_mean
    if image_std is not None:
        processor_kwargs["image_std"] = image_std
    return model, build_image_processor(config, **processor_kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Trainer: optimizer groups, loss, metrics
# ---------------------------------------------------------------------------------------------------------------------
def no_weight_decay(name: str, parameter: nn.Parameter) -> bool:
    """DeiT's rule: no decay on 1-D parameters (biases, norms) nor on the PE, class/distillation tokens, RPE tables."""
    return parameter.ndim <= 1 or any(part in name for part in NO_WEIGHT_DECAY_NAME_PARTS)


def classification_loss(outputs: Any, labels: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy for class indices or soft targets (MixUp/CutMix); both heads of a distilled model averaged."""
    if labels.is_floating_point() and labels.ndim == 2:
        labels = labels.to(outputs.logits.dtype)
    heads = [outputs.cls_logits, outputs.distillation_logits] if hasattr(outputs, "cls_logits") else [outputs.logits]
    return sum(F.cross_entropy(logits, labels, label_smoothing=label_smoothing) for logits in heads) / len(heads)


class LapeTrainer(Trainer):
    """`Trainer` with DeiT's weight-decay groups, a loss that takes MixUp/CutMix soft targets (label smoothing only
    in training, so `eval_loss` is plain cross-entropy), and a count of the time spent waiting for batches."""

    loss_is_scaled_for_ga = False  # our loss is a per-batch mean: the Trainer divides it by the accumulation steps

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The loss does not use `num_items_in_batch`; not counting it also avoids a cross-process sync per step.
        self.model_accepts_loss_kwargs = False
        self.data_wait_seconds = 0.0

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        return [name for name, parameter in model.named_parameters() if not no_weight_decay(name, parameter)]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        smoothing = self.args.label_smoothing_factor if model.training else 0.0
        loss = classification_loss(outputs, labels, smoothing)
        return (loss, outputs) if return_outputs else loss

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        start = time.perf_counter()
        batches = super().get_batch_samples(epoch_iterator, num_batches, device)
        self.data_wait_seconds += time.perf_counter() - start
        return batches


def load_accuracy_metric() -> evaluate.EvaluationModule:
    """Top-1/top-k accuracy from the evaluate module shipped in lape_hf (works offline); kept in memory so that
    several processes never share a cache file."""
    return evaluate.load(str(METRIC_PATH), keep_in_memory=True)


def build_compute_metrics():
    """Top-1 and top-5 accuracy (the report and the model card read `eval_top5_accuracy`)."""
    metric = load_accuracy_metric()

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return metric.compute(predictions=logits, references=prediction.label_ids, k=5)

    return compute_metrics


# ---------------------------------------------------------------------------------------------------------------------
# A whole run
# ---------------------------------------------------------------------------------------------------------------------
def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (dataloader workers) where known."""
    if resource is None:  # Windows
        return time.process_time()
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(item.ru_utime + item.ru_stime for item in usage)


def _versions() -> dict[str, str]:
    names = ("transformers", "torch", "torchvision", "datasets", "accelerate")
    return {"lape_hf": __version__, **{name: version(name) for name in names}}


def _training_record(args: LapeTrainingArguments, augmentation: AugmentationArguments, num_processes: int) -> dict:
    warmup = {"warmup_ratio": args.warmup_steps} if 0 < args.warmup_steps < 1 else {"warmup_steps": args.warmup_steps}
    return {
        "epochs": float(args.num_train_epochs),
        "max_steps": args.max_steps,
        "learning_rate": args.learning_rate,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "weight_decay": args.weight_decay,
        "label_smoothing": args.label_smoothing_factor,
        **warmup,
        "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "seed": args.seed,
        "data_seed": args.data_seed,
        **dataclasses.asdict(augmentation),  # every augmentation setting, horizontal_flip resolved for the data
        "num_processes": num_processes,
    }


def build_results(
    model: PreTrainedModel,
    model_args: ModelArguments,
    data: ImageClassificationSplits,
    metrics: dict[str, float],
    training_args: LapeTrainingArguments,
    augmentation: AugmentationArguments,
    num_processes: int,
    wall_time_seconds: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `results.json` record (keys read by lape_hf's model-card code)."""
    config = model.config
    preset = model_args.preset or (
        DEFAULT_PRESET if not (model_args.model_name_or_path or model_args.config_name) else None
    )
    return {
        "model_type": config.model_type,
        "preset": preset,
        "pe_join": config.pe_join,
        "position_embedding_type": config.position_embedding_type,
        "dataset": {
            "name": data.dataset_name,
            "train_split": data.train_split,
            "eval_split": data.eval_split,
            "num_train": len(data.train),
            "num_eval": len(data.eval),
            "num_labels": data.num_labels,
        },
        "metrics": {key: float(value) for key, value in metrics.items() if isinstance(value, (int, float))},
        "training": _training_record(training_args, augmentation, num_processes),
        "config": config.to_dict(),
        "versions": _versions(),
        "wall_time_seconds": wall_time_seconds,
        **(extra or {}),
    }


def classify_images(model_dir: str | os.PathLike, images: list) -> list[dict[str, Any]]:
    """Top prediction of `pipeline("image-classification")` for each image, from a saved model directory."""
    classifier = pipeline("image-classification", model=str(model_dir), device="cpu")
    return [predictions[0] for predictions in classifier(images, top_k=1)]


def _resolve_checkpoint(training_args: LapeTrainingArguments) -> str | bool | None:
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None:
        return None
    if str(checkpoint).lower() in ("true", "last", "latest"):
        last = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        if last is None:
            raise ValueError(f"resume_from_checkpoint={checkpoint!r}: no checkpoint in {training_args.output_dir!r}.")
        return last
    if not os.path.isdir(checkpoint):
        raise ValueError(f"resume_from_checkpoint={checkpoint!r} is not a checkpoint directory.")
    return checkpoint


def run_training(
    model_args: ModelArguments,
    data_args: DataArguments,
    augmentation: AugmentationArguments,
    training_args: LapeTrainingArguments,
    run_args: RunArguments | None = None,
) -> dict[str, Any]:
    """Train, evaluate and save (model, image processor, custom code, `results.json`); returns the results."""
    run_args = run_args or RunArguments()
    checkpoint = _resolve_checkpoint(training_args)
    if run_args.torch_num_threads is not None:
        torch.set_num_threads(run_args.torch_num_threads)
    set_seed(training_args.seed)

    preparation_start = time.perf_counter()
    with training_args.main_process_first(desc="dataset preparation"):
        raw, dataset_name = load_raw_splits(
            data_args.dataset_name,
            data_args.dataset_config_name,
            data_args.train_dir,
            data_args.validation_dir,
            model_args.cache_dir,
        )
        # The label set is needed before the model, the model's resolution before the images are prepared.
        label_names = label_names_of(raw, data_args.train_split, data_args.label_column_name)
        model, image_processor = build_model_and_processor(model_args, label_names)
        data = prepare_splits(
            raw,
            dataset_name,
            image_processor,
            train_split=data_args.train_split,
            eval_split=data_args.eval_split,
            train_val_split=data_args.train_val_split,
            image_column_name=data_args.image_column_name,
            label_column_name=data_args.label_column_name,
            max_train_samples=data_args.max_train_samples,
            max_eval_samples=data_args.max_eval_samples,
            skip_corrupt_images=data_args.skip_corrupt_images,
            preprocessing_num_workers=data_args.preprocessing_num_workers,
            seed=training_args.seed,
        )
    if augmentation.horizontal_flip is None:  # digits are not mirror-symmetric; natural images are
        augmentation = dataclasses.replace(augmentation, horizontal_flip=data.dataset_name != DIGITS_DATASET_NAME)
    train_dataset = ImageClassificationDataset(
        data.train,
        build_train_transform(augmentation, image_processor, augmentation.horizontal_flip),
        seed=training_args.data_seed if training_args.data_seed is not None else training_args.seed,
    )
    eval_dataset = ImageClassificationDataset(data.eval)
    preparation_seconds = time.perf_counter() - preparation_start

    trainer = LapeTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=ImageClassificationCollator(
            image_processor, data.num_labels, augmentation.mixup, augmentation.cutmix, augmentation.random_erasing
        ),
        processing_class=image_processor,
        compute_metrics=build_compute_metrics(),
        callbacks=[EpochCallback(train_dataset)],
    )
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = trainer.evaluate()
    wall_time_seconds = time.perf_counter() - start
    cpu_seconds = _cpu_seconds() - cpu_start
    trainer.save_model(training_args.output_dir)
    trainer.save_state()  # trainer_state.json: the log history (loss, learning rate, eval metrics per step)

    train_seconds = train_result.metrics.get("train_runtime", 0.0)
    timing = {
        "data_preparation_seconds": preparation_seconds,
        # CPU time of this process and its finished dataloader workers: on a busy machine, wall time overstates
        # what the run needs; CPU time shows it (on N idle cores, wall time >= cpu_seconds / N).
        "cpu_seconds": cpu_seconds,
        "train_runtime_seconds": train_seconds,
        "data_wait_seconds": trainer.data_wait_seconds,
        "data_wait_fraction": trainer.data_wait_seconds / train_seconds if train_seconds > 0 else None,
        "train_loss": train_result.metrics.get("train_loss"),
        "torch_num_threads": torch.get_num_threads(),
        "dataloader_num_workers": training_args.dataloader_num_workers,
    }
    results = build_results(
        trainer.model,
        model_args,
        data,
        metrics,
        training_args,
        augmentation,
        trainer.accelerator.num_processes,
        wall_time_seconds,
        extra={"timing": timing},
    )
    if trainer.is_world_process_zero():
        if run_args.classify_examples > 0:
            results["examples"] = _classify_held_out(training_args.output_dir, data, run_args.classify_examples)
        with open(os.path.join(training_args.output_dir, RESULTS_FILE_NAME), "w") as file:
            json.dump(results, file, indent=2)
    return results


def _classify_held_out(model_dir: str, data: ImageClassificationSplits, count: int) -> list[dict[str, Any]]:
    """Classify the first few eval images as a user would: the images as loaded, through pipeline()."""
    subset = data.raw_eval.select(range(min(count, len(data.raw_eval))))
    images = open_images(subset)
    kept = [(index, image) for index, image in enumerate(images) if image is not None]
    predictions = classify_images(model_dir, [image for _, image in kept])
    labels = subset["label"]
    return [
        {
            "index": index,
            "true": data.label_names[labels[index]],
            "predicted": prediction["label"],
            "score": prediction["score"],
        }
        for (index, _), prediction in zip(kept, predictions, strict=True)
    ]


def format_report(results: dict[str, Any]) -> str:
    """A short human summary of a run: accuracy, time and the example predictions."""
    dataset = results["dataset"]
    metrics = results["metrics"]
    timing = results.get("timing", {})
    config = results["config"]
    lines = [
        f"Model: LapeViT, {config['num_hidden_layers']} layers of width {config['hidden_size']}, input "
        f"{config['image_size']} px (preset: {results['preset']}), {results['pe_join']} join, "
        f"{results['position_embedding_type']} PE; trained by {results['training']['num_processes']} process(es)",
        f"Data: {dataset['name']} train={dataset['train_split']} ({dataset['num_train']}), "
        f"eval={dataset['eval_split']} ({dataset['num_eval']}), {dataset['num_labels']} classes",
        f"Eval accuracy: {100 * metrics['eval_accuracy']:.2f}%  top-5: {100 * metrics['eval_top5_accuracy']:.2f}%  "
        f"loss: {metrics['eval_loss']:.4f}",
        f"Training + evaluation wall time: {results['wall_time_seconds']:.1f} s"
        + (
            f" (waiting for data: {100 * timing['data_wait_fraction']:.1f}% of the training loop)"
            if timing.get("data_wait_fraction") is not None
            else ""
        ),
    ]
    examples = results.get("examples") or []
    if examples:
        lines.append("pipeline('image-classification') on held-out images:")
        for example in examples:
            mark = "ok" if example["true"] == example["predicted"] else "WRONG"
            lines.append(
                f"  #{example['index']}: true {example['true']}, predicted {example['predicted']} "
                f"(score {example['score']:.3f}) {mark}"
            )
    return "\n".join(lines)
