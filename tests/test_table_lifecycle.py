"""Lock table lifecycle across fork and crashes: a forked child judges
liveness correctly before its first lock; a process killed while creating a
table leaves no temporary file behind."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

import shmslice
from tests import _lockhelpers as helpers

TIMEOUT = 30.0


def _killed_holder(data_file: Path, lock_dir: Path) -> None:
    c = mp.get_context("fork")
    ready = c.Event()
    p = c.Process(target=helpers.hold_and_hang,
                  args=(str(data_file), str(lock_dir), 0, 4096, "shared", ready), daemon=True)
    p.start()
    assert ready.wait(TIMEOUT), "the holder never took its lock"
    os.kill(p.pid, signal.SIGKILL)
    p.join(TIMEOUT)
    assert p.exitcode == -signal.SIGKILL


def _in_fork(fn) -> str:
    """Run fn() in a forked child; return what it returned (as str) or its error."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            try:
                out = str(fn())
            except BaseException as exc:   # reported to the parent, which fails the test
                out = f"error {type(exc).__name__}: {exc}"
            os.write(w, out.encode())
        finally:
            os._exit(0)
    os.close(w)
    deadline = time.monotonic() + TIMEOUT
    while True:
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("forked child hung")
        time.sleep(0.01)
    with os.fdopen(r, "rb") as f:
        return f.read().decode()


def test_forked_child_sees_dead_owners_before_its_first_lock(data_file: Path, lock_dir: Path) -> None:
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        mgr.pin(0, 100)                   # attached (and active) before the fork
        _killed_holder(data_file, lock_dir)
        # The child's first call is an inspection: no lock, no pin, so no slot yet.
        alive = _in_fork(lambda: sorted(e.alive for e in mgr.locks()))
        assert alive == "[False, True]", alive
        resized = _in_fork(lambda: mgr.resize_file(1024))   # the dead shared lock reaches 4096
        assert resized == "None", resized
        removed = _in_fork(mgr.reap)
        assert removed in ("0", "1"), removed   # 0 if the resize child reclaimed it already
        assert [e.kind for e in mgr.locks()] == ["pin"]
        assert os.path.getsize(data_file) == 1024


def test_forked_child_reap_removes_dead_entries(data_file: Path, lock_dir: Path) -> None:
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        mgr.pin(0, 100)
        _killed_holder(data_file, lock_dir)
        assert _in_fork(mgr.reap) == "1"
        assert [e.kind for e in mgr.locks()] == ["pin"]


def _temp_files(lock_dir: Path) -> list[str]:
    return sorted(n for n in os.listdir(lock_dir) if n.endswith(".tmp"))


def _die_creating(data: str, lock_dir: str, named: bool) -> None:
    from shmslice._binding import lib

    if named:
        lib.ss_debug_set_named_temp(1)
    lib.ss_debug_set_crash_point(9, 1)
    shmslice.LockManager(data, lock_dir=lock_dir)
    os._exit(4)


def _kill_during_creation(data_file: Path, lock_dir: Path, named: bool) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            _die_creating(str(data_file), str(lock_dir), named)
        finally:
            os._exit(5)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def test_killed_while_creating_a_table_leaves_no_temporary_file(data_file: Path,
                                                                lock_dir: Path) -> None:
    _kill_during_creation(data_file, lock_dir, named=False)
    assert _temp_files(lock_dir) == []
    assert os.listdir(lock_dir) == []       # and no half-made table either
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        mgr.lock(0, 10).release()


def _backdate(path: Path, seconds: float = 60) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def _hold_lockf(path: str, start: int, ready, done) -> None:
    import fcntl

    fd = os.open(path, os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, start)
    ready.set()
    done.wait(TIMEOUT)


def test_stale_named_temporary_files_are_removed(data_file: Path, lock_dir: Path) -> None:
    """Where tables are built under a temporary name, a killed creator's file
    is removed by the next creator, reap and clean_temp_files; a live
    creator's (locked) and a brand new file are left alone."""
    from shmslice._binding import clean_temp_files, table_constants

    _kill_during_creation(data_file, lock_dir, named=True)
    [stale] = _temp_files(lock_dir)
    assert clean_temp_files(lock_dir) == 0    # too young: could be a creator's first instant
    _backdate(lock_dir / stale)
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:   # creates: cleans
        assert _temp_files(lock_dir) == []
        name = os.path.basename(mgr.table_path)
        live, young, dead = (lock_dir / f".{name}.{pid}.1f.tmp" for pid in (11, 12, 13))
        for p in (live, young, dead):
            p.write_bytes(b"\0" * 4096)
        c = mp.get_context("fork")
        ready, done = c.Event(), c.Event()
        holder = c.Process(target=_hold_lockf,
                           args=(str(live), table_constants()["slot_lock_base"] - 1, ready, done),
                           daemon=True)
        holder.start()
        try:
            assert ready.wait(TIMEOUT)
            _backdate(live)
            _backdate(dead)
            assert mgr.reap() == 0
            assert _temp_files(lock_dir) == sorted([live.name, young.name])
            done.set()
            holder.join(TIMEOUT)
            assert clean_temp_files(lock_dir) == 1       # the live creator is gone now
            assert _temp_files(lock_dir) == [young.name]
        finally:
            done.set()
            holder.join(TIMEOUT)
    with pytest.raises(ValueError, match="NUL"):
        clean_temp_files(str(lock_dir) + "\0")
    with pytest.raises(FileNotFoundError):
        clean_temp_files(lock_dir / "missing")
