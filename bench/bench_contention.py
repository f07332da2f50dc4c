"""The lock table under load: shmslice against the locks a user would pick instead.

    python bench/bench_contention.py            # full run (about 3-5 minutes)
    python bench/bench_contention.py --quick    # smoke run (a few seconds; rough numbers)

Sections (every one prints its targets beside the measured values, PASS/MISS):

1. N = 1, 2, 4, 8, 16 processes on one hot range: exclusive lock, increment a
   counter kept in the locked bytes of a shared mapping, release; shmslice,
   ``fcntl.lockf``, OFD locks (``F_OFD_SETLKW``) and ``multiprocessing.Lock``.
   Throughput, p99 and max acquisition wait, context switches per lock.  The
   counter must end equal to the number of grants: mutual exclusion is
   checked, and a violation makes the run fail loudly (exit status 1).
2. 2 and 8 threads of one process on a hot range: shmslice, OFD locks,
   ``threading.Lock`` (POSIX ``lockf`` locks do not exclude the threads of
   one process, so they are not a candidate here).
3. Uncontended lock+release in this process while 16 other processes wait on
   an unrelated range of the same file (behind a lock this process holds for
   the whole measurement), against the same with no waiters; the same for
   ``lockf`` for comparison.
4. Disjoint ranges: N processes each lock and count in a range of its own;
   total throughput against one process and against ``lockf`` and OFD locks,
   and against the same loop on a file of each process's own (no table
   shared: the ceiling a table split by region could reach).  Then the same
   again with a lighter loop that times no acquisition (4b), in which the
   shared table mutex weighs more.
5. Uncontended lock+release from Python beside ``multiprocessing.Lock``,
   ``threading.Lock`` and ``lockf``.
6. One-way handoff between two processes pinned to different CPUs against a
   ``multiprocessing.Semaphore`` ping-pong (bench_locks.py's verified,
   retried handoff).
7. A PNG (matplotlib, optional) of section 1 -- throughput and p99 wait
   against N -- and a JSON file of every raw figure, in bench/results/ (with
   ``--quick``, in a temporary directory unless ``--out`` is given, so that a
   smoke run never replaces the committed picture).

How the contention runs are made: a pool of 16 worker processes is started
once and driven over pipes.  A run sends its command to N workers, which
meet the parent at a barrier and then lock, count and release for a fixed
time, timing every acquisition.  Cases are interleaved (repeat 1 of every N
and lock kind, then repeat 2 ..., the order of the kinds rotated from repeat
to repeat) and every figure is the median of the repeats with the range
beside it; ratios are medians of per-repeat ratios.  A run whose workers did
not all start within the first half of its duration, or that lost a
worker, is retried (up to RUN_ATTEMPTS times) and flagged loudly if it
never succeeds.  The wait of each acquisition is measured with two clock
reads around the lock call, for every kind alike (they cost ~0.1 us of each
loop, in every kind's throughput).

Targets are printed, never asserted: a benchmark is not a test.  On a
machine shared with other work the numbers move; the ranges say how much.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import mmap
import multiprocessing
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from dataclasses import dataclass, field
from threading import BrokenBarrierError

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

from _common import (  # noqa: E402 - after the sys.path line above
    Spread,
    ctx_switches,
    fmt_ratio,
    fmt_us,
    log,
    machine_info,
    make_timer,
    markdown_table,
    measure_interleaved,
    paired_ratio,
    percentile,
    print_section,
    verdict,
)

try:
    import shmslice
except ImportError as _err:  # pragma: no cover - depends on the environment
    raise SystemExit(f"cannot import shmslice ({_err}); run with the project's venv, "
                     "e.g. .venv/bin/python bench/bench_contention.py") from None

# Targets.
TARGET_HOT_VS_LOCKF = 1.0        # 8 and 16 processes on one hot range: throughput >= lockf's
TARGET_MAX_WAIT_S = 0.050        # 8 processes: no acquisition waits longer than this
TARGET_THREADS_VS_OFD = 1.0      # 2 and 8 threads: throughput >= OFD locks'
TARGET_UNRELATED_RATIO = 1.5     # lock+release with 16 waiters elsewhere vs none
TARGET_DISJOINT_VS_ONE = 1.0     # disjoint ranges: total at N >= total at 1 process
TARGET_DISJOINT_VS_LOCKF = 2.0   # ... and >= 2x lockf's at the same N
TARGET_UNCONTENDED_S = 200e-9    # median lock+release from Python
TARGET_HANDOFF_RATIO = 1.2       # one-way handoff vs a Semaphore ping-pong, pinned apart

PROCS = (1, 2, 4, 8, 16)         # process counts of sections 1 and 4
THREADS = (2, 8)                 # thread counts of section 2
POOL_SIZE = max(PROCS)
WAITERS = 16                     # processes waiting on an unrelated range in section 3
HOT_KINDS = ("shmslice", "lockf", "ofd", "mp.Lock")
THREAD_KINDS = ("shmslice", "ofd", "threading.Lock")
DISJOINT_KINDS = ("shmslice", "shmslice/own", "lockf", "ofd")
# The same without timing each acquisition: a lighter loop, in which the
# table mutex takes a larger share of every operation.
LEAN_KINDS = ("lean:shmslice", "lean:shmslice/own", "lean:lockf")
KIND_LABELS = {
    "shmslice": "shmslice",
    "lockf": "fcntl.lockf",
    "ofd": "OFD lock",
    "mp.Lock": "multiprocessing.Lock",
    "threading.Lock": "threading.Lock",
    "shmslice/own": "shmslice (own table)",
    "lean:shmslice": "shmslice",
    "lean:shmslice/own": "shmslice (own table)",
    "lean:lockf": "fcntl.lockf",
}

HOT = (0, 64)                    # the hot range; its counter is the int64 at offset 0
STRIDE = 4096                    # disjoint range i is [i*STRIDE, i*STRIDE + 64), its counter at its start
UNRELATED = (1 << 16, (1 << 16) + 64)   # the range section 3's waiters queue on
FILE_SIZE = 1 << 20
WAIT_S = 60.0                    # bound on every cross-process wait
RUN_ATTEMPTS = 3                 # tries per contention run before it is flagged as not measured
MAX_START_SKEW = 0.5             # workers of a run must all start within this share of its duration
# (16 CPU-bound processes on 2 CPUs cannot all start at once: each waits for a
# scheduler tick before its first slice, which spreads their starts over tens of ms)

F_OFD_SETLKW = getattr(fcntl, "F_OFD_SETLKW", 38)   # Linux value


def flock_struct(kind: int, start: int, end: int) -> bytes:
    """struct flock (Linux x86-64 / aarch64: short, short, off_t, off_t, pid_t + pad) for [start, end)."""
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, start, end - start, 0)


def own_file(data_path: str, slot: int) -> str:
    """The file whose table only the contender of disjoint range `slot` uses (shmslice/own)."""
    return f"{data_path}.own{slot}"


def make_data_file(directory: str, name: str, size: int = FILE_SIZE) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


# ==========================================================================
# The measured loops (one per kind, each as lean as a user's loop)
# ==========================================================================

class Contender:
    """What one process (or thread) needs to take each kind of lock on the data file."""

    def __init__(self, data_path: str, lock_dir: str, mutex, *, manager=None, words=None) -> None:
        self.mgr = manager if manager is not None else shmslice.LockManager(data_path, lock_dir=lock_dir)
        self.fd_posix = os.open(data_path, os.O_RDWR | os.O_CLOEXEC)
        self.fd_ofd = os.open(data_path, os.O_RDWR | os.O_CLOEXEC)   # its own open file description
        self.mutex = mutex
        if words is None:
            self._map = mmap.mmap(self.fd_posix, FILE_SIZE)
            words = memoryview(self._map).cast("q")
        self.words = words
        self.data_path, self.lock_dir = data_path, lock_dir
        self._own: dict[int, shmslice.LockManager] = {}

    def own_manager(self, slot: int) -> shmslice.LockManager:
        """A manager of a file of this contender's own (one per disjoint range), so that its
        locks go to a table nobody else uses: what a table split by region could reach."""
        mgr = self._own.get(slot)
        if mgr is None:
            mgr = self._own[slot] = shmslice.LockManager(own_file(self.data_path, slot),
                                                         lock_dir=self.lock_dir)
        return mgr

    def close(self) -> None:
        for mgr in self._own.values():
            mgr.close()
        os.close(self.fd_ofd)
        os.close(self.fd_posix)   # drops this process's lockf locks on the file: none are held here

    def run(self, kind: str, slot: int, start: int, end: int, duration_ns: int, barrier,
            gate=None) -> tuple[dict, array]:
        """Meet `barrier` (and then wait for b"go" on the connection `gate`, when given),
        then lock [start, end), add 1 to words[slot], release, for `duration_ns`."""
        loop = _LOOPS[kind]
        barrier.wait(WAIT_S)
        if gate is not None and (not gate.poll(WAIT_S) or gate.recv_bytes() != b"go"):
            raise RuntimeError(f"no start signal within {WAIT_S:g} s")
        vol0, invol0 = ctx_switches()
        t_start = time.perf_counter_ns()
        grants, waits = loop(self, slot, start, end, t_start + duration_ns)
        t_end = time.perf_counter_ns()
        vol1, invol1 = ctx_switches()
        info = {"pid": os.getpid(), "tid": threading.get_native_id(), "grants": grants,
                    "t_start": t_start, "t_end": t_end, "voluntary": vol1 - vol0, "involuntary": invol1 - invol0}
        return info, waits


def _loop_shmslice(res: Contender, slot: int, start: int, end: int, deadline: int):
    return _timed_shmslice(res.mgr, res, slot, start, end, deadline)


def _timed_shmslice(mgr, res: Contender, slot: int, start: int, end: int, deadline: int):
    lock = mgr.lock
    words = res.words
    clock = time.perf_counter_ns
    waits = array("q")
    add = waits.append
    n = 0
    while True:
        t0 = clock()
        lk = lock(start, end)
        t1 = clock()
        words[slot] += 1
        lk.release()
        add(t1 - t0)
        n += 1
        if t1 >= deadline:
            return n, waits


def _loop_shmslice_own(res: Contender, slot: int, start: int, end: int, deadline: int):
    return _timed_shmslice(res.own_manager(slot), res, slot, start, end, deadline)


LEAN_BATCH = 64   # lean loops read the clock once per this many operations and time no acquisition


def _lean_shmslice(mgr, res: Contender, slot: int, start: int, end: int, deadline: int):
    lock = mgr.lock
    words = res.words
    clock = time.perf_counter_ns
    n = 0
    while True:
        for _ in range(LEAN_BATCH):
            lk = lock(start, end)
            words[slot] += 1
            lk.release()
        n += LEAN_BATCH
        if clock() >= deadline:
            return n, array("q")


def _loop_lean_shmslice(res: Contender, slot: int, start: int, end: int, deadline: int):
    return _lean_shmslice(res.mgr, res, slot, start, end, deadline)


def _loop_lean_shmslice_own(res: Contender, slot: int, start: int, end: int, deadline: int):
    return _lean_shmslice(res.own_manager(slot), res, slot, start, end, deadline)


def _loop_lean_lockf(res: Contender, slot: int, start: int, end: int, deadline: int):
    lockf, fd, ex, un, length = fcntl.lockf, res.fd_posix, fcntl.LOCK_EX, fcntl.LOCK_UN, end - start
    words = res.words
    clock = time.perf_counter_ns
    n = 0
    while True:
        for _ in range(LEAN_BATCH):
            lockf(fd, ex, length, start)
            words[slot] += 1
            lockf(fd, un, length, start)
        n += LEAN_BATCH
        if clock() >= deadline:
            return n, array("q")


def _loop_lockf(res: Contender, slot: int, start: int, end: int, deadline: int):
    lockf, fd, ex, un, length = fcntl.lockf, res.fd_posix, fcntl.LOCK_EX, fcntl.LOCK_UN, end - start
    words = res.words
    clock = time.perf_counter_ns
    waits = array("q")
    add = waits.append
    n = 0
    while True:
        t0 = clock()
        lockf(fd, ex, length, start)
        t1 = clock()
        words[slot] += 1
        lockf(fd, un, length, start)
        add(t1 - t0)
        n += 1
        if t1 >= deadline:
            return n, waits


def _loop_ofd(res: Contender, slot: int, start: int, end: int, deadline: int):
    fcntl_, fd, setlkw = fcntl.fcntl, res.fd_ofd, F_OFD_SETLKW
    wr, un = flock_struct(fcntl.F_WRLCK, start, end), flock_struct(fcntl.F_UNLCK, start, end)
    words = res.words
    clock = time.perf_counter_ns
    waits = array("q")
    add = waits.append
    n = 0
    while True:
        t0 = clock()
        fcntl_(fd, setlkw, wr)
        t1 = clock()
        words[slot] += 1
        fcntl_(fd, setlkw, un)
        add(t1 - t0)
        n += 1
        if t1 >= deadline:
            return n, waits


def _loop_mutex(res: Contender, slot: int, start: int, end: int, deadline: int):
    acquire, release = res.mutex.acquire, res.mutex.release
    words = res.words
    clock = time.perf_counter_ns
    waits = array("q")
    add = waits.append
    n = 0
    while True:
        t0 = clock()
        acquire()
        t1 = clock()
        words[slot] += 1
        release()
        add(t1 - t0)
        n += 1
        if t1 >= deadline:
            return n, waits


_LOOPS = {"shmslice": _loop_shmslice, "lockf": _loop_lockf, "ofd": _loop_ofd,
          "mp.Lock": _loop_mutex, "threading.Lock": _loop_mutex, "shmslice/own": _loop_shmslice_own,
          "lean:shmslice": _loop_lean_shmslice, "lean:shmslice/own": _loop_lean_shmslice_own,
          "lean:lockf": _loop_lean_lockf}


# ==========================================================================
# The worker pool
# ==========================================================================

class _WaitTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise _WaitTimeout(f"lock not granted within {WAIT_S:g} s")


def _wait_on(kind: str, path: str, lock_dir: str, start: int, end: int, managers: dict) -> dict:
    """Block on an exclusive lock of [start, end) of `path` (held elsewhere); release it once granted."""
    t0 = time.perf_counter()
    if kind == "shmslice":
        mgr = managers.get(path)
        if mgr is None:
            mgr = managers[path] = shmslice.LockManager(path, lock_dir=lock_dir)
        mgr.lock(start, end, timeout=WAIT_S).release()
    else:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, WAIT_S)   # lockf has no timeout of its own
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX, end - start, start)
            fcntl.lockf(fd, fcntl.LOCK_UN, end - start, start)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            os.close(fd)
    return {"pid": os.getpid(), "waited_s": time.perf_counter() - t0}


def _pool_worker(index: int, conn, data_path: str, lock_dir: str, mp_lock, barriers: dict) -> None:
    """A pool process: runs ("run", ...) and ("wait", ...) commands from `conn` until ("quit",)."""
    res = Contender(data_path, lock_dir, mp_lock)
    managers: dict = {}
    conn.send(("ready", index, os.getpid()))
    while True:
        try:
            cmd = conn.recv()
        except EOFError:
            break
        if cmd[0] == "quit":
            break
        try:
            if cmd[0] == "run":
                _, kind, n, slot, start, end, duration_ns = cmd
                info, waits = res.run(kind, slot, start, end, duration_ns, barriers[n], conn)
                conn.send(("ran", index, info))
                conn.send_bytes(waits.tobytes())
            elif cmd[0] == "wait":
                _, kind, path, start, end = cmd
                conn.send(("waited", index, _wait_on(kind, path, lock_dir, start, end, managers)))
            else:
                raise ValueError(f"unknown command {cmd[0]!r}")
        except BaseException as err:
            conn.send(("error", index, f"{type(err).__name__}: {err}"))
            if not isinstance(err, Exception):
                raise
    for mgr in managers.values():
        mgr.close()
    res.mgr.close()
    res.close()


class PoolError(RuntimeError):
    pass


class Pool:
    """POOL_SIZE worker processes attached to one data file, driven over pipes.

    A run starts in two steps: every worker of the run and the parent meet at
    a barrier (everyone is ready), then the parent sends b"go" down each
    worker's own pipe.  The barrier alone would do, but it wakes its parties
    one after the other, each only once the previous one got a CPU (and so
    does one pipe read by all the workers: they take its mutex in turn): with
    16 busy workers on 2 cores the last one started ~100 ms after the first.
    Separate pipes wake each worker independently of the others.
    """

    def __init__(self, ctx, data_path: str, lock_dir: str) -> None:
        self.ctx = ctx
        self.data_path = data_path
        self.lock_dir = lock_dir
        self.mp_lock = ctx.Lock()
        self.barriers = {n: ctx.Barrier(n + 1) for n in PROCS}
        self.procs: list = []
        self.conns: list = []
        self.pids: list[int] = []
        for index in range(POOL_SIZE):
            self._start(index)
        missing = [i for i in range(POOL_SIZE) if not self._ready(i)]
        for attempt in range(2):
            if not missing:
                break
            log(f"pool: workers {missing} did not start; restarting them (attempt {attempt + 1})")
            for i in missing:
                self._kill(i)
                self._start(i, replace=True)
            missing = [i for i in missing if not self._ready(i)]
        if missing:
            self.close()
            raise PoolError(f"only {POOL_SIZE - len(missing)} of {POOL_SIZE} worker processes started "
                            f"(workers {missing} never reported ready within {WAIT_S:g} s)")

    def _start(self, index: int, replace: bool = False) -> None:
        parent, child = self.ctx.Pipe()
        p = self.ctx.Process(target=_pool_worker, name=f"contender-{index}", daemon=True,
                             args=(index, child, self.data_path, self.lock_dir, self.mp_lock, self.barriers))
        p.start()
        child.close()
        if replace:
            self.procs[index], self.conns[index], self.pids[index] = p, parent, 0
        else:
            self.procs.append(p)
            self.conns.append(parent)
            self.pids.append(0)

    def _ready(self, index: int) -> bool:
        conn = self.conns[index]
        try:
            if not conn.poll(WAIT_S):
                return False
            msg = conn.recv()
        except (EOFError, OSError):
            return False
        if msg[0] != "ready":
            log(f"pool: worker {index} failed to start: {msg}")
            return False
        self.pids[index] = msg[2]
        return True

    def _kill(self, index: int) -> None:
        p = self.procs[index]
        if p.is_alive():
            p.kill()
        p.join(timeout=5)

    def receive(self, index: int, bound: float):
        """The next message of worker `index` (and the bytes of a "ran"), within `bound` seconds."""
        conn = self.conns[index]
        if not conn.poll(bound):
            raise PoolError(f"worker {index} (pid {self.pids[index]}) did not answer within {bound:g} s "
                            f"(alive: {self.procs[index].is_alive()})")
        msg = conn.recv()
        if msg[0] == "ran":
            if not conn.poll(bound):
                raise PoolError(f"worker {index} sent no wait times")
            return msg, conn.recv_bytes()
        return msg, None

    def go(self, n: int) -> None:
        """Start the run of workers 0..n-1, which are past the barrier."""
        for conn in self.conns[:n]:
            conn.send_bytes(b"go")

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("quit",))
            except (OSError, ValueError):
                pass
        for p in self.procs:
            p.join(timeout=10)
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)


# ==========================================================================
# One contention run and its figures
# ==========================================================================

@dataclass
class Run:
    """The figures of one fixed-duration run of `n` contenders of one kind."""

    kind: str
    n: int
    valid: bool
    problems: list[str]
    attempts: int
    grants: int = 0
    throughput: float = 0.0          # grants per second, all contenders together
    p50_s: float = 0.0
    p99_s: float = 0.0
    max_s: float = 0.0
    switches_per_lock: float = 0.0   # voluntary + involuntary, all contenders
    voluntary_per_lock: float = 0.0
    least_share: float = 0.0         # fewest grants of one contender / (grants / n)
    start_skew_s: float = 0.0
    window_s: float = 0.0
    exclusion_ok: bool = True

    def to_json(self) -> dict:
        # (a lean loop's waits are nan: null in the file)
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in self.__dict__.items()}


def _sorted_waits(chunks: list[bytes]):
    """All wait times of a run, sorted (numpy when installed: a run can have a million)."""
    try:
        import numpy
    except ImportError:
        values = array("q")
        for chunk in chunks:
            values.frombytes(chunk)
        return sorted(values)
    return numpy.sort(numpy.concatenate([numpy.frombuffer(c, dtype=numpy.int64) for c in chunks]))


def figures_of(kind: str, n: int, infos: list[dict], chunks: list[bytes], counted: int,
               duration_s: float, attempts: int) -> Run:
    """A Run from the workers' reports; `counted` is what the shared counter(s) ended at."""
    grants = sum(i["grants"] for i in infos)
    problems = []
    if len(infos) != n or len({(i["pid"], i["tid"]) for i in infos}) != n:
        problems.append(f"{len(infos)} contenders reported, {n} asked")
    starts = [i["t_start"] for i in infos]
    skew = (max(starts) - min(starts)) / 1e9
    if skew > MAX_START_SKEW * duration_s or max(starts) >= min(i["t_end"] for i in infos):
        problems.append(f"contenders started {skew * 1e3:.0f} ms apart (more than "
                        f"{MAX_START_SKEW:.0%} of the {duration_s:g} s run): not all ran together")
    exclusion_ok = counted == grants
    window = (max(i["t_end"] for i in infos) - min(starts)) / 1e9
    waits = _sorted_waits(chunks)
    if len(waits) == 0:   # a lean loop: no acquisition was timed
        waits = [float("nan")]
    switches = sum(i["voluntary"] + i["involuntary"] for i in infos)
    run = Run(kind=kind, n=n, valid=not problems, problems=problems, attempts=attempts, grants=grants,
              throughput=grants / window, p50_s=percentile(waits, 50) / 1e9,
              p99_s=percentile(waits, 99) / 1e9, max_s=float(waits[-1]) / 1e9,
              switches_per_lock=switches / grants,
              voluntary_per_lock=sum(i["voluntary"] for i in infos) / grants,
              least_share=min(i["grants"] for i in infos) / (grants / n),
              start_skew_s=skew, window_s=window, exclusion_ok=exclusion_ok)
    return run


class ExclusionViolation(Exception):
    pass


def pool_run(pool: Pool, words, kind: str, n: int, duration_s: float, *, disjoint: bool) -> Run:
    """One run of `n` pool workers; retried while the run is not valid (see the module docstring)."""
    duration_ns = int(duration_s * 1e9)
    last = None
    for attempt in range(1, RUN_ATTEMPTS + 1):
        slots = []
        for i in range(n):
            start = i * STRIDE if disjoint else HOT[0]
            end = start + (HOT[1] - HOT[0])
            slot = start // 8
            slots.append(slot)
            words[slot] = 0
            pool.conns[i].send(("run", kind, n, slot, start, end, duration_ns))
        barrier = pool.barriers[n]
        problems = []
        try:
            barrier.wait(WAIT_S)
            pool.go(n)
        except BrokenBarrierError:
            problems.append(f"not every worker reached the start barrier within {WAIT_S:g} s")
        infos, chunks = [], []
        for i in range(n):
            msg, data = pool.receive(i, WAIT_S + duration_s)
            if msg[0] == "ran":
                infos.append(msg[2])
                chunks.append(data)
            else:
                problems.append(f"worker {i}: {msg[2]}")
        if barrier.broken:
            barrier.reset()
        if infos and not problems:
            counted = words[0] if not disjoint else sum(words[s] for s in slots)
            last = figures_of(kind, n, infos, chunks, counted, duration_s, attempt)
            if disjoint:
                per_range = all(words[s] == info["grants"] for s, info in zip(slots, infos, strict=False))
                last.exclusion_ok = last.exclusion_ok and per_range
            if not last.exclusion_ok:
                raise ExclusionViolation(
                    f"{kind}, {n} contenders: the counter{'s' if disjoint else ''} in the locked bytes "
                    f"ended at {counted} but {last.grants} locks were granted")
            if last.valid:
                return last
            problems = last.problems
        else:
            last = Run(kind=kind, n=n, valid=False, problems=problems, attempts=attempt)
        log(f"{kind} x{n}: run not valid ({'; '.join(problems)}); "
            + ("retrying" if attempt < RUN_ATTEMPTS else "giving up"))
    print(f"  !! NOT MEASURED: {kind} with {n} contenders failed {RUN_ATTEMPTS} attempts: "
          f"{'; '.join(last.problems)}")
    return last


def thread_run(contenders: list[Contender], words, kind: str, n: int, duration_s: float) -> Run:
    """One run of `n` threads of this process on the hot range (retried like :func:`pool_run`)."""
    duration_ns = int(duration_s * 1e9)
    last = None
    for attempt in range(1, RUN_ATTEMPTS + 1):
        words[0] = 0
        barrier = threading.Barrier(n)
        results: list = [None] * n

        def body(i: int, barrier=barrier, results=results) -> None:
            try:
                results[i] = contenders[i].run(kind, 0, HOT[0], HOT[1], duration_ns, barrier)
            except BaseException as err:
                results[i] = err
                barrier.abort()

        threads = [threading.Thread(target=body, args=(i,), name=f"contender-{i}") for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT_S + duration_s)
        problems = [f"thread {i}: {r!r}" for i, r in enumerate(results) if not isinstance(r, tuple)]
        if any(t.is_alive() for t in threads):
            raise RuntimeError(f"{kind}: threads still running {WAIT_S:g} s after their run should have ended")
        if not problems:
            infos = [r[0] for r in results]
            last = figures_of(kind, n, infos, [r[1].tobytes() for r in results], words[0], duration_s, attempt)
            if not last.exclusion_ok:
                raise ExclusionViolation(f"{kind}, {n} threads: the counter in the locked bytes ended at "
                                         f"{words[0]} but {last.grants} locks were granted")
            if last.valid:
                return last
            problems = last.problems
        else:
            last = Run(kind=kind, n=n, valid=False, problems=problems, attempts=attempt)
        log(f"{kind} x{n} threads: run not valid ({'; '.join(problems)}); "
            + ("retrying" if attempt < RUN_ATTEMPTS else "giving up"))
    print(f"  !! NOT MEASURED: {kind} with {n} threads failed {RUN_ATTEMPTS} attempts: {'; '.join(last.problems)}")
    return last


@dataclass
class Grid:
    """Runs of several kinds at several counts, `repeats` each, in the order they were made."""

    kinds: tuple[str, ...]
    counts: tuple[int, ...]
    runs: dict = field(default_factory=dict)    # (kind, n) -> [Run per repeat]

    def add(self, run: Run) -> None:
        self.runs.setdefault((run.kind, run.n), []).append(run)

    def valid(self, kind: str, n: int) -> list[Run]:
        return [r for r in self.runs.get((kind, n), []) if r.valid]

    def spread(self, kind: str, n: int, attr: str) -> Spread:
        return Spread([getattr(r, attr) for r in self.valid(kind, n)])

    def paired(self, a: tuple[str, int], b: tuple[str, int], attr: str = "throughput") -> Spread:
        """Per-repeat ratios a/b over the repeats where both were measured."""
        ra, rb = self.runs.get(a, []), self.runs.get(b, [])
        return Spread([x.__dict__[attr] / y.__dict__[attr] for x, y in zip(ra, rb, strict=False)
                       if x.valid and y.valid and y.__dict__[attr] > 0])

    def to_json(self) -> list[dict]:
        return [r.to_json() for runs in self.runs.values() for r in runs]


def interleaved_grid(kinds, counts, repeats: int, one_run) -> Grid:
    """Every (kind, n) `repeats` times: repeat by repeat, count by count, kinds in rotated order."""
    grid = Grid(tuple(kinds), tuple(counts))
    for rep in range(repeats):
        for n in counts:
            shift = rep % len(kinds)
            for kind in kinds[shift:] + kinds[:shift]:
                grid.add(one_run(kind, n))
        log(f"repeat {rep + 1} of {repeats} done")
    return grid


def _rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.0f}k"
    return f"{x:.0f}"


def _us(x: float) -> str:
    return fmt_us(x, "ms") if x >= 1e-3 else fmt_us(x, "us")


def _x(x: float) -> str:
    return fmt_ratio(x)


def _num(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def print_grid(grid: Grid, unit: str, ratio_to: tuple[str, ...], ours: str = "shmslice") -> None:
    """A table of every (n, kind): throughput, waits, switches, fairness, ratios of `ours` to others
    (waits show as "—" where a lean loop timed none)."""
    print(f"  {unit:>3} {'kind':<21} {'ops/s median [min–max]':<26} {'p99 wait':<24} {'max wait':<26} "
          f"{'switches/lock':<18} {'least-served':<12}")
    for n in grid.counts:
        for kind in grid.kinds:
            runs = grid.valid(kind, n)
            if not runs:
                print(f"  {n:>3} {KIND_LABELS[kind]:<21} NOT MEASURED (see above)")
                continue
            timed = not kind.startswith("lean:")
            p99 = grid.spread(kind, n, "p99_s").fmt(_us) if timed else "— (not timed)"
            longest = grid.spread(kind, n, "max_s").fmt(_us) if timed else "—"
            print(f"  {n:>3} {KIND_LABELS[kind]:<21} {grid.spread(kind, n, 'throughput').fmt(_rate):<26} "
                  f"{p99:<24} {longest:<26} "
                  f"{grid.spread(kind, n, 'switches_per_lock').fmt(_num):<18} "
                  f"{statistics.median(r.least_share for r in runs):.0%}")
        ratios = []
        for other in ratio_to:
            r = grid.paired((ours, n), (other, n))
            if r:
                ratios.append(f"{r.fmt(_x)} {KIND_LABELS[other]}'s")
        if ratios:
            print(f"      {KIND_LABELS[ours]} throughput = " + ", ".join(ratios))
    print("  (least-served: fewest grants of one contender as a share of a fair 1/N; "
          "ratios: median [range] of per-repeat ratios)")


# ==========================================================================
# Sections
# ==========================================================================

def section_hot(pool: Pool, words, opts) -> dict:
    print_section("1. N processes, one hot range: exclusive lock + increment a counter in the locked bytes")
    print(f"  {opts.repeats} repeats x {opts.hot_seconds:g} s per (N, kind), interleaved; "
          "every run checks that the counter equals the number of grants")
    grid = interleaved_grid(HOT_KINDS, PROCS, opts.repeats,
                            lambda kind, n: pool_run(pool, words, kind, n, opts.hot_seconds, disjoint=False))
    print(f"  mutual exclusion checked in every run: the counter in [{HOT[0]}, {HOT[1]}) always equalled "
          "the number of grants")
    print_grid(grid, "N", ("lockf", "ofd", "mp.Lock"))
    checks = []
    print()
    for n in (8, 16):
        r = grid.paired(("shmslice", n), ("lockf", n))
        ok = bool(r) and r.median >= TARGET_HOT_VS_LOCKF
        checks.append((f"hot range, {n} processes: throughput >= lockf", ok,
                       r.fmt(_x) if r else "not measured"))
        print(f"  {n} processes: shmslice / lockf throughput {r.fmt(_x) if r else 'NOT MEASURED'}  "
              f"target >= {TARGET_HOT_VS_LOCKF:g}x: {verdict(ok)}")
    worst = {k: max((x.max_s for x in grid.valid(k, 8)), default=float("nan")) for k in HOT_KINDS}
    p99 = {k: grid.spread(k, 8, "p99_s") for k in HOT_KINDS}
    ok = bool(grid.valid("shmslice", 8)) and worst["shmslice"] <= TARGET_MAX_WAIT_S
    checks.append(("hot range, 8 processes: no wait > 50 ms", ok, _us(worst["shmslice"])))
    print(f"  8 processes: longest shmslice wait in any repeat {_us(worst['shmslice'])} "
          f"(p99 {p99['shmslice'].fmt(_us) if p99['shmslice'] else '-'}); lockf longest "
          f"{_us(worst['lockf'])} (p99 {p99['lockf'].fmt(_us) if p99['lockf'] else '-'})  "
          f"target <= {fmt_us(TARGET_MAX_WAIT_S, 'ms')}: {verdict(ok)}")
    return {"grid": grid, "checks": checks}


def section_threads(data_path: str, lock_dir: str, opts) -> dict:
    print_section("2. Threads of one process on one hot range: exclusive lock + counter increment")
    mgr = shmslice.LockManager(data_path, lock_dir=lock_dir)
    fd = os.open(data_path, os.O_RDWR | os.O_CLOEXEC)
    mapping = mmap.mmap(fd, FILE_SIZE)
    words = memoryview(mapping).cast("q")
    mutex = threading.Lock()
    contenders = [Contender(data_path, lock_dir, mutex, manager=mgr, words=words) for _ in range(max(THREADS))]
    try:
        print(f"  {opts.repeats} repeats x {opts.thread_seconds:g} s per (threads, kind), interleaved; "
              "shmslice: one LockManager shared by the threads; OFD: one descriptor per thread")
        grid = interleaved_grid(THREAD_KINDS, THREADS, opts.repeats,
                                lambda kind, n: thread_run(contenders, words, kind, n, opts.thread_seconds))
    finally:
        for c in contenders:
            c.close()
        words.release()
        mapping.close()
        os.close(fd)
        mgr.close()
    print_grid(grid, "thr", ("ofd", "threading.Lock"))
    checks = []
    print()
    for n in THREADS:
        r = grid.paired(("shmslice", n), ("ofd", n))
        ok = bool(r) and r.median >= TARGET_THREADS_VS_OFD
        checks.append((f"{n} threads, hot range: throughput >= OFD locks", ok, r.fmt(_x) if r else "not measured"))
        print(f"  {n} threads: shmslice / OFD throughput {r.fmt(_x) if r else 'NOT MEASURED'}  "
              f"target >= {TARGET_THREADS_VS_OFD:g}x: {verdict(ok)}")
    return {"grid": grid, "checks": checks}


def _proc_locks_waiters(path: str) -> int:
    """How many requests /proc/locks shows blocked on the file at `path`."""
    st = os.stat(path)
    suffix = f":{st.st_ino}"
    count = 0
    with open("/proc/locks", encoding="ascii", errors="replace") as f:
        for line in f:
            fields = line.split()
            if "->" in fields and any(x.count(":") == 2 and x.endswith(suffix) for x in fields):
                count += 1
    return count


def _queue_waiters(pool: Pool, kind: str, path: str, count_waiting) -> int:
    """Send `WAITERS` pool workers to wait on UNRELATED of `path`; how many are seen queued (bounded)."""
    for i in range(WAITERS):
        pool.conns[i].send(("wait", kind, path, *UNRELATED))
    deadline = time.monotonic() + WAIT_S / 2
    seen = 0
    while time.monotonic() < deadline:
        seen = count_waiting()
        if seen >= WAITERS:
            break
        time.sleep(0.01)
    return seen


def _collect_waiters(pool: Pool) -> list[str]:
    problems = []
    for i in range(WAITERS):
        msg, _ = pool.receive(i, WAIT_S + 5)
        if msg[0] != "waited":
            problems.append(f"waiter {i}: {msg[2]}")
    return problems


def _unrelated_phase(pool: Pool, opts, kind: str, busy_path: str, quiet_path: str) -> dict:
    """Hold UNRELATED of both files, queue the waiters on the busy one, time lock+release of HOT on both."""
    a, b = HOT
    if kind == "shmslice":
        busy = shmslice.LockManager(busy_path, lock_dir=pool.lock_dir)
        quiet = shmslice.LockManager(quiet_path, lock_dir=pool.lock_dir)
        holds = [busy.lock(*UNRELATED), quiet.lock(*UNRELATED)]

        def count_waiting() -> int:
            return len({e.pid for e in busy.locks(waiting=True)
                        if e.waiting and (e.start, e.end) == UNRELATED})
        cases = {"busy": make_timer(f"lk = mgr.lock({a}, {b}); lk.release()", {"mgr": busy}),
                 "quiet": make_timer(f"lk = mgr.lock({a}, {b}); lk.release()", {"mgr": quiet})}

        def release_holds() -> None:
            for h in holds:
                h.release()

        def close() -> None:
            busy.close()
            quiet.close()
    else:
        fds = [os.open(p, os.O_RDWR | os.O_CLOEXEC) for p in (busy_path, quiet_path)]
        length = UNRELATED[1] - UNRELATED[0]
        for fd in fds:
            fcntl.lockf(fd, fcntl.LOCK_EX, length, UNRELATED[0])

        def count_waiting() -> int:
            return _proc_locks_waiters(busy_path)
        stmt = f"lockf(fd, EX, {b - a}, {a}); lockf(fd, UN, {b - a}, {a})"
        glb = {"lockf": fcntl.lockf, "EX": fcntl.LOCK_EX, "UN": fcntl.LOCK_UN}
        cases = {"busy": make_timer(stmt, dict(glb, fd=fds[0])), "quiet": make_timer(stmt, dict(glb, fd=fds[1]))}

        def release_holds() -> None:
            for fd in fds:
                fcntl.lockf(fd, fcntl.LOCK_UN, length, UNRELATED[0])

        def close() -> None:
            for fd in fds:
                os.close(fd)
    problems: list[str] = []
    timing = None
    try:
        before = _queue_waiters(pool, kind, busy_path, count_waiting)
        if before < WAITERS:
            problems.append(f"only {before} of {WAITERS} processes were seen waiting before the measurement")
        else:
            timing = measure_interleaved(cases, opts.unrelated_repeats, opts.timeit_seconds)
            after = count_waiting()
            if after < WAITERS:
                problems.append(f"only {after} of {WAITERS} processes were still waiting after the measurement")
    finally:
        release_holds()
        problems += _collect_waiters(pool)
        close()
    return {"timing": timing, "problems": problems, "queued": before}


def section_unrelated(pool: Pool, tmp: str, opts) -> dict:
    print_section(f"3. Uncontended lock+release while {WAITERS} processes wait on an unrelated range "
                  "of the same file")
    print(f"  this process holds [{UNRELATED[0]}, {UNRELATED[1]}) for the whole measurement; {WAITERS} other "
          f"processes wait for it; this process times lock+release of [{HOT[0]}, {HOT[1]})")
    print(f"  against the same on another file whose [{UNRELATED[0]}, {UNRELATED[1]}) it also holds, with no "
          f"waiter; {opts.unrelated_repeats} interleaved repeats; median (min)")
    out: dict = {"checks": [], "phases": {}}
    for kind in ("shmslice", "lockf"):
        result = None
        for attempt in range(1, RUN_ATTEMPTS + 1):
            busy = make_data_file(tmp, f"unrelated-busy-{kind}-{attempt}.dat", 1 << 17)
            quiet = make_data_file(tmp, f"unrelated-quiet-{kind}-{attempt}.dat", 1 << 17)
            result = _unrelated_phase(pool, opts, kind, busy, quiet)
            if not result["problems"]:
                break
            log(f"unrelated ({kind}): {'; '.join(result['problems'])}; "
                + ("retrying" if attempt < RUN_ATTEMPTS else "giving up"))
        out["phases"][kind] = result
        label = KIND_LABELS[kind]
        if result["problems"] or result["timing"] is None:
            print(f"  !! NOT MEASURED ({label}): {'; '.join(result['problems'])}")
            if kind == "shmslice":
                out["checks"].append(("lock+release with 16 waiters elsewhere <= 1.5x none", False, "not measured"))
            continue
        t = result["timing"]
        wall = paired_ratio(t["busy"].wall, t["quiet"].wall)
        cpu = paired_ratio(t["busy"].cpu, t["quiet"].cpu)
        wall_r = [x / y for x, y in zip(t["busy"].wall.samples, t["quiet"].wall.samples, strict=False)]
        print(f"  {label:<12} with {WAITERS} waiters: wall {t['busy'].wall.fmt()}, CPU {t['busy'].cpu.fmt()}")
        print(f"  {label:<12} no waiters:       wall {t['quiet'].wall.fmt()}, CPU {t['quiet'].cpu.fmt()}")
        if kind == "shmslice":
            ok = wall <= TARGET_UNRELATED_RATIO
            out["checks"].append(("lock+release with 16 waiters elsewhere <= 1.5x none", ok, _x(wall)))
            tail = f"target <= {TARGET_UNRELATED_RATIO:g}x (wall-clock): {verdict(ok)}"
        else:
            tail = "(for comparison)"
        print(f"  {label:<12} ratio with/without waiters: wall {_x(wall)} [range {_x(min(wall_r))}–{_x(max(wall_r))}], "
              f"CPU {_x(cpu)}  {tail}")
    return out


def _disjoint_checks(grid: Grid, ours: str, own: str, lockf: str, label: str) -> list:
    checks = []
    for n in PROCS:
        parts = []
        if n > 1:
            r1 = grid.paired((ours, n), (ours, 1))
            ok1 = bool(r1) and r1.median >= TARGET_DISJOINT_VS_ONE
            checks.append((f"{label}, {n} processes: total >= 1 process's", ok1,
                           r1.fmt(_x) if r1 else "not measured"))
            parts.append(f"vs 1 process {r1.fmt(_x) if r1 else 'NOT MEASURED'} "
                         f"(target >= {TARGET_DISJOINT_VS_ONE:g}x: {verdict(ok1)})")
        r2 = grid.paired((ours, n), (lockf, n))
        ok2 = bool(r2) and r2.median >= TARGET_DISJOINT_VS_LOCKF
        checks.append((f"{label}, {n} process{'es' if n > 1 else ''}: >= 2x lockf", ok2,
                       r2.fmt(_x) if r2 else "not measured"))
        parts.append(f"vs lockf {r2.fmt(_x) if r2 else 'NOT MEASURED'} "
                     f"(target >= {TARGET_DISJOINT_VS_LOCKF:g}x: {verdict(ok2)})")
        vs_own = grid.paired((ours, n), (own, n))
        print(f"  N={n:<2} shmslice total throughput " + "; ".join(parts)
              + (f"; vs own tables {vs_own.fmt(_x)}" if vs_own else ""))
    return checks


def section_disjoint(pool: Pool, words, opts) -> dict:
    print_section("4. Disjoint ranges: N processes, each locking and counting in a range of its own")
    print(f"  {opts.repeats} repeats x {opts.disjoint_seconds:g} s per (N, kind), interleaved; process i locks "
          f"[i*{STRIDE}, i*{STRIDE}+64); every counter checked against its process's grants.")
    print("  'shmslice (own table)': the same loop, each process locking a file of its own, so that no two "
          "share a table: the ceiling for a table split by region (not something to pick instead)")
    for i in range(POOL_SIZE):
        own = own_file(pool.data_path, i * STRIDE // 8)
        if not os.path.exists(own):
            with open(own, "wb") as f:
                f.truncate(STRIDE * POOL_SIZE)
    grid = interleaved_grid(DISJOINT_KINDS, PROCS, opts.repeats,
                            lambda kind, n: pool_run(pool, words, kind, n, opts.disjoint_seconds, disjoint=True))
    print_grid(grid, "N", ("lockf", "ofd", "shmslice/own"))
    print()
    checks = _disjoint_checks(grid, "shmslice", "shmslice/own", "lockf", "disjoint")
    print()
    print(f"  4b. The same loop without timing each acquisition (the clock read once per {LEAN_BATCH} "
          "operations): lighter, so the table mutex takes a larger share of each operation")
    lean = interleaved_grid(LEAN_KINDS, PROCS, opts.repeats,
                            lambda kind, n: pool_run(pool, words, kind, n, opts.disjoint_seconds, disjoint=True))
    print_grid(lean, "N", ("lean:lockf", "lean:shmslice/own"), ours="lean:shmslice")
    print()
    checks += _disjoint_checks(lean, "lean:shmslice", "lean:shmslice/own", "lean:lockf",
                               "disjoint, untimed loop")
    return {"grid": grid, "lean": lean, "checks": checks}


def section_uncontended(tmp: str, lock_dir: str, opts, mp_lock) -> dict:
    print_section("5. Uncontended lock+release from Python (one process, nothing else in the table)")
    path = make_data_file(tmp, "uncontended.dat", 4096)
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    a, b = HOT
    labels = {"shmslice": "shmslice  lk = mgr.lock(0, 64); lk.release()",
              "mp.Lock": "multiprocessing.Lock  L.acquire(); L.release()",
              "threading.Lock": "threading.Lock  L.acquire(); L.release()",
              "lockf": "fcntl.lockf(fd, LOCK_EX/LOCK_UN, 64, 0)"}
    cases = {"shmslice": make_timer(f"lk = mgr.lock({a}, {b}); lk.release()", {"mgr": mgr}),
             "mp.Lock": make_timer("L.acquire(); L.release()", {"L": mp_lock}),
             "threading.Lock": make_timer("L.acquire(); L.release()", {"L": threading.Lock()}),
             "lockf": make_timer(f"lockf(fd, EX, {b - a}, {a}); lockf(fd, UN, {b - a}, {a})",
                                 {"lockf": fcntl.lockf, "fd": fd, "EX": fcntl.LOCK_EX, "UN": fcntl.LOCK_UN})}
    try:
        timing = measure_interleaved(cases, opts.timeit_repeats, opts.timeit_seconds)
    finally:
        os.close(fd)
        mgr.close()
    print(f"  median (min) of {opts.timeit_repeats} interleaved repeats per pair; CPU = this thread's "
          "user+system time, wall = elapsed")
    width = max(map(len, labels.values()))
    for key, label in labels.items():
        print(f"  {label:<{width}}  CPU {timing[key].cpu.fmt('ns'):<20} wall {timing[key].wall.fmt('ns')}")
    ours = timing["shmslice"].cpu
    ok = ours.median <= TARGET_UNCONTENDED_S
    vs_mp = paired_ratio(ours, timing["mp.Lock"].cpu)
    print(f"  shmslice {fmt_us(ours.median, 'ns')} CPU ({vs_mp:.2f}x multiprocessing.Lock's, "
          f"the floor for a Python call that locks anything)  target <= {fmt_us(TARGET_UNCONTENDED_S, 'ns')}: "
          f"{verdict(ok)}")
    return {"timing": timing, "checks": [("uncontended lock+release <= 200 ns", ok, fmt_us(ours.median, "ns"))]}


def section_handoff(tmp: str, opts) -> dict:
    print_section("6. One-way handoff between two processes pinned to different CPUs "
                  "vs multiprocessing.Semaphore ping-pong")
    import bench_locks
    placements = bench_locks.handoff_placements(unpinned=False)
    if not placements:
        print(f"  !! NOT MEASURED: only {len(os.sched_getaffinity(0))} CPU usable by this process; "
              "a handoff between two CPUs needs two")
        return {"result": None, "rows": [],
                "checks": [("handoff pinned apart <= 1.2x Semaphore", False, "not measured (1 CPU)")]}
    result = bench_locks.measure_handoff(tmp, placements, repeats=opts.handoff_repeats,
                                         rounds=opts.handoff_rounds, warmup=opts.handoff_warmup,
                                         start_method=opts.start_method)
    rows = bench_locks.report_handoff(result, TARGET_HANDOFF_RATIO)
    row = rows[0] if rows else None
    ok = bool(row) and row["valid"] and row["ok"]
    value = _x(row["ratio"]) if row and row["valid"] else "not measured"
    return {"result": result, "rows": rows, "checks": [("handoff pinned apart <= 1.2x Semaphore", ok, value)]}


# ==========================================================================
# Picture and raw results
# ==========================================================================

PLOT_STYLE = {"shmslice": ("tab:red", "o"), "lockf": ("tab:blue", "s"), "ofd": ("tab:green", "^"),
              "mp.Lock": ("tab:gray", "D")}


def draw(grid: Grid, png: str, subtitle: str) -> str | None:
    """Throughput, p99 and longest wait against N for every kind of section 1;
    returns why not when matplotlib is missing, else None."""
    if os.environ.get("SHMSLICE_BENCH_NO_PICTURE"):
        return "SHMSLICE_BENCH_NO_PICTURE is set (the sanitizer run: matplotlib cannot load under it)"
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        return f"matplotlib is not installed ({err}): pip install matplotlib (or .[bench])"
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    panels = ((axes[0], "throughput", "lock grants per second, all processes", 1.0),
              (axes[1], "p99_s", "p99 acquisition wait (µs)", 1e6),
              (axes[2], "max_s", "longest acquisition wait (ms)", 1e3))
    for ax, attr, ylabel, scale in panels:
        for kind in grid.kinds:
            counts = [n for n in grid.counts if grid.valid(kind, n)]
            if not counts:
                continue
            spreads = [grid.spread(kind, n, attr) for n in counts]
            med = [s.median * scale for s in spreads]
            lo = [m - s.min * scale for m, s in zip(med, spreads, strict=False)]
            hi = [s.max * scale - m for m, s in zip(med, spreads, strict=False)]
            color, marker = PLOT_STYLE.get(kind, ("black", "x"))
            ax.errorbar(counts, med, yerr=[lo, hi], label=KIND_LABELS[kind], color=color, marker=marker,
                        capsize=3, linewidth=2.2 if kind == "shmslice" else 1.4)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(list(grid.counts))
        ax.set_xticklabels([str(n) for n in grid.counts])
        ax.set_xlabel("processes locking the same range")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(loc="best", fontsize=9)
    axes[0].set_title("throughput (higher is better)")
    axes[1].set_title("p99 wait (lower is better)")
    axes[2].axhline(TARGET_MAX_WAIT_S * 1e3, color="0.4", linestyle="--", linewidth=1)
    axes[2].set_title(f"longest wait (target at 8 processes: ≤ {TARGET_MAX_WAIT_S * 1e3:g} ms)")
    fig.suptitle("One hot range: exclusive lock + counter increment (medians; bars: min–max of repeats)",
                 fontsize=11)
    fig.text(0.5, 0.005, subtitle, ha="center", va="bottom", fontsize=7.5, color="0.3")
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return None


def _git_describe() -> str:
    try:
        head = subprocess.run(["git", "-C", BENCH_DIR, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "-C", BENCH_DIR, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+changes" if dirty else "")


def _timing_json(timing) -> dict:
    return {k: {"cpu_s": t.cpu.samples, "wall_s": t.wall.samples} for k, t in timing.items()}


def results_json(meta: dict, parts: dict) -> dict:
    out = {"meta": meta}
    for name in ("hot", "threads", "disjoint"):
        if parts.get(name):
            out[name] = parts[name]["grid"].to_json()
    if parts.get("disjoint"):
        out["disjoint_untimed"] = parts["disjoint"]["lean"].to_json()
    if parts.get("unrelated"):
        out["unrelated"] = {k: {"problems": v["problems"], "queued": v["queued"],
                                "timing": _timing_json(v["timing"]) if v["timing"] else None}
                            for k, v in parts["unrelated"]["phases"].items()}
    if parts.get("uncontended"):
        out["uncontended"] = _timing_json(parts["uncontended"]["timing"])
    hand = parts.get("handoff")
    if hand and hand.get("result"):
        res = hand["result"]
        out["handoff"] = {"error": res["error"], "placements": [
            {"placement": p["placement"], "shmslice_one_way_s": p["ours"].samples,
             "semaphore_one_way_s": p["sem"].samples, "pair_ratios": p["pair_ratios"],
             "retried": p["failures"], "lost": p["lost"]} for p in res["placements"]]}
    out["checks"] = [{"target": name, "pass": ok, "value": value}
                     for part in parts.values() if part for name, ok, value in part["checks"]]
    return out


# ==========================================================================
# Summary table for the README
# ==========================================================================

def readme_rows(parts: dict) -> list[list[str]]:
    rows = []
    hot = parts.get("hot")
    if hot:
        g = hot["grid"]
        for n in (8, 16):
            if not (g.valid("shmslice", n) and g.valid("lockf", n)):
                continue
            r = g.paired(("shmslice", n), ("lockf", n))
            rows.append([f"{n} processes, one hot range: exclusive lock + counter increment",
                         f"{g.spread('shmslice', n, 'throughput').fmt(_rate)} ops/s; p99 wait "
                         f"{_us(g.spread('shmslice', n, 'p99_s').median)}, "
                         f"max {_us(g.spread('shmslice', n, 'max_s').max)}; "
                         f"{g.spread('shmslice', n, 'switches_per_lock').median:.2f} switches/lock",
                         f"`lockf` {g.spread('lockf', n, 'throughput').fmt(_rate)}; p99 "
                         f"{_us(g.spread('lockf', n, 'p99_s').median)}, max {_us(g.spread('lockf', n, 'max_s').max)}; "
                         f"{g.spread('lockf', n, 'switches_per_lock').median:.2f} switches/lock",
                         f"{r.fmt(_x)}",
                         "≥ 1x lockf" + (", max wait ≤ 50 ms" if n == 8 else ""),
                         _verdict_of(parts, f"hot range, {n} processes")])
    threads = parts.get("threads")
    if threads:
        g = threads["grid"]
        for n in THREADS:
            if not (g.valid("shmslice", n) and g.valid("ofd", n)):
                continue
            rows.append([f"{n} threads of one process, one hot range",
                         f"{g.spread('shmslice', n, 'throughput').fmt(_rate)} ops/s",
                         f"OFD {g.spread('ofd', n, 'throughput').fmt(_rate)}; `threading.Lock` "
                         f"{g.spread('threading.Lock', n, 'throughput').fmt(_rate)}",
                         g.paired(("shmslice", n), ("ofd", n)).fmt(_x), "≥ 1x OFD",
                         _verdict_of(parts, f"{n} threads")])
    unrel = parts.get("unrelated")
    if unrel:
        t = unrel["phases"].get("shmslice", {}).get("timing")
        tl = unrel["phases"].get("lockf", {}).get("timing")
        if t:
            lockf_text = "—"
            if tl:
                lockf_text = f"`lockf`: {_x(paired_ratio(tl['busy'].wall, tl['quiet'].wall))}"
            rows.append([f"Uncontended lock+release while {WAITERS} processes wait on an unrelated range",
                         f"{fmt_us(t['busy'].wall.median)} vs {fmt_us(t['quiet'].wall.median)} with no waiters",
                         lockf_text, _x(paired_ratio(t["busy"].wall, t["quiet"].wall)), "≤ 1.5x",
                         _verdict_of(parts, "lock+release with 16 waiters")])
    dis = parts.get("disjoint")
    if dis:
        g = dis["grid"]
        for n in PROCS[1:]:
            if not (g.valid("shmslice", n) and g.valid("lockf", n) and g.valid("shmslice", 1)):
                continue
            rows.append([f"{n} processes on disjoint ranges, total",
                         f"{g.spread('shmslice', n, 'throughput').fmt(_rate)} ops/s = "
                         f"{g.paired(('shmslice', n), ('shmslice', 1)).fmt(_x)} 1 process's",
                         f"`lockf` {g.spread('lockf', n, 'throughput').fmt(_rate)}",
                         g.paired(("shmslice", n), ("lockf", n)).fmt(_x), "≥ 1x one process, ≥ 2x lockf",
                         _verdict_of(parts, f"disjoint, {n} processes")])
        lean = dis["lean"]
        for n in PROCS[1:]:
            ours, lockf = ("lean:shmslice", n), ("lean:lockf", n)
            if not (lean.valid(*ours) and lean.valid(*lockf) and lean.valid("lean:shmslice", 1)):
                continue
            rows.append([f"{n} processes on disjoint ranges, total, untimed loop",
                         f"{lean.spread(*ours, 'throughput').fmt(_rate)} ops/s = "
                         f"{lean.paired(ours, ('lean:shmslice', 1)).fmt(_x)} 1 process's; own tables "
                         f"{lean.paired(('lean:shmslice/own', n), ('lean:shmslice/own', 1)).fmt(_x)}",
                         f"`lockf` {lean.spread(*lockf, 'throughput').fmt(_rate)}",
                         lean.paired(ours, lockf).fmt(_x), "≥ 1x one process, ≥ 2x lockf",
                         _verdict_of(parts, f"disjoint, untimed loop, {n} processes")])
    unc = parts.get("uncontended")
    if unc:
        t = unc["timing"]
        rows.append(["Uncontended lock+release from Python",
                     f"{fmt_us(t['shmslice'].cpu.median, 'ns')}",
                     f"`multiprocessing.Lock` {fmt_us(t['mp.Lock'].cpu.median, 'ns')}",
                     _x(paired_ratio(t["shmslice"].cpu, t["mp.Lock"].cpu)), "≤ 200 ns",
                     _verdict_of(parts, "uncontended")])
    hand = parts.get("handoff")
    if hand and hand["rows"]:
        row = hand["rows"][0]
        if row["valid"]:
            rows.append(["One-way handoff, 2 processes pinned to different CPUs",
                         fmt_us(row["ours"].median),
                         f"`multiprocessing.Semaphore` ping-pong {fmt_us(row['sem'].median)}",
                         _x(row["ratio"]), "≤ 1.2x", verdict(row["ok"])])
    return rows


def _verdict_of(parts: dict, prefix: str) -> str:
    found = [ok for part in parts.values() if part for name, ok, _ in part["checks"] if name.startswith(prefix)]
    return verdict(all(found)) if found else "—"


# ==========================================================================
# Main
# ==========================================================================

@dataclass
class Options:
    quick: bool
    repeats: int
    hot_seconds: float
    thread_seconds: float
    disjoint_seconds: float
    timeit_repeats: int
    unrelated_repeats: int
    timeit_seconds: float
    handoff_repeats: int
    handoff_rounds: int
    handoff_warmup: int
    start_method: str


def options_from(args) -> Options:
    quick = args.quick
    repeats = args.repeats or (2 if quick else 5)
    seconds = args.seconds or (0.1 if quick else 1.0)
    if repeats < 1 or seconds <= 0:
        raise SystemExit("--repeats must be at least 1 and --seconds positive")
    return Options(quick=quick, repeats=repeats, hot_seconds=seconds,
                   thread_seconds=seconds if quick else seconds / 2,
                   disjoint_seconds=2 * seconds if quick else seconds / 2,
                   timeit_repeats=3 if quick else 15, unrelated_repeats=3 if quick else 11,
                   timeit_seconds=0.02 if quick else 0.1,
                   handoff_repeats=2 if quick else 9, handoff_rounds=300 if quick else 3000,
                   handoff_warmup=50 if quick else 300, start_method=args.start_method)


SECTIONS = ("hot", "threads", "unrelated", "disjoint", "uncontended", "handoff")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: few repeats, short runs (rough numbers)")
    parser.add_argument("--repeats", type=int, help="repeats per contention figure (default 5; 2 with --quick)")
    parser.add_argument("--seconds", type=float,
                        help="seconds per hot-range run (default 1; thread and disjoint runs take half; "
                             "0.1 with --quick)")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run only this section (repeatable)")
    parser.add_argument("--out", help="directory for contention.png and contention.json "
                                      "(default bench/results; with --quick a temporary directory)")
    parser.add_argument("--start-method", default="fork", choices=("fork", "spawn", "forkserver"),
                        help="how worker processes are started (default fork: 16 workers start at once)")
    args = parser.parse_args(argv)
    opts = options_from(args)
    sections = args.only or list(SECTIONS)
    command = "python bench/bench_contention.py" + " ".join(
        ["", *list(argv if argv is not None else sys.argv[1:])])
    started = time.perf_counter()
    info = machine_info()
    print(f"shmslice {shmslice.__version__} contention benchmark: {command}")
    for line in info:
        print(f"  {line}")
    print(f"  git {_git_describe()}; nice {os.nice(0)}; workers start by {opts.start_method}; "
          f"{opts.repeats} repeats per contention figure")
    sys.stdout.flush()

    tmp = tempfile.mkdtemp(prefix="shmslice-contention-")
    lock_dir = os.path.join(tmp, "locks")
    os.makedirs(lock_dir, mode=0o700)
    data_path = make_data_file(tmp, "hot.dat")
    parts: dict = {}
    failure = None
    pool = None
    words = mapping = None
    ctx = multiprocessing.get_context(opts.start_method)
    try:
        if {"hot", "unrelated", "disjoint"} & set(sections):
            pool = Pool(ctx, data_path, lock_dir)
            log(f"pool: {POOL_SIZE} workers ready (pids {pool.pids[0]}..{pool.pids[-1]})")
            fd = os.open(data_path, os.O_RDWR | os.O_CLOEXEC)
            mapping = mmap.mmap(fd, FILE_SIZE)
            os.close(fd)
            words = memoryview(mapping).cast("q")
        if "hot" in sections:
            parts["hot"] = section_hot(pool, words, opts)
        if "threads" in sections:
            parts["threads"] = section_threads(data_path, lock_dir, opts)
        if "unrelated" in sections:
            parts["unrelated"] = section_unrelated(pool, tmp, opts)
        if "disjoint" in sections:
            parts["disjoint"] = section_disjoint(pool, words, opts)
        if "uncontended" in sections:
            parts["uncontended"] = section_uncontended(tmp, lock_dir, opts,
                                                       pool.mp_lock if pool else ctx.Lock())
        if "handoff" in sections:
            parts["handoff"] = section_handoff(tmp, opts)
    except ExclusionViolation as err:
        failure = f"MUTUAL EXCLUSION VIOLATED: {err}"
    except PoolError as err:
        failure = f"THE BENCHMARK COULD NOT RUN: {err}"
    finally:
        if words is not None:
            words.release()
            mapping.close()
        if pool is not None:
            pool.close()
        shutil.rmtree(tmp, ignore_errors=True)

    elapsed = time.perf_counter() - started
    if failure:
        print()
        print(f"!! {failure}")
        print("!! the figures above (if any) are not a result; exit status 1")
        return 1

    print_section("7. Picture and raw results")
    out_dir = args.out or (tempfile.mkdtemp(prefix="shmslice-contention-out-") if opts.quick
                           else os.path.join(BENCH_DIR, "results"))
    os.makedirs(out_dir, exist_ok=True)
    meta = {"command": command, "machine": info, "git": _git_describe(), "nice": os.nice(0),
            "elapsed_s": elapsed, "options": opts.__dict__, "shmslice": shmslice.__version__}
    json_path = os.path.join(out_dir, "contention.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(results_json(meta, parts), f, indent=1)
    print(f"  raw results: {json_path}")
    if "hot" in parts:
        png = os.path.join(out_dir, "contention.png")
        cpu = info[0].split(";")[0].replace("CPU: ", "")
        subtitle = (f"{command}  ·  {os.cpu_count()} CPUs ({cpu}), Python {sys.version.split()[0]}, "
                    f"{time.strftime('%Y-%m-%d')}, git {_git_describe()}, {opts.repeats} repeats x "
                    f"{opts.hot_seconds:g} s; nice {os.nice(0)}; machine shared with other work")
        missing = draw(parts["hot"]["grid"], png, subtitle)
        if missing:
            print(f"  !! NO PICTURE: {missing}")
        else:
            print(f"  picture: {png}")
    else:
        print("  no picture: section 1 (hot) was not run")

    print_section("Summary")
    checks = [c for part in parts.values() if part for c in part["checks"]]
    for name, ok, value in checks:
        print(f"  {verdict(ok)}  {name}: {value}")
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    print(f"  {sum(ok for _, ok, _ in checks)} of {len(checks)} targets met; run took {elapsed:.0f} s; "
          f"load average at end {load}")
    if opts.quick:
        print("  (--quick: rough numbers; run without --quick for the README table)")
    print()
    print(f"Command: `{command}` — medians [min–max] of {opts.repeats} interleaved repeats "
          f"({opts.hot_seconds:g} s runs); {os.cpu_count()} CPUs, Python {sys.version.split()[0]}.")
    print()
    print(markdown_table(["Measurement", "shmslice", "Alternative", "Ratio", "Target", "Result"], readme_rows(parts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
