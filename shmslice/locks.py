"""Cross-process region locks: :class:`LockManager`, :class:`RegionLock`, :class:`LockInfo`.

A ``LockManager`` attaches to the lock table of one data file; every process
that opens the same file (by any path) shares that table.  Locks belong to the
``RegionLock`` object that took them, as with Linux OFD locks: two threads or
two lock objects in one process conflict exactly as two processes do, and
closing a file descriptor never drops a lock.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from typing import Literal

from shmslice import _binding
from shmslice._binding import KIND_NAMES, ManagerBase, RegionLock, ffi, lib, raise_status
from shmslice._paths import resolve_lock_dir

__all__ = ["LockManager", "RegionLock", "LockInfo", "TableStat", "TableView", "table_path_for"]

_SHARED = lib.SS_SHARED
_EXCLUSIVE = lib.SS_EXCLUSIVE
_EWAITING = lib.SS_EWAITING
_ENOTOWNER = lib.SS_ENOTOWNER
_MAX_OFFSET = 2**63 - 1

Mode = Literal["shared", "exclusive"]




def check_region(start: object, end: object) -> tuple[int, int]:
    """Validate a byte region [start, end) given by the user; returns it as ints."""
    for name, value in (("start", start), ("end", end)):
        if type(value) is not int:
            if isinstance(value, bool) or not hasattr(value, "__index__"):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    start_i, end_i = int(start.__index__()), int(end.__index__())  # type: ignore[attr-defined]
    if start_i < 0:
        raise ValueError(f"start must be >= 0, got {start_i}")
    if end_i <= start_i:
        raise ValueError(f"end must be greater than start, got start={start_i}, end={end_i}")
    if end_i > _MAX_OFFSET:
        raise ValueError(f"end must be at most 2**63-1, got {end_i}")
    return start_i, end_i


def timeout_to_ns(timeout: object) -> int:
    """None -> -1 (forever); seconds >= 0 -> nanoseconds."""
    if timeout is None:
        return -1
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
    if math.isinf(timeout):
        return -1
    return int(timeout * 1e9)


@dataclass(frozen=True, slots=True)
class LockInfo:
    """One entry of a lock table, as seen at the moment it was read."""

    start: int
    end: int
    kind: str          #: "shared", "exclusive" or "pin"
    pid: int           #: owning process (as recorded when it attached)
    count: int         #: pins: references held; locks: 1
    waiting: bool      #: True for a request still waiting to be granted
    alive: bool        #: False if the owner died and the entry awaits reaping
    tid: int           #: owning thread id (locks only, else 0)
    since: float       #: time.time() when granted (or queued)

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class TableStat:
    """Table-wide figures (see :meth:`LockManager.stat`)."""

    table_path: str
    data_path: str
    format: int
    table_bytes: int
    capacity: int
    used: int
    waiting: int
    proc_capacity: int
    procs: int
    repairs: int
    file_size: int
    created: float


def entries_from(handle: object, waiting: bool) -> list[LockInfo]:
    """Snapshot every entry of the table behind ``handle``."""
    count = ffi.new("uint32_t *")
    size = 64
    while True:
        buf = ffi.new("ss_entry_info[]", size)
        rc = lib.ss_snapshot(handle, buf, size, count)
        if rc < 0:
            raise_status(rc)
        if count[0] <= size:
            break
        size = count[0] + 64
    out = []
    for i in range(count[0]):
        e = buf[i]
        is_waiting = e.state == lib.SS_WAITING
        if is_waiting and not waiting:
            continue
        out.append(LockInfo(e.start, e.end, KIND_NAMES.get(e.kind, "?"), e.pid, e.count,
                            is_waiting, bool(e.alive), e.tid, e.since_ns / 1e9))
    out.sort(key=lambda info: (info.start, info.end, info.kind, info.pid))
    return out


def stat_from(handle: object) -> TableStat:
    """Table-wide figures of the table behind ``handle``."""
    st = ffi.new("ss_table_stat *")
    rc = lib.ss_stat(handle, st)
    if rc < 0:
        raise_status(rc)
    path = ffi.new("char[]", 1100)
    lib.ss_data_path(handle, path, 1100)
    return TableStat(
        table_path=ffi.string(lib.ss_table_path(handle)).decode(errors="replace"),
        data_path=ffi.string(path).decode(errors="replace"),
        format=st.format, table_bytes=st.table_bytes, capacity=st.capacity, used=st.used,
        waiting=st.waiting, proc_capacity=st.proc_capacity, procs=st.procs,
        repairs=st.repairs, file_size=st.file_size, created=st.created_ns / 1e9)


def reap_handle(handle: object) -> int:
    removed = ffi.new("uint32_t *")
    rc = lib.ss_reap(handle, removed)
    if rc < 0:
        raise_status(rc)
    return int(removed[0])


class _Handle:
    """Owns one C handle and the data file descriptor.

    ``ptr`` frees the C handle when the last reference to it goes (``ffi.gc``),
    so a thread still inside a call keeps it valid; :meth:`close` only
    detaches it (the C core then answers every call with SS_ECLOSED).
    """

    __slots__ = ("ptr", "data_fd", "table_path", "writable", "closed", "__weakref__")

    def __init__(self, ptr: object, data_fd: int, table_path: str, writable: bool) -> None:
        self.ptr = ptr
        self.data_fd = data_fd
        self.table_path = table_path
        self.writable = writable
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        rc = lib.ss_close(self.ptr)
        os.close(self.data_fd)
        if rc < 0:
            raise_status(rc, self.table_path)

    def __del__(self) -> None:
        # The table handle is closed by ffi.gc; only the descriptor is ours.
        if not self.closed:
            self.closed = True
            os.close(self.data_fd)


def table_path_for(path: str | os.PathLike[str], lock_dir: str | os.PathLike[str] | None = None) -> str:
    """Where the lock table of the data file at ``path`` lives (it may not exist yet)."""
    st = os.stat(path)
    directory = resolve_lock_dir(lock_dir, create=False)
    return os.path.join(directory, _binding.table_name(st.st_dev, st.st_ino))


class TableView:
    """Read and tidy an existing lock table by its own path, without a data file.

    Used by the ``shmslice`` command.  A view takes no locks or pins; it can
    list entries, report figures and reap dead owners.
    """

    def __init__(self, table_path: str | os.PathLike[str]) -> None:
        self._ptr: object | None = None   # so __del__ is quiet if __init__ fails
        if not isinstance(table_path, (str, os.PathLike)):
            raise TypeError(f"table_path must be a str or os.PathLike, not {type(table_path).__name__}")
        self.table_path = os.fspath(table_path)
        out = ffi.new("ss_handle **")
        rc = lib.ss_attach_table(self.table_path.encode(), out)
        if rc < 0:
            raise_status(rc, self.table_path)
        self._ptr = ffi.gc(out[0], lib.ss_free)

    def _handle(self) -> object:
        if self._ptr is None:
            raise ValueError(f"TableView of {self.table_path} is closed")
        return self._ptr

    def locks(self, *, waiting: bool = True) -> list[LockInfo]:
        """Every entry, waiting requests included unless ``waiting=False``."""
        return entries_from(self._handle(), waiting)

    def stat(self) -> TableStat:
        return stat_from(self._handle())

    def reap(self) -> int:
        """Remove every entry of a dead process; returns how many."""
        return reap_handle(self._handle())

    def close(self) -> None:
        if self._ptr is not None:
            ptr, self._ptr = self._ptr, None
            lib.ss_close(ptr)

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
    """

    def __init__(self, path: str | os.PathLike[str], lock_dir: str | os.PathLike[str] | None = None,
                 *, _capacity: int = 0) -> None:
        if "_h" in self.__dict__:
            # Re-attaching in place would swap the C handle under threads and
            # RegionLocks that still use the old one.
            raise RuntimeError("LockManager.__init__ called twice; make a new LockManager")
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")
        self.path = os.fspath(path)
        directory = resolve_lock_dir(lock_dir)
        writable = True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except (PermissionError, OSError) as err:
            if not isinstance(err, PermissionError) and err.errno != 30:  # EROFS
                raise
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            writable = False
        try:
            st = os.fstat(fd)
            table_path = os.path.join(directory, _binding.table_name(st.st_dev, st.st_ino))
            out = ffi.new("ss_handle **")
            rc = lib.ss_attach(directory.encode(), fd, os.path.abspath(self.path).encode(),
                               _capacity, 0, out)
            if rc < 0:
                if rc == lib.SS_EINVAL:
                    raise ValueError(f"{self.path}: {_binding.detail()}")
                raise_status(rc, table_path)
            ptr = ffi.gc(out[0], lib.ss_free)   # owned at once: an interrupt cannot leak it
        except BaseException:
            os.close(fd)
            raise
        self._h = _Handle(ptr, fd, table_path, writable)
        self._attach_handle(ptr, int(ffi.cast("uintptr_t", ptr)), writable)
        self._lock = threading.Lock()

    # -- properties -------------------------------------------------------------
    @property
    def table_path(self) -> str:
        """Path of the shared lock table file."""
        return self._h.table_path

    @property
    def closed(self) -> bool:
        return self._h.closed

    @property
    def writable(self) -> bool:
        """Whether this process opened the data file for writing (exclusive locks allowed)."""
        return self._h.writable

    def _ptr(self) -> object:
        h = self._h
        if h.closed:
            raise ValueError(f"LockManager for {self.path} is closed")
        return h.ptr

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
        start, end = check_region(start, end)
        if mode == "exclusive" and self._h.writable:
            kind = _EXCLUSIVE
        elif mode == "shared":
            kind = _SHARED
        else:
            kind = self._mode_error(mode)
        timeout_ns = timeout_to_ns(timeout)
        ptr = self._ptr()
        # Resumable steps (cffi releases the GIL in each): between two, the
        # interpreter runs signal handlers; if one raises, the request is
        # withdrawn (a lock granted meanwhile included), else it goes on
        # waiting with its place kept.
        wait = ffi.new("ss_wait *")
        try:
            ref = lib.ss_lock_wait(ptr, wait, start, end, kind, timeout_ns)
            while ref == _EWAITING:
                ref = lib.ss_lock_wait(ptr, wait, start, end, kind, timeout_ns)
        except BaseException:
            lib.ss_lock_cancel(ptr, wait)
            raise
        if ref < 0:
            raise_status(ref, self.path)
        return self._make_lock(ref, start, end, "exclusive" if kind == _EXCLUSIVE else "shared")

    def _raise_status(self, status: int) -> None:
        raise_status(status, self.path)

    def _mode_error(self, mode: object) -> int:
        if mode == "exclusive":
            raise PermissionError(
                f"{self.path} was opened read-only: exclusive locks would block its writers, "
                "so they need write permission on the data file; use mode='shared'")
        if isinstance(mode, str):
            raise ValueError(f"mode must be 'shared' or 'exclusive', got {mode!r}")
        raise TypeError(f"mode must be a str ('shared' or 'exclusive'), not {type(mode).__name__}")

    # -- pins (used by slices; public for code that manages regions itself) -----
    def pin(self, start: int, end: int) -> int:
        """Add one pin on [start, end) for this process; returns a reference for :meth:`unpin`.

        Pins conflict with no lock; they stop the file from being shrunk below ``end``.
        """
        start, end = check_region(start, end)
        ref = lib.ss_pin(self._ptr(), start, end)
        if ref < 0:
            raise_status(ref, self.path)
        return int(ref)

    def unpin(self, ref: int) -> None:
        """Drop one pin taken by :meth:`pin` (raises ``ValueError`` if not held)."""
        if type(ref) is not int:
            raise TypeError(f"ref must be an int from pin(), not {type(ref).__name__}")
        if not 0 <= ref <= _MAX_OFFSET:   # not a reference (and would overflow int64_t)
            self._ptr()
            raise ValueError(f"pin {ref} is not held by this process: not a reference from pin()")
        rc = lib.ss_unpin(self._ptr(), ref)
        if rc == _ENOTOWNER:
            raise ValueError(f"pin {ref} is not held by this process: {_binding.detail()}")
        if rc < 0:
            raise_status(rc, self.path)

    def reaching_beyond(self, offset: int) -> LockInfo | None:
        """A live pin or lock that reaches past ``offset`` (any process), or None."""
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"offset must be an int, not {type(offset).__name__}")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        who = ffi.new("ss_entry_info *")
        rc = lib.ss_reach_beyond(self._ptr(), min(offset, _MAX_OFFSET), who)
        if rc < 0:
            raise_status(rc, self.path)
        if rc == 0:
            return None
        return LockInfo(who.start, who.end, KIND_NAMES.get(who.kind, "?"), who.pid, who.count,
                        who.state == lib.SS_WAITING, True, who.tid, who.since_ns / 1e9)

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
        if not self._h.writable:
            raise PermissionError(f"{self.path} was opened read-only; resizing needs write permission")
        who = ffi.new("ss_entry_info *")
        rc = lib.ss_resize(self._ptr(), self._h.data_fd, new_size, who)
        if rc == lib.SS_EBUSY:
            raise BufferError(f"{self.path}: {_binding.detail()}; release it first "
                              "(see mgr.locks() or 'shmslice locks')")
        if rc < 0:
            raise_status(rc, self.path)

    def recorded_size(self) -> int:
        """The data file size as last set through shmslice (by any process)."""
        return int(lib.ss_file_size(self._ptr()))

    def size_epoch(self) -> int:
        """A counter bumped by every :meth:`resize_file`, in any process."""
        return int(lib.ss_size_epoch(self._ptr()))

    # -- inspection ---------------------------------------------------------------
    def locks(self, *, waiting: bool = False) -> list[LockInfo]:
        """Every pin and lock in the table, from all processes, sorted by region.

        Entries of dead processes not yet reaped are included with ``alive=False``;
        requests still waiting are included only with ``waiting=True``.
        """
        return entries_from(self._ptr(), waiting)

    def stat(self) -> TableStat:
        """Table-wide figures: capacity, entries in use, waiters, attached processes."""
        return stat_from(self._ptr())

    def reap(self) -> int:
        """Remove every entry of a dead process; returns how many were removed."""
        return reap_handle(self._ptr())

    # -- lifetime -----------------------------------------------------------------
    def close(self) -> None:
        """Release every lock and pin this manager holds and detach from the table."""
        with self._lock:
            self._detach_handle()
            self._h.close()

    def __enter__(self) -> LockManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._h.closed else "open"
        return f"<shmslice.LockManager {self.path!r} {state}>"

    def __reduce__(self):  # type: ignore[override]
        return (type(self), (self.path,))


_binding.check_manager_class(LockManager)
