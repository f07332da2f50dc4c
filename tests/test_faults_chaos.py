"""Kill chaos: workers lock, pin and check each other while a
controller SIGKILLs them every few milliseconds and some kill themselves
inside the C core's critical sections.  The engine is tools/chaos.py; see its
docstring for what is checked.  The seed is printed; replay with
``SHMSLICE_CHAOS_SEED=<seed>``.  ``SHMSLICE_SLOW=1`` adds the 2,000-death run.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from tests.support import TOOLS, run_python, wait_pid, wait_until

CHAOS = TOOLS / "chaos.py"


def _run(tmp_path: Path, *extra: str, timeout: float) -> tuple[dict[str, Any], str]:
    env_seed = os.environ.get("SHMSLICE_CHAOS_SEED")
    seed = int(env_seed) if env_seed else random.SystemRandom().randrange(1, 2**31)
    print(f"chaos seed {seed} (replay: SHMSLICE_CHAOS_SEED={seed})")
    r = run_python(CHAOS, "--seed", str(seed), "--json", "--dir", tmp_path / "chaos", *extra,
                   timeout=timeout)
    assert r.stdout.strip(), f"chaos printed nothing (exit {r.returncode}):\n{r.stderr[-3000:]}"
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    print({k: v for k, v in summary.items() if k != "work_dir"})
    return summary, r.stderr


def _check(summary: dict[str, Any], stderr: str, deaths: int) -> None:
    assert summary["failures"] == [], f"{summary['failures']}\nworker stderr:\n{stderr[-4000:]}"
    assert summary["deaths_survived"] >= deaths
    assert summary["crash_point_deaths"] > 0, "no worker died inside the C core"
    assert summary["lock_ops_checked"] > 10 * summary["workers"]
    assert summary["count_checks"] > 0
    assert summary["conversions"] > 0, "no lock was upgraded or downgraded"


def test_chaos_kills_keep_exclusion_progress_and_an_exact_table(tmp_path: Path) -> None:
    summary, stderr = _run(tmp_path, "--kills", "600", "--workers", "4", timeout=150)
    _check(summary, stderr, 600)


def test_chaos_with_a_small_table_that_fills_up(tmp_path: Path) -> None:
    """A 40-entry table: allocation keeps running out and must reclaim the
    entries of killed workers (sweep on full) while checks go on."""
    summary, stderr = _run(tmp_path, "--kills", "300", "--workers", "4", "--capacity", "40",
                           timeout=150)
    _check(summary, stderr, 300)


def test_chaos_with_sigint_during_waits(tmp_path: Path) -> None:
    """SIGINT every ~2 ms on top of the kills: half the workers' handlers raise
    inside lock() (the request must go, leaving no entry), half return (the wait
    goes on); exclusion, progress and exact counts are checked as before."""
    summary, stderr = _run(tmp_path, "--kills", "300", "--workers", "4", "--sigint-ms", "2",
                           "--kill-prob", "0.5", timeout=150)
    _check(summary, stderr, 300)
    assert summary["sigints_handled"] > 50
    assert summary["interrupted_waits"] > 0


def test_chaos_checker_catches_a_broken_lock(tmp_path: Path) -> None:
    """The workers' own check is not vacuous: with writers locking shared, it fails."""
    summary, stderr = _run(tmp_path, "--kills", "400", "--workers", "4", "--sabotage",
                           "--crash-prob", "0", timeout=150)
    assert any("violation" in f for f in summary["failures"]), summary
    assert "VIOLATION" in stderr


@pytest.mark.slow
def test_chaos_2000_deaths(tmp_path: Path) -> None:
    summary, stderr = _run(tmp_path, "--kills", "2000", "--workers", "6", timeout=900)
    _check(summary, stderr, 2000)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_while_a_thread_waits_then_close_in_child(tmp_path: Path) -> None:
    """A forked child inherited the parent's count of calls in flight (a thread
    asleep in lock()), so its close() -- or its exit, through the finalizer --
    waited forever for a thread that does not exist in the child."""
    import threading

    import shmslice

    data = tmp_path / "data.bin"
    data.write_bytes(b"\0" * 4096)
    lock_dir = tmp_path / "locks"
    with shmslice.LockManager(data, lock_dir=lock_dir) as mgr:
        held = mgr.lock(0, 10)                      # another lock object: the waiter blocks
        outcome: list[str] = []

        def waiter() -> None:
            try:
                mgr.lock(0, 10, timeout=10).release()
                outcome.append("granted")
            except shmslice.LockTimeout:
                outcome.append("timeout")

        t = threading.Thread(target=waiter)
        t.start()
        wait_until(lambda: any(e.waiting for e in mgr.locks(waiting=True)), "the waiter to queue",
                   timeout=10)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                mgr.close()
            except BaseException:
                code = 1
            os._exit(code)
        status = wait_pid(pid, 10, what="the forked child closing its manager")
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        held.release()
        t.join(15)
        assert outcome == ["granted"]
