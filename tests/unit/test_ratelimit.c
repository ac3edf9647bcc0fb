/* Unit tests for daemon/ratelimit.c: token-bucket arithmetic, the host
 * rules, admission of jobs to a host and the byte rates, all on an injected
 * clock (the uv timers are never waited for: ratelimit_poll() does their
 * work at the clock's time). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "conn.h"
#include "err.h"
#include "job.h"
#include "jobspec.h"
#include "mem.h"
#include "ratelimit.h"
#include "test.h"

#define MS 1000000ull
#define S  1000000000ull

static uint64_t fake_now;

static uint64_t fake_clock(void *data)
{
    (void)data;
    return fake_now;
}

static int near(double a, double b)
{
    return fabs(a - b) < 1e-6;
}

static void test_bucket(void)
{
    rl_bucket_t b;

    rl_bucket_init(&b, 10, 2, 0);
    CHECK(near(b.tokens, 2));
    CHECK_INT(rl_bucket_wait_ns(&b, 1, 0), 0);
    b.tokens -= 2;
    CHECK_INT(rl_bucket_wait_ns(&b, 1, 0), 100 * MS); /* one token per 100 ms */
    rl_bucket_refill(&b, 50 * MS);
    CHECK(near(b.tokens, 0.5));
    CHECK_INT(rl_bucket_wait_ns(&b, 1, 50 * MS), 50 * MS);
    rl_bucket_refill(&b, 10 * S); /* capped at the burst */
    CHECK(near(b.tokens, 2));
    b.tokens = -5; /* debt: half a second to pay back at 10/s */
    CHECK_INT(rl_bucket_wait_ns(&b, 0, 10 * S), 500 * MS);
    rl_bucket_refill(&b, 10 * S - MS); /* a clock that looks back changes nothing */
    CHECK(near(b.tokens, -5));
    rl_bucket_set(&b, 20, 4, 10 * S + 100 * MS); /* earned 1 at the old rate, then 20/s */
    CHECK(near(b.tokens, -4));
    CHECK_INT(rl_bucket_wait_ns(&b, 0, 10 * S + 100 * MS), 200 * MS);
    rl_bucket_init(&b, 0, 1, 0); /* unlimited */
    b.tokens = -100;
    CHECK_INT(rl_bucket_wait_ns(&b, 1, 0), 0);
}

static void test_rules(void)
{
    static const char *const bad[] = {
        "{}",
        "[1]",
        "[{\"rate\": 1}]",
        "[{\"host\": \"a*b\"}]",
        "[{\"host\": \"*.\"}]",
        "[{\"host\": \"*x\"}]",
        "[{\"host\": \"\"}]",
        "[{\"host\": \"a\", \"rate\": -1}]",
        "[{\"host\": \"a\", \"burst\": 0.5}]",
        "[{\"host\": \"a\", \"delay_ms\": 1.5}]",
        "[{\"host\": \"a\", \"delay_ms\": 3600001}]",
        "[{\"host\": \"a\", \"speed\": 1}]",
        "[{\"host\": \"a\"}, {\"host\": \"A\"}]",
        "[{\"host\": \"a\"",
    };
    rl_rules_t r;
    char why[200];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        why[0] = '\0';
        CHECK(rl_rules_parse(bad[i], &r, why, sizeof(why)) == -1);
        CHECK(why[0] != '\0');
    }
    CHECK(rl_rules_parse(NULL, &r, why, sizeof(why)) == 0 && r.n == 0);
    CHECK(rl_rules_parse("[{\"host\": \"*\", \"rate\": 5}, {\"host\": \"*.example.com\", "
                         "\"rate\": 2, \"burst\": 4, \"delay_ms\": 250}, {\"host\": "
                         "\"*.cdn.example.com\"}, {\"host\": \"Example.COM\", \"rate\": 1}]",
                         &r, why, sizeof(why)) == 0);
    CHECK_INT(r.n, 4);
    CHECK_STR(rl_rules_match(&r, "other.org")->pattern, "*");
    CHECK_STR(rl_rules_match(&r, "www.example.com")->pattern, "*.example.com");
    CHECK_STR(rl_rules_match(&r, "a.cdn.example.com")->pattern, "*.cdn.example.com");
    CHECK_STR(rl_rules_match(&r, "example.com")->pattern, "example.com"); /* exact */
    CHECK_STR(rl_rules_match(&r, "notexample.com")->pattern, "*");
    CHECK(rl_rules_match(&r, "www.example.com")->delay_ns == 250 * MS);
    CHECK(near(rl_rules_match(&r, "www.example.com")->burst, 4));
    rl_rules_dispose(&r);
    CHECK(rl_rules_parse("[{\"host\": \"*.example.com\"}]", &r, why, sizeof(why)) == 0);
    CHECK(rl_rules_match(&r, "example.com") == NULL); /* "*.x" is below x only */
    rl_rules_dispose(&r);
}

/* The job fields: rate, delay (seconds) and limit_rate, their bounds, and
 * the state file's round trip. */
static int decode(const char *js, job_spec_t *spec, char *err, size_t len)
{
    json_t *obj = json_loads(js, 0, NULL);
    int rc = obj ? jobspec_decode(obj, spec, err, len) : -1;
    json_decref(obj);
    return rc;
}

static void test_job_fields(void)
{
    static const char *const bad[] = {
        "{\"url\": \"http://a.test/\", \"rate\": 0}",
        "{\"url\": \"http://a.test/\", \"rate\": 2000000}",
        "{\"url\": \"http://a.test/\", \"rate\": \"1/s\"}",
        "{\"url\": \"http://a.test/\", \"delay\": -0.5}",
        "{\"url\": \"http://a.test/\", \"delay\": 3601}",
        "{\"url\": \"http://a.test/\", \"limit_rate\": -1}",
        "{\"url\": \"http://a.test/\", \"limit_rate\": 1.5}",
    };
    job_spec_t spec, again;
    char err[256];
    json_t *enc;

    CHECK_INT(decode("{\"url\": \"http://a.test/\", \"rate\": 2.5, \"delay\": 0.25, "
                     "\"limit_rate\": 1048576}",
                     &spec, err, sizeof(err)),
              0);
    CHECK(near(spec.rate, 2.5));
    CHECK_INT(spec.delay_ms, 250);
    CHECK_INT(spec.limit_rate, 1048576);
    enc = jobspec_encode_spec(&spec);
    CHECK(enc != NULL);
    CHECK_INT(jobspec_decode(enc, &again, err, sizeof(err)), 0);
    CHECK(near(again.rate, 2.5) && again.delay_ms == 250 && again.limit_rate == 1048576);
    json_decref(enc);
    job_spec_dispose(&again);
    job_spec_dispose(&spec);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        CHECK_INT(decode(bad[i], &spec, err, sizeof(err)), ERR_INVALID_REQUEST);
        CHECK(strstr(err, "rate") != NULL || strstr(err, "delay") != NULL);
    }
}

/* ---- a limiter on a loop, with jobs that only carry what it reads ------------ */

typedef struct fixture {
    uv_loop_t loop;
    stats_t stats;
    ratelimit_t rl;
    job_t *ready[16];
    size_t nready;
    size_t resumed;
} fixture_t;

static void on_ready(ratelimit_t *rl, job_t *j, void *data)
{
    fixture_t *f = data;
    (void)rl;
    if (f->nready < 16)
        f->ready[f->nready++] = j;
}

static void setup(fixture_t *f, const char *rules)
{
    rl_rules_t r;
    char why[200];

    memset(f, 0, sizeof(*f));
    fake_now = 1000 * S;
    uv_loop_init(&f->loop);
    stats_init(&f->stats);
    CHECK(ratelimit_init(&f->rl, &f->loop, &f->stats) == 0);
    f->rl.clock = fake_clock;
    f->rl.on_ready = on_ready;
    f->rl.ready_data = f;
    CHECK(rl_rules_parse(rules, &r, why, sizeof(why)) == 0);
    ratelimit_set_rules(&f->rl, &r);
}

static void teardown(fixture_t *f)
{
    ratelimit_close(&f->rl);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    ratelimit_dispose(&f->rl);
    CHECK(uv_loop_close(&f->loop) == 0);
    CHECK_INT(f->stats.objects[STATS_OBJ_HOST_LIMIT], 0);
}

static void job_init(job_t *j, char *host, uint64_t seq)
{
    memset(j, 0, sizeof(*j));
    j->url.host = host;
    j->seq = seq;
}

/* Pops the released jobs and admits them, as the scheduler would. */
static size_t start_released(fixture_t *f)
{
    size_t n = 0;
    for (size_t i = 0; i < f->nready; i++)
        n += ratelimit_admit(&f->rl, f->ready[i]) == 0;
    f->nready = 0;
    return n;
}

static void test_host_rate(void)
{
    fixture_t f;
    job_t j[4], other;
    char a[] = "a.test", b[] = "b.test";

    setup(&f, "[{\"host\": \"a.test\", \"rate\": 10}]");
    for (int i = 0; i < 4; i++)
        job_init(&j[i], a, (uint64_t)i + 1);
    job_init(&other, b, 9);
    CHECK(ratelimit_admit(&f.rl, &j[0]) == 0); /* the bucket starts full */
    CHECK(ratelimit_admit(&f.rl, &j[1]) == 1);
    CHECK(j[1].rl.parked);
    CHECK(ratelimit_admit(&f.rl, &j[2]) == 1);
    CHECK(ratelimit_admit(&f.rl, &other) == 0); /* another host is not held */
    CHECK_INT(f.rl.nhosts, 1);                  /* and needs no entry */
    CHECK_INT(f.stats.objects[STATS_OBJ_HOST_LIMIT], 1);
    CHECK_INT(f.rl.nparked, 2);
    CHECK_INT(f.rl.host_waits, 2);
    CHECK(uv_is_active((uv_handle_t *)&f.rl.wake_timer)); /* one timer for the host */

    fake_now += 50 * MS;
    ratelimit_poll(&f.rl);
    CHECK_INT(f.nready, 0);
    fake_now += 50 * MS; /* 100 ms: one token */
    ratelimit_poll(&f.rl);
    CHECK_INT(f.nready, 1);
    CHECK(f.ready[0] == &j[1]); /* in submission order */
    CHECK(!j[1].rl.parked && j[1].rl.state == RL_JOB_RELEASED);
    /* A new job for the host queues behind the released one. */
    CHECK(ratelimit_admit(&f.rl, &j[3]) == 1);
    CHECK_INT(start_released(&f), 1);
    CHECK_INT(f.rl.nparked, 2);
    fake_now += 99 * MS + 500000; /* within the slack of a millisecond */
    ratelimit_poll(&f.rl);
    CHECK_INT(f.nready, 1);
    CHECK(f.ready[0] == &j[2]);
    CHECK_INT(start_released(&f), 1);

    /* A cancelled parked job leaves its host. */
    ratelimit_dequeue(&f.rl, &j[3]);
    CHECK_INT(f.rl.nparked, 0);
    CHECK(j[3].rl.state == RL_JOB_NONE && j[3].rl.host == NULL);
    CHECK_INT(f.rl.host_waits, 3);

    /* A long idle host is forgotten once its bucket is full again. */
    fake_now += RL_FORGET_NS + 20 * S;
    ratelimit_poll(&f.rl);
    CHECK_INT(f.rl.nhosts, 0);
    teardown(&f);
}

/* A running job's redirects and retries: held by the host's rate and
 * delay like starts, counted once per request held, never parked. */
static void test_running_requests(void)
{
    fixture_t f;
    job_t run, queued, free_job;
    char a[] = "a.test", b[] = "b.test";

    setup(&f, "[{\"host\": \"a.test\", \"rate\": 4}]");
    job_init(&run, a, 1);
    job_init(&queued, a, 2);
    job_init(&free_job, b, 3);
    CHECK(ratelimit_admit(&f.rl, &run) == 0);
    /* Its redirect to the same host comes 250 ms later at 4/s. */
    CHECK_INT(ratelimit_request(&f.rl, &run), 250 * MS);
    CHECK(run.rl.holding && !run.rl.parked);
    CHECK_INT(f.rl.nparked, 0);
    fake_now += 100 * MS;
    CHECK_INT(ratelimit_request(&f.rl, &run), 150 * MS); /* asking again */
    CHECK_INT(f.rl.host_waits, 1);                       /* counts once */
    fake_now += 150 * MS;
    CHECK_INT(ratelimit_request(&f.rl, &run), 0);
    CHECK(!run.rl.holding);
    /* That request took the token: a queued job for the host waits. */
    CHECK(ratelimit_admit(&f.rl, &queued) == 1);
    CHECK_INT(f.rl.host_waits, 2);
    /* A host no rule names holds nothing and keeps no entry. */
    CHECK_INT(ratelimit_request(&f.rl, &free_job), 0);
    CHECK_INT(f.rl.nhosts, 1);
    /* A job's own delay applies to its later requests too. */
    free_job.spec.delay_ms = 200;
    CHECK_INT(ratelimit_request(&f.rl, &free_job), 0);
    CHECK_INT(ratelimit_request(&f.rl, &free_job), 200 * MS);
    ratelimit_dequeue(&f.rl, &queued);
    fake_now += RL_FORGET_NS + 20 * S;
    ratelimit_poll(&f.rl);
    CHECK_INT(f.rl.nhosts, 0);
    teardown(&f);
}

static void test_burst_and_delay(void)
{
    fixture_t f;
    job_t j[5];
    char a[] = "www.example.com", c[] = "c.test";

    setup(&f, "[{\"host\": \"*.example.com\", \"rate\": 2, \"burst\": 3}]");
    for (int i = 0; i < 3; i++) {
        job_init(&j[i], a, (uint64_t)i + 1);
        CHECK(ratelimit_admit(&f.rl, &j[i]) == 0); /* the burst */
    }
    job_init(&j[3], a, 4);
    CHECK(ratelimit_admit(&f.rl, &j[3]) == 1);
    fake_now += 497 * MS;
    ratelimit_poll(&f.rl);
    CHECK_INT(f.nready, 0);
    fake_now += 2 * MS + MS / 2;
    ratelimit_poll(&f.rl);
    CHECK_INT(start_released(&f), 1);

    /* A job's own delay on a host with no rule: the gap counts from the
     * previous start to the host, whichever job made it. */
    job_init(&j[0], c, 10);
    j[0].spec.delay_ms = 300;
    job_init(&j[1], c, 11);
    CHECK(ratelimit_admit(&f.rl, &j[0]) == 0);
    CHECK(ratelimit_admit(&f.rl, &j[1]) == 0); /* asks for no gap */
    job_init(&j[2], c, 12);
    j[2].spec.rate = 2; /* 500 ms apart */
    CHECK(ratelimit_admit(&f.rl, &j[2]) == 1);
    fake_now += 300 * MS;
    ratelimit_poll(&f.rl);
    CHECK_INT(f.nready, 0);
    fake_now += 200 * MS;
    ratelimit_poll(&f.rl);
    CHECK_INT(start_released(&f), 1);

    /* Rules re-read: the host is free now; its parked job goes at once. */
    job_init(&j[3], a, 20);
    CHECK(ratelimit_admit(&f.rl, &j[3]) == 0); /* a token has come back */
    job_init(&j[4], a, 21);
    CHECK(ratelimit_admit(&f.rl, &j[4]) == 1);
    {
        rl_rules_t r;
        char why[100];
        CHECK(rl_rules_parse("[]", &r, why, sizeof(why)) == 0);
        ratelimit_set_rules(&f.rl, &r);
    }
    ratelimit_poll(&f.rl);
    CHECK_INT(start_released(&f), 1);
    CHECK_INT(f.rl.nparked, 0);
    fake_now += RL_FORGET_NS + 20 * S;
    ratelimit_poll(&f.rl);
    CHECK_INT(f.rl.nhosts, 0);
    teardown(&f);
}

/* Parked jobs leave in the queue's order: priority first, then submission. */
static void test_parked_order(void)
{
    fixture_t f;
    job_t j[4];
    char a[] = "a.test";
    static const int prio[4] = {0, 0, 5, 5};
    static const int order[3] = {2, 3, 1};

    setup(&f, "[{\"host\": \"a.test\", \"rate\": 10}]");
    for (int i = 0; i < 4; i++) {
        job_init(&j[i], a, (uint64_t)i + 1);
        j[i].spec.priority = prio[i];
        CHECK(ratelimit_admit(&f.rl, &j[i]) == (i == 0 ? 0 : 1));
    }
    for (int k = 0; k < 3; k++) {
        fake_now += 100 * MS;
        ratelimit_poll(&f.rl);
        CHECK_INT(f.nready, 1);
        CHECK(f.ready[0] == &j[order[k]]);
        CHECK_INT(start_released(&f), 1);
    }
    teardown(&f);
}

/* An entry made by a start that waited for nothing still gets swept: the
 * wake timer runs for it (once, a host entry outlived every test). */
static void test_lone_entry_is_swept(void)
{
    fixture_t f;
    job_t j;
    char a[] = "a.test";

    setup(&f, NULL);
    job_init(&j, a, 1);
    j.spec.delay_ms = 100;
    CHECK(ratelimit_admit(&f.rl, &j) == 0);
    CHECK_INT(f.rl.nhosts, 1);
    CHECK(uv_is_active((uv_handle_t *)&f.rl.wake_timer));
    fake_now += RL_FORGET_NS;
    ratelimit_poll(&f.rl);
    CHECK_INT(f.rl.nhosts, 0);
    CHECK(!uv_is_active((uv_handle_t *)&f.rl.wake_timer));
    teardown(&f);
}

/* Many hosts: the table grows, every entry is found and then swept. */
static void test_many_hosts(void)
{
    static char names[1000][16];
    static job_t jobs[1000];
    fixture_t f;

    setup(&f, "[{\"host\": \"*\", \"rate\": 1}]");
    for (int i = 0; i < 1000; i++) {
        snprintf(names[i], sizeof(names[i]), "h%d.test", i);
        job_init(&jobs[i], names[i], (uint64_t)i + 1);
        CHECK(ratelimit_admit(&f.rl, &jobs[i]) == 0);
    }
    CHECK_INT(f.rl.nhosts, 1000);
    CHECK(f.rl.table_size >= 1000);
    for (int i = 0; i < 1000; i += 7) {
        job_init(&jobs[i], names[i], 2000 + (uint64_t)i);
        CHECK(ratelimit_admit(&f.rl, &jobs[i]) == 1); /* the same entry: no token */
        ratelimit_dequeue(&f.rl, &jobs[i]);
    }
    CHECK_INT(f.rl.nhosts, 1000);
    CHECK_INT(f.stats.objects[STATS_OBJ_HOST_LIMIT], 1000);
    fake_now += RL_FORGET_NS;
    ratelimit_poll(&f.rl);
    CHECK_INT(f.rl.nhosts, 0);
    teardown(&f);
}

static void on_resume(job_t *j)
{
    fixture_t *f = j->data;
    f->resumed++;
}

static void test_bytes(void)
{
    fixture_t f;
    job_t j, k;
    conn_t c; /* never reading: conn_pause/resume leave it alone */
    char a[] = "a.test";

    setup(&f, NULL);
    memset(&c, 0, sizeof(c));
    job_init(&j, a, 1);
    j.spec.limit_rate = 100000; /* burst: one read buffer, 64 KiB > 10000 */
    j.conn = &c;
    j.data = &f;
    j.rl.on_resume = on_resume;
    CHECK(ratelimit_admit(&f.rl, &j) == 0);
    CHECK(near(j.rl.bytes.rate, 100000) && near(j.rl.bytes.burst, 65536));
    CHECK(ratelimit_charge(&f.rl, &j, 65536) == 0); /* the burst, no debt */
    CHECK(ratelimit_charge(&f.rl, &j, 1000) == 1);  /* 10 ms of debt */
    CHECK(j.rl.paused);
    CHECK_INT(f.rl.npaused, 1);
    fake_now += 5 * MS;
    ratelimit_poll(&f.rl);
    CHECK_INT(f.resumed, 0);
    fake_now += 5 * MS;
    ratelimit_poll(&f.rl);
    CHECK_INT(f.resumed, 1);
    CHECK(!j.rl.paused);
    CHECK_INT(ratelimit_paused_ns(&f.rl), 10 * MS);

    /* The cap: a job asking for more (or for nothing) gets max_limit_rate. */
    f.rl.max_limit_rate = 50000;
    CHECK(ratelimit_admit(&f.rl, &j) == 0);
    CHECK(near(j.rl.bytes.rate, 50000));
    f.rl.max_limit_rate = 0;

    /* The global budget, shared: both jobs pause on it and take turns. */
    f.rl.bandwidth = 1000000; /* burst 100000 */
    job_init(&k, a, 2);
    k.conn = &c;
    k.data = &f;
    k.rl.on_resume = on_resume;
    j.spec.limit_rate = 0;
    CHECK(ratelimit_admit(&f.rl, &j) == 0);
    CHECK(ratelimit_admit(&f.rl, &k) == 0);
    CHECK(ratelimit_charge(&f.rl, &j, 60000) == 0);
    CHECK(ratelimit_charge(&f.rl, &k, 60000) == 1); /* 20000 over */
    CHECK(ratelimit_charge(&f.rl, &j, 10000) == 1);
    CHECK_INT(f.rl.npaused, 2);
    fake_now += 28 * MS;
    ratelimit_poll(&f.rl);
    CHECK_INT(f.resumed, 1);
    fake_now += 2 * MS; /* 30 ms: 30000 bytes earned, out of debt */
    ratelimit_poll(&f.rl);
    CHECK_INT(f.resumed, 2); /* one turn, for the job served least */
    CHECK(!k.rl.paused && j.rl.paused);
    /* The next turn is due when the budget covers one more read (64 KiB). */
    CHECK(uv_timer_get_due_in(&f.rl.bytes_timer) >= 65);
    fake_now += 66 * MS;
    ratelimit_poll(&f.rl);
    CHECK_INT(f.resumed, 3);
    CHECK(!j.rl.paused);
    /* A job that lets go of its connection while paused leaves the list. */
    CHECK(ratelimit_charge(&f.rl, &j, 200000) == 1);
    ratelimit_job_detach(&f.rl, &j);
    CHECK_INT(f.rl.npaused, 0);
    teardown(&f);
}

TEST_MAIN(TEST_CASE(test_bucket), TEST_CASE(test_rules), TEST_CASE(test_job_fields),
          TEST_CASE(test_host_rate), TEST_CASE(test_running_requests),
          TEST_CASE(test_burst_and_delay), TEST_CASE(test_lone_entry_is_swept),
          TEST_CASE(test_parked_order), TEST_CASE(test_many_hosts), TEST_CASE(test_bytes))
