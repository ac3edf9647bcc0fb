/* ratelimit — politeness and bandwidth: per-host request rates and delays,
 * and per-job and global byte rates.
 *
 * Hosts. A token bucket per host name (requests/s and a burst) and a minimum
 * delay between request starts to the host, from rules matched on the host
 * name ("example.com", "*.example.com", or "*" for every host; the most
 * specific rule wins), made stricter (never looser) by a job's own rate and
 * delay. The scheduler asks ratelimit_admit() before it starts a job; a job
 * that has to wait is parked: it stays queued (in the scheduler's heap, sorted
 * after every job that may start) and holds no connection and no running
 * slot. One timer wakes the limiter when the first parked job's host is due;
 * it then releases that job to the scheduler through the on_ready callback.
 * A running job's later requests (redirects, retries) are held by the same
 * limits: ratelimit_request() tells the job how long to wait.
 * A host's entry exists only while a limit applies to it and it is not back
 * to its fresh state; idle entries are swept, so memory stays bounded by the
 * hosts in recent use.
 *
 * Bytes. A token bucket in bytes per job (its limit_rate) and one for the
 * whole daemon (bandwidth), each with a burst of a tenth of a second of its
 * rate and at least one read buffer. Body bytes are charged as they arrive;
 * a job in debt on either bucket stops reading (conn_pause) and a second
 * timer resumes it once both buckets are out of debt. Bytes are never
 * buffered to slow a job down: the socket's receive window does that.
 *
 * Time comes from a clock the owner may replace (unit tests inject one);
 * every time is in nanoseconds of that clock.
 *
 * Ownership: the limiter is embedded in the scheduler, which owns it. It
 * owns its host entries and rules; it borrows the jobs it parks or pauses
 * (each job's embedded ratelimit_job_t links them) and the jobs must leave
 * (ratelimit_dequeue, ratelimit_job_detach) before they are destroyed.
 */
#ifndef FETCHD_RATELIMIT_H
#define FETCHD_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include <uv.h>

#include "stats.h"

typedef struct job job_t;
typedef struct ratelimit ratelimit_t;
typedef struct rl_host rl_host_t;

/* A token bucket; tokens may go below zero (debt) when a charge is larger
 * than what is left. rate 0 means unlimited. */
typedef struct rl_bucket {
    double tokens;
    double rate;  /* tokens per second */
    double burst; /* the most tokens it holds */
    uint64_t last_ns;
} rl_bucket_t;

/* Starts full. */
void rl_bucket_init(rl_bucket_t *b, double rate, double burst, uint64_t now_ns);
/* Adds the tokens earned since the last refill, up to the burst. */
void rl_bucket_refill(rl_bucket_t *b, uint64_t now_ns);
/* Nanoseconds from now (after a refill at now) until the bucket holds at
 * least `want` tokens: 0 when it already does or is unlimited. */
uint64_t rl_bucket_wait_ns(rl_bucket_t *b, double want, uint64_t now_ns);
/* Changes rate and burst, keeping the tokens earned (capped by the new burst). */
void rl_bucket_set(rl_bucket_t *b, double rate, double burst, uint64_t now_ns);

/* One host rule: pattern is "host", "*.suffix" or "*". */
typedef struct rl_rule {
    char *pattern; /* owned */
    double rate;   /* requests/s; 0: unlimited */
    double burst;  /* requests; at least 1 */
    uint64_t delay_ns;
} rl_rule_t;

typedef struct rl_rules {
    rl_rule_t *v; /* owned */
    size_t n;
} rl_rules_t;

/* Parses the JSON text of the host_limits setting (an array of
 * {"host": PATTERN, "rate": R, "burst": B, "delay_ms": D}) into *out (empty
 * for NULL or ""). Returns 0, or -1 with why filled in (nothing allocated). */
int rl_rules_parse(const char *text, rl_rules_t *out, char *why, size_t len);
void rl_rules_dispose(rl_rules_t *r);
/* The rule for host (the most specific match) or NULL. Borrowed. */
const rl_rule_t *rl_rules_match(const rl_rules_t *r, const char *host);

/* Bounds of a job's own limits and of the rules. */
#define RL_MAX_DELAY_S 3600
#define RL_MIN_RATE    (1.0 / RL_MAX_DELAY_S)
#define RL_MAX_RATE    1e6
/* An entry not used for this long, nor for the longest gap a job asked for
 * at its host, and back to a full bucket, is freed (swept every second). */
#define RL_FORGET_NS ((uint64_t)5 * 1000000000u)

typedef enum rl_job_state { RL_JOB_NONE, RL_JOB_PARKED, RL_JOB_RELEASED } rl_job_state_t;

/* A job's part of the limiter, embedded in job_t; zero is its initial state.
 * Written by ratelimit.c only, except on_resume, which the job sets. */
typedef struct ratelimit_job {
    rl_job_state_t state;        /* read-only */
    int parked;                  /* read-only: the scheduler sorts parked jobs last */
    int holding;                 /* read-only: a redirect or retry waits (ratelimit_request) */
    rl_host_t *host;             /* borrowed: while parked or released */
    job_t *prev, *next;          /* the host's parked list, in start order */
    rl_bucket_t bytes;           /* the job's byte rate (rate 0: unlimited) */
    int paused;                  /* read-only: reading is stopped for the byte rates */
    uint64_t paused_since_ns;    /* while paused */
    job_t *pprev, *pnext;        /* the limiter's list of paused jobs */
    uint64_t served;             /* bytes charged to the global budget, counted from
                                    the limiter's floor when the job first shares it */
    void (*on_resume)(job_t *j); /* public: the job may read again */
} ratelimit_job_t;

/* The scheduler's callback: j, parked until now, may start (it is RELEASED:
 * sort it back among the startable jobs and kick the dispatch). */
typedef void (*ratelimit_ready_cb)(ratelimit_t *rl, job_t *j, void *data);

struct ratelimit {
    uv_loop_t *loop; /* borrowed */
    stats_t *stats;  /* borrowed */
    /* public: set by the owner (the daemon's configuration) */
    uint64_t bandwidth;      /* bytes/s of all jobs together; 0: unlimited */
    uint64_t limit_rate;     /* bytes/s of a job that does not set its own; 0: unlimited */
    uint64_t max_limit_rate; /* the most a job may ask for; 0: no cap */
    size_t min_burst;        /* bytes: the smallest byte burst (one read buffer) */
    uint64_t (*clock)(void *clock_data); /* public: nanoseconds; uv_hrtime by default */
    void *clock_data;
    ratelimit_ready_cb on_ready; /* public */
    void *ready_data;
    /* read-only: figures */
    uint64_t host_waits;     /* jobs parked for their host */
    uint64_t paused_ns;      /* time jobs spent paused for the byte rates, summed */
    uint64_t served_floor;   /* the served count of the last job resumed by turn */
    size_t nhosts;           /* host entries */
    size_t nparked, npaused; /* jobs parked / paused now */
    /* private */
    rl_rules_t rules;  /* owned */
    rl_host_t **table; /* owned: host entries by name hash */
    size_t table_size;
    rl_host_t *blocked;     /* hosts with parked jobs and none released */
    job_t *paused_head;     /* paused jobs */
    rl_bucket_t global;     /* the bandwidth bucket */
    uint64_t global_rate;   /* the rate the global bucket was set up with */
    uv_timer_t wake_timer;  /* host releases and the sweep */
    uv_timer_t bytes_timer; /* resumes */
    uint64_t next_sweep_ns;
    int handles_open, closing;
};

/* Returns 0 or ERR_NO_MEMORY. The callback may be set later. */
int ratelimit_init(ratelimit_t *rl, uv_loop_t *loop, stats_t *stats);

/* Replaces the host rules (takes ownership of *rules, which is zeroed) and
 * re-applies them to every known host; parked jobs whose host is now free
 * are released at the next timer. */
void ratelimit_set_rules(ratelimit_t *rl, rl_rules_t *rules);

/* Called by the scheduler for the queued job it would start next. Returns 0
 * when j may start now (the start is counted against its host), or 1 when
 * it has to wait: it is parked (j->rl.parked is set) and on_ready will tell
 * when it may start. A released job that finds its host busy again is
 * parked again. Also sets up j's byte rate for its run. */
int ratelimit_admit(ratelimit_t *rl, job_t *j);

/* A running job is about to send another request (a redirect's or a
 * retry's) to j->url.host, which its host's rate and delay hold as they held
 * its start. Returns 0 when it may send it now (the request is counted
 * against the host), else the nanoseconds to wait before asking again: the
 * job waits on its own timer, keeping its running slot, as in a backoff.
 * A request held at least once counts once in host_waits. */
uint64_t ratelimit_request(ratelimit_t *rl, job_t *j);

/* The job leaves the queue (started, cancelled, shut down): unlinks it if
 * it is parked or released. */
void ratelimit_dequeue(ratelimit_t *rl, job_t *j);

/* n body bytes arrived for j (whose connection is j->conn). Returns 1 when
 * j is now paused (reading stopped until on_resume), else 0. */
int ratelimit_charge(ratelimit_t *rl, job_t *j, size_t n);

/* j lets go of its connection: it leaves the paused list (no resume call). */
void ratelimit_job_detach(ratelimit_t *rl, job_t *j);

/* Runs what the timers run, now: releases due hosts, sweeps idle entries
 * and resumes paused jobs. For tests with an injected clock. */
void ratelimit_poll(ratelimit_t *rl);

/* Time jobs have spent paused for the byte rates, the pauses going on included. */
uint64_t ratelimit_paused_ns(const ratelimit_t *rl);

/* Returns a new reference to the limits and figures as JSON (stats), or NULL. */
json_t *ratelimit_stats_json(const ratelimit_t *rl);

/* Closes the timers; parked jobs must have left. Run the loop afterwards. */
void ratelimit_close(ratelimit_t *rl);
/* Frees the entries and rules once the timers have closed. */
void ratelimit_dispose(ratelimit_t *rl);

#endif
