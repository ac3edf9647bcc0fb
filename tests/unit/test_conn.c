/* Unit tests for daemon/conn.c with no job and no pool: a fake user
 * (conn_user_ops_t) and fake pool hooks drive one connection against a tiny
 * server on loopback inside the test, which answers the first request head
 * with canned bytes. They check what the user hears and in which order, that
 * a refusal's reason reaches on_error as an argument, that a user may close
 * the connection inside a callback, and that every reference, buffer and
 * object is gone at the end. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "conn.h"
#include "dns.h"
#include "err.h"
#include "mem.h"
#include "stats.h"
#include "test.h"

#define LOOP_TIMEOUT_MS 5000

/* ---- the test server: one connection, one canned answer -------------------- */

typedef struct server {
    uv_tcp_t listener;
    uv_tcp_t peer;
    int port, accepted, peer_open;
    const char *answer; /* borrowed: sent once the request head is in */
    int close_after;    /* close the connection after the answer */
    size_t zeros_len;   /* with answer NULL: a 200 with this many zero bytes */
    uv_write_t wreq;    /* the big answer's write */
    char req[4096];
    size_t len;
    /* big: the request head is too large for req: it is only scanned (its
     * bytes counted, and the 'Z's among them), its last 4 bytes kept. */
    int big;
    size_t big_len, big_z;
    char tail[5];
    char scratch[65536];
} server_t;

static void on_peer_closed(uv_handle_t *h)
{
    server_t *s = h->data;
    s->peer_open = 0;
}

static void on_peer_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    server_t *s = h->data;
    (void)hint;
    if (s->big)
        *b = uv_buf_init(s->scratch, sizeof(s->scratch));
    else
        *b = uv_buf_init(s->req + s->len, (unsigned)(sizeof(s->req) - 1 - s->len));
}

/* A big head's bytes: counted and scanned; returns 1 once its end is in. */
static int big_bytes(server_t *s, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        s->big_z += p[i] == 'Z';
        memmove(s->tail, s->tail + 1, 3);
        s->tail[3] = p[i];
    }
    s->big_len += n;
    return memcmp(s->tail, "\r\n\r\n", 4) == 0;
}

static void on_big_written(uv_write_t *w, int status)
{
    (void)w, (void)status; /* cancelled when the test closes the connection first */
}

/* The head and zeros_len zero bytes, in one write: the head and the body's
 * start reach the client in one loopback segment of up to 64 KiB. */
static void send_big(server_t *s)
{
    static char head[64], zeros[1 << 20];
    uv_buf_t out[2];
    int n;

    CHECK(s->zeros_len <= sizeof(zeros));
    n = snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n",
                 s->zeros_len);
    out[0] = uv_buf_init(head, (unsigned)n);
    out[1] = uv_buf_init(zeros, (unsigned)s->zeros_len);
    CHECK_INT(uv_write(&s->wreq, (uv_stream_t *)&s->peer, out, 2, on_big_written), 0);
    s->zeros_len = 0;
}

static void on_peer_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    server_t *s = st->data;
    uv_buf_t out;

    if (s->big && n > 0) {
        if (!big_bytes(s, b->base, (size_t)n) || s->answer == NULL)
            return;
        n = 0;
        strcpy(s->req, "\r\n\r\n"); /* the end of the head, for the answer below */
        s->len = 4;
    }
    if (n < 0 || s->len + (size_t)n >= sizeof(s->req) - 1) {
        if (!uv_is_closing((uv_handle_t *)&s->peer))
            uv_close((uv_handle_t *)&s->peer, on_peer_closed);
        return;
    }
    s->len += (size_t)n;
    s->req[s->len] = '\0';
    if (strstr(s->req, "\r\n\r\n") == NULL)
        return;
    if (s->zeros_len > 0) {
        send_big(s);
        return;
    }
    if (s->answer == NULL)
        return;
    out = uv_buf_init((char *)s->answer, (unsigned)strlen(s->answer));
    /* A few dozen bytes always fit a loopback socket's buffer. */
    CHECK_INT(uv_try_write((uv_stream_t *)&s->peer, &out, 1), strlen(s->answer));
    s->answer = NULL;
    if (s->close_after)
        uv_close((uv_handle_t *)&s->peer, on_peer_closed);
}

static void on_connection(uv_stream_t *l, int status)
{
    server_t *s = l->data;
    CHECK_INT(status, 0);
    CHECK_INT(s->accepted, 0); /* one connection per test */
    s->accepted++;
    uv_tcp_init(l->loop, &s->peer);
    s->peer.data = s;
    s->peer_open = 1;
    CHECK_INT(uv_accept(l, (uv_stream_t *)&s->peer), 0);
    uv_read_start((uv_stream_t *)&s->peer, on_peer_alloc, on_peer_read);
}

static void server_start(server_t *s, uv_loop_t *loop)
{
    struct sockaddr_in sa;
    struct sockaddr_storage ss;
    int len = sizeof(ss);

    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    CHECK_INT(uv_tcp_bind(&s->listener, (const struct sockaddr *)&sa, 0), 0);
    CHECK_INT(uv_listen((uv_stream_t *)&s->listener, 8, on_connection), 0);
    uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &len);
    s->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void server_stop(server_t *s)
{
    uv_close((uv_handle_t *)&s->listener, NULL);
    if (s->peer_open && !uv_is_closing((uv_handle_t *)&s->peer))
        uv_close((uv_handle_t *)&s->peer, on_peer_closed);
}

/* ---- the fake user and the fake pool ---------------------------------------- */

typedef struct user {
    unsigned refcnt;
    conn_t *conn; /* the user's reference while attached */
    char trace[512];
    int status, err;
    char msg[256];
    char body[256];
    size_t blen;
    const char *refuse_head; /* refuse the head with this reason */
    int close_in_body;       /* conn_close() from inside on_body */
    int big_head;            /* send a head of BIG_PAD bytes and more (send_big_head()) */
    int head_copied;         /* conn_send() kept a copy of the head's unsent rest */
    size_t big_len;
    int finished;
    size_t total, max_chunk; /* body bytes, and the most in one on_body */
    size_t pause_at;         /* 0, or pause reading once this many body bytes are in */
    int paused;              /* 1 paused, 2 resumed */
    size_t after_resume;     /* the first on_body's length after the resume */
    uv_timer_t resume_timer; /* resumes reading on the next loop turn */
} user_t;

typedef struct fixture {
    uv_loop_t loop;
    stats_t stats;
    buf_pool_t bufs;
    dns_t dns;
    server_t srv;
    conn_env_t env;
    user_t user;
    unsigned actives, closings;
    conn_t *returned; /* the pool's reference, from on_reusable */
    uv_timer_t guard;
    int guard_fired;
} fixture_t;

static fixture_t *fx; /* the hooks' way back to the test's state */

static void trace(user_t *u, const char *ev)
{
    size_t n = strlen(u->trace);
    snprintf(u->trace + n, sizeof(u->trace) - n, "%s%s", n ? " " : "", ev);
}

static void u_incref(void *p)
{
    ((user_t *)p)->refcnt++;
}

static void u_decref(void *p)
{
    user_t *u = p;
    CHECK(u->refcnt > 0);
    u->refcnt--;
}

static void u_detach(void *p)
{
    user_t *u = p;
    trace(u, "detach");
    u->conn = NULL;
}

static const char request[] = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/* big_head: the request head's size; it is built in a block of its own
 * that is overwritten with 'Z's and freed as soon as conn_send() returns. */
#define BIG_PAD (2u << 20)

static void send_big_head(user_t *u)
{
    static const char start[] = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ";
    size_t n = sizeof(start) - 1 + BIG_PAD + 4;
    char *head = malloc(n);
    uv_buf_t b;
    int small = 4096;

    CHECK(head != NULL);
    memcpy(head, start, sizeof(start) - 1);
    memset(head + sizeof(start) - 1, 'a', BIG_PAD);
    memcpy(head + n - 4, "\r\n\r\n", 4);
    /* A small send buffer: the socket takes only part of the head at once. */
    CHECK_INT(uv_send_buffer_size((uv_handle_t *)&u->conn->tcp, &small), 0);
    b = uv_buf_init(head, (unsigned)n);
    CHECK_INT(conn_send(u->conn, &b, 1, 0), 0);
    u->head_copied = u->conn->head_copy != NULL;
    memset(head, 'Z', n);
    free(head);
    u->big_len = n;
}

static void u_connected(void *p, int err, const char *msg)
{
    user_t *u = p;
    uv_buf_t b = uv_buf_init((char *)request, sizeof(request) - 1);

    trace(u, "connected");
    if (err != 0) {
        u->err = err;
        snprintf(u->msg, sizeof(u->msg), "%s", msg ? msg : "");
        u->finished = 1;
        return;
    }
    if (u->big_head)
        send_big_head(u);
    else
        CHECK_INT(conn_send(u->conn, &b, 1, 0), 0);
}

static void u_sent(void *p)
{
    trace(p, "sent");
}

static void u_read(void *p)
{
    user_t *u = p;
    /* Only the first read is traced: how bytes are split is the kernel's. */
    if (strstr(u->trace, "read") == NULL)
        trace(u, "read");
}

static int u_header(void *p, const char *name, size_t nlen, const char *value, size_t vlen,
                    conn_why_t *why)
{
    (void)name, (void)nlen, (void)value, (void)vlen, (void)why;
    trace(p, "header");
    return 0;
}

static int u_head(void *p, int status, int64_t length, const char *te, conn_why_t *why)
{
    user_t *u = p;
    (void)length, (void)te;
    trace(u, "head");
    u->status = status;
    if (u->refuse_head) {
        snprintf(why->msg, sizeof(why->msg), "%s", u->refuse_head);
        return ERR_HTTP_ERROR;
    }
    return 0;
}

static void on_resume(uv_timer_t *t)
{
    user_t *u = t->data;
    if (u->conn != NULL) {
        u->paused = 2;
        conn_resume(u->conn);
    }
}

static int u_body(void *p, buf_t *b, const char *at, size_t len, conn_why_t *why)
{
    user_t *u = p;
    (void)b, (void)why;
    if (strstr(u->trace, "body") == NULL)
        trace(u, "body");
    if (u->blen + len < sizeof(u->body)) {
        memcpy(u->body + u->blen, at, len);
        u->blen += len;
    }
    u->total += len;
    u->max_chunk = len > u->max_chunk ? len : u->max_chunk;
    if (u->paused == 2 && u->after_resume == 0)
        u->after_resume = len;
    if (u->pause_at > 0 && u->total >= u->pause_at && u->paused == 0 && u->conn != NULL) {
        /* As a byte rate in debt does: stop reading, resume a little later. */
        conn_pause(u->conn);
        u->paused = 1;
        uv_timer_start(&u->resume_timer, on_resume, 0, 0);
    }
    if (u->close_in_body && u->conn != NULL) {
        /* The connection must survive this: CALL_USER holds it. */
        conn_close(u->conn, STATS_CLOSE_ERROR);
        u->finished = 1;
        return 0;
    }
    return 0;
}

static void u_complete(void *p)
{
    user_t *u = p;
    trace(u, "complete");
    u->finished = 1;
}

static void u_error(void *p, int err, const char *msg, int reused, uint64_t got)
{
    user_t *u = p;
    (void)reused, (void)got;
    trace(u, "error");
    u->err = err;
    snprintf(u->msg, sizeof(u->msg), "%s", msg ? msg : "(null)");
    u->finished = 1;
}

static const conn_user_ops_t user_ops = {
    .incref = u_incref,
    .decref = u_decref,
    .on_detach = u_detach,
    .on_connected = u_connected,
    .on_request_sent = u_sent,
    .on_read = u_read,
    .on_header = u_header,
    .on_head = u_head,
    .on_body = u_body,
    .on_complete = u_complete,
    .on_error = u_error,
};

static void h_active(conn_t *c)
{
    (void)c;
    fx->actives++;
}

static void h_reusable(conn_t *c)
{
    CHECK(fx->returned == NULL);
    fx->returned = c; /* takes the reference */
}

static void h_closing(conn_t *c)
{
    CHECK(c->env == &fx->env);
    fx->closings++;
}

static const conn_pool_hooks_t hooks = {
    .on_active = h_active,
    .on_reusable = h_reusable,
    .on_closing = h_closing,
};

/* ---- fixture ----------------------------------------------------------------- */

static uint64_t fetchd_blocks(void)
{
    uint64_t blocks, bytes;
    mem_get(MEM_FETCHD, &blocks, &bytes);
    return blocks;
}

static void on_guard(uv_timer_t *t)
{
    *(int *)t->data = 1;
}

static void setup(fixture_t *f, const char *answer, int close_after)
{
    memset(f, 0, sizeof(*f));
    fx = f;
    CHECK_INT(fetchd_blocks(), 0);
    uv_loop_init(&f->loop);
    stats_init(&f->stats);
    buf_pool_init(&f->bufs, 16384, 4, &f->stats);
    CHECK_INT(dns_init(&f->dns, &f->loop, &f->stats), 0);
    server_start(&f->srv, &f->loop);
    f->srv.answer = answer;
    f->srv.close_after = close_after;
    uv_timer_init(&f->loop, &f->guard);
    f->guard.data = &f->guard_fired;
    f->env = (conn_env_t){
        .loop = &f->loop,
        .stats = &f->stats,
        .bufs = &f->bufs,
        .host = "127.0.0.1",
        .port = (uint16_t)f->srv.port,
        .host_is_ip = 1,
        .tls_key = "http://127.0.0.1",
        .hooks = &hooks,
        .hook_data = f,
    };
}

/* Creates a connection, attaches the user and connects it to port. */
static void start(fixture_t *f, int port)
{
    dns_entry_t *e = NULL;
    dns_waiter_t w = {0}; /* unused: an address literal resolves at once */
    conn_t *c = conn_create(&f->env);

    CHECK(c != NULL);
    conn_attach(c, &user_ops, &f->user);
    f->user.conn = c; /* the reference conn_attach() took for the user */
    conn_decref(c);   /* ours */
    CHECK_INT(dns_lookup(&f->dns, "127.0.0.1", (uint16_t)port, &w, &e), 0);
    CHECK(e != NULL);
    CHECK_INT(conn_connect(c, e), 0);
    dns_entry_decref(e);
}

static int run_until_finished(fixture_t *f)
{
    f->guard_fired = 0;
    uv_timer_start(&f->guard, on_guard, LOOP_TIMEOUT_MS, 0);
    while (!f->user.finished && !f->guard_fired)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_timer_stop(&f->guard);
    return f->user.finished;
}

static void teardown(fixture_t *f)
{
    if (f->user.conn != NULL)
        conn_close(f->user.conn, STATS_CLOSE_SHUTDOWN);
    if (f->returned != NULL) {
        conn_close(f->returned, STATS_CLOSE_SHUTDOWN);
        conn_decref(f->returned);
        f->returned = NULL;
    }
    server_stop(&f->srv);
    uv_close((uv_handle_t *)&f->guard, NULL);
    dns_dispose(&f->dns);
    CHECK_INT(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    CHECK_INT(uv_loop_close(&f->loop), 0);
    CHECK_INT(f->user.refcnt, 0);
    CHECK_INT(f->bufs.in_use, 0);
    buf_pool_dispose(&f->bufs);
    for (int t = 0; t < STATS_OBJ__COUNT; t++) {
        if (f->stats.objects[t] != 0)
            fprintf(stderr, "leaked object type %s\n", stats_obj_label(t));
        CHECK_INT(f->stats.objects[t], 0);
    }
    CHECK_INT(fetchd_blocks(), 0);
    fx = NULL;
}

/* ---- tests ------------------------------------------------------------------- */

/* A keep-alive response: the user hears every step in order, then the
 * connection goes back through the pool's hook, detached. */
static void test_reusable_response(void)
{
    fixture_t f;
    setup(&f, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello", 0);
    start(&f, f.srv.port);
    CHECK(run_until_finished(&f));
    CHECK_STR(f.user.trace, "connected sent read header header head body detach complete");
    CHECK_INT(f.user.status, 200);
    CHECK_INT(f.user.blen, 5);
    CHECK(memcmp(f.user.body, "hello", 5) == 0);
    CHECK_INT(f.actives, 1);
    CHECK(f.returned != NULL);
    CHECK(f.returned != NULL && f.returned->user == NULL);
    CHECK_INT(f.closings, 0);
    CHECK_INT(f.user.refcnt, 0);
    teardown(&f);
    CHECK_INT(f.closings, 1);
}

/* The request head is the caller's for the call only: what the socket
 * does not take at once is copied (the caller's bytes are overwritten right
 * after the call), and the copy goes when the write completes. */
static void test_head_is_copied_when_not_sent_at_once(void)
{
    fixture_t *f = calloc(1, sizeof(*f)); /* the big server's scratch: not on the stack */

    CHECK(f != NULL);
    setup(f, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 0);
    f->srv.big = 1;
    f->user.big_head = 1;
    start(f, f->srv.port);
    CHECK(run_until_finished(f));
    CHECK_INT(f->user.head_copied, 1);
    CHECK_INT(f->srv.big_len, f->user.big_len);
    CHECK_INT(f->srv.big_z, 0);
    CHECK_STR(f->user.trace, "connected sent read header head body detach complete");
    CHECK_INT(f->user.status, 200);
    CHECK(f->returned != NULL && f->returned->head_copy == NULL);
    teardown(f);
    free(f);
}

/* A response cut short: on_error carries the code and the message. */
static void test_truncated(void)
{
    fixture_t f;
    setup(&f, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 1);
    start(&f, f.srv.port);
    CHECK(run_until_finished(&f));
    CHECK_INT(f.user.err, ERR_TRUNCATED);
    CHECK(strstr(f.user.msg, "before the response was complete") != NULL);
    CHECK(strstr(f.user.trace, "detach error") != NULL);
    CHECK(f.returned == NULL);
    CHECK_INT(f.closings, 1);
    CHECK_INT(f.user.refcnt, 0);
    teardown(&f);
}

/* A user's reason for refusing the head reaches on_error as its argument. */
static void test_refusal_reason(void)
{
    fixture_t f;
    setup(&f, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 0);
    f.user.refuse_head = "HTTP status 404, refused by the user";
    start(&f, f.srv.port);
    CHECK(run_until_finished(&f));
    CHECK_INT(f.user.err, ERR_HTTP_ERROR);
    CHECK_STR(f.user.msg, "HTTP status 404, refused by the user");
    CHECK(f.returned == NULL);
    CHECK_INT(f.closings, 1);
    teardown(&f);
}

/* Closing the connection from inside a user callback only marks it. */
static void test_close_inside_callback(void)
{
    fixture_t f;
    setup(&f, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 0);
    f.user.close_in_body = 1;
    start(&f, f.srv.port);
    CHECK(run_until_finished(&f));
    /* The close detached the user without a report: nothing follows it. */
    CHECK(strstr(f.user.trace, "body detach") != NULL);
    CHECK(strstr(f.user.trace, "complete") == NULL);
    CHECK(f.user.conn == NULL);
    CHECK_INT(f.closings, 1);
    teardown(&f);
}

/* A body that streams in: once a read fills a standard buffer, the next
 * ones take large buffers (BUF_LARGE_UNITS times the size), so on_body sees
 * more than a standard buffer at once; the connection still goes back to
 * the pool, and every buffer back to its pool. */
static void test_large_reads(void)
{
    fixture_t f;
    setup(&f, NULL, 0);
    f.srv.zeros_len = 1 << 20;
    uv_timer_init(&f.loop, &f.user.resume_timer);
    start(&f, f.srv.port);
    CHECK(run_until_finished(&f));
    CHECK_INT(f.user.err, 0);
    CHECK_INT(f.user.total, 1 << 20);
    CHECK(f.user.max_chunk > f.bufs.size);
    CHECK(f.user.max_chunk <= f.bufs.size * BUF_LARGE_UNITS);
    CHECK(f.returned != NULL);
    /* The next response starts with a standard buffer again. */
    CHECK(f.returned != NULL && !f.returned->read_large);
    uv_close((uv_handle_t *)&f.user.resume_timer, NULL);
    teardown(&f);
}

/* A pause inside a read (a byte rate in debt, sink backpressure) sends the
 * connection back to standard buffers: the first read after the resume is
 * at most a standard buffer, as the byte rate's budget expects. */
static void test_pause_resets_large_reads(void)
{
    fixture_t f;
    setup(&f, NULL, 0);
    f.srv.zeros_len = 1 << 20;
    f.user.pause_at = 256 * 1024;
    uv_timer_init(&f.loop, &f.user.resume_timer);
    f.user.resume_timer.data = &f.user;
    start(&f, f.srv.port);
    CHECK(run_until_finished(&f));
    CHECK_INT(f.user.err, 0);
    CHECK_INT(f.user.total, 1 << 20);
    CHECK_INT(f.user.paused, 2);
    CHECK(f.user.max_chunk > f.bufs.size); /* large reads before the pause */
    CHECK(f.user.after_resume > 0 && f.user.after_resume <= f.bufs.size);
    uv_close((uv_handle_t *)&f.user.resume_timer, NULL);
    teardown(&f);
}

/* Nobody listens: on_connected reports connect_refused with a message. */
static void test_connect_refused(void)
{
    fixture_t f;
    int port;
    setup(&f, NULL, 0);
    port = f.srv.port;
    uv_close((uv_handle_t *)&f.srv.listener, NULL);
    uv_run(&f.loop, UV_RUN_NOWAIT);
    uv_tcp_init(&f.loop, &f.srv.listener); /* server_stop() closes it again */
    start(&f, port);
    CHECK(run_until_finished(&f));
    CHECK_INT(f.user.err, ERR_CONNECT_REFUSED);
    CHECK(strstr(f.user.msg, "connect to 127.0.0.1 port") != NULL);
    CHECK_STR(f.user.trace, "detach connected");
    CHECK_INT(f.actives, 0);
    CHECK_INT(f.closings, 1);
    teardown(&f);
}

int main(void)
{
    static const test_case_t cases[] = {
        TEST_CASE(test_reusable_response),
        TEST_CASE(test_head_is_copied_when_not_sent_at_once),
        TEST_CASE(test_truncated),
        TEST_CASE(test_refusal_reason),
        TEST_CASE(test_close_inside_callback),
        TEST_CASE(test_connect_refused),
        TEST_CASE(test_large_reads),
        TEST_CASE(test_pause_resets_large_reads),
    };
    if (mem_install() != 0)
        return 1;
    return test_main(cases, sizeof(cases) / sizeof(cases[0]));
}
