#!/usr/bin/env python3
"""Export a LapeViT classifier as a graph with a dynamic batch size, height and width: ONNX or torch.export.

    python scripts/export.py --model outputs/demo --format onnx --output_dir outputs/demo-onnx
    python scripts/export.py outputs/demo --format torch_export --output_dir outputs/demo-pt2 --overwrite

MODEL is a saved model directory or a Hub id. The output directory holds the graph (`model.onnx` or `model.pt2`), the
model's `config.json` (labels, sizes) and `preprocessor_config.json` (the image processor that makes the input); it is
written in a temporary directory and moved into place, and an existing one is replaced only with `--overwrite`. The
graph takes `pixel_values` (normalized, any batch size; any height and width of at least two tokens per side, the
position embeddings resized as `interpolate_pos_encoding=True` does) and returns `logits`. A user error (a format, an
attention implementation or an output flag that cannot be exported, an existing output) is one line and exit 2.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from lape_hf.cli import parse_args, script
from lape_hf.export import EXPORT_FORMATS, export_model


@dataclass
class ExportArguments:
    model: str | None = field(
        default=None, metadata={"help": "a saved LapeViT classifier: directory or Hub id; also the first argument"}
    )
    format: str = field(default="onnx", metadata={"help": f"one of {', '.join(EXPORT_FORMATS)}"})
    output_dir: str | None = field(default=None, metadata={"help": "the directory to write (must not exist yet)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output directory"})

    def __post_init__(self) -> None:
        if self.format not in EXPORT_FORMATS:
            raise ValueError(f"--format {self.format!r} is not known; allowed: {', '.join(EXPORT_FORMATS)}.")
        if self.output_dir is None:
            raise ValueError("--output_dir is required: the directory to write the exported model to.")


@script
def main(argv: list[str] | None = None) -> int:
    args = parse_args(ExportArguments, argv, description=__doc__, positional="model")
    output = export_model(args.model, args.output_dir, args.format, overwrite=args.overwrite)
    print(f"Exported {args.model} as {args.format} to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
