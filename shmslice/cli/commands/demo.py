"""``shmslice demo``: run the main job on a demo file; say how fast it went and whether every byte arrived."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Sequence
from typing import Any, TextIO

from shmslice._paths import resolve_lock_dir
from shmslice.cli.arguments import Parser, Subcommands, positive_int, size_arg
from shmslice.cli.errors import PROG, CommandError, describe_error, error_line
from shmslice.cli.formatting import human_size, plural, terminal_columns
from shmslice.cli.snapshots import entry_dict, format_lock_table, summarize, summary_line
from shmslice.cli.workload import (
    DEFAULT_SIZE,
    DemoResult,
    Progress,
    default_chunk,
    default_workers,
    run_demo,
)
from shmslice.errors import ShmSliceError
from shmslice.locks import TableView, table_path_for

__all__ = ["register", "run"]


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
    columns = terminal_columns(out)
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


def run(args: argparse.Namespace) -> int:
    """``shmslice demo``."""
    size: int = args.size
    workers: int = args.workers or default_workers()
    chunk: int = args.chunk or default_chunk(size, workers)
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
        progress = Progress(out, enabled=not args.json)
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
        error_line("demo", f"verification failed: {_bad_slices(result)}")
        return 1
    return 0


def register(sub: Subcommands, parents: Sequence[Parser]) -> None:
    """Add ``demo`` to the ``shmslice`` parser."""
    p = sub.add_parser(
        "demo", parents=list(parents), help="run the main job on a demo file",
        description="Create a file (in a temporary directory unless --path), split it into "
                    "slices, let a pool of worker processes lock, write and checksum them while "
                    "the lock counts are shown live, verify every byte, print throughput. "
                    "Exits 1 if verification fails.")
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help=f"worker processes (default: CPUs, 2 to 8; here {default_workers()})")
    p.add_argument("--size", type=size_arg, default=DEFAULT_SIZE, metavar="SIZE",
                   help="file size, e.g. 64M or 1GiB (default: 256MiB)")
    p.add_argument("--chunk", type=size_arg, metavar="SIZE",
                   help="slice size (default: about 64 slices per worker)")
    p.add_argument("--path", metavar="PATH",
                   help="create the file here and keep it (default: a temporary directory)")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --path")
    p.add_argument("--fault", type=int, help=argparse.SUPPRESS)   # test hook: see workload.run_demo
    p.set_defaults(func=run)
