/* Unit tests for the submit path's borrowed URLs (issue 15): the control
 * socket's submit decodes each job's url into one room it lends to the
 * whole batch (jobspec_decode_lent()), and job_create() shares the parsed
 * url.href or copies the text before the room is reused. These tests feed
 * sched_submit_each() the way daemon/methods.c's m_submit does, with the room
 * a heap block that is scribbled over and freed once the batch is in: a job
 * that kept a pointer into it shows the scribbles (and, under ASan, a
 * heap-use-after-free). The room handed out starts 8 bytes into its block,
 * so that freeing it by mistake is an invalid free, not a silent one. */
#include <stdio.h>
#include <string.h>

#include "daemon.h"
#include "err.h"
#include "job.h"
#include "jobspec.h"
#include "jsonr.h"
#include "mem.h"
#include "sched.h"
#include "test.h"

#define ROOM_SIZE 256

typedef struct source {
    jsonr_t r;
    uint32_t v;      /* the next job object */
    char *block;     /* owned: the room's heap block */
    char *room;      /* block + 8 */
    unsigned lent;   /* specs whose url was left in the room */
    unsigned called; /* specs asked for */
} source_t;

static uint64_t fetchd_blocks(void)
{
    uint64_t blocks, bytes;
    mem_get(MEM_FETCHD, &blocks, &bytes);
    return blocks;
}

static int next_spec(void *data, size_t k, job_spec_t *spec, char *err, size_t errlen)
{
    source_t *src = data;
    uint32_t v = src->v;
    int rc;

    (void)k;
    src->called++;
    src->v = jsonr_next(&src->r, v);
    rc = jobspec_decode_lent(&src->r, v, spec, src->room, ROOM_SIZE, err, errlen);
    if (rc == 0 && spec->url_borrowed && spec->url == src->room)
        src->lent++;
    return rc;
}

/* Parses the submit params text into src and lends it a fresh room. */
static void source_open(source_t *src, const char *text)
{
    memset(src, 0, sizeof(*src));
    jsonr_init(&src->r, mem_realloc, mem_free);
    CHECK_INT(jsonr_parse(&src->r, text, strlen(text)), 0);
    src->v = jsonr_first(&src->r, jsonr_get(&src->r, 0, "jobs"));
    src->block = mem_alloc(ROOM_SIZE + 8);
    CHECK(src->block != NULL);
    src->room = src->block + 8;
}

/* The batch is in: the room is scribbled over and freed, as the line it
 * served is gone. */
static void source_close(source_t *src)
{
    memset(src->block, 'X', ROOM_SIZE + 8);
    mem_free(src->block);
    jsonr_free(&src->r);
}

static void daemon_up(daemon_t *d)
{
    daemon_config_t cfg;
    char errmsg[256] = "";

    CHECK_INT(mem_install(), 0);
    CHECK_INT(fetchd_blocks(), 0);
    daemon_config_init(&cfg);
    CHECK_INT(daemon_init(d, &cfg, errmsg, sizeof(errmsg)), 0);
}

static void daemon_down(daemon_t *d)
{
    daemon_close(d);
    CHECK_INT(uv_run(&d->loop, UV_RUN_DEFAULT), 0);
    CHECK_INT(daemon_dispose(d), 0);
    for (int t = 0; t < STATS_OBJ__COUNT; t++)
        CHECK_INT(d->stats.objects[t], 0);
    CHECK_INT(fetchd_blocks(), 0);
}

/* The url as status shows it (jobspec's encoder, as the control socket's). */
static void check_status_url(const job_t *j, const char *want)
{
    json_t *o = jobspec_encode_job(j);
    CHECK(o != NULL);
    CHECK_STR(json_string_value(json_object_get(o, "url")), want);
    json_decref(o);
}

/* Normalised URLs: each job costs its own allocation and nothing more, and
 * its url is its parsed href, not the room. */
static void test_normalised_url_costs_no_copy(void)
{
    static const char *const urls[] = {"http://127.0.0.1:1/a", "http://127.0.0.1:1/b?x=1",
                                       "http://[::1]:2/c"};
    daemon_t d;
    source_t src;
    job_t *jobs[3];
    char err[256] = "";
    long bad = 0;
    uint64_t allocs;

    daemon_up(&d);
    source_open(&src, "{\"jobs\": [{\"url\": \"http://127.0.0.1:1/a\"}, "
                      "{\"url\": \"http://127.0.0.1:1/b?x=1\"}, "
                      "{\"url\": \"http://[::1]:2/c\"}]}");
    allocs = mem_allocations_total(MEM_FETCHD);
    CHECK_INT(sched_submit_each(&d.sched, 3, next_spec, &src, jobs, &bad, err, sizeof(err)), 0);
    CHECK_INT(mem_allocations_total(MEM_FETCHD) - allocs, 3);
    CHECK_INT(src.lent, 3);
    source_close(&src);
    for (int i = 0; i < 3; i++) {
        CHECK(!jobs[i]->spec.url_borrowed);
        CHECK(jobs[i]->spec.url == jobs[i]->url.href);
        CHECK_STR(jobs[i]->spec.url, urls[i]);
        check_status_url(jobs[i], urls[i]);
    }
    daemon_down(&d);
}

/* A URL that is not normalised cannot share href: the job copies the text
 * before the room goes, and status shows it as submitted. */
static void test_unnormalised_url_outlives_the_room(void)
{
    static const char *const urls[] = {"HTTP://127.0.0.1:1/a/./b", "http://127.0.0.1:1/c#frag"};
    daemon_t d;
    source_t src;
    job_t *jobs[2];
    char err[256] = "";
    long bad = 0;
    uint64_t allocs;

    daemon_up(&d);
    source_open(&src, "{\"jobs\": [{\"url\": \"HTTP://127.0.0.1:1/a/./b\"}, "
                      "{\"url\": \"http://127.0.0.1:1/c#frag\"}]}");
    allocs = mem_allocations_total(MEM_FETCHD);
    CHECK_INT(sched_submit_each(&d.sched, 2, next_spec, &src, jobs, &bad, err, sizeof(err)), 0);
    CHECK_INT(mem_allocations_total(MEM_FETCHD) - allocs, 4); /* two jobs, two copies */
    CHECK_INT(src.lent, 2);
    source_close(&src);
    for (int i = 0; i < 2; i++) {
        CHECK(!jobs[i]->spec.url_borrowed);
        CHECK(jobs[i]->spec.url != jobs[i]->url.href);
        CHECK_STR(jobs[i]->spec.url, urls[i]);
        check_status_url(jobs[i], urls[i]);
    }
    CHECK_STR(jobs[0]->url.href, "http://127.0.0.1:1/a/./b");
    CHECK_STR(jobs[1]->url.href, "http://127.0.0.1:1/c");
    daemon_down(&d);
}

/* A URL longer than the room is the decoder's own copy, as before. */
static void test_long_url_is_owned(void)
{
    char text[1024], url[600];
    daemon_t d;
    source_t src;
    job_t *j;
    char err[256] = "";
    long bad = 0;

    memset(url, 0, sizeof(url));
    memcpy(url, "http://127.0.0.1:1/", 19);
    memset(url + 19, 'a', 400);
    snprintf(text, sizeof(text), "{\"jobs\": [{\"url\": \"%s\"}]}", url);
    daemon_up(&d);
    source_open(&src, text);
    CHECK_INT(sched_submit_each(&d.sched, 1, next_spec, &src, &j, &bad, err, sizeof(err)), 0);
    CHECK_INT(src.lent, 0);
    source_close(&src);
    CHECK_STR(j->spec.url, url);
    check_status_url(j, url);
    daemon_down(&d);
}

/* A batch refused at its second job: nothing is queued, the first job (its
 * url borrowed) and the second's borrowed url are released without freeing
 * the room, and every count is back at its baseline. */
static void test_refused_batch_releases_all(void)
{
    static const char *const texts[] = {
        /* the second url does not parse */
        "{\"jobs\": [{\"url\": \"http://127.0.0.1:1/a\"}, {\"url\": \"ftp://127.0.0.1/\"}, "
        "{\"url\": \"http://127.0.0.1:1/c\"}]}",
        /* the second url is fine, another field is not (the decoder refuses) */
        "{\"jobs\": [{\"url\": \"HTTP://127.0.0.1:1/a\"}, {\"url\": \"http://127.0.0.1:1/b\", "
        "\"retries\": -1}, {\"url\": \"http://127.0.0.1:1/c\"}]}",
        /* the second's method is refused by job_create() after the url parsed */
        "{\"jobs\": [{\"url\": \"http://127.0.0.1:1/a\"}, {\"url\": \"http://127.0.0.1:1/b\", "
        "\"method\": \"G T\"}, {\"url\": \"http://127.0.0.1:1/c\"}]}",
    };
    for (size_t t = 0; t < sizeof(texts) / sizeof(texts[0]); t++) {
        daemon_t d;
        source_t src;
        job_t *jobs[3];
        char err[256] = "";
        long bad = -1;
        uint64_t blocks;

        daemon_up(&d);
        blocks = fetchd_blocks();
        source_open(&src, texts[t]);
        CHECK_INT(sched_submit_each(&d.sched, 3, next_spec, &src, jobs, &bad, err, sizeof(err)),
                  ERR_INVALID_REQUEST);
        CHECK_INT(bad, 1);
        CHECK_INT(src.called, 2); /* nothing is decoded past the failure */
        CHECK(strncmp(err, t == 1 ? "retries: " : t == 0 ? "url: " : "method: ", 5) == 0);
        source_close(&src);
        CHECK_INT(d.sched.nqueued, 0);
        CHECK(sched_next(&d.sched, NULL) == NULL);
        uv_run(&d.loop, UV_RUN_NOWAIT); /* the refused jobs' timers close */
        CHECK_INT(d.stats.objects[STATS_OBJ_JOB], 0);
        CHECK_INT(fetchd_blocks(), blocks);
        daemon_down(&d);
    }
}

TEST_MAIN(TEST_CASE(test_normalised_url_costs_no_copy),
          TEST_CASE(test_unnormalised_url_outlives_the_room), TEST_CASE(test_long_url_is_owned),
          TEST_CASE(test_refused_batch_releases_all))
