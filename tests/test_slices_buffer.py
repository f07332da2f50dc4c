"""The buffer protocol: a ByteBufferSlice is a C buffer exporter on every Python (3.11 included)."""

from __future__ import annotations

import ctypes
import gc
import inspect
import io
import mmap
import os
import sys
from pathlib import Path

import pytest

import shmslice
from shmslice import MappedFile

pep688 = pytest.mark.skipif(sys.version_info < (3, 12), reason="__buffer__ needs Python 3.12+")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "data.bin"
    p.write_bytes(bytes(range(256)) * 64)
    return p


def pin_counts(m: MappedFile) -> dict[tuple[int, int], int]:
    return {(i.start, i.end): i.count for i in m.locks() if i.kind == "pin"}


def test_memoryview_of_a_slice_is_zero_copy_and_pinned(path: Path, lock_dir: Path) -> None:
    with shmslice.open(path, "r+", lock_dir=lock_dir) as m:
        s = m[256:512]
        v = memoryview(s)
        assert not v.readonly and v.format == "B" and v.nbytes == 256
        assert pin_counts(m) == {(256, 512): 2}
        v[0] = 0xEE                                  # writes land in the file's pages
        assert m[256] == 0xEE
        w = v[10:20]                                 # slicing does not export again
        assert pin_counts(m) == {(256, 512): 2}
        v.release()
        assert pin_counts(m) == {(256, 512): 2}      # w still shares the buffer
        del w
        assert pin_counts(m) == {(256, 512): 1}      # __release_buffer__ ran once
        s.release()
        assert pin_counts(m) == {}


def test_buffer_outlives_its_slice_and_blocks_close(path: Path, lock_dir: Path) -> None:
    m = shmslice.open(path, "r+", lock_dir=lock_dir)
    s = m[0:100]
    v = memoryview(s)
    s.release()
    with pytest.raises(ValueError, match="released"):
        memoryview(s)
    assert pin_counts(m) == {(0, 100): 1}
    with pytest.raises(BufferError, match="1 buffer export"):
        m.close(strict=True)
    with pytest.raises(BufferError, match="pin"):
        m.resize(50)
    assert bytes(v[:4]) == bytes(range(4))
    del v
    m.resize(50)
    m.close()


def test_read_only_buffers(path: Path, lock_dir: Path) -> None:
    with shmslice.open(path, "r", lock_dir=lock_dir) as m:
        s = m[0:64]
        assert memoryview(s).readonly
        with pytest.raises(TypeError, match="read-write"):
            io.BytesIO(b"x" * 64).readinto(s)       # asks for a writable buffer: refused
        with pytest.raises(BufferError, match=r"read-only \(mode 'r'\)"):
            # PyObject_GetBuffer(s, PyBUF_WRITABLE), as any C consumer asks
            ctypes.pythonapi.PyObject_GetBuffer(ctypes.py_object(s), ctypes.create_string_buffer(256), 1)
        if sys.version_info >= (3, 12):
            with pytest.raises(BufferError, match="read-only"):
                s.__buffer__(inspect.BufferFlags.WRITABLE)
        assert pin_counts(m) == {(0, 64): 1}         # the refused export left no pin
        assert bytes(memoryview(s)[:3]) == b"\x00\x01\x02"


def test_consumers_of_the_buffer_protocol(path: Path, lock_dir: Path) -> None:
    with shmslice.open(path, "r+", lock_dir=lock_dir) as m:
        s = m[0:16]
        assert bytes(s) == bytearray(s) == bytes(range(16))   # via __bytes__ / __buffer__
        assert io.BytesIO(b"\x07" * 4).readinto(s) == 4
        assert bytes(m[0:5]) == b"\x07\x07\x07\x07\x04"
        arr = (ctypes.c_ubyte * 16).from_buffer(s)
        assert pin_counts(m) == {(0, 16): 2}
        arr[0] = 200
        assert m[0] == 200
        del arr
        gc.collect()
        assert pin_counts(m) == {(0, 16): 1}
        empty = m[5:5]
        assert memoryview(empty).nbytes == 0 and pin_counts(m) == {(0, 16): 1}


def test_buffer_in_a_reference_cycle_is_released_by_gc(path: Path, lock_dir: Path) -> None:
    with shmslice.open(path, "r+", lock_dir=lock_dir) as m:
        s = m[0:8]
        cycle: list[object] = [memoryview(s)]
        cycle.append(cycle)
        s.release()
        del cycle
        assert pin_counts(m) == {(0, 8): 1}     # only the cycle collector frees it
        gc.collect()
        assert pin_counts(m) == {}


def test_view_holds_a_real_mmap_export(path: Path, lock_dir: Path) -> None:
    """The view can never outlive its mapping: closing the mmap under it is refused."""
    m = shmslice.open(path, "r+", lock_dir=lock_dir)
    s = m[0:100]
    v = s.view()[5:10]
    mm = m._mmap
    assert isinstance(mm, mmap.mmap)
    with pytest.raises(BufferError):
        mm.close()
    s.release()
    with pytest.raises(BufferError):
        m.close(strict=True)
    m.close()                  # deferred: v still reads mapped memory
    with pytest.raises(BufferError):
        mm.close()
    assert bytes(v) == bytes(range(5, 10)) and not mm.closed
    del v
    assert mm.closed


def test_view_pins_follow_derived_objects(path: Path, lock_dir: Path) -> None:
    with shmslice.open(path, "r+", lock_dir=lock_dir) as m:
        s = m[1000:2000]
        v = s.view()
        derived = v[::2]             # the strided view the error messages point to
        assert len(derived) == 500 and derived[1] == m[1002]
        del v
        assert pin_counts(m) == {(1000, 2000): 2}
        s.release()
        del derived
        assert pin_counts(m) == {}
        ro = shmslice.open(path, "r", lock_dir=lock_dir)
        rv = ro[0:10].view()
        assert rv.readonly
        with pytest.raises(TypeError):
            rv[0] = 1
        del rv
        ro.close()


def test_views_after_resize_and_remap(path: Path, lock_dir: Path) -> None:
    with shmslice.open(path, "r+", lock_dir=lock_dir) as m:
        n = len(m)
        v = m[0:10].view()
        m.resize(n * 4)                   # a new mapping; the old one lives while v does
        w = m[n * 4 - 10:].view()
        w[:] = b"z" * 10
        assert bytes(v) == bytes(range(10)) and m[n * 4 - 1] == ord("z")
        with pytest.raises(BufferError):
            m.resize(n)
        del w
        m.resize(n)
        del v
    assert os.path.getsize(path) == n
