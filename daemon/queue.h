/* queue — a Redis Streams consumer group as a source of jobs (--queue URL).
 *
 * Many fetchd instances join one consumer group and share one stream of
 * entries, each holding a submit job spec in its field "job". An instance
 * reads (XREADGROUP ... BLOCK) only as many entries as it has room for, runs
 * them as ordinary jobs, adds each job's result (the job object, as status
 * returns it) to a results stream (XADD ... MAXLEN ~), and only then acks the
 * entry (XACK): at least once, never lost. Entries left pending by a dead
 * consumer are claimed (XAUTOCLAIM) once idle for claim_idle; an instance
 * refreshes the claims of the entries it still holds (XCLAIM ... JUSTID) so a
 * long job is not stolen; an entry delivered max_deliveries times (XPENDING)
 * is failed and acked. proto/PROTOCOL.md ("The Redis queue") is the spec.
 *
 * Two connections, both hiredis async contexts on fetchd's loop (hiredis's
 * libuv adapter): the reader, which blocks in XREADGROUP, and the writer for
 * everything else, so a blocked read never delays a result or an ack. Either
 * reconnects with backoff when Redis goes away; jobs keep running meanwhile,
 * and the results of those that finish are kept (up to max_unsent bytes) and
 * sent and acked once the writer is back.
 *
 * Ownership: the service owns the queue (embedded). The queue owns its
 * hiredis contexts (hiredis frees them; the queue only starts that), its
 * timers, and its entries; an entry owns a reference to its job while the
 * job runs, and j->data points back to the entry (borrowed) until then. The
 * daemon, its scheduler and stats are borrowed and outlive the queue.
 *
 * Memory: entries, their results and the parsed URL are on the counting
 * allocator; hiredis 0.14 cannot be given an allocator (hiredisSetAllocators
 * came with 1.0), so its contexts, read buffers and replies are not on
 * fetchd_heap_*: the contexts are counted as "redis_conn" objects instead.
 */
#ifndef FETCHD_QUEUE_H
#define FETCHD_QUEUE_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "daemon.h"
#include "sched.h"

typedef struct queue queue_t;
typedef struct queue_entry queue_entry_t;

/* One connection to Redis. */
typedef enum qlink_state {
    QLINK_DOWN,       /* no context; the retry timer will connect */
    QLINK_RESOLVING,  /* the host's address is being looked up */
    QLINK_CONNECTING, /* connecting, or AUTH/SELECT/XGROUP CREATE unanswered */
    QLINK_READY
} qlink_state_t;

typedef struct qlink {
    queue_t *q;                   /* borrowed: the owner */
    const char *name;             /* borrowed (static): "reader" or "writer" */
    struct redisAsyncContext *ac; /* owned: freed by hiredis after a disconnect */
    qlink_state_t state;
    uv_timer_t retry; /* reconnects; on a ready reader, retries a failed read */
    uv_getaddrinfo_t gai;
    int gai_active;
    int setup_left;   /* setup replies still awaited */
    int setup_failed; /* one of them was an error: the link is dropped */
    int was_ready;    /* it has been ready before: the next ready is a reconnect */
    int failures;     /* failed attempts in a row (backoff, and logging once) */
    uint64_t backoff_ms;
    uint64_t heard_ms; /* loop time of the last bytes from Redis (or of connecting) */
} qlink_t;

/* The URL, parsed. Every string is owned. */
typedef struct queue_url {
    char *host, *user, *pass, *stream, *group, *consumer, *results;
    char *display; /* the URL for logs: the password replaced by "***" */
    int port;
    unsigned db;
    unsigned create;
    uint64_t claim_idle_ms, block_ms;
    unsigned max_deliveries; /* 0: no limit */
    unsigned count;          /* entries per XREADGROUP / XAUTOCLAIM at most */
    size_t max_inflight;     /* entries held at once; 0: the daemon's max_running */
    size_t results_maxlen;
    size_t max_unsent; /* bytes of results kept while they cannot be sent */
} queue_url_t;

struct queue {
    queue_url_t url; /* read-only */
    /* private */
    daemon_t *d; /* borrowed */
    qlink_t rd, wr;
    uv_timer_t tick; /* claims, claim refreshes */
    int started, draining, closing;
    int reading;                   /* an XREADGROUP waits for its reply */
    int claiming;                  /* a claim round (XPENDING, XCLAIM, XAUTOCLAIM) is under way */
    int read_failing;              /* XREADGROUP answered an error: retried every second */
    int write_failing;             /* XADD answered an error: logged once */
    int claim_failing;             /* XAUTOCLAIM answered an error: logged once */
    queue_entry_t *held;           /* owned: running entries (and claimed ones being submitted) */
    queue_entry_t *out, *out_tail; /* owned: entries with a result to send or an ack to make */
    size_t nheld, nout, unsent_bytes;
    uint64_t last_refresh_ms, last_claim_ms;
    char claim_cursor[48];
    void (*settled_cb)(void *data); /* public: draining and nothing held any more */
    void *settled_data;             /* public, borrowed */
};

/* Parses url into q (nothing else is started). Returns 0, or -1 with errmsg
 * saying what is wrong (rediss:// is refused: out of scope). */
int queue_init(queue_t *q, const char *url, char *errmsg, size_t errlen);

/* Starts connecting and reading, on d's loop, for d's scheduler. Returns 0
 * or ERR_NO_MEMORY. */
int queue_start(queue_t *q, daemon_t *d);

/* The scheduler's events (from the service's fan-out): a finished job of
 * ours has its result sent and its entry acked; any finished job frees room
 * to read more. j is borrowed. */
void queue_on_event(queue_t *q, job_t *j, sched_event_t ev);

/* SIGTERM: stops reading, hands back the entries whose jobs have not
 * started (they stay pending, and others claim them), and lets the running
 * ones finish. settled_cb runs once nothing is held any more. */
void queue_drain(queue_t *q);

/* 1 when the queue holds no entry (or was never started). */
int queue_settled(const queue_t *q);

/* Closes the connections and timers and drops what is still held: those
 * entries stay pending in Redis and are claimed by others. Run the loop
 * afterwards, then queue_dispose(). */
void queue_close(queue_t *q);

/* Frees the parsed URL; after queue_close() and the loop's end. */
void queue_dispose(queue_t *q);

#endif
