/* jobspec — decoding job spec objects and encoding job results.
 *
 * Decoding is table-driven: each known top-level field has one decoder, and
 * any other field is refused, so a typo ("retry" for "retries") is an error
 * rather than a silently ignored wish. Every message starts with the field it
 * is about ("timeouts.connect: ...", "headers: ..."), because the client shows
 * it to a person who must find the mistake in their request.
 *
 * Decoding reads a jsonr token array (proto/jsonr.h), not a jansson tree:
 * the request is parsed once, with no allocation per value. An object's
 * members are taken as jansson's tree would hold them (each key once, at
 * its first place, with its last value), so repeated keys mean what they
 * always meant. The json_t entry points read the tree into tokens
 * (jsonr_from_json) and decode those.
 *
 * Every string the spec keeps is copied with mem_strndup() and the header
 * array comes from mem_calloc(): job_spec_dispose() releases them with
 * mem_free(). The one exception is the url of jobspec_decode_lent(), which
 * is copied into the caller's room and marked borrowed (url_borrowed), so
 * that a submitted job whose URL is already normalised costs no copy at
 * all (job_create() shares or copies it before the room goes). Labels are copied into a jansson
 * tree of their own, so the job never shares memory with the request it came from.
 */
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <mbedtls/base64.h>

#include "err.h"
#include "jobspec.h"
#include "jsonr.h"
#include "jsonw.h"

#include "http.h"
#include "mem.h"

#define JOBSPEC_MAX_HEADERS   100
#define JOBSPEC_MAX_METHOD    32
#define JOBSPEC_MAX_TIMEOUT_S 86400
#define JOBSPEC_MAX_INLINE    (64 * 1024 * 1024)
#define JOBSPEC_PRIORITY_MIN  -1000
#define JOBSPEC_PRIORITY_MAX  1000
#define JOBSPEC_SHA256_HEX    64

/* The decoder's working state for one jobspec_decode_r() call. */
typedef struct decoder {
    job_spec_t *spec; /* borrowed: the spec being filled */
    const jsonr_t *r; /* borrowed: the parsed request */
    char *errbuf;     /* borrowed: may be NULL */
    size_t errlen;
    char *room; /* borrowed: where the url goes when it fits (jobspec_decode_lent()); or NULL */
    size_t roomlen;
} decoder_t;

typedef struct field field_t;

/* One known top-level field. The generic decoders find their target through
 * offset (into job_spec_t) and check min..max; the others ignore both. */
struct field {
    const char *name;
    size_t len; /* strlen(name) */
    int (*decode)(decoder_t *d, const field_t *f, uint32_t v);
    size_t offset;
    long long min, max;
};

/* Header fields fetchd writes itself or that manage the connection, which a
 * job must not be able to override (RFC 9110 section 7.6.1). */
static const char *const reserved_headers[] = {
    "Host",    "Content-Length", "Transfer-Encoding", "Connection",
    "Upgrade", "Keep-Alive",     "Proxy-Connection",  "TE",
};

static int bad(decoder_t *d, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes "field: reason" into the caller's buffer and returns the error. */
static int bad(decoder_t *d, const char *field, const char *fmt, ...)
{
    va_list ap;
    int n;
    if (d->errbuf == NULL || d->errlen == 0)
        return ERR_INVALID_REQUEST;
    n = snprintf(d->errbuf, d->errlen, "%s: ", field);
    if (n >= 0 && (size_t)n < d->errlen) {
        va_start(ap, fmt);
        vsnprintf(d->errbuf + n, d->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return ERR_INVALID_REQUEST;
}

static int no_memory(decoder_t *d)
{
    if (d->errbuf != NULL && d->errlen > 0)
        snprintf(d->errbuf, d->errlen, "%s", err_str(ERR_NO_MEMORY));
    return ERR_NO_MEMORY;
}

/* Copies a name from the request into a message, replacing anything that
 * is not printable ASCII so a hostile name cannot forge log lines. */
static const char *printable(char *out, size_t outlen, const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n && i + 1 < outlen; i++)
        out[i] = (s[i] > 0x20 && s[i] < 0x7f) ? s[i] : '?';
    out[i] = '\0';
    return out;
}

static int is_bool(const jsonr_t *r, uint32_t v)
{
    jsonr_type_t t = jsonr_type(r, v);
    return v != JSONR_NONE && (t == JSONR_TRUE || t == JSONR_FALSE);
}

static int is_type(const jsonr_t *r, uint32_t v, jsonr_type_t t)
{
    return v != JSONR_NONE && jsonr_type(r, v) == t;
}

static int name_is(const char *name, const char *s, size_t n)
{
    return strlen(name) == n && memcmp(name, s, n) == 0;
}

/* ---- the members of an object, as jansson's tree would hold them ---------------- */

/* Each key once, in the order of its first appearance, with the value of its
 * last (a repeated key is not an error: the last value wins, as it always
 * did). At most cap keys; more set overflow, and the rest still update the
 * values of those kept. */
#define MEMBERS_MAX (JOBSPEC_MAX_HEADERS + 1)

typedef struct members {
    uint32_t n, overflow;
    uint32_t last[MEMBERS_MAX]; /* the value of the key's last member */
    const char *key[MEMBERS_MAX];
    size_t klen[MEMBERS_MAX];
} members_t;

static void collect(const jsonr_t *r, uint32_t obj, members_t *m, uint32_t cap)
{
    m->n = m->overflow = 0;
    for (uint32_t v = jsonr_first(r, obj); v != JSONR_NONE; v = jsonr_next(r, v)) {
        size_t klen;
        const char *k = jsonr_key(r, v, &klen);
        uint32_t i;
        for (i = 0; i < m->n; i++)
            if (m->klen[i] == klen && memcmp(k, m->key[i], klen) == 0)
                break;
        if (i < m->n) {
            m->last[i] = v;
        } else if (m->n < cap) {
            m->last[m->n] = v;
            m->key[m->n] = k;
            m->klen[m->n] = klen;
            m->n++;
        } else {
            m->overflow = 1;
        }
    }
}

/* ---- field decoders ------------------------------------------------------------- */

/* A string value without NUL bytes (which C strings cannot carry). */
static int text_value(decoder_t *d, const char *field, uint32_t v, const char **s, size_t *n)
{
    if (!is_type(d->r, v, JSONR_STRING))
        return bad(d, field, "must be a string");
    *s = jsonr_str(d->r, v, n);
    if (memchr(*s, '\0', *n) != NULL)
        return bad(d, field, "must not contain NUL bytes");
    return 0;
}

/* Stores a heap copy of a string field at f->offset. */
static int store_text(decoder_t *d, const field_t *f, uint32_t v, int allow_empty)
{
    char **dst = (char **)((char *)d->spec + f->offset);
    const char *s = NULL;
    size_t n = 0;
    int rc = text_value(d, f->name, v, &s, &n);
    if (rc != 0)
        return rc;
    if (n == 0 && !allow_empty)
        return bad(d, f->name, "must not be empty");
    *dst = mem_strndup(s, n);
    return *dst != NULL ? 0 : no_memory(d);
}

/* A non-empty string. */
static int dec_string(decoder_t *d, const field_t *f, uint32_t v)
{
    return store_text(d, f, v, 0);
}

/* The url: into the caller's room, borrowed, when it fits; else a heap copy. */
static int dec_url(decoder_t *d, const field_t *f, uint32_t v)
{
    const char *s = NULL;
    size_t n = 0;
    int rc = text_value(d, f->name, v, &s, &n);
    if (rc != 0)
        return rc;
    if (n == 0)
        return bad(d, f->name, "must not be empty");
    if (n >= d->roomlen)
        return store_text(d, f, v, 0);
    memcpy(d->room, s, n);
    d->room[n] = '\0';
    d->spec->url = d->room;
    d->spec->url_borrowed = 1;
    return 0;
}

/* A string that may be empty: proxy ("" = direct) and no_proxy. The proxy
 * URL itself is checked by job_create(). */
static int dec_text(decoder_t *d, const field_t *f, uint32_t v)
{
    return store_text(d, f, v, 1);
}

static int dec_bool(decoder_t *d, const field_t *f, uint32_t v)
{
    if (!is_bool(d->r, v))
        return bad(d, f->name, "must be true or false");
    *(int *)((char *)d->spec + f->offset) = jsonr_type(d->r, v) == JSONR_TRUE;
    return 0;
}

static int integer_in_range(decoder_t *d, const field_t *f, uint32_t v, long long *out)
{
    long long x = 0;
    if (jsonr_int(d->r, v, &x) != 0 || x < f->min || x > f->max)
        return bad(d, f->name, "must be an integer from %lld to %lld", f->min, f->max);
    *out = x;
    return 0;
}

/* An int field of job_spec_t. */
static int dec_int(decoder_t *d, const field_t *f, uint32_t v)
{
    long long x = 0;
    int rc = integer_in_range(d, f, v, &x);
    if (rc == 0)
        *(int *)((char *)d->spec + f->offset) = (int)x;
    return rc;
}

/* A uint64_t field of job_spec_t. */
static int dec_u64(decoder_t *d, const field_t *f, uint32_t v)
{
    long long x = 0;
    int rc = integer_in_range(d, f, v, &x);
    if (rc == 0)
        *(uint64_t *)((char *)d->spec + f->offset) = (uint64_t)x;
    return rc;
}

/* A number (integer or real) as json_number_value() gives it, or -1. */
static double number_or(const jsonr_t *r, uint32_t v, double otherwise)
{
    double x;
    return jsonr_number(r, v, &x) == 0 ? x : otherwise;
}

/* A duration in seconds (integer or real), stored in milliseconds. A tiny
 * positive value rounds up to 1 ms rather than to "no timeout". */
static int seconds(decoder_t *d, const char *field, uint32_t v, uint64_t *ms)
{
    double s = number_or(d->r, v, -1);
    if (!(s > 0 && s <= JOBSPEC_MAX_TIMEOUT_S))
        return bad(d, field, "must be a positive number of seconds (at most %d)",
                   JOBSPEC_MAX_TIMEOUT_S);
    *ms = (uint64_t)llround(s * 1000);
    if (*ms == 0)
        *ms = 1;
    return 0;
}

static int dec_timeout(decoder_t *d, const field_t *f, uint32_t v)
{
    return seconds(d, f->name, v, &d->spec->total_timeout_ms);
}

static int dec_timeouts(decoder_t *d, const field_t *f, uint32_t v)
{
    static const char *const names[] = {"connect", "first_byte", "idle", "total"};
    uint64_t *dst[] = {&d->spec->connect_timeout_ms, &d->spec->first_byte_timeout_ms,
                       &d->spec->idle_timeout_ms, &d->spec->total_timeout_ms};
    const size_t ntimeouts = sizeof(names) / sizeof(names[0]);
    members_t m;
    char field[64], name[32];
    if (!is_type(d->r, v, JSONR_OBJECT))
        return bad(d, f->name, "must be an object");
    /* Among any five keys one is unknown: it is refused before the end. */
    collect(d->r, v, &m, (uint32_t)ntimeouts + 1);
    for (uint32_t k = 0; k < m.n; k++) {
        size_t klen = m.klen[k], i = 0;
        const char *key = m.key[k];
        while (i < ntimeouts && !name_is(names[i], key, klen))
            i++;
        snprintf(field, sizeof(field), "%s.%s", f->name, printable(name, sizeof(name), key, klen));
        if (i == ntimeouts)
            return bad(d, field, "unknown field (known: connect, first_byte, idle, total)");
        int rc = seconds(d, field, m.last[k], dst[i]);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int dec_method(decoder_t *d, const field_t *f, uint32_t v)
{
    const char *s = NULL;
    size_t n = 0;
    int rc = text_value(d, f->name, v, &s, &n);
    if (rc != 0)
        return rc;
    if (n == 0 || n > JOBSPEC_MAX_METHOD || !http_is_token(s, n))
        return bad(d, f->name, "must be an HTTP method token of 1 to %d characters",
                   JOBSPEC_MAX_METHOD);
    d->spec->method = mem_strndup(s, n);
    return d->spec->method != NULL ? 0 : no_memory(d);
}

static int reserved_header(const char *name, size_t n)
{
    for (size_t i = 0; i < sizeof(reserved_headers) / sizeof(reserved_headers[0]); i++) {
        if (strlen(reserved_headers[i]) == n && strncasecmp(reserved_headers[i], name, n) == 0)
            return 1;
    }
    return 0;
}

/* Refuses CR, LF, NUL and other control bytes except HTAB in a field value;
 * obs-text (bytes >= 0x80) is allowed, as RFC 9110 section 5.5 does. */
static int check_value(decoder_t *d, const char *name, const char *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c == '\r' || c == '\n')
            return bad(d, "headers", "value of \"%s\" contains CR or LF", name);
        if (c == '\0')
            return bad(d, "headers", "value of \"%s\" contains a NUL byte", name);
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return bad(d, "headers", "value of \"%s\" contains a control byte", name);
    }
    return 0;
}

/* Validates one header and appends a copy of it. Leading and trailing
 * whitespace around the value is not part of it (RFC 9110 section 5.5). */
static int add_header(decoder_t *d, const char *name, size_t nlen, const char *value, size_t vlen)
{
    job_header_t *h = &d->spec->headers[d->spec->nheaders];
    char shown[64];
    printable(shown, sizeof(shown), name, nlen);
    if (!http_is_token(name, nlen))
        return bad(d, "headers", "invalid header name \"%s\" (must be a token)", shown);
    if (reserved_header(name, nlen))
        return bad(d, "headers", "\"%s\" is set by fetchd and cannot be given", shown);
    while (vlen > 0 && (value[0] == ' ' || value[0] == '\t')) {
        value++;
        vlen--;
    }
    while (vlen > 0 && (value[vlen - 1] == ' ' || value[vlen - 1] == '\t'))
        vlen--;
    int rc = check_value(d, shown, value, vlen);
    if (rc != 0)
        return rc;
    h->name = mem_strndup(name, nlen);
    h->value = h->name ? mem_strndup(value, vlen) : NULL;
    if (h->value == NULL) {
        mem_free(h->name);
        h->name = NULL;
        return no_memory(d);
    }
    d->spec->nheaders++;
    return 0;
}

static int alloc_headers(decoder_t *d, size_t n)
{
    if (n > JOBSPEC_MAX_HEADERS)
        return bad(d, "headers", "too many (at most %d)", JOBSPEC_MAX_HEADERS);
    if (n == 0)
        return 0;
    d->spec->headers = mem_calloc(n, sizeof(job_header_t));
    return d->spec->headers != NULL ? 0 : no_memory(d);
}

static int headers_object(decoder_t *d, uint32_t v)
{
    members_t m;
    char shown[64];
    int rc;
    collect(d->r, v, &m, JOBSPEC_MAX_HEADERS + 1);
    rc = alloc_headers(d, m.n);
    if (rc != 0)
        return rc;
    for (uint32_t k = 0; k < m.n; k++) {
        size_t klen = m.klen[k], vlen;
        const char *key = m.key[k], *val;
        if (!is_type(d->r, m.last[k], JSONR_STRING))
            return bad(d, "headers", "value of \"%s\" must be a string",
                       printable(shown, sizeof(shown), key, klen));
        val = jsonr_str(d->r, m.last[k], &vlen);
        rc = add_header(d, key, klen, val, vlen);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* One array element: "Name: value" or ["Name", "value"]. */
static int header_item(decoder_t *d, size_t i, uint32_t item)
{
    const jsonr_t *r = d->r;
    char field[32];
    snprintf(field, sizeof(field), "headers[%zu]", i);
    if (is_type(r, item, JSONR_STRING)) {
        size_t n;
        const char *s = jsonr_str(r, item, &n);
        const char *colon = memchr(s, ':', n);
        if (colon == NULL)
            return bad(d, field, "expected \"Name: value\"");
        return add_header(d, s, (size_t)(colon - s), colon + 1, n - (size_t)(colon - s) - 1);
    }
    if (is_type(r, item, JSONR_ARRAY) && jsonr_count(r, item) == 2 &&
        is_type(r, jsonr_at(r, item, 0), JSONR_STRING) &&
        is_type(r, jsonr_at(r, item, 1), JSONR_STRING)) {
        size_t nlen, vlen;
        const char *name = jsonr_str(r, jsonr_at(r, item, 0), &nlen);
        const char *value = jsonr_str(r, jsonr_at(r, item, 1), &vlen);
        return add_header(d, name, nlen, value, vlen);
    }
    return bad(d, field, "must be a \"Name: value\" string or a [name, value] pair");
}

static int dec_headers(decoder_t *d, const field_t *f, uint32_t v)
{
    size_t i = 0;
    int rc;
    if (is_type(d->r, v, JSONR_OBJECT))
        return headers_object(d, v);
    if (!is_type(d->r, v, JSONR_ARRAY))
        return bad(d, f->name, "must be an object or an array");
    rc = alloc_headers(d, jsonr_count(d->r, v));
    if (rc != 0)
        return rc;
    for (uint32_t item = jsonr_first(d->r, v); item != JSONR_NONE;
         item = jsonr_next(d->r, item), i++) {
        rc = header_item(d, i, item);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int dec_body(decoder_t *d, const field_t *f, uint32_t v)
{
    const char *s;
    if (!is_type(d->r, v, JSONR_STRING))
        return bad(d, f->name, "must be a string");
    s = jsonr_str(d->r, v, &d->spec->body_len);
    d->spec->body = mem_strndup(s, d->spec->body_len);
    return d->spec->body != NULL ? 0 : no_memory(d);
}

static int dec_body_base64(decoder_t *d, const field_t *f, uint32_t v)
{
    const unsigned char *src;
    size_t slen, olen = 0;
    if (!is_type(d->r, v, JSONR_STRING))
        return bad(d, f->name, "must be a string");
    src = (const unsigned char *)jsonr_str(d->r, v, &slen);
    /* A first pass without a buffer validates and measures. */
    int rc = mbedtls_base64_decode(NULL, 0, &olen, src, slen);
    if (rc != 0 && rc != MBEDTLS_ERR_BASE64_BUFFER_TOO_SMALL)
        return bad(d, f->name, "invalid base64");
    d->spec->body = mem_alloc(olen + 1);
    if (d->spec->body == NULL)
        return no_memory(d);
    if (mbedtls_base64_decode((unsigned char *)d->spec->body, olen + 1, &olen, src, slen) != 0)
        return bad(d, f->name, "invalid base64");
    d->spec->body[olen] = '\0';
    d->spec->body_len = olen;
    return 0;
}

static int dec_output(decoder_t *d, const field_t *f, uint32_t v)
{
    const char *s = NULL;
    size_t n = 0;
    int rc = text_value(d, f->name, v, &s, &n);
    if (rc != 0)
        return rc;
    if (n == 0)
        return bad(d, f->name, "must be \"discard\", \"inline\" or a file path");
    if (name_is("discard", s, n)) {
        d->spec->output = JOB_OUTPUT_DISCARD;
    } else if (name_is("inline", s, n)) {
        d->spec->output = JOB_OUTPUT_INLINE;
    } else {
        d->spec->output = JOB_OUTPUT_FILE;
        d->spec->output_path = mem_strndup(s, n);
        if (d->spec->output_path == NULL)
            return no_memory(d);
    }
    return 0;
}

static int dec_expected_sha256(decoder_t *d, const field_t *f, uint32_t v)
{
    const char *s = NULL;
    size_t n = 0, i;
    int rc = text_value(d, f->name, v, &s, &n);
    if (rc != 0)
        return rc;
    for (i = 0; i < n && strchr("0123456789abcdefABCDEF", s[i]) != NULL; i++)
        ;
    if (n != JOBSPEC_SHA256_HEX || i != n)
        return bad(d, f->name, "must be %d hexadecimal digits", JOBSPEC_SHA256_HEX);
    d->spec->expected_sha256 = mem_strndup(s, n);
    if (d->spec->expected_sha256 == NULL)
        return no_memory(d);
    for (char *p = d->spec->expected_sha256; *p != '\0'; p++) {
        if (*p >= 'A' && *p <= 'F')
            *p = (char)(*p - 'A' + 'a');
    }
    d->spec->sha256 = 1;
    return 0;
}

/* true: decode; false: never (whatever the daemon's default); absent: the
 * daemon's default. */
static int dec_decode(decoder_t *d, const field_t *f, uint32_t v)
{
    if (!is_bool(d->r, v))
        return bad(d, f->name, "must be true or false");
    d->spec->decode = jsonr_type(d->r, v) == JSONR_TRUE ? 1 : -1;
    return 0;
}

/* Labels are echoed back as given: the one field kept as a jansson tree. */
static int dec_labels(decoder_t *d, const field_t *f, uint32_t v)
{
    if (!is_type(d->r, v, JSONR_OBJECT))
        return bad(d, f->name, "must be an object");
    d->spec->labels = jsonr_to_json(d->r, v);
    return d->spec->labels != NULL ? 0 : no_memory(d);
}

/* rate: requests/s to the job's host at most (the host's rules still apply). */
static int dec_rate(decoder_t *d, const field_t *f, uint32_t v)
{
    double r = number_or(d->r, v, -1);
    if (!(r >= RL_MIN_RATE && r <= RL_MAX_RATE))
        return bad(d, f->name, "must be a number of requests per second from %g to %g", RL_MIN_RATE,
                   RL_MAX_RATE);
    d->spec->rate = r;
    return 0;
}

/* delay: seconds since the last request start to the job's host, at least. */
static int dec_delay(decoder_t *d, const field_t *f, uint32_t v)
{
    double s = number_or(d->r, v, -1);
    if (!(s >= 0 && s <= RL_MAX_DELAY_S))
        return bad(d, f->name, "must be a number of seconds from 0 to %d", RL_MAX_DELAY_S);
    d->spec->delay_ms = (uint64_t)llround(s * 1000);
    return 0;
}

static const char *const overwrite_names[] = {"", "replace", "never", "newer"};

static int dec_overwrite(decoder_t *d, const field_t *f, uint32_t v)
{
    size_t n = 0;
    const char *s = jsonr_str(d->r, v, &n);
    for (int i = JOB_OVERWRITE_REPLACE; s != NULL && i <= JOB_OVERWRITE_NEWER; i++)
        if (name_is(overwrite_names[i], s, n)) {
            d->spec->overwrite = (job_overwrite_t)i;
            return 0;
        }
    return bad(d, f->name, "must be \"replace\", \"never\" or \"newer\"");
}

#define SPEC_OFF(m) offsetof(job_spec_t, m)
#define F(name)     name, sizeof(name) - 1

static const field_t fields[] = {
    {F("url"), dec_url, SPEC_OFF(url), 0, 0},
    {F("method"), dec_method, 0, 0, 0},
    {F("headers"), dec_headers, 0, 0, 0},
    {F("body"), dec_body, 0, 0, 0},
    {F("body_base64"), dec_body_base64, 0, 0, 0},
    {F("output"), dec_output, 0, 0, 0},
    {F("inline_max"), dec_u64, SPEC_OFF(inline_max), 1, JOBSPEC_MAX_INLINE},
    {F("sha256"), dec_bool, SPEC_OFF(sha256), 0, 0},
    {F("expected_sha256"), dec_expected_sha256, 0, 0, 0},
    {F("timeouts"), dec_timeouts, 0, 0, 0},
    {F("timeout"), dec_timeout, 0, 0, 0},
    {F("retries"), dec_int, SPEC_OFF(retries), 0, JOB_MAX_RETRIES},
    {F("max_redirects"), dec_int, SPEC_OFF(max_redirects), 0, JOB_MAX_REDIRECTS_LIMIT},
    {F("max_body"), dec_u64, SPEC_OFF(max_body), 0, LLONG_MAX},
    {F("fail_on_http_error"), dec_bool, SPEC_OFF(fail_on_http_error), 0, 0},
    {F("insecure"), dec_bool, SPEC_OFF(insecure), 0, 0},
    {F("allow_downgrade"), dec_bool, SPEC_OFF(allow_downgrade), 0, 0},
    {F("ca_file"), dec_string, SPEC_OFF(ca_file), 0, 0},
    {F("client_cert"), dec_string, SPEC_OFF(client_cert), 0, 0},
    {F("client_key"), dec_string, SPEC_OFF(client_key), 0, 0},
    {F("priority"), dec_int, SPEC_OFF(priority), JOBSPEC_PRIORITY_MIN, JOBSPEC_PRIORITY_MAX},
    {F("labels"), dec_labels, 0, 0, 0},
    {F("decode"), dec_decode, 0, 0, 0},
    {F("rate"), dec_rate, 0, 0, 0},
    {F("delay"), dec_delay, 0, 0, 0},
    {F("limit_rate"), dec_u64, SPEC_OFF(limit_rate), 0, 1LL << 50},
    {F("proxy"), dec_text, SPEC_OFF(proxy), 0, 0},
    {F("no_proxy"), dec_text, SPEC_OFF(no_proxy), 0, 0},
    {F("keep_headers"), dec_bool, SPEC_OFF(keep_headers), 0, 0},
    {F("overwrite"), dec_overwrite, 0, 0, 0},
    {F("mkdirs"), dec_bool, SPEC_OFF(mkdirs), 0, 0},
    {F("resume"), dec_bool, SPEC_OFF(resume), 0, 0},
};

#define NFIELDS (sizeof(fields) / sizeof(fields[0]))

static const field_t *find_field(const char *key, size_t klen)
{
    for (size_t i = 0; i < NFIELDS; i++) {
        if (fields[i].len == klen && memcmp(fields[i].name, key, klen) == 0)
            return &fields[i];
    }
    return NULL;
}

/* Fields that exclude each other, refused before either is decoded so that
 * one never overwrites (and leaks) what the other stored. f[k] is the field
 * of member k of m (NULL: unknown). */
static int check_conflicts(decoder_t *d, const members_t *m, const field_t *const *f)
{
    int body = 0, body_base64 = 0, timeout = 0, total = 0;
    for (uint32_t k = 0; k < m->n; k++) {
        if (f[k] == NULL)
            continue;
        body |= f[k]->decode == dec_body;
        body_base64 |= f[k]->decode == dec_body_base64;
        timeout |= f[k]->decode == dec_timeout;
        total |= f[k]->decode == dec_timeouts && jsonr_get(d->r, m->last[k], "total") != JSONR_NONE;
    }
    if (body && body_base64)
        return bad(d, "body_base64", "cannot be combined with \"body\"");
    if (timeout && total)
        return bad(d, "timeout", "cannot be combined with \"timeouts.total\"");
    return 0;
}

/* Rules that need the whole spec, checked once every field is decoded. */
static int check_complete(decoder_t *d, uint32_t obj)
{
    if (d->spec->url == NULL)
        return bad(d, "url", "required");
    if (d->spec->expected_sha256 && is_type(d->r, jsonr_get(d->r, obj, "sha256"), JSONR_FALSE))
        return bad(d, "sha256", "cannot be false when \"expected_sha256\" is given");
    return 0;
}

static int decode_fields(decoder_t *d, uint32_t obj)
{
    members_t m;
    const field_t *f[NFIELDS + 1];
    char shown[64];
    int rc;
    if (!is_type(d->r, obj, JSONR_OBJECT))
        return bad(d, "job", "must be a JSON object");
    /* Among any NFIELDS + 1 keys one is unknown: it is refused before the end. */
    collect(d->r, obj, &m, NFIELDS + 1);
    for (uint32_t k = 0; k < m.n; k++)
        f[k] = find_field(m.key[k], m.klen[k]);
    rc = check_conflicts(d, &m, f);
    if (rc != 0)
        return rc;
    for (uint32_t k = 0; k < m.n; k++) {
        if (f[k] == NULL)
            return bad(d, printable(shown, sizeof(shown), m.key[k], m.klen[k]), "unknown field");
        rc = f[k]->decode(d, f[k], m.last[k]);
        if (rc != 0)
            return rc;
    }
    return check_complete(d, obj);
}

int jobspec_decode_r(const jsonr_t *r, uint32_t v, job_spec_t *spec, char *errbuf, size_t errlen)
{
    return jobspec_decode_lent(r, v, spec, NULL, 0, errbuf, errlen);
}

int jobspec_decode_lent(const jsonr_t *r, uint32_t v, job_spec_t *spec, char *room, size_t roomlen,
                        char *errbuf, size_t errlen)
{
    decoder_t d = {spec, r, errbuf, errlen, room, room != NULL ? roomlen : 0};
    int rc;
    job_spec_init(spec);
    if (errbuf != NULL && errlen > 0)
        errbuf[0] = '\0';
    rc = decode_fields(&d, v);
    if (rc != 0) {
        job_spec_dispose(spec);
        memset(spec, 0, sizeof(*spec));
    }
    return rc;
}

int jobspec_decode_set_r(const jsonr_t *r, uint32_t params, job_spec_t *to, unsigned *which,
                         char *errbuf, size_t errlen)
{
    /* The fields `set` changes, in the order of their JOBSPEC_SET_* bits. */
    static const char *const changeable[] = {"priority", "rate", "delay", "limit_rate"};
    const unsigned nchangeable = sizeof(changeable) / sizeof(changeable[0]);
    decoder_t d = {to, r, errbuf, errlen, NULL, 0};
    members_t m;
    char shown[64];

    job_spec_init(to);
    *which = 0;
    if (errbuf != NULL && errlen > 0)
        errbuf[0] = '\0';
    /* id, ids and the changeable keys: among one more, one is unknown. */
    collect(r, params, &m, nchangeable + 3);
    for (uint32_t i = 0; i < m.n; i++) {
        const field_t *f = NULL;
        size_t klen = m.klen[i];
        const char *key = m.key[i];
        unsigned k;
        int rc;
        if (name_is("id", key, klen) || name_is("ids", key, klen))
            continue; /* which jobs: the caller's */
        for (k = 0; k < nchangeable && f == NULL; k++)
            if (name_is(changeable[k], key, klen))
                f = find_field(key, klen);
        if (f == NULL)
            return bad(&d, printable(shown, sizeof(shown), key, klen),
                       "unknown field (set changes priority, rate, delay, limit_rate)");
        rc = f->decode(&d, f, m.last[i]);
        if (rc != 0)
            return rc;
        *which |= 1u << (k - 1);
    }
    if (*which == 0)
        return bad(&d, "params", "nothing to change: give priority, rate, delay or limit_rate");
    return 0;
}

/* Reads the tree v (borrowed; NULL reads as null) into r, initialised
 * here: the json_t entry points below are wrappers around the jsonr
 * decoder, so there is one decoder. 0 or ERR_NO_MEMORY. */
static int from_tree(jsonr_t *r, const json_t *v)
{
    jsonr_init(r, mem_realloc, mem_free);
    return jsonr_from_json(r, v) == 0 ? 0 : ERR_NO_MEMORY;
}

int jobspec_decode(const json_t *obj, job_spec_t *spec, char *errbuf, size_t errlen)
{
    jsonr_t r;
    int rc = from_tree(&r, obj);
    if (rc == 0) {
        rc = jobspec_decode_r(&r, 0, spec, errbuf, errlen);
    } else {
        decoder_t d = {spec, &r, errbuf, errlen, NULL, 0};
        memset(spec, 0, sizeof(*spec));
        no_memory(&d);
    }
    jsonr_free(&r);
    return rc;
}

int jobspec_decode_set(const json_t *params, job_spec_t *to, unsigned *which, char *errbuf,
                       size_t errlen)
{
    jsonr_t r;
    int rc = from_tree(&r, params);
    if (rc == 0) {
        rc = jobspec_decode_set_r(&r, 0, to, which, errbuf, errlen);
    } else {
        decoder_t d = {to, &r, errbuf, errlen, NULL, 0};
        job_spec_init(to);
        *which = 0;
        no_memory(&d);
    }
    jsonr_free(&r);
    return rc;
}

/* A JSON string for text that should be UTF-8 but may not be (an error
 * message quoting a server, a path): bytes that are not well-formed become
 * '?', so the encoder never fails or emits invalid JSON because of them. */
static json_t *lossy_string(const char *s)
{
    size_t n = strlen(s), i;
    char *copy;
    json_t *j;
    i = jsonw_utf8_prefix(s, n);
    if (i == n)
        return json_stringn_nocheck(s, n);
    copy = mem_strndup(s, n);
    if (copy == NULL)
        return NULL;
    while (i < n) {
        copy[i++] = '?';
        i += jsonw_utf8_prefix(copy + i, n - i);
    }
    j = json_stringn_nocheck(copy, n);
    mem_free(copy);
    return j;
}

static json_t *base64_string(const char *p, size_t n)
{
    size_t cap, olen = 0;
    char *b64;
    json_t *j;
    if (n > (SIZE_MAX / 4 - 1) * 3)
        return NULL;
    cap = (n + 2) / 3 * 4 + 1;
    b64 = mem_alloc(cap);
    if (b64 == NULL)
        return NULL;
    b64[0] = '\0';
    if (mbedtls_base64_encode((unsigned char *)b64, cap, &olen, (const unsigned char *)p, n) != 0) {
        mem_free(b64);
        return NULL;
    }
    j = json_stringn_nocheck(b64, olen);
    mem_free(b64);
    return j;
}

/* {"encoding": "text" | "base64", "data": ...}: text when the body is
 * well-formed UTF-8 without NUL bytes, which is what a person can read. */
static json_t *encode_blob(const char *p, size_t n)
{
    int text = memchr(p, '\0', n) == NULL && jsonw_utf8_prefix(p, n) == n;
    json_t *data = text ? json_stringn_nocheck(p, n) : base64_string(p, n);
    if (data == NULL)
        return NULL;
    return json_pack("{s:s, s:o}", "encoding", text ? "text" : "base64", "data", data);
}

static json_t *encode_inline(const job_t *j)
{
    return encode_blob(j->inline_body != NULL ? j->inline_body : "",
                       j->inline_body != NULL ? j->inline_len : 0);
}

/* Unix times go out with microseconds (as daemon/jobjson.c writes them),
 * so every answer about a job shows the same value. */
static double usec(double t)
{
    return (double)llround(t * 1e6) / 1e6;
}

static json_t *encode_timings(const job_timings_t *t)
{
    json_t *o = json_pack("{s:f, s:I, s:I, s:I, s:I, s:I}", "created", usec(t->created),
                          "queued_ms", (json_int_t)t->queued_ms, "dns_ms", (json_int_t)t->dns_ms,
                          "connect_ms", (json_int_t)t->connect_ms, "ttfb_ms",
                          (json_int_t)t->ttfb_ms, "total_ms", (json_int_t)t->total_ms);
    if (o == NULL)
        return NULL;
    if ((t->started != 0 && json_object_set_new(o, "started", json_real(usec(t->started))) != 0) ||
        (t->finished != 0 &&
         json_object_set_new(o, "finished", json_real(usec(t->finished))) != 0)) {
        json_decref(o);
        return NULL;
    }
    return o;
}

json_t *jobspec_encode_headers(const job_pairs_t *p)
{
    json_t *arr = json_array(), *pair;
    const char *name, *value;
    size_t at = 0;

    while (arr != NULL && p != NULL && job_pairs_next(p, &at, &name, &value)) {
        pair = json_array();
        if (pair == NULL || json_array_append_new(pair, lossy_string(name)) != 0 ||
            json_array_append_new(pair, lossy_string(value)) != 0 ||
            json_array_append_new(arr, pair) != 0) {
            json_decref(pair);
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

json_t *jobspec_encode_redirect_chain(const job_pairs_t *p)
{
    json_t *arr = json_array(), *hop;
    const char *status, *url;
    size_t at = 0;

    while (arr != NULL && p != NULL && job_pairs_next(p, &at, &status, &url)) {
        hop = json_pack("{s:o, s:i}", "url", lossy_string(url), "status", atoi(status));
        if (hop == NULL || json_array_append_new(arr, hop) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

/* The final response's metadata and how the job got to it; 0 or -1. */
static int encode_metadata(json_t *o, const job_t *j)
{
    int rc = 0;
    if (j->content_type != NULL)
        rc |= json_object_set_new(o, "content_type", lossy_string(j->content_type));
    if (j->content_length >= 0)
        rc |= json_object_set_new(o, "content_length", json_integer((json_int_t)j->content_length));
    if (j->etag != NULL)
        rc |= json_object_set_new(o, "etag", lossy_string(j->etag));
    if (j->last_modified != NULL)
        rc |= json_object_set_new(o, "last_modified", lossy_string(j->last_modified));
    if (j->redirect_chain != NULL && j->redirect_chain->n > 0)
        rc |= json_object_set_new(o, "redirect_chain",
                                  jobspec_encode_redirect_chain(j->redirect_chain));
    if (j->spec.keep_headers && j->http_status != 0)
        rc |= json_object_set_new(o, "headers", jobspec_encode_headers(j->headers));
    if (j->headers != NULL && j->headers->truncated)
        rc |= json_object_set_new(o, "headers_truncated", json_true());
    return rc;
}

/* Adds the fields that are present only in some states; 0 or -1. */
static int encode_optional(json_t *o, const job_t *j)
{
    int rc = 0;
    if (j->effective_url != NULL)
        rc |= json_object_set_new(o, "effective_url", lossy_string(j->effective_url));
    if (j->http_status != 0)
        rc |= json_object_set_new(o, "http_status", json_integer(j->http_status));
    if (j->sha256[0] != '\0')
        rc |= json_object_set_new(o, "sha256", lossy_string(j->sha256));
    if (j->output != NULL)
        rc |= json_object_set_new(o, "output", lossy_string(j->output));
    if (j->spec.output == JOB_OUTPUT_INLINE && j->state == JOB_DONE)
        rc |= json_object_set_new(o, "inline", encode_inline(j));
    if (j->not_modified)
        rc |= json_object_set_new(o, "not_modified", json_true());
    if (j->resumed_from > 0)
        rc |= json_object_set_new(o, "resumed_from", json_integer((json_int_t)j->resumed_from));
    if (j->error_body != NULL)
        rc |= json_object_set_new(o, "error_body", encode_blob(j->error_body, j->error_body_len));
    if (j->error != 0)
        rc |= json_object_set_new(o, "error",
                                  jobspec_encode_error(j->error, j->error_msg[0] != '\0'
                                                                     ? j->error_msg
                                                                     : err_str(j->error)));
    if (j->content_encoding != NULL)
        rc |= json_object_set_new(o, "content_encoding", lossy_string(j->content_encoding));
    if (j->decoded)
        rc |= json_object_set_new(o, "decoded", json_true());
    rc |= encode_metadata(o, j);
    if (j->state == JOB_RUNNING) {
        job_progress_t p;
        job_progress(j, &p);
        rc |= json_object_set_new(o, "total", p.total >= 0 ? json_integer(p.total) : json_null());
        rc |= json_object_set_new(o, "speed", json_integer((json_int_t)p.speed));
        rc |= json_object_set_new(o, "eta", p.eta >= 0 ? json_integer(p.eta) : json_null());
    }
    if (j->spec.labels != NULL)
        rc |= json_object_set(o, "labels", j->spec.labels);
    if (j->spec.rate > 0)
        rc |= json_object_set_new(o, "rate", json_real(j->spec.rate));
    if (j->spec.delay_ms)
        rc |= json_object_set_new(o, "delay", json_real(j->spec.delay_ms / 1e3));
    if (j->spec.limit_rate)
        rc |= json_object_set_new(o, "limit_rate", json_integer((json_int_t)j->spec.limit_rate));
    if (j->paused && job_is_cancellable(j)) /* not once it is finishing */
        rc |= json_object_set_new(o, "paused", json_true());
    rc |= json_object_set_new(o, "timings", encode_timings(&j->timings));
    return rc;
}

json_t *jobspec_encode_job(const job_t *j)
{
    json_t *o = json_pack(
        "{s:s, s:s, s:o, s:s, s:I, s:I, s:I, s:I, s:i}", "id", j->id, "state",
        job_state_name(j->state), "url", lossy_string(j->spec.url != NULL ? j->spec.url : ""),
        "method", j->spec.method != NULL ? j->spec.method : "GET", "bytes", (json_int_t)j->bytes,
        "wire_bytes", (json_int_t)j->wire_bytes, "redirects", (json_int_t)j->redirects, "attempts",
        (json_int_t)j->attempts, "priority", j->spec.priority);
    if (o == NULL)
        return NULL;
    if (encode_optional(o, j) != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

json_t *jobspec_encode_error(int err, const char *msg)
{
    json_t *m = lossy_string(msg != NULL ? msg : err_str(err));
    if (m == NULL)
        return NULL;
    return json_pack("{s:s, s:o}", "code", err_name(err), "message", m);
}

static int set_or_fail(json_t *o, const char *key, json_t *v)
{
    return v == NULL ? -1 : json_object_set_new(o, key, v);
}

static json_t *encode_headers(const job_spec_t *s)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < s->nheaders; i++) {
        json_t *pair = json_pack("[ss]", s->headers[i].name, s->headers[i].value);
        if (pair == NULL || json_array_append_new(arr, pair) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

static json_t *encode_timeouts(const job_spec_t *s)
{
    json_t *t = json_pack("{s:f, s:f, s:f}", "connect", s->connect_timeout_ms / 1e3, "first_byte",
                          s->first_byte_timeout_ms / 1e3, "idle", s->idle_timeout_ms / 1e3);
    if (t && s->total_timeout_ms)
        json_object_set_new(t, "total", json_real(s->total_timeout_ms / 1e3));
    return t;
}

json_t *jobspec_encode_spec(const job_spec_t *s)
{
    json_t *o = json_object();
    int bad = o == NULL;

    bad = bad || set_or_fail(o, "url", json_string(s->url));
    if (!bad && s->method)
        bad = set_or_fail(o, "method", json_string(s->method));
    if (!bad && s->nheaders)
        bad = set_or_fail(o, "headers", encode_headers(s));
    if (!bad && s->body)
        bad = set_or_fail(o, "body_base64", base64_string(s->body, s->body_len));
    if (!bad && s->output == JOB_OUTPUT_FILE)
        bad = set_or_fail(o, "output", json_string(s->output_path));
    if (!bad && s->output == JOB_OUTPUT_INLINE)
        bad = set_or_fail(o, "output", json_string("inline")) ||
              set_or_fail(o, "inline_max", json_integer((json_int_t)s->inline_max));
    if (!bad && s->sha256)
        bad = set_or_fail(o, "sha256", json_true());
    if (!bad && s->expected_sha256)
        bad = set_or_fail(o, "expected_sha256", json_string(s->expected_sha256));
    if (!bad)
        bad = set_or_fail(o, "timeouts", encode_timeouts(s)) ||
              set_or_fail(o, "retries", json_integer(s->retries)) ||
              set_or_fail(o, "max_redirects", json_integer(s->max_redirects)) ||
              set_or_fail(o, "max_body", json_integer((json_int_t)s->max_body)) ||
              set_or_fail(o, "priority", json_integer(s->priority));
    if (!bad && s->fail_on_http_error)
        bad = set_or_fail(o, "fail_on_http_error", json_true());
    if (!bad && s->insecure)
        bad = set_or_fail(o, "insecure", json_true());
    if (!bad && s->allow_downgrade)
        bad = set_or_fail(o, "allow_downgrade", json_true());
    if (!bad && s->decode != 0)
        bad = set_or_fail(o, "decode", json_boolean(s->decode > 0));
    if (!bad && s->ca_file)
        bad = set_or_fail(o, "ca_file", json_string(s->ca_file));
    if (!bad && s->client_cert)
        bad = set_or_fail(o, "client_cert", json_string(s->client_cert)) ||
              set_or_fail(o, "client_key", json_string(s->client_key));
    if (!bad && s->labels)
        bad = set_or_fail(o, "labels", json_incref(s->labels));
    if (!bad && s->rate > 0)
        bad = set_or_fail(o, "rate", json_real(s->rate));
    if (!bad && s->delay_ms)
        bad = set_or_fail(o, "delay", json_real(s->delay_ms / 1e3));
    if (!bad && s->limit_rate)
        bad = set_or_fail(o, "limit_rate", json_integer((json_int_t)s->limit_rate));
    /* The state file keeps the proxy with its credentials, as it keeps
     * Authorization headers: the job needs them after a restart. */
    if (!bad && s->proxy)
        bad = set_or_fail(o, "proxy", json_string(s->proxy));
    if (!bad && s->no_proxy)
        bad = set_or_fail(o, "no_proxy", json_string(s->no_proxy));
    if (!bad && s->keep_headers)
        bad = set_or_fail(o, "keep_headers", json_true());
    if (!bad && s->overwrite != JOB_OVERWRITE_DEFAULT)
        bad = set_or_fail(o, "overwrite", json_string(overwrite_names[s->overwrite]));
    if (!bad && s->mkdirs)
        bad = set_or_fail(o, "mkdirs", json_true());
    if (!bad && s->resume)
        bad = set_or_fail(o, "resume", json_true());
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}
