"""lape_hf: LaPE (Layer-adaptive Position Embedding) vision transformers as a Hugging Face model family.

Importing the package registers `LapeViTConfig` and the LapeViT models with transformers' Auto classes, and marks
them for remote code so that `save_pretrained` writes the code files and `auto_map` beside the weights.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .configuration_lape_vit import PRESETS, LapeViTConfig
from .conversion import (
    CheckpointConversionError,
    convert_cct_state_dict,
    convert_checkpoint,
    convert_official_state_dict,
    convert_timm_state_dict,
    convert_transformers_model,
    init_lape_from_add,
)
from .modeling_lape_vit import (
    LapeViTForImageClassification,
    LapeViTForImageClassificationWithTeacher,
    LapeViTModel,
    LapeViTPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(LapeViTConfig.model_type, LapeViTConfig, exist_ok=True)
AutoModel.register(LapeViTConfig, LapeViTModel, exist_ok=True)
# As transformers does for DeiT: one config, two classifiers, chosen by the checkpoint's `architectures`.
AutoModelForImageClassification.register(
    LapeViTConfig, (LapeViTForImageClassification, LapeViTForImageClassificationWithTeacher), exist_ok=True
)
LapeViTConfig.register_for_auto_class()
LapeViTModel.register_for_auto_class("AutoModel")
LapeViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")
LapeViTForImageClassificationWithTeacher.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "CheckpointConversionError",
    "convert_cct_state_dict",
    "convert_checkpoint",
    "convert_official_state_dict",
    "convert_timm_state_dict",
    "convert_transformers_model",
    "init_lape_from_add",
    "PRESETS",
    "LapeViTConfig",
    "LapeViTForImageClassification",
    "LapeViTForImageClassificationWithTeacher",
    "LapeViTModel",
    "LapeViTPreTrainedModel",
    "__version__",
]
