"""What a lock table reports: :class:`LockInfo` (one entry) and :class:`TableStat` (the table).

Both are frozen snapshots, made by the binding from what the C core copied out
of the shared table; nothing in them changes when the table does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

__all__ = ["FileIdentity", "Holder", "LockInfo", "Mode", "TableStat"]

#: The two lock modes :meth:`LockManager.lock` takes.
Mode = Literal["shared", "exclusive"]


class FileIdentity(NamedTuple):
    """What names one file on this host, for as long as it exists.

    ``(dev, ino)`` alone is not enough: a filesystem reuses a deleted file's
    inode number for the next file it creates.  ``birth`` is a stamp made from
    the file's birth time and inode generation (0 where the filesystem has
    neither), so a re-created file has another identity.
    """

    dev: int     #: st_dev
    ino: int     #: st_ino
    birth: int   #: birth stamp (see above)


@dataclass(frozen=True, slots=True)
class LockInfo:
    """One entry of a lock table, as seen at the moment it was read."""

    start: int
    end: int
    kind: str          #: "shared", "exclusive" or "pin"
    pid: int           #: owning process (as recorded when it attached)
    count: int         #: pins: references held; locks: 1
    waiting: bool      #: True for a request still waiting to be granted
    alive: bool        #: False if the owner died and the entry awaits reaping
    tid: int           #: owning thread id (locks only, else 0)
    since: float       #: time.time() when granted (or queued)

    @property
    def length(self) -> int:
        """``end - start``."""
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Holder:
    """One attached process (or a dead one whose entries await reaping) and its entries."""

    pid: int           #: process id as recorded when it attached
    entries: int       #: entries it holds: locks, pins (one per region) and waiting requests
    alive: bool        #: False if it died and its entries await reaping
    attached: float    #: time.time() when it attached


@dataclass(frozen=True, slots=True)
class TableStat:
    """Table-wide figures (see :meth:`LockManager.stat`).

    The table grows on demand: ``capacity`` entries (and ``proc_capacity``
    process slots) are allocated now, up to ``max_capacity`` (``max_procs``),
    fixed when the table was created.  One process may hold at most
    ``max_capacity - reserve`` entries.  ``allocated_bytes`` is the memory the
    table file occupies; ``table_bytes`` the address space it is mapped with
    (its ceiling layout), not memory.
    """

    table_path: str
    data_path: str
    format: int
    table_bytes: int
    capacity: int
    used: int
    waiting: int
    proc_capacity: int
    procs: int
    repairs: int
    file_size: int
    created: float
    max_capacity: int = 0
    max_procs: int = 0
    reserve: int = 0
    #: how ``max_capacity`` was chosen: "given" (``max_entries=`` or
    #: ``$SHMSLICE_MAX_ENTRIES``), "default", or "filesystem" (lowered to what
    #: the lock directory's filesystem had room for at creation)
    ceiling_source: str = "default"
    growths: int = 0
    allocated_bytes: int = 0
    holders: tuple[Holder, ...] = ()   #: by entries held, most first
