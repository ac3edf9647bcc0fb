/* rpc — JSON-RPC 2.0 framing for the control socket (proto/PROTOCOL.md §3-§4).
 *
 * Turns one line into calls (a request object or a batch), checks each
 * request object, dispatches it to a method table its peer registered, and
 * assembles the responses: one line per request, one line per batch. No
 * sockets: a peer is whatever its owner (the control server) says through
 * rpc_peer_ops_t; the framing only calls down through those hooks.
 *
 * A line is parsed with jsonr into the peer's reader (no tree, no
 * allocation once the reader's arrays have grown); the methods read their
 * params from it, a request id is kept and echoed as its JSON text, and
 * every answer is written as text (jsonw), so the hot methods (submit,
 * status, wait, cancel) never build a jansson tree.
 *
 * Ownership: a peer is embedded in its owner, which keeps it alive while
 * any call, batch or deferred answer refers to it (every holder of a
 * reference on a batch or a deferred answer holds one on the peer's owner).
 * A batch is reference counted: the handler holds one while its calls run
 * and each deferred call in it holds one; the last release sends the
 * responses as one line and frees the batch.
 */
#ifndef FETCHD_RPC_H
#define FETCHD_RPC_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "jsonr.h"
#include "jsonw.h"
#include "strbuf.h"

#define RPC_PARSE_ERROR      -32700
#define RPC_INVALID_REQUEST  -32600
#define RPC_METHOD_NOT_FOUND -32601
#define RPC_INVALID_PARAMS   -32602
#define RPC_SERVER_ERROR     -32000

/* A request id up to this many bytes of JSON text is kept inline. */
#define RPC_ID_INLINE 32
/* After a line, a reader whose token array passes this many bytes goes
 * back to its first, small one (jsonr's first array of 32 tokens fits): a
 * request line (wait, status, one job) needs no more, and the heap is then
 * the same, byte for byte, after any line (test_limits' Burst compares
 * bytes). A line that grew it, a batch of jobs, pays a few reallocations. */
#define RPC_READER_KEEP 1024

typedef struct rpc_peer rpc_peer_t;
typedef struct rpc_call rpc_call_t;
typedef struct rpc_batch rpc_batch_t;

/* A method answers in one of four ways: it returns its result (a new
 * reference); or it writes its result with rpc_result_begin() and returns
 * NULL; or it returns NULL with the call's error set (rpc_call_error());
 * or it returns NULL after rpc_defer(). NULL with none of these is
 * answered as out of memory. */
typedef json_t *(*rpc_method_fn)(rpc_call_t *call);

typedef struct rpc_method {
    const char *name;
    rpc_method_fn fn;
} rpc_method_t;

/* What the framing asks of a peer's owner. */
typedef struct rpc_peer_ops {
    void (*send)(rpc_peer_t *p, json_t *msg); /* queues msg (reference taken) as one line */
    /* Queues the JSON text in line (without its newline) as one line and
     * takes line's memory (line is zeroed); a failed line drops the peer
     * as out of memory. */
    void (*send_text)(rpc_peer_t *p, strbuf_t *line);
    /* Optional: the buffer a line is written into directly (the owner's
     * pending output), or NULL to have it sent with send_text; then
     * line_end() ends the line written at its end (a failed buffer drops
     * the peer). Nothing is sent to the peer between the two. */
    strbuf_t *(*line_begin)(rpc_peer_t *p);
    void (*line_end)(rpc_peer_t *p, strbuf_t *out);
    void (*drop)(rpc_peer_t *p, const char *why); /* closes the peer; sets p->closing */
    void (*incref)(rpc_peer_t *p);                /* a reference on the peer's owner */
    void (*decref)(rpc_peer_t *p);
} rpc_peer_ops_t;

/* One client as the framing sees it; embedded in its owner. */
struct rpc_peer {
    const rpc_peer_ops_t *ops;   /* borrowed */
    const rpc_method_t *methods; /* borrowed: the method table */
    size_t nmethods;
    void *data;        /* borrowed: for the methods (fetchd's: the client's session) */
    jsonr_t *reader;   /* borrowed: parses the peer's lines; peers that are served one
                        * line at a time (one loop thread) may share one */
    size_t max_output; /* a batch whose answers pass this many bytes drops the peer */
    int closing;       /* read-only here: set by the owner once the peer closes */
};

/* One call being handled; lives on the stack of rpc_handle_line(). */
struct rpc_call {
    rpc_peer_t *peer;   /* borrowed */
    const jsonr_t *r;   /* borrowed: the line's values, valid while the method runs */
    uint32_t params;    /* the params object in r, or JSONR_NONE when absent */
    const char *id;     /* borrowed: the id's JSON text in the line; NULL for a notification */
    size_t id_len;      /* its length */
    rpc_batch_t *batch; /* borrowed, or NULL */
    size_t slot;        /* the call's place in its batch's responses */
    json_t *error;      /* owned: set when the call failed */
    int deferred;       /* rpc_defer() was called: answered later */
    int written;        /* rpc_result_begin() was called: *outp holds the answer */
    strbuf_t *outp;     /* borrowed: where the answer is written (&out, or the peer's line) */
    strbuf_t out;       /* owned: the answer's text while it is written, unless direct */
};

/* A request id kept as its JSON text (e.g. `7`, `"a\"b"`, `null`). */
typedef struct rpc_id {
    size_t len;              /* 0: none */
    char *heap;              /* owned: the text when longer than RPC_ID_INLINE, else NULL */
    char inl[RPC_ID_INLINE]; /* the text when it fits */
} rpc_id_t;

/* A call answered later (an open `wait`); embedded in whatever waits. */
typedef struct rpc_defer {
    rpc_peer_t *peer;   /* borrowed: the holder keeps a reference on its owner */
    rpc_id_t id;        /* owned: the request id */
    rpc_batch_t *batch; /* owned reference, or NULL */
    size_t slot;
} rpc_defer_t;

/* Sets up p with its owner's hooks and a reader (borrowed; initialised
 * by the owner); the method table is set by whoever serves the calls. */
void rpc_peer_init(rpc_peer_t *p, const rpc_peer_ops_t *ops, size_t max_output, jsonr_t *reader);

/* Handles one line (without its newline): ignores a blank one, answers a
 * parse error, runs a request or a batch. The caller holds a reference on
 * p's owner: a method or a send may drop the peer, which only marks it. */
void rpc_handle_line(rpc_peer_t *p, const char *line, size_t n);

/* Brings a reader back to one small token array and no scratch, unless
 * it holds just that already: after every line (rpc_handle_line() calls
 * it), and by the reader's owner when it starts. The daemon's heap then
 * does not depend on what the last line held (many values, escaped
 * strings), which the soak's, test_hostile's and test_limits' exact
 * baselines need. */
void rpc_reader_settle(jsonr_t *r);

/* The value of params.key in the call's reader, or JSONR_NONE when absent
 * (or when the call has no params). */
uint32_t rpc_param(const rpc_call_t *call, const char *key);

/* Starts the call's result as text: the method writes exactly one JSON
 * value with the writer set up in *w, then returns NULL. A call alone on
 * its line is written straight into the peer's output (line_begin), so
 * the method sends nothing else from here on. Call at most once, and not
 * together with an error or rpc_defer(). */
void rpc_result_begin(rpc_call_t *call, jsonw_t *w);

/* An error object {code, message, data:{code: code_name, ...}}; data (may
 * be NULL) is stolen. Returns a new reference, or NULL without memory. */
json_t *rpc_error_object(int code, const char *code_name, json_t *data, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Sends p a whole error response with id null (outside any call). */
void rpc_send_error(rpc_peer_t *p, int code, const char *code_name, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Sets the call's error (replacing one set before); data is stolen. */
void rpc_call_error(rpc_call_t *call, int code, const char *code_name, json_t *data,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Defers the call's answer into d: d copies the id (on the heap only when
 * long) and takes a reference on the batch. The method then returns NULL;
 * rpc_defer_end() or rpc_defer_end_written() answers. Returns 0, or -1
 * without memory (nothing deferred, d holds nothing). */
int rpc_defer(rpc_call_t *call, rpc_defer_t *d);

/* Answers a deferred call with a result written straight into its line by
 * write(w, arg) (one JSON value), alone or in its batch's slot, and
 * releases what d holds. No tree is built: the wait answers' hot path. */
void rpc_defer_end_written(rpc_defer_t *d, void (*write)(jsonw_t *w, const void *arg),
                           const void *arg);

/* Answers a deferred call with {key: value} (value stolen; NULL: no
 * answer, e.g. the peer is closing), alone or in its batch's slot, and
 * releases what d holds. */
void rpc_defer_end(rpc_defer_t *d, const char *key, json_t *value);

#endif
