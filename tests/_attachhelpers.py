"""Child-process bodies for the attach tests (importable, so spawn can run them).

Each bounds its run and reports through its exit status and a shared counter.
"""

from __future__ import annotations

import random
import time
from typing import Any

import shmslice

#: the churners work here, far from the entries the tests corrupt
BASE = 1 << 30
UNIT = 64


def churn(data: str, lock_dir: str, seed: int, stop: Any, count: Any, seconds: float,
          grow: int = 0) -> None:
    """Change the table all the time: lock and release regions that another
    churner contends for (so some requests wait, are woken and marked
    urgent), and now and then take a burst of pins and drop them (entries
    allocated, freed and reused, the free list and the counters moving).
    With ``grow``, also keep one more pin per round, up to ``grow`` of them,
    so the table's high-water mark (and its capacity) keeps rising.
    Runs until ``stop`` is set or ``seconds`` pass; exit status 0 if every
    call behaved."""
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    kept = []
    with shmslice.LockManager(data, lock_dir=lock_dir) as mgr:
        while not stop.is_set() and time.monotonic() < deadline:
            if len(kept) < grow:
                a = BASE + (4096 + len(kept)) * UNIT
                kept.append(mgr.pin(a, a + 8))
            for _ in range(50):
                a = BASE + rng.randrange(8) * UNIT
                mode = "exclusive" if rng.random() < 0.5 else "shared"
                mgr.lock(a, a + UNIT, mode, timeout=10).release()
            if rng.random() < 0.2:
                refs = [mgr.pin(BASE + 1024 * UNIT + k * UNIT, BASE + 1025 * UNIT + k * UNIT)
                        for k in range(rng.randrange(1, 40))]
                for ref in refs:
                    mgr.unpin(ref)
            count.value += 1
        for ref in kept:
            mgr.unpin(ref)
