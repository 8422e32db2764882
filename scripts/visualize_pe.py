#!/usr/bin/env python3
"""Draw the LaPE paper's per-layer position embedding similarity maps of a LapeViT model.

    python scripts/visualize_pe.py outputs/compare/lape                       # centre patch + full matrices
    python scripts/visualize_pe.py outputs/compare/add --compare outputs/compare/lape --raw --pdf
    python scripts/visualize_pe.py org/lape-deit-tiny --patch 3 4 --output-dir pe_maps

Writes `<output-dir>/<name>_patch_similarity.png` (one patch's similarity to every patch, per layer) and
`<output-dir>/<name>_similarity_matrix.png` (the N x N matrices), and prints how much the maps change between layers
and how local they are (definitions in `lape_hf.analysis`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lape_hf  # noqa: F401  (registers LapeViT with the Auto classes)
from lape_hf.analysis import (
    PositionEmbeddingAnalysisError,
    format_summary,
    load_model,
    plot_patch_maps,
    plot_similarity_matrices,
    position_embedding_maps,
    save_figure,
    write_summary_json,
)

KINDS = ("patch", "matrix")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model directory (save_pretrained) or Hub id")
    parser.add_argument(
        "--compare", nargs="+", default=[], metavar="MODEL", help="more models, drawn row by row on the same scale"
    )
    parser.add_argument("--labels", nargs="+", help="names for the models in the titles (default: path or Hub id)")
    parser.add_argument(
        "--patch", nargs=2, type=int, metavar=("ROW", "COLUMN"), help="patch whose map is drawn (default: centre)"
    )
    parser.add_argument("--raw", action="store_true", help="also draw the raw PE p_0, before any layer")
    parser.add_argument("--kind", nargs="+", choices=KINDS, default=list(KINDS), help="which figures to draw")
    parser.add_argument("--output-dir", type=Path, default=Path("pe_maps"), help="where the figures go")
    parser.add_argument("--name", default="pe", help="file name prefix of the figures")
    parser.add_argument("--pdf", action="store_true", help="also write each figure as PDF")
    parser.add_argument("--dpi", type=int, default=100, help="PNG resolution (pixels = inches x dpi)")
    parser.add_argument("--summary-json", type=Path, help="also write the measures to this JSON file")
    args = parser.parse_args(argv)
    models = [args.model, *args.compare]
    if args.labels is not None and len(args.labels) != len(models):
        parser.error(f"--labels got {len(args.labels)} name(s) for {len(models)} model(s); give one per model.")
    if args.dpi < 10:
        parser.error(f"--dpi={args.dpi} is too small; use at least 10.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models = [args.model, *args.compare]
    labels = args.labels or models
    formats = ["png", "pdf"] if args.pdf else ["png"]
    try:
        all_maps = [
            position_embedding_maps(load_model(model), label) for model, label in zip(models, labels, strict=True)
        ]
        for maps in all_maps:
            print(format_summary(maps, include_raw=args.raw), end="\n\n")
        figures = {}
        if "patch" in args.kind:
            patch = tuple(args.patch) if args.patch else None
            figures["patch_similarity"] = plot_patch_maps(all_maps, patch=patch, include_raw=args.raw)
        if "matrix" in args.kind:
            figures["similarity_matrix"] = plot_similarity_matrices(all_maps, include_raw=args.raw)
    except PositionEmbeddingAnalysisError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for suffix, figure in figures.items():
        for path in save_figure(figure, args.output_dir / f"{args.name}_{suffix}", formats, dpi=args.dpi):
            print(f"wrote {path}")
    if args.summary_json is not None:
        print(f"wrote {write_summary_json(all_maps, args.summary_json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
