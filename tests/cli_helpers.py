"""A process that holds locks and pins for tests/test_cli.py.

    python tests/cli_helpers.py DATA LOCK_DIR SPEC...

Each SPEC is ``KIND:START:END[:N]``: ``pin`` (N references, default 1),
``shared`` or ``exclusive`` (granted before "ready", or the helper fails), or
``wait-shared`` / ``wait-exclusive`` (a request made from a background thread
that is expected to wait behind another process's lock).  The helper prints
``ready <pid>`` once every granted entry is in the table, then holds them until
its standard input closes (the test ends it, or dies), or for at most
``_MAX_HOLD_S``, so a crashed test run never leaves it behind.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Literal

import shmslice

_MAX_HOLD_S = 120


def _wait_for(mgr: shmslice.LockManager, start: int, end: int,
              mode: Literal["shared", "exclusive"]) -> None:
    """Block (bounded) on a conflicting request; it is the waiting entry tests look for."""
    try:
        mgr.lock(start, end, mode, timeout=_MAX_HOLD_S)
    except shmslice.LockTimeout:
        # Expected when the test keeps the conflicting lock until it kills us.
        return


def main(argv: list[str]) -> int:
    path, lock_dir, *specs = argv
    signal.alarm(_MAX_HOLD_S)   # the default SIGALRM action ends the process
    mgr = shmslice.LockManager(path, lock_dir)
    held: list[object] = []
    for spec in specs:
        kind, start_s, end_s, *rest = spec.split(":")
        start, end = int(start_s), int(end_s)
        if kind == "pin":
            for _ in range(int(rest[0]) if rest else 1):
                held.append(mgr.pin(start, end))
        elif kind in ("shared", "exclusive", "wait-shared", "wait-exclusive"):
            mode: Literal["shared", "exclusive"] = "shared" if kind.endswith("shared") else "exclusive"
            if not kind.startswith("wait-"):
                held.append(mgr.lock(start, end, mode, timeout=10))
                continue
            threading.Thread(target=_wait_for, args=(mgr, start, end, mode), daemon=True).start()
        else:
            raise SystemExit(f"cli_helpers: unknown spec {spec!r}")
    print(f"ready {os.getpid()}", flush=True)
    sys.stdin.read()   # returns when the test closes our stdin
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
