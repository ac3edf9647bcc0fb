/* rpc — fetchctl's connection to fetchd's control socket.
 *
 * One non-blocking Unix stream connection speaking newline-delimited
 * JSON-RPC 2.0 (proto/PROTOCOL.md). Requests are queued into an output
 * buffer and written while responses are read, all under one poll(), so a
 * client can keep many calls in flight without ever deadlocking against a
 * daemon that is itself blocked writing answers back. Responses may arrive
 * in any order; callers match them by the id rpc_request() returned.
 *
 * Messages are read with jsonr (proto/jsonr.h) into a token array the rpc_t
 * owns and reuses: no tree is built for an answer. A message stays readable
 * until the next rpc_read() or rpc_wait(), which may move the bytes its
 * tokens point into.
 *
 * Ownership: the rpc_t owns its socket, both buffers and the reader.
 */
#ifndef FETCHCTL_RPC_H
#define FETCHCTL_RPC_H

#include <stddef.h>
#include <jansson.h>

#include "jsonr.h"

/* rpc_read() results besides "one message" (1) and negative errnos. */
#define RPC_EOF         0  /* the daemon closed the connection */
#define RPC_INTERRUPTED -1 /* rpc_interrupt() was called (a signal arrived) */
#define RPC_BAD_LINE    -2 /* the daemon sent a line that is not JSON */

typedef struct rpc {
    int fd;
    char *in; /* owned: bytes read; those before in_off were returned already */
    size_t in_off, in_scan, in_len, in_cap;
    char *out; /* owned: queued request bytes not yet written */
    size_t out_off, out_len, out_cap;
    json_int_t next_id;
    jsonr_t msg;  /* owned: the last message read (value 0 is its root) */
    json_t *tree; /* owned: that message's tree when only jansson could read it */
} rpc_t;

/* Connects to the socket at path. Returns 0, or a negative errno (with
 * -ENAMETOOLONG when path does not fit a socket address). */
int rpc_connect(rpc_t *r, const char *path);

/* Closes the socket and frees the buffers. */
void rpc_close(rpc_t *r);

/* Queues a call of method with params (a reference this function steals;
 * NULL means no params). Returns its id (> 0), or -1 when out of memory. */
json_int_t rpc_request(rpc_t *r, const char *method, json_t *params);
/* The same for a call whose only parameter is a job id ({"id": job_id}),
 * written without building a tree: fetchctl sends one `wait` per job. */
json_int_t rpc_request_job(rpc_t *r, const char *method, const char *job_id);

/* Builds (without queueing) the call object for method and params (stolen),
 * with a fresh id stored in *id: for callers assembling batches. Returns a
 * new reference or NULL. */
json_t *rpc_call_object(rpc_t *r, const char *method, json_t *params, json_int_t *id);

/* Returns a fresh id for a call the caller serialises itself. */
json_int_t rpc_reserve_id(rpc_t *r);

/* Queues v (any JSON value, borrowed) as one line. 0 or -1 (no memory). */
int rpc_send_json(rpc_t *r, const json_t *v);

/* Queues text (n bytes, without the newline) as one line. 0 or -1. */
int rpc_send_raw(rpc_t *r, const char *text, size_t n);

/* Reads the next message from the daemon into r->msg (borrowed by the
 * caller until the next rpc_read() or rpc_wait()), writing queued output
 * meanwhile. timeout_ms < 0 waits for ever. Returns 1, RPC_EOF,
 * RPC_INTERRUPTED, RPC_BAD_LINE, -ETIMEDOUT or a negative errno. Blank
 * lines are skipped. A line is JSON exactly when jansson's
 * json_loadb(JSON_ALLOW_NUL) reads it. */
int rpc_read(rpc_t *r, int timeout_ms);

/* Waits up to timeout_ms until rpc_read() would return at once (a line is
 * in, the connection ended or failed, or an interrupt came), writing queued
 * output meanwhile: 1 then, 0 when the time passed first. */
int rpc_wait(rpc_t *r, int timeout_ms);

/* Makes the current and later rpc_read() calls return RPC_INTERRUPTED.
 * Async-signal-safe. */
void rpc_interrupt(void);

/* Forgets an interrupt, so that calls can be made again (to tidy up after
 * one); a later signal interrupts them as before. */
void rpc_interrupt_clear(void);

/* 1 once rpc_interrupt() was called. */
int rpc_interrupted(void);

#endif
