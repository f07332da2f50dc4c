"""Worker bodies for the slice tests (a module of its own so that spawn and
forkserver workers can import them without importing pytest or hypothesis)."""

from __future__ import annotations

import os
import zlib

import shmslice


def checksum(s: shmslice.ByteBufferSlice) -> tuple[int, int, int, int, list[tuple[int, int, str, int]]]:
    """crc32 of a slice read in place; also who pins what, as the worker sees it."""
    crc = zlib.crc32(s.view())
    pins = [(i.start, i.end, i.kind, i.pid) for i in s.base.locks()]
    return os.getpid(), s.start, s.end, crc, pins


def half(s: shmslice.ByteBufferSlice) -> shmslice.ByteBufferSlice:
    """A result that is itself a slice: the first half of the argument."""
    return s[: len(s) // 2]


def fill(s: shmslice.ByteBufferSlice, seed: int) -> tuple[int, int]:
    """Write a pattern derived from (seed, offset) into the slice, in place."""
    n = len(s)
    s[:] = pattern(seed, n)
    s.flush()
    return s.start, s.end


def pattern(seed: int, n: int) -> bytes:
    block = bytes((seed * 31 + i * 7) % 256 for i in range(256))
    return (block * (n // 256 + 1))[:n]


def read_all(s: shmslice.ByteBufferSlice) -> tuple[int, int]:
    """Read every byte of the slice through views (no copy); return (crc, USS growth)."""
    import psutil
    proc = psutil.Process()
    before = proc.memory_full_info().uss
    crc = 0
    step = 4 << 20
    for off in range(0, len(s), step):
        with s[off:off + step] as part:
            v = part.view()
            crc = zlib.crc32(v, crc)
            v.release()
    after = proc.memory_full_info().uss
    return crc, after - before


def uss_now(_: object = None) -> int:
    import psutil
    return psutil.Process().memory_full_info().uss


def copy_all(s: shmslice.ByteBufferSlice) -> tuple[int, int]:
    """Control for read_all: copy the bytes out instead (USS must grow)."""
    import psutil
    proc = psutil.Process()
    before = proc.memory_full_info().uss
    data = s.tobytes()
    after = proc.memory_full_info().uss
    return zlib.crc32(data), after - before


def hold_slice(path: str, lock_dir: str, start: int, end: int, ready, done,
               timeout: float = 30.0) -> None:
    """Hold a slice (one pin) until told to stop."""
    mf = shmslice.open(path, "r", lock_dir=lock_dir)
    s = mf[start:end]
    ready.set()
    done.wait(timeout)
    s.release()
    mf.close()


def hold_pickled(s: shmslice.ByteBufferSlice, ready, done, timeout: float = 30.0) -> None:
    """Receive a slice as a Process argument (pickled under spawn) and hold it."""
    v = s.view()
    ready.set()
    done.wait(timeout)
    v.release()
    s.release()


def shrink_with_lock_manager(path: str, lock_dir: str, size: int) -> str:
    """Resize the file from another process, bypassing MappedFile (as another program would)."""
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    try:
        mgr.resize_file(size)
        return "ok"
    except BufferError as err:
        return f"BufferError: {err}"
    finally:
        mgr.close()


def array_probe(a, stamp: float) -> tuple[int, str, tuple[int, ...], tuple[int, ...], float, bool,
                                           list[tuple[int, int, str, int]]]:
    """In a worker: what arrived, its sum, and a write through it (seen by the parent
    only if the array is a view of the shared file rather than a copy)."""
    from shmslice.arrays import MappedArray, _origin
    origin = _origin(a)
    total = float(a.sum())
    shared = isinstance(a, MappedArray) and origin is not None
    if a.flags.writeable and a.size:
        a.flat[0] = stamp
    pins = [(i.start, i.end, i.kind, i.pid) for i in origin[1].base.locks()] if origin else []
    return os.getpid(), type(a).__name__, a.shape, a.strides, total, shared, pins
