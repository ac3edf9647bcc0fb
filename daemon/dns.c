/* dns — asynchronous name resolution with a small TTL cache; see dns.h.
 *
 * The cache is a fixed hash table (chained) plus an LRU list through the same
 * entries. An entry in the table holds one reference for the cache; while its
 * uv_getaddrinfo() is in flight it holds a second one for the request, so the
 * entry survives being evicted, flushed or disposed until libuv reports back.
 */
#include "dns.h"

#include <assert.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "mem.h"

#define DNS_NBUCKETS         64 /* a power of two: the hash is masked */
#define DNS_DEFAULT_MAX      256
#define DNS_DEFAULT_TTL_OK   60000
#define DNS_DEFAULT_TTL_FAIL 5000
#define DNS_PORTSTR_LEN      sizeof("65535")

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res);

int dns_init(dns_t *d, uv_loop_t *loop, stats_t *stats)
{
    memset(d, 0, sizeof(*d));
    d->loop = loop;
    d->stats = stats;
    d->ttl_ok_ms = DNS_DEFAULT_TTL_OK;
    d->ttl_fail_ms = DNS_DEFAULT_TTL_FAIL;
    d->max_entries = DNS_DEFAULT_MAX;
    d->nbuckets = DNS_NBUCKETS;
    d->buckets = mem_calloc(d->nbuckets, sizeof(*d->buckets));
    if (d->buckets == NULL)
        return ERR_NO_MEMORY;
    return 0;
}

/* FNV-1a over "host\0port", the same bytes the key holds. */
static size_t hash_key(const dns_t *d, const char *host, const char *port)
{
    uint32_t h = 2166136261u;
    for (const char *p = host; *p != '\0'; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    h *= 16777619u; /* the NUL separator */
    for (const char *p = port; *p != '\0'; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return h & (d->nbuckets - 1);
}

static const char *key_port(const dns_entry_t *e)
{
    return e->key + strlen(e->key) + 1;
}

static dns_entry_t *entry_new(dns_t *d, const char *host, const char *port)
{
    dns_entry_t *e = mem_calloc(1, sizeof(*e));
    if (e == NULL)
        return NULL;
    size_t hl = strlen(host), pl = strlen(port);
    e->key = mem_alloc(hl + 1 + pl + 1);
    if (e->key == NULL) {
        mem_free(e);
        return NULL;
    }
    memcpy(e->key, host, hl + 1);
    memcpy(e->key + hl + 1, port, pl + 1);
    e->refcnt = 1;
    e->cache = d;
    stats_obj_created(d->stats, STATS_OBJ_DNS_ENTRY);
    return e;
}

void dns_entry_incref(dns_entry_t *e)
{
    assert(e->refcnt > 0);
    e->refcnt++;
}

int dns_entry_decref(dns_entry_t *e)
{
    assert(e->refcnt > 0);
    if (--e->refcnt > 0)
        return 0;
    assert(!e->pending && e->waiters == NULL);
    stats_obj_destroyed(e->cache->stats, STATS_OBJ_DNS_ENTRY);
    mem_free(e->addrs);
    mem_free(e->key);
    mem_free(e);
    return 1;
}

static void lru_unlink(dns_t *d, dns_entry_t *e)
{
    if (e->lru_prev != NULL)
        e->lru_prev->lru_next = e->lru_next;
    else
        d->lru_head = e->lru_next;
    if (e->lru_next != NULL)
        e->lru_next->lru_prev = e->lru_prev;
    else
        d->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void lru_push_front(dns_t *d, dns_entry_t *e)
{
    e->lru_prev = NULL;
    e->lru_next = d->lru_head;
    if (d->lru_head != NULL)
        d->lru_head->lru_prev = e;
    else
        d->lru_tail = e;
    d->lru_head = e;
}

static dns_entry_t *table_find(dns_t *d, const char *host, const char *port)
{
    dns_entry_t *e = d->buckets[hash_key(d, host, port)];
    while (e != NULL && (strcmp(e->key, host) != 0 || strcmp(key_port(e), port) != 0))
        e = e->hnext;
    return e;
}

static void table_insert(dns_t *d, dns_entry_t *e)
{
    size_t i = hash_key(d, e->key, key_port(e));
    e->hnext = d->buckets[i];
    d->buckets[i] = e;
    lru_push_front(d, e);
    d->nentries++;
}

/* Takes e out of the table and drops the cache's reference; whoever else
 * holds one (a caller, or the lookup in flight) keeps the entry alive. */
static void forget(dns_t *d, dns_entry_t *e)
{
    dns_entry_t **pp = &d->buckets[hash_key(d, e->key, key_port(e))];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    e->hnext = NULL;
    lru_unlink(d, e);
    d->nentries--;
    dns_entry_decref(e);
}

/* Drops least recently used answers until the cache fits; lookups in flight
 * cannot go since their waiters still expect them. */
static void evict(dns_t *d)
{
    dns_entry_t *e = d->lru_tail;
    while (d->nentries > d->max_entries && e != NULL) {
        dns_entry_t *prev = e->lru_prev;
        if (!e->pending)
            forget(d, e);
        e = prev;
    }
}

static void add_waiter(dns_entry_t *e, dns_waiter_t *w)
{
    dns_waiter_t **pp = &e->waiters;
    while (*pp != NULL)
        pp = &(*pp)->next;
    *pp = w;
    w->next = NULL;
    w->entry = e;
}

void dns_cancel(dns_waiter_t *w)
{
    dns_entry_t *e = w->entry;
    if (e == NULL)
        return;
    dns_waiter_t **pp = &e->waiters;
    while (*pp != NULL && *pp != w)
        pp = &(*pp)->next;
    if (*pp == w)
        *pp = w->next;
    w->next = NULL;
    w->entry = NULL;
}

/* Answers an IP literal without the thread pool. Returns 1 when host is not a
 * literal, else 0 (with *out a new, uncached entry) or ERR_NO_MEMORY. */
static int lookup_literal(dns_t *d, const char *host, uint16_t port, dns_entry_t **out)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0)
        return 1;
    dns_entry_t *e = mem_calloc(1, sizeof(*e));
    if (e == NULL)
        return ERR_NO_MEMORY;
    e->addrs = mem_alloc(sizeof(*e->addrs));
    if (e->addrs == NULL) {
        mem_free(e);
        return ERR_NO_MEMORY;
    }
    memcpy(e->addrs, &ss, sizeof(ss));
    e->naddrs = 1;
    e->refcnt = 1;
    e->cache = d;
    stats_obj_created(d->stats, STATS_OBJ_DNS_ENTRY);
    *out = e;
    return 0;
}

static int lookup_start(dns_t *d, const char *host, const char *port, dns_waiter_t *w)
{
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    /* No AI_ADDRCONFIG: on a loopback-only machine it hides every address,
     * and "localhost" must still resolve to ::1 and 127.0.0.1. */
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;

    dns_entry_t *e = entry_new(d, host, port);
    if (e == NULL)
        return ERR_NO_MEMORY;
    /* The port is filled in afterwards, which spares getaddrinfo a service
     * lookup. */
    int rc = uv_getaddrinfo(d->loop, &e->req, on_resolved, host, NULL, &hints);
    if (rc < 0) {
        dns_entry_decref(e);
        return err_from_uv(rc);
    }
    d->lookups++;
    e->pending = 1;
    e->refcnt++; /* the request's reference, dropped in on_resolved() */
    table_insert(d, e);
    add_waiter(e, w);
    evict(d);
    return DNS_PENDING;
}

int dns_lookup(dns_t *d, const char *host, uint16_t port, dns_waiter_t *w, dns_entry_t **out)
{
    char pstr[DNS_PORTSTR_LEN];

    assert(!d->closing);
    *out = NULL;
    w->next = NULL;
    w->entry = NULL;
    int rc = lookup_literal(d, host, port, out);
    if (rc <= 0)
        return rc;

    snprintf(pstr, sizeof(pstr), "%u", (unsigned)port);
    dns_entry_t *e = table_find(d, host, pstr);
    if (e != NULL && !e->pending && uv_now(d->loop) >= e->expires_ms) {
        forget(d, e);
        e = NULL;
    }
    if (e == NULL)
        return lookup_start(d, host, pstr, w);
    if (e->pending) {
        add_waiter(e, w);
        return DNS_PENDING;
    }
    lru_unlink(d, e);
    lru_push_front(d, e);
    d->hits++;
    dns_entry_incref(e);
    *out = e;
    return 0;
}

static void set_error(dns_entry_t *e, int status, const char *why)
{
    e->status = status;
    snprintf(e->errmsg, sizeof(e->errmsg), "%s: %s", e->key, why);
}

static int usable(const struct addrinfo *ai)
{
    return (ai->ai_family == AF_INET && ai->ai_addrlen == sizeof(struct sockaddr_in)) ||
           (ai->ai_family == AF_INET6 && ai->ai_addrlen == sizeof(struct sockaddr_in6));
}

/* Copies getaddrinfo's answer (or its failure) into e. */
static void fill(dns_entry_t *e, int status, const struct addrinfo *res)
{
    if (status == UV_EAI_MEMORY || status == UV_ENOMEM) {
        set_error(e, ERR_NO_MEMORY, uv_strerror(status));
        return;
    }
    if (status < 0) {
        set_error(e, ERR_DNS, uv_strerror(status));
        return;
    }
    size_t n = 0;
    for (const struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next)
        n += usable(ai);
    if (n == 0) {
        set_error(e, ERR_DNS, "no addresses");
        return;
    }
    e->addrs = mem_calloc(n, sizeof(*e->addrs));
    if (e->addrs == NULL) {
        set_error(e, ERR_NO_MEMORY, "out of memory");
        return;
    }
    uint16_t port = htons((uint16_t)strtoul(key_port(e), NULL, 10));
    for (const struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        if (!usable(ai))
            continue;
        struct sockaddr_storage *ss = &e->addrs[e->naddrs++];
        memcpy(ss, ai->ai_addr, ai->ai_addrlen);
        if (ss->ss_family == AF_INET)
            ((struct sockaddr_in *)ss)->sin_port = port;
        else
            ((struct sockaddr_in6 *)ss)->sin6_port = port;
    }
    e->status = 0;
}

/* Calls the waiters one at a time, taking each off the list before its
 * callback runs, so a callback may cancel another waiter or start lookups. */
static void deliver(dns_entry_t *e)
{
    dns_waiter_t *w;
    while ((w = e->waiters) != NULL) {
        e->waiters = w->next;
        w->next = NULL;
        w->entry = NULL;
        dns_cb cb = w->cb;
        dns_entry_incref(e);
        cb(w, e);
    }
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    dns_entry_t *e = (dns_entry_t *)((char *)req - offsetof(dns_entry_t, req));
    dns_t *d = e->cache;

    e->pending = 0;
    if (d->closing) {
        /* dns_dispose() already took the entry out of the table and dropped
         * the cache's reference; the table itself is gone. */
        uv_freeaddrinfo(res);
        dns_entry_decref(e);
        return;
    }
    fill(e, status, res);
    uv_freeaddrinfo(res);
    uint64_t now = uv_now(d->loop);
    if (e->status == 0)
        e->expires_ms = now + d->ttl_ok_ms;
    else if (e->status == ERR_DNS)
        e->expires_ms = now + d->ttl_fail_ms;
    else
        e->expires_ms = now; /* out of memory says nothing about the name */
    deliver(e);
    evict(d);
    dns_entry_decref(e);
}

void dns_flush(dns_t *d)
{
    dns_entry_t *e = d->lru_head;
    while (e != NULL) {
        dns_entry_t *next = e->lru_next;
        if (!e->pending)
            forget(d, e);
        e = next;
    }
}

void dns_dispose(dns_t *d)
{
    d->closing = 1;
    dns_entry_t *e = d->lru_head;
    while (e != NULL) {
        dns_entry_t *next = e->lru_next;
        assert(e->waiters == NULL);
        /* A lookup libuv has not started yet is cancelled (its callback gets
         * UV_EAI_CANCELED); one already running finishes. Either way the
         * callback drops the request's reference and frees the entry. */
        if (e->pending)
            uv_cancel((uv_req_t *)&e->req);
        forget(d, e);
        e = next;
    }
    assert(d->nentries == 0);
    mem_free(d->buckets);
    d->buckets = NULL;
}
