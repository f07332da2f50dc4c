/*
 * slice.c -- ByteBufferSlice, the zero-copy slice of a mapped file, and
 * FileBase, the C part of every MappedFile (compiled into shmslice._fastpath).
 *
 * This is the ByteBufferSlice of the PEP 3118 discussion: an object that
 * re-exports part of another object's buffer (the file's mmap) and raises a
 * lock count while it does -- here a *pin* in the file's shared lock table,
 * which stops every process from shrinking the file under the region.  It
 * implements bf_getbuffer/bf_releasebuffer itself, so memoryview(s),
 * hashlib, zlib, os.write, numpy and pyarrow take it directly on every
 * Python version (3.11 has no PEP 688).
 *
 * Ownership:
 *   MapHold   holds one buffer export of one mmap: while it lives the mmap
 *             cannot be closed (mmap.close raises BufferError), so memory
 *             reached through it is always mapped.  A FileBase holds the
 *             current one; a resize makes a new one, and the old one lives
 *             on while slices made from it do.
 *   Slice     holds its FileBase and, while it may touch memory (it is live,
 *             or buffers exported from it are), its MapHold.  A live non-empty
 *             slice holds one pin and sits on its file's list of live slices,
 *             so close() can drop every slice's pin in one walk.
 *   export    every buffer exported from a slice takes a pin of its own (kept
 *             in Py_buffer.internal) and drops it in bf_releasebuffer; the
 *             memoryview holding the export holds the slice, which holds the
 *             MapHold.  Releasing the slice first does not end its exports.
 *
 * Everything here runs with the GIL held; the counters and lists below are
 * guarded by it.  Fork: a child inherits slices and exports whose pins belong
 * to the parent; fork_generation (bumped in the child by pthread_atfork)
 * tells a slice to take its own pin before touching memory, and the child
 * never drops a pin of the parent's (the core answers SS_ENOTOWNER).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "shmslice.h"
#include "ss_status.h"
#include "ss_pinmap.h"

#if PY_VERSION_HEX >= 0x030D0000
/* Still exported by 3.13, but its declaration moved to an internal header. */
PyAPI_FUNC(Py_hash_t) _Py_HashBytes(const void *, Py_ssize_t);
#endif

/* From fastpath.c: the manager's core handle (NULL once closed), its pin
 * counts and its type. */
ss_handle *ss_fp_manager_handle(PyObject *manager);
ss_pinmap *ss_fp_manager_pins(PyObject *manager);   /* pin()'s counts, see ss_pinmap.h */
PyTypeObject *ss_fp_manager_type(void);
int ss_fp_slice_init(PyObject *module);

typedef int64_t (*pin_fn)(ss_handle *, int64_t, int64_t);
typedef int (*unpin_fn)(ss_handle *, int64_t);
typedef int64_t (*epoch_fn)(ss_handle *);

static pin_fn core_pin;        /* set once by bind_slices() */
static unpin_fn core_unpin;
static epoch_fn core_size_epoch;
static epoch_fn core_note_write;   /* set by bind_write_gen(); NULL: writes are not counted */
static unpin_fn core_unpin_written;   /* unpin + note_write, set by bind_write_gen() */
static PyObject *tokenize_helper;  /* shmslice.slices._tokenize, set by bind_write_gen() */
static PyObject *array_helper;     /* shmslice.arrays.asarray, set by bind_slices() */
static PyObject *rebuild_helper;   /* shmslice.slices._rebuild */

static PyObject *str_slice_slow, *str_byte_at, *str_refresh, *str_finish_close,
    *str_raise_status, *str_lock, *str_hex, *str_lock_async;

/* Bumped in every forked child: a slice whose generation differs was
 * inherited and its pin is the parent's. */
static unsigned long fork_generation;
static void after_fork_in_child(void) { fork_generation++; }

/* Slice state in SliceObject.ref: a pin reference (>= 0), or one of these. */
#define REF_RELEASED (-1)   /* released (or its file closed): every use raises */
#define REF_EMPTY (-2)      /* live and empty: no memory, so no pin and no mapping */

/* Kinds of buffer export, counted per file for close()'s messages. */
enum { EXPORT_BUFFER, EXPORT_VIEW, EXPORT_ARRAY, EXPORT_KINDS };

/* --- MapHold -------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Py_buffer view;        /* export of the whole mmap; view.obj is the mmap */
} MapHold;

static void map_hold_dealloc(MapHold *self)
{
    PyBuffer_Release(&self->view);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject MapHoldType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmslice._fastpath.MapHold",
    .tp_doc = "One buffer export of a file's mmap: it stays mapped while this lives.",
    .tp_basicsize = sizeof(MapHold),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)map_hold_dealloc,
};

/* --- FileBase (C part of MappedFile) -------------------------------------- */

typedef struct SliceObject SliceObject;

/* A bound __enter__ or __exit__ of one slice, kept inside the slice: a
 * reference count of 0 means not handed out (see "the with statement"). */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
} WithMethod;

typedef struct {
    PyObject_HEAD
    PyObject *mgr;          /* the LockManager (a ManagerBase); pins go through it */
    MapHold *map;           /* current mapping of `size` bytes; NULL when empty or closed */
    PyObject *path;         /* str, for messages */
    PyObject *desc;         /* (abspath, identity, origin, writable, lock_dir) for pickling;
                             * a stale descriptor's placeholder: the exception */
    long long size;         /* file size as of `epoch` */
    long long epoch;        /* resize epoch that size was read at (-1: never) */
    char readonly;          /* mapped read-only (mode "r") */
    char closed;            /* close() ran: no new slices; slices unusable */
    char closing;           /* closed while exports lived: finish at the last */
    Py_ssize_t exports[EXPORT_KINDS];   /* live buffer exports, by kind */
    SliceObject *live;      /* live pinned slices (doubly linked, borrowed) */
    Py_ssize_t nlive;
    SliceObject *busy;      /* slices with buffer exports alive (doubly linked, borrowed) */
    Py_ssize_t nbusy;
    char trim;              /* drop released pages from this process (see "Trimming") */
    long long trim_lo, trim_hi;   /* pending small released ranges: their hull in `map` */
    long long trim_pending;       /* bytes released into [trim_lo, trim_hi) since the last drop */
    long long trim_calls, trim_bytes, trim_failures;   /* madvise calls, bytes, failures */
    PyObject *weakrefs;
} FileBase;

static PyTypeObject FileBaseType;

struct SliceObject {
    PyObject_HEAD
    FileBase *file;         /* strong */
    MapHold *map;           /* strong while live or exported; else NULL */
    char *buf;              /* first byte of the region (valid while map) */
    long long start, end;   /* absolute region [start, end) */
    int64_t ref;            /* pin reference, REF_RELEASED or REF_EMPTY */
    unsigned long gen;      /* fork_generation when ref was taken */
    Py_ssize_t exports;     /* live buffer exports of this slice */
    int export_kind;        /* kind the next export counts as (our own methods set it) */
    SliceObject *prev, *next;   /* in file->live while ref >= 0 */
    SliceObject *bprev, *bnext; /* in file->busy while exports > 0 */
    PyObject *weakrefs;
    WithMethod enter_method;    /* s.__enter__ and s.__exit__ (see "the with statement") */
    WithMethod exit_method;
    /* Unused: rounds the size up to 192 bytes.  At 176 (the fields alone),
     * `s = mf[a:b]; s.release()` measured about 10% slower on 3.12 than at
     * 128, 160 or 192 (the allocator's size class: the block sizes 160 and 192
     * were the slow ones); bench/bench_slices.py is the judge if fields change. */
    char size_pad[16];
};

#if !defined(Py_TRACE_REFS) && !defined(Py_GIL_DISABLED)
_Static_assert(sizeof(struct SliceObject) == 192, "see size_pad in SliceObject");
#endif

static PyTypeObject SliceType;

static ss_handle *file_handle(FileBase *f)
{
    return f->mgr ? ss_fp_manager_handle(f->mgr) : NULL;
}

/* Raise the exception LockManager._raise_status maps status to. */
static void raise_status(FileBase *f, long long status)
{
    if (!f->mgr) {
        PyErr_Format(PyExc_RuntimeError, "shmslice core status %lld", status);
        return;
    }
    PyObject *st = PyLong_FromLongLong(status);
    if (!st) return;
    PyObject *args[] = {f->mgr, st};
    PyObject *res = PyObject_VectorcallMethod(str_raise_status, args,
                                              2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(st);
    Py_XDECREF(res);
    if (!PyErr_Occurred())
        PyErr_Format(PyExc_RuntimeError, "shmslice core status %lld", status);
}

static void live_push(FileBase *f, SliceObject *s)
{
    s->prev = NULL;
    s->next = f->live;
    if (f->live) f->live->prev = s;
    f->live = s;
    f->nlive++;
}

static void live_unlink(FileBase *f, SliceObject *s)
{
    if (s->prev) s->prev->next = s->next;
    else if (f->live == s) f->live = s->next;
    else return;   /* not on the list */
    if (s->next) s->next->prev = s->prev;
    s->prev = s->next = NULL;
    f->nlive--;
    assert(f->nlive >= 0);
}

/* --- Trimming -------------------------------------------------------------
 *
 * Every page of a MAP_SHARED file mapping that this process touched counts
 * in its RSS for as long as it stays mapped, and memory guards (dask's
 * nanny, loky's leak check) read RSS.  So when a slice stops being used --
 * it is released with no buffer exported from it alive, or the last buffer
 * exported from it (a memoryview, an array, zlib's or hashlib's export) is
 * released, even while the slice itself lives on -- its pages are dropped
 * from this process's page tables with madvise(MADV_DONTNEED).  (Engines keep
 * a task's arguments alive until the client forgets its result, so a live
 * slice that nothing reads must not hold pages.)  For a shared file mapping that
 * loses nothing: the data stays in the page cache, dirty pages stay dirty
 * and are written back (msync/flush work as before), and the next touch
 * maps the page again (a minor fault).  So dropping a page that something
 * in the process still uses is safe too: it costs a refault, never data.
 *
 * A madvise call costs more than a slice, so ranges of at least TRIM_AT_ONCE
 * bytes are dropped at once, and smaller ones are gathered into one hull and
 * dropped together once TRIM_BATCH bytes were released into it: at most that
 * much released memory stays counted.  Pages under buffers still in use (of
 * slices on the file's busy list) are left out of a drop, when at most
 * TRIM_BUSY_MAX slices are busy; beyond that their users may fault pages
 * back in.  A live slice that has no buffer in use may have its pages
 * dropped by a neighbour's release and fault them back in if read again.
 * The hull is kept in offsets of the current mapping; it is dropped before
 * that mapping is replaced.  Every mapping here is MAP_SHARED (MappedFile._remap):
 * on a private mapping MADV_DONTNEED would discard the process's copies. */

#define TRIM_AT_ONCE (256LL * 1024)
#define TRIM_BATCH (4LL * 1024 * 1024)
#define TRIM_BUSY_MAX 32

static long long page_mask = 4095;   /* page size - 1 (a power of two), set by ss_fp_slice_init */
#define PAGE_DOWN(x) ((x) & ~page_mask)
#define PAGE_UP(x) (((x) + page_mask) & ~page_mask)

/* Drop [a, b) of hold's mapping, widened to whole pages, from this process. */
static void trim_range(FileBase *f, MapHold *hold, long long a, long long b)
{
    if (b > (long long)hold->view.len) b = hold->view.len;
    long long first = PAGE_DOWN(a);
    if (first >= b) return;
    assert(((uintptr_t)hold->view.buf & (uintptr_t)page_mask) == 0);
    /* Advice only: on failure the pages stay counted, nothing else changes. */
    if (madvise((char *)hold->view.buf + first, (size_t)(b - first), MADV_DONTNEED) == 0) {
        f->trim_calls++;
        f->trim_bytes += b - first;
    } else {
        f->trim_failures++;
    }
}

typedef struct { long long start, end; } Span;   /* pages to keep */

static int span_order(const void *pa, const void *pb)
{
    const Span *a = pa, *b = pb;
    return (a->start > b->start) - (a->start < b->start);
}

/* Drop [lo, hi) of the current mapping, widened to whole pages, except the
 * pages under buffers still in use (if at most TRIM_BUSY_MAX slices have some). */
static void trim_except_busy(FileBase *f, long long lo, long long hi)
{
    Span keep[TRIM_BUSY_MAX];
    int n = 0;
    if (f->nbusy <= TRIM_BUSY_MAX) {
        for (SliceObject *s = f->busy; s; s = s->bnext)
            if (s->map == f->map && s->start < hi && s->end > lo && n < TRIM_BUSY_MAX)
                keep[n++] = (Span){PAGE_DOWN(s->start), s->end};
        if (n > 1) qsort(keep, (size_t)n, sizeof *keep, span_order);
    }
    long long at = lo;   /* the next byte that may be dropped */
    for (int i = 0; i < n && at < hi; i++) {
        /* keep[i].start is page-aligned, so widening `at` down stays clear of it */
        if (keep[i].start > at) trim_range(f, f->map, at, keep[i].start < hi ? keep[i].start : hi);
        long long past = PAGE_UP(keep[i].end);
        if (past > at) at = past;
    }
    if (at < hi) trim_range(f, f->map, at, hi);
}

/* Drop the gathered hull now (if any). */
static void trim_flush(FileBase *f)
{
    long long lo = f->trim_lo, hi = f->trim_hi;
    f->trim_lo = f->trim_hi = f->trim_pending = 0;
    if (hi > lo && f->map) trim_except_busy(f, lo, hi);
}

/* Nothing in this process uses [a, b) of hold's mapping through this slice
 * any more: drop its pages, now or with the next batch. */
static inline void trim_released(FileBase *f, MapHold *hold, long long a, long long b)
{
    if (!f->trim || f->closed || !hold || b <= a) return;
    if (hold != f->map) {   /* a mapping from before a resize: nothing else is gathered there */
        trim_range(f, hold, a, b);
        return;
    }
    if (b - a >= TRIM_AT_ONCE) {
        trim_except_busy(f, a, b);
        return;
    }
    if (f->trim_hi > f->trim_lo) {
        if (a < f->trim_lo) f->trim_lo = a;
        if (b > f->trim_hi) f->trim_hi = b;
    } else {
        f->trim_lo = a;
        f->trim_hi = b;
    }
    /* Counted in whole pages: a one-byte read maps (at least) a page. */
    f->trim_pending += PAGE_UP(b) - PAGE_DOWN(a);
    if (f->trim_pending >= TRIM_BATCH) trim_flush(f);
}

/* A write through shmslice may have changed the file: bump its write
 * generation (the cache keys of slices and arrays include it). */
static inline void note_write(FileBase *f)
{
    ss_handle *h = file_handle(f);
    if (h && core_note_write) (void)core_note_write(h);
}

/* The file's busy list: slices whose buffers are in use, whose pages a drop
 * leaves alone.  A slice with exports holds no reference of its own here;
 * each export (its memoryview) keeps it alive while it is listed. */
static void busy_push(FileBase *f, SliceObject *s)
{
    s->bprev = NULL;
    s->bnext = f->busy;
    if (f->busy) f->busy->bprev = s;
    f->busy = s;
    f->nbusy++;
}

static void busy_unlink(FileBase *f, SliceObject *s)
{
    if (s->bprev) s->bprev->bnext = s->bnext;
    else if (f->busy == s) f->busy = s->bnext;
    else return;
    if (s->bnext) s->bnext->bprev = s->bprev;
    s->bprev = s->bnext = NULL;
    f->nbusy--;
    assert(f->nbusy >= 0);
}

/* A new slice of [a, b) owning pin ref (REF_EMPTY: none).  On failure the pin
 * is dropped: nothing else could ever drop it. */
static PyObject *slice_new(FileBase *f, MapHold *map, long long a, long long b, int64_t ref)
{
    SliceObject *s = PyObject_GC_New(SliceObject, &SliceType);
    if (!s) {
        ss_handle *h = file_handle(f);
        if (ref >= 0 && h) (void)core_unpin(h, ref);
        return NULL;
    }
    Py_INCREF(f);
    s->file = f;
    if (ref == REF_EMPTY) map = NULL;
    Py_XINCREF(map);
    s->map = map;
    s->buf = map ? (char *)map->view.buf + a : NULL;
    s->start = a;
    s->end = b;
    s->ref = ref;
    s->gen = fork_generation;
    s->exports = 0;
    s->export_kind = EXPORT_BUFFER;
    s->weakrefs = NULL;
    s->prev = s->next = NULL;
    s->bprev = s->bnext = NULL;
    /* __enter__/__exit__ not handed out: a count of 0 (the rest is set when
     * one is; see with_method_bind) */
#if defined(Py_REF_DEBUG) || defined(Py_TRACE_REFS) || defined(Py_GIL_DISABLED)
    memset(&s->enter_method, 0, sizeof s->enter_method);
    memset(&s->exit_method, 0, sizeof s->exit_method);
#else
    s->enter_method.ob_base.ob_refcnt = 0;
    s->exit_method.ob_base.ob_refcnt = 0;
#endif
    if (ref >= 0) live_push(f, s);
    PyObject_GC_Track(s);
    return (PyObject *)s;
}

/* --- Slice: state ---------------------------------------------------------- */

/* Raise a new copy of the exception a stale descriptor's placeholder file
 * keeps in its desc (see file_stale_slice): type(*exc.__reduce__()[1]). */
static void stale_error(PyObject *exc)
{
    PyObject *red = PyObject_CallMethod(exc, "__reduce__", NULL);
    if (!red) return;
    if (PyTuple_Check(red) && PyTuple_GET_SIZE(red) >= 2) {
        PyObject *copy = PyObject_CallObject(PyTuple_GET_ITEM(red, 0), PyTuple_GET_ITEM(red, 1));
        if (copy) {
            PyErr_SetObject((PyObject *)Py_TYPE(copy), copy);
            Py_DECREF(copy);
        }
    } else {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    }
    Py_DECREF(red);
}

static void dead_error(SliceObject *s)
{
    if (s->file->desc && PyExceptionInstance_Check(s->file->desc)) {
        stale_error(s->file->desc);
        return;
    }
    if (s->file->closed)
        PyErr_Format(PyExc_ValueError,
                     "ByteBufferSlice [%lld, %lld) of %S is unusable: its MappedFile was closed",
                     s->start, s->end, s->file->path);
    else
        PyErr_Format(PyExc_ValueError,
                     "ByteBufferSlice [%lld, %lld) of %S was released; slice the MappedFile again",
                     s->start, s->end, s->file->path);
}

/* Drop the pin and (unless exports still need it) the mapping. */
static int slice_release_impl(SliceObject *s)
{
    int64_t ref = s->ref;
    int rc = 0;
    s->ref = REF_RELEASED;
    if (ref >= 0) {
        live_unlink(s->file, s);
        ss_handle *h = file_handle(s->file);
        if (s->gen == fork_generation && h) rc = core_unpin(h, ref);
        if (s->exports == 0) trim_released(s->file, s->map, s->start, s->end);
    }
    if (s->exports == 0) Py_CLEAR(s->map);
    if (rc < 0 && rc != SS_ECLOSED && rc != SS_ENOTOWNER) {
        raise_status(s->file, rc);
        return -1;
    }
    return 0;
}

/* An inherited slice used in a forked child: take a pin of our own, then
 * check that the region still exists (the parent's pin may be gone). */
static int slice_adopt(SliceObject *s)
{
    FileBase *f = s->file;
    if (s->ref == REF_EMPTY) {
        s->gen = fork_generation;
        return 0;
    }
    ss_handle *h = file_handle(f);
    if (!h) {
        dead_error(s);
        return -1;
    }
    int64_t ref = core_pin(h, s->start, s->end);
    if (ref < 0) {
        raise_status(f, ref);
        return -1;
    }
    PyObject *res = PyObject_CallMethodNoArgs((PyObject *)f, str_refresh);
    if (!res) {
        (void)core_unpin(h, ref);
        return -1;
    }
    Py_DECREF(res);
    if (s->end > f->size) {
        (void)core_unpin(h, ref);
        s->gen = fork_generation;   /* the old pin is the parent's: never drop it */
        (void)slice_release_impl(s);
        PyErr_Format(PyExc_ValueError,
                     "ByteBufferSlice [%lld, %lld) of %S no longer exists: the file was "
                     "shrunk to %lld bytes", s->start, s->end, f->path, f->size);
        return -1;
    }
    s->ref = ref;
    s->gen = fork_generation;
    return 0;
}

/* 0 if the slice may touch its memory now; else -1 with an exception. */
static inline int slice_usable(SliceObject *s)
{
    if (s->ref == REF_RELEASED || s->file->closed) {
        dead_error(s);
        return -1;
    }
    if (s->gen != fork_generation) return slice_adopt(s);
    return 0;
}

static inline Py_ssize_t slice_len(SliceObject *s)
{
    return (Py_ssize_t)(s->end - s->start);
}

/* --- Slice: buffer protocol ----------------------------------------------- */

/* Py_buffer.internal of an export: NULL for an empty region (no pin); for a
 * plain export the pin reference with the top bit set; for a counted kind
 * (view, array) a pointer to an ExportRecord.  Pin references are < 2**63 and
 * user-space pointers never have the top bit set (64-bit Linux). */
typedef struct {
    int64_t ref;
    int kind;
} ExportRecord;

#define PLAIN_EXPORT_BIT ((uintptr_t)1 << 63)
_Static_assert(sizeof(void *) == 8, "export tagging needs 64-bit pointers");

static char empty_region[1];

static int slice_getbuffer(SliceObject *s, Py_buffer *view, int flags)
{
    FileBase *f = s->file;
    view->obj = NULL;
    if (slice_usable(s) < 0) return -1;
    if ((flags & PyBUF_WRITABLE) && f->readonly) {
        PyErr_Format(PyExc_BufferError,
                     "%S was mapped read-only (mode 'r'); a writable buffer needs mode='r+'",
                     f->path);
        return -1;
    }
    if (s->ref == REF_EMPTY) {
        if (PyBuffer_FillInfo(view, (PyObject *)s, empty_region, 0, f->readonly, flags) < 0)
            return -1;
        view->internal = NULL;
        return 0;
    }
    ss_handle *h = file_handle(f);
    if (!h) {
        dead_error(s);
        return -1;
    }
    int64_t ref = core_pin(h, s->start, s->end);
    if (ref < 0) {
        raise_status(f, ref);
        return -1;
    }
    int kind = s->export_kind;
    void *internal;
    if (kind == EXPORT_BUFFER) {
        internal = (void *)((uintptr_t)ref | PLAIN_EXPORT_BIT);
    } else {
        ExportRecord *rec = PyMem_Malloc(sizeof *rec);
        if (!rec) {
            (void)core_unpin(h, ref);
            PyErr_NoMemory();
            return -1;
        }
        rec->ref = ref;
        rec->kind = kind;
        internal = rec;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)s, s->buf, slice_len(s), f->readonly, flags) < 0) {
        if (kind != EXPORT_BUFFER) PyMem_Free(internal);
        (void)core_unpin(h, ref);
        return -1;
    }
    view->internal = internal;
    if (s->exports++ == 0) busy_push(f, s);
    f->exports[kind]++;
    return 0;
}

static Py_ssize_t file_total_exports(FileBase *f)
{
    Py_ssize_t n = 0;
    for (int k = 0; k < EXPORT_KINDS; k++) n += f->exports[k];
    return n;
}

/* The last export of a file closed while exports lived: unmap and detach now
 * (MappedFile._finish_close).  Called from bf_releasebuffer, which cannot
 * fail: an error is reported through sys.unraisablehook. */
static void file_finish_deferred_close(FileBase *f)
{
    f->closing = 0;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *res = PyObject_CallMethodNoArgs((PyObject *)f, str_finish_close);
    if (!res) PyErr_WriteUnraisable((PyObject *)f);
    Py_XDECREF(res);
    PyErr_Restore(type, value, tb);
}

static void slice_releasebuffer(SliceObject *s, Py_buffer *view)
{
    uintptr_t internal = (uintptr_t)view->internal;
    if (!internal) return;   /* empty: nothing pinned or counted */
    FileBase *f = s->file;
    int64_t ref;
    int kind;
    if (internal & PLAIN_EXPORT_BIT) {
        ref = (int64_t)(internal & ~PLAIN_EXPORT_BIT);
        kind = EXPORT_BUFFER;
    } else {
        ExportRecord *rec = (ExportRecord *)internal;
        ref = rec->ref;
        kind = rec->kind;
        PyMem_Free(rec);
    }
    view->internal = NULL;
    ss_handle *h = file_handle(f);
    /* In a forked child an inherited export's pin is the parent's: the core
     * refuses to drop it (SS_ENOTOWNER), as it must. */
    /* A writable buffer's consumer may have written through it: count a write. */
    int rc = !h ? SS_ECLOSED
           : (!f->readonly && core_unpin_written) ? core_unpin_written(h, ref) : core_unpin(h, ref);
    s->exports--;
    f->exports[kind]--;
    assert(s->exports >= 0 && f->exports[kind] >= 0);
    if (s->exports == 0) {
        busy_unlink(f, s);
        /* The last buffer of the region is gone: drop its pages even if the
         * slice lives on (an engine may keep a task's arguments alive long
         * after the task ran); a later use maps them again. */
        trim_released(f, s->map, s->start, s->end);
        if (s->ref == REF_RELEASED) Py_CLEAR(s->map);
    }
    if (rc < 0 && rc != SS_ECLOSED && rc != SS_ENOTOWNER) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        raise_status(f, rc);
        PyErr_WriteUnraisable((PyObject *)s);
        PyErr_Restore(type, value, tb);
    }
    if (f->closing && file_total_exports(f) == 0) file_finish_deferred_close(f);
}

static PyBufferProcs slice_as_buffer = {
    .bf_getbuffer = (getbufferproc)slice_getbuffer,
    .bf_releasebuffer = (releasebufferproc)slice_releasebuffer,
};

/* A memoryview of the slice whose export counts as `kind`. */
static PyObject *slice_export(SliceObject *s, int kind)
{
    s->export_kind = kind;
    PyObject *mv = PyMemoryView_FromObject((PyObject *)s);
    s->export_kind = EXPORT_BUFFER;
    return mv;
}

/* --- Slice: lifetime ---------------------------------------------------------- */

static int slice_traverse(SliceObject *s, visitproc visit, void *arg)
{
    Py_VISIT(s->file);
    return 0;
}

/* In a garbage cycle: drop the pin; the references go with the dealloc that
 * clearing the cycle's other members causes.  The mapping must outlive every
 * export, so it is never cleared here. */
static int slice_clear(SliceObject *s)
{
    if (s->ref >= 0) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (slice_release_impl(s) < 0) PyErr_WriteUnraisable((PyObject *)s);
        PyErr_Restore(type, value, tb);
    }
    return 0;
}

static void slice_dealloc(SliceObject *s)
{
    PyObject_GC_UnTrack(s);
    if (s->weakrefs) PyObject_ClearWeakRefs((PyObject *)s);
    assert(s->exports == 0);   /* every export holds a reference to us */
    /* so does every bound __enter__/__exit__ handed out */
    assert(Py_REFCNT(&s->enter_method) == 0 && Py_REFCNT(&s->exit_method) == 0);
    if (s->ref >= 0) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (slice_release_impl(s) < 0) PyErr_WriteUnraisable((PyObject *)s);
        PyErr_Restore(type, value, tb);
    }
    Py_CLEAR(s->map);
    Py_CLEAR(s->file);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *slice_tp_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyErr_SetString(PyExc_TypeError,
                    "ByteBufferSlice objects are made by slicing a MappedFile: "
                    "mf = shmslice.open(path); s = mf[start:end]");
    return NULL;
}

/* --- Slice: methods ---------------------------------------------------------------- */

static PyObject *slice_release(SliceObject *s, PyObject *unused)
{
    if (s->ref == REF_RELEASED) Py_RETURN_NONE;
    if (slice_release_impl(s) < 0) return NULL;
    Py_RETURN_NONE;
}

/* --- Slice: the with statement --------------------------------------------
 *
 * `with mf[a:b]:` (BEFORE_WITH on 3.11 to 3.13) looks __enter__ and __exit__
 * up on the type and binds both through their descriptors' tp_descr_get
 * before calling them, where `s.release()` binds nothing (its call is
 * specialised into a direct C call).  A bound builtin method would be a
 * garbage-collected object allocated and freed per statement.  So every
 * slice carries its own two bound methods (WithMethod, inside SliceObject).
 * Binding one that is not handed out (reference count 0) only sets its header
 * and takes a reference to the slice; binding it while it is out hands out
 * the same object again (so `s.__exit__ is s.__exit__` may hold, as for no
 * other method: nothing may rely on either answer).  When its last reference
 * goes, its dealloc drops the slice's reference and nothing else, and its
 * memory stays with the slice.  The slice cannot go first: a bound method
 * handed out holds a reference to it. */

typedef struct {
    PyObject_HEAD
    int is_exit;
} WithDescr;

static PyTypeObject WithDescrType, EnterMethodType, ExitMethodType;

static inline SliceObject *enter_owner(WithMethod *m)
{
    return (SliceObject *)((char *)m - offsetof(SliceObject, enter_method));
}

static inline SliceObject *exit_owner(WithMethod *m)
{
    return (SliceObject *)((char *)m - offsetof(SliceObject, exit_method));
}

/* s.__enter__(): the slice itself, if it is usable. */
static PyObject *enter_call(WithMethod *m, PyObject *const *args, size_t nargsf,
                            PyObject *kwnames)
{
    SliceObject *s = enter_owner(m);
    if (PyVectorcall_NARGS(nargsf) || (kwnames && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "ByteBufferSlice.__enter__() takes no arguments");
        return NULL;
    }
    if (slice_usable(s) < 0) return NULL;
    Py_INCREF(s);
    return (PyObject *)s;
}

/* s.__exit__(*exc_info): release() (the same routine, called directly);
 * returns None, so an exception raised in the block propagates. */
static PyObject *exit_call(WithMethod *m, PyObject *const *args, size_t nargsf,
                           PyObject *kwnames)
{
    SliceObject *s = exit_owner(m);
    if (s->ref != REF_RELEASED && slice_release_impl(s) < 0) return NULL;
    Py_RETURN_NONE;
}

static void enter_method_dealloc(WithMethod *m)
{
    Py_DECREF(enter_owner(m));   /* may free m: touch nothing after */
}

static void exit_method_dealloc(WithMethod *m)
{
    Py_DECREF(exit_owner(m));
}

/* Hand out s's bound method m (of type `type`, calling `call`). */
static inline PyObject *with_method_bind(WithMethod *m, PyTypeObject *type, vectorcallfunc call,
                                         SliceObject *s)
{
    if (Py_REFCNT(m) > 0) {
        Py_INCREF(m);
        return (PyObject *)m;
    }
#if defined(Py_REF_DEBUG) || defined(Py_TRACE_REFS) || defined(Py_GIL_DISABLED)
    /* builds that count or list every object: a new reference the usual way */
    (void)PyObject_Init((PyObject *)m, type);
#else
    /* a static type (no reference to take) and a count of 1: what
     * PyObject_Init does here, less tracemalloc's per-object traceback */
    m->ob_base.ob_type = type;
    m->ob_base.ob_refcnt = 1;
#endif
    m->vectorcall = call;
    Py_INCREF(s);
    return (PyObject *)m;
}

static PyObject *with_descr_get(WithDescr *d, PyObject *obj, PyObject *type)
{
    if (!obj) {
        Py_INCREF(d);
        return (PyObject *)d;
    }
    if (!Py_IS_TYPE(obj, &SliceType)) {   /* the type admits no subclasses */
        PyErr_Format(PyExc_TypeError, "%s of ByteBufferSlice objects cannot bind a '%.200s'",
                     d->is_exit ? "__exit__" : "__enter__", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    SliceObject *s = (SliceObject *)obj;
    if (d->is_exit)
        return with_method_bind(&s->exit_method, &ExitMethodType, (vectorcallfunc)exit_call, s);
    return with_method_bind(&s->enter_method, &EnterMethodType, (vectorcallfunc)enter_call, s);
}

static PyObject *with_descr_repr(WithDescr *d)
{
    return PyUnicode_FromFormat("<method '%s' of 'shmslice.ByteBufferSlice' objects>",
                                d->is_exit ? "__exit__" : "__enter__");
}

static PyObject *enter_method_repr(WithMethod *m)
{
    return PyUnicode_FromFormat("<bound method ByteBufferSlice.__enter__ of %R>",
                                (PyObject *)enter_owner(m));
}

static PyObject *exit_method_repr(WithMethod *m)
{
    return PyUnicode_FromFormat("<bound method ByteBufferSlice.__exit__ of %R>",
                                (PyObject *)exit_owner(m));
}

static PyTypeObject WithDescrType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmslice.ByteBufferSlice.method",
    .tp_basicsize = sizeof(WithDescr),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_descr_get = (descrgetfunc)with_descr_get,
    .tp_repr = (reprfunc)with_descr_repr,
};

static PyTypeObject EnterMethodType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmslice.ByteBufferSlice.bound_method",
    .tp_basicsize = sizeof(WithMethod),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .tp_vectorcall_offset = offsetof(WithMethod, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_dealloc = (destructor)enter_method_dealloc,
    .tp_repr = (reprfunc)enter_method_repr,
};

static PyTypeObject ExitMethodType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmslice.ByteBufferSlice.bound_method",
    .tp_basicsize = sizeof(WithMethod),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .tp_vectorcall_offset = offsetof(WithMethod, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_dealloc = (destructor)exit_method_dealloc,
    .tp_repr = (reprfunc)exit_method_repr,
};

static int add_with_methods(void)
{
    for (int is_exit = 0; is_exit < 2; is_exit++) {
        WithDescr *d = PyObject_New(WithDescr, &WithDescrType);
        if (!d) return -1;
        d->is_exit = is_exit;
        int rc = PyDict_SetItemString(SliceType.tp_dict, is_exit ? "__exit__" : "__enter__",
                                      (PyObject *)d);
        Py_DECREF(d);
        if (rc < 0) return -1;
    }
    PyType_Modified(&SliceType);
    return 0;
}

static PyObject *slice_view(SliceObject *s, PyObject *unused)
{
    return slice_export(s, EXPORT_VIEW);
}

static PyObject *slice_array_buffer(SliceObject *s, PyObject *unused)
{
    return slice_export(s, EXPORT_ARRAY);
}

static PyObject *slice_tobytes(SliceObject *s, PyObject *unused)
{
    if (slice_usable(s) < 0) return NULL;
    if (s->ref == REF_EMPTY) return PyBytes_FromStringAndSize(NULL, 0);
    return PyBytes_FromStringAndSize(s->buf, slice_len(s));
}

/* Another slice sharing the region: a new pin on it. */
static PyObject *slice_copy(SliceObject *s, PyObject *unused)
{
    if (slice_usable(s) < 0) return NULL;
    if (s->ref == REF_EMPTY) return slice_new(s->file, NULL, s->start, s->end, REF_EMPTY);
    int64_t ref = core_pin(file_handle(s->file), s->start, s->end);
    if (ref < 0) {
        raise_status(s->file, ref);
        return NULL;
    }
    return slice_new(s->file, s->map, s->start, s->end, ref);
}

static PyObject *slice_deepcopy(SliceObject *s, PyObject *memo)
{
    PyErr_SetString(PyExc_TypeError,
                    "copy.deepcopy cannot make an independent ByteBufferSlice: its bytes live "
                    "in the shared file; use s.tobytes() for a private copy of the bytes, or "
                    "copy.copy(s) for another slice of the same bytes");
    return NULL;
}

/* The file's current size, refreshed (in Python) if anyone resized it. */
static int file_current(FileBase *f)
{
    ss_handle *h = file_handle(f);
    if (h && core_size_epoch(h) == f->epoch) return 0;
    PyObject *res = PyObject_CallMethodNoArgs((PyObject *)f, str_refresh);
    if (!res) return -1;
    Py_DECREF(res);
    return 0;
}

/* Pickled as (path, identity, origin, start, end, writable, size, lock_dir):
 * a descriptor the receiving process maps again, never the bytes. */
static PyObject *slice_reduce(SliceObject *s, PyObject *unused)
{
    if (slice_usable(s) < 0) return NULL;
    FileBase *f = s->file;
    if (!rebuild_helper || !f->desc || !PyTuple_Check(f->desc) || PyTuple_GET_SIZE(f->desc) != 5) {
        PyErr_SetString(PyExc_RuntimeError, "shmslice slices are not set up for pickling");
        return NULL;
    }
    if (file_current(f) < 0) return NULL;
    PyObject *d = f->desc;
    return Py_BuildValue("O(OOOLLOLO)", rebuild_helper, PyTuple_GET_ITEM(d, 0),
                         PyTuple_GET_ITEM(d, 1), PyTuple_GET_ITEM(d, 2), s->start, s->end,
                         PyTuple_GET_ITEM(d, 3), f->size, PyTuple_GET_ITEM(d, 4));
}

static PyObject *slice_dask_tokenize(SliceObject *s, PyObject *unused)
{
    if (!tokenize_helper) {
        PyErr_SetString(PyExc_RuntimeError, "shmslice slices are not set up for tokenizing");
        return NULL;
    }
    return PyObject_CallOneArg(tokenize_helper, (PyObject *)s);
}

static PyObject *slice_flush(SliceObject *s, PyObject *unused)
{
    if (slice_usable(s) < 0) return NULL;
    if (s->ref == REF_EMPTY || s->file->readonly || !s->map) Py_RETURN_NONE;
    long page = sysconf(_SC_PAGESIZE);
    long long first = s->start - s->start % page;    /* msync needs a page-aligned start */
    char *addr = (char *)s->map->view.buf + first;
    size_t len = (size_t)(s->end - first);
    MapHold *hold = s->map;
    Py_INCREF(hold);   /* mapped while msync runs without the GIL */
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = msync(addr, len, MS_SYNC);
    Py_END_ALLOW_THREADS
    Py_DECREF(hold);
    if (rc < 0) return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, s->file->path);
    Py_RETURN_NONE;
}

/* lock() and lock_async(): the manager's method `method` on exactly [start, end). */
static PyObject *slice_lock_via(SliceObject *s, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames, PyObject *method)
{
    static const char *const names[] = {"mode", "timeout"};
    PyObject *given[2] = {NULL, NULL};
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "lock() takes optional mode and timeout");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) given[i] = args[i];
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        int k = PyUnicode_CompareWithASCIIString(name, names[0]) == 0 ? 0
              : PyUnicode_CompareWithASCIIString(name, names[1]) == 0 ? 1 : -1;
        if (k < 0 || given[k]) {
            PyErr_Format(PyExc_TypeError, "lock() got an unexpected or repeated argument '%U'",
                         name);
            return NULL;
        }
        given[k] = args[nargs + i];
    }
    if (slice_usable(s) < 0) return NULL;
    if (s->ref == REF_EMPTY) {
        PyErr_Format(PyExc_ValueError,
                     "cannot lock an empty slice ([%lld, %lld) of %S): a lock needs at least "
                     "one byte", s->start, s->end, s->file->path);
        return NULL;
    }
    PyObject *a = PyLong_FromLongLong(s->start), *b = PyLong_FromLongLong(s->end);
    PyObject *res = NULL;
    if (a && b) {
        PyObject *mode = given[0] ? given[0] : NULL;
        PyObject *call[] = {s->file->mgr, a, b, mode ? mode : Py_None, given[1] ? given[1] : Py_None};
        if (!mode) {
            mode = PyUnicode_FromString("exclusive");
            call[3] = mode;
            if (mode) res = PyObject_VectorcallMethod(method, call, 5 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            Py_XDECREF(mode);
        } else {
            res = PyObject_VectorcallMethod(method, call, 5 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        }
    }
    Py_XDECREF(a);
    Py_XDECREF(b);
    return res;
}

static PyObject *slice_lock(SliceObject *s, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    return slice_lock_via(s, args, nargs, kwnames, str_lock);
}

/* lock_async(mode, timeout): the manager's coroutine, to be awaited. */
static PyObject *slice_lock_async(SliceObject *s, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    return slice_lock_via(s, args, nargs, kwnames, str_lock_async);
}

/* hex(sep, bytes_per_sep): memoryview.hex over an export, no copy. */
static PyObject *slice_hex(SliceObject *s, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames)
{
    PyObject *mv = slice_export(s, EXPORT_BUFFER);
    if (!mv) return NULL;
    Py_ssize_t n = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    PyObject *stack[8];
    if (n > 7) {
        Py_DECREF(mv);
        PyErr_SetString(PyExc_TypeError, "hex() takes at most 2 arguments");
        return NULL;
    }
    stack[0] = mv;
    for (Py_ssize_t i = 0; i < n; i++) stack[i + 1] = args[i];
    PyObject *res = PyObject_VectorcallMethod(str_hex, stack, (nargs + 1), kwnames);
    Py_DECREF(mv);
    return res;
}

static PyObject *slice_decode(SliceObject *s, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"encoding", "errors", NULL};
    const char *encoding = "utf-8", *errors = "strict";
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|ss:decode", kwlist, &encoding, &errors))
        return NULL;
    PyObject *mv = slice_export(s, EXPORT_BUFFER);   /* pinned while the codec runs */
    if (!mv) return NULL;
    PyObject *res = PyUnicode_FromEncodedObject(mv, encoding, errors);
    Py_DECREF(mv);
    return res;
}

/* --- Slice: bytes-like searching ------------------------------------------ */

/* An index argument, saturated like a slice bound. */
static int index_value(PyObject *v, Py_ssize_t *out)
{
    if (!PyIndex_Check(v)) {
        PyErr_SetString(PyExc_TypeError,
                        "slice indices must be integers or None or have an __index__ method");
        return -1;
    }
    *out = PyNumber_AsSsize_t(v, NULL);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* bytes' rules for optional start/end: clamp into [0, n]. */
static int search_bounds(PyObject *start_obj, PyObject *end_obj, Py_ssize_t n,
                         Py_ssize_t *start, Py_ssize_t *end)
{
    *start = 0;
    *end = PY_SSIZE_T_MAX;
    if (start_obj && start_obj != Py_None && index_value(start_obj, start) < 0) return -1;
    if (end_obj && end_obj != Py_None && index_value(end_obj, end) < 0) return -1;
    if (*end > n) *end = n;
    else if (*end < 0) { *end += n; if (*end < 0) *end = 0; }
    if (*start < 0) { *start += n; if (*start < 0) *start = 0; }
    return 0;
}

/* The needle as a buffer: an int in range(256) or a bytes-like object. */
static int get_needle(PyObject *sub, Py_buffer *nb, char *one)
{
    if (PyIndex_Check(sub)) {
        Py_ssize_t v = PyNumber_AsSsize_t(sub, NULL);
        if (v == -1 && PyErr_Occurred()) return -1;
        if (v < 0 || v > 255) {
            PyErr_SetString(PyExc_ValueError, "byte must be in range(0, 256)");
            return -1;
        }
        *one = (char)v;
        nb->obj = NULL;
        nb->buf = one;
        nb->len = 1;
        return 0;
    }
    if (PyObject_GetBuffer(sub, nb, PyBUF_SIMPLE) < 0) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "a bytes-like object is required, not '%.200s'",
                         Py_TYPE(sub)->tp_name);
        }
        return -1;
    }
    return 0;
}

static void put_needle(Py_buffer *nb)
{
    if (nb->obj) PyBuffer_Release(nb);
}

static Py_ssize_t find_forward(const char *h, Py_ssize_t start, Py_ssize_t end,
                               const char *n, Py_ssize_t m)
{
    if (end - start < m) return -1;
    if (m == 0) return start;
    const char *p = memmem(h + start, (size_t)(end - start), n, (size_t)m);
    return p ? p - h : -1;
}

static Py_ssize_t find_backward(const char *h, Py_ssize_t start, Py_ssize_t end,
                                const char *n, Py_ssize_t m)
{
    if (end - start < m) return -1;
    if (m == 0) return end;
    Py_ssize_t last = end - m;   /* last possible match */
    while (last >= start) {
        const char *p = memrchr(h + start, n[0], (size_t)(last - start + 1));
        if (!p) return -1;
        Py_ssize_t i = p - h;
        if (memcmp(h + i, n, (size_t)m) == 0) return i;
        last = i - 1;
    }
    return -1;
}

enum { OP_FIND, OP_RFIND, OP_INDEX, OP_RINDEX, OP_COUNT };

static PyObject *slice_search(SliceObject *s, PyObject *const *args, Py_ssize_t nargs, int op)
{
    static const char *const opnames[] = {"find", "rfind", "index", "rindex", "count"};
    if (nargs < 1 || nargs > 3) {
        PyErr_Format(PyExc_TypeError, "%s() takes a sub and optional start and end",
                     opnames[op]);
        return NULL;
    }
    if (slice_usable(s) < 0) return NULL;
    Py_buffer nb;
    char one;
    if (get_needle(args[0], &nb, &one) < 0) return NULL;
    Py_ssize_t n = slice_len(s), start, end;
    if (search_bounds(nargs > 1 ? args[1] : NULL, nargs > 2 ? args[2] : NULL, n, &start,
                      &end) < 0 ||
        slice_usable(s) < 0) {   /* again: the needle's exporter may have run Python */
        put_needle(&nb);
        return NULL;
    }
    const char *h = s->ref == REF_EMPTY ? empty_region : s->buf;
    Py_ssize_t result;
    if (op == OP_COUNT) {
        result = 0;
        if (nb.len == 0) {
            result = start <= end ? end - start + 1 : 0;
        } else {
            Py_ssize_t i = start;
            while ((i = find_forward(h, i, end, nb.buf, nb.len)) >= 0) {
                result++;
                i += nb.len;
            }
        }
    } else if (op == OP_FIND || op == OP_INDEX) {
        result = start > n ? -1 : find_forward(h, start, end, nb.buf, nb.len);
    } else {
        result = start > n ? -1 : find_backward(h, start, end, nb.buf, nb.len);
    }
    put_needle(&nb);
    if (result < 0 && (op == OP_INDEX || op == OP_RINDEX)) {
        PyErr_SetString(PyExc_ValueError, "subsection not found");
        return NULL;
    }
    return PyLong_FromSsize_t(result);
}

static PyObject *slice_find(SliceObject *s, PyObject *const *a, Py_ssize_t n) { return slice_search(s, a, n, OP_FIND); }
static PyObject *slice_rfind(SliceObject *s, PyObject *const *a, Py_ssize_t n) { return slice_search(s, a, n, OP_RFIND); }
static PyObject *slice_index(SliceObject *s, PyObject *const *a, Py_ssize_t n) { return slice_search(s, a, n, OP_INDEX); }
static PyObject *slice_rindex(SliceObject *s, PyObject *const *a, Py_ssize_t n) { return slice_search(s, a, n, OP_RINDEX); }
static PyObject *slice_count(SliceObject *s, PyObject *const *a, Py_ssize_t n) { return slice_search(s, a, n, OP_COUNT); }

/* startswith/endswith(prefix or tuple of prefixes, start=None, end=None) */
static PyObject *slice_affix(SliceObject *s, PyObject *const *args, Py_ssize_t nargs, int at_end)
{
    const char *name = at_end ? "endswith" : "startswith";
    if (nargs < 1 || nargs > 3) {
        PyErr_Format(PyExc_TypeError, "%s() takes a prefix and optional start and end", name);
        return NULL;
    }
    if (slice_usable(s) < 0) return NULL;
    Py_ssize_t n = slice_len(s), start, end;
    if (search_bounds(nargs > 1 ? args[1] : NULL, nargs > 2 ? args[2] : NULL, n, &start, &end) < 0)
        return NULL;
    PyObject *subs = args[0];
    int is_tuple = PyTuple_Check(subs);
    Py_ssize_t count = is_tuple ? PyTuple_GET_SIZE(subs) : 1;
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *sub = is_tuple ? PyTuple_GET_ITEM(subs, k) : subs;
        Py_buffer nb;
        if (PyIndex_Check(sub) || PyObject_GetBuffer(sub, &nb, PyBUF_SIMPLE) < 0) {
            if (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_TypeError)) {
                PyErr_Clear();
                PyErr_Format(PyExc_TypeError,
                             "%s first arg must be bytes or a tuple of bytes, not %.200s",
                             name, Py_TYPE(sub)->tp_name);
            }
            return NULL;
        }
        if (slice_usable(s) < 0) {
            PyBuffer_Release(&nb);
            return NULL;
        }
        const char *h = s->ref == REF_EMPTY ? empty_region : s->buf;
        int hit = start <= n && end - start >= nb.len &&
                  memcmp(h + (at_end ? end - nb.len : start), nb.buf, (size_t)nb.len) == 0;
        PyBuffer_Release(&nb);
        if (hit) Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

static PyObject *slice_startswith(SliceObject *s, PyObject *const *a, Py_ssize_t n) { return slice_affix(s, a, n, 0); }
static PyObject *slice_endswith(SliceObject *s, PyObject *const *a, Py_ssize_t n) { return slice_affix(s, a, n, 1); }

static int slice_contains(SliceObject *s, PyObject *item)
{
    if (!PyIndex_Check(item) && !PyObject_CheckBuffer(item)) {
        PyErr_Format(PyExc_TypeError, "a bytes-like object is required, not '%.200s'",
                     Py_TYPE(item)->tp_name);
        return -1;
    }
    PyObject *args[] = {item};
    PyObject *res = slice_search(s, args, 1, OP_FIND);
    if (!res) return -1;
    Py_ssize_t i = PyLong_AsSsize_t(res);
    Py_DECREF(res);
    return i >= 0;
}

/* --- Slice: mapping protocol, comparison, hashing --------------------------- */

static Py_ssize_t slice_length(SliceObject *s)
{
    if (slice_usable(s) < 0) return -1;
    return slice_len(s);
}

/* [start, stop) of `key` within n bytes, by bytes' rules; a step other than 1 is refused. */
static int slice_span(PyObject *key, Py_ssize_t n, Py_ssize_t *start, Py_ssize_t *stop,
                      const char *hint, const char *hint_end)
{
    Py_ssize_t step;
    if (PySlice_Unpack(key, start, stop, &step) < 0) return -1;
    PySlice_AdjustIndices(n, start, stop, step);
    if (step != 1) {
        PyErr_Format(PyExc_ValueError,
                     "ByteBufferSlice slices must be contiguous (step 1), got step %zd; "
                     "%s[::%zd]%s", step, hint, step, hint_end);
        return -1;
    }
    if (*stop < *start) *stop = *start;
    return 0;
}

static PyObject *slice_subscript(SliceObject *s, PyObject *key)
{
    if (slice_usable(s) < 0) return NULL;
    Py_ssize_t n = slice_len(s);
    if (PySlice_Check(key)) {
        Py_ssize_t a, b;
        if (slice_span(key, n, &a, &b, "for a strided view use s.view()", "") < 0) return NULL;
        if (a == b) return slice_new(s->file, NULL, s->start + a, s->start + a, REF_EMPTY);
        /* Inside a live, pinned parent: the region exists and the parent's
         * mapping covers it, so the resize counter need not be checked. */
        int64_t ref = core_pin(file_handle(s->file), s->start + a, s->start + b);
        if (ref < 0) {
            raise_status(s->file, ref);
            return NULL;
        }
        return slice_new(s->file, s->map, s->start + a, s->start + b, ref);
    }
    if (!PyIndex_Check(key)) {
        PyErr_Format(PyExc_TypeError,
                     "ByteBufferSlice indices must be integers or slices, not %.200s",
                     Py_TYPE(key)->tp_name);
        return NULL;
    }
    Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);
    if (i == -1 && PyErr_Occurred()) return NULL;
    if (i < 0) i += n;
    if (i < 0 || i >= n) {
        PyErr_Format(PyExc_IndexError, "index %R out of range for a ByteBufferSlice of length %zd",
                     key, n);
        return NULL;
    }
    if (slice_usable(s) < 0) return NULL;   /* __index__ may have run Python */
    return PyLong_FromLong((unsigned char)s->buf[i]);
}

static int slice_ass_subscript(SliceObject *s, PyObject *key, PyObject *value)
{
    if (slice_usable(s) < 0) return -1;
    FileBase *f = s->file;
    if (!value) {
        PyErr_SetString(PyExc_TypeError, "cannot delete bytes of a ByteBufferSlice "
                        "(it cannot change size)");
        return -1;
    }
    if (f->readonly) {
        PyErr_Format(PyExc_TypeError, "cannot write to %S: it was mapped read-only (mode 'r'); "
                     "open it with mode='r+' to write", f->path);
        return -1;
    }
    Py_ssize_t n = slice_len(s);
    if (PySlice_Check(key)) {
        Py_ssize_t a, b;
        if (slice_span(key, n, &a, &b, "for strided writes use s.view()", " = ...") < 0) return -1;
        Py_buffer vb;
        if (PyObject_GetBuffer(value, &vb, PyBUF_SIMPLE) < 0) {
            if (PyErr_ExceptionMatches(PyExc_BufferError)) {
                PyErr_Clear();
                PyErr_SetString(PyExc_ValueError, "data to write must be C-contiguous");
            } else if (PyErr_ExceptionMatches(PyExc_TypeError)) {
                PyErr_Clear();
                PyErr_Format(PyExc_TypeError, "a bytes-like object is required, not '%.200s'",
                             Py_TYPE(value)->tp_name);
            }
            return -1;
        }
        int rc = 0;
        if (vb.len != b - a) {
            PyErr_Format(PyExc_ValueError,
                         "cannot write %zd bytes into a region of %zd bytes: a ByteBufferSlice "
                         "cannot change size, so the lengths must match", vb.len, b - a);
            rc = -1;
        } else if (slice_usable(s) < 0) {   /* the value's exporter may have run Python */
            rc = -1;
        } else if (b > a) {
            memmove(s->buf + a, vb.buf, (size_t)(b - a));
            note_write(f);
        }
        PyBuffer_Release(&vb);
        return rc;
    }
    if (!PyIndex_Check(key)) {
        PyErr_Format(PyExc_TypeError,
                     "ByteBufferSlice indices must be integers or slices, not %.200s",
                     Py_TYPE(key)->tp_name);
        return -1;
    }
    Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);
    if (i == -1 && PyErr_Occurred()) return -1;
    if (i < 0) i += n;
    if (i < 0 || i >= n) {
        PyErr_Format(PyExc_IndexError, "index %R out of range for a ByteBufferSlice of length %zd",
                     key, n);
        return -1;
    }
    if (PyBool_Check(value) || !PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "a byte must be an int in range(0, 256), not %.200s",
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    int overflow;
    long v = PyLong_AsLongAndOverflow(value, &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (overflow || v < 0 || v > 255) {
        PyErr_Format(PyExc_ValueError, "byte must be in range(0, 256), got %R", value);
        return -1;
    }
    if (slice_usable(s) < 0) return -1;
    s->buf[i] = (char)v;
    note_write(f);
    return 0;
}

static PyObject *slice_richcompare(SliceObject *s, PyObject *other, int op)
{
    if (op != Py_EQ && op != Py_NE) Py_RETURN_NOTIMPLEMENTED;
    if (slice_usable(s) < 0) return NULL;
    Py_buffer ob;
    if (PyObject_GetBuffer(other, &ob, PyBUF_SIMPLE) < 0) {
        if (PyErr_ExceptionMatches(PyExc_TypeError) || PyErr_ExceptionMatches(PyExc_BufferError)) {
            PyErr_Clear();
            Py_RETURN_NOTIMPLEMENTED;
        }
        return NULL;
    }
    int equal = -1;
    if (slice_usable(s) == 0) {
        Py_ssize_t n = slice_len(s);
        equal = ob.len == n && (n == 0 || memcmp(s->buf, ob.buf, (size_t)n) == 0);
    }
    PyBuffer_Release(&ob);
    if (equal < 0) return NULL;
    return PyBool_FromLong(op == Py_EQ ? equal : !equal);
}

/* Read-only slices hash like bytes with the same content (computed each time:
 * a writer elsewhere may change it); writable ones are unhashable, like bytearray. */
static Py_hash_t slice_hash(SliceObject *s)
{
    if (!s->file->readonly) {
        PyErr_SetString(PyExc_TypeError,
                        "unhashable type: 'ByteBufferSlice' of a writable mapping "
                        "(slices of files opened with mode 'r' hash like bytes)");
        return -1;
    }
    if (slice_usable(s) < 0) return -1;
    if (s->ref == REF_EMPTY) return _Py_HashBytes(empty_region, 0);
    return _Py_HashBytes(s->buf, slice_len(s));
}

/* Iterating reads through an export, so it stays valid even if the slice is
 * released meanwhile. */
static PyObject *slice_iter(SliceObject *s)
{
    PyObject *mv = slice_export(s, EXPORT_BUFFER);
    if (!mv) return NULL;
    PyObject *it = PyObject_GetIter(mv);
    Py_DECREF(mv);
    return it;
}

static PyObject *slice_asarray(SliceObject *s, PyObject *args, PyObject *kwds)
{
    if (!array_helper) {
        PyErr_SetString(PyExc_RuntimeError, "shmslice slices are not set up for arrays");
        return NULL;
    }
    PyObject *full = PyTuple_New(PyTuple_GET_SIZE(args) + 1);
    if (!full) return NULL;
    Py_INCREF(s);
    PyTuple_SET_ITEM(full, 0, (PyObject *)s);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(args); i++) {
        Py_INCREF(PyTuple_GET_ITEM(args, i));
        PyTuple_SET_ITEM(full, i + 1, PyTuple_GET_ITEM(args, i));
    }
    PyObject *res = PyObject_Call(array_helper, full, kwds);
    Py_DECREF(full);
    return res;
}

static PyObject *slice_repr(SliceObject *s)
{
    const char *state = (s->ref == REF_RELEASED || s->file->closed) ? "released"
                      : s->file->readonly ? "read-only" : "writable";
    return PyUnicode_FromFormat("<shmslice.ByteBufferSlice [%lld, %lld) of %R %s>", s->start,
                                s->end, s->file->path, state);
}

static PyObject *slice_get_start(SliceObject *s, void *c) { return PyLong_FromLongLong(s->start); }
static PyObject *slice_get_end(SliceObject *s, void *c) { return PyLong_FromLongLong(s->end); }
static PyObject *slice_get_base(SliceObject *s, void *c) { Py_INCREF(s->file); return (PyObject *)s->file; }
static PyObject *slice_get_readonly(SliceObject *s, void *c) { return PyBool_FromLong(s->file->readonly); }
static PyObject *slice_get_released(SliceObject *s, void *c)
{
    return PyBool_FromLong(s->ref == REF_RELEASED || s->file->closed);
}
static PyObject *slice_get_exports(SliceObject *s, void *c) { return PyLong_FromSsize_t(s->exports); }

/* Valid while the slice is live or buffers exported from it are. */
static PyObject *slice_get_address(SliceObject *s, void *c)
{
    if (s->ref == REF_EMPTY) return PyLong_FromVoidPtr(empty_region);
    if (!s->map) {
        dead_error(s);
        return NULL;
    }
    return PyLong_FromVoidPtr(s->buf);
}

static PyMethodDef slice_methods[] = {
    {"release", (PyCFunction)slice_release, METH_NOARGS,
     "release()\n--\n\nDrop this slice's pin; any later use raises ValueError.\n\n"
     "Buffers exported from the slice (memoryviews, arrays) keep their own pins\n"
     "and stay valid.  Releasing twice is harmless.  In a forked child,\n"
     "releasing a slice inherited from the parent leaves the parent's pin alone."},
    {"view", (PyCFunction)slice_view, METH_NOARGS,
     "view()\n--\n\nA zero-copy memoryview of the region (the same as memoryview(s)).\n\n"
     "It holds its own pin, and keeps the mapping, until it and every view or\n"
     "array made from it are released or die -- also after the slice is released\n"
     "or its MappedFile closed."},
    {"_array_buffer", (PyCFunction)slice_array_buffer, METH_NOARGS,
     "a memoryview of the region counted as an array's export"},
    {"tobytes", (PyCFunction)slice_tobytes, METH_NOARGS,
     "tobytes()\n--\n\nA copy of the region as bytes."},
    {"__bytes__", (PyCFunction)slice_tobytes, METH_NOARGS, NULL},
    {"hex", (PyCFunction)(void (*)(void))slice_hex, METH_FASTCALL | METH_KEYWORDS,
     "hex(sep=..., bytes_per_sep=1)\n--\n\nThe region as hexadecimal, like bytes.hex()."},
    {"decode", (PyCFunction)(void (*)(void))slice_decode, METH_VARARGS | METH_KEYWORDS,
     "decode(encoding='utf-8', errors='strict')\n--\n\nDecode the region, like bytes.decode()."},
    {"find", (PyCFunction)(void (*)(void))slice_find, METH_FASTCALL,
     "find(sub, start=None, end=None)\n--\n\nLike bytes.find, searching the mapping in place."},
    {"rfind", (PyCFunction)(void (*)(void))slice_rfind, METH_FASTCALL,
     "rfind(sub, start=None, end=None)\n--\n\nLike bytes.rfind."},
    {"index", (PyCFunction)(void (*)(void))slice_index, METH_FASTCALL,
     "index(sub, start=None, end=None)\n--\n\nLike bytes.index."},
    {"rindex", (PyCFunction)(void (*)(void))slice_rindex, METH_FASTCALL,
     "rindex(sub, start=None, end=None)\n--\n\nLike bytes.rindex."},
    {"count", (PyCFunction)(void (*)(void))slice_count, METH_FASTCALL,
     "count(sub, start=None, end=None)\n--\n\nLike bytes.count (non-overlapping)."},
    {"startswith", (PyCFunction)(void (*)(void))slice_startswith, METH_FASTCALL,
     "startswith(prefix, start=None, end=None)\n--\n\nLike bytes.startswith."},
    {"endswith", (PyCFunction)(void (*)(void))slice_endswith, METH_FASTCALL,
     "endswith(suffix, start=None, end=None)\n--\n\nLike bytes.endswith."},
    {"flush", (PyCFunction)slice_flush, METH_NOARGS,
     "flush()\n--\n\nWrite the region's changes to disk (msync); returns when they are there."},
    {"lock", (PyCFunction)(void (*)(void))slice_lock, METH_FASTCALL | METH_KEYWORDS,
     "lock(mode='exclusive', timeout=None)\n--\n\n"
     "Lock exactly [start, end) of the file; see LockManager.lock."},
    {"lock_async", (PyCFunction)(void (*)(void))slice_lock_async, METH_FASTCALL | METH_KEYWORDS,
     "lock_async(mode='exclusive', timeout=None)\n--\n\n"
     "Coroutine: lock exactly [start, end) of the file; see LockManager.lock_async."},
    {"asarray", (PyCFunction)(void (*)(void))slice_asarray, METH_VARARGS | METH_KEYWORDS,
     "asarray(dtype='u1', shape=None, order='C')\n--\n\n"
     "A numpy array over the region's bytes, reinterpreted as dtype (no copy).\n\n"
     "The array holds a pin and the mapping while it lives; it is read-only for\n"
     "files mapped with mode 'r', and pickles as a small descriptor that a worker\n"
     "process maps again.  ValueError if the region's size or alignment does not\n"
     "fit dtype and shape."},
    {"__reduce__", (PyCFunction)slice_reduce, METH_NOARGS,
     "Pickle as a descriptor (path, identity, region, writability, size): never the bytes."},
    {"__dask_tokenize__", (PyCFunction)slice_dask_tokenize, METH_NOARGS,
     "__dask_tokenize__()\n--\n\nA cache key that changes whenever the region's bytes may have "
     "changed (see shmslice.slices)."},
    {"__copy__", (PyCFunction)slice_copy, METH_NOARGS, NULL},
    {"__deepcopy__", (PyCFunction)slice_deepcopy, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef slice_getset[] = {
    {"start", (getter)slice_get_start, NULL, "Absolute offset of the first byte in the file.", NULL},
    {"end", (getter)slice_get_end, NULL, "Absolute offset one past the last byte.", NULL},
    {"base", (getter)slice_get_base, NULL, "The MappedFile this slice belongs to.", NULL},
    {"readonly", (getter)slice_get_readonly, NULL, "True if the file was mapped read-only.", NULL},
    {"released", (getter)slice_get_released, NULL,
     "True once released (or once its MappedFile was closed).", NULL},
    {"_exports", (getter)slice_get_exports, NULL, "live buffer exports of this slice", NULL},
    {"_address", (getter)slice_get_address, NULL, "address of the first byte in this process", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMappingMethods slice_as_mapping = {
    .mp_length = (lenfunc)slice_length,
    .mp_subscript = (binaryfunc)slice_subscript,
    .mp_ass_subscript = (objobjargproc)slice_ass_subscript,
};

static PySequenceMethods slice_as_sequence = {
    .sq_length = (lenfunc)slice_length,
    .sq_contains = (objobjproc)slice_contains,
};

static PyTypeObject SliceType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmslice.ByteBufferSlice",
    .tp_doc = "Bytes [start, end) of a MappedFile, without a copy.\n\n"
              "Made by slicing a mapped file (mf[a:b], mf.slice(a, b), mf.split(n)),\n"
              "slicing another slice, or unpickling.  start and end are absolute offsets\n"
              "in the file.  Indexing and slicing follow the rules of bytes; slices with\n"
              "a step other than 1 are refused (use s.view()[::k]).  Writes (s[a:b] = data)\n"
              "must keep the length.  A slice is a buffer: memoryview(s), hashlib,\n"
              "zlib, f.write, os.write, socket.sendall, f.readinto and numpy take it\n"
              "directly.\n\n"
              "While alive (until release(), the end of a with block, or garbage\n"
              "collection) the slice holds one pin on its region in the file's shared\n"
              "lock table, and so does every buffer exported from it.",
    .tp_basicsize = sizeof(SliceObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = slice_tp_new,
    .tp_dealloc = (destructor)slice_dealloc,
    .tp_traverse = (traverseproc)slice_traverse,
    .tp_clear = (inquiry)slice_clear,
    .tp_repr = (reprfunc)slice_repr,
    .tp_hash = (hashfunc)slice_hash,
    .tp_richcompare = (richcmpfunc)slice_richcompare,
    .tp_iter = (getiterfunc)slice_iter,
    .tp_as_buffer = &slice_as_buffer,
    .tp_as_mapping = &slice_as_mapping,
    .tp_as_sequence = &slice_as_sequence,
    .tp_methods = slice_methods,
    .tp_getset = slice_getset,
    .tp_weaklistoffset = offsetof(SliceObject, weakrefs),
};

/* --- FileBase: slicing ------------------------------------------------------------- */

/* A slice of [a, b), 0 <= a <= b <= size, or None if the file was resized
 * since size was read (the caller refreshes and retries). */
static PyObject *file_try_slice_impl(FileBase *f, long long a, long long b)
{
    if (a == b) return slice_new(f, NULL, a, b, REF_EMPTY);
    ss_handle *h = file_handle(f);
    if (f->closed || !h) {
        PyErr_Format(PyExc_ValueError, "I/O operation on closed MappedFile %S", f->path);
        return NULL;
    }
    int64_t ref = core_pin(h, a, b);
    if (ref < 0) {
        raise_status(f, ref);
        return NULL;
    }
    /* Pinned first, epoch read second: if nobody resized since size was read,
     * the region is inside the file and the pin keeps it there. */
    if (core_size_epoch(h) != f->epoch || !f->map || b > f->size) {
        int rc = core_unpin(h, ref);
        if (rc < 0) {
            raise_status(f, rc);
            return NULL;
        }
        Py_RETURN_NONE;
    }
    return slice_new(f, f->map, a, b, ref);
}

static PyObject *file_try_slice(FileBase *f, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_try_slice(start, end)");
        return NULL;
    }
    long long a = PyLong_AsLongLong(args[0]), b = PyLong_AsLongLong(args[1]);
    if (PyErr_Occurred()) return NULL;
    if (a < 0 || b < a) {
        PyErr_Format(PyExc_ValueError, "_try_slice: bad region [%lld, %lld)", a, b);
        return NULL;
    }
    return file_try_slice_impl(f, a, b);
}

static int plain_bound(PyObject *v, long long dflt, long long *out)
{
    if (v == Py_None) { *out = dflt; return 1; }
    if (!PyLong_CheckExact(v)) return 0;
    int overflow;
    *out = PyLong_AsLongLongAndOverflow(v, &overflow);
    return !overflow && !(*out == -1 && PyErr_Occurred());
}

/* mf[a:b] and mf[i]: the plain cases here, the rest in MappedFile._slice_slow
 * and MappedFile._byte_at. */
static PyObject *file_subscript(FileBase *f, PyObject *key)
{
    if (PySlice_Check(key)) {
        PySliceObject *k = (PySliceObject *)key;
        long long a, b;
        if (k->step == Py_None && !f->closed && f->map && plain_bound(k->start, 0, &a) &&
            plain_bound(k->stop, f->size, &b) && 0 <= a && a < b && b <= f->size) {
            PyObject *s = file_try_slice_impl(f, a, b);
            if (s != Py_None) return s;
            Py_DECREF(s);
        }
        PyErr_Clear();
        PyObject *args[] = {(PyObject *)f, k->start, k->stop, k->step};
        return PyObject_VectorcallMethod(str_slice_slow, args,
                                         4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    if (PyLong_CheckExact(key) && !f->closed && f->map) {
        long long i;
        if (plain_bound(key, 0, &i)) {
            if (i < 0) i += f->size;
            ss_handle *h = file_handle(f);
            if (0 <= i && i < f->size && h) {
                int64_t ref = core_pin(h, i, i + 1);   /* pinned while we read it */
                if (ref >= 0) {
                    long v = -1;
                    if (core_size_epoch(h) == f->epoch) {
                        v = ((unsigned char *)f->map->view.buf)[i];
                        trim_released(f, f->map, i, i + 1);
                    }
                    (void)core_unpin(h, ref);
                    if (v >= 0) return PyLong_FromLong(v);
                }
            }
        }
        PyErr_Clear();
    }
    PyObject *args[] = {(PyObject *)f, key};
    return PyObject_VectorcallMethod(str_byte_at, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

static PyMappingMethods file_as_mapping = {
    .mp_subscript = (binaryfunc)file_subscript,
};

/* _set_mapping(mm or None): the mmap new slices are made from.  Slices made
 * from the previous one keep it (and so its mapping) alive. */
static PyObject *file_set_mapping(FileBase *f, PyObject *mm)
{
    /* The hull is in offsets of the current mapping: drop it while it is. */
    if (f->closed) f->trim_lo = f->trim_hi = f->trim_pending = 0;   /* unmapped soon anyway */
    else trim_flush(f);
    if (mm == Py_None) {
        Py_CLEAR(f->map);
        Py_RETURN_NONE;
    }
    MapHold *hold = PyObject_New(MapHold, &MapHoldType);
    if (!hold) return NULL;
    if (PyObject_GetBuffer(mm, &hold->view, f->readonly ? PyBUF_SIMPLE : PyBUF_WRITABLE) < 0) {
        hold->view.obj = NULL;
        Py_DECREF(hold);
        return NULL;
    }
    Py_XSETREF(f->map, hold);
    Py_RETURN_NONE;
}

/* _release_slices() -> n: drop the pin of every live slice of this file
 * (close()); they become unusable.  Their exports keep their own pins. */
static PyObject *file_release_slices(FileBase *f, PyObject *unused)
{
    Py_ssize_t n = 0;
    int failed = 0;
    while (f->live) {
        SliceObject *s = f->live;
        Py_INCREF(s);   /* dropping the mapping cannot free it mid-walk */
        if (slice_release_impl(s) < 0) {
            if (!failed) failed = 1;
            else PyErr_Clear();
        }
        Py_DECREF(s);
        n++;
    }
    if (failed) return NULL;
    return PyLong_FromSsize_t(n);
}

/* _exports() -> (buffers, views, arrays): live exports of this file's slices. */
static PyObject *file_exports(FileBase *f, PyObject *unused)
{
    return Py_BuildValue("(nnn)", f->exports[EXPORT_BUFFER], f->exports[EXPORT_VIEW],
                         f->exports[EXPORT_ARRAY]);
}

/* _defer_close() -> bool: True if exports are alive, in which case the close
 * finishes (MappedFile._finish_close) when the last is released.  One call, so
 * no export can go between the test and the promise. */
static PyObject *file_defer_close(FileBase *f, PyObject *unused)
{
    if (file_total_exports(f) == 0) Py_RETURN_FALSE;
    f->closing = 1;
    Py_RETURN_TRUE;
}

static int file_traverse(FileBase *f, visitproc visit, void *arg)
{
    Py_VISIT(f->mgr);
    Py_VISIT(f->desc);
    return 0;
}

static int file_clear(FileBase *f)
{
    /* Live slices of this file are on f->live only while they hold a
     * reference to f, so none can be left when f is freed; in a cycle the
     * collector clears them through their own tp_clear. */
    Py_CLEAR(f->desc);
    return 0;
}

static void file_dealloc(FileBase *f)
{
    PyObject_GC_UnTrack(f);
    if (f->weakrefs) PyObject_ClearWeakRefs((PyObject *)f);
    assert(f->live == NULL);
    Py_CLEAR(f->map);
    Py_CLEAR(f->mgr);
    Py_CLEAR(f->path);
    Py_CLEAR(f->desc);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

static int file_set_mgr(FileBase *f, PyObject *value, void *c)
{
    if (!value || !PyObject_TypeCheck(value, ss_fp_manager_type())) {
        PyErr_SetString(PyExc_TypeError, "_mgr must be a LockManager");
        return -1;
    }
    Py_INCREF(value);
    Py_XSETREF(f->mgr, value);
    return 0;
}

static PyObject *file_get_mgr(FileBase *f, void *c)
{
    if (!f->mgr) Py_RETURN_NONE;
    Py_INCREF(f->mgr);
    return f->mgr;
}

static PyObject *file_get_map(FileBase *f, void *c)
{
    if (!f->map) Py_RETURN_NONE;
    Py_INCREF(f->map->view.obj);
    return f->map->view.obj;
}

static PyObject *file_get_nlive(FileBase *f, void *c) { return PyLong_FromSsize_t(f->nlive); }

/* _stale_slice(start, end): a slice of [start, end) that holds nothing and
 * raises, at every use, the exception this file's desc holds: the
 * placeholder an unpickled stale descriptor becomes (the file is a closed
 * placeholder whose desc is a StaleDescriptor instance). */
static PyObject *file_stale_slice(FileBase *f, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_stale_slice(start, end)");
        return NULL;
    }
    long long a = PyLong_AsLongLong(args[0]), b = PyLong_AsLongLong(args[1]);
    if (PyErr_Occurred()) return NULL;
    if (!f->closed || f->mgr || !f->desc || !PyExceptionInstance_Check(f->desc) || a < 0 ||
        b < a) {
        PyErr_SetString(PyExc_ValueError,
                        "_stale_slice: needs a closed file without a manager whose _desc is "
                        "an exception, and a region");
        return NULL;
    }
    return slice_new(f, NULL, a, b, REF_RELEASED);
}

static PyObject *file_get_trim_stats(FileBase *f, void *c)
{
    return Py_BuildValue("(LLLL)", f->trim_calls, f->trim_bytes, f->trim_failures,
                         f->trim_pending);
}

/* _drop_released() -> None: drop the gathered small released ranges now. */
static PyObject *file_drop_released(FileBase *f, PyObject *unused)
{
    if (!f->closed) trim_flush(f);
    Py_RETURN_NONE;
}

static PyMethodDef file_methods[] = {
    {"_stale_slice", (PyCFunction)(void (*)(void))file_stale_slice, METH_FASTCALL,
     "_stale_slice(start, end) -> a slice that raises _desc at every use"},
    {"_try_slice", (PyCFunction)(void (*)(void))file_try_slice, METH_FASTCALL,
     "_try_slice(start, end) -> slice, or None if the file was resized meanwhile"},
    {"_set_mapping", (PyCFunction)file_set_mapping, METH_O, "_set_mapping(mmap or None)"},
    {"_release_slices", (PyCFunction)file_release_slices, METH_NOARGS,
     "drop every live slice's pin; returns how many"},
    {"_exports", (PyCFunction)file_exports, METH_NOARGS, "(buffers, views, arrays) alive"},
    {"_defer_close", (PyCFunction)file_defer_close, METH_NOARGS,
     "True (and finish at the last export) if exports are alive"},
    {"_drop_released", (PyCFunction)file_drop_released, METH_NOARGS,
     "drop the pages of released small slices gathered so far (madvise) now"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef file_members[] = {
    {"_path", T_OBJECT, offsetof(FileBase, path), 0, "the path the file was opened by"},
    {"_desc", T_OBJECT, offsetof(FileBase, desc), 0, "(abspath, identity, origin, writable, lock_dir)"},
    {"_size", T_LONGLONG, offsetof(FileBase, size), 0, "file size as of _epoch"},
    {"_epoch", T_LONGLONG, offsetof(FileBase, epoch), 0, "resize epoch _size was read at"},
    {"_readonly", T_BOOL, offsetof(FileBase, readonly), 0, "mapped read-only"},
    {"_closed", T_BOOL, offsetof(FileBase, closed), 0, "closed: no new slices"},
    {"_closing", T_BOOL, offsetof(FileBase, closing), READONLY, "close deferred to the last export"},
    {"_trim", T_BOOL, offsetof(FileBase, trim), 0,
     "drop released slices' pages from this process (madvise MADV_DONTNEED)"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef file_getset[] = {
    {"_mgr", (getter)file_get_mgr, (setter)file_set_mgr, "the LockManager", NULL},
    {"_mmap", (getter)file_get_map, NULL, "the current mmap, or None", NULL},
    {"_live_slices", (getter)file_get_nlive, NULL, "slices holding pins", NULL},
    {"_trim_stats", (getter)file_get_trim_stats, NULL,
     "(madvise calls, bytes dropped, failed calls, bytes gathered and not yet dropped)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyObject *file_tp_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    FileBase *f = (FileBase *)type->tp_alloc(type, 0);
    if (!f) return NULL;
    f->epoch = -1;
    f->trim = 1;
    Py_INCREF(Py_None);
    f->path = Py_None;
    return (PyObject *)f;
}

static PyTypeObject FileBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmslice._fastpath.FileBase",
    .tp_doc = "C base of MappedFile: slicing and the bookkeeping of its slices.",
    .tp_basicsize = sizeof(FileBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = file_tp_new,
    .tp_dealloc = (destructor)file_dealloc,
    .tp_traverse = (traverseproc)file_traverse,
    .tp_clear = (inquiry)file_clear,
    .tp_as_mapping = &file_as_mapping,
    .tp_methods = file_methods,
    .tp_members = file_members,
    .tp_getset = file_getset,
    .tp_weaklistoffset = offsetof(FileBase, weakrefs),
};

/* --- LockManager.pin / unpin -------------------------------------------------- */

/* The public pin API counts per reference: the manager's pin map
 * (ss_pinmap.h, reached through ss_fp_manager_pins) maps each reference
 * pin() handed out to how many pin() calls returned it (pins of one region by
 * one process share an entry, so a reference can come back several times),
 * and unpin(ref) drops a count only while pin() calls hold one.  So an unpin
 * too many raises instead of dropping a pin that a slice or buffer of the
 * same region holds (the core's count includes theirs).  Every change to the
 * map is made here, with the GIL held from the core call to the map update
 * (neither releases it or runs Python code), so threads cannot interleave
 * them.
 *
 * A forked child inherits the map with its parent's references; its unpin
 * of one reaches the core, which answers SS_ENOTOWNER (the entry's owner is
 * the parent's slot), and the count stays.  After close the handle is NULL
 * and both calls go to the slow path, which raises; the map is not read. */

/* Count pin ref (>= 0, just taken through h) and return it as an int; on
 * failure the pin is dropped again, as nobody could ever unpin it. */
static PyObject *pin_counted(PyObject *mgr, ss_handle *h, int64_t ref)
{
    ss_pinmap *m = ss_fp_manager_pins(mgr);
    if (ss_pinmap_add(m, ref) < 0) {
        if (h) (void)core_unpin(h, ref);
        return NULL;
    }
    PyObject *ref_obj = PyLong_FromLongLong(ref);
    if (!ref_obj) {
        ss_pinslot *slot = ss_pinmap_find(m, ref);
        if (slot) ss_pinmap_drop(m, slot);
        if (h) (void)core_unpin(h, ref);
    }
    return ref_obj;
}

/* Plain arguments here, everything else (validation, errors) in
 * LockManager._pin_slow, whose reference is counted here too. */
static PyObject *manager_pin(PyObject *mgr, PyObject *const *args, Py_ssize_t nargs)
{
    static PyObject *slow;
    ss_handle *h = ss_fp_manager_handle(mgr);
    if (nargs == 2 && h && PyLong_CheckExact(args[0]) && PyLong_CheckExact(args[1])) {
        int o1, o2;
        long long a = PyLong_AsLongLongAndOverflow(args[0], &o1);
        long long b = PyLong_AsLongLongAndOverflow(args[1], &o2);
        if (!o1 && !o2 && a >= 0 && b > a) {
            int64_t ref = core_pin(h, a, b);
            if (ref >= 0) return pin_counted(mgr, h, ref);
        }
        PyErr_Clear();
    }
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "pin() takes start and end (%zd given)", nargs);
        return NULL;
    }
    if (!slow && !(slow = PyUnicode_InternFromString("_pin_slow"))) return NULL;
    PyObject *call[3] = {mgr, args[0], args[1]};
    PyObject *ref_obj = PyObject_VectorcallMethod(slow, call, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                                  NULL);
    if (!ref_obj) return NULL;
    int overflow = 0;
    long long ref = PyLong_CheckExact(ref_obj) ? PyLong_AsLongLongAndOverflow(ref_obj, &overflow)
                                               : -1;
    Py_DECREF(ref_obj);
    if (ref < 0 || overflow) {   /* it raises for every failed pin: a reference or nothing */
        PyErr_SetString(PyExc_TypeError, "LockManager._pin_slow must return an int");
        return NULL;
    }
    /* The slow path may have waited without the GIL: the manager may be
     * closed by now, and then its pins are gone with it. */
    return pin_counted(mgr, ss_fp_manager_handle(mgr), ref);
}

static PyObject *manager_unpin(PyObject *mgr, PyObject *ref_obj)
{
    static PyObject *slow;
    ss_handle *h = ss_fp_manager_handle(mgr);
    if (!h || !PyLong_CheckExact(ref_obj)) {
        /* Wrong type, or a closed manager: the slow path raises for it. */
        if (!slow && !(slow = PyUnicode_InternFromString("_unpin_slow"))) return NULL;
        PyObject *call[2] = {mgr, ref_obj};
        return PyObject_VectorcallMethod(slow, call, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    int overflow;
    long long ref = PyLong_AsLongLongAndOverflow(ref_obj, &overflow);
    ss_pinmap *m = ss_fp_manager_pins(mgr);
    ss_pinslot *slot = (overflow || ref < 0) ? NULL : ss_pinmap_find(m, ref);
    if (!slot) {
        PyErr_Format(PyExc_ValueError,
                     "pin %R is not held through this manager's pin(): unpinned already as "
                     "many times as pin() returned it, or not a reference from pin()", ref_obj);
        return NULL;
    }
    int rc = core_unpin(h, ref);
    if (rc < 0) {
        if (rc == SS_ENOTOWNER)
            PyErr_Format(PyExc_ValueError,
                         "pin %R is not held by this process (a forked child cannot unpin "
                         "its parent's pins)", ref_obj);
        else {
            PyObject *st = PyLong_FromLong(rc);
            if (st) {
                PyObject *args[] = {mgr, st};
                Py_XDECREF(PyObject_VectorcallMethod(str_raise_status, args,
                                                     2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL));
                Py_DECREF(st);
            }
        }
        return NULL;
    }
    ss_pinmap_drop(m, slot);   /* core_unpin ran no Python code: slot is still ref's */
    Py_RETURN_NONE;
}

static PyMethodDef manager_pin_def = {
    "pin", (PyCFunction)(void (*)(void))manager_pin, METH_FASTCALL,
    "pin(start, end)\n--\n\nAdd one pin on [start, end) for this process; returns a reference "
    "for unpin().\n\nPins conflict with no lock; they stop the file from being shrunk below end."};
static PyMethodDef manager_unpin_def = {
    "unpin", (PyCFunction)manager_unpin, METH_O,
    "unpin(ref)\n--\n\nDrop one pin taken by pin(); ValueError if every pin() that returned\n"
    "ref was unpinned already (a slice's pin of the same region is never dropped)."};

/* --- LockManager.locks ------------------------------------------------------------ */

typedef int (*snapshot_fn)(ss_handle *, ss_entry_info *, uint32_t, uint32_t *);
static snapshot_fn core_snapshot;
static PyTypeObject *lock_info_type;   /* shmslice.locks.LockInfo (a slots dataclass) */
enum { LI_START, LI_END, LI_KIND, LI_PID, LI_COUNT, LI_WAITING, LI_ALIVE, LI_TID, LI_SINCE,
       LI_FIELDS };
static const char *const lock_info_fields[LI_FIELDS] = {
    "start", "end", "kind", "pid", "count", "waiting", "alive", "tid", "since"};
static Py_ssize_t lock_info_offset[LI_FIELDS];
static PyObject *kind_name[4];          /* "?", "shared", "exclusive", "pin" */
static const int kind_rank[4] = {0, 3, 1, 2};   /* sorting by name: ? < exclusive < pin < shared */

static int entry_order(const void *pa, const void *pb)
{
    const ss_entry_info *a = pa, *b = pb;
    if (a->start != b->start) return a->start < b->start ? -1 : 1;
    if (a->end != b->end) return a->end < b->end ? -1 : 1;
    int ka = kind_rank[a->kind < 4 ? a->kind : 0], kb = kind_rank[b->kind < 4 ? b->kind : 0];
    if (ka != kb) return ka < kb ? -1 : 1;
    return (a->pid > b->pid) - (a->pid < b->pid);
}

/* A LockInfo made without running its (frozen dataclass) __init__: the
 * slots are written directly, at the offsets bind_lock_info read from the
 * class's member descriptors. */
static PyObject *lock_info_new(const ss_entry_info *e)
{
    PyObject *info = lock_info_type->tp_alloc(lock_info_type, 0);
    if (!info) return NULL;
    PyObject *v[LI_FIELDS];
    v[LI_START] = PyLong_FromUnsignedLongLong(e->start);
    v[LI_END] = PyLong_FromUnsignedLongLong(e->end);
    v[LI_KIND] = kind_name[e->kind < 4 ? e->kind : 0];
    Py_INCREF(v[LI_KIND]);
    v[LI_PID] = PyLong_FromLong(e->pid);
    v[LI_COUNT] = PyLong_FromUnsignedLong(e->count);
    v[LI_WAITING] = PyBool_FromLong(e->state == SS_WAITING);
    v[LI_ALIVE] = PyBool_FromLong(e->alive != 0);
    v[LI_TID] = PyLong_FromLong(e->tid);
    v[LI_SINCE] = PyFloat_FromDouble((double)e->since_ns / 1e9);
    int failed = 0;
    for (int k = 0; k < LI_FIELDS; k++) {
        if (!v[k]) failed = 1;
        *(PyObject **)((char *)info + lock_info_offset[k]) = v[k];   /* steals */
    }
    if (failed) {
        Py_DECREF(info);
        return NULL;
    }
    return info;
}

/* locks(*, waiting=False): the table's entries as LockInfo, sorted by region. */
static PyObject *manager_locks(PyObject *mgr, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames)
{
    static PyObject *slow;
    if (!slow && !(slow = PyUnicode_InternFromString("_locks_slow"))) return NULL;
    int waiting = 0;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs) {
        PyErr_Format(PyExc_TypeError, "locks() takes no positional arguments (%zd given); "
                     "use locks(waiting=True)", nargs);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nkw; i++) {
        if (PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, i), "waiting") != 0) {
            PyErr_Format(PyExc_TypeError, "locks() got an unexpected keyword argument '%U'",
                         PyTuple_GET_ITEM(kwnames, i));
            return NULL;
        }
        if ((waiting = PyObject_IsTrue(args[i])) < 0) return NULL;
    }
    ss_handle *h = ss_fp_manager_handle(mgr);
    if (!h || !core_snapshot || !lock_info_type) {   /* closed: the slow path says so */
        PyObject *call[2] = {mgr, waiting ? Py_True : Py_False};
        return PyObject_VectorcallMethod(slow, call, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    ss_entry_info local[64], *buf = local;
    uint32_t cap = 64, count = 0;
    for (;;) {
        int rc = core_snapshot(h, buf, cap, &count);
        if (rc < 0) {
            if (buf != local) PyMem_Free(buf);
            PyObject *call[2] = {mgr, waiting ? Py_True : Py_False};
            return PyObject_VectorcallMethod(slow, call, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        }
        if (count <= cap) break;
        if (buf != local) PyMem_Free(buf);
        cap = count + 64;
        buf = PyMem_Malloc(sizeof *buf * cap);
        if (!buf) return PyErr_NoMemory();
    }
    qsort(buf, count, sizeof *buf, entry_order);
    PyObject *out = PyList_New(0);
    for (uint32_t i = 0; out && i < count; i++) {
        if ((buf[i].state == SS_WAITING && !waiting) || buf[i].kind == SS_ORPHAN) continue;
        PyObject *info = lock_info_new(&buf[i]);
        if (!info || PyList_Append(out, info) < 0) Py_CLEAR(out);
        Py_XDECREF(info);
    }
    if (buf != local) PyMem_Free(buf);
    return out;
}

static PyMethodDef manager_locks_def = {
    "locks", (PyCFunction)(void (*)(void))manager_locks, METH_FASTCALL | METH_KEYWORDS,
    "locks(*, waiting=False)\n--\n\nEvery pin and lock in the table, from all processes, "
    "sorted by region.\n\nEntries of dead processes not yet reaped are included with "
    "alive=False;\nrequests still waiting are included only with waiting=True."};

/* bind_lock_info(LockInfo, snapshot address): how manager_locks builds its
 * results.  LockInfo must keep its fields in slots. */
static PyObject *fastpath_bind_lock_info(PyObject *module, PyObject *const *args,
                                         Py_ssize_t nargs)
{
    if (nargs != 2 || !PyType_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "bind_lock_info(LockInfo, snapshot_address)");
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)args[0];
    Py_ssize_t offset[LI_FIELDS];
    for (int k = 0; k < LI_FIELDS; k++) {
        PyObject *d = PyObject_GetAttrString(args[0], lock_info_fields[k]);
        if (!d) return NULL;
        int ok = Py_IS_TYPE(d, &PyMemberDescr_Type) &&
                 ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX;
        if (ok) offset[k] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_DECREF(d);
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "LockInfo.%s is not a slot", lock_info_fields[k]);
            return NULL;
        }
    }
    void *address = PyLong_AsVoidPtr(args[1]);
    if (!address) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "null function address");
        return NULL;
    }
    memcpy(lock_info_offset, offset, sizeof offset);
    core_snapshot = (snapshot_fn)address;
    Py_INCREF(type);
    Py_XSETREF(lock_info_type, type);
    Py_RETURN_NONE;
}

/* --- module part ----------------------------------------------------------------- */

/* bind_slices(pin, unpin, size_epoch, asarray, rebuild): core entry points
 * (addresses from cffi) and the Python helpers for arrays and unpickling. */
static PyObject *fastpath_bind_slices(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "bind_slices(pin, unpin, size_epoch, asarray, rebuild)");
        return NULL;
    }
    void *address[3];
    for (int i = 0; i < 3; i++) {
        address[i] = PyLong_AsVoidPtr(args[i]);
        if (PyErr_Occurred()) return NULL;
        if (!address[i]) {
            PyErr_SetString(PyExc_ValueError, "null function address");
            return NULL;
        }
    }
    core_pin = (pin_fn)address[0];
    core_unpin = (unpin_fn)address[1];
    core_size_epoch = (epoch_fn)address[2];
    Py_INCREF(args[3]);
    Py_XSETREF(array_helper, args[3]);
    Py_INCREF(args[4]);
    Py_XSETREF(rebuild_helper, args[4]);
    Py_RETURN_NONE;
}

/* bind_write_gen(note_write, unpin_written, tokenize): the core's
 * ss_note_write and ss_unpin_written (addresses from cffi) and the Python
 * helper behind ByteBufferSlice.__dask_tokenize__. */
static PyObject *fastpath_bind_write_gen(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "bind_write_gen(note_write, unpin_written, tokenize)");
        return NULL;
    }
    void *address[2];
    for (int i = 0; i < 2; i++) {
        address[i] = PyLong_AsVoidPtr(args[i]);
        if (!address[i]) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "null function address");
            return NULL;
        }
    }
    core_note_write = (epoch_fn)address[0];
    core_unpin_written = (unpin_fn)address[1];
    Py_INCREF(args[2]);
    Py_XSETREF(tokenize_helper, args[2]);
    Py_RETURN_NONE;
}

static PyMethodDef slice_module_functions[] = {
    {"bind_write_gen", (PyCFunction)(void (*)(void))fastpath_bind_write_gen, METH_FASTCALL,
     "bind_write_gen(note_write, unpin_written, tokenize)"},
    {"bind_slices", (PyCFunction)(void (*)(void))fastpath_bind_slices, METH_FASTCALL,
     "bind_slices(pin, unpin, size_epoch, asarray, rebuild)"},
    {"bind_lock_info", (PyCFunction)(void (*)(void))fastpath_bind_lock_info, METH_FASTCALL,
     "bind_lock_info(LockInfo, snapshot_address)"},
    {NULL, NULL, 0, NULL},
};

int ss_fp_slice_init(PyObject *module)
{
#define INTERN(var, text) if (!((var) = PyUnicode_InternFromString(text))) return -1
    INTERN(str_slice_slow, "_slice_slow");
    INTERN(str_byte_at, "_byte_at");
    INTERN(str_refresh, "_refresh");
    INTERN(str_finish_close, "_finish_close");
    INTERN(str_raise_status, "_raise_status");
    INTERN(str_lock, "lock");
    INTERN(str_lock_async, "lock_async");
    INTERN(str_hex, "hex");
#undef INTERN
    if (PyType_Ready(&MapHoldType) < 0 || PyType_Ready(&SliceType) < 0 ||
        PyType_Ready(&FileBaseType) < 0 || PyType_Ready(&WithDescrType) < 0 ||
        PyType_Ready(&EnterMethodType) < 0 ||
        PyType_Ready(&ExitMethodType) < 0 || add_with_methods() < 0)
        return -1;
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0 || (page & (page - 1))) {
        PyErr_Format(PyExc_OSError, "unexpected page size %ld", page);
        return -1;
    }
    page_mask = page - 1;
    if (pthread_atfork(NULL, NULL, after_fork_in_child) != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
        return -1;
    }
    if (PyModule_AddObjectRef(module, "ByteBufferSlice", (PyObject *)&SliceType) < 0 ||
        PyModule_AddObjectRef(module, "FileBase", (PyObject *)&FileBaseType) < 0)
        return -1;
    PyObject *pin = PyDescr_NewMethod(ss_fp_manager_type(), &manager_pin_def);
    if (!pin || PyModule_AddObject(module, "manager_pin", pin) < 0) {
        Py_XDECREF(pin);
        return -1;
    }
    PyObject *unpin = PyDescr_NewMethod(ss_fp_manager_type(), &manager_unpin_def);
    if (!unpin || PyModule_AddObject(module, "manager_unpin", unpin) < 0) {
        Py_XDECREF(unpin);
        return -1;
    }
    PyObject *locks = PyDescr_NewMethod(ss_fp_manager_type(), &manager_locks_def);
    if (!locks || PyModule_AddObject(module, "manager_locks", locks) < 0) {
        Py_XDECREF(locks);
        return -1;
    }
    const char *names[4] = {"?", "shared", "exclusive", "pin"};
    for (int k = 0; k < 4; k++)
        if (!(kind_name[k] = PyUnicode_InternFromString(names[k]))) return -1;
    return PyModule_AddFunctions(module, slice_module_functions);
}
