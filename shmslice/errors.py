"""The exceptions shmslice raises.

Every exception derives from :class:`ShmSliceError`; those that correspond to a
built-in category also derive from the built-in (``LockTimeout`` is a
``TimeoutError``, ``UnsafeLockTable`` a ``PermissionError``) so callers can
catch either.  All of them pickle, so they cross process boundaries intact
(for example out of a ``concurrent.futures`` worker).
"""

from __future__ import annotations

__all__ = [
    "CorruptLockTable",
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

    def __reduce__(self):  # type: ignore[override]
        return (type(self), (self.message, self.path))


class LockTimeout(ShmSliceError, TimeoutError):
    """A lock could not be granted before its timeout (or at once, for ``timeout=0``)."""


class LockTableFull(ShmSliceError):
    """The lock table has no free entry, even after reclaiming dead owners' entries."""


class CorruptLockTable(ShmSliceError):
    """The lock table failed validation (bad header, foreign file, broken index).

    ``path`` is the table file.  Removing it is safe once no process uses the data file.
    """


class DeadlockError(ShmSliceError, RuntimeError):
    """The request can never be granted: the calling thread holds a conflicting lock."""


class UnsafeLockTable(ShmSliceError, PermissionError):
    """A lock table or lock directory is a symlink, not a regular file, or owned by
    another user; shmslice refuses to use it."""

    def __init__(self, message: str, path: str | None = None) -> None:
        ShmSliceError.__init__(self, message, path)
        self.args = (message,)


class StaleDescriptor(ShmSliceError, ValueError):
    """A pickled slice no longer matches its file (replaced or shrunk since)."""
