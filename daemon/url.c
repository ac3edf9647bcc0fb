/* url — parsing and resolving http(s) URLs (RFC 3986).
 *
 * Memory: a url_t's four strings live in one heap block, laid out as
 * "href\0host\0authority\0". u->href is the start of the block, the
 * other three point into it (target is the tail of href, which always ends
 * with it: a long URL is not held twice), and url_dispose() frees the block. A parse thus
 * makes exactly one allocation, so it has exactly one way to fail and no
 * half-built state to unwind. Callers must never free or replace the fields
 * one by one: url_dispose() and url_copy() are the only ways to release or
 * duplicate them.
 *
 * Strictness: bytes <= 0x20, 0x7f, bytes >= 0x80 and backslashes are refused
 * anywhere in the input (the caller percent-encodes, and trims whitespace),
 * as are malformed percent escapes in the path and query. Other characters
 * RFC 3986 would have percent-encoded in a path or query ("{", "|", "^", ...)
 * are passed through verbatim, as curl does, because real servers
 * expect them that way. Dot segments in a URL given to url_parse() are kept as
 * given; url_resolve() removes them, as RFC 3986 section 5.2 requires.
 */
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "err.h"
#include "fmt.h"
#include "mem.h"
#include "url.h"

/* A slice of the input, not NUL-terminated. */
typedef struct span {
    const char *p; /* borrowed */
    size_t n;
} span_t;

/* The components of a URI reference, split as in RFC 3986 appendix B. */
typedef struct parts {
    span_t scheme, authority, path, query;
    int has_scheme, has_authority, has_query;
} parts_t;

/* What url_parse() extracted from an authority component. */
typedef struct host_info {
    span_t host; /* without brackets */
    int is_ip;
    int is_v6;
    uint16_t port;
} host_info_t;

/* DNS names are at most 253 characters (255 octets on the wire). */
#define URL_HOST_MAX 253

static int is_alpha(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int is_digit(int c)
{
    return c >= '0' && c <= '9';
}

static int is_hex(int c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static char lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

static int fail(const char **msg, const char *why)
{
    if (msg != NULL)
        *msg = why;
    return ERR_INVALID_REQUEST;
}

/* Refuses bytes that may never appear in a URL we accept, wherever they are. */
/* 1 for the bytes a URL may hold as they are (the ASCII ones that are not
 * a control, DEL, space or backslash); the bytes from 0x80 are 0. */
static const unsigned char url_byte_ok[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0,
};

static int check_bytes(const char *s, const char **msg)
{
    const unsigned char *p = (const unsigned char *)s;

    /* The usual URL has no byte to refuse: one table look-up a byte. */
    while (url_byte_ok[*p])
        p++;
    for (; *p != '\0'; p++) {
        if (*p == '\r' || *p == '\n')
            return fail(msg, "CR or LF in URL");
        if (*p == ' ')
            return fail(msg, "space in URL (percent-encode it as %20)");
        if (*p < 0x20 || *p == 0x7f)
            return fail(msg, "control byte in URL");
        if (*p >= 0x80)
            return fail(msg, "non-ASCII byte in URL (percent-encode it)");
        if (*p == '\\')
            return fail(msg, "backslash in URL");
    }
    return 0;
}

/* Every '%' must start an escape of two hex digits. */
static int check_escapes(span_t s, const char **msg)
{
    for (size_t i = 0; i < s.n; i++) {
        if (s.p[i] != '%')
            continue;
        if (i + 2 >= s.n || !is_hex(s.p[i + 1]) || !is_hex(s.p[i + 2]))
            return fail(msg, "malformed percent escape in URL");
        i += 2;
    }
    return 0;
}

static size_t scan_until(const char *s, const char *stops)
{
    return strcspn(s, stops);
}

/* Splits s into scheme, authority, path and query; the fragment is dropped. */
static void split(const char *s, parts_t *pt)
{
    memset(pt, 0, sizeof(*pt));
    if (is_alpha(s[0])) {
        size_t i = 1;
        while (is_alpha(s[i]) || is_digit(s[i]) || s[i] == '+' || s[i] == '-' || s[i] == '.')
            i++;
        if (s[i] == ':') {
            pt->has_scheme = 1;
            pt->scheme = (span_t){s, i};
            s += i + 1;
        }
    }
    if (s[0] == '/' && s[1] == '/') {
        s += 2;
        pt->has_authority = 1;
        pt->authority = (span_t){s, scan_until(s, "/?#")};
        s += pt->authority.n;
    }
    pt->path = (span_t){s, scan_until(s, "?#")};
    s += pt->path.n;
    if (*s == '?') {
        s++;
        pt->has_query = 1;
        pt->query = (span_t){s, scan_until(s, "#")};
    }
}

static int span_eq_nocase(span_t s, const char *lit)
{
    size_t n = strlen(lit);
    if (s.n != n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (lower(s.p[i]) != lit[i])
            return 0;
    }
    return 1;
}

static int scheme_from(span_t s, url_scheme_t *out)
{
    if (span_eq_nocase(s, "http"))
        *out = URL_HTTP;
    else if (span_eq_nocase(s, "https"))
        *out = URL_HTTPS;
    else
        return -1;
    return 0;
}

static uint16_t default_port(url_scheme_t s)
{
    return s == URL_HTTPS ? 443 : 80;
}

/* Parses the text after ':' in an authority. Empty means the default port. */
static int parse_port(span_t s, url_scheme_t scheme, uint16_t *port, const char **msg)
{
    unsigned long v = 0;
    if (s.n == 0) {
        *port = default_port(scheme);
        return 0;
    }
    for (size_t i = 0; i < s.n; i++) {
        if (!is_digit(s.p[i]))
            return fail(msg, "invalid port (digits only)");
        v = v * 10 + (unsigned long)(s.p[i] - '0');
        if (v > 65535)
            return fail(msg, "port out of range (1-65535)");
    }
    if (v == 0)
        return fail(msg, "port out of range (1-65535)");
    *port = (uint16_t)v;
    return 0;
}

static int parse_ipv6(span_t s, const char **msg)
{
    char buf[64];
    unsigned char addr[16];
    if (memchr(s.p, '%', s.n) != NULL)
        return fail(msg, "IPv6 zone identifiers are not supported");
    if (s.n == 0 || s.n >= sizeof(buf))
        return fail(msg, "invalid IPv6 address");
    memcpy(buf, s.p, s.n);
    buf[s.n] = '\0';
    if (uv_inet_pton(AF_INET6, buf, addr) != 0)
        return fail(msg, "invalid IPv6 address");
    return 0;
}

/* The last label (ignoring one trailing dot) of a host that getaddrinfo()
 * would read as a number: all digits, or "0x" and hex digits. Such hosts are
 * IPv4 addresses in a non-standard form ("127.1", "0x7f000001") and refused. */
static int ends_in_number(span_t h)
{
    size_t end = h.n, start;
    if (end > 0 && h.p[end - 1] == '.')
        end--;
    start = end;
    while (start > 0 && h.p[start - 1] != '.')
        start--;
    if (start == end)
        return 0;
    if (end - start >= 2 && h.p[start] == '0' && lower(h.p[start + 1]) == 'x') {
        for (size_t i = start + 2; i < end; i++) {
            if (!is_hex(h.p[i]))
                return 0;
        }
        return 1;
    }
    for (size_t i = start; i < end; i++) {
        if (!is_digit(h.p[i]))
            return 0;
    }
    return 1;
}

/* A reg-name (letters, digits, '-', '.', '_') or a dotted-quad IPv4 address. */
/* 1 when h is four decimal numbers 0-255 joined by dots, none with a
 * leading zero: an address inet_pton(AF_INET) accepts, found without it
 * (0 does not mean invalid: the caller asks inet_pton then). */
static int dotted_quad(span_t h)
{
    unsigned parts = 0, v = 0, digits = 0;

    for (size_t i = 0; i <= h.n; i++) {
        char c = i < h.n ? h.p[i] : '.';
        if (is_digit(c)) {
            if (digits > 0 && v == 0)
                return 0; /* a leading zero */
            v = v * 10 + (unsigned)(c - '0');
            if (++digits > 3 || v > 255)
                return 0;
        } else if (c == '.' && digits > 0 && ++parts <= 4) {
            v = 0;
            digits = 0;
        } else {
            return 0;
        }
    }
    return parts == 4;
}

static int parse_regname(span_t h, host_info_t *hi, const char **msg)
{
    char buf[16];
    unsigned char addr[4];
    if (h.n == 0)
        return fail(msg, "missing host");
    if (h.n > URL_HOST_MAX)
        return fail(msg, "host name too long");
    for (size_t i = 0; i < h.n; i++) {
        char c = h.p[i];
        if (!is_alpha(c) && !is_digit(c) && c != '-' && c != '.' && c != '_')
            return fail(msg, "invalid character in host");
    }
    if (!ends_in_number(h))
        return 0;
    if (h.n >= sizeof(buf))
        return fail(msg, "invalid IPv4 address");
    if (!dotted_quad(h)) {
        /* Not the plain form: inet_pton has the last word, as before. */
        memcpy(buf, h.p, h.n);
        buf[h.n] = '\0';
        if (uv_inet_pton(AF_INET, buf, addr) != 0)
            return fail(msg, "invalid IPv4 address");
    }
    hi->is_ip = 1;
    return 0;
}

static int parse_authority(span_t a, url_scheme_t scheme, host_info_t *hi, const char **msg)
{
    span_t rest = {a.p + a.n, 0};
    memset(hi, 0, sizeof(*hi));
    if (memchr(a.p, '@', a.n) != NULL)
        return fail(msg, "credentials in URLs are not supported");
    if (a.n == 0)
        return fail(msg, "missing host");
    if (a.p[0] == '[') {
        const char *close = memchr(a.p, ']', a.n);
        if (close == NULL)
            return fail(msg, "missing ']' after IPv6 address");
        hi->host = (span_t){a.p + 1, (size_t)(close - a.p - 1)};
        rest = (span_t){close + 1, (size_t)(a.p + a.n - close - 1)};
        if (rest.n > 0 && rest.p[0] != ':')
            return fail(msg, "unexpected character after IPv6 address");
        if (parse_ipv6(hi->host, msg) != 0)
            return ERR_INVALID_REQUEST;
        hi->is_ip = hi->is_v6 = 1;
    } else {
        const char *colon = memchr(a.p, ':', a.n);
        hi->host = (span_t){a.p, colon ? (size_t)(colon - a.p) : a.n};
        rest = (span_t){a.p + hi->host.n, a.n - hi->host.n};
        if (parse_regname(hi->host, hi, msg) != 0)
            return ERR_INVALID_REQUEST;
    }
    if (rest.n > 0) {
        rest.p++;
        rest.n--;
    }
    return parse_port(rest, scheme, &hi->port, msg);
}

/* Appends n bytes at *pos and returns the start of what was written. */
static char *put(char **pos, const char *p, size_t n)
{
    char *start = *pos;
    memcpy(*pos, p, n);
    *pos += n;
    return start;
}

static void put_lower(char **pos, span_t s)
{
    for (size_t i = 0; i < s.n; i++)
        *(*pos)++ = lower(s.p[i]);
}

/* Writes host[:port] (brackets for IPv6, the default port left out). */
static void put_authority(char **pos, const host_info_t *hi, url_scheme_t scheme)
{
    char port[1 + FMT_U64_MAX];
    if (hi->is_v6)
        put(pos, "[", 1);
    put_lower(pos, hi->host);
    if (hi->is_v6)
        put(pos, "]", 1);
    if (hi->port != default_port(scheme)) {
        port[0] = ':';
        put(pos, port, 1 + fmt_u64(port + 1, hi->port));
    }
}

static void put_target(char **pos, const parts_t *pt)
{
    if (pt->path.n == 0)
        put(pos, "/", 1);
    else
        put(pos, pt->path.p, pt->path.n);
    if (pt->has_query) {
        put(pos, "?", 1);
        put(pos, pt->query.p, pt->query.n);
    }
}

/* Builds u's block from validated parts (see the layout at the top). */
static int build(url_t *u, url_scheme_t scheme, const host_info_t *hi, const parts_t *pt,
                 char *room, size_t room_size)
{
    const char *name = url_scheme_name(scheme);
    size_t auth_max = hi->host.n + 2 + 6;
    size_t target_max = 1 + pt->path.n + 1 + pt->query.n;
    size_t href_max = strlen(name) + 3 + auth_max + target_max;
    size_t need = href_max + 1 + hi->host.n + 1 + auth_max + 1;
    int in_room = room != NULL && need <= room_size;
    char *block = in_room ? room : mem_alloc(need);
    char *pos = block, *auth, *target;
    if (block == NULL)
        return ERR_NO_MEMORY;
    /* The authority and target are written once into href, then copied. */
    put(&pos, name, strlen(name));
    put(&pos, "://", 3);
    auth = pos;
    put_authority(&pos, hi, scheme);
    size_t auth_len = (size_t)(pos - auth);
    target = pos;
    put_target(&pos, pt);
    *pos++ = '\0';
    u->host = pos;
    put_lower(&pos, hi->host);
    *pos++ = '\0';
    u->authority = put(&pos, auth, auth_len);
    *pos = '\0';
    u->target = target;
    u->href = block;
    u->in_room = in_room;
    u->scheme = scheme;
    u->port = hi->port;
    u->host_is_ip = hi->is_ip;
    return 0;
}

int url_parse(url_t *u, const char *s, const char **msg)
{
    return url_parse_into(u, s, msg, NULL, 0);
}

int url_parse_into(url_t *u, const char *s, const char **msg, char *room, size_t size)
{
    parts_t pt;
    host_info_t hi;
    url_scheme_t scheme;
    memset(u, 0, sizeof(*u));
    if (s == NULL || s[0] == '\0')
        return fail(msg, "empty URL");
    if (check_bytes(s, msg) != 0)
        return ERR_INVALID_REQUEST;
    split(s, &pt);
    if (!pt.has_scheme)
        return fail(msg, "missing scheme: an absolute http:// or https:// URL is required");
    if (scheme_from(pt.scheme, &scheme) != 0)
        return fail(msg, "unsupported scheme (only http and https)");
    if (!pt.has_authority)
        return fail(msg, "missing \"//\" after the scheme");
    if (parse_authority(pt.authority, scheme, &hi, msg) != 0)
        return ERR_INVALID_REQUEST;
    if (check_escapes(pt.path, msg) != 0 || check_escapes(pt.query, msg) != 0)
        return ERR_INVALID_REQUEST;
    return build(u, scheme, &hi, &pt, room, size);
}

/* Removes the last segment and its preceding '/' (if any) from the output. */
static void pop_segment(const char *p, size_t *out)
{
    while (*out > 0 && p[*out - 1] != '/')
        (*out)--;
    if (*out > 0)
        (*out)--;
}

/* RFC 3986 section 5.2.4, in place: the output never outgrows the input
 * consumed so far, so it can share the buffer. Returns the new length. */
static size_t remove_dot_segments(char *p, size_t n)
{
    size_t in = 0, out = 0;
    while (in < n) {
        const char *s = p + in;
        size_t left = n - in;
        if (left >= 3 && memcmp(s, "../", 3) == 0) {
            in += 3;
        } else if (left >= 2 && memcmp(s, "./", 2) == 0) {
            in += 2;
        } else if (left >= 3 && memcmp(s, "/./", 3) == 0) {
            in += 2;
        } else if (left == 2 && memcmp(s, "/.", 2) == 0) {
            in += 1;
            p[in] = '/';
        } else if (left >= 4 && memcmp(s, "/../", 4) == 0) {
            in += 3;
            pop_segment(p, &out);
        } else if (left == 3 && memcmp(s, "/..", 3) == 0) {
            in += 2;
            p[in] = '/';
            pop_segment(p, &out);
        } else if ((left == 1 && s[0] == '.') || (left == 2 && memcmp(s, "..", 2) == 0)) {
            in = n;
        } else {
            size_t k = s[0] == '/' ? 1 : 0;
            while (k < left && s[k] != '/')
                k++;
            memmove(p + out, s, k);
            out += k;
            in += k;
        }
    }
    return out;
}

/* The base's path: its target up to the query. */
static span_t base_path(const url_t *base)
{
    return (span_t){base->target, strcspn(base->target, "?")};
}

static span_t base_query(const url_t *base, int *has)
{
    const char *q = strchr(base->target, '?');
    *has = q != NULL;
    return q ? (span_t){q + 1, strlen(q + 1)} : (span_t){"", 0};
}

/* Writes the target path of reference r into *pos (RFC 3986 section 5.2.2)
 * and sets the query to use. */
static void put_resolved_path(char **pos, const url_t *base, const parts_t *r, span_t *query,
                              int *has_query)
{
    char *start = *pos;
    *query = r->query;
    *has_query = r->has_query;
    if (r->has_scheme || r->has_authority || (r->path.n > 0 && r->path.p[0] == '/')) {
        put(pos, r->path.p, r->path.n);
    } else if (r->path.n == 0) {
        span_t bp = base_path(base);
        put(pos, bp.p, bp.n);
        if (!r->has_query)
            *query = base_query(base, has_query);
        return;
    } else {
        span_t bp = base_path(base);
        while (bp.n > 0 && bp.p[bp.n - 1] != '/')
            bp.n--;
        put(pos, bp.p, bp.n);
        put(pos, r->path.p, r->path.n);
    }
    *pos = start + remove_dot_segments(start, (size_t)(*pos - start));
}

/* Composes the resolved absolute URL as text, for url_parse() to validate. */
static char *compose(const url_t *base, const parts_t *r)
{
    span_t query;
    int has_query;
    size_t max = r->scheme.n + 5 + 3 + r->authority.n + strlen(base->authority) +
                 strlen(base->target) + r->path.n + 1 + r->query.n + 1;
    char *text = mem_alloc(max), *pos = text;
    if (text == NULL)
        return NULL;
    if (r->has_scheme)
        put(&pos, r->scheme.p, r->scheme.n);
    else
        put(&pos, url_scheme_name(base->scheme), strlen(url_scheme_name(base->scheme)));
    put(&pos, "://", 3);
    if (r->has_authority)
        put(&pos, r->authority.p, r->authority.n);
    else
        put(&pos, base->authority, strlen(base->authority));
    put_resolved_path(&pos, base, r, &query, &has_query);
    if (has_query) {
        put(&pos, "?", 1);
        put(&pos, query.p, query.n);
    }
    *pos = '\0';
    return text;
}

int url_resolve(url_t *out, const url_t *base, const char *ref, const char **msg)
{
    parts_t r;
    url_scheme_t scheme;
    char *text;
    int rc;
    memset(out, 0, sizeof(*out));
    if (ref == NULL)
        return fail(msg, "empty URL");
    if (check_bytes(ref, msg) != 0)
        return ERR_INVALID_REQUEST;
    split(ref, &r);
    if (r.has_scheme && scheme_from(r.scheme, &scheme) != 0)
        return fail(msg, "unsupported scheme (only http and https)");
    if (r.has_scheme && !r.has_authority)
        return fail(msg, "missing \"//\" after the scheme");
    text = compose(base, &r);
    if (text == NULL)
        return ERR_NO_MEMORY;
    rc = url_parse(out, text, msg);
    mem_free(text);
    return rc;
}

void url_dispose(url_t *u)
{
    if (!u->in_room)
        mem_free(u->href);
    memset(u, 0, sizeof(*u));
}

int url_copy(url_t *out, const url_t *u)
{
    size_t href, host, auth;
    char *block;
    memset(out, 0, sizeof(*out));
    if (u->href == NULL)
        return 0;
    href = strlen(u->href) + 1;
    host = strlen(u->host) + 1;
    auth = strlen(u->authority) + 1;
    block = mem_alloc(href + host + auth);
    if (block == NULL)
        return ERR_NO_MEMORY;
    *out = *u;
    out->in_room = 0;
    out->href = memcpy(block, u->href, href);
    out->host = memcpy(block + href, u->host, host);
    out->authority = memcpy(block + href + host, u->authority, auth);
    out->target = block + (u->target - u->href);
    return 0;
}

int url_same_origin(const url_t *a, const url_t *b)
{
    return a->scheme == b->scheme && a->port == b->port && strcmp(a->host, b->host) == 0;
}

const char *url_scheme_name(url_scheme_t s)
{
    return s == URL_HTTPS ? "https" : "http";
}
