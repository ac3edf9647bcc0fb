/* dns — asynchronous name resolution with a small TTL cache.
 *
 * Lookups run uv_getaddrinfo() on libuv's thread pool. Positive answers are
 * cached for ttl_ok_ms and failures for ttl_fail_ms; concurrent lookups of the
 * same host and port share one uv_getaddrinfo() call. The cache holds at most
 * max_entries entries and evicts the least recently used.
 *
 * Ownership: the cache owns one reference to each cached entry; a caller that
 * is handed an entry owns a new reference and must dns_entry_decref() it. A
 * dns_waiter_t is embedded in the caller's object and borrowed by the cache
 * until its callback runs or dns_cancel() removes it.
 */
#ifndef FETCHD_DNS_H
#define FETCHD_DNS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "stats.h"

typedef struct dns dns_t;
typedef struct dns_entry dns_entry_t;
typedef struct dns_waiter dns_waiter_t;

struct dns_entry {
    unsigned refcnt;
    int status;                     /* read-only: 0, or ERR_DNS / ERR_NO_MEMORY */
    size_t naddrs;                  /* read-only */
    struct sockaddr_storage *addrs; /* owned; in getaddrinfo's order, port set */
    /* private */
    dns_t *cache; /* borrowed */
    char *key;    /* owned: "host\0port" hashed */
    uint64_t expires_ms;
    int pending;
    uv_getaddrinfo_t req;
    dns_waiter_t *waiters; /* borrowed, FIFO */
    dns_entry_t *hnext;    /* hash chain */
    dns_entry_t *lru_prev, *lru_next;
    char errmsg[96]; /* read-only: reason when status != 0 */
};

/* Called once for a dns_lookup() that returned DNS_PENDING, with e a new
 * reference: e->status is 0 with addresses, or an error with e->errmsg saying
 * why. Never called after dns_cancel(w). */
typedef void (*dns_cb)(dns_waiter_t *w, dns_entry_t *e);

struct dns_waiter {
    dns_cb cb;  /* public: set by the caller */
    void *data; /* public: the caller's */
    /* private */
    dns_waiter_t *next;
    dns_entry_t *entry;
};

struct dns {
    uv_loop_t *loop;      /* borrowed */
    stats_t *stats;       /* borrowed */
    uint64_t ttl_ok_ms;   /* public */
    uint64_t ttl_fail_ms; /* public */
    size_t max_entries;   /* public */
    size_t nentries;      /* read-only */
    uint64_t lookups;     /* read-only: uv_getaddrinfo calls made */
    uint64_t hits;        /* read-only: answers served from the cache */
    /* private */
    dns_entry_t **buckets;
    size_t nbuckets;
    dns_entry_t *lru_head, *lru_tail; /* most recent first */
    int closing;
};

#define DNS_PENDING 1

/* Returns 0 or ERR_NO_MEMORY. */
int dns_init(dns_t *d, uv_loop_t *loop, stats_t *stats);

/* Drops every cached entry. Lookups in flight are cancelled; their entries are
 * freed when libuv reports them, so run the loop afterwards. Waiters still
 * registered are a bug (asserted). */
void dns_dispose(dns_t *d);

/* Looks up host:port. Returns:
 *  - 0 with *out a new reference to a cached entry (check its status: a cached
 *    failure is returned this way too);
 *  - DNS_PENDING: w->cb will be called later with the answer;
 *  - ERR_NO_MEMORY: nothing happened and w->cb will not be called.
 * IP literals are answered at once without the thread pool. */
int dns_lookup(dns_t *d, const char *host, uint16_t port, dns_waiter_t *w, dns_entry_t **out);

/* Withdraws a pending waiter; its callback will not run. Safe to call on a
 * waiter that is not registered. */
void dns_cancel(dns_waiter_t *w);

void dns_entry_incref(dns_entry_t *e);
/* Returns 1 when the entry was freed. */
int dns_entry_decref(dns_entry_t *e);

/* Forgets every cached answer (not lookups in flight). */
void dns_flush(dns_t *d);

#endif
