"""Writing output files: checked writable before the work (`check_writable_dir`), and written all at once
(`atomic_write`: a temporary file beside the target, moved into place when complete).

An interrupted or failed write (Ctrl-C, a full disk, an exception while formatting) leaves the previous file, or
none, never a half-written one; `os.replace` is atomic on one filesystem. What is moved into place gets the
permissions a plain `open()` or `mkdir` would have given it (`give_default_permissions`), not the owner-only ones of
a temporary file.
"""

from __future__ import annotations

import contextlib
import os
import stat
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
    os.chmod(f.name, stat.S_IMODE(path.stat().st_mode) if path.exists() else default_mode(directory=False))
    os.replace(f.name, path)


def default_mode(directory: bool) -> int:
    """The permission bits `open()` (0o666) or `mkdir` (0o777) gives a new file or directory under the umask."""
    umask = os.umask(0o022)  # the umask can only be read by setting it; restored at once
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def give_default_permissions(path: str | os.PathLike) -> None:
    """Give a staged file, or a staged directory and everything below it, the permissions of a new file or directory.

    `tempfile` creates owner-only files (0o600) and directories (0o700), and safetensors (0.8 and later) writes each
    weights file through such a temporary file, so a model saved or staged that way would be unreadable to anyone
    else (a serving process under another user, a shared folder) unlike the config beside it.
    """
    path = Path(path)
    if not path.is_dir():
        os.chmod(path, default_mode(directory=False))
        return
    os.chmod(path, default_mode(directory=True))
    for folder, subfolders, files in os.walk(path):
        for name in subfolders:
            os.chmod(os.path.join(folder, name), default_mode(directory=True))
        for name in files:
            os.chmod(os.path.join(folder, name), default_mode(directory=False))


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
