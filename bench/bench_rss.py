"""What it costs to give touched pages back: the candidates for keeping worker RSS down.

    python bench/bench_rss.py            # full run (about a minute)
    python bench/bench_rss.py --quick    # smoke run

Pages of a shared file mapping that a process touched count in its RSS for as long as they stay
mapped.  Four ways to read a file region by region, measured in one run, interleaved (the order
rotates every repeat), medians of repeats:

* ``released``: shmslice slices of one long-lived mapping; each region's pages are dropped with
  ``madvise(MADV_DONTNEED)`` when its last buffer is released (the default, ``release_pages``);
* ``kept``: the same slices with ``release_pages = False`` (pages stay mapped: RSS grows);
* ``window``: a fresh ``mmap`` of just the region per use, unmapped after (per-slice windows);
* ``remap``: the whole file mapped per use and unmapped when idle (dropping idle mappings).

For each: seconds per pass over a 512 MiB file in 32 MiB regions (crc32 of each), RSS growth
after the passes, and the cost of one 4 KiB region (take, crc32, give back) in microseconds.
Targets are not asserted; the machine may be shared (the spread is printed).
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import sys
import tempfile
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Stats, add_common_args, machine_info, markdown_table

import shmslice

MiB = 1 << 20
REGION = 32 * MiB


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def window_crc(fd: int, offset: int, length: int) -> int:
    base = offset - offset % mmap.ALLOCATIONGRANULARITY
    with mmap.mmap(fd, length + offset - base, access=mmap.ACCESS_READ, offset=base) as mm:
        view = memoryview(mm)[offset - base:]
        try:
            return zlib.crc32(view)
        finally:
            view.release()


def remap_crc(fd: int, offset: int, length: int) -> int:
    with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)[offset:offset + length]
        try:
            return zlib.crc32(view)
        finally:
            view.release()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 9)
    small_n = 2000 if args.quick else 20000
    print("\n".join(machine_info()))
    tmp = tempfile.mkdtemp(prefix="bench_rss_")
    try:
        path = os.path.join(tmp, "data.bin")
        size = 512 * MiB
        block = os.urandom(MiB)
        with open(path, "wb") as f:
            for _ in range(size // MiB):
                f.write(block)
        lock_dir = os.path.join(tmp, "locks")
        released = shmslice.open(path, "r", lock_dir=lock_dir)
        kept = shmslice.open(path, "r", lock_dir=os.path.join(tmp, "locks2"))
        kept.release_pages = False
        fd = os.open(path, os.O_RDONLY)
        expected = [zlib.crc32(block * (REGION // MiB))] * (size // REGION)

        def slices_pass(mf: shmslice.MappedFile) -> list[int]:
            out = []
            for a in range(0, size, REGION):
                with mf[a:a + REGION] as s:
                    out.append(zlib.crc32(s))
            return out

        passes = {
            "released": lambda: slices_pass(released),
            "kept": lambda: slices_pass(kept),
            "window": lambda: [window_crc(fd, a, REGION) for a in range(0, size, REGION)],
            "remap": lambda: [remap_crc(fd, a, REGION) for a in range(0, size, REGION)],
        }
        offsets = [(k * 7919 * 4096) % (size - 4096) for k in range(small_n)]

        def small_slices(mf: shmslice.MappedFile) -> None:
            for a in offsets:
                with mf[a:a + 4096] as s:
                    zlib.crc32(s)

        smalls = {
            "released": lambda: small_slices(released),
            "kept": lambda: small_slices(kept),
            "window": lambda: [window_crc(fd, a, 4096) for a in offsets],
            "remap": lambda: [remap_crc(fd, a, 4096) for a in offsets],
        }
        pass_t = {k: Stats() for k in passes}
        small_t = {k: Stats() for k in passes}
        growth: dict[str, int] = {}
        names = list(passes)
        for name in names:   # warm-up; RSS growth of a first full pass, from a clean start
            before = rss()
            assert passes[name]() == expected, name
            growth[name] = rss() - before
        for i in range(repeats):
            order = names[i % len(names):] + names[:i % len(names)]
            for name in order:
                t0 = time.perf_counter()
                assert passes[name]() == expected, name
                pass_t[name].add(time.perf_counter() - t0)
                t0 = time.perf_counter()
                smalls[name]()
                small_t[name].add((time.perf_counter() - t0) / small_n)
        rows = []
        base = pass_t["kept"].median
        for name in names:
            rows.append([name, pass_t[name].fmt("s"), f"{pass_t[name].median / base:.2f}x",
                         f"{growth[name] / MiB:+.0f} MiB", small_t[name].fmt()])
        released.close()
        kept.close()
        os.close(fd)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(markdown_table(["strategy", "pass over 512 MiB (32 MiB regions)", "vs kept",
                          "RSS growth after a pass", "one 4 KiB region"], rows))
    print(f"\nPython {sys.version.split()[0]}; medians of {repeats} repeats (min in parentheses), "
          "interleaved, order rotated every repeat.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
