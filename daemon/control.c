/* control — the JSON-RPC control socket; see control.h and proto/PROTOCOL.md. */
#include "control.h"

#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "ctlpath.h"
#include "err.h"
#include "jobspec.h"
#include "log.h"
#include "mem.h"
#include "strbuf.h"

#define RPC_PARSE_ERROR      -32700
#define RPC_INVALID_REQUEST  -32600
#define RPC_METHOD_NOT_FOUND -32601
#define RPC_INVALID_PARAMS   -32602
#define RPC_SERVER_ERROR     -32000

#define PROTOCOL_VERSION 1
/* Jobs per submit call: with the shortest specs about 50,000 would fit in
 * a 1 MiB line, so the line limit alone would not bound the work one call
 * does in one loop turn; 10,000 is always reachable within the line for
 * specs of up to about 100 bytes. */
#define MAX_SUBMIT 10000
#define MAX_LIST   1000
/* Per client: an open wait costs about 250 bytes and a timer, a
 * subscription is walked on every job event. */
#define MAX_WAITS_PER_CLIENT 10000
#define MAX_SUBS_PER_CLIENT  64
/* Per client, the request ids its open waits keep, and the job id lists
 * its subscriptions keep, each at most this many bytes (as JSON): without
 * it, 10,000 waits with 1 MiB ids would hold 10 GiB. */
#define MAX_HELD_BYTES (1024 * 1024)

typedef struct ctl_batch ctl_batch_t;
typedef struct ctl_wait ctl_wait_t;
typedef struct ctl_sub ctl_sub_t;

/* A batch being answered. Reference counted: its handler holds one while
 * the batch's calls run, and each of its open `wait` calls holds one; the
 * last release sends the responses (one line) and frees it. */
struct ctl_batch {
    ctl_client_t *client; /* borrowed: every holder of a reference holds one on the client */
    json_t *responses;    /* owned */
    unsigned refcnt;
};

/* An open `wait`: answered when its job finishes, its timeout passes or
 * its client goes. */
struct ctl_wait {
    ctl_client_t *client;      /* borrowed */
    job_t *job;                /* owned reference */
    json_t *id;                /* owned: the request id */
    size_t id_bytes;           /* its size as JSON, counted in the client's wait_bytes */
    ctl_batch_t *batch;        /* owned reference, or NULL */
    size_t slot;               /* its place in the batch's responses */
    uv_timer_t timer;          /* the wait's own timeout; memory freed in its close callback */
    ctl_wait_t *cprev, *cnext; /* the client's waits */
    ctl_wait_t *jprev, *jnext; /* the job's watchers */
};

/* One subscription; the client owns it. */
struct ctl_sub {
    uint64_t id;
    unsigned events;  /* bit per sched_event_t */
    json_t *ids;      /* owned: job ids to follow, or NULL for all */
    size_t ids_bytes; /* its size as JSON, counted in the client's sub_bytes */
    ctl_sub_t *next;
};

/* A connected client. Reference counted: the pipe handle holds one until
 * its close callback, and so do every queued write, every open wait (until
 * its timer has closed) and every handler or walk that may close the
 * client. It stays on ctl->clients until its last reference goes, so a walk
 * holding a reference on it can always step to its `next`. */
struct ctl_client {
    uv_pipe_t pipe; /* pipe.data == this */
    control_t *ctl; /* borrowed */
    unsigned refcnt;
    int closing;
    int close_after_flush;     /* an error was queued: close once it is written */
    int eof;                   /* the peer half-closed: close once nothing is owed */
    unsigned writes;           /* uv_writes in flight */
    strbuf_t line;             /* owned: the partial line so far */
    buf_t *rbuf;               /* owned while libuv reads into it */
    ctl_wait_t *waits;         /* owned */
    ctl_sub_t *subs;           /* owned: freed only when the client is, see client_decref() */
    unsigned nwaits;           /* open waits, at most MAX_WAITS_PER_CLIENT */
    unsigned nsubs;            /* subscriptions, at most MAX_SUBS_PER_CLIENT */
    size_t wait_bytes;         /* the open waits' ids, at most MAX_HELD_BYTES */
    size_t sub_bytes;          /* the subscriptions' id lists, at most MAX_HELD_BYTES */
    ctl_client_t *prev, *next; /* on ctl->clients (the list borrows) */
    stats_t *stats;            /* borrowed */
};

typedef struct ctl_write {
    uv_write_t req;
    ctl_client_t *client; /* owned reference */
    char *text;           /* owned: jansson's serialisation */
} ctl_write_t;

/* One call being handled. */
typedef struct rpc_call {
    ctl_client_t *c;
    json_t *id;     /* borrowed; NULL for a notification */
    json_t *params; /* borrowed object (empty when absent) */
    ctl_batch_t *batch;
    size_t slot;
    json_t *error; /* owned: set when the call failed */
    int deferred;  /* a wait registered: answered later */
} rpc_call_t;

static void client_close(ctl_client_t *c, const char *why);
static void send_json(ctl_client_t *c, json_t *v);
static void sub_free(ctl_client_t *c, ctl_sub_t *sub);

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
    while (c->subs) {
        ctl_sub_t *sub = c->subs;
        c->subs = sub->next;
        sub_free(c, sub);
    }
    strbuf_dispose(&c->line);
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

/* ---- batches and waits ---------------------------------------------------------- */

/* Drops a reference to the batch; resp (a new reference, or NULL) is the
 * answer for its slot. The last reference sends the responses, unless
 * there are none (a batch of notifications gets no line at all). */
static void batch_decref(ctl_batch_t *b, size_t slot, json_t *resp)
{
    json_t *responses;

    if (resp)
        json_array_set_new(b->responses, slot, resp);
    assert(b->refcnt > 0);
    if (--b->refcnt > 0)
        return;
    responses = b->responses;
    b->responses = NULL;
    if (json_array_size(responses) > 0)
        send_json(b->client, responses); /* takes the reference, closing or not */
    else
        json_decref(responses);
    mem_free(b);
}

static void on_wait_closed(uv_handle_t *h)
{
    ctl_wait_t *w = h->data;
    ctl_client_t *c = w->client;
    stats_obj_destroyed(c->stats, STATS_OBJ_CTL_WAIT);
    mem_free(w);
    client_decref(c);
}

/* Unlinks and releases a wait; resp (new reference, may be NULL) is its
 * answer, sent alone or as its batch's slot. The wait is off both lists
 * before anything is sent, so a send that closes the client (which ends
 * the client's other waits) cannot reach it again; its memory, and its
 * reference on the client, go only when its timer has closed. */
static void wait_end(ctl_wait_t *w, json_t *resp)
{
    ctl_client_t *c = w->client;
    job_t *j = w->job;

    assert(c->nwaits > 0 && c->wait_bytes >= w->id_bytes);
    c->nwaits--;
    c->wait_bytes -= w->id_bytes;
    if (w->cprev)
        w->cprev->cnext = w->cnext;
    else
        c->waits = w->cnext;
    if (w->cnext)
        w->cnext->cprev = w->cprev;
    if (w->jprev)
        w->jprev->jnext = w->jnext;
    else
        j->watchers = w->jnext;
    if (w->jnext)
        w->jnext->jprev = w->jprev;
    if (w->batch)
        batch_decref(w->batch, w->slot, resp);
    else if (resp)
        send_json(c, resp);
    json_decref(w->id);
    uv_close((uv_handle_t *)&w->timer, on_wait_closed);
    job_decref(j);
}

/* ---- responses ------------------------------------------------------------------ */

static json_t *error_object(int code, const char *code_name, json_t *data, const char *fmt,
                            va_list ap) __attribute__((format(printf, 4, 0)));

static json_t *error_object(int code, const char *code_name, json_t *data, const char *fmt,
                            va_list ap)
{
    char msg[512];

    vsnprintf(msg, sizeof(msg), fmt, ap);
    if (data == NULL)
        data = json_object();
    json_object_set_new(data, "code", json_string(code_name));
    return json_pack("{s:i, s:s, s:o}", "code", code, "message", msg, "data", data);
}

static json_t *response(json_t *id, const char *key, json_t *value)
{
    return json_pack("{s:s, s:O, s:o}", "jsonrpc", "2.0", "id", id ? id : json_null(), key, value);
}

static void call_error(rpc_call_t *call, int code, const char *code_name, json_t *data,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void call_error(rpc_call_t *call, int code, const char *code_name, json_t *data,
                       const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    json_decref(call->error);
    call->error = error_object(code, code_name, data, fmt, ap);
    va_end(ap);
}

/* A whole error response outside any call (parse errors, line limits). */
static void send_error(ctl_client_t *c, int code, const char *code_name, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void send_error(ctl_client_t *c, int code, const char *code_name, const char *fmt, ...)
{
    va_list ap;
    json_t *err;
    va_start(ap, fmt);
    err = error_object(code, code_name, NULL, fmt, ap);
    va_end(ap);
    send_json(c, response(NULL, "error", err));
}

/* A half-closed client is done with once its waits are answered; one with
 * subscriptions stays until it closes its end too. */
static int owes_nothing(const ctl_client_t *c)
{
    return c->eof && c->waits == NULL && c->subs == NULL;
}

static void on_write(uv_write_t *req, int status)
{
    ctl_write_t *w = req->data;
    ctl_client_t *c = w->client;
    mem_free(w->text);
    stats_obj_destroyed(c->stats, STATS_OBJ_CTL_WRITE);
    mem_free(w);
    c->writes--;
    /* A failed write means the peer is gone (reading may have stopped at a
     * half-close, so no read error would tell us). */
    if (status != 0 || (c->writes == 0 && (c->close_after_flush || owes_nothing(c))))
        client_close(c, NULL);
    client_decref(c);
}

/* Queues v (a reference this function takes) as one line. */
static void send_json(ctl_client_t *c, json_t *v)
{
    static char newline[] = "\n";
    ctl_write_t *w;
    uv_buf_t bufs[2];
    char *text;

    if (v == NULL || c->closing) {
        json_decref(v);
        return;
    }
    text = json_dumps(v, JSON_COMPACT);
    json_decref(v);
    w = text ? mem_alloc(sizeof(*w)) : NULL;
    if (w == NULL) {
        mem_free(text);
        client_close(c, "out of memory for a response");
        return;
    }
    w->req.data = w;
    w->client = c;
    w->text = text;
    bufs[0] = uv_buf_init(text, (unsigned)strlen(text));
    bufs[1] = uv_buf_init(newline, 1);
    if (uv_write(&w->req, (uv_stream_t *)&c->pipe, bufs, 2, on_write) != 0) {
        mem_free(text);
        mem_free(w);
        client_close(c, "write failed");
        return;
    }
    client_incref(c);
    c->writes++;
    stats_obj_created(c->stats, STATS_OBJ_CTL_WRITE);
    /* libuv queues what the socket does not take; a client that does not
     * read cannot make us hold its output without bound. */
    if (uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe) > c->ctl->max_output)
        client_close(c, "slow reader: output queue over its limit");
}

/* ---- params --------------------------------------------------------------------- */

static int param_id(rpc_call_t *call, job_t **out)
{
    json_t *v = json_object_get(call->params, "id");

    if (!json_is_string(v)) {
        call_error(call, RPC_INVALID_PARAMS, "invalid_params", NULL,
                   "params.id: a job id string is required");
        return -1;
    }
    *out = sched_find(&call->c->ctl->d->sched, json_string_value(v));
    if (*out == NULL) {
        call_error(call, RPC_SERVER_ERROR, "not_found", NULL, "no job with id \"%.40s\"",
                   json_string_value(v));
        return -1;
    }
    return 0;
}

/* An optional positive integer param within [1, max]; def when absent. */
static int param_uint(rpc_call_t *call, const char *key, long long def, long long max,
                      long long *out)
{
    json_t *v = json_object_get(call->params, key);

    if (v == NULL) {
        *out = def;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > max) {
        call_error(call, RPC_INVALID_PARAMS, "invalid_params", NULL,
                   "params.%s: must be an integer from 1 to %lld", key, max);
        return -1;
    }
    *out = json_integer_value(v);
    return 0;
}

/* ---- methods -------------------------------------------------------------------- */

static json_t *m_version(rpc_call_t *call)
{
    (void)call;
    return json_pack("{s:s, s:i}", "version", FETCHD_VERSION, "protocol", PROTOCOL_VERSION);
}

/* "timeouts.connect: must be ..." -> field "timeouts.connect". */
static json_t *spec_error_data(long index, const char *msg)
{
    const char *colon = strstr(msg, ": ");
    json_t *d = json_pack("{s:I, s:s}", "index", (json_int_t)index, "message", msg);
    if (d && colon)
        json_object_set_new(d, "field", json_stringn(msg, (size_t)(colon - msg)));
    return d;
}

static json_t *submit_result(rpc_call_t *call, job_t **jobs, size_t n)
{
    json_t *ids = json_array();
    (void)call;
    for (size_t i = 0; ids && i < n; i++)
        json_array_append_new(ids, json_string(jobs[i]->id));
    return ids ? json_pack("{s:o}", "ids", ids) : NULL;
}

static json_t *m_submit(rpc_call_t *call)
{
    sched_t *s = &call->c->ctl->d->sched;
    json_t *arr = json_object_get(call->params, "jobs"), *result = NULL;
    size_t n = json_array_size(arr), decoded = 0;
    job_spec_t *specs;
    job_t **jobs;
    char err[256];
    long bad = -1;
    int rc = 0;

    if (!json_is_array(arr) || n == 0 || n > MAX_SUBMIT) {
        call_error(call, RPC_INVALID_PARAMS, "invalid_params", NULL,
                   "params.jobs: an array of 1 to %d job objects is required", MAX_SUBMIT);
        return NULL;
    }
    specs = mem_calloc(n, sizeof(*specs));
    jobs = mem_calloc(n, sizeof(*jobs));
    if (specs == NULL || jobs == NULL) {
        rc = ERR_NO_MEMORY;
        snprintf(err, sizeof(err), "%s", err_str(rc));
    }
    for (; rc == 0 && decoded < n; decoded++) {
        rc = jobspec_decode(json_array_get(arr, decoded), &specs[decoded], err, sizeof(err));
        if (rc != 0)
            bad = rc == ERR_NO_MEMORY ? -1 : (long)decoded;
    }
    if (rc != 0) {
        /* Decoding failed at `decoded - 1`, which disposed its own spec. */
        for (size_t i = 0; i + 1 < decoded; i++)
            job_spec_dispose(&specs[i]);
    } else {
        rc = sched_submit_many(s, specs, n, jobs, &bad, err, sizeof(err));
        if (rc == 0)
            result = submit_result(call, jobs, n);
    }
    mem_free(specs);
    if (rc == ERR_INVALID_REQUEST && bad >= 0)
        call_error(call, RPC_INVALID_PARAMS, "invalid_request", spec_error_data(bad, err),
                   "job %ld: %s", bad, err);
    else if (rc != 0)
        call_error(call, RPC_SERVER_ERROR, err_name(rc), NULL, "%s", err);
    mem_free(jobs);
    return result;
}

static json_t *m_status(rpc_call_t *call)
{
    job_t *j;
    return param_id(call, &j) == 0 ? jobspec_encode_job(j) : NULL;
}

static json_t *m_cancel(rpc_call_t *call)
{
    json_t *result;
    job_t *j;

    if (param_id(call, &j) != 0)
        return NULL;
    /* The cancelled job finishes inside sched_cancel(), and retention may
     * forget it there (--retain-jobs 0, --retain-seconds 0): hold it until
     * its answer is encoded. */
    job_incref(j);
    sched_cancel(&call->c->ctl->d->sched, j); /* a finished job stays as it is */
    result = jobspec_encode_job(j);
    job_decref(j);
    return result;
}

/* Runs inside the wait's own reference on its client (dropped only when
 * the timer has closed), so a send that drops the client only marks it. */
static void on_wait_timeout(uv_timer_t *t)
{
    ctl_wait_t *w = t->data;
    json_t *err =
        json_pack("{s:i, s:s, s:{s:s}}", "code", RPC_SERVER_ERROR, "message",
                  "the wait timed out before the job finished", "data", "code", "timeout");
    wait_end(w, response(w->id, "error", err));
}

static json_t *m_wait(rpc_call_t *call)
{
    ctl_client_t *c = call->c;
    json_t *tv = json_object_get(call->params, "timeout");
    ctl_wait_t *w;
    size_t id_bytes;
    job_t *j;

    if (param_id(call, &j) != 0)
        return NULL;
    if (tv != NULL && (!json_is_number(tv) || json_number_value(tv) <= 0 ||
                       json_number_value(tv) > 365 * 86400.0)) {
        call_error(call, RPC_INVALID_PARAMS, "invalid_params", NULL,
                   "params.timeout: must be a positive number of seconds");
        return NULL;
    }
    if (job_is_finished(j) || call->id == NULL)
        return jobspec_encode_job(j); /* a notification gets no answer anyway */
    id_bytes = json_dumpb(call->id, NULL, 0, JSON_ENCODE_ANY | JSON_COMPACT);
    if (c->nwaits >= MAX_WAITS_PER_CLIENT) {
        call_error(call, RPC_SERVER_ERROR, "too_many_waits", NULL,
                   "this client already has %d open waits", MAX_WAITS_PER_CLIENT);
        return NULL;
    }
    if (c->wait_bytes + id_bytes > MAX_HELD_BYTES) {
        call_error(call, RPC_SERVER_ERROR, "too_many_waits", NULL,
                   "the request ids of this client's open waits would pass %d bytes",
                   MAX_HELD_BYTES);
        return NULL;
    }
    w = mem_calloc(1, sizeof(*w));
    if (w == NULL) {
        call_error(call, RPC_SERVER_ERROR, "no_memory", NULL, "out of memory");
        return NULL;
    }
    stats_obj_created(c->stats, STATS_OBJ_CTL_WAIT);
    client_incref(c); /* the wait's, dropped when its timer has closed */
    w->client = c;
    w->job = j;
    job_incref(j);
    w->id = json_incref(call->id);
    w->batch = call->batch;
    if (w->batch)
        w->batch->refcnt++; /* the wait's, dropped by wait_end() */
    w->slot = call->slot;
    w->id_bytes = id_bytes;
    c->nwaits++;
    c->wait_bytes += id_bytes;
    uv_timer_init(&c->ctl->d->loop, &w->timer);
    w->timer.data = w;
    if (tv != NULL)
        uv_timer_start(&w->timer, on_wait_timeout, (uint64_t)(json_number_value(tv) * 1000), 0);
    w->cnext = c->waits;
    if (c->waits)
        c->waits->cprev = w;
    c->waits = w;
    w->jnext = j->watchers;
    if (w->jnext)
        w->jnext->jprev = w;
    j->watchers = w;
    call->deferred = 1;
    return NULL;
}

static json_t *m_list(rpc_call_t *call)
{
    sched_t *s = &call->c->ctl->d->sched;
    json_t *sv = json_object_get(call->params, "state");
    json_t *av = json_object_get(call->params, "after");
    json_t *jobs, *next = json_null();
    job_state_t want = JOB_QUEUED;
    long long limit;
    job_t *j = NULL;

    if (sv != NULL && (!json_is_string(sv) || job_state_from_name(json_string_value(sv), &want))) {
        call_error(call, RPC_INVALID_PARAMS, "invalid_params", NULL,
                   "params.state: one of queued, running, done, failed, cancelled");
        return NULL;
    }
    if (param_uint(call, "limit", 100, MAX_LIST, &limit) != 0)
        return NULL;
    if (av != NULL) {
        if (!json_is_string(av)) {
            call_error(call, RPC_INVALID_PARAMS, "invalid_params", NULL,
                       "params.after: a job id string (the \"next\" of the previous page)");
            return NULL;
        }
        j = sched_find(s, json_string_value(av));
        if (j == NULL) {
            call_error(call, RPC_SERVER_ERROR, "cursor_expired", NULL,
                       "job %.40s is no longer retained: list again from the start",
                       json_string_value(av));
            return NULL;
        }
    }
    jobs = json_array();
    while (jobs && (j = sched_next(s, j)) != NULL) {
        if (sv != NULL && j->state != want)
            continue;
        json_array_append_new(jobs, jobspec_encode_job(j));
        if ((long long)json_array_size(jobs) == limit) {
            if (sched_next(s, j) != NULL)
                next = json_string(j->id);
            break;
        }
    }
    return jobs ? json_pack("{s:o, s:o}", "jobs", jobs, "next", next) : NULL;
}

static json_t *m_stats(rpc_call_t *call)
{
    json_t *o = daemon_stats_json(call->c->ctl->d);
    if (o)
        json_object_set_new(o, "control_clients", json_integer(call->c->ctl->nclients));
    return o;
}

static json_t *m_subscribe(rpc_call_t *call)
{
    ctl_client_t *c = call->c;
    json_t *ev = json_object_get(call->params, "events");
    json_t *ids = json_object_get(call->params, "ids"), *v;
    unsigned mask = 0;
    ctl_sub_t *sub;
    size_t i, ids_bytes;

    if (ev == NULL) {
        mask = (1u << (SCHED_EV_FINISHED + 1)) - 1;
    } else if (!json_is_array(ev) || json_array_size(ev) == 0) {
        call_error(call, RPC_INVALID_PARAMS, "invalid_params", NULL,
                   "params.events: a non-empty array of event names");
        return NULL;
    }
    json_array_foreach(ev, i, v)
    {
        int e;
        for (e = 0; e <= SCHED_EV_FINISHED; e++)
            if (json_is_string(v) && strcmp(json_string_value(v), sched_event_name(e)) == 0)
                break;
        if (e > SCHED_EV_FINISHED) {
            call_error(call, RPC_INVALID_PARAMS, "invalid_params", NULL,
                       "params.events[%zu]: one of queued, started, redirected, retrying, "
                       "finished",
                       i);
            return NULL;
        }
        mask |= 1u << e;
    }
    if (ids != NULL) {
        int ok = json_is_array(ids);
        json_array_foreach(ids, i, v) ok = ok && json_is_string(v);
        if (!ok) {
            call_error(call, RPC_INVALID_PARAMS, "invalid_params", NULL,
                       "params.ids: an array of job id strings");
            return NULL;
        }
    }
    if (c->nsubs >= MAX_SUBS_PER_CLIENT) {
        call_error(call, RPC_SERVER_ERROR, "too_many_subscriptions", NULL,
                   "this client already has %d subscriptions", MAX_SUBS_PER_CLIENT);
        return NULL;
    }
    ids_bytes = ids ? json_dumpb(ids, NULL, 0, JSON_COMPACT) : 0;
    if (c->sub_bytes + ids_bytes > MAX_HELD_BYTES) {
        call_error(call, RPC_SERVER_ERROR, "too_many_subscriptions", NULL,
                   "the id lists of this client's subscriptions would pass %d bytes",
                   MAX_HELD_BYTES);
        return NULL;
    }
    sub = mem_calloc(1, sizeof(*sub));
    if (sub == NULL) {
        call_error(call, RPC_SERVER_ERROR, "no_memory", NULL, "out of memory");
        return NULL;
    }
    stats_obj_created(c->stats, STATS_OBJ_CTL_SUB);
    sub->id = ++c->ctl->next_sub;
    sub->events = mask;
    sub->ids = ids ? json_incref(ids) : NULL;
    sub->ids_bytes = ids_bytes;
    sub->next = c->subs;
    c->subs = sub;
    c->nsubs++;
    c->sub_bytes += ids_bytes;
    return json_pack("{s:I}", "subscription", (json_int_t)sub->id);
}

/* Frees a subscription already unlinked from c->subs. */
static void sub_free(ctl_client_t *c, ctl_sub_t *sub)
{
    assert(c->nsubs > 0 && c->sub_bytes >= sub->ids_bytes);
    c->nsubs--;
    c->sub_bytes -= sub->ids_bytes;
    json_decref(sub->ids);
    mem_free(sub);
    stats_obj_destroyed(c->stats, STATS_OBJ_CTL_SUB);
}

static json_t *m_unsubscribe(rpc_call_t *call)
{
    ctl_client_t *c = call->c;
    json_t *v = json_object_get(call->params, "subscription");
    ctl_sub_t **pp;

    if (!json_is_integer(v)) {
        call_error(call, RPC_INVALID_PARAMS, "invalid_params", NULL,
                   "params.subscription: the number subscribe returned");
        return NULL;
    }
    for (pp = &c->subs; *pp; pp = &(*pp)->next) {
        if ((json_int_t)(*pp)->id == json_integer_value(v)) {
            ctl_sub_t *sub = *pp;
            *pp = sub->next;
            sub_free(c, sub);
            return json_pack("{s:b}", "ok", 1);
        }
    }
    call_error(call, RPC_SERVER_ERROR, "not_found", NULL, "no subscription %" JSON_INTEGER_FORMAT,
               json_integer_value(v));
    return NULL;
}

static const struct {
    const char *name;
    json_t *(*fn)(rpc_call_t *call);
} methods[] = {
    {"version", m_version}, {"submit", m_submit},       {"status", m_status},
    {"wait", m_wait},       {"cancel", m_cancel},       {"list", m_list},
    {"stats", m_stats},     {"subscribe", m_subscribe}, {"unsubscribe", m_unsubscribe},
};

/* ---- dispatch ------------------------------------------------------------------- */

static int valid_id(const json_t *id)
{
    return id == NULL || json_is_string(id) || json_is_number(id) || json_is_null(id);
}

/* Handles one request object; returns its response (new reference), or
 * NULL for a notification or a deferred wait (*deferred set). The caller
 * holds a reference on c: a method may close it (a send to a slow reader
 * inside an event fan-out), which only marks it. */
static json_t *handle_call(ctl_client_t *c, json_t *req, ctl_batch_t *batch, size_t slot,
                           int *deferred)
{
    rpc_call_t call = {c, NULL, NULL, batch, slot, NULL, 0};
    json_t *method, *params, *result = NULL, *empty = NULL, *resp;
    const char *name;
    size_t i;

    *deferred = 0;
    if (c->closing)
        return NULL; /* nobody will read the answer, and no wait may be added */

    if (!json_is_object(req)) {
        json_t *err =
            json_pack("{s:i, s:s, s:{s:s}}", "code", RPC_INVALID_REQUEST, "message",
                      "a request must be a JSON object", "data", "code", "invalid_request");
        return response(NULL, "error", err);
    }
    call.id = json_object_get(req, "id");
    method = json_object_get(req, "method");
    params = json_object_get(req, "params");
    if (!valid_id(call.id)) {
        call.id = NULL;
        call_error(&call, RPC_INVALID_REQUEST, "invalid_request", NULL,
                   "id: must be a string, a number or null");
        return response(NULL, "error", call.error);
    }
    if (!json_is_string(json_object_get(req, "jsonrpc")) ||
        strcmp(json_string_value(json_object_get(req, "jsonrpc")), "2.0") != 0) {
        call_error(&call, RPC_INVALID_REQUEST, "invalid_request", NULL, "jsonrpc: must be \"2.0\"");
    } else if (!json_is_string(method)) {
        call_error(&call, RPC_INVALID_REQUEST, "invalid_request", NULL, "method: must be a string");
    } else if (params != NULL && !json_is_object(params) && !json_is_array(params)) {
        call_error(&call, RPC_INVALID_REQUEST, "invalid_request", NULL,
                   "params: must be an object");
    }
    if (call.error != NULL) {
        /* An invalid request object is answered even without an id: the
         * server cannot tell it was meant as a notification (JSON-RPC 2.0
         * section 5, and the examples of section 7). */
        return response(call.id, "error", call.error);
    }
    /* From here the request is valid: a notification gets no answer,
     * whatever happens (section 4.1). */
    name = json_string_value(method);
    for (i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
        if (strcmp(methods[i].name, name) == 0)
            break;
    if (i == sizeof(methods) / sizeof(methods[0])) {
        call_error(&call, RPC_METHOD_NOT_FOUND, "method_not_found", NULL, "no method \"%.60s\"",
                   name);
    } else if (json_is_array(params)) {
        call_error(&call, RPC_INVALID_PARAMS, "invalid_params", NULL,
                   "params: fetchd takes named parameters (an object)");
    } else {
        call.params = params ? params : (empty = json_object());
        result = methods[i].fn(&call);
    }
    json_decref(empty);
    if (call.deferred) {
        *deferred = 1;
        return NULL;
    }
    if (result == NULL && call.error == NULL)
        call_error(&call, RPC_SERVER_ERROR, "no_memory", NULL, "out of memory");
    if (call.id == NULL) {
        /* A notification: no answer, whatever happened. */
        json_decref(result);
        json_decref(call.error);
        return NULL;
    }
    resp = result ? response(call.id, "result", result) : response(call.id, "error", call.error);
    if (result)
        json_decref(call.error);
    return resp;
}

static void handle_batch(ctl_client_t *c, json_t *arr)
{
    ctl_batch_t *b;
    size_t i, bytes = 0;
    json_t *req;

    if (json_array_size(arr) == 0) {
        send_error(c, RPC_INVALID_REQUEST, "invalid_request", "an empty batch");
        return;
    }
    b = mem_calloc(1, sizeof(*b));
    if (b == NULL || (b->responses = json_array()) == NULL) {
        mem_free(b);
        send_error(c, RPC_SERVER_ERROR, "no_memory", "out of memory");
        return;
    }
    b->client = c;
    b->refcnt = 1; /* this handler's, while the calls run */
    /* The walk over the batch's members: arr is the caller's, b is held by
     * our reference (a wait answered, or dropped by a close, meanwhile only
     * drops its own), and c by the caller's reference. */
    json_array_foreach(arr, i, req)
    {
        size_t slot = json_array_size(b->responses);
        json_t *resp;
        int deferred;

        if (c->closing)
            break;
        if (json_array_append_new(b->responses, json_null()) != 0) {
            client_close(c, "out of memory for a batch");
            break;
        }
        resp = handle_call(c, req, b, slot, &deferred);
        if (resp) {
            bytes += json_dumpb(resp, NULL, 0, JSON_COMPACT);
            json_array_set_new(b->responses, slot, resp);
        } else if (!deferred) {
            json_array_remove(b->responses, slot); /* a notification's place (the last) */
        }
        /* One line of answers bigger than the output limit would drop the
         * client when it is queued anyway; stop before a 1 MiB line of
         * `list` calls builds gigabytes of answers. */
        if (bytes > c->ctl->max_output)
            client_close(c, "slow reader: a batch's answer is over the output limit");
    }
    batch_decref(b, 0, NULL);
}

static int blank(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r')
            return 0;
    return 1;
}

static void handle_line(ctl_client_t *c, const char *p, size_t n)
{
    json_error_t jerr;
    json_t *v;

    if (blank(p, n))
        return;
    v = json_loadb(p, n, JSON_DECODE_ANY, &jerr);
    if (v == NULL) {
        send_error(c, RPC_PARSE_ERROR, "parse_error", "parse error at column %d: %s", jerr.column,
                   jerr.text);
        return;
    }
    if (json_is_array(v)) {
        handle_batch(c, v);
    } else {
        int deferred;
        send_json(c, handle_call(c, v, NULL, 0, &deferred));
    }
    json_decref(v);
}

/* ---- reading -------------------------------------------------------------------- */

static void line_too_long(ctl_client_t *c)
{
    send_error(c, RPC_INVALID_REQUEST, "line_too_long",
               "a line longer than %zu bytes: closing the connection", c->ctl->max_line);
    uv_read_stop((uv_stream_t *)&c->pipe);
    c->close_after_flush = 1;
    strbuf_dispose(&c->line);
    if (c->writes == 0)
        client_close(c, NULL);
}

/* Empties the partial-line buffer; a large one goes back to the heap, so
 * that an idle client does not keep up to max_line bytes. */
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
    while (n > 0 && !c->closing && !c->close_after_flush) {
        const char *nl = memchr(p, '\n', n);
        size_t take = nl ? (size_t)(nl - p) : n;

        if (c->line.len + take > c->ctl->max_line) {
            line_too_long(c);
            return;
        }
        if (nl && c->line.len == 0) {
            handle_line(c, p, take);
        } else {
            if (strbuf_append(&c->line, p, take) != 0) {
                client_close(c, "out of memory for a request line");
                return;
            }
            if (nl) {
                handle_line(c, c->line.p, c->line.len);
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
        handle_line(c, c->line.p, c->line.len);
        line_done(c);
    }
    c->eof = 1;
    uv_read_stop((uv_stream_t *)&c->pipe);
    /* Both look like EOF to read(); only a peer gone for good sets POLLHUP
     * on a Unix socket. Such a client is owed nothing any more. */
    if (!c->closing && (peer_gone(c) || (c->writes == 0 && owes_nothing(c))))
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
    if (n > 0)
        on_bytes(c, b->data, (size_t)n);
    else if (n == UV_EOF)
        half_closed(c);
    else if (n < 0)
        client_close(c, n == UV_ECONNRESET ? NULL : uv_strerror((int)n));
    if (b)
        buf_decref(b);
    client_decref(c);
}

/* ---- connections ---------------------------------------------------------------- */

static void client_close(ctl_client_t *c, const char *why)
{
    if (c->closing)
        return;
    client_incref(c);
    c->closing = 1;
    if (why)
        log_warn("control: dropping a client: %s", why);
    /* Each wait_end() unlinks the head, so this walk never meets a wait
     * twice. The subscriptions stay until the client is freed: an event
     * fan-out may be walking them right now (this close may come from one
     * of its sends), and a closing client gets no events anyway. */
    while (c->waits)
        wait_end(c->waits, NULL);
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
        log_info("control: client connected (pid %d, uid %u, gid %u)", (int)cred.pid,
                 (unsigned)cred.uid, (unsigned)cred.gid);
    else
        log_info("control: client connected (credentials unknown)");
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

static void on_connection(uv_stream_t *server, int status)
{
    control_t *ctl = server->data;
    ctl_client_t *c;

    if (status != 0 || ctl->closing) {
        log_warn("control: accept failed: %s", uv_strerror(status));
        return;
    }
    c = mem_calloc(1, sizeof(*c));
    if (c == NULL) {
        log_error("control: out of memory for a client");
        reject_pending(ctl);
        return;
    }
    c->ctl = ctl;
    c->stats = &ctl->d->stats;
    c->refcnt = 1; /* the handle's */
    stats_obj_created(c->stats, STATS_OBJ_CTL_CLIENT);
    uv_pipe_init(&ctl->d->loop, &c->pipe, 0);
    c->pipe.data = c;
    c->next = ctl->clients;
    if (ctl->clients)
        ctl->clients->prev = c;
    ctl->clients = c;
    ctl->nclients++;
    if (uv_accept(server, (uv_stream_t *)&c->pipe) != 0) {
        client_close(c, "accept failed");
        return;
    }
    log_peer(c);
    ctl->max_clients = ctl->d->cfg.max_clients; /* SIGHUP may have changed it */
    if (ctl->nclients > ctl->max_clients) {
        send_error(c, RPC_SERVER_ERROR, "too_many_clients",
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

static int sub_wants(const ctl_sub_t *sub, const job_t *j, sched_event_t ev)
{
    size_t i;
    json_t *v;

    if (!(sub->events & (1u << ev)))
        return 0;
    if (sub->ids == NULL)
        return 1;
    json_array_foreach(sub->ids, i, v) if (strcmp(json_string_value(v), j->id) == 0) return 1;
    return 0;
}

/* Sends c the event to each of its subscriptions that wants it; *job is
 * the encoded job, made on first use and shared by every notification. */
static void notify_client(ctl_client_t *c, job_t *j, sched_event_t ev, json_t **job)
{
    /* The walk over c's subscriptions: a send may close c (a slow reader),
     * which stops the walk but frees no subscription (they go with the
     * client's memory, and the caller holds a reference on c). */
    for (ctl_sub_t *sub = c->subs; sub && !c->closing; sub = sub->next) {
        if (!sub_wants(sub, j, ev))
            continue;
        if (*job == NULL && (*job = jobspec_encode_job(j)) == NULL) {
            client_close(c, "out of memory for an event");
            return;
        }
        send_json(c, json_pack("{s:s, s:s, s:{s:I, s:s, s:O}}", "jsonrpc", "2.0", "method", "event",
                               "params", "subscription", (json_int_t)sub->id, "event",
                               sched_event_name(ev), "job", *job));
    }
}

void control_on_event(sched_t *s, job_t *j, sched_event_t ev, void *data)
{
    control_t *ctl = data;
    json_t *job = NULL;
    ctl_client_t *c, *next;

    (void)s;
    /* The walk over the job's waits: wait_end() unlinks the head before it
     * sends, and a send that closes its client ends (and unlinks) that
     * client's other waits too, so re-reading the head is always safe. The
     * scheduler holds a reference on j for the whole event. */
    if (ev == SCHED_EV_FINISHED) {
        while (j->watchers) {
            ctl_wait_t *w = j->watchers;
            wait_end(w, response(w->id, "result", jobspec_encode_job(j)));
        }
    }
    /* The walk over the clients: each is held by a reference while it is
     * sent to, and a client leaves the list only when its last reference
     * goes, so c->next is read from a live, listed client. */
    for (c = ctl->clients; c; c = next) {
        client_incref(c);
        if (!c->closing)
            notify_client(c, j, ev, &job);
        next = c->next;
        client_decref(c);
    }
    json_decref(job);
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
    ctl->listening = 1;
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
    ctl->listening = 1;
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
    uv_close((uv_handle_t *)&ctl->server, NULL);
    if (ctl->path) {
        /* A socket systemd passed is systemd's to remove. */
        unlink(ctl->path);
        mem_free(ctl->path);
        ctl->path = NULL;
    }
}
