"""Typed numpy views of mapped files: ``s.asarray(...)`` and ``mf.ndarray(...)``.

This is the only module that imports numpy, and it is imported only when an
array is asked for, so numpy stays an optional dependency.

An array made here is a :class:`MappedArray` (an ``ndarray`` subclass, like
``numpy.memmap``) over a buffer exported from a :class:`ByteBufferSlice`: it
reads and writes the shared mapping, holds a pin on the slice's region and the
mapping itself while it (or any view of it) lives, and is read-only for files
mapped with mode ``"r"``.  It and every basic slice of it (``a[3]``,
``a[10:20]``, ``a[:, 2]``, ``a[::-1]``) pickle as a descriptor -- the file's
identity, the region, dtype, shape, strides and offset -- that the receiving
process maps again, as joblib does for memmaps, so a worker gets a zero-copy
view of the same bytes.  Arrays that do not share the file's memory (results of
arithmetic) are plain ``ndarray`` objects.
"""

from __future__ import annotations

import math
from typing import Any, Literal, cast

import numpy as np

from shmslice.errors import ShmSliceError
from shmslice.slices import ByteBufferSlice, open_descriptor

__all__ = ["MappedArray", "StaleArray", "file_ndarray", "slice_asarray"]


def _origin(a: np.ndarray) -> tuple[memoryview, ByteBufferSlice] | None:
    """The slice export an array's memory comes from, if it does."""
    base: Any = a
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview) and isinstance(base.obj, ByteBufferSlice):
        return base, base.obj
    return None


class MappedArray(np.ndarray):
    """A numpy array over part of a mapped file (see :mod:`shmslice.arrays`)."""

    def __array_wrap__(self, arr: Any, context: Any = None, return_scalar: bool = False) -> Any:
        # Results of ufuncs live in fresh memory: plain arrays (or scalars).
        if return_scalar and arr.ndim == 0:
            return arr[()]
        if isinstance(arr, MappedArray) and _origin(arr) is None:
            return arr.view(np.ndarray)
        return arr

    def __dask_tokenize__(self) -> Any:
        """dask's cache key: the region's key (see :mod:`shmslice.slices`, "Cache keys")
        and this view's dtype, shape, strides and offset; arrays that are not file
        memory are keyed by their content, as dask keys plain arrays."""
        origin = _origin(self)
        if origin is None:
            import importlib
            tokenize: Any = importlib.import_module("dask.tokenize")   # (dask is untyped)
            return tokenize.normalize_token(self.view(np.ndarray))
        s = origin[1]
        offset = self.__array_interface__["data"][0] - s._address
        return ("shmslice.MappedArray", s.__dask_tokenize__(), self.dtype.str, self.shape,
                self.strides, offset)

    def __reduce__(self) -> Any:
        origin = _origin(self)
        if origin is None:
            return np.ndarray.__reduce__(self.view(np.ndarray))   # not file memory: the bytes
        s = origin[1]
        offset = self.__array_interface__["data"][0] - s._address
        descriptor = s.base._descriptor(s.start, s.end)
        return (_rebuild_array, (descriptor, self.dtype, self.shape, self.strides, offset))


def _export(s: ByteBufferSlice) -> np.ndarray:
    """The slice's bytes as a flat uint8 array that holds one export of it.

    (``ndarray(buffer=memoryview)`` would keep only ``memoryview.obj`` and drop
    the export at once; ``frombuffer`` keeps the memoryview, and an array made
    with ``buffer=`` that array keeps it in turn.)"""
    return np.frombuffer(s._array_buffer(), dtype=np.uint8)


def _rebuild_array(descriptor: tuple[Any, ...], dtype: np.dtype, shape: tuple[int, ...],
                   strides: tuple[int, ...], offset: int) -> MappedArray | StaleArray:
    """Unpickle an array: map the file here, export the region, view it as before.

    A stale descriptor becomes a :class:`StaleArray`, which raises
    ``StaleDescriptor`` at its first use (as a stale slice does).
    """
    try:
        s = open_descriptor(*descriptor)
    except (ShmSliceError, OSError) as err:   # deferred, as for slices (see slices._rebuild)
        return StaleArray(err, dtype, shape)
    try:
        return np.ndarray.__new__(MappedArray, shape, dtype, buffer=_export(s),
                                  offset=offset, strides=strides)
    finally:
        s.release()   # the array's export keeps its own pin


class StaleArray:
    """What an array pickled from a file that no longer matches unpickles as.

    Unpickling does not raise (a pool worker that fails while unpickling its
    task's arguments breaks or hangs the pool); every use of this placeholder
    -- attributes, indexing, iteration, ``len``, arithmetic, numpy functions
    and ufuncs, ``numpy.asarray`` -- raises the :class:`StaleDescriptor`
    instead, so the task fails with it and its caller sees why.  ``repr``
    still works (it says what went stale).
    """

    __slots__ = ("_error", "_what")

    def __init__(self, error: Exception, dtype: Any, shape: tuple[int, ...]) -> None:
        object.__setattr__(self, "_error", error)
        object.__setattr__(self, "_what", f"{np.dtype(dtype)} {tuple(shape)}")

    def _raise(self, *args: Any, **kwargs: Any) -> Any:
        error: Exception = object.__getattribute__(self, "_error")
        reduced: Any = error.__reduce__()   # a fresh copy each time: no traceback pile-up
        raise reduced[0](*reduced[1])

    def __getattr__(self, name: str) -> Any:
        return self._raise()

    def __repr__(self) -> str:
        error = object.__getattribute__(self, "_error")
        return f"<shmslice.StaleArray {object.__getattribute__(self, '_what')}: {error}>"

    __array__ = __array_ufunc__ = __array_function__ = __buffer__ = _raise
    __getitem__ = __setitem__ = __len__ = __iter__ = __contains__ = __bool__ = _raise
    __setattr__ = __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _raise
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _raise
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = _raise
    __pow__ = __rpow__ = __matmul__ = __rmatmul__ = __neg__ = __pos__ = __abs__ = _raise
    __and__ = __rand__ = __or__ = __ror__ = __xor__ = __rxor__ = __invert__ = _raise
    __int__ = __float__ = __index__ = __reduce__ = __reduce_ex__ = _raise
    __hash__ = None  # type: ignore[assignment]


def _shape_tuple(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(int(d.__index__()) for d in shape)
    except (TypeError, AttributeError):
        raise TypeError(f"shape must be an int or a tuple of ints, not {shape!r}") from None
    if any(d < 0 for d in dims):
        raise ValueError(f"shape {dims} has a negative dimension")
    return dims


def _check_order(order: Any) -> Literal["C", "F"]:
    if order not in ("C", "F"):
        raise ValueError(f"order must be 'C' or 'F', got {order!r}")
    return cast(Literal["C", "F"], order)


def slice_asarray(s: ByteBufferSlice, dtype: Any = "u1", shape: Any = None,
                  order: str = "C") -> MappedArray:
    """``s.asarray(dtype, shape, order)``: the slice's bytes as a typed array, no copy."""
    dt = np.dtype(dtype)
    layout = _check_order(order)
    n = len(s)
    where = f"ByteBufferSlice [{s.start}, {s.end}) of {s.base.path}"
    if dt.itemsize == 0:
        raise ValueError(f"dtype {dt} has items of 0 bytes: it cannot view {where}")
    if shape is None:
        if n % dt.itemsize:
            raise ValueError(f"{where} has {n} bytes, not a whole number of {dt.itemsize}-byte "
                             f"{dt} items ({n} = {n // dt.itemsize} x {dt.itemsize} + "
                             f"{n % dt.itemsize}); slice it to a multiple of {dt.itemsize}")
        dims: tuple[int, ...] = (n // dt.itemsize,)
    else:
        dims = _shape_tuple(shape)
        need = math.prod(dims) * dt.itemsize
        if need != n:
            raise ValueError(f"shape {dims} of {dt} needs {need} bytes, but {where} has {n} bytes")
    if s.start % dt.alignment:
        raise ValueError(f"{where} starts at offset {s.start}, which is not a multiple of "
                         f"{dt.alignment}, the alignment of {dt}; start the slice at an aligned "
                         "offset")
    return np.ndarray.__new__(MappedArray, dims, dt, buffer=_export(s), order=layout)


def file_ndarray(mf: Any, dtype: Any, shape: Any, offset: int = 0,
                 order: str = "C") -> MappedArray:
    """``mf.ndarray(dtype, shape, offset, order)``: like ``numpy.memmap``, without a copy."""
    dt = np.dtype(dtype)
    layout = _check_order(order)
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)):
        raise TypeError(f"offset must be an int, not {type(offset).__name__}")
    offset = int(offset)
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    dims = _shape_tuple(shape)
    need = math.prod(dims) * dt.itemsize
    size = mf.size
    if offset + need > size:
        raise ValueError(f"shape {dims} of {dt} at offset {offset} needs bytes [{offset}, "
                         f"{offset + need}), but {mf.path} has {size} bytes")
    if offset % dt.alignment:
        raise ValueError(f"offset {offset} is not a multiple of {dt.alignment}, the alignment "
                         f"of {dt}")
    s = mf[offset:offset + need]
    try:
        if need == 0:
            return np.ndarray.__new__(MappedArray, dims, dt, order=layout)
        return slice_asarray(s, dt, dims, layout)
    finally:
        s.release()   # the array's export keeps its own pin
