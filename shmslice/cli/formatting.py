"""Text for people: byte sizes, durations, aligned tables, and escapes for what a terminal must not see."""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from typing import TextIO

__all__ = ["human_duration", "human_size", "parse_size", "plural", "printable", "render_table",
           "shorten", "terminal_columns", "terminal_lines"]

_BINARY_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def human_size(n: int) -> str:
    """``4096`` -> ``"4.0 KiB"``; below 1 KiB, whole bytes (``"512 B"``)."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in _BINARY_UNITS:
        value /= 1024
        # Compare the rounded value, so 1048575 reads "1.0 MiB", not "1024.0 KiB".
        if round(value, 1) < 1024 or unit == _BINARY_UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 10**3,
    "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
    "g": 1 << 30, "gib": 1 << 30, "gb": 10**9,
    "t": 1 << 40, "tib": 1 << 40, "tb": 10**12,
}


def parse_size(text: str) -> int:
    """Parse a byte count: ``4096``, ``64M``, ``64MiB``, ``1.5G``, ``10MB``.

    K/M/G/T and KiB/MiB/GiB/TiB are powers of 1024; KB/MB/GB/TB powers of
    1000 (as in dd and coreutils).  Raises ``ValueError`` for anything else.
    """
    match = _SIZE_RE.match(text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 4096, 64M, 1.5GiB)")
    number, unit = match.groups()
    multiplier = _SIZE_UNITS[unit.lower()]
    if "." in number:
        value = float(number) * multiplier
        if value != int(value):
            raise ValueError(f"not a whole number of bytes: {text!r}")
        return int(value)
    return int(number) * multiplier


def human_duration(seconds: float) -> str:
    """``4.2`` -> ``"4.2s"``, ``184`` -> ``"3m04s"``, ``7500`` -> ``"2h05m"``."""
    seconds = max(0.0, seconds)   # the wall clock can step back (NTP) after an entry was stamped
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def shorten(text: str, width: int) -> str:
    """Cut ``text`` to ``width`` characters, marking the cut with ``...``."""
    if width <= 0 or len(text) <= width:
        return text
    if width <= 3:
        return text[:width]
    return text[: width - 3] + "..."


def plural(n: int, word: str, many: str | None = None) -> str:
    """``plural(1, "entry", "entries")`` -> ``"1 entry"``."""
    return f"{n} {word if n == 1 else (many or word + 's')}"



# Control characters written as themselves would move the cursor, end the line or
# recolour the terminal; these are the escapes Python itself uses for them.
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_char(ch: str) -> str:
    """One non-printable character as a backslash escape (``\\n``, ``\\x1b``, ``\\u2028``)."""
    if ch in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[ch]
    code = ord(ch)
    if code < 0x80:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with every character a terminal would not simply print written as an escape.

    Covers newlines, tabs, escape sequences, C1 controls, line separators and
    invisible format characters such as bidirectional overrides
    (:meth:`str.isprintable` is false for all of them), so that one table cell
    always stays on its own line and in its own column.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else escape_char(ch) for ch in text)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
                 right: frozenset[int] = frozenset(), last_width: int | None = None) -> list[str]:
    """Align ``rows`` under ``headers``; columns in ``right`` are right-aligned.

    Every cell goes through :func:`printable` first, so that no cell can break
    the table's lines.  The last column is not padded; ``last_width`` cuts it
    (the rest of a terminal line, typically).
    """
    rows = [[printable(cell) for cell in row] for row in rows]
    if last_width is not None:
        rows = [[*row[:-1], shorten(row[-1], last_width)] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    last = len(headers) - 1

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i, cell in enumerate(cells):
            if i in right:
                parts.append(cell.rjust(widths[i]))
            elif i == last:
                parts.append(cell)
            else:
                parts.append(cell.ljust(widths[i]))
        return "  ".join(parts).rstrip()

    return [line(headers)] + [line(row) for row in rows]


def terminal_columns(stream: TextIO) -> int | None:
    """Width of the terminal behind ``stream``, or None when it is not one."""
    try:
        if not stream.isatty():
            return None
    except ValueError:   # closed stream
        return None
    return shutil.get_terminal_size((120, 24)).columns



def terminal_lines(stream: TextIO) -> int | None:
    """Height of the terminal behind ``stream``, or None when it is not one."""
    try:
        if not stream.isatty():
            return None
    except ValueError:   # closed stream
        return None
    return shutil.get_terminal_size((120, 24)).lines
