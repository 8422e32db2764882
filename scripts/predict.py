#!/usr/bin/env python3
"""Classify local images with a LapeViT model: a saved directory or a Hub id.

    python scripts/predict.py --model org/lape-vit-digits photos/ "more/**/*.png" img.jpg --top_k 3
    python scripts/predict.py --model outputs/run1 photos/ --output predictions.json   # or .csv

Inputs are files, folders (searched recursively) and glob patterns (quote them); URLs are refused. A file that cannot
be read is reported with its path and the run goes on; the exit status is 1 when any file could not be classified.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lape_hf  # noqa: F401  (registers LapeViT with the Auto classes, so no remote code is needed)
from lape_hf.predict import OUTPUT_FORMATS, classify_images, find_images, format_table, load_classifier


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument("--model", required=True, help="a model directory or a Hub id (org/name)")
    parser.add_argument("--revision", default=None, help="Hub branch, tag or commit of --model")
    parser.add_argument("--top_k", type=int, default=5, help="predictions per image (default 5)")
    parser.add_argument("--batch_size", type=int, default=16, help="images per forward pass (default 16)")
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1, mps (default: the pipeline's choice)")
    parser.add_argument(
        "--trust_remote_code", action="store_true", help="use the model code stored with the model instead of lape_hf's"
    )
    parser.add_argument("--output", type=Path, default=None, help="write the results to a .json or .csv file")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top_k={args.top_k} must be >= 1.")
    if args.batch_size < 1:
        parser.error(f"--batch_size={args.batch_size} must be >= 1.")
    if args.output is not None and args.output.suffix.lower() not in OUTPUT_FORMATS:
        parser.error(f"--output {args.output} must end in one of {', '.join(OUTPUT_FORMATS)}.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        paths = find_images(args.inputs)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    classifier = load_classifier(
        args.model, revision=args.revision, device=args.device, trust_remote_code=args.trust_remote_code
    )
    results = list(classify_images(classifier, paths, top_k=args.top_k, batch_size=args.batch_size))
    failed = [result for result in results if result.error is not None]
    for result in failed:
        print(f"cannot read {result.path}: {result.error}", file=sys.stderr)
    if args.output is None:
        print(format_table(results))
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with args.output.open("w", encoding="utf-8", newline="") as stream:
            OUTPUT_FORMATS[args.output.suffix.lower()](results, stream)
        print(f"Wrote {len(results) - len(failed)} classified and {len(failed)} unreadable file(s) to {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
