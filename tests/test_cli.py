"""The ``shmslice`` command, run for real in a subprocess.

Tables are held by helper processes (tests/cli_helpers.py) that report
"ready" on a pipe once their entries are in the table; one of them is killed
with SIGKILL before ``reap``.  Every wait is bounded.  Every run passes
``--lock-dir`` under ``tmp_path``, so nothing touches /dev/shm/shmslice.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

from shmslice import __version__, cli
from shmslice._binding import table_constants
from shmslice.cli import formatting, owners
from shmslice.cli.commands import ls, reap
from shmslice.locks import table_path_for
from tests.support import child_env, end_process, popen_python, run_python, stop_popen, wait_until

HELPER = Path(__file__).with_name("cli_helpers.py")
TIMEOUT = 60   # seconds for any one command; they take well under a second
# The helper again, as a multi-line `python -c` program (its command line holds newlines).
HELPER_AS_PROGRAM = ("-c", "import sys\nfrom tests.cli_helpers import main\nsys.exit(main(sys.argv[1:]))")


def shmslice(*args: str | os.PathLike[str], timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``python -m shmslice ARGS`` and capture its output."""
    return run_python("-m", "shmslice", *args, timeout=timeout)


def ok_json(*args: str | os.PathLike[str]) -> dict:
    r = shmslice(*args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def one_line_error(r: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """Check that the command failed with ``code`` and exactly one line on stderr."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@contextlib.contextmanager
def holder(data: Path, lock_dir: Path, *specs: str,
           program: Sequence[str] = (str(HELPER),)) -> Iterator[subprocess.Popen[str]]:
    """A helper process holding ``specs`` (see cli_helpers.py) until the block ends."""
    proc = popen_python(*program, data, lock_dir, *specs,
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "helper did not get ready within 30 s"
        line = proc.stdout.readline()
        assert line.startswith("ready "), f"helper failed: {line!r} (exit {proc.poll()})"
        assert int(line.split()[1]) == proc.pid
        yield proc
    finally:
        stop_popen(proc)


@pytest.fixture
def locks(tmp_path: Path) -> Path:
    """A lock directory that does not exist yet (commands that only read must not create it)."""
    return tmp_path / "locks"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    p = tmp_path / "data.bin"
    p.write_bytes(bytes(1 << 16))
    return p


# ---------------------------------------------------------------------------
# Formatting helpers (in process: they are plain functions)
# ---------------------------------------------------------------------------

def test_human_size() -> None:
    assert formatting.human_size(0) == "0 B"
    assert formatting.human_size(1023) == "1023 B"
    assert formatting.human_size(4096) == "4.0 KiB"
    assert formatting.human_size(1536) == "1.5 KiB"
    assert formatting.human_size((1 << 20) - 1) == "1.0 MiB"
    assert formatting.human_size(256 << 20) == "256.0 MiB"
    assert formatting.human_size(3 << 40) == "3.0 TiB"


def test_parse_size() -> None:
    assert formatting.parse_size("4096") == 4096
    assert formatting.parse_size("64M") == 64 << 20
    assert formatting.parse_size("64MiB") == 64 << 20
    assert formatting.parse_size("10MB") == 10_000_000
    assert formatting.parse_size("1.5k") == 1536
    assert formatting.parse_size(" 2 GiB ") == 2 << 30
    for bad in ("", "M", "12Q", "-1", "0.3"):
        with pytest.raises(ValueError, match=r"^not a "):
            formatting.parse_size(bad)


def test_human_duration() -> None:
    assert formatting.human_duration(4.24) == "4.2s"
    assert formatting.human_duration(42) == "42s"
    assert formatting.human_duration(184) == "3m04s"
    assert formatting.human_duration(7500) == "2h05m"
    assert formatting.human_duration(3 * 86400 + 4 * 3600) == "3d04h"
    assert formatting.human_duration(-5) == "0.0s"


def test_process_details_never_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    # A process that has exited, one we may not inspect, and a pid that names a
    # process younger than the entry (another PID namespace) all render.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    assert owners.describe_process(gone.pid, time.time()).status == "exited"
    me = owners.describe_process(os.getpid(), time.time())
    assert me.status == "running" and me.name == psutil.Process().name()
    assert owners.describe_process(os.getpid(), 1.0).status == "elsewhere"

    class Denied:
        def __init__(self, pid: int) -> None:
            raise psutil.AccessDenied(pid)

    monkeypatch.setattr(psutil, "Process", Denied)
    info = owners.describe_process(os.getpid(), time.time())
    assert info.status == "denied"
    assert owners.owner_cells(info, alive=True)[0] == "?"


def _report_pid_and_wait(queue: multiprocessing.Queue[int], done: Any) -> None:
    queue.put(os.getpid())
    done.wait(30)


def test_multiprocessing_workers_are_named_by_their_parent() -> None:
    # A spawned worker's own command line is multiprocessing boilerplate; the
    # table shows the command that started it instead.
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[int] = ctx.Queue()
    done = ctx.Event()
    worker = ctx.Process(target=_report_pid_and_wait, args=(queue, done))
    worker.start()
    try:
        pid = queue.get(timeout=30)
        info = owners.describe_process(pid, time.time())
        assert owners.is_multiprocessing_worker(info.cmdline)
        assert info.ppid == os.getpid() and info.parent_cmdline == psutil.Process().cmdline()
        _, command = owners.owner_cells(info, alive=True)
        assert command.startswith(f"[worker of {os.getpid()}] ")
    finally:
        done.set()
        end_process(worker)


def test_command_column_shortens_paths() -> None:
    assert owners.command_text(["/usr/bin/python3", "/venv/bin/shmslice", "demo", "a b"]) == \
        "python3 shmslice demo 'a b'"
    assert owners.command_text(["/bin/sleep", "/tmp/x"]) == "sleep /tmp/x"


def test_control_characters_are_escaped() -> None:
    # A multi-line `python -c` program, a tab, a terminal escape, a line separator and a
    # bidirectional override: each would break or disguise a table line if printed raw.
    assert formatting.printable("a\nb\tc\x1b[2J\x7f\u2028\u202e\U000e0001 é") == \
        "a\\nb\\tc\\x1b[2J\\x7f\\u2028\\u202e\\U000e0001 é"
    assert formatting.printable("plain text") == "plain text"
    # The COMMAND column stays shell syntax: $'...' with the escapes, pasteable into bash.
    assert owners.command_text(["/usr/bin/python3", "-c", "import os\nprint('it\\'s')", "x y"]) == \
        "python3 -c $'import os\\nprint(\\'it\\\\\\'s\\')' 'x y'"
    lines = formatting.render_table(("A", "B"), [["1\n2", "x\ry"], ["3", "z"]])
    assert lines == ["A     B", "1\\n2  x\\ry", "3     z"]


# ---------------------------------------------------------------------------
# Usage, version, help
# ---------------------------------------------------------------------------

def test_version_and_help() -> None:
    r = shmslice("-V")
    assert r.returncode == 0 and r.stdout.strip() == f"shmslice {__version__}"
    for command in ("locks", "ls", "reap", "info", "demo"):
        r = shmslice(command, "-h")
        assert r.returncode == 0 and "usage: shmslice " + command in r.stdout, command
    r = shmslice("-h")
    assert r.returncode == 0 and "locks" in r.stdout and "demo" in r.stdout


@pytest.mark.parametrize(("args", "words"), [
    ((), ["COMMAND"]),
    (("frobnicate",), ["invalid choice"]),
    (("locks",), ["PATH"]),
    (("locks", "x", "--watch", "0"), ["--watch"]),
    (("locks", "x", "--kind", "bogus"), ["--kind"]),
    (("reap",), ["PATH", "--all"]),
    (("reap", "x", "--all"), ["not both"]),
    (("demo", "--size", "12Q"), ["--size"]),
    (("demo", "--workers", "0"), ["--workers"]),
])
def test_usage_errors_exit_2_with_one_line(args: tuple[str, ...], words: list[str]) -> None:
    one_line_error(shmslice(*args), 2, "error:", *words)


# ---------------------------------------------------------------------------
# locks
# ---------------------------------------------------------------------------

def test_locks_without_table_is_empty_and_creates_nothing(data: Path, locks: Path) -> None:
    r = shmslice("locks", data, "--lock-dir", locks)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    header, summary = r.stdout.splitlines()
    assert header.split() == ["START", "END", "SIZE", "KIND", "COUNT", "STATE", "PID", "OWNER",
                              "HELD", "NAME", "COMMAND"]
    assert summary.startswith("entries: 0") and "no lock table yet" in summary
    doc = ok_json("locks", data, "--lock-dir", locks)
    assert doc["entries"] == [] and doc["table"] is None
    assert doc["summary"]["table_exists"] is False
    assert not locks.exists(), "inspecting must not create the lock directory"
    # ...nor a table, when the directory exists.
    locks.mkdir()
    assert shmslice("locks", data, "--lock-dir", locks).returncode == 0
    assert list(locks.iterdir()) == []


def test_missing_file_is_a_one_line_error(tmp_path: Path, locks: Path) -> None:
    missing = tmp_path / "nope.bin"
    for command in ("locks", "info", "reap"):
        one_line_error(shmslice(command, missing, "--lock-dir", locks), 1,
                       f"shmslice {command}: error:", "nope.bin", "no such file")
    one_line_error(shmslice("locks", tmp_path, "--lock-dir", locks), 1, "directory")


def test_info_and_reap_need_a_table(data: Path, locks: Path) -> None:
    for command in ("info", "reap"):
        one_line_error(shmslice(command, data, "--lock-dir", locks), 1, "no lock table for")


def test_locks_shows_entries_of_live_processes(data: Path, locks: Path) -> None:
    with holder(data, locks, "pin:0:4096:3", "exclusive:4096:12288") as a, \
            holder(data, locks, "shared:20000:30000", "wait-exclusive:4096:5000") as b:
        def one_waiting() -> bool:
            return ok_json("locks", data, "--lock-dir", locks)["summary"]["waiting"] == 1
        wait_until(one_waiting, "b's exclusive request to queue behind a's lock")

        doc = ok_json("locks", data, "--lock-dir", locks)
        assert doc["table"] == table_path_for(data, locks)
        got = [(e["start"], e["end"], e["kind"], e["count"], e["pid"], e["alive"], e["state"])
               for e in doc["entries"]]
        assert got == [
            (0, 4096, "pin", 3, a.pid, True, "held"),
            (4096, 5000, "exclusive", 1, b.pid, True, "waiting"),
            (4096, 12288, "exclusive", 1, a.pid, True, "held"),
            (20000, 30000, "shared", 1, b.pid, True, "held"),
        ]
        name = psutil.Process(a.pid).name()
        for e in doc["entries"]:
            assert e["name"] == name and e["process"] == "running"
            assert any("cli_helpers.py" in arg for arg in e["cmdline"])
            assert e["length"] == e["end"] - e["start"]
            assert 0 <= e["held_seconds"] < TIMEOUT
        s = doc["summary"]
        assert (s["entries"], s["held"], s["waiting"], s["dead_owners"], s["dead_entries"]) == \
            (4, 3, 1, 0, 0)
        assert s["capacity"] == table_constants()["default_max_entries"] and s["used"] == 4
        assert s["live_pids"] == sorted([a.pid, b.pid])

        r = shmslice("locks", data, "--lock-dir", locks)
        assert r.returncode == 0 and r.stderr == ""
        lines = r.stdout.splitlines()
        assert len(lines) == 6   # header, 4 rows, summary
        pin_row = lines[1].split()
        assert pin_row[:9] == ["0", "4096", "4.0", "KiB", "pin", "3", "held", str(a.pid), "alive"]
        assert pin_row[10] == name and "cli_helpers.py" in lines[1]
        assert lines[2].split()[:8] == ["4096", "5000", "904", "B", "exclusive", "1", "waiting",
                                        str(b.pid)]
        # Columns line up: every row puts its pid where the header says PID.
        pid_col = lines[0].index("PID") + len("PID")
        assert all(line[:pid_col].rstrip().endswith(line.split()[7]) for line in lines[2:4])
        assert lines[-1] == ("entries: 4 (3 held, 1 waiting), capacity: 4/16777216 used (0.00%), "
                             "waiters: 1, dead owners: 0")

        # Filters and sorting.
        mine = ok_json("locks", data, "--lock-dir", locks, "--pid", str(b.pid))
        assert {e["pid"] for e in mine["entries"]} == {b.pid}
        assert mine["summary"]["shown"] == 2 and mine["summary"]["entries"] == 4
        pins = ok_json("locks", data, "--lock-dir", locks, "--kind", "pin")
        assert [e["kind"] for e in pins["entries"]] == ["pin"]
        by_size = ok_json("locks", data, "--lock-dir", locks, "--sort", "size")
        assert [e["end"] - e["start"] for e in by_size["entries"]] == [10000, 8192, 4096, 904]
        r = shmslice("locks", data, "--lock-dir", locks, "--waiting")
        assert len(r.stdout.splitlines()) == 3 and "4 (3 held, 1 waiting), 1 shown" in r.stdout


def test_multi_line_command_stays_on_its_table_line(data: Path, locks: Path) -> None:
    with holder(data, locks, "shared:0:100", program=HELPER_AS_PROGRAM) as proc:
        r = shmslice("locks", data, "--lock-dir", locks, "--wide")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert len(lines) == 3, r.stdout   # header, the one entry, summary
        assert lines[1].split()[:8] == ["0", "100", "100", "B", "shared", "1", "held", str(proc.pid)]
        assert " -c $'import sys\\nfrom tests.cli_helpers import main\\nsys.exit(" in lines[1]
        assert lines[2].startswith("entries: 1 ")
        # JSON is for programs: the command line as the process has it.
        [entry] = ok_json("locks", data, "--lock-dir", locks)["entries"]
        assert entry["cmdline"][1:3] == list(HELPER_AS_PROGRAM)


def test_sigkilled_owner_shows_dead_then_reap_removes_it(data: Path, locks: Path) -> None:
    with holder(data, locks, "shared:0:100") as live, \
            holder(data, locks, "exclusive:1000:2000", "pin:5000:6000:2") as victim:
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        doc = ok_json("locks", data, "--lock-dir", locks)
        alive = {(e["start"], e["pid"]): e["alive"] for e in doc["entries"]}
        assert alive == {(0, live.pid): True, (1000, victim.pid): False,
                         (5000, victim.pid): False}
        dead = [e for e in doc["entries"] if not e["alive"]]
        # A dead owner's pid is not looked up: it may name another process by now.
        assert all(e["process"] == "dead" and e["name"] is None for e in dead)
        assert doc["summary"]["dead_owners"] == 1 and doc["summary"]["dead_entries"] == 2
        assert doc["summary"]["dead_owner_pids"] == [victim.pid]

        r = shmslice("locks", data, "--lock-dir", locks)
        rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:-1]}
        assert " dead " in rows["1000"] and " alive " in rows["0"]
        assert f"dead owners: 1 (pid {victim.pid}; 2 entries; 'shmslice reap" in r.stdout

        r = shmslice("reap", data, "--lock-dir", locks)
        assert r.returncode == 0, r.stderr
        # the dead exclusive lock leaves its region's owner-died mark, which stays
        assert r.stdout.strip() == f"{data}: removed 2 dead entries, 2 remaining"
        doc = ok_json("locks", data, "--lock-dir", locks)
        assert [(e["start"], e["pid"], e["alive"], e["kind"]) for e in doc["entries"]] == \
            [(0, live.pid, True, "shared"), (1000, victim.pid, False, "orphaned")]
        assert doc["summary"]["dead_entries"] == 0
        again = ok_json("reap", data, "--lock-dir", locks)
        assert again["removed"] == 0 and again["tables"][0]["remaining"] == 2


def test_watch_redraws_until_interrupted(data: Path, locks: Path) -> None:
    with holder(data, locks, "shared:0:10"):
        proc = popen_python("-m", "shmslice", "locks", data, "--lock-dir", locks,
                            "--watch", "0.1", "--json", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            frames = []
            while len(frames) < 3:
                ready, _, _ = select.select([proc.stdout], [], [], 20)
                assert ready, "no frame within 20 s"
                frames.append(json.loads(proc.stdout.readline()))
            assert all(len(f["entries"]) == 1 for f in frames)
            assert frames[0]["time"] < frames[2]["time"]
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=20) == 0
            assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
        finally:
            stop_popen(proc)


# ---------------------------------------------------------------------------
# ls, reap --all, info
# ---------------------------------------------------------------------------

def test_ls_lists_every_table(tmp_path: Path, data: Path, locks: Path) -> None:
    r = shmslice("ls", "--lock-dir", locks)
    assert r.returncode == 0 and r.stdout.strip() == f"no lock tables in {locks}"
    doomed = tmp_path / "doomed.bin"
    doomed.write_bytes(bytes(8192))
    doomed_table = table_path_for(doomed, locks)
    with holder(data, locks, "pin:0:10:2", "shared:0:10") as a, \
            holder(doomed, locks, "exclusive:0:4096") as b:
        doomed.unlink()   # the table outlives its file; ls must say so
        doc = ok_json("ls", "--lock-dir", locks)
        assert doc["lock_dir"] == str(locks) and doc["errors"] == []
        tables = {t["table"]: t for t in doc["tables"]}
        assert set(tables) == {table_path_for(data, locks), doomed_table}
        mine = tables[table_path_for(data, locks)]
        assert (mine["data_path"], mine["data_status"], mine["entries"], mine["live_processes"],
                mine["live_pids"], mine["file_size"]) == (str(data), "ok", 2, 1, [a.pid], 1 << 16)
        gone = tables[doomed_table]
        assert (gone["data_status"], gone["entries"], gone["live_pids"]) == ("missing", 1, [b.pid])

        r = shmslice("ls", "--lock-dir", locks)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].split() == ["DATA", "FILE", "SIZE", "ENTRIES", "WAITING", "DEAD", "PROCS",
                                    "MEMORY", "TABLE"]
        row = next(line for line in lines if line.startswith(str(data)))
        allocated = os.stat(table_path_for(data, locks)).st_blocks * 512
        assert mine["allocated_bytes"] == allocated and allocated > 0
        assert mine["table_bytes"] == os.stat(table_path_for(data, locks)).st_size
        assert row.split()[1:10] == ["64.0", "KiB", "2", "0", "0", "1",
                                     *cli.human_size(allocated).split(),
                                     os.path.basename(table_path_for(data, locks))]
        assert f"{doomed} (missing)" in r.stdout
        total = mine["allocated_bytes"] + gone["allocated_bytes"]
        assert lines[-1] == f"2 lock tables in {locks}, using {cli.human_size(total)}"

        # A table is also a valid PATH: the only way to inspect one whose file is gone.
        doc = ok_json("locks", doomed_table, "--lock-dir", locks)
        assert [(e["kind"], e["pid"]) for e in doc["entries"]] == [("exclusive", b.pid)]


def test_reap_all(tmp_path: Path, data: Path, locks: Path) -> None:
    other = tmp_path / "other.bin"
    other.write_bytes(bytes(4096))
    with holder(data, locks, "shared:0:10"):
        for path in (data, other):
            with holder(path, locks, "exclusive:100:200", "pin:0:50") as victim:
                victim.send_signal(signal.SIGKILL)
                victim.wait(timeout=30)
        doc = ok_json("reap", "--all", "--lock-dir", locks)
        assert doc["removed"] == 4 and doc["errors"] == []
        assert sorted((t["data_path"], t["removed"], t["remaining"]) for t in doc["tables"]) == \
            sorted([(str(data), 2, 2), (str(other), 2, 1)])   # + each owner-died mark
        r = shmslice("reap", "--all", "--lock-dir", locks)
        assert r.returncode == 0
        assert r.stdout.splitlines()[-1] == "removed 0 dead entries from 2 lock tables"


def test_info(data: Path, locks: Path) -> None:
    with holder(data, locks, "pin:0:10", "shared:0:10"):
        doc = ok_json("info", data, "--lock-dir", locks)
        assert doc["table"] == table_path_for(data, locks)
        assert (doc["data_path"], doc["data_status"], doc["file_size"]) == (str(data), "ok", 1 << 16)
        version = table_constants()["format"] >> 48
        assert doc["format_version"] == version and doc["format"] >> 48 == version
        const = table_constants()
        assert (doc["capacity"], doc["used"], doc["waiting"], doc["dead_entries"]) == \
            (const["initial_capacity"], 2, 0, 0)
        assert (doc["max_capacity"], doc["ceiling_source"]) == (const["default_max_entries"], "default")
        assert doc["reserve"] == const["default_max_entries"] >> const["reserve_shift"]
        assert 0 < doc["allocated_bytes"] <= 64 * 1024
        assert doc["table_bytes"] > const["default_max_entries"] * const["entry_bytes"]
        assert doc["attached_processes"] == 1 and doc["max_procs"] == const["max_procs"]
        [h] = doc["holders"]
        assert (h["entries"], h["alive"]) == (2, True)
        assert abs(doc["created"] - time.time()) < TIMEOUT
        r = shmslice("info", data, "--lock-dir", locks)
        assert r.returncode == 0, r.stderr
        fields = dict(line.split(None, 1) for line in r.stdout.replace("data file", "data_file")
                      .replace("file size", "file_size").replace("lock table", "lock_table")
                      .splitlines())
        assert fields["data_file"] == str(data)
        assert fields["file_size"].startswith("64.0 KiB (65536 bytes)")
        assert fields["lock_table"].startswith(table_path_for(data, locks))
        assert fields["format"].startswith(f"version {version}")
        assert fields["entries"].startswith("2 of 16777216 used (0.00%), 0 waiting")
        assert fields["capacity"].startswith("512 entries allocated, growing on demand to 16777216")
        assert fields["processes"].startswith("1 attached")
        assert fields["holders"].startswith(f"pid {h['pid']} (") and "2 entries" in fields["holders"]


# ---------------------------------------------------------------------------
# Broken tables
# ---------------------------------------------------------------------------

def test_corrupt_table_is_a_one_line_error(tmp_path: Path, data: Path, locks: Path) -> None:
    locks.mkdir(mode=0o700)
    Path(table_path_for(data, locks)).write_bytes(b"not a lock table" * 512)
    for command in ("locks", "info", "reap"):
        one_line_error(shmslice(command, data, "--lock-dir", locks), 1,
                       f"shmslice {command}: error:", table_path_for(data, locks))
    # ls and reap --all still show the good tables, report the bad one, and fail.
    good = tmp_path / "good.bin"
    good.write_bytes(bytes(4096))
    with holder(good, locks, "shared:0:1"):
        r = shmslice("ls", "--lock-dir", locks)
        line = one_line_error(r, 1, "shmslice ls: error:", table_path_for(data, locks))
        assert "Traceback" not in line and str(good) in r.stdout
        one_line_error(shmslice("reap", "--all", "--lock-dir", locks), 1,
                       table_path_for(data, locks))


def test_unsafe_lock_dir_is_a_one_line_error(tmp_path: Path, data: Path) -> None:
    target = tmp_path / "real-locks"
    target.mkdir()
    link = tmp_path / "link-locks"
    link.symlink_to(target)
    # resolve_lock_dir follows an explicit --lock-dir; a world-writable one without the
    # sticky bit is refused (anyone could swap tables), even for root.
    target.chmod(0o777)
    one_line_error(shmslice("ls", "--lock-dir", target), 1, "sticky")


# ---------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------

def test_demo_small(locks: Path) -> None:
    r = shmslice("demo", "--size", "4M", "--workers", "2", "--lock-dir", locks)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr == ""
    assert "verified all 4194304 bytes" in r.stdout and ": OK" in r.stdout
    assert "2 workers" in r.stdout and "MiB/s" in r.stdout
    # Its temporary file and table are gone: the demo leaves nothing behind.
    assert list(locks.iterdir()) == []


def test_demo_json_and_kept_path(tmp_path: Path, locks: Path) -> None:
    path = tmp_path / "kept.bin"
    doc = ok_json("demo", "--size", "1M", "--chunk", "100000", "--workers", "2",
                  "--path", path, "--lock-dir", locks)
    assert doc["verified"] is True and doc["bad_slices"] == []
    assert (doc["size"], doc["chunk"], doc["slices"], doc["workers"]) == (1 << 20, 100000, 11, 2)
    assert 1 <= len(doc["worker_pids"]) <= 2
    # Whatever the live snapshot caught belongs to the workers or to the demo itself
    # (which keeps a pin on every slice until its task is done).
    for e in doc["busiest"] or []:
        assert e["pid"] in [doc["pid"], *doc["worker_pids"]]
        assert e["kind"] in ("pin", "shared", "exclusive") and e["alive"]
    assert path.stat().st_size == 1 << 20
    # The kept file has its table, with the size recorded and no entries left.
    info = ok_json("info", path, "--lock-dir", locks)
    assert info["recorded_file_size"] == 1 << 20 and info["used"] == 0
    # A second run refuses to overwrite it without --force.
    one_line_error(shmslice("demo", "--size", "1M", "--path", path, "--lock-dir", locks), 1,
                   "--force")
    r = shmslice("demo", "--size", "1M", "--path", path, "--force", "--lock-dir", locks)
    assert r.returncode == 0, r.stderr


def test_demo_fails_when_verification_fails(locks: Path) -> None:
    r = shmslice("demo", "--size", "1M", "--workers", "2", "--lock-dir", locks, "--fault", "70000")
    one_line_error(r, 1, "verification failed", "offset 70000")
    assert "verification FAILED" in r.stdout


@pytest.mark.parametrize("when", [r"^shmslice demo: ", r"^\s+\d+/\d+ slices"],
                         ids=["while-creating", "while-working"])
def test_demo_interrupted_exits_130_and_cleans_up(tmp_path: Path, locks: Path, when: str) -> None:
    env = child_env(TMPDIR=str(tmp_path))   # to see that the demo's directory goes away
    proc = popen_python(
        "-m", "shmslice", "demo", "--size", "1G", "--lock-dir", locks,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        # A shell may start us with SIGINT ignored; the demo must see Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while True:   # wait for the workers to be busy
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, "the demo showed no progress within 30 s"
            line = proc.stdout.readline()
            assert line, "the demo ended before it could be interrupted"
            if re.match(when, line):   # the banner (file being created) or a progress line
                break
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    finally:
        stop_popen(proc)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("shmslice-demo-")] == []
    assert list(locks.iterdir()) == []


def test_other_users_tables_are_listed_as_unreadable(
        tmp_path: Path, locks: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # Root opens every table, so another user's is simulated (in process): opening
    # it fails with EACCES, as it would for a table of mode 0644 that is not ours.
    import errno

    from shmslice import LockManager, TableView

    mine, theirs = tmp_path / "mine.bin", tmp_path / "theirs.bin"
    for path in (mine, theirs):
        path.write_bytes(bytes(4096))
        LockManager(path, locks).close()   # tables outlive their managers
    forbidden = table_path_for(theirs, locks)

    class View(TableView):
        def __init__(self, table_path: str) -> None:
            if os.fspath(table_path) == forbidden:
                self._ptr = None   # what TableView.__del__ expects of a failed attach
                raise PermissionError(errno.EACCES, "cannot open lock table: Permission denied",
                                      table_path)
            super().__init__(table_path)

    for command in (ls, reap):
        monkeypatch.setattr(command, "TableView", View)
    assert cli.main(["ls", "--lock-dir", str(locks)]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    assert "? (no permission to read this table)" in out.out and str(mine) in out.out
    assert cli.main(["ls", "--lock-dir", str(locks), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    readable = {t["table"]: t["readable"] for t in doc["tables"]}
    assert readable == {forbidden: False, table_path_for(mine, locks): True}
    assert cli.main(["reap", "--all", "--lock-dir", str(locks)]) == 0
    out = capsys.readouterr()
    assert f"{forbidden}: skipped (no permission to open it)" in out.out
    assert out.out.splitlines()[-1] == \
        "removed 0 dead entries from 1 lock table; skipped 1 of other users"
