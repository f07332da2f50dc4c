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
import functools
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
           "ManagerBase", "RegionLock", "fast_pin", "fast_unpin", "pinned_view"]


def _address(name: str) -> int:
    return int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))


_fastpath.bind(_address("ss_lock"), _address("ss_release"), _address("ss_pin"), _address("ss_unpin"))
fast_pin = _fastpath.pin
fast_unpin = _fastpath.unpin
pinned_view = _fastpath.pinned_view
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


# -- the table file's layout, as the C core describes it ---------------------

@functools.cache
def _layout() -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
    need = lib.ss_layout(ffi.NULL, 0)
    buf = ffi.new("char[]", need + 1)
    lib.ss_layout(buf, need + 1)
    fields: dict[str, tuple[int, int]] = {}
    constants: dict[str, int] = {}
    for line in ffi.string(buf).decode().splitlines():
        what, name, *numbers = line.split()
        if what == "field":
            fields[name] = (int(numbers[0]), int(numbers[1]))
        else:
            constants[name] = int(numbers[0])
    return fields, constants


def table_layout() -> dict[str, tuple[int, int]]:
    """Offset and size of every table field the tools and tests read or poke.

    Keys are ``hdr.NAME`` (offset from the start of the table file),
    ``proc.NAME`` (from the start of a process slot) and ``entry.NAME`` (from
    the start of an entry); ``hdr.mutex.__lock``, ``__owner`` and ``__kind``
    are the glibc mutex words.  Built by the C core from offsetof/sizeof, so
    it follows every layout change.
    """
    return dict(_layout()[0])


def table_constants() -> dict[str, int]:
    """The table's constants: ``magic``, ``format``, ``header_bytes`` (the
    header page), ``header_size`` (the struct), ``proc_bytes``,
    ``entry_bytes``, ``default_capacity``, ``default_proc_capacity``,
    ``max_capacity``, ``nil`` (the null index), ``tree_count`` and the tree
    numbers, the free/used state values, ``slot_lock_base`` and
    ``mutex_patience_s``."""
    return dict(_layout()[1])


def parse_table_name(name: str) -> tuple[int, int] | None:
    """The data file identity (dev, ino) a lock table file name stands for,
    or None if ``name`` is not a lock table file name."""
    dev = ffi.new("uint64_t *")
    ino = ffi.new("uint64_t *")
    encoded = os.fsencode(name)
    if b"\0" in encoded or lib.ss_table_name_parse(encoded, dev, ino) != lib.SS_OK:
        return None
    return int(dev[0]), int(ino[0])


def clean_temp_files(lock_dir: str | os.PathLike[str]) -> int:
    """Remove the temporary table files that processes killed while creating a
    table left in ``lock_dir``; returns how many were removed."""
    path = os.fsencode(lock_dir)
    if b"\0" in path:
        raise ValueError("lock_dir contains a NUL byte")
    removed = ffi.new("uint32_t *")
    rc = lib.ss_clean_temp_files(path, removed)
    if rc < 0:
        raise_status(rc, os.fspath(lock_dir))
    return int(removed[0])
