/* stats — the daemon's counters and live object counts.
 *
 * One stats_t is embedded in struct daemon; every module that creates objects
 * gets a borrowed pointer to it. Object counts are "created - destroyed" for
 * each heap type, so a leak of any type shows up as a count that never returns
 * to its baseline. Everything runs on the loop thread: plain integers suffice.
 */
#ifndef FETCHD_STATS_H
#define FETCHD_STATS_H

#include <stdint.h>

#include "err.h"

/* X(ENUM, metrics label) — one per heap object type. */
#define STATS_OBJ_MAP(X)                \
    X(CONN, "conn")                     \
    X(JOB, "job")                       \
    X(ORIGIN, "origin")                 \
    X(DNS_ENTRY, "dns_entry")           \
    X(BUFFER, "buffer")                 \
    X(REQUEST, "request")               \
    X(TLS_CONFIG, "tls_config")         \
    X(TLS_CONTEXT, "tls_context")       \
    X(TLS_SESSION, "tls_session")       \
    X(CTL_CLIENT, "ctl_client")         \
    X(CTL_WAIT, "ctl_wait")             \
    X(CTL_SUB, "ctl_subscription")      \
    X(CTL_WRITE, "ctl_write")           \
    X(DECODER, "decoder")               \
    X(REDIS_CONN, "redis_conn")         \
    X(QUEUE_ENTRY, "queue_entry")       \
    X(HISTORY, "history")               \
    X(HOST_LIMIT, "host_limit")         \
    X(METRICS_CLIENT, "metrics_client") \
    X(PROXY, "proxy")

typedef enum stats_obj {
#define X(e, label) STATS_OBJ_##e,
    STATS_OBJ_MAP(X)
#undef X
        STATS_OBJ__COUNT
} stats_obj_t;

/* X(ENUM, metrics label) — why a connection was closed. */
#define STATS_CLOSE_MAP(X)              \
    X(CONNECT_FAILED, "connect_failed") \
    X(NOT_REUSABLE, "not_reusable")     \
    X(ERROR, "error")                   \
    X(IDLE_TIMEOUT, "idle_timeout")     \
    X(PEER_CLOSED, "peer_closed")       \
    X(CANCELLED, "cancelled")           \
    X(POOL_FULL, "pool_full")           \
    X(SHUTDOWN, "shutdown")

typedef enum stats_close {
#define X(e, label) STATS_CLOSE_##e,
    STATS_CLOSE_MAP(X)
#undef X
        STATS_CLOSE__COUNT
} stats_close_t;

/* X(ENUM, metrics label) — deviations from RFC 9112 that fetchd tolerates
 * in a response (see conn.c, "normalising"); each is counted once per
 * response head in which it occurs. */
#define STATS_LENIENT_MAP(X)                              \
    X(BARE_LF, "bare_lf")                                 \
    X(OBS_FOLD, "obs_fold")                               \
    X(REPEATED_CONTENT_LENGTH, "repeated_content_length") \
    X(REPEATED_LOCATION, "repeated_location")             \
    X(FRAMING_ON_BODILESS, "framing_on_bodiless")         \
    X(EMPTY_LINE_BEFORE_STATUS, "empty_line_before_status")

typedef enum stats_lenient {
#define X(e, label) STATS_LENIENT_##e,
    STATS_LENIENT_MAP(X)
#undef X
        STATS_LENIENT__COUNT
} stats_lenient_t;

typedef enum stats_result {
    STATS_RESULT_DONE,
    STATS_RESULT_FAILED,
    STATS_RESULT_CANCELLED,
    STATS_RESULT__COUNT
} stats_result_t;

/* Upper bounds (seconds) of the fetch-duration histogram buckets; +Inf is implied. */
#define STATS_DURATION_BUCKETS                                               \
    {                                                                        \
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300 \
    }
#define STATS_NDURATION 14

/* The Redis queue's figures (daemon/queue.c); enabled with --queue. */
typedef struct stats_queue {
    int enabled, connected;
    uint64_t read, acked, claimed, failed, reconnects; /* counters */
    uint64_t pending; /* entries held: read or claimed, not acked yet */
} stats_queue_t;
/* fetchd_proxy_connects_total{kind, result}: how the proxy leg of new
 * connections ended. kind: http (a connection to an HTTP proxy for
 * absolute-form requests), connect (a CONNECT tunnel), socks5. */
typedef enum stats_proxy_kind {
    STATS_PROXY_HTTP,
    STATS_PROXY_CONNECT,
    STATS_PROXY_SOCKS5,
    STATS_PROXY__KINDS
} stats_proxy_kind_t;

/* ok; refused (TCP refused, or the proxy refused the tunnel: a non-2xx
 * answer to CONNECT, a SOCKS reply other than success); auth (407, or the
 * SOCKS server refused our methods or credentials); error (a malformed or
 * cut-short handshake); timeout (connect_timeout ran out in the proxy leg). */
typedef enum stats_proxy_result {
    STATS_PROXY_OK,
    STATS_PROXY_REFUSED,
    STATS_PROXY_AUTH,
    STATS_PROXY_ERROR,
    STATS_PROXY_TIMEOUT,
    STATS_PROXY__RESULTS
} stats_proxy_result_t;

static inline const char *stats_proxy_kind_label(int k)
{
    static const char *const labels[STATS_PROXY__KINDS] = {"http", "connect", "socks5"};
    return labels[k];
}

static inline const char *stats_proxy_result_label(int r)
{
    static const char *const labels[STATS_PROXY__RESULTS] = {"ok", "refused", "auth", "error",
                                                             "timeout"};
    return labels[r];
}

typedef struct stats {
    int64_t objects[STATS_OBJ__COUNT]; /* live instances */
    uint64_t conns_opened;
    uint64_t conns_closed[STATS_CLOSE__COUNT];
    uint64_t conn_reuses;
    uint64_t received_bytes;
    uint64_t jobs_finished[STATS_RESULT__COUNT];
    uint64_t retries;
    uint64_t redirects;
    uint64_t lenient[STATS_LENIENT__COUNT];     /* tolerated deviations, by kind */
    uint64_t duration_buckets[STATS_NDURATION]; /* non-cumulative */
    uint64_t proxy_connects[STATS_PROXY__KINDS][STATS_PROXY__RESULTS];
    uint64_t duration_count;
    double duration_sum;
    stats_queue_t queue;
    uint64_t responses[5]; /* finished jobs' final responses, by status class 1xx..5xx */
    uint64_t job_errors[ERR__END - ERR__BASE - 1]; /* finished jobs' errors, by code */
} stats_t;

void stats_init(stats_t *s);

static inline void stats_obj_created(stats_t *s, stats_obj_t t)
{
    s->objects[t]++;
}

/* Asserts the count stays non-negative: a destroy without a create is a bug. */
void stats_obj_destroyed(stats_t *s, stats_obj_t t);

void stats_observe_duration(stats_t *s, double seconds);

const char *stats_obj_label(stats_obj_t t);
const char *stats_close_label(stats_close_t r);
const char *stats_result_label(stats_result_t r);
const char *stats_lenient_label(stats_lenient_t k);

#endif
