/* decode — streaming content decoders; see decode.h.
 *
 * A chain is an array of stages, stage 0 undoing the coding applied last.
 * feed() runs one stage over its input and passes each piece of output to
 * the next stage, recursively, and the last stage's output to the caller's
 * callback. Each stage owns a DECODE_CHUNK scratch buffer that is reused
 * only after the later stages have consumed it, so the chain's memory is
 * fixed whatever the input: the libraries' own state plus n chunks.
 */
#include "decode.h"

#include <brotli/decode.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>
/* ZSTD_createDStream_advanced() and ZSTD_customMem (a custom allocator) are
 * in the "static linking only" part of zstd.h; Debian's libzstd.so exports them. */
#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>
#include <zstd_errors.h>

#include "err.h"
#include "mem.h"

/* RFC 8878 section 3.1.1.1.2: a decoder for HTTP may refuse frames whose
 * window exceeds 8 MiB; that bounds a zstd stream's memory. */
#define ZSTD_WINDOW_LOG_MAX 23

/* One coding of the chain. Owned by its decoder. */
typedef struct stage {
    decode_coding_t coding;
    int ended;      /* the current stream (member, frame) is complete */
    int sniffed;    /* deflate: the wrapper was chosen */
    unsigned nhold; /* deflate: bytes held until the first two are known */
    unsigned char hold[2];
    uint64_t in;        /* bytes fed to this stage */
    unsigned char *out; /* owned: DECODE_CHUNK bytes of scratch */
    z_stream z;         /* gzip, deflate: initialised when zinit */
    int zinit;
    BrotliDecoderState *br; /* owned (br) */
    ZSTD_DStream *zs;       /* owned (zstd) */
} stage_t;

struct decode_chain {
    stats_t *stats; /* borrowed */
    size_t n;
    uint64_t max_ratio;
    uint64_t in_bytes, out_bytes;
    int error; /* the first error, returned by every later call */
    char msg[160];
    stage_t st[DECODE_MAX_CODINGS];
};

static const struct {
    const char *name;
    decode_coding_t coding;
} names[] = {
    {"gzip", DECODE_GZIP}, {"x-gzip", DECODE_GZIP}, {"deflate", DECODE_DEFLATE},
    {"br", DECODE_BR},     {"zstd", DECODE_ZSTD},
};

const char *decode_coding_name(decode_coding_t c)
{
    switch (c) {
    case DECODE_GZIP:
        return "gzip";
    case DECODE_DEFLATE:
        return "deflate";
    case DECODE_BR:
        return "br";
    case DECODE_ZSTD:
        return "zstd";
    }
    return "?";
}

/* One list element: [start, end) with the surrounding blanks removed;
 * returns the position after it (at a ',' or the NUL), or NULL at the end. */
static const char *next_token(const char *p, const char **start, size_t *len)
{
    const char *end;

    while (*p == ' ' || *p == '\t' || *p == ',')
        p++;
    if (*p == '\0')
        return NULL;
    *start = p;
    while (*p && *p != ',')
        p++;
    end = p;
    while (end > *start && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    *len = (size_t)(end - *start);
    return p;
}

static int token_is(const char *start, size_t len, const char *name)
{
    return strlen(name) == len && strncasecmp(start, name, len) == 0;
}

/* Shared by both parsers: kind is "content" or "transfer", err the code of
 * a refusal; *chunked (transfer only) is set when the list ends in chunked. */
static int parse_list(const char *value, decode_coding_t out[DECODE_MAX_CODINGS], int *chunked,
                      const char *kind, int err, char *why, size_t whylen)
{
    const char *p = value, *start = NULL;
    size_t len = 0, i;
    int n = 0;

    while ((p = next_token(p, &start, &len)) != NULL) {
        if (chunked != NULL && *chunked) {
            snprintf(why, whylen, "transfer coding after chunked");
            return err;
        }
        if (chunked != NULL && token_is(start, len, "chunked")) {
            *chunked = 1;
            continue;
        }
        if (token_is(start, len, "identity"))
            continue;
        for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
            if (token_is(start, len, names[i].name))
                break;
        if (i == sizeof(names) / sizeof(names[0])) {
            snprintf(why, whylen, "unknown %s coding '%.*s'", kind, (int)(len > 40 ? 40 : len),
                     start);
            return err;
        }
        if (n == DECODE_MAX_CODINGS) {
            snprintf(why, whylen, "more than %d stacked %s codings", DECODE_MAX_CODINGS, kind);
            return err;
        }
        out[n++] = names[i].coding;
    }
    return n;
}

int decode_parse(const char *value, decode_coding_t out[DECODE_MAX_CODINGS], char *why,
                 size_t whylen)
{
    return parse_list(value, out, NULL, "content", ERR_CONTENT_DECODING, why, whylen);
}

int decode_parse_transfer(const char *value, decode_coding_t out[DECODE_MAX_CODINGS], int *chunked,
                          char *why, size_t whylen)
{
    *chunked = 0;
    return parse_list(value, out, chunked, "transfer", ERR_PROTOCOL, why, whylen);
}

/* ---- the libraries' allocators ------------------------------------------------ */

static voidpf z_alloc(voidpf opaque, uInt items, uInt size)
{
    (void)opaque;
    if (size != 0 && items > SIZE_MAX / size)
        return Z_NULL;
    return mem_alloc_as(MEM_ZLIB, (size_t)items * size);
}

static void z_free(voidpf opaque, voidpf p)
{
    (void)opaque;
    mem_free(p);
}

static void *br_alloc(void *opaque, size_t size)
{
    (void)opaque;
    return mem_alloc_as(MEM_BROTLI, size);
}

static void br_free(void *opaque, void *p)
{
    (void)opaque;
    mem_free(p);
}

static void *zs_alloc(void *opaque, size_t size)
{
    (void)opaque;
    return mem_alloc_as(MEM_ZSTD, size);
}

static void zs_free(void *opaque, void *p)
{
    (void)opaque;
    mem_free(p);
}

/* ---- errors --------------------------------------------------------------------- */

static int fail(decode_chain_t *d, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records the first error and its reason; returns err. */
static int fail(decode_chain_t *d, int err, const char *fmt, ...)
{
    va_list ap;

    if (d->error != 0)
        return d->error;
    d->error = err;
    va_start(ap, fmt);
    vsnprintf(d->msg, sizeof(d->msg), fmt, ap);
    va_end(ap);
    return err;
}

const char *decode_strerror(const decode_chain_t *d)
{
    return d->msg[0] ? d->msg : err_str(d->error);
}

/* ---- setup ---------------------------------------------------------------------- */

static int stage_init(stage_t *st, decode_coding_t c)
{
    st->coding = c;
    st->out = mem_alloc(DECODE_CHUNK);
    if (st->out == NULL)
        return ERR_NO_MEMORY;
    switch (c) {
    case DECODE_GZIP:
    case DECODE_DEFLATE:
        st->z.zalloc = z_alloc;
        st->z.zfree = z_free;
        st->z.opaque = Z_NULL;
        /* deflate starts zlib-wrapped; the first two bytes may switch it to raw. */
        if (inflateInit2(&st->z, c == DECODE_GZIP ? 16 + MAX_WBITS : MAX_WBITS) != Z_OK)
            return ERR_NO_MEMORY;
        st->zinit = 1;
        return 0;
    case DECODE_BR:
        st->br = BrotliDecoderCreateInstance(br_alloc, br_free, NULL);
        return st->br ? 0 : ERR_NO_MEMORY;
    case DECODE_ZSTD:
        st->zs = ZSTD_createDStream_advanced((ZSTD_customMem){zs_alloc, zs_free, NULL});
        if (st->zs == NULL)
            return ERR_NO_MEMORY;
        if (ZSTD_isError(ZSTD_DCtx_setParameter(st->zs, ZSTD_d_windowLogMax, ZSTD_WINDOW_LOG_MAX)))
            return ERR_NO_MEMORY;
        return 0;
    }
    return ERR_INVALID_REQUEST;
}

static void stage_dispose(stage_t *st)
{
    if (st->zinit)
        inflateEnd(&st->z);
    if (st->br)
        BrotliDecoderDestroyInstance(st->br);
    if (st->zs)
        ZSTD_freeDStream(st->zs);
    mem_free(st->out);
}

int decode_create(decode_chain_t **out, const decode_coding_t *codings, size_t n,
                  uint64_t max_ratio, stats_t *stats)
{
    decode_chain_t *d;
    int rc = 0;

    *out = NULL;
    if (n == 0 || n > DECODE_MAX_CODINGS)
        return ERR_INVALID_REQUEST;
    d = mem_calloc(1, sizeof(*d));
    if (d == NULL)
        return ERR_NO_MEMORY;
    d->stats = stats;
    d->n = n;
    d->max_ratio = max_ratio;
    stats_obj_created(stats, STATS_OBJ_DECODER);
    /* The coding applied last is undone first. */
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = stage_init(&d->st[i], codings[n - 1 - i]);
    if (rc != 0) {
        decode_destroy(d);
        return rc;
    }
    *out = d;
    return 0;
}

void decode_destroy(decode_chain_t *d)
{
    if (d == NULL)
        return;
    for (size_t i = 0; i < d->n; i++)
        stage_dispose(&d->st[i]);
    stats_obj_destroyed(d->stats, STATS_OBJ_DECODER);
    mem_free(d);
}

/* ---- decoding ------------------------------------------------------------------- */

static int feed(decode_chain_t *d, size_t k, const unsigned char *in, size_t len, decode_out_cb cb,
                void *data);

/* The chain's output: counted, checked against the ratio cap, handed over. */
static int emit(decode_chain_t *d, const unsigned char *p, size_t len, decode_out_cb cb, void *data)
{
    int rc;

    d->out_bytes += len;
    if (d->max_ratio && d->out_bytes > DECODE_RATIO_MIN &&
        d->out_bytes / d->max_ratio > d->in_bytes)
        return fail(d, ERR_CONTENT_DECODING,
                    "decoded size passes %" PRIu64
                    " times the encoded size (a decompression bomb?)",
                    d->max_ratio);
    rc = cb(data, (const char *)p, len);
    if (rc != 0)
        return fail(d, rc, "%s", err_str(rc));
    return 0;
}

/* Passes out[0..len) to the stage after k, or to the caller after the last. */
static int pass_on(decode_chain_t *d, size_t k, const unsigned char *p, size_t len,
                   decode_out_cb cb, void *data)
{
    if (len == 0)
        return 0;
    if (k + 1 == d->n)
        return emit(d, p, len, cb, data);
    return feed(d, k + 1, p, len, cb, data);
}

static int run_zlib(decode_chain_t *d, size_t k, const unsigned char *in, size_t len,
                    decode_out_cb cb, void *data)
{
    stage_t *st = &d->st[k];
    z_stream *z = &st->z;
    const char *name = decode_coding_name(st->coding);
    int zr, rc;

    z->next_in = (Bytef *)(uintptr_t)in; /* zlib only reads it */
    z->avail_in = (uInt)len;
    /* Each turn consumes input or produces output, so this ends. */
    for (;;) {
        if (st->ended) {
            if (z->avail_in == 0)
                return 0;
            /* gzip members may be concatenated (RFC 1952 section 2.2). */
            if (st->coding != DECODE_GZIP)
                return fail(d, ERR_CONTENT_DECODING, "%s: data after the end of the stream", name);
            if (inflateReset(z) != Z_OK)
                return fail(d, ERR_CONTENT_DECODING, "%s: cannot restart", name);
            st->ended = 0;
        }
        z->next_out = st->out;
        z->avail_out = DECODE_CHUNK;
        zr = inflate(z, Z_NO_FLUSH);
        if (zr == Z_MEM_ERROR)
            return fail(d, ERR_NO_MEMORY, "%s: out of memory", name);
        if (zr == Z_DATA_ERROR || zr == Z_NEED_DICT || zr == Z_STREAM_ERROR)
            return fail(d, ERR_CONTENT_DECODING, "%s: %s", name, z->msg ? z->msg : "corrupt data");
        rc = pass_on(d, k, st->out, DECODE_CHUNK - z->avail_out, cb, data);
        if (rc != 0)
            return rc;
        if (zr == Z_STREAM_END)
            st->ended = 1;
        else if (z->avail_out != 0)
            return 0; /* all input consumed and all output flushed */
    }
}

/* deflate: RFC 9110 means the zlib format (RFC 1950), but servers have sent
 * raw deflate (RFC 1951) for decades and browsers accept both; a zlib header
 * is recognised by its first two bytes (CM 8, check bits). */
static int run_deflate(decode_chain_t *d, size_t k, const unsigned char *in, size_t len,
                       decode_out_cb cb, void *data)
{
    stage_t *st = &d->st[k];
    int rc;

    if (!st->sniffed) {
        while (st->nhold < 2 && len > 0) {
            st->hold[st->nhold++] = *in++;
            len--;
        }
        if (st->nhold < 2)
            return 0;
        st->sniffed = 1;
        if ((st->hold[0] & 0x0f) != 8 || ((st->hold[0] << 8) | st->hold[1]) % 31 != 0) {
            if (inflateReset2(&st->z, -MAX_WBITS) != Z_OK)
                return fail(d, ERR_CONTENT_DECODING, "deflate: cannot switch to raw deflate");
        }
        rc = run_zlib(d, k, st->hold, 2, cb, data);
        if (rc != 0 || len == 0)
            return rc;
    }
    return run_zlib(d, k, in, len, cb, data);
}

/* Brotli's error strings look like "_ERROR_FORMAT_PADDING_1". */
static const char *br_error(BrotliDecoderErrorCode code)
{
    const char *s = BrotliDecoderErrorString(code);
    while (*s == '_')
        s++;
    return s;
}

static int run_br(decode_chain_t *d, size_t k, const unsigned char *in, size_t len,
                  decode_out_cb cb, void *data)
{
    stage_t *st = &d->st[k];
    const uint8_t *next_in = in;
    size_t avail_in = len;
    int rc;

    for (;;) {
        uint8_t *next_out = st->out;
        size_t avail_out = DECODE_CHUNK;
        BrotliDecoderResult r;

        if (st->ended)
            return avail_in == 0
                       ? 0
                       : fail(d, ERR_CONTENT_DECODING, "br: data after the end of the stream");
        r = BrotliDecoderDecompressStream(st->br, &avail_in, &next_in, &avail_out, &next_out, NULL);
        if (r == BROTLI_DECODER_RESULT_ERROR) {
            BrotliDecoderErrorCode code = BrotliDecoderGetErrorCode(st->br);
            if (code <= BROTLI_DECODER_ERROR_ALLOC_CONTEXT_MODES &&
                code >= BROTLI_DECODER_ERROR_ALLOC_BLOCK_TYPE_TREES)
                return fail(d, ERR_NO_MEMORY, "br: out of memory");
            return fail(d, ERR_CONTENT_DECODING, "br: %s", br_error(code));
        }
        rc = pass_on(d, k, st->out, DECODE_CHUNK - avail_out, cb, data);
        if (rc != 0)
            return rc;
        if (r == BROTLI_DECODER_RESULT_SUCCESS)
            st->ended = 1;
        else if (r == BROTLI_DECODER_RESULT_NEEDS_MORE_INPUT)
            return 0;
    }
}

static int run_zstd(decode_chain_t *d, size_t k, const unsigned char *in, size_t len,
                    decode_out_cb cb, void *data)
{
    stage_t *st = &d->st[k];
    ZSTD_inBuffer ib = {in, len, 0};
    int rc;

    for (;;) {
        ZSTD_outBuffer ob = {st->out, DECODE_CHUNK, 0};
        size_t r = ZSTD_decompressStream(st->zs, &ob, &ib);
        if (ZSTD_isError(r)) {
            switch (ZSTD_getErrorCode(r)) {
            case ZSTD_error_memory_allocation:
                return fail(d, ERR_NO_MEMORY, "zstd: out of memory");
            case ZSTD_error_frameParameter_windowTooLarge:
                return fail(d, ERR_CONTENT_DECODING, "zstd: a window larger than %u bytes",
                            1u << ZSTD_WINDOW_LOG_MAX);
            default:
                return fail(d, ERR_CONTENT_DECODING, "zstd: %s", ZSTD_getErrorName(r));
            }
        }
        rc = pass_on(d, k, st->out, ob.pos, cb, data);
        if (rc != 0)
            return rc;
        /* 0: a frame is complete and fully flushed; the next byte starts
         * another frame (RFC 8878 allows several). */
        st->ended = r == 0;
        if (ib.pos == ib.size && ob.pos < ob.size)
            return 0;
    }
}

static int feed(decode_chain_t *d, size_t k, const unsigned char *in, size_t len, decode_out_cb cb,
                void *data)
{
    stage_t *st = &d->st[k];

    st->in += len;
    switch (st->coding) {
    case DECODE_GZIP:
        return run_zlib(d, k, in, len, cb, data);
    case DECODE_DEFLATE:
        return run_deflate(d, k, in, len, cb, data);
    case DECODE_BR:
        return run_br(d, k, in, len, cb, data);
    case DECODE_ZSTD:
        return run_zstd(d, k, in, len, cb, data);
    }
    return fail(d, ERR_CONTENT_DECODING, "unknown coding");
}

int decode_write(decode_chain_t *d, const char *in, size_t len, decode_out_cb cb, void *data)
{
    const unsigned char *p = (const unsigned char *)in;

    if (d->error != 0)
        return d->error;
    /* zlib counts in uInt: feed at most 1 GiB at a time. */
    while (len > 0) {
        size_t n = len > (1u << 30) ? (1u << 30) : len;
        int rc;
        d->in_bytes += n;
        rc = feed(d, 0, p, n, cb, data);
        if (rc != 0)
            return rc;
        p += n;
        len -= n;
    }
    return 0;
}

int decode_finish(decode_chain_t *d)
{
    if (d->error != 0)
        return d->error;
    for (size_t k = 0; k < d->n; k++) {
        const stage_t *st = &d->st[k];
        /* No byte at all is an empty body, not a truncated stream. */
        if (st->in > 0 && !st->ended)
            return fail(d, ERR_CONTENT_DECODING, "%s: truncated stream (%" PRIu64 " bytes in)",
                        decode_coding_name(st->coding), st->in);
    }
    return 0;
}

uint64_t decode_bytes_in(const decode_chain_t *d)
{
    return d->in_bytes;
}

uint64_t decode_bytes_out(const decode_chain_t *d)
{
    return d->out_bytes;
}
