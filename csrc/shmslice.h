/*
 * shmslice.h -- public C API of the shmslice lock manager.
 *
 * One lock table per data file lives in a shared-memory file (normally under
 * /dev/shm/shmslice).  Every process that attaches to the same data file, by
 * any path, maps the same table and takes region locks and pins in it:
 *
 *   shared     reader lock on [start, end); compatible with other shared locks
 *   exclusive  writer lock on [start, end); conflicts with every overlapping lock
 *   pin        counted reference to [start, end); conflicts with no lock, only
 *              with shrinking the data file below its end
 *
 * All symbols carry the prefix ss_ / SS_.  Every call returns a status from
 * ss_status.def (0 or negative) or, for calls that create an entry, a
 * non-negative "reference" naming that entry.  After SS_ESYS the failing
 * errno is in ss_last_errno(); every failure leaves a human-readable detail in
 * ss_last_detail().  Both are per thread.
 *
 * This header is also the cffi cdef: build_ffi.py drops the preprocessor
 * lines, so keep declarations in the subset cffi parses.
 */
#ifndef SHMSLICE_H
#define SHMSLICE_H

#include <stdint.h>

#include "ss_status.h"

/* Entry kinds. */
#define SS_SHARED 1
#define SS_EXCLUSIVE 2
#define SS_PIN 3
/* An owner-died mark (ss_snapshot only): the region's exclusive holder died
 * holding it; the next lock granted over it says so (ss_lock_owner_died). */
#define SS_ORPHAN 4

/* Entry states as reported by ss_snapshot. */
#define SS_GRANTED 1
#define SS_WAITING 2

/* ss_attach flags. */
#define SS_ATTACH_NOCREATE 1

/* Entry ceiling of a table created without one (lowered to what the lock
 * directory's filesystem has room for, if that is less). */
#define SS_DEFAULT_MAX_ENTRIES 16777216

typedef struct ss_handle ss_handle;

/* One table entry as copied out by ss_snapshot. */
typedef struct ss_entry_info {
    uint64_t start;     /* first byte of the region */
    uint64_t end;       /* one past the last byte */
    uint64_t since_ns;  /* CLOCK_REALTIME when granted (coarse, ~4 ms) or queued */
    uint64_t ticket;    /* arrival order; waiting entries are served by ticket */
    int64_t ref;        /* reference of this entry, as ss_lock/ss_pin return */
    uint32_t kind;      /* SS_SHARED, SS_EXCLUSIVE or SS_PIN */
    uint32_t state;     /* SS_GRANTED or SS_WAITING */
    uint32_t count;     /* pins: number of references; locks: 1 */
    int32_t pid;        /* owner process id as recorded at attach */
    int32_t tid;        /* owner thread id (locks), 0 for pins */
    int32_t alive;      /* 1 if the owning process still holds the table open */
} ss_entry_info;

/* Table-wide figures, as copied out by ss_stat. */
typedef struct ss_table_stat {
    uint64_t format;          /* format stamp (version and struct sizes) */
    uint64_t table_bytes;     /* size of the table file */
    uint64_t data_dev;        /* identity of the data file */
    uint64_t data_ino;
    uint64_t file_size;       /* data file size as last recorded through shmslice */
    uint64_t size_epoch;      /* bumped on every ss_resize */
    uint64_t created_ns;      /* CLOCK_REALTIME when the table was created */
    uint32_t capacity;        /* entries allocated now (the table grows to max_capacity) */
    uint32_t used;            /* entries in use (granted and waiting) */
    uint32_t waiting;         /* entries waiting */
    uint32_t proc_capacity;   /* process slots allocated now */
    uint32_t procs;           /* process slots in use (some may belong to dead processes) */
    uint32_t repairs;         /* times the table was repaired after a holder died */
    uint32_t max_capacity;    /* entry ceiling, fixed at creation */
    uint32_t max_procs;       /* process-slot ceiling */
    uint32_t reserve;         /* entries one process can never take (max_capacity - reserve
                               * is the most one process may hold) */
    uint32_t ceiling_source;  /* 1 given at creation, 2 the default, 3 lowered to what the
                               * lock directory's filesystem had room for */
    uint32_t growths;         /* times either table grew */
    uint32_t pad;
    uint64_t allocated_bytes; /* bytes the table file occupies (st_blocks * 512) */
} ss_table_stat;

/* One process slot in use, as copied out by ss_holders. */
typedef struct ss_holder_info {
    int32_t pid;              /* pid recorded at attach */
    uint32_t entries;         /* entries (locks, pins, waiting requests) it holds */
    uint64_t attached_ns;     /* CLOCK_REALTIME at attach */
    int32_t alive;            /* 1 if it still holds the table open */
    int32_t pad;
} ss_holder_info;

/* Name ("SS_ETIMEDOUT") and message of a status code; never NULL. */
const char *ss_status_name(int status);
const char *ss_status_message(int status);
/* errno of the calling thread's last SS_ESYS failure. */
int ss_last_errno(void);
/* Detail of the calling thread's last failure (path, offsets, owner pid). */
const char *ss_last_detail(void);

/* Longest lock table file name, with its NUL. */
#define SS_TABLE_NAME_MAX 64
/* The birth stamp ss_table_name_parse gives the name of a table of format 3
 * or older ("dev-ino.shmslice"), so that tools can list it for removal. */
#define SS_BIRTH_LEGACY 0xffffffffffffffffULL

/* File name (not path) of the lock table for data file identity (dev, ino,
 * birth); buflen must be at least SS_TABLE_NAME_MAX. */
int ss_table_name(uint64_t dev, uint64_t ino, uint64_t birth, char *buf, uint32_t buflen);

/*
 * The identity of the open file fd: st_dev, st_ino and a birth stamp that
 * tells a file from an earlier one that had the same inode number (its
 * statx birth time mixed with the inode generation, where the filesystem has
 * them; 0 where it has neither).  Any pointer may be NULL.
 */
int ss_file_identity(int fd, uint64_t *dev, uint64_t *ino, uint64_t *birth);

/*
 * Attach to the lock table of the open data file data_fd, creating it in the
 * directory table_dir if needed (unless SS_ATTACH_NOCREATE).  data_path is
 * recorded in a new table for display only.  max_entries is the entry
 * ceiling of a table created here (1 .. 2**24; 0: SS_DEFAULT_MAX_ENTRIES or
 * what table_dir's filesystem has room for, if less); an existing table
 * keeps its own.  On success *out is a new handle; close it with ss_close.
 */
int ss_attach(const char *table_dir, int data_fd, const char *data_path,
              uint32_t max_entries, uint32_t flags, ss_handle **out);

/*
 * Open an existing table file by its path, without a data file, for
 * inspection (ss_snapshot, ss_stat, ss_reap, ss_data_path).  The handle takes
 * no locks of its own.
 */
int ss_attach_table(const char *table_path, ss_handle **out);

/*
 * Release every entry this handle owns and detach (unmap, drop the liveness
 * lock).  If the data file is gone (its recorded path names no file or
 * another one) and no process is attached any more and the table holds no
 * entries, the table file is removed.  Waits for calls in flight in other threads; sleeping waiters return
 * SS_ECLOSED.  The handle stays allocated, and every later call on it returns
 * SS_ECLOSED, until ss_free.  Closing twice is harmless.
 */
int ss_close(ss_handle *h);

/* Close (if still open) and free the handle.  No call may follow. */
void ss_free(ss_handle *h);

/* Path of the table file (valid until ss_close). */
const char *ss_table_path(ss_handle *h);
/* Copy the data file path recorded at creation into buf (NUL-terminated). */
int ss_data_path(ss_handle *h, char *buf, uint32_t buflen);

/*
 * Take a shared or exclusive lock on [start, end), 0 <= start < end (signed
 * so that the Python binding converts arguments cheaply).  timeout_ns < 0 waits
 * forever, 0 tries once, > 0 waits at most that long (the table mutex
 * included).  Returns a reference (>= 0) on success, else SS_ETIMEDOUT,
 * SS_EDEADLK, SS_EFULL, SS_EINTR (a signal arrived: the request was
 * withdrawn), ...  Exclusive locks need a handle whose data_fd was open for
 * writing at ss_attach (else SS_ESYS with errno EACCES).  The wait protocol
 * and its fairness rule are described at the top of shmslice.c.
 */
int64_t ss_lock(ss_handle *h, int64_t start, int64_t end, int kind,
                int64_t timeout_ns);

/* State of one resumable lock request; private to the core.  Zero it before
 * the first ss_lock_wait of a request. */
typedef struct ss_wait {
    uint64_t deadline_ns;   /* CLOCK_MONOTONIC; 0: none */
    uint64_t probe_ns;      /* next liveness probe of the blockers */
    uint32_t entry;         /* our waiting entry (if has_entry) */
    uint32_t serial;        /* its serial */
    int32_t started;        /* set by the first call */
    int32_t has_entry;
    int32_t checked;        /* the self-deadlock check was made */
    int32_t reentrant;      /* -1 unknown, 1: the caller holds an overlapping lock */
    int32_t interrupted;    /* the last call's sleep ended by a signal */
    int32_t owner;          /* set by the caller before the first call: the lock's owner
                             * for deadlock detection; 0 = the calling thread */
    int32_t poll;           /* set by the caller: never sleep; on SS_EWAITING, wake_word
                             * and wake_seen say what to sleep on (ss_wait_many) */
    int32_t pad;
    uint32_t *wake_word;    /* poll: the request's futex word (NULL: no entry yet) */
    uint64_t recall_ns;     /* poll: CLOCK_MONOTONIC time by which to call again */
    uint32_t wake_seen;     /* poll: the word's value when the call returned */
    uint32_t pad2;
} ss_wait;

/*
 * ss_lock in resumable steps, for callers that must run signal handlers
 * while waiting.  Each call sleeps at most once and returns within about
 * 50 ms (and at once after a signal) with SS_EWAITING if the request is still
 * waiting: its place in the queue is kept; call again with the same w and
 * arguments to go on waiting, or ss_lock_cancel to give up.  Any other return
 * ends the request: a reference, or an error that left no entry behind.
 * timeout_ns counts from the first call.
 */
int64_t ss_lock_wait(ss_handle *h, ss_wait *w, int64_t start, int64_t end, int kind,
                     int64_t timeout_ns);

/* One hop of a deadlock cycle, as ss_last_cycle reports it: owner (pid,
 * tid) waits for [start, end) and is held back by the entry [held_start,
 * held_end) that owner (holder_pid, holder_tid) holds, the next hop's
 * waiter; the last hop's holder is the first hop's owner.  tid is a thread
 * id, or (negative) an owner id a caller named in ss_wait.owner. */
typedef struct ss_cycle_hop {
    uint64_t start;       /* the region this owner waits for */
    uint64_t end;
    uint64_t held_start;  /* the entry holding it back */
    uint64_t held_end;
    int32_t pid;          /* the waiting owner */
    int32_t tid;
    int32_t holder_pid;   /* the owner of that entry */
    int32_t holder_tid;
    uint32_t kind;        /* kind requested */
    uint32_t held_kind;   /* kind of the (granted) entry holding it back */
} ss_cycle_hop;

/* The cycle of the calling thread's last SS_EDEADLK: copies up to max hops
 * into out (may be NULL) and returns the number of hops (0 if that error
 * was the caller's own conflicting lock, not a cycle of several owners). */
int ss_last_cycle(ss_cycle_hop *out, uint32_t max);

/* Withdraw a request ss_lock_wait left waiting; a lock it was handed
 * meanwhile is released.  Never blocks for long: if the table mutex is not
 * free soon, the entry is flagged abandoned and removed by the next holder. */
int ss_lock_cancel(ss_handle *h, ss_wait *w);

/*
 * Convert shared lock ref (taken through this handle) into an exclusive one
 * on the same region, in place: the reference stays.  Resumable like
 * ss_lock_wait (zero w first; SS_EWAITING: call again, or ss_lock_cancel to
 * give up); the lock stays shared while it waits and whenever this fails
 * (SS_ETIMEDOUT, SS_EDEADLK: another holder of an overlapping shared lock is
 * upgrading too, ...).  No other request is granted an exclusive lock over
 * the region meanwhile: the shared lock keeps holding it.  Returns ref.
 */
int64_t ss_upgrade_wait(ss_handle *h, ss_wait *w, int64_t ref, int64_t timeout_ns);

/* Convert exclusive lock ref into a shared one in place (the reference
 * stays), in one step under the table mutex: waiting shared requests may
 * enter, no exclusive one can come in between. */
int ss_downgrade(ss_handle *h, int64_t ref);

/* Was lock ref granted over a region whose previous exclusive holder died
 * holding it (an owner-died mark, see shmslice.c)?  1, 0, or < 0. */
int ss_lock_owner_died(ss_handle *h, int64_t ref);

/* ss_lock_try for a caller-named owner (as ss_wait.owner; 0 = this thread). */
int64_t ss_lock_try_as(ss_handle *h, int64_t start, int64_t end, int kind, int32_t owner);

/*
 * Sleep until one of the n futex words changes from its value in seen[k]
 * (a release woke a polling request, or the caller's own control word was
 * bumped with ss_wake_word), a signal, or timeout_ns (< 0: no limit).  With
 * futex_waitv (Linux 5.16+) one system call waits on up to 128 words; beyond
 * that, or on an older kernel, it waits on words[0] only and at most 1 ms.
 * Returns 0 (woken, or a word had changed already), SS_ETIMEDOUT, SS_EINTR.
 */
int ss_wait_many(uint32_t **words, const uint32_t *seen, uint32_t n, int64_t timeout_ns);

/* Bump *word and wake its sleepers (the control word of ss_wait_many). */
void ss_wake_word(uint32_t *word);

/* A try-lock that never sleeps, not even for the table mutex: a reference,
 * SS_ETIMEDOUT (held back), SS_EAGAIN (the mutex is busy) or an error. */
int64_t ss_lock_try(ss_handle *h, int64_t start, int64_t end, int kind);

/* Release a lock taken with ss_lock through this handle.  If the table
 * mutex stays unavailable (a stopped holder) the entry is flagged abandoned:
 * it stops counting at once and the next holder of the mutex removes it. */
int ss_release(ss_handle *h, int64_t ref);

/* ss_release if the table mutex is free now, else SS_EAGAIN. */
int ss_release_try(ss_handle *h, int64_t ref);

/*
 * Add one pin on [start, end) for this handle (pins of one handle on the same
 * region share an entry and count).  Returns a reference (>= 0).
 */
int64_t ss_pin(ss_handle *h, int64_t start, int64_t end);

/* Drop one pin taken with ss_pin through this handle. */
int ss_unpin(ss_handle *h, int64_t ref);

/*
 * Is there a live pin or lock whose end is past offset?  Returns 1 and fills
 * *who (if not NULL) with the first one found, 0 if none, or a status < 0.
 * Entries of dead processes found on the way are reclaimed.
 */
int ss_reach_beyond(ss_handle *h, uint64_t offset, ss_entry_info *who);

/*
 * Set the data file's size to new_size (ftruncate; growth is pre-allocated
 * when the filesystem supports it).  Shrinking fails with SS_EBUSY, and *who
 * describes the blocker, while a live pin or lock reaches past new_size.
 */
int ss_resize(ss_handle *h, int data_fd, uint64_t new_size, ss_entry_info *who);

/* Data file size recorded in the table, and the resize epoch (or SS_ECLOSED). */
int64_t ss_file_size(ss_handle *h);
int64_t ss_size_epoch(ss_handle *h);

/*
 * The data file's write generation (or SS_ECLOSED): a counter in the table
 * that ss_note_write bumps after every write made through shmslice, in any
 * process.  Equal values mean no such write finished in between; writes made
 * without shmslice do not move it.  ss_note_write returns the new value.
 */
int64_t ss_write_gen(ss_handle *h);
int64_t ss_note_write(ss_handle *h);

/* ss_unpin and ss_note_write in one call (the release of a writable buffer). */
int ss_unpin_written(ss_handle *h, int64_t ref);

/*
 * Copy up to max entries into out; *count receives the number of entries
 * seen (which may exceed max: call again with a larger buffer).  Entries are
 * copied in chunks, with the table mutex released between chunks, and
 * liveness is probed after the copy: an entry in use for the whole call is
 * reported once; one made or removed during the call may or may not be;
 * alive = 1 means its owner was attached when the entry was copied and still
 * alive when probed.
 */
int ss_snapshot(ss_handle *h, ss_entry_info *out, uint32_t max, uint32_t *count);

/*
 * Sort n entries copied by ss_snapshot, in place, into region order: by
 * start, end, kind name ("exclusive" < "orphaned" < "pin" < "shared"), pid
 * (as unsigned), then table order (entry index).  Touches no table; the
 * order of a listing by region, made without a key per entry.
 */
int ss_snapshot_sort(ss_entry_info *entries, uint32_t n);

/* Copy the table-wide figures into *out. */
int ss_stat(ss_handle *h, ss_table_stat *out);

/*
 * Copy up to max of the process slots in use, or holding entries, into out
 * (one mutex hold; liveness probed after it); *count receives how many
 * there are (call again with a larger buffer if more than max).
 */
int ss_holders(ss_handle *h, ss_holder_info *out, uint32_t max, uint32_t *count);

/*
 * Remove every entry of a dead process; *removed receives how many.  Also
 * removes temporary table files that killed creators left in the table's
 * directory (as ss_clean_temp_files, not counted in *removed).
 */
int ss_reap(ss_handle *h, uint32_t *removed);

/* ss_remove_table flags. */
#define SS_REMOVE_DRY_RUN 1

/*
 * Remove the table file a handle from ss_attach_table inspects, if no
 * process is attached to it (then every entry left in it is a dead
 * process's).  Safe against processes attaching meanwhile: they end up on a
 * new table, never on the removed one.  With SS_REMOVE_DRY_RUN, only say
 * whether it would be removed.  *freed receives the bytes the file occupies
 * (allocated blocks).  Returns SS_OK (removed, or would be), SS_EINUSE (a
 * process is attached), SS_ENOENT (removed meanwhile) or an error.  The
 * handle stays usable (on the removed file) until ss_close.
 */
int ss_remove_table(ss_handle *h, uint32_t flags, uint64_t *freed);

/*
 * Remove the temporary files that processes killed while creating a table
 * left in table_dir (only where the filesystem lacks O_TMPFILE are such
 * files made; a file is removed once its creator no longer holds its lock
 * and it is 2 s old).  *removed receives how many.
 */
int ss_clean_temp_files(const char *table_dir, uint32_t *removed);

/*
 * Allocate every hole of the open data file data_fd within [start, end), so
 * that writing there through a mapping never needs a block at page-fault
 * time (where a full filesystem is SIGBUS).  Contents and size do not change.
 * Returns the bytes allocated (0 also where the filesystem cannot allocate
 * or report holes), or SS_ESYS (errno ENOSPC on a full filesystem; holes
 * allocated before the failure stay allocated, still reading as zeros).
 */
int64_t ss_allocate_holes(int data_fd, uint64_t start, uint64_t end);


/*
 * Test hook, off unless set: the calling process kills itself with SIGKILL
 * the countdown-th time it reaches crash point `point` (points are listed in
 * shmslice.c; most are inside the table mutex).  point 0 disables it.
 */
void ss_debug_set_crash_point(int point, int countdown);

/* Test hook: on != 0 makes this process build new tables under a temporary
 * name, as on a filesystem without O_TMPFILE. */
void ss_debug_set_named_temp(int on);

/*
 * Describe the table file's layout for tools and tests: writes lines
 * "field NAME OFFSET SIZE" and "const NAME VALUE" into buf (NUL-terminated,
 * truncated to buflen) and returns the full length, so a caller whose buffer
 * was too short can call again with a larger one.
 */
int ss_layout(char *buf, uint32_t buflen);

/*
 * If name is a lock table file name (as ss_table_name makes), store the data
 * file identity it names in *dev, *ino and *birth and return SS_OK; else
 * SS_EINVAL.  Names of tables of format 3 or older, "dev-ino.shmslice", parse
 * with *birth = SS_BIRTH_LEGACY.
 */
int ss_table_name_parse(const char *name, uint64_t *dev, uint64_t *ino, uint64_t *birth);

/* Test hook: on != 0 makes this process attach and remove tables without
 * the guard (see shmslice.c), as code without it would: only for tests that
 * show the race the guard prevents. */
void ss_debug_set_unguarded(int on);

/* Benchmark hook: on == 0 turns off the cycle search of this process's
 * waiting requests (to measure what it costs); on by default. */
void ss_debug_set_deadlock_detection(int on);

/* Test hook: like ss_debug_set_crash_point, but the process stops itself
 * with SIGSTOP there (once), keeping the table mutex until SIGCONT. */
void ss_debug_set_stop_point(int point, int countdown);

/* Test hook: attach validation in this process goes `entries` entries per
 * step (a hold of the table mutex each) instead of its default 8192, and
 * makes no private copy of a table larger than copy_max_bytes instead of
 * 256 MiB (0 restores either default).  Small values make the multi-step and
 * the no-copy paths run on small tables. */
void ss_debug_set_attach_step(uint32_t entries, uint64_t copy_max_bytes);

/* Test and benchmark hook: how the calling thread's last attach validated
 * its table: passes made, mutex holds taken, whether a consistent copy was
 * checked whole (1) or only entry by entry (0), and its longest hold (ns). */
void ss_debug_attach_stats(uint32_t *passes, uint32_t *holds, uint32_t *whole,
                           uint64_t *longest_hold_ns);

/* Test hook: on != 0 makes ss_wait_many use its fallback (one word, naps
 * of at most 1 ms), as on a kernel without futex_waitv; 0 tries it again. */
void ss_debug_set_no_waitv(int on);

#endif /* SHMSLICE_H */
