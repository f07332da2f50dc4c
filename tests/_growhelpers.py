"""Child-process bodies for the table-growth tests (importable, so spawn can run them).

Each reports through a pipe or its exit status and bounds every wait.
"""

from __future__ import annotations

import mmap
import os
import random
import time
from multiprocessing.connection import Connection

import shmslice

UNIT = 4096
#: exit status of a worker that saw two conflicting holders of one unit at once
VIOLATION = 3


def _marks(path: str) -> mmap.mmap:
    fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, 0)
    finally:
        os.close(fd)


def lock_pin_and_grow(data: str, lock_dir: str, record: str, slot: int, workers: int,
                      units: int, seconds: float, burst: int, seed: int) -> None:
    """Lock random unit ranges (shared or exclusive) and check mutual exclusion
    against the other workers' marks in ``record`` (one row of ``units`` bytes
    per worker: 0 free, 1 shared, 2 exclusive); now and then take a burst of
    ``burst`` pins and keep them, so the table keeps growing meanwhile.  At the
    end every pin kept must be in ``locks()``.  Exit status VIOLATION on a
    conflict, 4 on a miscount."""
    rng = random.Random(seed)
    rec = _marks(record)
    mine = slot * units
    mgr = shmslice.LockManager(data, lock_dir=lock_dir)
    kept: list[int] = []
    base = (units + 16 + slot * 1_000_000) * UNIT    # past every lock, apart from other workers
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if rng.random() < 0.04:
            for _ in range(burst):
                k = len(kept)
                kept.append(mgr.pin(base + k, base + k + 1))
            continue
        a = rng.randrange(units)
        b = min(units, a + rng.randint(1, 4))
        exclusive = rng.random() < 0.5
        lk = mgr.lock(a * UNIT, b * UNIT, "exclusive" if exclusive else "shared", timeout=20)
        code = 2 if exclusive else 1
        rec[mine + a:mine + b] = bytes([code]) * (b - a)
        for other in range(workers):
            if other == slot:
                continue
            seg = rec[other * units + a:other * units + b]
            if (exclusive and any(seg)) or (not exclusive and 2 in seg):
                os._exit(VIOLATION)
        if rng.random() < 0.3:
            time.sleep(0.0005)
        rec[mine + a:mine + b] = bytes(b - a)
        lk.release()
    me = os.getpid()
    held = sum(1 for e in mgr.locks() if e.pid == me and e.kind == "pin")
    if held != len(kept):
        os._exit(4)
    mgr.close()


def pin_until_full(data: str, lock_dir: str, max_entries: int, conn: Connection) -> None:
    """Pin distinct regions until LockTableFull; send (count, message); hold
    them until told to go (or 60 s)."""
    mgr = shmslice.LockManager(data, lock_dir=lock_dir, max_entries=max_entries)
    refs = []
    try:
        while len(refs) <= max_entries:
            refs.append(mgr.pin(len(refs) * 2, len(refs) * 2 + 1))
        conn.send((len(refs), "never full"))
    except shmslice.LockTableFull as exc:
        conn.send((len(refs), str(exc)))
    conn.poll(60)
    mgr.close()


def pin_many(data: str, lock_dir: str, handles: int, per: int, base: int,
             conn: Connection) -> None:
    """Pin ``per`` regions through each of ``handles`` handles (interleaved, so
    the owners' entries alternate in the table); report, then hold them until
    told to go (or 60 s)."""
    mgrs = [shmslice.LockManager(data, lock_dir=lock_dir) for _ in range(handles)]
    for r in range(per):
        for k, m in enumerate(mgrs):
            off = base + (r * handles + k) * 16
            m.pin(off, off + 8)
    conn.send("ready")
    conn.poll(60)


def die_growing(data: str, lock_dir: str, point: int, what: str, max_entries: int) -> None:
    """Arm crash point ``point`` and grow the entry table (``what`` = "entries":
    pins) or the process-slot table ("slots": handles) until it fires.
    Exit 4 if it never does."""
    from shmslice._binding import lib

    mgr = shmslice.LockManager(data, lock_dir=lock_dir, max_entries=max_entries)
    refs = [mgr.pin(k * 2, k * 2 + 1) for k in range(100)]
    lib.ss_debug_set_crash_point(point, 1)
    if what == "entries":
        refs += [mgr.pin(k * 2, k * 2 + 1) for k in range(100, max_entries)]
    else:
        more = [shmslice.LockManager(data, lock_dir=lock_dir) for _ in range(5000)]
        del more
    os._exit(4)
