"""Corrupt and hostile lock tables: every attach of a damaged table
either works on a consistent table or raises CorruptLockTable; nothing crashes.

The engine is tools/fuzz_table.py (one implementation for the short run here
and the long run there); it attaches every mutated copy in child processes
and counts their exit signals.  The seed is printed; replay with
``SHMSLICE_FUZZ_SEED=<seed>``.  ``SHMSLICE_SLOW=1`` adds a run that also
garbles the mutex bytes (each such case may wait SS_MUTEX_PATIENCE_S = 10 s
before the table is reported corrupt, which is why the default run keeps the
mutex intact apart from the owner-died bit and the mutex kind, both fast).
"""

from __future__ import annotations

import json
import os
import random
import signal
import struct
from pathlib import Path
from typing import Any

import pytest

import shmslice
from shmslice._binding import table_constants, table_layout
from tests.support import TOOLS, run_python, wait_pid

FUZZ = TOOLS / "fuzz_table.py"
MUTATIONS = int(os.environ.get("SHMSLICE_FUZZ_MUTATIONS", "4000"))


def _seed() -> int:
    env = os.environ.get("SHMSLICE_FUZZ_SEED")
    return int(env) if env else random.SystemRandom().randrange(1, 2**31)


def _run_fuzz(tmp_path: Path, *extra: str, timeout: float) -> dict[str, Any]:
    seed = _seed()
    print(f"fuzz_table seed {seed} (replay: SHMSLICE_FUZZ_SEED={seed})")
    r = run_python(FUZZ, "--seed", str(seed), "--json", "--dir", tmp_path / "fuzz", *extra,
                   timeout=timeout)
    assert r.stdout.strip(), f"fuzzer printed nothing; stderr:\n{r.stderr[-3000:]}"
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert "error" not in summary, f"the fuzzer failed: {summary['error']}\n{r.stderr[-3000:]}"
    print(f"mutations {summary['mutations']}, outcomes {summary['outcomes']}, "
          f"crashes {summary['crashes']}, exit signals {summary['exit_signals']}, "
          f"{summary['elapsed_s']} s")
    return summary


def _check(summary: dict[str, Any], expected: int) -> None:
    findings = "\n".join(json.dumps(f)[:1500] for f in summary["findings"])
    assert summary["crashes"] == 0, f"children crashed:\n{findings}"
    assert summary["hangs"] == 0, f"children hung:\n{findings}"
    assert summary["findings_total"] == 0, f"findings (seed {summary['seed']}):\n{findings}"
    assert summary["mutations"] == expected
    # Both outcomes must occur, or the mutations are not reaching the validator.
    assert summary["outcomes"].get("attached", 0) > expected // 10
    assert summary["outcomes"].get("corrupt", 0) > expected // 10


def test_thousands_of_mutated_tables_attach_or_raise_corrupt(tmp_path: Path) -> None:
    summary = _run_fuzz(tmp_path, "--mutations", str(MUTATIONS), "--workers", "2", timeout=240)
    _check(summary, MUTATIONS)


@pytest.mark.slow
def test_mutated_tables_with_mutex_garbage(tmp_path: Path) -> None:
    summary = _run_fuzz(tmp_path, "--mutations", "400", "--workers", "4", "--mutex", timeout=1200)
    assert summary["crashes"] == 0 and summary["hangs"] == 0, summary["findings"]
    assert summary["findings_total"] == 0, summary["findings"]


# -- regressions found by the fuzzer, as direct tests ------------------------

LAYOUT = table_layout()
CONST = table_constants()
MUTEX_LOCK_OFFSET = LAYOUT["hdr.mutex.__lock"][0]
MUTEX_KIND_OFFSET = LAYOUT["hdr.mutex.__kind"][0]


def _attach_in_child(data: Path, lock_dir: Path) -> tuple[int, str]:
    code = ("import sys, shmslice\n"
            "try:\n"
            "    m = shmslice.LockManager(sys.argv[1], lock_dir=sys.argv[2])\n"
            "    m.lock(0, 10, 'exclusive', timeout=0).release(); m.close(); print('attached')\n"
            "except shmslice.CorruptLockTable as e:\n"
            "    print('corrupt', e)\n")
    r = run_python("-c", code, data, lock_dir, timeout=60)
    return r.returncode, r.stdout.strip() + r.stderr[-2000:]


@pytest.mark.parametrize("kind", [176, 48, 32 | 656])
def test_garbled_mutex_kind_is_corrupt_not_abort(kind: int, data_file: Path, lock_dir: Path) -> None:
    """A priority-inheritance kind with a dead owner tid made glibc abort (SIGABRT)
    inside pthread_mutex_clocklock; the core now checks the kind first."""
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        table = mgr.table_path
    with open(table, "r+b") as f:
        f.seek(MUTEX_KIND_OFFSET)
        f.write(struct.pack("<i", kind))
        f.seek(MUTEX_LOCK_OFFSET)
        f.write(struct.pack("<I", 4_000_000))   # above any pid_max: no such thread
    rc, out = _attach_in_child(data_file, lock_dir)
    assert rc == 0, f"attach crashed (exit {rc}): {out}"
    assert out.startswith("corrupt"), out


def _a_kernel_thread() -> int | None:
    for name in sorted(os.listdir("/proc"), key=lambda n: (len(n), n)):
        if not name.isdigit():
            continue
        try:
            status = Path(f"/proc/{name}/status").read_text()
        except OSError:
            continue
        if "Kthread:\t1" in status or "VmSize:" not in status:
            return int(name)
    return None


def test_a_mutex_held_by_a_kernel_thread_is_corrupt(data_file: Path, lock_dir: Path) -> None:
    """A lock word that names an existing kernel thread (a small garbage value,
    on a machine whose kernel threads are visible) was reported as a live
    holder that never lets go: a ShmSliceError after 10 s, not CorruptLockTable."""
    tid = _a_kernel_thread()
    if tid is None:
        pytest.skip("no kernel thread is visible in this PID namespace")
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        table = mgr.table_path
    with open(table, "r+b") as f:
        f.seek(MUTEX_LOCK_OFFSET)
        f.write(struct.pack("<I", tid))
    rc, out = _attach_in_child(data_file, lock_dir)
    assert rc == 0, f"attach crashed (exit {rc}): {out}"
    assert out.startswith("corrupt") and "kernel thread" in out, out


def _die_unpinning(data: str, lock_dir: str, point: int) -> None:
    from shmslice._binding import lib
    mgr = shmslice.LockManager(data, lock_dir=lock_dir)
    ref = mgr.pin(0, 4096)
    lib.ss_debug_set_crash_point(point, 1)
    mgr.unpin(ref)
    os._exit(4)


@pytest.mark.parametrize("point", [3, 4])
def test_killed_while_dropping_last_pin_leaves_repairable_table(point: int, data_file: Path,
                                                                lock_dir: Path) -> None:
    """SIGKILL inside entry_remove of the last pin used to leave a count-0 entry
    that repair rejected: the table was corrupt for good."""
    pid = os.fork()
    if pid == 0:
        try:
            _die_unpinning(str(data_file), str(lock_dir), point)
        finally:
            os._exit(5)
    status = wait_pid(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    rc, out = _attach_in_child(data_file, lock_dir)
    assert rc == 0 and out == "attached", out
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        mgr.reap()
        assert mgr.locks(waiting=True) == []
        assert mgr.stat().repairs >= 1


# The header page, then room for the process-slot ceiling, then the entries.
ENTRIES_OFFSET = CONST["entries_offset"]
ENTRY_BYTES = CONST["entry_bytes"]
NEXT_FREE = LAYOUT["entry.next_free"][0]


@pytest.mark.parametrize("target", [16777216, 2**31 + 11, 2**32 - 2])
def test_free_list_link_out_of_range_is_corrupt_not_segv(target: int, data_file: Path,
                                                         lock_dir: Path) -> None:
    """table_validate followed a free-list link in the loop's step before the
    body had rejected it: a far out-of-range next_free was dereferenced (SIGSEGV)."""
    with shmslice.LockManager(data_file, lock_dir=lock_dir, max_entries=64) as mgr:
        refs = [mgr.pin(i * 10, i * 10 + 5) for i in range(8)]
        for ref in refs[::2]:
            mgr.unpin(ref)                     # entries 6, 4, 2, 0 on the free list
        table = mgr.table_path
        mgr.close()
    with open(table, "r+b") as f:
        f.seek(LAYOUT["hdr.free_head"][0])
        head = struct.unpack("<I", f.read(4))[0]
        assert head < 8
        f.seek(ENTRIES_OFFSET + head * ENTRY_BYTES + NEXT_FREE)
        f.write(struct.pack("<I", target))
    rc, out = _attach_in_child(data_file, lock_dir)
    assert rc == 0, f"attach crashed (exit {rc}): {out}"
    assert out.startswith("corrupt"), out


def test_a_fuzzer_run_that_cannot_start_says_why(tmp_path: Path) -> None:
    """A run that fails before its summary (here: the work directory is a
    file) still ends with one JSON line, naming the error, and exit status 1."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    r = run_python(FUZZ, "--seed", "1", "--json", "--mutations", "1", "--dir", blocker / "fuzz",
                   timeout=120)
    assert r.returncode == 1, r.stderr[-3000:]
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert last["seed"] == 1 and "NotADirectoryError" in last["error"], last
    assert "Traceback" in r.stderr
