"""A whole training run: data, model and image processor, Trainer, train, evaluate, save (`run_training`).

`build_config` and `build_model_and_processor` are usable on their own (a preset, a config file or a checkpoint to
fine-tune, with overrides and the data's label set); `classify_images` runs pipeline() on a saved model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    ViTImageProcessor,
    pipeline,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

try:
    import resource
except ImportError:  # Windows
    resource = None

from ..models.lape_vit.configuration_lape_vit import LapeViTConfig
from ..models.lape_vit.image_processing_lape_vit import build_image_processor
from ..models.lape_vit.modeling_lape_vit import (
    LapeViTForImageClassification,
    LapeViTForImageClassificationWithTeacher,
    LapeViTPreTrainedModel,
)
from .arguments import DEFAULT_PRESET, DataArguments, LapeTrainingArguments, ModelArguments, RunArguments
from .data import (
    DIGITS_DATASET_NAME,
    ImageClassificationSplits,
    label_names_of,
    load_raw_splits,
    open_images,
    prepare_splits,
)
from .results import RESULTS_FILE, build_results
from .trainer import LapeTrainer, build_compute_metrics
from .transforms import (
    AugmentationArguments,
    EpochCallback,
    ImageClassificationCollator,
    ImageClassificationDataset,
    build_train_transform,
)

logger = logging.getLogger(__name__)

METRIC_PATH = Path(__file__).resolve().parent / "metrics" / "top_k_accuracy"


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


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (dataloader workers) where known."""
    if resource is None:  # Windows
        return time.process_time()
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(item.ru_utime + item.ru_stime for item in usage)


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
        with open(os.path.join(training_args.output_dir, RESULTS_FILE), "w") as file:
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
