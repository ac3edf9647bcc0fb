/* Unit tests for daemon/retry.c: which failures are retried, the backoff
 * with its jitter drawn from a source the test controls, and Retry-After. */
#include <stdint.h>
#include <time.h>

#include "err.h"
#include "retry.h"
#include "test.h"

/* A random source that returns the value it points at. */
static double fixed(void *data)
{
    return *(const double *)data;
}

static void test_defaults(void)
{
    retry_policy_t p;
    retry_policy_init(&p);
    CHECK_INT(p.base_ms, 250);
    CHECK_INT(p.max_ms, 30000);
    CHECK_INT(p.after_max_ms, 120000);
}

static void test_errors(void)
{
    CHECK(retry_error_retryable(ERR_CONNECT_REFUSED));
    CHECK(retry_error_retryable(ERR_CONNECT_TIMEOUT));
    CHECK(!retry_error_retryable(ERR_DNS));
    CHECK(!retry_error_retryable(ERR_TIMEOUT));
    CHECK(!retry_error_retryable(ERR_TLS_VERIFY));
    CHECK(!retry_error_retryable(ERR_EMPTY_REPLY));
    CHECK(!retry_error_retryable(0));
}

static void test_statuses(void)
{
    CHECK(retry_status_retryable(429, "POST"));
    CHECK(retry_status_retryable(503, "POST"));
    CHECK(retry_status_retryable(502, "GET"));
    CHECK(retry_status_retryable(504, "PUT"));
    CHECK(!retry_status_retryable(502, "POST"));
    CHECK(!retry_status_retryable(504, "PATCH"));
    CHECK(!retry_status_retryable(500, "GET"));
    CHECK(!retry_status_retryable(200, "GET"));
    CHECK(!retry_status_retryable(404, "GET"));
    CHECK(retry_idempotent("DELETE"));
    CHECK(retry_idempotent("HEAD"));
    CHECK(!retry_idempotent("POST"));
    CHECK(!retry_idempotent("get")); /* methods are case-sensitive */
}

static void test_backoff(void)
{
    retry_policy_t p;
    double lo = 0.0, hi = 0.999999;

    retry_policy_init(&p);
    /* 250, 500, 1000 ... ms: jitter puts the delay in [d/2, d). */
    CHECK_INT(retry_backoff_ms(&p, 0, fixed, &lo), 125);
    CHECK_INT(retry_backoff_ms(&p, 0, fixed, &hi), 249);
    CHECK_INT(retry_backoff_ms(&p, 1, fixed, &lo), 250);
    CHECK_INT(retry_backoff_ms(&p, 3, fixed, &lo), 1000);
    /* Capped at max_ms, however many retries were made (no shift overflow). */
    CHECK_INT(retry_backoff_ms(&p, 10, fixed, &lo), 15000);
    CHECK_INT(retry_backoff_ms(&p, 1000, fixed, &hi), 29999);
    p.base_ms = 10;
    p.max_ms = UINT64_MAX;
    CHECK_INT(retry_backoff_ms(&p, 40, fixed, &lo), (uint64_t)10 << 16 >> 1);
}

static void test_retry_after(void)
{
    time_t now = 1700000000; /* Tue, 14 Nov 2023 22:13:20 GMT */

    CHECK_INT(retry_after_ms(NULL, now), -1);
    CHECK_INT(retry_after_ms("0", now), 0);
    CHECK_INT(retry_after_ms(" 7", now), 7000);
    CHECK_INT(retry_after_ms("7 ", now), 7000);
    CHECK_INT(retry_after_ms("-1", now), -1);
    CHECK_INT(retry_after_ms("7s", now), -1);
    CHECK_INT(retry_after_ms("soon", now), -1);
    CHECK_INT(retry_after_ms("99999999999999999999", now), -1);
    CHECK_INT(retry_after_ms("Tue, 14 Nov 2023 22:13:50 GMT", now), 30000);
    CHECK_INT(retry_after_ms("Tue, 14 Nov 2023 22:00:00 GMT", now), 0); /* in the past */
}

static void test_delay(void)
{
    retry_policy_t p;
    double half = 0.5;
    time_t now = 1700000000;

    retry_policy_init(&p);
    CHECK_INT(retry_delay_ms(&p, "2", now, 0, fixed, &half), 2000);
    CHECK_INT(retry_delay_ms(&p, "100000", now, 0, fixed, &half), 120000); /* capped */
    CHECK_INT(retry_delay_ms(&p, NULL, now, 2, fixed, &half), 750);        /* backoff */
    CHECK_INT(retry_delay_ms(&p, "junk", now, 0, fixed, &half), 187);
}

TEST_MAIN(TEST_CASE(test_defaults), TEST_CASE(test_errors), TEST_CASE(test_statuses),
          TEST_CASE(test_backoff), TEST_CASE(test_retry_after), TEST_CASE(test_delay))
