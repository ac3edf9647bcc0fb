/* jdump — compact JSON text from jsonr tokens, as jansson writes it; see
 * jdump.h. */
#include "jdump.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int reserve(jdump_t *d, size_t n)
{
    size_t cap;
    char *p;

    if (d->cap - d->len >= n)
        return 0;
    cap = d->cap ? d->cap : 4096;
    while (cap - d->len < n) {
        if (cap > SIZE_MAX / 2)
            return -1;
        cap *= 2;
    }
    if ((p = realloc(d->buf, cap)) == NULL)
        return -1;
    d->buf = p;
    d->cap = cap;
    return 0;
}

int jdump_raw(jdump_t *d, const char *s, size_t n)
{
    if (reserve(d, n) != 0)
        return -1;
    memcpy(d->buf + d->len, s, n);
    d->len += n;
    return 0;
}

static int put(jdump_t *d, char c)
{
    if (d->len == d->cap && reserve(d, 1) != 0)
        return -1;
    d->buf[d->len++] = c;
    return 0;
}

void jdump_free(jdump_t *d)
{
    free(d->buf);
    memset(d, 0, sizeof(*d));
}

/* jansson's dump_string(): '"' and '\\' escaped, the control characters
 * with their short escape or as \u00XX (upper-case hex); nothing else. */
int jdump_string(jdump_t *d, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t i, run = 0;

    /* At most 6 bytes out for a byte in, and the quotes. */
    if (n > (SIZE_MAX - 2) / 6 || reserve(d, 6 * n + 2) != 0)
        return -1;
    d->buf[d->len++] = '"';
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc;
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        memcpy(d->buf + d->len, s + run, i - run);
        d->len += i - run;
        run = i + 1;
        switch (c) {
        case '"':
            esc = "\\\"";
            break;
        case '\\':
            esc = "\\\\";
            break;
        case '\b':
            esc = "\\b";
            break;
        case '\f':
            esc = "\\f";
            break;
        case '\n':
            esc = "\\n";
            break;
        case '\r':
            esc = "\\r";
            break;
        case '\t':
            esc = "\\t";
            break;
        default:
            memcpy(d->buf + d->len, "\\u00", 4);
            d->buf[d->len + 4] = hex[c >> 4];
            d->buf[d->len + 5] = hex[c & 15];
            d->len += 6;
            continue;
        }
        memcpy(d->buf + d->len, esc, 2);
        d->len += 2;
    }
    memcpy(d->buf + d->len, s + run, n - run);
    d->len += n - run;
    d->buf[d->len++] = '"';
    return 0;
}

int jdump_utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + n;

    while (p < end) {
        unsigned c = *p;
        uint32_t cp;
        size_t k;
        if (c < 0x80) {
            p++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            k = 2;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            k = 3;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            k = 4;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if ((size_t)(end - p) < k)
            return 0;
        for (size_t i = 1; i < k; i++) {
            if ((p[i] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (p[i] & 0x3F);
        }
        if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF) || (k == 3 && cp < 0x800) ||
            (k == 4 && cp < 0x10000))
            return 0;
        p += k;
    }
    return 1;
}

/* A string value: its source text when that is what jansson would write
 * (the string had no escape: its bytes are the text between the quotes,
 * which then holds nothing jansson escapes), else re-escaped. */
static int dump_str(jdump_t *d, const jsonr_t *r, uint32_t v)
{
    size_t n, rn;
    const char *s = jsonr_str(r, v, &n), *raw = jsonr_raw(r, v, &rn);

    if (raw != NULL && rn == n + 2 && s == raw + 1)
        return jdump_raw(d, raw, rn);
    return jdump_string(d, s, n);
}

static int dump_int(jdump_t *d, long long x)
{
    char tmp[24], *p = tmp + sizeof(tmp);
    unsigned long long u = x < 0 ? 0ull - (unsigned long long)x : (unsigned long long)x;

    do
        *--p = (char)('0' + u % 10);
    while ((u /= 10) != 0);
    if (x < 0)
        *--p = '-';
    return jdump_raw(d, p, (size_t)(tmp + sizeof(tmp) - p));
}

/* jansson's jsonp_dtostr() at its default precision: "%.17g", ".0" added
 * when there is neither a '.' nor an 'e', and the exponent without '+' or
 * leading zeros. */
static int dump_real(jdump_t *d, double x)
{
    char buf[64], *start, *end;
    int len = snprintf(buf, sizeof(buf), "%.17g", x);
    size_t n;

    if (len < 0 || (size_t)len + 3 >= sizeof(buf))
        return -1;
    n = (size_t)len;
    if (strchr(buf, '.') == NULL && strchr(buf, 'e') == NULL) {
        memcpy(buf + n, ".0", 3);
        n += 2;
    }
    if ((start = strchr(buf, 'e')) != NULL) {
        start++;
        end = start + 1;
        if (*start == '-')
            start++;
        while (*end == '0')
            end++;
        if (end != start) {
            memmove(start, end, n - (size_t)(end - buf) + 1);
            n -= (size_t)(end - start);
        }
    }
    return jdump_raw(d, buf, n);
}

static int same_key(const jsonr_t *r, uint32_t a, uint32_t b)
{
    size_t la, lb;
    const char *ka = jsonr_key(r, a, &la), *kb = jsonr_key(r, b, &lb);
    return la == lb && memcmp(ka, kb, la) == 0;
}

/* Whether an object repeats a key: a 64-bit filter over the keys, and a
 * pairwise look only where it says "maybe". */
static int has_repeat(const jsonr_t *r, uint32_t obj)
{
    uint64_t seen = 0;

    for (uint32_t v = jsonr_first(r, obj); v != JSONR_NONE; v = jsonr_next(r, v)) {
        size_t n;
        const char *k = jsonr_key(r, v, &n);
        uint64_t bit =
            1ull << ((n * 7 + (n ? (unsigned char)k[0] * 3 + (unsigned char)k[n - 1] : 0)) & 63);
        if (seen & bit)
            for (uint32_t w = jsonr_first(r, obj); w != v; w = jsonr_next(r, w))
                if (same_key(r, v, w))
                    return 1;
        seen |= bit;
    }
    return 0;
}

static int dump(jdump_t *d, const jsonr_t *r, uint32_t v);

/* An object as jansson holds it after a parse: a repeated key keeps the
 * place of its first occurrence and takes the value of its last. */
static int dump_object(jdump_t *d, const jsonr_t *r, uint32_t obj)
{
    int repeats = has_repeat(r, obj), first = 1;

    if (put(d, '{') != 0)
        return -1;
    for (uint32_t v = jsonr_first(r, obj); v != JSONR_NONE; v = jsonr_next(r, v)) {
        size_t n;
        const char *k = jsonr_key(r, v, &n);
        uint32_t value = v;
        if (repeats) {
            uint32_t w = jsonr_first(r, obj);
            while (w != v && !same_key(r, v, w))
                w = jsonr_next(r, w);
            if (w != v)
                continue; /* written in its first place */
            value = jsonr_getn(r, obj, k, n);
        }
        if ((!first && put(d, ',') != 0) || jdump_string(d, k, n) != 0 || put(d, ':') != 0 ||
            dump(d, r, value) != 0)
            return -1;
        first = 0;
    }
    return put(d, '}');
}

/* Recursive: a parse lets through at most 2,048 levels. */
static int dump(jdump_t *d, const jsonr_t *r, uint32_t v)
{
    long long i;
    double x;

    switch (jsonr_type(r, v)) {
    case JSONR_NULL:
        return jdump_raw(d, "null", 4);
    case JSONR_FALSE:
        return jdump_raw(d, "false", 5);
    case JSONR_TRUE:
        return jdump_raw(d, "true", 4);
    case JSONR_INTEGER:
        jsonr_int(r, v, &i);
        return dump_int(d, i);
    case JSONR_REAL:
        jsonr_number(r, v, &x);
        return dump_real(d, x);
    case JSONR_STRING:
        return dump_str(d, r, v);
    case JSONR_ARRAY:
        if (put(d, '[') != 0)
            return -1;
        for (uint32_t e = jsonr_first(r, v); e != JSONR_NONE; e = jsonr_next(r, e))
            if ((e != jsonr_first(r, v) && put(d, ',') != 0) || dump(d, r, e) != 0)
                return -1;
        return put(d, ']');
    case JSONR_OBJECT:
        return dump_object(d, r, v);
    }
    return -1;
}

int jdump_value(jdump_t *d, const jsonr_t *r, uint32_t v)
{
    return dump(d, r, v);
}
