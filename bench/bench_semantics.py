"""What deadlock detection and lock_async cost, measured in one run.

    python bench/bench_semantics.py            # full run (about 30 s)
    python bench/bench_semantics.py --quick    # smoke run

Cases, measured interleaved (repeat 1 of every case, then repeat 2, ...), each
figure this thread's CPU time per operation (user + system), the median of
the repeats (min beside it):

1. Uncontended ``mgr.lock(0, 4096).release()`` with the cycle search on and
   off (``ss_debug_set_deadlock_detection``): the search runs only for a
   request that is held back, so these must be the same.
2. A request that has to wait: one step of ``ss_lock_wait`` on a region
   another process holds (in poll mode: the request is held back, runs the
   search when it is on, queues, and returns instead of sleeping -- a sleep
   would add the kernel's timer slack, tens of µs, and drown the figure),
   then ``ss_lock_cancel``.  The table meanwhile holds a wait chain (the holder itself
   waits for a lock a third process holds) and 8 more waiting requests of
   other processes, so the search has something to walk.  The difference
   on - off is what detection adds to a request that waits.
3. ``await mgr.lock_async(0, 4096)`` + release on a free lock, beside the
   synchronous lock + release.

Targets (printed as PASS/MISS, never asserted): detection does not slow case
1 (ratio within noise, <= 1.10x); adds <= 2 µs to case 2; lock_async on a free
lock <= 5 µs.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Stats, add_common_args, fmt_us, machine_info, print_section, verdict

try:
    import shmslice
    from shmslice._binding import ffi, lib
except ImportError as _err:  # pragma: no cover - depends on the environment
    raise SystemExit(f"cannot import shmslice ({_err}); run with the project's venv") from None

TARGET_WAIT_ADDED_S = 2e-6
TARGET_ASYNC_S = 5e-6


def _holder(path: str, lock_dir: str, held: tuple[int, int], wants: tuple[int, int] | None,
            ready, stop) -> None:
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    lk = mgr.lock(*held) if held[1] > held[0] else None
    ready.set()
    if wants is not None:
        try:
            mgr.lock(*wants, timeout=600).release()
        except shmslice.ShmSliceError:
            pass
    stop.wait(600)
    if lk is not None:
        lk.release()
    mgr.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    args = parser.parse_args()
    repeats = args.repeats or (5 if args.quick else 15)
    per_repeat = 0.02 if args.quick else 0.08
    print_section("bench_semantics: deadlock detection and lock_async")
    for line in machine_info():
        print(line)
    work = tempfile.mkdtemp(prefix="shmslice-bench-sem-")
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    procs = []
    try:
        path = os.path.join(work, "data.bin")
        with open(path, "wb") as f:
            f.truncate(1 << 20)
        lock_dir = os.path.join(work, "locks")
        os.makedirs(lock_dir, mode=0o700)
        # The wait chain: P2 holds B; P1 holds A and waits for B; 8 waiters on C, held by P3.
        A, B, C = (100_000, 101_000), (200_000, 201_000), (300_000, 301_000)
        layout = [(B, None), (A, B), (C, None)] + [((0, 0), C)] * 8
        for held, wants in layout:
            ready = ctx.Event()
            p = ctx.Process(target=_holder, args=(path, lock_dir, held, wants, ready, stop),
                            daemon=True)
            p.start()
            procs.append(p)
            if not ready.wait(30):
                raise SystemExit("a helper process did not start")
        mgr = shmslice.LockManager(path, lock_dir=lock_dir)
        deadline = time.monotonic() + 30
        while sum(e.waiting for e in mgr.locks(waiting=True)) < 9:
            if time.monotonic() > deadline:
                raise SystemExit("the helpers did not queue")
            time.sleep(0.01)
        handle = mgr._handle._cdata

        def uncontended(n: int) -> None:
            lock = mgr.lock
            for _ in range(n):
                lock(0, 4096).release()

        def waited(n: int) -> None:
            # One blocked step of a request (poll mode: it queues and returns
            # instead of sleeping, so the kernel's timer slack does not drown
            # the figure), then its withdrawal.
            w = ffi.new("ss_wait *")
            for _ in range(n):
                ffi.memmove(w, bytes(ffi.sizeof("ss_wait")), ffi.sizeof("ss_wait"))
                w.poll = 1
                rc = lib.ss_lock_wait(handle, w, A[0], A[1], lib.SS_EXCLUSIVE, -1)
                if rc != lib.SS_EWAITING:
                    raise SystemExit(f"the waited request ended with {rc}, not queued")
                lib.ss_lock_cancel(handle, w)

        loop = asyncio.new_event_loop()

        async def async_loop(n: int) -> None:
            for _ in range(n):
                (await mgr.lock_async(0, 4096)).release()

        def async_free(n: int) -> None:
            loop.run_until_complete(async_loop(n))

        def with_detection(fn, on: bool):
            def run(n: int) -> None:
                lib.ss_debug_set_deadlock_detection(1 if on else 0)
                try:
                    fn(n)
                finally:
                    lib.ss_debug_set_deadlock_detection(1)
            return run

        cases = {
            "uncontended, detection on": with_detection(uncontended, True),
            "uncontended, detection off": with_detection(uncontended, False),
            "waited request, detection on": with_detection(waited, True),
            "waited request, detection off": with_detection(waited, False),
            "lock_async free + release": async_free,
            "sync lock + release": uncontended,
        }
        counts = {}
        for name, fn in cases.items():   # calibrate: about per_repeat seconds each
            n = 10
            while True:
                t0 = time.perf_counter()
                fn(n)
                took = time.perf_counter() - t0
                if took > per_repeat / 4 or n > 10_000_000:
                    counts[name] = max(10, int(n * per_repeat / max(took, 1e-9)))
                    break
                n *= 4
        stats = {name: Stats() for name in cases}
        for _ in range(repeats):
            for name, fn in cases.items():
                n = counts[name]
                t0 = time.thread_time()   # this thread's CPU time: what the call costs,
                fn(n)                     # without the time a busy machine took from us
                stats[name].add((time.thread_time() - t0) / n)
        loop.close()
        print()
        for name, st in stats.items():
            print(f"  {name:32s} {st.fmt()}  [max {fmt_us(st.max, bare=True)}]")

        def paired(a: str, b: str) -> list[float]:
            return [x - y for x, y in zip(stats[a].samples, stats[b].samples, strict=True)]

        ratio = statistics.median(x / y for x, y in zip(stats["uncontended, detection on"].samples,
                                                         stats["uncontended, detection off"].samples,
                                                         strict=True))
        added = statistics.median(paired("waited request, detection on",
                                         "waited request, detection off"))
        spread = paired("waited request, detection on", "waited request, detection off")
        print()
        print(f"  uncontended on/off: {ratio:.2f}x   {verdict(ratio <= 1.10)} (<= 1.10x)")
        print(f"  detection adds to a request that waits (per blocked step): "
              f"{fmt_us(added)} [paired differences {fmt_us(min(spread), bare=True)}"
              f"..{fmt_us(max(spread), bare=True)}]   {verdict(added <= TARGET_WAIT_ADDED_S)}"
              f" (<= 2 µs)")
        a = stats["lock_async free + release"].median
        print(f"  lock_async free + release: {fmt_us(a)} "
              f"({a / stats['sync lock + release'].median:.1f}x the sync call)   "
              f"{verdict(a <= TARGET_ASYNC_S)} (<= 5 µs)")
        print(f"\n  repeats {repeats}; medians; the machine may be shared (numbers are noisy)")
        mgr.close()
    finally:
        stop.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
