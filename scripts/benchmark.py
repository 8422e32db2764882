#!/usr/bin/env python3
"""Speed and memory of LapeViT (lape and add joins) side by side with transformers' ViT and timm's ViT.

    python scripts/benchmark.py                          # DeiT-Ti at 224, 2 threads, inference and training
    python scripts/benchmark.py --size vit-lite-7/4      # ViT-Lite-7/4 at 32x32
    python scripts/benchmark.py --size tiny --repeats 3  # a quick smoke run
    python scripts/benchmark.py --compile                # also torch.compile'd copies of every model
    python scripts/benchmark.py --processes 3            # three fresh processes in turn, their rounds pooled

Prints a Markdown table (absolute figures and ratios against transformers' ViT) and the LaPE cost ratios, and writes
everything, every round included, to JSON (--output_file; default outputs/benchmark/<size>.json). timm's ViT needs
the `bench` extra (pip install -e ".[bench]"); without it that row is skipped with a note. How memory is measured on
CPU and how the rounds are interleaved: see `lape_hf.tools.benchmark`. The figures a run is compared against are in
the README's Performance section.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# The profiler behind the memory figures (Kineto) prints start/stop lines for every measured step below level 6.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

from lape_hf.atomic_files import check_writable_dir  # noqa: E402
from lape_hf.cli import parse_args as parse_arguments  # noqa: E402
from lape_hf.cli import script  # noqa: E402
from lape_hf.tools.benchmark import (  # noqa: E402
    BENCHMARK_SIZES,
    MODES,
    BenchmarkReport,
    combine_reports,
    run_benchmark,
)


@dataclass
class BenchmarkArguments:
    size: str = field(default="deit-tiny", metadata={"choices": sorted(BENCHMARK_SIZES), "help": "architecture"})
    batch_size: int | None = field(default=None, metadata={"help": "images per step (default: depends on --size)"})
    threads: int = field(default=2, metadata={"help": "torch.set_num_threads"})
    repeats: int = field(default=9, metadata={"help": "interleaved rounds; figures are their median"})
    iterations: int | None = field(
        default=None, metadata={"help": "steps per candidate in a round (default: depends on --size)"}
    )
    warmup: int = field(default=2, metadata={"help": "untimed steps of each candidate before the rounds"})
    modes: list[str] = field(
        default_factory=lambda: list(MODES), metadata={"choices": MODES, "help": "what to measure"}
    )
    compile: bool = field(default=False, metadata={"help": "add torch.compile'd variants of every model"})
    timm: bool = field(
        default=True, metadata={"help": "measure timm's ViT when it is installed (--no_timm: leave out)"}
    )
    control: bool = field(
        default=False, metadata={"help": "add a second copy of transformers' ViT: the run's noise floor"}
    )
    memory: bool = field(default=True, metadata={"help": "measure peak memory (--no_memory: skip it)"})
    processes: int = field(
        default=1,
        metadata={
            "help": "run the whole benchmark in this many fresh processes, one after another, and pool their rounds"
        },
    )
    output_file: Path | None = field(
        default=None,
        metadata={"aliases": ["--output"], "help": "JSON file (default outputs/benchmark/<size>[-compile].json)"},
    )

    def __post_init__(self) -> None:
        for name in ("batch_size", "threads", "processes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name}={value} must be at least 1.")


def parse_args(argv: list[str] | None) -> BenchmarkArguments:
    return parse_arguments(BenchmarkArguments, argv, description=__doc__)


def child_arguments(args: BenchmarkArguments, output: Path) -> list[str]:
    """This script's arguments for one process of a `--processes` run: the same benchmark, its JSON to `output`."""
    child = dataclasses.replace(args, processes=1, output_file=output)
    arguments = []
    for name, value in vars(child).items():
        if isinstance(value, list):
            arguments += [f"--{name}", *map(str, value)]
        elif value is not None:
            arguments.append(f"--{name}={value}")
    return arguments


def run_in_processes(args: BenchmarkArguments) -> BenchmarkReport:
    """The benchmark in `args.processes` fresh processes, one after another (never side by side: they would share
    the cores), combined by `lape_hf.tools.benchmark.combine_reports`."""
    reports = []
    with tempfile.TemporaryDirectory() as directory:
        for index in range(args.processes):
            output = Path(directory) / f"process-{index}.json"
            print(f"\n=== process {index + 1} of {args.processes}", flush=True)
            subprocess.run([sys.executable, __file__, *child_arguments(args, output)], check=True)
            reports.append(BenchmarkReport.from_dict(json.loads(output.read_text())))
    return combine_reports(reports)


def output_path(args: BenchmarkArguments) -> Path:
    """--output_file, or outputs/benchmark/<size>[-compile].json."""
    return args.output_file or Path("outputs/benchmark") / (
        args.size.replace("/", "_") + ("-compile" if args.compile else "") + ".json"
    )


@script
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_writable_dir(output_path(args).parent)  # before minutes of measuring
    if args.processes > 1:
        try:
            report = run_in_processes(args)
        except subprocess.CalledProcessError as error:
            print(
                f"error: a benchmark process failed (exit code {error.returncode}); see its output above.",
                file=sys.stderr,
            )
            return error.returncode or 1
        print(f"\n=== combined: {args.processes} processes")
        return finish(args, report)
    report = run_benchmark(
        size=args.size,
        batch_size=args.batch_size,
        threads=args.threads,
        repeats=args.repeats,
        iterations=args.iterations,
        warmup=args.warmup,
        modes=args.modes,
        compile=args.compile,
        include_timm=args.timm,
        control=args.control,
        measure_memory=args.memory,
    )
    return finish(args, report)


def finish(args: BenchmarkArguments, report: BenchmarkReport) -> int:
    """Print the report and write its JSON."""
    print()
    print(report.format())
    output = output_path(args)
    report.write_json(output)
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
