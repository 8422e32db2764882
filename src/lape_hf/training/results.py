"""The `results.json` record of a training run: one typed definition (`RunResults`), written by `run_training`, read
by the model card, the comparison of joins and the report.

The file name lives here (`RESULTS_FILE`). Importing this module does not import the trainer, the data code or
torchvision (the model card imports it): the training types below are for type checkers only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..atomic_files import atomic_write

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ..models.lape_vit.configuration_lape_vit import LapeViTConfig
    from .arguments import LapeTrainingArguments
    from .data import ImageClassificationSplits
    from .transforms import AugmentationArguments

RESULTS_FILE = "results.json"
# Beside it: the predicted and true class of every eval example (`eval_predictions.EvalPredictions`).
PREDICTIONS_FILE = "predictions.json"
# Metrics that are fractions in [0, 1].
ACCURACY_METRICS = frozenset({"eval_accuracy", "eval_top5_accuracy"})
# The training settings recorded, as `results.json` names them <- as `TrainingArguments.to_dict()` names them.
RECORDED_TRAINING_SETTINGS = {
    "epochs": "num_train_epochs",
    "max_steps": "max_steps",
    "learning_rate": "learning_rate",
    "per_device_train_batch_size": "per_device_train_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "weight_decay": "weight_decay",
    "label_smoothing": "label_smoothing_factor",
    "lr_scheduler_type": "lr_scheduler_type",
    "seed": "seed",
    "data_seed": "data_seed",
}
VERSIONED_PACKAGES = ("transformers", "torch", "torchvision", "datasets", "accelerate")
# The order of the keys in the file (`extra` keys follow).
KEY_ORDER = (
    "model_type",
    "preset",
    "pe_join",
    "position_embedding_type",
    "dataset",
    "metrics",
    "training",
    "config",
    "versions",
    "wall_time_seconds",
    "timing",
    "examples",
)


class ResultsError(ValueError):
    """`results.json` is present but unusable: it would put wrong or no numbers on the card."""


@dataclass
class DatasetRecord:
    """What the metrics measure: the dataset, its splits and their sizes."""

    name: str
    train_split: str | None = None
    eval_split: str | None = None
    num_train: int | None = None
    num_eval: int | None = None
    num_labels: int | None = None
    # How the images reached the model (`training.data_modes`): prepared, on_the_fly or streaming.
    data_mode: str | None = None
    # The saved image processor's evaluation geometry: resize, or center_crop (DeiT's crop_pct).
    eval_geometry: str | None = None


@dataclass
class RunResults:
    """One training run's record. Only `dataset` and `metrics` are required (a hand-written file may hold just
    those); keys this version does not know are kept in `extra` and written back unchanged."""

    dataset: DatasetRecord
    metrics: dict[str, float]
    model_type: str | None = None
    preset: str | None = None  # written even when None: "no preset" (a fine-tuned checkpoint or a config file)
    pe_join: str | None = None
    position_embedding_type: str | None = None
    training: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    versions: dict[str, str] | None = None
    wall_time_seconds: float | None = None
    timing: dict[str, Any] | None = None
    examples: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (keys in `KEY_ORDER`); optional fields that are None are left out, except `preset`."""
        record: dict[str, Any] = {}
        for key in KEY_ORDER:
            value = getattr(self, key)
            if key == "dataset":
                record[key] = {name: item for name, item in dataclasses.asdict(value).items() if item is not None}
            elif value is not None or key == "preset":
                record[key] = value
        return {**record, **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = RESULTS_FILE) -> RunResults:
        """Check and type a record read from JSON; `ResultsError` names `source` and what is wrong."""
        if not isinstance(data, Mapping):
            raise ResultsError(f"{source} must hold a JSON object, got {type(data).__name__}.")
        metrics = _checked_metrics(data.get("metrics"), source)
        dataset = data.get("dataset")
        if not isinstance(dataset, Mapping) or not isinstance(dataset.get("name"), str) or not dataset["name"]:
            raise ResultsError(f"{source} needs a 'dataset' object with a non-empty 'name' (what the metrics measure).")
        known = {item.name for item in dataclasses.fields(DatasetRecord)}
        for key, expected in (("training", dict), ("versions", dict), ("config", dict), ("timing", dict)):
            if data.get(key) is not None and not isinstance(data[key], expected):
                raise ResultsError(f"{source}: {key!r} must be an object, got {type(data[key]).__name__}.")
        if data.get("examples") is not None and not isinstance(data["examples"], list):
            raise ResultsError(f"{source}: 'examples' must be a list, got {type(data['examples']).__name__}.")
        wall_time = data.get("wall_time_seconds")
        if wall_time is not None and (isinstance(wall_time, bool) or not isinstance(wall_time, (int, float))):
            raise ResultsError(f"{source}: 'wall_time_seconds'={wall_time!r} must be a number.")
        fields_ = {item.name for item in dataclasses.fields(cls)} - {"extra", "dataset", "metrics"}
        return cls(
            dataset=DatasetRecord(**{key: value for key, value in dataset.items() if key in known}),
            metrics=metrics,
            **{key: data[key] for key in fields_ if key in data},
            extra={key: value for key, value in data.items() if key not in fields_ | {"dataset", "metrics"}},
        )

    def write(self, directory: str | os.PathLike) -> Path:
        """Write `directory/results.json` whole: to a temporary file first, then moved into place."""
        path = Path(directory) / RESULTS_FILE
        with atomic_write(path) as file:
            json.dump(self.to_dict(), file, indent=2)
        return path

    @classmethod
    def read(cls, directory: str | os.PathLike) -> RunResults | None:
        """The record in `directory`, checked; `None` when the directory has none."""
        path = Path(directory) / RESULTS_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ResultsError(f"{path} is not valid JSON: {error}") from error
        return cls.from_dict(data, source=str(path))


def _checked_metrics(metrics: Any, source: str) -> dict[str, float]:
    if not isinstance(metrics, Mapping) or not metrics:
        raise ResultsError(f"{source} has no 'metrics' object (e.g. {{'eval_accuracy': 0.93}}).")
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ResultsError(f"{source}: metrics[{name!r}]={value!r} must be a finite number.")
        if name in ACCURACY_METRICS and not 0.0 <= value <= 1.0:
            raise ResultsError(f"{source}: metrics[{name!r}]={value!r} must be a fraction in [0, 1].")
    return dict(metrics)


def load_results(model_dir: str | Path, config: LapeViTConfig) -> dict[str, Any] | None:
    """`results.json` of a model directory, checked (`RunResults`) and against the model's config, as a JSON object
    (what the model card reads); `None` when the directory has none."""
    results = RunResults.read(model_dir)
    if results is None:
        return None
    path = Path(model_dir) / RESULTS_FILE
    # A results file from another run would put another model's numbers on this card.
    for key in ("model_type", "pe_join", "position_embedding_type"):
        recorded, expected = getattr(results, key), getattr(config, key)
        if recorded is not None and recorded != expected:
            raise ResultsError(f"{path} says {key}={recorded!r} but config.json has {expected!r}.")
    if results.dataset.num_labels is not None and results.dataset.num_labels != config.num_labels:
        raise ResultsError(
            f"{path} says dataset.num_labels={results.dataset.num_labels!r} but config.json has "
            f"num_labels={config.num_labels}."
        )
    return results.to_dict()


def _versions() -> dict[str, str]:
    return {"lape_hf": __version__, **{name: version(name) for name in VERSIONED_PACKAGES}}


def training_record(
    args: LapeTrainingArguments, augmentation: AugmentationArguments, num_processes: int
) -> dict[str, Any]:
    """The recipe as run: `TrainingArguments.to_dict()`'s values under the record's names, every augmentation
    setting (the flip resolved for the data) and the number of processes."""
    settings = args.to_dict()  # enums (the scheduler type) as their values, as JSON needs
    record = {key: settings[name] for key, name in RECORDED_TRAINING_SETTINGS.items()}
    record["epochs"] = float(record["epochs"])
    warmup = args.warmup_steps  # < 1: a fraction of all steps (LapeTrainingArguments)
    record["warmup_ratio" if 0 < warmup < 1 else "warmup_steps"] = warmup
    return {**record, **dataclasses.asdict(augmentation), "num_processes": num_processes}


def build_results(
    model: PreTrainedModel,
    preset: str | None,
    data: ImageClassificationSplits,
    metrics: dict[str, float],
    training: dict[str, Any],
    wall_time_seconds: float,
    timing: dict[str, Any] | None = None,
) -> RunResults:
    """The record of a finished run (`training` from `training_record`)."""
    config = model.config
    return RunResults(
        model_type=config.model_type,
        preset=preset,
        pe_join=config.pe_join,
        position_embedding_type=config.position_embedding_type,
        dataset=DatasetRecord(
            name=data.dataset_name,
            train_split=data.train_split,
            eval_split=data.eval_split,
            num_train=_length(data.train),
            num_eval=_length(data.eval),
            num_labels=data.num_labels,
            data_mode=data.data_mode,
            eval_geometry=data.eval_geometry,
        ),
        metrics={key: float(value) for key, value in metrics.items() if isinstance(value, (int, float))},
        training=training,
        config=config.to_dict(),
        versions=_versions(),
        wall_time_seconds=wall_time_seconds,
        timing=timing,
    )


def _length(split: Any) -> int | None:
    """Rows of a split; None for a stream (an `IterableDataset` has no length)."""
    try:
        return len(split)
    except TypeError:
        return None


def format_report(results: RunResults | Mapping[str, Any]) -> str:
    """A short human summary of a run: accuracy, time and the example predictions."""
    if not isinstance(results, RunResults):
        results = RunResults.from_dict(results)
    dataset, metrics, timing, config = results.dataset, results.metrics, results.timing or {}, results.config or {}
    lines = [
        f"Model: LapeViT, {config['num_hidden_layers']} layers of width {config['hidden_size']}, input "
        f"{config['image_size']} px (preset: {results.preset}), {results.pe_join} join, "
        f"{results.position_embedding_type} PE; trained by {(results.training or {})['num_processes']} process(es)",
        f"Data: {dataset.name} train={dataset.train_split} ({dataset.num_train}), "
        f"eval={dataset.eval_split} ({dataset.num_eval}), {dataset.num_labels} classes",
        f"Eval accuracy: {100 * metrics['eval_accuracy']:.2f}%  top-5: {100 * metrics['eval_top5_accuracy']:.2f}%  "
        f"loss: {metrics['eval_loss']:.4f}",
        f"Training + evaluation wall time: {results.wall_time_seconds:.1f} s"
        + (
            f" (waiting for data: {100 * timing['data_wait_fraction']:.1f}% of the training loop)"
            if timing.get("data_wait_fraction") is not None
            else ""
        ),
    ]
    if results.examples:
        lines.append("pipeline('image-classification') on held-out images:")
        for example in results.examples:
            mark = "ok" if example["true"] == example["predicted"] else "WRONG"
            lines.append(
                f"  #{example['index']}: true {example['true']}, predicted {example['predicted']} "
                f"(score {example['score']:.3f}) {mark}"
            )
    return "\n".join(lines)
