"""Inputs at the edges: huge timeouts on the slow path, file names that are not UTF-8, bytes
paths, symlinked lock directories, lock directory paths near PATH_MAX."""

from __future__ import annotations

import errno
import os
import pickle
import threading
from pathlib import Path

import pytest

import shmslice
from shmslice import UnsafeLockTable
from tests.support import wait_pid


class _Int(int):
    """An int that is not exactly an int: lock() hands it to the slow path."""


@pytest.mark.parametrize("timeout", [1e300, 1e20, 2**63, 2**64, 10**30, 2**2000, 9.3e9])
def test_huge_timeout_on_the_slow_path_waits_like_forever(data_file: Path, lock_dir: Path,
                                                          timeout: float) -> None:
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as a, \
            shmslice.LockManager(data_file, lock_dir=lock_dir) as b:
        taken = threading.Event()

        def hold() -> None:   # another thread, so that waiting is no self-deadlock
            with a.lock(0, 10):
                taken.set()
                threading.Event().wait(0.2)

        holder = threading.Thread(target=hold)
        holder.start()
        try:
            assert taken.wait(10)
            lk = b.lock(_Int(0), 10, "exclusive", timeout)   # OverflowError before
            assert lk.locked
            lk.release()
        finally:
            holder.join(10)


def test_non_utf8_file_names(tmp_path: Path, lock_dir: Path) -> None:
    name = os.fsdecode(b"caf\xe9-\xff.bin")   # surrogate escapes
    path = tmp_path / name
    path.write_bytes(b"q" * 4096)
    with shmslice.open(path, "r+", lock_dir=lock_dir) as mf:
        assert mf[0:4] == b"qqqq"
        assert mf.lock_manager.stat().data_path == str(path.absolute())
        s = pickle.loads(pickle.dumps(mf[10:20]))
        assert bytes(s) == b"q" * 10
    with shmslice.LockManager(os.fsencode(path), lock_dir=os.fsencode(lock_dir)) as mgr:
        assert mgr.path == str(path)
        mgr.lock(0, 10).release()
    weird_dir = tmp_path / os.fsdecode(b"locks-\xfe")
    with shmslice.LockManager(path, lock_dir=weird_dir) as mgr:
        assert mgr.table_path.startswith(str(weird_dir))


def test_bytes_paths_are_accepted(data_file: Path, lock_dir: Path) -> None:
    with shmslice.LockManager(bytes(data_file), lock_dir=bytes(lock_dir)) as mgr, \
            shmslice.open(bytes(data_file), "r", lock_dir=lock_dir) as mf:
        assert mgr.table_path == mf.lock_manager.table_path
    with pytest.raises(ValueError, match="NUL"):
        shmslice.LockManager(data_file, lock_dir="a\0b")


@pytest.mark.parametrize("how", ["lock_dir", "SHMSLICE_DIR"])
def test_symlinked_lock_dir_is_refused(data_file: Path, tmp_path: Path, how: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "real-locks"
    real.mkdir(mode=0o700)
    link = tmp_path / "link-locks"
    os.symlink(real, link)
    for spelled in (str(link), str(link) + "/"):
        if how == "lock_dir":
            make = lambda: shmslice.LockManager(data_file, lock_dir=spelled)  # noqa: E731, B023
        else:
            monkeypatch.setenv("SHMSLICE_DIR", spelled)
            make = lambda: shmslice.LockManager(data_file)  # noqa: E731
        with pytest.raises(UnsafeLockTable, match="symbolic link"):
            make()
    assert os.listdir(real) == []
    # A symlink above the lock directory is fine: only the directory itself counts.
    via = tmp_path / "via"
    os.symlink(tmp_path, via)
    with shmslice.LockManager(data_file, lock_dir=via / "real-locks") as mgr:
        assert os.path.dirname(mgr.table_path) == str(via / "real-locks")
    assert len(os.listdir(real)) == 1


def _dir_of_length(base: Path, length: int) -> Path:
    deep = base
    while len(str(deep)) < length:
        deep = deep / ("d" * min(200, length - len(str(deep)) - 1))
    deep.mkdir(parents=True)
    assert len(str(deep)) == length
    return deep


def test_lock_dir_path_near_path_max(data_file: Path, tmp_path: Path) -> None:
    from shmslice._binding import path_identity, table_name
    name = table_name(*path_identity(data_file))
    longest = 4095 - 1 - len(name)   # the table's path is then 4095 bytes, PATH_MAX less its NUL
    # One byte more: refused at attach (a forked child could not re-open the
    # table by its path before, and lost its locks' liveness).
    too_long = _dir_of_length(tmp_path / "a", longest + 1)
    with pytest.raises(OSError, match="PATH_MAX") as info:
        shmslice.LockManager(data_file, lock_dir=too_long)
    assert info.value.errno == errno.ENAMETOOLONG
    # Just short enough: works, in a forked child too.
    fits = _dir_of_length(tmp_path / "b", longest)
    with shmslice.LockManager(data_file, lock_dir=fits) as mgr:
        assert len(mgr.table_path) == 4095
        mgr.lock(0, 10).release()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                mgr.lock(20, 30, timeout=5).release()
                code = 0
            finally:
                os._exit(code)
        assert os.waitstatus_to_exitcode(wait_pid(pid)) == 0
