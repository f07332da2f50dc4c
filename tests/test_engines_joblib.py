"""Slices and typed arrays through joblib: the loky and multiprocessing backends.

Skipped when joblib is not installed (``pip install -e ".[engines]"``).  loky restarts a worker
whose RSS grew by more than 300 MB ("A worker stopped ..." warnings): reading a file larger
than that through slices must not trigger it.
"""

from __future__ import annotations

import os
import warnings
import zlib
from pathlib import Path

import pytest

import shmslice
from tests import _enginehelpers as eh

joblib = pytest.importorskip("joblib")
np = pytest.importorskip("numpy")
from joblib.externals.loky import get_reusable_executor  # noqa: E402

TIMEOUT = 120   # joblib's own per-task timeout, so a hung worker fails the test


def test_loky_six_rounds_same_two_workers_no_warning(tmp_path: Path, lock_dir: Path) -> None:
    path = tmp_path / "big.bin"
    crcs = eh.write_big_file(path)
    get_reusable_executor().shutdown(wait=True)   # fresh workers: their RSS is the reference
    pids: set[int] = set()
    with shmslice.open(path, "r", lock_dir=lock_dir) as mf, \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        slices = mf.split(eh.CHUNK)
        for _ in range(6):
            out = joblib.Parallel(n_jobs=2, backend="loky", timeout=TIMEOUT)(
                joblib.delayed(eh.crc_and_pid)(s) for s in slices)
            assert [c for c, _ in out] == crcs
            pids |= {p for _, p in out}
        for s in slices:
            s.release()
    assert len(pids) == 2, f"loky used {len(pids)} worker processes in 6 rounds: {sorted(pids)}"
    stopped = [str(w.message) for w in caught if "worker" in str(w.message).lower()]
    assert not stopped, stopped


MULTIPROCESSING_CHILD = """
import sys, zlib
import joblib, numpy as np
import shmslice
from tests import _enginehelpers as eh
path, f8, lock_dir = sys.argv[1:4]
with shmslice.open(path, "r", lock_dir=lock_dir) as mf:
    parts = mf.split(8192)
    out = joblib.Parallel(n_jobs=2, backend="multiprocessing", timeout=120)(
        joblib.delayed(eh.crc)(s) for s in parts)
    data = open(path, "rb").read()
    assert out == [zlib.crc32(data[p.start:p.end]) for p in parts], out
    for p in parts:
        p.release()
with shmslice.open(f8, "r", lock_dir=lock_dir) as mf:
    a = mf.ndarray("f8", (64, 64))
    cases = [a, a[5], a[:, 3], a[::2, ::3]]
    for backend in ("loky", "multiprocessing"):
        out = joblib.Parallel(n_jobs=2, backend=backend, timeout=120)(
            joblib.delayed(eh.array_sum)(x) for x in cases)
        assert out == [(float(np.asarray(x).sum()), "MappedArray", True) for x in cases], out
    del a, cases
print("ok")
"""


def test_multiprocessing_backend_and_arrays(path: Path, lock_dir: Path, tmp_path: Path) -> None:
    """The multiprocessing backend forks: it runs in a fresh interpreter, which has no threads
    of the other engines' tests (forking a threaded process may deadlock the child)."""
    from tests.support import run_python
    f8 = tmp_path / "f8.bin"
    f8.write_bytes(np.arange(4096, dtype="f8").tobytes())
    done = run_python("-W", "error::DeprecationWarning", "-c", MULTIPROCESSING_CHILD, path, f8,
                      lock_dir, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.stdout, done.stderr[-3000:])


def test_loky_worker_killed_holding_slices(path: Path, lock_dir: Path, content: bytes) -> None:
    """A worker dies by SIGKILL while it holds slices: joblib reports it, the next round runs on
    a new worker, and the dead worker's pins are reclaimed (no shrink stays blocked)."""
    from joblib.externals.loky.process_executor import TerminatedWorkerError
    with shmslice.open(path, "r+", lock_dir=lock_dir) as mf:
        s = mf[0:4096]
        with pytest.raises(TerminatedWorkerError):
            joblib.Parallel(n_jobs=2, backend="loky", timeout=TIMEOUT)(
                joblib.delayed(eh.die_holding)(x) for x in (s, mf[4096:8192]))
        out = joblib.Parallel(n_jobs=2, backend="loky", timeout=TIMEOUT)(
            joblib.delayed(eh.crc_and_pid)(x) for x in (s, mf[4096:8192]))
        assert [c for c, _ in out] == [zlib.crc32(content[:4096]), zlib.crc32(content[4096:8192])]
        s.release()
        get_reusable_executor().shutdown(wait=True)
        mf.lock_manager.reap()
        others = [e for e in mf.locks() if e.pid != os.getpid()]
        assert not others, others
        mf.resize(2048)   # nothing of the dead (or finished) workers blocks a shrink
