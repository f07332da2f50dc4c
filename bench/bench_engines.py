"""Benchmark slices sent to real engines (dask.distributed, Ray, multiprocessing.Pool).

    python bench/bench_engines.py            # full run (a few minutes)
    python bench/bench_engines.py --quick    # smoke run (one repeat each; rough numbers)

Needs the engines extra (``pip install -e ".[engines]"``); an engine that is not installed is
reported as skipped.  Measured in one run, interleaved (the order rotates every repeat), medians
of repeats with their range:

1. dask ``client.map`` of a sum (64-bit words) over 16 x 32 MiB regions of one file, on a 2-worker
   ``LocalCluster(processes=True)``: as ``ByteBufferSlice`` objects, as ``bytes``, and as
   ``numpy.memmap`` slices (which pickle by copying their bytes).
2. The same with Ray tasks (``ray.init(num_cpus=2)``): slices against ``numpy.memmap`` slices.
3. 8 x 64 MiB regions to a 2-worker ``multiprocessing.Pool``: slices against per-task re-mapped
   ``(path, offset, length)`` tuples, paired per repeat; and, to see why a fresh mapping can
   read faster than a long-lived one, slices whose pages stay mapped in the worker
   (``release_pages = False``, the behaviour before pages were released).
4. Worker RSS (dask) before and after a task that reads 1 GiB through 32 MiB slices.

Targets are printed as PASS/MISS, never asserted.  The machine may be shared: the figures say
how much the repeats moved.  Data files and lock tables live in a temporary directory removed at
the end.
"""

from __future__ import annotations

import argparse
import mmap
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Spread, Stats, add_common_args, fmt_ratio, machine_info, markdown_table, verdict

import shmslice

try:
    import numpy
except ImportError:
    numpy = None

MiB = 1 << 20


def write_file(path: str, size: int) -> None:
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(block)


# -- task bodies (module level: picklable by reference) ----------------------------------
def crc_any(x) -> int:
    """crc32 of whatever arrives: a slice, bytes or a numpy array."""
    return zlib.crc32(x)


def word_sum(x) -> int:
    """Sum of the region as 64-bit words (mod 2**64), of a slice, bytes or a numpy array.

    The dask and Ray figures use this task (it reads every byte at memory speed, ~1.5 ms per
    32 MiB here, where crc32 takes ~16 ms), so that they compare what the engines pay to get the
    bytes to the worker, not the cost of a checksum."""
    return int(numpy.frombuffer(x, dtype=numpy.uint64).sum(dtype=numpy.uint64))


def crc_tuple(desc: tuple[str, int, int]) -> int:
    """What a user writes by hand: map the region in the worker, read it, unmap."""
    path, offset, length = desc
    base = offset - offset % mmap.ALLOCATIONGRANULARITY
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), length + (offset - base), access=mmap.ACCESS_READ, offset=base)
    with mm:
        view = memoryview(mm)[offset - base:]
        try:
            return zlib.crc32(view)
        finally:
            view.release()


def rss(*_: object) -> int:
    import psutil
    return int(psutil.Process().memory_info().rss)


def read_all(path: str, lock_dir: str, chunk: int) -> tuple[int, int, int]:
    before = rss()
    mf = shmslice.open(path, "r", lock_dir=lock_dir)
    value = 0
    for a in range(0, mf.size, chunk):
        with mf[a:a + chunk] as s:
            value = zlib.crc32(s, value)
    return value, before, rss()


_kept: list[shmslice.MappedFile] = []


def keep_pages(path: str, lock_dir: str) -> None:
    """Pool initializer: this worker's slices of `path` keep their pages mapped."""
    mf = shmslice.open(path, "r", lock_dir=lock_dir)
    mf.release_pages = False
    _kept.append(mf)   # unpickled slices of the file join this MappedFile


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def rotate(names: list[str], i: int) -> list[str]:
    k = i % len(names)
    return names[k:] + names[:k]


def spread_of(stats: dict[str, Stats], a: str, b: str) -> str:
    ratios = sorted(x / y for x, y in zip(stats[a].samples, stats[b].samples, strict=True))
    return f"repeats {ratios[0]:.1f}-{ratios[-1]:.1f}x"


# -- 1 and 4: dask -----------------------------------------------------------------------
def dask_bench(tmp: str, repeats: int, quick: bool) -> tuple[dict[str, Stats], tuple[int, int] | None]:
    import distributed
    path = os.path.join(tmp, "dask.bin")
    write_file(path, 16 * 32 * MiB)
    lock_dir = os.path.join(tmp, "locks")
    mf = shmslice.open(path, "r", lock_dir=lock_dir)
    slices = mf.split(32 * MiB)
    expected = [word_sum(s) for s in slices]
    nm = numpy.memmap(path, dtype=numpy.uint8, mode="r")
    stats = {"slices": Stats(), "bytes": Stats(), "memmap": Stats()}
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", silence_logs=40) as c, \
            distributed.Client(c) as cl:
        def run(args) -> None:
            futures = cl.map(word_sum, args, pure=False)
            distributed.wait(futures, timeout=600)
            assert cl.gather(futures) == expected

        runs = {
            "slices": lambda: run(slices),
            "bytes": lambda: run([s.tobytes() for s in slices]),
            "memmap": lambda: run([nm[s.start:s.end] for s in slices]),
        }
        runs["slices"]()   # warm-up: workers map the file once
        for i in range(repeats):
            for name in rotate(list(runs), i):
                stats[name].add(timed(runs[name]))
        measured = None
        if not quick:
            big = os.path.join(tmp, "dask-1g.bin")
            write_file(big, 1024 * MiB)
            _, before, after = cl.submit(read_all, big, lock_dir, 32 * MiB,
                                             pure=False).result(timeout=600)
            measured = (before, after)
            os.unlink(big)
    for s in slices:
        s.release()
    mf.close()
    return stats, measured


# -- 2: Ray --------------------------------------------------------------------------------
def ray_bench(tmp: str, repeats: int) -> dict[str, Stats]:
    import ray
    path = os.path.join(tmp, "ray.bin")
    write_file(path, 16 * 32 * MiB)
    mf = shmslice.open(path, "r", lock_dir=os.path.join(tmp, "locks"))
    slices = mf.split(32 * MiB)
    expected = [word_sum(s) for s in slices]
    nm = numpy.memmap(path, dtype=numpy.uint8, mode="r")
    stats = {"slices": Stats(), "memmap": Stats()}
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(word_sum)

        def run(args) -> None:
            assert ray.get([task.remote(a) for a in args], timeout=600) == expected

        runs = {"slices": lambda: run(slices),
                "memmap": lambda: run([nm[s.start:s.end] for s in slices])}
        runs["slices"]()
        runs["memmap"]()
        for i in range(repeats):
            for name in rotate(list(runs), i):
                stats[name].add(timed(runs[name]))
    finally:
        ray.shutdown()
    for s in slices:
        s.release()
    mf.close()
    return stats


# -- 3: Pool ---------------------------------------------------------------------------------
def pool_bench(tmp: str, repeats: int) -> dict[str, Stats]:
    path = os.path.join(tmp, "pool.bin")
    write_file(path, 8 * 64 * MiB)
    lock_dir = os.path.join(tmp, "locks")
    mf = shmslice.open(path, "r", lock_dir=lock_dir)
    chunks = mf.split(64 * MiB)
    expected = [zlib.crc32(c) for c in chunks]
    tuples = [(path, c.start, len(c)) for c in chunks]
    stats = {"slices": Stats(), "tuples": Stats(), "kept": Stats()}
    with multiprocessing.Pool(2) as pool, \
            multiprocessing.Pool(2, initializer=keep_pages, initargs=(path, lock_dir)) as kept:
        runs = {
            "slices": lambda: pool.map(crc_any, chunks, chunksize=1),
            "tuples": lambda: pool.map(crc_tuple, tuples, chunksize=1),
            "kept": lambda: kept.map(crc_any, chunks, chunksize=1),
        }
        for name, run in runs.items():   # warm-up
            assert run() == expected, name
        for i in range(repeats):
            for name in rotate(list(runs), i):
                t0 = time.perf_counter()
                got = runs[name]()
                stats[name].add(time.perf_counter() - t0)
                assert got == expected, name
    for c in chunks:
        c.release()
    mf.close()
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    args = parser.parse_args(argv)
    quick = args.quick
    print("\n".join(machine_info()))
    tmp = tempfile.mkdtemp(prefix="bench_engines_")
    rows: list[list[str]] = []
    try:
        try:
            import distributed  # noqa: F401
        except ImportError:
            rows.append(["dask", "skipped: dask.distributed not installed", "", "n/a"])
        if numpy is None:
            raise SystemExit("bench_engines needs numpy (pip install -e '.[engines]')")
        else:
            reps = args.repeats or (1 if quick else 5)
            d, measured = dask_bench(tmp, reps, quick)
            print("dask client.map, 16 x 32 MiB: " + ", ".join(f"{k} {v.fmt('s')}" for k, v in d.items()))
            rows.append(["dask `client.map`, 16 x 32 MiB: slices", d["slices"].fmt("s"), "", ""])
            for other in ("bytes", "memmap"):
                if other in d:
                    r = d[other].median / d["slices"].median
                    rows.append([f"... vs {other}", f"{d[other].fmt('s')}: slices {fmt_ratio(r)} faster "
                                 f"({spread_of(d, other, 'slices')})", ">= 20x", verdict(r >= 20)])
            if measured:
                before, after = measured
                grow = (after - before) / MiB
                rows.append(["dask worker RSS after reading 1 GiB through slices",
                             f"{before / MiB:.0f} -> {after / MiB:.0f} MiB ({grow:+.0f} MiB)",
                             "within 64 MiB", verdict(abs(grow) <= 64)])
        try:
            import ray  # noqa: F401
        except ImportError:
            rows.append(["Ray", "skipped: ray not installed", "", "n/a"])
        else:
            reps = args.repeats or (1 if quick else 5)
            r = ray_bench(tmp, reps)
            print("ray tasks, 16 x 32 MiB: " + ", ".join(f"{k} {v.fmt('s')}" for k, v in r.items()))
            ratio = r["memmap"].median / r["slices"].median
            rows.append(["Ray tasks, 16 x 32 MiB: slices", r["slices"].fmt("s"), "", ""])
            rows.append(["... vs numpy.memmap slices", f"{r['memmap'].fmt('s')}: slices "
                         f"{fmt_ratio(ratio)} faster ({spread_of(r, 'memmap', 'slices')})",
                         ">= 20x", verdict(ratio >= 20)])
        reps = args.repeats or (3 if quick else 11)
        p = pool_bench(tmp, reps)
        print("Pool 8 x 64 MiB: " + ", ".join(f"{k} {v.fmt('s')}" for k, v in p.items()))
        paired = Spread([a / b for a, b in zip(p["slices"].samples, p["tuples"].samples, strict=True)])
        kept = Spread([a / b for a, b in zip(p["kept"].samples, p["tuples"].samples, strict=True)])
        rows.append(["Pool 8 x 64 MiB: slices vs re-mapped tuples",
                     f"{p['slices'].fmt('s')} vs {p['tuples'].fmt('s')}: "
                     f"{paired.fmt(lambda x: f'{x:.2f}x')} as long", "<= 1.1x",
                     verdict(paired.median <= 1.1)])
        rows.append(["... slices whose pages stay mapped (release_pages=False)",
                     f"{p['kept'].fmt('s')}: {kept.fmt(lambda x: f'{x:.2f}x')} the tuples", "", ""])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(markdown_table(["measurement", "result", "target", ""], rows))
    print(f"\nPython {sys.version.split()[0]}; wall-clock medians of repeats (min in parentheses, "
          "[range] of per-repeat ratios); cases interleaved, order rotated every repeat.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
