"""The ``shmslice`` command: lock tables from the shell, and a demo of the main job.

Subcommands::

    shmslice locks PATH     the file's lock table, one row per entry (--json, --watch)
    shmslice ls             every lock table in the lock directory (--json)
    shmslice reap PATH      remove dead processes' entries (--all: every table)
    shmslice info PATH      file size, table location, format, capacity and use
    shmslice demo           create a file, split it, let a worker pool lock/write/checksum
                            its slices, verify every byte, print throughput

Every subcommand that reads tables takes ``--lock-dir DIR`` (default:
``$SHMSLICE_DIR``, then ``/dev/shm/shmslice``).  Exit status: 0 success, 1 a
runtime error (reported as one line on stderr), 2 a usage error, 130 when
interrupted (except ``locks --watch``, which Ctrl-C ends normally).

Nothing here creates a lock table except ``demo``: inspecting a file that no
process has opened through shmslice shows an empty table and leaves the lock
directory as it was.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import hashlib
import json
import multiprocessing
import os
import re
import shlex
import shutil
import signal
import stat
import struct
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

import psutil

from shmslice import __version__
from shmslice._paths import resolve_lock_dir
from shmslice.errors import CorruptLockTable, ShmSliceError
from shmslice.locks import LockInfo, TableStat, TableView, table_path_for
from shmslice.mapping import MappedFile
from shmslice.mapping import open as shmslice_open
from shmslice.slices import ByteBufferSlice

__all__ = ["build_parser", "human_duration", "human_size", "main", "parse_size"]

PROG = "shmslice"

# Table files are named "<dev>-<ino>.shmslice" in hex (see ss_table_name in
# csrc/shmslice.c); tables being created are dot-files and never match.
_TABLE_NAME = re.compile(r"^([0-9a-f]+)-([0-9a-f]+)\.shmslice$")
# The first 8 bytes of every table: SS_MAGIC ("SHSLICE1") as a native uint64.
_TABLE_MAGIC = struct.pack("=Q", 0x5348534C49434531)
# How much later than an entry's grant time the pid's process may appear to
# have started before we conclude that the pid names another process here
# (psutil's start times are rounded to clock ticks).
_START_SLACK_S = 2.0
# Without a terminal to size it by, the command column is cut to this width.
_COMMAND_WIDTH = 60
_KINDS = ("shared", "exclusive", "pin")


class CommandError(Exception):
    """A runtime failure, reported as one line on stderr with exit status 1."""


# ---------------------------------------------------------------------------
# Formatting helpers
# ---------------------------------------------------------------------------

_BINARY_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def human_size(n: int) -> str:
    """``4096`` -> ``"4.0 KiB"``; below 1 KiB, whole bytes (``"512 B"``)."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in _BINARY_UNITS:
        value /= 1024
        # Compare the rounded value, so 1048575 reads "1.0 MiB", not "1024.0 KiB".
        if round(value, 1) < 1024 or unit == _BINARY_UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 10**3,
    "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
    "g": 1 << 30, "gib": 1 << 30, "gb": 10**9,
    "t": 1 << 40, "tib": 1 << 40, "tb": 10**12,
}


def parse_size(text: str) -> int:
    """Parse a byte count: ``4096``, ``64M``, ``64MiB``, ``1.5G``, ``10MB``.

    K/M/G/T and KiB/MiB/GiB/TiB are powers of 1024; KB/MB/GB/TB powers of
    1000 (as in dd and coreutils).  Raises ``ValueError`` for anything else.
    """
    match = _SIZE_RE.match(text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 4096, 64M, 1.5GiB)")
    number, unit = match.groups()
    multiplier = _SIZE_UNITS[unit.lower()]
    if "." in number:
        value = float(number) * multiplier
        if value != int(value):
            raise ValueError(f"not a whole number of bytes: {text!r}")
        return int(value)
    return int(number) * multiplier


def human_duration(seconds: float) -> str:
    """``4.2`` -> ``"4.2s"``, ``184`` -> ``"3m04s"``, ``7500`` -> ``"2h05m"``."""
    seconds = max(0.0, seconds)   # the wall clock can step back (NTP) after an entry was stamped
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def shorten(text: str, width: int) -> str:
    """Cut ``text`` to ``width`` characters, marking the cut with ``...``."""
    if width <= 0 or len(text) <= width:
        return text
    if width <= 3:
        return text[:width]
    return text[: width - 3] + "..."


def plural(n: int, word: str, many: str | None = None) -> str:
    """``plural(1, "entry", "entries")`` -> ``"1 entry"``."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
                 right: frozenset[int] = frozenset(), last_width: int | None = None) -> list[str]:
    """Align ``rows`` under ``headers``; columns in ``right`` are right-aligned.

    The last column is not padded; ``last_width`` cuts it (the rest of a
    terminal line, typically).
    """
    if last_width is not None:
        rows = [[*row[:-1], shorten(row[-1], last_width)] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    last = len(headers) - 1

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i, cell in enumerate(cells):
            if i in right:
                parts.append(cell.rjust(widths[i]))
            elif i == last:
                parts.append(cell)
            else:
                parts.append(cell.ljust(widths[i]))
        return "  ".join(parts).rstrip()

    return [line(headers)] + [line(row) for row in rows]


def _terminal_columns(stream: TextIO) -> int | None:
    """Width of the terminal behind ``stream``, or None when it is not one."""
    try:
        if not stream.isatty():
            return None
    except ValueError:   # closed stream
        return None
    return shutil.get_terminal_size((120, 24)).columns


# ---------------------------------------------------------------------------
# Which table a PATH names
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The table a command works on, and how the user named it."""

    given: str               #: PATH as given on the command line
    data_path: str | None    #: the data file, or None when PATH is a table file itself
    table_path: str          #: where its table lives (it may not exist yet)


def is_table_file(path: str) -> bool:
    """Whether ``path`` is a lock table file (by its name and magic number)."""
    if not _TABLE_NAME.match(os.path.basename(path)):
        return False
    try:
        with open(path, "rb") as f:
            return f.read(len(_TABLE_MAGIC)) == _TABLE_MAGIC
    except OSError:
        # Unreadable: treat it as a data file; the caller reports its own error.
        return False


def resolve_target(path: str, lock_dir: str | None) -> Target:
    """Find the table for PATH: a data file, or a table file as ``shmslice ls`` lists it.

    Accepting table files lets users inspect and reap tables whose data file
    was deleted or renamed.  Raises :class:`CommandError` for a missing PATH.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CommandError(f"{path}: no such file") from None
    if stat.S_ISDIR(st.st_mode):
        raise CommandError(f"{path}: is a directory, not a data file")
    if not stat.S_ISREG(st.st_mode):
        # shmslice maps regular files only; and opening a FIFO to read a magic number would hang.
        raise CommandError(f"{path}: not a regular file")
    if is_table_file(path):
        return Target(path, None, os.path.abspath(path))
    return Target(path, path, table_path_for(path, lock_dir))


def _no_table_message(target: Target) -> str:
    return (f"no lock table for {target.given}: no process has opened it through shmslice "
            f"(looked for {target.table_path})")


def table_identity(table_path: str) -> tuple[int, int] | None:
    """The data file identity (st_dev, st_ino) encoded in a table's file name."""
    match = _TABLE_NAME.match(os.path.basename(table_path))
    if not match:
        return None
    return int(match.group(1), 16), int(match.group(2), 16)


def data_file_status(table_path: str, data_path: str) -> str:
    """``"ok"`` if ``data_path`` still names the table's file, else ``"missing"`` or ``"replaced"``.

    The path is the one recorded when the table was created, so a rename or a
    delete makes it stale; the table's name holds the identity to check.
    """
    identity = table_identity(table_path)
    try:
        st = os.stat(data_path)
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "unknown"
    if identity is None or (st.st_dev, st.st_ino) == identity:
        return "ok"
    return "replaced"   # the path now names another file


# ---------------------------------------------------------------------------
# Snapshots of a table, with process details
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessInfo:
    """What psutil can tell about an entry's owner.

    ``status`` is ``"running"``, ``"exited"`` (gone since the table was read),
    ``"denied"`` (another user's process, hidden from us), ``"elsewhere"`` (the
    pid names a younger process here: the owner lives in another PID namespace
    or the pid was reused) or ``"dead"`` (the table says its owner died; the pid
    is not looked up, since it may belong to an unrelated process by now).
    """

    status: str
    name: str | None = None
    cmdline: list[str] | None = None
    username: str | None = None
    ppid: int | None = None
    #: For a multiprocessing worker (whose own command line is boilerplate):
    #: the command line of the process that started it, if we may read it.
    parent_cmdline: list[str] | None = None


# The command lines multiprocessing gives the workers it spawns (spawn and
# forkserver start methods): the same for every pool, so the parent says more.
_MP_WORKER_MARKERS = ("from multiprocessing.spawn import spawn_main",
                      "from multiprocessing.forkserver import main")


def is_multiprocessing_worker(cmdline: Sequence[str] | None) -> bool:
    """Whether ``cmdline`` is that of a multiprocessing spawn/forkserver child."""
    return bool(cmdline) and any(arg.startswith(_MP_WORKER_MARKERS) for arg in cmdline or ())


def _command(cmdline: Sequence[str]) -> str:
    """A command line for display: the program's base name, then its arguments, shell-quoted.

    The full path of the program says little and would use up the column; so
    does that of a script run by an interpreter (``python3 /venv/bin/shmslice``).
    """
    program = os.path.basename(cmdline[0])
    args = list(cmdline[1:])
    if program.startswith("python") and args and os.path.isabs(args[0]):
        args[0] = os.path.basename(args[0])
    return shlex.join([program, *args])


def _denied_is_none(call: Any) -> Any:
    """``call()``, or None when psutil may not read that field of another user's process."""
    try:
        return call()
    except psutil.AccessDenied:
        return None


def describe_process(pid: int, since: float) -> ProcessInfo:
    """Name, command line and user of live owner ``pid`` (granted its entry at ``since``).

    Never raises for processes that exit meanwhile or that we may not inspect.
    """
    if pid <= 0:
        return ProcessInfo("unknown")
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            name = proc.name()
            started = proc.create_time()
            cmdline = _denied_is_none(proc.cmdline)
            username = _denied_is_none(proc.username)
            ppid = proc.ppid()
    except psutil.NoSuchProcess:   # ZombieProcess included: it has exited too
        return ProcessInfo("exited")
    except psutil.AccessDenied:
        return ProcessInfo("denied")
    if since > 0 and started > since + _START_SLACK_S:
        return ProcessInfo("elsewhere")
    parent_cmdline = None
    if is_multiprocessing_worker(cmdline) and ppid > 0:
        try:
            parent_cmdline = psutil.Process(ppid).cmdline() or None
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            parent_cmdline = None   # the worker's own line is still shown
    return ProcessInfo("running", name, cmdline, username, ppid, parent_cmdline)


def describe_owners(entries: Sequence[LockInfo]) -> dict[int, ProcessInfo]:
    """One :class:`ProcessInfo` per live owner pid (dead owners are not looked up)."""
    out: dict[int, ProcessInfo] = {}
    earliest: dict[int, float] = {}
    for e in entries:
        if e.alive:
            earliest[e.pid] = min(earliest.get(e.pid, e.since), e.since)
    for pid, since in earliest.items():
        out[pid] = describe_process(pid, since)
    return out


@dataclass
class Snapshot:
    """A table's entries and figures at one moment (``stat`` None: no table yet)."""

    target: Target
    stat: TableStat | None
    entries: list[LockInfo]
    taken: float
    owners: dict[int, ProcessInfo] = field(default_factory=dict)


def take_snapshot(target: Target) -> Snapshot:
    """Read the table of ``target`` without creating it or taking any lock."""
    try:
        view = TableView(target.table_path)
    except FileNotFoundError:
        if target.data_path is None:
            raise CommandError(f"{target.table_path}: the lock table no longer exists") from None
        return Snapshot(target, None, [], time.time())
    try:
        entries = view.locks(waiting=True)
        st = view.stat()
    finally:
        view.close()
    now = time.time()
    return Snapshot(target, st, entries, now, describe_owners(entries))


@dataclass(frozen=True)
class Summary:
    """Table-wide counts of a snapshot (independent of display filters)."""

    entries: int
    held: int
    waiting: int
    capacity: int
    dead_entries: int
    dead_owners: list[int]
    live_processes: list[int]

    def as_dict(self, shown: int, table_exists: bool) -> dict[str, Any]:
        return {
            "table_exists": table_exists, "entries": self.entries, "shown": shown,
            "held": self.held, "waiting": self.waiting, "capacity": self.capacity,
            "used": self.entries, "dead_entries": self.dead_entries,
            "dead_owners": len(self.dead_owners), "dead_owner_pids": self.dead_owners,
            "live_processes": len(self.live_processes), "live_pids": self.live_processes,
        }


def summarize(snap: Snapshot) -> Summary:
    """Counts over every entry of the snapshot.

    "used" is the snapshot's own entry count rather than the header's, so the
    numbers always agree with the rows printed above them.
    """
    entries = snap.entries
    waiting = sum(1 for e in entries if e.waiting)
    dead = [e for e in entries if not e.alive]
    return Summary(
        entries=len(entries), held=len(entries) - waiting, waiting=waiting,
        capacity=snap.stat.capacity if snap.stat else 0,
        dead_entries=len(dead), dead_owners=sorted({e.pid for e in dead}),
        live_processes=sorted({e.pid for e in entries if e.alive}))


def entry_dict(e: LockInfo, owner: ProcessInfo | None, now: float) -> dict[str, Any]:
    """The JSON object of one entry."""
    info = owner if e.alive and owner is not None else ProcessInfo("dead" if not e.alive else "unknown")
    return {
        "start": e.start, "end": e.end, "length": e.end - e.start, "kind": e.kind,
        "count": e.count, "state": "waiting" if e.waiting else "held", "waiting": e.waiting,
        "pid": e.pid, "tid": e.tid, "alive": e.alive,
        "since": e.since if e.since > 0 else None,
        "held_seconds": round(now - e.since, 3) if e.since > 0 else None,
        "name": info.name, "cmdline": info.cmdline, "username": info.username,
        "ppid": info.ppid, "process": info.status,
    }


def _process_cells(info: ProcessInfo | None, alive: bool) -> tuple[str, str]:
    """NAME and COMMAND cells for an owner."""
    if not alive:
        return "-", "(owner died; 'shmslice reap' removes its entries)"
    if info is None or info.status == "unknown":
        return "?", ""
    if info.status == "exited":
        return "-", "(exited just now)"
    if info.status == "denied":
        return "?", "(another user's process: details hidden)"
    if info.status == "elsewhere":
        return "?", "(pid not visible here: another PID namespace?)"
    command = ""
    if info.parent_cmdline:
        command = f"[worker of {info.ppid}] {_command(info.parent_cmdline)}"
    elif info.cmdline:
        command = _command(info.cmdline)
    elif info.cmdline is None:
        command = "(command line hidden)"
    return info.name or "?", command


_LOCK_HEADERS = ("START", "END", "SIZE", "KIND", "COUNT", "STATE", "PID", "OWNER", "HELD",
                 "NAME", "COMMAND")
_LOCK_RIGHT = frozenset({0, 1, 2, 4, 6, 8})


def lock_rows(entries: Sequence[LockInfo], owners: dict[int, ProcessInfo], now: float) -> list[list[str]]:
    """Human table cells, one row per entry."""
    rows = []
    for e in entries:
        name, command = _process_cells(owners.get(e.pid), e.alive)
        rows.append([
            str(e.start), str(e.end), human_size(e.end - e.start), e.kind, str(e.count),
            "waiting" if e.waiting else "held", str(e.pid), "alive" if e.alive else "dead",
            human_duration(now - e.since) if e.since > 0 else "-", name, command,
        ])
    return rows


def summary_line(summary: Summary, shown: int, target: Target, table_exists: bool) -> str:
    """The line under the human table."""
    if not table_exists:
        return (f"entries: 0 (no lock table yet: no process has opened {target.given} "
                "through shmslice)")
    head = f"entries: {summary.entries} ({summary.held} held, {summary.waiting} waiting)"
    if shown != summary.entries:
        head += f", {shown} shown"
    pct = 100.0 * summary.entries / summary.capacity if summary.capacity else 0.0
    parts = [head, f"capacity: {summary.entries}/{summary.capacity} used ({pct:.2f}%)",
             f"waiters: {summary.waiting}"]
    dead = f"dead owners: {len(summary.dead_owners)}"
    if summary.dead_owners:
        pids = ", ".join(map(str, summary.dead_owners[:5]))
        dead += (f" (pid {pids}; {plural(summary.dead_entries, 'entry', 'entries')}; "
                 f"'shmslice reap {target.given}' removes them)")
    parts.append(dead)
    return ", ".join(parts)


# ---------------------------------------------------------------------------
# locks
# ---------------------------------------------------------------------------

_SORT_KEYS = {
    "region": lambda e: (e.start, e.end, e.kind, e.pid),
    "pid": lambda e: (e.pid, e.start, e.end),
    "kind": lambda e: (_KINDS.index(e.kind) if e.kind in _KINDS else 9, e.start, e.end),
    "count": lambda e: (-e.count, e.start, e.end),
    "size": lambda e: (-(e.end - e.start), e.start),
    "held": lambda e: (e.since, e.start),   # longest-held first
}


def _select(entries: Sequence[LockInfo], args: argparse.Namespace) -> list[LockInfo]:
    """Apply the --pid/--kind/--dead/--waiting filters and the sort order."""
    chosen = [
        e for e in entries
        if (not args.pid or e.pid in args.pid)
        and (not args.kind or e.kind in args.kind)
        and (not args.dead or not e.alive)
        and (not args.waiting or e.waiting)
    ]
    chosen.sort(key=_SORT_KEYS[args.sort], reverse=args.reverse)
    return chosen


def render_locks(snap: Snapshot, args: argparse.Namespace, columns: int | None) -> str:
    """One frame of ``shmslice locks``: the human table, or one JSON document."""
    shown = _select(snap.entries, args)
    summary = summarize(snap)
    exists = snap.stat is not None
    if args.json:
        doc = {
            "path": snap.target.given, "data_path": snap.target.data_path,
            "table": snap.target.table_path if exists else None,
            "time": snap.taken,
            "entries": [entry_dict(e, snap.owners.get(e.pid), snap.taken) for e in shown],
            "summary": summary.as_dict(len(shown), exists),
        }
        # --watch prints one document per line (JSON Lines) so a reader can stream it.
        return json.dumps(doc, indent=None if args.watch else 2)
    lines = format_lock_table(shown, snap.owners, snap.taken, columns, args.wide)
    lines.append(summary_line(summary, len(shown), snap.target, exists))
    return "\n".join(lines)


def format_lock_table(entries: Sequence[LockInfo], owners: dict[int, ProcessInfo], now: float,
                      columns: int | None, wide: bool = False, indent: int = 0) -> list[str]:
    """The aligned rows of ``shmslice locks`` (header first), fitted to ``columns``."""
    rows = lock_rows(entries, owners, now)
    last_width = None
    if not wide:
        if columns is None:
            last_width = _COMMAND_WIDTH
        else:
            # Whatever the other columns leave of the terminal line, but never so little
            # that the command becomes unreadable: then let the line wrap.
            others = render_table(_LOCK_HEADERS[:-1], [r[:-1] for r in rows])
            used = indent + max(len(line) for line in others) + 2
            last_width = max(columns - used, 24)
    return [" " * indent + line
            for line in render_table(_LOCK_HEADERS, rows, _LOCK_RIGHT, last_width)]


def cmd_locks(args: argparse.Namespace) -> int:
    """``shmslice locks PATH``."""
    target = resolve_target(args.path, args.lock_dir)
    out = sys.stdout
    columns = _terminal_columns(out)
    if args.watch is None:
        print(render_locks(take_snapshot(target), args, columns), file=out)
        return 0
    redraw = columns is not None and not args.json
    try:
        next_frame = time.monotonic()
        while True:
            frame = render_locks(take_snapshot(target), args, _terminal_columns(out))
            if redraw:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                # Clear and draw in one write, so the screen never shows half a frame.
                out.write(f"\x1b[H\x1b[2JEvery {args.watch:g}s: shmslice locks {args.path}"
                          f"    {stamp}\n\n{frame}\n")
            else:
                out.write(frame + ("\n" if args.json else "\n\n"))
            out.flush()
            next_frame += args.watch
            # Sleep to a fixed schedule; if a frame took longer than the interval, restart it.
            delay = next_frame - time.monotonic()
            if delay < 0:
                next_frame, delay = time.monotonic(), 0.0
            time.sleep(delay)
    except KeyboardInterrupt:
        # Ctrl-C is how --watch is meant to end: a normal exit, on a fresh line.
        if redraw:
            out.write("\n")
        return 0


# ---------------------------------------------------------------------------
# ls
# ---------------------------------------------------------------------------


def _lock_directory(lock_dir: str | None) -> str:
    """The lock directory to read (never created: reading needs none)."""
    return resolve_lock_dir(lock_dir, create=False)


def list_tables(directory: str) -> list[str]:
    """Paths of every table file in ``directory`` (none if it does not exist)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return [os.path.join(directory, n) for n in sorted(names) if _TABLE_NAME.match(n)]


def cmd_ls(args: argparse.Namespace) -> int:
    """``shmslice ls``."""
    directory = _lock_directory(args.lock_dir)
    records: list[dict[str, Any]] = []
    failures: list[str] = []
    for table in list_tables(directory):
        try:
            view = TableView(table)
        except FileNotFoundError:
            continue   # removed since we listed the directory: nothing to show
        except ShmSliceError as err:   # corrupt, or unsafe (a PermissionError too)
            failures.append(f"{table}: {describe_error(err)}")
            continue
        except PermissionError:
            # Another user's table (its mode follows its data file's): normal on a
            # shared machine, so listed as unreadable rather than failed.
            records.append({"table": table, "readable": False, "error": "permission denied"})
            continue
        except OSError as err:
            failures.append(f"{table}: {describe_error(err)}")
            continue
        try:
            entries = view.locks(waiting=True)
            st = view.stat()
        except (ShmSliceError, OSError) as err:
            failures.append(f"{table}: {describe_error(err)}")
            continue
        finally:
            view.close()
        live = sorted({e.pid for e in entries if e.alive})
        records.append({
            "table": table, "readable": True, "data_path": st.data_path,
            "data_status": data_file_status(table, st.data_path),
            "file_size": st.file_size, "entries": len(entries),
            "waiting": sum(1 for e in entries if e.waiting),
            "dead_entries": sum(1 for e in entries if not e.alive),
            "live_processes": len(live), "live_pids": live,
            "attached_processes": st.procs, "capacity": st.capacity,
        })
    if args.json:
        print(json.dumps({"lock_dir": directory, "tables": records,
                          "errors": failures}, indent=2))
    elif not records:
        print(f"no lock tables in {directory}")
    else:
        rows = []
        for r in records:
            if not r["readable"]:
                rows.append(["? (no permission to read this table)", "?", "?", "?", "?", "?",
                             os.path.basename(r["table"])])
                continue
            shown_path = r["data_path"]
            if r["data_status"] != "ok":
                shown_path += f" ({r['data_status']})"
            rows.append([shown_path, human_size(r["file_size"]), str(r["entries"]),
                         str(r["waiting"]), str(r["dead_entries"]), str(r["live_processes"]),
                         os.path.basename(r["table"])])
        lines = render_table(("DATA FILE", "SIZE", "ENTRIES", "WAITING", "DEAD", "PROCS", "TABLE"),
                             rows, frozenset({1, 2, 3, 4, 5}))
        print("\n".join(lines))
        print(f"{plural(len(records), 'lock table')} in {directory}")
    for failure in failures:
        _error_line("ls", failure)
    return 1 if failures else 0


# ---------------------------------------------------------------------------
# reap
# ---------------------------------------------------------------------------


def _reap_table(table: str) -> dict[str, Any]:
    with TableView(table) as view:
        removed = view.reap()
        st = view.stat()
    return {"table": table, "data_path": st.data_path, "removed": removed, "remaining": st.used}


def cmd_reap(args: argparse.Namespace) -> int:
    """``shmslice reap PATH`` / ``shmslice reap --all``."""
    results: list[dict[str, Any]] = []
    skipped: list[str] = []
    failures: list[str] = []
    if args.all:
        directory = _lock_directory(args.lock_dir)
        for table in list_tables(directory):
            try:
                results.append(_reap_table(table))
            except FileNotFoundError:
                continue   # removed since listed
            except ShmSliceError as err:   # corrupt, or unsafe (a PermissionError too)
                failures.append(f"{table}: {describe_error(err)}")
            except PermissionError:
                # Another user's table: theirs to reap (their processes also reclaim
                # dead entries they run into), so a note rather than a failure.
                skipped.append(table)
            except OSError as err:
                failures.append(f"{table}: {describe_error(err)}")
    else:
        target = resolve_target(args.path, args.lock_dir)
        try:
            result = _reap_table(target.table_path)
        except FileNotFoundError:
            raise CommandError(_no_table_message(target)) from None
        result["path"] = target.given
        results.append(result)
    total = sum(r["removed"] for r in results)
    if args.json:
        print(json.dumps({"removed": total, "tables": results, "skipped": skipped,
                          "errors": failures}, indent=2))
    else:
        for r in results:
            name = r.get("path") or r["data_path"] or r["table"]
            print(f"{name}: removed {plural(r['removed'], 'dead entry', 'dead entries')}, "
                  f"{r['remaining']} remaining")
        for table in skipped:
            print(f"{table}: skipped (no permission to open it)")
        if args.all:
            print(f"removed {plural(total, 'dead entry', 'dead entries')} from "
                  f"{plural(len(results), 'lock table')}"
                  + (f"; skipped {len(skipped)} of other users" if skipped else ""))
    for failure in failures:
        _error_line("reap", failure)
    return 1 if failures else 0


# ---------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------


def _format_time(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))


def cmd_info(args: argparse.Namespace) -> int:
    """``shmslice info PATH``."""
    target = resolve_target(args.path, args.lock_dir)
    try:
        view = TableView(target.table_path)
    except FileNotFoundError:
        raise CommandError(_no_table_message(target)) from None
    try:
        st = view.stat()
        entries = view.locks(waiting=True)
    finally:
        view.close()
    data_path = target.data_path or st.data_path
    status = data_file_status(target.table_path, data_path)
    try:
        current_size: int | None = os.stat(data_path).st_size if status == "ok" else None
    except OSError:
        current_size = None
    dead = sum(1 for e in entries if not e.alive)
    doc = {
        "data_path": data_path, "data_status": status, "file_size": current_size,
        "recorded_file_size": st.file_size, "table": st.table_path,
        "table_bytes": st.table_bytes, "format": st.format, "format_version": st.format >> 48,
        "created": st.created, "capacity": st.capacity, "used": st.used, "entries": len(entries),
        "waiting": st.waiting, "dead_entries": dead, "proc_capacity": st.proc_capacity,
        "attached_processes": st.procs, "repairs": st.repairs,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    size = human_size(current_size) if current_size is not None else f"unknown ({status})"
    if current_size is not None:
        size += f" ({current_size} bytes)"
    if current_size is not None and current_size != st.file_size:
        size += f"; last set through shmslice: {human_size(st.file_size)}"
    pct = 100.0 * st.used / st.capacity if st.capacity else 0.0
    rows = [
        ("data file", data_path + ("" if status == "ok" else f" ({status})")),
        ("file size", size),
        ("lock table", f"{st.table_path} ({human_size(st.table_bytes)})"),
        ("format", f"version {st.format >> 48} (stamp {st.format:#x})"),
        ("created", f"{_format_time(st.created)} ({human_duration(time.time() - st.created)} ago)"),
        ("entries", (f"{st.used} of {st.capacity} used ({pct:.2f}%), {st.waiting} waiting, "
                     f"{dead} left by dead owners")),
        ("processes", f"{st.procs} attached (capacity {st.proc_capacity})"),
        ("repairs", f"{st.repairs} (times the table was repaired after a holder died)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    return 0


# ---------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------

_DEMO_DEFAULT_SIZE = 256 << 20
_PAGE = 4096
# No lock in the demo is held for more than milliseconds; a wait this long
# means something is wrong, and the demo should say so rather than hang.
_DEMO_LOCK_TIMEOUT_S = 30.0
_DEMO_SNAPSHOT_EVERY_S = 0.1

@functools.lru_cache(maxsize=4)
def _demo_filler(seed: int, length: int) -> bytes:
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
    filler = _demo_filler(seed, _PAGE * (len(buf) // _PAGE + 2))
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


def _demo_worker_init() -> None:
    """Set up a worker process of the demo's pool."""
    # Ctrl-C reaches the whole process group; the parent shuts the pool down in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _demo_task(index: int, piece: ByteBufferSlice, seed: int) -> tuple[int, int, float, float, int]:
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
        with piece.lock("exclusive", timeout=_DEMO_LOCK_TIMEOUT_S), piece.view() as view:
            fill_pattern(view, seed, piece.start)
        with piece.lock("shared", timeout=_DEMO_LOCK_TIMEOUT_S), piece.view() as view:
            crc = zlib.crc32(view)
    return index, crc, started, time.monotonic(), os.getpid()


def _default_workers() -> int:
    return max(2, min(8, os.cpu_count() or 2))


def _default_chunk(size: int, workers: int) -> int:
    """About 64 slices per worker, page-aligned, between 64 KiB and 8 MiB."""
    chunk = size // (workers * 64)
    chunk = max(64 << 10, min(8 << 20, chunk))
    return max(_PAGE, chunk - chunk % _PAGE)


@dataclass
class _LockCounts:
    """Lock counts in one snapshot of the table, as the demo's live line shows them."""

    exclusive: int = 0
    shared: int = 0
    pins: int = 0
    pin_refs: int = 0
    waiting: int = 0
    processes: int = 0

    @classmethod
    def of(cls, entries: Sequence[LockInfo]) -> _LockCounts:
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


class _Progress:
    """Progress of the demo: one line redrawn in place on a terminal, else a line now and then."""

    def __init__(self, out: TextIO, enabled: bool) -> None:
        self.out = out
        self.enabled = enabled
        self.tty = enabled and bool(_terminal_columns(out))
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
             progress: _Progress, fault_offset: int | None = None,
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
            with mf.lock(fault_offset, fault_offset + 1, "exclusive", timeout=_DEMO_LOCK_TIMEOUT_S):
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
              progress: _Progress) -> None:
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
        max_workers=result.workers, mp_context=context, initializer=_demo_worker_init)
    # Ctrl-C only sets a flag, checked between waits: a KeyboardInterrupt raised
    # inside concurrent.futures' own machinery (its locks, its queue feeder) can
    # leave the executor unable to shut down, and the demo hanging.
    interrupted = threading.Event()
    previous_handler = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.set())
    try:
        futures = {pool.submit(_demo_task, i, piece, seed): i for i, piece in enumerate(pieces)}
        pending = set(futures)
        while pending:
            if interrupted.is_set():
                raise KeyboardInterrupt
            finished, pending = concurrent.futures.wait(
                pending, timeout=_DEMO_SNAPSHOT_EVERY_S,
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
                            f"{_LockCounts.of(entries).line()}")
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
    with mf.lock(0, result.size, "shared", timeout=_DEMO_LOCK_TIMEOUT_S):
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


def _remove_private_table(table: str) -> None:
    """Delete the table of the demo's own temporary file, which is already deleted.

    Tables are not removed by the library (another process may attach at any
    moment), but nobody can attach to the table of a file that no longer
    exists, and no process outside the demo could ever reach our private
    temporary directory; leaving the table behind would only leak shared
    memory.  The pool has been shut down, so a process still attached can only
    be the demo itself (a handle an interrupt left behind), which is exiting.
    A table still holding live entries is left alone all the same.
    """
    try:
        with TableView(table) as view:
            view.reap()
            st = view.stat()
    except FileNotFoundError:
        return
    if st.used == 0:
        os.unlink(table)


def _check_space(directory: str, size: int) -> None:
    """Refuse a demo file that cannot fit, before writing a byte of it."""
    free = shutil.disk_usage(directory).free
    if size > free:
        raise CommandError(f"a {human_size(size)} demo file does not fit in {directory} "
                           f"({human_size(free)} free): choose a smaller --size or another --path")


def _clean_up_demo(tmpdir: str, table: str | None) -> None:
    """Remove the demo's temporary directory and its table; warn (do not fail) if that fails."""
    try:
        # The file first: once it is gone, no straggling worker can attach to its table anew.
        shutil.rmtree(tmpdir)
        if table is not None:
            _remove_private_table(table)
    except (ShmSliceError, OSError) as err:
        # The demo's result stands; leftovers are worth a word, not a failure.
        print(f"{PROG} demo: warning: could not clean up {tmpdir}: {describe_error(err)}",
              file=sys.stderr)


def _bad_slices(result: DemoResult) -> str:
    n = len(result.bad_slices)
    return (f"{plural(n, 'slice')} {'differs' if n == 1 else 'differ'} from what was written, "
            f"first bad byte at offset {result.first_bad_offset}")


def _print_demo_report(result: DemoResult, out: TextIO) -> None:
    columns = _terminal_columns(out)
    snap = result.busiest
    if snap is not None and snap.entries:
        # The demo's own pins (one per slice not yet done) would fill the screen:
        # show the workers' rows, and count ours in the summary below them.
        me = os.getpid()
        theirs = [e for e in snap.entries if e.pid != me]
        ours = len(snap.entries) - len(theirs)
        print(f"\nthe lock table while the workers ran, as 'shmslice locks {result.path}' showed "
              f"it (without the {plural(ours, 'pin')} the demo process {me} held on slices "
              "not yet done):", file=out)
        for line in format_lock_table(theirs, snap.owners, snap.taken, columns, indent=2):
            print(line, file=out)
        print("  " + summary_line(summarize(snap), len(theirs), snap.target, True), file=out)
    rate = result.size / result.work_seconds if result.work_seconds > 0 else 0.0
    print(f"\nwrote and checksummed {human_size(result.size)} in {result.work_seconds:.2f}s: "
          f"{human_size(int(rate))}/s ({plural(result.workers, 'worker')}, "
          f"{plural(result.slices, 'slice')} of {human_size(result.chunk)})", file=out)
    if result.ok:
        vrate = result.size / result.verify_seconds if result.verify_seconds > 0 else 0.0
        print(f"verified all {result.size} bytes and {result.slices} worker checksums in "
              f"{result.verify_seconds:.2f}s ({human_size(int(vrate))}/s): OK", file=out)
    else:
        print(f"verification FAILED: {_bad_slices(result)}", file=out)
    print(f"total {result.wall_seconds:.2f}s", file=out)


def _demo_json(result: DemoResult) -> dict[str, Any]:
    busiest = result.busiest
    return {
        "path": result.path, "table": result.table, "size": result.size, "chunk": result.chunk,
        "slices": result.slices, "workers": result.workers, "pid": os.getpid(),
        "worker_pids": result.processes,
        "work_seconds": round(result.work_seconds, 4),
        "bytes_per_second": round(result.size / result.work_seconds) if result.work_seconds else None,
        "verify_seconds": round(result.verify_seconds, 4),
        "wall_seconds": round(result.wall_seconds, 4),
        "verified": result.ok, "bad_slices": result.bad_slices,
        "first_bad_offset": result.first_bad_offset,
        "busiest": None if busiest is None else [
            entry_dict(e, busiest.owners.get(e.pid), busiest.taken) for e in busiest.entries],
    }


def cmd_demo(args: argparse.Namespace) -> int:
    """``shmslice demo``."""
    size: int = args.size
    workers: int = args.workers or _default_workers()
    chunk: int = args.chunk or _default_chunk(size, workers)
    if args.fault is not None and not 0 <= args.fault < size:
        raise CommandError(f"--fault offset must be within the file (0..{size - 1})")
    lock_dir = resolve_lock_dir(args.lock_dir)   # the demo creates a table: make the directory
    out = sys.stdout
    tmpdir: str | None = None
    if args.path:
        path = args.path
        if os.path.lexists(path):
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                raise CommandError(f"{path}: exists and is not a regular file")
            if st.st_size > 0 and not args.force:
                raise CommandError(f"{path} exists and is not empty; the demo overwrites its "
                                   "file: pass --force, or choose a new path")
        _check_space(os.path.dirname(os.path.abspath(path)), size)
    else:
        _check_space(tempfile.gettempdir(), size)
        tmpdir = tempfile.mkdtemp(prefix="shmslice-demo-")
        path = os.path.join(tmpdir, "demo.bin")
    table: str | None = None
    try:
        if not args.json:
            print(f"shmslice demo: {human_size(size)} in {path}, "
                  f"{plural(-(-size // chunk), 'slice')} of {human_size(chunk)}, "
                  f"{plural(workers, 'worker')} (lock directory {lock_dir})", file=out)
            out.flush()
        progress = _Progress(out, enabled=not args.json)
        result = run_demo(path, size, chunk, workers, lock_dir, progress, args.fault,
                          durable=tmpdir is None)
        table = result.table
    finally:
        if tmpdir is not None:
            if table is None:
                # Failed before the result: find the table by the file, if it got that far.
                try:
                    table = table_path_for(path, lock_dir)
                except OSError:
                    table = None
            _clean_up_demo(tmpdir, table)
    if args.json:
        print(json.dumps(_demo_json(result), indent=2))
    else:
        _print_demo_report(result, out)
    if not result.ok:
        _error_line("demo", f"verification failed: {_bad_slices(result)}")
        return 1
    return 0


# ---------------------------------------------------------------------------
# Argument parsing and main
# ---------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (and exit status 2)."""

    def subparser_for(self, command: str) -> argparse.ArgumentParser:
        """The parser of subcommand ``command`` (for checks argparse cannot express)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen: argparse.ArgumentParser = action.choices[command]
                return chosen
        raise KeyError(command)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} -h')\n")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _size_arg(text: str) -> int:
    try:
        value = parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {text!r}")
    return value


def _check_reap_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """PATH or --all, exactly one (a usage error otherwise)."""
    if args.all and args.path:
        parser.error("give PATH or --all, not both")
    if not args.all and not args.path:
        parser.error("give PATH, or --all for every table")


def build_parser() -> _Parser:
    """The ``shmslice`` argument parser."""
    parser = _Parser(
        prog=PROG,
        description="Inspect and tidy shmslice lock tables, or run the demo.",
        epilog="Exit status: 0 success, 1 runtime error, 2 usage error.")
    parser.add_argument("-V", "--version", action="version", version=f"{PROG} {__version__}")

    tables = _Parser(add_help=False)
    tables.add_argument(
        "--lock-dir", metavar="DIR",
        help="directory of lock tables (default: $SHMSLICE_DIR, else /dev/shm/shmslice)")
    as_json = _Parser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON for programs")

    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "locks", parents=[tables, as_json], help="show a file's locks and pins",
        description="Show the lock table of a data file: one row per lock, pin or waiting "
                    "request, with its owner. PATH may also be a table file as 'shmslice ls' "
                    "lists it. A file no process has opened through shmslice has an empty table.",
        epilog="Columns: START, END: the region [START, END) in bytes; KIND: shared, exclusive "
               "or pin; COUNT: references of a pin (a lock: 1); STATE: held or waiting; OWNER: "
               "alive, or dead (its entries stay until reaped, by 'shmslice reap' or by a process "
               "waiting on them); HELD: time since the "
               "entry was granted (waiting: since it was queued); NAME, COMMAND: the owner "
               "process, as far as this user may see it.")
    p.add_argument("path", metavar="PATH", help="data file (or lock table file)")
    p.add_argument("--watch", metavar="SECONDS", type=_positive_float,
                   help="redraw every SECONDS until Ctrl-C (with --json: one JSON document per line)")
    p.add_argument("--pid", type=int, action="append", metavar="PID",
                   help="only entries of this process (repeatable)")
    p.add_argument("--kind", action="append", choices=_KINDS,
                   help="only entries of this kind (repeatable)")
    p.add_argument("--dead", action="store_true", help="only entries of dead owners")
    p.add_argument("--waiting", action="store_true", help="only requests still waiting")
    p.add_argument("--sort", choices=sorted(_SORT_KEYS), default="region",
                   help="order of the rows (default: region; held = longest-held first)")
    p.add_argument("-r", "--reverse", action="store_true", help="reverse the order")
    p.add_argument("-w", "--wide", action="store_true", help="do not shorten command lines")
    p.set_defaults(func=cmd_locks)

    p = sub.add_parser(
        "ls", parents=[tables, as_json], help="list every lock table",
        description="List every lock table in the lock directory: data file, size, entries, "
                    "waiters, dead owners' entries and live owner processes. A data file that "
                    "was deleted or renamed since its table was made is marked.")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser(
        "reap", parents=[tables, as_json], help="remove entries of dead processes",
        description="Remove the entries that dead processes left in a table and print how many.")
    p.add_argument("path", metavar="PATH", nargs="?", help="data file (or lock table file)")
    p.add_argument("--all", action="store_true", help="reap every table in the lock directory")
    p.set_defaults(func=cmd_reap, check=_check_reap_args)

    p = sub.add_parser(
        "info", parents=[tables, as_json], help="show a table's figures",
        description="File size, table location and size, format version, capacity and use.")
    p.add_argument("path", metavar="PATH", help="data file (or lock table file)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "demo", parents=[tables, as_json], help="run the main job on a demo file",
        description="Create a file (in a temporary directory unless --path), split it into "
                    "slices, let a pool of worker processes lock, write and checksum them while "
                    "the lock counts are shown live, verify every byte, print throughput. "
                    "Exits 1 if verification fails.")
    p.add_argument("--workers", type=_positive_int, metavar="N",
                   help=f"worker processes (default: CPUs, 2 to 8; here {_default_workers()})")
    p.add_argument("--size", type=_size_arg, default=_DEMO_DEFAULT_SIZE, metavar="SIZE",
                   help="file size, e.g. 64M or 1GiB (default: 256MiB)")
    p.add_argument("--chunk", type=_size_arg, metavar="SIZE",
                   help="slice size (default: about 64 slices per worker)")
    p.add_argument("--path", metavar="PATH",
                   help="create the file here and keep it (default: a temporary directory)")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --path")
    p.add_argument("--fault", type=int, help=argparse.SUPPRESS)   # test hook: see run_demo
    p.set_defaults(func=cmd_demo)
    return parser


def describe_error(err: BaseException) -> str:
    """One line for a runtime error."""
    if isinstance(err, CorruptLockTable):
        return f"{err} (the table can be removed once no process uses its data file)"
    if isinstance(err, ShmSliceError):
        return str(err)
    if isinstance(err, OSError):
        text = err.strerror or str(err)
        if err.filename and str(err.filename) not in text:
            text = f"{err.filename}: {text}"
        return text
    return str(err)


def _error_line(command: str | None, message: str) -> None:
    prefix = f"{PROG} {command}" if command else PROG
    # One line, whatever the message holds.
    print(f"{prefix}: error: {' '.join(message.split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``shmslice`` command; returns its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        check = getattr(args, "check", None)
        if check is not None:
            check(parser.subparser_for(args.command), args)
    except SystemExit as exc:
        # -h, -V and usage errors: argparse has printed what it had to say.
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        return int(args.func(args))
    except CommandError as err:
        _error_line(args.command, str(err))
    except BrokenPipeError:
        # The reader went away (`shmslice ls | head -1`): stop quietly, and keep
        # Python from failing again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    except (ShmSliceError, OSError, BufferError) as err:
        # BufferError: the library refuses to shrink a file another process still uses.
        _error_line(args.command, describe_error(err))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 1
