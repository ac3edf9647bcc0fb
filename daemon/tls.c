/* tls — mbedTLS glue; see tls.h. */
#include "tls.h"

#include <assert.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/pem.h>
#include <mbedtls/ssl_ciphersuites.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "err.h"
#include "mem.h"

struct tls_session_entry {
    char *key; /* owned */
    mbedtls_ssl_session session;
    tls_session_entry_t *next;
};

static const char *alpn_protocols[] = {"http/1.1", NULL};

/* ---- preferences ---------------------------------------------------------------
 * mbedTLS 2.28's defaults cost a full handshake several times what it must:
 * its curve list starts with secp521r1 (a server that follows the client's
 * order, as nginx does by default, takes it: 2.8x X25519's cost), and it
 * puts DHE (two 2048-bit exponentiations) among the ECDHE suites. fetchd
 * offers the same sets in another order: what is cheap and forward-secret
 * first (ECDHE), then DHE (forward-secret, costly), then what is not
 * forward-secret (static RSA key exchange), so a server that only has DHE
 * or only secp384r1 still finds it, and one that has DHE and static RSA
 * gets forward secrecy.
 *
 * ChaCha20-Poly1305 stays first: with Debian's mbedTLS 2.28 it decrypts at
 * about 300 MB/s on x86-64, where AES-GCM, AES-NI and PCLMUL notwithstanding,
 * manages about 180 MB/s (one 16-byte block per call through the cipher
 * layer); bulk transfers are decrypted on the loop thread. */

/* The suites offered first, in this order. */
static const int preferred_suites[] = {
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
};

/* X25519 is the cheapest curve and the most widely offered; the NIST ones
 * follow from the smallest up. */
static const mbedtls_ecp_group_id preferred_curves[] = {
    MBEDTLS_ECP_DP_CURVE25519,
    MBEDTLS_ECP_DP_SECP256R1,
    MBEDTLS_ECP_DP_SECP384R1,
    MBEDTLS_ECP_DP_SECP521R1,
};

/* 0: a preferred suite; 1: other ECDHE; 2: DHE; 3: any other (static RSA
 * and PSK key exchange: no forward secrecy, so it comes after DHE despite
 * DHE's cost). */
static int suite_rank(int id)
{
    const mbedtls_ssl_ciphersuite_t *cs = mbedtls_ssl_ciphersuite_from_id(id);

    for (size_t i = 0; i < sizeof(preferred_suites) / sizeof(preferred_suites[0]); i++)
        if (preferred_suites[i] == id)
            return 0;
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

/* Every suite the library offers by default, by rank, in the library's
 * order within a rank (the preferred ones in preferred_suites' order). */
static void order_suites(tls_t *t)
{
    const int *all = mbedtls_ssl_list_ciphersuites();
    size_t n = 0;

    for (size_t i = 0; i < sizeof(preferred_suites) / sizeof(preferred_suites[0]); i++)
        for (size_t j = 0; all[j] != 0; j++)
            if (all[j] == preferred_suites[i] && n < TLS_MAX_SUITES)
                t->suites[n++] = all[j];
    for (int rank = 1; rank <= 3; rank++)
        for (size_t j = 0; all[j] != 0; j++)
            if (suite_rank(all[j]) == rank && n < TLS_MAX_SUITES)
                t->suites[n++] = all[j];
    t->suites[n] = 0;
}

/* The preferred curves the library has, then its others in its order. */
static void order_curves(tls_t *t)
{
    const mbedtls_ecp_group_id *all = mbedtls_ecp_grp_id_list();
    size_t n = 0, np = sizeof(preferred_curves) / sizeof(preferred_curves[0]);

    for (size_t i = 0; i < np; i++)
        for (size_t j = 0; all[j] != MBEDTLS_ECP_DP_NONE; j++)
            if (all[j] == preferred_curves[i] && n < TLS_MAX_CURVES)
                t->curves[n++] = all[j];
    for (size_t j = 0; all[j] != MBEDTLS_ECP_DP_NONE; j++) {
        size_t i = 0;
        while (i < np && preferred_curves[i] != all[j])
            i++;
        if (i == np && n < TLS_MAX_CURVES)
            t->curves[n++] = all[j];
    }
    t->curves[n] = MBEDTLS_ECP_DP_NONE;
}

int tls_init(tls_t *t, stats_t *stats, const char *ca_file, const char *cert_file,
             const char *key_file, char *errmsg, size_t errlen)
{
    static const unsigned char personal[] = "fetchd";
    int rc;

    memset(t, 0, sizeof(*t));
    t->stats = stats;
    t->max_sessions = 256;
    order_suites(t);
    order_curves(t);
    if ((cert_file == NULL) != (key_file == NULL)) {
        snprintf(errmsg, errlen, "a client certificate needs both a certificate and a key file");
        return ERR_INVALID_REQUEST;
    }
    t->ca_file = mem_strdup(ca_file ? ca_file : TLS_DEFAULT_CA_FILE);
    t->cert_file = cert_file ? mem_strdup(cert_file) : NULL;
    t->key_file = key_file ? mem_strdup(key_file) : NULL;
    if (t->ca_file == NULL || (cert_file && !t->cert_file) || (key_file && !t->key_file)) {
        tls_dispose(t);
        snprintf(errmsg, errlen, "%s", err_str(ERR_NO_MEMORY));
        return ERR_NO_MEMORY;
    }
    /* One CTR-DRBG for every connection, seeded once from the kernel. */
    mbedtls_entropy_init(&t->entropy);
    mbedtls_ctr_drbg_init(&t->drbg);
    t->seeded = 1;
    rc = mbedtls_ctr_drbg_seed(&t->drbg, mbedtls_entropy_func, &t->entropy, personal,
                               sizeof(personal) - 1);
    if (rc != 0) {
        tls_dispose(t);
        snprintf(errmsg, errlen, "seeding the TLS random generator failed (-0x%04x)", -rc);
        return ERR_TLS_HANDSHAKE;
    }
    return 0;
}

static void session_free(tls_t *t, tls_session_entry_t *e)
{
    mbedtls_ssl_session_free(&e->session);
    mem_free(e->key);
    mem_free(e);
    t->nsessions--;
    stats_obj_destroyed(t->stats, STATS_OBJ_TLS_SESSION);
}

void tls_dispose(tls_t *t)
{
    while (t->sessions) {
        tls_session_entry_t *e = t->sessions;
        t->sessions = e->next;
        session_free(t, e);
    }
    while (t->configs) {
        tls_config_t *c = t->configs;
        t->configs = c->next;
        c->next = NULL;
        assert(c->refcnt == 1);
        tls_config_decref(c);
    }
    if (t->seeded) {
        mbedtls_ctr_drbg_free(&t->drbg);
        mbedtls_entropy_free(&t->entropy);
        t->seeded = 0;
    }
    mem_free(t->ca_file);
    mem_free(t->cert_file);
    mem_free(t->key_file);
    t->ca_file = t->cert_file = t->key_file = NULL;
}

/* ---- configurations ---------------------------------------------------------- */

static void describe(int rc, char *out, size_t len)
{
    mbedtls_strerror(rc, out, len);
}

/* Whether an mbedTLS error code says an allocation failed. A code may add a
 * high-level part (bits 7-15) and a low-level one (bits 0-6): either can be
 * the allocation's. */
static int alloc_failed(int rc)
{
    int high = -rc & 0xFF80, low = -rc & 0x007F;

    if (rc >= 0)
        return 0;
    return high == -MBEDTLS_ERR_PEM_ALLOC_FAILED || high == -MBEDTLS_ERR_X509_ALLOC_FAILED ||
           high == -MBEDTLS_ERR_PK_ALLOC_FAILED || high == -MBEDTLS_ERR_SSL_ALLOC_FAILED ||
           low == -MBEDTLS_ERR_MPI_ALLOC_FAILED;
}

static int load_client_cert(tls_config_t *c, const char *cert, const char *key, char *err,
                            size_t errlen)
{
    char why[100];
    int rc = mbedtls_x509_crt_parse_file(&c->cert, cert);

    if (rc != 0) {
        describe(rc, why, sizeof(why));
        snprintf(err, errlen, "client_cert: cannot load %s: %s", cert, why);
        return alloc_failed(rc) ? ERR_NO_MEMORY : ERR_INVALID_REQUEST;
    }
    rc = mbedtls_pk_parse_keyfile(&c->pk, key, NULL);
    if (rc != 0) {
        describe(rc, why, sizeof(why));
        snprintf(err, errlen, "client_key: cannot load %s: %s", key, why);
        return alloc_failed(rc) ? ERR_NO_MEMORY : ERR_INVALID_REQUEST;
    } /* mbedtls_ssl_conf_own_cert() does not check that the two belong
       * together; a mismatch would only show as a peer's alert mid-handshake. */
    rc = mbedtls_pk_check_pair(&c->cert.pk, &c->pk);
    if (rc == 0)
        rc = mbedtls_ssl_conf_own_cert(&c->conf, &c->cert, &c->pk);
    if (rc != 0) {
        snprintf(err, errlen, "client_cert: %s does not go with %s", cert, key);
        return ERR_INVALID_REQUEST;
    }
    return 0;
}

/* Where the CA bundle path of a failed load came from, for the message: the
 * job's own ca_file, the daemon's --ca-file (or ca_file in its config file),
 * or the built-in default, which a machine without ca-certificates lacks. */
static const char *ca_origin(const tls_t *t, int from_job)
{
    if (from_job)
        return "the job's ca_file";
    if (strcmp(t->ca_file, TLS_DEFAULT_CA_FILE) == 0)
        return "the daemon's default; install ca-certificates or set --ca-file";
    return "the daemon's --ca-file or config ca_file";
}

static int config_setup(tls_t *t, tls_config_t *c, const char *ca, int ca_from_job,
                        const char *cert, const char *key, char *err, size_t errlen)
{
    char why[100];
    int rc = mbedtls_ssl_config_defaults(&c->conf, MBEDTLS_SSL_IS_CLIENT,
                                         MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT);
    if (rc != 0) {
        snprintf(err, errlen, "TLS configuration failed (-0x%04x)", -rc);
        return ERR_NO_MEMORY;
    }
    if (!c->insecure) {
        /* A bundle may hold certificates mbedTLS cannot parse (rc > 0):
         * that is fine as long as some loaded. */
        rc = mbedtls_x509_crt_parse_file(&c->ca, ca);
        if (rc < 0 || c->ca.version == 0) {
            describe(rc, why, sizeof(why));
            snprintf(err, errlen, "cannot load CA certificates from %s (%s): %s", ca,
                     ca_origin(t, ca_from_job), rc < 0 ? why : "no certificate found");
            return alloc_failed(rc) ? ERR_NO_MEMORY : ERR_INVALID_REQUEST;
        }
        mbedtls_ssl_conf_ca_chain(&c->conf, &c->ca, NULL);
        mbedtls_ssl_conf_authmode(&c->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
    } else {
        /* OPTIONAL rather than NONE so the verify callback still runs on a
         * full handshake: that is how a resumed one is told apart. */
        mbedtls_ssl_conf_authmode(&c->conf, MBEDTLS_SSL_VERIFY_OPTIONAL);
    }
    mbedtls_ssl_conf_rng(&c->conf, mbedtls_ctr_drbg_random, &t->drbg);
    mbedtls_ssl_conf_min_version(&c->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_alpn_protocols(&c->conf, alpn_protocols);
    mbedtls_ssl_conf_ciphersuites(&c->conf, t->suites);
    mbedtls_ssl_conf_curves(&c->conf, t->curves);
    mbedtls_ssl_conf_session_tickets(&c->conf, MBEDTLS_SSL_SESSION_TICKETS_ENABLED);
    if (cert != NULL)
        return load_client_cert(c, cert, key, err, errlen);
    return 0;
}

static char *config_key(const char *ca, int insecure, const char *cert, const char *key)
{
    size_t n = strlen(ca) + (cert ? strlen(cert) : 0) + (key ? strlen(key) : 0) + 8;
    char *k = mem_alloc(n);
    if (k)
        snprintf(k, n, "%d|%s|%s|%s", insecure, insecure ? "" : ca, cert ? cert : "",
                 key ? key : "");
    return k;
}

int tls_config_get(tls_t *t, const char *ca_file, int insecure, const char *cert_file,
                   const char *key_file, tls_config_t **out, char *err, size_t errlen)
{
    const char *ca = ca_file ? ca_file : t->ca_file;
    tls_config_t *c;
    char *key;
    int rc;

    if ((cert_file == NULL) != (key_file == NULL)) {
        snprintf(err, errlen,
                 "client_cert: a client certificate needs both client_cert and "
                 "client_key");
        return ERR_INVALID_REQUEST;
    }
    if (cert_file == NULL) {
        cert_file = t->cert_file;
        key_file = t->key_file;
    }
    key = config_key(ca, insecure, cert_file, key_file);
    if (key == NULL)
        goto nomem;
    for (c = t->configs; c; c = c->next) {
        if (strcmp(c->key, key) == 0) {
            mem_free(key);
            tls_config_incref(c);
            *out = c;
            return 0;
        }
    }
    c = mem_calloc(1, sizeof(*c));
    if (c == NULL) {
        mem_free(key);
        goto nomem;
    }
    c->refcnt = 1;
    c->key = key;
    c->tls = t;
    c->insecure = insecure;
    c->id = ++t->next_id;
    mbedtls_ssl_config_init(&c->conf);
    mbedtls_x509_crt_init(&c->ca);
    mbedtls_x509_crt_init(&c->cert);
    mbedtls_pk_init(&c->pk);
    stats_obj_created(t->stats, STATS_OBJ_TLS_CONFIG);
    rc = config_setup(t, c, ca, ca_file != NULL, cert_file, key_file, err, errlen);
    if (rc != 0) {
        tls_config_decref(c);
        return rc;
    }
    /* The cache keeps its own reference; loading a bundle is not cheap.
     * Past TLS_MAX_CONFIGS the oldest entry goes (its users keep it). */
    tls_config_incref(c);
    c->next = t->configs;
    t->configs = c;
    if (++t->nconfigs > TLS_MAX_CONFIGS) {
        tls_config_t **pp = &t->configs;
        while ((*pp)->next)
            pp = &(*pp)->next;
        tls_config_decref(*pp);
        *pp = NULL;
        t->nconfigs--;
    }
    *out = c;
    return 0;
nomem:
    snprintf(err, errlen, "%s", err_str(ERR_NO_MEMORY));
    return ERR_NO_MEMORY;
}

int tls_reload(tls_t *t, const char *ca_file, const char *cert_file, const char *key_file,
               char *err, size_t errlen)
{
    tls_t probe;
    tls_config_t *c;
    int rc;

    /* Load the new files once in a scratch context: a bad file is found
     * now, while the old configuration still serves. */
    rc = tls_init(&probe, t->stats, ca_file, cert_file, key_file, err, errlen);
    if (rc == 0) {
        rc = tls_config_get(&probe, NULL, 0, NULL, NULL, &c, err, errlen);
        if (rc == 0)
            tls_config_decref(c);
    }
    if (rc != 0) {
        tls_dispose(&probe);
        return rc;
    }
    /* Swap the file names; the cached configurations go (those in use live
     * on with their connections). */
    mem_free(t->ca_file);
    mem_free(t->cert_file);
    mem_free(t->key_file);
    t->ca_file = probe.ca_file;
    t->cert_file = probe.cert_file;
    t->key_file = probe.key_file;
    probe.ca_file = probe.cert_file = probe.key_file = NULL;
    tls_dispose(&probe);
    tls_forget_configs(t);
    return 0;
}

void tls_forget_configs(tls_t *t)
{
    while (t->configs) {
        tls_config_t *c = t->configs;
        t->configs = c->next;
        c->next = NULL;
        tls_config_decref(c);
    }
    t->nconfigs = 0;
}

void tls_config_incref(tls_config_t *c)
{
    c->refcnt++;
}

int tls_config_decref(tls_config_t *c)
{
    assert(c->refcnt > 0);
    if (--c->refcnt > 0)
        return 0;
    mbedtls_ssl_config_free(&c->conf);
    mbedtls_x509_crt_free(&c->ca);
    mbedtls_x509_crt_free(&c->cert);
    mbedtls_pk_free(&c->pk);
    stats_obj_destroyed(c->tls->stats, STATS_OBJ_TLS_CONFIG);
    mem_free(c->key);
    mem_free(c);
    return 1;
}

/* ---- the session cache -------------------------------------------------------- */

static tls_session_entry_t *session_find(tls_t *t, const char *key, int unlink)
{
    tls_session_entry_t **pp, *e;
    for (pp = &t->sessions; (e = *pp) != NULL; pp = &e->next) {
        if (strcmp(e->key, key) == 0) {
            if (unlink)
                *pp = e->next;
            return e;
        }
    }
    return NULL;
}

/* Keeps the session of a finished handshake for the next connection to the
 * same origin, most recent first, within max_sessions. */
static void session_store(tls_t *t, const char *key, mbedtls_ssl_context *ssl)
{
    tls_session_entry_t *e = session_find(t, key, 1);

    if (e == NULL) {
        e = mem_calloc(1, sizeof(*e));
        if (e == NULL)
            return; /* no resumption next time: slower, not wrong */
        e->key = mem_strdup(key);
        if (e->key == NULL) {
            mem_free(e);
            return;
        }
        mbedtls_ssl_session_init(&e->session);
        t->nsessions++;
        stats_obj_created(t->stats, STATS_OBJ_TLS_SESSION);
    } else {
        mbedtls_ssl_session_free(&e->session);
        mbedtls_ssl_session_init(&e->session);
    }
    e->next = t->sessions;
    t->sessions = e;
    if (mbedtls_ssl_get_session(ssl, &e->session) != 0) {
        t->sessions = e->next;
        session_free(t, e);
        return;
    }
    while (t->nsessions > t->max_sessions) {
        tls_session_entry_t **pp = &t->sessions;
        while ((*pp)->next)
            pp = &(*pp)->next;
        e = *pp;
        *pp = NULL;
        session_free(t, e);
    }
}

/* ---- connections ---------------------------------------------------------------- */

static int bio_send(void *ctx, const unsigned char *buf, size_t len)
{
    tls_conn_t *tc = ctx;
    int rc = tc->send(tc->send_ctx, buf, len);

    if (rc != 0) {
        tc->send_err = rc; /* mbedTLS sees only "send failed": keep the cause */
        return MBEDTLS_ERR_NET_SEND_FAILED;
    }
    return (int)len;
}

/* ERR_NO_MEMORY when an mbedTLS failure was a failed allocation (mbedTLS's
 * own, or the send function's copy of a record), not the peer's doing;
 * else 0. */
static int local_cause(const tls_conn_t *tc, int rc)
{
    if (alloc_failed(rc))
        return ERR_NO_MEMORY;
    if (rc == MBEDTLS_ERR_NET_SEND_FAILED && tc->send_err == ERR_NO_MEMORY)
        return ERR_NO_MEMORY;
    return 0;
}

static int bio_recv(void *ctx, unsigned char *buf, size_t len)
{
    tls_conn_t *tc = ctx;
    if (tc->in_len == 0)
        return MBEDTLS_ERR_SSL_WANT_READ;
    if (len > tc->in_len)
        len = tc->in_len;
    memcpy(buf, tc->in, len);
    tc->in += len;
    tc->in_len -= len;
    return (int)len;
}

static int ip_san_matches(const mbedtls_x509_crt *crt, const unsigned char *ip, size_t len)
{
    /* [7] iPAddress in GeneralName: mbedTLS 2.28 keeps these entries raw. */
    const unsigned char tag = MBEDTLS_ASN1_CONTEXT_SPECIFIC | 7;
    for (const mbedtls_x509_sequence *s = &crt->subject_alt_names; s; s = s->next)
        if (s->buf.tag == tag && s->buf.len == len && memcmp(s->buf.p, ip, len) == 0)
            return 1;
    return 0;
}

static int on_verify(void *data, mbedtls_x509_crt *crt, int depth, uint32_t *flags)
{
    tls_conn_t *tc = data;

    tc->verify_called = 1;
    if (depth == 0) {
        tc->leaf_self_signed =
            crt->issuer_raw.len == crt->subject_raw.len &&
            memcmp(crt->issuer_raw.p, crt->subject_raw.p, crt->issuer_raw.len) == 0;
        if (tc->host_is_ip && !ip_san_matches(crt, tc->ip, tc->ip_len))
            *flags |= MBEDTLS_X509_BADCERT_CN_MISMATCH;
    }
    if (tc->config->insecure)
        *flags = 0;
    return 0;
}

tls_conn_t *tls_conn_create(tls_config_t *config, const char *host, int host_is_ip,
                            const char *session_key, tls_send_fn send, void *send_ctx)
{
    tls_t *t = config->tls;
    tls_conn_t *tc = mem_calloc(1, sizeof(*tc));

    if (tc == NULL)
        return NULL;
    mbedtls_ssl_init(&tc->ssl);
    tc->tls = t;
    tc->config = config;
    tls_config_incref(config);
    stats_obj_created(t->stats, STATS_OBJ_TLS_CONTEXT);
    tc->send = send;
    tc->send_ctx = send_ctx;
    tc->host_is_ip = host_is_ip;
    snprintf(tc->host, sizeof(tc->host), "%s", host);
    tc->session_key = mem_strdup(session_key);
    if (tc->session_key == NULL || mbedtls_ssl_setup(&tc->ssl, &config->conf) != 0)
        goto fail;
    if (host_is_ip) {
        /* No SNI for an address (RFC 6066); on_verify checks the IP SANs. */
        if (uv_inet_pton(AF_INET, host, tc->ip) == 0)
            tc->ip_len = 4;
        else if (uv_inet_pton(AF_INET6, host, tc->ip) == 0)
            tc->ip_len = 16;
    } else if (mbedtls_ssl_set_hostname(&tc->ssl, host) != 0) {
        goto fail;
    }
    mbedtls_ssl_set_bio(&tc->ssl, tc, bio_send, bio_recv, NULL);
    mbedtls_ssl_set_verify(&tc->ssl, on_verify, tc);
    return tc;
fail:
    tls_conn_destroy(tc);
    return NULL;
}

void tls_conn_close_notify(tls_conn_t *tc)
{
    if (tc->handshake_done && !tc->notified) {
        tc->notified = 1;
        mbedtls_ssl_close_notify(&tc->ssl);
    }
}

/* ---- one full handshake per origin at a time ------------------------------------
 * A full handshake costs the loop several milliseconds (two signature checks
 * and a key exchange), a resumed one a tenth of it. When many connections
 * to a new origin open at once, the first leads a full handshake and the
 * others wait for its session instead of paying the same price each. Every
 * participant is on one list in arrival order (a few entries: the
 * connections in their handshake's first step). */

static void turn_unlink(tls_conn_t *tc)
{
    tls_t *t = tc->tls;

    if (tc->turn_prev)
        tc->turn_prev->turn_next = tc->turn_next;
    else
        t->turns_head = tc->turn_next;
    if (tc->turn_next)
        tc->turn_next->turn_prev = tc->turn_prev;
    else
        t->turns_tail = tc->turn_prev;
    tc->turn_prev = tc->turn_next = NULL;
    tc->turn = TLS_TURN_NONE;
}

static void turn_append(tls_conn_t *tc, tls_turn_t turn)
{
    tls_t *t = tc->tls;

    tc->turn = turn;
    tc->turn_next = NULL;
    tc->turn_prev = t->turns_tail;
    if (t->turns_tail)
        t->turns_tail->turn_next = tc;
    else
        t->turns_head = tc;
    t->turns_tail = tc;
}

/* The first connection to key in the given turn, or NULL. */
static tls_conn_t *turn_find(tls_t *t, const char *key, tls_turn_t turn)
{
    for (tls_conn_t *p = t->turns_head; p; p = p->turn_next)
        if (p->turn == turn && strcmp(p->session_key, key) == 0)
            return p;
    return NULL;
}

/* Resumes the cached session (returns 0), or leads when nobody does
 * (returns 0), or waits for the leader (returns TLS_WAIT). */
static int take_turn(tls_conn_t *tc)
{
    tls_session_entry_t *cached = session_find(tc->tls, tc->session_key, 0);

    if (cached != NULL) {
        mbedtls_ssl_set_session(&tc->ssl, &cached->session);
        return 0;
    }
    if (turn_find(tc->tls, tc->session_key, TLS_TURN_LEADING) == NULL) {
        turn_append(tc, TLS_TURN_LEADING);
        return 0;
    }
    turn_append(tc, TLS_TURN_WAITING);
    return TLS_WAIT;
}

int tls_conn_begin(tls_conn_t *tc, tls_wake_fn wake, void *ctx)
{
    assert(tc->turn == TLS_TURN_NONE && !tc->handshake_done);
    tc->wake = wake;
    tc->wake_ctx = ctx;
    return take_turn(tc);
}

void tls_conn_leave(tls_conn_t *tc)
{
    tls_t *t = tc->tls;
    tls_turn_t was = tc->turn;
    tls_conn_t *w;

    if (was == TLS_TURN_NONE)
        return;
    turn_unlink(tc);
    if (was != TLS_TURN_LEADING)
        return;
    /* Wake the waiters one by one, each unlinked before its callback runs
     * (which may close connections, this one's waiters too, or open new
     * ones). Each resumes the fresh session; without one the first leads,
     * the others keep waiting for it. No waiter is added while nobody
     * leads, so the walk ends. */
    while (turn_find(t, tc->session_key, TLS_TURN_LEADING) == NULL &&
           (w = turn_find(t, tc->session_key, TLS_TURN_WAITING)) != NULL) {
        turn_unlink(w);
        take_turn(w); /* 0: nobody leads */
        w->wake(w->wake_ctx);
    }
}

void tls_conn_destroy(tls_conn_t *tc)
{
    tls_conn_leave(tc);
    mbedtls_ssl_free(&tc->ssl);
    stats_obj_destroyed(tc->tls->stats, STATS_OBJ_TLS_CONTEXT);
    tls_config_decref(tc->config);
    mem_free(tc->session_key);
    mem_free(tc);
}

void tls_conn_feed(tls_conn_t *tc, const char *in, size_t len)
{
    tc->in = (const unsigned char *)in;
    tc->in_len = len;
}

/* Names the first reason a certificate failed, in the words users search
 * for; one reason only, so the message is unambiguous. */
static const char *verify_reason(const tls_conn_t *tc, uint32_t flags)
{
    if (flags & MBEDTLS_X509_BADCERT_NOT_TRUSTED)
        return tc->leaf_self_signed ? "self-signed" : "untrusted issuer";
    if (flags & MBEDTLS_X509_BADCERT_EXPIRED)
        return "expired";
    if (flags & MBEDTLS_X509_BADCERT_FUTURE)
        return "not yet valid";
    if (flags & MBEDTLS_X509_BADCERT_CN_MISMATCH)
        return "hostname mismatch";
    if (flags & MBEDTLS_X509_BADCERT_REVOKED)
        return "revoked";
    return "rejected";
}

int tls_conn_handshake(tls_conn_t *tc)
{
    char why[100];
    int rc;

    if (tc->turn == TLS_TURN_WAITING) {
        snprintf(tc->errmsg, sizeof(tc->errmsg),
                 "TLS handshake with %.100s failed: the server sent data before the ClientHello",
                 tc->host);
        return ERR_TLS_HANDSHAKE;
    }
    rc = mbedtls_ssl_handshake(&tc->ssl);

    if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE)
        return TLS_AGAIN;
    if (rc == 0) {
        tc->handshake_done = 1;
        /* Only a full handshake carries a certificate to verify. */
        tc->resumed = !tc->verify_called;
        tc->tls->handshakes++;
        if (tc->resumed)
            tc->tls->resumptions++;
        session_store(tc->tls, tc->session_key, &tc->ssl);
        return 0;
    }
    if (rc == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED) {
        uint32_t flags = mbedtls_ssl_get_verify_result(&tc->ssl);
        snprintf(tc->errmsg, sizeof(tc->errmsg), "certificate of %.100s: %s", tc->host,
                 verify_reason(tc, flags));
        return ERR_TLS_VERIFY;
    }
    describe(rc, why, sizeof(why));
    snprintf(tc->errmsg, sizeof(tc->errmsg), "TLS handshake with %.100s failed: %s", tc->host, why);
    if (local_cause(tc, rc) != 0) {
        snprintf(tc->errmsg, sizeof(tc->errmsg), "TLS handshake with %.100s: %s", tc->host,
                 err_str(local_cause(tc, rc)));
        return local_cause(tc, rc);
    }
    return ERR_TLS_HANDSHAKE;
}

int tls_conn_read(tls_conn_t *tc, char *out, size_t len, int *status)
{
    char why[100];
    int rc = mbedtls_ssl_read(&tc->ssl, (unsigned char *)out, len);

    if (rc > 0)
        return rc;
    if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) {
        *status = TLS_AGAIN;
        return 0;
    }
    if (rc == 0 || rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) {
        *status = TLS_EOF;
        return 0;
    }
    describe(rc, why, sizeof(why));
    snprintf(tc->errmsg, sizeof(tc->errmsg), "TLS error from %.100s: %s", tc->host, why);
    return ERR_PROTOCOL;
}

int tls_conn_write(tls_conn_t *tc, const char *buf, size_t len)
{
    char why[100];

    while (len > 0) {
        int rc = mbedtls_ssl_write(&tc->ssl, (const unsigned char *)buf, len);
        if (rc < 0) {
            describe(rc, why, sizeof(why));
            snprintf(tc->errmsg, sizeof(tc->errmsg), "TLS write to %.100s: %s", tc->host, why);
            if (rc == MBEDTLS_ERR_NET_SEND_FAILED)
                return tc->send_err != 0 ? tc->send_err : ERR_IO;
            return local_cause(tc, rc) != 0 ? local_cause(tc, rc) : ERR_PROTOCOL;
        }
        buf += rc;
        len -= (size_t)rc;
    }
    return 0;
}
