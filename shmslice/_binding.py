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

__all__ = [
    "KIND_NAMES",
    "ByteBufferSlice",
    "FileBase",
    "ManagerBase",
    "RegionLock",
    "bind_lock_info",
    "bind_slice_helpers",
    "fast_pin",
    "fast_unpin",
    "ffi",
    "lib",
    "manager_locks",
    "manager_pin",
    "manager_unpin",
    "raise_status",
    "table_name",
]


def _address(name: str) -> int:
    return int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))


_fastpath.bind(_address("ss_lock"), _address("ss_release"), _address("ss_pin"), _address("ss_unpin"))
fast_pin = _fastpath.pin
fast_unpin = _fastpath.unpin
ByteBufferSlice = _fastpath.ByteBufferSlice
FileBase = _fastpath.FileBase
manager_pin = _fastpath.manager_pin        # LockManager.pin / unpin (method descriptors)
manager_unpin = _fastpath.manager_unpin
manager_locks = _fastpath.manager_locks      # LockManager.locks (method descriptor)
ManagerBase = _fastpath.ManagerBase
RegionLock = _fastpath.RegionLock



def bind_slice_helpers(asarray: object, rebuild: object) -> None:
    """Hand the slice type its core entry points and its Python helpers
    (``asarray`` for typed views, ``rebuild`` for unpickling)."""
    _fastpath.bind_slices(_address("ss_pin"), _address("ss_unpin"), _address("ss_size_epoch"),
                          asarray, rebuild)


def bind_lock_info(lock_info: type) -> None:
    """Let ``LockManager.locks`` (C) build ``lock_info`` objects straight from the snapshot."""
    _fastpath.bind_lock_info(lock_info, _address("ss_snapshot"))


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
