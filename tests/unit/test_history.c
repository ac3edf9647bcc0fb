/* Unit tests for daemon/history.c: the page's ring of samples. The ring's
 * memory is flat over 10,000 samples (heap blocks and bytes of every
 * component), samples come back oldest first, rates follow the counters,
 * the warm-up sample outlives the ring's wrap, the JSON has one value per
 * sample in every series, and the timer samples and closes cleanly. */
#include <jansson.h>

#include "history.h"
#include "mem.h"
#include "test.h"

#define MAX_TURNS 20000 /* loop turns to wait for the timer (each up to 1 ms) */

static daemon_t d;

static int setup(void)
{
    daemon_config_t cfg;
    char err[256];

    daemon_config_init(&cfg);
    cfg.log_level = LOG_LEVEL_ERROR;
    log_set_level(LOG_LEVEL_ERROR);
    if (daemon_init(&d, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "daemon_init: %s\n", err);
        return -1;
    }
    return 0;
}

static void teardown(void)
{
    uint64_t blocks;

    daemon_close(&d);
    uv_run(&d.loop, UV_RUN_DEFAULT);
    CHECK_INT(d.stats.objects[STATS_OBJ_HISTORY], 0);
    CHECK_INT(daemon_dispose(&d), 0);
    mem_get(MEM_FETCHD, &blocks, NULL);
    CHECK_INT(blocks, 0);
}

/* Closes h and runs the loop until its ring is freed. */
static void close_history(history_t *h)
{
    history_close(h);
    uv_run(&d.loop, UV_RUN_DEFAULT);
    CHECK(h->ring == NULL);
    CHECK_INT(d.stats.objects[STATS_OBJ_HISTORY], 0);
}

static void heap(uint64_t blocks[MEM__COUNT], uint64_t bytes[MEM__COUNT])
{
    for (int c = 0; c < MEM__COUNT; c++)
        mem_get(c, &blocks[c], &bytes[c]);
}

static void test_ring_is_flat_over_10000_samples(void)
{
    uint64_t blocks0[MEM__COUNT], bytes0[MEM__COUNT], blocks[MEM__COUNT], bytes[MEM__COUNT];
    history_t h;

    CHECK_INT(history_init(&h, &d, 10000, 0), 0);
    CHECK_INT(d.stats.objects[STATS_OBJ_HISTORY], 1);
    history_sample(&h);
    heap(blocks0, bytes0);
    for (int i = 0; i < 10000; i++) {
        history_sample(&h);
        if (i % 1000 == 999) {
            heap(blocks, bytes);
            for (int c = 0; c < MEM__COUNT; c++) {
                CHECK_INT(blocks[c], blocks0[c]);
                CHECK_INT(bytes[c], bytes0[c]);
            }
        }
    }
    CHECK_INT(h.n, HISTORY_SAMPLES);
    CHECK_INT(h.taken, 10001);
    CHECK_INT(d.stats.objects[STATS_OBJ_HISTORY], 1);
    close_history(&h);
}

static void test_oldest_first_and_rates(void)
{
    history_t h;

    CHECK_INT(history_init(&h, &d, 10000, 0), 0);
    /* More than a ring's worth, each with its own idle count, so the
     * order after the wrap can be read back. */
    for (unsigned i = 0; i < HISTORY_SAMPLES + 25; i++) {
        d.pool.nidle = i;
        history_sample(&h);
    }
    d.pool.nidle = 0;
    CHECK_INT(h.n, HISTORY_SAMPLES);
    for (size_t i = 0; i < h.n; i++) {
        CHECK_INT((long long)history_at(&h, i)->v[HISTORY_CONNS + 2], (long long)(i + 25));
        if (i > 0)
            CHECK(history_at(&h, i)->time >= history_at(&h, i - 1)->time);
    }
    d.stats.jobs_finished[STATS_RESULT_DONE] += 100;
    d.stats.received_bytes += 1 << 20;
    history_sample(&h);
    CHECK(history_at(&h, h.n - 1)->v[HISTORY_FINISHED_RATE + STATS_RESULT_DONE] > 0);
    CHECK(history_at(&h, h.n - 1)->v[HISTORY_BYTES_RATE] > 0);
    CHECK(history_at(&h, h.n - 1)->v[HISTORY_FINISHED_RATE + STATS_RESULT_FAILED] == 0);
    history_sample(&h);
    CHECK(history_at(&h, h.n - 1)->v[HISTORY_FINISHED_RATE + STATS_RESULT_DONE] == 0);
    d.stats.jobs_finished[STATS_RESULT_DONE] -= 100;
    d.stats.received_bytes -= 1 << 20;
    close_history(&h);
}

static void test_warm_sample_outlives_the_wrap(void)
{
    history_t h;

    CHECK_INT(history_init(&h, &d, 10000, 0), 0);
    CHECK(!h.have_warm);
    d.sched.nretained = 7;
    history_sample(&h);
    d.sched.nretained = 0;
    for (int i = 0; i < 2 * HISTORY_SAMPLES; i++)
        history_sample(&h);
    CHECK(h.have_warm);
    CHECK_INT((long long)h.warm.v[HISTORY_JOBS + 2], 7);
    CHECK_INT((long long)history_at(&h, 0)->v[HISTORY_JOBS + 2], 0);
    close_history(&h);
    /* A warm-up far away: no mark yet. */
    CHECK_INT(history_init(&h, &d, 10000, 3600 * 1000), 0);
    history_sample(&h);
    CHECK(!h.have_warm);
    close_history(&h);
}

static void test_render_has_every_sample(void)
{
    strbuf_t b = {0};
    json_error_t jerr;
    json_t *doc, *panels, *p, *s;
    size_t i, k, nseries = 0;
    history_t h;

    CHECK_INT(history_init(&h, &d, 10000, 0), 0);
    for (int n = 0; n < 5; n++)
        history_sample(&h);
    history_render(&h, &b);
    CHECK(!b.failed);
    doc = json_loads(b.p, 0, &jerr);
    CHECK(doc != NULL);
    CHECK_INT(json_integer_value(json_object_get(doc, "samples")), 5);
    CHECK_INT(json_array_size(json_object_get(doc, "t")), 5);
    panels = json_object_get(doc, "panels");
    CHECK_INT(json_array_size(panels), 10);
    json_array_foreach (panels, i, p) {
        json_array_foreach (json_object_get(p, "series"), k, s) {
            CHECK_INT(json_array_size(json_object_get(s, "v")), 5);
            CHECK(json_is_true(json_object_get(p, "gauge")) ==
                  json_is_number(json_object_get(s, "warm")));
            nseries++;
        }
    }
    CHECK_INT(nseries, HISTORY_NSERIES);
    json_decref(doc);
    strbuf_dispose(&b);
    close_history(&h);
}

static void on_check(uv_timer_t *t)
{
    history_t *h = t->data;
    if (h->taken >= 5)
        uv_stop(t->loop);
}

static void test_timer_samples(void)
{
    uv_timer_t check;
    history_t h;
    int turns = 0;

    CHECK_INT(history_init(&h, &d, 1, 0), 0);
    history_start(&h);
    CHECK_INT(h.taken, 1);
    uv_timer_init(&d.loop, &check);
    check.data = &h;
    uv_timer_start(&check, on_check, 1, 1);
    while (h.taken < 5 && turns++ < MAX_TURNS)
        uv_run(&d.loop, UV_RUN_ONCE);
    CHECK(h.taken >= 5);
    uv_close((uv_handle_t *)&check, NULL);
    close_history(&h);
}

int main(void)
{
    static const test_case_t cases[] = {
        TEST_CASE(test_ring_is_flat_over_10000_samples),
        TEST_CASE(test_oldest_first_and_rates),
        TEST_CASE(test_warm_sample_outlives_the_wrap),
        TEST_CASE(test_render_has_every_sample),
        TEST_CASE(test_timer_samples),
    };
    int rc;

    if (mem_install() != 0 || setup() != 0)
        return 1;
    rc = test_main(cases, sizeof(cases) / sizeof(cases[0]));
    test_checks_failed_in_case_ = 0;
    teardown();
    if (test_checks_failed_in_case_ != 0) {
        printf("FAIL teardown\n");
        rc = 1;
    }
    return rc;
}
