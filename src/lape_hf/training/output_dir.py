"""A training run's output directory: never silently replaced, never left half-written or empty.

- `check_output_dir`: a directory that holds a finished model (config + weights) is refused unless the user passes
  `--overwrite_output_dir`; the demo replaces its own previous output in its default directory, saying so.
- `removed_if_empty_on_error`: a run that fails (or is interrupted) and leaves the directory it created without a
  single file removes it again.
- `save_model_atomically`: the final model is written to a staging directory beside the output and moved in file by
  file, weights first and `config.json` last, so a model directory with a config is always a complete one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from transformers import Trainer
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

from ..atomic_files import give_default_permissions

logger = logging.getLogger(__name__)

WEIGHT_FILES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)


def finished_model_files(directory: str | os.PathLike) -> list[str]:
    """The files that make `directory` a finished model (its config and weights); empty when it is not one."""
    directory = Path(directory)
    weights = [name for name in WEIGHT_FILES if (directory / name).is_file()]
    return [CONFIG_NAME, *weights] if weights and (directory / CONFIG_NAME).is_file() else []


def check_output_dir(output_dir: str, overwrite: bool, demo_output_dir: str | None = None) -> None:
    """Refuse to train into `output_dir` when it holds a finished model, unless `overwrite`; `demo_output_dir` is
    the one directory the demo may replace without being told (its own previous output)."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NotADirectoryError(f"output_dir {output_dir!r} is a file, not a directory.")
    found = finished_model_files(output_dir)
    if not found:
        return
    if overwrite:
        logger.warning("Replacing the finished model in %s (--overwrite_output_dir).", output_dir)
    elif demo_output_dir is not None and os.path.abspath(output_dir) == os.path.abspath(demo_output_dir):
        logger.warning("Replacing the previous demo output in %s.", output_dir)
    else:
        raise FileExistsError(
            f"output_dir {output_dir!r} already holds a finished model ({', '.join(found)}); choose another "
            "--output_dir, or pass --overwrite_output_dir to replace it."
        )


@contextlib.contextmanager
def removed_if_empty_on_error(output_dir: str) -> Iterator[None]:
    """On an error (or Ctrl-C) inside the block, remove `output_dir` if this block created it and it holds no file
    (the Trainer creates it before training starts); a directory with checkpoints or logs stays."""
    existed = os.path.exists(output_dir)
    try:
        yield
    except BaseException:
        if not existed and os.path.isdir(output_dir) and not any(files for _, _, files in os.walk(output_dir)):
            shutil.rmtree(output_dir, ignore_errors=True)
        raise


def save_model_atomically(trainer: Trainer, output_dir: str) -> None:
    """`trainer.save_model(output_dir)`, through a staging directory beside it: the files appear in `output_dir`
    only once all are written, `config.json` last (a reader that finds the config finds the whole model)."""
    output_dir = os.path.abspath(output_dir)
    staging = os.path.join(os.path.dirname(output_dir), f".{os.path.basename(output_dir)}.saving")
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)  # left by a run killed while saving
    trainer.accelerator.wait_for_everyone()
    try:
        trainer.save_model(staging)
        trainer.accelerator.wait_for_everyone()
        if trainer.is_world_process_zero():
            give_default_permissions(staging)
            os.makedirs(output_dir, exist_ok=True)
            names = sorted(os.listdir(staging), key=lambda name: name == CONFIG_NAME)
            for stale in set(WEIGHT_FILES) - set(names):  # a replaced model's weights in another layout
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(output_dir, stale))
            for name in names:
                os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
    finally:
        if trainer.is_world_process_zero():
            shutil.rmtree(staging, ignore_errors=True)
