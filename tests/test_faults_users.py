"""Several users share one data file's table (root: the test creates users and setuid()s children).

The trust rule: a table owned by you, root or the data file's owner is used;
one owned by any other user is used when that user may read the data file (by
its mode bits: owner, group membership, others), the table grants no class
more than the data file's readers get, and the lock directory is sticky if
others may write it.  So the first reader of a root-owned dataset no longer
locks every other reader out, and a user who may not read the data file
cannot plant a table for it.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import shmslice
from shmslice import LockTimeout, UnsafeLockTable
from shmslice.locks import table_path_for
from tests.support import wait_pid

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None,
                                reason="needs root and useradd to make users")

GROUP = "shmslice-t-grp"
USERS = {"alice": True, "bob": True, "carol": False}   # name -> member of GROUP


def _name(user: str) -> str:
    return f"shmslice-t-{user}"


@pytest.fixture(scope="module")
def users() -> Iterator[dict[str, pwd.struct_passwd]]:
    made: list[str] = []
    try:
        if subprocess.run(["groupadd", GROUP], capture_output=True, timeout=60,
                          check=False).returncode not in (0, 9):   # 9: exists
            pytest.skip("cannot add a group")
        for user, member in USERS.items():
            args = ["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", "-g", "nogroup"]
            if member:
                args += ["-G", GROUP]
            done = subprocess.run([*args, _name(user)], capture_output=True, text=True,
                                  timeout=60, check=False)
            if done.returncode not in (0, 9):
                pytest.skip(f"cannot add users: {done.stderr.strip()}")
            made.append(_name(user))
        yield {user: pwd.getpwnam(_name(user)) for user in USERS}
    finally:
        for name in made:
            subprocess.run(["userdel", name], capture_output=True, timeout=60, check=False)
        subprocess.run(["groupdel", GROUP], capture_output=True, timeout=60, check=False)


@pytest.fixture
def shared(users: dict[str, pwd.struct_passwd]) -> Iterator[Path]:
    """A directory every user may walk, with a root-owned sticky lock directory like the default."""
    base = Path(tempfile.mkdtemp(prefix="shmslice-users-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        (base / "locks").mkdir()
        os.chmod(base / "locks", 0o1777)
        yield base
    finally:
        shutil.rmtree(base)


def _as_user(pw: pwd.struct_passwd, body: Callable[[], str]) -> tuple[int, int]:
    """Fork a child that becomes ``pw`` (with its groups) and runs ``body``;
    returns (pid, read end of a pipe that gets body's report, then EOF)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            os.initgroups(pw.pw_name, pw.pw_gid)
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            os.write(w, body().encode())
        except BaseException as exc:
            os.write(w, f"failed: {type(exc).__name__}: {exc}".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _report(pid: int, r: int) -> str:
    chunks = []
    while chunk := os.read(r, 4096):
        chunks.append(chunk)
    os.close(r)
    wait_pid(pid, what="the child of another user")
    return b"".join(chunks).decode()


def _hold_shared(data: Path, lock_dir: Path, ready: int) -> Callable[[], str]:
    def body() -> str:
        mgr = shmslice.LockManager(data, lock_dir=lock_dir)
        mgr.lock(0, 100, "shared")
        mgr.pin(0, 4096)
        os.write(ready, b"x")
        time.sleep(60)   # killed by the parent
        return "slept"
    return body


def _attach_and_report(data: Path, lock_dir: Path) -> Callable[[], str]:
    def body() -> str:
        try:
            mgr = shmslice.LockManager(data, lock_dir=lock_dir)
        except UnsafeLockTable as err:
            return f"refused: {err}"
        seen = sorted((e.kind, e.start, e.end) for e in mgr.locks())
        mgr.lock(0, 100, "shared", timeout=5).release()
        return f"attached {seen}"
    return body


def _first_reader_holds(pw: pwd.struct_passwd, data: Path,
                        lock_dir: Path) -> tuple[int, int]:
    ready_r, ready_w = os.pipe()
    pid, report = _as_user(pw, _hold_shared(data, lock_dir, ready_w))
    os.close(ready_w)
    import select
    ok, _, _ = select.select([ready_r], [], [], 30)
    os.close(ready_r)
    if not ok:
        os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"{pw.pw_name}'s holder did not get ready: {_report(pid, report)}")
    return pid, report


@pytest.mark.parametrize("mode", [0o644, 0o640])
def test_readers_of_a_root_owned_file_share_the_first_readers_table(
        users: dict[str, pwd.struct_passwd], shared: Path, mode: int) -> None:
    data = shared / "data.bin"
    data.write_bytes(b"\0" * 65536)
    os.chown(data, 0, grp.getgrnam(GROUP).gr_gid)
    os.chmod(data, mode)    # 0640: readable through the group only
    lock_dir = shared / "locks"
    holder, holder_report = _first_reader_holds(users["alice"], data, lock_dir)
    try:
        table = table_path_for(data, lock_dir)
        assert os.stat(table).st_uid == users["alice"].pw_uid   # alice was first
        report = _report(*_as_user(users["bob"], _attach_and_report(data, lock_dir)))
        assert report == "attached [('pin', 0, 4096), ('shared', 0, 100)]", report
        # The writer (root) meets both in the same table.
        with shmslice.LockManager(data, lock_dir=lock_dir) as writer:
            with pytest.raises(LockTimeout):
                writer.lock(0, 100, "exclusive", timeout=0.2)
            with pytest.raises(BufferError, match=f"pid {holder}"):
                writer.resize_file(100)
    finally:
        os.kill(holder, signal.SIGKILL)
        _report(holder, holder_report)


def test_user_who_may_not_read_the_file_cannot_plant_its_table(
        users: dict[str, pwd.struct_passwd], shared: Path) -> None:
    data = shared / "data.bin"
    data.write_bytes(b"\0" * 65536)
    os.chown(data, 0, grp.getgrnam(GROUP).gr_gid)
    os.chmod(data, 0o640)   # carol is not in the group
    lock_dir = shared / "locks"
    table = table_path_for(data, lock_dir)

    def plant() -> str:
        # carol cannot open the data file, but can stat it (the table's name) and
        # write the sticky lock directory: she plants a table of her own.
        fd = os.open(table, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.fchmod(fd, 0o666)   # (past the umask) so that others can open it
        os.write(fd, b"\0" * 8192)
        os.close(fd)
        return "planted"

    assert _report(*_as_user(users["carol"], plant)) == "planted"
    report = _report(*_as_user(users["bob"], _attach_and_report(data, lock_dir)))
    assert report.startswith("refused:") and "may not read the data file" in report, report
    with pytest.raises(UnsafeLockTable, match="may not read"):
        shmslice.LockManager(data, lock_dir=lock_dir)
