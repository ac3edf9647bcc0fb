/* Unit tests for daemon/dns.c on a real libuv loop: resolution of localhost
 * and IP literals, the positive and negative cache, shared lookups, cancel,
 * TTL expiry, LRU eviction, allocation failures and clean disposal. */
#include "dns.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include "err.h"
#include "mem.h"
#include "stats.h"
#include "test.h"

typedef struct fixture {
    uv_loop_t loop;
    stats_t stats;
    dns_t dns;
    uint64_t blocks;
} fixture_t;

typedef struct probe {
    dns_waiter_t w;
    int called;
    dns_entry_t *e;       /* owned: the reference handed to the callback */
    struct probe *victim; /* borrowed: a waiter to cancel from the callback */
    fixture_t *f;         /* borrowed: set when the callback looks up again */
    int nested_rc;
} probe_t;

static uint64_t fetchd_blocks(void)
{
    uint64_t blocks, bytes;
    mem_get(MEM_FETCHD, &blocks, &bytes);
    return blocks;
}

static void setup(fixture_t *f)
{
    CHECK_INT(mem_install(), 0);
    CHECK_INT(uv_loop_init(&f->loop), 0);
    stats_init(&f->stats);
    f->blocks = fetchd_blocks();
    CHECK_INT(dns_init(&f->dns, &f->loop, &f->stats), 0);
}

static void teardown(fixture_t *f)
{
    dns_dispose(&f->dns);
    CHECK_INT(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    CHECK_INT(uv_loop_close(&f->loop), 0);
    CHECK_INT(f->stats.objects[STATS_OBJ_DNS_ENTRY], 0);
    CHECK_INT(fetchd_blocks(), f->blocks);
}

static void on_answer(dns_waiter_t *w, dns_entry_t *e)
{
    probe_t *p = w->data;
    p->called++;
    p->e = e;
    if (p->victim != NULL)
        dns_cancel(&p->victim->w);
    if (p->f != NULL) {
        dns_waiter_t w2 = {.cb = on_answer};
        dns_entry_t *again = NULL;
        p->nested_rc = dns_lookup(&p->f->dns, "localhost", 80, &w2, &again);
        if (again != NULL)
            dns_entry_decref(again);
    }
}

static void probe_init(probe_t *p)
{
    memset(p, 0, sizeof(*p));
    p->w.cb = on_answer;
    p->w.data = p;
}

static void probe_release(probe_t *p)
{
    if (p->e != NULL)
        dns_entry_decref(p->e);
    p->e = NULL;
}

/* Starts a lookup that must go to the thread pool, runs the loop until it is
 * answered and returns the entry (owned by p). */
static dns_entry_t *resolve(fixture_t *f, probe_t *p, const char *host, uint16_t port)
{
    dns_entry_t *e = NULL;
    probe_init(p);
    CHECK_INT(dns_lookup(&f->dns, host, port, &p->w, &e), DNS_PENDING);
    CHECK(e == NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    CHECK_INT(p->called, 1);
    return p->e;
}

/* Looks host up expecting a cache hit; returns 1 when it was one. */
static int is_cached(fixture_t *f, const char *host, uint16_t port)
{
    probe_t p;
    dns_entry_t *e = NULL;
    probe_init(&p);
    int rc = dns_lookup(&f->dns, host, port, &p.w, &e);
    if (rc == 0) {
        dns_entry_decref(e);
        return 1;
    }
    /* Not cached: let the lookup finish so nothing is left in flight. */
    uv_run(&f->loop, UV_RUN_DEFAULT);
    probe_release(&p);
    return 0;
}

static void test_localhost(void)
{
    fixture_t f;
    probe_t p;
    setup(&f);

    dns_entry_t *e = resolve(&f, &p, "localhost", 8080);
    CHECK_INT(f.dns.lookups, 1);
    CHECK(e != NULL);
    CHECK_INT(e->status, 0);
    CHECK(e->naddrs >= 1);
    for (size_t i = 0; e != NULL && i < e->naddrs; i++) {
        const struct sockaddr_storage *ss = &e->addrs[i];
        if (ss->ss_family == AF_INET) {
            const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
            CHECK_INT(ntohs(sin->sin_port), 8080);
            CHECK_INT(ntohl(sin->sin_addr.s_addr) >> 24, 127);
        } else {
            const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
            CHECK_INT(ss->ss_family, AF_INET6);
            CHECK_INT(ntohs(sin6->sin6_port), 8080);
            CHECK(IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr));
        }
    }
    CHECK_INT(f.dns.nentries, 1);

    /* The second lookup is answered from the cache with the same entry. */
    probe_t q;
    dns_entry_t *hit = NULL;
    probe_init(&q);
    CHECK_INT(dns_lookup(&f.dns, "localhost", 8080, &q.w, &hit), 0);
    CHECK(hit == e);
    CHECK_INT(f.dns.hits, 1);
    CHECK_INT(f.dns.lookups, 1);
    CHECK_INT(q.called, 0);
    dns_entry_decref(hit);

    /* Another port is another key. */
    dns_entry_t *other = resolve(&f, &q, "localhost", 8081);
    CHECK(other != e);
    CHECK_INT(f.dns.lookups, 2);
    probe_release(&q);

    probe_release(&p);
    teardown(&f);
}

static void test_literals(void)
{
    fixture_t f;
    probe_t p;
    dns_entry_t *e = NULL;
    setup(&f);
    probe_init(&p);

    CHECK_INT(dns_lookup(&f.dns, "127.0.0.1", 443, &p.w, &e), 0);
    CHECK(e != NULL);
    if (e != NULL) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&e->addrs[0];
        CHECK_INT(e->status, 0);
        CHECK_INT(e->naddrs, 1);
        CHECK_INT(sin->sin_family, AF_INET);
        CHECK_INT(ntohs(sin->sin_port), 443);
        CHECK_INT(ntohl(sin->sin_addr.s_addr), INADDR_LOOPBACK);
        dns_entry_decref(e);
    }

    e = NULL;
    CHECK_INT(dns_lookup(&f.dns, "::1", 8443, &p.w, &e), 0);
    CHECK(e != NULL);
    if (e != NULL) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&e->addrs[0];
        CHECK_INT(e->naddrs, 1);
        CHECK_INT(sin6->sin6_family, AF_INET6);
        CHECK_INT(ntohs(sin6->sin6_port), 8443);
        CHECK(IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr));
        dns_entry_decref(e);
    }
    CHECK_INT(f.dns.lookups, 0);
    CHECK_INT(p.called, 0);
    CHECK_INT(f.stats.objects[STATS_OBJ_DNS_ENTRY], 0);
    teardown(&f);
}

static void test_negative(void)
{
    fixture_t f;
    probe_t p;
    setup(&f);

    uint64_t t0 = uv_hrtime();
    dns_entry_t *e = resolve(&f, &p, "no-such-host.invalid", 80);
    uint64_t elapsed_ms = (uv_hrtime() - t0) / 1000000;
    /* Names under .invalid (RFC 6761) must fail without waiting on a network. */
    CHECK(elapsed_ms < 3000);
    CHECK(e != NULL);
    if (e != NULL) {
        CHECK_INT(e->status, ERR_DNS);
        CHECK_INT(e->naddrs, 0);
        CHECK(strncmp(e->errmsg, "no-such-host.invalid: ", 22) == 0);
        CHECK(strlen(e->errmsg) > 22);
        printf("# negative answer: %s\n", e->errmsg);
    }

    /* The failure is cached. */
    probe_t q;
    dns_entry_t *hit = NULL;
    probe_init(&q);
    CHECK_INT(dns_lookup(&f.dns, "no-such-host.invalid", 80, &q.w, &hit), 0);
    CHECK(hit == e);
    CHECK(hit != NULL && hit->status == ERR_DNS);
    CHECK_INT(f.dns.lookups, 1);
    CHECK_INT(f.dns.hits, 1);
    if (hit != NULL)
        dns_entry_decref(hit);

    probe_release(&p);
    teardown(&f);
}

static void test_shared_and_cancel(void)
{
    fixture_t f;
    probe_t a, b, c, d;
    dns_entry_t *e = NULL;
    setup(&f);
    probe_init(&a);
    probe_init(&b);
    probe_init(&c);
    probe_init(&d);

    CHECK_INT(dns_lookup(&f.dns, "localhost", 80, &a.w, &e), DNS_PENDING);
    CHECK_INT(dns_lookup(&f.dns, "localhost", 80, &b.w, &e), DNS_PENDING);
    CHECK_INT(dns_lookup(&f.dns, "localhost", 80, &c.w, &e), DNS_PENDING);
    CHECK_INT(dns_lookup(&f.dns, "localhost", 80, &d.w, &e), DNS_PENDING);
    CHECK_INT(f.dns.lookups, 1);
    CHECK_INT(f.dns.nentries, 1);

    /* c is withdrawn now; d is withdrawn by b's callback, which runs first. */
    dns_cancel(&c.w);
    dns_cancel(&c.w);
    b.victim = &d;
    uv_run(&f.loop, UV_RUN_DEFAULT);

    CHECK_INT(a.called, 1);
    CHECK_INT(b.called, 1);
    CHECK_INT(c.called, 0);
    CHECK_INT(d.called, 0);
    CHECK(a.e != NULL && a.e == b.e);
    if (a.e != NULL)
        CHECK_INT(a.e->refcnt, 3); /* the cache, a and b */
    CHECK_INT(f.dns.lookups, 1);

    /* Cancelling after the answer is a no-op. */
    dns_cancel(&a.w);
    probe_release(&a);
    probe_release(&b);
    teardown(&f);
}

static void test_lookup_from_callback(void)
{
    fixture_t f;
    probe_t p;
    dns_entry_t *e = NULL;
    setup(&f);
    probe_init(&p);
    p.f = &f;

    CHECK_INT(dns_lookup(&f.dns, "localhost", 80, &p.w, &e), DNS_PENDING);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    CHECK_INT(p.called, 1);
    /* The callback's own lookup of the same name was already a cache hit. */
    CHECK_INT(p.nested_rc, 0);
    CHECK_INT(f.dns.hits, 1);
    probe_release(&p);
    teardown(&f);
}

static void on_timer_closed(uv_handle_t *h)
{
    (void)h;
}

static void on_timer(uv_timer_t *t)
{
    uv_close((uv_handle_t *)t, on_timer_closed);
}

static void sleep_ms(fixture_t *f, uint64_t ms)
{
    uv_timer_t t;
    uv_timer_init(&f->loop, &t);
    uv_timer_start(&t, on_timer, ms, 0);
    uv_run(&f->loop, UV_RUN_DEFAULT);
}

static void test_ttl(void)
{
    fixture_t f;
    probe_t p, q;
    setup(&f);
    f.dns.ttl_ok_ms = 5;

    dns_entry_t *old = resolve(&f, &p, "localhost", 80);
    CHECK(is_cached(&f, "localhost", 80));
    sleep_ms(&f, 20);

    /* Expired: a fresh lookup replaces the entry, while p's reference keeps
     * the old one alive. */
    dns_entry_t *fresh = resolve(&f, &q, "localhost", 80);
    CHECK_INT(f.dns.lookups, 2);
    CHECK(fresh != old);
    CHECK_INT(f.dns.nentries, 1);
    CHECK_INT(f.stats.objects[STATS_OBJ_DNS_ENTRY], 2);
    if (old != NULL)
        CHECK_INT(old->refcnt, 1);
    probe_release(&p);
    CHECK_INT(f.stats.objects[STATS_OBJ_DNS_ENTRY], 1);
    probe_release(&q);

    /* Failures use their own, shorter TTL. */
    f.dns.ttl_fail_ms = 5;
    resolve(&f, &p, "x.invalid", 80);
    probe_release(&p);
    CHECK(is_cached(&f, "x.invalid", 80));
    sleep_ms(&f, 20);
    CHECK(!is_cached(&f, "x.invalid", 80));
    teardown(&f);
}

static void test_lru(void)
{
    fixture_t f;
    probe_t p;
    setup(&f);
    f.dns.max_entries = 2;

    resolve(&f, &p, "localhost", 1);
    probe_release(&p);
    resolve(&f, &p, "localhost", 2);
    probe_release(&p);
    CHECK_INT(f.dns.nentries, 2);
    /* Touching port 1 makes port 2 the least recently used. */
    CHECK(is_cached(&f, "localhost", 1));
    resolve(&f, &p, "localhost", 3);
    CHECK_INT(f.dns.nentries, 2);
    CHECK_INT(f.stats.objects[STATS_OBJ_DNS_ENTRY], 2);
    CHECK(is_cached(&f, "localhost", 3));
    CHECK(is_cached(&f, "localhost", 1));
    CHECK(is_cached(&f, "localhost", 3));
    CHECK(!is_cached(&f, "localhost", 2)); /* this lookup evicts port 1 */
    CHECK(!is_cached(&f, "localhost", 1)); /* and this one port 3 */
    CHECK(!is_cached(&f, "localhost", 3));
    /* An evicted entry a caller still holds stays valid. */
    CHECK(p.e != NULL && p.e->refcnt == 1 && p.e->status == 0 && p.e->naddrs >= 1);
    CHECK_INT(f.stats.objects[STATS_OBJ_DNS_ENTRY], 3);
    probe_release(&p);
    CHECK_INT(f.dns.nentries, 2);
    teardown(&f);
}

static void test_flush(void)
{
    fixture_t f;
    probe_t p, q;
    dns_entry_t *e = NULL;
    setup(&f);

    resolve(&f, &p, "localhost", 80);
    probe_release(&p);
    probe_init(&q);
    CHECK_INT(dns_lookup(&f.dns, "localhost", 81, &q.w, &e), DNS_PENDING);
    /* A lookup in flight survives the flush and still answers its waiter. */
    dns_flush(&f.dns);
    CHECK_INT(f.dns.nentries, 1);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    CHECK_INT(q.called, 1);
    probe_release(&q);
    CHECK(!is_cached(&f, "localhost", 80));
    CHECK_INT(f.dns.lookups, 3);
    teardown(&f);
}

static void test_dispose_pending(void)
{
    fixture_t f;
    probe_t p, p2, q;
    dns_entry_t *e = NULL;
    setup(&f);

    /* An entry held past dispose stays valid until its holder lets go. */
    dns_entry_t *held = resolve(&f, &q, "localhost", 80);

    probe_init(&p);
    probe_init(&p2);
    CHECK_INT(dns_lookup(&f.dns, "localhost", 443, &p.w, &e), DNS_PENDING);
    CHECK_INT(dns_lookup(&f.dns, "y.invalid", 443, &p2.w, &e), DNS_PENDING);
    dns_cancel(&p.w);
    dns_cancel(&p2.w);
    dns_dispose(&f.dns);
    CHECK_INT(f.dns.nentries, 0);
    CHECK(held != NULL && held->status == 0);
    CHECK_INT(uv_run(&f.loop, UV_RUN_DEFAULT), 0);
    CHECK_INT(p.called + p2.called, 0);
    CHECK_INT(f.stats.objects[STATS_OBJ_DNS_ENTRY], 1);
    probe_release(&q);
    CHECK_INT(f.stats.objects[STATS_OBJ_DNS_ENTRY], 0);
    CHECK_INT(uv_loop_close(&f.loop), 0);
    CHECK_INT(fetchd_blocks(), f.blocks);
}

static void test_alloc_failure(void)
{
    fixture_t f;
    probe_t p;
    dns_entry_t *e = NULL;
    setup(&f);
    probe_init(&p);

    for (long n = 1; n <= 2; n++) {
        mem_fail_after(n);
        CHECK_INT(dns_lookup(&f.dns, "localhost", 80, &p.w, &e), ERR_NO_MEMORY);
        mem_fail_after(n);
        CHECK_INT(dns_lookup(&f.dns, "127.0.0.1", 80, &p.w, &e), ERR_NO_MEMORY);
        mem_fail_after(0);
        CHECK(e == NULL);
    }
    CHECK_INT(f.dns.nentries, 0);
    CHECK_INT(f.dns.lookups, 0);
    CHECK_INT(f.stats.objects[STATS_OBJ_DNS_ENTRY], 0);
    CHECK_INT(fetchd_blocks(), f.blocks + 1); /* the bucket array */

    /* The address array cannot be allocated: the waiter hears ERR_NO_MEMORY,
     * and the failure is not cached. */
    CHECK_INT(dns_lookup(&f.dns, "localhost", 80, &p.w, &e), DNS_PENDING);
    mem_fail_after(1);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    mem_fail_after(0);
    CHECK_INT(p.called, 1);
    CHECK(p.e != NULL && p.e->status == ERR_NO_MEMORY);
    probe_release(&p);
    CHECK(!is_cached(&f, "localhost", 80));
    CHECK_INT(f.dns.lookups, 2);
    teardown(&f);
}

TEST_MAIN(TEST_CASE(test_localhost), TEST_CASE(test_literals), TEST_CASE(test_negative),
          TEST_CASE(test_shared_and_cancel), TEST_CASE(test_lookup_from_callback),
          TEST_CASE(test_ttl), TEST_CASE(test_lru), TEST_CASE(test_flush),
          TEST_CASE(test_dispose_pending), TEST_CASE(test_alloc_failure))
