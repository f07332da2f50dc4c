"""LockManager in one process: the API contract, threads, tables on disk."""

from __future__ import annotations

import os
import pickle
import stat
import threading
import time
from pathlib import Path

import pytest

import shmslice
from shmslice.locks import table_path_for


@pytest.fixture
def mgr(data_file: Path, lock_dir: Path):
    m = shmslice.LockManager(data_file, lock_dir=lock_dir)
    yield m
    m.close()


# -- argument validation ---------------------------------------------------------

@pytest.mark.parametrize(("args", "exc", "word"), [
    (("0", 10), TypeError, "start"),
    ((0, 10.0), TypeError, "end"),
    ((True, 10), TypeError, "start"),
    ((-1, 10), ValueError, "start"),
    ((10, 10), ValueError, "end"),
    ((10, 5), ValueError, "end"),
    ((0, 2**63), ValueError, "end"),
])
def test_bad_regions(mgr, args, exc, word):
    with pytest.raises(exc, match=word):
        mgr.lock(*args)
    with pytest.raises(exc, match=word):
        mgr.pin(*args)


@pytest.mark.parametrize(("kwargs", "exc", "word"), [
    ({"mode": "write"}, ValueError, "mode"),
    ({"mode": 2}, TypeError, "mode"),
    ({"timeout": -1}, ValueError, "timeout"),
    ({"timeout": float("nan")}, ValueError, "timeout"),
    ({"timeout": "1"}, TypeError, "timeout"),
])
def test_bad_mode_and_timeout(mgr, kwargs, exc, word):
    with pytest.raises(exc, match=word):
        mgr.lock(0, 10, **kwargs)
    assert mgr.locks() == []


def test_bad_constructor_arguments(data_file, lock_dir, tmp_path):
    with pytest.raises(TypeError, match="path"):
        shmslice.LockManager(42)
    with pytest.raises(TypeError, match="lock_dir"):
        shmslice.LockManager(data_file, lock_dir=3)
    with pytest.raises(FileNotFoundError):
        shmslice.LockManager(tmp_path / "missing", lock_dir=lock_dir)
    with pytest.raises(IsADirectoryError):
        shmslice.LockManager(tmp_path, lock_dir=lock_dir)


def test_numpy_style_integers_are_accepted(mgr):
    class Index:
        def __init__(self, v):
            self.v = v

        def __index__(self):
            return self.v

    with mgr.lock(Index(3), Index(9)) as lk:
        assert (lk.start, lk.end) == (3, 9)


def test_use_after_close(data_file, lock_dir):
    m = shmslice.LockManager(data_file, lock_dir=lock_dir)
    lk = m.lock(0, 10)
    m.close()
    m.close()   # idempotent
    lk.release()   # the close released it already; harmless
    with pytest.raises(ValueError, match="closed"):
        m.lock(0, 10)
    with pytest.raises(ValueError, match="closed"):
        m.locks()


# -- basic semantics -------------------------------------------------------------

def test_lock_release_and_info(mgr):
    lk = mgr.lock(100, 200, mode="shared")
    assert (lk.start, lk.end, lk.mode, lk.locked) == (100, 200, "shared", True)
    [info] = mgr.locks()
    assert (info.start, info.end, info.kind, info.pid, info.count, info.alive) == (
        100, 200, "shared", os.getpid(), 1, True)
    lk.release()
    lk.release()
    assert not lk.locked and mgr.locks() == []


def test_context_manager(mgr):
    with mgr.lock(0, 10) as lk:
        assert lk.locked
    assert mgr.locks() == []
    with shmslice.LockManager(mgr.path, lock_dir=os.path.dirname(mgr.table_path)) as other:
        other.lock(0, 10, timeout=0).release()


def test_try_lock_and_timeout(mgr, data_file, lock_dir):
    other = shmslice.LockManager(data_file, lock_dir=lock_dir)
    # Held by another thread: held by this one (through any manager), a
    # blocking request would be DeadlockError instead of a wait.
    box: list = []
    taker = threading.Thread(target=lambda: box.append(other.lock(0, 100)))
    taker.start()
    taker.join(10)
    held = box[0]
    t0 = time.monotonic()
    with pytest.raises(shmslice.LockTimeout) as err:
        mgr.lock(50, 60, timeout=0)
    assert time.monotonic() - t0 < 0.05
    assert isinstance(err.value, TimeoutError) and str(os.getpid()) in str(err.value)
    t0 = time.monotonic()
    with pytest.raises(shmslice.LockTimeout):
        mgr.lock(50, 60, mode="shared", timeout=0.2)
    waited = time.monotonic() - t0
    assert 0.19 <= waited < 1.0
    # Disjoint and adjacent regions do not conflict.
    mgr.lock(100, 200, timeout=0).release()
    held.release()
    mgr.lock(50, 60, timeout=0).release()
    other.close()


def test_shared_locks_are_compatible_exclusive_are_not(mgr, data_file, lock_dir):
    other = shmslice.LockManager(data_file, lock_dir=lock_dir)
    a = mgr.lock(0, 100, mode="shared")
    b = other.lock(50, 150, mode="shared", timeout=0)
    with pytest.raises(shmslice.LockTimeout):
        other.lock(99, 100, mode="exclusive", timeout=0)
    a.release()
    with pytest.raises(shmslice.LockTimeout):
        mgr.lock(0, 51, mode="exclusive", timeout=0)
    mgr.lock(0, 50, mode="exclusive", timeout=0).release()
    b.release()
    other.close()


def test_two_lock_objects_in_one_thread_deadlock_is_reported(mgr):
    held = mgr.lock(0, 100)
    t0 = time.monotonic()
    with pytest.raises(shmslice.DeadlockError, match="deadlock"):
        mgr.lock(10, 20, mode="shared")   # timeout=None would hang forever
    assert time.monotonic() - t0 < 0.5
    with pytest.raises(shmslice.LockTimeout):
        mgr.lock(10, 20, timeout=0)
    held.release()


def test_threads_conflict_like_processes(mgr):
    held = mgr.lock(0, 100)
    result = {}

    def other_thread():
        t0 = time.monotonic()
        lk = mgr.lock(0, 100, timeout=5)   # another thread: waits, no DeadlockError
        result["waited"] = time.monotonic() - t0
        lk.release()

    t = threading.Thread(target=other_thread)
    t.start()
    time.sleep(0.2)
    assert "waited" not in result
    held.release()
    t.join(5)
    assert 0.15 <= result["waited"] < 5


def test_many_threads_mutual_exclusion(mgr):
    inside = [0]
    violations = []
    guard = threading.Lock()

    def worker():
        for _ in range(200):
            with mgr.lock(0, 64, timeout=10):
                with guard:
                    inside[0] += 1
                    if inside[0] != 1:
                        violations.append(inside[0])
                time.sleep(0)
                with guard:
                    inside[0] -= 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert violations == [] and mgr.locks() == []


def test_pins_count_and_do_not_conflict(mgr):
    refs = [mgr.pin(0, 4096) for _ in range(3)]
    with mgr.lock(0, 4096, timeout=0):
        pass
    [info] = mgr.locks()
    assert (info.kind, info.count) == ("pin", 3)
    assert mgr.reaching_beyond(4095).kind == "pin"
    assert mgr.reaching_beyond(4096) is None
    for r in refs:
        mgr.unpin(r)
    assert mgr.locks() == []
    with pytest.raises(ValueError, match="not held"):
        mgr.unpin(refs[0])


def test_resize_refused_past_a_pin(mgr, data_file):
    ref = mgr.pin(1000, 2000)
    with pytest.raises(BufferError, match=str(os.getpid())):
        mgr.resize_file(1500)
    mgr.resize_file(2000)
    assert os.path.getsize(data_file) == 2000 and mgr.recorded_size() == 2000
    mgr.unpin(ref)
    epoch = mgr.size_epoch()
    mgr.resize_file(10)
    assert os.path.getsize(data_file) == 10 and mgr.size_epoch() == epoch + 1


def test_exceptions_pickle():
    for exc in (shmslice.LockTimeout("t", "/p"), shmslice.CorruptLockTable("c", "/t"),
                shmslice.LockTableFull("f"), shmslice.DeadlockError("d"),
                shmslice.UnsafeLockTable("u", "/x"), shmslice.StaleDescriptor("s", "/y")):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc) and back.path == exc.path
        assert isinstance(back, shmslice.ShmSliceError)
    assert issubclass(shmslice.LockTimeout, TimeoutError)


# -- the table on disk -----------------------------------------------------------

def test_same_table_through_hard_link_symlink_and_rename(data_file, lock_dir, tmp_path):
    hard = tmp_path / "hard.bin"
    os.link(data_file, hard)
    soft = tmp_path / "soft.bin"
    soft.symlink_to(data_file)
    a = shmslice.LockManager(data_file, lock_dir=lock_dir)
    held = a.lock(0, 10)
    for alias in (hard, soft):
        with shmslice.LockManager(alias, lock_dir=lock_dir) as b:
            assert b.table_path == a.table_path
            with pytest.raises(shmslice.LockTimeout):
                b.lock(5, 6, timeout=0)
    renamed = tmp_path / "renamed.bin"
    os.rename(data_file, renamed)
    with shmslice.LockManager(renamed, lock_dir=lock_dir) as c:
        assert c.table_path == a.table_path
        with pytest.raises(shmslice.LockTimeout):
            c.lock(5, 6, timeout=0)
    held.release()
    a.close()


def test_table_persists_and_has_data_file_permissions(data_file, lock_dir):
    os.chmod(data_file, 0o640)
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as m:
        path = m.table_path
    assert os.path.exists(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as m:
        assert m.table_path == path and m.locks() == []


def test_symlink_at_table_path_is_refused(data_file, lock_dir, tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.symlink(victim, table_path_for(data_file, lock_dir))
    with pytest.raises(shmslice.UnsafeLockTable, match="symbolic link"):
        shmslice.LockManager(data_file, lock_dir=lock_dir)
    assert victim.read_bytes() == b"precious"


def test_symlinked_default_dir_is_refused(data_file, tmp_path, monkeypatch):
    import shmslice._paths as paths

    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    monkeypatch.setattr(paths, "default_lock_dir", lambda: str(link))
    monkeypatch.delenv("SHMSLICE_DIR")
    with pytest.raises(shmslice.UnsafeLockTable, match="symbolic link"):
        shmslice.LockManager(data_file)


def test_world_writable_dir_without_sticky_bit_is_refused(data_file, tmp_path):
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)
    with pytest.raises(shmslice.UnsafeLockTable, match="sticky"):
        shmslice.LockManager(data_file, lock_dir=d)


def test_corrupt_table_raises_naming_the_table(data_file, lock_dir):
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as m:
        path = m.table_path
    with open(path, "r+b") as f:
        f.write(b"garbage!")
    with pytest.raises(shmslice.CorruptLockTable, match="magic") as err:
        shmslice.LockManager(data_file, lock_dir=lock_dir)
    assert err.value.path == path
    os.truncate(path, 100)
    with pytest.raises(shmslice.CorruptLockTable, match="truncated"):
        shmslice.LockManager(data_file, lock_dir=lock_dir)


def test_foreign_table_is_refused(data_file, lock_dir, tmp_path):
    other = tmp_path / "other.bin"
    other.write_bytes(b"x" * 100)
    with shmslice.LockManager(other, lock_dir=lock_dir) as m:
        foreign = m.table_path
    os.replace(foreign, table_path_for(data_file, lock_dir))
    with pytest.raises(shmslice.CorruptLockTable, match="another file"):
        shmslice.LockManager(data_file, lock_dir=lock_dir)


def test_table_full(data_file, lock_dir):
    """One process reaches its share (the ceiling less the reserve) with
    locks; then neither a lock nor a pin is granted until it releases one."""
    m = shmslice.LockManager(data_file, lock_dir=lock_dir, max_entries=16)
    assert m.stat().reserve == 1
    held = [m.lock(i * 10, i * 10 + 5, mode="shared") for i in range(15)]
    with pytest.raises(shmslice.LockTableFull, match="holds 15 entries, the most one process"):
        m.lock(1000, 1001)
    with pytest.raises(shmslice.LockTableFull):
        m.pin(1000, 1001)
    held.pop().release()
    m.lock(1000, 1001).release()
    assert len(m.locks()) == 14
    m.close()


def test_lock_dir_from_environment(data_file, tmp_path, monkeypatch):
    env_dir = tmp_path / "from-env"
    monkeypatch.setenv("SHMSLICE_DIR", str(env_dir))
    with shmslice.LockManager(data_file) as m:
        assert os.path.dirname(m.table_path) == str(env_dir)
    assert stat.S_IMODE(os.stat(env_dir).st_mode) == 0o700


def test_read_only_opener_cannot_take_exclusive_locks(data_file, lock_dir):
    if os.geteuid() == 0:
        pytest.skip("root can write any file; covered by the setuid test in test_faults_security")
    os.chmod(data_file, 0o444)
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as m:
        assert not m.writable
        with pytest.raises(PermissionError, match="shared"):
            m.lock(0, 10)
        m.lock(0, 10, mode="shared").release()


# -- the C fast path (csrc/fastpath.c) ----------------------------------------------

def test_fast_path_argument_forms(mgr):
    with mgr.lock(0, 10) as a, mgr.lock(10, 20, "shared") as b, \
            mgr.lock(20, 30, "exclusive", 0) as c, mgr.lock(end=40, start=30, timeout=1.5) as d:
        assert [(lk.start, lk.end, lk.mode) for lk in (a, b, c, d)] == [
            (0, 10, "exclusive"), (10, 20, "shared"), (20, 30, "exclusive"), (30, 40, "exclusive")]
        assert repr(a) == "<shmslice.RegionLock exclusive [0, 10) locked>"
    assert repr(a).endswith("released>") and not a.locked
    with pytest.raises(TypeError, match="unexpected keyword"):
        mgr.lock(0, 10, wait=True)
    with pytest.raises(TypeError, match="multiple values"):
        mgr.lock(0, 10, start=0)
    with pytest.raises(TypeError):
        mgr.lock(0, 10, "shared", None, 5)
    with pytest.raises(TypeError):
        mgr.lock(0)
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(mgr.lock(50, 60))
    with pytest.raises(TypeError):
        shmslice.RegionLock()
    assert mgr.locks()[0].start == 50


def test_closing_while_another_thread_waits(data_file, lock_dir):
    m = shmslice.LockManager(data_file, lock_dir=lock_dir)
    other = shmslice.LockManager(data_file, lock_dir=lock_dir)
    held = other.lock(0, 10)
    errors = []

    def waiter():
        try:
            m.lock(0, 10, timeout=30)
        except ValueError as err:   # the manager was closed under it
            errors.append(err)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    m.close()
    t.join(10)
    assert not t.is_alive() and len(errors) == 1 and "closed" in str(errors[0])
    assert time.monotonic() - t0 < 1.0
    held.release()
    other.close()


def test_lock_granted_without_memory_for_its_object_is_released(mgr) -> None:
    # The fast path takes the lock in C, then makes the RegionLock; if that
    # allocation fails nothing could release the lock, so it must not stay.
    _testcapi = pytest.importorskip("_testcapi")
    failed = False
    _testcapi.set_nomemory(0, 0)   # every allocation from here on fails
    try:
        mgr.lock(0, 10)
    except MemoryError:
        failed = True
    finally:
        _testcapi.remove_mem_hooks()
    assert failed
    assert mgr.locks() == []
    mgr.lock(0, 10, timeout=0).release()


def test_manager_in_a_garbage_cycle_stays_usable_until_cleared(data_file: Path, lock_dir: Path) -> None:
    # The collector runs every finalizer of a garbage cycle before clearing
    # any of it, cffi's ffi.gc one (ss_free) included.  The C handle must not
    # be freed under a manager that finalizers in the cycle can still use.
    import gc

    seen: list = []

    class Holder:
        def __del__(self) -> None:
            self.lk.release()
            try:
                self.mgr.lock(0, 10, timeout=0).release()
                seen.append("ok")
            except ValueError as err:   # "the lock manager is closed": handle freed
                seen.append(str(err))

    m = shmslice.LockManager(data_file, lock_dir=lock_dir)
    h = Holder()
    h.mgr = m
    h.lk = m.lock(0, 10)
    m.holder = h
    del h, m
    gc.collect()
    assert seen == ["ok"]


def test_init_twice_is_refused(mgr, data_file, lock_dir):
    held = mgr.lock(0, 10)
    with pytest.raises(RuntimeError, match="twice"):
        mgr.__init__(data_file, lock_dir=lock_dir)
    assert held.locked and mgr.locks()[0].start == 0
    held.release()
