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
    p->stats = stats;
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
    while (p->nfree > keep) {
        buf_t *b = p->free;
        p->free = b->next;
        p->nfree--;
        destroy(p, b);
    }
}

buf_t *buf_get(buf_pool_t *p)
{
    buf_t *b = p->free;
    if (b != NULL) {
        /* LIFO reuse: the most recently returned buffer is the likeliest to
         * still be in the CPU cache. */
        p->free = b->next;
        p->nfree--;
    } else {
        b = mem_alloc(sizeof(buf_t) + p->size);
        if (b == NULL)
            return NULL;
        /* Free-list buffers count too: they are live heap blocks. */
        stats_obj_created(p->stats, STATS_OBJ_BUFFER);
        b->pool = p;
    }
    b->refcnt = 1;
    b->next = NULL;
    b->len = 0;
    p->in_use++;
    return b;
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
    assert(p->in_use > 0);
    p->in_use--;
    if (p->nfree < p->max_free) {
        b->next = p->free;
        p->free = b;
        p->nfree++;
    } else {
        destroy(p, b);
    }
    return 1;
}
