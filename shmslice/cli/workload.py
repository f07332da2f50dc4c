"""The demo's workload: a pool of processes that lock, write and checksum the slices of one file.

The parent maps the file, splits it into slices and hands each slice to a
worker as a small pickled descriptor; the worker maps the file itself, writes
a pattern under an exclusive lock and takes a checksum under a shared one.
The parent watches the lock table meanwhile and verifies every byte at the
end.  :mod:`shmslice.cli.commands.demo` is the command around it.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import multiprocessing
import os
import signal
import struct
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

from shmslice.cli.formatting import human_size, plural, terminal_columns
from shmslice.cli.owners import describe_owners
from shmslice.cli.snapshots import Snapshot
from shmslice.cli.tablefiles import Target
from shmslice.locks import LockInfo
from shmslice.mapping import MappedFile
from shmslice.mapping import open as shmslice_open
from shmslice.slices import ByteBufferSlice

__all__ = ["DEFAULT_SIZE", "DemoResult", "Progress", "default_chunk", "default_workers",
           "demo_pattern", "fill_pattern", "run_demo"]

DEFAULT_SIZE = 256 << 20
_PAGE = 4096
# No lock in the demo is held for more than milliseconds; a wait this long
# means something is wrong, and the demo should say so rather than hang.
LOCK_TIMEOUT_S = 30.0
_SNAPSHOT_EVERY_S = 0.1


@functools.lru_cache(maxsize=4)
def _filler(seed: int, length: int) -> bytes:
    """``length`` bytes of a 4 KiB pseudo-random block derived from ``seed``, repeated.

    Page-periodic, so the filler of any region is one slice of it (one memcpy).
    """
    key = seed.to_bytes(8, "little")
    page = b"".join(hashlib.blake2b(key + i.to_bytes(4, "little"), digest_size=64).digest()
                    for i in range(_PAGE // 64))
    return (page * (length // _PAGE + 1))[:length]


def fill_pattern(buf: memoryview, seed: int, start: int) -> None:
    """Write the demo's bytes for [start, start + len(buf)) into ``buf``.

    Every 4 KiB page of the file starts with its own offset (mixed with the
    run's seed) and continues with the run's filler, so a write landing in the
    wrong place, a lost write and a previous run's data all fail verification.
    Costs one memcpy plus one small store per page.
    """
    end = start + len(buf)
    phase = start % _PAGE
    filler = _filler(seed, _PAGE * (len(buf) // _PAGE + 2))
    with memoryview(filler) as source:
        buf[:] = source[phase:phase + len(buf)]
    for off in range(start - phase, end, _PAGE):
        header = struct.pack("<Q", off ^ seed)
        lo, hi = max(off, start), min(off + len(header), end)
        if lo < hi:
            buf[lo - start:hi - start] = header[lo - off:hi - off]


def demo_pattern(seed: int, start: int, end: int) -> bytes:
    """The bytes the demo writes at [start, end) (see :func:`fill_pattern`)."""
    out = bytearray(end - start)
    with memoryview(out) as view:
        fill_pattern(view, seed, start)
    return bytes(out)


def _worker_init() -> None:
    """Set up a worker process of the demo's pool."""
    # Ctrl-C reaches the whole process group; the parent shuts the pool down in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _task(index: int, piece: ByteBufferSlice, seed: int) -> tuple[int, int, float, float, int]:
    """Write and checksum one slice: the unit of work of the demo.

    ``piece`` arrived pickled as a small descriptor; unpickling mapped the file
    in this worker (once per process) and pinned the region.  The pattern is
    written under an exclusive lock, the checksum taken under a shared one,
    both straight through zero-copy views of the mapping.  Returns (index,
    crc32, started, finished, pid); the times are ``time.monotonic()``, one
    clock for every process on the machine.
    """
    started = time.monotonic()
    with piece:   # drops this worker's pin on the region when done
        with piece.lock("exclusive", timeout=LOCK_TIMEOUT_S), piece.view() as view:
            fill_pattern(view, seed, piece.start)
        with piece.lock("shared", timeout=LOCK_TIMEOUT_S), piece.view() as view:
            crc = zlib.crc32(view)
    return index, crc, started, time.monotonic(), os.getpid()


def default_workers() -> int:
    return max(2, min(8, os.cpu_count() or 2))


def default_chunk(size: int, workers: int) -> int:
    """About 64 slices per worker, page-aligned, between 64 KiB and 8 MiB."""
    chunk = size // (workers * 64)
    chunk = max(64 << 10, min(8 << 20, chunk))
    return max(_PAGE, chunk - chunk % _PAGE)


@dataclass
class LockCounts:
    """Lock counts in one snapshot of the table, as the demo's live line shows them."""

    exclusive: int = 0
    shared: int = 0
    pins: int = 0
    pin_refs: int = 0
    waiting: int = 0
    processes: int = 0

    @classmethod
    def of(cls, entries: Sequence[LockInfo]) -> LockCounts:
        c = cls()
        for e in entries:
            if e.waiting:
                c.waiting += 1
            elif e.kind == "exclusive":
                c.exclusive += 1
            elif e.kind == "shared":
                c.shared += 1
            elif e.kind == "pin":
                c.pins += 1
                c.pin_refs += e.count
        c.processes = len({e.pid for e in entries})
        return c

    def line(self) -> str:
        return (f"locks: {self.exclusive} exclusive, {self.shared} shared, "
                f"{plural(self.pins, 'pin')} ({self.pin_refs} refs), {self.waiting} waiting, "
                f"{plural(self.processes, 'process', 'processes')}")


class Progress:
    """Progress of the demo: one line redrawn in place on a terminal, else a line now and then."""

    def __init__(self, out: TextIO, enabled: bool) -> None:
        self.out = out
        self.enabled = enabled
        self.tty = enabled and bool(terminal_columns(out))
        self.last_print = 0.0

    def update(self, text: str, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            self.out.write("\r\x1b[K" + text + ("\n" if final else ""))
            self.out.flush()
        elif final or now - self.last_print >= 0.5:
            # Not a terminal (a log, a pipe): a line every half second at most.
            self.out.write(text + "\n")
            self.out.flush()
            self.last_print = now


@dataclass
class DemoResult:
    """What ``shmslice demo`` measured and found."""

    path: str
    table: str
    size: int
    chunk: int
    slices: int
    workers: int
    work_seconds: float = 0.0
    verify_seconds: float = 0.0
    wall_seconds: float = 0.0
    bad_slices: list[int] = field(default_factory=list)
    first_bad_offset: int | None = None
    busiest: Snapshot | None = None
    processes: list[int] = field(default_factory=list)
    checksums: dict[int, int] = field(default_factory=dict)   #: slice index -> worker's crc32

    @property
    def ok(self) -> bool:
        return not self.bad_slices


def run_demo(path: str, size: int, chunk: int, workers: int, lock_dir: str,
             progress: Progress, fault_offset: int | None = None,
             durable: bool = False) -> DemoResult:
    """Create ``path``, let a pool of ``workers`` write and checksum it slice by slice, verify it.

    ``durable`` flushes the file to disk at the end (worth it only for a file
    that is kept).
    """
    wall0 = time.monotonic()
    seed = int.from_bytes(os.urandom(8), "little")
    mf = shmslice_open(path, "w+", size=size, lock_dir=lock_dir)
    pieces: list[ByteBufferSlice] = []
    try:
        pieces = mf.split(chunk)
        result = DemoResult(path, mf.lock_manager.table_path, size, chunk, len(pieces), workers)
        _run_pool(mf, pieces, seed, result, progress)
        if fault_offset is not None:
            # Test hook (hidden --fault): damage one byte behind the workers' backs,
            # as a lost or misdirected write would, to prove verification notices.
            with mf.lock(fault_offset, fault_offset + 1, "exclusive", timeout=LOCK_TIMEOUT_S):
                with mf.slice(fault_offset, fault_offset + 1) as byte:
                    damaged = bytes([byte.tobytes()[0] ^ 0xFF])
                mf[fault_offset:fault_offset + 1] = damaged
        t1 = time.monotonic()
        _verify(mf, seed, result)
        result.verify_seconds = time.monotonic() - t1
        if durable:
            mf.flush()
    finally:
        for piece in pieces:
            piece.release()
        mf.close()
    result.wall_seconds = time.monotonic() - wall0
    return result


def _run_pool(mf: MappedFile, pieces: list[ByteBufferSlice], seed: int, result: DemoResult,
              progress: Progress) -> None:
    """Run one task per slice on a process pool, showing progress and the table's lock counts.

    Our own slice of each region stays alive (pinned) until its task is done,
    as a producer keeps its input until the consumer has it: the pins in the
    live line fall as the work completes.
    """
    me = os.getpid()
    target = Target(mf.path, mf.path, mf.lock_manager.table_path)
    pids: set[int] = set()
    done_bytes = 0
    first_start = last_finish = None
    busiest = -1
    width = len(str(len(pieces)))
    # spawn, not fork: each worker is a fresh interpreter that maps the file and
    # attaches to the table on its own, as unrelated processes of a pipeline would.
    context = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=result.workers, mp_context=context, initializer=_worker_init)
    # Ctrl-C only sets a flag, checked between waits: a KeyboardInterrupt raised
    # inside concurrent.futures' own machinery (its locks, its queue feeder) can
    # leave the executor unable to shut down, and the demo hanging.
    interrupted = threading.Event()
    previous_handler = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.set())
    try:
        futures = {pool.submit(_task, i, piece, seed): i for i, piece in enumerate(pieces)}
        pending = set(futures)
        while pending:
            if interrupted.is_set():
                raise KeyboardInterrupt
            finished, pending = concurrent.futures.wait(
                pending, timeout=_SNAPSHOT_EVERY_S,
                return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                index, crc, started, ended, pid = future.result()
                piece = pieces[index]
                result.checksums[index] = crc
                pids.add(pid)
                done_bytes += len(piece)
                piece.release()
                first_start = started if first_start is None else min(first_start, started)
                last_finish = ended if last_finish is None else max(last_finish, ended)
            entries = mf.lock_manager.locks(waiting=True)
            theirs = sum(1 for e in entries if e.pid != me)
            if theirs > busiest:
                # Keep the moment the workers held most, with their owners as they were.
                busiest = theirs
                result.busiest = Snapshot(target, mf.lock_manager.stat(), entries, time.time(),
                                          describe_owners(entries))
            if not result.checksums and not theirs:
                continue   # workers still starting: nothing worth a line yet
            # Rate over the work itself: worker start-up (a fresh interpreter each) is not I/O.
            elapsed = time.monotonic() - first_start if first_start is not None else 0.0
            rate = done_bytes / elapsed if elapsed > 0 else 0.0
            progress.update(f"  {len(result.checksums):>{width}}/{len(pieces)} slices  "
                            f"{human_size(done_bytes):>10}  {human_size(int(rate)):>10}/s  "
                            f"{LockCounts.of(entries).line()}")
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    pool.shutdown(wait=True)
    if interrupted.is_set():
        raise KeyboardInterrupt
    result.processes = sorted(pids)
    if first_start is not None and last_finish is not None:
        result.work_seconds = last_finish - first_start
    progress.update(f"  {len(pieces)}/{len(pieces)} slices  {human_size(result.size)}  "
                    f"done in {result.work_seconds:.2f}s", final=True)


def _verify(mf: MappedFile, seed: int, result: DemoResult) -> None:
    """Compare every byte with the pattern, and every slice with its worker's checksum."""
    with mf.lock(0, result.size, "shared", timeout=LOCK_TIMEOUT_S):
        if len(mf) != result.size:
            result.bad_slices = list(range(result.slices))
            result.first_bad_offset = min(len(mf), result.size)
            return
        for index, start in enumerate(range(0, result.size, result.chunk)):
            end = min(start + result.chunk, result.size)
            want = bytearray(end - start)
            with memoryview(want) as scratch:
                fill_pattern(scratch, seed, start)
            with mf.slice(start, end) as piece:
                # bytes == bytearray compares with memcmp; memoryview == would go
                # element by element, 40 times slower.
                got = piece.tobytes()
            if got == want and result.checksums.get(index) == zlib.crc32(got):
                continue
            result.bad_slices.append(index)
            if result.first_bad_offset is None:
                diff = next((i for i in range(end - start) if got[i] != want[i]), 0)
                result.first_bad_offset = start + diff

