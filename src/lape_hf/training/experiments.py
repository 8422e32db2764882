"""The paper's experiment in one call: the same recipe with each PE join (and PE type) over several seeds.

Every run is a normal `lape_hf.training.run_training` run in its own process, saved to
`<output_root>/<position_embedding_type>-<pe_join>/seed-<seed>/` (a full model directory, reusable for the PE
similarity maps); the summary (mean and standard deviation of test accuracy; against "add": paired differences, an
exact sign test over seeds and McNemar's exact test per seed, `paired_comparison`) goes to `compare_joins.json`, tables
to stdout and a plot to `compare_joins.png` (names set by `summary_name`).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import multiprocessing
import os
import statistics
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic_files import atomic_write
from ..models.lape_vit.configuration_lape_vit import PE_JOINS, POSITION_EMBEDDING_TYPES
from .argument_files import is_argument_file
from .paired_comparison import paired_tests_vs_add, sign_test_cell
from .results import RESULTS_FILE, RunResults

logger = logging.getLogger(__name__)


@dataclass
class CompareArguments:
    """What to compare; every other argument is `scripts/train.py`'s and applies to all runs."""

    pe_joins: list[str] = field(
        default_factory=lambda: ["add", "lape"], metadata={"help": f"Joins to compare ({', '.join(PE_JOINS)})."}
    )
    position_embedding_types: list[str] = field(
        default_factory=lambda: ["learnable"],
        metadata={"help": f"PE types to compare ({', '.join(POSITION_EMBEDDING_TYPES)})."},
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "One run per seed and setting."})
    output_root: str = field(
        default="outputs/compare_joins", metadata={"help": "Where the run directories and the summary go."}
    )
    recipe: str = field(
        default="demo",
        metadata={
            "help": "Starting arguments: 'demo' (the README demo's model and schedule), 'train' (train.py's) or a "
            "train.py arguments file (.yaml/.yml/.json, e.g. recipes/fashion-mnist-vit-6x96.yaml)."
        },
    )
    parallel_runs: int = field(
        default=1, metadata={"help": "Runs at a time, each in its own process (use torch_num_threads=1 with > 1)."}
    )
    overwrite: bool = field(default=False, metadata={"help": f"Re-run settings whose {RESULTS_FILE} already exists."})
    summary_name: str = field(
        default="compare_joins",
        metadata={"help": "File name (without extension) of the summary JSON and PNG in --output_root."},
    )

    def __post_init__(self) -> None:
        for name, allowed in (("pe_joins", PE_JOINS), ("position_embedding_types", POSITION_EMBEDDING_TYPES)):
            unknown = [value for value in getattr(self, name) if value not in allowed]
            if unknown or not getattr(self, name):
                raise ValueError(f"{name}={getattr(self, name)!r}: allowed values are {', '.join(allowed)}.")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={self.seeds!r} must be one or more distinct integers.")
        if self.recipe not in ("demo", "train"):
            if not is_argument_file(self.recipe):
                raise ValueError(
                    f"recipe={self.recipe!r}: allowed values are 'demo', 'train' and a .yaml/.yml/.json arguments file."
                )
            if not os.path.isfile(self.recipe):
                raise ValueError(f"recipe={self.recipe!r}: no such arguments file.")
        if self.parallel_runs < 1:
            raise ValueError(f"parallel_runs={self.parallel_runs!r} must be >= 1.")
        if "unshare" in self.pe_joins and any(kind != "learnable" for kind in self.position_embedding_types):
            raise ValueError(
                "pe_join='unshare' learns one PE per layer: compare it with position_embedding_types learnable."
            )


def run_directory(output_root: str | os.PathLike, position_embedding_type: str, pe_join: str, seed: int) -> Path:
    return Path(output_root) / f"{position_embedding_type}-{pe_join}" / f"seed-{seed}"


def _train_in_this_process(argv: list[str], start_method: str) -> dict[str, Any]:
    """One run from its command line (module level, so a process pool can call it)."""
    # A spawned process would also spawn its dataloader workers, each re-importing torch and transformers (seconds per
    # dataloader); give them the start method the parent process would use.
    multiprocessing.set_start_method(start_method, force=True)
    from transformers import HfArgumentParser

    from . import ARGUMENT_CLASSES, run_training

    return run_training(*HfArgumentParser(ARGUMENT_CLASSES).parse_args_into_dataclasses(args=argv))


def plan_runs(compare: CompareArguments, base_argv: Sequence[str]) -> list[tuple[str, str, int, list[str]]]:
    """(PE type, join, seed, command line) of every run; the comparison's arguments come last, so they win."""
    runs = []
    for position_embedding_type in compare.position_embedding_types:
        for pe_join in compare.pe_joins:
            for seed in compare.seeds:
                directory = run_directory(compare.output_root, position_embedding_type, pe_join, seed)
                argv = [
                    *base_argv,
                    f"--pe_join={pe_join}",
                    f"--position_embedding_type={position_embedding_type}",
                    f"--seed={seed}",
                    "--overwrite_output_dir=true",  # a planned run replaces what is there (compare_joins decides reuse)
                    f"--output_dir={directory}",
                ]
                if compare.parallel_runs > 1:
                    argv.append("--disable_tqdm=true")  # interleaved progress bars are unreadable
                runs.append((position_embedding_type, pe_join, seed, argv))
    return runs


def compare_joins(compare: CompareArguments, base_argv: Sequence[str]) -> dict[str, Any]:
    """Run (or reuse) every planned run, then summarize, write the JSON and the plot; returns the summary."""
    runs = plan_runs(compare, base_argv)
    results: dict[tuple[str, str, int], dict[str, Any]] = {}
    pending = []
    for position_embedding_type, pe_join, seed, argv in runs:
        directory = run_directory(compare.output_root, position_embedding_type, pe_join, seed)
        finished = None if compare.overwrite else RunResults.read(directory)
        if finished is not None:
            logger.info("Reusing %s", directory / RESULTS_FILE)
            results[(position_embedding_type, pe_join, seed)] = finished.to_dict()
        else:
            pending.append(((position_embedding_type, pe_join, seed), argv))
    # Fresh processes: no state (threads, seeds, logging) leaks from one run into the next.
    start_method = multiprocessing.get_start_method()
    with ProcessPoolExecutor(
        max_workers=compare.parallel_runs, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        futures = {pool.submit(_train_in_this_process, argv, start_method): key for key, argv in pending}
        for done, future in enumerate(as_completed(futures), start=1):
            key = futures[future]
            try:
                results[key] = future.result()
            except Exception as error:
                for other in futures:
                    other.cancel()
                raise RuntimeError(f"Run {key[0]}-{key[1]} seed {key[2]} failed: {error}") from error
            accuracy = results[key]["metrics"]["eval_accuracy"]
            logger.info("Run %d/%d %s-%s seed %d: accuracy %.4f", done, len(futures), *key, accuracy)
    summary = summarize(compare, results)
    os.makedirs(compare.output_root, exist_ok=True)
    json_path, plot_path = summary_paths(compare)
    with atomic_write(json_path) as file:
        json.dump(summary, file, indent=2)
    plot_summary(summary, plot_path)
    return summary


def summary_paths(compare: CompareArguments) -> tuple[Path, Path]:
    """Where the summary JSON and the plot go."""
    root = Path(compare.output_root)
    return root / f"{compare.summary_name}.json", root / f"{compare.summary_name}.png"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1), the convention of papers' "mean ± std over seeds"."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(compare: CompareArguments, results: dict[tuple[str, str, int], dict[str, Any]]) -> dict[str, Any]:
    """Per setting: accuracies by seed, mean and std; against "add" (same PE type): the paired per-seed differences,
    their mean and std, the sign test over seeds and McNemar's test per seed."""
    rows = []
    for position_embedding_type in compare.position_embedding_types:
        for pe_join in compare.pe_joins:
            runs = {seed: results[(position_embedding_type, pe_join, seed)] for seed in compare.seeds}
            accuracies = [runs[seed]["metrics"]["eval_accuracy"] for seed in compare.seeds]
            mean, std = _mean_std(accuracies)
            row = {
                "position_embedding_type": position_embedding_type,
                "pe_join": pe_join,
                "seeds": list(compare.seeds),
                "accuracies": accuracies,
                "mean_accuracy": mean,
                "std_accuracy": std,
                "mean_wall_time_seconds": statistics.fmean(run["wall_time_seconds"] for run in runs.values()),
                "run_directories": [
                    str(run_directory(compare.output_root, position_embedding_type, pe_join, seed))
                    for seed in compare.seeds
                ],
            }
            if "add" in compare.pe_joins and pe_join != "add":
                baseline = [
                    results[(position_embedding_type, "add", seed)]["metrics"]["eval_accuracy"]
                    for seed in compare.seeds
                ]
                differences = [value - base for value, base in zip(accuracies, baseline, strict=True)]
                row["mean_difference_vs_add"], row["std_difference_vs_add"] = _mean_std(differences)
                row.update(
                    paired_tests_vs_add(
                        compare.seeds,
                        differences,
                        functools.partial(run_directory, compare.output_root, position_embedding_type),
                        pe_join,
                    )
                )
            rows.append(row)
    first = next(iter(results.values()))
    varied = ("pe_join", "position_embedding_type")
    return {
        "rows": rows,
        "dataset": first["dataset"],
        "training": {key: value for key, value in first["training"].items() if key != "seed"},
        "config": {key: value for key, value in first["config"].items() if key not in varied},
        "versions": first["versions"],
    }


def format_comparison_table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table (accuracies in %, mean ± sample std over seeds, the sign test against add)."""
    lines = [
        "| PE type | join | seeds | test accuracy (%) mean ± std | min | max | Δ vs add, paired (pp) | sign test p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        difference = (
            f"{100 * row['mean_difference_vs_add']:+.2f} ± {100 * row['std_difference_vs_add']:.2f}"
            if "mean_difference_vs_add" in row
            else "—"
        )
        lines.append(
            f"| {row['position_embedding_type']} | {row['pe_join']} | {len(row['seeds'])} | "
            f"{100 * row['mean_accuracy']:.2f} ± {100 * row['std_accuracy']:.2f} | "
            f"{100 * min(row['accuracies']):.2f} | {100 * max(row['accuracies']):.2f} | {difference} | "
            f"{sign_test_cell(row)} |"
        )
    return "\n".join(lines)


def plot_summary(summary: dict[str, Any], path: str | os.PathLike) -> None:
    """Test accuracy per setting: every seed as a dot, the mean with ± std as a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    figure, axis = plt.subplots(figsize=(max(4.0, 1.2 * len(rows) + 1.5), 3.6), constrained_layout=True)
    for position, row in enumerate(rows):
        accuracies = [100 * value for value in row["accuracies"]]
        offsets = [0.08 * (index - (len(accuracies) - 1) / 2) for index in range(len(accuracies))]
        axis.scatter([position + offset for offset in offsets], accuracies, s=14, color="tab:gray", zorder=3)
        color = "tab:orange" if row["pe_join"].startswith("lape") else "tab:blue"
        axis.errorbar(
            position, 100 * row["mean_accuracy"], yerr=100 * row["std_accuracy"], fmt="o", color=color, capsize=6
        )
    axis.set_xticks(range(len(rows)))
    multiple_types = len({row["position_embedding_type"] for row in rows}) > 1
    axis.set_xticklabels(
        [
            (f"{row['pe_join']}\n{row['position_embedding_type']}" if multiple_types else row["pe_join"])
            + (f"\nsign p={row['sign_test_p_vs_add']:.2g}" if "sign_test_p_vs_add" in row else "")
            for row in rows
        ]
    )
    dataset = summary["dataset"]
    axis.set_ylabel(f"test accuracy (%), {dataset['eval_split']} split")
    axis.set_title(f"{dataset['name']}: mean ± std over {len(rows[0]['seeds'])} seeds")
    axis.grid(axis="y", alpha=0.3)
    low = min(min(row["accuracies"]) for row in rows) * 100
    high = max(max(row["accuracies"]) for row in rows) * 100
    axis.set_ylim(math.floor(low - 0.5), min(100.5, math.ceil(high + 0.5)))
    with atomic_write(path, "wb") as file:
        figure.savefig(file, dpi=150, format=Path(path).suffix[1:])
    plt.close(figure)
