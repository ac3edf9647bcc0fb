/* fetchd-harness — runs a script of jobs through the real engine (the same
 * struct daemon fetchd runs) and prints what happened as JSON lines, so the
 * integration tests can drive the engine against real servers. The protocol
 * is documented in tests/integration/README.md.
 *
 * At the end it tears the engine down completely and checks that every live
 * object count and fetchd's own heap are back at zero: exit status 1 if not.
 */
#include <getopt.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "control.h"
#include "daemon.h"
#include "err.h"
#include "jobspec.h"
#include "mem.h"
#include "metrics.h"
#include "state.h"

#ifdef HARNESS_MBEDTLS_ALLOC
#include <stdatomic.h>

/* fetchd-harness-mbedtls links mbedTLS from copies of Debian's static
 * archives in which every reference to calloc and free was renamed to the
 * two functions below (CMakeLists.txt, objcopy --redefine-sym): mbedTLS's
 * allocations, and only those, are counted here and can be failed. Debian's
 * shared mbedTLS calls the C library directly and cannot be hooked. */
void *fetchd_mbedtls_calloc(size_t n, size_t size);
void fetchd_mbedtls_free(void *p);

static atomic_long mbedtls_countdown;
static atomic_long mbedtls_blocks;
static atomic_long mbedtls_calls; /* callocs since the last fail_alloc */

void *fetchd_mbedtls_calloc(size_t n, size_t size)
{
    long left = atomic_load(&mbedtls_countdown);
    void *p;

    atomic_fetch_add(&mbedtls_calls, 1);
    if (left > 0 && atomic_fetch_sub(&mbedtls_countdown, 1) == 1)
        return NULL;
    p = calloc(n, size);
    if (p)
        atomic_fetch_add(&mbedtls_blocks, 1);
    return p;
}

void fetchd_mbedtls_free(void *p)
{
    if (p)
        atomic_fetch_sub(&mbedtls_blocks, 1);
    free(p);
}

static void mbedtls_alloc_fail_after(long n)
{
    atomic_store(&mbedtls_countdown, n > 0 ? n : 0);
    if (n > 0)
        atomic_store(&mbedtls_calls, 0);
}

static int mbedtls_alloc_fail_pending(void)
{
    return atomic_load(&mbedtls_countdown) > 0;
}

static long mbedtls_alloc_blocks(void)
{
    return atomic_load(&mbedtls_blocks);
}
#endif

#define MAX_PEERS 8
/* How long one control_read or scrape may wait for its bytes. */
#define PEER_WAIT_MS 10000

struct harness;

/* An in-process client of the control socket or the metrics endpoint,
 * driven from the same loop as the engine. Its memory is the harness's
 * (plain malloc), not the engine's; libuv's bookkeeping is counted. */
typedef struct peer {
    union {
        uv_pipe_t pipe; /* control */
        uv_tcp_t tcp;   /* metrics */
    } h;
    uv_connect_t connect;
    struct harness *owner;
    int used, connected, connect_status, eof, closed;
    char *in; /* bytes received and not yet reported */
    size_t len, cap;
    char rbuf[65536];
} peer_t;

typedef struct peer_write {
    uv_write_t req;
    char *data;
} peer_write_t;

typedef struct harness {
    daemon_t d;
    job_t **jobs; /* one reference each; plain malloc: not part of the engine's heap */
    size_t njobs, cap;
    size_t finished;
    uv_timer_t sleep_timer;
    int slept;
    control_t ctl;
    int ctl_started;
    metrics_t metrics;
    int metrics_started;
    peer_t peers[MAX_PEERS]; /* control clients by number */
    peer_t scraper;          /* the metrics client of the current scrape */
} harness_t;

static void emit(json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT);
    if (s) {
        printf("%s\n", s);
        fflush(stdout);
        mem_free(s); /* jansson allocated it through the counting allocator */
    }
    json_decref(o);
}

static void on_event(sched_t *s, job_t *j, sched_event_t ev, void *data)
{
    harness_t *h = data;
    size_t index = (size_t)j->data; /* the script's index + 1; 0: not the script's job */

    if (h->ctl_started)
        control_on_event(s, j, ev, &h->ctl);
    if (ev != SCHED_EV_FINISHED)
        return;
    if (index == 0) {
        /* Submitted on the control socket or restored from a state file. */
        emit(json_pack("{s:s, s:o}", "event", "other_job", "job", jobspec_encode_job(j)));
        return;
    }
    h->finished++;
    emit(json_pack("{s:s, s:I, s:o}", "event", "job", "index", (json_int_t)(index - 1), "job",
                   jobspec_encode_job(j)));
}

static void on_deadline(int sig)
{
    static const char msg[] = "fetchd-harness: deadline passed\n";
    (void)sig;
    if (write(2, msg, sizeof(msg) - 1) < 0) {
        /* nothing more to do */
    }
    _exit(3);
}

static int job_finished(harness_t *h, size_t i)
{
    return i < h->njobs && job_is_finished(h->jobs[i]);
}

static void wait_all(harness_t *h)
{
    while (h->finished < h->njobs)
        uv_run(&h->d.loop, UV_RUN_ONCE);
}

static void on_sleep(uv_timer_t *t)
{
    harness_t *h = t->data;
    h->slept = 1;
}

/* Submits the job spec of the script line text[0, len) (an object). */
static void submit(harness_t *h, const char *text, size_t len)
{
    job_spec_t spec;
    char err[256];
    job_t *j;
    size_t index = h->njobs;
    jsonr_t r;
    int rc;

    if (h->njobs == h->cap) {
        h->cap = h->cap ? 2 * h->cap : 64;
        h->jobs = realloc(h->jobs, h->cap * sizeof(*h->jobs));
        if (h->jobs == NULL) {
            fprintf(stderr, "fetchd-harness: out of memory\n");
            exit(2);
        }
    }
    /* The script's reader is the harness's, not fetchd's: libc memory, so
     * fail_alloc counts the same allocations as before. */
    jsonr_init(&r, realloc, free);
    if (jsonr_parse(&r, text, len) != 0) {
        fprintf(stderr, "fetchd-harness: job line: %s\n", r.error[0] ? r.error : "out of memory");
        exit(2);
    }
    rc = jobspec_decode_r(&r, 0, &spec, err, sizeof(err));
    jsonr_free(&r);
    if (rc == 0)
        rc = sched_submit(&h->d.sched, &spec, &j, err, sizeof(err));
    if (rc != 0) {
        /* A rejected line still takes an index, so the script's numbering
         * stays the submission order. */
        h->jobs[h->njobs++] = NULL;
        h->finished++;
        emit(json_pack("{s:s, s:I, s:o}", "event", "rejected", "index", (json_int_t)index, "error",
                       jobspec_encode_error(rc, err)));
        return;
    }
    job_incref(j);
    j->data = (void *)(index + 1);
    h->jobs[h->njobs++] = j;
    emit(json_pack("{s:s, s:I, s:s}", "event", "submitted", "index", (json_int_t)index, "id",
                   j->id));
}

/* ---- in-process clients: the control socket and the metrics endpoint ---------- */

static void on_peer_closed(uv_handle_t *hd)
{
    peer_t *p = hd->data;
    p->closed = 1;
}

static void peer_close(peer_t *p)
{
    if (p->used && !uv_is_closing((uv_handle_t *)&p->h))
        uv_close((uv_handle_t *)&p->h, on_peer_closed);
}

static void on_peer_alloc(uv_handle_t *hd, size_t hint, uv_buf_t *b)
{
    peer_t *p = hd->data;
    (void)hint;
    *b = uv_buf_init(p->rbuf, sizeof(p->rbuf));
}

static void on_peer_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    peer_t *p = st->data;

    if (n < 0) {
        p->eof = 1;
        uv_read_stop(st);
        return;
    }
    if (p->len + (size_t)n > p->cap) {
        size_t cap = p->cap ? p->cap : 65536;
        char *in;
        while (cap < p->len + (size_t)n)
            cap *= 2;
        in = realloc(p->in, cap);
        if (in == NULL) {
            fprintf(stderr, "fetchd-harness: out of memory\n");
            exit(2);
        }
        p->in = in;
        p->cap = cap;
    }
    memcpy(p->in + p->len, b->base, (size_t)n);
    p->len += (size_t)n;
}

static void on_peer_connect(uv_connect_t *req, int status)
{
    peer_t *p = req->data;
    p->connected = 1;
    p->connect_status = status;
    if (status != 0 || uv_read_start(req->handle, on_peer_alloc, on_peer_read) != 0)
        p->eof = 1;
}

static void on_peer_write(uv_write_t *req, int status)
{
    peer_write_t *w = req->data;
    (void)status; /* a refused write shows as the server's EOF */
    free(w->data);
    free(w);
}

/* Runs the loop until done(p) or PEER_WAIT_MS pass; returns 1 on time-out. */
static int peer_run(harness_t *h, peer_t *p, int (*done)(const peer_t *p, size_t arg), size_t arg)
{
    h->slept = 0;
    uv_timer_start(&h->sleep_timer, on_sleep, PEER_WAIT_MS * (getenv("FETCHD_VALGRIND") ? 20 : 1),
                   0);
    while (!done(p, arg) && !h->slept)
        uv_run(&h->d.loop, UV_RUN_ONCE);
    uv_timer_stop(&h->sleep_timer);
    return !done(p, arg);
}

static int peer_connected(const peer_t *p, size_t arg)
{
    (void)arg;
    return p->connected;
}

static int peer_closed(const peer_t *p, size_t arg)
{
    (void)arg;
    return p->closed;
}

static size_t count_lines(const peer_t *p)
{
    size_t n = 0;
    for (size_t i = 0; i < p->len; i++)
        n += p->in[i] == '\n';
    return n;
}

static int peer_has_lines(const peer_t *p, size_t n)
{
    return p->eof || count_lines(p) >= n;
}

/* The line that answers id arg (a string) has arrived: `"id":"ARG"` at the
 * top level of a response the control server wrote compactly. */
static int peer_has_id(const peer_t *p, size_t arg)
{
    const char *id = (const char *)arg;
    char needle[80];
    int n = snprintf(needle, sizeof(needle), "\"jsonrpc\":\"2.0\",\"id\":\"%s\"", id);
    const char *hit;

    if (p->eof)
        return 1;
    hit = p->len ? memmem(p->in, p->len, needle, (size_t)n) : NULL;
    return hit && memchr(hit, '\n', p->len - (size_t)(hit - p->in)) != NULL;
}

static int peer_eof(const peer_t *p, size_t arg)
{
    (void)arg;
    return p->eof;
}

/* Writes len bytes to the peer's stream (a copy; one uv_write). */
static void peer_send(peer_t *p, const char *data, size_t len)
{
    peer_write_t *w = malloc(sizeof(*w));
    uv_buf_t b;

    if (w == NULL || (w->data = malloc(len ? len : 1)) == NULL) {
        fprintf(stderr, "fetchd-harness: out of memory\n");
        exit(2);
    }
    memcpy(w->data, data, len);
    w->req.data = w;
    b = uv_buf_init(w->data, (unsigned)len);
    if (uv_write(&w->req, (uv_stream_t *)&p->h, &b, 1, on_peer_write) != 0) {
        free(w->data);
        free(w);
        p->eof = 1;
    }
}

/* Resets p and starts connecting it; the caller runs the loop. */
static void peer_init(harness_t *h, peer_t *p)
{
    free(p->in);
    memset(p, 0, offsetof(peer_t, rbuf));
    p->owner = h;
    p->used = 1;
    p->connect.data = p;
}

/* The control client a line names ("client": 0..MAX_PEERS-1, default 0). */
static peer_t *control_peer(harness_t *h, json_t *line)
{
    json_int_t k = json_integer_value(json_object_get(line, "client"));
    return k >= 0 && k < MAX_PEERS ? &h->peers[k] : NULL;
}

/* {"cmd":"control_open","client":K}: connects client K to the control socket. */
static int cmd_control_open(harness_t *h, peer_t *p)
{
    if (p->used && !p->closed) {
        fprintf(stderr, "fetchd-harness: control_open: client in use\n");
        return -1;
    }
    peer_init(h, p);
    if (!h->ctl_started) {
        /* control_start failed (allocation failure tests): nothing to talk to. */
        p->used = 0;
        emit(json_pack("{s:s, s:I, s:b, s:s}", "event", "control_open", "client",
                       (json_int_t)(p - h->peers), "ok", 0, "status", "no control socket"));
        return 0;
    }
    uv_pipe_init(&h->d.loop, &p->h.pipe, 0);
    p->h.pipe.data = p;
    uv_pipe_connect(&p->connect, &p->h.pipe, h->ctl.path, on_peer_connect);
    peer_run(h, p, peer_connected, 0);
    /* uv_err_name(0) would allocate (an "unknown" name) */
    emit(json_pack("{s:s, s:I, s:b, s:s}", "event", "control_open", "client",
                   (json_int_t)(p - h->peers), "ok", p->connected && p->connect_status == 0,
                   "status",
                   !p->connected            ? "timeout"
                   : p->connect_status == 0 ? "ok"
                                            : uv_err_name(p->connect_status)));
    return 0;
}

/* {"cmd":"control_send","client":K,"lines":[...]}: each line (a string as
 * it is, anything else serialised) with a newline, in one write. */
static int cmd_control_send(harness_t *h, peer_t *p, json_t *lines)
{
    size_t i, len = 0, cap = 4096;
    char *out = malloc(cap);
    json_t *v;
    (void)h;

    if (out == NULL || !json_is_array(lines)) {
        free(out);
        fprintf(stderr, "fetchd-harness: control_send: no \"lines\" array\n");
        return -1;
    }
    if (!p->used || p->closed) {
        free(out);
        return 0; /* never connected: control_read says so */
    }
    json_array_foreach (lines, i, v) {
        char *text = json_is_string(v) ? NULL : json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        const char *t = text ? text : json_string_value(v);
        size_t n = t ? strlen(t) : 0;
        if (len + n + 1 > cap) {
            while (len + n + 1 > cap)
                cap *= 2;
            if ((out = realloc(out, cap)) == NULL) {
                fprintf(stderr, "fetchd-harness: out of memory\n");
                exit(2);
            }
        }
        memcpy(out + len, t ? t : "", n);
        len += n;
        out[len++] = '\n';
        mem_free(text);
    }
    if (!p->eof)
        peer_send(p, out, len);
    free(out);
    return 0;
}

/* Takes the complete lines received so far off p as an array of parsed
 * JSON texts (a line that does not parse is kept as a string). */
static json_t *take_lines(peer_t *p)
{
    json_t *arr = json_array();
    size_t start = 0;

    for (size_t i = 0; i < p->len; i++) {
        json_t *v;
        if (p->in[i] != '\n')
            continue;
        v = json_loadb(p->in + start, i - start, JSON_DECODE_ANY, NULL);
        json_array_append_new(arr, v ? v : json_stringn(p->in + start, i - start));
        start = i + 1;
    }
    if (start > 0) {
        memmove(p->in, p->in + start, p->len - start);
        p->len -= start;
    }
    return arr;
}

/* {"cmd":"control_read","client":K,"count":N}: waits for N lines (or EOF,
 * or PEER_WAIT_MS) and prints what arrived. */
static int cmd_control_read(harness_t *h, peer_t *p, json_t *line)
{
    size_t want = (size_t)json_integer_value(json_object_get(line, "count"));
    const char *until = json_string_value(json_object_get(line, "until_id"));
    json_t *lines;
    int timed_out;

    if (!p->used || p->closed) {
        emit(json_pack("{s:s, s:I, s:[], s:b, s:b, s:b}", "event", "control", "client",
                       (json_int_t)(p - h->peers), "lines", "eof", 1, "timed_out", 0,
                       "not_connected", 1));
        return 0;
    }
    if (until && strlen(until) > 40) {
        fprintf(stderr, "fetchd-harness: control_read: until_id too long\n");
        return -1;
    }
    timed_out =
        until ? peer_run(h, p, peer_has_id, (size_t)until) : peer_run(h, p, peer_has_lines, want);
    lines = take_lines(p); /* before p->len is read: it takes them off */
    emit(json_pack("{s:s, s:I, s:o, s:b, s:b, s:I}", "event", "control", "client",
                   (json_int_t)(p - h->peers), "lines", lines, "eof", p->eof, "timed_out",
                   timed_out && !p->eof, "partial", (json_int_t)p->len));
    return 0;
}

static int cmd_control_close(harness_t *h, peer_t *p)
{
    if (!p->used)
        return 0;
    peer_close(p);
    peer_run(h, p, peer_closed, 0);
    return 0;
}

/* Length of the first complete HTTP response in p's input (head and
 * Content-Length body), or 0 while it is incomplete. */
static size_t response_length(const peer_t *p)
{
    const char *end = p->len ? memmem(p->in, p->len, "\r\n\r\n", 4) : NULL;
    const char *cl;
    size_t head;

    if (end == NULL)
        return 0;
    head = (size_t)(end - p->in) + 4;
    cl = memmem(p->in, head, "Content-Length: ", 16);
    if (cl == NULL)
        return 0;
    head += strtoull(cl + 16, NULL, 10);
    return head <= p->len ? head : 0;
}

static int peer_has_response(const peer_t *p, size_t arg)
{
    (void)arg;
    return p->eof || response_length(p) > 0;
}

/* Connects the scraper and waits until the metrics server has accepted it. */
static void scrape_connect(harness_t *h, peer_t *p)
{
    struct sockaddr_in sa;
    unsigned before = h->metrics.nclients;

    peer_init(h, p);
    uv_tcp_init(&h->d.loop, &p->h.tcp);
    p->h.tcp.data = p;
    uv_ip4_addr("127.0.0.1", h->metrics.port, &sa);
    uv_tcp_connect(&p->connect, &p->h.tcp, (struct sockaddr *)&sa, on_peer_connect);
    peer_run(h, p, peer_connected, 0);
    /* Accepted (or refused) once the server's count moves or it closes us. */
    for (int i = 0; i < 1000 && p->connect_status == 0 && !p->eof && h->metrics.nclients == before;
         i++)
        uv_run(&h->d.loop, UV_RUN_NOWAIT);
}

/* {"cmd":"scrape","path":P} or {"cmd":"scrape","raw":TEXT}: one request to
 * the metrics endpoint; prints the status, the body's length and whether
 * the page has fetchd_objects in it. Without "keep", on a new connection
 * ("Connection: close") read to EOF; with "keep":true on the connection
 * {"cmd":"scrape_connect"} opened, read to the end of one response. */
static int cmd_scrape(harness_t *h, json_t *line)
{
    const char *path = json_string_value(json_object_get(line, "path"));
    const char *raw = json_string_value(json_object_get(line, "raw"));
    int keep = json_is_true(json_object_get(line, "keep"));
    peer_t *p = &h->scraper;
    char req[512];
    int status = 0, timed_out = 0, complete = 0, has_objects = 0;
    size_t rlen, blen = 0, received;

    if (path == NULL && raw == NULL) {
        fprintf(stderr, "fetchd-harness: scrape: needs \"path\" or \"raw\"\n");
        return -1;
    }
    if (!h->metrics_started) {
        /* metrics_start failed (allocation failure tests). */
        emit(json_pack("{s:s, s:i, s:b}", "event", "scrape", "status", 0, "not_started", 1));
        return 0;
    }
    if (!keep)
        scrape_connect(h, p);
    if (p->used && !p->closed && p->connect_status == 0 && !p->eof) {
        if (raw == NULL) {
            snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n", path,
                     keep ? "" : "Connection: close\r\n");
            raw = req;
        }
        peer_send(p, raw, strlen(raw));
        timed_out = keep ? peer_run(h, p, peer_has_response, 0) : peer_run(h, p, peer_eof, 0);
    }
    received = p->len;
    rlen = response_length(p);
    if (p->len > 12 && memcmp(p->in, "HTTP/1.1 ", 9) == 0)
        status = atoi(p->in + 9);
    if (rlen > 0) {
        const char *body = memmem(p->in, rlen, "\r\n\r\n", 4) + 4;
        blen = rlen - (size_t)(body - p->in);
        complete = keep ? 1 : rlen == p->len;
        has_objects = memmem(body, blen, "fetchd_objects{", 15) != NULL;
        received = rlen;
        memmove(p->in, p->in + rlen, p->len - rlen);
        p->len -= rlen;
    }
    emit(json_pack("{s:s, s:i, s:I, s:I, s:b, s:b, s:b, s:b}", "event", "scrape", "status", status,
                   "received", (json_int_t)received, "body_bytes", (json_int_t)blen, "complete",
                   complete, "has_objects", has_objects, "timed_out", timed_out, "eof", p->eof));
    if (!keep) {
        peer_close(p);
        peer_run(h, p, peer_closed, 0);
    }
    return 0;
}

/* ---- the servers and the state file --------------------------------------------- */

static int cmd_control_start(harness_t *h, json_t *line)
{
    const char *path = json_string_value(json_object_get(line, "path"));
    char err[512];
    int rc;

    if (path == NULL || h->ctl_started) {
        fprintf(stderr, "fetchd-harness: control_start: needs \"path\", once\n");
        return -1;
    }
    rc = control_start(&h->ctl, &h->d, path, err, sizeof(err));
    h->ctl_started = rc == 0;
    emit(json_pack("{s:s, s:b, s:s}", "event", "control_start", "ok", rc == 0, "error",
                   rc == 0 ? "" : err));
    return 0;
}

static int cmd_metrics_start(harness_t *h)
{
    char err[512];
    int rc;

    if (h->metrics_started) {
        fprintf(stderr, "fetchd-harness: metrics_start: once\n");
        return -1;
    }
    rc = metrics_start(&h->metrics, &h->d, h->ctl_started ? &h->ctl : NULL, "127.0.0.1:0", err,
                       sizeof(err));
    h->metrics_started = rc == 0;
    emit(json_pack("{s:s, s:b, s:i, s:s}", "event", "metrics_start", "ok", rc == 0, "port",
                   rc == 0 ? h->metrics.port : 0, "error", rc == 0 ? "" : err));
    return 0;
}

/* {"cmd":"state_save","dir":D,"with_running":B} / {"cmd":"state_load","dir":D} */
static int cmd_state(harness_t *h, json_t *line, int save)
{
    const char *dir = json_string_value(json_object_get(line, "dir"));
    char err[512] = "";
    long n;

    if (dir == NULL) {
        fprintf(stderr, "fetchd-harness: state_save/state_load: needs \"dir\"\n");
        return -1;
    }
    if (save)
        n = state_save(&h->d.sched, dir, json_is_true(json_object_get(line, "with_running")), err,
                       sizeof(err));
    else
        n = state_load(&h->d.sched, dir, err, sizeof(err));
    emit(json_pack("{s:s, s:I, s:s, s:s}", "event", save ? "state_save" : "state_load", "result",
                   (json_int_t)n, "code", n < 0 ? err_name((int)n) : "ok", "error", err));
    return 0;
}

static int sched_busy(harness_t *h)
{
    return h->d.sched.nqueued + h->d.sched.nrunning > 0;
}

/* {"cmd":"fail_alloc","after":N[,"component":"fetchd"|"mbedtls"]} */
static int cmd_fail_alloc(json_t *line)
{
    const char *comp = json_string_value(json_object_get(line, "component"));
    long after = (long)json_integer_value(json_object_get(line, "after"));
    long calls = -1; /* allocations since "after" was set, where known */
    int pending;

    if (comp == NULL || strcmp(comp, "fetchd") == 0) {
        pending = mem_fail_pending();
        mem_fail_after(after);
#ifdef HARNESS_MBEDTLS_ALLOC
    } else if (strcmp(comp, "mbedtls") == 0) {
        pending = mbedtls_alloc_fail_pending();
        calls = atomic_load(&mbedtls_calls);
        mbedtls_alloc_fail_after(after);
#endif
    } else {
        fprintf(stderr, "fetchd-harness: fail_alloc: unknown component \"%s\"%s\n", comp,
                strcmp(comp, "mbedtls") == 0 ? " (only fetchd-harness-mbedtls fails mbedTLS's)"
                                             : "");
        return -1;
    }
    /* 0 cancels, and the event says whether the failure happened. */
    if (after == 0)
        emit(json_pack("{s:s, s:b, s:I}", "event", "fail_alloc", "fired", !pending, "allocations",
                       (json_int_t)calls));
    return 0;
}

static int run_peer_command(harness_t *h, const char *cmd, json_t *line)
{
    peer_t *p = control_peer(h, line);

    if (strcmp(cmd, "control_start") == 0)
        return cmd_control_start(h, line);
    if (strcmp(cmd, "metrics_start") == 0)
        return cmd_metrics_start(h);
    if (strcmp(cmd, "scrape") == 0)
        return cmd_scrape(h, line);
    if (strcmp(cmd, "scrape_connect") == 0) {
        if (h->metrics_started)
            scrape_connect(h, &h->scraper);
        return 0;
    }
    if (strcmp(cmd, "state_save") == 0 || strcmp(cmd, "state_load") == 0)
        return cmd_state(h, line, strcmp(cmd, "state_save") == 0);
    if (p == NULL) {
        fprintf(stderr, "fetchd-harness: %s: \"client\" must be 0 to %d\n", cmd, MAX_PEERS - 1);
        return -1;
    }
    if (strcmp(cmd, "control_open") == 0)
        return cmd_control_open(h, p);
    if (strcmp(cmd, "control_send") == 0)
        return cmd_control_send(h, p, json_object_get(line, "lines"));
    if (strcmp(cmd, "control_read") == 0)
        return cmd_control_read(h, p, line);
    if (strcmp(cmd, "control_close") == 0)
        return cmd_control_close(h, p);
    fprintf(stderr, "fetchd-harness: unknown command \"%s\"\n", cmd);
    return -1;
}

static int run_command(harness_t *h, json_t *line, const char *text, size_t len)
{
    const char *cmd = json_string_value(json_object_get(line, "cmd"));
    json_t *index = json_object_get(line, "index");

    if (cmd == NULL) {
        submit(h, text, len);
    } else if (strcmp(cmd, "wait") == 0) {
        if (json_is_integer(index)) {
            size_t i = (size_t)json_integer_value(index);
            while (i < h->njobs && h->jobs[i] && !job_finished(h, i))
                uv_run(&h->d.loop, UV_RUN_ONCE);
        } else {
            wait_all(h);
        }
    } else if (strcmp(cmd, "wait_idle") == 0) {
        /* Every job the scheduler has, the script's or not, has finished. */
        wait_all(h);
        while (sched_busy(h))
            uv_run(&h->d.loop, UV_RUN_ONCE);
    } else if (strcmp(cmd, "sleep") == 0) {
        h->slept = 0;
        uv_timer_start(&h->sleep_timer, on_sleep,
                       (uint64_t)json_integer_value(json_object_get(line, "ms")), 0);
        while (!h->slept)
            uv_run(&h->d.loop, UV_RUN_ONCE);
    } else if (strcmp(cmd, "stats") == 0) {
        emit(json_pack("{s:s, s:o}", "event", "stats", "stats", daemon_stats_json(&h->d)));
    } else if (strcmp(cmd, "cancel") == 0) {
        size_t i = (size_t)json_integer_value(index);
        if (i < h->njobs && h->jobs[i])
            sched_cancel(&h->d.sched, h->jobs[i]);
    } else if (strcmp(cmd, "fail_alloc") == 0) {
        return cmd_fail_alloc(line);
    } else if (strcmp(cmd, "close_idle") == 0) {
        pool_close_idle(&h->d.pool, STATS_CLOSE_SHUTDOWN);
    } else {
        return run_peer_command(h, cmd, line);
    }
    return 0;
}

static int run_script(harness_t *h, FILE *in)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    unsigned lineno = 0;
    int rc = 0;

    while (rc == 0 && (n = getline(&line, &cap, in)) > 0) {
        json_error_t jerr;
        json_t *o;
        lineno++;
        if (strspn(line, " \t\r\n") == (size_t)n)
            continue;
        o = json_loads(line, 0, &jerr);
        if (o == NULL || !json_is_object(o)) {
            fprintf(stderr, "fetchd-harness: script line %u: %s\n", lineno,
                    o ? "not a JSON object" : jerr.text);
            json_decref(o);
            rc = -1;
            break;
        }
        rc = run_command(h, o, line, strlen(line)); /* the text json_loads() read */
        json_decref(o);
    }
    free(line);
    return rc;
}

/* Lists every count that is not back to zero after teardown. */
static json_t *leaks(harness_t *h)
{
    json_t *l = json_array();
    char what[64];
    uint64_t blocks;

    for (int t = 0; t < STATS_OBJ__COUNT; t++) {
        if (h->d.stats.objects[t] != 0) {
            snprintf(what, sizeof(what), "%s=%lld", stats_obj_label(t),
                     (long long)h->d.stats.objects[t]);
            json_array_append_new(l, json_string(what));
        }
    }
    mem_get(MEM_FETCHD, &blocks, NULL);
    if (blocks != 0) {
        snprintf(what, sizeof(what), "heap.fetchd=%llu", (unsigned long long)blocks);
        json_array_append_new(l, json_string(what));
    }
    mem_get(MEM_LIBUV, &blocks, NULL);
    if (blocks != 0) {
        snprintf(what, sizeof(what), "heap.libuv=%llu", (unsigned long long)blocks);
        json_array_append_new(l, json_string(what));
    }
#ifdef HARNESS_MBEDTLS_ALLOC
    blocks = (uint64_t)mbedtls_alloc_blocks();
    if (blocks != 0) {
        snprintf(what, sizeof(what), "heap.mbedtls=%llu", (unsigned long long)blocks);
        json_array_append_new(l, json_string(what));
    }
#endif
    return l;
}

static void usage(void)
{
    fprintf(stderr, "usage: fetchd-harness [--max-connections N] [--max-per-host N] "
                    "[--max-running N] [--idle-timeout-ms N] [--download-dir DIR] "
                    "[--retain-jobs N] [--retain-seconds S] [--deadline-ms N] SCRIPT|-\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"max-connections", required_argument, NULL, 'c'},
        {"max-per-host", required_argument, NULL, 'p'},
        {"max-running", required_argument, NULL, 'r'},
        {"idle-timeout-ms", required_argument, NULL, 'i'},
        {"download-dir", required_argument, NULL, 'd'},
        {"retain-jobs", required_argument, NULL, 'j'},
        {"retain-seconds", required_argument, NULL, 's'},
        {"deadline-ms", required_argument, NULL, 'D'},
        {"ca-file", required_argument, NULL, 'a'},
        {"client-cert", required_argument, NULL, 'C'},
        {"client-key", required_argument, NULL, 'K'},
        {NULL, 0, NULL, 0},
    };
    harness_t *h = calloc(1, sizeof(*h));
    daemon_config_t cfg;
    unsigned long deadline_ms = 60000;
    char err[256];
    FILE *in;
    int c, rc;
    json_t *final, *leak;

    if (h == NULL || mem_install() != 0)
        return 2;
    log_init(getenv("FETCHD_HARNESS_DEBUG") ? LOG_LEVEL_DEBUG : LOG_LEVEL_WARN);
    daemon_config_init(&cfg);
    cfg.max_connections = 64;
    cfg.max_per_host = 64;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        const char *key = NULL;
        switch (c) {
        case 'c':
            key = "max_connections";
            break;
        case 'p':
            key = "max_per_host";
            break;
        case 'r':
            key = "max_running";
            break;
        case 'd':
            key = "download_dir";
            break;
        case 'j':
            key = "retain_jobs";
            break;
        case 's':
            key = "retain_seconds";
            break;
        case 'a':
            key = "ca_file";
            break;
        case 'C':
            key = "client_cert";
            break;
        case 'K':
            key = "client_key";
            break;
        case 'i':
            cfg.idle_timeout_ms = strtoull(optarg, NULL, 10);
            continue;
        case 'D':
            deadline_ms = strtoul(optarg, NULL, 10);
            continue;
        default:
            usage();
            return 2;
        }
        if (config_set(&cfg, key, optarg, err, sizeof(err)) != 0) {
            fprintf(stderr, "fetchd-harness: %s\n", err);
            return 2;
        }
    }
    if (optind != argc - 1) {
        usage();
        return 2;
    }
    in = strcmp(argv[optind], "-") == 0 ? stdin : fopen(argv[optind], "r");
    if (in == NULL) {
        perror(argv[optind]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_deadline);
    alarm((unsigned)((deadline_ms + 999) / 1000));
    if (daemon_init(&h->d, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "fetchd-harness: %s\n", err);
        return 2;
    }
    h->d.sched.on_event = on_event;
    h->d.sched.event_data = h;
    uv_timer_init(&h->d.loop, &h->sleep_timer);
    h->sleep_timer.data = h;

    rc = run_script(h, in) == 0 ? 0 : 2;
    if (in != stdin)
        fclose(in);
    wait_all(h);

    /* Teardown: everything the engine made must be gone afterwards. */
    for (int k = 0; k < MAX_PEERS; k++)
        peer_close(&h->peers[k]);
    peer_close(&h->scraper);
    if (h->metrics_started)
        metrics_close(&h->metrics);
    if (h->ctl_started)
        control_close(&h->ctl);
    daemon_close(&h->d);
    for (size_t i = 0; i < h->njobs; i++)
        if (h->jobs[i])
            job_decref(h->jobs[i]);
    uv_close((uv_handle_t *)&h->sleep_timer, NULL);
    uv_run(&h->d.loop, UV_RUN_DEFAULT);
    if (daemon_dispose(&h->d) != 0) {
        fprintf(stderr, "fetchd-harness: the loop still has open handles\n");
        rc = rc ? rc : 1;
    }
    final = daemon_stats_json(&h->d);
    leak = leaks(h);
    if (json_array_size(leak) > 0 && rc == 0)
        rc = 1;
    emit(json_pack("{s:s, s:o, s:o}", "event", "final", "stats", final, "leaks", leak));
    for (int k = 0; k < MAX_PEERS; k++)
        free(h->peers[k].in);
    free(h->scraper.in);
    free(h->jobs);
    free(h);
    return rc;
}
