/* libFuzzer target: the control socket, through a real client connection.
 *
 * Each input is what a client writes to the control socket: any bytes,
 * usually JSON-RPC lines and batches. Set up once: a daemon_t, the real
 * control server on a Unix socket in a temporary directory, an HTTP server
 * inside this process (127.0.0.1, ephemeral port: it answers every request
 * "200 ok" and closes), and one subscriber client that subscribed to every
 * event of every job and reads (and discards) all it is sent.
 *
 * Per input: the two bytes "$S" in it become "127.0.0.1:PORT" (the HTTP
 * server), so jobs the input submits run and finish, and "$J" and "$K"
 * become the ids of the next two jobs submitted, so it can wait on them
 * (inside a batch too), cancel them or follow them; a new client connects,
 * writes the input, then a newline and a sentinel request, and reads until
 * the sentinel's answer arrives or the server closes it. Jobs are then run
 * to their end (events fan out to the subscriber and to the input's own
 * subscriptions and waits), the client disconnects, and the target checks
 * that the server let go of it: no wait, write request or subscription of
 * its own is left, no job is queued or running, and (at exit, after
 * teardown) every count and heap block is back at zero.
 *
 * sandbox.c keeps every connection and name lookup on loopback.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "control.h"
#include "daemon.h"
#include "mem.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* sandbox.c: the one loopback TCP port connections may reach. */
extern int fuzz_sandbox_port;

#define SETTLE_LIMIT_MS 5000
#define SENTINEL        "\n{\"jsonrpc\":\"2.0\",\"id\":\"fz-end\",\"method\":\"version\"}\n"
#define SENTINEL_ANSWER "\"id\":\"fz-end\""

/* A client of the control socket inside this process. */
typedef struct client {
    uv_pipe_t pipe;
    uv_connect_t connect;
    uv_write_t write;
    int connected, eof, closed;
    char *in; /* what it received (the input's client only) */
    size_t len, cap;
    int keep; /* 1: keep what arrives; 0: discard */
} client_t;

/* An accepted connection of the in-process HTTP server. */
typedef struct peer {
    uv_tcp_t tcp;
    uv_write_t write;
    char req[4096];
    int answered;
} peer_t;

static struct {
    daemon_t d;
    control_t ctl;
    uv_tcp_t server;
    uv_timer_t watchdog;
    char dir[64], sock[96], host[32];
    client_t sub;   /* the subscriber */
    client_t input; /* the current input's client */
    char rbuf[65536];
    unsigned peers;
    uint64_t ticks;
} fz;

static const char answer[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

/* ---- the HTTP server -------------------------------------------------------------- */

static void on_peer_closed(uv_handle_t *h)
{
    free(h->data);
    fz.peers--;
}

static void peer_close(peer_t *p)
{
    if (!uv_is_closing((uv_handle_t *)&p->tcp))
        uv_close((uv_handle_t *)&p->tcp, on_peer_closed);
}

static void on_peer_written(uv_write_t *w, int status)
{
    (void)status;
    peer_close(w->data);
}

static void on_peer_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    peer_t *p = h->data;
    (void)hint;
    *b = uv_buf_init(p->req, sizeof(p->req));
}

static void on_peer_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    peer_t *p = s->data;
    uv_buf_t out = uv_buf_init((char *)answer, sizeof(answer) - 1);

    (void)b;
    if (n < 0) {
        peer_close(p);
        return;
    }
    if (n == 0 || p->answered)
        return;
    p->answered = 1;
    uv_read_stop(s);
    p->write.data = p;
    if (uv_write(&p->write, s, &out, 1, on_peer_written) != 0)
        peer_close(p);
}

static void on_http_connection(uv_stream_t *srv, int status)
{
    peer_t *p;

    if (status != 0 || (p = calloc(1, sizeof(*p))) == NULL)
        return;
    uv_tcp_init(srv->loop, &p->tcp);
    p->tcp.data = p;
    fz.peers++;
    if (uv_accept(srv, (uv_stream_t *)&p->tcp) != 0 ||
        uv_read_start((uv_stream_t *)&p->tcp, on_peer_alloc, on_peer_read) != 0)
        peer_close(p);
}

static void start_http(void)
{
    struct sockaddr_in sa;
    struct sockaddr_storage bound;
    int len = sizeof(bound);

    uv_tcp_init(&fz.d.loop, &fz.server);
    uv_ip4_addr("127.0.0.1", 0, &sa);
    if (uv_tcp_bind(&fz.server, (struct sockaddr *)&sa, 0) != 0 ||
        uv_listen((uv_stream_t *)&fz.server, 128, on_http_connection) != 0 ||
        uv_tcp_getsockname(&fz.server, (struct sockaddr *)&bound, &len) != 0)
        abort();
    fuzz_sandbox_port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    snprintf(fz.host, sizeof(fz.host), "127.0.0.1:%d", fuzz_sandbox_port);
}

/* ---- control clients ---------------------------------------------------------------- */

static void on_client_closed(uv_handle_t *h)
{
    client_t *c = h->data;
    c->closed = 1;
}

static void on_client_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)h;
    (void)hint;
    *b = uv_buf_init(fz.rbuf, sizeof(fz.rbuf));
}

static void on_client_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    client_t *c = s->data;

    if (n < 0) {
        c->eof = 1;
        uv_read_stop(s);
        return;
    }
    if (!c->keep || n == 0)
        return;
    if (c->len + (size_t)n > c->cap) {
        size_t cap = c->cap ? c->cap : 65536;
        while (cap < c->len + (size_t)n)
            cap *= 2;
        if ((c->in = realloc(c->in, cap)) == NULL)
            abort();
        c->cap = cap;
    }
    memcpy(c->in + c->len, b->base, (size_t)n);
    c->len += (size_t)n;
}

static void on_client_connect(uv_connect_t *req, int status)
{
    client_t *c = req->data;
    if (status != 0 || uv_read_start(req->handle, on_client_alloc, on_client_read) != 0)
        c->eof = 1;
    c->connected = 1;
}

static void on_client_written(uv_write_t *w, int status)
{
    (void)status;
    free(w->data);
}

static void on_watchdog(uv_timer_t *t)
{
    (void)t;
    fz.ticks++;
}

/* Runs the loop while busy() is true; aborts after SETTLE_LIMIT_MS. */
static void run_while(int (*busy)(void), const char *what)
{
    fz.ticks = 0;
    uv_timer_start(&fz.watchdog, on_watchdog, 10, 10);
    while (busy()) {
        if (fz.ticks * 10 > SETTLE_LIMIT_MS) {
            fprintf(stderr, "fuzz_control: %s (queued=%zu running=%zu clients=%u)\n", what,
                    fz.d.sched.nqueued, fz.d.sched.nrunning, fz.ctl.nclients);
            abort();
        }
        uv_run(&fz.d.loop, UV_RUN_ONCE);
    }
    uv_timer_stop(&fz.watchdog);
}

static client_t *connecting;

static int not_connected(void)
{
    return !connecting->connected;
}

static void client_open(client_t *c, int keep)
{
    memset(c, 0, sizeof(*c));
    c->keep = keep;
    uv_pipe_init(&fz.d.loop, &c->pipe, 0);
    c->pipe.data = c;
    c->connect.data = c;
    uv_pipe_connect(&c->connect, &c->pipe, fz.sock, on_client_connect);
    connecting = c;
    run_while(not_connected, "a client did not connect");
}

/* Writes len bytes (taking the malloc'd buffer p). */
static void client_send(client_t *c, char *p, size_t len)
{
    uv_buf_t b = uv_buf_init(p, (unsigned)len);
    c->write.data = p;
    if (c->eof || uv_write(&c->write, (uv_stream_t *)&c->pipe, &b, 1, on_client_written) != 0) {
        free(p);
        c->eof = 1;
    }
}

static int awaiting_sentinel(void)
{
    client_t *c = &fz.input;
    return !c->eof && (c->len == 0 ||
                       memmem(c->in, c->len, SENTINEL_ANSWER, sizeof(SENTINEL_ANSWER) - 1) == NULL);
}

static int jobs_busy(void)
{
    return fz.d.sched.nqueued + fz.d.sched.nrunning > 0;
}

static int input_open(void)
{
    return !fz.input.closed;
}

/* Up to the server's count of clients dropping to the subscriber alone. */
static int server_holds_input(void)
{
    return fz.ctl.nclients > 1 || fz.peers > 0;
}

/* ---- setup and teardown ------------------------------------------------------------- */

static void on_event(sched_t *s, job_t *j, sched_event_t ev, void *data)
{
    (void)data;
    control_on_event(s, j, ev, &fz.ctl);
}

static void on_handle_closed(uv_handle_t *h)
{
    (void)h;
}

static void teardown(void)
{
    uint64_t blocks[MEM__COUNT];
    int loop_rc, leaked = 0;

    uv_close((uv_handle_t *)&fz.sub.pipe, on_client_closed);
    uv_close((uv_handle_t *)&fz.server, on_handle_closed);
    uv_close((uv_handle_t *)&fz.watchdog, on_handle_closed);
    control_close(&fz.ctl);
    daemon_close(&fz.d);
    uv_run(&fz.d.loop, UV_RUN_DEFAULT);
    loop_rc = daemon_dispose(&fz.d);
    for (int t = 0; t < STATS_OBJ__COUNT; t++) {
        if (fz.d.stats.objects[t] != 0) {
            fprintf(stderr, "fuzz_control: teardown left %s=%lld\n", stats_obj_label(t),
                    (long long)fz.d.stats.objects[t]);
            leaked = 1;
        }
    }
    for (int c = 0; c < MEM__COUNT; c++)
        mem_get(c, &blocks[c], NULL);
    free(fz.input.in);
    rmdir(fz.dir);
    if (loop_rc != 0 || leaked || blocks[MEM_FETCHD] != 0 || blocks[MEM_LIBUV] != 0) {
        fprintf(
            stderr, "fuzz_control: teardown: loop_close=%d heap blocks fetchd=%llu libuv=%llu\n",
            loop_rc, (unsigned long long)blocks[MEM_FETCHD], (unsigned long long)blocks[MEM_LIBUV]);
        abort();
    }
}

static void setup(void)
{
    static const char subscribe[] = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"subscribe\"}\n";
    daemon_config_t cfg;
    char err[512], *line;

    signal(SIGPIPE, SIG_IGN);
    if (mem_install() != 0)
        abort();
    snprintf(fz.dir, sizeof(fz.dir), "/tmp/fetchd-fuzz-control-XXXXXX");
    if (mkdtemp(fz.dir) == NULL)
        abort();
    snprintf(fz.sock, sizeof(fz.sock), "%s/c.sock", fz.dir);
    daemon_config_init(&cfg);
    cfg.retain_jobs = 16; /* status, wait and list find finished jobs, within a bound */
    cfg.log_level = LOG_LEVEL_ERROR;
    if (daemon_init(&fz.d, &cfg, err, sizeof(err)) != 0 ||
        control_start(&fz.ctl, &fz.d, fz.sock, err, sizeof(err)) != 0) {
        fprintf(stderr, "fuzz_control: %s\n", err);
        abort();
    }
    /* Silence: inputs make the server log warnings by the thousand. */
    log_set_level((log_level_t)(LOG_LEVEL_ERROR - 1));
    fz.d.sched.on_event = on_event;
    fz.d.sched.env.retry.base_ms = 1;
    fz.d.sched.env.retry.max_ms = 1;
    fz.d.sched.env.retry.after_max_ms = 1;
    uv_timer_init(&fz.d.loop, &fz.watchdog);
    start_http();
    client_open(&fz.sub, 0);
    line = strdup(subscribe);
    if (line == NULL)
        abort();
    client_send(&fz.sub, line, sizeof(subscribe) - 1);
    atexit(teardown);
}

/* The input with every "$S" replaced by the HTTP server's host:port, and
 * "$J" / "$K" by the ids the next two jobs submitted will get (so an input
 * can wait on, cancel or follow the jobs it submits), then the sentinel; a
 * new malloc'd buffer. */
static char *expand(const uint8_t *data, size_t size, size_t *len)
{
    char ids[2][24];
    size_t hl = strlen(fz.host), n = 0;
    char *out = malloc(size * (hl > 16 ? hl : 16) + sizeof(SENTINEL));

    if (out == NULL)
        abort();
    for (int k = 0; k < 2; k++)
        snprintf(ids[k], sizeof(ids[k]), "%08llx%08llx", (unsigned long long)fz.d.sched.id_prefix,
                 (unsigned long long)((fz.d.sched.next_seq + 1 + (uint64_t)k) & 0xffffffffu));
    for (size_t i = 0; i < size; i++) {
        const char *sub = NULL;
        if (data[i] == '$' && i + 1 < size)
            sub = data[i + 1] == 'S'   ? fz.host
                  : data[i + 1] == 'J' ? ids[0]
                  : data[i + 1] == 'K' ? ids[1]
                                       : NULL;
        if (sub) {
            memcpy(out + n, sub, strlen(sub));
            n += strlen(sub);
            i++;
        } else {
            out[n++] = (char)data[i];
        }
    }
    memcpy(out + n, SENTINEL, sizeof(SENTINEL) - 1);
    *len = n + sizeof(SENTINEL) - 1;
    return out;
}

static void check_clean(void)
{
    const stats_t *st = &fz.d.stats;

    /* The subscriber's subscription is the only one; no wait is left, no
     * job is queued or running. */
    if (st->objects[STATS_OBJ_CTL_SUB] != 1 || st->objects[STATS_OBJ_CTL_WAIT] != 0 ||
        st->objects[STATS_OBJ_CTL_CLIENT] != 1 || fz.d.sched.nqueued || fz.d.sched.nrunning) {
        fprintf(
            stderr,
            "fuzz_control: left behind: ctl_subscription=%lld ctl_wait=%lld ctl_client=%lld "
            "queued=%zu running=%zu\n",
            (long long)st->objects[STATS_OBJ_CTL_SUB], (long long)st->objects[STATS_OBJ_CTL_WAIT],
            (long long)st->objects[STATS_OBJ_CTL_CLIENT], fz.d.sched.nqueued, fz.d.sched.nrunning);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    client_t *c = &fz.input;
    size_t len;
    char *text;

    if (size > 256 * 1024)
        return -1; /* below the 1 MiB line limit; longer inputs only slow the run */
    if (!ready) {
        setup();
        ready = 1;
    }
    client_open(c, 1);
    text = expand(data, size, &len);
    client_send(c, text, len);
    run_while(awaiting_sentinel, "the sentinel request was never answered");
    /* Jobs the input submitted run to their end: events fan out. */
    run_while(jobs_busy, "jobs did not finish");
    uv_close((uv_handle_t *)&c->pipe, on_client_closed);
    run_while(input_open, "the client did not close");
    run_while(server_holds_input, "the server did not let go of the client");
    pool_close_idle(&fz.d.pool, STATS_CLOSE_SHUTDOWN);
    check_clean();
    free(c->in);
    c->in = NULL;
    return 0;
}
