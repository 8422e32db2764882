"""The demo page of a LapeViT model as a Hugging Face Space (rendered by scripts/push_to_hub.py --space).

The models to show are the `models:` of this Space's README metadata (the first one is the main model, any others are
compared with it); the `lape_hf` folder beside this file is the package that made the Space.
"""

from pathlib import Path

from huggingface_hub import SpaceCard

import lape_hf  # noqa: F401  (registers LapeViT with the Auto classes)
from lape_hf.demo.app import launch_demo
from lape_hf.demo.core import load_demo_models

SPACE_CARD = Path(__file__).resolve().parent / "README.md"


def space_models(readme: Path = SPACE_CARD) -> list[str]:
    """The Hub ids listed under `models:` in the Space card."""
    return list(SpaceCard.load(readme).data.models or [])


if __name__ == "__main__":
    launch_demo(load_demo_models(space_models()))  # the Space sets GRADIO_SERVER_NAME and the port
