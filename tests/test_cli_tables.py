"""``shmslice prune`` and ``shmslice locks`` on big tables, run for real in a subprocess.

Tables are held by real processes: live ones (tests/cli_helpers.py, or a
helper that fills the table), and dead ones (SIGKILLed).  Big-table tests use
the table's default capacity, 65,536 entries (``SHMSLICE_SLOW=1``: also a
table made with room for 1,000,000).  Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import shmslice
from shmslice.cli import human_size
from shmslice.locks import table_path_for
from tests.support import popen_python, stop_popen
from tests.test_cli import holder, ok_json, one_line_error
from tests.test_cli import shmslice as run_cli

BIG = 65_536

_FILL = r"""
import sys, shmslice
path, lock_dir, n, capacity = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
mgr = shmslice.LockManager(path, lock_dir, max_entries=capacity)
held = []
for i in range(n):
    a = i * 16
    if i % 4 == 0:
        held.append(mgr.lock(a, a + 8, "shared", timeout=0))
    elif i % 4 == 1:
        held.append(mgr.lock(a, a + 8, "exclusive", timeout=0))
    else:
        held.append(mgr.pin(a, a + 8 + i % 3))
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def locks(tmp_path: Path) -> Path:
    return tmp_path / "locks"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    p = tmp_path / "data.bin"
    p.write_bytes(bytes(1 << 16))
    return p


def _filled(data: Path, locks: Path, n: int, capacity: int = 0) -> Iterator[subprocess.Popen[str]]:
    # One process may hold all but a sixteenth of the ceiling (the reserve).
    capacity = capacity or -(-n * 16 // 15) + 16
    proc = popen_python("-c", _FILL, data, locks, str(n), str(capacity),
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", f"filler failed (exit {proc.poll()})"
        yield proc
    finally:
        stop_popen(proc)


@pytest.fixture
def big(tmp_path: Path, locks: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A table holding 65,536 entries of one live process (a quarter each shared and
    exclusive locks, half pins)."""
    data = tmp_path / "big.bin"
    data.write_bytes(bytes(16 * BIG + 4096))
    for proc in _filled(data, locks, BIG):
        yield data, proc


# ---------------------------------------------------------------------------
# prune
# ---------------------------------------------------------------------------

def test_prune_removes_unused_tables_and_keeps_used_ones(tmp_path: Path, data: Path,
                                                         locks: Path) -> None:
    r = run_cli("prune", "--lock-dir", locks)
    assert r.returncode == 0 and "removed 0 lock tables, freed 0 B" in r.stdout
    deleted = tmp_path / "deleted.bin"
    killed = tmp_path / "killed.bin"
    idle = tmp_path / "idle.bin"
    for p in (deleted, killed, idle):
        p.write_bytes(bytes(8192))
    with shmslice.LockManager(deleted, locks):
        pass
    deleted.unlink()                     # closed before the delete: its table stays
    with holder(killed, locks, "exclusive:0:100", "pin:0:10:2") as victim:
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    with shmslice.LockManager(idle, locks):
        pass
    tables = {name: table_path_for(p, locks) if p.exists() else None
              for name, p in (("killed", killed), ("idle", idle), ("data", data))}
    deleted_table = [t for t in os.listdir(locks)
                     if os.path.join(locks, t) not in tables.values()]
    assert len(deleted_table) == 1
    with holder(data, locks, "shared:0:10") as live:
        sizes = {t: os.stat(os.path.join(locks, t)).st_blocks * 512 for t in os.listdir(locks)}
        # A stale temporary table file, as a creator killed half way leaves (fallback path).
        stale = locks / f".{os.path.basename(str(tables['idle']))}.999999.1a2b.tmp"
        stale.write_bytes(b"partial")
        os.utime(stale, (time.time() - 60, time.time() - 60))

        dry = ok_json("prune", "--dry-run", "--lock-dir", locks)
        assert dry["dry_run"] is True and dry["removed"] == 3 and dry["kept"] == 1
        assert dry["temp_files_removed"] is None
        assert sorted(os.listdir(locks)) == sorted([*sizes, stale.name]), "dry run removed something"
        r = run_cli("prune", "--dry-run", "--lock-dir", locks)
        assert r.returncode == 0 and "would remove 3 lock tables" in r.stdout

        doc = ok_json("prune", "--lock-dir", locks)
        assert doc["errors"] == [] and doc["removed"] == 3 and doc["kept"] == 1
        by_table = {t["table"]: t for t in doc["tables"]}
        kept = by_table[str(tables["data"])]
        assert kept["removed"] is False and kept["reason"] == "in use"
        gone = [t for t in doc["tables"] if t["removed"]]
        assert doc["freed_bytes"] == sum(t["bytes"] for t in gone) == \
            sum(v for k, v in sizes.items() if os.path.join(locks, k) != str(tables["data"]))
        assert by_table[str(tables["killed"])]["entries"] == 2   # the dead process's, gone too
        assert {t["data_status"] for t in gone} == {"missing", "ok"}
        assert doc["temp_files_removed"] == 1 and not stale.exists()
        assert os.listdir(locks) == [os.path.basename(str(tables["data"]))]
        # The live process's table works as before.
        assert [e["pid"] for e in ok_json("locks", data, "--lock-dir", locks)["entries"]] == \
            [live.pid]
    # Its holder gone, that table goes too; the text form says what it freed.
    r = run_cli("prune", "--lock-dir", locks)
    assert r.returncode == 0, r.stderr
    freed = human_size(sizes[os.path.basename(str(tables["data"]))])
    assert r.stdout.splitlines()[-1].startswith(f"removed 1 lock table, freed {freed}")
    assert os.listdir(locks) == []


def test_prune_missing_only_keeps_tables_of_existing_files(tmp_path: Path, data: Path,
                                                          locks: Path) -> None:
    gone = tmp_path / "gone.bin"
    gone.write_bytes(bytes(4096))
    for p in (data, gone):
        with shmslice.LockManager(p, locks):
            pass
    data_table = table_path_for(data, locks)
    gone.unlink()
    doc = ok_json("prune", "--missing-only", "--lock-dir", locks)
    assert doc["removed"] == 1 and doc["kept"] == 1
    [kept] = [t for t in doc["tables"] if not t["removed"]]
    assert kept["table"] == data_table and kept["reason"] == "data file exists"
    assert os.listdir(locks) == [os.path.basename(data_table)]


def test_prune_of_a_missing_directory_is_empty(tmp_path: Path) -> None:
    doc = ok_json("prune", "--lock-dir", tmp_path / "nowhere")
    assert doc["removed"] == 0 and doc["tables"] == [] and doc["errors"] == []


def test_prune_reports_a_corrupt_table_on_one_line(data: Path, locks: Path) -> None:
    with shmslice.LockManager(data, locks) as mgr:
        table = mgr.table_path
    with open(table, "r+b") as f:
        f.write(b"garbage!")
    r = run_cli("prune", "--lock-dir", locks)
    one_line_error(r, 1, "shmslice prune: error:", os.path.basename(table))
    assert os.path.exists(table)


# ---------------------------------------------------------------------------
# locks on big tables
# ---------------------------------------------------------------------------

def test_big_table_shows_a_summary_by_process_and_kind(big: tuple[Path, subprocess.Popen[str]],
                                                       locks: Path) -> None:
    data, proc = big
    r = run_cli("locks", data, "--lock-dir", locks)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:6] == ["PID", "OWNER", "KIND", "STATE", "ENTRIES", "COUNT"]
    rows = {line.split()[2]: line.split() for line in lines[1:4]}
    assert set(rows) == {"shared", "exclusive", "pin"}
    assert [rows[k][4] for k in ("shared", "exclusive", "pin")] == \
        [str(BIG // 4), str(BIG // 4), str(BIG // 2)]
    assert all(row[0] == str(proc.pid) and row[1] == "alive" for row in rows.values())
    assert lines[4].startswith(f"entries: {BIG} ({BIG} held, 0 waiting)")
    assert lines[5].startswith("grouped by process and kind") and "--all" in lines[5]
    assert len(lines) == 6

    # The same figures as JSON, by group.
    doc = ok_json("locks", data, "--lock-dir", locks, "--group-by", "kind")
    assert doc["group_by"] == "kind" and doc["groups_total"] == 3
    counts = {g["kind"]: (g["entries"], g["processes"]) for g in doc["groups"]}
    assert counts == {"shared": (BIG // 4, 1), "exclusive": (BIG // 4, 1), "pin": (BIG // 2, 1)}
    pins = next(g for g in doc["groups"] if g["kind"] == "pin")
    assert pins["bytes"] == sum(8 + i % 3 for i in range(BIG) if i % 4 >= 2)
    assert doc["summary"]["entries"] == BIG

    by_pid = ok_json("locks", data, "--lock-dir", locks, "--group-by", "pid")["groups"]
    assert [(g["pid"], g["entries"], g["shared"], g["exclusive"], g["pins"]) for g in by_pid] == \
        [(proc.pid, BIG, BIG // 4, BIG // 4, BIG // 2)]
    assert by_pid[0]["name"] and by_pid[0]["process"] == "running"


def test_big_table_streams_every_entry(big: tuple[Path, subprocess.Popen[str]],
                                       locks: Path) -> None:
    data, _proc = big
    with shmslice.TableView(table_path_for(data, locks)) as view:
        expected = [(e.start, e.end, e.kind, e.count) for e in view.locks()]
    doc = ok_json("locks", data, "--lock-dir", locks)
    got = [(e["start"], e["end"], e["kind"], e["count"]) for e in doc["entries"]]
    assert got == expected and len(got) == BIG
    assert doc["summary"]["shown"] == BIG

    r = run_cli("locks", data, "--lock-dir", locks, "--all")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == BIG + 2   # header, every entry, summary
    assert [tuple(line.split()[:2]) for line in lines[1:4]] == \
        [(str(s), str(e)) for s, e, _, _ in expected[:3]]
    # Aligned like a small table: every row ends its PID column where the header does.
    pid_end = lines[0].index("PID") + len("PID")
    assert {line[:pid_end].split()[-1] for line in lines[1:-1]} == {str(_proc.pid)}

    # Filters select inside a summary as in a listing.
    r = run_cli("locks", data, "--lock-dir", locks, "--kind", "exclusive", "--max-rows", "100")
    lines = r.stdout.splitlines()
    assert [line.split()[2] for line in lines[1:-2]] == ["exclusive"]
    assert f"{BIG // 4} shown" in lines[-2]
    few = ok_json("locks", data, "--lock-dir", locks, "--kind", "shared", "--sort", "size")
    assert Counter(e["kind"] for e in few["entries"]) == {"shared": BIG // 4}


def test_group_by_region_counts_holders_of_one_region(data: Path, locks: Path) -> None:
    with holder(data, locks, "shared:0:100", "pin:0:100:3") as a, \
            holder(data, locks, "shared:0:100", "pin:200:300") as b:
        doc = ok_json("locks", data, "--lock-dir", locks, "--group-by", "region")
        regions = {(g["start"], g["end"]): g for g in doc["groups"]}
        assert set(regions) == {(0, 100), (200, 300)}
        first = regions[(0, 100)]
        assert (first["entries"], first["shared"], first["pins"], first["processes"]) == (3, 2, 1, 2)
        assert doc["groups"][0] is not None and doc["groups"][0]["start"] == 0   # most entries first
        r = run_cli("locks", data, "--lock-dir", locks, "--group-by", "region")
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[1].split()[:5] == ["0", "100", "100", "B", "3"]
        del a, b


def test_json_streams_one_document(big: tuple[Path, subprocess.Popen[str]], locks: Path) -> None:
    data, _ = big
    proc = popen_python("-m", "shmslice", "locks", data, "--lock-dir", locks, "--json",
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        stop_popen(proc)
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert len(doc["entries"]) == BIG and set(doc) == {"path", "data_path", "table", "time",
                                                       "entries", "summary"}
    # One object per line: a reader can take entries as they come.
    assert out.count("\n") >= BIG


@pytest.mark.slow
def test_a_million_entries(tmp_path: Path, locks: Path) -> None:
    n = 1_000_000
    data = tmp_path / "million.bin"
    data.write_bytes(bytes(16 * n + 4096))
    for proc in _filled(data, locks, n):
        t0 = time.monotonic()
        r = run_cli("locks", data, "--lock-dir", locks)
        took = time.monotonic() - t0
        assert r.returncode == 0, r.stderr
        assert f"entries: {n} ({n} held" in r.stdout
        assert len(r.stdout.splitlines()) == 6
        print(f"shmslice locks, 1,000,000 entries: {took:.2f}s (summary)")
        doc = ok_json("locks", data, "--lock-dir", locks, "--group-by", "pid")
        assert doc["groups"][0]["entries"] == n and doc["groups"][0]["pid"] == proc.pid
