"""File identity: a file that reuses a deleted file's inode number is another file.

ext4 hands a deleted file's inode number to the next file created, at once.
These tests re-create a file on a small loop-mounted ext4 (root) until it gets
the old inode number back, and check that nothing of the old file -- its lock
table, its entries, descriptors pickled from it -- is taken for the new one;
and that a stale descriptor reaches the caller of a pool task as
``StaleDescriptor`` (it is raised at the slice's first use, not while the
worker unpickles its arguments), with a message that says where it came from.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import shutil
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest

import shmslice
from shmslice import StaleDescriptor
from shmslice._binding import path_identity
from shmslice.slices import _rebuild
from tests.support import REAP_TIMEOUT, popen_python, run_python, stop_popen
from tests.test_faults_space import small_ext4  # noqa: F401  (fixture)

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mkfs.ext4") is None,
                                reason="needs root and mkfs.ext4 to mount a small ext4 image")


def _recreate_with_same_inode(path: Path, content: bytes) -> None:
    """Delete ``path`` and create a new file there that reuses its inode number."""
    old = os.stat(path).st_ino
    for _ in range(20):
        path.unlink()
        path.write_bytes(content)
        if os.stat(path).st_ino == old:
            return
    pytest.skip("the filesystem did not reuse the inode number")


def _stale_task(s: shmslice.ByteBufferSlice) -> bytes:
    return bytes(s)


def _plain_task(n: int) -> int:
    return n * 2


@needs_root
def test_recreated_file_gets_its_own_table_without_the_old_entries(small_ext4: Path,  # noqa: F811
                                                                   lock_dir: Path) -> None:
    path = small_ext4 / "data.bin"
    with shmslice.open(path, "w+", size=1 << 20, lock_dir=lock_dir) as mf:
        old_table = mf.lock_manager.table_path
    # A holder that dies holding a lock and a pin leaves its entries in the
    # table (they are reclaimed as a dead owner's, but stay until then).
    holder = popen_python("-c", textwrap.dedent(f"""
        import sys, shmslice
        mgr = shmslice.LockManager({str(path)!r}, lock_dir={str(lock_dir)!r})
        lk = mgr.lock(0, 100, "exclusive")
        ref = mgr.pin(0, 4096)
        print("held", flush=True)
        sys.stdin.read()
        """), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        holder.send_signal(signal.SIGKILL)
        holder.wait(REAP_TIMEOUT)
    finally:
        stop_popen(holder)
    with shmslice.TableView(old_table) as view:
        assert [e.alive for e in view.locks()] == [False, False]
    before = path_identity(path)
    _recreate_with_same_inode(path, b"n" * 4096)
    after = path_identity(path)
    assert (after.dev, after.ino) == (before.dev, before.ino) and after.birth != before.birth
    with shmslice.LockManager(path, lock_dir=lock_dir) as mgr:
        assert mgr.table_path != old_table
        assert mgr.locks() == []                   # not the dead holder's entries
        assert mgr.recorded_size() == 4096         # not the old file's size
        mgr.lock(0, 100, "exclusive", timeout=0).release()
    # The old table is still there, for the old file's identity (prune's business).
    assert os.path.exists(old_table)


@needs_root
def test_descriptor_of_a_replaced_file_with_the_same_inode_is_stale(small_ext4: Path,  # noqa: F811
                                                                    lock_dir: Path) -> None:
    path = small_ext4 / "data.bin"
    with shmslice.open(path, "w+", size=8192, lock_dir=lock_dir) as mf:
        mf[0:8192] = b"o" * 8192
        data = pickle.dumps(mf[100:200])
        arr = pickle.dumps(mf.ndarray("u1", (100,), offset=100)) if _has_numpy() else None
    _recreate_with_same_inode(path, b"n" * 8192)
    # In another process, as a worker would: the slice raises at first use.
    code = textwrap.dedent("""
        import pickle, sys
        from shmslice import StaleDescriptor
        s = pickle.loads(bytes.fromhex(sys.stdin.read()))
        try:
            print(bytes(s)[:4])
        except StaleDescriptor as err:
            print("stale:", err)
        """)
    done = run_python("-c", code, timeout=60, input=data.hex())
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("stale:") and "replaced" in done.stdout
    assert "inode" in done.stdout
    s = pickle.loads(data)
    with pytest.raises(StaleDescriptor, match="replaced"):
        s.view()
    if arr is not None:
        a = pickle.loads(arr)
        assert "replaced" in repr(a)
        with pytest.raises(StaleDescriptor, match="replaced"):
            a.sum()
        with pytest.raises(StaleDescriptor, match="replaced"):
            a[0]
        import numpy as np
        with pytest.raises(StaleDescriptor, match="replaced"):
            np.asarray(a)
        with pytest.raises(StaleDescriptor, match="replaced"):
            a + 1


def _has_numpy() -> bool:
    try:
        import numpy  # noqa: F401
    except ImportError:
        return False
    return True


def _replaced_descriptor(path: Path, lock_dir: Path, tmp_path: Path) -> bytes:
    with shmslice.open(path, "r+", lock_dir=lock_dir) as mf:
        data = pickle.dumps(mf[0:16])
    replacement = tmp_path / "replacement.bin"
    replacement.write_bytes(b"r" * 4096)
    os.replace(replacement, path)
    return data


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_stale_descriptor_reaches_a_process_pool_executor_caller(
        path: Path, lock_dir: Path, tmp_path: Path, method: str) -> None:
    data = _replaced_descriptor(path, lock_dir, tmp_path)
    ctx = multiprocessing.get_context(method)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
        stale = pool.submit(_stale_task, pickle.loads(data))
        with pytest.raises(StaleDescriptor, match="replaced"):
            stale.result(timeout=60)
        assert pool.submit(_plain_task, 21).result(timeout=60) == 42   # the pool survived


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_stale_descriptor_reaches_a_multiprocessing_pool_caller(
        path: Path, lock_dir: Path, tmp_path: Path, method: str) -> None:
    data = _replaced_descriptor(path, lock_dir, tmp_path)
    with multiprocessing.get_context(method).Pool(2) as pool:
        stale = pool.apply_async(_stale_task, (pickle.loads(data),))
        with pytest.raises(StaleDescriptor, match="replaced"):
            stale.get(timeout=60)                  # it hung before
        assert pool.apply_async(_plain_task, (21,)).get(timeout=60) == 42


def test_descriptor_from_another_host_says_so(path: Path, lock_dir: Path) -> None:
    with shmslice.open(path, "r", lock_dir=lock_dir) as mf:
        desc = mf._descriptor(0, 16)
    abspath, (dev, ino, birth), _origin, start, end, writable, size, ldir = desc
    # The same path on another host names another file (another device, say).
    s = _rebuild(abspath, (dev + 1, ino, birth), ("0" * 32, "elsewhere"), start, end, writable,
                 size, ldir)
    with pytest.raises(StaleDescriptor, match="made on another host") as info:
        bytes(s)
    assert "'elsewhere'" in str(info.value) and os.uname().nodename in str(info.value)
    # A file missing here, from another host: also said.
    s = _rebuild(abspath + ".missing", (dev, ino, birth), ("0" * 32, "elsewhere"), start, end,
                 writable, size, ldir)
    with pytest.raises(StaleDescriptor, match=r"no longer exists.*made on another host"):
        s[0]
    # Same identity from another host (a shared filesystem whose identity matches): served.
    s = _rebuild(abspath, (dev, ino, birth), ("0" * 32, "elsewhere"), start, end, writable,
                 size, ldir)
    assert bytes(s) == path.read_bytes()[:16]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) for a mount and UTS namespace")
def test_descriptor_from_another_container_says_so(path: Path, lock_dir: Path,
                                                   tmp_path: Path) -> None:
    """A 'container': a mount namespace where another file is bind-mounted at
    the path, and its own hostname.  The descriptor made outside is stale there."""
    other = tmp_path / "other.bin"
    other.write_bytes(b"c" * 4096)
    with shmslice.open(path, "r", lock_dir=lock_dir) as mf:
        data = pickle.dumps(mf[0:16])
    blob = tmp_path / "desc.pickle"
    blob.write_bytes(data)
    code = (f"import pickle; from shmslice import StaleDescriptor\n"
            f"s = pickle.load(open({str(blob)!r}, 'rb'))\n"
            "try:\n    print(bytes(s))\nexcept StaleDescriptor as err:\n    print('stale:', err)\n")
    script = tmp_path / "child.py"
    script.write_text(code)
    import sys

    from tests.support import child_env
    shell = (f"mount --make-rprivate / && mount --bind {other} {path} && "
             f"hostname shmslice-test-container && {sys.executable} {script}")
    done = subprocess.run(["unshare", "--mount", "--uts", "sh", "-c", shell], capture_output=True,
                          text=True, timeout=60, env=child_env(), check=False)
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"cannot make namespaces here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("stale:"), done.stdout
    assert "another container" in done.stdout and "shmslice-test-container" in done.stdout


def test_other_errors_serving_a_descriptor_are_deferred_too(path: Path, lock_dir: Path) -> None:
    """A worker that cannot serve a descriptor for another reason (here its
    file's lock table is corrupt) fails the task at first use, as for stale ones."""
    with shmslice.open(path, "r", lock_dir=lock_dir) as mf:
        data = pickle.dumps(mf[0:16])
        table = mf.lock_manager.table_path
    Path(table).write_bytes(b"garbage!" * 1024)
    s = pickle.loads(data)
    with pytest.raises(shmslice.CorruptLockTable, match="bad magic"):
        bytes(s)
    with pytest.raises(shmslice.CorruptLockTable, match="bad magic"):
        s.view()
    with multiprocessing.get_context("spawn").Pool(1) as pool, \
            pytest.raises(shmslice.CorruptLockTable):
        pool.apply_async(_stale_task, (s,)).get(timeout=60)
