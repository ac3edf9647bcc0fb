/* history — the last hour of the daemon's gauges, for the page at GET /.
 *
 * A fixed ring of HISTORY_SAMPLES samples, allocated once by history_init()
 * (one block, counted as the object type "history"): a sample overwrites
 * the oldest one, nothing is allocated per sample, so the history's memory
 * is the same after ten samples or ten million. A uv timer takes a sample
 * every interval_ms (10 s by default: 360 samples are one hour).
 *
 * Each sample holds every gauge the page plots (connections, buffers, jobs,
 * heap blocks and bytes per component, live objects per type, RSS, open
 * fds) and two rates computed from the counters since the sample before
 * (jobs finished per second by result, bytes received per second). The
 * first sample taken warmup_ms or more after the start is kept aside for
 * good: the page draws each gauge's level at that moment, so a count that
 * climbs in steps afterwards (a staircase: a leak) stands out even when
 * the warm-up has left the ring.
 *
 * Ownership: the history owns its ring and its timer; it borrows the daemon,
 * which outlives it. Teardown: history_close(), then run the loop (the ring
 * is freed in the timer's close callback).
 */
#ifndef FETCHD_HISTORY_H
#define FETCHD_HISTORY_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "daemon.h"
#include "mem.h"
#include "stats.h"
#include "strbuf.h"

#define HISTORY_SAMPLES     360
#define HISTORY_INTERVAL_MS 10000
#define HISTORY_WARMUP_MS   (5 * 60 * 1000)

/* The index of each plotted series in a sample, grouped by panel. */
enum {
    HISTORY_CONNS = 0,                      /* connecting, active, idle */
    HISTORY_BUFFERS = HISTORY_CONNS + 3,    /* in_use, free */
    HISTORY_JOBS = HISTORY_BUFFERS + 2,     /* queued, running, retained */
    HISTORY_HEAP_BLOCKS = HISTORY_JOBS + 3, /* per mem component */
    HISTORY_HEAP_BYTES = HISTORY_HEAP_BLOCKS + MEM__COUNT,
    HISTORY_OBJECTS = HISTORY_HEAP_BYTES + MEM__COUNT, /* per stats_obj_t */
    HISTORY_RSS = HISTORY_OBJECTS + STATS_OBJ__COUNT,
    HISTORY_FDS,
    HISTORY_FINISHED_RATE, /* per stats_result_t, per second */
    HISTORY_BYTES_RATE = HISTORY_FINISHED_RATE + STATS_RESULT__COUNT, /* received, per second */
    HISTORY_NSERIES
};

typedef struct history_sample {
    double time; /* unix time (s) */
    double v[HISTORY_NSERIES];
} history_sample_t;

typedef struct history {
    daemon_t *d;                 /* borrowed */
    const unsigned *hidden_bufs; /* borrowed, may be NULL: buffers not counted in use (control.h) */
    uint64_t interval_ms;        /* read-only */
    uint64_t warmup_ms;          /* read-only */
    size_t n;                    /* read-only: samples in the ring (at most HISTORY_SAMPLES) */
    uint64_t taken;              /* read-only: samples taken since history_init() */
    int have_warm;               /* read-only: warm holds the warm-up sample */
    history_sample_t warm;       /* read-only: the first sample at or after warm-up */
    /* private */
    history_sample_t *ring; /* owned: HISTORY_SAMPLES samples */
    size_t head;            /* the slot the next sample goes to */
    uint64_t start_ns;      /* uv_hrtime() at history_init() */
    uint64_t prev_finished[STATS_RESULT__COUNT], prev_bytes;
    uint64_t prev_ns;
    uv_timer_t timer;
    int closing;
} history_t;

/* Sets h up on d's loop, sampling every interval_ms (0: HISTORY_INTERVAL_MS)
 * with the warm-up mark warmup_ms after now; allocates the ring. Returns 0,
 * or ERR_NO_MEMORY with nothing to undo. */
int history_init(history_t *h, daemon_t *d, uint64_t interval_ms, uint64_t warmup_ms);

/* Takes one sample now and starts the timer that takes the others. */
void history_start(history_t *h);

/* Takes one sample now, allocating nothing. */
void history_sample(history_t *h);

/* The i-th sample held, oldest first (i < h->n). Borrowed. */
const history_sample_t *history_at(const history_t *h, size_t i);

/* Appends the history as one JSON object to b (see the page, daemon/page.html,
 * for its shape). On allocation failure b->failed is set. */
void history_render(const history_t *h, strbuf_t *b);

/* Stops the timer; the ring is freed once it has closed (run the loop). */
void history_close(history_t *h);

#endif
