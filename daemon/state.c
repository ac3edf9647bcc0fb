/* state — the persisted queue; see state.h. */
#include "state.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "err.h"
#include "jobspec.h"
#include "log.h"
#include "mem.h"

#define STATE_FILE    "queue.json"
#define STATE_VERSION 1

static json_t *collect(sched_t *s, int with_running)
{
    json_t *jobs = json_array();
    job_t *j = NULL;

    while (jobs && (j = sched_next(s, j)) != NULL) {
        json_t *spec, *entry;
        if (j->state != JOB_QUEUED && !(with_running && j->state == JOB_RUNNING))
            continue;
        spec = jobspec_encode_spec(&j->spec);
        entry = spec ? json_pack("{s:s, s:o}", "id", j->id, "spec", spec) : NULL;
        if (entry == NULL || json_array_append_new(jobs, entry) != 0) {
            json_decref(jobs);
            return NULL;
        }
    }
    return jobs;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

long state_save(sched_t *s, const char *dir, int with_running, char *err, size_t errlen)
{
    char path[PATH_MAX], tmp[PATH_MAX + 16];
    json_t *jobs = collect(s, with_running), *doc;
    char *text = NULL;
    long n = (long)json_array_size(jobs);
    int fd = -1, dfd;

    snprintf(path, sizeof(path), "%s/" STATE_FILE, dir);
    snprintf(tmp, sizeof(tmp), "%s/." STATE_FILE ".tmp", dir);
    doc = jobs ? json_pack("{s:i, s:o}", "version", STATE_VERSION, "jobs", jobs) : NULL;
    if (doc)
        text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    if (text == NULL) {
        snprintf(err, errlen, "out of memory while saving the queue");
        return ERR_NO_MEMORY;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || write_all(fd, text, strlen(text)) != 0 || write_all(fd, "\n", 1) != 0 ||
        fsync(fd) != 0) {
        snprintf(err, errlen, "writing %s: %s", tmp, strerror(errno));
        if (fd >= 0) {
            close(fd);
            unlink(tmp);
        }
        mem_free(text);
        return ERR_IO;
    }
    close(fd);
    mem_free(text);
    if (rename(tmp, path) != 0) {
        snprintf(err, errlen, "renaming %s: %s", tmp, strerror(errno));
        unlink(tmp);
        return ERR_IO;
    }
    /* The rename itself is durable only once the directory is synced. */
    dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return n;
}

static long restore(sched_t *s, json_t *jobs, const char *path)
{
    size_t i;
    json_t *entry;
    long restored = 0;

    json_array_foreach(jobs, i, entry)
    {
        const char *id = json_string_value(json_object_get(entry, "id"));
        job_spec_t spec;
        char why[256];
        if (id == NULL ||
            jobspec_decode(json_object_get(entry, "spec"), &spec, why, sizeof(why)) != 0) {
            log_error("state: %s: job %zu cannot be restored: %s", path, i,
                      id == NULL ? "no id" : why);
            continue;
        }
        if (sched_restore(s, &spec, id, why, sizeof(why)) != 0) {
            log_error("state: %s: job %s cannot be restored: %s", path, id, why);
            continue;
        }
        restored++;
    }
    return restored;
}

long state_load(sched_t *s, const char *dir, char *err, size_t errlen)
{
    char path[PATH_MAX], bad[PATH_MAX + 8];
    json_error_t jerr;
    json_t *doc, *jobs;
    long n;

    snprintf(path, sizeof(path), "%s/" STATE_FILE, dir);
    if (access(path, F_OK) != 0)
        return 0;
    doc = json_load_file(path, 0, &jerr);
    jobs = json_object_get(doc, "jobs");
    if (doc == NULL || !json_is_array(jobs) ||
        json_integer_value(json_object_get(doc, "version")) != STATE_VERSION) {
        /* Keep it for a human to look at; start with an empty queue. */
        snprintf(bad, sizeof(bad), "%s.bad", path);
        rename(path, bad);
        snprintf(err, errlen, "%s:%d: %s (kept as %s)", path, jerr.line,
                 doc ? "not a fetchd queue file" : jerr.text, bad);
        json_decref(doc);
        return ERR_IO;
    }
    n = restore(s, jobs, path);
    json_decref(doc);
    return n;
}
