/* Unit tests for daemon/rpc.c, the JSON-RPC 2.0 framing, with a fake peer
 * (its sends are collected as lines) and a small method table: the rules
 * of JSON-RPC 2.0 sections 4 to 7 (request objects, notifications, ids of
 * every type, error objects, batches), fetchd's documented choices
 * (proto/PROTOCOL.md §3: named params only), deferred answers inside and
 * outside batches, a peer dropped mid-batch, the batch output limit, an
 * allocation failure, and that nothing stays on the heap afterwards. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mem.h"
#include "rpc.h"
#include "test.h"

#define MAX_DEFERS 8

/* The fake peer's owner: what it was sent and how it was treated. */
static struct {
    rpc_peer_t peer;
    json_t *sent; /* owned: every message sent, in order */
    int drops, refs;
    const char *why;
    rpc_defer_t defers[MAX_DEFERS];
    int ndefers, calls;
    int direct, direct_lines; /* line_begin() answers; the lines written that way */
} fake;

/* The peer's reader, on the C library's allocator (as fetchctl's): the
 * heap counts below are the framing's own. */
static jsonr_t reader;

static void fake_drop(rpc_peer_t *p, const char *why);

static void fake_send(rpc_peer_t *p, json_t *msg)
{
    /* As the control server does: a closing peer is sent nothing. */
    if (msg != NULL && !p->closing)
        json_array_append(fake.sent, msg);
    json_decref(msg);
}

/* The last line sent as text, byte for byte (NUL-terminated, cut short). */
static char last_text[4096];

static void fake_send_text(rpc_peer_t *p, strbuf_t *line)
{
    json_t *msg = line->failed ? NULL : json_loadb(line->p, line->len, 0, NULL);

    if (!line->failed)
        snprintf(last_text, sizeof(last_text), "%.*s", (int)line->len, line->p);

    if (line->failed)
        fake_drop(p, "out of memory for a response");
    fake_send(p, msg);
    strbuf_dispose(line);
}

static void fake_drop(rpc_peer_t *p, const char *why)
{
    p->closing = 1;
    fake.drops++;
    fake.why = why;
}

static void fake_incref(rpc_peer_t *p)
{
    (void)p;
    fake.refs++;
}

static void fake_decref(rpc_peer_t *p)
{
    (void)p;
    fake.refs--;
}

/* Lines written straight into the peer's output, when fake.direct is set
 * (as the control server does); else the framing uses send_text. */
static strbuf_t direct_out;

static strbuf_t *fake_line_begin(rpc_peer_t *p)
{
    if (!fake.direct || p->closing)
        return NULL;
    fake.direct_lines++;
    return &direct_out;
}

static void fake_line_end(rpc_peer_t *p, strbuf_t *out)
{
    strbuf_t line = *out;

    memset(out, 0, sizeof(*out)); /* one line at a time here: the output is the line */
    fake_send_text(p, &line);
}

static const rpc_peer_ops_t fake_ops = {.send = fake_send,
                                        .send_text = fake_send_text,
                                        .line_begin = fake_line_begin,
                                        .line_end = fake_line_end,
                                        .drop = fake_drop,
                                        .incref = fake_incref,
                                        .decref = fake_decref};

/* ---- methods ---------------------------------------------------------------------- */

static json_t *m_subtract(rpc_call_t *call)
{
    uint32_t a = rpc_param(call, "minuend"), b = rpc_param(call, "subtrahend");
    long long x, y;

    fake.calls++;
    if (a == JSONR_NONE || b == JSONR_NONE || jsonr_int(call->r, a, &x) != 0 ||
        jsonr_int(call->r, b, &y) != 0) {
        rpc_call_error(call, RPC_INVALID_PARAMS, "invalid_params", NULL, "two integers");
        return NULL;
    }
    return json_integer(x - y);
}

static json_t *m_echo(rpc_call_t *call)
{
    fake.calls++;
    return call->params == JSONR_NONE ? json_object() : jsonr_to_json(call->r, call->params);
}

static json_t *m_fail(rpc_call_t *call)
{
    fake.calls++;
    rpc_call_error(call, RPC_SERVER_ERROR, "not_found", json_pack("{s:i}", "index", 3),
                   "no thing %d", 7);
    return NULL;
}

static json_t *m_nothing(rpc_call_t *call)
{
    (void)call;
    fake.calls++;
    return NULL; /* neither a result nor an error: out of memory */
}

static json_t *m_defer(rpc_call_t *call)
{
    fake.calls++;
    if (fake.ndefers == MAX_DEFERS)
        return json_string("no room");
    if (rpc_defer(call, &fake.defers[fake.ndefers]) != 0)
        return NULL;
    fake.ndefers++;
    return NULL;
}

static json_t *m_drop(rpc_call_t *call)
{
    fake.calls++;
    call->peer->ops->drop(call->peer, "dropped by a method");
    return json_true();
}

static json_t *m_big(rpc_call_t *call)
{
    char text[200];

    fake.calls++;
    memset(text, 'x', sizeof(text) - 1);
    text[sizeof(text) - 1] = '\0';
    (void)call;
    return json_string(text);
}

/* A result written as text: {"w":params.n or 0}. */
static json_t *m_written(rpc_call_t *call)
{
    uint32_t n = rpc_param(call, "n");
    long long v = 0;
    jsonw_t w;

    fake.calls++;
    if (n != JSONR_NONE)
        jsonr_int(call->r, n, &v);
    rpc_result_begin(call, &w);
    jsonw_object_begin(&w);
    jsonw_member_int(&w, JSONW_KEY("w"), v);
    jsonw_object_end(&w);
    return NULL;
}

static void write_true(jsonw_t *w, const void *arg)
{
    (void)arg;
    jsonw_bool(w, 1);
}

static const rpc_method_t methods[] = {
    {"written", m_written}, {"subtract", m_subtract}, {"echo", m_echo}, {"fail", m_fail},
    {"nothing", m_nothing}, {"defer", m_defer},       {"drop", m_drop}, {"big", m_big},
};

/* ---- helpers ---------------------------------------------------------------------- */

static uint64_t live_blocks(void)
{
    uint64_t blocks, bytes;
    mem_get(MEM_FETCHD, &blocks, &bytes);
    return blocks;
}

static uint64_t live_json_blocks(void)
{
    uint64_t blocks, bytes;
    mem_get(MEM_JANSSON, &blocks, &bytes);
    return blocks;
}

static void reset(size_t max_output)
{
    json_decref(fake.sent);
    memset(&fake, 0, sizeof(fake));
    fake.sent = json_array();
    rpc_peer_init(&fake.peer, &fake_ops, max_output, &reader);
    fake.peer.methods = methods;
    fake.peer.nmethods = sizeof(methods) / sizeof(methods[0]);
}

static void line(const char *text)
{
    rpc_handle_line(&fake.peer, text, strlen(text));
}

static size_t nsent(void)
{
    return json_array_size(fake.sent);
}

static json_t *sent(size_t i)
{
    return json_array_get(fake.sent, i);
}

/* Checks that v is a response with the id given as JSON text ("null",
 * "1", "\"a\"") and the error code (0: a result). */
static int is_response(const json_t *v, const char *id_json, int code)
{
    json_t *want = json_loads(id_json, JSON_DECODE_ANY, NULL);
    json_t *err = json_object_get(v, "error");
    int ok = json_is_object(v) && json_object_size(v) == 3 &&
             json_is_string(json_object_get(v, "jsonrpc")) &&
             strcmp(json_string_value(json_object_get(v, "jsonrpc")), "2.0") == 0;
    ok = ok && want != NULL && json_equal(json_object_get(v, "id"), want);
    if (code == 0)
        ok = ok && json_object_get(v, "result") != NULL && err == NULL;
    else
        ok = ok && json_object_get(v, "result") == NULL && json_is_object(err) &&
             json_integer_value(json_object_get(err, "code")) == code &&
             json_is_string(json_object_get(err, "message")) &&
             json_is_string(json_object_get(json_object_get(err, "data"), "code"));
    json_decref(want);
    return ok;
}

static const char *data_code(const json_t *resp)
{
    return json_string_value(
        json_object_get(json_object_get(json_object_get(resp, "error"), "data"), "code"));
}

/* ---- JSON-RPC 2.0 section 7, the examples verbatim ----------------------------------- */

static void test_spec_named_params(void)
{
    reset(1 << 20);
    line("{\"jsonrpc\": \"2.0\", \"method\": \"subtract\", \"params\": {\"subtrahend\": 23, "
         "\"minuend\": 42}, \"id\": 3}");
    line("{\"jsonrpc\": \"2.0\", \"method\": \"subtract\", \"params\": {\"minuend\": 42, "
         "\"subtrahend\": 23}, \"id\": 4}");
    CHECK_INT(nsent(), 2);
    CHECK(is_response(sent(0), "3", 0));
    CHECK_INT(json_integer_value(json_object_get(sent(0), "result")), 19);
    CHECK(is_response(sent(1), "4", 0));
    CHECK_INT(json_integer_value(json_object_get(sent(1), "result")), 19);
}

/* fetchd takes named params only: positional ones are -32602 for a call,
 * after the method name is checked (proto/PROTOCOL.md §3). */
static void test_spec_positional_params(void)
{
    reset(1 << 20);
    line("{\"jsonrpc\": \"2.0\", \"method\": \"subtract\", \"params\": [42, 23], \"id\": 1}");
    line("{\"jsonrpc\": \"2.0\", \"method\": \"sum\", \"params\": [42, 23], \"id\": 2}");
    CHECK_INT(nsent(), 2);
    CHECK(is_response(sent(0), "1", RPC_INVALID_PARAMS));
    CHECK_STR(data_code(sent(0)), "invalid_params");
    CHECK(is_response(sent(1), "2", RPC_METHOD_NOT_FOUND));
    CHECK_STR(data_code(sent(1)), "method_not_found");
    CHECK_INT(fake.calls, 0);
}

static void test_spec_notifications(void)
{
    reset(1 << 20);
    line("{\"jsonrpc\": \"2.0\", \"method\": \"update\", \"params\": [1,2,3,4,5]}");
    line("{\"jsonrpc\": \"2.0\", \"method\": \"foobar\"}");
    /* Known methods too, whatever happens to them (section 4.1). */
    line("{\"jsonrpc\": \"2.0\", \"method\": \"echo\", \"params\": {\"a\": 1}}");
    line("{\"jsonrpc\": \"2.0\", \"method\": \"subtract\", \"params\": [42, 23]}");
    line("{\"jsonrpc\": \"2.0\", \"method\": \"fail\"}");
    line("{\"jsonrpc\": \"2.0\", \"method\": \"nothing\"}");
    CHECK_INT(nsent(), 0);
    CHECK_INT(fake.calls, 3);
}

static void test_spec_errors(void)
{
    reset(1 << 20);
    line("{\"jsonrpc\": \"2.0\", \"method\": \"foobar\", \"id\": \"1\"}");
    line("{\"jsonrpc\": \"2.0\", \"method\": \"foobar, \"params\": \"bar\", \"baz]");
    line("{\"jsonrpc\": \"2.0\", \"method\": 1, \"params\": \"bar\"}");
    line("[\n  {\"jsonrpc\": \"2.0\", \"method\": \"sum\", \"params\": [1,2,4], \"id\": \"1\"},"
         "\n  {\"jsonrpc\": \"2.0\", \"method\"\n]");
    line("[]");
    CHECK_INT(nsent(), 5);
    CHECK(is_response(sent(0), "\"1\"", RPC_METHOD_NOT_FOUND));
    CHECK(is_response(sent(1), "null", RPC_PARSE_ERROR));
    CHECK_STR(data_code(sent(1)), "parse_error");
    CHECK(is_response(sent(2), "null", RPC_INVALID_REQUEST));
    CHECK(is_response(sent(3), "null", RPC_PARSE_ERROR));
    CHECK(is_response(sent(4), "null", RPC_INVALID_REQUEST)); /* one object, not an array */
}

static void test_spec_invalid_batches(void)
{
    reset(1 << 20);
    line("[1]");
    line("[1,2,3]");
    CHECK_INT(nsent(), 2);
    CHECK(json_is_array(sent(0)) && json_array_size(sent(0)) == 1);
    CHECK(is_response(json_array_get(sent(0), 0), "null", RPC_INVALID_REQUEST));
    CHECK(json_is_array(sent(1)) && json_array_size(sent(1)) == 3);
    for (size_t i = 0; i < 3; i++)
        CHECK(is_response(json_array_get(sent(1), i), "null", RPC_INVALID_REQUEST));
}

static void test_spec_mixed_batch(void)
{
    json_t *r;

    reset(1 << 20);
    line("[{\"jsonrpc\": \"2.0\", \"method\": \"echo\", \"params\": {\"n\": 7}, \"id\": \"1\"},"
         "{\"jsonrpc\": \"2.0\", \"method\": \"notify_hello\", \"params\": [7]},"
         "{\"jsonrpc\": \"2.0\", \"method\": \"subtract\", \"params\": {\"minuend\": 42, "
         "\"subtrahend\": 23}, \"id\": \"2\"},"
         "{\"foo\": \"boo\"},"
         "{\"jsonrpc\": \"2.0\", \"method\": \"foo.get\", \"params\": {\"name\": \"myself\"}, "
         "\"id\": \"5\"},"
         "{\"jsonrpc\": \"2.0\", \"method\": \"echo\", \"id\": \"9\"}]");
    CHECK_INT(nsent(), 1);
    r = sent(0);
    CHECK(json_is_array(r) && json_array_size(r) == 5);
    CHECK(is_response(json_array_get(r, 0), "\"1\"", 0));
    CHECK(is_response(json_array_get(r, 1), "\"2\"", 0));
    CHECK_INT(json_integer_value(json_object_get(json_array_get(r, 1), "result")), 19);
    CHECK(is_response(json_array_get(r, 2), "null", RPC_INVALID_REQUEST));
    CHECK(is_response(json_array_get(r, 3), "\"5\"", RPC_METHOD_NOT_FOUND));
    CHECK(is_response(json_array_get(r, 4), "\"9\"", 0));
    /* Absent params reach the method as an empty object. */
    CHECK(json_is_object(json_object_get(json_array_get(r, 4), "result")));
    CHECK_INT(json_object_size(json_object_get(json_array_get(r, 4), "result")), 0);
}

static void test_spec_batch_of_notifications(void)
{
    reset(1 << 20);
    line("[{\"jsonrpc\": \"2.0\", \"method\": \"notify_sum\", \"params\": [1,2,4]},"
         "{\"jsonrpc\": \"2.0\", \"method\": \"notify_hello\", \"params\": [7]}]");
    CHECK_INT(nsent(), 0); /* no line at all */
}

/* ---- section 4: the request object ----------------------------------------------- */

static void test_ids_of_every_type(void)
{
    static const char *ids[] = {"\"a\"", "\"\"",   "0",    "-17",           "9007199254740993",
                                "1.5",   "-2.5e3", "null", "\"\\u00e9\\n\""};

    reset(1 << 20);
    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
        char text[200];
        snprintf(text, sizeof(text), "{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":%s}", ids[i]);
        line(text);
        CHECK_INT(nsent(), i + 1);
        CHECK(is_response(sent(i), ids[i], 0));
    }
    CHECK_INT(fake.calls, sizeof(ids) / sizeof(ids[0])); /* id null is a call, not a notification */
}

/* The id is echoed as the very text the request gave (section 5: "the
 * same as the value of the id member"): escapes stay as written, and a
 * number keeps digits a double would lose. Inline and long ids, answered at
 * once and deferred. */
static void raw_id_echo(int direct)
{
    static const char *ids[] = {
        "\"a\\\"b\\u00e9\\/\\n\"",
        "1.00000000000000000001",
        "-0.0e+00",
        "9223372036854775807",
        "null",
        "\"a long id, longer than the inline buffer of a deferred call: "
        "\\u0041\\t\\\\ 0123456789\"",
    };

    reset(1 << 20);
    fake.direct = direct;
    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
        char text[300], want[300];

        snprintf(text, sizeof(text), "{\"jsonrpc\":\"2.0\",\"method\":\"fail\",\"id\":%s}", ids[i]);
        snprintf(want, sizeof(want), "{\"jsonrpc\":\"2.0\",\"id\":%s,\"error\":", ids[i]);
        line(text);
        CHECK_INT(nsent(), 3 * i + 1);
        CHECK(strncmp(last_text, want, strlen(want)) == 0);
        snprintf(text, sizeof(text), "{\"jsonrpc\":\"2.0\",\"method\":\"defer\",\"id\":%s}",
                 ids[i]);
        line(text);
        CHECK_INT(fake.ndefers, 1);
        rpc_defer_end_written(&fake.defers[0], write_true, NULL);
        fake.ndefers = 0;
        snprintf(want, sizeof(want), "{\"jsonrpc\":\"2.0\",\"id\":%s,\"result\":true}", ids[i]);
        CHECK_INT(nsent(), 3 * i + 2);
        CHECK_STR(last_text, want);
        snprintf(text, sizeof(text),
                 "{\"jsonrpc\":\"2.0\",\"method\":\"written\",\"params\":{\"n\":-3},\"id\":%s}",
                 ids[i]);
        line(text);
        snprintf(want, sizeof(want), "{\"jsonrpc\":\"2.0\",\"id\":%s,\"result\":{\"w\":-3}}",
                 ids[i]);
        CHECK_INT(nsent(), 3 * i + 3);
        CHECK_STR(last_text, want);
    }
}

static void test_raw_id_echo(void)
{
    raw_id_echo(0);
    CHECK_INT(fake.direct_lines, 0);
    raw_id_echo(1);
    CHECK_INT(fake.direct_lines, 12); /* the written answers; the errors are sent as lines */
}

/* A parse error names the column where the text went wrong, as jansson
 * counts it (the protocol promised that before the reader changed). */
static void test_parse_error_column(void)
{
    static const char *lines[] = {
        "{\"jsonrpc\":\"2.0\",}",
        "{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":1} x",
        "[1,2",
        "{\"a\":\"\\u00e9\\x\"}",
        "{\"id\":12345678901234567890123}",
    };

    reset(1 << 20);
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        json_error_t jerr;
        json_t *v = json_loadb(lines[i], strlen(lines[i]), JSON_DECODE_ANY, &jerr);
        char want[64];
        const char *msg;

        CHECK(v == NULL);
        json_decref(v);
        snprintf(want, sizeof(want), "parse error at column %d: ", jerr.column);
        line(lines[i]);
        CHECK_INT(nsent(), i + 1);
        CHECK(is_response(sent(i), "null", RPC_PARSE_ERROR));
        msg = json_string_value(json_object_get(json_object_get(sent(i), "error"), "message"));
        CHECK(msg != NULL && strncmp(msg, want, strlen(want)) == 0);
        if (msg != NULL && strncmp(msg, want, strlen(want)) != 0)
            fprintf(stderr, "  line %s: got \"%s\", want \"%s...\"\n", lines[i], msg, want);
    }
    CHECK_INT(fake.calls, 0);
}

static void test_invalid_ids(void)
{
    static const char *ids[] = {"true", "false", "{}", "{\"a\":1}", "[]", "[1]"};

    reset(1 << 20);
    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
        char text[200];
        snprintf(text, sizeof(text), "{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":%s}", ids[i]);
        line(text);
        CHECK_INT(nsent(), i + 1);
        CHECK(is_response(sent(i), "null", RPC_INVALID_REQUEST));
        CHECK_STR(data_code(sent(i)), "invalid_request");
    }
    CHECK_INT(fake.calls, 0);
}

/* An invalid request object is answered with its id when the id is valid,
 * even without one (section 5): the server cannot tell a notification. */
static void test_invalid_members(void)
{
    static const struct {
        const char *text, *id;
    } cases[] = {
        {"{\"method\":\"echo\",\"id\":1}", "1"},
        {"{\"jsonrpc\":\"1.0\",\"method\":\"echo\",\"id\":2}", "2"},
        {"{\"jsonrpc\":2.0,\"method\":\"echo\",\"id\":\"x\"}", "\"x\""},
        {"{\"jsonrpc\":\"2.0\",\"id\":3}", "3"},
        {"{\"jsonrpc\":\"2.0\",\"method\":null,\"id\":4}", "4"},
        {"{\"jsonrpc\":\"2.0\",\"method\":[\"echo\"]}", "null"},
        {"{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"params\":\"bar\",\"id\":5}", "5"},
        {"{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"params\":7}", "null"},
        {"{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"params\":null,\"id\":6}", "6"},
        {"{}", "null"},
        {"\"2.0\"", "null"},
        {"42", "null"},
        {"null", "null"},
    };

    reset(1 << 20);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        line(cases[i].text);
        CHECK_INT(nsent(), i + 1);
        if (!is_response(sent(i), cases[i].id, RPC_INVALID_REQUEST))
            fprintf(stderr, "  case %zu: %s\n", i, cases[i].text);
        CHECK(is_response(sent(i), cases[i].id, RPC_INVALID_REQUEST));
    }
    CHECK_INT(fake.calls, 0);
}

static void test_results_and_errors(void)
{
    json_t *data;

    reset(1 << 20);
    line("{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"params\":{\"k\":[1,{\"z\":null}]},\"id\":1}");
    line("{\"jsonrpc\":\"2.0\",\"method\":\"fail\",\"id\":2}");
    line("{\"jsonrpc\":\"2.0\",\"method\":\"nothing\",\"id\":3}");
    line("{\"jsonrpc\":\"2.0\",\"method\":\"subtract\",\"params\":{},\"id\":4}");
    CHECK_INT(nsent(), 4);
    CHECK(is_response(sent(0), "1", 0));
    CHECK_INT(json_array_size(json_object_get(json_object_get(sent(0), "result"), "k")), 2);
    CHECK(is_response(sent(1), "2", RPC_SERVER_ERROR));
    data = json_object_get(json_object_get(sent(1), "error"), "data");
    CHECK_STR(json_string_value(json_object_get(data, "code")), "not_found");
    CHECK_INT(json_integer_value(json_object_get(data, "index")), 3);
    CHECK_STR(json_string_value(json_object_get(json_object_get(sent(1), "error"), "message")),
              "no thing 7");
    CHECK(is_response(sent(2), "3", RPC_SERVER_ERROR));
    CHECK_STR(data_code(sent(2)), "no_memory");
    CHECK(is_response(sent(3), "4", RPC_INVALID_PARAMS));
}

static void test_blank_lines(void)
{
    reset(1 << 20);
    line("");
    line("   ");
    line("\t\r");
    line(" \n");
    CHECK_INT(nsent(), 1); /* a newline inside a line is not blank: a parse error */
    CHECK(is_response(sent(0), "null", RPC_PARSE_ERROR));
    line("\r{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":1}\r");
    CHECK_INT(nsent(), 2);
    CHECK(is_response(sent(1), "1", 0));
}

static void test_nested_batch(void)
{
    reset(1 << 20);
    line("[[{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":1}],[],"
         "{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":2},null,\"x\"]");
    CHECK_INT(nsent(), 1);
    CHECK_INT(json_array_size(sent(0)), 5);
    CHECK(is_response(json_array_get(sent(0), 0), "null", RPC_INVALID_REQUEST));
    CHECK(is_response(json_array_get(sent(0), 1), "null", RPC_INVALID_REQUEST));
    CHECK(is_response(json_array_get(sent(0), 2), "2", 0));
    CHECK(is_response(json_array_get(sent(0), 3), "null", RPC_INVALID_REQUEST));
    CHECK(is_response(json_array_get(sent(0), 4), "null", RPC_INVALID_REQUEST));
    CHECK_INT(fake.calls, 1);
}

/* ---- deferred answers ------------------------------------------------------------- */

static void test_defer_alone(void)
{
    reset(1 << 20);
    line("{\"jsonrpc\":\"2.0\",\"method\":\"defer\",\"id\":\"w\"}");
    CHECK_INT(nsent(), 0);
    CHECK_INT(fake.ndefers, 1);
    rpc_defer_end(&fake.defers[0], "result", json_string("done"));
    CHECK_INT(nsent(), 1);
    CHECK(is_response(sent(0), "\"w\"", 0));
    CHECK_STR(json_string_value(json_object_get(sent(0), "result")), "done");
    CHECK(fake.defers[0].id.len == 0 && fake.defers[0].batch == NULL);
}

/* A batch is answered once its last deferred call is, as one line in
 * element order; a deferred call ended without a value leaves null. */
static void test_defer_in_batch(void)
{
    json_t *r;

    reset(1 << 20);
    line("[{\"jsonrpc\":\"2.0\",\"method\":\"defer\",\"id\":1},"
         "{\"jsonrpc\":\"2.0\",\"method\":\"echo\"},"
         "{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":2},"
         "{\"jsonrpc\":\"2.0\",\"method\":\"defer\",\"id\":3},"
         "{\"jsonrpc\":\"2.0\",\"method\":\"defer\",\"id\":4}]");
    CHECK_INT(nsent(), 0);
    CHECK_INT(fake.ndefers, 3);
    rpc_defer_end(&fake.defers[1], "error",
                  rpc_error_object(RPC_SERVER_ERROR, "timeout", NULL, "timed out"));
    rpc_defer_end(&fake.defers[2], NULL, NULL);
    CHECK_INT(nsent(), 0);
    rpc_defer_end(&fake.defers[0], "result", json_integer(11));
    CHECK_INT(nsent(), 1);
    r = sent(0);
    CHECK(json_is_array(r) && json_array_size(r) == 4);
    CHECK(is_response(json_array_get(r, 0), "1", 0));
    CHECK(is_response(json_array_get(r, 1), "2", 0));
    CHECK(is_response(json_array_get(r, 2), "3", RPC_SERVER_ERROR));
    CHECK_STR(data_code(json_array_get(r, 2)), "timeout");
    CHECK(json_is_null(json_array_get(r, 3)));
}

/* ---- the peer --------------------------------------------------------------------- */

static void test_drop_mid_batch(void)
{
    reset(1 << 20);
    line("[{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":1},"
         "{\"jsonrpc\":\"2.0\",\"method\":\"drop\",\"id\":2},"
         "{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":3}]");
    CHECK_INT(fake.drops, 1);
    CHECK_INT(fake.calls, 2); /* nothing runs after the drop */
    CHECK_INT(nsent(), 0);    /* a closing peer is sent nothing */
    line("{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":4}");
    CHECK_INT(fake.calls, 2);
}

static void test_batch_output_limit(void)
{
    reset(400);
    line("[{\"jsonrpc\":\"2.0\",\"method\":\"big\",\"id\":1},"
         "{\"jsonrpc\":\"2.0\",\"method\":\"big\",\"id\":2},"
         "{\"jsonrpc\":\"2.0\",\"method\":\"big\",\"id\":3},"
         "{\"jsonrpc\":\"2.0\",\"method\":\"big\",\"id\":4}]");
    CHECK_INT(fake.drops, 1);
    CHECK(fake.why != NULL && strstr(fake.why, "output limit") != NULL);
    CHECK_INT(fake.calls, 2); /* stopped once over 400 bytes */
    CHECK_INT(nsent(), 0);
}

static void test_no_memory_for_a_batch(void)
{
    reset(1 << 20);
    mem_fail_after(1);
    line("[{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":1}]");
    CHECK(!mem_fail_pending());
    mem_fail_after(0);
    CHECK_INT(nsent(), 1);
    CHECK(is_response(sent(0), "null", RPC_SERVER_ERROR));
    CHECK_STR(data_code(sent(0)), "no_memory");
    CHECK_INT(fake.calls, 0);
}

/* Every test's batches, ids and deferred answers are gone once it ends,
 * and no reference on the peer was left taken. */
static void test_nothing_left(void)
{
    uint64_t blocks, json_blocks;

    reset(1 << 20);
    blocks = live_blocks();
    json_blocks = live_json_blocks();
    line("[{\"jsonrpc\":\"2.0\",\"method\":\"defer\",\"id\":{\"bad\":1}},"
         "{\"jsonrpc\":\"2.0\",\"method\":\"defer\",\"id\":\"x\"},"
         "{\"jsonrpc\":\"2.0\",\"method\":\"fail\",\"id\":1},7]");
    CHECK(live_blocks() > blocks); /* the batch, held by its deferred call */
    rpc_defer_end(&fake.defers[0], "result", json_true());
    CHECK_INT(nsent(), 1);
    json_array_clear(fake.sent);
    CHECK_INT(live_blocks(), blocks);
    CHECK_INT(live_json_blocks(), json_blocks);
    CHECK_INT(fake.refs, 0);
}

int main(void)
{
    static const test_case_t cases[] = {
        TEST_CASE(test_spec_named_params),
        TEST_CASE(test_spec_positional_params),
        TEST_CASE(test_spec_notifications),
        TEST_CASE(test_spec_errors),
        TEST_CASE(test_spec_invalid_batches),
        TEST_CASE(test_spec_mixed_batch),
        TEST_CASE(test_spec_batch_of_notifications),
        TEST_CASE(test_ids_of_every_type),
        TEST_CASE(test_raw_id_echo),
        TEST_CASE(test_parse_error_column),
        TEST_CASE(test_invalid_ids),
        TEST_CASE(test_invalid_members),
        TEST_CASE(test_results_and_errors),
        TEST_CASE(test_blank_lines),
        TEST_CASE(test_nested_batch),
        TEST_CASE(test_defer_alone),
        TEST_CASE(test_defer_in_batch),
        TEST_CASE(test_drop_mid_batch),
        TEST_CASE(test_batch_output_limit),
        TEST_CASE(test_no_memory_for_a_batch),
        TEST_CASE(test_nothing_left),
    };
    uint64_t blocks, json_blocks;
    int rc;

    if (mem_install() != 0)
        return 1;
    jsonr_init(&reader, realloc, free);
    blocks = live_blocks();
    json_blocks = live_json_blocks();
    rc = test_main(cases, sizeof(cases) / sizeof(cases[0]));
    json_decref(fake.sent);
    fake.sent = NULL;
    jsonr_free(&reader);
    if (live_blocks() != blocks || live_json_blocks() != json_blocks) {
        fprintf(stderr, "heap not back at baseline: fetchd %llu -> %llu, jansson %llu -> %llu\n",
                (unsigned long long)blocks, (unsigned long long)live_blocks(),
                (unsigned long long)json_blocks, (unsigned long long)live_json_blocks());
        rc = 1;
    }
    return rc;
}
