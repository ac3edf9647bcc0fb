/* Unit tests for daemon/err.c: the error table and libuv's mapping into it. */
#include <uv.h>

#include "err.h"
#include "test.h"

static void test_names_are_stable(void)
{
    /* These strings are a wire interface: DESIGN.md lists them. */
    static const struct {
        int err;
        const char *name;
    } expected[] = {
        {ERR_INVALID_REQUEST, "invalid_request"},
        {ERR_DNS, "dns"},
        {ERR_CONNECT_REFUSED, "connect_refused"},
        {ERR_CONNECT_TIMEOUT, "connect_timeout"},
        {ERR_TLS_HANDSHAKE, "tls_handshake"},
        {ERR_TLS_VERIFY, "tls_verify"},
        {ERR_TIMEOUT, "timeout"},
        {ERR_TRUNCATED, "truncated"},
        {ERR_PROTOCOL, "protocol"},
        {ERR_HEADERS_TOO_LARGE, "headers_too_large"},
        {ERR_BODY_TOO_LARGE, "body_too_large"},
        {ERR_TOO_MANY_REDIRECTS, "too_many_redirects"},
        {ERR_EMPTY_REPLY, "empty_reply"},
        {ERR_CHECKSUM_MISMATCH, "checksum_mismatch"},
        {ERR_IO, "io"},
        {ERR_CANCELLED, "cancelled"},
        {ERR_SHUTDOWN, "shutdown"},
        {ERR_NO_MEMORY, "no_memory"},
        {ERR_HTTP_ERROR, "http_error"},
        {ERR_QUEUE_FULL, "queue_full"},
        {ERR_FORBIDDEN, "forbidden"},
        {ERR_NO_FDS, "no_file_descriptors"},
        {ERR_CONTENT_DECODING, "content_decoding"},
    };
    for (size_t i = 0; i < sizeof(expected) / sizeof(expected[0]); i++) {
        CHECK_STR(err_name(expected[i].err), expected[i].name);
        CHECK_INT(err_from_name(expected[i].name), expected[i].err);
        CHECK(err_str(expected[i].err)[0] != '\0');
    }
}

static void test_codes_are_distinct_and_negative(void)
{
    for (int e = ERR__BASE + 1; e < ERR__END; e++) {
        CHECK(e < 0);
        CHECK(e < -4096); /* never a libuv code */
        for (int f = e + 1; f < ERR__END; f++)
            CHECK(strcmp(err_name(e), err_name(f)) != 0);
    }
}

static void test_out_of_table(void)
{
    CHECK_STR(err_name(0), "ok");
    CHECK_STR(err_name(ERR__END), "unknown");
    CHECK_STR(err_name(12345), "unknown");
    CHECK_INT(err_from_name("no-such-code"), 0);
    CHECK_STR(err_str(UV_ECONNREFUSED), uv_strerror(UV_ECONNREFUSED));
}

static void test_uv_mapping(void)
{
    CHECK_INT(err_from_uv(UV_ENOMEM), ERR_NO_MEMORY);
    CHECK_INT(err_from_uv(UV_ECONNREFUSED), ERR_CONNECT_REFUSED);
    CHECK_INT(err_from_uv(UV_ETIMEDOUT), ERR_CONNECT_TIMEOUT);
    CHECK_INT(err_from_uv(UV_ECONNRESET), ERR_TRUNCATED);
    CHECK_INT(err_from_uv(UV_EOF), ERR_TRUNCATED);
    CHECK_INT(err_from_uv(UV_EAI_NONAME), ERR_DNS);
    CHECK_INT(err_from_uv(UV_ENOSPC), ERR_IO);
    CHECK_INT(err_from_uv(UV_EMFILE), ERR_NO_FDS);
    CHECK_INT(err_from_uv(UV_ENFILE), ERR_NO_FDS);
    CHECK_INT(err_from_uv(UV_ECANCELED), ERR_CANCELLED);
    CHECK_INT(err_from_uv(ERR_PROTOCOL), ERR_PROTOCOL); /* ours pass through */
    CHECK_INT(err_from_uv(0), 0);
}

TEST_MAIN(TEST_CASE(test_names_are_stable), TEST_CASE(test_codes_are_distinct_and_negative),
          TEST_CASE(test_out_of_table), TEST_CASE(test_uv_mapping))
