"""Cache keys of slices and arrays (``__dask_tokenize__``) and the table's write generation.

No dask needed: these call the methods dask calls.  tests/test_engines_dask.py checks the same
through dask itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import shmslice
from tests.support import run_python


def write_elsewhere(path: Path, lock_dir: Path, how: str) -> None:
    body = {"setitem": "w[0:4] = b'WXYZ'",
            "buffer": "s = w[0:4096]\n    v = memoryview(s)\n    v[0] ^= 1\n    v.release()\n"
                      "    s.release()",
            "array": "a = w.ndarray('u1', (16,))\n    a[1] ^= 1\n    del a"}[how]
    script = (f"import shmslice\nwith shmslice.open({str(path)!r}, 'r+', lock_dir={str(lock_dir)!r})"
              f" as w:\n    {body}\n")
    done = run_python("-c", script, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("how", ["setitem", "buffer", "array"])
def test_a_write_through_shmslice_in_another_process_changes_the_key(
        path: Path, lock_dir: Path, how: str) -> None:
    if how == "array":
        pytest.importorskip("numpy")
    with shmslice.open(path, "r", lock_dir=lock_dir) as mf:
        s = mf[0:4096]
        key, gen = s.__dask_tokenize__(), mf._handle.write_gen()
        assert mf[0:4096].__dask_tokenize__() == key        # same bytes, same key
        assert mf[0:4095].__dask_tokenize__() != key
        write_elsewhere(path, lock_dir, how)
        assert mf._handle.write_gen() > gen
        assert s.__dask_tokenize__() != key
        s.release()


def test_a_write_without_shmslice_changes_the_key(path: Path, lock_dir: Path) -> None:
    with shmslice.open(path, "r", lock_dir=lock_dir) as mf:
        s = mf[0:100]
        key = s.__dask_tokenize__()
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, b"new", 0)
        finally:
            os.close(fd)
        assert s.__dask_tokenize__() != key
        s.release()


def test_writable_mappings_get_a_fresh_key_every_time(path: Path, lock_dir: Path) -> None:
    with shmslice.open(path, "r+", lock_dir=lock_dir) as w, w[0:10] as ws:
        assert ws.__dask_tokenize__() != ws.__dask_tokenize__()
        # A read-only mapping in a process that holds live writable buffers of the file:
        # fresh too (they can write unseen).
        with shmslice.open(path, "r", lock_dir=lock_dir) as mf, mf[0:10] as s:
            assert s.__dask_tokenize__() != s.__dask_tokenize__()
    with shmslice.open(path, "r", lock_dir=lock_dir) as mf, mf[0:10] as s:
        assert s.__dask_tokenize__() == s.__dask_tokenize__()


def test_array_keys_follow_view_and_bytes(tmp_path: Path, lock_dir: Path) -> None:
    np = pytest.importorskip("numpy")
    p = tmp_path / "f8.bin"
    p.write_bytes(np.arange(256, dtype="f8").tobytes())
    with shmslice.open(p, "r", lock_dir=lock_dir) as mf:
        a = mf.ndarray("f8", (16, 16))
        key = a.__dask_tokenize__()
        assert mf.ndarray("f8", (16, 16)).__dask_tokenize__() == key
        keys = {a[1].__dask_tokenize__(), a[:, 1].__dask_tokenize__(), a.T.__dask_tokenize__(),
                mf.ndarray("i8", (16, 16)).__dask_tokenize__(), key}
        assert len(keys) == 5
        write_elsewhere(p, lock_dir, "setitem")
        assert a.__dask_tokenize__() != key
        del a


def test_writes_through_slices_bump_the_generation(mf: shmslice.MappedFile) -> None:
    h = mf._handle
    gen = h.write_gen()
    with mf[0:10] as s:
        s[0] = 1
        assert h.write_gen() == gen + 1
        s[0:2] = b"ab"
        assert h.write_gen() == gen + 2
        v = s.view()
        assert h.write_gen() == gen + 2   # counted when the buffer is released
        v.release()
        assert h.write_gen() == gen + 3
        s.tobytes()                        # reading counts nothing
        assert h.write_gen() == gen + 3
