"""A table's entries as ``shmslice locks`` shows them, at any size.

The snapshot stays packed (:class:`~shmslice._binding.PackedEntries`, 64
bytes an entry); nothing here makes an object per entry.  One pass
(:func:`census`) counts every entry by (pid, alive, kind, state): that is
enough for the table-wide summary, for the default summary by process and
kind, for ``--group-by pid`` and ``kind``, and for every filter (they all
select whole groups).  Listing every entry (``--all``, ``--json``) makes one
more pass that builds one sort key (an int) per selected entry and finds the
column widths, then streams the rows in that order; ``--group-by region``
makes one pass that counts by region.  Owners are described, and their
command lines quoted, once per process.
"""

from __future__ import annotations

import json
import operator
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from shmslice import _binding
from shmslice._binding import PackedEntries
from shmslice.cli.errors import CommandError
from shmslice.cli.formatting import human_duration, human_size, printable, render_table, shorten
from shmslice.cli.owners import ProcessInfo, describe_pids, owner_cells
from shmslice.cli.snapshots import Summary
from shmslice.cli.tablefiles import Target
from shmslice.locks import TableStat, TableView

__all__ = ["GROUPINGS", "KINDS", "LOCK_HEADERS", "SORT_KEYS", "Census", "Filters", "GroupTable",
           "PackedSnapshot", "census", "group_table", "render_groups", "take_packed_snapshot",
           "write_entries_json", "write_entry_table", "write_groups_json"]

KINDS = ("shared", "exclusive", "pin", "orphaned")
_KIND_CODE = {name: code for code, name in _binding.KIND_NAMES.items()}
_KIND_NAME = _binding.KIND_NAMES
_WAITING = _binding.STATE_WAITING
_ORPHAN = _KIND_CODE["orphaned"]

#: ``--group-by`` choices.
GROUPINGS = ("pid", "kind", "region")

# Without a terminal to size it by, the command column is cut to this width.
_COMMAND_WIDTH = 60
_INDEX_BITS = 32           # entry indexes are below SS_MAX_CAPACITY (2**24)
_INDEX_MASK = (1 << _INDEX_BITS) - 1
_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1


@dataclass
class PackedSnapshot:
    """A table at one moment, packed (``stat`` None: no table yet)."""

    target: Target
    stat: TableStat | None
    packed: PackedEntries | None
    taken: float
    census: Census
    owners: dict[int, ProcessInfo] = field(default_factory=dict)
    by_region: bool = False   #: packed rows reordered by region (the census does not mind)

    def __len__(self) -> int:
        return 0 if self.packed is None else len(self.packed)


@dataclass
class Census:
    """Entry counts by (pid, alive, kind code, state code):
    ``[entries, count, bytes, first, last, oldest_ns, max_start, max_count]``.

    ``count`` sums the entries' reference counts (a pin's references, 1 per
    lock), ``bytes`` their region sizes, ``first``/``last`` are the lowest
    start and highest end, ``oldest_ns`` the earliest grant (0: unknown);
    ``max_start`` and ``max_count`` size the columns of a listing.
    """

    groups: dict[tuple[int, int, int, int], list[int]] = field(default_factory=dict)

    def summary(self, capacity: int) -> Summary:
        """The table-wide counts (whatever the filters)."""
        entries = waiting = dead = 0
        dead_pids: set[int] = set()
        live_pids: set[int] = set()
        for (pid, alive, kind, state), g in self.groups.items():
            entries += g[0]
            if state == _WAITING:
                waiting += g[0]
            if alive:
                live_pids.add(pid)
            elif kind != _ORPHAN:   # a mark is news to keep, not an entry to reap
                dead += g[0]
                dead_pids.add(pid)
        return Summary(entries=entries, held=entries - waiting, waiting=waiting, capacity=capacity,
                       dead_entries=dead, dead_owners=sorted(dead_pids),
                       live_processes=sorted(live_pids))

    def selected(self, filters: Filters) -> int:
        """How many entries the filters select."""
        return sum(g[0] for key, g in self.groups.items() if filters.admits_group(*key))

    def earliest_live(self) -> dict[int, float]:
        """Each live owner's earliest grant time (seconds), for the psutil look-up."""
        out: dict[int, float] = {}
        for (pid, alive, _kind, _state), g in self.groups.items():
            if alive:
                since = g[5] / 1e9
                out[pid] = min(out.get(pid, since), since)
        return out


def census(packed: PackedEntries | None) -> Census:
    """Count every entry once (the one pass every view of the table starts with)."""
    groups: dict[tuple[int, int, int, int], list[int]] = {}
    if packed is None:
        return Census(groups)
    get = groups.get
    for start, end, since, kind, state, count, pid, _tid, alive in packed.rows():
        key = (pid, alive, kind, state)
        g = get(key)
        if g is None:
            groups[key] = [1, count, end - start, start, end, since, start, count]
            continue
        g[0] += 1
        g[1] += count
        g[2] += end - start
        g[3] = min(g[3], start)
        g[4] = max(g[4], end)
        if since and (since < g[5] or not g[5]):   # 0: time unknown
            g[5] = since
        g[6] = max(g[6], start)
        g[7] = max(g[7], count)
    return Census(groups)


def take_packed_snapshot(target: Target) -> PackedSnapshot:
    """Read the table of ``target`` without creating it or taking any lock."""
    try:
        view = TableView(target.table_path)
    except FileNotFoundError:
        if target.data_path is None:
            raise CommandError(f"{target.table_path}: the lock table no longer exists") from None
        return PackedSnapshot(target, None, None, time.time(), Census())
    try:
        packed = view.packed_entries()
        st = view.stat()
    finally:
        view.close()
    now = time.time()
    counted = census(packed)
    return PackedSnapshot(target, st, packed, now, counted, describe_pids(counted.earliest_live()))


@dataclass(frozen=True)
class Filters:
    """``--pid``, ``--kind``, ``--dead``, ``--waiting``: each selects whole census groups."""

    pids: frozenset[int] | None = None
    kinds: frozenset[int] | None = None   #: kind codes
    dead: bool = False
    waiting: bool = False

    @classmethod
    def of(cls, pids: Sequence[int] | None, kinds: Sequence[str] | None, dead: bool,
           waiting: bool) -> Filters:
        return cls(frozenset(pids) if pids else None,
                   frozenset(_KIND_CODE[k] for k in kinds) if kinds else None, dead, waiting)

    @property
    def any(self) -> bool:
        return self.pids is not None or self.kinds is not None or self.dead or self.waiting

    def admits_group(self, pid: int, alive: int, kind: int, state: int) -> bool:
        return ((self.pids is None or pid in self.pids)
                and (self.kinds is None or kind in self.kinds)
                and (not self.dead or not alive)
                and (not self.waiting or state == _WAITING))


class _Owners:
    """NAME and COMMAND cells (printable), JSON fields: made once per (pid, alive)."""

    def __init__(self, owners: dict[int, ProcessInfo]) -> None:
        self._owners = owners
        self._cells: dict[tuple[int, int], tuple[str, str]] = {}
        self._json: dict[tuple[int, int], str] = {}

    def cells(self, pid: int, alive: int) -> tuple[str, str]:
        key = (pid, alive)
        found = self._cells.get(key)
        if found is None:
            name, command = owner_cells(self._owners.get(pid), bool(alive))
            found = self._cells[key] = (printable(name), printable(command))
        return found

    def json_tail(self, pid: int, alive: int) -> str:
        """The owner fields of an entry's JSON object, without braces."""
        key = (pid, alive)
        found = self._json.get(key)
        if found is None:
            owner = self._owners.get(pid)
            info = owner if alive and owner is not None else ProcessInfo("dead" if not alive else "unknown")
            doc = {"name": info.name, "cmdline": info.cmdline, "username": info.username,
                   "ppid": info.ppid, "process": info.status}
            found = self._json[key] = json.dumps(doc)[1:-1]
        return found


# -- every entry, sorted ----------------------------------------------------------------------

# Sort keys as one int per entry (fields folded high to low, the entry index in the
# low bits): a million of them sort in well under a second and cost ~60 bytes each.
_ALPHA_RANK = {code: rank for rank, code in enumerate(sorted(_KIND_NAME, key=_KIND_NAME.__getitem__))}
_KIND_RANK = {_KIND_CODE[name]: rank for rank, name in enumerate(KINDS)}

_KeyFn = Callable[[int, int, int, int, int, int], int]   # (start, end, since, kind, count, pid)

#: ``--sort`` choices: how each folds an entry into its key.
SORT_KEYS: dict[str, _KeyFn] = {
    # region: (start, end, kind name, pid), as LockManager.locks() orders them
    "region": lambda s, e, t, k, c, p: (((s << 64 | e) << 2 | _ALPHA_RANK.get(k, 3)) << 32) | (p & _U32),
    "pid": lambda s, e, t, k, c, p: ((p & _U32) << 128) | (s << 64) | e,
    "kind": lambda s, e, t, k, c, p: (_KIND_RANK.get(k, 3) << 128) | (s << 64) | e,
    "count": lambda s, e, t, k, c, p: ((_U32 - c) << 128) | (s << 64) | e,   # most references first
    "size": lambda s, e, t, k, c, p: ((_U64 - (e - s)) << 64) | s,            # biggest first
    "held": lambda s, e, t, k, c, p: (t << 64) | s,                           # longest-held first
}


def _listing_order(snap: PackedSnapshot, filters: Filters, sort: str,
                   reverse: bool) -> tuple[Iterable[tuple[int, ...]], int, _ColumnStats]:
    """The selected rows in listing order, how many they are, and their column figures.

    By region (the default) the C core sorts the packed records in place
    (:meth:`PackedEntries.sort_by_region`, once per snapshot) and no key is
    made per entry; any other order builds one int key per selected entry.
    """
    packed = snap.packed
    assert packed is not None
    pick = filters.admits_group if filters.any else None
    if sort == "region":
        if not snap.by_region:
            packed.sort_by_region()
            snap.by_region = True
        if pick is None:
            starts, ends, since_ns = packed.columns()
            lengths, sinces = set(map(operator.sub, ends, starts)), set(since_ns)
            total = len(packed)
            rows = packed.rows_at(range(total - 1, -1, -1)) if reverse else packed.rows()
            return rows, total, _column_stats(snap, filters, lengths, sinces)
        indices: list[int] = []
        lengths, sinces = set(), set()
        for index, (start, end, since, kind, state, _count, pid, _tid, alive) in enumerate(
                packed.rows()):
            if pick(pid, alive, kind, state):
                indices.append(index)
                lengths.add(end - start)
                sinces.add(since)
        if reverse:
            indices.reverse()
        return packed.rows_at(indices), len(indices), _column_stats(snap, filters, lengths, sinces)
    fold = SORT_KEYS[sort]
    keys: list[int] = []
    append = keys.append
    lengths, sinces = set(), set()
    add_length, add_since = lengths.add, sinces.add
    for index, (start, end, since, kind, state, count, pid, _tid, alive) in enumerate(
            packed.rows()):
        if pick is not None and not pick(pid, alive, kind, state):
            continue
        append(fold(start, end, since, kind, count, pid) << _INDEX_BITS | index)
        add_length(end - start)
        add_since(since)
    keys.sort(reverse=reverse)
    return (packed.rows_at(map(_INDEX_MASK.__and__, keys)), len(keys),
            _column_stats(snap, filters, lengths, sinces))


def _column_stats(snap: PackedSnapshot, filters: Filters, lengths: set[int],
                  sinces: set[int]) -> _ColumnStats:
    """Column figures of a listing: the selected groups' from the census, the rest as given."""
    seen = [(key, g) for key, g in snap.census.groups.items() if filters.admits_group(*key)]
    return _ColumnStats(max_start=max((g[6] for _, g in seen), default=0),
                        max_end=max((g[4] for _, g in seen), default=0),
                        max_count=max((g[7] for _, g in seen), default=0),
                        max_pid=max((key[0] for key, _ in seen), default=0),
                        lengths=lengths, sinces=sinces, owners={key for key, _ in seen})


@dataclass
class _ColumnStats:
    """What the column widths of a listing depend on."""

    max_start: int = 0
    max_end: int = 0
    max_count: int = 0
    max_pid: int = 0
    lengths: set[int] = field(default_factory=set)
    sinces: set[int] = field(default_factory=set)
    owners: set[tuple[int, int, int, int]] = field(default_factory=set)   # census keys selected


LOCK_HEADERS = ("START", "END", "SIZE", "KIND", "COUNT", "STATE", "PID", "OWNER", "HELD", "NAME",
                "COMMAND")
_RIGHT = frozenset({0, 1, 2, 4, 6, 8})


def _held(now: float, since_ns: int) -> str:
    return human_duration(now - since_ns / 1e9) if since_ns > 0 else "-"


def write_entry_table(snap: PackedSnapshot, filters: Filters, sort: str, reverse: bool,
                      columns: int | None, wide: bool, out: TextIO) -> int:
    """Every selected entry, one aligned row each (header first), streamed to ``out``; returns how many.

    The rows are exactly what :func:`~shmslice.cli.formatting.render_table`
    would make of them, without holding them all: widths come from the
    sorting pass.
    """
    headers = LOCK_HEADERS
    if snap.packed is None or not len(snap.packed):
        print("  ".join(headers), file=out)
        return 0
    rows, total, stats = _listing_order(snap, filters, sort, reverse)
    owners = _Owners(snap.owners)
    now = snap.taken
    size_cell = {n: human_size(n) for n in stats.lengths}
    held_cell = {t: _held(now, t) for t in stats.sinces}
    seen = stats.owners
    widths = [len(h) for h in headers]
    widths[0] = max(widths[0], len(str(stats.max_start)))
    widths[1] = max(widths[1], len(str(stats.max_end)))
    widths[2] = max([widths[2], *map(len, size_cell.values())])
    widths[3] = max([widths[3], *(len(_KIND_NAME.get(k, "?")) for _, _, k, _ in seen)])
    widths[4] = max(widths[4], len(str(stats.max_count)))
    widths[5] = max([widths[5], *(len("waiting" if s == _WAITING else "held") for *_, s in seen)])
    widths[6] = max(widths[6], len(str(stats.max_pid)))
    widths[7] = max([widths[7], *(5 if a else 4 for _, a, _, _ in seen)])
    widths[8] = max([widths[8], *map(len, held_cell.values())])
    widths[9] = max([widths[9], *(len(owners.cells(p, a)[0]) for p, a, _, _ in seen)])
    last_width: int | None = None
    if not wide:
        if columns is None:
            last_width = _COMMAND_WIDTH
        else:
            used = sum(widths[:10]) + 2 * 9 + 2
            last_width = max(columns - used, 24)

    def line(cells: Sequence[str]) -> str:
        parts = [cell.rjust(widths[i]) if i in _RIGHT else cell.ljust(widths[i])
                 for i, cell in enumerate(cells[:-1])]
        parts.append(cells[-1])
        return "  ".join(parts).rstrip()

    # Per census key (pid, alive, kind, state), the cells that depend on it alone,
    # padded once: a row is then one %-format of its numbers and these pieces.
    pieces: dict[tuple[int, int, int, int], tuple[str, str, str]] = {}
    for pid, alive, kind, state in seen:
        name, command = owners.cells(pid, alive)
        if last_width is not None:
            command = shorten(command, last_width)
        pieces[(pid, alive, kind, state)] = (
            _KIND_NAME.get(kind, "?").ljust(widths[3]) + "  ",
            "  " + ("waiting" if state == _WAITING else "held").ljust(widths[5]) + "  "
            + str(pid).rjust(widths[6]) + "  " + ("alive" if alive else "dead").ljust(widths[7])
            + "  ",
            ("  " + name.ljust(widths[9]) + "  " + command).rstrip())
    template = f"%{widths[0]}d  %{widths[1]}d  %{widths[2]}s  %s%{widths[4]}d%s%{widths[8]}s%s"
    chunk = [line(headers)]
    for start, end, since, kind, state, count, pid, _tid, alive in rows:
        kind_part, middle, tail = pieces[(pid, alive, kind, state)]
        chunk.append(template % (start, end, size_cell[end - start], kind_part, count, middle,
                                 held_cell[since], tail))
        if len(chunk) >= 4096:
            out.write("\n".join(chunk) + "\n")
            chunk.clear()
    if chunk:
        out.write("\n".join(chunk) + "\n")
    return total


def write_entries_json(snap: PackedSnapshot, filters: Filters, sort: str, reverse: bool,
                       out: TextIO, one_line: bool) -> int:
    """The ``"entries": [...]`` member of ``locks --json``, one object per entry, streamed; returns how many."""
    out.write('"entries": [')
    if snap.packed is None:
        out.write("]")
        return 0
    rows, total, _stats = _listing_order(snap, filters, sort, reverse)
    owners = _Owners(snap.owners)
    now = snap.taken
    sep = ", " if one_line else ",\n    "
    lead = "" if one_line else "\n    "   # before the first entry; sep before each later one
    chunk: list[str] = []
    # Per census key, the fields that depend on it alone, made once.
    pieces: dict[tuple[int, int, int, int], tuple[str, str]] = {}
    for pid, alive, kind, state in snap.census.groups:
        waiting = state == _WAITING
        pieces[(pid, alive, kind, state)] = (
            f'"kind": "{_KIND_NAME.get(kind, "?")}", "count": ',
            f', "state": "{"waiting" if waiting else "held"}", '
            f'"waiting": {"true" if waiting else "false"}, "pid": {pid}, "tid": ')
    tails = {(pid, alive): f', "alive": {"true" if alive else "false"}, '
             for pid, alive, _kind, _state in snap.census.groups}
    time_fields: dict[int, str] = {}
    for start, end, since, kind, state, count, pid, tid, alive in rows:
        kind_part, middle = pieces[(pid, alive, kind, state)]
        times = time_fields.get(since)
        if times is None:
            if since > 0:
                t = since / 1e9
                times = f'"since": {t!r}, "held_seconds": {round(now - t, 3)!r}'
            else:
                times = '"since": null, "held_seconds": null'
            time_fields[since] = times   # grant times repeat: the clock is coarse
        chunk.append(f'{{"start": {start}, "end": {end}, "length": {end - start}, {kind_part}'
                     f'{count}{middle}{tid}{tails[(pid, alive)]}{times}, '
                     f'{owners.json_tail(pid, alive)}}}')
        if len(chunk) >= 4096:
            out.write(lead + sep.join(chunk))
            lead = sep
            chunk.clear()
    if chunk:
        out.write(lead + sep.join(chunk))
    out.write("]" if one_line or not total else "\n  ]")
    return total


# -- groups -----------------------------------------------------------------------------------

@dataclass
class GroupTable:
    """A grouped view: headers, right-aligned columns, rows (most entries first), JSON records."""

    by: str        #: the grouping asked for: "pid+kind", "pid", "kind" or "region"
    title: str
    headers: tuple[str, ...]
    right: frozenset[int]
    rows: list[list[str]]
    records: list[dict[str, Any]]
    total: int   #: groups in all (rows may hold only the first ones)


_PID_COLUMN = {_KIND_CODE["shared"]: 1, _KIND_CODE["exclusive"]: 2}


def _earliest(a: int, b: int) -> int:
    """The earlier of two grant times, 0 meaning unknown."""
    return b if a == 0 else a if b == 0 else min(a, b)


def _oldest(now: float, since_ns: int) -> str:
    return _held(now, since_ns) if since_ns > 0 else "-"


def group_table(snap: PackedSnapshot, by: str, filters: Filters, limit: int | None) -> GroupTable:
    """Group the selected entries ``by`` ``"pid+kind"`` (the default summary), ``"pid"``, ``"kind"`` or ``"region"``.

    Groups come most entries first; ``limit`` keeps only that many rows (the
    records too), ``total`` says how many there were.
    """
    owners = _Owners(snap.owners)
    now = snap.taken
    selected = [(key, g) for key, g in snap.census.groups.items() if filters.admits_group(*key)]
    if by == "region":
        return _region_table(snap, filters, limit, now)
    merged: dict[tuple[int, ...], list[int]] = {}
    if by == "pid+kind":
        for (pid, alive, kind, state), g in selected:
            merged[(pid, alive, kind, state)] = list(g)
    elif by == "pid":
        for (pid, alive, kind, state), g in selected:
            # entries, shared, exclusive, pins, waiting, bytes, oldest
            m = merged.setdefault((pid, alive), [0, 0, 0, 0, 0, 0, 0])
            m[0] += g[0]
            m[_PID_COLUMN.get(kind, 3)] += g[0]
            if state == _WAITING:
                m[4] += g[0]
            m[5] += g[2]
            m[6] = _earliest(m[6], g[5])
    elif by == "kind":
        pids: dict[tuple[int, ...], set[int]] = {}
        for (pid, _alive, kind, state), g in selected:
            known = merged.get((kind, state))
            if known is None:
                merged[(kind, state)] = list(g)
            else:
                known[0] += g[0]
                known[1] += g[1]
                known[2] += g[2]
                known[3] = min(known[3], g[3])
                known[4] = max(known[4], g[4])
                known[5] = _earliest(known[5], g[5])
            pids.setdefault((kind, state), set()).add(pid)
    else:
        raise ValueError(f"unknown grouping {by!r}")
    order = sorted(merged, key=lambda k: (-merged[k][0], k))
    total = len(order)
    if limit is not None:
        order = order[:limit]
    rows: list[list[str]] = []
    records: list[dict[str, Any]] = []
    for k in order:
        m = merged[k]
        if by == "pid+kind":
            pid, alive, kind, state = k
            name, command = owners.cells(pid, alive)
            kind_name = _KIND_NAME.get(kind, "?")
            state_name = "waiting" if state == _WAITING else "held"
            rows.append([str(pid), "alive" if alive else "dead", kind_name, state_name, str(m[0]),
                         str(m[1]), human_size(m[2]), str(m[3]), str(m[4]), _oldest(now, m[5]),
                         name, command])
            records.append({"pid": pid, "alive": bool(alive), "kind": kind_name,
                            "state": state_name, "entries": m[0], "count": m[1], "bytes": m[2],
                            "first": m[3], "last": m[4], "oldest_seconds": _age(now, m[5]),
                            **_owner_doc(owners, pid, alive)})
        elif by == "pid":
            pid, alive = k
            name, command = owners.cells(pid, alive)
            rows.append([str(pid), "alive" if alive else "dead", str(m[0]), str(m[1]), str(m[2]),
                         str(m[3]), str(m[4]), human_size(m[5]), _oldest(now, m[6]), name,
                         command])
            records.append({"pid": pid, "alive": bool(alive), "entries": m[0], "shared": m[1],
                            "exclusive": m[2], "pins": m[3], "waiting": m[4], "bytes": m[5],
                            "oldest_seconds": _age(now, m[6]), **_owner_doc(owners, pid, alive)})
        else:
            kind, state = k
            kind_name = _KIND_NAME.get(kind, "?")
            state_name = "waiting" if state == _WAITING else "held"
            procs = len(pids[k])
            rows.append([kind_name, state_name, str(m[0]), str(m[1]), str(procs),
                         human_size(m[2]), str(m[3]), str(m[4]), _oldest(now, m[5])])
            records.append({"kind": kind_name, "state": state_name, "entries": m[0],
                            "count": m[1], "processes": procs, "bytes": m[2], "first": m[3],
                            "last": m[4], "oldest_seconds": _age(now, m[5])})
    if by == "pid+kind":
        return GroupTable(by, "process and kind",
                          ("PID", "OWNER", "KIND", "STATE", "ENTRIES", "COUNT", "BYTES", "FIRST",
                           "LAST", "OLDEST", "NAME", "COMMAND"),
                          frozenset({0, 4, 5, 6, 7, 8, 9}), rows, records, total)
    if by == "pid":
        return GroupTable(by, "process",
                          ("PID", "OWNER", "ENTRIES", "SHARED", "EXCLUSIVE", "PINS", "WAITING",
                           "BYTES", "OLDEST", "NAME", "COMMAND"),
                          frozenset({0, 2, 3, 4, 5, 6, 7, 8}), rows, records, total)
    return GroupTable(by, "kind",
                      ("KIND", "STATE", "ENTRIES", "COUNT", "PROCS", "BYTES", "FIRST", "LAST",
                       "OLDEST"),
                      frozenset({2, 3, 4, 5, 6, 7, 8}), rows, records, total)


def _age(now: float, since_ns: int) -> float | None:
    return round(now - since_ns / 1e9, 3) if since_ns > 0 else None


def _owner_doc(owners: _Owners, pid: int, alive: int) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads("{" + owners.json_tail(pid, alive) + "}")
    return doc


def _region_table(snap: PackedSnapshot, filters: Filters, limit: int | None,
                  now: float) -> GroupTable:
    """Group by region [start, end): one more pass over the entries."""
    regions: dict[tuple[int, int], list[Any]] = {}
    shared, exclusive = _KIND_CODE["shared"], _KIND_CODE["exclusive"]
    if snap.packed is not None:
        pick = filters.admits_group if filters.any else None
        get = regions.get
        for start, end, since, kind, state, _count, pid, _tid, alive in snap.packed.rows():
            if pick is not None and not pick(pid, alive, kind, state):
                continue
            r = get((start, end))
            if r is None:
                r = regions[(start, end)] = [0, 0, 0, 0, 0, since, {pid}]
            else:
                r[6].add(pid)
                r[5] = min(r[5], since)
            r[0] += 1
            r[1 if kind == shared else 2 if kind == exclusive else 3] += 1
            if state == _WAITING:
                r[4] += 1
    order = sorted(regions, key=lambda k: (-regions[k][0], k))
    total = len(order)
    if limit is not None:
        order = order[:limit]
    rows: list[list[str]] = []
    records: list[dict[str, Any]] = []
    for start, end in order:
        n, sh, ex, pins, waiting, oldest, pids = regions[(start, end)]
        rows.append([str(start), str(end), human_size(end - start), str(n), str(sh), str(ex),
                     str(pins), str(waiting), str(len(pids)), _oldest(now, oldest)])
        records.append({"start": start, "end": end, "length": end - start, "entries": n,
                        "shared": sh, "exclusive": ex, "pins": pins, "waiting": waiting,
                        "processes": len(pids), "oldest_seconds": _age(now, oldest)})
    return GroupTable("region", "region",
                      ("START", "END", "SIZE", "ENTRIES", "SHARED", "EXCLUSIVE", "PINS", "WAITING",
                       "PROCS", "OLDEST"),
                      frozenset(range(10)), rows, records, total)


def render_groups(table: GroupTable, columns: int | None, wide: bool) -> list[str]:
    """The aligned lines of a grouped view, the command column fitted to ``columns``."""
    last_width = None
    if not wide and table.headers[-1] == "COMMAND":
        if columns is None:
            last_width = _COMMAND_WIDTH
        else:
            others = render_table(table.headers[:-1], [r[:-1] for r in table.rows])
            last_width = max(columns - max(len(line) for line in others) - 2, 24)
    return render_table(table.headers, table.rows, table.right, last_width)


def write_groups_json(table: GroupTable, out: TextIO) -> None:
    """The ``"groups"`` member of ``locks --json --group-by``."""
    out.write(f'"group_by": {json.dumps(table.by)}, "groups": {json.dumps(table.records)}, '
              f'"groups_total": {table.total}')

