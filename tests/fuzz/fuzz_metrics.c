/* libFuzzer target: the metrics endpoint's request parser, through a real
 * TCP connection.
 *
 * Set up once: a daemon_t and the real metrics server on 127.0.0.1, port 0.
 * Per input: a client inside this process connects, writes the input (any
 * bytes: request heads, pipelined requests, garbage), shuts its sending side
 * down and reads until the server closes. Checks:
 *  - whatever the server sent is a sequence of complete HTTP/1.1 responses
 *    (status line, Content-Length, that many body bytes) and nothing else;
 *  - the server closes the connection after the client's EOF (it must not
 *    hang on a partial request: bounded at 5 s);
 *  - afterwards no metrics client is left and fetchd's heap is back where
 *    it was.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "mem.h"
#include "metrics.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define SETTLE_LIMIT_MS 5000

static struct {
    daemon_t d;
    metrics_t m;
    uv_timer_t watchdog;
    uv_tcp_t client;
    uv_connect_t connect;
    uv_write_t write;
    uv_shutdown_t shutdown;
    int connected, eof, closed;
    char *in;
    size_t len, cap;
    char rbuf[65536];
    uint64_t ticks;
} fz;

static void on_handle_closed(uv_handle_t *h)
{
    (void)h;
}

static void teardown(void)
{
    uint64_t fetchd;
    int loop_rc, leaked = 0;

    uv_close((uv_handle_t *)&fz.watchdog, on_handle_closed);
    metrics_close(&fz.m);
    daemon_close(&fz.d);
    uv_run(&fz.d.loop, UV_RUN_DEFAULT);
    loop_rc = daemon_dispose(&fz.d);
    for (int t = 0; t < STATS_OBJ__COUNT; t++)
        leaked |= fz.d.stats.objects[t] != 0;
    mem_get(MEM_FETCHD, &fetchd, NULL);
    free(fz.in);
    if (loop_rc != 0 || leaked || fetchd != 0) {
        fprintf(stderr,
                "fuzz_metrics: teardown: loop_close=%d objects left=%d fetchd blocks=%llu\n",
                loop_rc, leaked, (unsigned long long)fetchd);
        abort();
    }
}

static void setup(void)
{
    daemon_config_t cfg;
    char err[512];

    signal(SIGPIPE, SIG_IGN);
    if (mem_install() != 0)
        abort();
    daemon_config_init(&cfg);
    cfg.log_level = LOG_LEVEL_ERROR;
    if (daemon_init(&fz.d, &cfg, err, sizeof(err)) != 0 ||
        metrics_start(&fz.m, &fz.d, NULL, "127.0.0.1:0", err, sizeof(err)) != 0) {
        fprintf(stderr, "fuzz_metrics: %s\n", err);
        abort();
    }
    uv_timer_init(&fz.d.loop, &fz.watchdog);
    atexit(teardown);
}

static void on_watchdog(uv_timer_t *t)
{
    (void)t;
    fz.ticks++;
}

static void run_while(int (*busy)(void), const char *what)
{
    fz.ticks = 0;
    uv_timer_start(&fz.watchdog, on_watchdog, 10, 10);
    while (busy()) {
        if (fz.ticks * 10 > SETTLE_LIMIT_MS) {
            fprintf(stderr, "fuzz_metrics: %s (clients=%u)\n", what, fz.m.nclients);
            abort();
        }
        uv_run(&fz.d.loop, UV_RUN_ONCE);
    }
    uv_timer_stop(&fz.watchdog);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)h;
    (void)hint;
    *b = uv_buf_init(fz.rbuf, sizeof(fz.rbuf));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    if (n < 0) {
        fz.eof = 1;
        uv_read_stop(s);
        return;
    }
    if (fz.len + (size_t)n > fz.cap) {
        size_t cap = fz.cap ? fz.cap : 65536;
        while (cap < fz.len + (size_t)n)
            cap *= 2;
        if ((fz.in = realloc(fz.in, cap)) == NULL)
            abort();
        fz.cap = cap;
    }
    memcpy(fz.in + fz.len, b->base, (size_t)n);
    fz.len += (size_t)n;
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)req;
    (void)status;
}

static void on_written(uv_write_t *w, int status)
{
    (void)w;
    (void)status;
}

static void on_connect(uv_connect_t *req, int status)
{
    fz.connected = 1;
    if (status != 0 || uv_read_start(req->handle, on_alloc, on_read) != 0)
        fz.eof = 1;
}

static void on_client_closed(uv_handle_t *h)
{
    (void)h;
    fz.closed = 1;
}

static int connecting(void)
{
    return !fz.connected;
}

static int reading(void)
{
    return !fz.eof;
}

static int closing(void)
{
    return !fz.closed || fz.m.nclients > 0;
}

/* Every byte received belongs to a complete response. */
static void check_responses(void)
{
    size_t off = 0;

    while (off < fz.len) {
        const char *p = fz.in + off, *end, *cl;
        size_t left = fz.len - off, head, body;

        end = memmem(p, left, "\r\n\r\n", 4);
        if (left < 12 || memcmp(p, "HTTP/1.1 ", 9) != 0 || end == NULL) {
            fprintf(stderr, "fuzz_metrics: not a complete response head at byte %zu\n", off);
            abort();
        }
        head = (size_t)(end - p) + 4;
        cl = memmem(p, head, "Content-Length: ", 16);
        if (cl == NULL) {
            fprintf(stderr, "fuzz_metrics: a response without Content-Length\n");
            abort();
        }
        body = strtoull(cl + 16, NULL, 10);
        /* A HEAD answer has a Content-Length but no body: it is followed by
         * the next response or the end. */
        if (head + body > left || (body > 0 && memcmp(p + head, "HTTP/1.1 ", 9) == 0))
            body = 0;
        off += head + body;
    }
}

/* One connection: writes the bytes, half-closes, reads to the end. */
static void exchange(const uint8_t *data, size_t size)
{
    struct sockaddr_in sa;
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)size);

    fz.connected = fz.eof = fz.closed = 0;
    fz.len = 0;
    uv_tcp_init(&fz.d.loop, &fz.client);
    uv_ip4_addr("127.0.0.1", fz.m.port, &sa);
    uv_tcp_connect(&fz.connect, &fz.client, (struct sockaddr *)&sa, on_connect);
    run_while(connecting, "the connection was not established");
    if (!fz.eof) {
        if (size > 0)
            uv_write(&fz.write, (uv_stream_t *)&fz.client, &b, 1, on_written);
        uv_shutdown(&fz.shutdown, (uv_stream_t *)&fz.client, on_shutdown);
    }
    run_while(reading, "the server did not close after the client's EOF");
    uv_close((uv_handle_t *)&fz.client, on_client_closed);
    run_while(closing, "the server did not let go of the client");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char warm[] = "GET /metrics HTTP/1.1\r\n\r\n";
    static int ready;
    uint64_t before, after;

    if (!ready) {
        setup();
        /* The first request fills the read-buffer free list: a bounded
         * cache, not a leak. Measure from there. */
        exchange((const uint8_t *)warm, sizeof(warm) - 1);
        ready = 1;
    }
    mem_get(MEM_FETCHD, &before, NULL);
    exchange(data, size);
    check_responses();
    mem_get(MEM_FETCHD, &after, NULL);
    if (after != before || fz.d.stats.objects[STATS_OBJ_METRICS_CLIENT] != 0) {
        fprintf(stderr,
                "fuzz_metrics: left behind: metrics_client=%lld fetchd blocks %llu -> %llu\n",
                (long long)fz.d.stats.objects[STATS_OBJ_METRICS_CLIENT], (unsigned long long)before,
                (unsigned long long)after);
        abort();
    }
    return 0;
}
