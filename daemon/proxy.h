/* proxy — proxy URLs, and which proxy (if any) a URL goes through.
 *
 * A proxy URL is http://[user[:pass]@]host[:port] (an HTTP proxy: plain http
 * URLs go to it as absolute-form requests, https URLs through a CONNECT
 * tunnel), socks5://... (SOCKS5, the origin's name resolved by fetchd) or
 * socks5h://... (SOCKS5, the proxy resolves the name). A URL without a
 * scheme is an HTTP proxy, as in curl. The default port is 1080 for every
 * kind, as in curl. The user name and password are percent-decoded; they
 * never appear in proxy_t's shown form, the only form fetchd prints.
 *
 * The selection rule (proxy_select): a job's own proxy ("" = direct), else
 * the configuration's proxy ("" = direct), else the environment read at
 * start: https_proxy / HTTPS_PROXY for https URLs, http_proxy for http URLs
 * (not HTTP_PROXY: curl ignores it because a CGI program's environment
 * carries the request's Proxy header under that name), then all_proxy /
 * ALL_PROXY. The lower-case name wins when both are set. Then the no_proxy
 * list (the job's, else the configuration's, else no_proxy / NO_PROXY)
 * may send the URL direct, whichever source the proxy came from (as
 * curl's NO_PROXY applies to -x too).
 *
 * no_proxy follows curl: a list separated by commas (or white space); "*"
 * alone matches every host; an entry matches a host equal to it or ending
 * in "." followed by it (a leading dot on the entry is ignored, so
 * ".example.com" and "example.com" both match example.com and
 * www.example.com, never badexample.com); an IP literal or CIDR network
 * (192.168.0.0/16, ::1, [::1]) matches a URL whose host is an address in
 * it. Case does not matter; a port on an entry is ignored.
 *
 * Ownership: a proxy_t is reference counted (proxy_incref/decref); the job
 * that chose it and the pool origin whose connections go through it each
 * hold one. A proxy_conf_t owns the environment's strings and borrows the
 * configuration's.
 */
#ifndef FETCHD_PROXY_H
#define FETCHD_PROXY_H

#include <stddef.h>
#include <stdint.h>

#include "netacl.h"
#include "stats.h"
#include "url.h"

typedef enum proxy_kind { PROXY_HTTP, PROXY_SOCKS5, PROXY_SOCKS5H } proxy_kind_t;

#define PROXY_DEFAULT_PORT 1080

typedef struct proxy {
    unsigned refcnt;
    proxy_kind_t kind; /* read-only */
    char *host;        /* owned: lowercased; an IPv6 literal without brackets */
    uint16_t port;
    int host_is_ip;
    char *user;       /* owned: percent-decoded; NULL without credentials */
    char *pass;       /* owned: percent-decoded; "" when only a user was given */
    char *basic;      /* owned: base64 of "user:pass" for Proxy-Authorization, or NULL */
    char *shown;      /* owned: "kind://host:port", the only form ever printed */
    uint64_t cred_id; /* a hash of the credentials (0: none), for pool keys */
    stats_t *stats;   /* borrowed: the daemon's */
} proxy_t;

/* Parses the proxy URL s. Returns 0 with *out a new reference, or
 * ERR_INVALID_REQUEST with why saying what is wrong (never quoting the
 * credentials), or ERR_NO_MEMORY. */
int proxy_parse(const char *s, stats_t *stats, proxy_t **out, char *why, size_t whylen);

/* Checks s as proxy_parse() would, without keeping anything: 0 or
 * ERR_INVALID_REQUEST with why. "" is valid (it means direct). */
int proxy_validate(const char *s, char *why, size_t whylen);

void proxy_incref(proxy_t *p);
/* Returns 1 when the proxy was freed. */
int proxy_decref(proxy_t *p);

const char *proxy_kind_name(proxy_kind_t k);

/* 1 when host (of a URL, lowercased; IPv6 without brackets) matches the
 * no_proxy list (curl's rules, above). A NULL or empty list matches
 * nothing. */
int proxy_no_proxy_match(const char *list, const char *host);

/* Where proxies come from besides the job. */
typedef struct proxy_conf {
    char *env_http, *env_https, *env_all, *env_no; /* owned: the environment at start */
    const char *env_http_name, *env_https_name, *env_all_name, *env_no_name; /* static */
    const char *cfg_proxy;    /* borrowed from the config: NULL unset, "" direct */
    const char *cfg_no_proxy; /* borrowed from the config: NULL unset */
    stats_t *stats;           /* borrowed */
} proxy_conf_t;

void proxy_conf_init(proxy_conf_t *pc, stats_t *stats);

/* Reads http_proxy, https_proxy/HTTPS_PROXY, all_proxy/ALL_PROXY and
 * no_proxy/NO_PROXY (empty values count as unset). Returns 0 or
 * ERR_NO_MEMORY. */
int proxy_conf_load_env(proxy_conf_t *pc);

void proxy_conf_dispose(proxy_conf_t *pc);

/* Chooses the proxy for URL u. job_proxy and job_no_proxy are the job's
 * fields (NULL when unset). Returns 0 with *out NULL (direct) or a new
 * reference, or ERR_PROXY (a proxy URL from the configuration or the
 * environment is malformed; why names the source) or ERR_NO_MEMORY. */
int proxy_select(const proxy_conf_t *pc, const url_t *u, const char *job_proxy,
                 const char *job_no_proxy, proxy_t **out, char *why, size_t whylen);

/* A URL whose host is an IP literal is checked against the destination
 * rules even through a proxy: 0, or ERR_FORBIDDEN with why. Names are not
 * resolved here (through an HTTP proxy or socks5h the proxy resolves them). */
int proxy_check_literal(const netacl_t *acl, const url_t *u, char *why, size_t whylen);

#endif
