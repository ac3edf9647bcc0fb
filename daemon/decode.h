/* decode — streaming decoders for HTTP content (and transfer) codings:
 * gzip and deflate (zlib), br (libbrotli), zstd (libzstd).
 *
 * A decode_chain_t is a chain: the codings of one Content-Encoding (or of a
 * Transfer-Encoding without its final "chunked") in the order the sender
 * applied them; the chain undoes the last one first. It is fed the encoded
 * bytes as they arrive (decode_write) and hands the decoded bytes to a
 * callback, in pieces of at most DECODE_CHUNK bytes that live in the
 * decoder's own scratch buffer and are valid only during the call.
 * decode_finish() says whether every stream ended properly: a stream that
 * stops early is an error even when the HTTP framing was complete.
 *
 * Every allocation of the libraries goes through the counting allocator
 * under the components "zlib", "brotli" and "zstd"; the chain itself is one
 * "decoder" object (stats.h).
 *
 * Bounds: the chain stacks at most DECODE_MAX_CODINGS codings; zstd frames
 * may use a window of at most 8 MiB (RFC 8878, section 3.1.1.1.2, for
 * HTTP); and with max_ratio set, once more than DECODE_RATIO_MIN bytes came
 * out, the output may not exceed max_ratio times the input (a
 * decompression bomb). Each violation is ERR_CONTENT_DECODING.
 *
 * Ownership: the caller owns the decode_chain_t (decode_create/decode_destroy).
 * Nothing in it refers to the caller except during a call.
 */
#ifndef FETCHD_DECODE_H
#define FETCHD_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "stats.h"

typedef enum decode_coding {
    DECODE_GZIP = 1, /* also x-gzip */
    DECODE_DEFLATE,  /* zlib-wrapped, or raw deflate as browsers tolerate */
    DECODE_BR,
    DECODE_ZSTD,
} decode_coding_t;

#define DECODE_MAX_CODINGS 4
#define DECODE_CHUNK       (64 * 1024)
#define DECODE_RATIO_MIN   ((uint64_t)1 << 20)
/* What a job's Accept-Encoding offers: every coding built in. */
#define DECODE_ACCEPT "gzip, deflate, br, zstd"

typedef struct decode_chain decode_chain_t;

/* Receives len (> 0) decoded bytes at p; returns 0 to go on, or a negative
 * fetchd error that stops decoding and is returned by decode_write(). */
typedef int (*decode_out_cb)(void *data, const char *p, size_t len);

/* Parses a coding list ("gzip, br"; case-insensitive; "identity" and empty
 * elements are skipped) into out[], in the order written. Returns the number
 * of codings (0: nothing to decode), or ERR_CONTENT_DECODING with why naming
 * the unknown coding or saying that too many are stacked. */
int decode_parse(const char *value, decode_coding_t out[DECODE_MAX_CODINGS], char *why,
                 size_t whylen);

/* Parses a Transfer-Encoding value the same way for a connection: *chunked
 * is set when the list ends in "chunked" (which is not returned); the
 * codings before it come back in out[] as with decode_parse(). Returns their
 * number, or ERR_PROTOCOL with why saying "unknown transfer coding 'x'",
 * "transfer coding after chunked" or too many stacked.
 *
 * How a connection decodes "Transfer-Encoding: gzip, chunked": llhttp
 * removes the chunked framing; a chain made by decode_create() from out[]
 * is fed every body byte llhttp hands over (decode_write), its output goes
 * on as the body, decode_finish() at the end of the message turns an early
 * end into an error, and decode_destroy() runs when the response ends or
 * fails. */
int decode_parse_transfer(const char *value, decode_coding_t out[DECODE_MAX_CODINGS], int *chunked,
                          char *why, size_t whylen);

/* The coding's name as written in a header ("gzip", "deflate", "br", "zstd"). */
const char *decode_coding_name(decode_coding_t c);

/* Creates a chain for the n (1..DECODE_MAX_CODINGS) codings in the order the
 * sender applied them. max_ratio 0 disables the ratio cap. stats is
 * borrowed and must outlive the decoder. Returns 0 with *out a new decoder,
 * or ERR_NO_MEMORY / ERR_INVALID_REQUEST (bad n). */
int decode_create(decode_chain_t **out, const decode_coding_t *codings, size_t n,
                  uint64_t max_ratio, stats_t *stats);

/* Decodes len encoded bytes, calling cb with what comes out. Returns 0,
 * ERR_CONTENT_DECODING (corrupt data, data after the end, the ratio cap;
 * decode_strerror() says which), ERR_NO_MEMORY, or the callback's error.
 * After an error every later call returns the same error. */
int decode_write(decode_chain_t *d, const char *in, size_t len, decode_out_cb cb, void *data);

/* The encoded data is complete: returns 0 when every stream in the chain
 * ended (or no byte at all arrived), else ERR_CONTENT_DECODING ("truncated")
 * or the error already seen. */
int decode_finish(decode_chain_t *d);

/* Why the last error happened ("gzip: invalid block type", "br: truncated
 * stream", ...). Never NULL; valid until the decoder is destroyed. */
const char *decode_strerror(const decode_chain_t *d);

/* Encoded bytes fed and decoded bytes produced so far. */
uint64_t decode_bytes_in(const decode_chain_t *d);
uint64_t decode_bytes_out(const decode_chain_t *d);

/* Frees the decoder and everything the libraries hold for it. NULL is fine. */
void decode_destroy(decode_chain_t *d);

#endif
