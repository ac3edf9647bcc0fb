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
 * and borrows its waiting jobs (each job is owned by the scheduler). An
 * origin lives while it has connections or waiters.
 */
#ifndef FETCHD_POOL_H
#define FETCHD_POOL_H

#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "conn.h"
#include "netacl.h"
#include "stats.h"
#include "tls.h"
#include "url.h"

typedef struct pool pool_t;
typedef struct origin origin_t;
typedef struct job job_t;

struct origin {
    pool_t *pool; /* borrowed */
    char *key;    /* owned: "scheme://host:port" plus flags */
    url_scheme_t scheme;
    char *host; /* owned */
    uint16_t port;
    int host_is_ip;
    tls_config_t *tls_config; /* owned reference; NULL for http */
    conn_env_t env;           /* what its connections borrow (they point at it) */
    unsigned nconns;          /* connections of this origin that are not closing */
    unsigned nidle;
    conn_t *idle;                  /* owned: most recently used first */
    job_t *waiters, *waiters_tail; /* borrowed: jobs waiting for a connection */
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
 * use and waiting jobs are a bug (asserted): cancel the jobs first. Run the
 * loop afterwards until the handles are closed. */
void pool_close(pool_t *p);

/* Frees what pool_close() could not: call once the loop has closed the
 * pool's handles and every connection. */
void pool_dispose(pool_t *p);

/* Finds a connection for j's current URL. Returns
 *  - POOL_REUSED with *out an idle connection (a new reference, now ACTIVE);
 *  - POOL_NEW with *out a new CONNECTING connection (a new reference) the job
 *    must connect;
 *  - POOL_WAIT: j waits; job_on_conn() hands it a connection later;
 *  - ERR_NO_MEMORY.
 * force_new skips idle connections (a retry after a stale one). */
int pool_checkout(pool_t *p, job_t *j, int force_new, conn_t **out);

/* Withdraws j from its origin's wait list, if it is there. */
void pool_cancel_wait(pool_t *p, job_t *j);

/* Hands free slots to waiting jobs if the limits allow (after they were
 * raised). */
void pool_kick(pool_t *p);

/* Closes every idle connection now. */
void pool_close_idle(pool_t *p, stats_close_t reason);

#endif
