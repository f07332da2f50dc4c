"""owner_died: a lock granted over a region whose previous exclusive holder
died holding it says so; the mark lives in the table until an exclusive lock
consumes it (the part it covers)."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time

import pytest

import shmslice
from tests import _deadlockhelpers as helpers
from tests.support import run_python

START_METHODS = ["fork", "spawn"]


def _kill_holder(method, data_file, lock_dir, start=0, end=100, mode="exclusive") -> int:
    c = mp.get_context(method)
    ready = c.Event()
    p = c.Process(target=helpers.hold_and_die,
                  args=(str(data_file), str(lock_dir), start, end, mode, ready), daemon=True)
    p.start()
    assert ready.wait(30)
    p.join(30)
    assert p.exitcode is not None and p.exitcode < 0
    return p.pid


def _marks(mgr) -> list[tuple[int, int, int]]:
    with shmslice.TableView(mgr.table_path) as view:
        return [(e.start, e.end, e.pid) for e in view.locks(orphaned=True) if e.kind == "orphaned"]


@pytest.mark.parametrize("method", START_METHODS)
def test_later_lockers_see_it_shared_keep_it_exclusive_consumes_it(method, data_file, lock_dir):
    dead = _kill_holder(method, data_file, lock_dir)
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        lk = mgr.lock(10, 20, mode="shared")
        assert lk.owner_died
        lk.release()
        assert lk.owner_died              # the answer stays with the object
        assert _marks(mgr) == [(0, 100, dead)]
        assert mgr.reap() == 0 and _marks(mgr) == [(0, 100, dead)]   # reap keeps the news
        with mgr.lock(200, 300) as far:
            assert not far.owner_died
        with mgr.lock(0, 100) as lk:
            assert lk.owner_died
        assert _marks(mgr) == []
        with mgr.lock(0, 100) as lk:
            assert not lk.owner_died
        assert mgr.stat().used == 0


@pytest.mark.parametrize("method", START_METHODS)
def test_a_waiter_blocked_by_the_dead_holder_gets_it(method, data_file, lock_dir):
    c = mp.get_context(method)
    ready = c.Event()
    p = c.Process(target=helpers.hold_and_die,
                  args=(str(data_file), str(lock_dir), 0, 100, "exclusive", ready), daemon=True)
    p.start()
    assert ready.wait(30)
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        t0 = time.monotonic()
        lk = mgr.lock(50, 150, timeout=20)      # blocked until the holder is found dead
        assert time.monotonic() - t0 > 0.05
        assert lk.owner_died
        lk.release()
        assert _marks(mgr) == [(0, 50, p.pid)]  # the exclusive lock consumed its part
    p.join(30)


def test_shared_holders_and_pins_leave_no_mark(data_file, lock_dir):
    _kill_holder("fork", data_file, lock_dir, mode="shared")
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        with mgr.lock(0, 100) as lk:
            assert not lk.owner_died
        assert _marks(mgr) == []


def test_partial_overlaps(data_file, lock_dir):
    dead = _kill_holder("fork", data_file, lock_dir, 100, 200)
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        with mgr.lock(0, 100) as lk:             # touches, does not overlap
            assert not lk.owner_died
        with mgr.lock(150, 160) as lk:           # inside: the mark splits
            assert lk.owner_died
        assert _marks(mgr) == [(100, 150, dead), (160, 200, dead)]
        with mgr.lock(90, 120) as lk:            # over the left end: cut back
            assert lk.owner_died
        assert _marks(mgr) == [(120, 150, dead), (160, 200, dead)]
        with mgr.lock(150, 160) as lk:           # the consumed hole: nothing
            assert not lk.owner_died
        with mgr.lock(140, 170) as lk:           # over both: one goes, one is cut
            assert lk.owner_died
        assert _marks(mgr) == [(120, 140, dead), (170, 200, dead)]
        lk = mgr.lock(0, 1000, mode="shared")
        assert lk.owner_died
        lk.upgrade()                             # an upgrade is an exclusive grant too
        lk.release()
        assert _marks(mgr) == []


def test_threads_waiting_behind_a_dead_holder_all_see_it(data_file, lock_dir):
    c = mp.get_context("fork")
    ready = c.Event()
    p = c.Process(target=helpers.hold_and_die,
                  args=(str(data_file), str(lock_dir), 0, 100, "exclusive", ready), daemon=True)
    p.start()
    assert ready.wait(30)
    seen: list[bool] = []

    def reader() -> None:
        with shmslice.LockManager(data_file, lock_dir=lock_dir) as m, \
                m.lock(0, 100, mode="shared", timeout=20) as lk:
            seen.append(lk.owner_died)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    p.join(30)
    assert seen == [True, True, True]


def test_the_command_shows_the_mark(data_file, lock_dir):
    """A dead holder's lock shows as held by a dead owner until it is reclaimed
    (reaped, or found in the way); then as the region's mark, 'orphaned'."""
    dead = _kill_holder("fork", data_file, lock_dir)
    r = run_python("-m", "shmslice", "reap", data_file, "--lock-dir", lock_dir, timeout=60)
    assert r.returncode == 0, r.stderr
    r = run_python("-m", "shmslice", "locks", data_file, "--lock-dir", lock_dir, timeout=60)
    assert r.returncode == 0, r.stderr
    [row] = [line for line in r.stdout.splitlines() if "orphaned" in line]
    assert str(dead) in row and row.split()[:2] == ["0", "100"]
