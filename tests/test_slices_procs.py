"""Slices across processes: pins seen by all, descriptors through pools under every
start method, fork safety, workers writing in place, memory shared not copied."""

from __future__ import annotations

import builtins
import gc
import multiprocessing as mp
import os
import pickle
import select
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

import shmslice
from shmslice import MappedFile
from tests import _slicehelpers as helpers
from tests.support import end_process, wait_pid, wait_until

WAIT = 60.0          # upper bound for any single wait on another process
METHODS = ["fork", "spawn", "forkserver"]


def pin_owners(m: MappedFile) -> dict[tuple[int, int], dict[int, int]]:
    """{(start, end): {pid: count}} over the live pins of the file."""
    out: dict[tuple[int, int], dict[int, int]] = {}
    for i in m.locks():
        if i.kind == "pin" and i.alive:
            out.setdefault((i.start, i.end), {})[i.pid] = i.count
    return out


@pytest.fixture
def datafile(tmp_path: Path) -> Path:
    p = tmp_path / "data.bin"
    p.write_bytes(os.urandom(1 << 20))
    return p


# -- pins and resize across processes --------------------------------------------------
def test_pins_visible_across_processes_and_block_shrink(datafile: Path, lock_dir: Path) -> None:
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    child = ctx.Process(target=helpers.hold_slice,
                        args=(str(datafile), str(lock_dir), 4096, 1 << 20, ready, done))
    child.start()
    try:
        assert ready.wait(WAIT)
        with shmslice.open(datafile, "r+", lock_dir=lock_dir) as m:
            assert pin_owners(m) == {(4096, 1 << 20): {child.pid: 1}}
            with pytest.raises(BufferError, match=f"pid {child.pid} holds a pin on \\[4096, {1 << 20}\\)"):
                m.resize(8192)
            m.resize(2 << 20)                       # growing is always allowed
            done.set()
            child.join(WAIT)
            assert child.exitcode == 0
            assert pin_owners(m) == {}
            m.resize(8192)
            assert len(m) == 8192 and datafile.stat().st_size == 8192
    finally:
        done.set()
        end_process(child, WAIT)


def test_other_process_resize_is_noticed_and_refused(datafile: Path, lock_dir: Path) -> None:
    ctx = mp.get_context("forkserver")
    with shmslice.open(datafile, "r+", lock_dir=lock_dir) as m, ctx.Pool(1) as pool:
        s = m[1000:5000]
        msg = pool.apply_async(helpers.shrink_with_lock_manager,
                               (str(datafile), str(lock_dir), 2000)).get(WAIT)
        assert msg.startswith("BufferError") and f"pid {os.getpid()} holds a pin" in msg
        s.release()
        assert pool.apply_async(helpers.shrink_with_lock_manager,
                                (str(datafile), str(lock_dir), 2000)).get(WAIT) == "ok"
        assert len(m) == 2000                 # remapped, no SIGBUS
        assert m[1000:5000].end == 2000       # clamped to the new size
        assert pool.apply_async(helpers.shrink_with_lock_manager,
                                (str(datafile), str(lock_dir), 10000)).get(WAIT) == "ok"
        assert bytes(m[9990:]) == bytes(10)


# -- descriptors through pools -------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("executor", ["Pool", "ProcessPoolExecutor"])
def test_descriptor_round_trips(datafile: Path, lock_dir: Path, method: str, executor: str) -> None:
    content = datafile.read_bytes()
    ctx = mp.get_context(method)
    with shmslice.open(datafile, "r+", lock_dir=lock_dir) as m:
        chunks = m.split(len(m) // 8)
        assert len(pickle.dumps(chunks[0])) < 1024
        if executor == "Pool":
            with ctx.Pool(2) as pool:
                sums = pool.map_async(helpers.checksum, chunks).get(WAIT)
                halves = pool.map_async(helpers.half, chunks).get(WAIT)
        else:
            with ProcessPoolExecutor(2, mp_context=ctx) as ex:
                sums = list(ex.map(helpers.checksum, chunks, timeout=WAIT))
                halves = list(ex.map(helpers.half, chunks, timeout=WAIT))
        me = os.getpid()
        for (pid, start, end, crc, seen), c in zip(sums, chunks, strict=True):
            assert pid != me and (start, end) == (c.start, c.end)
            assert crc == zlib.crc32(content[start:end])
            # The worker saw its own pin (slice + view) next to the parent's.
            owners: dict[int, int] = {}
            for s_, e_, kind, p in seen:
                if (s_, e_, kind) == (start, end, "pin"):
                    owners[p] = owners.get(p, 0) + 1
            assert me in owners and pid in owners
        for h, c in zip(halves, chunks, strict=True):
            assert h.base is m              # results join the file this process has open
            assert (h.start, h.end) == (c.start, c.start + len(c) // 2)
            assert h == content[h.start:h.end]
        # Nothing of the workers is left pinned once they are gone.
        parent_only = {k: v for k, v in pin_owners(m).items() if set(v) - {me}}
        assert parent_only == {}
        del chunks, halves, h, c          # (the loop variables held the last ones)
        gc.collect()
        assert pin_owners(m) == {}


def test_slice_as_process_argument_pins_under_the_child(datafile: Path, lock_dir: Path) -> None:
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    with shmslice.open(datafile, "r", lock_dir=lock_dir) as m:
        s = m[100:200]
        child = ctx.Process(target=helpers.hold_pickled, args=(s, ready, done))
        child.start()
        try:
            assert ready.wait(WAIT)
            assert pin_owners(m) == {(100, 200): {os.getpid(): 1, child.pid: 2}}
        finally:
            done.set()
            end_process(child, WAIT)
        assert child.exitcode == 0
        wait_until(lambda: pin_owners(m) == {(100, 200): {os.getpid(): 1}}, "child pins gone",
                   timeout=WAIT)


# -- fork -------------------------------------------------------------------------------
def _read_line(fd: int, timeout: float = WAIT) -> str:
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError("timed out waiting for the forked child")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise AssertionError(f"child closed the pipe early; got {buf!r}")
        buf += chunk
    return buf.decode().strip()


def _wait_child(pid: int, timeout: float = WAIT) -> int:
    return os.waitstatus_to_exitcode(wait_pid(pid, timeout))


def test_fork_child_never_drops_parent_pins(datafile: Path, lock_dir: Path) -> None:
    content = datafile.read_bytes()
    m = shmslice.open(datafile, "r+", lock_dir=lock_dir)
    s = m[0:1000]
    v = s.view()
    t = m[2000:3000]
    me = os.getpid()
    assert pin_owners(m) == {(0, 1000): {me: 2}, (2000, 3000): {me: 1}}
    to_parent_r, to_parent_w = os.pipe()
    to_child_r, to_child_w = os.pipe()
    pid = os.fork()
    if pid == 0:   # child: every path ends in os._exit
        code = 1
        try:
            os.close(to_parent_r)
            os.close(to_child_w)
            nonlocal_s = s
            del v                              # inherited view and slice die here...
            nonlocal_s.release()
            t.release()
            gc.collect()
            mine = m[5000:6000]                # ...and the child's own slice pins under it
            adopted = m[0:1000]
            ok = bytes(adopted) == content[0:1000]
            os.write(to_parent_w, f"{int(ok)}\n".encode())
            _read_line(to_child_r)             # parent has looked; drop ours and leave
            del mine, adopted
            m.close()                          # closing the inherited file: ours only
            code = 0
        finally:
            os._exit(code)
    os.close(to_parent_w)
    os.close(to_child_r)
    try:
        assert _read_line(to_parent_r) == "1"
        owners = pin_owners(m)
        assert owners[(0, 1000)] == {me: 2, pid: 1}     # parent's two pins intact
        assert owners[(2000, 3000)] == {me: 1}
        assert owners[(5000, 6000)] == {pid: 1}
        os.write(to_child_w, b"go\n")
        assert _wait_child(pid) == 0
    finally:
        os.close(to_parent_r)
        os.close(to_child_w)
    assert pin_owners(m) == {(0, 1000): {me: 2}, (2000, 3000): {me: 1}}
    assert bytes(s) == content[:1000] and v[:10] == content[:10]
    del v
    s.release()
    t.release()
    m.close()


def test_inherited_slice_adopted_in_forked_child(datafile: Path, lock_dir: Path) -> None:
    """A child using an inherited slice pins it itself: the parent may drop its own."""
    content = datafile.read_bytes()
    m = shmslice.open(datafile, "r+", lock_dir=lock_dir)
    s = m[10:20]
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.close(go_w)
            ok = bytes(s) == content[10:20]      # first use in the child: adopt
            os.write(w, f"{int(ok)}\n".encode())
            _read_line(go_r)
            ok = bytes(s) == content[10:20]
            s.release()
            os.write(w, f"{int(ok)}\n".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    os.close(go_r)
    try:
        assert _read_line(r) == "1"
        assert pin_owners(m) == {(10, 20): {os.getpid(): 1, pid: 1}}
        s.release()                                  # the parent lets go...
        with pytest.raises(BufferError, match=f"pid {pid}"):
            m.resize(15)                             # ...the child's pin still holds
        os.write(go_w, b"go\n")
        assert _read_line(r) == "1"
        assert _wait_child(pid) == 0
    finally:
        os.close(r)
        os.close(go_w)
    m.resize(15)
    m.close()


# -- workers writing in place ---------------------------------------------------------------
@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_workers_write_disjoint_slices(tmp_path: Path, lock_dir: Path, method: str) -> None:
    p = tmp_path / "out.bin"
    size = 3 * 65536 + 1234
    with shmslice.open(p, "w+", size=size, lock_dir=lock_dir) as m:
        parts = m.split(40000)
        with mp.get_context(method).Pool(2) as pool:
            done = pool.starmap_async(helpers.fill, [(s, i) for i, s in enumerate(parts)]).get(WAIT)
        assert done == [(s.start, s.end) for s in parts]
        m.flush()
        expected = b"".join(helpers.pattern(i, len(s)) for i, s in enumerate(parts))
        with builtins.open(p, "rb") as f:
            on_disk = f.read()
        assert len(on_disk) == size
        assert on_disk == expected


# -- memory is shared, not copied -----------------------------------------------------------
def _uss_worker(s, mode, barrier, out) -> None:
    before = helpers.uss_now()
    if mode == "view":
        crc, _ = helpers.read_all(s)
        keep = None
    else:
        keep = s.tobytes()
        crc = zlib.crc32(keep)
    barrier.wait(WAIT)          # every worker has touched every page by now
    out.put((crc, helpers.uss_now() - before))
    barrier.wait(WAIT)
    del keep


def _uss_growth(m: MappedFile, mode: str, workers: int = 2) -> tuple[list[int], list[int]]:
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(workers)
    out = ctx.Queue()
    procs = [ctx.Process(target=_uss_worker, args=(m[:], mode, barrier, out)) for _ in range(workers)]
    for pr in procs:
        pr.start()
    try:
        results = [out.get(timeout=WAIT) for _ in procs]
    finally:
        for pr in procs:
            end_process(pr, WAIT)
    assert [pr.exitcode for pr in procs] == [0] * workers
    return [r[0] for r in results], [r[1] for r in results]


def test_workers_share_memory_not_copy(tmp_path: Path, lock_dir: Path) -> None:
    pytest.importorskip("psutil")
    size = 32 << 20
    p = tmp_path / "big.bin"
    with builtins.open(p, "wb") as f:
        f.write(os.urandom(1 << 20) * 32)
    expected = zlib.crc32(p.read_bytes())
    with shmslice.open(p, "r", lock_dir=lock_dir) as m:
        crcs, growth = _uss_growth(m, "view")
        assert crcs == [expected, expected]
        assert sum(growth) < 8 << 20, growth            # shared pages are not in USS
        crcs, copied = _uss_growth(m, "copy")            # the control: copying shows up
        assert crcs == [expected, expected]
        assert min(copied) > size * 0.9, copied
