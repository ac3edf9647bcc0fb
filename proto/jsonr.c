/* jsonr — a strict JSON reader into a flat array of tokens (jsonr.h).
 *
 * One pass over the text, no recursion: an open container's token holds, in
 * its `next` field, the index of the container around it, so the nesting
 * lives in the token array itself and closing a container pops back to its
 * parent. An object member is two tokens, an internal key token followed by
 * the value's. Strings without escapes stay in the text; those with escapes
 * are decoded into r->scratch, and tokens hold offsets, since both arrays
 * may move while they grow.
 *
 * What is accepted follows jansson 2.14's load.c exactly (JSON_DECODE_ANY,
 * no other flag): strict UTF-8 in strings, no raw control character in a
 * string, no \u0000, no lone surrogate, integers within int64 ("too big
 * integer"), reals through strtod (overflow refused, underflow accepted),
 * a value at most 2048 deep counting the value itself, only whitespace
 * after the root, and one NUL byte right after a number or a literal
 * ignored (a quirk of jansson's stream, see jsonr_parse). The C locale is assumed for strtod, as in
 * fetchd.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* qsort_r */
#endif
#include "jsonr.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define MAX_DEPTH  2048
#define NO_CONTEXT SIZE_MAX

enum { T_KEY = 8 }; /* an object member's key, just before its value */

enum {
    F_ESC = 1,    /* a string (or key) decoded into scratch */
    F_MEMBER = 2, /* the value of an object member: its key is the token before */
    F_TREE = 4    /* from a jansson tree: a string's bytes are at v.p, len long */
};

struct jsonr_tok {
    uint8_t type;  /* jsonr_type_t or T_KEY */
    uint8_t flags; /* F_* */
    uint32_t off;  /* the value's source text: text[off, off + len) */
    uint32_t len;
    uint32_t next; /* the next sibling; while a container is open, its parent */
    union {
        int64_t i; /* JSONR_INTEGER */
        double d;  /* JSONR_REAL */
        struct {
            uint32_t a, b;
        } u;           /* containers: count; escaped strings: scratch offset, length */
        const char *p; /* F_TREE strings: borrowed from the tree */
    } v;
};

/* Bytes a string scan must stop at: '"', '\\', control characters and
 * non-ASCII (UTF-8 to validate). */
static const uint8_t str_stop[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};

/* ---- life cycle ----------------------------------------------------------------- */

void jsonr_init(jsonr_t *r, void *(*realloc_fn)(void *, size_t), void (*free_fn)(void *))
{
    memset(r, 0, sizeof(*r));
    r->realloc_fn = realloc_fn;
    r->free_fn = free_fn;
}

void jsonr_free(jsonr_t *r)
{
    if (r->tok)
        r->free_fn(r->tok);
    if (r->scratch)
        r->free_fn(r->scratch);
    r->tok = NULL;
    r->scratch = NULL;
    r->ntok = r->cap = 0;
    r->scratch_len = r->scratch_cap = 0;
}

void jsonr_trim(jsonr_t *r, size_t keep_bytes)
{
    if ((size_t)r->cap * sizeof(jsonr_tok_t) + r->scratch_cap > keep_bytes)
        jsonr_free(r);
}

/* ---- errors --------------------------------------------------------------------- */

/* Sets line and column (1-based line; the column counts characters, as
 * jansson does) for the byte offset pos. */
static void locate(jsonr_t *r, size_t pos)
{
    const uint8_t *s = (const uint8_t *)r->text;
    int line = 1, column = 0;

    if (pos > r->len)
        pos = r->len;
    for (size_t i = 0; i < pos; i++) {
        if (s[i] == '\n') {
            line++;
            column = 0;
        } else if ((s[i] & 0xC0) != 0x80) {
            column++;
        }
    }
    r->line = line;
    r->column = column;
}

/* Records a syntax error: the message, then (like jansson) " near 'TOKEN'"
 * with the text of the token at fault, text[start, pos), when it is short
 * and printable, or " near end of file" when there is none (start is the
 * end); start NO_CONTEXT adds nothing. The position is pos. Returns -1. */
__attribute__((format(printf, 4, 5), cold, noinline)) static int
fail(jsonr_t *r, size_t start, size_t pos, const char *fmt, ...)
{
    char msg[120];
    va_list ap;
    size_t n = start != NO_CONTEXT && pos > start ? pos - start : 0;
    int printable = n > 0 && n <= 20;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    for (size_t i = 0; printable && i < n; i++)
        if ((uint8_t)r->text[start + i] < 0x20 || (uint8_t)r->text[start + i] > 0x7E)
            printable = 0;
    if (printable)
        snprintf(r->error, sizeof(r->error), "%s near '%.*s'", msg, (int)n, r->text + start);
    else if (start != NO_CONTEXT && start >= r->len)
        snprintf(r->error, sizeof(r->error), "%s near end of file", msg);
    else
        snprintf(r->error, sizeof(r->error), "%s", msg);
    locate(r, pos);
    r->ntok = 0;
    return -1;
}

__attribute__((cold, noinline)) static int no_memory(jsonr_t *r)
{
    snprintf(r->error, sizeof(r->error), "out of memory");
    r->line = r->column = 0;
    r->ntok = 0;
    return -2;
}

/* ---- growth --------------------------------------------------------------------- */

__attribute__((noinline)) static int grow_tokens(jsonr_t *r)
{
    uint32_t cap = r->cap ? r->cap * 2 : 32;
    jsonr_tok_t *t;

    if (cap <= r->cap)
        return -1;
    t = r->realloc_fn(r->tok, (size_t)cap * sizeof(*t));
    if (t == NULL)
        return -1;
    r->tok = t;
    r->cap = cap;
    return 0;
}

/* Makes room for n more bytes of scratch. */
static int reserve_scratch(jsonr_t *r, size_t n)
{
    size_t cap = r->scratch_cap ? r->scratch_cap : 256;
    char *s;

    if (r->scratch_cap - r->scratch_len >= n)
        return 0;
    while (cap - r->scratch_len < n) {
        if (cap > SIZE_MAX / 2)
            return -1;
        cap *= 2;
    }
    s = r->realloc_fn(r->scratch, cap);
    if (s == NULL)
        return -1;
    r->scratch = s;
    r->scratch_cap = cap;
    return 0;
}

/* ---- strings -------------------------------------------------------------------- */

/* The length of the valid UTF-8 sequence that starts at s (at most avail
 * bytes), or 0: overlong forms, surrogates and code points past U+10FFFF
 * are invalid, as in jansson's utf8_check_full. */
static size_t utf8_len(const uint8_t *s, size_t avail)
{
    uint8_t c = s[0];
    uint32_t cp;
    size_t n;

    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (avail < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF) || (n == 3 && cp < 0x800) ||
        (n == 4 && cp < 0x10000))
        return 0;
    return n;
}

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

#define ONES 0x0101010101010101ull
#define HIGH 0x8080808080808080ull
#define HOT  static inline __attribute__((always_inline))

/* The first index at or after p of a byte a string scan must look at (see
 * str_stop), or len. Sixteen bytes at a time with SSE2 (bytes below 0x20
 * and from 0x80 up are exactly those below 0x20 as signed bytes), else
 * eight at a time where the machine is little-endian: in each word, the
 * lowest byte flagged by these bit tricks is exactly the first such byte (a
 * false flag only follows a true one). */
HOT size_t plain_run(const uint8_t *s, size_t p, size_t len)
{
#if defined(__SSE2__)
    const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'),
                  space = _mm_set1_epi8(0x20);
    while (len - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(s + p));
        __m128i m = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, bslash)),
                                 _mm_cmplt_epi8(x, space));
        unsigned bits = (unsigned)_mm_movemask_epi8(m);
        if (bits)
            return p + (size_t)__builtin_ctz(bits);
        p += 16;
    }
#elif defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    while (len - p >= 8) {
        uint64_t x, q, b, m;
        memcpy(&x, s + p, 8);
        q = x ^ (ONES * '"');
        b = x ^ (ONES * '\\');
        m = (((x - ONES * 0x20) & ~x) | ((q - ONES) & ~q) | ((b - ONES) & ~b) | x) & HIGH;
        if (m)
            return p + ((size_t)__builtin_ctzll(m) >> 3);
        p += 8;
    }
#endif
    while (p < len && !str_stop[s[p]])
        p++;
    return p;
}

/* Scans the string whose opening quote is at s[start]: validates it
 * (UTF-8, control characters, escape syntax) and sets *end just past the
 * closing quote and *esc if it holds a backslash. 0 or -1 (r->error set). */
HOT int scan_string(jsonr_t *r, const uint8_t *s, size_t len, size_t start, size_t *end, int *esc)
{
    size_t p = start + 1, n;
    uint8_t c;

    for (;;) {
        p = plain_run(s, p, len);
        if (p == len)
            return fail(r, start, p, "premature end of input");
        c = s[p];
        if (c == '"')
            break;
        if (c == '\\') {
            *esc = 1;
            if (++p == len)
                return fail(r, start, p, "premature end of input");
            c = s[p];
            if (c == 'u') {
                for (int i = 0; i < 4; i++)
                    if (++p == len || hexval(s[p]) < 0)
                        return fail(r, start, p + (p < len), "invalid escape");
            } else if (c != '"' && c != '\\' && c != '/' && c != 'b' && c != 'f' && c != 'n' &&
                       c != 'r' && c != 't') {
                return fail(r, start, p + 1, "invalid escape");
            }
            p++;
        } else if (c < 0x20) {
            if (c == '\n')
                return fail(r, start, p, "unexpected newline");
            return fail(r, start, p, "control character 0x%x", c);
        } else {
            n = utf8_len(s + p, len - p);
            if (n == 0)
                return fail(r, NO_CONTEXT, p + 1, "unable to decode byte 0x%x", c);
            p += n;
        }
    }
    *end = p + 1;
    return 0;
}

static uint32_t hex4(const uint8_t *s)
{
    return (uint32_t)(hexval(s[0]) << 12 | hexval(s[1]) << 8 | hexval(s[2]) << 4 | hexval(s[3]));
}

static size_t utf8_put(char *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12);
        o[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18);
    o[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decodes the (scanned, valid) string text[start, end) with escapes into
 * scratch and records where in token t. Refuses what jansson's second pass
 * does: surrogates that do not pair, and \u0000 (with the message for a key
 * or for a value) unless flags has JSONR_ALLOW_NUL. 0, -1 or -2. */
__attribute__((noinline)) static int decode_string(jsonr_t *r, uint32_t t, size_t start, size_t end,
                                                   unsigned flags)
{
    const uint8_t *s = (const uint8_t *)r->text;
    size_t p = start + 1, q = end - 1;
    char *o;
    uint32_t cp, lo;

    if (reserve_scratch(r, q - p))
        return -2;
    o = r->scratch + r->scratch_len;
    while (p < q) {
        if (s[p] != '\\') {
            *o++ = (char)s[p++];
            continue;
        }
        p++;
        switch (s[p++]) {
        case 'b':
            *o++ = '\b';
            break;
        case 'f':
            *o++ = '\f';
            break;
        case 'n':
            *o++ = '\n';
            break;
        case 'r':
            *o++ = '\r';
            break;
        case 't':
            *o++ = '\t';
            break;
        case 'u':
            cp = hex4(s + p);
            p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (p + 1 < q && s[p] == '\\' && s[p + 1] == 'u') {
                    lo = hex4(s + p + 2);
                    p += 6;
                    if (lo < 0xDC00 || lo > 0xDFFF)
                        return fail(r, start, end, "invalid Unicode '\\u%04X\\u%04X'", cp, lo);
                    cp = ((cp - 0xD800) << 10) + (lo - 0xDC00) + 0x10000;
                } else {
                    return fail(r, start, end, "invalid Unicode '\\u%04X'", cp);
                }
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return fail(r, start, end, "invalid Unicode '\\u%04X'", cp);
            } else if (cp == 0 && !(flags & JSONR_ALLOW_NUL)) {
                if (r->tok[t].type == T_KEY)
                    return fail(r, start, end, "NUL byte in object key not supported");
                return fail(r, start, end, "\\u0000 is not allowed");
            }
            o += utf8_put(o, cp);
            break;
        default: /* '"', '\\', '/' */
            *o++ = (char)s[p - 1];
            break;
        }
    }
    r->tok[t].flags |= F_ESC;
    r->tok[t].v.u.a = (uint32_t)r->scratch_len;
    r->tok[t].v.u.b = (uint32_t)(o - (r->scratch + r->scratch_len));
    r->scratch_len += r->tok[t].v.u.b;
    return 0;
}

/* ---- numbers and literals ------------------------------------------------------- */

static int is_digit(uint8_t c)
{
    return c >= '0' && c <= '9';
}

static int is_alpha(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* Converts the real text[start, end) with strtod on a NUL-terminated copy
 * (on the stack, or for a long one at the end of scratch, given back
 * afterwards). */
static int read_real(jsonr_t *r, uint32_t t, size_t start, size_t end)
{
    char buf[64], *copy = buf;
    size_t n = end - start;
    double d;

    if (n >= sizeof(buf)) {
        if (reserve_scratch(r, n + 1))
            return -2;
        copy = r->scratch + r->scratch_len;
    }
    memcpy(copy, r->text + start, n);
    copy[n] = '\0';
    errno = 0;
    d = strtod(copy, NULL);
    if ((d == HUGE_VAL || d == -HUGE_VAL) && errno == ERANGE)
        return fail(r, start, end, "real number overflow");
    r->tok[t].type = JSONR_REAL;
    r->tok[t].v.d = d;
    return 0;
}

/* Reads the number at *p (a digit or '-') into token t, with jansson's
 * grammar: no leading zeros, digits after '.' and after the exponent. */
static int read_number(jsonr_t *r, uint32_t t, size_t *pp)
{
    const uint8_t *s = (const uint8_t *)r->text;
    size_t len = r->len, start = *pp, p = start;
    uint64_t acc = 0;
    int neg = 0, over = 0;

    if (s[p] == '-') {
        neg = 1;
        p++;
    }
    if (p < len && s[p] == '0') {
        p++;
        if (p < len && is_digit(s[p]))
            return fail(r, start, p + 1, "invalid token");
    } else if (p < len && is_digit(s[p])) {
        size_t first = p;
        for (; p < len && is_digit(s[p]); p++)
            acc = acc * 10 + (unsigned)(s[p] - '0');
        /* 19 digits always fit in 64 bits; more never fit in 63. */
        over = p - first > 19;
    } else {
        return fail(r, start, p + (p < len), "invalid token");
    }
    *pp = p;
    if (p == len || (s[p] != '.' && s[p] != 'e' && s[p] != 'E')) {
        if (over || acc > (uint64_t)INT64_MAX + neg)
            return fail(r, start, p, neg ? "too big negative integer" : "too big integer");
        r->tok[t].type = JSONR_INTEGER;
        if (!neg)
            r->tok[t].v.i = (int64_t)acc;
        else if (acc == (uint64_t)INT64_MAX + 1)
            r->tok[t].v.i = INT64_MIN;
        else
            r->tok[t].v.i = -(int64_t)acc;
        r->tok[t].len = (uint32_t)(p - start);
        return 0;
    }
    if (s[p] == '.') {
        p++;
        if (p == len || !is_digit(s[p]))
            return fail(r, start, p, "invalid token");
        while (p < len && is_digit(s[p]))
            p++;
    }
    if (p < len && (s[p] == 'e' || s[p] == 'E')) {
        p++;
        if (p < len && (s[p] == '+' || s[p] == '-'))
            p++;
        if (p == len || !is_digit(s[p]))
            return fail(r, start, p, "invalid token");
        while (p < len && is_digit(s[p]))
            p++;
    }
    *pp = p;
    r->tok[t].len = (uint32_t)(p - start);
    return read_real(r, t, start, p);
}

/* Reads true, false or null at *p (a letter): like jansson, the whole run of
 * letters is the token. */
static int read_literal(jsonr_t *r, uint32_t t, size_t *pp)
{
    const char *s = r->text;
    size_t start = *pp, p = start;

    while (p < r->len && is_alpha((uint8_t)s[p]))
        p++;
    if (p - start == 4 && memcmp(s + start, "true", 4) == 0)
        r->tok[t].type = JSONR_TRUE;
    else if (p - start == 5 && memcmp(s + start, "false", 5) == 0)
        r->tok[t].type = JSONR_FALSE;
    else if (p - start == 4 && memcmp(s + start, "null", 4) == 0)
        r->tok[t].type = JSONR_NULL;
    else
        return fail(r, start, p, "invalid token");
    r->tok[t].len = (uint32_t)(p - start);
    *pp = p;
    return 0;
}

/* ---- the parser ----------------------------------------------------------------- */

/* Out of line: the parser calls it only when there is whitespace. */
__attribute__((noinline)) static size_t skip_ws(const uint8_t *s, size_t p, size_t len)
{
    while (p < len && (s[p] == ' ' || s[p] == '\n' || s[p] == '\r' || s[p] == '\t'))
        p++;
    return p;
}

/* The byte at p after whitespace (p moves past it), or -1 at the end. The
 * usual case, no whitespace, costs two comparisons. */
#define PEEK()                                         \
    (__builtin_expect(p < len && s[p] > ' ', 1) ? s[p] \
                                                : (p = skip_ws(s, p, len), p < len ? s[p] : -1))

#define SCALAR_FAIL  SIZE_MAX       /* read_scalar(): r->error is set */
#define SCALAR_NOMEM (SIZE_MAX - 1) /* read_scalar(): out of memory */

/* Reads a scalar value, whose first byte c is at p, into token t; returns
 * the position after it, or SCALAR_FAIL or SCALAR_NOMEM. (The parser's
 * position never has its address taken: it stays in a register.) */
__attribute__((noinline)) static size_t read_scalar(jsonr_t *r, uint32_t t, size_t p, int c)
{
    int rc;

    if (c == '-' || is_digit((uint8_t)c))
        rc = read_number(r, t, &p);
    else if (is_alpha((uint8_t)c))
        rc = read_literal(r, t, &p);
    else if (c == ']' || c == '}' || c == ':' || c == ',')
        rc = fail(r, p, p + 1, "unexpected token");
    else
        rc = fail(r, p, p + 1, "invalid token");
    return rc == 0 ? p : rc == -2 ? SCALAR_NOMEM : SCALAR_FAIL;
}

/* The parser keeps its state in locals (the token array, its length, the
 * open container and its last value so far); an open container's token
 * keeps its parent's index in `next`, given back when it closes, when its
 * values are also counted along their links. */
int jsonr_parse(jsonr_t *r, const char *text, size_t len)
{
    return jsonr_parse_flags(r, text, len, 0);
}

/* In the parser: the next token, t, at k, starting at p (the array grows
 * when it is full). */
#define NEW_TOKEN()                          \
    do {                                     \
        if (__builtin_expect(n == cap, 0)) { \
            if (grow_tokens(r))              \
                return no_memory(r);         \
            tk = r->tok;                     \
            cap = r->cap;                    \
        }                                    \
        t = n++;                             \
        k = &tk[t];                          \
        start = p;                           \
    } while (0)

int jsonr_parse_flags(jsonr_t *r, const char *text, size_t len, unsigned pflags)
{
    const uint8_t *s = (const uint8_t *)text;
    size_t p = 0;
    jsonr_tok_t *tk = r->tok, *k;
    uint32_t n = 0, cap = r->cap, cur = JSONR_NONE, last = JSONR_NONE, t, count;
    unsigned depth = 0;
    int c, rc, esc, closer = 0; /* closer: the open container's closing bracket */
    size_t start;

    r->text = text;
    r->len = len;
    r->ntok = 0;
    r->scratch_len = 0;
    r->error[0] = '\0';
    r->line = r->column = 0;
    if (len >= UINT32_MAX)
        return fail(r, 0, 0, "text too long");

value: /* a value starts at p, after whitespace (a member's value if closer is '}') */
    if ((c = PEEK()) < 0)
        return fail(r, p, p, "unexpected token");
    NEW_TOKEN();
    k->flags = closer == '}' ? F_MEMBER : 0;
    k->off = (uint32_t)p;
    if (last != JSONR_NONE)
        tk[last].next = t;
    last = t;
    if (__builtin_expect(c == '"', 1)) {
        k->type = JSONR_STRING;
        esc = 0;
        if ((rc = scan_string(r, s, len, p, &p, &esc)) != 0)
            return rc;
        k->len = (uint32_t)(p - start);
        if (esc && (rc = decode_string(r, t, start, p, pflags)) != 0)
            return rc == -2 ? no_memory(r) : rc;
    } else if (c == '{' || c == '[') {
        k->type = c == '{' ? JSONR_OBJECT : JSONR_ARRAY;
        k->next = cur;
        cur = t;
        last = JSONR_NONE;
        depth++;
        p++;
        closer = c + 2; /* '[' + 2 == ']', '{' + 2 == '}' */
        c = PEEK();
        if (c == closer) {
            p++;
            goto close;
        }
        /* A value is at most MAX_DEPTH deep, counting itself: the values
         * in this container would be one too many. */
        if (depth >= MAX_DEPTH)
            return fail(r, p, p + (p < len), "maximum parsing depth reached");
        if (closer == '}')
            goto key;
        goto value;
    } else {
        if (c == '-' || is_digit((uint8_t)c)) {
            /* The common short integer here; anything else (a real, a
             * leading zero, many digits, an error) in read_number(). */
            size_t q = p + (c == '-'), d0 = q;
            uint64_t acc = 0;
            while (q < len && is_digit(s[q]) && q - d0 < 18)
                acc = acc * 10 + (uint64_t)(s[q++] - '0');
            if (q > d0 && (s[d0] != '0' || q == d0 + 1) &&
                (q == len || (!is_digit(s[q]) && s[q] != '.' && (s[q] | 0x20) != 'e'))) {
                k->type = JSONR_INTEGER;
                k->v.i = c == '-' ? -(int64_t)acc : (int64_t)acc;
                k->len = (uint32_t)(q - p);
                p = q;
                goto scalar_done;
            }
        }
        p = read_scalar(r, t, p, c);
        if (p >= SCALAR_NOMEM)
            return p == SCALAR_NOMEM ? no_memory(r) : -1;
    scalar_done:
        /* jansson reads one byte past a number or a literal and puts it
         * back; a NUL put back is lost (its stream takes a NUL in its buffer
         * for "empty"), so it accepts "[1\0]". Accept exactly that too. */
        if (p < len && s[p] == '\0')
            p++;
    }

after: /* a value ended at p */
    if (cur == JSONR_NONE) {
        p = skip_ws(s, p, len);
        if (p != len)
            return fail(r, p, p + 1, "end of file expected");
        tk[0].next = JSONR_NONE;
        r->ntok = n;
        return 0;
    }
    c = PEEK();
    if (c == ',') {
        p++;
        if (closer == ']')
            goto value;
        goto key;
    }
    if (c == closer) {
        p++;
        goto close;
    }
    return fail(r, p, p + (p < len), closer == ']' ? "']' expected" : "'}' expected");

close: /* cur's closing bracket ended at p */
    k = &tk[cur];
    k->len = (uint32_t)(p - k->off);
    count = 0;
    if (last != JSONR_NONE) {
        /* The last child's next; the others' were set as they followed. */
        tk[last].next = JSONR_NONE;
        for (t = cur + (k->type == JSONR_OBJECT ? 2 : 1); t != JSONR_NONE; t = tk[t].next)
            count++;
    }
    k->v.u.a = count;
    last = cur;
    cur = k->next;
    k->next = JSONR_NONE;
    depth--;
    if (cur != JSONR_NONE)
        closer = tk[cur].type == JSONR_ARRAY ? ']' : '}';
    goto after;

key: /* an object member starts at p, after whitespace */
    if (PEEK() != '"')
        return fail(r, p, p + (p < len), "string or '}' expected");
    NEW_TOKEN();
    k->type = T_KEY;
    k->flags = 0;
    k->off = (uint32_t)p;
    esc = 0;
    if ((rc = scan_string(r, s, len, p, &p, &esc)) != 0)
        return rc;
    k->len = (uint32_t)(p - start);
    if (esc && (rc = decode_string(r, t, start, p, pflags)) != 0)
        return rc == -2 ? no_memory(r) : rc;
    if (PEEK() != ':')
        return fail(r, p, p + (p < len), "':' expected");
    p++;
    goto value;
}

#undef NEW_TOKEN

/* ---- reading -------------------------------------------------------------------- */

static const jsonr_tok_t *tok(const jsonr_t *r, uint32_t v)
{
    return v < r->ntok ? &r->tok[v] : NULL;
}

jsonr_type_t jsonr_type(const jsonr_t *r, uint32_t v)
{
    const jsonr_tok_t *k = tok(r, v);

    if (k == NULL)
        return JSONR_NULL;
    return k->type == T_KEY ? JSONR_STRING : (jsonr_type_t)k->type;
}

uint32_t jsonr_count(const jsonr_t *r, uint32_t v)
{
    const jsonr_tok_t *k = tok(r, v);

    if (k == NULL || (k->type != JSONR_ARRAY && k->type != JSONR_OBJECT))
        return 0;
    return k->v.u.a;
}

uint32_t jsonr_first(const jsonr_t *r, uint32_t v)
{
    const jsonr_tok_t *k = tok(r, v);

    if (k == NULL || (k->type != JSONR_ARRAY && k->type != JSONR_OBJECT) || k->v.u.a == 0)
        return JSONR_NONE;
    return k->type == JSONR_ARRAY ? v + 1 : v + 2;
}

uint32_t jsonr_next(const jsonr_t *r, uint32_t v)
{
    const jsonr_tok_t *k = tok(r, v);

    return k && k->type != T_KEY ? k->next : JSONR_NONE;
}

static const char *tok_str(const jsonr_t *r, const jsonr_tok_t *k, size_t *len)
{
    if (k->flags & F_ESC) {
        *len = k->v.u.b;
        return *len ? r->scratch + k->v.u.a : ""; /* scratch may be NULL then */
    }
    if (k->flags & F_TREE) {
        *len = k->len;
        return k->v.p;
    }
    *len = k->len - 2;
    return r->text + k->off + 1;
}

const char *jsonr_key(const jsonr_t *r, uint32_t member_value, size_t *len)
{
    const jsonr_tok_t *k = tok(r, member_value);
    size_t n;

    if (k == NULL || !(k->flags & F_MEMBER))
        return NULL;
    return tok_str(r, k - 1, len ? len : &n);
}

uint32_t jsonr_getn(const jsonr_t *r, uint32_t obj, const char *key, size_t klen)
{
    uint32_t found = JSONR_NONE;

    if (jsonr_type(r, obj) != JSONR_OBJECT)
        return JSONR_NONE;
    for (uint32_t v = jsonr_first(r, obj); v != JSONR_NONE; v = r->tok[v].next) {
        size_t n;
        const char *k = tok_str(r, &r->tok[v - 1], &n);
        if (n == klen && memcmp(k, key, klen) == 0)
            found = v;
    }
    return found;
}

uint32_t jsonr_get(const jsonr_t *r, uint32_t obj, const char *key)
{
    return jsonr_getn(r, obj, key, strlen(key));
}

uint32_t jsonr_at(const jsonr_t *r, uint32_t arr, uint32_t i)
{
    uint32_t v;

    if (jsonr_type(r, arr) != JSONR_ARRAY || i >= r->tok[arr].v.u.a)
        return JSONR_NONE;
    for (v = arr + 1; i > 0; i--)
        v = r->tok[v].next;
    return v;
}

const char *jsonr_str(const jsonr_t *r, uint32_t v, size_t *len)
{
    const jsonr_tok_t *k = tok(r, v);
    size_t n;

    if (k == NULL || (k->type != JSONR_STRING && k->type != T_KEY))
        return NULL;
    return tok_str(r, k, len ? len : &n);
}

int jsonr_str_eq(const jsonr_t *r, uint32_t v, const char *s)
{
    size_t n;
    const char *p = jsonr_str(r, v, &n);

    return p != NULL && strlen(s) == n && memcmp(p, s, n) == 0;
}

int jsonr_int(const jsonr_t *r, uint32_t v, long long *out)
{
    const jsonr_tok_t *k = tok(r, v);

    if (k == NULL || k->type != JSONR_INTEGER)
        return -1;
    *out = k->v.i;
    return 0;
}

int jsonr_number(const jsonr_t *r, uint32_t v, double *out)
{
    const jsonr_tok_t *k = tok(r, v);

    if (k == NULL)
        return -1;
    if (k->type == JSONR_INTEGER)
        *out = (double)k->v.i;
    else if (k->type == JSONR_REAL)
        *out = k->v.d;
    else
        return -1;
    return 0;
}

const char *jsonr_raw(const jsonr_t *r, uint32_t v, size_t *len)
{
    const jsonr_tok_t *k = tok(r, v);

    if (k == NULL) {
        *len = 0;
        return NULL;
    }
    if (k->flags & F_TREE) {
        *len = 0;
        return "";
    }
    *len = k->len;
    return r->text + k->off;
}

/* ---- duplicate keys ------------------------------------------------------------ */

static int key_cmp(const jsonr_t *r, uint32_t a, uint32_t b)
{
    size_t la, lb;
    const char *ka = tok_str(r, &r->tok[a - 1], &la), *kb = tok_str(r, &r->tok[b - 1], &lb);
    int c = memcmp(ka, kb, la < lb ? la : lb);
    return c != 0 ? c : (la > lb) - (la < lb);
}

static int sort_cmp(const void *a, const void *b, void *r)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    int c = key_cmp(r, x, y);
    return c != 0 ? c : (x > y) - (x < y);
}

/* A repeated key among the members of object o: small objects pairwise,
 * large ones sorted by key (then position) in tmp. */
static uint32_t object_duplicate(const jsonr_t *r, uint32_t o, uint32_t *tmp)
{
    uint32_t n = 0, found = JSONR_NONE;

    for (uint32_t v = jsonr_first(r, o); v != JSONR_NONE; v = r->tok[v].next) {
        if (tmp == NULL) {
            for (uint32_t w = jsonr_first(r, o); w != v; w = r->tok[w].next)
                if (key_cmp(r, v, w) == 0)
                    return v;
        } else {
            tmp[n++] = v;
        }
    }
    if (tmp == NULL)
        return JSONR_NONE;
    qsort_r(tmp, n, sizeof(*tmp), sort_cmp, (void *)r);
    /* Of the repeats, the first one in the text, as a parser would meet it. */
    for (uint32_t i = 1; i < n; i++)
        if (key_cmp(r, tmp[i - 1], tmp[i]) == 0 && tmp[i] < found)
            found = tmp[i];
    return found;
}

int jsonr_find_duplicate(const jsonr_t *r, uint32_t *dup)
{
    uint32_t *tmp = NULL, best = JSONR_NONE;
    size_t cap = 0;

    for (uint32_t o = 0; o < r->ntok; o++) {
        uint32_t n = r->tok[o].type == JSONR_OBJECT ? r->tok[o].v.u.a : 0, d;
        if (n < 2)
            continue;
        if (n > 16 && n > cap) {
            uint32_t *t = r->realloc_fn(tmp, (size_t)n * sizeof(*tmp));
            if (t == NULL) {
                if (tmp)
                    r->free_fn(tmp);
                return -2;
            }
            tmp = t;
            cap = n;
        }
        d = object_duplicate(r, o, n > 16 ? tmp : NULL);
        if (d < best)
            best = d;
    }
    if (tmp)
        r->free_fn(tmp);
    *dup = best;
    return best != JSONR_NONE;
}

/* ---- from a jansson tree -------------------------------------------------------- */

/* Appends the token of value v (a member's value if flags has F_MEMBER, an
 * object key if key is set), and those of its values after it; *out is
 * its index. Strings stay in the tree (F_TREE). Recursive: a tree holds what a parse let through
 * (2,048 deep) or what the program built. 0 or -2. */
static int from_json(jsonr_t *r, const json_t *v, const char *key, size_t klen, uint8_t flags,
                     uint32_t *out)
{
    uint32_t t, prev = JSONR_NONE, c, count = 0;
    jsonr_tok_t *k;
    const char *s = key;
    size_t n = klen;

    if (r->ntok == r->cap && grow_tokens(r))
        return -2;
    t = r->ntok++;
    k = &r->tok[t];
    k->flags = flags;
    k->off = k->len = 0;
    k->next = JSONR_NONE;
    *out = t;
    if (key == NULL) {
        switch (v ? json_typeof(v) : JSON_NULL) {
        case JSON_OBJECT: {
            const char *name;
            size_t nlen;
            json_t *m;
            k->type = JSONR_OBJECT;
            json_object_keylen_foreach ((json_t *)v, name, nlen, m) {
                if (from_json(r, NULL, name, nlen, 0, &c) != 0 ||
                    from_json(r, m, NULL, 0, F_MEMBER, &c) != 0)
                    return -2;
                if (prev != JSONR_NONE)
                    r->tok[prev].next = c;
                prev = c;
                count++;
            }
            r->tok[t].v.u.a = count;
            return 0;
        }
        case JSON_ARRAY: {
            size_t i;
            json_t *e;
            k->type = JSONR_ARRAY;
            json_array_foreach ((json_t *)v, i, e) {
                if (from_json(r, e, NULL, 0, 0, &c) != 0)
                    return -2;
                if (prev != JSONR_NONE)
                    r->tok[prev].next = c;
                prev = c;
                count++;
            }
            r->tok[t].v.u.a = count;
            return 0;
        }
        case JSON_STRING:
            k->type = JSONR_STRING;
            s = json_string_value(v);
            n = json_string_length(v);
            break;
        case JSON_INTEGER:
            k->type = JSONR_INTEGER;
            k->v.i = json_integer_value(v);
            return 0;
        case JSON_REAL:
            k->type = JSONR_REAL;
            k->v.d = json_real_value(v);
            return 0;
        case JSON_TRUE:
            k->type = JSONR_TRUE;
            return 0;
        case JSON_FALSE:
            k->type = JSONR_FALSE;
            return 0;
        default:
            k->type = JSONR_NULL;
            return 0;
        }
    } else {
        k->type = T_KEY;
    }
    if (n > UINT32_MAX)
        return -2;
    k->flags |= F_TREE;
    k->len = (uint32_t)n;
    k->v.p = s;
    return 0;
}

int jsonr_from_json(jsonr_t *r, const json_t *v)
{
    uint32_t root;

    r->text = "";
    r->len = 0;
    r->ntok = 0;
    r->scratch_len = 0;
    r->error[0] = '\0';
    r->line = r->column = 0;
    if (from_json(r, v, NULL, 0, 0, &root) != 0)
        return no_memory(r);
    return 0;
}

json_t *jsonr_to_json(const jsonr_t *r, uint32_t v)
{
    const jsonr_tok_t *k = tok(r, v);
    json_t *j, *e;
    size_t n;
    const char *s;

    if (k == NULL)
        return NULL;
    switch (jsonr_type(r, v)) {
    case JSONR_NULL:
        return json_null();
    case JSONR_FALSE:
        return json_false();
    case JSONR_TRUE:
        return json_true();
    case JSONR_INTEGER:
        return json_integer(k->v.i);
    case JSONR_REAL:
        return json_real(k->v.d);
    case JSONR_STRING:
        s = tok_str(r, k, &n);
        return json_stringn_nocheck(s, n);
    case JSONR_ARRAY:
        if ((j = json_array()) == NULL)
            return NULL;
        for (uint32_t c = jsonr_first(r, v); c != JSONR_NONE; c = r->tok[c].next)
            if ((e = jsonr_to_json(r, c)) == NULL || json_array_append_new(j, e) != 0)
                goto fail;
        return j;
    case JSONR_OBJECT:
        if ((j = json_object()) == NULL)
            return NULL;
        for (uint32_t c = jsonr_first(r, v); c != JSONR_NONE; c = r->tok[c].next) {
            s = tok_str(r, &r->tok[c - 1], &n);
            if ((e = jsonr_to_json(r, c)) == NULL || json_object_setn_new_nocheck(j, s, n, e) != 0)
                goto fail;
        }
        return j;
    }
    return NULL;
fail:
    json_decref(j);
    return NULL;
}
