/* jdump — writes a jsonr value as compact JSON text, byte for byte as
 * jansson's json_dumps(JSON_COMPACT) writes the tree json_loadb() would have
 * built from the same text: fetchctl's --json output stays what it was when
 * fetchctl parsed answers with jansson.
 *
 * That means: members in their first position with the value of their last
 * occurrence (a repeated key), strings re-escaped as jansson escapes them
 * (", \, control characters; \u00XX upper-case), integers as their value
 * ("-0" becomes "0"), reals as "%.17g" with ".0" added where the text would
 * read as an integer.
 *
 * Ownership: a jdump_t owns its buffer; it is reused from call to call.
 */
#ifndef FETCHCTL_JDUMP_H
#define FETCHCTL_JDUMP_H

#include <stddef.h>

#include "jsonr.h"

typedef struct jdump {
    char *buf; /* owned: the text written so far, len bytes (not NUL-terminated) */
    size_t len, cap;
} jdump_t;

/* Appends value v of r's last parse as compact JSON. 0, or -1 when out of
 * memory (the buffer then holds a part of it). */
int jdump_value(jdump_t *d, const jsonr_t *r, uint32_t v);

/* Appends s (n bytes of valid UTF-8) as a JSON string, escaped as jansson
 * escapes it. 0 or -1. */
int jdump_string(jdump_t *d, const char *s, size_t n);

/* Whether s (n bytes) is valid UTF-8 by the rules of jansson's
 * json_stringn(): no overlong form, surrogate or code point past U+10FFFF
 * (NUL is valid). */
int jdump_utf8_valid(const char *s, size_t n);

/* Appends n raw bytes. 0 or -1. */
int jdump_raw(jdump_t *d, const char *s, size_t n);

/* Frees the buffer. */
void jdump_free(jdump_t *d);

#endif
