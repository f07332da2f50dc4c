"""Zero-copy slices of a mapped file: :class:`ByteBufferSlice`.

A slice is a region ``[start, end)`` of a :class:`~shmslice.MappedFile`.  It
never copies the file's bytes: it *is* a buffer (``memoryview(s)``,
``hashlib.sha256(s)``, ``zlib.crc32(s)``, ``f.write(s)``, ``os.write(fd, s)``,
``sock.sendall(s)``, ``f.readinto(s)``, ``numpy.frombuffer(s)`` and
``pyarrow.py_buffer(s)`` read and write the shared mapping itself, on every
supported Python), :meth:`ByteBufferSlice.asarray` reinterprets it as a typed
numpy array, and pickling sends a small descriptor that the receiving process
maps again (once per process).

The type is written in C (``csrc/slice.c``): slicing, release, ``with``,
indexing, ``len``, comparison, the bytes-like read methods, the buffer
protocol and the pickle descriptor run without Python code.

The lock count
--------------
Every live slice and every live buffer exported from one (a memoryview, a
numpy array, ...) holds one *pin* on its exact region in the file's shared
lock table, owned by its process.  A pin stops any process from shrinking the
file below the region's end, so memory a slice or buffer can reach always
exists (no SIGBUS), and ``mf.locks()`` shows who uses which bytes.  A slice's
pin goes with :meth:`ByteBufferSlice.release`, the end of a ``with`` block or
-- deterministically under CPython's reference counting -- when it dies; a
buffer's pin when the buffer is released or dies.  Every export also holds the
``mmap`` it reads, so the memory stays mapped for as long as it is used, even
after the slice is released or its file closed.

Cache keys
----------
``s.__dask_tokenize__()`` (and :class:`~shmslice.arrays.MappedArray`'s) is the
key dask caches results by.  It changes whenever the bytes may have changed:

* for a file mapped read-only here, it is the file's identity and region,
  the table's resize epoch and *write generation* -- a counter every write
  through shmslice bumps, in any process: ``s[a:b] = data``, ``mf[a:b] =
  data``, and the release of every buffer exported from a writable mapping
  (a memoryview or numpy array may have written through it) -- plus the
  file's ``st_mtime_ns``, ``st_ctime_ns`` and size, which writes made without
  shmslice (``write()``, ``numpy.memmap``) change;
* for a file mapped writable in this process, or read-only while this
  process holds live slices or buffers of a writable mapping of it, a fresh
  random token each time: nothing cheap can tell whether the bytes were
  written through a live buffer, so such results are never reused.

What is not covered: writes through a writable buffer that is still alive in
*another* process are counted when it is released (mtime catches only the
first write to a page after it was last written back), and writes made
without shmslice within the filesystem's timestamp granularity.  Hold a
region lock around such writers, or tokenize after they finish.

Fork
----
A forked child inherits slices and buffers whose pins belong to the parent.
The child never releases those (that would drop the parent's pins); an
inherited slice used in the child first takes a pin of its own ("adopts" its
region), and the child's own slices pin under the child's pid.
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING, Any

from shmslice._binding import ByteBufferSlice, bind_slice_helpers, bind_tokenizer
from shmslice.errors import ShmSliceError, StaleDescriptor

if TYPE_CHECKING:  # pragma: no cover
    from shmslice.mapping import MappedFile

__all__ = ["ByteBufferSlice"]


def exported_views(mf: MappedFile) -> int:
    """How many buffers exported from slices of ``mf`` are alive in this process."""
    return sum(mf._exports())


def open_descriptor(path: str, identity: Any, origin: Any, start: int, end: int,
                    writable: bool, size: int, lock_dir: str) -> ByteBufferSlice:
    """A pinned slice for a descriptor; ``StaleDescriptor`` if it no longer
    matches its file (another file at the path, made on another host, shrunk)."""
    from shmslice.mapping import _mapped_for_descriptor
    mf = _mapped_for_descriptor(path, identity, origin, writable, lock_dir)
    mf._refresh()
    if mf._size < size or end > mf._size:
        raise StaleDescriptor(
            f"slice [{start}, {end}) of {path} is stale: the file was shrunk from {size} "
            f"to {mf._size} bytes since the slice was pickled", path)
    return mf._slice_exact(start, end)


def _rebuild(path: str, identity: Any, origin: Any, start: int, end: int, writable: bool,
             size: int, lock_dir: str) -> ByteBufferSlice:
    """Unpickle a slice: find or map its file in this process, check it, pin the region.

    A stale descriptor does not raise here: it becomes a slice that raises
    ``StaleDescriptor`` at its first use, so that the error reaches whoever
    runs the task (a pool whose worker failed while unpickling its arguments
    breaks or hangs instead).  Any other shmslice error or ``OSError`` met
    while mapping the file here (no permission, an unsafe or corrupt table)
    is deferred the same way.
    """
    try:
        return open_descriptor(path, identity, origin, start, end, writable, size, lock_dir)
    except (ShmSliceError, OSError) as err:
        from shmslice.mapping import stale_slice
        return stale_slice(err, start, end)  # type: ignore[no-any-return]


def _asarray(s: ByteBufferSlice, dtype: Any = "u1", shape: Any = None, order: str = "C") -> Any:
    # numpy is imported only here, when an array is asked for.
    from shmslice.arrays import slice_asarray
    return slice_asarray(s, dtype, shape, order)


def _writers_here(mf: MappedFile) -> bool:
    """True if this process has a writable mapping of ``mf``'s file with slices or buffers alive."""
    from shmslice.mapping import _descriptor_files, _user_files
    key = (mf._identity, True, mf._lock_dir)
    for other in (_user_files.get(key), _descriptor_files.get(key)):
        if other is not None and not other._closed and (other._live_slices or sum(other._exports())):
            return True
    return False


def file_token(mf: MappedFile) -> tuple[Any, ...]:
    """The part of a cache key that says which file and which version of its bytes.

    A fresh random value whenever the bytes may change unseen (see the module
    docstring, "Cache keys")."""
    if not mf._readonly or mf._closed or mf._handle.closed or _writers_here(mf):
        return ("fresh", uuid.uuid4().hex)
    h = mf._handle
    st = os.fstat(h.data_fd)
    return (mf._abspath, *mf._identity, mf._lock_dir, h.size_epoch(), h.write_gen(),
            st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _tokenize(s: ByteBufferSlice) -> tuple[Any, ...]:
    """``ByteBufferSlice.__dask_tokenize__``: see "Cache keys" above."""
    return ("shmslice.ByteBufferSlice", s.start, s.end, *file_token(s.base))


bind_slice_helpers(_asarray, _rebuild)
bind_tokenizer(_tokenize)
