"""Shared helpers for shmslice's benchmark scripts (bench/bench_*.py).

Only the standard library is used here, so every bench script can import this
module whatever else is installed::

    import os, sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import Stats, measure_interleaved, markdown_table, ...

Conventions:

* every figure is the **median of several repeats** (with the min shown
  beside it), because the machines these run on are often busy;
* competing implementations are measured **interleaved** (repeat 1 of A, B, C,
  then repeat 2 of A, B, C, ...) so that a burst of load from elsewhere hits
  them all alike, and ratios are taken between figures of the same run;
* single-process timings record both this thread's CPU time and wall-clock
  (see :class:`Timing`): CPU time is what an operation costs, wall-clock adds
  whatever the machine's other work took from us;
* targets are reported as PASS/MISS, never asserted: a benchmark is not a test.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
import timeit
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Settings",
    "Spread",
    "Stats",
    "Timing",
    "add_common_args",
    "both_clocks",
    "calibrate",
    "ctx_switches",
    "current_cpu",
    "fmt_ratio",
    "fmt_us",
    "gc_paused",
    "log",
    "machine_info",
    "make_timer",
    "markdown_table",
    "measure_interleaved",
    "paired_ratio",
    "percentile",
    "print_section",
    "settings_from_args",
    "time_once",
    "verdict",
]


# --------------------------------------------------------------------------
# Settings shared by every bench script
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """How hard to measure: repeats per figure and seconds per repeat."""

    quick: bool
    repeats: int
    seconds_per_repeat: float


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Add --quick and --repeats to a bench script's argument parser."""
    parser.add_argument("--quick", action="store_true",
                        help="fast smoke run: fewer repeats and shorter loops (numbers are rougher)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="repeats per figure (default 15, or 5 with --quick)")


def settings_from_args(args: argparse.Namespace, *, full_seconds: float = 0.1,
                       quick_seconds: float = 0.02) -> Settings:
    repeats = args.repeats if args.repeats else (5 if args.quick else 15)
    if repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    return Settings(quick=args.quick, repeats=repeats,
                    seconds_per_repeat=quick_seconds if args.quick else full_seconds)


# --------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------

@dataclass
class Stats:
    """Per-operation times in seconds, one per repeat."""

    samples: list[float] = field(default_factory=list)

    def add(self, seconds_per_op: float) -> None:
        self.samples.append(seconds_per_op)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    def __bool__(self) -> bool:
        return bool(self.samples)

    def fmt(self, unit: str = "us") -> str:
        """'1.23 us (min 1.10)' style summary."""
        return f"{fmt_us(self.median, unit)} (min {fmt_us(self.min, unit, bare=True)})"


@dataclass
class Spread:
    """Values of any unit (throughputs, counts, ratios), one per repeat: median and range."""

    samples: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.samples.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    def __bool__(self) -> bool:
        return bool(self.samples)

    def fmt(self, show: Callable[[float], str]) -> str:
        """'median [min–max]' with each value formatted by `show`."""
        if len(self.samples) == 1:
            return show(self.median)
        return f"{show(self.median)} [{show(self.min)}–{show(self.max)}]"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, nearest-rank method
    (a value that was really observed; for p99 of n values, the ceil(0.99 n)-th)."""
    if len(sorted_values) == 0:
        raise ValueError("percentile of no values")
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[min(len(sorted_values), int(rank)) - 1]


def paired_ratio(a: Stats, b: Stats) -> float:
    """Median over repeats of a[i] / b[i]: for cases measured interleaved, each
    pair ran close together in time, so this ratio shrugs off load that came and
    went during the run better than a ratio of medians does."""
    return statistics.median(x / y for x, y in zip(a.samples, b.samples, strict=True))


def fmt_us(seconds: float, unit: str = "us", bare: bool = False) -> str:
    """Format seconds in microseconds (or 'ns' / 'ms'), 3 significant-ish digits."""
    scale = {"ns": 1e9, "us": 1e6, "ms": 1e3, "s": 1.0}[unit]
    value = seconds * scale
    if value >= 100:
        text = f"{value:.0f}"
    elif value >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    if bare:
        return text
    return f"{text} {'µs' if unit == 'us' else unit}"


def fmt_ratio(ratio: float) -> str:
    return f"{ratio:.1f}x" if ratio >= 10 else f"{ratio:.2f}x"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------

class _Stamp:
    """Wall-clock and this thread's CPU time, taken together; subtracting gives both spans."""

    __slots__ = ("cpu", "wall")

    def __init__(self, wall: float, cpu: float) -> None:
        self.wall = wall
        self.cpu = cpu

    def __sub__(self, other: _Stamp) -> _Stamp:
        return _Stamp(self.wall - other.wall, self.cpu - other.cpu)


def both_clocks() -> _Stamp:
    """A timer for :class:`timeit.Timer` that reads wall-clock and thread CPU time."""
    return _Stamp(time.perf_counter(), time.thread_time())


@dataclass
class Timing:
    """Per-operation times of one case: CPU time of the measuring thread and wall-clock.

    On a machine shared with other work, wall-clock includes the time this process
    waited for a CPU; thread CPU time (user + system, so system calls count) does not,
    which makes it the steadier measure of what an operation costs.
    """

    cpu: Stats = field(default_factory=Stats)
    wall: Stats = field(default_factory=Stats)


def make_timer(stmt: str, glb: dict, setup: str = "pass") -> timeit.Timer:
    """A :class:`timeit.Timer` for `stmt` (run with globals `glb`) that records both clocks."""
    return timeit.Timer(stmt, setup=setup, timer=both_clocks, globals=glb)


def time_once(timer: timeit.Timer, number: int) -> tuple[float, float]:
    """(CPU, wall) seconds per operation for one repeat of `number` loops (gc off, like timeit).

    `timer` must come from :func:`make_timer`.
    """
    span = timer.timeit(number)
    return span.cpu / number, span.wall / number


def calibrate(timer: timeit.Timer, target_seconds: float, *, min_number: int = 10) -> int:
    """Loop count that makes one repeat of `timer` last about `target_seconds` (wall-clock)."""
    number = min_number
    while True:
        elapsed = timer.timeit(number).wall
        if elapsed >= target_seconds / 5 or number >= 10**8:
            break
        number *= 4 if elapsed < target_seconds / 50 else 2
    per_op = max(elapsed / number, 1e-9)
    return max(min_number, int(target_seconds / per_op))


def measure_interleaved(cases: Mapping[str, timeit.Timer], repeats: int, target_seconds: float,
                        *, progress: Callable[[str], None] | None = None) -> dict[str, Timing]:
    """Per-op time of every case, repeats interleaved across cases.

    Each case is a timer from :func:`make_timer` (``stmt`` given as a string with
    ``globals=``, so that the measured statement is exactly what a user writes,
    without an extra function call).  Loop counts are calibrated once per case.
    """
    numbers = {}
    for name, timer in cases.items():
        numbers[name] = calibrate(timer, target_seconds)
        if progress:
            progress(f"calibrated {name}: {numbers[name]} loops per repeat")
    results = {name: Timing() for name in cases}
    for _ in range(repeats):
        for name, timer in cases.items():
            cpu, wall = time_once(timer, numbers[name])
            results[name].cpu.add(cpu)
            results[name].wall.add(wall)
    return results


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_info() -> list[str]:
    """Lines describing the machine and interpreter, for the top of a report."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    return [
        f"CPU: {_cpu_model()}; {os.cpu_count()} logical CPUs ({usable} usable by this process)",
        f"OS: {platform.system()} {platform.release()} ({platform.machine()})",
        f"Python: {platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        f"Load average (1/5/15 min) at start: {load}",
        f"Date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
    ]


def print_section(title: str) -> None:
    print()
    print(f"== {title} ==")
    sys.stdout.flush()


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table with padded columns."""
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(cells)) + " |"
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(line(row) for row in rows)
    return "\n".join(out)


def log(message: str) -> None:
    """Progress line on stderr (stdout carries the report)."""
    print(f"  .. {message}", file=sys.stderr, flush=True)


def ctx_switches() -> tuple[int, int]:
    """(voluntary, involuntary) context switches of the calling thread so far.

    Read from /proc/thread-self/status (Linux): per thread, so it is right for
    the threads of one process as well as for single-threaded workers.
    """
    voluntary = involuntary = -1
    with open("/proc/thread-self/status", "rb") as f:
        for line in f:
            if line.startswith(b"voluntary_ctxt_switches:"):
                voluntary = int(line.split()[1])
            elif line.startswith(b"nonvoluntary_ctxt_switches:"):
                involuntary = int(line.split()[1])
    if voluntary < 0 or involuntary < 0:
        raise RuntimeError("/proc/thread-self/status has no context-switch counts")
    return voluntary, involuntary


def current_cpu() -> int:
    """CPU this process last ran on (field 39 of /proc/self/stat), or -1."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2:].split()[36])
    except (OSError, ValueError, IndexError):
        return -1


def gc_paused() -> _GcPause:
    """Context manager: garbage collection off inside (for hand-written timing loops)."""
    return _GcPause()


class _GcPause:
    def __enter__(self) -> None:
        self._was = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self._was:
            gc.enable()
