"""``shmslice locks PATH``: a file's lock table, one row per lock, pin or waiting request."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from shmslice.cli.arguments import Parser, Subcommands, positive_float
from shmslice.cli.formatting import printable, terminal_columns
from shmslice.cli.snapshots import (
    Snapshot,
    entry_dict,
    format_lock_table,
    summarize,
    summary_line,
    take_snapshot,
)
from shmslice.cli.tablefiles import resolve_target
from shmslice.locks import LockInfo

__all__ = ["register", "render_locks", "run"]

_KINDS = ("shared", "exclusive", "pin")

_SORT_KEYS: dict[str, Callable[[LockInfo], Any]] = {
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


def run(args: argparse.Namespace) -> int:
    """``shmslice locks PATH``."""
    target = resolve_target(args.path, args.lock_dir)
    out = sys.stdout
    columns = terminal_columns(out)
    if args.watch is None:
        print(render_locks(take_snapshot(target), args, columns), file=out)
        return 0
    redraw = columns is not None and not args.json
    try:
        next_frame = time.monotonic()
        while True:
            frame = render_locks(take_snapshot(target), args, terminal_columns(out))
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
            time.sleep(delay)
    except KeyboardInterrupt:
        # Ctrl-C is how --watch is meant to end: a normal exit, on a fresh line.
        if redraw:
            out.write("\n")
        return 0


def register(sub: Subcommands, parents: Sequence[Parser]) -> None:
    """Add ``locks`` to the ``shmslice`` parser."""
    p = sub.add_parser(
        "locks", parents=list(parents), help="show a file's locks and pins",
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
    p.add_argument("--watch", metavar="SECONDS", type=positive_float,
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
    p.set_defaults(func=run)
