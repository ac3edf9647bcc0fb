/* control — the control socket's server; see control.h and proto/PROTOCOL.md. */
#include "control.h"

#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "ctlpath.h"
#include "err.h"
#include "log.h"
#include "mem.h"
#include "strbuf.h"

/* A connected client. Reference counted: the pipe handle holds one until
 * its close callback, and so do every queued write, every open wait (until
 * its timer has closed, see methods.c) and every handler or walk that may
 * close the client. It stays on ctl->clients until its last reference goes,
 * so a walk holding a reference on it can always step to its `next`. */
struct ctl_client {
    uv_pipe_t pipe; /* pipe.data == this */
    control_t *ctl; /* borrowed */
    unsigned refcnt;
    int close_after_flush;     /* an error was queued: close once it is written */
    int eof;                   /* the peer half-closed: close once nothing is owed */
    unsigned writes;           /* uv_writes in flight, and the pending output as one */
    strbuf_t line;             /* owned: the partial line so far */
    strbuf_t out;              /* owned: the lines queued this loop turn, not written yet */
    size_t last_out;           /* bytes its last turn's output held: the next turn's first guess */
    int pending;               /* on ctl->pending: out is written before the loop waits */
    ctl_client_t *onext;       /* on ctl->pending */
    buf_t *rbuf;               /* owned while libuv reads into it */
    rpc_peer_t peer;           /* the framing's view; peer.closing is the client's closing flag */
    methods_session_t session; /* owned: its waits and subscriptions */
    ctl_client_t *prev, *next; /* on ctl->clients (the list borrows) */
    stats_t *stats;            /* borrowed */
};

typedef struct ctl_write {
    uv_write_t req;
    ctl_client_t *client; /* owned reference */
    char *text;           /* owned: the line (jansson's serialisation, or a strbuf's bytes) */
} ctl_write_t;

static void client_close(ctl_client_t *c, const char *why);
static void send_json(ctl_client_t *c, json_t *v);

/* ---- clients: lifetime ---------------------------------------------------------- */

static void client_incref(ctl_client_t *c)
{
    c->refcnt++;
}

/* The last reference frees the client, and only then does it leave the
 * client list and free its subscriptions: a walk over either that holds a
 * reference on the client never steps onto freed memory, whatever the
 * client's handlers or sends did meanwhile (client_close() only marks it). */
static void client_decref(ctl_client_t *c)
{
    control_t *ctl = c->ctl;

    assert(c->refcnt > 0);
    if (--c->refcnt > 0)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        ctl->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    methods_session_dispose(&c->session);
    strbuf_dispose(&c->line);
    strbuf_dispose(&c->out);
    if (c->rbuf)
        buf_decref(c->rbuf);
    stats_obj_destroyed(c->stats, STATS_OBJ_CTL_CLIENT);
    mem_free(c);
}

static void on_client_closed(uv_handle_t *h)
{
    ctl_client_t *c = h->data;

    c->ctl->nclients--;
    client_decref(c); /* the handle's */
}

/* A half-closed client is done with once its waits are answered; one with
 * subscriptions stays until it closes its end too. */
static int owes_nothing(const ctl_client_t *c)
{
    return c->eof && methods_session_idle(&c->session);
}

/* One write of c's output ended (status 0, or a libuv error); drops the
 * write's count and reference. */
static void write_ended(ctl_client_t *c, int status)
{
    c->writes--;
    /* A failed write means the peer is gone (reading may have stopped at a
     * half-close, so no read error would tell us). */
    if (status != 0 || (c->writes == 0 && (c->close_after_flush || owes_nothing(c))))
        client_close(c, NULL);
    client_decref(c);
}

static void on_write(uv_write_t *req, int status)
{
    ctl_write_t *w = req->data;
    ctl_client_t *c = w->client;
    mem_free(w->text);
    stats_obj_destroyed(c->stats, STATS_OBJ_CTL_WRITE);
    mem_free(w);
    write_ended(c, status);
}

/* Output is coalesced: the lines a client is sent in one loop turn (wait
 * answers, events, replies) are appended to its `out` buffer, and once per
 * turn each such client gets one write with all of them, just before the
 * loop waits for I/O again (a uv_prepare). That is after the turn's idle
 * callbacks, where the scheduler starts the next jobs: a request goes out
 * before the answers about the jobs that made room for it. While lines
 * wait, the client is on ctl->pending, holding a reference, and the pending
 * output counts as a write in flight (so close_after_flush and a half-close
 * wait for it as for a real one). What the socket takes at once is written
 * with uv_try_write(); only the rest becomes a write request. */

/* Hands c's pending output to the socket, or drops it if c is closing; the
 * pending entry's reference and write count pass to the write. */
static void write_out(ctl_client_t *c)
{
    strbuf_t out = c->out;
    ctl_write_t *w = NULL;
    uv_buf_t buf;
    int sent = 0;

    memset(&c->out, 0, sizeof(c->out));
    c->last_out = out.len;
    if (!c->peer.closing && out.failed)
        client_close(c, "out of memory for a response");
    if (!c->peer.closing) {
        buf = uv_buf_init(out.p, (unsigned)out.len);
        sent = uv_try_write((uv_stream_t *)&c->pipe, &buf, 1);
        if (sent == (int)out.len) {
            strbuf_dispose(&out);
            write_ended(c, 0);
            return;
        }
        if (sent < 0 && sent != UV_EAGAIN) {
            strbuf_dispose(&out);
            write_ended(c, sent); /* the peer is gone */
            return;
        }
        sent = sent < 0 ? 0 : sent;
        w = mem_alloc(sizeof(*w));
    }
    if (w == NULL) {
        if (!c->peer.closing)
            client_close(c, "out of memory for a response");
        strbuf_dispose(&out);
        write_ended(c, 0);
        return;
    }
    w->req.data = w;
    w->client = c;
    w->text = out.p;
    buf = uv_buf_init(out.p + sent, (unsigned)(out.len - (size_t)sent));
    if (uv_write(&w->req, (uv_stream_t *)&c->pipe, &buf, 1, on_write) != 0) {
        strbuf_dispose(&out);
        mem_free(w);
        client_close(c, "write failed");
        write_ended(c, 0);
        return;
    }
    stats_obj_created(c->stats, STATS_OBJ_CTL_WRITE);
}

/* Writes every pending client's output: called before the loop waits, and
 * by control_close(). */
static void flush_pending(control_t *ctl)
{
    ctl_client_t *c;

    while ((c = ctl->pending) != NULL) {
        ctl->pending = c->onext;
        c->onext = NULL;
        c->pending = 0;
        write_out(c);
    }
}

static void on_flush(uv_prepare_t *h)
{
    control_t *ctl = h->data;

    flush_pending(ctl);
    strbuf_dispose(&ctl->event_job); /* a turn's events share it; the loop may now sleep */
}

/* Puts c on the pending list (its output is written this loop turn). */
static void make_pending(ctl_client_t *c)
{
    c->pending = 1;
    c->writes++;
    client_incref(c);
    c->onext = c->ctl->pending;
    c->ctl->pending = c;
}

/* libuv queues what the socket does not take; a client that does not
 * read cannot make us hold its output without bound. */
static void check_output(ctl_client_t *c)
{
    if (uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe) + c->out.len > c->ctl->max_output)
        client_close(c, "slow reader: output queue over its limit");
}

/* Queues the text in line, which ends with its newline, taking line's
 * memory (it is zeroed). */
static void queue_line(ctl_client_t *c, strbuf_t *line)
{
    if (!c->pending) {
        make_pending(c);
        c->out = *line; /* the first line of the turn is the buffer: no copy */
        memset(line, 0, sizeof(*line));
    } else {
        strbuf_append(&c->out, line->p, line->len); /* a failure marks out failed */
        strbuf_dispose(line);
    }
    check_output(c);
}

/* Queues v (a reference this function takes) as one line. */
static void send_json(ctl_client_t *c, json_t *v)
{
    strbuf_t line = {0};
    char *text;

    if (v == NULL || c->peer.closing) {
        json_decref(v);
        return;
    }
    text = json_dumps(v, JSON_COMPACT);
    json_decref(v);
    if (text == NULL) {
        client_close(c, "out of memory for a response");
        return;
    }
    if (strbuf_append(&line, text, strlen(text)) != 0 || strbuf_append(&line, "\n", 1) != 0) {
        mem_free(text);
        strbuf_dispose(&line);
        client_close(c, "out of memory for a response");
        return;
    }
    mem_free(text);
    queue_line(c, &line);
}

/* Queues the text in line as one line, taking line's memory. */
static void send_text(ctl_client_t *c, strbuf_t *line)
{
    if (c->peer.closing) {
        strbuf_dispose(line);
        return;
    }
    if (line->failed || strbuf_append(line, "\n", 1) != 0) {
        strbuf_dispose(line);
        client_close(c, "out of memory for a response");
        return;
    }
    queue_line(c, line);
}

/* ---- the framing's hooks -------------------------------------------------------- */

static ctl_client_t *client_of(rpc_peer_t *p)
{
    return (ctl_client_t *)((char *)p - offsetof(ctl_client_t, peer));
}

static void peer_send(rpc_peer_t *p, json_t *msg)
{
    send_json(client_of(p), msg);
}

static void peer_send_text(rpc_peer_t *p, strbuf_t *line)
{
    send_text(client_of(p), line);
}

/* A line written straight into the client's pending output: no buffer of
 * its own, no copy. The first line of a turn makes room at once for as
 * much as the client's last turn held (a busy client's answers and events
 * come at a steady rate), and at least for a wait's answer. */
#define LINE_GUESS    1024
#define OUT_GUESS_MAX (256 * 1024)

static strbuf_t *peer_line_begin(rpc_peer_t *p)
{
    ctl_client_t *c = client_of(p);

    if (c->peer.closing)
        return NULL;
    if (!c->pending) {
        size_t guess = c->last_out + c->last_out / 4;

        guess = guess < LINE_GUESS ? LINE_GUESS : guess > OUT_GUESS_MAX ? OUT_GUESS_MAX : guess;
        make_pending(c);
        strbuf_reserve(&c->out, guess); /* a failure marks out failed */
    }
    return &c->out;
}

static void peer_line_end(rpc_peer_t *p, strbuf_t *out)
{
    ctl_client_t *c = client_of(p);

    if (out->failed || strbuf_put(out, "\n", 1) != 0) {
        client_close(c, "out of memory for a response");
        return;
    }
    check_output(c);
}

static void peer_drop(rpc_peer_t *p, const char *why)
{
    client_close(client_of(p), why);
}

static void peer_incref(rpc_peer_t *p)
{
    client_incref(client_of(p));
}

static void peer_decref(rpc_peer_t *p)
{
    client_decref(client_of(p));
}

static const rpc_peer_ops_t peer_ops = {.send = peer_send,
                                        .send_text = peer_send_text,
                                        .line_begin = peer_line_begin,
                                        .line_end = peer_line_end,
                                        .drop = peer_drop,
                                        .incref = peer_incref,
                                        .decref = peer_decref};

/* ---- reading -------------------------------------------------------------------- */

static void line_too_long(ctl_client_t *c)
{
    rpc_send_error(&c->peer, RPC_INVALID_REQUEST, "line_too_long",
                   "a line longer than %zu bytes: closing the connection", c->ctl->max_line);
    uv_read_stop((uv_stream_t *)&c->pipe);
    c->close_after_flush = 1;
    strbuf_dispose(&c->line);
    if (c->writes == 0)
        client_close(c, NULL);
}

/* The partial-line buffer is freed, not kept, once its line is answered:
 * an idle client then holds no block, whether or not the kernel ever split
 * one of its lines across reads (the soak's heap counts rely on it). */
static void line_done(ctl_client_t *c)
{
    strbuf_dispose(&c->line);
}

/* Splits the bytes read into lines; complete lines inside the read buffer
 * are handled in place, only a partial one is copied. */
static void on_bytes(ctl_client_t *c, const char *p, size_t n)
{
    while (n > 0 && !c->peer.closing && !c->close_after_flush) {
        const char *nl = memchr(p, '\n', n);
        size_t take = nl ? (size_t)(nl - p) : n;

        if (c->line.len + take > c->ctl->max_line) {
            line_too_long(c);
            return;
        }
        if (nl && c->line.len == 0) {
            rpc_handle_line(&c->peer, p, take);
        } else {
            if (strbuf_append(&c->line, p, take) != 0) {
                client_close(c, "out of memory for a request line");
                return;
            }
            if (nl) {
                rpc_handle_line(&c->peer, c->line.p, c->line.len);
                line_done(c);
            }
        }
        if (nl == NULL)
            break;
        p = nl + 1;
        n -= take + 1;
    }
}

static int peer_gone(ctl_client_t *c)
{
    struct pollfd pfd = {.events = POLLIN | POLLRDHUP};
    uv_os_fd_t fd;

    if (uv_fileno((uv_handle_t *)&c->pipe, &fd) != 0)
        return 1;
    pfd.fd = fd;
    return poll(&pfd, 1, 0) == 1 && (pfd.revents & (POLLHUP | POLLERR)) != 0;
}

/* The peer finished sending (`echo ... | socat` does this). Its last line
 * may lack a newline; answers it is owed (waits, queued output) still go
 * out, and the connection closes once they have. */
static void half_closed(ctl_client_t *c)
{
    if (c->line.len > 0 && !c->close_after_flush) {
        rpc_handle_line(&c->peer, c->line.p, c->line.len);
        line_done(c);
    }
    c->eof = 1;
    uv_read_stop((uv_stream_t *)&c->pipe);
    /* Both look like EOF to read(); only a peer gone for good sets POLLHUP
     * on a Unix socket. Such a client is owed nothing any more. */
    if (!c->peer.closing && (peer_gone(c) || (c->writes == 0 && owes_nothing(c))))
        client_close(c, NULL);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *out)
{
    ctl_client_t *c = h->data;
    (void)hint;
    if (c->rbuf == NULL)
        c->rbuf = buf_get(&c->ctl->d->bufs);
    *out =
        c->rbuf ? uv_buf_init(c->rbuf->data, (unsigned)c->rbuf->pool->size) : uv_buf_init(NULL, 0);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *ub)
{
    ctl_client_t *c = s->data;
    buf_t *b = c->rbuf;

    (void)ub;
    c->rbuf = NULL;
    client_incref(c);
    /* The lines are answered from inside b: the stats method and /metrics
     * leave it out of "in use" meanwhile (control.h). */
    c->ctl->nreading += b != NULL;
    if (n > 0)
        on_bytes(c, b->data, (size_t)n);
    else if (n == UV_EOF)
        half_closed(c);
    else if (n < 0)
        client_close(c, n == UV_ECONNRESET ? NULL : uv_strerror((int)n));
    c->ctl->nreading -= b != NULL;
    if (b)
        buf_decref(b);
    client_decref(c);
}

/* ---- connections ---------------------------------------------------------------- */

static void client_close(ctl_client_t *c, const char *why)
{
    if (c->peer.closing)
        return;
    client_incref(c);
    c->peer.closing = 1;
    if (why)
        log_warn("control: dropping a client: %s", why);
    methods_session_close(&c->session); /* ends its waits; subscriptions stay until freed */
    uv_close((uv_handle_t *)&c->pipe, on_client_closed);
    client_decref(c);
}

static void log_peer(ctl_client_t *c)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);
    uv_os_fd_t fd;

    if (uv_fileno((uv_handle_t *)&c->pipe, &fd) == 0 &&
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0)
        log_debug("control: client connected (pid %d, uid %u, gid %u)", (int)cred.pid,
                  (unsigned)cred.uid, (unsigned)cred.gid);
    else
        log_debug("control: client connected (credentials unknown)");
}

static void reject_pending(control_t *ctl);

static void on_reject_closed(uv_handle_t *h)
{
    control_t *ctl = h->data;

    ctl->rejecting = 0;
    if (ctl->reject_waiting && !ctl->closing) {
        ctl->reject_waiting = 0;
        reject_pending(ctl);
    }
}

/* libuv stops watching the listening socket while an accepted connection
 * waits for uv_accept(). Without memory for a client, the connection is
 * accepted into ctl->reject and closed at once, so the socket keeps
 * accepting; a second one meanwhile waits for that close. */
static void reject_pending(control_t *ctl)
{
    if (ctl->rejecting) {
        ctl->reject_waiting = 1;
        return;
    }
    ctl->rejecting = 1;
    uv_pipe_init(&ctl->d->loop, &ctl->reject, 0);
    ctl->reject.data = ctl;
    (void)uv_accept((uv_stream_t *)&ctl->server, (uv_stream_t *)&ctl->reject);
    uv_close((uv_handle_t *)&ctl->reject, on_reject_closed);
}

/* A new client, listed on ctl->clients, holding its handle's reference;
 * NULL without memory. */
static ctl_client_t *client_create(control_t *ctl)
{
    ctl_client_t *c = mem_calloc(1, sizeof(*c));

    if (c == NULL)
        return NULL;
    c->ctl = ctl;
    c->stats = &ctl->d->stats;
    c->refcnt = 1; /* the handle's */
    rpc_peer_init(&c->peer, &peer_ops, ctl->max_output, &ctl->reader);
    methods_session_init(&c->session, &ctl->methods, &c->peer);
    stats_obj_created(c->stats, STATS_OBJ_CTL_CLIENT);
    uv_pipe_init(&ctl->d->loop, &c->pipe, 0);
    c->pipe.data = c;
    c->next = ctl->clients;
    if (ctl->clients)
        ctl->clients->prev = c;
    ctl->clients = c;
    ctl->nclients++;
    return c;
}

static void on_connection(uv_stream_t *server, int status)
{
    control_t *ctl = server->data;
    ctl_client_t *c;

    if (status != 0 || ctl->closing) {
        log_warn("control: accept failed: %s", uv_strerror(status));
        return;
    }
    c = client_create(ctl);
    if (c == NULL) {
        log_error("control: out of memory for a client");
        reject_pending(ctl);
        return;
    }
    if (uv_accept(server, (uv_stream_t *)&c->pipe) != 0) {
        client_close(c, "accept failed");
        return;
    }
    log_peer(c);
    ctl->max_clients = ctl->d->cfg.max_clients; /* SIGHUP may have changed it */
    if (ctl->nclients > ctl->max_clients) {
        rpc_send_error(&c->peer, RPC_SERVER_ERROR, "too_many_clients",
                       "too many control clients (max %u): try again later", ctl->max_clients);
        c->close_after_flush = 1;
        if (c->writes == 0)
            client_close(c, NULL);
        return;
    }
    if (uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read) != 0)
        client_close(c, "cannot read from the client");
}

/* ---- events --------------------------------------------------------------------- */

/* The job's text is written once per event, however many subscribers get
 * it, into a buffer the turn's events share (freed before the loop sleeps,
 * so an idle daemon holds none); an event inside another, or one after the
 * server closed, has a buffer of its own. */
#define EVENT_JOB_KEEP (64 * 1024)

void control_on_event(sched_t *s, job_t *j, sched_event_t ev, void *data)
{
    control_t *ctl = data;
    strbuf_t own = {0}, *job = &own;
    ctl_client_t *c, *next;

    (void)s;
    if (!ctl->event_busy && ctl->flush_on && !ctl->closing) {
        job = &ctl->event_job;
        ctl->event_busy = 1;
    }
    /* The scheduler holds a reference on j for the whole event. */
    if (ev == SCHED_EV_FINISHED)
        methods_job_finished(j);
    /* The walk over the clients: each is held by a reference while it is
     * sent to, and a client leaves the list only when its last reference
     * goes, so c->next is read from a live, listed client. */
    for (c = ctl->clients; c; c = next) {
        client_incref(c);
        if (!c->peer.closing)
            methods_notify(&c->session, j, ev, job);
        next = c->next;
        client_decref(c);
    }
    if (job == &ctl->event_job) {
        ctl->event_busy = 0;
        if (job->failed || job->cap > EVENT_JOB_KEEP)
            strbuf_dispose(job);
        else
            strbuf_reset(job);
    } else {
        strbuf_dispose(job);
    }
}

/* ---- the socket ----------------------------------------------------------------- */

int control_default_path(char *buf, size_t len)
{
    return ctlpath_default(buf, len);
}

/* Creates the socket's directory when missing (mode 0700), and refuses one
 * that others could write into: a socket there could be swapped. */
static int prepare_dir(const char *path, char *err, size_t errlen)
{
    char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
    const char *slash = strrchr(path, '/');
    struct stat st;

    if (slash == NULL || slash == path)
        return 0;
    snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "control socket directory %s: %s", dir, strerror(errno));
        return -1;
    }
    if (lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "control socket directory %s is not a directory", dir);
        return -1;
    }
    if ((st.st_mode & S_IWOTH) && !(st.st_mode & S_ISVTX)) {
        snprintf(err, errlen, "control socket directory %s is writable by anyone", dir);
        return -1;
    }
    return 0;
}

/* Removes a socket file nobody listens on; refuses when a daemon answers. */
static int clear_stale(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sa;
    struct stat st;
    int fd, rc;

    if (lstat(path, &st) != 0)
        return 0;
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen, "%s exists and is not a socket", path);
        return -1;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    close(fd);
    if (rc == 0) {
        snprintf(err, errlen, "another fetchd is already listening on %s", path);
        return -1;
    }
    if (unlink(path) != 0) {
        snprintf(err, errlen, "cannot remove the stale socket %s: %s", path, strerror(errno));
        return -1;
    }
    log_notice("control: removed a stale socket file %s", path);
    return 0;
}

static void control_init(control_t *ctl, daemon_t *d)
{
    memset(ctl, 0, sizeof(*ctl));
    ctl->d = d;
    ctl->max_clients = d->cfg.max_clients;
    ctl->max_line = 1024 * 1024;
    ctl->max_output = 8 * 1024 * 1024;
    methods_init(&ctl->methods, d, &ctl->nclients);
    ctl->methods.nreading = &ctl->nreading;
    jsonr_init(&ctl->reader, mem_realloc, mem_free);
}

/* Listening: the per-turn flush of the clients' output starts with it. The
 * handles do not keep the loop alive. */
static void start_flush(control_t *ctl)
{
    ctl->listening = 1;
    uv_prepare_init(&ctl->d->loop, &ctl->flush);
    ctl->flush.data = ctl;
    uv_prepare_start(&ctl->flush, on_flush);
    uv_unref((uv_handle_t *)&ctl->flush);
    ctl->flush_on = 1;
    rpc_reader_settle(&ctl->reader); /* its one block exists from the start */
}

int control_start_fd(control_t *ctl, daemon_t *d, int fd, char *err, size_t errlen)
{
    int rc;

    control_init(ctl, d);
    uv_pipe_init(&d->loop, &ctl->server, 0);
    ctl->server.data = ctl;
    rc = uv_pipe_open(&ctl->server, fd);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&ctl->server, 128, on_connection);
    if (rc != 0) {
        snprintf(err, errlen, "control socket passed by systemd (fd %d): %s", fd, uv_strerror(rc));
        uv_close((uv_handle_t *)&ctl->server, NULL);
        return err_from_uv(rc);
    }
    start_flush(ctl);
    log_notice("control: listening on the socket systemd passed (fd %d)", fd);
    return 0;
}

int control_start(control_t *ctl, daemon_t *d, const char *path, char *err, size_t errlen)
{
    int systemd = getenv("RUNTIME_DIRECTORY") != NULL || getenv("NOTIFY_SOCKET") != NULL;
    mode_t mode = systemd ? 0660 : 0600;
    int rc;

    control_init(ctl, d);
    if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        snprintf(err, errlen, "control socket path too long: %s", path);
        return ERR_INVALID_REQUEST;
    }
    if (prepare_dir(path, err, errlen) != 0 || clear_stale(path, err, errlen) != 0)
        return ERR_IO;
    ctl->path = mem_strdup(path);
    if (ctl->path == NULL) {
        snprintf(err, errlen, "%s", err_str(ERR_NO_MEMORY));
        return ERR_NO_MEMORY;
    }
    uv_pipe_init(&d->loop, &ctl->server, 0);
    ctl->server.data = ctl;
    rc = uv_pipe_bind(&ctl->server, path);
    if (rc == 0 && chmod(path, mode) != 0)
        rc = uv_translate_sys_error(errno);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&ctl->server, 128, on_connection);
    if (rc != 0) {
        snprintf(err, errlen, "control socket %s: %s", path, uv_strerror(rc));
        uv_close((uv_handle_t *)&ctl->server, NULL);
        unlink(path);
        mem_free(ctl->path);
        ctl->path = NULL;
        return err_from_uv(rc);
    }
    start_flush(ctl);
    log_notice("control: listening on %s (mode %04o)", path, (unsigned)mode);
    return 0;
}

void control_close(control_t *ctl)
{
    if (!ctl->listening || ctl->closing)
        return;
    ctl->closing = 1;
    /* Held by a reference while it is closed (see control_on_event()). */
    for (ctl_client_t *c = ctl->clients, *next; c; c = next) {
        client_incref(c);
        client_close(c, NULL);
        next = c->next;
        client_decref(c);
    }
    flush_pending(ctl); /* the closed clients' output is dropped, their references go */
    if (ctl->flush_on) {
        uv_close((uv_handle_t *)&ctl->flush, NULL);
    }
    uv_close((uv_handle_t *)&ctl->server, NULL);
    jsonr_free(&ctl->reader); /* every client is closing: no line is parsed any more */
    strbuf_dispose(&ctl->event_job);
    if (ctl->path) {
        /* A socket systemd passed is systemd's to remove. */
        unlink(ctl->path);
        mem_free(ctl->path);
        ctl->path = NULL;
    }
}
