"""The LaPE paper's analysis of a trained model: how similar the position embedding (PE) of every patch is to every
other patch's, in each layer.

The PE is read from the model itself, never re-implemented: each layer's PE comes from
`model(pixel_values, output_position_embeddings=True).layer_position_embeddings` (for the LaPE joins the chain's
`p_l`, for the additive joins the added PE seen through the layer's `norm1`), and the raw PE `p_0` from the model's
own position embedding module. Class and distillation tokens are left out (`config.num_prefix_tokens`); the patch
grid is `config.token_grid_size()`.

Measures of how the maps change with depth (each over the ordered pairs i != j of the N patches, s = cosine
similarity of the PE vectors, d = Euclidean distance of the patch centres in patch units):

- `change_from_previous`: mean |s_l(i, j) - s_{l-1}(i, j)|, layer l against layer l - 1. Zero when every layer sees
  the same map (the default "add" join with identical `norm1` affines); large when the PE adapts per layer.
- `mean_similarity`: mean s(i, j). Higher means a more "global" map (far patches look alike).
- `neighbour_similarity`: mean s(i, j) over adjacent patches (d = 1, up/down/left/right).
- `distance_correlation`: Pearson correlation of s(i, j) with d(i, j). Strongly negative for a local map
  (similarity falls with distance), near zero for a map without spatial order.
- `similarity_by_distance`: mean s(i, j) at each distinct distance d, the full locality profile.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from transformers import AutoConfig, AutoModelForImageClassification, PreTrainedModel

from .atomic_files import atomic_write
from .models.lape_vit.configuration_lape_vit import LapeViTConfig
from .predict import MODEL_LOADING_ERRORS

# Figure geometry (inches): every panel is square, plus room for the row titles and the shared colour bar.
PANEL_INCHES = 1.6
ROW_TITLE_INCHES = 0.45
FIGURE_TITLE_INCHES = 0.5
COLOUR_BAR_INCHES = 1.0
# Sized by its panels alone, the figure of a model with one to three layers is too narrow for its titles (the model
# names, the reference patch), which matplotlib then cuts at the edges.
MIN_FIGURE_WIDTH_INCHES = 7.5
FIGURE_FORMATS = ("png", "pdf")


class PositionEmbeddingAnalysisError(ValueError):
    """A model or an option the analysis cannot use; the message names the value and what is allowed."""


# ---------------------------------------------------------------------------------------------------------------------
# Getting the PE out of a model
# ---------------------------------------------------------------------------------------------------------------------
def check_can_draw(config: LapeViTConfig, name: str) -> None:
    """Fail early, before loading weights, for models that have no absolute PE to draw."""
    if getattr(config, "model_type", None) != LapeViTConfig.model_type:
        raise PositionEmbeddingAnalysisError(
            f"{name!r} is a {getattr(config, 'model_type', type(config).__name__)!r} model; this analysis reads the "
            f"per-layer position embeddings of LapeViT models (model_type={LapeViTConfig.model_type!r})."
        )
    if config.position_embedding_type == "none":
        detail = ""
        if config.relative_position_bias != "none":
            detail = (
                f" Its relative_position_bias={config.relative_position_bias!r} is an attention bias per layer, "
                "not a position embedding, and is not drawn."
            )
        raise PositionEmbeddingAnalysisError(
            f"{name!r} has position_embedding_type='none': it has no position embedding to draw.{detail} "
            "Use a model with position_embedding_type 'learnable', 'sinusoidal_1d' or 'sinusoidal_2d'."
        )


def load_model(name_or_path: str | Path, **from_pretrained_kwargs) -> PreTrainedModel:
    """A LapeViT classifier from a directory or a Hub id (cached or downloadable), in eval mode on the CPU."""
    name = str(name_or_path)
    try:
        config = AutoConfig.from_pretrained(name, **from_pretrained_kwargs)
    except (OSError, ValueError) as error:
        raise PositionEmbeddingAnalysisError(
            f"Cannot load a model config from {name!r}: give a directory written by save_pretrained or a Hub id "
            f"(available offline only if it is in the Hub cache). Cause: {error}"
        ) from error
    check_can_draw(config, name)
    try:
        model = AutoModelForImageClassification.from_pretrained(name, **from_pretrained_kwargs)
    except MODEL_LOADING_ERRORS as error:
        raise PositionEmbeddingAnalysisError(f"Cannot load the weights of {name!r}: {error}") from error
    return model.eval()


def _dummy_pixel_values(model: PreTrainedModel) -> torch.Tensor:
    """The PE does not depend on the image: any input of the model's size gives the same PEs."""
    height, width = model.config.image_size_2d
    parameter = next(model.parameters())
    return torch.zeros(1, model.config.num_channels, height, width, dtype=parameter.dtype, device=parameter.device)


def layer_position_embeddings(model: PreTrainedModel) -> list[torch.Tensor]:
    """The PE each layer receives, one `(num_tokens, hidden_size)` float tensor per layer, from the model's output."""
    check_can_draw(model.config, type(model).__name__)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            outputs = model(_dummy_pixel_values(model), output_position_embeddings=True)
    finally:
        model.train(was_training)
    return [pe[0].detach().float().cpu() for pe in outputs.layer_position_embeddings]


def raw_position_embeddings(model: PreTrainedModel) -> list[torch.Tensor]:
    """
    The model's PE before any layer, `p_0`, from its position embedding module: one `(num_tokens, hidden_size)`
    tensor, or one per layer for `pe_join="unshare"` (which learns a separate table for each layer).
    """
    check_can_draw(model.config, type(model).__name__)
    module = model.base_model.embeddings.position_embedding
    with torch.inference_mode():
        tables = module(model.config.token_grid_size())
    return [table.detach().float().cpu() for table in tables]


# ---------------------------------------------------------------------------------------------------------------------
# Similarities and measures
# ---------------------------------------------------------------------------------------------------------------------
def patch_cosine_similarity(position_embedding: torch.Tensor | np.ndarray, num_prefix_tokens: int) -> np.ndarray:
    """`(N, N)` cosine similarity between the PE vectors of the N patch tokens (prefix tokens dropped)."""
    vectors = np.asarray(position_embedding, dtype=np.float64)
    if vectors.ndim != 2:
        raise PositionEmbeddingAnalysisError(
            f"A position embedding of shape (num_tokens, hidden_size) is expected, got shape {vectors.shape}."
        )
    patches = vectors[num_prefix_tokens:]
    norms = np.linalg.norm(patches, axis=1, keepdims=True)
    unit = patches / np.maximum(norms, 1e-12)  # a zero vector gets similarity 0 to everything
    return unit @ unit.T


def patch_coordinates(grid_size: tuple[int, int]) -> np.ndarray:
    """`(N, 2)` (row, column) of every patch in the model's row-major token order."""
    rows, columns = grid_size
    row_index, column_index = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
    return np.stack([row_index.ravel(), column_index.ravel()], axis=1).astype(np.float64)


def patch_distances(grid_size: tuple[int, int]) -> np.ndarray:
    """`(N, N)` Euclidean distance between patch positions, in patches."""
    coordinates = patch_coordinates(grid_size)
    return np.linalg.norm(coordinates[:, None, :] - coordinates[None, :, :], axis=-1)


def centre_patch(grid_size: tuple[int, int]) -> tuple[int, int]:
    """The patch the paper draws: the centre of the grid (the lower-right of the four central ones on even grids)."""
    return grid_size[0] // 2, grid_size[1] // 2


def patch_index(patch: tuple[int, int], grid_size: tuple[int, int]) -> int:
    """Row-major token index (prefix tokens not counted) of patch (row, column), checked against the grid."""
    row, column = patch
    if not (0 <= row < grid_size[0] and 0 <= column < grid_size[1]):
        raise PositionEmbeddingAnalysisError(
            f"patch (row={row}, column={column}) is outside the {grid_size[0]}x{grid_size[1]} patch grid; allowed: "
            f"rows 0..{grid_size[0] - 1}, columns 0..{grid_size[1] - 1}."
        )
    return row * grid_size[1] + column


def _off_diagonal(matrix: np.ndarray) -> np.ndarray:
    return matrix[~np.eye(matrix.shape[0], dtype=bool)]


def mean_absolute_change(previous: np.ndarray, current: np.ndarray) -> float:
    """Mean |current - previous| over the off-diagonal entries (the diagonal is 1 in every map)."""
    if previous.shape[0] < 2:
        return math.nan
    return float(np.mean(np.abs(_off_diagonal(current) - _off_diagonal(previous))))


def similarity_by_distance(similarity: np.ndarray, grid_size: tuple[int, int]) -> dict[float, float]:
    """Mean similarity of patch pairs at each distinct distance (1, 1.4142, 2, ...), distance 0 excluded."""
    distances = np.round(_off_diagonal(patch_distances(grid_size)), 4)
    values = _off_diagonal(similarity)
    return {float(d): float(values[distances == d].mean()) for d in np.unique(distances)}


@dataclass
class MapStats:
    """The measures of one similarity map (see the module docstring for their definitions)."""

    label: str
    mean_similarity: float
    neighbour_similarity: float
    distance_correlation: float
    change_from_previous: float | None = None
    similarity_by_distance: dict[float, float] = field(default_factory=dict)


def map_stats(similarity: np.ndarray, grid_size: tuple[int, int], label: str) -> MapStats:
    """Locality measures of one `(N, N)` similarity map on a patch grid."""
    distances = _off_diagonal(patch_distances(grid_size))
    values = _off_diagonal(similarity)
    if values.size == 0:  # a single patch: nothing to compare
        return MapStats(label, math.nan, math.nan, math.nan)
    neighbours = values[np.isclose(distances, 1.0)]
    if values.std() == 0 or distances.std() == 0:
        correlation = math.nan
    else:
        correlation = float(np.corrcoef(values, distances)[0, 1])
    return MapStats(
        label=label,
        mean_similarity=float(values.mean()),
        neighbour_similarity=float(neighbours.mean()) if neighbours.size else math.nan,
        distance_correlation=correlation,
        similarity_by_distance=similarity_by_distance(similarity, grid_size),
    )


# ---------------------------------------------------------------------------------------------------------------------
# One model's PE maps
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class PositionEmbeddingMaps:
    """The patch-to-patch similarity maps of one model: per layer, and of the raw PE (one table, or one per layer)."""

    name: str
    pe_join: str
    position_embedding_type: str
    grid_size: tuple[int, int]
    layers: list[np.ndarray]
    raw: list[np.ndarray]

    @property
    def description(self) -> str:
        return f"{self.name}: join={self.pe_join}, PE={self.position_embedding_type}"

    def layer_stats(self) -> list[MapStats]:
        """Measures per layer, with the change of each layer's map from the previous layer's."""
        stats = []
        for index, similarity in enumerate(self.layers):
            entry = map_stats(similarity, self.grid_size, f"layer {index + 1}")
            if index > 0:
                entry.change_from_previous = mean_absolute_change(self.layers[index - 1], similarity)
            stats.append(entry)
        return stats

    def raw_stats(self) -> list[MapStats]:
        """Measures of the raw PE p_0 (one table, or one per layer for "unshare")."""
        labels = ["raw p_0"] if len(self.raw) == 1 else [f"raw p_0 of layer {i + 1}" for i in range(len(self.raw))]
        return [
            map_stats(similarity, self.grid_size, label) for similarity, label in zip(self.raw, labels, strict=True)
        ]

    def summary(self) -> dict[str, object]:
        """Everything the text summary prints, as plain data (for `--summary-json`)."""
        layers = self.layer_stats()
        changes = [s.change_from_previous for s in layers if s.change_from_previous is not None]
        return {
            "model": self.name,
            "pe_join": self.pe_join,
            "position_embedding_type": self.position_embedding_type,
            "grid_size": list(self.grid_size),
            "mean_change_between_consecutive_layers": float(np.mean(changes)) if changes else None,
            "change_first_to_last_layer": (
                mean_absolute_change(self.layers[0], self.layers[-1]) if len(self.layers) > 1 else None
            ),
            "layers": [asdict(s) for s in layers],
            "raw": [asdict(s) for s in self.raw_stats()],
        }


def position_embedding_maps(model: PreTrainedModel, name: str | None = None) -> PositionEmbeddingMaps:
    """Read a model's per-layer and raw PEs and turn them into patch-to-patch cosine similarity maps."""
    config = model.config
    name = name or getattr(config, "name_or_path", None) or type(model).__name__
    check_can_draw(config, name)
    prefix = config.num_prefix_tokens
    return PositionEmbeddingMaps(
        name=name,
        pe_join=config.pe_join,
        position_embedding_type=config.position_embedding_type,
        grid_size=tuple(config.token_grid_size()),
        layers=[patch_cosine_similarity(pe, prefix) for pe in layer_position_embeddings(model)],
        raw=[patch_cosine_similarity(pe, prefix) for pe in raw_position_embeddings(model)],
    )


def _number(value: float | None, width: int = 9) -> str:
    if value is None:
        return "-".rjust(width)
    return ("n/a" if math.isnan(value) else f"{value:.4f}").rjust(width)


def format_summary(maps: PositionEmbeddingMaps, include_raw: bool = False) -> str:
    """A text table of the measures per layer, then the overall change across depth."""
    rows, columns = maps.grid_size
    lines = [
        f"{maps.description} ({rows}x{columns} patches)",
        f"{'map':<22}{'change':>9}{'mean_sim':>10}{'neighb_sim':>11}{'corr(s,d)':>10}",
    ]
    stats = (maps.raw_stats() if include_raw else []) + maps.layer_stats()
    for entry in stats:
        lines.append(
            f"{entry.label:<22}{_number(entry.change_from_previous)}{_number(entry.mean_similarity, 10)}"
            f"{_number(entry.neighbour_similarity, 11)}{_number(entry.distance_correlation, 10)}"
        )
    summary = maps.summary()
    lines.append(
        "mean change between consecutive layers: "
        f"{_number(summary['mean_change_between_consecutive_layers'], 0)}; "
        f"first to last layer: {_number(summary['change_first_to_last_layer'], 0)}"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class _Row:
    title: str
    panels: dict[int, tuple[str, np.ndarray]]  # column -> (panel title, image)
    marker: tuple[int, int] | None = None  # (row, column) to mark in every panel


ImageOfMap = Callable[[PositionEmbeddingMaps, np.ndarray], np.ndarray]


def _rows(
    all_maps: Sequence[PositionEmbeddingMaps],
    include_raw: bool,
    image: ImageOfMap,
    markers: Sequence[tuple[int, int] | None] | None = None,
) -> tuple[list[_Row], int]:
    """
    Lay out the panels: one row per model, layers left to right. With `include_raw`, a single raw table takes the
    first column of its model's row; per-layer raw tables ("unshare") get their own row, aligned with the layers.
    """
    markers = markers or [None] * len(all_maps)
    offset = int(include_raw and any(len(maps.raw) == 1 for maps in all_maps))
    rows = []
    for maps, marker in zip(all_maps, markers, strict=True):
        layer_row = _Row(maps.description, {}, marker)
        if include_raw and len(maps.raw) > 1:
            raw_panels = {offset + i: (f"raw p_0, layer {i + 1}", image(maps, s)) for i, s in enumerate(maps.raw)}
            rows.append(_Row(f"{maps.description}: raw PE tables (before any layer)", raw_panels, marker))
        elif include_raw:
            layer_row.panels[0] = ("raw p_0", image(maps, maps.raw[0]))
        for index, similarity in enumerate(maps.layers):
            layer_row.panels[offset + index] = (f"layer {index + 1}", image(maps, similarity))
        rows.append(layer_row)
    columns = max(max(row.panels) for row in rows) + 1
    return rows, columns


def figure_size_inches(num_rows: int, num_columns: int) -> tuple[float, float]:
    """The size of a figure with this many panel rows and columns (the PNG is this times the dpi)."""
    width = max(num_columns * PANEL_INCHES + COLOUR_BAR_INCHES, MIN_FIGURE_WIDTH_INCHES)
    height = num_rows * (PANEL_INCHES + ROW_TITLE_INCHES) + FIGURE_TITLE_INCHES
    return width, height


def _draw(rows: list[_Row], num_columns: int, title: str) -> Figure:
    """Rows of image panels on one shared colour scale (minimum over all panels to 1), one colour bar."""
    low = float(min(data.min() for row in rows for _, data in row.panels.values()))
    figure = Figure(figsize=figure_size_inches(len(rows), num_columns), layout="constrained")
    FigureCanvasAgg(figure)  # render with Agg whatever pyplot's backend is
    figure.suptitle(title)
    panel_area, bar_area = figure.subfigures(1, 2, width_ratios=[num_columns * PANEL_INCHES, COLOUR_BAR_INCHES])
    image = None
    for row, row_figure in zip(rows, panel_area.subfigures(len(rows), 1, squeeze=False)[:, 0], strict=True):
        row_figure.suptitle(row.title, fontsize="medium")
        for column, ax in enumerate(row_figure.subplots(1, num_columns, squeeze=False)[0]):
            ax.set_xticks([])
            ax.set_yticks([])
            if column not in row.panels:
                ax.set_axis_off()
                continue
            panel_title, data = row.panels[column]
            image = ax.imshow(data, vmin=low, vmax=1.0, cmap="viridis", interpolation="nearest")
            ax.set_title(panel_title, fontsize="small")
            if row.marker is not None:
                ax.plot(row.marker[1], row.marker[0], marker="+", color="red", markersize=8, markeredgewidth=1.5)
    bar_area.colorbar(image, cax=bar_area.add_axes((0.08, 0.1, 0.16, 0.75)), label="cosine similarity")
    return figure


def plot_patch_maps(
    all_maps: Sequence[PositionEmbeddingMaps],
    patch: tuple[int, int] | None = None,
    include_raw: bool = False,
) -> Figure:
    """Per layer, the similarity of one patch's PE (default: the centre patch) to every patch, on the patch grid."""
    patches = [patch if patch is not None else centre_patch(maps.grid_size) for maps in all_maps]
    indices = {id(maps): patch_index(p, maps.grid_size) for maps, p in zip(all_maps, patches, strict=True)}

    def grid_image(maps: PositionEmbeddingMaps, similarity: np.ndarray) -> np.ndarray:
        return similarity[indices[id(maps)]].reshape(maps.grid_size)

    rows, columns = _rows(all_maps, include_raw, grid_image, patches)
    where = "the centre patch" if patch is None else f"patch (row {patch[0]}, column {patch[1]})"
    return _draw(rows, columns, f"Cosine similarity of the PE of {where} (+) to every patch's PE")


def plot_similarity_matrices(all_maps: Sequence[PositionEmbeddingMaps], include_raw: bool = False) -> Figure:
    """Per layer, the full N x N patch-to-patch cosine similarity matrix (patches in row-major order)."""
    rows, columns = _rows(all_maps, include_raw, lambda maps, similarity: similarity)
    return _draw(rows, columns, "Patch-to-patch cosine similarity of the PE (patches in row-major order)")


def save_figure(figure: Figure, path_without_suffix: str | Path, formats: Sequence[str] = ("png",), dpi: int = 100):
    """Write the figure once per format, each to a temporary file moved into place when complete (an interrupted
    run leaves no half-written figure); returns the written paths."""
    unknown = [f for f in formats if f not in FIGURE_FORMATS]
    if unknown:
        raise PositionEmbeddingAnalysisError(f"Unknown figure format(s) {unknown}; allowed: {list(FIGURE_FORMATS)}.")
    base = Path(path_without_suffix)
    base.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in formats:
        path = base.with_name(f"{base.name}.{suffix}")
        with atomic_write(path, "wb") as stream:
            figure.savefig(stream, dpi=dpi, format=suffix)
        written.append(path)
    return written


def _strict_json(value: object) -> object:
    """NaN (an undefined measure, e.g. on a one-patch grid) becomes null: strict JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def write_summary_json(all_maps: Sequence[PositionEmbeddingMaps], path: str | Path) -> Path:
    """The measures of every model (`PositionEmbeddingMaps.summary`) as a JSON list."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_strict_json([maps.summary() for maps in all_maps]), indent=2, allow_nan=False) + "\n"
    with atomic_write(path) as stream:
        stream.write(text)
    return path


__all__ = [
    "MapStats",
    "PositionEmbeddingAnalysisError",
    "PositionEmbeddingMaps",
    "centre_patch",
    "check_can_draw",
    "figure_size_inches",
    "format_summary",
    "layer_position_embeddings",
    "load_model",
    "map_stats",
    "mean_absolute_change",
    "patch_cosine_similarity",
    "patch_distances",
    "patch_index",
    "plot_patch_maps",
    "plot_similarity_matrices",
    "position_embedding_maps",
    "raw_position_embeddings",
    "save_figure",
    "similarity_by_distance",
    "write_summary_json",
]
