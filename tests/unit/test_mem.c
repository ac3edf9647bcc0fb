/* Unit tests for daemon/mem.c: the counting allocator. */
#include <jansson.h>
#include <stdint.h>
#include <uv.h>

#include "mem.h"
#include "test.h"

static uint64_t blocks(mem_component_t c)
{
    uint64_t b;
    mem_get(c, &b, NULL);
    return b;
}

static uint64_t bytes(mem_component_t c)
{
    uint64_t b;
    mem_get(c, NULL, &b);
    return b;
}

static void test_counts_fetchd_blocks_and_bytes(void)
{
    uint64_t b0 = blocks(MEM_FETCHD), y0 = bytes(MEM_FETCHD);
    char *p = mem_alloc(100), *q = mem_calloc(10, 10);

    CHECK(p != NULL && q != NULL);
    CHECK_INT(blocks(MEM_FETCHD), b0 + 2);
    CHECK_INT(bytes(MEM_FETCHD), y0 + 200);
    CHECK_INT(q[99], 0);
    p = mem_realloc(p, 1000);
    CHECK(p != NULL);
    CHECK_INT(bytes(MEM_FETCHD), y0 + 1100);
    CHECK_INT((uintptr_t)p % 16, 0);
    mem_free(p);
    mem_free(q);
    mem_free(NULL);
    CHECK_INT(blocks(MEM_FETCHD), b0);
    CHECK_INT(bytes(MEM_FETCHD), y0);
}

static void test_strdup(void)
{
    char *s = mem_strdup("hello"), *t = mem_strndup("hello world", 5);
    CHECK_STR(s, "hello");
    CHECK_STR(t, "hello");
    mem_free(s);
    mem_free(t);
    CHECK_INT(blocks(MEM_FETCHD), 0);
}

static void test_libuv_and_jansson_are_counted_apart(void)
{
    uint64_t j0 = blocks(MEM_JANSSON), f0 = blocks(MEM_FETCHD);
    json_t *o = json_pack("{s:s}", "a", "b");
    uv_loop_t *loop;

    CHECK(blocks(MEM_JANSSON) > j0);
    json_decref(o);
    CHECK_INT(blocks(MEM_JANSSON), j0);
    /* uv_loop_new() allocates with libuv's allocator. */
    loop = uv_loop_new();
    CHECK(blocks(MEM_LIBUV) > 0);
    uv_loop_delete(loop);
    CHECK_INT(blocks(MEM_FETCHD), f0);
    CHECK_STR(mem_component_name(MEM_LIBUV), "libuv");
}

static void test_failure_injection(void)
{
    void *a, *b;
    mem_fail_after(2);
    a = mem_alloc(8);
    b = mem_alloc(8);
    CHECK(a != NULL);
    CHECK(b == NULL);
    b = mem_alloc(8); /* only once */
    CHECK(b != NULL);
    mem_free(a);
    mem_free(b);
    CHECK_INT(blocks(MEM_FETCHD), 0);
}

/* mem_allocations_total(): every successful malloc, calloc and realloc
 * counts once; frees and failures do not, and the count never falls. */
static void test_allocations_total(void)
{
    uint64_t t0 = mem_allocations_total(MEM_FETCHD), j0 = mem_allocations_total(MEM_JANSSON);
    char *p = mem_alloc(10), *q = mem_calloc(2, 8);
    json_t *o;

    CHECK_INT(mem_allocations_total(MEM_FETCHD), t0 + 2);
    p = mem_realloc(p, 4000);
    CHECK(p != NULL);
    CHECK_INT(mem_allocations_total(MEM_FETCHD), t0 + 3);
    mem_free(p);
    mem_free(q);
    CHECK_INT(mem_allocations_total(MEM_FETCHD), t0 + 3);
    mem_fail_after(1);
    CHECK(mem_alloc(8) == NULL);
    CHECK(mem_alloc(SIZE_MAX - 4) == NULL);
    CHECK_INT(mem_allocations_total(MEM_FETCHD), t0 + 3);
    o = json_pack("{s:s}", "a", "b");
    CHECK(mem_allocations_total(MEM_JANSSON) > j0);
    json_decref(o);
    CHECK_INT(mem_allocations_total(MEM_FETCHD), t0 + 3);
}

static void test_huge_request_fails_cleanly(void)
{
    CHECK(mem_alloc(SIZE_MAX - 4) == NULL);
    CHECK(mem_calloc(SIZE_MAX / 2, 4) == NULL);
    CHECK_INT(blocks(MEM_FETCHD), 0);
}

static void test_all(void)
{
    CHECK_INT(mem_install(), 0);
    CHECK_INT(mem_install(), 0); /* twice is harmless */
}

TEST_MAIN(TEST_CASE(test_all), TEST_CASE(test_counts_fetchd_blocks_and_bytes),
          TEST_CASE(test_strdup), TEST_CASE(test_libuv_and_jansson_are_counted_apart),
          TEST_CASE(test_failure_injection), TEST_CASE(test_allocations_total),
          TEST_CASE(test_huge_request_fails_cleanly))
