"""Lock table files as the commands find them: which table a PATH names, and the tables of a directory."""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass

from shmslice import _binding
from shmslice._paths import resolve_lock_dir
from shmslice.cli.errors import CommandError
from shmslice.locks import table_path_for
from shmslice.records import FileIdentity

__all__ = ["Target", "data_file_status", "is_table_file", "list_tables", "lock_directory",
           "no_table_message", "resolve_target", "table_footprint", "table_identity"]


def table_identity(path: str, *, check_magic: bool = False) -> FileIdentity | None:
    """The data file identity (st_dev, st_ino, birth stamp) a lock table file's name encodes.

    None when ``path`` is not named as a table is; with ``check_magic``, also
    when the file does not start with the table's magic number (or cannot be
    read).  Both the name format and the magic number come from the C core.
    """
    identity = _binding.parse_table_name(os.path.basename(path))
    if identity is None:
        return None
    if check_magic:
        magic = struct.pack("=Q", _binding.table_constants()["magic"])
        try:
            with open(path, "rb") as f:
                if f.read(len(magic)) != magic:
                    return None
        except OSError:
            return None
    return identity


@dataclass(frozen=True)
class Target:
    """The table a command works on, and how the user named it."""

    given: str               #: PATH as given on the command line
    data_path: str | None    #: the data file, or None when PATH is a table file itself
    table_path: str          #: where its table lives (it may not exist yet)


def is_table_file(path: str) -> bool:
    """Whether ``path`` is a lock table file (by its name and magic number).

    An unreadable file counts as a data file; the caller reports its own error.
    """
    return table_identity(path, check_magic=True) is not None


def resolve_target(path: str, lock_dir: str | None) -> Target:
    """Find the table for PATH: a data file, or a table file as ``shmslice ls`` lists it.

    Accepting table files lets users inspect and reap tables whose data file
    was deleted or renamed.  Raises :class:`CommandError` for a missing PATH.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CommandError(f"{path}: no such file") from None
    if stat.S_ISDIR(st.st_mode):
        raise CommandError(f"{path}: is a directory, not a data file")
    if not stat.S_ISREG(st.st_mode):
        # shmslice maps regular files only; and opening a FIFO to read a magic number would hang.
        raise CommandError(f"{path}: not a regular file")
    if is_table_file(path):
        return Target(path, None, os.path.abspath(path))
    return Target(path, path, table_path_for(path, lock_dir))


def no_table_message(target: Target) -> str:
    """The error for a command that needs a table where there is none."""
    return (f"no lock table for {target.given}: no process has opened it through shmslice "
            f"(looked for {target.table_path})")


def data_file_status(table_path: str, data_path: str) -> str:
    """``"ok"`` if ``data_path`` still names the table's file, else ``"missing"`` or ``"replaced"``.

    The path is the one recorded when the table was created, so a rename or a
    delete makes it stale; the table's name holds the identity to check.
    """
    identity = table_identity(table_path)
    try:
        if not stat.S_ISREG(os.stat(data_path).st_mode):
            return "replaced"
        current = _binding.path_identity(data_path)
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "unknown"
    if identity is None or current == identity:
        return "ok"
    return "replaced"   # the path now names another file


def lock_directory(lock_dir: str | None) -> str:
    """The lock directory to read (never created: reading needs none)."""
    return resolve_lock_dir(lock_dir, create=False)


def list_tables(directory: str) -> list[str]:
    """Paths of every table file in ``directory`` (none if it does not exist)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return [os.path.join(directory, n) for n in sorted(names) if table_identity(n) is not None]


def table_footprint(table_path: str) -> tuple[int, int] | None:
    """``(apparent, allocated)`` bytes of a table file, or None if it is gone.

    ``allocated`` (``st_blocks``) is what the table costs: on tmpfs, memory.
    """
    try:
        st = os.stat(table_path)
    except FileNotFoundError:
        return None
    return st.st_size, st.st_blocks * 512
