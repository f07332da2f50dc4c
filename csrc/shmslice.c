/*
 * shmslice.c -- the shared lock table.
 *
 * Divisions of this file:
 *   1. Status codes and per-thread error detail
 *   2. Layout of the shared table (header, process slots, entries)
 *   3. Small system helpers (debug asserts, clocks, futex, thread ids, fork
 *      tracking, crash points)
 *   4. The table mutex
 *   5. Index: one treap per kind, keyed by (start, end, owner_slot, index),
 *      augmented with max end
 *   6. Entries, owner liveness (one probe per slot per scan) and reclaiming
 *   7. Creating, validating and attaching a table; repair after a holder died
 *   8. Locks, pins, resize
 *   9. Inspection: snapshot, stat, reap
 *  10. Public entry points: each call is bracketed by handle_enter/leave
 *  11. Layout served to tools and tests
 *
 * Design in brief.  The table is a file in a tmpfs directory, one per data
 * file identity (st_dev, st_ino, birth stamp: see ss_file_identity), mapped
 * MAP_SHARED by every process that
 * attaches.  A robust, process-shared pthread mutex in the header guards all
 * of it; a process killed while holding that mutex hands the next locker
 * EOWNERDEAD, and that locker rebuilds every derived structure (indexes, free
 * list, counters) from the entries themselves, which are written so that an
 * entry is never half-visible (its state word is stored last on insert and
 * first on removal).
 *
 * Liveness is not guessed from pids, which are reused and mean nothing across
 * PID namespaces.  Each attached handle owns a process slot k and holds an
 * open-file-description (OFD) write lock on byte SS_SLOT_LOCK_BASE + k of the
 * table file.  The kernel drops that lock when the last reference to the
 * description goes, which happens when the process exits -- before it
 * becomes a zombie -- so "is slot k alive?" is an F_OFD_GETLK probe.  The
 * lock is taken through a descriptor that is never mapped (a mapping would
 * hold a reference too), and after fork the child closes its copy of every
 * such descriptor at once (atfork handler), so a child never keeps its
 * parent's slot alive; it takes a slot of its own on first use.  Probes go
 * through a second descriptor that never holds a lock, which the child
 * keeps, so it judges others' liveness correctly before its first lock.
 *
 * Waiting and fairness.  Waiting requests are entries of their own index
 * (TREE_WAIT), apart from granted ones, each with a futex word of its own
 * (wake).  The rule:
 *
 *   - A request is granted when no granted entry conflicts with it and no
 *     *urgent* waiting entry that arrived earlier conflicts with it.  Other
 *     waiters do not hold it back: a running requester takes a free region
 *     although others wait (barging), so a hot lock changes hands without a
 *     context switch per grant and no convoy forms.
 *   - A waiter becomes urgent once it has waited SS_URGENT_NS (2 ms).  From
 *     then on every later overlapping request that conflicts with it queues
 *     behind it, and a release that frees its region hands the region to it
 *     directly (its entry is granted under the mutex before it is woken), in
 *     arrival order among urgent waiters.  So barging is bounded: no request
 *     waits more than about SS_URGENT_NS plus the time the requests queued
 *     ahead of it hold the region; a writer is not starved by a stream of
 *     readers (new readers queue behind it once it is urgent).
 *   - A thread that already holds a lock overlapping its request is not held
 *     back by waiters (they wait for it anyway, so queueing it behind them
 *     would deadlock); it waits only for granted conflicts, and a granted
 *     conflict of its own (through any handle of its process) is SS_EDEADLK.
 *   - A release (or a reclaimed or withdrawn entry) looks up the waiters
 *     overlapping its region in TREE_WAIT, O(log n) plus the overlaps, and
 *     wakes the minimum, taking them in arrival order as if each woken one
 *     were granted: the earliest exclusive waiter that can now enter, or the
 *     run of shared waiters that can.  A woken waiter stays marked until it
 *     runs, so a lock released again before that costs no second wake-up.
 *     A release with no overlapping waiter makes no system call.
 *
 * A wait is resumable: ss_lock_wait sleeps at most once and at most
 * SS_SLICE_NS per call, then returns SS_EWAITING with its waiting entry kept
 * (also at once after a signal), so the caller can run signal handlers and
 * call again (keeping its place) or ss_lock_cancel.  Sleepers also wake every
 * SS_RECHECK_NS to probe their blockers for dead owners.  The table mutex is
 * waited for with a deadline: a lock request never waits for it past its own
 * timeout, and a request that must give up while the mutex is unavailable
 * marks its entry abandoned (an atomic flag: conflicts ignore it at once, the
 * next holder of the mutex removes it).
 *
 * The table mutex is held for well under a microsecond per call.  A busy
 * mutex is polled with exponential backoff for SS_MUTEX_SPIN_NS (each poll
 * takes its cache line from the holder), then yielded for (with more
 * processes than CPUs the holder is most likely preempted), and only then
 * slept on: sleeping sets the mutex's waiters bit, after which every unlock
 * is a system call.  With the GIL held, the fast path only tries it.
 *
 * Nothing read from the shared segment is trusted: every index is bounds
 * checked, every walk is depth-bounded, and a violation is SS_ECORRUPT.
 */
#define _GNU_SOURCE
#include "shmslice.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <pwd.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ===================================================================
 * 1. Status codes and per-thread error detail
 * =================================================================== */


static __thread int tls_errno;
static __thread char tls_detail[512];

const char *ss_status_name(int status)
{
    switch (status) {
#define SS_STATUS(name, value, message) case value: return #name;
#include "ss_status.def"
#undef SS_STATUS
    default: return "SS_UNKNOWN";
    }
}

const char *ss_status_message(int status)
{
    switch (status) {
#define SS_STATUS(name, value, message) case value: return message;
#include "ss_status.def"
#undef SS_STATUS
    default: return "unknown status";
    }
}

int ss_last_errno(void) { return tls_errno; }
const char *ss_last_detail(void) { return tls_detail; }

/* Record a failure's detail and return its status, so call sites read
 * `return fail(SS_EINVAL, "...", ...)`. */
__attribute__((format(printf, 2, 3)))
static int fail(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tls_detail, sizeof tls_detail, fmt, ap);
    va_end(ap);
    return status;
}

/* Like fail() for SS_ESYS: saves errno first, since formatting may clobber it. */
__attribute__((format(printf, 1, 2)))
static int fail_sys(const char *fmt, ...)
{
    tls_errno = errno;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tls_detail, sizeof tls_detail, fmt, ap);
    va_end(ap);
    return SS_ESYS;
}

/* ===================================================================
 * 2. Layout of the shared table
 *
 *    [ header | padding to 4 KiB ][ proc slots ... ][ entries ... ]
 *
 * The file is laid out for its ceilings (max_procs slots, max_capacity
 * entries; fixed at creation) and every process maps that whole length, so
 * the mapping's addresses never move.  Only the current extents are
 * allocated: slots [0, proc_capacity) and entries [0, capacity); the rest is
 * a hole or past the end of the file, and no code touches it.  Growth
 * (grow_entries, grow_procs; under the mutex) allocates the added range with
 * posix_fallocate first and only then publishes the larger capacity, so a
 * full filesystem is an error at growth time, never SIGBUS later, and a
 * process killed in between leaves a table whose capacity word is still
 * true.  Each handle keeps the capacities it validated (h->capacity,
 * h->proc_capacity) and bounds every index by them; header_sane adopts a
 * larger published capacity after checking it against the file's size.
 *
 * Mutex rules: every field below the "guarded by mutex" line of each struct
 * is read and written only while holding hdr->mutex, with these exceptions,
 * all accessed with atomics: abandoned and an entry's wflags (set by an owner
 * that cannot get the mutex), an entry's wake (futex word, read by its
 * sleeper), file_size/size_epoch (read lock-free by ss_file_size; written
 * under the mutex) and write_gen (read and bumped lock-free, never under the
 * mutex).
 * Fields above that line are written once, before the table file is linked
 * into its final name, and never change.
 * =================================================================== */

#define SS_MAGIC UINT64_C(0x5348534c49434531)   /* "SHSLICE1" */
#define SS_FORMAT_VERSION 6       /* 2: index key (start, end, owner_slot, index); 3: wait index, futex word per waiter; 4: data_birth, user pins,
                                   * attached processes hold the guard byte, upgrade requests (W_UPGRADE),
                                   * owner-died marks (SS_ORPHAN, orphan_root), write_gen,
                                   * growing capacities under fixed ceilings, entries held per slot;
                                   * 5: hot header fields on the mutex's cache line, 64-byte process
                                   * slots with a stashed free entry each, changes (mutex holds
                                   * counted, so attach copies in steps); 6: urgent_due_ns */
#define SS_NIL UINT32_MAX
#define SS_MAX_DEPTH 160          /* treap depth bound; legit depth is ~2 ln n */
#define SS_HEADER_BYTES 4096
#define SS_SLOT_LOCK_BASE ((off_t)1 << 40)   /* OFD liveness lock byte of slot 0 */
#define SS_GUARD_BYTE (SS_SLOT_LOCK_BASE - 2)  /* OFD lock byte: shared by every attached
                                                * process, exclusive while removing (see 7) */
#define SS_ATTACH_PATIENCE_NS 10000000000LL  /* attach retries a table being removed this long */
#define SS_RECHECK_NS 50000000LL   /* sleepers re-check for dead holders this often (half the 100 ms promise) */
#define SS_SLICE_NS 50000000LL     /* ss_lock_wait returns to its caller at least this often */
#define SS_URGENT_NS 2000000LL     /* a waiter this old is served in arrival order (see top) */
#define SS_TRY_PATIENCE_NS 100000000LL /* timeout 0 waits this long at most for the mutex */
#define SS_RELEASE_PATIENCE_NS 100000000LL /* release waits this long for the mutex, then abandons */
#define SS_MUTEX_SPIN_NS 4000      /* a busy table mutex is polled this long before yielding:
                                    * holds last well under 1 us, so a mutex still busy after
                                    * this has a preempted holder, and spinning only keeps
                                    * the CPU from it */
#define SS_MUTEX_YIELDS 8          /* sched_yield()s before sleeping on it */
#define SS_WAKE_BATCH 64           /* waiters considered (and woken) per release */
#define SS_ALIVE_CACHE_NS 1000000LL  /* trust a liveness probe this long (1 ms) */
#define SS_SWEEP_TRUST_NS 1000000LL  /* a sweep of a full table that freed nothing holds this long */
#define SS_MUTEX_PATIENCE_S 10     /* table mutex held longer than this: report */
#define SS_DATA_PATH_MAX 1024
#define SS_MAX_CAPACITY (1u << 24)
#define SS_MAX_PROCS (1u << 16)       /* process-slot ceiling of every table */
#define SS_INITIAL_CAPACITY 512u      /* entries of a new table (40 KiB) */
#define SS_INITIAL_PROCS 128u         /* process slots of a new table (8 KiB) */
#define SS_GROW_MAX_STEP (1u << 20)   /* a growth adds at most this many entries (80 MiB) */
#define SS_RESERVE_SHIFT 4            /* one process holds at most ceiling - ceiling/16 entries */

/* Granted entries are indexed by kind; waiting ones, of either kind, in TREE_WAIT. */
enum { TREE_SHARED = 0, TREE_EXCLUSIVE = 1, TREE_PIN = 2, TREE_WAIT = 3, TREE_ORPHAN = 4,
       TREE_COUNT = 5 };
enum { ENTRY_FREE = 0 };            /* else SS_GRANTED or SS_WAITING */
/* ss_entry.wflags bits */
enum {
    W_URGENT = 1,        /* waiting entry that has waited SS_URGENT_NS: served in order */
    W_WOKEN = 2,         /* waiting entry woken and not yet run: no second wake-up */
    W_ABANDONED = 4,     /* owner gave up without the mutex: ignore, next holder removes */
    W_UPGRADE = 8,       /* waiting exclusive request that converts its owner's shared
                          * lock on the same region (entry index in next_free) */
    W_OWNER_DIED = 16,   /* granted lock: an owner-died mark overlapped it when granted */
    W_ALL = 31
};
enum { PROC_FREE = 0, PROC_USED = 1 };
/* ss_header.ceiling_source */
enum { CEILING_GIVEN = 1, CEILING_DEFAULT = 2, CEILING_FILESYSTEM = 3 };

struct ss_header {
    uint64_t magic;              /* SS_MAGIC */
    uint64_t format;             /* ss_format_stamp(): version and struct sizes */
    uint32_t max_capacity;       /* entry ceiling */
    uint32_t max_procs;          /* process-slot ceiling */
    uint64_t table_bytes;        /* length of the ceiling layout: the mapping's length; the
                                  * file is never larger */
    uint64_t data_dev;           /* identity of the data file this table serves */
    uint64_t data_ino;
    uint64_t data_birth;         /* and its birth stamp (ss_file_identity) */
    uint64_t created_ns;         /* CLOCK_REALTIME at creation */
    char data_path[SS_DATA_PATH_MAX]; /* path given at creation (display only) */
    uint32_t ceiling_source;     /* CEILING_*: how max_capacity was chosen (display only) */
    uint32_t reserve;            /* entries no single process may take (see reserve_reached) */
    /* ---- guarded by mutex (except the atomics noted) ----
     * Placement: every lock and release writes the mutex and, in the same
     * hold, the free list, the count of entries in use and usually a tree
     * root; those share the mutex's cache line, so a hold moves one line
     * between CPUs, not three.  The next line holds what a hold only reads
     * on the common path; the lock-free counters have lines of their own. */
    pthread_mutex_t mutex __attribute__((aligned(64))); /* robust, process-shared */
    uint32_t changes;            /* bumped as every hold of the mutex begins, and again when the
                                  * hold's locker repairs or sweeps before its caller runs
                                  * (table_locked): a value that moved only by our own holds
                                  * proves the table did not change between them
                                  * (attach_validate; compared modulo 2**32); never trusted
                                  * otherwise */
    uint32_t free_head;          /* first free entry below entry_hwm, SS_NIL if none (entries
                                  * a process slot keeps for itself are not on it: stash) */
    uint32_t used;               /* entries granted or waiting */
    uint32_t root[3];            /* roots of TREE_SHARED, _EXCLUSIVE, _PIN, SS_NIL if empty */
    uint64_t next_ticket __attribute__((aligned(64)));  /* arrival counter for waiting requests */
    uint64_t urgent_due_ns;      /* no waiting entry without W_URGENT is due (has waited
                                  * SS_URGENT_NS) before this CLOCK_REALTIME time: a lower
                                  * bound, lowered as waiters queue, made exact by
                                  * mark_due_waiters, 0 (unknown) after a repair */
    uint32_t abandoned;          /* atomic: entries flagged W_ABANDONED since the last sweep
                                  * (read by every hold, written rarely) */
    uint32_t entry_hwm;          /* entries [0, entry_hwm) have been initialised */
    uint32_t proc_hwm;           /* process slots [0, proc_hwm) have been used */
    uint32_t waiting;            /* entries waiting */
    uint32_t procs_used;         /* process slots PROC_USED */
    uint32_t repairs;            /* EOWNERDEAD repairs performed */
    uint32_t wait_root;          /* root of TREE_WAIT, SS_NIL if empty */
    uint32_t urgent;             /* waiting entries with W_URGENT */
    uint32_t orphan_root;        /* root of TREE_ORPHAN (owner-died marks), SS_NIL if empty */
    uint32_t capacity;           /* entries [0, capacity) are allocated; only grows; written
                                  * under the mutex (release) after the allocation */
    uint32_t proc_capacity;      /* process slots [0, proc_capacity) are allocated; likewise */
    uint32_t growths;            /* growths of either table (display) */
    uint64_t file_size __attribute__((aligned(64)));  /* data file size set through shmslice (atomic) */
    uint64_t size_epoch;         /* bumped by every ss_resize (atomic) */
    uint64_t write_gen __attribute__((aligned(64)));  /* atomic, no mutex: bumped after writes
                                  * through shmslice (ss_note_write); its own line, since
                                  * writers bump it while lockers read the line above */
};

struct ss_proc {
    /* all fields guarded by mutex */
    int32_t pid;                 /* pid at attach, for display and pin ownership */
    uint32_t gen;                /* bumped whenever the slot is freed */
    uint32_t state;              /* PROC_FREE or PROC_USED */
    uint32_t pidns;              /* low 32 bits of the pid namespace's inode, 0 unknown:
                                  * pid means nothing to a process of another namespace */
    uint32_t held;               /* entries in use whose owner_slot is this slot (any gen) */
    uint32_t stash;              /* 1 + an entry this slot freed and keeps for its next
                                  * allocation (off the free list), 0 none: a process that
                                  * locks and releases in a loop reuses its own entry
                                  * instead of one another CPU just wrote */
    uint64_t attached_ns;        /* CLOCK_REALTIME at attach */
    uint64_t token;              /* random per process (new after fork): same process? */
    uint8_t pad[24];             /* zero: a slot is one cache line, so counting one
                                  * process's entries never moves another's line */
};

struct ss_entry {
    /* all fields guarded by mutex */
    uint64_t start;              /* region [start, end), start < end */
    uint64_t end;
    uint64_t max_end;            /* max end over this node's treap subtree */
    uint64_t ticket;             /* arrival order (from next_ticket) */
    uint64_t since_ns;           /* CLOCK_REALTIME when queued, _COARSE when granted */
    uint32_t left, right;        /* treap children, SS_NIL if none */
    uint32_t next_free;          /* free-list link while ENTRY_FREE; for a W_UPGRADE
                                  * request, the shared entry it converts */
    uint32_t owner_slot;         /* process slot of the owning handle */
    uint32_t owner_gen;          /* that slot's gen when the entry was made */
    int32_t tid;                 /* owning thread (locks), for deadlock checks */
    uint32_t count;              /* pins: references; locks: 1 */
    uint32_t serial;             /* bumped on reuse, so stale references fail */
    uint8_t kind;                /* SS_SHARED, SS_EXCLUSIVE, SS_PIN */
    uint8_t state;               /* ENTRY_FREE, SS_GRANTED, SS_WAITING */
    uint8_t wflags;              /* W_* bits; atomic (W_ABANDONED is set without the mutex) */
    uint8_t pad;
    uint32_t wake;               /* futex word of a waiting entry: bumped to wake its sleeper */
};

_Static_assert(sizeof(struct ss_header) <= SS_HEADER_BYTES, "header too large");
_Static_assert(offsetof(struct ss_entry, wake) % 4 == 0, "futex word must be aligned");
_Static_assert(sizeof(struct ss_entry) == 80, "entry layout changed: bump format");
_Static_assert(sizeof(struct ss_proc) == 64, "proc layout changed: bump format");
_Static_assert(offsetof(struct ss_header, root) + sizeof(uint32_t[3]) <=
               offsetof(struct ss_header, mutex) + 64, "hot header fields must share the mutex's line");

static uint64_t ss_format_stamp(void)
{
    return ((uint64_t)SS_FORMAT_VERSION << 48) |
           ((uint64_t)sizeof(struct ss_header) << 32) |
           ((uint64_t)sizeof(struct ss_entry) << 16) |
           (uint64_t)sizeof(struct ss_proc);
}

/* Offset of entry 0: past the slot ceiling, rounded up to a page. */
static uint64_t ss_entries_offset(uint32_t max_procs)
{
    uint64_t off = SS_HEADER_BYTES + (uint64_t)max_procs * sizeof(struct ss_proc);
    return (off + 4095) & ~(uint64_t)4095;
}

/* Length of the layout for entry and slot ceilings (the mapping's length). */
static uint64_t ss_table_bytes(uint32_t max_capacity, uint32_t max_procs)
{
    return ss_entries_offset(max_procs) + (uint64_t)max_capacity * sizeof(struct ss_entry);
}

/* The file must reach at least this far while capacity entries are in use. */
static uint64_t ss_extent_bytes(uint32_t capacity, uint32_t max_procs)
{
    return ss_entries_offset(max_procs) + (uint64_t)capacity * sizeof(struct ss_entry);
}

/* Process-private handle. */
struct ss_handle {
    struct ss_header *hdr;       /* start of the mapping */
    struct ss_proc *procs;
    struct ss_entry *entries;
    size_t map_bytes;
    uint32_t capacity;           /* entries allocated, as last validated (atomic: read
                                  * without the mutex by the abandon path) */
    uint32_t proc_capacity;      /* process slots allocated, as last validated */
    uint32_t max_capacity;       /* ceilings, from the header checked at attach */
    uint32_t max_procs;
    int table_fd;                /* -1 after fork until re-attached, or inspect-only */
    int probe_fd;                /* the table file through a description that never holds a
                                  * lock: liveness probes use it, and a forked child keeps it */
    int inspect_only;            /* opened by ss_attach_table: owns no slot */
    int data_writable;           /* data file descriptor was open for writing at attach */
    uint32_t slot, gen;          /* our process slot (valid if has_slot) */
    int has_slot;
    dev_t table_dev;             /* identity of the table file we mapped */
    ino_t table_ino;
    char table_path[4096];
    struct ss_handle *next;      /* registry of open handles (for atfork) */
    int closing;                 /* set once by ss_close; calls then fail SS_ECLOSED */
    struct { uint32_t slot, gen; uint64_t until_ns; } alive_cache[16]; /* recent probes that found a slot alive */
    struct verdicts *scan;       /* liveness verdicts of the scan in progress (table mutex) */
    uint64_t fruitless_sweep_ns; /* CLOCK_MONOTONIC of the last sweep of a full table that freed nothing */
    int busy;                    /* calls in flight (atomic), awaited by ss_close */
    int32_t mutex_holder;        /* SS_DEBUG builds: tid holding the table mutex through
                                  * this handle, 0 if none (atomic) */
};

/* ===================================================================
 * 3. Small system helpers
 * =================================================================== */

static uint64_t now_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static __thread int32_t tls_tid;

static int32_t current_tid(void)
{
    if (tls_tid == 0)
        tls_tid = (int32_t)syscall(SYS_gettid);
    return tls_tid;
}

/* Debug-build checks (compile with -DSS_DEBUG; the sanitizer build does).
 * They state what the code itself guarantees -- the mutex rules, the
 * treap's shape after our own updates -- never what shared memory says:
 * a corrupt table is an SS_ECORRUPT, not an assertion. */
#ifdef SS_DEBUG
__attribute__((noreturn))
static void ss_assert_fail(const char *what, const char *file, int line)
{
    fprintf(stderr, "shmslice: assertion failed: %s (%s:%d)\n", what, file, line);
    abort();
}
#define SS_ASSERT(cond) ((cond) ? (void)0 : ss_assert_fail(#cond, __FILE__, __LINE__))
#define MUTEX_MARK(h, tid) __atomic_store_n(&(h)->mutex_holder, (tid), __ATOMIC_RELAXED)
#else
#define SS_ASSERT(cond) ((void)0)
#define MUTEX_MARK(h, tid) ((void)0)
#endif
/* The calling thread holds the table mutex through h (table_lock). */
#define SS_ASSERT_MUTEX_HELD(h) \
    SS_ASSERT(__atomic_load_n(&(h)->mutex_holder, __ATOMIC_RELAXED) == current_tid())
#define SS_ASSERT_MUTEX_NOT_HELD(h) \
    SS_ASSERT(__atomic_load_n(&(h)->mutex_holder, __ATOMIC_RELAXED) != current_tid())

/* Sleep until *word != expected, a wake, a signal or timeout_ns.  Returns 0,
 * or EINTR / ETIMEDOUT / EAGAIN as the kernel said. */
static int futex_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns)
{
    struct timespec ts = {(time_t)(timeout_ns / 1000000000), (long)(timeout_ns % 1000000000)};
    long rc = syscall(SYS_futex, word, FUTEX_WAIT, expected, &ts, NULL, 0);
    return rc == 0 ? 0 : errno;
}

static void futex_wake(uint32_t *word, int count)
{
    syscall(SYS_futex, word, FUTEX_WAKE, count, NULL, NULL, 0);
}

/* Pause inside a spin loop. */
static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* A random number naming this process (a new one in a forked child): written
 * into every process slot this process takes, so that an entry made through
 * another handle of the same process, by the same thread, is recognised as
 * the caller's own (pids and tids repeat across PID namespaces; the token
 * does not). */
static uint64_t process_token;

static uint64_t new_token(void)
{
    uint64_t t = 0;
    if (getrandom(&t, sizeof t, GRND_NONBLOCK) != (ssize_t)sizeof t || t == 0)
        t = now_ns(CLOCK_MONOTONIC) ^ ((uint64_t)getpid() << 32) ^ (uintptr_t)&t;
    return t | 1;   /* never 0: 0 is a slot that has none */
}

static uint64_t my_token(void)
{
    uint64_t t = __atomic_load_n(&process_token, __ATOMIC_ACQUIRE);
    if (__builtin_expect(t == 0, 0)) {
        uint64_t fresh = new_token(), expected = 0;
        if (!__atomic_compare_exchange_n(&process_token, &expected, fresh, 0,
                                         __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            fresh = expected;
        t = fresh;
    }
    return t;
}

/* This process's pid namespace (the low 32 bits of its nsfs inode, as
 * /proc/self/ns/pid shows it), 0 if unknown.  Read once: a process cannot
 * change its own pid namespace (unshare and setns change its children's). */
static uint32_t my_pidns(void)
{
    static uint32_t ns;
    static int known;
    if (!__atomic_load_n(&known, __ATOMIC_ACQUIRE)) {
        struct stat st;
        uint32_t v = stat("/proc/self/ns/pid", &st) == 0 ? (uint32_t)st.st_ino : 0;
        __atomic_store_n(&ns, v, __ATOMIC_RELAXED);
        __atomic_store_n(&known, 1, __ATOMIC_RELEASE);
    }
    return __atomic_load_n(&ns, __ATOMIC_RELAXED);
}

/* Registry of open handles, so the atfork child handler can drop the
 * inherited table descriptors (and with them any claim to the parent's
 * liveness lock) before the child runs anything else. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ss_handle *registry_head;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void atfork_prepare(void) { pthread_mutex_lock(&registry_lock); }
static void atfork_parent(void) { pthread_mutex_unlock(&registry_lock); }

static void atfork_child(void)
{
    tls_tid = 0;
    process_token = new_token();
    for (struct ss_handle *h = registry_head; h; h = h->next) {
        if (h->table_fd >= 0 && !h->inspect_only) {
            close(h->table_fd);
            h->table_fd = -1;
        }
        h->has_slot = 0;
        /* Threads that were inside a call at fork time do not exist here:
         * without this, ss_close in the child waits for them forever. */
        __atomic_store_n(&h->busy, 0, __ATOMIC_RELAXED);
    }
    pthread_mutex_unlock(&registry_lock);
}

static void install_atfork(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

static int deadlock_detection_off;   /* benchmark hook (ss_debug_set_deadlock_detection) */

void ss_debug_set_deadlock_detection(int on)
{
    __atomic_store_n(&deadlock_detection_off, !on, __ATOMIC_RELAXED);
}

static int crash_point;       /* test hook: which point, 0 = off */
static int crash_countdown;
static int crash_signal = SIGKILL;

void ss_debug_set_crash_point(int point, int countdown)
{
    crash_signal = SIGKILL;
    crash_point = point;
    crash_countdown = countdown;
}

void ss_debug_set_stop_point(int point, int countdown)
{
    crash_signal = SIGSTOP;
    crash_point = point;
    crash_countdown = countdown;
}

/* Crash points (1-8, 10, 11, 20-22 inside the table mutex; 9 outside it):
 *   1 after allocating an entry, before it is visible
 *   2 after an entry became visible, before it is indexed
 *   3 in the middle of unlinking an entry from the index
 *   4 after unindexing, before the entry is marked free
 *   5 during repair, half way through rebuilding
 *   6 moving a waiting entry to granted: out of the wait index, not yet in
 *     its kind's index
 *   7 in a release's wake-up pass, after some waiters were marked woken or
 *     granted
 *   8 removing abandoned entries, after the first
 *   9 creating a table: built, not yet linked into place
 *  20 converting a lock (upgrade or downgrade): out of its kind's index, its
 *     kind not yet changed
 *  21 an upgrade granted: the lock converted, its upgrade request not yet
 *     removed
 *  22 turning a dead owner's exclusive lock into an owner-died mark: out of
 *     its index, not yet a mark
 *  10 growing the entry table: the range allocated, the capacity not yet
 *     published
 *  11 growing the process-slot table: likewise
 * A stop point (ss_debug_set_stop_point) stops the process there instead,
 * once, with SIGSTOP: it keeps the mutex until SIGCONT. */
static inline void maybe_crash(int point)
{
    if (__builtin_expect(crash_point != 0, 0) && crash_point == point &&
        --crash_countdown <= 0) {
        if (crash_signal == SIGSTOP) crash_point = 0;
        raise(crash_signal);
    }
}

/* ===================================================================
 * 4. The table mutex
 * =================================================================== */

static int table_repair(struct ss_handle *h);
static int sweep_abandoned(struct ss_handle *h);
static int remove_slot_entries(struct ss_handle *h, uint32_t s);

/* Adopt the header's capacities if they grew since this handle last
 * looked: only once the file is found to reach as far as they say, so no
 * index below them can fault.  Capacities never shrink.  Under the mutex, or
 * at attach before the handle is in use.  Costs two loads when nothing grew. */
static int adopt_capacity(struct ss_handle *h)
{
    struct ss_header *hd = h->hdr;
    uint32_t cap = __atomic_load_n(&hd->capacity, __ATOMIC_ACQUIRE);
    uint32_t pcap = __atomic_load_n(&hd->proc_capacity, __ATOMIC_ACQUIRE);
    if (__builtin_expect(cap == h->capacity && pcap == h->proc_capacity, 1)) return SS_OK;
    if (cap < h->capacity || pcap < h->proc_capacity || cap == 0 || pcap == 0 ||
        cap > h->max_capacity || pcap > h->max_procs)
        return fail(SS_ECORRUPT, "lock table %s: capacity of %u entries and %u process "
                    "slots out of range (ceilings %u and %u)", h->table_path, cap, pcap,
                    h->max_capacity, h->max_procs);
    /* The size is read after the capacities: a growth allocates before it
     * publishes, so a true capacity is always covered by the size seen here. */
    struct stat st;
    if (fstat(h->probe_fd, &st) != 0)
        return fail_sys("lock table %s: cannot stat it", h->table_path);
    if ((uint64_t)st.st_size < ss_extent_bytes(cap, h->max_procs) ||
        (uint64_t)st.st_size > h->map_bytes)
        return fail(SS_ECORRUPT, "lock table %s claims %u entries but the file is %lld "
                    "bytes long", h->table_path, cap, (long long)st.st_size);
    __atomic_store_n(&h->capacity, cap, __ATOMIC_RELAXED);
    h->proc_capacity = pcap;
    return SS_OK;
}

static uint32_t *tree_root(struct ss_handle *h, int t);

/* Header fields that index memory, checked every time the mutex is taken. */
static int header_sane(struct ss_handle *h)
{
    struct ss_header *hd = h->hdr;
    int rc = adopt_capacity(h);
    if (rc) return rc;
    if (hd->entry_hwm > h->capacity || hd->proc_hwm > h->proc_capacity ||
        (hd->free_head != SS_NIL && hd->free_head >= hd->entry_hwm))
        return fail(SS_ECORRUPT, "lock table %s: header counters out of range",
                    h->table_path);
    for (int t = 0; t < TREE_COUNT; t++) {
        uint32_t r = *tree_root(h, t);
        if (r != SS_NIL && r >= hd->entry_hwm)
            return fail(SS_ECORRUPT, "lock table %s: index root out of range",
                        h->table_path);
    }
    return SS_OK;
}

/* Initialise the table mutex: robust, process-shared, NORMAL kind. */
static void table_mutex_init(pthread_mutex_t *m)
{
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_NORMAL);
    pthread_mutex_init(m, &attr);
    pthread_mutexattr_destroy(&attr);
}

/* glibc keeps a mutex's kind (type, robust, shared, priority protocol) in
 * the mutex itself, i.e. in the shared file.  A garbled kind can send
 * pthread_mutex_*lock down the priority-inheritance path, where an owner tid
 * that does not exist trips an assertion and aborts the process instead of
 * returning an error.  So before every lock the kind word must equal that of
 * a mutex made by table_mutex_init in this process. */
#ifdef __GLIBC__
static int expected_mutex_kind;
static pthread_once_t mutex_kind_once = PTHREAD_ONCE_INIT;

static void init_mutex_kind(void)
{
    pthread_mutex_t ref;
    table_mutex_init(&ref);
    expected_mutex_kind = ref.__data.__kind;
    pthread_mutex_destroy(&ref);
}

static int mutex_kind_ok(struct ss_handle *h)
{
    pthread_once(&mutex_kind_once, init_mutex_kind);
    return __atomic_load_n(&h->hdr->mutex.__data.__kind, __ATOMIC_RELAXED) ==
           expected_mutex_kind;
}
#else
static int mutex_kind_ok(struct ss_handle *h) { (void)h; return 1; }
#endif

/* Wake-ups gathered under the mutex and made after it is released (the
 * woken cannot run into a mutex we still hold).  Per thread: only the thread
 * holding the mutex appends. */
static __thread struct { uint32_t *word[SS_WAKE_BATCH]; int n; } tls_wakes;

static void wake_later(uint32_t *word)
{
    if (tls_wakes.n < SS_WAKE_BATCH) tls_wakes.word[tls_wakes.n++] = word;
    else futex_wake(word, 1);   /* list full: wake now, under the mutex */
}

static void flush_wakes(void)
{
    for (int k = 0; k < tls_wakes.n; k++) futex_wake(tls_wakes.word[k], 1);
    tls_wakes.n = 0;
}

/* Spinning polls the lock word before retrying, so a spinner does not keep
 * stealing the holder's cache line. */
static inline int mutex_looks_free(struct ss_handle *h)
{
#ifdef __GLIBC__
    return __atomic_load_n(&h->hdr->mutex.__data.__lock, __ATOMIC_RELAXED) == 0;
#else
    (void)h;
    return 1;
#endif
}

/* The rest of taking the mutex, after pthread answered rc.  On EOWNERDEAD the
 * previous holder died inside the table: rebuild everything derived from the
 * entries, then mark the mutex consistent.  Entries their owners abandoned
 * are removed here, by whoever gets the mutex next. */
static int table_locked(struct ss_handle *h, int rc)
{
    if (rc == 0 || rc == EOWNERDEAD) {
        MUTEX_MARK(h, current_tid());
        h->hdr->changes++;   /* every hold: see attach_validate */
    }
    if (rc == EOWNERDEAD) {
        int repaired = table_repair(h);
        pthread_mutex_consistent(&h->hdr->mutex);
        if (repaired != SS_OK) {
            MUTEX_MARK(h, 0);
            pthread_mutex_unlock(&h->hdr->mutex);
            flush_wakes();
            return repaired;
        }
    } else if (rc != 0) {
        return fail(SS_ECORRUPT, "lock table %s: mutex unusable (%s)",
                    h->table_path, strerror(rc));
    } else {
        rc = header_sane(h);
        if (rc != SS_OK) {
            MUTEX_MARK(h, 0);
            pthread_mutex_unlock(&h->hdr->mutex);
            return rc;
        }
    }
    if (__builtin_expect(__atomic_load_n(&h->hdr->abandoned, __ATOMIC_ACQUIRE) != 0, 0)) {
        h->hdr->changes++;   /* the sweep changes the table in this very hold */
        rc = sweep_abandoned(h);
        if (rc != SS_OK) {
            MUTEX_MARK(h, 0);
            pthread_mutex_unlock(&h->hdr->mutex);
            flush_wakes();
            return rc;
        }
    }
    return SS_OK;
}

/* Take the mutex if it can be had without sleeping: a short adaptive spin
 * (holders keep it for well under a microsecond), no system call.  SS_OK,
 * SS_EAGAIN (still busy) or < 0. */
static int table_trylock(struct ss_handle *h)
{
    if (__builtin_expect(!mutex_kind_ok(h), 0))
        return fail(SS_ECORRUPT, "lock table %s: its mutex is not a robust shared mutex "
                    "of this C library (corrupt, or made by another libc)", h->table_path);
    int rc = pthread_mutex_trylock(&h->hdr->mutex);   /* the common, uncontended case */
    /* Poll with exponential backoff: every poll pulls the mutex's line away
     * from the holder, whose unlock then waits for it.  Bounded by time, not
     * by a count of pauses: a pause costs 1 ns on one machine and 50 ns on
     * another (a VM that traps pause loops), and 24 polls once spun 70 us. */
    if (rc == EBUSY) {
        uint64_t until = now_ns(CLOCK_MONOTONIC) + SS_MUTEX_SPIN_NS;
        for (int pause = 1; rc == EBUSY;) {
            for (int j = 0; j < pause; j++) cpu_relax();
            if (pause < 16) pause *= 2;
            if (mutex_looks_free(h)) rc = pthread_mutex_trylock(&h->hdr->mutex);
            if (rc == EBUSY && now_ns(CLOCK_MONOTONIC) > until) break;
        }
    }
    if (rc == EBUSY)
        return fail(SS_EAGAIN, "lock table %s: the table mutex is busy", h->table_path);
    return table_locked(h, rc);
}

/* Who holds the mutex, for a message: writes into buf and returns SS_ESTALLED
 * (a live holder, stopped or not) or SS_ECORRUPT (no such thread). */
static int describe_mutex_holder(struct ss_handle *h, char *buf, size_t len)
{
#ifdef __GLIBC__
    int tid = __atomic_load_n(&h->hdr->mutex.__data.__lock, __ATOMIC_RELAXED) & FUTEX_TID_MASK;
#else
    int tid = 0;
#endif
    if (tid <= 0) {
        snprintf(buf, len, "the table mutex is busy");
        return SS_ESTALLED;
    }
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", tid);
    FILE *f = fopen(path, "re");
    if (!f) {
        snprintf(buf, len, "the table mutex is held by thread %d, which does not exist "
                 "in this PID namespace (the table is corrupt, or held from another "
                 "namespace)", tid);
        return SS_ECORRUPT;
    }
    char state = '?';
    int pid = tid, kthread = 0, has_memory = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "State:", 6) == 0) sscanf(line + 6, " %c", &state);
        else if (strncmp(line, "Tgid:", 5) == 0) sscanf(line + 5, " %d", &pid);
        else if (strncmp(line, "Kthread:", 8) == 0) sscanf(line + 8, " %d", &kthread);
        else if (strncmp(line, "VmSize:", 7) == 0) has_memory = 1;
    }
    fclose(f);
    if (kthread || !has_memory) {
        /* A kernel thread has no user memory, so it cannot have locked a
         * mutex in a mapped file: the lock word is garbage. */
        snprintf(buf, len, "the table mutex is held by thread %d, a kernel thread (the table "
                 "is corrupt)", tid);
        return SS_ECORRUPT;
    }
    if (state == 'T' || state == 't')
        snprintf(buf, len, "pid %d is stopped (SIGSTOP?) holding the table mutex; "
                 "continue it (kill -CONT %d) or end it", pid, pid);
    else
        snprintf(buf, len, "pid %d (state %c) has been holding the table mutex", pid, state);
    return SS_ESTALLED;
}

/* Lock the mutex, waiting at most until deadline_ns (CLOCK_MONOTONIC).  If
 * it cannot be had by then: SS_ETIMEDOUT, the detail naming the holder. */
static int table_lock_until(struct ss_handle *h, uint64_t deadline_ns)
{
    int rc = table_trylock(h);
    /* Still busy after the spin: the holder is most likely preempted (more
     * processes than CPUs).  Yielding a few times lets it run on this CPU
     * and leave; sleeping on the mutex at once would set its waiters bit,
     * after which every unlock makes a wake-up system call (a mutex convoy). */
    for (int k = 0; rc == SS_EAGAIN && k < SS_MUTEX_YIELDS; k++) {
        sched_yield();
        rc = table_trylock(h);
    }
    if (rc != SS_EAGAIN) return rc;
    struct timespec ts = {(time_t)(deadline_ns / 1000000000u),
                          (long)(deadline_ns % 1000000000u)};
    rc = pthread_mutex_clocklock(&h->hdr->mutex, CLOCK_MONOTONIC, &ts);
    if (rc == ETIMEDOUT) {
        char who[256];
        describe_mutex_holder(h, who, sizeof who);
        return fail(SS_ETIMEDOUT, "lock table %s: %s", h->table_path, who);
    }
    return table_locked(h, rc);
}

/* Lock the mutex for an operation that has no timeout of its own: wait up
 * to SS_MUTEX_PATIENCE_S, then report the holder (stopped, or gone). */
static int table_lock(struct ss_handle *h)
{
    int rc = table_lock_until(h, now_ns(CLOCK_MONOTONIC) +
                                 (uint64_t)SS_MUTEX_PATIENCE_S * 1000000000u);
    if (rc != SS_ETIMEDOUT) return rc;
    char who[256];
    int status = describe_mutex_holder(h, who, sizeof who);
    return fail(status, "lock table %s: %s for over %d s", h->table_path, who,
                SS_MUTEX_PATIENCE_S);
}

/* Unlock, then make the wake-ups gathered while holding the mutex. */
static void table_unlock(struct ss_handle *h)
{
    MUTEX_MARK(h, 0);
    pthread_mutex_unlock(&h->hdr->mutex);
    if (tls_wakes.n) flush_wakes();
}

/* ===================================================================
 * 5. Index: treaps keyed by (start, end, owner_slot, index), augmented
 *    with max_end
 *
 * The key leads with start, which is all the overlap queries need (with
 * max_end to prune); end and owner_slot follow so that one process's pin on
 * exactly [start, end) is found by a descent (pin_find_exact), however many
 * other pins overlap it; the entry index makes keys unique.
 * Priorities are a hash of the entry index, so the shape is a function of
 * the set of entries and a rebuild reproduces it.  Invariants (checked by
 * validate_tree): in-order keys strictly increase; a child's priority never
 * exceeds its parent's; max_end is the max end of the subtree; every entry
 * in tree t is in use and of t's kind; depth <= SS_MAX_DEPTH.
 * =================================================================== */

static inline uint32_t prio_of(uint32_t i)
{
    uint32_t x = i + 0x9e3779b9u;
    x ^= x >> 16; x *= 0x85ebca6bu;
    x ^= x >> 13; x *= 0xc2b2ae35u;
    x ^= x >> 16;
    return x;
}

static inline int prio_above(uint32_t a, uint32_t b)
{
    uint32_t pa = prio_of(a), pb = prio_of(b);
    return pa > pb || (pa == pb && a < b);
}

static int tree_of_kind(int kind)
{
    return kind == SS_SHARED ? TREE_SHARED : kind == SS_EXCLUSIVE ? TREE_EXCLUSIVE
           : kind == SS_ORPHAN ? TREE_ORPHAN : TREE_PIN;
}

/* Order of (start, end, owner_slot) of entry e against the given triple:
 * < 0, 0 or > 0. */
static inline int region_cmp(const struct ss_entry *e, uint64_t start, uint64_t end,
                             uint32_t slot)
{
    if (e->start != start) return e->start < start ? -1 : 1;
    if (e->end != end) return e->end < end ? -1 : 1;
    if (e->owner_slot != slot) return e->owner_slot < slot ? -1 : 1;
    return 0;
}

/* The index an entry in use belongs in: waiting entries have their own. */
static int tree_of_entry(const struct ss_entry *e)
{
    return e->state == SS_WAITING ? TREE_WAIT : tree_of_kind(e->kind);
}

static uint32_t *tree_root(struct ss_handle *h, int t)
{
    return t == TREE_WAIT ? &h->hdr->wait_root : t == TREE_ORPHAN ? &h->hdr->orphan_root
           : &h->hdr->root[t];
}

static inline int key_less(struct ss_handle *h, uint32_t a, uint32_t b)
{
    const struct ss_entry *eb = &h->entries[b];
    int c = region_cmp(&h->entries[a], eb->start, eb->end, eb->owner_slot);
    return c < 0 || (c == 0 && a < b);
}

static inline uint64_t max_end_of(struct ss_handle *h, uint32_t i)
{
    return i == SS_NIL ? 0 : h->entries[i].max_end;
}

static void refresh(struct ss_handle *h, uint32_t i)
{
    struct ss_entry *e = &h->entries[i];
    uint64_t m = e->end, l = max_end_of(h, e->left), r = max_end_of(h, e->right);
    e->max_end = m > l ? (m > r ? m : r) : (l > r ? l : r);
}

#define DEPTH_CHECK(h, depth) \
    do { if ((depth) > SS_MAX_DEPTH) \
        return fail(SS_ECORRUPT, "lock table %s: index too deep (cycle?)", (h)->table_path); \
    } while (0)

/* Links are validated before use: every child index must be < entry_hwm.
 * links_bad is the test itself, for the walks that read entry_hwm once:
 * adding 1 turns SS_NIL into 0, so one unsigned compare per link decides. */
static inline int links_bad(const struct ss_entry *e, uint32_t hwm)
{
    return (e->left + 1u > hwm) | (e->right + 1u > hwm);
}

static int bad_link(struct ss_handle *h)
{
    return fail(SS_ECORRUPT, "lock table %s: index link out of range", h->table_path);
}

static inline int check_links(struct ss_handle *h, uint32_t i)
{
    return links_bad(&h->entries[i], h->hdr->entry_hwm) ? bad_link(h) : SS_OK;
}

/* Split subtree n around pivot, which is not in it: keys < key(pivot) go to
 * *l, the others to *r.  Top down, one visit per level of the pivot's search
 * path (the nodes passed are remembered and refreshed bottom up). */
static int tree_split(struct ss_handle *h, uint32_t n, uint32_t pivot,
                      uint32_t *l, uint32_t *r, int depth)
{
    uint32_t path[SS_MAX_DEPTH + 2];
    int len = 0;
    uint32_t hwm = h->hdr->entry_hwm;
    for (; n != SS_NIL; depth++) {
        DEPTH_CHECK(h, depth);
        struct ss_entry *e = &h->entries[n];
        if (links_bad(e, hwm)) return bad_link(h);
        SS_ASSERT(len < (int)(sizeof path / sizeof path[0]));
        path[len++] = n;
        if (key_less(h, n, pivot)) { *l = n; l = &e->right; n = e->right; }
        else { *r = n; r = &e->left; n = e->left; }
    }
    *l = *r = SS_NIL;
    while (len-- > 0) refresh(h, path[len]);
    return SS_OK;
}

/* Merge subtrees a and b where every key of a is below every key of b, into
 * *out.  Top down along a's right spine and b's left spine, then the nodes
 * passed are refreshed bottom up. */
static int tree_merge(struct ss_handle *h, uint32_t a, uint32_t b, uint32_t *out,
                      int depth)
{
    uint32_t path[SS_MAX_DEPTH + 2];
    int len = 0;
    uint32_t hwm = h->hdr->entry_hwm;
    for (; a != SS_NIL && b != SS_NIL; depth++) {
        DEPTH_CHECK(h, depth);
        struct ss_entry *ea = &h->entries[a], *eb = &h->entries[b];
        if (links_bad(ea, hwm) || links_bad(eb, hwm)) return bad_link(h);
        SS_ASSERT(len < (int)(sizeof path / sizeof path[0]));
        if (prio_above(a, b)) { *out = a; path[len++] = a; out = &ea->right; a = ea->right; }
        else { *out = b; path[len++] = b; out = &eb->left; b = eb->left; }
    }
    *out = a != SS_NIL ? a : b;
    while (len-- > 0) refresh(h, path[len]);
    return SS_OK;
}

/* Insert x into the subtree n hanging from *out (*out == n): walk down to the
 * first node x's priority outranks, raising the max end of every node passed
 * (x will sit below it, and only x is added), then split that subtree around
 * x.  Loops, one visit per level: on a table of a million entries this path
 * is ~28 levels deep on every lock. */
static int tree_insert_at(struct ss_handle *h, uint32_t n, uint32_t x, uint32_t *out,
                          int depth)
{
    struct ss_entry *ex = &h->entries[x];
    uint32_t *link = out;
    uint32_t hwm = h->hdr->entry_hwm, px = prio_of(x);
    for (;; depth++) {
        DEPTH_CHECK(h, depth);
        if (n == SS_NIL) {
            ex->left = ex->right = SS_NIL;
            ex->max_end = ex->end;
            *link = x;
            return SS_OK;
        }
        struct ss_entry *en = &h->entries[n];
        if (links_bad(en, hwm)) return bad_link(h);
        uint32_t pn = prio_of(n);
        if (px > pn || (px == pn && x < n)) {   /* prio_above(x, n) */
            int rc = tree_split(h, n, x, &ex->left, &ex->right, depth + 1);
            if (rc) return rc;
            refresh(h, x);
            *link = x;
            return SS_OK;
        }
        if (ex->end > en->max_end) en->max_end = ex->end;
        link = key_less(h, x, n) ? &en->left : &en->right;
        n = *link;
    }
}

/* Remove x from the subtree n hanging from *out (*out == n): walk down to it
 * (a loop, remembering the path), merge its children in its place, then
 * recompute the max end of the nodes passed, bottom up, where x's end was
 * it (another node's end is the max otherwise, and it is still there). */
static int tree_remove_at(struct ss_handle *h, uint32_t n, uint32_t x, uint32_t *out,
                          int depth)
{
    uint32_t path[SS_MAX_DEPTH + 2];
    int len = 0;
    uint32_t *link = out;
    uint32_t hwm = h->hdr->entry_hwm;
    const struct ss_entry *ex = &h->entries[x];
    uint64_t x_start = ex->start, x_end = ex->end;
    uint32_t x_slot = ex->owner_slot;
    for (;; depth++) {
        DEPTH_CHECK(h, depth);
        if (n == SS_NIL)
            return fail(SS_ECORRUPT, "lock table %s: entry %u missing from its index",
                        h->table_path, x);
        struct ss_entry *en = &h->entries[n];
        if (links_bad(en, hwm)) return bad_link(h);
        if (n == x) {
            maybe_crash(3);
            int rc = tree_merge(h, en->left, en->right, link, depth + 1);
            if (rc) return rc;
            break;
        }
        SS_ASSERT(len < (int)(sizeof path / sizeof path[0]));
        path[len++] = n;
        int c = region_cmp(en, x_start, x_end, x_slot);   /* key_less(x, n) */
        link = (c > 0 || (c == 0 && x < n)) ? &en->left : &en->right;
        n = *link;
    }
    while (len-- > 0)
        if (x_end >= h->entries[path[len]].max_end) refresh(h, path[len]);
    return SS_OK;
}

typedef int (*entry_pred)(struct ss_handle *h, uint32_t i, void *arg);

/* Find an entry in subtree n overlapping [lo, hi) for which pred returns 1.
 * Returns 1 with *found set, 0 if none, or a status < 0. */
static int tree_find_each(struct ss_handle *h, uint32_t n, uint64_t lo, uint64_t hi,
                          entry_pred pred, void *arg, uint32_t *found, int depth)
{
    uint32_t hwm = h->hdr->entry_hwm;
    /* A left child is searched by a call, the right one by the loop. */
    for (; n != SS_NIL; depth++) {
        DEPTH_CHECK(h, depth);
        const struct ss_entry *e = &h->entries[n];
        if (links_bad(e, hwm)) return bad_link(h);
        if (e->max_end <= lo) return 0;
        uint32_t l = e->left;
        if (l != SS_NIL && h->entries[l].max_end > lo) {
            int rc = tree_find_each(h, l, lo, hi, pred, arg, found, depth + 1);
            if (rc) return rc;
        }
        if (e->start >= hi) return 0;
        if (e->end > lo && pred(h, n, arg)) { *found = n; return 1; }
        n = e->right;
    }
    return 0;
}

/* Whether subtree n may hold an entry overlapping [lo, hi): one path, no
 * calls.  Go left while the left subtree reaches past lo, else right; if the
 * left subtree reaches past lo but holds no overlap, its entries that reach
 * past lo start at hi or later, and so does everything right of it (keys
 * lead with start).  So reaching a leaf proves there is none; meeting an
 * overlapping entry returns 1 (the caller's predicate decides about it).
 * Returns 0, 1 or a status < 0. */
static int tree_may_overlap(struct ss_handle *h, uint32_t n, uint64_t lo, uint64_t hi,
                            int depth)
{
    uint32_t hwm = h->hdr->entry_hwm;
    for (; n != SS_NIL; depth++) {
        DEPTH_CHECK(h, depth);
        const struct ss_entry *e = &h->entries[n];
        if (links_bad(e, hwm)) return bad_link(h);
        if (e->start < hi && e->end > lo) return 1;
        uint32_t l = e->left;
        n = l != SS_NIL && h->entries[l].max_end > lo ? l : e->right;
    }
    return 0;
}

/* tree_find_each's contract, with a first pass that proves most searches of
 * a lock empty on one path. */
static int tree_find(struct ss_handle *h, uint32_t n, uint64_t lo, uint64_t hi,
                     entry_pred pred, void *arg, uint32_t *found, int depth)
{
    /* Most searches of a lock find nothing: prove that on one path first. */
    int may = tree_may_overlap(h, n, lo, hi, depth);
    if (may <= 0) return may;
    return tree_find_each(h, n, lo, hi, pred, arg, found, depth);
}

/* Find in subtree n the entry on exactly [start, end) of process slot
 * (slot, gen).  The key orders by (start, end, owner_slot) first, so this is
 * a descent; only entries with the same triple but another gen (a dead
 * earlier owner of the slot, not yet reclaimed) widen it.
 * Returns 1 with *found set, 0 if none, or a status < 0. */
static int pin_find_exact(struct ss_handle *h, uint32_t n, uint64_t start, uint64_t end,
                          uint32_t slot, uint32_t gen, uint32_t *found, int depth)
{
    DEPTH_CHECK(h, depth);
    if (n == SS_NIL) return 0;
    int rc = check_links(h, n);
    if (rc) return rc;
    const struct ss_entry *e = &h->entries[n];
    int c = region_cmp(e, start, end, slot);
    if (c < 0) return pin_find_exact(h, e->right, start, end, slot, gen, found, depth + 1);
    if (c > 0) return pin_find_exact(h, e->left, start, end, slot, gen, found, depth + 1);
    if (e->owner_gen == gen) {
        SS_ASSERT(e->start == start && e->end == end && e->owner_slot == slot);
        *found = n;
        return 1;
    }
    rc = pin_find_exact(h, e->left, start, end, slot, gen, found, depth + 1);
    if (rc) return rc;
    return pin_find_exact(h, e->right, start, end, slot, gen, found, depth + 1);
}

static int index_insert(struct ss_handle *h, uint32_t x)
{
    SS_ASSERT_MUTEX_HELD(h);
    uint32_t *root = tree_root(h, tree_of_entry(&h->entries[x]));
    int rc = tree_insert_at(h, *root, x, root, 0);
    /* Every node on the way down was refreshed on the way up. */
    SS_ASSERT(rc != SS_OK || *root != SS_NIL);
    SS_ASSERT(rc != SS_OK || h->entries[*root].max_end >= h->entries[x].end);
    return rc;
}

static int index_remove(struct ss_handle *h, uint32_t x)
{
    SS_ASSERT_MUTEX_HELD(h);
    uint32_t *root = tree_root(h, tree_of_entry(&h->entries[x]));
    return tree_remove_at(h, *root, x, root, 0);
}

typedef int (*entry_visit)(struct ss_handle *h, uint32_t i, void *arg);

/* Call visit on every entry of subtree n overlapping [lo, hi), in key order;
 * a nonzero return from visit stops the walk and is returned. */
static int tree_each(struct ss_handle *h, uint32_t n, uint64_t lo, uint64_t hi,
                     entry_visit visit, void *arg, int depth)
{
    DEPTH_CHECK(h, depth);
    if (n == SS_NIL) return 0;
    int rc = check_links(h, n);
    if (rc) return rc;
    const struct ss_entry *e = &h->entries[n];
    if (e->max_end <= lo) return 0;
    rc = tree_each(h, e->left, lo, hi, visit, arg, depth + 1);
    if (rc) return rc;
    if (e->start >= hi) return 0;
    if (e->end > lo) {
        rc = visit(h, n, arg);
        if (rc) return rc;
    }
    return tree_each(h, e->right, lo, hi, visit, arg, depth + 1);
}

/* ===================================================================
 * 6. Entries, owner liveness (one probe per slot per scan) and reclaiming
 * =================================================================== */

static int64_t make_ref(uint32_t index, uint32_t serial)
{
    return (int64_t)(((uint64_t)(serial & 0x7fffffffu) << 32) | index);
}

/* ---- capacity: growth, the ceiling, the reserve ---------------------- */

/* One process's share of the entries, for messages. */
struct holder { int32_t pid; uint32_t held; int gone; };

static int holder_by_pid(const void *a, const void *b)
{
    const struct holder *x = a, *y = b;
    return x->pid != y->pid ? (x->pid < y->pid ? -1 : 1) : x->gone - y->gone;
}

/* Write "pid P (NAME): N entries, ..." for the (at most) three processes
 * holding the most entries into buf.  Under the mutex; error paths only. */
static void describe_holders(struct ss_handle *h, char *buf, size_t len)
{
    uint32_t phwm = h->hdr->proc_hwm, n = 0;
    buf[0] = 0;
    struct holder *all = malloc(sizeof *all * (phwm ? phwm : 1));
    if (!all) return;
    for (uint32_t s = 0; s < phwm; s++) {
        const struct ss_proc *p = &h->procs[s];
        if (p->held == 0) continue;
        all[n].pid = p->pid;
        all[n].held = p->held;
        all[n].gone = p->state != PROC_USED;
        n++;
    }
    qsort(all, n, sizeof *all, holder_by_pid);
    uint32_t m = 0;   /* merge the slots of one process (several handles) */
    for (uint32_t k = 0; k < n; k++) {
        if (m && all[m - 1].pid == all[k].pid && all[m - 1].gone == all[k].gone)
            all[m - 1].held += all[k].held;
        else all[m++] = all[k];
    }
    size_t used = 0;
    for (int rank = 0; rank < 3 && m; rank++) {
        uint32_t best = 0;
        for (uint32_t k = 1; k < m; k++)
            if (all[k].held > all[best].held) best = k;
        char name[64] = "exited", path[64];
        if (!all[best].gone) {
            snprintf(path, sizeof path, "/proc/%d/comm", (int)all[best].pid);
            FILE *f = fopen(path, "re");
            if (f && fgets(name, sizeof name, f)) name[strcspn(name, "\n")] = 0;
            else snprintf(name, sizeof name, "?");
            if (f) fclose(f);
        }
        int w = snprintf(buf + used, len - used, "%spid %d (%s): %u entries", rank ? ", " : "",
                         (int)all[best].pid, name, all[best].held);
        if (w < 0 || (size_t)w >= len - used) break;
        used += (size_t)w;
        all[best] = all[--m];
    }
    free(all);
}

/* SS_EFULL at the ceiling, naming the biggest holders. */
static int ceiling_status(struct ss_handle *h)
{
    char who[240];
    describe_holders(h, who, sizeof who);
    return fail(SS_EFULL, "lock table %s is at its ceiling of %u entries (set when it was "
                "created: SHMSLICE_MAX_ENTRIES or max_entries=); most held by %s; release "
                "locks or pins, or end those processes", h->table_path, h->max_capacity,
                who[0] ? who : "nobody");
}

/* Entries held by the calling process (every handle of it on this table:
 * slots with our token).  Under the mutex; O(process slots). */
static uint64_t held_by_this_process(struct ss_handle *h)
{
    uint64_t token = h->procs[h->slot].token, total = 0;
    for (uint32_t s = 0; s < h->hdr->proc_hwm; s++) {
        const struct ss_proc *p = &h->procs[s];
        if (p->state == PROC_USED && p->token == token) total += p->held;
    }
    return total;
}

/* The reserve: no process may hold more than max_capacity - reserve
 * entries, so others can always lock and pin.  Checked only once the table
 * as a whole is that full (only then can one process be).  SS_OK or
 * SS_EFULL. */
static int reserve_reached(struct ss_handle *h)
{
    uint32_t share = h->max_capacity - h->hdr->reserve;
    if (__builtin_expect(h->hdr->used < share, 1) || !h->has_slot) return SS_OK;
    uint64_t mine = held_by_this_process(h);
    if (mine < share) return SS_OK;
    return fail(SS_EFULL, "lock table %s: this process (pid %d) holds %llu entries, the most "
                "one process may hold: the ceiling of %u less a reserve of %u kept for other "
                "processes; release locks or pins (or create the table with a larger "
                "max_entries=)", h->table_path, (int)getpid(), (unsigned long long)mine,
                h->max_capacity, h->hdr->reserve);
}

/* posix_fallocate, retried when a signal interrupts it; 0 or an errno. */
static int allocate_range(int fd, uint64_t from, uint64_t len)
{
    int err;
    do err = posix_fallocate(fd, (off_t)from, (off_t)len); while (err == EINTR);
    return err;
}

/* The status for a growth the filesystem refused. */
static int growth_failed(struct ss_handle *h, int err, const char *what, uint32_t from,
                         uint32_t to)
{
    if (err == ENOSPC || err == EDQUOT)
        return fail(SS_EFULL, "lock table %s cannot grow from %u to %u %s: no space left "
                    "on its filesystem (%s); free memory there (shmslice prune, remove "
                    "files) or use a lock directory with room", h->table_path, from, to,
                    what, strerror(err));
    errno = err;
    return fail_sys("lock table %s cannot grow from %u to %u %s", h->table_path, from, to,
                    what);
}

/* Grow the entry table: allocate the next range (double, at most
 * SS_GROW_MAX_STEP entries, at most to the ceiling), then publish it.  New
 * entries need no initialising: entries at and above entry_hwm are
 * initialised as they are first taken.  A process killed in between leaves
 * an allocated range the old capacity does not cover: harmless, the next
 * growth allocates it again.  Under the mutex. */
static int grow_entries(struct ss_handle *h)
{
    SS_ASSERT_MUTEX_HELD(h);
    uint32_t cap = h->capacity;
    if (cap >= h->max_capacity) return ceiling_status(h);
    uint32_t add = cap < SS_GROW_MAX_STEP ? cap : SS_GROW_MAX_STEP;
    if (add > h->max_capacity - cap) add = h->max_capacity - cap;
    int err = allocate_range(h->probe_fd, ss_extent_bytes(cap, h->max_procs),
                             (uint64_t)add * sizeof(struct ss_entry));
    if (err) return growth_failed(h, err, "entries", cap, cap + add);
    maybe_crash(10);
    __atomic_store_n(&h->hdr->capacity, cap + add, __ATOMIC_RELEASE);
    __atomic_store_n(&h->capacity, cap + add, __ATOMIC_RELAXED);
    h->hdr->growths++;
    return SS_OK;
}

/* Grow the process-slot table likewise (double, at most to SS_MAX_PROCS). */
static int grow_procs(struct ss_handle *h)
{
    SS_ASSERT_MUTEX_HELD(h);
    uint32_t cap = h->proc_capacity;
    if (cap >= h->max_procs)
        return fail(SS_EFULL, "lock table %s: all %u process slots are in use",
                    h->table_path, h->max_procs);
    uint32_t add = cap < h->max_procs - cap ? cap : h->max_procs - cap;
    int err = allocate_range(h->probe_fd, SS_HEADER_BYTES + (uint64_t)cap * sizeof(struct ss_proc),
                             (uint64_t)add * sizeof(struct ss_proc));
    if (err) return growth_failed(h, err, "process slots", cap, cap + add);
    maybe_crash(11);
    __atomic_store_n(&h->hdr->proc_capacity, cap + add, __ATOMIC_RELEASE);
    h->proc_capacity = cap + add;
    h->hdr->growths++;
    return SS_OK;
}

/* Take the entry process slot s keeps for itself (its stash, non-empty). */
static int stash_take(struct ss_handle *h, uint32_t s, uint32_t *out)
{
    uint32_t i = h->procs[s].stash - 1;
    if (i >= h->hdr->entry_hwm || h->entries[i].state != ENTRY_FREE)
        return fail(SS_ECORRUPT, "lock table %s: process slot %u keeps entry %u, which is "
                    "not a free entry", h->table_path, s, i);
    h->procs[s].stash = 0;
    *out = i;
    return SS_OK;
}

/* Put free entry i on the free list (no stash). */
static void free_list_push(struct ss_handle *h, uint32_t i)
{
    h->entries[i].next_free = h->hdr->free_head;
    h->hdr->free_head = i;
}

/* Take a free entry (not yet visible: state stays ENTRY_FREE): the one this
 * process's slot keeps, else the free list's first, else a new one (growing
 * the table if needed); SS_EFULL at the ceiling or the caller's share. */
static int entry_alloc(struct ss_handle *h, uint32_t *out)
{
    struct ss_header *hd = h->hdr;
    uint32_t i;
    int rc = reserve_reached(h);
    if (rc) return rc;
    if (h->has_slot && h->procs[h->slot].stash) {
        rc = stash_take(h, h->slot, &i);
        if (rc) return rc;
    } else if (hd->free_head != SS_NIL) {
        i = hd->free_head;
        if (h->entries[i].state != ENTRY_FREE)
            return fail(SS_ECORRUPT, "lock table %s: free list reaches a used entry",
                        h->table_path);
        uint32_t next = h->entries[i].next_free;
        if (next != SS_NIL && next >= hd->entry_hwm)
            return fail(SS_ECORRUPT, "lock table %s: free list link out of range",
                        h->table_path);
        hd->free_head = next;
    } else if (hd->entry_hwm >= h->capacity && (rc = grow_entries(h)) != SS_OK) {
        /* At the ceiling: other slots' stashed entries are the last free ones. */
        if (rc != SS_EFULL) return rc;
        uint32_t s = 0;
        while (s < hd->proc_hwm && !h->procs[s].stash) s++;
        if (s == hd->proc_hwm) return rc;
        int taken = stash_take(h, s, &i);
        if (taken) return taken;
    } else {
        i = hd->entry_hwm;
        SS_ASSERT(i < h->capacity);
        h->entries[i].state = ENTRY_FREE;
        h->entries[i].next_free = SS_NIL;
        h->entries[i].serial = 0;
        hd->entry_hwm = i + 1;
    }
    maybe_crash(1);
    *out = i;
    return SS_OK;
}

static int wake_waiters(struct ss_handle *h, uint64_t lo, uint64_t hi);
static int entry_alive(struct ss_handle *h, uint32_t i);
static inline uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }
static inline uint64_t sat_add_u64(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }
/* When waiting entry e turns urgent (CLOCK_REALTIME). */
static inline uint64_t urgent_at(const struct ss_entry *e)
{
    return sat_add_u64(e->since_ns, (uint64_t)SS_URGENT_NS);
}

static int note_marks(struct ss_handle *h, uint32_t i);

/* Fill entry i, make it visible, then index it.  A waiting entry's since_ns
 * is precise (its age decides when it turns urgent); a granted one's is the
 * coarse clock (display only: no precise clock read on an uncontended lock). */
static int entry_publish(struct ss_handle *h, uint32_t i, uint64_t start, uint64_t end,
                         int kind, int state, uint64_t ticket, int32_t tid)
{
    struct ss_entry *e = &h->entries[i];
    e->start = start;
    e->end = end;
    e->max_end = end;
    e->ticket = ticket;
    e->since_ns = now_ns(state == SS_WAITING ? CLOCK_REALTIME : CLOCK_REALTIME_COARSE);
    e->left = e->right = SS_NIL;
    e->next_free = SS_NIL;
    e->owner_slot = h->slot;
    e->owner_gen = h->gen;
    e->tid = kind == SS_PIN ? 0 : tid;
    e->count = 1;
    e->serial = (e->serial + 1) & 0x7fffffffu;
    e->kind = (uint8_t)kind;
    __atomic_store_n(&e->wflags, (uint8_t)0, __ATOMIC_RELAXED);
    __atomic_store_n(&e->state, (uint8_t)state, __ATOMIC_RELEASE);
    h->hdr->used++;
    h->procs[h->slot].held++;
    if (state == SS_WAITING) {
        h->hdr->waiting++;
        h->hdr->urgent_due_ns = min_u64(h->hdr->urgent_due_ns, urgent_at(e));
    }
    maybe_crash(2);
    return index_insert(h, i);
}

/* Turn waiting entry i into a granted one: out of the wait index, into its
 * kind's.  Crash-safe at every step: repair indexes an entry by its state. */
static int grant_waiting(struct ss_handle *h, uint32_t i)
{
    struct ss_entry *e = &h->entries[i];
    /* Already granted: a request's own conflict check can reclaim a dead
     * holder, whose removal may hand the region to that very request. */
    if (e->state != SS_WAITING) return SS_OK;
    int rc = index_remove(h, i);
    if (rc) return rc;
    maybe_crash(6);
    uint8_t flags = __atomic_fetch_and(&e->wflags, (uint8_t)~(W_URGENT | W_WOKEN | W_UPGRADE),
                                       __ATOMIC_ACQ_REL);
    if ((flags & W_URGENT) && h->hdr->urgent) h->hdr->urgent--;
    if (h->hdr->waiting) h->hdr->waiting--;
    e->since_ns = now_ns(CLOCK_REALTIME_COARSE);
    __atomic_store_n(&e->state, (uint8_t)SS_GRANTED, __ATOMIC_RELEASE);
    rc = index_insert(h, i);
    if (!rc && h->hdr->orphan_root != SS_NIL) rc = note_marks(h, i);
    return rc;
}

/* Unindex entry i, then mark it free and put it on the free list.  A granted
 * lock, or an urgent waiter (which holds back later requests), going away
 * may unblock waiters: wake those it does. */
static int entry_remove(struct ss_handle *h, uint32_t i)
{
    struct ss_entry *e = &h->entries[i];
    int rc = index_remove(h, i);
    if (rc) return rc;
    maybe_crash(4);
    int was_waiting = e->state == SS_WAITING;
    uint8_t flags = __atomic_exchange_n(&e->wflags, (uint8_t)0, __ATOMIC_ACQ_REL);
    int unblocks = e->kind != SS_PIN && e->kind != SS_ORPHAN &&
                   (!was_waiting || (flags & (W_URGENT | W_WOKEN)));
    uint64_t start = e->start, end = e->end;
    __atomic_store_n(&e->state, (uint8_t)ENTRY_FREE, __ATOMIC_RELEASE);
    /* This process's own entry is kept for its next allocation (see stash);
     * anyone else's, or a second one, goes back on the free list. */
    struct ss_proc *owner = h->has_slot && e->owner_slot == h->slot ? &h->procs[h->slot] : NULL;
    if (owner && owner->stash == 0 && e->owner_gen == h->gen) owner->stash = i + 1;
    else free_list_push(h, i);
    if (h->hdr->used) h->hdr->used--;
    if (e->kind != SS_ORPHAN && e->owner_slot < h->hdr->proc_hwm &&
        h->procs[e->owner_slot].held)   /* a mark counts for no slot (reclaim_dead) */
        h->procs[e->owner_slot].held--;
    if (was_waiting && h->hdr->waiting) h->hdr->waiting--;
    if (was_waiting && (flags & W_URGENT) && h->hdr->urgent) h->hdr->urgent--;
    if (unblocks && h->hdr->wait_root != SS_NIL)
        return wake_waiters(h, start, end);
    return SS_OK;
}

/* ---- owner-died marks ------------------------------------------------------
 *
 * The rule.  When the entry of a dead process is reclaimed (found in the
 * way, swept when the table is full, reaped) and it was a granted exclusive
 * lock, it is not freed but turned, in place, into a mark (kind SS_ORPHAN,
 * index TREE_ORPHAN) on the same region, remembering the dead pid: the bytes
 * may be half-written.  A mark conflicts with nothing and no sweep or reap
 * removes it.  Every lock granted afterwards whose region overlaps any part
 * of a mark reports owner_died (W_OWNER_DIED on its entry); a shared lock
 * leaves the mark as it is, an exclusive one consumes the part it covers:
 * a mark covered whole goes, one overlapped at an end is cut back to the
 * part outside the lock, one the lock falls inside of is split in two (if
 * the table has no entry for the second part, the mark stays whole: the
 * news is kept rather than lost).  Shared locks of dead processes, pins and
 * waiting requests leave no mark.
 * ------------------------------------------------------------------------ */

static inline uint8_t wflags_of(const struct ss_entry *e);
static int owner_pid(struct ss_handle *h, const struct ss_entry *e);

/* Reclaim entry i of a dead owner: a granted exclusive lock becomes a mark
 * (see above), anything else is removed.  Under the mutex. */
static int reclaim_dead(struct ss_handle *h, uint32_t i)
{
    struct ss_entry *e = &h->entries[i];
    if (e->state != SS_GRANTED || e->kind != SS_EXCLUSIVE || (wflags_of(e) & W_ABANDONED))
        return entry_remove(h, i);
    int rc = index_remove(h, i);
    if (rc) return rc;
    maybe_crash(22);
    /* The mark is news about the region, not an entry of the dead slot: it
     * leaves the slot's count, so the slot can be reused and reclaim sweeps
     * never walk the table for it again. */
    if (e->owner_slot < h->hdr->proc_hwm && h->procs[e->owner_slot].held)
        h->procs[e->owner_slot].held--;
    int pid = owner_pid(h, e);
    e->count = pid > 0 ? (uint32_t)pid : 1u;
    e->since_ns = now_ns(CLOCK_REALTIME_COARSE);   /* when the death was noticed */
    __atomic_store_n(&e->wflags, (uint8_t)0, __ATOMIC_RELEASE);
    e->kind = SS_ORPHAN;
    rc = index_insert(h, i);
    if (rc) return rc;
    return h->hdr->wait_root != SS_NIL ? wake_waiters(h, e->start, e->end) : SS_OK;
}

struct mark_scan { uint32_t found[64]; int n; };

static int collect_mark(struct ss_handle *h, uint32_t i, void *arg)
{
    (void)h;
    struct mark_scan *m = arg;
    m->found[m->n++] = i;
    return m->n == 64;   /* full: the caller goes round again */
}

/* Mark m's region becomes [start, end) (re-indexed: the key changes). */
static int mark_reshape(struct ss_handle *h, uint32_t m, uint64_t start, uint64_t end)
{
    int rc = index_remove(h, m);
    if (rc) return rc;
    h->entries[m].start = start;
    h->entries[m].end = end;
    h->entries[m].max_end = end;
    return index_insert(h, m);
}

/* Lock i was just granted: if marks overlap it, say so on its entry, and if
 * it is exclusive consume the parts it covers (the rule above). */
static int note_marks(struct ss_handle *h, uint32_t i)
{
    struct ss_entry *e = &h->entries[i];
    for (int round = 0; h->hdr->orphan_root != SS_NIL && round < 1 << 16; round++) {
        struct mark_scan sc;
        sc.n = 0;
        int rc = tree_each(h, h->hdr->orphan_root, e->start, e->end, collect_mark, &sc, 0);
        if (rc < 0) return rc;
        if (sc.n == 0) return SS_OK;
        __atomic_fetch_or(&e->wflags, (uint8_t)W_OWNER_DIED, __ATOMIC_ACQ_REL);
        if (e->kind != SS_EXCLUSIVE) return SS_OK;
        int kept = 0;
        for (int k = 0; k < sc.n; k++) {
            uint32_t m = sc.found[k];
            struct ss_entry *me = &h->entries[m];
            uint64_t ms = me->start, mend = me->end;
            if (ms >= e->start && mend <= e->end) {
                rc = entry_remove(h, m);
            } else if (ms < e->start && mend > e->end) {
                uint32_t j;
                rc = entry_alloc(h, &j);
                if (rc == SS_EFULL) { kept++; continue; }   /* keep it whole */
                if (rc) return rc;
                struct ss_entry *je = &h->entries[j];
                uint32_t serial = je->serial;
                *je = *me;
                je->serial = (serial + 1) & 0x7fffffffu;
                je->start = e->end;
                je->max_end = mend;
                je->left = je->right = SS_NIL;
                je->state = ENTRY_FREE;
                __atomic_store_n(&je->state, (uint8_t)SS_GRANTED, __ATOMIC_RELEASE);
                h->hdr->used++;
                rc = index_insert(h, j);
                if (!rc) rc = mark_reshape(h, m, ms, e->start);
            } else if (ms < e->start) {
                rc = mark_reshape(h, m, ms, e->start);
            } else {
                rc = mark_reshape(h, m, e->end, mend);
            }
            if (rc) return rc;
        }
        if (sc.n < 64 || kept == sc.n) return SS_OK;
    }
    return SS_OK;
}

/* ---- conflicts --------------------------------------------------------- */

/* A request, as the conflict predicates see it. */
struct request {
    uint64_t start, end;
    int kind;
    uint32_t self;        /* the request's own waiting entry, or SS_NIL */
    uint64_t ticket;      /* its arrival ticket; UINT64_MAX until it waits */
    uint64_t now;         /* CLOCK_REALTIME, read when first needed (0: not yet) */
    int32_t tid;          /* its owner: a thread id, or a caller's owner id (ss_wait.owner) */
    uint32_t also;        /* a granted entry of ours that does not count as a conflict
                           * (the shared lock an upgrade converts), or SS_NIL */
};

static inline uint8_t wflags_of(const struct ss_entry *e)
{
    return __atomic_load_n(&e->wflags, __ATOMIC_ACQUIRE);
}

/* The shared lock a W_UPGRADE request x converts: its entry index if it is
 * still that -- granted, shared, same owner (slot, generation, thread),
 * same region -- else SS_NIL (it does not count as x's own then). */
static uint32_t upgrade_source(struct ss_handle *h, uint32_t x)
{
    const struct ss_entry *e = &h->entries[x];
    if (!(wflags_of(e) & W_UPGRADE)) return SS_NIL;
    uint32_t s = e->next_free;
    if (s >= h->hdr->entry_hwm || s == x) return SS_NIL;
    const struct ss_entry *se = &h->entries[s];
    if (se->state != SS_GRANTED || se->kind != SS_SHARED || se->owner_slot != e->owner_slot ||
        se->owner_gen != e->owner_gen || se->tid != e->tid || se->start != e->start ||
        se->end != e->end)
        return SS_NIL;
    return s;
}

/* In a granted index: the entry counts unless its owner abandoned it. */
static int holds_region(struct ss_handle *h, uint32_t i, void *arg)
{
    const struct request *r = arg;
    return i != r->also && !(wflags_of(&h->entries[i]) & W_ABANDONED);
}

/* Mark waiting entry e urgent if it has waited SS_URGENT_NS (by *now, read
 * here if 0).  Returns whether it is urgent. */
static int make_urgent_if_due(struct ss_handle *h, struct ss_entry *e, uint64_t *now)
{
    if (e->state != SS_WAITING) return 0;
    uint8_t flags = wflags_of(e);
    if (flags & W_URGENT) return 1;
    if (!*now) *now = now_ns(CLOCK_REALTIME);
    if (*now < urgent_at(e)) return 0;
    __atomic_fetch_or(&e->wflags, (uint8_t)W_URGENT, __ATOMIC_ACQ_REL);
    h->hdr->urgent++;
    return 1;
}

/* In the wait index: a waiter that arrived before the request and conflicts
 * with it. */
static int waiter_ahead(struct ss_handle *h, uint32_t i, void *varg)
{
    const struct request *r = varg;
    const struct ss_entry *e = &h->entries[i];
    return i != r->self && !(wflags_of(e) & W_ABANDONED) && e->ticket < r->ticket &&
           (e->kind == SS_EXCLUSIVE || r->kind == SS_EXCLUSIVE);
}

/* In the wait index: an urgent waiter that arrived before the request and
 * conflicts with it holds the request back.  (A waiter that has waited
 * SS_URGENT_NS turns urgent when found here, by mark_due_waiters, in a
 * release's wake-up pass, or by its own timer, whichever comes first.) */
static int urgent_ahead(struct ss_handle *h, uint32_t i, void *varg)
{
    struct request *r = varg;
    return waiter_ahead(h, i, r) && make_urgent_if_due(h, &h->entries[i], &r->now);
}

struct due_pass {
    uint64_t *now;
    uint64_t next;       /* earliest due time of a waiter left unmarked */
    uint32_t visits;     /* a walk of the whole index visits each entry once: more is
                          * a corrupt index (links meeting twice) */
};

static int visit_due(struct ss_handle *h, uint32_t i, void *varg)
{
    struct due_pass *p = varg;
    if (++p->visits > h->capacity)
        return fail(SS_ECORRUPT, "lock table %s: the wait index visits an entry twice",
                    h->table_path);
    struct ss_entry *e = &h->entries[i];
    if (wflags_of(e) & W_ABANDONED) return 0;
    if (!make_urgent_if_due(h, e, p->now))
        p->next = min_u64(p->next, urgent_at(e));
    return 0;
}

/* Mark urgent every waiter that is due by *now (read here if 0), if
 * hdr->urgent_due_ns says one may be, and move urgent_due_ns to the next
 * one's due time.  So a waiter whose own process has not run since it became
 * due (stopped, or not scheduled) still holds back later requests, while a
 * request that meets waiters none of which is due pays one clock read, not a
 * walk of them.  A whole pass runs at most once per waiter turning urgent
 * (and once after a removal left the bound early).  Returns SS_OK or < 0. */
static int mark_due_waiters(struct ss_handle *h, uint64_t *now)
{
    SS_ASSERT_MUTEX_HELD(h);
    if (!*now) *now = now_ns(CLOCK_REALTIME);
    if (*now < h->hdr->urgent_due_ns) return SS_OK;
    struct due_pass p = {now, UINT64_MAX, 0};
    int rc = tree_each(h, h->hdr->wait_root, 0, UINT64_MAX, visit_due, &p, 0);
    if (rc < 0) return rc;
    h->hdr->urgent_due_ns = p.next;
    return SS_OK;
}

/* Can an urgent waiter hold request r back?  Marks the due ones first when
 * none is marked and an earlier conflicting waiter exists.  Returns 1, 0 or
 * < 0. */
static int urgent_waiters_may_block(struct ss_handle *h, struct request *r)
{
    if (h->hdr->wait_root == SS_NIL) return 0;
    if (h->hdr->urgent == 0) {
        uint32_t found = SS_NIL;
        int rc = tree_find(h, h->hdr->wait_root, r->start, r->end, waiter_ahead, r, &found, 0);
        if (rc <= 0) return rc;
        rc = mark_due_waiters(h, &r->now);
        if (rc) return rc;
    }
    return h->hdr->urgent != 0;
}

/* A granted entry of the request's owner (the calling thread, or the owner id
 * it named), through any handle of this process. */
static int held_by_caller(struct ss_handle *h, uint32_t i, void *arg)
{
    const struct request *r = arg;
    const struct ss_entry *e = &h->entries[i];
    if (i == r->also || (wflags_of(e) & W_ABANDONED) || e->tid != r->tid) return 0;
    if (e->owner_slot >= h->hdr->proc_hwm) return 0;   /* untrusted index */
    const struct ss_proc *p = &h->procs[e->owner_slot];
    return p->state == PROC_USED && p->gen == e->owner_gen && p->token == my_token();
}

/* First granted entry conflicting with the request that pred accepts. */
static int find_granted(struct ss_handle *h, const struct request *r, entry_pred pred,
                        uint32_t *found)
{
    void *arg = (void *)r;
    int rc = tree_find(h, h->hdr->root[TREE_EXCLUSIVE], r->start, r->end, pred, arg,
                       found, 0);
    if (rc == 0 && r->kind == SS_EXCLUSIVE)
        rc = tree_find(h, h->hdr->root[TREE_SHARED], r->start, r->end, pred, arg, found, 0);
    return rc;
}

/* First live entry holding the request back: a granted conflict, else (unless
 * ignore_waiters) an urgent waiter ahead of it.  Entries of dead owners found
 * on the way are reclaimed when probe is set.  Returns 1 (*who set), 0 (none)
 * or < 0. */
/* Liveness probes are system calls (~1 us here).  A waiter skips them while
 * it is being woken by releases -- a live holder's release is what it waits
 * for -- and probes every SS_RECHECK_NS, and on try-locks, which must reclaim
 * a dead holder at once. */
static int queue_waits_for_us(struct ss_handle *h, const struct request *r, uint32_t u);

/* In the wait index: an urgent waiter ahead that holds the request back --
 * unless it waits (through granted conflicts and queueing) for the request's
 * owner: queueing behind it would close a cycle, so the request passes it. */
static int urgent_blocking(struct ss_handle *h, uint32_t i, void *varg)
{
    if (!urgent_ahead(h, i, varg)) return 0;
    return queue_waits_for_us(h, varg, i) == 0;   /* an error: keep the queue order */
}

static int find_conflict(struct ss_handle *h, struct request *r, int ignore_waiters,
                         int probe, uint32_t *who)
{
    for (;;) {
        uint32_t found = SS_NIL;
        int rc = find_granted(h, r, holds_region, &found);
        if (rc == 0 && !ignore_waiters) {
            int may = urgent_waiters_may_block(h, r);
            rc = may == 1 ? tree_find(h, h->hdr->wait_root, r->start, r->end, urgent_blocking,
                                      r, &found, 0)
                          : may;
        }
        if (rc <= 0) return rc;
        if (!probe) { *who = found; return 1; }
        int alive = entry_alive(h, found);
        if (alive < 0) return alive;
        if (alive) { *who = found; return 1; }
        rc = reclaim_dead(h, found);
        if (rc) return rc;
    }
}

/* ---- wake-ups ------------------------------------------------------------ */

/* Waiters overlapping a released region, the SS_WAKE_BATCH earliest by ticket. */
struct wake_pass {
    uint32_t cand[SS_WAKE_BATCH];
    int n;
};

static int collect_waiter(struct ss_handle *h, uint32_t i, void *varg)
{
    struct wake_pass *p = varg;
    const struct ss_entry *e = &h->entries[i];
    if (e->state != SS_WAITING || (wflags_of(e) & W_ABANDONED)) return 0;
    int k = p->n < SS_WAKE_BATCH ? p->n++ : SS_WAKE_BATCH;
    if (k == SS_WAKE_BATCH) {   /* full: replace the latest if this one is earlier */
        if (e->ticket >= h->entries[p->cand[SS_WAKE_BATCH - 1]].ticket) return 0;
        k = SS_WAKE_BATCH - 1;
    }
    while (k > 0 && h->entries[p->cand[k - 1]].ticket > e->ticket) {
        p->cand[k] = p->cand[k - 1];
        k--;
    }
    p->cand[k] = i;
    return 0;
}

static inline int regions_conflict(const struct ss_entry *a, const struct ss_entry *b)
{
    return a->start < b->end && b->start < a->end &&
           (a->kind == SS_EXCLUSIVE || b->kind == SS_EXCLUSIVE);
}

/* [lo, hi) was released: wake the waiters it unblocks, and only those.  In
 * arrival order, each overlapping waiter that could now be granted -- no
 * granted conflict, no urgent waiter ahead, no conflict with one chosen
 * earlier in this pass -- is chosen: an urgent one (or one that has waited
 * SS_URGENT_NS, which turns urgent here) is granted at once (handoff); any
 * other is marked woken and woken, unless it was woken already and has not
 * run yet.  Waiters beyond SS_WAKE_BATCH are left to their own re-checks. */
static int wake_waiters(struct ss_handle *h, uint64_t lo, uint64_t hi)
{
    struct wake_pass pass;
    pass.n = 0;
    int rc = tree_each(h, h->hdr->wait_root, lo, hi, collect_waiter, &pass, 0);
    if (rc < 0) return rc;
    uint32_t chosen[SS_WAKE_BATCH], ahead[SS_WAKE_BATCH];
    int nchosen = 0, nahead = 0;
    uint64_t now = 0;
    for (int k = 0; k < pass.n; k++) {
        uint32_t c = pass.cand[k];
        struct ss_entry *e = &h->entries[c];
        int urgent = make_urgent_if_due(h, e, &now);
        struct request r = {e->start, e->end, e->kind, c, e->ticket, now, e->tid,
                            upgrade_source(h, c)};
        uint32_t found;
        rc = find_granted(h, &r, holds_region, &found);
        if (rc < 0) return rc;
        int blocked = rc == 1;
        int upgrade = r.also != SS_NIL;   /* holds the region shared: waiters wait for it */
        /* Earlier candidates, in arrival order: urgent ones still blocked,
         * and ones chosen above.  (Cheap pairwise checks: candidates are
         * few; an urgent waiter elsewhere is looked up only for a handoff.) */
        for (int j = 0; j < nahead && !blocked && !upgrade; j++)
            blocked = regions_conflict(e, &h->entries[ahead[j]]);
        for (int j = 0; j < nchosen && !blocked; j++)
            blocked = regions_conflict(e, &h->entries[chosen[j]]);
        if (!blocked && urgent && !upgrade) {
            /* An older waiter outside the released region may be due but
             * unmarked (its process has not run): mark it before looking. */
            rc = mark_due_waiters(h, &now);
            if (rc) return rc;
            if (h->hdr->urgent > 1) {
                rc = tree_find(h, h->hdr->wait_root, r.start, r.end, urgent_ahead, &r, &found,
                               0);
                if (rc < 0) return rc;
                blocked = rc == 1;
            }
        }
        if (blocked) {
            if (urgent) ahead[nahead++] = c;
            continue;
        }
        if (urgent) {
            rc = grant_waiting(h, c);   /* handoff: later candidates see it granted */
            if (rc) return rc;
            __atomic_add_fetch(&e->wake, 1, __ATOMIC_RELEASE);
            wake_later(&e->wake);
        } else {
            chosen[nchosen++] = c;
            if (!(wflags_of(e) & W_WOKEN)) {
                __atomic_fetch_or(&e->wflags, (uint8_t)W_WOKEN, __ATOMIC_ACQ_REL);
                __atomic_add_fetch(&e->wake, 1, __ATOMIC_RELEASE);
                wake_later(&e->wake);
            }
        }
        maybe_crash(7);
    }
    return SS_OK;
}

/* Remove every entry its owner abandoned (run by whoever takes the mutex
 * while the abandoned counter is set).  The counter is cleared first: an
 * owner flags its entry before counting it, so a flag set meanwhile is
 * either seen by this walk or counted for the next holder. */
static int sweep_abandoned(struct ss_handle *h)
{
    __atomic_store_n(&h->hdr->abandoned, 0, __ATOMIC_SEQ_CST);
    int removed = 0;
    for (uint32_t i = 0; i < h->hdr->entry_hwm; i++) {
        struct ss_entry *e = &h->entries[i];
        if (e->state == ENTRY_FREE || !(wflags_of(e) & W_ABANDONED)) continue;
        if (removed++) maybe_crash(8);
        int rc = entry_remove(h, i);
        if (rc) return rc;
    }
    return SS_OK;
}

/* Probe process slot `slot`'s liveness lock: 1 held (owner alive), 0 free
 * (owner gone), < 0 error.  Reads no shared memory, so it may run without
 * the table mutex. */
static int probe_slot(struct ss_handle *h, uint32_t slot)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET,
                       .l_start = SS_SLOT_LOCK_BASE + slot, .l_len = 1};
    if (fcntl(h->probe_fd, F_OFD_GETLK, &fl) != 0)
        return fail_sys("lock table %s: liveness probe failed", h->table_path);
    return fl.l_type != F_UNLCK;
}

/* Under the mutex: mark slot p free (a new generation), its stashed entry
 * back on the free list. */
static void slot_release(struct ss_handle *h, struct ss_proc *p)
{
    SS_ASSERT_MUTEX_HELD(h);
    uint32_t kept = p->stash;
    p->stash = 0;
    if (kept && kept - 1 < h->hdr->entry_hwm && h->entries[kept - 1].state == ENTRY_FREE)
        free_list_push(h, kept - 1);   /* anything else is corrupt: dropped, repair finds it */
    p->state = PROC_FREE;
    p->gen++;
    if (h->hdr->procs_used) h->hdr->procs_used--;
}

/* Under the mutex: the slot's owner is gone, so free the slot; every entry
 * made under its generation is dead from now on (gen no longer matches). */
static void free_dead_slot(struct ss_handle *h, uint32_t slot)
{
    slot_release(h, &h->procs[slot]);
}

/* What the slot table alone says of (slot, gen): < 0 error, 0 dead (freed
 * or reused), 1 alive (ours, or no way to probe), SLOT_PROBE if only a
 * liveness probe can tell.  Under the mutex. */
#define SLOT_PROBE 2
static int slot_known(struct ss_handle *h, uint32_t slot, uint32_t gen)
{
    SS_ASSERT_MUTEX_HELD(h);
    if (slot >= h->hdr->proc_hwm)
        return fail(SS_ECORRUPT, "lock table %s: owner slot %u out of range",
                    h->table_path, slot);
    struct ss_proc *p = &h->procs[slot];
    if (p->state != PROC_USED || p->gen != gen) return 0;
    if (h->has_slot && slot == h->slot) return 1;
    if (h->probe_fd < 0) return 1;   /* cannot probe: assume alive */
    return SLOT_PROBE;
}

/* Is the process slot's owner (at generation gen) alive?  1 yes, 0 no, <0
 * error.  Under the mutex.  For one-off questions (a conflicting holder);
 * scans over many entries use scan_alive, which probes each slot once. */
static int slot_alive(struct ss_handle *h, uint32_t slot, uint32_t gen)
{
    int known = slot_known(h, slot, gen);
    if (known != SLOT_PROBE) return known;
    /* A slot probed alive within SS_ALIVE_CACHE_NS is taken to be alive still:
     * a holder handing a lock back and forth with us would otherwise cost a
     * system call per acquisition.  At worst a holder's death is noticed that
     * much later. */
    uint64_t now = now_ns(CLOCK_MONOTONIC);
    unsigned c = slot % (unsigned)(sizeof h->alive_cache / sizeof h->alive_cache[0]);
    if (h->alive_cache[c].slot == slot && h->alive_cache[c].gen == gen &&
        h->alive_cache[c].until_ns > now)
        return 1;
    int alive = probe_slot(h, slot);
    if (alive < 0) return alive;
    if (alive) {
        h->alive_cache[c].slot = slot;
        h->alive_cache[c].gen = gen;
        h->alive_cache[c].until_ns = now + SS_ALIVE_CACHE_NS;
        return 1;
    }
    free_dead_slot(h, slot);
    return 0;
}

static int entry_alive(struct ss_handle *h, uint32_t i)
{
    return slot_alive(h, h->entries[i].owner_slot, h->entries[i].owner_gen);
}

/* Liveness verdicts of one scan: bit s of `known` says slot s was probed
 * during this scan, bit s of `alive` what the probe found.  A scan over
 * entries of 64 processes thus costs 64 probes (~0.4 us each), not one per
 * entry.  Sized for the table's slot capacity; one per handle for scans
 * under the mutex (h->scan), or private to a caller that scans without it. */
struct verdicts {
    uint32_t slots;              /* capacity in slots */
    uint64_t *known, *alive;     /* slots / 64 words each */
};

static struct verdicts *verdicts_new(uint32_t slots)
{
    size_t words = ((size_t)slots + 63) / 64;
    struct verdicts *v = calloc(1, sizeof *v + 2 * words * sizeof(uint64_t));
    if (!v) return NULL;
    v->slots = slots;
    v->known = (uint64_t *)(v + 1);
    v->alive = v->known + words;
    return v;
}

/* Forget every verdict of slots [0, hwm): a new scan starts. */
static void verdicts_clear(struct verdicts *v, uint32_t hwm)
{
    if (hwm > v->slots) hwm = v->slots;
    memset(v->known, 0, ((size_t)hwm + 63) / 64 * sizeof(uint64_t));
}

/* The verdict for slot s, probing it if this scan has not yet: 1 alive,
 * 0 gone, < 0 error.  Touches no shared memory. */
static int verdict(struct ss_handle *h, struct verdicts *v, uint32_t s)
{
    if (s >= v->slots) return fail(SS_ECORRUPT, "lock table %s: owner slot %u out of range",
                                   h->table_path, s);
    uint64_t bit = UINT64_C(1) << (s % 64);
    if (v->known[s / 64] & bit) return (v->alive[s / 64] & bit) != 0;
    int alive = probe_slot(h, s);
    if (alive < 0) return alive;
    v->known[s / 64] |= bit;
    if (alive) v->alive[s / 64] |= bit;
    else v->alive[s / 64] &= ~bit;
    return alive;
}

/* Start a scan under the mutex: from here until the mutex is released,
 * scan_alive decides each slot once. */
static void scan_begin(struct ss_handle *h)
{
    SS_ASSERT_MUTEX_HELD(h);
    SS_ASSERT(h->scan != NULL && h->proc_capacity <= h->scan->slots);
    verdicts_clear(h->scan, h->hdr->proc_hwm);
}

/* slot_alive for a scan begun with scan_begin: 1, 0 (freeing a dead slot),
 * or < 0. */
static int scan_alive(struct ss_handle *h, uint32_t slot, uint32_t gen)
{
    int known = slot_known(h, slot, gen);
    if (known != SLOT_PROBE) return known;
    int alive = verdict(h, h->scan, slot);
    if (alive == 0) free_dead_slot(h, slot);
    return alive;
}

static int scan_entry_alive(struct ss_handle *h, uint32_t i)
{
    return scan_alive(h, h->entries[i].owner_slot, h->entries[i].owner_gen);
}

/* Remove every entry whose owner is dead; *removed counts them.  Under the
 * mutex.  The slots' held counts say who holds entries at all, so only
 * those slots are probed (once each), and the entries are walked only if
 * one of them is dead: a table full of live owners costs O(slots), not a
 * pass over every entry. */
static int sweep_dead(struct ss_handle *h, uint32_t *removed)
{
    SS_ASSERT_MUTEX_HELD(h);
    scan_begin(h);
    struct ss_header *hd = h->hdr;
    uint32_t phwm = hd->proc_hwm, dead = 0;
    uint8_t *gone = calloc(phwm ? phwm : 1, 1);
    if (!gone) return fail_sys("out of memory sweeping %s", h->table_path);
    int rc = SS_OK;
    for (uint32_t s = 0; s < phwm; s++) {
        struct ss_proc *p = &h->procs[s];
        if (p->held == 0) continue;
        int alive = p->state == PROC_USED ? scan_alive(h, s, p->gen) : 0;
        if (alive < 0) { rc = alive; goto out; }
        if (!alive) { gone[s] = 1; dead++; }
    }
    for (uint32_t i = 0; dead && i < hd->entry_hwm; i++) {
        const struct ss_entry *e = &h->entries[i];
        if (e->state == ENTRY_FREE || e->owner_slot >= phwm || e->kind == SS_ORPHAN) continue;
        const struct ss_proc *p = &h->procs[e->owner_slot];
        /* Also entries of an older generation of a live slot (dead by
         * definition; claim_slot removes them, so only after a crash). */
        if (!gone[e->owner_slot] && p->state == PROC_USED && p->gen == e->owner_gen) continue;
        rc = reclaim_dead(h, i);   /* an exclusive lock leaves an owner-died mark */
        if (rc) goto out;
        (*removed)++;
    }
out:
    free(gone);
    return rc;
}

/* entry_alloc, but when the table is full sweep once for dead owners first.
 * A sweep that freed nothing is trusted for SS_SWEEP_TRUST_NS: a caller that
 * retries at once (the Python layer's slow path after the fast path's try,
 * or the waiting entry after a grant attempt) gets SS_EFULL without a second
 * pass over the whole table. */
static int entry_alloc_sweeping(struct ss_handle *h, uint32_t *out)
{
    SS_ASSERT_MUTEX_HELD(h);
    int rc = entry_alloc(h, out);
    if (rc != SS_EFULL) return rc;
    uint64_t now = now_ns(CLOCK_MONOTONIC);
    if (h->fruitless_sweep_ns && now - h->fruitless_sweep_ns < (uint64_t)SS_SWEEP_TRUST_NS)
        return rc;
    uint32_t removed = 0;
    rc = sweep_dead(h, &removed);
    if (rc) return rc;
    h->fruitless_sweep_ns = removed ? 0 : now;
    return entry_alloc(h, out);
}

/* Validate a reference against this handle; returns the entry index or < 0. */
static int64_t own_entry(struct ss_handle *h, int64_t ref, int want_pin)
{
    if (ref < 0) return fail(SS_EINVAL, "invalid reference %lld", (long long)ref);
    uint32_t i = (uint32_t)(ref & 0xffffffff), serial = (uint32_t)(ref >> 32);
    if (i >= h->hdr->entry_hwm) return fail(SS_ENOTOWNER, "reference %u is not in use", i);
    struct ss_entry *e = &h->entries[i];
    if (e->state == ENTRY_FREE || e->serial != serial || !h->has_slot ||
        e->owner_slot != h->slot || e->owner_gen != h->gen ||
        (want_pin ? e->kind != SS_PIN : e->kind == SS_PIN))
        return fail(SS_ENOTOWNER, "entry %u is not held by this handle "
                    "(released already, or owned by another process)", i);
    return i;
}

/* ===================================================================
 * 7. Creating, validating and attaching a table; repair after a holder died
 *
 * The path of an attach, top down:
 *   ss_attach -> open_lock_dir -> open_or_create
 *                  open_or_create -> open_table   (open_table_file, map_table,
 *                                                  check_header)
 *                                 -> create_table (new_table_file,
 *                                                  init_header, link)
 *             -> attach_validate  (copy in steps, a short hold of the mutex
 *                                  after each; table_validate on the copy
 *                                  without it)
 *             -> take_slot        (claim_slot)
 * ss_attach_table is the same without a data file and a slot; ensure_slot
 * gives a forked child a slot of its own.  table_repair runs from
 * table_lock after a holder died inside the mutex.
 * =================================================================== */

/* Check subtree n of tree t; *last is the previous entry in key order
 * (SS_NIL before the first). */
static int validate_tree(struct ss_handle *h, int t, uint32_t n, int depth,
                         uint8_t *seen, uint32_t *count, uint32_t *last, uint32_t parent)
{
    DEPTH_CHECK(h, depth);
    if (n == SS_NIL) return SS_OK;
    if (n >= h->hdr->entry_hwm || seen[n])
        return fail(SS_ECORRUPT, "lock table %s: index link %u invalid or repeated",
                    h->table_path, n);
    seen[n] = 1;
    const struct ss_entry *e = &h->entries[n];
    if (e->state == ENTRY_FREE || tree_of_entry(e) != t)
        return fail(SS_ECORRUPT, "lock table %s: index holds entry %u of the wrong kind",
                    h->table_path, n);
    if (parent != SS_NIL && prio_above(n, parent))
        return fail(SS_ECORRUPT, "lock table %s: index heap order broken", h->table_path);
    int rc = validate_tree(h, t, e->left, depth + 1, seen, count, last, n);
    if (rc) return rc;
    if (*last != SS_NIL && !key_less(h, *last, n))
        return fail(SS_ECORRUPT, "lock table %s: index order broken", h->table_path);
    *last = n;
    (*count)++;
    rc = validate_tree(h, t, e->right, depth + 1, seen, count, last, n);
    if (rc) return rc;
    uint64_t want = e->end, l = max_end_of(h, e->left), r = max_end_of(h, e->right);
    if (l > want) want = l;
    if (r > want) want = r;
    if (e->max_end != want)
        return fail(SS_ECORRUPT, "lock table %s: index max_end broken", h->table_path);
    return SS_OK;
}

/* Check the own fields (not the links) of e, entry i of a table whose
 * process slots [0, proc_hwm) have been used.  e may be a copy. */
static int check_entry(struct ss_handle *h, const struct ss_entry *e, uint32_t i,
                       uint32_t proc_hwm)
{
    if (e->state != SS_GRANTED && e->state != SS_WAITING)
        return fail(SS_ECORRUPT, "lock table %s: entry %u has bad state %u",
                    h->table_path, i, e->state);
    if (e->start >= e->end || e->end > (uint64_t)INT64_MAX ||
        (e->kind != SS_SHARED && e->kind != SS_EXCLUSIVE && e->kind != SS_PIN &&
         e->kind != SS_ORPHAN) ||
        ((e->kind == SS_PIN || e->kind == SS_ORPHAN) && e->state != SS_GRANTED) ||
        (e->state == SS_WAITING && (e->wflags & W_OWNER_DIED)) ||
        e->owner_slot >= proc_hwm || e->count == 0 ||
        (e->wflags & ~W_ALL) ||
        (e->state == SS_GRANTED && (e->wflags & (W_URGENT | W_WOKEN | W_UPGRADE))) ||
        ((e->wflags & W_UPGRADE) && e->kind != SS_EXCLUSIVE))
        return fail(SS_ECORRUPT, "lock table %s: entry %u is malformed",
                    h->table_path, i);
    return SS_OK;
}

/* Check one entry's own fields (not its links). */
static int validate_entry(struct ss_handle *h, uint32_t i)
{
    return check_entry(h, &h->entries[i], i, h->hdr->proc_hwm);
}

/* Every process slot and entry is well formed and the header's counters
 * match them; *used receives the number of entries in use. */
static int validate_entries(struct ss_handle *h, uint32_t *used)
{
    struct ss_header *hd = h->hdr;
    uint32_t waiting = 0, procs = 0, urgent = 0;
    *used = 0;
    for (uint32_t p = 0; p < hd->proc_hwm; p++) {
        if (h->procs[p].state == PROC_USED) procs++;
        else if (h->procs[p].state != PROC_FREE)
            return fail(SS_ECORRUPT, "lock table %s: process slot %u malformed",
                        h->table_path, p);
    }
    uint32_t *held = calloc(hd->proc_hwm ? hd->proc_hwm : 1, sizeof *held);
    if (!held) return fail_sys("out of memory validating %s", h->table_path);
    for (uint32_t i = 0; i < hd->entry_hwm; i++) {
        if (h->entries[i].state == ENTRY_FREE) continue;
        int rc = validate_entry(h, i);
        if (rc) { free(held); return rc; }
        if (h->entries[i].kind != SS_ORPHAN) held[h->entries[i].owner_slot]++;
        (*used)++;
        if (h->entries[i].state == SS_WAITING) {
            waiting++;
            if (wflags_of(&h->entries[i]) & W_URGENT) urgent++;
        }
    }
    uint32_t bad_slot = SS_NIL;
    for (uint32_t p = 0; p < hd->proc_hwm && bad_slot == SS_NIL; p++)
        if (held[p] != h->procs[p].held) bad_slot = p;
    free(held);
    if (bad_slot != SS_NIL)
        return fail(SS_ECORRUPT, "lock table %s: process slot %u's entry count disagrees "
                    "with its entries", h->table_path, bad_slot);
    if (*used != hd->used || waiting != hd->waiting || procs != hd->procs_used ||
        urgent != hd->urgent)
        return fail(SS_ECORRUPT, "lock table %s: counters disagree with entries (used %u/%u, "
                    "waiting %u/%u, processes %u/%u, urgent %u/%u)", h->table_path, hd->used,
                    *used, hd->waiting, waiting, hd->procs_used, procs, hd->urgent, urgent);
    return SS_OK;
}

/* Every tree is a valid treap and together they index exactly the `used`
 * entries in use; marks each indexed entry in seen[]. */
static int validate_indexes(struct ss_handle *h, uint8_t *seen, uint32_t used)
{
    uint32_t indexed = 0;
    for (int t = 0; t < TREE_COUNT; t++) {
        uint32_t last = SS_NIL;
        int rc = validate_tree(h, t, *tree_root(h, t), 0, seen, &indexed, &last, SS_NIL);
        if (rc) return rc;
    }
    if (indexed != used)
        return fail(SS_ECORRUPT, "lock table %s: %u entries in use but %u indexed",
                    h->table_path, used, indexed);
    return SS_OK;
}

/* The free list and the process slots' stashes hold exactly the free
 * entries below entry_hwm, once each (seen[] marks the indexed ones on
 * entry). */
static int validate_free_list(struct ss_handle *h, uint8_t *seen, uint32_t used)
{
    uint32_t hwm = h->hdr->entry_hwm, free_count = 0;
    /* The link is followed only after f was checked: an out-of-range f must
     * not be dereferenced, not even by the loop's step. */
    for (uint32_t f = h->hdr->free_head; f != SS_NIL;) {
        if (f >= hwm || seen[f] || h->entries[f].state != ENTRY_FREE)
            return fail(SS_ECORRUPT, "lock table %s: free list broken", h->table_path);
        seen[f] = 1;
        free_count++;
        f = h->entries[f].next_free;
    }
    for (uint32_t p = 0; p < h->hdr->proc_hwm; p++) {
        uint32_t kept = h->procs[p].stash;
        if (!kept) continue;
        if (kept - 1 >= hwm || seen[kept - 1] || h->entries[kept - 1].state != ENTRY_FREE ||
            h->procs[p].state != PROC_USED)
            return fail(SS_ECORRUPT, "lock table %s: process slot %u keeps a bad entry",
                        h->table_path, p);
        seen[kept - 1] = 1;
        free_count++;
    }
    if (used + free_count != hwm)
        return fail(SS_ECORRUPT, "lock table %s: %u entries neither used nor free",
                    h->table_path, hwm - used - free_count);
    return SS_OK;
}

/* Full consistency check of the table h shows: every entry, every index, the
 * free list and the counters.  O(entries in use); h may be a private copy
 * (attach_validate), else the caller holds the mutex. */
static int table_validate(struct ss_handle *h)
{
    uint32_t used;
    int rc = validate_entries(h, &used);
    if (rc) return rc;
    uint8_t *seen = calloc(h->hdr->entry_hwm ? h->hdr->entry_hwm : 1, 1);
    if (!seen) return fail_sys("out of memory validating %s", h->table_path);
    rc = validate_indexes(h, seen, used);
    if (rc == SS_OK) rc = validate_free_list(h, seen, used);
    free(seen);
    return rc;
}

/* Attach validation goes through the table in steps, each followed by (or,
 * on its last pass, copied in) a short hold of the mutex of its own, so that
 * no other process's lock waits for the whole table (a million entries take
 * ~0.05-0.4 s to copy or check).  A step is SS_VALIDATE_STEP entries
 * (640 KiB; copying them takes ~0.1 ms).  Copies of the whole table larger
 * than SS_VALIDATE_COPY_MAX (3.3 million entries) are not made. */
#define SS_VALIDATE_STEP 8192u
#define SS_VALIDATE_PASSES 3
#define SS_VALIDATE_COPY_MAX ((size_t)256 << 20)
#define SS_VALIDATE_YIELD_NS 200000u   /* a woken sleeper gets this long to take the mutex */

static uint32_t validate_step_override;   /* test hook: entries per step, 0 = default */
static uint64_t validate_copy_max_override; /* test hook: largest copy in bytes, 0 = default */
static __thread struct {
    uint32_t passes, holds;   /* of the last attach_validate of this thread */
    uint32_t whole;           /* 1 if it checked a consistent copy as a whole */
    uint64_t longest_ns;      /* its longest mutex hold */
} tls_attach_stats;

void ss_debug_set_attach_step(uint32_t entries, uint64_t copy_max_bytes)
{
    validate_step_override = entries;
    validate_copy_max_override = copy_max_bytes;
}

void ss_debug_attach_stats(uint32_t *passes, uint32_t *holds, uint32_t *whole,
                           uint64_t *longest_hold_ns)
{
    if (passes) *passes = tls_attach_stats.passes;
    if (holds) *holds = tls_attach_stats.holds;
    if (whole) *whole = tls_attach_stats.whole;
    if (longest_hold_ns) *longest_hold_ns = tls_attach_stats.longest_ns;
}

/* Check the own fields of the n entries at e (copies of entries first..,
 * each copied whole in one hold), free ones skipped, against proc_hwm as
 * it was in that hold. */
static int check_entries(struct ss_handle *h, const struct ss_entry *e, uint32_t first,
                         uint32_t n, uint32_t proc_hwm)
{
    for (uint32_t k = 0; k < n; k++) {
        if (e[k].state == ENTRY_FREE) continue;
        int rc = check_entry(h, &e[k], first + k, proc_hwm);
        if (rc) return rc;
    }
    return SS_OK;
}

/* Memory for the private copy: its own mapping (allocated, not touched),
 * in huge pages where the kernel gives them, as a copy of a big table
 * otherwise costs a page fault per 4 KiB.  NULL if there is none. */
static char *copy_alloc(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
#ifdef MADV_HUGEPAGE
    if (bytes >= ((size_t)4 << 20)) (void)madvise(p, bytes, MADV_HUGEPAGE);   /* a hint */
#endif
    return p;
}

static void copy_free(char *copy, size_t bytes)
{
    if (copy) munmap(copy, bytes);
}

/* Touch every page of the n entries at src (the shared mapping, read
 * without the mutex only to fault them in), so the copy of them made under
 * the mutex next takes no page fault: a fault there can wait for the kernel
 * (a page being migrated, say) for milliseconds. */
static void prefault_entries(const struct ss_entry *src, uint32_t n)
{
    const volatile char *p = (const volatile char *)src;
    size_t len = (size_t)n * sizeof *src;
    for (size_t o = 0; o < len; o += 4096) (void)p[o];
    if (len) (void)p[len - 1];
}

/* Release the mutex between steps.  A process asleep on the mutex (its
 * futex waiters bit is set) is woken by the unlock but needs microseconds
 * to run, and the next step would take the mutex again first, step after
 * step, for the whole table; so give it up to SS_VALIDATE_YIELD_NS to take
 * the mutex before going on.  Spinners need no help: they see the unlock. */
static void step_unlock(struct ss_handle *h)
{
#ifdef __GLIBC__
    unsigned word = (unsigned)__atomic_load_n(&h->hdr->mutex.__data.__lock, __ATOMIC_RELAXED);
    table_unlock(h);
    if (!(word & FUTEX_WAITERS)) return;
    uint64_t until = now_ns(CLOCK_MONOTONIC) + SS_VALIDATE_YIELD_NS;
    while (mutex_looks_free(h) && now_ns(CLOCK_MONOTONIC) < until)
        for (int k = 0; k < 64; k++) cpu_relax();
#else
    table_unlock(h);
#endif
}

/* Validate the table at attach without holding the mutex for the whole of
 * it.  A pass copies header and used process slots in one hold (entries
 * too if they fit in one step: then the pass is that one hold, as for any
 * table of the default size), then the entries below entry_hwm a step at a
 * time, each step copied *without* the mutex and followed by a hold that
 * reads the header's change counter.  That counter is bumped by every hold
 * of the mutex (and by a repair or sweep that table_locked makes within our
 * own hold); every change to the table but the atomics of division 2 is made
 * under the mutex.  So if the counter moved only by one per hold of ours
 * over the whole pass, nobody held the mutex while we copied, the copy is
 * one state the table was in, and table_validate checks it in full without
 * the mutex (later changes are made by the core, which keeps the
 * invariants).  (A seqlock, with the table mutex as the writers' lock: the
 * copy may read bytes being written, but then the counter says so and the
 * copy is thrown away.)  A step's hold is then a few microseconds.
 *
 * If the counter moved, the pass stops at once and is retried, up to
 * SS_VALIDATE_PASSES in all.  A table that keeps changing (a busy one:
 * every lock call is a hold) gets a last pass that copies a step per hold
 * and checks, after each hold, what holds without a consistent state: the
 * header and its indexes (header_sane, at every hold), every process slot's
 * state, and every entry's own fields (each copied in one hold, so never
 * half written).  The
 * cross-entry checks (trees, free list, counters) are then skipped; so they
 * are above SS_VALIDATE_COPY_MAX, where no copy is made and the one pass is
 * that last one.  That leaves no hole that can crash: the core bounds-checks
 * every link and depth-bounds every walk it makes, so a structure broken in
 * a way only the cross-entry checks would see is SS_ECORRUPT at its first
 * use.  Entries added past the first hold's entry_hwm during a pass are the
 * core's own, made after the pass began, and are not checked.  The counter
 * itself is never trusted: a garbage value only makes a pass look changed.
 * Takes and releases the mutex itself. */
static int attach_validate(struct ss_handle *h)
{
    uint32_t step = validate_step_override ? validate_step_override : SS_VALIDATE_STEP;
    size_t copy_max = validate_copy_max_override ? (size_t)validate_copy_max_override
                                                 : SS_VALIDATE_COPY_MAX;
    memset(&tls_attach_stats, 0, sizeof tls_attach_stats);
    char *copy = NULL;                 /* header, slots, entries: reused by later passes */
    size_t copy_len = 0;
    struct ss_entry *spill = NULL;     /* one step of entries, for the in-place pass */
    int rc = SS_OK;
    for (uint32_t pass = 1;; pass++) {
        tls_attach_stats.passes = pass;
        if (pass >= SS_VALIDATE_PASSES && !spill &&
            (spill = malloc((size_t)step * sizeof *spill)) != NULL)
            memset(spill, 0, (size_t)step * sizeof *spill);   /* faulted in, not under the mutex */
        rc = table_lock(h);
        if (rc) break;
        SS_ASSERT_MUTEX_HELD(h);
        uint64_t t0 = now_ns(CLOCK_MONOTONIC);
        struct ss_header *hd = h->hdr;
        uint32_t hwm = hd->entry_hwm, phwm = hd->proc_hwm;   /* checked by header_sane */
        uint32_t seen = hd->changes;
        size_t hdr_bytes = sizeof *hd, proc_bytes = (size_t)phwm * sizeof(struct ss_proc);
        size_t bytes = hdr_bytes + proc_bytes + (size_t)hwm * sizeof(struct ss_entry);
        /* The last pass, or no copy: entries checked step by step, nothing whole. */
        int local = pass >= SS_VALIDATE_PASSES || bytes > copy_max;
        if (!local && bytes > copy_len && copy) {
            /* The table grew since the last pass: unmapping the old copy could
             * take milliseconds, so not under the mutex.  The pass counts as
             * one that saw the table change (so there are still at most
             * SS_VALIDATE_PASSES). */
            table_unlock(h);
            copy_free(copy, copy_len);
            copy = NULL;
            copy_len = 0;
            continue;
        }
        if (!local && bytes > copy_len) {   /* mapped, not touched, under the mutex */
            copy = copy_alloc(bytes);
            copy_len = copy ? bytes : 0;
            if (!copy) local = 1;
        }
        if (local && !spill && !(spill = malloc((size_t)step * sizeof *spill))) {
            table_unlock(h);
            rc = fail_sys("out of memory validating %s", h->table_path);
            break;
        }
        for (uint32_t p = 0; p < phwm && rc == SS_OK; p++)
            if (h->procs[p].state != PROC_USED && h->procs[p].state != PROC_FREE)
                rc = fail(SS_ECORRUPT, "lock table %s: process slot %u malformed",
                          h->table_path, p);
        if (rc) { table_unlock(h); break; }
        struct ss_entry *all = NULL;
        if (!local) {
            memcpy(copy, hd, hdr_bytes);
            memcpy(copy + hdr_bytes, h->procs, proc_bytes);
            all = (struct ss_entry *)(copy + hdr_bytes + proc_bytes);
        }
        int moved = 0, held = 1;
        uint32_t phwm_now = phwm;
        for (uint32_t a = 0;;) {
            uint32_t n = hwm - a < step ? hwm - a : step;
            if (held) {
                if (hwm > step) n = 0;   /* more than a step: entries in holds of their own */
                else memcpy(local ? spill : all, h->entries, (size_t)n * sizeof *all);
            } else {
                if (!local) {
                    /* Without the mutex: valid only if nobody takes it before
                     * the hold below (a < hwm <= capacity, which only grows,
                     * so the range is mapped and allocated). */
                    memcpy(all + a, h->entries + a, (size_t)n * sizeof *all);
                    __atomic_thread_fence(__ATOMIC_SEQ_CST);   /* copy, then the hold */
                } else {
                    prefault_entries(h->entries + a, n);
                }
                rc = table_lock(h);
                if (rc) break;
                t0 = now_ns(CLOCK_MONOTONIC);
                if (hd->changes != seen + 1 || hd->entry_hwm != hwm) moved = 1;
                seen = hd->changes;
                phwm_now = hd->proc_hwm;
                if (local) memcpy(spill, h->entries + a, (size_t)n * sizeof *spill);
            }
            uint64_t took = now_ns(CLOCK_MONOTONIC) - t0;
            if (took > tls_attach_stats.longest_ns) tls_attach_stats.longest_ns = took;
            tls_attach_stats.holds++;
            step_unlock(h);
            held = 0;
            if (moved && !local) break;             /* retry the pass */
            /* Checked after the unlock: the check is also the gap in which
             * others take the mutex between our holds. */
            if (local) rc = check_entries(h, spill, a, n, phwm_now);
            if (rc) break;
            a += n;
            if ((a >= hwm && n > 0) || hwm == 0) break;
        }
        SS_ASSERT_MUTEX_NOT_HELD(h);
        if (rc) break;
        if (!local && !moved) {        /* one consistent state: check it whole */
            struct ss_handle *view = malloc(sizeof *view);
            if (!view) { rc = fail_sys("out of memory validating %s", h->table_path); break; }
            *view = *h;
            view->hdr = (struct ss_header *)copy;
            view->procs = (struct ss_proc *)(copy + hdr_bytes);
            view->entries = all;
            rc = table_validate(view);
            free(view);
            tls_attach_stats.whole = 1;
            break;
        }
        if (local) break;              /* checked entry by entry above */
    }
    copy_free(copy, copy_len);
    free(spill);
    return rc;
}

/* Rebuild indexes, free list and counters from the entries (after EOWNERDEAD). */
static int table_repair(struct ss_handle *h)
{
    SS_ASSERT_MUTEX_HELD(h);
    struct ss_header *hd = h->hdr;
    hd->repairs++;
    /* A repair changes the table within the hold of whoever repairs (the
     * dead holder may have died before its own bump), so it counts as a
     * change of its own.  The counter needs no rebuilding: it matters only as
     * "moved or not" to an attach in progress, which a garbage value sends
     * to one more pass. */
    hd->changes++;
    /* The dead holder may have been growing the table: adopt what it
     * published (only what the file's size bears out). */
    int grown = adopt_capacity(h);
    if (grown) return grown;
    if (hd->entry_hwm > h->capacity || hd->proc_hwm > h->proc_capacity)
        return fail(SS_ECORRUPT, "lock table %s: header counters out of range",
                    h->table_path);
    for (int t = 0; t < TREE_COUNT; t++) *tree_root(h, t) = SS_NIL;
    hd->free_head = SS_NIL;
    hd->used = hd->waiting = hd->procs_used = hd->urgent = 0;
    hd->urgent_due_ns = 0;   /* unknown: the next request that meets a waiter recomputes it */
    /* Owners abandon entries without the mutex (flag, then count), so one
     * may do so while this walk runs: the counter is cleared before the walk
     * and this walk's count added after it, never stored over it (that would
     * lose the count of an entry flagged after the walk passed it, and the
     * entry would never be removed).  A flag set before the walk reaches its
     * entry is counted twice: one sweep more, nothing lost. */
    __atomic_store_n(&hd->abandoned, 0, __ATOMIC_SEQ_CST);
    uint32_t abandoned = 0;
    for (uint32_t p = 0; p < hd->proc_hwm; p++) {
        if (h->procs[p].state == PROC_USED) hd->procs_used++;
        h->procs[p].held = 0;
        h->procs[p].stash = 0;   /* every free entry goes on the free list below */
    }
    for (uint32_t k = hd->entry_hwm; k-- > 0;) {
        struct ss_entry *e = &h->entries[k];
        if (k == hd->entry_hwm / 2) maybe_crash(5);
        if (e->state == ENTRY_FREE) {
            e->next_free = hd->free_head;
            hd->free_head = k;
            continue;
        }
        int rc = validate_entry(h, k);
        if (rc) return rc;
        hd->used++;
        if (e->kind != SS_ORPHAN)   /* marks count for no slot */
            h->procs[e->owner_slot].held++;   /* owner_slot < proc_hwm: validate_entry */
        /* Woken marks are dropped (every waiter is woken below); urgency
         * only means something on a waiting entry. */
        uint8_t keep = e->state == SS_WAITING ? (W_URGENT | W_ABANDONED | W_UPGRADE)
                       : (W_ABANDONED | W_OWNER_DIED);
        uint8_t flags = __atomic_and_fetch(&e->wflags, keep, __ATOMIC_ACQ_REL);
        if (flags & W_ABANDONED) abandoned++;
        if (e->state == SS_WAITING) {
            hd->waiting++;
            if (flags & W_URGENT) hd->urgent++;
            __atomic_add_fetch(&e->wake, 1, __ATOMIC_RELEASE);
            wake_later(&e->wake);
        }
        rc = index_insert(h, k);
        if (rc) return rc;
    }
    /* Abandoned entries are removed by table_locked right after the repair. */
    if (abandoned) __atomic_add_fetch(&hd->abandoned, abandoned, __ATOMIC_SEQ_CST);
    return SS_OK;
}

/* Claim free process slot s for this handle: take its liveness lock and
 * fill it in.  1 claimed, 0 its lock is held (a live owner), < 0 error.
 * Under the mutex. */
static int claim_slot(struct ss_handle *h, uint32_t s)
{
    SS_ASSERT_MUTEX_HELD(h);
    SS_ASSERT(s < h->hdr->proc_hwm && h->procs[s].state != PROC_USED && !h->has_slot);
    if (h->procs[s].held) {
        /* Entries of the slot's dead previous owner: removed first, so a
         * used slot's held count is its owner's. */
        int rc = remove_slot_entries(h, s);
        if (rc) return rc;
    }
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET,
                       .l_start = SS_SLOT_LOCK_BASE + s, .l_len = 1};
    if (fcntl(h->table_fd, F_OFD_SETLK, &fl) != 0) {
        if (errno == EAGAIN || errno == EACCES) return 0;
        return fail_sys("lock table %s: cannot take liveness lock", h->table_path);
    }
    struct ss_proc *p = &h->procs[s];
    p->gen++;
    p->pid = (int32_t)getpid();
    p->pidns = my_pidns();
    p->token = my_token();
    p->attached_ns = now_ns(CLOCK_REALTIME);
    p->state = PROC_USED;
    h->hdr->procs_used++;
    h->slot = s;
    h->gen = p->gen;
    h->has_slot = 1;
    return 1;
}

/* Take a process slot: a free one if any (pass 0), else one whose owner
 * is found dead (pass 1), else one the slot table grows by (pass 2, to the
 * ceiling).  Under the mutex. */
static int take_slot(struct ss_handle *h)
{
    SS_ASSERT_MUTEX_HELD(h);
    struct ss_header *hd = h->hdr;
    scan_begin(h);
    for (int pass = 0; pass < 3; pass++) {
        if (pass == 2) {
            int rc = grow_procs(h);
            if (rc) return rc;
        }
        for (uint32_t s = 0; s < h->proc_capacity; s++) {
            if (s >= hd->proc_hwm) {
                memset(&h->procs[s], 0, sizeof h->procs[s]);
                hd->proc_hwm = s + 1;
            }
            struct ss_proc *p = &h->procs[s];
            if (p->state == PROC_USED) {
                if (pass == 0) continue;
                int alive = scan_alive(h, s, p->gen);   /* frees it if dead */
                if (alive < 0) return alive;
                if (alive) continue;
            }
            int claimed = claim_slot(h, s);
            if (claimed < 0) return claimed;
            if (claimed) return SS_OK;
        }
    }
    return fail(SS_EFULL, "lock table %s: all %u process slots are in use",
                h->table_path, h->proc_capacity);
}

/* Remove every entry of free slot s (its owner is gone).  Under the mutex. */
static int remove_slot_entries(struct ss_handle *h, uint32_t s)
{
    SS_ASSERT_MUTEX_HELD(h);
    SS_ASSERT(h->procs[s].state != PROC_USED);
    for (uint32_t i = 0; h->procs[s].held && i < h->hdr->entry_hwm; i++) {
        if (h->entries[i].state == ENTRY_FREE || h->entries[i].owner_slot != s ||
            h->entries[i].kind == SS_ORPHAN)
            continue;
        int rc = reclaim_dead(h, i);   /* its owner died: an exclusive lock leaves a mark */
        if (rc) return rc;
    }
    h->procs[s].held = 0;   /* a count the entries did not bear out is dropped */
    return SS_OK;
}

/* Check the header of a mapped table before anything else is read, and set
 * the handle's view (capacities, slot and entry arrays) from it. */
static int check_header(struct ss_handle *h, uint64_t file_bytes, const struct stat *data,
                        uint64_t birth)
{
    struct ss_header *hd = h->hdr;
    if (hd->magic != SS_MAGIC)
        return fail(SS_ECORRUPT, "%s is not a shmslice lock table (bad magic)", h->table_path);
    if (hd->format != ss_format_stamp())
        return fail(SS_ECORRUPT, "lock table %s has format %#llx, this build expects %#llx",
                    h->table_path, (unsigned long long)hd->format,
                    (unsigned long long)ss_format_stamp());
    (void)file_bytes;
    uint32_t max_cap = hd->max_capacity, max_procs = hd->max_procs;
    if (max_cap == 0 || max_cap > SS_MAX_CAPACITY || max_procs == 0 ||
        max_procs > SS_MAX_PROCS || hd->table_bytes != ss_table_bytes(max_cap, max_procs) ||
        hd->table_bytes != h->map_bytes || hd->reserve >= max_cap)
        return fail(SS_ECORRUPT, "lock table %s: ceiling fields do not match its layout",
                    h->table_path);
    if (data && (hd->data_dev != (uint64_t)data->st_dev || hd->data_ino != (uint64_t)data->st_ino ||
                 hd->data_birth != birth))
        return fail(SS_ECORRUPT, "lock table %s belongs to another file", h->table_path);
    if (memchr(hd->data_path, 0, sizeof hd->data_path) == NULL)
        return fail(SS_ECORRUPT, "lock table %s: recorded path not terminated", h->table_path);
    h->max_capacity = max_cap;
    h->max_procs = max_procs;
    if (__atomic_load_n(&hd->capacity, __ATOMIC_ACQUIRE) == 0 ||
        __atomic_load_n(&hd->proc_capacity, __ATOMIC_ACQUIRE) == 0)
        return fail(SS_ECORRUPT, "lock table %s: capacity of zero entries or slots",
                    h->table_path);
    h->capacity = h->proc_capacity = 0;
    int rc = adopt_capacity(h);   /* the current capacities, checked against the size */
    if (rc) return rc;
    if (!h->scan && !(h->scan = verdicts_new(max_procs)))
        return fail_sys("out of memory attaching %s", h->table_path);
    h->procs = (struct ss_proc *)((char *)hd + SS_HEADER_BYTES);
    h->entries = (struct ss_entry *)((char *)hd + ss_entries_offset(max_procs));
    return SS_OK;
}

/* Table file mode: read or write on the data file for a class gives that
 * class read-write on the table (taking a shared lock or a pin writes it). */
static mode_t table_mode(mode_t data_mode)
{
    mode_t m = 0;
    if (data_mode & (S_IRUSR | S_IWUSR)) m |= S_IRUSR | S_IWUSR;
    if (data_mode & (S_IRGRP | S_IWGRP)) m |= S_IRGRP | S_IWGRP;
    if (data_mode & (S_IROTH | S_IWOTH)) m |= S_IROTH | S_IWOTH;
    return m ? m : (S_IRUSR | S_IWUSR);
}

/* Temporary table files.  A table is built in an unnamed file (O_TMPFILE)
 * and linked into place, so a creator killed half way leaves nothing.  Where
 * the filesystem has no O_TMPFILE it is built under the name
 * ".<table name>.<pid>.<ns>.tmp", and the creator holds an OFD lock on byte
 * SS_TEMP_LOCK_BYTE of it until it is gone; clean_temp_files removes such a
 * file once nobody holds that lock and it is SS_TEMP_GRACE_S old (the grace
 * covers the instant between creating the file and locking it; a creator
 * stopped longer than that finds its file gone and starts again). */
#define SS_TEMP_LOCK_BYTE (SS_SLOT_LOCK_BASE - 1)
#define SS_TEMP_GRACE_S 2
static int force_named_temp;   /* test hook: take the fallback path */

void ss_debug_set_named_temp(int on) { force_named_temp = on; }

/* Is `file` a temporary table file name (see above)? */
static int is_temp_name(const char *file)
{
    size_t n = strlen(file);
    if (n < 6 || file[0] != '.' || strcmp(file + n - 4, ".tmp") != 0) return 0;
    char name[128];
    if (n - 5 >= sizeof name) return 0;
    memcpy(name, file + 1, n - 5);     /* "<table name>.<pid>.<ns>" */
    name[n - 5] = 0;
    for (int k = 0; k < 2; k++) {      /* strip ".<ns>" then ".<pid>" */
        char *dot = strrchr(name, '.');
        if (!dot || dot[1] == 0 || strspn(dot + 1, k ? "0123456789" : "0123456789abcdef")
                                   != strlen(dot + 1))
            return 0;
        *dot = 0;
    }
    return ss_table_name_parse(name, NULL, NULL, NULL) == SS_OK;
}

/* Remove temporary table files in dir_fd whose creator is gone; *removed
 * (if not NULL) counts them.  Failures to remove one file are skipped: it
 * is someone else's (another user's, or still being built). */
static int clean_temp_files(int dir_fd, uint32_t *removed)
{
    int fd = dup(dir_fd);
    if (fd < 0) return fail_sys("cannot read the lock directory");
    DIR *d = fdopendir(fd);
    if (!d) { close(fd); return fail_sys("cannot read the lock directory"); }
    rewinddir(d);   /* the duplicate shares its position with dir_fd */
    time_t now = time(NULL);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!is_temp_name(de->d_name)) continue;
        struct stat st;
        if (fstatat(dir_fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
            !S_ISREG(st.st_mode) || now - st.st_mtime < SS_TEMP_GRACE_S)
            continue;
        int tfd = openat(dir_fd, de->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (tfd < 0) continue;
        struct stat tst;
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET,
                           .l_start = SS_TEMP_LOCK_BYTE, .l_len = 1};
        int gone = fstat(tfd, &tst) == 0 && tst.st_ino == st.st_ino && tst.st_dev == st.st_dev &&
                   fcntl(tfd, F_OFD_GETLK, &fl) == 0 && fl.l_type == F_UNLCK;
        close(tfd);
        if (gone && unlinkat(dir_fd, de->d_name, 0) == 0 && removed) (*removed)++;
    }
    closedir(d);
    return SS_OK;
}

/* A new, empty table file in dir_fd, open read-write: unnamed if the
 * filesystem can (*tmp = ""), else under a temporary name in tmp (locked
 * as described above).  Returns the descriptor or a status < 0. */
static int new_table_file(int dir_fd, const char *name, const char *dir, char *tmp,
                          size_t tmp_len)
{
    tmp[0] = 0;
    int fd = force_named_temp ? -1 : openat(dir_fd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0 || (!force_named_temp && errno != EOPNOTSUPP && errno != EISDIR &&
                    errno != EINVAL && errno != ENOENT))
        return fd >= 0 ? fd : fail_sys("cannot create lock table in %s", dir);
    snprintf(tmp, tmp_len, ".%s.%d.%llx.tmp", name, (int)getpid(),
             (unsigned long long)now_ns(CLOCK_MONOTONIC));
    fd = openat(dir_fd, tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) return fail_sys("cannot create lock table in %s", dir);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET,
                       .l_start = SS_TEMP_LOCK_BYTE, .l_len = 1};
    if (fcntl(fd, F_OFD_SETLK, &fl) != 0) {
        int rc = fail_sys("cannot lock the new lock table in %s", dir);
        unlinkat(dir_fd, tmp, 0);
        close(fd);
        return rc;
    }
    return fd;
}

/* Fill in the header of a new table in fd whose ceiling is max_capacity. */
static int init_header(int fd, const char *dir, const struct stat *data, uint64_t birth,
                       const char *data_path, uint32_t max_capacity, uint32_t source)
{
    void *map = mmap(NULL, SS_HEADER_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) return fail_sys("cannot map new lock table in %s", dir);
    struct ss_header *hd = map;
    hd->magic = SS_MAGIC;
    hd->format = ss_format_stamp();
    hd->max_capacity = max_capacity;
    hd->max_procs = SS_MAX_PROCS;
    hd->table_bytes = ss_table_bytes(max_capacity, SS_MAX_PROCS);
    hd->ceiling_source = source;
    hd->reserve = max_capacity >> SS_RESERVE_SHIFT;
    if (hd->reserve == 0 && max_capacity > 1) hd->reserve = 1;
    hd->capacity = max_capacity < SS_INITIAL_CAPACITY ? max_capacity : SS_INITIAL_CAPACITY;
    hd->proc_capacity = SS_INITIAL_PROCS;
    hd->data_dev = (uint64_t)data->st_dev;
    hd->data_ino = (uint64_t)data->st_ino;
    hd->data_birth = birth;
    hd->created_ns = now_ns(CLOCK_REALTIME);
    snprintf(hd->data_path, sizeof hd->data_path, "%s", data_path ? data_path : "");
    table_mutex_init(&hd->mutex);
    for (int t = 0; t < TREE_WAIT; t++) hd->root[t] = SS_NIL;
    hd->wait_root = SS_NIL;
    hd->orphan_root = SS_NIL;
    hd->free_head = SS_NIL;
    hd->file_size = (uint64_t)data->st_size;
    munmap(map, SS_HEADER_BYTES);
    return SS_OK;
}

/* The ceiling of a new table given none: SS_DEFAULT_MAX_ENTRIES, or as many
 * entries as the lock directory's filesystem has room for now if that is
 * fewer (*source says which). */
static uint32_t default_ceiling(int dir_fd, uint32_t *source)
{
    *source = CEILING_DEFAULT;
    struct statvfs vfs;
    if (fstatvfs(dir_fd, &vfs) != 0 || vfs.f_frsize == 0) return SS_DEFAULT_MAX_ENTRIES;
    uint64_t room = (uint64_t)vfs.f_bavail * vfs.f_frsize;
    /* The slot area is a hole but for the slots in use: count the first ones. */
    uint64_t fixed = SS_HEADER_BYTES + (uint64_t)SS_INITIAL_PROCS * sizeof(struct ss_proc);
    uint64_t fits = room > fixed ? (room - fixed) / sizeof(struct ss_entry) : 0;
    if (fits >= SS_DEFAULT_MAX_ENTRIES) return SS_DEFAULT_MAX_ENTRIES;
    *source = CEILING_FILESYSTEM;
    return fits > SS_INITIAL_CAPACITY ? (uint32_t)fits : SS_INITIAL_CAPACITY;
}

/* Create and initialise a table, then link it into place under `name`;
 * whoever links first wins, so two creators never both initialise the
 * visible table.  Returns SS_OK (created), 1 (someone else won: open
 * theirs) or < 0. */
static int create_table(int dir_fd, const char *name, const char *dir,
                        const struct stat *data, uint64_t birth, const char *data_path,
                        uint32_t max_capacity)
{
    uint32_t source = max_capacity ? CEILING_GIVEN : CEILING_DEFAULT;
    if (!max_capacity) max_capacity = default_ceiling(dir_fd, &source);
    char tmp[256];
    int fd = new_table_file(dir_fd, name, dir, tmp, sizeof tmp);
    if (fd < 0) return fd;
    uint32_t cap = max_capacity < SS_INITIAL_CAPACITY ? max_capacity : SS_INITIAL_CAPACITY;
    uint64_t head = SS_HEADER_BYTES + (uint64_t)SS_INITIAL_PROCS * sizeof(struct ss_proc);
    int rc = SS_OK;
    if (fchmod(fd, table_mode(data->st_mode)) != 0) {
        rc = fail_sys("cannot set mode of lock table in %s", dir);
        goto out;
    }
    /* Only the first extents are allocated: header and first slots, then the
     * first entries (past the hole left for the slot ceiling). */
    int err = allocate_range(fd, 0, head);
    if (!err) err = allocate_range(fd, ss_entries_offset(SS_MAX_PROCS),
                                   (uint64_t)cap * sizeof(struct ss_entry));
    if (err != 0) {
        errno = err;
        rc = fail_sys("cannot allocate a new lock table in %s", dir);
        goto out;
    }
    rc = init_header(fd, dir, data, birth, data_path, max_capacity, source);
    if (rc) goto out;
    maybe_crash(9);
    if (tmp[0]) {
        rc = linkat(dir_fd, tmp, dir_fd, name, 0);
    } else {
        char self_fd[64];
        snprintf(self_fd, sizeof self_fd, "/proc/self/fd/%d", fd);
        rc = linkat(AT_FDCWD, self_fd, dir_fd, name, AT_SYMLINK_FOLLOW);
    }
    if (rc != 0)   /* EEXIST: another creator won; ENOENT: our temp name was cleaned */
        rc = errno == EEXIST || (tmp[0] && errno == ENOENT) ? 1
             : fail_sys("cannot link lock table into %s", dir);
out:
    if (tmp[0]) unlinkat(dir_fd, tmp, 0);
    close(fd);
    return rc;
}

static void registry_add(struct ss_handle *h)
{
    pthread_mutex_lock(&registry_lock);
    h->next = registry_head;
    registry_head = h;
    pthread_mutex_unlock(&registry_lock);
}

static void registry_remove(struct ss_handle *h)
{
    pthread_mutex_lock(&registry_lock);
    for (struct ss_handle **p = &registry_head; *p; p = &(*p)->next)
        if (*p == h) { *p = h->next; break; }
    pthread_mutex_unlock(&registry_lock);
}

/* A new handle with no table yet (every descriptor -1), or NULL. */
static struct ss_handle *handle_new(void)
{
    struct ss_handle *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    h->table_fd = -1;
    h->probe_fd = -1;
    return h;
}

static void handle_free(struct ss_handle *h)
{
    if (h->hdr) munmap(h->hdr, h->map_bytes);
    if (h->table_fd >= 0) close(h->table_fd);
    if (h->probe_fd >= 0) close(h->probe_fd);
    free(h->scan);
    free(h);
}

/* Is user uid a member of group gid (primary or supplementary, as the user
 * database says)?  0 if the user is unknown there. */
static int user_in_group(uid_t uid, gid_t gid)
{
    struct passwd pw, *found = NULL;
    char buf[4096];
    if (getpwuid_r(uid, &pw, buf, sizeof buf, &found) != 0 || !found) return 0;
    if (pw.pw_gid == gid) return 1;
    int n = 64;
    for (int attempt = 0; attempt < 4; attempt++) {
        gid_t *groups = malloc((size_t)n * sizeof *groups);
        if (!groups) return 0;
        int want = n;
        int rc = getgrouplist(pw.pw_name, pw.pw_gid, groups, &want);
        int member = 0;
        for (int k = 0; rc >= 0 && k < want; k++)
            if (groups[k] == gid) member = 1;
        free(groups);
        if (rc >= 0) return member;
        n = want > n ? want : n * 4;   /* too small: want says how many */
    }
    return 0;
}

/* May user uid read a file of status data?  By its mode bits, as the kernel
 * decides (the owner's class, else the group's, else others'; ACLs aside). */
static int user_may_read(uid_t uid, const struct stat *data)
{
    if (uid == 0) return 1;
    if (uid == data->st_uid) return (data->st_mode & S_IRUSR) != 0;
    if (user_in_group(uid, data->st_gid)) return (data->st_mode & S_IRGRP) != 0;
    return (data->st_mode & S_IROTH) != 0;
}

static mode_t table_mode(mode_t data_mode);

/* The trust rule for a table file owned by another user (st: the table,
 * data: its data file, dir: the lock directory's status or NULL).  A table of
 * yours, root's or the data file's owner is trusted.  One of any other user U
 * is trusted when U may read the data file (U could attach and write the
 * table anyway: whoever may read a data file may write its table), the
 * table's mode grants no class more than the data file's own classes get
 * (table_mode), and the lock directory is not writable by others unless it
 * is sticky (else anyone could have replaced it).  SS_OK or SS_EUNSAFE. */
static int check_table_owner(struct ss_handle *h, const struct stat *st,
                             const struct stat *data, const struct stat *dir)
{
    uid_t me = geteuid(), owner = st->st_uid;
    if (owner == me || owner == 0 || (data && owner == data->st_uid)) return SS_OK;
    if (!data)
        return fail(SS_EUNSAFE, "lock table %s is owned by uid %d, neither you nor root; "
                    "refusing it (remove it)", h->table_path, (int)owner);
    if (!user_may_read(owner, data))
        return fail(SS_EUNSAFE, "lock table %s is owned by uid %d, who may not read the data "
                    "file; refusing it (remove it)", h->table_path, (int)owner);
    mode_t extra = (st->st_mode & 07777) & ~table_mode(data->st_mode);
    if (extra)
        return fail(SS_EUNSAFE, "lock table %s (owned by uid %d) has mode %04o, which grants "
                    "more than the data file's readers get (%04o); refusing it (remove it)",
                    h->table_path, (int)owner, (unsigned)(st->st_mode & 07777),
                    (unsigned)table_mode(data->st_mode));
    if (dir && (dir->st_mode & (S_IWGRP | S_IWOTH)) && !(dir->st_mode & S_ISVTX))
        return fail(SS_EUNSAFE, "lock table %s is owned by uid %d in a lock directory others "
                    "may write that is not sticky; refusing it", h->table_path, (int)owner);
    return SS_OK;
}

/* Open the table file `name` in dir_fd, refusing symlinks, non-regular
 * files and files of other users that check_table_owner does not trust;
 * *st receives its status.  Returns the descriptor or a status < 0. */
static int open_table_file(struct ss_handle *h, int dir_fd, const char *name,
                           const struct stat *data, struct stat *st)
{
    int fd = openat(dir_fd, name, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ELOOP)
            return fail(SS_EUNSAFE, "%s is a symbolic link; refusing to use it as a "
                        "lock table (remove it)", h->table_path);
        if (errno == ENOENT) return fail(SS_ENOENT, "no lock table at %s", h->table_path);
        return fail_sys("cannot open lock table %s", h->table_path);
    }
    int rc = SS_OK;
    struct stat dir;
    int have_dir = dir_fd != AT_FDCWD && fstat(dir_fd, &dir) == 0;
    if (fstat(fd, st) != 0)
        rc = fail_sys("cannot stat %s", h->table_path);
    else if (!S_ISREG(st->st_mode))
        rc = fail(SS_EUNSAFE, "%s is not a regular file; refusing it as a lock table",
                  h->table_path);
    else if ((rc = check_table_owner(h, st, data, have_dir ? &dir : NULL)) != SS_OK)
        ;
    else if ((uint64_t)st->st_size < SS_HEADER_BYTES)
        rc = fail(SS_ECORRUPT, "lock table %s is truncated (%lld bytes)",
                  h->table_path, (long long)st->st_size);
    if (rc) { close(fd); return rc; }
    return fd;
}

/* Map the open table file fd (its size in st) and set up the handle's two
 * descriptors: the liveness lock must sit on an open file description that
 * no mapping references (a MAP_SHARED mapping pins its description, so a
 * forked child, which inherits the mapping, would keep a lock taken through
 * the mapped description alive after we die), so the liveness descriptor
 * is a fresh open of the same inode; the mapped description never takes a
 * lock and stays open as the probe descriptor, which a forked child may
 * keep and still probe others' liveness through.  Takes ownership of fd. */
static int map_table(struct ss_handle *h, int fd, const struct stat *st)
{
    h->probe_fd = fd;
    h->table_dev = st->st_dev;
    h->table_ino = st->st_ino;
    /* The mapping spans the ceiling layout, so it never moves while the
     * table grows; its length is in the header, read through a first,
     * header-sized mapping. */
    struct ss_header *first = mmap(NULL, SS_HEADER_BYTES, PROT_READ, MAP_SHARED, fd, 0);
    if (first == MAP_FAILED) return fail_sys("cannot map lock table %s", h->table_path);
    uint64_t bytes = first->magic == SS_MAGIC ? first->table_bytes : (uint64_t)st->st_size;
    munmap(first, SS_HEADER_BYTES);
    if (bytes < SS_HEADER_BYTES ||
        bytes > ss_table_bytes(SS_MAX_CAPACITY, SS_MAX_PROCS) || bytes < (uint64_t)st->st_size)
        return fail(SS_ECORRUPT, "lock table %s: its recorded length (%llu bytes) does not "
                    "fit its size (%lld bytes)", h->table_path, (unsigned long long)bytes,
                    (long long)st->st_size);
    void *map = mmap(NULL, (size_t)bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE,
                     fd, 0);
    if (map == MAP_FAILED)
        return fail_sys("cannot map lock table %s (%llu bytes of address space for its "
                        "ceiling)", h->table_path, (unsigned long long)bytes);
    h->hdr = map;
    h->map_bytes = (size_t)bytes;
    char self_fd[64];
    snprintf(self_fd, sizeof self_fd, "/proc/self/fd/%d", fd);
    /* Opened and recorded under the registry lock, which fork waits for: a
     * child forked meanwhile must find it in h->table_fd to close it. */
    pthread_mutex_lock(&registry_lock);
    h->table_fd = open(self_fd, O_RDWR | O_CLOEXEC);
    pthread_mutex_unlock(&registry_lock);
    if (h->table_fd < 0) return fail_sys("cannot reopen lock table %s", h->table_path);
    return SS_OK;
}

/* Open, map and check an existing table file.  data may be NULL
 * (inspection: any data file identity is accepted). */
static int open_table(struct ss_handle *h, int dir_fd, const char *name,
                      const struct stat *data, uint64_t birth)
{
    struct stat st;
    int fd = open_table_file(h, dir_fd, name, data, &st);
    if (fd < 0) return fd;
    int rc = map_table(h, fd, &st);
    return rc ? rc : check_header(h, (uint64_t)st.st_size, data, birth);
}

/* Removing a table.  A table no process is attached to holds nothing anybody
 * needs (entries left in it are dead processes'), so it may be removed; but a
 * process may be opening it at that very moment, and must never end up
 * locking in an unlinked table while everybody else uses a new one (the lock
 * file race).  The guard: every attached handle holds a shared OFD lock on
 * byte SS_GUARD_BYTE of the table, taken right after it opened the file.  A
 * remover takes that byte exclusively through a description of its own with
 * F_OFD_SETLK -- it succeeds only if no other description holds it, that is
 * if nobody is attached -- checks that the path still names that file,
 * unlinks it, and only then lets go.  An attacher, once it holds the guard
 * shared, checks that the path still names the file it opened, and starts
 * again (creating the table anew) if not: a removal either finished before
 * it took the guard (then it sees the path changed) or cannot start until it
 * detaches.  Only guard holders unlink tables, so between a remover's check
 * and its unlink the path cannot change.
 *
 * The shared lock sits on the mapped description (probe_fd), not on the
 * liveness descriptor: a forked child shares that description (its copy of
 * the mapping and of probe_fd reference it), so the table stays while a
 * child may still use it, even after the parent closed -- removal is only
 * delayed until the child lets go.  For the same reason a closing handle
 * never unlocks its guard (that would drop the child's too): it drops its
 * references and tries the exclusive lock through a fresh description,
 * which a child's inherited shared lock blocks. */
#define GUARD_RETRY 1
static int unguarded;   /* test hook: no guard at all, to show what it prevents */

void ss_debug_set_unguarded(int on) { unguarded = on; }

/* Take the guard shared through the handle's mapped description and check
 * that `name` in dir_fd still names the file we opened.  SS_OK: attached
 * for good (the table cannot be removed until we detach); GUARD_RETRY: the
 * table is being or was removed, open it again; < 0 error. */
static int take_guard(struct ss_handle *h, int dir_fd, const char *name)
{
    if (unguarded) return SS_OK;
    struct flock fl = {.l_type = F_RDLCK, .l_whence = SEEK_SET,
                       .l_start = SS_GUARD_BYTE, .l_len = 1};
    if (fcntl(h->probe_fd, F_OFD_SETLK, &fl) != 0) {
        if (errno == EAGAIN || errno == EACCES) return GUARD_RETRY;   /* a remover holds it */
        return fail_sys("lock table %s: cannot take the attach guard", h->table_path);
    }
    struct stat st;
    if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) return GUARD_RETRY;
        return fail_sys("cannot stat lock table %s", h->table_path);
    }
    return st.st_dev == h->table_dev && st.st_ino == h->table_ino ? SS_OK : GUARD_RETRY;
}

/* Undo open_table for a table that turned out to be going away: unmap it
 * and close both descriptors (dropping our guard), leaving the handle as
 * handle_new made it. */
static void release_table_files(struct ss_handle *h)
{
    if (h->hdr) munmap(h->hdr, h->map_bytes);
    h->hdr = NULL;
    h->procs = NULL;
    h->entries = NULL;
    h->map_bytes = 0;
    pthread_mutex_lock(&registry_lock);
    if (h->table_fd >= 0) close(h->table_fd);
    h->table_fd = -1;
    if (h->probe_fd >= 0) close(h->probe_fd);
    h->probe_fd = -1;
    pthread_mutex_unlock(&registry_lock);
    free(h->scan);   /* sized for that table's slot capacity */
    h->scan = NULL;
}

/* Take the guard exclusively through fd, a description of a table file
 * that holds no lock of its own: 1 taken (nobody is attached), 0 someone
 * is, < 0 error.  With dry_run only ask (F_OFD_GETLK): 1 would be taken. */
static int guard_exclusive(int fd, const char *path, int dry_run)
{
    if (unguarded) return 1;
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET,
                       .l_start = SS_GUARD_BYTE, .l_len = 1};
    if (fcntl(fd, dry_run ? F_OFD_GETLK : F_OFD_SETLK, &fl) != 0) {
        if (!dry_run && (errno == EAGAIN || errno == EACCES)) return 0;
        return fail_sys("lock table %s: cannot test the attach guard", path);
    }
    return dry_run ? fl.l_type == F_UNLCK : 1;
}

static void guard_release(int fd)
{
    struct flock fl = {.l_type = F_UNLCK, .l_whence = SEEK_SET,
                       .l_start = SS_GUARD_BYTE, .l_len = 1};
    (void)fcntl(fd, F_OFD_SETLK, &fl);   /* unlocking a byte we hold cannot fail */
}

/* Holding the guard exclusively through fd (or, dry_run, having found it
 * free): unlink the table at path if path still names file (dev, ino).
 * *freed (if not NULL) receives the bytes the file occupies (st_blocks).
 * SS_OK, SS_ENOENT (path names another file or none: removed meanwhile),
 * or < 0. */
static int unlink_table(int fd, const char *path, dev_t dev, ino_t ino, int dry_run,
                        uint64_t *freed)
{
    struct stat own, cur;
    if (fstat(fd, &own) != 0) return fail_sys("cannot stat lock table %s", path);
    if (lstat(path, &cur) != 0 || cur.st_dev != dev || cur.st_ino != ino)
        return fail(SS_ENOENT, "lock table %s was removed meanwhile", path);
    if (!dry_run && unlink(path) != 0) return fail_sys("cannot remove lock table %s", path);
    if (freed) *freed = (uint64_t)own.st_blocks * 512u;
    return SS_OK;
}

/* Does the data file this table serves still exist?  0 if its recorded path
 * names it, 1 if that path names no file or another one (deleted, renamed or
 * replaced), 0 too when it cannot be told (no path recorded, a path cut to
 * the header's size, a permission error).  Only a hint: removal is safe
 * whatever it says, since the guard proves nobody is attached. */
static int data_file_gone(const struct ss_header *hd)
{
    char path[SS_DATA_PATH_MAX];
    memcpy(path, hd->data_path, sizeof path);
    path[sizeof path - 1] = 0;
    if (path[0] != '/' || strlen(path) >= sizeof path - 1) return 0;
    struct stat st;
    if (stat(path, &st) != 0) return errno == ENOENT || errno == ENOTDIR;
    return (uint64_t)st.st_dev != hd->data_dev || (uint64_t)st.st_ino != hd->data_ino;
}

/* After ss_close dropped this handle's references: remove the table if
 * nobody is attached any more.  spare is a fresh description of the table
 * file, opened while ours were still open (so surely the same file).  Best
 * effort: a table left behind (someone attached meanwhile, or an error) is
 * what 'shmslice prune' is for. */
static void remove_on_close(struct ss_handle *h, int spare)
{
    int taken = guard_exclusive(spare, h->table_path, 0);
    if (taken == 1) {
        unlink_table(spare, h->table_path, h->table_dev, h->table_ino, 0, NULL);
        guard_release(spare);
    }
}

int ss_table_name(uint64_t dev, uint64_t ino, uint64_t birth, char *buf, uint32_t buflen)
{
    if (!buf || buflen < SS_TABLE_NAME_MAX) return fail(SS_EINVAL, "buffer too small");
    snprintf(buf, buflen, "%llx-%llx-%llx.shmslice", (unsigned long long)dev,
             (unsigned long long)ino, (unsigned long long)birth);
    return SS_OK;
}

/* The birth stamp of the open file fd: its birth time in nanoseconds where
 * statx reports one, mixed with the inode generation where the filesystem
 * gives it (FS_IOC_GETVERSION); 0 if it has neither.  A file that reuses a
 * deleted file's inode number gets another stamp (birth times are as coarse
 * as the kernel's clock tick, hence the generation too). */
static uint64_t birth_stamp(int fd)
{
    uint64_t stamp = 0;
    struct statx sx;
    if (statx(fd, "", AT_EMPTY_PATH | AT_STATX_SYNC_AS_STAT, STATX_BTIME, &sx) == 0 &&
        (sx.stx_mask & STATX_BTIME))
        stamp = (uint64_t)sx.stx_btime.tv_sec * 1000000000u + sx.stx_btime.tv_nsec;
    long gen = 0;   /* the kernel writes an int: the low half */
    if (ioctl(fd, FS_IOC_GETVERSION, &gen) == 0)
        stamp ^= (uint64_t)(uint32_t)gen << 32;
    return stamp;
}

int ss_file_identity(int fd, uint64_t *dev, uint64_t *ino, uint64_t *birth)
{
    struct stat st;
    if (fstat(fd, &st) != 0) return fail_sys("cannot stat the data file");
    if (dev) *dev = (uint64_t)st.st_dev;
    if (ino) *ino = (uint64_t)st.st_ino;
    if (birth) *birth = birth_stamp(fd);
    return SS_OK;
}

/* Open the lock directory, refusing a symbolic link.  Returns the
 * descriptor or a status < 0. */
static int open_lock_dir(const char *table_dir)
{
    int dir_fd = open(table_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dir_fd >= 0) return dir_fd;
    /* O_DIRECTORY | O_NOFOLLOW on a symbolic link fails with ENOTDIR, not ELOOP. */
    int err = errno;
    struct stat lst;
    if ((err == ELOOP || err == ENOTDIR) && lstat(table_dir, &lst) == 0 && S_ISLNK(lst.st_mode))
        return fail(SS_EUNSAFE, "lock directory %s is a symbolic link", table_dir);
    errno = err;
    return fail_sys("cannot open lock directory %s", table_dir);
}

/* Open the table `name` in dir_fd, creating it first if it does not exist
 * (unless SS_ATTACH_NOCREATE); a creator also removes temporary files that
 * killed creators left. */
static int open_or_create(struct ss_handle *h, int dir_fd, const char *name, const char *dir,
                          const struct stat *data, uint64_t birth, const char *data_path,
                          uint32_t capacity, uint32_t flags)
{
    /* Each round either attaches or saw the table created, removed or replaced
     * by someone else since the last; rounds are bounded in time, not number. */
    uint64_t deadline = now_ns(CLOCK_MONOTONIC) + SS_ATTACH_PATIENCE_NS;
    for (int attempt = 0;; attempt++) {
        int rc = open_table(h, dir_fd, name, data, birth);
        if (rc == SS_OK) {
            rc = take_guard(h, dir_fd, name);
            if (rc != GUARD_RETRY) return rc;
            release_table_files(h);
            if (now_ns(CLOCK_MONOTONIC) > deadline)
                return fail(SS_EINUSE, "lock table %s: still being removed by another process "
                            "after %d s (a stopped 'shmslice prune'?)", h->table_path,
                            (int)(SS_ATTACH_PATIENCE_NS / 1000000000LL));
            if (attempt > 2) {   /* a remover is between its lock and its unlink: let it run */
                struct timespec nap = {0, attempt > 20 ? 1000000 : 50000};
                nanosleep(&nap, NULL);
            }
            continue;
        }
        if (rc != SS_ENOENT || (flags & SS_ATTACH_NOCREATE) ||
            now_ns(CLOCK_MONOTONIC) > deadline)
            return rc;
        if (attempt == 0) clean_temp_files(dir_fd, NULL);
        rc = create_table(dir_fd, name, dir, data, birth, data_path, capacity);
        if (rc < 0) return rc;
    }
}

int ss_attach(const char *table_dir, int data_fd, const char *data_path,
              uint32_t capacity, uint32_t flags, ss_handle **out)
{
    pthread_once(&atfork_once, install_atfork);
    if (!table_dir || !out) return fail(SS_EINVAL, "table_dir and out are required");
    if (capacity > SS_MAX_CAPACITY)
        return fail(SS_EINVAL, "capacity %u exceeds the maximum %u", capacity, SS_MAX_CAPACITY);
    struct stat data;
    if (fstat(data_fd, &data) != 0) return fail_sys("cannot stat the data file");
    if (!S_ISREG(data.st_mode)) return fail(SS_EINVAL, "the data file is not a regular file");
    int data_flags = fcntl(data_fd, F_GETFL);
    if (data_flags < 0) return fail_sys("cannot read the data file's open flags");

    struct ss_handle *h = handle_new();
    if (!h) return fail_sys("out of memory");
    h->data_writable = (data_flags & O_ACCMODE) != O_RDONLY;
    char name[SS_TABLE_NAME_MAX];
    uint64_t birth = birth_stamp(data_fd);
    ss_table_name((uint64_t)data.st_dev, (uint64_t)data.st_ino, birth, name, sizeof name);
    int path_len = snprintf(h->table_path, sizeof h->table_path, "%s/%s", table_dir, name);
    if (path_len < 0 || (size_t)path_len >= sizeof h->table_path) {
        /* Not openable by its path: a forked child could not re-open it, nor could
         * the command line tool. */
        handle_free(h);
        errno = ENAMETOOLONG;
        return fail_sys("the lock table's path in %.64s... would be %d bytes, more than "
                        "PATH_MAX (%zu); choose a shorter lock directory", table_dir, path_len,
                        sizeof h->table_path - 1);
    }
    /* Registered before any descriptor of the table is opened, so the atfork
     * child handler closes it in a child forked during the attach (else the
     * child could keep our liveness lock alive after we die). */
    registry_add(h);

    int rc = open_lock_dir(table_dir);
    if (rc >= 0) {
        int dir_fd = rc;
        rc = open_or_create(h, dir_fd, name, table_dir, &data, birth, data_path, capacity, flags);
        close(dir_fd);
    }
    if (rc == SS_OK) rc = attach_validate(h);
    if (rc == SS_OK) rc = table_lock(h);
    if (rc == SS_OK) {
        rc = take_slot(h);
        table_unlock(h);
    }
    if (rc != SS_OK) {
        registry_remove(h);
        handle_free(h);
        return rc;
    }
    *out = h;
    return SS_OK;
}

int ss_attach_table(const char *table_path, ss_handle **out)
{
    pthread_once(&atfork_once, install_atfork);
    if (!table_path || !out) return fail(SS_EINVAL, "table_path and out are required");
    struct ss_handle *h = handle_new();
    if (!h) return fail_sys("out of memory");
    h->inspect_only = 1;
    snprintf(h->table_path, sizeof h->table_path, "%s", table_path);
    int rc = open_table(h, AT_FDCWD, table_path, NULL, 0);
    if (rc == SS_OK) rc = attach_validate(h);
    if (rc != SS_OK) { handle_free(h); return rc; }
    registry_add(h);
    *out = h;
    return SS_OK;
}

/* Reopen the liveness descriptor after fork: it must be the table file we
 * have mapped, not one that replaced it since. */
static int reopen_table_fd(struct ss_handle *h)
{
    int fd = open(h->table_path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return fail_sys("cannot reopen lock table %s", h->table_path);
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_dev != h->table_dev || st.st_ino != h->table_ino) {
        close(fd);
        return fail(SS_ECORRUPT, "lock table %s was replaced since it was attached",
                    h->table_path);
    }
    h->table_fd = fd;
    return SS_OK;
}

/* Make sure this handle owns a process slot (a forked child has none until
 * its first lock or pin); inspection handles never do. */
static int ensure_slot(struct ss_handle *h)
{
    if (h->inspect_only)
        return fail(SS_EINVAL, "this handle only inspects the table; attach through "
                    "the data file to take locks");
    if (__builtin_expect(h->has_slot, 1)) return SS_OK;
    pthread_mutex_lock(&registry_lock);
    int rc = SS_OK;
    if (!h->has_slot) {
        if (h->table_fd < 0) rc = reopen_table_fd(h);
        if (rc == SS_OK) rc = table_lock(h);
        if (rc == SS_OK) {
            rc = take_slot(h);
            table_unlock(h);
        }
    }
    pthread_mutex_unlock(&registry_lock);
    return rc;
}

/* Remove every entry owned by (slot, gen).  Under the mutex. */
static int remove_owned(struct ss_handle *h, uint32_t slot, uint32_t gen, uint32_t *removed)
{
    SS_ASSERT_MUTEX_HELD(h);
    SS_ASSERT(slot < h->hdr->proc_hwm);
    /* A used slot's entries all carry its generation (claim_slot), so the
     * walk ends as soon as its count does. */
    for (uint32_t i = 0; h->procs[slot].held && i < h->hdr->entry_hwm; i++) {
        struct ss_entry *e = &h->entries[i];
        if (e->state != ENTRY_FREE && e->owner_slot == slot && e->owner_gen == gen &&
            e->kind != SS_ORPHAN) {
            int rc = entry_remove(h, i);
            if (rc) return rc;
            if (removed) (*removed)++;
        }
    }
    return SS_OK;
}

/* Every public call on a handle runs between handle_enter and handle_leave,
 * so ss_close can wait for calls in flight in other threads (a waiter may be
 * asleep in ss_lock) before it unmaps the table under them. */
/* busy++ then read closing here, closing = 1 then read busy in ss_close: a
 * store-load pair on each side, so both need SEQ_CST (acquire/release lets
 * each side miss the other's store and ss_close unmap under a call). */
static int handle_enter(struct ss_handle *h)
{
    __atomic_add_fetch(&h->busy, 1, __ATOMIC_SEQ_CST);
    if (__builtin_expect(__atomic_load_n(&h->closing, __ATOMIC_SEQ_CST), 0)) {
        __atomic_sub_fetch(&h->busy, 1, __ATOMIC_ACQ_REL);
        return 0;
    }
    return 1;
}

static void handle_leave(struct ss_handle *h)
{
    __atomic_sub_fetch(&h->busy, 1, __ATOMIC_ACQ_REL);
}

/* Wake this handle's sleeping waiters (ss_close: so they see `closing` now).
 * Best effort: without the mutex they notice within SS_SLICE_NS anyway. */
static void wake_own_waiters(struct ss_handle *h)
{
    if (!h->has_slot || h->table_fd < 0 || !h->hdr) return;
    if (table_lock_until(h, now_ns(CLOCK_MONOTONIC) + 10000000u) != SS_OK) return;
    for (uint32_t i = 0; i < h->hdr->entry_hwm; i++) {
        struct ss_entry *e = &h->entries[i];
        if (e->state == SS_WAITING && e->owner_slot == h->slot && e->owner_gen == h->gen) {
            __atomic_add_fetch(&e->wake, 1, __ATOMIC_RELEASE);
            wake_later(&e->wake);
        }
    }
    table_unlock(h);
}

int ss_close(ss_handle *h)
{
    if (!h || __atomic_exchange_n(&h->closing, 1, __ATOMIC_SEQ_CST)) return SS_OK;
    /* Wake our own sleepers so they see `closing` now rather than at their
     * next periodic re-check; then wait for every call in flight to leave. */
    for (int round = 0; __atomic_load_n(&h->busy, __ATOMIC_SEQ_CST) > 0; round++) {
        if (round % 16 == 0) wake_own_waiters(h);
        struct timespec nap = {0, 1000000};
        nanosleep(&nap, NULL);
    }
    int rc = SS_OK;
    /* A table whose data file is gone is removed when its last user leaves
     * and it holds no entries (see "Removing a table" in division 7). */
    int gone = h->hdr && !h->inspect_only && data_file_gone(h->hdr);
    int empty = 0;
    if (h->has_slot && h->table_fd >= 0) {
        rc = table_lock(h);
        if (rc == SS_OK) {
            rc = remove_owned(h, h->slot, h->gen, NULL);
            struct ss_proc *p = &h->procs[h->slot];
            if (p->state == PROC_USED && p->gen == h->gen) slot_release(h, p);
            /* Dead processes' entries do not keep the table; a sweep that
             * fails leaves it (for prune) and is no failure of the close. */
            uint32_t swept = 0;
            int swept_ok = !(rc == SS_OK && gone && h->hdr->used) ||
                           sweep_dead(h, &swept) == SS_OK;
            empty = rc == SS_OK && swept_ok && h->hdr->used == 0;
            table_unlock(h);
        }
    } else if (gone) {
        /* A forked child that never locked: it owns nothing; a hint only. */
        empty = __atomic_load_n(&h->hdr->used, __ATOMIC_ACQUIRE) == 0;
    }
    /* Closing the descriptor drops the liveness lock.  The handle leaves the
     * fork registry only once the descriptor is closed (under the registry
     * lock, which fork waits for): a child forked before must close its copy.
     * The removal attempt runs under that lock too, so no child inherits the
     * spare description while it holds the guard exclusively. */
    pthread_mutex_lock(&registry_lock);
    int spare = -1;
    if (gone && empty && h->probe_fd >= 0) {
        char self_fd[64];
        snprintf(self_fd, sizeof self_fd, "/proc/self/fd/%d", h->probe_fd);
        spare = open(self_fd, O_RDWR | O_CLOEXEC);
    }
    if (h->hdr) munmap(h->hdr, h->map_bytes);
    h->hdr = NULL;
    if (h->table_fd >= 0) close(h->table_fd);
    h->table_fd = -1;
    if (h->probe_fd >= 0) close(h->probe_fd);
    h->probe_fd = -1;
    h->has_slot = 0;
    if (spare >= 0) {
        remove_on_close(h, spare);
        close(spare);
    }
    pthread_mutex_unlock(&registry_lock);
    registry_remove(h);
    return rc;
}

void ss_free(ss_handle *h)
{
    if (!h) return;
    ss_close(h);
    free(h->scan);
    free(h);
}

const char *ss_table_path(ss_handle *h) { return h->table_path; }

static int data_path_impl(ss_handle *h, char *buf, uint32_t buflen)
{
    if (!buf || buflen == 0) return fail(SS_EINVAL, "buffer required");
    size_t n = strnlen(h->hdr->data_path, sizeof h->hdr->data_path);
    if (n >= buflen) n = buflen - 1;
    memcpy(buf, h->hdr->data_path, n);
    buf[n] = 0;
    return SS_OK;
}


/* ===================================================================
 * 8. Locks, pins, resize
 * =================================================================== */

/* Is our request's waiting entry still ours?  Returns its state (SS_WAITING,
 * or SS_GRANTED if a release handed it over) or < 0. */
static int own_wait_entry(struct ss_handle *h, const ss_wait *w)
{
    if (w->entry >= h->hdr->entry_hwm)
        return fail(SS_ECORRUPT, "lock table %s: our waiting entry is out of range",
                    h->table_path);
    const struct ss_entry *e = &h->entries[w->entry];
    if ((e->state != SS_WAITING && e->state != SS_GRANTED) || e->serial != w->serial ||
        e->owner_slot != h->slot || e->owner_gen != h->gen)
        return fail(SS_ECORRUPT, "lock table %s: our waiting entry vanished", h->table_path);
    return e->state;
}

/* Give up a request without the mutex: flag its entry (if any) abandoned so
 * conflicts ignore it from now on and the next holder of the mutex removes
 * it.  The entry stays ours until then: only its owner, a repair (which
 * keeps it) or the sweep of abandoned entries touch it. */
static void abandon_request(struct ss_handle *h, ss_wait *w)
{
    if (!w->has_entry) return;
    w->has_entry = 0;
    if (w->entry >= h->capacity) return;
    __atomic_fetch_or(&h->entries[w->entry].wflags, (uint8_t)W_ABANDONED, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&h->hdr->abandoned, 1, __ATOMIC_SEQ_CST);
}

static const char *kind_name(int kind)
{
    return kind == SS_EXCLUSIVE ? "exclusive" : kind == SS_SHARED ? "shared" : "pin";
}

/* pid of the owner of process slot `slot` as this process sees it: 0 if the
 * slot index is out of range or the owner lives in another pid namespace
 * (its pid there may be anyone's here, often 1). */
static int slot_pid(struct ss_handle *h, uint32_t slot)
{
    if (slot >= h->hdr->proc_hwm) return 0;
    const struct ss_proc *p = &h->procs[slot];
    uint32_t mine = my_pidns();
    if (p->pidns && mine && p->pidns != mine) return 0;
    return (int)p->pid;
}

static int owner_pid(struct ss_handle *h, const struct ss_entry *e)
{
    return slot_pid(h, e->owner_slot);
}

/* "pid N", or what pid 0 (see slot_pid) stands for, in buf. */
static const char *pid_text(int pid, char *buf, size_t len)
{
    if (pid > 0) snprintf(buf, len, "pid %d", pid);
    else snprintf(buf, len, "a process of another PID namespace");
    return buf;
}

/* The SS_ETIMEDOUT detail for a request blocked by entry `who`: a holder is
 * named as holding, a waiter ahead as waiting. */
static int blocked_status(struct ss_handle *h, const struct request *r, uint32_t who)
{
    const struct ss_entry *e = &h->entries[who];
    char owner[64];
    pid_text(owner_pid(h, e), owner, sizeof owner);
    if (e->state == SS_WAITING)
        return fail(SS_ETIMEDOUT, "[%llu, %llu) is queued behind %s's waiting %s "
                    "request on [%llu, %llu)", (unsigned long long)r->start,
                    (unsigned long long)r->end, owner, kind_name(e->kind),
                    (unsigned long long)e->start, (unsigned long long)e->end);
    return fail(SS_ETIMEDOUT, "[%llu, %llu) is held %s by %s on [%llu, %llu)",
                (unsigned long long)r->start, (unsigned long long)r->end,
                e->kind == SS_EXCLUSIVE ? "exclusively" : "shared", owner,
                (unsigned long long)e->start, (unsigned long long)e->end);
}

static int check_lock_args(ss_handle *h, int64_t start, int64_t end, int kind)
{
    if (start < 0 || start >= end)
        return fail(SS_EINVAL, "region [%lld, %lld) is empty or negative",
                    (long long)start, (long long)end);
    if (kind != SS_SHARED && kind != SS_EXCLUSIVE)
        return fail(SS_EINVAL, "kind %d is neither shared nor exclusive", kind);
    if (kind == SS_EXCLUSIVE && !h->data_writable) {
        /* The rule: exclusive locks block the file's writers, so only a
         * process that opened the data file for writing may take them. */
        errno = EACCES;
        return fail_sys("exclusive lock on [%lld, %lld): the data file was not opened "
                        "for writing", (long long)start, (long long)end);
    }
    return SS_OK;
}

/* Under the mutex: grant a new request at once if nothing holds it back.
 * Returns a reference, or SS_ETIMEDOUT with *who set, or < 0. */
static int64_t grant_now(struct ss_handle *h, struct request *r, int probe, uint32_t *who)
{
    int rc = find_conflict(h, r, 0, probe, who);
    if (rc < 0) return rc;
    if (rc == 1) return SS_ETIMEDOUT;
    uint32_t i;
    rc = entry_alloc_sweeping(h, &i);
    if (rc) return rc;
    rc = entry_publish(h, i, r->start, r->end, r->kind, SS_GRANTED, h->hdr->next_ticket, r->tid);
    if (!rc && h->hdr->orphan_root != SS_NIL) rc = note_marks(h, i);
    if (rc) return rc;
    return make_ref(i, h->entries[i].serial);
}

/* The GIL-held fast path: never sleeps (a short spin on a busy mutex, then
 * SS_EAGAIN), never queues. */
static int64_t lock_try_impl(ss_handle *h, int64_t start, int64_t end, int kind, int32_t owner)
{
    int rc = check_lock_args(h, start, end, kind);
    if (rc) return rc;
    rc = ensure_slot(h);
    if (rc) return rc;
    rc = table_trylock(h);
    if (rc) return rc;
    struct request r = {(uint64_t)start, (uint64_t)end, kind, SS_NIL, UINT64_MAX, 0,
                        owner ? owner : current_tid(), SS_NIL};
    uint32_t who = SS_NIL;
    int64_t result = grant_now(h, &r, 1, &who);
    if (result == SS_ETIMEDOUT) result = blocked_status(h, &r, who);
    table_unlock(h);
    return result;
}

#define SS_DEADLOCK_MAX_OWNERS 64     /* owners a deadlock search explores (see below) */
#define SS_DEADLOCK_MAX_WAITERS 1024  /* waiting requests it considers */

/* The cycle of this thread's last SS_EDEADLK (ss_last_cycle). */
static __thread ss_cycle_hop tls_cycle[SS_DEADLOCK_MAX_OWNERS];
static __thread int tls_cycle_len;

/* Under the mutex, for a blocked request: does the calling thread hold a
 * granted conflict itself (through any handle of this process)?  Then
 * waiting would never end: SS_EDEADLK. */
static int check_self_deadlock(struct ss_handle *h, const struct request *r)
{
    uint32_t mine;
    int rc = find_granted(h, r, held_by_caller, &mine);
    if (rc <= 0) return rc;
    const struct ss_entry *e = &h->entries[mine];
    tls_cycle_len = 0;
    return fail(SS_EDEADLK, "[%llu, %llu): this %s already holds a conflicting %s "
                "lock on [%llu, %llu); waiting would deadlock.  A lock belongs to the thread "
                "that took it, whichever thread releases it, so pool threads that take locks "
                "for others (asyncio.to_thread(mgr.lock, ...)) block themselves: in asyncio "
                "use 'await mgr.lock_async(...)'",
                (unsigned long long)r->start, (unsigned long long)r->end,
                r->tid < 0 ? "task" : "thread",
                kind_name(e->kind), (unsigned long long)e->start, (unsigned long long)e->end);
}

/* Does the calling thread hold any granted lock overlapping the request? */
static int caller_overlaps(struct ss_handle *h, const struct request *r)
{
    uint32_t mine;
    struct request any = *r;
    any.kind = SS_EXCLUSIVE;   /* search both granted indexes */
    return find_granted(h, &any, held_by_caller, &mine);
}

/* ---- deadlock detection ------------------------------------------------
 *
 * The wait-for graph.  Its nodes are lock owners: the thread that took a
 * lock (or made a request), or an owner id its caller named (ss_wait.owner;
 * the asyncio layer names one per task), told apart across processes by the
 * process token.  Who releases a lock does not matter: a lock handed to
 * another thread to release still belongs to the thread that took it.  A
 * waiting request of owner A has an edge to owner B when an entry of B holds
 * it back *now*: a granted entry of B that conflicts with it, or an urgent
 * request of B that arrived earlier and conflicts with it (A queues behind
 * it).  Edges are computed at walk time from the table as it stands under
 * the mutex, so a lock that barged in, urgency gained since, and resumable
 * waits that stay queued between two ss_lock_wait calls count as they are.
 * An owner waits in its latest request (a signal handler may make a second
 * request while the first stays queued; the latest is the one it is blocked
 * in).
 *
 * Two rules use it, both under the mutex, on every step in which a request
 * is held back:
 *   - Queueing never closes a cycle: a request is not held back by an
 *     urgent request that waits (by any path of the graph) for the
 *     request's owner (queue_waits_for_us; it generalises the rule that a
 *     thread holding an overlapping lock is not queued).  It passes it,
 *     as that one waits for it anyway.
 *   - Hold and wait: if the granted conflicts alone lead from the request
 *     back to a lock of its own owner, waiting would never end: SS_EDEADLK
 *     naming the shortest such cycle (deadlock_check, ss_last_cycle).  The
 *     request whose arrival closes the cycle is the one that fails, and it
 *     withdraws at once, which opens the cycle for the others.
 * Owners of dead processes end a path, and a cycle found is confirmed by
 * probing the liveness of every other owner on it.  Bounds: a search
 * explores at most SS_DEADLOCK_MAX_OWNERS owners (so cycles of up to that
 * many owners are found) and considers at most SS_DEADLOCK_MAX_WAITERS
 * waiting requests; a cycle beyond them is not reported (only timeouts end
 * it).  A cycle that is not there is never reported.
 * ------------------------------------------------------------------------ */
struct owner_id { uint64_t token; int32_t tid; };

static inline int owner_eq(struct owner_id a, struct owner_id b)
{
    return a.tid == b.tid && a.token == b.token;
}

/* The owner of entry e, if its process slot is in use at e's generation. */
static int entry_owner(struct ss_handle *h, const struct ss_entry *e, struct owner_id *o)
{
    if (e->owner_slot >= h->hdr->proc_hwm) return 0;
    const struct ss_proc *p = &h->procs[e->owner_slot];
    if (p->state != PROC_USED || p->gen != e->owner_gen) return 0;
    o->token = p->token;
    o->tid = e->tid;
    return 1;
}

struct dl_node {
    struct owner_id who;
    uint32_t wait;       /* the request it waits in (for node 0: r->self, maybe SS_NIL) */
    uint32_t via;        /* its entry the parent's request is held back by */
    int parent;          /* -1 for node 0, the requester */
};

struct dl_search {
    struct dl_node node[SS_DEADLOCK_MAX_OWNERS];
    int n;
    uint32_t waiter[SS_DEADLOCK_MAX_WAITERS];   /* waiting requests, collected once */
    int nwaiters;
    int collected;
    int node_k;          /* the node being expanded */
    const struct request *r;   /* its request */
    struct owner_id target;   /* whose entry ends the search */
    int use_urgent;      /* follow queueing behind urgent requests too */
    uint32_t closing;    /* the entry of the target found, SS_NIL if none */
    int closing_node;
};


static int collect_all_waiters(struct ss_handle *h, uint32_t i, void *arg)
{
    struct dl_search *s = arg;
    const struct ss_entry *e = &h->entries[i];
    if (e->state != SS_WAITING || (wflags_of(e) & W_ABANDONED)) return 0;
    if (s->nwaiters == SS_DEADLOCK_MAX_WAITERS) return 1;   /* bound: stop collecting */
    s->waiter[s->nwaiters++] = i;
    return 0;
}

/* The request owner o waits in (its latest), or SS_NIL if it waits in none. */
static uint32_t waiting_request_of(struct ss_handle *h, struct dl_search *s, struct owner_id o)
{
    if (!s->collected) {
        s->collected = 1;
        int rc = tree_each(h, h->hdr->wait_root, 0, UINT64_MAX, collect_all_waiters, s, 0);
        if (rc < 0) s->nwaiters = 0;   /* a corrupt index is reported by the next real use */
    }
    uint32_t best = SS_NIL;
    for (int k = 0; k < s->nwaiters; k++) {
        const struct ss_entry *e = &h->entries[s->waiter[k]];
        struct owner_id eo;
        if (e->tid != o.tid || e->state != SS_WAITING || !entry_owner(h, e, &eo) ||
            !owner_eq(eo, o))
            continue;
        if (best == SS_NIL || e->ticket > h->entries[best].ticket) best = s->waiter[k];
    }
    return best;
}

/* Entry i holds back the request of the node being expanded: follow it. */
static int dl_follow(struct ss_handle *h, struct dl_search *s, uint32_t i)
{
    const struct ss_entry *e = &h->entries[i];
    struct owner_id o;
    if (!entry_owner(h, e, &o)) return 0;                 /* its process is gone */
    if (owner_eq(o, s->target)) {                         /* back at the requester */
        s->closing = i;
        s->closing_node = s->node_k;
        return 1;
    }
    if (owner_eq(o, s->node[s->node_k].who)) return 0;   /* its own lock: not an edge */
    for (int k = 0; k < s->n; k++)
        if (owner_eq(o, s->node[k].who)) return 0;        /* reached already */
    if (s->n == SS_DEADLOCK_MAX_OWNERS) return 0;         /* bound */
    uint32_t wait = waiting_request_of(h, s, o);
    if (wait == SS_NIL) return 0;                         /* running: it will release */
    s->node[s->n++] = (struct dl_node){o, wait, i, s->node_k};
    return 0;
}

static int dl_visit_granted(struct ss_handle *h, uint32_t i, void *arg)
{
    struct dl_search *s = arg;
    if (!holds_region(h, i, (void *)s->r)) return 0;
    return dl_follow(h, s, i);
}

static int dl_visit_urgent(struct ss_handle *h, uint32_t i, void *arg)
{
    struct dl_search *s = arg;
    struct request *r = (struct request *)s->r;
    if (!urgent_ahead(h, i, r)) return 0;
    return dl_follow(h, s, i);
}

/* A granted entry of the owner in arg (a struct request naming it by tid,
 * the token compared by the caller's filter below). */
struct owner_probe { struct owner_id o; uint32_t also; };

static int held_by_owner(struct ss_handle *h, uint32_t i, void *arg)
{
    const struct owner_probe *p = arg;
    const struct ss_entry *e = &h->entries[i];
    struct owner_id eo;
    return i != p->also && !(wflags_of(e) & W_ABANDONED) && e->tid == p->o.tid &&
           entry_owner(h, e, &eo) && owner_eq(eo, p->o);
}

/* Does owner o hold a granted lock overlapping [start, end)?  (Then its
 * request is not held back by urgent waiters.) */
static int owner_overlaps(struct ss_handle *h, struct owner_id o, uint64_t start, uint64_t end,
                          uint32_t also)
{
    struct owner_probe p = {o, also};
    uint32_t found;
    int rc = tree_find(h, h->hdr->root[TREE_EXCLUSIVE], start, end, held_by_owner, &p, &found, 0);
    if (rc == 0)
        rc = tree_find(h, h->hdr->root[TREE_SHARED], start, end, held_by_owner, &p, &found, 0);
    return rc;
}

/* Expand node k: every entry that holds its request back now. */
static int dl_expand(struct ss_handle *h, struct dl_search *s, int k, struct request *r,
                     int reentrant)
{
    reentrant |= !s->use_urgent;
    s->node_k = k;
    s->r = r;
    int rc = tree_each(h, h->hdr->root[TREE_EXCLUSIVE], r->start, r->end, dl_visit_granted, s, 0);
    if (rc == 0 && r->kind == SS_EXCLUSIVE)
        rc = tree_each(h, h->hdr->root[TREE_SHARED], r->start, r->end, dl_visit_granted, s, 0);
    if (rc == 0 && !reentrant) {
        int may = urgent_waiters_may_block(h, r);
        rc = may == 1 ? tree_each(h, h->hdr->wait_root, r->start, r->end, dl_visit_urgent, s, 0)
                      : may;
    }
    return rc;
}

static int owner_pid_of(struct ss_handle *h, uint32_t i)
{
    return owner_pid(h, &h->entries[i]);
}

/* Fill tls_cycle from the search's path and write the SS_EDEADLK detail. */
static int report_cycle(struct ss_handle *h, struct dl_search *s, const struct request *root)
{
    int path[SS_DEADLOCK_MAX_OWNERS], len = 0;
    for (int k = s->closing_node; k >= 0 && len < SS_DEADLOCK_MAX_OWNERS; k = s->node[k].parent)
        path[len++] = k;
    /* path[len-1] is node 0; hop j: owner path[len-1-j] waits, held back by
     * the next owner's entry (the last one by the requester's `closing`). */
    tls_cycle_len = len;
    for (int j = 0; j < len; j++) {
        const struct dl_node *nd = &s->node[path[len - 1 - j]];
        uint32_t held = j + 1 < len ? s->node[path[len - 2 - j]].via : s->closing;
        ss_cycle_hop *hop = &tls_cycle[j];
        memset(hop, 0, sizeof *hop);
        if (j == 0) {
            hop->start = root->start; hop->end = root->end; hop->kind = (uint32_t)root->kind;
            hop->pid = (int32_t)getpid();
        } else {
            const struct ss_entry *we = &h->entries[nd->wait];
            hop->start = we->start; hop->end = we->end; hop->kind = we->kind;
            hop->pid = owner_pid(h, we);
        }
        hop->tid = nd->who.tid;
        const struct ss_entry *he = &h->entries[held];
        hop->held_start = he->start; hop->held_end = he->end;
        hop->held_kind = he->kind;
        hop->holder_pid = owner_pid_of(h, held);
        hop->holder_tid = he->tid;
    }
    char msg[sizeof tls_detail];
    int n = snprintf(msg, sizeof msg, "[%llu, %llu) %s: waiting would deadlock, a cycle of %d "
                     "lock owner%s:", (unsigned long long)root->start,
                     (unsigned long long)root->end, kind_name(root->kind), len,
                     len == 1 ? "" : "s");
    for (int j = 0; j < len && n > 0 && (size_t)n < sizeof msg; j++) {
        const ss_cycle_hop *hop = &tls_cycle[j];
        n += snprintf(msg + n, sizeof msg - (size_t)n, "%s pid %d %s %d wants [%llu, %llu) "
                      "%s, %s by pid %d %s %d on [%llu, %llu)", j ? ";" : "", hop->pid,
                      hop->tid < 0 ? "owner" : "thread", hop->tid,
                      (unsigned long long)hop->start, (unsigned long long)hop->end,
                      kind_name((int)hop->kind),
                      hop->held_kind == SS_EXCLUSIVE ? "held exclusive" : "held shared",
                      hop->holder_pid, hop->holder_tid < 0 ? "owner" : "thread",
                      hop->holder_tid, (unsigned long long)hop->held_start,
                      (unsigned long long)hop->held_end);
    }
    return fail(SS_EDEADLK, "%s", msg);
}

/* Breadth-first search of the wait-for graph from node 0 (already set) for
 * an entry of s->target; s->closing says whether one was found.  Node 0's
 * request is r, with reentrant as for deadlock_check. */
static int dl_search_run(struct ss_handle *h, struct dl_search *s, struct request *r, int reentrant)
{
    s->n = 1;
    s->nwaiters = 0;
    s->collected = 0;
    s->closing = SS_NIL;
    int rc = dl_expand(h, s, 0, r, reentrant == 1);
    for (int k = 1; rc == 0 && k < s->n; k++) {
        struct ss_entry *we = &h->entries[s->node[k].wait];
        struct request rk = {we->start, we->end, we->kind, s->node[k].wait, we->ticket, 0,
                             we->tid, upgrade_source(h, s->node[k].wait)};
        int re = !s->use_urgent || rk.also != SS_NIL ? 1
                 : owner_overlaps(h, s->node[k].who, we->start, we->end, SS_NIL);
        if (re < 0) return re;
        rc = dl_expand(h, s, k, &rk, re);
    }
    return rc < 0 ? rc : SS_OK;
}

/* Under the mutex, for a request held back: would waiting close a cycle of
 * granted conflicts (hold and wait)?  SS_EDEADLK (detail and ss_last_cycle
 * set), SS_OK, or < 0.  Queueing behind urgent requests does not count here:
 * it never closes a cycle (queue_waits_for_us below lets a request pass an
 * urgent request that waits for it). */
static int deadlock_check(struct ss_handle *h, struct request *r)
{
    /* A cycle needs another owner that waits. */
    if (h->hdr->waiting <= (r->self != SS_NIL ? 1u : 0u)) return SS_OK;
    struct dl_search *s = malloc(sizeof *s);
    if (!s) return SS_OK;   /* no memory to look: wait as if there were no cycle */
    s->target = (struct owner_id){my_token(), r->tid};
    s->use_urgent = 0;
    s->node[0] = (struct dl_node){s->target, r->self, SS_NIL, -1};
    int rc = dl_search_run(h, s, r, 1);
    if (rc < 0 || s->closing == SS_NIL) { free(s); return rc; }
    /* Confirm: every other owner on the cycle is alive (a dead one's entries
     * are reclaimed, not waited for). */
    for (int k = s->closing_node; k > 0; k = s->node[k].parent) {
        const struct ss_entry *v = &h->entries[s->node[k].via];
        int alive = slot_alive(h, v->owner_slot, v->owner_gen);
        if (alive <= 0) { free(s); return alive < 0 ? alive : SS_OK; }
    }
    rc = report_cycle(h, s, r);
    free(s);
    return rc;
}

/* Does waiting entry u (an urgent request ahead of r) wait, through granted
 * conflicts and queueing, for r's owner?  Then r queueing behind u would
 * close a cycle: r is not held back by u (see the fairness rule).  1, 0 or
 * < 0.  Under the mutex. */
static int queue_waits_for_us(struct ss_handle *h, const struct request *r, uint32_t u)
{
    struct ss_entry *ue = &h->entries[u];
    struct owner_id uo;
    if (!entry_owner(h, ue, &uo)) return 0;
    struct owner_id me = {my_token(), r->tid};
    if (owner_eq(uo, me)) return 1;   /* our own earlier request (a signal handler's) */
    struct dl_search *s = malloc(sizeof *s);
    if (!s) return 0;
    s->target = me;
    s->use_urgent = 1;
    s->node[0] = (struct dl_node){uo, u, SS_NIL, -1};
    struct request ru = {ue->start, ue->end, ue->kind, u, ue->ticket, 0, ue->tid,
                         upgrade_source(h, u)};
    int re = ru.also != SS_NIL ? 1 : owner_overlaps(h, uo, ue->start, ue->end, SS_NIL);
    int rc = re < 0 ? re : dl_search_run(h, s, &ru, re);
    int found = s->closing != SS_NIL;
    free(s);
    return rc < 0 ? rc : found;
}

/* Public: see shmslice.h. */
int ss_last_cycle(ss_cycle_hop *out, uint32_t max)
{
    int n = tls_cycle_len;
    if (out)
        for (int k = 0; k < n && (uint32_t)k < max; k++) out[k] = tls_cycle[k];
    return n;
}


/* One step of a blocking request; see ss_lock_wait in shmslice.h. */
/* Under the mutex: turn our shared lock si into an exclusive one in place
 * (its reference stays), then drop the upgrade request x (SS_NIL if none).
 * Crash-safe at every step: an entry is indexed by its kind. */
static int64_t finish_upgrade(struct ss_handle *h, uint32_t si, uint32_t x, int64_t ref)
{
    struct ss_entry *se = &h->entries[si];
    if (se->kind == SS_SHARED) {
        int rc = index_remove(h, si);
        if (rc) return rc;
        maybe_crash(20);
        se->kind = SS_EXCLUSIVE;
        rc = index_insert(h, si);
        if (!rc && h->hdr->orphan_root != SS_NIL) rc = note_marks(h, si);
        if (rc) return rc;
    }
    if (x != SS_NIL) {
        maybe_crash(21);
        int rc = entry_remove(h, x);
        if (rc) return rc;
    }
    return ref;
}

/* One step of a blocking request; see ss_lock_wait in shmslice.h.  up_ref >= 0:
 * the request converts that shared lock of ours on [start, end) (ss_upgrade_wait). */
static int64_t lock_wait_impl(ss_handle *h, ss_wait *w, int64_t start, int64_t end, int kind,
                              int64_t timeout_ns, int64_t up_ref)
{
    int rc = check_lock_args(h, start, end, kind);
    if (rc) return rc;
    rc = ensure_slot(h);
    if (rc) return rc;
    uint64_t now = now_ns(CLOCK_MONOTONIC);
    int try_only = timeout_ns == 0;
    if (!w->started) {
        w->started = 1;
        w->deadline_ns = timeout_ns > 0 ? now + (uint64_t)timeout_ns
                         : try_only ? now + (uint64_t)SS_TRY_PATIENCE_NS : 0;
        w->probe_ns = 0;              /* probe blockers at once */
        w->has_entry = 0;
        w->checked = 0;
        w->reentrant = -1;
    }
    w->interrupted = 0;
    uint64_t slice_end = now + (uint64_t)SS_SLICE_NS;
    uint64_t mutex_by = w->deadline_ns ? min_u64(w->deadline_ns, slice_end) : slice_end;
    if (w->poll) {                        /* a poller serves others too: never block long */
        w->wake_word = NULL;
        w->recall_ns = now + 1000000u;
        mutex_by = min_u64(mutex_by, now + 1000000u);
    }
    struct request r = {(uint64_t)start, (uint64_t)end, kind, SS_NIL, UINT64_MAX, 0,
                        w->owner ? w->owner : current_tid(), SS_NIL};
    int slept = 0;
    int64_t result;
    for (;;) {
        rc = table_lock_until(h, mutex_by);
        if (rc == SS_ETIMEDOUT) {
            if (w->deadline_ns && now_ns(CLOCK_MONOTONIC) >= w->deadline_ns) {
                abandon_request(h, w);
                char why[400];
                snprintf(why, sizeof why, "%.380s", tls_detail);
                return fail(SS_ETIMEDOUT, "[%llu, %llu) not granted in time: %s",
                            (unsigned long long)start, (unsigned long long)end, why);
            }
            return SS_EWAITING;   /* mutex busy all slice: our place is kept */
        }
        if (rc) { abandon_request(h, w); return rc; }
        struct ss_header *hd = h->hdr;
        if (__atomic_load_n(&h->closing, __ATOMIC_ACQUIRE)) {
            result = fail(SS_ECLOSED, "the lock manager was closed while waiting for "
                          "[%llu, %llu)", (unsigned long long)start, (unsigned long long)end);
            break;
        }
        uint32_t up = SS_NIL;            /* the shared lock an upgrade converts */
        if (up_ref >= 0) {
            int64_t si = own_entry(h, up_ref, 0);
            if (si < 0) { result = si; break; }
            up = (uint32_t)si;
            if (h->entries[up].kind != SS_SHARED || h->entries[up].start != (uint64_t)start ||
                h->entries[up].end != (uint64_t)end) {
                result = fail(SS_EINVAL, "lock %lld is not a shared lock on [%lld, %lld)",
                              (long long)up_ref, (long long)start, (long long)end);
                break;
            }
            r.also = up;
            r.tid = h->entries[up].tid;  /* the lock's owner, whichever thread upgrades it */
            w->reentrant = 1;            /* waiters overlapping it wait for us */
        }
        if (w->has_entry) {
            int state = own_wait_entry(h, w);
            if (state < 0) { w->has_entry = 0; result = state; break; }
            if (state == SS_GRANTED) {   /* a release handed it to us */
                w->has_entry = 0;
                result = up != SS_NIL ? finish_upgrade(h, up, w->entry, up_ref)
                                      : make_ref(w->entry, w->serial);
                break;
            }
            __atomic_fetch_and(&h->entries[w->entry].wflags, (uint8_t)~W_WOKEN, __ATOMIC_ACQ_REL);
            r.self = w->entry;
            r.ticket = h->entries[w->entry].ticket;
        }
        r.now = 0;
        int probe = now >= w->probe_ns;
        if (probe) w->probe_ns = now + (uint64_t)SS_RECHECK_NS;
        uint32_t who = SS_NIL;
        rc = find_conflict(h, &r, w->reentrant == 1, probe, &who);
        if (rc == 1 && w->reentrant == -1 && h->entries[who].state == SS_WAITING) {
            /* Held back only by a waiter: if this thread holds an overlapping
             * lock, that waiter waits for us; do not queue behind it. */
            int mine = caller_overlaps(h, &r);
            if (mine < 0) { result = mine; break; }
            w->reentrant = mine;
            if (mine) rc = find_conflict(h, &r, 1, probe, &who);
        }
        if (rc < 0) { result = rc; break; }
        if (w->has_entry && h->entries[w->entry].state == SS_GRANTED) {
            /* Reclaiming a dead holder above handed the region to us. */
            w->has_entry = 0;
            result = up != SS_NIL ? finish_upgrade(h, up, w->entry, up_ref)
                                  : make_ref(w->entry, w->serial);
            break;
        }
        if (rc == 0 && up != SS_NIL) {
            uint32_t x = w->has_entry ? w->entry : SS_NIL;
            w->has_entry = 0;
            result = finish_upgrade(h, up, x, up_ref);
            break;
        }
        if (rc == 0) {
            if (w->has_entry) {
                rc = grant_waiting(h, w->entry);
                w->has_entry = 0;
                result = rc ? rc : make_ref(w->entry, w->serial);
                break;
            }
            uint32_t i;
            rc = entry_alloc_sweeping(h, &i);
            if (!rc) rc = entry_publish(h, i, r.start, r.end, kind, SS_GRANTED, hd->next_ticket, r.tid);
            if (!rc && hd->orphan_root != SS_NIL) rc = note_marks(h, i);
            result = rc ? rc : make_ref(i, h->entries[i].serial);
            break;
        }
        /* Held back by `who`. */
        if (!try_only && !w->checked) {
            w->checked = 1;
            rc = check_self_deadlock(h, &r);
            if (rc) { result = rc; break; }
        }
        if (!try_only && !__atomic_load_n(&deadlock_detection_off, __ATOMIC_RELAXED)) {
            rc = deadlock_check(h, &r);
            if (rc) { result = rc; break; }
        }
        if (try_only || (w->deadline_ns && now >= w->deadline_ns)) {
            result = blocked_status(h, &r, who);
            break;
        }
        if (!w->has_entry) {
            uint32_t i;
            rc = entry_alloc_sweeping(h, &i);
            if (!rc) rc = entry_publish(h, i, r.start, r.end, kind, SS_WAITING, hd->next_ticket++, r.tid);
            if (rc) { result = rc; break; }
            if (up != SS_NIL) {          /* others' wake-up passes and searches see the link */
                h->entries[i].next_free = up;
                __atomic_fetch_or(&h->entries[i].wflags, (uint8_t)W_UPGRADE, __ATOMIC_ACQ_REL);
            }
            w->entry = i;
            w->serial = h->entries[i].serial;
            w->has_entry = 1;
        }
        struct ss_entry *e = &h->entries[w->entry];
        if (slept) {                      /* one sleep per call */
            table_unlock(h);
            return SS_EWAITING;
        }
        uint64_t wall = 0;
        uint64_t until = min_u64(slice_end, w->probe_ns);
        if (!make_urgent_if_due(h, e, &wall))   /* wake when due, to turn urgent */
            until = min_u64(until, now + (e->since_ns + (uint64_t)SS_URGENT_NS - wall));
        if (w->deadline_ns) until = min_u64(until, w->deadline_ns);
        int64_t nap = until > now ? (int64_t)(until - now) : 1000;
        uint32_t seen = __atomic_load_n(&e->wake, __ATOMIC_ACQUIRE);
        if (w->poll) {                    /* the caller sleeps, on many requests at once */
            w->wake_word = &e->wake;
            w->wake_seen = seen;
            w->recall_ns = now + (uint64_t)nap;
            table_unlock(h);
            return SS_EWAITING;
        }
        table_unlock(h);
        int werr = futex_wait(&e->wake, seen, nap);
        if (werr == EINTR) {
            w->interrupted = 1;           /* let the caller run its handlers now */
            return SS_EWAITING;
        }
        slept = 1;
        now = now_ns(CLOCK_MONOTONIC);
        if (mutex_by < now) mutex_by = now;
    }
    if (w->has_entry) {                   /* give up our place in the queue */
        int r2 = entry_remove(h, w->entry);
        if (r2 && result >= 0) result = r2;
        w->has_entry = 0;
    }
    table_unlock(h);
    return result;
}

/* Withdraw a request that ss_lock_wait left waiting (or granted since). */
static int lock_cancel_impl(ss_handle *h, ss_wait *w)
{
    if (!w->has_entry) return SS_OK;
    int rc = table_lock_until(h, now_ns(CLOCK_MONOTONIC) + (uint64_t)SS_RELEASE_PATIENCE_NS);
    if (rc) { abandon_request(h, w); return SS_OK; }
    int state = own_wait_entry(h, w);
    w->has_entry = 0;
    rc = state < 0 ? state : entry_remove(h, w->entry);
    table_unlock(h);
    return rc;
}

/* Release; if the mutex cannot be had (a stopped holder), abandon the entry
 * instead: it stops counting at once and the next mutex holder removes it. */
static int release_impl(ss_handle *h, int64_t ref, int try_only)
{
    int rc = try_only ? table_trylock(h)
             : table_lock_until(h, now_ns(CLOCK_MONOTONIC) + (uint64_t)SS_RELEASE_PATIENCE_NS);
    if (rc == SS_EAGAIN && try_only) return rc;
    if (rc == SS_ETIMEDOUT) {
        uint32_t i = (uint32_t)(ref & 0xffffffff);
        if (ref < 0 || i >= h->capacity) return fail(SS_EINVAL, "invalid reference");
        /* Checked without the mutex: an entry of ours cannot change under us
         * (only its owner removes it), so these reads are stable if it is. */
        const struct ss_entry *e = &h->entries[i];
        if (__atomic_load_n(&e->state, __ATOMIC_ACQUIRE) != SS_GRANTED ||
            e->serial != (uint32_t)(ref >> 32) || !h->has_slot || e->owner_slot != h->slot ||
            e->owner_gen != h->gen || e->kind == SS_PIN)
            return fail(SS_ENOTOWNER, "entry %u is not held by this handle", i);
        ss_wait w = {0};
        w.has_entry = 1;
        w.entry = i;
        abandon_request(h, &w);
        return SS_OK;
    }
    if (rc) return rc;
    int64_t i = own_entry(h, ref, 0);
    rc = i < 0 ? (int)i : entry_remove(h, (uint32_t)i);
    table_unlock(h);
    return rc;
}

static int64_t pin_impl(ss_handle *h, int64_t start_arg, int64_t end_arg)
{
    if (start_arg < 0 || start_arg >= end_arg)
        return fail(SS_EINVAL, "region [%lld, %lld) is empty or negative",
                    (long long)start_arg, (long long)end_arg);
    uint64_t start = (uint64_t)start_arg, end = (uint64_t)end_arg;
    int rc = ensure_slot(h);
    if (rc) return rc;
    rc = table_lock(h);
    if (rc) return rc;
    uint32_t i = SS_NIL;
    int64_t result;
    rc = pin_find_exact(h, h->hdr->root[TREE_PIN], start, end, h->slot, h->gen, &i, 0);
    if (rc == 1) {
        struct ss_entry *e = &h->entries[i];
        if (e->count == UINT32_MAX) result = fail(SS_EFULL, "pin count overflow");
        else { e->count++; result = make_ref(i, e->serial); }
    } else if (rc < 0) {
        result = rc;
    } else {
        rc = entry_alloc_sweeping(h, &i);
        if (!rc) rc = entry_publish(h, i, start, end, SS_PIN, SS_GRANTED, 0, 0);
        result = rc ? rc : make_ref(i, h->entries[i].serial);
    }
    table_unlock(h);
    return result;
}

static int unpin_impl(ss_handle *h, int64_t ref)
{
    int rc = table_lock(h);
    if (rc) return rc;
    int64_t i = own_entry(h, ref, 1);
    /* The last pin is removed with its count left at 1: a process killed
     * inside entry_remove must leave an entry that repair accepts (count 0 is
     * malformed), which is then reclaimed as a dead owner's pin. */
    if (i < 0) rc = (int)i;
    else if (h->entries[i].count > 1) h->entries[i].count--;
    else rc = entry_remove(h, (uint32_t)i);
    table_unlock(h);
    return rc;
}

static int ends_past(struct ss_handle *h, uint32_t i, void *varg)
{
    return h->entries[i].end > *(const uint64_t *)varg;
}

static void fill_info(struct ss_handle *h, uint32_t i, ss_entry_info *out, int alive)
{
    const struct ss_entry *e = &h->entries[i];
    out->start = e->start;
    out->end = e->end;
    out->since_ns = e->since_ns;
    out->ticket = e->ticket;
    out->ref = make_ref(i, e->serial);
    out->kind = e->kind;
    out->state = e->state;
    out->count = e->kind == SS_ORPHAN ? 1 : e->count;
    out->pid = e->kind == SS_ORPHAN ? (int32_t)e->count   /* the pid that died */
               : slot_pid(h, e->owner_slot);
    out->tid = e->tid;
    out->alive = alive;
}

/* Under the mutex: first live entry with end > offset (1), none (0), or < 0. */
static int find_beyond(struct ss_handle *h, uint64_t offset, ss_entry_info *who)
{
    SS_ASSERT_MUTEX_HELD(h);
    scan_begin(h);
    for (int t = 0; t < TREE_COUNT; t++) {
        if (t == TREE_ORPHAN) continue;   /* marks hold nothing back */
        for (;;) {
            uint32_t found;
            int rc = tree_find(h, *tree_root(h, t), offset, UINT64_MAX, ends_past, &offset,
                               &found, 0);
            if (rc <= 0) { if (rc < 0) return rc; break; }
            int alive = scan_entry_alive(h, found);
            if (alive < 0) return alive;
            if (alive) { if (who) fill_info(h, found, who, 1); return 1; }
            rc = reclaim_dead(h, found);
            if (rc) return rc;
        }
    }
    return 0;
}

static int reach_beyond_impl(ss_handle *h, uint64_t offset, ss_entry_info *who)
{
    int rc = table_lock(h);
    if (rc) return rc;
    rc = find_beyond(h, offset, who);
    table_unlock(h);
    return rc;
}

/* After a failed growth, put the data file back to old_size: a failed
 * posix_fallocate may keep the blocks it allocated and may have moved the
 * end of the file (ext4 does both on ENOSPC), which would leave the file
 * bigger than the table says and the filesystem full.  Truncating to the old
 * size frees every block past it.  Returns status (the growth's failure),
 * with the detail extended if the roll-back failed too. */
static int roll_back_growth(int data_fd, off_t old_size, int status)
{
    int saved = tls_errno;
    if (ftruncate(data_fd, old_size) != 0) {
        size_t n = strlen(tls_detail);
        snprintf(tls_detail + n, sizeof tls_detail - n,
                 "; restoring the old size of %lld bytes failed too (%s): the file may "
                 "now be larger than shmslice thinks", (long long)old_size, strerror(errno));
    }
    tls_errno = saved;
    return status;
}

static int resize_impl(ss_handle *h, int data_fd, uint64_t new_size, ss_entry_info *who)
{
    if (new_size > (uint64_t)INT64_MAX) return fail(SS_EINVAL, "size too large");
    struct stat st;
    if (fstat(data_fd, &st) != 0) return fail_sys("cannot stat the data file");
    if ((uint64_t)st.st_dev != h->hdr->data_dev || (uint64_t)st.st_ino != h->hdr->data_ino ||
        birth_stamp(data_fd) != h->hdr->data_birth)
        return fail(SS_EINVAL, "descriptor is not this table's data file");
    int rc = table_lock(h);
    if (rc) return rc;
    struct ss_header *hd = h->hdr;
    if (new_size < (uint64_t)st.st_size || new_size < hd->file_size) {
        rc = find_beyond(h, new_size, who);
        if (rc == 1) {
            char owner[64];
            rc = fail(SS_EBUSY, "cannot shrink to %llu bytes: %s holds a %s on "
                      "[%llu, %llu)", (unsigned long long)new_size,
                      pid_text((int)who->pid, owner, sizeof owner),
                      who->kind == SS_PIN ? "pin" : who->kind == SS_SHARED ? "shared lock"
                      : "exclusive lock", (unsigned long long)who->start,
                      (unsigned long long)who->end);
        }
    }
    if (rc == SS_OK) {
        if (new_size > (uint64_t)st.st_size) {
            int err = posix_fallocate(data_fd, st.st_size, (off_t)(new_size - (uint64_t)st.st_size));
            if (err != 0 && err != EOPNOTSUPP && err != EINVAL) {
                errno = err;
                rc = fail_sys("cannot grow the data file to %llu bytes",
                              (unsigned long long)new_size);
                rc = roll_back_growth(data_fd, st.st_size, rc);
            }
        }
        if (rc == SS_OK && ftruncate(data_fd, (off_t)new_size) != 0) {
            rc = fail_sys("cannot resize the data file to %llu bytes",
                          (unsigned long long)new_size);
            rc = roll_back_growth(data_fd, st.st_size, rc);
        }
        if (rc == SS_OK) {
            __atomic_store_n(&hd->file_size, new_size, __ATOMIC_RELEASE);
            __atomic_add_fetch(&hd->size_epoch, 1, __ATOMIC_RELEASE);
        }
    }
    table_unlock(h);
    return rc;
}

static int64_t file_size_impl(ss_handle *h) { return (int64_t)__atomic_load_n(&h->hdr->file_size, __ATOMIC_ACQUIRE); }
static int64_t size_epoch_impl(ss_handle *h) { return (int64_t)__atomic_load_n(&h->hdr->size_epoch, __ATOMIC_ACQUIRE); }
/* The counter is only ever compared for equality (cache keys), so it may wrap;
 * the top bit is masked off so it is never mistaken for a status. */
static int64_t write_gen_impl(ss_handle *h) { return (int64_t)(__atomic_load_n(&h->hdr->write_gen, __ATOMIC_ACQUIRE) & INT64_MAX); }
static int64_t note_write_impl(ss_handle *h) { return (int64_t)(__atomic_add_fetch(&h->hdr->write_gen, 1, __ATOMIC_RELEASE) & INT64_MAX); }

/* ===================================================================
 * 9. Inspection
 * =================================================================== */

/* Entry slots a snapshot copies per hold of the table mutex: ~4096 entries
 * copy in ~0.1 ms, so a snapshot of a full table never keeps a locker
 * waiting longer than that. */
#define SS_SNAPSHOT_CHUNK 4096u

/* How the copy step leaves an entry's owner for the liveness step. */
enum { OWNER_GONE = UINT32_MAX, OWNER_SELF = UINT32_MAX - 1 };

/* Copy entries out in chunks of SS_SNAPSHOT_CHUNK entry slots, releasing the
 * mutex between chunks, then probe each owner's liveness (once per process
 * slot) without the mutex.  What the caller gets: every entry that stayed in
 * use from the start of the call to its end is reported once; an entry made
 * or removed meanwhile may or may not be; each reported entry was as shown
 * at the moment its chunk was copied; alive = 1 means its owner's slot was
 * in use (same generation) when copied and still held its liveness lock when
 * probed.  *count is the number of entries seen (more than max: call again
 * with a larger buffer). */
static int snapshot_impl(ss_handle *h, ss_entry_info *out, uint32_t max, uint32_t *count)
{
    if (!count || (max && !out)) return fail(SS_EINVAL, "output buffer required");
    uint32_t cap = max < h->capacity ? max : h->capacity;
    uint32_t *owner = malloc(2 * sizeof(uint32_t) * (cap ? cap : 1));
    struct verdicts *v = verdicts_new(h->max_procs);   /* slots may grow meanwhile */
    int rc = owner && v ? SS_OK : fail_sys("out of memory taking a snapshot of %s",
                                          h->table_path);
    uint32_t n = 0;
    for (uint32_t i = 0; rc == SS_OK;) {
        rc = table_lock(h);
        if (rc) break;
        uint32_t hwm = h->hdr->entry_hwm;
        uint32_t stop = hwm - i > SS_SNAPSHOT_CHUNK ? i + SS_SNAPSHOT_CHUNK : hwm;
        for (; i < stop; i++) {
            const struct ss_entry *e = &h->entries[i];
            if (e->state == ENTRY_FREE) continue;
            rc = validate_entry(h, i);   /* also: owner_slot < proc_hwm */
            if (rc) break;
            if (n < cap) {
                fill_info(h, i, &out[n], 0);
                const struct ss_proc *p = &h->procs[e->owner_slot];
                owner[2 * n] = p->state != PROC_USED || p->gen != e->owner_gen ? OWNER_GONE
                               : h->has_slot && e->owner_slot == h->slot ? OWNER_SELF
                               : e->owner_slot;
                owner[2 * n + 1] = e->owner_gen;
            }
            n++;
        }
        table_unlock(h);
        if (i >= hwm) break;
    }
    SS_ASSERT_MUTEX_NOT_HELD(h);   /* the probes below run without the mutex */
    for (uint32_t k = 0; rc == SS_OK && k < n && k < cap; k++) {
        uint32_t slot = owner[2 * k];
        if (slot == OWNER_GONE) continue;
        if (slot == OWNER_SELF || h->probe_fd < 0) { out[k].alive = 1; continue; }
        int alive = verdict(h, v, slot);
        if (alive < 0) { rc = alive; break; }
        /* Freed (and perhaps retaken) since the copy: the owner left. */
        out[k].alive = alive &&
            __atomic_load_n(&h->procs[slot].gen, __ATOMIC_RELAXED) == owner[2 * k + 1];
    }
    free(owner);
    free(v);
    *count = n;
    return rc;
}

/* Rank of a kind in the alphabetical order of its name (listings sort by
 * the name shown); kinds no snapshot reports come last. */
static int kind_name_rank(uint32_t kind)
{
    return kind == SS_EXCLUSIVE ? 0 : kind == SS_ORPHAN ? 1 : kind == SS_PIN ? 2
           : kind == SS_SHARED ? 3 : 4;
}

static int region_order(const void *pa, const void *pb)
{
    const ss_entry_info *a = pa, *b = pb;
    if (a->start != b->start) return a->start < b->start ? -1 : 1;
    if (a->end != b->end) return a->end < b->end ? -1 : 1;
    int ka = kind_name_rank(a->kind), kb = kind_name_rank(b->kind);
    if (ka != kb) return ka < kb ? -1 : 1;
    uint32_t pa32 = (uint32_t)a->pid, pb32 = (uint32_t)b->pid;
    if (pa32 != pb32) return pa32 < pb32 ? -1 : 1;
    /* Table order: the entry index is the reference's low half (unique). */
    uint32_t ia = (uint32_t)((uint64_t)a->ref & 0xffffffffu), ib = (uint32_t)((uint64_t)b->ref & 0xffffffffu);
    return ia < ib ? -1 : ia > ib;
}

/* See ss_snapshot_sort. */
static int snapshot_sort_impl(ss_entry_info *entries, uint32_t n)
{
    if (n && !entries) return fail(SS_EINVAL, "entries required");
    if (n > 1) qsort(entries, n, sizeof *entries, region_order);
    return SS_OK;
}

static int stat_impl(ss_handle *h, ss_table_stat *out)
{
    if (!out) return fail(SS_EINVAL, "output required");
    int rc = table_lock(h);
    if (rc) return rc;
    struct ss_header *hd = h->hdr;
    out->format = hd->format;
    out->table_bytes = hd->table_bytes;
    out->data_dev = hd->data_dev;
    out->data_ino = hd->data_ino;
    out->file_size = hd->file_size;
    out->size_epoch = hd->size_epoch;
    out->created_ns = hd->created_ns;
    out->capacity = hd->capacity;
    out->used = hd->used;
    out->waiting = hd->waiting;
    out->proc_capacity = hd->proc_capacity;
    out->procs = hd->procs_used;
    out->repairs = hd->repairs;
    out->max_capacity = h->max_capacity;
    out->max_procs = h->max_procs;
    out->reserve = hd->reserve;
    out->ceiling_source = hd->ceiling_source;
    out->growths = hd->growths;
    out->pad = 0;
    table_unlock(h);
    struct stat st;
    if (fstat(h->probe_fd, &st) != 0) return fail_sys("cannot stat %s", h->table_path);
    out->allocated_bytes = (uint64_t)st.st_blocks * 512u;
    return SS_OK;
}

/* The process slots in use or holding entries; see ss_holders. */
static int holders_impl(ss_handle *h, ss_holder_info *out, uint32_t max, uint32_t *count)
{
    if (!count || (max && !out)) return fail(SS_EINVAL, "output buffer required");
    uint32_t *slot = malloc(2 * sizeof(uint32_t) * (max ? max : 1));
    struct verdicts *v = verdicts_new(h->max_procs);
    int rc = slot && v ? SS_OK : fail_sys("out of memory listing holders of %s", h->table_path);
    uint32_t n = 0;
    if (rc == SS_OK) rc = table_lock(h);
    if (rc == SS_OK) {
        for (uint32_t s = 0; s < h->hdr->proc_hwm; s++) {
            const struct ss_proc *p = &h->procs[s];
            if (p->state != PROC_USED && p->held == 0) continue;
            if (n < max) {
                out[n].pid = p->pid;
                out[n].entries = p->held;
                out[n].attached_ns = p->attached_ns;
                out[n].alive = 0;
                out[n].pad = 0;
                slot[2 * n] = p->state == PROC_USED ? s : OWNER_GONE;
                slot[2 * n + 1] = p->gen;
            }
            n++;
        }
        table_unlock(h);
    }
    for (uint32_t k = 0; rc == SS_OK && k < n && k < max; k++) {
        uint32_t s = slot[2 * k];
        if (s == OWNER_GONE) continue;
        if ((h->has_slot && s == h->slot) || h->probe_fd < 0) { out[k].alive = 1; continue; }
        int alive = verdict(h, v, s);
        if (alive < 0) { rc = alive; break; }
        out[k].alive = alive && __atomic_load_n(&h->procs[s].gen, __ATOMIC_RELAXED) == slot[2 * k + 1];
    }
    free(slot);
    free(v);
    *count = n;
    return rc;
}

static int reap_impl(ss_handle *h, uint32_t *removed)
{
    if (!removed) return fail(SS_EINVAL, "output required");
    *removed = 0;
    int rc = table_lock(h);
    if (rc) return rc;
    rc = sweep_dead(h, removed);
    /* Also free slots of dead processes that hold no entries (same scan:
     * slots probed by the sweep are not probed again). */
    for (uint32_t s = 0; rc == SS_OK && s < h->hdr->proc_hwm; s++)
        if (h->procs[s].state == PROC_USED) {
            int alive = scan_alive(h, s, h->procs[s].gen);
            if (alive < 0) rc = alive;
        }
    table_unlock(h);
    /* And temporary files killed creators left in the table's directory. */
    char dir[sizeof h->table_path];
    snprintf(dir, sizeof dir, "%s", h->table_path);
    char *slash = strrchr(dir, '/');
    if (slash == dir) slash[1] = 0;
    else if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
    int dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dir_fd >= 0) {
        clean_temp_files(dir_fd, NULL);
        close(dir_fd);
    }
    return rc;
}

/* Public: see shmslice.h.  Holes are found with SEEK_DATA/SEEK_HOLE and
 * allocated with fallocate(2) mode 0, which never changes a byte of the file
 * (allocated blocks read as zeros, as the hole did) nor its size; glibc's
 * posix_fallocate emulation, which writes zero bytes, is never used (it
 * could overwrite a concurrent writer's data). */
int64_t ss_allocate_holes(int data_fd, uint64_t start, uint64_t end)
{
    if (start > end || end > (uint64_t)INT64_MAX)
        return fail(SS_EINVAL, "bad range [%llu, %llu)", (unsigned long long)start,
                    (unsigned long long)end);
    int64_t allocated = 0;
    off_t pos = (off_t)start;
    while ((uint64_t)pos < end) {
        off_t hole = lseek(data_fd, pos, SEEK_HOLE);
        if (hole < 0) {
            if (errno == ENXIO) break;          /* pos at or past the end of the file */
            if (errno == EINVAL || errno == EOPNOTSUPP) break;   /* cannot tell: no holes */
            return fail_sys("cannot look for holes in the data file");
        }
        if ((uint64_t)hole >= end) break;
        off_t data = lseek(data_fd, hole, SEEK_DATA);
        uint64_t hole_end = data < 0 ? end : (uint64_t)data < end ? (uint64_t)data : end;
        if (data < 0 && errno != ENXIO) return fail_sys("cannot look for holes in the data file");
        if (hole_end <= (uint64_t)hole) {
            /* Written meanwhile (a concurrent writer filled the hole between
             * the two lseeks): data from here, nothing to allocate.  Step a
             * page so that two answers that disagree cannot loop. */
            pos = hole + 4096;
            continue;
        }
        if (fallocate(data_fd, 0, hole, (off_t)(hole_end - (uint64_t)hole)) != 0) {
            if (errno == EOPNOTSUPP || errno == ENOSYS) return allocated;   /* cannot defend */
            return fail_sys("cannot allocate the holes of the data file ([%lld, %llu) of "
                            "[%llu, %llu) unallocated; %lld bytes allocated before)",
                            (long long)hole, (unsigned long long)hole_end,
                            (unsigned long long)start, (unsigned long long)end,
                            (long long)allocated);
        }
        allocated += (int64_t)(hole_end - (uint64_t)hole);
        pos = (off_t)hole_end;
    }
    return allocated;
}

/* Is any entry of the table alive?  1 yes, 0 no, < 0 error.  Under the
 * mutex. */
static int any_live_entry(struct ss_handle *h)
{
    SS_ASSERT_MUTEX_HELD(h);
    scan_begin(h);
    for (uint32_t i = 0; i < h->hdr->entry_hwm; i++) {
        if (h->entries[i].state == ENTRY_FREE) continue;
        int alive = scan_entry_alive(h, i);
        if (alive != 0) return alive;
    }
    return 0;
}

static int remove_table_impl(ss_handle *h, uint32_t flags, uint64_t *freed)
{
    if (!freed) return fail(SS_EINVAL, "output required");
    *freed = 0;
    if (!h->inspect_only)
        return fail(SS_EINVAL, "only a handle opened by ss_attach_table removes its table; "
                    "close this one (its table goes once unused and its file is gone)");
    if (flags & ~(uint32_t)SS_REMOVE_DRY_RUN) return fail(SS_EINVAL, "unknown flags %#x", flags);
    int dry_run = (flags & SS_REMOVE_DRY_RUN) != 0;
    int free_now = guard_exclusive(h->probe_fd, h->table_path, dry_run);
    if (free_now < 0) return free_now;
    if (!free_now)
        return fail(SS_EINUSE, "lock table %s: a process is attached to it", h->table_path);
    int rc = SS_OK;
    if (!dry_run) {
        /* Nobody is attached, so every entry should be a dead process's;
         * check it anyway: a live one means a process that took no guard. */
        rc = table_lock(h);
        if (rc == SS_OK) {
            rc = any_live_entry(h);
            table_unlock(h);
            if (rc > 0)
                rc = fail(SS_EINUSE, "lock table %s holds live entries of a process that "
                          "is not attached through the guard", h->table_path);
        }
    }
    if (rc == SS_OK)
        rc = unlink_table(h->probe_fd, h->table_path, h->table_dev, h->table_ino, dry_run, freed);
    if (!dry_run) guard_release(h->probe_fd);
    return rc;
}

/* Public: see shmslice.h. */
int ss_clean_temp_files(const char *table_dir, uint32_t *removed)
{
    if (!table_dir || !removed) return fail(SS_EINVAL, "table_dir and removed are required");
    *removed = 0;
    int dir_fd = open_lock_dir(table_dir);
    if (dir_fd < 0) return dir_fd;
    int rc = clean_temp_files(dir_fd, removed);
    close(dir_fd);
    return rc;
}

/* ===================================================================
 * 10. Public entry points: each call is bracketed by handle_enter/leave
 * =================================================================== */

#define CLOSED_STATUS() fail(SS_ECLOSED, "the handle is closed")

int64_t ss_lock_try_as(ss_handle *h, int64_t start, int64_t end, int kind, int32_t owner)
{
    if (!h || !handle_enter(h)) return CLOSED_STATUS();
    int64_t rc = lock_try_impl(h, start, end, kind, owner);
    handle_leave(h);
    return rc;
}

/* One kernel wait for ss_wait_many (its own layout: older headers lack it). */
struct waitv_entry { uint64_t val; uint64_t uaddr; uint32_t flags; uint32_t reserved; };
#define SS_WAITV_MAX 128
#define SS_WAITV_SIZE_U32 0x02

static int no_waitv;   /* futex_waitv found unavailable, or turned off (test hook) */

void ss_debug_set_no_waitv(int on) { __atomic_store_n(&no_waitv, on != 0, __ATOMIC_RELAXED); }

int ss_wait_many(uint32_t **words, const uint32_t *seen, uint32_t n, int64_t timeout_ns)
{
    if (!words || !seen || n == 0) return fail(SS_EINVAL, "ss_wait_many needs words");
    struct timespec abs;
    uint64_t until = timeout_ns < 0 ? 0 : now_ns(CLOCK_MONOTONIC) + (uint64_t)timeout_ns;
    if (n <= SS_WAITV_MAX && !__atomic_load_n(&no_waitv, __ATOMIC_RELAXED)) {
#ifdef SYS_futex_waitv
        struct waitv_entry v[SS_WAITV_MAX];
        for (uint32_t k = 0; k < n; k++)
            v[k] = (struct waitv_entry){seen[k], (uint64_t)(uintptr_t)words[k],
                                        SS_WAITV_SIZE_U32, 0};
        abs.tv_sec = (time_t)(until / 1000000000u);
        abs.tv_nsec = (long)(until % 1000000000u);
        long rc = syscall(SYS_futex_waitv, v, n, 0, timeout_ns < 0 ? NULL : &abs,
                          CLOCK_MONOTONIC);
        if (rc >= 0 || errno == EAGAIN) return SS_OK;
        if (errno == ETIMEDOUT) return SS_ETIMEDOUT;
        if (errno == EINTR) return SS_EINTR;
        /* ENOSYS: a kernel before 5.16; EPERM: a seccomp filter that predates
         * the call (container runtimes' default profiles did, for a while). */
        if (errno != ENOSYS && errno != EPERM) return fail_sys("futex_waitv failed");
#endif
        __atomic_store_n(&no_waitv, 1, __ATOMIC_RELAXED);
    }
    /* Fallback: the first word (the caller's control word), 1 ms at most. */
    int64_t nap = timeout_ns < 0 || timeout_ns > 1000000 ? 1000000 : timeout_ns;
    int err = futex_wait(words[0], seen[0], nap);
    return err == EINTR ? SS_EINTR : SS_OK;
}

void ss_wake_word(uint32_t *word)
{
    if (!word) return;
    __atomic_add_fetch(word, 1, __ATOMIC_RELEASE);
    futex_wake(word, INT_MAX);
}

int64_t ss_lock_try(ss_handle *h, int64_t start, int64_t end, int kind)
{
    if (!h || !handle_enter(h)) return CLOSED_STATUS();
    int64_t rc = lock_try_impl(h, start, end, kind, 0);
    handle_leave(h);
    return rc;
}

int64_t ss_lock_wait(ss_handle *h, ss_wait *w, int64_t start, int64_t end, int kind,
                     int64_t timeout_ns)
{
    if (!w) return fail(SS_EINVAL, "ss_lock_wait needs its ss_wait");
    if (!h || !handle_enter(h)) return CLOSED_STATUS();
    int64_t rc = lock_wait_impl(h, w, start, end, kind, timeout_ns, -1);
    handle_leave(h);
    return rc;
}

int ss_lock_cancel(ss_handle *h, ss_wait *w)
{
    if (!w) return fail(SS_EINVAL, "ss_lock_cancel needs its ss_wait");
    if (!h || !handle_enter(h)) return SS_OK;   /* closed: ss_close removed the entry */
    int rc = lock_cancel_impl(h, w);
    handle_leave(h);
    return rc;
}

/* Exclusive -> shared in place, under the mutex; then wake the waiters the
 * change lets in (readers: the region stays locked against writers). */
static int downgrade_impl(ss_handle *h, int64_t ref)
{
    int rc = table_lock(h);
    if (rc) return rc;
    int64_t i = own_entry(h, ref, 0);
    if (i < 0) { table_unlock(h); return (int)i; }
    struct ss_entry *e = &h->entries[i];
    if (e->kind != SS_EXCLUSIVE || e->state != SS_GRANTED) {
        table_unlock(h);
        return fail(SS_EINVAL, "lock %lld is not an exclusive lock", (long long)ref);
    }
    rc = index_remove(h, (uint32_t)i);
    if (rc == SS_OK) {
        maybe_crash(20);
        e->kind = SS_SHARED;
        rc = index_insert(h, (uint32_t)i);
    }
    if (rc == SS_OK && h->hdr->wait_root != SS_NIL) rc = wake_waiters(h, e->start, e->end);
    table_unlock(h);
    return rc;
}

static int owner_died_impl(ss_handle *h, int64_t ref)
{
    /* Our own granted entry: its flags change only under the mutex, by us
     * (at grant), so an atomic read without the mutex is exact. */
    uint32_t i = (uint32_t)(ref & 0xffffffff);
    if (ref < 0 || i >= h->capacity || !h->has_slot)
        return fail(SS_ENOTOWNER, "reference %lld is not a lock of this handle", (long long)ref);
    const struct ss_entry *e = &h->entries[i];
    if (__atomic_load_n(&e->state, __ATOMIC_ACQUIRE) != SS_GRANTED ||
        e->serial != (uint32_t)(ref >> 32) || e->owner_slot != h->slot || e->owner_gen != h->gen ||
        e->kind == SS_PIN)
        return fail(SS_ENOTOWNER, "entry %u is not held by this handle", i);
    return (wflags_of(e) & W_OWNER_DIED) != 0;
}

int ss_lock_owner_died(ss_handle *h, int64_t ref)
{
    if (!h || !handle_enter(h)) return CLOSED_STATUS();
    int rc = owner_died_impl(h, ref);
    handle_leave(h);
    return rc;
}

int ss_downgrade(ss_handle *h, int64_t ref)
{
    if (!h || !handle_enter(h)) return CLOSED_STATUS();
    int rc = downgrade_impl(h, ref);
    handle_leave(h);
    return rc;
}

int64_t ss_upgrade_wait(ss_handle *h, ss_wait *w, int64_t ref, int64_t timeout_ns)
{
    if (!w) return fail(SS_EINVAL, "ss_upgrade_wait needs its ss_wait");
    if (!h || !handle_enter(h)) return CLOSED_STATUS();
    /* Our own entry's region: only we change it, so it reads stable here;
     * lock_wait_impl checks it again under the mutex. */
    int64_t rc = ref < 0 ? fail(SS_EINVAL, "invalid reference %lld", (long long)ref) : SS_OK;
    uint32_t i = (uint32_t)(ref & 0xffffffff);
    if (rc == SS_OK && (i >= h->capacity || !h->hdr))
        rc = fail(SS_ENOTOWNER, "reference %u is not in use", i);
    if (rc == SS_OK) {
        const struct ss_entry *e = &h->entries[i];
        uint64_t start = e->start, end = e->end;
        if (start >= end || end > (uint64_t)INT64_MAX)
            rc = fail(SS_ENOTOWNER, "entry %u is not held by this handle", i);
        else
            rc = lock_wait_impl(h, w, (int64_t)start, (int64_t)end, SS_EXCLUSIVE, timeout_ns, ref);
    }
    handle_leave(h);
    return rc;
}

int64_t ss_lock(ss_handle *h, int64_t start, int64_t end, int kind, int64_t timeout_ns)
{
    /* A free lock costs no clock read and no ss_wait: try first. */
    int64_t ref = ss_lock_try(h, start, end, kind);
    if (ref >= 0 || (ref != SS_ETIMEDOUT && ref != SS_EAGAIN) ||
        (ref == SS_ETIMEDOUT && timeout_ns == 0))
        return ref;
    ss_wait w;
    memset(&w, 0, sizeof w);
    for (;;) {
        int64_t rc = ss_lock_wait(h, &w, start, end, kind, timeout_ns);
        if (rc != SS_EWAITING) return rc;
        if (w.interrupted) {
            ss_lock_cancel(h, &w);
            return fail(SS_EINTR, "interrupted while waiting for [%lld, %lld)",
                        (long long)start, (long long)end);
        }
    }
}

int ss_release(ss_handle *h, int64_t ref)
{
    if (!h || !handle_enter(h)) return CLOSED_STATUS();
    int rc = release_impl(h, ref, 0);
    handle_leave(h);
    return rc;
}

int ss_release_try(ss_handle *h, int64_t ref)
{
    if (!h || !handle_enter(h)) return CLOSED_STATUS();
    int rc = release_impl(h, ref, 1);
    handle_leave(h);
    return rc;
}

int64_t ss_pin(ss_handle *h, int64_t start, int64_t end)
{
    if (!h || !handle_enter(h)) return CLOSED_STATUS();
    int64_t rc = pin_impl(h, start, end);
    handle_leave(h);
    return rc;
}

int ss_unpin(ss_handle *h, int64_t ref)
{
    if (!h || !handle_enter(h)) return CLOSED_STATUS();
    int rc = unpin_impl(h, ref);
    handle_leave(h);
    return rc;
}

int ss_reach_beyond(ss_handle *h, uint64_t offset, ss_entry_info *who)
{
    if (!h || !handle_enter(h)) return CLOSED_STATUS();
    int rc = reach_beyond_impl(h, offset, who);
    handle_leave(h);
    return rc;
}

int ss_resize(ss_handle *h, int data_fd, uint64_t new_size, ss_entry_info *who)
{
    if (!h || !handle_enter(h)) return CLOSED_STATUS();
    int rc = resize_impl(h, data_fd, new_size, who);
    handle_leave(h);
    return rc;
}

int ss_snapshot(ss_handle *h, ss_entry_info *out, uint32_t max, uint32_t *count)
{
    if (!h || !handle_enter(h)) return CLOSED_STATUS();
    int rc = snapshot_impl(h, out, max, count);
    handle_leave(h);
    return rc;
}

int ss_snapshot_sort(ss_entry_info *entries, uint32_t n)
{
    return snapshot_sort_impl(entries, n);
}

int ss_stat(ss_handle *h, ss_table_stat *out)
{
    if (!h || !handle_enter(h)) return CLOSED_STATUS();
    int rc = stat_impl(h, out);
    handle_leave(h);
    return rc;
}

int ss_holders(ss_handle *h, ss_holder_info *out, uint32_t max, uint32_t *count)
{
    if (!h || !handle_enter(h)) return CLOSED_STATUS();
    int rc = holders_impl(h, out, max, count);
    handle_leave(h);
    return rc;
}

int ss_reap(ss_handle *h, uint32_t *removed)
{
    if (!h || !handle_enter(h)) return CLOSED_STATUS();
    int rc = reap_impl(h, removed);
    handle_leave(h);
    return rc;
}

int ss_remove_table(ss_handle *h, uint32_t flags, uint64_t *freed)
{
    if (!h || !handle_enter(h)) return CLOSED_STATUS();
    int rc = remove_table_impl(h, flags, freed);
    handle_leave(h);
    return rc;
}

int ss_data_path(ss_handle *h, char *buf, uint32_t buflen)
{
    if (!h || !handle_enter(h)) return CLOSED_STATUS();
    int rc = data_path_impl(h, buf, buflen);
    handle_leave(h);
    return rc;
}

int64_t ss_file_size(ss_handle *h)
{
    if (!h || !handle_enter(h)) return CLOSED_STATUS();
    int64_t size = file_size_impl(h);
    handle_leave(h);
    return size;
}

int64_t ss_size_epoch(ss_handle *h)
{
    if (!h || !handle_enter(h)) return CLOSED_STATUS();
    int64_t epoch = size_epoch_impl(h);
    handle_leave(h);
    return epoch;
}

int64_t ss_write_gen(ss_handle *h)
{
    if (!h || !handle_enter(h)) return CLOSED_STATUS();
    int64_t gen = write_gen_impl(h);
    handle_leave(h);
    return gen;
}

int ss_unpin_written(ss_handle *h, int64_t ref)
{
    if (!h || !handle_enter(h)) return CLOSED_STATUS();
    int rc = unpin_impl(h, ref);
    (void)note_write_impl(h);
    handle_leave(h);
    return rc;
}

int64_t ss_note_write(ss_handle *h)
{
    if (!h || !handle_enter(h)) return CLOSED_STATUS();
    int64_t gen = note_write_impl(h);
    handle_leave(h);
    return gen;
}

/* ===================================================================
 * 11. Layout served to tools and tests
 *
 * The fuzzer, the fault tests and the command-line tool read and poke the
 * table file directly.  They learn where everything is from here, so the
 * layout exists once (the structs above) and a change to it cannot leave
 * them poking the wrong bytes.  Every figure comes from offsetof/sizeof.
 * =================================================================== */

struct layout_buf { char *buf; uint32_t len; size_t need; };

__attribute__((format(printf, 2, 3)))
static void layout_line(struct layout_buf *b, const char *fmt, ...)
{
    char line[160];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n <= 0) return;
    size_t len = (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
    if (b->buf && b->need + len < b->len) memcpy(b->buf + b->need, line, len);
    b->need += len;
}

#define LAYOUT_FIELD(b, prefix, type, field) \
    layout_line(b, "field " prefix "." #field " %zu %zu\n", offsetof(type, field), \
                sizeof(((type *)0)->field))
#define LAYOUT_CONST(b, name, value) \
    layout_line(b, "const " name " %llu\n", (unsigned long long)(value))

/* Write the layout description into buf (NUL-terminated, truncated to
 * buflen) and return its full length, so a caller with a short buffer can
 * ask again.  Lines are "field NAME OFFSET SIZE" (offsets relative to the
 * header, a process slot or an entry, by prefix hdr./proc./entry.) and
 * "const NAME VALUE". */
int ss_layout(char *buf, uint32_t buflen)
{
    struct layout_buf b = {buf, buflen, 0};
    LAYOUT_FIELD(&b, "hdr", struct ss_header, magic);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, format);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, max_capacity);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, max_procs);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, table_bytes);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, data_dev);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, data_ino);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, data_birth);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, created_ns);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, data_path);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, ceiling_source);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, reserve);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, mutex);
#ifdef __GLIBC__
    /* The words of glibc's mutex the fault tools garble on purpose. */
    layout_line(&b, "field hdr.mutex.__lock %zu %zu\n",
                offsetof(struct ss_header, mutex) + offsetof(pthread_mutex_t, __data.__lock),
                sizeof(((pthread_mutex_t *)0)->__data.__lock));
    layout_line(&b, "field hdr.mutex.__owner %zu %zu\n",
                offsetof(struct ss_header, mutex) + offsetof(pthread_mutex_t, __data.__owner),
                sizeof(((pthread_mutex_t *)0)->__data.__owner));
    layout_line(&b, "field hdr.mutex.__kind %zu %zu\n",
                offsetof(struct ss_header, mutex) + offsetof(pthread_mutex_t, __data.__kind),
                sizeof(((pthread_mutex_t *)0)->__data.__kind));
#endif
    LAYOUT_FIELD(&b, "hdr", struct ss_header, abandoned);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, next_ticket);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, root);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, free_head);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, entry_hwm);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, proc_hwm);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, used);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, waiting);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, procs_used);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, repairs);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, file_size);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, size_epoch);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, wait_root);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, urgent);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, urgent_due_ns);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, orphan_root);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, write_gen);
    LAYOUT_FIELD(&b, "proc", struct ss_proc, pid);
    LAYOUT_FIELD(&b, "proc", struct ss_proc, gen);
    LAYOUT_FIELD(&b, "proc", struct ss_proc, state);
    LAYOUT_FIELD(&b, "proc", struct ss_proc, pidns);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, capacity);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, proc_capacity);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, growths);
    LAYOUT_FIELD(&b, "hdr", struct ss_header, changes);
    LAYOUT_FIELD(&b, "proc", struct ss_proc, pid);
    LAYOUT_FIELD(&b, "proc", struct ss_proc, gen);
    LAYOUT_FIELD(&b, "proc", struct ss_proc, state);
    LAYOUT_FIELD(&b, "proc", struct ss_proc, held);
    LAYOUT_FIELD(&b, "proc", struct ss_proc, stash);
    LAYOUT_FIELD(&b, "proc", struct ss_proc, attached_ns);
    LAYOUT_FIELD(&b, "proc", struct ss_proc, token);
    LAYOUT_FIELD(&b, "entry", struct ss_entry, start);
    LAYOUT_FIELD(&b, "entry", struct ss_entry, end);
    LAYOUT_FIELD(&b, "entry", struct ss_entry, max_end);
    LAYOUT_FIELD(&b, "entry", struct ss_entry, ticket);
    LAYOUT_FIELD(&b, "entry", struct ss_entry, since_ns);
    LAYOUT_FIELD(&b, "entry", struct ss_entry, left);
    LAYOUT_FIELD(&b, "entry", struct ss_entry, right);
    LAYOUT_FIELD(&b, "entry", struct ss_entry, next_free);
    LAYOUT_FIELD(&b, "entry", struct ss_entry, owner_slot);
    LAYOUT_FIELD(&b, "entry", struct ss_entry, owner_gen);
    LAYOUT_FIELD(&b, "entry", struct ss_entry, tid);
    LAYOUT_FIELD(&b, "entry", struct ss_entry, count);
    LAYOUT_FIELD(&b, "entry", struct ss_entry, serial);
    LAYOUT_FIELD(&b, "entry", struct ss_entry, kind);
    LAYOUT_FIELD(&b, "entry", struct ss_entry, state);
    LAYOUT_FIELD(&b, "entry", struct ss_entry, wflags);
    LAYOUT_FIELD(&b, "entry", struct ss_entry, wake);
    LAYOUT_CONST(&b, "header_size", sizeof(struct ss_header));
    LAYOUT_CONST(&b, "header_bytes", SS_HEADER_BYTES);
    LAYOUT_CONST(&b, "proc_bytes", sizeof(struct ss_proc));
    LAYOUT_CONST(&b, "entry_bytes", sizeof(struct ss_entry));
    LAYOUT_CONST(&b, "tree_count", sizeof ((struct ss_header *)0)->root / sizeof(uint32_t));
    LAYOUT_CONST(&b, "tree_shared", TREE_SHARED);
    LAYOUT_CONST(&b, "tree_exclusive", TREE_EXCLUSIVE);
    LAYOUT_CONST(&b, "tree_pin", TREE_PIN);
    LAYOUT_CONST(&b, "tree_orphan", TREE_ORPHAN);
    LAYOUT_CONST(&b, "kind_orphan", SS_ORPHAN);
    LAYOUT_CONST(&b, "magic", SS_MAGIC);
    LAYOUT_CONST(&b, "format", ss_format_stamp());
    LAYOUT_CONST(&b, "default_max_entries", SS_DEFAULT_MAX_ENTRIES);
    LAYOUT_CONST(&b, "max_procs", SS_MAX_PROCS);
    LAYOUT_CONST(&b, "initial_capacity", SS_INITIAL_CAPACITY);
    LAYOUT_CONST(&b, "initial_procs", SS_INITIAL_PROCS);
    LAYOUT_CONST(&b, "entries_offset", ss_entries_offset(SS_MAX_PROCS));
    LAYOUT_CONST(&b, "reserve_shift", SS_RESERVE_SHIFT);
    LAYOUT_CONST(&b, "max_capacity", SS_MAX_CAPACITY);
    LAYOUT_CONST(&b, "nil", SS_NIL);
    LAYOUT_CONST(&b, "entry_free", ENTRY_FREE);
    LAYOUT_CONST(&b, "proc_free", PROC_FREE);
    LAYOUT_CONST(&b, "proc_used", PROC_USED);
    LAYOUT_CONST(&b, "slot_lock_base", SS_SLOT_LOCK_BASE);
    LAYOUT_CONST(&b, "guard_byte", SS_GUARD_BYTE);
    LAYOUT_CONST(&b, "mutex_patience_s", SS_MUTEX_PATIENCE_S);
    if (buf && buflen) buf[b.need < buflen ? b.need : buflen - 1] = 0;
    return b.need > INT_MAX ? INT_MAX : (int)b.need;
}

/* Is name a lock table file name as ss_table_name makes them (or as it made
 * them before the birth stamp: then *birth is SS_BIRTH_LEGACY)?  Then store
 * the data file identity it names and return SS_OK, else SS_EINVAL. */
int ss_table_name_parse(const char *name, uint64_t *dev, uint64_t *ino, uint64_t *birth)
{
    if (!name) return fail(SS_EINVAL, "no name");
    static const char suffix[] = ".shmslice";
    uint64_t part[3] = {0, 0, SS_BIRTH_LEGACY};
    const char *p = name;
    for (int k = 0; k < 3; k++) {
        const char *digits = p;
        uint64_t v = 0;
        /* Lower-case hex without leading zeros: exactly what %llx prints. */
        while ((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')) {
            if (v >> 60) return fail(SS_EINVAL, "%s: number too large", name);
            v = v * 16 + (uint64_t)(*p <= '9' ? *p - '0' : *p - 'a' + 10);
            p++;
        }
        size_t n = (size_t)(p - digits);
        if (n == 0 || (n > 1 && digits[0] == '0'))
            return fail(SS_EINVAL, "%s is not a lock table name", name);
        part[k] = v;
        if (k == 1 && *p == '.') break;   /* "dev-ino.shmslice": a table of format 3 or older */
        if (k < 2) {
            if (*p != '-') return fail(SS_EINVAL, "%s is not a lock table name", name);
            p++;
        }
    }
    if (strcmp(p, suffix) != 0) return fail(SS_EINVAL, "%s is not a lock table name", name);
    if (dev) *dev = part[0];
    if (ino) *ino = part[1];
    if (birth) *birth = part[2];
    return SS_OK;
}
