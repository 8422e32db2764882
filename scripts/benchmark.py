#!/usr/bin/env python3
"""Speed and memory of LapeViT (lape and add joins) side by side with transformers' ViT and timm's ViT.

    python scripts/benchmark.py                          # DeiT-Ti at 224, 2 threads, inference and training
    python scripts/benchmark.py --size vit-lite-7/4      # ViT-Lite-7/4 at 32x32
    python scripts/benchmark.py --size tiny --repeats 3  # a quick smoke run
    python scripts/benchmark.py --compile                # also torch.compile'd copies of every model
    python scripts/benchmark.py --processes 3            # three fresh processes in turn, their rounds pooled

Prints a Markdown table (absolute figures and ratios against transformers' ViT) and the LaPE cost ratios, and writes
everything, every round included, to JSON (default outputs/benchmark/<size>.json). timm's ViT needs the `bench`
extra (pip install -e ".[bench]"); without it that row is skipped with a note. How memory is measured on CPU and
how the rounds are interleaved: see `lape_hf.tools.benchmark`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# The profiler behind the memory figures (Kineto) prints start/stop lines for every measured step below level 6.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

from lape_hf.tools.benchmark import (  # noqa: E402
    BENCHMARK_SIZES,
    MODES,
    BenchmarkReport,
    combine_reports,
    run_benchmark,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(BENCHMARK_SIZES), default="deit-tiny", help="architecture")
    parser.add_argument("--batch-size", type=int, help="images per step (default: depends on --size)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--repeats", type=int, default=9, help="interleaved rounds; figures are their median")
    parser.add_argument("--iterations", type=int, help="steps per candidate in a round (default: depends on --size)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each candidate before the rounds")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="what to measure")
    parser.add_argument("--compile", action="store_true", help="add torch.compile'd variants of every model")
    parser.add_argument("--no-timm", action="store_true", help="leave timm's ViT out even if it is installed")
    parser.add_argument(
        "--control", action="store_true", help="add a second copy of transformers' ViT: the run's noise floor"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak memory measurement")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="run the whole benchmark in this many fresh processes, one after another, and pool their rounds",
    )
    parser.add_argument("--output", type=Path, help="JSON file (default outputs/benchmark/<size>[-compile].json)")
    args = parser.parse_args(argv)
    for name in ("batch_size", "threads", "processes"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')}={value} must be at least 1.")
    return args


def child_arguments(args: argparse.Namespace, output: Path) -> list[str]:
    """This script's arguments for one process of a `--processes` run: the same benchmark, its JSON to `output`."""
    arguments = ["--size", args.size, "--threads", str(args.threads), "--repeats", str(args.repeats)]
    arguments += ["--warmup", str(args.warmup), "--modes", *args.modes, "--output", str(output)]
    for name in ("batch_size", "iterations"):
        if getattr(args, name) is not None:
            arguments += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    for name in ("compile", "no_timm", "control", "no_memory"):
        if getattr(args, name):
            arguments.append(f"--{name.replace('_', '-')}")
    return arguments


def run_in_processes(args: argparse.Namespace) -> BenchmarkReport:
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
    try:
        report = run_benchmark(
            size=args.size,
            batch_size=args.batch_size,
            threads=args.threads,
            repeats=args.repeats,
            iterations=args.iterations,
            warmup=args.warmup,
            modes=args.modes,
            compile=args.compile,
            include_timm=not args.no_timm,
            control=args.control,
            measure_memory=not args.no_memory,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return finish(args, report)


def finish(args: argparse.Namespace, report: BenchmarkReport) -> int:
    """Print the report and write its JSON."""
    print()
    print(report.format())
    output = args.output or Path("outputs/benchmark") / (
        args.size.replace("/", "_") + ("-compile" if args.compile else "") + ".json"
    )
    report.write_json(output)
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
