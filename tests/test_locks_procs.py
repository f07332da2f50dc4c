"""LockManager across real processes: fork and spawn, SIGKILL, zombies, pid
reuse, fairness, fork inheritance, repair after a death inside the table."""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import random
import signal
import time

import psutil
import pytest

import shmslice
from shmslice._binding import table_constants, table_layout
from tests import _lockhelpers as helpers
from tests.support import end_process, wait_pid, wait_until

START_METHODS = ["fork", "spawn"]


def _span(field: str) -> tuple[int, int]:
    """[start, stop) of a header field in the table file, from the core's layout."""
    off, size = table_layout()[field]
    return off, off + size


def ctx(method: str):
    return mp.get_context(method)


def start(c, target, *args):
    p = c.Process(target=target, args=args, daemon=True)
    p.start()
    return p


def stop(p, timeout: float = 10.0) -> None:
    assert end_process(p, timeout), f"{p} did not finish within {timeout} s"


def wait_set(event, what: str, timeout: float = 20.0) -> None:
    assert event.wait(timeout), f"timed out waiting for {what}"


@pytest.mark.parametrize("method", START_METHODS)
def test_exclusive_excludes_and_shared_shares_across_processes(method, data_file, lock_dir):
    c = ctx(method)
    ready, done = c.Event(), c.Event()
    holder = start(c, helpers.hold_lock, str(data_file), str(lock_dir), 0, 100, "shared", ready, done)
    wait_set(ready, "the holder")
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        mgr.lock(50, 150, mode="shared", timeout=0).release()
        with pytest.raises(shmslice.LockTimeout, match=str(holder.pid)):
            mgr.lock(99, 101, timeout=0)
        [info] = mgr.locks()
        assert (info.pid, info.kind, info.alive) == (holder.pid, "shared", True)
        done.set()
        stop(holder)
        mgr.lock(0, 100, timeout=0).release()


@pytest.mark.parametrize("method", START_METHODS)
def test_waiter_in_other_process_gets_lock_on_release(method, data_file, lock_dir):
    c = ctx(method)
    started, result = c.Event(), c.Queue()
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        held = mgr.lock(0, 10)
        waiter = start(c, helpers.wait_for_lock, str(data_file), str(lock_dir), 5, 6, "exclusive",
                       started, result)
        wait_set(started, "the waiter")
        wait_until(lambda: any(e.waiting for e in mgr.locks(waiting=True)), "the waiter to queue",
                   timeout=10)
        released_at = time.time()
        held.release()
        status, granted_at = result.get(timeout=10)
        stop(waiter)
    assert status == "ok"
    assert granted_at - released_at < 0.5


def test_blocked_waiter_sleeps_in_the_kernel(data_file, lock_dir):
    c = ctx("fork")
    started, result = c.Event(), c.Queue()
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        held = mgr.lock(0, 10)
        waiter = start(c, helpers.wait_for_lock, str(data_file), str(lock_dir), 0, 10, "shared",
                       started, result)
        wait_set(started, "the waiter")
        time.sleep(0.2)
        proc = psutil.Process(waiter.pid)
        before = proc.cpu_times()
        time.sleep(1.0)
        after = proc.cpu_times()
        held.release()
        assert result.get(timeout=10)[0] == "ok"
        stop(waiter)
    busy = (after.user + after.system) - (before.user + before.system)
    assert busy < 0.1, f"waiter burned {busy:.3f} s of CPU in 1 s of waiting"


@pytest.mark.parametrize("method", START_METHODS)
@pytest.mark.parametrize("reap_child", [True, False], ids=["waited", "zombie"])
def test_sigkilled_holder_is_replaced_within_bound(method, reap_child, data_file, lock_dir):
    c = ctx(method)
    ready, started, result = c.Event(), c.Event(), c.Queue()
    holder = start(c, helpers.hold_and_hang, str(data_file), str(lock_dir), 0, 100, "exclusive", ready)
    wait_set(ready, "the holder")
    waiter = start(c, helpers.wait_for_lock, str(data_file), str(lock_dir), 10, 20, "exclusive",
                   started, result)
    wait_set(started, "the waiter")
    time.sleep(0.3)   # let the waiter block in the kernel
    killed_at = time.time()
    os.kill(holder.pid, signal.SIGKILL)
    if reap_child:
        holder.join(5)
    else:
        # Leave the holder a zombie (not waited for): it must still count as dead.
        wait_until(lambda: psutil.Process(holder.pid).status() == psutil.STATUS_ZOMBIE,
                   "the killed holder to become a zombie", timeout=5, interval=0.005)
    status, granted_at = result.get(timeout=10)
    stop(waiter)
    holder.join(5)
    assert status == "ok"
    delay = granted_at - killed_at
    assert delay < 0.25, f"waiter got the lock {delay * 1000:.0f} ms after the holder died"


def test_dead_owner_entries_reclaimed_on_demand_and_by_reap(data_file, lock_dir):
    c = ctx("fork")
    holders = []
    for i in range(3):
        ready = c.Event()
        holders.append(start(c, helpers.hold_and_hang, str(data_file), str(lock_dir),
                             i * 100, i * 100 + 50, "shared", ready))
        wait_set(ready, "a holder")
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        mgr.pin(1000, 2000)
        assert len(mgr.locks()) == 4
        for h in holders:
            os.kill(h.pid, signal.SIGKILL)
            h.join(5)
        entries = mgr.locks()
        assert sorted(e.alive for e in entries) == [False, False, False, True]
        # In someone's way: reclaimed automatically.
        mgr.lock(0, 50, timeout=0).release()
        assert mgr.reap() == 2
        assert mgr.reap() == 0
        [pin] = mgr.locks()
        assert pin.kind == "pin" and pin.alive


def test_pid_reuse_does_not_fool_liveness(data_file, lock_dir):
    """A dead owner whose recorded pid now belongs to a live process is still dead."""
    c = ctx("fork")
    ready = c.Event()
    holder = start(c, helpers.hold_and_hang, str(data_file), str(lock_dir), 0, 100, "exclusive", ready)
    wait_set(ready, "the holder")
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(5)
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        # Rewrite the dead holder's recorded pid to a live process (ours, and
        # our parent's), exactly what pid reuse would do.
        dead_pid = holder.pid
        with open(mgr.table_path, "r+b") as f, mmap.mmap(f.fileno(), 0) as table:
            const = table_constants()
            pid_off, pid_size = table_layout()["proc.pid"]
            proc_slots = int.from_bytes(table[slice(*_span("hdr.proc_capacity"))], "little")
            rewritten = 0
            for slot in range(proc_slots):
                off = const["header_bytes"] + const["proc_bytes"] * slot + pid_off
                pid = int.from_bytes(table[off:off + pid_size], "little", signed=True)
                if pid == dead_pid:
                    table[off:off + pid_size] = os.getppid().to_bytes(pid_size, "little", signed=True)
                    rewritten += 1
            assert rewritten == 1
        [entry] = mgr.locks()
        assert entry.pid == os.getppid() and not entry.alive
        mgr.lock(0, 100, timeout=0).release()
        assert mgr.locks() == []


@pytest.mark.parametrize("method", START_METHODS)
def test_waiting_writer_is_not_starved_by_readers(method, data_file, lock_dir):
    c = ctx(method)
    stop_evt = c.Event()
    count = c.Value("i", 0)
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        readers = [start(c, helpers.stream_shared, str(data_file), str(lock_dir), 0, 4096,
                         stop_evt, count) for _ in range(3)]
        # Readers overlap continuously once they have taken 30 locks between them.
        wait_until(lambda: count.value >= 30, "the readers to get going")
        t0 = time.monotonic()
        try:
            lk = mgr.lock(1000, 2000, timeout=5)
            waited = time.monotonic() - t0
            # While the writer holds it, readers of overlapping ranges wait
            # (after those that released just before it finish counting).
            time.sleep(0.1)
            before = count.value
            time.sleep(0.2)
            assert count.value == before
            lk.release()
        finally:
            stop_evt.set()
            for r in readers:
                stop(r)
    assert waited < 1.0


def test_shared_request_queues_behind_earlier_waiting_writer(data_file, lock_dir):
    c = ctx("fork")
    ready, done, started, result = c.Event(), c.Event(), c.Event(), c.Queue()
    reader = start(c, helpers.hold_lock, str(data_file), str(lock_dir), 0, 100, "shared", ready, done)
    wait_set(ready, "the reader")
    writer = start(c, helpers.wait_for_lock, str(data_file), str(lock_dir), 0, 100, "exclusive",
                   started, result)
    wait_set(started, "the writer")
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        wait_until(lambda: any(e.waiting for e in mgr.locks(waiting=True)), "the writer to queue",
                   timeout=10)
        # Compatible with the granted reader, but the writer came first and,
        # having waited over the 2 ms barging window, is served in order.
        time.sleep(0.01)
        with pytest.raises(shmslice.LockTimeout):
            mgr.lock(10, 20, mode="shared", timeout=0.2)
        # A shared request that does not overlap the waiting writer is not held up.
        mgr.lock(200, 300, mode="shared", timeout=0).release()
        done.set()
        assert result.get(timeout=10)[0] == "ok"
    stop(reader)
    stop(writer)


def test_a_waiting_writer_that_cannot_run_still_holds_back_later_readers(data_file, lock_dir):
    # A waiter turns urgent at 2 ms whether or not its process gets a CPU to notice: the
    # writer is stopped as soon as it queues, so only a later request can find it due.
    c = ctx("fork")
    ready, done, started, result = c.Event(), c.Event(), c.Event(), c.Queue()
    reader = start(c, helpers.hold_lock, str(data_file), str(lock_dir), 0, 100, "shared", ready, done)
    wait_set(ready, "the reader")
    writer = start(c, helpers.wait_for_lock, str(data_file), str(lock_dir), 0, 100, "exclusive",
                   started, result)
    wait_set(started, "the writer")
    try:
        with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
            wait_until(lambda: any(e.waiting for e in mgr.locks(waiting=True)), "the writer to queue",
                       timeout=10)
            os.kill(writer.pid, signal.SIGSTOP)
            time.sleep(0.01)
            with pytest.raises(shmslice.LockTimeout):
                mgr.lock(10, 20, mode="shared", timeout=0)
            with pytest.raises(shmslice.LockTimeout):
                mgr.lock(10, 20, mode="shared", timeout=0.05)
            mgr.lock(200, 300, mode="shared", timeout=0).release()
            os.kill(writer.pid, signal.SIGCONT)
            done.set()
            assert result.get(timeout=10)[0] == "ok"
    finally:
        os.kill(writer.pid, signal.SIGCONT)
        done.set()
    stop(reader)
    stop(writer)


def _try_shared(mgr, start: int, end: int) -> bool:
    try:
        mgr.lock(start, end, mode="shared", timeout=0).release()
    except shmslice.LockTimeout:
        return False
    return True


@pytest.mark.parametrize("before", ["an_earlier_waiter_left_before_due", "the_table_was_repaired"])
def test_a_stopped_writer_holds_back_readers_after_the_due_bound_moved(data_file, lock_dir, before):
    # The table keeps a lower bound on when the next waiter turns urgent.  An earlier
    # waiter that leaves before it is due leaves the bound early, and a repair resets
    # it; either way the stopped writer must still be found once it is due.
    c = ctx("fork")
    ready, done, started, result = c.Event(), c.Event(), c.Event(), c.Queue()
    reader = start(c, helpers.hold_lock, str(data_file), str(lock_dir), 1000, 1100, "shared",
                   ready, done)
    wait_set(ready, "the reader")
    writer = None
    try:
        with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
            if before == "an_earlier_waiter_left_before_due":
                with pytest.raises(shmslice.LockTimeout):
                    mgr.lock(1000, 1100, mode="exclusive", timeout=0.001)
            writer = start(c, helpers.wait_for_lock, str(data_file), str(lock_dir), 1000, 1100,
                           "exclusive", started, result)
            wait_set(started, "the writer")
            wait_until(lambda: any(e.waiting for e in mgr.locks(waiting=True)),
                       "the writer to queue", timeout=10)
            os.kill(writer.pid, signal.SIGSTOP)
            if before == "the_table_was_repaired":
                repairs = mgr.stat().repairs
                crasher = start(c, helpers.crash_inside_table, str(data_file), str(lock_dir), 1)
                crasher.join(20)
                assert crasher.exitcode == -signal.SIGKILL
            else:
                # Likely before the writer is due (then this moves the bound to the writer's
                # due time); if the writer is due already, it is held back like the next one.
                _try_shared(mgr, 1010, 1020)
            time.sleep(0.01)
            assert not _try_shared(mgr, 1010, 1020), before
            if before == "the_table_was_repaired":
                assert mgr.stat().repairs == repairs + 1
            mgr.lock(1200, 1300, mode="shared", timeout=0).release()
            os.kill(writer.pid, signal.SIGCONT)
            done.set()
            assert result.get(timeout=10)[0] == "ok"
    finally:
        if writer is not None:
            os.kill(writer.pid, signal.SIGCONT)
        done.set()
    stop(reader)
    if writer is not None:
        stop(writer)


def test_forked_child_does_not_release_or_own_parents_locks(data_file, lock_dir):
    mgr = shmslice.LockManager(data_file, lock_dir=lock_dir)
    lk = mgr.lock(0, 100)
    ref = mgr.pin(500, 600)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # child
        code = 0
        try:
            lk.release()          # forgets it here only
            try:
                mgr.unpin(ref)
                code = 10
            except ValueError:
                pass
            try:
                mgr.lock(0, 100, timeout=0)
                code = 11
            except shmslice.LockTimeout:
                pass
            own = mgr.lock(1000, 1100, timeout=0)
            pids = {e.pid for e in mgr.locks()}
            if pids != {os.getpid(), os.getppid()}:
                code = 12
            own.release()
            mgr.close()
        except BaseException:
            code = 13
        os.write(w, bytes([code]))
        os._exit(code)
    status = wait_pid(pid)
    assert os.read(r, 1) == b"\x00" and os.waitstatus_to_exitcode(status) == 0
    entries = mgr.locks()
    assert [(e.kind, e.pid) for e in entries] == [("exclusive", os.getpid()), ("pin", os.getpid())]
    lk.release()
    mgr.unpin(ref)
    mgr.close()


def test_parent_death_is_seen_even_while_forked_child_lives(data_file, lock_dir):
    """The child must not keep its parent's liveness lock alive."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        # Intermediate "parent": takes a lock, forks a long-lived grandchild, dies.
        mgr = shmslice.LockManager(data_file, lock_dir=lock_dir)
        mgr.lock(0, 100)
        grandchild = os.fork()
        if grandchild == 0:
            time.sleep(30)
            os._exit(0)
        os.write(w, grandchild.to_bytes(4, "little"))
        os.kill(os.getpid(), signal.SIGKILL)
    grandchild = int.from_bytes(os.read(r, 4), "little")
    wait_pid(pid)
    try:
        assert psutil.pid_exists(grandchild)
        with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
            mgr.lock(0, 100, timeout=2).release()
            assert mgr.reap() == 0
    finally:
        os.kill(grandchild, signal.SIGKILL)


@pytest.mark.parametrize("point", [1, 2, 3, 4])
def test_death_inside_the_table_is_repaired(point, data_file, lock_dir):
    c = ctx("fork")
    victim = start(c, helpers.crash_inside_table, str(data_file), str(lock_dir), point)
    victim.join(10)
    assert victim.exitcode == -signal.SIGKILL
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        mgr.lock(0, 100, timeout=1).release()   # the shared lock's owner is dead
        assert mgr.stat().repairs == 1
        assert mgr.reap() >= 0
        assert mgr.locks() == []
        for i in range(50):
            mgr.lock(i, i + 1, timeout=0).release()


@pytest.mark.parametrize("method", START_METHODS)
def test_random_stress_never_two_conflicting_holders(method, data_file, lock_dir, tmp_path):
    c = ctx(method)
    rows, span, ops = 4, 48, 250
    board = tmp_path / "board"
    board.write_bytes(bytes(rows * span))
    errors = c.Queue()
    seed = random.randrange(1 << 30)
    print(f"stress seed {seed}")
    workers = [start(c, helpers.stress_worker, str(data_file), str(lock_dir), str(board), row, rows,
                     span, ops, seed + row, errors) for row in range(rows)]
    for w in workers:
        stop(w, 120)
    found = []
    while not errors.empty():
        found.append(errors.get(timeout=1))
    assert found == [], f"seed {seed}: {found[:5]}"
    assert all(w.exitcode == 0 for w in workers)
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        assert mgr.locks(waiting=True) == []


def test_dead_holder_is_replaced_while_unrelated_releases_keep_waking_the_waiter(data_file, lock_dir):
    # Every release wakes every sleeper (one futex word per table).  A waiter
    # woken by releases elsewhere, often enough that its 50 ms timer never
    # fires, must still probe its own holder and find it dead.
    import threading

    c = ctx("fork")
    ready = c.Event()
    holder = start(c, helpers.hold_and_hang, str(data_file), str(lock_dir), 0, 100, "exclusive", ready)
    wait_set(ready, "the holder")
    stop_churn = threading.Event()
    outcome: list = []

    def churn() -> None:
        with shmslice.LockManager(data_file, lock_dir=lock_dir) as other:
            while not stop_churn.is_set():
                other.lock(5000, 5010).release()

    def waiter() -> None:
        with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
            try:
                lk = mgr.lock(10, 20, timeout=5)
            except shmslice.LockTimeout:
                outcome.append(("timeout", time.monotonic()))
                return
            outcome.append(("ok", time.monotonic()))
            lk.release()

    w = threading.Thread(target=waiter)
    w.start()
    ch = threading.Thread(target=churn)
    try:
        time.sleep(0.3)   # the waiter has probed the holder alive and sleeps
        ch.start()
        time.sleep(0.1)
        killed_at = time.monotonic()
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(5)
        w.join(10)
    finally:
        stop_churn.set()
        if ch.ident is not None:
            ch.join(10)
    assert not w.is_alive()
    status, granted_at = outcome[0]
    assert status == "ok", "the waiter never noticed its holder had died"
    assert granted_at - killed_at < 1.0, f"granted {granted_at - killed_at:.2f} s after the death"
