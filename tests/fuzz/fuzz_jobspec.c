/* libFuzzer target: jobspec_decode_r() and jobspec_decode_lent(), as the
 * control socket calls them on every submitted job (jsonr_parse() of one
 * line, then one decode per job).
 *
 * Checks what proto/jobspec.h promises:
 *  - the text decodes as the jansson tree of the same text does through
 *    jobspec_decode() (same result, same message, same spec), repeated keys
 *    included, and as it does with its url lent a room (the submit path);
 *  - a refusal is ERR_INVALID_REQUEST or ERR_NO_MEMORY and releases
 *    everything;
 *  - a spec that decodes encodes (the state file's form), that form decodes
 *    again, and encoding the second spec gives the same JSON: what fetchd
 *    persists it reads back unchanged;
 *  - fetchd's and jansson's heaps are back where they were afterwards, also
 *    when an allocation inside the decoder fails (each fetchd allocation
 *    point is failed once in turn, and must then give ERR_NO_MEMORY).
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "jobspec.h"
#include "jsonr.h"
#include "mem.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *why, const json_t *v)
{
    char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    fprintf(stderr, "fuzz_jobspec: %s: %s\n", why, text ? text : "?");
    abort(); /* text is left: jansson's allocator is fetchd's counting one */
}

/* Encodes spec, decodes that and encodes again: both forms must be equal. */
static void check_round_trip(const job_spec_t *spec)
{
    job_spec_t again;
    json_t *enc, *enc2;
    char err[256];
    int rc;

    enc = jobspec_encode_spec(spec);
    if (enc == NULL)
        return; /* allocation failure: allowed */
    rc = jobspec_decode(enc, &again, err, sizeof(err));
    if (rc == ERR_NO_MEMORY) {
        json_decref(enc);
        return;
    }
    if (rc != 0) {
        fprintf(stderr, "fuzz_jobspec: re-decoding: %s\n", err);
        fail("the encoded spec does not decode", enc);
    }
    enc2 = jobspec_encode_spec(&again);
    if (enc2 != NULL && !json_equal(enc, enc2)) {
        fprintf(stderr, "fuzz_jobspec: first encoding: ");
        json_dumpf(enc, stderr, JSON_COMPACT);
        fprintf(stderr, "\n");
        fail("decoding the encoded spec changes it", enc2);
    }
    json_decref(enc2);
    job_spec_dispose(&again);
    json_decref(enc);
}

/* One decode of the parsed input; returns its result. */
static int run(const jsonr_t *r, const json_t *v)
{
    job_spec_t spec;
    char err[256];
    int rc;

    rc = jobspec_decode_r(r, 0, &spec, err, sizeof(err));
    if (rc == 0) {
        check_round_trip(&spec);
        job_spec_dispose(&spec);
    } else if (rc != ERR_INVALID_REQUEST && rc != ERR_NO_MEMORY) {
        fail("a refusal with an unexpected error code", v);
    }
    return rc;
}

static int run_counted(const jsonr_t *r, const json_t *v)
{
    uint64_t before[2], after[2];
    int rc;

    mem_get(MEM_FETCHD, &before[0], NULL);
    mem_get(MEM_JANSSON, &before[1], NULL);
    rc = run(r, v);
    mem_get(MEM_FETCHD, &after[0], NULL);
    mem_get(MEM_JANSSON, &after[1], NULL);
    if (after[0] != before[0] || after[1] != before[1])
        fail("heap blocks leaked", v);
    return rc;
}

/* The text and the tree of the same input decode alike. */
static void check_same_as_tree(const jsonr_t *r, const json_t *v)
{
    job_spec_t a, b;
    char ea[256], eb[256];
    int ra = jobspec_decode_r(r, 0, &a, ea, sizeof(ea));
    int rb = jobspec_decode(v, &b, eb, sizeof(eb));

    if (ra != rb || strcmp(ea, eb) != 0) {
        fprintf(stderr, "fuzz_jobspec: text: %d %s; tree: %d %s\n", ra, ea, rb, eb);
        fail("the text and its tree decode differently", v);
    }
    if (ra == 0) {
        /* (Both NULL: a spec the state file cannot hold, a client_cert
         * without client_key; the round trip below lets that pass too.) */
        json_t *ja = jobspec_encode_spec(&a), *jb = jobspec_encode_spec(&b);
        if ((ja == NULL) != (jb == NULL) || (ja != NULL && !json_equal(ja, jb)))
            fail("the text and its tree give different specs", v);
        json_decref(ja);
        json_decref(jb);
        job_spec_dispose(&a);
        job_spec_dispose(&b);
    }
}

/* The submit path's decode, the url lent a room of roomlen bytes (as
 * m_submit does): the same verdict, message and spec as an owned decode,
 * the url in the room exactly when it is marked borrowed (when it fits),
 * and dispose leaves the room alone (ASan: a free of the stack room). */
static void check_lent_room(const jsonr_t *r, const json_t *v, size_t roomlen)
{
    char room[64];
    job_spec_t a, b;
    char ea[256], eb[256];
    int ra = jobspec_decode_r(r, 0, &a, ea, sizeof(ea));
    int rb = jobspec_decode_lent(r, 0, &b, room, roomlen, eb, sizeof(eb));

    if (ra != rb || strcmp(ea, eb) != 0) {
        fprintf(stderr, "fuzz_jobspec: owned: %d %s; lent: %d %s\n", ra, ea, rb, eb);
        fail("an owned and a lent decode differ", v);
    }
    if (ra != 0)
        return;
    if (strcmp(a.url, b.url) != 0 || (b.url == room) != (b.url_borrowed != 0) ||
        (strlen(a.url) < roomlen) != (b.url_borrowed != 0))
        fail("the lent url is wrong, or in the room when it should not be", v);
    json_t *ja = jobspec_encode_spec(&a), *jb = jobspec_encode_spec(&b);
    if ((ja == NULL) != (jb == NULL) || (ja != NULL && !json_equal(ja, jb)))
        fail("an owned and a lent decode give different specs", v);
    json_decref(ja);
    json_decref(jb);
    job_spec_dispose(&a);
    job_spec_dispose(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int installed;
    json_error_t jerr;
    json_t *v;
    jsonr_t r;
    int rc0, rc;

    if (!installed)
        installed = mem_install() == 0;
    v = json_loadb((const char *)data, size, JSON_DECODE_ANY, &jerr);
    if (v == NULL)
        return 0;
    /* The reader's arrays come from libc: the allocations failed below are
     * the decoder's. */
    jsonr_init(&r, realloc, free);
    if (jsonr_parse(&r, (const char *)data, size) != 0)
        fail("jsonr refuses what jansson accepts", v);
    check_same_as_tree(&r, v);
    check_lent_room(&r, v, 16); /* most urls do not fit: heap copies */
    check_lent_room(&r, v, 64);
    rc0 = run_counted(&r, v);
    /* Fail each fetchd allocation in turn until a pass makes none fail. */
    for (long n = 1; n < 256; n++) {
        mem_fail_after(n);
        rc = run_counted(&r, v);
        if (mem_fail_pending())
            break;
        if (rc0 == 0 && rc == ERR_INVALID_REQUEST)
            fail("an allocation failure reported as an invalid request", v);
    }
    mem_fail_after(0);
    jsonr_free(&r);
    json_decref(v);
    return 0;
}
