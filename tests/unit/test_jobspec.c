/* Unit tests for proto/jobspec.c: decoding every field, refusing bad specs
 * with a message that names the field, encoding a job, and that nothing stays
 * on fetchd's heap afterwards. */
#include <stdint.h>
#include <string.h>

#include "err.h"
#include "jobspec.h"
#include "jsonr.h"
#include "mem.h"
#include "test.h"

static uint64_t live_blocks(void)
{
    uint64_t blocks, bytes;
    mem_get(MEM_FETCHD, &blocks, &bytes);
    return blocks;
}

static int is_zeroed(const job_spec_t *s)
{
    static const job_spec_t zero;
    return memcmp(s, &zero, sizeof(zero)) == 0;
}

/* Decodes the JSON text js; returns jobspec_decode_r()'s result. */
static int decode(const char *js, job_spec_t *spec, char *err, size_t errlen)
{
    jsonr_t r;
    int rc;
    jsonr_init(&r, mem_realloc, mem_free);
    rc = jsonr_parse_flags(&r, js, strlen(js), JSONR_ALLOW_NUL);
    if (rc != 0) {
        if (rc == -1)
            fprintf(stderr, "  bad test JSON: %s: %s\n", js, r.error);
        jsonr_free(&r);
        memset(spec, 0, sizeof(*spec));
        return rc == -2 ? ERR_NO_MEMORY : 1;
    }
    rc = jobspec_decode_r(&r, 0, spec, err, errlen);
    jsonr_free(&r);
    return rc;
}

static void test_defaults(void)
{
    job_spec_t s;
    char err[256];
    CHECK(mem_install() == 0);
    CHECK_INT(decode("{\"url\": \"http://a/\"}", &s, err, sizeof(err)), 0);
    CHECK_STR(s.url, "http://a/");
    CHECK(s.method == NULL);
    CHECK_INT(s.nheaders, 0);
    CHECK(s.body == NULL);
    CHECK_INT(s.output, JOB_OUTPUT_DISCARD);
    CHECK(s.output_path == NULL);
    CHECK_INT(s.inline_max, JOB_DEFAULT_INLINE_MAX);
    CHECK_INT(s.sha256, 0);
    CHECK(s.expected_sha256 == NULL);
    CHECK_INT(s.connect_timeout_ms, JOB_DEFAULT_CONNECT_TIMEOUT_MS);
    CHECK_INT(s.first_byte_timeout_ms, JOB_DEFAULT_FIRST_BYTE_TIMEOUT_MS);
    CHECK_INT(s.idle_timeout_ms, JOB_DEFAULT_IDLE_TIMEOUT_MS);
    CHECK_INT(s.total_timeout_ms, 0);
    CHECK_INT(s.retries, 0);
    CHECK_INT(s.max_redirects, JOB_DEFAULT_MAX_REDIRECTS);
    CHECK_INT(s.max_body, 0);
    CHECK_INT(s.priority, 0);
    CHECK(s.labels == NULL);
    job_spec_dispose(&s);
    CHECK_INT(live_blocks(), 0);
}

static const char full_spec[] =
    "{\"url\": \"https://example.com/x\", \"method\": \"patch\","
    " \"headers\": {\"X-A\": \"  one \\t\", \"Accept\": \"*/*\"},"
    " \"body\": \"hello\", \"output\": \"out/file.bin\", \"inline_max\": 4096,"
    " \"expected_sha256\": \"ABCDEF0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789\","
    " \"timeouts\": {\"connect\": 1.5, \"first_byte\": 2, \"idle\": 0.25, \"total\": 86400},"
    " \"retries\": 3, \"max_redirects\": 0, \"max_body\": 1000000,"
    " \"fail_on_http_error\": true, \"insecure\": true, \"allow_downgrade\": true,"
    " \"ca_file\": \"/etc/ca.pem\", \"priority\": -1000, \"labels\": {\"k\": [1, 2]}}";

static void test_full(void)
{
    job_spec_t s;
    char err[256] = "";
    int rc = decode(full_spec, &s, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "  %s\n", err);
    CHECK_INT(rc, 0);
    if (rc != 0)
        return;
    CHECK_STR(s.url, "https://example.com/x");
    CHECK_STR(s.method, "patch");
    CHECK_INT(s.nheaders, 2);
    CHECK_STR(s.headers[0].name, "X-A");
    CHECK_STR(s.headers[0].value, "one");
    CHECK_STR(s.headers[1].name, "Accept");
    CHECK_STR(s.headers[1].value, "*/*");
    CHECK_INT(s.body_len, 5);
    CHECK(s.body != NULL && memcmp(s.body, "hello", 5) == 0);
    CHECK_INT(s.output, JOB_OUTPUT_FILE);
    CHECK_STR(s.output_path, "out/file.bin");
    CHECK_INT(s.inline_max, 4096);
    CHECK_STR(s.expected_sha256,
              "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789");
    CHECK_INT(s.sha256, 1);
    CHECK_INT(s.connect_timeout_ms, 1500);
    CHECK_INT(s.first_byte_timeout_ms, 2000);
    CHECK_INT(s.idle_timeout_ms, 250);
    CHECK_INT(s.total_timeout_ms, 86400000);
    CHECK_INT(s.retries, 3);
    CHECK_INT(s.max_redirects, 0);
    CHECK_INT(s.max_body, 1000000);
    CHECK_INT(s.fail_on_http_error, 1);
    CHECK_INT(s.insecure, 1);
    CHECK_INT(s.allow_downgrade, 1);
    CHECK_STR(s.ca_file, "/etc/ca.pem");
    CHECK_INT(s.priority, -1000);
    CHECK(s.labels != NULL && json_is_array(json_object_get(s.labels, "k")));
    job_spec_dispose(&s);
    CHECK_INT(live_blocks(), 0);
}

static void test_variants(void)
{
    job_spec_t s;
    char err[256] = "";

    CHECK_INT(decode("{\"url\": \"http://a/\", \"headers\": [\"X-A: 1\", \"X-B:2\", "
                     "[\"X-C\", \" 3 \"], \"X-D:\"], \"output\": \"inline\", \"sha256\": true,"
                     " \"timeout\": 0.0001, \"priority\": 1000}",
                     &s, err, sizeof(err)),
              0);
    CHECK_INT(s.nheaders, 4);
    if (s.nheaders == 4) {
        CHECK_STR(s.headers[0].name, "X-A");
        CHECK_STR(s.headers[0].value, "1");
        CHECK_STR(s.headers[1].value, "2");
        CHECK_STR(s.headers[2].name, "X-C");
        CHECK_STR(s.headers[2].value, "3");
        CHECK_STR(s.headers[3].name, "X-D");
        CHECK_STR(s.headers[3].value, "");
    }
    CHECK_INT(s.output, JOB_OUTPUT_INLINE);
    CHECK(s.output_path == NULL);
    CHECK_INT(s.sha256, 1);
    CHECK_INT(s.total_timeout_ms, 1);
    CHECK_INT(s.priority, 1000);
    job_spec_dispose(&s);

    /* Base64 bodies may carry any bytes, NUL included. */
    CHECK_INT(decode("{\"url\": \"http://a/\", \"body_base64\": \"AAH/YQ==\", "
                     "\"output\": \"discard\", \"headers\": []}",
                     &s, err, sizeof(err)),
              0);
    CHECK_INT(s.body_len, 4);
    CHECK(s.body != NULL && memcmp(s.body,
                                   "\x00\x01\xff"
                                   "a",
                                   4) == 0);
    CHECK_INT(s.output, JOB_OUTPUT_DISCARD);
    CHECK_INT(s.nheaders, 0);
    job_spec_dispose(&s);

    CHECK_INT(decode("{\"url\": \"http://a/\", \"body_base64\": \"\", \"body\": null}", &s, err,
                     sizeof(err)),
              ERR_INVALID_REQUEST);
    CHECK_INT(decode("{\"url\": \"http://a/\", \"body_base64\": \"\"}", &s, err, sizeof(err)), 0);
    CHECK(s.body != NULL);
    CHECK_INT(s.body_len, 0);
    job_spec_dispose(&s);

    CHECK_INT(decode("{\"url\": \"http://a/\", \"body\": \"a\\u0000b\"}", &s, err, sizeof(err)), 0);
    CHECK_INT(s.body_len, 3);
    job_spec_dispose(&s);
    CHECK_INT(live_blocks(), 0);
}

typedef struct bad_case {
    const char *js;
    const char *msg; /* a substring of the expected message */
} bad_case_t;

static const bad_case_t bad[] = {
    {"[]", "job: must be a JSON object"},
    {"\"http://a/\"", "job: must be a JSON object"},
    {"{}", "url: required"},
    {"{\"url\": \"\"}", "url: must not be empty"},
    {"{\"url\": 5}", "url: must be a string"},
    {"{\"url\": \"http://a/\", \"urls\": 1}", "urls: unknown field"},
    {"{\"url\": \"http://a/\", \"retry\": 1}", "retry: unknown field"},
    {"{\"url\": \"http://a/\", \"method\": \"\"}", "method: must be an HTTP method token"},
    {"{\"url\": \"http://a/\", \"method\": \"GE T\"}", "method: must be an HTTP method token"},
    {"{\"url\": \"http://a/\", \"method\": \"GET\\r\\n\"}", "method: must be an HTTP method"},
    {"{\"url\": \"http://a/\", \"method\": \"ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFG\"}", "method:"},
    {"{\"url\": \"http://a/\", \"method\": 1}", "method: must be a string"},
    {"{\"url\": \"http://a/\", \"headers\": \"X: y\"}", "headers: must be an object or an array"},
    {"{\"url\": \"http://a/\", \"headers\": {\"X-A\": \"a\\r\\nB: c\"}}",
     "headers: value of \"X-A\" contains CR or LF"},
    {"{\"url\": \"http://a/\", \"headers\": {\"X-A\": \"a\\nb\"}}",
     "headers: value of \"X-A\" contains CR or LF"},
    {"{\"url\": \"http://a/\", \"headers\": {\"X-A\": \"a\\u0000b\"}}",
     "headers: value of \"X-A\" contains a NUL byte"},
    {"{\"url\": \"http://a/\", \"headers\": {\"X-A\": \"a\\u0001b\"}}",
     "headers: value of \"X-A\" contains a control byte"},
    {"{\"url\": \"http://a/\", \"headers\": {\"X-A\": \"a\\u007fb\"}}",
     "headers: value of \"X-A\" contains a control byte"},
    {"{\"url\": \"http://a/\", \"headers\": {\"X-A\": 1}}",
     "headers: value of \"X-A\" must be a string"},
    {"{\"url\": \"http://a/\", \"headers\": {\"X A\": \"1\"}}", "headers: invalid header name"},
    {"{\"url\": \"http://a/\", \"headers\": {\"\": \"1\"}}", "headers: invalid header name"},
    {"{\"url\": \"http://a/\", \"headers\": {\"Host\": \"b\"}}", "headers: \"Host\" is set by"},
    {"{\"url\": \"http://a/\", \"headers\": [\"content-length: 5\"]}",
     "headers: \"content-length\" is set by"},
    {"{\"url\": \"http://a/\", \"headers\": [[\"Transfer-Encoding\", \"chunked\"]]}",
     "headers: \"Transfer-Encoding\" is set by"},
    {"{\"url\": \"http://a/\", \"headers\": {\"CONNECTION\": \"close\"}}",
     "headers: \"CONNECTION\" is set by"},
    {"{\"url\": \"http://a/\", \"headers\": [\"X-A\"]}", "headers[0]: expected \"Name: value\""},
    {"{\"url\": \"http://a/\", \"headers\": [\"X-A: 1\", 5]}", "headers[1]: must be"},
    {"{\"url\": \"http://a/\", \"headers\": [[\"X-A\"]]}", "headers[0]: must be"},
    {"{\"url\": \"http://a/\", \"headers\": [[\"X-A\", 1]]}", "headers[0]: must be"},
    {"{\"url\": \"http://a/\", \"headers\": [\"X-A : 1\"]}", "headers: invalid header name"},
    {"{\"url\": \"http://a/\", \"headers\": [\"X-A: 1\\r\\n\"]}", "contains CR or LF"},
    {"{\"url\": \"http://a/\", \"body\": 5}", "body: must be a string"},
    {"{\"url\": \"http://a/\", \"body_base64\": \"!!!!\"}", "body_base64: invalid base64"},
    {"{\"url\": \"http://a/\", \"body_base64\": \"YQ=x\"}", "body_base64: invalid base64"},
    {"{\"url\": \"http://a/\", \"body_base64\": 1}", "body_base64: must be a string"},
    {"{\"url\": \"http://a/\", \"body\": \"a\", \"body_base64\": \"YQ==\"}",
     "body_base64: cannot be combined"},
    {"{\"url\": \"http://a/\", \"body_base64\": \"YQ==\", \"body\": \"a\"}",
     "body_base64: cannot be combined"},
    {"{\"url\": \"http://a/\", \"output\": \"\"}", "output: must be"},
    {"{\"url\": \"http://a/\", \"output\": 1}", "output: must be a string"},
    {"{\"url\": \"http://a/\", \"output\": \"a\\u0000b\"}", "output: must not contain NUL"},
    {"{\"url\": \"http://a/\", \"inline_max\": 0}", "inline_max: must be an integer from 1 to"},
    {"{\"url\": \"http://a/\", \"inline_max\": 67108865}", "inline_max: must be an integer"},
    {"{\"url\": \"http://a/\", \"inline_max\": 1.5}", "inline_max: must be an integer"},
    {"{\"url\": \"http://a/\", \"sha256\": 1}", "sha256: must be true or false"},
    {"{\"url\": \"http://a/\", \"expected_sha256\": \"abc\"}",
     "expected_sha256: must be 64 hexadecimal digits"},
    {"{\"url\": \"http://a/\", \"expected_sha256\": "
     "\"g000000000000000000000000000000000000000000000000000000000000000\"}",
     "expected_sha256: must be 64"},
    {"{\"url\": \"http://a/\", \"sha256\": false, \"expected_sha256\": "
     "\"0000000000000000000000000000000000000000000000000000000000000000\"}",
     "sha256: cannot be false"},
    {"{\"url\": \"http://a/\", \"timeouts\": 5}", "timeouts: must be an object"},
    {"{\"url\": \"http://a/\", \"timeouts\": {\"connect\": 0}}",
     "timeouts.connect: must be a positive number of seconds"},
    {"{\"url\": \"http://a/\", \"timeouts\": {\"connect\": -1}}", "timeouts.connect: must be"},
    {"{\"url\": \"http://a/\", \"timeouts\": {\"first_byte\": \"5\"}}",
     "timeouts.first_byte: must be a positive number"},
    {"{\"url\": \"http://a/\", \"timeouts\": {\"idle\": 86401}}", "timeouts.idle: must be"},
    {"{\"url\": \"http://a/\", \"timeouts\": {\"total\": null}}", "timeouts.total: must be"},
    {"{\"url\": \"http://a/\", \"timeouts\": {\"read\": 1}}", "timeouts.read: unknown field"},
    {"{\"url\": \"http://a/\", \"timeout\": 0}", "timeout: must be a positive number"},
    {"{\"url\": \"http://a/\", \"timeout\": true}", "timeout: must be a positive number"},
    {"{\"url\": \"http://a/\", \"timeout\": 5, \"timeouts\": {\"total\": 5}}",
     "timeout: cannot be combined"},
    {"{\"url\": \"http://a/\", \"retries\": -1}", "retries: must be an integer from 0 to 20"},
    {"{\"url\": \"http://a/\", \"retries\": 21}", "retries: must be an integer from 0 to 20"},
    {"{\"url\": \"http://a/\", \"retries\": 2.0}", "retries: must be an integer"},
    {"{\"url\": \"http://a/\", \"max_redirects\": 51}", "max_redirects: must be an integer"},
    {"{\"url\": \"http://a/\", \"max_body\": -1}", "max_body: must be an integer"},
    {"{\"url\": \"http://a/\", \"fail_on_http_error\": \"yes\"}",
     "fail_on_http_error: must be true or false"},
    {"{\"url\": \"http://a/\", \"insecure\": 1}", "insecure: must be true or false"},
    {"{\"url\": \"http://a/\", \"allow_downgrade\": null}", "allow_downgrade: must be true"},
    {"{\"url\": \"http://a/\", \"ca_file\": \"\"}", "ca_file: must not be empty"},
    {"{\"url\": \"http://a/\", \"priority\": 1001}", "priority: must be an integer from -1000"},
    {"{\"url\": \"http://a/\", \"priority\": -1001}", "priority: must be an integer"},
    {"{\"url\": \"http://a/\", \"labels\": [1]}", "labels: must be an object"},
};

static void test_bad(void)
{
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        job_spec_t s;
        char err[256] = "";
        int rc = decode(bad[i].js, &s, err, sizeof(err));
        if (rc != ERR_INVALID_REQUEST || strstr(err, bad[i].msg) == NULL)
            fprintf(stderr, "  %s -> %d \"%s\"\n", bad[i].js, rc, err);
        CHECK_INT(rc, ERR_INVALID_REQUEST);
        CHECK(strstr(err, bad[i].msg) != NULL);
        CHECK(is_zeroed(&s));
        CHECK_INT(live_blocks(), 0);
    }
}

static void test_bad_limits(void)
{
    job_spec_t s;
    char err[256] = "", name[16];
    json_t *obj = json_pack("{s:s}", "url", "http://a/");
    json_t *headers = json_object(), *small;
    for (int i = 0; i < 101; i++) {
        snprintf(name, sizeof(name), "X-%d", i);
        json_object_set_new(headers, name, json_string("v"));
    }
    json_object_set_new(obj, "headers", headers);
    CHECK_INT(jobspec_decode(obj, &s, err, sizeof(err)), ERR_INVALID_REQUEST);
    CHECK(strstr(err, "headers: too many (at most 100)") != NULL);
    json_object_del(headers, "X-0");
    CHECK_INT(jobspec_decode(obj, &s, err, sizeof(err)), 0);
    CHECK_INT(s.nheaders, 100);
    job_spec_dispose(&s);

    /* A NUL byte inside a field name is not a known field. */
    small = json_object();
    json_object_set_new(small, "url", json_string("http://a/"));
    json_object_setn_new(small, "url\0x", 5, json_string("http://b/"));
    CHECK_INT(jobspec_decode(small, &s, err, sizeof(err)), ERR_INVALID_REQUEST);
    CHECK(strstr(err, "url?x: unknown field") != NULL);
    /* A NULL or tiny error buffer is fine. */
    CHECK_INT(jobspec_decode(small, &s, NULL, 0), ERR_INVALID_REQUEST);
    CHECK_INT(jobspec_decode(small, &s, err, 3), ERR_INVALID_REQUEST);
    CHECK_INT(strlen(err), 2);
    json_decref(small);
    json_decref(obj);
    CHECK_INT(live_blocks(), 0);
}

static void test_no_memory(void)
{
    /* Every allocation the full spec makes fails once in turn: the result is
     * ERR_NO_MEMORY with nothing left behind, until the decode succeeds. */
    json_t *obj = json_loads(full_spec, 0, NULL);
    int rc = ERR_NO_MEMORY, n;
    for (n = 1; rc == ERR_NO_MEMORY && n < 100; n++) {
        job_spec_t s;
        char err[256];
        mem_fail_after(n);
        rc = decode(full_spec, &s, err, sizeof(err)); /* the parse may run out too */
        mem_fail_after(0);
        if (rc == ERR_NO_MEMORY) {
            CHECK(is_zeroed(&s));
            CHECK_INT(live_blocks(), 0);
        } else {
            CHECK_INT(rc, 0);
            job_spec_dispose(&s);
        }
    }
    CHECK(n > 5);
    CHECK_INT(live_blocks(), 0);
    /* The same through the json_t wrapper. */
    rc = ERR_NO_MEMORY;
    for (n = 1; rc == ERR_NO_MEMORY && n < 100; n++) {
        job_spec_t s;
        char err[256];
        mem_fail_after(n);
        rc = jobspec_decode(obj, &s, err, sizeof(err));
        mem_fail_after(0);
        if (rc == ERR_NO_MEMORY) {
            CHECK(is_zeroed(&s));
            CHECK_INT(live_blocks(), 0);
        } else {
            CHECK_INT(rc, 0);
            job_spec_dispose(&s);
        }
    }
    CHECK(n > 5);
    json_decref(obj);
    CHECK_INT(live_blocks(), 0);
}

/* Repeated keys mean what they meant when jansson's tree was decoded: each
 * key once, at its first place, with its last value. The tree (through the
 * json_t wrapper) and the text (jobspec_decode_r) give the same answer. */
static void test_same_as_tree(void)
{
    static const char *const cases[] = {
        "{\"url\": \"http://a/\", \"url\": \"http://b/\"}",
        "{\"retries\": \"x\", \"url\": \"http://a/\", \"retries\": 5}",
        "{\"retries\": 1, \"bogus\": 1, \"retries\": \"y\"}",
        "{\"retries\": \"x\", \"bogus\": 1, \"retries\": \"y\"}",
        "{\"url\": \"http://a/\", \"headers\": {\"X-A\": \"1\", \"X-B\": \"2\", \"X-A\": \"3\"}}",
        "{\"url\": \"http://a/\", \"headers\": {\"X A\": 1, \"X A\": \"2\"}}",
        "{\"url\": \"http://a/\", \"timeouts\": {\"connect\": 0, \"connect\": 2}}",
        "{\"url\": \"http://a/\", \"timeouts\": {\"read\": 0, \"idle\": 2, \"read\": 1}}",
        "{\"url\": \"http://a/\", \"labels\": {\"k\": 1, \"k\": [2]}}",
        "{\"url\": \"http://a/\", \"body\": \"x\", \"body\": \"y\"}",
        "{\"url\": \"http://a/\", \"timeout\": 1, \"timeouts\": {\"total\": 1, \"total\": 2}}",
        "{\"url\": \"http://a/\", \"a1\": 1, \"a2\": 2, \"url\": 3}",
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        job_spec_t a, b;
        char ea[256] = "", eb[256] = "";
        json_t *tree = json_loads(cases[i], 0, NULL);
        int ra = jobspec_decode(tree, &a, ea, sizeof(ea));
        int rb = decode(cases[i], &b, eb, sizeof(eb));
        CHECK_INT(ra, rb);
        CHECK_STR(ea, eb);
        if (ra == 0 && rb == 0) {
            json_t *ja = jobspec_encode_spec(&a), *jb = jobspec_encode_spec(&b);
            CHECK(ja != NULL && jb != NULL && json_equal(ja, jb));
            json_decref(ja);
            json_decref(jb);
            job_spec_dispose(&a);
            job_spec_dispose(&b);
        }
        json_decref(tree);
    }
    CHECK_INT(live_blocks(), 0);
}

/* The changes of a `set` call. */
static void test_set(void)
{
    static const struct {
        const char *js;
        int rc;
        unsigned which;
        const char *msg;
    } cases[] = {
        {"{\"id\": \"a\", \"priority\": 5}", 0, 1, ""},
        {"{\"ids\": [], \"rate\": 2.5, \"limit_rate\": 100}", 0, 2 | 8, ""},
        {"{\"delay\": 1, \"priority\": \"x\", \"priority\": 3}", 0, 1 | 4, ""},
        {"{\"id\": \"a\"}", ERR_INVALID_REQUEST, 0, "params: nothing to change"},
        {"{\"url\": \"x\"}", ERR_INVALID_REQUEST, 0, "url: unknown field (set changes"},
        {"{\"priority\": 5000}", ERR_INVALID_REQUEST, 0, "priority: must be an integer"},
        {"[]", ERR_INVALID_REQUEST, 0, "params: nothing to change"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        jsonr_t r;
        job_spec_t to, to2;
        unsigned which = 99, which2 = 99;
        char err[256] = "", err2[256] = "";
        json_t *tree = json_loads(cases[i].js, JSON_DECODE_ANY, NULL);
        jsonr_init(&r, mem_realloc, mem_free);
        CHECK_INT(jsonr_parse(&r, cases[i].js, strlen(cases[i].js)), 0);
        CHECK_INT(jobspec_decode_set_r(&r, 0, &to, &which, err, sizeof(err)), cases[i].rc);
        CHECK(strstr(err, cases[i].msg) != NULL);
        if (cases[i].rc == 0)
            CHECK_INT(which, cases[i].which);
        CHECK_INT(jobspec_decode_set(tree, &to2, &which2, err2, sizeof(err2)), cases[i].rc);
        CHECK_STR(err, err2);
        CHECK_INT(which, which2);
        jsonr_free(&r);
        json_decref(tree);
    }
    CHECK_INT(live_blocks(), 0);
}

/* A job as the scheduler would have it after finishing. */
static void make_job(job_t *j)
{
    memset(j, 0, sizeof(*j));
    job_spec_init(&j->spec);
    strcpy(j->id, "0123456789abcdef");
    j->state = JOB_DONE;
    j->spec.url = mem_strdup("http://a/start");
    j->spec.priority = 7;
    j->effective_url = mem_strdup("http://a/final");
    j->http_status = 200;
    j->bytes = 12345;
    strcpy(j->sha256, "ab12");
    j->output = mem_strdup("/srv/dl/file");
    j->redirects = 2;
    j->attempts = 3;
    j->timings.created = 1700000000.5;
    j->timings.started = 1700000001.25;
    j->timings.queued_ms = 750;
    j->timings.dns_ms = 1;
    j->timings.connect_ms = 2;
    j->timings.ttfb_ms = 3;
    j->timings.total_ms = 4;
}

static void free_job(job_t *j)
{
    job_spec_dispose(&j->spec);
    if (j->headers != NULL)
        job_pairs_dispose(j->headers);
    if (j->redirect_chain != NULL)
        job_pairs_dispose(j->redirect_chain);
    mem_free(j->effective_url);
    mem_free(j->output);
    mem_free(j->inline_body);
}

static const char *str_at(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static long long int_at(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_integer(v) ? json_integer_value(v) : -1;
}

static void test_encode_done(void)
{
    job_t j;
    json_t *o, *t;
    make_job(&j);
    j.spec.labels = json_pack("{s:s}", "team", "x");
    o = jobspec_encode_job(&j);
    CHECK(o != NULL);
    CHECK_STR(str_at(o, "id"), "0123456789abcdef");
    CHECK_STR(str_at(o, "state"), "done");
    CHECK_STR(str_at(o, "url"), "http://a/start");
    CHECK_STR(str_at(o, "method"), "GET");
    CHECK_STR(str_at(o, "effective_url"), "http://a/final");
    CHECK_INT(int_at(o, "http_status"), 200);
    CHECK_INT(int_at(o, "bytes"), 12345);
    CHECK_STR(str_at(o, "sha256"), "ab12");
    CHECK_STR(str_at(o, "output"), "/srv/dl/file");
    CHECK_INT(int_at(o, "redirects"), 2);
    CHECK_INT(int_at(o, "attempts"), 3);
    CHECK_INT(int_at(o, "priority"), 7);
    CHECK(json_object_get(o, "error") == NULL);
    CHECK(json_object_get(o, "inline") == NULL);
    CHECK_STR(str_at(json_object_get(o, "labels"), "team"), "x");
    t = json_object_get(o, "timings");
    CHECK(json_real_value(json_object_get(t, "created")) == 1700000000.5);
    CHECK(json_real_value(json_object_get(t, "started")) == 1700000001.25);
    CHECK(json_object_get(t, "finished") == NULL);
    CHECK_INT(int_at(t, "queued_ms"), 750);
    CHECK_INT(int_at(t, "dns_ms"), 1);
    CHECK_INT(int_at(t, "connect_ms"), 2);
    CHECK_INT(int_at(t, "ttfb_ms"), 3);
    CHECK_INT(int_at(t, "total_ms"), 4);
    json_decref(o);
    free_job(&j);
    CHECK_INT(live_blocks(), 0);
}

static void test_encode_failed(void)
{
    job_t j;
    json_t *o, *e;
    make_job(&j);
    j.state = JOB_FAILED;
    j.spec.method = mem_strdup("POST");
    j.http_status = 0;
    j.sha256[0] = '\0';
    mem_free(j.output);
    j.output = NULL;
    mem_free(j.effective_url);
    j.effective_url = NULL;
    j.error = ERR_TIMEOUT;
    j.timings.finished = 1700000002.0;
    o = jobspec_encode_job(&j);
    CHECK(o != NULL);
    CHECK_STR(str_at(o, "state"), "failed");
    CHECK_STR(str_at(o, "method"), "POST");
    CHECK(json_object_get(o, "http_status") == NULL);
    CHECK(json_object_get(o, "sha256") == NULL);
    CHECK(json_object_get(o, "output") == NULL);
    CHECK(json_object_get(o, "effective_url") == NULL);
    CHECK(json_object_get(o, "labels") == NULL);
    e = json_object_get(o, "error");
    CHECK_STR(str_at(e, "code"), "timeout");
    CHECK_STR(str_at(e, "message"), err_str(ERR_TIMEOUT));
    CHECK(json_real_value(json_object_get(json_object_get(o, "timings"), "finished")) ==
          1700000002.0);
    json_decref(o);

    /* A message quoting a server may not be UTF-8: it is repaired, not lost. */
    snprintf(j.error_msg, sizeof(j.error_msg), "bad status line \"HTTP/1.1 2\xff\xc3\"");
    o = jobspec_encode_job(&j);
    CHECK(o != NULL);
    CHECK_STR(str_at(json_object_get(o, "error"), "message"), "bad status line \"HTTP/1.1 2??\"");
    json_decref(o);
    free_job(&j);
    CHECK_INT(live_blocks(), 0);
}

static void check_inline(const char *body, size_t len, const char *encoding, const char *data)
{
    job_t j;
    json_t *o, *in;
    make_job(&j);
    j.spec.output = JOB_OUTPUT_INLINE;
    j.inline_body = len ? mem_strndup(body, len) : NULL;
    j.inline_len = len;
    o = jobspec_encode_job(&j);
    in = json_object_get(o, "inline");
    CHECK_STR(str_at(in, "encoding"), encoding);
    CHECK_STR(str_at(in, "data"), data);
    json_decref(o);
    j.state = JOB_RUNNING;
    o = jobspec_encode_job(&j);
    CHECK(json_object_get(o, "inline") == NULL);
    json_decref(o);
    free_job(&j);
}

static void test_encode_inline(void)
{
    check_inline("hello\n", 6, "text", "hello\n");
    check_inline("caf\xc3\xa9", 5, "text", "caf\xc3\xa9");
    check_inline("", 0, "text", "");
    check_inline("a\0b", 3, "base64", "YQBi");
    check_inline("\xff\xfe", 2, "base64", "//4=");
    check_inline("\xed\xa0\x80", 3, "base64", "7aCA");         /* a UTF-16 surrogate */
    check_inline("\xc0\xaf", 2, "base64", "wK8=");             /* an overlong '/' */
    check_inline("\xf4\x90\x80\x80", 4, "base64", "9JCAgA=="); /* above U+10FFFF */
    check_inline("\xe2\x82", 2, "base64", "4oI=");             /* truncated */
    CHECK_INT(live_blocks(), 0);
}

static void test_encode_error(void)
{
    json_t *o = jobspec_encode_error(ERR_INVALID_REQUEST, "url: required");
    CHECK_STR(str_at(o, "code"), "invalid_request");
    CHECK_STR(str_at(o, "message"), "url: required");
    json_decref(o);
    o = jobspec_encode_error(ERR_DNS, NULL);
    CHECK_STR(str_at(o, "code"), "dns");
    CHECK_STR(str_at(o, "message"), err_str(ERR_DNS));
    json_decref(o);
    CHECK_INT(live_blocks(), 0);
}

static void test_encode_no_memory(void)
{
    job_t j;
    make_job(&j);
    j.spec.output = JOB_OUTPUT_INLINE;
    j.inline_body = mem_strndup("\x01\x02\xff", 3);
    j.inline_len = 3;
    /* The base64 buffer is the one fetchd allocation the encoder makes here. */
    mem_fail_after(1);
    CHECK(jobspec_encode_job(&j) == NULL);
    mem_fail_after(0);
    free_job(&j);
    CHECK_INT(live_blocks(), 0);
}

static void test_keep_headers_spec(void)
{
    job_spec_t s;
    json_t *o;
    char err[256];
    CHECK_INT(decode("{\"url\": \"http://a/\", \"keep_headers\": true}", &s, err, sizeof(err)), 0);
    CHECK_INT(s.keep_headers, 1);
    o = jobspec_encode_spec(&s);
    CHECK(json_is_true(json_object_get(o, "keep_headers")));
    json_decref(o);
    job_spec_dispose(&s);
    CHECK_INT(decode("{\"url\": \"http://a/\", \"keep_headers\": 1}", &s, err, sizeof(err)),
              ERR_INVALID_REQUEST);
    CHECK(strncmp(err, "keep_headers: ", 14) == 0);
    CHECK_INT(decode("{\"url\": \"http://a/\"}", &s, err, sizeof(err)), 0);
    CHECK_INT(s.keep_headers, 0);
    o = jobspec_encode_spec(&s);
    CHECK(json_object_get(o, "keep_headers") == NULL);
    json_decref(o);
    job_spec_dispose(&s);
    CHECK_INT(live_blocks(), 0);
}

static void add_pair(job_pairs_t *p, const char *name, const char *value)
{
    CHECK_INT(job_pairs_add(p, name, strlen(name), value, strlen(value), JOB_KEEP_HEADERS_MAX,
                            JOB_KEEP_HEADERS_BYTES),
              0);
}

static void test_pairs_bounds(void)
{
    job_pairs_t p;
    const char *name, *value;
    char big[JOB_KEEP_HEADERS_BYTES];
    size_t at = 0;
    unsigned i;

    memset(&p, 0, sizeof(p));
    /* Empty names and values, and values with the bytes JSON escapes. */
    add_pair(&p, "X-Empty", "");
    add_pair(&p, "X-Quote", "a\"b\\c");
    CHECK(job_pairs_next(&p, &at, &name, &value) == 1);
    CHECK_STR(name, "X-Empty");
    CHECK_STR(value, "");
    CHECK(job_pairs_next(&p, &at, &name, &value) == 1);
    CHECK_STR(value, "a\"b\\c");
    CHECK(job_pairs_next(&p, &at, &name, &value) == 0);
    for (i = 2; i < JOB_KEEP_HEADERS_MAX; i++)
        add_pair(&p, "X-N", "v");
    CHECK_INT(p.n, JOB_KEEP_HEADERS_MAX);
    CHECK_INT(p.truncated, 0);
    /* One past the count bound is dropped and flagged, not an error. */
    CHECK_INT(job_pairs_add(&p, "X-Late", 6, "v", 1, JOB_KEEP_HEADERS_MAX, JOB_KEEP_HEADERS_BYTES),
              1);
    CHECK_INT(p.n, JOB_KEEP_HEADERS_MAX);
    CHECK_INT(p.truncated, 1);
    job_pairs_dispose(&p);
    CHECK(p.buf == NULL && p.n == 0 && p.truncated == 0);

    /* The byte bound counts names and values: exactly at it fits, one more
     * byte does not, and a smaller field after a dropped one still fits. */
    memset(big, 'a', sizeof(big));
    CHECK_INT(job_pairs_add(&p, "N", 1, big, sizeof(big) - 2, 10, sizeof(big)), 0);
    CHECK_INT(job_pairs_add(&p, "M", 1, "vv", 2, 10, sizeof(big)), 1);
    CHECK_INT(job_pairs_add(&p, "M", 1, "", 0, 10, sizeof(big)), 0);
    CHECK_INT(p.n, 2);
    CHECK_INT(p.truncated, 1);
    job_pairs_dispose(&p);

    /* Allocation failure leaves the list as it was. */
    add_pair(&p, "A", "1");
    mem_fail_after(1);
    CHECK_INT(job_pairs_add(&p, "B", 1, big, 1000, 10, sizeof(big)), ERR_NO_MEMORY);
    mem_fail_after(0);
    CHECK_INT(p.n, 1);
    CHECK_INT(p.truncated, 0);
    at = 0;
    CHECK(job_pairs_next(&p, &at, &name, &value) == 1 && strcmp(value, "1") == 0);
    CHECK(job_pairs_next(&p, &at, &name, &value) == 0);
    job_pairs_dispose(&p);
    CHECK_INT(live_blocks(), 0);
}

static void test_encode_metadata(void)
{
    job_t j;
    job_pairs_t headers, chain;
    json_t *o, *h, *c;
    make_job(&j);
    memset(&headers, 0, sizeof(headers));
    memset(&chain, 0, sizeof(chain));
    j.headers = &headers;
    j.redirect_chain = &chain;
    j.content_length = -1;
    j.spec.keep_headers = 1;
    add_pair(j.headers, "Set-Cookie", "a=1");
    add_pair(j.headers, "Content-Type", "text/plain");
    add_pair(j.headers, "Set-Cookie", "b=2");
    add_pair(j.headers, "X-Bytes", "caf\xc3\xa9 \xff");
    add_pair(j.redirect_chain, "301", "http://a/start");
    add_pair(j.redirect_chain, "308", "https://b/next?q=1");
    o = jobspec_encode_job(&j);
    CHECK(o != NULL);
    h = json_object_get(o, "headers");
    CHECK(json_is_array(h) && json_array_size(h) == 4);
    CHECK_STR(json_string_value(json_array_get(json_array_get(h, 0), 0)), "Set-Cookie");
    CHECK_STR(json_string_value(json_array_get(json_array_get(h, 0), 1)), "a=1");
    CHECK_STR(json_string_value(json_array_get(json_array_get(h, 2), 1)), "b=2");
    /* A value that is not UTF-8 keeps its well-formed part. */
    CHECK_STR(json_string_value(json_array_get(json_array_get(h, 3), 1)), "caf\xc3\xa9 ?");
    CHECK(json_object_get(o, "headers_truncated") == NULL);
    c = json_object_get(o, "redirect_chain");
    CHECK(json_is_array(c) && json_array_size(c) == 2);
    CHECK_STR(str_at(json_array_get(c, 0), "url"), "http://a/start");
    CHECK_INT(int_at(json_array_get(c, 0), "status"), 301);
    CHECK_STR(str_at(json_array_get(c, 1), "url"), "https://b/next?q=1");
    CHECK_INT(int_at(json_array_get(c, 1), "status"), 308);
    CHECK(json_object_get(o, "content_length") == NULL);
    json_decref(o);

    /* Truncated: flagged. Without keep_headers and without redirects: no
     * "headers", no "redirect_chain". */
    j.headers->truncated = 1;
    o = jobspec_encode_job(&j);
    CHECK(json_is_true(json_object_get(o, "headers_truncated")));
    json_decref(o);
    job_pairs_dispose(j.headers);
    job_pairs_dispose(j.redirect_chain);
    j.spec.keep_headers = 0;
    o = jobspec_encode_job(&j);
    CHECK(json_object_get(o, "headers") == NULL);
    CHECK(json_object_get(o, "redirect_chain") == NULL);
    json_decref(o);
    /* keep_headers and a final response without fields (the list was never
     * allocated): an empty array. */
    j.headers = j.redirect_chain = NULL;
    j.spec.keep_headers = 1;
    o = jobspec_encode_job(&j);
    CHECK(json_is_array(json_object_get(o, "headers")) &&
          json_array_size(json_object_get(o, "headers")) == 0);
    json_decref(o);
    free_job(&j);
    CHECK_INT(live_blocks(), 0);
}

static void test_encode_metadata_no_memory(void)
{
    job_pairs_t p;
    json_t *o;
    memset(&p, 0, sizeof(p));
    add_pair(&p, "X-Bad", "\xff");
    add_pair(&p, "X-Bad2", "\xfe");
    /* lossy_string's copy is the fetchd allocation each pair makes here. */
    for (long n = 1; n <= 2; n++) {
        mem_fail_after(n);
        CHECK(jobspec_encode_headers(&p) == NULL);
        mem_fail_after(0);
    }
    o = jobspec_encode_headers(&p);
    CHECK(json_array_size(o) == 2);
    json_decref(o);
    job_pairs_dispose(&p);
    add_pair(&p, "301", "http://a/\xff");
    mem_fail_after(1);
    CHECK(jobspec_encode_redirect_chain(&p) == NULL);
    mem_fail_after(0);
    job_pairs_dispose(&p);
    CHECK_INT(live_blocks(), 0);
}

TEST_MAIN(TEST_CASE(test_defaults), TEST_CASE(test_full), TEST_CASE(test_variants),
          TEST_CASE(test_bad), TEST_CASE(test_bad_limits), TEST_CASE(test_no_memory),
          TEST_CASE(test_same_as_tree), TEST_CASE(test_set), TEST_CASE(test_encode_done),
          TEST_CASE(test_encode_failed), TEST_CASE(test_encode_inline),
          TEST_CASE(test_encode_error), TEST_CASE(test_encode_no_memory),
          TEST_CASE(test_keep_headers_spec), TEST_CASE(test_pairs_bounds),
          TEST_CASE(test_encode_metadata), TEST_CASE(test_encode_metadata_no_memory))
