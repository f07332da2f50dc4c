"""LockManager.pin/unpin count per reference, in the manager's C map.

The map (csrc/ss_pinmap.h) is an open-addressing table that grows and
deletes by shifting entries back; these tests drive it past several growths
and through many deletions, and compare it with a plain dict model and with
the table's own counts (``locks()``).  ``_pin_counts()`` is the map's copy.
"""

from __future__ import annotations

import dis
import multiprocessing
import os
import queue
import random
import sys
import threading
import time
from pathlib import Path

import pytest

import shmslice
from tests.support import wait_pid

SIZE = 1 << 16


def table_pins(mgr: shmslice.LockManager) -> dict[tuple[int, int], int]:
    """{(start, end): count} of every pin entry in the table."""
    return {(e.start, e.end): e.count for e in mgr.locks() if e.kind == "pin"}


def test_many_distinct_references_grow_the_map(data_file: Path, lock_dir: Path) -> None:
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        regions = [(k, k + 1 + k % 7) for k in range(3000)]     # 3000 entries: many growths
        refs = {r: mgr.pin(*r) for r in regions}
        assert len(set(refs.values())) == len(regions)
        for r in regions[::3]:                                   # a second pin of every third
            assert mgr.pin(*r) == refs[r]
        expected = {refs[r]: 2 if i % 3 == 0 else 1 for i, r in enumerate(regions)}
        assert mgr._pin_counts() == expected
        assert table_pins(mgr) == {r: expected[refs[r]] for r in regions}

        order = list(expected.items())
        random.Random(7).shuffle(order)
        for ref, n in order:
            for _ in range(n):
                mgr.unpin(ref)
            with pytest.raises(ValueError, match="not held through this manager's pin"):
                mgr.unpin(ref)                                   # one too many, after growth
        assert mgr._pin_counts() == {}
        assert mgr.locks() == []


def test_map_matches_a_model_through_random_pins_and_unpins(data_file: Path,
                                                            lock_dir: Path) -> None:
    # A small pool of regions and many operations: the map keeps inserting and
    # deleting in the same few probe runs, which is where backward-shift
    # deletion can lose an entry.
    rng = random.Random(20261202)
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        pool = [(16 * k, 16 * k + 16) for k in range(97)]
        model: dict[int, int] = {}
        ref_of: dict[tuple[int, int], int] = {}
        dead: list[int] = []          # references whose last pin() count was dropped
        dead_set: set[int] = set()
        for step in range(20000):
            region = rng.choice(pool)
            ref = ref_of.get(region)
            roll = rng.random()
            if dead and roll < 0.05:
                with pytest.raises(ValueError, match="not held through"):
                    mgr.unpin(rng.choice(dead))
            elif ref is not None and roll < 0.55:
                mgr.unpin(ref)
                model[ref] -= 1
                if not model[ref]:
                    del model[ref]
                    del ref_of[region]    # the entry is gone: its next pin is a new one
                    dead.append(ref)
                    dead_set.add(ref)
            else:
                ref = mgr.pin(*region)
                assert ref not in dead_set
                ref_of[region] = ref
                model[ref] = model.get(ref, 0) + 1
            if step % 997 == 0:
                assert mgr._pin_counts() == model
        assert mgr._pin_counts() == model
        assert table_pins(mgr) == {r: model[ref_of[r]] for r in ref_of}
        for ref, n in model.items():
            for _ in range(n):
                mgr.unpin(ref)
        assert mgr.locks() == []


def test_unpin_too_many_after_growth_keeps_the_slices_pin(path: Path, lock_dir: Path,
                                                          content: bytes) -> None:
    with shmslice.open(path, "r+", lock_dir=lock_dir) as mf:
        mgr = mf.lock_manager
        s = mf[0:4096]                                # the slice's pin: count 1 in the table
        others = [mgr.pin(8192 + k, 8193 + k) for k in range(200)]
        ref = mgr.pin(0, 4096)                        # same entry as the slice's
        assert table_pins(mgr)[(0, 4096)] == 2
        mgr.unpin(ref)
        with pytest.raises(ValueError, match="not held through this manager's pin"):
            mgr.unpin(ref)
        assert table_pins(mgr)[(0, 4096)] == 1
        assert bytes(s[:16]) == content[:16]
        for r in others:
            mgr.unpin(r)
        s.release()
        assert mgr.locks() == []


class Index:
    """An int-like that is not an int: pin() hands it to _pin_slow."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


def test_the_slow_paths_reference_is_counted_too(data_file: Path, lock_dir: Path) -> None:
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        slow = mgr.pin(Index(10), Index(20))
        fast = mgr.pin(10, 20)
        assert slow == fast
        assert mgr._pin_counts() == {fast: 2}
        mgr.unpin(slow)
        mgr.unpin(fast)
        with pytest.raises(ValueError, match="not held through"):
            mgr.unpin(fast)
        with pytest.raises(TypeError, match="start must be an int"):
            mgr.pin(True, 5)
        with pytest.raises(ValueError, match="end must be greater"):
            mgr.pin(5, 5)
        with pytest.raises(TypeError, match="takes start and end"):
            mgr.pin(5)
        with pytest.raises(TypeError, match="ref must be an int"):
            mgr.unpin("1")
        with pytest.raises(ValueError, match="not held through"):
            mgr.unpin(-1)
        with pytest.raises(ValueError, match="not held through"):
            mgr.unpin(2**70)
        assert mgr._pin_counts() == {} and mgr.locks() == []


def test_close_drops_the_pins_and_later_calls_raise(data_file: Path, lock_dir: Path) -> None:
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as other:
        mgr = shmslice.LockManager(data_file, lock_dir=lock_dir)
        refs = [mgr.pin(k, k + 1) for k in range(50)]
        mgr.close()
        assert other.locks() == []                    # close released them in the table
        with pytest.raises(ValueError, match="closed"):
            mgr.unpin(refs[0])
        with pytest.raises(ValueError, match="closed"):
            mgr.pin(0, 1)


def test_threads_pinning_and_unpinning_keep_exact_counts(data_file: Path,
                                                         lock_dir: Path) -> None:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)                       # switch threads as often as possible
    try:
        with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
            regions = [(k, k + 10) for k in range(40)]   # shared by every thread
            start = threading.Barrier(4)
            kept: list[list[int]] = [[] for _ in range(4)]
            errors: list[BaseException] = []

            def work(t: int) -> None:
                rng = random.Random(t)
                mine: list[int] = []
                try:
                    start.wait(10)
                    for _ in range(5000):
                        if mine and rng.random() < 0.45:
                            mgr.unpin(mine.pop(rng.randrange(len(mine))))
                        else:
                            mine.append(mgr.pin(*rng.choice(regions)))
                    kept[t] = mine
                except BaseException as err:   # collected for the assertion below
                    errors.append(err)

            threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(60)
            assert not any(th.is_alive() for th in threads) and not errors
            expected: dict[int, int] = {}
            for mine in kept:
                for ref in mine:
                    expected[ref] = expected.get(ref, 0) + 1
            assert mgr._pin_counts() == expected
            assert sum(table_pins(mgr).values()) == sum(expected.values())
            for ref, n in expected.items():
                for _ in range(n):
                    mgr.unpin(ref)
                with pytest.raises(ValueError, match="not held through"):
                    mgr.unpin(ref)
            assert mgr.locks() == []
    finally:
        sys.setswitchinterval(old)


def test_forked_child_inherits_counts_but_cannot_use_them(data_file: Path,
                                                          lock_dir: Path) -> None:
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        refs = [mgr.pin(k, k + 5) for k in range(100)]   # a grown map, inherited as is
        again = mgr.pin(0, 5)
        assert again == refs[0]
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(r)
                report = []
                report.append(mgr._pin_counts().get(refs[0]) == 2)
                try:
                    mgr.unpin(refs[0])
                except ValueError as err:
                    report.append("not held by this process" in str(err))
                report.append(mgr._pin_counts().get(refs[0]) == 2)   # refused: unchanged
                own = mgr.pin(0, 5)                   # the child's own entry, own reference
                report.append(own != refs[0])
                mgr.unpin(own)
                try:
                    mgr.unpin(own)
                except ValueError as err:
                    report.append("not held through" in str(err))
                os.write(w, bytes(int(x) for x in report))
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            report = f.read()
        assert os.waitstatus_to_exitcode(wait_pid(pid)) == 0
        assert report == bytes([1, 1, 1, 1, 1])
        assert table_pins(mgr)[(0, 5)] == 2            # the parent's pins are intact
        assert mgr._pin_counts()[refs[0]] == 2
        for ref in [*refs, again]:
            mgr.unpin(ref)
        assert mgr.locks() == []


def _spawned_unpin(mgr: shmslice.LockManager, ref: int, out: multiprocessing.Queue) -> None:
    try:
        mgr.unpin(ref)
    except ValueError as err:
        out.put(("refused", str(err), mgr._pin_counts()))
    else:
        out.put(("unpinned", "", mgr._pin_counts()))
    mgr.close()


def test_spawned_process_starts_with_no_counts(data_file: Path, lock_dir: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        ref = mgr.pin(0, 10)
        out = ctx.Queue()
        p = ctx.Process(target=_spawned_unpin, args=(mgr, ref, out))
        p.start()
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    what, message, counts = out.get(timeout=0.5)
                    break
                except queue.Empty:
                    assert p.is_alive() or not out.empty(), f"the child died (exit {p.exitcode})"
                    assert time.monotonic() < deadline, "the child did not answer within 60 s"
        finally:
            p.join(60)
            if p.is_alive():
                p.kill()
                p.join(10)
        assert p.exitcode == 0
        assert what == "refused" and "not held through this manager's pin" in message
        assert counts == {}
        assert table_pins(mgr) == {(0, 10): 1}
        mgr.unpin(ref)


@pytest.mark.skipif(sys.version_info[:2] not in ((3, 11), (3, 12), (3, 13)),
                    reason="the specializing interpreter's instruction names of 3.11 to 3.13")
def test_method_calls_on_a_manager_are_specialized(path: Path, lock_dir: Path) -> None:
    # A manager's own attributes are slots and its managed __dict__ is not
    # made (3.13) or holds inline values (3.11, 3.12: ManagerBase uses
    # object.__new__): with a real __dict__, CPython would look mgr.pin and
    # mgr.unpin up in full at every call.  Many managers first, as in a
    # long-running program (the class's shared attribute keys stop growing).
    for _ in range(100):
        shmslice.LockManager(path, lock_dir=lock_dir).close()
    with shmslice.open(path, "r+", lock_dir=lock_dir) as mf:
        for mgr in (mf.lock_manager, shmslice.LockManager(path, lock_dir=lock_dir)):

            def loop(n: int, mgr: shmslice.LockManager = mgr) -> None:
                for _ in range(n):
                    mgr.unpin(mgr.pin(0, 10))

            for _ in range(3):
                loop(2000)
            loads = [ins.opname for ins in dis.get_instructions(loop, adaptive=True)
                     if ins.argval in ("pin", "unpin")]
            assert len(loads) == 2
            assert all(name.endswith(("METHOD_WITH_VALUES", "METHOD_LAZY_DICT"))
                       for name in loads), loads
            if mgr is not mf.lock_manager:
                mgr.close()


def test_a_manager_takes_other_attributes_and_weak_references(data_file: Path,
                                                              lock_dir: Path) -> None:
    import weakref

    mgr = shmslice.LockManager(data_file, lock_dir=lock_dir)
    mgr.note = "mine"
    assert mgr.note == "mine" and mgr.path == os.fsdecode(data_file)
    gone = weakref.ref(mgr)
    with pytest.raises(RuntimeError, match="called twice"):
        mgr.__init__(data_file, lock_dir=lock_dir)    # type: ignore[misc]
    mgr.close()
    del mgr
    assert gone() is None
