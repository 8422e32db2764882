"""Side-by-side speed and memory of LapeViT, transformers' ViT and timm's ViT built with one architecture.

LaPE promises accuracy at negligible cost; this module measures the cost. Every candidate gets the same shape (width,
depth, heads, MLP size, qkv bias, LayerNorm eps, class token, learnable PE, no dropout or drop path) and the same
step (cross-entropy on the logits, backward, fused AdamW). All run in one process, interleaved round robin after a
warm-up (the starting candidate rotates every round), and each figure is the median over the rounds, so that the
noise of a shared machine falls on every candidate alike.

Peak memory on CPU has no allocator statistics as on CUDA, so it is measured from torch.profiler's memory events
(`profile_memory=True`): the bytes the step allocates through PyTorch's CPU allocator and holds at once, at their
peak, plus the bytes held when the step starts (parameters, buffers and, for training, the optimizer state; the
gradients are cleared before the step, so they are counted in the step's peak). Scratch memory that oneDNN or BLAS
take from the system directly is not seen, for any candidate.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

from ..models.lape_vit.configuration_lape_vit import PRESETS, LapeViTConfig
from ..models.lape_vit.modeling_lape_vit import LapeViTForImageClassification

MODES = ("inference", "training")
REFERENCE = "transformers-vit"
# A second, independently built copy of the reference: how far apart two identical models measure in the same run.
CONTROL = REFERENCE + "#2"
# Settings every candidate shares, whatever the size: only the PE join differs between the LapeViT candidates.
_SHARED = dict(
    position_embedding_type="learnable",
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    drop_path_rate=0.0,
    pooler_type="cls",
    tokenizer_type="patch",
    encoder_layer_form="pre_norm",
    relative_position_bias="none",
    use_distillation_token=False,
    hidden_act="gelu",
)


@dataclass(frozen=True)
class BenchmarkSize:
    """One architecture (LapeViTConfig keyword arguments), the batch size it is measured at by default and the steps
    per round (a round should take seconds, not milliseconds, and not much more)."""

    description: str
    config: dict[str, Any]
    batch_size: int
    iterations: int


BENCHMARK_SIZES: dict[str, BenchmarkSize] = {
    "deit-tiny": BenchmarkSize(
        "DeiT-Ti: 224x224, patch 16 (197 tokens), width 192, 12 layers, 3 heads, MLP 768",
        dict(PRESETS["deit-tiny"], num_labels=1000),
        batch_size=32,
        iterations=1,
    ),
    "vit-lite-7/4": BenchmarkSize(
        "ViT-Lite-7/4: 32x32, patch 4 (65 tokens), width 256, 7 layers, 4 heads, MLP 512",
        dict(PRESETS["vit-lite-7/4"], num_labels=10),
        batch_size=128,
        iterations=2,
    ),
    "tiny": BenchmarkSize(
        "smoke-test size: 32x32, patch 8 (17 tokens), width 32, 2 layers, 2 heads, MLP 64",
        dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            layer_norm_eps=1e-6,
            qkv_bias=True,
            num_labels=10,
        ),
        batch_size=8,
        iterations=10,
    ),
}


def benchmark_config(size: str, pe_join: str = "lape") -> LapeViTConfig:
    """The LapeViT configuration of a benchmark size; the other candidates copy their shape from it."""
    if size not in BENCHMARK_SIZES:
        raise ValueError(f"Unknown benchmark size {size!r}; allowed: {', '.join(BENCHMARK_SIZES)}.")
    return LapeViTConfig(**{**BENCHMARK_SIZES[size].config, **_SHARED, "pe_join": pe_join})


# ---------------------------------------------------------------------------------------------------------------------
# The candidates: one signature (pixel_values -> logits) for all
# ---------------------------------------------------------------------------------------------------------------------
class LogitsOnly(nn.Module):
    """A transformers classifier called like timm's models: pixel values in, logits out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def build_lape_vit(config: LapeViTConfig) -> nn.Module:
    model = LapeViTForImageClassification(config)
    model.set_attn_implementation("sdpa")
    return LogitsOnly(model)


def build_transformers_vit(config: LapeViTConfig) -> nn.Module:
    """transformers' ViTForImageClassification (no pooler layer, class-token head) with sdpa attention."""
    height, width = config.image_size_2d
    vit_config = ViTConfig(
        image_size=height if height == width else [height, width],
        patch_size=config.patch_size,
        num_channels=config.num_channels,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        hidden_act=config.hidden_act,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=config.layer_norm_eps,
        qkv_bias=config.qkv_bias,
        num_labels=config.num_labels,
    )
    model = ViTForImageClassification(vit_config)
    model.set_attn_implementation("sdpa")
    return LogitsOnly(model)


def timm_available() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def build_timm_vit(config: LapeViTConfig) -> nn.Module:
    """timm's VisionTransformer (the `bench` extra) with torch's LayerNorm at the config's eps and exact GELU."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=config.image_size_2d,
        patch_size=config.patch_size,
        in_chans=config.num_channels,
        num_classes=config.num_labels,
        global_pool="token",
        embed_dim=config.hidden_size,
        depth=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        mlp_ratio=config.intermediate_size / config.hidden_size,
        qkv_bias=config.qkv_bias,
        class_token=True,
        pos_embed="learn",
        norm_layer=partial(nn.LayerNorm, eps=config.layer_norm_eps),
        act_layer=nn.GELU,
    )


@dataclass
class Candidate:
    """A model under test, its optimizer and its name in the table."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    parameters: int

    @property
    def reference_name(self) -> str:
        """The row this candidate is compared with: transformers' ViT, compiled if this candidate is."""
        return REFERENCE + ("+compile" if self.name.endswith("+compile") else "")


def build_candidates(
    size: str, compile: bool = False, include_timm: bool = True, control: bool = False
) -> list[Candidate]:
    """LapeViT with the lape and add joins, transformers' ViT and (if installed) timm's ViT; `control` adds a second
    copy of transformers' ViT (the noise floor), `compile` torch.compile'd copies of each. Every model starts from
    the same seed."""
    builders: list[tuple[str, Callable[[], nn.Module]]] = [
        ("lape-vit[lape]", lambda: build_lape_vit(benchmark_config(size, "lape"))),
        ("lape-vit[add]", lambda: build_lape_vit(benchmark_config(size, "add"))),
        (REFERENCE, lambda: build_transformers_vit(benchmark_config(size))),
    ]
    if include_timm and timm_available():
        builders.append(("timm-vit", lambda: build_timm_vit(benchmark_config(size))))
    if control:
        builders.append((CONTROL, lambda: build_transformers_vit(benchmark_config(size))))
    variants = [False, True] if compile else [False]
    candidates = []
    for compiled in variants:
        for name, build in builders:
            torch.manual_seed(0)
            model = build()
            parameters = sum(p.numel() for p in model.parameters())
            # The fused AdamW kernel is what transformers' Trainer uses by default (optim="adamw_torch_fused").
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
            if compiled:
                model, name = torch.compile(model), name + "+compile"
            candidates.append(Candidate(name, model, optimizer, parameters))
    return candidates


# ---------------------------------------------------------------------------------------------------------------------
# One step of each mode, timing and memory
# ---------------------------------------------------------------------------------------------------------------------
def inference_step(candidate: Candidate, pixel_values: torch.Tensor, labels: torch.Tensor) -> None:
    with torch.inference_mode():
        candidate.model(pixel_values)


def training_step(candidate: Candidate, pixel_values: torch.Tensor, labels: torch.Tensor) -> None:
    candidate.optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(candidate.model(pixel_values), labels)
    loss.backward()
    candidate.optimizer.step()


STEPS: dict[str, Callable[[Candidate, torch.Tensor, torch.Tensor], None]] = {
    "inference": inference_step,
    "training": training_step,
}


def interleaved_rates(
    candidates: Sequence[Candidate],
    step: Callable[[Candidate, torch.Tensor, torch.Tensor], None],
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    warmup: int,
    repeats: int,
    iterations: int,
) -> dict[str, list[float]]:
    """Images per second of each candidate in each of `repeats` rounds; a round runs every candidate for
    `iterations` steps, starting one candidate later than the previous round."""
    for candidate in candidates:
        for _ in range(warmup):
            step(candidate, pixel_values, labels)
    samples: dict[str, list[float]] = {candidate.name: [] for candidate in candidates}
    for repeat in range(repeats):
        shift = repeat % len(candidates)
        for candidate in [*candidates[shift:], *candidates[:shift]]:
            gc.collect()
            start = time.perf_counter()
            for _ in range(iterations):
                step(candidate, pixel_values, labels)
            elapsed = time.perf_counter() - start
            samples[candidate.name].append(iterations * pixel_values.shape[0] / elapsed)
    return samples


def _tensor_bytes(tensors: Sequence[torch.Tensor]) -> int:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def held_bytes(candidate: Candidate, mode: str) -> int:
    """Bytes held before a step starts: parameters, buffers and, for training, the optimizer state."""
    tensors = [*candidate.model.parameters(), *candidate.model.buffers()]
    if mode == "training":
        for state in candidate.optimizer.state.values():
            tensors += [value for value in state.values() if isinstance(value, torch.Tensor)]
    return _tensor_bytes(tensors)


def step_peak_bytes(step: Callable[[], None]) -> int:
    """The peak of the bytes allocated by `step` through PyTorch's CPU allocator and alive at the same time."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as profiler:
        step()
    with tempfile.TemporaryDirectory() as directory:
        trace = Path(directory) / "trace.json"
        profiler.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    memory_events = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    live = peak = 0
    for event in memory_events:
        live += int(event["args"]["Bytes"])
        peak = max(peak, live)
    return peak


def peak_memory_bytes(candidate: Candidate, mode: str, pixel_values: torch.Tensor, labels: torch.Tensor) -> int:
    """Peak bytes of one warmed-up step: what is held when it starts plus the peak of what it allocates."""
    candidate.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    held = held_bytes(candidate, mode)
    return held + step_peak_bytes(lambda: STEPS[mode](candidate, pixel_values, labels))


# ---------------------------------------------------------------------------------------------------------------------
# The run and its report
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class CandidateResult:
    name: str
    parameters: int
    images_per_second: dict[str, float] = field(default_factory=dict)  # median per mode
    samples: dict[str, list[float]] = field(default_factory=dict)  # images/s of every round
    peak_memory_bytes: dict[str, int] = field(default_factory=dict)
    reference: str = REFERENCE


@dataclass
class Comparison:
    """A ratio the report prints: the median of the per-round ratios (memory: the plain ratio). The figures a run is
    compared against are in the README's Performance section, not here: this is a measuring tool."""

    what: str
    ratio: float
    best_round_ratio: float | None
    per_process: list[float] = field(default_factory=list)  # the ratio within each process, when there were several


@dataclass
class BenchmarkReport:
    size: str
    description: str
    batch_size: int
    threads: int
    repeats: int
    iterations: int
    warmup: int
    modes: list[str]
    environment: dict[str, Any]
    results: list[CandidateResult]
    notes: list[str] = field(default_factory=list)
    # Rounds contributed by each process, in order, when the report combines several (see `combine_reports`).
    process_rounds: list[int] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchmarkReport:
        """The report `to_dict` wrote (its derived `comparisons` are recomputed, not read)."""
        fields = {key: value for key, value in data.items() if key != "comparisons"}
        fields["results"] = [CandidateResult(**result) for result in data["results"]]
        return cls(**fields)

    def result(self, name: str) -> CandidateResult | None:
        return next((r for r in self.results if r.name == name), None)

    def ratio(self, name: str, other: str, mode: str, metric: str = "speed") -> float | None:
        """`name`'s speed (images/s) or peak memory divided by `other`'s, or None if either was not measured.

        A speed ratio is the median over rounds of the two candidates' ratio in the same round: a slow spell of the
        machine that spans a round slows both sides of that round's ratio, where it would move only one median."""
        first, second = self.result(name), self.result(other)
        if first is None or second is None:
            return None
        if metric == "memory":
            if mode not in first.peak_memory_bytes or mode not in second.peak_memory_bytes:
                return None
            return first.peak_memory_bytes[mode] / second.peak_memory_bytes[mode]
        if mode not in first.samples or mode not in second.samples:
            return None
        return statistics.median(a / b for a, b in zip(first.samples[mode], second.samples[mode], strict=True))

    def process_ratios(self, name: str, other: str, mode: str) -> list[float]:
        """The speed ratio within each process of a combined report (empty for a single process)."""
        first, second = self.result(name), self.result(other)
        if len(self.process_rounds) < 2 or first is None or second is None:
            return []
        if mode not in first.samples or mode not in second.samples:
            return []
        ratios, start = [], 0
        for rounds in self.process_rounds:
            window = slice(start, start + rounds)
            pairs = zip(first.samples[mode][window], second.samples[mode][window], strict=True)
            ratios.append(statistics.median(a / b for a, b in pairs))
            start += rounds
        return ratios

    def best_round_ratio(self, name: str, other: str, mode: str) -> float | None:
        """`name`'s best round divided by `other`'s: interference only ever slows a round down, so the best rounds
        are the closest to an idle machine (the timeit convention)."""
        first, second = self.result(name), self.result(other)
        if first is None or second is None or mode not in first.samples or mode not in second.samples:
            return None
        return max(first.samples[mode]) / max(second.samples[mode])

    def comparisons(self) -> list[Comparison]:
        """What LaPE costs (lape against the references and the add join) and the run's noise floor (the control
        against the reference); a ratio of speeds is > 1 when the first candidate is faster."""
        rows = []
        for suffix in ("", "+compile"):
            lape, add = f"lape-vit[lape]{suffix}", f"lape-vit[add]{suffix}"
            pairs = [
                (lape, REFERENCE + suffix, "training", "speed"),
                (lape, REFERENCE + suffix, "inference", "speed"),
                (lape, "timm-vit" + suffix, "training", "speed"),
                (lape, "timm-vit" + suffix, "inference", "speed"),
                (lape, add, "training", "speed"),
                (lape, add, "inference", "speed"),
                (lape, add, "training", "memory"),
                (lape, add, "inference", "memory"),
            ]
            for first, second, mode, metric in pairs:
                value = self.ratio(first, second, mode, metric)
                if value is not None:
                    speed = metric == "speed"
                    best = self.best_round_ratio(first, second, mode) if speed else None
                    per_process = self.process_ratios(first, second, mode) if speed else []
                    what = f"{first} / {second}, {mode} {metric}"
                    rows.append(Comparison(what, value, best, per_process))
            for mode in MODES:  # two copies of one model: how far apart identical models measure
                control, reference = CONTROL + suffix, REFERENCE + suffix
                value = self.ratio(control, reference, mode)
                if value is not None:
                    best = self.best_round_ratio(control, reference, mode)
                    what = f"noise floor: {control} / {reference}, {mode} speed"
                    rows.append(Comparison(what, value, best, self.process_ratios(control, reference, mode)))
        return rows

    def format_table(self) -> str:
        """Absolute figures (images/s: median of the rounds, best round in brackets) and ratios against
        transformers' ViT, as a Markdown table."""
        lines = [
            "| model | params | inference img/s | vs HF | training img/s | vs HF | inference peak MB "
            "| training peak MB | vs HF (train mem) |",
            "|" + " --- |" * 9,
        ]

        def ratio(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f}x"

        for result in self.results:
            cells = [result.name, f"{result.parameters / 1e6:.3f}M"]
            for mode in MODES:
                if mode in result.samples:
                    median, best = result.images_per_second[mode], max(result.samples[mode])
                    cells.append(f"{median:.1f} ({best:.1f})")
                else:
                    cells.append("-")
                cells.append(ratio(self.ratio(result.name, result.reference, mode)))
            for mode in MODES:
                peak = result.peak_memory_bytes.get(mode)
                cells.append("-" if peak is None else f"{peak / 2**20:.1f}")
            cells.append(ratio(self.ratio(result.name, result.reference, "training", "memory")))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def format_comparisons(self) -> str:
        lines = []
        for row in self.comparisons():
            best = "" if row.best_round_ratio is None else f" (best rounds {row.best_round_ratio:.3f})"
            per_process = f" [per process: {', '.join(f'{r:.3f}' for r in row.per_process)}]" if row.per_process else ""
            lines.append(f"{row.what}: {row.ratio:.3f}{best}{per_process}")
        return "\n".join(lines)

    def format(self) -> str:
        environment = self.environment
        processes = f" from {len(self.process_rounds)} processes" if len(self.process_rounds) > 1 else ""
        lines = [
            f"size {self.size}: {self.description}",
            f"batch {self.batch_size}, {self.threads} threads, median of {self.repeats} interleaved rounds{processes} "
            f"of {self.iterations} step(s) after {self.warmup} warm-up step(s); load average before/after: "
            f"{environment['load_average_before']} / {environment['load_average_after']}",
            "",
            self.format_table(),
            "",
            self.format_comparisons(),
        ]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["comparisons"] = [asdict(row) for row in self.comparisons()]
        return data

    def write_json(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _environment() -> dict[str, Any]:
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    if timm_available():
        import timm

        versions["timm"] = timm.__version__
    return {
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "versions": versions,
    }


def _load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def _check_settings(modes: Sequence[str], repeats: int, iterations: int, warmup: int, compile: bool) -> None:
    """Every bad setting fails before anything is built."""
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise ValueError(f"modes={list(modes)!r} must be a non-empty selection of {MODES}.")
    for name, value, minimum in (("repeats", repeats, 1), ("iterations", iterations, 1), ("warmup", warmup, 0)):
        if value < minimum:
            raise ValueError(f"{name}={value} must be at least {minimum}.")
    if compile and warmup < 1:
        raise ValueError("compile=True needs warmup >= 1, so that compilation is not timed.")


def _measure_peak_memory(
    candidates: Sequence[Candidate],
    modes: Sequence[str],
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    results: dict[str, CandidateResult],
) -> None:
    for mode in modes:
        for candidate in candidates:
            candidate.model.train(mode == "training")
            results[candidate.name].peak_memory_bytes[mode] = peak_memory_bytes(candidate, mode, pixel_values, labels)


def run_benchmark(
    size: str = "deit-tiny",
    batch_size: int | None = None,
    threads: int | None = 2,
    repeats: int = 9,
    iterations: int | None = None,
    warmup: int = 2,
    modes: Sequence[str] = MODES,
    compile: bool = False,
    include_timm: bool = True,
    control: bool = False,
    measure_memory: bool = True,
    log: Callable[[str], None] | None = print,
) -> BenchmarkReport:
    """Build every candidate at `size`, measure the speed of each mode interleaved, then the peak memory of each.
    `control=True` adds a second copy of transformers' ViT: its ratio to the first is the run's noise floor."""
    benchmark_config(size)  # the size first: the defaults below come from it
    iterations = iterations or BENCHMARK_SIZES[size].iterations
    _check_settings(modes, repeats, iterations, warmup, compile)
    log = log or (lambda message: None)
    if threads is not None:
        torch.set_num_threads(threads)
    batch_size = batch_size or BENCHMARK_SIZES[size].batch_size
    notes = []
    if include_timm and not timm_available():
        notes.append("timm is not installed (pip install 'lape_hf[bench]'): timm's ViT was skipped.")
    load_before = _load_average()

    candidates = build_candidates(size, compile=compile, include_timm=include_timm, control=control)
    config = benchmark_config(size)
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(batch_size, config.num_channels, *config.image_size_2d, generator=generator)
    labels = torch.randint(0, config.num_labels, (batch_size,), generator=generator)
    results = {c.name: CandidateResult(c.name, c.parameters, reference=c.reference_name) for c in candidates}

    for mode in modes:
        log(f"timing {mode}: {len(candidates)} candidates x {repeats} rounds ...")
        for candidate in candidates:
            candidate.model.train(mode == "training")
        samples = interleaved_rates(candidates, STEPS[mode], pixel_values, labels, warmup, repeats, iterations)
        for name, rates in samples.items():
            results[name].samples[mode] = rates
            results[name].images_per_second[mode] = statistics.median(rates)
    if measure_memory:
        log("measuring peak memory ...")
        _measure_peak_memory(candidates, modes, pixel_values, labels, results)

    environment = {**_environment(), "load_average_before": load_before, "load_average_after": _load_average()}
    return BenchmarkReport(
        size=size,
        description=BENCHMARK_SIZES[size].description,
        batch_size=batch_size,
        threads=torch.get_num_threads(),
        repeats=repeats,
        iterations=iterations,
        warmup=warmup,
        modes=list(modes),
        environment=environment,
        results=list(results.values()),
        notes=notes,
    )


def combine_reports(reports: Sequence[BenchmarkReport]) -> BenchmarkReport:
    """One report from runs of the same benchmark in separate processes: each candidate's rounds are pooled (a
    ratio stays paired round by round, within a process) and the peak memory is the largest seen.

    Why: a process can give one candidate a lasting edge that interleaving cannot cancel (where the allocator
    happens to place its weights and activations): 7% in inference in one of our runs here, the same in every round
    of that process. Pooling the rounds of several processes keeps one lucky process from deciding a ratio, and
    `process_ratios` shows how far the processes disagreed."""
    if not reports:
        raise ValueError("combine_reports needs at least one report.")
    first = reports[0]
    settings = ("size", "batch_size", "threads", "iterations", "warmup", "modes")
    for report in reports[1:]:
        for name in settings:
            if getattr(report, name) != getattr(first, name):
                raise ValueError(
                    f"cannot combine reports with {name}={getattr(report, name)!r} and {getattr(first, name)!r}: "
                    f"combined runs must share {', '.join(settings)}."
                )
        names, first_names = [r.name for r in report.results], [r.name for r in first.results]
        if names != first_names:
            raise ValueError(f"cannot combine reports of candidates {names} and {first_names}.")
    results = []
    for index, template in enumerate(first.results):
        runs = [report.results[index] for report in reports]
        samples = {mode: [rate for run in runs for rate in run.samples.get(mode, [])] for mode in template.samples}
        peaks = {
            mode: max(run.peak_memory_bytes[mode] for run in runs if mode in run.peak_memory_bytes)
            for mode in template.peak_memory_bytes
        }
        medians = {mode: statistics.median(rates) for mode, rates in samples.items()}
        results.append(CandidateResult(template.name, template.parameters, medians, samples, peaks, template.reference))
    environment = {
        **first.environment,
        "load_average_before": first.environment.get("load_average_before"),
        "load_average_after": reports[-1].environment.get("load_average_after"),
    }
    return BenchmarkReport(
        size=first.size,
        description=first.description,
        batch_size=first.batch_size,
        threads=first.threads,
        repeats=sum(report.repeats for report in reports),
        iterations=first.iterations,
        warmup=first.warmup,
        modes=list(first.modes),
        environment=environment,
        results=results,
        notes=list(dict.fromkeys(note for report in reports for note in report.notes)),
        process_rounds=[rounds for report in reports for rounds in (report.process_rounds or [report.repeats])],
    )


__all__ = [
    "BENCHMARK_SIZES",
    "CONTROL",
    "BenchmarkReport",
    "BenchmarkSize",
    "Candidate",
    "CandidateResult",
    "Comparison",
    "benchmark_config",
    "build_candidates",
    "build_lape_vit",
    "build_timm_vit",
    "build_transformers_vit",
    "combine_reports",
    "interleaved_rates",
    "peak_memory_bytes",
    "run_benchmark",
    "step_peak_bytes",
]
