"""Attaching validates a table in steps, each its own short hold of the table
mutex: the whole table is checked on a copy when nobody changed it during the
pass, else (a table that keeps changing) every entry's own fields are.

The step is forced small (ss_debug_set_attach_step) so that a table of a few
hundred entries takes dozens of holds and the other processes' changes land
between them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import shmslice
from shmslice._binding import ffi, lib, table_constants, table_layout
from tests import _attachhelpers as helpers
from tests.support import end_process, wait_until

START_METHODS = ["fork", "spawn"]
LAYOUT = table_layout()
CONST = table_constants()
STEP = 16
HELD = 600


@pytest.fixture(autouse=True)
def small_steps() -> Iterator[None]:
    lib.ss_debug_set_attach_step(STEP, 0)
    yield
    lib.ss_debug_set_attach_step(0, 0)


def _stats() -> tuple[int, int, int, int]:
    passes, holds = ffi.new("uint32_t *"), ffi.new("uint32_t *")
    whole, longest = ffi.new("uint32_t *"), ffi.new("uint64_t *")
    lib.ss_debug_attach_stats(passes, holds, whole, longest)
    return passes[0], holds[0], whole[0], longest[0]


def _data(tmp_path: Path) -> Path:
    p = tmp_path / "attach.bin"
    with open(p, "wb") as f:
        f.truncate(1 << 20)
    return p


def _hdr(table: str, field: str) -> tuple[int, str]:
    off, size = LAYOUT[f"hdr.{field}"]
    return off, {4: "<I", 8: "<Q"}[size]


def _entry_of(table: str, start: int) -> int:
    """Offset in the table file of the granted entry starting at `start`."""
    raw = Path(table).read_bytes()
    hwm_off, fmt = _hdr(table, "entry_hwm")
    hwm = struct.unpack_from(fmt, raw, hwm_off)[0]
    s_off, state_off = LAYOUT["entry.start"][0], LAYOUT["entry.state"][0]
    for i in range(hwm):
        e = CONST["entries_offset"] + i * CONST["entry_bytes"]
        if raw[e + state_off] != 0 and struct.unpack_from("<Q", raw, e + s_off)[0] == start:
            return e
    raise AssertionError(f"no entry starts at {start}")


def _poke(table: str, off: int, fmt: str, value: int) -> int:
    """Write value at off in the table file (the mapping is shared, so every
    process sees it at once); returns the old value."""
    fd = os.open(table, os.O_RDWR)
    try:
        size = struct.calcsize(fmt)
        old = struct.unpack(fmt, os.pread(fd, size, off))[0]
        os.pwrite(fd, struct.pack(fmt, value), off)
        return int(old)
    finally:
        os.close(fd)


def _start_churners(c: Any, data: Path, lock_dir: Path,
                    grow: int = 0) -> tuple[list[Any], Any, list[Any]]:
    """Two churners (tests/_attachhelpers.py); with grow, the first keeps
    growing the table by a pin per round, up to grow pins."""
    stop = c.Event()
    counts = [c.Value("q", 0) for _ in range(2)]
    procs = [c.Process(target=helpers.churn, args=(str(data), str(lock_dir), 7 + k, stop,
                                                   counts[k], 90.0, grow if k == 0 else 0),
                       daemon=True)
             for k in range(2)]
    for p in procs:
        p.start()
    wait_until(lambda: all(v.value >= 5 for v in counts), "the churners to get going", 60)
    return procs, stop, counts


def _stop_churners(procs: list[Any], stop: Any) -> list[int | None]:
    stop.set()
    for p in procs:
        end_process(p, 30)
    return [p.exitcode for p in procs]


def test_quiet_table_is_copied_in_steps_and_checked_whole(tmp_path: Path,
                                                          lock_dir: Path) -> None:
    data = _data(tmp_path)
    with shmslice.LockManager(data, lock_dir=lock_dir) as holder:
        keep = [holder.lock(i * 16, i * 16 + 8) for i in range(HELD)]
        hwm_off, fmt = _hdr(holder.table_path, "entry_hwm")
        hwm = struct.unpack_from(fmt, Path(holder.table_path).read_bytes(), hwm_off)[0]
        with shmslice.LockManager(data, lock_dir=lock_dir) as other:
            passes, holds, whole, longest = _stats()
            assert (passes, whole) == (1, 1)
            # header and slots, then one hold per step of entries
            assert holds == 1 + (hwm + STEP - 1) // STEP
            assert 0 < longest < 10**9
            other.lock(1 << 19, (1 << 19) + 8).release()
        lib.ss_debug_set_attach_step(0, 0)
        with shmslice.LockManager(data, lock_dir=lock_dir):
            assert _stats()[:3] == (1, 1, 1)   # the default step holds the whole of it
        for lk in keep:
            lk.release()


@pytest.mark.parametrize("method", START_METHODS)
def test_attach_to_a_table_that_keeps_changing(method: str, tmp_path: Path,
                                               lock_dir: Path) -> None:
    """Two processes change the table all the time, one also growing it (its
    high-water mark rises past the capacity, so passes find it grew);
    attaching still succeeds (never a false CorruptLockTable from a copy
    spanning their changes), falls back to entry-by-entry checks after
    SS_VALIDATE_PASSES tries, and the handle works."""
    c = mp.get_context(method)
    data = _data(tmp_path)
    with shmslice.LockManager(data, lock_dir=lock_dir) as holder:
        keep = [holder.lock(i * 16, i * 16 + 8) for i in range(HELD)]
        capacity = holder.stat().capacity
        procs, stop, counts = _start_churners(c, data, lock_dir, grow=4000)
        try:
            outcomes: dict[tuple[int, int], int] = {}
            deadline = time.monotonic() + 30
            def done() -> bool:
                return (sum(outcomes.values()) >= 20 and (3, 0) in outcomes and
                        holder.stat().capacity > capacity)

            while time.monotonic() < deadline and not done():
                with shmslice.LockManager(data, lock_dir=lock_dir) as mgr:
                    passes, holds, whole, _ = _stats()
                    mgr.lock(1 << 19, (1 << 19) + 8).release()
                    mgr.pin(helpers.BASE, helpers.BASE + 8)
                assert holds >= 2 and 1 <= passes <= 3
                assert whole or passes == 3, (passes, whole)
                outcomes[(passes, whole)] = outcomes.get((passes, whole), 0) + 1
            assert (3, 0) in outcomes, f"the fallback never ran: {outcomes}"
            assert holder.stat().capacity > capacity, "the table never grew meanwhile"
        finally:
            codes = _stop_churners(procs, stop)
        assert codes == [0, 0], f"churner exit codes {codes}"
        assert all(v.value > 5 for v in counts)
        with shmslice.LockManager(data, lock_dir=lock_dir):
            assert _stats()[::2] == (1, 1)   # quiet again: one pass, checked whole
        for lk in keep:
            lk.release()


def test_corrupt_counter_is_refused_by_the_whole_check(tmp_path: Path, lock_dir: Path) -> None:
    data = _data(tmp_path)
    with shmslice.LockManager(data, lock_dir=lock_dir) as holder:
        keep = [holder.lock(i * 16, i * 16 + 8) for i in range(HELD)]
        off, fmt = _hdr(holder.table_path, "used")
        used = _poke(holder.table_path, off, fmt, HELD + 7)
        try:
            with pytest.raises(shmslice.CorruptLockTable, match="counters disagree"):
                shmslice.LockManager(data, lock_dir=lock_dir)
            passes, holds, whole, _ = _stats()
            assert (passes, whole) == (1, 1) and holds > 1
        finally:
            _poke(holder.table_path, off, fmt, used)
        with shmslice.LockManager(data, lock_dir=lock_dir):
            pass
        for lk in keep:
            lk.release()


@pytest.mark.parametrize("method", START_METHODS)
def test_corrupt_entry_is_refused_on_the_fallback_path(method: str, tmp_path: Path,
                                                      lock_dir: Path) -> None:
    """An entry with a zero reference count, far from where the churners work
    (their calls never look at it): refused by every attach, including those
    that found the table changing on every pass and checked entry by entry."""
    c = mp.get_context(method)
    data = _data(tmp_path)
    with shmslice.LockManager(data, lock_dir=lock_dir) as holder:
        keep = [holder.lock(i * 16, i * 16 + 8) for i in range(HELD)]
        count_off = _entry_of(holder.table_path, (HELD - 5) * 16) + LAYOUT["entry.count"][0]
        procs, stop, _ = _start_churners(c, data, lock_dir)
        old = _poke(holder.table_path, count_off, "<I", 0)
        try:
            ways: dict[int, int] = {}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not ways.get(0):
                with pytest.raises(shmslice.CorruptLockTable, match="malformed"):
                    shmslice.LockManager(data, lock_dir=lock_dir)
                passes, _, whole, _ = _stats()
                assert whole or passes == 3
                ways[whole] = ways.get(whole, 0) + 1
            assert ways.get(0), f"the fallback never ran: {ways}"
        finally:
            _poke(holder.table_path, count_off, "<I", old)
            codes = _stop_churners(procs, stop)
        assert codes == [0, 0], f"churner exit codes {codes}"
        for lk in keep:
            lk.release()


def test_table_too_big_to_copy_is_checked_entry_by_entry(tmp_path: Path,
                                                         lock_dir: Path) -> None:
    """Above the copy's size limit (forced down to 4 KiB here) no copy is
    made: one pass checks every entry's own fields step by step, and still
    refuses a malformed entry."""
    lib.ss_debug_set_attach_step(STEP, 4096)
    data = _data(tmp_path)
    with shmslice.LockManager(data, lock_dir=lock_dir) as holder:
        keep = [holder.lock(i * 16, i * 16 + 8) for i in range(HELD)]
        with shmslice.LockManager(data, lock_dir=lock_dir) as other:
            passes, holds, whole, _ = _stats()
            assert (passes, whole) == (1, 0) and holds > HELD // STEP
            other.lock(1 << 19, (1 << 19) + 8).release()
        kind_off = _entry_of(holder.table_path, 100 * 16) + LAYOUT["entry.kind"][0]
        old = _poke(holder.table_path, kind_off, "<B", 77)
        try:
            with pytest.raises(shmslice.CorruptLockTable, match="malformed"):
                shmslice.LockManager(data, lock_dir=lock_dir)
            assert _stats()[::2] == (1, 0)
        finally:
            _poke(holder.table_path, kind_off, "<B", old)
        for lk in keep:
            lk.release()
