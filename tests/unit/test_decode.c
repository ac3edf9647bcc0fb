/* Unit tests for daemon/decode.c: every coding, stacked codings, truncated,
 * corrupt and bomb streams, allocation failure inside the libraries, and
 * the heap and object counts back at their baseline after each. The
 * encoded inputs are made here with the libraries' own encoders. */
#include <brotli/encode.h>
#include <stdint.h>
#include <stdlib.h>
#include <zlib.h>
#include <zstd.h>

#include "decode.h"
#include "err.h"
#include "mem.h"
#include "stats.h"
#include "test.h"

static stats_t stats;

typedef struct bytes {
    unsigned char *p;
    size_t len, cap;
} bytes_t;

static void put(bytes_t *b, const void *p, size_t len)
{
    if (b->len + len > b->cap) {
        b->cap = (b->len + len) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (b->p == NULL)
            abort();
    }
    memcpy(b->p + b->len, p, len);
    b->len += len;
}

/* The decoded output of a test, collected by the callback. */
static int collect(void *data, const char *p, size_t len)
{
    put(data, p, len);
    return 0;
}

/* The sample content: compressible, but not all zeros. */
static bytes_t sample(size_t len)
{
    bytes_t b = {0};
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)("fetchd decodes what it asked for. "[i % 34] ^ (i / 997));
        put(&b, &c, 1);
    }
    return b;
}

/* windowBits: 16+15 gzip, 15 zlib, -15 raw deflate. */
static bytes_t zlib_encode(const bytes_t *in, int wbits)
{
    bytes_t out = {0};
    z_stream z;
    unsigned char chunk[16384];
    int zr;

    memset(&z, 0, sizeof(z));
    if (deflateInit2(&z, 6, Z_DEFLATED, wbits, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        abort();
    z.next_in = in->p;
    z.avail_in = (uInt)in->len;
    do {
        z.next_out = chunk;
        z.avail_out = sizeof(chunk);
        zr = deflate(&z, Z_FINISH);
        put(&out, chunk, sizeof(chunk) - z.avail_out);
    } while (zr == Z_OK);
    if (zr != Z_STREAM_END)
        abort();
    deflateEnd(&z);
    return out;
}

static bytes_t br_encode(const bytes_t *in)
{
    bytes_t out = {0};
    size_t n = BrotliEncoderMaxCompressedSize(in->len) + 16;
    out.p = malloc(n);
    if (out.p == NULL ||
        !BrotliEncoderCompress(5, 22, BROTLI_MODE_GENERIC, in->len, in->p, &n, out.p))
        abort();
    out.len = out.cap = n;
    return out;
}

static bytes_t zstd_encode(const bytes_t *in)
{
    bytes_t out = {0};
    size_t n = ZSTD_compressBound(in->len);
    out.p = malloc(n);
    if (out.p == NULL)
        abort();
    /* With a checksum, as the zstd tool writes by default: without one,
     * corruption inside a block can decode to wrong bytes undetected. */
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(cc, ZSTD_c_checksumFlag, 1);
    n = ZSTD_compress2(cc, out.p, n, in->p, in->len);
    ZSTD_freeCCtx(cc);
    if (ZSTD_isError(n))
        abort();
    out.len = out.cap = n;
    return out;
}

static bytes_t encode(decode_coding_t c, const bytes_t *in)
{
    switch (c) {
    case DECODE_GZIP:
        return zlib_encode(in, 16 + 15);
    case DECODE_DEFLATE:
        return zlib_encode(in, 15);
    case DECODE_BR:
        return br_encode(in);
    case DECODE_ZSTD:
        return zstd_encode(in);
    }
    abort();
}

static uint64_t heap_blocks(void)
{
    uint64_t total = 0, b;
    for (int c = 0; c < MEM__COUNT; c++) {
        mem_get(c, &b, NULL);
        total += b;
    }
    return total;
}

/* Decodes in with the chain codings[0..n) (in the order applied), feeding
 * step bytes at a time; returns the first error, with the output in *out. */
static int run(const decode_coding_t *codings, size_t n, const bytes_t *in, size_t step,
               uint64_t max_ratio, bytes_t *out)
{
    decode_chain_t *d;
    int rc = decode_create(&d, codings, n, max_ratio, &stats);
    if (rc != 0)
        return rc;
    CHECK_INT(stats.objects[STATS_OBJ_DECODER], 1);
    for (size_t at = 0; rc == 0 && at < in->len; at += step)
        rc = decode_write(d, (const char *)in->p + at, in->len - at < step ? in->len - at : step,
                          collect, out);
    if (rc == 0)
        rc = decode_finish(d);
    if (rc != 0)
        CHECK(decode_strerror(d)[0] != '\0');
    decode_destroy(d);
    CHECK_INT(stats.objects[STATS_OBJ_DECODER], 0);
    return rc;
}

static const decode_coding_t all[] = {DECODE_GZIP, DECODE_DEFLATE, DECODE_BR, DECODE_ZSTD};

static void test_every_coding(void)
{
    bytes_t plain = sample(300000);
    uint64_t base = heap_blocks();

    for (size_t i = 0; i < 4; i++) {
        bytes_t enc = encode(all[i], &plain);
        const size_t steps[] = {1, 7, 4096, enc.len};
        for (size_t s = 0; s < 4; s++) {
            bytes_t out = {0};
            CHECK_INT(run(&all[i], 1, &enc, steps[s], 1000, &out), 0);
            CHECK_INT(out.len, plain.len);
            CHECK(out.len == plain.len && memcmp(out.p, plain.p, plain.len) == 0);
            free(out.p);
        }
        free(enc.p);
    }
    CHECK_INT(heap_blocks(), base);
    free(plain.p);
}

static void test_raw_deflate(void)
{
    bytes_t plain = sample(5000), enc = zlib_encode(&plain, -15), out = {0};
    decode_coding_t c = DECODE_DEFLATE;

    CHECK_INT(run(&c, 1, &enc, 1, 0, &out), 0);
    CHECK(out.len == plain.len && memcmp(out.p, plain.p, plain.len) == 0);
    free(out.p);
    free(enc.p);
    free(plain.p);
}

/* "Content-Encoding: gzip, br": gzip was applied first, so br is undone first. */
static void test_stacked(void)
{
    bytes_t plain = sample(100000), gz = zlib_encode(&plain, 31), both = br_encode(&gz);
    bytes_t out = {0}, three = zstd_encode(&both), out3 = {0};
    decode_coding_t c2[] = {DECODE_GZIP, DECODE_BR};
    decode_coding_t c3[] = {DECODE_GZIP, DECODE_BR, DECODE_ZSTD};
    decode_coding_t wrong[] = {DECODE_BR, DECODE_GZIP};
    bytes_t junk = {0};

    CHECK_INT(run(c2, 2, &both, 1000, 1000, &out), 0);
    CHECK(out.len == plain.len && memcmp(out.p, plain.p, plain.len) == 0);
    CHECK_INT(run(c3, 3, &three, 333, 1000, &out3), 0);
    CHECK(out3.len == plain.len && memcmp(out3.p, plain.p, plain.len) == 0);
    /* The order matters: undoing gzip first is corrupt data. */
    CHECK_INT(run(wrong, 2, &both, 1000, 1000, &junk), ERR_CONTENT_DECODING);
    free(out.p);
    free(out3.p);
    free(junk.p);
    free(both.p);
    free(three.p);
    free(gz.p);
    free(plain.p);
}

static void test_truncated(void)
{
    bytes_t plain = sample(200000);
    uint64_t base = heap_blocks();

    for (size_t i = 0; i < 4; i++) {
        bytes_t enc = encode(all[i], &plain);
        const size_t cut[] = {1, 4, enc.len / 2, enc.len - 1};
        for (size_t c = 0; c < 4; c++) {
            bytes_t part = {enc.p, cut[c], cut[c]}, out = {0};
            CHECK_INT(run(&all[i], 1, &part, 512, 1000, &out), ERR_CONTENT_DECODING);
            free(out.p);
        }
        free(enc.p);
    }
    CHECK_INT(heap_blocks(), base);
    free(plain.p);
}

static void test_corrupt(void)
{
    bytes_t plain = sample(200000);

    for (size_t i = 0; i < 4; i++) {
        bytes_t enc = encode(all[i], &plain), out = {0};
        /* Garbage in the middle of the stream. */
        for (size_t j = enc.len / 3; j < enc.len / 3 + 64; j++)
            enc.p[j] ^= 0x5a;
        CHECK_INT(run(&all[i], 1, &enc, 4096, 1000, &out), ERR_CONTENT_DECODING);
        free(out.p);
        free(enc.p);
    }
    /* Not compressed at all. */
    for (size_t i = 0; i < 4; i++) {
        bytes_t text = {(unsigned char *)"<html>hello</html>\n", 19, 19}, out = {0};
        CHECK_INT(run(&all[i], 1, &text, 19, 1000, &out), ERR_CONTENT_DECODING);
        free(out.p);
    }
    free(plain.p);
}

/* Bytes after the end of a deflate or br stream are refused; gzip members
 * and zstd frames may follow each other. */
static void test_after_end(void)
{
    bytes_t plain = sample(10000);

    for (size_t i = 0; i < 4; i++) {
        bytes_t enc = encode(all[i], &plain), twice = {0}, out = {0};
        int rc;
        put(&twice, enc.p, enc.len);
        put(&twice, enc.p, enc.len);
        rc = run(&all[i], 1, &twice, 1000, 1000, &out);
        if (all[i] == DECODE_GZIP || all[i] == DECODE_ZSTD) {
            CHECK_INT(rc, 0);
            CHECK_INT(out.len, 2 * plain.len);
        } else {
            CHECK_INT(rc, ERR_CONTENT_DECODING);
        }
        free(out.p);
        free(twice.p);
        free(enc.p);
    }
    free(plain.p);
}

static void test_empty_body(void)
{
    bytes_t none = {0}, out = {0};
    for (size_t i = 0; i < 4; i++)
        CHECK_INT(run(&all[i], 1, &none, 1, 1000, &out), 0);
    CHECK_INT(out.len, 0);
}

static int count_only(void *data, const char *p, size_t len)
{
    (void)p;
    *(uint64_t *)data += len;
    return 0;
}

/* 64 MiB of zeros is about 64 KiB of gzip (far less with br and zstd): a
 * ratio of 1000 or more. With a cap of 100 decoding stops once the output
 * passes 100 times the input. */
static void test_bomb(void)
{
    size_t len = 64u << 20;
    bytes_t zeros = {calloc(1, len), len, len};
    uint64_t base = heap_blocks();

    for (size_t i = 0; i < 4; i++) {
        bytes_t enc = encode(all[i], &zeros);
        decode_chain_t *d;
        uint64_t n = 0;
        int rc;
        CHECK(enc.len * 100 < len);
        CHECK_INT(decode_create(&d, &all[i], 1, 100, &stats), 0);
        rc = decode_write(d, (const char *)enc.p, enc.len, count_only, &n);
        CHECK_INT(rc, ERR_CONTENT_DECODING);
        CHECK(strstr(decode_strerror(d), "times the encoded size") != NULL);
        /* Stopped as soon as the output passed 100 times the input. */
        CHECK(decode_bytes_out(d) <=
              (100 * enc.len > DECODE_RATIO_MIN ? 100 * enc.len : DECODE_RATIO_MIN) + DECODE_CHUNK);
        /* The piece that passed the cap was not handed on. */
        CHECK(n < decode_bytes_out(d) && n + DECODE_CHUNK >= decode_bytes_out(d));
        CHECK_INT(decode_write(d, "x", 1, count_only, &n), ERR_CONTENT_DECODING);
        CHECK_INT(decode_finish(d), ERR_CONTENT_DECODING);
        decode_destroy(d);
        free(enc.p);
    }
    CHECK_INT(heap_blocks(), base);
    free(zeros.p);
}

static void test_no_ratio_cap(void)
{
    size_t len = 8u << 20;
    bytes_t zeros = {calloc(1, len), len, len}, enc = zlib_encode(&zeros, 31);
    decode_coding_t c = DECODE_GZIP;
    decode_chain_t *d;
    uint64_t n = 0;

    CHECK_INT(decode_create(&d, &c, 1, 0, &stats), 0);
    CHECK_INT(decode_write(d, (const char *)enc.p, enc.len, count_only, &n), 0);
    CHECK_INT(decode_finish(d), 0);
    CHECK_INT(n, len);
    CHECK_INT(decode_bytes_in(d), enc.len);
    CHECK_INT(decode_bytes_out(d), len);
    decode_destroy(d);
    free(enc.p);
    free(zeros.p);
}

static int refuse(void *data, const char *p, size_t len)
{
    (void)data;
    (void)p;
    (void)len;
    return ERR_BODY_TOO_LARGE;
}

/* The callback's error stops decoding and comes back unchanged. */
static void test_callback_error(void)
{
    bytes_t plain = sample(1000), enc = zlib_encode(&plain, 31);
    decode_coding_t c = DECODE_GZIP;
    decode_chain_t *d;

    CHECK_INT(decode_create(&d, &c, 1, 0, &stats), 0);
    CHECK_INT(decode_write(d, (const char *)enc.p, enc.len, refuse, NULL), ERR_BODY_TOO_LARGE);
    CHECK_INT(decode_finish(d), ERR_BODY_TOO_LARGE);
    decode_destroy(d);
    free(enc.p);
    free(plain.p);
}

/* Every allocation in turn fails, inside fetchd's code or the library's:
 * the result is a clean ERR_NO_MEMORY (never a decoding error, never a
 * crash), and the heap is back at its baseline after each. */
static void test_alloc_failure(void)
{
    bytes_t plain = sample(300000);
    decode_coding_t stacked[] = {DECODE_ZSTD, DECODE_GZIP, DECODE_BR, DECODE_DEFLATE};

    for (size_t i = 0; i < 5; i++) {
        const decode_coding_t *c = i < 4 ? &all[i] : stacked;
        size_t n = i < 4 ? 1 : 4;
        bytes_t enc = {0};
        int done = 0, failures = 0;
        {
            bytes_t cur = {0};
            put(&cur, plain.p, plain.len);
            for (size_t k = 0; k < n; k++) {
                bytes_t next = encode(c[k], &cur);
                free(cur.p);
                cur = next;
            }
            enc = cur;
        }
        for (long fail = 1; fail < 400 && !done; fail++) {
            uint64_t base = heap_blocks();
            bytes_t out = {0};
            int rc;
            mem_fail_after(fail);
            rc = run(c, n, &enc, 8192, 1000, &out);
            if (mem_fail_pending()) {
                /* The injection was never reached: every allocation is tested. */
                done = 1;
                CHECK_INT(rc, 0);
                CHECK(out.len == plain.len && memcmp(out.p, plain.p, plain.len) == 0);
            } else {
                CHECK_INT(rc, ERR_NO_MEMORY);
                failures++;
            }
            mem_fail_after(0);
            CHECK_INT(heap_blocks(), base);
            free(out.p);
        }
        CHECK(done);
        CHECK(failures >= (int)n + 1);
        free(enc.p);
    }
    free(plain.p);
}

static void test_components_counted(void)
{
    uint64_t z0, b0, s0, z1, b1, s1;
    decode_chain_t *d;

    mem_get(MEM_ZLIB, &z0, NULL);
    mem_get(MEM_BROTLI, &b0, NULL);
    mem_get(MEM_ZSTD, &s0, NULL);
    CHECK_INT(decode_create(&d, all, 4, 0, &stats), 0);
    mem_get(MEM_ZLIB, &z1, NULL);
    mem_get(MEM_BROTLI, &b1, NULL);
    mem_get(MEM_ZSTD, &s1, NULL);
    CHECK(z1 > z0 && b1 > b0 && s1 > s0);
    decode_destroy(d);
    mem_get(MEM_ZLIB, &z1, NULL);
    mem_get(MEM_BROTLI, &b1, NULL);
    mem_get(MEM_ZSTD, &s1, NULL);
    CHECK(z1 == z0 && b1 == b0 && s1 == s0);
    CHECK_STR(mem_component_name(MEM_ZLIB), "zlib");
    CHECK_STR(mem_component_name(MEM_BROTLI), "brotli");
    CHECK_STR(mem_component_name(MEM_ZSTD), "zstd");
    CHECK_STR(stats_obj_label(STATS_OBJ_DECODER), "decoder");
}

static void test_parse(void)
{
    decode_coding_t c[DECODE_MAX_CODINGS];
    char why[128];

    CHECK_INT(decode_parse("gzip", c, why, sizeof(why)), 1);
    CHECK_INT(c[0], DECODE_GZIP);
    CHECK_INT(decode_parse(" GZip ,br", c, why, sizeof(why)), 2);
    CHECK_INT(c[0], DECODE_GZIP);
    CHECK_INT(c[1], DECODE_BR);
    CHECK_INT(decode_parse("x-gzip, identity, zstd,, deflate", c, why, sizeof(why)), 3);
    CHECK_INT(c[2], DECODE_DEFLATE);
    CHECK_INT(decode_parse("identity", c, why, sizeof(why)), 0);
    CHECK_INT(decode_parse("", c, why, sizeof(why)), 0);
    CHECK_INT(decode_parse("gzip, compress", c, why, sizeof(why)), ERR_CONTENT_DECODING);
    CHECK_STR(why, "unknown content coding 'compress'");
    CHECK_INT(decode_parse("gzip,gzip,gzip,gzip,gzip", c, why, sizeof(why)), ERR_CONTENT_DECODING);
    CHECK(strstr(why, "stacked") != NULL);
}

static void test_parse_transfer(void)
{
    decode_coding_t c[DECODE_MAX_CODINGS];
    char why[128];
    int chunked = -1;

    CHECK_INT(decode_parse_transfer("chunked", c, &chunked, why, sizeof(why)), 0);
    CHECK_INT(chunked, 1);
    CHECK_INT(decode_parse_transfer("gzip, Chunked", c, &chunked, why, sizeof(why)), 1);
    CHECK_INT(chunked, 1);
    CHECK_INT(c[0], DECODE_GZIP);
    CHECK_INT(decode_parse_transfer("deflate", c, &chunked, why, sizeof(why)), 1);
    CHECK_INT(chunked, 0);
    CHECK_INT(decode_parse_transfer("chunked, gzip", c, &chunked, why, sizeof(why)), ERR_PROTOCOL);
    CHECK_STR(why, "transfer coding after chunked");
    CHECK_INT(decode_parse_transfer("x, chunked", c, &chunked, why, sizeof(why)), ERR_PROTOCOL);
    CHECK_STR(why, "unknown transfer coding 'x'");
}

static void test_zstd_window_limit(void)
{
    size_t len = 24u << 20;
    bytes_t plain = sample(len), enc = {0}, out = {0};
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    decode_coding_t c = DECODE_ZSTD;
    size_t n = ZSTD_compressBound(len);

    /* A 32 MiB window (long-distance matching), as a bomb by memory would use. */
    enc.p = malloc(n);
    ZSTD_CCtx_setParameter(cc, ZSTD_c_windowLog, 25);
    ZSTD_CCtx_setParameter(cc, ZSTD_c_enableLongDistanceMatching, 1);
    n = ZSTD_compress2(cc, enc.p, n, plain.p, len);
    CHECK(!ZSTD_isError(n));
    enc.len = enc.cap = n;
    CHECK_INT(run(&c, 1, &enc, 65536, 0, &out), ERR_CONTENT_DECODING);
    ZSTD_freeCCtx(cc);
    free(out.p);
    free(enc.p);
    free(plain.p);
}

TEST_MAIN(TEST_CASE(test_every_coding), TEST_CASE(test_raw_deflate), TEST_CASE(test_stacked),
          TEST_CASE(test_truncated), TEST_CASE(test_corrupt), TEST_CASE(test_after_end),
          TEST_CASE(test_empty_body), TEST_CASE(test_bomb), TEST_CASE(test_no_ratio_cap),
          TEST_CASE(test_callback_error), TEST_CASE(test_alloc_failure),
          TEST_CASE(test_components_counted), TEST_CASE(test_parse), TEST_CASE(test_parse_transfer),
          TEST_CASE(test_zstd_window_limit))
