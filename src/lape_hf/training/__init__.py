"""Training LapeViT with the Hugging Face Trainer (plain, or under `accelerate launch`).

arguments    the command-line dataclasses (HfArgumentParser) and the demo recipe
data         datasets: the bundled digits, image folders, Hub datasets; decoding and the label set
transforms   torchvision augmentation, per-batch seeding, the collator (MixUp/CutMix)
trainer      LapeTrainer: weight-decay groups from the model, soft-target loss, top-k metrics
results      the results.json record: one typed definition, written here and read by the model card
run          run_training: data, model, Trainer, train, evaluate, save
experiments  the paper's comparison of joins and PE types over seeds
"""

from .arguments import (
    ARGUMENT_CLASSES,
    DEFAULT_PRESET,
    DEMO_ARGS,
    DataArguments,
    LapeTrainingArguments,
    ModelArguments,
    RunArguments,
)
from .run import build_config, build_model_and_processor, classify_images, parse_config_overrides, run_training
from .trainer import LapeTrainer, build_compute_metrics, classification_loss, load_accuracy_metric
from .transforms import AugmentationArguments

__all__ = [
    "ARGUMENT_CLASSES",
    "DEFAULT_PRESET",
    "DEMO_ARGS",
    "AugmentationArguments",
    "DataArguments",
    "LapeTrainer",
    "LapeTrainingArguments",
    "ModelArguments",
    "RunArguments",
    "build_compute_metrics",
    "build_config",
    "build_model_and_processor",
    "classification_loss",
    "classify_images",
    "load_accuracy_metric",
    "parse_config_overrides",
    "run_training",
]
