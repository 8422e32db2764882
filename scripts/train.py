#!/usr/bin/env python3
"""Train or fine-tune a LapeViT image classifier with the Hugging Face Trainer.

    python scripts/train.py --demo                                   # the README's demo (bundled digits)
    python scripts/train.py --preset vit-lite-7/4 --pe_join lape --output_dir outputs/vit-lite
    python scripts/train.py --train_dir imgs/train --validation_dir imgs/val --preset deit-tiny
    python scripts/train.py --model_name_or_path ORG/lape-deit-tiny --dataset_name ORG/data --ignore_mismatched_sizes
    accelerate launch --num_processes 2 scripts/train.py ...         # data-parallel, any accelerate config
    python scripts/train.py recipes/cifar10-vit-lite-7-4.yaml        # all arguments from a YAML (or JSON) file
    python scripts/train.py recipes/cifar10-vit-lite-7-4.yaml --pe_join add   # ... and arguments after it win

`--help` lists every argument (model, data, augmentation and transformers' TrainingArguments). A user error (a bad
value, a missing path, no checkpoint to resume) is one line on stderr and exit status 2 (`lape_hf.cli`).
"""

from __future__ import annotations

import logging
import sys

from transformers import HfArgumentParser
from transformers.utils import logging as hf_logging

from lape_hf.cli import UserError, script
from lape_hf.training import ARGUMENT_CLASSES, DEMO_ARGS, run_training
from lape_hf.training.argument_files import as_command_line, is_argument_file, read_argument_file
from lape_hf.training.results import format_report


@script
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    arguments_file = argv[0] if argv and is_argument_file(argv[0]) else None
    if arguments_file is not None:  # the file's arguments first: arguments after it win
        file_values = read_argument_file(arguments_file)
        if file_values.get("demo"):
            raise UserError(
                f"{arguments_file} sets demo: true; the demo recipe applies to command lines (--demo). Put the "
                "recipe's arguments (lape_hf.training.DEMO_ARGS) in the file instead."
            )
        argv = [*as_command_line(file_values), *argv[1:]]
    arguments = parser.parse_args_into_dataclasses(args=argv)
    if arguments[-1].demo:  # the demo recipe first: arguments given on the command line win
        if arguments_file is not None:
            raise UserError(f"--demo with {arguments_file}: the demo recipe applies to command lines without a file.")
        arguments = parser.parse_args_into_dataclasses(args=DEMO_ARGS + argv)
    model_args, data_args, augmentation_args, training_args, run_args = arguments
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("lape_hf").setLevel(logging.INFO)
    hf_logging.set_verbosity_warning()
    results = run_training(model_args, data_args, augmentation_args, training_args, run_args)
    if training_args.process_index == 0:
        print(format_report(results))
        print(f"Saved to {training_args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
