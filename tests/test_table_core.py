"""The C core's table internals as tools see them: the served layout, table
file names, liveness scans, exact pin lookup, snapshots, temp-file cleanup."""

from __future__ import annotations

import mmap
import multiprocessing
import os
import struct
from pathlib import Path
from typing import Any

import shmslice
from shmslice._binding import (
    lib,
    parse_table_name,
    path_identity,
    table_constants,
    table_layout,
    table_name,
)

from .support import run_python, wait_pid


def test_layout_matches_a_real_table(data_file: Path, lock_dir: Path) -> None:
    layout, const = table_layout(), table_constants()
    with shmslice.LockManager(data_file, lock_dir=lock_dir, max_entries=64) as mgr:
        mgr.pin(100, 200)
        st = os.stat(data_file)
        with open(mgr.table_path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as t:
            def u(name: str, base: int = 0) -> int:
                off, size = layout[name]
                return int.from_bytes(t[base + off:base + off + size], "little")
            assert u("hdr.magic") == const["magic"]
            assert u("hdr.format") == const["format"]
            assert u("hdr.max_capacity") == 64 and u("hdr.capacity") == 64
            assert u("hdr.max_procs") == const["max_procs"]
            assert u("hdr.proc_capacity") == const["initial_procs"]
            # Mapped for the ceiling layout; the file reaches as far as the entries in use.
            assert u("hdr.table_bytes") == const["entries_offset"] + 64 * const["entry_bytes"]
            assert len(t) == u("hdr.table_bytes")
            assert (u("hdr.data_dev"), u("hdr.data_ino")) == (st.st_dev, st.st_ino)
            assert u("hdr.entry_hwm") == 1 and u("hdr.used") == 1
            off, size = layout["hdr.root"]
            roots = struct.unpack_from(f"<{size // 4}I", t, off)
            assert roots[const["tree_pin"]] == 0
            assert roots[const["tree_shared"]] == roots[const["tree_exclusive"]] == const["nil"]
            assert u("proc.pid", const["header_bytes"]) == os.getpid()
            assert u("proc.held", const["header_bytes"]) == 1
            ent0 = const["entries_offset"]
            assert (u("entry.start", ent0), u("entry.end", ent0), u("entry.count", ent0)) == (100, 200, 1)
            assert u("entry.kind", ent0) == shmslice._binding.lib.SS_PIN
    assert const["header_size"] <= const["header_bytes"]
    assert layout["hdr.mutex.__kind"][0] > layout["hdr.mutex"][0]


def test_table_names_round_trip() -> None:
    for ident in [(0, 0, 0), (66, 1234, 1796171727141187060), (2**64 - 1, 2**64 - 1, 2**64 - 1),
                  (0x10302, 7, 1)]:
        assert parse_table_name(table_name(*ident)) == ident
        assert len(table_name(*ident)) < lib.SS_TABLE_NAME_MAX
    for bad in ["", "x.shmslice", "1-2-3.shmslicex", "1-2-3", "-2-3.shmslice", "1--3.shmslice",
                "1-2-.shmslice", "1-2.shmslice.x", "01-2.shmslice", "01-2-3.shmslice", "1-02-3.shmslice",
                "1-2-03.shmslice", "A-2-3.shmslice", "1_2_3.shmslice", "1-2-3-4.shmslice",
                "1ffffffffffffffff-1-1.shmslice", ".1-2-3.shmslice.99.1f.tmp",
                "1-2-3.shmslice\udcff"]:
        assert parse_table_name(bad) is None, bad
    # Tables of format 3 were named dev-ino: listed (for removal) with the legacy stamp.
    assert parse_table_name("42-7.shmslice") == (0x42, 7, lib.SS_BIRTH_LEGACY) == (66, 7, 2**64 - 1)


def test_table_identity_includes_the_birth_stamp(data_file: Path, lock_dir: Path) -> None:
    """The table's name and header carry the data file's birth stamp (birth
    time and inode generation), which a re-created file does not share."""
    ident = path_identity(data_file)
    st = os.stat(data_file)
    assert (ident.dev, ident.ino) == (st.st_dev, st.st_ino)
    assert ident.birth != 0   # ext4 and tmpfs both report a birth time
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        assert os.path.basename(mgr.table_path) == table_name(*ident)
        layout = table_layout()
        off, size = layout["hdr.data_birth"]
        with open(mgr.table_path, "rb") as f:
            raw = f.read(off + size)
        assert int.from_bytes(raw[off:off + size], "little") == ident.birth


def test_exact_pin_lookup_among_overlapping_pins(data_file: Path, lock_dir: Path) -> None:
    """A handle's pin on [start, end) is found by its exact key, not confused
    with pins of the same start, the same region of another handle, or
    pins covering it."""
    with shmslice.LockManager(data_file, lock_dir=lock_dir, max_entries=256) as a, \
            shmslice.LockManager(data_file, lock_dir=lock_dir, max_entries=256) as b:
        mine = a.pin(100, 200)
        others = [a.pin(100, 150), a.pin(100, 250), a.pin(50, 200), b.pin(100, 200)]
        others += [a.pin(100 - k, 201 + k) for k in range(1, 100)]
        assert a.pin(100, 200) == mine
        assert b.pin(100, 200) == others[3] != mine
        counts = {(e.start, e.end, e.pid, e.count) for e in a.locks() if e.count > 1}
        assert counts == {(100, 200, os.getpid(), 2)}
        a.unpin(mine)
        a.unpin(mine)
        assert a.pin(100, 200) != mine          # a fresh entry: the old one was removed
        assert len(a.locks()) == 1 + len(others)



def test_overlap_search_on_random_overlapping_locks(data_file: Path, lock_dir: Path) -> None:
    """An exclusive try-lock is refused exactly when a granted shared lock
    overlaps it, over thousands of random, mutually overlapping shared locks
    (the search's one-path proof of no overlap, and its full walk)."""
    import random

    rng = random.Random(5)
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        regions = []
        held = []
        for _ in range(3000):
            a = rng.randrange(0, 1_000_000)
            b = a + rng.choice([1, 2, 10, 100, 1000, 20_000])
            regions.append((a, b))
            held.append(mgr.lock(a, b, "shared", timeout=0))
        for k in range(400):
            a = rng.randrange(0, 1_030_000)
            b = a + rng.choice([1, 5, 50, 500])
            expect = any(s < b and a < e for s, e in regions)
            try:
                mgr.lock(a, b, "exclusive", timeout=0).release()
                got = False
            except shmslice.LockTimeout:
                got = True
            assert got == expect, (k, a, b)
        for lk in held:
            lk.release()


def test_snapshot_sort_is_region_order(data_file: Path, lock_dir: Path) -> None:
    """ss_snapshot_sort orders by (start, end, kind name, pid, table order),
    as the listing's region key does, whatever order entries were made in and
    whichever process owns them."""
    import subprocess
    import sys

    from shmslice._binding import KIND_NAMES

    from .support import child_env

    holder = ("import sys, shmslice\n"
              "m = shmslice.LockManager(sys.argv[1], lock_dir=sys.argv[2])\n"
              "keep = [m.lock(300, 400, 'shared'), m.pin(300, 400), m.pin(0, 10)]\n"
              "print('ready', flush=True)\nsys.stdin.read()\n")
    child = subprocess.Popen([sys.executable, "-c", holder, str(data_file), str(lock_dir)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=child_env())
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
            keep = [mgr.lock(500, 600), mgr.pin(300, 400), mgr.lock(300, 400, "shared"),
                    mgr.lock(300, 400, "shared"), mgr.lock(0, 10, "shared"), mgr.pin(300, 350),
                    mgr.lock(700, 800)]
            view = shmslice.TableView(mgr.table_path)
            try:
                packed = view.packed_entries()
                table_order = list(packed.rows())
                packed.sort_by_region()
                got = list(packed.rows())
            finally:
                view.close()
            assert len(got) == len(keep) + 3
            assert {child.pid, os.getpid()} == {row[6] for row in got}
            indexed = list(enumerate(table_order))
            indexed.sort(key=lambda ir: (ir[1][0], ir[1][1], KIND_NAMES[ir[1][3]],
                                         ir[1][6] & 0xffffffff, ir[0]))
            assert got == [row for _, row in indexed]
            assert got != table_order   # the case is not sorted already
            starts, ends, sinces = packed.columns()
            assert list(starts) == [r[0] for r in got] and list(ends) == [r[1] for r in got]
            assert list(sinces) == [r[2] for r in got]
            del keep
    finally:
        if child.stdin:
            child.stdin.close()
        child.wait(timeout=30)


# -- the entry a process slot keeps for itself (stash) ------------------------

def _index(ref: int) -> int:
    return ref & 0xFFFFFFFF


def _pin_unpin_forever(data: str, lock_dir: str, ready: Any, stop: Any) -> None:
    mgr = shmslice.LockManager(data, lock_dir=lock_dir)
    mgr.unpin(mgr.pin(8192, 8200))
    ready.set()
    while not stop.is_set():
        mgr.lock(8192, 8200).release()
        mgr.unpin(mgr.pin(8192, 8200))
    mgr.close()


def test_a_process_reuses_the_entry_it_released(data_file: Path, lock_dir: Path) -> None:
    """Pin and unpin in a loop: the process gets its own entry back every
    time, even while another process frees entries onto the free list."""
    ctx = multiprocessing.get_context("fork")
    ready, stop = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_pin_unpin_forever, args=(str(data_file), str(lock_dir), ready, stop))
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        first = mgr.pin(0, 8)
        mgr.unpin(first)
        other.start()
        try:
            assert ready.wait(30), "the other process did not start"
            seen = set()
            for _ in range(2000):
                ref = mgr.pin(0, 8)
                seen.add(_index(ref))
                mgr.unpin(ref)
                mgr.lock(16, 24).release()
        finally:
            stop.set()
            other.join(30)
        assert other.exitcode == 0
        assert seen == {_index(first)}, f"entries used: {sorted(seen)}"


def test_stashed_entries_count_as_free_at_the_ceiling(data_file: Path, lock_dir: Path) -> None:
    """Every process's kept entry is still usable by others once the table is
    at its ceiling: LockTableFull only when every entry is in use."""
    ceiling = 32
    ctx = multiprocessing.get_context("fork")
    kept = []
    for k in range(4):   # four live processes, each keeping the entry it released
        ready, stop = ctx.Event(), ctx.Event()
        p = ctx.Process(target=_stash_one_and_wait,
                        args=(str(data_file), str(lock_dir), ceiling, 1000 * (k + 1), ready, stop))
        p.start()
        assert ready.wait(30), "a stashing process did not start"
        kept.append((p, stop))
    try:
        with shmslice.LockManager(data_file, lock_dir=lock_dir, max_entries=ceiling) as a:
            st = a.stat()
            assert st.used == 0 and st.capacity == ceiling
            mine = ceiling - st.reserve
            held = [a.pin(10_000 + i, 10_001 + i) for i in range(mine)]   # this process's share
            # The rest, in a child: the others' kept entries are all that is left.
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    c = shmslice.LockManager(data_file, lock_dir=lock_dir)
                    n = 0
                    try:
                        while True:
                            c.pin(50_000 + n, 50_001 + n)
                            n += 1
                    except shmslice.LockTableFull:
                        os.write(w, str(n).encode())
                finally:
                    os._exit(0)
            os.close(w)
            wait_pid(pid)
            got = int(os.read(r, 64) or b"-1")
            os.close(r)
            assert mine + got == ceiling, (mine, got, a.stat())
            for ref in held:
                a.unpin(ref)
    finally:
        for p, stop in kept:
            stop.set()
            p.join(30)


def _stash_one_and_wait(data: str, lock_dir: str, ceiling: int, at: int, ready: Any, stop: Any) -> None:
    mgr = shmslice.LockManager(data, lock_dir=lock_dir, max_entries=ceiling)
    mgr.lock(at, at + 1).release()    # the entry stays with this process's slot
    ready.set()
    stop.wait(60)
    mgr.close()


def test_a_corrupt_stash_is_refused_at_attach(data_file: Path, lock_dir: Path) -> None:
    layout, const = table_layout(), table_constants()
    with shmslice.LockManager(data_file, lock_dir=lock_dir, max_entries=64) as mgr:
        ref = mgr.pin(0, 100)                      # entry in use
        table = mgr.table_path
        # Point slot 0's stash at the entry in use, as a broken table would.
        with open(table, "r+b") as f:
            f.seek(const["header_bytes"] + layout["proc.stash"][0])
            f.write(struct.pack("<I", _index(ref) + 1))
        code = ("import sys, shmslice\n"
                "try:\n"
                "    shmslice.LockManager(sys.argv[1], lock_dir=sys.argv[2]).lock(0, 1).release()\n"
                "    print('attached')\n"
                "except shmslice.CorruptLockTable as e:\n"
                "    print('corrupt', e)\n")
        out = run_python("-c", code, data_file, lock_dir, timeout=60).stdout
        assert out.startswith("corrupt") and "keeps a bad entry" in out, out
        with open(table, "r+b") as f:              # put it right so the close is clean
            f.seek(const["header_bytes"] + layout["proc.stash"][0])
            f.write(struct.pack("<I", 0))
        mgr.unpin(ref)
