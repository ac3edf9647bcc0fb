/* Unit tests for daemon/job.c: one job driven through its phases with a fake
 * pool and a fake connection, and no sockets.
 *
 * The fakes are link-time: this file defines every pool_* and conn_*
 * function job.o calls, so the linker never pulls pool.o or conn.o out of
 * libfetchd. The fake pool hands out conn_t structs it allocates itself (the
 * job only reads conn.state); the test then plays the connection's part
 * through the conn_user_ops_t the job attached, holding a reference on the
 * job around each call as conn.c's CALL_USER does. The owner is a fake too:
 * a job_env_t whose ops record the events. DNS is the real module (IP
 * literals are answered at once; "localhost" goes to the thread pool).
 *
 * Every test ends with the job gone: no live job or connection, and the
 * fetchd and libuv heap blocks back at their baseline.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "conn.h"
#include "dns.h"
#include "err.h"
#include "job.h"
#include "mem.h"
#include "pool.h"
#include "stats.h"
#include "test.h"

/* ---- the fake pool and connection ------------------------------------------ */

typedef enum fake_mode { FAKE_REUSED, FAKE_NEW, FAKE_WAIT, FAKE_FAIL } fake_mode_t;

static struct fake {
    fake_mode_t mode;     /* what the next pool_connect_via() does */
    int connects;         /* pool_connect_via() calls */
    int last_force_new;   /* its force_new */
    int cancels;          /* pool_cancel_connect() calls with the wait pending */
    pool_wait_t *waiting; /* the wait the pool holds, or NULL */
    const url_t *url;     /* the URL of the last pool_connect_via() (borrowed) */
    conn_t *conn;         /* the connection handed out last (borrowed) */
    int conns_live;       /* fake connections not yet freed */
    int conn_connects;    /* conn_connect() calls */
    int sends;            /* conn_send() calls */
    char req[2048];       /* the last request's head and body */
    int closes;           /* conn_close() calls */
    stats_close_t last_close;
    int pauses, resumes;
} F;

static conn_t *fake_conn_new(conn_state_t state)
{
    static const conn_env_t direct; /* no proxy: what send_request() reads */
    conn_t *c = mem_calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->env = &direct;
    c->refcnt = 1; /* the reference the pool hands over */
    c->state = state;
    F.conns_live++;
    F.conn = c;
    return c;
}

int pool_connect_via(pool_t *p, pool_wait_t *w, const url_t *u, tls_config_t *tls, proxy_t *px,
                     int force_new, pool_connect_cb cb, void *data, conn_t **out)
{
    (void)p;
    (void)tls;
    (void)px;
    F.url = u;
    F.connects++;
    F.last_force_new = force_new;
    w->cb = cb;
    w->data = data;
    switch (F.mode) {
    case FAKE_REUSED:
        *out = fake_conn_new(CONN_ACTIVE);
        return *out ? POOL_REUSED : ERR_NO_MEMORY;
    case FAKE_NEW:
        *out = fake_conn_new(CONN_CONNECTING);
        return *out ? POOL_NEW : ERR_NO_MEMORY;
    case FAKE_WAIT:
        F.waiting = w;
        return POOL_WAIT;
    default:
        return ERR_NO_MEMORY;
    }
}

void pool_cancel_connect(pool_wait_t *w)
{
    if (F.waiting == w) {
        F.waiting = NULL;
        F.cancels++;
    }
}

int pool_wait_pending(const pool_wait_t *w)
{
    return F.waiting == w;
}

/* No proxy: the hop is the origin of the last connect. */
const char *conn_hop_host(const conn_t *c, uint16_t *port)
{
    (void)c;
    *port = F.url->port;
    return F.url->host;
}

const char *conn_proxy_shown(const conn_t *c)
{
    (void)c;
    return NULL;
}

void conn_attach(conn_t *c, const conn_user_ops_t *ops, void *user)
{
    c->ops = ops;
    c->user = user;
    ops->incref(user);
    c->refcnt++; /* the user's */
}

int conn_decref(conn_t *c)
{
    if (c->refcnt == 0) {
        fprintf(stderr, "conn_decref on a freed connection\n");
        abort();
    }
    if (--c->refcnt > 0)
        return 0;
    if (F.conn == c)
        F.conn = NULL;
    mem_free(c);
    F.conns_live--;
    return 1;
}

/* As conn.c's conn_detach(): on_detach, then both references go. */
static void fake_detach(conn_t *c)
{
    const conn_user_ops_t *ops = c->ops;
    void *user = c->user;

    if (user == NULL)
        return;
    c->user = NULL;
    c->ops = NULL;
    ops->on_detach(user);
    ops->decref(user);
    conn_decref(c);
}

void conn_close(conn_t *c, stats_close_t reason)
{
    F.closes++;
    F.last_close = reason;
    c->state = CONN_CLOSING;
    fake_detach(c); /* may free c: the user's reference was the last */
}

int conn_connect(conn_t *c, dns_entry_t *e)
{
    (void)c;
    (void)e;
    F.conn_connects++;
    return 0;
}

int conn_send(conn_t *c, const uv_buf_t *bufs, unsigned nbufs, int head)
{
    size_t n = 0;

    (void)c;
    (void)head;
    F.sends++;
    for (unsigned i = 0; i < nbufs && n + bufs[i].len < sizeof(F.req); i++) {
        memcpy(F.req + n, bufs[i].base, bufs[i].len);
        n += bufs[i].len;
    }
    F.req[n] = '\0';
    return 0;
}

int conn_handshaking(const conn_t *c)
{
    (void)c;
    return 0;
}

void conn_pause(conn_t *c)
{
    (void)c;
    F.pauses++;
}

void conn_resume(conn_t *c)
{
    (void)c;
    F.resumes++;
}

/* ---- playing the connection ------------------------------------------------ */

/* The connection ends the exchange: detached first (back to the pool, or
 * closing), then the report, inside a reference on the user. */
static void conn_ends(conn_t *c, int err, const char *msg, int reused, uint64_t resp_bytes)
{
    const conn_user_ops_t *ops = c->ops;
    void *user = c->user;

    ops->incref(user);
    fake_detach(c);
    if (err == 0)
        ops->on_complete(user);
    else
        ops->on_error(user, err, msg, reused, resp_bytes);
    ops->decref(user);
}

/* A whole response on c: head (with one optional field) and body. A parser
 * callback's refusal ends it with that error and message, as conn.c does. */
static void respond(conn_t *c, int status, const char *name, const char *value, const char *body)
{
    const conn_user_ops_t *ops = c->ops;
    void *user = c->user;
    size_t blen = body ? strlen(body) : 0;
    conn_why_t why = {{0}};
    int rc = 0;

    ops->incref(user);
    ops->on_request_sent(user);
    ops->on_read(user);
    if (name)
        rc = ops->on_header(user, name, strlen(name), value, strlen(value), &why);
    if (rc == 0)
        rc = ops->on_head(user, status, (int64_t)blen, NULL, &why);
    if (rc == 0 && blen > 0)
        rc = ops->on_body(user, NULL, body, blen, &why);
    conn_ends(c, rc, why.msg, 0, blen);
    ops->decref(user);
}

/* ---- the owner ------------------------------------------------------------- */

typedef struct owner {
    int events[JOB_EV_RETRYING + 1];
    int finished;
    int randoms;
    char retry_msg[192]; /* the job's error_msg during its retrying event */
} owner_t;

static void owner_on_event(void *data, job_t *j, job_event_t ev)
{
    owner_t *o = data;
    o->events[ev]++;
    if (ev == JOB_EV_RETRYING)
        snprintf(o->retry_msg, sizeof(o->retry_msg), "%s", j->error_msg);
}

static void owner_on_finished(void *data, job_t *j)
{
    owner_t *o = data;
    (void)j;
    o->finished++;
}

static double owner_random(void *data)
{
    owner_t *o = data;
    o->randoms++;
    return 0.5;
}

static const job_owner_ops_t owner_ops = {
    .on_event = owner_on_event,
    .on_finished = owner_on_finished,
    .random = owner_random,
};

/* ---- the fixture ----------------------------------------------------------- */

typedef struct fixture {
    uv_loop_t loop;
    uv_timer_t tick; /* wakes the loop while a test waits, so every wait is bounded */
    stats_t stats;
    dns_t dns;
    proxy_conf_t proxies;
    job_env_t env;
    owner_t owner;
    uint64_t blocks0, libuv0;
} fixture_t;

static uint64_t blocks(mem_component_t c)
{
    uint64_t b, bytes;
    mem_get(c, &b, &bytes);
    return b;
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static void setup(fixture_t *f)
{
    memset(f, 0, sizeof(*f));
    memset(&F, 0, sizeof(F));
    f->blocks0 = blocks(MEM_FETCHD);
    f->libuv0 = blocks(MEM_LIBUV);
    CHECK_INT(uv_loop_init(&f->loop), 0);
    uv_timer_init(&f->loop, &f->tick);
    uv_unref((uv_handle_t *)&f->tick);
    stats_init(&f->stats);
    CHECK_INT(dns_init(&f->dns, &f->loop, &f->stats), 0);
    f->env.loop = &f->loop;
    f->env.stats = &f->stats;
    f->env.dns = &f->dns;
    proxy_conf_init(&f->proxies, &f->stats); /* none: every request goes direct */
    f->env.proxies = &f->proxies;
    retry_policy_init(&f->env.retry);
    f->env.retry.base_ms = 2; /* a backoff of 1 ms with owner_random's 0.5 */
    f->env.ops = &owner_ops;
    f->env.owner = &f->owner;
}

/* Runs the loop until *flag != 0 (or, with flag NULL, until nothing is
 * left to do); at most 5 s and 100,000 turns (the unreferenced tick wakes
 * the loop every 10 ms). Returns whether it got there. */
static int run_until(fixture_t *f, const int *flag)
{
    uint64_t deadline = uv_hrtime() + 5000000000ull;

    uv_timer_start(&f->tick, on_tick, 10, 10);
    for (int i = 0; i < 100000 && uv_hrtime() < deadline; i++) {
        if (flag ? *flag != 0 : !uv_loop_alive(&f->loop))
            break;
        uv_run(&f->loop, UV_RUN_ONCE);
    }
    uv_timer_stop(&f->tick);
    return flag ? *flag != 0 : !uv_loop_alive(&f->loop);
}

/* Drops the test's reference, lets the timers close, and checks that
 * everything is back where it started. */
static void finish_test(fixture_t *f, job_t *j)
{
    if (j != NULL)
        CHECK_INT(job_decref(j), 1);
    CHECK(run_until(f, NULL));
    CHECK_INT(f->stats.objects[STATS_OBJ_JOB], 0);
    CHECK_INT(F.conns_live, 0);
    CHECK(F.waiting == NULL);
    dns_dispose(&f->dns);
    proxy_conf_dispose(&f->proxies);
    CHECK(run_until(f, NULL));
    for (int t = 0; t < STATS_OBJ__COUNT; t++)
        CHECK_INT(f->stats.objects[t], 0);
    uv_close((uv_handle_t *)&f->tick, NULL);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    CHECK_INT(uv_loop_close(&f->loop), 0);
    CHECK_INT(blocks(MEM_FETCHD), f->blocks0);
    CHECK_INT(blocks(MEM_LIBUV), f->libuv0);
}

static job_t *make_job(fixture_t *f, const char *url, job_output_t output, int retries)
{
    job_spec_t spec;
    job_t *j = NULL;
    char errmsg[256];

    job_spec_init(&spec);
    spec.url = mem_strdup(url);
    spec.output = output;
    spec.retries = retries;
    CHECK_INT(job_create(&f->env, &spec, &j, errmsg, sizeof(errmsg)), 0);
    return j;
}

/* ---- the tests --------------------------------------------------------------- */

static void test_200_completes(void)
{
    fixture_t f;
    job_t *j;

    setup(&f);
    F.mode = FAKE_REUSED;
    j = make_job(&f, "http://127.0.0.1:8080/a?b=1", JOB_OUTPUT_INLINE, 0);
    if (j == NULL)
        return;
    job_start(j);
    CHECK_INT(f.owner.events[JOB_EV_STARTED], 1);
    CHECK_INT(j->state, JOB_RUNNING);
    CHECK_INT(j->phase, JOB_PH_REQUEST);
    CHECK_INT(F.sends, 1);
    CHECK(strncmp(F.req, "GET /a?b=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n", 43) == 0);
    CHECK(strstr(F.req, "\r\n\r\n") != NULL);
    respond(F.conn, 200, "Content-Type", "text/plain", "hello");
    CHECK_INT(j->state, JOB_DONE);
    CHECK_INT(j->phase, JOB_PH_FINISHED);
    CHECK_INT(j->error, 0);
    CHECK_INT(j->http_status, 200);
    CHECK_INT(j->bytes, 5);
    CHECK_INT(j->inline_len, 5);
    CHECK(j->inline_body != NULL && memcmp(j->inline_body, "hello", 5) == 0);
    CHECK_INT(j->attempts, 1);
    CHECK(j->conn == NULL);
    CHECK_INT(f.owner.finished, 1);
    CHECK_INT(f.stats.jobs_finished[STATS_RESULT_DONE], 1);
    CHECK_INT(F.closes, 0); /* a complete response leaves the connection to the pool */
    CHECK_INT(job_cancel(j, ERR_CANCELLED), ERR_INVALID_REQUEST); /* finished: unchanged */
    CHECK_INT(j->state, JOB_DONE);
    CHECK_INT(f.owner.finished, 1);
    finish_test(&f, j);
}

static void test_redirect(void)
{
    fixture_t f;
    job_t *j;

    setup(&f);
    F.mode = FAKE_REUSED;
    j = make_job(&f, "http://127.0.0.1:8080/old", JOB_OUTPUT_DISCARD, 0);
    if (j == NULL)
        return;
    job_start(j);
    respond(F.conn, 302, "Location", "/new", "moved");
    CHECK_INT(f.owner.events[JOB_EV_REDIRECTED], 1);
    CHECK_INT(j->redirects, 1);
    CHECK_INT(j->state, JOB_RUNNING);
    CHECK_INT(F.connects, 2);
    CHECK(strncmp(F.req, "GET /new HTTP/1.1\r\n", 19) == 0);
    CHECK_STR(j->effective_url, "http://127.0.0.1:8080/new");
    respond(F.conn, 200, NULL, NULL, "ok");
    CHECK_INT(j->state, JOB_DONE);
    CHECK_INT(j->http_status, 200);
    CHECK_INT(j->bytes, 2); /* the redirect's body was dropped */
    CHECK_INT(f.stats.redirects, 1);
    CHECK_INT(f.owner.events[JOB_EV_STARTED], 1);
    finish_test(&f, j);
}

static void test_conn_error_code_and_message(void)
{
    fixture_t f;
    job_t *j;

    setup(&f);
    F.mode = FAKE_REUSED;
    j = make_job(&f, "http://127.0.0.1:8080/", JOB_OUTPUT_DISCARD, 3);
    if (j == NULL)
        return;
    job_start(j);
    conn_ends(F.conn, ERR_PROTOCOL, "invalid chunk size line", 0, 17);
    CHECK_INT(j->state, JOB_FAILED);
    CHECK_INT(j->error, ERR_PROTOCOL);
    CHECK_STR(j->error_msg, "invalid chunk size line");
    CHECK_INT(j->attempts, 1); /* a protocol error is not retried */
    CHECK_INT(f.stats.jobs_finished[STATS_RESULT_FAILED], 1);
    CHECK_INT(f.owner.finished, 1);
    finish_test(&f, j);
}

/* A parser callback of the job refuses the response (--fail and a 404): the
 * connection hands its code and message back through on_error. */
static void test_refused_response_message(void)
{
    fixture_t f;
    job_t *j;
    job_spec_t spec;
    char errmsg[256];

    setup(&f);
    F.mode = FAKE_REUSED;
    job_spec_init(&spec);
    spec.url = mem_strdup("http://127.0.0.1:8080/missing");
    spec.fail_on_http_error = 1;
    j = NULL;
    CHECK_INT(job_create(&f.env, &spec, &j, errmsg, sizeof(errmsg)), 0);
    if (j == NULL)
        return;
    job_start(j);
    respond(F.conn, 404, NULL, NULL, "nope");
    CHECK_INT(j->state, JOB_FAILED);
    CHECK_INT(j->error, ERR_HTTP_ERROR);
    CHECK_STR(j->error_msg, "HTTP status 404");
    CHECK_INT(j->http_status, 404);
    finish_test(&f, j);
}

static void test_status_retry_is_scheduled(void)
{
    fixture_t f;
    job_t *j;

    setup(&f);
    F.mode = FAKE_REUSED;
    j = make_job(&f, "http://127.0.0.1:8080/busy", JOB_OUTPUT_DISCARD, 2);
    if (j == NULL)
        return;
    job_start(j);
    respond(F.conn, 503, NULL, NULL, "busy");
    CHECK_INT(j->phase, JOB_PH_BACKOFF);
    CHECK_INT(f.owner.events[JOB_EV_RETRYING], 1);
    CHECK_STR(f.owner.retry_msg, "HTTP status 503");
    CHECK_STR(j->error_msg, "");
    CHECK_INT(f.owner.randoms, 1); /* the jitter came from the owner's source */
    CHECK_INT(j->retries_left, 1);
    CHECK_INT(f.stats.retries, 1);
    CHECK_INT(j->http_status, 0); /* a retried response is not the result */
    F.sends = 0;
    CHECK(run_until(&f, &F.sends)); /* the backoff timer fired: a second request */
    CHECK_INT(F.connects, 2);
    respond(F.conn, 200, NULL, NULL, "fine");
    CHECK_INT(j->state, JOB_DONE);
    CHECK_INT(j->attempts, 2);
    finish_test(&f, j);
}

/* A refused connect is retried after a backoff on a new connection; with no
 * retries left the job fails with the connection's code and message. */
static void test_connect_refused_retry_then_fail(void)
{
    fixture_t f;
    job_t *j;
    int connects2 = 0;

    setup(&f);
    F.mode = FAKE_NEW;
    j = make_job(&f, "http://127.0.0.1:9/", JOB_OUTPUT_DISCARD, 1);
    if (j == NULL)
        return;
    job_start(j);
    CHECK_INT(j->phase, JOB_PH_CONNECTING); /* an IP literal resolves at once */
    CHECK_INT(F.conn_connects, 1);
    {
        /* As conn.c's setup_failed(): closed and detached, then on_connected. */
        conn_t *c = F.conn;
        const conn_user_ops_t *ops = c->ops;
        void *user = c->user;
        ops->incref(user);
        conn_close(c, STATS_CLOSE_CONNECT_FAILED);
        ops->on_connected(user, ERR_CONNECT_REFUSED, "connection refused");
        ops->decref(user);
    }
    CHECK_INT(j->phase, JOB_PH_BACKOFF);
    CHECK_STR(f.owner.retry_msg, "connection refused");
    CHECK(j->conn == NULL);
    CHECK_INT(F.conns_live, 0);
    F.conn_connects = 0;
    run_until(&f, &F.conn_connects);
    connects2 = F.connects;
    CHECK_INT(connects2, 2);
    CHECK_INT(j->phase, JOB_PH_CONNECTING);
    {
        conn_t *c = F.conn;
        const conn_user_ops_t *ops = c->ops;
        void *user = c->user;
        ops->incref(user);
        conn_close(c, STATS_CLOSE_CONNECT_FAILED);
        ops->on_connected(user, ERR_CONNECT_REFUSED, "connection refused");
        ops->decref(user);
    }
    CHECK_INT(j->state, JOB_FAILED);
    CHECK_INT(j->error, ERR_CONNECT_REFUSED);
    CHECK_STR(j->error_msg, "connection refused");
    CHECK_INT(j->attempts, 2);
    finish_test(&f, j);
}

/* A reused connection that closes before any response byte: an idempotent
 * request goes again, once, on a connection that must be new. */
static void test_stale_connection_retried_once(void)
{
    fixture_t f;
    job_t *j;

    setup(&f);
    F.mode = FAKE_REUSED;
    j = make_job(&f, "http://127.0.0.1:8080/", JOB_OUTPUT_DISCARD, 0);
    if (j == NULL)
        return;
    job_start(j);
    conn_ends(F.conn, ERR_EMPTY_REPLY, "empty reply", 1, 0);
    CHECK_INT(F.connects, 2);
    CHECK_INT(F.last_force_new, 1);
    CHECK_INT(j->state, JOB_RUNNING);
    conn_ends(F.conn, ERR_EMPTY_REPLY, "empty reply", 1, 0);
    CHECK_INT(j->state, JOB_FAILED);
    CHECK_INT(j->error, ERR_EMPTY_REPLY);
    finish_test(&f, j);
}

/* The pool makes the job wait, then hands it a connection. */
static void test_wait_then_connection(void)
{
    fixture_t f;
    job_t *j;
    pool_wait_t *w;

    setup(&f);
    F.mode = FAKE_WAIT;
    j = make_job(&f, "http://127.0.0.1:8080/", JOB_OUTPUT_DISCARD, 0);
    if (j == NULL)
        return;
    job_start(j);
    CHECK_INT(j->phase, JOB_PH_WAIT_CONN);
    CHECK(F.waiting == &j->pool_wait);
    w = F.waiting;
    F.waiting = NULL;
    w->cb(w, fake_conn_new(CONN_ACTIVE), 1);
    CHECK_INT(j->phase, JOB_PH_REQUEST);
    respond(F.conn, 204, NULL, NULL, NULL);
    CHECK_INT(j->state, JOB_DONE);
    CHECK_INT(j->http_status, 204);
    finish_test(&f, j);
}

/* Cancels a job once it has reached phase (driving it there first) and
 * checks that it let go of everything. */
static void cancel_in(job_phase_t phase)
{
    fixture_t f;
    job_t *j;
    const char *url = phase == JOB_PH_RESOLVING ? "http://localhost:9/" : "http://127.0.0.1:9/";

    setup(&f);
    F.mode = phase == JOB_PH_WAIT_CONN                                 ? FAKE_WAIT
             : phase == JOB_PH_RESOLVING || phase == JOB_PH_CONNECTING ? FAKE_NEW
                                                                       : FAKE_REUSED;
    j = make_job(&f, url, JOB_OUTPUT_INLINE, 1);
    if (j == NULL)
        return;
    if (phase != JOB_PH_QUEUED)
        job_start(j);
    if (phase == JOB_PH_RESPONSE) {
        j->conn->ops->on_read(j);
    } else if (phase == JOB_PH_BACKOFF) {
        respond(F.conn, 503, NULL, NULL, NULL);
    }
    CHECK_INT(j->phase, phase);
    if (j->phase != phase) {
        fprintf(stderr, "  (cancel_in %d: the job is in phase %d)\n", phase, j->phase);
        job_cancel(j, ERR_CANCELLED);
        finish_test(&f, j);
        return;
    }
    CHECK_INT(job_cancel(j, ERR_CANCELLED), 0);
    CHECK_INT(j->state, JOB_CANCELLED);
    CHECK_INT(j->phase, JOB_PH_FINISHED);
    CHECK_INT(j->error, ERR_CANCELLED);
    CHECK_STR(j->error_msg, "cancelled by request");
    CHECK(j->conn == NULL);
    CHECK(F.waiting == NULL);
    CHECK(!uv_is_active((uv_handle_t *)&j->timer));
    CHECK(j->phase_due == JOB_NOT_DUE && j->total_due == JOB_NOT_DUE);
    CHECK_INT(f.owner.finished, 1);
    CHECK_INT(f.owner.events[JOB_EV_STARTED], phase == JOB_PH_QUEUED ? 0 : 1);
    CHECK_INT(f.stats.jobs_finished[STATS_RESULT_CANCELLED], 1);
    if (phase == JOB_PH_WAIT_CONN)
        CHECK_INT(F.cancels, 1);
    if (phase == JOB_PH_RESOLVING || phase == JOB_PH_CONNECTING) {
        CHECK_INT(F.closes, 1);
        CHECK_INT(F.last_close, STATS_CLOSE_CONNECT_FAILED);
    }
    if (phase == JOB_PH_REQUEST || phase == JOB_PH_RESPONSE) {
        CHECK_INT(F.closes, 1);
        CHECK_INT(F.last_close, STATS_CLOSE_CANCELLED);
    }
    CHECK_INT(job_cancel(j, ERR_CANCELLED), ERR_INVALID_REQUEST);
    CHECK_INT(f.owner.finished, 1);
    finish_test(&f, j);
}

static void test_cancel_queued(void)
{
    cancel_in(JOB_PH_QUEUED);
}

static void test_cancel_wait_conn(void)
{
    cancel_in(JOB_PH_WAIT_CONN);
}

static void test_cancel_resolving(void)
{
    cancel_in(JOB_PH_RESOLVING);
}

static void test_cancel_connecting(void)
{
    cancel_in(JOB_PH_CONNECTING);
}

static void test_cancel_request(void)
{
    cancel_in(JOB_PH_REQUEST);
}

static void test_cancel_response(void)
{
    cancel_in(JOB_PH_RESPONSE);
}

static void test_cancel_backoff(void)
{
    cancel_in(JOB_PH_BACKOFF);
}

/* A job that fails validation releases what it took (its spec included). */
static void test_invalid_spec_releases(void)
{
    fixture_t f;
    job_spec_t spec;
    job_t *j = NULL;
    char errmsg[256];

    setup(&f);
    job_spec_init(&spec);
    spec.url = mem_strdup("http://127.0.0.1/");
    spec.method = mem_strdup("GE T");
    CHECK_INT(job_create(&f.env, &spec, &j, errmsg, sizeof(errmsg)), ERR_INVALID_REQUEST);
    CHECK(j == NULL);
    CHECK(strstr(errmsg, "method") != NULL);
    CHECK(spec.url == NULL);
    finish_test(&f, NULL);
}

int main(void)
{
    static const test_case_t cases[] = {
        TEST_CASE(test_200_completes),
        TEST_CASE(test_redirect),
        TEST_CASE(test_conn_error_code_and_message),
        TEST_CASE(test_refused_response_message),
        TEST_CASE(test_status_retry_is_scheduled),
        TEST_CASE(test_connect_refused_retry_then_fail),
        TEST_CASE(test_stale_connection_retried_once),
        TEST_CASE(test_wait_then_connection),
        TEST_CASE(test_cancel_queued),
        TEST_CASE(test_cancel_wait_conn),
        TEST_CASE(test_cancel_resolving),
        TEST_CASE(test_cancel_connecting),
        TEST_CASE(test_cancel_request),
        TEST_CASE(test_cancel_response),
        TEST_CASE(test_cancel_backoff),
        TEST_CASE(test_invalid_spec_releases),
    };

    if (mem_install() != 0) {
        fprintf(stderr, "mem_install failed\n");
        return 1;
    }
    return test_main(cases, sizeof(cases) / sizeof(cases[0]));
}
