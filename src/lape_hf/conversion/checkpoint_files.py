"""Checkpoint files in, a saved LapeViT model directory out: what `scripts/convert_checkpoint.py` runs.

Loading never executes code from the file (`torch.load(weights_only=True)`; argparse.Namespace, which DeiT-style
training checkpoints store as `args`, is the one class allowed besides tensors and containers). Saving writes into a
staging directory next to the output, reloads it through `AutoModelForImageClassification` to check it computes the
same logits, and only then moves it into place: a failed conversion leaves nothing behind, and an existing output is
never touched.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModelForImageClassification
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling
from transformers.utils import logging

from ..atomic_files import give_default_permissions
from ..models.lape_vit.configuration_lape_vit import LAPE_JOINS, PE_JOINS, POSITION_EMBEDDING_TYPES
from ..models.lape_vit.image_processing_lape_vit import build_image_processor
from ..models.lape_vit.modeling_lape_vit import LapeViTPreTrainedModel
from .compact_transformers import convert_cct_state_dict
from .core import CheckpointConversionError, check_choice, check_override_names, check_preset_name
from .finetune import init_lape_from_add
from .official import convert_official_state_dict, convert_timm_state_dict
from .transformers_models import convert_transformers_model, load_transformers_classifier

logger = logging.get_logger(__name__)

SOURCES = ("official", "timm", "transformers", "cct")

# The official training script's `--pe` and `--join-type` values, as LapeViT options. Its 'LaPE' join is not mapped:
# the keys and args of 'lape' and 'lape_shared' checkpoints look the same.
_OFFICIAL_PE = {"learnable": "learnable", "1D_sin": "sinusoidal_1d", "2D_sin": "sinusoidal_2d", "2D_RPE": "none"}
_OFFICIAL_JOIN = {"basic": "add", "share": "share", "unshare": "unshare"}


def load_state_dict_file(path: str | Path) -> tuple[dict[str, Any], Mapping[str, Any]]:
    """
    The state dict in a `.pth`/`.pt`/`.bin` (a state dict, or {"model": ...} / {"state_dict": ...}) or
    `.safetensors` file, and the whole loaded checkpoint (for its training `args`, when it has them).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointConversionError(f"Checkpoint file {str(path)!r} does not exist.")
    if path.suffix == ".safetensors":
        try:
            state_dict = load_file(path)
        except SafetensorError as error:
            raise CheckpointConversionError(f"{path} is not a readable safetensors file ({error}).") from None
        return state_dict, state_dict
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise _unpickling_error(path, str(error)) from None
    except (RuntimeError, EOFError, OSError) as error:  # a damaged torch.save archive
        raise CheckpointConversionError(f"{path} is not a readable PyTorch checkpoint ({error}).") from None
    except (KeyError, IndexError, ValueError):  # what the unpickler raises on text or random bytes
        raise CheckpointConversionError(
            f"{path} is not a PyTorch checkpoint: its bytes are neither a torch.save archive nor a pickle."
        ) from None
    if isinstance(checkpoint, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(checkpoint.get(key), Mapping):
                return dict(checkpoint[key]), checkpoint
        if all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
            return dict(checkpoint), checkpoint
    raise CheckpointConversionError(
        f"{path} holds a {type(checkpoint).__name__}, not a state dict or a dict with a 'model' state dict."
    )


# How torch >= 2.4 words a global that `weights_only` refuses: one outside its allow-list, or one from a module it
# blocks outright (os, posix, subprocess, builtins' eval...).
_REFUSED_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)")


def _unpickling_error(path: Path, message: str) -> CheckpointConversionError:
    """The reason `torch.load(weights_only=True)` refused `path`, on one line: the refused global, named, or the
    unpickler's own reason."""
    refused = _REFUSED_GLOBAL.search(message)
    if refused:
        return CheckpointConversionError(
            f"{path} needs more than torch.load(weights_only=True) allows: it pickles {refused.group(1)}, and "
            "unpickling arbitrary objects can run code, so it is refused. If you trust the file, re-save just "
            "its weights: torch.save(torch.load(path, weights_only=False)['model'], 'weights.pth')."
        )
    reason = re.search(r"WeightsUnpickler error:\s*(.+)", message)
    return CheckpointConversionError(
        f"{path} is not a readable PyTorch checkpoint ({reason.group(1) if reason else 'unpickling failed'})."
    )


def official_training_hints(checkpoint: Mapping[str, Any]) -> dict[str, str]:
    """`pe_join`/`position_embedding_type` from the `args` an official training checkpoint stores, when it has them."""
    args = checkpoint.get("args")
    hints: dict[str, str] = {}
    if isinstance(args, argparse.Namespace):
        pe, join = getattr(args, "pe", None), getattr(args, "join_type", None)
        if pe in _OFFICIAL_PE:
            hints["position_embedding_type"] = _OFFICIAL_PE[pe]
        if join in _OFFICIAL_JOIN and pe != "2D_RPE":
            hints["pe_join"] = _OFFICIAL_JOIN[join]
    return hints


def _check_same_logits(model: LapeViTPreTrainedModel, directory: Path) -> None:
    """The saved directory, loaded the way users load it, must compute what the converted model computes."""
    reloaded = AutoModelForImageClassification.from_pretrained(directory).eval()
    height, width = model.config.image_size_2d
    pixel_values = torch.randn(2, model.config.num_channels, height, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = model.eval()(pixel_values).logits, reloaded(pixel_values).logits
    if type(reloaded) is not type(model) or not torch.allclose(expected, got, atol=1e-6, rtol=0):
        raise CheckpointConversionError(
            f"The saved model ({type(reloaded).__name__}) does not reproduce the converted {type(model).__name__}."
        )


def _refuse_existing(output: Path) -> None:
    if output.exists() or output.is_symlink():
        raise CheckpointConversionError(
            f"Output {str(output)!r} already exists; choose a new directory (nothing was written)."
        )


def save_converted_model(
    model: LapeViTPreTrainedModel,
    output: str | Path,
    image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
    resample: PILImageResampling = PILImageResampling.BICUBIC,
) -> Path:
    """Save weights (safetensors), config, code files and image processor to a new directory, all or nothing."""
    output = Path(output).absolute()
    _refuse_existing(output)
    try:
        image_processor = build_image_processor(model.config, image_mean, image_std, resample)
    except ValueError as error:
        raise CheckpointConversionError(f"Cannot build the image processor saved with the model: {error}") from None
    existing_ancestor = next(parent for parent in output.parents if parent.is_dir())
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.converting-", dir=existing_ancestor))
    try:
        model.save_pretrained(staging)
        image_processor.save_pretrained(staging)
        _check_same_logits(model, staging)
        give_default_permissions(staging)
        output.parent.mkdir(parents=True, exist_ok=True)
        _refuse_existing(output)
        os.rename(staging, output)  # atomic on one filesystem: the output appears complete or not at all
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def _source_image_processing(path: str | Path) -> dict[str, Any]:
    """Mean, std and resampling of a transformers model directory's image processor, if it has one."""
    try:
        processor = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError):
        logger.warning(f"No image processor found with {path}; saving DeiT's ImageNet normalization.")
        return {}
    settings = {key: getattr(processor, key) for key in ("image_mean", "image_std") if getattr(processor, key, None)}
    if getattr(processor, "resample", None) is not None:
        settings["resample"] = PILImageResampling(processor.resample)
    return settings


def convert_checkpoint(
    source: str,
    checkpoint: str | Path,
    output: str | Path,
    *,
    pe_join: str | None = None,
    position_embedding_type: str | None = None,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    init_lape_join: str | None = None,
) -> Path:
    """
    Convert a checkpoint into a new LapeViT model directory and return its path.

    Args:
        source: `"official"` (LaPE `.pth`), `"timm"` (a VisionTransformer state dict file), `"transformers"` (a ViT or
            DeiT classifier directory or Hub id) or `"cct"` (a Compact Transformers state dict file).
        checkpoint, output: where to read, and a directory that must not exist yet.
        pe_join, position_embedding_type, preset, overrides: as for `convert_official_state_dict` (official), the
            last three also for timm and cct. Official checkpoints that store their training `args` fill in
            `--pe`/`--join-type` the user did not give.
        image_mean, image_std: the normalization of the saved image processor (default: the source model's for
            transformers, ImageNet's otherwise).
        init_lape_join: `"lape"`/`"lape_shared"` to save, instead of the converted add-join model, a LaPE model
            initialized from it for fine-tuning (`init_lape_from_add`).
    """
    overrides = dict(overrides or {})
    _check_options(source, pe_join, position_embedding_type, preset, overrides, init_lape_join)
    output = Path(output)
    _refuse_existing(output)
    model, processing = _convert_source(source, checkpoint, pe_join, position_embedding_type, preset, overrides)
    if init_lape_join is not None:
        model = init_lape_from_add(model, init_lape_join)
    if image_mean is not None:
        processing["image_mean"] = list(image_mean)
    if image_std is not None:
        processing["image_std"] = list(image_std)
    return save_converted_model(model, output, **processing)


def _check_options(
    source: str,
    pe_join: str | None,
    position_embedding_type: str | None,
    preset: str | None,
    overrides: Mapping[str, Any],
    init_lape_join: str | None,
) -> None:
    """Refuse a bad option, or one the source does not take, before anything is read or written."""
    if source not in SOURCES:
        raise CheckpointConversionError(f"source={source!r} is not supported; allowed: {', '.join(SOURCES)}.")
    if init_lape_join is not None and init_lape_join not in LAPE_JOINS:
        raise CheckpointConversionError(
            f"init_lape_join={init_lape_join!r} is not a LaPE join; allowed: {', '.join(LAPE_JOINS)}."
        )
    check_preset_name(preset)
    check_override_names(overrides)
    check_choice("pe_join", pe_join, PE_JOINS)
    check_choice("position_embedding_type", position_embedding_type, POSITION_EMBEDDING_TYPES)
    if source != "official" and pe_join not in (None, "add"):
        raise CheckpointConversionError(
            f"{source} checkpoints add the PE once (pe_join='add'), got pe_join={pe_join!r}; to start a LaPE model "
            "from one, use init_lape_join."
        )
    if source == "transformers" and (position_embedding_type not in (None, "learnable") or preset is not None):
        raise CheckpointConversionError(
            "transformers ViT/DeiT models carry their full config: position_embedding_type and preset do not apply."
        )


def _convert_source(
    source: str,
    checkpoint: str | Path,
    pe_join: str | None,
    position_embedding_type: str | None,
    preset: str | None,
    overrides: Mapping[str, Any],
) -> tuple[LapeViTPreTrainedModel, dict[str, Any]]:
    """The converted model, and the image-processing settings the source carries (only transformers models do)."""
    if source == "transformers":
        model = convert_transformers_model(load_transformers_classifier(checkpoint), **overrides)
        return model, _source_image_processing(checkpoint)
    state_dict, loaded = load_state_dict_file(checkpoint)
    if source == "official":
        hints = official_training_hints(loaded)
        model = convert_official_state_dict(
            state_dict,
            pe_join=pe_join or hints.get("pe_join"),
            position_embedding_type=position_embedding_type or hints.get("position_embedding_type"),
            preset=preset,
            **overrides,
        )
    else:
        convert = convert_timm_state_dict if source == "timm" else convert_cct_state_dict
        model = convert(state_dict, position_embedding_type=position_embedding_type, preset=preset, **overrides)
    return model, {}
