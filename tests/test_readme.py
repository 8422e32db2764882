"""The README's usage example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(section: str) -> list[str]:
    text = README.read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.DOTALL)


def test_usage_example_runs_as_written(capsys):
    (example,) = python_blocks("Use")
    exec(compile(example, "README.md#use", "exec"), {})
    assert capsys.readouterr().out.strip().splitlines()[-1] == "7"
