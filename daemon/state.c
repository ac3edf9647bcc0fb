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
#include "jsonr.h"
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

/* Queues the saved jobs, the array jobs of the parsed file r; returns how
 * many, and sets *skipped to the number that could not be restored (each
 * is logged). */
static long restore(sched_t *s, const jsonr_t *r, uint32_t jobs, const char *path, size_t *skipped)
{
    size_t i = 0;
    long restored = 0;

    *skipped = 0;
    for (uint32_t entry = jsonr_first(r, jobs); entry != JSONR_NONE;
         entry = jsonr_next(r, entry), i++) {
        size_t idlen = 0;
        const char *idp = jsonr_str(r, jsonr_get(r, entry, "id"), &idlen);
        char id[64], why[256];
        job_spec_t spec;
        /* A longer id is refused by sched_restore() all the same. */
        if (idp != NULL)
            snprintf(id, sizeof(id), "%.*s", (int)(idlen < sizeof(id) ? idlen : sizeof(id) - 1),
                     idp);
        if (idp == NULL ||
            jobspec_decode_r(r, jsonr_get(r, entry, "spec"), &spec, why, sizeof(why)) != 0) {
            log_error("state: %s: job %zu cannot be restored: %s", path, i,
                      idp == NULL ? "no id" : why);
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

/* Reads the whole file at path into *text (mem_alloc'd, owned by the
 * caller) and its length into *len. 0, or -1 with errno set. */
static int read_file(const char *path, char **text, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    size_t cap = 0, n = 0;
    char *buf = NULL, *grown;
    ssize_t got;

    if (fd < 0)
        return -1;
    for (;;) {
        if (n == cap) {
            cap = cap ? 2 * cap : 64 * 1024;
            grown = cap > n ? mem_realloc(buf, cap) : NULL;
            if (grown == NULL) {
                mem_free(buf);
                close(fd);
                errno = ENOMEM;
                return -1;
            }
            buf = grown;
        }
        got = read(fd, buf + n, cap - n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            int e = errno;
            mem_free(buf);
            close(fd);
            errno = e;
            return -1;
        }
        if (got == 0)
            break;
        n += (size_t)got;
    }
    close(fd);
    *text = buf;
    *len = n;
    return 0;
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
    char path[PATH_MAX], bad[PATH_MAX + 64], why[PATH_MAX + 256];
    char *text = NULL;
    size_t len = 0, skipped;
    uint32_t jobs = JSONR_NONE;
    long long version = 0;
    jsonr_t r;
    int rc, line = -1;
    long n;

    snprintf(path, sizeof(path), "%s/" STATE_FILE, dir);
    if (access(path, F_OK) != 0)
        return 0;
    jsonr_init(&r, mem_realloc, mem_free);
    if (read_file(path, &text, &len) != 0) {
        if (errno == ENOMEM) {
            snprintf(err, errlen, "%s: %s", path, err_str(ERR_NO_MEMORY));
            return ERR_NO_MEMORY;
        }
        snprintf(why, sizeof(why), "unable to open %s: %s", path, strerror(errno));
        rc = -1;
    } else {
        rc = jsonr_parse(&r, text, len);
        if (rc == -2) {
            jsonr_free(&r);
            mem_free(text);
            snprintf(err, errlen, "%s: %s", path, err_str(ERR_NO_MEMORY));
            return ERR_NO_MEMORY;
        }
        if (rc == 0) {
            jobs = jsonr_get(&r, 0, "jobs");
            jsonr_int(&r, jsonr_get(&r, 0, "version"), &version);
            snprintf(why, sizeof(why), "not a fetchd queue file");
        } else {
            snprintf(why, sizeof(why), "%s", r.error);
            line = r.line;
        }
    }
    if (rc != 0 || jsonr_type(&r, jobs) != JSONR_ARRAY || jobs == JSONR_NONE ||
        version != STATE_VERSION) {
        /* Keep it for a human to look at; start with an empty queue. */
        if (keep_bad(path, 0, bad, sizeof(bad)) == 0)
            snprintf(err, errlen, "%s:%d: %s (kept as %s)", path, line, why, bad);
        else
            snprintf(err, errlen,
                     "%s:%d: %s (could not keep it aside: %s; the next save replaces it)", path,
                     line, why, strerror(errno));
        jsonr_free(&r);
        mem_free(text);
        return ERR_IO;
    }
    n = restore(s, &r, jobs, path, &skipped);
    jsonr_free(&r);
    mem_free(text);
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
