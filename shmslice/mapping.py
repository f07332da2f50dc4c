"""Memory-mapped files: :func:`open` and :class:`MappedFile`.

A ``MappedFile`` maps one data file and owns one :class:`~shmslice.LockManager`
for it, so every slice and exported view it makes is counted (pinned) in the
lock table that all processes share for that file.

Staying clear of SIGBUS
-----------------------
Touching a mapped page past the end of a file that was truncated kills the
process with SIGBUS, which Python cannot catch.  shmslice avoids it with three
rules:

* memory is only touched through a region that is pinned, and a pin stops every
  process from shrinking the file below the region's end (``ss_resize`` checks
  pins under the table mutex before it truncates);
* every resize through shmslice bumps a counter in the shared table header
  (``size_epoch``).  A new slice is pinned first and the counter read second:
  if it moved since this process last looked at the file's size, the mapping
  is refreshed (remapped at the new size) and the bounds re-clamped before
  anything is returned.  Once a slice is returned its region exists and stays.

* a writable mapping never covers a hole: writing into a sparse file's hole
  allocates a block at page-fault time, and on a full filesystem (a small
  tmpfs, a full disk) that fault is SIGBUS.  So a writable ``MappedFile``
  allocates every hole before it maps a range (``ss_allocate_holes``: at open,
  and when the file grew behind shmslice's back before a remap), and growth
  through shmslice is pre-allocated; a full filesystem is then an
  ``OSError(ENOSPC)`` from ``open`` (or from the call that remapped), never a
  signal.  ``open(..., allocate=False)`` opts out.

Truncating the file *without* shmslice (``truncate -s``, ``open(path, 'w')``)
bypasses the table and cannot be guarded against; nor can punching holes
into it behind shmslice's back.

Remapping never moves memory that slices still use: a new ``mmap`` is made and
the old one stays mapped until the last slice or buffer made from it dies.

Closing
-------
``close()`` with buffers still exported (a numpy array made from a slice, a
memoryview) does not raise: the file stops handing out slices and releases
its slices' pins at once, while the mapping and the buffers' own pins live on
until the last buffer dies; then it unmaps and detaches (``_finish_close``,
called from the C type).  ``close(strict=True)`` keeps ``mmap``'s rule and
raises ``BufferError`` instead.
"""

from __future__ import annotations

import builtins
import functools
import mmap
import os
import stat
import weakref
from typing import TYPE_CHECKING, Any, Literal

from shmslice._binding import FileBase, file_identity
from shmslice.errors import StaleDescriptor
from shmslice.locks import LockInfo, LockManager, RegionLock, check_max_entries
from shmslice.slices import ByteBufferSlice

if TYPE_CHECKING:  # pragma: no cover
    from shmslice._binding import FileTableHandle

__all__ = ["MappedFile", "open"]


OpenMode = Literal["r", "r+", "w+"]
_MODES = ("r", "r+", "w+")
_MAX_SIZE = 2**63 - 1


def open(path: str | os.PathLike[str], mode: OpenMode = "r", *, size: int | None = None,
         lock_dir: str | os.PathLike[str] | None = None, allocate: bool = True,
         max_entries: int | None = None) -> MappedFile:
    """Map the file at ``path`` and return a :class:`MappedFile`.

    ``mode``:
      * ``"r"``  read-only; the file must exist and not be empty;
      * ``"r+"`` read-write; the file must exist and not be empty;
      * ``"w+"`` read-write; create the file, or truncate an existing one, to
        ``size`` bytes (``size`` > 0 is required, and only allowed, here).

    ``lock_dir`` (or ``$SHMSLICE_DIR``) chooses where the shared lock table
    lives; every process that maps the file must use the same one.

    ``allocate`` (writable modes): allocate the file's holes (a sparse file's
    unwritten ranges) now, so that a full filesystem is an
    ``OSError(ENOSPC)`` here rather than SIGBUS at the first write into a
    hole.  ``allocate=False`` keeps a sparse file sparse, at that risk.
    ``max_entries`` (or ``$SHMSLICE_MAX_ENTRIES``) is the entry ceiling of the
    lock table if this call creates it (see :class:`LockManager`); each live
    slice holds one entry.
    """
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")
    if not isinstance(mode, str):
        raise TypeError(f"mode must be a str ('r', 'r+' or 'w+'), not {type(mode).__name__}")
    if mode not in _MODES:
        raise ValueError(f"mode must be 'r', 'r+' or 'w+', got {mode!r}")
    if mode == "w+":
        if size is None:
            raise ValueError("mode 'w+' needs size=<bytes> (> 0): the file is created or "
                             "truncated to that size")
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"size must be an int, not {type(size).__name__}")
        if not 0 < size <= _MAX_SIZE:
            raise ValueError(f"size must be > 0 (and at most 2**63-1), got {size}")
    elif size is not None:
        raise ValueError(f"size= is only for mode 'w+' (creating or truncating); with mode "
                         f"{mode!r} the file keeps its size (use mf.resize(n) to change it)")
    if not isinstance(allocate, bool):
        raise TypeError(f"allocate must be a bool, not {type(allocate).__name__}")
    check_max_entries(max_entries)   # a bad value fails before the file is touched
    return MappedFile._open(os.fsdecode(os.fspath(path)), mode, size, lock_dir, allocate, max_entries)


def _open_checked(path: str, mode: str) -> tuple[int, os.stat_result]:
    """Open ``path`` as ``mode`` asks, raising the matching OSError (with the path) if it cannot be."""
    flags = os.O_CLOEXEC | os.O_NONBLOCK   # O_NONBLOCK: a FIFO must not hang us; no effect on files
    if mode == "r":
        flags |= os.O_RDONLY
    else:
        flags |= os.O_RDWR
    if mode == "w+":
        flags |= os.O_CREAT
    fd = os.open(path, flags, 0o666)   # FileNotFoundError, PermissionError, IsADirectoryError
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "Is a directory: cannot map a directory", path)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"cannot map {path}: not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


class MappedFile(FileBase):
    """One data file mapped into this process, with its shared lock table.

    Made by :func:`shmslice.open`.  ``mf[i]`` reads a byte, ``mf[a:b]`` (or
    ``mf.slice(a, b)``) makes a zero-copy :class:`~shmslice.ByteBufferSlice`,
    ``mf[a:b] = data`` writes, ``mf.ndarray(dtype, shape)`` is a typed numpy
    view.  ``close()`` (or the end of a ``with`` block) releases every pin its
    slices hold; if buffers exported from them (memoryviews, numpy arrays) are
    still alive, the mapping and their pins stay until the last one dies.
    """

    # _path, _size, _epoch, _readonly, _closed, _mgr and the slicing itself
    # live in the C base (csrc/slice.c).
    __slots__ = ("_abspath", "_allocate", "_handle", "_identity", "_lock_dir", "_maps", "_mode")

    _abspath: str
    _mode: str
    _handle: FileTableHandle   # _mgr's table handle: its `closed` is this file's too
    _identity: tuple[int, int, int]   # (dev, ino, birth) of the file mapped
    _lock_dir: str
    _maps: list[weakref.ref[mmap.mmap]]
    _allocate: bool   # allocate holes before mapping them writable (see open())

    def __init__(self) -> None:
        raise TypeError("use shmslice.open(path, mode) to map a file")

    @classmethod
    def _open(cls, path: str, mode: str, size: int | None,
              lock_dir: str | os.PathLike[str] | None, allocate: bool = True,
              max_entries: int | None = None) -> MappedFile:
        fd, st = _open_checked(path, mode)
        try:
            mgr = LockManager(path, lock_dir, max_entries=max_entries)
            try:
                # LockManager opened the path again: make sure it is the same file
                # (the path could have been replaced in between).
                mst = os.fstat(mgr._handle.data_fd)
                if (mst.st_dev, mst.st_ino) != (st.st_dev, st.st_ino):
                    raise OSError(f"{path} was replaced while it was being opened; try again")
                if mode != "r" and not mgr.writable:
                    raise PermissionError(13, "Permission denied: cannot open for writing", path)
            except BaseException:
                mgr.close()
                raise
        finally:
            os.close(fd)   # the LockManager's descriptor serves from here on
        self = FileBase.__new__(cls)
        self._path = path
        self._abspath = os.path.abspath(path)
        self._mode = mode
        self._readonly = mode == "r"
        self._mgr = mgr
        mgr._owner = weakref.ref(self)   # mgr.close() closes this file (see LockManager.close)
        self._handle = mgr._handle
        self._identity = tuple(file_identity(self._handle.data_fd))  # type: ignore[assignment]
        self._lock_dir = os.path.dirname(mgr.table_path)
        self._desc = (self._abspath, self._identity, host_origin(), not self._readonly,
                      self._lock_dir)
        self._size = 0
        self._epoch = -1
        self._maps = []
        self._allocate = allocate and mode != "r"
        try:
            if mode == "w+":
                if os.fstat(self._handle.data_fd).st_size > 0:
                    mgr.resize_file(0)   # truncate: BufferError if anyone still uses it
                mgr.resize_file(size)    # type: ignore[arg-type]  # grow (pre-allocated)
            self._refresh()
            if self._size == 0:
                raise ValueError(f"cannot map {path}: the file is empty; create it with "
                                 "shmslice.open(path, 'w+', size=n) or grow it first")
        except BaseException:
            self._closed = True
            self._set_mapping(None)
            mgr.close()
            raise
        _user_files[self._key()] = self
        return self

    # -- size and mapping -----------------------------------------------------------
    def _refresh(self) -> None:
        """Bring the mapping up to date with the file size if anyone resized it since."""
        h = self._handle
        if self._closed or h.closed:
            raise ValueError(f"I/O operation on closed MappedFile {self._path}")
        epoch = h.size_epoch()
        if epoch == self._epoch:
            return
        while True:
            # The epoch is bumped after the truncate, under the table mutex: a size
            # read between two equal epochs is the size of that epoch.
            size = os.fstat(h.data_fd).st_size
            again = h.size_epoch()
            if again == epoch:
                break
            epoch = again
        if size != self._size or (self._mmap is None and size > 0):
            self._remap(size)
        self._epoch = epoch

    def _remap(self, size: int) -> None:
        if size == 0:
            self._set_mapping(None)
        else:
            # MAP_SHARED either way (never ACCESS_COPY): slices drop released pages
            # with MADV_DONTNEED, which on a private mapping would discard writes.
            access = mmap.ACCESS_READ if self._readonly else mmap.ACCESS_WRITE
            if self._allocate and size > self._size:
                # Holes here (a sparse file, or one grown by another program) would be
                # allocated at page-fault time by a write: on a full filesystem, SIGBUS.
                self._handle.allocate_holes(self._size, size)
            mm = mmap.mmap(self._handle.data_fd, size, access=access)
            # Earlier mappings stay mapped while slices made from them live
            # (each holds the mapping's export).
            self._maps = [r for r in self._maps if r() is not None]
            self._maps.append(weakref.ref(mm))
            self._set_mapping(mm)
        self._size = size

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"I/O operation on closed MappedFile {self._path}")

    @property
    def path(self) -> str:
        """The path the file was opened by."""
        return self._path

    @property
    def mode(self) -> str:
        """``"r"``, ``"r+"`` or ``"w+"``."""
        return self._mode

    @property
    def readonly(self) -> bool:
        """True for mode ``"r"``."""
        return bool(self._readonly)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (buffers exported before may still be alive)."""
        return bool(self._closed) or self._handle.closed

    @property
    def size(self) -> int:
        """Current size of the file in bytes (refreshed if another process resized it)."""
        self._refresh()
        return int(self._size)

    def __len__(self) -> int:
        self._refresh()
        return int(self._size)

    @property
    def release_pages(self) -> bool:
        """Whether released slices' pages leave this process (True, the default).

        When a slice is released, or the last buffer exported from it (a
        memoryview, a numpy array, what ``zlib.crc32(s)`` takes) is, its pages
        are dropped from this process with ``madvise(MADV_DONTNEED)``, so they stop
        counting in its RSS, which memory guards (dask's nanny, loky) watch.
        Nothing is lost: the data stays in the page cache, written pages are
        still written back, and the next read maps them again (a minor fault).
        Slices under 256 KiB are gathered and dropped 4 MiB at a time.  Set it
        to False to keep pages mapped (a single process re-reading the same
        large slices saves the refaults).
        """
        return bool(self._trim)

    @release_pages.setter
    def release_pages(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"release_pages must be True or False, not {type(value).__name__}")
        if not value:
            self._drop_released()   # what was gathered so far still goes
        self._trim = value

    # -- slicing ----------------------------------------------------------------------
    # mf[a:b] and mf[i] are FileBase's (C); they come here for everything but
    # plain in-range cases.

    def slice(self, start: int | None = None, end: int | None = None) -> ByteBufferSlice:
        """Same as ``mf[start:end]``."""
        return self[start:end]

    def _slice_slow(self, start: Any, stop: Any, step: Any) -> ByteBufferSlice:
        key = builtins.slice(start, stop, step)
        while True:
            self._refresh()
            a, b, k = key.indices(self._size)
            if k != 1:
                raise ValueError(
                    f"MappedFile slices must be contiguous (step 1), got step {k}; "
                    f"for a strided view use mf[a:b].view()[::{k}]")
            b = max(b, a)
            s = self._try_slice(a, b)
            if s is not None:
                return s

    def _slice_exact(self, a: int, b: int) -> ByteBufferSlice:
        """A slice of exactly [a, b), which must lie inside the file (unpickling)."""
        while True:
            self._refresh()
            if b > self._size:
                raise StaleDescriptor(f"slice [{a}, {b}) of {self._path} is stale: the file "
                                      f"is now {self._size} bytes", self._path)
            s = self._try_slice(a, b)
            if s is not None:
                return s

    def _index(self, key: Any) -> int:
        try:
            i = key.__index__()
        except AttributeError:
            raise TypeError(f"MappedFile indices must be integers or slices, "
                            f"not {type(key).__name__}") from None
        n = self.size
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {key} out of range for {self._path} ({n} bytes)")
        return int(i)

    def _byte_at(self, key: Any) -> int:
        while True:
            i = self._index(key)
            s = self._try_slice(i, i + 1)   # pinned while we read it
            if s is not None:
                try:
                    return s[0]
                finally:
                    s.release()

    def __setitem__(self, key: int | builtins.slice, value: Any) -> None:
        if self._readonly:
            self._check_open()
            raise TypeError(f"cannot write to {self._path}: it was mapped read-only (mode 'r'); "
                            "open it with mode='r+' to write")
        if isinstance(key, builtins.slice):
            s = self._slice_slow(key.start, key.stop, key.step)
            try:
                s[:] = value
            finally:
                s.release()
            return
        while True:
            i = self._index(key)
            one = self._try_slice(i, i + 1)
            if one is not None:
                try:
                    one[0] = value
                finally:
                    one.release()
                return

    def split(self, chunk_size: int) -> list[ByteBufferSlice]:
        """Slices of ``chunk_size`` bytes covering the file in order (the last may be shorter)."""
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
            raise TypeError(f"chunk_size must be an int, not {type(chunk_size).__name__}")
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
        out: list[ByteBufferSlice] = []
        try:
            while True:
                out.clear()
                self._refresh()
                size = self._size
                for a in range(0, size, chunk_size):
                    s = self._try_slice(a, min(a + chunk_size, size))
                    if s is None:
                        break   # resized meanwhile: start over with the new size
                    out.append(s)
                else:
                    return out
                for s in out:
                    s.release()
        except BaseException:
            for s in out:
                s.release()
            raise

    def ndarray(self, dtype: Any, shape: Any, offset: int = 0, order: str = "C") -> Any:
        """A numpy array of ``dtype`` and ``shape`` over the file's bytes from ``offset``, no copy.

        Like ``numpy.memmap(path, dtype, mode, offset, shape, order)``: the array
        reads and writes the shared mapping, holds a pin on its bytes while it
        lives, is read-only for mode ``"r"``, and pickles as a small descriptor
        that a worker maps again.  ``ValueError`` if the bytes do not fit in the
        file or ``offset`` is not aligned for ``dtype``.
        """
        from shmslice.arrays import file_ndarray
        return file_ndarray(self, dtype, shape, offset, order)

    # -- locks --------------------------------------------------------------------
    def lock(self, start: int, end: int, mode: Literal["shared", "exclusive"] = "exclusive",
             timeout: float | None = None) -> RegionLock:
        """Lock bytes [start, end) in ``mode``; see :meth:`LockManager.lock`."""
        self._check_open()
        return self._mgr.lock(start, end, mode, timeout)  # type: ignore[no-any-return]

    async def lock_async(self, start: int, end: int,
                         mode: Literal["shared", "exclusive"] = "exclusive",
                         timeout: float | None = None) -> RegionLock:
        """Lock bytes [start, end) from asyncio code; see :meth:`LockManager.lock_async`."""
        self._check_open()
        return await self._mgr.lock_async(start, end, mode, timeout)  # type: ignore[no-any-return]

    def locks(self) -> list[LockInfo]:
        """Every pin and lock on this file, from all processes (see :meth:`LockManager.locks`)."""
        self._check_open()
        return self._mgr.locks()  # type: ignore[no-any-return]

    @property
    def lock_manager(self) -> LockManager:
        """The :class:`~shmslice.LockManager` this file's pins and locks go through."""
        return self._mgr  # type: ignore[no-any-return]

    # -- flush, resize, close -------------------------------------------------------------
    def flush(self) -> None:
        """Write every change made through this process's mappings to disk (msync)."""
        self._check_open()
        if self._readonly:
            return
        for r in self._maps:
            mm = r()
            if mm is not None and not mm.closed:
                mm.flush()

    def resize(self, new_size: int) -> None:
        """Grow or shrink the file (and this mapping) to ``new_size`` bytes.

        Growing is always allowed.  Shrinking raises ``BufferError``, naming the
        holder, while any process -- this one included -- holds a slice, buffer or
        lock that reaches past ``new_size``.  Other processes remap when they
        next use the file.
        """
        self._check_open()
        if isinstance(new_size, bool) or not isinstance(new_size, int):
            raise TypeError(f"new_size must be an int, not {type(new_size).__name__}")
        if not 0 <= new_size <= _MAX_SIZE:
            raise ValueError(f"new_size must be >= 0, got {new_size}")
        if self._readonly:
            raise TypeError(f"cannot resize {self._path}: it was mapped read-only (mode 'r'); "
                            "open it with mode='r+'")
        self._mgr.resize_file(new_size)
        self._refresh()

    def close(self, strict: bool = False) -> None:
        """Stop handing out slices, release every slice's pin, and unmap.

        Buffers exported from the slices (memoryviews, numpy arrays, ...) stay
        valid: the mapping, and the pins they hold, live until the last of them
        dies, and only then is the file unmapped and its lock table detached
        (as pyarrow's memory map does).  ``strict=True`` raises ``BufferError``
        instead, saying how many exports are alive and of what kind, and leaves
        the file open.  Slices still referenced become unusable (``ValueError``).
        Closing twice is harmless.
        """
        if self._closed:
            return
        if strict:
            buffers, views, arrays = self._exports()
            if buffers + views + arrays:
                kinds = [f"{n} {what}" for n, what in (
                    (arrays, "numpy array(s) from asarray()/ndarray()"),
                    (views, "memoryview(s) from view()"),
                    (buffers, "other buffer export(s), such as memoryview(s) or "
                              "numpy.frombuffer(s)")) if n]
                raise BufferError(
                    f"cannot close {self._path}: {buffers + views + arrays} buffer export(s) of "
                    f"its slices are alive ({', '.join(kinds)}); release them (view.release(), or "
                    "drop every reference to them and to arrays made from them), or call "
                    "close() without strict=True to unmap when the last one dies")
        self._closed = True
        if _user_files.get(self._key()) is self:
            del _user_files[self._key()]
        try:
            self._release_slices()   # every slice's pin; their exports keep theirs
        finally:
            self._set_mapping(None)
            if not self._defer_close():   # exports alive: _finish_close runs at the last
                self._finish_close()

    def _finish_close(self) -> None:
        """Unmap and detach from the lock table, once nothing exported is alive."""
        # (getattr: when the last export dies in a garbage cycle, the collector
        # may have cleared this object's slots already; then it is going anyway.)
        maps = getattr(self, "_maps", [])
        self._maps = []
        still_exported = 0
        for r in maps:
            mm = r()
            if mm is not None:
                try:
                    mm.close()
                except BufferError:
                    still_exported += 1
        if still_exported:
            # Someone holds an export of the mmap we did not hand out: it stays
            # mapped -- and so must the pins that keep other processes from
            # truncating under it.  They go when this object is collected.
            raise BufferError(f"{self._path}: {still_exported} mapping(s) are still exported "
                              "by buffers shmslice did not count; they stay mapped (and "
                              "pinned) until those buffers die")
        mgr = self._mgr
        if mgr is not None:
            mgr._detach()   # drops every pin and lock taken through it

    def __enter__(self) -> MappedFile:
        self._check_open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- pickling -------------------------------------------------------------------
    def _key(self) -> tuple[tuple[int, int, int], bool, str]:
        return (self._identity, not self._readonly, self._lock_dir)

    def _descriptor(self, start: int, end: int) -> tuple[Any, ...]:
        """What a slice of [start, end) pickles as (the order ``ByteBufferSlice.__reduce__`` uses)."""
        if not self._closed:   # (closed with arrays alive: they can still be pickled)
            self._refresh()
        return (self._abspath, self._identity, host_origin(), start, end, not self._readonly,
                self._size, self._lock_dir)

    def __reduce__(self) -> Any:
        raise TypeError("a MappedFile cannot be pickled; pickle slices of it (mf[:] or "
                        "mf[a:b]) instead: they travel as small descriptors")

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._size} bytes"
        mode = getattr(self, "_mode", "?")   # (unset while _open runs)
        return f"<shmslice.MappedFile {self._path!r} mode={mode!r} {state}>"


# -- descriptors: identity, origin, the process-level registry -------------------------------
# A descriptor carries the file's identity (dev, ino, birth stamp) and its
# origin: this host's boot id (one per running kernel; every container of a
# host shares it) and hostname (one per UTS namespace, so usually one per
# container).  Unpickling opens the path again and compares identities; the
# origin says, when they differ, whether the descriptor came from another
# host, from another container, or the file was replaced.

@functools.cache
def _boot_id() -> str:
    try:
        with builtins.open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def host_origin() -> tuple[str, str]:
    """(boot id, hostname) of this host, as descriptors record where they were made."""
    return (_boot_id(), os.uname().nodename)


def _origin_note(origin: Any) -> str:
    """Why a descriptor from ``origin`` may name another file here: '' if it was made here."""
    try:
        boot, host = origin
    except (TypeError, ValueError):
        return " (the descriptor does not say where it was made)"
    my_boot, my_host = host_origin()
    if boot and my_boot and boot != my_boot:
        return (f"; the descriptor was made on another host ({host!r}, boot id {boot}; this is "
                f"{my_host!r}, boot id {my_boot}): a descriptor names a file of the host that "
                "made it -- on a shared filesystem, open the path on each host instead "
                "(see docs/multi-host.md)")
    if host != my_host:
        return (f"; the descriptor was made in another container or UTS namespace of this host "
                f"(hostname {host!r}, here {my_host!r}), where the path may name another file")
    return ""


# Files this process mapped to serve unpickled slices: kept open for the life of
# the process, so a worker maps each file once however many tasks it runs.
_descriptor_files: dict[tuple[tuple[int, int, int], bool, str], MappedFile] = {}
# Files the program opened itself; an unpickled slice of one of them (say a
# worker's result) joins it rather than mapping the file a second time.
_user_files: weakref.WeakValueDictionary[tuple[tuple[int, int, int], bool, str], MappedFile] = \
    weakref.WeakValueDictionary()


def _mapped_for_descriptor(path: str, identity: Any, origin: Any, writable: bool,
                           lock_dir: str) -> MappedFile:
    """The MappedFile serving a descriptor of ``path``; ``StaleDescriptor`` if the
    path no longer names the file the descriptor was made from."""
    identity = tuple(identity)
    key = (identity, writable, lock_dir)
    mf = _user_files.get(key)
    if mf is None or mf.closed:
        mf = _descriptor_files.get(key)
    if mf is not None and not mf.closed:
        return mf
    try:
        mf = open(path, "r+" if writable else "r", lock_dir=lock_dir)
    except FileNotFoundError as err:
        raise StaleDescriptor(f"cannot unpickle a slice of {path}: the file no longer "
                              f"exists{_origin_note(origin)}", path) from err
    if mf._identity != identity:
        mf.close()
        note = _origin_note(origin)
        what = ("it is a different file here" if note else
                "the file was replaced since the slice was pickled (it is a different file now, "
                "even if it reuses the old one's inode number)")
        raise StaleDescriptor(f"cannot unpickle a slice of {path}: {what}{note}", path)
    _descriptor_files[key] = mf
    return mf


class _StaleFile(FileBase):
    """The closed placeholder file of slices whose descriptor went stale (or
    could not be served here): its ``_desc`` is the exception, which every use
    of them raises."""

    __slots__ = ()


def stale_slice(err: Exception, start: int, end: int) -> Any:
    """A slice of [start, end) that raises ``err`` (a fresh copy) at every use."""
    placeholder = FileBase.__new__(_StaleFile)
    placeholder._path = getattr(err, "path", None) or getattr(err, "filename", None) or "?"
    placeholder._closed = True
    placeholder._desc = err
    return placeholder._stale_slice(start, end)


def _forget_after_fork() -> None:
    # The child must map files itself: the inherited objects belong to the
    # parent's bookkeeping (pins, exports).  Dropping them here closes nothing
    # of the parent's: a child's lock-table handle owns no entries of the parent.
    global _descriptor_files, _user_files
    _descriptor_files = {}
    _user_files = weakref.WeakValueDictionary()


os.register_at_fork(after_in_child=_forget_after_fork)
