"""Argument files: a YAML or JSON mapping of `scripts/train.py` argument names to values (the recipes in `recipes/`).

Read once, here, and turned into command-line arguments, so that a file can start a command line that later arguments
override (`scripts/train.py FILE --pe_join add`, `scripts/compare_joins.py --recipe FILE`) and both scripts parse it
with the same `HfArgumentParser` rules as a typed command line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

ARGUMENT_FILE_SUFFIXES = (".json", ".yaml", ".yml")


def is_argument_file(name: str | os.PathLike) -> bool:
    return str(name).endswith(ARGUMENT_FILE_SUFFIXES)


def read_argument_file(path: str | os.PathLike) -> dict[str, Any]:
    """The file's mapping of argument names to values (JSON by the `.json` suffix, YAML otherwise)."""
    path = Path(path)
    if not is_argument_file(path):
        raise ValueError(
            f"{str(path)!r} is not an arguments file: allowed suffixes are {', '.join(ARGUMENT_FILE_SUFFIXES)}."
        )
    if not path.is_file():
        raise ValueError(f"Arguments file {str(path)!r} does not exist.")
    text = path.read_text(encoding="utf-8")
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of argument names to values, got a {type(values).__name__}.")
    return values


def as_command_line(values: dict[str, Any]) -> list[str]:
    """`--name=value` for every entry: lists as `--name v1 v2`, mappings as JSON text (`lr_scheduler_kwargs`),
    booleans as true/false; null entries are left out (the argument's default applies)."""
    argv: list[str] = []
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, list):
            argv += [f"--{name}", *(_as_text(item) for item in value)]
        elif isinstance(value, dict):
            argv.append(f"--{name}={json.dumps(value)}")
        else:
            argv.append(f"--{name}={_as_text(value)}")
    return argv


def arguments_from_file(path: str | os.PathLike) -> list[str]:
    """The file's arguments as a command line (`read_argument_file`, then `as_command_line`)."""
    return as_command_line(read_argument_file(path))


def _as_text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
