"""The one module that touches the compiled code.

Two extensions: ``shmslice._core`` (cffi: the whole C core) and
``shmslice._fastpath`` (a small CPython extension for the uncontended
``LockManager.lock`` and ``RegionLock.release``, which calls the core through
the function pointers handed to it here, so the core exists once per process).
Everything else in shmslice calls the small functions here; they turn C status
codes into the exceptions of :mod:`shmslice.errors`, with the C core's detail
message and the path concerned.
"""

from __future__ import annotations

import errno as _errno
import os

from shmslice import _fastpath
from shmslice._core import ffi, lib
from shmslice.errors import (
    CorruptLockTable,
    DeadlockError,
    LockTableFull,
    LockTimeout,
    ShmSliceError,
    UnsafeLockTable,
)

__all__ = ["ffi", "lib", "raise_status", "table_name", "KIND_NAMES",
           "ManagerBase", "RegionLock", "fast_pin", "fast_unpin", "pinned_view",
           "check_manager_class"]


def _address(name: str) -> int:
    return int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))


_fastpath.bind(*(_address(name) for name in (
    "ss_lock_try", "ss_lock_wait", "ss_lock_cancel", "ss_release_try", "ss_release",
    "ss_pin", "ss_unpin")))
fast_pin = _fastpath.pin
fast_unpin = _fastpath.unpin
pinned_view = _fastpath.pinned_view
check_manager_class = _fastpath.check_manager_class
ManagerBase = _fastpath.ManagerBase
RegionLock = _fastpath.RegionLock

KIND_NAMES = {lib.SS_SHARED: "shared", lib.SS_EXCLUSIVE: "exclusive", lib.SS_PIN: "pin"}

_STATUS_EXCEPTIONS: dict[int, type[ShmSliceError]] = {
    lib.SS_ETIMEDOUT: LockTimeout,
    lib.SS_EDEADLK: DeadlockError,
    lib.SS_EFULL: LockTableFull,
    lib.SS_ECORRUPT: CorruptLockTable,
    lib.SS_EUNSAFE: UnsafeLockTable,
}


def detail() -> str:
    """The calling thread's last failure detail from the C core."""
    return ffi.string(lib.ss_last_detail()).decode("utf-8", "replace")


def raise_status(status: int, path: str | None = None) -> None:
    """Raise the exception for a negative C status; ``path`` names the file concerned."""
    message = detail() or ffi.string(lib.ss_status_message(status)).decode()
    if status == lib.SS_ESYS:
        code = lib.ss_last_errno()
        raise OSError(code, f"{message}: {os.strerror(code)}", path)
    if status == lib.SS_ENOENT:
        raise FileNotFoundError(_errno.ENOENT, message, path)
    if status == lib.SS_EINVAL:
        raise ValueError(message)
    if status == lib.SS_ECLOSED:
        raise ValueError("the lock manager is closed")
    exc_type = _STATUS_EXCEPTIONS.get(status, ShmSliceError)
    raise exc_type(message, path)


def table_name(dev: int, ino: int) -> str:
    """File name of the lock table serving the data file with identity (dev, ino)."""
    buf = ffi.new("char[]", 64)
    lib.ss_table_name(dev, ino, buf, 64)
    return ffi.string(buf).decode()
