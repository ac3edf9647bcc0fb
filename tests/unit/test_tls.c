/* Unit tests for daemon/tls.c's configuration cache: one configuration per
 * combination, a bound on how many are kept, and configurations that live on
 * with their users after the cache lets them go; the order in which curves
 * and suites are offered; and the handshake turns (one full handshake per
 * origin at a time: who leads, who waits, who is woken when).
 *
 * Needs the system CA bundle (ca-certificates, in deploy/install-deps.sh's
 * build set); distinct CA file names are symlinks to it. */
#include <mbedtls/ssl_ciphersuites.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "err.h"
#include "mem.h"
#include "stats.h"
#include "test.h"
#include "tls.h"

static char dir[64];
static char paths[TLS_MAX_CONFIGS + 2][96];

static void make_ca_links(void)
{
    snprintf(dir, sizeof(dir), "/tmp/fetchd-test-tls-XXXXXX");
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        exit(1);
    }
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        snprintf(paths[i], sizeof(paths[i]), "%s/ca%zu.crt", dir, i);
        if (symlink(TLS_DEFAULT_CA_FILE, paths[i]) != 0) {
            perror("symlink");
            exit(1);
        }
    }
}

static void remove_ca_links(void)
{
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++)
        unlink(paths[i]);
    rmdir(dir);
}

static void test_same_combination_is_shared(void)
{
    stats_t st;
    tls_t t;
    tls_config_t *a = NULL, *b = NULL, *c = NULL;
    char err[256] = "";

    stats_init(&st);
    CHECK_INT(tls_init(&t, &st, NULL, NULL, NULL, err, sizeof(err)), 0);
    CHECK_INT(tls_config_get(&t, NULL, 0, NULL, NULL, &a, err, sizeof(err)), 0);
    CHECK_INT(tls_config_get(&t, NULL, 0, NULL, NULL, &b, err, sizeof(err)), 0);
    CHECK_INT(tls_config_get(&t, NULL, 1, NULL, NULL, &c, err, sizeof(err)), 0);
    CHECK(a != NULL && a == b);
    CHECK(c != NULL && c != a);
    CHECK_INT(t.nconfigs, 2);
    CHECK_INT(st.objects[STATS_OBJ_TLS_CONFIG], 2);
    if (a)
        tls_config_decref(a);
    if (b)
        tls_config_decref(b);
    if (c)
        tls_config_decref(c);
    /* The cache still holds both. */
    CHECK_INT(st.objects[STATS_OBJ_TLS_CONFIG], 2);
    tls_dispose(&t);
    CHECK_INT(st.objects[STATS_OBJ_TLS_CONFIG], 0);
}

static void test_cache_is_bounded(void)
{
    enum { N = TLS_MAX_CONFIGS + 2 };
    tls_config_t *held[N] = {0};
    stats_t st;
    tls_t t;
    char err[256] = "";

    stats_init(&st);
    CHECK_INT(tls_init(&t, &st, NULL, NULL, NULL, err, sizeof(err)), 0);
    for (int i = 0; i < N; i++) {
        int rc = tls_config_get(&t, paths[i], 0, NULL, NULL, &held[i], err, sizeof(err));
        if (rc != 0)
            fprintf(stderr, "%s: %s\n", paths[i], err);
        CHECK_INT(rc, 0);
    }
    /* The two oldest left the cache but live on with their holders. */
    CHECK_INT(t.nconfigs, TLS_MAX_CONFIGS);
    CHECK_INT(st.objects[STATS_OBJ_TLS_CONFIG], N);
    if (held[0] != NULL) {
        CHECK_INT(held[0]->refcnt, 1);
        CHECK(held[0]->conf.ca_chain != NULL);
    }
    for (int i = 0; i < N; i++)
        if (held[i] != NULL)
            tls_config_decref(held[i]);
    CHECK_INT(st.objects[STATS_OBJ_TLS_CONFIG], TLS_MAX_CONFIGS);

    /* Asking again for an evicted one loads it again, and the oldest goes. */
    held[0] = NULL;
    CHECK_INT(tls_config_get(&t, paths[0], 0, NULL, NULL, &held[0], err, sizeof(err)), 0);
    CHECK_INT(t.nconfigs, TLS_MAX_CONFIGS);
    CHECK_INT(st.objects[STATS_OBJ_TLS_CONFIG], TLS_MAX_CONFIGS);
    if (held[0] != NULL)
        tls_config_decref(held[0]);

    tls_forget_configs(&t);
    CHECK_INT(t.nconfigs, 0);
    CHECK_INT(st.objects[STATS_OBJ_TLS_CONFIG], 0);
    tls_dispose(&t);
}

static void test_forget_keeps_configs_in_use(void)
{
    stats_t st;
    tls_t t;
    tls_config_t *a = NULL, *again = NULL;
    char err[256] = "";

    stats_init(&st);
    CHECK_INT(tls_init(&t, &st, NULL, NULL, NULL, err, sizeof(err)), 0);
    CHECK_INT(tls_config_get(&t, NULL, 0, NULL, NULL, &a, err, sizeof(err)), 0);
    tls_forget_configs(&t);
    CHECK_INT(t.nconfigs, 0);
    CHECK_INT(st.objects[STATS_OBJ_TLS_CONFIG], 1); /* a is still in use */
    CHECK_INT(tls_config_get(&t, NULL, 0, NULL, NULL, &again, err, sizeof(err)), 0);
    CHECK(again != NULL && again != a);
    CHECK(again == NULL || a == NULL || again->id != a->id);
    if (a)
        tls_config_decref(a);
    if (again)
        tls_config_decref(again);
    tls_dispose(&t);
    CHECK_INT(st.objects[STATS_OBJ_TLS_CONFIG], 0);
}

/* 1: ECDHE; 2: DHE; 3: anything else (static RSA, PSK, ECDH). */
static int key_exchange_class(int id)
{
    const mbedtls_ssl_ciphersuite_t *cs = mbedtls_ssl_ciphersuite_from_id(id);

    switch (cs ? cs->key_exchange : MBEDTLS_KEY_EXCHANGE_NONE) {
    case MBEDTLS_KEY_EXCHANGE_ECDHE_RSA:
    case MBEDTLS_KEY_EXCHANGE_ECDHE_ECDSA:
        return 1;
    case MBEDTLS_KEY_EXCHANGE_DHE_RSA:
    case MBEDTLS_KEY_EXCHANGE_DHE_PSK:
        return 2;
    default:
        return 3;
    }
}

static size_t count_of(const int *list, int id)
{
    size_t n = 0;
    for (; *list; list++)
        n += *list == id;
    return n;
}

/* X25519, then P-256, P-384, P-521, then every other curve of the library,
 * each once: a server with only an unusual curve still finds it. */
static void test_curve_order(void)
{
    const mbedtls_ecp_group_id *all = mbedtls_ecp_grp_id_list();
    size_t n_all = 0, n = 0;
    char err[256];
    stats_t st;
    tls_t t;

    stats_init(&st);
    CHECK_INT(tls_init(&t, &st, NULL, NULL, NULL, err, sizeof(err)), 0);
    CHECK_INT(t.curves[0], MBEDTLS_ECP_DP_CURVE25519);
    CHECK_INT(t.curves[1], MBEDTLS_ECP_DP_SECP256R1);
    CHECK_INT(t.curves[2], MBEDTLS_ECP_DP_SECP384R1);
    CHECK_INT(t.curves[3], MBEDTLS_ECP_DP_SECP521R1);
    while (all[n_all] != MBEDTLS_ECP_DP_NONE)
        n_all++;
    while (t.curves[n] != MBEDTLS_ECP_DP_NONE)
        n++;
    CHECK_INT(n, n_all);
    for (size_t i = 0; i < n_all; i++) {
        size_t seen = 0;
        for (size_t j = 0; j < n; j++)
            seen += t.curves[j] == all[i];
        CHECK_INT(seen, 1);
    }
    tls_dispose(&t);
}

/* ECDHE with ChaCha20-Poly1305 first, every suite of the library's default
 * list once; every ECDHE suite before every DHE one, and every DHE suite
 * before the static-RSA ones (forward secrecy first). */
static void test_suite_order(void)
{
    const int *all = mbedtls_ssl_list_ciphersuites();
    int last_class = 1, dhe = 0, static_rsa = 0;
    char err[256];
    stats_t st;
    tls_t t;

    stats_init(&st);
    CHECK_INT(tls_init(&t, &st, NULL, NULL, NULL, err, sizeof(err)), 0);
    CHECK_INT(t.suites[0], MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256);
    CHECK_INT(t.suites[1], MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256);
    CHECK_INT(t.suites[2], MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256);
    for (size_t i = 0; all[i]; i++)
        CHECK_INT(count_of(t.suites, all[i]), 1);
    for (size_t i = 0; t.suites[i]; i++) {
        int k = key_exchange_class(t.suites[i]);
        CHECK_INT(count_of(all, t.suites[i]), 1);
        CHECK(k >= last_class); /* ECDHE, then DHE, then the rest */
        last_class = k;
        dhe |= k == 2;
        static_rsa |= t.suites[i] == MBEDTLS_TLS_RSA_WITH_AES_128_GCM_SHA256;
    }
    /* Debian's mbedTLS has both, so the order above was really checked. */
    CHECK(dhe && static_rsa);
    tls_dispose(&t);
}

/* ---- one full handshake per origin at a time -------------------------------- */

static int wakes[8];

static void on_wake(void *ctx)
{
    wakes[(int *)ctx - wakes]++;
}

static int no_send(void *ctx, const unsigned char *buf, size_t len)
{
    (void)ctx, (void)buf, (void)len;
    return 0;
}

/* Connections to one origin with nothing cached: the first leads, the
 * others wait in order; another origin is not held up. */
static void test_turns_first_leads_others_wait(void)
{
    char err[256];
    stats_t st;
    tls_t t;
    tls_config_t *cfg = NULL;
    tls_conn_t *a, *b, *c, *other;

    memset(wakes, 0, sizeof(wakes));
    stats_init(&st);
    CHECK_INT(tls_init(&t, &st, NULL, NULL, NULL, err, sizeof(err)), 0);
    CHECK_INT(tls_config_get(&t, NULL, 1, NULL, NULL, &cfg, err, sizeof(err)), 0);
    a = tls_conn_create(cfg, "a.test", 0, "k1", no_send, NULL);
    b = tls_conn_create(cfg, "a.test", 0, "k1", no_send, NULL);
    c = tls_conn_create(cfg, "a.test", 0, "k1", no_send, NULL);
    other = tls_conn_create(cfg, "b.test", 0, "k2", no_send, NULL);
    CHECK(a && b && c && other);
    CHECK_INT(tls_conn_begin(a, on_wake, &wakes[0]), 0);
    CHECK_INT(a->turn, TLS_TURN_LEADING);
    CHECK_INT(tls_conn_begin(b, on_wake, &wakes[1]), TLS_WAIT);
    CHECK_INT(tls_conn_begin(c, on_wake, &wakes[2]), TLS_WAIT);
    CHECK_INT(tls_conn_begin(other, on_wake, &wakes[3]), 0);
    /* A waiter refuses to handshake (the server spoke first). */
    CHECK_INT(tls_conn_handshake(b), ERR_TLS_HANDSHAKE);
    /* The leader fails (no session cached): the first waiter leads, the
     * second keeps waiting. */
    tls_conn_leave(a);
    CHECK_INT(wakes[1], 1);
    CHECK_INT(wakes[2], 0);
    CHECK_INT(b->turn, TLS_TURN_LEADING);
    CHECK_INT(c->turn, TLS_TURN_WAITING);
    tls_conn_leave(a); /* a second time: nothing */
    CHECK_INT(wakes[2], 0);
    /* The new leader is destroyed mid-handshake: the last waiter leads. */
    tls_conn_destroy(b);
    CHECK_INT(wakes[2], 1);
    CHECK_INT(c->turn, TLS_TURN_LEADING);
    CHECK_INT(wakes[0] + wakes[3], 0);
    tls_conn_destroy(c);
    tls_conn_destroy(a);
    tls_conn_destroy(other);
    CHECK(t.turns_head == NULL && t.turns_tail == NULL);
    tls_config_decref(cfg);
    tls_dispose(&t);
    CHECK_INT(st.objects[STATS_OBJ_TLS_CONTEXT], 0);
}

/* A waiter that goes away is never woken; one closed from inside another's
 * wake is not woken either. */
static int closing_victim;
static tls_conn_t *victim;

static void on_wake_close_victim(void *ctx)
{
    on_wake(ctx);
    if (victim) {
        tls_conn_leave(victim);
        closing_victim++;
    }
}

static void test_turns_waiter_leaves(void)
{
    char err[256];
    stats_t st;
    tls_t t;
    tls_config_t *cfg = NULL;
    tls_conn_t *a, *b, *c, *d;

    memset(wakes, 0, sizeof(wakes));
    stats_init(&st);
    CHECK_INT(tls_init(&t, &st, NULL, NULL, NULL, err, sizeof(err)), 0);
    CHECK_INT(tls_config_get(&t, NULL, 1, NULL, NULL, &cfg, err, sizeof(err)), 0);
    a = tls_conn_create(cfg, "a.test", 0, "k1", no_send, NULL);
    b = tls_conn_create(cfg, "a.test", 0, "k1", no_send, NULL);
    c = tls_conn_create(cfg, "a.test", 0, "k1", no_send, NULL);
    d = tls_conn_create(cfg, "a.test", 0, "k1", no_send, NULL);
    CHECK(a && b && c && d);
    CHECK_INT(tls_conn_begin(a, on_wake, &wakes[0]), 0);
    CHECK_INT(tls_conn_begin(b, on_wake, &wakes[1]), TLS_WAIT);
    CHECK_INT(tls_conn_begin(c, on_wake_close_victim, &wakes[2]), TLS_WAIT);
    CHECK_INT(tls_conn_begin(d, on_wake, &wakes[3]), TLS_WAIT);
    tls_conn_destroy(b); /* a waiter closes */
    victim = c;          /* c, leading next, fails at once when woken */
    tls_conn_leave(a);
    victim = NULL;
    CHECK_INT(wakes[1], 0);
    CHECK_INT(wakes[2], 1);
    CHECK_INT(closing_victim, 1);
    CHECK_INT(wakes[3], 1); /* then d leads */
    CHECK_INT(d->turn, TLS_TURN_LEADING);
    tls_conn_destroy(a);
    tls_conn_destroy(c);
    tls_conn_destroy(d);
    CHECK(t.turns_head == NULL && t.turns_tail == NULL);
    tls_config_decref(cfg);
    tls_dispose(&t);
}

int main(void)
{
    static const test_case_t cases[] = {
        TEST_CASE(test_same_combination_is_shared),
        TEST_CASE(test_cache_is_bounded),
        TEST_CASE(test_forget_keeps_configs_in_use),
        TEST_CASE(test_curve_order),
        TEST_CASE(test_suite_order),
        TEST_CASE(test_turns_first_leads_others_wait),
        TEST_CASE(test_turns_waiter_leaves),
    };
    int rc;

    if (access(TLS_DEFAULT_CA_FILE, R_OK) != 0) {
        fprintf(stderr, "test_tls: %s is missing (install ca-certificates)\n", TLS_DEFAULT_CA_FILE);
        return 1;
    }
    if (mem_install() != 0)
        return 1;
    make_ca_links();
    rc = test_main(cases, sizeof(cases) / sizeof(cases[0]));
    remove_ca_links();
    return rc;
}
