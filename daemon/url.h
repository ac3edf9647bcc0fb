/* url — parsing and resolving http(s) URLs.
 *
 * A url_t owns its strings. Parsing is strict: anything malformed, including
 * CR, LF, spaces, other control bytes, bytes >= 0x80, an empty host, a bad
 * port or userinfo, is refused with ERR_INVALID_REQUEST. The fragment is
 * dropped (it is never sent). Scheme and host are lowercased.
 */
#ifndef FETCHD_URL_H
#define FETCHD_URL_H

#include <stdint.h>

typedef enum url_scheme { URL_HTTP, URL_HTTPS } url_scheme_t;

/* The four strings live in one heap block (href first): never free or
 * replace one of them alone; use url_dispose() and url_copy(). */
typedef struct url {
    url_scheme_t scheme;
    char *host;      /* owned; lowercased; IPv6 literals without brackets */
    uint16_t port;   /* explicit or the scheme's default */
    int host_is_ip;  /* 1 for an IPv4 or IPv6 literal */
    char *target;    /* owned; path and query, always starts with '/' */
    char *authority; /* owned; Host header value: host[:port], brackets for IPv6,
                        the port omitted when it is the default */
    char *href;      /* owned; the normalised absolute URL, without fragment */
    int in_room;     /* the strings lie in the caller's room (url_parse_into()): not freed */
} url_t;

/* Parses the absolute URL s into u. Returns 0, ERR_INVALID_REQUEST (u left
 * zeroed) or ERR_NO_MEMORY. When msg is not NULL it receives a static string
 * naming what is wrong ("control byte in URL", "unsupported scheme", ...). */
int url_parse(url_t *u, const char *s, const char **msg);

/* url_parse(), with the strings placed in room (size bytes, borrowed: it
 * must outlive u) when they fit, else in a block of their own as
 * url_parse() does; a URL in the room costs no allocation. */
int url_parse_into(url_t *u, const char *s, const char **msg, char *room, size_t size);

/* Resolves ref (a Location header value: absolute, scheme-relative,
 * absolute-path or relative-path reference, RFC 3986 section 5) against base
 * into out. Same returns as url_parse(). */
int url_resolve(url_t *out, const url_t *base, const char *ref, const char **msg);

/* Releases u's strings and zeroes it. Safe on a zeroed url_t. */
void url_dispose(url_t *u);

/* Makes out an independent copy of u. Returns 0 or ERR_NO_MEMORY. */
int url_copy(url_t *out, const url_t *u);

/* 1 when a and b have the same scheme, host and port. */
int url_same_origin(const url_t *a, const url_t *b);

const char *url_scheme_name(url_scheme_t s);

#endif
