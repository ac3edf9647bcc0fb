/* Unit tests for daemon/queue.c: the --queue URL (tests/integration/test_queue.py
 * runs the queue itself against a real redis-server). */
#include <string.h>
#include <unistd.h>

#include "mem.h"
#include "queue.h"
#include "test.h"

/* Parses url; returns 0 or -1 with err filled. q is disposed by the caller. */
static int parse(queue_t *q, const char *url, char *err, size_t len)
{
    err[0] = '\0';
    return queue_init(q, url, err, len);
}

static void test_defaults(void)
{
    queue_t q;
    char err[256], consumer[300], host[256];

    CHECK_INT(parse(&q, "redis://127.0.0.1/jobs", err, sizeof(err)), 0);
    CHECK_STR(q.url.host, "127.0.0.1");
    CHECK_INT(q.url.port, 6379);
    CHECK_STR(q.url.stream, "jobs");
    CHECK_STR(q.url.group, "fetchd");
    CHECK_STR(q.url.results, "jobs:results");
    CHECK(q.url.user == NULL && q.url.pass == NULL);
    CHECK_INT(q.url.create, 0);
    CHECK_INT(q.url.claim_idle_ms, 60000);
    CHECK_INT(q.url.max_deliveries, 5);
    CHECK_INT(q.url.block_ms, 2000);
    CHECK_INT(q.url.count, 256);
    CHECK_INT(q.url.max_inflight, 0);
    CHECK_INT(q.url.db, 0);
    /* The consumer name is hostname-pid, so instances on one host differ. */
    CHECK_INT(gethostname(host, sizeof(host)), 0);
    snprintf(consumer, sizeof(consumer), "%s-%d", host, (int)getpid());
    CHECK_STR(q.url.consumer, consumer);
    CHECK_STR(q.url.display, "redis://127.0.0.1:6379/jobs?group=fetchd");
    queue_dispose(&q);
}

static void test_everything_set(void)
{
    queue_t q;
    char err[256];

    CHECK_INT(parse(&q,
                    "redis://app:p%40ss%3Aw@[::1]:7000/my%20jobs?group=g1&consumer=c-1&"
                    "results=out&create=1&claim_idle=1500&max_deliveries=0&block=50&count=7&"
                    "max_inflight=9&results_maxlen=100&max_unsent=1000&db=3",
                    err, sizeof(err)),
              0);
    CHECK_STR(err, "");
    CHECK_STR(q.url.user, "app");
    CHECK_STR(q.url.pass, "p@ss:w");
    CHECK_STR(q.url.host, "::1");
    CHECK_INT(q.url.port, 7000);
    CHECK_STR(q.url.stream, "my jobs");
    CHECK_STR(q.url.group, "g1");
    CHECK_STR(q.url.consumer, "c-1");
    CHECK_STR(q.url.results, "out");
    CHECK_INT(q.url.create, 1);
    CHECK_INT(q.url.claim_idle_ms, 1500);
    CHECK_INT(q.url.max_deliveries, 0);
    CHECK_INT(q.url.block_ms, 50);
    CHECK_INT(q.url.count, 7);
    CHECK_INT(q.url.max_inflight, 9);
    CHECK_INT(q.url.results_maxlen, 100);
    CHECK_INT(q.url.max_unsent, 1000);
    CHECK_INT(q.url.db, 3);
    /* The password never reaches the text that is logged. */
    CHECK_STR(q.url.display, "redis://app:***@[::1]:7000/my jobs?group=g1");
    CHECK(strstr(q.url.display, "p@ss") == NULL);
    queue_dispose(&q);

    CHECK_INT(parse(&q, "redis://:secret@h:1/s", err, sizeof(err)), 0);
    CHECK(q.url.user == NULL);
    CHECK_STR(q.url.pass, "secret");
    CHECK_STR(q.url.display, "redis://:***@h:1/s?group=fetchd");
    queue_dispose(&q);
}

static void test_refused(void)
{
    static const struct {
        const char *url, *says;
    } bad[] = {
        {"rediss://127.0.0.1/jobs", "out of scope"},
        {"REDISS://127.0.0.1/jobs", "out of scope"},
        {"http://127.0.0.1/jobs", "not a redis:// URL"},
        {"redis://127.0.0.1", "no stream"},
        {"redis://127.0.0.1/", "no stream"},
        {"redis://127.0.0.1/?group=g", "no stream"},
        {"redis://127.0.0.1:0/jobs", "HOST:PORT"},
        {"redis://127.0.0.1:65536/jobs", "HOST:PORT"},
        {"redis://127.0.0.1:x/jobs", "HOST:PORT"},
        {"redis://:6379/jobs", "HOST:PORT"},
        {"redis://[::1/jobs", "HOST:PORT"},
        {"redis://h/jobs?nope=1", "unknown parameter"},
        {"redis://h/jobs?group", "has no value"},
        {"redis://h/jobs?group=", "must not be empty"},
        {"redis://h/jobs?claim_idle=99", "claim_idle"},
        {"redis://h/jobs?create=2", "create"},
        {"redis://h/jobs?count=0", "count"},
        {"redis://h/jobs?block=-1", "block"},
        {"redis://h/jobs%00x", "stream name"},
        {"redis://us%zzer:pw@h/jobs", "percent-encoding"},
    };
    char err[256];
    queue_t q;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = parse(&q, bad[i].url, err, sizeof(err));
        CHECK_INT(rc, -1);
        if (rc == 0)
            queue_dispose(&q);
        if (strstr(err, bad[i].says) == NULL)
            fprintf(stderr, "%s: \"%s\" does not say \"%s\"\n", bad[i].url, err, bad[i].says);
        CHECK(strstr(err, bad[i].says) != NULL);
    }
}

static void test_no_leaks(void)
{
    uint64_t blocks, bytes;
    mem_get(MEM_FETCHD, &blocks, &bytes);
    CHECK_INT(blocks, 0);
}

TEST_MAIN(TEST_CASE(test_defaults), TEST_CASE(test_everything_set), TEST_CASE(test_refused),
          TEST_CASE(test_no_leaks))
