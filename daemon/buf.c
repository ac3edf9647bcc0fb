/* buf — fixed-size, reference-counted read buffers and their pool. */
#include "buf.h"

#include <assert.h>

#include "mem.h"

void buf_pool_init(buf_pool_t *p, size_t size, size_t max_free, stats_t *stats)
{
    p->size = size;
    p->max_free = max_free;
    p->nfree = 0;
    p->in_use = 0;
    p->free = NULL;
    p->large_free = NULL;
    p->nlarge_free = 0;
    p->stats = stats;
}

/* The units a buffer counts for in the pool's figures. */
static size_t units(const buf_pool_t *p, const buf_t *b)
{
    return b->size == p->size ? 1 : BUF_LARGE_UNITS;
}

/* Frees one buffer that is on no list any more. */
static void destroy(buf_pool_t *p, buf_t *b)
{
    mem_free(b);
    stats_obj_destroyed(p->stats, STATS_OBJ_BUFFER);
}

void buf_pool_dispose(buf_pool_t *p)
{
    assert(p->in_use == 0);
    buf_pool_trim(p, 0);
}

void buf_pool_trim(buf_pool_t *p, size_t keep)
{
    while (p->nfree > keep && p->large_free != NULL) {
        buf_t *b = p->large_free;
        p->large_free = b->next;
        p->nlarge_free--;
        p->nfree -= BUF_LARGE_UNITS;
        destroy(p, b);
    }
    while (p->nfree > keep && p->free != NULL) {
        buf_t *b = p->free;
        p->free = b->next;
        p->nfree--;
        destroy(p, b);
    }
}

/* Takes a buffer of `size` bytes from *list, or allocates one. */
static buf_t *get(buf_pool_t *p, buf_t **list, size_t size)
{
    buf_t *b = *list;
    if (b != NULL) {
        /* LIFO reuse: the most recently returned buffer is the likeliest to
         * still be in the CPU cache. */
        *list = b->next;
        p->nfree -= units(p, b);
        if (list == &p->large_free)
            p->nlarge_free--;
    } else {
        b = mem_alloc(sizeof(buf_t) + size);
        if (b == NULL)
            return NULL;
        /* Free-list buffers count too: they are live heap blocks. */
        stats_obj_created(p->stats, STATS_OBJ_BUFFER);
        b->pool = p;
        b->size = size;
    }
    b->refcnt = 1;
    b->next = NULL;
    b->len = 0;
    p->in_use += units(p, b);
    return b;
}

buf_t *buf_get(buf_pool_t *p)
{
    return get(p, &p->free, p->size);
}

buf_t *buf_get_large(buf_pool_t *p)
{
    return get(p, &p->large_free, p->size * BUF_LARGE_UNITS);
}

void buf_incref(buf_t *b)
{
    assert(b->refcnt > 0);
    b->refcnt++;
}

int buf_decref(buf_t *b)
{
    assert(b->refcnt > 0);
    if (--b->refcnt > 0)
        return 0;
    buf_pool_t *p = b->pool;
    size_t n = units(p, b);
    int large = n > 1;
    assert(p->in_use >= n);
    p->in_use -= n;
    if (p->nfree + n <= p->max_free && (!large || p->nlarge_free < BUF_LARGE_MAX_FREE)) {
        buf_t **list = large ? &p->large_free : &p->free;
        b->next = *list;
        *list = b;
        p->nfree += n;
        p->nlarge_free += (size_t)large;
    } else {
        destroy(p, b);
    }
    return 1;
}
