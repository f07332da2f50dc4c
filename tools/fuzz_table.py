#!/usr/bin/env python3
"""Corrupt-table fuzzer for the shmslice lock table.

Builds a few real lock tables (entries from several processes: shared and
exclusive locks, pins with counts, a waiting request, entries of a killed
process, and tables left behind by processes SIGKILLed inside the table mutex
at each crash point, growth included), then applies thousands of seeded random mutations to
copies of them and attaches every mutated copy in a child process (half of
the attaches copy the table in steps of 1 to 64 entries, one mutex hold
each, as attaching a big table does; the header's change counter is
mutated like every other header field).  Each
attach must either work -- and then a few operations (lock, release, pin,
unpin, locks(), reap(), stat(), a second attach) must work too, raising only
documented exceptions -- or raise ``CorruptLockTable``.  A child that dies
(any signal, any non-zero exit such as an ASan report) is a crash; a child
that does not answer in time is a hang.  Both fail the run.

Usage::

    python tools/fuzz_table.py --mutations 20000            # long run
    python tools/fuzz_table.py --mutations 20000 --mutex     # also garble the mutex (slow)
    SHMSLICE_FUZZ_SEED=1234 python tools/fuzz_table.py ...   # replay a seed
    python tools/fuzz_table.py --seed 1234 --replay 517 --out /tmp/case517.shmslice

The table mutex lives in the header.  Garbage in its bytes can make
``pthread_mutex_clocklock`` wait the full SS_MUTEX_PATIENCE_S (10 s) before
the table is reported corrupt, so by default the mutex bytes are only touched
in one controlled way (the owner-died bit, which sends the attach through
``table_repair``); ``--mutex`` adds arbitrary mutex garbage, with a per-case
deadline of patience + 10 s.  Without ``--mutex`` every case must finish in
5 s.

Prints one JSON summary line last (``--json`` prints only that line); if the
run cannot be made (a base table cannot be built, say), that line is
``{"seed": ..., "error": "..."}`` and the traceback is on stderr.
Exit status: 0 clean, 1 crashes/hangs/violations found or the run failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter

from _children import wait_pid

HERE = os.path.dirname(os.path.abspath(__file__))

# ---------------------------------------------------------------------------
# Layout of the table file, as the C core describes it (ss_layout), so the
# mutations hit the fields they name whatever the struct layout is today.
# verify_layout() still checks a few values against a freshly created table.
# ---------------------------------------------------------------------------
sys.path.insert(0, os.path.dirname(HERE))
from shmslice._binding import path_identity, table_constants, table_layout  # noqa: E402

_FIELDS = table_layout()
_CONST = table_constants()
_SIGNED = {"pid", "tid"}


def _fmt(name: str, size: int) -> str:
    code = {1: "b", 4: "i", 8: "q"}[size]
    return "<" + (code if name.rsplit(".", 1)[-1] in _SIGNED else code.upper())


def _struct_fields(prefix: str) -> dict[str, tuple[int, str]]:
    out = {}
    for name, (off, size) in _FIELDS.items():
        head, _, field = name.partition(".")
        if head == prefix and "." not in field and size in (1, 4, 8):
            out[field] = (off, _fmt(field, size))
    return out


HEADER_BYTES = _CONST["header_bytes"]
HDR = _struct_fields("hdr")   # name: (offset, struct format); scalar header fields
_ROOT_OFF, _ROOT_SIZE = _FIELDS["hdr.root"]
for _t in range(_CONST["tree_count"]):
    HDR[f"root{_t}"] = (_ROOT_OFF + _t * _ROOT_SIZE // _CONST["tree_count"], "<I")
DATA_PATH = _FIELDS["hdr.data_path"]
MUTEX = _FIELDS["hdr.mutex"]
MUTEX_LOCK_WORD = _FIELDS["hdr.mutex.__lock"][0]
MUTEX_KIND_WORD = _FIELDS["hdr.mutex.__kind"][0]
FUTEX_OWNER_DIED = 0x40000000  # linux/futex.h
HEADER_USED = _CONST["header_size"]
PROC_BYTES = _CONST["proc_bytes"]
PROC = _struct_fields("proc")
ENTRY_BYTES = _CONST["entry_bytes"]
ENTRY = _struct_fields("entry")
ENTRY_STATE = ENTRY["state"][0]
NIL = _CONST["nil"]
MAX_CAPACITY = _CONST["max_capacity"]
MAX_PROCS = _CONST["max_procs"]
ENTRIES_OFFSET = _CONST["entries_offset"]
INITIAL_CAPACITY = _CONST["initial_capacity"]
MAGIC = _CONST["magic"]
# The ceiling of the base tables: above the initial capacity, so the bases
# include tables that grew and tables left by a process killed while growing.
CAPACITY = INITIAL_CAPACITY * 2 + 100
PAGE = 4096

# Header fields mutated as indexes/counters (those this build has).
HDR_INDEX_FIELDS = [f for f in HDR if f not in (
    "magic", "format", "capacity", "proc_capacity", "max_capacity", "max_procs", "table_bytes",
    "data_dev", "data_ino", "data_birth", "created_ns")]
CAPACITY_FIELDS = ["capacity", "proc_capacity", "max_capacity", "max_procs"]


def table_bytes_for(max_capacity: int, max_procs: int) -> int:
    """Length of the ceiling layout (ss_table_bytes)."""
    ent0 = (HEADER_BYTES + max_procs * PROC_BYTES + PAGE - 1) // PAGE * PAGE
    return ent0 + max_capacity * ENTRY_BYTES


def extent_for(capacity: int, max_procs: int) -> int:
    """How far the file reaches with capacity entries allocated."""
    return table_bytes_for(capacity, max_procs)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write_sparse(path: str, raw: bytes, exclusive: bool = False) -> None:
    """Write raw to a new file at path, leaving its all-zero pages as holes
    (a table is mostly the hole reserved for its slot ceiling)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        zero = bytes(PAGE)
        for off in range(0, len(raw), PAGE):
            chunk = raw[off:off + PAGE]
            if chunk != zero[:len(chunk)]:
                os.pwrite(fd, chunk, off)
        os.ftruncate(fd, len(raw))
    finally:
        os.close(fd)


def get(buf: bytes, off: int, fmt: str) -> int:
    return struct.unpack_from(fmt, buf, off)[0]


class BaseInfo:
    """What the mutator needs to know about one base table."""

    def __init__(self, name: str, buf: bytes) -> None:
        self.name = name
        self.size = len(buf)
        h = {k: get(buf, off, fmt) for k, (off, fmt) in HDR.items()}
        self.h = h
        self.cap = h["capacity"]
        self.pcap = h["proc_capacity"]
        self.max_cap = h["max_capacity"]
        self.max_procs = h["max_procs"]
        self.hwm = h["entry_hwm"]
        self.proc_hwm = h["proc_hwm"]
        self.ent0 = ENTRIES_OFFSET
        self.used = [i for i in range(self.hwm) if buf[self.ent0 + i * ENTRY_BYTES + ENTRY_STATE] != 0]
        self.free = [i for i in range(self.hwm) if buf[self.ent0 + i * ENTRY_BYTES + ENTRY_STATE] == 0]

    def entry_off(self, i: int, field: str | None = None) -> int:
        return self.ent0 + i * ENTRY_BYTES + (ENTRY[field][0] if field else 0)

    def proc_off(self, s: int, field: str | None = None) -> int:
        return HEADER_BYTES + s * PROC_BYTES + (PROC[field][0] if field else 0)


# ---------------------------------------------------------------------------
# Mutation plans: pure data, a function of (seed, case index, base infos)
# ---------------------------------------------------------------------------

def interesting_u32(rng: random.Random, b: BaseInfo) -> int:
    return rng.choice([0, 1, 2, b.hwm - 1 if b.hwm else 0, b.hwm, b.hwm + 1, b.cap - 1, b.cap,
                       b.cap + 1, b.proc_hwm, b.pcap, b.pcap + 1, 0x7FFFFFFF, 0x80000000,
                       NIL - 1, NIL, MAX_CAPACITY, MAX_CAPACITY + 1, rng.getrandbits(32),
                       rng.randrange(max(1, b.hwm))])


def interesting_u64(rng: random.Random, cur: int) -> int:
    return rng.choice([0, 1, cur - 1 if cur else 0, cur + 1, cur ^ (1 << rng.randrange(64)),
                       2**63 - 1, 2**63, 2**64 - 1, rng.getrandbits(64), rng.getrandbits(16)])


def pick_entry(rng: random.Random, b: BaseInfo, prefer_used: bool = True) -> int:
    if prefer_used and b.used and rng.random() < 0.8:
        return rng.choice(b.used)
    return rng.randrange(max(1, b.hwm if rng.random() < 0.8 else b.cap))


def one_op(rng: random.Random, b: BaseInfo, allow_mutex: bool) -> list:
    """One mutation as a list of primitive writes: ("set", off, fmt, value),
    ("bytes", off, hex), ("size", n), ("flip", off, bit)."""
    kind = rng.choices(
        ["flip", "hdr_garbage", "truncate", "extend", "capacity", "hdr_index", "entry_link",
         "entry_value", "cycle", "free_loop", "dup_entry", "proc", "magic", "data_id", "path"],
        weights=[14, 6, 5, 4, 8, 12, 12, 12, 8, 10, 4, 5, 2, 1, 1])[0]
    mutex_lo, mutex_hi = MUTEX[0], MUTEX[0] + MUTEX[1]

    def outside_mutex(off: int, n: int = 1) -> bool:
        return allow_mutex or off + n <= mutex_lo or off >= mutex_hi

    if kind == "flip":
        out = []
        for _ in range(rng.choice([1, 1, 2, 3, 8])):
            region = rng.random()
            for _try in range(20):
                if region < 0.35:
                    off = rng.randrange(HEADER_USED)
                elif region < 0.45:
                    off = b.proc_off(rng.randrange(max(1, b.proc_hwm))) + rng.randrange(PROC_BYTES)
                elif region < 0.9:
                    off = b.entry_off(pick_entry(rng, b)) + rng.randrange(ENTRY_BYTES)
                else:
                    off = rng.randrange(b.size)
                if outside_mutex(off):
                    break
            else:
                continue
            out.append(("flip", off, rng.randrange(8)))
        return [("op", "flip"), *out]
    if kind == "hdr_garbage":
        n = rng.choice([1, 2, 4, 8, 16, 64, 256])
        for _try in range(50):
            off = rng.randrange(HEADER_USED)
            if outside_mutex(off, n):
                return [("op", "hdr_garbage"), ("bytes", off, rng.randbytes(n).hex())]
        return [("op", "hdr_garbage"), ("bytes", mutex_hi, rng.randbytes(64).hex())]
    if kind == "truncate":
        n = rng.choice([0, 1, 100, HEADER_BYTES - 1, HEADER_BYTES, HEADER_BYTES + 1,
                        b.ent0, b.size // 2, b.size - ENTRY_BYTES, b.size - 1,
                        extent_for(max(0, b.cap - 1), b.max_procs), rng.randrange(b.size)])
        return [("op", "truncate"), ("size", n)]
    if kind == "extend":
        n = b.size + rng.choice([1, 7, ENTRY_BYTES, PROC_BYTES, 4096, rng.randrange(1, 100000)])
        return [("op", "extend"), ("size", n)]
    if kind == "capacity":
        # The current capacities (a growth published, or claimed without the
        # allocation) and the ceilings fixed at creation.
        field = rng.choice(CAPACITY_FIELDS)
        cur = {"capacity": b.cap, "proc_capacity": b.pcap, "max_capacity": b.max_cap,
               "max_procs": b.max_procs}[field]
        val = rng.choice([0, 1, cur - 1, cur + 1, cur // 2, cur * 2, b.hwm, b.hwm - 1,
                          b.max_cap, b.max_cap + 1, b.max_procs, MAX_CAPACITY, MAX_CAPACITY + 1,
                          NIL, rng.randrange(1, 4 * max(1, cur))])
        val &= NIL
        ops: list = [("op", f"capacity:{field}={val}"), ("set", HDR[field][0], "<I", val)]
        if rng.random() < 0.7:   # keep table_bytes and the file size consistent: go deeper
            if field == "capacity":
                # A growth published as if allocated: the file reaches that far.
                if val <= b.max_cap:
                    ops += [("size", extent_for(val, b.max_procs))]
            elif field in ("max_capacity", "max_procs"):
                mc = val if field == "max_capacity" else b.max_cap
                mp = val if field == "max_procs" else b.max_procs
                tb = table_bytes_for(mc, mp)
                if 0 < tb <= 1 << 40:
                    ops += [("set", HDR["table_bytes"][0], "<Q", tb)]
        return ops
    if kind == "hdr_index":
        field = rng.choice(HDR_INDEX_FIELDS)
        off, fmt = HDR[field]
        if fmt == "<Q":
            val = interesting_u64(rng, b.h[field])
        elif field.startswith("root") and b.used and rng.random() < 0.5:
            val = rng.choice(b.used + b.free)   # a real entry of the wrong tree, or a free one
        else:
            val = interesting_u32(rng, b)
        return [("op", f"hdr:{field}={val}"), ("set", off, fmt, val)]
    if kind == "entry_link":
        i = pick_entry(rng, b)
        field = rng.choice([f for f in ("left", "right", "next_free", "owner_slot", "owner_gen")
                            if f in ENTRY])
        # In range (cycles, cross links) or not.
        val = (rng.choice([*b.used, *b.free, i]) if rng.random() < 0.4 and b.used
               else interesting_u32(rng, b))
        return [("op", f"entry{i}.{field}={val}"), ("set", b.entry_off(i, field), ENTRY[field][1], val)]
    if kind == "entry_value":
        i = pick_entry(rng, b)
        field = rng.choice([f for f in ("start", "end", "max_end", "ticket", "kind", "state",
                                        "count", "serial", "tid", "since_ns") if f in ENTRY])
        off, fmt = ENTRY[field]
        if fmt == "<Q":
            val = interesting_u64(rng, 4096 * rng.randrange(64))
        elif fmt == "<B":
            val = rng.choice([0, 1, 2, 3, 4, 255, rng.randrange(256)])
        elif fmt == "<i":
            val = rng.choice([0, -1, 1, 2**31 - 1, -2**31])
        else:
            val = rng.choice([0, 1, 2, 0x7FFFFFFF, NIL, rng.getrandbits(32)])
        return [("op", f"entry{i}.{field}={val}"), ("set", b.entry_off(i, field), fmt, val)]
    if kind == "cycle":
        # Point a child link at an ancestor-ish node (the tree's root) or at itself.
        i = pick_entry(rng, b)
        roots = [b.h[f"root{t}"] for t in range(_CONST["tree_count"]) if b.h[f"root{t}"] != NIL]
        target = rng.choice([*roots, i]) if roots else i
        field = rng.choice(["left", "right"])
        return [("op", f"cycle:entry{i}.{field}->{target}"),
                ("set", b.entry_off(i, field), "<I", target)]
    if kind == "free_loop":
        if b.free:
            f = rng.choice(b.free)
            if rng.random() < 0.5:
                target = interesting_u32(rng, b)   # out of range, or a used entry
            else:
                target = rng.choice([b.h["free_head"], f, *b.free])   # a loop
            return [("op", f"free_loop:entry{f}.next_free->{target}"),
                    ("set", b.entry_off(f, "next_free"), "<I", target & NIL)]
        # No free entry: make one by hand, looping on itself.
        i = pick_entry(rng, b)
        return [("op", f"free_loop:free entry{i} on itself"),
                ("set", b.entry_off(i, "state"), "<B", 0),
                ("set", b.entry_off(i, "next_free"), "<I", i),
                ("set", HDR["free_head"][0], "<I", i)]
    if kind == "dup_entry":
        i, j = pick_entry(rng, b), pick_entry(rng, b)
        return [("op", f"dup:entry{j}=entry{i}"), ("copy", b.entry_off(i), b.entry_off(j),
                                                      ENTRY_BYTES)]
    if kind == "proc":
        s = rng.randrange(max(1, b.proc_hwm + 1))
        field = rng.choice(["pid", "gen", "state"])
        val = rng.choice([0, 1, 2, 3, NIL, rng.getrandbits(32)])
        fmt = PROC[field][1]
        if fmt == "<i" and val >= 2**31:
            val -= 2**32
        return [("op", f"proc{s}.{field}={val}"), ("set", b.proc_off(s, field), fmt, val)]
    if kind == "magic":
        field = rng.choice(["magic", "format"])
        return [("op", f"hdr:{field}"), ("flip", HDR[field][0] + rng.randrange(8), rng.randrange(8))]
    if kind == "data_id":
        field = rng.choice(["data_dev", "data_ino", "data_birth"])
        return [("op", f"hdr:{field}"), ("flip", HDR[field][0] + rng.randrange(8), rng.randrange(8))]
    # "path": an unterminated or garbage recorded data path
    return [("op", "path"), ("bytes", DATA_PATH[0], (rng.randbytes(DATA_PATH[1] - 1) +
                                                      bytes([rng.choice([0, 65])])).hex())]


def make_plan(seed: int, case: int, bases: list[BaseInfo], allow_mutex: bool) -> dict:
    rng = random.Random(f"{seed}:{case}")
    base = rng.randrange(len(bases))
    b = bases[base]
    writes: list = []
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 4])):
        writes += one_op(rng, b, allow_mutex)
    cuts_mutex = any(w[0] == "size" and w[1] < MUTEX[0] + MUTEX[1] for w in writes)
    if cuts_mutex and not allow_mutex:
        # A file cut inside the header and grown back has a zeroed mutex: put the
        # original mutex bytes back so that the fast run never waits on it.
        writes.append(("restore_mutex",))
    garble_mutex = False
    if allow_mutex and rng.random() < 0.1:
        garble_mutex = True
        off = MUTEX[0] + rng.randrange(MUTEX[1])
        writes += [("op", "mutex_garbage"), ("bytes", off, rng.randbytes(rng.choice([1, 4, 8])).hex())]
    elif rng.random() < 0.25:
        # The one safe-and-fast mutex mutation: "owner died" makes the attach repair first.
        writes += [("op", "owner_died"), ("set", MUTEX_LOCK_WORD, "<I", FUTEX_OWNER_DIED)]
    elif rng.random() < 0.04:
        # A garbled mutex kind (priority-inheritance, protect, other types) with a
        # lock word naming a thread that does not exist: glibc aborted on this
        # (assertion in pthread_mutex_clocklock) until the core checked the kind.
        kind = rng.choice([176, 48, 32, 64, 80, 0, 1, 2, 3, 128, 144, 656 | 32,
                           rng.getrandbits(32) - 2**31])
        writes += [("op", f"mutex_kind={kind}"), ("set", MUTEX_KIND_WORD, "<i", kind),
                   ("set", MUTEX_LOCK_WORD, "<I", rng.choice([30000, 99999, 1, FUTEX_OWNER_DIED]))]
    for w in writes:
        if w[0] in ("flip", "bytes") and MUTEX[0] - 8 < w[1] < MUTEX[0] + MUTEX[1]:
            garble_mutex = True
    if cuts_mutex and allow_mutex:
        garble_mutex = True
    return {"case": case, "base": base, "view": rng.random() < 0.3, "writes": writes,
            "mutex": garble_mutex, "ops_seed": rng.getrandbits(32)}


def apply_plan(plan: dict, base: bytes, ident: tuple[int, int, int], data_path: str | None = None) -> bytes:
    buf = bytearray(base)
    for name, value in zip(("data_dev", "data_ino", "data_birth"), ident, strict=True):
        struct.pack_into(HDR[name][1], buf, HDR[name][0], value)   # belongs to our data file
    if data_path is not None:
        # Recorded under our file's path too: a table whose recorded file is gone is
        # removed by its last close, and the reattach check below needs it to stay.
        recorded = os.fsencode(os.path.abspath(data_path))[: DATA_PATH[1] - 1]
        buf[DATA_PATH[0]:DATA_PATH[0] + DATA_PATH[1]] = recorded.ljust(DATA_PATH[1], b"\0")
    for w in plan["writes"]:
        tag = w[0]
        if tag == "op":
            continue
        if tag == "set":
            _, off, fmt, val = w
            if off + struct.calcsize(fmt) <= len(buf):
                struct.pack_into(fmt, buf, off, val)
        elif tag == "flip":
            _, off, bit = w
            if off < len(buf):
                buf[off] ^= 1 << bit
        elif tag == "bytes":
            _, off, hexdata = w
            data = bytes.fromhex(hexdata)[: max(0, len(buf) - off)]
            buf[off:off + len(data)] = data
        elif tag == "copy":
            _, src, dst, n = w
            if src + n <= len(buf) and dst + n <= len(buf):
                buf[dst:dst + n] = buf[src:src + n]
        elif tag == "restore_mutex":
            if len(buf) >= MUTEX[0] + MUTEX[1]:
                buf[MUTEX[0]:MUTEX[0] + MUTEX[1]] = base[MUTEX[0]:MUTEX[0] + MUTEX[1]]
        elif tag == "size":
            n = w[1]
            if n < len(buf):
                del buf[n:]
            else:
                buf.extend(b"\0" * (n - len(buf)))
    return bytes(buf)


def describe(plan: dict) -> str:
    return ", ".join(w[1] for w in plan["writes"] if w[0] == "op")


# ---------------------------------------------------------------------------
# Child worker: attaches mutated tables, one per request line on stdin
# ---------------------------------------------------------------------------

def worker_main(args: argparse.Namespace) -> int:
    import shmslice
    from shmslice import CorruptLockTable, DeadlockError, LockTableFull, LockTimeout
    from shmslice._binding import lib

    bases_raw = [_read(p) for p in args.bases]
    bases = [BaseInfo(os.path.basename(p), raw) for p, raw in zip(args.bases, bases_raw, strict=True)]
    data = args.data
    ident = path_identity(data)
    lock_dir = args.lock_dir
    table = shmslice.locks.table_path_for(data, lock_dir)
    documented = (LockTimeout, LockTableFull, DeadlockError)
    out = sys.stdout
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("quit"):
            break
        plan = make_plan(args.seed, req["case"], bases, args.mutex)
        raw = apply_plan(plan, bases_raw[plan["base"]], ident, data)
        if os.path.lexists(table):
            os.unlink(table)
        write_sparse(table, raw, exclusive=True)
        result = {"case": req["case"], "outcome": None, "detail": ""}
        rng = random.Random(plan["ops_seed"])
        if hasattr(lib, "ss_debug_set_attach_step"):
            # The stepped copy of a big table, on these small ones (0: the default step,
            # which holds all of them); its own generator keeps the plans' sequences.
            lib.ss_debug_set_attach_step(random.Random(plan["ops_seed"] ^ 0x57E9).choice(
                [0, 0, 0, 1, 7, 64]), 0)
        try:
            obj = (shmslice.TableView(table) if plan["view"]
                   else shmslice.LockManager(data, lock_dir=lock_dir))
        except CorruptLockTable as exc:
            result["outcome"] = "corrupt"
            result["detail"] = str(exc)[:200]
        else:
            result["outcome"] = "attached"
            step = "ops"
            try:
                obj.locks(waiting=True)
                obj.stat()
                if plan["view"]:
                    obj.reap()
                    obj.locks()
                else:
                    mgr = obj
                    if rng.random() < 0.5:
                        mgr.reap()
                    for _ in range(3):
                        a = 4096 * rng.randrange(64)
                        bnd = a + 4096 * rng.randrange(1, 8)
                        try:
                            lk = mgr.lock(a, bnd, rng.choice(["shared", "exclusive"]), timeout=0)
                        except documented:
                            continue
                        lk.release()
                    try:
                        ref = mgr.pin(0, 4096 * rng.randrange(1, 64))
                        mgr.unpin(ref)
                    except documented:
                        pass   # a full table is a documented outcome, as is a timeout above
                    mgr.reaching_beyond(rng.randrange(1 << 20))
                    mgr.reap()
                    mgr.locks()
                step = "close"
                obj.close()
                step = "reattach"
                # Whatever the operations did must leave a table that validates again
                # (unless the close removed it: a garbled recorded path names no file).
                if os.path.lexists(table):
                    shmslice.TableView(table).close()
            except CorruptLockTable as exc:
                result["outcome"] = "late_corrupt"
                result["detail"] = f"{step}: {exc}"[:300]
            except documented as exc:
                result["outcome"] = "attached"
                result["detail"] = f"{step}: {type(exc).__name__}"
            except Exception as exc:   # an undocumented exception is a finding: report it
                result["outcome"] = "bad_exception"
                result["detail"] = f"{step}: {type(exc).__name__}: {exc}"[:300]
            if step != "reattach":
                try:
                    obj.close()   # idempotent; after a failure above it may fail itself
                except CorruptLockTable as exc:
                    result["detail"] += f"; close: {exc}"[:200]
        out.write(json.dumps(result) + "\n")
        out.flush()
    return 0


# ---------------------------------------------------------------------------
# Base tables: real tables with entries from several processes
# ---------------------------------------------------------------------------

def _child(fn, *a) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            fn(*a)
        except BaseException as exc:   # report, then leave without running parent's cleanup
            print(f"base-table child failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            os._exit(1)
        os._exit(0)
    return pid


def _wait_file(path: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"base-table child did not signal {path}")
        time.sleep(0.005)


def _reap(pid: int, timeout: float = 20.0) -> int:
    status = wait_pid(pid, timeout)
    if status is None:
        raise TimeoutError(f"base-table child {pid} did not finish")
    return status


def _stop_outside_mutex(pid: int, table: str, timeout: float = 20.0) -> None:
    """SIGSTOP ``pid`` at a moment it does not hold the table mutex of ``table``.

    A waiter re-checks its blockers every few tens of milliseconds, taking the
    mutex each time: running, it would repair a table that a crasher left
    owner-dead before the next crasher (or the copy that saves it) gets
    there, which under load it often does.  Stopped inside the mutex, it would
    wedge the table; so it is continued and stopped again until the mutex's
    owner word does not name it."""
    deadline = time.monotonic() + timeout
    fd = os.open(table, os.O_RDONLY)
    try:
        while True:
            os.kill(pid, signal.SIGSTOP)
            while _proc_state(pid) not in ("T", "t"):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"base-table waiter {pid} did not stop")
                time.sleep(0.001)
            word = struct.unpack("<I", os.pread(fd, 4, MUTEX_LOCK_WORD))[0]
            if word & 0x3FFFFFFF != pid:   # FUTEX_TID_MASK: the holder's thread id
                return
            os.kill(pid, signal.SIGCONT)
            if time.monotonic() > deadline:
                raise TimeoutError(f"base-table waiter {pid} kept holding the table mutex")
            time.sleep(0.002)
    finally:
        os.close(fd)


def _proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3].decode()


def build_bases(work: str) -> list[str]:
    """Create real tables and save copies of them; returns the copies' paths."""
    import shmslice
    from shmslice._binding import lib

    data = os.path.join(work, "base-data.bin")
    with open(data, "wb") as f:
        f.write(b"\0" * (1 << 20))
    lock_dir = os.path.join(work, "base-locks")
    os.mkdir(lock_dir, 0o700)
    flags = os.path.join(work, "flags")
    os.mkdir(flags)
    mgr = shmslice.LockManager(data, lock_dir=lock_dir, max_entries=CAPACITY)
    table = mgr.table_path
    mgr.close()
    saved: list[str] = []

    def save(name: str) -> None:
        dst = os.path.join(work, f"base-{len(saved)}-{name}.shmslice")
        write_sparse(dst, _read(table))
        saved.append(dst)

    def holder(tag: str, shared: list, excl: list, pins: list) -> None:
        m = shmslice.LockManager(data, lock_dir=lock_dir)
        keep = [m.lock(a, b, "shared") for a, b in shared]
        keep += [m.lock(a, b, "exclusive") for a, b in excl]
        refs = [m.pin(a, b) for a, b in pins]
        open(os.path.join(flags, tag), "w").close()
        time.sleep(120)
        del keep, refs

    def waiter(tag: str, a: int, b: int) -> None:
        m = shmslice.LockManager(data, lock_dir=lock_dir)
        open(os.path.join(flags, tag), "w").close()
        m.lock(a, b, "exclusive", timeout=120)

    def crasher(tag: str, point: int, what: str) -> None:
        if what == "repair":   # die inside the repair this attach performs
            lib.ss_debug_set_crash_point(point, 1)
            shmslice.LockManager(data, lock_dir=lock_dir)
            os._exit(4)
        m = shmslice.LockManager(data, lock_dir=lock_dir)
        r1 = m.pin(900 * 4096, 901 * 4096)
        r2 = m.pin(900 * 4096, 901 * 4096)
        lk = m.lock(950 * 4096, 951 * 4096, "exclusive")
        open(os.path.join(flags, tag), "w").close()
        lib.ss_debug_set_crash_point(point, 1)
        if what == "lock":
            m.lock(960 * 4096, 961 * 4096, "shared")
        elif what == "release":
            lk.release()
        elif what == "unpin":
            m.unpin(r1)
            m.unpin(r2)
        elif what == "pin":
            m.pin(970 * 4096, 971 * 4096)
        elif what == "grow":      # pins until the entry table must grow
            for k in range(CAPACITY):
                m.pin(500000 + k, 500001 + k)
        elif what == "slots":     # handles until the process-slot table must grow
            more = [shmslice.LockManager(data, lock_dir=lock_dir)
                    for _ in range(_CONST["initial_procs"] + 1)]
            del more
        os._exit(4)   # the crash point was not reached: the child exits 4, the build fails

    kids = []
    kids.append(_child(holder, "A", [(0, 8192), (16384, 32768)], [(65536, 69632)],
                       [(0, 4096), (0, 4096), (8192, 12288)]))
    _wait_file(os.path.join(flags, "A"))
    kids.append(_child(holder, "B", [(4096, 12288), (16384, 20480)], [(131072, 135168)],
                       [(0, 4096), (4096, 1 << 20)]))
    _wait_file(os.path.join(flags, "B"))
    waiter_pid = _child(waiter, "C", 65536, 70000)
    kids.append(waiter_pid)
    _wait_file(os.path.join(flags, "C"))
    dead = _child(holder, "D", [(200000, 210000)], [(300000, 310000)], [(0, 4096)])
    _wait_file(os.path.join(flags, "D"))
    os.kill(dead, signal.SIGKILL)
    _reap(dead)
    deadline = time.monotonic() + 10
    view = shmslice.TableView(table)
    while not any(e.waiting for e in view.locks(waiting=True)):
        if time.monotonic() > deadline:
            raise TimeoutError("waiter C never queued")
        time.sleep(0.01)
    view.close()
    save("live")
    # A long free list: pins taken, then every other one dropped.
    flpid = _child(holder, "F", [], [], [(1000 + 7 * k, 1003 + 7 * k) for k in range(14)])
    _wait_file(os.path.join(flags, "F"))
    view = shmslice.TableView(table)
    os.kill(flpid, signal.SIGKILL)
    _reap(flpid)
    view.reap()            # the killed holder's entries go onto the free list
    view.close()
    save("freelist")
    # Tables left by a process killed inside the mutex, at each crash point.
    # The waiter is stopped meanwhile: it would repair them first.
    _stop_outside_mutex(waiter_pid, table)
    for point, what in [(1, "lock"), (2, "lock"), (2, "pin"), (3, "release"), (4, "release"),
                        (3, "unpin"), (4, "unpin"), (10, "grow"), (11, "slots")]:
        pid = _child(crasher, f"X{point}{what}", point, what)
        status = _reap(pid)
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            raise RuntimeError(f"crash point {point} ({what}) was not reached: status {status}")
        save(f"crash{point}-{what}")
        view = shmslice.TableView(table)   # repairs (EOWNERDEAD) and validates
        view.reap()
        view.close()
    # Crash during a repair: die at point 2, then a second process dies at point 5.
    pid = _child(crasher, "Y2", 2, "lock")
    status = _reap(pid)
    if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
        raise RuntimeError(f"crash point 2 (before the repair crash) was not reached: "
                           f"status {status}")
    pid = _child(crasher, "Y5", 5, "repair")
    status = _reap(pid)
    if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
        raise RuntimeError(f"crash point 5 was not reached: status {status}")
    save("crash5-repair")
    view = shmslice.TableView(table)
    view.reap()
    view.close()
    save("after-repairs")
    os.kill(waiter_pid, signal.SIGCONT)
    # A table that grew: a live holder with more entries than the first extent.
    gpid = _child(holder, "G", [], [], [(600000 + k, 600001 + k) for k in range(INITIAL_CAPACITY + 50)])
    _wait_file(os.path.join(flags, "G"), 60)
    kids.append(gpid)
    save("grown")
    for pid in kids:
        os.kill(pid, signal.SIGKILL)
        _reap(pid)
    return saved


def verify_layout(work: str) -> None:
    """Check the offsets above against a real table (fail loudly if the format moved)."""
    import shmslice

    data = os.path.join(work, "layout-data.bin")
    with open(data, "wb") as f:
        f.write(b"\0" * 4096)
    lock_dir = os.path.join(work, "layout-locks")
    os.mkdir(lock_dir, 0o700)
    with shmslice.LockManager(data, lock_dir=lock_dir, max_entries=CAPACITY) as mgr:
        ident = path_identity(data)
        lk = mgr.lock(4096, 8192, "exclusive")
        ref = mgr.pin(100, 200)
        mgr.pin(100, 200)
        buf = _read(mgr.table_path)
        b = BaseInfo("layout", buf)
        problems = []
        want = {"magic": MAGIC, "capacity": INITIAL_CAPACITY, "max_capacity": CAPACITY,
                "max_procs": MAX_PROCS, "data_dev": ident.dev,
                "data_ino": ident.ino, "data_birth": ident.birth, "entry_hwm": 2, "used": 2, "waiting": 0,
                f"root{_CONST['tree_shared']}": NIL,
                "free_head": NIL, "procs_used": 1,
                "table_bytes": table_bytes_for(CAPACITY, MAX_PROCS)}
        for k, v in want.items():
            if b.h[k] != v:
                problems.append(f"header {k}: {b.h[k]:#x} != {v:#x}")
        if extent_for(b.cap, b.max_procs) != len(buf):
            problems.append("table size formula")
        if buf[DATA_PATH[0]:DATA_PATH[0] + len(data)] != os.path.abspath(data).encode():
            problems.append("data path offset")
        for i, (kind, start, end, count) in enumerate([(2, 4096, 8192, 1), (3, 100, 200, 2)]):
            e = {k: get(buf, b.entry_off(i, k), fmt) for k, (_, fmt) in ENTRY.items()}
            if (e["kind"], e["start"], e["end"], e["count"], e["state"]) != (kind, start, end, count, 1):
                problems.append(f"entry {i}: {e}")
        if get(buf, b.proc_off(0, "pid"), PROC["pid"][1]) != os.getpid():
            problems.append("proc slot pid")
        if problems:
            raise SystemExit("table layout does not match tools/fuzz_table.py: " + "; ".join(problems))
        lk.release()
        mgr.unpin(ref)


# ---------------------------------------------------------------------------
# Controller
# ---------------------------------------------------------------------------

class Worker:
    def __init__(self, idx: int, args: argparse.Namespace, work: str, bases: list[str]) -> None:
        self.idx = idx
        self.dir = os.path.join(work, f"w{idx}")
        os.makedirs(os.path.join(self.dir, "locks"), mode=0o700, exist_ok=True)
        self.data = os.path.join(self.dir, "data.bin")
        if not os.path.exists(self.data):
            with open(self.data, "wb") as f:
                f.write(b"\0" * (1 << 20))
        self.stderr_path = os.path.join(self.dir, "stderr")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--seed", str(args.seed),
               "--data", self.data, "--lock-dir", os.path.join(self.dir, "locks")]
        if args.mutex:
            cmd.append("--mutex")
        cmd += ["--bases", *bases]
        # Lives as long as the worker: closed in stop(), not at the end of a block.
        self.err = open(self.stderr_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, bufsize=0)
        self.buf = b""
        self.case: int | None = None
        self.deadline = 0.0

    def send(self, case: int, timeout: float) -> None:
        self.case = case
        self.deadline = time.monotonic() + timeout
        self.proc.stdin.write((json.dumps({"case": case}) + "\n").encode())

    def stderr_tail(self) -> str:
        self.err.flush()
        with open(self.stderr_path, "rb") as f:
            return f.read()[-3000:].decode(errors="replace")

    def stop(self) -> None:
        try:
            self.proc.stdin.write(b'{"quit": 1}\n')
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass   # already dead: collected below
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.err.close()


def run(args: argparse.Namespace) -> dict:
    work = args.dir or tempfile.mkdtemp(prefix="shmslice-fuzz-")
    os.makedirs(work, exist_ok=True)
    verify_layout(work)
    base_paths = build_bases(work)
    bases_raw = [_read(p) for p in base_paths]
    bases = [BaseInfo(os.path.basename(p), raw) for p, raw in zip(base_paths, bases_raw, strict=True)]
    patience = 10.0
    normal_deadline = args.case_timeout
    mutex_deadline = patience + 10.0

    # Unmutated bases must attach: a crash left at any crash point is repairable.
    findings: list[dict] = []
    for i, p in enumerate(base_paths):
        tmp = os.path.join(work, "base-check")
        os.makedirs(tmp, exist_ok=True)
        # Attach a copy (not the original file) in a child, via TableView.
        copy = os.path.join(tmp, os.path.basename(p))
        write_sparse(copy, bases_raw[i])
        r = subprocess.run([sys.executable, "-c",
                            "import sys, shmslice; v = shmslice.TableView(sys.argv[1]); "
                            "v.reap(); v.locks(); v.close(); shmslice.TableView(sys.argv[1]).close()",
                            copy], check=False, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            findings.append({"case": f"base:{os.path.basename(p)}", "kind": "base_unusable",
                             "detail": (r.stderr.strip().splitlines() or ["?"])[-1][:300]})

    if args.replay is not None:
        plan = make_plan(args.seed, args.replay, bases, args.mutex)
        w0 = Worker(0, args, work, base_paths)
        w0.stop()
        raw = apply_plan(plan, bases_raw[plan["base"]], path_identity(w0.data))
        out = args.out or os.path.join(work, f"case-{args.replay}.shmslice")
        write_sparse(out, raw)
        print(f"case {args.replay}: base {bases[plan['base']].name}, {describe(plan)}; "
              f"written to {out} (data file {w0.data}: patch its dev/ino to attach)")
        return {"replay": args.replay}

    workers = [Worker(i, args, work, base_paths) for i in range(args.workers)]
    outcomes: Counter = Counter()
    signals: Counter = Counter()
    next_case = 0
    done = 0
    started = time.monotonic()
    idle = list(workers)
    busy: dict[int, Worker] = {}
    plans_mutex: dict[int, bool] = {}

    def dispatch(w: Worker) -> None:
        nonlocal next_case
        case = next_case
        next_case += 1
        plan = make_plan(args.seed, case, bases, args.mutex)
        plans_mutex[case] = plan["mutex"]
        w.send(case, mutex_deadline if plan["mutex"] else normal_deadline)
        busy[w.proc.stdout.fileno()] = w

    def replace(w: Worker, why: str) -> Worker:
        case = w.case
        plan = make_plan(args.seed, case, bases, args.mutex)
        rc = w.proc.poll()
        if rc is None:
            w.proc.kill()
            rc = w.proc.wait(timeout=10)
        if rc < 0:
            signals[signal.Signals(-rc).name] += 1
        findings.append({"case": case, "kind": why, "exit": rc, "base": bases[plan["base"]].name,
                         "mutations": describe(plan), "stderr": w.stderr_tail()[-1500:]})
        w.stop()
        nw = Worker(w.idx, args, work, base_paths)
        return nw

    while done < args.mutations:
        while idle and next_case < args.mutations:
            dispatch(idle.pop())
        if not busy:
            break
        now = time.monotonic()
        wait = max(0.0, min(w.deadline for w in busy.values()) - now)
        ready, _, _ = select.select(list(busy), [], [], min(wait, 1.0))
        for fd in ready:
            w = busy[fd]
            chunk = os.read(fd, 65536)
            if not chunk:   # the worker died
                del busy[fd]
                workers[w.idx] = replace(w, "crash")
                idle.append(workers[w.idx])
                outcomes["crash"] += 1
                done += 1
                continue
            w.buf += chunk
            while b"\n" in w.buf and fd in busy:
                line, w.buf = w.buf.split(b"\n", 1)
                res = json.loads(line)
                outcomes[res["outcome"]] += 1
                done += 1
                if res["outcome"] in ("late_corrupt", "bad_exception"):
                    plan = make_plan(args.seed, res["case"], bases, args.mutex)
                    findings.append({"case": res["case"], "kind": res["outcome"],
                                     "base": bases[plan["base"]].name,
                                     "mutations": describe(plan), "detail": res["detail"]})
                del busy[fd]
                idle.append(w)
        now = time.monotonic()
        for fd, w in list(busy.items()):
            if now > w.deadline:
                del busy[fd]
                outcomes["hang"] += 1
                done += 1
                workers[w.idx] = replace(w, "hang")
                idle.append(workers[w.idx])
    for w in workers:
        w.stop()
    elapsed = time.monotonic() - started
    summary = {
        "seed": args.seed, "mutations": done, "workers": args.workers, "mutex": args.mutex,
        "bases": len(base_paths), "elapsed_s": round(elapsed, 2),
        "outcomes": dict(outcomes), "crashes": outcomes["crash"], "hangs": outcomes["hang"],
        "exit_signals": dict(signals), "findings": findings[:50],
        "findings_total": len(findings), "work_dir": work,
    }
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mutations", type=int, default=5000)
    p.add_argument("--workers", type=int, default=max(2, min(4, os.cpu_count() or 2)))
    p.add_argument("--seed", type=int,
                   default=int(os.environ.get("SHMSLICE_FUZZ_SEED", "0")) or None)
    p.add_argument("--mutex", action="store_true", help="also write garbage into the mutex bytes")
    p.add_argument("--case-timeout", type=float, default=5.0)
    p.add_argument("--dir", help="work directory (default: a new temporary one)")
    p.add_argument("--replay", type=int, help="write the mutated table of this case and stop")
    p.add_argument("--out", help="with --replay: where to write it")
    p.add_argument("--json", action="store_true", help="print only the JSON summary")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary work directory even after a clean run")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--lock-dir", help=argparse.SUPPRESS)
    p.add_argument("--bases", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 2**31)
    if not args.json:
        print(f"fuzz_table: seed {args.seed} (replay: SHMSLICE_FUZZ_SEED={args.seed}), "
              f"{args.mutations} mutations, {args.workers} workers", flush=True)
    try:
        summary = run(args)
    except Exception as exc:
        # The one line the callers read says why the run could not be made
        # (the traceback goes to stderr as usual).
        traceback.print_exc()
        print(json.dumps({"seed": args.seed, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    if "replay" in summary:
        return 0
    if not args.json:
        for f in summary["findings"]:
            print(f"FINDING {json.dumps(f)}")
        print(f"mutations tried: {summary['mutations']}  outcomes: {summary['outcomes']}  "
              f"crashes: {summary['crashes']}  hangs: {summary['hangs']}  "
              f"exit signals: {summary['exit_signals']}  in {summary['elapsed_s']} s")
    bad = summary["findings_total"] > 0
    if not bad and not args.keep and not args.dir:
        shutil.rmtree(summary["work_dir"], ignore_errors=True)
        summary["work_dir"] = None
    print(json.dumps(summary))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
