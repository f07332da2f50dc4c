"""``shmslice info PATH``: file size, table location, format, capacity, ceiling and use."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence

from shmslice.cli.arguments import Parser, Subcommands
from shmslice.cli.errors import CommandError
from shmslice.cli.formatting import human_duration, human_size, printable
from shmslice.cli.owners import describe_process
from shmslice.cli.tablefiles import data_file_status, no_table_message, resolve_target
from shmslice.locks import TableView
from shmslice.records import Holder

#: processes listed by name in the text output (the JSON lists every one)
_TOP_HOLDERS = 5

__all__ = ["register", "run"]


def _format_time(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))


def run(args: argparse.Namespace) -> int:
    """``shmslice info PATH``."""
    target = resolve_target(args.path, args.lock_dir)
    try:
        view = TableView(target.table_path)
    except FileNotFoundError:
        raise CommandError(no_table_message(target)) from None
    try:
        st = view.stat()   # per-process counts come with it: no pass over the entries
    finally:
        view.close()
    data_path = target.data_path or st.data_path
    status = data_file_status(target.table_path, data_path)
    try:
        current_size: int | None = os.stat(data_path).st_size if status == "ok" else None
    except OSError:
        current_size = None
    dead = sum(h.entries for h in st.holders if not h.alive)
    doc = {
        "data_path": data_path, "data_status": status, "file_size": current_size,
        "recorded_file_size": st.file_size, "table": st.table_path,
        "table_bytes": st.table_bytes, "allocated_bytes": st.allocated_bytes,
        "format": st.format, "format_version": st.format >> 48,
        "created": st.created, "capacity": st.capacity, "max_capacity": st.max_capacity,
        "ceiling_source": st.ceiling_source, "reserve": st.reserve, "growths": st.growths,
        "used": st.used, "entries": st.used,
        "waiting": st.waiting, "dead_entries": dead, "proc_capacity": st.proc_capacity,
        "max_procs": st.max_procs, "attached_processes": st.procs, "repairs": st.repairs,
        "holders": [{"pid": h.pid, "entries": h.entries, "alive": h.alive,
                     "attached": h.attached} for h in st.holders],
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    size = human_size(current_size) if current_size is not None else f"unknown ({status})"
    if current_size is not None:
        size += f" ({current_size} bytes)"
    if current_size is not None and current_size != st.file_size:
        size += f"; last set through shmslice: {human_size(st.file_size)}"
    pct = 100.0 * st.used / st.max_capacity if st.max_capacity else 0.0
    ceiling = {"given": "set at creation", "default": "the default",
               "filesystem": "what the lock directory's filesystem had room for"}
    rows = [
        ("data file", data_path + ("" if status == "ok" else f" ({status})")),
        ("file size", size),
        ("lock table", f"{st.table_path} ({human_size(st.allocated_bytes)} of memory)"),
        ("format", f"version {st.format >> 48} (stamp {st.format:#x})"),
        ("created", f"{_format_time(st.created)} ({human_duration(time.time() - st.created)} ago)"),
        ("entries", (f"{st.used} of {st.max_capacity} used ({pct:.2f}%), {st.waiting} waiting, "
                     f"{dead} left by dead owners")),
        ("capacity", (f"{st.capacity} entries allocated, growing on demand to "
                      f"{st.max_capacity} ({ceiling.get(st.ceiling_source, st.ceiling_source)}); "
                      f"one process may hold {st.max_capacity - st.reserve}")),
        ("processes", f"{st.procs} attached ({st.proc_capacity} slots allocated, at most "
                      f"{st.max_procs})"),
        ("holders", _holders_text(st.holders)),
        ("repairs", f"{st.repairs} (times the table was repaired after a holder died)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {printable(value)}")
    return 0



def _holders_text(holders: Sequence[Holder]) -> str:
    """The processes holding the most entries: "pid 12 (python3) 1000 entries, ..."."""
    shown = [h for h in holders if h.entries][:_TOP_HOLDERS]
    if not shown:
        return "none"
    parts = []
    for h in shown:
        name = describe_process(h.pid, h.attached).name if h.alive else None
        parts.append(f"pid {h.pid} ({name or 'exited'}) {h.entries} entries")
    rest = sum(1 for h in holders if h.entries) - len(shown)
    return ", ".join(parts) + (f", and {rest} more" if rest > 0 else "")


def register(sub: Subcommands, parents: Sequence[Parser]) -> None:
    """Add ``info`` to the ``shmslice`` parser."""
    p = sub.add_parser(
        "info", parents=list(parents), help="show a table's figures",
        description="File size, table location and size, format version, capacity and use.")
    p.add_argument("path", metavar="PATH", help="data file (or lock table file)")
    p.set_defaults(func=run)
