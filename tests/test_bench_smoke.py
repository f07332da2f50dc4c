"""Smoke runs of the lock benchmarks and of bench_rss.py: they start, measure every section
and exit 0.

Speed is measured in bench/, not asserted here: these tests only prove that
``bench/bench_contention.py --quick`` (about 15 s on 2 idle cores) and the
handoff section of ``bench/bench_locks.py`` still run to the end and report
each section, so that a change to the C core or the Python layer cannot
silently break the benchmarks that judge it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTENTION = ROOT / "bench" / "bench_contention.py"
LOCKS = ROOT / "bench" / "bench_locks.py"

SECTIONS = [
    "== 1. N processes, one hot range",
    "== 2. Threads of one process",
    "== 3. Uncontended lock+release while 16 processes wait",
    "== 4. Disjoint ranges",
    "== 5. Uncontended lock+release from Python",
    "== 6. One-way handoff",
    "== 7. Picture and raw results",
    "== Summary ==",
]


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, check=False)


def test_contention_quick_prints_every_section(tmp_path: Path) -> None:
    out_dir = tmp_path / "results"
    r = _run(str(CONTENTION), "--quick", "--out", str(out_dir), timeout=240)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout[-4000:]}\nstderr:\n{r.stderr[-4000:]}"
    positions = []
    for header in SECTIONS:
        assert header in r.stdout, f"section {header!r} missing from:\n{r.stdout[-4000:]}"
        positions.append(r.stdout.index(header))
    assert positions == sorted(positions), "sections out of order"
    # Every figure the sections claim is reported with a verdict beside its target.
    assert "target" in r.stdout and ("PASS" in r.stdout or "MISS" in r.stdout)
    assert "mutual exclusion checked in every run" in r.stdout
    results = json.loads((out_dir / "contention.json").read_text())
    runs = results["hot"]
    assert {(run["kind"], run["n"]) for run in runs} == {
        (kind, n) for kind in ("shmslice", "lockf", "ofd", "mp.Lock") for n in (1, 2, 4, 8, 16)}
    assert all(run["exclusion_ok"] for run in runs)
    assert all(run["grants"] > 0 for run in runs if run["valid"])
    assert len(results["checks"]) >= 10
    # The disjoint section measures the one-table-per-process ceiling beside the shared table,
    # and the untimed loop too, every run's counters checked.
    for name, kinds in (("disjoint", ("shmslice", "shmslice/own", "lockf", "ofd")),
                        ("disjoint_untimed", ("lean:shmslice", "lean:shmslice/own", "lean:lockf"))):
        assert {(run["kind"], run["n"]) for run in results[name]} == {
            (kind, n) for kind in kinds for n in (1, 2, 4, 8, 16)}, name
        assert all(run["exclusion_ok"] for run in results[name]), name
    if importlib.util.find_spec("matplotlib") is not None and not os.environ.get("SHMSLICE_BENCH_NO_PICTURE"):
        png = out_dir / "contention.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "NO PICTURE" in r.stdout


def test_locks_handoff_quick_verifies_alternation() -> None:
    r = _run(str(LOCKS), "--quick", "--only", "handoff", timeout=120)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout[-4000:]}\nstderr:\n{r.stderr[-4000:]}"
    assert "alternation verified in every run used" in r.stdout
    assert "ratio shmslice / Semaphore" in r.stdout or "COULD NOT MEASURE A VALID HANDOFF" in r.stdout


def test_semantics_quick_reports_its_three_figures() -> None:
    r = _run(str(ROOT / "bench" / "bench_semantics.py"), "--quick", timeout=120)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout[-4000:]}\nstderr:\n{r.stderr[-4000:]}"
    for figure in ("uncontended on/off:", "detection adds to a request that waits",
                   "lock_async free + release:"):
        assert figure in r.stdout, r.stdout[-3000:]


def test_rss_bench_quick_reports_every_strategy() -> None:
    """``bench/bench_rss.py --quick`` runs to the end and reports each way of giving pages back."""
    r = _run(str(ROOT / "bench" / "bench_rss.py"), "--quick", "--repeats", "1", timeout=240)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout[-4000:]}\nstderr:\n{r.stderr[-4000:]}"
    for strategy in ("| released", "| kept", "| window", "| remap"):
        assert strategy in r.stdout, r.stdout[-4000:]
