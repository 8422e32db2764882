"""The demo page's functions without a browser: classification through the pipeline a user calls, refusals of files
the page cannot use, the PE maps drawn for the chosen patch and layer (checked against the model's own per-layer PE),
the clickable patch grid, models without a PE, the shipped example images, and the script's one-line errors.
The page itself in Chromium is tests/test_demo_browser.py (slow)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import numpy as np
import PIL.Image
import pytest
import torch
from hub_helpers import TEMPLATE, save_tiny_checkpoint
from huggingface_hub import SpaceCard
from huggingface_hub.errors import HfHubHTTPError
from matplotlib import colormaps
from packaging.requirements import Requirement
from script_loader import load_script
from transformers import pipeline

from lape_hf.analysis import layer_position_embeddings
from lape_hf.demo import DEMO_EXTRA_MISSING, core
from lape_hf.demo.core import (
    DemoInputError,
    checked_patch,
    classify,
    example_images,
    load_demo_model,
    load_demo_models,
    patch_at,
    patch_cell_pixels,
    patch_grid_image,
    pe_figure,
    pe_summary,
)
from lape_hf.hub import install_in_hub_cache, prepare_upload, publish, space
from lape_hf.hub.space import SpacePlan, package_files, prepare_space, runtime_requirements


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("demo")
    return {
        "lape": save_tiny_checkpoint(root / "lape"),
        "add": save_tiny_checkpoint(root / "add", pe_join="add"),
        "none": save_tiny_checkpoint(root / "none", position_embedding_type="none"),
    }


@pytest.fixture(scope="module")
def lape_and_add(model_dirs: dict[str, Path]) -> list[core.DemoModel]:
    return load_demo_models([str(model_dirs["lape"]), str(model_dirs["add"])])


def save_picture(path: Path, seed: int, size: tuple[int, int] = (30, 26)) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(path)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Classify
# ---------------------------------------------------------------------------------------------------------------------
def test_classify_gives_the_top_k_of_the_image_classification_pipeline(lape_and_add, model_dirs, tmp_path: Path):
    picture = save_picture(tmp_path / "picture.png", seed=1)
    expected = pipeline("image-classification", model=str(model_dirs["lape"]))(str(picture), top_k=2)
    shown = classify(lape_and_add[0], picture, top_k=2)
    assert list(shown) == [entry["label"] for entry in expected]
    assert list(shown.values()) == pytest.approx([entry["score"] for entry in expected], abs=1e-6)


def test_top_k_is_capped_at_the_number_of_classes(lape_and_add, tmp_path: Path):
    shown = classify(lape_and_add[0], save_picture(tmp_path / "picture.png", seed=2), top_k=50)
    assert sorted(shown) == ["bird", "cat", "dog"]
    assert sum(shown.values()) == pytest.approx(1.0, abs=1e-5)


def test_a_file_that_is_not_an_image_is_refused_by_name(lape_and_add, tmp_path: Path):
    fake = tmp_path / "notes.png"
    fake.write_text("not an image")
    with pytest.raises(DemoInputError, match=r"notes\.png is not an image this page can read") as caught:
        classify(lape_and_add[0], fake)
    assert str(tmp_path) not in str(caught.value)  # the server's path is not shown to the user


def test_an_image_with_damaged_pixel_data_is_refused(lape_and_add, tmp_path: Path):
    whole = save_picture(tmp_path / "whole.png", seed=3, size=(64, 64)).read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole[:200])
    with pytest.raises(DemoInputError, match=r"truncated\.png"):
        classify(lape_and_add[0], truncated)


def test_an_image_above_the_pixel_limit_is_refused_before_decoding(lape_and_add, tmp_path: Path):
    huge = tmp_path / "huge.png"
    PIL.Image.new("1", (9000, 6000)).save(huge)  # 54 megapixels in a small file
    assert 9000 * 6000 > core.MAX_IMAGE_PIXELS
    with pytest.raises(DemoInputError, match=r"huge\.png is 9000x6000 = 54\.0 megapixels; images up to 50"):
        classify(lape_and_add[0], huge)


def test_a_model_path_that_does_not_exist_is_a_one_line_error(tmp_path: Path):
    with pytest.raises(ValueError, match=r"cannot load the model '.*missing': no such directory") as caught:
        load_demo_model(str(tmp_path / "missing"))
    assert "\n" not in str(caught.value)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any request to the Hub or any model load fails the test: the decision must be made without them."""

    def refuse(*args, **kwargs):
        raise AssertionError("the network or a model load was attempted")

    monkeypatch.setattr(core.HfApi, "model_info", refuse)
    monkeypatch.setattr(core, "load_classifier", refuse)


@pytest.mark.parametrize("name", ["outputs/missing", "outputs", "./mymodel", "two/slashes/here", "not a repo id!"])
def test_a_missing_relative_path_is_a_missing_directory_without_asking_the_hub(
    name: str, no_network, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "other").mkdir()
    monkeypatch.chdir(tmp_path)
    if name == "outputs":  # exists: a directory, loaded locally (here: no model in it, so load_classifier is asked)
        assert core.resolve_model(name) == "outputs"
        return
    with pytest.raises(ValueError, match=r"cannot load the model .*: no such directory \(give") as caught:
        load_demo_model(name)
    assert "\n" not in str(caught.value)


def test_a_bare_name_with_hf_hub_offline_and_no_cache_fails_at_once(
    no_network, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(ValueError, match=r"'mymodel': no such directory, and HF_HUB_OFFLINE is set") as caught:
        load_demo_model("mymodel")
    assert "\n" not in str(caught.value)


def test_a_hub_id_when_the_hub_cannot_be_reached_fails_after_one_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The real transport against a closed local port (no outside network): its error, whatever its type, is one
    line, and transformers (which would retry) is never asked."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(core, "load_classifier", lambda *a, **k: pytest.fail("transformers would retry the Hub"))
    with pytest.raises(ValueError, match=r"'org/mymodel': .*the Hub cannot be reached \(ConnectError") as caught:
        load_demo_model("org/mymodel")
    assert "\n" not in str(caught.value)


def test_a_programming_error_while_asking_the_hub_is_not_taken_for_an_unreachable_hub(
    model_dirs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Only network and Hub errors fall back to the cache; anything else (here a TypeError) shows as itself."""
    cache = tmp_path / "hub_cache"
    files = prepare_upload(model_dirs["lape"], "org/lape-tiny", template_path=TEMPLATE).repository_files()
    install_in_hub_cache(files, "org/lape-tiny", cache)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    def changed_signature(*args, **kwargs):
        raise TypeError("model_info() got an unexpected keyword argument 'timeout'")

    monkeypatch.setattr(core.HfApi, "model_info", changed_signature)
    with pytest.raises(TypeError, match="unexpected keyword"):
        core.resolve_model("org/lape-tiny")


def test_a_cached_hub_id_loads_from_the_cache_when_offline(model_dirs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cache = tmp_path / "hub_cache"
    files = prepare_upload(model_dirs["lape"], "org/lape-tiny", template_path=TEMPLATE).repository_files()
    install_in_hub_cache(files, "org/lape-tiny", cache)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(core.HfApi, "model_info", lambda *a, **k: pytest.fail("offline: the Hub must not be asked"))
    resolved = Path(core.resolve_model("org/lape-tiny"))
    assert resolved.is_relative_to(cache) and (resolved / "config.json").is_file()


def test_a_directory_that_is_not_a_model_is_a_one_line_error(tmp_path: Path):
    with pytest.raises(ValueError, match=r"cannot load the model") as caught:
        load_demo_model(str(tmp_path))
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------------------------------------------------------------
# Position embedding maps
# ---------------------------------------------------------------------------------------------------------------------
def cosine_to_patch(model: torch.nn.Module, layer: int, patch: tuple[int, int]) -> np.ndarray:
    """Independent computation: torch's cosine similarity of the layer's PE rows (prefix tokens dropped)."""
    pe = layer_position_embeddings(model)[layer - 1][model.config.num_prefix_tokens :]
    rows, columns = model.config.token_grid_size()
    reference = pe[patch[0] * columns + patch[1]]
    return torch.nn.functional.cosine_similarity(pe, reference[None, :], dim=-1).reshape(rows, columns).numpy()


def panels(figure) -> dict[tuple[str, str], np.ndarray]:
    """(row title, panel title) -> the drawn array, for every image panel of a figure from analysis._draw."""
    drawn = {}
    for axes in figure.axes:
        if axes.images:
            drawn[(axes.figure._suptitle.get_text(), axes.get_title())] = np.asarray(axes.images[0].get_array())
    return drawn


def test_one_layer_figure_shows_each_models_map_of_that_layer_for_the_chosen_patch(lape_and_add):
    patch = (0, 3)
    drawn = panels(pe_figure(lape_and_add, patch, layer=2))
    assert len(drawn) == 2
    for model in lape_and_add:
        key = next(key for key in drawn if key[0].startswith(model.name))
        assert key[1] == "layer 2"
        np.testing.assert_allclose(drawn[key], cosine_to_patch(model.classifier.model, 2, patch), atol=1e-5)


def test_all_layers_figure_has_every_layer_of_every_model_on_one_colour_scale(lape_and_add):
    figure = pe_figure(lape_and_add, (1, 1))
    drawn = panels(figure)
    layers = lape_and_add[0].classifier.model.config.num_hidden_layers
    assert sorted(title for _, title in drawn) == sorted([f"layer {i + 1}" for i in range(layers)] * 2)
    limits = {axes.images[0].get_clim() for axes in figure.axes if axes.images}
    assert len(limits) == 1 and limits.pop()[0] == pytest.approx(min(values.min() for values in drawn.values()))


def test_the_figure_depends_on_the_chosen_patch(lape_and_add):
    centre, corner = (core.figure_image(pe_figure(lape_and_add, p)) for p in ((2, 2), (0, 0)))
    assert centre.size == corner.size and not np.array_equal(np.asarray(centre), np.asarray(corner))


@pytest.mark.parametrize(
    ("row", "column", "message"),
    [(4, 0, r"outside the 4x4 patch grid"), (0, -1, r"outside the 4x4 patch grid"), (1.5, 0, r"whole numbers")],
)
def test_a_patch_outside_the_grid_or_not_whole_is_refused(lape_and_add, row, column, message):
    with pytest.raises(DemoInputError, match=message):
        checked_patch(lape_and_add, row, column)


def test_a_layer_outside_the_model_is_refused(lape_and_add):
    with pytest.raises(DemoInputError, match=r"layer=4 is outside 1\.\.3"):
        pe_figure(lape_and_add, (0, 0), layer=4)


def test_a_click_on_the_grid_image_selects_the_patch_under_it_and_the_grid_marks_it(lape_and_add):
    grid = (4, 4)
    cell = patch_cell_pixels(grid)
    for row in range(grid[0]):
        for column in range(grid[1]):
            assert patch_at(column * cell + cell / 2, row * cell + cell / 2, grid) == (row, column)
    image = np.asarray(patch_grid_image(lape_and_add, (1, 2), layer=None, limits=(-1.0, 1.0)))
    assert image.shape == (4 * cell, 4 * cell, 3)
    red = np.all(image == [255, 0, 0], axis=-1)
    rows, columns = np.nonzero(red)
    assert (rows.min(), rows.max(), columns.min(), columns.max()) == (cell, 2 * cell - 1, 2 * cell, 3 * cell - 1)


def test_the_grid_is_coloured_on_the_figures_shared_colour_scale(lape_and_add):
    patch = (1, 2)
    figure = pe_figure(lape_and_add, patch)
    low = min(values.min() for values in panels(figure).values())  # independent: the smallest value drawn
    assert core.colour_limits(figure) == pytest.approx((low, 1.0))
    _, grid = core.pe_views(lape_and_add, patch)
    shown = cosine_to_patch(lape_and_add[0].classifier.model, 3, patch)  # the grid shows the last layer
    assert (
        shown.min() > low + 1e-3
    )  # the grid's own minimum differs from the shared one, so the test can tell them apart
    expected = (colormaps["viridis"]((shown - low) / (1.0 - low))[..., :3] * 255).astype(np.uint8)
    cell = patch_cell_pixels((4, 4))
    centres = np.asarray(grid)[cell // 2 :: cell, cell // 2 :: cell]  # the chosen square's red is only its outline
    np.testing.assert_allclose(centres.astype(int), expected.astype(int), atol=1)


def test_a_grid_click_redraws_once_and_the_boxes_redraw_on_user_edits_only(lape_and_add):
    pytest.importorskip("gradio", reason=DEMO_EXTRA_MISSING)
    from lape_hf.demo.app import _select_patch, build_demo

    demo = build_demo(lape_and_add)
    ids = {block.elem_id: block_id for block_id, block in demo.blocks.items() if block.elem_id}
    events = [
        (tuple(target), dependency)
        for dependency in demo.get_config_file()["dependencies"]
        for target in dependency["targets"]
    ]
    on_grid = [dependency for (block, event), dependency in events if block == ids["patch-grid"]]
    assert len(on_grid) == 1 and not on_grid[0].get("trigger_after")  # one handler, nothing chained after it
    assert {ids["pe-figure"], ids["patch-row"], ids["patch-column"]} <= set(on_grid[0]["outputs"])
    box_events = {event for (block, event), _ in events if block in (ids["patch-row"], ids["patch-column"])}
    assert box_events == {"submit", "blur"}  # not "change", which the click's own update of the boxes fires
    cell = patch_cell_pixels((4, 4))
    row, column, figure, grid = _select_patch(lape_and_add, (2 * cell + 1, cell + 1), 3, True)
    assert (row, column) == (1, 2)
    expected_figure, expected_grid = core.pe_views(lape_and_add, (1, 2))
    assert np.array_equal(np.asarray(figure), np.asarray(expected_figure))
    assert np.array_equal(np.asarray(grid), np.asarray(expected_grid))


@pytest.mark.parametrize(
    ("port", "shown"), [(7999, "127.0.0.1:7999:"), (None, "127.0.0.1:7860-7959 (Gradio's default")]
)
def test_a_busy_port_names_the_port_tried(lape_and_add, port, shown, monkeypatch: pytest.MonkeyPatch):
    gradio = pytest.importorskip("gradio", reason=DEMO_EXTRA_MISSING)
    from lape_hf.demo import app

    def busy(self, **kwargs):
        raise OSError("Cannot find empty port in range")

    monkeypatch.setattr(gradio.Blocks, "launch", busy)
    monkeypatch.setattr(app.http_server, "INITIAL_PORT_VALUE", 7860)
    monkeypatch.setattr(app.http_server, "TRY_NUM_PORTS", 100)
    with pytest.raises(ValueError, match=re.escape(f"cannot serve the page on {shown}")) as caught:
        app.launch_demo(lape_and_add, port=port)
    assert ":None" not in str(caught.value)


def test_a_model_without_position_embedding_says_so_instead_of_a_picture(model_dirs):
    models = load_demo_models([str(model_dirs["none"])])
    assert models[0].maps is None
    assert pe_figure(models, (0, 0)) is None and patch_grid_image(models, (0, 0), None, (-1.0, 1.0)) is None
    assert "position_embedding_type='none'" in pe_summary(models)
    with pytest.raises(DemoInputError, match="No model here has a position embedding"):
        checked_patch(models, 0, 0)


def test_compared_models_must_share_one_patch_grid(model_dirs, tmp_path: Path):
    larger = save_tiny_checkpoint(tmp_path / "larger", image_size=48)
    with pytest.raises(ValueError, match=r"different patch grids .*4x4.*6x6"):
        load_demo_models([str(model_dirs["lape"]), str(larger)])


def test_the_summary_lists_the_measures_of_every_model(lape_and_add):
    summary = pe_summary(lape_and_add)
    for model in lape_and_add:
        assert f"{model.name}: join={model.maps.pe_join}" in summary
    assert summary.count("mean change between consecutive layers") == 2


# ---------------------------------------------------------------------------------------------------------------------
# Shipped examples
# ---------------------------------------------------------------------------------------------------------------------
def test_only_the_examples_of_the_models_classes_are_shown_or_all_when_none_is(lape_and_add):
    every = example_images()
    assert len(every) == len(json.loads((core.EXAMPLES_DIR / core.EXAMPLES_MANIFEST).read_text()))
    digits = example_images([str(digit) for digit in range(10)])
    assert digits and {path.name.split("-test-")[0] for path, _ in digits} == {"digits"}
    assert example_images(["3", "Trouser", "cat"]) == [entry for entry in every if entry[1] in ("3", "Trouser")]
    assert core.model_labels(lape_and_add[0]) == ["cat", "dog", "bird"]
    assert example_images(core.model_labels(lape_and_add[0])) == every  # none of bird, cat, dog is shipped


def test_an_example_label_with_a_slash_round_trips_through_the_manifest(tmp_path: Path):
    save_picture(tmp_path / "fashion-mnist-test-0001.png", seed=5)
    (tmp_path / core.EXAMPLES_MANIFEST).write_text(json.dumps({"fashion-mnist-test-0001.png": "T-shirt/top"}))
    assert example_images(["T-shirt/top"], tmp_path) == [(tmp_path / "fashion-mnist-test-0001.png", "T-shirt/top")]


def test_each_digit_example_is_the_held_out_image_its_name_says_with_its_label():
    from lape_hf.training.data import load_digits_dataset

    test_split = load_digits_dataset()["test"]
    digits = [(path, label) for path, label in example_images() if path.name.startswith("digits-test-")]
    assert digits
    for path, label in digits:
        index = int(re.fullmatch(r"digits-test-(\d+)\.png", path.name)[1])
        assert test_split.features["label"].names[test_split[index]["label"]] == label
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(path)), np.asarray(test_split[index]["image"]))


def test_each_fashion_mnist_example_is_the_test_image_its_name_says_with_its_label():
    from lape_hf.training import fashion_mnist

    folder = Path(fashion_mnist.DEFAULT_FASHION_MNIST_DIR)
    if not folder.is_dir():
        pytest.skip(f"no Fashion-MNIST files: {fashion_mnist.INSTALL_HINT}")
    images_file, labels_file, _ = fashion_mnist.FASHION_MNIST_FILES["test"]
    test_split = fashion_mnist.load_fashion_mnist_split(folder / images_file, folder / labels_file)
    shown = [(path, label) for path, label in example_images() if path.name.startswith("fashion-mnist-test-")]
    assert shown
    for path, label in shown:
        index = int(re.fullmatch(r"fashion-mnist-test-(\d+)\.png", path.name)[1])
        assert fashion_mnist.FASHION_MNIST_LABELS[test_split[index]["label"]] == label
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(path)), np.asarray(test_split[index]["image"]))


# ---------------------------------------------------------------------------------------------------------------------
# The page and the script
# ---------------------------------------------------------------------------------------------------------------------
def test_the_page_builds_with_analytics_off_and_both_tabs(lape_and_add):
    pytest.importorskip("gradio", reason=DEMO_EXTRA_MISSING)
    from lape_hf.demo.app import build_demo

    demo = build_demo(lape_and_add)
    assert demo.analytics_enabled is False
    element_ids = {block.elem_id for block in demo.blocks.values()}
    assert {"input-image", "prediction-0", "prediction-1", "patch-grid", "pe-figure", "pe-summary"} <= element_ids


def test_the_script_reports_a_model_that_does_not_load_in_one_line(tmp_path: Path, capsys):
    pytest.importorskip("gradio", reason=DEMO_EXTRA_MISSING)
    status = load_script("demo_app").main(["--model", str(tmp_path / "missing"), "--port", "7999"])
    error = capsys.readouterr().err
    assert status == 2
    assert error.startswith("error: cannot load the model") and error.count("\n") == 1


def test_the_script_refuses_a_port_out_of_range(capsys):
    with pytest.raises(SystemExit) as caught:
        load_script("demo_app").main(["--model", "somewhere", "--port", "70000"])
    assert caught.value.code == 2
    assert "--port=70000 is not a port number" in capsys.readouterr().err


@pytest.mark.slow  # a fresh interpreter importing torch and transformers: about 15 s on a busy machine
def test_importing_the_package_and_the_demo_functions_does_not_import_gradio():
    code = "import sys, lape_hf, lape_hf.demo, lape_hf.demo.core; print('gradio' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------------------------------
# The Space and the model card's link to it
# ---------------------------------------------------------------------------------------------------------------------
def write_space(plan: SpacePlan, folder: Path) -> Path:
    for name, source in plan.files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source if isinstance(source, bytes) else source.read_bytes())
    return folder


def test_the_space_card_names_the_sdk_the_gradio_version_and_the_models(tmp_path: Path):
    gradio = pytest.importorskip("gradio", reason=DEMO_EXTRA_MISSING)
    plan = prepare_space("org/lape-demo", ["org/lape-tiny", "org/add-tiny"])
    card = SpaceCard.load(write_space(plan, tmp_path) / "README.md")
    assert (card.data.sdk, card.data.sdk_version, card.data.app_file) == ("gradio", gradio.__version__, "app.py")
    assert card.data.models == ["org/lape-tiny", "org/add-tiny"]
    assert "compared with [org/add-tiny](https://huggingface.co/org/add-tiny)" in card.text
    assert "A private model loads only when this Space\nhas an `HF_TOKEN` secret" in card.text


def test_the_space_holds_the_app_the_package_and_its_runtime_requirements(tmp_path: Path):
    pytest.importorskip("gradio", reason=DEMO_EXTRA_MISSING)
    toml = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    plan = prepare_space("org/lape-demo", ["org/lape-tiny"])
    with (Path(__file__).resolve().parent.parent / "pyproject.toml").open("rb") as stream:
        dependencies = toml.load(stream)["project"]["dependencies"]
    listed = [line for line in plan.files["requirements.txt"].decode().splitlines() if not line.startswith("#")]
    assert sorted(Requirement(line).name for line in listed) == sorted(Requirement(d).name for d in dependencies)
    names = set(plan.files)
    assert {"app.py", "README.md", "lape_hf/__init__.py", "lape_hf/demo/core.py", "lape_hf/demo/app.py"} <= names
    assert {f"lape_hf/demo/examples/{path.name}" for path, _ in example_images()} <= names
    assert f"lape_hf/demo/examples/{core.EXAMPLES_MANIFEST}" in names
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]


def fake_project(root: Path, dependencies: list[str], package_data: list[str]) -> Path:
    """A source checkout: pyproject.toml beside src/lape_hf (returned: the project file). JSON arrays are TOML."""
    project_file = root / "pyproject.toml"
    project_file.write_text(
        f'[project]\nname = "lape_hf"\ndependencies = {json.dumps(dependencies)}\n'
        f"[tool.setuptools.package-data]\nlape_hf = {json.dumps(package_data)}\n"
    )
    return project_file


def test_the_space_requirements_are_the_checkouts_dependencies_with_their_markers(tmp_path: Path):
    dependencies = ["torch>=2.4", 'tomli>=2.0; python_version < "3.11"', 'pywin32; sys_platform == "win32"']
    project_file = fake_project(tmp_path, dependencies, [])
    assert runtime_requirements(project_file) == [str(Requirement(line)) for line in dependencies]


def test_without_a_checkout_the_requirements_are_the_metadatas_without_its_extras(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    metadata = ["torch>=2.4", 'tomli>=2.0; python_version < "3.11"', 'gradio>=6.0; extra == "demo"']
    monkeypatch.setattr(space.importlib.metadata, "requires", lambda name: metadata if name == "lape_hf" else None)
    assert runtime_requirements(tmp_path / "no_pyproject.toml") == ["torch>=2.4", 'tomli>=2.0; python_version < "3.11"']


def test_the_space_copy_of_the_package_holds_only_python_files_and_package_data(tmp_path: Path):
    package = tmp_path / "src" / "lape_hf"
    wanted = ["__init__.py", "demo/core.py", "demo/examples/a_label-3.png", "hub/publish.py"]
    strays = ["notes.txt", "demo/examples/scratch.jpg", "__pycache__/core.cpython-311.pyc", "hub/space_template/app.py"]
    for name in [*wanted, *strays]:
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(name)
    project_file = fake_project(tmp_path, [], ["demo/examples/*.png", "hub/space_template/*"])
    assert sorted(package_files(package, project_file)) == sorted(f"lape_hf/{name}" for name in wanted)


class SpaceFailingHubApi:
    """Stands in for `HfApi`: model commits succeed, a commit to a Space is refused; every call is recorded."""

    calls: list[tuple[str, str]] = []

    def create_repo(self, repo_id: str, **kwargs) -> None:
        self.calls.append(("create_repo", repo_id))

    def create_commit(self, repo_id: str, operations, **kwargs):
        self.calls.append(("create_commit", repo_id))
        if kwargs["repo_type"] == "space":
            raise HfHubHTTPError("403 Forbidden", response=SimpleNamespace(headers={}, request=None))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0123abcd")


@pytest.fixture
def space_failing_hub(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every `HfApi()` is a `SpaceFailingHubApi` and a token is set; returns the recorded calls."""
    monkeypatch.setattr(publish, "HfApi", SpaceFailingHubApi)
    monkeypatch.setattr(SpaceFailingHubApi, "calls", [])
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    return SpaceFailingHubApi.calls


def test_a_failed_space_upload_says_the_model_is_published_and_the_space_is_not(
    model_dirs: dict[str, Path], space_failing_hub, capsys
):
    pytest.importorskip("gradio", reason=DEMO_EXTRA_MISSING)
    arguments = [str(model_dirs["lape"]), "--repo_id", "org/lape-tiny", "--space", "org/lape-tiny-demo"]
    status = load_script("push_to_hub").main(arguments)
    output = capsys.readouterr()
    assert status == 1
    assert "Published 6 files to https://huggingface.co/org/lape-tiny/commit/0123abcd" in output.out
    [error] = [line for line in output.err.splitlines() if line.startswith("error:")]  # after the loading progress bar
    assert error.startswith(
        "error: the model org/lape-tiny is published (https://huggingface.co/org/lape-tiny/commit/0123abcd) but its "
        "Space is not: Upload to the Space org/lape-tiny-demo failed while trying to commit the files: HfHubHTTPError"
    )
    assert space_failing_hub[-1] == ("create_commit", "org/lape-tiny-demo")


def test_a_local_file_missing_from_the_space_plan_fails_as_itself_before_the_hub_is_asked(
    tmp_path: Path, space_failing_hub
):
    plan = SpacePlan("org/demo", SpaceCard(""), {"app.py": tmp_path / "vanished.py"})
    with pytest.raises(ValueError, match="vanished.py"):
        space.upload_space(plan)
    assert space_failing_hub == []  # neither the Space nor a commit was attempted


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_private_model_with_a_space_is_warned_about_the_token_the_space_needs(
    dry_run: bool, model_dirs: dict[str, Path], space_failing_hub, capsys
):
    pytest.importorskip("gradio", reason=DEMO_EXTRA_MISSING)
    arguments = [str(model_dirs["lape"]), "--repo_id", "org/lape-tiny", "--space", "org/demo", "--private"]
    load_script("push_to_hub").main(arguments + (["--dry_run"] if dry_run else []))
    warning = "warning: org/lape-tiny is private: the Space can load it only with an HF_TOKEN secret"
    assert any(line.startswith(warning) for line in capsys.readouterr().err.splitlines())
    assert bool(space_failing_hub) is not dry_run


def test_a_revision_with_a_space_is_refused(model_dirs: dict[str, Path], capsys):
    arguments = [str(model_dirs["lape"]), "--repo_id", "org/lape-tiny", "--space", "org/demo", "--revision", "v2"]
    with pytest.raises(SystemExit) as caught:
        load_script("push_to_hub").main([*arguments, "--dry_run"])
    assert caught.value.code == 2
    assert "--revision='v2' with --space: the Space loads the models' main branch" in capsys.readouterr().err


@pytest.mark.parametrize("space_id", ["not a repo id", "just-a-name"])
def test_a_bad_space_id_is_refused(space_id: str):
    with pytest.raises(ValueError, match="repo_id"):
        prepare_space(space_id, ["org/lape-tiny"])


def test_the_model_card_links_to_its_space_only_when_one_is_given(model_dirs: dict[str, Path]):
    with_space = prepare_upload(model_dirs["lape"], "org/lape-tiny", template_path=TEMPLATE, space_id="org/demo")
    without = prepare_upload(model_dirs["lape"], "org/lape-tiny", template_path=TEMPLATE)
    assert "[the demo Space org/demo](https://huggingface.co/spaces/org/demo)" in with_space.card.text
    assert "spaces/" not in without.card.text
    link = re.compile(r"\nTry it in the browser: .*? position embedding maps\.\n", re.DOTALL)
    assert link.sub("", with_space.card.text) == without.card.text  # the link is the only difference


def test_the_push_script_dry_run_prints_the_space_and_uploads_nothing(model_dirs: dict[str, Path], capsys):
    pytest.importorskip("gradio", reason=DEMO_EXTRA_MISSING)
    arguments = ["--model", str(model_dirs["lape"]), "--repo_id", "org/lape-tiny", "--space", "org/lape-tiny-demo"]
    status = load_script("push_to_hub").main([*arguments, "--space_compare", "org/add-tiny", "--dry_run"])
    output = capsys.readouterr().out
    assert status == 0
    assert "Files for the Space org/lape-tiny-demo:" in output and "sdk: gradio" in output
    assert "Dry run: nothing was uploaded to org/lape-tiny, org/lape-tiny-demo." in output


@pytest.mark.slow
def test_the_rendered_space_classifies_with_its_own_copy_of_the_package(model_dirs: dict[str, Path], tmp_path: Path):
    """The Space folder as the Hub would run it: its app.py imports the copied lape_hf and loads the models named in
    its card by Hub id (from an offline Hub cache here)."""
    pytest.importorskip("gradio", reason=DEMO_EXTRA_MISSING)
    cache = tmp_path / "hub_cache"
    install_in_hub_cache(
        prepare_upload(model_dirs["lape"], "org/lape-tiny", template_path=TEMPLATE).repository_files(),
        "org/lape-tiny",
        cache,
    )
    space = write_space(prepare_space("org/lape-demo", ["org/lape-tiny"]), tmp_path / "space")
    example = example_images()[0][0]
    code = (
        "import app, lape_hf; from lape_hf.demo.core import classify; "
        "models = app.load_demo_models(app.space_models()); "
        f"print(lape_hf.__file__); print(max((s, l) for l, s in classify(models[0], {str(example)!r}).items())[1])"
    )
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "HF_TOKEN")}
    env.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=space, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    package_file, label = result.stdout.strip().splitlines()[-2:]
    assert Path(package_file).resolve().is_relative_to(space.resolve())
    expected = pipeline("image-classification", model=str(model_dirs["lape"]))(str(example))[0]["label"]
    assert label == expected
