/* buf — fixed-size, reference-counted read buffers and their pool.
 *
 * A connection reads into a buf_t taken from the pool; the parser borrows it
 * while it runs, and a file sink takes its own reference while a write of
 * bytes inside it is in flight. The last decref gives the buffer back to the
 * pool's free list, or frees it when the free list is at its cap.
 *
 * Buffers come in two sizes: standard (the pool's size) and large
 * (BUF_LARGE_UNITS times that), which a connection reads into while a body
 * streams in: a quarter of the read syscalls for the same bytes, and well
 * over a 64 KiB loopback segment per read. The pool's counts (in_use, nfree,
 * max_free) are in units of the standard size, a large buffer counting
 * BUF_LARGE_UNITS, so that count * size stays the bytes they hold.
 *
 * Ownership: the pool owns the free buffers; each holder of a reference owns
 * that reference. A buffer borrows its pool, which must outlive it.
 */
#ifndef FETCHD_BUF_H
#define FETCHD_BUF_H

#include <stddef.h>

#include "stats.h"

/* A large buffer's data[] holds this many standard sizes. */
#define BUF_LARGE_UNITS 4
/* The most large buffers kept free (they count against max_free as well). */
#define BUF_LARGE_MAX_FREE 16

typedef struct buf_pool buf_pool_t;

typedef struct buf {
    buf_pool_t *pool; /* borrowed */
    unsigned refcnt;
    struct buf *next; /* free-list link, private */
    size_t size;      /* read-only: bytes of data[]: pool->size, or BUF_LARGE_UNITS times it */
    size_t len;       /* bytes of data[] in use; set by the user */
    char data[];      /* size bytes */
} buf_t;

struct buf_pool {
    size_t size;        /* read-only: bytes of data[] in a standard buffer (the unit) */
    size_t max_free;    /* read-only: cap of the free lists, in units */
    size_t nfree;       /* read-only: units on the free lists */
    size_t in_use;      /* read-only: units handed out and not yet returned */
    buf_t *free;        /* owned: standard buffers */
    buf_t *large_free;  /* owned: large buffers */
    size_t nlarge_free; /* read-only: large buffers on their free list */
    stats_t *stats;     /* borrowed */
};

void buf_pool_init(buf_pool_t *p, size_t size, size_t max_free, stats_t *stats);

/* Frees the free list. Buffers still in use are a bug (asserted). */
void buf_pool_dispose(buf_pool_t *p);

/* Frees free buffers, large ones first, until at most keep units remain
 * (used when memory is tight). */
void buf_pool_trim(buf_pool_t *p, size_t keep);

/* Returns a buffer with refcnt 1 and len 0 (a new reference), or NULL when
 * allocation fails. */
buf_t *buf_get(buf_pool_t *p);

/* The same for a large buffer (size BUF_LARGE_UNITS * p->size). */
buf_t *buf_get_large(buf_pool_t *p);

void buf_incref(buf_t *b);

/* Drops a reference; asserts refcnt > 0. Returns 1 when this was the last
 * reference (the buffer went back to the pool), 0 otherwise. */
int buf_decref(buf_t *b);

#endif
