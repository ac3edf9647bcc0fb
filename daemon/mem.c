/* mem — the counting allocator; see mem.h.
 *
 * Each block carries a small header in front of the caller's bytes recording
 * its size and component, so frees and reallocs can be counted without a
 * lookup. The header is 16 bytes to keep the caller's pointer aligned for any
 * type (max_align_t on x86-64 and arm64).
 */
#include "mem.h"

#include <jansson.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

typedef struct mem_header {
    size_t size;
    uint32_t component;
    uint32_t magic;
} mem_header_t;

#define MEM_MAGIC 0xfe7c4d00u
#define HDR_SIZE  16

_Static_assert(sizeof(mem_header_t) <= HDR_SIZE, "mem header fits");
_Static_assert(HDR_SIZE % alignof(max_align_t) == 0, "mem header keeps alignment");

static struct {
    atomic_uint_fast64_t blocks;
    atomic_uint_fast64_t bytes;
    atomic_uint_fast64_t total; /* allocation calls that succeeded, reallocs included */
} counters[MEM__COUNT];

static atomic_long fail_countdown;

static void *count_alloc(mem_component_t c, size_t size, int zero)
{
    mem_header_t *h;

    if (size > SIZE_MAX - HDR_SIZE)
        return NULL;
    h = zero ? calloc(1, HDR_SIZE + size) : malloc(HDR_SIZE + size);
    if (h == NULL)
        return NULL;
    h->size = size;
    h->component = (uint32_t)c;
    h->magic = MEM_MAGIC;
    atomic_fetch_add_explicit(&counters[c].blocks, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&counters[c].bytes, size, memory_order_relaxed);
    atomic_fetch_add_explicit(&counters[c].total, 1, memory_order_relaxed);
    return (char *)h + HDR_SIZE;
}

static mem_header_t *header_of(void *p)
{
    mem_header_t *h = (mem_header_t *)((char *)p - HDR_SIZE);
    if (h->magic != MEM_MAGIC)
        abort(); /* a pointer we did not allocate, or a double free */
    return h;
}

static void count_free(void *p)
{
    mem_header_t *h;

    if (p == NULL)
        return;
    h = header_of(p);
    atomic_fetch_sub_explicit(&counters[h->component].blocks, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&counters[h->component].bytes, h->size, memory_order_relaxed);
    h->magic = 0;
    free(h);
}

static void *count_realloc(mem_component_t c, void *p, size_t size)
{
    mem_header_t *h, *nh;
    size_t old;

    if (p == NULL)
        return count_alloc(c, size, 0);
    if (size > SIZE_MAX - HDR_SIZE)
        return NULL;
    h = header_of(p);
    old = h->size;
    nh = realloc(h, HDR_SIZE + size);
    if (nh == NULL)
        return NULL;
    nh->size = size;
    atomic_fetch_add_explicit(&counters[nh->component].total, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&counters[nh->component].bytes, old, memory_order_relaxed);
    atomic_fetch_add_explicit(&counters[nh->component].bytes, size, memory_order_relaxed);
    return (char *)nh + HDR_SIZE;
}

/* Allocation failure injection applies to fetchd's own allocations and the
 * decoders' (mem_alloc_as), not to libuv's or jansson's. */
static int should_fail(void)
{
    long n = atomic_load_explicit(&fail_countdown, memory_order_relaxed);
    if (n <= 0)
        return 0;
    return atomic_fetch_sub_explicit(&fail_countdown, 1, memory_order_relaxed) == 1;
}

static void *uv_malloc_hook(size_t size)
{
    return count_alloc(MEM_LIBUV, size, 0);
}

static void *uv_realloc_hook(void *p, size_t size)
{
    return count_realloc(MEM_LIBUV, p, size);
}

static void *uv_calloc_hook(size_t n, size_t size)
{
    if (size != 0 && n > SIZE_MAX / size)
        return NULL;
    return count_alloc(MEM_LIBUV, n * size, 1);
}

static void *json_malloc_hook(size_t size)
{
    return count_alloc(MEM_JANSSON, size, 0);
}

int mem_install(void)
{
    static int installed;
    int rc;

    if (installed)
        return 0;
    rc = uv_replace_allocator(uv_malloc_hook, uv_realloc_hook, uv_calloc_hook, count_free);
    if (rc != 0)
        return rc;
    json_set_alloc_funcs(json_malloc_hook, count_free);
    installed = 1;
    return 0;
}

void *mem_alloc(size_t size)
{
    return should_fail() ? NULL : count_alloc(MEM_FETCHD, size, 0);
}

void *mem_calloc(size_t n, size_t size)
{
    if (size != 0 && n > SIZE_MAX / size)
        return NULL;
    return should_fail() ? NULL : count_alloc(MEM_FETCHD, n * size, 1);
}

void *mem_realloc(void *p, size_t size)
{
    return should_fail() ? NULL : count_realloc(MEM_FETCHD, p, size);
}

void *mem_alloc_as(mem_component_t c, size_t size)
{
    return should_fail() ? NULL : count_alloc(c, size, 0);
}

void mem_free(void *p)
{
    count_free(p);
}

char *mem_strndup(const char *p, size_t len)
{
    char *s = mem_alloc(len + 1);
    if (s == NULL)
        return NULL;
    memcpy(s, p, len);
    s[len] = '\0';
    return s;
}

char *mem_strdup(const char *s)
{
    return mem_strndup(s, strlen(s));
}

void mem_get(mem_component_t c, uint64_t *blocks, uint64_t *bytes)
{
    if (blocks)
        *blocks = atomic_load_explicit(&counters[c].blocks, memory_order_relaxed);
    if (bytes)
        *bytes = atomic_load_explicit(&counters[c].bytes, memory_order_relaxed);
}

uint64_t mem_allocations_total(mem_component_t c)
{
    return atomic_load_explicit(&counters[c].total, memory_order_relaxed);
}

const char *mem_component_name(mem_component_t c)
{
    static const char *const names[MEM__COUNT] = {"fetchd", "libuv",  "jansson",
                                                  "zlib",   "brotli", "zstd"};
    return names[c];
}

void mem_fail_after(long n)
{
    atomic_store_explicit(&fail_countdown, n > 0 ? n : 0, memory_order_relaxed);
}

int mem_fail_pending(void)
{
    return atomic_load_explicit(&fail_countdown, memory_order_relaxed) > 0;
}
