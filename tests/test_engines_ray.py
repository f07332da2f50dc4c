"""Slices and typed arrays through Ray tasks and the object store (``ray.init(num_cpus=2)``).

Skipped when Ray is not installed (``pip install -e ".[engines]"``) or cannot start here.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

import shmslice
from tests import _enginehelpers as eh
from tests.support import child_env

ray = pytest.importorskip("ray")
np = pytest.importorskip("numpy")

TIMEOUT = 120   # ray.get timeout for any one batch


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory: pytest.TempPathFactory):
    # Ray's workers are started by its raylet, not by us: they find this checkout (and the
    # tests package the task bodies live in) through PYTHONPATH, inherited from the driver.
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = child_env()["PYTHONPATH"]
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _temp_dir=str(tmp_path_factory.mktemp("ray")), configure_logging=False)
    except Exception as err:   # no room for the object store, no ports, ...
        pytest.skip(f"ray cannot start here: {err}")
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    try:
        yield ray
    finally:
        ray.shutdown()


def test_tasks_and_put_with_slices(ray_session, path: Path, lock_dir: Path,
                                   content: bytes) -> None:
    crc = ray.remote(eh.crc)
    with shmslice.open(path, "r", lock_dir=lock_dir) as mf:
        parts = mf.split(8192)
        expected = [zlib.crc32(content[p.start:p.end]) for p in parts]
        assert ray.get([crc.remote(p) for p in parts], timeout=TIMEOUT) == expected
        ref = ray.put(parts[1])   # the object store holds the descriptor, not 8 KiB
        assert ray.get(crc.remote(ref), timeout=TIMEOUT) == expected[1]
        back = ray.get(ref, timeout=TIMEOUT)
        assert type(back).__name__ == "ByteBufferSlice" and back == content[8192:16384]
        back.release()
        made = ray.get(ray.remote(eh.make_slice).remote(str(path), str(lock_dir), 5, 500),
                       timeout=TIMEOUT)
        assert made == content[5:500]
        made.release()
        for p in parts:
            p.release()


def test_tasks_and_put_with_arrays(ray_session, tmp_path: Path, lock_dir: Path) -> None:
    total = ray.remote(eh.array_sum)
    f8 = tmp_path / "f8.bin"
    f8.write_bytes(np.arange(4096, dtype="f8").tobytes())
    with shmslice.open(f8, "r", lock_dir=lock_dir) as mf:
        a = mf.ndarray("f8", (64, 64))
        cases = [a, a[7], a[:, 1], a[::-2]]
        got = ray.get([total.remote(x) for x in cases], timeout=TIMEOUT)
        assert got == [(float(np.asarray(x).sum()), "MappedArray", True) for x in cases]
        ref = ray.put(a[10:20])
        assert ray.get(total.remote(ref), timeout=TIMEOUT) == \
            (float(a[10:20].sum()), "MappedArray", True)
        del a, cases, ref


def test_worker_rss_returns_after_reading(ray_session, tmp_path: Path, lock_dir: Path) -> None:
    path = tmp_path / "big.bin"
    eh.write_big_file(path, 256 * eh.MiB)
    value, before, _, after = ray.get(ray.remote(eh.read_all).remote(str(path), str(lock_dir)),
                                      timeout=TIMEOUT)
    with shmslice.open(path, "r", lock_dir=lock_dir) as mf, mf[:] as s:
        assert value == zlib.crc32(s)
    assert after - before < 64 * eh.MiB, (before, after)
