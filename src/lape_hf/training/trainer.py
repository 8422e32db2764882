"""The Trainer of lape_hf: DeiT's weight-decay groups, a loss for MixUp/CutMix soft targets, top-k metrics; a run
stops with an error when its loss turns non-finite, and after the current step on Ctrl-C."""

from __future__ import annotations

import logging
import math
import os
import pickle
import signal
import threading
import time
from pathlib import Path
from typing import Any

import evaluate
import torch
import torch.nn.functional as F
from accelerate.utils import DistributedType
from torch import nn
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import EvalPrediction, Trainer, TrainerCallback

logger = logging.getLogger(__name__)

METRIC_PATH = Path(__file__).resolve().parent / "metrics" / "top_k_accuracy"
# A checkpoint's saved train-stream state, one file per process (each reads its own shards); `torch.save`d and read
# back with `weights_only=True` (plain containers, ints, bytes: an untrusted checkpoint cannot run code).
STREAM_STATE_NAME = "stream_state_rank{rank}.pt"


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
        check_fsdp_is_running(self.accelerator.distributed_type, self.args.fsdp)
        self._stream_loader: StatefulDataLoader | None = None
        self._stream_resume_state: dict | None = None
        self._stream_rng_checkpoint: str | None = None

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

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        if isinstance(resume_from_checkpoint, str) and self._is_stream(self.train_dataset):
            self._stream_resume_state = self._load_stream_state(resume_from_checkpoint)
            self._stream_rng_checkpoint = resume_from_checkpoint
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    @staticmethod
    def _is_stream(dataset: Any) -> bool:
        from .streaming import ResumableStream

        return isinstance(dataset, ResumableStream)

    def get_train_dataloader(self):
        """For the train stream, torchdata's `StatefulDataLoader`, restored to the checkpoint's state when resuming.

        It is not passed through `accelerator.prepare`: the stream already reads this process's shards, and
        accelerate's wrapper would either split each batch again or dispatch batches from process 0, and it does not
        carry the loader's `state_dict` (`split_batches` is refused for a stream). The workers snapshot their state
        at every step the Trainer can checkpoint (`checkpoint_interval_batches`), so such a checkpoint needs no replay
        (one elsewhere, as on Ctrl-C, replays the batches since the last snapshot) while the shuffle buffer is not
        copied every batch."""
        if not self._is_stream(self.train_dataset):
            return super().get_train_dataloader()
        args = self.args
        loader = StatefulDataLoader(
            self.train_dataset,
            batch_size=self._train_batch_size,
            collate_fn=self._get_collator_with_removed_columns(self.data_collator, description="training"),
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            prefetch_factor=args.dataloader_prefetch_factor,
            persistent_workers=args.dataloader_persistent_workers,
            multiprocessing_context=args.dataloader_multiprocessing_context,
            in_order=args.dataloader_in_order,
            snapshot_every_n_steps=checkpoint_interval_batches(args),
        )
        if self._stream_resume_state is not None:
            loader.load_state_dict(self._stream_resume_state)
            self._stream_resume_state = None
        self._stream_loader = loader
        return loader

    def _stream_settings(self) -> dict[str, Any]:
        """The settings a saved stream state holds for (saved with it, checked on resume)."""
        return {
            "processes": self.args.world_size,
            "dataloader_num_workers": self.args.dataloader_num_workers,
            **self.train_dataset.resume_settings(),
        }

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        if self._stream_loader is not None:
            path = os.path.join(output_dir, STREAM_STATE_NAME.format(rank=self.args.process_index))
            state = {"settings": self._stream_settings(), "loader": self._stream_loader.state_dict()}
            torch.save(state, path + ".tmp")
            os.replace(path + ".tmp", path)

    def _load_stream_state(self, checkpoint: str) -> dict:
        """This process's saved loader state, after checking that it was saved with this run's settings."""
        path = os.path.join(checkpoint, STREAM_STATE_NAME.format(rank=self.args.process_index))
        first = os.path.join(checkpoint, STREAM_STATE_NAME.format(rank=0))
        if not os.path.isfile(path) and not os.path.isfile(first):
            raise ValueError(
                f"resume_from_checkpoint={checkpoint!r} has no saved stream state ({os.path.basename(path)}): it was "
                "not written by a streaming run, or written with --save_only_model (model weights only: no "
                "optimizer, RNG or stream state), so the stream cannot continue where it stopped."
            )
        # With more processes than the checkpoint's, this rank has no file: process 0's names the difference.
        saved = read_stream_state(path if os.path.isfile(path) else first)
        if not os.path.isfile(path) and saved["settings"].get("processes") == self.args.world_size:
            raise ValueError(
                f"resume_from_checkpoint={checkpoint!r} has no {os.path.basename(path)}, although it was saved by "
                f"{self.args.world_size} processes, as many as this run has: this process's stream state is missing."
            )
        current = self._stream_settings()
        for name, value in current.items():
            if saved["settings"].get(name) != value:
                was = saved["settings"].get(name)
                raise ValueError(
                    f"resume_from_checkpoint={checkpoint!r} saved its stream with {name}={was!r} but this run has "
                    f"{name}={value!r}: a stream resumes only with the settings it was saved with."
                )
        return saved["loader"]

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        start = time.perf_counter()
        batches = super().get_batch_samples(epoch_iterator, num_batches, device)
        self.data_wait_seconds += time.perf_counter() - start
        if self._stream_rng_checkpoint is not None:
            # Starting the resumed stream's iterator draws from torch's RNG (its workers' base seed), a draw the
            # uninterrupted run made at its start: restore the checkpoint's RNG after it, as the Trainer does after
            # skipping batches, so dropout and drop-path draw as they would have.
            self._load_rng_state(self._stream_rng_checkpoint)
            self._stream_rng_checkpoint = None
        return batches


def read_stream_state(path: str) -> dict:
    """A saved stream state: plain values only, a dict with dict "settings" and "loader"; a damaged or foreign file
    is refused naming it."""
    try:
        saved = torch.load(path, weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} cannot be read as a stream state: it holds objects other than plain values, which lape_hf "
            "does not load (loading them could run code)."
        ) from error
    except (RuntimeError, EOFError) as error:  # a truncated file (no zip archive), an empty one
        raise ValueError(
            f"{path} cannot be read as a stream state: it is empty, truncated or not written by torch.save "
            f"({type(error).__name__})."
        ) from error
    layout = isinstance(saved, dict) and all(isinstance(saved.get(key), dict) for key in ("settings", "loader"))
    if not layout:
        raise ValueError(
            f"{path} cannot be read as a stream state: it is not a dict with dict 'settings' and 'loader' (got "
            f"{type(saved).__name__})."
        )
    return saved


def checkpoint_interval_batches(args) -> int:
    """Batches between two steps at which the Trainer can save a checkpoint, times the gradient accumulation steps:
    `save_steps` for `save_strategy="steps"`, `eval_steps` for "best" (it saves after an evaluation that improves);
    `max_steps` for "epoch" (training stops at `max_steps` inside the stream's one endless epoch, and the Trainer's
    end of that epoch saves there) and for "no" (no checkpoint, not even on Ctrl-C). A fraction below 1 is of
    `max_steps`. Saves off this interval replay from the last snapshot on resume: a Ctrl-C one, the final one at
    `max_steps` under "steps" when `max_steps` is not a multiple of `save_steps`, and under "best" an improving final
    evaluation off `eval_steps` (an interval falling on both would be their gcd, often one batch: a buffer copy
    every batch)."""
    interval = {"steps": args.save_steps, "best": args.eval_steps}.get(str(args.save_strategy.value), None)
    steps = args.max_steps
    if interval is not None:
        steps = math.ceil(args.max_steps * interval) if interval < 1 else int(interval)
    return max(1, steps) * args.gradient_accumulation_steps


def check_fsdp_is_running(distributed_type: DistributedType, fsdp_argument: Any) -> None:
    """Refuse to train when FSDP was asked for (an accelerate config or env with `distributed_type: FSDP`, or
    `--fsdp`) but accelerate set up something else: on CPU it silently falls back to plain data parallelism."""
    from_env = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if (from_env or fsdp_argument) and distributed_type != DistributedType.FSDP:
        # `--fsdp` makes accelerate set ACCELERATE_USE_FSDP=true before this runs, so the argument is checked first.
        where = "--fsdp" if fsdp_argument else "the accelerate config (ACCELERATE_USE_FSDP=true)"
        raise ValueError(
            f"FSDP was requested by {where} but accelerate set up {distributed_type.value}, not FSDP: it would train "
            "without sharding. FSDP needs GPUs here (accelerate turns it on only for GPUs and other accelerators); "
            "on CPU launch without the FSDP config (plain data parallelism)."
        )


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
