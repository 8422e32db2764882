"""LoRA fine-tuning of a LapeViT classifier with `peft`, through the Trainer.

LoRA adapters go on the attention's fused `qkv` projection (and optionally `proj`, `fc1`, `fc2`); the classifier head,
new for the fine-tuning label set, is trained in full (`modules_to_save`, never a low-rank update of a random matrix);
the LaPE PE LayerNorms (`position_layernorm`, 2 x hidden_size values per layer) are trained in full too unless
`lora_train_position_layernorms=False`: they are what LaPE adapts per layer, and they cost almost nothing. The output
directory holds the adapter (`adapter_config.json`, `adapter_model.safetensors`), which loads back onto the base model
with `PeftModel.from_pretrained`, and `merge_and_unload()` folds it into a plain LapeViT model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from torch import nn

logger = logging.getLogger(__name__)

# The Linear layers of a LapeViT layer that LoRA can adapt (attention: fused q/k/v and output projection; MLP).
LORA_TARGET_MODULES = ("qkv", "proj", "fc1", "fc2")
CLASSIFIER_NAMES = ("classifier", "cls_classifier", "distillation_classifier")
POSITION_LAYERNORM_NAME = "position_layernorm"


@dataclass
class LoraArguments:
    """LoRA instead of full fine-tuning (`--lora_r` > 0, with `--model_name_or_path`)."""

    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 (the default) fine-tunes every weight instead."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator (the update is alpha/r BA)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch's input."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["qkv"],
        metadata={"help": f"Linear layers to adapt, of {', '.join(LORA_TARGET_MODULES)}."},
    )
    lora_train_position_layernorms: bool = field(
        default=True,
        metadata={"help": "Train the LaPE PE LayerNorms in full (2 x hidden_size per layer); false freezes them."},
    )

    def __post_init__(self) -> None:
        if self.lora_r < 0:
            raise ValueError(f"lora_r={self.lora_r!r} must be >= 0 (0: no LoRA).")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout={self.lora_dropout!r} must be in [0, 1).")
        unknown = [name for name in self.lora_target_modules if name not in LORA_TARGET_MODULES]
        if unknown or not self.lora_target_modules:
            raise ValueError(
                f"lora_target_modules={self.lora_target_modules!r}: {unknown or 'empty'} matches no LapeViT module; "
                f"allowed: {', '.join(LORA_TARGET_MODULES)}."
            )

    @property
    def enabled(self) -> bool:
        return self.lora_r > 0


def _modules_to_save(model: nn.Module, lora_args: LoraArguments) -> list[str]:
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    to_save = [name for name in CLASSIFIER_NAMES if name in names]
    if lora_args.lora_train_position_layernorms and POSITION_LAYERNORM_NAME in names:
        to_save.append(POSITION_LAYERNORM_NAME)
    return to_save


def apply_lora(model: nn.Module, lora_args: LoraArguments) -> nn.Module:
    """`model` wrapped as a `peft` model: LoRA on the target Linear layers, the heads (and PE LayerNorms) in full."""
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    missing = [name for name in lora_args.lora_target_modules if name not in present]
    if missing:
        raise ValueError(
            f"lora_target_modules {missing} match no Linear layer of this model; allowed: "
            f"{', '.join(name for name in LORA_TARGET_MODULES if name in present)}."
        )
    config = LoraConfig(
        r=lora_args.lora_r,
        lora_alpha=lora_args.lora_alpha,
        lora_dropout=lora_args.lora_dropout,
        # A regex anchored on the layer names: "proj" must not also catch a module whose name ends in "proj".
        target_modules=rf".*\.({'|'.join(lora_args.lora_target_modules)})$",
        modules_to_save=_modules_to_save(model, lora_args),
    )
    return get_peft_model(model, config)


def parameter_counts(model: nn.Module) -> dict[str, Any]:
    """Trainable and total parameters, as logged and recorded in results.json."""
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    total = sum(parameter.numel() for parameter in model.parameters())
    return {"trainable_parameters": trainable, "total_parameters": total, "trainable_fraction": trainable / total}


def lora_record(model: nn.Module, lora_args: LoraArguments) -> dict[str, Any]:
    """What results.json says about a LoRA run: its settings and the parameter counts."""
    return {
        "r": lora_args.lora_r,
        "alpha": lora_args.lora_alpha,
        "dropout": lora_args.lora_dropout,
        "target_modules": list(lora_args.lora_target_modules),
        "train_position_layernorms": lora_args.lora_train_position_layernorms,
        **parameter_counts(model),
    }
