"""lock_async: waiting without blocking the event loop or costing a thread per
waiter; tasks as lock owners; timeouts, cancellation, processes."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import threading
import time

import pytest

import shmslice
from tests import _deadlockhelpers as helpers
from tests.support import end_process


def run(coro, timeout: float = 30.0):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


@pytest.fixture(scope="module", autouse=True)
def _no_waiter_thread_after_this_module():
    """The waiter thread ends 1 s after its last request; let it, so that the
    tests after this module fork a process without other threads."""
    yield
    deadline = time.monotonic() + 10
    while any(t.name == "shmslice-lock-waiter" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the lock_async waiter thread did not end when idle"
        time.sleep(0.05)


@pytest.fixture
def mgr(data_file, lock_dir):
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as m:
        yield m


def test_free_lock_and_async_with(mgr):
    async def main():
        async with await mgr.lock_async(0, 10) as lk:
            assert lk.locked and lk.mode == "exclusive"
            assert [(e.kind, e.start, e.end) for e in mgr.locks()] == [("exclusive", 0, 10)]
        assert not lk.locked
        lk = await mgr.lock_async(0, 10, mode="shared", timeout=0)
        assert lk.mode == "shared"
        lk.release()
    run(main())
    assert mgr.locks(waiting=True) == []


def test_two_tasks_conflict_like_two_threads_and_the_loop_keeps_running(mgr):
    async def main():
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        ticker = asyncio.create_task(tick())
        first = await mgr.lock_async(0, 10)

        async def second():
            t0 = time.monotonic()
            async with await mgr.lock_async(5, 15, timeout=10):
                return time.monotonic() - t0

        task = asyncio.create_task(second())
        await asyncio.sleep(0.3)
        assert not task.done()
        assert any(e.waiting for e in mgr.locks(waiting=True))
        before = ticks
        first.release()
        waited = await task
        ticker.cancel()
        return waited, before

    waited, ticks = run(main())
    assert waited >= 0.25
    assert ticks >= 20, "the event loop did not run while a task waited"


def test_many_waiting_tasks_one_helper_thread_and_mutual_exclusion(mgr):
    inside = 0
    worst = 0
    threads_seen = set()

    async def worker(k: int) -> None:
        nonlocal inside, worst
        for _ in range(5):
            async with await mgr.lock_async(0, 100, timeout=20):
                inside += 1
                worst = max(worst, inside)
                threads_seen.add(threading.active_count())
                await asyncio.sleep(0.001)
                inside -= 1

    async def main():
        await asyncio.gather(*(worker(k) for k in range(40)))

    base = threading.active_count()
    run(main(), timeout=60)
    assert worst == 1
    assert max(threads_seen) <= base + 1, "more than one waiter thread"
    assert mgr.locks(waiting=True) == []


def test_timeout_raises_and_leaves_nothing(mgr):
    async def main():
        held = await mgr.lock_async(0, 10)

        async def other():
            t0 = time.monotonic()
            with pytest.raises(shmslice.LockTimeout):
                await mgr.lock_async(0, 10, timeout=0.2)
            return time.monotonic() - t0

        waited = await asyncio.create_task(other())
        with pytest.raises(shmslice.LockTimeout):
            await asyncio.create_task(mgr.lock_async(0, 10, timeout=0))
        assert [e.waiting for e in mgr.locks(waiting=True)] == [False]
        held.release()
        return waited

    waited = run(main())
    assert 0.15 < waited < 2.0
    assert mgr.locks(waiting=True) == []


def test_cancelling_the_task_withdraws_the_request(mgr):
    async def main():
        held = await mgr.lock_async(0, 10)
        task = asyncio.create_task(mgr.lock_async(0, 10))
        await asyncio.sleep(0.05)
        assert [e.waiting for e in mgr.locks(waiting=True)] == [False, True] or \
            sorted(e.waiting for e in mgr.locks(waiting=True)) == [False, True]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [e.waiting for e in mgr.locks(waiting=True)] == [False]
        # cancelled while the lock is being handed over: released, not leaked
        for _ in range(20):
            task = asyncio.create_task(mgr.lock_async(0, 10))
            await asyncio.sleep(0.002)
            held.release()
            task.cancel()
            try:
                lk = await task
            except asyncio.CancelledError:
                pass
            else:
                lk.release()
            held = await mgr.lock_async(0, 10, timeout=5)
        held.release()

    run(main())
    assert mgr.locks(waiting=True) == []


def test_a_task_asking_again_for_its_own_region_gets_deadlock_error(mgr):
    async def main():
        async with await mgr.lock_async(0, 10):
            with pytest.raises(shmslice.DeadlockError, match="task"):
                await mgr.lock_async(5, 6, timeout=5)

    run(main())


def test_a_cycle_between_two_tasks_fails_one_request(mgr):
    async def main():
        x_held, y_held = asyncio.Event(), asyncio.Event()

        async def a():
            async with await mgr.lock_async(0, 10):
                x_held.set()
                await y_held.wait()
                try:
                    async with await mgr.lock_async(10, 20, timeout=10):
                        return "granted"
                except shmslice.DeadlockError:
                    return "deadlock"

        async def b():
            async with await mgr.lock_async(10, 20):
                y_held.set()
                await x_held.wait()
                await asyncio.sleep(0.1)     # a queues first
                try:
                    async with await mgr.lock_async(0, 10, timeout=10):
                        return "granted"
                except shmslice.DeadlockError:
                    return "deadlock"

        return await asyncio.gather(a(), b())

    assert run(main()) == ["granted", "deadlock"]


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_waiting_for_another_process_and_in_a_forked_child(data_file, lock_dir, mgr):
    c = mp.get_context("fork")
    ready, result = c.Event(), c.Queue()
    held = mgr.lock(0, 10)
    child = c.Process(target=helpers.async_wait_in_child,
                      args=(str(data_file), str(lock_dir), ready, result), daemon=True)
    run(asyncio.sleep(0))                # the waiter thread exists in the parent before fork
    child.start()
    assert ready.wait(30)
    time.sleep(0.3)
    held.release()
    ticks = result.get(timeout=30)
    assert ticks >= 20
    assert end_process(child, 30)


def test_release_from_another_thread(mgr):
    async def main():
        lk = await mgr.lock_async(0, 10)
        await asyncio.to_thread(lk.release)
        assert not lk.locked
        async with await mgr.lock_async(0, 10, timeout=0):
            pass

    run(main())


def test_mapped_file_and_slice_lock_async(data_file, lock_dir):
    async def main():
        with shmslice.open(data_file, "r+", lock_dir=lock_dir) as mf:
            s = mf[100:200]
            async with await s.lock_async("shared") as lk:
                assert (lk.start, lk.end, lk.mode) == (100, 200, "shared")
            async with await mf.lock_async(0, 50, timeout=1) as lk:
                assert lk.mode == "exclusive"
            s.release()

    run(main())


def test_bad_arguments(mgr):
    async def main():
        with pytest.raises(ValueError, match="greater than start"):
            await mgr.lock_async(10, 5)
        with pytest.raises(TypeError):
            await mgr.lock_async(0, 10, timeout="x")
        with pytest.raises(ValueError, match="mode must be"):
            await mgr.lock_async(0, 10, mode="both")

    run(main())


def test_more_waiting_tasks_than_one_futex_waitv_watches(mgr):
    """200 tasks wait at once (futex_waitv watches 128 words): all get the lock."""
    order: list[int] = []

    async def worker(k: int) -> None:
        async with await mgr.lock_async(0, 10, timeout=60):
            order.append(k)

    async def main():
        held = await mgr.lock_async(0, 10)
        tasks = [asyncio.create_task(worker(k)) for k in range(200)]
        deadline = time.monotonic() + 30
        while sum(e.waiting for e in mgr.locks(waiting=True)) < 200:
            assert time.monotonic() < deadline, "the tasks never all queued"
            await asyncio.sleep(0.01)
        held.release()
        await asyncio.gather(*tasks)

    run(main(), timeout=90)
    assert sorted(order) == list(range(200))
    assert mgr.locks(waiting=True) == []


def test_the_waiter_thread_ends_when_idle_and_comes_back(mgr):
    def waiter_threads() -> int:
        return sum(t.name == "shmslice-lock-waiter" for t in threading.enumerate())

    async def wait_once() -> None:
        held = await mgr.lock_async(0, 10)
        task = asyncio.create_task(mgr.lock_async(0, 10, timeout=10))
        await asyncio.sleep(0.05)
        assert waiter_threads() == 1
        held.release()
        (await task).release()

    run(wait_once())
    deadline = time.monotonic() + 10
    while waiter_threads():
        assert time.monotonic() < deadline, "the idle waiter thread did not end"
        time.sleep(0.05)
    run(wait_once())                     # a new one serves the next wait


def _waiter_from_another_process(data_file, lock_dir, mgr):
    """A lock another process holds is handed over when it releases (the
    holder is spawned: the waiter thread of the test before may still run)."""
    c = mp.get_context("spawn")
    ready, release = c.Event(), c.Event()
    holder = c.Process(target=helpers.hold_until, args=(str(data_file), str(lock_dir), 0, 10,
                                                        ready, release), daemon=True)
    holder.start()
    try:
        assert ready.wait(30), "the holder did not start"

        async def main():
            task = asyncio.create_task(mgr.lock_async(0, 10, timeout=20))
            await asyncio.sleep(0.2)
            assert not task.done()
            t0 = time.monotonic()
            release.set()
            (await task).release()
            return time.monotonic() - t0

        assert run(main()) < 5
    finally:
        release.set()
        end_process(holder)


@pytest.mark.parametrize("body", [
    test_two_tasks_conflict_like_two_threads_and_the_loop_keeps_running,
    test_many_waiting_tasks_one_helper_thread_and_mutual_exclusion,
    test_timeout_raises_and_leaves_nothing,
    test_cancelling_the_task_withdraws_the_request,
    test_more_waiting_tasks_than_one_futex_waitv_watches,
    _waiter_from_another_process,
], ids=lambda f: f.__name__.removeprefix("test_").removeprefix("_"))
def test_without_futex_waitv(body, data_file, lock_dir, mgr):
    """The same, on the fallback kernels before 5.16 (or a seccomp filter that
    refuses futex_waitv) get: one word slept on, at most 1 ms at a time."""
    from shmslice._binding import lib

    lib.ss_debug_set_no_waitv(1)
    try:
        if body is _waiter_from_another_process:
            body(data_file, lock_dir, mgr)
        else:
            body(mgr)
    finally:
        lib.ss_debug_set_no_waitv(0)
