/* jobjson — the job object (proto/PROTOCOL.md §7) written straight into a
 * buffer with jsonw, for the control socket's hot paths: the answer to a
 * `wait` and the job in an event. It writes the same fields, under the
 * same conditions, as jobspec_encode_job() builds with jansson; unit_jobjson
 * encodes random jobs both ways and compares them parsed. A field added to
 * one must be added to the other.
 */
#ifndef FETCHD_JOBJSON_H
#define FETCHD_JOBJSON_H

#include "job.h"
#include "jsonw.h"

/* Writes j's job object as the next value of w. */
void jobjson_write(jsonw_t *w, const job_t *j);

#endif
