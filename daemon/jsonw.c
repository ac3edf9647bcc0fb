/* jsonw — a JSON writer into a strbuf; see jsonw.h. */
#include "jsonw.h"

#include <stdio.h>
#include <string.h>

#include "fmt.h"
#include "mem.h"

void jsonw_init(jsonw_t *w, strbuf_t *b)
{
    memset(w, 0, sizeof(*w));
    w->b = b;
}

static inline void put(jsonw_t *w, const char *s, size_t n)
{
    strbuf_put(w->b, s, n); /* a failure marks the strbuf */
}

/* Room for n more bytes written in place: the place, or NULL once the
 * buffer failed. advance() then says where the writing ended. */
static inline char *room(jsonw_t *w, size_t n)
{
    return strbuf_room(w->b, n);
}

static inline void advance(jsonw_t *w, char *end)
{
    strbuf_commit(w->b, end);
}

/* sep() as a byte written at p: the comma, if one is due. Returns 0 or 1. */
static inline size_t sep_at(jsonw_t *w, char *p)
{
    uint32_t bit = 1u << w->depth;

    if (w->after_key) {
        w->after_key = 0;
        return 0;
    }
    if (w->has_items & bit) {
        *p = ',';
        return 1;
    }
    w->has_items |= bit;
    return 0;
}

/* The separator before a value or a key: a comma unless it is the first
 * member of its container, or the value of the key just written. */
static void sep(jsonw_t *w)
{
    uint32_t bit = 1u << w->depth;

    if (w->after_key) {
        w->after_key = 0;
        return;
    }
    if (w->has_items & bit)
        put(w, ",", 1);
    w->has_items |= bit;
}

static void open_container(jsonw_t *w, char c)
{
    sep(w);
    put(w, &c, 1);
    if (w->depth + 1 < JSONW_MAX_DEPTH)
        w->depth++;
    else
        strbuf_fail(w->b); /* deeper than any caller writes: a bug, not input */
    w->has_items &= ~(1u << w->depth);
}

static void close_container(jsonw_t *w, char c)
{
    put(w, &c, 1);
    if (w->depth > 0)
        w->depth--;
}

void jsonw_object_begin(jsonw_t *w)
{
    open_container(w, '{');
}

void jsonw_object_end(jsonw_t *w)
{
    close_container(w, '}');
}

void jsonw_array_begin(jsonw_t *w)
{
    open_container(w, '[');
}

void jsonw_array_end(jsonw_t *w)
{
    close_container(w, ']');
}

void jsonw_key(jsonw_t *w, const char *key)
{
    char text[64];
    size_t n = strlen(key);

    sep(w);
    if (n + 3 > sizeof(text)) {
        put(w, "\"", 1);
        put(w, key, n);
        put(w, "\":", 2);
    } else { /* one append: keys are short */
        text[0] = '"';
        memcpy(text + 1, key, n);
        memcpy(text + 1 + n, "\":", 2);
        put(w, text, n + 3);
    }
    w->after_key = 1;
}

/* The length of the well-formed UTF-8 sequence at s (RFC 3629: no
 * overlongs, no surrogates, nothing past U+10FFFF), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0], lo = 0x80, hi = 0xBF;
    size_t len;

    if (c < 0x80)
        return 1;
    if (c < 0xC2 || c > 0xF4)
        return 0;
    len = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    if (c == 0xE0)
        lo = 0xA0;
    else if (c == 0xED)
        hi = 0x9F;
    else if (c == 0xF0)
        lo = 0x90;
    else if (c == 0xF4)
        hi = 0x8F;
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return len;
}

size_t jsonw_utf8_prefix(const char *s, size_t n)
{
    size_t i = 0, k;

    while (i < n && (k = utf8_seq((const unsigned char *)s + i, n - i)) != 0)
        i += k;
    return i;
}

/* 1 for the bytes a JSON string can hold as they are: printable ASCII but
 * '"' and '\\', and every byte of a multi-byte sequence (checked apart). */
static int plain(unsigned char c)
{
    return c >= 0x20 && c != '"' && c != '\\' && c != 0x7F;
}

/* Decimal digits two at a time: half the divisions of one at a time. */
static const char digits2[] = "00010203040506070809101112131415161718192021222324252627282930313233"
                              "34353637383940414243444546474849505152535455565758596061626364656667"
                              "6869707172737475767778798081828384858687888990919293949596979899";

/* v in decimal at o (room for FMT_U64_MAX bytes); returns the length. */
static inline size_t put_dec(char *o, uint64_t v)
{
    char d[FMT_U64_MAX], *p = d + sizeof(d);
    size_t n;

    while (v >= 100) {
        p -= 2;
        memcpy(p, digits2 + 2 * (v % 100), 2);
        v /= 100;
    }
    if (v >= 10) {
        p -= 2;
        memcpy(p, digits2 + 2 * v, 2);
    } else {
        *--p = (char)('0' + v);
    }
    n = (size_t)(d + sizeof(d) - p);
    memcpy(o, p, n);
    return n;
}

/* v in exactly n decimal digits at o (v < 10^n). */
static inline void put_dec_width(char *o, uint64_t v, unsigned n)
{
    while (n >= 2) {
        n -= 2;
        memcpy(o + n, digits2 + 2 * (v % 100), 2);
        v /= 100;
    }
    if (n == 1)
        o[0] = (char)('0' + v);
}

/* The length of the prefix of s made of plain ASCII bytes only. Eight
 * bytes at a time while none of them needs a look (no control byte, '"',
 * '\\', DEL or non-ASCII byte: each test is exact about whether one is
 * there, not where), then byte by byte. */
static inline __attribute__((always_inline)) size_t plain_prefix(const char *s, size_t n)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;

    for (; i + 8 <= n; i += 8) {
        uint64_t x, q, b, d;

        memcpy(&x, p + i, 8);
        q = x ^ (ones * '"');
        b = x ^ (ones * '\\');
        d = x ^ (ones * 0x7F);
        if ((x | ((x - ones * 0x20) & ~x) | ((q - ones) & ~q) | ((b - ones) & ~b) |
             ((d - ones) & ~d)) &
            highs)
            break;
    }
    while (i < n && p[i] < 0x80 && plain(p[i]))
        i++;
    return i;
}

static void escape(jsonw_t *w, unsigned char c)
{
    static const char hex[] = "0123456789abcdef";
    char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};

    switch (c) {
    case '"':
        put(w, "\\\"", 2);
        return;
    case '\\':
        put(w, "\\\\", 2);
        return;
    case '\n':
        put(w, "\\n", 2);
        return;
    case '\r':
        put(w, "\\r", 2);
        return;
    case '\t':
        put(w, "\\t", 2);
        return;
    default:
        put(w, e, 6);
    }
}

/* escape()'s bytes written at o; returns the end. */
static char *escape_at(char *o, unsigned char c)
{
    static const char hex[] = "0123456789abcdef";

    *o++ = '\\';
    switch (c) {
    case '"':
    case '\\':
        *o++ = (char)c;
        break;
    case '\n':
        *o++ = 'n';
        break;
    case '\r':
        *o++ = 'r';
        break;
    case '\t':
        *o++ = 't';
        break;
    default:
        memcpy(o, "u00", 3);
        o[3] = hex[c >> 4];
        o[4] = hex[c & 15];
        o += 5;
    }
    return o;
}

/* Strings up to this long that need escaping are written in place, in
 * room for the worst case (six bytes for each). */
#define JSONW_DIRECT_MAX 65536

/* jsonw_stringn() of a string whose first `plain` bytes need nothing. */
static void stringn_direct(jsonw_t *w, const char *s, size_t n, size_t plain_len)
{
    const unsigned char *p = (const unsigned char *)s;
    char *o = room(w, 6 * n + 3);
    size_t i = plain_len, k;

    if (o == NULL)
        return;
    o += sep_at(w, o);
    *o++ = '"';
    memcpy(o, s, i);
    o += i;
    while (i < n) {
        if (p[i] < 0x80) {
            o = escape_at(o, p[i]);
            i++;
        } else if ((k = utf8_seq(p + i, n - i)) != 0) {
            memcpy(o, s + i, k);
            o += k;
            i += k;
        } else {
            *o++ = '?'; /* as lossy_string() in proto/jobspec.c */
            i++;
        }
        k = plain_prefix(s + i, n - i);
        memcpy(o, s + i, k);
        o += k;
        i += k;
    }
    *o++ = '"';
    advance(w, o);
}

void jsonw_stringn(jsonw_t *w, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = plain_prefix(s, n), run = 0, k;

    if (i == n) { /* nothing to escape, the usual case: one copy */
        char *o = room(w, n + 3);
        if (o != NULL) {
            o += sep_at(w, o);
            *o++ = '"';
            memcpy(o, s, n);
            o[n] = '"';
            advance(w, o + n + 1);
        }
        return;
    }
    if (n <= JSONW_DIRECT_MAX) {
        stringn_direct(w, s, n, i);
        return;
    }
    sep(w);
    put(w, "\"", 1);
    while (i < n) {
        if (p[i] < 0x80 && plain(p[i])) {
            i++;
            continue;
        }
        put(w, s + run, i - run);
        if (p[i] < 0x80) {
            escape(w, p[i]);
            i++;
        } else if ((k = utf8_seq(p + i, n - i)) != 0) {
            put(w, s + i, k);
            i += k;
        } else {
            put(w, "?", 1); /* as lossy_string() in proto/jobspec.c */
            i++;
        }
        run = i;
    }
    put(w, s + run, i - run);
    put(w, "\"", 1);
}

void jsonw_string(jsonw_t *w, const char *s)
{
    jsonw_stringn(w, s, strlen(s));
}

static void put_u64(jsonw_t *w, uint64_t v)
{
    char d[FMT_U64_MAX];
    put(w, d, fmt_u64(d, v));
}

void jsonw_uint(jsonw_t *w, uint64_t v)
{
    sep(w);
    put_u64(w, v);
}

void jsonw_int(jsonw_t *w, int64_t v)
{
    sep(w);
    if (v < 0) {
        put(w, "-", 1);
        put_u64(w, (uint64_t)0 - (uint64_t)v);
    } else {
        put_u64(w, (uint64_t)v);
    }
}

/* jsonw_fixed()'s value at o (room for 3 + FMT_U64_MAX + 9 bytes). */
static char *put_fixed(char *o, int64_t v, unsigned decimals)
{
    static const uint64_t pow10[] = {1,      10,      100,      1000,      10000,
                                     100000, 1000000, 10000000, 100000000, 1000000000};
    uint64_t m = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;

    if (decimals > 9)
        decimals = 9;
    if (v < 0)
        *o++ = '-';
    o += put_dec(o, m / pow10[decimals]);
    if (decimals > 0) {
        *o++ = '.';
        put_dec_width(o, m % pow10[decimals], decimals);
        o += decimals;
    }
    return o;
}

void jsonw_fixed(jsonw_t *w, int64_t v, unsigned decimals)
{
    char *o = room(w, 3 + FMT_U64_MAX + 9);

    if (o != NULL) {
        o += sep_at(w, o);
        advance(w, put_fixed(o, v, decimals));
    }
}

void jsonw_double(jsonw_t *w, double v)
{
    char text[40];
    int n = snprintf(text, sizeof(text), "%.17g", v);

    sep(w);
    if (n <= 0 || (size_t)n >= sizeof(text) - 2) {
        put(w, "null", 4); /* not finite, or not printable: never invalid JSON */
        return;
    }
    if (strpbrk(text, ".eEni") == NULL) { /* jansson's real looks like one */
        memcpy(text + n, ".0", 3);
        n += 2;
    }
    if (strpbrk(text, "ni") != NULL) { /* inf, nan */
        put(w, "null", 4);
        return;
    }
    put(w, text, (size_t)n);
}

void jsonw_bool(jsonw_t *w, int v)
{
    sep(w);
    put(w, v ? "true" : "false", v ? 4 : 5);
}

void jsonw_null(jsonw_t *w)
{
    sep(w);
    put(w, "null", 4);
}

void jsonw_json(jsonw_t *w, const json_t *v)
{
    const size_t flags = JSON_COMPACT | JSON_ENCODE_ANY;
    char small[256];
    size_t n;

    if (v == NULL || json_is_null(v)) {
        jsonw_null(w);
        return;
    }
    if (json_is_integer(v)) {
        jsonw_int(w, (int64_t)json_integer_value(v));
        return;
    }
    if (json_is_string(v)) {
        jsonw_stringn(w, json_string_value(v), json_string_length(v));
        return;
    }
    sep(w);
    n = json_dumpb(v, small, sizeof(small), flags);
    if (n == 0) {
        strbuf_fail(w->b);
    } else if (n <= sizeof(small)) {
        put(w, small, n);
    } else {
        /* A big value (a `list` page is megabytes) is dumped straight
         * into its place, which is made once at its size: no copy of it,
         * and no chain of ever larger buffers on its way. */
        char *o = room(w, n);
        if (o != NULL && json_dumpb(v, o, n, flags) == n)
            advance(w, o + n);
        else
            strbuf_fail(w->b);
    }
}

void jsonw_key_lit(jsonw_t *w, const char *key, size_t klen)
{
    char *o = room(w, klen + 1);

    if (o != NULL) {
        o += sep_at(w, o);
        memcpy(o, key, klen);
        advance(w, o + klen);
    }
    w->after_key = 1;
}

void jsonw_member_str(jsonw_t *w, const char *key, size_t klen, const char *s, size_t n)
{
    if (plain_prefix(s, n) != n) {
        jsonw_key_lit(w, key, klen);
        jsonw_stringn(w, s, n);
        return;
    }
    jsonw_member_plain(w, key, klen, s, n);
}

void jsonw_member_uint(jsonw_t *w, const char *key, size_t klen, uint64_t v)
{
    char *o = room(w, klen + 1 + FMT_U64_MAX);

    if (o != NULL) {
        o += sep_at(w, o);
        memcpy(o, key, klen);
        o += klen;
        advance(w, o + put_dec(o, v));
    }
}

void jsonw_member_int(jsonw_t *w, const char *key, size_t klen, int64_t v)
{
    char *o = room(w, klen + 2 + FMT_U64_MAX);

    if (o != NULL) {
        o += sep_at(w, o);
        memcpy(o, key, klen);
        o += klen;
        if (v < 0)
            *o++ = '-';
        advance(w, o + put_dec(o, v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v));
    }
}

void jsonw_member_fixed(jsonw_t *w, const char *key, size_t klen, int64_t v, unsigned decimals)
{
    char *o = room(w, klen + 4 + FMT_U64_MAX + 9);

    if (o != NULL) {
        o += sep_at(w, o);
        memcpy(o, key, klen);
        advance(w, put_fixed(o + klen, v, decimals));
    }
}

void jsonw_member_plain(jsonw_t *w, const char *key, size_t klen, const char *s, size_t n)
{
    char *o = room(w, klen + n + 3);

    if (o != NULL) {
        o += sep_at(w, o);
        memcpy(o, key, klen);
        o += klen;
        *o++ = '"';
        memcpy(o, s, n);
        o[n] = '"';
        advance(w, o + n + 1);
    }
}

void jsonw_member_true(jsonw_t *w, const char *key, size_t klen)
{
    char *o = room(w, klen + 5);

    if (o != NULL) {
        o += sep_at(w, o);
        memcpy(o, key, klen);
        memcpy(o + klen, "true", 4);
        advance(w, o + klen + 4);
    }
}

void jsonw_raw(jsonw_t *w, const char *json, size_t n)
{
    sep(w);
    put(w, json, n);
}

void jsonw_base64(jsonw_t *w, const void *data, size_t n)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *p = data;
    char out[64];
    size_t o = 0, i = 0;

    sep(w);
    put(w, "\"", 1);
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = b64[v >> 18];
        out[o++] = b64[(v >> 12) & 63];
        out[o++] = b64[(v >> 6) & 63];
        out[o++] = b64[v & 63];
        if (o == sizeof(out)) {
            put(w, out, o);
            o = 0;
        }
    }
    if (i < n) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);
        out[o++] = b64[v >> 18];
        out[o++] = b64[(v >> 12) & 63];
        out[o++] = i + 1 < n ? b64[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    put(w, out, o);
    put(w, "\"", 1);
}
