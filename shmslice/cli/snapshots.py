"""One moment of a lock table -- its entries, their owners, its counts -- and how the commands show it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shmslice.cli.errors import CommandError
from shmslice.cli.formatting import human_duration, human_size, plural, printable, render_table
from shmslice.cli.owners import ProcessInfo, describe_owners, owner_cells
from shmslice.cli.tablefiles import Target
from shmslice.locks import LockInfo, TableStat, TableView

__all__ = ["Snapshot", "Summary", "entry_dict", "format_lock_table", "lock_rows", "summarize",
           "summary_line", "take_snapshot"]

# Without a terminal to size it by, the command column is cut to this width.
_COMMAND_WIDTH = 60


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
        entries = view.locks(waiting=True, orphaned=True)
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
    dead = [e for e in entries if not e.alive and e.kind != "orphaned"]   # marks stay: news, not entries to reap
    return Summary(
        entries=len(entries), held=len(entries) - waiting, waiting=waiting,
        capacity=snap.stat.max_capacity if snap.stat else 0,   # the ceiling: the table grows to it
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


_LOCK_HEADERS = ("START", "END", "SIZE", "KIND", "COUNT", "STATE", "PID", "OWNER", "HELD",
                 "NAME", "COMMAND")
_LOCK_RIGHT = frozenset({0, 1, 2, 4, 6, 8})


def lock_rows(entries: Sequence[LockInfo], owners: dict[int, ProcessInfo], now: float) -> list[list[str]]:
    """Human table cells, one row per entry."""
    rows = []
    cells: dict[tuple[int, bool], tuple[str, str]] = {}   # quoted once per owner, not per row
    for e in entries:
        key = (e.pid, e.alive)
        found = cells.get(key)
        if found is None:
            found = cells[key] = owner_cells(owners.get(e.pid), e.alive)
        name, command = found
        rows.append([
            str(e.start), str(e.end), human_size(e.end - e.start), e.kind, str(e.count),
            "waiting" if e.waiting else "held", str(e.pid) if e.pid else "?",
            "alive" if e.alive else "dead",
            human_duration(now - e.since) if e.since > 0 else "-", name, command,
        ])
    return rows


def summary_line(summary: Summary, shown: int, target: Target, table_exists: bool) -> str:
    """The line under the human table."""
    if not table_exists:
        return (f"entries: 0 (no lock table yet: no process has opened {printable(target.given)} "
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
                 f"'shmslice reap {printable(target.given)}' removes them)")
    parts.append(dead)
    return ", ".join(parts)



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

