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

/* 1 when the coding named by the n bytes at name (case-insensitive) is a
 * transfer coding fetchd decodes, chunked aside: gzip, x-gzip and deflate
 * (the job's decoder chain, decode.h, undoes them). */
int http_te_decodable(const char *name, size_t n);

/* Checks a Transfer-Encoding value (every field of the response joined with
 * ", "): each coding must be chunked or one http_te_decodable() accepts, and
 * chunked may stand only once and only last (RFC 9112 6.1). Sets *chunked to
 * 1 when chunked is last. Returns 0, or -1 with the reason in why. */
int http_check_transfer_codings(const char *v, size_t n, int *chunked, char *why, size_t whylen);

/* Parses a Content-Length value: one decimal number, or a list of identical
 * ones ("6, 6", RFC 9110 8.6). Sets *value, and *list to 1 for a list.
 * Returns 0, or -1 when a member is not a number or the members differ. */
int http_parse_content_length(const char *v, size_t n, uint64_t *value, int *list);

/* FNV-1a over a NUL-terminated string, for the engine's hash tables. */
uint64_t http_hash(const char *s);

#endif
