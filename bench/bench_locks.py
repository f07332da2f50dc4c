"""Benchmark shmslice's LockManager against the locks a user would pick instead.

    python bench/bench_locks.py            # full run (about a minute)
    python bench/bench_locks.py --quick    # smoke run (a few seconds; rough numbers)

Three measurements, all in one run so that ratios compare like with like:

1. Uncontended ``lk = mgr.lock(0, 4096); lk.release()`` against ``fcntl.lockf``
   and OFD locks on the same range, portalocker and fasteners.
2. Two processes handing an exclusive lock back and forth (shmslice grants
   conflicting requests FIFO, so once both are queued they strictly alternate;
   this is checked) against a ping-pong over two ``multiprocessing.Semaphore``.
   Measured with the two processes pinned to two CPUs (the figure that counts:
   a handoff needs both running) and again where the scheduler puts them.
3. Lock+release in this process while ANOTHER process holds 10, 1,000 and
   50,000 locks on disjoint ranges of the same file.

Every figure is the median of several repeats (min beside it) and competitors
are measured interleaved; ratios are the median of the per-repeat ratios.
Single-process figures are this thread's CPU time per operation (user + system,
so system calls count), printed beside wall-clock, which on a shared machine
also counts the time spent waiting for a CPU; handoffs are wall-clock.  Targets
from issue 2 are printed as PASS/MISS, never asserted.  The run ends with a
markdown table for README.md.  Temporary files (data files and lock tables, via
``lock_dir=``) live in a temporary directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import fcntl
import multiprocessing
import os
import queue
import shutil
import statistics
import struct
import sys
import tempfile
import time
import timeit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    Stats,
    add_common_args,
    fmt_ratio,
    fmt_us,
    machine_info,
    markdown_table,
    make_timer,
    measure_interleaved,
    paired_ratio,
    print_section,
    settings_from_args,
    verdict,
)

try:
    import shmslice
    from shmslice._binding import lib as _lib
except ImportError as _err:  # pragma: no cover - depends on the environment
    raise SystemExit(f"cannot import shmslice ({_err}); run with the project's venv, "
                     "e.g. .venv/bin/python bench/bench_locks.py") from None

try:
    import portalocker
except ImportError:  # optional competitor
    portalocker = None
try:
    import fasteners
except ImportError:  # optional competitor
    fasteners = None

# Issue 2 targets.
TARGET_UNCONTENDED_S = 1.5e-6   # median lock+release
TARGET_VS_LOCKF = 2.0           # shmslice at least this many times faster than fcntl.lockf
TARGET_VS_LIBS = 30.0           # ... and than portalocker / fasteners
TARGET_HANDOFF_RATIO = 1.5      # one-way handoff at most this many times a Semaphore ping-pong
TARGET_SCALING_RATIO = 2.0      # lock+release with 50,000 held entries vs with 10

REGION = (0, 4096)              # the range every uncontended/scaling measurement locks
SCALING_COUNTS = (10, 1_000, 50_000)
HELD_BASE = 8 << 20             # held entries live at HELD_BASE + i*8 .. +4, far from REGION
WAIT_S = 120.0                  # bound on every cross-process wait

START_METHOD = "spawn"


def log(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def make_data_file(directory: str, name: str, size: int = 4096) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(b"\0" * size)
    return path


def speedup(ours: Stats, theirs: Stats) -> tuple[float, float, float]:
    """shmslice speed-up over `theirs`: ratio of medians, of mins, median of per-repeat ratios."""
    return theirs.median / ours.median, theirs.min / ours.min, paired_ratio(theirs, ours)


def _c_handle(mgr):
    """The manager's cffi ``ss_handle *`` (private), or None once closed."""
    h = mgr._handle
    return None if h.closed else h._cdata


# ==========================================================================
# 1. Uncontended lock + release
# ==========================================================================

def bench_uncontended(tmp: str, settings) -> dict:
    print_section("1. Uncontended lock + release of [0, 4096) (one process, nothing else in the table)")
    lock_dir = os.path.join(tmp, "locks")
    path = make_data_file(tmp, "uncontended.dat")
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    fd = os.open(path, os.O_RDWR)
    ofd_fd = os.open(path, os.O_RDWR)
    closers = [mgr.close, lambda: os.close(fd), lambda: os.close(ofd_fd)]
    a, b = REGION
    cases: dict[str, timeit.Timer] = {}
    labels: dict[str, str] = {}

    def add(key: str, label: str, stmt: str, glb: dict) -> None:
        cases[key] = make_timer(stmt, glb)
        labels[key] = label

    try:
        add("shmslice", "shmslice  lk = mgr.lock(0, 4096); lk.release()",
            f"lk = mgr.lock({a}, {b}); lk.release()", {"mgr": mgr})
        add("shmslice_shared", "shmslice  same, mode='shared'",
            f"lk = mgr.lock({a}, {b}, mode='shared'); lk.release()", {"mgr": mgr})
        cptr = _c_handle(mgr)
        if cptr is not None:
            add("shmslice_c", "shmslice  C core only: lib.ss_lock + lib.ss_release via cffi",
                f"r = ss_lock(h, {a}, {b}, EXCL, -1); ss_release(h, r)",
                {"ss_lock": _lib.ss_lock, "ss_release": _lib.ss_release, "h": cptr,
                 "EXCL": _lib.SS_EXCLUSIVE})
        add("reference", "(machine-speed reference: pure-Python `o = C(); o.a = 1; f(o)`)",
            "o = C(); o.a = 1; f(o)", {"C": type("C", (), {}), "f": lambda o: o})
        # Competitors: names pre-bound (fewer attribute look-ups than user code
        # would do), which only flatters them.
        add("lockf", "fcntl.lockf(fd, LOCK_EX/LOCK_UN, 4096, 0)",
            f"lockf(fd, LOCK_EX, {b - a}, {a}); lockf(fd, LOCK_UN, {b - a}, {a})",
            {"lockf": fcntl.lockf, "fd": fd, "LOCK_EX": fcntl.LOCK_EX, "LOCK_UN": fcntl.LOCK_UN})
        f_ofd_setlkw = getattr(fcntl, "F_OFD_SETLKW", 38)   # Linux value
        # struct flock on Linux/x86-64 and aarch64: short, short, off_t, off_t, pid_t (+pad) = 32 bytes
        wr = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, a, b - a, 0)
        un = struct.pack("hhqqi4x", fcntl.F_UNLCK, os.SEEK_SET, a, b - a, 0)
        add("ofd", "OFD lock: fcntl(fd, F_OFD_SETLKW, flock) lock+unlock",
            "fcntl(fd, SETLKW, WR); fcntl(fd, SETLKW, UN)",
            {"fcntl": fcntl.fcntl, "fd": ofd_fd, "SETLKW": f_ofd_setlkw, "WR": wr, "UN": un})
        if portalocker is not None:
            pl_fh = open(path, "r+b")  # noqa: SIM115 - closed below
            closers.append(pl_fh.close)
            add("portalocker_fn", "portalocker.lock(fh, LOCK_EX); portalocker.unlock(fh) (whole file)",
                "plock(fh, EX); punlock(fh)",
                {"plock": portalocker.lock, "punlock": portalocker.unlock, "fh": pl_fh,
                 "EX": portalocker.LOCK_EX})
            pl_lock = portalocker.Lock(os.path.join(tmp, "portalocker.lock"), timeout=None)
            add("portalocker_obj", "portalocker.Lock(path): .acquire(); .release() (whole file)",
                "L.acquire(); L.release()", {"L": pl_lock})
        if fasteners is not None:
            f_ipl = fasteners.InterProcessLock(os.path.join(tmp, "fasteners.lock"))
            add("fasteners_ipl", "fasteners.InterProcessLock: .acquire(); .release() (whole file)",
                "L.acquire(); L.release()", {"L": f_ipl})
            f_rw = fasteners.InterProcessReaderWriterLock(os.path.join(tmp, "fasteners_rw.lock"))
            add("fasteners_rw", "fasteners.InterProcessReaderWriterLock: acquire/release_write_lock",
                "L.acquire_write_lock(); L.release_write_lock()", {"L": f_rw})

        timing = measure_interleaved(cases, settings.repeats, settings.seconds_per_repeat, progress=log)
    finally:
        for close in reversed(closers):
            try:
                close()
            except Exception:   # noqa: BLE001 - best effort cleanup
                pass

    res = {key: t.cpu for key, t in timing.items()}      # figures and verdicts: CPU time
    wall = {key: t.wall for key, t in timing.items()}
    width = max(len(v) for v in labels.values())
    print(f"  median (min) of {settings.repeats} repeats per lock+release pair; CPU = this thread's "
          "user+system time, wall = elapsed")
    print(f"  {'':<{width}}  {'CPU time':<22}  wall-clock")
    for key in res:
        print(f"  {labels[key]:<{width}}  {res[key].fmt():<22}  {wall[key].fmt()}")
    ours = res["shmslice"]
    out = {"res": res, "wall": wall, "labels": labels, "checks": [], "ratios": {}}
    ok = ours.median <= TARGET_UNCONTENDED_S
    print()
    print(f"  shmslice median {fmt_us(ours.median)} CPU ({fmt_us(wall['shmslice'].median)} wall) "
          f"vs target <= {fmt_us(TARGET_UNCONTENDED_S)}: {verdict(ok)}")
    out["checks"].append(("uncontended", ok))
    if "shmslice_c" in res:
        print(f"  C core called directly through cffi: {fmt_us(res['shmslice_c'].median)}; the Python "
              f"wrapper (LockManager.lock, RegionLock) adds {fmt_us(ours.median - res['shmslice_c'].median)} per pair")
    print("  speed-ups: median over repeats of the ratio within each repeat (the cases run interleaved,")
    print("  so each ratio compares figures taken within a second of each other), CPU time")
    for key, target in (("lockf", TARGET_VS_LOCKF), ("ofd", None), ("portalocker_fn", TARGET_VS_LIBS),
                        ("portalocker_obj", TARGET_VS_LIBS), ("fasteners_ipl", TARGET_VS_LIBS),
                        ("fasteners_rw", TARGET_VS_LIBS)):
        if key not in res:
            print(f"  {key}: not installed, skipped")
            continue
        r_med, r_min, r_pair = speedup(ours, res[key])
        out["ratios"][key] = r_pair
        tail = "(for information)" if target is None else \
            f"target >= {target:g}x: {verdict(r_pair >= target)}"
        if target is not None:
            out["checks"].append((key, r_pair >= target))
        r_wall = wall[key].median / wall["shmslice"].median
        print(f"  shmslice vs {key:<16} {fmt_ratio(r_pair):>7} faster (ratio of medians {fmt_ratio(r_med)}, "
              f"of mins {fmt_ratio(r_min)}; wall-clock medians {fmt_ratio(r_wall)})  {tail}")
    return out


# ==========================================================================
# 2. Exclusive-lock handoff between two processes vs a Semaphore ping-pong
# ==========================================================================

def _lock_rounds(lock, a, b, counter, append, n):
    for _ in range(n):
        lk = lock(a, b)
        c = counter.value
        append(c)
        counter.value = c + 1
        lk.release()


def _sem_rounds(acquire, release, counter, append, n):
    for _ in range(n):
        acquire()
        c = counter.value
        append(c)
        counter.value = c + 1
        release()


def _current_cpu() -> int:
    """CPU this process last ran on (field 39 of /proc/self/stat), or -1."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2:].split()[36])
    except (OSError, ValueError, IndexError):
        return -1


def _handoff_worker(role, path, lock_dir, counter, sem_a, sem_b, barrier, results, plan):
    """One side of the handoff; runs every (placement, cpus, rep, kind, warmup, rounds, tail) of `plan`."""
    mgr = None
    try:
        mgr = shmslice.LockManager(path, lock_dir=lock_dir)
        mine, other = (sem_a, sem_b) if role == 0 else (sem_b, sem_a)
        all_cpus = os.sched_getaffinity(0)
        a, b = REGION
        for placement, cpus, rep, kind, warmup, rounds, tail in plan:
            os.sched_setaffinity(0, {cpus[role]} if cpus else all_cpus)
            seen: list[int] = []
            append = seen.append
            barrier.wait(WAIT_S)
            if kind == "shmslice":
                lock = mgr.lock
                _lock_rounds(lock, a, b, counter, append, warmup)
                t0 = time.perf_counter()
                _lock_rounds(lock, a, b, counter, append, rounds)
                t1 = time.perf_counter()
                cpu = _current_cpu()
                _lock_rounds(lock, a, b, counter, append, tail)
            else:
                acq, rel = mine.acquire, other.release
                _sem_rounds(acq, rel, counter, append, warmup)
                t0 = time.perf_counter()
                _sem_rounds(acq, rel, counter, append, rounds)
                t1 = time.perf_counter()
                cpu = _current_cpu()
                _sem_rounds(acq, rel, counter, append, tail)
            timed = seen[warmup:warmup + rounds]
            # Strict alternation: between two of my acquisitions the other side had exactly one.
            breaks = sum(1 for x, y in zip(timed, timed[1:]) if y - x != 2)
            results.put(("ok", role, (placement, rep, kind), t1 - t0, len(seen), breaks, cpu))
    except BaseException as err:  # noqa: BLE001 - reported to the parent
        try:
            results.put(("error", role, f"{type(err).__name__}: {err}"))
        except Exception:  # noqa: BLE001
            pass
        raise
    finally:
        if mgr is not None:
            mgr.close()


def _stop_processes(procs) -> None:
    for p in procs:
        p.join(timeout=5)
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)


def _handoff_placements() -> list[tuple[str, tuple[int, int] | None]]:
    """Two processes pinned to two different CPUs (when there are two), then the scheduler's choice."""
    cpus = sorted(os.sched_getaffinity(0))
    out: list[tuple[str, tuple[int, int] | None]] = []
    if len(cpus) >= 2:
        out.append((f"pinned to CPUs {cpus[0]} and {cpus[1]}", (cpus[0], cpus[1])))
    out.append(("unpinned, scheduler's choice", None))
    return out


def bench_handoff(tmp: str, settings) -> dict:
    print_section("2. Exclusive lock handed back and forth between two processes "
                  "vs multiprocessing.Semaphore ping-pong")
    ctx = multiprocessing.get_context(START_METHOD)
    lock_dir = os.path.join(tmp, "locks")
    path = make_data_file(tmp, "handoff.dat")
    rounds = 500 if settings.quick else 3_000
    warmup = tail = 100 if settings.quick else 300
    repeats = settings.repeats if settings.quick else min(settings.repeats, 9)
    placements = _handoff_placements()
    plan = []
    for placement, cpus in placements:
        for rep in range(repeats):
            kinds = ("shmslice", "semaphore") if rep % 2 == 0 else ("semaphore", "shmslice")
            plan.extend((placement, cpus, rep, kind, warmup, rounds, tail) for kind in kinds)
    counter = ctx.RawValue("q", 0)
    sem_a, sem_b = ctx.Semaphore(1), ctx.Semaphore(0)
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=_handoff_worker, name=f"handoff-{role}",
                         args=(role, path, lock_dir, counter, sem_a, sem_b, barrier, results, plan),
                         daemon=True)
             for role in (0, 1)]
    got: dict[tuple[str, int, str], list] = {}
    cpus_seen: dict[tuple[str, int, str], dict[int, int]] = {}
    error = None
    try:
        for p in procs:
            p.start()
        log(f"handoff: {len(plan)} runs of {rounds} timed rounds per side ({START_METHOD} workers)")
        # Generous bound: even at 1 ms per handoff every run finishes well within it.
        deadline = time.monotonic() + WAIT_S + 0.002 * (rounds + warmup + tail) * len(plan)
        received = 0
        while received < 2 * len(plan):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                error = "timed out waiting for the handoff workers"
                break
            try:
                msg = results.get(timeout=min(remaining, 5.0))
            except queue.Empty:
                if not all(p.is_alive() for p in procs) and results.empty():
                    error = "a handoff worker exited early: " + ", ".join(
                        f"{p.name} exitcode={p.exitcode}" for p in procs)
                    break
                continue
            if msg[0] == "error":
                error = f"handoff worker {msg[1]} failed: {msg[2]}"
                break
            _, role, key, elapsed, n_seen, breaks, cpu = msg
            got.setdefault(key, []).append((role, elapsed, n_seen, breaks))
            cpus_seen.setdefault(key, {})[role] = cpu
            received += 1
    finally:
        if error:
            barrier.abort()
        _stop_processes(procs)
    out = {"checks": [], "ok": error is None, "rows": []}
    if error:
        print(f"  ERROR: {error}")
        out["checks"].append(("handoff", False))
        return out

    print(f"  {repeats} repeats x {rounds} timed rounds per side (+{warmup} warm-up, +{tail} tail), "
          "shmslice and Semaphore runs interleaved; median (min) of repeats")
    print("  one-way = a side's timed wall time / (2 x real handoffs in it), averaged over the two sides")
    pairs = (rounds - 1) * 2 * repeats
    for index, (placement, _) in enumerate(placements):
        # With strict alternation a side's timed window spans 2 x rounds one-way handoffs.
        # When the other side has not queued its next request yet (it is still in the
        # futex wake of its release, waits for the table mutex, lost its CPU, or both
        # sides share one CPU) this side re-acquires without a handoff: a "break".
        # Each break removes two handoffs from the window, so one-way =
        # elapsed / (2 x (rounds - breaks)): conservative for shmslice, whose cheap
        # re-acquisitions are charged as if they were handoffs.
        stats = {"shmslice": Stats(), "semaphore": Stats()}
        naive = Stats()   # shmslice elapsed / (2 x rounds), ignoring breaks
        breaks_total = {"shmslice": 0, "semaphore": 0}
        acquisitions = {"shmslice": [0, 0], "semaphore": [0, 0]}
        pair_ratios = []
        for rep in range(repeats):
            per_kind = {}
            for kind in stats:
                sides = got[(placement, rep, kind)]
                per_op = statistics.mean(el / (2 * max(1, rounds - br)) for _, el, _, br in sides)
                stats[kind].add(per_op)
                per_kind[kind] = per_op
                if kind == "shmslice":
                    naive.add(statistics.mean(el for _, el, _, _ in sides) / (2 * rounds))
                for role, _, n_seen, br in sides:
                    breaks_total[kind] += br
                    acquisitions[kind][role] += n_seen
            pair_ratios.append(per_kind["shmslice"] / per_kind["semaphore"])
        ours, sem = stats["shmslice"], stats["semaphore"]
        print(f"  -- {placement}")
        print(f"     shmslice exclusive handoff, one-way   {ours.fmt()}")
        print(f"     Semaphore ping-pong, one-way          {sem.fmt()}")
        for kind in stats:
            same = sum(1 for rep in range(repeats)
                       if len(set(cpus_seen[(placement, rep, kind)].values())) == 1)
            print(f"     {kind:<9} runs with both sides on the same CPU at the end of the timed loop: "
                  f"{same} of {repeats}")
        for kind in stats:
            n0, n1 = acquisitions[kind]
            nb = breaks_total[kind]
            state = "strict" if nb == 0 else \
                f"{nb} of {pairs} consecutive acquisitions by one side ({100 * nb / pairs:.1f}%) " \
                "were not separated by exactly one acquisition of the other side"
            print(f"     alternation ({kind:<9}): acquisitions side0={n0} side1={n1}; {state}")
        share = breaks_total["shmslice"] / pairs
        if breaks_total["shmslice"]:
            print(f"     (elapsed / (2 x rounds) would give shmslice {naive.fmt()})")
        ratio = statistics.median(pair_ratios)
        # A few breaks are corrected for above; past a quarter of the rounds the runs are
        # mostly one process re-acquiring alone and there is no handoff left to time.
        reliable = share <= 0.25
        primary = index == 0
        ok = ratio <= TARGET_HANDOFF_RATIO and reliable
        if reliable:
            tail_text = f"target <= {TARGET_HANDOFF_RATIO:g}x: {verdict(ok)}" if primary else "(for information)"
            print(f"     ratio shmslice / Semaphore (median of per-repeat ratios): {fmt_ratio(ratio)} "
                  f"(ratio of medians {fmt_ratio(ours.median / sem.median)}, of mins "
                  f"{fmt_ratio(ours.min / sem.min)})  {tail_text}")
            if share > 0.01:
                print(f"     note: {100 * share:.1f}% of shmslice rounds did not alternate: the other process had not")
                print("     queued its next request yet (still in its release's wake-up system call, waiting for the")
                print("     table mutex, or descheduled), so the runner re-acquired; the one-way figure above")
                print("     counts only real handoffs (and charges those re-acquisitions to them)")
        else:
            print(f"     NOT A HANDOFF FIGURE: the shmslice runs did not alternate in {100 * share:.0f}% of rounds.")
            print("     The other process was not running most of the time (on one CPU with the runner, see above,")
            print("     or descheduled by the hypervisor): the runner never finds it queued, so it keeps")
            print("     re-acquiring alone for its whole time slice instead of handing the lock over.")
            print(f"     ratio {fmt_ratio(ratio)} not meaningful" +
                  (f"; target <= {TARGET_HANDOFF_RATIO:g}x: MISS (no valid figure)" if primary else
                   " (for information only)"))
        if primary:
            out["checks"].append(("handoff", ok))
        out["rows"].append(dict(placement=placement, ours=ours, sem=sem, ratio=ratio, ok=ok,
                                primary=primary, reliable=reliable, share=share))
    return out


# ==========================================================================
# 3. Cost with many entries held by another process
# ==========================================================================

def _holder(paths, counts, lock_dir, ready, stop, results):
    """Take counts[i] shared locks on disjoint ranges of paths[i]; hold them until `stop`."""
    mgrs, kept = [], []
    try:
        for path, n in zip(paths, counts):
            mgr = shmslice.LockManager(path, lock_dir=lock_dir)
            mgrs.append(mgr)
            lock = mgr.lock
            held = []
            for i in range(n):
                s = HELD_BASE + i * 8
                held.append(lock(s, s + 4, "shared", 0))
            kept.append(held)
        results.put(("ready", os.getpid()))
        ready.set()
        stop.wait(WAIT_S * 5)
    except BaseException as err:  # noqa: BLE001 - reported to the parent
        results.put(("error", f"{type(err).__name__}: {err}"))
        raise
    finally:
        for mgr in mgrs:
            mgr.close()


def bench_scaling(tmp: str, settings) -> dict:
    print_section("3. Lock + release of [0, 4096) while another process holds N locks "
                  "on disjoint ranges")
    ctx = multiprocessing.get_context(START_METHOD)
    lock_dir = os.path.join(tmp, "locks")
    paths = [make_data_file(tmp, f"scaling_{n}.dat") for n in SCALING_COUNTS]
    ready, stop = ctx.Event(), ctx.Event()
    results = ctx.Queue()
    holder = ctx.Process(target=_holder, name="holder", daemon=True,
                         args=(paths, SCALING_COUNTS, lock_dir, ready, stop, results))
    mgrs = []
    out = {"checks": []}
    try:
        holder.start()
        if not ready.wait(WAIT_S):
            print(f"  ERROR: the holder process did not get ready within {WAIT_S:g} s "
                  f"(exitcode {holder.exitcode})")
            out["checks"].append(("scaling", False))
            return out
        msg = results.get(timeout=WAIT_S)
        if msg[0] == "error":
            print(f"  ERROR: holder failed: {msg[1]}")
            out["checks"].append(("scaling", False))
            return out
        holder_pid = msg[1]
        cases = {}
        entries = []
        a, b = REGION
        for n, path in zip(SCALING_COUNTS, paths):
            mgr = shmslice.LockManager(path, lock_dir=lock_dir)
            mgrs.append(mgr)
            st = mgr.stat()
            held = [e for e in mgr.locks() if e.pid == holder_pid]
            entries.append(f"{st.used:,} ({len(held):,} of them granted to pid {holder_pid})")
            if len(held) != n or st.used != n:
                print(f"  WARNING: table for N={n} has {st.used} entries, {len(held)} of the holder's")
            mid = HELD_BASE + (n // 2) * 8 + 4      # a free gap in the middle of the held ranges
            cases[("exclusive", n)] = make_timer(f"lk = mgr.lock({a}, {b}); lk.release()", {"mgr": mgr})
            cases[("shared", n)] = make_timer(f"lk = mgr.lock({a}, {b}, mode='shared'); lk.release()",
                                              {"mgr": mgr})
            cases[("exclusive-mid", n)] = make_timer(f"lk = mgr.lock({mid}, {mid + 4}); lk.release()",
                                                     {"mgr": mgr})
        log(f"scaling: holder pid {holder_pid} holds {', '.join(map(str, SCALING_COUNTS))} locks")
        timing = measure_interleaved(cases, settings.repeats, settings.seconds_per_repeat, progress=log)
    finally:
        for mgr in mgrs:
            mgr.close()
        stop.set()
        _stop_processes([holder])

    labels = {
        "exclusive": "exclusive [0, 4096)",
        "shared": "shared [0, 4096)",
        "exclusive-mid": "exclusive, 4-byte gap amid the held ranges",
    }
    print(f"  entries in the three tables before measuring: {'; '.join(entries)}")
    res = {key: t.cpu for key, t in timing.items()}
    wall = {key: t.wall for key, t in timing.items()}
    print(f"  CPU time per lock+release pair, median (min) of {settings.repeats} repeats interleaved across N; "
          "wall-clock medians below")
    print(f"  {'N held by the other process':<44}" + "".join(f"{n:>22,}" for n in SCALING_COUNTS)
          + "   ratio N=50,000 / N=10 (median per-repeat)")
    out["res"] = res
    for mode, label in labels.items():
        row = "".join(f"{res[(mode, n)].fmt():>22}" for n in SCALING_COUNTS)
        hi, lo = res[(mode, SCALING_COUNTS[-1])], res[(mode, SCALING_COUNTS[0])]
        r = paired_ratio(hi, lo)
        ok = r <= TARGET_SCALING_RATIO
        out["checks"].append((f"scaling {mode}", ok))
        print(f"  {label:<44}{row}   {fmt_ratio(r)} (of medians {fmt_ratio(hi.median / lo.median)})  "
              f"target <= {TARGET_SCALING_RATIO:g}x: {verdict(ok)}")
    print("  wall-clock medians (include time this process waited for a CPU):")
    for mode, label in labels.items():
        row = "".join(f"{fmt_us(wall[(mode, n)].median):>22}" for n in SCALING_COUNTS)
        r = wall[(mode, SCALING_COUNTS[-1])].median / wall[(mode, SCALING_COUNTS[0])].median
        print(f"  {label:<44}{row}   {fmt_ratio(r)}")
    return out


# ==========================================================================
# Report
# ==========================================================================

def summary_table(settings, unc, hand, scal) -> str:
    rows = []
    if unc:
        res, labels = unc["res"], unc["labels"]
        ours = res["shmslice"]
        rows.append(["Uncontended `lk = mgr.lock(0, 4096); lk.release()`",
                     f"{fmt_us(ours.median)} (min {fmt_us(ours.min, bare=True)})", "—", "—",
                     f"≤ {fmt_us(TARGET_UNCONTENDED_S)}", verdict(ours.median <= TARGET_UNCONTENDED_S)])
        names = {
            "lockf": ("`fcntl.lockf` lock+unlock, same range", TARGET_VS_LOCKF),
            "ofd": ("OFD lock (`F_OFD_SETLKW`) lock+unlock, same range", None),
            "portalocker_fn": ("`portalocker.lock(fh)` + `unlock(fh)` (whole file)", TARGET_VS_LIBS),
            "portalocker_obj": ("`portalocker.Lock(path)` acquire+release (whole file)", TARGET_VS_LIBS),
            "fasteners_ipl": ("`fasteners.InterProcessLock` acquire+release (whole file)", TARGET_VS_LIBS),
            "fasteners_rw": ("`fasteners.InterProcessReaderWriterLock` write lock+release", TARGET_VS_LIBS),
        }
        for key, (label, target) in names.items():
            if key not in res:
                continue
            r = unc["ratios"][key]
            rows.append([f"vs {label}", fmt_us(ours.median), fmt_us(res[key].median),
                         f"{fmt_ratio(r)} faster",
                         "info" if target is None else f"≥ {target:g}x",
                         "" if target is None else verdict(r >= target)])
    if hand and hand.get("ok"):
        for row in hand["rows"]:
            if not row["primary"] and not row["reliable"]:
                continue   # explained in section 2; no handoff figure to show
            result = verdict(row["ok"]) if row["primary"] else ""
            if not row["reliable"]:
                result += f" ({100 * row['share']:.0f}% not alternating)"
            rows.append([f"Exclusive-lock handoff between 2 processes ({row['placement']}), one-way, "
                         "vs `multiprocessing.Semaphore` ping-pong",
                         fmt_us(row["ours"].median), fmt_us(row["sem"].median),
                         f"{fmt_ratio(row['ratio'])} the time",
                         f"≤ {TARGET_HANDOFF_RATIO:g}x" if row["primary"] else "info", result])
    if scal and "res" in scal:
        res = scal["res"]
        lo, mid, hi = SCALING_COUNTS
        for mode, label in (("exclusive", "exclusive [0, 4096)"), ("shared", "shared [0, 4096)"),
                            ("exclusive-mid", "exclusive, amid the held ranges")):
            r = paired_ratio(res[(mode, hi)], res[(mode, lo)])
            rows.append([f"Lock+release, {label}, with {lo:,} / {mid:,} / {hi:,} entries held by another process",
                         " / ".join(fmt_us(res[(mode, n)].median) for n in SCALING_COUNTS), "—",
                         f"{fmt_ratio(r)} (50,000 vs 10)", f"≤ {TARGET_SCALING_RATIO:g}x",
                         verdict(r <= TARGET_SCALING_RATIO)])
    return markdown_table(["Measurement", "shmslice", "Alternative", "Ratio", "Target", "Result"], rows)


def _common_cpu() -> str:
    return machine_info()[0].split(";")[0].replace("CPU: ", "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--only", choices=("uncontended", "handoff", "scaling"), action="append",
                        help="run only this section (may be given more than once)")
    args = parser.parse_args(argv)
    settings = settings_from_args(args)
    sections = args.only or ["uncontended", "handoff", "scaling"]
    command = "python bench/bench_locks.py" + (" --quick" if args.quick else "") + \
        (f" --repeats {args.repeats}" if args.repeats else "") + \
        "".join(f" --only {s}" for s in args.only or [])

    started = time.perf_counter()
    print(f"shmslice {shmslice.__version__} lock benchmark: {command}")
    for line in machine_info():
        print(f"  {line}")
    print(f"  portalocker {getattr(portalocker, '__version__', 'not installed') if portalocker else 'not installed'}, "
          f"fasteners {getattr(fasteners, '__version__', '?') if fasteners else 'not installed'}; "
          f"multiprocessing start method {START_METHOD}; "
          f"{settings.repeats} repeats per figure, ~{settings.seconds_per_repeat:g} s each")
    sys.stdout.flush()

    tmp = tempfile.mkdtemp(prefix="shmslice-bench-")
    unc = hand = scal = None
    try:
        if "uncontended" in sections:
            unc = bench_uncontended(tmp, settings)
        if "handoff" in sections:
            hand = bench_handoff(tmp, settings)
        if "scaling" in sections:
            scal = bench_scaling(tmp, settings)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    checks = [c for part in (unc, hand, scal) if part for c in part["checks"]]
    elapsed = time.perf_counter() - started
    print_section("Summary")
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    print(f"  {sum(ok for _, ok in checks)} of {len(checks)} targets met; run took {elapsed:.0f} s; "
          f"load average at end {load}")
    if settings.quick:
        print("  (--quick: rough numbers; run without --quick for the README table)")
    print()
    ref = ""
    if unc and "reference" in unc["res"]:
        ref = (f"; machine-speed reference (a pure-Python `o = C(); o.a = 1; f(o)`) "
               f"{fmt_us(unc['res']['reference'].median)}")
    print(f"Command: `{command}` — medians of {settings.repeats} interleaved repeats "
          f"(handoff: {min(settings.repeats, 9) if not settings.quick else settings.repeats}); "
          "single-process figures are CPU time per operation, handoffs wall-clock; "
          "ratios are medians of per-repeat ratios; "
          f"{os.cpu_count()} CPUs ({_common_cpu()}), Python {sys.version.split()[0]}{ref}.")
    print()
    print(summary_table(settings, unc, hand, scal))
    return 0


if __name__ == "__main__":
    sys.exit(main())
