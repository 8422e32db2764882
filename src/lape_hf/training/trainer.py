"""The Trainer of lape_hf: DeiT's weight-decay groups, a loss for MixUp/CutMix soft targets, top-k metrics."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import evaluate
import torch
import torch.nn.functional as F
from torch import nn
from transformers import EvalPrediction, Trainer

logger = logging.getLogger(__name__)

METRIC_PATH = Path(__file__).resolve().parent / "metrics" / "top_k_accuracy"


def decay_parameter_names(model: nn.Module) -> list[str]:
    """DeiT's rule: weight decay on the matrices only; none on 1-D parameters (biases, norms) nor on the parameters
    the model names in `no_weight_decay()` (LapeViT: position embeddings, class/distillation tokens, RPE tables)."""
    owned = getattr(model, "no_weight_decay", None)
    skipped = set(owned()) if callable(owned) else set()
    return [
        name
        for name, parameter in model.named_parameters()
        if parameter.ndim > 1 and name not in skipped and not any(name.endswith("." + s) for s in skipped)
    ]


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
        return decay_parameter_names(model)

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
