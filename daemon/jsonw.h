/* jsonw — a small JSON writer that appends straight into a strbuf.
 *
 * The control socket answers every finished job with its job object; built
 * as a jansson tree and dumped, that cost more than the whole HTTP exchange.
 * This writer produces the same JSON text directly: strings are escaped as
 * they are copied, integers and fixed-point numbers are formatted without
 * printf, and commas are placed by the writer, so a caller only says what
 * comes next. jansson stays for parsing.
 *
 * Text that should be UTF-8 but may not be (a server's words in an error
 * message, a path) is written lossily: a byte that does not start a
 * well-formed sequence becomes '?', exactly as the jansson encoder in
 * proto/jobspec.c does, so the writer never emits invalid JSON.
 *
 * Failure: an allocation failure marks the strbuf failed (b->failed) and
 * every later call does nothing; the caller checks once at the end.
 *
 * Ownership: a jsonw_t borrows its strbuf and lives on the caller's stack.
 */
#ifndef FETCHD_JSONW_H
#define FETCHD_JSONW_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "strbuf.h"

#define JSONW_MAX_DEPTH 16

typedef struct jsonw {
    strbuf_t *b;        /* borrowed */
    unsigned depth;     /* open objects and arrays */
    int after_key;      /* a key was written: its value comes next, no comma */
    uint32_t has_items; /* bit d: the container at depth d has a member already */
} jsonw_t;

void jsonw_init(jsonw_t *w, strbuf_t *b);

void jsonw_object_begin(jsonw_t *w);
void jsonw_object_end(jsonw_t *w);
void jsonw_array_begin(jsonw_t *w);
void jsonw_array_end(jsonw_t *w);

/* A member's key: plain ASCII the caller knows needs no escaping. */
void jsonw_key(jsonw_t *w, const char *key);

/* The per-member writers below take the key as a literal already written
 * as JSON, quotes and colon included, with its length:
 * jsonw_member_uint(w, JSONW_KEY("bytes"), n). Each member goes out in one
 * append, its comma included: the hot answers' way. */
#define JSONW_KEY(k) "\"" k "\":", sizeof("\"" k "\":") - 1

/* A member's key given as JSONW_KEY(): its value comes next. */
void jsonw_key_lit(jsonw_t *w, const char *key, size_t klen);
/* A member with a string value (escaped as jsonw_stringn() does). */
void jsonw_member_str(jsonw_t *w, const char *key, size_t klen, const char *s, size_t n);
/* A member with a string value the caller knows needs no escaping (hex,
 * a fixed name): copied without a look. */
void jsonw_member_plain(jsonw_t *w, const char *key, size_t klen, const char *s, size_t n);
void jsonw_member_uint(jsonw_t *w, const char *key, size_t klen, uint64_t v);
void jsonw_member_int(jsonw_t *w, const char *key, size_t klen, int64_t v);
/* A member with a jsonw_fixed() value. */
void jsonw_member_fixed(jsonw_t *w, const char *key, size_t klen, int64_t v, unsigned decimals);
/* A member `key: true`. */
void jsonw_member_true(jsonw_t *w, const char *key, size_t klen);

/* A string value of n bytes, escaped; ill-formed UTF-8 becomes '?'. */
void jsonw_stringn(jsonw_t *w, const char *s, size_t n);
void jsonw_string(jsonw_t *w, const char *s);
void jsonw_int(jsonw_t *w, int64_t v);
void jsonw_uint(jsonw_t *w, uint64_t v);
/* v / 10^decimals with exactly `decimals` digits after the point (at most
 * 9): 1796140125665836 with 6 is 1796140125.665836. */
void jsonw_fixed(jsonw_t *w, int64_t v, unsigned decimals);
/* A floating-point value as jansson prints it (%.17g, with ".0" when it
 * looks like an integer). Uses printf: for rare fields only. */
void jsonw_double(jsonw_t *w, double v);
void jsonw_bool(jsonw_t *w, int v);
void jsonw_null(jsonw_t *w);
/* A value given as a jansson tree (a job's labels, a request id). */
void jsonw_json(jsonw_t *w, const json_t *v);
/* A value already written as JSON text (n bytes), copied as it is. */
void jsonw_raw(jsonw_t *w, const char *json, size_t n);
/* n bytes of base64 of data, as a string value. */
void jsonw_base64(jsonw_t *w, const void *data, size_t n);

/* The length of the longest prefix of s[0..n) that is well-formed UTF-8. */
size_t jsonw_utf8_prefix(const char *s, size_t n);

#endif
