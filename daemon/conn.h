/* conn — one TCP connection to an origin, and the llhttp parser that frames
 * the responses arriving on it.
 *
 * States: CONNECTING (a job is connecting it), ACTIVE (a request is in
 * flight), IDLE (pooled, waiting for reuse), CLOSING (uv_close() called; the
 * memory goes when the last reference does).
 *
 * Ownership: an origin's pool owns its idle connections; while a job connects
 * or uses a connection, the job owns a reference to it and the connection owns
 * a reference to the job. conn_detach() drops both. The open uv handle holds a
 * reference of its own, dropped in the close callback, and so does every
 * libuv request in flight. The origin is borrowed: it outlives its
 * connections because it counts them.
 *
 * The connection reports to its job through the job_on_* functions declared
 * in job.h; those never close the connection themselves — they return an
 * error and the connection closes after the parser has returned.
 */
#ifndef FETCHD_CONN_H
#define FETCHD_CONN_H

#include <llhttp.h>
#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "dns.h"
#include "stats.h"
#include "strbuf.h"
#include "tls.h"

typedef struct conn conn_t;
typedef struct job job_t;
typedef struct origin origin_t;

typedef enum conn_state { CONN_CONNECTING, CONN_ACTIVE, CONN_IDLE, CONN_CLOSING } conn_state_t;

struct conn {
    uv_tcp_t tcp; /* tcp.data == this */
    unsigned refcnt;
    conn_state_t state;  /* read-only */
    origin_t *origin;    /* borrowed; NULL once closing */
    stats_t *stats;      /* borrowed: the daemon's, outlives every connection */
    job_t *job;          /* owned reference while attached */
    unsigned requests;   /* read-only: requests started on this connection */
    uint64_t idle_since; /* read-only: loop time (ms) it went idle */
    conn_t *prev, *next; /* the origin's idle list, private */
    /* private */
    dns_entry_t *dns; /* owned reference while connecting */
    tls_conn_t *tls;  /* owned: the TLS session of an https connection */
    size_t addr_index;
    int connect_err;
    uv_connect_t connect_req;
    uv_write_t write_req;
    buf_t *rbuf; /* owned: handed to libuv by on_alloc until on_read */
    llhttp_t parser;
    int handle_open;
    int reading;
    int head_request;        /* the request in flight is HEAD: no body follows */
    unsigned writes_pending; /* writes (write_req, or TLS records) with libuv */
    int write_status;        /* the first error among them */
    int return_on_write;     /* reusable: back to the pool once the write is done */
    uint64_t resp_bytes;     /* bytes received for the request in flight */
    int final_status;        /* status of the response being parsed */
    int callback_err;        /* error a parser callback asked us to fail with */
    int message_done;        /* the final response is complete */
    int must_close;          /* something about the response rules out reuse */
    unsigned hdr_count;
    size_t hdr_bytes;
    strbuf_t hdr; /* owned: the current header as "name\0value" */
    size_t hdr_name_len;
    /* The normaliser in front of llhttp (conn.c, "normalising"). */
    int rx_state;          /* rx_state_t in conn.c */
    strbuf_t line;         /* owned: the line being received */
    strbuf_t held;         /* owned: the last field line, until the next shows it is not folded */
    strbuf_t te;           /* owned: every Transfer-Encoding value, joined with ", " */
    strbuf_t location;     /* owned: the first Location value */
    unsigned head_lines;   /* lines of the head (or trailer section) so far */
    size_t head_raw;       /* bytes of the head so far */
    unsigned interim;      /* 1xx responses before the final one */
    unsigned cl_fields;    /* Content-Length fields of this head */
    uint64_t cl_value;     /* their value */
    int location_fields;   /* Location fields of this head */
    int framing;           /* framing_t in conn.c: how the body is delimited */
    uint64_t chunk_left;   /* bytes of the current chunk still to come */
    unsigned lenient_seen; /* stats_lenient_t bits counted for this head */
};

/* Bounds of the response normaliser. */
#define CONN_MAX_CHUNK_LINE 4096
#define CONN_MAX_INTERIM    32

/* Creates a connection for origin o in state CONNECTING. Returns a new
 * reference, or NULL on allocation failure. */
conn_t *conn_create(origin_t *o);

/* Connects to the addresses of e in turn (e is borrowed; the connection keeps
 * its own reference while it tries them). The outcome is reported to the
 * attached job with job_on_connected(). Returns 0, or an error without
 * reporting anything. */
int conn_connect(conn_t *c, dns_entry_t *e);

/* Attaches job j: each takes a reference to the other. */
void conn_attach(conn_t *c, job_t *j);

/* Detaches the job (if any): drops both references. */
void conn_detach(conn_t *c);

/* Starts a request: writes the buffers (borrowed: they must stay valid until
 * the response ends; the attached job owns them) with one uv_write and
 * prepares the parser for the response. head says the method is HEAD. Returns
 * 0, or an error (nothing was sent). Later failures reach the job through
 * job_on_conn_error(). */
int conn_send(conn_t *c, const uv_buf_t *bufs, unsigned nbufs, int head);

/* Stops / resumes reading (sink backpressure). */
void conn_pause(conn_t *c);
void conn_resume(conn_t *c);

/* Closes the connection for reason: detaches its job (without telling it),
 * leaves the pool and starts uv_close(). Idempotent. */
void conn_close(conn_t *c, stats_close_t reason);

/* 1 while the TCP connection is up and its TLS handshake is not done. */
int conn_handshaking(const conn_t *c);

void conn_incref(conn_t *c);
/* Returns 1 when the connection was freed. */
int conn_decref(conn_t *c);

/* Response limits, shared by every connection. */
#define CONN_MAX_HEADER_BYTES (64 * 1024)
#define CONN_MAX_HEADERS      256

#endif
