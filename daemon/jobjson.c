/* jobjson — the job object written directly; see jobjson.h. */
#include "jobjson.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

/* Microseconds: the fractions jansson's %.17g printed, within the
 * double's own resolution at today's dates. */
static int64_t usec(double t)
{
    return (int64_t)llround(t * 1e6);
}

/* The keys are literals written once as JSON (JSONW_KEY), and each member
 * goes out in one append: this object is written for every finished job. */
static void write_timings(jsonw_t *w, const job_timings_t *t)
{
    jsonw_object_begin(w);
    jsonw_member_fixed(w, JSONW_KEY("created"), usec(t->created), 6);
    jsonw_member_uint(w, JSONW_KEY("queued_ms"), t->queued_ms);
    jsonw_member_uint(w, JSONW_KEY("dns_ms"), t->dns_ms);
    jsonw_member_uint(w, JSONW_KEY("connect_ms"), t->connect_ms);
    jsonw_member_uint(w, JSONW_KEY("ttfb_ms"), t->ttfb_ms);
    jsonw_member_uint(w, JSONW_KEY("total_ms"), t->total_ms);
    if (t->started != 0)
        jsonw_member_fixed(w, JSONW_KEY("started"), usec(t->started), 6);
    if (t->finished != 0)
        jsonw_member_fixed(w, JSONW_KEY("finished"), usec(t->finished), 6);
    jsonw_object_end(w);
}

/* {"encoding": "text" | "base64", "data": ...}: text when the body is
 * well-formed UTF-8 without NUL bytes (as jobspec.c's encode_blob()). */
static void write_blob(jsonw_t *w, const char *p, size_t n)
{
    int text = memchr(p, '\0', n) == NULL && jsonw_utf8_prefix(p, n) == n;

    jsonw_object_begin(w);
    jsonw_key(w, "encoding");
    jsonw_string(w, text ? "text" : "base64");
    jsonw_key(w, "data");
    if (text)
        jsonw_stringn(w, p, n);
    else
        jsonw_base64(w, p, n);
    jsonw_object_end(w);
}

/* key: the C string v; key is a JSONW_KEY() literal. */
#define write_string(w, key, v)                              \
    do {                                                     \
        const char *v_ = (v);                                \
        jsonw_member_str(w, JSONW_KEY(key), v_, strlen(v_)); \
    } while (0)

/* The same for a string that needs no escaping (hex digits, a name). */
#define write_plain(w, key, v)                                 \
    do {                                                       \
        const char *v_ = (v);                                  \
        jsonw_member_plain(w, JSONW_KEY(key), v_, strlen(v_)); \
    } while (0)

#define write_uint(w, key, v) jsonw_member_uint(w, JSONW_KEY(key), v)

void jobjson_write(jsonw_t *w, const job_t *j)
{
    jsonw_object_begin(w);
    write_string(w, "id", j->id); /* hex digits, unless a state file said otherwise */
    write_plain(w, "state", job_state_name(j->state));
    write_string(w, "url", j->spec.url != NULL ? j->spec.url : "");
    write_string(w, "method", j->spec.method != NULL ? j->spec.method : "GET");
    write_uint(w, "bytes", j->bytes);
    write_uint(w, "wire_bytes", j->wire_bytes);
    write_uint(w, "redirects", j->redirects);
    write_uint(w, "attempts", j->attempts);
    jsonw_member_int(w, JSONW_KEY("priority"), j->spec.priority);
    if (j->effective_url != NULL)
        write_string(w, "effective_url", j->effective_url);
    if (j->http_status != 0)
        jsonw_member_int(w, JSONW_KEY("http_status"), j->http_status);
    if (j->sha256[0] != '\0')
        write_plain(w, "sha256", j->sha256); /* hex digits */
    if (j->output != NULL)
        write_string(w, "output", j->output);
    if (j->spec.output == JOB_OUTPUT_INLINE && j->state == JOB_DONE) {
        jsonw_key(w, "inline");
        write_blob(w, j->inline_body != NULL ? j->inline_body : "",
                   j->inline_body != NULL ? j->inline_len : 0);
    }
    if (j->error != 0) {
        jsonw_key(w, "error");
        jsonw_object_begin(w);
        write_plain(w, "code", err_name(j->error));
        write_string(w, "message", j->error_msg[0] != '\0' ? j->error_msg : err_str(j->error));
        jsonw_object_end(w);
    }
    if (j->not_modified)
        jsonw_member_true(w, JSONW_KEY("not_modified"));
    if (j->resumed_from > 0)
        write_uint(w, "resumed_from", j->resumed_from);
    if (j->error_body != NULL) {
        jsonw_key(w, "error_body");
        write_blob(w, j->error_body, j->error_body_len);
    }
    if (j->content_encoding != NULL)
        write_string(w, "content_encoding", j->content_encoding);
    if (j->decoded)
        jsonw_member_true(w, JSONW_KEY("decoded"));
    if (j->content_type != NULL)
        write_string(w, "content_type", j->content_type);
    if (j->content_length >= 0)
        jsonw_member_int(w, JSONW_KEY("content_length"), j->content_length);
    if (j->etag != NULL)
        write_string(w, "etag", j->etag);
    if (j->last_modified != NULL)
        write_string(w, "last_modified", j->last_modified);
    if (j->redirect_chain != NULL && j->redirect_chain->n > 0) {
        const char *status, *url;
        size_t at = 0;

        jsonw_key(w, "redirect_chain");
        jsonw_array_begin(w);
        while (job_pairs_next(j->redirect_chain, &at, &status, &url)) {
            jsonw_object_begin(w);
            write_string(w, "url", url);
            jsonw_key(w, "status");
            jsonw_int(w, atoi(status));
            jsonw_object_end(w);
        }
        jsonw_array_end(w);
    }
    if (j->spec.keep_headers && j->http_status != 0) {
        const char *name, *value;
        size_t at = 0;

        jsonw_key(w, "headers");
        jsonw_array_begin(w);
        while (j->headers != NULL && job_pairs_next(j->headers, &at, &name, &value)) {
            jsonw_array_begin(w);
            jsonw_string(w, name);
            jsonw_string(w, value);
            jsonw_array_end(w);
        }
        jsonw_array_end(w);
    }
    if (j->headers != NULL && j->headers->truncated) {
        jsonw_key(w, "headers_truncated");
        jsonw_bool(w, 1);
    }
    if (j->state == JOB_RUNNING) {
        job_progress_t p;
        job_progress(j, &p);
        jsonw_key(w, "total");
        if (p.total >= 0)
            jsonw_int(w, p.total);
        else
            jsonw_null(w);
        write_uint(w, "speed", p.speed);
        jsonw_key(w, "eta");
        if (p.eta >= 0)
            jsonw_int(w, p.eta);
        else
            jsonw_null(w);
    }
    if (j->spec.labels != NULL) {
        jsonw_key(w, "labels");
        jsonw_json(w, j->spec.labels);
    }
    if (j->spec.rate > 0) {
        jsonw_key(w, "rate");
        jsonw_double(w, j->spec.rate);
    }
    if (j->spec.delay_ms) {
        jsonw_key(w, "delay");
        jsonw_double(w, j->spec.delay_ms / 1e3);
    }
    if (j->spec.limit_rate)
        write_uint(w, "limit_rate", j->spec.limit_rate);
    if (j->paused && job_is_cancellable(j)) { /* not once it is finishing */
        jsonw_key(w, "paused");
        jsonw_bool(w, 1);
    }
    jsonw_key_lit(w, JSONW_KEY("timings"));
    write_timings(w, &j->timings);
    jsonw_object_end(w);
}
