"""Shared fixtures: every test gets its own data file and lock directory, so no
test touches the machine-wide /dev/shm/shmslice or another test's tables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


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


@pytest.fixture(autouse=True)
def _isolated_lock_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Anything that does not pass lock_dir explicitly still stays out of /dev/shm.
    d = tmp_path / "default-locks"
    d.mkdir(mode=0o700, exist_ok=True)
    monkeypatch.setenv("SHMSLICE_DIR", str(d))
