/* job — one fetch and its state machine.
 *
 * A job is created from a job_spec_t (which it takes ownership of), queued by
 * the scheduler, and then runs: resolve, check a connection out of its
 * origin's pool, send the request, parse the response into its sink, follow
 * redirects and retry with backoff as its spec allows, and finish as done,
 * failed or cancelled. Finished jobs are retained for a while so clients can
 * ask for their result.
 *
 * A job reaches the world only through its environment (job_env_t): the
 * loop, pool, DNS cache, TLS and the rest, given by its owner (the scheduler)
 * at creation, and the owner's ops for the traffic that goes up (events, the
 * end of the job, random numbers). job.c includes no scheduler header.
 *
 * Ownership: the scheduler owns one reference to every job it knows (queued,
 * running or retained). While a request is in flight the job and its
 * connection hold a reference to each other; both are dropped the moment the
 * response completes or fails. Anyone else who keeps a job across a callback
 * (a control client waiting on it, say) takes a reference of its own.
 */
#ifndef FETCHD_JOB_H
#define FETCHD_JOB_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include <uv.h>

#include "buf.h"
#include "dns.h"
#include "netacl.h"
#include "pool.h"
#include "ratelimit.h"
#include "retry.h"
#include "sink.h"
#include "stats.h"
#include "tls.h"
#include "url.h"

typedef struct job job_t;
typedef struct conn conn_t;

typedef enum job_state { JOB_QUEUED, JOB_RUNNING, JOB_DONE, JOB_FAILED, JOB_CANCELLED } job_state_t;

typedef enum job_output { JOB_OUTPUT_DISCARD, JOB_OUTPUT_FILE, JOB_OUTPUT_INLINE } job_output_t;

/* What a file output does to an existing target (job_spec_t.overwrite). */
typedef enum job_overwrite {
    JOB_OVERWRITE_DEFAULT, /* the daemon's (job_env_t.overwrite), else replace */
    JOB_OVERWRITE_REPLACE, /* a 2xx response replaces it */
    JOB_OVERWRITE_NEVER,   /* an existing target fails the job (exists) before any request */
    JOB_OVERWRITE_NEWER    /* If-Modified-Since its mtime; a 304 leaves it untouched */
} job_overwrite_t;

/* Bytes of a job's own room for its final response's Content-Type, ETag
 * and Last-Modified (a usual response's three fit: no allocation). */
#define JOB_META_INLINE 128

/* Bytes of a job's own room for its submitted URL's parsed strings (a URL
 * of up to about 90 characters fits: no allocation). */
#define JOB_URL_ROOM 160

/* A job clock (total_due, phase_due) that is not running. */
#define JOB_NOT_DUE UINT64_MAX

/* The most of a non-2xx response's body a file job keeps (error_body). */
#define JOB_ERROR_BODY_MAX 4096

typedef struct job_header {
    char *name;  /* owned */
    char *value; /* owned */
} job_header_t;

/* What to fetch and how. job_spec_init() fills in the defaults below; every
 * pointer is owned by the spec and released by job_spec_dispose(), except a
 * borrowed url (url_borrowed). */
typedef struct job_spec {
    char *url;             /* required; owned, or borrowed when url_borrowed */
    char *method;          /* NULL means "GET" */
    job_header_t *headers; /* nheaders entries */
    size_t nheaders;
    char *body; /* may contain NUL bytes; NULL when none */
    size_t body_len;
    job_output_t output;            /* JOB_OUTPUT_DISCARD */
    char *output_path;              /* JOB_OUTPUT_FILE: relative to the download dir, or absolute
                                       inside it */
    uint64_t inline_max;            /* JOB_OUTPUT_INLINE cap: 1 MiB */
    int sha256;                     /* 0: compute the body's SHA-256 */
    char *expected_sha256;          /* lowercase hex; implies sha256 */
    uint64_t connect_timeout_ms;    /* 10 s */
    uint64_t first_byte_timeout_ms; /* 30 s: request sent -> first response byte */
    uint64_t idle_timeout_ms;       /* 30 s: longest silence while reading */
    uint64_t total_timeout_ms;      /* 0: none */
    int retries;                    /* 0 */
    int max_redirects;              /* 10 */
    uint64_t max_body;              /* 0: unlimited */
    int fail_on_http_error;         /* 0: a 4xx/5xx response is a done job */
    int insecure;                   /* 0: verify TLS */
    char *ca_file;                  /* NULL: the daemon's */
    char *client_cert;              /* NULL: the daemon's client certificate, if any */
    char *client_key;               /* goes with client_cert */
    int priority;                   /* 0; higher runs first */
    int allow_downgrade;            /* 0: an https -> http redirect fails the job */
    int decode;                     /* 0: the daemon's default; 1: decode; -1: never */
    int keep_headers;               /* 0; 1: keep the final response's fields */
    double rate;                    /* 0; requests/s to its host at most (ratelimit.h) */
    uint64_t delay_ms;              /* 0: least time since the last start to its host */
    uint64_t limit_rate;            /* 0: the daemon's default; body bytes/s at most */
    json_t *labels;                 /* owned reference, echoed back; may be NULL */
    char *proxy;    /* NULL: the daemon's choice; "": direct; else a proxy URL (proxy.h) */
    char *no_proxy; /* NULL: the daemon's no_proxy list; else this job's (proxy.h) */
    job_overwrite_t overwrite; /* JOB_OVERWRITE_DEFAULT */
    int mkdirs;                /* 0: the output's directory must exist */
    int resume;                /* 0: a failed file job leaves no partial file to resume */
    /* url lies in a decoder's room (jobspec_decode_lent()) that lives only
     * until job_create() returns: job_spec_dispose() never frees it, and
     * job_create() shares or copies it (placed last: it fills padding) */
    int url_borrowed;
} job_spec_t;

#define JOB_DEFAULT_CONNECT_TIMEOUT_MS    10000
#define JOB_DEFAULT_FIRST_BYTE_TIMEOUT_MS 30000
#define JOB_DEFAULT_IDLE_TIMEOUT_MS       30000
#define JOB_DEFAULT_MAX_REDIRECTS         10
#define JOB_DEFAULT_INLINE_MAX            (1024 * 1024)
#define JOB_MAX_RETRIES                   20
#define JOB_DEFAULT_PROGRESS_MS           500
#define JOB_MAX_REDIRECTS_LIMIT           50

void job_spec_init(job_spec_t *spec);
void job_spec_dispose(job_spec_t *spec);

/* A list of (name, value) text pairs in one growing buffer, each pair stored
 * as "name\0value\0" in arrival order: the redirect chain (status, URL) and
 * the kept response fields. One allocation grows with it; job_pairs_add()
 * drops pairs past its bounds and says so in truncated. */
typedef struct job_pairs {
    char *buf;          /* owned; NULL while empty */
    uint32_t len, cap;  /* 32 bits: the lists are small, and job_t stays small */
    uint32_t n;         /* pairs held */
    uint32_t truncated; /* a pair was dropped at a bound */
} job_pairs_t;

/* keep_headers keeps at most this many fields of the final response, and at
 * most this many bytes of names and values; later fields are dropped. */
#define JOB_KEEP_HEADERS_MAX   100
#define JOB_KEEP_HEADERS_BYTES (64 * 1024)

/* Appends (name, value), both copied. Returns 0; 1 when the pair would pass
 * max_pairs or max_bytes (names and values counted) or 4 GiB in all and was
 * dropped, which sets truncated; or ERR_NO_MEMORY (the list is unchanged). */
int job_pairs_add(job_pairs_t *p, const char *name, size_t nlen, const char *value, size_t vlen,
                  unsigned max_pairs, size_t max_bytes);
/* Empties the list and releases its buffer. */
void job_pairs_dispose(job_pairs_t *p);
/* Walks the pairs: *at starts at 0; returns 0 at the end, else 1 with the
 * pair's name and value (borrowed from the list). */
int job_pairs_next(const job_pairs_t *p, size_t *at, const char **name, const char **value);

/* What a job tells its owner as it goes. */
typedef enum job_event {
    JOB_EV_STARTED,
    JOB_EV_REDIRECTED,
    JOB_EV_RETRYING,
    JOB_EV_PROGRESS /* body bytes came, a progress interval after the last sample */
} job_event_t;

/* The owner's side of its jobs: the upward traffic, registered by the owner
 * (the scheduler) in the environment. owner is job_env_t.owner; j is
 * borrowed for the call. */
typedef struct job_owner_ops {
    /* The job started, is following a redirect, or will retry after a
     * backoff (its error_msg says why during the call); or, only while
     * env.progress_subs > 0, its progress was sampled (JOB_EV_PROGRESS). */
    void (*on_event)(void *owner, job_t *j, job_event_t ev);
    /* The job has finished (done, failed or cancelled); called once. */
    void (*on_finished)(void *owner, job_t *j);
    /* A random number in [0, 1), for the backoff's jitter. */
    double (*random)(void *owner);
} job_owner_ops_t;

/* Everything a job uses of the world, given by its owner at creation and
 * borrowed by the job: the owner (the scheduler, which embeds it) outlives
 * its jobs. The owner may change the public knobs between jobs. */
typedef struct job_env {
    uv_loop_t *loop;             /* borrowed */
    stats_t *stats;              /* borrowed */
    pool_t *pool;                /* borrowed */
    dns_t *dns;                  /* borrowed */
    buf_pool_t *bufs;            /* borrowed */
    tls_t *tls;                  /* borrowed: set by the daemon */
    const netacl_t *acl;         /* borrowed: set by the daemon; NULL allows all */
    ratelimit_t *rl;             /* borrowed: byte rates; NULL: none */
    const proxy_conf_t *proxies; /* borrowed: set by the daemon; where proxies come from */
    const char *download_dir;    /* borrowed: canonical path, or NULL (file output refused) */
    job_overwrite_t overwrite;   /* public: jobs' default overwrite policy (0: replace) */
    int decode;                  /* public: jobs decode content unless they say not */
    uint64_t decode_max_ratio;   /* public: decoded/encoded size cap; 0 = none */
    retry_policy_t retry;        /* public: backoff steps and caps */
    uint64_t progress_ms;        /* public: progress sampling interval (ms, > 0) */
    unsigned progress_subs;      /* public: subscriptions to progress events; 0: none sent */
    const job_owner_ops_t *ops;  /* borrowed: the owner's */
    void *owner;                 /* borrowed: passed to ops */
} job_env_t;

/* The phases of a running job; job_set_phase() in job.c is their only
 * writer (see the diagram at the top of job.c). */
typedef enum job_phase {
    JOB_PH_QUEUED,
    JOB_PH_WAIT_CONN,
    JOB_PH_RESOLVING,
    JOB_PH_CONNECTING,
    JOB_PH_REQUEST,
    JOB_PH_RESPONSE,
    JOB_PH_BACKOFF,
    JOB_PH_HOST_WAIT,
    JOB_PH_PAUSED, /* paused holding nothing: resuming starts a fresh attempt */
    JOB_PH_FINISHING,
    JOB_PH_FINISHED
} job_phase_t;

/* Millisecond timings of a job; 0 when the phase did not happen. */
typedef struct job_timings {
    double created;      /* unix time (s) the job was submitted */
    double started;      /* unix time it first left the queue */
    double finished;     /* unix time it finished */
    uint64_t queued_ms;  /* submitted -> started */
    uint64_t dns_ms;     /* last attempt: name resolution */
    uint64_t connect_ms; /* last attempt: TCP connect (0 on a reused connection) */
    uint64_t ttfb_ms;    /* last attempt: request sent -> first response byte */
    uint64_t total_ms;   /* started -> finished */
} job_timings_t;

/* The observable part of a job, read by the control protocol's encoder. */
struct job {
    /* read-only */
    char id[20]; /* 16 hex digits */
    job_state_t state;
    job_spec_t spec;     /* owned */
    char *effective_url; /* borrowed: url.href, the last URL fetched (after redirects) */
    int http_status;     /* 0 until a final response arrived */
    uint64_t bytes;      /* body bytes of the final response (decoded, when decoding) */
    char sha256[65];     /* hex, "" unless asked for and done */
    char *output;        /* owned: the file written, once the job is done */
    char *inline_body;   /* owned: JOB_OUTPUT_INLINE body, once done */
    size_t inline_len;
    int error;           /* 0, or a negative fetchd error */
    char error_msg[192]; /* human message when error != 0 */
    unsigned redirects;  /* redirects followed */
    unsigned attempts;   /* requests started, retries included */
    job_timings_t timings;
    void *data;     /* public: free for the submitter's own use */
    void *watchers; /* public: the control socket's waits on this job (borrowed) */

    /* read-only: content decoding */
    uint64_t wire_bytes;    /* body bytes of the final response as received */
    char *content_encoding; /* owned: the final response's Content-Encoding, or NULL */
    int decoded;            /* the body was decoded from content_encoding */

    /* read-only: the final response's metadata (NULL when it had none; owned,
     * or in meta[] below) */
    char *content_type;     /* Content-Type */
    char *etag;             /* ETag, as received (quotes and W/ included) */
    char *last_modified;    /* Last-Modified, as received */
    int64_t content_length; /* Content-Length; -1 when the body was framed otherwise */

    /* read-only: progress of the final response's body, sampled on body
     * reads at most once per env->progress_ms (job_progress()) */
    uint64_t speed;      /* wire bytes/s, moving average as of the last sample */
    uint64_t prog_ms;    /* loop time (ms) of the last sample; 0 before the body */
    uint64_t prog_bytes; /* wire_bytes at that sample */

    /* read-only: the way to the final response, and its fields; allocated
     * when first needed, so that a job with neither pays 16 bytes */
    job_pairs_t *redirect_chain; /* owned: ("301", URL) of each redirect followed; or NULL */
    job_pairs_t *headers; /* owned: keep_headers: every field (JOB_KEEP_HEADERS_*); or NULL */

    /* read-only: file output (overwrite, resume) */
    int not_modified;      /* a 304 answered If-Modified-Since: the target is untouched */
    uint64_t resumed_from; /* bytes of the partial file the final response continued */
    char *error_body;      /* owned: a file job's non-2xx body, at most JOB_ERROR_BODY_MAX */
    size_t error_body_len;

    /* private: the scheduler's and the job module's */
    unsigned refcnt;
    uint32_t id_hash;         /* the scheduler's: http_hash(id), kept for its table's rehash */
    const job_env_t *env;     /* borrowed: the owner's, which outlives its jobs */
    uint64_t seq;             /* submission order, the FIFO tie-break */
    size_t heap_index;        /* position in the scheduler's queue while queued */
    size_t cost;              /* heap bytes the job holds while queued (job_cost()) */
    job_t *rprev, *rnext;     /* the scheduler's retained list */
    job_t *aprev, *anext;     /* the scheduler's list of all jobs, in submission order */
    job_t *hnext;             /* the scheduler's id hash chain */
    pool_wait_t pool_wait;    /* its place in an origin's queue, while it waits */
    ratelimit_job_t rl;       /* the rate limiter's state (ratelimit.c) */
    conn_t *conn;             /* owned reference while a request is in flight */
    url_t url;                /* owned: the URL being fetched now */
    tls_config_t *tls_config; /* owned reference once an https URL is involved */
    char *method;             /* owned: the current method; NULL means GET (a 303 changes it) */
    char *file_path;          /* owned: the confined output path until the job is done */
    dns_waiter_t dns_waiter;
    uint64_t total_due;   /* loop time (ms) the total timeout comes; JOB_NOT_DUE: none */
    uint64_t phase_due;   /* loop time (ms) the phase's timeout comes; JOB_NOT_DUE: none */
    uint64_t start_ms;    /* monotonic ms the job started */
    uint64_t finished_ms; /* loop time (ms) it finished, for retention */
    uint64_t phase_start_ms;
    uint64_t connect_start_ms;
    int retries_left;
    int disposition;     /* what the response being read is for (job.c) */
    int redirect_status; /* status of the redirect being followed */
    int retry_status;    /* status of the response being retried */
    int last_retry_err;  /* the error that made the last retry */
    job_phase_t phase;   /* written by job_set_phase() only */
    char *location;      /* owned: the response's Location */
    char *retry_after;   /* owned: the response's Retry-After */

    /* pause (job_pause(), job_resume()) */
    uint64_t paused_ms;   /* loop time of the pause, for the owner's keep bound */
    job_t *kprev, *knext; /* the scheduler's paused jobs that keep a connection */
    int paused;           /* read-only: a client paused the job and has not resumed it */

    unsigned meta_used; /* bytes of meta[] in use */

    /* private flags and counts of job.c, a byte each: job_t is allocated per job */
    uint8_t url_shared;       /* spec.url is url.href (borrowed), not a copy of its own */
    uint8_t body_dropped;     /* a redirect turned the request into a bodiless GET */
    uint8_t cross_origin;     /* a redirect left the first origin: credentials dropped */
    uint8_t handles_open;     /* handles (the timer) not yet closed */
    uint8_t retried_stale;    /* this request already met a stale connection */
    uint8_t force_new;        /* the next checkout must not reuse a connection */
    uint8_t read_paused;      /* reading stopped for sink backpressure */
    uint8_t restart_on_drain; /* resumed from JOB_PH_PAUSED: restart once the sink is idle */
    uint8_t resumed_held;     /* reading again on the connection it kept while paused */
    uint8_t no_resume;        /* the partial file was refused: start over from 0 */
    uint8_t range_complete;   /* a 416 said the partial file is the whole: drop its body */

    char *content_range; /* owned: the response's Content-Range */
    char *if_range;      /* owned: the validator sent with Range, or NULL */
    uint64_t range_from; /* the Range start sent (0: none) */
    int64_t ims;         /* the If-Modified-Since sent (unix s; 0: none) */

    /* private, and not cleared when the job is created (job_create() clears
     * the struct up to here): each member is initialised by its own init
     * function, or written before it is read. */
    sink_t sink;                 /* owned */
    uv_timer_t timer;            /* the earlier of total_due and phase_due (job.c) */
    char url_room[JOB_URL_ROOM]; /* the submitted URL's strings, when they fit (url_parse_into) */
    /* the room content_type, etag and last_modified take when they fit
     * (job.c, keep_meta()); they are owned heap strings otherwise */
    char meta[JOB_META_INLINE];
};

/* Creates a job that takes ownership of *spec (which is zeroed) — on failure
 * too. A borrowed url (spec->url_borrowed) is read during the call only:
 * the job shares its parsed url.href when the text is already normalised,
 * and copies it otherwise. Validates the URL, method and headers; returns 0 with *out a new
 * reference, or ERR_INVALID_REQUEST (errmsg says which field and why) or
 * ERR_NO_MEMORY. env is borrowed and must outlive the job. The job is not
 * queued: its owner does that (sched_submit()). */
int job_create(const job_env_t *env, job_spec_t *spec, job_t **out, char *errmsg, size_t errlen);

/* The heap bytes a queued job holds: the struct, its spec's strings,
 * headers, body and labels, and its parsed URL. The scheduler's byte budget
 * (max_queue_bytes) counts this. */
size_t job_cost(const job_t *j);

void job_incref(job_t *j);
/* Returns 1 when the job was destroyed (its timer's close callback may still
 * be pending on the loop). */
int job_decref(job_t *j);

/* Starts a queued job (called by its owner). */
void job_start(job_t *j);

/* Cancels a job at any stage. A queued or running job finishes as
 * "cancelled" with reason err (ERR_CANCELLED or ERR_SHUTDOWN); a finished job
 * is left as it is. Returns 0, or ERR_INVALID_REQUEST for a finished job. */
int job_cancel(job_t *j, int err);

/* Pauses a job at the client's request. A queued job only takes the flag
 * (its owner keeps it from starting). A running job stops reading its
 * response; its first-byte and idle timers stop (the total timeout goes
 * on). Before its request is sent it lets go of everything it holds (pool
 * wait, lookup, connection) and enters JOB_PH_PAUSED. Returns 1 when the job
 * keeps a connection (its owner bounds that with job_pause_expire()), 0 when
 * it holds none, or ERR_INVALID_REQUEST with why filled in: the job has
 * finished, or its non-idempotent request is already sent. Pausing a paused
 * job changes nothing (returns 0 or 1 as before). */
int job_pause(job_t *j, char *why, size_t len);

/* Ends a pause: reading goes on (unless the sink's backpressure or a byte
 * rate still holds it), or, in JOB_PH_PAUSED, a fresh attempt starts with an
 * emptied sink (as soon as its writes in flight have landed). A job that is
 * not paused is left as it is. */
void job_resume(job_t *j);

/* The paused job has kept its connection long enough: it closes it and
 * enters JOB_PH_PAUSED. Does nothing unless the job is paused and holds one. */
void job_pause_expire(job_t *j);

/* A running job's progress now, comparing like with like: wire_bytes
 * (the body as received) against total (Content-Length, also wire bytes;
 * -1 when unknown). speed is wire bytes/s, a moving average over the last
 * few seconds that the time since the last sample is blended into; eta is
 * in seconds, -1 when unknown (no total, or no speed yet). */
typedef struct job_progress {
    int64_t total;
    uint64_t speed;
    int64_t eta;
} job_progress_t;

void job_progress(const job_t *j, job_progress_t *out);

const char *job_state_name(job_state_t s);
int job_state_from_name(const char *name, job_state_t *out);
int job_is_finished(const job_t *j);
/* 1 while the job waits in the scheduler's queue. */
int job_is_queued(const job_t *j);
/* 1 while job_cancel() would still change the job's outcome. */
int job_is_cancellable(const job_t *j);

#endif
