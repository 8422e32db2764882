"""Helpers for the publishing, card, prediction and Hub-loading tests: a tiny trained-model directory made the way the
training script makes one (save_pretrained + image processor + results.json), an offline Hub cache, and a Python
subprocess in which lape_hf cannot be imported (a Hub user without the package)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import randomize_, tiny_config
from huggingface_hub import constants

import lape_hf
from lape_hf import LapeViTForImageClassification, LapeViTPreTrainedModel
from lape_hf.models.lape_vit.image_processing_lape_vit import build_image_processor

LABELS = ("cat", "dog", "bird")
TEMPLATE = Path(__file__).resolve().parent.parent / "model_cards" / "template.md"


def tiny_results(**overrides: Any) -> dict[str, Any]:
    """A results.json as the training script writes it, with numbers that are not round (so copies are exact)."""
    results = {
        "model_type": "lape_vit",
        "preset": None,
        "pe_join": "lape",
        "position_embedding_type": "learnable",
        "dataset": {
            "name": "sklearn-digits",
            "train_split": "train",
            "eval_split": "test",
            "num_train": 1437,
            "num_eval": 360,
            "num_labels": len(LABELS),
        },
        "metrics": {
            "eval_loss": 0.61,
            "eval_accuracy": 0.8138888888888889,
            "eval_top5_accuracy": 0.9972222222222222,
            "eval_runtime": 0.85,
            "eval_samples_per_second": 423.7,
            "eval_steps_per_second": 1.18,
            "epoch": 30.0,
        },
        "training": {
            "epochs": 30.0,
            "max_steps": -1,
            "learning_rate": 0.0005,
            "per_device_train_batch_size": 64,
            "gradient_accumulation_steps": 1,
            "weight_decay": 0.05,
            "label_smoothing": 0.1,
            "warmup_ratio": 0.1,
            "lr_scheduler_type": "cosine",
            "seed": 0,
            "mixup": 0.8,
            "cutmix": 1.0,
            "rand_augment": True,
            "random_erasing": 0.25,
            "random_resized_crop": True,
            "crop_scale_min": 0.6,
            "num_processes": 2,
        },
        "config": {},
        "versions": {"lape_hf": lape_hf.__version__, "transformers": "5.24.0", "torch": "2.14.1"},
        "wall_time_seconds": 754.2,
    }
    results.update(overrides)
    return results


def save_tiny_checkpoint(
    directory: Path,
    *,
    results: dict[str, Any] | None = None,
    model_class: type[LapeViTPreTrainedModel] = LapeViTForImageClassification,
    **config_overrides: Any,
) -> Path:
    """A complete trained-model directory: weights, config with auto_map, code files, processor, results.json."""
    config = tiny_config(
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={name: index for index, name in enumerate(LABELS)},
        **config_overrides,
    )
    model = randomize_(model_class(config)).eval()
    model.save_pretrained(directory)
    build_image_processor(config, image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25]).save_pretrained(directory)
    if results is not None:
        (directory / "results.json").write_text(json.dumps(results, indent=2))
    return directory


def go_offline(monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> None:
    """HF_HUB_CACHE=cache_dir and HF_HUB_OFFLINE=1 for this process (huggingface_hub reads both at import time)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


# Run first in the subprocess: `import lape_hf` raises, whichever finder (editable install, src on the path) would
# have found it, and the script checks that it really does before doing anything else.
_BLOCK_LAPE_HF = textwrap.dedent(
    """
    import sys

    class _NoLapeHf:
        def find_spec(self, name, path=None, target=None):
            if name == "lape_hf" or name.startswith("lape_hf."):
                raise ImportError(f"{name} is not installed here (test of a Hub user without lape_hf)")
            return None

    sys.meta_path.insert(0, _NoLapeHf())
    try:
        import lape_hf
    except ImportError:
        pass
    else:
        raise SystemExit("lape_hf is still importable")
    """
)


def run_without_lape_hf(code: str, *, cwd: Path, hub_cache: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter that cannot import lape_hf, offline, with `hub_cache` as the Hub cache."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "HF_TOKEN")}
    env.update(
        HF_HUB_CACHE=str(hub_cache),
        HF_HUB_OFFLINE="1",
        HF_HOME=str(cwd / "hf_home"),
        HF_MODULES_CACHE=str(cwd / "hf_modules"),
    )
    script = cwd / "without_lape_hf.py"
    script.write_text(_BLOCK_LAPE_HF + "\n" + code)
    completed = subprocess.run(
        [sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert completed.returncode == 0, f"subprocess failed:\nstdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    return completed
