"""The exceptions shmslice raises.

Every exception derives from :class:`ShmSliceError`; those that correspond to a
built-in category also derive from the built-in (``LockTimeout`` is a
``TimeoutError``, ``UnsafeLockTable`` a ``PermissionError``) so callers can
catch either.  All of them pickle, so they cross process boundaries intact
(for example out of a ``concurrent.futures`` worker).
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "CorruptLockTable",
    "CycleHop",
    "DeadlockError",
    "LockTableFull",
    "LockTimeout",
    "ShmSliceError",
    "StaleDescriptor",
    "UnsafeLockTable",
]


class ShmSliceError(Exception):
    """Base class of every shmslice error.

    ``path`` names the file concerned (a data file or a lock table) when known.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        if self.path is None:
            return f"{type(self).__name__}({self.message!r})"
        return f"{type(self).__name__}({self.message!r}, path={self.path!r})"

    def __reduce__(self) -> tuple[type[ShmSliceError], tuple[str, str | None]]:
        return (type(self), (self.message, self.path))


class LockTimeout(ShmSliceError, TimeoutError):
    """A lock could not be granted before its timeout (or at once, for ``timeout=0``)."""


class LockTableFull(ShmSliceError):
    """The lock table has no free entry, even after reclaiming dead owners' entries."""


class CorruptLockTable(ShmSliceError):
    """The lock table failed validation (bad header, foreign file, broken index).

    ``path`` is the table file.  Removing it is safe once no process uses the data file.
    """


class CycleHop(NamedTuple):
    """One hop of a deadlock cycle: owner ``(pid, tid)`` wants ``[start, end)``
    in ``mode`` and is held back by the lock on ``[held_start, held_end)``
    that owner ``(holder_pid, holder_tid)`` holds in ``held_mode``.  The
    holder is the next hop's owner; the last hop's holder is the first hop's
    owner.  ``tid`` is a thread id, or a negative owner id of a
    ``lock_async`` task."""

    pid: int
    tid: int
    start: int
    end: int
    mode: str
    holder_pid: int
    holder_tid: int
    held_start: int
    held_end: int
    held_mode: str


class DeadlockError(ShmSliceError, RuntimeError):
    """Waiting could never end, so the request fails at once instead.

    Either the caller (the thread, or the ``lock_async`` task) already holds a
    conflicting lock itself (``cycle`` is empty), or waiting would close a
    cycle of the wait-for graph across threads and processes: ``cycle`` lists
    its hops (:class:`CycleHop`), starting with this request.
    """

    def __init__(self, message: str, path: str | None = None,
                 cycle: tuple[CycleHop, ...] = ()) -> None:
        super().__init__(message, path)
        self.cycle = tuple(cycle)

    def __reduce__(self) -> tuple[type[DeadlockError], tuple[str, str | None, tuple[CycleHop, ...]]]:  # type: ignore[override]
        return (type(self), (self.message, self.path, self.cycle))


class UnsafeLockTable(ShmSliceError, PermissionError):
    """A lock table or lock directory is a symlink, not a regular file, or owned by
    another user; shmslice refuses to use it."""

    def __init__(self, message: str, path: str | None = None) -> None:
        ShmSliceError.__init__(self, message, path)
        self.args = (message,)


class StaleDescriptor(ShmSliceError, ValueError):
    """A pickled slice no longer matches its file (replaced or shrunk since)."""
