/* history — the ring of samples behind the page; see history.h. */
#include "history.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "err.h"

/* One panel of the page: a run of series in a sample. */
typedef struct panel {
    const char *id;    /* stable: the page and its tests name series "id/name" */
    const char *title; /* shown above the plot */
    const char *unit;  /* "", "bytes", "/s" or "bytes/s" */
    int first, count;
    int gauge; /* a level (marked at warm-up), not a rate */
} panel_t;

static const panel_t panels[] = {
    {"connections", "Connections by state", "", HISTORY_CONNS, 3, 1},
    {"buffers", "Read buffers", "", HISTORY_BUFFERS, 2, 1},
    {"jobs", "Jobs", "", HISTORY_JOBS, 3, 1},
    {"heap_blocks", "Heap blocks by component", "", HISTORY_HEAP_BLOCKS, MEM__COUNT, 1},
    {"heap_bytes", "Heap bytes by component", "bytes", HISTORY_HEAP_BYTES, MEM__COUNT, 1},
    {"objects", "Live objects by type", "", HISTORY_OBJECTS, STATS_OBJ__COUNT, 1},
    {"rss", "Resident memory", "bytes", HISTORY_RSS, 1, 1},
    {"fds", "Open file descriptors", "", HISTORY_FDS, 1, 1},
    {"finished", "Jobs finished per second by result", "/s", HISTORY_FINISHED_RATE,
     STATS_RESULT__COUNT, 0},
    {"received", "Bytes received per second", "bytes/s", HISTORY_BYTES_RATE, 1, 0},
};

/* The name of series i inside its panel. */
static const char *series_name(int i)
{
    static const char *const fixed[] = {
        [HISTORY_CONNS] = "connecting",    [HISTORY_CONNS + 1] = "active",
        [HISTORY_CONNS + 2] = "idle",      [HISTORY_BUFFERS] = "in_use",
        [HISTORY_BUFFERS + 1] = "free",    [HISTORY_JOBS] = "queued",
        [HISTORY_JOBS + 1] = "running",    [HISTORY_JOBS + 2] = "retained",
        [HISTORY_RSS] = "resident",        [HISTORY_FDS] = "open",
        [HISTORY_BYTES_RATE] = "received",
    };

    if (i >= HISTORY_HEAP_BLOCKS && i < HISTORY_HEAP_BYTES)
        return mem_component_name(i - HISTORY_HEAP_BLOCKS);
    if (i >= HISTORY_HEAP_BYTES && i < HISTORY_OBJECTS)
        return mem_component_name(i - HISTORY_HEAP_BYTES);
    if (i >= HISTORY_OBJECTS && i < HISTORY_RSS)
        return stats_obj_label(i - HISTORY_OBJECTS);
    if (i >= HISTORY_FINISHED_RATE && i < HISTORY_BYTES_RATE)
        return stats_result_label(i - HISTORY_FINISHED_RATE);
    return fixed[i];
}

/* ---- reading the process ---------------------------------------------------------- */

/* Resident bytes from /proc/self/statm: read(2) into the stack, no stdio. */
static double resident_bytes(void)
{
    char text[128];
    unsigned long long size, resident;
    int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    ssize_t n;

    if (fd < 0)
        return 0;
    n = read(fd, text, sizeof(text) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    text[n] = '\0';
    if (sscanf(text, "%llu %llu", &size, &resident) != 2)
        return 0;
    return (double)resident * (double)sysconf(_SC_PAGESIZE);
}

/* Open fds, counted from /proc/self/fd with getdents64 into the stack
 * (opendir() would malloc a DIR on every sample). */
static double open_fds(void)
{
    char buf[4096];
    long n, total = 0;
    int fd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    if (fd < 0)
        return 0;
    /* A process has a bounded number of fds; so has this loop's count. */
    for (int round = 0; round < 1 << 16; round++) {
        n = syscall(SYS_getdents64, fd, buf, sizeof(buf));
        if (n <= 0)
            break;
        for (long off = 0; off < n;) {
            const struct dirent64 *e = (const void *)(buf + off);
            if (e->d_name[0] != '.')
                total++;
            off += e->d_reclen;
        }
    }
    close(fd);
    return total > 0 ? (double)(total - 1) : 0; /* not the one read here */
}

/* ---- sampling --------------------------------------------------------------------- */

int history_init(history_t *h, daemon_t *d, uint64_t interval_ms, uint64_t warmup_ms)
{
    memset(h, 0, sizeof(*h));
    h->ring = mem_calloc(HISTORY_SAMPLES, sizeof(*h->ring));
    if (h->ring == NULL)
        return ERR_NO_MEMORY;
    h->d = d;
    h->interval_ms = interval_ms ? interval_ms : HISTORY_INTERVAL_MS;
    h->warmup_ms = warmup_ms;
    h->start_ns = uv_hrtime();
    uv_timer_init(&d->loop, &h->timer);
    h->timer.data = h;
    stats_obj_created(&d->stats, STATS_OBJ_HISTORY);
    return 0;
}

static void fill(history_t *h, history_sample_t *s, uint64_t now_ns)
{
    const daemon_t *d = h->d;
    const stats_t *st = &d->stats;
    double dt = h->prev_ns && now_ns > h->prev_ns ? (now_ns - h->prev_ns) / 1e9 : 0;
    size_t hidden = h->hidden_bufs ? *h->hidden_bufs : 0;
    struct timespec ts;
    uint64_t blocks, bytes;

    clock_gettime(CLOCK_REALTIME, &ts);
    s->time = ts.tv_sec + ts.tv_nsec / 1e9;
    s->v[HISTORY_CONNS] = d->pool.nconnecting;
    s->v[HISTORY_CONNS + 1] = d->pool.nactive;
    s->v[HISTORY_CONNS + 2] = d->pool.nidle;
    s->v[HISTORY_BUFFERS] =
        (double)(d->bufs.in_use - (hidden < d->bufs.in_use ? hidden : d->bufs.in_use));
    s->v[HISTORY_BUFFERS + 1] = (double)d->bufs.nfree;
    s->v[HISTORY_JOBS] = (double)d->sched.nqueued;
    s->v[HISTORY_JOBS + 1] = (double)d->sched.nrunning;
    s->v[HISTORY_JOBS + 2] = (double)d->sched.nretained;
    for (int c = 0; c < MEM__COUNT; c++) {
        mem_get(c, &blocks, &bytes);
        s->v[HISTORY_HEAP_BLOCKS + c] = (double)blocks;
        s->v[HISTORY_HEAP_BYTES + c] = (double)bytes;
    }
    for (int t = 0; t < STATS_OBJ__COUNT; t++)
        s->v[HISTORY_OBJECTS + t] = (double)st->objects[t];
    s->v[HISTORY_RSS] = resident_bytes();
    s->v[HISTORY_FDS] = open_fds();
    for (int r = 0; r < STATS_RESULT__COUNT; r++) {
        s->v[HISTORY_FINISHED_RATE + r] =
            dt > 0 ? (double)(st->jobs_finished[r] - h->prev_finished[r]) / dt : 0;
        h->prev_finished[r] = st->jobs_finished[r];
    }
    s->v[HISTORY_BYTES_RATE] = dt > 0 ? (double)(st->received_bytes - h->prev_bytes) / dt : 0;
    h->prev_bytes = st->received_bytes;
    h->prev_ns = now_ns;
}

void history_sample(history_t *h)
{
    uint64_t now = uv_hrtime();
    history_sample_t *s = &h->ring[h->head];

    fill(h, s, now);
    h->head = (h->head + 1) % HISTORY_SAMPLES;
    if (h->n < HISTORY_SAMPLES)
        h->n++;
    h->taken++;
    if (!h->have_warm && now - h->start_ns >= h->warmup_ms * 1000000u) {
        h->warm = *s;
        h->have_warm = 1;
    }
}

static void on_tick(uv_timer_t *t)
{
    history_sample(t->data);
}

void history_start(history_t *h)
{
    history_sample(h);
    uv_timer_start(&h->timer, on_tick, h->interval_ms, h->interval_ms);
}

const history_sample_t *history_at(const history_t *h, size_t i)
{
    size_t oldest = (h->head + HISTORY_SAMPLES - h->n) % HISTORY_SAMPLES;
    return &h->ring[(oldest + i) % HISTORY_SAMPLES];
}

static void on_closed(uv_handle_t *handle)
{
    history_t *h = handle->data;
    mem_free(h->ring);
    h->ring = NULL;
    h->n = 0;
    stats_obj_destroyed(&h->d->stats, STATS_OBJ_HISTORY);
}

void history_close(history_t *h)
{
    if (h->closing || h->ring == NULL)
        return;
    h->closing = 1;
    uv_close((uv_handle_t *)&h->timer, on_closed);
}

/* ---- rendering -------------------------------------------------------------------- */

/* A number as JSON: integers exactly, rates with four significant digits. */
static void number(strbuf_t *b, double v, int gauge)
{
    strbuf_printf(b, gauge ? "%.15g" : "%.4g", v);
}

static void render_panel(const history_t *h, const panel_t *p, strbuf_t *b)
{
    strbuf_printf(b, "{\"id\":\"%s\",\"title\":\"%s\",\"unit\":\"%s\",\"gauge\":%s,\"series\":[",
                  p->id, p->title, p->unit, p->gauge ? "true" : "false");
    for (int k = 0; k < p->count; k++) {
        int i = p->first + k;
        strbuf_printf(b, "%s{\"name\":\"%s\",\"warm\":", k ? "," : "", series_name(i));
        if (p->gauge && h->have_warm)
            number(b, h->warm.v[i], 1);
        else
            strbuf_printf(b, "null");
        strbuf_printf(b, ",\"v\":[");
        for (size_t j = 0; j < h->n; j++) {
            if (j)
                strbuf_append(b, ",", 1);
            number(b, history_at(h, j)->v[i], p->gauge);
        }
        strbuf_printf(b, "]}");
    }
    strbuf_printf(b, "]}");
}

void history_render(const history_t *h, strbuf_t *b)
{
    strbuf_printf(b,
                  "{\"version\":\"%s\",\"interval_s\":%.3f,\"warmup_s\":%.3f,\"samples\":%zu,"
                  "\"capacity\":%d,\"taken\":%llu,\"warm_time\":",
                  FETCHD_VERSION, h->interval_ms / 1e3, h->warmup_ms / 1e3, h->n, HISTORY_SAMPLES,
                  (unsigned long long)h->taken);
    if (h->have_warm)
        strbuf_printf(b, "%.3f", h->warm.time);
    else
        strbuf_printf(b, "null");
    strbuf_printf(b, ",\"t\":[");
    for (size_t j = 0; j < h->n; j++)
        strbuf_printf(b, "%s%.3f", j ? "," : "", history_at(h, j)->time);
    strbuf_printf(b, "],\"panels\":[");
    for (size_t p = 0; p < sizeof(panels) / sizeof(panels[0]); p++) {
        if (p)
            strbuf_append(b, ",", 1);
        render_panel(h, &panels[p], b);
    }
    strbuf_printf(b, "]}\n");
}
