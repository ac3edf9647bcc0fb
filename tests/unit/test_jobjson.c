/* Unit tests for jsonw and jobjson: the writer's values, and random job
 * objects written directly and built by jobspec_encode_job(), compared
 * parsed (times within a microsecond, everything else equal). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "fmt.h"
#include "jobjson.h"
#include "jobspec.h"
#include "jsonw.h"
#include "mem.h"
#include "test.h"

static json_t *parse(const strbuf_t *b)
{
    json_error_t e;
    json_t *v = json_loadb(b->p, b->len, JSON_DECODE_ANY, &e);
    if (v == NULL)
        fprintf(stderr, "not JSON (%s): %.*s\n", e.text, (int)b->len, b->p);
    return v;
}

static void test_values(void)
{
    strbuf_t b = {0};
    jsonw_t w;
    json_t *v, *expect;

    jsonw_init(&w, &b);
    jsonw_object_begin(&w);
    jsonw_key(&w, "a");
    jsonw_int(&w, INT64_MIN);
    jsonw_key(&w, "b");
    jsonw_uint(&w, UINT64_MAX / 2);
    jsonw_key(&w, "c");
    jsonw_array_begin(&w);
    jsonw_fixed(&w, 1796140125665836, 6);
    jsonw_fixed(&w, -5, 3);
    jsonw_fixed(&w, 42, 0);
    jsonw_bool(&w, 0);
    jsonw_null(&w);
    jsonw_double(&w, 2.5);
    jsonw_double(&w, 3);
    jsonw_double(&w, NAN);
    jsonw_array_end(&w);
    jsonw_key(&w, "d");
    jsonw_object_begin(&w);
    jsonw_object_end(&w);
    jsonw_key(&w, "e");
    jsonw_array_begin(&w);
    jsonw_array_end(&w);
    jsonw_key(&w, "f");
    jsonw_raw(&w, "{\"x\":[1]}", 9);
    jsonw_object_end(&w);
    CHECK(!b.failed);
    CHECK_STR(b.p, "{\"a\":-9223372036854775808,\"b\":9223372036854775807,"
                   "\"c\":[1796140125.665836,-0.005,42,false,null,2.5,3.0,null],"
                   "\"d\":{},\"e\":[],\"f\":{\"x\":[1]}}");
    v = parse(&b);
    expect = json_pack("{s:I, s:I, s:[f, f, i, b, n, f, f, n], s:{}, s:[], s:{s:[i]}}", "a",
                       (json_int_t)INT64_MIN, "b", (json_int_t)(UINT64_MAX / 2), "c",
                       1796140125.665836, -0.005, 42, 0, 2.5, 3.0, "d", "e", "f", "x", 1);
    CHECK(v != NULL && json_equal(v, expect));
    json_decref(v);
    json_decref(expect);
    strbuf_dispose(&b);
}

static void test_strings(void)
{
    /* Every byte value, escapes, multi-byte sequences, and ill-formed
     * UTF-8 (overlong, surrogate, cut, stray continuation) becoming '?'. */
    static const char bad[] = "a\xc0\xaf"
                              "b\xed\xa0\x80"
                              "c\xe2\x82"
                              "x\x80\xff"
                              "d\xf0\x9f\x98";
    char all[256];
    strbuf_t b = {0};
    jsonw_t w;
    json_t *v;

    for (int i = 0; i < 256; i++)
        all[i] = (char)(i == 0 ? 1 : i);
    jsonw_init(&w, &b);
    jsonw_array_begin(&w);
    jsonw_string(&w, "quote\" backslash\\ nl\n cr\r tab\t del\x7f bell\x07 é € 😀");
    jsonw_stringn(&w, all, sizeof(all));
    jsonw_string(&w, bad);
    jsonw_string(&w, "");
    jsonw_base64(&w, "", 0);
    jsonw_base64(&w, "f", 1);
    jsonw_base64(&w, "fo", 2);
    jsonw_base64(&w, "foobar", 6);
    jsonw_array_end(&w);
    CHECK(!b.failed);
    v = parse(&b);
    CHECK(v != NULL);
    if (v != NULL) {
        const char *s0 = json_string_value(json_array_get(v, 0));
        const char *s2 = json_string_value(json_array_get(v, 2));
        CHECK_STR(s0, "quote\" backslash\\ nl\n cr\r tab\t del\x7f bell\x07 é € 😀");
        CHECK_INT(json_string_length(json_array_get(v, 1)), 256);
        CHECK_STR(s2, "a??b???c??x??d???");
        CHECK_STR(json_string_value(json_array_get(v, 3)), "");
        CHECK_STR(json_string_value(json_array_get(v, 4)), "");
        CHECK_STR(json_string_value(json_array_get(v, 5)), "Zg==");
        CHECK_STR(json_string_value(json_array_get(v, 6)), "Zm8=");
        CHECK_STR(json_string_value(json_array_get(v, 7)), "Zm9vYmFy");
    }
    json_decref(v);
    strbuf_dispose(&b);
}

/* The eight-bytes-at-a-time scan for bytes that need a look: every byte
 * value at every place of strings that take the fast path around it, each
 * as a value and as a member, must come out as the byte-by-byte writer
 * says (escaped, or '?' for a lone non-ASCII byte). */
static void test_string_scan(void)
{
    char text[19], want[19];
    int bad = 0;

    for (int c = 0; c < 256; c++) {
        for (size_t at = 0; at < sizeof(text) - 1; at++) {
            strbuf_t b = {0};
            jsonw_t w;
            json_t *v;

            memset(text, 'a' + (int)(at % 7), sizeof(text) - 1);
            text[at] = (char)c;
            memcpy(want, text, sizeof(want));
            if (c >= 0x80)
                want[at] = '?';
            jsonw_init(&w, &b);
            jsonw_object_begin(&w);
            jsonw_member_str(&w, JSONW_KEY("k"), text, sizeof(text) - 1);
            jsonw_key_lit(&w, JSONW_KEY("v"));
            jsonw_stringn(&w, text, sizeof(text) - 1);
            jsonw_object_end(&w);
            v = b.failed ? NULL : json_loadb(b.p, b.len, JSON_ALLOW_NUL, NULL);
            if (v == NULL || json_string_length(json_object_get(v, "k")) != sizeof(text) - 1 ||
                memcmp(json_string_value(json_object_get(v, "k")), want, sizeof(text) - 1) != 0 ||
                !json_equal(json_object_get(v, "k"), json_object_get(v, "v")))
                bad++;
            json_decref(v);
            strbuf_dispose(&b);
        }
    }
    CHECK_INT(bad, 0);
}

/* Each member goes out whole, with its comma, in one append. */
static void test_members(void)
{
    strbuf_t b = {0};
    jsonw_t w;

    jsonw_init(&w, &b);
    jsonw_array_begin(&w);
    jsonw_object_begin(&w);
    jsonw_member_str(&w, JSONW_KEY("s"), "plain", 5);
    jsonw_member_str(&w, JSONW_KEY("e"), "q\"", 2);
    jsonw_member_uint(&w, JSONW_KEY("u"), UINT64_MAX);
    jsonw_member_int(&w, JSONW_KEY("i"), INT64_MIN);
    jsonw_member_int(&w, JSONW_KEY("z"), 0);
    jsonw_member_fixed(&w, JSONW_KEY("f"), -1796140125665836, 6);
    jsonw_member_true(&w, JSONW_KEY("t"));
    jsonw_member_plain(&w, JSONW_KEY("p"), "0af", 3);
    jsonw_member_fixed(&w, JSONW_KEY("g"), 5, 9);
    jsonw_key_lit(&w, JSONW_KEY("o"));
    jsonw_object_begin(&w);
    jsonw_member_uint(&w, JSONW_KEY("n"), 7);
    jsonw_object_end(&w);
    jsonw_object_end(&w);
    jsonw_object_begin(&w);
    jsonw_member_true(&w, JSONW_KEY("only"));
    jsonw_object_end(&w);
    jsonw_array_end(&w);
    CHECK(!b.failed);
    CHECK_STR(b.p, "[{\"s\":\"plain\",\"e\":\"q\\\"\",\"u\":18446744073709551615,"
                   "\"i\":-9223372036854775808,\"z\":0,\"f\":-1796140125.665836,\"t\":true,"
                   "\"p\":\"0af\",\"g\":0.000000005,"
                   "\"o\":{\"n\":7}},{\"only\":true}]");
    strbuf_dispose(&b);
}

/* ---- random jobs, both encoders -------------------------------------------- */

static uint64_t rng_state = 0x9E3779B97F4A7C15u;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static int coin(void)
{
    return (int)(rnd() & 1);
}

/* A string of random length whose bytes are mostly text, sometimes any. */
static char *random_text(size_t max)
{
    static const char *const pieces[] = {"a", "Z", "/", " ",    "\"",   "\\",   "\n", "\t",
                                         "é", "€", "😀", "\xff", "\xc3", "\x01", "%",  "?"};
    size_t n = rnd() % (max + 1), len = 0;
    char *s = mem_alloc(n * 4 + 1);

    for (size_t i = 0; s != NULL && i < n; i++) {
        const char *p = pieces[rnd() % (sizeof(pieces) / sizeof(pieces[0]))];
        memcpy(s + len, p, strlen(p));
        len += strlen(p);
    }
    if (s != NULL)
        s[len] = '\0';
    return s;
}

static double random_time(void)
{
    return 1700000000.0 + (double)(rnd() % 200000000000u) / 1e3; /* ms resolution */
}

/* A loop whose clock stands still: both encoders read the same progress. */
static uv_loop_t loop;
static job_env_t env = {.loop = &loop};

static void random_job(job_t *j)
{
    static const int errors[] = {0, ERR_TIMEOUT, ERR_PROTOCOL, ERR_DNS, ERR_CANCELLED};

    memset(j, 0, sizeof(*j));
    job_spec_init(&j->spec);
    snprintf(j->id, sizeof(j->id), "%016llx", (unsigned long long)rnd());
    j->state = (job_state_t)(rnd() % 5);
    j->spec.url = random_text(40);
    if (coin())
        j->spec.method = mem_strdup(coin() ? "POST" : "HEAD");
    j->bytes = rnd() >> (1 + rnd() % 63); /* below 2^63, as json_int_t holds */
    j->wire_bytes = rnd() >> (1 + rnd() % 63);
    j->redirects = (unsigned)(rnd() % 11);
    j->attempts = (unsigned)(rnd() % 5);
    j->spec.priority = (int)(rnd() % 2001) - 1000;
    if (coin())
        j->effective_url = random_text(40);
    if (coin())
        j->http_status = (int)(100 + rnd() % 500);
    if (coin())
        snprintf(j->sha256, sizeof(j->sha256), "%064llx", (unsigned long long)rnd());
    if (coin())
        j->output = random_text(30);
    j->spec.output = (job_output_t)(rnd() % 3);
    if (j->spec.output == JOB_OUTPUT_INLINE && coin()) {
        j->inline_body = random_text(50);
        j->inline_len = strlen(j->inline_body);
        if (coin() && j->inline_len > 2)
            j->inline_body[1] = '\0'; /* NUL bytes: base64 */
    }
    j->error = errors[rnd() % 5];
    if (j->error != 0 && coin()) {
        char *m = random_text(40);
        snprintf(j->error_msg, sizeof(j->error_msg), "%s", m ? m : "");
        mem_free(m);
    }
    if (coin())
        j->content_encoding = random_text(10);
    j->decoded = coin();
    if (coin())
        j->content_type = random_text(20);
    j->content_length = coin() ? -1 : (int64_t)(rnd() >> 20);
    if (coin())
        j->etag = random_text(20);
    if (coin())
        j->last_modified = random_text(29);
    if (coin())
        j->spec.labels = json_pack("{s:s, s:i}", "team", "é\"x", "n", (int)(rnd() % 100));
    if (coin())
        j->spec.rate = (double)(rnd() % 1000000) / 7.0 + 1.0 / 3600;
    if (coin())
        j->spec.delay_ms = rnd() % 3600000;
    if (coin())
        j->spec.limit_rate = rnd() >> 14;
    if (coin()) {
        j->redirect_chain = mem_calloc(1, sizeof(*j->redirect_chain));
        for (int k = (int)(rnd() % 4); j->redirect_chain && k > 0; k--) {
            char *u = random_text(20);
            job_pairs_add(j->redirect_chain, coin() ? "301" : "307", 3, u ? u : "",
                          u ? strlen(u) : 0, 100, 1 << 20);
            mem_free(u);
        }
    }
    j->spec.keep_headers = coin();
    if (j->spec.keep_headers && coin()) {
        j->headers = mem_calloc(1, sizeof(*j->headers));
        for (int k = (int)(rnd() % 5); j->headers && k > 0; k--) {
            char *v = random_text(20);
            job_pairs_add(j->headers, "X-Name", 6, v ? v : "", v ? strlen(v) : 0, 3, 1 << 20);
            mem_free(v);
        }
    }
    j->not_modified = coin();
    j->resumed_from = coin() ? rnd() >> 20 : 0;
    if (coin()) {
        j->error_body = random_text(30);
        j->error_body_len = j->error_body ? strlen(j->error_body) : 0;
        if (coin() && j->error_body_len > 2)
            j->error_body[0] = '\0'; /* binary: base64 */
    }
    j->env = &env;
    if (coin()) { /* a body is arriving: speed and eta from the samples */
        j->prog_ms = uv_now(&loop) - rnd() % 5000;
        j->speed = rnd() % 10000000;
        j->prog_bytes = j->wire_bytes / 2;
    }
    j->paused = coin();
    j->phase = coin() ? JOB_PH_RESPONSE : JOB_PH_FINISHED;
    j->timings.created = random_time();
    if (coin())
        j->timings.started = random_time();
    if (coin())
        j->timings.finished = random_time();
    j->timings.queued_ms = rnd() % 100000;
    j->timings.dns_ms = rnd() % 1000;
    j->timings.connect_ms = rnd() % 1000;
    j->timings.ttfb_ms = rnd() % 1000;
    j->timings.total_ms = rnd() % 100000;
}

static void free_job(job_t *j)
{
    job_spec_dispose(&j->spec);
    mem_free(j->effective_url);
    mem_free(j->output);
    mem_free(j->inline_body);
    mem_free(j->content_encoding);
    mem_free(j->content_type);
    mem_free(j->etag);
    mem_free(j->last_modified);
    mem_free(j->error_body);
    if (j->redirect_chain != NULL)
        job_pairs_dispose(j->redirect_chain);
    if (j->headers != NULL)
        job_pairs_dispose(j->headers);
    mem_free(j->redirect_chain);
    mem_free(j->headers);
}

/* Equal, reals too: both sides print rates with %.17g, and times as the
 * double nearest to their microseconds. */
static int same(const json_t *a, const json_t *b)
{
    const char *key;
    json_t *v;

    if (json_is_object(a) && json_is_object(b)) {
        json_object_foreach ((json_t *)a, key, v)
            if (!json_equal(v, json_object_get(b, key)))
                fprintf(stderr, "field %s differs\n", key);
    }
    return json_equal(a, b);
}

static void test_random_jobs_both_ways(void)
{
    size_t differ = 0;

    uv_loop_init(&loop);

    for (int i = 0; i < 2000; i++) {
        strbuf_t b = {0};
        jsonw_t w;
        job_t j;
        json_t *tree, *direct;

        random_job(&j);
        tree = jobspec_encode_job(&j);
        jsonw_init(&w, &b);
        jobjson_write(&w, &j);
        CHECK(!b.failed);
        direct = parse(&b);
        CHECK(tree != NULL && direct != NULL);
        if (tree != NULL && direct != NULL && !same(tree, direct)) {
            char *t = json_dumps(tree, JSON_COMPACT);
            fprintf(stderr, "job %d differs:\n  jansson %s\n  direct  %s\n", i, t, b.p);
            free(t);
            differ++;
        }
        json_decref(tree);
        json_decref(direct);
        strbuf_dispose(&b);
        free_job(&j);
    }
    CHECK_INT(differ, 0);
    uv_loop_close(&loop);
}

static void test_fmt(void)
{
    char d[FMT_U64_MAX + 1];

    d[fmt_u64(d, 0)] = '\0';
    CHECK_STR(d, "0");
    d[fmt_u64(d, 443)] = '\0';
    CHECK_STR(d, "443");
    d[fmt_u64(d, UINT64_MAX)] = '\0';
    CHECK_STR(d, "18446744073709551615");
    d[fmt_hex64(d, 0, 1)] = '\0';
    CHECK_STR(d, "0");
    d[fmt_hex64(d, 0xabc, 16)] = '\0';
    CHECK_STR(d, "0000000000000abc");
    d[fmt_hex64(d, UINT64_MAX, 4)] = '\0';
    CHECK_STR(d, "ffffffffffffffff");
}

/* An allocation failure marks the buffer failed; nothing is written after. */
static void test_allocation_failure(void)
{
    strbuf_t b = {0};
    jsonw_t w;

    mem_fail_after(1);
    jsonw_init(&w, &b);
    jsonw_array_begin(&w);
    jsonw_string(&w, "x");
    jsonw_array_end(&w);
    mem_fail_after(0);
    CHECK(b.failed);
    strbuf_dispose(&b);
}

TEST_MAIN(TEST_CASE(test_values), TEST_CASE(test_fmt), TEST_CASE(test_strings),
          TEST_CASE(test_string_scan), TEST_CASE(test_members),
          TEST_CASE(test_random_jobs_both_ways), TEST_CASE(test_allocation_failure))
