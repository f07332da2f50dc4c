"""Who owns a table entry: the owner process's name, command line and user, as psutil shows them."""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import psutil

from shmslice.cli.formatting import escape_char
from shmslice.locks import LockInfo

__all__ = ["ProcessInfo", "command_text", "describe_owners", "describe_pids", "describe_process",
           "is_multiprocessing_worker", "owner_cells"]

# How much later than an entry's grant time the pid's process may appear to
# have started before we conclude that the pid names another process here
# (psutil's start times are rounded to clock ticks).
_START_SLACK_S = 2.0

_T = TypeVar("_T")


@dataclass(frozen=True)
class ProcessInfo:
    """What psutil can tell about an entry's owner.

    ``status`` is ``"running"``, ``"exited"`` (gone since the table was read),
    ``"denied"`` (another user's process, hidden from us), ``"elsewhere"`` (the
    pid names a younger process here: the owner lives in another PID namespace
    or the pid was reused) or ``"dead"`` (the table says its owner died; the pid
    is not looked up, since it may belong to an unrelated process by now).
    """

    status: str
    name: str | None = None
    cmdline: list[str] | None = None
    username: str | None = None
    ppid: int | None = None
    #: For a multiprocessing worker (whose own command line is boilerplate):
    #: the command line of the process that started it, if we may read it.
    parent_cmdline: list[str] | None = None


# The command lines multiprocessing gives the workers it spawns (spawn and
# forkserver start methods): the same for every pool, so the parent says more.
_MP_WORKER_MARKERS = ("from multiprocessing.spawn import spawn_main",
                      "from multiprocessing.forkserver import main")


def is_multiprocessing_worker(cmdline: Sequence[str] | None) -> bool:
    """Whether ``cmdline`` is that of a multiprocessing spawn/forkserver child."""
    return bool(cmdline) and any(arg.startswith(_MP_WORKER_MARKERS) for arg in cmdline or ())


def shell_quote(arg: str) -> str:
    """``arg`` quoted for a POSIX shell, on one line of printable text.

    Arguments with control characters (a multi-line ``python -c`` program)
    are written in the ``$'...'`` form bash, zsh and ksh read, with escapes
    for those characters, so the command stays one line and can be pasted
    back into a shell.
    """
    if arg.isprintable():
        return shlex.quote(arg)
    body = []
    for ch in arg:
        if ch in "\\'":
            body.append("\\" + ch)   # the two characters $'...' gives a meaning of their own
        elif ch.isprintable():
            body.append(ch)
        else:
            body.append(escape_char(ch))
    return "$'" + "".join(body) + "'"


def command_text(cmdline: Sequence[str]) -> str:
    """A command line for display: the program's base name, then its arguments, shell-quoted.

    The full path of the program says little and would use up the column; so
    does that of a script run by an interpreter (``python3 /venv/bin/shmslice``).
    """
    program = os.path.basename(cmdline[0])
    args = list(cmdline[1:])
    if program.startswith("python") and args and os.path.isabs(args[0]):
        args[0] = os.path.basename(args[0])
    return " ".join(shell_quote(arg) for arg in [program, *args])


def _denied_is_none(call: Callable[[], _T]) -> _T | None:
    """``call()``, or None when psutil may not read that field of another user's process."""
    try:
        return call()
    except psutil.AccessDenied:
        return None


def describe_process(pid: int, since: float) -> ProcessInfo:
    """Name, command line and user of live owner ``pid`` (granted its entry at ``since``).

    Never raises for processes that exit meanwhile or that we may not inspect.
    """
    if pid == 0:   # the core's answer for an owner in another PID namespace
        return ProcessInfo("elsewhere")
    if pid < 0:
        return ProcessInfo("unknown")
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            name = proc.name()
            started = proc.create_time()
            cmdline = _denied_is_none(proc.cmdline)
            username = _denied_is_none(proc.username)
            ppid = proc.ppid()
    except psutil.NoSuchProcess:   # ZombieProcess included: it has exited too
        return ProcessInfo("exited")
    except psutil.AccessDenied:
        return ProcessInfo("denied")
    if since > 0 and started > since + _START_SLACK_S:
        return ProcessInfo("elsewhere")
    parent_cmdline = None
    if is_multiprocessing_worker(cmdline) and ppid > 0:
        try:
            parent_cmdline = psutil.Process(ppid).cmdline() or None
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            parent_cmdline = None   # the worker's own line is still shown
    return ProcessInfo("running", name, cmdline, username, ppid, parent_cmdline)


def describe_owners(entries: Sequence[LockInfo]) -> dict[int, ProcessInfo]:
    """One :class:`ProcessInfo` per live owner pid (dead owners are not looked up)."""
    earliest: dict[int, float] = {}
    for e in entries:
        if e.alive:
            earliest[e.pid] = min(earliest.get(e.pid, e.since), e.since)
    return describe_pids(earliest)


def describe_pids(earliest: dict[int, float]) -> dict[int, ProcessInfo]:
    """One :class:`ProcessInfo` per live owner pid, given the time of its oldest entry."""
    return {pid: describe_process(pid, since) for pid, since in earliest.items()}


def owner_cells(info: ProcessInfo | None, alive: bool) -> tuple[str, str]:
    """NAME and COMMAND cells for an owner."""
    if not alive:
        return "-", "(owner died; 'shmslice reap' removes its entries)"
    if info is None or info.status == "unknown":
        return "?", ""
    if info.status == "exited":
        return "-", "(exited just now)"
    if info.status == "denied":
        return "?", "(another user's process: details hidden)"
    if info.status == "elsewhere":
        return "?", "(pid not visible here: another PID namespace?)"
    command = ""
    if info.parent_cmdline:
        command = f"[worker of {info.ppid}] {command_text(info.parent_cmdline)}"
    elif info.cmdline:
        command = command_text(info.cmdline)
    elif info.cmdline is None:
        command = "(command line hidden)"
    return info.name or "?", command

