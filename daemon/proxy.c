/* proxy — proxy URLs and the selection rule; see proxy.h. */
#include "proxy.h"

#include <arpa/inet.h>
#include <assert.h>
#include <ctype.h>
#include <mbedtls/base64.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "err.h"
#include "http.h"
#include "mem.h"

/* RFC 1929 carries the user name and the password in one byte of length. */
#define PROXY_MAX_CRED 255

const char *proxy_kind_name(proxy_kind_t k)
{
    switch (k) {
    case PROXY_SOCKS5:
        return "socks5";
    case PROXY_SOCKS5H:
        return "socks5h";
    default:
        return "http";
    }
}

/* ---- parsing ---------------------------------------------------------------- */

/* The pieces of a proxy URL, pointing into the text. */
typedef struct parsed {
    proxy_kind_t kind;
    const char *user, *pass, *host;
    size_t user_len, pass_len, host_len;
    int has_user, has_pass, bracketed;
    uint16_t port;
} parsed_t;

static int fail(char *why, size_t len, const char *msg)
{
    snprintf(why, len, "%s", msg);
    return ERR_INVALID_REQUEST;
}

static int parse_scheme(const char **pp, parsed_t *out, char *why, size_t len)
{
    const char *s = *pp, *sep = strstr(s, "://");
    size_t n;

    out->kind = PROXY_HTTP;
    if (sep == NULL)
        return 0; /* no scheme: an HTTP proxy, as curl takes it */
    n = (size_t)(sep - s);
    if (n == 4 && strncasecmp(s, "http", 4) == 0)
        out->kind = PROXY_HTTP;
    else if (n == 6 && strncasecmp(s, "socks5", 6) == 0)
        out->kind = PROXY_SOCKS5;
    else if (n == 7 && strncasecmp(s, "socks5h", 7) == 0)
        out->kind = PROXY_SOCKS5H;
    else {
        snprintf(why, len,
                 "unsupported proxy scheme \"%.*s\" (fetchd speaks http://, socks5:// and "
                 "socks5h:// proxies)",
                 n > 16 ? 16 : (int)n, s);
        return ERR_INVALID_REQUEST;
    }
    *pp = sep + 3;
    return 0;
}

static int parse_port(const char *p, size_t n, uint16_t *port, char *why, size_t len)
{
    unsigned long v = 0;

    if (n == 0 || n > 5)
        return fail(why, len, "invalid proxy port");
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return fail(why, len, "invalid proxy port");
        v = v * 10 + (unsigned long)(p[i] - '0');
    }
    if (v == 0 || v > 65535)
        return fail(why, len, "proxy port out of range");
    *port = (uint16_t)v;
    return 0;
}

static int host_char(char c)
{
    return isalnum((unsigned char)c) || c == '-' || c == '.' || c == '_';
}

/* host[:port] or [v6][:port]. */
static int parse_hostport(const char *p, size_t n, parsed_t *out, char *why, size_t len)
{
    const char *end = p + n, *colon;

    out->port = PROXY_DEFAULT_PORT;
    if (n > 0 && p[0] == '[') {
        const char *close = memchr(p, ']', n);
        if (close == NULL)
            return fail(why, len, "unterminated [ in the proxy host");
        out->host = p + 1;
        out->host_len = (size_t)(close - p - 1);
        out->bracketed = 1;
        for (size_t i = 0; i < out->host_len; i++)
            if (!isxdigit((unsigned char)out->host[i]) && out->host[i] != ':' &&
                out->host[i] != '.')
                return fail(why, len, "invalid IPv6 address in the proxy URL");
        if (close + 1 == end)
            return 0;
        if (close[1] != ':')
            return fail(why, len, "junk after the proxy's IPv6 address");
        return parse_port(close + 2, (size_t)(end - close - 2), &out->port, why, len);
    }
    colon = memchr(p, ':', n);
    out->host = p;
    out->host_len = colon ? (size_t)(colon - p) : n;
    for (size_t i = 0; i < out->host_len; i++)
        if (!host_char(p[i]))
            return fail(why, len, "invalid character in the proxy host");
    if (colon)
        return parse_port(colon + 1, (size_t)(end - colon - 1), &out->port, why, len);
    return 0;
}

static int parse_text(const char *s, parsed_t *out, char *why, size_t len)
{
    const char *auth, *end, *at = NULL;
    int rc;

    memset(out, 0, sizeof(*out));
    for (const char *q = s; *q; q++)
        if ((unsigned char)*q <= 0x20 || (unsigned char)*q >= 0x7f)
            return fail(why, len, "control byte, space or non-ASCII byte in the proxy URL");
    rc = parse_scheme(&s, out, why, len);
    if (rc != 0)
        return rc;
    auth = s;
    end = auth + strcspn(auth, "/?#");
    if (*end != '\0' && strcmp(end, "/") != 0)
        return fail(why, len, "a proxy URL has no path, query or fragment");
    for (const char *q = auth; q < end; q++)
        if (*q == '@')
            at = q;
    if (at != NULL) {
        const char *colon = memchr(auth, ':', (size_t)(at - auth));
        out->has_user = 1;
        out->user = auth;
        out->user_len = colon ? (size_t)(colon - auth) : (size_t)(at - auth);
        if (colon) {
            out->has_pass = 1;
            out->pass = colon + 1;
            out->pass_len = (size_t)(at - colon - 1);
        }
        auth = at + 1;
    }
    rc = parse_hostport(auth, (size_t)(end - auth), out, why, len);
    if (rc != 0)
        return rc;
    if (out->host_len == 0)
        return fail(why, len, "the proxy URL has no host");
    if (out->host_len > 253)
        return fail(why, len, "the proxy host name is too long");
    return 0;
}

/* 1 when the n bytes at s percent-decode to a valid credential: no
 * malformed escape, no NUL, at most PROXY_MAX_CRED bytes. */
static int cred_ok(const char *s, size_t n)
{
    size_t len = 0;

    for (size_t i = 0; i < n; i++, len++) {
        if (s[i] != '%')
            continue;
        if (i + 2 >= n || !isxdigit((unsigned char)s[i + 1]) ||
            !isxdigit((unsigned char)s[i + 2]) || (s[i + 1] == '0' && s[i + 2] == '0'))
            return 0;
        i += 2;
    }
    return len <= PROXY_MAX_CRED;
}

static int check_creds(const parsed_t *pz, char *why, size_t len)
{
    if (!pz->has_user)
        return 0;
    if (!cred_ok(pz->user, pz->user_len))
        return fail(why, len, "malformed or too long user name in the proxy URL");
    if (!cred_ok(pz->pass ? pz->pass : "", pz->pass_len))
        return fail(why, len, "malformed or too long password in the proxy URL");
    return 0;
}

int proxy_validate(const char *s, char *why, size_t whylen)
{
    parsed_t pz;
    int rc;

    if (*s == '\0')
        return 0;
    rc = parse_text(s, &pz, why, whylen);
    return rc == 0 ? check_creds(&pz, why, whylen) : rc;
}

/* Percent-decodes n bytes at src (checked by check_creds()) into dst;
 * returns the decoded length. */
static size_t decode_into(char *dst, const char *src, size_t n)
{
    size_t o = 0;

    for (size_t i = 0; i < n; i++) {
        if (src[i] == '%' && i + 2 < n) {
            char hex[3] = {src[i + 1], src[i + 2], '\0'};
            dst[o++] = (char)strtol(hex, NULL, 16);
            i += 2;
        } else {
            dst[o++] = src[i];
        }
    }
    dst[o] = '\0';
    return o;
}

/* Wipes the credentials (user, pass, the Basic token live in the block). */
static void proxy_free(proxy_t *p)
{
    if (p->user != NULL)
        memset(p->user, 0, (size_t)(p->basic + strlen(p->basic) - p->user));
    mem_free(p);
}

/* Fills the credentials of p (their room follows *at in p's block): decoded,
 * the Basic token, the hash. */
static void set_creds(proxy_t *p, const parsed_t *pz, char *at)
{
    size_t ul, pl, blen = 0;
    char *joined;

    p->user = at;
    ul = decode_into(p->user, pz->user, pz->user_len);
    p->pass = p->user + ul + 1;
    pl = decode_into(p->pass, pz->pass ? pz->pass : "", pz->pass_len);
    joined = p->pass + pl + 1;
    memcpy(joined, p->user, ul);
    joined[ul] = ':';
    memcpy(joined + ul + 1, p->pass, pl + 1);
    p->basic = joined + ul + pl + 2;
    /* The room for basic was sized for the encoding of the raw lengths,
     * which bound the decoded ones. */
    mbedtls_base64_encode((unsigned char *)p->basic, (ul + pl + 3) / 3 * 4 + 1, &blen,
                          (unsigned char *)joined, ul + pl + 1);
    p->basic[blen] = '\0';
    p->cred_id = http_hash(joined) | 1;
    memset(joined, 0, ul + pl + 1);
}

/* One heap block holds the proxy and every string of it: one allocation
 * per proxied request. */
int proxy_parse(const char *s, stats_t *stats, proxy_t **out, char *why, size_t whylen)
{
    parsed_t pz;
    proxy_t *p;
    size_t shown_len, cred_len = 0, size;
    int rc = parse_text(s, &pz, why, whylen);

    if (rc == 0)
        rc = check_creds(&pz, why, whylen);
    if (rc != 0)
        return rc;
    shown_len = pz.host_len + 32;
    if (pz.has_user) /* user, pass, "user:pass", and its base64 */
        cred_len =
            2 * (pz.user_len + pz.pass_len + 2) + (pz.user_len + pz.pass_len + 3) / 3 * 4 + 1;
    size = sizeof(*p) + pz.host_len + 1 + shown_len + cred_len;
    p = mem_calloc(1, size);
    if (p == NULL)
        return ERR_NO_MEMORY;
    p->refcnt = 1;
    p->kind = pz.kind;
    p->port = pz.port;
    p->stats = stats;
    p->host = (char *)(p + 1);
    memcpy(p->host, pz.host, pz.host_len);
    p->shown = p->host + pz.host_len + 1;
    if (pz.has_user)
        set_creds(p, &pz, p->shown + shown_len);
    for (char *c = p->host; *c; c++)
        *c = (char)tolower((unsigned char)*c);
    {
        struct in6_addr a6;
        struct in_addr a4;
        p->host_is_ip =
            inet_pton(AF_INET, p->host, &a4) == 1 || inet_pton(AF_INET6, p->host, &a6) == 1;
        if (pz.bracketed && inet_pton(AF_INET6, p->host, &a6) != 1) {
            proxy_free(p);
            return fail(why, whylen, "invalid IPv6 address in the proxy URL");
        }
    }
    snprintf(p->shown, shown_len, pz.bracketed ? "%s://[%s]:%u" : "%s://%s:%u",
             proxy_kind_name(p->kind), p->host, (unsigned)p->port);
    if (stats)
        stats_obj_created(stats, STATS_OBJ_PROXY);
    *out = p;
    return 0;
}

void proxy_incref(proxy_t *p)
{
    p->refcnt++;
}

int proxy_decref(proxy_t *p)
{
    assert(p->refcnt > 0);
    if (--p->refcnt > 0)
        return 0;
    if (p->stats)
        stats_obj_destroyed(p->stats, STATS_OBJ_PROXY);
    proxy_free(p);
    return 1;
}

/* ---- no_proxy ----------------------------------------------------------------- */

/* Parses an address (v4 or v6) into 16 bytes, v4 mapped. Returns 0 or -1. */
static int addr16(const char *s, uint8_t out[16], int *v4)
{
    struct in_addr a4;

    *v4 = 0;
    if (inet_pton(AF_INET6, s, out) == 1)
        return 0;
    if (inet_pton(AF_INET, s, &a4) != 1)
        return -1;
    memset(out, 0, 10);
    out[10] = out[11] = 0xff;
    memcpy(out + 12, &a4, 4);
    *v4 = 1;
    return 0;
}

/* An IP or CIDR entry (e, NUL-terminated) against the host's address. */
static int match_cidr(char *e, const uint8_t host[16])
{
    uint8_t net[16];
    char *slash = strchr(e, '/');
    long bits;
    int v4;

    if (slash)
        *slash = '\0';
    if (addr16(e, net, &v4) != 0)
        return 0;
    if (slash == NULL) {
        bits = 128;
    } else {
        char *end;
        bits = strtol(slash + 1, &end, 10);
        if (*end != '\0' || bits < 0 || bits > (v4 ? 32 : 128))
            return 0;
        if (v4)
            bits += 96;
    }
    for (long i = 0; i < bits; i++) {
        int bit = 7 - (int)(i % 8);
        if (((net[i / 8] >> bit) & 1) != ((host[i / 8] >> bit) & 1))
            return 0;
    }
    return 1;
}

/* A name entry: host equals it, or ends with "." and it. */
static int match_name(const char *e, const char *host)
{
    size_t el = strlen(e), hl = strlen(host);

    if (el == 0)
        return 0;
    if (hl == el)
        return strcasecmp(e, host) == 0;
    return hl > el && host[hl - el - 1] == '.' && strcasecmp(host + hl - el, e) == 0;
}

/* One entry of the list (n bytes at p) against host. */
static int match_entry(const char *p, size_t n, const char *host, int host_ip,
                       const uint8_t addr[16])
{
    char e[300];

    if (n == 0 || n >= sizeof(e))
        return 0;
    if (n == 1 && p[0] == '*')
        return 1;
    memcpy(e, p, n);
    e[n] = '\0';
    if (e[0] == '[') {
        /* [v6] or [v6]:port */
        char *close = strchr(e, ']');
        if (close == NULL)
            return 0;
        *close = '\0';
        return host_ip && match_cidr(e + 1, addr);
    }
    if (strchr(e, ':') == NULL || strchr(e, ':') == strrchr(e, ':')) {
        /* A name, an IPv4 address or network, maybe with a :port (ignored). */
        char *colon = strchr(e, ':');
        if (colon)
            *colon = '\0';
    }
    if (host_ip) {
        uint8_t probe[16];
        int v4;
        char tmp[300];
        snprintf(tmp, sizeof(tmp), "%s", e);
        if (strchr(tmp, '/'))
            *strchr(tmp, '/') = '\0';
        if (addr16(tmp, probe, &v4) == 0)
            return match_cidr(e, addr);
    }
    while (e[0] == '.')
        memmove(e, e + 1, strlen(e));
    {
        size_t el = strlen(e);
        if (el > 0 && e[el - 1] == '.')
            e[el - 1] = '\0';
    }
    return match_name(e, host);
}

int proxy_no_proxy_match(const char *list, const char *host)
{
    uint8_t addr[16];
    char h[300];
    int v4, host_ip;
    size_t hl;

    if (list == NULL || host == NULL)
        return 0;
    snprintf(h, sizeof(h), "%s", host);
    hl = strlen(h);
    if (hl > 0 && h[hl - 1] == '.')
        h[hl - 1] = '\0';
    host_ip = addr16(h, addr, &v4) == 0;
    for (const char *p = list; *p;) {
        size_t n;
        while (*p == ',' || *p == ' ' || *p == '\t')
            p++;
        n = strcspn(p, ", \t");
        if (match_entry(p, n, h, host_ip, addr))
            return 1;
        p += n;
    }
    return 0;
}

/* ---- selection ---------------------------------------------------------------- */

void proxy_conf_init(proxy_conf_t *pc, stats_t *stats)
{
    memset(pc, 0, sizeof(*pc));
    pc->stats = stats;
}

/* The first set, non-empty variable of the two names; *name says which. */
static int env_pick(const char *lower, const char *upper, char **dst, const char **name)
{
    const char *v = getenv(lower);

    *name = lower;
    if ((v == NULL || *v == '\0') && upper != NULL) {
        v = getenv(upper);
        *name = upper;
    }
    if (v == NULL || *v == '\0')
        return 0;
    *dst = mem_strdup(v);
    return *dst ? 0 : ERR_NO_MEMORY;
}

int proxy_conf_load_env(proxy_conf_t *pc)
{
    /* http_proxy only in lower case, as curl: HTTP_PROXY can be set by a
     * request's "Proxy:" header in a CGI environment. */
    if (env_pick("http_proxy", NULL, &pc->env_http, &pc->env_http_name) != 0 ||
        env_pick("https_proxy", "HTTPS_PROXY", &pc->env_https, &pc->env_https_name) != 0 ||
        env_pick("all_proxy", "ALL_PROXY", &pc->env_all, &pc->env_all_name) != 0 ||
        env_pick("no_proxy", "NO_PROXY", &pc->env_no, &pc->env_no_name) != 0)
        return ERR_NO_MEMORY;
    return 0;
}

void proxy_conf_dispose(proxy_conf_t *pc)
{
    mem_free(pc->env_http);
    mem_free(pc->env_https);
    mem_free(pc->env_all);
    mem_free(pc->env_no);
    memset(pc, 0, sizeof(*pc));
}

int proxy_select(const proxy_conf_t *pc, const url_t *u, const char *job_proxy,
                 const char *job_no_proxy, proxy_t **out, char *why, size_t whylen)
{
    const char *text = NULL, *source = NULL, *no;
    char msg[160];
    int rc;

    *out = NULL;
    if (job_proxy != NULL) {
        text = job_proxy, source = "the job's proxy";
    } else if (pc->cfg_proxy != NULL) {
        text = pc->cfg_proxy, source = "the configuration's proxy";
    } else if (u->scheme == URL_HTTPS && pc->env_https != NULL) {
        text = pc->env_https, source = pc->env_https_name;
    } else if (u->scheme == URL_HTTP && pc->env_http != NULL) {
        text = pc->env_http, source = pc->env_http_name;
    } else if (pc->env_all != NULL) {
        text = pc->env_all, source = pc->env_all_name;
    }
    if (text == NULL || *text == '\0')
        return 0;
    no = job_no_proxy ? job_no_proxy : pc->cfg_no_proxy ? pc->cfg_no_proxy : pc->env_no;
    if (proxy_no_proxy_match(no, u->host))
        return 0;
    rc = proxy_parse(text, pc->stats, out, msg, sizeof(msg));
    if (rc == ERR_INVALID_REQUEST) {
        snprintf(why, whylen, "%s: %s", source, msg);
        return ERR_PROXY;
    }
    if (rc != 0)
        snprintf(why, whylen, "%s", err_str(rc));
    return rc;
}

int proxy_check_literal(const netacl_t *acl, const url_t *u, char *why, size_t whylen)
{
    struct sockaddr_in6 s6;
    struct sockaddr_in s4;

    if (!u->host_is_ip)
        return 0;
    memset(&s4, 0, sizeof(s4));
    memset(&s6, 0, sizeof(s6));
    if (inet_pton(AF_INET, u->host, &s4.sin_addr) == 1) {
        s4.sin_family = AF_INET;
        return netacl_check(acl, (struct sockaddr *)&s4, why, whylen);
    }
    if (inet_pton(AF_INET6, u->host, &s6.sin6_addr) == 1) {
        s6.sin6_family = AF_INET6;
        return netacl_check(acl, (struct sockaddr *)&s6, why, whylen);
    }
    return 0;
}
