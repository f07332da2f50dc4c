"""Region locks for asyncio: ``await mgr.lock_async(start, end)``.

A request first tries the lock at once, on the event loop's thread (a free
lock costs one core call).  A request that has to wait is handed to the one
waiter thread of the process, which serves every pending request of every
manager (it is started when a request first has to wait, and ends after a
second with nothing to wait for): it advances each request one non-sleeping
step of the core's resumable wait, then sleeps on all their futex words at once
(``futex_waitv``, one system call, up to 127 requests; beyond that it also
re-polls every millisecond) plus a control word that new requests and
cancellations bump.  So waiting costs no thread per waiter and never blocks
the event loop; the result comes back through ``loop.call_soon_threadsafe``.

Owners: each task is a lock owner of its own (a negative owner id, as the
core's deadlock detection names owners), so two tasks of one loop conflict
like two threads, a task asking again for a region it holds gets
``DeadlockError`` at once, and cycles between tasks, threads and processes
are found.  Cancelling the awaiting task withdraws the request (a lock
granted meanwhile is released): nothing is left in the table.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import os
import threading
import time
from typing import TYPE_CHECKING

from shmslice import _binding
from shmslice._binding import EXCLUSIVE

if TYPE_CHECKING:  # pragma: no cover
    from shmslice.locks import LockManager, RegionLock
    from shmslice.records import Mode

__all__ = ["lock_async"]

_owner_ids = itertools.count(1)
# (task, owner id) of the task whose context this is: a task inherits a copy
# of its creator's context, so the entry names its task and is ignored by others.
_task_owner: contextvars.ContextVar[tuple[asyncio.Task[object], int]] = \
    contextvars.ContextVar("shmslice_task_owner")


def _new_owner() -> int:
    return -(next(_owner_ids) % (2**31 - 1) + 1)


def task_owner() -> int:
    """The owner id of the running task (negative; new for each task)."""
    task = asyncio.current_task()
    if task is None:   # a coroutine driven by hand: an owner of its own per call
        return _new_owner()
    mine = _task_owner.get(None)
    if mine is not None and mine[0] is task:
        return mine[1]
    owner = _new_owner()
    _task_owner.set((task, owner))
    return owner


class _Request:
    __slots__ = ("cancelled", "done", "end", "future", "handle", "kind", "loop", "manager",
                 "mode", "start", "timeout_ns", "wait", "withdrawn")

    def __init__(self, manager: LockManager, handle: _binding.FileTableHandle, start: int,
                 end: int, kind: int, mode: Mode, timeout_ns: int, owner: int,
                 loop: asyncio.AbstractEventLoop, future: asyncio.Future[RegionLock]) -> None:
        self.manager, self.handle = manager, handle
        self.start, self.end, self.kind, self.mode = start, end, kind, mode
        self.timeout_ns = timeout_ns
        self.loop, self.future = loop, future
        self.wait = handle.new_wait(owner)
        self.cancelled = False
        self.done = False
        self.withdrawn: asyncio.Future[None] = loop.create_future()


class _Waiter(threading.Thread):
    """The process's one thread that waits for every pending async request."""

    def __init__(self) -> None:
        super().__init__(name="shmslice-lock-waiter", daemon=True)
        self.pid = os.getpid()
        self.guard = threading.Lock()
        self.pending: list[_Request] = []
        self.stopped = False      # set (under guard) when it ends after idling
        self.control = _binding.new_control_word()

    def submit(self, req: _Request) -> bool:
        """Take ``req``; False if this thread has ended (make a new one)."""
        with self.guard:
            if self.stopped:
                return False
            self.pending.append(req)
        _binding.wake_word(self.control)
        return True

    def cancel(self, req: _Request) -> bool:
        """Withdraw ``req``; False if it was already answered (the caller then
        owns whatever the answer was)."""
        with self.guard:
            if req.done:
                return False
            req.cancelled = True
        _binding.wake_word(self.control)
        return True

    def run(self) -> None:
        idle_since = 0
        while True:
            now = time.monotonic_ns()
            with self.guard:
                requests = list(self.pending)
                if requests:
                    idle_since = 0
                elif not idle_since:
                    idle_since = now
                elif now - idle_since >= _IDLE_NS:
                    # Nothing to wait for: end, so that a process that used
                    # lock_async once is not multi-threaded for good (fork).
                    self.stopped = True
                    return
            words, seen = [self.control], [_binding.word_value(self.control)]
            recall = now + 50_000_000
            for req in requests:
                answer = self._step(req)
                if answer is None:
                    word, value, when = _binding.wait_word(req.wait)
                    if word is not None:
                        words.append(word)
                        seen.append(value)
                    recall = min(recall, when)
                    continue
                with self.guard:
                    self.pending.remove(req)
                    cancelled = req.cancelled
                    req.done = True
                ref = answer if isinstance(answer, int) and not isinstance(answer, bool) else None
                if cancelled and ref is not None:     # granted just as it was cancelled
                    req.handle.release_ref(ref)
                try:
                    if cancelled:
                        req.loop.call_soon_threadsafe(_set_withdrawn, req)
                    else:
                        req.loop.call_soon_threadsafe(_deliver, req, answer)
                except RuntimeError:          # the loop was closed: nobody will take it
                    if ref is not None and not cancelled:
                        req.handle.release_ref(ref)
            _binding.wait_many(words, seen, max(0, recall - time.monotonic_ns()))

    @staticmethod
    def _step(req: _Request) -> object:
        """One non-sleeping step: None while waiting, else the answer (a
        reference, the exception to raise, or False once withdrawn)."""
        if req.cancelled:
            req.handle.cancel_wait(req.wait)
            return False
        try:
            return req.handle.lock_step(req.wait, req.start, req.end, req.kind, req.timeout_ns)
        except BaseException as err:   # the exception is the answer, raised in the task
            return err


def _set_withdrawn(req: _Request) -> None:
    if not req.withdrawn.done():
        req.withdrawn.set_result(None)


def _deliver(req: _Request, answer: object) -> None:
    """On the loop's thread: hand the answer to the awaiting task."""
    if isinstance(answer, BaseException):
        if not req.future.done():
            req.future.set_exception(answer)
        return
    if isinstance(answer, int) and not isinstance(answer, bool):
        lk = req.manager._make_lock(answer, req.start, req.end, req.mode)
        if req.future.done():   # cancelled after the grant: nobody will release it
            lk.release()
        else:
            req.future.set_result(lk)


_waiter: _Waiter | None = None
_waiter_guard = threading.Lock()
_IDLE_NS = 1_000_000_000   # the waiter thread ends after this long with nothing to wait for


def _submit(req: _Request) -> _Waiter:
    """Hand ``req`` to the waiter thread (started on first use, again in a
    forked child, where the thread did not survive, and after it ended idle)."""
    global _waiter
    while True:
        w = _waiter
        if w is None or w.pid != os.getpid() or w.stopped:
            with _waiter_guard:
                if _waiter is None or _waiter.pid != os.getpid() or _waiter.stopped:
                    _waiter = _Waiter()
                    _waiter.start()
                w = _waiter
        if w.submit(req):
            return w


async def lock_async(manager: LockManager, handle: _binding.FileTableHandle, start: int,
                     end: int, kind: int, timeout_ns: int) -> RegionLock:
    """The body of ``LockManager.lock_async`` once its arguments are checked."""
    mode: Mode = "exclusive" if kind == EXCLUSIVE else "shared"
    owner = task_owner()
    ref = handle.try_lock_as(start, end, kind, owner)
    if ref is not None:
        return manager._make_lock(ref, start, end, mode)
    if timeout_ns == 0:   # one blocking try (the mutex may be busy): LockTimeout or the lock
        ref = handle.lock_step(handle.new_wait(owner, poll=False), start, end, kind, 0)
        assert ref is not None
        return manager._make_lock(ref, start, end, mode)
    loop = asyncio.get_running_loop()
    future: asyncio.Future[RegionLock] = loop.create_future()
    req = _Request(manager, handle, start, end, kind, mode, timeout_ns, owner, loop, future)
    waiter = _submit(req)
    try:
        return await future
    except asyncio.CancelledError:
        if waiter.cancel(req):
            # Wait (briefly: one step of the waiter thread) until the request
            # is withdrawn, so that nothing is left in the table once the
            # cancelled task has finished.
            while not req.withdrawn.done():
                try:
                    await asyncio.shield(req.withdrawn)
                except asyncio.CancelledError:
                    continue
        elif future.done() and not future.cancelled() and future.exception() is None:
            future.result().release()   # granted just before the cancel
        raise
