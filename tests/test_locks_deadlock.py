"""Deadlock detection across threads and processes: the request that closes a
cycle of the wait-for graph raises DeadlockError at once, naming the cycle;
every other member goes on waiting and is granted once the cycle opens."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import queue
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


def _stop(p, timeout: float = 30.0) -> None:
    assert end_process(p, timeout), f"{p} did not finish within {timeout} s"


def test_threads_through_two_managers_one_cycle(data_file, lock_dir):
    m1 = shmslice.LockManager(data_file, lock_dir=lock_dir)
    m2 = shmslice.LockManager(data_file, lock_dir=lock_dir)
    a = m1.lock(0, 10)
    holding, out = threading.Event(), []

    def other() -> None:
        b = m2.lock(10, 20)
        holding.set()
        try:
            with m2.lock(0, 10, timeout=10):
                out.append("granted")
        except shmslice.ShmSliceError as err:
            out.append(repr(err))
        b.release()

    t = threading.Thread(target=other)
    t.start()
    assert holding.wait(10)
    deadline = time.monotonic() + 10
    while not any(e.waiting for e in m1.locks(waiting=True)):
        assert time.monotonic() < deadline, "the other thread never queued"
        time.sleep(0.005)
    t0 = time.monotonic()
    with pytest.raises(shmslice.DeadlockError, match="cycle of 2") as info:
        m1.lock(10, 20, timeout=10)
    assert time.monotonic() - t0 < 1.0
    me, them = threading.get_native_id(), t.native_id
    assert [(h.tid, h.holder_tid) for h in info.value.cycle] == [(me, them), (them, me)]
    assert [(h.start, h.end, h.held_start, h.held_end) for h in info.value.cycle] == \
        [(10, 20, 10, 20), (0, 10, 0, 10)]
    assert all(h.pid == os.getpid() for h in info.value.cycle)
    a.release()
    t.join(10)
    assert out == ["granted"]
    assert m1.locks(waiting=True) == []
    m1.close()
    m2.close()


def _run_cycle(method, data_file, lock_dir, n):
    """n processes; process k holds unit k and (after all hold) asks for unit k+1.
    The last one is started asking only after the others wait: it closes the cycle."""
    c = mp.get_context(method)
    result = [c.Queue() for _ in range(n)]
    ready = [c.Event() for _ in range(n)]
    go = [c.Event() for _ in range(n)]
    procs = []
    for k in range(n):
        held, wanted = (k * 10, k * 10 + 10), (((k + 1) % n) * 10, ((k + 1) % n) * 10 + 10)
        procs.append(_start(c, helpers.hold_then_request, str(data_file), str(lock_dir), held,
                            wanted, ready[k], go[k], result[k], 0.3))
    for k in range(n):
        assert ready[k].wait(30), f"process {k} never took its lock"
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        for k in range(n - 1):
            go[k].set()
        deadline = time.monotonic() + 20
        while sum(e.waiting for e in mgr.locks(waiting=True)) < n - 1:
            assert time.monotonic() < deadline, "the first processes never queued"
            time.sleep(0.005)
        go[n - 1].set()
        outcomes = [result[k].get(timeout=30) for k in range(n)]
        for p in procs:
            _stop(p)
        assert mgr.locks(waiting=True) == []
    return outcomes, procs


@pytest.mark.parametrize("method", START_METHODS)
def test_two_process_cycle_fails_only_the_closing_request(method, data_file, lock_dir):
    outcomes, procs = _run_cycle(method, data_file, lock_dir, 2)
    assert [o[0] for o in outcomes] == ["granted", "deadlock"]
    _, waited, cycle = outcomes[1]
    assert waited < 1.0
    assert [(h[0], h[5]) for h in cycle] == [(procs[1].pid, procs[0].pid), (procs[0].pid, procs[1].pid)]


@pytest.mark.parametrize("method", START_METHODS)
def test_three_process_cycle_fails_only_the_closing_request(method, data_file, lock_dir):
    outcomes, procs = _run_cycle(method, data_file, lock_dir, 3)
    assert [o[0] for o in outcomes] == ["granted", "granted", "deadlock"]
    _, waited, cycle = outcomes[2]
    assert waited < 1.0
    pids = [p.pid for p in procs]
    assert [h[0] for h in cycle] == [pids[2], pids[0], pids[1]]
    assert [h[5] for h in cycle] == [pids[0], pids[1], pids[2]]


def test_queueing_behind_an_urgent_waiter_never_closes_a_cycle(data_file, lock_dir):
    """A holds X and asks for Y while B waits (urgent) for X and Y: queueing A
    behind B would deadlock (B waits for A).  Once a hang until the timeouts;
    now A passes B, and B is granted when A lets go."""
    ma = shmslice.LockManager(data_file, lock_dir=lock_dir)
    mb = shmslice.LockManager(data_file, lock_dir=lock_dir)
    x = ma.lock(0, 10)
    out: list[str] = []

    def b() -> None:
        try:
            with mb.lock(0, 20, timeout=10):
                out.append("granted")
        except shmslice.ShmSliceError as err:
            out.append(repr(err))

    t = threading.Thread(target=b)
    t.start()
    deadline = time.monotonic() + 10
    while not any(e.waiting for e in ma.locks(waiting=True)):
        assert time.monotonic() < deadline
        time.sleep(0.001)
    time.sleep(0.01)   # B has waited past the 2 ms urgency bound
    t0 = time.monotonic()
    y = ma.lock(10, 20, timeout=10)
    assert time.monotonic() - t0 < 0.5
    assert out == []   # B still waits
    y.release()
    x.release()
    t.join(10)
    assert out == ["granted"]
    ma.close()
    mb.close()


def test_a_third_thread_queued_behind_the_cycle_still_waits(data_file, lock_dir):
    """C (holding nothing) waits behind urgent B; A passes B.  Nobody fails."""
    ma = shmslice.LockManager(data_file, lock_dir=lock_dir)
    x = ma.lock(0, 10)
    out: list[str] = []

    def taker(start: int, end: int, name: str) -> None:
        with shmslice.LockManager(data_file, lock_dir=lock_dir) as m:
            try:
                with m.lock(start, end, timeout=10):
                    out.append(name)
            except shmslice.ShmSliceError as err:
                out.append(repr(err))

    tb = threading.Thread(target=taker, args=(0, 20, "b"))
    tb.start()
    time.sleep(0.05)
    tc = threading.Thread(target=taker, args=(10, 20, "c"))
    tc.start()
    time.sleep(0.05)
    with ma.lock(10, 20, timeout=10):
        pass
    x.release()
    tb.join(10)
    tc.join(10)
    assert sorted(out) == ["b", "c"]
    ma.close()


def test_no_false_cycle_through_a_running_holder(data_file, lock_dir):
    """A waits for B, B holds but waits for nothing: not a cycle (B will release)."""
    ma = shmslice.LockManager(data_file, lock_dir=lock_dir)
    mb = shmslice.LockManager(data_file, lock_dir=lock_dir)
    holding = threading.Event()

    def b() -> None:
        with mb.lock(0, 10):
            holding.set()
            time.sleep(0.2)

    t = threading.Thread(target=b)
    t.start()
    assert holding.wait(10)
    other = ma.lock(20, 30)
    with ma.lock(0, 10, timeout=10):
        pass
    other.release()
    t.join(10)
    ma.close()
    mb.close()


def test_to_thread_pattern_names_lock_async(data_file, lock_dir):
    """Pool threads that take locks for coroutines block themselves; the error says so."""
    mgr = shmslice.LockManager(data_file, lock_dir=lock_dir)

    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        from concurrent.futures import ThreadPoolExecutor
        loop.set_default_executor(ThreadPoolExecutor(1))
        return await asyncio.gather(*(asyncio.to_thread(mgr.lock, 0, 10, timeout=5)
                                      for _ in range(3)), return_exceptions=True)

    results = asyncio.run(main())
    errors = [r for r in results if isinstance(r, shmslice.DeadlockError)]
    assert len(errors) == 2 and all("lock_async" in str(e) and e.cycle == () for e in errors)
    for r in results:
        if isinstance(r, shmslice.RegionLock):
            r.release()
    mgr.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_stochastic_deadlocks_are_all_real(method, data_file, lock_dir):
    """16 processes (more than cores) hold one unit and ask for another: every
    DeadlockError names a cycle the table shows, no wait is left hanging."""
    c = mp.get_context(method)
    n, units = 16, 6
    stats, problems = c.Queue(), c.Queue()
    seconds = 4.0 if method == "fork" else 3.0
    procs = [_start(c, helpers.stress_worker, str(data_file), str(lock_dir), 1000 + k, seconds,
                    units, stats, problems) for k in range(n)]
    got = [stats.get(timeout=90) for _ in range(n)]
    for p in procs:
        _stop(p)
    found = []
    while True:
        try:
            found.append(problems.get_nowait())
        except queue.Empty:
            break
    assert found == []
    ops, deadlocks = sum(g[0] for g in got), sum(g[1] for g in got)
    assert ops > 100 and deadlocks > 0, (ops, deadlocks)
