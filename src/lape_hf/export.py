"""Exporting a LapeViT classifier as a graph: a `torch.export` program or an ONNX model.

The graph maps normalized pixels `(batch, channels, height, width)` to the logits, with the batch size, the height and
the width all dynamic: the position embeddings (and relative position tables) are resized for the input as
`interpolate_pos_encoding=True` does in eager PyTorch. It is traced with a non-square example whose token grid differs
from the trained one, so that neither height == width nor the trained size is baked into the graph (see
`modeling_lape_vit.is_stored_grid`).

The exported directory is self-describing: the graph (`model.onnx` or `model.pt2`), `config.json` (labels, sizes) and
`preprocessor_config.json` (the image processor that makes the input). It is written to a temporary directory and moved
into place when complete.

The attention is traced in its eager form: sdpa computes the same function, but its CPU kernel does not decompose into
ONNX operators with dynamic shapes in torch 2.x (the ONNX runtime fuses the eager pattern itself).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import torch
from torch import nn
from transformers import AutoImageProcessor, AutoModelForImageClassification, BaseImageProcessor

from .atomic_files import give_default_permissions
from .models.lape_vit.configuration_lape_vit import LapeViTConfig
from .models.lape_vit.image_processing_lape_vit import build_image_processor
from .models.lape_vit.modeling_lape_vit import LapeViTPreTrainedModel

EXPORT_FORMATS = ("onnx", "torch_export")
GRAPH_FILE_NAMES = {"onnx": "model.onnx", "torch_export": "model.pt2"}
# Attention implementations whose computation the export can trace (as the eager form, see the module doc).
TRACEABLE_ATTENTION = ("eager", "sdpa")
# Outputs besides the logits that a config can switch on; the graph returns the logits only.
UNEXPORTED_OUTPUT_FLAGS = ("output_attentions", "output_hidden_states")


class LogitsGraph(nn.Module):
    """What the exported graph computes: normalized pixels of any batch size and resolution -> logits."""

    def __init__(self, model: LapeViTPreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values, interpolate_pos_encoding=True).logits


def check_exportable(model: LapeViTPreTrainedModel) -> None:
    """Refuse, naming the setting, what the exporter cannot trace into a logits graph."""
    implementation = model.config._attn_implementation
    if implementation not in TRACEABLE_ATTENTION:
        raise ValueError(
            f"attn_implementation={implementation!r} cannot be exported (a fused kernel, not a traceable "
            f"computation); allowed: {', '.join(TRACEABLE_ATTENTION)} (both export as the eager attention)."
        )
    for flag in UNEXPORTED_OUTPUT_FLAGS:
        if getattr(model.config, flag, False):
            raise ValueError(
                f"The model's config sets {flag}=True; the exported graph returns the logits only. Set {flag}=False "
                "(the exported graph's output is (batch, num_labels) logits)."
            )


def example_pixel_values(config: LapeViTConfig) -> torch.Tensor:
    """A batch of 2 non-square images whose token grid is not the trained one (one and two tokens more), so that the
    trace keeps batch, height and width general."""
    height, width = config.image_size_2d
    rows, columns = config.token_grid_size()
    step = max(1, min(height // rows, width // columns))  # pixels per token
    return torch.randn(2, config.num_channels, height + 2 * step, width + step)


def dynamic_shapes() -> dict[str, dict[int, object]]:
    dynamic = torch.export.Dim.DYNAMIC
    return {"pixel_values": {0: dynamic, 2: dynamic, 3: dynamic}}


def trace(model: LapeViTPreTrainedModel) -> torch.export.ExportedProgram:
    """The `torch.export` program of the model's logits (non-strict tracing; eager attention)."""
    check_exportable(model)
    implementation = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return torch.export.export(
                LogitsGraph(model.eval()),
                (example_pixel_values(model.config),),
                dynamic_shapes=dynamic_shapes(),
                strict=False,
            )
    finally:
        model.set_attn_implementation(implementation)


def check_export_format(export_format: str) -> None:
    """An unknown format fails before anything is loaded or traced, naming the allowed ones."""
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"export format {export_format!r} is not known; allowed: {', '.join(EXPORT_FORMATS)}.")


def write_graph(model: LapeViTPreTrainedModel, export_format: str, directory: Path) -> Path:
    """Trace `model` and write its graph into `directory` as `export_format`; returns the graph file."""
    check_export_format(export_format)
    program = trace(model)
    path = directory / GRAPH_FILE_NAMES[export_format]
    if export_format == "torch_export":
        torch.export.save(program, path)
    else:
        onnx_program = torch.onnx.export(
            program, input_names=["pixel_values"], output_names=["logits"], dynamo=True, verbose=False
        )
        onnx_program.save(str(path))
    return path


def load_for_export(model_name_or_path: str) -> tuple[LapeViTPreTrainedModel, BaseImageProcessor]:
    """The classifier and its image processor (the model config's default one when the directory has none)."""
    model = AutoModelForImageClassification.from_pretrained(model_name_or_path)
    if not isinstance(model, LapeViTPreTrainedModel):
        raise ValueError(f"{model_name_or_path!r} is a {type(model).__name__}; this exports LapeViT models.")
    try:
        processor = AutoImageProcessor.from_pretrained(model_name_or_path)
    except (OSError, ValueError):
        processor = build_image_processor(model.config)
    return model, processor


def export_model(
    model_name_or_path: str, output_dir: str | os.PathLike, export_format: str = "onnx", overwrite: bool = False
) -> Path:
    """Export a saved LapeViT classifier (directory or Hub id) to `output_dir`: graph, config and image processor.

    An existing `output_dir` is replaced only with `overwrite=True`; the new one appears complete or not at all.
    """
    output = Path(output_dir).absolute()
    check_export_format(export_format)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{str(output)!r} already exists; pass overwrite (--overwrite) to replace it.")
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"{str(output)!r} is a file; the export writes a directory there.")
    model, processor = load_for_export(model_name_or_path)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.exporting-", dir=output.parent))
    previous = None
    try:
        write_graph(model, export_format, staging)
        model.config.save_pretrained(staging)
        processor.save_pretrained(staging)
        give_default_permissions(staging, mode=stat.S_IMODE(output.stat().st_mode) if output.exists() else None)
        # The old export is moved aside, not deleted, until the new one is in place.
        previous = output.with_name(staging.name + ".previous") if output.exists() else None
        if previous is not None:
            os.rename(output, previous)
        os.rename(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if previous is not None and previous.exists() and not output.exists():
            os.rename(previous, output)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    return output
