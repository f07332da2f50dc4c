"""A full filesystem for the data file: growth fails cleanly and is undone.

These need a real ext4 (a failed posix_fallocate on ext4 keeps the blocks it
allocated and moves the end of the file; tmpfs undoes its own), so they mount
a small loop-device image and need root.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import shmslice

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mkfs.ext4") is None,
                                reason="needs root and mkfs.ext4 to mount a small ext4 image")


@pytest.fixture
def small_ext4(tmp_path: Path) -> Iterator[Path]:
    image = tmp_path / "fs.img"
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    with open(image, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, timeout=60)
    done = subprocess.run(["mount", "-o", "loop", str(image), str(mount_point)],
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a loop device here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True, timeout=60)


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_failed_resize_is_rolled_back(small_ext4: Path) -> None:
    path = small_ext4 / "data.bin"
    with shmslice.open(path, "w+", size=1 << 20) as mf:
        mf[0:5] = b"hello"
        free_before = _free_bytes(small_ext4)
        with pytest.raises(OSError, match="cannot grow") as info:
            mf.resize(200 << 20)
        assert info.value.errno == errno.ENOSPC
        # The file, the mapping and the table agree on the old size, and the
        # blocks the failed growth allocated were given back.
        assert os.stat(path).st_size == 1 << 20
        assert mf.size == 1 << 20
        assert mf.lock_manager.recorded_size() == 1 << 20
        assert _free_bytes(small_ext4) >= free_before - (64 << 10)
        assert mf[0:5] == b"hello"
        mf.resize(2 << 20)   # a growth that fits still works afterwards
        assert os.stat(path).st_size == 2 << 20


def test_failed_create_leaves_an_empty_file_and_frees_space(small_ext4: Path) -> None:
    path = small_ext4 / "big.bin"
    free_before = _free_bytes(small_ext4)
    with pytest.raises(OSError, match="cannot grow") as info:
        shmslice.open(path, "w+", size=200 << 20)
    assert info.value.errno == errno.ENOSPC
    assert os.stat(path).st_size == 0
    assert _free_bytes(small_ext4) >= free_before - (64 << 10)
