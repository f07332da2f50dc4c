"""Typed views: ``s.asarray`` and ``mf.ndarray`` reinterpret the file's bytes without
a copy, hold pins while alive, and travel to workers as descriptors."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pickle
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

import shmslice
from shmslice import MappedFile
from tests import _slicehelpers as helpers

np = pytest.importorskip("numpy")

WAIT = 60.0
N = 4096          # float64 items in the test file


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "data.bin"
    p.write_bytes(np.arange(N, dtype="f8").tobytes())
    return p


def pins(m: MappedFile) -> dict[tuple[int, int], int]:
    return {(i.start, i.end): i.count for i in m.locks() if i.kind == "pin"}


def test_asarray_reinterprets_without_copy(mf: MappedFile) -> None:
    s = mf[800:1600]
    a = s.asarray("f8")
    assert a.dtype == np.float64 and a.shape == (100,) and a[0] == 100.0 and a[-1] == 199.0
    u = s.asarray()                                     # default: uint8
    assert u.dtype == np.uint8 and u.shape == (800,)
    m = s.asarray("<i4", (10, 20), order="F")
    assert m.shape == (10, 20) and m.flags.f_contiguous
    a[0] = -1.0
    assert mf[800:808] == np.float64(-1.0).tobytes()    # the same memory
    s.release()
    assert pins(mf) == {(800, 1600): 3}                 # one per array, the slice's gone
    del a, u, m
    assert pins(mf) == {}


def test_ndarray_like_memmap(mf: MappedFile, path: Path) -> None:
    a = mf.ndarray("f8", (64, 64))
    ref = np.memmap(path, dtype="f8", mode="r", shape=(64, 64))
    assert np.array_equal(a, ref)
    b = mf.ndarray(np.int32, 10, offset=8 * 5)
    assert b.shape == (10,) and bytes(b.tobytes()) == bytes(mf[40:80])
    assert pins(mf) == {(0, N * 8): 1, (40, 80): 1}
    assert type(a + 1) is np.ndarray and not isinstance(a.sum(), np.ndarray)
    del a, b
    gc.collect()
    assert pins(mf) == {}


def test_array_errors_name_the_numbers(mf: MappedFile) -> None:
    with pytest.raises(ValueError, match=r"100 bytes, not a whole number of 8-byte float64 items"):
        mf[0:100].asarray("f8")
    with pytest.raises(ValueError, match=r"starts at offset 4, which is not a multiple of 8"):
        mf[4:20].asarray("f8")
    with pytest.raises(ValueError, match=r"shape \(3, 3\) of float64 needs 72 bytes, but .* has 64"):
        mf[0:64].asarray("f8", (3, 3))
    with pytest.raises(ValueError, match=rf"needs bytes \[8, {N * 8 + 8}\), but .* has {N * 8} bytes"):
        mf.ndarray("f8", N, offset=8)
    with pytest.raises(ValueError, match="offset 3 is not a multiple of 4"):
        mf.ndarray("i4", 2, offset=3)
    with pytest.raises(ValueError, match="order"):
        mf[0:8].asarray("f8", order="K")
    with pytest.raises(TypeError, match="shape"):
        mf.ndarray("f8", "x")
    assert pins(mf) == {}


def test_read_only_arrays(path: Path, lock_dir: Path) -> None:
    with shmslice.open(path, "r", lock_dir=lock_dir) as ro:
        a = ro.ndarray("f8", N)
        b = ro[0:80].asarray("f8")
        assert not a.flags.writeable and not b.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            a[0] = 1
        c = pickle.loads(pickle.dumps(a[10:20]))
        assert not c.flags.writeable and c[0] == 10.0


@pytest.mark.parametrize("index", ["full", "row", "col", "block", "reversed", "item"])
def test_array_views_pickle_as_small_descriptors(mf: MappedFile, index: str) -> None:
    a = mf.ndarray("f8", (64, 64))
    view = {"full": a, "row": a[3], "col": a[:, 2], "block": a[10:20, 5:9],
            "reversed": a[::-1, ::3], "item": a[7:8, 7]}[index]
    data = pickle.dumps(view, protocol=pickle.HIGHEST_PROTOCOL)
    assert len(data) < 2048
    back = pickle.loads(data)
    assert type(back).__name__ == "MappedArray" and np.array_equal(back, view)
    assert back.strides == view.strides
    assert back.__array_interface__["data"][0] == view.__array_interface__["data"][0]


def test_arrays_that_own_their_memory_pickle_their_bytes(mf: MappedFile) -> None:
    a = mf.ndarray("f8", 16)
    b = a * 2
    assert type(b) is np.ndarray and np.array_equal(pickle.loads(pickle.dumps(b)), b)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
@pytest.mark.parametrize("executor", ["Pool", "ProcessPoolExecutor"])
def test_arrays_in_workers_are_views_of_the_same_file(mf: MappedFile, method: str,
                                                      executor: str) -> None:
    a = mf.ndarray("f8", (64, 64))
    views = [a[1], a[:, 2], a[8:16, ::2], a[::-1, 5]]
    ctx = mp.get_context(method)
    stamps = [1000.0 + k for k in range(len(views))]
    sums = [float(v.sum()) for v in views]
    if executor == "Pool":
        with ctx.Pool(2) as pool:
            got = pool.starmap_async(helpers.array_probe, zip(views, stamps, strict=True)).get(WAIT)
    else:
        with ProcessPoolExecutor(2, mp_context=ctx) as ex:
            got = list(ex.map(helpers.array_probe, views, stamps, timeout=WAIT))
    me = os.getpid()
    for v, stamp, want, (pid, name, shape, strides, total, shared, seen) in zip(
            views, stamps, sums, got, strict=True):
        assert pid != me and name == "MappedArray" and shared
        assert shape == v.shape and strides == v.strides and total == want
        assert v.flat[0] == stamp                       # written in the worker, seen here
        # the worker pinned the array's region under its own pid
        assert (0, 64 * 64 * 8, "pin", pid) in seen
    assert pins(mf) == {(0, 64 * 64 * 8): 1}            # only our own array's pin


def test_pins_visible_while_worker_arrays_live(path: Path, lock_dir: Path) -> None:
    code = (
        "import pickle, sys, shmslice\n"
        "a = pickle.loads(sys.stdin.buffer.read())\n"
        "print('ready', flush=True)\n"
        "import time; time.sleep(60)\n"
    )
    with shmslice.open(path, "r+", lock_dir=lock_dir) as m:
        data = pickle.dumps(m.ndarray("f8", 16, offset=64))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, env=env)
        try:
            child.stdin.write(data)  # type: ignore[union-attr]
            child.stdin.close()  # type: ignore[union-attr]
            assert child.stdout.readline() == b"ready\n"  # type: ignore[union-attr]
            owners = {(i.start, i.end, i.pid) for i in m.locks() if i.kind == "pin" and i.alive}
            assert (64, 64 + 128, child.pid) in owners
            with pytest.raises(BufferError, match=f"pid {child.pid} holds a pin"):
                m.resize(100)
        finally:
            child.kill()
            child.wait(WAIT)
        m.lock_manager.reap()
        assert [i for i in m.locks() if i.pid == child.pid] == []


def test_typed_arrays_survive_with_exit_and_close_after(path: Path, lock_dir: Path) -> None:
    with shmslice.open(path, "r+", lock_dir=lock_dir) as m:
        a = m.ndarray("f8", (64, 64))
        col = a[:, 3]
    a[0, 0] = 42.0                         # still the mapping
    data = pickle.dumps(col)               # still picklable after the file closed
    assert pickle.loads(data)[1] == 67.0
    with shmslice.LockManager(path, lock_dir=lock_dir) as other:
        assert [(i.start, i.end) for i in other.locks()] == [(0, N * 8)]
        del a
        assert other.locks() != []         # col is a view of a: the export lives on
        del col
        gc.collect()
        assert other.locks() == []
    assert path.read_bytes()[:8] == np.float64(42.0).tobytes()


def test_numpy_is_imported_only_when_arrays_are_asked_for(path: Path, lock_dir: Path) -> None:
    code = (
        "import sys, shmslice\n"
        f"m = shmslice.open({str(path)!r}, 'r', lock_dir={str(lock_dir)!r})\n"
        "s = m[0:64]; bytes(s); memoryview(s).release(); s.release()\n"
        "assert 'numpy' not in sys.modules, 'numpy imported early'\n"
        "a = m[0:64].asarray('f8')\n"
        "assert 'numpy' in sys.modules and a[1] == 1.0\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=WAIT,
                         check=False)
    assert out.returncode == 0, out.stderr.decode()
