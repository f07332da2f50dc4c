"""shmslice: many processes, one memory-mapped file, zero copies.

Region locks and pins live in a lock table shared by every process that opens
the same file; see :class:`LockManager`.
"""

from shmslice.errors import (
    CorruptLockTable,
    CycleHop,
    DeadlockError,
    LockTableFull,
    LockTimeout,
    ShmSliceError,
    StaleDescriptor,
    UnsafeLockTable,
)
from shmslice.locks import LockInfo, LockManager, RegionLock, TableStat, TableView
from shmslice.mapping import MappedFile, open
from shmslice.slices import ByteBufferSlice

__version__ = "0.1.0"

__all__ = [
    "ByteBufferSlice",
    "CorruptLockTable",
    "CycleHop",
    "DeadlockError",
    "LockInfo",
    "LockManager",
    "LockTableFull",
    "LockTimeout",
    "MappedFile",
    "RegionLock",
    "ShmSliceError",
    "StaleDescriptor",
    "TableStat",
    "TableView",
    "UnsafeLockTable",
    "__version__",
    "open",
]
