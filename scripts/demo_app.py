#!/usr/bin/env python3
"""Serve the demo page of a LapeViT model: classify images, explore its per-layer position embedding maps.

    python scripts/demo_app.py --model outputs/demo
    python scripts/demo_app.py --model outputs/compare/add --compare outputs/compare/lape --port 7861

The models are loaded once, before the page starts; one that cannot be loaded is one line on stderr (exit status 2).
Needs the demo extra: pip install -e ".[demo]". Runs offline on the CPU; Gradio's analytics are off.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import lape_hf  # noqa: F401  (registers LapeViT with the Auto classes)
from lape_hf.cli import UserError, parse_args, script
from lape_hf.demo import DEMO_EXTRA_MISSING
from lape_hf.demo.core import load_demo_models


@dataclass
class DemoArguments:
    model: str | None = field(default=None, metadata={"help": "model directory (save_pretrained) or Hub id"})
    compare: list[str] = field(
        default_factory=list, metadata={"metavar": "MODEL", "help": "more models, shown beside it on the same scale"}
    )
    host: str = field(default="127.0.0.1", metadata={"help": "address to serve on (0.0.0.0: every interface)"})
    port: int | None = field(default=None, metadata={"help": "port to serve on (default: Gradio's, 7860)"})

    def __post_init__(self) -> None:
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ValueError(f"--port={self.port} is not a port number; use 1..65535.")


@script
def main(argv: list[str] | None = None) -> int:
    args = parse_args(DemoArguments, argv, description=__doc__, positional="model")
    try:
        from lape_hf.demo.app import launch_demo
    except ImportError as error:
        raise UserError(f"the demo needs Gradio ({error}); {DEMO_EXTRA_MISSING}") from error
    models = load_demo_models([args.model, *args.compare])
    launch_demo(models, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
