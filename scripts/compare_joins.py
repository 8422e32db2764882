#!/usr/bin/env python3
"""The LaPE paper's experiment in one command: one recipe, each PE join (and PE type), several seeds.

    python scripts/compare_joins.py                                  # add vs lape, seeds 0 1 2, the demo recipe
    python scripts/compare_joins.py --pe_joins add share unshare lape_shared lape --seeds 0 1 2 3 4
    python scripts/compare_joins.py --position_embedding_types learnable sinusoidal_1d --parallel_runs 2
    python scripts/compare_joins.py --recipe train --preset vit-lite-7/4 --dataset_name ORG/cifar10 ...
    python scripts/compare_joins.py --recipe recipes/fashion-mnist-vit-6x96.yaml --seeds 0 1 2 3 4

Every argument of scripts/train.py applies to all runs (after the recipe's, so they win). Each run's model directory
is kept under --output_root/<pe type>-<join>/seed-<seed>/; an interrupted comparison reuses finished runs.
Writes --output_root/compare_joins.json and compare_joins.png (--summary_name) and prints two Markdown tables: per
setting (mean ± std over seeds, sign test against add) and per seed against add (McNemar on the test predictions).
A user error is one line on stderr and exit status 2 (`lape_hf.cli`).
"""

from __future__ import annotations

import logging
import sys

from transformers import HfArgumentParser

from lape_hf.cli import UserError, script
from lape_hf.training import ARGUMENT_CLASSES, DEMO_ARGS
from lape_hf.training.argument_files import arguments_from_file
from lape_hf.training.experiments import (
    CompareArguments,
    compare_joins,
    format_comparison_table,
    plan_runs,
    summary_paths,
)
from lape_hf.training.paired_comparison import MCNEMAR_TITLE, format_paired_table


@script
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    compare, train_argv = HfArgumentParser(CompareArguments).parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True
    )
    if compare.recipe == "demo":
        recipe = [arg for arg in DEMO_ARGS if not arg.startswith("--classify_examples")]
    else:
        recipe = [] if compare.recipe == "train" else arguments_from_file(compare.recipe)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("lape_hf").setLevel(logging.INFO)
    if any(argument.split("=", 1)[0] in ("--output_dir", "--output-dir") for argument in train_argv):
        raise UserError(
            "--output_dir is set for each run (<output_root>/<pe type>-<join>/seed-<seed>); give --output_root."
        )
    # The training arguments are parsed here once, as each run will parse them: a bad or unknown one is a user error
    # before any run starts, not a failure inside every run.
    first_run_argv = plan_runs(compare, [*recipe, *train_argv])[0][-1]
    HfArgumentParser(ARGUMENT_CLASSES).parse_args_into_dataclasses(args=first_run_argv)
    summary = compare_joins(compare, [*recipe, *train_argv])
    print(format_comparison_table(summary))
    paired = format_paired_table(summary)
    if paired:
        print(f"\n{MCNEMAR_TITLE}:\n{paired}")
    print("Wrote {} and {}".format(*summary_paths(compare)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
