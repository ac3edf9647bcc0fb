/* Unit tests for daemon/tls.c's configuration cache: one configuration per
 * combination, a bound on how many are kept, and configurations that live on
 * with their users after the cache lets them go; and the order in which
 * curves and suites are offered.
 *
 * Needs the system CA bundle (ca-certificates, in deploy/install-deps.sh's
 * build set); distinct CA file names are symlinks to it. */
#include <mbedtls/ssl_ciphersuites.h>
#include <stdlib.h>
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

int main(void)
{
    static const test_case_t cases[] = {
        TEST_CASE(test_same_combination_is_shared),
        TEST_CASE(test_cache_is_bounded),
        TEST_CASE(test_forget_keeps_configs_in_use),
        TEST_CASE(test_curve_order),
        TEST_CASE(test_suite_order),
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
