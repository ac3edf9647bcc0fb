/* conn — one TCP connection to an origin, and the llhttp parser that frames
 * the responses arriving on it.
 *
 * States: CONNECTING (being connected for a user), ACTIVE (a request is in
 * flight), IDLE (pooled, waiting for reuse), CLOSING (uv_close() called; the
 * memory goes when the last reference does).
 *
 * Ownership: whoever created the connection (the pool) owns it while it is
 * idle; while a user (a job) connects or uses it, the user owns a reference
 * to it and the connection owns a reference to the user, taken and dropped
 * through the user's ops. conn_detach() drops both. The open uv handle holds
 * a reference of its own, dropped in the close callback, and so does every
 * libuv request in flight. The environment (conn_env_t) is borrowed: its
 * owner (an origin) outlives the connection's life in the pool, because the
 * connection tells it through hooks->on_closing before it lets go.
 *
 * Through a proxy (env->proxy): the TCP connection goes to the proxy's
 * addresses (those given to conn_connect()). An absolute-form connection to
 * an HTTP proxy (env->tunnel 0) is ready once TCP is up. A tunnel
 * (env->tunnel 1) runs the proxy leg first, still CONNECTING: a CONNECT
 * request to an HTTP proxy, or the SOCKS5 handshake (RFC 1928/1929), then
 * TLS to env->host inside it for https, exactly as on a direct connection.
 * connect_timeout (the user's timer) covers the whole leg; its outcome is
 * counted in stats->proxy_connects.
 *
 * The connection knows neither jobs nor pools. It reports to its user
 * through the conn_user_ops_t given to conn_attach(), and to its pool through
 * the conn_pool_hooks_t of its environment (as h2o's socket pool sets
 * sock->on_close). Every call into the user runs inside a reference on the
 * connection; none of the user's callbacks may expect the connection to
 * survive the call unless it holds a reference of its own: they return an
 * error and the connection closes after the parser has returned.
 */
#ifndef FETCHD_CONN_H
#define FETCHD_CONN_H

#include <llhttp.h>
#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "dns.h"
#include "netacl.h"
#include "proxy.h"
#include "stats.h"
#include "strbuf.h"
#include "tls.h"

typedef struct conn conn_t;

typedef enum conn_state { CONN_CONNECTING, CONN_ACTIVE, CONN_IDLE, CONN_CLOSING } conn_state_t;

/* Where a parser callback of the user writes why it refuses the response
 * (only when it refuses: it returns an error after writing it); the message
 * then reaches on_error. */
typedef struct conn_why {
    char msg[192];
} conn_why_t;

/* The connection's reports to its user (the job). user is the pointer given
 * to conn_attach(). The int-returning ones return 0, or an error that makes
 * the connection fail the response (they may fill why); none of them closes
 * the connection itself. */
typedef struct conn_user_ops {
    void (*incref)(void *user);
    void (*decref)(void *user);
    /* The connection let go of the user: the user drops its pointer to it
     * (the reference it held is dropped by conn_detach()). */
    void (*on_detach)(void *user);
    /* Connecting ended: err 0, or an error and its message. */
    void (*on_connected)(void *user, int err, const char *msg);
    void (*on_request_sent)(void *user);
    /* Response bytes arrived (before they are parsed). */
    void (*on_read)(void *user);
    int (*on_header)(void *user, const char *name, size_t nlen, const char *value, size_t vlen,
                     conn_why_t *why);
    /* te: the Transfer-Encoding codings to undo, or NULL. */
    int (*on_head)(void *user, int status, int64_t content_length, const char *te, conn_why_t *why);
    int (*on_body)(void *user, buf_t *b, const char *at, size_t len, conn_why_t *why);
    /* The final response is complete; the connection is already detached
     * (and back in the pool or closing). */
    void (*on_complete)(void *user);
    /* The exchange failed; the connection is already detached and closing.
     * reused: it had served a request before; resp_bytes: response bytes
     * received. */
    void (*on_error)(void *user, int err, const char *msg, int reused, uint64_t resp_bytes);
} conn_user_ops_t;

/* The pool's hooks, called with the connection (its env->hook_data says
 * which origin it belongs to). */
typedef struct conn_pool_hooks {
    /* The connection finished connecting: CONNECTING -> ACTIVE. */
    void (*on_active)(conn_t *c);
    /* The connection may serve another request; takes the reference the
     * connection hands over. */
    void (*on_reusable)(conn_t *c);
    /* The connection is closing (still in its old state): it leaves the
     * pool. Called once; env is NULL afterwards. */
    void (*on_closing)(conn_t *c);
} conn_pool_hooks_t;

/* What a connection needs of the world; owned by the origin (its pool). */
typedef struct conn_env {
    uv_loop_t *loop;  /* borrowed */
    stats_t *stats;   /* borrowed */
    buf_pool_t *bufs; /* borrowed */
    const char *host; /* borrowed */
    uint16_t port;
    int host_is_ip;
    const char *tls_key;            /* borrowed: the TLS session cache key */
    tls_config_t *tls_config;       /* borrowed; NULL for plain TCP */
    const conn_pool_hooks_t *hooks; /* borrowed */
    void *hook_data;                /* borrowed: the pool's (its origin) */
    const proxy_t *proxy;           /* borrowed: the proxy to go through, or NULL */
    int tunnel;                     /* 1: a CONNECT or SOCKS5 tunnel to host:port through proxy */
    dns_t *dns;                     /* borrowed: resolves the origin for socks5://; may be NULL */
    const netacl_t *acl; /* borrowed: checks the origin's address for socks5://; NULL allows */
} conn_env_t;

typedef struct conn_px conn_px_t;

struct conn {
    uv_tcp_t tcp; /* tcp.data == this */
    unsigned refcnt;
    conn_state_t state;         /* read-only: written by conn.c only */
    const conn_env_t *env;      /* borrowed; NULL once closing */
    stats_t *stats;             /* borrowed: the daemon's, outlives every connection */
    void *user;                 /* owned reference (through ops) while attached */
    const conn_user_ops_t *ops; /* borrowed: the user's, while attached */
    unsigned requests;          /* read-only: requests started on this connection */
    uint64_t idle_since;        /* read-only: loop time (ms) it went idle */
    conn_t *prev, *next;        /* the pool's idle list: written by the pool only */
    /* private */
    dns_entry_t *dns; /* owned reference while connecting */
    tls_conn_t *tls;  /* owned: the TLS session of an https connection */
    conn_px_t *px;    /* owned: the proxy leg's state (conn.c), with a proxy only */
    size_t addr_index;
    int connect_err;
    uv_connect_t connect_req;
    uv_write_t write_req;
    char *head_copy; /* owned: the unsent rest of a request head, while write_req carries it */
    buf_t *rbuf;     /* owned: handed to libuv by on_alloc until on_read */
    llhttp_t parser;
    int handle_open;
    int read_large; /* the last read filled its buffer mid-response: the next takes a large one */
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

/* Creates a connection in state CONNECTING for the environment env (borrowed:
 * it must outlive the connection until env->hooks->on_closing). Returns a new
 * reference, or NULL on allocation failure. */
conn_t *conn_create(const conn_env_t *env);

/* Connects to the addresses of e in turn (e is borrowed; the connection keeps
 * its own reference while it tries them). The outcome is reported to the
 * attached user with on_connected. Returns 0, or an error without
 * reporting anything. */
int conn_connect(conn_t *c, dns_entry_t *e);

/* Attaches a user: each takes a reference to the other (the connection's
 * through ops->incref; the user's is a new conn reference it must later give
 * up through conn_detach()). ops is borrowed and must outlive the connection. */
void conn_attach(conn_t *c, const conn_user_ops_t *ops, void *user);

/* Detaches the user (if any): calls its on_detach, drops both references. */
void conn_detach(conn_t *c);

/* The pool's state changes of a connection it holds: ACTIVE -> IDLE with the
 * loop time now, and IDLE -> ACTIVE on reuse. */
void conn_set_idle(conn_t *c, uint64_t now);
void conn_set_active(conn_t *c);

/* Starts a request: writes the buffers (1 to 8) with one uv_write and
 * prepares the parser for the response. bufs[0], the request head, is borrowed for the
 * call only (what the socket does not take at once is copied); the others
 * are borrowed until the response ends (the attached user owns them). head
 * says the method is HEAD. Returns 0, or an error (the request was not sent
 * whole; the caller closes the connection). Later failures reach the user
 * through on_error. */
int conn_send(conn_t *c, const uv_buf_t *bufs, unsigned nbufs, int head);

/* Stops / resumes reading (sink backpressure). */
void conn_pause(conn_t *c);
void conn_resume(conn_t *c);

/* Closes the connection for reason: detaches its user (without an error
 * report), leaves the pool (hooks->on_closing) and starts uv_close().
 * Idempotent. */
void conn_close(conn_t *c, stats_close_t reason);

/* 1 while the TCP connection is up and its TLS handshake is not done. */
int conn_handshaking(const conn_t *c);

/* The host and port the TCP connection goes to: the proxy's when there is
 * one, else the origin's. The string is borrowed from the environment;
 * call while the connection is not closing. */
const char *conn_hop_host(const conn_t *c, uint16_t *port);

/* The proxy as shown to people ("http://host:port", no credentials), or
 * NULL without a proxy or once closing. */
const char *conn_proxy_shown(const conn_t *c);

void conn_incref(conn_t *c);
/* Returns 1 when the connection was freed. */
int conn_decref(conn_t *c);

/* Response limits, shared by every connection. */
#define CONN_MAX_HEADER_BYTES (64 * 1024)
#define CONN_MAX_HEADERS      256

#endif
