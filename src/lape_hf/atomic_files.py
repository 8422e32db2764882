"""Writing output files: checked writable before the work (`check_writable_dir`), and written all at once
(`atomic_write`: a temporary file beside the target, moved into place when complete).

An interrupted or failed write (Ctrl-C, a full disk, an exception while formatting) leaves the previous file, or
none, never a half-written one; `os.replace` is atomic on one filesystem. What is moved into place gets the
permissions a plain `open()` or `mkdir` would have given it (`give_default_permissions`), or those of the file or
directory it replaces, not the owner-only ones of a temporary file.
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
    """Open a temporary file in `path`'s folder (created if needed) for writing; on a clean exit it replaces `path`
    (keeping a replaced file's permissions), otherwise it is removed. `mode` is "w" (text; `encoding`/`newline` may
    be given) or "wb"."""
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
    try:
        try:
            permissions = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            permissions = 0o666 & ~current_umask()
        os.chmod(f.name, permissions)
        os.replace(f.name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f.name)
        raise


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (/proc/self/status); elsewhere it can only be
    read by setting it, which for an instant applies to every thread."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    umask = os.umask(0o077)  # the strictest value, while it is briefly set
    os.umask(umask)
    return umask


def give_default_permissions(path: str | os.PathLike, mode: int | None = None) -> None:
    """Give a staged directory and everything below it (symbolic links left alone) the permissions of a new file or
    directory under the umask; `mode`, when given, is the top directory's own (that of the directory it replaces).

    `tempfile` creates owner-only files (0o600) and directories (0o700), and safetensors (0.8 and later) writes each
    weights file through such a temporary file, so a model saved or staged that way would be unreadable to anyone
    else (a serving process under another user, a shared folder) unlike the config beside it.
    """
    umask = current_umask()
    file_mode, directory_mode = 0o666 & ~umask, 0o777 & ~umask
    os.chmod(path, directory_mode if mode is None else mode)
    for folder, subfolders, files in os.walk(path):
        for name, permissions in [*((s, directory_mode) for s in subfolders), *((f, file_mode) for f in files)]:
            entry = os.path.join(folder, name)
            if not os.path.islink(entry):
                os.chmod(entry, permissions)


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
