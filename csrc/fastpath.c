/*
 * fastpath.c -- shmslice._fastpath, the CPython side of the two calls that
 * lock-heavy code makes millions of times: LockManager.lock() when the lock is
 * free, and RegionLock.release().
 *
 * Why a hand-written extension beside the cffi binding: measured with
 * callgrind, one lock+release through cffi costs ~9,400 instructions, of which
 * the C core is ~1,000; the rest is cffi's tuple-based call convention, a GIL
 * release and re-acquire per call, and the Python wrapper.  Here the
 * uncontended case is a vectorcall method on a C base class of LockManager
 * that builds a C RegionLock directly.
 *
 * The core itself is not compiled again: the cffi module hands over pointers
 * to ss_lock and ss_release (ss_fastpath_bind), so each process has exactly
 * one copy of the core's state (its fork registry above all).
 *
 * The fast path holds the GIL only while it *tries* the lock (ss_lock_try:
 * a short spin on a busy table mutex, never a sleep).  If the lock is taken,
 * or the mutex is busy, it waits in C with the GIL released, in resumable
 * steps (ss_lock_wait): every step returns within ~50 ms, and at once after
 * a signal, so the GIL is re-taken and PyErr_CheckSignals() runs the
 * handlers; if one raises, the request is withdrawn (ss_lock_cancel), else
 * the wait resumes with its place kept.  Release likewise only tries the
 * mutex with the GIL held.
 *
 * Calls back into Python, by method name, on the LockManager subclass (the
 * one contract between this file and shmslice/locks.py; locks.py passes its
 * class to check_manager_class() at import, which refuses a class without
 * them):
 *   _lock_slow(start, end, mode, timeout) -> RegionLock
 *       every lock() this file does not finish itself: arguments to convert
 *       or reject, try-lock failures, a closed manager; it raises the
 *       documented exceptions.
 *   _raise_status(status) -> never returns
 *       raises the exception for a negative core status (detail from the
 *       core's per-thread message).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <time.h>

#include "shmslice.h"
#include "ss_pinmap.h"

typedef int64_t (*ss_lock_try_fn)(ss_handle *, int64_t, int64_t, int);
typedef int64_t (*ss_lock_wait_fn)(ss_handle *, ss_wait *, int64_t, int64_t, int, int64_t);
typedef int (*ss_lock_cancel_fn)(ss_handle *, ss_wait *);
typedef int (*ss_release_fn)(ss_handle *, int64_t);
typedef int64_t (*ss_pin_fn)(ss_handle *, int64_t, int64_t);
typedef int64_t (*ss_upgrade_wait_fn)(ss_handle *, ss_wait *, int64_t, int64_t);

static ss_lock_try_fn core_lock_try;   /* set once by bind() */
static ss_lock_wait_fn core_lock_wait;
static ss_lock_cancel_fn core_lock_cancel;
static ss_release_fn core_release_try;
static ss_release_fn core_release;  /* also ss_unpin: same signature */
static ss_pin_fn core_pin;
static ss_release_fn core_unpin;
static ss_upgrade_wait_fn core_upgrade_wait;
static ss_release_fn core_downgrade;   /* same signature as release */
static ss_release_fn core_owner_died;  /* ss_lock_owner_died: same signature */
static PyObject *str_exclusive;     /* interned "exclusive" */
static PyObject *str_shared;        /* interned "shared" */
static PyObject *str_lock_slow;     /* interned "_lock_slow" */
static PyObject *str_raise_status;  /* interned "_raise_status" */

/* --- ManagerBase: the C part of every LockManager ------------------------- */

typedef struct {
    PyObject_HEAD
    ss_handle *handle;     /* NULL until attached and again once closed */
    PyObject *owner;       /* the cffi cdata that owns (and frees) handle */
    int writable;          /* data file open for writing: exclusive allowed */
    ss_pinmap pins;        /* pin()'s per-reference counts (slice.c, "LockManager.pin /
                            * unpin"); guarded by the GIL; freed with the manager, kept
                            * across close (the API then raises before reading it) and
                            * inherited by a forked child, whose unpin of a parent's
                            * reference the core refuses (SS_ENOTOWNER) */
} ManagerBase;

/* --- RegionLock ------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    ManagerBase *mgr;      /* strong reference: keeps handle's owner alive */
    int64_t ref;           /* entry reference from ss_lock, -1 once released */
    long long start;       /* region [start, end) */
    long long end;
    PyObject *mode;        /* "shared" or "exclusive" */
    int owner_died;        /* -1 not asked yet, else the answer (asked while held) */
} RegionLockObject;

static PyTypeObject RegionLockType;

/* --- Ready: an awaitable already done (for RegionLock's async with) -------- */

typedef struct {
    PyObject_HEAD
    PyObject *value;       /* what `await` gives; NULL once given */
} ReadyObject;

static PyTypeObject ReadyType;

static PyObject *ready_new(PyObject *value)
{
    ReadyObject *r = PyObject_New(ReadyObject, &ReadyType);
    if (!r) return NULL;
    Py_INCREF(value);
    r->value = value;
    return (PyObject *)r;
}

static void ready_dealloc(ReadyObject *r)
{
    Py_CLEAR(r->value);
    PyObject_Free(r);
}

static PyObject *ready_await(PyObject *self)
{
    Py_INCREF(self);
    return self;
}

/* The first step ends the await with the value (StopIteration(value)). */
static PyObject *ready_next(ReadyObject *r)
{
    PyObject *value = r->value ? r->value : Py_None;
    PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, value);
    if (stop) {
        PyErr_SetObject(PyExc_StopIteration, stop);
        Py_DECREF(stop);
    }
    Py_CLEAR(r->value);
    return NULL;
}

static PyAsyncMethods ready_async = {.am_await = ready_await};

static PyTypeObject ReadyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmslice._fastpath.Ready",
    .tp_doc = "An awaitable that is already done (RegionLock.__aenter__/__aexit__).",
    .tp_basicsize = sizeof(ReadyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)ready_dealloc,
    .tp_as_async = &ready_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)ready_next,
};

static PyObject *region_lock_new(ManagerBase *mgr, int64_t ref, long long start,
                                 long long end, PyObject *mode)
{
    RegionLockObject *lk = PyObject_GC_New(RegionLockObject, &RegionLockType);
    if (!lk) return NULL;
    Py_INCREF(mgr);
    lk->mgr = mgr;
    lk->ref = ref;
    lk->start = start;
    lk->end = end;
    Py_INCREF(mode);
    lk->mode = mode;
    lk->owner_died = -1;
    PyObject_GC_Track(lk);
    return (PyObject *)lk;
}

static int region_lock_traverse(RegionLockObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->mgr);
    return 0;
}

static int region_lock_clear(RegionLockObject *self)
{
    Py_CLEAR(self->mgr);
    return 0;
}

static void region_lock_dealloc(RegionLockObject *self)
{
    /* Like threading.Lock, dropping a RegionLock does not release it. */
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->mgr);
    Py_CLEAR(self->mode);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Release the lock; releasing twice, after close, or in a forked child
 * (where the parent still holds it) does nothing. */
static PyObject *region_lock_release(RegionLockObject *self, PyObject *unused)
{
    (void)unused;
    int64_t ref = self->ref;
    if (ref < 0 || !self->mgr || !self->mgr->handle) {
        self->ref = -1;
        Py_RETURN_NONE;
    }
    self->ref = -1;
    ss_handle *h = self->mgr->handle;
    int rc = core_release_try(h, ref);
    if (rc == SS_EAGAIN) {   /* the table mutex is busy: wait for it without the GIL */
        Py_BEGIN_ALLOW_THREADS
        rc = core_release(h, ref);
        Py_END_ALLOW_THREADS
    }
    if (rc >= 0 || rc == SS_ENOTOWNER || rc == SS_ECLOSED) Py_RETURN_NONE;
    PyObject *status = PyLong_FromLong(rc);
    if (!status) return NULL;
    PyObject *args[] = {(PyObject *)self->mgr, status};
    PyObject *res = PyObject_VectorcallMethod(str_raise_status, args,
                                              2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(status);
    return res;   /* _raise_status raises: NULL */
}

/* Raise, through the manager's _raise_status, for a failed core call. */
static PyObject *raise_for(ManagerBase *mgr, int64_t rc)
{
    PyObject *status = PyLong_FromLongLong(rc);
    if (!status) return NULL;
    PyObject *args[] = {(PyObject *)mgr, status};
    PyObject *res = PyObject_VectorcallMethod(str_raise_status, args,
                                              2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(status);
    Py_XDECREF(res);
    return NULL;   /* _raise_status always raises */
}

/* timeout (None or seconds >= 0) -> nanoseconds, -1 forever; -1 return on error. */
static int timeout_arg(PyObject *timeout, int64_t *out)
{
    *out = -1;
    if (!timeout || timeout == Py_None) return 0;
    if (PyBool_Check(timeout) || !(PyFloat_Check(timeout) || PyLong_Check(timeout))) {
        PyErr_Format(PyExc_TypeError, "timeout must be a number of seconds or None, not %s",
                     Py_TYPE(timeout)->tp_name);
        return -1;
    }
    double t = PyFloat_AsDouble(timeout);
    if (t == -1.0 && PyErr_Occurred()) return -1;
    if (!(t >= 0.0)) {
        PyErr_Format(PyExc_ValueError, "timeout must be >= 0 seconds or None, got %R", timeout);
        return -1;
    }
    *out = t * 1e9 < 9.2e18 ? (int64_t)(t * 1e9) : -1;
    return 0;
}

static int lock_is_held(RegionLockObject *self)
{
    if (self->ref >= 0 && self->mgr && self->mgr->handle) return 1;
    PyErr_SetString(PyExc_ValueError, "the lock is released (or its manager closed)");
    return 0;
}

/* upgrade(timeout=None): shared -> exclusive in place; see the method doc. */
static PyObject *region_lock_upgrade(RegionLockObject *self, PyObject *const *args,
                                     Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *timeout = nargs > 0 ? args[0] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > 1 || nkw > 1 || (nkw == 1 && (nargs == 1 ||
        PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "timeout") != 0))) {
        PyErr_SetString(PyExc_TypeError, "upgrade() takes one optional argument, timeout");
        return NULL;
    }
    if (nkw == 1) timeout = args[nargs];
    int64_t timeout_ns;
    if (timeout_arg(timeout, &timeout_ns) < 0 || !lock_is_held(self)) return NULL;
    if (self->mode == str_exclusive) Py_RETURN_NONE;   /* already */
    if (!self->mgr->writable) {
        PyErr_SetString(PyExc_PermissionError, "the file was opened read-only: exclusive locks "
                        "(and upgrades) need write permission on the data file");
        return NULL;
    }
    ss_handle *h = self->mgr->handle;
    ss_wait w;
    memset(&w, 0, sizeof w);
    int64_t rc;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        rc = core_upgrade_wait(h, &w, self->ref, timeout_ns);
        Py_END_ALLOW_THREADS
        if (rc != SS_EWAITING) break;
        if (PyErr_CheckSignals() < 0) {
            Py_BEGIN_ALLOW_THREADS
            (void)core_lock_cancel(h, &w);
            Py_END_ALLOW_THREADS
            return NULL;
        }
    }
    if (rc < 0) return raise_for(self->mgr, rc);
    Py_INCREF(str_exclusive);
    Py_SETREF(self->mode, str_exclusive);
    Py_RETURN_NONE;
}

/* downgrade(): exclusive -> shared in place. */
static PyObject *region_lock_downgrade(RegionLockObject *self, PyObject *unused)
{
    (void)unused;
    if (!lock_is_held(self)) return NULL;
    if (self->mode == str_shared) Py_RETURN_NONE;
    ss_handle *h = self->mgr->handle;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = core_downgrade(h, self->ref);
    Py_END_ALLOW_THREADS
    if (rc < 0) return raise_for(self->mgr, rc);
    Py_INCREF(str_shared);
    Py_SETREF(self->mode, str_shared);
    Py_RETURN_NONE;
}

static PyObject *region_lock_enter(RegionLockObject *self, PyObject *unused)
{
    (void)unused;
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *region_lock_exit(RegionLockObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)args;
    (void)nargs;
    return region_lock_release(self, NULL);
}

static PyObject *region_lock_aenter(RegionLockObject *self, PyObject *unused)
{
    (void)unused;
    return ready_new((PyObject *)self);
}

static PyObject *region_lock_aexit(RegionLockObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)args;
    (void)nargs;
    PyObject *res = region_lock_release(self, NULL);
    if (!res) return NULL;
    Py_DECREF(res);
    return ready_new(Py_None);
}

static PyObject *region_lock_reduce(RegionLockObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    PyErr_SetString(PyExc_TypeError,
                    "a RegionLock belongs to the process that took it and cannot be pickled");
    return NULL;
}

static PyObject *region_lock_locked(RegionLockObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->ref >= 0 && self->mgr && self->mgr->handle);
}

static PyObject *region_lock_owner_died(RegionLockObject *self, void *closure)
{
    (void)closure;
    if (self->owner_died < 0 && self->ref >= 0 && self->mgr && self->mgr->handle) {
        int rc = core_owner_died(self->mgr->handle, self->ref);
        if (rc < 0) return raise_for(self->mgr, rc);
        self->owner_died = rc;
    }
    return PyBool_FromLong(self->owner_died > 0);
}

static PyObject *region_lock_get_ref(RegionLockObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromLongLong(self->ref);
}

static PyObject *region_lock_repr(RegionLockObject *self)
{
    int locked = self->ref >= 0 && self->mgr && self->mgr->handle;
    return PyUnicode_FromFormat("<shmslice.RegionLock %U [%lld, %lld) %s>", self->mode,
                                self->start, self->end, locked ? "locked" : "released");
}

static PyMethodDef region_lock_methods[] = {
    {"release", (PyCFunction)region_lock_release, METH_NOARGS,
     "release()\n--\n\nRelease the lock.  Releasing twice is harmless.  In a forked\n"
     "child, releasing a lock inherited from the parent only forgets it here:\n"
     "the parent still holds it."},
    {"upgrade", (PyCFunction)(void (*)(void))region_lock_upgrade, METH_FASTCALL | METH_KEYWORDS,
     "upgrade(timeout=None)\n--\n\nTurn this shared lock into an exclusive one, atomically: it\n"
     "waits for the other holders of overlapping locks to leave, and no other\n"
     "writer is granted the region in between (the lock keeps holding it).\n"
     "On timeout shmslice.LockTimeout is raised and the lock stays shared.  Two\n"
     "holders upgrading overlapping shared locks would wait for each other: the\n"
     "second gets shmslice.DeadlockError at once (still shared), the first\n"
     "proceeds when it lets go.  An exclusive lock is left as it is."},
    {"downgrade", (PyCFunction)region_lock_downgrade, METH_NOARGS,
     "downgrade()\n--\n\nTurn this exclusive lock into a shared one, atomically: waiting\n"
     "readers may enter, no writer can come in between.  A shared lock is left\n"
     "as it is."},
    {"__enter__", (PyCFunction)region_lock_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))region_lock_exit, METH_FASTCALL, NULL},
    {"__aenter__", (PyCFunction)region_lock_aenter, METH_NOARGS, NULL},
    {"__aexit__", (PyCFunction)(void (*)(void))region_lock_aexit, METH_FASTCALL, NULL},
    {"__reduce__", (PyCFunction)region_lock_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef region_lock_members[] = {
    {"start", T_LONGLONG, offsetof(RegionLockObject, start), READONLY, "first byte of the region"},
    {"end", T_LONGLONG, offsetof(RegionLockObject, end), READONLY, "one past the last byte"},
    {"mode", T_OBJECT, offsetof(RegionLockObject, mode), READONLY,
     "'shared' or 'exclusive': the current mode (upgrade() and downgrade() change it)"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef region_lock_getset[] = {
    {"locked", (getter)region_lock_locked, NULL,
     "True until released (or until its manager is closed).", NULL},
    {"owner_died", (getter)region_lock_owner_died, NULL,
     "True if the lock was granted over a region whose previous exclusive holder\n"
     "died holding it (the bytes may be half-written); see the README's rule.", NULL},
    {"_ref", (getter)region_lock_get_ref, NULL, "entry reference (-1 once released)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RegionLockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmslice.RegionLock",
    .tp_doc = "A granted lock on bytes [start, end) of a file; made by LockManager.lock().\n\n"
              "Release it with release() or a with block.  Like threading.Lock (and\n"
              "unlike a pin), dropping the object does not release it.",
    .tp_basicsize = sizeof(RegionLockObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)region_lock_dealloc,
    .tp_traverse = (traverseproc)region_lock_traverse,
    .tp_clear = (inquiry)region_lock_clear,
    .tp_repr = (reprfunc)region_lock_repr,
    .tp_methods = region_lock_methods,
    .tp_members = region_lock_members,
    .tp_getset = region_lock_getset,
};

/* --- ManagerBase methods ------------------------------------------------------ */

/* Subclasses (LockManager) are heap types over this static base: CPython's
 * subtype_traverse/subtype_dealloc visit and release the type itself.
 *
 * owner is deliberately not visited.  It is a cffi ffi.gc cdata whose
 * tp_finalize runs ss_free; the collector runs the finalizers of everything
 * in a garbage cycle before it clears anything, so if owner were seen as part
 * of a cycle through this manager, handle would be freed while finalizers
 * (and ByteBufferSlice deallocs) in the same cycle can still use it.  Unvisited,
 * owner counts as reachable and is freed only by manager_clear/dealloc, after
 * handle is NULL.  owner refers to nothing that could lead back to us. */
static int manager_traverse(ManagerBase *self, visitproc visit, void *arg)
{
    (void)self;
    (void)visit;
    (void)arg;
    return 0;
}

static int manager_clear(ManagerBase *self)
{
    self->handle = NULL;
    Py_CLEAR(self->owner);
    return 0;
}

static void manager_dealloc(ManagerBase *self)
{
    PyObject_GC_UnTrack(self);
    manager_clear(self);
    ss_pinmap_free(&self->pins);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* _attach_handle(owner, address, writable): owner is the cffi cdata that
 * frees the handle at address; it is kept alive as long as this object. */
static PyObject *manager_attach_handle(ManagerBase *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_attach_handle(owner, address, writable)");
        return NULL;
    }
    void *address = PyLong_AsVoidPtr(args[1]);
    if (!address && PyErr_Occurred()) return NULL;
    int writable = PyObject_IsTrue(args[2]);
    if (writable < 0) return NULL;
    Py_INCREF(args[0]);
    Py_XSETREF(self->owner, args[0]);
    self->handle = address;
    self->writable = writable;
    Py_RETURN_NONE;
}

/* _detach_handle(): every later fast call takes the slow path (which reports
 * the closed manager); RegionLocks become no-ops. */
static PyObject *manager_detach_handle(ManagerBase *self, PyObject *unused)
{
    (void)unused;
    self->handle = NULL;
    Py_RETURN_NONE;
}

static PyObject *slow_lock(ManagerBase *self, PyObject *start, PyObject *end, PyObject *mode,
                           PyObject *timeout)
{
    PyObject *args[] = {(PyObject *)self, start, end, mode ? mode : str_exclusive,
                        timeout ? timeout : Py_None};
    return PyObject_VectorcallMethod(str_lock_slow, args, 5 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                     NULL);
}

/* The RegionLock for a lock just granted; if it cannot be made (no memory),
 * nothing could ever release the lock, so release it here. */
static PyObject *granted(ManagerBase *self, ss_handle *h, int64_t ref, long long a,
                         long long b, PyObject *mode)
{
    PyObject *lk = region_lock_new(self, ref, a, b, mode);
    if (!lk) (void)core_release(h, ref);
    return lk;
}

/* lock(start, end, mode="exclusive", timeout=None) -> RegionLock */
static PyObject *manager_lock(ManagerBase *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    PyObject *start = NULL, *end = NULL, *mode = NULL, *timeout = NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > 4) {
        PyErr_SetString(PyExc_TypeError,
                        "lock() takes start, end and optional mode and timeout");
        return NULL;
    }
    start = nargs > 0 ? args[0] : NULL;
    end = nargs > 1 ? args[1] : NULL;
    mode = nargs > 2 ? args[2] : NULL;
    timeout = nargs > 3 ? args[3] : NULL;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        PyObject *value = args[nargs + i];
        PyObject **slot = NULL;
        if (PyUnicode_CompareWithASCIIString(name, "start") == 0) slot = &start;
        else if (PyUnicode_CompareWithASCIIString(name, "end") == 0) slot = &end;
        else if (PyUnicode_CompareWithASCIIString(name, "mode") == 0) slot = &mode;
        else if (PyUnicode_CompareWithASCIIString(name, "timeout") == 0) slot = &timeout;
        if (!slot) {
            PyErr_Format(PyExc_TypeError, "lock() got an unexpected keyword argument '%U'", name);
            return NULL;
        }
        if (*slot) {
            PyErr_Format(PyExc_TypeError, "lock() got multiple values for argument '%U'", name);
            return NULL;
        }
        *slot = value;
    }
    if (!start || !end) {
        PyErr_SetString(PyExc_TypeError, "lock() missing required argument 'start' or 'end'");
        return NULL;
    }

    /* Only the plain case is handled here; the slow path validates the rest. */
    if (!PyLong_CheckExact(start) || !PyLong_CheckExact(end) || !self->handle)
        return slow_lock(self, start, end, mode, timeout);
    int overflow = 0;
    long long a = PyLong_AsLongLongAndOverflow(start, &overflow);
    if (overflow) return slow_lock(self, start, end, mode, timeout);
    long long b = PyLong_AsLongLongAndOverflow(end, &overflow);
    if (overflow || a < 0 || b <= a) return slow_lock(self, start, end, mode, timeout);
    int kind;
    if (!mode || mode == str_exclusive) {
        kind = SS_EXCLUSIVE;
        mode = str_exclusive;
    } else if (mode == str_shared) {
        kind = SS_SHARED;
    } else if (PyUnicode_CheckExact(mode) && PyUnicode_Compare(mode, str_exclusive) == 0) {
        kind = SS_EXCLUSIVE;
        mode = str_exclusive;
    } else if (PyUnicode_CheckExact(mode) && PyUnicode_Compare(mode, str_shared) == 0) {
        kind = SS_SHARED;
        mode = str_shared;
    } else {
        return slow_lock(self, start, end, mode, timeout);
    }
    if (kind == SS_EXCLUSIVE && !self->writable)
        return slow_lock(self, start, end, mode, timeout);
    int64_t timeout_ns = -1;               /* only plain, valid numbers stay here */
    if (timeout && timeout != Py_None) {
        if (PyFloat_CheckExact(timeout)) {
            double t = PyFloat_AS_DOUBLE(timeout);
            if (!(t >= 0.0)) return slow_lock(self, start, end, mode, timeout);   /* < 0, NaN */
            timeout_ns = t * 1e9 < 9.2e18 ? (int64_t)(t * 1e9) : -1;          /* inf: forever */
        } else if (PyLong_CheckExact(timeout)) {
            long long t = PyLong_AsLongLongAndOverflow(timeout, &overflow);
            if (overflow < 0 || (!overflow && t < 0))
                return slow_lock(self, start, end, mode, timeout);
            timeout_ns = (overflow || t > INT64_MAX / 1000000000) ? -1 : t * 1000000000;
        } else {
            return slow_lock(self, start, end, mode, timeout);
        }
    }

    /* Try with the GIL held: a free lock costs one core call, and a busy
     * table mutex only a short spin. */
    ss_handle *h = self->handle;
    int64_t ref = core_lock_try(h, a, b, kind);
    if (ref >= 0) return granted(self, h, ref, a, b, mode);
    if ((ref != SS_ETIMEDOUT || timeout_ns == 0) && ref != SS_EAGAIN)
        return slow_lock(self, start, end, mode, timeout);   /* it raises the right error */

    /* Wait with the GIL released, in steps; see the top of this file. */
    ss_wait w;
    memset(&w, 0, sizeof w);
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        ref = core_lock_wait(h, &w, a, b, kind, timeout_ns);
        Py_END_ALLOW_THREADS
        if (ref != SS_EWAITING) break;
        if (PyErr_CheckSignals() < 0) {               /* e.g. KeyboardInterrupt */
            Py_BEGIN_ALLOW_THREADS
            (void)core_lock_cancel(h, &w);
            Py_END_ALLOW_THREADS
            return NULL;
        }
    }
    if (ref >= 0) return granted(self, h, ref, a, b, mode);
    PyObject *status = PyLong_FromLongLong(ref);
    if (!status) return NULL;
    PyObject *args2[] = {(PyObject *)self, status};
    PyObject *res = PyObject_VectorcallMethod(str_raise_status, args2,
                                              2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(status);
    Py_XDECREF(res);
    return NULL;   /* _raise_status always raises */
}

static PyObject *manager_make_lock(ManagerBase *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyUnicode_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "_make_lock(ref, start, end, mode)");
        return NULL;
    }
    long long ref = PyLong_AsLongLong(args[0]);
    long long a = PyLong_AsLongLong(args[1]);
    long long b = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred()) return NULL;
    return region_lock_new(self, ref, a, b, args[3]);
}

/* _pin_counts() -> {ref: count}: a copy of pin()'s per-reference counts, for
 * tests and debugging (nothing reads it back). */
static PyObject *manager_pin_counts(ManagerBase *self, PyObject *unused)
{
    (void)unused;
    PyObject *out = PyDict_New();
    if (!out) return NULL;
    const ss_pinmap *m = &self->pins;
    for (size_t i = 0; m->slots && i <= m->mask; i++) {
        if (!m->slots[i].count) continue;
        PyObject *ref = PyLong_FromLongLong(m->slots[i].ref);
        PyObject *count = ref ? PyLong_FromUnsignedLong(m->slots[i].count) : NULL;
        int rc = count ? PyDict_SetItem(out, ref, count) : -1;
        Py_XDECREF(ref);
        Py_XDECREF(count);
        if (rc < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

static PyMethodDef manager_methods[] = {
    {"lock", (PyCFunction)(void (*)(void))manager_lock, METH_FASTCALL | METH_KEYWORDS,
     "lock(start, end, mode='exclusive', timeout=None)\n--\n\n"
     "Lock bytes [start, end) of the file in mode 'exclusive' or 'shared'.\n\n"
     "timeout=None waits as long as it takes, 0 tries once, a positive number\n"
     "of seconds waits at most that long; when it runs out shmslice.LockTimeout\n"
     "is raised.  A request that could never be granted -- it conflicts with a\n"
     "lock the calling thread already holds, or waiting would close a cycle of\n"
     "threads and processes waiting for each other's locks -- raises\n"
     "shmslice.DeadlockError at once instead of waiting forever (err.cycle names\n"
     "the cycle; with timeout=0 it raises LockTimeout).  Release the returned RegionLock\n"
     "with release() or a with block; close() and process exit release it too.\n"
     "Dropping the RegionLock object does not."},
    {"_attach_handle", (PyCFunction)(void (*)(void))manager_attach_handle, METH_FASTCALL, NULL},
    {"_detach_handle", (PyCFunction)manager_detach_handle, METH_NOARGS, NULL},
    {"_make_lock", (PyCFunction)(void (*)(void))manager_make_lock, METH_FASTCALL, NULL},
    {"_pin_counts", (PyCFunction)manager_pin_counts, METH_NOARGS,
     "_pin_counts()\n--\n\nA copy of pin()'s outstanding counts, {ref: pin() calls not yet\n"
     "unpinned}; for tests and debugging."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ManagerBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmslice._fastpath.ManagerBase",
    .tp_doc = "C base of LockManager: the uncontended lock path.",
    .tp_basicsize = sizeof(ManagerBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    /* .tp_new: object.__new__, set in PyInit__fastpath (see there). */
    .tp_dealloc = (destructor)manager_dealloc,
    .tp_traverse = (traverseproc)manager_traverse,
    .tp_clear = (inquiry)manager_clear,
    .tp_methods = manager_methods,
};

/* --- for slice.c ------------------------------------------------------------------ */

/* The manager's core handle, NULL once it is closed (slice.c keeps no copy:
 * the manager stays the one owner of its handle). */
ss_handle *ss_fp_manager_handle(PyObject *manager)
{
    return ((ManagerBase *)manager)->handle;
}

PyTypeObject *ss_fp_manager_type(void) { return &ManagerBaseType; }

/* The manager's pin() counts (see ss_pinmap.h); they live as long as the
 * manager, so the pointer may be used while the caller holds a reference to
 * it and the GIL. */
ss_pinmap *ss_fp_manager_pins(PyObject *manager)
{
    return &((ManagerBase *)manager)->pins;
}

int ss_fp_slice_init(PyObject *module);   /* slice.c */

/* --- module --------------------------------------------------------------------- */

/* check_manager_class(cls): cls subclasses ManagerBase and has the methods
 * this file calls by name (see the top of the file). */
static PyObject *fastpath_check_manager_class(PyObject *module, PyObject *cls)
{
    (void)module;
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &ManagerBaseType)) {
        PyErr_SetString(PyExc_TypeError, "check_manager_class: not a ManagerBase subclass");
        return NULL;
    }
    PyObject *names[] = {str_lock_slow, str_raise_status};
    for (int i = 0; i < 2; i++) {
        PyObject *m = PyObject_GetAttr(cls, names[i]);
        if (!m) return NULL;
        int ok = PyCallable_Check(m);
        Py_DECREF(m);
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "%R.%U must be a method (fastpath.c calls it)",
                         cls, names[i]);
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

/* bind(lock_try, lock_wait, lock_cancel, release_try, release, pin, unpin):
 * the core's entry points, as addresses from cffi. */
static PyObject *fastpath_bind(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "bind(lock_try, lock_wait, lock_cancel, "
                        "release_try, release, pin, unpin, upgrade_wait, downgrade, owner_died)");
        return NULL;
    }
    void *address[10];
    for (int i = 0; i < 10; i++) {
        address[i] = PyLong_AsVoidPtr(args[i]);
        if (PyErr_Occurred()) return NULL;
        if (!address[i]) {
            PyErr_SetString(PyExc_ValueError, "null function address");
            return NULL;
        }
    }
    core_lock_try = (ss_lock_try_fn)address[0];
    core_lock_wait = (ss_lock_wait_fn)address[1];
    core_lock_cancel = (ss_lock_cancel_fn)address[2];
    core_release_try = (ss_release_fn)address[3];
    core_release = (ss_release_fn)address[4];
    core_pin = (ss_pin_fn)address[5];
    core_unpin = (ss_release_fn)address[6];
    core_upgrade_wait = (ss_upgrade_wait_fn)address[7];
    core_downgrade = (ss_release_fn)address[8];
    core_owner_died = (ss_release_fn)address[9];
    Py_RETURN_NONE;
}

static int as_manager(PyObject *obj, ManagerBase **out)
{
    if (!PyObject_TypeCheck(obj, &ManagerBaseType)) {
        PyErr_SetString(PyExc_TypeError, "expected a LockManager");
        return -1;
    }
    *out = (ManagerBase *)obj;
    return 0;
}

/* pin(manager, start, end) -> reference (>= 0) or a negative status.  For
 * the slices' hot path: one core call with the GIL held, no conversion layer;
 * the caller validates arguments and maps statuses to exceptions. */
static PyObject *fastpath_pin(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    ManagerBase *mgr;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "pin(manager, start, end)");
        return NULL;
    }
    if (as_manager(args[0], &mgr) < 0) return NULL;
    long long a = PyLong_AsLongLong(args[1]);
    long long b = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred()) return NULL;
    if (!mgr->handle) return PyLong_FromLong(SS_ECLOSED);
    return PyLong_FromLongLong(core_pin(mgr->handle, a, b));
}

/* unpin(manager, ref) -> status (0 or negative). */
static PyObject *fastpath_unpin(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    ManagerBase *mgr;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "unpin(manager, ref)");
        return NULL;
    }
    if (as_manager(args[0], &mgr) < 0) return NULL;
    long long ref = PyLong_AsLongLong(args[1]);
    if (PyErr_Occurred()) return NULL;
    if (!mgr->handle) return PyLong_FromLong(SS_ECLOSED);
    return PyLong_FromLong(core_unpin(mgr->handle, ref));
}

static PyMethodDef fastpath_functions[] = {
    {"bind", (PyCFunction)(void (*)(void))fastpath_bind, METH_FASTCALL,
     "bind(lock_try, lock_wait, lock_cancel, release_try, release, pin, unpin,\n"
     "upgrade_wait, downgrade, owner_died): the addresses of ss_lock_try,\n"
     "ss_lock_wait, ss_lock_cancel, ss_release_try, ss_release, ss_pin,\n"
     "ss_unpin, ss_upgrade_wait, ss_downgrade, ss_lock_owner_died."},
    {"check_manager_class", (PyCFunction)fastpath_check_manager_class, METH_O,
     "check_manager_class(cls): refuse a LockManager class lacking the methods\n"
     "the C fast path calls by name (_lock_slow, _raise_status)."},
    {"pin", (PyCFunction)(void (*)(void))fastpath_pin, METH_FASTCALL,
     "pin(manager, start, end) -> reference (>= 0) or negative status"},
    {"unpin", (PyCFunction)(void (*)(void))fastpath_unpin, METH_FASTCALL,
     "unpin(manager, ref) -> 0 or negative status"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fastpath_module = {
    PyModuleDef_HEAD_INIT, "shmslice._fastpath",
    "Uncontended LockManager.lock and RegionLock.release in C (see fastpath.c).",
    -1, fastpath_functions, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    str_exclusive = PyUnicode_InternFromString("exclusive");
    str_shared = PyUnicode_InternFromString("shared");
    str_lock_slow = PyUnicode_InternFromString("_lock_slow");
    str_raise_status = PyUnicode_InternFromString("_raise_status");
    if (!str_exclusive || !str_shared || !str_lock_slow || !str_raise_status) return NULL;
    /* object.__new__ rather than PyType_GenericNew: on 3.11 and 3.12 only
     * object.__new__ gives an instance of a subclass with a managed __dict__
     * (LockManager) its inline attribute values, and without them CPython
     * never specializes method calls on the instance: every mgr.pin(...),
     * mgr.unpin(...), mgr.lock(...) would pay a full attribute lookup (~400
     * instructions per pin + unpin, measured).  LockManager keeps its own
     * attributes in slots for the same reason (see shmslice/locks.py). */
    ManagerBaseType.tp_new = PyBaseObject_Type.tp_new;
    if (PyType_Ready(&RegionLockType) < 0 || PyType_Ready(&ManagerBaseType) < 0 ||
        PyType_Ready(&ReadyType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&fastpath_module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "RegionLock", (PyObject *)&RegionLockType) < 0 ||
        PyModule_AddObjectRef(m, "ManagerBase", (PyObject *)&ManagerBaseType) < 0 ||
        ss_fp_slice_init(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
