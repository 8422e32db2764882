#!/usr/bin/env python3
"""Classify local images with a LapeViT model: a saved directory or a Hub id.

    python scripts/predict.py --model org/lape-vit-digits photos/ "more/**/*.png" img.jpg --top_k 3
    python scripts/predict.py --model outputs/run1 photos/ --output_file predictions.json   # or .csv

Inputs are files, folders (searched recursively) and glob patterns (quote them); URLs are refused. A file that cannot
be read is reported with its path and the run goes on; the exit status is 1 when any file could not be classified.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

import lape_hf  # noqa: F401  (registers LapeViT with the Auto classes, so no remote code is needed)
from lape_hf.cli import parse_args, script
from lape_hf.predict import (
    OUTPUT_FORMATS,
    check_writable,
    classify_images,
    find_images,
    format_table,
    load_classifier,
    write_results,
)


@dataclass
class PredictArguments:
    inputs: list[str] = field(default_factory=list, metadata={"help": "image files, folders or glob patterns"})
    model: str | None = field(default=None, metadata={"help": "a model directory or a Hub id (org/name)"})
    revision: str | None = field(default=None, metadata={"help": "Hub branch, tag or commit of --model"})
    top_k: int = field(default=5, metadata={"help": "predictions per image"})
    batch_size: int = field(default=16, metadata={"help": "images per forward pass"})
    device: str | None = field(default=None, metadata={"help": "e.g. cpu, cuda, cuda:1, mps (default: the pipeline's)"})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "use the model code stored with the model instead of lape_hf's"}
    )
    output_file: Path | None = field(
        default=None, metadata={"aliases": ["--output"], "help": "write the results to a .json or .csv file"}
    )

    def __post_init__(self) -> None:
        if self.model is None:
            raise ValueError("--model is required: a model directory or a Hub id (org/name).")
        if self.top_k < 1:
            raise ValueError(f"--top_k={self.top_k} must be >= 1.")
        if self.batch_size < 1:
            raise ValueError(f"--batch_size={self.batch_size} must be >= 1.")
        if self.device is not None:
            try:
                torch.device(self.device)
            except RuntimeError:
                message = f"--device={self.device!r} is not a torch device, e.g. cpu, cuda, cuda:1, mps."
                raise ValueError(message) from None
        if self.output_file is not None and self.output_file.suffix.lower() not in OUTPUT_FORMATS:
            raise ValueError(f"--output_file {self.output_file} must end in one of {', '.join(OUTPUT_FORMATS)}.")


@script
def main(argv: list[str] | None = None) -> int:
    args = parse_args(PredictArguments, argv, description=__doc__, positional="inputs")
    paths = find_images(args.inputs)
    if args.output_file is not None:
        check_writable(args.output_file)
    classifier = load_classifier(
        args.model, revision=args.revision, device=args.device, trust_remote_code=args.trust_remote_code
    )
    results = list(classify_images(classifier, paths, top_k=args.top_k, batch_size=args.batch_size))
    failed = [result for result in results if result.error is not None]
    for result in failed:
        print(f"cannot read {result.path}: {result.error}", file=sys.stderr)
    if args.output_file is None:
        print(format_table(results))
    else:
        write_results(results, args.output_file)
        print(
            f"Wrote {len(results) - len(failed)} classified and {len(failed)} unreadable file(s) to {args.output_file}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
