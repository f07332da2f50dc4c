"""Child-process bodies for the lock tests (importable, so spawn can run them)."""

from __future__ import annotations

import mmap
import os
import random
import signal
import time

import shmslice


def hold_lock(path, lock_dir, start, end, mode, ready, done, timeout=30.0):
    """Take a lock, say so, hold it until `done` is set (or timeout), release."""
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    lk = mgr.lock(start, end, mode=mode, timeout=10)
    ready.set()
    done.wait(timeout)
    lk.release()
    mgr.close()


def hold_many(path, lock_dir, n, ready, done, timeout=60.0):
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    held = [mgr.lock(1_000_000 + 16 * i, 1_000_000 + 16 * i + 8, mode="shared") for i in range(n)]
    ready.set()
    done.wait(timeout)
    for lk in held:
        lk.release()
    mgr.close()


def hold_and_hang(path, lock_dir, start, end, mode, ready):
    """Take a lock and sleep until killed."""
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    lk = mgr.lock(start, end, mode=mode, timeout=10)
    ready.set()
    time.sleep(120)
    lk.release()


def try_lock(path, lock_dir, start, end, mode, timeout, result):
    """Put ('ok', waited) or ('timeout', waited) on `result`."""
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    t0 = time.monotonic()
    try:
        lk = mgr.lock(start, end, mode=mode, timeout=timeout)
    except shmslice.LockTimeout:
        result.put(("timeout", time.monotonic() - t0))
        return
    result.put(("ok", time.monotonic() - t0))
    lk.release()
    mgr.close()


def wait_for_lock(path, lock_dir, start, end, mode, started, result):
    """Announce, then block (bounded) until the lock is granted; report the grant time."""
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    started.set()
    try:
        lk = mgr.lock(start, end, mode=mode, timeout=20)
    except shmslice.LockTimeout:
        result.put(("timeout", time.time()))
        return
    result.put(("ok", time.time()))
    lk.release()
    mgr.close()


def crash_inside_table(path, lock_dir, point):
    """Die by SIGKILL inside the table mutex at crash point `point`."""
    from shmslice._binding import lib

    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    mgr.lock(0, 10, mode="shared")
    lib.ss_debug_set_crash_point(point, 1)
    mgr.lock(20, 30).release()   # points 1-2 fire in lock, 3-4 in release
    os._exit(3)


def stress_worker(path, lock_dir, board_path, row, rows, span, ops, seed, errors):
    """Random locks on [0, span); on each grant check the shared board.

    The board has one row per worker and one byte per offset: 0 free, 1 shared,
    2 exclusive.  A worker writes only its own row, after acquiring and before
    releasing, so two conflicting holders at once show up as a conflicting
    byte in another row while we hold the lock.
    """
    rng = random.Random(seed)
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    fd = os.open(board_path, os.O_RDWR)
    board = mmap.mmap(fd, rows * span)
    os.close(fd)
    mine = row * span
    for _ in range(ops):
        a = rng.randrange(span - 1)
        b = rng.randrange(a + 1, min(span, a + 12) + 1)
        mode = "exclusive" if rng.random() < 0.4 else "shared"
        lk = mgr.lock(a, b, mode=mode, timeout=20)
        code = 2 if mode == "exclusive" else 1
        board[mine + a:mine + b] = bytes([code]) * (b - a)
        for other in range(rows):
            if other == row:
                continue
            seen = board[other * span + a:other * span + b]
            bad = any(c != 0 for c in seen) if code == 2 else any(c == 2 for c in seen)
            if bad:
                errors.put(f"worker {row} {mode} [{a},{b}) overlaps worker {other}: {list(seen)}")
        if rng.random() < 0.3:
            time.sleep(0.0005)
        board[mine + a:mine + b] = bytes(b - a)
        lk.release()
    board.close()
    mgr.close()


def stream_shared(path, lock_dir, start, end, stop, count):
    """Keep taking short overlapping shared locks until `stop` is set."""
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    while not stop.is_set():
        try:
            lk = mgr.lock(start, end, mode="shared", timeout=0.05)
        except shmslice.LockTimeout:
            continue
        time.sleep(0.002)
        lk.release()
        with count.get_lock():
            count.value += 1
    mgr.close()


def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)
