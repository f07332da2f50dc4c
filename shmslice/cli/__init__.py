"""The ``shmslice`` command: lock tables from the shell, and a demo of the main job.

Subcommands::

    shmslice locks PATH     the file's lock table, one row per entry (--json, --watch);
                            a summary by process and kind when the rows do not fit
                            (--group-by pid|kind|region, --all)
    shmslice ls             every lock table in the lock directory, with its memory (--json)
    shmslice reap PATH      remove dead processes' entries (--all: every table)
    shmslice prune          remove every table no process is attached to (--dry-run)
    shmslice info PATH      file size, table location, format, capacity and use
    shmslice demo           create a file, split it, let a worker pool lock/write/checksum
                            its slices, verify every byte, print throughput

Every subcommand that reads tables takes ``--lock-dir DIR`` (default:
``$SHMSLICE_DIR``, then ``/dev/shm/shmslice``).  Exit status: 0 success, 1 a
runtime error (reported as one line on stderr), 2 a usage error, 130 when
interrupted (except ``locks --watch``, which Ctrl-C ends normally).

Nothing here creates a lock table except ``demo``: inspecting a file that no
process has opened through shmslice shows an empty table and leaves the lock
directory as it was.  Only ``prune`` removes tables (those nobody uses).

Layout: :mod:`~shmslice.cli.app` holds the parser and :func:`main`; each
subcommand is a module of :mod:`shmslice.cli.commands` holding its ``run``
next to the ``register`` that adds its options; around them are
:mod:`~shmslice.cli.tablefiles` (which table a PATH names),
:mod:`~shmslice.cli.snapshots` (a table's entries as lists, for the demo),
:mod:`~shmslice.cli.listing` (``locks`` at any size: packed, grouped, streamed),
:mod:`~shmslice.cli.owners` (owner processes, through psutil),
:mod:`~shmslice.cli.formatting` (sizes, durations, tables, escapes),
:mod:`~shmslice.cli.workload` (what ``demo`` runs),
:mod:`~shmslice.cli.arguments` and :mod:`~shmslice.cli.errors`.
"""

from __future__ import annotations

from shmslice.cli.app import build_parser, main
from shmslice.cli.formatting import human_duration, human_size, parse_size

__all__ = ["build_parser", "human_duration", "human_size", "main", "parse_size"]
