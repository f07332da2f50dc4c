"""Type stubs for the cffi extension ``shmslice._core`` (the C core; declarations: csrc/shmslice.h).

Only ``shmslice._binding`` uses this module.  ``lib`` declares every function
and constant of the header (tests/test_binding.py checks that the two lists
match); ``ffi`` declares the calls the binding makes, with one overload per C
type it allocates, so that every field it reads has a type.  The ``_C*``
classes exist only for the type checker: at run time they are all cffi cdata.
"""

from collections.abc import Callable
from typing import Literal, TypeVar, overload, type_check_only

_T = TypeVar("_T")

@type_check_only
class _CData:
    """Any cffi cdata object."""

@type_check_only
class _CChars(_CData):
    """``char *`` / ``const char *`` / ``char[]``: read with ``ffi.string``."""

@type_check_only
class _CHandle(_CData):
    """``ss_handle *``: opaque."""

@type_check_only
class _CHandleOut(_CData):
    """``ss_handle **``, where an attach call stores the new handle."""
    def __getitem__(self, index: Literal[0]) -> _CHandle: ...

@type_check_only
class _CUInt32Out(_CData):
    """``uint32_t *``, where a call stores a count."""
    def __getitem__(self, index: Literal[0]) -> int: ...

@type_check_only
class _CUInt64Out(_CData):
    """``uint64_t *``, where a call stores a value."""
    def __getitem__(self, index: Literal[0]) -> int: ...

@type_check_only
class _CWait(_CData):
    """``ss_wait *``: one request's place across ss_lock_wait calls."""
    owner: int
    poll: int
    wake_word: _CUInt32Ptr
    wake_seen: int
    recall_ns: int

@type_check_only
class _CUInt32Ptr(_CData):
    """``uint32_t *`` (a futex word)."""
    def __getitem__(self, index: Literal[0]) -> int: ...
    def __setitem__(self, index: Literal[0], value: int) -> None: ...

@type_check_only
class _CUInt32PtrArray(_CData):
    """``uint32_t *[]``."""
    def __setitem__(self, index: int, value: _CUInt32Ptr) -> None: ...

@type_check_only
class _CUInt32Array(_CData):
    """``uint32_t[]``."""
    def __setitem__(self, index: int, value: int) -> None: ...

@type_check_only
class _CEntryInfo(_CData):
    """``ss_entry_info`` (or a pointer to one)."""
    start: int
    end: int
    since_ns: int
    ticket: int
    ref: int
    kind: int
    state: int
    count: int
    pid: int
    tid: int
    alive: int

@type_check_only
class _CCycleHop(_CData):
    """``ss_cycle_hop``."""
    start: int
    end: int
    held_start: int
    held_end: int
    pid: int
    tid: int
    holder_pid: int
    holder_tid: int
    kind: int
    held_kind: int

@type_check_only
class _CCycleHopArray(_CData):
    """``ss_cycle_hop[]``."""
    def __getitem__(self, index: int) -> _CCycleHop: ...

@type_check_only
class _CEntryInfoArray(_CData):
    """``ss_entry_info[]``."""
    def __getitem__(self, index: int) -> _CEntryInfo: ...

@type_check_only
class _CTableStat(_CData):
    """``ss_table_stat *``."""
    format: int
    table_bytes: int
    data_dev: int
    data_ino: int
    file_size: int
    size_epoch: int
    created_ns: int
    capacity: int
    used: int
    waiting: int
    proc_capacity: int
    procs: int
    repairs: int
    max_capacity: int
    max_procs: int
    reserve: int
    ceiling_source: int
    growths: int
    pad: int
    allocated_bytes: int

@type_check_only
class _CHolderInfo(_CData):
    """``ss_holder_info``."""
    pid: int
    entries: int
    attached_ns: int
    alive: int
    pad: int

@type_check_only
class _CHolderInfoArray(_CData):
    """``ss_holder_info[]``."""
    def __getitem__(self, index: int) -> _CHolderInfo: ...

@type_check_only
class _CUIntPtr(_CData):
    """``uintptr_t`` made by ``ffi.cast``."""
    def __int__(self) -> int: ...

@type_check_only
class _CType:
    """A C type as ``ffi.typeof`` describes it."""
    cname: str

@type_check_only
class _CField:
    """One field of a struct type: its offset and type."""
    offset: int
    type: _CType

@type_check_only
class _CStructType(_CType):
    """A struct type: its fields in declaration order."""
    fields: list[tuple[str, _CField]]

@type_check_only
class _CBuffer:
    """``ffi.buffer(...)``: the raw bytes of cdata, exported through the buffer protocol."""
    def __buffer__(self, flags: int, /) -> memoryview: ...

@type_check_only
class _FFI:
    NULL: _CChars
    @overload
    def new(self, cdecl: Literal["ss_handle **"]) -> _CHandleOut: ...
    @overload
    def new(self, cdecl: Literal["uint32_t *"]) -> _CUInt32Out: ...
    @overload
    def new(self, cdecl: Literal["uint64_t *"]) -> _CUInt64Out: ...
    @overload
    def new(self, cdecl: Literal["ss_wait *"]) -> _CWait: ...
    @overload
    def new(self, cdecl: Literal["ss_entry_info *"]) -> _CEntryInfo: ...
    @overload
    def new(self, cdecl: Literal["ss_entry_info[]"], init: int) -> _CEntryInfoArray: ...
    @overload
    def new(self, cdecl: Literal["ss_holder_info[]"], init: int) -> _CHolderInfoArray: ...
    @overload
    def new(self, cdecl: Literal["ss_table_stat *"]) -> _CTableStat: ...
    @overload
    def new(self, cdecl: Literal["ss_cycle_hop[]"], init: int) -> _CCycleHopArray: ...
    @overload
    def new(self, cdecl: Literal["uint32_t[]"], init: int) -> _CUInt32Array: ...
    @overload
    def new(self, cdecl: Literal["uint32_t *[]"], init: int) -> _CUInt32PtrArray: ...
    @overload
    def new(self, cdecl: Literal["uint32_t *"], init: int) -> _CUInt32Ptr: ...
    @overload
    def new(self, cdecl: Literal["char[]"], init: int) -> _CChars: ...
    def gc(self, cdata: _T, destructor: Callable[[_T], object], size: int = ...) -> _T: ...
    def string(self, cdata: _CChars, maxlen: int = ...) -> bytes: ...
    def cast(self, cdecl: Literal["uintptr_t"], value: _CData) -> _CUIntPtr: ...
    def addressof(self, lib: _Lib, name: str) -> _CData: ...
    def typeof(self, cdecl: Literal["ss_entry_info"]) -> _CStructType: ...
    def sizeof(self, cdecl: Literal["ss_entry_info"] | _CType) -> int: ...
    def buffer(self, cdata: _CEntryInfoArray, size: int) -> _CBuffer: ...

@type_check_only
class _Lib:
    # Status codes (csrc/ss_status.def).
    SS_OK: int
    SS_ESYS: int
    SS_EINVAL: int
    SS_ETIMEDOUT: int
    SS_EDEADLK: int
    SS_EFULL: int
    SS_ECORRUPT: int
    SS_ENOTOWNER: int
    SS_EINTR: int
    SS_ENOENT: int
    SS_EUNSAFE: int
    SS_EBUSY: int
    SS_ECLOSED: int
    SS_EWAITING: int
    SS_EAGAIN: int
    SS_ESTALLED: int
    SS_EINUSE: int
    # Constants of csrc/shmslice.h.
    SS_SHARED: int
    SS_EXCLUSIVE: int
    SS_PIN: int
    SS_ORPHAN: int
    SS_GRANTED: int
    SS_WAITING: int
    SS_ATTACH_NOCREATE: int
    SS_REMOVE_DRY_RUN: int
    SS_DEFAULT_MAX_ENTRIES: int
    SS_TABLE_NAME_MAX: int
    SS_BIRTH_LEGACY: int
    # Functions of csrc/shmslice.h, in its order.
    def ss_status_name(self, status: int, /) -> _CChars: ...
    def ss_status_message(self, status: int, /) -> _CChars: ...
    def ss_last_errno(self) -> int: ...
    def ss_last_detail(self) -> _CChars: ...
    def ss_table_name(self, dev: int, ino: int, birth: int, buf: _CChars, buflen: int, /) -> int: ...
    def ss_file_identity(self, fd: int, dev: _CUInt64Out, ino: _CUInt64Out, birth: _CUInt64Out,
                         /) -> int: ...
    def ss_attach(self, table_dir: bytes, data_fd: int, data_path: bytes, max_entries: int,
                  flags: int, out: _CHandleOut, /) -> int: ...
    def ss_attach_table(self, table_path: bytes, out: _CHandleOut, /) -> int: ...
    def ss_close(self, h: _CHandle, /) -> int: ...
    def ss_free(self, h: _CHandle, /) -> None: ...
    def ss_table_path(self, h: _CHandle, /) -> _CChars: ...
    def ss_data_path(self, h: _CHandle, buf: _CChars, buflen: int, /) -> int: ...
    def ss_lock(self, h: _CHandle, start: int, end: int, kind: int, timeout_ns: int, /) -> int: ...
    def ss_lock_wait(self, h: _CHandle, w: _CWait, start: int, end: int, kind: int,
                     timeout_ns: int, /) -> int: ...
    def ss_last_cycle(self, out: _CCycleHopArray, max: int, /) -> int: ...
    def ss_lock_cancel(self, h: _CHandle, w: _CWait, /) -> int: ...
    def ss_upgrade_wait(self, h: _CHandle, w: _CWait, ref: int, timeout_ns: int, /) -> int: ...
    def ss_downgrade(self, h: _CHandle, ref: int, /) -> int: ...
    def ss_lock_owner_died(self, h: _CHandle, ref: int, /) -> int: ...
    def ss_lock_try_as(self, h: _CHandle, start: int, end: int, kind: int, owner: int, /) -> int: ...
    def ss_wait_many(self, words: _CUInt32PtrArray, seen: _CUInt32Array, n: int,
                     timeout_ns: int, /) -> int: ...
    def ss_wake_word(self, word: _CUInt32Ptr, /) -> None: ...
    def ss_lock_try(self, h: _CHandle, start: int, end: int, kind: int, /) -> int: ...
    def ss_release(self, h: _CHandle, ref: int, /) -> int: ...
    def ss_release_try(self, h: _CHandle, ref: int, /) -> int: ...
    def ss_pin(self, h: _CHandle, start: int, end: int, /) -> int: ...
    def ss_unpin(self, h: _CHandle, ref: int, /) -> int: ...
    def ss_reach_beyond(self, h: _CHandle, offset: int, who: _CEntryInfo, /) -> int: ...
    def ss_resize(self, h: _CHandle, data_fd: int, new_size: int, who: _CEntryInfo, /) -> int: ...
    def ss_file_size(self, h: _CHandle, /) -> int: ...
    def ss_size_epoch(self, h: _CHandle, /) -> int: ...
    def ss_write_gen(self, h: _CHandle, /) -> int: ...
    def ss_note_write(self, h: _CHandle, /) -> int: ...
    def ss_unpin_written(self, h: _CHandle, ref: int, /) -> int: ...
    def ss_snapshot(self, h: _CHandle, out: _CEntryInfoArray, max: int, count: _CUInt32Out, /) -> int: ...
    def ss_snapshot_sort(self, entries: _CEntryInfoArray, n: int, /) -> int: ...
    def ss_stat(self, h: _CHandle, out: _CTableStat, /) -> int: ...
    def ss_holders(self, h: _CHandle, out: _CHolderInfoArray, max: int, count: _CUInt32Out, /) -> int: ...
    def ss_reap(self, h: _CHandle, removed: _CUInt32Out, /) -> int: ...
    def ss_clean_temp_files(self, table_dir: bytes, removed: _CUInt32Out, /) -> int: ...
    def ss_allocate_holes(self, data_fd: int, start: int, end: int, /) -> int: ...
    def ss_remove_table(self, h: _CHandle, flags: int, freed: _CUInt64Out, /) -> int: ...
    def ss_debug_set_crash_point(self, point: int, countdown: int, /) -> None: ...
    def ss_debug_set_named_temp(self, on: int, /) -> None: ...
    def ss_debug_set_deadlock_detection(self, on: int, /) -> None: ...
    def ss_debug_set_no_waitv(self, on: int, /) -> None: ...
    def ss_debug_set_stop_point(self, point: int, countdown: int, /) -> None: ...
    def ss_debug_set_unguarded(self, on: int, /) -> None: ...
    def ss_debug_set_attach_step(self, entries: int, copy_max_bytes: int, /) -> None: ...
    def ss_debug_attach_stats(self, passes: _CUInt32Out, holds: _CUInt32Out, whole: _CUInt32Out,
                              longest_hold_ns: _CUInt64Out, /) -> None: ...
    def ss_layout(self, buf: _CChars, buflen: int, /) -> int: ...
    def ss_table_name_parse(self, name: bytes, dev: _CUInt64Out, ino: _CUInt64Out,
                            birth: _CUInt64Out, /) -> int: ...

ffi: _FFI
lib: _Lib
