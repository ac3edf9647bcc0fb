/* libFuzzer target: the whole response path of the engine.
 *
 * Each input is what a server answers. A libuv server inside this process
 * (127.0.0.1, an ephemeral port, started once) answers every connection with
 * the input's bytes as soon as the request arrives, then closes. One job per
 * input fetches from it through the real daemon: connect, request, llhttp and
 * fetchd's own framing checks, redirects and retries back to the same server,
 * the sink. Afterwards the idle pool is emptied and the target checks that
 * nothing is left: no connection, origin, write request, buffer in use,
 * TLS context, job or running job, whatever the bytes were.
 *
 * Input layout (README.md): byte 0 selects job options; in byte 1, bit 7
 * makes the URL https (the answer then meets the TLS handshake), bit 6 makes
 * the job decode content codings, and bits 0-5 are an allocation-failure point (0: none; n: the
 * n-th fetchd allocation after the job was submitted fails); the rest is the server's answer.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon.h"
#include "mem.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Option bits of byte 0. */
#define OPT_HEAD         0x01 /* a HEAD request: no body may be read */
#define OPT_SMALL_BODY   0x02 /* max_body 16: body_too_large */
#define OPT_FAIL         0x04 /* --fail: 4xx/5xx fail the job */
#define OPT_OUTPUT_SHIFT 3    /* bits 3-4: discard, inline, file, inline capped at 16 */
#define OPT_SHA_MISMATCH 0x20 /* expect the digest of "": checksum_mismatch */
#define OPT_NO_REDIRECTS 0x40 /* max_redirects 0 (else 3) */
#define OPT_RETRY        0x80 /* one retry, with a 1 ms backoff */

/* Bits of byte 1. */
#define OPT_HTTPS     0x80
#define OPT_DECODE    0x40 /* the job decodes content codings (gzip, deflate, br, zstd) */
#define OPT_FAIL_MASK 0x3f

/* How long the engine may take to give everything back after a job. */
#define SETTLE_LIMIT_MS 5000

static const char empty_sha256[] =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/* One accepted connection of the in-process server. */
typedef struct peer {
    uv_tcp_t tcp;
    uv_write_t write;
    char req[4096]; /* the request is read and ignored */
    int answered;
} peer_t;

/* Everything the target keeps between inputs: LLVMFuzzerTestOneInput has no
 * context argument, so it is one static struct. */
static struct {
    daemon_t d;
    uv_tcp_t server;
    uv_timer_t watchdog;
    char url[64];       /* http://127.0.0.1:PORT/f */
    char https_url[64]; /* the same over TLS */
    char download_dir[64];
    const uint8_t *answer; /* borrowed: the current input */
    size_t answer_len;
    unsigned peers;  /* accepted connections not yet closed */
    int finished;    /* the current job reported SCHED_EV_FINISHED */
    int verbose;     /* FUZZ_RESPONSE_VERBOSE is set */
    uint64_t ticks;  /* watchdog ticks while waiting for the engine */
    char output[96]; /* the file a file-output job writes, removed after it */
} fz;

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

/* Answers at the first bytes of the request, not at the end of its head: a
 * TLS ClientHello (an https job) has no head, and answering early is
 * harmless for plain requests. */
static void on_peer_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    peer_t *p = s->data;
    uv_buf_t out;

    (void)b;
    if (n < 0) {
        peer_close(p);
        return;
    }
    if (n == 0 || p->answered)
        return;
    p->answered = 1;
    uv_read_stop(s);
    out = uv_buf_init((char *)fz.answer, (unsigned)fz.answer_len);
    p->write.data = p;
    if (fz.answer_len == 0 || uv_write(&p->write, s, &out, 1, on_peer_written) != 0)
        peer_close(p);
}

static void on_connection(uv_stream_t *srv, int status)
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

/* With FUZZ_RESPONSE_VERBOSE set, each job's outcome goes to stderr: how
 * to see what an input does (README.md). */
static void on_event(sched_t *s, job_t *j, sched_event_t ev, void *data)
{
    (void)s;
    (void)data;
    if (ev != SCHED_EV_FINISHED)
        return;
    fz.finished = 1;
    if (fz.verbose)
        fprintf(stderr, "fuzz_response: %s http_status=%d bytes=%llu attempts=%u redirects=%u %s\n",
                job_state_name(j->state), j->http_status, (unsigned long long)j->bytes, j->attempts,
                j->redirects, j->error_msg);
}

static void on_watchdog(uv_timer_t *t)
{
    (void)t;
    fz.ticks++;
}

static void start_server(void)
{
    struct sockaddr_in sa;
    struct sockaddr_storage bound;
    int len = sizeof(bound), port;

    uv_tcp_init(&fz.d.loop, &fz.server);
    uv_ip4_addr("127.0.0.1", 0, &sa);
    if (uv_tcp_bind(&fz.server, (struct sockaddr *)&sa, 0) != 0 ||
        uv_listen((uv_stream_t *)&fz.server, 128, on_connection) != 0 ||
        uv_tcp_getsockname(&fz.server, (struct sockaddr *)&bound, &len) != 0)
        abort();
    port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    snprintf(fz.url, sizeof(fz.url), "http://127.0.0.1:%d/f", port);
    snprintf(fz.https_url, sizeof(fz.https_url), "https://127.0.0.1:%d/f", port);
}

static void on_handle_closed(uv_handle_t *h)
{
    (void)h;
}

/* At exit, the daemon's own teardown must release everything every input
 * left in its caches (DNS answers, TLS configurations and sessions, free
 * buffers): the same check the integration harness makes, here after up to
 * millions of hostile responses. */
static void teardown(void)
{
    uint64_t blocks[MEM__COUNT];
    int loop_rc, leaked = 0;

    uv_close((uv_handle_t *)&fz.server, on_handle_closed);
    uv_close((uv_handle_t *)&fz.watchdog, on_handle_closed);
    daemon_close(&fz.d);
    uv_run(&fz.d.loop, UV_RUN_DEFAULT);
    loop_rc = daemon_dispose(&fz.d);
    for (int t = 0; t < STATS_OBJ__COUNT; t++) {
        if (fz.d.stats.objects[t] != 0) {
            fprintf(stderr, "fuzz_response: teardown left %s=%lld\n", stats_obj_label(t),
                    (long long)fz.d.stats.objects[t]);
            leaked = 1;
        }
    }
    for (int c = 0; c < MEM__COUNT; c++)
        mem_get(c, &blocks[c], NULL);
    unlink(fz.output);
    rmdir(fz.download_dir);
    if (loop_rc != 0 || leaked || blocks[MEM_FETCHD] != 0 || blocks[MEM_LIBUV] != 0) {
        fprintf(
            stderr, "fuzz_response: teardown: loop_close=%d heap blocks fetchd=%llu libuv=%llu\n",
            loop_rc, (unsigned long long)blocks[MEM_FETCHD], (unsigned long long)blocks[MEM_LIBUV]);
        abort();
    }
}

static void setup(void)
{
    daemon_config_t cfg;
    char err[256];

    fz.verbose = getenv("FUZZ_RESPONSE_VERBOSE") != NULL;
    signal(SIGPIPE, SIG_IGN); /* as main.c: a write to a closed socket is an error, not death */
    if (mem_install() != 0)
        abort();
    snprintf(fz.download_dir, sizeof(fz.download_dir), "/tmp/fetchd-fuzz-XXXXXX");
    if (mkdtemp(fz.download_dir) == NULL)
        abort();
    snprintf(fz.output, sizeof(fz.output), "%s/out", fz.download_dir);
    daemon_config_init(&cfg);
    cfg.retain_jobs = 0; /* a finished job goes at once */
    cfg.download_dir = mem_strdup(fz.download_dir);
    cfg.log_level = LOG_LEVEL_ERROR;
    if (daemon_init(&fz.d, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "fuzz_response: %s\n", err);
        abort();
    }
    fz.d.sched.on_event = on_event;
    /* Retries and Retry-After must not make the run wait. */
    fz.d.sched.env.retry.base_ms = 1;
    fz.d.sched.env.retry.max_ms = 1;
    fz.d.sched.env.retry.after_max_ms = 1;
    uv_timer_init(&fz.d.loop, &fz.watchdog);
    start_server();
    atexit(teardown);
}

static void set_output(job_spec_t *spec, unsigned mode)
{
    switch (mode) {
    case 1:
        spec->output = JOB_OUTPUT_INLINE;
        break;
    case 2:
        spec->output = JOB_OUTPUT_FILE;
        spec->output_path = mem_strdup("out");
        break;
    case 3:
        spec->output = JOB_OUTPUT_INLINE;
        spec->inline_max = 16;
        break;
    default:
        break;
    }
}

static void make_spec(job_spec_t *spec, uint8_t opts, uint8_t opts2)
{
    int https = !!(opts2 & OPT_HTTPS);

    job_spec_init(spec);
    spec->url = mem_strdup(https ? fz.https_url : fz.url);
    if (opts & OPT_HEAD)
        spec->method = mem_strdup("HEAD");
    spec->sha256 = 1;
    spec->max_body = (opts & OPT_SMALL_BODY) ? 16 : 1 << 20;
    spec->fail_on_http_error = !!(opts & OPT_FAIL);
    set_output(spec, (opts >> OPT_OUTPUT_SHIFT) & 3);
    if (opts & OPT_SHA_MISMATCH)
        spec->expected_sha256 = mem_strdup(empty_sha256);
    spec->max_redirects = (opts & OPT_NO_REDIRECTS) ? 0 : 3;
    spec->retries = (opts & OPT_RETRY) ? 1 : 0;
    spec->decode = (opts2 & OPT_DECODE) ? 1 : -1;
    /* A server that answers and closes ends every exchange at once; this
     * only bounds redirects to hosts that need a DNS answer. */
    spec->total_timeout_ms = 1000;
}

/* 1 while the engine still holds something the finished job used. */
static int engine_busy(void)
{
    const stats_t *st = &fz.d.stats;

    return st->objects[STATS_OBJ_CONN] || st->objects[STATS_OBJ_JOB] ||
           st->objects[STATS_OBJ_ORIGIN] || st->objects[STATS_OBJ_REQUEST] ||
           st->objects[STATS_OBJ_TLS_CONTEXT] || fz.d.pool.nconns || fz.peers;
}

static void report_stuck(const char *what)
{
    const stats_t *st = &fz.d.stats;

    fprintf(stderr,
            "fuzz_response: %s: conn=%lld job=%lld origin=%lld request=%lld "
            "tls_context=%lld buffers_in_use=%zu pool_conns=%u running=%zu queued=%zu "
            "peers=%u\n",
            what, (long long)st->objects[STATS_OBJ_CONN], (long long)st->objects[STATS_OBJ_JOB],
            (long long)st->objects[STATS_OBJ_ORIGIN], (long long)st->objects[STATS_OBJ_REQUEST],
            (long long)st->objects[STATS_OBJ_TLS_CONTEXT], fz.d.bufs.in_use, fz.d.pool.nconns,
            fz.d.sched.nrunning, fz.d.sched.nqueued, fz.peers);
    abort();
}

/* Runs the loop while busy() is true, or aborts after SETTLE_LIMIT_MS. */
static void run_while(int (*busy)(void), const char *what)
{
    fz.ticks = 0;
    uv_timer_start(&fz.watchdog, on_watchdog, 10, 10);
    while (busy()) {
        if (fz.ticks * 10 > SETTLE_LIMIT_MS)
            report_stuck(what);
        uv_run(&fz.d.loop, UV_RUN_ONCE);
    }
    uv_timer_stop(&fz.watchdog);
}

static int job_running(void)
{
    return !fz.finished;
}

static void check_clean(void)
{
    const stats_t *st = &fz.d.stats;

    if (fz.d.bufs.in_use != 0 || st->objects[STATS_OBJ_BUFFER] != (int64_t)fz.d.bufs.nfree ||
        fz.d.sched.nrunning != 0 || fz.d.sched.nqueued != 0 || fz.d.sched.nretained != 0 ||
        fz.d.pool.nconnecting || fz.d.pool.nactive || fz.d.pool.nidle)
        report_stuck("left behind after the job");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    job_spec_t spec;
    job_t *j;
    char err[256];

    if (size < 2)
        return 0;
    if (!ready) {
        setup();
        ready = 1;
    }
    fz.answer = data + 2;
    fz.answer_len = size - 2;
    fz.finished = 0;
    make_spec(&spec, data[0], data[1]);
    if (sched_submit(&fz.d.sched, &spec, &j, err, sizeof(err)) != 0) {
        fprintf(stderr, "fuzz_response: submit: %s\n", err);
        abort();
    }
    mem_fail_after(data[1] & OPT_FAIL_MASK);
    run_while(job_running, "the job did not finish");
    mem_fail_after(0);
    /* Whatever the answer was, nothing may be held once the pool is empty. */
    pool_close_idle(&fz.d.pool, STATS_CLOSE_SHUTDOWN);
    run_while(engine_busy, "the engine did not let go");
    check_clean();
    unlink(fz.output); /* the next file-output job must not find it there */
    return 0;
}
