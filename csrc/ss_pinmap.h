/*
 * ss_pinmap.h -- the per-reference counts of LockManager.pin/unpin: a small
 * open-addressing hash map, int64 pin reference -> uint32 count, owned by the
 * ManagerBase (fastpath.c embeds one in every manager and frees it with the
 * manager; slice.c, which implements pin/unpin, reaches it through
 * ss_fp_manager_pins()).
 *
 * Why not a dict: pin() + unpin() through a Python dict cost an attribute
 * lookup, two int allocations and two dict updates per round trip, about as
 * much as the core calls themselves.  Here a round trip is two probes of a
 * table that is usually one cache line, and nothing is allocated unless the
 * table grows.
 *
 * Layout: linear probing over a power-of-two array of slots; a slot is empty
 * iff its count is 0 (a calloc'd array is an empty table, and a reference is
 * removed when its count drops to 0).  Deletion shifts the following run back
 * (no tombstones), so a probe always ends at the first empty slot.  The table
 * is kept at most half full.
 *
 * Every function here must be called with the GIL held: the GIL is the lock
 * that guards the whole map, and none of them releases it or calls Python
 * code (allocation is PyMem_Calloc, which does neither).
 */
#ifndef SS_PINMAP_H
#define SS_PINMAP_H

#include <Python.h>
#include <stdint.h>

typedef struct {
    int64_t ref;       /* a reference pin() returned; meaningless while count == 0 */
    uint32_t count;    /* pin() calls that returned ref and were not unpinned; 0: empty */
} ss_pinslot;

typedef struct {
    ss_pinslot *slots; /* NULL until the first pin(); else mask + 1 slots (GIL) */
    size_t mask;       /* capacity - 1 (capacity a power of two); 0 while slots is NULL */
    size_t used;       /* slots with count > 0 (GIL) */
    unsigned shift;    /* 64 - log2(capacity): the hash keeps the top bits */
} ss_pinmap;

#define SS_PINMAP_MIN_BITS 3   /* 8 slots: 4 distinct references before the first growth */

/* Home slot of ref: Fibonacci hashing.  A reference is (serial << 32) | entry
 * index, so the low bits alone would already spread; the multiply mixes the
 * serial in as well. */
static inline size_t ss_pinmap_home(const ss_pinmap *m, int64_t ref)
{
    return (size_t)(((uint64_t)ref * UINT64_C(0x9E3779B97F4A7C15)) >> m->shift) & m->mask;
}

/* The slot counting ref, or NULL if pin() holds no count of it. */
static inline ss_pinslot *ss_pinmap_find(ss_pinmap *m, int64_t ref)
{
    if (!m->slots) return NULL;
    for (size_t i = ss_pinmap_home(m, ref);; i = (i + 1) & m->mask) {
        ss_pinslot *s = &m->slots[i];
        if (!s->count) return NULL;   /* the table is never full: a probe ends here */
        if (s->ref == ref) return s;
    }
}

/* Rebuild m with 2^bits slots.  0, or -1 with MemoryError set (m unchanged). */
static inline int ss_pinmap_resize(ss_pinmap *m, unsigned bits)
{
    size_t capacity = (size_t)1 << bits;
    ss_pinslot *slots = PyMem_Calloc(capacity, sizeof *slots);
    if (!slots) {
        PyErr_NoMemory();
        return -1;
    }
    ss_pinmap grown = {slots, capacity - 1, m->used, 64 - bits};
    for (size_t j = 0; m->slots && j <= m->mask; j++) {
        ss_pinslot *old = &m->slots[j];
        if (!old->count) continue;
        size_t i = ss_pinmap_home(&grown, old->ref);
        while (slots[i].count) i = (i + 1) & grown.mask;
        slots[i] = *old;
    }
    PyMem_Free(m->slots);
    *m = grown;
    return 0;
}

/* Count one more pin() of ref.  0; -1 with an exception set (no memory, or a
 * count that cannot grow) and m unchanged. */
static inline int ss_pinmap_add(ss_pinmap *m, int64_t ref)
{
    ss_pinslot *s = ss_pinmap_find(m, ref);
    if (s) {
        /* The core's count of the entry (a uint32 too) includes this one, so
         * it refuses the pin first; kept so the map never wraps regardless. */
        if (s->count == UINT32_MAX) {
            PyErr_SetString(PyExc_OverflowError, "pin count overflow");
            return -1;
        }
        s->count++;
        return 0;
    }
    if ((m->used + 1) * 2 > m->mask + 1 || !m->slots) {
        unsigned bits = m->slots ? 64 - m->shift + 1 : SS_PINMAP_MIN_BITS;
        if (bits >= sizeof(size_t) * 8 - 5) {   /* far beyond any table's entries */
            PyErr_NoMemory();
            return -1;
        }
        if (ss_pinmap_resize(m, bits) < 0) return -1;
    }
    size_t i = ss_pinmap_home(m, ref);
    while (m->slots[i].count) i = (i + 1) & m->mask;
    m->slots[i].ref = ref;
    m->slots[i].count = 1;
    m->used++;
    return 0;
}

/* Empty slot s (its count just dropped to 0): move the entries of the run
 * after it back so that every probe still finds them. */
static inline void ss_pinmap_remove(ss_pinmap *m, ss_pinslot *s)
{
    size_t hole = (size_t)(s - m->slots);
    for (size_t i = (hole + 1) & m->mask; m->slots[i].count; i = (i + 1) & m->mask) {
        size_t home = ss_pinmap_home(m, m->slots[i].ref);
        /* Movable into the hole unless its home lies cyclically in (hole, i]. */
        if (((i - home) & m->mask) >= ((i - hole) & m->mask)) {
            m->slots[hole] = m->slots[i];
            hole = i;
        }
    }
    m->slots[hole].count = 0;
    m->used--;
}

/* Drop one count of the reference in slot s (from ss_pinmap_find). */
static inline void ss_pinmap_drop(ss_pinmap *m, ss_pinslot *s)
{
    if (--s->count == 0) ss_pinmap_remove(m, s);
}

static inline void ss_pinmap_free(ss_pinmap *m)
{
    PyMem_Free(m->slots);
    m->slots = NULL;
    m->mask = 0;
    m->used = 0;
    m->shift = 0;
}

#endif
