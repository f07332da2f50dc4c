"""Task bodies and fixtures the engine tests (dask, joblib, Ray) send to worker processes.

They live in an importable module (not in a test file) so that every engine pickles them by
reference and a worker imports the same code.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import shmslice

MiB = 1 << 20
#: The file the memory-guard tests read: 1 GiB with SHMSLICE_SLOW=1, 512 MiB otherwise.  Both
#: exceed what the guards allow a worker (dask's 95% of 400 MiB, loky's 300 MB growth), so
#: without releasing pages the tests fail at either size.
BIG_FILE = (1024 if os.environ.get("SHMSLICE_SLOW") else 512) * MiB
CHUNK = 32 * MiB


def write_big_file(path: Path, size: int = BIG_FILE) -> list[int]:
    """``size`` bytes (1 MiB of random data with a per-MiB stamp); returns the CHUNK crc32s."""
    block = bytearray(os.urandom(MiB))
    crcs: list[int] = []
    crc = 0
    with open(path, "wb") as f:
        for i in range(size // MiB):
            block[:8] = i.to_bytes(8, "little")
            f.write(block)
            crc = zlib.crc32(block, crc)
            if (i + 1) * MiB % CHUNK == 0:
                crcs.append(crc)
                crc = 0
    return crcs


def rss() -> int:
    """This process's resident set size, in bytes."""
    import psutil
    return int(psutil.Process().memory_info().rss)


def pid(*_: object) -> int:
    return os.getpid()


def crc(s: shmslice.ByteBufferSlice) -> int:
    """crc32 of a slice, read in place."""
    return zlib.crc32(s)


def crc_and_pid(s: shmslice.ByteBufferSlice) -> tuple[int, int]:
    return zlib.crc32(s), os.getpid()


def crc_with_rss(s: shmslice.ByteBufferSlice) -> tuple[int, int, int]:
    """crc32 of the slice, with the RSS before and after (the slice released in between)."""
    before = rss()
    value = zlib.crc32(s)
    s.release()
    return value, before, rss()


def read_all(path: str, lock_dir: str, chunk: int = CHUNK) -> tuple[int, int, int, int]:
    """Read a whole file through slices in this process: (crc32, rss before, peak-ish, after)."""
    before = rss()
    mf = shmslice.open(path, "r", lock_dir=lock_dir)
    value = 0
    peak = before
    for a in range(0, mf.size, chunk):
        with mf[a:a + chunk] as s:
            value = zlib.crc32(s, value)
            peak = max(peak, rss())
    return value, before, peak, rss()


def array_sum(a: Any) -> tuple[float, str, bool]:
    """Sum of an array, its type name and whether it views the file (no copy)."""
    from shmslice.arrays import MappedArray, _origin
    return float(a.sum()), type(a).__name__, isinstance(a, MappedArray) and _origin(a) is not None


def make_slice(path: str, lock_dir: str, start: int, end: int) -> shmslice.ByteBufferSlice:
    """A task whose result is a slice: the worker maps the file and returns part of it."""
    mf = shmslice.open(path, "r", lock_dir=lock_dir)   # lives as long as the slice
    return mf[start:end]


def die_holding(s: shmslice.ByteBufferSlice) -> None:
    """Pin the slice (it is), then die by SIGKILL, as a crashing worker does."""
    import signal
    zlib.crc32(s)
    os.kill(os.getpid(), signal.SIGKILL)
