"""Where lock tables live, and the checks that make that place safe to use.

The default runtime directory is ``/dev/shm/shmslice``: one per machine, on
tmpfs (tables vanish at reboot, when no process can hold a lock anyway), and
shared by every user so that two users opening the same data file meet in the
same table.  Like ``/tmp`` it is world-writable with the sticky bit, so no user
can remove or replace another user's table.  ``SHMSLICE_DIR`` or ``lock_dir=``
choose another directory; it is created (mode 0700) if missing.
"""

from __future__ import annotations

import os
import stat
import tempfile

from shmslice.errors import UnsafeLockTable

__all__ = ["default_lock_dir", "resolve_lock_dir"]

_DEFAULT_NAME = "shmslice"


def default_lock_dir() -> str:
    """The per-machine runtime directory (not created)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    return os.path.join(base, _DEFAULT_NAME)


def _check_dir(path: str) -> None:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeLockTable(
            f"lock directory {path} is a symbolic link; refusing to follow it "
            "(remove it, or set SHMSLICE_DIR to a directory of your own)", path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeLockTable(f"lock directory {path} is not a directory", path)
    if st.st_uid not in (os.geteuid(), 0):
        raise UnsafeLockTable(
            f"lock directory {path} is owned by uid {st.st_uid}, neither you nor root; "
            "refusing it (remove it, or set SHMSLICE_DIR)", path)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise UnsafeLockTable(
            f"lock directory {path} is writable by others but not sticky; "
            f"run 'chmod +t {path}' or set SHMSLICE_DIR", path)


def resolve_lock_dir(lock_dir: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None = None,
                     *, create: bool = True) -> str:
    """The lock directory to use: ``lock_dir``, else ``$SHMSLICE_DIR``, else the default.

    Creates it if missing (unless ``create`` is false) and checks that it is
    safe.  The directory itself must not be a symbolic link (directories above
    it may be): the path is made absolute, not resolved.
    """
    if lock_dir is not None and not isinstance(lock_dir, (str, bytes, os.PathLike)):
        raise TypeError(f"lock_dir must be a path (str, bytes or os.PathLike), "
                        f"not {type(lock_dir).__name__}")
    chosen = (os.fsdecode(os.fspath(lock_dir)) if lock_dir is not None
              else os.environ.get("SHMSLICE_DIR") or None)
    if chosen is None:
        path = default_lock_dir()
        mode = 0o1777
    else:
        if "\0" in chosen:
            raise ValueError("lock_dir contains a NUL byte")
        path = os.path.abspath(chosen)
        mode = 0o700
    if create and not os.path.lexists(path):
        try:
            os.mkdir(path, mode)
            os.chmod(path, mode)   # mkdir honours the umask; the sticky, shared mode must not
        except FileExistsError:
            pass   # another process created it first: checked below like any other
    if os.path.lexists(path):
        _check_dir(path)
    return path
