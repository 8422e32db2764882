"""The demo page in Gradio: a Classify tab and a Position embedding tab over models loaded once at start.

Imported only when the page is built (it needs the `demo` extra: `pip install -e ".[demo]"`). Analytics are off and
the page uses system fonts, so starting it makes no network call. An input the page cannot use is a `gr.Error`
message on the page (Gradio shows the message, never a traceback) and the app stays up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gradio as gr
from gradio import http_server

from .core import (
    DEFAULT_TOP_K,
    EXAMPLES_DIR,
    MAX_UPLOAD_SIZE,
    DemoInputError,
    DemoModel,
    checked_patch,
    classify,
    default_patch,
    example_images,
    grid_size,
    model_labels,
    num_layers,
    patch_at,
    pe_summary,
    pe_views,
)

TITLE = "LaPE vision transformer demo"
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # no font download from the browser
SYSTEM_MONO_FONTS = ["ui-monospace", "monospace"]
INPUT_IMAGE_HEIGHT = 320  # pixels
# Digits and Fashion-MNIST images are 8x8 and 28x28 pixels: drawn large, as sharp squares.
PAGE_CSS = """
#input-image img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
#patch-grid img { image-rendering: pixelated; }
"""


def _classify_all(models: Sequence[DemoModel], upload: dict | None, top_k: float) -> list[dict[str, float] | None]:
    """The page's classify event. It runs with `preprocess=False`: Gradio has put the upload in its cache (and
    checked that the path is there) but not opened it, so a file that is not an image gets this page's message."""
    if not upload or not upload.get("path"):
        return [None] * len(models)
    try:
        return [classify(model, upload["path"], int(top_k)) for model in models]
    except DemoInputError as error:
        raise gr.Error(str(error)) from None


def _redraw(models: Sequence[DemoModel], row: float, column: float, layer: float, all_layers: bool) -> tuple:
    """The figure and the grid for the typed patch, the layer slider and the checkbox."""
    try:
        return pe_views(models, checked_patch(models, row, column), None if all_layers else int(layer))
    except DemoInputError as error:
        raise gr.Error(str(error)) from None


def _select_patch(models: Sequence[DemoModel], index: tuple[float, float], layer: float, all_layers: bool) -> tuple:
    """A click at pixel `index` of the grid: the patch under it in the row and column boxes, and the figure and grid
    redrawn once (the boxes listen to user edits only, so setting them here does not redraw again)."""
    row, column = patch_at(index[0], index[1], grid_size(models))
    return row, column, *_redraw(models, row, column, layer, all_layers)


def _classify_tab(models: Sequence[DemoModel]) -> None:
    most_labels = max(model.num_labels for model in models)
    with gr.Row():
        image = gr.Image(
            type="filepath",
            sources=["upload", "clipboard"],
            label="Image (upload or paste)",
            height=INPUT_IMAGE_HEIGHT,
            elem_id="input-image",
        )
        with gr.Column():
            top_k = gr.Slider(1, most_labels, value=min(DEFAULT_TOP_K, most_labels), step=1, label="Top-k")
            predictions = [
                gr.Label(label=f"Prediction: {model.name}", elem_id=f"prediction-{index}")
                for index, model in enumerate(models)
            ]
    examples = example_images(model_labels(models[0]))
    if examples:
        gr.Examples(
            examples=[[str(path)] for path, _ in examples],
            inputs=[image],
            example_labels=[f"true label: {label}" for _, label in examples],
            label="Examples: held-out digits and Fashion-MNIST test images",
        )
    gr.on(
        [image.change, top_k.release],
        lambda path, k: _classify_all(models, path, k),
        inputs=[image, top_k],
        outputs=predictions,
        preprocess=False,
    )


def _pe_tab(models: Sequence[DemoModel]) -> None:
    grid = grid_size(models)
    if grid is None:
        gr.Markdown(pe_summary(models), elem_id="pe-summary")
        return
    row, column = default_patch(models)
    layers = num_layers(models)
    figure_view, grid_view = pe_views(models, (row, column))
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            gr.Markdown(f"**Reference patch**: click a square of the {grid[0]}x{grid[1]} grid, or type row and column.")
            grid_image = gr.Image(
                grid_view,
                show_label=False,
                interactive=False,
                buttons=[],
                elem_id="patch-grid",
            )
            with gr.Row():
                row_input = gr.Number(
                    row, precision=0, minimum=0, maximum=grid[0] - 1, label="Row", elem_id="patch-row"
                )
                column_input = gr.Number(
                    column, precision=0, minimum=0, maximum=grid[1] - 1, label="Column", elem_id="patch-column"
                )
            all_layers = gr.Checkbox(True, label="All layers in a row", elem_id="all-layers")
            layer = gr.Slider(1, layers, value=layers, step=1, label="Layer (when not all)")
        with gr.Column(scale=3):
            figure = gr.Image(
                figure_view,
                show_label=False,
                interactive=False,
                buttons=["download", "fullscreen"],
                elem_id="pe-figure",
            )
            gr.Markdown(pe_summary(models), elem_id="pe-summary")

    def select_patch(layer_value: float, all_value: bool, event: gr.SelectData) -> tuple:
        return _select_patch(models, event.index, layer_value, all_value)

    grid_image.select(
        select_patch,
        inputs=[layer, all_layers],
        outputs=[row_input, column_input, figure, grid_image],
    )
    gr.on(
        [row_input.submit, row_input.blur, column_input.submit, column_input.blur, layer.release, all_layers.input],
        lambda *values: _redraw(models, *values),
        inputs=[row_input, column_input, layer, all_layers],
        outputs=[figure, grid_image],
    )


def build_demo(models: Sequence[DemoModel]) -> gr.Blocks:
    """The page for `models` (the first is the main model, the rest are compared with it), loaded already."""
    names = ", ".join(f"`{model.name}`" for model in models)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\nModel{'s' if len(models) > 1 else ''}: {names}")
        with gr.Tab("Classify", id="classify"):
            _classify_tab(models)
        with gr.Tab("Position embedding", id="position-embedding"):
            _pe_tab(models)
    return demo


def launch_demo(
    models: Sequence[DemoModel], *, host: str | None = None, port: int | None = None, **launch_kwargs: Any
) -> None:
    """Serve the page (blocking; `launch_kwargs` go to `gr.Blocks.launch`). A busy port is a `ValueError`."""
    demo = build_demo(models)
    try:
        demo.launch(
            server_name=host,
            server_port=port,
            max_file_size=MAX_UPLOAD_SIZE,
            allowed_paths=[str(EXAMPLES_DIR)],
            ssr_mode=False,
            theme=gr.themes.Default(font=SYSTEM_FONTS, font_mono=SYSTEM_MONO_FONTS),
            css=PAGE_CSS,
            **launch_kwargs,
        )
    except OSError as error:  # Gradio's "Cannot find empty port in range" for a busy port
        raise ValueError(f"cannot serve the page on {_address(host, port)}: {error}") from error


def _address(host: str | None, port: int | None) -> str:
    """host:port as Gradio tries it: without a port, the ports from its default (GRADIO_SERVER_PORT or 7860) on."""
    host = host or "127.0.0.1"
    if port is not None:
        return f"{host}:{port}"
    first, count = http_server.INITIAL_PORT_VALUE, http_server.TRY_NUM_PORTS
    return f"{host}:{first}-{first + count - 1} (Gradio's default ports; choose another with --port)"


__all__ = ["build_demo", "launch_demo"]
