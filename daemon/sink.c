/* sink — where a response body goes; see sink.h.
 *
 * A file sink's writes run on libuv's thread pool at explicit offsets, each
 * holding a reference to the buf_t its bytes live in, so the reader can hand
 * the buffer back to its pool at once. Commit and abort wait for those writes,
 * then run one work item on the thread pool:
 *   commit: fsync -> close -> renameat (tmp -> final, both in dirfd)
 *   abort, or commit after a failed step: close -> unlinkat (tmp)
 * and close the directory descriptor; the completion on the loop thread logs
 * what failed and calls the owner back.
 */
#include "sink.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <dirent.h>
#include <limits.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "err.h"
#include "log.h"
#include "mem.h"

enum { FINISH_NONE, FINISH_COMMIT, FINISH_ABORT };

/* The file operations whose failure a sink reports (cause_op). */
enum { OP_NONE, OP_OPEN_DIR, OP_CREATE, OP_WRITE, OP_FSYNC, OP_CLOSE, OP_RENAME, OP_UNLINK };

/* The temporary name: ".fetchd-part-" + at most TAG_MAX bytes of the tag +
 * "-" + 8 hex digits, at most 55 bytes whatever the final name's length. */
#define TMP_PREFIX ".fetchd-part-"
#define TAG_MAX    32
#define TMP_TRIES  8

/* A resumable job's files beside the target: ".<name>" + one of these. */
#define PART_SUFFIX ".fetchd-part"
#define META_SUFFIX ".fetchd-meta"
/* Names longer than this are shortened (and tagged with a hash) first. */
#define PART_NAME_KEEP 200
/* The most of a meta file read: a validator and a URL. */
#define META_MAX 8192
/* The sweep's depth below the download directory. */
#define SWEEP_DEPTH 8

/* The first allocation of a memory sink; it doubles from there. */
#define SINK_MEM_MIN 1024
/* One write never asks for more than this (uv_buf_t lengths are unsigned
 * int); the rest goes out as if it had been a short write. */
#define SINK_MAX_IO (1u << 30)

/* One asynchronous write. Owned by its sink: in flight, or on the sink's free
 * list. The free list is not capped: it never holds more requests than were
 * once in flight together, which the owner bounds by pausing its reads. */
struct sink_write_req {
    uv_fs_t req;            /* req.data is the sink (borrowed) */
    buf_t *buf;             /* owned reference while the write is in flight */
    const char *at;         /* borrowed: the bytes still to write, inside buf */
    size_t len;             /* bytes still to write */
    int64_t offset;         /* file offset of at */
    sink_write_req_t *next; /* free-list link */
};

static void on_write(uv_fs_t *req);

void sink_init(sink_t *s, uv_loop_t *loop, stats_t *stats, int want_sha256)
{
    memset(s, 0, sizeof(*s));
    s->kind = SINK_DISCARD;
    s->want_sha256 = want_sha256 != 0;
    s->loop = loop;
    s->stats = stats;
    s->fd = -1;
    s->dirfd = -1;
    /* Always initialised, so that sink_dispose() can always free it. */
    mbedtls_sha256_init(&s->sha);
    if (s->want_sha256)
        (void)mbedtls_sha256_starts_ret(&s->sha, 0);
}

void sink_set_memory(sink_t *s, size_t limit)
{
    assert(s->kind == SINK_DISCARD && s->bytes == 0);
    s->kind = SINK_MEMORY;
    s->mem_limit = limit;
}

void sink_set_memory_cut(sink_t *s, size_t limit)
{
    sink_set_memory(s, limit);
    s->mem_cut = 1;
}

char *sink_take_mem(sink_t *s, size_t *len)
{
    char *p = s->mem;

    *len = s->mem_len;
    s->mem = NULL;
    s->mem_len = 0;
    s->mem_cap = 0;
    return p;
}

static const char *op_name(int op)
{
    static const char *const names[] = {
        "", "opening the directory", "create", "write", "fsync", "close", "rename", "unlink"};
    return (unsigned)op < sizeof(names) / sizeof(names[0]) ? names[op] : "file operation";
}

/* Records the first failure's cause (a libuv code: -errno on Unix). */
static void note(sink_t *s, int op, int uverr)
{
    if (s->cause == 0) {
        s->cause = uverr;
        s->cause_op = op;
    }
}

static int code_for(int uverr)
{
    switch (uverr) {
    case UV_ENOMEM:
        return ERR_NO_MEMORY;
    case UV_EMFILE:
    case UV_ENFILE:
        return ERR_NO_FDS;
    default:
        return ERR_IO;
    }
}

const char *sink_strerror(const sink_t *s, int err)
{
    if (s->dec != NULL && err == ERR_CONTENT_DECODING)
        return decode_strerror(s->dec);
    if (s->cause == 0)
        return err_str(err);
    switch (s->cause) {
    case -ENOSPC:
        return "disk full";
    case -EDQUOT:
        return "disk quota exceeded";
    case UV_EMFILE:
    case UV_ENFILE:
        return "out of file descriptors";
    case UV_ENOMEM:
        return err_str(ERR_NO_MEMORY);
    }
    if (s->cause_op == OP_OPEN_DIR) {
        switch (s->cause) {
        case UV_ELOOP:
            return "a directory on the output path is now a symlink; "
                   "fetchd writes only beneath the download directory";
        case UV_EXDEV:
            return "the output path leads out of the download directory";
        case UV_ENOTDIR:
            return "a directory on the output path is no longer a directory";
        case UV_ENOENT:
            return "the output directory no longer exists";
        }
    }
    return uv_strerror(s->cause);
}

/* Opens rel (a directory path relative to rootfd, "" for rootfd itself) one
 * component at a time, never following a symlink and never leaving rootfd.
 * Returns a descriptor or -errno; on failure *bad points at the component
 * that failed, inside the caller's copy. */
static int walk_beneath(int rootfd, char *rel, const char **bad)
{
    int cur = openat(rootfd, ".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    char *save = NULL;

    *bad = ".";
    if (cur < 0)
        return -errno;
    for (char *c = strtok_r(rel, "/", &save); c != NULL; c = strtok_r(NULL, "/", &save)) {
        struct stat st;
        int next, err;
        if (strcmp(c, ".") == 0)
            continue;
        *bad = c;
        if (strcmp(c, "..") == 0) {
            close(cur);
            return -EXDEV;
        }
        next = openat(cur, c, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (next < 0) {
            err = errno;
            /* O_NOFOLLOW|O_DIRECTORY says ENOTDIR for a symlink: tell them apart. */
            if (err == ENOTDIR && fstatat(cur, c, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                S_ISLNK(st.st_mode))
                err = ELOOP;
            close(cur);
            return -err;
        }
        close(cur);
        cur = next;
    }
    return cur;
}

/* Opens the directory rel beneath root without following symlinks: openat2
 * when the kernel has it; on any failure (ENOSYS included) the component walk
 * runs, which works everywhere and names the component that is wrong. */
static int open_dir_beneath(const char *what, const char *root, const char *rel)
{
    char copy[PATH_MAX];
    const char *bad;
    int rootfd, fd;

    if (strlen(rel) >= sizeof(copy))
        return UV_ENAMETOOLONG;
    rootfd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0)
        return -errno;
#if defined(SYS_openat2) && !defined(FETCHD_SINK_NO_OPENAT2) /* the latter: unit_sink_walk */
    struct open_how how = {.flags = O_PATH | O_DIRECTORY | O_CLOEXEC,
                           .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS};
    fd = (int)syscall(SYS_openat2, rootfd, rel[0] ? rel : ".", &how, sizeof(how));
    if (fd >= 0) {
        close(rootfd);
        return fd;
    }
#endif
    memcpy(copy, rel, strlen(rel) + 1);
    fd = walk_beneath(rootfd, copy, &bad);
    close(rootfd);
    if (fd < 0)
        log_warn("%s: directory component \"%s\": %s", what, bad,
                 fd == UV_ELOOP ? "is a symlink now; refused" : uv_strerror(fd));
    return fd;
}

/* Creates a fresh temporary file in s->dirfd under a name no one predicted. */
static int create_tmp(sink_t *s, const char *tag)
{
    char name[sizeof(TMP_PREFIX) + TAG_MAX + 16];
    int fd = UV_EEXIST;

    for (int i = 0; i < TMP_TRIES && fd == UV_EEXIST; i++) {
        uint32_t r;
        if (getrandom(&r, sizeof(r), GRND_NONBLOCK) != (ssize_t)sizeof(r))
            r = (uint32_t)uv_hrtime() ^ ((uint32_t)getpid() << 16) ^ (uint32_t)i;
        snprintf(name, sizeof(name), TMP_PREFIX "%.*s-%08x", TAG_MAX, tag, (unsigned)r);
        /* O_EXCL|O_NOFOLLOW: never reuse or follow what someone else put at
         * the temporary name. */
        fd = openat(s->dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (fd < 0)
            fd = -errno;
    }
    if (fd < 0)
        return fd;
    s->tmp_name = mem_strdup(name);
    if (s->tmp_name == NULL) {
        unlinkat(s->dirfd, name, 0);
        close(fd);
        return UV_ENOMEM;
    }
    s->fd = fd;
    return 0;
}

/* Splits path (root + "/" + rel) into rel's directory, copied into dir, and
 * its last component, returned in *name (inside path). Returns 0, UV_EXDEV
 * (path is not under root) or UV_EINVAL (no file name, or too long). */
static int split_target(const char *root, const char *path, char dir[PATH_MAX], const char **name)
{
    size_t rlen = strlen(root);
    const char *rel, *slash;

    while (rlen > 1 && root[rlen - 1] == '/')
        rlen--;
    /* path is root + "/" + rel (root "/" is its own separator). */
    if (strncmp(path, root, rlen) != 0 || (rlen > 1 && path[rlen] != '/'))
        return UV_EXDEV;
    rel = path + rlen + (rlen > 1);
    while (*rel == '/')
        rel++;
    slash = strrchr(rel, '/');
    if (*(slash ? slash + 1 : rel) == '\0' || (size_t)(slash ? slash - rel : 0) >= PATH_MAX)
        return UV_EINVAL;
    memcpy(dir, rel, slash ? (size_t)(slash - rel) : 0);
    dir[slash ? slash - rel : 0] = '\0';
    *name = slash ? slash + 1 : rel;
    return 0;
}

void sink_partial_name(const char *name, int meta, char *out, size_t outlen)
{
    const char *suffix = meta ? META_SUFFIX : PART_SUFFIX;
    size_t n = strlen(name);
    uint32_t h = 2166136261u; /* FNV-1a: only tells shortened names apart */

    if (n <= PART_NAME_KEEP) {
        snprintf(out, outlen, ".%s%s", name, suffix);
        return;
    }
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)name[i]) * 16777619u;
    snprintf(out, outlen, ".%.*s~%08x%s", PART_NAME_KEEP, name, (unsigned)h, suffix);
}

void sink_set_partial(sink_t *s, uint64_t from)
{
    assert(s->kind == SINK_DISCARD && s->bytes == 0);
    s->partial = 1;
    s->keep_partial = 1;
    s->base = from;
}

void sink_set_mtime(sink_t *s, int64_t t)
{
    s->mtime = t;
}

void sink_set_no_replace(sink_t *s)
{
    s->no_replace = 1;
}

/* Hashes the first n bytes of fd (the kept part of a partial file). */
static int hash_kept(sink_t *s, int fd, uint64_t n)
{
    enum { CHUNK = 1 << 16 };
    char *b = mem_alloc(CHUNK);
    uint64_t off = 0;

    if (b == NULL)
        return UV_ENOMEM;
    while (off < n) {
        size_t want = n - off < CHUNK ? (size_t)(n - off) : CHUNK;
        ssize_t r = pread(fd, b, want, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            mem_free(b);
            return r < 0 ? -errno : UV_EIO;
        }
        (void)mbedtls_sha256_update_ret(&s->sha, (const unsigned char *)b, (size_t)r);
        off += (uint64_t)r;
    }
    mem_free(b);
    return 0;
}

/* Opens the target's partial file in s->dirfd: created when missing, never
 * followed, locked against a second job on the same target, cut to s->base
 * bytes, which the digest takes in first. */
static int create_partial(sink_t *s)
{
    char name[NAME_MAX + 1];
    struct stat st;
    int fd, rc = 0;

    sink_partial_name(s->name, 0, name, sizeof(name));
    fd = openat(s->dirfd, name, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) != 0)
        rc = -errno;
    else if (!S_ISREG(st.st_mode))
        rc = UV_EINVAL;
    else if (flock(fd, LOCK_EX | LOCK_NB) != 0)
        rc = errno == EWOULDBLOCK ? UV_EBUSY : -errno;
    else if ((uint64_t)st.st_size < s->base)
        rc = UV_ESPIPE; /* shorter than when it was probed */
    else if (ftruncate(fd, (off_t)s->base) != 0)
        rc = -errno;
    else if (s->want_sha256)
        rc = hash_kept(s, fd, s->base);
    if (rc == 0 && (s->tmp_name = mem_strdup(name)) == NULL)
        rc = UV_ENOMEM;
    if (rc < 0) {
        close(fd);
        return rc;
    }
    s->fd = fd;
    return 0;
}

int sink_open_file(sink_t *s, const char *root, const char *path, const char *tag)
{
    char dir[PATH_MAX];
    const char *name;
    int rc;

    assert(s->kind == SINK_DISCARD && s->bytes == 0);
    s->cause = 0;
    rc = split_target(root, path, dir, &name);
    if (rc != 0) {
        note(s, rc == UV_EXDEV ? OP_OPEN_DIR : OP_CREATE, rc);
        return ERR_IO;
    }
    s->path = mem_strdup(path);
    if (s->path == NULL)
        return ERR_NO_MEMORY;
    s->name = s->path + (name - path);
    s->dirfd = open_dir_beneath(path, root, dir);
    if (s->dirfd < 0) {
        rc = s->dirfd;
        note(s, OP_OPEN_DIR, rc);
    } else {
        rc = s->partial ? create_partial(s) : create_tmp(s, tag);
        if (rc < 0) {
            note(s, OP_CREATE, rc);
            log_warn("%s: cannot create a %s file beside it: %s", path,
                     s->partial ? "partial" : "temporary", uv_strerror(rc));
        }
    }
    if (rc < 0) {
        if (s->dirfd >= 0)
            close(s->dirfd);
        s->dirfd = -1;
        mem_free(s->path);
        s->path = NULL;
        s->name = NULL;
        return code_for(rc);
    }
    s->kind = SINK_FILE;
    return 0;
}

/* Opens path's directory beneath root for the functions that work beside a
 * target without a sink; *name is the target's name inside path. */
static int target_dir(const char *root, const char *path, const char **name)
{
    char dir[PATH_MAX];
    int rc = split_target(root, path, dir, name);
    return rc != 0 ? rc : open_dir_beneath(path, root, dir);
}

/* Reads the whole (small) file `name` in dirfd, never following a symlink,
 * into buf (NUL-terminated). Returns its length or a negative libuv code. */
static ssize_t read_small(int dirfd, const char *name, char *buf, size_t len)
{
    int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    size_t got = 0;

    if (fd < 0)
        return -errno;
    while (got < len - 1) {
        ssize_t r = read(fd, buf + got, len - 1 - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    return (ssize_t)got;
}

int sink_probe_partial(const char *root, const char *path, const char *url, uint64_t *size,
                       char *validator, size_t vlen)
{
    char name[NAME_MAX + 1], meta[META_MAX], *nl, *u;
    const char *base;
    struct stat st;
    int dirfd = target_dir(root, path, &base), found = 0;

    if (dirfd < 0)
        return dirfd;
    sink_partial_name(base, 0, name, sizeof(name));
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
        st.st_size > 0) {
        sink_partial_name(base, 1, name, sizeof(name));
        /* "validator\nurl\n", as sink_write_meta() wrote it. */
        if (read_small(dirfd, name, meta, sizeof(meta)) > 0 && (nl = strchr(meta, '\n')) != NULL) {
            *nl = '\0';
            u = nl + 1;
            u[strcspn(u, "\n")] = '\0';
            found = meta[0] != '\0' && strcmp(u, url) == 0 && strlen(meta) < vlen;
            if (found) {
                memcpy(validator, meta, strlen(meta) + 1);
                *size = (uint64_t)st.st_size;
            }
        }
    }
    close(dirfd);
    return found;
}

int sink_write_meta(sink_t *s, const char *validator, const char *url)
{
    char name[NAME_MAX + 1];
    int fd, ok;

    assert(s->kind == SINK_FILE && s->partial);
    sink_partial_name(s->name, 1, name, sizeof(name));
    if (validator == NULL)
        return unlinkat(s->dirfd, name, 0) == 0 || errno == ENOENT ? 0 : ERR_IO;
    fd = openat(s->dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) {
        log_warn("%s: cannot write %s: %s", s->path, name, strerror(errno));
        return ERR_IO;
    }
    ok = dprintf(fd, "%s\n%s\n", validator, url) > 0;
    ok = close(fd) == 0 && ok;
    return ok ? 0 : ERR_IO;
}

int sink_remove_partial(const char *root, const char *path)
{
    char name[NAME_MAX + 1];
    const char *base;
    int dirfd = target_dir(root, path, &base), rc = 0;

    if (dirfd < 0)
        return dirfd == UV_ENOENT ? 0 : dirfd;
    for (int meta = 0; meta < 2; meta++) {
        sink_partial_name(base, meta, name, sizeof(name));
        if (unlinkat(dirfd, name, 0) != 0 && errno != ENOENT && rc == 0)
            rc = -errno;
    }
    close(dirfd);
    return rc;
}

static int is_partial_name(const char *n)
{
    size_t len = strlen(n), sl = sizeof(PART_SUFFIX) - 1;
    return n[0] == '.' && len > sl + 1 &&
           (strcmp(n + len - sl, PART_SUFFIX) == 0 || strcmp(n + len - sl, META_SUFFIX) == 0);
}

/* One directory of the sweep; *budget counts the entries left to look at. */
static unsigned sweep_dir(int dfd, int depth, time_t cutoff, unsigned *budget)
{
    DIR *d = fdopendir(dfd);
    struct dirent *e;
    unsigned removed = 0;

    if (d == NULL) {
        close(dfd);
        return 0;
    }
    while (*budget > 0 && (e = readdir(d)) != NULL) {
        struct stat st;
        (*budget)--;
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0)
            continue;
        if (S_ISDIR(st.st_mode) && depth < SWEEP_DEPTH) {
            int sub = openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub >= 0)
                removed += sweep_dir(sub, depth + 1, cutoff, budget);
        } else if (S_ISREG(st.st_mode) && is_partial_name(e->d_name) && st.st_mtime < cutoff &&
                   unlinkat(dirfd(d), e->d_name, 0) == 0) {
            removed++;
        }
    }
    closedir(d);
    return removed;
}

unsigned sink_sweep_partials(const char *root, uint64_t max_age, time_t now, unsigned budget)
{
    int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    unsigned removed;

    if (fd < 0)
        return 0;
    removed = sweep_dir(fd, 0, now - (time_t)max_age, &budget);
    if (removed > 0)
        log_info("removed %u partial file(s) older than %" PRIu64 " s under %s", removed, max_age,
                 root);
    return removed;
}

static int mem_append(sink_t *s, const char *at, size_t len)
{
    if (len > s->mem_limit - s->mem_len && s->mem_cut)
        len = s->mem_limit - s->mem_len;
    if (len > s->mem_limit - s->mem_len)
        return ERR_BODY_TOO_LARGE;
    if (len == 0)
        return 0;
    size_t need = s->mem_len + len + 1; /* + the NUL */
    if (need > s->mem_cap) {
        size_t cap = s->mem_cap == 0 ? SINK_MEM_MIN : s->mem_cap;
        cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
        if (cap < need)
            cap = need;
        /* Never allocate beyond what the limit can ever use. */
        if (s->mem_limit < SIZE_MAX && cap > s->mem_limit + 1)
            cap = s->mem_limit + 1;
        char *p = mem_realloc(s->mem, cap);
        if (p == NULL)
            return ERR_NO_MEMORY;
        s->mem = p;
        s->mem_cap = cap;
    }
    memcpy(s->mem + s->mem_len, at, len);
    s->mem_len += len;
    s->mem[s->mem_len] = '\0';
    return 0;
}

static sink_write_req_t *req_get(sink_t *s)
{
    sink_write_req_t *wr = s->free_reqs;
    if (wr != NULL) {
        s->free_reqs = wr->next;
        return wr;
    }
    wr = mem_alloc(sizeof(*wr));
    if (wr != NULL)
        stats_obj_created(s->stats, STATS_OBJ_REQUEST);
    return wr;
}

/* Drops the request's buffer reference and puts it on the free list. */
static void req_put(sink_t *s, sink_write_req_t *wr)
{
    buf_decref(wr->buf);
    wr->buf = NULL;
    wr->next = s->free_reqs;
    s->free_reqs = wr;
}

static int submit(sink_t *s, sink_write_req_t *wr)
{
    unsigned n = wr->len > SINK_MAX_IO ? SINK_MAX_IO : (unsigned)wr->len;
    uv_buf_t ub = uv_buf_init((char *)wr->at, n); /* libuv only reads it */
    wr->req.data = s;
    return uv_fs_write(s->loop, &wr->req, s->fd, &ub, 1, wr->offset, on_write);
}

static int file_write(sink_t *s, buf_t *b, const char *at, size_t len)
{
    sink_write_req_t *wr = req_get(s);
    if (wr == NULL)
        return ERR_NO_MEMORY;
    buf_incref(b);
    wr->buf = b;
    wr->at = at;
    wr->len = len;
    wr->offset = (int64_t)(s->base + s->bytes);
    wr->next = NULL;
    if (s->partial && s->writes_in_flight > 0) {
        /* In order, one at a time: a killed daemon leaves no hole. */
        if (s->wait_tail)
            s->wait_tail->next = wr;
        else
            s->wait_head = wr;
        s->wait_tail = wr;
        s->writes_in_flight++;
        s->bytes_in_flight += len;
        return 0;
    }
    int rc = submit(s, wr);
    if (rc < 0) {
        uv_fs_req_cleanup(&wr->req);
        req_put(s, wr);
        note(s, OP_WRITE, rc);
        log_warn("%s: write: %s", s->path, uv_strerror(rc));
        return code_for(rc);
    }
    s->writes_in_flight++;
    s->bytes_in_flight += len;
    return 0;
}

void sink_set_limit(sink_t *s, uint64_t max)
{
    s->max_bytes = max;
}

void sink_set_decoder(sink_t *s, decode_chain_t *d, buf_pool_t *pool)
{
    assert(s->bytes == 0 && s->wire_bytes == 0);
    decode_destroy(s->dec);
    s->dec = d;
    s->dpool = pool;
}

/* Stores len bytes (decoded, or as received): limits, then the kind's
 * store, then the digest. */
static int store(sink_t *s, buf_t *b, const char *at, size_t len)
{
    int rc = 0;

    if (s->max_bytes && len > s->max_bytes - s->bytes) {
        s->over_max = 1;
        rc = ERR_BODY_TOO_LARGE;
    } else {
        switch (s->kind) {
        case SINK_DISCARD:
            break;
        case SINK_MEMORY:
            rc = mem_append(s, at, len);
            break;
        case SINK_FILE:
            rc = file_write(s, b, at, len);
            break;
        }
    }
    if (rc < 0) {
        /* The body is now incomplete: every later write and the commit fail. */
        s->error = rc;
        return rc;
    }
    if (s->want_sha256)
        (void)mbedtls_sha256_update_ret(&s->sha, (const unsigned char *)at, len);
    s->bytes += len;
    return 0;
}

/* Writes out (and drops) the buffer of decoded bytes being filled. */
static int flush_decoded(sink_t *s)
{
    buf_t *b = s->dbuf;
    int rc = 0;

    if (b == NULL)
        return 0;
    s->dbuf = NULL;
    if (b->len > 0)
        rc = store(s, b, b->data, b->len);
    buf_decref(b);
    return rc;
}

/* The decoder's output. Discard and memory sinks take it where it is; a
 * file sink's write outlives the decoder's scratch, so the bytes go into
 * pool buffers, each written once full (or at the end of sink_write()). */
static int on_decoded(void *data, const char *p, size_t len)
{
    sink_t *s = data;

    if (s->kind != SINK_FILE)
        return store(s, NULL, p, len);
    while (len > 0) {
        size_t n;
        if (s->dbuf == NULL) {
            s->dbuf = buf_get(s->dpool);
            if (s->dbuf == NULL)
                return ERR_NO_MEMORY;
        }
        n = s->dpool->size - s->dbuf->len;
        n = n < len ? n : len;
        memcpy(s->dbuf->data + s->dbuf->len, p, n);
        s->dbuf->len += n;
        p += n;
        len -= n;
        if (s->dbuf->len == s->dpool->size) {
            int rc = flush_decoded(s);
            if (rc != 0)
                return rc;
        }
    }
    return 0;
}

int sink_write(sink_t *s, buf_t *b, const char *at, size_t len)
{
    int rc, frc;

    assert(s->finishing == FINISH_NONE && !s->digested);
    if (s->error != 0)
        return s->error;
    if (len == 0)
        return 0;
    s->wire_bytes += len;
    if (s->dec == NULL)
        return store(s, b, at, len);
    rc = decode_write(s->dec, at, len, on_decoded, s);
    frc = flush_decoded(s);
    if (rc == 0)
        rc = frc;
    if (rc != 0 && s->error == 0)
        s->error = rc;
    return rc;
}

int sink_finish_decoding(sink_t *s)
{
    int rc;

    if (s->dec == NULL || s->error != 0)
        return s->error;
    rc = decode_finish(s->dec);
    if (rc != 0)
        s->error = rc;
    return rc;
}

uint64_t sink_pending(const sink_t *s)
{
    return s->bytes_in_flight;
}

void sink_digest(sink_t *s)
{
    if (!s->want_sha256 || s->digested)
        return;
    (void)mbedtls_sha256_finish_ret(&s->sha, s->sha256);
    s->digested = 1;
}

static void failed(sink_t *s, int op, int uverr)
{
    note(s, op, uverr);
    log_warn("%s: %s (temporary file %s): %s", s->path, op_name(op), s->tmp_name,
             uv_strerror(uverr));
    if (s->error == 0)
        s->error = ERR_IO;
}

/* The finishing steps; runs on the thread pool (or, as a fallback, on the loop
 * thread), touching nothing the loop thread reads meanwhile. A failure is
 * only recorded here (in fail_op/fail_err) and logged by on_finished(). */
static void finish_steps(sink_t *s, int *fail_op, int *fail_err)
{
    int commit = s->finishing == FINISH_COMMIT && s->error == 0;

    *fail_op = OP_NONE;
    *fail_err = 0;
    if (commit && fsync(s->fd) != 0) {
        *fail_op = OP_FSYNC;
        *fail_err = -errno;
        commit = 0;
    }
    if (commit && s->mtime != 0) {
        struct timespec ts[2] = {{.tv_nsec = UTIME_OMIT}, {.tv_sec = (time_t)s->mtime}};
        (void)futimens(s->fd, ts); /* the date is a courtesy: never fails the job */
    }
    /* Linux releases the descriptor even when close reports an error. */
    if (close(s->fd) != 0 && commit) {
        *fail_op = OP_CLOSE;
        *fail_err = -errno;
        commit = 0;
    }
    s->fd = -1;
    /* Within the directory opened at sink_open_file(): whatever happened to
     * the path since, the file stays where it was created. */
    if (commit &&
        (s->no_replace ? renameat2(s->dirfd, s->tmp_name, s->dirfd, s->name, RENAME_NOREPLACE)
                       : renameat(s->dirfd, s->tmp_name, s->dirfd, s->name)) != 0) {
        *fail_op = OP_RENAME;
        *fail_err = -errno;
        commit = 0;
    }
    if (commit && s->partial) {
        char meta[NAME_MAX + 1];
        sink_partial_name(s->name, 1, meta, sizeof(meta));
        (void)unlinkat(s->dirfd, meta, 0);
    }
    /* A resumable job's partial file stays for the next attempt. */
    if (!commit && !(s->partial && s->keep_partial) && unlinkat(s->dirfd, s->tmp_name, 0) != 0 &&
        *fail_op == OP_NONE) {
        *fail_op = OP_UNLINK;
        *fail_err = -errno;
    }
    if (!commit && s->partial && !s->keep_partial) {
        char meta[NAME_MAX + 1];
        sink_partial_name(s->name, 1, meta, sizeof(meta));
        (void)unlinkat(s->dirfd, meta, 0);
    }
    close(s->dirfd);
    s->dirfd = -1;
}

static void work_steps(uv_work_t *w)
{
    sink_t *s = w->data;
    finish_steps(s, &s->work_op, &s->work_err);
}

static void finish(sink_t *s)
{
    int status = s->finishing == FINISH_COMMIT && s->error != 0 ? ERR_IO : 0;
    sink_cb cb = s->finish_cb;
    s->finish_cb = NULL;
    s->finishing = FINISH_NONE;
    cb(s, status);
}

static void on_finished(uv_work_t *w, int status)
{
    sink_t *s = w->data;

    (void)status; /* never cancelled */
    if (s->work_op != OP_NONE)
        failed(s, s->work_op, s->work_err);
    finish(s);
}

/* Starts the finishing steps once no write is in flight. */
static void finish_start(sink_t *s)
{
    s->work.data = s;
    if (uv_queue_work(s->loop, &s->work, work_steps, on_finished) != 0) {
        /* Cannot happen with a work callback; stay correct anyway. */
        work_steps(&s->work);
        on_finished(&s->work, 0);
    }
}

/* A write finished (or failed for good): resume a waiting commit or abort, or
 * tell the owner that the backlog shrank. */
static void write_done(sink_t *s)
{
    if (s->finishing != FINISH_NONE) {
        if (s->writes_in_flight == 0)
            finish_start(s);
        return;
    }
    if (s->on_drain != NULL)
        s->on_drain(s, s->error);
}

/* A partial sink's next write, once the one before it is done. After a
 * failed write the rest are dropped: the file must not get a hole. */
static void next_waiting(sink_t *s)
{
    while (s->wait_head != NULL) {
        sink_write_req_t *wr = s->wait_head;
        int rc = s->error == 0 ? submit(s, wr) : UV_ECANCELED;
        s->wait_head = wr->next;
        if (s->wait_head == NULL)
            s->wait_tail = NULL;
        if (rc == 0)
            return;
        if (rc != UV_ECANCELED) {
            uv_fs_req_cleanup(&wr->req);
            failed(s, OP_WRITE, rc);
        }
        s->bytes_in_flight -= wr->len;
        req_put(s, wr);
        s->writes_in_flight--;
    }
}

static void on_write(uv_fs_t *req)
{
    sink_write_req_t *wr = (sink_write_req_t *)((char *)req - offsetof(sink_write_req_t, req));
    sink_t *s = req->data;
    ssize_t n = req->result;
    int err = 0;

    uv_fs_req_cleanup(req);
    if (n < 0) {
        err = (int)n;
    } else if (n == 0) {
        err = UV_EIO; /* no progress: retrying would spin */
    } else {
        wr->at += n;
        wr->len -= (size_t)n;
        wr->offset += n;
        s->bytes_in_flight -= (uint64_t)n;
        /* A short write: send the remainder with the same request. */
        if (wr->len > 0) {
            err = submit(s, wr);
            if (err == 0)
                return;
            uv_fs_req_cleanup(req);
        }
    }
    if (err < 0) {
        failed(s, OP_WRITE, err);
        s->bytes_in_flight -= wr->len;
    }
    req_put(s, wr);
    s->writes_in_flight--;
    next_waiting(s);
    write_done(s);
}

/* Shared by commit and abort: see their contracts in sink.h. */
static int begin_finish(sink_t *s, int how, sink_cb cb)
{
    assert(s->finishing == FINISH_NONE && s->finish_cb == NULL);
    /* Discard and memory sinks have nothing to wait for; neither has a file
     * sink that was already committed or aborted. */
    if (s->kind != SINK_FILE || s->fd < 0)
        return how == FINISH_COMMIT ? s->error : 0;
    s->finishing = how;
    s->finish_cb = cb;
    if (s->writes_in_flight == 0)
        finish_start(s);
    return SINK_PENDING;
}

int sink_commit(sink_t *s, sink_cb cb)
{
    sink_digest(s);
    return begin_finish(s, FINISH_COMMIT, cb);
}

int sink_abort(sink_t *s, sink_cb cb)
{
    return begin_finish(s, FINISH_ABORT, cb);
}

void sink_dispose(sink_t *s)
{
    assert(s->finishing == FINISH_NONE && s->writes_in_flight == 0);
    /* An owner that never committed nor aborted still gets no partial file. */
    if (s->kind == SINK_FILE && s->fd >= 0) {
        int op, err;
        s->finishing = FINISH_ABORT;
        finish_steps(s, &op, &err);
        s->finishing = FINISH_NONE;
        if (op != OP_NONE)
            failed(s, op, err);
    }
    while (s->free_reqs != NULL) {
        sink_write_req_t *wr = s->free_reqs;
        s->free_reqs = wr->next;
        mem_free(wr);
        stats_obj_destroyed(s->stats, STATS_OBJ_REQUEST);
    }
    assert(s->dbuf == NULL);
    decode_destroy(s->dec);
    s->dec = NULL;
    mem_free(s->mem);
    mem_free(s->path);
    mem_free(s->tmp_name);
    s->mem = s->path = s->tmp_name = NULL;
    s->name = NULL;
    s->mem_len = s->mem_cap = 0;
    mbedtls_sha256_free(&s->sha);
}

void sink_sha256_hex(const sink_t *s, char out[65])
{
    static const char hex[] = "0123456789abcdef";

    assert(s->want_sha256 && s->digested);
    for (size_t i = 0; i < sizeof(s->sha256); i++) {
        out[2 * i] = hex[s->sha256[i] >> 4];
        out[2 * i + 1] = hex[s->sha256[i] & 0x0f];
    }
    out[64] = '\0';
}
