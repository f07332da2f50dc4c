#!/usr/bin/env python3
"""Kill chaos for the shmslice lock table.

W worker processes take and release shared and exclusive locks and pins on
overlapping regions of one file at random.  A controller SIGKILLs a random
worker every few milliseconds and forks a replacement; some workers also arm
the C core's crash-point hook (ss_debug_set_crash_point) so that they kill
themselves *inside* the table mutex (allocating, publishing, unlinking or
freeing an entry, or half way through a repair).  With ``--sigint-ms`` the
controller also sends SIGINT to a random worker every so often: half of the
workers' handlers raise (only while the worker is inside ``lock()``; the
request must then be withdrawn, leaving no entry), the others return (the
wait must go on with its place kept).
Crash points also fall inside a growth (of the entry or process-slot table,
between allocating the new range and publishing it).
Now and then a worker takes a burst of hundreds of pins at once (and drops
them again), so the entry table keeps growing through its doublings while
the others lock and check.

What is checked, and by whom:

* Mutual exclusion, by the workers themselves.  A shared record (an mmap'ed
  file) has one row per worker slot with one byte per unit of the file:
  0 free, 1 shared, 2 exclusive.  A worker marks its row after it is granted a
  lock and clears it before releasing; on entry and again before leaving it
  reads every other row.  A conflicting byte is a violation unless the row's
  owner is dead (a killed holder's stale mark): the checker polls until the
  owner is dead or replaced (stale, fine) or clears the mark while alive /
  keeps it for 3 s (a real second holder: violation).
* Count exactness, by the workers: now and then a worker compares its own
  entries in ``locks()`` with the pins it believes it holds.
* No deadlock, by the controller: every live worker bumps a heartbeat after
  each operation; one that does not move for --stall seconds fails the run
  (every lock wait is also bounded: a LockTimeout after 10 s is a failure).
* Nothing left over, by the controller at the end: workers freeze (holding
  only pins), half of them are killed, ``reap()`` runs, and the table must
  hold exactly the live workers' pins with the counts they believe; after
  every worker has closed, the table must be empty.

Usage::

    python tools/chaos.py --kills 2000           # the long run
    python tools/chaos.py --kills 200 --json     # what the pytest run does
    SHMSLICE_CHAOS_SEED=42 python tools/chaos.py --kills 2000   # replay a seed

Exit status 0 if clean, 1 on any violation, stall, crash or leftover.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import random
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter, deque

from _children import wait_pid

UNIT = 4096
GLOBAL_BYTES = 4096
ROW_BYTES = 256               # row header 64 bytes, marks from offset 64
MARKS = 96
# Global fields
G_STOP, G_EXIT = 0, 4
# Row fields: pid q@0, incarnation Q@8, heartbeat Q@16, lock ops checked Q@24,
# pin ops Q@32, count checks Q@40, frozen I@48, forked children Q@56, table full Q@64,
# SIGINTs handled Q@72, lock waits interrupted Q@80, armed crash point I@88 (marks start at
# MARKS), conversions Q@ROW_BYTES-8 (after the marks)
R_PID, R_INC, R_BEAT, R_OPS, R_PINS, R_COUNTS, R_FROZEN, R_FORKS = 0, 8, 16, 24, 32, 40, 48, 56
R_FULL, R_SIGINTS, R_INTERRUPTED, R_POINT = 64, 72, 80, 88
R_CONVERTS = ROW_BYTES - 8   # upgrades and downgrades done (after the marks)
# Crash points of the C core (csrc/shmslice.c lists them); 9 is table creation,
# outside the mutex, exercised by the lifecycle tests.  1-8: entries, indexes,
# repair; 10-11: growth; 20-21: converting a lock (upgrade, downgrade); 22: a
# dead holder's lock becoming an owner-died mark.
CRASH_POINTS = [1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 20, 21, 22]
GROWTH_POINTS = (10, 11)
LOCK_TIMEOUT = 10.0
STALE_POLL_S = 3.0


class Record:
    def __init__(self, path: str, rows: int, units: int, create: bool) -> None:
        size = GLOBAL_BYTES + rows * ROW_BYTES
        assert units <= R_CONVERTS - MARKS
        if create:
            with open(path, "wb") as f:
                f.write(b"\0" * size)
        fd = os.open(path, os.O_RDWR)
        self.mm = mmap.mmap(fd, size)
        os.close(fd)
        self.rows, self.units = rows, units

    def row(self, slot: int) -> int:
        return GLOBAL_BYTES + slot * ROW_BYTES

    def get(self, off: int, fmt: str = "<Q") -> int:
        return struct.unpack_from(fmt, self.mm, off)[0]

    def put(self, off: int, value: int, fmt: str = "<Q") -> None:
        struct.pack_into(fmt, self.mm, off, value)

    def bump(self, off: int) -> None:
        struct.pack_into("<Q", self.mm, off, struct.unpack_from("<Q", self.mm, off)[0] + 1)

    def marks(self, slot: int, a: int, b: int) -> bytes:
        o = self.row(slot) + MARKS
        return self.mm[o + a:o + b]

    def set_marks(self, slot: int, a: int, b: int, code: int) -> None:
        o = self.row(slot) + MARKS
        self.mm[o + a:o + b] = bytes([code]) * (b - a)


def pid_dead(pid: int) -> bool:
    """Dead for the purpose of stale marks: gone, or a zombie (exit in progress
    counts as alive; the poll just waits for it to finish)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return True
    state = stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3]
    return state in (b"Z", b"X")


def conflicting(seg: bytes, exclusive: bool) -> bool:
    return any(seg) if exclusive else 2 in seg


# ---------------------------------------------------------------------------
# Worker (a forked child of the controller)
# ---------------------------------------------------------------------------

class Interrupted(Exception):
    """What a raising SIGINT handler raises (inside lock() only)."""


def worker(slot: int, incarnation: int, args: argparse.Namespace, paths: dict) -> None:
    import shmslice
    from shmslice._binding import lib

    rng = random.Random(f"{args.seed}:{slot}:{incarnation}")
    rec = Record(paths["record"], args.workers, args.units, create=False)
    # SIGINT: a handler that raises while armed (inside lock()), disarming
    # itself so that it raises at most once per lock() call, or one that returns.
    sigint = {"armed": False, "raising": rng.random() < 0.5}

    def on_sigint(signum: int, frame: object) -> None:
        rec.bump(rec.row(slot) + R_SIGINTS)
        if sigint["raising"] and sigint["armed"]:
            sigint["armed"] = False
            raise Interrupted
    signal.signal(signal.SIGINT, on_sigint)
    me = os.getpid()
    row = rec.row(slot)
    rec.set_marks(slot, 0, args.units, 0)         # a dead predecessor's stale marks
    rec.put(row + R_INC, incarnation)
    rec.put(row + R_PID, me, "<q")
    rec.put(row + R_FROZEN, 0, "<I")
    rec.put(row + R_POINT, 0, "<I")
    point_armed = 0
    if rng.random() < args.crash_prob:
        point = point_armed = rng.choice(CRASH_POINTS)
        rec.put(row + R_POINT, point, "<I")
        # Growth happens a few times per run, so its points fire on the first pass.
        lib.ss_debug_set_crash_point(point, 1 if point in GROWTH_POINTS else rng.randint(1, 40))
    mgr = shmslice.LockManager(paths["data"], lock_dir=paths["lock_dir"],
                               max_entries=args.capacity or None)
    pins: list[tuple[int, int, int]] = []
    history: deque = deque(maxlen=12)   # the last lock operations, for a failure's message
    if point_armed >= 10:
        grow_now(mgr, point_armed, args.units, paths)

    def after_interrupt(lk: object) -> None:
        """A lock() interrupted by the raising handler: the request must be gone.
        If it was granted just before the handler ran, the lock object was never
        returned (or not yet released): release it, or start a new manager."""
        nonlocal mgr
        rec.bump(row + R_INTERRUPTED)
        if lk is not None:
            lk.release()  # type: ignore[attr-defined]
        left = [e for e in mgr.locks(waiting=True) if e.pid == me and e.kind != "pin"]
        if any(e.waiting for e in left):
            fail(f"an interrupted lock() left its request waiting: {left}; now {time.time()}; "
                 f"last operations {list(history)}")
        if len(left) > 1:
            fail(f"an interrupted lock() left {len(left)} locks: {left}")
        if left:   # granted, never bound to a name: only closing the manager drops it
            old = [(s, e) for _, s, e in pins]
            mgr.close()
            mgr = shmslice.LockManager(paths["data"], lock_dir=paths["lock_dir"],
                                       max_entries=args.capacity or None)
            pins[:] = [(mgr.pin(s, e), s, e) for s, e in old]

    def fail(msg: str) -> None:
        sys.stderr.write(f"chaos worker slot {slot} pid {me}: VIOLATION {msg}\n")
        sys.stderr.flush()
        os._exit(3)

    def check(a: int, b: int, exclusive: bool, when: str) -> None:
        for v in range(args.workers):
            if v == slot:
                continue
            vrow = rec.row(v)
            inc1, pid1 = rec.get(vrow + R_INC), rec.get(vrow + R_PID, "<q")
            seg = rec.marks(v, a, b)
            if not conflicting(seg, exclusive):
                continue
            deadline = time.monotonic() + STALE_POLL_S
            while True:
                # The marks first, then whether their writer is gone.  A slot's next
                # incarnation clears its predecessor's marks, and is started only
                # once the controller has reaped the predecessor, so marks found
                # cleared before a check that still finds the writer alive were
                # cleared by that live writer.  (The other way round, a holder whose
                # exit was in progress -- its locks already released, not yet a
                # zombie -- could be reaped and replaced between the two reads and
                # look like a live holder letting go.)
                now_seg = rec.marks(v, a, b)
                if rec.get(vrow + R_INC) != inc1 or pid_dead(pid1):
                    break   # a dead holder's stale mark: the table reclaimed its lock
                if not conflicting(now_seg, exclusive):
                    fail(f"{when}: holding {'exclusive' if exclusive else 'shared'} units "
                         f"[{a},{b}) while live slot {v} (pid {pid1}) held {list(seg)} there")
                if time.monotonic() > deadline:
                    fail(f"{when}: live slot {v} (pid {pid1}) keeps conflicting marks "
                         f"{list(now_seg)} on units [{a},{b}) we hold")
                time.sleep(0.001)

    while not rec.get(G_STOP, "<I"):
        r = rng.random()
        if r < 0.6:
            a = rng.randrange(args.units)
            b = min(args.units, a + rng.randint(1, args.max_len))
            exclusive = rng.random() < 0.4
            lk = None
            try:
                # --sabotage (checker self-test): writers take shared locks.
                mode = "exclusive" if exclusive and not args.sabotage else "shared"
                sigint["armed"] = True
                history.append(("lock", a, b, exclusive, time.time()))
                try:
                    lk = mgr.lock(a * UNIT, b * UNIT, mode, timeout=LOCK_TIMEOUT)
                finally:
                    sigint["armed"] = False
            except Interrupted:
                after_interrupt(lk)
                rec.bump(row + R_BEAT)
                continue
            except shmslice.LockTimeout as exc:
                fail(f"lock [{a},{b}) not granted in {LOCK_TIMEOUT} s: {exc}")
            except shmslice.LockTableFull:
                if not args.capacity:
                    raise
                rec.bump(row + R_FULL)   # a small table (--capacity) full of live entries
                rec.bump(row + R_BEAT)
                continue
            rec.set_marks(slot, a, b, 2 if exclusive else 1)
            check(a, b, exclusive, "entry")
            if rng.random() < 0.5:
                time.sleep(rng.random() * args.hold_ms / 1000)
            if rng.random() < args.convert_prob and not args.sabotage:
                # Convert in place: the mark is weakened before a downgrade (we
                # are still exclusive) and strengthened only after an upgrade.
                if exclusive:
                    rec.set_marks(slot, a, b, 1)
                    lk.downgrade()
                    exclusive = False
                    check(a, b, False, "downgraded")
                else:
                    try:
                        history.append(("upgrade", a, b, time.time()))
                        lk.upgrade(timeout=LOCK_TIMEOUT)
                    except shmslice.DeadlockError as exc:
                        # another holder upgrades an overlapping lock: stays shared
                        history.append(("deadlock", str(exc)[:200], time.time()))
                    except shmslice.LockTableFull:
                        if not args.capacity:
                            raise
                        rec.bump(row + R_FULL)   # no room for the upgrade request: stays shared
                    except shmslice.LockTimeout as exc:
                        fail(f"upgrade [{a},{b}) not granted in {LOCK_TIMEOUT} s: {exc}")
                    else:
                        exclusive = True
                        rec.set_marks(slot, a, b, 2)
                        check(a, b, True, "upgraded")
                rec.bump(row + R_CONVERTS)
            check(a, b, exclusive, "exit")
            rec.set_marks(slot, a, b, 0)
            lk.release()
            rec.bump(row + R_OPS)
        elif r < 0.78:
            start = rng.randrange(args.units) * UNIT
            end = start + UNIT * rng.randint(1, 3)
            try:
                pins.append((mgr.pin(start, end), start, end))
            except shmslice.LockTableFull:
                if not args.capacity:
                    raise
                rec.bump(row + R_FULL)
            rec.bump(row + R_PINS)
        elif r < 0.95:
            if pins:
                ref, _, _ = pins.pop(rng.randrange(len(pins)))
                mgr.unpin(ref)
                rec.bump(row + R_PINS)
        elif r < 0.985:
            want = Counter((s, e) for _, s, e in pins)
            mine = [e for e in mgr.locks() if e.pid == me and e.alive]
            got = {(e.start, e.end): e.count for e in mine if e.kind == "pin"}
            others = [e for e in mine if e.kind != "pin"]
            if got != dict(want) or others:
                fail(f"locks() shows {got} pins and {others} locks; this worker holds {dict(want)}")
            rec.bump(row + R_COUNTS)
        elif r < 0.99:
            mgr.reap()
        elif r < 0.995:
            burst(mgr, rng, fail, args.units)
            rec.bump(row + R_PINS)
        else:
            forked_child(mgr, rng, pins, fail)
            rec.bump(row + R_FORKS)
        rec.bump(row + R_BEAT)

    # Freeze: hold only pins, tell the controller what we hold, wait to be told to exit.
    beliefs = sorted(Counter((s, e) for _, s, e in pins).items())
    tmp = os.path.join(paths["beliefs"], f"{slot}.tmp")
    with open(tmp, "w") as f:
        json.dump({"pid": me, "pins": [[s, e, c] for (s, e), c in beliefs]}, f)
    os.rename(tmp, os.path.join(paths["beliefs"], f"{slot}.json"))
    rec.put(row + R_FROZEN, 1, "<I")
    deadline = time.monotonic() + 120
    while not rec.get(G_EXIT, "<I"):
        if time.monotonic() > deadline:
            fail("never told to exit")
        time.sleep(0.005)
    mgr.close()


def grow_now(mgr, point: int, units: int, paths: dict) -> None:
    """A worker armed with a growth crash point makes the table grow at once
    (so it dies growing while the others go on): pins past the entries left,
    or handles past the process slots left.  Bounded, so the table stays small."""
    import shmslice

    st = mgr.stat()
    if point == 10 and st.capacity < min(st.max_capacity, 1 << 16):
        base = (units + 1 + (1 << 21) + os.getpid() * 65536) * UNIT
        refs = []
        try:
            for k in range(st.capacity - st.used + 1):
                refs.append(mgr.pin(base + k, base + k + 1))
        except shmslice.LockTableFull:
            pass   # others took the room first; the point stays armed
        for ref in refs:    # not dead: the table had grown already (or was full)
            mgr.unpin(ref)
    elif point == 11 and st.proc_capacity < 1024:
        extra = [shmslice.LockManager(paths["data"], lock_dir=paths["lock_dir"])
                 for _ in range(st.proc_capacity - st.procs + 1)]
        for m in extra:
            m.close()


def burst(mgr, rng: random.Random, fail, units: int) -> None:
    """Take a few hundred pins on distinct regions at once, then drop them:
    the table grows while the other workers go on."""
    import shmslice

    base = (units + 1 + rng.randrange(1 << 20)) * UNIT   # past every other pin and lock
    refs = []
    try:
        for k in range(rng.randint(200, 1200)):
            refs.append(mgr.pin(base + k, base + k + 1))
    except shmslice.LockTableFull:
        pass   # only with a small --capacity
    mine = sum(1 for e in mgr.locks() if e.pid == os.getpid() and base <= e.start < base + 1200)
    if mine != len(refs):
        fail(f"a burst of {len(refs)} pins shows {mine} entries in locks()")
    for ref in refs:
        mgr.unpin(ref)


def _die_with_parent() -> None:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def forked_child(mgr, rng: random.Random, pins: list, fail) -> None:
    """Fork a child that uses the inherited LockManager (the C core gives it a
    slot of its own), pins, checks its own entries, and either closes or just
    exits.  Afterwards the parent's own entries must still be alive: a child
    must neither keep the parent's slot alive nor take it down."""
    import shmslice
    mode = rng.choice(["close", "exit", "killed"])
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _die_with_parent()
            me = os.getpid()
            refs = []
            try:
                for u in (rng.randrange(4) for _ in range(3)):
                    refs.append(mgr.pin(u * UNIT, (u + 1) * UNIT))
            except shmslice.LockTableFull:
                pass   # only with a small --capacity; the pins taken are checked below
            mine = [e for e in mgr.locks() if e.pid == me and e.alive]
            if sum(e.count for e in mine) != len(refs) or any(e.kind != "pin" for e in mine):
                sys.stderr.write(f"forked child {me}: entries {mine} for {len(refs)} pins\n")
                code = 3
            elif mode == "close":
                mgr.close()
            elif mode == "killed":
                os.kill(me, signal.SIGKILL)
        except BaseException:
            traceback.print_exc()
            code = 2
        os._exit(code)
    status = wait_pid(pid, 10, interval=0.001)
    if status is None:
        fail("forked child did not finish in 10 s")
        return   # not reached: fail() ends the process
    # SIGKILL in any mode: the child inherits an armed crash point, if any.
    ok = (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL) \
        or (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and mode != "killed")
    if not ok:
        fail(f"forked child ({mode}) ended with status {status}")
    me = os.getpid()
    want = Counter((s, e) for _, s, e in pins)
    got = {(e.start, e.end): e.count for e in mgr.locks() if e.pid == me and e.alive}
    if got != dict(want):
        fail(f"after a forked child ({mode}): parent's live pins {got} != held {dict(want)}")
    if mode != "close":
        mgr.reap()   # the child's pins are a dead owner's: reaped, the parent's stay
        got = {(e.start, e.end): e.count for e in mgr.locks() if e.pid == me}
        if got != dict(want):
            fail(f"after reaping a forked child ({mode}): parent's pins {got} != held {dict(want)}")


def run_worker(slot: int, incarnation: int, args: argparse.Namespace, paths: dict) -> int:
    # Forked with SIGINT ignored, until the worker installs its own handler.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    pid = os.fork()
    if pid:
        signal.signal(signal.SIGINT, previous)
        return pid
    code = 0
    try:
        worker(slot, incarnation, args, paths)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        code = 2
    os._exit(code)


# ---------------------------------------------------------------------------
# Controller
# ---------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict:
    import shmslice

    work = args.dir or tempfile.mkdtemp(prefix="shmslice-chaos-")
    os.makedirs(work, exist_ok=True)
    paths = {"data": os.path.join(work, "data.bin"), "lock_dir": os.path.join(work, "locks"),
             "record": os.path.join(work, "record.bin"), "beliefs": os.path.join(work, "beliefs")}
    os.makedirs(paths["lock_dir"], mode=0o700, exist_ok=True)
    os.makedirs(paths["beliefs"], exist_ok=True)
    with open(paths["data"], "wb") as f:
        f.write(b"\0" * (UNIT * args.units))
    rec = Record(paths["record"], args.workers, args.units, create=True)
    table = shmslice.locks.table_path_for(paths["data"], paths["lock_dir"])
    rng = random.Random(args.seed)

    live: dict[int, int] = {}            # slot -> pid
    by_pid: dict[int, int] = {}          # pid -> slot
    incarnation = Counter()
    beat_seen: dict[int, tuple[int, float]] = {}
    killed: set[int] = set()
    failures: list[str] = []
    counts = Counter()

    def spawn(slot: int) -> None:
        incarnation[slot] += 1
        pid = run_worker(slot, incarnation[slot], args, paths)
        live[slot] = pid
        by_pid[pid] = slot
        beat_seen[slot] = (rec.get(rec.row(slot) + R_BEAT), time.monotonic())

    def collect(block_until: float | None = None) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                if block_until is None or time.monotonic() > block_until or not by_pid:
                    return
                time.sleep(0.002)
                continue
            slot = by_pid.pop(pid, None)
            if slot is None:
                continue
            was_killed = pid in killed
            killed.discard(pid)
            if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
                counts["kills" if was_killed else "crash_point_deaths"] += 1
                if not was_killed and rec.get(rec.row(slot) + R_POINT, "<I") in GROWTH_POINTS:
                    counts["growth_crash_deaths"] += 1
            elif os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and stopping:
                counts["clean_exits"] += 1
            elif os.WIFEXITED(status) and os.WEXITSTATUS(status) == 3:
                failures.append(f"slot {slot} pid {pid}: violation (see stderr)")
            else:
                desc = (f"signal {signal.Signals(os.WTERMSIG(status)).name}"
                        if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}")
                failures.append(f"slot {slot} pid {pid}: died unexpectedly ({desc})")
            if live.get(slot) == pid:
                del live[slot]
                if not stopping and not failures:
                    spawn(slot)

    def check_progress() -> None:
        now = time.monotonic()
        for slot, pid in live.items():
            beat = rec.get(rec.row(slot) + R_BEAT)
            last, since = beat_seen[slot]
            if beat != last:
                beat_seen[slot] = (beat, now)
            elif now - since > args.stall:
                failures.append(f"slot {slot} pid {pid}: no progress for {now - since:.1f} s "
                                f"(table: {describe_table(table)})")

    stopping = False
    started = time.monotonic()
    for slot in range(args.workers):
        spawn(slot)
    next_progress = time.monotonic() + 0.2
    next_sigint = time.monotonic()
    while counts["kills"] + counts["crash_point_deaths"] < args.kills and not failures:
        time.sleep(rng.uniform(args.kill_min_ms, args.kill_max_ms) / 1000)
        collect()
        if failures:
            break
        if args.sigint_ms and live and time.monotonic() >= next_sigint:
            os.kill(live[rng.choice(sorted(live))], signal.SIGINT)
            counts["sigints_sent"] += 1
            next_sigint = time.monotonic() + rng.uniform(0.5, 1.5) * args.sigint_ms / 1000
        if live and rng.random() < args.kill_prob:
            slot = rng.choice(sorted(live))
            pid = live[slot]
            killed.add(pid)
            os.kill(pid, signal.SIGKILL)
            del live[slot]
            spawn(slot)              # the victim is still dying: the table must cope
        if time.monotonic() > next_progress:
            check_progress()
            next_progress = time.monotonic() + 0.2
        if time.monotonic() - started > args.max_seconds:
            failures.append(f"run exceeded --max-seconds {args.max_seconds}")
    chaos_elapsed = time.monotonic() - started

    # ---- final phase ----------------------------------------------------------
    stopping = True
    rec.put(G_STOP, 1, "<I")
    deadline = time.monotonic() + LOCK_TIMEOUT + 20
    while time.monotonic() < deadline:
        collect()
        if all(rec.get(rec.row(s) + R_FROZEN, "<I") for s in live):
            break
        time.sleep(0.01)
    else:
        failures.append("workers did not freeze: " +
                        ", ".join(str(s) for s in live if not rec.get(rec.row(s) + R_FROZEN, "<I")))
    leftover_report = {}
    if not failures:
        # Kill half of the frozen workers: their pins must go at reap().
        victims = sorted(live)[: len(live) // 2]
        for slot in victims:
            pid = live.pop(slot)
            killed.add(pid)
            os.kill(pid, signal.SIGKILL)
        collect(block_until=time.monotonic() + 10)
        if any(p in by_pid for p in killed):
            failures.append("killed workers were not collected in 10 s")
        view = shmslice.TableView(table)
        reaped = view.reap()
        entries = view.locks(waiting=True)
        expect: dict[int, dict] = {}
        for slot, pid in live.items():
            with open(os.path.join(paths["beliefs"], f"{slot}.json")) as f:
                b = json.load(f)
            assert b["pid"] == pid
            expect[pid] = {(s, e): c for s, e, c in b["pins"]}
        got: dict[int, dict] = {pid: {} for pid in expect}
        for e in entries:
            if e.pid not in expect or not e.alive or e.kind != "pin" or e.waiting:
                failures.append(f"after reap, entry not owned by a live worker's pin: {e}")
                continue
            got[e.pid][(e.start, e.end)] = e.count
        for pid, held in expect.items():
            if got[pid] != held:
                failures.append(f"pid {pid}: table pins {got[pid]} != held {held}")
        leftover_report = {"reaped_at_end": reaped, "entries_after_reap": len(entries),
                           "live_workers_at_end": len(live)}
        rec.put(G_EXIT, 1, "<I")
        collect(block_until=time.monotonic() + 20)
        if by_pid:
            failures.append(f"workers did not exit: {sorted(by_pid)}")
        view.reap()
        rest = view.locks(waiting=True)
        # Owner-died marks of regions whose exclusive holder was killed stay
        # (they are news for the next locker, not locks): they may be left.
        marks = [e for e in view.locks(orphaned=True) if e.kind == "orphaned"]
        st = view.stat()
        if rest or st.used != len(marks) or st.waiting or st.procs:
            failures.append(f"after every worker closed: {len(rest)} entries, used {st.used} "
                            f"({len(marks)} owner-died marks), waiting {st.waiting}, "
                            f"procs {st.procs}")
        leftover_report["owner_died_marks"] = len(marks)
        counts["repairs"] = st.repairs
        view.close()
    for pid in list(by_pid):     # only after a failure: stop whatever is left
        killed.add(pid)
        os.kill(pid, signal.SIGKILL)
    collect(block_until=time.monotonic() + 10)

    totals = Counter()
    for slot in range(args.workers):
        r = rec.row(slot)
        totals["lock_ops_checked"] += rec.get(r + R_OPS)
        totals["pin_ops"] += rec.get(r + R_PINS)
        totals["count_checks"] += rec.get(r + R_COUNTS)
        totals["forked_children"] += rec.get(r + R_FORKS)
        totals["table_full"] += rec.get(r + R_FULL)
        totals["sigints_handled"] += rec.get(r + R_SIGINTS)
        totals["interrupted_waits"] += rec.get(r + R_INTERRUPTED)
        totals["conversions"] += rec.get(r + R_CONVERTS)
    return {
        "seed": args.seed, "workers": args.workers,
        "kills": counts["kills"], "crash_point_deaths": counts["crash_point_deaths"],
        "growth_crash_deaths": counts["growth_crash_deaths"],
        "deaths_survived": counts["kills"] + counts["crash_point_deaths"],
        "repairs": counts["repairs"], "sigints_sent": counts["sigints_sent"], **totals,
        **leftover_report,
        "chaos_seconds": round(chaos_elapsed, 2), "failures": failures[:20],
        "work_dir": work,
    }


def describe_table(table: str) -> str:
    import shmslice
    try:
        with shmslice.TableView(table) as v:
            return "; ".join(f"{e.kind} [{e.start},{e.end}) pid {e.pid} alive {e.alive} "
                             f"waiting {e.waiting}" for e in v.locks(waiting=True))[:1500]
    except shmslice.ShmSliceError as exc:
        return f"unreadable: {exc}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=2000, help="deaths to survive (SIGKILLs "
                   "from the controller plus crash-point suicides)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--units", type=int, default=24, help="file size in 4 KiB units")
    p.add_argument("--max-len", type=int, default=6, help="longest lock, in units")
    p.add_argument("--hold-ms", type=float, default=1.0)
    p.add_argument("--kill-min-ms", type=float, default=2.0)
    p.add_argument("--kill-max-ms", type=float, default=15.0)
    p.add_argument("--convert-prob", type=float, default=0.2,
                   help="chance that a held lock is upgraded or downgraded in place")
    p.add_argument("--crash-prob", type=float, default=0.3,
                   help="chance that a worker arms a random crash point")
    p.add_argument("--capacity", type=int, default=0,
                   help="the table's entry ceiling (default: the library's); a small one makes "
                   "it fill up, so allocation must reclaim dead owners' entries")
    p.add_argument("--stall", type=float, default=5.0, help="seconds without progress = deadlock")
    p.add_argument("--max-seconds", type=float, default=3600)
    p.add_argument("--seed", type=int,
                   default=int(os.environ.get("SHMSLICE_CHAOS_SEED", "0")) or None)
    p.add_argument("--dir", help="work directory (default: a new temporary one)")
    p.add_argument("--json", action="store_true", help="print only the JSON summary")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary work directory even after a clean run")
    p.add_argument("--sigint-ms", type=float, default=0.0,
                   help="send SIGINT to a random worker about every this many ms (0: never)")
    p.add_argument("--kill-prob", type=float, default=1.0,
                   help="chance that a controller tick SIGKILLs a worker (lower it to let "
                   "more SIGINTs land in waits)")
    p.add_argument("--sabotage", action="store_true",
                   help="checker self-test: take writers' locks as shared (must fail)")
    args = p.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 2**31)
    if args.workers < 2 or args.units < 2:
        p.error("need at least 2 workers and 2 units")
    if not args.json:
        print(f"chaos: seed {args.seed} (replay: SHMSLICE_CHAOS_SEED={args.seed}), "
              f"{args.workers} workers, {args.kills} deaths", flush=True)
    summary = run(args)
    if not args.json:
        for f in summary["failures"]:
            print(f"FAILURE {f}")
        print(f"deaths survived: {summary['deaths_survived']} ({summary['kills']} SIGKILLs, "
              f"{summary['crash_point_deaths']} inside the C core), lock operations checked: "
              f"{summary['lock_ops_checked']}, pin operations: {summary['pin_ops']}, "
              f"count checks: {summary['count_checks']}, forked children: "
              f"{summary['forked_children']}, repairs: {summary['repairs']}, SIGINTs: "
              f"{summary['sigints_sent']} sent, {summary['interrupted_waits']} interrupted waits, "
              f"in {summary['chaos_seconds']} s")
    if not summary["failures"] and not args.keep and not args.dir:
        shutil.rmtree(summary["work_dir"], ignore_errors=True)
        summary["work_dir"] = None
    print(json.dumps(summary), flush=True)
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
