/* libFuzzer target: jsonr_parse() against jansson, byte for byte.
 *
 * Checks what proto/jsonr.h promises:
 *  - jsonr accepts a text exactly when json_loadb(JSON_DECODE_ANY) does,
 *    and then jsonr_to_json() of the root equals jansson's tree;
 *  - jsonr_find_duplicate() finds a repeated key exactly when
 *    JSON_REJECT_DUPLICATES refuses the text;
 *  - with JSONR_ALLOW_NUL it accepts what JSON_ALLOW_NUL does, and also
 *    NUL bytes in keys (which jansson never takes);
 *  - walking every value (types, keys, strings, numbers, raw text) stays
 *    inside the arrays (ASan), and a failed parse leaves an error message.
 * One reader is reused for every input, as the daemon reuses one per
 * client, and trimmed now and then; ASan's leak check covers its arrays.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static jsonr_t reader;

static void fail(const char *why, const uint8_t *data, size_t size)
{
    fprintf(stderr, "fuzz_jsonr: %s (jsonr: %s) on %zu bytes: ", why, reader.error, size);
    for (size_t i = 0; i < size && i < 200; i++)
        fprintf(stderr, data[i] >= 0x20 && data[i] < 0x7f ? "%c" : "\\x%02x", data[i]);
    fprintf(stderr, "\n");
    abort();
}

/* Touches every accessor on every value; returns the number of values. */
static uint32_t walk(const jsonr_t *r)
{
    uint32_t n = 0;
    for (uint32_t v = 0; v < r->ntok; v++) {
        size_t len;
        long long i;
        double d;
        const char *s;
        jsonr_type_t t = jsonr_type(r, v);
        s = jsonr_raw(r, v, &len);
        if (s == NULL || s < r->text || s + len > r->text + r->len)
            abort();
        if (t == JSONR_STRING && (s = jsonr_str(r, v, &len)) != NULL && len > 0)
            (void)(volatile char)s[len - 1];
        if ((s = jsonr_key(r, v, &len)) != NULL && len > 0)
            (void)(volatile char)s[len - 1];
        if (t == JSONR_ARRAY || t == JSONR_OBJECT) {
            uint32_t count = 0;
            for (uint32_t c = jsonr_first(r, v); c != JSONR_NONE; c = jsonr_next(r, c))
                count++;
            if (count != jsonr_count(r, v))
                abort();
            if (t == JSONR_ARRAY && count > 0 && jsonr_at(r, v, count - 1) == JSONR_NONE)
                abort();
        }
        (void)jsonr_int(r, v, &i);
        (void)jsonr_number(r, v, &d);
        n++;
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned runs;
    const char *text = (const char *)data;
    json_error_t jerr;
    json_t *a, *b, *c;
    uint32_t dup;
    int rc;

    if (runs++ == 0)
        jsonr_init(&reader, realloc, free);
    a = json_loadb(text, size, JSON_DECODE_ANY, &jerr);
    rc = jsonr_parse(&reader, text, size);
    if (rc == -2)
        abort();
    if ((a != NULL) != (rc == 0))
        fail(a ? "jansson accepts, jsonr refuses" : "jansson refuses, jsonr accepts", data, size);
    if (rc != 0 && reader.error[0] == '\0')
        fail("a refusal without a message", data, size);
    if (a != NULL) {
        walk(&reader);
        b = jsonr_to_json(&reader, 0);
        if (b == NULL || !json_equal(a, b))
            fail("the trees differ", data, size);
        json_decref(b);
        c = json_loadb(text, size, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL);
        if (jsonr_find_duplicate(&reader, &dup) != (c == NULL))
            fail("duplicate keys found differently", data, size);
        json_decref(c);
    }
    json_decref(a);

    a = json_loadb(text, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    rc = jsonr_parse_flags(&reader, text, size, JSONR_ALLOW_NUL);
    if ((a != NULL) != (rc == 0) && !(rc == 0 && strstr(jerr.text, "NUL byte in object key")))
        fail("JSONR_ALLOW_NUL and JSON_ALLOW_NUL disagree", data, size);
    if (a != NULL) {
        b = jsonr_to_json(&reader, 0);
        if (b == NULL || !json_equal(a, b))
            fail("the trees differ with NUL allowed", data, size);
        json_decref(b);
    }
    json_decref(a);
    if (runs % 64 == 0)
        jsonr_trim(&reader, 4096);
    return 0;
}
