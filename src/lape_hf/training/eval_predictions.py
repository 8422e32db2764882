"""A run's evaluation predictions (`predictions.json` beside `results.json`): the predicted and the true class of every
eval example, in dataset order, so that two runs on the same examples can be compared example by example (McNemar's
test in `lape_hf.training.paired_comparison`)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_files import atomic_write
from .results import PREDICTIONS_FILE


@dataclass
class EvalPredictions:
    predicted: list[int]
    labels: list[int]
    label_names: list[str] | None = None

    def __post_init__(self) -> None:
        if len(self.predicted) != len(self.labels):
            raise ValueError(f"{len(self.predicted)} predictions for {len(self.labels)} labels.")

    @classmethod
    def from_logits(cls, logits: Any, label_ids: Any, label_names: list[str] | None = None) -> EvalPredictions:
        """From `Trainer.predict`'s output: the argmax class (of the first output when the model returns several,
        e.g. a distilled model's averaged logits come first) and the true class."""
        logits = logits[0] if isinstance(logits, tuple) else logits
        predicted = np.asarray(logits).argmax(axis=-1).astype(int).tolist()
        return cls(predicted, np.asarray(label_ids).astype(int).tolist(), label_names)

    def correct(self) -> list[bool]:
        return [predicted == label for predicted, label in zip(self.predicted, self.labels, strict=True)]

    def write(self, directory: str | os.PathLike) -> Path:
        """Write `directory/predictions.json` whole: to a temporary file first, then moved into place."""
        path = Path(directory) / PREDICTIONS_FILE
        with atomic_write(path) as file:
            json.dump(asdict(self), file)
        return path

    @classmethod
    def read(cls, directory: str | os.PathLike) -> EvalPredictions | None:
        """The record in `directory`; None for a run saved without one (older versions)."""
        path = Path(directory) / PREDICTIONS_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(data["predicted"], data["labels"], data.get("label_names"))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a predictions record ({{'predicted', 'labels'}}): {error}") from error
