/* buf — fixed-size, reference-counted read buffers and their pool.
 *
 * A connection reads into a buf_t taken from the pool; the parser borrows it
 * while it runs, and a file sink takes its own reference while a write of
 * bytes inside it is in flight. The last decref gives the buffer back to the
 * pool's free list, or frees it when the free list is at its cap.
 *
 * Ownership: the pool owns the free buffers; each holder of a reference owns
 * that reference. A buffer borrows its pool, which must outlive it.
 */
#ifndef FETCHD_BUF_H
#define FETCHD_BUF_H

#include <stddef.h>

#include "stats.h"

typedef struct buf_pool buf_pool_t;

typedef struct buf {
    buf_pool_t *pool; /* borrowed */
    unsigned refcnt;
    struct buf *next; /* free-list link, private */
    size_t len;       /* bytes of data[] in use; set by the user */
    char data[];      /* pool->size bytes */
} buf_t;

struct buf_pool {
    size_t size;     /* read-only: bytes of data[] in every buffer */
    size_t max_free; /* read-only: cap of the free list */
    size_t nfree;    /* read-only: buffers on the free list */
    size_t in_use;   /* read-only: buffers handed out and not yet returned */
    buf_t *free;     /* owned */
    stats_t *stats;  /* borrowed */
};

void buf_pool_init(buf_pool_t *p, size_t size, size_t max_free, stats_t *stats);

/* Frees the free list. Buffers still in use are a bug (asserted). */
void buf_pool_dispose(buf_pool_t *p);

/* Frees free buffers until at most keep remain (used when memory is tight). */
void buf_pool_trim(buf_pool_t *p, size_t keep);

/* Returns a buffer with refcnt 1 and len 0 (a new reference), or NULL when
 * allocation fails. */
buf_t *buf_get(buf_pool_t *p);

void buf_incref(buf_t *b);

/* Drops a reference; asserts refcnt > 0. Returns 1 when this was the last
 * reference (the buffer went back to the pool), 0 otherwise. */
int buf_decref(buf_t *b);

#endif
