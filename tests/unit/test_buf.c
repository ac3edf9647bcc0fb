/* Unit tests for daemon/buf.c: reuse, the free-list cap, trimming and the
 * live counts. */
#include "buf.h"
#include "mem.h"
#include "stats.h"
#include "test.h"

static uint64_t fetchd_blocks(void)
{
    uint64_t blocks, bytes;
    mem_get(MEM_FETCHD, &blocks, &bytes);
    return blocks;
}

static void test_get_and_reuse(void)
{
    stats_t st;
    buf_pool_t p;
    uint64_t base = fetchd_blocks();
    stats_init(&st);
    buf_pool_init(&p, 4096, 2, &st);

    buf_t *a = buf_get(&p);
    CHECK(a != NULL);
    CHECK_INT(a->refcnt, 1);
    CHECK_INT(a->len, 0);
    CHECK(a->pool == &p);
    CHECK_INT(p.in_use, 1);
    CHECK_INT(st.objects[STATS_OBJ_BUFFER], 1);
    CHECK_INT(fetchd_blocks(), base + 1);
    /* The whole data area is usable. */
    memset(a->data, 'x', p.size);
    a->len = p.size;

    CHECK_INT(buf_decref(a), 1);
    CHECK_INT(p.in_use, 0);
    CHECK_INT(p.nfree, 1);
    CHECK_INT(st.objects[STATS_OBJ_BUFFER], 1);

    /* The freed buffer comes back, reset. */
    buf_t *b = buf_get(&p);
    CHECK(b == a);
    CHECK_INT(b->len, 0);
    CHECK_INT(b->refcnt, 1);
    CHECK_INT(p.nfree, 0);
    CHECK_INT(st.objects[STATS_OBJ_BUFFER], 1);
    CHECK_INT(buf_decref(b), 1);

    buf_pool_dispose(&p);
    CHECK_INT(st.objects[STATS_OBJ_BUFFER], 0);
    CHECK_INT(fetchd_blocks(), base);
}

static void test_refcount(void)
{
    stats_t st;
    buf_pool_t p;
    stats_init(&st);
    buf_pool_init(&p, 64, 4, &st);

    buf_t *b = buf_get(&p);
    buf_incref(b);
    buf_incref(b);
    CHECK_INT(b->refcnt, 3);
    CHECK_INT(buf_decref(b), 0);
    CHECK_INT(buf_decref(b), 0);
    CHECK_INT(p.in_use, 1);
    CHECK_INT(p.nfree, 0);
    CHECK_INT(buf_decref(b), 1);
    CHECK_INT(p.in_use, 0);
    CHECK_INT(p.nfree, 1);

    buf_pool_dispose(&p);
    CHECK_INT(st.objects[STATS_OBJ_BUFFER], 0);
}

static void test_lifo_cap_and_trim(void)
{
    stats_t st;
    buf_pool_t p;
    buf_t *bs[5];
    uint64_t base = fetchd_blocks();
    stats_init(&st);
    buf_pool_init(&p, 128, 3, &st);

    for (int i = 0; i < 5; i++) {
        bs[i] = buf_get(&p);
        CHECK(bs[i] != NULL);
    }
    CHECK_INT(p.in_use, 5);
    CHECK_INT(st.objects[STATS_OBJ_BUFFER], 5);

    /* Only max_free buffers are kept; the rest are freed at once. */
    for (int i = 0; i < 5; i++)
        buf_decref(bs[i]);
    CHECK_INT(p.in_use, 0);
    CHECK_INT(p.nfree, 3);
    CHECK_INT(st.objects[STATS_OBJ_BUFFER], 3);
    CHECK_INT(fetchd_blocks(), base + 3);

    /* LIFO: the last one returned (bs[2]) comes out first. */
    buf_t *x = buf_get(&p);
    CHECK(x == bs[2]);
    buf_decref(x);

    buf_pool_trim(&p, 1);
    CHECK_INT(p.nfree, 1);
    CHECK_INT(st.objects[STATS_OBJ_BUFFER], 1);
    buf_pool_trim(&p, 5);
    CHECK_INT(p.nfree, 1);

    buf_pool_dispose(&p);
    CHECK_INT(p.nfree, 0);
    CHECK(p.free == NULL);
    CHECK_INT(st.objects[STATS_OBJ_BUFFER], 0);
    CHECK_INT(fetchd_blocks(), base);
}

static void test_zero_cap(void)
{
    stats_t st;
    buf_pool_t p;
    stats_init(&st);
    buf_pool_init(&p, 16, 0, &st);
    buf_t *b = buf_get(&p);
    CHECK_INT(buf_decref(b), 1);
    CHECK_INT(p.nfree, 0);
    CHECK_INT(st.objects[STATS_OBJ_BUFFER], 0);
    buf_pool_dispose(&p);
}

static void test_alloc_failure(void)
{
    stats_t st;
    buf_pool_t p;
    uint64_t base = fetchd_blocks();
    stats_init(&st);
    buf_pool_init(&p, 256, 2, &st);

    mem_fail_after(1);
    CHECK(buf_get(&p) == NULL);
    mem_fail_after(0);
    CHECK_INT(p.in_use, 0);
    CHECK_INT(st.objects[STATS_OBJ_BUFFER], 0);

    /* A free buffer is handed out without allocating. */
    buf_decref(buf_get(&p));
    mem_fail_after(1);
    buf_t *b = buf_get(&p);
    mem_fail_after(0);
    CHECK(b != NULL);
    buf_decref(b);

    buf_pool_dispose(&p);
    CHECK_INT(fetchd_blocks(), base);
}

TEST_MAIN(TEST_CASE(test_get_and_reuse), TEST_CASE(test_refcount),
          TEST_CASE(test_lifo_cap_and_trim), TEST_CASE(test_zero_cap),
          TEST_CASE(test_alloc_failure))
