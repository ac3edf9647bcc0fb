/* mem — the counting allocator.
 *
 * Every heap block fetchd, libuv and jansson allocate goes through here, so the
 * live block and byte counts per component can be exported on /metrics. libuv
 * is hooked with uv_replace_allocator() and jansson with json_set_alloc_funcs(),
 * neither of which passes a context pointer: that is why the counters are the
 * one process-wide state outside struct daemon. They are atomics because libuv
 * allocates from its thread pool too.
 *
 * zlib, libbrotli and libzstd take an allocator per decoder; the content
 * decoders (decode.c) pass mem_alloc_as() and mem_free() for them.
 *
 * mbedTLS (Debian's build) cannot be hooked; its contexts are counted as
 * objects instead (see stats.h).
 */
#ifndef FETCHD_MEM_H
#define FETCHD_MEM_H

#include <stddef.h>
#include <stdint.h>

typedef enum mem_component {
    MEM_FETCHD = 0,
    MEM_LIBUV,
    MEM_JANSSON,
    MEM_ZLIB,   /* the gzip and deflate decoders' state (zalloc/zfree) */
    MEM_BROTLI, /* the br decoders' state */
    MEM_ZSTD,   /* the zstd decoders' state (ZSTD_customMem) */
    MEM__COUNT
} mem_component_t;

/* Routes libuv's and jansson's allocations through the counting allocator.
 * Must run before the first uv_* or json_* call; returns 0 or a negative
 * error. Calling it twice is harmless. */
int mem_install(void);

/* fetchd's own allocation functions; same contracts as the C library's. */
void *mem_alloc(size_t size);
void *mem_calloc(size_t n, size_t size);
void *mem_realloc(void *p, size_t size);
void mem_free(void *p);
/* Allocates size bytes counted under component c (one of the decoders'
 * components); free with mem_free(). mem_fail_after() injection applies, as
 * these allocations are made on fetchd's behalf. */
void *mem_alloc_as(mem_component_t c, size_t size);

/* Returns a new heap copy of s (NULL on allocation failure). */
char *mem_strdup(const char *s);
/* Returns a new NUL-terminated heap copy of the len bytes at p. */
char *mem_strndup(const char *p, size_t len);

/* Live blocks and bytes of one component at this moment. */
void mem_get(mem_component_t c, uint64_t *blocks, uint64_t *bytes);

/* Allocations component c has made since the process started: every
 * malloc, calloc and realloc that succeeded (a realloc counts once, as the
 * C library's allocator sees one call). Never falls; the live blocks of
 * mem_get() are these minus the frees. */
uint64_t mem_allocations_total(mem_component_t c);

/* The name used as the metrics label: "fetchd", "libuv", "jansson", "zlib",
 * "brotli", "zstd". */
const char *mem_component_name(mem_component_t c);

/* Test hook: the n-th fetchd (or decoder) allocation from now (1 = the next one) fails and
 * returns NULL, once. n <= 0 turns injection off. */
void mem_fail_after(long n);

/* Test hook: 1 while an injected failure set by mem_fail_after() has not
 * happened yet. */
int mem_fail_pending(void);

#endif
