"""Benchmark shmslice's zero-copy slices against what a user would do instead.

    python bench/bench_slices.py            # full run (a minute or two)
    python bench/bench_slices.py --quick    # smoke run (rough numbers)

Measured in one run, so that ratios compare like with like:

1. ``s = mf[a:b]; s.release()`` and ``with mf[a:b]: pass`` against
   ``numpy.memmap`` slicing and ``memoryview(mm)[a:b]`` + ``release()`` on a
   plain ``mmap`` (interleaved).
2. Export and release of a buffer: ``memoryview(s)`` and ``s.view()`` (the C
   type's own bf_getbuffer, on every version); the public ``mgr.pin`` +
   ``unpin`` against the C fast path; ``mgr.locks()`` against the C snapshot
   it wraps.
3. 8 slices of 64 MiB handed to a 2-worker ``multiprocessing.Pool`` that
   computes a crc32 of each: as ``ByteBufferSlice`` objects, as ``bytes``, and
   as hand-written ``(path, offset, length)`` tuples that the worker maps itself.
4. 4 worker processes each read all of a 256 MiB file through slices: the sum
   of their USS growth (psutil), measured after all of them have read it all.

Every figure is the median of several repeats (min beside it).  Targets are
printed as PASS/MISS, never asserted.  The run ends with a markdown table.  Data
files and lock tables live in a temporary directory removed at the end.
"""

from __future__ import annotations

import argparse
import math
import mmap
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    Stats,
    add_common_args,
    calibrate,
    fmt_ratio,
    machine_info,
    make_timer,
    markdown_table,
    measure_interleaved,
    paired_ratio,
    print_section,
    settings_from_args,
    time_once,
    verdict,
)

try:
    import shmslice
except ImportError as _err:  # pragma: no cover - depends on the environment
    raise SystemExit(f"cannot import shmslice ({_err}); run with the project's venv, "
                     "e.g. .venv/bin/python bench/bench_slices.py") from None

try:
    import numpy
except ImportError:  # the numpy comparison is skipped without it
    numpy = None

MiB = 1 << 20
CHUNK = 4 * MiB


def write_file(path: str, size: int) -> None:
    """A file of `size` bytes of incompressible data (1 MiB of random bytes, repeated)."""
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(block)
        f.write(block[: size % MiB])


# -- workers (module level: picklable under every start method) -----------------------
def crc_slice(s: shmslice.ByteBufferSlice) -> int:
    return zlib.crc32(s.view())


def crc_bytes(data: bytes) -> int:
    return zlib.crc32(data)


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


def ratio_spread(a: Stats, b: Stats) -> str:
    """The per-repeat ratios a/b of two interleaved cases: their range, for the report."""
    ratios = sorted(x / y for x, y in zip(a.samples, b.samples, strict=True))
    return f"repeats {ratios[0]:.2f}-{ratios[-1]:.2f}x"


WITH_TARGET = 1.2


def median_interval(values: list[float]) -> tuple[float, float]:
    """A distribution-free 95% confidence interval of the median of `values`
    (order statistics at the binomial ranks; exact enough from about 10 values)."""
    v = sorted(values)
    n = len(v)
    half = 1.96 * math.sqrt(n) / 2
    lo = max(0, math.floor(n / 2 - half) - 1)
    hi = min(n - 1, math.ceil(n / 2 + half))
    return v[lo], v[hi]


def with_vs_explicit(g: dict, settings) -> dict:
    """`with mf[a:b]: pass` against `s = mf[a:b]; s.release()`, measured on
    their own: many short repeats, the two back to back in alternating order
    (ABBA), the ratio taken per pair.  The target's verdict is PASS or MISS
    only when the 95% interval of the median ratio lies wholly on one side of
    it; otherwise the pairs are measured once more (and pooled), and if it
    still straddles the target the figure says so: within noise of it."""
    timers = {"slice": make_timer("s = mf[a:b]; s.release()", g),
              "with": make_timer("with mf[a:b]: pass", g)}
    seconds = settings.seconds_per_repeat / 4
    numbers = {k: calibrate(t, seconds) for k, t in timers.items()}
    pairs = 15 if settings.quick else 41
    ratios: list[float] = []
    rounds = 0
    while True:
        rounds += 1
        for i in range(pairs):
            order = ("slice", "with") if i % 2 == 0 else ("with", "slice")
            got = {k: time_once(timers[k], numbers[k])[0] for k in order}
            ratios.append(got["with"] / got["slice"])
        lo, hi = median_interval(ratios)
        decided = hi <= WITH_TARGET or lo > WITH_TARGET
        if decided or rounds == 2:
            break
        print(f"  !! with/explicit: 95% interval {lo:.3f}-{hi:.3f}x straddles {WITH_TARGET}x "
              f"after {len(ratios)} pairs; measuring {pairs} more")
    return {"median": statistics.median(ratios), "lo": lo, "hi": hi, "n": len(ratios),
            "min": min(ratios), "max": max(ratios), "decided": decided}


def warm(_: object) -> int:
    return os.getpid()


def uss_reader(s: shmslice.ByteBufferSlice, barrier, out) -> None:
    import psutil
    proc = psutil.Process()
    info = proc.memory_full_info()
    before, rss_before = info.uss, info.rss
    crc = 0
    for off in range(0, len(s), CHUNK):
        with s[off:off + CHUNK] as part:
            v = part.view()
            crc = zlib.crc32(v, crc)
            v.release()
    barrier.wait(120)        # every worker has now touched every page
    info = proc.memory_full_info()
    out.put((os.getpid(), crc, info.uss - before, info.rss - rss_before))
    barrier.wait(120)        # keep the mappings until every worker has measured


# -- 1 and 2: microbenchmarks -----------------------------------------------------------------
def micro(tmp: str, settings) -> tuple[dict[str, Stats], dict[str, Stats], dict]:
    """(CPU time, wall-clock) per operation of each case, measured interleaved,
    and the paired with/explicit ratio (:func:`with_vs_explicit`)."""
    path = os.path.join(tmp, "micro.bin")
    write_file(path, 16 * MiB)
    mf = shmslice.open(path, "r+", lock_dir=os.path.join(tmp, "locks"))
    with open(path, "r+b") as f:
        mm = mmap.mmap(f.fileno(), 0)   # the mapping keeps a descriptor of its own
    s = mf[4096:8192]
    g = {"mf": mf, "mm": mm, "s": s, "a": 4096, "b": 8192}
    cases = {
        "slice": make_timer("s = mf[a:b]; s.release()", g),
        "with": make_timer("with mf[a:b]: pass", g),
        "mmap": make_timer("v = memoryview(mm)[a:b]; v.release()", g),
        "memoryview": make_timer("v = memoryview(s); v.release()", g),
        "view": make_timer("v = s.view(); v.release()", g),
    }
    if numpy is not None:
        g["nm"] = numpy.memmap(path, dtype=numpy.uint8, mode="r+")
        cases["numpy"] = make_timer("x = nm[a:b]; del x", g)
    # Floors, for reading the figures above: the two C calls every slice and
    # view makes (pin + unpin), and on 3.12+ the PEP 688 round trip of a Python
    # object that does nothing but return a memoryview.
    from shmslice._binding import fast_pin, fast_unpin, ffi, lib
    mgr = mf.lock_manager
    g.update(pin=fast_pin, unpin=fast_unpin, mgr=mgr)
    cases["pin"] = make_timer("unpin(mgr, pin(mgr, a, b))", g)
    cases["mgr_pin"] = make_timer("mgr.unpin(mgr.pin(a, b))", g)
    # mgr.locks() with a few entries, against the C snapshot of the same table
    # into a buffer made once (the floor any wrapper pays).
    held = [mgr.pin(k * 4096, k * 4096 + 100) for k in range(4)]
    g.update(snap=lib.ss_snapshot, ptr=mgr._handle._cdata, buf=ffi.new("ss_entry_info[]", 64),
             count=ffi.new("uint32_t *"))
    cases["locks"] = make_timer("mgr.locks()", g)
    cases["snapshot"] = make_timer("snap(ptr, buf, 64, count)", g)
    results = measure_interleaved(cases, settings.repeats, settings.seconds_per_repeat)
    paired = with_vs_explicit(g, settings)
    for ref in held:
        mgr.unpin(ref)
    assert mf.locks()[0].count == 1 and len(mf.locks()) == 1, "pins leaked in the benchmark"
    del g
    s.release()
    mf.close(strict=True)
    mm.close()
    return ({k: t.cpu for k, t in results.items()}, {k: t.wall for k, t in results.items()}, paired)


# -- 3: pool ------------------------------------------------------------------------------
def pool_bench(tmp: str, settings, slices: int = 8, size: int = 64 * MiB) -> dict[str, Stats]:
    path = os.path.join(tmp, "pool.bin")
    write_file(path, slices * size)
    mf = shmslice.open(path, "r", lock_dir=os.path.join(tmp, "locks"))
    chunks = mf.split(size)
    expected = [zlib.crc32(c.view()) for c in chunks]
    results = {"slices": Stats(), "tuples": Stats(), "bytes": Stats()}
    repeats = 1 if settings.quick else 11
    with multiprocessing.Pool(2) as pool:
        pool.map(warm, range(4))
        runs = {
            "slices": lambda: pool.map(crc_slice, chunks, chunksize=1),
            "tuples": lambda: pool.map(crc_tuple, [(path, c.start, len(c)) for c in chunks],
                                       chunksize=1),
            # What a user without shmslice sends: the bytes (copied out, pickled, piped).
            "bytes": lambda: pool.map(crc_bytes, (c.tobytes() for c in chunks), chunksize=1),
        }
        runs["slices"]()     # warm-up: every worker maps the file (once) and touches it
        runs["tuples"]()
        # slices and tuples interleaved, alternating who goes first; the bytes
        # runs (seconds each, copying 512 MiB through pipes) apart, so they do
        # not disturb the page cache and CPU between the two close contenders.
        schedule = [pair for i in range(repeats)
                    for pair in (("slices", "tuples") if i % 2 == 0 else ("tuples", "slices"))]
        schedule += ["bytes"] * (1 if settings.quick else 3)
        for name in schedule:
            t0 = time.perf_counter()
            got = runs[name]()
            results[name].add(time.perf_counter() - t0)
            assert got == expected, name
    for c in chunks:
        c.release()
    mf.close()
    os.unlink(path)
    return results


# -- 4: USS ---------------------------------------------------------------------------------
def uss_bench(tmp: str, workers: int = 4, size: int = 256 * MiB) -> tuple[int, list[int], list[int]]:
    path = os.path.join(tmp, "uss.bin")
    write_file(path, size)
    ctx = multiprocessing.get_context("spawn")   # clean processes: nothing inherited
    mf = shmslice.open(path, "r", lock_dir=os.path.join(tmp, "locks"))
    expected = zlib.crc32(mf[:].view())
    barrier = ctx.Barrier(workers)
    out = ctx.Queue()
    procs = [ctx.Process(target=uss_reader, args=(mf[:], barrier, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    rows = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(60)
    assert all(row[1] == expected for row in rows), "a worker read different bytes"
    mf.close()
    os.unlink(path)
    growth = [row[2] for row in rows]
    return sum(growth), growth, [row[3] for row in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    args = parser.parse_args(argv)
    settings = settings_from_args(args)
    print("\n".join(machine_info()))
    print(f"multiprocessing start method (pool): {multiprocessing.get_start_method()}")
    tmp = tempfile.mkdtemp(prefix="bench_slices_")
    try:
        print_section("1-2. slicing and view export (per operation)")
        r, wall, wr = micro(tmp, settings)
        print("  (CPU time of this thread per operation; wall-clock, which adds waiting for a "
              "CPU on a busy machine, after it)")
        for name, label in (("slice", "s = mf[a:b]; s.release()"),
                            ("with", "with mf[a:b]: pass"),
                            ("numpy", "x = numpy.memmap[a:b]"),
                            ("mmap", "v = memoryview(mm)[a:b]; v.release()"),
                            ("memoryview", "v = memoryview(s); v.release()"),
                            ("view", "v = s.view(); v.release()"),
                            ("mgr_pin", "mgr.unpin(mgr.pin(a, b))"),
                            ("pin", "(floor) C pin + unpin"),
                            ("locks", "mgr.locks() (5 entries)"),
                            ("snapshot", "(floor) C ss_snapshot, same table")):
            if name in r:
                print(f"  {label:42s} {r[name].fmt()}   wall {wall[name].fmt()}")
        print(f"  with/explicit, paired on their own: {wr['median']:.3f}x (95% interval of the median "
              f"{wr['lo']:.3f}-{wr['hi']:.3f}x, {wr['n']} pairs, {wr['min']:.3f}-{wr['max']:.3f}x)")
        if not wr["decided"]:
            print(f"  !! WITHIN NOISE: the interval straddles the {WITH_TARGET}x target after "
                  f"{wr['n']} pairs; neither PASS nor MISS can be claimed (median "
                  f"{wr['median']:.3f}x, interval {wr['lo']:.3f}-{wr['hi']:.3f}x)")
        print_section("3. 8 x 64 MiB slices to a 2-worker Pool, crc32 each (seconds per batch)")
        p = pool_bench(tmp, settings)
        for name in ("slices", "tuples", "bytes"):
            print(f"  {name:8s} {p[name].fmt('s')}")
        print_section("4. 4 workers read all of a 256 MiB file through slices")
        total, growth, rss = uss_bench(tmp)
        print(f"  USS growth per worker: {', '.join(f'{g / 1024:+.0f} KiB' for g in growth)}; "
              f"total {total / MiB:+.2f} MiB")
        print(f"  (RSS growth per worker, i.e. pages each one mapped and touched: "
              f"{', '.join(f'{g / MiB:.0f} MiB' for g in rss)})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = [["`s = mf[a:b]; s.release()`", r["slice"].fmt(), "", ""]]
    ratio = paired_ratio(r["slice"], r["mmap"])
    rows.append(["... vs `memoryview(mm)[a:b]` + release", f"{fmt_ratio(ratio)} as long "
                 f"({r['mmap'].fmt()}; {ratio_spread(r['slice'], r['mmap'])})", "<= 2x", verdict(ratio <= 2)])
    if "numpy" in r:
        ratio = paired_ratio(r["numpy"], r["slice"])
        rows.append(["... vs `numpy.memmap` slicing", f"numpy takes {fmt_ratio(ratio)} as long "
                     f"({r['numpy'].fmt()})", "slices faster", verdict(ratio > 1)])
    else:
        rows.append(["... vs `numpy.memmap` slicing", "numpy not installed", "slices faster", "n/a"])
    with_verdict = (verdict(wr["hi"] <= WITH_TARGET) if wr["decided"] else
                    f"within noise ({'PASS' if wr['median'] <= WITH_TARGET else 'MISS'} by the median)")
    rows.append(["`with mf[a:b]: pass` vs the explicit form", f"{fmt_ratio(wr['median'])} as long "
                 f"({r['with'].fmt()}; median of {wr['n']} ABBA pairs, 95% interval "
                 f"{wr['lo']:.2f}-{wr['hi']:.2f}x, pairs {wr['min']:.2f}-{wr['max']:.2f}x; "
                 f"in the interleaved run {fmt_ratio(paired_ratio(r['with'], r['slice']))})",
                 "<= 1.2x", with_verdict])
    ratio = paired_ratio(r["memoryview"], r["mmap"])
    rows.append(["`memoryview(s)` + release vs `memoryview(mm)[a:b]` + release",
                 f"{fmt_ratio(ratio)} as long ({r['memoryview'].fmt()}; "
                 f"{ratio_spread(r['memoryview'], r['mmap'])})", "<= 1.5x",
                 verdict(ratio <= 1.5)])
    rows.append(["`v = s.view(); v.release()`", r["view"].fmt(), "", ""])
    ratio = paired_ratio(r["mgr_pin"], r["pin"])
    rows.append(["public `mgr.pin` + `unpin` vs the C fast path", f"{fmt_ratio(ratio)} as long "
                 f"({r['mgr_pin'].fmt()} vs {r['pin'].fmt()}; {ratio_spread(r['mgr_pin'], r['pin'])})",
                 "<= 1.5x", verdict(ratio <= 1.5)])
    ratio = paired_ratio(r["locks"], r["snapshot"])
    rows.append(["`mgr.locks()` (5 entries) vs the C snapshot", f"{fmt_ratio(ratio)} as long "
                 f"({r['locks'].fmt()} vs {r['snapshot'].fmt()}; "
                 f"{ratio_spread(r['locks'], r['snapshot'])})", "<= 5x", verdict(ratio <= 5)])
    # slices/tuples: ratio per repeat (they ran back to back), then the median;
    # bytes ran apart, so against it the medians are compared.
    speedup = p["bytes"].median / p["slices"].median   # measured apart: medians
    rows.append(["8 x 64 MiB to 2-worker Pool: slices", p["slices"].fmt("s"), "", ""])
    rows.append(["... sending bytes instead", f"{p['bytes'].fmt('s')}: slices {fmt_ratio(speedup)} faster",
                 ">= 10x faster", verdict(speedup >= 10)])
    vs_tuples = paired_ratio(p["slices"], p["tuples"])
    rows.append(["... hand-written (path, offset, length)", f"{p['tuples'].fmt('s')}: slices take "
                 f"{fmt_ratio(vs_tuples)} as long", "within 1.25x", verdict(vs_tuples <= 1.25)])
    rows.append(["4 workers read 256 MiB via slices: USS growth", f"{total / MiB:+.2f} MiB total",
                 "< 16 MiB", verdict(total < 16 * MiB)])
    print_section("summary (markdown)")
    print(markdown_table(["measurement", "result", "target", ""], rows))
    print(f"\nPython {sys.version.split()[0]}; medians of {settings.repeats} repeats "
          f"(pool: {1 if settings.quick else 11}, slices/tuples paired per repeat); min in parentheses; "
          "per-operation figures are CPU time, the pool figures wall-clock.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
