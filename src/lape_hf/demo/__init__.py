"""A demo page for LapeViT models: classify images and explore the per-layer position embedding in the browser.

`lape_hf.demo.core` holds what the page computes (no Gradio needed); `lape_hf.demo.app` builds the Gradio page and
is imported only when it is served (`pip install -e ".[demo]"`, then `python scripts/demo_app.py --model DIR`).
"""

from .core import DEMO_EXTRA_MISSING, DemoInputError, DemoModel, classify, load_demo_models, pe_figure

__all__ = ["DEMO_EXTRA_MISSING", "DemoInputError", "DemoModel", "classify", "load_demo_models", "pe_figure"]
