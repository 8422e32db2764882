"""The convention every script in `scripts/` follows, written once.

- Arguments are dataclasses parsed by transformers' `HfArgumentParser` (underscore names; it also accepts each name with
  hyphens, and a field's `aliases` metadata keeps an older spelling working).
- A user error (a bad value, a missing or unwritable path: the types in `USER_ERRORS`) prints one line,
  `error: <message>`, on stderr and the script exits with status 2. Anything else is a bug and keeps its traceback
  (exit status 1). Ctrl-C prints one line and exits with status 130. Set `LAPE_HF_TRACEBACK=1` to see the traceback
  of a user error too.

    @script
    def main(argv: list[str] | None = None) -> int:
        args = parse_args(PredictArguments, argv, description=__doc__)
        ...

    if __name__ == "__main__":
        sys.exit(main())
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar, get_origin, get_type_hints

from transformers import HfArgumentParser

T = TypeVar("T")


class UserError(ValueError):
    """A mistake the person running a script can fix (a ValueError, as the library's own checks raise)."""


# The library's checks raise ValueError subclasses that name the bad value and what is allowed (configuration fields,
# presets, conversion, model directories, card sources, results files); the OSError subclasses below are what opening
# or creating a path the user gave raises, and what `datasets` raises for a Hub dataset it cannot reach (offline, or a
# name that does not exist). Any other exception is a bug.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    ConnectionError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def one_line(message: object) -> str:
    """`message` on one line (a multi-line message keeps its lines, joined by '; ')."""
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip())


def script(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a script's `main` so that user errors and Ctrl-C end it with one line on stderr (see the module doc)."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            return main(*args, **kwargs)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except USER_ERRORS as error:
            if os.environ.get("LAPE_HF_TRACEBACK"):
                raise
            print(f"error: {one_line(error)}", file=sys.stderr)
            return 2

    return wrapper


def parse_args(
    arguments_class: type[T], argv: list[str] | None, *, description: str | None, positional: str | None = None
) -> T:
    """Parse `argv` into `arguments_class` with `HfArgumentParser`.

    A `ValueError` from the class's own checks (`__post_init__`) is reported like any bad flag: usage line, error
    line, exit status 2. `positional` names a field that may also be given without its flag, as the script's first
    argument(s) (the spelling older command lines use); the field then must be given one way or the other, not both.
    """
    parser = HfArgumentParser(
        arguments_class, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if positional is not None:
        many = get_origin(get_type_hints(arguments_class)[positional]) is list
        parser.add_argument(
            "_positional", nargs="*" if many else "?", metavar=positional.upper(), help=f"the same as --{positional}"
        )
    namespace = vars(parser.parse_args(argv))
    if positional is not None:
        given = namespace.pop("_positional")
        if given and namespace[positional]:
            parser.error(f"give {positional} once: as --{positional} or as the first argument, not both.")
        namespace[positional] = given or namespace[positional]
        if not namespace[positional]:
            parser.error(f"the following argument is required: --{positional}")
    fields = {field.name for field in dataclasses.fields(arguments_class) if field.init}
    try:
        return arguments_class(**{name: value for name, value in namespace.items() if name in fields})
    except ValueError as error:  # a value the class's checks refuse: reported as argparse reports a bad flag
        parser.error(one_line(error))
