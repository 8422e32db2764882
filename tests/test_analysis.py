"""The per-layer position embedding (PE) similarity maps of `lape_hf.analysis` and `scripts/visualize_pe.py`.

Numbers are checked against direct computations: explicit loops for the cosine similarity and the measures, the
closed-form 2-D sinusoidal PE of the paper, and each layer's LayerNorm applied by hand for the PE a layer receives.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_, reference_sinusoidal_2d, tiny_config
from matplotlib.image import AxesImage
from matplotlib.text import Text
from PIL import Image
from script_loader import load_script
from transformers import ViTConfig

from lape_hf import LapeViTForImageClassification
from lape_hf.analysis import (
    PositionEmbeddingAnalysisError,
    figure_size_inches,
    load_model,
    map_stats,
    mean_absolute_change,
    patch_cosine_similarity,
    patch_distances,
    plot_patch_maps,
    plot_similarity_matrices,
    position_embedding_maps,
    similarity_by_distance,
)

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "visualize_pe.py"


def _load_script():
    return load_script("visualize_pe")


visualize_pe = _load_script()


def _model(seed: int | None = 0, **overrides) -> LapeViTForImageClassification:
    """A tiny classifier; with a seed every parameter (LayerNorm affines, learnable PE) is random."""
    model = LapeViTForImageClassification(tiny_config(**overrides))
    return (randomize_(model, seed) if seed is not None else model).eval()


def _saved(tmp_path: Path, name: str, **overrides) -> Path:
    directory = tmp_path / name
    _model(**overrides).save_pretrained(directory)
    return directory


def _explicit_cosine(vectors: np.ndarray) -> np.ndarray:
    n = len(vectors)
    result = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            dot = sum(float(a) * float(b) for a, b in zip(vectors[i], vectors[j], strict=True))
            result[i, j] = dot / (
                math.sqrt(sum(float(a) ** 2 for a in vectors[i])) * math.sqrt(sum(float(b) ** 2 for b in vectors[j]))
            )
    return result


# ---------------------------------------------------------------------------------------------------------------------
# The similarity and the measures
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_prefix_tokens", [0, 1, 2])
def test_cosine_similarity_drops_prefix_tokens_and_matches_explicit_loops(num_prefix_tokens):
    pe = np.random.default_rng(0).normal(size=(num_prefix_tokens + 6, 5))
    similarity = patch_cosine_similarity(torch.tensor(pe, dtype=torch.float32), num_prefix_tokens)
    assert similarity.shape == (6, 6)
    np.testing.assert_allclose(similarity, _explicit_cosine(pe[num_prefix_tokens:]), atol=1e-6)


def test_locality_measures_match_a_direct_computation():
    grid = (3, 4)
    coordinates = [(r, c) for r in range(3) for c in range(4)]
    distance = np.array([[math.dist(a, b) for b in coordinates] for a in coordinates])
    similarity = np.exp(-distance / 2)  # a perfectly local map: similarity falls with distance
    np.testing.assert_allclose(patch_distances(grid), distance)

    stats = map_stats(similarity, grid, "layer 1")
    pairs = [(similarity[i, j], distance[i, j]) for i in range(12) for j in range(12) if i != j]
    s = np.array([p[0] for p in pairs])
    d = np.array([p[1] for p in pairs])
    s_centred, d_centred = s - s.mean(), d - d.mean()
    pearson = (s_centred * d_centred).sum() / math.sqrt((s_centred**2).sum() * (d_centred**2).sum())
    assert stats.distance_correlation == pytest.approx(pearson)
    assert stats.distance_correlation < -0.9
    assert stats.neighbour_similarity == pytest.approx(math.exp(-0.5))
    assert stats.mean_similarity == pytest.approx(s.mean())
    profile = similarity_by_distance(similarity, grid)
    assert profile[1.0] == pytest.approx(math.exp(-0.5))
    assert profile[round(math.sqrt(2), 4)] == pytest.approx(math.exp(-math.sqrt(2) / 2))
    assert min(profile) == 1.0 and max(profile) == round(math.sqrt(2**2 + 3**2), 4)


def test_change_between_maps_is_the_mean_absolute_difference_off_the_diagonal():
    rng = np.random.default_rng(1)
    first, second = rng.uniform(-1, 1, (5, 5)), rng.uniform(-1, 1, (5, 5))
    expected = np.mean([abs(second[i, j] - first[i, j]) for i in range(5) for j in range(5) if i != j])
    assert mean_absolute_change(first, second) == pytest.approx(expected)
    assert mean_absolute_change(first, first) == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# The PE read from the model
# ---------------------------------------------------------------------------------------------------------------------
def test_raw_sinusoidal_2d_map_peaks_at_its_patch_and_is_symmetric():
    model = _model(seed=None, position_embedding_type="sinusoidal_2d", image_size=40)  # a 5x5 grid, centre (2, 2)
    maps = position_embedding_maps(model, "sin2d")
    raw = maps.raw[0]
    np.testing.assert_allclose(raw, _explicit_cosine(reference_sinusoidal_2d(5, 5, 32).double().numpy()), atol=1e-5)
    np.testing.assert_allclose(raw, raw.T, atol=1e-12)  # s_ij = s_ji
    assert (raw.argmax(axis=1) == np.arange(25)).all()  # every patch's map peaks at that patch
    np.testing.assert_allclose(np.diag(raw), 1.0, atol=1e-6)
    centre = raw[12].reshape(5, 5)
    np.testing.assert_allclose(centre, centre[::-1, :], atol=1e-6)  # up = down
    np.testing.assert_allclose(centre, centre[:, ::-1], atol=1e-6)  # left = right
    np.testing.assert_allclose(centre, centre.T, atol=1e-6)  # rows and columns use the same frequencies
    assert map_stats(raw, (5, 5), "raw").distance_correlation < -0.5


def test_raw_sinusoidal_1d_orders_patches_by_token_index_not_by_2d_position():
    model = _model(seed=None, position_embedding_type="sinusoidal_1d", image_size=40)
    centre = position_embedding_maps(model).raw[0][12].reshape(5, 5)
    # The next token (right) is one position away, the patch below is five: the 1-D PE has no 2-D structure.
    assert centre[2, 3] > centre[3, 2]
    assert not np.allclose(centre, centre.T, atol=1e-3)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(pe_join="lape"),
        dict(pe_join="lape_shared"),
        dict(pe_join="add"),
        dict(pe_join="share", position_embedding_type="sinusoidal_1d"),
        dict(pe_join="lape", pooler_type="sequence"),  # no class token
    ],
    ids=["lape", "lape_shared", "add", "share-sinusoidal_1d", "lape-no-class-token"],
)
def test_layer_maps_are_the_pe_each_layer_receives(overrides):
    """LaPE: p_l = LN_pe_l(p_{l-1}) (chain) or LN_pe_l(p_0); additive joins: norm1_l applied to the added PE."""
    model = _model(**overrides)
    config = model.config
    raw = model.lape_vit.embeddings.position_embedding.position_embeddings[0].detach()
    expected, previous = [], raw
    for layer in model.lape_vit.encoder.layers:
        norm = layer.position_layernorm if config.pe_join in ("lape", "lape_shared") else layer.layernorm_before
        source = previous if config.pe_join == "lape" else raw
        previous = torch.nn.functional.layer_norm(source, (32,), norm.weight.detach(), norm.bias.detach(), norm.eps)
        expected.append(patch_cosine_similarity(previous, config.num_prefix_tokens))

    maps = position_embedding_maps(model)
    assert len(maps.layers) == config.num_hidden_layers
    assert maps.layers[0].shape == (16, 16)  # 4x4 patches, class token dropped
    for got, want in zip(maps.layers, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(maps.raw[0], patch_cosine_similarity(raw, config.num_prefix_tokens), atol=1e-6)


def test_distillation_and_class_tokens_are_both_left_out():
    model = _model(pe_join="lape", use_distillation_token=True)
    maps = position_embedding_maps(model)
    assert model.config.num_prefix_tokens == 2
    assert maps.layers[0].shape == (16, 16) and maps.raw[0].shape == (16, 16)


def test_add_join_with_identical_norms_shows_one_map_in_every_layer_and_lape_adapts():
    """The paper's point: with 'add' all layers see the same map up to norm1's affine; LaPE's maps change."""
    untouched_add = position_embedding_maps(_model(seed=None, pe_join="add"))
    assert [s.change_from_previous for s in untouched_add.layer_stats()] == [None, 0.0, 0.0]

    lape = position_embedding_maps(_model(pe_join="lape"))
    stats = lape.layer_stats()
    for index in (1, 2):
        assert stats[index].change_from_previous == pytest.approx(
            mean_absolute_change(lape.layers[index - 1], lape.layers[index])
        )
        assert stats[index].change_from_previous > 0.01
    summary = lape.summary()
    assert summary["mean_change_between_consecutive_layers"] == pytest.approx(
        (stats[1].change_from_previous + stats[2].change_from_previous) / 2
    )


def test_unshare_has_one_raw_table_per_layer():
    maps = position_embedding_maps(_model(pe_join="unshare"))
    assert len(maps.raw) == 3
    assert not np.allclose(maps.raw[0], maps.raw[1])


def test_model_without_position_embedding_is_refused_with_a_clear_message():
    with pytest.raises(PositionEmbeddingAnalysisError, match="position_embedding_type='none'.*no position embedding"):
        position_embedding_maps(_model(position_embedding_type="none", relative_position_bias="lape"))


def test_a_model_that_is_not_lape_vit_is_refused_before_loading_weights(tmp_path):
    ViTConfig(image_size=32, patch_size=8).save_pretrained(tmp_path / "vit")
    with pytest.raises(PositionEmbeddingAnalysisError, match="'vit' model.*lape_vit"):
        load_model(tmp_path / "vit")
    with pytest.raises(PositionEmbeddingAnalysisError, match="Cannot load a model config from"):
        load_model(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------------------------------
# Figures and the command
# ---------------------------------------------------------------------------------------------------------------------
def _images(figure) -> list[AxesImage]:
    return [image for image in figure.findobj(AxesImage)]


def test_compare_draws_one_row_per_model_on_one_colour_scale():
    add = position_embedding_maps(_model(seed=1, pe_join="add"), "add")
    lape = position_embedding_maps(_model(seed=2, pe_join="lape"), "lape")
    figure = plot_patch_maps([add, lape])
    images = _images(figure)
    assert len(images) == 2 * 3
    centre = 2 * 4 + 2  # patch (2, 2) of the 4x4 grid, row-major
    lowest = min(similarity[centre].min() for maps in (add, lape) for similarity in maps.layers)
    assert [image.get_clim() for image in images] == [(pytest.approx(lowest), 1.0)] * 6
    titles = [sub.get_suptitle() for sub in figure.subfigs[0].subfigs]
    assert titles == ["add: join=add, PE=learnable", "lape: join=lape, PE=learnable"]
    # The centre patch of the 4x4 grid is (2, 2): its own map is 1 there.
    assert images[0].get_array()[2, 2] == pytest.approx(1.0)


def test_raw_panels_come_first_or_in_their_own_row_for_unshare():
    lape = position_embedding_maps(_model(pe_join="lape"), "lape")
    unshare = position_embedding_maps(_model(pe_join="unshare"), "unshare")
    assert len(_images(plot_similarity_matrices([lape], include_raw=True))) == 3 + 1
    figure = plot_similarity_matrices([lape, unshare], include_raw=True)
    assert len(_images(figure)) == (3 + 1) + (3 + 3)
    assert [image.get_array().shape for image in _images(figure)] == [(16, 16)] * 10


def test_command_writes_pngs_of_the_expected_size_and_the_summary(tmp_path, capsys):
    model = _saved(tmp_path, "lape", pe_join="lape")
    output = tmp_path / "maps"
    code = visualize_pe.main(
        [str(model), "--raw", "--output-dir", str(output), "--dpi", "40", "--summary-json", str(output / "s.json")]
    )
    assert code == 0
    for name in ("pe_patch_similarity.png", "pe_similarity_matrix.png"):
        with Image.open(output / name) as image:
            width, height = figure_size_inches(num_rows=1, num_columns=1 + 3)  # raw p_0 + three layers
            assert image.size == (round(width * 40), round(height * 40))
    printed = capsys.readouterr().out
    assert "join=lape, PE=learnable (4x4 patches)" in printed
    assert "mean change between consecutive layers" in printed
    summary = json.loads((output / "s.json").read_text())
    expected = position_embedding_maps(_model(pe_join="lape")).summary()
    assert summary[0]["mean_change_between_consecutive_layers"] == pytest.approx(
        expected["mean_change_between_consecutive_layers"]
    )
    assert [s["distance_correlation"] for s in summary[0]["layers"]] == pytest.approx(
        [s["distance_correlation"] for s in expected["layers"]]
    )


def test_command_compares_two_models_and_writes_pdf(tmp_path):
    add, lape = _saved(tmp_path, "add", pe_join="add"), _saved(tmp_path, "lape", pe_join="lape")
    output = tmp_path / "maps"
    argv = [str(add), "--compare", str(lape), "--kind", "patch", "--pdf", "--output-dir", str(output), "--dpi", "30"]
    assert visualize_pe.main(argv) == 0
    assert sorted(p.name for p in output.iterdir()) == ["pe_patch_similarity.pdf", "pe_patch_similarity.png"]
    with Image.open(output / "pe_patch_similarity.png") as image:
        width, height = figure_size_inches(num_rows=2, num_columns=3)
        assert image.size == (round(width * 30), round(height * 30))


def test_command_gives_a_message_instead_of_a_picture_for_a_model_without_pe(tmp_path, capsys):
    model = _saved(tmp_path, "none", position_embedding_type="none")
    output = tmp_path / "maps"
    assert visualize_pe.main([str(model), "--output-dir", str(output)]) == 2
    assert "position_embedding_type='none'" in capsys.readouterr().err
    assert not output.exists()


def test_command_rejects_a_patch_outside_the_grid(tmp_path, capsys):
    model = _saved(tmp_path, "lape", pe_join="lape")
    assert visualize_pe.main([str(model), "--patch", "4", "0", "--output-dir", str(tmp_path / "maps")]) == 2
    assert "outside the 4x4 patch grid" in capsys.readouterr().err


def test_command_loads_a_hub_id_from_the_cache_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    revision = "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "hub"
    _model(pe_join="lape").save_pretrained(cache / "models--lape-org--tiny-lape" / "snapshots" / revision)
    (cache / "models--lape-org--tiny-lape" / "refs").mkdir()
    (cache / "models--lape-org--tiny-lape" / "refs" / "main").write_text(revision)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    output = tmp_path / "maps"
    argv = ["lape-org/tiny-lape", "--kind", "matrix", "--output-dir", str(output), "--dpi", "30"]
    assert visualize_pe.main(argv) == 0
    assert (output / "pe_similarity_matrix.png").is_file()


@pytest.mark.parametrize("num_hidden_layers", [1, 2])
def test_every_title_of_a_shallow_models_figure_lies_inside_it(num_hidden_layers):
    # The panels alone would make the figure narrower than its titles (the model names and the patch).
    model = _model(pe_join="lape", num_hidden_layers=num_hidden_layers)
    figure = plot_patch_maps([position_embedding_maps(model, "a model with a long name, lape join")])
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    width = figure.get_size_inches()[0] * figure.dpi
    texts = [text for text in figure.findobj(Text) if text.get_text()]
    assert any("long name" in text.get_text() for text in texts)
    for text in texts:
        extent = text.get_window_extent(renderer)
        assert 0 <= extent.x0 and extent.x1 <= width, text.get_text()
