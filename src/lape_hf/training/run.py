"""A whole training run: data, model and image processor, Trainer, train, evaluate, save (`run_training`).

`run_training` is four named steps: `prepare_run` (data, model, image processor), `build_trainer`, `train_and_evaluate`
(and save), then the `results.json` record. `build_config` and `build_model_and_processor` are usable on their own
(a preset, a config file or a checkpoint to fine-tune, with overrides and the data's label set); `top_predictions`
runs pipeline() on a saved model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    ViTImageProcessor,
    set_seed,
)
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import sort_checkpoints

try:
    import resource
except ImportError:  # Windows
    resource = None

from ..config_overrides import parse_config_overrides
from ..models.lape_vit.configuration_lape_vit import LapeViTConfig
from ..models.lape_vit.image_processing_lape_vit import build_image_processor, eval_geometry
from ..models.lape_vit.modeling_lape_vit import (
    LapeViTForImageClassification,
    LapeViTForImageClassificationWithTeacher,
    LapeViTPreTrainedModel,
)
from ..predict import load_classifier
from .arguments import (
    CENTER_CROP_MIN_SIZE,
    DEFAULT_PRESET,
    DEMO_ARGS,
    DataArguments,
    LapeTrainingArguments,
    ModelArguments,
    RunArguments,
)
from .data import (
    DIGITS_DATASET_NAME,
    ImageClassificationSplits,
    label_names_of,
    load_raw_splits,
    open_images,
    prepare_splits,
)
from .data_modes import build_training_datasets
from .eval_predictions import EvalPredictions
from .lora import apply_lora, lora_record, parameter_counts
from .output_dir import check_output_dir, removed_if_empty_on_error, save_model_atomically
from .results import build_results, training_record
from .trainer import LapeTrainer, build_compute_metrics
from .transforms import (
    AugmentationArguments,
    EpochCallback,
    ImageClassificationCollator,
)

logger = logging.getLogger(__name__)


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


def _resolve_checkpoint(training_args: LapeTrainingArguments) -> str | None:
    """The checkpoint to resume from: a directory as given, or for "last" (also "true", "latest") the newest
    *complete* one in output_dir; a clear error when there is none.

    Not `Trainer.train(resume_from_checkpoint=True)`: its `get_last_checkpoint` takes the highest step even when that
    checkpoint is incomplete (a run killed while saving: no trainer_state.json, which the Trainer writes last), and
    then fails deep inside loading. Here such a checkpoint is skipped with a warning naming it.
    """
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None:
        return None
    if str(checkpoint).lower() not in ("true", "last", "latest"):
        if not os.path.isdir(checkpoint):
            raise ValueError(f"resume_from_checkpoint={checkpoint!r} is not a checkpoint directory.")
        return checkpoint
    output_dir = training_args.output_dir
    newest_first = sort_checkpoints(output_dir)[::-1] if os.path.isdir(output_dir) else []
    for candidate in newest_first:
        if os.path.isfile(os.path.join(candidate, TRAINER_STATE_NAME)):
            return candidate
        logger.warning("Skipping the incomplete checkpoint %s (no %s).", candidate, TRAINER_STATE_NAME)
    raise ValueError(f"resume_from_checkpoint={checkpoint!r}: no complete checkpoint in {output_dir!r}.")


def top_predictions(model_dir: str | os.PathLike, images: list) -> list[dict[str, Any]]:
    """The top prediction (label, score) of `pipeline("image-classification")` for each decoded image, from a saved
    model directory. (`lape_hf.predict.classify_images` is the user-facing one: files in, top-k or a reason out.)"""
    classifier = load_classifier(str(model_dir), device="cpu")
    return [predictions[0] for predictions in classifier(images, top_k=1)]


@dataclasses.dataclass
class _PreparedRun:
    """What the steps of `run_training` hand on: the model and its processor, the data, and the time it took."""

    model: LapeViTPreTrainedModel
    image_processor: ViTImageProcessor
    data: ImageClassificationSplits
    augmentation: AugmentationArguments  # horizontal_flip resolved for the data
    preparation_seconds: float
    skip_corrupt_images: bool = False


def dataset_source(model_args: ModelArguments, data_args: DataArguments) -> dict[str, str | None]:
    """Where the data comes from, as `load_raw_splits` and `streaming.load_streaming_splits` both take it."""
    return {
        "dataset_name": data_args.dataset_name,
        "dataset_config_name": data_args.dataset_config_name,
        "train_dir": data_args.train_dir,
        "validation_dir": data_args.validation_dir,
        "cache_dir": model_args.cache_dir,
        "data_dir": data_args.data_dir,
    }


def prepare_run(
    model_args: ModelArguments,
    data_args: DataArguments,
    augmentation: AugmentationArguments,
    training_args: LapeTrainingArguments,
) -> _PreparedRun:
    """Load the data, build the model and processor, prepare both splits at the model's resolution."""
    start = time.perf_counter()
    if data_args.data_mode == "streaming":
        from .streaming import prepare_streaming_run

        return prepare_streaming_run(model_args, data_args, augmentation, training_args)
    with training_args.main_process_first(desc="dataset preparation"):
        raw, dataset_name = load_raw_splits(**dataset_source(model_args, data_args))
        # The label set is needed before the model, the model's resolution before the images are prepared.
        label_names = label_names_of(raw, data_args.train_split, data_args.label_column_name)
        model, image_processor = build_model_and_processor(model_args, label_names)
        image_processor = with_eval_geometry(image_processor, model.config, data_args)
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
            data_mode=data_args.data_mode,
        )
    if augmentation.horizontal_flip is None:  # digits are not mirror-symmetric; natural images are
        augmentation = dataclasses.replace(augmentation, horizontal_flip=data.dataset_name != DIGITS_DATASET_NAME)
    return _PreparedRun(
        model, image_processor, data, augmentation, time.perf_counter() - start, data_args.skip_corrupt_images
    )


def with_eval_geometry(
    image_processor: ViTImageProcessor, config: LapeViTConfig, data_args: DataArguments
) -> ViTImageProcessor:
    """The processor with the run's evaluation geometry (`DataArguments.eval_geometry`; "auto": DeiT's centre crop at
    natural-image resolutions, >= `CENTER_CROP_MIN_SIZE`, else a straight resize), recorded in its saved config."""
    geometry = data_args.eval_geometry
    if geometry == "auto":
        geometry = "center_crop" if min(config.image_size_2d) >= CENTER_CROP_MIN_SIZE else "resize"
    if geometry == eval_geometry(image_processor):
        return image_processor
    crop_pct = data_args.crop_pct if geometry == "center_crop" else None
    return build_image_processor(
        config, image_processor.image_mean, image_processor.image_std, image_processor.resample, crop_pct=crop_pct
    )


def build_trainer(prepared: _PreparedRun, training_args: LapeTrainingArguments) -> LapeTrainer:
    """The Trainer over the prepared splits: seeded per-sample augmentation, the batch collator, top-k metrics."""
    augmentation, processor = prepared.augmentation, prepared.image_processor
    train_dataset, eval_dataset = build_training_datasets(
        prepared.data,
        processor,
        augmentation,
        seed=training_args.data_seed if training_args.data_seed is not None else training_args.seed,
        skip_corrupt_images=prepared.skip_corrupt_images,
    )
    return LapeTrainer(
        model=prepared.model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=ImageClassificationCollator(
            processor, prepared.data.num_labels, augmentation.mixup, augmentation.cutmix, augmentation.random_erasing
        ),
        processing_class=processor,
        compute_metrics=build_compute_metrics(),
        callbacks=[EpochCallback(train_dataset)],
    )


def train_and_evaluate(
    trainer: LapeTrainer, checkpoint: str | None, preparation_seconds: float
) -> tuple[dict[str, float], float, dict[str, Any]]:
    """Train (resuming from `checkpoint`), evaluate, save the model, `predictions.json` and the Trainer's state and
    metrics files; returns the eval metrics, the wall time of training and evaluation, and the timings."""
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    # One pass over the eval set gives the metrics and every example's prediction (predictions.json: runs on the same
    # examples can then be compared example by example).
    evaluation = trainer.predict(trainer.eval_dataset, metric_key_prefix="eval")
    metrics = evaluation.metrics
    trainer.log(metrics)  # into the log history, as evaluate() puts them
    wall_time_seconds = time.perf_counter() - start
    cpu_seconds = _cpu_seconds() - cpu_start
    if trainer.interrupt.requested:  # Ctrl-C: the last complete checkpoint stays; no final model
        raise KeyboardInterrupt
    save_model_atomically(trainer, trainer.args.output_dir)
    if trainer.is_world_process_zero():
        id2label = trainer.model.config.id2label
        label_names = [id2label[index] for index in sorted(id2label)]
        EvalPredictions.from_logits(evaluation.predictions, evaluation.label_ids, label_names).write(
            trainer.args.output_dir
        )
    trainer.save_state()  # trainer_state.json: the log history (loss, learning rate, eval metrics per step)
    trainer.save_metrics("train", train_result.metrics)  # train_results.json, eval_results.json, all_results.json
    trainer.save_metrics("eval", metrics)
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
        "dataloader_num_workers": trainer.args.dataloader_num_workers,
    }
    return metrics, wall_time_seconds, timing


def _preset_of(model_args: ModelArguments) -> str | None:
    """The preset trained from, if any (the default one when no checkpoint or config file is given)."""
    if model_args.preset or model_args.model_name_or_path or model_args.config_name:
        return model_args.preset
    return DEFAULT_PRESET


def _demo_output_dir(run_args: RunArguments) -> str | None:
    """The demo's own output directory (which it may replace, saying so), for a demo run."""
    if not run_args.demo:
        return None
    return next(argument.split("=", 1)[1] for argument in DEMO_ARGS if argument.startswith("--output_dir="))


def _with_lora(
    model: LapeViTPreTrainedModel, model_args: ModelArguments, training_args: LapeTrainingArguments
) -> torch.nn.Module:
    """The model wrapped for LoRA training. The Trainer cannot read the label names from a peft model's forward
    (`**kwargs`), and without them evaluation returns no labels (no accuracy): they are named here."""
    model = apply_lora(model, model_args)
    training_args.label_names = training_args.label_names or ["labels"]
    counts = parameter_counts(model)
    logger.info(
        "LoRA r=%d on %s: training %d of %d parameters (%.2f%%)",
        model_args.lora_r,
        ", ".join(model_args.lora_target_modules),
        counts["trainable_parameters"],
        counts["total_parameters"],
        100 * counts["trainable_fraction"],
    )
    return model


def run_training(
    model_args: ModelArguments,
    data_args: DataArguments,
    augmentation: AugmentationArguments,
    training_args: LapeTrainingArguments,
    run_args: RunArguments | None = None,
) -> dict[str, Any]:
    """Train, evaluate and save (model, image processor, custom code, `results.json`); returns the results record
    as written (`RunResults.to_dict()`)."""
    run_args = run_args or RunArguments()
    if data_args.data_mode == "streaming" and run_args.classify_examples > 0:
        raise ValueError(
            f"classify_examples={run_args.classify_examples} needs an eval split it can index; with "
            "data_mode='streaming' the eval split is a stream: drop --classify_examples or use on_the_fly."
        )
    check_output_dir(training_args.output_dir, training_args.overwrite_output_dir, _demo_output_dir(run_args))
    checkpoint = _resolve_checkpoint(training_args)
    if run_args.torch_num_threads is not None:
        torch.set_num_threads(run_args.torch_num_threads)
    set_seed(training_args.seed)
    with removed_if_empty_on_error(training_args.output_dir):
        prepared = prepare_run(model_args, data_args, augmentation, training_args)
        if model_args.lora_r > 0:
            prepared.model = _with_lora(prepared.model, model_args, training_args)
        trainer = build_trainer(prepared, training_args)
        metrics, wall_time_seconds, timing = train_and_evaluate(trainer, checkpoint, prepared.preparation_seconds)
    results = build_results(
        trainer.model,
        _preset_of(model_args),
        prepared.data,
        metrics,
        training_record(training_args, prepared.augmentation, trainer.accelerator.num_processes),
        wall_time_seconds,
        timing,
    )
    if model_args.lora_r > 0:
        results.training["lora"] = lora_record(trainer.model, model_args)
    if trainer.is_world_process_zero():
        if run_args.classify_examples > 0:
            results.examples = _classify_held_out(training_args.output_dir, prepared.data, run_args.classify_examples)
        results.write(training_args.output_dir)
    return results.to_dict()


def _classify_held_out(model_dir: str, data: ImageClassificationSplits, count: int) -> list[dict[str, Any]]:
    """Classify the first few eval images as a user would: the images as loaded, through pipeline()."""
    subset = data.raw_eval.select(range(min(count, len(data.raw_eval))))
    images = open_images(subset)
    kept = [(index, image) for index, image in enumerate(images) if image is not None]
    predictions = top_predictions(model_dir, [image for _, image in kept])
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
