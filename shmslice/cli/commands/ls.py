"""``shmslice ls``: every lock table in the lock directory."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any

from shmslice.cli.arguments import Parser, Subcommands
from shmslice.cli.errors import describe_error, error_line
from shmslice.cli.formatting import human_size, plural, render_table
from shmslice.cli.tablefiles import data_file_status, list_tables, lock_directory, table_footprint
from shmslice.errors import ShmSliceError
from shmslice.locks import TableView

__all__ = ["register", "run"]


def run(args: argparse.Namespace) -> int:
    """``shmslice ls``."""
    directory = lock_directory(args.lock_dir)
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
        footprint = table_footprint(table)
        if footprint is None:
            continue   # removed while we read it
        records.append({
            "table": table, "readable": True, "data_path": st.data_path,
            "data_status": data_file_status(table, st.data_path),
            "file_size": st.file_size, "entries": len(entries),
            "waiting": sum(1 for e in entries if e.waiting),
            "dead_entries": sum(1 for e in entries if not e.alive and e.kind != "orphaned"),
            "live_processes": len(live), "live_pids": live,
            "attached_processes": st.procs, "capacity": st.capacity,
            "table_bytes": footprint[0], "allocated_bytes": footprint[1],
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
                rows.append(["? (no permission to read this table)", "?", "?", "?", "?", "?", "?",
                             os.path.basename(r["table"])])
                continue
            shown_path = r["data_path"]
            if r["data_status"] != "ok":
                shown_path += f" ({r['data_status']})"
            rows.append([shown_path, human_size(r["file_size"]), str(r["entries"]),
                         str(r["waiting"]), str(r["dead_entries"]), str(r["live_processes"]),
                         human_size(r["allocated_bytes"]), os.path.basename(r["table"])])
        lines = render_table(("DATA FILE", "SIZE", "ENTRIES", "WAITING", "DEAD", "PROCS", "MEMORY",
                              "TABLE"), rows, frozenset({1, 2, 3, 4, 5, 6}))
        print("\n".join(lines))
        memory = sum(r.get("allocated_bytes", 0) for r in records)
        print(f"{plural(len(records), 'lock table')} in {directory}, using {human_size(memory)}")
    for failure in failures:
        error_line("ls", failure)
    return 1 if failures else 0


def register(sub: Subcommands, parents: Sequence[Parser]) -> None:
    """Add ``ls`` to the ``shmslice`` parser."""
    p = sub.add_parser(
        "ls", parents=list(parents), help="list every lock table",
        description="List every lock table in the lock directory: data file, size, entries, "
                    "waiters, dead owners' entries, live owner processes and the memory the "
                    "table occupies (its allocated bytes). A data file that was deleted or "
                    "renamed since its table was made is marked; 'shmslice prune' removes the "
                    "tables no process uses.")
    p.set_defaults(func=run)
