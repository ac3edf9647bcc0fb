/* Unit tests for daemon/pool.c with fake waiters, no job: each fetch of the
 * test is a pool_wait_t plus a conn_user_ops_t of its own that asks the pool
 * for a connection, connects it if new, sends one GET and records the
 * response. They run against tiny keep-alive HTTP servers on loopback inside
 * the test, and the pool's figures are checked — reuse, the per-host and
 * global limits (and the idle connection closed to make room), the idle
 * sweep, idle connections the server closes or talks on, cancel_connect, and
 * pool_close_idle(). The daemon struct only provides the loop, stats,
 * buffers, DNS, TLS and the pool; its scheduler runs no job. Every test tears
 * it down and checks that every object and fetchd heap block is gone. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "err.h"
#include "mem.h"
#include "pool.h"
#include "url.h"
#include "test.h"

#define MAX_EVENTS      64
#define LOOP_TIMEOUT_MS 5000
#define LATER_MS        20

static const char response[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
static const char chatter[] = "HTTP/1.1 408 Request Timeout\r\n\r\n";

/* ---- the test server ------------------------------------------------------------
 * Answers every request head with the fixed response and keeps the
 * connection open. A request for /close-later is answered and the
 * connection closed LATER_MS after; /chatter-later sends unsolicited bytes
 * LATER_MS after the response instead. */

typedef struct server server_t;

typedef struct client {
    uv_tcp_t tcp;
    uv_timer_t later; /* the delayed close or chatter */
    server_t *srv;    /* borrowed */
    char req[4096];
    size_t len;
    int chatter; /* what the timer does: 1 send bytes, 0 close */
    int closing, handles_open;
    struct client *prev, *next; /* the server's list */
} client_t;

struct server {
    uv_tcp_t listener;
    int port;
    unsigned accepted, open, requests;
    client_t *clients; /* owned */
};

static void client_unlink(client_t *c)
{
    server_t *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
}

static void on_client_closed(uv_handle_t *h)
{
    client_t *c = h->data;
    if (--c->handles_open > 0)
        return;
    c->srv->open--;
    client_unlink(c);
    free(c);
}

static void client_close(client_t *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    uv_close((uv_handle_t *)&c->tcp, on_client_closed);
    uv_close((uv_handle_t *)&c->later, on_client_closed);
}

static void send_all(client_t *c, const char *data, size_t len)
{
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    /* A few dozen bytes always fit a loopback socket's buffer. */
    CHECK_INT(uv_try_write((uv_stream_t *)&c->tcp, &b, 1), len);
}

static void on_later(uv_timer_t *t)
{
    client_t *c = t->data;
    if (c->chatter)
        send_all(c, chatter, sizeof(chatter) - 1);
    else
        client_close(c);
}

static void answer(client_t *c, const char *head)
{
    c->srv->requests++;
    send_all(c, response, sizeof(response) - 1);
    if (strstr(head, " /close-later ") != NULL) {
        c->chatter = 0;
        uv_timer_start(&c->later, on_later, LATER_MS, 0);
    } else if (strstr(head, " /chatter-later ") != NULL) {
        c->chatter = 1;
        uv_timer_start(&c->later, on_later, LATER_MS, 0);
    }
}

static void on_client_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    client_t *c = h->data;
    (void)hint;
    *b = uv_buf_init(c->req + c->len, (unsigned)(sizeof(c->req) - 1 - c->len));
}

static void on_client_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    client_t *c = st->data;
    char *end;

    (void)b;
    if (n < 0 || c->len + (size_t)n >= sizeof(c->req) - 1) {
        client_close(c);
        return;
    }
    c->len += (size_t)n;
    c->req[c->len] = '\0';
    while ((end = strstr(c->req, "\r\n\r\n")) != NULL) {
        size_t used = (size_t)(end + 4 - c->req);
        *end = '\0';
        answer(c, c->req);
        memmove(c->req, c->req + used, c->len - used + 1);
        c->len -= used;
    }
}

static void on_server_connection(uv_stream_t *listener, int status)
{
    server_t *s = listener->data;
    client_t *c;

    CHECK_INT(status, 0);
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return;
    c->srv = s;
    uv_tcp_init(listener->loop, &c->tcp);
    uv_timer_init(listener->loop, &c->later);
    c->tcp.data = c;
    c->later.data = c;
    c->handles_open = 2;
    c->next = s->clients;
    if (s->clients)
        s->clients->prev = c;
    s->clients = c;
    s->open++;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
        client_close(c);
        return;
    }
    s->accepted++;
    uv_read_start((uv_stream_t *)&c->tcp, on_client_alloc, on_client_read);
}

static void server_start(server_t *s, uv_loop_t *loop)
{
    struct sockaddr_in addr;
    struct sockaddr_storage bound;
    int len = sizeof(bound);

    memset(s, 0, sizeof(*s));
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    uv_ip4_addr("127.0.0.1", 0, &addr);
    CHECK_INT(uv_tcp_bind(&s->listener, (const struct sockaddr *)&addr, 0), 0);
    CHECK_INT(uv_listen((uv_stream_t *)&s->listener, 64, on_server_connection), 0);
    CHECK_INT(uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &len), 0);
    s->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
}

static void server_stop(server_t *s)
{
    client_t *c, *next;
    for (c = s->clients; c; c = next) {
        next = c->next;
        client_close(c);
    }
    uv_close((uv_handle_t *)&s->listener, NULL);
}

/* ---- the daemon fixture ------------------------------------------------------------ */

typedef struct result {
    int done;
    int error;
    int http_status;
    uint64_t bytes;
    unsigned pool_idle; /* the pool's idle count when the fetch finished */
} result_t;

typedef struct fetch fetch_t;

typedef struct fixture {
    daemon_t d;
    fetch_t *fetches[MAX_EVENTS]; /* owned */
    size_t nfetches;
    server_t srv[2];
    result_t results[MAX_EVENTS];
    size_t nfinished;
    unsigned max_nconns; /* the most connections the pool held at once */
    uv_check_t sampler;
    uv_timer_t guard; /* bounds every run of the loop */
    int guard_fired;
    uv_timer_t delay; /* run_for()'s clock */
    int delay_fired;
} fixture_t;

static uint64_t fetchd_blocks(void)
{
    uint64_t blocks, bytes;
    mem_get(MEM_FETCHD, &blocks, &bytes);
    return blocks;
}

static void sample(fixture_t *f)
{
    pool_t *p = &f->d.pool;
    unsigned n = p->nconnecting + p->nactive + p->nidle;
    if (p->nconns > f->max_nconns)
        f->max_nconns = p->nconns;
    if (n > f->max_nconns)
        f->max_nconns = n;
}

static void on_sample(uv_check_t *h)
{
    sample(h->data);
}

/* ---- the fake waiter and user ------------------------------------------------------
 * What a job does with the pool and a connection, and nothing more: wait,
 * connect a new connection, send one GET, record the response. */

struct fetch {
    pool_wait_t wait; /* the pool borrows it while the fetch waits */
    fixture_t *f;     /* borrowed */
    url_t url;        /* owned */
    conn_t *conn;     /* owned reference while attached */
    unsigned refcnt;  /* the connection's references to us */
    char req[256];
    int status, err, finished;
    uint64_t bytes;
};

static void record(fetch_t *x)
{
    fixture_t *f = x->f;
    sample(f);
    x->finished = 1;
    if (x->err != 0)
        fprintf(stderr, "fetch %s: %s\n", x->url.href, err_name(x->err));
    if (f->nfinished < MAX_EVENTS) {
        result_t *r = &f->results[f->nfinished];
        r->done = x->err == 0;
        r->error = x->err;
        r->http_status = x->status;
        r->bytes = x->bytes;
        r->pool_idle = f->d.pool.nidle;
    }
    f->nfinished++;
}

static void x_incref(void *p)
{
    ((fetch_t *)p)->refcnt++;
}

static void x_decref(void *p)
{
    fetch_t *x = p;
    CHECK(x->refcnt > 0);
    x->refcnt--;
}

static void x_detach(void *p)
{
    ((fetch_t *)p)->conn = NULL;
}

static void x_connected(void *p, int err, const char *msg)
{
    fetch_t *x = p;
    uv_buf_t b = uv_buf_init(x->req, (unsigned)strlen(x->req));

    (void)msg;
    if (err != 0) {
        x->err = err;
        record(x);
        return;
    }
    sample(x->f);
    CHECK_INT(conn_send(x->conn, &b, 1, 0), 0);
}

static void x_sent(void *p)
{
    (void)p;
}

static void x_read(void *p)
{
    (void)p;
}

static int x_header(void *p, const char *n, size_t nl, const char *v, size_t vl, conn_why_t *why)
{
    (void)p, (void)n, (void)nl, (void)v, (void)vl, (void)why;
    return 0;
}

static int x_head(void *p, int status, int64_t length, const char *te, conn_why_t *why)
{
    (void)length, (void)te, (void)why;
    ((fetch_t *)p)->status = status;
    return 0;
}

static int x_body(void *p, buf_t *b, const char *at, size_t len, conn_why_t *why)
{
    (void)b, (void)at, (void)why;
    ((fetch_t *)p)->bytes += len;
    return 0;
}

static void x_complete(void *p)
{
    record(p);
}

static void x_error(void *p, int err, const char *msg, int reused, uint64_t got)
{
    fetch_t *x = p;
    (void)msg, (void)reused, (void)got;
    x->err = err;
    record(x);
}

static const conn_user_ops_t fetch_ops = {
    .incref = x_incref,
    .decref = x_decref,
    .on_detach = x_detach,
    .on_connected = x_connected,
    .on_request_sent = x_sent,
    .on_read = x_read,
    .on_header = x_header,
    .on_head = x_head,
    .on_body = x_body,
    .on_complete = x_complete,
    .on_error = x_error,
};

/* The fetch got c (a new reference; NULL: no memory) from the pool. */
static void got_conn(fetch_t *x, conn_t *c, int reused)
{
    dns_entry_t *e = NULL;
    dns_waiter_t w = {0}; /* unused: an address literal resolves at once */

    if (c == NULL) {
        x->err = ERR_NO_MEMORY;
        record(x);
        return;
    }
    conn_attach(c, &fetch_ops, x);
    x->conn = c;
    conn_decref(c); /* the pool's: x->conn holds the one attaching took */
    sample(x->f);
    if (reused) {
        x_connected(x, 0, NULL);
        return;
    }
    CHECK_INT(dns_lookup(&x->f->d.dns, x->url.host, x->url.port, &w, &e), 0);
    if (e == NULL)
        return;
    CHECK_INT(conn_connect(c, e), 0);
    dns_entry_decref(e);
}

static void on_pool_conn(pool_wait_t *w, conn_t *c, int reused)
{
    got_conn(w->data, c, reused);
}

static void fetch_free(fetch_t *x)
{
    CHECK(!pool_wait_pending(&x->wait));
    CHECK(x->conn == NULL);
    CHECK_INT(x->refcnt, 0);
    url_dispose(&x->url);
    free(x);
}

/* Asks the pool for a connection to url with tls (NULL: none); returns the
 * fetch (owned by the fixture). */
static fetch_t *fetch_start(fixture_t *f, const char *url, tls_config_t *tls)
{
    fetch_t *x = calloc(1, sizeof(*x));
    const char *msg = NULL;
    conn_t *c = NULL;
    int rc;

    CHECK(x != NULL && f->nfetches < MAX_EVENTS);
    if (x == NULL || f->nfetches >= MAX_EVENTS) {
        free(x);
        return NULL;
    }
    f->fetches[f->nfetches++] = x;
    x->f = f;
    CHECK_INT(url_parse(&x->url, url, &msg), 0);
    snprintf(x->req, sizeof(x->req), "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", x->url.target,
             x->url.authority);
    rc = pool_connect(&f->d.pool, &x->wait, &x->url, tls, 0, on_pool_conn, x, &c);
    sample(f);
    if (rc == POOL_REUSED || rc == POOL_NEW)
        got_conn(x, c, rc == POOL_REUSED);
    else
        CHECK_INT(rc, POOL_WAIT);
    return x;
}

static void on_timer_flag(uv_timer_t *t)
{
    *(int *)t->data = 1;
}

static void setup_with(fixture_t *f, daemon_config_t *cfg)
{
    char errmsg[256] = "";

    memset(f, 0, sizeof(*f));
    CHECK_INT(fetchd_blocks(), 0);
    CHECK_INT(daemon_init(&f->d, cfg, errmsg, sizeof(errmsg)), 0);
    server_start(&f->srv[0], &f->d.loop);
    server_start(&f->srv[1], &f->d.loop);
    uv_check_init(&f->d.loop, &f->sampler);
    f->sampler.data = f;
    uv_check_start(&f->sampler, on_sample);
    uv_timer_init(&f->d.loop, &f->guard);
    uv_timer_init(&f->d.loop, &f->delay);
    f->guard.data = &f->guard_fired;
    f->delay.data = &f->delay_fired;
}

static void setup(fixture_t *f)
{
    daemon_config_t cfg;

    CHECK_INT(mem_install(), 0);
    daemon_config_init(&cfg);
    setup_with(f, &cfg);
}

static void teardown(fixture_t *f)
{
    for (size_t i = 0; i < f->nfetches; i++)
        fetch_free(f->fetches[i]);
    daemon_close(&f->d);
    server_stop(&f->srv[0]);
    server_stop(&f->srv[1]);
    uv_close((uv_handle_t *)&f->sampler, NULL);
    uv_close((uv_handle_t *)&f->guard, NULL);
    uv_close((uv_handle_t *)&f->delay, NULL);
    CHECK_INT(uv_run(&f->d.loop, UV_RUN_DEFAULT), 0);
    CHECK_INT(f->d.pool.nconns, 0);
    CHECK_INT(f->d.pool.nidle, 0);
    CHECK_INT(f->srv[0].open + f->srv[1].open, 0);
    CHECK_INT(daemon_dispose(&f->d), 0);
    for (int t = 0; t < STATS_OBJ__COUNT; t++) {
        if (f->d.stats.objects[t] != 0)
            fprintf(stderr, "leaked object type %s\n", stats_obj_label(t));
        CHECK_INT(f->d.stats.objects[t], 0);
    }
    CHECK_INT(fetchd_blocks(), 0);
}

/* Runs the loop until f->nfinished reaches n; returns 0 if the guard timer
 * fired first. */
static int run_until_finished(fixture_t *f, size_t n)
{
    f->guard_fired = 0;
    uv_timer_start(&f->guard, on_timer_flag, LOOP_TIMEOUT_MS, 0);
    while (f->nfinished < n && !f->guard_fired)
        uv_run(&f->d.loop, UV_RUN_ONCE);
    uv_timer_stop(&f->guard);
    if (f->nfinished < n)
        fprintf(stderr, "timed out: %zu of %zu fetches finished\n", f->nfinished, n);
    return f->nfinished >= n;
}

/* Runs the loop until the servers hold no connection (bounded). */
static int run_until_servers_idle(fixture_t *f)
{
    f->guard_fired = 0;
    uv_timer_start(&f->guard, on_timer_flag, LOOP_TIMEOUT_MS, 0);
    while (f->srv[0].open + f->srv[1].open > 0 && !f->guard_fired)
        uv_run(&f->d.loop, UV_RUN_ONCE);
    uv_timer_stop(&f->guard);
    return f->srv[0].open + f->srv[1].open == 0;
}

/* Runs the loop for about ms milliseconds of loop time. */
static void run_for(fixture_t *f, uint64_t ms)
{
    f->delay_fired = 0;
    uv_timer_start(&f->delay, on_timer_flag, ms, 0);
    while (!f->delay_fired)
        uv_run(&f->d.loop, UV_RUN_ONCE);
}

static fetch_t *submit(fixture_t *f, int server, const char *path)
{
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", f->srv[server].port, path);
    return fetch_start(f, url, NULL);
}

/* Every finished fetch got the server's response. */
static void check_all_ok(const fixture_t *f)
{
    for (size_t i = 0; i < f->nfinished && i < MAX_EVENTS; i++) {
        CHECK_INT(f->results[i].done, 1);
        CHECK_INT(f->results[i].error, 0);
        CHECK_INT(f->results[i].http_status, 200);
        CHECK_INT(f->results[i].bytes, 2);
    }
}

/* ---- tests ------------------------------------------------------------------------- */

static void test_sequential_reuse(void)
{
    enum { N = 4 };
    fixture_t f;

    setup(&f);
    for (size_t i = 0; i < N; i++) {
        submit(&f, 0, "/seq");
        CHECK(run_until_finished(&f, i + 1));
        CHECK_INT(f.d.pool.nidle, 1);
    }
    check_all_ok(&f);
    CHECK_INT(f.d.stats.conns_opened, 1);
    CHECK_INT(f.d.stats.conn_reuses, N - 1);
    CHECK_INT(f.d.pool.nidle, 1);
    CHECK_INT(f.d.pool.nconns, 1);
    CHECK_INT(f.d.pool.nactive + f.d.pool.nconnecting, 0);
    CHECK_INT(f.srv[0].accepted, 1);
    CHECK_INT(f.srv[0].requests, N);
    teardown(&f);
}

static void test_per_host_limit(void)
{
    enum { N = 10 };
    fixture_t f;

    setup(&f);
    f.d.pool.max_per_host = 2;
    for (int i = 0; i < N; i++)
        submit(&f, 0, "/limited");
    CHECK(run_until_finished(&f, N));
    check_all_ok(&f);
    CHECK(f.d.stats.conns_opened >= 1);
    CHECK(f.d.stats.conns_opened <= 2);
    CHECK(f.max_nconns <= 2);
    CHECK(f.srv[0].accepted <= 2);
    CHECK_INT(f.d.stats.conn_reuses, N - f.d.stats.conns_opened);
    CHECK_INT(f.srv[0].requests, N);
    CHECK_INT(f.d.pool.nidle, f.d.stats.conns_opened);
    teardown(&f);
}

static void test_global_limit(void)
{
    enum { N = 6 };
    fixture_t f;

    setup(&f);
    f.d.pool.max_conns = 3;
    f.d.pool.max_per_host = 3;
    for (int i = 0; i < N; i++) {
        submit(&f, 0, "/a");
        submit(&f, 1, "/b");
    }
    CHECK(run_until_finished(&f, 2 * N));
    check_all_ok(&f);
    CHECK(f.max_nconns <= 3);
    CHECK(f.d.pool.nconns <= 3);
    CHECK_INT(f.srv[0].requests, N);
    CHECK_INT(f.srv[1].requests, N);
    CHECK_INT(f.d.stats.conn_reuses + f.d.stats.conns_opened, 2 * N);
    teardown(&f);
}

static void test_global_limit_closes_idle(void)
{
    fixture_t f;

    setup(&f);
    f.d.pool.max_conns = 3;
    f.d.pool.max_per_host = 3;
    /* Three fetches started together each open a connection to A. */
    for (int i = 0; i < 3; i++)
        submit(&f, 0, "/a");
    CHECK(run_until_finished(&f, 3));
    CHECK_INT(f.d.stats.conns_opened, 3);
    CHECK_INT(f.d.pool.nidle, 3);
    CHECK_INT(f.d.stats.conns_closed[STATS_CLOSE_POOL_FULL], 0);
    /* A holds every slot, all idle: B gets one by closing A's oldest. */
    submit(&f, 1, "/b");
    CHECK(run_until_finished(&f, 4));
    check_all_ok(&f);
    CHECK_INT(f.d.stats.conns_closed[STATS_CLOSE_POOL_FULL], 1);
    CHECK_INT(f.d.stats.conns_opened, 4);
    CHECK(f.max_nconns <= 3);
    CHECK_INT(f.d.pool.nconns, 3);
    CHECK_INT(f.d.pool.nidle, 3);
    CHECK_INT(f.srv[1].accepted, 1);
    teardown(&f);
}

static void test_idle_sweep(void)
{
    fixture_t f;
    daemon_config_t cfg;

    CHECK_INT(mem_install(), 0);
    daemon_config_init(&cfg);
    cfg.idle_timeout_ms = 50;
    setup_with(&f, &cfg);
    CHECK_INT(f.d.pool.idle_timeout_ms, 50);
    submit(&f, 0, "/sweep");
    CHECK(run_until_finished(&f, 1));
    check_all_ok(&f);
    CHECK_INT(f.results[0].pool_idle, 1);
    run_for(&f, 300);
    CHECK_INT(f.d.pool.nidle, 0);
    CHECK_INT(f.d.pool.nconns, 0);
    CHECK_INT(f.d.stats.conns_closed[STATS_CLOSE_IDLE_TIMEOUT], 1);
    CHECK_INT(f.d.stats.objects[STATS_OBJ_CONN], 0);
    CHECK_INT(f.d.stats.objects[STATS_OBJ_ORIGIN], 0);
    CHECK(run_until_servers_idle(&f));
    teardown(&f);
}

/* An idle connection the server closes, or talks on, leaves the pool at
 * once (long before the idle timeout), and the next fetch opens a new one. */
static void check_peer_discard(const char *path)
{
    fixture_t f;

    setup(&f);
    CHECK_INT(f.d.pool.idle_timeout_ms, 30000);
    submit(&f, 0, path);
    CHECK(run_until_finished(&f, 1));
    CHECK_INT(f.results[0].pool_idle, 1);
    run_for(&f, 200);
    CHECK_INT(f.d.pool.nidle, 0);
    CHECK_INT(f.d.pool.nconns, 0);
    CHECK_INT(f.d.stats.conns_closed[STATS_CLOSE_PEER_CLOSED], 1);
    CHECK_INT(f.d.stats.conns_closed[STATS_CLOSE_IDLE_TIMEOUT], 0);
    CHECK_INT(f.d.stats.objects[STATS_OBJ_CONN], 0);
    submit(&f, 0, "/after");
    CHECK(run_until_finished(&f, 2));
    check_all_ok(&f);
    CHECK_INT(f.d.stats.conns_opened, 2);
    CHECK_INT(f.d.stats.conn_reuses, 0);
    CHECK_INT(f.srv[0].accepted, 2);
    teardown(&f);
}

static void test_peer_closes_idle(void)
{
    check_peer_discard("/close-later");
}

static void test_peer_talks_on_idle(void)
{
    check_peer_discard("/chatter-later");
}

static void test_close_idle(void)
{
    fixture_t f;
    uint64_t opened;

    setup(&f);
    f.d.pool.max_per_host = 2;
    for (int i = 0; i < 4; i++) {
        submit(&f, 0, "/x");
        submit(&f, 1, "/y");
    }
    CHECK(run_until_finished(&f, 8));
    check_all_ok(&f);
    opened = f.d.stats.conns_opened;
    CHECK(opened >= 2 && opened <= 4);
    CHECK_INT(f.d.pool.nidle, opened);
    pool_close_idle(&f.d.pool, STATS_CLOSE_SHUTDOWN);
    CHECK_INT(f.d.pool.nidle, 0);
    CHECK_INT(f.d.pool.nconns, 0);
    CHECK_INT(f.d.stats.conns_closed[STATS_CLOSE_SHUTDOWN], opened);
    CHECK_INT(f.d.stats.objects[STATS_OBJ_ORIGIN], 0);
    /* The sockets really close: the servers see every connection end. */
    CHECK(run_until_servers_idle(&f));
    CHECK_INT(f.d.stats.objects[STATS_OBJ_CONN], 0);
    teardown(&f);
}

/* A caller that keeps a TLS configuration (an https job after an allowed
 * redirect to http, allow_downgrade) must reach a plain http origin in
 * plain text: the origin takes the caller's TLS settings only for https. */
static void test_http_origin_ignores_tls_config(void)
{
    fixture_t f;
    tls_config_t *tls = NULL;
    char url[128], errmsg[256] = "";

    setup(&f);
    CHECK_INT(tls_config_get(&f.d.tls, NULL, 1, NULL, NULL, &tls, errmsg, sizeof(errmsg)), 0);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/plain", f.srv[0].port);
    fetch_start(&f, url, tls);
    CHECK(run_until_finished(&f, 1));
    check_all_ok(&f);
    CHECK_INT(f.srv[0].requests, 1);
    CHECK_INT(f.d.tls.handshakes, 0);
    if (tls)
        tls_config_decref(tls);
    teardown(&f);
}

/* A waiter that gives up is withdrawn: it is never called, the origin it
 * waited at goes once its connection does, and the next waiter is served. */
static void test_cancel_connect(void)
{
    fixture_t f;
    fetch_t *a, *b, *c;

    setup(&f);
    f.d.pool.max_per_host = 1;
    a = submit(&f, 0, "/a");
    b = submit(&f, 0, "/b");
    c = submit(&f, 0, "/c");
    CHECK(b && pool_wait_pending(&b->wait));
    CHECK(c && pool_wait_pending(&c->wait));
    if (b)
        pool_cancel_connect(&b->wait);
    CHECK(b && !pool_wait_pending(&b->wait));
    if (b)
        pool_cancel_connect(&b->wait); /* a second cancel is harmless */
    CHECK(run_until_finished(&f, 2));
    check_all_ok(&f);
    CHECK(a && a->finished);
    CHECK(b && !b->finished);
    CHECK(c && c->finished);
    CHECK_INT(f.srv[0].requests, 2);
    CHECK_INT(f.d.stats.conns_opened, 1);
    CHECK_INT(f.d.stats.conn_reuses, 1);
    teardown(&f);
}

TEST_MAIN(TEST_CASE(test_sequential_reuse), TEST_CASE(test_per_host_limit),
          TEST_CASE(test_global_limit), TEST_CASE(test_global_limit_closes_idle),
          TEST_CASE(test_idle_sweep), TEST_CASE(test_peer_closes_idle),
          TEST_CASE(test_peer_talks_on_idle), TEST_CASE(test_close_idle),
          TEST_CASE(test_http_origin_ignores_tls_config), TEST_CASE(test_cancel_connect))
