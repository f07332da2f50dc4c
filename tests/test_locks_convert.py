"""Converting a held lock in place: downgrade (exclusive -> shared) and
upgrade (shared -> exclusive), across threads and processes, with timeouts,
two upgraders, and deaths inside the conversion."""

from __future__ import annotations

import multiprocessing as mp
import signal
import threading
import time

import pytest

import shmslice
from tests import _deadlockhelpers as helpers
from tests.support import end_process

START_METHODS = ["fork", "spawn"]


def _start(c, target, *args):
    p = c.Process(target=target, args=args, daemon=True)
    p.start()
    return p


def _wait_waiting(mgr, n: int = 1, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(e.waiting for e in mgr.locks(waiting=True)) < n:
        assert time.monotonic() < deadline, "nobody queued"
        time.sleep(0.002)


def test_mode_follows_conversions_and_the_reference_stays(data_file, lock_dir):
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        lk = mgr.lock(0, 10, mode="shared")
        ref = lk._ref
        lk.upgrade()
        assert lk.mode == "exclusive" and lk._ref == ref
        assert [(e.kind, e.waiting) for e in mgr.locks(waiting=True)] == [("exclusive", False)]
        lk.upgrade()                      # already exclusive: nothing to do
        lk.downgrade()
        assert lk.mode == "shared" and lk._ref == ref
        assert [e.kind for e in mgr.locks()] == ["shared"]
        lk.downgrade()                    # already shared
        lk.release()
        with pytest.raises(ValueError, match="released"):
            lk.upgrade()
        with pytest.raises(ValueError, match="released"):
            lk.downgrade()
        lk2 = mgr.lock(0, 10, mode="shared")
        with pytest.raises(TypeError):
            lk2.upgrade(timeout="soon")
        with pytest.raises(ValueError, match=">= 0"):
            lk2.upgrade(timeout=-1)
        lk2.release()
        assert mgr.locks(waiting=True) == []


def test_downgrade_lets_waiting_readers_in_and_no_writer(data_file, lock_dir):
    mgr = shmslice.LockManager(data_file, lock_dir=lock_dir)
    lk = mgr.lock(0, 100)
    events: list[str] = []

    def take(mode: str, name: str) -> None:
        with shmslice.LockManager(data_file, lock_dir=lock_dir) as m, m.lock(0, 100, mode=mode, timeout=10):
            events.append(name)
            time.sleep(0.05 if mode == "shared" else 0)

    writer = threading.Thread(target=take, args=("exclusive", "writer"))
    writer.start()
    _wait_waiting(mgr, 1)
    time.sleep(0.01)        # the writer is urgent: a new reader queues behind it ...
    reader = threading.Thread(target=take, args=("shared", "reader"))
    reader.start()
    _wait_waiting(mgr, 2)
    lk.downgrade()          # ... and still no writer may come in while we hold shared
    time.sleep(0.2)
    assert "writer" not in events
    lk.release()
    writer.join(10)
    reader.join(10)
    assert events[0] == "writer" and sorted(events) == ["reader", "writer"]
    mgr.close()


def test_downgrade_admits_readers_queued_behind_it(data_file, lock_dir):
    mgr = shmslice.LockManager(data_file, lock_dir=lock_dir)
    lk = mgr.lock(0, 100)
    granted: list[float] = []

    def read() -> None:
        with shmslice.LockManager(data_file, lock_dir=lock_dir) as m, m.lock(10, 20, mode="shared", timeout=10):
            granted.append(time.monotonic())

    t = threading.Thread(target=read)
    t.start()
    _wait_waiting(mgr)
    t0 = time.monotonic()
    lk.downgrade()
    t.join(10)
    assert granted and granted[0] - t0 < 0.5
    assert lk.mode == "shared" and lk.locked
    lk.release()
    mgr.close()


@pytest.mark.parametrize("method", START_METHODS)
def test_upgrade_waits_for_other_holders_and_keeps_writers_out(method, data_file, lock_dir):
    c = mp.get_context(method)
    ready, go, result = c.Event(), c.Event(), c.Queue()
    holder = _start(c, helpers.hold_shared_then_upgrade, str(data_file), str(lock_dir),
                    (50, 150), ready, go, result, 0.0)
    assert ready.wait(30)
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        mine = mgr.lock(0, 100, mode="shared")
        got: list[str] = []

        def upgrade() -> None:
            mine.upgrade(timeout=10)
            got.append(mine.mode)

        t = threading.Thread(target=upgrade)
        t.start()
        _wait_waiting(mgr)
        tried: list[str] = []

        def writer() -> None:           # no other writer slips in
            with shmslice.LockManager(data_file, lock_dir=lock_dir) as other:
                try:
                    other.lock(90, 95, timeout=0.1).release()
                    tried.append("granted")
                except shmslice.LockTimeout:
                    tried.append("timeout")

        w = threading.Thread(target=writer)
        w.start()
        w.join(10)
        assert tried == ["timeout"]
        assert got == [] and mine.mode == "shared"
        # the holder's own upgrade closes the cycle of two upgraders: it fails,
        # stays shared, and releases; ours goes through
        go.set()
        outcome, waited, mode = result.get(timeout=30)
        assert (outcome, mode) == ("deadlock", "shared") and waited < 1.0
        t.join(15)
        assert got == ["exclusive"]
        assert [(e.kind, e.start) for e in mgr.locks(waiting=True)] == [("exclusive", 0)]
        mine.release()
    assert end_process(holder, 30)


def test_upgrade_timeout_leaves_the_lock_shared(data_file, lock_dir):
    mgr = shmslice.LockManager(data_file, lock_dir=lock_dir)
    lk = mgr.lock(0, 100, mode="shared")
    holding, done = threading.Event(), threading.Event()

    def reader() -> None:
        with shmslice.LockManager(data_file, lock_dir=lock_dir) as m, m.lock(20, 30, mode="shared"):
            holding.set()
            done.wait(10)

    t = threading.Thread(target=reader)
    t.start()
    assert holding.wait(10)
    t0 = time.monotonic()
    with pytest.raises(shmslice.LockTimeout):
        lk.upgrade(timeout=0.2)
    assert 0.15 < time.monotonic() - t0 < 2.0
    assert lk.mode == "shared"
    assert sorted((e.kind, e.waiting) for e in mgr.locks(waiting=True)) == [
        ("shared", False), ("shared", False)]
    with pytest.raises(shmslice.LockTimeout):
        lk.upgrade(timeout=0)
    done.set()
    t.join(10)
    lk.upgrade(timeout=0)            # alone now: at once
    assert lk.mode == "exclusive"
    lk.release()
    mgr.close()


@pytest.mark.parametrize("method", START_METHODS)
def test_two_upgraders_one_deadlock_the_other_proceeds(method, data_file, lock_dir):
    c = mp.get_context(method)
    ready = [c.Event(), c.Event()]
    go = [c.Event(), c.Event()]
    result = [c.Queue(), c.Queue()]
    procs = [_start(c, helpers.hold_shared_then_upgrade, str(data_file), str(lock_dir),
                    (k * 50, k * 50 + 100), ready[k], go[k], result[k], 0.2) for k in range(2)]
    for e in ready:
        assert e.wait(30)
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        go[0].set()
        _wait_waiting(mgr)
        go[1].set()
        second = result[1].get(timeout=30)
        first = result[0].get(timeout=30)
    assert second[0] == "deadlock" and second[2] == "shared" and second[1] < 1.0
    assert first[0] == "upgraded" and first[2] == "exclusive" and first[1] >= 0.15
    for p in procs:
        assert end_process(p, 30)


def test_read_only_manager_cannot_upgrade(data_file, lock_dir):
    data_file.chmod(0o444)
    try:
        with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
            if mgr.writable:
                pytest.skip("root can write any file")
            lk = mgr.lock(0, 10, mode="shared")
            with pytest.raises(PermissionError):
                lk.upgrade()
            assert lk.mode == "shared"
            lk.release()
    finally:
        data_file.chmod(0o644)


@pytest.mark.parametrize(("point", "upgrade"), [(20, True), (21, False), (20, False)])
def test_death_inside_a_conversion_leaves_a_consistent_table(point, upgrade, data_file, lock_dir):
    c = mp.get_context("fork")
    p = _start(c, helpers.crash_converting, str(data_file), str(lock_dir), point, upgrade)
    p.join(30)
    assert p.exitcode == -signal.SIGKILL or (point == 21 and not upgrade and p.exitcode == 3)
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        with mgr.lock(0, 300, timeout=5):      # the dead child's locks are reclaimed
            pass
        mgr.reap()
        assert mgr.locks(waiting=True) == []
        if p.exitcode == -signal.SIGKILL:
            assert mgr.stat().repairs >= 1


@pytest.mark.parametrize("handoff", [False, True])
def test_death_while_an_upgrade_is_granted_from_its_queue(handoff, data_file, lock_dir):
    """The upgrade waits; the release grants it (handed over once it is urgent,
    else woken); the child dies between converting and removing its request."""
    c = mp.get_context("fork")
    point = 21
    ready = c.Event()
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        other = mgr.lock(50, 60, mode="shared")
        p = _start(c, helpers.upgrade_after_waiting, str(data_file), str(lock_dir), point, ready)
        assert ready.wait(30)
        _wait_waiting(mgr)
        if handoff:
            time.sleep(0.01)             # past the urgency bound
        other.release()                  # the upgrade is granted: the child dies on the way
        p.join(30)
        assert p.exitcode == -signal.SIGKILL
        with mgr.lock(0, 100, timeout=5):
            pass
        mgr.reap()                       # a dead waiter's request lingers until needed
        assert mgr.locks(waiting=True) == []
        assert mgr.stat().repairs >= 1


def test_the_binding_converts_through_cffi_too(data_file, lock_dir):
    """FileTableHandle.upgrade/downgrade (the cffi path) keep the reference."""
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        handle = mgr._handle
        lk = mgr.lock(0, 10, mode="shared")
        handle.upgrade(lk._ref, -1)
        assert [e.kind for e in mgr.locks()] == ["exclusive"]
        handle.downgrade(lk._ref)
        assert [e.kind for e in mgr.locks()] == ["shared"]
        with pytest.raises(ValueError, match="not an exclusive lock"):
            handle.downgrade(lk._ref)
        ref = lk._ref
        lk.release()
        with pytest.raises(shmslice.ShmSliceError, match="not held"):
            handle.upgrade(ref, 0)


def test_another_thread_may_upgrade_the_lock_which_stays_its_takers(data_file, lock_dir):
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        lk = mgr.lock(0, 10, mode="shared")
        t = threading.Thread(target=lk.upgrade)
        t.start()
        t.join(10)
        assert lk.mode == "exclusive"
        [info] = mgr.locks()
        assert info.tid == threading.get_native_id()
        with pytest.raises(shmslice.DeadlockError):   # still this thread's own lock
            mgr.lock(5, 6, timeout=5)
        lk.release()
