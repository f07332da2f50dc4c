"""The one module that touches the compiled code.

Two extensions: ``shmslice._core`` (cffi: the whole C core) and
``shmslice._fastpath`` (a small CPython extension for the calls made millions
of times: the uncontended ``LockManager.lock``, ``RegionLock.release``, and the
slices' pin, unpin and view export).  The fast path calls the core through the
function pointers handed to it below, so the core exists once per process.

What the rest of the package gets from here, in Python terms only (no cdata,
handle pointer or function address leaves this module):

* :func:`attach` and :func:`attach_table` return a :class:`FileTableHandle` or
  :class:`TableHandle`: one attached lock table, with one thin method per C
  call.  A handle owns its C handle (freed when the last reference to it goes,
  so a thread still inside a call keeps it valid) and, for a data file's table,
  the file's descriptor.  Its ``closed`` and ``writable`` attributes are the one
  record of that state: :meth:`FileTableHandle.serve` gives the handle to a
  manager's C fast path and :meth:`TableHandle.close` takes it back.
* the fast-path types and functions (``ManagerBase``, ``RegionLock``,
  ``ByteBufferSlice``, ``FileBase``, ``fast_pin``, ``fast_unpin``, the C
  ``LockManager.pin/unpin/locks``), which take and return Python
  objects; ``fast_pin``/``fast_unpin`` return a reference or a negative status
  (``ECLOSED`` for a closed manager) and leave raising to the caller.
* :func:`check` and :func:`raise_status`, the one place where a C status
  becomes an exception of :mod:`shmslice.errors` (or the built-in it stands
  for), carrying the core's detail message and the path concerned.

Calls from C into Python
------------------------
``ManagerBase.lock`` (C) calls two methods of its Python subclass by name:
``_lock_slow(start, end, mode, timeout)`` for every request it does not grant
itself, and ``_raise_status(status)`` to raise for a call that failed.
``_fastpath.pyi`` declares both on ``ManagerBase`` so that the type checker
holds ``LockManager`` to their signatures, and tests/test_binding.py checks
that they exist.
"""

from __future__ import annotations

import errno as _errno
import functools
import os
import struct
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, NoReturn

from shmslice import _fastpath
from shmslice._core import ffi, lib
from shmslice.errors import (
    CorruptLockTable,
    CycleHop,
    DeadlockError,
    LockTableFull,
    LockTimeout,
    ShmSliceError,
    UnsafeLockTable,
)
from shmslice.records import FileIdentity, Holder, LockInfo, TableStat

#: ss_table_stat.ceiling_source
_CEILING_SOURCES = {1: "given", 2: "default", 3: "filesystem"}

if TYPE_CHECKING:  # pragma: no cover
    from shmslice._core import _CEntryInfo, _CEntryInfoArray, _CHandle, _CUInt32Ptr, _CWait

__all__ = [
    "ECLOSED",
    "EXCLUSIVE",
    "KIND_NAMES",
    "PACKED_FIELDS",
    "SHARED",
    "STATE_WAITING",
    "ByteBufferSlice",
    "FileBase",
    "FileTableHandle",
    "ManagerBase",
    "PackedEntries",
    "RegionLock",
    "TableHandle",
    "attach",
    "attach_table",
    "bind_lock_info",
    "bind_slice_helpers",
    "check",
    "check_manager_class",
    "detail",
    "fast_pin",
    "fast_unpin",
    "ffi",
    "file_identity",
    "lib",
    "manager_locks",
    "manager_pin",
    "manager_unpin",
    "parse_table_name",
    "path_identity",
    "raise_status",
    "table_name",
]


# -- the fast path ------------------------------------------------------------------
def _address(name: str) -> int:
    return int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))


_fastpath.bind(*(_address(name) for name in (
    "ss_lock_try", "ss_lock_wait", "ss_lock_cancel", "ss_release_try", "ss_release",
    "ss_pin", "ss_unpin", "ss_upgrade_wait", "ss_downgrade", "ss_lock_owner_died")))
check_manager_class = _fastpath.check_manager_class
ManagerBase = _fastpath.ManagerBase
RegionLock = _fastpath.RegionLock
ByteBufferSlice = _fastpath.ByteBufferSlice
FileBase = _fastpath.FileBase
fast_pin = _fastpath.pin              # (manager, start, end) -> reference >= 0, or a status < 0
fast_unpin = _fastpath.unpin          # (manager, ref) -> 0, or a status < 0
manager_pin = _fastpath.manager_pin        # LockManager.pin / unpin (method descriptors)
manager_unpin = _fastpath.manager_unpin
manager_locks = _fastpath.manager_locks    # LockManager.locks (method descriptor)


def bind_slice_helpers(asarray: object, rebuild: object) -> None:
    """Hand the slice type its core entry points and its Python helpers
    (``asarray`` for typed views, ``rebuild`` for unpickling)."""
    _fastpath.bind_slices(_address("ss_pin"), _address("ss_unpin"), _address("ss_size_epoch"),
                          asarray, rebuild)


def bind_tokenizer(tokenize: object) -> None:
    """Count writes through slices in the table's write generation (``ss_note_write``) and
    hand ``ByteBufferSlice.__dask_tokenize__`` its Python helper."""
    _fastpath.bind_write_gen(_address("ss_note_write"), _address("ss_unpin_written"), tokenize)


def bind_lock_info(lock_info: type) -> None:
    """Let ``LockManager.locks`` (C) build ``lock_info`` objects straight from the snapshot."""
    _fastpath.bind_lock_info(lock_info, _address("ss_snapshot"))


# -- constants the Python layer compares with -----------------------------------------
SHARED: Final[int] = lib.SS_SHARED
EXCLUSIVE: Final[int] = lib.SS_EXCLUSIVE
ECLOSED: Final[int] = lib.SS_ECLOSED    # what a closed handle answers to every call

_KIND_NAMES: Final[dict[int, str]] = {lib.SS_SHARED: "shared", lib.SS_EXCLUSIVE: "exclusive",
                                      lib.SS_PIN: "pin", lib.SS_ORPHAN: "orphaned"}


# -- statuses to exceptions -------------------------------------------------------------
_STATUS_EXCEPTIONS: Final[dict[int, type[ShmSliceError]]] = {
    lib.SS_ETIMEDOUT: LockTimeout,
    lib.SS_EDEADLK: DeadlockError,
    lib.SS_EFULL: LockTableFull,
    lib.SS_ECORRUPT: CorruptLockTable,
    lib.SS_EUNSAFE: UnsafeLockTable,
}


def detail() -> str:
    """The calling thread's last failure detail from the C core."""
    return ffi.string(lib.ss_last_detail()).decode("utf-8", "replace")


def raise_status(status: int, path: str | None = None) -> NoReturn:
    """Raise the exception for a negative C status; ``path`` names the file concerned."""
    message = detail() or ffi.string(lib.ss_status_message(status)).decode()
    if status == lib.SS_ESYS:
        code = lib.ss_last_errno()
        raise OSError(code, f"{message}: {os.strerror(code)}", path)
    if status == lib.SS_ENOENT:
        raise FileNotFoundError(_errno.ENOENT, message, path)
    if status == lib.SS_EINVAL:
        raise ValueError(message)
    if status == lib.SS_ECLOSED:
        raise ValueError("the lock manager is closed")
    if status == lib.SS_EDEADLK:
        raise DeadlockError(message, path, last_cycle())
    exc_type = _STATUS_EXCEPTIONS.get(status, ShmSliceError)
    raise exc_type(message, path)


def last_cycle() -> tuple[CycleHop, ...]:
    """The cycle of the calling thread's last deadlock failure (empty if it was
    the caller's own conflicting lock)."""
    n = lib.ss_last_cycle(ffi.NULL, 0)   # type: ignore[arg-type]
    if n <= 0:
        return ()
    hops = ffi.new("ss_cycle_hop[]", n)
    n = min(n, lib.ss_last_cycle(hops, n))
    return tuple(CycleHop(h.pid, h.tid, h.start, h.end, _KIND_NAMES.get(h.kind, "?"),
                          h.holder_pid, h.holder_tid, h.held_start, h.held_end,
                          _KIND_NAMES.get(h.held_kind, "?"))
                 for h in (hops[i] for i in range(n)))


def check(status: int, path: str | None = None) -> int:
    """``status`` if the C call succeeded (>= 0: a reference, a count or SS_OK), else raise for it."""
    if status < 0:
        raise_status(status, path)
    return status


# -- snapshots, packed -------------------------------------------------------------------
#: Public names of the entry kinds and the state code of a waiting request, for readers
#: of :class:`PackedEntries` rows.
KIND_NAMES: Final[dict[int, str]] = dict(_KIND_NAMES)
STATE_WAITING: Final[int] = lib.SS_WAITING

_STRUCT_CODES: Final[dict[str, str]] = {"uint64_t": "Q", "int64_t": "q", "uint32_t": "I",
                                        "int32_t": "i"}
#: The fields of ss_entry_info a packed row holds, in row order.
PACKED_FIELDS: Final[tuple[str, ...]] = ("start", "end", "since_ns", "kind", "state", "count",
                                         "pid", "tid", "alive")


def _packed_struct() -> struct.Struct:
    """A struct reading the PACKED_FIELDS of one ss_entry_info (the rest skipped as padding),
    built from the layout cffi knows, so it follows any change to the C struct."""
    fields = dict(ffi.typeof("ss_entry_info").fields)
    size = ffi.sizeof("ss_entry_info")
    wanted = sorted(PACKED_FIELDS, key=lambda name: fields[name].offset)
    if wanted != list(PACKED_FIELDS):
        raise ImportError("ss_entry_info's field order no longer matches PACKED_FIELDS")
    fmt, at = "=", 0
    for name in wanted:
        f = fields[name]
        fmt += f"{f.offset - at}x" if f.offset > at else ""
        fmt += _STRUCT_CODES[f.type.cname]
        at = f.offset + ffi.sizeof(f.type)
    fmt += f"{size - at}x" if size > at else ""
    packed = struct.Struct(fmt)
    if packed.size != size:
        raise ImportError(f"packed entry struct is {packed.size} bytes, ss_entry_info {size}")
    return packed


_PACKED = _packed_struct()


def _column_words() -> tuple[int, int, int]:
    """Where start, end and since_ns sit in an ss_entry_info, in 64-bit words."""
    fields = dict(ffi.typeof("ss_entry_info").fields)
    offsets = [fields[name].offset for name in ("start", "end", "since_ns")]
    if _PACKED.size % 8 or any(o % 8 for o in offsets):
        raise ImportError("ss_entry_info's 64-bit fields are no longer 64-bit aligned")
    return offsets[0] // 8, offsets[1] // 8, offsets[2] // 8


_COLUMN_WORDS = _column_words()


class PackedEntries:
    """Every entry of one snapshot, kept as the C core copied them out.

    No Python object is made per entry until a row is asked for: a table of a
    million entries costs its 64-byte records, not a million objects.  A row is
    a tuple of ints in :data:`PACKED_FIELDS` order: ``kind`` is a key of
    :data:`KIND_NAMES`, ``state`` equals :data:`STATE_WAITING` for a waiting
    request, ``alive`` is 0 or 1, ``since_ns`` is CLOCK_REALTIME in ns.
    """

    __slots__ = ("_cdata", "_view", "count")

    def __init__(self, cdata: _CEntryInfoArray, count: int) -> None:
        self._cdata = cdata   # keeps the memory the view reads alive
        self._view = memoryview(ffi.buffer(cdata, count * _PACKED.size))
        self.count = count

    def __len__(self) -> int:
        return self.count

    def rows(self) -> Iterator[tuple[int, ...]]:
        """Every row, in table order."""
        return _PACKED.iter_unpack(self._view)

    def rows_at(self, indices: Iterable[int]) -> Iterator[tuple[int, ...]]:
        """The rows at ``indices``, in that order (each 0 <= index < count)."""
        unpack, view, size, count = _PACKED.unpack_from, self._view, _PACKED.size, self.count
        for index in indices:
            if not 0 <= index < count:
                raise IndexError(f"row {index} of {count}")
            yield unpack(view, index * size)

    def sort_by_region(self) -> None:
        """Reorder the rows, in place, by (start, end, kind name, pid, table order), in C."""
        check(lib.ss_snapshot_sort(self._cdata, self.count))

    def columns(self) -> tuple[Sequence[int], Sequence[int], Sequence[int]]:
        """The ``start``, ``end`` and ``since_ns`` of every row, as views of the packed records."""
        words = self._view.cast("B").cast("Q")
        step = _PACKED.size // 8
        start, end, since = _COLUMN_WORDS
        return words[start::step], words[end::step], words[since::step]

    def row(self, index: int) -> tuple[int, ...]:
        """Row ``index`` (0 <= index < count)."""
        if not 0 <= index < self.count:
            raise IndexError(f"row {index} of {self.count}")
        return _PACKED.unpack_from(self._view, index * _PACKED.size)


# -- handles -------------------------------------------------------------------------------
def _entry_rows(n: int) -> Any:
    return ffi.new("ss_entry_info[]", n)


def _holder_rows(n: int) -> Any:
    return ffi.new("ss_holder_info[]", n)


def _lock_info(e: _CEntryInfo, alive: bool) -> LockInfo:
    return LockInfo(e.start, e.end, _KIND_NAMES.get(e.kind, "?"), e.pid, e.count,
                    e.state == lib.SS_WAITING, alive, e.tid, e.since_ns / 1e9)


class TableHandle:
    """An attached lock table, opened by its own path for inspection (:func:`attach_table`).

    It takes no locks or pins.  Every method raises ``ValueError`` once the
    handle is closed (the C core answers SS_ECLOSED).
    """

    __slots__ = ("__weakref__", "_cdata", "_close_lock", "closed", "table_path")

    _cdata: _CHandle
    closed: bool          #: True once :meth:`close` ran
    table_path: str       #: the table file

    def __init__(self, cdata: _CHandle, table_path: str) -> None:
        self._cdata = cdata
        self._close_lock = threading.Lock()
        self.closed = False
        self.table_path = table_path

    def _filled(self, new_rows: Callable[[int], Any], fill: Callable[..., int]) -> tuple[Any, int]:
        """Call fill(handle, buf, size, count) with a buffer from new_rows(size)
        large enough for all rows (the table may grow between calls: again,
        with room to spare); returns the buffer and the row count."""
        count = ffi.new("uint32_t *")
        size = 64
        while True:
            buf = new_rows(size)
            check(fill(self._cdata, buf, size, count))
            if count[0] <= size:
                return buf, count[0]
            size = count[0] + max(64, count[0] // 16)

    def snapshot(self) -> list[LockInfo]:
        """Every entry in use (granted and waiting), in table order."""
        buf, n = self._filled(_entry_rows, lib.ss_snapshot)
        return [_lock_info(buf[i], bool(buf[i].alive)) for i in range(n)]

    def snapshot_packed(self) -> PackedEntries:
        """Every entry in use (granted and waiting), in table order, packed (see :class:`PackedEntries`)."""
        return PackedEntries(*self._filled(_entry_rows, lib.ss_snapshot))

    def stat(self) -> TableStat:
        """Table-wide figures."""
        st = ffi.new("ss_table_stat *")
        check(lib.ss_stat(self._cdata, st))
        path = ffi.new("char[]", 1100)   # the header keeps at most 1024 bytes of it
        check(lib.ss_data_path(self._cdata, path, 1100))
        return TableStat(
            table_path=os.fsdecode(ffi.string(lib.ss_table_path(self._cdata))),
            data_path=os.fsdecode(ffi.string(path)),
            format=st.format, table_bytes=st.table_bytes, capacity=st.capacity, used=st.used,
            waiting=st.waiting, proc_capacity=st.proc_capacity, procs=st.procs,
            repairs=st.repairs, file_size=st.file_size, created=st.created_ns / 1e9,
            max_capacity=st.max_capacity, max_procs=st.max_procs, reserve=st.reserve,
            ceiling_source=_CEILING_SOURCES.get(st.ceiling_source, "unknown"),
            growths=st.growths, allocated_bytes=st.allocated_bytes, holders=self.holders())

    def holders(self) -> tuple[Holder, ...]:
        """Every attached process, and every dead one still holding entries, most entries first."""
        buf, n = self._filled(_holder_rows, lib.ss_holders)
        rows = (buf[i] for i in range(n))
        found = [Holder(pid=r.pid, entries=r.entries, alive=bool(r.alive),
                        attached=r.attached_ns / 1e9) for r in rows]
        found.sort(key=lambda h: (-h.entries, h.pid))
        return tuple(found)

    def reap(self) -> int:
        """Remove every entry of a dead process; returns how many."""
        removed = ffi.new("uint32_t *")
        check(lib.ss_reap(self._cdata, removed))
        return removed[0]

    def remove(self, dry_run: bool = False) -> int | None:
        """Remove the table file if no process is attached to it.

        Returns the bytes it occupied (allocated blocks) once removed -- with
        ``dry_run``, if it would be -- or None while a process is attached.
        ``FileNotFoundError`` if another process removed it meanwhile.
        """
        freed = ffi.new("uint64_t *")
        rc = lib.ss_remove_table(self._cdata, lib.SS_REMOVE_DRY_RUN if dry_run else 0, freed)
        if rc == lib.SS_EINUSE:
            return None
        check(rc, self.table_path)
        return int(freed[0])

    def close(self) -> None:
        """Release what this handle owns and detach.  Closing twice is harmless.

        The C handle stays allocated until the last reference to this object
        goes; meanwhile every call on it answers SS_ECLOSED.
        """
        with self._close_lock:
            if self.closed:
                return
            self.closed = True
            self._detach()

    def _detach(self) -> None:
        check(lib.ss_close(self._cdata), self.table_path)


class FileTableHandle(TableHandle):
    """The lock table of one open data file (:func:`attach`): locks, pins, resizing.

    Owns the data file's descriptor ``data_fd`` (closed with the handle).
    Errors name the data file by ``path``, as its user gave it.
    """

    __slots__ = ("_served", "data_fd", "path", "writable")

    data_fd: int        #: the data file, open for reading, and for writing if ``writable``
    path: str           #: the data file's path as the user gave it
    writable: bool      #: exclusive locks and resizing allowed (the file is open for writing)

    def __init__(self, cdata: _CHandle, table_path: str, data_fd: int, path: str,
                 writable: bool) -> None:
        self.data_fd = data_fd   # first: an interrupt from here on leaves it to __del__
        super().__init__(cdata, table_path)
        self.path = path
        self.writable = writable
        self._served: weakref.ref[ManagerBase] | None = None

    def serve(self, manager: ManagerBase) -> None:
        """Give the C handle to ``manager``'s fast path (``lock``, ``fast_pin``, ...) until :meth:`close`."""
        address = int(ffi.cast("uintptr_t", self._cdata))
        manager._attach_handle(self._cdata, address, self.writable)
        self._served = weakref.ref(manager)

    def lock(self, start: int, end: int, kind: int, timeout_ns: int) -> int:
        """Lock [start, end) as ``kind`` (SHARED or EXCLUSIVE); returns the lock's reference.

        ``timeout_ns`` < 0 waits forever, 0 tries once.  The wait runs in
        resumable steps (cffi releases the GIL in each, and each sleeps at most
        50 ms): between two, the interpreter runs signal handlers; if one
        raises (``KeyboardInterrupt``), the request is withdrawn, a lock
        granted meanwhile included, else it goes on waiting with its place kept.
        """
        wait = ffi.new("ss_wait *")
        try:
            ref = lib.ss_lock_wait(self._cdata, wait, start, end, kind, timeout_ns)
            while ref == lib.SS_EWAITING:
                ref = lib.ss_lock_wait(self._cdata, wait, start, end, kind, timeout_ns)
        except BaseException:
            lib.ss_lock_cancel(self._cdata, wait)
            raise
        return check(ref, self.path)

    def upgrade(self, ref: int, timeout_ns: int) -> None:
        """Turn shared lock ``ref`` into an exclusive one in place (its reference stays).

        Waits in resumable steps as :meth:`lock` does; on any failure (an
        interrupt included) the lock stays shared.
        """
        wait = ffi.new("ss_wait *")
        try:
            rc = lib.ss_upgrade_wait(self._cdata, wait, ref, timeout_ns)
            while rc == lib.SS_EWAITING:
                rc = lib.ss_upgrade_wait(self._cdata, wait, ref, timeout_ns)
        except BaseException:
            lib.ss_lock_cancel(self._cdata, wait)
            raise
        check(rc, self.path)

    def downgrade(self, ref: int) -> None:
        """Turn exclusive lock ``ref`` into a shared one in place."""
        check(lib.ss_downgrade(self._cdata, ref), self.path)

    # -- the asyncio layer's calls (shmslice/aio.py) -----------------------------
    def try_lock_as(self, start: int, end: int, kind: int, owner: int) -> int | None:
        """Lock at once for ``owner`` (an owner id): the reference, or None if
        the region is held (or the table mutex busy); raises for errors."""
        ref = lib.ss_lock_try_as(self._cdata, start, end, kind, owner)
        if ref in (lib.SS_ETIMEDOUT, lib.SS_EAGAIN):
            return None
        return check(ref, self.path)

    @staticmethod
    def new_wait(owner: int, *, poll: bool = True) -> _CWait:
        """The state of one request of ``owner`` that a poller advances (:meth:`lock_step`)."""
        wait = ffi.new("ss_wait *")
        wait.owner = owner
        wait.poll = 1 if poll else 0
        return wait

    def lock_step(self, wait: _CWait, start: int, end: int, kind: int, timeout_ns: int) -> int | None:
        """One step of ``wait`` (never sleeps if it polls): the reference once
        granted, None while it waits; raises for every other end."""
        ref = lib.ss_lock_wait(self._cdata, wait, start, end, kind, timeout_ns)
        if ref == lib.SS_EWAITING:
            return None
        return check(ref, self.path)

    def release_ref(self, ref: int) -> None:
        """Release lock ``ref`` (one the caller owns no RegionLock for)."""
        lib.ss_release(self._cdata, ref)

    def cancel_wait(self, wait: _CWait) -> None:
        """Withdraw the request of ``wait`` (a lock granted meanwhile is released)."""
        lib.ss_lock_cancel(self._cdata, wait)

    def pin(self, start: int, end: int) -> int:
        """Add one pin on [start, end); returns its reference."""
        return check(lib.ss_pin(self._cdata, start, end), self.path)

    def unpin(self, ref: int) -> None:
        """Drop one pin; ``ValueError`` if this handle holds no pin ``ref``."""
        rc = lib.ss_unpin(self._cdata, ref)
        if rc == lib.SS_ENOTOWNER:
            raise ValueError(f"pin {ref} is not held by this process: {detail()}")
        check(rc, self.path)

    def reach_beyond(self, offset: int) -> LockInfo | None:
        """A live pin or lock of any process whose end is past ``offset``, or None."""
        who = ffi.new("ss_entry_info *")
        if check(lib.ss_reach_beyond(self._cdata, offset, who), self.path) == 0:
            return None
        return _lock_info(who, True)

    def resize(self, new_size: int) -> None:
        """Set the data file's size; ``BufferError`` naming the holder if a pin or lock is in the way."""
        who = ffi.new("ss_entry_info *")
        rc = lib.ss_resize(self._cdata, self.data_fd, new_size, who)
        if rc == lib.SS_EBUSY:
            raise BufferError(f"{self.path}: {detail()}; release it first "
                              "(see mgr.locks() or 'shmslice locks')")
        check(rc, self.path)

    def allocate_holes(self, start: int, end: int) -> int:
        """Allocate the data file's holes in [start, end) (see ``ss_allocate_holes``);
        returns the bytes allocated, ``OSError`` (ENOSPC) if the filesystem is full."""
        return check(lib.ss_allocate_holes(self.data_fd, start, end), self.path)

    def file_size(self) -> int:
        """The data file's size as last set through shmslice, by any process."""
        return check(lib.ss_file_size(self._cdata), self.path)

    def size_epoch(self) -> int:
        """The resize counter: bumped by every :meth:`resize`, in any process."""
        return check(lib.ss_size_epoch(self._cdata), self.path)

    def write_gen(self) -> int:
        """The write generation: bumped after every write through shmslice, in any process."""
        return check(lib.ss_write_gen(self._cdata), self.path)

    def note_write(self) -> int:
        """Bump the write generation (a write was made); returns the new value."""
        return check(lib.ss_note_write(self._cdata), self.path)

    def _detach(self) -> None:
        manager = self._served() if self._served is not None else None
        if manager is not None:
            manager._detach_handle()   # the fast path takes the slow path from here on
        rc = lib.ss_close(self._cdata)
        os.close(self.data_fd)
        check(rc, self.table_path)

    def __del__(self) -> None:
        # The C handle is freed by ffi.gc when its last reference goes; only the
        # descriptor is ours to close.  (A Ctrl-C inside __init__ can leave
        # `closed` unset: the descriptor is still ours then.)
        if not getattr(self, "closed", False) and hasattr(self, "data_fd"):
            self.closed = True
            os.close(self.data_fd)


# -- futex words for the asyncio waiter thread ---------------------------------------
def new_control_word() -> _CUInt32Ptr:
    """A futex word in this process's memory, for :func:`wake_word` and :func:`wait_many`."""
    return ffi.new("uint32_t *", 0)


def wake_word(word: _CUInt32Ptr) -> None:
    """Bump ``word`` and wake whoever sleeps on it."""
    lib.ss_wake_word(word)


def word_value(word: _CUInt32Ptr) -> int:
    return int(word[0])


def wait_word(wait: _CWait) -> tuple[_CUInt32Ptr | None, int, int]:
    """What a polling request said to sleep on: (futex word or None, its value,
    CLOCK_MONOTONIC ns by which to step it again)."""
    word = wait.wake_word
    missing = word == ffi.NULL   # type: ignore[comparison-overlap]
    return (None if missing else word), int(wait.wake_seen), int(wait.recall_ns)


def wait_many(words: list[_CUInt32Ptr], seen: list[int], timeout_ns: int) -> None:
    """Sleep until one of ``words`` differs from ``seen`` (or the timeout; see ss_wait_many)."""
    n = min(len(words), _WAITV_MAX)
    if len(words) > _WAITV_MAX:   # the rest are not watched: look at them again soon
        timeout_ns = min(timeout_ns, 1_000_000) if timeout_ns >= 0 else 1_000_000
    array = ffi.new("uint32_t *[]", n)
    values = ffi.new("uint32_t[]", n)
    for k in range(n):
        array[k] = words[k]
        values[k] = seen[k]
    lib.ss_wait_many(array, values, n, timeout_ns)


_WAITV_MAX: Final[int] = 128   # futex_waitv's limit (ss_wait_many)


def attach(table_dir: str, data_fd: int, path: str, *, writable: bool,
           max_entries: int = 0) -> FileTableHandle:
    """Attach to the lock table in ``table_dir`` of the data file open as ``data_fd``, creating it if needed.

    The returned handle owns ``data_fd``; if attaching fails it is closed here.
    ``path`` is the data file's path as the user gave it (for messages, and,
    made absolute, recorded in a new table).  ``max_entries`` is the entry
    ceiling of a table created here (0: the default); an existing table keeps its own.
    """
    try:
        out = ffi.new("ss_handle **")
        # (os.fsencode: file names need not be UTF-8; undecodable bytes arrive
        # as surrogate escapes and go back as the same bytes.)
        rc = lib.ss_attach(os.fsencode(table_dir), data_fd, os.fsencode(os.path.abspath(path)),
                           max_entries, 0, out)
        if rc == lib.SS_EINVAL:
            raise ValueError(f"{path}: {detail()}")
        if rc < 0:
            # (A successful core call leaves the failure's detail and errno as they are.)
            raise_status(rc, os.path.join(table_dir, table_name(*file_identity(data_fd))))
        cdata = ffi.gc(out[0], lib.ss_free)   # owned at once: an interrupt cannot leak it
        table_path = os.fsdecode(ffi.string(lib.ss_table_path(cdata)))
    except BaseException:
        os.close(data_fd)
        raise
    return FileTableHandle(cdata, table_path, data_fd, path, writable)


def attach_table(table_path: str) -> TableHandle:
    """Open the existing lock table file at ``table_path`` for inspection."""
    out = ffi.new("ss_handle **")
    check(lib.ss_attach_table(os.fsencode(table_path), out), table_path)
    return TableHandle(ffi.gc(out[0], lib.ss_free), table_path)


def table_name(dev: int, ino: int, birth: int) -> str:
    """File name of the lock table serving the data file with identity (dev, ino, birth)."""
    buf = ffi.new("char[]", lib.SS_TABLE_NAME_MAX)
    lib.ss_table_name(dev, ino, birth, buf, lib.SS_TABLE_NAME_MAX)
    return ffi.string(buf).decode()


def file_identity(fd: int) -> FileIdentity:
    """The identity of the open file ``fd``: device, inode and birth stamp.

    The birth stamp (statx birth time mixed with the inode generation, where
    the filesystem has them; 0 where it has neither) tells a file from an
    earlier, deleted one whose inode number it reuses.
    """
    dev = ffi.new("uint64_t *")
    ino = ffi.new("uint64_t *")
    birth = ffi.new("uint64_t *")
    check(lib.ss_file_identity(fd, dev, ino, birth))
    return FileIdentity(int(dev[0]), int(ino[0]), int(birth[0]))


def path_identity(path: str | os.PathLike[str]) -> FileIdentity:
    """:func:`file_identity` of the file at ``path`` (opened read-only, without blocking)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        return file_identity(fd)
    finally:
        os.close(fd)


# -- the table file's layout, as the C core describes it ---------------------

@functools.cache
def _layout() -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
    need = lib.ss_layout(ffi.NULL, 0)
    buf = ffi.new("char[]", need + 1)
    lib.ss_layout(buf, need + 1)
    fields: dict[str, tuple[int, int]] = {}
    constants: dict[str, int] = {}
    for line in ffi.string(buf).decode().splitlines():
        what, name, *numbers = line.split()
        if what == "field":
            fields[name] = (int(numbers[0]), int(numbers[1]))
        else:
            constants[name] = int(numbers[0])
    return fields, constants


def table_layout() -> dict[str, tuple[int, int]]:
    """Offset and size of every table field the tools and tests read or poke.

    Keys are ``hdr.NAME`` (offset from the start of the table file),
    ``proc.NAME`` (from the start of a process slot) and ``entry.NAME`` (from
    the start of an entry); ``hdr.mutex.__lock``, ``__owner`` and ``__kind``
    are the glibc mutex words.  Built by the C core from offsetof/sizeof, so
    it follows every layout change.
    """
    return dict(_layout()[0])


def table_constants() -> dict[str, int]:
    """The table's constants: ``magic``, ``format``, ``header_bytes`` (the
    header page), ``header_size`` (the struct), ``proc_bytes``,
    ``entry_bytes``, ``default_max_entries``, ``max_procs``, ``initial_capacity``,
    ``initial_procs``, ``entries_offset`` (offset of entry 0), ``reserve_shift``,
    ``max_capacity``, ``nil`` (the null index), ``tree_count`` and the tree
    numbers, the free/used state values, ``slot_lock_base`` and
    ``mutex_patience_s``."""
    return dict(_layout()[1])


def parse_table_name(name: str) -> FileIdentity | None:
    """The data file identity (dev, ino, birth) a lock table file name stands
    for, or None if ``name`` is not a lock table file name."""
    dev = ffi.new("uint64_t *")
    ino = ffi.new("uint64_t *")
    birth = ffi.new("uint64_t *")
    encoded = os.fsencode(name)
    if b"\0" in encoded or lib.ss_table_name_parse(encoded, dev, ino, birth) != lib.SS_OK:
        return None
    return FileIdentity(int(dev[0]), int(ino[0]), int(birth[0]))


def clean_temp_files(lock_dir: str | os.PathLike[str]) -> int:
    """Remove the temporary table files that processes killed while creating a
    table left in ``lock_dir``; returns how many were removed."""
    path = os.fsencode(lock_dir)
    if b"\0" in path:
        raise ValueError("lock_dir contains a NUL byte")
    removed = ffi.new("uint32_t *")
    rc = lib.ss_clean_temp_files(path, removed)
    if rc < 0:
        raise_status(rc, os.fspath(lock_dir))
    return int(removed[0])
