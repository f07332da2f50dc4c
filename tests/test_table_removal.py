"""Tables go away: removal at the last close of a table whose file is gone, removal of unused
tables (``TableView.remove``, ``shmslice prune``), and the race removal must never lose --
processes attaching, locking, detaching and pruning in a loop, fork and spawn, while a
checker inside the critical section looks for two exclusive holders at once.

Every process and wait is bounded; the race runs for a few seconds (``SHMSLICE_SLOW=1``:
30 s).  A control run with the guard disabled (a test hook) shows that the checker does
catch the race the guard prevents.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import shmslice
from shmslice.locks import table_path_for
from tests import _removal_workers as workers
from tests.support import end_process, popen_python, stop_popen, wait_pid

TIMEOUT = 30.0
RACE_SECONDS = 30.0 if os.environ.get("SHMSLICE_SLOW") else 4.0


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

_HOLD = """
import sys, shmslice
mgr = shmslice.LockManager(sys.argv[1], sys.argv[2])
held = [mgr.lock(0, 10, "shared", timeout=10)] if sys.argv[3] == "lock" else []
print("ready", flush=True)
if sys.stdin.readline().strip() == "close":
    for lk in held:
        lk.release()
    mgr.close()
    print("closed", flush=True)
sys.stdin.read()
"""


class Holder:
    """A separate Python process attached to a data file's table (``lock``: holding a shared lock)."""

    def __init__(self, data: Path, lock_dir: Path, what: str = "attach") -> None:
        self.proc = popen_python("-c", _HOLD, data, lock_dir, what,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._line() == "ready"

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = ""
        deadline = time.monotonic() + TIMEOUT
        while not line and time.monotonic() < deadline and self.proc.poll() is None:
            line = self.proc.stdout.readline()
        assert line, f"holder said nothing (exit {self.proc.poll()})"
        return line.strip()

    def close(self) -> None:
        """Release and close the manager (the process stays)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("close\n")
        self.proc.stdin.flush()
        assert self._line() == "closed"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(TIMEOUT)

    def stop(self) -> None:
        stop_popen(self.proc)


@pytest.fixture
def holders() -> Any:
    made: list[Holder] = []

    def make(data: Path, lock_dir: Path, what: str = "attach") -> Holder:
        h = Holder(data, lock_dir, what)
        made.append(h)
        return h

    yield make
    for h in made:
        h.stop()


def _allocated(table: str) -> int:
    return os.stat(table).st_blocks * 512


# ---------------------------------------------------------------------------
# Removal at the last close
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_table_goes_with_the_last_close_once_its_file_is_gone(
        data_file: Path, lock_dir: Path, holders: Any, how: str) -> None:
    other = holders(data_file, lock_dir)
    mgr = shmslice.LockManager(data_file, lock_dir)
    table = mgr.table_path
    mgr.lock(0, 100, "exclusive").release()
    if how == "deleted":
        data_file.unlink()
    else:
        replacement = data_file.with_name("new.bin")
        replacement.write_bytes(b"x" * 100)
        os.replace(replacement, data_file)
    mgr.close()
    assert os.path.exists(table), "removed while another process was attached"
    other.close()
    assert not os.path.exists(table)


def test_table_of_an_existing_file_stays_after_the_last_close(data_file: Path,
                                                               lock_dir: Path) -> None:
    with shmslice.LockManager(data_file, lock_dir) as mgr:
        table = mgr.table_path
    assert os.path.exists(table)   # the next open of a live file would only re-create it


def test_table_with_live_entries_stays(data_file: Path, lock_dir: Path, holders: Any) -> None:
    locker = holders(data_file, lock_dir, "lock")
    mgr = shmslice.LockManager(data_file, lock_dir)
    table = mgr.table_path
    data_file.unlink()
    mgr.close()
    assert os.path.exists(table)
    assert [e.kind for e in shmslice.TableView(table).locks()] == ["shared"]
    locker.close()   # the last one out, and the table is empty now
    assert not os.path.exists(table)


def test_dead_processes_entries_do_not_keep_a_table(data_file: Path, lock_dir: Path,
                                                    holders: Any) -> None:
    victim = holders(data_file, lock_dir, "lock")
    mgr = shmslice.LockManager(data_file, lock_dir)
    table = mgr.table_path
    victim.kill()
    data_file.unlink()
    mgr.close()   # sweeps the dead process's entry, then finds nobody attached
    assert not os.path.exists(table)


def test_forked_child_keeps_the_table_until_it_lets_go(data_file: Path, lock_dir: Path) -> None:
    mgr = shmslice.LockManager(data_file, lock_dir)
    table = mgr.table_path
    mgr.lock(0, 10, "exclusive").release()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:   # pragma: no cover - the child reports through its exit status
        status = 1
        try:
            os.close(go_w)
            os.read(go_r, 1)   # the parent has closed and deleted the file by now
            lk = mgr.lock(0, 10, "exclusive", timeout=10)
            still_there = os.path.exists(table)
            lk.release()
            mgr.close()
            status = 0 if still_there else 3
        finally:
            os._exit(status)
    os.close(go_r)
    data_file.unlink()
    mgr.close()
    assert os.path.exists(table), "removed under a forked child that still maps it"
    os.write(go_w, b"x")
    os.close(go_w)
    assert os.waitstatus_to_exitcode(wait_pid(pid)) == 0
    assert not os.path.exists(table)   # the child was the last to close


def test_sigkilled_last_user_leaves_the_table_to_prune(data_file: Path, lock_dir: Path,
                                                        holders: Any) -> None:
    victim = holders(data_file, lock_dir, "lock")
    table = table_path_for(data_file, lock_dir)
    victim.kill()
    data_file.unlink()
    assert os.path.exists(table)   # nobody closed it
    with shmslice.TableView(table) as view:
        assert view.remove(dry_run=True) == _allocated(table)
        assert os.path.exists(table)
        assert view.remove() > 0
    assert not os.path.exists(table)


# ---------------------------------------------------------------------------
# TableView.remove
# ---------------------------------------------------------------------------

def test_remove_refuses_a_table_in_use(data_file: Path, lock_dir: Path, holders: Any) -> None:
    attached = holders(data_file, lock_dir)   # attached, with no entry at all
    table = table_path_for(data_file, lock_dir)
    with shmslice.TableView(table) as view:
        assert view.remove(dry_run=True) is None
        assert view.remove() is None
        assert os.path.exists(table)
        attached.close()
        freed = view.remove()
        assert freed is not None and freed >= 4096
        with pytest.raises(FileNotFoundError):
            view.remove()
    with pytest.raises(TypeError):
        shmslice.TableView.remove(shmslice.TableView.__new__(shmslice.TableView), dry_run=1)  # type: ignore[arg-type]


def test_attaching_after_a_removal_makes_a_new_table(data_file: Path, lock_dir: Path) -> None:
    with shmslice.LockManager(data_file, lock_dir) as mgr:
        table = mgr.table_path
    with shmslice.TableView(table) as view:
        assert view.remove() is not None
    assert not os.path.exists(table)
    with shmslice.LockManager(data_file, lock_dir) as mgr:
        lk = mgr.lock(0, 10, "exclusive")
        # The table at the path is the one the manager uses.
        with shmslice.TableView(table) as view:
            assert [(e.kind, e.pid) for e in view.locks()] == [("exclusive", os.getpid())]
        lk.release()


def test_a_process_in_the_table_keeps_it_from_removal_across_fork(data_file: Path,
                                                                  lock_dir: Path) -> None:
    """A child forked from an attached process holds the guard through its inherited mapping."""
    mgr = shmslice.LockManager(data_file, lock_dir)
    table = mgr.table_path
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:   # pragma: no cover
        try:
            os.close(ready_r)
            os.close(go_w)
            os.write(ready_w, b"r")
            os.read(go_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(go_r)
    assert os.read(ready_r, 1) == b"r"
    mgr.close()
    with shmslice.TableView(table) as view:
        assert view.remove() is None   # the child still maps the table
        os.write(go_w, b"g")
        wait_pid(pid)
        assert view.remove() is not None
    os.close(go_w)
    os.close(ready_r)


# ---------------------------------------------------------------------------
# The race
# ---------------------------------------------------------------------------

def _race(tmp_path: Path, data_file: Path, lock_dir: Path, seconds: float,
          unguarded: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Four attachers (two forked, two spawned) and two pruners for ``seconds``."""
    data_file.write_bytes(bytes(4096))
    links = tmp_path / "links"
    links.mkdir(parents=True)
    procs = []
    results: list[Any] = []
    try:
        for i, method in enumerate(["fork", "spawn", "fork", "spawn"]):
            ctx = mp.get_context(method)
            q = ctx.Queue()
            p = ctx.Process(target=workers.attacher, daemon=True,
                            args=(i, str(data_file), str(lock_dir), str(links), seconds,
                                  unguarded, 0 if unguarded else 8, q))
            procs.append(p)
            results.append(q)
        for method in ("fork", "spawn"):
            ctx = mp.get_context(method)
            q = ctx.Queue()
            p = ctx.Process(target=workers.pruner, daemon=True,
                            args=(str(lock_dir), seconds, unguarded, q))
            procs.append(p)
            results.append(q)
        for p in procs:
            p.start()
        outs = []
        for q in results:
            try:
                outs.append(q.get(timeout=seconds + 60))
            except queue.Empty:
                raise AssertionError("a race process did not report in time") from None
        for p in procs:
            assert end_process(p), "a race process did not exit"
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.pid is not None:
                end_process(p)
    return outs[:4], outs[4:]


def test_removal_never_breaks_mutual_exclusion(tmp_path: Path, data_file: Path,
                                               lock_dir: Path) -> None:
    attachers, pruners = _race(tmp_path, data_file, lock_dir, RACE_SECONDS, unguarded=False)
    for a in attachers:
        assert a["errors"] == [] and a["child_failures"] == 0, a
        assert a["violations"] == 0, a
        assert a["iterations"] > 10, a
    for p in pruners:
        assert p["errors"] == [], p
    # The race was run: tables were removed under the attachers' feet, and forked
    # children locked through managers their parents had closed.
    assert sum(p["removed"] for p in pruners) > 0, pruners
    assert max(a["tables"] for a in attachers) > 1, attachers
    assert sum(a["forks"] for a in attachers) > 0, attachers


def test_without_the_guard_the_checker_sees_two_holders(tmp_path: Path, data_file: Path,
                                                        lock_dir: Path) -> None:
    """Control: the same race with the guard disabled breaks mutual exclusion, and the
    checker notices (so the test above can fail)."""
    for attempt in range(3):   # the race is likely, not certain, in a few seconds
        attachers, _ = _race(tmp_path / str(attempt), data_file, lock_dir, 4.0, unguarded=True)
        if sum(a["violations"] for a in attachers) > 0:
            return
    pytest.fail(f"no violation seen without the guard: {attachers}")


# ---------------------------------------------------------------------------
# A stopped remover
# ---------------------------------------------------------------------------

def test_attach_waits_for_a_remover_then_gets_a_new_table(data_file: Path, lock_dir: Path) -> None:
    """A remover holding the guard makes attachers retry; they get a table once it is done."""
    with shmslice.LockManager(data_file, lock_dir) as mgr:
        table = mgr.table_path
    fd = os.open(table, os.O_RDWR)
    guard = shmslice._binding.table_constants()["guard_byte"]
    workers.ofd_lock(fd, guard, exclusive=True)
    ctx = mp.get_context("fork")
    done = ctx.Event()
    p = ctx.Process(target=workers.attach_and_signal, args=(str(data_file), str(lock_dir), done),
                    daemon=True)
    p.start()
    try:
        assert not done.wait(0.3), "attached while a remover held the guard"
        os.unlink(table)   # the remover's unlink, then its release
        os.close(fd)
        assert done.wait(TIMEOUT), "attach did not go on once the remover was done"
    finally:
        end_process(p)
    assert os.path.exists(table)


def test_a_remover_killed_holding_the_guard_blocks_nobody(data_file: Path, lock_dir: Path) -> None:
    """SIGKILL between a remover's lock and its unlink: the kernel drops the guard, the
    table stays, and waiting attachers go on with it."""
    with shmslice.LockManager(data_file, lock_dir) as mgr:
        table = mgr.table_path
    inode = os.stat(table).st_ino
    ctx = mp.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    remover = ctx.Process(target=workers.hold_guard, args=(table, ready), daemon=True)
    remover.start()
    attacher = None
    try:
        assert ready.wait(TIMEOUT)
        attacher = ctx.Process(target=workers.attach_and_signal,
                               args=(str(data_file), str(lock_dir), done), daemon=True)
        attacher.start()
        assert not done.wait(0.3), "attached while a remover held the guard"
        os.kill(remover.pid, signal.SIGKILL)
        assert done.wait(TIMEOUT), "attach did not go on once the remover died"
    finally:
        end_process(remover)
        if attacher is not None:
            end_process(attacher)
    assert os.stat(table).st_ino == inode   # the same table: nothing was unlinked
