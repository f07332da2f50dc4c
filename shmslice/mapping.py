"""Memory-mapped files: :func:`open` and :class:`MappedFile`.

A ``MappedFile`` maps one data file and owns one :class:`~shmslice.LockManager`
for it, so every slice and exported view it makes is counted (pinned) in the
lock table that all processes share for that file.

Staying clear of SIGBUS
-----------------------
Touching a mapped page past the end of a file that was truncated kills the
process with SIGBUS, which Python cannot catch.  shmslice avoids it with two
rules:

* memory is only touched through a region that is pinned, and a pin stops every
  process from shrinking the file below the region's end (``ss_resize`` checks
  pins under the table mutex before it truncates);
* every resize through shmslice bumps a counter in the shared table header
  (``size_epoch``).  A new slice is pinned first and the counter read second:
  if it moved since this process last looked at the file's size, the mapping
  is refreshed (remapped at the new size) and the bounds re-clamped before
  anything is returned.  Once a slice is returned its region exists and stays.

Truncating the file *without* shmslice (``truncate -s``, ``open(path, 'w')``)
bypasses the table and cannot be guarded against.

Remapping never moves memory that slices still use: a new ``mmap`` is made and
the old one stays mapped until the last slice or view made from it dies.
"""

from __future__ import annotations

import builtins
import mmap
import operator
import os
import stat
import weakref
from typing import TYPE_CHECKING, Literal, NoReturn, SupportsIndex, overload

from shmslice._binding import fast_pin, fast_unpin, raise_status
from shmslice.errors import StaleDescriptor
from shmslice.locks import LockInfo, LockManager, Mode, RegionLock
from shmslice.slices import (
    _EMPTY,
    _FORK,
    ByteBufferSlice,
    Descriptor,
    _new_slice,
    _PinnedSlice,
    exported_views,
    mmap_of,
)

if TYPE_CHECKING:  # pragma: no cover
    from shmslice._binding import FileTableHandle

__all__ = ["MappedFile", "open"]

_ss_pin = fast_pin        # (manager, start, end): the C fast path, see slices.py
_ss_unpin = fast_unpin

OpenMode = Literal["r", "r+", "w+"]
_MODES = ("r", "r+", "w+")
_MAX_SIZE = 2**63 - 1


def open(path: str | os.PathLike[str], mode: OpenMode = "r", *, size: int | None = None,
         lock_dir: str | os.PathLike[str] | None = None) -> MappedFile:
    """Map the file at ``path`` and return a :class:`MappedFile`.

    ``mode``:
      * ``"r"``  read-only; the file must exist and not be empty;
      * ``"r+"`` read-write; the file must exist and not be empty;
      * ``"w+"`` read-write; create the file, or truncate an existing one, to
        ``size`` bytes (``size`` > 0 is required, and only allowed, here).

    ``lock_dir`` (or ``$SHMSLICE_DIR``) chooses where the shared lock table
    lives; every process that maps the file must use the same one.
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
    return MappedFile._open(os.fsdecode(os.fspath(path)), mode, size, lock_dir)


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


class MappedFile:
    """One data file mapped into this process, with its shared lock table.

    Made by :func:`shmslice.open`.  ``mf[i]`` reads a byte, ``mf[a:b]`` (or
    ``mf.slice(a, b)``) makes a zero-copy :class:`~shmslice.ByteBufferSlice`,
    ``mf[a:b] = data`` writes.  ``close()`` (or the end of a ``with`` block)
    releases every pin its slices hold and unmaps; it raises ``BufferError``
    while views exported from its slices are alive, as ``mmap`` does.
    """

    __slots__ = ("__weakref__", "_abspath", "_closed", "_dev", "_epoch", "_handle", "_ino",
                 "_lock_dir", "_maps", "_mgr", "_mode", "_mv", "_path", "_readonly", "_size")

    _path: str                  # as the user gave it
    _abspath: str               # what descriptors carry to other processes
    _mode: str                  # "r", "r+" or "w+"
    _readonly: bool
    _mgr: LockManager           # every pin and lock of this file goes through it
    _handle: FileTableHandle    # _mgr's table handle: its `closed` is this file's too
    _dev: int                   # identity of the file mapped
    _ino: int
    _lock_dir: str
    _size: int                  # the file's size as of _epoch, and the size of _mv
    _epoch: int                 # the table's resize counter when _size was read (-1: never)
    _mv: memoryview | None      # the current mapping (None while the file is empty)
    _maps: list[weakref.ref[memoryview]]   # every mapping made, while slices use it
    _closed: bool               # close() has begun

    def __init__(self) -> None:
        raise TypeError("use shmslice.open(path, mode) to map a file")

    @classmethod
    def _open(cls, path: str, mode: str, size: int | None,
              lock_dir: str | os.PathLike[str] | None) -> MappedFile:
        fd, st = _open_checked(path, mode)
        try:
            mgr = LockManager(path, lock_dir)
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
        self = object.__new__(cls)
        self._path = path
        self._abspath = os.path.abspath(path)
        self._mode = mode
        self._readonly = mode == "r"
        self._mgr = mgr
        self._handle = mgr._handle
        self._dev, self._ino = st.st_dev, st.st_ino
        self._lock_dir = os.path.dirname(mgr.table_path)
        self._size = 0
        self._epoch = -1
        self._mv = None
        self._maps = []
        self._closed = False
        try:
            if mode == "w+":
                assert size is not None   # open() requires it for "w+"
                if os.fstat(self._handle.data_fd).st_size > 0:
                    mgr.resize_file(0)   # truncate: BufferError if anyone still uses it
                mgr.resize_file(size)    # grow (pre-allocated)
            self._refresh()
            if self._size == 0:
                raise ValueError(f"cannot map {path}: the file is empty; create it with "
                                 "shmslice.open(path, 'w+', size=n) or grow it first")
        except BaseException:
            self._closed = True
            mgr.close()
            raise
        _user_files[self._key()] = self
        return self

    # -- size and mapping -----------------------------------------------------------
    def _refresh(self) -> None:
        """Bring the mapping up to date with the file size if anyone resized it since."""
        h = self._handle
        if h.closed:
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
        if size != self._size or (self._mv is None and size > 0):
            self._remap(size)
        self._epoch = epoch

    def _remap(self, size: int) -> None:
        if size == 0:
            self._mv = None
        else:
            access = mmap.ACCESS_READ if self._readonly else mmap.ACCESS_WRITE
            mv = memoryview(mmap.mmap(self._handle.data_fd, size, access=access))
            # Earlier mappings stay mapped while slices made from them live.
            self._maps = [r for r in self._maps if r() is not None]
            self._maps.append(weakref.ref(mv))
            self._mv = mv
        self._size = size

    def _check_open(self) -> None:
        if self._handle.closed:
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
        return self._readonly

    @property
    def closed(self) -> bool:
        return self._handle.closed

    @property
    def size(self) -> int:
        """Current size of the file in bytes (refreshed if another process resized it)."""
        self._refresh()
        return self._size

    def __len__(self) -> int:
        self._refresh()
        return self._size

    # -- slicing ----------------------------------------------------------------------
    @overload
    def __getitem__(self, key: SupportsIndex) -> int: ...
    @overload
    def __getitem__(self, key: builtins.slice) -> ByteBufferSlice: ...

    def __getitem__(self, key: SupportsIndex | builtins.slice) -> int | ByteBufferSlice:
        if type(key) is slice:
            a = key.start
            b = key.stop
            # Hot path: explicit bounds inside the size we know.  Only pin here
            # (one C call); the slice checks the region against the file's
            # current size the first time it touches memory (ByteBufferSlice._verify),
            # which is when a concurrent shrink by another process would matter.
            if (type(a) is int and type(b) is int and key.step is None
                    and 0 <= a < b <= self._size):
                mgr = self._mgr
                ref = _ss_pin(mgr, a, b)   # SS_ECLOSED once closed: the slow path says so
                if ref >= 0:
                    s = _new_slice(_PinnedSlice)
                    s._mf = self
                    s._m = mgr
                    s._mv = None   # not yet verified
                    s._start = a
                    s._end = b
                    s._ref = ref
                    s._gen = _FORK[0]
                    return s
            return self._slice_slow(a, b, key.step)
        return self._byte_at(key)   # (slice cannot be subclassed: the type test is exact)

    def slice(self, start: int | None = None, end: int | None = None) -> ByteBufferSlice:
        """Same as ``mf[start:end]``."""
        return self[start:end]

    def _slice_slow(self, start: object, stop: object, step: object) -> ByteBufferSlice:
        key = slice(start, stop, step)
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

    def _try_slice(self, a: int, b: int) -> ByteBufferSlice | None:
        """Pin [a, b) and make the slice; None if the file was resized meanwhile."""
        if a == b:
            return self._new(ByteBufferSlice, self._mv, a, b, _EMPTY)
        ref = _ss_pin(self._mgr, a, b)
        if ref < 0:
            raise_status(ref, self._path)
        if self._handle.size_epoch() != self._epoch:
            rc = _ss_unpin(self._mgr, ref)
            if rc < 0:
                raise_status(rc, self._path)
            return None
        return self._new(_PinnedSlice, self._mv, a, b, ref)

    def _new(self, cls: type[ByteBufferSlice], mv: memoryview | None, a: int, b: int,
             ref: int) -> ByteBufferSlice:
        s = _new_slice(cls)
        s._mf = self
        s._m = self._mgr
        s._mv = mv
        s._start = a
        s._end = b
        s._ref = ref
        s._gen = _FORK[0]
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

    def _sub_slice(self, parent: ByteBufferSlice, a: int, b: int) -> ByteBufferSlice:
        # Inside a live, pinned parent: the region exists and the parent's mapping
        # covers it, so the resize counter need not be checked.
        if a == b:
            return self._new(ByteBufferSlice, parent._mv, a, b, _EMPTY)
        ref = _ss_pin(self._mgr, a, b)
        if ref < 0:
            raise_status(ref, self._path)
        return self._new(_PinnedSlice, parent._mv, a, b, ref)

    def _index(self, key: object) -> int:
        if not isinstance(key, SupportsIndex):
            raise TypeError(f"MappedFile indices must be integers or slices, "
                            f"not {type(key).__name__}")
        i = operator.index(key)
        n = self.size
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {key} out of range for {self._path} ({n} bytes)")
        return i

    def _byte_at(self, key: object) -> int:
        while True:
            i = self._index(key)
            s = self._try_slice(i, i + 1)   # pinned while we read it
            if s is not None:
                mv = s._mv
                assert mv is not None   # set for every slice of a non-empty file
                try:
                    return mv[i]
                finally:
                    s.release()

    def __setitem__(self, key: SupportsIndex | builtins.slice, value: object) -> None:
        if self._readonly:
            self._check_open()
            raise TypeError(f"cannot write to {self._path}: it was mapped read-only (mode 'r'); "
                            "open it with mode='r+' to write")
        if isinstance(key, slice):
            whole = self._slice_slow(key.start, key.stop, key.step)
            try:
                whole[:] = value
            finally:
                whole.release()
            return
        while True:
            i = self._index(key)
            s = self._try_slice(i, i + 1)
            if s is not None:
                try:
                    s[0] = value
                finally:
                    s.release()
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

    # -- locks --------------------------------------------------------------------
    def lock(self, start: int, end: int, mode: Mode = "exclusive",
             timeout: float | None = None) -> RegionLock:
        """Lock bytes [start, end) in ``mode``; see :meth:`LockManager.lock`."""
        self._check_open()
        return self._mgr.lock(start, end, mode, timeout)

    def locks(self) -> list[LockInfo]:
        """Every pin and lock on this file, from all processes (see :meth:`LockManager.locks`)."""
        self._check_open()
        return self._mgr.locks()

    @property
    def lock_manager(self) -> LockManager:
        """The :class:`~shmslice.LockManager` this file's pins and locks go through."""
        return self._mgr

    # -- flush, resize, close -------------------------------------------------------------
    def flush(self) -> None:
        """Write every change made through this process's mappings to disk (msync)."""
        self._check_open()
        if self._readonly:
            return
        for r in self._maps:
            mv = r()
            if mv is not None:
                mm = mmap_of(mv)
                if not mm.closed:
                    mm.flush()

    def resize(self, new_size: int) -> None:
        """Grow or shrink the file (and this mapping) to ``new_size`` bytes.

        Growing is always allowed.  Shrinking raises ``BufferError``, naming the
        holder, while any process -- this one included -- holds a slice, view or
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

    def close(self) -> None:
        """Release every pin this file's slices hold and unmap.  Closing twice is harmless.

        Raises ``BufferError`` while views exported from its slices are alive.
        Slices still referenced become unusable (``ValueError``).
        """
        if self._closed:
            return
        exported = exported_views(self)
        if exported:
            raise BufferError(
                f"cannot close {self._path}: {exported} exported view(s) of its slices "
                "are still alive; release them (view.release(), or drop every reference "
                "to them and to arrays made from them) first")
        self._closed = True
        maps, self._maps = self._maps, []
        self._mv = None
        if _user_files.get(self._key()) is self:
            del _user_files[self._key()]
        still_exported = 0
        for r in maps:
            mv = r()
            if mv is not None:
                mm = mmap_of(mv)
                mv.release()
                try:
                    mm.close()
                except BufferError:
                    still_exported += 1
        if still_exported:
            # Someone holds an export we did not hand out (our count says none):
            # the mmap refused to unmap, so memory stays valid -- and so must the
            # pins that keep other processes from truncating under it.  They go
            # when this object is garbage collected.
            raise BufferError(f"{self._path}: {still_exported} mapping(s) are still exported "
                              "by buffers shmslice did not count; they stay mapped (and "
                              "pinned) until those buffers die")
        self._mgr.close()   # drops every pin and lock taken through it

    def __enter__(self) -> MappedFile:
        self._check_open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- pickling -------------------------------------------------------------------
    def _key(self) -> tuple[int, int, bool, str]:
        return (self._dev, self._ino, not self._readonly, self._lock_dir)

    def _descriptor(self, start: int, end: int) -> Descriptor:
        self._refresh()
        return (self._abspath, self._dev, self._ino, start, end, not self._readonly,
                self._size, self._lock_dir)

    def __reduce__(self) -> NoReturn:
        raise TypeError("a MappedFile cannot be pickled; pickle slices of it (mf[:] or "
                        "mf[a:b]) instead: they travel as small descriptors")

    def __repr__(self) -> str:
        state = "closed" if self._handle.closed else f"{self._size} bytes"
        return f"<shmslice.MappedFile {self._path!r} mode={self._mode!r} {state}>"


# -- process-level registry (for unpickling) ---------------------------------------------
# Files this process mapped to serve unpickled slices: kept open for the life of
# the process, so a worker maps each file once however many tasks it runs.
_descriptor_files: dict[tuple[int, int, bool, str], MappedFile] = {}
# Files the program opened itself; an unpickled slice of one of them (say a
# worker's result) joins it rather than mapping the file a second time.
_user_files: weakref.WeakValueDictionary[tuple[int, int, bool, str], MappedFile] = \
    weakref.WeakValueDictionary()


def _mapped_for_descriptor(path: str, dev: int, ino: int, writable: bool,
                           lock_dir: str) -> MappedFile:
    key = (dev, ino, writable, lock_dir)
    mf = _user_files.get(key)
    if mf is None or mf.closed:
        mf = _descriptor_files.get(key)
    if mf is not None and not mf.closed:
        return mf
    try:
        mf = open(path, "r+" if writable else "r", lock_dir=lock_dir)
    except FileNotFoundError as err:
        raise StaleDescriptor(f"cannot unpickle a slice of {path}: the file no longer "
                              "exists", path) from err
    if (mf._dev, mf._ino) != (dev, ino):
        mf.close()
        raise StaleDescriptor(f"cannot unpickle a slice of {path}: the file was replaced "
                              "since the slice was pickled (it is a different file now)", path)
    _descriptor_files[key] = mf
    return mf


def _forget_after_fork() -> None:
    # The child must map files itself: the inherited objects belong to the
    # parent's bookkeeping (pins, exports).  Dropping them here closes nothing
    # of the parent's: a child's lock-table handle owns no entries of the parent.
    global _descriptor_files, _user_files
    _descriptor_files = {}
    _user_files = weakref.WeakValueDictionary()


os.register_at_fork(after_in_child=_forget_after_fork)
