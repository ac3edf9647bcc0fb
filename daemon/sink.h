/* sink — where a response body goes: discarded, into a file, or into memory,
 * optionally through SHA-256, and optionally decoded first.
 *
 * With a decoder (sink_set_decoder) the bytes given to sink_write() are the
 * encoded body as received (counted in wire_bytes); what the decoder emits is
 * what the sink stores, hashes, limits (max_bytes, the memory limit) and
 * counts in bytes. A file sink copies the decoded bytes into buffers from
 * the pool it was given, since its writes outlive the decoder's scratch.
 *
 * A file sink never follows a path twice. At open it opens the output's
 * directory beneath the download directory without following any symlink,
 * keeps that directory's descriptor, and creates a short temporary name in
 * it; writes go to the file's descriptor (asynchronously, on libuv's thread
 * pool, at explicit offsets), and sink_commit() renames the temporary file
 * within that same directory descriptor. A directory swapped for a symlink
 * after the job was submitted therefore cannot redirect the write outside
 * the download directory. sink_abort() removes the temporary file, so a
 * failed job never leaves a partial file.
 *
 * A resumable job's file sink (sink_set_partial) writes instead to a stable
 * name beside the target, ".<name>.fetchd-part", with the validator it may
 * be resumed under in ".<name>.fetchd-meta" (sink_write_meta). Its writes go
 * out one at a time, in order, so the partial file never has a hole, even
 * after a kill -9; an abort keeps it (unless keep_partial is cleared), and
 * commit renames it into place and removes the meta file.
 *
 * Ownership: a sink_t is embedded in its job (which owns it). While a write is
 * in flight the sink holds a reference to the buf_t the bytes live in. The
 * owner must keep the sink alive until the callback of sink_commit() or
 * sink_abort() has run; sink_dispose() then releases what is left.
 */
#ifndef FETCHD_SINK_H
#define FETCHD_SINK_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <mbedtls/sha256.h>
#include <uv.h>

#include "buf.h"
#include "decode.h"

typedef enum sink_kind { SINK_DISCARD, SINK_FILE, SINK_MEMORY } sink_kind_t;

typedef struct sink sink_t;

/* status is 0 or a negative fetchd error. */
typedef void (*sink_cb)(sink_t *s, int status);

typedef struct sink_write_req sink_write_req_t;

struct sink {
    sink_kind_t kind;         /* read-only */
    uint64_t bytes;           /* read-only: body bytes accepted (decoded) so far */
    uint64_t wire_bytes;      /* read-only: bytes given to sink_write() (as received) */
    uint64_t max_bytes;       /* read-only: 0, or the most bytes accepted (sink_set_limit) */
    int over_max;             /* read-only: a write failed because of max_bytes */
    int want_sha256;          /* read-only */
    unsigned char sha256[32]; /* read-only: valid after sink_commit() succeeded */
    void *data;               /* public: the owner's */
    /* memory sink */
    char *mem;        /* owned; the body so far (NUL-terminated) */
    size_t mem_len;   /* read-only */
    size_t mem_limit; /* read-only */
    int mem_cut;      /* read-only: bytes past mem_limit are dropped, not an error */
    /* file sink */
    char *path;       /* owned: the final path (for messages) */
    const char *name; /* borrowed from path: the final name inside dirfd */
    char *tmp_name;   /* owned: the temporary file's name inside dirfd */
    int dirfd;        /* private: the output directory, opened beneath the download dir */
    int cause;        /* read-only: libuv code of the first failed file operation, or 0 */
    int cause_op;     /* private: which operation failed (enum in sink.c) */
    /* private */
    uv_loop_t *loop; /* borrowed */
    stats_t *stats;  /* borrowed */
    mbedtls_sha256_context sha;
    uv_file fd;
    size_t mem_cap; /* bytes allocated at mem */
    int digested;   /* sha256[] holds the final digest */
    int error;      /* first write error, reported by commit */
    unsigned writes_in_flight;
    uint64_t bytes_in_flight;
    sink_write_req_t *free_reqs; /* owned */
    decode_chain_t *dec;         /* owned, or NULL: bytes are stored as received */
    buf_pool_t *dpool;           /* borrowed: buffers for a file sink's decoded bytes */
    buf_t *dbuf;                 /* owned reference: decoded bytes not yet written */
    int finishing;               /* 0, or 1 commit / 2 abort, waiting for writes */
    sink_cb finish_cb;
    sink_cb on_drain; /* public, optional: a write completed while no commit
                         or abort was pending; check sink_pending() */
    uv_work_t work;   /* fsync, close, rename or unlink, on the thread pool */
    int work_op;      /* which finishing step failed (written by the work item) */
    int work_err;     /* and its libuv code */
    /* resumable file sink (sink_set_partial) */
    int partial;                 /* read-only: the temp file is ".<name>.fetchd-part" */
    int keep_partial;            /* public: abort keeps the partial file (set by set_partial) */
    uint64_t base;               /* read-only: bytes kept from an earlier attempt */
    int no_replace;              /* private: commit never replaces an existing target */
    int64_t mtime;               /* private: 0, or the target's mtime (unix s) at commit */
    sink_write_req_t *wait_head; /* owned: a partial sink's writes waiting their turn */
    sink_write_req_t *wait_tail; /* borrowed: the last of them */
};

/* Sets the sink up as a discard sink (the default). Never fails. */
void sink_init(sink_t *s, uv_loop_t *loop, stats_t *stats, int want_sha256);

/* Makes s a memory sink that accepts at most limit bytes; more makes
 * sink_write() fail with ERR_BODY_TOO_LARGE. */
void sink_set_memory(sink_t *s, size_t limit);

/* Makes s a memory sink that keeps the first limit bytes and drops the rest
 * without failing (a non-2xx body kept for the user to read). */
void sink_set_memory_cut(sink_t *s, size_t limit);

/* Takes a memory sink's body: returns it (NUL-terminated, now the caller's
 * to mem_free(); NULL when empty) with its length in *len, and leaves the
 * sink empty. */
char *sink_take_mem(sink_t *s, size_t *len);

/* Limits the bytes the sink accepts (decoded, when decoding) to max; more
 * makes sink_write() fail with ERR_BODY_TOO_LARGE and sets over_max. 0 means
 * no limit. */
void sink_set_limit(sink_t *s, uint64_t max);

/* Decodes every later sink_write() with d, which the sink takes over (it is
 * destroyed by sink_dispose()). pool is borrowed: a file sink copies decoded
 * bytes into its buffers. Call before the first write. */
void sink_set_decoder(sink_t *s, decode_chain_t *d, buf_pool_t *pool);

/* The body is complete: with a decoder, checks that its streams ended.
 * Returns 0, or ERR_CONTENT_DECODING (truncated) or the decoder's earlier
 * error, which also fails a later commit. Without a decoder returns 0. */
int sink_finish_decoding(sink_t *s);

/* Makes s a file sink that will end up at path, an absolute path inside root
 * (the canonical download directory) that the caller confined to it when the
 * job was submitted. Opens path's directory again now, beneath root and
 * without following any symlink (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS,
 * or one component at a time with O_NOFOLLOW where openat2 is missing), and
 * creates the temporary file ".fetchd-part-<tag>-<random>" in it
 * (O_CREAT|O_EXCL|O_NOFOLLOW, 0644). Synchronous. Returns 0, ERR_IO,
 * ERR_NO_FDS or ERR_NO_MEMORY; sink_strerror() says why. */
int sink_open_file(sink_t *s, const char *root, const char *path, const char *tag);

/* The partial and meta file names of the target name `name` (".<name>.fetchd-part"
 * and ".<name>.fetchd-meta"; a long name is shortened and tagged with its
 * hash so the result fits NAME_MAX). out must hold NAME_MAX + 1 bytes. */
void sink_partial_name(const char *name, int meta, char *out, size_t outlen);

/* Before sink_open_file(): the file is the target's partial file, of which
 * the first `from` bytes (hashed now, when the digest is wanted) are kept
 * and the rest cut; the body's bytes go after them. from is 0 to start over. */
void sink_set_partial(sink_t *s, uint64_t from);

/* Commit sets the file's modification time to t (unix seconds; 0: now). */
void sink_set_mtime(sink_t *s, int64_t t);

/* Commit fails (ERR_EXISTS) rather than replace a file at the target name. */
void sink_set_no_replace(sink_t *s);

/* Looks, beneath root and without following symlinks, for the partial file of
 * path (an absolute path inside root) and its meta file. Returns 1 when both
 * exist, the partial is a non-empty regular file and the meta file names url:
 * *size is the partial's length and validator its If-Range value. Returns 0
 * when there is nothing to resume, or a negative libuv code. */
int sink_probe_partial(const char *root, const char *path, const char *url, uint64_t *size,
                       char *validator, size_t vlen);

/* Writes the meta file beside an open partial sink: the validator (an ETag
 * or an HTTP-date) and the URL; a NULL validator removes the meta file, so
 * the partial is never resumed. Synchronous. Returns 0 or ERR_IO. */
int sink_write_meta(sink_t *s, const char *validator, const char *url);

/* Removes path's partial and meta files (beneath root). Returns 0 or a
 * negative libuv code; a missing file is not an error. */
int sink_remove_partial(const char *root, const char *path);

/* Removes the partial and meta files under root (depth at most 8, at most
 * budget directory entries looked at) last modified more than max_age
 * seconds before now. Returns the number of files removed. */
unsigned sink_sweep_partials(const char *root, uint64_t max_age, time_t now, unsigned budget);

/* Why the sink failed, for a job's error message: the cause of the first
 * failed file operation ("disk full", "disk quota exceeded", "out of file
 * descriptors", a directory on the path that became a symlink, or the
 * system's text) when there was one, the decoder's reason for a decoding
 * error, else err_str(err). Never NULL; the
 * string is static. */
const char *sink_strerror(const sink_t *s, int err);

/* Feeds len body bytes at `at`, which lie inside b (a file sink takes a
 * reference on b while it writes them; b may be NULL for discard and memory
 * sinks, and for any sink with a decoder). Returns 0, ERR_BODY_TOO_LARGE
 * (memory sink over its limit, or max_bytes), ERR_IO (an earlier write
 * failed), ERR_NO_MEMORY, or ERR_CONTENT_DECODING (the decoder refused the
 * bytes: corrupt, or the ratio cap; sink_strerror() says why). */
int sink_write(sink_t *s, buf_t *b, const char *at, size_t len);

/* Bytes handed to the thread pool and not yet written; the owner stops
 * reading while this is above its high-water mark. */
uint64_t sink_pending(const sink_t *s);

/* Finalises the SHA-256 digest into s->sha256 (when want_sha256 is set), so
 * the owner can compare it before deciding to commit or abort. Idempotent. */
void sink_digest(sink_t *s);

#define SINK_PENDING 1

/* Finishes successfully: finalises the digest, waits for the writes in
 * flight, fsyncs, closes and renames the temporary file into place.
 * Returns 0 when there was nothing to wait for (discard and memory sinks; cb
 * is not called), SINK_PENDING when cb will run later with 0 or ERR_IO, or a
 * negative error (cb is not called). */
int sink_commit(sink_t *s, sink_cb cb);

/* Gives up: waits for the writes in flight, closes and unlinks the temporary
 * file. Same returns as sink_commit(). */
int sink_abort(sink_t *s, sink_cb cb);

/* Releases everything the sink still owns. Must not be called while a
 * commit or abort is pending. */
void sink_dispose(sink_t *s);

/* Returns the hex digest (65 bytes incl. NUL) into out; s->want_sha256 must
 * be set and the sink committed. */
void sink_sha256_hex(const sink_t *s, char out[65]);

#endif
