/* state — the persisted queue; see state.h. */
#include "state.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "err.h"
#include "jobspec.h"
#include "log.h"
#include "mem.h"

#define STATE_FILE    "queue.json"
#define STATE_TMP     "." STATE_FILE ".tmp"
#define STATE_VERSION 1
/* Names tried for a corrupt file before giving up on keeping it. */
#define BAD_TRIES 100

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

/* The system error e as a save reports it: a full disk says so in words. */
static const char *cause(int e)
{
    switch (e) {
    case ENOSPC:
        return "disk full";
    case EDQUOT:
        return "disk quota exceeded";
    default:
        return strerror(e);
    }
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w == 0)
            errno = EIO; /* no progress: retrying would spin */
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
    snprintf(tmp, sizeof(tmp), "%s/" STATE_TMP, dir);
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
        snprintf(err, errlen, "writing %s: %s", tmp, cause(errno));
        if (fd >= 0) {
            close(fd);
            unlink(tmp);
        }
        mem_free(text);
        return ERR_IO;
    }
    mem_free(text);
    /* Some file systems (NFS) report a failed write only here. */
    if (close(fd) != 0) {
        snprintf(err, errlen, "writing %s: %s", tmp, cause(errno));
        unlink(tmp);
        return ERR_IO;
    }
    if (rename(tmp, path) != 0) {
        snprintf(err, errlen, "renaming %s: %s", tmp, cause(errno));
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

/* Queues the saved jobs; returns how many, and sets *skipped to the number
 * that could not be restored (each is logged). */
static long restore(sched_t *s, json_t *jobs, const char *path, size_t *skipped)
{
    size_t i;
    json_t *entry;
    long restored = 0;

    *skipped = 0;
    json_array_foreach (jobs, i, entry) {
        const char *id = json_string_value(json_object_get(entry, "id"));
        job_spec_t spec;
        char why[256];
        if (id == NULL ||
            jobspec_decode(json_object_get(entry, "spec"), &spec, why, sizeof(why)) != 0) {
            log_error("state: %s: job %zu cannot be restored: %s", path, i,
                      id == NULL ? "no id" : why);
            (*skipped)++;
            continue;
        }
        if (sched_restore(s, &spec, id, why, sizeof(why)) != 0) {
            log_error("state: %s: job %s cannot be restored: %s", path, id, why);
            (*skipped)++;
            continue;
        }
        restored++;
    }
    return restored;
}

int state_check_dir(const char *dir, char *err, size_t errlen)
{
    char tmp[PATH_MAX];
    struct stat st;
    int fd;

    if (stat(dir, &st) != 0) {
        snprintf(err, errlen, "state directory %s: %s", dir, strerror(errno));
        return ERR_IO;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "state directory %s: %s", dir, strerror(ENOTDIR));
        return ERR_IO;
    }
    /* access() would not do: root passes it on a read-only file system, and
     * it checks the real, not the effective, user. Try what a save does. */
    if (snprintf(tmp, sizeof(tmp), "%s/" STATE_TMP, dir) >= (int)sizeof(tmp)) {
        snprintf(err, errlen, "state directory %s: %s", dir, strerror(ENAMETOOLONG));
        return ERR_IO;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "state directory %s: cannot write there: %s (fetchd runs as uid %u)",
                 dir, strerror(e), (unsigned)geteuid());
        return ERR_IO;
    }
    close(fd);
    unlink(tmp);
    return 0;
}

/* Moves a corrupt state file aside under a name no earlier one has, so a
 * second corrupt file never overwrites the first; with keep_original, the
 * file stays where it is too (a second link: the next save replaces
 * queue.json by a rename, which leaves the kept copy as it was). Returns 0
 * with the name in bad, or -1 with errno set. */
static int keep_bad(const char *path, int keep_original, char *bad, size_t len)
{
    char stamp[32];
    struct tm tm;
    time_t now = time(NULL);

    gmtime_r(&now, &tm);
    strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);
    for (int i = 0; i < BAD_TRIES; i++) {
        int n = i == 0 ? snprintf(bad, len, "%s.bad-%s-%d", path, stamp, (int)getpid())
                       : snprintf(bad, len, "%s.bad-%s-%d-%d", path, stamp, (int)getpid(), i);
        if (n < 0 || (size_t)n >= len) {
            errno = ENAMETOOLONG;
            return -1;
        }
        if (keep_original) {
            if (link(path, bad) == 0)
                return 0;
            if (errno != EEXIST)
                return -1;
            continue;
        }
        if (renameat2(AT_FDCWD, path, AT_FDCWD, bad, RENAME_NOREPLACE) == 0)
            return 0;
        /* A file system without RENAME_NOREPLACE: link() never replaces either. */
        if (errno == EINVAL || errno == ENOSYS) {
            if (link(path, bad) == 0)
                return unlink(path) == 0 || errno == ENOENT ? 0 : -1;
        }
        if (errno != EEXIST)
            return -1;
    }
    errno = EEXIST;
    return -1;
}

long state_load(sched_t *s, const char *dir, char *err, size_t errlen)
{
    char path[PATH_MAX], bad[PATH_MAX + 64];
    json_error_t jerr;
    json_t *doc, *jobs;
    size_t skipped;
    long n;

    snprintf(path, sizeof(path), "%s/" STATE_FILE, dir);
    if (access(path, F_OK) != 0)
        return 0;
    doc = json_load_file(path, 0, &jerr);
    jobs = json_object_get(doc, "jobs");
    if (doc == NULL || !json_is_array(jobs) ||
        json_integer_value(json_object_get(doc, "version")) != STATE_VERSION) {
        /* Keep it for a human to look at; start with an empty queue. */
        const char *why = doc ? "not a fetchd queue file" : jerr.text;
        if (keep_bad(path, 0, bad, sizeof(bad)) == 0)
            snprintf(err, errlen, "%s:%d: %s (kept as %s)", path, jerr.line, why, bad);
        else
            snprintf(err, errlen,
                     "%s:%d: %s (could not keep it aside: %s; the next save replaces it)", path,
                     jerr.line, why, strerror(errno));
        json_decref(doc);
        return ERR_IO;
    }
    n = restore(s, jobs, path, &skipped);
    json_decref(doc);
    /* A job that could not be restored (a bad entry, or no memory for it)
     * would be gone after the next save: keep the file as it was. */
    if (skipped > 0) {
        if (keep_bad(path, 1, bad, sizeof(bad)) == 0)
            log_error("state: %s: %zu job(s) not restored; the file is kept as %s", path, skipped,
                      bad);
        else
            log_error("state: %s: %zu job(s) not restored, and the file could not be kept: %s",
                      path, skipped, strerror(errno));
    }
    return n;
}
