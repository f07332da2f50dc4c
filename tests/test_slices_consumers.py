"""A ByteBufferSlice is a buffer for every consumer, on every supported Python, and
behaves like bytes for reading: consumers, type identity, bytes-like methods,
hashing, copying, close() with live exports."""

from __future__ import annotations

import copy
import gc
import hashlib
import io
import os
import pickle
import socket
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shmslice
from shmslice import ByteBufferSlice, MappedFile

SIZE = 1 << 16


def pins(m: MappedFile) -> dict[tuple[int, int], int]:
    return {(i.start, i.end): i.count for i in m.locks() if i.kind == "pin"}


# -- consumers ---------------------------------------------------------------------------
def test_read_consumers(mf: MappedFile, content: bytes, tmp_path: Path) -> None:
    s = mf[1000:5000]
    want = content[1000:5000]
    assert hashlib.sha256(s).digest() == hashlib.sha256(want).digest()
    h = hashlib.md5()
    h.update(s)
    assert h.digest() == hashlib.md5(want).digest()
    assert zlib.crc32(s) == zlib.crc32(want) and zlib.adler32(s) == zlib.adler32(want)
    assert zlib.decompress(zlib.compress(s)) == want
    out = tmp_path / "out.bin"
    with open(out, "wb") as f:
        assert f.write(s) == len(want)
    with open(out, "wb", buffering=0) as f:
        assert f.write(s) == len(want)
    assert out.read_bytes() == want
    fd = os.open(out, os.O_WRONLY | os.O_TRUNC)
    try:
        assert os.write(fd, s) == len(want)
    finally:
        os.close(fd)
    assert out.read_bytes() == want
    a, b = socket.socketpair()
    with a, b:
        a.sendall(s[:2000])
        got = b""
        while len(got) < 2000:
            got += b.recv(4096)
        assert got == want[:2000]
    assert bytes(memoryview(s)) == bytearray(s) == want
    assert pins(mf) == {(1000, 5000): 1}        # every consumer released its export


def test_write_consumers(mf: MappedFile, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"R" * 300)
    s = mf[0:300]
    with open(src, "rb") as f:
        assert f.readinto(s) == 300
    assert bytes(mf[0:300]) == b"R" * 300
    with open(src, "rb", buffering=0) as f:
        assert f.readinto(s[100:200]) == 100
    assert io.BytesIO(b"abc").readinto(s) == 3 and bytes(mf[0:3]) == b"abc"
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"Z" * 10)
        assert b.recv_into(s[10:20]) == 10
    assert bytes(mf[10:20]) == b"Z" * 10
    fd = os.open(src, os.O_RDONLY)
    try:
        assert os.readv(fd, [s[50:60]]) == 10
    finally:
        os.close(fd)
    assert bytes(mf[50:60]) == b"R" * 10


def test_numpy_and_pyarrow_consume_slices(mf: MappedFile, content: bytes) -> None:
    np = pytest.importorskip("numpy")
    s = mf[0:4096]
    a = np.frombuffer(s, dtype=np.uint32)
    assert a.nbytes == 4096 and bytes(a[:2].tobytes()) == content[:8]
    assert pins(mf) == {(0, 4096): 2}
    a2 = np.asarray(s)
    assert a2.dtype == np.uint8 and a2.flags.writeable
    a2[0] = 77
    assert mf[0] == 77
    del a, a2
    assert pins(mf) == {(0, 4096): 1}
    pa = pytest.importorskip("pyarrow")
    buf = pa.py_buffer(s)
    assert buf.size == 4096 and buf.to_pybytes()[1:8] == content[1:8]
    assert pins(mf) == {(0, 4096): 2}
    del buf
    gc.collect()
    assert pins(mf) == {(0, 4096): 1}


def test_read_only_consumers_get_read_only_buffers(path: Path, lock_dir: Path) -> None:
    np = pytest.importorskip("numpy")
    with shmslice.open(path, "r", lock_dir=lock_dir) as ro:
        s = ro[0:64]
        assert not np.frombuffer(s, np.uint8).flags.writeable
        with pytest.raises(TypeError, match="read-write"):
            io.BytesIO(b"x").readinto(s)
        with pytest.raises(TypeError, match="read-only"):
            s[0] = 1


def test_type_identity_and_messages(mf: MappedFile) -> None:
    s = mf[0:10]
    assert type(s).__name__ == "ByteBufferSlice" and type(s) is ByteBufferSlice
    assert isinstance(s, shmslice.ByteBufferSlice) and type(s).__module__ == "shmslice"
    messages = []
    for op in (lambda: s + 1, lambda: s["x"], lambda: "abc".join(s),  # type: ignore[operator]
               lambda: hash(s), lambda: len(s, 1), lambda: s.find("a"),  # type: ignore[call-arg]
               lambda: s < mf[0:10], ByteBufferSlice):  # type: ignore[operator]
        with pytest.raises(TypeError) as ei:
            op()
        messages.append(str(ei.value))
    assert any("ByteBufferSlice" in m for m in messages)
    assert not any("_Pinned" in m or "_fastpath" in m or "Base" in m for m in messages), messages


# -- bytes-like reading ------------------------------------------------------------------
def test_bytes_like_read_methods(mf: MappedFile, content: bytes) -> None:
    s = mf[100:400]
    b = content[100:400]
    needle = b[50:53]
    assert s.hex() == b.hex() and s.hex(":", 2) == b.hex(":", 2)
    assert s.tobytes() == bytes(s) == b
    for method in ("find", "rfind", "count", "index", "rindex"):
        for args in ((needle,), (needle, 10), (needle, 10, 60), (b[0],), (b"",), (b"", 5, 7),
                     (needle, -200), (needle, None, -100)):
            try:
                expected = getattr(b, method)(*args)
            except ValueError:
                with pytest.raises(ValueError, match="subsection not found"):
                    getattr(s, method)(*args)
                continue
            assert getattr(s, method)(*args) == expected, (method, args)
    assert s.find(b"\xff\xfe\xfd") == -1
    with pytest.raises(ValueError, match="subsection not found"):
        s.index(b"\xff\xfe\xfd")
    assert s.startswith(b[:5]) and s.startswith((b"nope", b[:3])) and not s.startswith(b[1:5])
    assert s.endswith(b[-4:]) and s.startswith(b[10:20], 10) and s.endswith(b[5:9], 0, 9)
    assert needle in s and b[0] in s and b"\xff\xfe\xfd" not in s
    with pytest.raises(ValueError, match="range"):
        300 in s  # noqa: B015
    with pytest.raises(TypeError, match="bytes-like"):
        "x" in s  # noqa: B015
    assert list(s) == list(b) and list(mf[5:5]) == []
    text = mf[0:5]
    text[:] = "héllo".encode()[:5]
    assert text.decode("utf-8", "replace") == "héllo".encode()[:5].decode("utf-8", "replace")
    assert text.decode("latin-1") == "héllo".encode()[:5].decode("latin-1")


def test_iteration_survives_release(mf: MappedFile, content: bytes) -> None:
    s = mf[0:1000]
    it = iter(s)
    s.release()                 # the iterator holds an export of its own
    assert bytes(it) == content[:1000]
    assert pins(mf) == {}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=st.integers(0, 300), b=st.integers(0, 300), sub=st.binary(max_size=3),
       start=st.one_of(st.none(), st.integers(-320, 320)),
       end=st.one_of(st.none(), st.integers(-320, 320)))
def test_model_searching_matches_bytes(mf: MappedFile, content: bytes, a: int, b: int,
                                       sub: bytes, start: int | None, end: int | None) -> None:
    s, model = mf[a:b], content[a:b]
    if len(sub) == 1 and start is None:
        sub = content[a + 1:a + 2] or sub     # often present
    for method in ("find", "rfind", "count", "startswith", "endswith"):
        assert getattr(s, method)(sub, start, end) == getattr(model, method)(sub, start, end), method
    assert (sub in s) == (sub in model)


def test_hashing_follows_bytes(path: Path, lock_dir: Path, mf: MappedFile) -> None:
    with pytest.raises(TypeError, match=r"unhashable.*writable"):
        hash(mf[0:10])
    with shmslice.open(path, "r", lock_dir=lock_dir) as ro:
        s = ro[10:20]
        assert hash(s) == hash(bytes(s)) and hash(ro[5:5]) == hash(b"")
        assert {s: 1}[bytes(s)] == 1      # equal and same hash: interchangeable as keys
        mf[10] = (mf[10] + 1) % 256       # another writer: the hash follows the content
        assert hash(s) == hash(bytes(s))


def test_equality(mf: MappedFile, content: bytes) -> None:
    s = mf[0:100]
    assert s == content[:100] and s == bytearray(content[:100]) and s == memoryview(content[:100])
    assert s != content[:99] and s != content[1:101] and s == mf[0:100] and s != "x"
    s.release()
    with pytest.raises(ValueError, match="released"):
        s == b""  # noqa: B015


def test_copy_shares_and_deepcopy_refuses(mf: MappedFile) -> None:
    s = mf[10:20]
    c = copy.copy(s)
    assert type(c) is ByteBufferSlice and (c.start, c.end) == (10, 20)
    assert pins(mf) == {(10, 20): 2}
    c[0] = 42
    assert s[0] == 42                      # the same bytes
    c.release()
    assert pins(mf) == {(10, 20): 1}
    with pytest.raises(TypeError, match=r"deepcopy.*tobytes\(\).*copy\.copy"):
        copy.deepcopy(s)
    with pytest.raises(TypeError, match="deepcopy"):
        copy.deepcopy({"k": [s]})
    assert copy.copy(mf[3:3]) == b""


def test_pickle_descriptor_is_small_and_rebuilds(mf: MappedFile) -> None:
    s = mf[100:200]
    data = pickle.dumps(s)
    assert len(data) < 300 and b"ByteBufferSlice" not in data[:0]
    t = pickle.loads(data)
    assert t.base is mf and (t.start, t.end) == (100, 200) and t == s


# -- close with live exports ------------------------------------------------------------------
def test_with_exit_with_a_live_numpy_array(path: Path, lock_dir: Path, content: bytes) -> None:
    np = pytest.importorskip("numpy")
    with shmslice.open(path, "r", lock_dir=lock_dir) as m:
        a = np.frombuffer(m[:].view(), "f8")          # the everyday numpy pattern
        b = m[0:800].asarray("f8")
    assert m.closed
    assert a.tobytes() == content and b.tobytes() == content[:800]
    with shmslice.LockManager(path, lock_dir=lock_dir) as other:
        assert sorted((i.start, i.end) for i in other.locks()) == [(0, 800), (0, SIZE)]
        del a
        assert [(i.start, i.end) for i in other.locks()] == [(0, 800)]
        assert not m.lock_manager.closed             # b still needs the table
        del b
        assert other.locks() == [] and m.lock_manager.closed


def test_strict_close_names_how_many_and_what(mf: MappedFile) -> None:
    np = pytest.importorskip("numpy")
    s = mf[0:800]
    arr = s.asarray("f8")
    v = s.view()
    raw = memoryview(s)
    with pytest.raises(BufferError) as ei:
        mf.close(strict=True)
    msg = str(ei.value)
    assert "3 buffer export(s)" in msg and "1 numpy array(s)" in msg
    assert "1 memoryview(s) from view()" in msg and "1 other buffer export(s)" in msg
    assert not mf.closed and pins(mf) == {(0, 800): 4}
    del arr, v, raw
    mf.close(strict=True)
    assert mf.closed
    assert np is not None


def test_deferred_close_finishes_once_after_gc_cycles(path: Path, lock_dir: Path) -> None:
    m = shmslice.open(path, "r+", lock_dir=lock_dir)
    cycle: list[object] = [m[0:10].view()]
    cycle.append(cycle)
    m.close()
    assert m.closed and not m.lock_manager.closed
    del cycle
    gc.collect()
    assert m.lock_manager.closed
    m.close()                                   # twice: harmless
