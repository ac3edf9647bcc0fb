/* Unit tests for daemon/http.c: tokens, field values, Transfer-Encoding
 * lists and Content-Length values as RFC 9110 and 9112 define them. */
#include <string.h>

#include "http.h"
#include "test.h"

#define S(lit) lit, sizeof(lit) - 1

static void test_token(void)
{
    CHECK(http_is_token(S("GET")));
    CHECK(http_is_token(S("X-Custom_Header.1~")));
    CHECK(http_is_token(S("!#$%&'*+-.^_`|~")));
    CHECK(!http_is_token(S("")));
    CHECK(!http_is_token(S("Bad Header")));
    CHECK(!http_is_token(S("a:b")));
    CHECK(!http_is_token(S("a\"b")));
    CHECK(!http_is_token(S("caf\xc3\xa9")));
    CHECK(!http_is_token("a\0b", 3)); /* a NUL inside is not a tchar */
}

static void test_field_value(void)
{
    CHECK(http_is_field_value(S("")));
    CHECK(http_is_field_value(S("text/html; charset=utf-8")));
    CHECK(http_is_field_value(S("tab\there")));
    CHECK(http_is_field_value(S("obs-text \x80\xff")));
    CHECK(!http_is_field_value(S("a\r\nInjected: 1")));
    CHECK(!http_is_field_value(S("line\nfeed")));
    CHECK(!http_is_field_value("nul\0byte", 8));
    CHECK(!http_is_field_value(S("del\x7f")));
    CHECK(!http_is_field_value(S("esc\x1b[0m")));
}

/* Every byte value at every position of values 1..24 bytes long (the word
 * loop and the tail), and every byte in a token: the table and the word
 * test agree with the RFC's byte-by-byte definitions. */
static void test_every_byte_everywhere(void)
{
    static const char *const seps = "!#$%&'*+-.^_`|~";
    char v[24];

    for (int c = 0; c < 256; c++) {
        int value_ok = (c >= 0x20 && c != 0x7f) || c == '\t';
        int token_ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                       (c != 0 && strchr(seps, c) != NULL);
        char t[3] = {'a', (char)c, 'b'};

        CHECK_INT(http_is_token(t, 3), token_ok);
        CHECK_INT(http_is_token(t + 1, 1), token_ok);
        for (size_t n = 1; n <= sizeof(v); n++) {
            for (size_t at = 0; at < n; at++) {
                memset(v, 'x', sizeof(v));
                v[at] = (char)c;
                if (http_is_field_value(v, n) != value_ok) {
                    CHECK_INT(http_is_field_value(v, n), value_ok);
                    return;
                }
            }
        }
    }
    memset(v, 0xff, sizeof(v));
    CHECK_INT(http_is_field_value(v, sizeof(v)), 1); /* obs-text */
    memset(v, 0x80, sizeof(v));
    CHECK_INT(http_is_field_value(v, sizeof(v)), 1);
}

static void test_te_decodable(void)
{
    CHECK(http_te_decodable(S("gzip")));
    CHECK(http_te_decodable(S("X-GZIP")));
    CHECK(http_te_decodable(S("Deflate")));
    CHECK(!http_te_decodable(S("chunked"))); /* framing, not a decoder */
    CHECK(!http_te_decodable(S("br")));      /* a content coding only */
    CHECK(!http_te_decodable(S("gzi")));
    CHECK(!http_te_decodable(S("gzipx")));
    CHECK(!http_te_decodable(S("")));
}

static int te(const char *v, int *chunked, char *why, size_t whylen)
{
    why[0] = '\0';
    return http_check_transfer_codings(v, strlen(v), chunked, why, whylen);
}

static void test_transfer_codings(void)
{
    static const struct {
        const char *v;
        int chunked;
    } ok[] = {
        {"chunked", 1},       {"Chunked", 1},           {"gzip, chunked", 1},
        {"gzip,chunked", 1},  {" ,gzip , chunked", 1},  {"x-gzip", 0},
        {"deflate, gzip", 0}, {"gzip;q=1, chunked", 1}, {"gzip\t,\tchunked", 1},
    };
    static const struct {
        const char *v, *why;
    } bad[] = {
        {"", "empty Transfer-Encoding"},
        {" , ", "empty Transfer-Encoding"},
        {"chunked, gzip", "transfer coding 'chunked' is not the last one"},
        {"chunked, chunked", "transfer coding 'chunked' is not the last one"},
        {"chunked, x", "unknown transfer coding 'x'"},
        {"br", "unknown transfer coding 'br'"},
        {"identity", "unknown transfer coding 'identity'"},
        {"chunked;foo=bar", "transfer coding 'chunked' with parameters"},
        {"gz\"ip", "invalid transfer coding 'gz\"ip'"},
    };
    char why[128];
    int chunked;

    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        chunked = -1;
        if (te(ok[i].v, &chunked, why, sizeof(why)) != 0)
            fprintf(stderr, "refused '%s': %s\n", ok[i].v, why);
        CHECK_INT(te(ok[i].v, &chunked, why, sizeof(why)), 0);
        CHECK_INT(chunked, ok[i].chunked);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK_INT(te(bad[i].v, &chunked, why, sizeof(why)), -1);
        CHECK_STR(why, bad[i].why);
    }
    /* A long coding name is clipped in the message, which stays bounded. */
    CHECK_INT(te("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                 &chunked, why, sizeof(why)),
              -1);
    CHECK(strlen(why) < 80);
    /* The message never writes past the space it is given. */
    memset(why, 'X', sizeof(why));
    CHECK_INT(te("chunked, gzip", &chunked, why, 8), -1);
    CHECK_INT(strlen(why), 7);
    CHECK(why[8] == 'X');
}

static int cl(const char *v, uint64_t *value, int *list)
{
    return http_parse_content_length(v, strlen(v), value, list);
}

static void test_content_length(void)
{
    uint64_t v = 0;
    int list = -1;

    CHECK_INT(cl("0", &v, &list), 0);
    CHECK_INT(v, 0);
    CHECK_INT(list, 0);
    CHECK_INT(cl("1234", &v, &list), 0);
    CHECK_INT(v, 1234);
    CHECK_INT(cl(" 6 ", &v, &list), 0); /* OWS around a member is allowed */
    CHECK_INT(v, 6);
    CHECK_INT(cl("6, 6", &v, &list), 0);
    CHECK_INT(v, 6);
    CHECK_INT(list, 1);
    CHECK_INT(cl("6,6,6", &v, &list), 0);
    CHECK_INT(list, 1);
    CHECK_INT(cl("9999999999999999999", &v, &list), 0); /* 19 digits fit */
    CHECK(v == 9999999999999999999ull);

    CHECK_INT(cl("", &v, &list), -1);
    CHECK_INT(cl("6, 7", &v, &list), -1);
    CHECK_INT(cl("6,", &v, &list), -1);
    CHECK_INT(cl("-1", &v, &list), -1);
    CHECK_INT(cl("+5", &v, &list), -1);
    CHECK_INT(cl("0x10", &v, &list), -1);
    CHECK_INT(cl("1 2", &v, &list), -1);
    CHECK_INT(cl("12345678901234567890", &v, &list), -1); /* 20 digits may overflow */
}

static void test_hash(void)
{
    /* FNV-1a 64's published test vectors. */
    CHECK(http_hash("") == 0xcbf29ce484222325ull);
    CHECK(http_hash("a") == 0xaf63dc4c8601ec8cull);
    CHECK(http_hash("foobar") == 0x85944171f73967e8ull);
    CHECK(http_hash("example.com") != http_hash("example.org"));
}

TEST_MAIN(TEST_CASE(test_token), TEST_CASE(test_field_value), TEST_CASE(test_every_byte_everywhere),
          TEST_CASE(test_te_decodable), TEST_CASE(test_transfer_codings),
          TEST_CASE(test_content_length), TEST_CASE(test_hash))
