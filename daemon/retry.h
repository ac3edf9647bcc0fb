/* retry — which failures a job tries again, and how long it waits first.
 *
 * The policy only: it knows no jobs, timers or schedulers. A job asks it
 * whether an error or an HTTP status is worth another request, and how long
 * to back off; the job keeps its own count of retries left.
 *
 * Retried: a refused or timed-out connect (nothing reached the server), and
 * the statuses that say "later" (429, 503; and 502, 504 for an idempotent
 * method). The delay is the server's Retry-After when it gives one (capped),
 * else an exponential backoff with jitter in [d/2, d).
 */
#ifndef FETCHD_RETRY_H
#define FETCHD_RETRY_H

#include <stdint.h>
#include <time.h>

/* The policy's knobs; retry_policy_init() fills in the defaults below. */
typedef struct retry_policy {
    uint64_t base_ms;      /* public: the first backoff step (250) */
    uint64_t max_ms;       /* public: the backoff cap (30 s) */
    uint64_t after_max_ms; /* public: the cap on a server's Retry-After (120 s) */
} retry_policy_t;

#define RETRY_DEFAULT_BASE_MS      250
#define RETRY_DEFAULT_MAX_MS       30000
#define RETRY_DEFAULT_AFTER_MAX_MS 120000

/* A source of random numbers in [0, 1) for the jitter; data is the caller's. */
typedef double (*retry_random_fn)(void *data);

void retry_policy_init(retry_policy_t *p);

/* 1 for a method whose request may be sent twice (RFC 9110 9.2.2). */
int retry_idempotent(const char *method);

/* 1 when a request that failed with err (a negative fetchd error) may be
 * tried again: it never reached the server. */
int retry_error_retryable(int err);

/* 1 when a response with this status to a request with this method may be
 * tried again. */
int retry_status_retryable(int status, const char *method);

/* The backoff before retry number done + 1 (done retries were made):
 * base_ms * 2^done, capped at max_ms, with jitter in [d/2, d) drawn from rnd. */
uint64_t retry_backoff_ms(const retry_policy_t *p, unsigned done, retry_random_fn rnd,
                          void *rnd_data);

/* Parses a Retry-After value (delta-seconds or an HTTP-date, compared with
 * now) into milliseconds; -1 when v is NULL or unparsable. */
int64_t retry_after_ms(const char *v, time_t now);

/* The delay before retrying a response: its Retry-After (v, may be NULL)
 * capped at after_max_ms, else the backoff. */
uint64_t retry_delay_ms(const retry_policy_t *p, const char *v, time_t now, unsigned done,
                        retry_random_fn rnd, void *rnd_data);

#endif
