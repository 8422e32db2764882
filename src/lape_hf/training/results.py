"""The `results.json` record of a training run: written by `run_training`, read by the model card and the comparison.

The file name lives here (`RESULTS_FILE`); the record is built by `build_results` and summarized by `format_report`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from importlib.metadata import version
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from .. import __version__
from ..models.lape_vit.configuration_lape_vit import LapeViTConfig
from .arguments import DEFAULT_PRESET, LapeTrainingArguments, ModelArguments
from .data import ImageClassificationSplits
from .transforms import AugmentationArguments

RESULTS_FILE = "results.json"
# Metrics that are fractions in [0, 1].
ACCURACY_METRICS = frozenset({"eval_accuracy", "eval_top5_accuracy"})


class ResultsError(ValueError):
    """`results.json` is present but unusable: it would put wrong or no numbers on the card."""


def load_results(model_dir: str | Path, config: LapeViTConfig) -> dict[str, Any] | None:
    """Read and check `results.json` against the model's config; `None` when the directory has none."""
    path = Path(model_dir) / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ResultsError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(results, dict):
        raise ResultsError(f"{path} must hold a JSON object, got {type(results).__name__}.")

    metrics = results.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise ResultsError(f"{path} has no 'metrics' object (e.g. {{'eval_accuracy': 0.93}}).")
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ResultsError(f"{path}: metrics[{name!r}]={value!r} must be a finite number.")
        if name in ACCURACY_METRICS and not 0.0 <= value <= 1.0:
            raise ResultsError(f"{path}: metrics[{name!r}]={value!r} must be a fraction in [0, 1].")

    # A results file from another run would put another model's numbers on this card.
    expected = {
        "model_type": config.model_type,
        "pe_join": config.pe_join,
        "position_embedding_type": config.position_embedding_type,
    }
    for key, value in expected.items():
        if key in results and results[key] != value:
            raise ResultsError(f"{path} says {key}={results[key]!r} but config.json has {value!r}.")
    dataset = results.get("dataset")
    if not isinstance(dataset, dict) or not isinstance(dataset.get("name"), str) or not dataset["name"]:
        raise ResultsError(f"{path} needs a 'dataset' object with a non-empty 'name' (what the metrics measure).")
    if "num_labels" in dataset and dataset["num_labels"] != config.num_labels:
        raise ResultsError(
            f"{path} says dataset.num_labels={dataset['num_labels']!r} but config.json has "
            f"num_labels={config.num_labels}."
        )
    for key in ("training", "versions"):
        if key in results and not isinstance(results[key], dict):
            raise ResultsError(f"{path}: {key!r} must be an object, got {type(results[key]).__name__}.")
    return results


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
