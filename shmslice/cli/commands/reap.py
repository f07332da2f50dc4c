"""``shmslice reap PATH`` / ``shmslice reap --all``: remove the entries dead processes left behind."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from shmslice.cli.arguments import Parser, Subcommands
from shmslice.cli.errors import CommandError, describe_error, error_line
from shmslice.cli.formatting import plural, printable
from shmslice.cli.tablefiles import list_tables, lock_directory, no_table_message, resolve_target
from shmslice.errors import ShmSliceError
from shmslice.locks import TableView

__all__ = ["register", "run"]


def _reap_table(table: str) -> dict[str, Any]:
    with TableView(table) as view:
        removed = view.reap()
        st = view.stat()
    return {"table": table, "data_path": st.data_path, "removed": removed, "remaining": st.used}


def run(args: argparse.Namespace) -> int:
    """``shmslice reap PATH`` / ``shmslice reap --all``."""
    results: list[dict[str, Any]] = []
    skipped: list[str] = []
    failures: list[str] = []
    if args.all:
        directory = lock_directory(args.lock_dir)
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
            raise CommandError(no_table_message(target)) from None
        result["path"] = target.given
        results.append(result)
    total = sum(r["removed"] for r in results)
    if args.json:
        print(json.dumps({"removed": total, "tables": results, "skipped": skipped,
                          "errors": failures}, indent=2))
    else:
        for r in results:
            name = r.get("path") or r["data_path"] or r["table"]
            print(f"{printable(name)}: removed {plural(r['removed'], 'dead entry', 'dead entries')}, "
                  f"{r['remaining']} remaining")
        for table in skipped:
            print(f"{printable(table)}: skipped (no permission to open it)")
        if args.all:
            print(f"removed {plural(total, 'dead entry', 'dead entries')} from "
                  f"{plural(len(results), 'lock table')}"
                  + (f"; skipped {len(skipped)} of other users" if skipped else ""))
    for failure in failures:
        error_line("reap", failure)
    return 1 if failures else 0


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """PATH or --all, exactly one (a usage error otherwise)."""
    if args.all and args.path:
        parser.error("give PATH or --all, not both")
    if not args.all and not args.path:
        parser.error("give PATH, or --all for every table")


def register(sub: Subcommands, parents: Sequence[Parser]) -> None:
    """Add ``reap`` to the ``shmslice`` parser."""
    p = sub.add_parser(
        "reap", parents=list(parents), help="remove entries of dead processes",
        description="Remove the entries that dead processes left in a table and print how many.")
    p.add_argument("path", metavar="PATH", nargs="?", help="data file (or lock table file)")
    p.add_argument("--all", action="store_true", help="reap every table in the lock directory")
    p.set_defaults(func=run, check=_check_args)
