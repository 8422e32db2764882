"""The Trainer of lape_hf: DeiT's weight-decay groups, a loss for MixUp/CutMix soft targets, top-k metrics; a run
stops with an error when its loss turns non-finite, and after the current step on Ctrl-C."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import evaluate
import torch
import torch.nn.functional as F
from torch import nn
from transformers import EvalPrediction, Trainer, TrainerCallback

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


class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite: the run stops before the optimizer step, and no model is saved."""


class StopOnInterrupt(TrainerCallback):
    """Ctrl-C (SIGINT) during training ends it after the current step, with a checkpoint of that step when the run
    saves checkpoints; a second Ctrl-C stops at once. `requested` tells the caller, which then does not save a final
    model. The handler is installed for `train()` only (and only in the main thread, where Python delivers signals)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous_handler = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            signal.signal(signal.SIGINT, self._previous_handler or signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("Interrupted: stopping after the current step (Ctrl-C again to stop at once).")

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_training_stop = True
            control.should_save = args.save_strategy != "no"
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None


class LapeTrainer(Trainer):
    """`Trainer` with DeiT's weight-decay groups, a loss that takes MixUp/CutMix soft targets (label smoothing only
    in training, so `eval_loss` is plain cross-entropy), and a count of the time spent waiting for batches."""

    loss_is_scaled_for_ga = False  # our loss is a per-batch mean: the Trainer divides it by the accumulation steps

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The loss does not use `num_items_in_batch`; not counting it also avoids a cross-process sync per step.
        self.model_accepts_loss_kwargs = False
        self.data_wait_seconds = 0.0
        self.interrupt = StopOnInterrupt()
        self.add_callback(self.interrupt)

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        return decay_parameter_names(model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        smoothing = self.args.label_smoothing_factor if model.training else 0.0
        loss = classification_loss(outputs, labels, smoothing)
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        # The Trainer logs a non-finite loss as the average of the previous ones (logging_nan_inf_filter), so a run
        # would go on and save a broken model: stop here, before the optimizer step. (The check reads one number
        # per step, as that filter already does.)
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise NonFiniteLossError(
                f"the training loss became {loss.item()} at step {self.state.global_step + 1}; training stopped and "
                "no model was saved. Lower --learning_rate, raise --warmup_steps or set --max_grad_norm."
            )
        return loss

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
