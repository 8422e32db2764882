"""LapeViT: the configuration, modeling and image-processing files of the model family.

The configuration and modeling files are what `save_pretrained` ships as Hub remote code; they import only torch,
transformers and each other. The image-processing file configures transformers' own processors (nothing to ship).
"""

from .configuration_lape_vit import (
    ENCODER_LAYER_FORMS,
    PE_JOINS,
    POOLER_TYPES,
    POSITION_EMBEDDING_TYPES,
    PRESETS,
    RELATIVE_POSITION_BIAS_TYPES,
    TOKENIZER_TYPES,
    LapeViTConfig,
)
from .image_processing_lape_vit import build_image_processor
from .modeling_lape_vit import (
    LapeViTBackbone,
    LapeViTForImageClassification,
    LapeViTForImageClassificationWithTeacher,
    LapeViTModel,
    LapeViTPreTrainedModel,
)

__all__ = [
    "ENCODER_LAYER_FORMS",
    "PE_JOINS",
    "POOLER_TYPES",
    "POSITION_EMBEDDING_TYPES",
    "PRESETS",
    "RELATIVE_POSITION_BIAS_TYPES",
    "TOKENIZER_TYPES",
    "LapeViTBackbone",
    "LapeViTConfig",
    "LapeViTForImageClassification",
    "LapeViTForImageClassificationWithTeacher",
    "LapeViTModel",
    "LapeViTPreTrainedModel",
    "build_image_processor",
]
