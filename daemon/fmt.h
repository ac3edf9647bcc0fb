/* fmt — integers to text without printf, for the per-fetch paths (request
 * heads, pool keys, the normalised response head, JSON). Header-only.
 */
#ifndef FETCHD_FMT_H
#define FETCHD_FMT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define FMT_U64_MAX 20 /* digits of UINT64_MAX */

/* Writes v in decimal at out (at least FMT_U64_MAX bytes, no NUL); returns
 * the number of digits. */
static inline size_t fmt_u64(char *out, uint64_t v)
{
    char d[FMT_U64_MAX];
    size_t n = 0;

    do {
        d[FMT_U64_MAX - ++n] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t i = 0; i < n; i++)
        out[i] = d[FMT_U64_MAX - n + i];
    return n;
}

/* Writes v in lowercase hex, at least `width` digits (zero-padded, at most
 * 16), at out (at least 16 bytes, no NUL); returns the number of digits. */
static inline size_t fmt_hex64(char *out, uint64_t v, unsigned width)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 1;

    while (n < 16 && (v >> (4 * n)) != 0)
        n++;
    if (n < width)
        n = width > 16 ? 16 : width;
    for (size_t i = 0; i < n; i++)
        out[i] = hex[(v >> (4 * (n - 1 - i))) & 15];
    return n;
}

/* Text built in a fixed buffer: appends that do not fit are cut, and over
 * says so. The caller adds the NUL if it wants one (len < cap always). */
typedef struct fmtbuf {
    char *p;
    size_t len, cap; /* cap: the buffer's size, at least 1 */
    int over;
} fmtbuf_t;

static inline void fmt_put(fmtbuf_t *b, const char *s, size_t n)
{
    size_t room = b->cap - 1 - b->len;

    if (n > room) {
        n = room;
        b->over = 1;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static inline void fmt_str(fmtbuf_t *b, const char *s)
{
    fmt_put(b, s, strlen(s));
}

static inline void fmt_dec(fmtbuf_t *b, uint64_t v)
{
    char d[FMT_U64_MAX];
    fmt_put(b, d, fmt_u64(d, v));
}

static inline void fmt_hex(fmtbuf_t *b, uint64_t v)
{
    char d[16];
    fmt_put(b, d, fmt_hex64(d, v, 1));
}

#endif
