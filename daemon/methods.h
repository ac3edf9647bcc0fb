/* methods — the control protocol's methods (proto/PROTOCOL.md §5): version,
 * submit, status, wait, cancel, list, stats, subscribe, unsubscribe, and the
 * answers and events they owe later (open waits, subscriptions).
 *
 * Methods run under rpc's framing and talk to their client only through
 * its rpc_peer_t (send, drop, references), so they know nothing of sockets.
 *
 * Ownership: a session (one per client, embedded in it) owns its waits and
 * its subscriptions. A wait holds a reference to the job it waits on, is
 * listed (borrowed) on that job's `watchers`, and holds a reference on its
 * peer's owner until its timer has closed; its memory is a slot in a
 * slab of 32 that every session shares, freed with its last wait.
 * Subscriptions are freed only by methods_session_dispose(), when the
 * client's last reference goes, so an event fan-out walking them survives
 * a send that closes the client.
 *
 * Per session at most 10,000 open waits and 64 subscriptions (and 1 MiB of
 * ids held for each); a `submit` takes at most 10,000 specs.
 */
#ifndef FETCHD_METHODS_H
#define FETCHD_METHODS_H

#include <stddef.h>
#include <stdint.h>

#include "daemon.h"
#include "rpc.h"
#include "strbuf.h"

typedef struct methods_wait methods_wait_t;
typedef struct methods_sub methods_sub_t;
typedef struct methods_wait_slab methods_wait_slab_t;

/* What every session shares; embedded in the control server. */
typedef struct methods {
    daemon_t *d;                /* borrowed */
    const unsigned *nclients;   /* borrowed: the server's client count, reported by stats */
    const unsigned *nreading;   /* borrowed, may be NULL: buffers stats leaves out of in_use */
    uint64_t next_sub;          /* private: the last subscription id given */
    methods_wait_slab_t *slabs; /* private: the slabs with room for a wait (see methods.c) */
} methods_t;

/* One client's waits and subscriptions; embedded in the client. */
typedef struct methods_session {
    methods_t *m;           /* borrowed */
    rpc_peer_t *peer;       /* borrowed: the client's */
    stats_t *stats;         /* borrowed */
    methods_wait_t *waits;  /* owned */
    methods_sub_t *subs;    /* owned: freed only by methods_session_dispose() */
    unsigned nwaits, nsubs; /* read-only: at most 10,000 and 64 */
    size_t wait_bytes;      /* read-only: the open waits' ids as JSON, at most 1 MiB */
    size_t sub_bytes;       /* read-only: the subscriptions' id lists as JSON, at most 1 MiB */
} methods_session_t;

void methods_init(methods_t *m, daemon_t *d, const unsigned *nclients);

/* Sets up s for a client and binds its peer to the methods: the peer's
 * calls run fetchd's methods, with s as their data. */
void methods_session_init(methods_session_t *s, methods_t *m, rpc_peer_t *peer);

/* The client is closing: ends its waits without an answer. Subscriptions
 * stay until methods_session_dispose(). */
void methods_session_close(methods_session_t *s);

/* Frees the subscriptions; call once the client's last reference goes. */
void methods_session_dispose(methods_session_t *s);

/* Whether s owes nothing later: no open wait and no subscription. */
int methods_session_idle(const methods_session_t *s);

/* Answers every open wait on j, which has finished. The caller holds a
 * reference on j. */
void methods_job_finished(job_t *j);

/* Sends s's client the event to each of its subscriptions that wants it;
 * job holds the job object's JSON text, written on first use (while it is
 * empty) and shared by every notification of the event (the caller
 * disposes of it). The caller holds a reference on the client. */
void methods_notify(methods_session_t *s, job_t *j, sched_event_t ev, strbuf_t *job);

#endif
