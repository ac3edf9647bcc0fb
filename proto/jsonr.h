/* jsonr — a strict JSON (RFC 8259) reader into a flat, reusable array of
 * tokens: no allocation per value, the strings are not copied unless they
 * hold escapes. Accepts and refuses exactly what jansson's
 * json_loadb(JSON_DECODE_ANY) does (invalid UTF-8, lone surrogates, \u0000,
 * integers outside int64, nesting past 2048, trailing garbage: refused;
 * duplicate keys: the last wins for jsonr_get). */
#ifndef FETCHD_JSONR_H
#define FETCHD_JSONR_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

typedef enum jsonr_type {
    JSONR_NULL,
    JSONR_FALSE,
    JSONR_TRUE,
    JSONR_INTEGER,
    JSONR_REAL,
    JSONR_STRING,
    JSONR_ARRAY,
    JSONR_OBJECT
} jsonr_type_t;

#define JSONR_NONE UINT32_MAX /* "no such value" (absent key, past the last element) */

typedef struct jsonr_tok jsonr_tok_t; /* private layout, ~16 bytes */

/* A reader. Embedded or on the stack: jsonr_init() before use, jsonr_free()
 * after. Between parses it keeps its arrays, so a reader reused per line
 * allocates only while they grow. */
typedef struct jsonr {
    jsonr_tok_t *tok; /* owned; ntok tokens in use, cap allocated */
    uint32_t ntok, cap;
    char *scratch; /* owned; unescaped strings, reused */
    size_t scratch_len, scratch_cap;
    const char *text; /* borrowed; the last text parsed */
    size_t len;
    void *(*realloc_fn)(void *, size_t);
    void (*free_fn)(void *);
    int line, column; /* after a failed parse, jansson-like */
    char error[160];
} jsonr_t;

/* Initialises r; the arrays grow through realloc_fn and are released with
 * free_fn (the daemon passes mem_realloc/mem_free, others realloc/free). */
void jsonr_init(jsonr_t *r, void *(*realloc_fn)(void *, size_t), void (*free_fn)(void *));

/* Frees the arrays; r can be reused after jsonr_init. */
void jsonr_free(jsonr_t *r);

/* Frees the arrays if together they hold more than keep_bytes (after an
 * unusually large text); the next parse allocates afresh. */
void jsonr_trim(jsonr_t *r, size_t keep_bytes);

/* Parses text[0..len); value 0 is the root. text is borrowed and must stay
 * unchanged while the tokens are read. Returns 0, -1 (syntax: r->error,
 * line, column), -2 (no memory). */
int jsonr_parse(jsonr_t *r, const char *text, size_t len);

/* Flags of jsonr_parse_flags(). */
#define JSONR_ALLOW_NUL 1u /* \u0000 in strings and keys (as JSON_ALLOW_NUL, and in keys too) */

/* jsonr_parse() with flags (JSONR_*); jsonr_parse() is flags 0. */
int jsonr_parse_flags(jsonr_t *r, const char *text, size_t len, unsigned flags);

/* The type of value v (v must be a value of the last successful parse). */
jsonr_type_t jsonr_type(const jsonr_t *r, uint32_t v);

/* The number of elements / members; 0 otherwise. */
uint32_t jsonr_count(const jsonr_t *r, uint32_t v);

/* The first element, or an object's first member's VALUE; JSONR_NONE if
 * empty or no container. */
uint32_t jsonr_first(const jsonr_t *r, uint32_t v);

/* The next sibling (element / member value) or JSONR_NONE. */
uint32_t jsonr_next(const jsonr_t *r, uint32_t v);

/* The key of an object member, given its value (borrowed; not
 * NUL-terminated); NULL if v is no member value. */
const char *jsonr_key(const jsonr_t *r, uint32_t member_value, size_t *len);

/* The value of key in obj (the last one if repeated); JSONR_NONE if absent
 * or obj no object. */
uint32_t jsonr_get(const jsonr_t *r, uint32_t obj, const char *key);
uint32_t jsonr_getn(const jsonr_t *r, uint32_t obj, const char *key, size_t klen);

/* Element i of arr, or JSONR_NONE. */
uint32_t jsonr_at(const jsonr_t *r, uint32_t arr, uint32_t i);

/* A string's decoded bytes (borrowed; not NUL-terminated; may hold NUL only
 * if ever allowed) or NULL. */
const char *jsonr_str(const jsonr_t *r, uint32_t v, size_t *len);

/* Whether v is a string equal to s. */
int jsonr_str_eq(const jsonr_t *r, uint32_t v, const char *s);

/* 0 and *out if v is an integer; -1 otherwise. */
int jsonr_int(const jsonr_t *r, uint32_t v, long long *out);

/* 0 and *out if v is an integer or real (json_number_value); -1 otherwise. */
int jsonr_number(const jsonr_t *r, uint32_t v, double *out);

/* The value's exact source text (borrowed from the parsed text; e.g. to
 * echo an id). */
const char *jsonr_raw(const jsonr_t *r, uint32_t v, size_t *len);

/* Looks for a key repeated within one object anywhere in the last parse
 * (what JSON_REJECT_DUPLICATES refuses). Returns 0 if none, 1 with *dup the
 * value of a repeating member, or -2 when out of memory (a large object is
 * sorted in a temporary array from realloc_fn). */
int jsonr_find_duplicate(const jsonr_t *r, uint32_t *dup);

/* Fills r with the values of the jansson tree v (borrowed; NULL reads as
 * null, and v must outlive the tokens: strings are not copied) as if its
 * JSON text had been parsed: a json_t entry point can then share a jsonr
 * decoder. There is no source text: jsonr_raw() gives "" for every value.
 * 0, or -2 (no memory). */
int jsonr_from_json(jsonr_t *r, const json_t *v);

/* A jansson copy of v (a new reference) or NULL (no memory), for cold paths. */
json_t *jsonr_to_json(const jsonr_t *r, uint32_t v);

#endif
