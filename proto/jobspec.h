/* jobspec — the JSON form of jobs, shared by the daemon and fetchctl.
 *
 * Decoding validates a job spec object in full and names the offending field
 * in its message; encoding produces the job object that status/wait return.
 * proto/PROTOCOL.md documents both.
 */
#ifndef FETCHD_JOBSPEC_H
#define FETCHD_JOBSPEC_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "job.h"
#include "jsonr.h"

/* Initialises spec and fills it from the job spec object v of the parsed
 * text r (both borrowed; nothing of r is kept). Returns 0, or
 * ERR_INVALID_REQUEST with a message naming the field in errbuf (spec is
 * then disposed and zeroed), or ERR_NO_MEMORY. Unknown fields are refused;
 * a repeated key counts once, with its last value. */
int jobspec_decode_r(const jsonr_t *r, uint32_t v, job_spec_t *spec, char *errbuf, size_t errlen);

/* jobspec_decode_r(), with the url copied into room (roomlen bytes,
 * borrowed) when it fits: spec->url then points into room and
 * spec->url_borrowed is set, and the spec must go to job_create() (which
 * shares or copies the text) before room is reused or freed. A url that does
 * not fit is a heap copy as in jobspec_decode_r(). The submit path lends one
 * room to every job of a batch, so an already normalised URL costs no
 * allocation. */
int jobspec_decode_lent(const jsonr_t *r, uint32_t v, job_spec_t *spec, char *room, size_t roomlen,
                        char *errbuf, size_t errlen);

/* jobspec_decode_set() on the value params of the parsed text r. */
int jobspec_decode_set_r(const jsonr_t *r, uint32_t params, job_spec_t *to, unsigned *which,
                         char *errbuf, size_t errlen);

/* jobspec_decode_r() on a jansson tree (borrowed), which it reads into
 * tokens first (jsonr_from_json: one allocation): for cold paths. Initialises spec and fills it
 * from the JSON object obj. Returns 0, or ERR_INVALID_REQUEST with a message naming the field in
 * errbuf (spec is then disposed and zeroed), or ERR_NO_MEMORY. Unknown fields are refused. */
int jobspec_decode(const json_t *obj, job_spec_t *spec, char *errbuf, size_t errlen);

/* Decodes the changes of a `set` call from its params (borrowed): the keys
 * priority, rate, delay and limit_rate, each validated as in a job spec, go
 * into *to (initialised here; it holds no heap memory afterwards) and
 * their bits into *which (bit k for the k-th of these four: sched_set()'s
 * SCHED_SET_* bits). The keys id and ids are skipped; any other
 * is refused by name, and so is a call that changes nothing. Returns 0 or
 * ERR_INVALID_REQUEST with a message that starts with the field. */
int jobspec_decode_set(const json_t *params, job_spec_t *to, unsigned *which, char *errbuf,
                       size_t errlen);

/* Returns a new reference to the JSON object describing job j, or NULL on
 * allocation failure. */
json_t *jobspec_encode_job(const job_t *j);

/* Returns a new reference to the JSON form of spec, which jobspec_decode()
 * turns back into the same spec (state persistence); NULL on allocation
 * failure. The body is always written as body_base64. */
json_t *jobspec_encode_spec(const job_spec_t *spec);

/* Returns a new reference to the array [[name, value], ...] of the pairs
 * (the kept response fields), in order ([] when p is NULL); NULL on
 * allocation failure. */
json_t *jobspec_encode_headers(const job_pairs_t *p);

/* Returns a new reference to the array [{"url": URL, "status": N}, ...] of a
 * redirect chain (pairs of status and URL), in order ([] when p is NULL);
 * NULL on allocation failure. */
json_t *jobspec_encode_redirect_chain(const job_pairs_t *p);

/* Returns a new reference to {"code": err_name(err), "message": msg}. */
json_t *jobspec_encode_error(int err, const char *msg);

#endif
