/* Unit tests for daemon/sink.c on a real libuv loop: the discard and memory
 * sinks, SHA-256, file sinks that commit, abort and fail, output paths that
 * must stay beneath the download directory, the causes a failure reports,
 * and that every request, buffer and heap block is released afterwards. */
#include "sink.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "decode.h"
#include "err.h"
#include "mem.h"
#include "stats.h"
#include "test.h"

#define ABC_SHA256   "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

typedef struct fixture {
    uv_loop_t loop;
    stats_t stats;
    buf_pool_t pool;
    char dir[64];
    uint64_t blocks;
    int finished; /* finish callbacks seen */
    int status;   /* the last finish status */
    int drained;  /* on_drain calls seen */
} fixture_t;

static uint64_t fetchd_blocks(void)
{
    uint64_t blocks, bytes;
    mem_get(MEM_FETCHD, &blocks, &bytes);
    return blocks;
}

static void setup(fixture_t *f)
{
    memset(f, 0, sizeof(*f));
    CHECK_INT(mem_install(), 0);
    CHECK_INT(uv_loop_init(&f->loop), 0);
    stats_init(&f->stats);
    f->blocks = fetchd_blocks();
    buf_pool_init(&f->pool, 16384, 8, &f->stats);
    snprintf(f->dir, sizeof(f->dir), "/tmp/fetchd-test-sink-XXXXXX");
    CHECK(mkdtemp(f->dir) != NULL);
    f->status = 1;
}

static void teardown(fixture_t *f)
{
    CHECK_INT(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    CHECK_INT(uv_loop_close(&f->loop), 0);
    CHECK_INT(f->pool.in_use, 0);
    buf_pool_dispose(&f->pool);
    CHECK_INT(f->stats.objects[STATS_OBJ_REQUEST], 0);
    CHECK_INT(f->stats.objects[STATS_OBJ_BUFFER], 0);
    CHECK_INT(fetchd_blocks(), f->blocks);
    /* Every test cleans up its files, so the directory must be empty. */
    CHECK_INT(rmdir(f->dir), 0);
}

static void path_in(const fixture_t *f, const char *name, char *out, size_t n)
{
    snprintf(out, n, "%s/%s", f->dir, name);
}

static int exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* Entries of dir whose name contains ".fetchd-part-". */
static int part_files(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL)
        n += strstr(e->d_name, ".fetchd-part-") != NULL;
    closedir(d);
    return n;
}

/* The temporary file's path while the sink is open. */
static void tmp_of(const fixture_t *f, const sink_t *s, const char *sub, char *out, size_t n)
{
    snprintf(out, n, "%s/%s%s%s", f->dir, sub, sub[0] ? "/" : "", s->tmp_name);
}

static void on_finish(sink_t *s, int status)
{
    fixture_t *f = s->data;
    CHECK(s->finish_cb == NULL);
    f->finished++;
    f->status = status;
}

static void on_drain(sink_t *s, int status)
{
    fixture_t *f = s->data;
    (void)status;
    f->drained++;
}

/* Feeds len bytes through a pool buffer, as a connection would. */
static int feed(fixture_t *f, sink_t *s, const char *data, size_t len)
{
    buf_t *b = buf_get(&f->pool);
    CHECK(b != NULL && len <= f->pool.size);
    memcpy(b->data, data, len);
    b->len = len;
    int rc = sink_write(s, b, b->data, len);
    buf_decref(b);
    return rc;
}

static void test_discard_sha256(void)
{
    fixture_t f;
    sink_t s;
    char hex[65];
    setup(&f);

    sink_init(&s, &f.loop, &f.stats, 1);
    CHECK_INT(feed(&f, &s, "a", 1), 0);
    CHECK_INT(feed(&f, &s, "bc", 2), 0);
    CHECK_INT(s.bytes, 3);
    CHECK_INT(s.kind, SINK_DISCARD);
    CHECK_INT(sink_commit(&s, on_finish), 0);
    sink_sha256_hex(&s, hex);
    CHECK_STR(hex, ABC_SHA256);
    /* sink_digest() is idempotent. */
    sink_digest(&s);
    sink_sha256_hex(&s, hex);
    CHECK_STR(hex, ABC_SHA256);
    CHECK_INT(f.finished, 0);
    sink_dispose(&s);

    sink_init(&s, &f.loop, &f.stats, 1);
    sink_digest(&s);
    sink_sha256_hex(&s, hex);
    CHECK_STR(hex, EMPTY_SHA256);
    sink_dispose(&s);

    /* Without SHA-256 the bytes are still counted. */
    sink_init(&s, &f.loop, &f.stats, 0);
    CHECK_INT(feed(&f, &s, "hello", 5), 0);
    CHECK_INT(s.bytes, 5);
    CHECK_INT(sink_abort(&s, on_finish), 0);
    sink_dispose(&s);
    teardown(&f);
}

static void test_memory(void)
{
    fixture_t f;
    sink_t s;
    setup(&f);

    sink_init(&s, &f.loop, &f.stats, 0);
    sink_set_memory(&s, 10);
    CHECK_INT(s.kind, SINK_MEMORY);
    CHECK_INT(feed(&f, &s, "hello", 5), 0);
    CHECK_STR(s.mem, "hello");
    CHECK_INT(feed(&f, &s, "world", 5), 0);
    CHECK_STR(s.mem, "helloworld");
    CHECK_INT(s.mem_len, 10);
    CHECK_INT(feed(&f, &s, "!", 1), ERR_BODY_TOO_LARGE);
    CHECK_INT(s.mem_len, 10);
    CHECK_INT(s.bytes, 10);
    /* The body is incomplete from now on. */
    CHECK_INT(feed(&f, &s, "", 0), ERR_BODY_TOO_LARGE);
    CHECK_INT(sink_commit(&s, on_finish), ERR_BODY_TOO_LARGE);
    sink_dispose(&s);
    CHECK(s.mem == NULL);

    /* Growth over many pieces keeps the bytes and the NUL terminator. */
    char piece[1000];
    sink_init(&s, &f.loop, &f.stats, 0);
    sink_set_memory(&s, 200000);
    for (int i = 0; i < 200; i++) {
        memset(piece, 'a' + i % 26, sizeof(piece));
        CHECK_INT(feed(&f, &s, piece, sizeof(piece)), 0);
    }
    CHECK_INT(s.mem_len, 200000);
    CHECK_INT(strlen(s.mem), 200000);
    CHECK(s.mem[0] == 'a' && s.mem[1000] == 'b' && s.mem[199999] == 'a' + 199 % 26);
    CHECK_INT(feed(&f, &s, "x", 1), ERR_BODY_TOO_LARGE);
    CHECK_INT(sink_commit(&s, on_finish), ERR_BODY_TOO_LARGE);
    sink_dispose(&s);

    /* An allocation failure is reported and poisons the sink. */
    sink_init(&s, &f.loop, &f.stats, 0);
    sink_set_memory(&s, 100);
    mem_fail_after(1);
    CHECK_INT(sink_write(&s, NULL, "abc", 3), ERR_NO_MEMORY);
    mem_fail_after(0);
    CHECK_INT(s.bytes, 0);
    CHECK_INT(sink_write(&s, NULL, "abc", 3), ERR_NO_MEMORY);
    sink_dispose(&s);
    teardown(&f);
}

static unsigned char pattern(size_t i)
{
    return (unsigned char)((i * 131u + (i >> 12)) & 0xff);
}

/* Writes total bytes of pattern() in uneven pieces from pool buffers. */
static void write_pattern(fixture_t *f, sink_t *s, size_t total)
{
    size_t off = 0, piece = 1;
    while (off < total) {
        buf_t *b = buf_get(&f->pool);
        size_t n = total - off < f->pool.size ? total - off : f->pool.size;
        for (size_t i = 0; i < n; i++)
            b->data[i] = (char)pattern(off + i);
        b->len = n;
        /* Each buffer goes out in two writes, so several writes share it. */
        size_t first = piece % n;
        CHECK_INT(sink_write(s, b, b->data, first), 0);
        CHECK_INT(sink_write(s, b, b->data + first, n - first), 0);
        buf_decref(b);
        off += n;
        piece = piece * 7 + 3;
    }
}

static int check_pattern_file(const char *path, size_t total)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL)
        return 0;
    size_t i = 0;
    int c, ok = 1;
    while ((c = fgetc(fp)) != EOF) {
        if (i >= total || (unsigned char)c != pattern(i))
            ok = 0;
        i++;
    }
    fclose(fp);
    return ok && i == total;
}

/* gzip of the first total bytes of pattern(); the caller frees it. */
static unsigned char *gzip_pattern(size_t total, size_t *outlen)
{
    unsigned char *in = malloc(total), *out;
    z_stream z;
    size_t cap = total + total / 100 + 64;

    for (size_t i = 0; i < total; i++)
        in[i] = pattern(i);
    out = malloc(cap);
    memset(&z, 0, sizeof(z));
    CHECK_INT(deflateInit2(&z, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
    z.next_in = in;
    z.avail_in = (uInt)total;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    CHECK_INT(deflate(&z, Z_FINISH), Z_STREAM_END);
    *outlen = cap - z.avail_out;
    deflateEnd(&z);
    free(in);
    return out;
}

static decode_chain_t *gzip_decoder(fixture_t *f, uint64_t max_ratio)
{
    decode_coding_t c = DECODE_GZIP;
    decode_chain_t *d = NULL;
    CHECK_INT(decode_create(&d, &c, 1, max_ratio, &f->stats), 0);
    return d;
}

/* Feeds the encoded bytes in pool buffers of at most step bytes. */
static int feed_all(fixture_t *f, sink_t *s, const unsigned char *p, size_t len, size_t step)
{
    int rc = 0;
    for (size_t at = 0; rc == 0 && at < len; at += step)
        rc = feed(f, s, (const char *)p + at, len - at < step ? len - at : step);
    return rc;
}

/* A gzip body decoded into a file: the file, the digest and bytes are the
 * decoded content's; wire_bytes counts what arrived; the decoder's
 * buffers all go back to the pool. */
static void test_decoded_file(void)
{
    fixture_t f;
    sink_t s;
    char path[PATH_MAX], hex[65], want_hex[65];
    const size_t total = 3 << 20;
    size_t enclen;
    unsigned char *enc = gzip_pattern(total, &enclen), want[32];
    unsigned char *plain = malloc(total);
    setup(&f);
    path_in(&f, "decoded.bin", path, sizeof(path));

    sink_init(&s, &f.loop, &f.stats, 1);
    s.data = &f;
    CHECK_INT(sink_open_file(&s, f.dir, path, "9"), 0);
    sink_set_decoder(&s, gzip_decoder(&f, 1000), &f.pool);
    CHECK_INT(f.stats.objects[STATS_OBJ_DECODER], 1);
    CHECK_INT(feed_all(&f, &s, enc, enclen, 5000), 0);
    CHECK_INT(s.wire_bytes, enclen);
    CHECK_INT(s.bytes, total);
    CHECK_INT(sink_finish_decoding(&s), 0);
    CHECK_INT(sink_commit(&s, on_finish), SINK_PENDING);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    CHECK_INT(f.status, 0);
    CHECK(check_pattern_file(path, total));
    for (size_t i = 0; i < total; i++)
        plain[i] = pattern(i);
    CHECK_INT(mbedtls_sha256_ret(plain, total, want, 0), 0);
    for (size_t i = 0; i < 32; i++)
        snprintf(want_hex + 2 * i, 3, "%02x", want[i]);
    sink_sha256_hex(&s, hex);
    CHECK_STR(hex, want_hex);
    sink_dispose(&s);
    CHECK_INT(f.stats.objects[STATS_OBJ_DECODER], 0);
    CHECK_INT(unlink(path), 0);
    free(plain);
    free(enc);
    teardown(&f);
}

/* A truncated gzip body: every write succeeds, the end says it is not
 * complete, and the commit fails; an abort leaves no file. */
static void test_decoded_truncated(void)
{
    fixture_t f;
    sink_t s;
    char path[PATH_MAX];
    size_t enclen;
    unsigned char *enc = gzip_pattern(200000, &enclen);
    setup(&f);
    path_in(&f, "cut.bin", path, sizeof(path));

    sink_init(&s, &f.loop, &f.stats, 0);
    s.data = &f;
    CHECK_INT(sink_open_file(&s, f.dir, path, "9"), 0);
    sink_set_decoder(&s, gzip_decoder(&f, 1000), &f.pool);
    CHECK_INT(feed_all(&f, &s, enc, enclen - 8, 4096), 0);
    CHECK_INT(sink_finish_decoding(&s), ERR_CONTENT_DECODING);
    CHECK(strstr(sink_strerror(&s, ERR_CONTENT_DECODING), "gzip: truncated") != NULL);
    CHECK_INT(sink_abort(&s, on_finish), SINK_PENDING);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    CHECK(!exists(path));
    CHECK_INT(part_files(f.dir), 0);
    sink_dispose(&s);
    free(enc);
    teardown(&f);
}

/* max_bytes applies to the decoded size; corrupt data poisons the sink. */
static void test_decoded_limits(void)
{
    fixture_t f;
    sink_t s;
    size_t enclen;
    unsigned char *enc = gzip_pattern(100000, &enclen);
    setup(&f);

    sink_init(&s, &f.loop, &f.stats, 0);
    sink_set_memory(&s, 1 << 20);
    sink_set_limit(&s, 50000);
    sink_set_decoder(&s, gzip_decoder(&f, 1000), &f.pool);
    CHECK(enclen < 50000);
    CHECK_INT(feed_all(&f, &s, enc, enclen, 16384), ERR_BODY_TOO_LARGE);
    CHECK(s.over_max);
    CHECK(s.bytes <= 50000);
    CHECK_INT(sink_commit(&s, on_finish), ERR_BODY_TOO_LARGE);
    sink_dispose(&s);

    sink_init(&s, &f.loop, &f.stats, 0);
    sink_set_memory(&s, 1 << 20);
    sink_set_decoder(&s, gzip_decoder(&f, 1000), &f.pool);
    CHECK_INT(feed(&f, &s, "\x1f\x8b\x08\x00garbage, not deflate", 25), ERR_CONTENT_DECODING);
    CHECK(strncmp(sink_strerror(&s, ERR_CONTENT_DECODING), "gzip: ", 6) == 0);
    CHECK_INT(feed(&f, &s, "more", 4), ERR_CONTENT_DECODING);
    CHECK_INT(sink_finish_decoding(&s), ERR_CONTENT_DECODING);
    sink_dispose(&s);
    CHECK_INT(f.stats.objects[STATS_OBJ_DECODER], 0);
    free(enc);
    teardown(&f);
}

static void test_file_commit(void)
{
    fixture_t f;
    sink_t s;
    char path[PATH_MAX], tmp[PATH_MAX], hex[65], want_hex[65];
    const size_t total = 1 << 20;
    setup(&f);
    path_in(&f, "out.bin", path, sizeof(path));

    sink_init(&s, &f.loop, &f.stats, 1);
    s.data = &f;
    CHECK_INT(sink_open_file(&s, f.dir, path, "7"), 0);
    CHECK_INT(s.kind, SINK_FILE);
    /* A short hidden name beside the target: ".fetchd-part-7-" + 8 hex digits. */
    CHECK(strncmp(s.tmp_name, ".fetchd-part-7-", 15) == 0 && strlen(s.tmp_name) == 23);
    CHECK_STR(s.name, "out.bin");
    tmp_of(&f, &s, "", tmp, sizeof(tmp));
    CHECK(exists(tmp));
    CHECK(!exists(path));

    write_pattern(&f, &s, total);
    CHECK_INT(s.bytes, total);
    CHECK(sink_pending(&s) > 0);
    /* The writes still hold the buffers the reader already let go of. */
    CHECK(f.pool.in_use > 0);

    /* Commit while writes are in flight: it waits for them. */
    CHECK_INT(sink_commit(&s, on_finish), SINK_PENDING);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    CHECK_INT(f.finished, 1);
    CHECK_INT(f.status, 0);
    CHECK_INT(sink_pending(&s), 0);
    CHECK_INT(f.pool.in_use, 0);
    CHECK(!exists(tmp));
    CHECK(check_pattern_file(path, total));

    /* The digest is that of the bytes in the file. */
    mbedtls_sha256_context ctx;
    unsigned char want[32];
    unsigned char *all = malloc(total);
    for (size_t i = 0; i < total; i++)
        all[i] = pattern(i);
    mbedtls_sha256_init(&ctx);
    mbedtls_sha256_starts_ret(&ctx, 0);
    mbedtls_sha256_update_ret(&ctx, all, total);
    mbedtls_sha256_finish_ret(&ctx, want);
    mbedtls_sha256_free(&ctx);
    free(all);
    for (int i = 0; i < 32; i++)
        snprintf(want_hex + 2 * i, 3, "%02x", want[i]);
    sink_sha256_hex(&s, hex);
    CHECK_STR(hex, want_hex);

    CHECK(f.stats.objects[STATS_OBJ_REQUEST] > 0);
    sink_dispose(&s);
    CHECK_INT(f.stats.objects[STATS_OBJ_REQUEST], 0);
    CHECK_INT(unlink(path), 0);
    teardown(&f);
}

static void test_file_drain_then_commit(void)
{
    fixture_t f;
    sink_t s;
    char path[PATH_MAX];
    setup(&f);
    path_in(&f, "drained.bin", path, sizeof(path));

    sink_init(&s, &f.loop, &f.stats, 0);
    s.data = &f;
    s.on_drain = on_drain;
    CHECK_INT(sink_open_file(&s, f.dir, path, "x"), 0);
    write_pattern(&f, &s, 100000);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    /* Two writes per 16 KiB buffer, each one drained. */
    CHECK_INT(f.drained, 14);
    CHECK_INT(sink_pending(&s), 0);

    /* Nothing in flight: commit starts the fsync chain at once. */
    CHECK_INT(sink_commit(&s, on_finish), SINK_PENDING);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    CHECK_INT(f.finished, 1);
    CHECK_INT(f.status, 0);
    CHECK_INT(f.drained, 14);
    CHECK(check_pattern_file(path, 100000));
    /* A committed sink has nothing left to abort. */
    CHECK_INT(sink_abort(&s, on_finish), 0);
    CHECK(exists(path));
    sink_dispose(&s);
    CHECK_INT(unlink(path), 0);
    teardown(&f);
}

static void test_file_abort(void)
{
    fixture_t f;
    sink_t s;
    char path[PATH_MAX], tmp[PATH_MAX];
    setup(&f);
    path_in(&f, "aborted.bin", path, sizeof(path));

    sink_init(&s, &f.loop, &f.stats, 1);
    s.data = &f;
    CHECK_INT(sink_open_file(&s, f.dir, path, "9"), 0);
    tmp_of(&f, &s, "", tmp, sizeof(tmp));
    CHECK(exists(tmp));
    write_pattern(&f, &s, 300000);
    CHECK_INT(sink_abort(&s, on_finish), SINK_PENDING);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    CHECK_INT(f.finished, 1);
    CHECK_INT(f.status, 0);
    CHECK(!exists(tmp));
    CHECK(!exists(path));
    sink_dispose(&s);
    teardown(&f);
}

static void test_file_write_error(void)
{
    fixture_t f;
    sink_t s;
    char path[PATH_MAX], tmp[PATH_MAX];
    setup(&f);
    path_in(&f, "full.bin", path, sizeof(path));

    sink_init(&s, &f.loop, &f.stats, 0);
    s.data = &f;
    s.on_drain = on_drain;
    CHECK_INT(sink_open_file(&s, f.dir, path, "e"), 0);
    tmp_of(&f, &s, "", tmp, sizeof(tmp));
    /* Swap /dev/full in under the sink's descriptor: every write fails with
     * ENOSPC, as on a full disk. */
    int full = open("/dev/full", O_WRONLY | O_CLOEXEC);
    CHECK(full >= 0);
    CHECK(dup2(full, s.fd) == s.fd);
    close(full);

    CHECK_INT(feed(&f, &s, "doomed", 6), 0);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    CHECK_INT(f.drained, 1);
    CHECK_INT(s.error, ERR_IO);
    CHECK_INT(sink_pending(&s), 0);
    CHECK_INT(feed(&f, &s, "more", 4), ERR_IO);
    /* The job's message names the cause, not just "I/O error". */
    CHECK_STR(sink_strerror(&s, ERR_IO), "disk full");

    /* Commit cleans up and reports the failure. */
    CHECK_INT(sink_commit(&s, on_finish), SINK_PENDING);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    CHECK_INT(f.finished, 1);
    CHECK_INT(f.status, ERR_IO);
    CHECK(!exists(tmp));
    CHECK(!exists(path));
    CHECK_STR(sink_strerror(&s, ERR_IO), "disk full");
    sink_dispose(&s);
    teardown(&f);
}

static void test_strerror(void)
{
    sink_t s;
    sink_init(&s, NULL, NULL, 0);
    /* No file system cause: the error's own text. */
    CHECK_STR(sink_strerror(&s, ERR_IO), "I/O error");
    CHECK_STR(sink_strerror(&s, ERR_NO_MEMORY), "out of memory");
    s.cause = -ENOSPC;
    CHECK_STR(sink_strerror(&s, ERR_IO), "disk full");
    s.cause = -EDQUOT;
    CHECK_STR(sink_strerror(&s, ERR_IO), "disk quota exceeded");
    s.cause = UV_EMFILE;
    CHECK_STR(sink_strerror(&s, ERR_NO_FDS), "out of file descriptors");
    s.cause = UV_ENFILE;
    CHECK_STR(sink_strerror(&s, ERR_NO_FDS), "out of file descriptors");
    s.cause = UV_EACCES;
    CHECK_STR(sink_strerror(&s, ERR_IO), uv_strerror(UV_EACCES));
    sink_dispose(&s);
}

static void test_file_alloc_failure(void)
{
    fixture_t f;
    sink_t s;
    char path[PATH_MAX], tmp[PATH_MAX];
    setup(&f);
    path_in(&f, "nomem.bin", path, sizeof(path));

    sink_init(&s, &f.loop, &f.stats, 0);
    s.data = &f;
    for (long n = 1; n <= 2; n++) {
        mem_fail_after(n);
        CHECK_INT(sink_open_file(&s, f.dir, path, "m"), ERR_NO_MEMORY);
        mem_fail_after(0);
        CHECK_INT(part_files(f.dir), 0);
        CHECK_INT(s.kind, SINK_DISCARD);
    }
    CHECK_INT(sink_open_file(&s, f.dir, path, "m"), 0);
    tmp_of(&f, &s, "", tmp, sizeof(tmp));

    buf_t *b = buf_get(&f.pool);
    mem_fail_after(1);
    CHECK_INT(sink_write(&s, b, b->data, 10), ERR_NO_MEMORY);
    mem_fail_after(0);
    CHECK_INT(b->refcnt, 1);
    buf_decref(b);
    CHECK_INT(s.bytes, 0);

    CHECK_INT(sink_commit(&s, on_finish), SINK_PENDING);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    CHECK_INT(f.status, ERR_IO);
    CHECK(!exists(tmp));
    CHECK(!exists(path));
    sink_dispose(&s);
    teardown(&f);
}

/* Opens path (relative to the fixture's dir) and expects it refused with
 * code and a cause; nothing may be created anywhere. */
static void expect_refused(fixture_t *f, const char *root, const char *rel, int code, int cause,
                           const char *words)
{
    sink_t s;
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", f->dir, rel);
    sink_init(&s, &f->loop, &f->stats, 0);
    CHECK_INT(sink_open_file(&s, root, path, "r"), code);
    CHECK_INT(s.kind, SINK_DISCARD);
    CHECK_INT(s.cause, cause);
    CHECK(s.tmp_name == NULL && s.dirfd == -1 && s.fd == -1);
    if (strstr(sink_strerror(&s, code), words) == NULL) {
        fprintf(stderr, "%s: \"%s\" does not say \"%s\"\n", rel, sink_strerror(&s, code), words);
        CHECK(0);
    }
    sink_dispose(&s);
}

static void test_open_refuses(void)
{
    fixture_t f;
    char sub[PATH_MAX], outside[PATH_MAX], link[PATH_MAX], file[PATH_MAX];
    setup(&f);
    path_in(&f, "sub", sub, sizeof(sub));
    path_in(&f, "outside", outside, sizeof(outside));
    path_in(&f, "sub/link", link, sizeof(link));
    path_in(&f, "sub/file", file, sizeof(file));
    CHECK_INT(mkdir(sub, 0755), 0);
    CHECK_INT(mkdir(outside, 0755), 0);
    /* "root" is the download dir: f.dir/sub; "outside" lies beside it. */
    CHECK_INT(symlink(outside, link), 0);
    FILE *fp = fopen(file, "w");
    CHECK(fp != NULL);
    fclose(fp);

    /* A directory on the path that is a symlink (a swap after submit). */
    expect_refused(&f, sub, "sub/link/x.bin", ERR_IO, UV_ELOOP, "is now a symlink");
    /* A regular file where a directory was. */
    expect_refused(&f, sub, "sub/file/x.bin", ERR_IO, UV_ENOTDIR, "no longer a directory");
    /* A directory that went away. */
    expect_refused(&f, sub, "sub/gone/x.bin", ERR_IO, UV_ENOENT, "no longer exists");
    /* A path that is not under root at all, or climbs out of it. */
    expect_refused(&f, sub, "outside/x.bin", ERR_IO, UV_EXDEV, "out of the download directory");
    expect_refused(&f, sub, "sub/../outside/x.bin", ERR_IO, UV_EXDEV,
                   "out of the download directory");
    /* No file name. */
    expect_refused(&f, sub, "sub/", ERR_IO, UV_EINVAL, "invalid argument");

    DIR *d = opendir(outside);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    CHECK_INT(n, 0);
    CHECK_INT(part_files(sub), 0);
    CHECK_INT(unlink(link), 0);
    CHECK_INT(unlink(file), 0);
    CHECK_INT(rmdir(sub), 0);
    CHECK_INT(rmdir(outside), 0);
    teardown(&f);
}

/* The temporary name never makes a legal name fail: a 255-byte name (NAME_MAX)
 * commits, in a subdirectory too. */
static void test_longest_name(void)
{
    fixture_t f;
    sink_t s;
    char name[NAME_MAX + 1], rel[NAME_MAX + 8], path[PATH_MAX], sub[PATH_MAX];
    setup(&f);
    memset(name, 'n', NAME_MAX);
    name[NAME_MAX] = '\0';
    path_in(&f, "d", sub, sizeof(sub));
    CHECK_INT(mkdir(sub, 0755), 0);
    for (int in_sub = 0; in_sub <= 1; in_sub++) {
        snprintf(rel, sizeof(rel), "%s%s", in_sub ? "d/" : "", name);
        path_in(&f, rel, path, sizeof(path));
        sink_init(&s, &f.loop, &f.stats, 0);
        s.data = &f;
        CHECK_INT(sink_open_file(&s, f.dir, path, "0123456789abcdef"), 0);
        CHECK_INT(feed(&f, &s, "long", 4), 0);
        f.finished = 0;
        CHECK_INT(sink_commit(&s, on_finish), SINK_PENDING);
        uv_run(&f.loop, UV_RUN_DEFAULT);
        CHECK_INT(f.finished, 1);
        CHECK_INT(f.status, 0);
        sink_dispose(&s);
        CHECK(exists(path));
        CHECK_INT(unlink(path), 0);
    }
    CHECK_INT(rmdir(sub), 0);
    teardown(&f);
}

/* The output directory is held open from sink_open_file() on: a directory
 * moved away and replaced by a symlink while the body is written does not
 * redirect the file; it lands in the directory it was opened in. */
static void test_swap_after_open(void)
{
    fixture_t f;
    sink_t s;
    char sub[PATH_MAX], moved[PATH_MAX], outside[PATH_MAX], path[PATH_MAX], landed[PATH_MAX];
    setup(&f);
    path_in(&f, "sub", sub, sizeof(sub));
    path_in(&f, "moved", moved, sizeof(moved));
    path_in(&f, "outside", outside, sizeof(outside));
    path_in(&f, "sub/out.bin", path, sizeof(path));
    path_in(&f, "moved/out.bin", landed, sizeof(landed));
    CHECK_INT(mkdir(sub, 0755), 0);
    CHECK_INT(mkdir(outside, 0755), 0);

    sink_init(&s, &f.loop, &f.stats, 0);
    s.data = &f;
    CHECK_INT(sink_open_file(&s, f.dir, path, "s"), 0);
    CHECK_INT(rename(sub, moved), 0);
    CHECK_INT(symlink(outside, sub), 0);
    write_pattern(&f, &s, 50000);
    CHECK_INT(sink_commit(&s, on_finish), SINK_PENDING);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    CHECK_INT(f.status, 0);
    sink_dispose(&s);
    CHECK(check_pattern_file(landed, 50000));
    CHECK(rmdir(outside) == 0); /* empty */
    CHECK_INT(unlink(landed), 0);
    CHECK_INT(unlink(sub), 0);
    CHECK_INT(rmdir(moved), 0);
    teardown(&f);
}

static void test_dispose_unfinished(void)
{
    fixture_t f;
    sink_t s;
    char path[PATH_MAX], tmp[PATH_MAX];
    setup(&f);
    path_in(&f, "left.bin", path, sizeof(path));

    sink_init(&s, &f.loop, &f.stats, 0);
    CHECK_INT(sink_open_file(&s, f.dir, path, "l"), 0);
    tmp_of(&f, &s, "", tmp, sizeof(tmp));
    CHECK_INT(feed(&f, &s, "partial", 7), 0);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    /* Disposed without commit or abort: no partial file stays behind. */
    sink_dispose(&s);
    CHECK(!exists(tmp));
    CHECK(!exists(path));
    teardown(&f);
}

/* Feeds pattern bytes [from, to) in pieces of at most 16 KiB. */
static void write_pattern_range(fixture_t *f, sink_t *s, size_t from, size_t to)
{
    char piece[16384];
    while (from < to) {
        size_t n = to - from < sizeof(piece) ? to - from : sizeof(piece);
        for (size_t i = 0; i < n; i++)
            piece[i] = (char)pattern(from + i);
        CHECK_INT(feed(f, s, piece, n), 0);
        from += n;
    }
}

static void sha_of_pattern(size_t total, char hex[65])
{
    mbedtls_sha256_context ctx;
    unsigned char d[32], b;
    mbedtls_sha256_init(&ctx);
    mbedtls_sha256_starts_ret(&ctx, 0);
    for (size_t i = 0; i < total; i++) {
        b = pattern(i);
        mbedtls_sha256_update_ret(&ctx, &b, 1);
    }
    mbedtls_sha256_finish_ret(&ctx, d);
    mbedtls_sha256_free(&ctx);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", d[i]);
}

/* A resumable sink: its partial file and meta file stay after an abort, in
 * order (no hole) whatever the writes in flight; a second sink continues it,
 * hashing the kept bytes first, and its commit renames it into place with
 * the server's mtime and removes the meta file. */
static void test_partial_resume(void)
{
    fixture_t f;
    sink_t s;
    char path[PATH_MAX], part[PATH_MAX], meta[PATH_MAX], v[128], hex[65], want[65];
    const size_t cut = 300000, total = 1000000;
    uint64_t size = 0;
    struct stat st;
    setup(&f);
    path_in(&f, "r.bin", path, sizeof(path));
    path_in(&f, ".r.bin.fetchd-part", part, sizeof(part));
    path_in(&f, ".r.bin.fetchd-meta", meta, sizeof(meta));

    CHECK_INT(sink_probe_partial(f.dir, path, "http://x/", &size, v, sizeof(v)), 0);
    sink_init(&s, &f.loop, &f.stats, 1);
    s.data = &f;
    sink_set_partial(&s, 0);
    CHECK_INT(sink_open_file(&s, f.dir, path, "1"), 0);
    CHECK_STR(s.tmp_name, ".r.bin.fetchd-part");
    CHECK_INT(sink_write_meta(&s, "\"v1\"", "http://x/"), 0);
    write_pattern_range(&f, &s, 0, cut);
    CHECK(s.writes_in_flight > 1); /* queued behind one another */
    CHECK_INT(sink_abort(&s, on_finish), SINK_PENDING);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    CHECK_INT(f.finished, 1);
    sink_dispose(&s);
    CHECK(check_pattern_file(part, cut));
    CHECK(exists(meta) && !exists(path));

    /* Another URL, or another target, has nothing to resume. */
    CHECK_INT(sink_probe_partial(f.dir, path, "http://y/", &size, v, sizeof(v)), 0);
    CHECK_INT(sink_probe_partial(f.dir, path, "http://x/", &size, v, sizeof(v)), 1);
    CHECK_INT(size, cut);
    CHECK_STR(v, "\"v1\"");

    sink_init(&s, &f.loop, &f.stats, 1);
    s.data = &f;
    sink_set_partial(&s, size);
    sink_set_mtime(&s, 1445412480);
    CHECK_INT(sink_open_file(&s, f.dir, path, "2"), 0);
    write_pattern_range(&f, &s, cut, total);
    CHECK_INT(s.bytes, total - cut);
    CHECK_INT(sink_commit(&s, on_finish), SINK_PENDING);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    CHECK_INT(f.status, 0);
    sink_sha256_hex(&s, hex);
    sha_of_pattern(total, want);
    CHECK_STR(hex, want);
    sink_dispose(&s);
    CHECK(check_pattern_file(path, total));
    CHECK(!exists(part) && !exists(meta));
    CHECK_INT(stat(path, &st), 0);
    CHECK_INT(st.st_mtime, 1445412480);
    CHECK_INT(unlink(path), 0);
    teardown(&f);
}

/* A partial file shorter than the probe said, and a second writer of the same
 * partial file: both refused; sink_remove_partial() removes both files. */
static void test_partial_refusals(void)
{
    fixture_t f;
    sink_t a, b;
    char path[PATH_MAX], part[PATH_MAX];
    setup(&f);
    path_in(&f, "p.bin", path, sizeof(path));
    path_in(&f, ".p.bin.fetchd-part", part, sizeof(part));

    sink_init(&a, &f.loop, &f.stats, 0);
    sink_set_partial(&a, 0);
    CHECK_INT(sink_open_file(&a, f.dir, path, "a"), 0);
    CHECK_INT(sink_write_meta(&a, "\"e\"", "u"), 0);
    sink_init(&b, &f.loop, &f.stats, 0);
    sink_set_partial(&b, 0);
    CHECK_INT(sink_open_file(&b, f.dir, path, "b"), ERR_IO); /* locked by a */
    CHECK_INT(b.cause, UV_EBUSY);
    sink_dispose(&b);
    sink_dispose(&a); /* unfinished: a resumable sink keeps its file */
    CHECK(exists(part));

    sink_init(&b, &f.loop, &f.stats, 0);
    sink_set_partial(&b, 10); /* the file is empty */
    CHECK_INT(sink_open_file(&b, f.dir, path, "b"), ERR_IO);
    sink_dispose(&b);
    CHECK_INT(sink_remove_partial(f.dir, path), 0);
    CHECK(!exists(part));
    CHECK_INT(sink_remove_partial(f.dir, path), 0); /* nothing left: not an error */
    teardown(&f);
}

static int check_file(const char *path, const char *want)
{
    char got[64] = "";
    FILE *fp = fopen(path, "r");
    if (fp == NULL)
        return 0;
    size_t n = fread(got, 1, sizeof(got) - 1, fp);
    fclose(fp);
    got[n] = '\0';
    return strcmp(got, want) == 0;
}

/* sink_set_no_replace(): commit fails rather than replace a file that
 * appeared at the target; the temporary file goes, the file stays. */
static void test_no_replace(void)
{
    fixture_t f;
    sink_t s;
    char path[PATH_MAX];
    setup(&f);
    path_in(&f, "nr.bin", path, sizeof(path));

    sink_init(&s, &f.loop, &f.stats, 0);
    s.data = &f;
    sink_set_no_replace(&s);
    CHECK_INT(sink_open_file(&s, f.dir, path, "n"), 0);
    CHECK_INT(feed(&f, &s, "new", 3), 0);
    FILE *fp = fopen(path, "w");
    CHECK(fp != NULL);
    fputs("old", fp);
    fclose(fp);
    CHECK_INT(sink_commit(&s, on_finish), SINK_PENDING);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    CHECK_INT(f.status, ERR_IO);
    CHECK_INT(s.cause, UV_EEXIST);
    sink_dispose(&s);
    CHECK_INT(part_files(f.dir), 0);
    CHECK(check_file(path, "old"));
    CHECK_INT(unlink(path), 0);
    teardown(&f);
}

static void touch(const char *path, time_t mtime)
{
    struct timespec ts[2] = {{.tv_sec = mtime}, {.tv_sec = mtime}};
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    CHECK_INT(futimens(fd, ts), 0);
    close(fd);
}

/* The sweep removes old partial and meta files (in subdirectories too), and
 * nothing else; the budget bounds the entries it looks at. */
static void test_sweep(void)
{
    fixture_t f;
    char p[PATH_MAX], sub[PATH_MAX];
    const time_t now = 2000000000;
    const char *old[] = {".a.fetchd-part", ".a.fetchd-meta", "sub/.b.fetchd-part"};
    const char *kept[] = {".c.fetchd-part", "a.fetchd-part", ".d.txt", "sub/e"};
    setup(&f);
    path_in(&f, "sub", sub, sizeof(sub));
    CHECK_INT(mkdir(sub, 0755), 0);
    for (size_t i = 0; i < 3; i++) {
        path_in(&f, old[i], p, sizeof(p));
        touch(p, now - 100000);
    }
    for (size_t i = 0; i < 4; i++) {
        path_in(&f, kept[i], p, sizeof(p));
        touch(p, i == 0 ? now - 10 : now - 100000);
    }
    CHECK_INT(sink_sweep_partials(f.dir, 86400, now, 0), 0); /* no budget, no work */
    CHECK_INT(sink_sweep_partials(f.dir, 86400, now, 1000), 3);
    for (size_t i = 0; i < 3; i++) {
        path_in(&f, old[i], p, sizeof(p));
        CHECK(!exists(p));
    }
    for (size_t i = 0; i < 4; i++) {
        path_in(&f, kept[i], p, sizeof(p));
        CHECK(exists(p));
        CHECK_INT(unlink(p), 0);
    }
    CHECK_INT(rmdir(sub), 0);
    teardown(&f);
}

/* A long target name gets a partial name that still fits NAME_MAX. */
static void test_partial_name(void)
{
    char name[NAME_MAX + 1], out[NAME_MAX + 1], out2[NAME_MAX + 1];
    sink_partial_name("x.iso", 0, out, sizeof(out));
    CHECK_STR(out, ".x.iso.fetchd-part");
    sink_partial_name("x.iso", 1, out, sizeof(out));
    CHECK_STR(out, ".x.iso.fetchd-meta");
    memset(name, 'n', NAME_MAX);
    name[NAME_MAX] = '\0';
    sink_partial_name(name, 0, out, sizeof(out));
    CHECK(strlen(out) <= NAME_MAX);
    name[0] = 'm';
    sink_partial_name(name, 0, out2, sizeof(out2));
    CHECK(strcmp(out, out2) != 0);
}

/* A cut memory sink keeps the first bytes and never fails. */
static void test_memory_cut(void)
{
    fixture_t f;
    sink_t s;
    size_t len;
    setup(&f);
    sink_init(&s, &f.loop, &f.stats, 0);
    sink_set_memory_cut(&s, 4);
    CHECK_INT(sink_write(&s, NULL, "abc", 3), 0);
    CHECK_INT(sink_write(&s, NULL, "defg", 4), 0);
    CHECK_INT(s.bytes, 7);
    char *m = sink_take_mem(&s, &len);
    CHECK_INT(len, 4);
    CHECK_STR(m, "abcd");
    mem_free(m);
    sink_dispose(&s);
    teardown(&f);
}

TEST_MAIN(TEST_CASE(test_discard_sha256), TEST_CASE(test_memory), TEST_CASE(test_file_commit),
          TEST_CASE(test_file_drain_then_commit), TEST_CASE(test_file_abort),
          TEST_CASE(test_file_write_error), TEST_CASE(test_strerror),
          TEST_CASE(test_file_alloc_failure), TEST_CASE(test_open_refuses),
          TEST_CASE(test_longest_name), TEST_CASE(test_swap_after_open),
          TEST_CASE(test_dispose_unfinished), TEST_CASE(test_decoded_file),
          TEST_CASE(test_decoded_truncated), TEST_CASE(test_decoded_limits),
          TEST_CASE(test_partial_resume), TEST_CASE(test_partial_refusals),
          TEST_CASE(test_no_replace), TEST_CASE(test_sweep), TEST_CASE(test_partial_name),
          TEST_CASE(test_memory_cut))
