/* libFuzzer target: url_parse() and url_resolve().
 *
 * The input is "URL\nREFERENCE". A URL that parses must parse again from
 * its own href to the same href, a reference must resolve or be refused
 * cleanly, and nothing may leak (fetchd's heap is back to where it was).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mem.h"
#include "url.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int installed;
    uint64_t before, after;
    char *s, *ref;
    const char *msg;
    url_t u, v, r;

    if (!installed)
        installed = mem_install() == 0;
    mem_get(MEM_FETCHD, &before, NULL);
    s = malloc(size + 1);
    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    ref = strchr(s, '\n');
    if (ref)
        *ref++ = '\0';
    if (url_parse(&u, s, &msg) == 0) {
        if (url_parse(&v, u.href, &msg) != 0 || strcmp(v.href, u.href) != 0)
            abort(); /* a normalised URL must survive its own round trip */
        url_dispose(&v);
        if (ref && url_resolve(&r, &u, ref, &msg) == 0) {
            if (url_parse(&v, r.href, &msg) != 0)
                abort(); /* a resolved URL is a valid absolute URL */
            url_dispose(&v);
            url_dispose(&r);
        }
        url_dispose(&u);
    }
    free(s);
    mem_get(MEM_FETCHD, &after, NULL);
    if (after != before)
        abort(); /* a leak */
    return 0;
}
