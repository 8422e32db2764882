"""Model cards for published LapeViT checkpoints, built with huggingface_hub's `ModelCard`/`ModelCardData`.

Everything a card states about a checkpoint comes from the checkpoint itself: the architecture from its config, the
numbers (and so the `model-index` metadata) from the `results.json` the training script writes beside the weights.
Prose that a file cannot know (a title, what the checkpoint is for, dataset notes, extra limitations) comes from a
per-model card source, a small YAML file in `model_cards/`. The layout of the card is a Jinja template there too.

A model directory without `results.json` is still publishable: its card says plainly that no evaluation results
were supplied and has no `model-index`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..models.lape_vit.configuration_lape_vit import (
    PE_JOIN_DESCRIPTIONS,
    POSITION_EMBEDDING_DESCRIPTIONS,
    PRESETS,
    LapeViTConfig,
)
from ..training.results import ACCURACY_METRICS, ResultsError, load_results

TASK = "image-classification"

CITATION_BIBTEX = """\
@InProceedings{Yu_2023_ICCV,
    author    = {Yu, Runyi and Wang, Zhennan and Wang, Yinhuai and Li, Kehan and Liu, Chang and Duan, Haoyi and
                 Ji, Xiangyang and Chen, Jie},
    title     = {LaPE: Layer-adaptive Position Embedding for Vision Transformers with Independent Layer
                 Normalization},
    booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
    year      = {2023},
    pages     = {5886--5896},
    note      = {arXiv:2212.05262, first titled "Position Embedding Needs an Independent Layer Normalization"}
}"""

# results.json metric key -> (model-index metric type, display name). Only these go into `model-index`; the card's
# results table lists every numeric metric.
MODEL_INDEX_METRICS = {
    "eval_accuracy": ("accuracy", "Top-1 accuracy"),
    "eval_top5_accuracy": ("top_5_accuracy", "Top-5 accuracy"),
}

# Dataset names the training script uses for data that is not a Hub dataset; anything else is taken as a Hub id.
LOCAL_DATASETS = {
    "sklearn-digits": "the scikit-learn digits (8x8 handwritten digits)",
    "imagefolder": "a local image folder",
}

# Trainer's speed figures are not properties of the model; the card's results table leaves them out.
SPEED_METRIC_SUFFIXES = ("_runtime", "_samples_per_second", "_steps_per_second")
NOT_MODEL_METRICS = frozenset({"epoch"})

TRAINING_FIELDS = {
    "epochs": "Epochs",
    "max_steps": "Maximum steps",
    "learning_rate": "Peak learning rate",
    "per_device_train_batch_size": "Batch size per device",
    "gradient_accumulation_steps": "Gradient accumulation steps",
    "num_processes": "Processes (devices)",
    "weight_decay": "Weight decay",
    "lr_scheduler_type": "Learning-rate schedule",
    "warmup_ratio": "Warm-up (fraction of steps)",
    "warmup_steps": "Warm-up steps",
    "label_smoothing": "Label smoothing",
    "mixup": "Mixup alpha",
    "cutmix": "CutMix alpha",
    "rand_augment": "RandAugment",
    "random_erasing": "Random erasing probability",
    "random_resized_crop": "Random resized crop",
    "crop_scale_min": "Random resized crop, minimum scale",
    "seed": "Seed",
}


class CardSourceError(ValueError):
    """A per-model card source (YAML) has an unknown key or a value of the wrong type."""


# ---------------------------------------------------------------------------------------------------------------------
# Inputs: results.json and the per-model card source
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CardSource:
    """The prose of one published model that its files cannot know. Every field is optional."""

    title: str | None = None
    summary: str | None = None
    license: str = "apache-2.0"
    tags: tuple[str, ...] = ()
    datasets: tuple[str, ...] | None = None  # Hub dataset ids; None: taken from results.json when it is a Hub id
    dataset_name: str | None = None  # a readable dataset name for the card and the model-index
    dataset_description: str | None = None
    intended_uses: str | None = None
    limitations: tuple[str, ...] = ()
    base_model: str | None = None
    project_url: str | None = None  # where users get the lape_hf package

    @classmethod
    def from_yaml(cls, path: str | Path) -> CardSource:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            raise CardSourceError(f"Cannot read the card source {path}: {error}") from error
        if not isinstance(data, dict):
            raise CardSourceError(f"The card source {path} must be a YAML mapping, got {type(data).__name__}.")
        allowed = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise CardSourceError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(allowed)}.")
        values: dict[str, Any] = {}
        for name, value in data.items():
            if value is None:  # an empty key in the YAML: keep the default
                continue
            if name in ("tags", "datasets", "limitations"):
                if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                    raise CardSourceError(f"{path}: {name} must be a list of strings, got {value!r}.")
                values[name] = tuple(value)
            elif not isinstance(value, str):
                raise CardSourceError(f"{path}: {name} must be a string, got {value!r}.")
            else:
                values[name] = value.strip()
        return cls(**values)


# ---------------------------------------------------------------------------------------------------------------------
# Card data (YAML metadata) and body
# ---------------------------------------------------------------------------------------------------------------------
def is_hub_dataset_id(name: str) -> bool:
    return name not in LOCAL_DATASETS and not name.startswith(("/", ".", "~"))


def dataset_display_name(results: Mapping[str, Any] | None, source: CardSource) -> str | None:
    if source.dataset_name:
        return source.dataset_name
    if not results:
        return None
    name = results["dataset"]["name"]
    return LOCAL_DATASETS.get(name, name)


def eval_results_from(results: Mapping[str, Any], dataset_name: str | None) -> list[EvalResult]:
    """The `model-index` entries: the accuracy metrics of results.json, exactly as measured."""
    dataset = results["dataset"]
    entries = []
    for key, (metric_type, metric_name) in MODEL_INDEX_METRICS.items():
        if key not in results["metrics"]:
            continue
        entries.append(
            EvalResult(
                task_type=TASK,
                task_name="Image Classification",
                dataset_type=dataset["name"],
                dataset_name=dataset_name or dataset["name"],
                dataset_split=dataset.get("eval_split"),
                metric_type=metric_type,
                metric_name=metric_name,
                metric_value=results["metrics"][key],
            )
        )
    return entries


def build_card_data(
    config: LapeViTConfig, results: Mapping[str, Any] | None, repo_id: str, source: CardSource
) -> ModelCardData:
    model_name = source.title or repo_id.split("/")[-1]
    if source.datasets is not None:
        datasets = list(source.datasets)
    elif results and is_hub_dataset_id(results["dataset"]["name"]):
        datasets = [results["dataset"]["name"]]
    else:
        datasets = []
    eval_results = eval_results_from(results, dataset_display_name(results, source)) if results else []
    preset = (results or {}).get("preset")
    exact_preset = preset if preset in PRESETS and not preset_changes(config, preset) else None
    tags = [
        "vision",
        TASK,
        "vision-transformer",
        "lape",
        "position-embedding",
        f"pe-join-{config.pe_join}",
        f"pe-{config.position_embedding_type}",
        *([f"preset-{exact_preset.replace('/', '-')}"] if exact_preset else []),
        *source.tags,
    ]
    return ModelCardData(
        license=source.license,
        library_name="transformers",
        pipeline_tag=TASK,
        tags=tags,
        datasets=datasets or None,
        metrics=sorted({entry.metric_type for entry in eval_results}) or None,
        base_model=source.base_model,
        model_name=model_name,
        eval_results=eval_results or None,
    )


def preset_changes(config: LapeViTConfig, preset: str) -> list[str]:
    """The preset's fields that this model changed, as `name=value` (empty when it is the preset as defined)."""
    return [
        f"{name}={getattr(config, name)!r}" for name, value in PRESETS[preset].items() if getattr(config, name) != value
    ]


def _preset_description(config: LapeViTConfig, preset: str | None) -> str | None:
    if not preset:
        return None
    if preset not in PRESETS:
        return f"preset `{preset}`"
    changes = preset_changes(config, preset)
    return f"preset `{preset}`" + (f" with {', '.join(f'`{change}`' for change in changes)}" if changes else "")


def _format_metric(name: str, value: float) -> str:
    return f"{100 * value:.2f}%" if name in ACCURACY_METRICS else f"{value:.4g}"


def metric_rows(results: Mapping[str, Any]) -> Sequence[tuple[str, str]]:
    """The results table rows as shown on the card (metric key, formatted value), without speed figures."""
    return [
        (name, _format_metric(name, value))
        for name, value in results["metrics"].items()
        if name not in NOT_MODEL_METRICS and not name.endswith(SPEED_METRIC_SUFFIXES)
    ]


def _format_setting(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _training_rows(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The recipe as recorded by the training run: known settings first, in a fixed order, then any others."""
    training = dict(results.get("training") or {})
    max_steps = training.get("max_steps")
    if isinstance(max_steps, int) and max_steps <= 0:  # the Trainer's "not set" (-1)
        del training["max_steps"]
    elif isinstance(max_steps, int) and "epochs" in training:
        # A positive max_steps overrides num_train_epochs in the Trainer: show the epochs actually run instead.
        epoch = results["metrics"].get("epoch")
        training["epochs"] = f"{epoch:.3g} (stopped by max_steps)" if epoch is not None else "stopped by max_steps"
    rows = [(label, _format_setting(training[key])) for key, label in TRAINING_FIELDS.items() if key in training]
    rows += [(key, _format_setting(value)) for key, value in training.items() if key not in TRAINING_FIELDS]
    dataset = results["dataset"]
    for split_key, count_key, label in (
        ("train_split", "num_train", "Training split"),
        ("eval_split", "num_eval", "Evaluation split"),
    ):
        if split_key in dataset:
            count = f" ({dataset[count_key]} images)" if count_key in dataset else ""
            rows.append((label, f"`{dataset[split_key]}`{count}"))
    if "wall_time_seconds" in results:
        rows.append(("Wall time", f"{results['wall_time_seconds'] / 60:.1f} min"))
    versions = results.get("versions") or {}
    if versions:
        rows.append(("Software", ", ".join(f"{name} {version}" for name, version in versions.items())))
    return rows


def _label_summary(config: LapeViTConfig, shown: int = 10) -> str:
    names = [config.id2label[index] for index in sorted(config.id2label)]
    listed = ", ".join(f"`{name}`" for name in names[:shown])
    return listed + (f", ... ({len(names) - shown} more)" if len(names) > shown else "")


def render_model_card(
    config: LapeViTConfig,
    results: Mapping[str, Any] | None,
    repo_id: str,
    template_path: str | Path,
    source: CardSource | None = None,
    num_parameters: int | None = None,
    onnx_file: str | None = None,
    space_id: str | None = None,
) -> ModelCard:
    """The model card of a checkpoint to be published as `repo_id`, laid out by the Jinja template; `onnx_file` is
    the repository path of an exported ONNX graph (scripts/export.py), whose use the card then shows; `space_id` a
    Space with the model's demo page, which the card links to."""
    source = source or CardSource()
    card_data = build_card_data(config, results, repo_id, source)
    height, width = config.image_size_2d
    context = {
        "repo_id": repo_id,
        "title": card_data.model_name,
        "summary": source.summary,
        "intended_uses": source.intended_uses,
        "dataset_name": dataset_display_name(results, source),
        "dataset_description": source.dataset_description,
        "project_url": source.project_url,
        "extra_limitations": list(source.limitations),
        "config": config,
        "architecture": (config.architectures or ["LapeViTForImageClassification"])[0],
        "preset": _preset_description(config, (results or {}).get("preset")),
        "pe_join_description": PE_JOIN_DESCRIPTIONS[config.pe_join],
        "position_embedding_description": POSITION_EMBEDDING_DESCRIPTIONS[config.position_embedding_type],
        "image_height": height,
        "image_width": width,
        "num_parameters": f"{num_parameters:,}" if num_parameters is not None else None,
        "labels": _label_summary(config),
        "top_k": min(5, config.num_labels),
        "has_results": results is not None,
        "metric_rows": metric_rows(results) if results else [],
        "eval_split": results["dataset"].get("eval_split") if results else None,
        "eval_geometry": results["dataset"].get("eval_geometry") if results else None,
        "training_rows": _training_rows(results) if results else [],
        "citation": CITATION_BIBTEX,
        "onnx_file": onnx_file,
        "space_id": space_id,
    }
    template = read_card_template(template_path)
    undefined = _undeclared_variables(template) - set(context) - set(card_data.to_dict()) - {"card_data"}
    if undefined:
        raise ValueError(f"The model card template {template_path} uses undefined variables: {sorted(undefined)}.")
    return ModelCard.from_template(card_data, template_str=template, **context)


# A block tag alone on its line ({% if %}, {% for %}, {% endif %}...), with the line break after it.
_WHOLE_LINE_TAG = re.compile(r"^[ \t]*(\{%[^\n]*?%\})\n", re.MULTILINE)


def read_card_template(template_path: str | Path) -> str:
    """The template's text as `ModelCard.from_template` needs it.

    `from_template` renders with Jinja's default whitespace rules, under which a block tag on a line of its own
    leaves an empty line behind; the template is written one tag per line for readability, so the line break after
    each such tag is dropped here (what Jinja's `trim_blocks` and `lstrip_blocks` would do).
    """
    try:
        text = Path(template_path).read_text(encoding="utf-8")
    except OSError as error:
        raise FileNotFoundError(f"Cannot read the model card template {template_path}: {error}") from error
    return _WHOLE_LINE_TAG.sub(r"\1", text)


def _undeclared_variables(template: str) -> set[str]:
    """The names a template reads from its context (`from_template` would render a missing one as empty text)."""
    return jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(template))


def usage_code_blocks(card: ModelCard | str) -> list[str]:
    """The ```python blocks of a card's body, in order (what a reader would copy and run)."""
    text = card.text if isinstance(card, ModelCard) else ModelCard(card).text
    blocks: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if current is None and stripped == "```python":
            current = []
        elif current is not None and stripped == "```":
            blocks.append("\n".join(current) + "\n")
            current = None
        elif current is not None:
            current.append(line)
    return blocks


__all__ = [
    "CITATION_BIBTEX",
    "CardSource",
    "CardSourceError",
    "ResultsError",
    "build_card_data",
    "eval_results_from",
    "load_results",
    "render_model_card",
    "usage_code_blocks",
]
