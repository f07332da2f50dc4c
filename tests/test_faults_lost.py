"""Nothing lost: writers put patterns into disjoint slices of one file
under exclusive locks and flush; a controller SIGKILLs them at random moments
(some right after a flush, some mid-write) and starts replacements that resume
where the last *reported* flush left off.  At the end the file -- read back
with plain reads, not through the mapping -- must hold exactly every writer's
patterns, and the guard bytes between the writers' regions must be untouched.

The seed is printed; replay with ``SHMSLICE_LOST_SEED=<seed>``.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import shmslice

WRITERS = 4
BLOCK = 16 * 1024
BLOCKS = 48                      # per writer
GUARD = 4096                     # untouched bytes between writers' regions
REGION = BLOCKS * BLOCK + GUARD
FILL = 0xEE


def pattern(writer: int, block: int) -> bytes:
    r = random.Random(writer * 1000 + block)
    return r.randbytes(BLOCK)


def region_start(writer: int) -> int:
    return GUARD + writer * REGION


def writer_body(path: str, lock_dir: str, progress: str, writer: int, seed: int) -> None:
    rng = random.Random(seed)
    done = -1
    if os.path.exists(progress):
        text = Path(progress).read_text().split()
        done = int(text[-1]) if text else -1
    mf = shmslice.open(path, "r+", lock_dir=lock_dir)
    fd = os.open(progress, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    for block in range(done + 1, BLOCKS):
        a = region_start(writer) + block * BLOCK
        s = mf[a:a + BLOCK]
        with s.lock("exclusive", timeout=10):
            data = pattern(writer, block)
            half = BLOCK // 2
            s[:half] = data[:half]
            if rng.random() < 0.3:
                time.sleep(0.001)          # a kill here leaves a torn block: rewritten later
            s[half:] = data[half:]
            s.flush()
        s.release()
        os.write(fd, f"{block}\n".encode())   # reported only after the flush returned
        if rng.random() < 0.2:
            time.sleep(0.002)
    os.close(fd)
    mf.close()


def spawn(path: Path, lock_dir: Path, work: Path, writer: int, seed: int) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            writer_body(str(path), str(lock_dir), str(work / f"progress-{writer}"), writer, seed)
        except BaseException as exc:
            os.write(2, f"writer {writer}: {exc!r}\n".encode())
            code = 1
        os._exit(code)
    return pid


def test_flushed_writes_survive_kills(tmp_path: Path) -> None:
    env = os.environ.get("SHMSLICE_LOST_SEED")
    seed = int(env) if env else random.SystemRandom().randrange(1, 2**31)
    print(f"nothing-lost seed {seed} (replay: SHMSLICE_LOST_SEED={seed})")
    rng = random.Random(seed)
    path = tmp_path / "data.bin"
    size = GUARD + WRITERS * REGION
    path.write_bytes(bytes([FILL]) * size)
    lock_dir = tmp_path / "locks"
    live: dict[int, int] = {}
    finished: set[int] = set()
    kills = 0
    generation = 0
    for w in range(WRITERS):
        generation += 1
        live[w] = spawn(path, lock_dir, tmp_path, w, seed + generation)
    deadline = time.monotonic() + 60
    while live:
        assert time.monotonic() < deadline, f"writers did not finish: {sorted(live)}"
        time.sleep(rng.uniform(0.001, 0.01))
        for w, pid in list(live.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if not done:
                continue
            del live[w]
            if os.WIFSIGNALED(status):
                assert os.WTERMSIG(status) == signal.SIGKILL, status
                generation += 1
                live[w] = spawn(path, lock_dir, tmp_path, w, seed + generation)
            else:
                assert os.WEXITSTATUS(status) == 0, f"writer {w} failed (see stderr)"
                finished.add(w)
        if live and kills < 40 and rng.random() < 0.5:
            w = rng.choice(sorted(live))
            os.kill(live[w], signal.SIGKILL)
            kills += 1
    assert finished == set(range(WRITERS))
    print(f"{kills} writers killed")

    with open(path, "rb") as f:        # plain reads: what is in the file, not our mapping
        got = f.read()
    assert len(got) == size
    assert got[:GUARD] == bytes([FILL]) * GUARD
    for w in range(WRITERS):
        a = region_start(w)
        for block in range(BLOCKS):
            chunk = got[a + block * BLOCK:a + (block + 1) * BLOCK]
            assert chunk == pattern(w, block), f"writer {w} block {block} differs"
        guard = got[a + BLOCKS * BLOCK:a + REGION]
        assert guard == bytes([FILL]) * GUARD, f"guard after writer {w} was written"
        reported = Path(tmp_path / f"progress-{w}").read_text().split()
        assert [int(x) for x in reported][-1] == BLOCKS - 1
    with shmslice.open(path, "r", lock_dir=lock_dir) as mf:
        mf.lock_manager.reap()
        assert mf.locks() == []
