/* strbuf — a growable, NUL-terminated byte buffer on the counting
 * allocator: response headers being assembled, a control line arriving in
 * pieces, the metrics page being rendered.
 *
 * Ownership: a strbuf_t is embedded in its owner and owns `p`.
 */
#ifndef FETCHD_STRBUF_H
#define FETCHD_STRBUF_H

#include <stddef.h>
#include <string.h>

typedef struct strbuf {
    char *p;    /* owned; NUL-terminated once anything was added */
    size_t len; /* read-only: bytes in use, without the NUL */
    size_t cap; /* read-only */
    int failed; /* read-only: an allocation failed; later appends do nothing */
} strbuf_t;

/* Appends n bytes. Returns 0, or ERR_NO_MEMORY (and sets failed). */
int strbuf_append(strbuf_t *b, const void *data, size_t n);

/* strbuf_append() for hot paths: bytes that fit are copied in place, here,
 * without a call. */
static inline int strbuf_put(strbuf_t *b, const void *data, size_t n)
{
    if (b->len + n < b->cap && !b->failed) {
        memcpy(b->p + b->len, data, n);
        b->len += n;
        b->p[b->len] = '\0';
        return 0;
    }
    return strbuf_append(b, data, n);
}

/* Makes room for n more bytes (and the NUL) at once. Returns 0, or
 * ERR_NO_MEMORY (and sets failed). */
int strbuf_reserve(strbuf_t *b, size_t n);

/* Room for n more bytes, written in place by the caller: their place, or
 * NULL once the buffer failed; strbuf_commit() then says where they end. */
static inline char *strbuf_room(strbuf_t *b, size_t n)
{
    if (b->failed || (b->len + n >= b->cap && strbuf_reserve(b, n) != 0))
        return NULL;
    return b->p + b->len;
}

/* Takes the bytes written since strbuf_room() up to end into the buffer. */
static inline void strbuf_commit(strbuf_t *b, char *end)
{
    b->len = (size_t)(end - b->p);
    b->p[b->len] = '\0';
}

/* Marks the buffer failed, as an allocation failure would: for a writer on
 * it that cannot go on (later appends do nothing). */
void strbuf_fail(strbuf_t *b);

/* Appends formatted text; a failure sets failed. */
void strbuf_printf(strbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Empties the buffer, keeping its memory for reuse. */
void strbuf_reset(strbuf_t *b);

/* Frees the memory and zeroes the buffer. */
void strbuf_dispose(strbuf_t *b);

#endif
