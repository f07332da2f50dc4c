"""How the command reports failures: one line on stderr, and the error the commands raise for them."""

from __future__ import annotations

import sys

from shmslice.cli.formatting import printable
from shmslice.errors import CorruptLockTable, ShmSliceError

__all__ = ["PROG", "CommandError", "describe_error", "error_line"]

PROG = "shmslice"


class CommandError(Exception):
    """A runtime failure, reported as one line on stderr with exit status 1."""


def describe_error(err: BaseException) -> str:
    """One line for a runtime error."""
    if isinstance(err, CorruptLockTable):
        return f"{err} (the table can be removed once no process uses its data file)"
    if isinstance(err, ShmSliceError):
        return str(err)
    if isinstance(err, OSError):
        text = err.strerror or str(err)
        if err.filename and str(err.filename) not in text:
            text = f"{err.filename}: {text}"
        return text
    return str(err)


def error_line(command: str | None, message: str) -> None:
    """Print ``message`` as the one stderr line of a failed ``shmslice COMMAND``."""
    prefix = f"{PROG} {command}" if command else PROG
    # One line, whatever the message holds (a path may contain a newline).
    print(f"{prefix}: error: {printable(' '.join(message.split()))}", file=sys.stderr)
