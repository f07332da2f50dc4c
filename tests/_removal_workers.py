"""Processes for the table-removal tests (tests/test_table_removal.py).

``attacher`` opens the data file through a hard link of its own (odd-numbered
attachers build new tables under a temporary name, as without O_TMPFILE), takes an
exclusive lock on [0, 8), runs a checked critical section, releases,
sometimes forks a child that does the same through the inherited manager,
unlinks its link and closes -- in a loop until a deadline.  The link
disappearing before the close means that whenever this process created the
table (its link is the table's recorded data path), every later close finds
the data file "gone" and tries to remove the table.  ``pruner`` removes
every unused table of the lock directory in a loop.

The critical section is the checker: byte 0 of the data file is 0 outside
it; inside it the holder checks it is 0, writes its marker, sleeps, checks
the marker is still there and writes 0 back.  Two exclusive holders of
[0, 8) at once -- processes on two different tables -- show up as a
violation.  Every result goes back on a queue; nothing here asserts.
"""

from __future__ import annotations

import fcntl
import os
import random
import struct
import time
from typing import Any

import shmslice
from shmslice._binding import lib
from shmslice.cli.tablefiles import list_tables

#: Time inside the critical section: wide enough that two holders overlap.
HOLD_S = 0.0005


def critical_section(fd: int, marker: int) -> int:
    """The checked section; returns 1 if another holder was seen in it, else 0."""
    bad = os.pread(fd, 1, 0) != b"\0"
    os.pwrite(fd, bytes([marker]), 0)
    time.sleep(HOLD_S)
    bad |= os.pread(fd, 1, 0) != bytes([marker])
    os.pwrite(fd, b"\0", 0)
    return int(bad)


def _child_section(mgr: shmslice.LockManager, fd: int, marker: int) -> int:
    """In a forked child: the section through the inherited manager; the exit status."""
    try:
        lk = mgr.lock(0, 8, "exclusive", timeout=20)
    except Exception:   # reported through the exit status; the parent counts it
        return 2
    try:
        return critical_section(fd, marker)
    finally:
        lk.release()


def attacher(index: int, data: str, lock_dir: str, links: str, seconds: float,
             unguarded: bool, fork_every: int, results: Any) -> None:
    """Attach, lock, check, detach in a loop for ``seconds``; put a result dict on ``results``."""
    if unguarded:
        lib.ss_debug_set_unguarded(1)
    if index % 2:
        lib.ss_debug_set_named_temp(1)   # create tables the way filesystems without O_TMPFILE do
    rng = random.Random(index)
    marker = 1 + index % 250
    fd = os.open(data, os.O_RDWR)
    deadline = time.monotonic() + seconds
    counts = {"index": index, "pid": os.getpid(), "iterations": 0, "violations": 0,
              "forks": 0, "child_failures": 0, "errors": []}
    children: list[int] = []
    tables: set[int] = set()   # inode numbers of the tables this process attached to
    while time.monotonic() < deadline:
        link = os.path.join(links, f"{index}-{counts['iterations']}")
        os.link(data, link)
        try:
            mgr = shmslice.LockManager(link, lock_dir)
            try:
                tables.add(os.stat(mgr.table_path).st_ino)
                lk = mgr.lock(0, 8, "exclusive", timeout=20)
                try:
                    counts["violations"] += critical_section(fd, marker)
                finally:
                    lk.release()
                if fork_every and rng.randrange(fork_every) == 0:
                    pid = os.fork()
                    if pid == 0:
                        os._exit(_child_section(mgr, fd, marker))
                    children.append(pid)
                    counts["forks"] += 1
            finally:
                os.unlink(link)   # before the close: the close may remove the table
                mgr.close()
        except Exception as exc:   # reported to the test, which fails on it
            counts["errors"].append(f"{type(exc).__name__}: {exc}")
            if len(counts["errors"]) > 5:
                break
        counts["iterations"] += 1
        time.sleep(rng.uniform(0, 0.004))   # so that at times nobody is attached
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.remove(pid)
                code = os.waitstatus_to_exitcode(status)
                counts["child_failures"] += code == 2 or code < 0
                counts["violations"] += code == 1
    for pid in children:
        _, status = os.waitpid(pid, 0)   # each child's lock wait is bounded (20 s)
        code = os.waitstatus_to_exitcode(status)
        counts["child_failures"] += code == 2 or code < 0
        counts["violations"] += code == 1
    os.close(fd)
    counts["tables"] = len(tables)
    results.put(counts)


def pruner(lock_dir: str, seconds: float, unguarded: bool, results: Any) -> None:
    """Remove every unused table of ``lock_dir`` in a loop for ``seconds``."""
    if unguarded:
        lib.ss_debug_set_unguarded(1)
    deadline = time.monotonic() + seconds
    counts: dict[str, Any] = {"pid": os.getpid(), "rounds": 0, "removed": 0, "in_use": 0,
                              "errors": []}
    while time.monotonic() < deadline:
        for table in list_tables(lock_dir):
            try:
                with shmslice.TableView(table) as view:
                    freed = view.remove()
            except FileNotFoundError:
                continue   # removed by a closing attacher, or between listing and opening
            except Exception as exc:   # reported to the test, which fails on it
                counts["errors"].append(f"{type(exc).__name__}: {exc}")
                continue
            if freed is None:
                counts["in_use"] += 1
            else:
                counts["removed"] += 1
        counts["rounds"] += 1
    results.put(counts)


def ofd_lock(fd: int, offset: int, exclusive: bool) -> None:
    """Take an OFD lock on byte ``offset`` of ``fd`` without waiting (as the C core's remover does)."""
    kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi", kind, os.SEEK_SET, offset, 1, 0))


def attach_and_signal(data: str, lock_dir: str, done: Any) -> None:
    """Attach, take an exclusive lock, set ``done``."""
    with shmslice.LockManager(data, lock_dir) as mgr:
        mgr.lock(0, 8, "exclusive", timeout=20).release()
        done.set()


def hold_guard(table: str, ready: Any) -> None:
    """Take a table's guard exclusively, as a remover does, and stay (until killed)."""
    fd = os.open(table, os.O_RDWR)
    ofd_lock(fd, shmslice._binding.table_constants()["guard_byte"], exclusive=True)
    ready.set()
    time.sleep(120)
