"""Zero-copy slices of a mapped file: :class:`ByteBufferSlice`.

A slice is a region ``[start, end)`` of a :class:`~shmslice.MappedFile`.  It
never copies the file's bytes: reading and writing go straight to the shared
mapping, :meth:`ByteBufferSlice.view` hands out a ``memoryview`` of the mapping
itself, and pickling sends a small descriptor that the receiving process maps
again (once per process).

The lock count
--------------
Every live slice and every live exported view holds one *pin* on its exact
region in the file's shared lock table, owned by its process.  A pin stops any
process from shrinking the file below the region's end, so memory a slice or
view can reach always exists (no SIGBUS), and ``mf.locks()`` shows who uses
which bytes.  Pins go away with :meth:`ByteBufferSlice.release`, the end of a
``with`` block or -- deterministically under CPython's reference counting --
when the last object that needs them dies.

How views hold their pin
------------------------
Python 3.12+ (PEP 688): ``memoryview(s)`` calls ``s.__buffer__``, which pins
and returns a view of the mapping; ``__release_buffer__`` runs when the last
view sharing that buffer dies, and unpins.

:meth:`~ByteBufferSlice.view`, on every version: Python 3.11 has no PEP 688,
and a ``memoryview``'s own lifetime is the wrong thing to watch (``v[1:3]``
outlives ``v`` and shares its buffer).  So each view gets a C-level exporter
of its own,
``shmslice._fastpath.PinnedBuffer`` -- the re-exporting ByteBufferSlice of the
PEP 3118 discussion.  It holds a real buffer export of the ``mmap`` (so
``mmap.close`` raises ``BufferError`` while it lives: never a view over
unmapped memory) and the region's pin; every view derived from the returned
one keeps it alive, and when the last dies its C dealloc drops both.  It
refuses writable exports of read-only mappings, also through ``view.obj``.
(A cffi buffer over ``ffi.from_buffer`` plus a weak-reference callback did the
same 0.55 us slower, and its ``.obj`` exported read-only memory as writable;
ctypes ``from_buffer`` refuses read-only buffers and caches one array type per
distinct length forever.  On 3.12+ it is also about 3x cheaper than a round
trip through ``__buffer__``, which runs Python code on export and release.)

Fork
----
A forked child inherits slices and views whose pins belong to the parent.
The child never releases those (that would drop the parent's pins); an
inherited slice used in the child first takes a pin of its own ("adopts" its
region), and the child's own slices pin under the child's pid.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from shmslice._binding import ECLOSED, fast_pin, fast_unpin, pinned_view, raise_status
from shmslice.errors import StaleDescriptor

if TYPE_CHECKING:  # pragma: no cover
    from shmslice.locks import LockManager, Mode, RegionLock
    from shmslice.mapping import MappedFile

__all__ = ["ByteBufferSlice"]

# Bumped in every forked child (see _after_fork_in_child).  A list, so the
# finalizers below can capture it as a default argument and still see updates
# during interpreter shutdown, when module globals may already be gone.
_FORK = [0]

# The C fast path (csrc/fastpath.c): one core call with the GIL held, taking
# the LockManager itself; about a third of the cost of the same call via cffi.
# A closed manager answers SS_ECLOSED instead of touching freed memory.
_ss_pin = fast_pin
_ss_unpin = fast_unpin
_pinned_view = pinned_view
_ECLOSED = ECLOSED
_new_slice = object.__new__

# Slice state kept in ByteBufferSlice._ref: a pin reference (>= 0), or one of:
_RELEASED = -1    # released (or its MappedFile was closed): every use raises ValueError
_EMPTY = -2       # live, but empty: there is no memory to protect, so no pin

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_PYBUF_WRITABLE = 0x0001
_CHUNK = 1 << 16   # bytes per step when iterating


class ByteBufferSlice:
    """Bytes ``[start, end)`` of a :class:`~shmslice.MappedFile`, without a copy.

    Made by slicing a mapped file (``mf[a:b]``, ``mf.slice(a, b)``,
    ``mf.split(n)``), slicing another slice, or unpickling.  ``start`` and
    ``end`` are absolute offsets in the file; slicing a slice keeps them
    absolute.  Indexing and slicing follow the rules of ``bytes`` (negative
    indices, clamped slice bounds); slices with a step other than 1 are refused
    (use ``s.view()[::k]``).  Writes (``s[a:b] = data``) must keep the length.

    While alive (until :meth:`release`, the end of a ``with`` block, or garbage
    collection) the slice holds one pin on its region in the file's shared lock
    table; see the module documentation.  (A slice holding a pin is an instance
    of a private subclass that carries the finalizer; test with ``isinstance``.)
    """

    __slots__ = ("_end", "_gen", "_m", "_mf", "_mv", "_ref", "_start")

    _mf: MappedFile
    _m: LockManager  # the file's LockManager (what the C fast path takes)
    _mv: memoryview | None   # the whole mapping current when the slice was made
    _start: int
    _end: int
    _ref: int
    _gen: int

    def __new__(cls, *args: object, **kwargs: object) -> ByteBufferSlice:
        raise TypeError("ByteBufferSlice objects are made by slicing a MappedFile: "
                        "mf = shmslice.open(path); s = mf[start:end]")

    # -- state ------------------------------------------------------------------
    def _live(self) -> memoryview | None:
        """The base mapping, after checking that the slice may still be used."""
        ref = self._ref
        if ref == _RELEASED or self._mf._handle.closed:
            raise ValueError(self._dead_message())
        if self._gen != _FORK[0]:
            self._adopt()
        mv = self._mv
        if mv is None and self._ref >= 0:
            mv = self._verify()
        return mv

    def _verify(self) -> memoryview:
        # First touch of a slice made on MappedFile's hot path: the pin was taken
        # without looking at the resize counter.  The pin has been held since,
        # so if the region is inside the file now it will stay there (nobody can
        # shrink below a pin); if not, another process shrank the file just
        # before the pin was taken.
        mf = self._mf
        mf._refresh()
        if self._end > mf._size:
            self.release()
            raise ValueError(f"ByteBufferSlice [{self._start}, {self._end}) of {mf.path} "
                             f"does not exist: another process shrank the file to {mf._size} "
                             "bytes just before it was made; slice it again")
        mv = self._mv = mf._mv
        return mv  # type: ignore[return-value]

    def _dead_message(self) -> str:
        what = f"ByteBufferSlice [{self._start}, {self._end}) of {self._mf.path}"
        if self._mf._handle.closed:
            return f"{what} is unusable: its MappedFile was closed"
        return f"{what} was released; slice the MappedFile again"

    def _adopt(self) -> None:
        # An inherited slice used in a forked child: the parent's pin may go
        # away at any moment, so take one of our own before touching memory,
        # and check that the region still exists.
        if self._ref == _EMPTY:
            self._gen = _FORK[0]
            return
        mf = self._mf
        ref = _ss_pin(self._m, self._start, self._end)
        if ref < 0:
            raise_status(ref, mf.path)
        mf._refresh()
        if self._end > mf._size:
            _ss_unpin(self._m, ref)
            self._ref = _RELEASED
            self.__class__ = ByteBufferSlice
            raise ValueError(f"ByteBufferSlice [{self._start}, {self._end}) of {mf.path} "
                             f"no longer exists: the file was shrunk to {mf._size} bytes")
        self._ref = ref
        self._gen = _FORK[0]
        self.__class__ = _PinnedSlice
        if self._mv is None:
            self._mv = mf._mv

    @property
    def start(self) -> int:
        """Absolute offset of the first byte in the file."""
        return self._start

    @property
    def end(self) -> int:
        """Absolute offset one past the last byte."""
        return self._end

    @property
    def base(self) -> MappedFile:
        """The :class:`~shmslice.MappedFile` this slice belongs to."""
        return self._mf

    @property
    def readonly(self) -> bool:
        """True if the file was mapped read-only (mode ``"r"``)."""
        return self._mf._readonly

    @property
    def released(self) -> bool:
        """True once released (or once its MappedFile was closed)."""
        return self._ref == _RELEASED or self._mf._handle.closed

    def __len__(self) -> int:
        self._live()
        return self._end - self._start

    # -- release ------------------------------------------------------------------
    def release(self) -> None:
        """Drop this slice's pin; any later use raises ``ValueError``.

        Views exported from the slice keep their own pins and stay valid.
        Releasing twice is harmless.  In a forked child, releasing a slice
        inherited from the parent leaves the parent's pin alone.
        """
        ref = self._ref
        self._ref = _RELEASED
        if ref >= 0:
            # Nothing left to finalize: the class without __del__ saves the
            # finalizer call when the object dies (measured: ~0.1 us).
            self.__class__ = ByteBufferSlice
            if self._gen == _FORK[0]:
                rc = _ss_unpin(self._m, ref)
                if rc < 0 and rc != _ECLOSED:   # closed: close() dropped every pin
                    raise_status(rc, self._mf.path)

    def __enter__(self) -> ByteBufferSlice:
        self._live()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    # -- reading ------------------------------------------------------------------
    def _region(self) -> memoryview:
        """A memoryview of the region, for use while this slice is alive (not handed out)."""
        mv = self._live()
        if mv is None or self._ref == _EMPTY:
            return memoryview(b"")
        return mv[self._start:self._end]

    def __getitem__(self, key: int | slice) -> int | ByteBufferSlice:
        mv = self._live()
        n = self._end - self._start
        if isinstance(key, slice):
            start, stop = _span(key, n, "for a strided view use s.view()[::{step}]")
            return self._mf._sub_slice(self, self._start + start, self._start + stop)
        i = _position(key, n)
        return mv[self._start + i]  # type: ignore[index]

    def tobytes(self) -> bytes:
        """A copy of the region as ``bytes``."""
        return self._region().tobytes()

    def __bytes__(self) -> bytes:
        return self._region().tobytes()

    def __iter__(self) -> Iterator[int]:
        # A chunk at a time, re-checking the slice between chunks: a plain
        # iterator over the mapping would outlive a release() and could then
        # touch memory nothing pins any more.
        n = self._end - self._start
        self._live()
        for offset in range(0, n, _CHUNK):
            yield from self._region()[offset:offset + _CHUNK].tobytes()

    def __contains__(self, item: object) -> bool:
        if isinstance(item, int):
            if not 0 <= item < 256:
                raise ValueError("byte must be in range(0, 256)")
            needle: bytes = bytes((item,))
        else:
            try:
                needle = memoryview(item).tobytes()  # type: ignore[arg-type]
            except TypeError:
                raise TypeError(f"a bytes-like object is required, not {type(item).__name__!r}") from None
        mv = self._live()
        if mv is None or self._ref == _EMPTY:
            return needle == b""
        # mmap.find searches the mapping in place, without copying the region.
        return mmap_of(mv).find(needle, self._start, self._end) != -1

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ByteBufferSlice):
            theirs = other._region()
        else:
            try:
                theirs = memoryview(other)  # type: ignore[arg-type]
            except TypeError:
                return NotImplemented
        return self._region() == theirs

    __hash__ = None  # type: ignore[assignment]  # mutable, like bytearray

    # -- writing ------------------------------------------------------------------
    def __setitem__(self, key: int | slice, value: Any) -> None:
        mv = self._live()
        mf = self._mf
        if mf._readonly:
            raise TypeError(f"cannot write to {mf.path}: it was mapped read-only (mode 'r'); "
                            "open it with mode='r+' to write")
        n = self._end - self._start
        if isinstance(key, slice):
            start, stop = _span(key, n, "for strided writes use s.view()[::{step}] = ...")
            data = _as_bytes_view(value)
            if data.nbytes != stop - start:
                raise ValueError(f"cannot write {data.nbytes} bytes into a region of "
                                 f"{stop - start} bytes: a ByteBufferSlice cannot change "
                                 "size, so the lengths must match")
            if stop > start:
                mv[self._start + start:self._start + stop] = data  # type: ignore[index]
            return
        i = _position(key, n)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"a byte must be an int in range(0, 256), not {type(value).__name__}")
        if not 0 <= value < 256:
            raise ValueError(f"byte must be in range(0, 256), got {value}")
        mv[self._start + i] = value  # type: ignore[index]

    def flush(self) -> None:
        """Write the region's changes to disk (msync); returns when they are there."""
        mv = self._live()
        if mv is None or self._ref == _EMPTY or self._mf._readonly:
            return
        first = self._start - self._start % _PAGE   # msync needs a page-aligned start
        mmap_of(mv).flush(first, self._end - first)

    # -- views --------------------------------------------------------------------
    def _empty_view(self) -> memoryview:
        return memoryview(b"") if self._mf._readonly else memoryview(bytearray())

    def view(self) -> memoryview:
        """Zero-copy memoryview of the region, holding a pin while any view derived from it lives."""
        m = self._m
        mv = self._mv
        if self._ref < 0 or mv is None or self._gen != _FORK[0]:
            mv = self._live()      # raises if unusable; adopts or verifies if needed
            if mv is None or self._ref == _EMPTY:
                return self._empty_view()
        start = self._start
        end = self._end
        ref = _ss_pin(m, start, end)
        if ref < 0:
            self._pin_failed(ref)
        return _pinned_view(m, mv[start:end], ref, self._mf._readonly)   # owns the pin now

    def __buffer__(self, flags: int) -> memoryview:
        """PEP 688 export (Python 3.12+): pins the region until ``__release_buffer__``."""
        mv = self._mv
        if self._ref < 0 or mv is None or self._gen != _FORK[0]:
            mv = self._live()      # raises if unusable; adopts or verifies if needed
            if mv is None or self._ref == _EMPTY:
                self._check_flags(flags)
                return self._empty_view()   # nothing mapped, nothing to pin or count
        if flags & _PYBUF_WRITABLE:
            self._check_flags(flags)
        start = self._start
        end = self._end
        ref = _ss_pin(self._m, start, end)
        if ref < 0:
            self._pin_failed(ref)
        out = mv[start:end]
        _pep688_exports[id(out)] = (ref, self._mf)
        return out

    def __release_buffer__(self, view: memoryview) -> None:
        """PEP 688: the last view of a buffer made by ``__buffer__`` died; drop its pin."""
        # None: an empty view, or one exported before this process was forked
        # (that pin is the parent's).
        entry = _pep688_exports.pop(id(view), None)
        if entry is not None:
            rc = _ss_unpin(self._m, entry[0])
            if rc < 0 and rc != _ECLOSED:
                raise_status(rc, self._mf.path)

    def _check_flags(self, flags: int) -> None:
        if flags & _PYBUF_WRITABLE and self._mf._readonly:
            raise BufferError(f"{self._mf.path} was mapped read-only (mode 'r'); "
                              "a writable buffer needs mode='r+'")

    def _pin_failed(self, status: int) -> None:
        if status == _ECLOSED:
            raise ValueError(self._dead_message())
        raise_status(status, self._mf.path)

    view.__doc__ = """A zero-copy ``memoryview`` of the region (format ``'B'``).

        Writable unless the file was mapped read-only.  The view (and every view,
        numpy array or other object made from it) holds its own pin on the
        region until the last of them dies or is released, even if the slice is
        released first; ``MappedFile.close()`` raises ``BufferError`` meanwhile.
        """

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        """numpy interop: ``numpy.asarray(s)`` is a zero-copy uint8 array over the region."""
        import numpy as np
        if copy:
            arr = np.frombuffer(self.tobytes(), dtype=np.uint8).copy()
        else:
            arr = np.frombuffer(self.view(), dtype=np.uint8)
        if dtype is not None and np.dtype(dtype) != arr.dtype:
            if copy is False:
                raise ValueError("converting a ByteBufferSlice to another dtype needs a copy; "
                                 "use numpy.frombuffer(s.view(), dtype) to reinterpret instead")
            arr = arr.astype(dtype)
        return arr

    # -- locks --------------------------------------------------------------------
    def lock(self, mode: Mode = "exclusive", timeout: float | None = None) -> RegionLock:
        """Lock exactly ``[start, end)`` of the file; see :meth:`LockManager.lock`."""
        self._live()
        if self._end == self._start:
            raise ValueError(f"cannot lock an empty slice ([{self._start}, {self._end}) "
                             f"of {self._mf.path}): a lock needs at least one byte")
        return self._mf._mgr.lock(self._start, self._end, mode, timeout)

    # -- pickling -----------------------------------------------------------------
    def __reduce__(self) -> tuple[Callable[..., ByteBufferSlice], Descriptor]:
        """Pickle as a descriptor (path, identity, region, writability, size): never the bytes."""
        self._live()
        return (_rebuild, self._mf._descriptor(self._start, self._end))

    def __repr__(self) -> str:
        state = "released" if self.released else ("read-only" if self._mf._readonly else "writable")
        return (f"<shmslice.ByteBufferSlice [{self._start}, {self._end}) of "
                f"{self._mf.path!r} {state}>")


class _PinnedSlice(ByteBufferSlice):
    """A :class:`ByteBufferSlice` that holds a pin: its finalizer drops it.

    Every slice that holds a pin is of this class, and :meth:`release` turns it
    into a plain ``ByteBufferSlice``, so the many slices that are released
    explicitly (or are empty) die without a finalizer call.  Test with
    ``isinstance(s, ByteBufferSlice)``.
    """

    __slots__ = ()

    def __del__(self, _unpin: Any = _ss_unpin, _fork: list[int] = _FORK,
                _closed: int = _ECLOSED) -> None:
        # release() without the class change, with what it needs bound at
        # definition time so that it still works while the interpreter shuts down.
        ref = self._ref
        if ref >= 0 and self._gen == _fork[0]:
            rc = _unpin(self._m, ref)
            if rc < 0 and rc != _closed:
                raise_status(rc, self._mf.path)   # reported by sys.unraisablehook


def _as_bytes_view(value: Any) -> memoryview:
    """``value`` as a flat memoryview of bytes, for writing."""
    if isinstance(value, ByteBufferSlice):
        return value._region()
    try:
        data = memoryview(value)
    except TypeError:
        raise TypeError(f"a bytes-like object is required, not {type(value).__name__!r}") from None
    if data.format != "B" or data.ndim != 1:
        if not data.c_contiguous:
            raise ValueError("data to write must be C-contiguous")
        data = data.cast("B")
    return data


def _span(key: slice, n: int, hint: str) -> tuple[int, int]:
    """The [start, stop) within a slice of length ``n`` that ``key`` names (bytes' rules);
    a step other than 1 raises ValueError with ``hint`` (formatted with the step)."""
    start, stop, step = key.indices(n)
    if step != 1:
        raise ValueError(f"ByteBufferSlice slices must be contiguous (step 1), got step {step}; "
                         + hint.format(step=step))
    return start, max(stop, start)


def _position(key: Any, n: int) -> int:
    """The offset within a slice of length ``n`` that index ``key`` names (bytes' rules)."""
    try:
        i = key.__index__()
    except AttributeError:
        raise TypeError(f"ByteBufferSlice indices must be integers or slices, "
                        f"not {type(key).__name__}") from None
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"index {key} out of range for a ByteBufferSlice of length {n}")
    return int(i)


# -- live views --------------------------------------------------------------------
# 3.12+: id(memoryview returned by __buffer__) -> (pin ref, MappedFile), so the
# view's death can drop its pin and MappedFile.close() can refuse while any
# live.  Emptied in a forked child: views inherited from the parent hold the
# parent's pins, which the child must never drop.  (On 3.11 the C exporters
# count themselves per manager: LockManager._live_buffers.)
_pep688_exports: dict[int, tuple[int, MappedFile]] = {}


def exported_views(mf: MappedFile) -> int:
    """How many views exported from slices of ``mf`` are alive in this process."""
    return (mf._mgr._live_buffers
            + sum(1 for entry in _pep688_exports.values() if entry[1] is mf))


# -- unpickling --------------------------------------------------------------------
#: What a pickled slice carries: (absolute path, st_dev, st_ino, start, end,
#: writable, file size when pickled, lock directory); see :func:`_rebuild`.
Descriptor = tuple[str, int, int, int, int, bool, int, str]


def mmap_of(mv: memoryview) -> mmap.mmap:
    """The ``mmap`` that ``mv``, a view of a whole mapping made by MappedFile, exports."""
    return cast(mmap.mmap, mv.obj)


def _rebuild(path: str, dev: int, ino: int, start: int, end: int, writable: bool,
             size: int, lock_dir: str) -> ByteBufferSlice:
    """Unpickle a slice: find or map its file in this process, check it, pin the region."""
    from shmslice.mapping import _mapped_for_descriptor
    mf = _mapped_for_descriptor(path, dev, ino, writable, lock_dir)
    mf._refresh()
    if mf._size < size or end > mf._size:
        raise StaleDescriptor(
            f"slice [{start}, {end}) of {path} is stale: the file was shrunk from {size} "
            f"to {mf._size} bytes since the slice was pickled", path)
    return mf._slice_exact(start, end)


def _after_fork_in_child() -> None:
    _FORK[0] += 1
    _pep688_exports.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
