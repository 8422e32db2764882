"""Paired statistics of a join against "add" with the same PE type and seed (same initialization seed, data order and
augmentation): the per-seed accuracy differences with an exact sign test over seeds, and McNemar's exact test on each
seed's test predictions (`predictions.json`). Fields of the rows of `experiments.summarize`."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .eval_predictions import EvalPredictions
from .statistics import mcnemar_exact, sign_test_exact

MCNEMAR_TITLE = "Paired by seed against add (McNemar: exact, two-sided, on the test predictions)"


def paired_tests_vs_add(
    seeds: Sequence[int],
    differences: Sequence[float],
    run_directory: Callable[[str, int], str | os.PathLike],
    pe_join: str,
) -> dict[str, Any]:
    """A join's paired fields: differences by seed, the sign-test p and McNemar per seed (`run_directory(join, seed)`
    is where a run of this PE type is saved).

    McNemar needs both runs' predictions on the same examples; runs saved without `predictions.json` (older
    versions) or evaluated on different examples leave it out, with the reason in `mcnemar_vs_add_missing`.
    """
    fields: dict[str, Any] = {
        "differences_vs_add": list(differences),
        "sign_test_p_vs_add": sign_test_exact(differences),
    }
    tests, missing = [], []
    for seed in seeds:
        runs = {join: EvalPredictions.read(Path(run_directory(join, seed))) for join in (pe_join, "add")}
        absent = [join for join, record in runs.items() if record is None]
        if absent:
            missing.append(f"seed {seed}: no predictions.json for {', '.join(absent)}")
            continue
        if runs[pe_join].labels != runs["add"].labels:
            missing.append(f"seed {seed}: the two runs were evaluated on different examples")
            continue
        only_this, only_add, p_value = mcnemar_exact(runs["add"].correct(), runs[pe_join].correct())
        tests.append({"seed": seed, "only_this_correct": only_this, "only_add_correct": only_add, "p_value": p_value})
    fields["mcnemar_vs_add"] = tests
    if missing:
        fields["mcnemar_vs_add_missing"] = missing
    return fields


def sign_test_cell(row: dict[str, Any]) -> str:
    return f"{row['sign_test_p_vs_add']:.3g}" if "sign_test_p_vs_add" in row else "—"


def format_paired_table(summary: dict[str, Any]) -> str:
    """Seed by seed against "add": both accuracies, the difference and McNemar's test (Markdown), then notes on
    omitted tests; empty when no row is compared with "add"."""
    lines = [
        "| PE type | join | seed | accuracy (%) | add (%) | Δ (pp) | only join right | only add right | McNemar p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    add_rows = {row["position_embedding_type"]: row for row in summary["rows"] if row["pe_join"] == "add"}
    for row in summary["rows"]:
        if "differences_vs_add" not in row:
            continue
        baseline = add_rows[row["position_embedding_type"]]
        tests = {test["seed"]: test for test in row["mcnemar_vs_add"]}
        for index, seed in enumerate(row["seeds"]):
            test = tests.get(seed)
            mcnemar = (
                f"{test['only_this_correct']} | {test['only_add_correct']} | {test['p_value']:.3g}"
                if test
                else "— | — | —"
            )
            lines.append(
                f"| {row['position_embedding_type']} | {row['pe_join']} | {seed} | "
                f"{100 * row['accuracies'][index]:.2f} | {100 * baseline['accuracies'][index]:.2f} | "
                f"{100 * row['differences_vs_add'][index]:+.2f} | {mcnemar} |"
            )
        for reason in row.get("mcnemar_vs_add_missing", []):
            notes.append(f"McNemar omitted for {row['position_embedding_type']}-{row['pe_join']} {reason}.")
    if len(lines) == 2:
        return ""
    return "\n".join(lines + ([""] + notes if notes else []))
