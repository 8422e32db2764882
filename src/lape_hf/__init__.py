"""lape_hf: LaPE (Layer-adaptive Position Embedding) vision transformers as a Hugging Face model family.

`import lape_hf` registers `LapeViTConfig` and the LapeViT models with transformers' Auto classes and marks them for
remote code, so that `save_pretrained` writes the code files and `auto_map` beside the weights. It imports the model
family only; the rooms around it load when used:

    lape_hf.models.lape_vit   configuration, modeling, image processing (the Hub remote-code unit)
    lape_hf.training          arguments, data, transforms, trainer, metrics, results record, experiments
    lape_hf.hub               publishing, model card, offline Hub-cache helper
    lape_hf.conversion        official LaPE, timm, transformers ViT/DeiT and Compact Transformers checkpoints
    lape_hf.analysis          per-layer position-embedding similarity maps
    lape_hf.predict           classifying image files with pipeline()
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from transformers import AutoBackbone, AutoConfig, AutoModel, AutoModelForImageClassification

from . import _deprecated_modules
from .models.lape_vit import (
    PRESETS,
    LapeViTBackbone,
    LapeViTConfig,
    LapeViTForImageClassification,
    LapeViTForImageClassificationWithTeacher,
    LapeViTModel,
    LapeViTPreTrainedModel,
)

try:
    __version__ = version("lape_hf")  # one home: pyproject.toml
except PackageNotFoundError:  # a source tree on sys.path without installation
    __version__ = "0+unknown"

AutoConfig.register(LapeViTConfig.model_type, LapeViTConfig, exist_ok=True)
AutoModel.register(LapeViTConfig, LapeViTModel, exist_ok=True)
AutoBackbone.register(LapeViTConfig, LapeViTBackbone, exist_ok=True)
# As transformers does for DeiT: one config, two classifiers, chosen by the checkpoint's `architectures`.
AutoModelForImageClassification.register(
    LapeViTConfig, (LapeViTForImageClassification, LapeViTForImageClassificationWithTeacher), exist_ok=True
)
LapeViTConfig.register_for_auto_class()
LapeViTModel.register_for_auto_class("AutoModel")
LapeViTBackbone.register_for_auto_class("AutoBackbone")
LapeViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")
LapeViTForImageClassificationWithTeacher.register_for_auto_class("AutoModelForImageClassification")

# Names importable from the top level whose code loads only when first used (conversion pulls in more than the model).
_LAZY_NAMES = {
    "CheckpointConversionError": "lape_hf.conversion",
    "convert_cct_state_dict": "lape_hf.conversion",
    "convert_checkpoint": "lape_hf.conversion",
    "convert_official_state_dict": "lape_hf.conversion",
    "convert_timm_state_dict": "lape_hf.conversion",
    "convert_transformers_model": "lape_hf.conversion",
    "init_lape_from_add": "lape_hf.conversion",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(_LAZY_NAMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lape_hf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES))


_deprecated_modules.install()

__all__ = [
    *_LAZY_NAMES,
    "PRESETS",
    "LapeViTBackbone",
    "LapeViTConfig",
    "LapeViTForImageClassification",
    "LapeViTForImageClassificationWithTeacher",
    "LapeViTModel",
    "LapeViTPreTrainedModel",
    "__version__",
]
