/* metrics — the Prometheus endpoint: GET /metrics (text format 0.0.4),
 * GET /healthz, and the operator's page: GET / (one self-contained HTML
 * document, daemon/page.html compiled in) which plots GET /history.json
 * (the ring in history.h), on a small HTTP/1.1 server whose requests llhttp
 * parses.
 *
 * Limits keep misbehaving or hostile clients from stalling the loop, growing
 * memory or silencing the endpoint: 8 KiB of request head, one request at a
 * time per connection, and
 *  - a deadline for a whole request (5 s from accept, or from the first byte
 *    of the next request on a kept-alive connection), which bytes arriving
 *    do not move, so a client trickling a head is closed all the same;
 *  - 30 s of keep-alive idleness between requests, 10 s to take a response;
 *  - at most METRICS_MAX_CLIENTS clients (fds) at once. When all slots are
 *    taken a new client is not refused: the client whose request (or
 *    keep-alive wait) began longest ago is evicted instead (one being
 *    answered only if every other one is), so a scraper gets through while
 *    held or trickling connections take every slot.
 *
 * Fuzzers and tests drive it through this header alone: daemon_init() a
 * daemon, metrics_start() on "127.0.0.1:0", read the bound port from
 * m->port, talk HTTP to it over TCP while running d->loop (m->nclients says
 * when a client is gone), then metrics_close() and run the loop until it is
 * empty. The limits below are public fields that may be lowered after
 * metrics_start() (they apply to clients accepted, or phases begun, after
 * the change).
 *
 * Ownership: the metrics server owns its clients; it borrows the daemon and
 * the control server (for its client count), which outlive it.
 */
#ifndef FETCHD_METRICS_H
#define FETCHD_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "control.h"
#include "daemon.h"
#include "err.h"
#include "history.h"
#include "job.h"

#define METRICS_MAX_CLIENTS        128
#define METRICS_REQUEST_TIMEOUT_MS 5000
#define METRICS_IDLE_TIMEOUT_MS    30000
#define METRICS_WRITE_TIMEOUT_MS   10000

/* Why the endpoint closed a client before answering it (the reason label of
 * fetchd_metrics_clients_dropped_total). */
typedef enum metrics_close {
    METRICS_CLOSE_EVICTED,         /* its slot went to a newer client */
    METRICS_CLOSE_REQUEST_TIMEOUT, /* no whole request within request_timeout_ms */
    METRICS_CLOSE_IDLE_TIMEOUT,    /* kept alive, silent for idle_timeout_ms */
    METRICS_CLOSE_WRITE_TIMEOUT,   /* did not take its response within write_timeout_ms */
    METRICS_CLOSE__COUNT
} metrics_close_t;

typedef struct metrics_client metrics_client_t;

typedef struct metrics {
    daemon_t *d;                           /* borrowed */
    control_t *ctl;                        /* borrowed, may be NULL */
    unsigned max_clients;                  /* public: METRICS_MAX_CLIENTS */
    uint64_t request_timeout_ms;           /* public: METRICS_REQUEST_TIMEOUT_MS */
    uint64_t idle_timeout_ms;              /* public: METRICS_IDLE_TIMEOUT_MS */
    uint64_t write_timeout_ms;             /* public: METRICS_WRITE_TIMEOUT_MS */
    unsigned nclients;                     /* read-only */
    int port;                              /* read-only: the port bound (useful with port 0) */
    double start_time;                     /* read-only: unix time the process started */
    uint64_t closed[METRICS_CLOSE__COUNT]; /* read-only: clients dropped, by reason */
    history_t *history;                    /* borrowed, may be NULL: what GET /history.json shows */
    /* private */
    uv_tcp_t server;
    uv_tcp_t reject; /* accepts and closes a connection when a client cannot be allocated */
    int listening, closing, rejecting, reject_waiting;
    metrics_client_t *clients;      /* owned: oldest phase first */
    metrics_client_t *clients_tail; /* borrowed: the last of clients */
} metrics_t;

/* Listens on addr ("HOST:PORT", "[V6]:PORT"; port 0 picks a free port and
 * logs it; m->port is the port bound). Returns 0, or an error with errmsg
 * saying why (then nothing is left open). */
int metrics_start(metrics_t *m, daemon_t *d, control_t *ctl, const char *addr, char *errmsg,
                  size_t errlen);

/* Stops listening and closes every client; run the loop afterwards. */
void metrics_close(metrics_t *m);

/* Counts a finished job j (borrowed) in st: on fetchd_responses_total, by
 * the class of its final HTTP status when it has one, and on
 * fetchd_job_errors_total, by its error code when it has one (the stats
 * method shows the same counts). */
void metrics_job_finished(stats_t *st, const job_t *j);

/* Renders the metrics page into a new heap string (mem_free it), NULL on
 * allocation failure; *len gets its length. */
char *metrics_render(metrics_t *m, size_t *len);

#endif
