/* libFuzzer target: jobspec_decode(), as the control socket calls it on
 * every submitted job. A spec that decodes must encode (for the state
 * file) and decode again; refusals must leave nothing behind. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>

#include "jobspec.h"
#include "mem.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int installed;
    uint64_t before, after;
    json_error_t jerr;
    job_spec_t spec, again;
    char err[256];
    json_t *v, *enc;

    if (!installed)
        installed = mem_install() == 0;
    mem_get(MEM_FETCHD, &before, NULL);
    v = json_loadb((const char *)data, size, JSON_DECODE_ANY, &jerr);
    if (v == NULL)
        return 0;
    if (jobspec_decode(v, &spec, err, sizeof(err)) == 0) {
        enc = jobspec_encode_spec(&spec);
        if (enc == NULL || jobspec_decode(enc, &again, err, sizeof(err)) != 0)
            abort(); /* what fetchd persists it must be able to read back */
        job_spec_dispose(&again);
        json_decref(enc);
        job_spec_dispose(&spec);
    }
    json_decref(v);
    mem_get(MEM_FETCHD, &after, NULL);
    if (after != before)
        abort(); /* a leak */
    return 0;
}
