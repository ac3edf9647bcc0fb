/* state — the persisted queue: unfinished jobs survive a restart.
 *
 * The file is DIR/queue.json: {"version":1,"jobs":[{"id":..,"spec":{..}}]}
 * in submission order. It is written whole, atomically: a temporary file,
 * fsync, rename, fsync of the directory. Semantics are at least once: a job
 * that was running when the state was saved runs again after a restart, and
 * after a crash (kill -9) what the last checkpoint held comes back.
 */
#ifndef FETCHD_STATE_H
#define FETCHD_STATE_H

#include <stddef.h>

#include "sched.h"

/* Writes every job of s that has not finished (queued and running, the
 * latter when with_running is set) to dir/queue.json. Returns the number of
 * jobs written, or a negative error with errmsg filled in. */
long state_save(sched_t *s, const char *dir, int with_running, char *errmsg, size_t errlen);

/* Checks at start that dir is a directory fetchd can save its queue in: it
 * creates and removes the temporary file a save uses. Returns 0, or ERR_IO
 * with errmsg saying what is wrong (path and system error). */
int state_check_dir(const char *dir, char *errmsg, size_t errlen);

/* Requeues the jobs of dir/queue.json under their ids. A missing file is
 * no error (0 jobs); a bad file is moved aside under a name of its own,
 * queue.json.bad-<UTC time>-<pid>[-<n>], never over an earlier one, and
 * errmsg says where it went. Returns the number of jobs restored, or a
 * negative error. */
long state_load(sched_t *s, const char *dir, char *errmsg, size_t errlen);

#endif
