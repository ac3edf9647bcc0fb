/* libFuzzer target: the whole response path of the engine.
 *
 * Each input is what a server answers: a libuv server inside this process
 * (127.0.0.1, an ephemeral port) reads the request, writes the input and
 * closes. One job fetches from it through the real daemon — DNS-free
 * connect, llhttp and fetchd's own framing checks, the sink — and then the
 * pool is emptied: whatever the bytes were, no connection, buffer or write
 * request may be left, and no job may still be running.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "mem.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct peer {
    uv_tcp_t tcp;
    uv_write_t write;
    char head[8192];
    size_t head_len;
    int answered;
} peer_t;

static daemon_t d;
static uv_tcp_t server;
static int port;
static const uint8_t *answer;
static size_t answer_len;
static int finished;
static char url[64];

static void on_peer_closed(uv_handle_t *h)
{
    free(h->data);
}

static void on_written(uv_write_t *w, int status)
{
    peer_t *p = w->data;
    (void)status;
    uv_close((uv_handle_t *)&p->tcp, on_peer_closed);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    peer_t *p = h->data;
    (void)hint;
    *b = uv_buf_init(p->head + p->head_len, (unsigned)(sizeof(p->head) - p->head_len));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    peer_t *p = s->data;
    uv_buf_t out;

    (void)b;
    if (n < 0 || p->head_len + (size_t)n >= sizeof(p->head)) {
        if (!uv_is_closing((uv_handle_t *)&p->tcp))
            uv_close((uv_handle_t *)&p->tcp, on_peer_closed);
        return;
    }
    p->head_len += (size_t)n;
    if (p->answered || memmem(p->head, p->head_len, "\r\n\r\n", 4) == NULL)
        return;
    p->answered = 1;
    uv_read_stop(s);
    out = uv_buf_init((char *)answer, (unsigned)answer_len);
    p->write.data = p;
    if (uv_write(&p->write, s, &out, 1, on_written) != 0)
        uv_close((uv_handle_t *)&p->tcp, on_peer_closed);
}

static void on_connection(uv_stream_t *srv, int status)
{
    peer_t *p;

    if (status != 0 || (p = calloc(1, sizeof(*p))) == NULL)
        return;
    uv_tcp_init(srv->loop, &p->tcp);
    p->tcp.data = p;
    if (uv_accept(srv, (uv_stream_t *)&p->tcp) != 0 ||
        uv_read_start((uv_stream_t *)&p->tcp, on_alloc, on_read) != 0)
        uv_close((uv_handle_t *)&p->tcp, on_peer_closed);
}

static void on_event(sched_t *s, job_t *j, sched_event_t ev, void *data)
{
    (void)s;
    (void)j;
    (void)data;
    if (ev == SCHED_EV_FINISHED)
        finished = 1;
}

static void setup(void)
{
    daemon_config_t cfg;
    struct sockaddr_in sa;
    struct sockaddr_storage bound;
    int len = sizeof(bound);
    char err[256];

    if (mem_install() != 0)
        abort();
    daemon_config_init(&cfg);
    cfg.retain_jobs = 0; /* a finished job goes at once */
    if (daemon_init(&d, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "fuzz_response: %s\n", err);
        abort();
    }
    d.sched.on_event = on_event;
    uv_tcp_init(&d.loop, &server);
    uv_ip4_addr("127.0.0.1", 0, &sa);
    if (uv_tcp_bind(&server, (struct sockaddr *)&sa, 0) != 0 ||
        uv_listen((uv_stream_t *)&server, 128, on_connection) != 0)
        abort();
    uv_tcp_getsockname(&server, (struct sockaddr *)&bound, &len);
    port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", port);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    job_spec_t spec;
    job_t *j;
    char err[256];

    if (!ready) {
        setup();
        ready = 1;
    }
    answer = data;
    answer_len = size;
    job_spec_init(&spec);
    spec.url = mem_strdup(url);
    spec.sha256 = 1;
    spec.max_body = 1 << 20;
    spec.total_timeout_ms = 2000; /* a truncated answer must not hang the run */
    finished = 0;
    if (sched_submit(&d.sched, &spec, &j, err, sizeof(err)) != 0)
        abort();
    while (!finished)
        uv_run(&d.loop, UV_RUN_ONCE);
    /* Whatever the answer was, nothing may be held once the pool is empty. */
    pool_close_idle(&d.pool, STATS_CLOSE_SHUTDOWN);
    while (d.pool.nconns > 0 || d.stats.objects[STATS_OBJ_CONN] > 0 ||
           d.stats.objects[STATS_OBJ_JOB] > 0)
        uv_run(&d.loop, UV_RUN_ONCE);
    if (d.bufs.in_use != 0 || d.stats.objects[STATS_OBJ_REQUEST] != 0 || d.sched.nrunning != 0)
        abort();
    return 0;
}
