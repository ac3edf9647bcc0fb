/* Unit tests for proto/jsonr.c: hand cases for every type, escape, refusal
 * and accessor, then a randomized differential test against jansson
 * (json_loadb with JSON_DECODE_ANY): random JSON texts and mutations of them
 * are accepted by jsonr exactly when jansson accepts them, and then
 * jsonr_to_json() equals jansson's tree. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jsonr.h"
#include "test.h"

static jsonr_t R;

/* Parses the NUL-terminated text s with the shared reader. */
static int parse(const char *s)
{
    return jsonr_parse(&R, s, strlen(s));
}

/* Whether jsonr and jansson agree on text[0, n): the same verdict and, when
 * both accept, equal trees. Prints the text when they do not. */
static int agrees(const char *text, size_t n)
{
    json_error_t jerr;
    json_t *a = json_loadb(text, n, JSON_DECODE_ANY, &jerr);
    int rc = jsonr_parse(&R, text, n), ok;

    if (rc == -2) {
        fprintf(stderr, "  out of memory\n");
        json_decref(a);
        return 0;
    }
    ok = (a != NULL) == (rc == 0);
    if (ok && a != NULL) {
        json_t *b = jsonr_to_json(&R, 0), *c;
        uint32_t dup;
        ok = b != NULL && json_equal(a, b);
        json_decref(b);
        /* jansson's tree read back into tokens gives the same tree. */
        jsonr_t r2;
        jsonr_init(&r2, realloc, free);
        if (ok && jsonr_from_json(&r2, a) == 0) {
            b = jsonr_to_json(&r2, 0);
            ok = b != NULL && json_equal(a, b);
            if (!ok)
                fprintf(stderr, "  jsonr_from_json differs\n");
            json_decref(b);
        }
        jsonr_free(&r2);
        /* Repeated keys: found exactly when JSON_REJECT_DUPLICATES refuses. */
        c = json_loadb(text, n, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL);
        if (ok && jsonr_find_duplicate(&R, &dup) != (c == NULL)) {
            fprintf(stderr, "  duplicates: jansson %s\n", c ? "none" : "some");
            ok = 0;
        }
        json_decref(c);
    }
    if (!ok) {
        fprintf(stderr, "  disagree on %zu bytes (jansson %s: %s; jsonr %d: %s):\n  ", n,
                a ? "accepts" : "refuses", a ? "" : jerr.text, rc, R.error);
        for (size_t i = 0; i < n && i < 400; i++)
            fprintf(stderr, (uint8_t)text[i] >= 0x20 && (uint8_t)text[i] < 0x7F ? "%c" : "\\x%02x",
                    (uint8_t)text[i]);
        fprintf(stderr, "\n");
    }
    json_decref(a);
    return ok;
}

static int agrees_s(const char *s)
{
    return agrees(s, strlen(s));
}

static void test_wait_line(void)
{
    const char *line =
        "{\"jsonrpc\":\"2.0\",\"method\":\"wait\",\"params\":{\"id\":\"j-17\"},\"id\":7}";
    uint32_t params, id, v;
    long long n;
    size_t len;
    const char *s;

    CHECK_INT(parse(line), 0);
    CHECK_INT(jsonr_type(&R, 0), JSONR_OBJECT);
    CHECK_INT(jsonr_count(&R, 0), 4);
    CHECK(jsonr_str_eq(&R, jsonr_get(&R, 0, "jsonrpc"), "2.0"));
    CHECK(jsonr_str_eq(&R, jsonr_get(&R, 0, "method"), "wait"));
    CHECK(!jsonr_str_eq(&R, jsonr_get(&R, 0, "method"), "wai"));
    params = jsonr_get(&R, 0, "params");
    CHECK_INT(jsonr_type(&R, params), JSONR_OBJECT);
    CHECK(jsonr_str_eq(&R, jsonr_get(&R, params, "id"), "j-17"));
    id = jsonr_get(&R, 0, "id");
    CHECK_INT(jsonr_int(&R, id, &n), 0);
    CHECK_INT(n, 7);
    s = jsonr_raw(&R, id, &len);
    CHECK(len == 1 && memcmp(s, "7", 1) == 0);
    s = jsonr_raw(&R, params, &len);
    CHECK(len == 13 && memcmp(s, "{\"id\":\"j-17\"}", 13) == 0);
    s = jsonr_raw(&R, 0, &len);
    CHECK(len == strlen(line));
    CHECK(jsonr_get(&R, 0, "nope") == JSONR_NONE);
    CHECK(jsonr_get(&R, id, "id") == JSONR_NONE);
    CHECK(jsonr_getn(&R, 0, "idx", 2) == id);

    /* Iteration in order, with keys. */
    v = jsonr_first(&R, 0);
    s = jsonr_key(&R, v, &len);
    CHECK(len == 7 && memcmp(s, "jsonrpc", 7) == 0);
    v = jsonr_next(&R, v);
    s = jsonr_key(&R, v, &len);
    CHECK(len == 6 && memcmp(s, "method", 6) == 0);
    v = jsonr_next(&R, jsonr_next(&R, v));
    CHECK(v == id);
    CHECK(jsonr_next(&R, v) == JSONR_NONE);
    CHECK(jsonr_key(&R, 0, &len) == NULL);
}

static void test_types(void)
{
    uint32_t v;
    long long n;
    double d;
    size_t len;
    const char *s;

    CHECK_INT(parse(" [null, false ,true,-0, 12, -9223372036854775808, 9223372036854775807,"
                    " 1.5, -2e3, 1E-2, 0.0, \"\", \"a\\\"b\", [], {}, [[]], {\"k\":{}}]\r\n\t"),
              0);
    CHECK_INT(jsonr_type(&R, 0), JSONR_ARRAY);
    CHECK_INT(jsonr_count(&R, 0), 17);
    CHECK_INT(jsonr_type(&R, jsonr_at(&R, 0, 0)), JSONR_NULL);
    CHECK_INT(jsonr_type(&R, jsonr_at(&R, 0, 1)), JSONR_FALSE);
    CHECK_INT(jsonr_type(&R, jsonr_at(&R, 0, 2)), JSONR_TRUE);
    v = jsonr_at(&R, 0, 3);
    CHECK_INT(jsonr_type(&R, v), JSONR_INTEGER);
    CHECK(jsonr_int(&R, v, &n) == 0 && n == 0);
    CHECK(jsonr_int(&R, jsonr_at(&R, 0, 5), &n) == 0 && n == INT64_MIN);
    CHECK(jsonr_int(&R, jsonr_at(&R, 0, 6), &n) == 0 && n == INT64_MAX);
    v = jsonr_at(&R, 0, 7);
    CHECK_INT(jsonr_type(&R, v), JSONR_REAL);
    CHECK(jsonr_int(&R, v, &n) == -1);
    CHECK(jsonr_number(&R, v, &d) == 0 && d == 1.5);
    CHECK(jsonr_number(&R, jsonr_at(&R, 0, 8), &d) == 0 && d == -2000.0);
    CHECK(jsonr_number(&R, jsonr_at(&R, 0, 4), &d) == 0 && d == 12.0);
    CHECK(jsonr_number(&R, jsonr_at(&R, 0, 11), &d) == -1);
    s = jsonr_str(&R, jsonr_at(&R, 0, 11), &len);
    CHECK(s != NULL && len == 0);
    s = jsonr_str(&R, jsonr_at(&R, 0, 12), &len);
    CHECK(len == 3 && memcmp(s, "a\"b", 3) == 0);
    s = jsonr_raw(&R, jsonr_at(&R, 0, 12), &len);
    CHECK(len == 6 && memcmp(s, "\"a\\\"b\"", 6) == 0);
    CHECK(jsonr_str(&R, jsonr_at(&R, 0, 4), &len) == NULL);
    v = jsonr_at(&R, 0, 13);
    CHECK_INT(jsonr_type(&R, v), JSONR_ARRAY);
    CHECK_INT(jsonr_count(&R, v), 0);
    CHECK(jsonr_first(&R, v) == JSONR_NONE);
    v = jsonr_at(&R, 0, 14);
    CHECK_INT(jsonr_type(&R, v), JSONR_OBJECT);
    CHECK(jsonr_first(&R, v) == JSONR_NONE);
    v = jsonr_at(&R, 0, 15);
    CHECK_INT(jsonr_count(&R, v), 1);
    CHECK_INT(jsonr_count(&R, jsonr_first(&R, v)), 0);
    v = jsonr_at(&R, 0, 16);
    CHECK_INT(jsonr_type(&R, jsonr_get(&R, v, "k")), JSONR_OBJECT);
    CHECK(jsonr_next(&R, v) == JSONR_NONE);
    CHECK(jsonr_at(&R, 0, 17) == JSONR_NONE);
    CHECK(jsonr_at(&R, 0, UINT32_MAX) == JSONR_NONE);
    CHECK(jsonr_first(&R, JSONR_NONE) == JSONR_NONE);
    CHECK(jsonr_next(&R, JSONR_NONE) == JSONR_NONE);

    /* Scalars at the top. */
    CHECK_INT(parse("42"), 0);
    CHECK(jsonr_int(&R, 0, &n) == 0 && n == 42);
    CHECK_INT(parse("\"x\""), 0);
    CHECK(jsonr_str_eq(&R, 0, "x"));
    CHECK_INT(parse("  null  "), 0);
    CHECK_INT(jsonr_type(&R, 0), JSONR_NULL);
    CHECK_INT(parse("1e-400"), 0); /* underflow is accepted, as by jansson */
    CHECK_INT(parse("1e400"), -1);
    CHECK(strstr(R.error, "real number overflow") != NULL);
}

static void test_escapes(void)
{
    size_t len;
    const char *s;
    uint32_t v;

    CHECK_INT(parse("[\"\\\"\\\\\\/\\b\\f\\n\\r\\t\", \"\\u0041\\u00e9\\u20AC\\uD83D\\uDE00\","
                    " \"plain\", \"\\u12345\"]"),
              0);
    s = jsonr_str(&R, jsonr_at(&R, 0, 0), &len);
    CHECK(len == 8 && memcmp(s, "\"\\/\b\f\n\r\t", 8) == 0);
    s = jsonr_str(&R, jsonr_at(&R, 0, 1), &len);
    CHECK(len == 10 && memcmp(s, "A\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 10) == 0);
    s = jsonr_str(&R, jsonr_at(&R, 0, 2), &len);
    CHECK(len == 5 && memcmp(s, "plain", 5) == 0);
    CHECK(s > R.text && s < R.text + R.len); /* not copied */
    s = jsonr_str(&R, jsonr_at(&R, 0, 3), &len);
    CHECK(len == 4 && memcmp(s,
                             "\xe1\x88\xb4"
                             "5",
                             4) == 0);

    /* Escaped keys, found by their decoded bytes. */
    CHECK_INT(parse("{\"a\\u0062\": 1, \"\\n\": 2}"), 0);
    v = jsonr_get(&R, 0, "ab");
    CHECK(v != JSONR_NONE);
    s = jsonr_key(&R, v, &len);
    CHECK(len == 2 && memcmp(s, "ab", 2) == 0);
    CHECK(jsonr_get(&R, 0, "\n") != JSONR_NONE);

    /* Refused: lone or unpaired surrogates, \u0000 in values and keys, bad escapes. */
    CHECK_INT(parse("\"\\uD800\""), -1);
    CHECK(strstr(R.error, "invalid Unicode '\\uD800'") != NULL);
    CHECK_INT(parse("\"\\uDC00\""), -1);
    CHECK_INT(parse("\"\\uD800\\u0041\""), -1);
    CHECK(strstr(R.error, "invalid Unicode '\\uD800\\u0041'") != NULL);
    CHECK_INT(parse("\"\\uD800x\""), -1);
    CHECK_INT(parse("\"a\\u0000b\""), -1);
    CHECK(strstr(R.error, "\\u0000") != NULL);
    CHECK_INT(parse("{\"a\\u0000\": 1}"), -1);
    CHECK(strstr(R.error, "NUL byte in object key") != NULL);
    CHECK_INT(parse("\"\\x\""), -1);
    CHECK(strstr(R.error, "invalid escape") != NULL);
    CHECK_INT(parse("\"\\u12g4\""), -1);
    CHECK_INT(parse("\"\\u12\""), -1);
    CHECK_INT(parse("\"\\"), -1);
    CHECK_INT(parse("\"abc"), -1);
    CHECK(strstr(R.error, "premature end of input") != NULL);
    CHECK_INT(parse("\"a\nb\""), -1);
    CHECK(strstr(R.error, "unexpected newline") != NULL);
    CHECK_INT(parse("\"a\tb\""), -1);
    CHECK(strstr(R.error, "control character 0x9") != NULL);
    CHECK_INT(jsonr_parse(&R, "\"a\0b\"", 5), -1); /* a raw NUL */
    CHECK(strstr(R.error, "control character 0x0") != NULL);
    CHECK_INT(parse("\"\x7f\""), 0); /* DEL is no control character to JSON */

    /* JSONR_ALLOW_NUL lets \u0000 through, in keys too. */
    const char *nul = "{\"k\\u0000\": \"a\\u0000b\"}";
    CHECK_INT(jsonr_parse_flags(&R, nul, strlen(nul), JSONR_ALLOW_NUL), 0);
    v = jsonr_first(&R, 0);
    s = jsonr_str(&R, v, &len);
    CHECK(len == 3 && memcmp(s, "a\0b", 3) == 0);
    s = jsonr_key(&R, v, &len);
    CHECK(len == 2 && memcmp(s, "k\0", 2) == 0);
    CHECK_INT(jsonr_parse_flags(&R, nul, strlen(nul), 0), -1);
}

static void test_utf8(void)
{
    static const char *const good[] = {
        "\"\xc2\x80\"",         "\"\xdf\xbf\"",         "\"\xe0\xa0\x80\"",
        "\"\xed\x9f\xbf\"",     "\"\xee\x80\x80\"",     "\"\xef\xbf\xbf\"",
        "\"\xf0\x90\x80\x80\"", "\"\xf4\x8f\xbf\xbf\"", "{\"\xc3\xa9\":\"\xe2\x82\xac\"}",
    };
    static const char *const bad[] = {
        "\"\x80\"",             /* a lone continuation byte */
        "\"\xbf\"",             /* another */
        "\"\xc0\xaf\"",         /* overlong 2 bytes */
        "\"\xc1\xbf\"",         /* overlong 2 bytes */
        "\"\xe0\x80\xaf\"",     /* overlong 3 bytes */
        "\"\xf0\x80\x80\xaf\"", /* overlong 4 bytes */
        "\"\xed\xa0\x80\"",     /* a surrogate (U+D800) */
        "\"\xed\xbf\xbf\"",     /* U+DFFF */
        "\"\xf4\x90\x80\x80\"", /* past U+10FFFF */
        "\"\xf5\x80\x80\x80\"", /* 0xF5 */
        "\"\xff\"",             /* 0xFF */
        "\"\xc3\"",             /* truncated by the quote */
        "\"\xe2\x82\"",         /* truncated */
        "\"\xe2\x82",           /* truncated at the end */
        "\"\xc3\x28\"",         /* a bad continuation */
        "\xc3\xa9",             /* valid UTF-8 outside a string */
    };

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        CHECK_INT(parse(good[i]), 0);
        CHECK(agrees_s(good[i]));
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK_INT(parse(bad[i]), -1);
        CHECK(agrees_s(bad[i]));
    }
    CHECK_INT(parse("\"\xc0\xaf\""), -1);
    CHECK_STR(R.error, "unable to decode byte 0xc0");
}

static void test_numbers(void)
{
    static const char *const good[] = {
        "0",
        "-0",
        "1",
        "-1",
        "10",
        "0.5",
        "-0.5",
        "1e5",
        "1E+5",
        "1e-5",
        "0e0",
        "-0.0e-0",
        "123.456e78",
        "1e-400",
        "1e308",
        "-1e-400",
        "2.5E-308",
        "1.0",
        "12345678901234567890123.0",
        "9223372036854775807",
        "-9223372036854775808",
        "9223372036854775808.0",
        "4e-320",
        "0.00000000000000000000000000000000000000000000000000000000000000000000000000001"};
    static const char *const bad[] = {"01",
                                      "-01",
                                      "00",
                                      "-",
                                      "+1",
                                      ".5",
                                      "1.",
                                      "1.e5",
                                      "1e",
                                      "1e+",
                                      "-e1",
                                      "1ee2",
                                      "0x1",
                                      "1.5.2",
                                      "--1",
                                      "-a",
                                      "Infinity",
                                      "NaN",
                                      "1e309",
                                      "-1e309",
                                      "9223372036854775808",
                                      "-9223372036854775809",
                                      "18446744073709551616",
                                      "99999999999999999999999999999"};

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        CHECK_INT(parse(good[i]), 0);
        CHECK(agrees_s(good[i]));
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK_INT(parse(bad[i]), -1);
        CHECK(agrees_s(bad[i]));
    }
    CHECK_INT(parse("9223372036854775808"), -1);
    CHECK(strstr(R.error, "too big integer") != NULL);
    CHECK_INT(parse("[-9223372036854775809]"), -1);
    CHECK(strstr(R.error, "too big negative integer") != NULL);
    CHECK_INT(R.line, 1);
}

/* A text that may hold NUL bytes. */
typedef struct text {
    const char *s;
    size_t n;
} text_t;
#define TEXT(s)          \
    {                    \
        s, sizeof(s) - 1 \
    }

static void test_syntax(void)
{
    static const text_t bad[] = {
        TEXT("1\0\0"),      TEXT("[1,\0]"),     TEXT("1 \0"),
        TEXT("{}\0"),       TEXT("\"a\"\0"),    TEXT("tr\0ue"),
        TEXT(""),           TEXT("  "),         TEXT("["),
        TEXT("]"),          TEXT("{"),          TEXT("}"),
        TEXT("[1,]"),       TEXT("[,1]"),       TEXT("[1 2]"),
        TEXT("{\"a\"}"),    TEXT("{\"a\":}"),   TEXT("{\"a\" 1}"),
        TEXT("{\"a\":1,}"), TEXT("{,}"),        TEXT("{1:2}"),
        TEXT("{'a':1}"),    TEXT("tru"),        TEXT("truex"),
        TEXT("nul"),        TEXT("True"),       TEXT("nulll"),
        TEXT("[true1]"),    TEXT("1 2"),        TEXT("[] []"),
        TEXT("{}x"),        TEXT("\"a\"\"b\""), TEXT("[1]]"),
        TEXT("[[1]"),       TEXT("{\"a\":1}}"), TEXT(":"),
        TEXT(","),          TEXT("/* */1"),     TEXT("[1,\n2,\n#]"),
        TEXT("\0"),
    };
    /* jansson reads one byte past a number or literal and puts it back; a
     * NUL put back is lost, so a NUL right there is accepted (only one). */
    static const text_t good[] = {
        TEXT("1\0"),
        TEXT("[1\0]"),
        TEXT("[true\0,null\0]"),
        TEXT("{\"a\":-1.5e3\0}"),
        TEXT("false\0 "),
        TEXT("[]"),
        TEXT("{}"),
        TEXT(" [ ] "),
        TEXT("{\"a\":1,\"a\":2}"),
        TEXT("[[[[[]]]]]"),
        TEXT("{\"\":\"\"}"),
        TEXT("[1,[2,[3]],{}]"),
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK_INT(jsonr_parse(&R, bad[i].s, bad[i].n), -1);
        CHECK(R.error[0] != '\0');
        CHECK(agrees(bad[i].s, bad[i].n));
    }
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        CHECK_INT(jsonr_parse(&R, good[i].s, good[i].n), 0);
        CHECK(agrees(good[i].s, good[i].n));
    }

    /* jansson-like messages and positions. */
    CHECK_INT(parse("{\"a\":1,}"), -1);
    CHECK_STR(R.error, "string or '}' expected near '}'");
    CHECK_INT(R.column, 8);
    CHECK_INT(parse("[1,\n2,\n#]"), -1);
    CHECK_STR(R.error, "invalid token near '#'");
    CHECK_INT(R.line, 3);
    CHECK_INT(R.column, 1);
    CHECK_INT(parse("[1"), -1);
    CHECK_STR(R.error, "']' expected near end of file");
    CHECK_INT(parse("{} x"), -1);
    CHECK_STR(R.error, "end of file expected near 'x'");
    CHECK_INT(parse("truex"), -1);
    CHECK_STR(R.error, "invalid token near 'truex'");
}

static void test_duplicates(void)
{
    char big[2048];
    size_t n0 = 0;
    uint32_t dup;
    long long n;

    /* Small objects are compared pairwise, larger ones sorted. */
    for (int size = 2; size <= 40; size += 19) {
        for (int repeat = 0; repeat <= 1; repeat++) {
            n0 = (size_t)sprintf(big, "[{\"x\":{}},{");
            for (int i = 0; i < size; i++)
                n0 += (size_t)sprintf(big + n0, "%s\"k%d\":%d", i ? "," : "",
                                      repeat && i == size - 1 ? size / 3 : i, i);
            n0 += (size_t)sprintf(big + n0, "}]");
            CHECK_INT(jsonr_parse(&R, big, n0), 0);
            CHECK_INT(jsonr_find_duplicate(&R, &dup), repeat);
            if (repeat) {
                CHECK(jsonr_int(&R, dup, &n) == 0 && n == size - 1);
            }
            CHECK(agrees(big, n0));
        }
    }

    CHECK_INT(parse("{\"a\":1,\"b\":2,\"a\":3}"), 0);
    CHECK_INT(jsonr_count(&R, 0), 3);
    CHECK(jsonr_int(&R, jsonr_get(&R, 0, "a"), &n) == 0 && n == 3);
    CHECK(agrees_s("{\"a\":1,\"b\":2,\"a\":3}"));
}

/* Nesting: a value may be 2048 deep, counting itself, as in jansson. */
static void test_depth(void)
{
    enum { N = 2100 };
    char *s = malloc(2 * N + 2);
    size_t n;

    CHECK(s != NULL);
    if (s == NULL)
        return;
    for (int depth = 2046; depth <= 2050; depth++) {
        /* depth arrays, empty inside */
        memset(s, '[', (size_t)depth);
        memset(s + depth, ']', (size_t)depth);
        n = 2 * (size_t)depth;
        CHECK_INT(jsonr_parse(&R, s, n), depth <= 2048 ? 0 : -1);
        CHECK(agrees(s, n));
        /* depth - 1 arrays around a number */
        memset(s, '[', (size_t)depth - 1);
        s[depth - 1] = '1';
        memset(s + depth, ']', (size_t)depth - 1);
        n = 2 * (size_t)depth - 1;
        CHECK_INT(jsonr_parse(&R, s, n), depth <= 2048 ? 0 : -1);
        CHECK(agrees(s, n));
    }
    memset(s, '[', N);
    CHECK_INT(jsonr_parse(&R, s, N), -1);
    CHECK(strstr(R.error, "maximum parsing depth") != NULL);
    free(s);
    /* Objects count as much as arrays. */
    s = malloc(16384);
    CHECK(s != NULL);
    if (s == NULL)
        return;
    for (int extra = 0; extra <= 1; extra++) {
        n = 0;
        for (int i = 0; i < 2047 + extra; i++) {
            memcpy(s + n, "{\"\":", 4);
            n += 4;
        }
        memcpy(s + n, "{}", 2);
        n += 2;
        memset(s + n, '}', 2047 + (size_t)extra);
        n += 2047 + (size_t)extra;
        CHECK_INT(jsonr_parse(&R, s, n), extra ? -1 : 0);
        CHECK(agrees(s, n));
    }
    free(s);
}

/* The token and scratch arrays grow, are reused, and are trimmed. */
static void test_growth(void)
{
    enum { N = 5000 };
    char *s = malloc(N * 8 + 2);
    size_t n = 0;
    uint32_t v, i = 0;
    long long x;

    CHECK(s != NULL);
    if (s == NULL)
        return;
    s[n++] = '[';
    for (int k = 0; k < N; k++)
        n += (size_t)sprintf(s + n, "%s\"\\t%d\"", k ? "," : "", k % 10);
    s[n++] = ']';
    CHECK_INT(jsonr_parse(&R, s, n), 0);
    CHECK_INT(jsonr_count(&R, 0), N);
    for (v = jsonr_first(&R, 0); v != JSONR_NONE; v = jsonr_next(&R, v), i++) {
        size_t len;
        const char *t = jsonr_str(&R, v, &len);
        if (len != 2 || t[0] != '\t' || t[1] != '0' + (char)(i % 10)) {
            CHECK(0);
            break;
        }
    }
    CHECK_INT(i, N);
    CHECK(agrees(s, n));
    free(s);
    jsonr_trim(&R, 1 << 20); /* small enough to keep */
    CHECK(R.tok != NULL);
    jsonr_trim(&R, 64);
    CHECK(R.tok == NULL && R.scratch == NULL && R.cap == 0);
    CHECK_INT(parse("[1,2]"), 0);
    CHECK(jsonr_int(&R, jsonr_at(&R, 0, 1), &x) == 0 && x == 2);
}

/* A long real goes through scratch for strtod, and nothing is left there. */
static void test_long_real(void)
{
    char s[300];
    double d;

    memset(s, '0', sizeof(s));
    s[0] = '[';
    s[1] = '0';
    s[2] = '.';
    s[sizeof(s) - 3] = '5';
    s[sizeof(s) - 2] = ']';
    s[sizeof(s) - 1] = '\0';
    CHECK_INT(parse(s), 0);
    CHECK(jsonr_number(&R, jsonr_at(&R, 0, 0), &d) == 0 && d > 0 && d < 1e-200);
    CHECK(agrees_s(s));
}

static void *fail_realloc(void *p, size_t n)
{
    (void)p;
    (void)n;
    return NULL;
}

static void no_free(void *p)
{
    (void)p;
}

static void test_no_memory(void)
{
    jsonr_t r;

    jsonr_init(&r, fail_realloc, no_free);
    CHECK_INT(jsonr_parse(&r, "[1]", 3), -2);
    CHECK_INT(jsonr_parse(&r, "  ", 2), -1); /* a syntax error before the first token */
    jsonr_free(&r);
}

static void test_to_json(void)
{
    json_t *j, *t;
    size_t len;
    const char *s;

    CHECK_INT(parse("{\"a\":[1,2.5,\"x\\u00e9\",null,true,false,{}],\"b\":{\"c\":-3}}"), 0);
    j = jsonr_to_json(&R, jsonr_get(&R, 0, "b"));
    CHECK(j != NULL && json_integer_value(json_object_get(j, "c")) == -3);
    json_decref(j);
    CHECK(jsonr_to_json(&R, JSONR_NONE) == NULL);

    /* A tree read into tokens, NUL bytes in keys and strings included. */
    t = json_pack("{s:[i,f,s,n,b],s:{},s:s}", "a", 7, 2.5, "x", 1, "b", "", "");
    CHECK_INT(jsonr_from_json(&R, t), 0);
    CHECK_INT(jsonr_count(&R, 0), 3);
    CHECK_INT(jsonr_count(&R, jsonr_get(&R, 0, "a")), 5);
    CHECK(jsonr_str_eq(&R, jsonr_at(&R, jsonr_get(&R, 0, "a"), 2), "x"));
    CHECK(jsonr_str_eq(&R, jsonr_get(&R, 0, ""), ""));
    s = jsonr_raw(&R, 0, &len);
    CHECK(len == 0);
    j = jsonr_to_json(&R, 0);
    CHECK(j != NULL && json_equal(j, t));
    json_decref(j);
    /* (json_equal() does not see keys past a NUL: looked up by hand.) */
    json_object_setn_new(t, "k\0y", 3, json_stringn("v\0w", 3));
    CHECK_INT(jsonr_from_json(&R, t), 0);
    s = jsonr_str(&R, jsonr_getn(&R, 0, "k\0y", 3), &len);
    CHECK(s != NULL && len == 3 && memcmp(s, "v\0w", 3) == 0);
    json_decref(t);
    CHECK_INT(jsonr_from_json(&R, NULL), 0);
    CHECK_INT(jsonr_type(&R, 0), JSONR_NULL);
}

/* ---- the differential test ------------------------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

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

static void put(gen_t *g, const char *s, size_t n)
{
    if (g->n + n > g->cap)
        return; /* the text is cut; the comparison still holds */
    memcpy(g->s + g->n, s, n);
    g->n += n;
}

static void puts_(gen_t *g, const char *s)
{
    put(g, s, strlen(s));
}

static void ws(gen_t *g)
{
    static const char *const w[] = {"", "", "", " ", "\n", "\t", "\r\n  "};
    puts_(g, w[rnd(7)]);
}

static void gen_string(gen_t *g)
{
    static const char *const pieces[] = {
        "a",
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
        "\\u20ac",
        "\\uD83D\\uDE00",
        "\\uDBFF\\uDFFF",
        "\\u0000",
        "\\uD800",
        "\\uDC00",
        "\\uD800\\u0041",
        "\\x",
        "\\u12",
        "\xc3\xa9",
        "\xe2\x82\xac",
        "\xf0\x9f\x98\x80",
        "\xf4\x8f\xbf\xbf",
        "\xc0\xaf",
        "\xed\xa0\x80",
        "\xf4\x90\x80\x80",
        "\x80",
        "\xff",
        "\x01",
        "\x1f",
        "\t",
        "\xe2\x82",
        "id",
        "url",
        "jsonrpc",
    };
    int n = (int)rnd(6);
    put(g, "\"", 1);
    for (int i = 0; i < n; i++)
        puts_(g, pieces[rnd(rnd(12) == 0 ? sizeof(pieces) / sizeof(pieces[0]) : 18)]);
    put(g, "\"", 1);
}

static void gen_number(gen_t *g)
{
    static const char *const nums[] = {
        "0", "-0", "7", "-12", "123456789", "9223372036854775807", "-9223372036854775808", "1.5",
        "-0.25", "1e10", "2E-3", "1e-400", "0.1e+1", "3.14159265358979",
        /* refused from here on */
        "9223372036854775808", "-9223372036854775809", "1e400", "-1e400", "01", "1.", ".5", "-",
        "1e", "18446744073709551615", "100000000000000000000000000000"};
    puts_(g, nums[rnd(rnd(8) == 0 ? sizeof(nums) / sizeof(nums[0]) : 14)]);
}

/* A random value, at most depth containers deep (bounded by the count too). */
static void gen_value(gen_t *g, int depth)
{
    uint32_t k = rnd(depth > 0 ? 10 : 6);
    ws(g);
    switch (k) {
    case 0:
        puts_(g, rnd(2) ? "null" : rnd(2) ? "true" : "false");
        break;
    case 1:
    case 2:
        gen_number(g);
        break;
    case 3:
    case 4:
    case 5:
        gen_string(g);
        break;
    case 6:
    case 7: {
        int n = (int)rnd(5);
        put(g, "[", 1);
        for (int i = 0; i < n; i++) {
            if (i)
                put(g, ",", 1);
            gen_value(g, depth - 1);
        }
        ws(g);
        put(g, "]", 1);
        break;
    }
    default: {
        int n = (int)rnd(5);
        put(g, "{", 1);
        for (int i = 0; i < n; i++) {
            if (i)
                put(g, ",", 1);
            ws(g);
            gen_string(g);
            ws(g);
            put(g, ":", 1);
            gen_value(g, depth - 1);
        }
        ws(g);
        put(g, "}", 1);
        break;
    }
    }
    ws(g);
}

/* Random mutations: cut, flip a byte, insert or delete one. */
static void mutate(gen_t *g)
{
    static const char interesting[] = "{}[],:\"\\u0-.eE1 \n\x80\xc3\xff\x00tfn";
    uint32_t k = rnd(4), at;

    if (g->n == 0)
        return;
    at = rnd((uint32_t)g->n);
    switch (k) {
    case 0:
        g->n = at;
        break;
    case 1:
        g->s[at] = rnd(2) ? (char)rnd(256) : interesting[rnd(sizeof(interesting) - 1)];
        break;
    case 2:
        if (g->n < g->cap) {
            memmove(g->s + at + 1, g->s + at, g->n - at);
            g->s[at] = interesting[rnd(sizeof(interesting) - 1)];
            g->n++;
        }
        break;
    default:
        memmove(g->s + at, g->s + at + 1, g->n - at - 1);
        g->n--;
        break;
    }
}

static void test_differential(void)
{
    enum { ROUNDS = 60000, CAP = 4096 };
    char *buf = malloc(CAP);
    gen_t g = {buf, 0, CAP};
    int mismatches = 0, accepted = 0;

    CHECK(buf != NULL);
    if (buf == NULL)
        return;
    for (int i = 0; i < ROUNDS && mismatches < 5; i++) {
        g.n = 0;
        gen_value(&g, (int)rnd(5));
        if (rnd(3) == 0) {
            int m = 1 + (int)rnd(3);
            while (m-- > 0)
                mutate(&g);
        }
        if (!agrees(g.s, g.n))
            mismatches++;
        else if (R.error[0] == '\0')
            accepted++;
    }
    CHECK_INT(mismatches, 0);
    /* Both verdicts are well represented. */
    CHECK(accepted > ROUNDS / 5);
    CHECK(accepted < ROUNDS * 4 / 5);
    printf("  differential: %d texts, %d accepted by both\n", ROUNDS, accepted);
    free(buf);
}

static void test_teardown(void)
{
    jsonr_free(&R);
    CHECK(R.tok == NULL && R.scratch == NULL);
}

static void setup(void)
{
    jsonr_init(&R, realloc, free);
}

TEST_MAIN(TEST_CASE(setup), TEST_CASE(test_wait_line), TEST_CASE(test_types),
          TEST_CASE(test_escapes), TEST_CASE(test_utf8), TEST_CASE(test_numbers),
          TEST_CASE(test_syntax), TEST_CASE(test_duplicates), TEST_CASE(test_depth),
          TEST_CASE(test_growth), TEST_CASE(test_long_real), TEST_CASE(test_no_memory),
          TEST_CASE(test_to_json), TEST_CASE(test_differential), TEST_CASE(test_teardown))
