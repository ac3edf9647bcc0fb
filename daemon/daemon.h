/* daemon — the one struct daemon: the loop and every engine part on it.
 *
 * main.c, the engine harness, the benchmarks and (later) the control and
 * metrics servers all drive fetchd through this struct.
 *
 * Ownership: the daemon owns everything in it; teardown order is
 * daemon_close() (cancel jobs, close connections and handles), run the loop
 * until it has nothing left, then daemon_dispose().
 */
#ifndef FETCHD_DAEMON_H
#define FETCHD_DAEMON_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "dns.h"
#include "log.h"
#include "netacl.h"
#include "pool.h"
#include "sched.h"
#include "stats.h"
#include "tls.h"
typedef struct daemon_config {
    char *control_path;         /* owned; NULL: the default */
    char *metrics_addr;         /* owned; "127.0.0.1:9464" by default, "off" disables */
    char *download_dir;         /* owned; NULL: file output refused */
    char *state_dir;            /* owned; NULL: nothing persisted */
    char *ca_file;              /* owned; NULL: the system bundle */
    char *client_cert;          /* owned; NULL: no client certificate */
    char *client_key;           /* owned; with client_cert */
    unsigned max_connections;   /* 256 */
    unsigned max_per_host;      /* 32 */
    size_t max_jobs;            /* 100000 queued jobs */
    unsigned max_clients;       /* 64 control clients at once */
    unsigned max_running;       /* 1024 jobs at once */
    uint64_t idle_timeout_ms;   /* 30 s */
    uint64_t pause_keep_ms;     /* 0: a paused job keeps its connection idle_timeout_ms */
    size_t retain_jobs;         /* 10000 */
    uint64_t retain_ms;         /* 3600 s */
    log_level_t log_level;      /* info */
    uint64_t shutdown_grace_ms; /* 20 s: running jobs may finish after SIGTERM */
    size_t max_queue_bytes;     /* 256 MiB: memory queued jobs may hold */
    char *deny_networks;        /* owned; NULL: NETACL_DEFAULT_DENY; "" denies nothing */
    char *allow_networks;       /* owned; NULL or "": no exceptions */
    int decode;                 /* 0: jobs decode content only when they ask */
    unsigned decode_max_ratio;  /* 1000: decoded/encoded size cap; 0 = none */
    char *queue;                /* owned; NULL: no Redis queue (--queue URL) */
    int log_jobs;               /* 1: one info line per finished job */
    uint64_t page_interval_ms;  /* 10 s: the page's sampling interval (history_interval) */
    uint64_t page_warmup_ms;    /* 300 s: when the page marks the gauges (history_warmup) */
    char *host_limits;          /* owned: JSON text of the host rules (ratelimit.h); NULL: none */
    uint64_t bandwidth;         /* 0: body bytes/s of all jobs together, 0 = unlimited */
    uint64_t limit_rate;        /* 0: body bytes/s of a job that sets none, 0 = unlimited */
    uint64_t max_limit_rate;    /* 0: the most a job may ask for, 0 = no cap */
    char *proxy;                /* owned; NULL: the environment's; "": direct (proxy.h) */
    char *no_proxy;             /* owned; NULL: the environment's no_proxy */
    uint64_t progress_ms;       /* 500: progress sampling and events, per job at most once */
    int overwrite;              /* job_overwrite_t: jobs' default policy (0: replace) */
    uint64_t partial_keep_ms;   /* 24 h: resumable partial files older than this are swept */
} daemon_config_t;

#define DAEMON_DEFAULT_QUEUE_BYTES ((size_t)256 << 20)

/* decode_max_ratio unless configured. */
#define DAEMON_DEFAULT_DECODE_RATIO 1000

/* Fills in the defaults above. */
void daemon_config_init(daemon_config_t *cfg);
void daemon_config_dispose(daemon_config_t *cfg);

/* Read buffers: 64 KiB each, at most 256 kept free (16 MiB); a body that streams
 * in is read into 256 KiB buffers, which count as 4 (buf.h). */
#define DAEMON_BUF_SIZE     (64 * 1024)
#define DAEMON_BUF_MAX_FREE 256

typedef struct daemon {
    uv_loop_t loop;
    stats_t stats;
    buf_pool_t bufs;
    dns_t dns;
    pool_t pool;
    sched_t sched;
    tls_t tls;
    netacl_t acl;        /* the destination rules the jobs check */
    daemon_config_t cfg; /* owned */
    int closing;
} daemon_t;

/* Initialises d from cfg (whose contents d takes over; cfg is zeroed).
 * mem_install() must have run. Returns 0, or a negative error with errmsg
 * filled in (everything initialised so far is released). */
int daemon_init(daemon_t *d, daemon_config_t *cfg, char *errmsg, size_t errlen);

/* Applies a re-read configuration (SIGHUP): limits, retention, log level,
 * destination rules, CA and client certificate files. Sockets and directories keep their
 * values until a restart (a change is logged). Returns 0, or an error with
 * errmsg (a CA or certificate file that does not load) and nothing
 * changed. Strings taken over from cfg are left NULL in it. */
int daemon_reconfigure(daemon_t *d, daemon_config_t *cfg, char *errmsg, size_t errlen);

/* Starts the teardown: cancels every job (ERR_SHUTDOWN), closes every
 * connection and handle. Run the loop until it returns, then dispose. */
void daemon_close(daemon_t *d);

/* Releases what is left; returns the uv_loop_close() result (0 when every
 * handle was closed). */
int daemon_dispose(daemon_t *d);

/* Returns a new reference to the live figures as JSON (the same figures
 * /metrics exports), or NULL on allocation failure. */
json_t *daemon_stats_json(daemon_t *d);

#endif
