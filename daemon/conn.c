/* conn — a TCP connection and its response parser; see conn.h.
 *
 * Every libuv callback here runs inside a reference (conn_incref at the top,
 * conn_decref at the bottom), so a close triggered anywhere below it only
 * marks the connection; the memory goes with the last reference.
 */
#include "conn.h"

#include <assert.h>
#include <ctype.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "err.h"
#include "fmt.h"
#include "http.h"
#include "mem.h"
#include "strbuf.h"

/* Every call into the user goes through here (redis's callHandler is the
 * model): the connection is held across the callback, so a close inside it
 * only marks the connection and the memory goes with the last reference. */
#define CALL_USER(c, call) \
    do {                   \
        (c)->refcnt++;     \
        call;              \
        conn_release(c);   \
    } while (0)

static void conn_destroy(conn_t *c);
static void px_dispose(conn_t *c);

/* conn_decref() for the hot path, inlined into every CALL_USER. */
static inline void conn_release(conn_t *c)
{
    assert(c->refcnt > 0);
    if (--c->refcnt == 0)
        conn_destroy(c);
}

static int on_message_begin(llhttp_t *p);
static int on_status(llhttp_t *p, const char *at, size_t len);
static int on_header_field(llhttp_t *p, const char *at, size_t len);
static int on_header_field_complete(llhttp_t *p);
static int on_header_value(llhttp_t *p, const char *at, size_t len);
static int on_header_value_complete(llhttp_t *p);
static int on_headers_complete(llhttp_t *p);
static int on_body(llhttp_t *p, const char *at, size_t len);
static int on_message_complete(llhttp_t *p);

static const llhttp_settings_t parser_settings = {
    .on_message_begin = on_message_begin,
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* The buffer being parsed, for on_body; only valid inside llhttp_execute(). */
typedef struct parse_ctx {
    conn_t *conn;
    buf_t *buf;         /* borrowed: the read buffer, while body bytes are fed */
    const char *errmsg; /* why callback_err was set (static, or msg below) */
    const char *what;   /* the part of the response being fed, for messages */
    char msg[192];
    conn_why_t why; /* the user's reason for refusing the response */
} parse_ctx_t;

/* Sets the fields every parse reads; msg is written before it is read and
 * why only needs its first byte cleared, so the buffers are not cleared on
 * every read. */
static void ctx_init(parse_ctx_t *ctx, conn_t *c, const char *what)
{
    ctx->conn = c;
    ctx->buf = NULL;
    ctx->errmsg = NULL;
    ctx->what = what;
    ctx->why.msg[0] = '\0';
}

/* Where the normaliser is in the response (see "normalising" below). */
typedef enum rx_state {
    RX_HEAD,       /* status line and header section, line by line */
    RX_BODY,       /* Content-Length or close-delimited body: bytes go straight through */
    RX_CHUNK_LINE, /* a chunk-size line */
    RX_CHUNK_DATA, /* chunk data: bytes go straight through */
    RX_CHUNK_END,  /* the line end after chunk data */
    RX_TRAILER,    /* the trailer section, line by line */
    RX_DONE        /* the final response is complete */
} rx_state_t;

/* How the body of the final response is delimited, decided from its head. */
typedef enum framing { FRAMING_NONE, FRAMING_LENGTH, FRAMING_CHUNKED, FRAMING_EOF } framing_t;

static void rx_reset(conn_t *c);

conn_t *conn_create(const conn_env_t *env)
{
    conn_t *c = mem_calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    if (uv_tcp_init(env->loop, &c->tcp) != 0) {
        mem_free(c);
        return NULL;
    }
    c->tcp.data = c;
    c->handle_open = 1;
    c->refcnt = 2; /* the caller's, and the open handle's */
    c->state = CONN_CONNECTING;
    c->env = env;
    c->stats = env->stats;
    llhttp_init(&c->parser, HTTP_RESPONSE, &parser_settings);
    c->parser.data = NULL;
    stats_obj_created(env->stats, STATS_OBJ_CONN);
    return c;
}

static void conn_destroy(conn_t *c)
{
    assert(c->user == NULL && !c->handle_open);
    if (c->dns)
        dns_entry_decref(c->dns);
    if (c->rbuf)
        buf_decref(c->rbuf);
    if (c->tls)
        tls_conn_destroy(c->tls);
    px_dispose(c);
    mem_free(c->head_copy);
    strbuf_dispose(&c->line);
    strbuf_dispose(&c->held);
    strbuf_dispose(&c->te);
    strbuf_dispose(&c->location);
    stats_obj_destroyed(c->stats, STATS_OBJ_CONN);
    mem_free(c);
}

void conn_incref(conn_t *c)
{
    c->refcnt++;
}

int conn_handshaking(const conn_t *c)
{
    return c->state == CONN_CONNECTING && c->tls != NULL;
}

int conn_decref(conn_t *c)
{
    assert(c->refcnt > 0);
    if (--c->refcnt > 0)
        return 0;
    conn_destroy(c);
    return 1;
}

void conn_attach(conn_t *c, const conn_user_ops_t *ops, void *user)
{
    assert(c->user == NULL);
    ops->incref(user);
    c->ops = ops;
    c->user = user;
    conn_incref(c); /* the user's */
}

/* Detaches the user but keeps the connection's reference to it, which the
 * caller now owns (and drops with (*ops)->decref); NULL when none was
 * attached. */
static void *detach_keep(conn_t *c, const conn_user_ops_t **ops)
{
    void *u = c->user;
    *ops = c->ops;
    if (u == NULL)
        return NULL;
    c->user = NULL;
    c->ops = NULL;
    CALL_USER(c, (*ops)->on_detach(u));
    /* Drop the user's reference to us last: it may be the one keeping us. */
    conn_decref(c);
    return u;
}

void conn_detach(conn_t *c)
{
    const conn_user_ops_t *ops;
    void *u = detach_keep(c, &ops);
    if (u != NULL)
        ops->decref(u);
}

void conn_set_idle(conn_t *c, uint64_t now)
{
    assert(c->state == CONN_ACTIVE && c->user == NULL);
    c->state = CONN_IDLE;
    c->idle_since = now;
}

void conn_set_active(conn_t *c)
{
    assert(c->state == CONN_IDLE);
    c->state = CONN_ACTIVE;
}

/* Leaves the pool: it sees the connection in its old state once. */
static void leave_pool(conn_t *c)
{
    if (c->env == NULL)
        return;
    c->env->hooks->on_closing(c);
    c->env = NULL;
}

static void px_closing(conn_t *c, stats_close_t reason);

static void on_close(uv_handle_t *h)
{
    conn_t *c = h->data;
    c->handle_open = 0;
    conn_decref(c);
}

void conn_close(conn_t *c, stats_close_t reason)
{
    if (c->state == CONN_CLOSING)
        return;
    conn_incref(c);
    c->stats->conns_closed[reason]++;
    if (c->px != NULL)
        px_closing(c, reason);
    leave_pool(c); /* c->env is NULL afterwards */
    c->state = CONN_CLOSING;
    conn_detach(c);
    if (c->dns) {
        dns_entry_decref(c->dns);
        c->dns = NULL;
    }
    if (c->tls)
        tls_conn_leave(c->tls); /* before uv_close: a waiter is never woken closing */
    if (c->tls && c->handle_open)
        tls_conn_close_notify(c->tls);
    uv_close((uv_handle_t *)&c->tcp, on_close);
    conn_decref(c);
}

/* Closes the connection and tells its job why the exchange failed. */
static void conn_fail(conn_t *c, stats_close_t reason, int err, const char *msg)
{
    const conn_user_ops_t *ops;
    int reused = c->requests > 1;
    uint64_t got = c->resp_bytes;
    void *u = detach_keep(c, &ops);

    conn_close(c, reason);
    if (u == NULL)
        return;
    CALL_USER(c, ops->on_error(u, err, msg, reused, got));
    ops->decref(u);
}

/* ---- connecting ------------------------------------------------------------ */

static void try_next_address(conn_t *c);

static void on_connect(uv_connect_t *req, int status);

static void on_reopen_close(uv_handle_t *h)
{
    conn_t *c = h->data;

    c->handle_open = 0;
    if (c->state == CONN_CLOSING) {
        conn_decref(c); /* the handle's reference */
        return;
    }
    /* A fresh handle for the next address; the handle's reference carries
     * over. uv_tcp_init() creates no socket yet (AF_UNSPEC), so it cannot
     * fail here: the socket comes with uv_tcp_connect(). */
    uv_tcp_init(h->loop, &c->tcp);
    c->tcp.data = c;
    c->handle_open = 1;
    try_next_address(c);
}

/* Connecting failed (TCP or TLS): close, then tell the job why. */
static void setup_failed(conn_t *c, int err, const char *why)
{
    char msg[256];
    const conn_user_ops_t *ops;
    void *u;

    snprintf(msg, sizeof(msg), "%s", why); /* why may live in c->tls */
    u = detach_keep(c, &ops);
    conn_close(c, STATS_CLOSE_CONNECT_FAILED);
    if (u == NULL)
        return;
    CALL_USER(c, ops->on_connected(u, err, msg));
    ops->decref(u);
}

/* The job error for a failed socket() or connect(): running out of
 * descriptors or memory is the daemon's trouble, not the server's refusal. */
static int connect_code(int uverr)
{
    switch (uverr) {
    case UV_ETIMEDOUT:
        return ERR_CONNECT_TIMEOUT;
    case UV_EMFILE:
    case UV_ENFILE:
        return ERR_NO_FDS;
    case UV_ENOMEM:
    case UV_ENOBUFS:
        return ERR_NO_MEMORY;
    default:
        return ERR_CONNECT_REFUSED;
    }
}

static void px_count(conn_t *c, stats_proxy_result_t r);

static void connect_failed(conn_t *c)
{
    char msg[200];
    int code = connect_code(c->connect_err);

    if (c->px != NULL) {
        px_count(c, code == ERR_CONNECT_TIMEOUT ? STATS_PROXY_TIMEOUT : STATS_PROXY_REFUSED);
        snprintf(msg, sizeof(msg), "connect to proxy %s: %s", c->env->proxy->shown,
                 uv_strerror(c->connect_err));
        setup_failed(c, code, msg);
        return;
    }

    snprintf(msg, sizeof(msg), "connect to %s port %u: %s%s", c->env->host, (unsigned)c->env->port,
             uv_strerror(c->connect_err),
             code == ERR_NO_FDS ? " (fetchd is out of file descriptors: raise its limit, "
                                  "LimitNOFILE=, or lower --max-connections)"
                                : "");
    setup_failed(c, code, msg);
}

static void try_next_address(conn_t *c)
{
    int rc;

    while (c->addr_index < c->dns->naddrs) {
        const struct sockaddr *sa = (const struct sockaddr *)&c->dns->addrs[c->addr_index++];
        conn_incref(c); /* the request's */
        c->connect_req.data = c;
        rc = uv_tcp_connect(&c->connect_req, &c->tcp, sa, on_connect);
        if (rc == 0)
            return;
        conn_decref(c);
        c->connect_err = rc;
        /* Another address cannot help when the daemon itself is short. */
        if (connect_code(rc) == ERR_NO_FDS || connect_code(rc) == ERR_NO_MEMORY)
            break;
        if (c->addr_index < c->dns->naddrs) {
            /* The handle may hold a socket of the wrong family now: start over. */
            uv_close((uv_handle_t *)&c->tcp, on_reopen_close);
            return;
        }
    }
    connect_failed(c);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *out);
static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b);
static int tls_send(void *ctx, const unsigned char *buf, size_t len);

/* The connection is ready for requests: TCP is up, and TLS too if any. */
static void become_active(conn_t *c)
{
    c->env->hooks->on_active(c);
    c->state = CONN_ACTIVE;
    if (c->user)
        CALL_USER(c, c->ops->on_connected(c->user, 0, NULL));
}

/* Runs the handshake as far as the input fed so far allows. Returns 0 while
 * the connection lives on (handshaking or ready), -1 once it failed. */
static int advance_handshake(conn_t *c)
{
    int rc = tls_conn_handshake(c->tls);
    if (rc == TLS_AGAIN)
        return 0;
    if (rc < 0) {
        setup_failed(c, rc, c->tls->errmsg);
        return -1;
    }
    become_active(c);
    tls_conn_leave(c->tls); /* connections waiting for this handshake go */
    return 0;
}

/* Another connection's full handshake to the origin ended: this one's turn. */
static void on_tls_turn(void *ctx)
{
    conn_t *c = ctx;

    conn_incref(c);
    tls_conn_feed(c->tls, NULL, 0);
    advance_handshake(c); /* sends the ClientHello */
    conn_decref(c);
}

static void start_tls(conn_t *c)
{
    const conn_env_t *e = c->env;

    c->tls = tls_conn_create(e->tls_config, e->host, e->host_is_ip, e->tls_key, tls_send, c);
    if (c->tls == NULL) {
        setup_failed(c, ERR_NO_MEMORY, "no memory for a TLS session");
        return;
    }
    /* While another full handshake to the origin runs, wait for its session
     * (the connect timeout still runs; closing leaves the queue). */
    if (tls_conn_begin(c->tls, on_tls_turn, c) == TLS_WAIT)
        return;
    tls_conn_feed(c->tls, NULL, 0);
    advance_handshake(c); /* sends the ClientHello */
}

/* ---- the proxy leg -----------------------------------------------------------
 * A tunnel's CONNECT request or SOCKS5 handshake, between TCP connect and
 * TLS (or readiness). Its bytes go out through tls_send() (one copied write
 * each) and its answers are collected in px->in until complete; nothing
 * reaches the response parser before the tunnel stands. */

/* The proxy's answers are short: a CONNECT response head (an error page's
 * body is never read) or a SOCKS reply of at most 262 bytes. */
#define PX_MAX_ANSWER 16384

typedef enum px_step {
    PX_TCP,          /* connecting to the proxy */
    PX_RESOLVING,    /* socks5://: resolving the origin ourselves */
    PX_HTTP_HEAD,    /* CONNECT sent, reading the response head */
    PX_SOCKS_METHOD, /* greeting sent, reading the method choice */
    PX_SOCKS_AUTH,   /* user name and password sent, reading the verdict */
    PX_SOCKS_REPLY,  /* CONNECT request sent, reading the reply */
    PX_DONE          /* the tunnel stands (or there was no leg) */
} px_step_t;

struct conn_px {
    px_step_t step;
    int counted;        /* the leg's outcome is in stats->proxy_connects */
    int dns_pending;    /* dnsw is registered with the cache */
    dns_waiter_t dnsw;  /* socks5://: the origin's lookup */
    strbuf_t in;        /* owned: the proxy's answer so far */
    uint8_t target[16]; /* socks5://: the origin's address */
    int target_v6;
};

static void become_active(conn_t *c);
static void start_tls(conn_t *c);
static int tls_send(void *ctx, const unsigned char *buf, size_t len);

static stats_proxy_kind_t px_kind(const conn_t *c)
{
    if (!c->env->tunnel)
        return STATS_PROXY_HTTP;
    return c->env->proxy->kind == PROXY_HTTP ? STATS_PROXY_CONNECT : STATS_PROXY_SOCKS5;
}

/* Counts the leg's outcome, once per connection. */
static void px_count(conn_t *c, stats_proxy_result_t r)
{
    if (c->px == NULL || c->px->counted || c->env == NULL)
        return;
    c->px->counted = 1;
    c->stats->proxy_connects[px_kind(c)][r]++;
}

static void px_dispose(conn_t *c)
{
    if (c->px == NULL)
        return;
    if (c->px->dns_pending)
        dns_cancel(&c->px->dnsw);
    strbuf_dispose(&c->px->in);
    mem_free(c->px);
    c->px = NULL;
}

/* The connection closes: a leg cut short by the user's connect timeout is
 * counted as a timeout (a cancelled one is not counted), and the origin's
 * lookup is withdrawn. */
static void px_closing(conn_t *c, stats_close_t reason)
{
    if (c->px->step != PX_DONE && reason == STATS_CLOSE_CONNECT_FAILED)
        px_count(c, STATS_PROXY_TIMEOUT);
    if (c->px->dns_pending) {
        dns_cancel(&c->px->dnsw);
        c->px->dns_pending = 0;
    }
}

/* 1 while the proxy leg runs (TCP to the proxy included). */
static int px_active(const conn_t *c)
{
    return c->px != NULL && c->px->step != PX_DONE;
}

/* The leg failed: counted as r, reported as err with a message naming the
 * proxy by its shown form (never its credentials). */
static void px_fail(conn_t *c, int err, stats_proxy_result_t r, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void px_fail(conn_t *c, int err, stats_proxy_result_t r, const char *fmt, ...)
{
    char msg[256];
    int n;
    va_list ap;

    n = snprintf(msg, sizeof(msg), "proxy %.200s: ", c->env->proxy->shown);
    va_start(ap, fmt);
    vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
    va_end(ap);
    px_count(c, r);
    c->px->step = PX_DONE;
    setup_failed(c, err, msg);
}

/* The tunnel stands: TLS to the origin inside it, or ready for requests. */
static void px_done(conn_t *c)
{
    px_count(c, STATS_PROXY_OK);
    c->px->step = PX_DONE;
    strbuf_dispose(&c->px->in);
    if (c->env->tls_config != NULL)
        start_tls(c);
    else
        become_active(c);
}

static int px_send(conn_t *c, const void *data, size_t len)
{
    int rc = tls_send(c, data, len); /* a copied write, as a TLS record's */
    if (rc != 0)
        px_fail(c, rc == ERR_NO_MEMORY ? rc : ERR_PROXY, STATS_PROXY_ERROR,
                "sending the handshake: %s", err_str(rc));
    return rc;
}

/* "host:port", brackets around an IPv6 literal. */
static void px_authority(const conn_t *c, char *out, size_t len)
{
    const conn_env_t *e = c->env;
    snprintf(out, len, strchr(e->host, ':') ? "[%s]:%u" : "%s:%u", e->host, (unsigned)e->port);
}

static void px_http_connect(conn_t *c)
{
    const proxy_t *px = c->env->proxy;
    char auth[300], *req;
    size_t cap = 256 + 2 * sizeof(auth) + (px->basic ? strlen(px->basic) : 0);
    int n;

    px_authority(c, auth, sizeof(auth));
    req = mem_alloc(cap);
    if (req == NULL) {
        px_fail(c, ERR_NO_MEMORY, STATS_PROXY_ERROR, "no memory for the CONNECT request");
        return;
    }
    n = snprintf(req, cap, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: fetchd/%s\r\n%s%s%s\r\n",
                 auth, auth, FETCHD_VERSION, px->basic ? "Proxy-Authorization: Basic " : "",
                 px->basic ? px->basic : "", px->basic ? "\r\n" : "");
    c->px->step = PX_HTTP_HEAD;
    px_send(c, req, (size_t)n);
    memset(req, 0, (size_t)n);
    mem_free(req);
}

static void px_socks_greet(conn_t *c)
{
    const proxy_t *px = c->env->proxy;
    unsigned char hello[4] = {5, 1, 0, 2};

    if (px->user != NULL)
        hello[1] = 2; /* no authentication, or user name and password */
    c->px->step = PX_SOCKS_METHOD;
    px_send(c, hello, px->user != NULL ? 4 : 3);
}

static void px_socks_auth(conn_t *c)
{
    const proxy_t *px = c->env->proxy;
    unsigned char msg[3 + 2 * 255];
    size_t ul = strlen(px->user), pl = strlen(px->pass), n = 0;

    msg[n++] = 1; /* RFC 1929's version */
    msg[n++] = (unsigned char)ul;
    memcpy(msg + n, px->user, ul);
    n += ul;
    msg[n++] = (unsigned char)pl;
    memcpy(msg + n, px->pass, pl);
    n += pl;
    c->px->step = PX_SOCKS_AUTH;
    px_send(c, msg, n);
    memset(msg, 0, sizeof(msg));
}

static void px_socks_request(conn_t *c)
{
    const conn_env_t *e = c->env;
    unsigned char req[4 + 1 + 255 + 2];
    size_t n = 0, hl = strlen(e->host);

    req[n++] = 5;
    req[n++] = 1; /* CONNECT */
    req[n++] = 0;
    if (e->proxy->kind == PROXY_SOCKS5H && !e->host_is_ip) {
        if (hl > 255) {
            px_fail(c, ERR_PROXY, STATS_PROXY_ERROR, "host name too long for SOCKS5");
            return;
        }
        req[n++] = 3;
        req[n++] = (unsigned char)hl;
        memcpy(req + n, e->host, hl);
        n += hl;
    } else if (c->px->target_v6) {
        req[n++] = 4;
        memcpy(req + n, c->px->target, 16);
        n += 16;
    } else {
        req[n++] = 1;
        memcpy(req + n, c->px->target + 12, 4);
        n += 4;
    }
    req[n++] = (unsigned char)(e->port >> 8);
    req[n++] = (unsigned char)(e->port & 0xff);
    c->px->step = PX_SOCKS_REPLY;
    px_send(c, req, n);
}

/* Takes the address a SOCKS5 request names (IPv4-mapped v6 is sent as v4). */
static void px_set_target(conn_t *c, const struct sockaddr *sa)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

    memset(c->px->target, 0, 16);
    c->px->target_v6 = 0;
    if (sa->sa_family == AF_INET) {
        memcpy(c->px->target + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else {
        memcpy(c->px->target, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
        c->px->target_v6 = memcmp(c->px->target, mapped, 12) != 0;
    }
}

/* socks5://: the origin's addresses are ours to check, as on a direct
 * connection. The request names the first IPv4 address, else the first
 * one: many SOCKS servers cannot reach IPv6 (reply 0x08), while "localhost"
 * and dual-stack names often resolve to ::1 or a v6 address first. */
static void px_resolved(conn_t *c, dns_entry_t *e)
{
    char why[160];
    size_t pick = 0;

    if (e->status != 0 || e->naddrs == 0) {
        px_fail(c, e->status ? e->status : ERR_DNS, STATS_PROXY_ERROR,
                "resolving %s for SOCKS5: %s", c->env->host,
                e->errmsg[0] ? e->errmsg : err_str(ERR_DNS));
        return;
    }
    for (size_t i = 0; i < e->naddrs; i++) {
        if (netacl_check(c->env->acl, (const struct sockaddr *)&e->addrs[i], why, sizeof(why)) !=
            0) {
            px_fail(c, ERR_FORBIDDEN, STATS_PROXY_ERROR, "%.60s: %s", c->env->host, why);
            return;
        }
    }
    for (size_t i = 0; i < e->naddrs; i++) {
        if (e->addrs[i].ss_family == AF_INET) {
            pick = i;
            break;
        }
    }
    px_set_target(c, (const struct sockaddr *)&e->addrs[pick]);
    px_socks_greet(c);
}

static void on_px_dns(dns_waiter_t *w, dns_entry_t *e)
{
    conn_t *c = w->data;

    conn_incref(c);
    c->px->dns_pending = 0;
    if (c->state == CONN_CONNECTING && px_active(c))
        px_resolved(c, e);
    dns_entry_decref(e);
    conn_decref(c);
}

static void px_socks_start(conn_t *c)
{
    const conn_env_t *env = c->env;
    dns_entry_t *e = NULL;
    int rc;

    if (env->proxy->kind == PROXY_SOCKS5H && !env->host_is_ip) {
        px_socks_greet(c); /* the name goes to the proxy */
        return;
    }
    if (env->host_is_ip) {
        /* A literal is sent as an address, with either kind (as curl). */
        memset(c->px->target, 0, sizeof(c->px->target));
        c->px->target_v6 = strchr(env->host, ':') != NULL;
        if (c->px->target_v6 ? uv_inet_pton(AF_INET6, env->host, c->px->target) != 0
                             : uv_inet_pton(AF_INET, env->host, c->px->target + 12) != 0) {
            px_fail(c, ERR_PROXY, STATS_PROXY_ERROR, "bad address %s", env->host);
            return;
        }
        if (env->proxy->kind == PROXY_SOCKS5H) {
            px_socks_greet(c);
            return;
        }
    }
    if (env->dns == NULL) {
        px_fail(c, ERR_DNS, STATS_PROXY_ERROR, "no resolver for socks5://");
        return;
    }
    c->px->step = PX_RESOLVING;
    c->px->dnsw.cb = on_px_dns;
    c->px->dnsw.data = c;
    rc = dns_lookup(env->dns, env->host, env->port, &c->px->dnsw, &e);
    if (rc == DNS_PENDING) {
        c->px->dns_pending = 1;
        return;
    }
    if (rc < 0) {
        px_fail(c, rc, STATS_PROXY_ERROR, "resolving %s: %s", env->host, err_str(rc));
        return;
    }
    px_resolved(c, e);
    dns_entry_decref(e);
}

/* TCP to the proxy is up. */
static void px_start(conn_t *c)
{
    if (!c->env->tunnel) {
        /* Absolute-form requests need no handshake. */
        px_count(c, STATS_PROXY_OK);
        c->px->step = PX_DONE;
        become_active(c);
    } else if (c->env->proxy->kind == PROXY_HTTP) {
        px_http_connect(c);
    } else {
        px_socks_start(c);
    }
}

/* Copies the n bytes at s into out for a message: printable ASCII only. */
static void px_printable(const char *s, size_t n, char *out, size_t len)
{
    size_t i;
    for (i = 0; i < n && i + 1 < len; i++)
        out[i] = s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?';
    out[i] = '\0';
}

/* The CONNECT response head is complete (hlen bytes of px->in). */
static void px_http_head(conn_t *c, size_t hlen)
{
    const char *p = c->px->in.p, *eol = memchr(p, '\n', hlen);
    size_t llen = (size_t)(eol - p);
    char line[120], auth[300];
    int status;

    if (llen > 0 && p[llen - 1] == '\r')
        llen--;
    px_printable(p, llen, line, sizeof(line));
    px_authority(c, auth, sizeof(auth));
    if (llen < 12 || strncmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ' ||
        !isdigit((unsigned char)p[9]) || !isdigit((unsigned char)p[10]) ||
        !isdigit((unsigned char)p[11]) || (llen > 12 && p[12] != ' ')) {
        px_fail(c, ERR_PROXY, STATS_PROXY_ERROR, "malformed answer to CONNECT: \"%s\"", line);
        return;
    }
    status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    if (status == 407) {
        px_fail(c, ERR_PROXY, STATS_PROXY_AUTH, "proxy requires authentication%s (\"%s\")",
                c->env->proxy->user ? ": it refused the credentials" : "", line);
        return;
    }
    if (status == 401 && c->env->proxy->user) {
        /* Some proxies (tinyproxy 1.11) answer wrong credentials so. */
        px_fail(c, ERR_PROXY, STATS_PROXY_AUTH, "the proxy refused the credentials (\"%s\")", line);
        return;
    }
    if (status < 200 || status > 299) {
        px_fail(c, ERR_PROXY, STATS_PROXY_REFUSED, "CONNECT %s refused: \"%s\"", auth, line);
        return;
    }
    if (c->px->in.len > hlen) {
        px_fail(c, ERR_PROXY, STATS_PROXY_ERROR, "bytes after the answer to CONNECT");
        return;
    }
    px_done(c);
}

static const char *socks_reply_name(unsigned rep)
{
    static const char *const names[] = {"succeeded",
                                        "general SOCKS server failure",
                                        "connection not allowed by ruleset",
                                        "network unreachable",
                                        "host unreachable",
                                        "connection refused",
                                        "TTL expired",
                                        "command not supported",
                                        "address type not supported"};
    return rep < sizeof(names) / sizeof(names[0]) ? names[rep] : "unknown reply code";
}

/* Bytes a complete SOCKS answer of the current step needs, given what has
 * arrived (0: not known yet). */
static size_t px_socks_need(const conn_px_t *px)
{
    const unsigned char *in = (const unsigned char *)px->in.p;

    if (px->step != PX_SOCKS_REPLY)
        return 2;
    if (px->in.len < 5)
        return 5;
    switch (in[3]) {
    case 1:
        return 4 + 4 + 2;
    case 4:
        return 4 + 16 + 2;
    case 3:
        return 4 + 1 + (size_t)in[4] + 2;
    default:
        return 0;
    }
}

/* A complete SOCKS answer of n bytes is in px->in. */
static void px_socks_answer(conn_t *c, size_t n)
{
    const unsigned char *in = (const unsigned char *)c->px->in.p;
    int leftover = c->px->in.len > n;

    switch (c->px->step) {
    case PX_SOCKS_METHOD:
        if (in[0] != 5) {
            px_fail(c, ERR_PROXY, STATS_PROXY_ERROR, "not a SOCKS5 server (version %u)", in[0]);
        } else if (in[1] == 0xff) {
            px_fail(c, ERR_PROXY, STATS_PROXY_AUTH,
                    "the SOCKS5 server accepts none of our authentication methods (%s)",
                    c->env->proxy->user ? "none, user name and password" : "none");
        } else if (in[1] == 2 && c->env->proxy->user != NULL && !leftover) {
            strbuf_reset(&c->px->in);
            px_socks_auth(c);
        } else if (in[1] == 0 && !leftover) {
            strbuf_reset(&c->px->in);
            px_socks_request(c);
        } else {
            px_fail(c, ERR_PROXY, STATS_PROXY_ERROR, "unexpected SOCKS5 method choice %u", in[1]);
        }
        return;
    case PX_SOCKS_AUTH:
        if (in[1] != 0) {
            px_fail(c, ERR_PROXY, STATS_PROXY_AUTH,
                    "the SOCKS5 server refused the user name and password (status %u)", in[1]);
        } else if (leftover) {
            px_fail(c, ERR_PROXY, STATS_PROXY_ERROR, "bytes after the SOCKS5 answer");
        } else {
            strbuf_reset(&c->px->in);
            px_socks_request(c);
        }
        return;
    default:
        if (leftover)
            px_fail(c, ERR_PROXY, STATS_PROXY_ERROR, "bytes after the SOCKS5 reply");
        else
            px_done(c);
        return;
    }
}

/* A SOCKS reply's code is known from its second byte: an error is reported
 * at once (servers often close without sending the rest). */
static int px_socks_early(conn_t *c)
{
    const unsigned char *in = (const unsigned char *)c->px->in.p;
    char auth[300];

    if (c->px->step != PX_SOCKS_REPLY || c->px->in.len < 2)
        return 0;
    if (in[0] != 5) {
        px_fail(c, ERR_PROXY, STATS_PROXY_ERROR, "malformed SOCKS5 reply (version %u)", in[0]);
        return 1;
    }
    if (in[1] == 0)
        return 0;
    px_authority(c, auth, sizeof(auth));
    px_fail(c, ERR_PROXY, STATS_PROXY_REFUSED, "SOCKS5 connect to %s failed: reply 0x%02x (%s)",
            auth, in[1], socks_reply_name(in[1]));
    return 1;
}

/* Bytes from the proxy during the leg. */
static void px_input(conn_t *c, buf_t *b)
{
    conn_px_t *px = c->px;
    size_t need;
    const char *end;

    if (px->step != PX_HTTP_HEAD && px->step != PX_SOCKS_METHOD && px->step != PX_SOCKS_AUTH &&
        px->step != PX_SOCKS_REPLY) {
        px_fail(c, ERR_PROXY, STATS_PROXY_ERROR, "spoke before it was asked");
        return;
    }
    if (px->in.len + b->len > PX_MAX_ANSWER) {
        px_fail(c, ERR_PROXY, STATS_PROXY_ERROR, "answer longer than %d bytes", PX_MAX_ANSWER);
        return;
    }
    if (strbuf_append(&px->in, b->data, b->len) != 0) {
        px_fail(c, ERR_NO_MEMORY, STATS_PROXY_ERROR, "no memory for the proxy's answer");
        return;
    }
    if (px->step == PX_HTTP_HEAD) {
        end = strstr(px->in.p, "\r\n\r\n");
        if (end != NULL)
            px_http_head(c, (size_t)(end + 4 - px->in.p));
        else if ((end = strstr(px->in.p, "\n\n")) != NULL)
            px_http_head(c, (size_t)(end + 2 - px->in.p));
        else if (memchr(px->in.p, '\0', px->in.len) != NULL)
            px_fail(c, ERR_PROXY, STATS_PROXY_ERROR, "NUL byte in the answer to CONNECT");
        return;
    }
    if (px_socks_early(c))
        return;
    need = px_socks_need(px);
    if (need == 0) {
        px_fail(c, ERR_PROXY, STATS_PROXY_ERROR, "malformed SOCKS5 reply (address type %u)",
                (unsigned char)px->in.p[3]);
        return;
    }
    if (px->in.len >= need)
        px_socks_answer(c, need);
}

/* The proxy closed (or reset) the connection during the leg. */
static void px_ended(conn_t *c, ssize_t n)
{
    px_fail(c, n == UV_ENOBUFS ? ERR_NO_MEMORY : ERR_PROXY, STATS_PROXY_ERROR,
            "%s during the %s handshake",
            n == UV_EOF ? "the proxy closed the connection" : uv_strerror((int)n),
            c->env->proxy->kind == PROXY_HTTP ? "CONNECT" : "SOCKS5");
}

const char *conn_hop_host(const conn_t *c, uint16_t *port)
{
    const conn_env_t *e = c->env;
    if (e->proxy != NULL) {
        *port = e->proxy->port;
        return e->proxy->host;
    }
    *port = e->port;
    return e->host;
}

const char *conn_proxy_shown(const conn_t *c)
{
    return c->env != NULL && c->env->proxy != NULL ? c->env->proxy->shown : NULL;
}

static void on_connect(uv_connect_t *req, int status)
{
    conn_t *c = req->data;

    if (c->state == CONN_CLOSING) {
        conn_decref(c);
        return;
    }
    if (status != 0) {
        c->connect_err = status;
        if (c->addr_index < c->dns->naddrs)
            uv_close((uv_handle_t *)&c->tcp, on_reopen_close);
        else
            connect_failed(c);
        conn_decref(c);
        return;
    }
    dns_entry_decref(c->dns);
    c->dns = NULL;
    uv_tcp_nodelay(&c->tcp, 1);
    status = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (status != 0) {
        c->connect_err = status;
        connect_failed(c);
        conn_decref(c);
        return;
    }
    c->reading = 1;
    if (c->px != NULL)
        px_start(c);
    else if (c->env->tls_config != NULL)
        start_tls(c);
    else
        become_active(c);
    conn_decref(c);
}

int conn_connect(conn_t *c, dns_entry_t *e)
{
    assert(c->state == CONN_CONNECTING && c->dns == NULL);
    if (e->naddrs == 0)
        return ERR_DNS;
    if (c->env->proxy != NULL && c->px == NULL) {
        c->px = mem_calloc(1, sizeof(*c->px));
        if (c->px == NULL)
            return ERR_NO_MEMORY;
    }
    dns_entry_incref(e);
    c->dns = e;
    c->addr_index = 0;
    c->connect_err = 0;
    conn_incref(c); /* try_next_address() may report synchronously */
    try_next_address(c);
    conn_decref(c);
    return 0;
}

/* ---- sending --------------------------------------------------------------- */

/* A TLS record on its way to the socket: mbedTLS hands us its bytes and
 * expects them gone when the send callback returns, so they are copied. */
typedef struct tls_write {
    uv_write_t req;
    conn_t *conn; /* owned reference */
    char data[];
} tls_write_t;

/* Every write of the exchange has completed (status 0), or one failed. */
static void writes_done(conn_t *c, int status)
{
    if (c->return_on_write) {
        /* The response came first; now the connection may go back. */
        c->return_on_write = 0;
        if (status == 0 && c->state == CONN_ACTIVE) {
            c->env->hooks->on_reusable(c); /* takes the reference response_done() took */
        } else {
            conn_close(c, STATS_CLOSE_ERROR);
            conn_decref(c);
        }
    } else if (c->state == CONN_ACTIVE && c->user != NULL) {
        if (status == 0) {
            CALL_USER(c, c->ops->on_request_sent(c->user));
        } else {
            char msg[128];
            snprintf(msg, sizeof(msg), "sending the request: %s", uv_strerror(status));
            /* Nothing was read yet, so this is an empty reply: a job on a
             * stale reused connection may retry it. */
            conn_fail(c, STATS_CLOSE_ERROR, c->resp_bytes ? ERR_TRUNCATED : ERR_EMPTY_REPLY, msg);
        }
    }
}

static void write_finished(conn_t *c, int status)
{
    assert(c->writes_pending > 0);
    c->writes_pending--;
    if (status != 0 && c->write_status == 0)
        c->write_status = status;
    if (c->writes_pending == 0) {
        status = c->write_status;
        c->write_status = 0;
        writes_done(c, status);
    }
}

static void on_write(uv_write_t *req, int status)
{
    conn_t *c = req->data;
    mem_free(c->head_copy);
    c->head_copy = NULL;
    write_finished(c, status);
    conn_decref(c);
}

static void on_tls_write(uv_write_t *req, int status)
{
    tls_write_t *w = req->data;
    conn_t *c = w->conn;

    stats_obj_destroyed(c->stats, STATS_OBJ_REQUEST);
    mem_free(w);
    write_finished(c, status);
    conn_decref(c);
}

/* Writes what the socket takes at once, when nothing is queued before it
 * (uv_try_write()): a write that completes here needs no write request, no
 * allocation and no epoll_ctl (libuv re-arms the descriptor each time a
 * queued write drains). Returns the bytes written; 0 when none, on an error
 * too: the queued write then meets it and reports it through its callback,
 * as before (a stale pooled connection's EPIPE is retried there). */
static size_t try_write(conn_t *c, const uv_buf_t *bufs, unsigned nbufs)
{
    int n = uv_try_write((uv_stream_t *)&c->tcp, bufs, nbufs);
    return n > 0 ? (size_t)n : 0;
}

/* mbedTLS's send callback. A record is tried at once (try_write()): most
 * fit the socket buffer, and then need no copy, no write request and no
 * epoll_ctl. What the socket does not take is copied and queued, and every
 * record after it queues behind it (uv_try_write() refuses while anything
 * is queued), so records stay in order. mbedTLS is always told that the
 * whole record went: it never sees a partial send or WANT_WRITE, which it
 * would hand back from a handshake step that then waits for input forever.
 * An error is not reported here either: the queued write meets it and
 * reports it through on_tls_write(), as a plain request's does. */
static int tls_send(void *ctx, const unsigned char *buf, size_t len)
{
    conn_t *c = ctx;
    tls_write_t *w;
    uv_buf_t b;
    size_t done;
    int rc;

    if (!c->handle_open || uv_is_closing((uv_handle_t *)&c->tcp))
        return ERR_IO;
    b = uv_buf_init((char *)buf, (unsigned)len);
    done = try_write(c, &b, 1);
    if (done == len)
        return 0;
    buf += done;
    len -= done;
    w = mem_alloc(sizeof(*w) + len);
    if (w == NULL)
        return ERR_NO_MEMORY;
    memcpy(w->data, buf, len);
    w->req.data = w;
    w->conn = c;
    b = uv_buf_init(w->data, (unsigned)len);
    rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_tls_write);
    if (rc != 0) {
        mem_free(w);
        return err_from_uv(rc);
    }
    conn_incref(c);
    c->writes_pending++;
    stats_obj_created(c->stats, STATS_OBJ_REQUEST);
    return 0;
}

/* The most pieces a request may come in (conn_send()). */
#define CONN_MAX_SEND_BUFS 8

/* Copies the unsent part of the request head (*b, which may lie on the
 * caller's stack) into c->head_copy and points *b at it; freed when the
 * write completes. Returns 0 or ERR_NO_MEMORY. */
static int copy_head(conn_t *c, uv_buf_t *b)
{
    char *p = mem_alloc(b->len > 0 ? b->len : 1);

    if (p == NULL)
        return ERR_NO_MEMORY;
    memcpy(p, b->base, b->len);
    c->head_copy = p;
    b->base = p;
    return 0;
}

int conn_send(conn_t *c, const uv_buf_t *bufs, unsigned nbufs, int head)
{
    uv_buf_t rest[CONN_MAX_SEND_BUFS];
    size_t done;
    unsigned k = 0;
    int rc, head_sent;

    assert(c->state == CONN_ACTIVE &&
           c->user != NULL); /* A plain connection reuses its one write request; TLS records queue
                              * in order behind the handshake's last flight. */
    /* The proxy leg's writes are copies of their own (as TLS records): a
     * tunnel's last one may still be pending, and write_req is free. */
    assert(c->tls != NULL || c->px != NULL || c->writes_pending == 0);
    llhttp_reset(&c->parser);
    c->requests++;
    c->head_request = head;
    c->resp_bytes = 0;
    c->final_status = 0;
    c->callback_err = 0;
    c->message_done = 0;
    c->must_close = 0;
    c->interim = 0;
    rx_reset(c);
    if (c->tls) {
        /* Hold one pending count across the records so the exchange is not
         * seen as sent before the last of them is queued. */
        c->writes_pending++;
        for (unsigned i = 0; i < nbufs; i++) {
            rc = tls_conn_write(c->tls, bufs[i].base, bufs[i].len);
            if (rc != 0) {
                c->writes_pending--;
                return rc;
            }
        }
        write_finished(c, 0);
        return 0;
    }
    /* Most requests fit the socket buffer: written here, they are sent
     * before this returns, as a TLS connection's are; what is left of a
     * partial write is queued. */
    if (nbufs == 0 || nbufs > CONN_MAX_SEND_BUFS)
        return ERR_INVALID_REQUEST;
    done = try_write(c, bufs, nbufs);
    head_sent = done >= bufs[0].len;
    for (unsigned i = 0; i < nbufs; i++) {
        if (done >= bufs[i].len) {
            done -= bufs[i].len;
            continue;
        }
        rest[k++] = uv_buf_init(bufs[i].base + done, (unsigned)(bufs[i].len - done));
        done = 0;
    }
    if (k == 0) {
        c->writes_pending++;
        write_finished(c, 0);
        return 0;
    }
    /* The head may lie on the caller's stack: what is left of it is copied
     * for the queued write (a request in flight has the one write_req). */
    if (!head_sent && (rc = copy_head(c, &rest[0])) != 0)
        return rc;
    conn_incref(c);
    c->write_req.data = c;
    rc = uv_write(&c->write_req, (uv_stream_t *)&c->tcp, rest, k, on_write);
    if (rc != 0) {
        mem_free(c->head_copy);
        c->head_copy = NULL;
        conn_decref(c);
        return err_from_uv(rc);
    }
    c->writes_pending++;
    return 0;
}

void conn_pause(conn_t *c)
{
    if (c->reading && c->state == CONN_ACTIVE) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = 0;
    }
}

void conn_resume(conn_t *c)
{
    if (!c->reading && c->state == CONN_ACTIVE) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
            c->reading = 1;
    }
}

/* ---- receiving ------------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *out)
{
    conn_t *c = h->data;
    (void)hint;
    if (c->rbuf == NULL && c->env != NULL)
        c->rbuf = c->read_large ? buf_get_large(c->env->bufs) : buf_get(c->env->bufs);
    if (c->rbuf == NULL) {
        /* libuv reports UV_ENOBUFS to on_read. */
        out->base = NULL;
        out->len = 0;
        return;
    }
    out->base = c->rbuf->data;
    out->len = c->rbuf->size;
}

/* The final response has been parsed in full. */
static void response_done(conn_t *c, int reusable)
{
    const conn_user_ops_t *ops;
    void *u = detach_keep(c, &ops);

    /* Reading may have been paused (sink backpressure, a byte rate) as the
     * response ended; an idle connection must read, to see it close. */
    if (reusable && !c->reading)
        conn_resume(c);
    if (reusable && !c->reading)
        reusable = 0;
    if (reusable) {
        conn_incref(c); /* the pool's reference */
        /* libuv reports a finished write on a later loop turn, and the
         * response may beat it; the write request must be free before
         * anyone can send on the connection again. */
        if (c->writes_pending)
            c->return_on_write = 1;
        else
            c->env->hooks->on_reusable(c);
    } else {
        conn_close(c, STATS_CLOSE_NOT_REUSABLE);
    }
    CALL_USER(c, ops->on_complete(u));
    ops->decref(u);
}

static int rx_step(parse_ctx_t *ctx, buf_t *b, const char **pp, const char *end);

static void parse(conn_t *c, buf_t *b)
{
    parse_ctx_t ctx;
    const char *p = b->data, *end = b->data + b->len;
    int leftover;

    ctx_init(&ctx, c, NULL);
    c->parser.data = &ctx;
    while (p < end && !c->message_done && rx_step(&ctx, b, &p, end) == 0)
        ;
    c->parser.data = NULL;
    if (c->state != CONN_ACTIVE || c->user == NULL)
        return;
    if (c->callback_err) {
        conn_fail(c, STATS_CLOSE_ERROR, c->callback_err, ctx.errmsg);
        return;
    }
    if (!c->message_done)
        return; /* the response goes on in the next read */
    /* We never pipeline, so bytes after the response mean the server and we
     * disagree about framing: do not trust the connection. */
    leftover = p != end;
    if (leftover && (c->final_status == 204 || c->final_status == 304)) {
        conn_fail(c, STATS_CLOSE_ERROR, ERR_PROTOCOL, "bytes after a 204 or 304 response");
        return;
    }
    response_done(c, !leftover && !c->must_close && llhttp_should_keep_alive(&c->parser));
}

static void read_ended(conn_t *c, ssize_t n)
{
    char msg[160];

    if (c->state == CONN_IDLE) {
        conn_close(c, STATS_CLOSE_PEER_CLOSED);
        return;
    }
    if (c->state == CONN_CONNECTING && px_active(c)) {
        px_ended(c, n);
        return;
    }
    if (c->state == CONN_CONNECTING) {
        /* ENOBUFS: on_alloc found no read buffer, an allocation failed. */
        int err = n == UV_ENOBUFS ? ERR_NO_MEMORY : ERR_TLS_HANDSHAKE;
        snprintf(msg, sizeof(msg), "TLS handshake with %s: %s", c->env->host,
                 n == UV_EOF ? "the server closed the connection" : uv_strerror((int)n));
        setup_failed(c, err, msg);
        return;
    }
    if (c->user == NULL) {
        conn_close(c, STATS_CLOSE_ERROR);
        return;
    }
    if (n == UV_ENOBUFS) {
        conn_fail(c, STATS_CLOSE_ERROR, ERR_NO_MEMORY, "no read buffer available");
        return;
    }
    if (c->resp_bytes == 0) {
        snprintf(msg, sizeof(msg), "%s before any response byte",
                 n == UV_EOF ? "connection closed" : uv_strerror((int)n));
        conn_fail(c, STATS_CLOSE_ERROR, ERR_EMPTY_REPLY, msg);
        return;
    }
    if (n == UV_EOF) {
        /* A response without Content-Length or chunking ends with the
         * connection: llhttp_finish() completes it, or says it is cut short. */
        parse_ctx_t ctx;
        llhttp_errno_t rc;

        ctx_init(&ctx, c, "response");
        c->parser.data = &ctx;
        rc = llhttp_finish(&c->parser);
        c->parser.data = NULL;
        if (c->state != CONN_ACTIVE || c->user == NULL)
            return;
        if (c->callback_err) {
            conn_fail(c, STATS_CLOSE_ERROR, c->callback_err, ctx.errmsg);
            return;
        }
        if (c->message_done && (rc == HPE_OK || rc == HPE_PAUSED)) {
            response_done(c, 0);
            return;
        }
        conn_fail(c, STATS_CLOSE_ERROR, ERR_TRUNCATED,
                  "connection closed before the response was complete");
        return;
    }
    snprintf(msg, sizeof(msg), "%s in the middle of the response", uv_strerror((int)n));
    conn_fail(c, STATS_CLOSE_ERROR, ERR_TRUNCATED, msg);
}

/* Response bytes, decrypted if need be. */
static void plain_input(conn_t *c, buf_t *b)
{
    if (c->state == CONN_IDLE || c->user == NULL) {
        /* An idle connection must stay silent; anything it says now
         * (often a 408 before closing) makes it unusable. */
        conn_close(c, STATS_CLOSE_PEER_CLOSED);
        return;
    }
    c->resp_bytes += b->len;
    CALL_USER(c, c->ops->on_read(c->user));
    if (c->state == CONN_ACTIVE && c->user != NULL)
        parse(c, b);
}

/* Ciphertext: advance the handshake, then decrypt record by record into
 * buffers of our own and parse those. */
static void tls_input(conn_t *c, buf_t *b)
{
    tls_conn_feed(c->tls, b->data, b->len);
    if (c->state == CONN_CONNECTING && advance_handshake(c) != 0)
        return;
    while (c->state == CONN_ACTIVE || c->state == CONN_IDLE) {
        buf_t *plain = buf_get(c->env->bufs);
        int status = 0, n;

        if (plain == NULL) {
            conn_fail(c, STATS_CLOSE_ERROR, ERR_NO_MEMORY, "no read buffer available");
            return;
        }
        n = tls_conn_read(c->tls, plain->data, plain->pool->size, &status);
        if (n > 0) {
            plain->len = (size_t)n;
            plain_input(c, plain);
            buf_decref(plain);
            continue;
        }
        buf_decref(plain);
        if (n == 0 && status == TLS_AGAIN)
            return;
        if (n == 0) {
            /* close_notify: the same as a clean end of the stream. */
            read_ended(c, UV_EOF);
        } else if (c->state == CONN_IDLE || c->user == NULL) {
            conn_close(c, STATS_CLOSE_PEER_CLOSED);
        } else {
            conn_fail(c, STATS_CLOSE_ERROR, n, c->tls->errmsg);
        }
        return;
    }
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *ub)
{
    conn_t *c = s->data;
    buf_t *b = c->rbuf;

    (void)ub;
    c->rbuf = NULL;
    conn_incref(c);
    if (c->state == CONN_CLOSING) {
        /* nothing: the connection is going away */
    } else if (n > 0) {
        b->len = (size_t)n;
        c->stats->received_bytes += (uint64_t)n;
        if (c->state == CONN_CONNECTING && px_active(c))
            px_input(c, b);
        else if (c->tls)
            tls_input(c, b);
        else
            plain_input(c, b);
    } else if (n < 0) {
        read_ended(c, n);
    }
    /* A read that filled its buffer in the middle of a response found more
     * waiting than it could take: a body streams in, and the next read takes
     * a large buffer (a quarter of the syscalls for the same bytes). A read
     * that did not fill its buffer, the response's end, or a pause (sink
     * backpressure, a byte rate, whose budget counts standard reads) goes
     * back to standard buffers; a read that found nothing (n == 0) changes
     * nothing. */
    if (n != 0)
        c->read_large = n > 0 && (size_t)n == b->size && c->reading && c->state == CONN_ACTIVE &&
                        c->user != NULL;
    if (b)
        buf_decref(b);
    conn_decref(c);
}

/* ---- llhttp callbacks -------------------------------------------------------
 * They run inside llhttp_execute(); an error is recorded in callback_err and
 * the parse() caller acts on it once the parser has returned. */

static conn_t *ctx_conn(llhttp_t *p)
{
    return ((parse_ctx_t *)p->data)->conn;
}

static int fail_cb(llhttp_t *p, int err, const char *msg)
{
    parse_ctx_t *ctx = p->data;
    ctx->conn->callback_err = err;
    ctx->errmsg = msg;
    return -1;
}

/* Where the user writes why it refuses the response (cleared once per
 * parse: a callback writes it only when it refuses). */
static conn_why_t *why_of(llhttp_t *p)
{
    return &((parse_ctx_t *)p->data)->why;
}

/* A user callback refused the response: its own reason, else fallback (or
 * the error's message when that is NULL). */
static int fail_user(llhttp_t *p, int err, const char *fallback)
{
    parse_ctx_t *ctx = p->data;
    return fail_cb(p, err, ctx->why.msg[0] ? ctx->why.msg : fallback);
}

static int on_message_begin(llhttp_t *p)
{
    conn_t *c = ctx_conn(p);
    c->hdr_count = 0;
    c->hdr_bytes = 0;
    c->final_status = 0;
    return 0;
}

static int count_header_bytes(llhttp_t *p, size_t len)
{
    conn_t *c = ctx_conn(p);
    c->hdr_bytes += len;
    if (c->hdr_bytes > CONN_MAX_HEADER_BYTES)
        return fail_cb(p, ERR_HEADERS_TOO_LARGE, "response headers exceed 64 KiB");
    return 0;
}

static int on_status(llhttp_t *p, const char *at, size_t len)
{
    (void)at;
    return count_header_bytes(p, len);
}

/* llhttp sees only the header fields it interprets (flush_held()) and the
 * trailer fields; the user hears of the head's fields from the normaliser,
 * which has already split and checked them. These callbacks only keep
 * llhttp's own count of what it saw bounded. */
static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    (void)at;
    return count_header_bytes(p, len);
}

static int on_header_field_complete(llhttp_t *p)
{
    conn_t *c = ctx_conn(p);
    if (++c->hdr_count > CONN_MAX_HEADERS)
        return fail_cb(p, ERR_HEADERS_TOO_LARGE, "more than 256 response headers");
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    (void)at;
    return count_header_bytes(p, len);
}

static int on_header_value_complete(llhttp_t *p)
{
    (void)p;
    return 0;
}

/* 1 when the response has no body whatever its fields say (RFC 9112 6.3). */
static int bodiless(const conn_t *c, int status)
{
    return c->head_request || status < 200 || status == 204 || status == 304;
}

static int on_headers_complete(llhttp_t *p)
{
    conn_t *c = ctx_conn(p);
    int status = llhttp_get_status_code(p);
    int64_t length = -1;
    int rc;

    if (status < 100 || status > 999)
        return fail_cb(p, ERR_PROTOCOL, "the status code is not three digits");
    if (status == 101)
        return fail_cb(p, ERR_PROTOCOL, "unexpected 101 Switching Protocols");
    /* 1 tells llhttp that no body follows: the normaliser gave it no framing
     * field for such a response, and this makes sure of it. */
    if (status < 200)
        return 1; /* an interim response: the final one follows */
    if (status == 407 && c->env->proxy != NULL && !c->env->tunnel) {
        /* Only a proxy says 407: the request never reached the origin. */
        parse_ctx_t *ctx = p->data;
        snprintf(ctx->msg, sizeof(ctx->msg), "proxy %s: proxy requires authentication%s (407)",
                 c->env->proxy->shown, c->env->proxy->user ? ": it refused the credentials" : "");
        return fail_cb(p, ERR_PROXY, ctx->msg);
    }
    c->final_status = status;
    if (c->framing == FRAMING_LENGTH)
        length = (int64_t)p->content_length;
    /* The transfer codings under the chunked framing (or framed by the
     * close) are the job's to undo, with its decoders. */
    CALL_USER(c, rc = c->ops->on_head(c->user, status, length,
                                      c->te.len > 0 && !bodiless(c, status) ? c->te.p : NULL,
                                      why_of(p)));
    if (rc)
        return fail_user(p, rc, NULL);
    return bodiless(c, status) ? 1 : 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    parse_ctx_t *ctx = p->data;
    int rc;

    if (ctx->conn->final_status == 0)
        return 0; /* cannot happen: interim responses have no body */
    CALL_USER(ctx->conn,
              rc = ctx->conn->ops->on_body(ctx->conn->user, ctx->buf, at, len, why_of(p)));
    return rc ? fail_user(p, rc, NULL) : 0;
}

static int on_message_complete(llhttp_t *p)
{
    conn_t *c = ctx_conn(p);
    if (c->final_status == 0)
        return 0; /* an interim 1xx response: keep parsing */
    c->message_done = 1;
    /* Stop right after the response, so parse() can see leftover bytes. */
    return HPE_PAUSED;
}

/* ---- normalising ------------------------------------------------------------
 * fetchd enforces its HTTP policy (DESIGN.md, "HTTP conformance policy")
 * here, before llhttp sees a byte: llhttp 8.1 has no switch for a bare LF,
 * and 8.1 and 9.x differ in leniency. The head, the chunk-size lines and the
 * trailer section are taken line by line: a bare LF ends a line like CRLF, a
 * bare CR is refused, an obs-fold is unfolded to one SP, the framing fields
 * are interpreted here and handed on in one canonical form (or not at all for
 * a response that has no body whatever they say), and the fields of interim
 * responses are dropped. llhttp thus sees only CRLF-terminated, unfolded,
 * unambiguous heads. Body bytes are never touched: they go to llhttp straight
 * from the read buffer. */

static int is_ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

static int clip(size_t n)
{
    return n > 40 ? 40 : (int)n;
}

/* Fails the response with err and a formatted reason; returns -1. */
static int rx_fail(parse_ctx_t *ctx, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int rx_fail(parse_ctx_t *ctx, int err, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(ctx->msg, sizeof(ctx->msg), fmt, ap);
    va_end(ap);
    ctx->conn->callback_err = err;
    ctx->errmsg = ctx->msg;
    return -1;
}

/* Counts a tolerated deviation, once per response head. */
static void lenient(conn_t *c, stats_lenient_t kind)
{
    if (!(c->lenient_seen & (1u << kind))) {
        c->lenient_seen |= 1u << kind;
        c->stats->lenient[kind]++;
    }
}

/* A new response head begins (after a request, or after a 1xx). */
static void rx_reset(conn_t *c)
{
    c->rx_state = RX_HEAD;
    strbuf_reset(&c->line);
    strbuf_reset(&c->held);
    strbuf_reset(&c->te);
    strbuf_reset(&c->location);
    c->head_lines = 0;
    c->head_raw = 0;
    c->cl_fields = 0;
    c->cl_value = 0;
    c->location_fields = 0;
    c->framing = FRAMING_NONE;
    c->chunk_left = 0;
    c->lenient_seen = 0;
}

/* Hands n bytes to llhttp; b is the read buffer they lie in (NULL for bytes
 * of our own). Sets *used to the bytes llhttp took: fewer than n only when
 * the final response ended in them. Returns 0, or -1 with callback_err set. */
static int feed(parse_ctx_t *ctx, buf_t *b, const char *data, size_t n, size_t *used)
{
    conn_t *c = ctx->conn;
    llhttp_errno_t rc;

    ctx->buf = b;
    rc = llhttp_execute(&c->parser, data, n);
    ctx->buf = NULL;
    *used = n;
    if (rc == HPE_OK)
        return 0;
    if (rc == HPE_PAUSED && c->message_done) {
        *used = (size_t)(llhttp_get_error_pos(&c->parser) - data);
        return 0;
    }
    if (c->callback_err)
        return -1;
    return rx_fail(ctx, ERR_PROTOCOL, "malformed %s: %s (%s)", ctx->what,
                   llhttp_get_error_reason(&c->parser), llhttp_errno_name(rc));
}

/* Hands a normalised line (the n bytes at the start of sb) and CRLF to llhttp. */
static int feed_line(parse_ctx_t *ctx, strbuf_t *sb, size_t n)
{
    size_t used;

    sb->len = n; /* drops the received terminator; CRLF replaces it */
    if (strbuf_put(sb, "\r\n", 2) != 0)
        return rx_fail(ctx, ERR_NO_MEMORY, "no memory for a response line");
    return feed(ctx, NULL, sb->p, sb->len, &used);
}

static int feed_text(parse_ctx_t *ctx, const char *text)
{
    size_t used;
    return feed(ctx, NULL, text, strlen(text), &used);
}

/* The header fields the normaliser or llhttp interpret; the name is
 * classified once per field line. */
typedef enum field_kind {
    FIELD_OTHER,             /* the user's alone */
    FIELD_CONTENT_LENGTH,    /* interpreted here, given to llhttp in one canonical form */
    FIELD_TRANSFER_ENCODING, /* likewise */
    FIELD_LOCATION,          /* checked here for repeats, then the user's */
    FIELD_CONNECTION         /* Connection, Proxy-Connection, Upgrade: llhttp reads them too */
} field_kind_t;

/* 1 when the n bytes at name are want (lowercase, n bytes), ignoring case. */
static int name_eq(const char *name, const char *want, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((name[i] | 0x20) != want[i])
            return 0;
    return 1;
}

/* name is a token (checked before): letters compare with | 0x20, and the
 * other tchars of the names wanted ('-') are unchanged by it. */
static field_kind_t field_kind(const char *name, size_t n)
{
    switch (n) {
    case 7:
        return name_eq(name, "upgrade", 7) ? FIELD_CONNECTION : FIELD_OTHER;
    case 8:
        return name_eq(name, "location", 8) ? FIELD_LOCATION : FIELD_OTHER;
    case 10:
        return name_eq(name, "connection", 10) ? FIELD_CONNECTION : FIELD_OTHER;
    case 14:
        return name_eq(name, "content-length", 14) ? FIELD_CONTENT_LENGTH : FIELD_OTHER;
    case 16:
        return name_eq(name, "proxy-connection", 16) ? FIELD_CONNECTION : FIELD_OTHER;
    case 17:
        return name_eq(name, "transfer-encoding", 17) ? FIELD_TRANSFER_ENCODING : FIELD_OTHER;
    default:
        return FIELD_OTHER;
    }
}

/* A Content-Length field of a response that has a body: one value, however
 * often it is repeated (RFC 9110 8.6), or the response is refused. */
static int content_length_field(parse_ctx_t *ctx, const char *v, size_t vlen)
{
    conn_t *c = ctx->conn;
    uint64_t value = 0;
    int list;

    if (http_parse_content_length(v, vlen, &value, &list) != 0)
        return rx_fail(ctx, ERR_PROTOCOL, "invalid Content-Length '%.*s'", clip(vlen), v);
    if (c->cl_fields++ > 0) {
        if (value != c->cl_value)
            return rx_fail(ctx, ERR_PROTOCOL,
                           "two different Content-Length values (%" PRIu64 " and %" PRIu64 ")",
                           c->cl_value, value);
        list = 1;
    }
    if (list)
        lenient(c, STATS_LENIENT_REPEATED_CONTENT_LENGTH);
    c->cl_value = value;
    return 0;
}

/* A Location field: a repeated identical one is dropped, a differing one is
 * as ambiguous as two Content-Lengths. Returns 1 to forward the field. */
static int location_field(parse_ctx_t *ctx, const char *v, size_t vlen)
{
    conn_t *c = ctx->conn;

    if (c->location_fields++ == 0) {
        if (strbuf_append(&c->location, v, vlen) != 0)
            return rx_fail(ctx, ERR_NO_MEMORY, "no memory for a response header");
        return 1;
    }
    if (c->location.len != vlen || (vlen > 0 && memcmp(c->location.p, v, vlen) != 0))
        return rx_fail(ctx, ERR_PROTOCOL, "two different Location fields");
    lenient(c, STATS_LENIENT_REPEATED_LOCATION);
    return 0;
}

/* What the head's own field means here: 1 forward it (to the user, and to
 * llhttp when llhttp reads it), 0 drop it (interpreted here, or not to be
 * interpreted at all), -1 refuse. */
static int head_field(parse_ctx_t *ctx, field_kind_t kind, const char *v, size_t vlen)
{
    conn_t *c = ctx->conn;
    int status = llhttp_get_status_code(&c->parser);
    int cl = kind == FIELD_CONTENT_LENGTH;
    int te = kind == FIELD_TRANSFER_ENCODING;

    if (status < 200)
        return 0; /* fields of an interim response never reach the final one */
    if ((cl || te) && bodiless(c, status)) {
        /* RFC 9112 6.3 (1): no content whatever the fields say. Counted as
         * a deviation on a 204, and for Transfer-Encoding on a 304 (which may
         * carry the Content-Length a 200 would have had); framing fields on
         * a HEAD response are normal. */
        if (status != 304 ? status == 204 : te)
            lenient(c, STATS_LENIENT_FRAMING_ON_BODILESS);
        return 0;
    }
    if (cl)
        return content_length_field(ctx, v, vlen);
    if (te) {
        if ((c->te.len > 0 && strbuf_append(&c->te, ", ", 2) != 0) ||
            strbuf_append(&c->te, v, vlen) != 0)
            return rx_fail(ctx, ERR_NO_MEMORY, "no memory for a response header");
        c->framing = FRAMING_CHUNKED; /* seen, even if empty; decide_framing() checks it */
        return 0;
    }
    if (kind == FIELD_LOCATION)
        return location_field(ctx, v, vlen);
    return 1;
}

/* Hands a forwarded field of the head to the user: the name, and the value
 * from its first non-OWS byte to the end of the line (trailing OWS kept, as
 * llhttp reported it when it carried every field). */
static int user_field(parse_ctx_t *ctx, const char *name, size_t nlen, const char *v, size_t vlen)
{
    conn_t *c = ctx->conn;
    int rc;

    CALL_USER(c, rc = c->ops->on_header(c->user, name, nlen, v, vlen, &ctx->why));
    if (rc == 0)
        return 0;
    c->callback_err = rc;
    ctx->errmsg = ctx->why.msg[0] ? ctx->why.msg : "response header refused";
    return -1;
}

/* Checks the held field line and hands it to llhttp (or drops it). */
static int flush_held(parse_ctx_t *ctx, int trailer)
{
    conn_t *c = ctx->conn;
    const char *line = c->held.p, *colon, *v;
    const char *kind = trailer ? "trailer" : "header";
    size_t nlen, vlen, vraw;
    field_kind_t fk;
    int rc;

    if (c->held.len == 0)
        return 0;
    colon = memchr(line, ':', c->held.len);
    if (colon == NULL)
        return rx_fail(ctx, ERR_PROTOCOL, "%s line without a colon: '%.*s'", kind,
                       clip(c->held.len), line);
    nlen = (size_t)(colon - line);
    if (nlen > 0 && is_ows(line[nlen - 1]))
        return rx_fail(ctx, ERR_PROTOCOL, "whitespace between a %s field name and its colon", kind);
    if (!http_is_token(line, nlen))
        return rx_fail(ctx, ERR_PROTOCOL, "invalid %s field name '%.*s'", kind, clip(nlen), line);
    v = colon + 1;
    vlen = c->held.len - nlen - 1;
    while (vlen > 0 && is_ows(*v))
        v++, vlen--;
    vraw = vlen;
    while (vlen > 0 && is_ows(v[vlen - 1]))
        vlen--;
    if (!http_is_field_value(v, vlen))
        return rx_fail(ctx, ERR_PROTOCOL, "control character in the value of %s field '%.*s'", kind,
                       clip(nlen), line);
    fk = field_kind(line, nlen);
    if (trailer) {
        /* Framing fields in trailers mean nothing (RFC 9110 6.5.1); the
         * others are checked by llhttp and dropped: none of them may change
         * what the head said. */
        rc = fk != FIELD_CONTENT_LENGTH && fk != FIELD_TRANSFER_ENCODING;
    } else {
        rc = head_field(ctx, fk, v, vlen);
        /* llhttp is given only the fields it reads itself (keep-alive and
         * upgrade); the user hears of every forwarded one from here. */
        if (rc > 0)
            rc = user_field(ctx, line, nlen, v, vraw) != 0 ? -1 : fk == FIELD_CONNECTION;
    }
    if (rc > 0) {
        ctx->what = trailer ? "trailer line" : "header line";
        rc = feed_line(ctx, &c->held, c->held.len);
    }
    strbuf_reset(&c->held);
    return rc < 0 ? -1 : 0;
}

#define TE_CHUNKED "Transfer-Encoding: chunked\r\n"
#define CL_NAME    "Content-Length: "

/* The end of a final response's header section: decides the framing and
 * gives llhttp the one field that says it. */
static int decide_framing(parse_ctx_t *ctx, int status, char *field, size_t size)
{
    conn_t *c = ctx->conn;
    char why[96];
    int chunked;

    field[0] = '\0';
    if (bodiless(c, status)) {
        c->framing = FRAMING_NONE;
        return 0;
    }
    if (c->te.len > 0 || c->framing == FRAMING_CHUNKED) {
        if (c->cl_fields)
            return rx_fail(ctx, ERR_PROTOCOL, "both Content-Length and Transfer-Encoding");
        if (http_check_transfer_codings(c->te.p ? c->te.p : "", c->te.len, &chunked, why,
                                        sizeof(why)) != 0)
            return rx_fail(ctx, ERR_PROTOCOL, "%s", why);
        /* Without chunked last, a response's body ends with the connection
         * (RFC 9112 6.3 (4)). */
        c->framing = chunked ? FRAMING_CHUNKED : FRAMING_EOF;
        if (chunked && size > sizeof(TE_CHUNKED))
            memcpy(field, TE_CHUNKED, sizeof(TE_CHUNKED));
        return 0;
    }
    if (c->cl_fields) {
        c->framing = FRAMING_LENGTH;
        if (size > sizeof(CL_NAME) + FMT_U64_MAX + 2) {
            size_t n = sizeof(CL_NAME) - 1;
            memcpy(field, CL_NAME, n);
            n += fmt_u64(field + n, c->cl_value);
            memcpy(field + n, "\r\n", 3);
        }
        return 0;
    }
    c->framing = FRAMING_EOF;
    return 0;
}

/* The canonical framing field ("Name: value\r\n", decide_framing()) is the
 * user's last field of the head, as llhttp reported it when it carried every
 * field. */
static int framing_field_to_user(parse_ctx_t *ctx, const char *field)
{
    /* decide_framing() wrote "Name: value\r\n", and nothing else. */
    const char *colon = strchr(field, ':');
    size_t len = strlen(field);

    return user_field(ctx, field, (size_t)(colon - field), colon + 2,
                      len - (size_t)(colon + 2 - field) - 2);
}

static int end_head(parse_ctx_t *ctx)
{
    conn_t *c = ctx->conn;
    int status = llhttp_get_status_code(&c->parser);
    char field[64];

    if (flush_held(ctx, 0) != 0 || decide_framing(ctx, status, field, sizeof(field)) != 0)
        return -1;
    ctx->what = "header section";
    if (field[0] && framing_field_to_user(ctx, field) != 0)
        return -1;
    /* The framing field and the empty line go to llhttp in one call. */
    strcat(field, "\r\n");
    if (feed_text(ctx, field) != 0)
        return -1;
    if (status < 200) {
        if (++c->interim > CONN_MAX_INTERIM)
            return rx_fail(ctx, ERR_PROTOCOL, "more than %d interim responses", CONN_MAX_INTERIM);
        rx_reset(c);
        return 0;
    }
    if (c->message_done)
        c->rx_state = RX_DONE;
    else
        c->rx_state = c->framing == FRAMING_CHUNKED ? RX_CHUNK_LINE : RX_BODY;
    return 0;
}

/* A line of the header or trailer section (n bytes at p, terminator gone). */
static int field_line(parse_ctx_t *ctx, const char *p, size_t n, int trailer)
{
    conn_t *c = ctx->conn;
    strbuf_t t;
    size_t i = 0;

    if (n == 0) {
        if (!trailer)
            return end_head(ctx);
        if (flush_held(ctx, 1) != 0)
            return -1;
        ctx->what = "trailer section";
        c->rx_state = RX_DONE;
        return feed_text(ctx, "\r\n");
    }
    if (++c->head_lines > CONN_MAX_HEADERS + 1)
        return rx_fail(ctx, ERR_HEADERS_TOO_LARGE, "more than %d response headers",
                       CONN_MAX_HEADERS);
    if (is_ows(p[0])) {
        /* obs-fold: RFC 9112 5.2 has a user agent replace it with one SP. */
        if (c->held.len == 0)
            return rx_fail(ctx, ERR_PROTOCOL, "whitespace before the first %s field",
                           trailer ? "trailer" : "header");
        while (c->held.len > 0 && is_ows(c->held.p[c->held.len - 1]))
            c->held.len--;
        while (i < n && is_ows(p[i]))
            i++;
        lenient(c, STATS_LENIENT_OBS_FOLD);
        if (strbuf_append(&c->held, " ", 1) != 0 || strbuf_append(&c->held, p + i, n - i) != 0)
            return rx_fail(ctx, ERR_NO_MEMORY, "no memory for a response header");
        return 0;
    }
    if (flush_held(ctx, trailer) != 0)
        return -1;
    /* The line becomes the held one: swap the buffers instead of copying. */
    t = c->held;
    c->held = c->line;
    c->line = t;
    c->held.len = n;
    return 0;
}

static int chunk_size_line(parse_ctx_t *ctx, strbuf_t *line, size_t n)
{
    conn_t *c = ctx->conn;
    uint64_t size = 0;
    size_t i = 0;

    for (; i < n && isxdigit((unsigned char)line->p[i]); i++) {
        if (size >> 60)
            return rx_fail(ctx, ERR_PROTOCOL, "chunk size too large");
        size = size * 16 + (uint64_t)(isdigit((unsigned char)line->p[i])
                                          ? line->p[i] - '0'
                                          : (tolower((unsigned char)line->p[i]) - 'a' + 10));
    }
    if (i == 0)
        return rx_fail(ctx, ERR_PROTOCOL, "invalid chunk size '%.*s'", clip(n), line->p);
    ctx->what = "chunk-size line";
    if (feed_line(ctx, line, n) != 0)
        return -1;
    c->chunk_left = size;
    if (size > 0) {
        c->rx_state = RX_CHUNK_DATA;
    } else {
        c->rx_state = RX_TRAILER;
        c->head_lines = 1;
        c->head_raw = 0;
    }
    return 0;
}

static const char *line_kind(const conn_t *c)
{
    switch (c->rx_state) {
    case RX_HEAD:
        return c->head_lines == 0 ? "status line" : "header line";
    case RX_TRAILER:
        return "trailer line";
    case RX_CHUNK_LINE:
        return "chunk-size line";
    default:
        return "line after chunk data";
    }
}

/* A whole line has arrived in c->line, its LF last. */
static int on_line(parse_ctx_t *ctx)
{
    conn_t *c = ctx->conn;
    char *p = c->line.p;
    size_t n = c->line.len - 1;
    const char *kind = line_kind(c);

    if (n > 0 && p[n - 1] == '\r')
        n--;
    else
        lenient(c, STATS_LENIENT_BARE_LF); /* RFC 9112 2.2 */
    if (memchr(p, '\r', n) != NULL)
        return rx_fail(ctx, ERR_PROTOCOL, "bare CR in a %s", kind);
    switch (c->rx_state) {
    case RX_HEAD:
        if (c->head_lines > 0)
            return field_line(ctx, p, n, 0);
        if (n == 0) {
            lenient(c, STATS_LENIENT_EMPTY_LINE_BEFORE_STATUS);
            return 0;
        }
        c->head_lines = 1;
        ctx->what = kind;
        return feed_line(ctx, &c->line, n);
    case RX_TRAILER:
        return field_line(ctx, p, n, 1);
    case RX_CHUNK_LINE:
        return chunk_size_line(ctx, &c->line, n);
    default:
        if (n != 0)
            return rx_fail(ctx, ERR_PROTOCOL, "chunk data longer than its chunk size");
        c->rx_state = RX_CHUNK_LINE;
        ctx->what = kind;
        return feed_text(ctx, "\r\n");
    }
}

/* Takes what it can from [*pp, end): body bytes straight to llhttp, or
 * bytes of a line until its LF. Returns 0, or -1 with callback_err set. */
static int rx_step(parse_ctx_t *ctx, buf_t *b, const char **pp, const char *end)
{
    conn_t *c = ctx->conn;
    const char *p = *pp, *nl;
    size_t n, used;
    int rc, section = c->rx_state == RX_HEAD || c->rx_state == RX_TRAILER;

    if (c->rx_state == RX_BODY || c->rx_state == RX_CHUNK_DATA) {
        n = (size_t)(end - p);
        if (c->rx_state == RX_CHUNK_DATA && n > c->chunk_left)
            n = (size_t)c->chunk_left;
        ctx->what = "body";
        rc = feed(ctx, b, p, n, &used);
        *pp = p + used;
        if (c->rx_state == RX_CHUNK_DATA && (c->chunk_left -= used) == 0)
            c->rx_state = RX_CHUNK_END;
        return rc;
    }
    nl = memchr(p, '\n', (size_t)(end - p));
    n = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
    if (section && (c->head_raw += n) > CONN_MAX_HEADER_BYTES)
        return rx_fail(ctx, ERR_HEADERS_TOO_LARGE, "response %s exceed 64 KiB",
                       c->rx_state == RX_HEAD ? "headers" : "trailers");
    if (!section && c->line.len + n > CONN_MAX_CHUNK_LINE)
        return rx_fail(ctx, ERR_PROTOCOL, "%s longer than %d bytes", line_kind(c),
                       CONN_MAX_CHUNK_LINE);
    if (strbuf_put(&c->line, p, n) != 0)
        return rx_fail(ctx, ERR_NO_MEMORY, "no memory for a response line");
    *pp = p + n;
    if (nl == NULL)
        return 0;
    rc = on_line(ctx);
    strbuf_reset(&c->line);
    return rc;
}
