/* Unit tests for client/jdump.c: hand cases for what jansson's compact dump
 * changes in a text (repeated keys, escapes, numbers), then a randomized
 * differential test: for random JSON texts, jdump of jsonr's tokens is
 * byte for byte json_dumps(json_loadb(text), JSON_COMPACT). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jdump.h"
#include "jsonr.h"
#include "test.h"

static jsonr_t R;
static jdump_t D;

/* jdump's text of s (NUL-terminated, in a static buffer) or NULL. */
static const char *dumped(const char *s, size_t n)
{
    static char out[16384];
    D.len = 0;
    if (jsonr_parse(&R, s, n) != 0 || jdump_value(&D, &R, 0) != 0 || D.len >= sizeof(out))
        return NULL;
    memcpy(out, D.buf, D.len);
    out[D.len] = '\0';
    return out;
}

/* jansson's text of s, or NULL (the caller frees it). */
static char *jansson(const char *s, size_t n)
{
    json_t *j = json_loadb(s, n, JSON_DECODE_ANY, NULL);
    char *out = j ? json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    json_decref(j);
    return out;
}

/* Whether jdump and jansson write the same text for s. */
static int same(const char *s, size_t n)
{
    char *want = jansson(s, n);
    const char *got = dumped(s, n);
    int ok = want != NULL && got != NULL && strcmp(want, got) == 0;
    if (!ok)
        fprintf(stderr, "  text %.*s\n  jansson %s\n  jdump   %s\n", (int)n, s,
                want ? want : "(null)", got ? got : "(null)");
    free(want);
    return ok;
}

static void test_cases(void)
{
    static const char *const texts[] = {
        "{}",
        "[]",
        "null",
        "[true,false,null]",
        " { \"a\" : 1 , \"b\" : [ 1 , 2 ] } ",
        "{\"b\":1,\"a\":2,\"b\":3}",
        "{\"x\":{\"k\":1,\"k\":{\"k\":2,\"j\":3,\"k\":4}},\"x\":[]}",
        "{\"\":1,\"\":2}",
        "[-0,0,-12,9223372036854775807,-9223372036854775808]",
        "[1.5,-0.0,1e-7,100.0,1E2,1e300,1.5e300,2.5E-300,0.1,123456789.25,1e-400]",
        "\"\\u001f\\u007f\\/\\u2028\\ud83d\\ude00\\b\\f\\n\\r\\t\\\"\\\\\"",
        "\"caf\xc3\xa9 \xe2\x82\xac\"",
        "{\"k\\u0041y\":\"v\\u00e9\"}",
        "{\"id\":\"cd5f474700004e1b\",\"state\":\"done\",\"url\":\"http://x/a?b=\\\"c\\\"\","
        "\"http_status\":200,\"bytes\":1024,\"timings\":{\"total_ms\":1.25}}",
    };
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
        CHECK(same(texts[i], strlen(texts[i])));
    CHECK_STR(dumped("{\"b\":1,\"a\":2,\"b\":3}", 19), "{\"b\":3,\"a\":2}");
    CHECK_STR(dumped("[1E2,-0]", 8), "[100.0,0]");
}

/* A tree that only jansson reads (a NUL in a string, JSON_ALLOW_NUL), read
 * into tokens with jsonr_from_json: the same text as jansson's. */
static void test_from_tree(void)
{
    static const char text[] = "{\"a\":\"x\\u0000y\",\"b\":[1,2.5,\"\\u001f\"]}";
    json_t *j = json_loadb(text, sizeof(text) - 1, JSON_ALLOW_NUL, NULL);
    char *want = j ? json_dumps(j, JSON_COMPACT) : NULL;

    CHECK(want != NULL);
    CHECK_INT(jsonr_from_json(&R, j), 0);
    D.len = 0;
    CHECK_INT(jdump_value(&D, &R, 0), 0);
    CHECK(want != NULL && D.len == strlen(want) && memcmp(D.buf, want, D.len) == 0);
    free(want);
    json_decref(j);
}

static void test_string(void)
{
    D.len = 0;
    CHECK_INT(jdump_string(&D, "a\"b\\c\x01\x7f/", 8), 0);
    CHECK(D.len == 17 && memcmp(D.buf, "\"a\\\"b\\\\c\\u0001\x7f/\"", 17) == 0);
}

/* jdump_utf8_valid() against json_stringn() on random short byte strings
 * drawn mostly from the bytes that decide UTF-8. */
static void test_utf8(void)
{
    static const unsigned char bytes[] = {0x00, 0x41, 0x7f, 0x80, 0xbf, 0xc0, 0xc1,
                                          0xc2, 0xdf, 0xe0, 0xed, 0xef, 0xf0, 0xf4,
                                          0xf5, 0xff, 0x90, 0xa0, 0x9f, 0x8f, 0xbe};
    unsigned char buf[6];
    uint64_t x = 0x853c49e6748fea9bull;
    int mismatches = 0, valid = 0;

    for (int i = 0; i < 200000 && mismatches < 5; i++) {
        size_t n = 1 + (size_t)(i % 5);
        json_t *j;
        for (size_t k = 0; k < n; k++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf[k] = bytes[(x >> 20) % sizeof(bytes)];
        }
        j = json_stringn((const char *)buf, n);
        if ((j != NULL) != jdump_utf8_valid((const char *)buf, n)) {
            fprintf(stderr, "  utf-8 verdicts differ on %zu bytes from %02x\n", n, buf[0]);
            mismatches++;
        }
        valid += j != NULL;
        json_decref(j);
    }
    CHECK_INT(mismatches, 0);
    CHECK(valid > 1000);
}

/* ---- the differential test ------------------------------------------------------- */

static uint64_t rng = 0x2545f4914f6cdd1dull;

static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)((rng >> 11) % n);
}

typedef struct gen {
    char *s;
    size_t n, cap;
} gen_t;

static void put(gen_t *g, const char *s)
{
    size_t n = strlen(s);
    if (g->n + n > g->cap)
        return; /* the text is cut: both refuse it, and it is skipped */
    memcpy(g->s + g->n, s, n);
    g->n += n;
}

static void ws(gen_t *g)
{
    static const char *const w[] = {"", "", "", " ", "\n", "\t"};
    put(g, w[rnd(6)]);
}

/* Valid strings only (what a daemon may send), with few keys, so objects
 * repeat them. */
static void gen_string(gen_t *g, int key)
{
    static const char *const pieces[] = {"a",
                                         "Z",
                                         " ",
                                         "~",
                                         "\x7f",
                                         "\\\"",
                                         "\\\\",
                                         "\\/",
                                         "\\b",
                                         "\\f",
                                         "\\n",
                                         "\\r",
                                         "\\t",
                                         "\\u0041",
                                         "\\u00e9",
                                         "\\u001F",
                                         "\\u0001",
                                         "\\u20ac",
                                         "\\uD83D\\uDE00",
                                         "\xc3\xa9",
                                         "\xe2\x82\xac",
                                         "\xf0\x9f\x98\x80",
                                         "id",
                                         "url",
                                         "/"};
    int n = key ? (int)rnd(3) : (int)rnd(6);
    put(g, "\"");
    for (int i = 0; i < n; i++)
        put(g, pieces[rnd(key ? 3 : sizeof(pieces) / sizeof(pieces[0]))]);
    put(g, "\"");
}

static void gen_number(gen_t *g)
{
    static const char *const nums[] = {"0",
                                       "-0",
                                       "7",
                                       "-12",
                                       "123456789",
                                       "9223372036854775807",
                                       "1.5",
                                       "-0.25",
                                       "1e10",
                                       "2E-3",
                                       "1e-400",
                                       "0.1e+1",
                                       "3.14159265358979",
                                       "1e22",
                                       "5e-324",
                                       "1.7976931348623157e308",
                                       "100.0",
                                       "0.30000000000000004",
                                       "-1E+05"};
    put(g, nums[rnd(sizeof(nums) / sizeof(nums[0]))]);
}

static void gen_value(gen_t *g, int depth)
{
    uint32_t k = rnd(depth > 0 ? 10 : 6);
    ws(g);
    if (k == 0) {
        put(g, rnd(2) ? "null" : rnd(2) ? "true" : "false");
    } else if (k <= 2) {
        gen_number(g);
    } else if (k <= 5) {
        gen_string(g, 0);
    } else {
        int n = (int)rnd(6), obj = k >= 8;
        put(g, obj ? "{" : "[");
        for (int i = 0; i < n; i++) {
            if (i)
                put(g, ",");
            if (obj) {
                ws(g);
                gen_string(g, 1);
                ws(g);
                put(g, ":");
            }
            gen_value(g, depth - 1);
        }
        ws(g);
        put(g, obj ? "}" : "]");
    }
    ws(g);
}

static void test_differential(void)
{
    enum { ROUNDS = 40000, CAP = 4096 };
    char *buf = malloc(CAP);
    gen_t g = {buf, 0, CAP};
    int mismatches = 0, compared = 0;

    CHECK(buf != NULL);
    for (int i = 0; buf != NULL && i < ROUNDS && mismatches < 5; i++) {
        g.n = 0;
        gen_value(&g, (int)rnd(5));
        if (jsonr_parse(&R, g.s, g.n) != 0)
            continue; /* cut short */
        compared++;
        if (!same(g.s, g.n))
            mismatches++;
    }
    CHECK_INT(mismatches, 0);
    CHECK(compared > ROUNDS * 9 / 10);
    printf("  differential: %d texts written alike\n", compared);
    free(buf);
}

static void setup(void)
{
    jsonr_init(&R, realloc, free);
}

static void test_teardown(void)
{
    jsonr_free(&R);
    jdump_free(&D);
    CHECK(D.buf == NULL && D.len == 0);
}

TEST_MAIN(TEST_CASE(setup), TEST_CASE(test_cases), TEST_CASE(test_from_tree),
          TEST_CASE(test_string), TEST_CASE(test_utf8), TEST_CASE(test_differential),
          TEST_CASE(test_teardown))
