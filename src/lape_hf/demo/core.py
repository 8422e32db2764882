"""What the demo page computes, without Gradio: loading the models once, classifying an uploaded file through
`pipeline("image-classification")`, and the per-layer PE similarity maps of `lape_hf.analysis` for a chosen patch.

Every function here takes and returns plain values (paths, PIL images, dicts, text), so the page's behaviour is
tested without a browser; `lape_hf.demo.app` only wires them to Gradio components.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
from huggingface_hub import HfApi, is_offline_mode, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)
from huggingface_hub.utils import validate_repo_id
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from transformers import ImageClassificationPipeline

from ..analysis import (
    PositionEmbeddingAnalysisError,
    PositionEmbeddingMaps,
    centre_patch,
    format_summary,
    patch_index,
    plot_patch_maps,
    position_embedding_maps,
)
from ..cli import one_line
from ..images import UNREADABLE_IMAGE_ERRORS, decode_image
from ..predict import load_classifier

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
# File name -> true label of each shipped example, exactly as the dataset names the class ("T-shirt/top" would not
# survive a file name).
EXAMPLES_MANIFEST = "examples.json"
# Why the page cannot be served or tested: Gradio (the demo extra) is missing.
DEMO_EXTRA_MISSING = "the demo extra is not installed: pip install -e '.[demo]'"
# An upload larger than this many pixels is refused before it is decoded (a 48-megapixel phone photo still passes);
# PIL's own decompression-bomb limit is higher and would spend the memory first.
MAX_IMAGE_PIXELS = 50_000_000
# Gradio refuses larger uploads before they reach the app (`launch(max_file_size=...)`).
MAX_UPLOAD_SIZE = "25mb"
DEFAULT_TOP_K = 5
# The clickable patch grid is drawn this many pixels on its longer side (each patch a square of whole pixels).
PATCH_GRID_PIXELS = 280
# Seconds the one request that asks the Hub whether a model id exists may take.
HUB_PROBE_TIMEOUT = 10


def _http_client_errors() -> tuple[type[Exception], ...]:
    """The error base of the HTTP client huggingface_hub uses (httpx2 from huggingface_hub 2, httpx before)."""
    errors = []
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).HTTPError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


# What an unreachable or failing Hub raises: no network, a timeout, a server error. Anything else is a bug and shows.
HUB_UNREACHABLE_ERRORS = (OSError, HfHubHTTPError, *_http_client_errors())


class DemoInputError(ValueError):
    """An input the page cannot use (not an image, too large, a patch outside the grid); shown as a message."""


@dataclass
class DemoModel:
    """A model loaded once at start: its classifier pipeline, and its PE maps or why it has none."""

    name: str
    classifier: ImageClassificationPipeline
    maps: PositionEmbeddingMaps | None
    no_maps_reason: str | None = None

    @property
    def num_labels(self) -> int:
        return self.classifier.model.config.num_labels


def load_demo_model(name: str) -> DemoModel:
    """The pipeline and the PE maps of a model directory or Hub id; a model without a PE keeps the reason instead.

    A path or id that does not load is a one-line `ValueError` (from `lape_hf.predict.load_classifier`).
    """
    classifier = load_classifier(resolve_model(name))
    try:
        maps = position_embedding_maps(classifier.model, name)
    except PositionEmbeddingAnalysisError as error:
        return DemoModel(name, classifier, None, str(error))
    return DemoModel(name, classifier, maps)


def resolve_model(name: str) -> str:
    """The directory or Hub id to load `name` from, decided without retrying the network.

    An existing path is local. A name that cannot be a Hub id, or whose first component exists here ('outputs/missing'
    when outputs/ exists), is a missing directory. Anything else is a Hub id: with HF_HUB_OFFLINE set it is taken from
    the local Hub cache, otherwise one request asks the Hub (transformers would retry an unreachable Hub for ~50 s);
    an unreachable Hub falls back to the cache. Each failure is a one-line `ValueError`.
    """
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    if _is_local_name(name):
        raise ValueError(f"cannot load the model {name!r}: no such directory (give a model directory or a Hub id).")
    cached = _cached_snapshot(name)
    if is_offline_mode():
        if cached is None:
            raise ValueError(
                f"cannot load the model {name!r}: no such directory, and HF_HUB_OFFLINE is set and the Hub id is not "
                "in the local Hub cache."
            )
        return cached
    try:
        HfApi().model_info(name, timeout=HUB_PROBE_TIMEOUT)
    except RepositoryNotFoundError:
        raise ValueError(
            f"cannot load the model {name!r}: no such directory, and no such model on the Hub "
            "(a private or gated one needs HF_TOKEN)."
        ) from None
    except HUB_UNREACHABLE_ERRORS as error:
        if cached is not None:
            return cached
        raise ValueError(
            f"cannot load the model {name!r}: no such directory, and the Hub cannot be reached "
            f"({type(error).__name__}: {one_line(error)}) nor is the id in the local Hub cache."
        ) from None
    return name


def _is_local_name(name: str) -> bool:
    """A name meant as a local path: absolute, relative, home-based, starting at a folder that exists here, or not a
    valid 'namespace/name' Hub id."""
    if name.startswith(("/", ".", "~")) or Path(Path(name).parts[0]).exists() or name.count("/") > 1:
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def _cached_snapshot(repo_id: str) -> str | None:
    """The model's folder in the local Hub cache, or None (no network is used)."""
    try:
        return snapshot_download(repo_id, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def load_demo_models(names: Sequence[str]) -> list[DemoModel]:
    """The main model and any to compare; models with PE maps must share one patch grid (one patch is chosen)."""
    models = [load_demo_model(name) for name in names]
    grids = {model.name: model.maps.grid_size for model in models if model.maps is not None}
    if len(set(grids.values())) > 1:
        listed = ", ".join(f"{name}: {rows}x{columns}" for name, (rows, columns) in grids.items())
        raise ValueError(f"the models to compare have different patch grids ({listed}); compare models of one grid.")
    return models


def example_images(labels: Collection[str] = (), directory: Path = EXAMPLES_DIR) -> list[tuple[Path, str]]:
    """The shipped example images with their true labels (from the manifest), in name order: those whose label is
    one of `labels` (a model's class names), or all of them when none is (a model of other classes)."""
    manifest = json.loads((directory / EXAMPLES_MANIFEST).read_text(encoding="utf-8"))
    examples = [(directory / name, str(label)) for name, label in sorted(manifest.items())]
    matching = [(path, label) for path, label in examples if label in set(labels)]
    return matching or examples


def model_labels(model: DemoModel) -> list[str]:
    """The class names of a model (its config's id2label)."""
    return [str(label) for label in model.classifier.model.config.id2label.values()]


# ---------------------------------------------------------------------------------------------------------------------
# Classify
# ---------------------------------------------------------------------------------------------------------------------
def check_image_file(path: str | Path) -> None:
    """Refuse a file that is not an image or is too large, reading only its header (nothing is decoded)."""
    name = Path(path).name
    try:
        with PIL.Image.open(path) as image:
            width, height = image.size
    except UNREADABLE_IMAGE_ERRORS as error:
        detail = str(error).replace(str(path), name)  # the server's upload path means nothing to the user
        raise DemoInputError(f"{name} is not an image this page can read ({type(error).__name__}: {detail}).") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise DemoInputError(
            f"{name} is {width}x{height} = {width * height / 1e6:.1f} megapixels; images up to "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels are accepted. Resize it and upload again."
        )


def classify(model: DemoModel, image_path: str | Path, top_k: int = DEFAULT_TOP_K) -> dict[str, float]:
    """Label -> score of the `top_k` best classes, from the model's image-classification pipeline.

    The file is decoded by the package's one decode rule (`lape_hf.images.decode_image`, what the pipeline does
    with a path) and refused with a `DemoInputError` when it is not a readable image or too large.
    """
    check_image_file(image_path)
    try:
        image = decode_image(image_path)
    except UNREADABLE_IMAGE_ERRORS as error:  # a valid header over damaged pixel data
        raise DemoInputError(f"{Path(image_path).name} cannot be decoded ({type(error).__name__}: {error}).") from None
    predictions = model.classifier(image, top_k=max(1, min(int(top_k), model.num_labels)))
    return {prediction["label"]: float(prediction["score"]) for prediction in predictions}


# ---------------------------------------------------------------------------------------------------------------------
# Position embedding maps
# ---------------------------------------------------------------------------------------------------------------------
def drawable(models: Sequence[DemoModel]) -> list[PositionEmbeddingMaps]:
    return [model.maps for model in models if model.maps is not None]


def grid_size(models: Sequence[DemoModel]) -> tuple[int, int] | None:
    """The patch grid shared by the models with PE maps (checked at load), or None when none has a PE."""
    maps = drawable(models)
    return maps[0].grid_size if maps else None


def num_layers(models: Sequence[DemoModel]) -> int:
    """Layers every drawable model has (the layer slider's range)."""
    return min((len(maps.layers) for maps in drawable(models)), default=0)


def default_patch(models: Sequence[DemoModel]) -> tuple[int, int]:
    grid = grid_size(models)
    return centre_patch(grid) if grid else (0, 0)


def checked_patch(models: Sequence[DemoModel], row: float | None, column: float | None) -> tuple[int, int]:
    """(row, column) as integers inside the grid, else a `DemoInputError` naming the allowed range."""
    grid = grid_size(models)
    if grid is None:
        raise DemoInputError("No model here has a position embedding, so there is no patch to choose.")
    if row is None or column is None or not all(math.isfinite(v) and float(v).is_integer() for v in (row, column)):
        raise DemoInputError(f"Row and column must be whole numbers, got row={row}, column={column}.")
    patch = (int(row), int(column))
    try:
        patch_index(patch, grid)
    except PositionEmbeddingAnalysisError as error:
        raise DemoInputError(str(error)) from None
    return patch


def patch_cell_pixels(grid: tuple[int, int]) -> int:
    """The side in pixels of one patch's square in the clickable grid image."""
    return max(1, PATCH_GRID_PIXELS // max(grid))


def patch_at(x: float, y: float, grid: tuple[int, int]) -> tuple[int, int]:
    """The (row, column) of the patch under pixel (x, y) of the grid image (clamped to the grid)."""
    cell = patch_cell_pixels(grid)
    return min(max(int(y // cell), 0), grid[0] - 1), min(max(int(x // cell), 0), grid[1] - 1)


def patch_grid_image(
    models: Sequence[DemoModel], patch: tuple[int, int], layer: int | None, limits: tuple[float, float]
) -> PIL.Image.Image | None:
    """The clickable grid: the first drawable model's map of `patch` in `layer` (the last layer when None), one
    coloured square per patch on the figure's colour map and scale `limits` (`colour_limits` of the figure shown
    beside it), with grid lines and the chosen patch outlined in red."""
    maps = drawable(models)
    if not maps:
        return None
    first = maps[0]
    similarity = first.layers[(layer or len(first.layers)) - 1]
    values = similarity[patch_index(patch, first.grid_size)].reshape(first.grid_size)
    colours = (colormaps["viridis"](Normalize(*limits, clip=True)(values))[..., :3] * 255).astype(np.uint8)
    cell = patch_cell_pixels(first.grid_size)
    pixels = np.kron(colours, np.ones((cell, cell, 1), dtype=np.uint8))
    pixels[::cell, :] = 255  # grid lines: the top and left edge of every square
    pixels[:, ::cell] = 255
    row, column = patch
    top, left = row * cell, column * cell
    red = np.array([255, 0, 0], dtype=np.uint8)
    width = max(2, cell // 8)
    pixels[top : top + width, left : left + cell] = red
    pixels[top + cell - width : top + cell, left : left + cell] = red
    pixels[top : top + cell, left : left + width] = red
    pixels[top : top + cell, left + cell - width : left + cell] = red
    return PIL.Image.fromarray(pixels)


def colour_limits(figure: Figure) -> tuple[float, float]:
    """The one colour scale (low, high) every panel of a `pe_figure` is drawn on."""
    return next(axes.images[0].get_clim() for axes in figure.axes if axes.images)


def pe_views(
    models: Sequence[DemoModel], patch: tuple[int, int], layer: int | None = None
) -> tuple[PIL.Image.Image | None, PIL.Image.Image | None]:
    """What the Position embedding tab shows for a patch and layer: the figure, and the clickable grid on its scale."""
    figure = pe_figure(models, patch, layer)
    if figure is None:
        return None, None
    return figure_image(figure), patch_grid_image(models, patch, layer, colour_limits(figure))


def _one_layer(maps: PositionEmbeddingMaps, layer: int) -> PositionEmbeddingMaps:
    return dataclasses.replace(maps, layers=[maps.layers[layer - 1]])


def pe_figure(models: Sequence[DemoModel], patch: tuple[int, int], layer: int | None = None) -> Figure | None:
    """`lape_hf.analysis.plot_patch_maps` of every drawable model (one row each, one colour scale), for all layers
    (`layer=None`) or one layer (1-based); None when no model has a PE."""
    maps = drawable(models)
    if not maps:
        return None
    if layer is not None:
        if not 1 <= layer <= num_layers(models):
            raise DemoInputError(f"layer={layer} is outside 1..{num_layers(models)}.")
        maps = [_one_layer(entry, layer) for entry in maps]
    figure = plot_patch_maps(maps, patch=patch)
    if layer is not None:  # the one panel per row was drawn as the first layer of a one-layer model
        for axes in figure.axes:
            if axes.get_title() == "layer 1":
                axes.set_title(f"layer {layer}", fontsize="small")
    return figure


def figure_image(figure: Figure | None) -> PIL.Image.Image | None:
    """A figure rendered to an RGB image (what the page shows)."""
    if figure is None:
        return None
    figure.canvas.draw()
    return PIL.Image.fromarray(np.asarray(figure.canvas.buffer_rgba())[..., :3].copy())


def pe_summary(models: Sequence[DemoModel]) -> str:
    """The analysis' measures per layer of every model (Markdown), and a sentence for each model without a PE."""
    parts = []
    for model in models:
        if model.maps is None:
            parts.append(f"**{model.name}**: {model.no_maps_reason}")
        else:
            parts.append(f"```\n{format_summary(model.maps)}\n```")
    return "\n\n".join(parts)


__all__ = [
    "DEFAULT_TOP_K",
    "DEMO_EXTRA_MISSING",
    "EXAMPLES_DIR",
    "MAX_IMAGE_PIXELS",
    "MAX_UPLOAD_SIZE",
    "DemoInputError",
    "DemoModel",
    "check_image_file",
    "checked_patch",
    "classify",
    "colour_limits",
    "default_patch",
    "example_images",
    "figure_image",
    "grid_size",
    "load_demo_model",
    "load_demo_models",
    "model_labels",
    "num_layers",
    "patch_at",
    "patch_grid_image",
    "pe_figure",
    "pe_summary",
    "pe_views",
    "resolve_model",
]
