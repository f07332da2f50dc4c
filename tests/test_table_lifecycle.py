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
        done, status = os.waitpid(pid, os.WNOHANG)
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
