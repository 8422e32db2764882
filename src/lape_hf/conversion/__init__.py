"""Checkpoint conversion into LapeViT: official LaPE, timm, transformers ViT/DeiT and Compact Transformers (CCT).

The converters take in-memory objects (a state dict, a transformers model) and return a LapeViT classification model
that computes the same logits; `convert_checkpoint` wraps them for files and writes a model directory.
"""

from .checkpoint_files import (
    SOURCES,
    convert_checkpoint,
    load_state_dict_file,
    official_training_hints,
    save_converted_model,
)
from .compact_transformers import convert_cct_state_dict
from .core import CheckpointConversionError
from .finetune import init_lape_from_add
from .official import convert_official_state_dict, convert_timm_state_dict
from .transformers_models import convert_transformers_model, load_transformers_classifier

__all__ = [
    "SOURCES",
    "CheckpointConversionError",
    "convert_cct_state_dict",
    "convert_checkpoint",
    "convert_official_state_dict",
    "convert_timm_state_dict",
    "convert_transformers_model",
    "init_lape_from_add",
    "load_state_dict_file",
    "load_transformers_classifier",
    "official_training_hints",
    "save_converted_model",
]
