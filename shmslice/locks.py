"""Cross-process region locks: :class:`LockManager`, :class:`RegionLock`, :class:`LockInfo`.

A ``LockManager`` attaches to the lock table of one data file; every process
that opens the same file (by any path) shares that table.  Locks belong to the
``RegionLock`` object that took them, as with Linux OFD locks: two threads or
two lock objects in one process conflict exactly as two processes do, and
closing a file descriptor never drops a lock.
"""

from __future__ import annotations

import errno
import math
import operator
import os
import weakref
from typing import TYPE_CHECKING, NoReturn, SupportsIndex

from shmslice import _binding, aio
from shmslice._binding import (
    EXCLUSIVE,
    SHARED,
    FileTableHandle,
    ManagerBase,
    RegionLock,
    TableHandle,
    bind_lock_info,
    manager_locks,
    manager_pin,
    manager_unpin,
)
from shmslice._paths import resolve_lock_dir
from shmslice.records import LockInfo, Mode, TableStat

if TYPE_CHECKING:  # pragma: no cover
    from shmslice.mapping import MappedFile

__all__ = ["LockInfo", "LockManager", "Mode", "RegionLock", "TableStat", "TableView", "table_path_for"]

_MAX_OFFSET = 2**63 - 1
#: The largest entry ceiling a table can have (``max_entries=``).
MAX_ENTRIES_LIMIT = 2**24
_MAX_ENTRIES_ENV = "SHMSLICE_MAX_ENTRIES"


def check_max_entries(max_entries: object) -> int:
    """The entry ceiling for a table this process may create: ``max_entries``
    if given, else ``$SHMSLICE_MAX_ENTRIES``, else 0 (the core's default:
    16,777,216, or what the lock directory's filesystem has room for if less)."""
    source = "max_entries"
    if max_entries is None:
        env = os.environ.get(_MAX_ENTRIES_ENV)
        if env is None or env.strip() == "":
            return 0
        source = f"${_MAX_ENTRIES_ENV}"
        try:
            max_entries = int(env.strip().replace("_", ""), 10)
        except ValueError:
            raise ValueError(f"{source} must be a whole number of entries (1 to "
                             f"{MAX_ENTRIES_LIMIT}), got {env!r}") from None
    if isinstance(max_entries, bool) or not isinstance(max_entries, int):
        raise TypeError(f"max_entries must be an int or None, not {type(max_entries).__name__}")
    if not 1 <= max_entries <= MAX_ENTRIES_LIMIT:
        raise ValueError(f"{source} must be between 1 and {MAX_ENTRIES_LIMIT} (2**24) entries, "
                         f"got {max_entries}")
    return max_entries


def check_region(start: object, end: object) -> tuple[int, int]:
    """Validate a byte region [start, end) given by the user; returns it as ints."""
    start_i, end_i = _offset("start", start), _offset("end", end)
    if start_i < 0:
        raise ValueError(f"start must be >= 0, got {start_i}")
    if end_i <= start_i:
        raise ValueError(f"end must be greater than start, got start={start_i}, end={end_i}")
    if end_i > _MAX_OFFSET:
        raise ValueError(f"end must be at most 2**63-1, got {end_i}")
    return start_i, end_i


def _offset(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, SupportsIndex):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return operator.index(value)


# Timeouts from here on (about 292 years) do not fit the core's int64
# nanoseconds: they wait forever, as the C fast path decides too.
_FOREVER_NS = 9.2e18


def timeout_to_ns(timeout: object) -> int:
    """None -> -1 (forever); seconds >= 0 -> nanoseconds (-1, forever, for
    infinity and anything too large to count in int64 nanoseconds)."""
    if timeout is None:
        return -1
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if isinstance(timeout, int):   # (any size: never converted to a float)
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
        return -1 if timeout >= _FOREVER_NS / 1e9 else int(timeout) * 1_000_000_000
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
    if math.isinf(timeout) or timeout * 1e9 >= _FOREVER_NS:
        return -1
    return int(timeout * 1e9)


def _listing(entries: list[LockInfo], waiting: bool, orphaned: bool = False) -> list[LockInfo]:
    """``entries`` sorted by region, without waiting requests unless ``waiting``
    and without owner-died marks (kind ``"orphaned"``) unless ``orphaned``."""
    entries = [e for e in entries
               if (waiting or not e.waiting) and (orphaned or e.kind != "orphaned")]
    return sorted(entries, key=lambda info: (info.start, info.end, info.kind, info.pid))


bind_lock_info(LockInfo)   # LockManager.locks builds these in C


def table_path_for(path: str | os.PathLike[str], lock_dir: str | os.PathLike[str] | None = None) -> str:
    """Where the lock table of the data file at ``path`` lives (it may not exist yet)."""
    identity = _binding.path_identity(path)
    directory = resolve_lock_dir(lock_dir, create=False)
    return os.path.join(directory, _binding.table_name(*identity))


class TableView:
    """Read and tidy an existing lock table by its own path, without a data file.

    Used by the ``shmslice`` command.  A view takes no locks or pins; it can
    list entries, report figures and reap dead owners.
    """

    _handle: TableHandle | None = None   # stays None if __init__ fails, so __del__ is quiet

    def __init__(self, table_path: str | os.PathLike[str]) -> None:
        if not isinstance(table_path, (str, os.PathLike)):
            raise TypeError(f"table_path must be a str or os.PathLike, not {type(table_path).__name__}")
        self.table_path = os.fspath(table_path)
        self._handle = _binding.attach_table(self.table_path)

    def _open_handle(self) -> TableHandle:
        handle = self._handle
        if handle is None or handle.closed:
            raise ValueError(f"TableView of {self.table_path} is closed")
        return handle

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._handle is None or self._handle.closed

    def locks(self, *, waiting: bool = False, orphaned: bool = False) -> list[LockInfo]:
        """Every pin and lock in the table, sorted by region (as :meth:`LockManager.locks`).

        Requests still waiting are included only with ``waiting=True``; the
        owner-died marks of regions whose exclusive holder died holding them
        (kind ``"orphaned"``, ``pid`` the dead process) only with ``orphaned=True``.
        """
        return _listing(self._open_handle().snapshot(), waiting, orphaned)

    def packed_entries(self) -> _binding.PackedEntries:
        """Every entry (waiting requests included), in table order, without an object per entry.

        For tables too big for :meth:`locks` to be quick: rows are unpacked on
        demand (see :class:`shmslice._binding.PackedEntries`).
        """
        return self._open_handle().snapshot_packed()

    def stat(self) -> TableStat:
        """Table-wide figures: capacity, entries in use, waiters, attached processes."""
        return self._open_handle().stat()

    def reap(self) -> int:
        """Remove every entry of a dead process; returns how many."""
        return self._open_handle().reap()

    def remove(self, *, dry_run: bool = False) -> int | None:
        """Remove the table file if no process is attached to it (its entries, if any, are dead processes').

        Returns the bytes the table occupied, or None while a process is
        attached; with ``dry_run`` nothing is removed.  A process attaching
        meanwhile gets a new table, never the removed one.  Raises
        ``FileNotFoundError`` if another process removed it first.
        """
        if not isinstance(dry_run, bool):
            raise TypeError(f"dry_run must be a bool, not {type(dry_run).__name__}")
        return self._open_handle().remove(dry_run)

    def close(self) -> None:
        """Detach from the table.  Closing twice is harmless."""
        if self._handle is not None:
            self._handle.close()

    def __enter__(self) -> TableView:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class LockManager(ManagerBase):
    """The shared lock table of one data file.

    ``LockManager(path)`` attaches to (creating if needed) the table of the file
    at ``path``; every process that opens the same file, through any path, hard
    link or symlink, shares it.  ``lock_dir`` (or ``$SHMSLICE_DIR``) chooses where
    tables live; the default is ``/dev/shm/shmslice``.

    A process that can read but not write the data file may take shared locks
    and pins, but not exclusive locks (which would block the file's writers):
    those raise ``PermissionError``.

    A manager pickles as its path and lock directory: the copy a worker process
    unpickles attaches to the same table (its locks are its own).

    The table grows on demand up to its ceiling, fixed by whoever creates it:
    ``max_entries`` (or ``$SHMSLICE_MAX_ENTRIES``; default 16,777,216, or what
    the lock directory's filesystem has room for if less), 1 to 2**24 entries.
    An existing table keeps its own ceiling.  No process may hold more than
    the ceiling less a reserve of 1/16 of it, so others can always lock and pin.
    """

    # The manager's own attributes are slots: with them in an instance
    # __dict__, CPython (3.12 and 3.13 always, 3.11 once the dict is real)
    # does not specialize method calls on the manager, and mgr.pin(...),
    # mgr.unpin(...), mgr.lock(...) each paid a full attribute lookup.  The
    # __dict__ slot keeps other attributes possible; it is made only when one
    # is set.
    __slots__ = ("__dict__", "__weakref__", "_handle", "_owner", "path")

    path: str                  # the data file's path, as given (decoded)
    _handle: FileTableHandle   # the table and the data file; its closed/writable are ours
    _owner: weakref.ref[MappedFile] | None   # the MappedFile this manager serves, set by it

    def __init__(self, path: str | bytes | os.PathLike[str] | os.PathLike[bytes],
                 lock_dir: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None = None,
                 *, max_entries: int | None = None) -> None:
        # Re-attaching in place would swap the C handle under threads and
        # RegionLocks that still use the old one.
        if hasattr(self, "_handle"):
            raise RuntimeError("LockManager.__init__ called twice; make a new LockManager")
        if not isinstance(path, (str, bytes, os.PathLike)):
            raise TypeError(f"path must be a str, bytes or os.PathLike, not {type(path).__name__}")
        self.path = os.fsdecode(os.fspath(path))
        self._owner = None   # MappedFile sets it for the manager it makes
        ceiling = check_max_entries(max_entries)
        directory = resolve_lock_dir(lock_dir)
        writable = True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as err:
            if not isinstance(err, PermissionError) and err.errno != errno.EROFS:
                raise
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            writable = False
        self._handle = _binding.attach(directory, fd, self.path, writable=writable,
                                       max_entries=ceiling)
        self._handle.serve(self)

    # -- properties -------------------------------------------------------------
    @property
    def table_path(self) -> str:
        """Path of the shared lock table file."""
        return self._handle.table_path

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._handle.closed

    @property
    def writable(self) -> bool:
        """Whether this process opened the data file for writing (exclusive locks allowed)."""
        return self._handle.writable

    def _open_handle(self) -> FileTableHandle:
        handle = self._handle
        if handle.closed:
            raise ValueError(f"LockManager for {self.path} is closed")
        return handle

    # -- locks ------------------------------------------------------------------
    # lock() itself is ManagerBase.lock (csrc/fastpath.c; typed in
    # _fastpath.pyi): it takes a free lock in C, waits in C with the GIL
    # released when the lock is taken, and hands every other case to
    # _lock_slow below.
    #
    # The contract with fastpath.c: it calls two methods of this class by
    # name, _lock_slow(start, end, mode, timeout) -> RegionLock (every lock()
    # it does not finish itself) and _raise_status(status) (raises for a
    # negative core status).  check_manager_class() at the end of this module
    # refuses to import a LockManager without them.

    def _lock_slow(self, start: object, end: object, mode: object, timeout: object) -> RegionLock:
        """lock() for every case the C fast path does not take: validation,
        waiting (with the GIL released), errors."""
        start_i, end_i = check_region(start, end)
        kind = self._kind_of(mode)
        timeout_ns = timeout_to_ns(timeout)
        ref = self._open_handle().lock(start_i, end_i, kind, timeout_ns)
        return self._make_lock(ref, start_i, end_i, "exclusive" if kind == EXCLUSIVE else "shared")

    async def lock_async(self, start: int, end: int, mode: Mode = "exclusive",
                         timeout: float | None = None) -> RegionLock:
        """Lock bytes [start, end) from asyncio code, without blocking the event loop.

        As :meth:`lock` (``timeout``, ``LockTimeout``, ``DeadlockError``), but the
        owner is the running *task*: two tasks of one loop conflict like two
        threads, and a task that asks again for a region it holds gets
        ``DeadlockError``.  A free lock is taken at once; a request that must
        wait is served by one waiter thread per process (no thread per
        waiter).  Cancelling the task withdraws the request and leaves nothing
        in the table.  The result works with ``async with`` as well as
        ``with``; releasing is synchronous and may happen on any thread.
        """
        if type(start) is int and type(end) is int and 0 <= start < end <= _MAX_OFFSET:
            start_i, end_i = start, end        # the common case, without the protocol checks
        else:
            start_i, end_i = check_region(start, end)
        kind = self._kind_of(mode)
        timeout_ns = timeout_to_ns(timeout)
        return await aio.lock_async(self, self._open_handle(), start_i, end_i, kind, timeout_ns)

    def _raise_status(self, status: int) -> NoReturn:
        _binding.raise_status(status, self.path)

    def _kind_of(self, mode: object) -> int:
        """The core's kind for a lock mode, or the documented error."""
        if mode == "exclusive" and self._handle.writable:
            return EXCLUSIVE
        if mode == "shared":
            return SHARED
        self._mode_error(mode)

    def _mode_error(self, mode: object) -> NoReturn:
        if mode == "exclusive":
            raise PermissionError(
                f"{self.path} was opened read-only: exclusive locks would block its writers, "
                "so they need write permission on the data file; use mode='shared'")
        if isinstance(mode, str):
            raise ValueError(f"mode must be 'shared' or 'exclusive', got {mode!r}")
        raise TypeError(f"mode must be a str ('shared' or 'exclusive'), not {type(mode).__name__}")

    # -- pins (used by slices; public for code that manages regions itself) -----
    # pin(start, end) -> ref and unpin(ref) are C methods (csrc/slice.c) for
    # plain arguments; every other case comes to _pin_slow / _unpin_slow.
    # They count per reference in a C map owned by the manager ({ref: number
    # of pin() calls that returned it and were not unpinned}; a copy is
    # _pin_counts()): unpin(ref) drops a count only while one of those is
    # outstanding, never the pin a slice or buffer of the same region holds
    # (the table counts those in the same entry).
    pin = manager_pin
    unpin = manager_unpin

    def _pin_slow(self, start: int, end: int) -> int:
        """pin() for arguments that need converting or rejecting, and for errors
        (the C caller counts the reference returned)."""
        start, end = check_region(start, end)
        return self._open_handle().pin(start, end)

    def _unpin_slow(self, ref: int) -> None:
        """unpin() for what the C method does not take: a reference that is not
        an int, or a closed manager."""
        if type(ref) is not int:
            raise TypeError(f"ref must be an int from pin(), not {type(ref).__name__}")
        self._open_handle()   # ValueError if closed
        raise ValueError(f"pin {ref} is not held through this manager's pin()")

    def reaching_beyond(self, offset: int) -> LockInfo | None:
        """A live pin or lock that reaches past ``offset`` (any process), or None."""
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"offset must be an int, not {type(offset).__name__}")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        return self._open_handle().reach_beyond(min(offset, _MAX_OFFSET))

    def resize_file(self, new_size: int) -> None:
        """Set the data file's size, atomically with respect to the lock table.

        Growing is always allowed (and pre-allocated where the filesystem can).
        Shrinking raises ``BufferError`` naming the holder while any process holds
        a pin or lock reaching past ``new_size``.
        """
        if isinstance(new_size, bool) or not isinstance(new_size, int):
            raise TypeError(f"new_size must be an int, not {type(new_size).__name__}")
        if not 0 <= new_size <= _MAX_OFFSET:
            raise ValueError(f"new_size must be >= 0 and at most 2**63-1, got {new_size}")
        if not self._handle.writable:
            raise PermissionError(f"{self.path} was opened read-only; resizing needs write permission")
        self._open_handle().resize(new_size)

    def recorded_size(self) -> int:
        """The data file size as last set through shmslice (by any process)."""
        return self._open_handle().file_size()

    def size_epoch(self) -> int:
        """A counter bumped by every :meth:`resize_file`, in any process."""
        return self._open_handle().size_epoch()

    # -- inspection ---------------------------------------------------------------
    # locks(*, waiting=False) is a C method (csrc/slice.c): one snapshot, the
    # LockInfo objects built in C, sorted as entries_from sorts them; a closed
    # manager or a failed snapshot comes to _locks_slow for the exception.
    locks = manager_locks

    def _locks_slow(self, waiting: bool) -> list[LockInfo]:
        """locks() when the C method cannot answer (a closed manager, a failed snapshot)."""
        return _listing(self._open_handle().snapshot(), waiting)

    def stat(self) -> TableStat:
        """Table-wide figures: capacity, entries in use, waiters, attached processes."""
        return self._open_handle().stat()

    def reap(self) -> int:
        """Remove every entry of a dead process; returns how many were removed."""
        return self._open_handle().reap()

    # -- lifetime -----------------------------------------------------------------
    def close(self) -> None:
        """Release every lock and pin this manager holds and detach from the table.

        The manager of a :class:`~shmslice.MappedFile` (``mf.lock_manager``)
        closes with its file instead: this calls ``mf.close()``, which keeps the
        pins of buffers still exported from its slices (and the mapping) until
        the last of them dies, and detaches then.
        """
        owner = self._owner() if self._owner is not None else None
        if owner is not None and (not owner._closed or owner._closing):
            owner.close()   # detaches this manager (at once, or at its last export)
            return
        self._handle.close()

    def _detach(self) -> None:
        """Release everything and detach now (the owning file's last step)."""
        self._handle.close()

    def __enter__(self) -> LockManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._handle.closed else "open"
        return f"<shmslice.LockManager {self.path!r} {state}>"

    def __reduce__(self) -> tuple[type[LockManager], tuple[str, str]]:
        # The lock directory travels too: a copy attached to the table of
        # another directory would grant locks that conflict with ours.
        return (type(self), (self.path, os.path.dirname(self._handle.table_path)))


_binding.check_manager_class(LockManager)
