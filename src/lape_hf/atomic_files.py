"""Writing a file all at once: a temporary file beside it, moved into place when complete.

An interrupted or failed write (Ctrl-C, a full disk, an exception while formatting) leaves the previous file, or
none, never a half-written one; `os.replace` is atomic on one filesystem.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file in `path`'s folder for writing; on a clean exit it replaces `path`, otherwise it is
    removed. `mode` is "w" (text; `encoding`/`newline` may be given) or "wb"."""
    path = Path(path)
    if mode == "w":
        open_kwargs.setdefault("encoding", "utf-8")
    with tempfile.NamedTemporaryFile(mode, dir=path.parent, prefix=f".{path.name}.", delete=False, **open_kwargs) as f:
        try:
            yield f
        except BaseException:
            f.close()
            os.unlink(f.name)
            raise
    os.replace(f.name, path)
