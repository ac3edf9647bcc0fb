/* http — small HTTP syntax helpers shared by the engine and the protocol
 * code: RFC 9110 tokens and field values, and the string hash the engine's
 * tables use. */
#ifndef FETCHD_HTTP_H
#define FETCHD_HTTP_H

#include <stddef.h>
#include <stdint.h>

/* 1 when the n bytes at s are a non-empty RFC 9110 token (a method or a
 * header name). */
int http_is_token(const char *s, size_t n);

/* 1 when the n bytes at s may stand in a header value we send: no CR, LF,
 * NUL or other control byte except HTAB. */
int http_is_field_value(const char *s, size_t n);

/* FNV-1a over a NUL-terminated string, for the engine's hash tables. */
uint64_t http_hash(const char *s);

#endif
