/* pool — per-origin keep-alive pools; see pool.h. */
#include "pool.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

#include "err.h"
#include "fmt.h"
#include "http.h"
#include "mem.h"

#define POOL_INITIAL_BUCKETS 64

static void on_kick(uv_idle_t *h);
static void on_sweep(uv_timer_t *t);
static void on_conn_active(conn_t *c);

/* How a connection of ours tells us what becomes of it. */
static const conn_pool_hooks_t conn_hooks = {
    .on_active = on_conn_active,
    .on_reusable = pool_return,
    .on_closing = pool_detach,
};

static void on_handle_close(uv_handle_t *h)
{
    pool_t *p = h->data;
    p->handles_open--;
}

int pool_init(pool_t *p, uv_loop_t *loop, stats_t *stats, buf_pool_t *bufs)
{
    memset(p, 0, sizeof(*p));
    proxy_conf_init(&p->proxies, stats);
    p->loop = loop;
    p->stats = stats;
    p->bufs = bufs;
    p->max_conns = 256;
    p->max_per_host = 32;
    p->idle_timeout_ms = 30000;
    p->nbuckets = POOL_INITIAL_BUCKETS;
    p->buckets = mem_calloc(p->nbuckets, sizeof(*p->buckets));
    if (p->buckets == NULL)
        return ERR_NO_MEMORY;
    uv_timer_init(loop, &p->sweep);
    uv_idle_init(loop, &p->kick);
    p->sweep.data = p;
    p->kick.data = p;
    p->handles_open = 2;
    return 0;
}

/* ---- origins --------------------------------------------------------------- */

/* The key names the TLS configuration by its id: one per combination of CA
 * file, verification and client certificate. It doubles as the key of the
 * origin's TLS sessions. Forms: "PROXY#CRED" (absolute-form requests to an
 * http proxy), "SCHEME://HOST:PORT#TLS" and that plus " via PROXY#CRED".
 * Written without printf: it is made for every checkout. */
static int format_key(char *out, size_t len, const url_t *u, const tls_config_t *tls,
                      const proxy_t *px)
{
    fmtbuf_t k = {out, 0, len, 0};

    if (len == 0)
        return ERR_INVALID_REQUEST;
    if (px != NULL && px->kind == PROXY_HTTP && u->scheme == URL_HTTP) {
        fmt_str(&k, px->shown);
        fmt_put(&k, "#", 1);
        fmt_hex(&k, px->cred_id);
    } else {
        fmt_str(&k, url_scheme_name(u->scheme));
        fmt_put(&k, "://", 3);
        fmt_str(&k, u->host);
        fmt_put(&k, ":", 1);
        fmt_dec(&k, u->port);
        fmt_put(&k, "#", 1);
        fmt_dec(&k, tls ? tls->id : 0);
        if (px != NULL) {
            fmt_put(&k, " via ", 5);
            fmt_str(&k, px->shown);
            fmt_put(&k, "#", 1);
            fmt_hex(&k, px->cred_id);
        }
    }
    if (k.over)
        return ERR_INVALID_REQUEST;
    out[k.len] = '\0';
    return 0;
}

static void grow_table(pool_t *p)
{
    size_t n = p->nbuckets * 2;
    origin_t **b = mem_calloc(n, sizeof(*b));
    if (b == NULL)
        return; /* longer chains are slower, not wrong */
    for (size_t i = 0; i < p->nbuckets; i++) {
        origin_t *o = p->buckets[i], *next;
        for (; o; o = next) {
            next = o->hnext;
            size_t k = http_hash(o->key) & (n - 1);
            o->hnext = b[k];
            b[k] = o;
        }
    }
    mem_free(p->buckets);
    p->buckets = b;
    p->nbuckets = n;
}

/* An absolute-form origin: its connections go to the proxy itself. */
static int forward_origin(const url_t *u, const proxy_t *px)
{
    return px != NULL && px->kind == PROXY_HTTP && u->scheme == URL_HTTP;
}

static origin_t *origin_get(pool_t *p, const url_t *u, tls_config_t *tls, proxy_t *px)
{
    char key[1024];
    size_t k;
    origin_t *o;
    int fwd = forward_origin(u, px);

    if (format_key(key, sizeof(key), u, tls, px) != 0)
        return NULL;
    k = http_hash(key) & (p->nbuckets - 1);
    for (o = p->buckets[k]; o; o = o->hnext)
        if (strcmp(o->key, key) == 0)
            return o;
    o = mem_calloc(1, sizeof(*o));
    if (o == NULL)
        return NULL;
    o->key = mem_strdup(key);
    o->host = mem_strdup(fwd ? px->host : u->host);
    if (o->key == NULL || o->host == NULL) {
        mem_free(o->key);
        mem_free(o->host);
        mem_free(o);
        return NULL;
    }
    o->pool = p;
    o->scheme = u->scheme;
    o->port = fwd ? px->port : u->port;
    o->host_is_ip = fwd ? px->host_is_ip : u->host_is_ip;
    o->tls_config = tls;
    o->acl_gen = p->acl_gen;
    if (tls)
        tls_config_incref(tls);
    o->proxy = px;
    if (px)
        proxy_incref(px);
    o->env = (conn_env_t){
        .loop = p->loop,
        .stats = p->stats,
        .bufs = p->bufs,
        .host = o->host,
        .port = o->port,
        .host_is_ip = o->host_is_ip,
        .tls_key = o->key,
        .tls_config = o->tls_config,
        .hooks = &conn_hooks,
        .hook_data = o,
        .proxy = px,
        .tunnel = px != NULL && !fwd,
        .dns = p->dns,
        .acl = p->acl,
    };
    o->hnext = p->buckets[k];
    p->buckets[k] = o;
    p->norigins++;
    stats_obj_created(p->stats, STATS_OBJ_ORIGIN);
    if (p->norigins > p->nbuckets)
        grow_table(p);
    return o;
}

/* An origin lives while it has connections or waiters, and not while the
 * kick is walking it. */
static void origin_maybe_free(origin_t *o)
{
    pool_t *p = o->pool;
    origin_t **pp;

    if (o->nconns > 0 || o->nwaiting > 0 || o->busy)
        return;
    assert(o->idle == NULL && !o->in_wait_list);
    for (pp = &p->buckets[http_hash(o->key) & (p->nbuckets - 1)]; *pp != o; pp = &(*pp)->hnext)
        ;
    *pp = o->hnext;
    p->norigins--;
    stats_obj_destroyed(p->stats, STATS_OBJ_ORIGIN);
    if (o->tls_config)
        tls_config_decref(o->tls_config);
    if (o->proxy)
        proxy_decref(o->proxy);
    mem_free(o->key);
    mem_free(o->host);
    mem_free(o);
}

static void wait_list_remove(pool_t *p, origin_t *o)
{
    if (!o->in_wait_list)
        return;
    if (o->wprev)
        o->wprev->wnext = o->wnext;
    else
        p->wait_head = o->wnext;
    if (o->wnext)
        o->wnext->wprev = o->wprev;
    else
        p->wait_tail = o->wprev;
    o->wprev = o->wnext = NULL;
    o->in_wait_list = 0;
}

static void schedule_kick(pool_t *p)
{
    if (!p->kick_active && p->wait_head != NULL && !p->closing) {
        uv_idle_start(&p->kick, on_kick);
        p->kick_active = 1;
    }
}

/* ---- idle lists ------------------------------------------------------------ */

static void idle_unlink(origin_t *o, conn_t *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        o->idle = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    o->nidle--;
}

static conn_t *idle_oldest(origin_t *o)
{
    conn_t *c = o->idle;
    while (c && c->next)
        c = c->next;
    return c;
}

/* Takes the most recently used idle connection: it is the least likely to
 * have been closed by the server. The pool's reference goes to the caller. */
static conn_t *idle_pop(pool_t *p, origin_t *o)
{
    conn_t *c = o->idle;
    idle_unlink(o, c);
    conn_set_active(c);
    p->nidle--;
    p->nactive++;
    p->stats->conn_reuses++;
    return c;
}

static void conn_state(pool_t *p, conn_state_t from, conn_state_t to)
{
    unsigned *g[] = {&p->nconnecting, &p->nactive, &p->nidle, NULL};
    if (from <= CONN_IDLE)
        (*g[from])--;
    if (to <= CONN_IDLE)
        (*g[to])++;
}

/* The connection's hook: it finished connecting. */
static void on_conn_active(conn_t *c)
{
    origin_t *o = c->env->hook_data;
    conn_state(o->pool, CONN_CONNECTING, CONN_ACTIVE);
}

/* ---- limits ---------------------------------------------------------------- */

static origin_t *origin_with_idle(pool_t *p)
{
    /* A saturated pool asks this for every waiter it cannot serve: skip the
     * walk over every bucket when no connection is idle anywhere. */
    if (p->nidle == 0)
        return NULL;
    for (size_t i = 0; i < p->nbuckets; i++)
        for (origin_t *o = p->buckets[i]; o; o = o->hnext)
            if (o->idle)
                return o;
    return NULL;
}

/* Whether o may open one more connection, closing an idle one of this origin
 * (per-host limit) or of another (global limit) to make room if need be. */
static int make_room(pool_t *p, origin_t *o)
{
    if (o->nconns >= p->max_per_host) {
        if (o->idle == NULL)
            return 0;
        conn_close(idle_oldest(o), STATS_CLOSE_POOL_FULL);
    }
    if (p->nconns >= p->max_conns) {
        origin_t *victim = origin_with_idle(p);
        if (victim == NULL)
            return 0;
        conn_close(idle_oldest(victim), STATS_CLOSE_POOL_FULL);
    }
    return o->nconns < p->max_per_host && p->nconns < p->max_conns;
}

static conn_t *open_conn(pool_t *p, origin_t *o)
{
    conn_t *c = conn_create(&o->env);
    if (c == NULL)
        return NULL;
    o->nconns++;
    p->nconns++;
    p->nconnecting++;
    p->stats->conns_opened++;
    return c;
}

/* ---- checkout and return --------------------------------------------------- */

int pool_connect(pool_t *p, pool_wait_t *w, const url_t *u, tls_config_t *tls, int force_new,
                 pool_connect_cb cb, void *data, conn_t **out)
{
    return pool_connect_via(p, w, u, tls, NULL, force_new, cb, data, out);
}

int pool_connect_via(pool_t *p, pool_wait_t *w, const url_t *u, tls_config_t *tls, proxy_t *px,
                     int force_new, pool_connect_cb cb, void *data, conn_t **out)
{
    origin_t *o;

    /* A job that started on https keeps its TLS configuration after an
     * allowed redirect to plain http; that origin must not get it, or its
     * connections would start a TLS handshake with a plain server. */
    if (u->scheme != URL_HTTPS)
        tls = NULL;
    o = origin_get(p, u, tls, px);

    if (o == NULL)
        return ERR_NO_MEMORY;
    if (!force_new && o->idle) {
        *out = idle_pop(p, o);
        return POOL_REUSED;
    }
    /* Jobs already waiting for this origin go first. */
    if (o->nwaiting == 0 && make_room(p, o)) {
        *out = open_conn(p, o);
        if (*out == NULL) {
            origin_maybe_free(o);
            return ERR_NO_MEMORY;
        }
        return POOL_NEW;
    }
    assert(w->origin == NULL);
    w->cb = cb;
    w->data = data;
    w->next = NULL;
    w->force_new = force_new;
    if (o->waiters_tail)
        o->waiters_tail->next = w;
    else
        o->waiters = w;
    o->waiters_tail = w;
    o->nwaiting++;
    w->origin = o;
    if (!o->in_wait_list) {
        o->wprev = p->wait_tail;
        o->wnext = NULL;
        if (p->wait_tail)
            p->wait_tail->wnext = o;
        else
            p->wait_head = o;
        p->wait_tail = o;
        o->in_wait_list = 1;
    }
    schedule_kick(p);
    return POOL_WAIT;
}

static pool_wait_t *waiter_pop(pool_t *p, origin_t *o)
{
    pool_wait_t *w = o->waiters;
    o->waiters = w->next;
    if (o->waiters == NULL) {
        o->waiters_tail = NULL;
        wait_list_remove(p, o);
    }
    o->nwaiting--;
    w->next = NULL;
    w->origin = NULL;
    return w;
}

int pool_wait_pending(const pool_wait_t *w)
{
    return w->origin != NULL;
}

void pool_cancel_connect(pool_wait_t *w)
{
    origin_t *o = w->origin;
    pool_wait_t **pp, *prev = NULL;
    pool_t *p;

    if (o == NULL)
        return;
    p = o->pool;
    for (pp = &o->waiters; *pp && *pp != w; pp = &(*pp)->next)
        prev = *pp;
    assert(*pp == w);
    *pp = w->next;
    if (o->waiters_tail == w)
        o->waiters_tail = prev;
    o->nwaiting--;
    w->next = NULL;
    w->origin = NULL;
    if (o->waiters == NULL)
        wait_list_remove(p, o);
    origin_maybe_free(o);
}

static void start_sweep(pool_t *p)
{
    uint64_t every = p->idle_timeout_ms / 4;
    if (p->sweep_active || p->closing)
        return;
    if (every < 10)
        every = 10;
    if (every > 1000)
        every = 1000;
    uv_timer_start(&p->sweep, on_sweep, every, every);
    p->sweep_active = 1;
}

/* Whether c's peer may still be talked to under the current rules. */
static int peer_allowed(pool_t *p, conn_t *c)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    char why[128];

    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0)
        return 0;
    return netacl_check(p->acl, (struct sockaddr *)&ss, why, sizeof(why)) == 0;
}

void pool_return(conn_t *c)
{
    origin_t *o = c->env->hook_data;
    pool_t *p = o->pool;

    assert(c->state == CONN_ACTIVE && c->user == NULL);
    if (p->closing) {
        conn_close(c, STATS_CLOSE_SHUTDOWN);
        conn_decref(c);
        return;
    }
    if (o->acl_gen != p->acl_gen && !peer_allowed(p, c)) {
        conn_close(c, STATS_CLOSE_NOT_REUSABLE);
        conn_decref(c);
        return;
    }
    conn_set_idle(c, uv_now(p->loop));
    p->nactive--;
    p->nidle++;
    c->prev = NULL;
    c->next = o->idle;
    if (o->idle)
        o->idle->prev = c;
    o->idle = c;
    o->nidle++;
    start_sweep(p);
    /* Waiters of this origin can take it; waiters elsewhere, held back by
     * the global limit, can have it closed to make room. */
    schedule_kick(p);
}

void pool_detach(conn_t *c)
{
    origin_t *o = c->env->hook_data;
    pool_t *p = o->pool;

    if (c->state == CONN_IDLE) {
        idle_unlink(o, c);
        conn_decref(c); /* the pool's reference; the caller holds another */
    }
    conn_state(p, c->state, CONN_CLOSING);
    o->nconns--;
    p->nconns--;
    schedule_kick(p);
    origin_maybe_free(o);
}

/* Hands the waiters of o their origin's idle connections and, when open is
 * set, new connections as far as the limits allow. Returns how many waiting
 * callers got a connection. */
static unsigned serve_waiters(pool_t *p, origin_t *o, int open)
{
    unsigned served = 0;
    while (o->waiters) {
        /* A waiter that met a dead reused connection gets a new one (an idle
         * one of its origin is closed to make room if need be). */
        int reused = o->idle != NULL && !o->waiters->force_new;
        conn_t *c;
        if (reused) {
            c = idle_pop(p, o);
        } else {
            if (!open || !make_room(p, o))
                break;
            c = open_conn(p, o);
        }
        /* Copy the callback out of the wait before calling it: the wait is
         * over, and its owner may reuse it from the callback. */
        {
            pool_wait_t *w = waiter_pop(p, o);
            pool_connect_cb cb = w->cb;
            cb(w, c, reused);
        }
        served++;
    }
    return served;
}

/* One walk over the origins with waiters. Callbacks may add or remove
 * waiting origins as we go; the budget keeps the walk finite whatever they
 * do, and *unfinished says it ran out. Returns how many waiters got a
 * connection. */
static unsigned walk_waiters(pool_t *p, int open, int *unfinished)
{
    origin_t *o = p->wait_head;
    size_t budget = 2 * p->norigins + 16;
    unsigned served = 0;

    while (o && budget-- > 0) {
        origin_t *next;
        o->busy++;
        served += serve_waiters(p, o, open);
        o->busy--;
        next = o->in_wait_list ? o->wnext : p->wait_head;
        origin_maybe_free(o);
        o = next;
    }
    *unfinished |= o != NULL;
    return served;
}

/* Hands idle connections and free slots to waiters. It runs from an
 * idle handle rather than inside pool_return() so a caller never starts a
 * request on a connection whose read callback is still on the stack. Each
 * origin's own idle connections go to its waiters first; only then may an
 * idle connection of one origin be closed to make room for another. */
static void on_kick(uv_idle_t *h)
{
    pool_t *p = h->data;
    int unfinished = 0;
    unsigned served;

    uv_idle_stop(&p->kick);
    p->kick_active = 0;
    served = walk_waiters(p, 0, &unfinished);
    served += walk_waiters(p, 1, &unfinished);
    /* Out of budget with work done: go on next turn. Without progress the
     * waiters wait for a connection to come back, which kicks us again. */
    if (unfinished && served > 0)
        schedule_kick(p);
}

static void close_idle_of(origin_t *o, stats_close_t reason, uint64_t older_than, uint64_t now)
{
    conn_t *c = idle_oldest(o);
    while (c) {
        conn_t *prev = c->prev;
        if (now - c->idle_since < older_than)
            break;
        conn_close(c, reason);
        c = prev;
    }
}

static void close_idle(pool_t *p, stats_close_t reason, uint64_t older_than)
{
    uint64_t now = uv_now(p->loop);
    for (size_t i = 0; i < p->nbuckets; i++) {
        origin_t *o = p->buckets[i], *next;
        for (; o; o = next) {
            next = o->hnext;
            o->busy++;
            close_idle_of(o, reason, older_than, now);
            o->busy--;
            origin_maybe_free(o);
        }
    }
}

static void on_sweep(uv_timer_t *t)
{
    pool_t *p = t->data;
    close_idle(p, STATS_CLOSE_IDLE_TIMEOUT, p->idle_timeout_ms);
    if (p->nidle == 0) {
        uv_timer_stop(&p->sweep);
        p->sweep_active = 0;
    }
}

void pool_kick(pool_t *p)
{
    schedule_kick(p);
}

void pool_close_idle(pool_t *p, stats_close_t reason)
{
    close_idle(p, reason, 0);
}

void pool_close(pool_t *p)
{
    if (p->closing)
        return;
    pool_close_idle(p, STATS_CLOSE_SHUTDOWN);
    p->closing = 1;
    assert(p->wait_head == NULL);
    uv_close((uv_handle_t *)&p->sweep, on_handle_close);
    uv_close((uv_handle_t *)&p->kick, on_handle_close);
}

void pool_dispose(pool_t *p)
{
    assert(p->norigins == 0 && p->handles_open == 0);
    proxy_conf_dispose(&p->proxies);
    mem_free(p->buckets);
    p->buckets = NULL;
}
