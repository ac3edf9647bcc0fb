/* sched — the job queue, the running set and the retained finished jobs.
 *
 * Queued jobs wait in a binary heap ordered by priority (higher first), then
 * submission order. Up to max_running jobs run at once. Finished jobs are
 * retained, oldest first out, within retain_jobs and retain_ms, so their
 * results can be read after the fact without memory growing with the number
 * of jobs ever run.
 *
 * A client may pause a job (sched_pause) and resume it. A paused queued job
 * stays in the heap, sorted after every job that may start, with its
 * priority and submission order kept for when it is resumed; it holds no
 * connection and no running slot. A paused running job that keeps its
 * connection is on the keep list, in pause order; past keep_ms the job lets
 * the connection go (job_pause_expire) and starts afresh when resumed.
 *
 * Ownership: the scheduler owns one reference to every job it knows, from
 * submission until the job leaves retention (or the scheduler is disposed).
 * It borrows the pool, DNS cache and buffer pool the jobs use, and hands
 * them to its jobs in the environment it embeds (env): the jobs borrow it,
 * and report back through the job_owner_ops_t the scheduler put there.
 */
#ifndef FETCHD_SCHED_H
#define FETCHD_SCHED_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "dns.h"
#include "job.h"
#include "netacl.h"
#include "pool.h"
#include "ratelimit.h"
#include "stats.h"

typedef struct sched sched_t;

typedef enum sched_event {
    SCHED_EV_QUEUED,
    SCHED_EV_STARTED,
    SCHED_EV_REDIRECTED,
    SCHED_EV_RETRYING,
    SCHED_EV_PAUSED,  /* a client paused the job (sched_pause) */
    SCHED_EV_RESUMED, /* a client resumed it (sched_resume) */
    SCHED_EV_FINISHED,
    SCHED_EV_PROGRESS /* only while env.progress_subs > 0 (job.h) */
} sched_event_t;

/* Observes job events; j is borrowed for the duration of the call. An
 * observer may submit or cancel jobs but must not dispose the scheduler. */
typedef void (*sched_event_cb)(sched_t *s, job_t *j, sched_event_t ev, void *data);

struct sched {
    uv_loop_t *loop;  /* borrowed */
    stats_t *stats;   /* borrowed */
    pool_t *pool;     /* borrowed */
    dns_t *dns;       /* borrowed */
    buf_pool_t *bufs; /* borrowed */
    /* public: what every job borrows. sched_init() fills in the loop, pool,
     * DNS cache, buffers, download dir, the owner's ops and the defaults;
     * the daemon sets env.tls, env.acl and the knobs (decode, retry). */
    job_env_t env;
    unsigned max_running;                /* public */
    size_t max_queued;                   /* public: --max-jobs; 0 = unlimited */
    size_t max_queued_bytes;             /* public: --max-queue-bytes; 0 = unlimited */
    size_t retain_jobs;                  /* public */
    uint64_t retain_ms;                  /* public */
    sched_event_cb on_event;             /* public, optional */
    void *event_data;                    /* public */
    uint64_t keep_ms;                    /* public: how long a paused job keeps its
                                            connection; 0: the pool's idle timeout */
    size_t nqueued, nrunning, nretained; /* read-only */
    size_t npaused;                      /* read-only: queued or running jobs paused now */
    size_t queued_bytes;                 /* read-only: job_cost() of the queued jobs */
    uint64_t trims;                      /* read-only: memory handed back after a burst */
    int accepting;                       /* read-only: 0 once shutting down */
    int draining;                        /* read-only: stopping; queued jobs are not started */
    ratelimit_t rl;                      /* owned: host rates and byte rates (ratelimit.h) */
    /* private */
    char *download_dir; /* owned: canonical path, or NULL (file output refused) */
    job_t **heap;       /* owned references are the table's; the heap borrows */
    size_t heap_cap;
    job_t **table; /* id hash table; owns one reference per job */
    size_t table_size, njobs;
    job_t *retained_head, *retained_tail; /* oldest first */
    job_t *all_head, *all_tail;           /* every known job, submission order */
    job_t *kept_head, *kept_tail;         /* paused jobs keeping a connection, pause order */
    uint64_t next_seq;
    uint64_t id_prefix;
    uint64_t rng;
    uv_idle_t kick;
    uv_timer_t retain_timer;
    uv_timer_t trim_timer; /* gives memory back once a burst has drained */
    uv_timer_t keep_timer; /* the keep bound of the first job on the keep list */
    size_t peak_jobs;      /* most jobs known since the last trim */
    size_t left_jobs;      /* jobs forgotten since the last trim */
    uint64_t last_trim_ms; /* loop time of the last trim */
    int kick_active, handles_open;
};

/* Returns 0 or ERR_NO_MEMORY. download_dir may be NULL; it is canonicalised
 * (it must exist) — an error there is ERR_IO. */
int sched_init(sched_t *s, uv_loop_t *loop, stats_t *stats, pool_t *pool, dns_t *dns,
               buf_pool_t *bufs, const char *download_dir);

/* Cancels every job (with ERR_SHUTDOWN), drops retained ones and closes the
 * scheduler's handles; run the loop afterwards until everything is closed. */
void sched_close(sched_t *s);

/* Creates a job from spec (taking ownership of it, on failure too) and
 * queues it. Returns 0 with *out a borrowed pointer (valid until the job
 * leaves retention: take a reference to keep it longer), or an error with
 * errmsg filled in: ERR_INVALID_REQUEST, ERR_QUEUE_FULL (max_queued jobs are
 * already queued, or the queued jobs would hold more than max_queued_bytes),
 * ERR_SHUTDOWN or ERR_NO_MEMORY. */
int sched_submit(sched_t *s, job_spec_t *spec, job_t **out, char *errmsg, size_t errlen);

/* Submits n jobs all or nothing: every spec is validated before any job is
 * queued. Takes ownership of every spec (on failure too). On success jobs[]
 * holds borrowed pointers (as sched_submit's *out). On failure nothing was
 * queued, *bad is the index of the spec at fault (or -1 when the failure is
 * not one spec's: queue full, shutdown, memory) and errmsg says why. */
int sched_submit_many(sched_t *s, job_spec_t *specs, size_t n, job_t **jobs, long *bad,
                      char *errmsg, size_t errlen);

/* Where sched_submit_each() takes a batch's specs from, in order: fills
 * *spec with the k-th job's spec and returns 0, or returns
 * ERR_INVALID_REQUEST (the k-th spec is at fault) or ERR_NO_MEMORY with
 * errmsg filled in and *spec holding nothing. A spec it returns may borrow
 * its url (url_borrowed) from memory that lives until its next call:
 * job_create() never keeps it. */
typedef int (*sched_spec_cb)(void *data, size_t k, job_spec_t *spec, char *errmsg, size_t errlen);

/* sched_submit_many() with the specs made one at a time by next(data, k,
 * ...), each going straight into its job: no array of specs, and a spec's
 * borrowed url is read before the next is made. Same returns; on failure
 * the specs made so far are released, and next is not called again. */
int sched_submit_each(sched_t *s, size_t n, sched_spec_cb next, void *data, job_t **jobs, long *bad,
                      char *errmsg, size_t errlen);

/* Queues a job restored from the state file under its old id (ids from an
 * earlier run never collide with this run's). Same ownership and returns as
 * sched_submit(); an id already known is refused (ERR_INVALID_REQUEST). */
int sched_restore(sched_t *s, job_spec_t *spec, const char *id, char *errmsg, size_t errlen);

/* Starts queued jobs if the limits allow (after they were raised). */
void sched_kick(sched_t *s);

/* Starts a graceful stop: new submissions are refused (ERR_SHUTDOWN) and
 * queued jobs stay queued; running ones go on. */
void sched_drain(sched_t *s);

/* The job submitted right after j that is still known, or the first one
 * when j is NULL: submission order, for listing. Borrowed, or NULL. */
job_t *sched_next(sched_t *s, job_t *j);

/* Frees the scheduler's memory once sched_close() has run and the loop has
 * closed its handles; jobs still finishing are a bug (asserted). */
void sched_dispose(sched_t *s);

/* Looks a job up by id; returns a borrowed pointer or NULL. */
job_t *sched_find(sched_t *s, const char *id);

/* Cancels a job; see job_cancel(). */
int sched_cancel(sched_t *s, job_t *j);

/* Pauses a queued or running job (see job_pause()); a paused job stays
 * paused. Returns 0, or ERR_INVALID_REQUEST with errmsg filled in (the job
 * has finished, or cannot be paused now). Subscribers hear `paused`. */
int sched_pause(sched_t *s, job_t *j, char *errmsg, size_t errlen);

/* Resumes a paused job: a queued one may be dispatched again in its old
 * place, a running one reads on (or starts a fresh attempt). Returns 0 (a
 * job that is not paused is left as it is), or ERR_INVALID_REQUEST with
 * errmsg filled in for a finished job. Subscribers hear `resumed`. */
int sched_resume(sched_t *s, job_t *j, char *errmsg, size_t errlen);

/* What sched_set() changes; bits of `which`. */
#define SCHED_SET_PRIORITY   (1u << 0)
#define SCHED_SET_RATE       (1u << 1)
#define SCHED_SET_DELAY      (1u << 2)
#define SCHED_SET_LIMIT_RATE (1u << 3)

/* Changes the fields of j's spec named in `which` to those of `to` (already
 * validated as a job spec is). Priority, rate and delay change only while
 * the job is queued (the job moves to its new place in the queue, and a job
 * waiting for its host is admitted again); limit_rate also while it runs.
 * All or nothing: returns 0, or ERR_INVALID_REQUEST with errmsg naming the
 * field that cannot change now. */
int sched_set(sched_t *s, job_t *j, const job_spec_t *to, unsigned which, char *errmsg,
              size_t errlen);

/* Drops every retained job now. */
void sched_forget_finished(sched_t *s);

const char *sched_event_name(sched_event_t ev);

/* A random number in [0, 1) from the scheduler's generator (xorshift64*,
 * seeded at init): jitter for backoffs, the jobs' and the queue's. */
double sched_random(sched_t *s);

#endif
