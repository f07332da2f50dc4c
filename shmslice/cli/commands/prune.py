"""``shmslice prune``: remove the lock tables no process is attached to, and what killed creators left.

Which tables: every table no live process is attached to (so it holds no
live entries), whether its data file still exists or not.  Such a table
holds nothing a future process needs -- the entries left in it are dead
processes' -- and the next process to open its file makes a new one (in well
under a millisecond), so keeping it only costs memory.  ``--missing-only``
keeps the tables of data files that still exist, for a periodic job on a
machine where re-creating the tables of busy files matters.

Removal is safe against processes attaching at the same moment: the C core
removes a table only while holding its guard exclusively, which no attached
process lets it take, and an attacher that opened a table being removed
notices and makes a new one.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any

from shmslice import _binding
from shmslice.cli.arguments import Parser, Subcommands
from shmslice.cli.errors import describe_error, error_line
from shmslice.cli.formatting import human_size, plural, printable
from shmslice.cli.tablefiles import data_file_status, list_tables, lock_directory
from shmslice.errors import ShmSliceError
from shmslice.locks import TableView

__all__ = ["prune_directory", "register", "run"]


def _prune_table(table: str, dry_run: bool, missing_only: bool) -> dict[str, Any] | None:
    """Remove ``table`` if it is unused; its record (``removed`` says what happened), or None if it vanished."""
    try:
        view = TableView(table)
    except FileNotFoundError:
        return None
    try:
        st = view.stat()
        status = data_file_status(table, st.data_path)
        record: dict[str, Any] = {"table": table, "data_path": st.data_path, "data_status": status,
                                  "entries": st.used, "bytes": 0, "removed": False}
        if missing_only and status == "ok":
            record["reason"] = "data file exists"
            return record
        try:
            freed = view.remove(dry_run=dry_run)
        except FileNotFoundError:
            return None   # another process removed it first
        if freed is None:
            record["reason"] = "in use"
        else:
            record.update(removed=True, bytes=freed)
        return record
    finally:
        view.close()


def prune_directory(directory: str, *, dry_run: bool = False,
                    missing_only: bool = False) -> dict[str, Any]:
    """Prune every table in ``directory``; the document ``prune --json`` prints."""
    removed: list[dict[str, Any]] = []
    kept: list[dict[str, Any]] = []
    skipped: list[str] = []
    failures: list[str] = []
    for table in list_tables(directory):
        try:
            record = _prune_table(table, dry_run, missing_only)
        except ShmSliceError as err:   # corrupt, or unsafe (a PermissionError too)
            failures.append(f"{table}: {describe_error(err)}")
            continue
        except PermissionError:
            skipped.append(table)   # another user's table: theirs to prune
            continue
        except OSError as err:
            failures.append(f"{table}: {describe_error(err)}")
            continue
        if record is not None:
            (removed if record["removed"] else kept).append(record)
    temp_files = None
    if not dry_run and os.path.isdir(directory):
        try:
            temp_files = _binding.clean_temp_files(directory)
        except (ShmSliceError, OSError) as err:
            failures.append(f"{directory}: {describe_error(err)}")
    return {"lock_dir": directory, "dry_run": dry_run, "missing_only": missing_only,
            "removed": len(removed), "freed_bytes": sum(r["bytes"] for r in removed),
            "kept": len(kept), "temp_files_removed": temp_files,
            "tables": removed + kept, "skipped": skipped, "errors": failures}


def run(args: argparse.Namespace) -> int:
    """``shmslice prune``."""
    directory = lock_directory(args.lock_dir)
    doc = prune_directory(directory, dry_run=args.dry_run, missing_only=args.missing_only)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        verb = "would remove" if args.dry_run else "removed"
        for r in doc["tables"]:
            shown = r["data_path"] + ("" if r["data_status"] == "ok" else f" ({r['data_status']})")
            name = os.path.basename(r["table"])
            if r["removed"]:
                print(f"{verb} {name}: {printable(shown)}, {human_size(r['bytes'])}")
            else:
                print(f"kept {name}: {printable(shown)} ({r['reason']})")
        for table in doc["skipped"]:
            print(f"skipped {printable(os.path.basename(table))} (another user's table)")
        line = (f"{verb} {plural(doc['removed'], 'lock table')}, "
                f"{'would free' if args.dry_run else 'freed'} {human_size(doc['freed_bytes'])}; "
                f"kept {doc['kept']}")
        if doc["temp_files_removed"]:
            line += f"; removed {plural(doc['temp_files_removed'], 'stale temporary file')}"
        print(f"{line} (in {directory})")
    for failure in doc["errors"]:
        error_line("prune", failure)
    return 1 if doc["errors"] else 0


def register(sub: Subcommands, parents: Sequence[Parser]) -> None:
    """Add ``prune`` to the ``shmslice`` parser."""
    p = sub.add_parser(
        "prune", parents=list(parents), help="remove lock tables no process uses",
        description="Remove every lock table no live process is attached to (so it holds no live "
                    "entries), and the temporary files of table creators that were killed; print "
                    "how many tables were removed and how much memory that freed. Safe while "
                    "other processes open the same files: they get a new table.")
    p.add_argument("--dry-run", action="store_true",
                   help="only say what would be removed")
    p.add_argument("--missing-only", action="store_true",
                   help="only tables whose data file was deleted, renamed or replaced")
    p.set_defaults(func=run)
