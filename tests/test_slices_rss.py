"""Released slices leave the process's RSS (madvise MADV_DONTNEED), and nothing written is lost.

Memory guards (dask's nanny, loky's leak check) read RSS; pages of a shared file mapping count in
it for as long as they stay mapped.  The big read runs in a fresh child process, 256 MiB by
default and 1 GiB with SHMSLICE_SLOW=1.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import pytest

import shmslice
from tests import _enginehelpers as eh
from tests.support import run_python

psutil = pytest.importorskip("psutil")
MiB = 1 << 20
READ_SIZE = (1024 if os.environ.get("SHMSLICE_SLOW") else 256) * MiB


def rss() -> int:
    return int(psutil.Process().memory_info().rss)


def write_random(path: Path, size: int) -> None:
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(block)


CHILD = """
import json, sys, zlib
import shmslice
from tests import _enginehelpers as eh
path, lock_dir, keep = sys.argv[1], sys.argv[2], sys.argv[3] == "keep"
before = eh.rss()
mf = shmslice.open(path, "r", lock_dir=lock_dir)
mf.release_pages = not keep
crc = 0
for a in range(0, mf.size, eh.CHUNK):
    with mf[a:a + eh.CHUNK] as s:
        crc = zlib.crc32(s, crc)
print(json.dumps([crc, before, eh.rss()]))
"""


@pytest.mark.parametrize("keep", [False, True], ids=["released", "kept"])
def test_rss_returns_after_reading_the_file_through_slices(tmp_path: Path, lock_dir: Path,
                                                           keep: bool) -> None:
    path = tmp_path / "big.bin"
    write_random(path, READ_SIZE)
    done = run_python("-c", CHILD, path, lock_dir, "keep" if keep else "release", timeout=300)
    assert done.returncode == 0, done.stderr
    crc, before, after = json.loads(done.stdout)
    with shmslice.open(path, "r", lock_dir=lock_dir) as mf, mf[:] as s:
        assert crc == zlib.crc32(s)
    if keep:   # the measurement sees the pages when they are kept
        assert after - before > READ_SIZE * 0.9, (before, after)
    else:
        assert after - before < 64 * MiB, (before, after)


def test_a_live_slice_drops_pages_when_its_last_buffer_goes(tmp_path: Path, lock_dir: Path) -> None:
    path = tmp_path / "d.bin"
    write_random(path, 64 * MiB)
    with shmslice.open(path, "r", lock_dir=lock_dir) as mf:
        s = mf[:]
        base = rss()
        v = memoryview(s)
        expected = zlib.crc32(v)
        assert rss() - base > 48 * MiB   # touched and still exported: counted
        v.release()
        assert rss() - base < 8 * MiB
        assert zlib.crc32(s) == expected and not s.released   # maps again on use
        assert rss() - base < 8 * MiB
        s.release()


def test_writes_survive_dropped_pages(tmp_path: Path, lock_dir: Path) -> None:
    path = tmp_path / "w.bin"
    size = 8 * MiB
    path.write_bytes(bytes(size))
    data = os.urandom(size)
    with shmslice.open(path, "r+", lock_dir=lock_dir) as mf:
        calls = mf._trim_stats[0]
        with mf[: size // 2] as s:          # one large region, written through a buffer
            memoryview(s)[:] = data[: size // 2]
        assert mf._trim_stats[0] > calls    # its pages were dropped at once
        for a in range(size // 2, size, 4096):   # small slices: gathered, then dropped
            with mf[a:a + 4096] as s:
                s[:] = data[a:a + 4096]
        mf._drop_released()
        assert mf._trim_stats[3] == 0
        with mf[:] as s:
            assert s == data                # read back through the mapping (refaulted)
            s.flush()                       # and written to the file
        fd = os.open(path, os.O_RDONLY)
        try:
            assert os.pread(fd, size, 0) == data
        finally:
            os.close(fd)
    other = run_python("-c", "import sys, zlib; print(zlib.crc32(open(sys.argv[1], 'rb').read()))",
                       path, timeout=60)
    assert int(other.stdout) == zlib.crc32(data)


def test_small_slices_are_dropped_in_batches(tmp_path: Path, lock_dir: Path) -> None:
    path = tmp_path / "s.bin"
    write_random(path, 32 * MiB)
    with shmslice.open(path, "r", lock_dir=lock_dir) as mf:
        base = rss()
        calls = mf._trim_stats[0]
        for a in range(0, 32 * MiB, 4096):
            with mf[a:a + 4096] as s:
                zlib.crc32(s)
        made = mf._trim_stats[0] - calls
        assert 4 <= made <= 16, mf._trim_stats     # 8192 slices, a few madvise calls
        assert mf._trim_stats[3] < 4 * MiB          # at most one batch stays gathered
        assert rss() - base < 8 * MiB
        # A slice read directly (no buffer export) is dropped at its release.
        mf._drop_released()
        with mf[0:4096] as s:
            s.tobytes()
            assert mf._trim_stats[3] == 0
        assert mf._trim_stats[3] == 4096


def test_resize_drops_what_was_gathered(tmp_path: Path, lock_dir: Path) -> None:
    path = tmp_path / "r.bin"
    write_random(path, 4 * MiB)
    with shmslice.open(path, "r+", lock_dir=lock_dir) as mf:
        with mf[0:4096] as s:
            zlib.crc32(s)
        assert mf._trim_stats[3] > 0
        mf.resize(8 * MiB)
        with mf[0:8] as s:   # the new mapping is in use
            assert len(s) == 8
        assert mf._trim_stats[3] == 4096   # only the new slice's page is gathered


def test_release_pages_setting(tmp_path: Path, lock_dir: Path) -> None:
    path = tmp_path / "k.bin"
    write_random(path, 4 * MiB)
    with shmslice.open(path, "r", lock_dir=lock_dir) as mf:
        assert mf.release_pages is True
        with mf[0:4096] as s:
            zlib.crc32(s)
        mf.release_pages = False
        assert mf.release_pages is False and mf._trim_stats[3] == 0
        calls = mf._trim_stats[0]
        with mf[:] as s:
            zlib.crc32(s)
        assert mf._trim_stats[0] == calls
        with pytest.raises(TypeError, match="True or False"):
            mf.release_pages = 1  # type: ignore[assignment]


def test_engine_helpers_read_all_reports_rss(tmp_path: Path, lock_dir: Path) -> None:
    path = tmp_path / "e.bin"
    write_random(path, 64 * MiB)
    _, before, peak, after = eh.read_all(str(path), str(lock_dir), chunk=8 * MiB)
    assert peak >= before and after - before < 16 * MiB


def test_pages_under_buffers_in_use_are_kept(tmp_path: Path, lock_dir: Path) -> None:
    pytest.importorskip("numpy")
    path = tmp_path / "b.bin"
    write_random(path, 16 * MiB)
    with shmslice.open(path, "r", lock_dir=lock_dir) as mf:
        base = rss()
        a = mf.ndarray("u8", (MiB,))          # 8 MiB, in use while it lives
        a.sum()
        for off in range(0, 16 * MiB, 4096):   # small slices over it and beyond: dropped in batches
            with mf[off:off + 4096] as s:
                zlib.crc32(s)
        mf._drop_released()
        kept = rss() - base
        assert 7 * MiB < kept < 12 * MiB, kept   # the array's pages, not the small slices'
        del a
        assert rss() - base < 2 * MiB


def test_byte_reads_count_whole_pages(tmp_path: Path, lock_dir: Path) -> None:
    path = tmp_path / "i.bin"
    write_random(path, 64 * MiB)
    with shmslice.open(path, "r", lock_dir=lock_dir) as mf:
        base = rss()
        for off in range(0, 64 * MiB, 4096):   # one byte per page: each maps a page
            mf[off]
        assert mf._trim_stats[0] >= 8           # 16384 pages: dropped in batches
        assert rss() - base < 8 * MiB
