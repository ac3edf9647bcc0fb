/* metrics — the Prometheus endpoint; see metrics.h. */
#include "metrics.h"

#include <jansson.h>
#include <llhttp.h>
#include <mbedtls/version.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "err.h"
#include "log.h"
#include "mem.h"
#include "strbuf.h"

/* The page (daemon/page.html), embedded at build time by daemon/embed.cmake
 * as metrics_page[] and metrics_page_len. */
#include "metrics_page.h"

#define METRICS_MAX_HEAD (8 * 1024)
/* The listen backlog: well below the slots, so that one burst of accepts
 * (libuv accepts until the queue is empty) cannot evict a client accepted
 * in the loop turn before, whose request is read in this one. */
#define METRICS_BACKLOG 32

static const char *const close_reasons[METRICS_CLOSE__COUNT] = {
    [METRICS_CLOSE_EVICTED] = "evicted",
    [METRICS_CLOSE_REQUEST_TIMEOUT] = "request_timeout",
    [METRICS_CLOSE_IDLE_TIMEOUT] = "idle_timeout",
    [METRICS_CLOSE_WRITE_TIMEOUT] = "write_timeout",
};

/* ---- the page ----------------------------------------------------------------- */

static void head(strbuf_t *b, const char *name, const char *type, const char *help)
{
    strbuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void one(strbuf_t *b, const char *name, const char *type, const char *help,
                unsigned long long v)
{
    head(b, name, type, help);
    strbuf_printf(b, "%s %llu\n", name, v);
}

static void labelled(strbuf_t *b, const char *name, const char *label, const char *value,
                     unsigned long long v)
{
    strbuf_printf(b, "%s{%s=\"%s\"} %llu\n", name, label, value, v);
}

static void render_proxy(strbuf_t *b, const stats_t *st)
{
    head(b, "fetchd_proxy_connects_total", "counter",
         "Proxy legs of new connections, by kind and how they ended.");
    for (int k = 0; k < STATS_PROXY__KINDS; k++)
        for (int r = 0; r < STATS_PROXY__RESULTS; r++)
            strbuf_printf(b, "fetchd_proxy_connects_total{kind=\"%s\",result=\"%s\"} %llu\n",
                          stats_proxy_kind_label(k), stats_proxy_result_label(r),
                          (unsigned long long)st->proxy_connects[k][r]);
}

static void render_connections(strbuf_t *b, const daemon_t *d)
{
    const stats_t *st = &d->stats;

    head(b, "fetchd_connections", "gauge", "Connections by state.");
    labelled(b, "fetchd_connections", "state", "connecting", d->pool.nconnecting);
    labelled(b, "fetchd_connections", "state", "active", d->pool.nactive);
    labelled(b, "fetchd_connections", "state", "idle", d->pool.nidle);
    one(b, "fetchd_connections_opened_total", "counter", "Connections opened.", st->conns_opened);
    head(b, "fetchd_connections_closed_total", "counter", "Connections closed, by reason.");
    for (int r = 0; r < STATS_CLOSE__COUNT; r++)
        labelled(b, "fetchd_connections_closed_total", "reason", stats_close_label(r),
                 st->conns_closed[r]);
    one(b, "fetchd_connection_reuses_total", "counter",
        "Requests sent on a connection that had served one before.", st->conn_reuses);
    render_proxy(b, st);
}

/* Buffers in use, without those control clients hold while their own
 * request is answered (control.h, nreading): the same figure as the
 * stats method's, which is answered from inside such a read. */
static size_t buffers_in_use(const metrics_t *m)
{
    size_t hidden = m->ctl ? m->ctl->nreading : 0;
    return m->d->bufs.in_use - (hidden < m->d->bufs.in_use ? hidden : m->d->bufs.in_use);
}

static void render_memory(strbuf_t *b, const metrics_t *m)
{
    const daemon_t *d = m->d;
    const char *comp[MEM__COUNT];
    uint64_t blocks[MEM__COUNT], bytes[MEM__COUNT];

    head(b, "fetchd_buffers", "gauge",
         "Read buffers, in use or kept free (in use: not counting the buffer a control client "
         "holds while its own request is answered).");
    labelled(b, "fetchd_buffers", "state", "in_use", buffers_in_use(m));
    labelled(b, "fetchd_buffers", "state", "free", d->bufs.nfree);
    head(b, "fetchd_buffer_bytes", "gauge", "Bytes of read buffers, in use or kept free.");
    labelled(b, "fetchd_buffer_bytes", "state", "in_use", buffers_in_use(m) * d->bufs.size);
    labelled(b, "fetchd_buffer_bytes", "state", "free", d->bufs.nfree * d->bufs.size);
    for (int c = 0; c < MEM__COUNT; c++) {
        comp[c] = mem_component_name(c);
        mem_get(c, &blocks[c], &bytes[c]);
    }
    head(b, "fetchd_heap_allocations", "gauge",
         "Live heap blocks, by allocating component (counting allocator).");
    for (int c = 0; c < MEM__COUNT; c++)
        labelled(b, "fetchd_heap_allocations", "component", comp[c], blocks[c]);
    head(b, "fetchd_heap_allocations_total", "counter",
         "Heap allocations made (malloc, calloc and realloc calls), by allocating component.");
    for (int c = 0; c < MEM__COUNT; c++)
        labelled(b, "fetchd_heap_allocations_total", "component", comp[c],
                 mem_allocations_total(c));
    head(b, "fetchd_heap_bytes", "gauge", "Live heap bytes, by allocating component.");
    for (int c = 0; c < MEM__COUNT; c++)
        labelled(b, "fetchd_heap_bytes", "component", comp[c], bytes[c]);
    head(b, "fetchd_objects", "gauge", "Live instances of every object type.");
    for (int t = 0; t < STATS_OBJ__COUNT; t++)
        labelled(b, "fetchd_objects", "type", stats_obj_label(t),
                 (unsigned long long)d->stats.objects[t]);
}

static void render_outcomes(strbuf_t *b, const metrics_t *m)
{
    static const char *const classes[5] = {"1xx", "2xx", "3xx", "4xx", "5xx"};

    head(b, "fetchd_responses_total", "counter",
         "Finished jobs' final HTTP responses, by status class (a 404 is a done job: this is "
         "where it shows).");
    for (int k = 0; k < 5; k++)
        labelled(b, "fetchd_responses_total", "code_class", classes[k], m->d->stats.responses[k]);
    head(b, "fetchd_job_errors_total", "counter",
         "Jobs that finished with an error, by its stable code (cancelled ones included).");
    for (int e = ERR__BASE + 1; e < ERR__END; e++)
        labelled(b, "fetchd_job_errors_total", "code", err_name(e),
                 m->d->stats.job_errors[e - ERR__BASE - 1]);
}

void metrics_job_finished(stats_t *st, const job_t *j)
{
    if (j->http_status >= 100 && j->http_status <= 599)
        st->responses[j->http_status / 100 - 1]++;
    if (j->error > ERR__BASE && j->error < ERR__END)
        st->job_errors[j->error - ERR__BASE - 1]++;
}

static void render_build_info(strbuf_t *b)
{
    char tls[32] = "";

    mbedtls_version_get_string(tls);
    head(b, "fetchd_build_info", "gauge",
         "Always 1; the labels are fetchd's version and its libraries' (libuv, jansson and "
         "mbedTLS as loaded at run time, llhttp as compiled in).");
    strbuf_printf(b,
                  "fetchd_build_info{version=\"%s\",libuv=\"%s\",llhttp=\"%d.%d.%d\","
                  "mbedtls=\"%s\",jansson=\"%s\"} 1\n",
                  FETCHD_VERSION, uv_version_string(), LLHTTP_VERSION_MAJOR, LLHTTP_VERSION_MINOR,
                  LLHTTP_VERSION_PATCH, tls, jansson_version_str());
}

static void render_jobs(strbuf_t *b, const daemon_t *d)
{
    static const double bounds[STATS_NDURATION] = STATS_DURATION_BUCKETS;
    const stats_t *st = &d->stats;
    unsigned long long cumulative = 0;

    head(b, "fetchd_jobs", "gauge", "Jobs queued, running, and finished but retained.");
    labelled(b, "fetchd_jobs", "state", "queued", d->sched.nqueued);
    labelled(b, "fetchd_jobs", "state", "running", d->sched.nrunning);
    labelled(b, "fetchd_jobs", "state", "retained", d->sched.nretained);
    one(b, "fetchd_jobs_paused", "gauge",
        "Queued and running jobs a client has paused (counted in fetchd_jobs too).",
        d->sched.npaused);
    one(b, "fetchd_queue_bytes", "gauge", "Memory held by queued jobs (--max-queue-bytes).",
        d->sched.queued_bytes);
    head(b, "fetchd_jobs_finished_total", "counter", "Jobs finished, by result.");
    for (int r = 0; r < STATS_RESULT__COUNT; r++)
        labelled(b, "fetchd_jobs_finished_total", "result", stats_result_label(r),
                 st->jobs_finished[r]);
    one(b, "fetchd_retries_total", "counter", "Requests retried after a failure.", st->retries);
    one(b, "fetchd_redirects_total", "counter", "Redirects followed.", st->redirects);
    one(b, "fetchd_received_bytes_total", "counter", "Bytes received from servers.",
        st->received_bytes);
    one(b, "fetchd_host_waits_total", "counter",
        "Jobs (and redirects or retries) held for their host's request rate or delay.",
        d->sched.rl.host_waits);
    one(b, "fetchd_host_waiting_jobs", "gauge", "Queued jobs waiting for their host now.",
        d->sched.rl.nparked);
    head(b, "fetchd_bandwidth_paused_seconds_total", "counter",
         "Time jobs spent with reading paused for a byte rate, summed over jobs.");
    strbuf_printf(b, "fetchd_bandwidth_paused_seconds_total %.6f\n",
                  ratelimit_paused_ns(&d->sched.rl) / 1e9);
    one(b, "fetchd_bandwidth_paused_jobs", "gauge", "Jobs whose reading is paused now.",
        d->sched.rl.npaused);
    head(b, "fetchd_http_lenient_total", "counter",
         "Responses with a deviation from RFC 9112 that fetchd tolerated, by kind.");
    for (int k = 0; k < STATS_LENIENT__COUNT; k++)
        labelled(b, "fetchd_http_lenient_total", "kind", stats_lenient_label(k), st->lenient[k]);
    head(b, "fetchd_fetch_duration_seconds", "histogram",
         "Time from a job's start to its end, retries and redirects included.");
    for (int i = 0; i < STATS_NDURATION; i++) {
        cumulative += st->duration_buckets[i];
        strbuf_printf(b, "fetchd_fetch_duration_seconds_bucket{le=\"%g\"} %llu\n", bounds[i],
                      cumulative);
    }
    strbuf_printf(b, "fetchd_fetch_duration_seconds_bucket{le=\"+Inf\"} %llu\n",
                  (unsigned long long)st->duration_count);
    strbuf_printf(b, "fetchd_fetch_duration_seconds_sum %.6f\n", st->duration_sum);
    strbuf_printf(b, "fetchd_fetch_duration_seconds_count %llu\n",
                  (unsigned long long)st->duration_count);
}

static void render_tls_dns(strbuf_t *b, const metrics_t *m)
{
    const daemon_t *d = m->d;

    one(b, "fetchd_tls_sessions", "gauge", "TLS sessions cached for resumption.",
        (unsigned long long)d->stats.objects[STATS_OBJ_TLS_SESSION]);
    one(b, "fetchd_tls_handshakes_total", "counter", "TLS handshakes completed.",
        d->tls.handshakes);
    one(b, "fetchd_tls_resumptions_total", "counter", "TLS handshakes that resumed a session.",
        d->tls.resumptions);
    one(b, "fetchd_dns_lookups_total", "counter", "Name lookups sent to the resolver.",
        d->dns.lookups);
    one(b, "fetchd_dns_cache_hits_total", "counter", "Name lookups answered from the cache.",
        d->dns.hits);
    one(b, "fetchd_control_clients", "gauge", "Clients connected to the control socket.",
        m->ctl ? m->ctl->nclients : 0);
    one(b, "fetchd_metrics_clients", "gauge", "Clients connected to this endpoint.", m->nclients);
    head(b, "fetchd_metrics_clients_dropped_total", "counter",
         "Clients of this endpoint closed by it before a response, by reason.");
    for (int r = 0; r < METRICS_CLOSE__COUNT; r++)
        labelled(b, "fetchd_metrics_clients_dropped_total", "reason", close_reasons[r],
                 m->closed[r]);
}

static void render_process(strbuf_t *b, const metrics_t *m)
{
    json_t *s = daemon_stats_json(m->d); /* RSS and open fds, read from /proc */
    struct rusage ru;
    struct rlimit rl;
    double cpu = 0;

    if (getrusage(RUSAGE_SELF, &ru) == 0)
        cpu = ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
              (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    head(b, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent.");
    strbuf_printf(b, "process_cpu_seconds_total %.3f\n", cpu);
    one(b, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
        (unsigned long long)json_integer_value(
            json_object_get(s, "process_resident_memory_bytes")));
    one(b, "process_open_fds", "gauge", "Number of open file descriptors.",
        (unsigned long long)json_integer_value(json_object_get(s, "process_open_fds")));
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        one(b, "process_max_fds", "gauge", "Maximum number of open file descriptors.",
            (unsigned long long)rl.rlim_cur);
    head(b, "process_start_time_seconds", "gauge",
         "Start time of the process since unix epoch in seconds.");
    strbuf_printf(b, "process_start_time_seconds %.3f\n", m->start_time);
    json_decref(s);
}

/* The Redis queue (daemon/queue.c), when --queue is set. */
static void render_queue(strbuf_t *b, const stats_queue_t *q)
{
    static const char *const results[] = {"read", "acked", "claimed", "failed"};
    const uint64_t counts[] = {q->read, q->acked, q->claimed, q->failed};

    if (!q->enabled)
        return;
    head(b, "fetchd_queue_entries_total", "counter",
         "Redis stream entries read, acked, claimed from others, or failed by fetchd.");
    for (int i = 0; i < 4; i++)
        labelled(b, "fetchd_queue_entries_total", "result", results[i], counts[i]);
    one(b, "fetchd_queue_pending", "gauge", "Entries held here: read or claimed, not acked yet.",
        q->pending);
    one(b, "fetchd_queue_connected", "gauge", "1 while both connections to Redis are up.",
        (unsigned long long)q->connected);
    one(b, "fetchd_queue_reconnects_total", "counter", "Connections to Redis made again.",
        q->reconnects);
}

char *metrics_render(metrics_t *m, size_t *len)
{
    strbuf_t b = {0};

    render_build_info(&b);
    render_connections(&b, m->d);
    render_memory(&b, m);
    render_jobs(&b, m->d);
    render_outcomes(&b, m);
    render_tls_dns(&b, m);
    render_process(&b, m);
    render_queue(&b, &m->d->stats.queue);
    if (b.failed) {
        strbuf_dispose(&b);
        return NULL;
    }
    *len = b.len;
    return b.p; /* the caller owns it now */
}

/* ---- the HTTP server ---------------------------------------------------------- */

/* A client is in one phase at a time; set_phase() is the only place that
 * changes it, restarts the client's one timer for that phase and moves the
 * client to the tail of m->clients, so the list runs from the phase begun
 * longest ago to the newest. No timer is restarted by bytes arriving. */
typedef enum phase {
    PHASE_REQUEST, /* reading a request: from accept, or from the first byte of the next one */
    PHASE_WRITING, /* a response is in flight; reading is stopped */
    PHASE_IDLE,    /* keep-alive, waiting for the first byte of the next request */
} phase_t;

struct metrics_client {
    uv_tcp_t tcp; /* tcp.data == this */
    metrics_t *m; /* borrowed */
    llhttp_t parser;
    uv_timer_t timer; /* the deadline of the current phase */
    int handles_open;
    int closing;
    phase_t phase;
    size_t head_bytes;
    char url[64]; /* the request target, enough for our two paths */
    size_t url_len;
    int url_long;
    int keep_alive;
    int request_ready; /* a request was parsed and awaits serve() */
    int method;
    uv_write_t write_req;
    char *out;                     /* owned: the response being written */
    metrics_client_t *prev, *next; /* borrowed: m->clients, oldest phase first */
};

static int on_url(llhttp_t *p, const char *at, size_t len);
static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *out);
static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *ub);
static int on_header_bytes(llhttp_t *p, const char *at, size_t len);
static int on_request(llhttp_t *p);

static const llhttp_settings_t request_settings = {
    .on_url = on_url,
    .on_header_field = on_header_bytes,
    .on_header_value = on_header_bytes,
    .on_message_complete = on_request,
};

static void unlink_client(metrics_client_t *c)
{
    metrics_t *m = c->m;
    if (c->prev)
        c->prev->next = c->next;
    else
        m->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        m->clients_tail = c->prev;
    c->prev = c->next = NULL;
}

static void append_client(metrics_client_t *c)
{
    metrics_t *m = c->m;
    c->prev = m->clients_tail;
    c->next = NULL;
    if (m->clients_tail)
        m->clients_tail->next = c;
    else
        m->clients = c;
    m->clients_tail = c;
}

static void on_timeout(uv_timer_t *t);

/* How long a client may stay in a phase, and why it is closed when it
 * overstays. */
static uint64_t phase_limit_ms(const metrics_t *m, phase_t phase, metrics_close_t *why)
{
    switch (phase) {
    case PHASE_REQUEST:
        *why = METRICS_CLOSE_REQUEST_TIMEOUT;
        return m->request_timeout_ms;
    case PHASE_WRITING:
        *why = METRICS_CLOSE_WRITE_TIMEOUT;
        return m->write_timeout_ms;
    case PHASE_IDLE:
    default:
        *why = METRICS_CLOSE_IDLE_TIMEOUT;
        return m->idle_timeout_ms;
    }
}

static void set_phase(metrics_client_t *c, phase_t phase)
{
    metrics_close_t why;
    uint64_t ms = phase_limit_ms(c->m, phase, &why);

    c->phase = phase;
    unlink_client(c);
    append_client(c);
    uv_timer_start(&c->timer, on_timeout, ms, 0);
}

static void on_client_handle_closed(uv_handle_t *h)
{
    metrics_client_t *c = h->data;
    if (--c->handles_open > 0)
        return;
    mem_free(c->out);
    stats_obj_destroyed(&c->m->d->stats, STATS_OBJ_METRICS_CLIENT);
    mem_free(c);
}

static void client_close(metrics_client_t *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    unlink_client(c);
    c->m->nclients--;
    uv_close((uv_handle_t *)&c->tcp, on_client_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_client_handle_closed);
}

/* Closes c for a reason the page counts. */
static void client_drop(metrics_client_t *c, metrics_close_t why)
{
    c->m->closed[why]++;
    client_close(c);
}

static void on_timeout(uv_timer_t *t)
{
    metrics_client_t *c = t->data;
    metrics_close_t why;

    (void)phase_limit_ms(c->m, c->phase, &why);
    client_drop(c, why);
}

/* Makes room for one more client (keep, just accepted): closes the client
 * whose request (or keep-alive wait) began longest ago, so a crowd of slow
 * or silent clients cannot keep a scraper out; only when every other client
 * is being answered does the oldest answer go. */
static void evict_one(metrics_t *m, const metrics_client_t *keep)
{
    metrics_client_t *victim = m->clients;

    for (metrics_client_t *c = m->clients; c != NULL && c != keep; c = c->next) {
        if (c->phase != PHASE_WRITING) {
            victim = c;
            break;
        }
    }
    if (victim != NULL && victim != keep)
        client_drop(victim, METRICS_CLOSE_EVICTED);
}

static void on_written(uv_write_t *req, int status)
{
    metrics_client_t *c = req->data;
    mem_free(c->out);
    c->out = NULL;
    if (c->closing)
        return;
    if (status != 0 || !c->keep_alive) {
        client_close(c);
        return;
    }
    set_phase(c, PHASE_IDLE);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0)
        client_close(c);
}

/* Writes one response: the head and (unless HEAD) the body, in one buffer. */
static void respond_with(metrics_client_t *c, int status, const char *reason, const char *type,
                         const char *extra, const char *body, size_t blen, int head_only)
{
    char hdr[512];
    int n = snprintf(hdr, sizeof(hdr),
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s%s%s\r\n",
                     status, reason, type, blen, c->keep_alive ? "" : "Connection: close\r\n",
                     status == 405 ? "Allow: GET, HEAD\r\n" : "", extra);
    size_t total = (size_t)n + (head_only ? 0 : blen);
    uv_buf_t b;

    c->out = mem_alloc(total);
    if (c->out == NULL) {
        client_close(c);
        return;
    }
    memcpy(c->out, hdr, (size_t)n);
    if (!head_only)
        memcpy(c->out + n, body, blen);
    b = uv_buf_init(c->out, (unsigned)total);
    c->write_req.data = c;
    set_phase(c, PHASE_WRITING);
    /* One request at a time: the next is read once this answer is out. */
    uv_read_stop((uv_stream_t *)&c->tcp);
    if (uv_write(&c->write_req, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0)
        client_close(c);
}

static void respond(metrics_client_t *c, int status, const char *reason, const char *type,
                    const char *body, size_t blen, int head_only)
{
    respond_with(c, status, reason, type, "", body, blen, head_only);
}

static void respond_text(metrics_client_t *c, int status, const char *reason, const char *text,
                         int head_only)
{
    respond(c, status, reason, "text/plain; charset=utf-8", text, strlen(text), head_only);
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    metrics_client_t *c = p->data;
    if (c->url_len + len >= sizeof(c->url)) {
        c->url_long = 1;
        return on_header_bytes(p, at, len);
    }
    memcpy(c->url + c->url_len, at, len);
    c->url_len += len;
    c->url[c->url_len] = '\0';
    return on_header_bytes(p, at, len);
}

static int on_header_bytes(llhttp_t *p, const char *at, size_t len)
{
    metrics_client_t *c = p->data;
    (void)at;
    c->head_bytes += len;
    return c->head_bytes > METRICS_MAX_HEAD ? -1 : 0;
}

static int path_is(const metrics_client_t *c, const char *path)
{
    size_t n = strlen(path);
    return !c->url_long && strncmp(c->url, path, n) == 0 && (c->url[n] == '\0' || c->url[n] == '?');
}

static int on_request(llhttp_t *p)
{
    metrics_client_t *c = p->data;

    c->method = llhttp_get_method(p);
    c->keep_alive = llhttp_should_keep_alive(p);
    c->request_ready = 1;
    /* One request at a time: stop parsing until this one is answered. */
    return HPE_PAUSED;
}

/* The page: static, self-contained; the policy header keeps it so (no
 * script, style or image from anywhere, data only from this endpoint). */
static void serve_page(metrics_client_t *c, int head_only)
{
    respond_with(c, 200, "OK", "text/html; charset=utf-8",
                 "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; "
                 "style-src 'unsafe-inline'; connect-src 'self'; img-src data:\r\n"
                 "Cache-Control: no-cache\r\n",
                 metrics_page, metrics_page_len, head_only);
}

static void serve_history(metrics_client_t *c, int head_only)
{
    strbuf_t b = {0};

    if (c->m->history == NULL) {
        respond_text(c, 404, "Not Found", "no history: the page's sampler is not running\n",
                     head_only);
        return;
    }
    history_render(c->m->history, &b);
    if (b.failed)
        respond_text(c, 503, "Service Unavailable", "out of memory\n", head_only);
    else
        respond_with(c, 200, "OK", "application/json", "Cache-Control: no-store\r\n", b.p, b.len,
                     head_only);
    strbuf_dispose(&b);
}

/* Answers the request parsed last. It runs after the read buffer went back
 * to the pool, so a scrape of an idle daemon shows no buffer in use. */
static void serve(metrics_client_t *c)
{
    int head_only = c->method == HTTP_HEAD;

    if (!path_is(c, "/metrics") && !path_is(c, "/healthz") && !path_is(c, "/") &&
        !path_is(c, "/history.json")) {
        respond_text(c, 404, "Not Found", "not found; try / or /metrics\n", head_only);
    } else if (c->method != HTTP_GET && c->method != HTTP_HEAD) {
        respond_text(c, 405, "Method Not Allowed", "use GET\n", 0);
    } else if (path_is(c, "/healthz")) {
        respond_text(c, 200, "OK", "ok\n", head_only);
    } else if (path_is(c, "/")) {
        serve_page(c, head_only);
    } else if (path_is(c, "/history.json")) {
        serve_history(c, head_only);
    } else {
        size_t len = 0;
        char *page = metrics_render(c->m, &len);
        if (page == NULL) {
            respond_text(c, 503, "Service Unavailable", "out of memory\n", head_only);
        } else {
            respond(c, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", page, len, head_only);
            mem_free(page);
        }
    }
    c->url_len = 0;
    c->url_long = 0;
    c->head_bytes = 0;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *out)
{
    metrics_client_t *c = h->data;
    buf_t *b = buf_get(&c->m->d->bufs);
    (void)hint;
    /* The buffer goes back to the pool in on_read; libuv hands it over. */
    *out = b ? uv_buf_init(b->data, (unsigned)b->pool->size) : uv_buf_init(NULL, 0);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *ub)
{
    metrics_client_t *c = s->data;
    buf_t *b = ub->base ? (buf_t *)(ub->base - offsetof(buf_t, data)) : NULL;
    llhttp_errno_t rc;
    int bad = 0;

    if (n > 0 && !c->closing) {
        /* The first byte of a request starts its deadline; later bytes do
         * not move it. */
        if (c->phase == PHASE_IDLE)
            set_phase(c, PHASE_REQUEST);
        rc = llhttp_execute(&c->parser, ub->base, (size_t)n);
        if (rc == HPE_PAUSED) {
            /* Bytes after the request are a pipelined one: not served, so
             * the connection ends with this answer. */
            if (llhttp_get_error_pos(&c->parser) != ub->base + n)
                c->keep_alive = 0;
            llhttp_resume(&c->parser);
        } else if (rc != HPE_OK) {
            c->keep_alive = 0;
            c->request_ready = 0;
            bad = 1;
        }
    } else if (n < 0) {
        client_close(c);
    }
    if (b)
        buf_decref(b);
    if (c->closing)
        return;
    if (bad)
        respond_text(c, 400, "Bad Request", "bad request\n", 0);
    else if (c->request_ready) {
        c->request_ready = 0;
        serve(c);
    }
}

static void reject_pending(metrics_t *m);

static void on_reject_closed(uv_handle_t *h)
{
    metrics_t *m = h->data;
    m->rejecting = 0;
    if (m->reject_waiting && !m->closing) {
        m->reject_waiting = 0;
        reject_pending(m);
    }
}

/* libuv stops watching the listening socket while an accepted connection
 * waits for uv_accept(). Without memory for a client, the connection is
 * accepted into m->reject and closed at once, so the endpoint keeps
 * accepting; a second one meanwhile waits for that close. */
static void reject_pending(metrics_t *m)
{
    if (m->rejecting) {
        m->reject_waiting = 1;
        return;
    }
    m->rejecting = 1;
    uv_tcp_init(&m->d->loop, &m->reject);
    m->reject.data = m;
    (void)uv_accept((uv_stream_t *)&m->server, (uv_stream_t *)&m->reject);
    uv_close((uv_handle_t *)&m->reject, on_reject_closed);
}

static void on_connection(uv_stream_t *server, int status)
{
    metrics_t *m = server->data;
    metrics_client_t *c;

    if (status != 0)
        return;
    c = mem_calloc(1, sizeof(*c));
    if (c == NULL) {
        reject_pending(m);
        return;
    }
    c->m = m;
    stats_obj_created(&m->d->stats, STATS_OBJ_METRICS_CLIENT);
    uv_tcp_init(&m->d->loop, &c->tcp);
    uv_timer_init(&m->d->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles_open = 2;
    append_client(c);
    m->nclients++;
    llhttp_init(&c->parser, HTTP_REQUEST, &request_settings);
    c->parser.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 ||
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
        client_close(c);
        return;
    }
    /* Every slot taken: the newcomer stays, the client that has waited
     * longest for a request to finish goes. */
    while (m->nclients > m->max_clients && m->clients != c)
        evict_one(m, c);
    set_phase(c, PHASE_REQUEST);
}

static int parse_addr(const char *addr, struct sockaddr_storage *ss, char *err, size_t errlen)
{
    char host[128];
    const char *colon = strrchr(addr, ':');
    const char *h = addr;
    size_t hlen;
    long port;
    char *end;

    if (colon == NULL)
        goto bad;
    hlen = (size_t)(colon - addr);
    if (hlen >= 2 && addr[0] == '[' && addr[hlen - 1] == ']') {
        h = addr + 1;
        hlen -= 2;
    }
    if (hlen == 0 || hlen >= sizeof(host))
        goto bad;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || end == colon + 1 || port < 0 || port > 65535)
        goto bad;
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0 ||
        uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) == 0)
        return 0;
bad:
    snprintf(err, errlen, "metrics: \"%s\" is not HOST:PORT with an IP address (or \"off\")", addr);
    return ERR_INVALID_REQUEST;
}

int metrics_start(metrics_t *m, daemon_t *d, control_t *ctl, const char *addr, char *err,
                  size_t errlen)
{
    struct sockaddr_storage ss;
    struct sockaddr_storage bound;
    int len = sizeof(bound), rc;

    memset(m, 0, sizeof(*m));
    m->d = d;
    m->ctl = ctl;
    m->max_clients = METRICS_MAX_CLIENTS;
    m->request_timeout_ms = METRICS_REQUEST_TIMEOUT_MS;
    m->idle_timeout_ms = METRICS_IDLE_TIMEOUT_MS;
    m->write_timeout_ms = METRICS_WRITE_TIMEOUT_MS;
    m->start_time = (double)time(NULL);
    rc = parse_addr(addr, &ss, err, errlen);
    if (rc != 0)
        return rc;
    uv_tcp_init(&d->loop, &m->server);
    m->server.data = m;
    rc = uv_tcp_bind(&m->server, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&m->server, METRICS_BACKLOG, on_connection);
    if (rc != 0) {
        snprintf(err, errlen, "metrics: cannot listen on %s: %s", addr, uv_strerror(rc));
        uv_close((uv_handle_t *)&m->server, NULL);
        return err_from_uv(rc);
    }
    uv_tcp_getsockname(&m->server, (struct sockaddr *)&bound, &len);
    m->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                : ((struct sockaddr_in *)&bound)->sin_port);
    m->listening = 1;
    log_notice("metrics: listening on %s (port %d)", addr, m->port);
    return 0;
}

void metrics_close(metrics_t *m)
{
    if (!m->listening || m->closing)
        return;
    m->closing = 1;
    while (m->clients)
        client_close(m->clients);
    uv_close((uv_handle_t *)&m->server, NULL);
}
