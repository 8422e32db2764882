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


def test_every_run_saves_its_test_predictions_in_dataset_order(comparison, tiny_folders):
    from lape_hf.training.data import load_raw_splits

    _, output_root, _ = comparison
    raw, _ = load_raw_splits(None, None, str(tiny_folders[0]), str(tiny_folders[1]), None)
    eval_labels = raw["validation"]["label"]
    for join in ("add", "lape"):
        for seed in (3, 5):
            directory = output_root / f"learnable-{join}" / f"seed-{seed}"
            record = json.loads((directory / "predictions.json").read_text())
            results = json.loads((directory / "results.json").read_text())
            assert record["labels"] == eval_labels  # the eval split as loaded, in order
            assert record["label_names"] == ["bright", "dark"]
            assert len(record["predicted"]) == results["dataset"]["num_eval"] == 12
            accuracy = np.mean(np.equal(record["predicted"], record["labels"]))
            assert accuracy == pytest.approx(results["metrics"]["eval_accuracy"])
            # The metrics of the one prediction pass still reach the Trainer's log history, as evaluate() puts them.
            history = json.loads((directory / "trainer_state.json").read_text())["log_history"]
            assert history[-1]["eval_accuracy"] == pytest.approx(accuracy)


def test_the_summary_carries_the_paired_tests_against_add(comparison):
    from lape_hf.training.paired_comparison import format_paired_table
    from lape_hf.training.statistics import mcnemar_exact, sign_test_exact

    summary, output_root, _ = comparison
    add, lape = summary["rows"]
    assert "sign_test_p_vs_add" not in add and "mcnemar_vs_add" not in add
    assert lape["differences_vs_add"] == pytest.approx(np.subtract(lape["accuracies"], add["accuracies"]).tolist())
    assert lape["sign_test_p_vs_add"] == sign_test_exact(lape["differences_vs_add"])
    assert "mcnemar_vs_add_missing" not in lape
    for test, seed in zip(lape["mcnemar_vs_add"], (3, 5), strict=True):
        records = {
            join: json.loads((output_root / f"learnable-{join}" / f"seed-{seed}" / "predictions.json").read_text())
            for join in ("add", "lape")
        }
        correct = {join: np.equal(r["predicted"], r["labels"]).tolist() for join, r in records.items()}
        only_lape, only_add, p_value = mcnemar_exact(correct["add"], correct["lape"])
        assert test == {"seed": seed, "only_this_correct": only_lape, "only_add_correct": only_add, "p_value": p_value}
    table = format_paired_table(summary).splitlines()
    assert len(table) == 4 and table[2].startswith("| learnable | lape | 3 | ")
    assert format_comparison_table(summary).splitlines()[3].endswith(f"| {lape['sign_test_p_vs_add']:.3g} |")


def test_the_script_prints_the_paired_table(comparison, capsys):
    _, output_root, argv = comparison
    main = runpy.run_path(str(ROOT / "scripts" / "compare_joins.py"))["main"]
    assert main([*argv, "--summary_name=printed"]) == 0  # every run reused
    printed = capsys.readouterr().out
    assert "Paired by seed against add (McNemar: exact, two-sided, on the test predictions):" in printed
    assert "| PE type | join | seed | accuracy (%) | add (%) | Δ (pp) |" in printed
    assert "| learnable | lape | 5 | " in printed


def test_runs_without_predictions_still_summarize_without_mcnemar(tmp_path):
    from lape_hf.training.paired_comparison import format_paired_table

    compare = CompareArguments(pe_joins=["add", "lape"], seeds=[0, 1], output_root=str(tmp_path))
    accuracies = {"add": [0.5, 0.7], "lape": [0.6, 0.8]}
    results = {
        ("learnable", join, seed): {
            "metrics": {"eval_accuracy": accuracies[join][seed]},
            "wall_time_seconds": 1.0,
            "dataset": {"name": "toy"},
            "training": {"seed": seed},
            "config": {},
            "versions": {},
        }
        for join in ("add", "lape")
        for seed in (0, 1)
    }
    summary = summarize(compare, results)
    _, lape = summary["rows"]
    assert lape["sign_test_p_vs_add"] == 0.5 and lape["mcnemar_vs_add"] == []  # 2 of 2 up: 2 * (1/4)
    assert lape["mcnemar_vs_add_missing"] == [
        "seed 0: no predictions.json for lape, add",
        "seed 1: no predictions.json for lape, add",
    ]
    table = format_paired_table(summary)
    assert "| learnable | lape | 0 | 60.00 | 50.00 | +10.00 | — | — | — |" in table
    assert "McNemar omitted for learnable-lape seed 0: no predictions.json for lape, add." in table


def test_mcnemar_is_left_out_for_runs_evaluated_on_different_examples(tmp_path):
    from lape_hf.training.eval_predictions import EvalPredictions
    from lape_hf.training.experiments import run_directory

    compare = CompareArguments(pe_joins=["add", "lape"], seeds=[0], output_root=str(tmp_path))
    for join, labels in (("add", [0, 1, 1]), ("lape", [0, 1, 0])):
        directory = run_directory(tmp_path, "learnable", join, 0)
        directory.mkdir(parents=True)
        EvalPredictions(predicted=[0, 1, 1], labels=labels).write(directory)
    results = {
        ("learnable", join, 0): {
            "metrics": {"eval_accuracy": 0.5},
            "wall_time_seconds": 1.0,
            "dataset": {},
            "training": {},
            "config": {},
            "versions": {},
        }
        for join in ("add", "lape")
    }
    _, lape = summarize(compare, results)["rows"]
    assert lape["mcnemar_vs_add"] == []
    assert lape["mcnemar_vs_add_missing"] == ["seed 0: the two runs were evaluated on different examples"]


def test_compare_joins_takes_a_recipe_file_and_refuses_a_missing_one(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("num_train_epochs: 2\n")
    assert CompareArguments(recipe=str(recipe)).recipe == str(recipe)
    with pytest.raises(ValueError, match="no such arguments file"):
        CompareArguments(recipe=str(tmp_path / "nope.yaml"))
    with pytest.raises(ValueError, match="a .yaml/.yml/.json arguments file"):
        CompareArguments(recipe=str(tmp_path / "recipe.txt"))


def test_a_recipe_file_starts_every_run_and_the_command_line_wins(tiny_folders, tmp_path):
    """The file's arguments come first (here: learning rate, batch size, epochs), the command line's after them."""
    train_dir, val_dir = tiny_folders
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "learning_rate: 0.002\nper_device_train_batch_size: 4\nnum_train_epochs: 7\nmixup: 0.0\ncutmix: 0.0\n"
        "rand_augment: false\neval_strategy: 'no'\nsave_strategy: 'no'\n"
    )
    output_root = tmp_path / "runs"
    main = runpy.run_path(str(ROOT / "scripts" / "compare_joins.py"))["main"]
    argv = [f"--recipe={recipe}", "--pe_joins", "add", "--seeds", "0", f"--output_root={output_root}", TINY,
            f"--train_dir={train_dir}", f"--validation_dir={val_dir}", "--max_steps=1",
            "--per_device_train_batch_size=6", "--dataloader_num_workers=0", "--disable_tqdm=true"]  # fmt: skip
    assert main(argv) == 0
    training = json.loads((output_root / "learnable-add" / "seed-0" / "results.json").read_text())["training"]
    assert training["learning_rate"] == 0.002 and training["epochs"] == 7.0  # from the file
    assert training["per_device_train_batch_size"] == 6 and training["max_steps"] == 1  # the command line won
