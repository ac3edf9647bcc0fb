/* Unit tests for daemon/buf.c: reuse, the free-list cap, trimming and the
 * live counts, for standard and large buffers. */
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

/* A large buffer holds BUF_LARGE_UNITS standard sizes and counts as that many
 * units in in_use and nfree, so that count * size stays its bytes; it comes
 * back from its own free list, never as a standard buffer. */
static void test_large(void)
{
    stats_t st;
    buf_pool_t p;
    uint64_t base = fetchd_blocks();
    stats_init(&st);
    buf_pool_init(&p, 1024, 2 * BUF_LARGE_UNITS, &st);

    buf_t *l = buf_get_large(&p), *s = buf_get(&p);
    CHECK(l != NULL && s != NULL);
    CHECK_INT(l->size, BUF_LARGE_UNITS * 1024);
    CHECK_INT(s->size, 1024);
    CHECK_INT(l->len, 0);
    CHECK_INT(p.in_use, BUF_LARGE_UNITS + 1);
    CHECK_INT(st.objects[STATS_OBJ_BUFFER], 2);
    memset(l->data, 'x', l->size); /* all of it is usable */

    CHECK_INT(buf_decref(l), 1);
    CHECK_INT(p.in_use, 1);
    CHECK_INT(p.nfree, BUF_LARGE_UNITS);
    CHECK_INT(p.nlarge_free, 1);
    /* A standard request does not get the large buffer, nor the reverse. */
    buf_t *s2 = buf_get(&p);
    CHECK(s2 != l);
    CHECK_INT(s2->size, 1024);
    CHECK_INT(p.nlarge_free, 1);
    CHECK(buf_get_large(&p) == l);
    CHECK_INT(p.nlarge_free, 0);
    CHECK_INT(p.nfree, 0);
    CHECK_INT(p.in_use, BUF_LARGE_UNITS + 2);

    buf_decref(s);
    buf_decref(s2);
    buf_decref(l);
    CHECK_INT(p.in_use, 0);
    CHECK_INT(p.nfree, BUF_LARGE_UNITS + 2);
    CHECK_INT(st.objects[STATS_OBJ_BUFFER], 3);

    /* Trimming frees the large buffers first. */
    buf_pool_trim(&p, 2);
    CHECK_INT(p.nlarge_free, 0);
    CHECK_INT(p.nfree, 2);
    CHECK_INT(st.objects[STATS_OBJ_BUFFER], 2);

    buf_pool_dispose(&p);
    CHECK_INT(p.nfree, 0);
    CHECK_INT(st.objects[STATS_OBJ_BUFFER], 0);
    CHECK_INT(fetchd_blocks(), base);
}

/* A large buffer is kept free only while its units fit under max_free, and
 * at most BUF_LARGE_MAX_FREE of them. */
static void test_large_caps(void)
{
    enum { N = BUF_LARGE_MAX_FREE + 2 };
    stats_t st;
    buf_pool_t p;
    buf_t *bs[N];
    uint64_t base = fetchd_blocks();
    stats_init(&st);

    buf_pool_init(&p, 64, BUF_LARGE_UNITS + 1, &st);
    buf_t *a = buf_get_large(&p), *b = buf_get_large(&p), *s = buf_get(&p), *s2 = buf_get(&p);
    buf_decref(a);
    CHECK_INT(p.nlarge_free, 1);
    buf_decref(b); /* no room: freed */
    CHECK_INT(p.nlarge_free, 1);
    CHECK_INT(st.objects[STATS_OBJ_BUFFER], 3);
    buf_decref(s);
    buf_decref(s2); /* no room either */
    CHECK_INT(p.nfree, BUF_LARGE_UNITS + 1);
    CHECK_INT(st.objects[STATS_OBJ_BUFFER], 2);
    buf_pool_dispose(&p);

    buf_pool_init(&p, 64, 1000, &st);
    for (int i = 0; i < N; i++)
        bs[i] = buf_get_large(&p);
    for (int i = 0; i < N; i++)
        buf_decref(bs[i]);
    CHECK_INT(p.nlarge_free, BUF_LARGE_MAX_FREE);
    CHECK_INT(p.nfree, BUF_LARGE_MAX_FREE * BUF_LARGE_UNITS);
    CHECK_INT(st.objects[STATS_OBJ_BUFFER], BUF_LARGE_MAX_FREE);

    /* Allocation failure: NULL, nothing counted. */
    buf_pool_trim(&p, 0);
    mem_fail_after(1);
    CHECK(buf_get_large(&p) == NULL);
    mem_fail_after(0);
    CHECK_INT(p.in_use, 0);
    buf_pool_dispose(&p);
    CHECK_INT(st.objects[STATS_OBJ_BUFFER], 0);
    CHECK_INT(fetchd_blocks(), base);
}

TEST_MAIN(TEST_CASE(test_get_and_reuse), TEST_CASE(test_refcount),
          TEST_CASE(test_lifo_cap_and_trim), TEST_CASE(test_zero_cap),
          TEST_CASE(test_alloc_failure), TEST_CASE(test_large), TEST_CASE(test_large_caps))
