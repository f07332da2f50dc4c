"""Shared fixtures and markers.

Every test gets its own data file and lock directory, so no test touches the
machine-wide /dev/shm/shmslice or another test's tables.  The markers
registered in pyproject.toml are applied here: ``slow`` tests run only with
``SHMSLICE_SLOW=1``, ``root`` tests only as root.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# Many tests fork, and forking a process that has other threads can deadlock
# the child (Python 3.12+ warns of it).  numpy's OpenBLAS and pyarrow's
# jemalloc start native threads when they are imported; keep this process to
# one thread, so that only the tests that fork beside a thread on purpose do.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("JE_ARROW_MALLOC_CONF", "background_thread:false")

import shmslice  # after the environment above, which the imports of numpy and pyarrow read


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The engine tests start dask's and Ray's runtimes in this process, and some of their
    # threads outlive them (Ray's gRPC threads stay after ray.shutdown()).  Many other tests
    # fork; forking a process with threads can deadlock the child (Python 3.12+ warns).  So
    # the engine tests run last, in the order they were collected.
    engines = [item for item in items if item.path.name.startswith("test_engines_")]
    if engines:
        rest = [item for item in items if not item.path.name.startswith("test_engines_")]
        items[:] = rest + engines


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("slow") is not None and not os.environ.get("SHMSLICE_SLOW"):
        pytest.skip("slow: set SHMSLICE_SLOW=1 to run it")
    if item.get_closest_marker("root") is not None and os.geteuid() != 0:
        pytest.skip("needs root (chown / setuid)")


@pytest.fixture
def lock_dir(tmp_path: Path) -> Path:
    d = tmp_path / "locks"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    p = tmp_path / "data.bin"
    p.write_bytes(os.urandom(1 << 16))
    return p


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


_settled_threads = [1]   # the most OS threads this process has been seen to keep


@pytest.fixture(autouse=True)
def _threads_gone_before_the_test() -> None:
    # Thread.join() returns once the thread's Python state is gone, while the OS
    # thread is still finishing (glibc and, in the sanitizer run, ASan free its
    # stack and TLS under their own locks).  A test that forks then could fork
    # while one of those locks is held, and its child would hang on it: ASan in
    # gcc 12 has no fork handler for its allocator.  So every test starts once
    # the threads earlier tests (or module fixtures) joined have really exited.
    # Threads that outlive the bound (an engine's runtime keeps some) are taken
    # as settled, so later tests do not wait for them again.
    deadline = time.monotonic() + 2.0
    while _os_threads() > _settled_threads[0]:
        if time.monotonic() > deadline:
            _settled_threads[0] = _os_threads()
            break
        time.sleep(0.002)


@pytest.fixture(autouse=True)
def _isolated_lock_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Anything that does not pass lock_dir explicitly still stays out of /dev/shm.
    d = tmp_path / "default-locks"
    d.mkdir(mode=0o700, exist_ok=True)
    monkeypatch.setenv("SHMSLICE_DIR", str(d))


# -- a mapped file for the slice tests: content(), path() (a test module may
# override it, e.g. with typed data) and mf() --------------------------------
SLICE_FILE_SIZE = 1 << 16


@pytest.fixture
def content() -> bytes:
    return bytes((i * 37 + 11) % 251 for i in range(SLICE_FILE_SIZE))


@pytest.fixture
def path(tmp_path: Path, content: bytes) -> Path:
    p = tmp_path / "data.bin"
    p.write_bytes(content)
    return p


@pytest.fixture
def mf(path: Path, lock_dir: Path) -> Iterator[shmslice.MappedFile]:
    with shmslice.open(path, "r+", lock_dir=lock_dir) as m:
        yield m
