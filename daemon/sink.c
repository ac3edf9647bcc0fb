/* sink — where a response body goes; see sink.h.
 *
 * A file sink's writes run on libuv's thread pool at explicit offsets, each
 * holding a reference to the buf_t its bytes live in, so the reader can hand
 * the buffer back to its pool at once. Commit and abort wait for those writes,
 * then run one chain of asynchronous steps on s->fs:
 *   commit: fsync -> close -> rename (tmp -> final)
 *   abort, or commit after a failed write: close -> unlink (tmp)
 * Each step's completion picks the next one from the step that just finished
 * (uv_fs_t.fs_type), so the chain is a switch rather than a set of flags.
 */
#include "sink.h"

#include <assert.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>

#include "err.h"
#include "log.h"
#include "mem.h"

enum { FINISH_NONE, FINISH_COMMIT, FINISH_ABORT };

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
static void on_fs(uv_fs_t *req);

void sink_init(sink_t *s, uv_loop_t *loop, stats_t *stats, int want_sha256)
{
    memset(s, 0, sizeof(*s));
    s->kind = SINK_DISCARD;
    s->want_sha256 = want_sha256 != 0;
    s->loop = loop;
    s->stats = stats;
    s->fd = -1;
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

int sink_open_file(sink_t *s, const char *path, const char *tag)
{
    static const char infix[] = ".fetchd-part-";
    uv_fs_t req;

    assert(s->kind == SINK_DISCARD && s->bytes == 0);
    size_t n = strlen(path) + strlen(infix) + strlen(tag) + 1;
    char *final = mem_strdup(path);
    char *tmp = mem_alloc(n);
    if (final == NULL || tmp == NULL) {
        mem_free(final);
        mem_free(tmp);
        return ERR_NO_MEMORY;
    }
    snprintf(tmp, n, "%s%s%s", path, infix, tag);
    /* O_EXCL|O_NOFOLLOW: never reuse or follow what someone else put at the
     * temporary name, such as a symlink pointing outside the download dir. */
    int fd = uv_fs_open(s->loop, &req, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                        0644, NULL);
    uv_fs_req_cleanup(&req);
    if (fd < 0) {
        log_warn("%s: cannot create: %s", tmp, uv_strerror(fd));
        mem_free(final);
        mem_free(tmp);
        return fd == UV_ENOMEM ? ERR_NO_MEMORY : ERR_IO;
    }
    s->kind = SINK_FILE;
    s->path = final;
    s->tmp_path = tmp;
    s->fd = fd;
    return 0;
}

static int mem_append(sink_t *s, const char *at, size_t len)
{
    if (len > s->mem_limit - s->mem_len)
        return ERR_BODY_TOO_LARGE;
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
    wr->offset = (int64_t)s->bytes;
    int rc = submit(s, wr);
    if (rc < 0) {
        uv_fs_req_cleanup(&wr->req);
        req_put(s, wr);
        log_warn("%s: write: %s", s->tmp_path, uv_strerror(rc));
        return rc == UV_ENOMEM ? ERR_NO_MEMORY : ERR_IO;
    }
    s->writes_in_flight++;
    s->bytes_in_flight += len;
    return 0;
}

int sink_write(sink_t *s, buf_t *b, const char *at, size_t len)
{
    int rc = 0;

    assert(s->finishing == FINISH_NONE && !s->digested);
    if (s->error != 0)
        return s->error;
    if (len == 0)
        return 0;
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

static const char *fs_op_name(uv_fs_type type)
{
    switch (type) {
    case UV_FS_WRITE:
        return "write";
    case UV_FS_FSYNC:
        return "fsync";
    case UV_FS_CLOSE:
        return "close";
    case UV_FS_RENAME:
        return "rename";
    case UV_FS_UNLINK:
        return "unlink";
    default:
        return "file operation";
    }
}

static void fs_failed(sink_t *s, uv_fs_type type, int err)
{
    log_warn("%s: %s: %s", s->tmp_path, fs_op_name(type), uv_strerror(err));
    if (s->error == 0)
        s->error = ERR_IO;
}

/* Closes and removes the temporary file synchronously: the fallback when the
 * asynchronous chain cannot even start, and for a sink disposed unfinished. */
static void remove_sync(sink_t *s)
{
    uv_fs_t req;

    if (s->fd >= 0) {
        uv_fs_close(s->loop, &req, s->fd, NULL);
        uv_fs_req_cleanup(&req);
        s->fd = -1;
    }
    int rc = uv_fs_unlink(s->loop, &req, s->tmp_path, NULL);
    uv_fs_req_cleanup(&req);
    if (rc < 0)
        log_warn("%s: unlink: %s", s->tmp_path, uv_strerror(rc));
}

/* Starts the fsync/close chain once no write is in flight. Returns 0, or
 * ERR_IO after cleaning up synchronously (the callback is then not called). */
static int finish_start(sink_t *s)
{
    int rc;
    uv_fs_type type;

    s->fs.data = s;
    if (s->finishing == FINISH_COMMIT && s->error == 0) {
        type = UV_FS_FSYNC;
        rc = uv_fs_fsync(s->loop, &s->fs, s->fd, on_fs);
    } else {
        type = UV_FS_CLOSE;
        rc = uv_fs_close(s->loop, &s->fs, s->fd, on_fs);
    }
    if (rc == 0)
        return 0;
    uv_fs_req_cleanup(&s->fs);
    fs_failed(s, type, rc);
    remove_sync(s);
    return ERR_IO;
}

static void finish(sink_t *s)
{
    int status = s->finishing == FINISH_COMMIT && s->error != 0 ? ERR_IO : 0;
    sink_cb cb = s->finish_cb;
    s->finish_cb = NULL;
    s->finishing = FINISH_NONE;
    cb(s, status);
}

/* Runs the step after `done` (which has completed, successfully or not). */
static void step(sink_t *s, uv_fs_type done)
{
    int rc;
    uv_fs_type next;

    switch (done) {
    case UV_FS_FSYNC:
        next = UV_FS_CLOSE;
        rc = uv_fs_close(s->loop, &s->fs, s->fd, on_fs);
        break;
    case UV_FS_CLOSE:
        /* Linux releases the descriptor even when close reports an error. */
        s->fd = -1;
        if (s->finishing == FINISH_COMMIT && s->error == 0) {
            next = UV_FS_RENAME;
            rc = uv_fs_rename(s->loop, &s->fs, s->tmp_path, s->path, on_fs);
        } else {
            next = UV_FS_UNLINK;
            rc = uv_fs_unlink(s->loop, &s->fs, s->tmp_path, on_fs);
        }
        break;
    case UV_FS_RENAME:
        if (s->error == 0) {
            finish(s);
            return;
        }
        /* The rename failed: the partial file must not stay behind. */
        next = UV_FS_UNLINK;
        rc = uv_fs_unlink(s->loop, &s->fs, s->tmp_path, on_fs);
        break;
    default:
        assert(done == UV_FS_UNLINK);
        finish(s);
        return;
    }
    if (rc < 0) {
        uv_fs_req_cleanup(&s->fs);
        fs_failed(s, next, rc);
        step(s, next);
    }
}

static void on_fs(uv_fs_t *req)
{
    sink_t *s = req->data;
    uv_fs_type type = req->fs_type;
    int result = (int)req->result;

    uv_fs_req_cleanup(req);
    if (result < 0)
        fs_failed(s, type, result);
    step(s, type);
}

/* A write finished (or failed for good): resume a waiting commit or abort, or
 * tell the owner that the backlog shrank. */
static void write_done(sink_t *s)
{
    if (s->finishing != FINISH_NONE) {
        if (s->writes_in_flight == 0 && finish_start(s) < 0)
            finish(s);
        return;
    }
    if (s->on_drain != NULL)
        s->on_drain(s, s->error);
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
        fs_failed(s, UV_FS_WRITE, err);
        s->bytes_in_flight -= wr->len;
    }
    req_put(s, wr);
    s->writes_in_flight--;
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
    if (s->writes_in_flight > 0 || finish_start(s) == 0)
        return SINK_PENDING;
    s->finishing = FINISH_NONE;
    s->finish_cb = NULL;
    return how == FINISH_COMMIT ? ERR_IO : 0;
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
    if (s->kind == SINK_FILE && s->fd >= 0)
        remove_sync(s);
    while (s->free_reqs != NULL) {
        sink_write_req_t *wr = s->free_reqs;
        s->free_reqs = wr->next;
        mem_free(wr);
        stats_obj_destroyed(s->stats, STATS_OBJ_REQUEST);
    }
    mem_free(s->mem);
    mem_free(s->path);
    mem_free(s->tmp_path);
    s->mem = s->path = s->tmp_path = NULL;
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
