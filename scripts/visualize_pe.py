#!/usr/bin/env python3
"""Draw the LaPE paper's per-layer position embedding similarity maps of a LapeViT model.

    python scripts/visualize_pe.py --model outputs/compare/lape                 # centre patch + full matrices
    python scripts/visualize_pe.py --model outputs/compare/add --compare outputs/compare/lape --raw --pdf
    python scripts/visualize_pe.py --model org/lape-deit-tiny --patch 3 4 --output_dir pe_maps

Writes `<output_dir>/<name>_patch_similarity.png` (one patch's similarity to every patch, per layer) and
`<output_dir>/<name>_similarity_matrix.png` (the N x N matrices), and prints how much the maps change between layers
and how local they are (definitions in `lape_hf.analysis`). The model may also be given as the first argument.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import lape_hf  # noqa: F401  (registers LapeViT with the Auto classes)
from lape_hf.analysis import (
    format_summary,
    load_model,
    plot_patch_maps,
    plot_similarity_matrices,
    position_embedding_maps,
    save_figure,
    write_summary_json,
)
from lape_hf.atomic_files import check_writable_dir
from lape_hf.cli import parse_args, script

KINDS = ("patch", "matrix")


@dataclass
class VisualizeArguments:
    model: str | None = field(default=None, metadata={"help": "model directory (save_pretrained) or Hub id"})
    compare: list[str] = field(
        default_factory=list, metadata={"metavar": "MODEL", "help": "more models, drawn row by row on the same scale"}
    )
    labels: list[str] | None = field(
        default=None, metadata={"help": "names for the models in the titles (default: path or Hub id)"}
    )
    patch: list[int] | None = field(
        default=None, metadata={"help": "ROW COLUMN of the patch whose map is drawn (default: centre)"}
    )
    raw: bool = field(default=False, metadata={"help": "also draw the raw PE p_0, before any layer"})
    kind: list[str] = field(
        default_factory=lambda: list(KINDS), metadata={"choices": KINDS, "help": "which figures to draw"}
    )
    output_dir: Path = field(default=Path("pe_maps"), metadata={"help": "where the figures go"})
    name: str = field(default="pe", metadata={"help": "file name prefix of the figures"})
    pdf: bool = field(default=False, metadata={"help": "also write each figure as PDF"})
    dpi: int = field(default=100, metadata={"help": "PNG resolution (pixels = inches x dpi)"})
    summary_json: Path | None = field(default=None, metadata={"help": "also write the measures to this JSON file"})

    def __post_init__(self) -> None:
        models = [self.model, *self.compare]
        if self.labels is not None and len(self.labels) != len(models):
            raise ValueError(f"--labels got {len(self.labels)} name(s) for {len(models)} model(s); give one per model.")
        if self.patch is not None and len(self.patch) != 2:
            raise ValueError(f"--patch takes ROW COLUMN (two numbers), got {self.patch}.")
        if self.dpi < 10:
            raise ValueError(f"--dpi={self.dpi} is too small; use at least 10.")


@script
def main(argv: list[str] | None = None) -> int:
    args = parse_args(VisualizeArguments, argv, description=__doc__, positional="model")
    models = [args.model, *args.compare]
    labels = args.labels or models
    check_writable_dir(args.output_dir)  # before the computation: an unwritable place fails at once
    if args.summary_json is not None:
        check_writable_dir(args.summary_json.parent)
    all_maps = [position_embedding_maps(load_model(model), label) for model, label in zip(models, labels, strict=True)]
    for maps in all_maps:
        print(format_summary(maps, include_raw=args.raw), end="\n\n")
    figures = {}
    if "patch" in args.kind:
        patch = tuple(args.patch) if args.patch else None
        figures["patch_similarity"] = plot_patch_maps(all_maps, patch=patch, include_raw=args.raw)
    if "matrix" in args.kind:
        figures["similarity_matrix"] = plot_similarity_matrices(all_maps, include_raw=args.raw)
    formats = ["png", "pdf"] if args.pdf else ["png"]
    for suffix, figure in figures.items():
        for path in save_figure(figure, args.output_dir / f"{args.name}_{suffix}", formats, dpi=args.dpi):
            print(f"wrote {path}")
    if args.summary_json is not None:
        print(f"wrote {write_summary_json(all_maps, args.summary_json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
