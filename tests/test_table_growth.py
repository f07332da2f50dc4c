"""The lock table grows on demand: a small fresh table, growth while other
processes lock and pin, a process killed while growing, the ceiling and the
reserve for other processes, the holders named when the table is full, and
the argument that sets the ceiling."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import shmslice
from shmslice._binding import table_constants
from tests import _growhelpers as helpers
from tests.support import end_process, wait_until

START_METHODS = ["fork", "spawn"]
CONST = table_constants()
INITIAL = CONST["initial_capacity"]


def _data(tmp_path: Path, size: int = 1 << 20) -> Path:
    p = tmp_path / "grow.bin"
    with open(p, "wb") as f:
        f.truncate(size)
    return p


def _start(c, target, *args) -> mp.process.BaseProcess:
    p = c.Process(target=target, args=args, daemon=True)
    p.start()
    return p


def test_fresh_table_is_small_and_grows_by_doubling(tmp_path: Path, lock_dir: Path) -> None:
    data = _data(tmp_path)
    with shmslice.LockManager(data, lock_dir=lock_dir) as mgr:
        st = mgr.stat()
        blocks = os.stat(mgr.table_path).st_blocks * 512
        assert blocks == st.allocated_bytes <= 64 * 1024
        assert (st.capacity, st.proc_capacity) == (INITIAL, CONST["initial_procs"])
        assert (st.max_capacity, st.ceiling_source) == (CONST["default_max_entries"], "default")
        assert st.reserve == st.max_capacity >> CONST["reserve_shift"]
        refs = [mgr.pin(k, k + 1) for k in range(INITIAL * 8 + 1)]
        st = mgr.stat()
        assert st.capacity == INITIAL * 16 and st.growths == 4 and st.used == len(refs)
        # About 80 bytes per entry allocated, never the ceiling's 1.3 GB.
        assert st.allocated_bytes <= 64 * 1024 + st.capacity * CONST["entry_bytes"] + 4096
        assert [(h.pid, h.entries, h.alive) for h in st.holders] == [(os.getpid(), len(refs), True)]
        for r in refs:
            mgr.unpin(r)
        assert mgr.stat().used == 0 and mgr.stat().capacity == INITIAL * 16   # never shrinks


def test_slot_table_grows_with_attached_handles(tmp_path: Path, lock_dir: Path) -> None:
    data = _data(tmp_path)
    n = CONST["initial_procs"] * 2 + 10
    mgrs = [shmslice.LockManager(data, lock_dir=lock_dir) for _ in range(n)]
    try:
        locks = [m.lock(k * 10, k * 10 + 5) for k, m in enumerate(mgrs)]
        st = mgrs[0].stat()
        assert st.procs == n and st.proc_capacity == CONST["initial_procs"] * 4
        assert len(st.holders) == n and all(h.entries == 1 for h in st.holders)
        for lk in locks:
            lk.release()
    finally:
        for m in mgrs:
            m.close()


def test_max_entries_is_validated(tmp_path: Path, lock_dir: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data(tmp_path)
    for bad in ["10", 1.5, True]:
        with pytest.raises(TypeError, match="max_entries must be an int"):
            shmslice.LockManager(data, lock_dir=lock_dir, max_entries=bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="max_entries must be an int"):
            shmslice.open(data, lock_dir=lock_dir, max_entries=bad)  # type: ignore[arg-type]
    for bad in [0, -1, 2**24 + 1]:
        with pytest.raises(ValueError, match=r"between 1 and 16777216"):
            shmslice.LockManager(data, lock_dir=lock_dir, max_entries=bad)
    monkeypatch.setenv("SHMSLICE_MAX_ENTRIES", "lots")
    with pytest.raises(ValueError, match=r"\$SHMSLICE_MAX_ENTRIES must be a whole number"):
        shmslice.LockManager(data, lock_dir=lock_dir)
    monkeypatch.setenv("SHMSLICE_MAX_ENTRIES", "0")
    with pytest.raises(ValueError, match=r"\$SHMSLICE_MAX_ENTRIES must be between"):
        shmslice.LockManager(data, lock_dir=lock_dir)
    assert not os.listdir(lock_dir) if lock_dir.exists() else True   # nothing was created
    monkeypatch.setenv("SHMSLICE_MAX_ENTRIES", "100_000")
    with shmslice.LockManager(data, lock_dir=lock_dir) as mgr:
        st = mgr.stat()
        assert (st.max_capacity, st.ceiling_source, st.reserve) == (100_000, "given", 6250)
        # An existing table keeps its ceiling, whatever a later attacher asks.
        with shmslice.LockManager(data, lock_dir=lock_dir, max_entries=50) as other:
            assert other.stat().max_capacity == 100_000
    monkeypatch.delenv("SHMSLICE_MAX_ENTRIES")
    other_data = tmp_path / "other.bin"
    other_data.write_bytes(bytes(4096))
    with shmslice.open(other_data, lock_dir=lock_dir, max_entries=700) as mf:
        st = mf.lock_manager.stat()
        assert (st.max_capacity, st.capacity, st.ceiling_source) == (700, INITIAL, "given")


@pytest.mark.parametrize("method", START_METHODS)
def test_growth_under_concurrent_use_keeps_exclusion_and_counts(
        method: str, tmp_path: Path, lock_dir: Path) -> None:
    """Four workers (more than the cores) lock and check each other while
    bursts of pins grow the table through several doublings."""
    c = mp.get_context(method)
    data = _data(tmp_path)
    workers, units = 4, 32
    record = tmp_path / "marks"
    record.write_bytes(bytes(workers * units))
    with shmslice.LockManager(data, lock_dir=lock_dir) as mgr:
        procs = [_start(c, helpers.lock_pin_and_grow, str(data), str(lock_dir), str(record), k,
                        workers, units, 3.0, 700, 1000 + k) for k in range(workers)]
        try:
            for p in procs:
                p.join(90)
            codes = [p.exitcode for p in procs]
            assert codes == [0] * workers, f"worker exit codes {codes} " \
                f"({helpers.VIOLATION}: exclusion broken, 4: pins miscounted)"
            st = mgr.stat()
            assert st.growths >= 3 and st.capacity >= INITIAL * 8, st
            assert st.used == 0     # every worker closed: all its entries went with it
        finally:
            for p in procs:
                end_process(p)


@pytest.mark.parametrize("method", START_METHODS)
@pytest.mark.parametrize(("point", "what"), [(10, "entries"), (11, "slots")])
def test_killed_while_growing_leaves_a_table_the_next_process_repairs(
        method: str, point: int, what: str, tmp_path: Path, lock_dir: Path) -> None:
    c = mp.get_context(method)
    data = _data(tmp_path)
    p = _start(c, helpers.die_growing, str(data), str(lock_dir), point, what, 4096)
    p.join(60)
    assert p.exitcode == -signal.SIGKILL, f"crash point {point} not reached (exit {p.exitcode})"
    with shmslice.LockManager(data, lock_dir=lock_dir) as mgr:
        st = mgr.stat()
        assert st.repairs >= 1                       # it died holding the table mutex
        assert (st.capacity, st.max_capacity) == (INITIAL, 4096)
        # Its entries are reclaimed: by reap, or already when our attach took
        # over its slot (every slot was its when it died growing the slots).
        mgr.reap()
        assert mgr.locks() == [] and mgr.stat().used == 0
        # The range it allocated but never published is simply allocated again.
        refs = [mgr.pin(k, k + 1) for k in range(2000)]
        slots = [shmslice.LockManager(data, lock_dir=lock_dir)
                 for _ in range(CONST["initial_procs"] + 1)]
        st = mgr.stat()
        assert st.capacity == INITIAL * 4 and st.used == 2000
        assert st.proc_capacity == CONST["initial_procs"] * 2
        for s in slots:
            s.close()
        for r in refs:
            mgr.unpin(r)
    shmslice.TableView(mgr.table_path).close()     # and it validates from scratch


@pytest.mark.parametrize("method", START_METHODS)
def test_reserve_lets_others_lock_and_the_full_table_names_its_holders(
        method: str, tmp_path: Path, lock_dir: Path) -> None:
    """One process fills its share (the ceiling less 1/16); another can still
    lock and pin until the ceiling, where the error names the first one."""
    c = mp.get_context(method)
    data = _data(tmp_path)
    ceiling = 1024
    share = ceiling - ceiling // 16
    parent_end, child_end = c.Pipe()
    p = _start(c, helpers.pin_until_full, str(data), str(lock_dir), ceiling, child_end)
    try:
        assert parent_end.poll(60), "the filler never reported"
        count, message = parent_end.recv()
        assert count == share, message
        assert f"holds {share} entries, the most one process may hold" in message
        with shmslice.LockManager(data, lock_dir=lock_dir) as mgr:
            lk = mgr.lock(0, 1 << 20, "shared")             # others still lock ...
            refs = [mgr.pin((1 << 30) + k, (1 << 30) + k + 1) for k in range(ceiling - share - 1)]
            assert mgr.stat().used == ceiling                # ... and pin, to the ceiling
            with pytest.raises(shmslice.LockTableFull) as info:
                mgr.lock(1 << 31, (1 << 31) + 1, timeout=0)
            text = str(info.value)
            assert f"at its ceiling of {ceiling} entries" in text
            assert f"most held by pid {p.pid} (" in text and f"{share} entries" in text
            assert f"pid {os.getpid()} (" in text and f"{ceiling - share} entries" in text
            holders = [(h.pid, h.entries) for h in mgr.stat().holders]
            assert holders[:2] == [(p.pid, share), (os.getpid(), ceiling - share)]
            lk.release()
            mgr.lock(1 << 31, (1 << 31) + 1, timeout=0).release()   # a freed entry is reused
            for r in refs:
                mgr.unpin(r)
    finally:
        parent_end.send("go")
        end_process(p)


@pytest.mark.parametrize("method", START_METHODS)
def test_full_table_sweep_reclaims_exactly_a_dead_owners_entries(
        method: str, tmp_path: Path, lock_dir: Path) -> None:
    """A table at its ceiling with two owners' entries interleaved over 16
    handles: a lock fails (also when retried at once) while both live, and
    once one is SIGKILLed a lock reclaims exactly its entries.

    (The earlier version of this test hung: its children waited on one
    multiprocessing.Event, and Event.set() blocks for ever once a waiter was
    SIGKILLed -- a multiprocessing limitation, not the table's.  Each child
    now waits on a pipe of its own.)"""
    c = mp.get_context(method)
    data = _data(tmp_path, 1 << 24)
    handles, per = 8, 20
    started = time.monotonic()
    with shmslice.LockManager(data, lock_dir=lock_dir, max_entries=2 * handles * per) as mgr:
        pipes = [c.Pipe() for _ in range(2)]
        kids = [_start(c, helpers.pin_many, str(data), str(lock_dir), handles, per, k << 20,
                       pipes[k][1]) for k in range(2)]
        try:
            for parent_end, _ in pipes:
                assert parent_end.poll(60) and parent_end.recv() == "ready"
            assert mgr.stat().used == 2 * handles * per
            for _ in range(3):
                with pytest.raises(shmslice.LockTableFull, match="at its ceiling"):
                    mgr.lock(1 << 30, (1 << 30) + 1, timeout=0)
            os.kill(kids[0].pid, signal.SIGKILL)
            kids[0].join(10)
            wait_until(lambda: _lock_once(mgr), "a lock to reclaim the dead owner's entries",
                       timeout=10)
            entries = mgr.locks()
            assert len(entries) == handles * per and all(e.alive for e in entries)
            assert {e.pid for e in entries} == {kids[1].pid}
        finally:
            for parent_end, _ in pipes:
                parent_end.send("go")
            for p in kids:
                end_process(p)
    assert time.monotonic() - started < 60


def _lock_once(mgr: shmslice.LockManager) -> bool:
    try:
        mgr.lock(1 << 30, (1 << 30) + 1, timeout=0).release()
    except shmslice.LockTableFull:
        return False
    return True


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)],
                          capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=30)


def test_full_filesystem_is_an_error_at_growth_never_sigbus(tmp_path: Path,
                                                             small_tmpfs: Path) -> None:
    data = _data(tmp_path)
    with shmslice.LockManager(data, lock_dir=small_tmpfs) as mgr:
        st = mgr.stat()
        # About 1 MiB of room at 80 bytes an entry.
        assert st.ceiling_source == "filesystem" and 10_000 < st.max_capacity < (1 << 20) // 80
    os.unlink(mgr.table_path)
    with shmslice.LockManager(data, lock_dir=small_tmpfs, max_entries=1 << 20) as mgr:
        filler = small_tmpfs / "filler"
        with open(filler, "wb") as f:                       # leave the table ~100 KiB of room
            room = os.statvfs(small_tmpfs).f_bavail * os.statvfs(small_tmpfs).f_frsize
            f.write(bytes(max(0, room - 100 * 1024)))
        refs: list[int] = []

        def pin_until_refused() -> None:
            while len(refs) < 1 << 20:
                refs.append(mgr.pin(len(refs), len(refs) + 1))

        with pytest.raises(shmslice.LockTableFull, match="no space left on its filesystem"):
            pin_until_refused()
        assert 0 < len(refs) < 1 << 20
        filler.unlink()
        refs.append(mgr.pin(len(refs), len(refs) + 1))     # room again: it grows
        assert mgr.stat().used == len(refs)


def test_split_of_a_gibibyte_file_into_262144_slices(tmp_path: Path, lock_dir: Path) -> None:
    big = _data(tmp_path, 1 << 30)
    with shmslice.open(big, lock_dir=lock_dir) as mf:
        t0 = time.perf_counter()
        parts = mf.split(4096)
        took = time.perf_counter() - t0
        assert len(parts) == 262_144 and mf.lock_manager.stat().used == 262_144
        print(f"split(4096) of 1 GiB: {took:.2f} s")
        assert bytes(parts[-1][:4]) == b"\0\0\0\0"
        for s in parts:
            s.release()
        assert mf.lock_manager.stat().used == 0


@pytest.mark.slow
def test_a_million_live_slices_of_one_file(tmp_path: Path, lock_dir: Path) -> None:
    big = _data(tmp_path, 1 << 26)
    with shmslice.open(big, lock_dir=lock_dir) as mf:
        parts = [mf[k * 64:(k + 1) * 64] for k in range(1_000_000)]
        st = mf.lock_manager.stat()
        assert st.used == 1_000_000 and st.capacity >= 1_000_000
        assert len(bytes(parts[999_999])) == 64
        for s in parts[::2]:
            s.release()
        assert mf.lock_manager.stat().used == 500_000


def test_a_process_share_counts_all_its_handles(tmp_path: Path, lock_dir: Path) -> None:
    """The reserve binds a process, not a handle: two managers of one process
    together stop at the ceiling less 1/16."""
    data = _data(tmp_path)
    with shmslice.LockManager(data, lock_dir=lock_dir, max_entries=64) as a, \
            shmslice.LockManager(data, lock_dir=lock_dir) as b:
        refs = [a.pin(k, k + 1) for k in range(30)] + [b.pin(100 + k, 101 + k) for k in range(30)]
        with pytest.raises(shmslice.LockTableFull, match="holds 60 entries, the most one process"):
            b.lock(1000, 1001)
        a.unpin(refs[0])
        b.lock(1000, 1001).release()
