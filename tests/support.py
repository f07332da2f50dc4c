"""What many test files need: this checkout's paths, child Python processes that import the same
shmslice as the tests, waits that always end, and cleanup that leaves no process behind.

Every wait here is bounded and fails the test with a message when the bound is reached; a child
that outlives its bound is killed with SIGKILL and reaped, so a hung test never hangs the run.
"""

from __future__ import annotations

import multiprocessing.process
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import shmslice

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"

#: Upper bound for one child to finish once it has been told to (or killed).
REAP_TIMEOUT = 30.0


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python process: ours, plus this checkout on ``PYTHONPATH``.

    First the directory holding the ``shmslice`` package these tests imported (so a child
    imports the same build, installed or not, whatever its working directory), then the
    repository root (for ``tests`` and ``tools``).  ``extra`` adds or replaces variables.
    """
    package_parent = str(Path(shmslice.__file__).resolve().parents[1])
    paths = [package_parent, str(ROOT)]
    inherited = os.environ.get("PYTHONPATH")
    if inherited:
        paths += inherited.split(os.pathsep)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), **extra}
    return env


def run_python(*args: str | os.PathLike[str], timeout: float,
               env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGS`` (this interpreter) to completion; output captured as text.

    ``env`` defaults to :func:`child_env`; a child still running after ``timeout`` seconds is
    killed and the test fails with ``subprocess.TimeoutExpired``.
    """
    return subprocess.run([sys.executable, *map(str, args)], check=False, capture_output=True,
                          text=True, timeout=timeout, env=env or child_env(), **kwargs)


def popen_python(*args: str | os.PathLike[str], env: dict[str, str] | None = None,
                 **kwargs: Any) -> subprocess.Popen[str]:
    """Start ``python ARGS`` (this interpreter) with :func:`child_env`, text streams as asked.

    End it with :func:`stop_popen`.
    """
    return subprocess.Popen([sys.executable, *map(str, args)], text=True,
                            env=env or child_env(), **kwargs)


def stop_popen(proc: subprocess.Popen[str], timeout: float = REAP_TIMEOUT) -> None:
    """Kill ``proc`` (if still running), reap it, close its pipes."""
    proc.kill()
    proc.wait(timeout=timeout)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 20.0,
               interval: float = 0.01) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def wait_pid(pid: int, timeout: float = REAP_TIMEOUT, what: str = "the forked child") -> int:
    """``os.waitpid(pid)`` with a deadline: the child's wait status.

    A child still running after ``timeout`` seconds is SIGKILLed and reaped, and the test fails.
    """
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"{what} (pid {pid}) did not exit within {timeout:g} s")
        time.sleep(0.01)


def end_process(proc: multiprocessing.process.BaseProcess, timeout: float = REAP_TIMEOUT) -> bool:
    """Join a multiprocessing child for up to ``timeout`` s, then SIGKILL and join it if needed.

    Returns whether it ended on its own; for cleanup in ``finally`` blocks, where a second
    failure must not hide the first (assert on the result where ending on time is the point).
    """
    proc.join(timeout)
    if not proc.is_alive():
        return True
    proc.kill()
    proc.join(REAP_TIMEOUT)
    return False
