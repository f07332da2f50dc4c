"""A full filesystem for the data file: growth fails cleanly and is undone.

These need a real ext4 (a failed posix_fallocate on ext4 keeps the blocks it
allocated and moves the end of the file; tmpfs undoes its own), so they mount
a small loop-device image and need root.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
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


# -- holes: a writable mapping of a sparse file on a full filesystem --------------------------

@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs",
                           str(mount_point)], capture_output=True, text=True, timeout=60,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True, timeout=60)


def _sparse(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


_WRITE_ALL = """
import sys, shmslice
mf = shmslice.open(sys.argv[1], "r+", lock_dir=sys.argv[2], allocate=sys.argv[3] == "1")
mf[0:len(mf)] = b"x" * len(mf)
print("wrote")
"""


@pytest.mark.parametrize("fs", ["small_tmpfs", "small_ext4"])
def test_sparse_file_on_a_full_filesystem_is_enospc_at_open(fs: str, request: pytest.FixtureRequest,
                                                           lock_dir: Path) -> None:
    from tests.support import run_python
    mount_point: Path = request.getfixturevalue(fs)
    path = mount_point / "sparse.bin"
    size = 4 << 20 if fs == "small_tmpfs" else 64 << 20    # more than the filesystem holds
    _sparse(path, size)
    # The old behaviour, still there with allocate=False: the write through the
    # mapping kills the process with SIGBUS.
    done = run_python("-c", _WRITE_ALL, path, lock_dir, "0", timeout=120)
    bus = done.returncode == -signal.SIGBUS or "AddressSanitizer: BUS" in done.stderr  # (.ci/sanitize)
    assert bus, (done.returncode, done.stderr)
    os.truncate(path, 0)
    _sparse(path, size)
    with pytest.raises(OSError, match="cannot allocate the holes") as info:
        shmslice.open(path, "r+", lock_dir=lock_dir)
    assert info.value.errno == errno.ENOSPC
    assert os.stat(path).st_size == size                   # nothing else changed
    with open(path, "rb") as f:
        assert f.read(1 << 16) == bytes(1 << 16)
    done = run_python("-c", _WRITE_ALL, path, lock_dir, "1", timeout=120)
    assert done.returncode == 1 and "ENOSPC" not in done.stdout
    assert "No space left on device" in done.stderr
    with shmslice.open(path, "r", lock_dir=lock_dir) as mf:  # read-only: holes read as zeros
        assert mf[0:10] == bytes(10)


def test_sparse_file_that_fits_is_allocated_at_open(small_tmpfs: Path, lock_dir: Path) -> None:
    path = small_tmpfs / "sparse.bin"
    _sparse(path, 256 << 10)
    assert os.stat(path).st_blocks == 0
    with shmslice.open(path, "r+", lock_dir=lock_dir) as mf:
        assert os.stat(path).st_blocks * 512 >= 256 << 10
        mf[0:len(mf)] = b"y" * len(mf)
        mf.flush()
    assert path.read_bytes() == b"y" * (256 << 10)
    _sparse(small_tmpfs / "kept.bin", 256 << 10)
    with shmslice.open(small_tmpfs / "kept.bin", "r+", lock_dir=lock_dir, allocate=False):
        assert os.stat(small_tmpfs / "kept.bin").st_blocks == 0


def test_file_grown_behind_shmslice_is_allocated_before_it_is_remapped(small_tmpfs: Path,
                                                                     lock_dir: Path) -> None:
    path = small_tmpfs / "data.bin"
    with shmslice.open(path, "w+", size=4096, lock_dir=lock_dir) as mf:
        mf[0:4] = b"keep"
        os.truncate(path, 8 << 20)        # another program grows it: a hole the fs cannot fill
        # A resize within the file's size allocates nothing itself; the remap that
        # follows would map the hole writable.
        with pytest.raises(OSError, match="cannot allocate the holes") as info:
            mf.resize(6 << 20)
        assert info.value.errno == errno.ENOSPC
        mf.resize(8192)                   # fits: remapped, the new range allocated
        assert mf.size == 8192
        mf[4096:8192] = b"z" * 4096
        assert mf[0:4] == b"keep" and mf[8188:8192] == b"zzzz"


def test_full_lock_directory_is_enospc_at_attach(tmp_path: Path, data_file: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k,mode=0700", "tmpfs", str(tiny)],
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:   # a fresh table needs 52 KiB
        with pytest.raises(OSError, match="cannot allocate") as info:
            shmslice.open(data_file, "r", lock_dir=tiny)
        assert info.value.errno == errno.ENOSPC
        assert os.listdir(tiny) == []     # no table, no temporary file left behind
    finally:
        subprocess.run(["umount", str(tiny)], check=True, timeout=60)
