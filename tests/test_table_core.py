"""The C core's table internals as tools see them: the served layout, table
file names, liveness scans, exact pin lookup, snapshots, temp-file cleanup."""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

import shmslice
from shmslice._binding import (
    lib,
    parse_table_name,
    path_identity,
    table_constants,
    table_layout,
    table_name,
)


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
