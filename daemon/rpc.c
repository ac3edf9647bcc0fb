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
    rpc_peer_t *peer;  /* borrowed: every holder of a reference holds one on the peer's owner */
    json_t *responses; /* owned */
    unsigned refcnt;
};

void rpc_peer_init(rpc_peer_t *p, const rpc_peer_ops_t *ops, size_t max_output)
{
    memset(p, 0, sizeof(*p));
    p->ops = ops;
    p->max_output = max_output;
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

json_t *rpc_response(json_t *id, const char *key, json_t *value)
{
    return json_pack("{s:s, s:O, s:o}", "jsonrpc", "2.0", "id", id ? id : json_null(), key, value);
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
    va_list ap;
    json_t *err;

    va_start(ap, fmt);
    err = verror_object(code, code_name, NULL, fmt, ap);
    va_end(ap);
    p->ops->send(p, rpc_response(NULL, "error", err));
}

/* ---- batches and deferred answers ------------------------------------------------ */

/* Drops a reference to the batch; resp (a new reference, or NULL) is the
 * answer for its slot. The last reference sends the responses, unless
 * there are none (a batch of notifications gets no line at all). */
static void batch_decref(rpc_batch_t *b, size_t slot, json_t *resp)
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
        b->peer->ops->send(b->peer, responses); /* takes the reference, closing or not */
    else
        json_decref(responses);
    mem_free(b);
}

void rpc_defer(rpc_call_t *call, rpc_defer_t *d)
{
    d->peer = call->peer;
    d->id = json_incref(call->id);
    d->batch = call->batch;
    if (d->batch)
        d->batch->refcnt++; /* d's, dropped by rpc_defer_end() */
    d->slot = call->slot;
    call->deferred = 1;
}

void rpc_defer_end(rpc_defer_t *d, const char *key, json_t *value)
{
    json_t *resp = value ? rpc_response(d->id, key, value) : NULL;

    if (d->batch)
        batch_decref(d->batch, d->slot, resp);
    else if (resp)
        d->peer->ops->send(d->peer, resp);
    d->batch = NULL;
    json_decref(d->id);
    d->id = NULL;
}

int rpc_defer_batched(const rpc_defer_t *d)
{
    return d->batch != NULL;
}

/* A wait's answer (a job object and the envelope) fits in this from the
 * start, so the line is not grown twice on its way. */
#define RPC_LINE_GUESS 1000

void rpc_defer_end_written(rpc_defer_t *d, void (*write)(jsonw_t *w, const void *arg),
                           const void *arg)
{
    strbuf_t line = {0};
    jsonw_t w;

    assert(d->batch == NULL);
    if (!d->peer->closing) {
        strbuf_reserve(&line, RPC_LINE_GUESS);
        jsonw_init(&w, &line);
        jsonw_object_begin(&w);
        jsonw_key(&w, "jsonrpc");
        jsonw_string(&w, "2.0");
        jsonw_key(&w, "id");
        jsonw_json(&w, d->id);
        jsonw_key(&w, "result");
        write(&w, arg);
        jsonw_object_end(&w);
        d->peer->ops->send_text(d->peer, &line);
    }
    json_decref(d->id);
    d->id = NULL;
}

/* ---- one request object --------------------------------------------------------- */

static int valid_id(const json_t *id)
{
    return id == NULL || json_is_string(id) || json_is_number(id) || json_is_null(id);
}

/* Checks the members of a request object (section 4); on failure sets
 * call->error (and clears call->id when the id itself is invalid). */
static int check_request(rpc_call_t *call, json_t *req)
{
    json_t *version = json_object_get(req, "jsonrpc");
    json_t *params = json_object_get(req, "params");

    call->id = json_object_get(req, "id");
    if (!valid_id(call->id)) {
        call->id = NULL;
        rpc_call_error(call, RPC_INVALID_REQUEST, "invalid_request", NULL,
                       "id: must be a string, a number or null");
    } else if (!json_is_string(version) || strcmp(json_string_value(version), "2.0") != 0) {
        rpc_call_error(call, RPC_INVALID_REQUEST, "invalid_request", NULL,
                       "jsonrpc: must be \"2.0\"");
    } else if (!json_is_string(json_object_get(req, "method"))) {
        rpc_call_error(call, RPC_INVALID_REQUEST, "invalid_request", NULL,
                       "method: must be a string");
    } else if (params != NULL && !json_is_object(params) && !json_is_array(params)) {
        rpc_call_error(call, RPC_INVALID_REQUEST, "invalid_request", NULL,
                       "params: must be an object");
    }
    return call->error ? -1 : 0;
}

/* Runs a valid request's method; returns its result (new reference) or
 * NULL with call->error set or the call deferred. */
static json_t *run_method(rpc_call_t *call, json_t *req)
{
    const rpc_peer_t *p = call->peer;
    const char *name = json_string_value(json_object_get(req, "method"));
    json_t *params = json_object_get(req, "params"), *empty = NULL, *result = NULL;
    size_t i;

    for (i = 0; i < p->nmethods; i++)
        if (strcmp(p->methods[i].name, name) == 0)
            break;
    if (i == p->nmethods) {
        rpc_call_error(call, RPC_METHOD_NOT_FOUND, "method_not_found", NULL, "no method \"%.60s\"",
                       name);
    } else if (json_is_array(params)) {
        rpc_call_error(call, RPC_INVALID_PARAMS, "invalid_params", NULL,
                       "params: fetchd takes named parameters (an object)");
    } else {
        call->params = params ? params : (empty = json_object());
        result = p->methods[i].fn(call);
    }
    json_decref(empty);
    return result;
}

/* Handles one request object; returns its response (new reference), or
 * NULL for a notification or a deferred call (*deferred set). The caller
 * holds a reference on p's owner: a method may drop the peer (a send to a
 * slow reader inside an event fan-out), which only marks it. */
static json_t *handle_call(rpc_peer_t *p, json_t *req, rpc_batch_t *batch, size_t slot,
                           int *deferred)
{
    rpc_call_t call = {p, NULL, NULL, batch, slot, NULL, 0};
    json_t *result, *resp;

    *deferred = 0;
    if (p->closing)
        return NULL; /* nobody will read the answer, and no wait may be added */
    if (!json_is_object(req)) {
        json_t *err =
            json_pack("{s:i, s:s, s:{s:s}}", "code", RPC_INVALID_REQUEST, "message",
                      "a request must be a JSON object", "data", "code", "invalid_request");
        return rpc_response(NULL, "error", err);
    }
    if (check_request(&call, req) != 0) {
        /* An invalid request object is answered even without an id: the
         * server cannot tell it was meant as a notification (JSON-RPC 2.0
         * section 5, and the examples of section 7). */
        return rpc_response(call.id, "error", call.error);
    }
    /* From here the request is valid: a notification gets no answer,
     * whatever happens (section 4.1). */
    result = run_method(&call, req);
    if (call.deferred) {
        *deferred = 1;
        return NULL;
    }
    if (result == NULL && call.error == NULL)
        rpc_call_error(&call, RPC_SERVER_ERROR, "no_memory", NULL, "out of memory");
    if (call.id == NULL) {
        json_decref(result);
        json_decref(call.error);
        return NULL;
    }
    resp = result ? rpc_response(call.id, "result", result)
                  : rpc_response(call.id, "error", call.error);
    if (result)
        json_decref(call.error);
    return resp;
}

/* ---- batches -------------------------------------------------------------------- */

static rpc_batch_t *batch_create(rpc_peer_t *p)
{
    rpc_batch_t *b = mem_calloc(1, sizeof(*b));

    if (b == NULL || (b->responses = json_array()) == NULL) {
        mem_free(b);
        return NULL;
    }
    b->peer = p;
    b->refcnt = 1; /* the handler's, while the calls run */
    return b;
}

static void handle_batch(rpc_peer_t *p, json_t *arr)
{
    rpc_batch_t *b;
    size_t i, bytes = 0;
    json_t *req;

    if (json_array_size(arr) == 0) {
        rpc_send_error(p, RPC_INVALID_REQUEST, "invalid_request", "an empty batch");
        return;
    }
    b = batch_create(p);
    if (b == NULL) {
        rpc_send_error(p, RPC_SERVER_ERROR, "no_memory", "out of memory");
        return;
    }
    /* The walk over the batch's members: arr is the caller's, b is held by
     * our reference (a deferred call answered, or dropped by a close,
     * meanwhile only drops its own), and p's owner by the caller's. */
    json_array_foreach (arr, i, req) {
        size_t slot = json_array_size(b->responses);
        json_t *resp;
        int deferred;

        if (p->closing)
            break;
        if (json_array_append_new(b->responses, json_null()) != 0) {
            p->ops->drop(p, "out of memory for a batch");
            break;
        }
        resp = handle_call(p, req, b, slot, &deferred);
        if (resp) {
            bytes += json_dumpb(resp, NULL, 0, JSON_COMPACT);
            json_array_set_new(b->responses, slot, resp);
        } else if (!deferred) {
            json_array_remove(b->responses, slot); /* a notification's place (the last) */
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

void rpc_handle_line(rpc_peer_t *p, const char *line, size_t n)
{
    json_error_t jerr;
    json_t *v;

    if (blank(line, n))
        return;
    v = json_loadb(line, n, JSON_DECODE_ANY, &jerr);
    if (v == NULL) {
        rpc_send_error(p, RPC_PARSE_ERROR, "parse_error", "parse error at column %d: %s",
                       jerr.column, jerr.text);
        return;
    }
    if (json_is_array(v)) {
        handle_batch(p, v);
    } else {
        int deferred;
        json_t *resp = handle_call(p, v, NULL, 0, &deferred);
        if (resp)
            p->ops->send(p, resp);
    }
    json_decref(v);
}
