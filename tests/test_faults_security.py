"""Hostile neighbours: planted symlinks, FIFOs and files
of other users at a table's path, unsafe lock directories, table permissions,
and a reader that must not be able to block writers.

The rule for exclusive locks (documented on LockManager): a process that can
read but not write the data file may take shared locks and pins but not
exclusive locks (they would block the file's writers) and may not resize it.

Tests that change owners or user ids are marked ``root`` and skip without it.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

import shmslice
from shmslice import UnsafeLockTable
from shmslice._binding import ffi, lib
from shmslice.locks import table_path_for
from tests.support import wait_pid

NOBODY = 65534


# -- things planted at the table's path ---------------------------------------

def test_symlink_at_table_path_is_refused_and_target_untouched(data_file: Path, lock_dir: Path,
                                                              tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_bytes(b"precious" * 1000)
    os.symlink(target, table_path_for(data_file, lock_dir))
    with pytest.raises(UnsafeLockTable):
        shmslice.LockManager(data_file, lock_dir=lock_dir)
    with pytest.raises(UnsafeLockTable):
        shmslice.TableView(table_path_for(data_file, lock_dir))
    assert target.read_bytes() == b"precious" * 1000


def test_dangling_symlink_at_table_path_is_refused_and_creates_nothing(data_file: Path,
                                                                      lock_dir: Path,
                                                                      tmp_path: Path) -> None:
    target = tmp_path / "would-be-created"
    os.symlink(target, table_path_for(data_file, lock_dir))
    with pytest.raises(UnsafeLockTable):
        shmslice.LockManager(data_file, lock_dir=lock_dir)
    assert not target.exists()


def test_fifo_at_table_path_is_refused(data_file: Path, lock_dir: Path) -> None:
    os.mkfifo(table_path_for(data_file, lock_dir), 0o600)
    with pytest.raises(UnsafeLockTable):
        shmslice.LockManager(data_file, lock_dir=lock_dir)


def test_directory_at_table_path_is_an_error_not_a_table(data_file: Path, lock_dir: Path) -> None:
    os.mkdir(table_path_for(data_file, lock_dir))
    with pytest.raises((UnsafeLockTable, OSError)):
        shmslice.LockManager(data_file, lock_dir=lock_dir)


@pytest.mark.root
def test_table_owned_by_a_user_who_may_not_read_the_data_is_refused(data_file: Path,
                                                                   lock_dir: Path) -> None:
    os.chmod(data_file, 0o600)   # only its owner (root) may read it
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        table = mgr.table_path
    os.chown(table, NOBODY, NOBODY)
    with pytest.raises(UnsafeLockTable, match="may not read the data file") as err:
        shmslice.LockManager(data_file, lock_dir=lock_dir)
    assert str(NOBODY) in str(err.value)


@pytest.mark.root
def test_table_of_another_reader_is_accepted_only_with_the_data_files_modes(
        data_file: Path, lock_dir: Path) -> None:
    os.chmod(data_file, 0o644)   # everyone may read it: nobody's table is acceptable ...
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        table = mgr.table_path
    os.chown(table, NOBODY, NOBODY)
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        mgr.lock(0, 10).release()
    os.chmod(data_file, 0o604)   # ... until it grants more than the readers of the data get
    with pytest.raises(UnsafeLockTable, match="grants more"):   # (0666: its group may write)
        shmslice.LockManager(data_file, lock_dir=lock_dir)


@pytest.mark.root
def test_planted_file_of_another_user_is_refused(data_file: Path, lock_dir: Path) -> None:
    """A well-formed table planted in advance by another user (it could hold
    forged entries): refused, not used."""
    other = data_file.parent / "other.bin"
    other.write_bytes(b"\0" * 4096)
    other_dir = data_file.parent / "other-locks"
    other_dir.mkdir(mode=0o700)
    with shmslice.LockManager(other, lock_dir=other_dir) as mgr:
        mgr.lock(0, 10).release()
        forged = mgr.table_path   # a valid table, of another data file
    table = table_path_for(data_file, lock_dir)
    shutil.copyfile(forged, table)
    os.chown(table, NOBODY, NOBODY)
    os.chmod(data_file, 0o600)   # planted by a user who may not read the data file
    with pytest.raises(UnsafeLockTable):
        shmslice.LockManager(data_file, lock_dir=lock_dir)
    os.chmod(data_file, 0o644)   # by one who may: still not used (another file's table)
    with pytest.raises(shmslice.CorruptLockTable, match="another file"):
        shmslice.LockManager(data_file, lock_dir=lock_dir)


@pytest.mark.root
def test_table_owned_by_the_data_files_owner_is_accepted(data_file: Path, lock_dir: Path) -> None:
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        table = mgr.table_path
    os.chown(table, NOBODY, NOBODY)
    os.chown(data_file, NOBODY, NOBODY)
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        mgr.lock(0, 10).release()


# -- the lock directory ----------------------------------------------------------

def test_symlinked_default_lock_dir_is_refused(data_file: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "real-dir"
    real.mkdir(mode=0o1777)
    os.chmod(real, 0o1777)
    link = tmp_path / "planted-link"
    os.symlink(real, link)
    monkeypatch.delenv("SHMSLICE_DIR", raising=False)
    monkeypatch.setattr(shmslice._paths, "default_lock_dir", lambda: str(link))
    with pytest.raises(UnsafeLockTable):
        shmslice.LockManager(data_file)
    assert os.listdir(real) == []


def test_c_core_refuses_a_symlinked_lock_dir(data_file: Path, lock_dir: Path,
                                            tmp_path: Path) -> None:
    link = tmp_path / "link-to-locks"
    os.symlink(lock_dir, link)
    fd = os.open(data_file, os.O_RDWR)
    try:
        out = ffi.new("ss_handle **")
        rc = lib.ss_attach(str(link).encode(), fd, b"", 0, 0, out)
        if rc == 0:
            lib.ss_close(out[0])
        assert rc == lib.SS_EUNSAFE
    finally:
        os.close(fd)
    assert os.listdir(lock_dir) == []


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o707, 0o722])
def test_writable_lock_dir_without_sticky_bit_is_refused(mode: int, data_file: Path,
                                                        tmp_path: Path) -> None:
    d = tmp_path / "open-dir"
    d.mkdir()
    os.chmod(d, mode)
    with pytest.raises(UnsafeLockTable):
        shmslice.LockManager(data_file, lock_dir=d)
    os.chmod(d, mode | stat.S_ISVTX)
    with shmslice.LockManager(data_file, lock_dir=d) as mgr:
        mgr.lock(0, 1).release()


@pytest.mark.root
def test_lock_dir_owned_by_another_user_is_refused(data_file: Path, tmp_path: Path) -> None:
    d = tmp_path / "their-dir"
    d.mkdir(mode=0o700)
    os.chown(d, NOBODY, NOBODY)
    with pytest.raises(UnsafeLockTable):
        shmslice.LockManager(data_file, lock_dir=d)


def test_created_lock_dirs_have_the_documented_modes(data_file: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    old = os.umask(0)
    try:
        private = tmp_path / "new-private"
        with shmslice.LockManager(data_file, lock_dir=private):
            pass
        assert stat.S_IMODE(os.stat(private).st_mode) == 0o700
        shared = tmp_path / "new-shared"
        monkeypatch.delenv("SHMSLICE_DIR", raising=False)
        monkeypatch.setattr(shmslice._paths, "default_lock_dir", lambda: str(shared))
        os.umask(0o077)   # the shared runtime directory must not depend on the umask
        with shmslice.LockManager(data_file):
            pass
        assert stat.S_IMODE(os.stat(shared).st_mode) == 0o1777
    finally:
        os.umask(old)


# -- table permissions -------------------------------------------------------------

def _needed_table_mode(data_mode: int) -> int:
    """Each class that may read or write the data file needs read-write on the
    table (a shared lock or a pin writes it); no other bits, ever."""
    m = 0
    for r, w, rw in ((stat.S_IRUSR, stat.S_IWUSR, 0o600), (stat.S_IRGRP, stat.S_IWGRP, 0o060),
                     (stat.S_IROTH, stat.S_IWOTH, 0o006)):
        if data_mode & (r | w):
            m |= rw
    return m or 0o600


@pytest.mark.parametrize("data_mode", [0o600, 0o640, 0o644, 0o400, 0o660, 0o604, 0o700, 0o755])
@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_table_gets_no_wider_permissions_than_the_data_file_needs(
        data_mode: int, umask: int, data_file: Path, lock_dir: Path) -> None:
    os.chmod(data_file, data_mode)
    old = os.umask(umask)
    try:
        with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
            mode = stat.S_IMODE(os.stat(mgr.table_path).st_mode)
    finally:
        os.umask(old)
    assert mode == _needed_table_mode(data_mode), f"data {data_mode:o} -> table {mode:o}"
    assert not mode & 0o7111   # never executable, setuid, setgid or sticky


# -- a reader cannot block writers -----------------------------------------------------

def _as_nobody(data: str, lock_dir: str, write_fd: int) -> None:
    """Child body: drop to uid 65534 and report what the read-only opener may do."""
    results = []

    def attempt(name: str, fn) -> None:
        try:
            fn()
            results.append(f"{name}=ok")
        except PermissionError:
            results.append(f"{name}=PermissionError")
        except Exception as exc:   # reported to the parent, which asserts on it
            results.append(f"{name}={type(exc).__name__}:{exc}")

    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    mgr = shmslice.LockManager(data, lock_dir=lock_dir)
    results.append(f"writable={mgr.writable}")
    attempt("shared", lambda: mgr.lock(0, 100, "shared", timeout=5).release())
    attempt("pin", lambda: mgr.unpin(mgr.pin(0, 100)))
    attempt("exclusive", lambda: mgr.lock(0, 100, "exclusive", timeout=5).release())
    rc = lib.ss_lock(mgr._handle._cdata, 0, 100, lib.SS_EXCLUSIVE, 0)   # bypassing the Python check
    results.append(f"c_exclusive={ffi.string(lib.ss_status_name(rc)).decode() if rc < 0 else rc}"
                   f"/{lib.ss_last_errno() if rc < 0 else 0}")
    attempt("resize", lambda: mgr.resize_file(10))
    attempt("resize_grow", lambda: mgr.resize_file(1 << 20))
    mgr.close()
    os.write(write_fd, " ".join(results).encode())


@pytest.mark.root
def test_reader_without_write_permission_cannot_take_exclusive_locks() -> None:
    # tmp_path lives under a 0700 directory; the unprivileged child needs a path it can walk.
    base = Path(tempfile.mkdtemp(prefix="shmslice-sec-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        data = base / "data.bin"
        data.write_bytes(b"\0" * 4096)
        os.chmod(data, 0o644)
        lock_dir = base / "locks"
        lock_dir.mkdir()
        os.chmod(lock_dir, 0o1777)
        with shmslice.LockManager(data, lock_dir=lock_dir) as owner:
            held = owner.lock(1000, 2000, "exclusive")   # the table exists, owned by root
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    os.close(r)
                    _as_nobody(str(data), str(lock_dir), w)
                except BaseException as exc:
                    os.write(w, f"child failed: {exc!r}".encode())
                    code = 1
                os._exit(code)
            os.close(w)
            chunks = []
            while True:
                chunk = os.read(r, 4096)
                if not chunk:
                    break
                chunks.append(chunk)
            os.close(r)
            status = wait_pid(pid, what="the unprivileged child")
            report = b"".join(chunks).decode()
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, report
            assert report.split() == ["writable=False", "shared=ok", "pin=ok",
                                      "exclusive=PermissionError",
                                      f"c_exclusive=SS_ESYS/{errno.EACCES}",
                                      "resize=PermissionError",
                                      "resize_grow=PermissionError"], report
            # The writer was never blocked and nothing of the reader is left.
            held.release()
            owner.lock(0, 4096, "exclusive", timeout=0).release()
            assert owner.locks(waiting=True) == []
        assert data.read_bytes() == b"\0" * 4096
    finally:
        shutil.rmtree(base)


def test_c_core_enforces_the_exclusive_rule_for_read_only_descriptors(data_file: Path,
                                                                       lock_dir: Path) -> None:
    """The rule holds at the C API too, not only in LockManager: a handle
    attached through a read-only descriptor cannot take exclusive locks."""
    fd = os.open(data_file, os.O_RDONLY)
    out = ffi.new("ss_handle **")
    try:
        assert lib.ss_attach(str(lock_dir).encode(), fd, b"", 0, 0, out) == 0
        h = out[0]
        try:
            rc = lib.ss_lock(h, 0, 100, lib.SS_EXCLUSIVE, 0)
            assert rc == lib.SS_ESYS and lib.ss_last_errno() == errno.EACCES
            ref = lib.ss_lock(h, 0, 100, lib.SS_SHARED, 0)
            assert ref >= 0 and lib.ss_release(h, ref) == 0
        finally:
            lib.ss_close(h)
    finally:
        os.close(fd)
