/* metrics — the Prometheus endpoint: GET /metrics (text format 0.0.4) and
 * GET /healthz, on a small HTTP/1.1 server whose requests llhttp parses.
 *
 * Limits keep a misbehaving scraper from stalling the loop or growing
 * memory: at most 16 clients, 8 KiB of request head, one request at a time
 * per connection, 30 s of idleness.
 *
 * Ownership: the metrics server owns its clients; it borrows the daemon and
 * the control server (for its client count), which outlive it.
 */
#ifndef FETCHD_METRICS_H
#define FETCHD_METRICS_H

#include <stddef.h>
#include <uv.h>

#include "control.h"
#include "daemon.h"

typedef struct metrics_client metrics_client_t;

typedef struct metrics {
    daemon_t *d;          /* borrowed */
    control_t *ctl;       /* borrowed, may be NULL */
    unsigned max_clients; /* public */
    unsigned nclients;    /* read-only */
    int port;             /* read-only: the port bound (useful with port 0) */
    double start_time;    /* read-only: unix time the process started */
    /* private */
    uv_tcp_t server;
    int listening, closing;
    metrics_client_t *clients; /* owned */
} metrics_t;

/* Listens on addr ("HOST:PORT", "[V6]:PORT"; port 0 picks a free port and
 * logs it). Returns 0, or an error with errmsg saying why. */
int metrics_start(metrics_t *m, daemon_t *d, control_t *ctl, const char *addr, char *errmsg,
                  size_t errlen);

/* Stops listening and closes every client; run the loop afterwards. */
void metrics_close(metrics_t *m);

/* Renders the metrics page into a new heap string (mem_free it), NULL on
 * allocation failure; *len gets its length. */
char *metrics_render(metrics_t *m, size_t *len);

#endif
