/* pool — per-origin keep-alive connection pools with global and per-host
 * connection limits.
 *
 * An origin is (scheme, host, port, verification mode). Jobs check a
 * connection out of their origin: an idle one if there is one, else a new one
 * if the limits allow, else they wait in the origin's FIFO until a
 * connection is returned or a slot frees up. Connections come back with
 * pool_return() only after a complete, well-framed, keep-alive response; any
 * other ending closes them. Idle connections are swept after idle_timeout_ms,
 * and one that becomes readable or is closed by the server while idle is
 * closed at once (conn.c reads idle sockets for that).
 *
 * Ownership: the pool owns its origins; an origin owns its idle connections
 * and borrows its waiters (a pool_wait_t embedded in each caller: the pool
 * never sees a job). An origin lives while it has connections or waiters.
 * Its connections tell it what becomes of them through the hooks it set in
 * their environment (origin.env): pool_return() and pool_detach().
 *
 * Through a proxy the origin's key names the proxy too (its shown form and a
 * hash of its credentials): an HTTP proxy's absolute-form connections are
 * keyed by the proxy alone, so any http origin reuses them; a tunnel (CONNECT
 * or SOCKS5) is keyed by proxy, origin and TLS configuration, and is reused
 * only for its origin. The per-host limit applies to such an origin: to the
 * proxy as a whole for absolute-form requests.
 */
#ifndef FETCHD_POOL_H
#define FETCHD_POOL_H

#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "conn.h"
#include "netacl.h"
#include "proxy.h"
#include "stats.h"
#include "tls.h"
#include "url.h"

typedef struct pool pool_t;
typedef struct origin origin_t;
typedef struct pool_wait pool_wait_t;

/* Hands a waiting caller its connection: c is a new reference (ACTIVE if
 * reused, else CONNECTING and the caller connects it), or NULL when there was
 * no memory for one. The wait is over when this is called. */
typedef void (*pool_connect_cb)(pool_wait_t *w, conn_t *c, int reused);

/* A caller's place in an origin's queue, embedded in the caller (the job),
 * as h2o's h2o_socketpool_connect_request_t. The pool only borrows it. */
struct pool_wait {
    pool_connect_cb cb; /* public: set by pool_connect() */
    void *data;         /* public: the caller's */
    /* private */
    pool_wait_t *next; /* the origin's wait list */
    origin_t *origin;  /* borrowed: the origin it waits at, or NULL */
    int force_new;     /* it must get a new connection, not an idle one */
};

struct origin {
    pool_t *pool; /* borrowed */
    char *key;    /* owned: "scheme://host:port" plus flags */
    url_scheme_t scheme;
    char *host; /* owned */
    uint16_t port;
    int host_is_ip;
    tls_config_t *tls_config; /* owned reference; NULL for http */
    proxy_t *proxy;           /* owned reference: the proxy its connections go through, or NULL */
    conn_env_t env;           /* what its connections borrow (they point at it) */
    unsigned nconns;          /* connections of this origin that are not closing */
    unsigned nidle;
    conn_t *idle;                        /* owned: most recently used first */
    pool_wait_t *waiters, *waiters_tail; /* borrowed: callers waiting for a connection */
    unsigned nwaiting;
    origin_t *hnext;         /* hash chain */
    origin_t *wprev, *wnext; /* pool's list of origins with waiters */
    int in_wait_list;
    int busy;         /* > 0 while the pool walks it: do not free */
    unsigned acl_gen; /* the pool's acl_gen when the origin was made */
};

struct pool {
    uv_loop_t *loop;                      /* borrowed */
    stats_t *stats;                       /* borrowed */
    buf_pool_t *bufs;                     /* borrowed */
    unsigned max_conns;                   /* public: global connection limit */
    unsigned max_per_host;                /* public: per-origin limit */
    uint64_t idle_timeout_ms;             /* public */
    const netacl_t *acl;                  /* public, borrowed: NULL allows all */
    unsigned acl_gen;                     /* public: bumped when acl's rules change */
    dns_t *dns;                           /* public, borrowed: socks5:// resolves with it */
    proxy_conf_t proxies;                 /* public: where proxies come from (proxy.h) */
    unsigned nconns;                      /* read-only: connections not closing */
    unsigned nconnecting, nactive, nidle; /* read-only gauges */
    /* private */
    origin_t **buckets; /* owned */
    size_t nbuckets, norigins;
    origin_t *wait_head, *wait_tail;
    uv_timer_t sweep;
    uv_idle_t kick;
    int kick_active, sweep_active, closing, handles_open;
};

#define POOL_REUSED 1
#define POOL_NEW    2
#define POOL_WAIT   3

/* Returns 0 or ERR_NO_MEMORY. */
int pool_init(pool_t *p, uv_loop_t *loop, stats_t *stats, buf_pool_t *bufs);

/* Closes every idle connection and the pool's handles. Connections still in
 * use and waiters are a bug (asserted): cancel them first. Run the
 * loop afterwards until the handles are closed. */
void pool_close(pool_t *p);

/* Frees what pool_close() could not: call once the loop has closed the
 * pool's handles and every connection. */
void pool_dispose(pool_t *p);

/* Finds a connection for URL u (borrowed; tls is the caller's TLS
 * configuration, used for https only). Returns
 *  - POOL_REUSED with *out an idle connection (a new reference, now ACTIVE);
 *  - POOL_NEW with *out a new CONNECTING connection (a new reference) the
 *    caller must connect;
 *  - POOL_WAIT: w waits (w is borrowed until cb runs or the wait is
 *    cancelled); cb(w, ...) hands it a connection later, from the loop;
 *  - ERR_NO_MEMORY.
 * force_new skips idle connections (a retry after a stale one), also when
 * the caller has to wait. */
int pool_connect(pool_t *p, pool_wait_t *w, const url_t *u, tls_config_t *tls, int force_new,
                 pool_connect_cb cb, void *data, conn_t **out);

/* pool_connect() through the proxy px (borrowed; NULL: direct). An http URL
 * through an HTTP proxy gets a connection of the proxy's absolute-form
 * origin; any other URL through a proxy a tunnel of its own origin. */
int pool_connect_via(pool_t *p, pool_wait_t *w, const url_t *u, tls_config_t *tls, proxy_t *px,
                     int force_new, pool_connect_cb cb, void *data, conn_t **out);

/* Withdraws w from its origin's wait list, if it is there. */
void pool_cancel_connect(pool_wait_t *w);

/* 1 while w waits for a connection. */
int pool_wait_pending(const pool_wait_t *w);

/* Gives back a connection that finished a response and may be reused; the
 * caller's reference is transferred to the pool. A connection opened before
 * the destination rules last changed is closed instead when its peer's
 * address is now forbidden: reuse skips the check made before connecting.
 * The connection calls it through its hooks. */
void pool_return(conn_t *c);

/* The connection is closing (its state still the old one): it leaves its
 * origin and frees its slot; waiters are woken. The connection calls it
 * through its hooks, once. */
void pool_detach(conn_t *c);

/* Hands free slots to waiters if the limits allow (after they were
 * raised). */
void pool_kick(pool_t *p);

/* Closes every idle connection now. */
void pool_close_idle(pool_t *p, stats_close_t reason);

#endif
