/* methods — the control protocol's methods; see methods.h and proto/PROTOCOL.md §5. */
#include "methods.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

#include "err.h"
#include "jobjson.h"
#include "jobspec.h"
#include "mem.h"

#define PROTOCOL_VERSION 1
/* Jobs per submit call: with the shortest specs about 50,000 would fit in
 * a 1 MiB line, so the line limit alone would not bound the work one call
 * does in one loop turn; 10,000 is always reachable within the line for
 * specs of up to about 100 bytes. */
#define MAX_SUBMIT 10000
#define MAX_LIST   1000
/* Per client: an open wait costs about 290 bytes and a timer, a
 * subscription is walked on every job event. */
#define MAX_WAITS_PER_CLIENT 10000
#define MAX_SUBS_PER_CLIENT  64
/* Per client, the request ids its open waits keep, and the job id lists
 * its subscriptions keep, each at most this many bytes (as JSON): without
 * it, 10,000 waits with 1 MiB ids would hold 10 GiB. */
#define MAX_HELD_BYTES (1024 * 1024)

/* An open `wait`: answered when its job finishes, its timeout passes or
 * its client goes. */
struct methods_wait {
    methods_session_t *s;          /* borrowed: the wait holds a reference on its owner */
    job_t *job;                    /* owned reference */
    rpc_defer_t answer;            /* the request id and batch slot it answers */
    size_t id_bytes;               /* the id's size as JSON, counted in s->wait_bytes */
    uv_timer_t timer;              /* the wait's own timeout; memory freed in its close callback */
    methods_wait_t *cprev, *cnext; /* the session's waits; cnext links its slab's free ones */
    methods_wait_t *jprev, *jnext; /* the job's watchers */
    methods_wait_slab_t *slab;     /* borrowed: where its memory is */
};

/* Waits come in slabs: `fetchctl submit --wait` opens one per job, and a
 * slab makes that one allocation per WAITS_PER_SLAB waits instead of one
 * per wait. A slab is freed as soon as its last wait is, so a daemon with
 * no open wait holds none. */
#define WAITS_PER_SLAB 32

struct methods_wait_slab {
    methods_wait_slab_t *prev, *next; /* the server's slabs that have a free wait */
    methods_wait_t *free;             /* waits given back, linked by cnext */
    unsigned used;                    /* waits given out */
    unsigned fresh;                   /* rec[fresh..] were never given out */
    methods_wait_t rec[WAITS_PER_SLAB];
};

/* One subscription; the session owns it. One that includes progress
 * events is counted in the jobs' environment (env.progress_subs) from
 * its creation to sub_free(). */
struct methods_sub {
    uint64_t id;
    unsigned events;  /* bit per sched_event_t */
    json_t *ids;      /* owned: job ids to follow, or NULL for all */
    size_t ids_bytes; /* its size as JSON, counted in s->sub_bytes */
    methods_sub_t *next;
};

static methods_session_t *sess(const rpc_call_t *call)
{
    return call->peer->data;
}

/* ---- waits ---------------------------------------------------------------------- */

static void slab_unlink(methods_t *m, methods_wait_slab_t *sl)
{
    if (sl->prev)
        sl->prev->next = sl->next;
    else
        m->slabs = sl->next;
    if (sl->next)
        sl->next->prev = sl->prev;
    sl->prev = sl->next = NULL;
}

static void slab_link(methods_t *m, methods_wait_slab_t *sl)
{
    sl->prev = NULL;
    sl->next = m->slabs;
    if (m->slabs)
        m->slabs->prev = sl;
    m->slabs = sl;
}

/* A zeroed wait from a slab with room (a new one if none has), or NULL
 * without memory. */
static methods_wait_t *wait_alloc(methods_t *m)
{
    methods_wait_slab_t *sl = m->slabs;
    methods_wait_t *w;

    if (sl == NULL) {
        sl = mem_alloc(sizeof(*sl));
        if (sl == NULL)
            return NULL;
        sl->free = NULL;
        sl->used = sl->fresh = 0;
        slab_link(m, sl);
    }
    if (sl->free != NULL) {
        w = sl->free;
        sl->free = w->cnext;
    } else {
        w = &sl->rec[sl->fresh++];
    }
    if (++sl->used == WAITS_PER_SLAB)
        slab_unlink(m, sl); /* full: back on the list when one of its waits goes */
    memset(w, 0, sizeof(*w));
    w->slab = sl;
    return w;
}

/* Gives w back to its slab, and frees the slab if it was its last wait. */
static void wait_release(methods_t *m, methods_wait_t *w)
{
    methods_wait_slab_t *sl = w->slab;

    assert(sl->used > 0);
    if (sl->used-- == WAITS_PER_SLAB)
        slab_link(m, sl);
    if (sl->used == 0) {
        slab_unlink(m, sl);
        mem_free(sl);
        return;
    }
    w->cnext = sl->free;
    sl->free = w;
}

static void on_wait_closed(uv_handle_t *h)
{
    methods_wait_t *w = h->data;
    methods_session_t *s = w->s;
    rpc_peer_t *peer = s->peer;

    stats_obj_destroyed(s->stats, STATS_OBJ_CTL_WAIT);
    wait_release(s->m, w);
    peer->ops->decref(peer); /* the wait's; may free the session */
}

/* Unlinks and releases a wait; {key: value} (value stolen, NULL: none) is
 * its answer, sent alone or as its batch's slot. The wait is off both
 * lists before anything is sent, so a send that closes the client (which
 * ends the client's other waits) cannot reach it again; its memory, and its
 * reference on the client, go only when its timer has closed. */
static void write_job(jsonw_t *w, const void *job)
{
    jobjson_write(w, job);
}

/* Ends the wait with {key: value}, or, with key NULL, with its job as the
 * result (written straight into its line or its batch's slot). */
static void wait_end(methods_wait_t *w, const char *key, json_t *value)
{
    methods_session_t *s = w->s;
    job_t *j = w->job;

    assert(s->nwaits > 0 && s->wait_bytes >= w->id_bytes);
    s->nwaits--;
    s->wait_bytes -= w->id_bytes;
    if (w->cprev)
        w->cprev->cnext = w->cnext;
    else
        s->waits = w->cnext;
    if (w->cnext)
        w->cnext->cprev = w->cprev;
    if (w->jprev)
        w->jprev->jnext = w->jnext;
    else
        j->watchers = w->jnext;
    if (w->jnext)
        w->jnext->jprev = w->jprev;
    if (key != NULL)
        rpc_defer_end(&w->answer, key, value);
    else
        rpc_defer_end_written(&w->answer, write_job, j);
    uv_close((uv_handle_t *)&w->timer, on_wait_closed);
    job_decref(j);
}

/* Runs inside the wait's own reference on its client (dropped only when
 * the timer has closed), so a send that drops the client only marks it. */
static void on_wait_timeout(uv_timer_t *t)
{
    methods_wait_t *w = t->data;
    json_t *err =
        json_pack("{s:i, s:s, s:{s:s}}", "code", RPC_SERVER_ERROR, "message",
                  "the wait timed out before the job finished", "data", "code", "timeout");
    wait_end(w, "error", err);
}

/* Registers an open wait for call on j; the checks are done. */
static int wait_create(rpc_call_t *call, job_t *j, double timeout, size_t id_bytes)
{
    methods_session_t *s = sess(call);
    methods_wait_t *w = wait_alloc(s->m);

    if (w == NULL)
        return -1;
    if (rpc_defer(call, &w->answer) != 0) { /* holds the id, and a reference on the batch */
        wait_release(s->m, w);
        return -1;
    }
    stats_obj_created(s->stats, STATS_OBJ_CTL_WAIT);
    s->peer->ops->incref(s->peer); /* the wait's, dropped when its timer has closed */
    w->s = s;
    w->job = j;
    job_incref(j);
    w->id_bytes = id_bytes;
    s->nwaits++;
    s->wait_bytes += id_bytes;
    uv_timer_init(&s->m->d->loop, &w->timer);
    w->timer.data = w;
    if (timeout > 0)
        uv_timer_start(&w->timer, on_wait_timeout, (uint64_t)(timeout * 1000), 0);
    w->cnext = s->waits;
    if (s->waits)
        s->waits->cprev = w;
    s->waits = w;
    w->jnext = j->watchers;
    if (w->jnext)
        w->jnext->jprev = w;
    j->watchers = w;
    return 0;
}

void methods_job_finished(job_t *j)
{
    /* The walk over the job's waits: wait_end() unlinks the head before it
     * sends, and a send that closes its client ends (and unlinks) that
     * client's other waits too, so re-reading the head is always safe. The
     * caller holds a reference on j for the whole walk. */
    while (j->watchers) {
        methods_wait_t *w = j->watchers;
        wait_end(w, NULL, NULL);
    }
}

/* ---- subscriptions -------------------------------------------------------------- */

/* Frees a subscription already unlinked from s->subs. */
static void sub_free(methods_session_t *s, methods_sub_t *sub)
{
    assert(s->nsubs > 0 && s->sub_bytes >= sub->ids_bytes);
    if (sub->events & (1u << SCHED_EV_PROGRESS))
        s->m->d->sched.env.progress_subs--; /* no subscriber left: jobs send none */
    s->nsubs--;
    s->sub_bytes -= sub->ids_bytes;
    json_decref(sub->ids);
    mem_free(sub);
    stats_obj_destroyed(s->stats, STATS_OBJ_CTL_SUB);
}

static int sub_wants(const methods_sub_t *sub, const job_t *j, sched_event_t ev)
{
    size_t i;
    json_t *v;

    if (!(sub->events & (1u << ev)))
        return 0;
    if (sub->ids == NULL)
        return 1;
    json_array_foreach (sub->ids, i, v)
        if (strcmp(json_string_value(v), j->id) == 0)
            return 1;
    return 0;
}

/* The event's line for one subscription: the envelope around the job's
 * text, which is written once per event and copied into every line. */
static void write_event(jsonw_t *w, uint64_t sub_id, sched_event_t ev, const strbuf_t *job)
{
    jsonw_object_begin(w);
    jsonw_key(w, "jsonrpc");
    jsonw_string(w, "2.0");
    jsonw_key(w, "method");
    jsonw_string(w, "event");
    jsonw_key(w, "params");
    jsonw_object_begin(w);
    jsonw_key(w, "subscription");
    jsonw_uint(w, sub_id);
    jsonw_key(w, "event");
    jsonw_string(w, sched_event_name(ev));
    jsonw_key(w, "job");
    jsonw_raw(w, job->p, job->len);
    jsonw_object_end(w);
    jsonw_object_end(w);
}

/* A job object's text fits in this from the start (about 600 bytes for a
 * plain fetch), so it is not grown twice on its way. */
#define EVENT_JOB_GUESS 1024

void methods_notify(methods_session_t *s, job_t *j, sched_event_t ev, strbuf_t *job)
{
    rpc_peer_t *peer = s->peer;

    /* The walk over the subscriptions: a send may close the client (a slow
     * reader), which stops the walk but frees no subscription (they go
     * only in methods_session_dispose(), with the client's last reference,
     * and the caller holds one). */
    for (methods_sub_t *sub = s->subs; sub && !peer->closing; sub = sub->next) {
        strbuf_t line = {0}, *out = NULL;
        jsonw_t w;

        if (!sub_wants(sub, j, ev))
            continue;
        if (job->len == 0) {
            strbuf_reserve(job, EVENT_JOB_GUESS); /* one allocation, not three */
            jsonw_init(&w, job);
            jobjson_write(&w, j);
        }
        if (job->failed) {
            peer->ops->drop(peer, "out of memory for an event");
            return;
        }
        /* Straight into the client's pending output where the owner
         * offers it (no line of its own, no copy). */
        if (peer->ops->line_begin != NULL)
            out = peer->ops->line_begin(peer);
        if (out == NULL) {
            strbuf_reserve(&line, job->len + 128);
            out = &line;
        }
        jsonw_init(&w, out);
        write_event(&w, sub->id, ev, job);
        if (out != &line)
            peer->ops->line_end(peer, out);
        else
            peer->ops->send_text(peer, &line);
    }
}

/* ---- sessions ------------------------------------------------------------------- */

void methods_init(methods_t *m, daemon_t *d, const unsigned *nclients)
{
    memset(m, 0, sizeof(*m));
    m->d = d;
    m->nclients = nclients;
}

void methods_session_close(methods_session_t *s)
{
    /* Each wait_end() unlinks the head, so this walk never meets a wait
     * twice. The subscriptions stay: an event fan-out may be walking them
     * right now (this close may come from one of its sends), and a closing
     * client gets no events anyway. */
    while (s->waits)
        wait_end(s->waits, NULL, NULL);
}

void methods_session_dispose(methods_session_t *s)
{
    while (s->subs) {
        methods_sub_t *sub = s->subs;
        s->subs = sub->next;
        sub_free(s, sub);
    }
}

int methods_session_idle(const methods_session_t *s)
{
    return s->waits == NULL && s->subs == NULL;
}

/* ---- params --------------------------------------------------------------------- */

static int is_type(const jsonr_t *r, uint32_t v, jsonr_type_t t)
{
    return v != JSONR_NONE && jsonr_type(r, v) == t;
}

/* The job whose id is the string v, or NULL (after answering the error). */
static job_t *find_job(rpc_call_t *call, uint32_t v)
{
    char id[64];
    size_t len;
    const char *s = jsonr_str(call->r, v, &len);
    job_t *j = NULL;

    if (len < sizeof(id)) { /* a longer one is no job's */
        memcpy(id, s, len);
        id[len] = '\0';
        j = sched_find(&sess(call)->m->d->sched, id);
    }
    if (j == NULL)
        rpc_call_error(call, RPC_SERVER_ERROR, "not_found", NULL, "no job with id \"%.*s\"",
                       (int)(len < 40 ? len : 40), s);
    return j;
}

/* The string v, NUL-terminated, into buf; -1 if it is no string or does
 * not fit. */
static int copy_str(const jsonr_t *r, uint32_t v, char *buf, size_t size)
{
    size_t len;
    const char *s = v != JSONR_NONE ? jsonr_str(r, v, &len) : NULL;

    if (s == NULL || len >= size)
        return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    return 0;
}

static int param_id(rpc_call_t *call, job_t **out)
{
    uint32_t v = rpc_param(call, "id");

    if (!is_type(call->r, v, JSONR_STRING)) {
        rpc_call_error(call, RPC_INVALID_PARAMS, "invalid_params", NULL,
                       "params.id: a job id string is required");
        return -1;
    }
    *out = find_job(call, v);
    return *out != NULL ? 0 : -1;
}

/* An optional positive integer param within [1, max]; def when absent. */
static int param_uint(rpc_call_t *call, const char *key, long long def, long long max,
                      long long *out)
{
    uint32_t v = rpc_param(call, key);

    if (v == JSONR_NONE) {
        *out = def;
        return 0;
    }
    if (jsonr_int(call->r, v, out) != 0 || *out < 1 || *out > max) {
        rpc_call_error(call, RPC_INVALID_PARAMS, "invalid_params", NULL,
                       "params.%s: must be an integer from 1 to %lld", key, max);
        return -1;
    }
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

/* Answers the call with j's job object, written straight into its line. */
static json_t *written_job(rpc_call_t *call, const job_t *j)
{
    jsonw_t w;

    if (call->id != NULL) { /* a notification's answer is never sent */
        rpc_result_begin(call, &w);
        jobjson_write(&w, j);
    }
    return NULL;
}

/* {"ids": [...]}, written straight into the call's line. */
static void submit_result(rpc_call_t *call, job_t **jobs, size_t n)
{
    jsonw_t w;

    if (call->id == NULL)
        return;
    rpc_result_begin(call, &w);
    jsonw_object_begin(&w);
    jsonw_key(&w, "ids");
    jsonw_array_begin(&w);
    for (size_t i = 0; i < n; i++) {
        /* A submitted job's id is the scheduler's 16 hex digits: nothing
         * to escape, so it goes out quoted as it is. */
        char quoted[sizeof(jobs[i]->id) + 2];
        size_t len = strlen(jobs[i]->id);
        quoted[0] = '"';
        memcpy(quoted + 1, jobs[i]->id, len);
        quoted[len + 1] = '"';
        jsonw_raw(&w, quoted, len + 2);
    }
    jsonw_array_end(&w);
    jsonw_object_end(&w);
}

/* The longest URL a submitted job's spec borrows from the batch's room
 * instead of a heap copy of its own (a longer one is copied). */
#define SUBMIT_URL_ROOM 2048

/* The jobs of one submit call, decoded one at a time for sched_submit_each():
 * each spec's url lies in room until its job_create() has shared or copied
 * it, so one room serves the whole batch. */
typedef struct submit_src {
    const jsonr_t *r; /* borrowed: the call's parsed line */
    uint32_t v;       /* the next job object */
    char room[SUBMIT_URL_ROOM];
} submit_src_t;

static int next_spec(void *data, size_t k, job_spec_t *spec, char *err, size_t errlen)
{
    submit_src_t *src = data;
    uint32_t v = src->v;

    (void)k;
    src->v = jsonr_next(src->r, v);
    return jobspec_decode_lent(src->r, v, spec, src->room, sizeof(src->room), err, errlen);
}

static json_t *m_submit(rpc_call_t *call)
{
    sched_t *s = &sess(call)->m->d->sched;
    uint32_t arr = rpc_param(call, "jobs");
    size_t n = arr != JSONR_NONE ? jsonr_count(call->r, arr) : 0;
    submit_src_t src;
    job_t **jobs;
    char err[256];
    long bad = -1;
    int rc;

    if (!is_type(call->r, arr, JSONR_ARRAY) || n == 0 || n > MAX_SUBMIT) {
        rpc_call_error(call, RPC_INVALID_PARAMS, "invalid_params", NULL,
                       "params.jobs: an array of 1 to %d job objects is required", MAX_SUBMIT);
        return NULL;
    }
    /* The specs go straight into their jobs: only the jobs' pointers are
     * kept for the answer. */
    jobs = mem_alloc(n * sizeof(*jobs));
    if (jobs == NULL) {
        rc = ERR_NO_MEMORY;
        snprintf(err, sizeof(err), "%s", err_str(rc));
    } else {
        src.r = call->r;
        src.v = jsonr_first(call->r, arr);
        rc = sched_submit_each(s, n, next_spec, &src, jobs, &bad, err, sizeof(err));
    }
    if (rc == 0)
        submit_result(call, jobs, n);
    else if (rc == ERR_INVALID_REQUEST && bad >= 0)
        rpc_call_error(call, RPC_INVALID_PARAMS, "invalid_request", spec_error_data(bad, err),
                       "job %ld: %s", bad, err);
    else
        rpc_call_error(call, RPC_SERVER_ERROR, err_name(rc), NULL, "%s", err);
    mem_free(jobs);
    return NULL;
}

static json_t *m_status(rpc_call_t *call)
{
    job_t *j;
    return param_id(call, &j) == 0 ? written_job(call, j) : NULL;
}

static json_t *m_cancel(rpc_call_t *call)
{
    job_t *j;

    if (param_id(call, &j) != 0)
        return NULL;
    /* The cancelled job finishes inside sched_cancel(), and retention may
     * forget it there (--retain-jobs 0, --retain-seconds 0): hold it until
     * its answer is written. */
    job_incref(j);
    sched_cancel(&sess(call)->m->d->sched, j); /* a finished job stays as it is */
    written_job(call, j);
    job_decref(j);
    return NULL;
}

/* ---- pause, resume, set: by id or by ids ----------------------------------------- */

/* What pause, resume and set do to one job: 0, or an error with errmsg. */
typedef int (*job_action_fn)(sched_t *s, job_t *j, const void *arg, char *errmsg, size_t errlen);

/* The jobs a call names: params.id (one job, answered with its job object)
 * or params.ids (1 to MAX_LIST jobs, answered with {"jobs": [...]}). Every
 * id is looked up before any job is touched, so an unknown one changes
 * nothing. Returns the number of jobs (borrowed into jobs[]) or -1 after
 * answering the error; *single says which form the call used. */
static long param_jobs(rpc_call_t *call, job_t **jobs, int *single)
{
    uint32_t ids = rpc_param(call, "ids"), v;
    size_t i = 0, n = ids != JSONR_NONE ? jsonr_count(call->r, ids) : 0;

    *single = ids == JSONR_NONE;
    if (*single)
        return param_id(call, &jobs[0]) == 0 ? 1 : -1;
    if (rpc_param(call, "id") != JSONR_NONE || !is_type(call->r, ids, JSONR_ARRAY) || n == 0 ||
        n > MAX_LIST) {
        rpc_call_error(call, RPC_INVALID_PARAMS, "invalid_params", NULL,
                       "params.ids: an array of 1 to %d job id strings (or params.id alone)",
                       MAX_LIST);
        return -1;
    }
    for (v = jsonr_first(call->r, ids); v != JSONR_NONE; v = jsonr_next(call->r, v), i++) {
        if (!is_type(call->r, v, JSONR_STRING)) {
            rpc_call_error(call, RPC_INVALID_PARAMS, "invalid_params", NULL,
                           "params.ids[%zu]: a job id string", i);
            return -1;
        }
        jobs[i] = find_job(call, v);
        if (jobs[i] == NULL)
            return -1;
    }
    return (long)n;
}

/* Applies act to the jobs the call names, in order, and answers with their
 * job objects. The first job that refuses (a finished one, say) stops the
 * call with a `finished` or `invalid_request` error; the jobs before it
 * were changed. */
static json_t *by_jobs(rpc_call_t *call, job_action_fn act, const void *arg)
{
    sched_t *s = &sess(call)->m->d->sched;
    job_t *one, **jobs = &one;
    json_t *list = NULL, *result = NULL;
    char err[256];
    int single, rc = 0;
    long n, i;

    uint32_t ids = rpc_param(call, "ids");

    if (ids != JSONR_NONE && jsonr_count(call->r, ids) > 1 &&
        (jobs = mem_calloc(MAX_LIST, sizeof(*jobs))) == NULL) {
        rpc_call_error(call, RPC_SERVER_ERROR, "no_memory", NULL, "out of memory");
        return NULL;
    }
    n = param_jobs(call, jobs, &single);
    for (i = 0; i < n; i++)
        job_incref(jobs[i]); /* a job may finish, and leave retention, in act */
    for (i = 0; i < n && rc == 0; i++)
        rc = act(s, jobs[i], arg, err, sizeof(err));
    if (rc != 0)
        rpc_call_error(call, RPC_SERVER_ERROR,
                       job_is_cancellable(jobs[i - 1]) ? err_name(rc) : "finished", NULL, "%s",
                       err);
    else if (single && n == 1)
        result = jobspec_encode_job(jobs[0]);
    else if (n > 0 && (list = json_array()) != NULL)
        for (i = 0; i < n; i++)
            json_array_append_new(list, jobspec_encode_job(jobs[i]));
    if (list != NULL)
        result = json_pack("{s:o}", "jobs", list);
    for (i = 0; i < n; i++)
        job_decref(jobs[i]);
    if (jobs != &one)
        mem_free(jobs);
    return result;
}

static int act_pause(sched_t *s, job_t *j, const void *arg, char *errmsg, size_t errlen)
{
    (void)arg;
    return sched_pause(s, j, errmsg, errlen);
}

static int act_resume(sched_t *s, job_t *j, const void *arg, char *errmsg, size_t errlen)
{
    (void)arg;
    return sched_resume(s, j, errmsg, errlen);
}

/* The changes of a set call, decoded once for all its jobs. */
typedef struct set_changes {
    job_spec_t to;
    unsigned which;
} set_changes_t;

static int act_set(sched_t *s, job_t *j, const void *arg, char *errmsg, size_t errlen)
{
    const set_changes_t *c = arg;
    return sched_set(s, j, &c->to, c->which, errmsg, errlen);
}

static json_t *m_pause(rpc_call_t *call)
{
    return by_jobs(call, act_pause, NULL);
}

static json_t *m_resume(rpc_call_t *call)
{
    return by_jobs(call, act_resume, NULL);
}

static json_t *m_set(rpc_call_t *call)
{
    set_changes_t c;
    char err[256];
    json_t *result, *none = NULL;
    int rc;

    memset(&c, 0, sizeof(c));
    /* No params at all: decoded as an empty object, which the decoder
     * refuses in its own words. */
    if (call->params == JSONR_NONE && (none = json_object()) == NULL) {
        rpc_call_error(call, RPC_SERVER_ERROR, "no_memory", NULL, "out of memory");
        return NULL;
    }
    if (none != NULL)
        rc = jobspec_decode_set(none, &c.to, &c.which, err, sizeof(err));
    else
        rc = jobspec_decode_set_r(call->r, call->params, &c.to, &c.which, err, sizeof(err));
    json_decref(none);
    if (rc != 0) {
        const char *colon = strstr(err, ": ");
        json_t *data = json_pack("{s:s}", "message", err);
        if (data && colon)
            json_object_set_new(data, "field", json_stringn(err, (size_t)(colon - err)));
        rpc_call_error(call, RPC_INVALID_PARAMS, "invalid_params", data, "%s", err);
        job_spec_dispose(&c.to);
        return NULL;
    }
    result = by_jobs(call, act_set, &c);
    job_spec_dispose(&c.to);
    return result;
}

/* Whether the session may hold one more wait whose id takes id_bytes. */
static int wait_allowed(rpc_call_t *call, size_t id_bytes)
{
    const methods_session_t *s = sess(call);

    if (s->nwaits >= MAX_WAITS_PER_CLIENT) {
        rpc_call_error(call, RPC_SERVER_ERROR, "too_many_waits", NULL,
                       "this client already has %d open waits", MAX_WAITS_PER_CLIENT);
        return 0;
    }
    if (s->wait_bytes + id_bytes > MAX_HELD_BYTES) {
        rpc_call_error(call, RPC_SERVER_ERROR, "too_many_waits", NULL,
                       "the request ids of this client's open waits would pass %d bytes",
                       MAX_HELD_BYTES);
        return 0;
    }
    return 1;
}

static json_t *m_wait(rpc_call_t *call)
{
    uint32_t tv = rpc_param(call, "timeout");
    double timeout = 0;
    job_t *j;

    if (param_id(call, &j) != 0)
        return NULL;
    if (tv != JSONR_NONE &&
        (jsonr_number(call->r, tv, &timeout) != 0 || timeout <= 0 || timeout > 365 * 86400.0)) {
        rpc_call_error(call, RPC_INVALID_PARAMS, "invalid_params", NULL,
                       "params.timeout: must be a positive number of seconds");
        return NULL;
    }
    if (job_is_finished(j) || call->id == NULL)
        return written_job(call, j); /* a notification gets no answer anyway */
    if (!wait_allowed(call, call->id_len))
        return NULL;
    if (wait_create(call, j, timeout, call->id_len) != 0)
        rpc_call_error(call, RPC_SERVER_ERROR, "no_memory", NULL, "out of memory");
    return NULL;
}

static json_t *m_list(rpc_call_t *call)
{
    sched_t *s = &sess(call)->m->d->sched;
    uint32_t sv = rpc_param(call, "state"), av = rpc_param(call, "after");
    json_t *jobs, *next = json_null();
    job_state_t want = JOB_QUEUED;
    char name[16];
    long long limit;
    job_t *j = NULL;

    if (sv != JSONR_NONE &&
        (copy_str(call->r, sv, name, sizeof(name)) != 0 || job_state_from_name(name, &want))) {
        rpc_call_error(call, RPC_INVALID_PARAMS, "invalid_params", NULL,
                       "params.state: one of queued, running, done, failed, cancelled");
        return NULL;
    }
    if (param_uint(call, "limit", 100, MAX_LIST, &limit) != 0)
        return NULL;
    if (av != JSONR_NONE) {
        char id[64];
        size_t len = 0;
        const char *text = jsonr_str(call->r, av, &len);

        if (!is_type(call->r, av, JSONR_STRING)) {
            rpc_call_error(call, RPC_INVALID_PARAMS, "invalid_params", NULL,
                           "params.after: a job id string (the \"next\" of the previous page)");
            return NULL;
        }
        if (copy_str(call->r, av, id, sizeof(id)) == 0)
            j = sched_find(s, id);
        if (j == NULL) {
            rpc_call_error(call, RPC_SERVER_ERROR, "cursor_expired", NULL,
                           "job %.*s is no longer retained: list again from the start",
                           (int)(len < 40 ? len : 40), text);
            return NULL;
        }
    }
    jobs = json_array();
    while (jobs && (j = sched_next(s, j)) != NULL) {
        if (sv != JSONR_NONE && j->state != want)
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

/* Finished jobs by the class of their final status ("2xx": n), or by error
 * code ("dns": n), as /metrics shows them. A new reference or NULL. */
static json_t *outcomes(const daemon_t *d, int errors)
{
    static const char *const classes[5] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
    json_t *o = json_object();

    for (int k = 0; o && !errors && k < 5; k++)
        json_object_set_new(o, classes[k], json_integer((json_int_t)d->stats.responses[k]));
    for (int e = ERR__BASE + 1; o && errors && e < ERR__END; e++)
        json_object_set_new(o, err_name(e),
                            json_integer((json_int_t)d->stats.job_errors[e - ERR__BASE - 1]));
    return o;
}

static json_t *m_stats(rpc_call_t *call)
{
    const methods_t *m = sess(call)->m;
    json_t *o = daemon_stats_json(m->d);
    size_t in_use = m->d->bufs.in_use, hidden = m->nreading ? *m->nreading : 0;

    if (o == NULL)
        return NULL;
    if (json_object_set_new(o, "limits", ratelimit_stats_json(&m->d->sched.rl)) != 0) {
        json_decref(o);
        return NULL;
    }
    json_object_set_new(o, "control_clients", json_integer(*m->nclients));
    json_object_set_new(o, "jobs_paused", json_integer((json_int_t)m->d->sched.npaused));
    /* This call is answered from inside its client's read, whose buffer is
     * in use meanwhile: left out, as /metrics leaves it out, so an idle
     * daemon shows 0 in both (control.h, nreading). */
    in_use -= hidden < in_use ? hidden : in_use;
    json_object_set_new(o, "buffers",
                        json_pack("{s:I, s:I}", "in_use", (json_int_t)in_use, "free",
                                  (json_int_t)m->d->bufs.nfree));
    json_object_set_new(o, "responses_total", outcomes(m->d, 0));
    json_object_set_new(o, "job_errors_total", outcomes(m->d, 1));
    json_object_set_new(o, "buffer_bytes",
                        json_pack("{s:I, s:I}", "in_use", (json_int_t)(in_use * m->d->bufs.size),
                                  "free", (json_int_t)(m->d->bufs.nfree * m->d->bufs.size)));
    return o;
}

/* params.events as a bit mask, and params.progress: every event but
 * progress when events is absent; progress events only when named or
 * asked for with "progress": true. 0 when invalid. */
static unsigned sub_events(rpc_call_t *call)
{
    const jsonr_t *r = call->r;
    uint32_t ev = rpc_param(call, "events"), progress = rpc_param(call, "progress"), v;
    unsigned mask = 0;
    size_t i = 0;

    if (progress != JSONR_NONE && !is_type(r, progress, JSONR_TRUE) &&
        !is_type(r, progress, JSONR_FALSE)) {
        rpc_call_error(call, RPC_INVALID_PARAMS, "invalid_params", NULL,
                       "params.progress: true or false");
        return 0;
    }
    if (ev == JSONR_NONE)
        mask = (1u << (SCHED_EV_FINISHED + 1)) - 1;
    else if (!is_type(r, ev, JSONR_ARRAY) || jsonr_count(r, ev) == 0) {
        rpc_call_error(call, RPC_INVALID_PARAMS, "invalid_params", NULL,
                       "params.events: a non-empty array of event names");
        return 0;
    }
    for (v = ev != JSONR_NONE ? jsonr_first(r, ev) : JSONR_NONE; v != JSONR_NONE;
         v = jsonr_next(r, v), i++) {
        int e;
        for (e = 0; e <= SCHED_EV_PROGRESS; e++)
            if (is_type(r, v, JSONR_STRING) && jsonr_str_eq(r, v, sched_event_name(e)))
                break;
        if (e > SCHED_EV_PROGRESS) {
            rpc_call_error(call, RPC_INVALID_PARAMS, "invalid_params", NULL,
                           "params.events[%zu]: one of queued, started, redirected, retrying, "
                           "paused, resumed, finished, progress",
                           i);
            return 0;
        }
        mask |= 1u << e;
    }
    return is_type(r, progress, JSONR_TRUE) ? mask | 1u << SCHED_EV_PROGRESS : mask;
}

/* Checks params.ids and the session's limits; *out is the list as a new
 * reference (NULL for all jobs), *ids_bytes its size. */
static int sub_allowed(rpc_call_t *call, uint32_t ids, json_t **out, size_t *ids_bytes)
{
    const methods_session_t *s = sess(call);
    const jsonr_t *r = call->r;

    *out = NULL;
    if (ids != JSONR_NONE) {
        int ok = is_type(r, ids, JSONR_ARRAY);
        for (uint32_t v = ok ? jsonr_first(r, ids) : JSONR_NONE; v != JSONR_NONE;
             v = jsonr_next(r, v))
            ok = ok && is_type(r, v, JSONR_STRING);
        if (!ok) {
            rpc_call_error(call, RPC_INVALID_PARAMS, "invalid_params", NULL,
                           "params.ids: an array of job id strings");
            return 0;
        }
    }
    if (s->nsubs >= MAX_SUBS_PER_CLIENT) {
        rpc_call_error(call, RPC_SERVER_ERROR, "too_many_subscriptions", NULL,
                       "this client already has %d subscriptions", MAX_SUBS_PER_CLIENT);
        return 0;
    }
    if (ids != JSONR_NONE && (*out = jsonr_to_json(r, ids)) == NULL) {
        rpc_call_error(call, RPC_SERVER_ERROR, "no_memory", NULL, "out of memory");
        return 0;
    }
    *ids_bytes = *out ? json_dumpb(*out, NULL, 0, JSON_COMPACT) : 0;
    if (s->sub_bytes + *ids_bytes > MAX_HELD_BYTES) {
        rpc_call_error(call, RPC_SERVER_ERROR, "too_many_subscriptions", NULL,
                       "the id lists of this client's subscriptions would pass %d bytes",
                       MAX_HELD_BYTES);
        json_decref(*out);
        *out = NULL;
        return 0;
    }
    return 1;
}

static json_t *m_subscribe(rpc_call_t *call)
{
    methods_session_t *s = sess(call);
    json_t *ids = NULL;
    unsigned mask = sub_events(call);
    methods_sub_t *sub;
    size_t ids_bytes = 0;

    if (mask == 0 || !sub_allowed(call, rpc_param(call, "ids"), &ids, &ids_bytes))
        return NULL;
    sub = mem_calloc(1, sizeof(*sub));
    if (sub == NULL) {
        json_decref(ids);
        rpc_call_error(call, RPC_SERVER_ERROR, "no_memory", NULL, "out of memory");
        return NULL;
    }
    stats_obj_created(s->stats, STATS_OBJ_CTL_SUB);
    sub->id = ++s->m->next_sub;
    sub->events = mask;
    if (mask & (1u << SCHED_EV_PROGRESS))
        s->m->d->sched.env.progress_subs++; /* running jobs send progress events from now on */
    sub->ids = ids;                         /* the reference sub_allowed() made */
    sub->ids_bytes = ids_bytes;
    sub->next = s->subs;
    s->subs = sub;
    s->nsubs++;
    s->sub_bytes += ids_bytes;
    return json_pack("{s:I}", "subscription", (json_int_t)sub->id);
}

static json_t *m_unsubscribe(rpc_call_t *call)
{
    methods_session_t *s = sess(call);
    long long v;
    methods_sub_t **pp;
    uint32_t sv = rpc_param(call, "subscription");

    if (sv == JSONR_NONE || jsonr_int(call->r, sv, &v) != 0) {
        rpc_call_error(call, RPC_INVALID_PARAMS, "invalid_params", NULL,
                       "params.subscription: the number subscribe returned");
        return NULL;
    }
    for (pp = &s->subs; *pp; pp = &(*pp)->next) {
        if ((long long)(*pp)->id == v) {
            methods_sub_t *sub = *pp;
            *pp = sub->next;
            sub_free(s, sub);
            return json_pack("{s:b}", "ok", 1);
        }
    }
    rpc_call_error(call, RPC_SERVER_ERROR, "not_found", NULL, "no subscription %lld", v);
    return NULL;
}

static const rpc_method_t methods[] = {
    {"version", m_version}, {"submit", m_submit},       {"status", m_status},
    {"wait", m_wait},       {"cancel", m_cancel},       {"list", m_list},
    {"stats", m_stats},     {"subscribe", m_subscribe}, {"unsubscribe", m_unsubscribe},
    {"pause", m_pause},     {"resume", m_resume},       {"set", m_set},
};

void methods_session_init(methods_session_t *s, methods_t *m, rpc_peer_t *peer)
{
    memset(s, 0, sizeof(*s));
    s->m = m;
    s->peer = peer;
    s->stats = &m->d->stats;
    peer->methods = methods;
    peer->nmethods = sizeof(methods) / sizeof(methods[0]);
    peer->data = s;
}
