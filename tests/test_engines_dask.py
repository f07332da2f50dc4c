"""Slices and typed arrays through dask.distributed with worker processes (LocalCluster).

Skipped when dask.distributed is not installed (``pip install -e ".[engines]"``).  Every wait is
bounded; the memory-limit test reads a file larger than the workers' memory limit.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

import shmslice
from tests import _enginehelpers as eh

distributed = pytest.importorskip("distributed")
np = pytest.importorskip("numpy")
import dask  # noqa: E402  (after the skip: dask comes with distributed)
from dask.sizeof import sizeof  # noqa: E402
from dask.tokenize import tokenize  # noqa: E402

WAIT = 120   # seconds any one batch of tasks may take


def cluster(**kwargs):
    kw = {"n_workers": 2, "threads_per_worker": 1, "processes": True, "dashboard_address": ":0",
          "silence_logs": 40, "worker_class": distributed.Nanny}
    kw.update(kwargs)
    return distributed.LocalCluster(**kw)


@pytest.fixture(scope="module")
def client():
    with cluster() as c, distributed.Client(c, timeout=60) as cl:
        yield cl


def gather(cl, futures):
    distributed.wait(futures, timeout=WAIT)
    return cl.gather(futures)


def test_map_submit_scatter_and_slice_results(client, path: Path, lock_dir: Path,
                                              content: bytes) -> None:
    with shmslice.open(path, "r", lock_dir=lock_dir) as mf:
        parts = mf.split(4096)
        expected = [zlib.crc32(content[p.start:p.end]) for p in parts]
        assert gather(client, client.map(eh.crc, parts, pure=False)) == expected
        assert client.submit(eh.crc, mf[10:5000], pure=False).result(timeout=WAIT) == \
            zlib.crc32(content[10:5000])
        scattered = client.scatter(parts[:4])
        assert gather(client, client.map(eh.crc, scattered)) == expected[:4]
        # The scheduler counts a scattered slice at its descriptor's size, not 4 KiB.
        nbytes = client.nbytes(summary=False)
        assert all(nbytes[f.key] < 2048 for f in scattered), nbytes
        # A result that is a slice arrives as a slice of the same bytes here.
        got = client.submit(eh.make_slice, str(path), str(lock_dir), 100, 300,
                            pure=False).result(timeout=WAIT)
        assert type(got).__name__ == "ByteBufferSlice" and got == content[100:300]
        got.release()
        for p in parts:
            p.release()


def test_typed_arrays_travel_as_views(client, tmp_path: Path, lock_dir: Path) -> None:
    p = tmp_path / "f8.bin"
    values = np.arange(1 << 14, dtype="f8")
    p.write_bytes(values.tobytes())
    with shmslice.open(p, "r", lock_dir=lock_dir) as mf:
        a = mf.ndarray("f8", (128, 128))
        cases = [a, a[3], a[10:20], a[:, 2], a[::-1]]
        results = gather(client, [client.submit(eh.array_sum, x, pure=False) for x in cases])
        for x, (total, kind, viewed) in zip(cases, results, strict=True):
            assert total == float(np.asarray(x).sum()) and kind == "MappedArray" and viewed
        assert sizeof(a) < 2048   # the descriptor, not the 128 KiB it views
        del a, cases, x


def test_tokenize_changes_after_writes(client, path: Path, lock_dir: Path) -> None:
    with shmslice.open(path, "r", lock_dir=lock_dir) as mf:
        s = mf[0:4096]
        first = client.submit(eh.crc, s).result(timeout=WAIT)   # pure: cached by token
        token = tokenize(s)
        assert tokenize(mf[0:4096]) == token and tokenize(mf[0:4095]) != token
        # A write through shmslice in another process bumps the write generation.
        script = (f"import shmslice\nwith shmslice.open({str(path)!r}, 'r+', lock_dir={str(lock_dir)!r}) "
                  "as w:\n    w[0:4] = b'ABCD'\n")
        from tests.support import run_python
        done = run_python("-c", script, timeout=60)
        assert done.returncode == 0, done.stderr
        assert tokenize(s) != token
        second = client.submit(eh.crc, s).result(timeout=WAIT)
        assert second == zlib.crc32(s) and second != first
        # A write made without shmslice changes the file's mtime.
        token = tokenize(s)
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, b"wxyz", 0)
        finally:
            os.close(fd)
        assert tokenize(s) != token
        assert client.submit(eh.crc, s).result(timeout=WAIT) == zlib.crc32(s)
        s.release()
    with shmslice.open(path, "r+", lock_dir=lock_dir) as w:
        ws = w[0:4096]
        assert tokenize(ws) != tokenize(ws)   # writable here: never reused
        ws.release()


def test_sizeof_is_registered_through_the_entry_point() -> None:
    from tests.support import run_python
    # A fresh interpreter that imports dask but never shmslice._dask.
    out = run_python("-c", "import sys, dask.sizeof, shmslice\n"
                     "print('shmslice._dask' in sys.modules)", timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "True", (out.stdout, out.stderr)


def test_memory_limit_three_passes_no_worker_restarted(tmp_path: Path, lock_dir: Path) -> None:
    """LocalCluster(n_workers=2, memory_limit=400 MiB), three passes over a file larger than
    that in 32 MiB slices: no worker is killed or restarted, and worker RSS comes back."""
    path = tmp_path / "big.bin"
    crcs = eh.write_big_file(path)
    with cluster(memory_limit="400MiB") as c, distributed.Client(c, timeout=60) as cl, \
            shmslice.open(path, "r", lock_dir=lock_dir) as mf:
        pids = cl.run(os.getpid)
        rss_before = cl.run(eh.rss)
        slices = mf.split(eh.CHUNK)
        for _ in range(3):
            assert gather(cl, cl.map(eh.crc, slices, pure=False)) == crcs
        for s in slices:
            s.release()
        assert cl.run(os.getpid) == pids, "a worker was restarted"
        rss_after = cl.run(eh.rss)
        for addr, before in rss_before.items():
            assert rss_after[addr] - before < 64 * eh.MiB, (rss_before, rss_after)
        # One task that reads the whole file through slices in the worker.
        _, before, _, after = cl.submit(eh.read_all, str(path), str(lock_dir),
                                            pure=False).result(timeout=WAIT)
        assert after - before < 64 * eh.MiB, (before, after)
        assert cl.run(os.getpid) == pids
    assert dask.config.get("distributed.worker.memory.terminate") > 0   # the guard was on
