"""MappedFile and ByteBufferSlice in one process: API, validation, pins, models."""

from __future__ import annotations

import gc
import os
import pickle
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shmslice
from shmslice import ByteBufferSlice, LockManager, MappedFile, StaleDescriptor
from shmslice.slices import exported_views
from tests.support import wait_pid

SIZE = 1 << 16


def pins(m: MappedFile) -> list[tuple[int, int, int, int]]:
    return [(i.start, i.end, i.pid, i.count) for i in m.locks() if i.kind == "pin"]


# -- opening -------------------------------------------------------------------------
def test_open_modes_and_properties(path: Path, lock_dir: Path, content: bytes) -> None:
    with shmslice.open(path, lock_dir=lock_dir) as m:
        assert isinstance(m, MappedFile)
        assert (m.path, m.size, len(m), m.readonly, m.closed, m.mode) == \
            (str(path), SIZE, SIZE, True, False, "r")
        assert m[0] == content[0] and m[-1] == content[-1]
    assert m.closed
    with shmslice.open(str(path), "r+", lock_dir=lock_dir) as m:
        assert not m.readonly
        m[0:4] = b"WXYZ"
    assert path.read_bytes()[:4] == b"WXYZ"


def test_open_w_plus_creates_and_truncates(tmp_path: Path, lock_dir: Path) -> None:
    p = tmp_path / "new.bin"
    with shmslice.open(p, "w+", size=10000, lock_dir=lock_dir) as m:
        assert len(m) == 10000 and bytes(m[:]) == bytes(10000)
        m[:5] = b"hello"
    assert p.stat().st_size == 10000
    with shmslice.open(p, "w+", size=100, lock_dir=lock_dir) as m:
        assert bytes(m[:]) == bytes(100)   # truncated: old contents gone
    assert p.stat().st_size == 100


def test_w_plus_refuses_to_truncate_a_file_in_use(path: Path, lock_dir: Path) -> None:
    with shmslice.open(path, "r", lock_dir=lock_dir) as m:
        s = m[100:200]
        with pytest.raises(BufferError, match=str(os.getpid())):
            shmslice.open(path, "w+", size=10, lock_dir=lock_dir)
        assert bytes(s) == path.read_bytes()[100:200]


@pytest.mark.parametrize("mode", ["r", "r+"])
def test_open_errors_name_the_path(tmp_path: Path, lock_dir: Path, mode: str) -> None:
    missing = tmp_path / "missing.bin"
    with pytest.raises(FileNotFoundError) as ei:
        shmslice.open(missing, mode, lock_dir=lock_dir)
    assert ei.value.filename == str(missing)
    with pytest.raises(IsADirectoryError) as ei:
        shmslice.open(tmp_path, mode, lock_dir=lock_dir)
    assert ei.value.filename == str(tmp_path)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.*'w\+'") as ei2:
        shmslice.open(empty, mode, lock_dir=lock_dir)
    assert str(empty) in str(ei2.value)


def _check_permissions(d: str, lock_dir: str) -> None:
    ro, none = os.path.join(d, "ro.bin"), os.path.join(d, "none.bin")
    with pytest.raises(PermissionError) as ei:
        shmslice.open(ro, "r+", lock_dir=lock_dir)
    assert ei.value.filename == ro
    with shmslice.open(ro, "r", lock_dir=lock_dir) as m:     # readable: fine, read-only
        assert m.readonly and bytes(m[:3]) == b"xxx"
    with pytest.raises(PermissionError) as ei:
        shmslice.open(none, "r", lock_dir=lock_dir)
    assert ei.value.filename == none


def test_open_without_permission() -> None:
    import shutil
    import tempfile
    d = tempfile.mkdtemp(prefix="shmslice-perm-")   # not under pytest's 0700 directory
    try:
        os.chmod(d, 0o755)
        for name, mode in (("ro.bin", 0o444), ("none.bin", 0)):
            Path(d, name).write_bytes(b"x" * 100)
            os.chmod(os.path.join(d, name), mode)
        locks = os.path.join(d, "locks")
        os.mkdir(locks)
        os.chmod(locks, 0o1777)                     # shared lock dirs must be sticky
        if os.geteuid() != 0:
            _check_permissions(d, locks)
            return
        # root ignores permission bits: check as 'nobody' in a forked child.
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                _check_permissions(d, locks)
                code = 0
            except BaseException as err:   # reported through the exit code and stderr
                os.write(2, f"{err!r}\n".encode())
            finally:
                os._exit(code)
        status = wait_pid(pid, 60, what="the permission-check child")
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        shutil.rmtree(d)


def test_open_argument_validation(path: Path, lock_dir: Path) -> None:
    with pytest.raises(TypeError, match="path"):
        shmslice.open(123, lock_dir=lock_dir)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'r', 'r\\+' or 'w\\+'"):
        shmslice.open(path, "rw", lock_dir=lock_dir)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="mode"):
        shmslice.open(path, 1, lock_dir=lock_dir)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size"):
        shmslice.open(path, "w+", lock_dir=lock_dir)
    with pytest.raises(ValueError, match="> 0"):
        shmslice.open(path, "w+", size=0, lock_dir=lock_dir)
    with pytest.raises(TypeError, match="size"):
        shmslice.open(path, "w+", size=1.5, lock_dir=lock_dir)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"only for mode 'w\+'"):
        shmslice.open(path, "r", size=10, lock_dir=lock_dir)
    with pytest.raises(TypeError, match=r"shmslice\.open"):
        MappedFile()
    with pytest.raises(TypeError, match="slicing a MappedFile"):
        ByteBufferSlice()


# -- indexing, slicing, writing ----------------------------------------------------
def test_slices_are_zero_copy_and_absolute(mf: MappedFile, content: bytes) -> None:
    s = mf[4096:8192]
    assert (s.start, s.end, len(s), s.readonly, s.base) == (4096, 8192, 4096, False, mf)
    t = s[100:200]
    assert (t.start, t.end) == (4196, 4296)
    assert t == content[4196:4296] and bytes(t) == t.tobytes() == content[4196:4296]
    assert mf.slice(4096, 8192) == s
    t[0:3] = b"abc"                     # writes go to the shared mapping
    assert bytes(s[100:103]) == b"abc" and mf[4196] == ord("a")
    v = s.view()
    assert v.obj is not None and not v.readonly and v[100:103] == b"abc"
    v[100] = ord("z")
    assert mf[4196] == ord("z")


def test_indexing_errors(mf: MappedFile) -> None:
    s = mf[0:10]
    with pytest.raises(IndexError):
        s[10]
    with pytest.raises(IndexError):
        s[-11]
    with pytest.raises(IndexError):
        mf[SIZE]
    with pytest.raises(TypeError, match="integers or slices"):
        s[1.0]  # type: ignore[index]
    with pytest.raises(TypeError, match="integers or slices"):
        mf["a"]  # type: ignore[index]
    with pytest.raises(ValueError, match=r"view\(\)\[::2\]"):
        s[::2]
    with pytest.raises(ValueError, match=r"view\(\)\[::-1\]"):
        mf[::-1]
    assert s.view()[::2].tobytes() == bytes(s)[::2]


def test_write_errors(mf: MappedFile, path: Path, lock_dir: Path) -> None:
    s = mf[0:10]
    with pytest.raises(ValueError, match="lengths must match"):
        s[0:3] = b"ab"
    with pytest.raises(ValueError, match="lengths must match"):
        mf[0:3] = b"abcd"
    with pytest.raises(TypeError, match="bytes-like"):
        s[0:2] = "ab"
    with pytest.raises(ValueError, match="range"):
        s[0] = 256
    with pytest.raises(TypeError):
        s[0] = b"a"
    s[-1] = 7
    assert mf[9] == 7
    mf[20] = 8
    assert mf[20] == 8
    with shmslice.open(path, "r", lock_dir=lock_dir) as ro:
        r = ro[0:10]
        with pytest.raises(TypeError, match=r"read-only.*r\+"):
            r[0:1] = b"x"
        with pytest.raises(TypeError, match="read-only"):
            ro[0] = 1
        assert r.view().readonly
        with pytest.raises(TypeError, match="read-only"):
            ro.resize(10)


def test_use_after_release_and_close(mf: MappedFile, path: Path, lock_dir: Path) -> None:
    s = mf[0:10]
    s.release()
    s.release()    # twice is harmless
    assert s.released
    for op in (lambda: bytes(s), lambda: s[0], lambda: s[0:1], s.view, lambda: len(s),
               lambda: pickle.dumps(s), lambda: s.__setitem__(0, 1), lambda: s == b"x"):
        with pytest.raises(ValueError, match="released"):
            op()
    m2 = shmslice.open(path, "r", lock_dir=lock_dir)
    t = m2[0:10]
    m2.close()
    m2.close()
    with pytest.raises(ValueError, match="closed"):
        bytes(t)
    with pytest.raises(ValueError, match="closed"):
        m2[0:1]
    with pytest.raises(ValueError, match="closed"):
        m2[0]
    with pytest.raises(ValueError, match="closed"):
        len(m2)


def test_empty_slices_follow_bytes(mf: MappedFile) -> None:
    for s in (mf[10:5], mf[SIZE:], mf[5:5], mf[0:10][7:3]):
        assert len(s) == 0 and bytes(s) == b"" and s == b""
        assert len(s.view()) == 0
    assert pins(mf) == []


def test_equality_and_containment(mf: MappedFile, content: bytes) -> None:
    s = mf[0:100]
    assert s == content[:100] and s == bytearray(content[:100]) and s == memoryview(content[:100])
    assert s != content[1:101] and s != 5
    assert s == mf[0:100] and s != mf[1:101]
    assert content[50:53] in s and content[150:153] not in mf[0:100][:50]
    assert content[3] in s
    with pytest.raises(TypeError):
        hash(s)
    assert list(s[:20]) == list(content[:20])


# -- pins ------------------------------------------------------------------------------
def test_every_slice_and_view_holds_one_pin(mf: MappedFile) -> None:
    me = os.getpid()
    s = mf[100:200]
    assert pins(mf) == [(100, 200, me, 1)]
    t = mf[100:200]
    v = s.view()
    assert pins(mf) == [(100, 200, me, 3)]
    w = v[10:20]        # a slice of a view shares its pin
    del v
    assert pins(mf) == [(100, 200, me, 3)]
    s.release()
    t.release()
    assert pins(mf) == [(100, 200, me, 1)]
    assert bytes(w) == bytes(mf[110:120])
    del w
    assert pins(mf) == []
    with mf[0:10] as u:
        assert pins(mf) == [(0, 10, me, 1)]
        sub = u[2:4]
    assert pins(mf) == [(2, 4, me, 1)]
    del sub
    gc.collect()
    assert pins(mf) == []


def test_bound_enter_and_exit_hold_their_slice(mf: MappedFile) -> None:
    """__enter__/__exit__ bound from a slice keep it alive and act on it alone,
    however they are held, called or dropped (the with statement binds both)."""
    me = os.getpid()
    s = mf[0:10]
    enter, leave = s.__enter__, s.__exit__
    assert repr(enter).startswith("<bound method ByteBufferSlice.__enter__ of ")
    assert repr(leave).startswith("<bound method ByteBufferSlice.__exit__ of ")
    t = mf[20:30]
    t_enter, t_leave = t.__enter__, t.__exit__
    del s, t
    gc.collect()
    assert sorted(pins(mf)) == [(0, 10, me, 1), (20, 30, me, 1)]   # held by their methods
    u = enter()
    assert (u.start, u.end) == (0, 10) and t_enter().start == 20
    with pytest.raises(TypeError, match="takes no arguments"):
        enter(1)
    with pytest.raises(TypeError, match="takes no arguments"):
        enter(x=1)
    assert leave(None, None, None) is None
    assert u.released and pins(mf) == [(20, 30, me, 1)]
    assert leave() is None                        # twice: a no-op, as release() is
    with pytest.raises(ValueError, match="was released"):
        enter()
    del u, enter, leave
    assert pins(mf) == [(20, 30, me, 1)]
    t_leave(ValueError, ValueError("x"), None)
    assert pins(mf) == []
    del t_enter, t_leave
    # rebinding after the bound methods went, and nesting the same slice
    v = mf[40:50]
    for _ in range(3):
        with v as w:
            assert w is v
            with v as x:
                assert x is v and not v.released
            assert v.released
        v = mf[40:50]
    with pytest.raises(RuntimeError, match="inside"), v:
        raise RuntimeError("inside")                   # __exit__ lets it propagate
    assert v.released
    descr = ByteBufferSlice.__dict__["__exit__"]
    with pytest.raises(TypeError, match="cannot bind a 'bytes'"):
        descr.__get__(b"abc", bytes)
    assert descr.__get__(None, ByteBufferSlice) is descr
    with pytest.raises(TypeError):
        type(mf[0:1].__exit__)()


def test_garbage_collection_releases_pins(mf: MappedFile) -> None:
    chunks = mf.split(1000)
    assert len(chunks) == (SIZE + 999) // 1000
    assert [(c.start, c.end) for c in chunks][:2] == [(0, 1000), (1000, 2000)]
    assert chunks[-1].end == SIZE
    assert len(pins(mf)) == len(chunks)
    del chunks
    assert pins(mf) == []
    with pytest.raises(ValueError, match="chunk_size"):
        mf.split(0)
    with pytest.raises(TypeError):
        mf.split(1.5)  # type: ignore[arg-type]


def test_strict_close_refused_while_views_alive(path: Path, lock_dir: Path) -> None:
    m = shmslice.open(path, "r+", lock_dir=lock_dir)
    s = m[0:100]
    v = s.view()[10:20]
    s.release()
    with pytest.raises(BufferError, match=r"1 buffer export\(s\).*1 memoryview\(s\) from view\(\)"):
        m.close(strict=True)
    assert not m.closed and bytes(v) == path.read_bytes()[10:20]
    del v
    t = m[0:50]
    m.close(strict=True)
    assert m.closed and t.released
    with LockManager(path, lock_dir=lock_dir) as mgr:
        assert mgr.locks() == []   # close() released the slice's pin


def test_close_with_live_views_defers_the_unmap(path: Path, lock_dir: Path) -> None:
    with shmslice.open(path, "r+", lock_dir=lock_dir) as m:
        s = m[0:100]
        t = m[200:300]
        v = s.view()[10:20]
        mm = m._mmap
    # Leaving the block did not raise: the file is closed for new slices, its
    # slices lost their pins, the view kept its own pin and the mapping.
    assert m.closed and s.released and t.released and not mm.closed
    with pytest.raises(ValueError, match="closed"):
        m[0:10]
    with pytest.raises(ValueError, match="closed"):
        memoryview(s)
    with LockManager(path, lock_dir=lock_dir) as other:
        assert [(i.start, i.end, i.count) for i in other.locks()] == [(0, 100, 1)]
        assert bytes(v) == path.read_bytes()[10:20]
        v[0] = 0x55                            # still the shared mapping
        assert path.read_bytes()[10] == 0x55
        del v                                  # the last export: unmap and detach now
        assert mm.closed and m.lock_manager.closed
        assert other.locks() == []


def test_locks_through_mapped_file_and_slice(mf: MappedFile) -> None:
    s = mf[0:100]
    with s.lock(timeout=1) as lk:
        assert (lk.start, lk.end, lk.mode) == (0, 100, "exclusive")
        kinds = sorted(i.kind for i in mf.locks())
        assert kinds == ["exclusive", "pin"]
        with pytest.raises(shmslice.LockTimeout):
            mf.lock(50, 60, timeout=0)
    with mf.lock(50, 60, "shared", timeout=1):
        pass
    with pytest.raises(ValueError, match="empty"):
        mf[5:5].lock()


def test_flush_reaches_the_file(mf: MappedFile, path: Path) -> None:
    s = mf[5000:5010]
    s[:] = b"0123456789"
    s.flush()
    mf[10:12] = b"ab"
    mf.flush()
    with builtins_open(path) as f:
        data = f.read()
    assert data[5000:5010] == b"0123456789" and data[10:12] == b"ab"


def builtins_open(p: Path):
    import builtins
    return builtins.open(p, "rb")


# -- resize ------------------------------------------------------------------------------
def test_resize_grow_and_shrink(mf: MappedFile, path: Path) -> None:
    mf.resize(SIZE * 2)
    assert len(mf) == SIZE * 2 and path.stat().st_size == SIZE * 2
    s = mf[SIZE * 2 - 10:]
    s[:] = b"x" * 10
    with pytest.raises(BufferError, match=f"pid {os.getpid()} holds a pin"):
        mf.resize(SIZE)
    v = s.view()
    s.release()
    with pytest.raises(BufferError, match="pin"):
        mf.resize(SIZE)          # the view still pins
    del v
    mf.resize(SIZE)
    assert len(mf) == SIZE and path.stat().st_size == SIZE
    assert bytes(mf[SIZE - 3:SIZE + 100]) == path.read_bytes()[-3:]
    with pytest.raises(ValueError, match="new_size"):
        mf.resize(-1)
    with pytest.raises(TypeError):
        mf.resize("1")  # type: ignore[arg-type]


def test_resize_to_zero_and_back(mf: MappedFile) -> None:
    mf.resize(0)
    assert len(mf) == 0 and bytes(mf[:]) == b""
    with pytest.raises(IndexError):
        mf[0]
    mf.resize(10)
    assert bytes(mf[:]) == bytes(10)


def test_resize_by_someone_else_is_noticed(mf: MappedFile, path: Path, lock_dir: Path) -> None:
    """Another LockManager (as another process would) resizes: no SIGBUS, a remap."""
    assert len(mf) == SIZE
    other = LockManager(path, lock_dir=lock_dir)
    try:
        other.resize_file(SIZE * 3)
        assert len(mf) == SIZE * 3
        tail = mf[-5:]
        assert (tail.start, tail.end) == (SIZE * 3 - 5, SIZE * 3) and bytes(tail) == bytes(5)
        tail.release()
        other.resize_file(100)
        # mf still believes it has 3*SIZE bytes mapped; every path notices first.
        s = mf[:]
        assert (s.start, s.end) == (0, 100)
        with pytest.raises(BufferError, match=f"pid {os.getpid()} holds a pin on \\[0, 100\\)"):
            other.resize_file(50)
        s.release()
        other.resize_file(50)
        assert mf._size == 100             # not looked yet
        # The hot path pins, then sees the resize counter moved: it unpins,
        # refreshes and clamps like bytes before a slice exists.
        stale = mf[60:90]
        assert (stale.start, stale.end) == (50, 50) and bytes(stale) == b""
        assert mf._size == 50
        assert mf[40:90].end == 50         # the slow path re-clamps
        other.resize_file(SIZE)
        assert mf[SIZE - 1] == 0 and len(mf) == SIZE
    finally:
        other.close()


# -- pickling in one process ----------------------------------------------------------
def test_pickle_is_a_small_descriptor(mf: MappedFile) -> None:
    s = mf[:]
    data = pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL)
    assert len(data) < 1024
    mf[0:16] = b"S" * 16
    assert b"S" * 16 not in data
    t = pickle.loads(data)
    assert t.base is mf and (t.start, t.end) == (0, SIZE) and t == s
    assert pins(mf) == [(0, SIZE, os.getpid(), 2)]
    import copy
    u = copy.copy(s[10:20])
    assert (u.start, u.end) == (10, 20)
    with pytest.raises(TypeError, match="slices"):
        pickle.dumps(mf)


def test_stale_descriptors(path: Path, lock_dir: Path, tmp_path: Path) -> None:
    # Unpickling a stale descriptor succeeds; the slice raises at its first use.
    m = shmslice.open(path, "r+", lock_dir=lock_dir)
    data = pickle.dumps(m[1000:2000])
    m.resize(1500)
    stale = pickle.loads(data)
    assert isinstance(stale, ByteBufferSlice)
    with pytest.raises(StaleDescriptor, match="shrunk"):
        len(stale)
    with pytest.raises(StaleDescriptor, match="shrunk"):
        bytes(stale)
    with pytest.raises(ValueError, match="shrunk"):        # StaleDescriptor is a ValueError
        memoryview(stale)
    with pytest.raises(StaleDescriptor, match="shrunk"):
        pickle.dumps(stale)
    data = pickle.dumps(m[0:10])
    m.close()
    replacement = tmp_path / "replacement.bin"
    replacement.write_bytes(b"y" * 5000)
    os.replace(replacement, path)
    with pytest.raises(StaleDescriptor, match="replaced"):
        pickle.loads(data)[0]
    path.unlink()
    with pytest.raises(StaleDescriptor, match="no longer exists"):
        pickle.loads(data).view()


# -- numpy ---------------------------------------------------------------------------------
def test_numpy_interop(mf: MappedFile, content: bytes) -> None:
    np = pytest.importorskip("numpy")
    s = mf[0:4096]
    a = np.asarray(s)
    assert a.dtype == np.uint8 and a.shape == (4096,) and bytes(a[:10]) == content[:10]
    f = np.frombuffer(s.view(), dtype=np.uint32)
    a[0:4] = [1, 0, 0, 0]
    assert f[0] == 1 and mf[0] == 1            # same memory, no copy
    s.release()
    assert [p[3] for p in pins(mf)] == [2]    # the two arrays' pins
    with pytest.raises(BufferError, match="2 buffer export"):
        mf.close(strict=True)
    del a, f
    assert pins(mf) == []
    c = np.array(mf[0:8], copy=True)
    c[0] = 99
    assert mf[0] == 1


# -- hypothesis models -------------------------------------------------------------------
MODEL_SIZE = 512
index_st = st.integers(-MODEL_SIZE - 20, MODEL_SIZE + 20)
bound_st = st.one_of(st.none(), index_st)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("model")
    p = d / "model.bin"
    p.write_bytes(bytes(range(256)) * (MODEL_SIZE // 256))
    m = shmslice.open(p, "r+", lock_dir=d / "locks")
    yield m, p
    m.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.one_of(st.tuples(st.just("slice"), bound_st, bound_st),
                              st.tuples(st.just("index"), index_st)), max_size=6))
def test_model_nested_slicing_matches_bytes(model_file, ops) -> None:
    m, _ = model_file
    s: object = m[:]
    model: object = bytes(m[:])
    for op in ops:
        if op[0] == "slice":
            s, model = s[op[1]:op[2]], model[op[1]:op[2]]  # type: ignore[index]
        else:
            try:
                expected = model[op[1]]  # type: ignore[index]
            except IndexError:
                with pytest.raises(IndexError):
                    s[op[1]]  # type: ignore[index]
                continue
            except TypeError:          # model is already an int
                break
            s, model = s[op[1]], expected  # type: ignore[index]
            break
    if isinstance(model, int):
        assert s == model
    else:
        assert isinstance(s, ByteBufferSlice)
        assert bytes(s) == model and len(s) == len(model) and s == model


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(st.tuples(bound_st, bound_st, bound_st, bound_st, st.binary(max_size=8),
                                 st.integers(0, 255)), max_size=8))
def test_model_writes_match_bytearray(model_file, writes) -> None:
    m, p = model_file
    model = bytearray(bytes(m[:]))
    for a, b, c, d, fill_seed, byte in writes:
        outer, outer_model = m[a:b], memoryview(model)[slice(a, b)]
        inner, inner_model = outer[c:d], outer_model[slice(c, d)]
        data = (fill_seed or b"\x01") * (len(inner) // max(1, len(fill_seed)) + 1)
        data = data[:len(inner_model)]
        inner[:] = data
        inner_model[:] = data
        if len(inner):
            inner[-1] = byte
            inner_model[-1] = byte
        with pytest.raises(ValueError, match="lengths must match"):
            inner[:] = data + b"!"
        r = range(len(outer))[c:d]
        assert (inner.start, inner.end) == (outer.start + r.start,
                                            outer.start + max(r.start, r.stop))
        del outer_model, inner_model
    assert bytes(m[:]) == bytes(model)
    m.flush()
    assert p.read_bytes() == bytes(model)


def test_view_path(mf: MappedFile) -> None:
    # s.view() and memoryview(s) are the same export of the C type, on every version.
    s = mf[0:100]
    with s.view() as v:
        assert v.obj is s and type(v.obj).__name__ == "ByteBufferSlice"
    with memoryview(s) as v:
        assert v.obj is s and v.tobytes() == s.tobytes()


def test_threads_slicing_one_file(mf: MappedFile, content: bytes) -> None:
    import threading
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(300):
                a = (seed * 997 + i * 131) % (SIZE - 64)
                with mf[a:a + 64] as s:
                    v = s.view()
                    assert v[:8] == content[a:a + 8]     # writers only ever write these same bytes
                    sub = s[8:16]
                    sub[:] = content[a + 8:a + 16]       # same bytes: other readers unaffected
                    assert bytes(sub) == content[a + 8:a + 16]
                    v.release()
                    sub.release()
        except BaseException as err:  # collected and re-raised in the main thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert pins(mf) == [] and exported_views(mf) == 0
    assert bytes(mf[:]) == content


def test_read_only_view_cannot_be_written_through_its_exporter(path: Path, lock_dir: Path) -> None:
    with shmslice.open(path, "r", lock_dir=lock_dir) as ro:
        v = ro[0:4096].view()
        assert v.readonly
        with pytest.raises((TypeError, BufferError)):
            memoryview(v.obj)[0:1] = b"y"      # would write a PROT_READ page
        with pytest.raises(TypeError):
            v[0:1] = b"y"
        v.release()


def test_view_pins_until_the_last_derived_view_dies(mf: MappedFile) -> None:
    s = mf[0:4096]
    v = s.view()
    part = v[10:20]
    assert [(e.kind, e.count) for e in mf.locks()] == [("pin", 2)]
    v.release()                     # part still shares the export
    assert [(e.kind, e.count) for e in mf.locks()] == [("pin", 2)]
    with pytest.raises(BufferError):
        mf.close(strict=True)
    del part
    gc.collect()
    assert [(e.kind, e.count) for e in mf.locks()] == [("pin", 1)]
    s.release()
    assert mf.locks() == []


def test_view_in_a_cycle_through_its_manager_is_collected(path: Path, lock_dir: Path) -> None:
    # The view's exporter holds the manager; a cycle manager -> view -> manager
    # must still be collectable (the exporter takes part in garbage collection).
    import weakref

    m = shmslice.open(path, "r+", lock_dir=lock_dir)
    s = m[100:200]
    mgr = m._mgr
    mgr.keep = s.view()
    gone = weakref.ref(mgr)
    s.release()
    del s, m, mgr
    gc.collect()
    assert gone() is None, "manager kept alive by a collectable cycle through a view"


def test_slicing_out_of_memory_leaves_no_pin(mf: MappedFile) -> None:
    # The pin is taken before the slice object exists: if it cannot be made,
    # the pin must be dropped again.
    _testcapi = pytest.importorskip("_testcapi")
    s = mf[0:4096]
    failed = 0
    for start in (0, 10):
        _testcapi.set_nomemory(0, 0)
        try:
            if start:
                s[start:start + 100]
            else:
                mf[300:400]
        except MemoryError:
            failed += 1
        finally:
            _testcapi.remove_mem_hooks()
    assert failed == 2
    assert [(i.start, i.end) for i in mf.locks() if i.kind == "pin"] == [(0, 4096)]
