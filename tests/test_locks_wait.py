"""The wait protocol across real processes: signals while waiting, stopped
processes (inside the table mutex and outside), fork during attach, the
same thread through two managers, nested shared locks behind a queued
writer, bounded barging and writer fairness, a corrupted holder seen from the
wait path, and the stochastic checker at 16 processes."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import shmslice
from shmslice import _binding
from tests import _lockhelpers as helpers

FORK = mp.get_context("fork")
ROOT = Path(__file__).resolve().parent.parent


def _start(target, *args):
    p = FORK.Process(target=target, args=args, daemon=True)
    p.start()
    return p


def _stop(p, timeout: float = 20.0) -> None:
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join(5)
        raise AssertionError(f"{p} did not finish within {timeout} s")


def _describe(pid: int) -> str:
    """Where a process is stuck, for a failure message: state, threads, wait channel, stack."""
    parts = []
    for name in ("stat", "wchan", "stack"):
        try:
            with open(f"/proc/{pid}/{name}") as f:
                text = f.read().strip()
        except OSError as e:
            text = f"({e.strerror})"
        parts.append(f"{name}: {text.rsplit(')', 1)[-1].split()[0] if name == 'stat' else text}")
    try:
        parts.append(f"threads: {len(os.listdir(f'/proc/{pid}/task'))}")
    except OSError as e:
        parts.append(f"threads: ({e.strerror})")
    return "; ".join(parts)


def _wait(event, what: str, timeout: float = 20.0, proc=None) -> None:
    if not event.wait(timeout):
        where = f" ({_describe(proc.pid)})" if proc is not None and proc.pid else ""
        raise AssertionError(f"{what} did not get ready within {timeout} s{where}")


def _until(cond, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _script(body: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(body)]


def _traffic(path, lock_dir, stop):
    """Unrelated lock traffic on the same table (keeps its mutex busy)."""
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    while not stop.is_set():
        for _ in range(200):
            mgr.lock(1 << 20, (1 << 20) + 10).release()
    mgr.close()


# -- signals while waiting -----------------------------------------------------

SIGINT_WAITER = """
    import json, os, sys, time, shmslice
    path, lock_dir, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    out = os.fdopen(1, "w", buffering=1)
    if mode == "count":
        import signal
        hits = []
        signal.signal(signal.SIGINT, lambda *a: hits.append(time.monotonic()))
    out.write("ready\\n")
    while True:
        try:
            t0 = time.monotonic()
            lk = mgr.lock(0, 10, timeout=None)
        except KeyboardInterrupt:
            now = time.monotonic()
            mine = [e for e in mgr.locks(waiting=True) if e.pid == os.getpid()]
            out.write(json.dumps({"interrupt": now, "left": len(mine)}) + "\\n")
            continue
        out.write(json.dumps({"granted": time.monotonic(), "waited": time.monotonic() - t0,
                              "hits": hits if mode == "count" else []}) + "\\n")
        lk.release()
        break
"""


def _readline(proc, timeout: float) -> str:
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    assert box and box[0], f"no line from the waiter within {timeout} s"
    return box[0]


def test_sigint_while_waiting_on_busy_table_raises_promptly_and_leaves_no_entry(
        data_file: Path, lock_dir: Path) -> None:
    """Every SIGINT reaches the waiter as KeyboardInterrupt within 100 ms
    (asserted at 1 s: shared 2-core machines), even with unrelated traffic
    keeping the table mutex busy; each leaves no entry behind."""
    ready, done = FORK.Event(), FORK.Event()
    holder = _start(helpers.hold_lock, str(data_file), str(lock_dir), 0, 10, "exclusive",
                    ready, done)
    _wait(ready, "the holder", proc=holder)
    stop = FORK.Event()
    traffic = [_start(_traffic, str(data_file), str(lock_dir), stop) for _ in range(2)]
    waiter = subprocess.Popen([*_script(SIGINT_WAITER), str(data_file), str(lock_dir), "raise"],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert _readline(waiter, 30).strip() == "ready"
        time.sleep(0.2)
        latencies = []
        for k in range(20):
            time.sleep(0.02 + (k % 5) * 0.013)
            sent = time.monotonic()
            waiter.send_signal(signal.SIGINT)
            msg = json.loads(_readline(waiter, 10))
            assert msg["left"] == 0, f"the interrupted request left {msg['left']} entries"
            latencies.append(msg["interrupt"] - sent)
        print(f"SIGINT to KeyboardInterrupt: max {max(latencies) * 1e3:.1f} ms, "
              f"median {sorted(latencies)[len(latencies) // 2] * 1e3:.1f} ms")
        assert max(latencies) < 1.0, latencies
        done.set()
        msg = json.loads(_readline(waiter, 20))
        assert "granted" in msg
        assert waiter.wait(20) == 0
    finally:
        stop.set()
        done.set()
        waiter.kill()
        for p in traffic:
            _stop(p)
        _stop(holder)


def _later_requester(path, lock_dir, started, result):
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    started.set()
    lk = mgr.lock(0, 10, timeout=30)
    result.put(time.monotonic())
    lk.release()
    mgr.close()


def test_signal_handler_that_does_not_raise_resumes_the_wait_in_place(
        data_file: Path, lock_dir: Path) -> None:
    """Handlers run while waiting (the wait returns to Python), and the wait
    resumes keeping its place: a request made after it is served after it."""
    ready, done = FORK.Event(), FORK.Event()
    holder = _start(helpers.hold_lock, str(data_file), str(lock_dir), 0, 10, "exclusive",
                    ready, done)
    _wait(ready, "the holder", proc=holder)
    waiter = subprocess.Popen([*_script(SIGINT_WAITER), str(data_file), str(lock_dir), "count"],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    later = None
    try:
        assert _readline(waiter, 30).strip() == "ready"
        with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
            _until(lambda: any(e.waiting and e.pid == waiter.pid
                               for e in mgr.locks(waiting=True)), "the waiter to queue")
        time.sleep(0.02)
        started, result = FORK.Event(), FORK.Queue()
        later = _start(_later_requester, str(data_file), str(lock_dir), started, result)
        _wait(started, "the later requester")
        time.sleep(0.05)
        # Signals while both wait: each interrupted wait must resume in place,
        # not re-queue behind the later request.
        sent = []
        for _ in range(10):
            time.sleep(0.03)
            sent.append(time.monotonic())
            waiter.send_signal(signal.SIGINT)
        time.sleep(0.05)
        done.set()
        msg = json.loads(_readline(waiter, 20))
        later_granted = result.get(timeout=20)
        assert len(msg["hits"]) == 10, msg
        lag = [h - s for h, s in zip(msg["hits"], sent, strict=False)]
        print(f"handler lag: max {max(lag) * 1e3:.1f} ms")
        assert max(lag) < 1.0, lag
        assert msg["granted"] <= later_granted, "the resumed waiter lost its place"
        assert waiter.wait(20) == 0
    finally:
        done.set()
        waiter.kill()
        if later is not None:
            _stop(later)
        _stop(holder)


def _writer_with_itimer(path, lock_dir, result):
    """A writer whose own process handles a Python signal every 5 ms."""
    signal.signal(signal.SIGALRM, lambda *a: None)
    signal.setitimer(signal.ITIMER_REAL, 0.005, 0.005)
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    t0 = time.monotonic()
    try:
        lk = mgr.lock(0, 100, timeout=10)
    except shmslice.LockTimeout:
        result.put(("timeout", time.monotonic() - t0))
        return
    signal.setitimer(signal.ITIMER_REAL, 0)
    result.put(("ok", time.monotonic() - t0))
    lk.release()
    mgr.close()


def test_writer_handling_frequent_signals_is_not_starved_by_readers(
        data_file: Path, lock_dir: Path) -> None:
    stop, count = FORK.Event(), FORK.Value("l", 0)
    readers = [_start(helpers.stream_shared, str(data_file), str(lock_dir), 0, 100, stop, count)
               for _ in range(3)]
    try:
        _until(lambda: count.value > 20, "the readers")
        result = FORK.Queue()
        writer = _start(_writer_with_itimer, str(data_file), str(lock_dir), result)
        status, waited = result.get(timeout=30)
        _stop(writer)
        print(f"writer waited {waited * 1e3:.1f} ms")
        assert status == "ok" and waited < 5.0, (status, waited)
    finally:
        stop.set()
        for p in readers:
            _stop(p)


# -- stopped processes -----------------------------------------------------------

def _stop_inside_mutex(path, lock_dir, ready, result, hold=None):
    from shmslice._binding import lib
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    ready.set()
    lib.ss_debug_set_stop_point(1, 1)    # entry_alloc: inside the table mutex
    lk = mgr.lock(500, 510)
    result.put("locked after SIGCONT")
    if hold is not None:
        hold.wait(30)
    lk.release()
    mgr.close()


# The process that stops inside the mutex is forked while a thread waits (the
# waiter must be queued before the mutex is stuck).
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_process_stopped_inside_the_mutex(data_file: Path, lock_dir: Path) -> None:
    """timeout=1 returns in about 1 s with the GIL free meanwhile, the message
    says the holder is stopped; a waiter that gives up then leaves nothing
    that blocks anyone once the process continues."""
    ready, done = FORK.Event(), FORK.Event()
    holder = _start(helpers.hold_lock, str(data_file), str(lock_dir), 300, 310, "exclusive",
                    ready, done)
    _wait(ready, "the holder", proc=holder)
    mgr = shmslice.LockManager(data_file, lock_dir=lock_dir)
    gave_up: list = []

    def waiter() -> None:
        t0 = time.monotonic()
        try:
            mgr.lock(300, 310, timeout=1.5)
        except shmslice.LockTimeout as exc:
            gave_up.append((time.monotonic() - t0, str(exc)))

    wt = threading.Thread(target=waiter)
    wt.start()
    _until(lambda: any(e.waiting for e in mgr.locks(waiting=True)), "the waiter to queue")
    sready, sresult = FORK.Event(), FORK.Queue()
    stopped = _start(_stop_inside_mutex, str(data_file), str(lock_dir), sready, sresult)
    try:
        _wait(sready, "the process to stop")
        _until(lambda: _proc_state(stopped.pid) == "T", "SIGSTOP inside the mutex")
        ticks = [0]
        running = [True]

        def ticker() -> None:
            while running[0]:
                ticks[0] += 1

        tt = threading.Thread(target=ticker)
        tt.start()
        t0 = time.monotonic()
        with pytest.raises(shmslice.LockTimeout) as err:
            mgr.lock(600, 700, timeout=1)
        took = time.monotonic() - t0
        running[0] = False
        tt.join(10)
        print(f"timeout=1 with a stopped mutex holder took {took:.3f} s; ticks {ticks[0]}")
        assert 0.9 <= took < 2.0, took
        assert f"pid {stopped.pid} is stopped" in str(err.value), str(err.value)
        assert ticks[0] > 1000, "the GIL was held while waiting for the mutex"
        wt.join(10)
        assert gave_up and gave_up[0][0] < 2.5, gave_up
    finally:
        os.kill(stopped.pid, signal.SIGCONT)
    assert sresult.get(timeout=20) == "locked after SIGCONT"
    _stop(stopped)
    done.set()
    _stop(holder)
    # The given-up entry neither blocks nor stays.
    mgr.lock(300, 310, timeout=0).release()
    assert list(mgr.locks(waiting=True)) == []
    mgr.close()


def test_holder_stopped_outside_the_mutex(data_file: Path, lock_dir: Path) -> None:
    ready, done = FORK.Event(), FORK.Event()
    holder = _start(helpers.hold_lock, str(data_file), str(lock_dir), 0, 10, "exclusive",
                    ready, done)
    _wait(ready, "the holder", proc=holder)
    os.kill(holder.pid, signal.SIGSTOP)
    try:
        _until(lambda: _proc_state(holder.pid) == "T", "SIGSTOP")
        with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
            t0 = time.monotonic()
            with pytest.raises(shmslice.LockTimeout) as err:
                mgr.lock(0, 10, timeout=1)
            assert 0.9 <= time.monotonic() - t0 < 2.0
            assert f"held exclusively by pid {holder.pid}" in str(err.value)
            mgr.lock(20, 30, timeout=1).release()   # the rest of the table works
            assert [e for e in mgr.locks(waiting=True) if e.waiting] == []
    finally:
        os.kill(holder.pid, signal.SIGCONT)
    done.set()
    _stop(holder)


def _hold_lock_and_pins(path, lock_dir, ready, done):
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    lk = mgr.lock(0, 10)
    refs = [mgr.pin(100, 110), mgr.pin(200, 210)]   # entries 0-2: a waiter's is above them
    ready.set()
    done.wait(60)
    lk.release()
    for ref in refs:
        mgr.unpin(ref)
    mgr.close()


def _die_inside_mutex(path, lock_dir):
    from shmslice._binding import lib
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    lib.ss_debug_set_crash_point(1, 1)   # entry_alloc: SIGKILL inside the table mutex
    mgr.lock(500, 510)


def _stop_inside_repair(path, lock_dir):
    from shmslice._binding import lib
    lib.ss_debug_set_stop_point(5, 1)    # half way through the repair's walk (from the top)
    shmslice.LockManager(path, lock_dir=lock_dir).close()   # the attach repairs


def test_request_abandoned_during_a_repair_is_still_removed(data_file: Path,
                                                           lock_dir: Path) -> None:
    """A waiter gives up (its cancel cannot get the mutex) while another process
    repairs the table and has already walked past the waiter's entry: the
    repair's count of abandoned entries must not overwrite the waiter's, or the
    entry is never removed and shows as waiting for good."""
    ready, done = FORK.Event(), FORK.Event()
    holder = _start(_hold_lock_and_pins, str(data_file), str(lock_dir), ready, done)
    _wait(ready, "the holder", proc=holder)
    mgr = shmslice.LockManager(data_file, lock_dir=lock_dir)
    handle = mgr._handle
    wait = handle.new_wait(-7, poll=True)
    assert handle.lock_step(wait, 0, 10, _binding.EXCLUSIVE, -1) is None   # queued: entry 3
    crasher = _start(_die_inside_mutex, str(data_file), str(lock_dir))
    crasher.join(20)
    assert crasher.exitcode == -signal.SIGKILL
    repairer = _start(_stop_inside_repair, str(data_file), str(lock_dir))
    try:
        _until(lambda: _proc_state(repairer.pid) == "T", "the repair to stop half way")
        handle.cancel_wait(wait)     # the mutex is held: the request is abandoned
    finally:
        os.kill(repairer.pid, signal.SIGCONT)
    _stop(repairer)
    assert repairer.exitcode == 0
    left = [e for e in mgr.locks(waiting=True) if e.waiting]
    assert left == [], left
    assert mgr.stat().waiting == 0
    done.set()
    _stop(holder)
    mgr.lock(0, 10, timeout=5).release()
    mgr.close()


# -- fork while another thread attaches ------------------------------------------

FORK_DURING_ATTACH = """
    import fcntl, os, struct, sys, threading, time, shmslice
    path, lock_dir, table = sys.argv[1], sys.argv[2], sys.argv[3]
    stop = False
    def attacher():
        while not stop:
            shmslice.LockManager(path, lock_dir=lock_dir).close()
    threads = [threading.Thread(target=attacher) for _ in range(2)]
    for t in threads: t.start()
    kids = []
    r, w = os.pipe()
    started_r, started_w = os.pipe()
    deadline = time.monotonic() + 6
    while len(kids) < 300 and time.monotonic() < deadline:
        pid = os.fork()
        if pid == 0:
            os.close(w)
            os.write(started_w, b"s")   # the atfork handlers have run
            os.read(r, 1)     # live until the parent is done
            os._exit(0)
        kids.append(pid)
        time.sleep(0.002)
    stop = True
    for t in threads: t.join()
    # A child holds a copy of every descriptor the parent had open at fork
    # time until it first runs (its atfork handler closes them): on a busy
    # machine the last children may not have run yet.  Wait until all have.
    started, until = 0, time.monotonic() + 60
    while started < len(kids) and time.monotonic() < until:
        started += len(os.read(started_r, 4096))
    if started < len(kids):
        sys.exit(f"only {started} of {len(kids)} children started in 60 s")
    # Every manager of this process is closed: no liveness lock may remain.
    fd = os.open(table, os.O_RDWR)
    fl = struct.pack("hhxxxxqqi4x", fcntl.F_WRLCK, 0, 1 << 40, 1 << 20, 0)
    got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, fl)
    held = struct.unpack("hhxxxxqqi4x", got)[0] != fcntl.F_UNLCK
    os.close(w)
    for pid in kids: os.waitpid(pid, 0)
    print(len(kids), "held" if held else "free")
"""


def test_fork_during_attach_leaves_no_liveness_lock_in_children(data_file: Path,
                                                                lock_dir: Path) -> None:
    table = shmslice.LockManager(data_file, lock_dir=lock_dir)
    path = table.table_path
    table.close()
    for _ in range(3):
        r = subprocess.run([*_script(FORK_DURING_ATTACH), str(data_file), str(lock_dir), path],
                           capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
        assert r.returncode == 0, r.stderr[-3000:]
        forks, state = r.stdout.split()
        assert int(forks) > 50
        assert state == "free", "a child forked during an attach kept its liveness lock"


# -- deadlock checks and nested shared locks ------------------------------------

def test_same_thread_through_a_second_manager_is_deadlock(data_file: Path,
                                                          lock_dir: Path) -> None:
    first = shmslice.LockManager(data_file, lock_dir=lock_dir)
    lk = first.lock(0, 10)
    second = shmslice.LockManager(data_file, lock_dir=lock_dir)
    t0 = time.monotonic()
    with pytest.raises(shmslice.DeadlockError):
        second.lock(0, 10, timeout=5)
    with pytest.raises(shmslice.DeadlockError):
        second.lock(5, 15, mode="shared", timeout=None)
    assert time.monotonic() - t0 < 1.0
    # Another thread of the process is not the same thread: it waits.
    out: list = []
    t = threading.Thread(target=lambda: out.append(_timeout_or_ok(second, 0, 10, 0.2)))
    t.start()
    t.join(10)
    assert out == ["timeout"]
    # A forked child is another process, though its thread id may repeat ours.
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child = shmslice.LockManager(data_file, lock_dir=lock_dir)
            code = 0 if _timeout_or_ok(child, 0, 10, 0.2) == "timeout" else 2
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
    lk.release()
    second.lock(0, 10, timeout=0).release()
    first.close()
    second.close()


def _timeout_or_ok(mgr, a, b, timeout):
    try:
        mgr.lock(a, b, timeout=timeout).release()
    except shmslice.LockTimeout:
        return "timeout"
    return "ok"


def _shared_try(path, lock_dir, mode, result):
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    try:
        mgr.lock(0, 10, mode=mode, timeout=0.2).release()
        result.put("granted")
    except shmslice.LockTimeout as exc:
        result.put(str(exc))
    mgr.close()


def test_nested_shared_lock_with_a_queued_writer_is_granted(data_file: Path,
                                                            lock_dir: Path) -> None:
    mgr = shmslice.LockManager(data_file, lock_dir=lock_dir)
    outer = mgr.lock(0, 10, mode="shared")
    started, result = FORK.Event(), FORK.Queue()
    writer = _start(helpers.wait_for_lock, str(data_file), str(lock_dir), 0, 10, "exclusive",
                    started, result)
    _wait(started, "the writer")
    _until(lambda: any(e.waiting for e in mgr.locks(waiting=True)), "the writer to queue")
    time.sleep(0.02)    # past the barging window: the writer is served in order now
    # Others queue behind the writer, and messages name holders and waiters rightly.
    q = FORK.Queue()
    _stop(_start(_shared_try, str(data_file), str(lock_dir), "shared", q))
    msg = q.get(timeout=10)
    assert f"queued behind pid {writer.pid}'s waiting exclusive request" in msg, msg
    _stop(_start(_shared_try, str(data_file), str(lock_dir), "exclusive", q))
    msg = q.get(timeout=10)
    assert f"held shared by pid {os.getpid()}" in msg, msg
    # The holder's own nested shared request does not queue behind the writer
    # (who waits for the holder): granted, not a deadlock.
    t0 = time.monotonic()
    inner = mgr.lock(2, 8, mode="shared", timeout=5)
    assert time.monotonic() - t0 < 1.0
    inner.release()
    outer.release()
    assert result.get(timeout=20)[0] == "ok"
    _stop(writer)
    mgr.close()


# -- fairness ------------------------------------------------------------------------

def _barger(path, lock_dir, stop, count):
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    n = 0
    while not stop.is_set():
        for _ in range(100):
            mgr.lock(0, 8, timeout=30).release()
        n += 100
    with count.get_lock():
        count.value += n
    mgr.close()


def _victim(path, lock_dir, rounds, result):
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    waits = []
    for _ in range(rounds):
        t0 = time.monotonic()
        lk = mgr.lock(0, 8, timeout=10)
        waits.append(time.monotonic() - t0)
        lk.release()
        time.sleep(0.002)
    result.put(waits)
    mgr.close()


def test_barging_cannot_starve_a_waiter(data_file: Path, lock_dir: Path) -> None:
    """Three processes re-take a hot lock in tight loops (more runnable
    processes than cores): a fourth still gets it, every time, soon."""
    stop, count = FORK.Event(), FORK.Value("l", 0)
    bargers = [_start(_barger, str(data_file), str(lock_dir), stop, count) for _ in range(3)]
    result = FORK.Queue()
    victim = _start(_victim, str(data_file), str(lock_dir), 100, result)
    try:
        waits = result.get(timeout=120)
    finally:
        stop.set()
        for p in bargers:
            _stop(p)
        _stop(victim)
    waits.sort()
    print(f"victim waits: median {waits[50] * 1e3:.2f} ms, p99 {waits[98] * 1e3:.2f} ms, "
          f"max {waits[-1] * 1e3:.2f} ms; bargers took {count.value} locks")
    assert waits[-1] < 2.0, waits[-5:]


def test_writer_is_not_starved_by_a_stream_of_readers(data_file: Path, lock_dir: Path) -> None:
    stop, count = FORK.Event(), FORK.Value("l", 0)
    readers = [_start(helpers.stream_shared, str(data_file), str(lock_dir), 0, 100, stop, count)
               for _ in range(4)]
    try:
        _until(lambda: count.value > 20, "the readers")
        with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
            for _ in range(5):
                t0 = time.monotonic()
                lk = mgr.lock(10, 20, timeout=10)
                waited = time.monotonic() - t0
                lk.release()
                assert waited < 2.0, waited
                time.sleep(0.02)
    finally:
        stop.set()
        for p in readers:
            _stop(p)


# -- the wait path never trusts shared memory ---------------------------------------

ENTRIES_OFFSET = _binding.table_constants()["entries_offset"]
ENTRY_BYTES = _binding.table_constants()["entry_bytes"]
OWNER_SLOT = _binding.table_layout()["entry.owner_slot"][0]


def _wait_and_report(path, lock_dir, started, result):
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    started.set()
    try:
        mgr.lock(0, 10, timeout=5).release()
        result.put("granted")
    except shmslice.ShmSliceError as exc:
        result.put(type(exc).__name__)


def test_corrupted_holder_seen_from_the_wait_path(data_file: Path, lock_dir: Path) -> None:
    mgr = shmslice.LockManager(data_file, lock_dir=lock_dir)
    lk = mgr.lock(0, 10)
    index = lk._ref & 0xFFFFFFFF
    started, result = FORK.Event(), FORK.Queue()
    waiter = _start(_wait_and_report, str(data_file), str(lock_dir), started, result)
    _wait(started, "the waiter")
    _until(lambda: any(e.waiting for e in mgr.locks(waiting=True)), "the waiter to queue")
    with open(mgr.table_path, "r+b") as f:
        f.seek(ENTRIES_OFFSET + index * ENTRY_BYTES + OWNER_SLOT)
        f.write(struct.pack("<I", 0xFFFFFF00))
    out = result.get(timeout=20)
    waiter.join(10)
    assert waiter.exitcode == 0, f"the waiter died (exit {waiter.exitcode})"
    assert out in ("CorruptLockTable", "LockTimeout"), out


# -- mutual exclusion under the new protocol, more processes than cores ----------------

def test_stochastic_checker_at_16_processes(tmp_path: Path) -> None:
    from tests.test_faults_stress import run_stress
    seed = int(os.environ.get("SHMSLICE_STRESS_SEED", str(int(time.time()))))
    print(f"seed {seed}")
    result = run_stress(tmp_path, seed, procs=16, rounds=2, ops=150)   # asserts every round
    print(result)
    assert result["grants_checked"] > 16 * 2 * 2 * 50


# -- crash points of the new code paths ------------------------------------------------

def _release_and_die(path, lock_dir, point, ready, go):
    from shmslice._binding import lib
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)
    lk = mgr.lock(0, 10)
    ready.set()
    go.wait(20)
    lib.ss_debug_set_crash_point(point, 1)
    lk.release()          # 6: during the handoff to the waiter, 7: in the wake-up pass
    os._exit(3)


@pytest.mark.parametrize("point", [6, 7])
def test_death_in_the_wake_up_pass_is_repaired(point: int, data_file: Path,
                                               lock_dir: Path) -> None:
    ready, go = FORK.Event(), FORK.Event()
    holder = _start(_release_and_die, str(data_file), str(lock_dir), point, ready, go)
    _wait(ready, "the holder", proc=holder)
    started, result = FORK.Event(), FORK.Queue()
    waiter = _start(helpers.wait_for_lock, str(data_file), str(lock_dir), 0, 10, "exclusive",
                    started, result)
    _wait(started, "the waiter")
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        _until(lambda: any(e.waiting for e in mgr.locks(waiting=True)), "the waiter to queue")
        time.sleep(0.01)           # urgent: the release hands the region over
        go.set()
        holder.join(20)
        assert holder.exitcode == -signal.SIGKILL, holder.exitcode
        status, _ = result.get(timeout=20)
        assert status == "ok"
        _stop(waiter)
        assert mgr.stat().repairs >= 1
        mgr.lock(0, 10, timeout=5).release()
        assert mgr.locks(waiting=True) == []
    # A fresh attach validates the whole table.
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as again:
        again.lock(0, 10, timeout=0).release()


def _lock_with_crash_point(path, lock_dir, point):
    from shmslice._binding import lib
    lib.ss_debug_set_crash_point(point, 1)
    mgr = shmslice.LockManager(path, lock_dir=lock_dir)   # 8: the attach takes the mutex
    mgr.lock(900, 910).release()
    os._exit(3)


def test_releases_abandoned_under_a_stopped_mutex_holder_are_removed_even_after_a_death(
        data_file: Path, lock_dir: Path) -> None:
    mgr = shmslice.LockManager(data_file, lock_dir=lock_dir)
    held = [mgr.lock(0, 10), mgr.lock(20, 30)]
    sready, sresult, hold = FORK.Event(), FORK.Queue(), FORK.Event()
    stopped = _start(_stop_inside_mutex, str(data_file), str(lock_dir), sready, sresult, hold)
    try:
        _wait(sready, "the process to stop")
        _until(lambda: _proc_state(stopped.pid) == "T", "SIGSTOP inside the mutex")
        t0 = time.monotonic()
        for lk in held:
            lk.release()          # cannot get the mutex: abandoned, not waited for
        assert time.monotonic() - t0 < 2.0
    finally:
        os.kill(stopped.pid, signal.SIGCONT)
    assert sresult.get(timeout=20) == "locked after SIGCONT"
    # It has left the mutex without a sweep (sweeps run on taking it): the
    # next process to take it removes the two abandoned entries, and dies
    # between them.
    dying = _start(_lock_with_crash_point, str(data_file), str(lock_dir), 8)
    dying.join(20)
    hold.set()
    _stop(stopped)
    assert dying.exitcode == -signal.SIGKILL, dying.exitcode
    # The next holder repairs the table and removes what is left.
    mgr.lock(0, 30, timeout=5).release()
    assert mgr.locks(waiting=True) == []
    assert mgr.stat().repairs >= 1
    mgr.close()

