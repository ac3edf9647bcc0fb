/* rpc — JSON-RPC 2.0 framing; see rpc.h and proto/PROTOCOL.md §3-§4. */
#include "rpc.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "mem.h"

/* A batch being answered. Reference counted: its handler holds one while
 * the batch's calls run, and each of its deferred calls holds one; the
 * last release sends the responses (one line) and frees it. */
struct rpc_batch {
    rpc_peer_t *peer; /* borrowed: every holder of a reference holds one on the peer's owner */
    strbuf_t *slots;  /* owned: each slot's answer as text (empty: null) */
    size_t n, cap;
    unsigned refcnt;
};

void rpc_peer_init(rpc_peer_t *p, const rpc_peer_ops_t *ops, size_t max_output, jsonr_t *reader)
{
    memset(p, 0, sizeof(*p));
    p->ops = ops;
    p->max_output = max_output;
    p->reader = reader;
}

/* ---- responses ------------------------------------------------------------------ */

static json_t *verror_object(int code, const char *code_name, json_t *data, const char *fmt,
                             va_list ap) __attribute__((format(printf, 4, 0)));

static json_t *verror_object(int code, const char *code_name, json_t *data, const char *fmt,
                             va_list ap)
{
    char msg[512];

    vsnprintf(msg, sizeof(msg), fmt, ap);
    if (data == NULL)
        data = json_object();
    json_object_set_new(data, "code", json_string(code_name));
    return json_pack("{s:i, s:s, s:o}", "code", code, "message", msg, "data", data);
}

json_t *rpc_error_object(int code, const char *code_name, json_t *data, const char *fmt, ...)
{
    va_list ap;
    json_t *err;

    va_start(ap, fmt);
    err = verror_object(code, code_name, data, fmt, ap);
    va_end(ap);
    return err;
}

/* `{"jsonrpc":"2.0","id":ID,"KEY":`: the head of a response, whose value
 * and closing brace follow. id is JSON text (NULL: null). */
static void envelope(strbuf_t *b, const char *id, size_t id_len, const char *key)
{
    static const char head[] = "{\"jsonrpc\":\"2.0\",\"id\":";

    strbuf_put(b, head, sizeof(head) - 1);
    if (id != NULL)
        strbuf_put(b, id, id_len);
    else
        strbuf_put(b, "null", 4);
    strbuf_put(b, ",\"", 2);
    strbuf_put(b, key, strlen(key));
    strbuf_put(b, "\":", 2);
}

/* Writes a whole response {jsonrpc, id, key: value} into b; value is
 * stolen (NULL, an allocation that failed, marks b failed). */
static void write_response(strbuf_t *b, const char *id, size_t id_len, const char *key,
                           json_t *value)
{
    jsonw_t w;

    if (value == NULL) {
        strbuf_fail(b);
        return;
    }
    envelope(b, id, id_len, key);
    jsonw_init(&w, b);
    jsonw_json(&w, value);
    strbuf_put(b, "}", 1);
    json_decref(value);
}

void rpc_call_error(rpc_call_t *call, int code, const char *code_name, json_t *data,
                    const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    json_decref(call->error);
    call->error = verror_object(code, code_name, data, fmt, ap);
    va_end(ap);
}

void rpc_send_error(rpc_peer_t *p, int code, const char *code_name, const char *fmt, ...)
{
    strbuf_t line = {0};
    va_list ap;
    json_t *err;

    va_start(ap, fmt);
    err = verror_object(code, code_name, NULL, fmt, ap);
    va_end(ap);
    write_response(&line, NULL, 0, "error", err);
    p->ops->send_text(p, &line);
}

void rpc_result_begin(rpc_call_t *call, jsonw_t *w)
{
    rpc_peer_t *p = call->peer;

    assert(!call->written && !call->deferred);
    call->written = 1;
    call->outp = &call->out;
    if (call->batch == NULL && call->id != NULL && p->ops->line_begin != NULL) {
        strbuf_t *line = p->ops->line_begin(p);
        if (line != NULL)
            call->outp = line; /* straight into the peer's output */
    }
    envelope(call->outp, call->id, call->id_len, "result");
    jsonw_init(w, call->outp);
}

uint32_t rpc_param(const rpc_call_t *call, const char *key)
{
    return call->params == JSONR_NONE ? JSONR_NONE : jsonr_get(call->r, call->params, key);
}

/* ---- batches and deferred answers ------------------------------------------------ */

/* Adds an empty slot; returns its index, or -1 without memory. */
static long batch_add(rpc_batch_t *b)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 8;
        strbuf_t *slots = mem_realloc(b->slots, cap * sizeof(*slots));
        if (slots == NULL)
            return -1;
        b->slots = slots;
        b->cap = cap;
    }
    memset(&b->slots[b->n], 0, sizeof(b->slots[0]));
    return (long)b->n++;
}

/* Drops a reference to the batch; resp (taken, may be NULL or empty) is
 * the answer for its slot. The last reference sends the responses as one
 * line, unless there are none (a batch of notifications gets no line). */
static void batch_decref(rpc_batch_t *b, size_t slot, strbuf_t *resp)
{
    strbuf_t line = {0};

    if (resp != NULL) {
        assert(slot < b->n);
        strbuf_dispose(&b->slots[slot]);
        b->slots[slot] = *resp;
        memset(resp, 0, sizeof(*resp));
    }
    assert(b->refcnt > 0);
    if (--b->refcnt > 0)
        return;
    if (b->n > 0) {
        strbuf_put(&line, "[", 1);
        for (size_t i = 0; i < b->n; i++) {
            const strbuf_t *s = &b->slots[i];
            if (i > 0)
                strbuf_put(&line, ",", 1);
            if (s->failed)
                strbuf_fail(&line);
            else if (s->len == 0)
                strbuf_put(&line, "null", 4); /* a deferred call ended without an answer */
            else
                strbuf_put(&line, s->p, s->len);
        }
        strbuf_put(&line, "]", 1);
        b->peer->ops->send_text(b->peer, &line); /* takes the line, closing or not */
    }
    for (size_t i = 0; i < b->n; i++)
        strbuf_dispose(&b->slots[i]);
    mem_free(b->slots);
    mem_free(b);
}

static const char *id_text(const rpc_id_t *id)
{
    return id->heap != NULL ? id->heap : id->inl;
}

int rpc_defer(rpc_call_t *call, rpc_defer_t *d)
{
    size_t n = call->id != NULL ? call->id_len : 0;

    memset(&d->id, 0, sizeof(d->id));
    if (n > RPC_ID_INLINE) {
        d->id.heap = mem_alloc(n);
        if (d->id.heap == NULL)
            return -1;
        memcpy(d->id.heap, call->id, n);
    } else if (n > 0) {
        memcpy(d->id.inl, call->id, n);
    }
    d->id.len = n;
    d->peer = call->peer;
    d->batch = call->batch;
    if (d->batch)
        d->batch->refcnt++; /* d's, dropped by rpc_defer_end() */
    d->slot = call->slot;
    call->deferred = 1;
    return 0;
}

/* Hands a deferred call's answer (taken; NULL: none) to its batch or its
 * peer, and releases what d holds. */
static void defer_finish(rpc_defer_t *d, strbuf_t *resp)
{
    if (d->batch)
        batch_decref(d->batch, d->slot, resp);
    else if (resp != NULL)
        d->peer->ops->send_text(d->peer, resp);
    d->batch = NULL;
    mem_free(d->id.heap);
    memset(&d->id, 0, sizeof(d->id));
}

void rpc_defer_end(rpc_defer_t *d, const char *key, json_t *value)
{
    strbuf_t resp = {0};

    if (value != NULL)
        write_response(&resp, d->id.len ? id_text(&d->id) : NULL, d->id.len, key, value);
    defer_finish(d, value != NULL ? &resp : NULL);
}

/* A wait's answer (a job object and the envelope) fits in this from the
 * start, so the line is not grown twice on its way. */
#define RPC_LINE_GUESS 1000

void rpc_defer_end_written(rpc_defer_t *d, void (*write)(jsonw_t *w, const void *arg),
                           const void *arg)
{
    strbuf_t resp = {0};
    jsonw_t w;

    rpc_peer_t *p = d->peer;
    strbuf_t *out = &resp;

    if (d->batch == NULL && p->closing) {
        defer_finish(d, NULL); /* nobody reads it: not even written */
        return;
    }
    if (d->batch == NULL && p->ops->line_begin != NULL)
        out = p->ops->line_begin(p); /* straight into the peer's output */
    if (out == NULL)
        out = &resp;
    if (out == &resp)
        strbuf_reserve(&resp, RPC_LINE_GUESS);
    envelope(out, d->id.len ? id_text(&d->id) : NULL, d->id.len, "result");
    jsonw_init(&w, out);
    write(&w, arg);
    strbuf_put(out, "}", 1);
    if (out != &resp) {
        p->ops->line_end(p, out);
        defer_finish(d, NULL);
        return;
    }
    defer_finish(d, &resp);
}

/* ---- one request object --------------------------------------------------------- */

static int valid_id(const jsonr_t *r, uint32_t id)
{
    jsonr_type_t t;

    if (id == JSONR_NONE)
        return 1;
    t = jsonr_type(r, id);
    return t == JSONR_STRING || t == JSONR_INTEGER || t == JSONR_REAL || t == JSONR_NULL;
}

static int is_string(const jsonr_t *r, uint32_t v)
{
    return v != JSONR_NONE && jsonr_type(r, v) == JSONR_STRING;
}

/* The members of a request object the framing reads (JSONR_NONE: absent). */
typedef struct req_members {
    uint32_t id, version, method, params;
} req_members_t;

/* One walk over the request's members; a repeated key's last value wins,
 * as with jsonr_get() (and jansson). */
static void members(const jsonr_t *r, uint32_t req, req_members_t *m)
{
    m->id = m->version = m->method = m->params = JSONR_NONE;
    for (uint32_t v = jsonr_first(r, req); v != JSONR_NONE; v = jsonr_next(r, v)) {
        size_t len;
        const char *key = jsonr_key(r, v, &len);

        if (len == 2 && memcmp(key, "id", 2) == 0)
            m->id = v;
        else if (len == 7 && memcmp(key, "jsonrpc", 7) == 0)
            m->version = v;
        else if (len == 6 && memcmp(key, "method", 6) == 0)
            m->method = v;
        else if (len == 6 && memcmp(key, "params", 6) == 0)
            m->params = v;
    }
}

/* Checks the members of a request object (section 4); on failure sets
 * call->error (and leaves call->id NULL when the id itself is invalid). */
static int check_request(rpc_call_t *call, const req_members_t *m)
{
    const jsonr_t *r = call->r;
    uint32_t id = m->id, version = m->version, params = m->params;

    if (!valid_id(r, id)) {
        rpc_call_error(call, RPC_INVALID_REQUEST, "invalid_request", NULL,
                       "id: must be a string, a number or null");
        return -1;
    }
    if (id != JSONR_NONE)
        call->id = jsonr_raw(r, id, &call->id_len);
    if (!is_string(r, version) || !jsonr_str_eq(r, version, "2.0")) {
        rpc_call_error(call, RPC_INVALID_REQUEST, "invalid_request", NULL,
                       "jsonrpc: must be \"2.0\"");
    } else if (!is_string(r, m->method)) {
        rpc_call_error(call, RPC_INVALID_REQUEST, "invalid_request", NULL,
                       "method: must be a string");
    } else if (params != JSONR_NONE && jsonr_type(r, params) != JSONR_OBJECT &&
               jsonr_type(r, params) != JSONR_ARRAY) {
        rpc_call_error(call, RPC_INVALID_REQUEST, "invalid_request", NULL,
                       "params: must be an object");
    }
    return call->error ? -1 : 0;
}

/* Runs a valid request's method; returns its result (new reference) or
 * NULL with call->error set, the result written or the call deferred. */
static json_t *run_method(rpc_call_t *call, const req_members_t *m)
{
    const rpc_peer_t *p = call->peer;
    uint32_t params = m->params;
    size_t len, i;
    const char *name = jsonr_str(call->r, m->method, &len);

    for (i = 0; i < p->nmethods; i++)
        if (strncmp(p->methods[i].name, name, len) == 0 && p->methods[i].name[len] == '\0')
            break;
    if (i == p->nmethods) {
        rpc_call_error(call, RPC_METHOD_NOT_FOUND, "method_not_found", NULL, "no method \"%.*s\"",
                       (int)(len < 60 ? len : 60), name);
        return NULL;
    }
    if (params != JSONR_NONE && jsonr_type(call->r, params) == JSONR_ARRAY) {
        rpc_call_error(call, RPC_INVALID_PARAMS, "invalid_params", NULL,
                       "params: fetchd takes named parameters (an object)");
        return NULL;
    }
    call->params = params;
    return p->methods[i].fn(call);
}

/* Handles request object req; writes its response into resp (left empty
 * for a notification or a deferred call, *deferred set for the latter).
 * The caller holds a reference on p's owner: a method may drop the peer
 * (a send to a slow reader inside an event fan-out), which only marks it. */
static void handle_call(rpc_peer_t *p, uint32_t req, rpc_batch_t *batch, size_t slot,
                        strbuf_t *resp, int *deferred)
{
    rpc_call_t call = {
        .peer = p, .r = p->reader, .params = JSONR_NONE, .batch = batch, .slot = slot};
    req_members_t m;
    json_t *result;

    *deferred = 0;
    if (p->closing)
        return; /* nobody will read the answer, and no wait may be added */
    if (jsonr_type(p->reader, req) != JSONR_OBJECT) {
        json_t *err =
            json_pack("{s:i, s:s, s:{s:s}}", "code", RPC_INVALID_REQUEST, "message",
                      "a request must be a JSON object", "data", "code", "invalid_request");
        write_response(resp, NULL, 0, "error", err);
        return;
    }
    members(p->reader, req, &m);
    if (check_request(&call, &m) != 0) {
        /* An invalid request object is answered even without an id: the
         * server cannot tell it was meant as a notification (JSON-RPC 2.0
         * section 5, and the examples of section 7). */
        write_response(resp, call.id, call.id_len, "error", call.error);
        return;
    }
    /* From here the request is valid: a notification gets no answer,
     * whatever happens (section 4.1). */
    result = run_method(&call, &m);
    if (call.deferred) {
        *deferred = 1;
    } else if (call.id == NULL) {
        json_decref(result); /* a notification */
    } else if (call.written) {
        strbuf_put(call.outp, "}", 1);
        if (call.outp != &call.out) {
            p->ops->line_end(p, call.outp); /* written into the peer's output */
        } else {
            *resp = call.out;
            memset(&call.out, 0, sizeof(call.out));
        }
    } else if (result != NULL) {
        write_response(resp, call.id, call.id_len, "result", result);
    } else {
        if (call.error == NULL)
            rpc_call_error(&call, RPC_SERVER_ERROR, "no_memory", NULL, "out of memory");
        write_response(resp, call.id, call.id_len, "error", call.error);
        call.error = NULL;
    }
    json_decref(call.error);
    strbuf_dispose(&call.out);
}

/* ---- batches -------------------------------------------------------------------- */

static void handle_batch(rpc_peer_t *p)
{
    const jsonr_t *r = p->reader;
    rpc_batch_t *b;
    size_t bytes = 0;

    if (jsonr_count(r, 0) == 0) {
        rpc_send_error(p, RPC_INVALID_REQUEST, "invalid_request", "an empty batch");
        return;
    }
    b = mem_calloc(1, sizeof(*b));
    if (b == NULL) {
        rpc_send_error(p, RPC_SERVER_ERROR, "no_memory", "out of memory");
        return;
    }
    b->peer = p;
    b->refcnt = 1; /* the handler's, while the calls run */
    /* The walk over the batch's members: the line's tokens stay put while
     * the calls run (a method never parses), b is held by our reference (a
     * deferred call answered, or dropped by a close, meanwhile only drops
     * its own), and p's owner by the caller's. */
    for (uint32_t v = jsonr_first(r, 0); v != JSONR_NONE; v = jsonr_next(r, v)) {
        strbuf_t resp = {0};
        long slot;
        int deferred;

        if (p->closing)
            break;
        slot = batch_add(b);
        if (slot < 0) {
            p->ops->drop(p, "out of memory for a batch");
            break;
        }
        handle_call(p, v, b, (size_t)slot, &resp, &deferred);
        if (resp.len > 0 || resp.failed) {
            bytes += resp.len;
            strbuf_dispose(&b->slots[slot]);
            b->slots[slot] = resp;
        } else if (!deferred) {
            assert((size_t)slot + 1 == b->n);
            b->n--; /* a notification's place (the last) */
        }
        /* One line of answers bigger than the output limit would drop the
         * peer when it is queued anyway; stop before a 1 MiB line of
         * `list` calls builds gigabytes of answers. */
        if (bytes > p->max_output)
            p->ops->drop(p, "slow reader: a batch's answer is over the output limit");
    }
    batch_decref(b, 0, NULL);
}

/* ---- lines ---------------------------------------------------------------------- */

static int blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
            return 0;
    return 1;
}

void rpc_reader_settle(jsonr_t *r)
{
    /* The usual line, without escapes and of ordinary size, leaves the
     * token array as it is. */
    jsonr_trim(r, r->scratch_cap > 0 ? 0 : RPC_READER_KEEP);
    if (r->tok == NULL)
        jsonr_parse(r, "0", 1); /* one small token array again; without memory, none */
}

void rpc_handle_line(rpc_peer_t *p, const char *line, size_t n)
{
    jsonr_t *r = p->reader;
    int rc;

    if (p->closing || blank(line, n))
        return; /* a closing peer is answered nothing */
    rc = jsonr_parse(r, line, n);
    if (rc == -2) {
        rpc_send_error(p, RPC_SERVER_ERROR, "no_memory", "out of memory");
    } else if (rc != 0) {
        rpc_send_error(p, RPC_PARSE_ERROR, "parse_error", "parse error at column %d: %s", r->column,
                       r->error);
    } else if (jsonr_type(r, 0) == JSONR_ARRAY) {
        handle_batch(p);
    } else {
        strbuf_t resp = {0};
        int deferred;

        handle_call(p, 0, NULL, 0, &resp, &deferred);
        if (resp.len > 0 || resp.failed)
            p->ops->send_text(p, &resp);
    }
    rpc_reader_settle(r);
}
