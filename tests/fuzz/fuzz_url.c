/* libFuzzer target: url_parse() and url_resolve().
 *
 * The input is "URL\nREFERENCE" (the reference is optional). Besides "no
 * crash, no undefined behaviour", the target checks what url.h promises:
 *  - a parsed URL is normalised: lowercase scheme and host, a target that
 *    starts with '/', and its href parses again to the same href;
 *  - a copy is an independent equal URL of the same origin;
 *  - a reference resolves to a URL with the same properties, or is refused;
 *  - refusals leave the url_t zeroed, and nothing leaks: fetchd's heap is
 *    back to where it was after every call, also when an allocation inside
 *    it fails (each allocation point is failed once in turn).
 */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "mem.h"
#include "url.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *why, const char *s)
{
    fprintf(stderr, "fuzz_url: %s: \"%s\"\n", why, s);
    abort();
}

static int is_zeroed(const url_t *u)
{
    static const url_t zero;
    return memcmp(u, &zero, sizeof(zero)) == 0;
}

static void check_normalised(const url_t *u)
{
    url_t again;
    const char *msg;
    int rc;

    if (u->target[0] != '/')
        fail("target without a leading slash", u->href);
    for (const char *p = u->host; *p; p++)
        if (isupper((unsigned char)*p))
            fail("host not lowercased", u->href);
    rc = url_parse(&again, u->href, &msg);
    if (rc == ERR_NO_MEMORY)
        return; /* an injected failure */
    if (rc != 0)
        fail("a normalised href does not parse", u->href);
    if (strcmp(again.href, u->href) != 0 || again.port != u->port ||
        strcmp(again.authority, u->authority) != 0 || !url_same_origin(&again, u))
        fail("parsing the href changes the URL", u->href);
    url_dispose(&again);
}

static void check_copy(const url_t *u)
{
    url_t c;

    if (url_copy(&c, u) != 0)
        return; /* only ERR_NO_MEMORY is possible */
    if (strcmp(c.href, u->href) != 0 || c.href == u->href || !url_same_origin(&c, u))
        fail("url_copy is not an equal, independent copy", u->href);
    url_dispose(&c);
}

/* One pass over the input. ERR_NO_MEMORY is accepted anywhere: the
 * allocation-failure passes inject it. */
static void run(const char *s, const char *ref)
{
    url_t u, r;
    const char *msg = NULL;
    int rc;

    rc = url_parse(&u, s, &msg);
    if (rc != 0) {
        if ((rc != ERR_INVALID_REQUEST && rc != ERR_NO_MEMORY) || !is_zeroed(&u))
            fail("a refusal with a bad code or a non-zeroed url", s);
        return;
    }
    check_normalised(&u);
    check_copy(&u);
    if (ref) {
        rc = url_resolve(&r, &u, ref, &msg);
        if (rc == 0) {
            check_normalised(&r);
            url_dispose(&r);
        } else if ((rc != ERR_INVALID_REQUEST && rc != ERR_NO_MEMORY) || !is_zeroed(&r)) {
            fail("a refused reference with a bad code or a non-zeroed url", ref);
        }
    }
    url_dispose(&u);
    if (!is_zeroed(&u))
        fail("url_dispose does not zero", s);
}

static void run_counted(const char *s, const char *ref)
{
    uint64_t before, after;

    mem_get(MEM_FETCHD, &before, NULL);
    run(s, ref);
    mem_get(MEM_FETCHD, &after, NULL);
    if (after != before)
        fail("fetchd heap blocks leaked", s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int installed;
    char *s, *ref;

    if (!installed)
        installed = mem_install() == 0;
    s = malloc(size + 1);
    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    ref = strchr(s, '\n');
    if (ref)
        *ref++ = '\0';
    run_counted(s, ref);
    /* Fail each allocation in turn until a pass makes no allocation fail. */
    for (long n = 1; n < 64; n++) {
        mem_fail_after(n);
        run_counted(s, ref);
        if (mem_fail_pending())
            break;
    }
    mem_fail_after(0);
    free(s);
    return 0;
}
