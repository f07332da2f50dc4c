"""What both fault engines need from their forked children (importable because the tools run as scripts)."""

from __future__ import annotations

import os
import signal
import time


def wait_pid(pid: int, timeout: float, interval: float = 0.005) -> int | None:
    """``os.waitpid(pid)`` with a deadline: the child's wait status, or None if it timed out.

    A child still running after ``timeout`` seconds is SIGKILLed and reaped first, so no
    caller ever leaves one behind; the caller reports the hang in its own way.
    """
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(interval)
