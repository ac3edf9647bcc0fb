/* fmt — integers to text without printf, for the per-fetch paths (request
 * heads, pool keys, the normalised response head, JSON). Header-only.
 */
#ifndef FETCHD_FMT_H
#define FETCHD_FMT_H

#include <stddef.h>
#include <stdint.h>

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

#endif
