"""Writing output files: checked writable before the work (`check_writable_dir`), and written all at once
(`atomic_write`: a temporary file beside the target, moved into place when complete).

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
    """Open a temporary file in `path`'s folder (created if needed) for writing; on a clean exit it replaces `path`,
    otherwise it is removed. `mode` is "w" (text; `encoding`/`newline` may be given) or "wb"."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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


def check_writable_dir(directory: str | Path) -> Path:
    """Fail, naming it, when `directory` cannot be created or written to; leaves nothing behind (the folders it
    creates to try are removed again). Called before any computation, so that a bad place fails at once."""
    directory = Path(directory)
    missing = [folder for folder in (directory, *directory.parents) if not folder.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise PermissionError(f"cannot write to the output directory {str(directory)!r}: {error.strerror}.") from None
    finally:
        for folder in missing:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
    return directory
