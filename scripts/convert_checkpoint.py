#!/usr/bin/env python3
"""Convert a checkpoint into a LapeViT model directory (safetensors, config, code files, image processor).

    python scripts/convert_checkpoint.py --source official --checkpoint best_checkpoint.pth --pe_join lape \\
        --output_dir lape-deit-tiny
    python scripts/convert_checkpoint.py --source timm --checkpoint deit_tiny.pth --output_dir deit-tiny-add
    python scripts/convert_checkpoint.py --source transformers --checkpoint path/to/vit-dir --output_dir vit-add
    python scripts/convert_checkpoint.py --source cct --checkpoint cct_7_3x1_32.pth --output_dir cct-7 \\
        --image_mean 0.4914 0.4822 0.4465 --image_std 0.2470 0.2435 0.2616
    python scripts/convert_checkpoint.py --source timm --checkpoint deit_tiny.pth --init_lape lape \\
        --output_dir deit-tiny-lape-init

What the weights cannot tell (the number of heads, LayerNorm eps) comes from a matching preset, --preset, or
--num_attention_heads / --config_overrides with train.py's syntax (e.g. layer_norm_eps=1e-5,qkv_bias=true; the flag
may be repeated, and --set is its short form). The output directory must not exist; nothing is written if anything
fails.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lape_hf.cli import parse_args, script
from lape_hf.config_overrides import CONFIG_OVERRIDES_HELP, parse_config_overrides
from lape_hf.conversion import SOURCES, convert_checkpoint
from lape_hf.models.lape_vit.configuration_lape_vit import PE_JOINS, POSITION_EMBEDDING_TYPES, PRESETS


@dataclass
class ConvertArguments:
    source: str = field(metadata={"choices": SOURCES, "help": "the checkpoint's layout"})
    checkpoint: str = field(metadata={"help": "a .pth/.bin/.safetensors file, or a transformers model directory"})
    output_dir: Path = field(
        metadata={"aliases": ["--output"], "help": "the model directory to create (must not exist)"}
    )
    pe_join: str | None = field(
        default=None, metadata={"choices": PE_JOINS, "help": "official: the join the checkpoint used"}
    )
    position_embedding_type: str | None = field(
        default=None,
        metadata={
            "choices": POSITION_EMBEDDING_TYPES,
            "help": "default: read from the weights (a stored sinusoidal table is recognized)",
        },
    )
    preset: str | None = field(
        default=None, metadata={"choices": sorted(PRESETS), "help": "default: the preset whose shapes match, if one"}
    )
    num_attention_heads: int | None = field(default=None, metadata={"help": "when no preset applies"})
    image_size: int | None = field(default=None, metadata={"help": "default: read from the position embedding"})
    config_overrides: list[str] = field(
        default_factory=list,
        metadata={
            "aliases": ["--set"],
            "action": "extend",
            "metavar": "NAME=VALUE[,NAME=VALUE...]",
            "help": f"{CONFIG_OVERRIDES_HELP} Repeatable.",
        },
    )
    image_mean: list[float] | None = field(default=None, metadata={"help": "image processor mean (3 values)"})
    image_std: list[float] | None = field(default=None, metadata={"help": "image processor std (3 values)"})
    init_lape: str | None = field(
        default=None,
        metadata={
            "choices": ("lape", "lape_shared"),
            "help": "save a LaPE model initialized from the converted add-join model, for fine-tuning",
        },
    )

    def __post_init__(self) -> None:
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if values is not None and len(values) != 3:
                raise ValueError(f"--{name} takes 3 values (one per RGB channel), got {len(values)}: {values}.")
        parse_config_overrides(self.config_overrides)  # a bad item is a usage error before anything is read

    def overrides(self) -> dict[str, Any]:
        """The config fields to set: --config_overrides, then the named flags."""
        overrides = parse_config_overrides(self.config_overrides)
        if self.num_attention_heads is not None:
            overrides["num_attention_heads"] = self.num_attention_heads
        if self.image_size is not None:
            overrides["image_size"] = self.image_size
        return overrides


@script
def main(argv: list[str] | None = None) -> int:
    args = parse_args(ConvertArguments, argv, description=__doc__)
    output = convert_checkpoint(
        args.source,
        args.checkpoint,
        args.output_dir,
        pe_join=args.pe_join,
        position_embedding_type=args.position_embedding_type,
        preset=args.preset,
        overrides=args.overrides(),
        image_mean=args.image_mean,
        image_std=args.image_std,
        init_lape_join=args.init_lape,
    )
    print(f"Saved the converted model to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
