/* strbuf — growable byte buffers; see strbuf.h. */
#include "strbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "err.h"
#include "mem.h"

/* Makes room for n more bytes and the NUL, doubling the capacity. */
static int reserve(strbuf_t *b, size_t n)
{
    size_t cap = b->cap ? b->cap : 256;
    char *p;

    if (b->failed)
        return ERR_NO_MEMORY;
    if (b->len + n + 1 <= b->cap)
        return 0;
    while (cap < b->len + n + 1)
        cap *= 2;
    p = mem_realloc(b->p, cap);
    if (p == NULL) {
        b->failed = 1;
        return ERR_NO_MEMORY;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

int strbuf_reserve(strbuf_t *b, size_t n)
{
    return reserve(b, n);
}

void strbuf_fail(strbuf_t *b)
{
    b->failed = 1;
}

int strbuf_append(strbuf_t *b, const void *data, size_t n)
{
    int rc = reserve(b, n);
    if (rc != 0)
        return rc;
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

void strbuf_printf(strbuf_t *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = 1;
        return;
    }
    if (reserve(b, (size_t)n) != 0)
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void strbuf_reset(strbuf_t *b)
{
    b->len = 0;
    if (b->p)
        b->p[0] = '\0';
}

void strbuf_dispose(strbuf_t *b)
{
    mem_free(b->p);
    memset(b, 0, sizeof(*b));
}
