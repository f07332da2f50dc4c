"""Child-process bodies for the deadlock-detection tests (importable, so spawn can run them)."""

from __future__ import annotations

import random
import time

import shmslice


def hold_then_request(path, lock_dir, held, wanted, ready, go, result, release_after=0.0):
    """Lock `held`, say so, wait for `go`, then request `wanted` (bounded).

    Puts (outcome, seconds waited, cycle) on `result`: outcome 'granted',
    'deadlock' or 'timeout'.  After a DeadlockError the held lock is kept
    for `release_after` seconds, so the other members can be seen waiting.
    """
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    lk = mgr.lock(*held, timeout=10)
    ready.set()
    go.wait(20)
    t0 = time.monotonic()
    try:
        got = mgr.lock(*wanted, timeout=15)
    except shmslice.DeadlockError as err:
        result.put(("deadlock", time.monotonic() - t0, [tuple(h) for h in err.cycle]))
        time.sleep(release_after)
        lk.release()
        mgr.close()
        return
    except shmslice.LockTimeout:
        result.put(("timeout", time.monotonic() - t0, []))
        lk.release()
        mgr.close()
        return
    result.put(("granted", time.monotonic() - t0, []))
    got.release()
    lk.release()
    mgr.close()


def _edge_seen(entries, hop) -> bool:
    """The snapshot shows `hop`'s holder's granted entry."""
    return any(not e.waiting and (e.pid, e.tid, e.start, e.end, e.kind) ==
               (hop.holder_pid, hop.holder_tid, hop.held_start, hop.held_end, hop.held_mode)
               for e in entries)


def _wait_seen(entries, hop) -> bool:
    return any(e.waiting and (e.pid, e.tid, e.start, e.end, e.kind) ==
               (hop.pid, hop.tid, hop.start, hop.end, hop.mode) for e in entries)


def check_cycle(mgr, err, wanted, mode) -> str | None:
    """None if the table shows the cycle `err` names, else what is missing.

    Called by the request that got the DeadlockError while it still holds its
    locks: every other member of a real cycle waits (directly or not) for
    those locks, so its waiting request and its holdings stay as they were.
    """
    cycle = err.cycle
    if not cycle:
        return "DeadlockError without a cycle"
    first = cycle[0]
    if (first.start, first.end, first.mode) != (wanted[0], wanted[1], mode):
        return f"the cycle does not start with this request: {first}"
    if cycle[-1].holder_tid != first.tid or cycle[-1].holder_pid != first.pid:
        return f"the cycle does not close at this request's owner: {cycle}"
    entries = mgr.locks(waiting=True)
    for k, hop in enumerate(cycle):
        if k > 0 and not _wait_seen(entries, hop):
            return f"hop {k}: {hop.pid}/{hop.tid} is not waiting for [{hop.start}, {hop.end})"
        if not _edge_seen(entries, hop):
            return f"hop {k}: no entry of {hop.holder_pid}/{hop.holder_tid} on " \
                   f"[{hop.held_start}, {hop.held_end}) {hop.held_mode}"
        a, b = (hop.start, hop.end), (hop.held_start, hop.held_end)
        if not (a[0] < b[1] and b[0] < a[1]) or (hop.mode == "shared" and hop.held_mode == "shared"):
            return f"hop {k}: [{a[0]}, {a[1]}) {hop.mode} does not conflict with {b} {hop.held_mode}"
    return None


def stress_worker(path, lock_dir, seed, seconds, units, stats, problems):
    """Hold one random unit, ask for another (bounded): deadlocks arise by chance.

    Each DeadlockError is checked against the table (check_cycle) before the
    held lock is released; a problem, a LockTimeout (a cycle the detector
    missed: no wait here is longer than the holders' short work) or a
    DeadlockError on a first lock (nothing held: no cycle can pass through
    us) is put on `problems`.
    """
    rng = random.Random(seed)
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    deadline = time.monotonic() + seconds
    ops = deadlocks = 0
    while time.monotonic() < deadline:
        a = rng.randrange(units)
        mode_a = "exclusive" if rng.random() < 0.7 else "shared"
        try:
            first = mgr.lock(a * 8, a * 8 + 8, mode=mode_a, timeout=20)
        except shmslice.DeadlockError as err:
            problems.put(f"DeadlockError holding nothing: {err}")
            break
        except shmslice.LockTimeout as err:
            problems.put(f"first lock timed out (undetected cycle?): {err}")
            break
        b = rng.randrange(units)
        width = rng.choice((1, 1, 2))
        wanted = (b * 8, min(units, b + width) * 8)
        mode_b = "exclusive" if rng.random() < 0.7 else "shared"
        if wanted[0] >= wanted[1] or (wanted[0] < a * 8 + 8 and a * 8 < wanted[1]):
            first.release()
            continue
        try:
            second = mgr.lock(*wanted, mode=mode_b, timeout=20)
        except shmslice.DeadlockError as err:
            deadlocks += 1
            missing = check_cycle(mgr, err, wanted, mode_b)
            if missing:
                problems.put(f"false DeadlockError: {missing}; {err}")
            first.release()
            continue
        except shmslice.LockTimeout as err:
            problems.put(f"second lock timed out (undetected cycle?): {err}")
            first.release()
            break
        ops += 1
        if rng.random() < 0.3:
            time.sleep(rng.random() * 0.001)
        second.release()
        first.release()
    stats.put((ops, deadlocks))
    mgr.close()


def hold_shared_then_upgrade(path, lock_dir, region, ready, go, result, hold_after=0.0):
    """Take a shared lock, say so, wait for `go`, upgrade it (bounded); report
    (outcome, seconds, mode after); keep the lock `hold_after` seconds, release."""
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    lk = mgr.lock(*region, mode="shared", timeout=10)
    ready.set()
    go.wait(20)
    t0 = time.monotonic()
    try:
        lk.upgrade(timeout=15)
        outcome = "upgraded"
    except shmslice.DeadlockError:
        outcome = "deadlock"
    except shmslice.LockTimeout:
        outcome = "timeout"
    result.put((outcome, time.monotonic() - t0, lk.mode))
    time.sleep(hold_after)
    lk.release()
    mgr.close()


def crash_converting(path, lock_dir, point, upgrade):
    """Die by SIGKILL inside the table mutex at crash point `point` while
    upgrading (a free region: converted at once) or downgrading a lock."""
    from shmslice._binding import lib

    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    lk = mgr.lock(0, 100, mode="shared" if upgrade else "exclusive")
    other = mgr.lock(200, 300, mode="shared")
    lib.ss_debug_set_crash_point(point, 1)
    if upgrade:
        lk.upgrade(timeout=5)
    else:
        lk.downgrade()
    other.release()
    import os
    os._exit(3)


def upgrade_after_waiting(path, lock_dir, point, ready):
    """Upgrade a shared lock that another holder keeps, so the upgrade waits
    and is granted through its waiting request; crash point `point` armed."""
    from shmslice._binding import lib

    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    lk = mgr.lock(0, 100, mode="shared")
    lib.ss_debug_set_crash_point(point, 1)
    ready.set()
    lk.upgrade(timeout=10)
    import os
    os._exit(3)


def async_wait_in_child(path, lock_dir, ready, result):
    """In a (forked) child: wait for a lock through lock_async while ticking."""
    import asyncio

    async def main():
        mgr = shmslice.LockManager(path, lock_dir=lock_dir)
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        ticker = asyncio.create_task(tick())
        ready.set()
        lk = await mgr.lock_async(0, 10, timeout=20)
        ticker.cancel()
        lk.release()
        mgr.close()
        return ticks

    result.put(asyncio.run(main()))


def hold_and_die(path, lock_dir, start, end, mode, ready):
    """Take a lock, say so, and kill ourselves with SIGKILL while holding it."""
    import os
    import signal

    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    mgr.lock(start, end, mode=mode, timeout=10)
    ready.set()
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGKILL)


def hold_until(path, lock_dir, start, end, ready, release):
    """Hold an exclusive lock on [start, end) until `release` is set (at most 60 s)."""
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    lk = mgr.lock(start, end)
    ready.set()
    release.wait(60)
    lk.release()
    mgr.close()
