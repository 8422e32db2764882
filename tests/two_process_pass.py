"""Run under `accelerate launch`: one pass over the Trainer's train dataloader of this process, recorded.

Writes `<output_dir>/pass_rank<N>.json`: a hash of every example's pixels (augmentation off: the pixels identify the
image) and its label, in the order this process saw them. A stream's dataloader has no end (pass follows pass): give
the pass's length with a first argument `--batches=N`. Used by tests/test_data_modes.py.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from pathlib import Path

from transformers import HfArgumentParser

from lape_hf.training.arguments import ARGUMENT_CLASSES
from lape_hf.training.run import build_trainer, prepare_run


def main() -> None:
    arguments = sys.argv[1:]
    batches = None
    if arguments and arguments[0].startswith("--batches="):
        batches, arguments = int(arguments[0].split("=", 1)[1]), arguments[1:]
    model_args, data_args, augmentation, training_args, _ = HfArgumentParser(
        ARGUMENT_CLASSES
    ).parse_args_into_dataclasses(args=arguments)
    trainer = build_trainer(prepare_run(model_args, data_args, augmentation, training_args), training_args)
    seen = []
    for batch in itertools.islice(trainer.get_train_dataloader(), batches):
        for pixels, label in zip(batch["pixel_values"], batch["labels"], strict=True):
            seen.append([hashlib.sha1(pixels.numpy().round(4).tobytes()).hexdigest(), int(label)])
    path = Path(training_args.output_dir) / f"pass_rank{trainer.accelerator.process_index}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(seen))


if __name__ == "__main__":
    main()
