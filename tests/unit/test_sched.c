/* Unit tests for daemon/sched.c on a real libuv loop: priority and FIFO
 * order, lookup by id, cancelling, the queue limit, spec validation,
 * retention by count and by age, and shutdown. Jobs go to 127.0.0.1:1, where
 * nothing listens, so they fail fast with connect_refused and no network is
 * needed; a listener that never answers keeps a job running when a test
 * needs one. Every test tears the daemon down and checks that every object
 * and every fetchd heap block is gone. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "daemon.h"
#include "err.h"
#include "job.h"
#include "mem.h"
#include "sched.h"
#include "test.h"

#define REFUSED_URL     "http://127.0.0.1:1/"
#define MAX_EVENTS      64
#define LOOP_TIMEOUT_MS 5000

typedef struct event {
    char id[20];
    int priority;
    sched_event_t ev;
    job_state_t state;
    int error;
    size_t nrunning;
} event_t;

typedef struct fixture {
    daemon_t d;
    event_t events[MAX_EVENTS];
    size_t nevents;
    size_t nfinished;
    size_t max_running_seen;
    uv_timer_t guard; /* bounds every run of the loop */
    int guard_fired;
    uv_timer_t delay; /* run_for()'s clock */
    int delay_fired;
    uv_tcp_t silent; /* listens, never accepts: a request there never ends */
    int silent_port;
} fixture_t;

static uint64_t fetchd_blocks(void)
{
    uint64_t blocks, bytes;
    mem_get(MEM_FETCHD, &blocks, &bytes);
    return blocks;
}

static void on_event(sched_t *s, job_t *j, sched_event_t ev, void *data)
{
    fixture_t *f = data;
    event_t *e;

    if (ev == SCHED_EV_FINISHED)
        f->nfinished++;
    if (ev == SCHED_EV_STARTED && s->nrunning > f->max_running_seen)
        f->max_running_seen = s->nrunning;
    if (f->nevents == MAX_EVENTS)
        return;
    e = &f->events[f->nevents++];
    snprintf(e->id, sizeof(e->id), "%s", j->id);
    e->priority = j->spec.priority;
    e->ev = ev;
    e->state = j->state;
    e->error = j->error;
    e->nrunning = s->nrunning;
}

static void on_timer_flag(uv_timer_t *t)
{
    *(int *)t->data = 1;
}

static void on_silent_connection(uv_stream_t *server, int status)
{
    /* Not accepting leaves the connection in the kernel's backlog: the
     * client's request is sent and never answered. */
    (void)server;
    (void)status;
}

static void setup(fixture_t *f)
{
    daemon_config_t cfg;
    char errmsg[256] = "";
    struct sockaddr_in addr;
    struct sockaddr_storage bound;
    int len = sizeof(bound);

    memset(f, 0, sizeof(*f));
    CHECK_INT(mem_install(), 0);
    CHECK_INT(fetchd_blocks(), 0);
    daemon_config_init(&cfg);
    CHECK_INT(daemon_init(&f->d, &cfg, errmsg, sizeof(errmsg)), 0);
    f->d.sched.on_event = on_event;
    f->d.sched.event_data = f;
    uv_timer_init(&f->d.loop, &f->guard);
    uv_timer_init(&f->d.loop, &f->delay);
    f->guard.data = &f->guard_fired;
    f->delay.data = &f->delay_fired;
    uv_tcp_init(&f->d.loop, &f->silent);
    uv_ip4_addr("127.0.0.1", 0, &addr);
    CHECK_INT(uv_tcp_bind(&f->silent, (const struct sockaddr *)&addr, 0), 0);
    CHECK_INT(uv_listen((uv_stream_t *)&f->silent, 16, on_silent_connection), 0);
    CHECK_INT(uv_tcp_getsockname(&f->silent, (struct sockaddr *)&bound, &len), 0);
    f->silent_port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
}

static void teardown(fixture_t *f)
{
    daemon_close(&f->d);
    uv_close((uv_handle_t *)&f->guard, NULL);
    uv_close((uv_handle_t *)&f->delay, NULL);
    uv_close((uv_handle_t *)&f->silent, NULL);
    CHECK_INT(uv_run(&f->d.loop, UV_RUN_DEFAULT), 0);
    CHECK_INT(f->d.sched.nqueued, 0);
    CHECK_INT(f->d.sched.nrunning, 0);
    CHECK_INT(f->d.sched.nretained, 0);
    CHECK_INT(daemon_dispose(&f->d), 0);
    for (int t = 0; t < STATS_OBJ__COUNT; t++) {
        if (f->d.stats.objects[t] != 0)
            fprintf(stderr, "leaked object type %s\n", stats_obj_label(t));
        CHECK_INT(f->d.stats.objects[t], 0);
    }
    CHECK_INT(fetchd_blocks(), 0);
}

/* Runs the loop until f->nfinished reaches n; returns 0 if the guard timer
 * fired first. */
static int run_until_finished(fixture_t *f, size_t n)
{
    f->guard_fired = 0;
    uv_timer_start(&f->guard, on_timer_flag, LOOP_TIMEOUT_MS, 0);
    while (f->nfinished < n && !f->guard_fired)
        uv_run(&f->d.loop, UV_RUN_ONCE);
    uv_timer_stop(&f->guard);
    if (f->nfinished < n)
        fprintf(stderr, "timed out: %zu of %zu jobs finished\n", f->nfinished, n);
    return f->nfinished >= n;
}

/* Runs the loop for about ms milliseconds of loop time. */
static void run_for(fixture_t *f, uint64_t ms)
{
    f->delay_fired = 0;
    uv_timer_start(&f->delay, on_timer_flag, ms, 0);
    while (!f->delay_fired)
        uv_run(&f->d.loop, UV_RUN_ONCE);
}

/* Lets the loop run the close callbacks of destroyed jobs' timers. */
static void run_closes(fixture_t *f)
{
    uv_run(&f->d.loop, UV_RUN_NOWAIT);
}

static int submit_url(fixture_t *f, const char *url, int priority, job_t **out)
{
    job_spec_t spec;
    char errmsg[256] = "";
    int rc;

    job_spec_init(&spec);
    spec.url = mem_strdup(url);
    spec.priority = priority;
    rc = sched_submit(&f->d.sched, &spec, out, errmsg, sizeof(errmsg));
    if (rc != 0)
        fprintf(stderr, "submit %s: %s (%s)\n", url, err_name(rc), errmsg);
    return rc;
}

static int submit(fixture_t *f, int priority, job_t **out)
{
    return submit_url(f, REFUSED_URL, priority, out);
}

static size_t count_events(const fixture_t *f, const char *id, sched_event_t ev)
{
    size_t n = 0;
    for (size_t i = 0; i < f->nevents; i++)
        if (f->events[i].ev == ev && strcmp(f->events[i].id, id) == 0)
            n++;
    return n;
}

static int is_job_id(const char *id)
{
    size_t n = 0;
    for (; id[n]; n++)
        if (!isxdigit((unsigned char)id[n]) || isupper((unsigned char)id[n]))
            return 0;
    return n == 16;
}

/* ---- tests ------------------------------------------------------------------ */

static void test_priority_then_fifo(void)
{
    static const int prio[] = {0, 5, 10, 5, 0};
    static const size_t order[] = {2, 1, 3, 0, 4};
    fixture_t f;
    char ids[5][20];
    size_t nstarted = 0;

    setup(&f);
    f.d.sched.max_running = 1;
    /* The loop is not running, so every job is still queued when the
     * scheduler first dispatches. */
    for (size_t i = 0; i < 5; i++) {
        job_t *j = NULL;
        CHECK_INT(submit(&f, prio[i], &j), 0);
        CHECK(j != NULL);
        if (j != NULL) {
            CHECK_INT(j->state, JOB_QUEUED);
            snprintf(ids[i], sizeof(ids[i]), "%s", j->id);
        }
    }
    CHECK_INT(f.d.sched.nqueued, 5);
    CHECK_INT(f.d.sched.nrunning, 0);
    CHECK(run_until_finished(&f, 5));
    for (size_t i = 0; i < f.nevents; i++) {
        const event_t *e = &f.events[i];
        if (e->ev == SCHED_EV_QUEUED)
            continue;
        if (e->ev == SCHED_EV_STARTED) {
            CHECK(nstarted < 5);
            if (nstarted < 5)
                CHECK_STR(e->id, ids[order[nstarted]]);
            nstarted++;
        } else if (e->ev == SCHED_EV_FINISHED) {
            CHECK_INT(e->state, JOB_FAILED);
            CHECK_STR(err_name(e->error), "connect_refused");
        }
    }
    CHECK_INT(nstarted, 5);
    CHECK_INT(f.max_running_seen, 1);
    CHECK_INT(f.d.stats.jobs_finished[STATS_RESULT_FAILED], 5);
    CHECK_INT(f.d.sched.nretained, 5);
    teardown(&f);
}

static void test_find(void)
{
    fixture_t f;
    job_t *jobs[3] = {NULL, NULL, NULL};

    setup(&f);
    for (int i = 0; i < 3; i++)
        CHECK_INT(submit(&f, 0, &jobs[i]), 0);
    for (int i = 0; i < 3; i++) {
        if (jobs[i] == NULL)
            continue;
        CHECK(is_job_id(jobs[i]->id));
        CHECK(sched_find(&f.d.sched, jobs[i]->id) == jobs[i]);
        for (int k = 0; k < i; k++)
            if (jobs[k] != NULL)
                CHECK(strcmp(jobs[i]->id, jobs[k]->id) != 0);
    }
    CHECK(sched_find(&f.d.sched, "0000000000000000") == NULL);
    CHECK(sched_find(&f.d.sched, "") == NULL);
    CHECK(sched_find(&f.d.sched, "not-an-id") == NULL);
    teardown(&f);
}

static void test_cancel_queued_and_finished(void)
{
    fixture_t f;
    job_t *a = NULL, *b = NULL;
    char aid[20];

    setup(&f);
    CHECK_INT(submit(&f, 0, &a), 0);
    CHECK_INT(submit(&f, 0, &b), 0);
    if (a == NULL || b == NULL) {
        teardown(&f);
        return;
    }
    snprintf(aid, sizeof(aid), "%s", a->id);
    CHECK_INT(sched_cancel(&f.d.sched, a), 0);
    CHECK_INT(a->state, JOB_CANCELLED);
    CHECK_INT(a->error, ERR_CANCELLED);
    CHECK(a->error_msg[0] != '\0');
    CHECK_INT(f.d.sched.nqueued, 1);
    CHECK_INT(f.nfinished, 1);
    CHECK(run_until_finished(&f, 2));
    CHECK_INT(count_events(&f, aid, SCHED_EV_STARTED), 0);
    CHECK_INT(count_events(&f, aid, SCHED_EV_FINISHED), 1);
    CHECK_INT(count_events(&f, b->id, SCHED_EV_STARTED), 1);
    CHECK_INT(b->state, JOB_FAILED);
    /* Both are finished now: cancelling changes nothing. */
    CHECK(sched_find(&f.d.sched, aid) == a);
    CHECK_INT(sched_cancel(&f.d.sched, a), ERR_INVALID_REQUEST);
    CHECK_INT(sched_cancel(&f.d.sched, b), ERR_INVALID_REQUEST);
    CHECK_INT(a->state, JOB_CANCELLED);
    CHECK_INT(a->error, ERR_CANCELLED);
    CHECK_INT(b->state, JOB_FAILED);
    CHECK_INT(f.nfinished, 2);
    CHECK_INT(f.d.stats.jobs_finished[STATS_RESULT_CANCELLED], 1);
    CHECK_INT(f.d.stats.jobs_finished[STATS_RESULT_FAILED], 1);
    teardown(&f);
}

static void test_cancel_running(void)
{
    fixture_t f;
    job_t *j = NULL;
    char url[64];

    setup(&f);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/never", f.silent_port);
    CHECK_INT(submit_url(&f, url, 0, &j), 0);
    if (j == NULL) {
        teardown(&f);
        return;
    }
    run_for(&f, 50);
    CHECK_INT(j->state, JOB_RUNNING);
    CHECK_INT(f.d.sched.nrunning, 1);
    CHECK_INT(f.d.pool.nconns, 1);
    CHECK_INT(sched_cancel(&f.d.sched, j), 0);
    CHECK_INT(j->state, JOB_CANCELLED);
    CHECK_INT(j->error, ERR_CANCELLED);
    CHECK_INT(f.d.sched.nrunning, 0);
    CHECK_INT(f.d.pool.nconns, 0);
    CHECK_INT(f.d.stats.conns_closed[STATS_CLOSE_CANCELLED], 1);
    CHECK_INT(sched_cancel(&f.d.sched, j), ERR_INVALID_REQUEST);
    teardown(&f);
}

static void test_queue_full(void)
{
    fixture_t f;
    job_t *j = NULL;
    job_spec_t spec;
    char errmsg[256] = "";
    uint64_t before;

    setup(&f);
    f.d.sched.max_queued = 2;
    CHECK_INT(submit(&f, 0, &j), 0);
    CHECK_INT(submit(&f, 0, &j), 0);
    before = fetchd_blocks();
    j = NULL;
    job_spec_init(&spec);
    spec.url = mem_strdup(REFUSED_URL);
    CHECK_INT(sched_submit(&f.d.sched, &spec, &j, errmsg, sizeof(errmsg)), ERR_QUEUE_FULL);
    CHECK(j == NULL);
    CHECK(errmsg[0] != '\0');
    CHECK(spec.url == NULL);
    CHECK_INT(fetchd_blocks(), before);
    CHECK_INT(f.d.sched.nqueued, 2);
    CHECK_INT(f.d.stats.objects[STATS_OBJ_JOB], 2);
    /* Once the queue drains there is room again. */
    CHECK(run_until_finished(&f, 2));
    CHECK_INT(submit(&f, 0, &j), 0);
    CHECK(run_until_finished(&f, 3));
    teardown(&f);
}

static void small_specs(job_spec_t *specs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        job_spec_init(&specs[i]);
        specs[i].url = mem_strdup(REFUSED_URL);
    }
}

static void test_queue_bytes(void)
{
    fixture_t f;
    job_t *a = NULL, *b = NULL, *jobs[2] = {NULL, NULL};
    job_spec_t specs[2];
    char errmsg[256] = "";
    uint64_t before;
    size_t cost;
    long bad = 0;

    setup(&f);
    f.d.sched.max_running = 0; /* everything stays queued */
    CHECK_INT(submit(&f, 0, &a), 0);
    cost = a->cost;
    CHECK(cost >= sizeof(job_t) + strlen(REFUSED_URL));
    CHECK_INT(f.d.sched.queued_bytes, cost);
    /* Room for one more small job, not for two: the batch is refused whole. */
    f.d.sched.max_queued_bytes = 2 * cost + cost / 2;
    before = fetchd_blocks();
    small_specs(specs, 2);
    CHECK_INT(sched_submit_many(&f.d.sched, specs, 2, jobs, &bad, errmsg, sizeof(errmsg)),
              ERR_QUEUE_FULL);
    CHECK_INT(bad, -1);
    CHECK(strstr(errmsg, "max_queue_bytes") != NULL);
    CHECK(specs[0].url == NULL && specs[1].url == NULL);
    run_closes(&f);
    CHECK_INT(fetchd_blocks(), before);
    CHECK_INT(f.d.sched.nqueued, 1);
    CHECK_INT(f.d.sched.queued_bytes, cost);
    CHECK_INT(submit(&f, 0, &b), 0);
    CHECK_INT(f.d.sched.queued_bytes, 2 * cost);
    /* A long URL is counted once (spec and parsed URL share it). */
    f.d.sched.max_queued_bytes = 0;
    {
        char url[8192];
        job_t *big = NULL;
        snprintf(url, sizeof(url), "http://127.0.0.1:1/%0*d", 8000, 0);
        CHECK_INT(submit_url(&f, url, 0, &big), 0);
        CHECK(big->cost > 8000 && big->cost < 8000 + cost + 256);
        CHECK(big->spec.url == big->url.href);
        CHECK_INT(sched_cancel(&f.d.sched, big), 0);
    }
    /* Leaving the queue gives the bytes back. */
    CHECK_INT(sched_cancel(&f.d.sched, a), 0);
    CHECK_INT(f.d.sched.queued_bytes, cost);
    CHECK_INT(sched_cancel(&f.d.sched, b), 0);
    CHECK_INT(f.d.sched.queued_bytes, 0);
    teardown(&f);
}

/* Runs the loop until the allocator has been trimmed again, or the guard
 * fires; returns the trims counted. */
static uint64_t run_until_trim(fixture_t *f, uint64_t trims)
{
    f->guard_fired = 0;
    uv_timer_start(&f->guard, on_timer_flag, LOOP_TIMEOUT_MS, 0);
    while (f->d.sched.trims == trims && !f->guard_fired)
        uv_run(&f->d.loop, UV_RUN_ONCE);
    uv_timer_stop(&f->guard);
    return f->d.sched.trims;
}

static void test_shrinks_after_burst(void)
{
    enum { N = 5000 };
    static job_spec_t specs[N];
    static job_t *jobs[N];
    fixture_t f;
    char errmsg[256] = "";
    uint64_t base;
    long bad;

    setup(&f);
    f.d.sched.max_running = 0;
    f.d.sched.retain_jobs = 0;
    base = fetchd_blocks();
    for (int round = 0; round < 2; round++) {
        uint64_t trims = f.d.sched.trims;
        small_specs(specs, N);
        CHECK_INT(sched_submit_many(&f.d.sched, specs, N, jobs, &bad, errmsg, sizeof(errmsg)), 0);
        CHECK(f.d.sched.heap_cap >= N && f.d.sched.table_size >= N / 2);
        for (size_t i = 0; i < N; i++)
            CHECK_INT(sched_cancel(&f.d.sched, jobs[i]), 0);
        run_closes(&f);
        CHECK_INT(f.d.sched.nqueued, 0);
        CHECK_INT(f.d.sched.njobs, 0);
        CHECK_INT(f.d.sched.queued_bytes, 0);
        CHECK_INT(f.d.sched.heap_cap, 64);
        CHECK_INT(f.d.sched.table_size, 1024);
        CHECK_INT(fetchd_blocks(), base);
        /* The allocator is trimmed once the burst is gone (rate-limited). */
        CHECK_INT(run_until_trim(&f, trims), trims + 1);
    }
    teardown(&f);
}

/* The trim comes when a quarter of the burst is left; the jobs that leave
 * after it are handed back too, once nothing is queued or running. */
static void test_trims_the_tail_of_a_burst(void)
{
    enum { N = 5000, TAIL = 1000 };
    static job_spec_t specs[N];
    static job_t *jobs[N];
    fixture_t f;
    char errmsg[256] = "";
    uint64_t trims;
    long bad;

    setup(&f);
    f.d.sched.max_running = 0;
    f.d.sched.retain_jobs = 0;
    small_specs(specs, N);
    CHECK_INT(sched_submit_many(&f.d.sched, specs, N, jobs, &bad, errmsg, sizeof(errmsg)), 0);
    trims = f.d.sched.trims;
    for (size_t i = 0; i < N - TAIL; i++)
        CHECK_INT(sched_cancel(&f.d.sched, jobs[i]), 0);
    run_closes(&f); /* may already run the trim */
    if (f.d.sched.trims == trims)
        run_until_trim(&f, trims);
    CHECK_INT(f.d.sched.trims, trims + 1);
    CHECK_INT(f.d.sched.njobs, TAIL);
    for (size_t i = N - TAIL; i < N; i++)
        CHECK_INT(sched_cancel(&f.d.sched, jobs[i]), 0);
    run_closes(&f);
    CHECK_INT(f.d.sched.njobs, 0);
    CHECK_INT(run_until_trim(&f, trims + 1), trims + 2);
    teardown(&f);
}

/* Submits spec, which must be refused as invalid with a message starting
 * with field; checks that nothing of it is left once the loop has run. */
static void expect_invalid(fixture_t *f, job_spec_t *spec, const char *field, uint64_t base)
{
    char errmsg[256] = "";
    job_t *j = NULL;

    CHECK_INT(sched_submit(&f->d.sched, spec, &j, errmsg, sizeof(errmsg)), ERR_INVALID_REQUEST);
    CHECK(j == NULL);
    if (strncmp(errmsg, field, strlen(field)) != 0)
        fprintf(stderr, "message \"%s\" does not name \"%s\"\n", errmsg, field);
    CHECK(strncmp(errmsg, field, strlen(field)) == 0);
    CHECK(spec->url == NULL && spec->headers == NULL && spec->method == NULL);
    run_closes(f);
    CHECK_INT(f->d.stats.objects[STATS_OBJ_JOB], 0);
    CHECK_INT(fetchd_blocks(), base);
    CHECK_INT(f->d.sched.nqueued, 0);
    CHECK_INT(f->nevents, 0);
}

static void test_invalid_specs(void)
{
    fixture_t f;
    job_spec_t spec;
    uint64_t base;

    setup(&f);
    base = fetchd_blocks();

    job_spec_init(&spec);
    spec.url = mem_strdup("not a url");
    expect_invalid(&f, &spec, "url:", base);

    job_spec_init(&spec);
    spec.url = mem_strdup("ftp://127.0.0.1/x");
    expect_invalid(&f, &spec, "url:", base);

    job_spec_init(&spec);
    spec.url = mem_strdup(REFUSED_URL);
    spec.headers = mem_calloc(2, sizeof(*spec.headers));
    spec.nheaders = 2;
    spec.headers[0].name = mem_strdup("X-Fine");
    spec.headers[0].value = mem_strdup("yes");
    spec.headers[1].name = mem_strdup("X-Evil");
    spec.headers[1].value = mem_strdup("a\r\nInjected: 1");
    expect_invalid(&f, &spec, "headers:", base);

    job_spec_init(&spec);
    spec.url = mem_strdup(REFUSED_URL);
    spec.headers = mem_calloc(1, sizeof(*spec.headers));
    spec.nheaders = 1;
    spec.headers[0].name = mem_strdup("Bad Name");
    spec.headers[0].value = mem_strdup("v");
    expect_invalid(&f, &spec, "headers:", base);

    job_spec_init(&spec);
    spec.url = mem_strdup(REFUSED_URL);
    spec.method = mem_strdup("GET /x");
    expect_invalid(&f, &spec, "method:", base);

    /* File output without a download directory is refused too. */
    job_spec_init(&spec);
    spec.url = mem_strdup(REFUSED_URL);
    spec.output = JOB_OUTPUT_FILE;
    spec.output_path = mem_strdup("out.bin");
    expect_invalid(&f, &spec, "output:", base);

    teardown(&f);
}

static void test_retain_count(void)
{
    fixture_t f;
    char ids[6][20];

    setup(&f);
    f.d.sched.retain_jobs = 3;
    for (int i = 0; i < 6; i++) {
        job_t *j = NULL;
        CHECK_INT(submit(&f, 0, &j), 0);
        snprintf(ids[i], sizeof(ids[i]), "%s", j ? j->id : "");
    }
    CHECK(run_until_finished(&f, 6));
    CHECK_INT(f.d.sched.nretained, 3);
    for (int i = 0; i < 6; i++) {
        job_t *j = sched_find(&f.d.sched, ids[i]);
        if (i < 3) {
            CHECK(j == NULL);
        } else {
            CHECK(j != NULL);
            if (j != NULL)
                CHECK_INT(j->state, JOB_FAILED);
        }
    }
    run_closes(&f);
    CHECK_INT(f.d.stats.objects[STATS_OBJ_JOB], 3);
    teardown(&f);
}

static void test_retain_age(void)
{
    fixture_t f;
    char ids[2][20];

    setup(&f);
    f.d.sched.retain_ms = 50;
    for (int i = 0; i < 2; i++) {
        job_t *j = NULL;
        CHECK_INT(submit(&f, 0, &j), 0);
        snprintf(ids[i], sizeof(ids[i]), "%s", j ? j->id : "");
    }
    CHECK(run_until_finished(&f, 2));
    /* The job that finished last has not aged at all yet. */
    CHECK(f.d.sched.nretained >= 1);
    CHECK(sched_find(&f.d.sched, ids[1]) != NULL);
    run_for(&f, 200);
    CHECK_INT(f.d.sched.nretained, 0);
    CHECK(sched_find(&f.d.sched, ids[0]) == NULL);
    CHECK(sched_find(&f.d.sched, ids[1]) == NULL);
    run_closes(&f);
    CHECK_INT(f.d.stats.objects[STATS_OBJ_JOB], 0);
    teardown(&f);
}

static void test_forget_finished(void)
{
    fixture_t f;
    job_t *j = NULL;
    char id[20];

    setup(&f);
    CHECK_INT(submit(&f, 0, &j), 0);
    snprintf(id, sizeof(id), "%s", j ? j->id : "");
    CHECK(run_until_finished(&f, 1));
    CHECK_INT(f.d.sched.nretained, 1);
    sched_forget_finished(&f.d.sched);
    CHECK_INT(f.d.sched.nretained, 0);
    CHECK(sched_find(&f.d.sched, id) == NULL);
    teardown(&f);
}

static void test_shutdown(void)
{
    fixture_t f;
    job_t *j = NULL;
    char url[64];
    size_t cancelled = 0;

    setup(&f);
    f.d.sched.max_running = 1;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/never", f.silent_port);
    CHECK_INT(submit_url(&f, url, 1, &j), 0);
    CHECK_INT(submit(&f, 0, &j), 0);
    CHECK_INT(submit(&f, 0, &j), 0);
    run_for(&f, 30);
    CHECK_INT(f.d.sched.nrunning, 1);
    CHECK_INT(f.d.sched.nqueued, 2);
    CHECK_INT(f.nfinished, 0);

    daemon_close(&f.d);
    CHECK_INT(f.nfinished, 3);
    for (size_t i = 0; i < f.nevents; i++) {
        const event_t *e = &f.events[i];
        if (e->ev != SCHED_EV_FINISHED)
            continue;
        CHECK_INT(e->state, JOB_CANCELLED);
        CHECK_INT(e->error, ERR_SHUTDOWN);
        cancelled++;
    }
    CHECK_INT(cancelled, 3);
    CHECK_INT(f.d.sched.nqueued, 0);
    CHECK_INT(f.d.sched.nrunning, 0);
    CHECK_INT(f.d.sched.nretained, 0);
    CHECK_INT(f.d.stats.jobs_finished[STATS_RESULT_CANCELLED], 3);
    /* No new work is accepted while shutting down. */
    {
        job_spec_t spec;
        char errmsg[128] = "";
        uint64_t before = fetchd_blocks();
        job_spec_init(&spec);
        spec.url = mem_strdup(REFUSED_URL);
        j = NULL;
        CHECK_INT(sched_submit(&f.d.sched, &spec, &j, errmsg, sizeof(errmsg)), ERR_SHUTDOWN);
        CHECK(j == NULL);
        CHECK_INT(fetchd_blocks(), before);
    }
    teardown(&f);
}

/* The scheduler hands every job its embedded environment, and the job's
 * upward traffic (started, retrying, finished; the backoff's jitter) comes
 * back through the owner ops the scheduler registered there. */
static void test_jobs_borrow_the_env(void)
{
    fixture_t f;
    job_t *j = NULL;
    job_spec_t spec;
    char errmsg[256] = "";
    const job_env_t *env;

    setup(&f);
    env = &f.d.sched.env;
    CHECK(env->loop == &f.d.loop && env->stats == &f.d.stats && env->pool == &f.d.pool);
    CHECK(env->dns == &f.d.dns && env->bufs == &f.d.bufs && env->tls == &f.d.tls);
    CHECK(env->acl == &f.d.acl && env->owner == &f.d.sched && env->ops != NULL);
    CHECK_INT(env->retry.base_ms, RETRY_DEFAULT_BASE_MS);
    f.d.sched.env.retry.base_ms = 2; /* a short backoff */
    job_spec_init(&spec);
    spec.url = mem_strdup(REFUSED_URL);
    spec.retries = 1;
    CHECK_INT(sched_submit(&f.d.sched, &spec, &j, errmsg, sizeof(errmsg)), 0);
    if (j != NULL) {
        char id[20];
        CHECK(j->env == env);
        snprintf(id, sizeof(id), "%s", j->id);
        CHECK(run_until_finished(&f, 1));
        CHECK_INT(count_events(&f, id, SCHED_EV_STARTED), 1);
        CHECK_INT(count_events(&f, id, SCHED_EV_RETRYING), 1);
        CHECK_INT(count_events(&f, id, SCHED_EV_FINISHED), 1);
        CHECK_INT(j->attempts, 2);
        CHECK_INT(j->error, ERR_CONNECT_REFUSED);
        CHECK_INT(f.d.stats.retries, 1);
    }
    teardown(&f);
}

/* Index of the first `ev` event of job id among the recorded events, or -1. */
static long event_index(const fixture_t *f, const char *id, sched_event_t ev)
{
    for (size_t i = 0; i < f->nevents; i++)
        if (f->events[i].ev == ev && strcmp(f->events[i].id, id) == 0)
            return (long)i;
    return -1;
}

/* A paused queued job is not dispatched, keeps its place (priority, then
 * submission order) for when it is resumed, and set changes the order. */
static void test_pause_queued_and_set_priority(void)
{
    fixture_t f;
    job_t *j[4] = {NULL, NULL, NULL, NULL};
    job_spec_t to;
    char ids[4][20], err[256];

    setup(&f);
    f.d.sched.max_running = 1;
    for (int i = 0; i < 4; i++) {
        CHECK_INT(submit(&f, i == 1 ? 5 : 0, &j[i]), 0);
        if (j[i] == NULL) {
            teardown(&f);
            return;
        }
        snprintf(ids[i], sizeof(ids[i]), "%s", j[i]->id);
    }
    CHECK_INT(sched_pause(&f.d.sched, j[1], err, sizeof(err)), 0);
    CHECK_INT(sched_pause(&f.d.sched, j[2], err, sizeof(err)), 0);
    CHECK_INT(sched_pause(&f.d.sched, j[2], err, sizeof(err)), 0); /* twice: no change */
    CHECK_INT(f.d.sched.npaused, 2);
    CHECK_INT(count_events(&f, ids[2], SCHED_EV_PAUSED), 1);
    job_spec_init(&to);
    to.priority = 10;
    CHECK_INT(sched_set(&f.d.sched, j[3], &to, SCHED_SET_PRIORITY, err, sizeof(err)), 0);
    CHECK(run_until_finished(&f, 2));
    CHECK(event_index(&f, ids[3], SCHED_EV_STARTED) < event_index(&f, ids[0], SCHED_EV_STARTED));
    CHECK_INT(count_events(&f, ids[1], SCHED_EV_STARTED), 0);
    CHECK_INT(count_events(&f, ids[2], SCHED_EV_STARTED), 0);
    CHECK_INT(j[1]->state, JOB_QUEUED);
    CHECK_INT(f.d.sched.nqueued, 2);
    /* Resumed in either order, they run by priority: 1 (5) before 2 (0). */
    CHECK_INT(sched_resume(&f.d.sched, j[2], err, sizeof(err)), 0);
    CHECK_INT(sched_resume(&f.d.sched, j[1], err, sizeof(err)), 0);
    CHECK_INT(f.d.sched.npaused, 0);
    CHECK(run_until_finished(&f, 4));
    CHECK(event_index(&f, ids[1], SCHED_EV_STARTED) < event_index(&f, ids[2], SCHED_EV_STARTED));
    CHECK(event_index(&f, ids[2], SCHED_EV_RESUMED) < event_index(&f, ids[2], SCHED_EV_STARTED));
    /* Finished: every change is refused. */
    CHECK_INT(sched_pause(&f.d.sched, j[0], err, sizeof(err)), ERR_INVALID_REQUEST);
    CHECK_INT(sched_resume(&f.d.sched, j[0], err, sizeof(err)), ERR_INVALID_REQUEST);
    CHECK_INT(sched_set(&f.d.sched, j[0], &to, SCHED_SET_PRIORITY, err, sizeof(err)),
              ERR_INVALID_REQUEST);
    teardown(&f);
}

/* A paused running job keeps its connection for keep_ms, then lets it go
 * and starts a fresh attempt when resumed; a pause then a shutdown leaves
 * nothing behind (teardown checks every count). */
static void test_pause_running_keep_bound(void)
{
    fixture_t f;
    job_t *j = NULL, *q = NULL;
    char url[64], err[256];

    setup(&f);
    f.d.sched.max_running = 1;
    f.d.sched.keep_ms = 20;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/never", f.silent_port);
    CHECK_INT(submit_url(&f, url, 0, &j), 0);
    CHECK_INT(submit(&f, 0, &q), 0);
    if (j == NULL || q == NULL) {
        teardown(&f);
        return;
    }
    run_for(&f, 50);
    CHECK_INT(j->state, JOB_RUNNING);
    CHECK_INT(f.d.pool.nconns, 1);
    CHECK_INT(sched_pause(&f.d.sched, j, err, sizeof(err)), 0);
    CHECK_INT(sched_pause(&f.d.sched, q, err, sizeof(err)), 0);
    CHECK_INT(f.d.sched.npaused, 2);
    CHECK_INT(f.d.pool.nconns, 1); /* kept */
    run_for(&f, 60);
    CHECK_INT(f.d.pool.nconns, 0); /* past keep_ms */
    CHECK_INT(f.d.stats.conns_closed[STATS_CLOSE_IDLE_TIMEOUT], 1);
    CHECK_INT(j->state, JOB_RUNNING);
    CHECK_INT(j->attempts, 1);
    CHECK_INT(sched_resume(&f.d.sched, j, err, sizeof(err)), 0);
    CHECK_INT(j->attempts, 2);
    CHECK_INT(f.d.sched.npaused, 1);
    run_for(&f, 30);
    CHECK_INT(f.d.pool.nconns, 1);
    CHECK_INT(sched_pause(&f.d.sched, j, err, sizeof(err)), 0);
    CHECK_INT(f.d.sched.npaused, 2);
    daemon_close(&f.d); /* paused, running and queued: both cancelled */
    CHECK_INT(f.nfinished, 2);
    CHECK_INT(f.d.sched.npaused, 0);
    teardown(&f);
}

TEST_MAIN(TEST_CASE(test_priority_then_fifo), TEST_CASE(test_find),
          TEST_CASE(test_cancel_queued_and_finished), TEST_CASE(test_cancel_running),
          TEST_CASE(test_queue_full), TEST_CASE(test_invalid_specs), TEST_CASE(test_retain_count),
          TEST_CASE(test_retain_age), TEST_CASE(test_forget_finished), TEST_CASE(test_shutdown),
          TEST_CASE(test_queue_bytes), TEST_CASE(test_shrinks_after_burst),
          TEST_CASE(test_trims_the_tail_of_a_burst), TEST_CASE(test_jobs_borrow_the_env),
          TEST_CASE(test_pause_queued_and_set_priority), TEST_CASE(test_pause_running_keep_bound))
