"""Training LapeViT with the Hugging Face Trainer (plain, or under `accelerate launch`).

arguments    the command-line dataclasses (HfArgumentParser) and the demo recipe
data         datasets: the bundled digits, image folders, Hub datasets; decoding and the label set
transforms   torchvision augmentation, per-batch seeding, the collator (MixUp/CutMix)
trainer      LapeTrainer: weight-decay groups from the model, soft-target loss, top-k metrics
results      the results.json record: one typed definition, written here and read by the model card
run          run_training: prepare the data and model, build the Trainer, train and evaluate, save the results
experiments  the paper's comparison of joins and PE types over seeds
"""

from __future__ import annotations

import importlib
from typing import Any

# Public names and the module that defines each, imported on first use: `import lape_hf.training.results` (the model
# card does) then loads neither the Trainer, nor `datasets`, nor torchvision.
_NAMES = {
    "ARGUMENT_CLASSES": "arguments",
    "DEFAULT_PRESET": "arguments",
    "DEMO_ARGS": "arguments",
    "DataArguments": "arguments",
    "LapeTrainingArguments": "arguments",
    "ModelArguments": "arguments",
    "RunArguments": "arguments",
    "AugmentationArguments": "transforms",
    "LapeTrainer": "trainer",
    "build_compute_metrics": "trainer",
    "classification_loss": "trainer",
    "load_accuracy_metric": "trainer",
    "build_config": "run",
    "build_model_and_processor": "run",
    "run_training": "run",
    "top_predictions": "run",
    "RunResults": "results",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_NAMES])
