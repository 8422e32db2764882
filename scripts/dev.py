#!/usr/bin/env python3
"""Set up a virtual environment for lape_hf and run its main jobs; needs nothing but Python 3.10+.

    python3 scripts/dev.py demo        # install, train LaPE on the bundled digits, evaluate, save, classify
    python3 scripts/dev.py test        # install with the test extra, lint, run the default test suite
    python3 scripts/dev.py test --slow # the slow end-to-end tests (multi-process training, ...)

The environment lives in `.venv` next to `pyproject.toml` (override with LAPE_HF_VENV) and is reused while
`pyproject.toml` is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("LAPE_HF_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")


def run(*command: str | Path) -> None:
    print("+", " ".join(map(str, command)), flush=True)
    subprocess.run([str(part) for part in command], cwd=ROOT, check=True)


def ensure_venv(extra: str) -> None:
    """Create the venv if needed and (re)install the project when pyproject.toml or the extra changed."""
    if not PYTHON.exists():
        venv.create(VENV, with_pip=True)
    stamp = VENV / f".lape_hf-installed-{extra or 'base'}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    target = f".[{extra}]" if extra else "."
    run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(PYTHON, "-m", "pip", "install", "--quiet", "-e", target)
    stamp.write_text(digest)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test"):
        print(__doc__)
        return 2
    job, rest = argv[0], argv[1:]
    try:
        if job == "demo":
            ensure_venv("")
            run(PYTHON, "scripts/train.py", "--demo", *rest)
        else:
            ensure_venv("test")
            if "--slow" in rest:
                rest.remove("--slow")
                run(PYTHON, "-m", "pytest", "-m", "slow", *rest)
            else:
                run(PYTHON, "-m", "ruff", "check", "src", "scripts", "tests")
                run(PYTHON, "-m", "ruff", "format", "--check", "src", "scripts", "tests")
                run(PYTHON, "-m", "pytest", *rest)
    except subprocess.CalledProcessError as error:
        return error.returncode or 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
