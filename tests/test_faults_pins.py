"""No public call drops a pin that a live slice or buffer depends on.

Each test ends with another process trying to shrink the file under the live
slice or buffer: it must be refused (``BufferError``), and the memory must
still be readable here.  Before the fixes the shrink succeeded and touching the
memory was SIGBUS.
"""

from __future__ import annotations

import os
import pickle
import textwrap
import threading
from pathlib import Path

import pytest

import shmslice
from tests.support import run_python

SIZE = 1 << 16


def _shrink_elsewhere(path: Path, lock_dir: Path, new_size: int = 0) -> str:
    """Try to shrink ``path`` from another process; what it printed ('refused: ...' or 'shrunk')."""
    code = textwrap.dedent(f"""
        import shmslice
        with shmslice.open({str(path)!r}, "r+", lock_dir={str(lock_dir)!r}) as mf:
            try:
                mf.resize({new_size})
            except BufferError as err:
                print("refused:", err)
            else:
                print("shrunk")
        """)
    done = run_python("-c", code, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_unpin_twice_through_the_api_keeps_the_slice_pin(path: Path, lock_dir: Path,
                                                         content: bytes) -> None:
    mf = shmslice.open(path, "r+", lock_dir=lock_dir)
    try:
        s = mf[0:4096]
        mgr = mf.lock_manager
        ref = mgr.pin(0, 4096)            # the same entry as the slice's pin
        ref2 = mgr.pin(0, 4096)
        assert ref == ref2
        mgr.unpin(ref)
        mgr.unpin(ref)
        with pytest.raises(ValueError, match="not held through this manager's pin"):
            mgr.unpin(ref)                # one too many: the slice's pin is not the API's
        [info] = [e for e in mgr.locks() if e.kind == "pin"]
        assert (info.start, info.end, info.count) == (0, 4096, 1)
        refusal = _shrink_elsewhere(path, lock_dir)
        assert refusal.startswith("refused:") and f"pid {os.getpid()}" in refusal
        assert bytes(s) == content[:4096]
    finally:
        mf.close()


def test_unpin_of_a_reference_never_handed_out(path: Path, lock_dir: Path) -> None:
    with shmslice.open(path, "r+", lock_dir=lock_dir) as mf:
        s = mf[100:200]
        mgr = mf.lock_manager
        probe = mgr.pin(100, 200)         # learn the entry's reference ...
        mgr.unpin(probe)
        with pytest.raises(ValueError, match="not held"):
            mgr.unpin(probe)              # ... it cannot be used to drop the slice's pin
        assert [e.count for e in mgr.locks()] == [1]
        s.release()
        assert mgr.locks() == []


def test_unpin_counts_per_reference_across_threads(data_file: Path, lock_dir: Path) -> None:
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        refs = [mgr.pin(0, 10) for _ in range(400)]
        errors: list[BaseException] = []
        start = threading.Barrier(4)

        def unpin_all(chunk: list[int]) -> None:
            start.wait(10)
            try:
                for r in chunk:
                    mgr.unpin(r)
            except BaseException as err:   # collected for the assertion below
                errors.append(err)

        threads = [threading.Thread(target=unpin_all, args=(refs[k::4],)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors and mgr.locks() == []
        with pytest.raises(ValueError, match="not held"):
            mgr.unpin(refs[0])


def test_forked_child_cannot_unpin_the_parents_pin(data_file: Path, lock_dir: Path) -> None:
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        ref = mgr.pin(0, 10)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                mgr.unpin(ref)
            except ValueError as err:
                code = 0 if "not held by this process" in str(err) else 2
            finally:
                os._exit(code)
        from tests.support import wait_pid
        assert os.waitstatus_to_exitcode(wait_pid(pid)) == 0
        assert [e.count for e in mgr.locks()] == [1]
        mgr.unpin(ref)


def test_closing_the_file_manager_keeps_exported_views(path: Path, lock_dir: Path,
                                                       content: bytes) -> None:
    mf = shmslice.open(path, "r+", lock_dir=lock_dir)
    view = memoryview(mf[0:SIZE])
    mf.lock_manager.close()               # dropped the view's pin before
    assert mf.closed and not mf.lock_manager.closed   # detaches at the view's end
    refusal = _shrink_elsewhere(path, lock_dir)
    assert refusal.startswith("refused:") and f"pid {os.getpid()}" in refusal
    assert bytes(view[:100]) == content[:100]
    mgr = mf.lock_manager
    view.release()
    assert mgr.closed                     # the last export finished the close
    assert _shrink_elsewhere(path, lock_dir) == "shrunk"


def test_closing_the_file_manager_keeps_numpy_arrays(path: Path, lock_dir: Path,
                                                     content: bytes) -> None:
    np = pytest.importorskip("numpy")
    mf = shmslice.open(path, "r+", lock_dir=lock_dir)
    arr = mf.ndarray(np.uint8, (SIZE,))
    s = mf[0:10]
    mf.lock_manager.close()
    with pytest.raises(ValueError, match="closed"):
        bytes(s)                          # slices are unusable, as after mf.close()
    assert _shrink_elsewhere(path, lock_dir, 100).startswith("refused:")
    assert bytes(arr[:100]) == content[:100]
    assert pickle.loads(pickle.dumps(arr[:10])).tobytes() == content[:10]
    del arr
    assert mf.lock_manager.closed


def test_closing_a_plain_manager_still_drops_its_pins(data_file: Path, lock_dir: Path) -> None:
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr, \
            shmslice.LockManager(data_file, lock_dir=lock_dir) as other:
        mgr.pin(0, 100)
        mgr.close()
        assert other.locks() == []
