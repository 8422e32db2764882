#!/usr/bin/env python3
"""Convert a checkpoint into a LapeViT model directory (safetensors, config, code files, image processor).

    python scripts/convert_checkpoint.py --source official --checkpoint best_checkpoint.pth --pe-join lape \\
        --output lape-deit-tiny
    python scripts/convert_checkpoint.py --source timm --checkpoint deit_tiny.pth --output deit-tiny-add
    python scripts/convert_checkpoint.py --source transformers --checkpoint path/to/vit-dir --output vit-add
    python scripts/convert_checkpoint.py --source cct --checkpoint cct_7_3x1_32.pth --output cct-7 \\
        --image-mean 0.4914 0.4822 0.4465 --image-std 0.2470 0.2435 0.2616
    python scripts/convert_checkpoint.py --source timm --checkpoint deit_tiny.pth --init-lape lape \\
        --output deit-tiny-lape-init

What the weights cannot tell (the number of heads, LayerNorm eps) comes from a matching preset, --preset, or
--num-attention-heads / --set FIELD=VALUE. The output directory must not exist; nothing is written if anything fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lape_hf.conversion import SOURCES, CheckpointConversionError, convert_checkpoint
from lape_hf.models.lape_vit.configuration_lape_vit import PE_JOINS, POSITION_EMBEDDING_TYPES, PRESETS


def _field_value(text: str) -> tuple[str, Any]:
    """FIELD=VALUE with VALUE parsed as JSON when it is JSON (numbers, booleans, lists), else kept as a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not FIELD=VALUE")
    field, value = text.split("=", 1)
    try:
        return field, json.loads(value)
    except json.JSONDecodeError:
        return field, value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, choices=SOURCES, help="the checkpoint's layout")
    parser.add_argument(
        "--checkpoint", required=True, help="a .pth/.bin/.safetensors file, or a transformers model directory"
    )
    parser.add_argument("--output", required=True, type=Path, help="the model directory to create (must not exist)")
    parser.add_argument("--pe-join", "--pe_join", choices=PE_JOINS, help="official: the join the checkpoint used")
    parser.add_argument(
        "--position-embedding-type",
        "--position_embedding_type",
        choices=POSITION_EMBEDDING_TYPES,
        help="default: read from the weights (a stored sinusoidal table is recognized)",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="default: the preset whose shapes match, if one")
    parser.add_argument("--num-attention-heads", "--num_attention_heads", type=int, help="when no preset applies")
    parser.add_argument("--image-size", "--image_size", type=int, help="default: read from the position embedding")
    parser.add_argument(
        "--set",
        dest="fields",
        type=_field_value,
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any other LapeViTConfig field, e.g. --set layer_norm_eps=1e-5 (repeatable)",
    )
    parser.add_argument("--image-mean", "--image_mean", type=float, nargs=3, help="image processor mean")
    parser.add_argument("--image-std", "--image_std", type=float, nargs=3, help="image processor std")
    parser.add_argument(
        "--init-lape",
        "--init_lape",
        choices=("lape", "lape_shared"),
        help="save a LaPE model initialized from the converted add-join model, for fine-tuning",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = dict(args.fields)
    if args.num_attention_heads is not None:
        overrides["num_attention_heads"] = args.num_attention_heads
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    try:
        output = convert_checkpoint(
            args.source,
            args.checkpoint,
            args.output,
            pe_join=args.pe_join,
            position_embedding_type=args.position_embedding_type,
            preset=args.preset,
            overrides=overrides,
            image_mean=args.image_mean,
            image_std=args.image_std,
            init_lape_join=args.init_lape,
        )
    except CheckpointConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Saved the converted model to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
