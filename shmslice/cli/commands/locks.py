"""``shmslice locks PATH``: a file's lock table, one row per lock, pin or waiting request -- or,
when there are more rows than fit, a summary by process and kind.

Works on tables of any size: the snapshot stays packed and the rows are
streamed (see :mod:`shmslice.cli.listing`).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import select
import signal
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from shmslice.cli.arguments import Parser, Subcommands, positive_float, positive_int
from shmslice.cli.formatting import printable, terminal_columns, terminal_lines
from shmslice.cli.listing import (
    GROUPINGS,
    KINDS,
    SORT_KEYS,
    Filters,
    PackedSnapshot,
    group_table,
    render_groups,
    take_packed_snapshot,
    write_entries_json,
    write_entry_table,
    write_groups_json,
)
from shmslice.cli.snapshots import summary_line
from shmslice.cli.tablefiles import resolve_target

__all__ = ["PLAIN_ROWS", "register", "render_locks", "run", "write_locks"]

#: Without a terminal, more entries than this are summarized (unless --all or --json).
PLAIN_ROWS = 1000


def _row_budget(args: argparse.Namespace, out: TextIO) -> int | None:
    """How many rows fit: the terminal's height less the lines around the table, else PLAIN_ROWS."""
    if args.all:
        return None
    if args.max_rows is not None:
        return int(args.max_rows)
    lines = terminal_lines(out)
    return PLAIN_ROWS if lines is None else max(lines - 4, 5)


def write_locks(snap: PackedSnapshot, args: argparse.Namespace, columns: int | None,
                out: TextIO, budget: int | None) -> None:
    """One frame of ``shmslice locks`` to ``out``: rows, groups or one JSON document."""
    filters = Filters.of(args.pid, args.kind, args.dead, args.waiting)
    exists = snap.stat is not None
    summary = snap.census.summary(snap.stat.max_capacity if snap.stat else 0)   # the ceiling
    selected = snap.census.selected(filters)
    grouping = args.group_by
    if args.json:
        # Streamed: the head, then the entries as they are made, then the summary.
        # --watch prints one document per line (JSON Lines) so a reader can stream it.
        one_line = args.watch is not None
        head = {"path": snap.target.given, "data_path": snap.target.data_path,
                "table": snap.target.table_path if exists else None, "time": snap.taken}
        between = ", " if one_line else ",\n  "
        out.write((json.dumps(head)[:-1] if one_line else json.dumps(head, indent=2)[:-2])
                  + between)
        if grouping:
            write_groups_json(group_table(snap, grouping, filters, None), out)
        else:
            write_entries_json(snap, filters, args.sort, args.reverse, out, one_line)
        out.write(between + '"summary": ' + json.dumps(summary.as_dict(selected, exists))
                  + ("}" if one_line else "\n}"))
        return
    if grouping is None and budget is not None and selected > budget:
        grouping = "pid+kind"
    if grouping is None:
        write_entry_table(snap, filters, args.sort, args.reverse, columns, args.wide, out)
        print(summary_line(summary, selected, snap.target, exists), file=out)
        return
    table = group_table(snap, grouping, filters, budget)
    for line in render_groups(table, columns, args.wide):
        print(line, file=out)
    print(summary_line(summary, selected, snap.target, exists), file=out)
    shown = len(table.rows)
    more = f"; the first {shown} of {table.total} groups" if shown < table.total else ""
    why = "" if args.group_by else f" (more than the {budget} rows that fit)"
    print(f"grouped by {table.title}{more}{why}: --all lists every group or entry, "
          f"--group-by {'|'.join(GROUPINGS)} groups otherwise, --json gives every entry",
          file=out)


def render_locks(snap: PackedSnapshot, args: argparse.Namespace, columns: int | None,
                 budget: int | None = None) -> str:
    """One frame as a string (for ``--watch``, which draws a frame in one write)."""
    buf = io.StringIO()
    write_locks(snap, args, columns, buf, budget)
    return buf.getvalue().rstrip("\n")


def run(args: argparse.Namespace) -> int:
    """``shmslice locks PATH``."""
    target = resolve_target(args.path, args.lock_dir)
    out = sys.stdout
    columns = terminal_columns(out)
    if args.watch is None:
        write_locks(take_packed_snapshot(target), args, columns, out, _row_budget(args, out))
        if args.json:
            out.write("\n")
        return 0
    redraw = columns is not None and not args.json
    with _InterruptFlag() as interrupted:
        next_frame = time.monotonic()
        while not interrupted.is_set():
            budget = _row_budget(args, out)
            if redraw and budget is not None and args.max_rows is None:
                budget = max(budget - 2, 5)   # the "Every ..." line and the blank line under it
            frame = render_locks(take_packed_snapshot(target), args, terminal_columns(out),
                                 budget)
            if redraw:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                # Clear and draw in one write, so the screen never shows half a frame.
                out.write(f"\x1b[H\x1b[2JEvery {args.watch:g}s: shmslice locks {printable(args.path)}"
                          f"    {stamp}\n\n{frame}\n")
            else:
                out.write(frame + ("\n" if args.json else "\n\n"))
            out.flush()
            next_frame += args.watch
            # Sleep to a fixed schedule; if a frame took longer than the interval, restart it.
            delay = next_frame - time.monotonic()
            if delay < 0:
                next_frame, delay = time.monotonic(), 0.0
            interrupted.wait(delay)
    # Ctrl-C is how --watch is meant to end: a normal exit, on a fresh line.
    if redraw:
        out.write("\n")
    return 0


class _InterruptFlag:
    """SIGINT as a flag for ``--watch``, instead of a KeyboardInterrupt.

    An exception raised by a signal can land anywhere -- inside a ``__del__``
    or a weakref callback, where Python prints and drops it, and the loop
    would go on forever.  A flag cannot be lost; the wakeup descriptor ends
    the sleep between frames at once.
    """

    def __enter__(self) -> _InterruptFlag:
        self._set = False
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._old_fd = signal.set_wakeup_fd(self._w)
        self._old_handler = signal.signal(signal.SIGINT, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: object) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or until SIGINT arrives."""
        if not self._set:
            select.select([self._r], [], [], seconds)

    def __exit__(self, *exc_info: object) -> None:
        signal.signal(signal.SIGINT, self._old_handler)
        signal.set_wakeup_fd(self._old_fd)
        os.close(self._r)
        os.close(self._w)


def register(sub: Subcommands, parents: Sequence[Parser]) -> None:
    """Add ``locks`` to the ``shmslice`` parser."""
    p = sub.add_parser(
        "locks", parents=list(parents), help="show a file's locks and pins",
        description="Show the lock table of a data file: one row per lock, pin or waiting "
                    "request, with its owner; when there are more rows than fit (the terminal's "
                    f"height, or {PLAIN_ROWS} lines without a terminal), a summary by process "
                    "and kind instead (--all: every row; --json: every entry, streamed). PATH "
                    "may also be a table file as 'shmslice ls' lists it. A file no process has "
                    "opened through shmslice has an empty table.",
        epilog="Columns: START, END: the region [START, END) in bytes; KIND: shared, exclusive "
               "or pin; COUNT: references of a pin (a lock: 1); STATE: held or waiting; OWNER: "
               "alive, or dead (its entries stay until reaped, by 'shmslice reap' or by a process "
               "waiting on them); HELD: time since the "
               "entry was granted (waiting: since it was queued); NAME, COMMAND: the owner "
               "process, as far as this user may see it.")
    p.add_argument("path", metavar="PATH", help="data file (or lock table file)")
    p.add_argument("--watch", metavar="SECONDS", type=positive_float,
                   help="redraw every SECONDS until Ctrl-C (with --json: one JSON document per line)")
    p.add_argument("--pid", type=int, action="append", metavar="PID",
                   help="only entries of this process (repeatable)")
    p.add_argument("--kind", action="append", choices=KINDS,
                   help="only entries of this kind (repeatable)")
    p.add_argument("--dead", action="store_true", help="only entries of dead owners")
    p.add_argument("--waiting", action="store_true", help="only requests still waiting")
    p.add_argument("--sort", choices=sorted(SORT_KEYS), default="region",
                   help="order of the rows (default: region; held = longest-held first)")
    p.add_argument("-r", "--reverse", action="store_true", help="reverse the order")
    p.add_argument("-w", "--wide", action="store_true", help="do not shorten command lines")
    p.add_argument("--group-by", choices=GROUPINGS,
                   help="one row per process, per kind and state, or per region, with counts")
    p.add_argument("--all", action="store_true",
                   help="list every entry (or every group), however many")
    p.add_argument("--max-rows", type=positive_int, metavar="N",
                   help=f"summarize when more than N rows (default: what fits the terminal, "
                        f"else {PLAIN_ROWS})")
    p.set_defaults(func=run)
