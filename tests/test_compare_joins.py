"""scripts/compare_joins.py: every (join, seed) run is a full saved model, and the summary's statistics are those of
the runs' own results.json files."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from lape_hf.training.experiments import CompareArguments, format_comparison_table, plan_runs, summarize

ROOT = Path(__file__).resolve().parent.parent
TINY = (
    "--config_overrides=image_size=16,patch_size=4,hidden_size=32,num_hidden_layers=2,num_attention_heads=2,"
    "intermediate_size=64"
)


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("compare_data")
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("val", 6)):
        for label, level in (("dark", 60), ("bright", 190)):
            (root / split / label).mkdir(parents=True)
            for index in range(count):
                pixels = np.clip(rng.normal(level, 30, (12, 12)), 0, 255).astype(np.uint8)
                PIL.Image.fromarray(pixels, mode="L").save(root / split / label / f"{index}.png")
    return root / "train", root / "val"


@pytest.fixture(scope="module")
def comparison(tiny_folders, tmp_path_factory) -> tuple[dict, Path, str]:
    """The script's own entry point, on the demo recipe with a tiny model and two steps per run."""
    train_dir, val_dir = tiny_folders
    output_root = tmp_path_factory.mktemp("compare") / "runs"
    main = runpy.run_path(str(ROOT / "scripts" / "compare_joins.py"))["main"]
    argv = [
        "--pe_joins",
        "add",
        "lape",
        "--seeds",
        "3",
        "5",
        f"--output_root={output_root}",
        TINY,
        f"--train_dir={train_dir}",
        f"--validation_dir={val_dir}",
        "--max_steps=2",
        "--per_device_train_batch_size=8",
        "--disable_tqdm=true",
        "--dataloader_num_workers=0",
        "--dataloader_persistent_workers=false",
    ]
    assert main(argv) == 0
    return json.loads((output_root / "compare_joins.json").read_text()), output_root, argv


def test_every_run_is_a_saved_model_with_its_own_join_and_seed(comparison):
    summary, output_root, _ = comparison
    for join in ("add", "lape"):
        for seed in (3, 5):
            directory = output_root / f"learnable-{join}" / f"seed-{seed}"
            assert (directory / "model.safetensors").exists() and (directory / "preprocessor_config.json").exists()
            results = json.loads((directory / "results.json").read_text())
            assert (results["pe_join"], results["training"]["seed"]) == (join, seed)
            assert results["training"]["per_device_train_batch_size"] == 8  # the command line beats the recipe
            assert results["training"]["learning_rate"] == 1e-3  # from the demo recipe
            assert results["config"]["hidden_size"] == 32
    assert [row["run_directories"] for row in summary["rows"]] == [
        [str(output_root / f"learnable-{join}" / f"seed-{seed}") for seed in (3, 5)] for join in ("add", "lape")
    ]


def test_the_summary_is_the_mean_and_sample_std_of_the_runs(comparison):
    summary, output_root, _ = comparison
    accuracies = {
        join: [
            json.loads((output_root / f"learnable-{join}" / f"seed-{seed}" / "results.json").read_text())["metrics"][
                "eval_accuracy"
            ]
            for seed in (3, 5)
        ]
        for join in ("add", "lape")
    }
    add, lape = summary["rows"]
    assert (add["pe_join"], lape["pe_join"]) == ("add", "lape")
    for row in (add, lape):
        values = accuracies[row["pe_join"]]
        assert row["accuracies"] == values
        assert row["mean_accuracy"] == pytest.approx(np.mean(values))
        assert row["std_accuracy"] == pytest.approx(np.std(values, ddof=1))
    differences = np.subtract(accuracies["lape"], accuracies["add"])
    assert lape["mean_difference_vs_add"] == pytest.approx(differences.mean())
    assert lape["std_difference_vs_add"] == pytest.approx(np.std(differences, ddof=1))
    assert "mean_difference_vs_add" not in add
    assert summary["dataset"]["name"] == "imagefolder" and "seed" not in summary["training"]

    table = format_comparison_table(summary).splitlines()
    assert table[0].startswith("| PE type | join | seeds |") and len(table) == 4
    assert f"| learnable | lape | 2 | {100 * np.mean(accuracies['lape']):.2f} ± " in table[3]


def test_the_plot_is_written_and_finished_runs_are_reused(comparison):
    _, output_root, argv = comparison
    assert (output_root / "compare_joins.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results_file = output_root / "learnable-lape" / "seed-3" / "results.json"
    before = results_file.stat().st_mtime_ns
    main = runpy.run_path(str(ROOT / "scripts" / "compare_joins.py"))["main"]
    assert main([*argv, "--summary_name=again"]) == 0  # nothing left to train: every results.json exists
    assert results_file.stat().st_mtime_ns == before
    again = json.loads((output_root / "again.json").read_text())
    assert again == json.loads((output_root / "compare_joins.json").read_text())
    assert (output_root / "again.png").exists()


def test_runs_are_planned_for_every_setting_and_seed():
    compare = CompareArguments(
        pe_joins=["add", "lape"], position_embedding_types=["learnable", "sinusoidal_2d"], seeds=[0, 1, 2]
    )
    runs = plan_runs(compare, ["--num_train_epochs=1"])
    assert len(runs) == 12
    kind, join, seed, argv = runs[-1]
    assert (kind, join, seed) == ("sinusoidal_2d", "lape", 2)
    assert argv[0] == "--num_train_epochs=1" and "--seed=2" in argv and "--pe_join=lape" in argv
    assert argv[-1] == "--output_dir=outputs/compare_joins/sinusoidal_2d-lape/seed-2"


def test_bad_comparisons_fail_early():
    with pytest.raises(ValueError, match="pe_joins=\\['add', 'lapee'\\]: allowed values are lape, lape_shared"):
        CompareArguments(pe_joins=["add", "lapee"])
    with pytest.raises(ValueError, match="distinct"):
        CompareArguments(seeds=[1, 1])
    with pytest.raises(ValueError, match="unshare"):
        CompareArguments(pe_joins=["unshare"], position_embedding_types=["sinusoidal_1d"])
    with pytest.raises(ValueError, match="recipe='paper'"):
        CompareArguments(recipe="paper")


def test_the_summary_pairs_runs_by_seed_and_uses_the_sample_std(tmp_path):
    """Synthetic results with different accuracies per seed, so that a population std, unpaired differences or
    swapped seeds would all give other numbers."""
    compare = CompareArguments(pe_joins=["add", "lape"], seeds=[3, 5, 8], output_root=str(tmp_path))
    accuracies = {"add": [0.5, 0.7, 0.6], "lape": [0.6, 0.9, 0.65]}

    def result(join: str, seed: int) -> dict:
        return {
            "metrics": {"eval_accuracy": accuracies[join][compare.seeds.index(seed)]},
            "wall_time_seconds": 10.0 * seed,
            "dataset": {"name": "toy"},
            "training": {"seed": seed, "learning_rate": 1e-3},
            "config": {"pe_join": join, "position_embedding_type": "learnable", "hidden_size": 32},
            "versions": {},
        }

    results = {("learnable", join, seed): result(join, seed) for join in ("add", "lape") for seed in compare.seeds}
    add, lape = summarize(compare, results)["rows"]
    assert (add["accuracies"], lape["accuracies"]) == (accuracies["add"], accuracies["lape"])
    assert lape["mean_accuracy"] == pytest.approx(np.mean(accuracies["lape"]))
    assert lape["std_accuracy"] == pytest.approx(np.std(accuracies["lape"], ddof=1))
    assert lape["mean_wall_time_seconds"] == pytest.approx(160 / 3)
    differences = [0.1, 0.2, 0.05]  # lape - add, seed by seed
    assert lape["mean_difference_vs_add"] == pytest.approx(np.mean(differences))
    assert lape["std_difference_vs_add"] == pytest.approx(np.std(differences, ddof=1))
