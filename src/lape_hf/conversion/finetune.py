"""Start a LaPE model for fine-tuning from a converted add-join model (an initialization, not an equivalence)."""

from __future__ import annotations

import torch

from ..models.lape_vit.configuration_lape_vit import LAPE_JOINS, LapeViTConfig
from ..models.lape_vit.modeling_lape_vit import (
    LapeViTForImageClassification,
    LapeViTForImageClassificationWithTeacher,
    LapeViTModel,
)
from .core import CheckpointConversionError

LapeViTModels = LapeViTModel | LapeViTForImageClassification | LapeViTForImageClassificationWithTeacher


def init_lape_from_add(model: LapeViTModels, pe_join: str = "lape") -> LapeViTModels:
    """
    A LaPE model (`pe_join` "lape" or "lape_shared") holding every weight of an add-join `model` (e.g. a converted
    DeiT or CCT checkpoint), with each layer's new PE LayerNorm initialized as the identity affine (weight 1, bias 0).

    This is a starting point for fine-tuning, not the same function: the add model feeds layer 1 with
    `LN1(x + p)` and lets `p` travel in the residual stream, while the LaPE model keeps `p` out of the stream and
    feeds every layer `LN1(x) + LN_pe(p)`. Expect the logits to change and recover with fine-tuning.
    """
    if pe_join not in LAPE_JOINS:
        raise CheckpointConversionError(f"pe_join={pe_join!r} is not a LaPE join; allowed: {', '.join(LAPE_JOINS)}.")
    source = model.config
    if source.pe_join != "add":
        raise CheckpointConversionError(
            f"init_lape_from_add starts from an add-join model, got pe_join={source.pe_join!r}."
        )
    if source.position_embedding_type == "none":
        raise CheckpointConversionError(
            "The model has position_embedding_type='none': there is no PE for LaPE to normalize."
        )
    config = LapeViTConfig.from_dict({**source.to_dict(), "pe_join": pe_join})
    lape_model = type(model)(config)
    missing, unexpected = lape_model.load_state_dict(model.state_dict(), strict=False)
    new_norms = [key for key in missing if ".position_layernorm." in key]
    if unexpected or len(new_norms) != len(missing):
        raise CheckpointConversionError(
            "internal: the add and LaPE models differ in more than the PE LayerNorms.",
            missing=set(missing) - set(new_norms),
            unexpected=unexpected,
        )
    with torch.no_grad():
        for name, parameter in lape_model.named_parameters():
            if ".position_layernorm." in name:
                parameter.fill_(1.0 if name.endswith(".weight") else 0.0)
    return lape_model.train(model.training)
