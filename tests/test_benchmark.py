"""The benchmark's logic, not its timings: every candidate is the same network, the memory measure counts what a step
really holds, the rounds are interleaved, and a smoke run produces a complete report."""

from __future__ import annotations

import json
import re
import shlex
import statistics
from pathlib import Path

import pytest
import torch
from script_loader import load_script

from lape_hf import LapeViTForImageClassification
from lape_hf.conversion import convert_timm_state_dict, convert_transformers_model
from lape_hf.tools import benchmark
from lape_hf.tools.benchmark import (
    BenchmarkReport,
    Candidate,
    CandidateResult,
    benchmark_config,
    build_candidates,
    build_lape_vit,
    build_timm_vit,
    build_transformers_vit,
    combine_reports,
    held_bytes,
    interleaved_rates,
    run_benchmark,
    step_peak_bytes,
)

ROOT = Path(__file__).resolve().parent.parent


def logits(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(pixel_values)


def synthetic_report(
    rounds: dict[str, list[float]], peaks: dict[str, int] | None = None, **settings
) -> BenchmarkReport:
    """A training-only report of the given per-round images/s (and peak bytes), one candidate per key."""
    results = [
        CandidateResult(
            name,
            0,
            {"training": statistics.median(r)},
            {"training": r},
            {"training": peaks[name]} if peaks else {},
        )
        for name, r in rounds.items()
    ]
    fields = dict(size="tiny", description="", batch_size=1, threads=1, iterations=1, warmup=0)
    fields.update(settings)
    return BenchmarkReport(
        **fields,
        repeats=len(next(iter(rounds.values()))),
        modes=["training"],
        environment={"load_average_before": [0.1], "load_average_after": [2.0]},
        results=results,
    )


def test_transformers_vit_is_the_add_join_of_the_same_network():
    """LapeViT with the add join, given transformers' ViT weights, computes transformers' logits: same width, depth,
    heads, MLP, qkv bias, LayerNorm eps, activation, class token and PE."""
    reference = build_transformers_vit(benchmark_config("tiny"))
    lape_add = build_lape_vit(benchmark_config("tiny", "add"))
    lape_add.model.load_state_dict(convert_transformers_model(reference.model).state_dict())
    pixel_values = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(logits(lape_add, pixel_values), logits(reference, pixel_values), atol=1e-5, rtol=0)


def test_timm_vit_is_the_add_join_of_the_same_network():
    pytest.importorskip("timm")
    config = benchmark_config("tiny")
    reference = build_timm_vit(config)
    lape_add = build_lape_vit(benchmark_config("tiny", "add"))
    converted = convert_timm_state_dict(reference.state_dict(), num_attention_heads=config.num_attention_heads)
    lape_add.model.load_state_dict(converted.state_dict())
    pixel_values = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(logits(lape_add, pixel_values), logits(reference, pixel_values), atol=1e-5, rtol=0)


def test_candidates_differ_only_by_the_lape_layer_norms():
    candidates = {candidate.name: candidate for candidate in build_candidates("tiny", include_timm=False)}
    assert list(candidates) == ["lape-vit[lape]", "lape-vit[add]", "transformers-vit"]
    config = benchmark_config("tiny")
    assert candidates["lape-vit[add]"].parameters == candidates["transformers-vit"].parameters
    lape_extra = candidates["lape-vit[lape]"].parameters - candidates["lape-vit[add]"].parameters
    assert lape_extra == 2 * config.hidden_size * config.num_hidden_layers
    assert all(c.model.model.config._attn_implementation == "sdpa" for c in candidates.values())
    assert config.drop_path_rate == config.hidden_dropout_prob == config.attention_probs_dropout_prob == 0.0


def test_the_control_is_a_second_copy_of_the_reference():
    candidates = build_candidates("tiny", include_timm=False, control=True)
    control, reference = candidates[-1], candidates[2]
    assert (control.name, control.reference_name, reference.name) == ("transformers-vit#2", *["transformers-vit"] * 2)
    assert control.model is not reference.model
    for first, second in zip(control.model.parameters(), reference.model.parameters(), strict=True):
        assert torch.equal(first, second)  # the same seed: the same weights


def test_compiled_variants_are_compared_with_compiled_transformers_vit():
    names = [c.name for c in build_candidates("tiny", compile=True, include_timm=False)]
    assert names[3:] == ["lape-vit[lape]+compile", "lape-vit[add]+compile", "transformers-vit+compile"]
    candidates = build_candidates("tiny", compile=True, include_timm=False)
    assert candidates[3].reference_name == "transformers-vit+compile"
    assert candidates[0].reference_name == "transformers-vit"


def test_step_peak_counts_bytes_alive_at_the_same_time():
    def step() -> None:
        first = torch.empty(1_000_000)  # 4 MB
        second = torch.empty(250_000)  # 1 MB, alive with the first: the peak, 5 MB
        del first
        third = torch.empty(750_000)  # 3 MB, alive with the second only: 4 MB
        del second, third

    assert step_peak_bytes(step) == 5_000_000


def test_held_bytes_are_parameters_buffers_and_optimizer_state():
    model = torch.nn.Linear(10, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    candidate = Candidate("linear", model, optimizer, parameters=33)
    assert held_bytes(candidate, "inference") == held_bytes(candidate, "training") == 33 * 4
    model(torch.randn(2, 10)).sum().backward()
    optimizer.step()
    # AdamW keeps two moments per parameter and a step count per tensor.
    step_bytes = sum(state["step"].numel() * state["step"].element_size() for state in optimizer.state.values())
    assert held_bytes(candidate, "training") == 3 * 33 * 4 + step_bytes


def test_rounds_are_interleaved_and_rotate_the_starting_candidate():
    calls: list[str] = []
    candidates = [
        Candidate(name, torch.nn.Identity(), torch.optim.SGD([torch.zeros(1, requires_grad=True)]), 0) for name in "abc"
    ]
    samples = interleaved_rates(
        candidates,
        lambda candidate, pixel_values, labels: calls.append(candidate.name),
        pixel_values=torch.zeros(4, 1),
        labels=torch.zeros(4),
        warmup=1,
        repeats=3,
        iterations=2,
    )
    assert "".join(calls) == "abc" + "aabbcc" + "bbccaa" + "ccaabb"
    assert {name: len(rates) for name, rates in samples.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(rate > 0 for rates in samples.values() for rate in rates)


def test_bad_arguments_are_refused_before_anything_runs():
    with pytest.raises(ValueError, match=r"Unknown benchmark size 'huge'; allowed: deit-tiny, vit-lite-7/4, tiny"):
        run_benchmark("huge")
    with pytest.raises(ValueError, match=r"modes=\['eval'\] must be a non-empty selection"):
        run_benchmark("tiny", modes=["eval"])
    with pytest.raises(ValueError, match="repeats=0 must be at least 1"):
        run_benchmark("tiny", repeats=0)


def test_smoke_run_reports_every_candidate_and_writes_json(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark, "timm_available", lambda: False)  # the note path; timm itself is tested above
    report = run_benchmark("tiny", batch_size=2, threads=None, repeats=1, iterations=1, warmup=1, log=None)
    names = [result.name for result in report.results]
    assert names == ["lape-vit[lape]", "lape-vit[add]", "transformers-vit"]
    assert report.notes == ["timm is not installed (pip install 'lape_hf[bench]'): timm's ViT was skipped."]
    for result in report.results:
        assert set(result.images_per_second) == set(result.peak_memory_bytes) == {"inference", "training"}
        assert all(rate > 0 for rate in result.images_per_second.values())
        # Training holds the weights, AdamW's two moments and the gradients at its peak: more than 4x the weights.
        assert result.peak_memory_bytes["training"] > 4 * 4 * result.parameters
        assert result.peak_memory_bytes["inference"] > 4 * result.parameters
    lape, add = report.result("lape-vit[lape]").samples["training"], report.result("lape-vit[add]").samples["training"]
    expected = statistics.median(a / b for a, b in zip(lape, add, strict=True))
    assert report.ratio("lape-vit[lape]", "lape-vit[add]", "training") == expected
    compared = [row.what for row in report.comparisons()]
    assert "lape-vit[lape] / lape-vit[add], training speed" in compared
    assert not any("timm" in what for what in compared)
    table = report.format_table()
    assert table.count("\n") == 2 + len(names) - 1 and "| lape-vit[lape] | 0.024M |" in table

    path = tmp_path / "report.json"
    report.write_json(path)
    data = json.loads(path.read_text())
    assert [result["name"] for result in data["results"]] == names
    assert data["results"][0]["samples"]["training"] == report.results[0].samples["training"]
    assert {row["what"] for row in data["comparisons"]} == set(compared)


def test_speed_ratios_pair_the_candidates_round_by_round():
    """A slow spell of the machine in one round must not move a ratio: each round's ratio is taken, then the median."""
    report = synthetic_report({"a": [10.0, 20.0, 30.0], "b": [5.0, 40.0, 15.0]})
    assert report.ratio("a", "b", "training") == 2.0  # rounds: 2, 0.5, 2 (the ratio of the medians is 4/3)
    assert report.best_round_ratio("a", "b", "training") == 30.0 / 40.0
    assert report.ratio("a", "b", "inference") is None
    assert report.ratio("a", "missing", "training") is None


def test_the_control_is_reported_as_the_noise_floor():
    report = synthetic_report({"transformers-vit": [10.0, 20.0, 30.0], "transformers-vit#2": [11.0, 19.0, 33.0]})
    (row,) = [row for row in report.comparisons() if row.what.startswith("noise floor")]
    assert row.what == "noise floor: transformers-vit#2 / transformers-vit, training speed"
    assert row.ratio == pytest.approx(1.1)  # rounds: 1.1, 0.95, 1.1
    assert row.best_round_ratio == pytest.approx(33.0 / 30.0)


def test_the_report_prints_ratios_without_targets_or_verdicts():
    """The figures a run is compared against live in the README's text, not in the measuring tool."""
    report = synthetic_report({"lape-vit[lape]": [10.0, 12.0], "lape-vit[add]": [10.0, 11.0]})
    text = report.format_comparisons()
    assert text.startswith("lape-vit[lape] / lape-vit[add], training speed: 1.045")
    assert not re.search(r"target|pass|fail|>=|<=", text, flags=re.IGNORECASE)


def test_lape_vit_uses_sdpa_attention_by_default():
    """The fast path is the default: a model built from a config (or by the Auto classes) runs sdpa, not eager."""
    from transformers import AutoModelForImageClassification

    config = benchmark_config("tiny")
    assert LapeViTForImageClassification(config).config._attn_implementation == "sdpa"
    assert AutoModelForImageClassification.from_config(config).config._attn_implementation == "sdpa"


def load_benchmark_script():
    return load_script("benchmark")


def test_readme_benchmark_commands_parse():
    """Every `scripts/benchmark.py` command in the README's Performance section is accepted as written."""
    script = load_benchmark_script()
    section = (ROOT / "README.md").read_text().split("\n## Performance\n", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#")[0] for line in section.splitlines() if line.startswith("python scripts/benchmark.py")]
    assert len(commands) >= 4
    for command in commands:
        args = script.parse_args(shlex.split(command)[2:])
        assert args.size in benchmark.BENCHMARK_SIZES


def test_processes_are_combined_by_pooling_their_rounds():
    """A process that favours one candidate throughout (here "b", 10% faster in all its rounds) is one voice among
    several: rounds stay paired within their process, the median runs over all of them, the per-process ratios show
    the disagreement, and memory is the largest peak seen."""
    fair = synthetic_report({"a": [10.0, 20.0, 30.0], "b": [10.0, 20.0, 30.0]}, {"a": 100, "b": 100})
    biased = synthetic_report({"a": [10.0, 20.0, 30.0], "b": [11.0, 22.0, 33.0]}, {"a": 120, "b": 100})
    combined = combine_reports([fair, biased, fair])
    assert combined.process_rounds == [3, 3, 3] and combined.repeats == 9
    assert combined.result("a").samples["training"] == [10.0, 20.0, 30.0] * 3
    assert combined.ratio("b", "a", "training") == 1.0  # six rounds at 1.0, three at 1.1
    assert combined.process_ratios("b", "a", "training") == pytest.approx([1.0, 1.1, 1.0])
    assert combined.result("a").peak_memory_bytes == {"training": 120}
    assert combined.environment["load_average_after"] == [2.0]
    assert "from 3 processes" in combined.format()
    assert fair.process_ratios("b", "a", "training") == []  # a single process has no per-process split
    # Combining combined reports keeps every process.
    assert combine_reports([combined, fair]).process_rounds == [3, 3, 3, 3]


def test_only_runs_of_the_same_benchmark_are_combined():
    report = synthetic_report({"a": [1.0], "b": [1.0]}, {"a": 1, "b": 1})
    with pytest.raises(ValueError, match="batch_size=2 and 1"):
        combine_reports([report, synthetic_report({"a": [1.0], "b": [1.0]}, {"a": 1, "b": 1}, batch_size=2)])
    with pytest.raises(ValueError, match=r"candidates \['a'\] and \['a', 'b'\]"):
        combine_reports([report, synthetic_report({"a": [1.0]}, {"a": 1})])
    with pytest.raises(ValueError, match="at least one report"):
        combine_reports([])


def test_a_report_survives_its_json():
    combined = combine_reports([synthetic_report({"a": [1.0, 2.0], "b": [2.0, 2.0]}, {"a": 1, "b": 2})] * 2)
    again = BenchmarkReport.from_dict(json.loads(json.dumps(combined.to_dict())))
    assert again == combined
    assert again.comparisons() == combined.comparisons()


def test_each_process_runs_the_benchmark_it_was_given(tmp_path):
    script = load_benchmark_script()
    argv = ["--size", "tiny", "--batch-size", "3", "--repeats", "4", "--modes", "training", "--control", "--no-timm"]
    args = script.parse_args([*argv, "--processes", "3"])
    child = script.parse_args(script.child_arguments(args, tmp_path / "p.json"))
    for name, value in vars(args).items():
        expected = {"processes": 1, "output_file": tmp_path / "p.json"}.get(name, value)
        assert getattr(child, name) == expected, name


def test_processes_run_one_after_another_and_their_report_is_written(tmp_path, capsys):
    script = load_benchmark_script()
    output = tmp_path / "combined.json"
    argv = ["--size", "tiny", "--batch-size", "2", "--repeats", "2", "--warmup", "0", "--modes", "inference"]
    assert script.main([*argv, "--no-timm", "--no-memory", "--processes", "2", "--output", str(output)]) == 0
    data = json.loads(output.read_text())
    assert data["process_rounds"] == [2, 2] and data["repeats"] == 4
    assert [len(result["samples"]["inference"]) for result in data["results"]] == [4, 4, 4]
    assert "median of 4 interleaved rounds from 2 processes" in capsys.readouterr().out


def test_the_script_refuses_a_process_count_below_one(capsys):
    with pytest.raises(SystemExit) as exit:
        load_benchmark_script().parse_args(["--processes", "0"])
    assert exit.value.code == 2 and "--processes=0 must be at least 1" in capsys.readouterr().err
