/* tls — mbedTLS glue: shared configurations, the session cache, and the
 * per-connection TLS state driven by the event loop.
 *
 * There are no blocking calls: a connection feeds the ciphertext it read to
 * tls_conn_feed(), and mbedTLS writes its records through the send callback
 * the connection gives, which queues them on the socket. Verification is
 * always required unless a job asks for "insecure"; the host name is set on
 * every connection (mbedTLS 2.28 skips the name check without it), and an
 * IP-literal host is checked against the certificate's iPAddress SANs here,
 * since mbedTLS 2.28 does not do that.
 *
 * Every configuration offers X25519 first, then DHE suites, and static-RSA
 * key exchange last (see tls.c, "preferences": mbedTLS's own order made
 * nginx pick secp521r1).
 *
 * One full handshake per origin at a time: a connection whose origin (its
 * session cache key) has no cached session while another connection's full
 * handshake to it is in flight waits for that one to end before it sends
 * its ClientHello (tls_conn_begin()), then resumes the fresh session; if the
 * leader fails or goes away instead, the first waiter leads. The waiting
 * lists live in struct tls; a connection leaves them through
 * tls_conn_leave() or tls_conn_destroy().
 *
 * Ownership: struct tls (one per daemon) owns the RNG, the configuration
 * cache (one reference per cached config) and the session cache. An origin
 * owns a reference to its config; a tls_conn_t is owned by its connection
 * and borrows the config through the origin. Debian's mbedTLS cannot take a
 * custom allocator, so live configs, contexts and cached sessions are counted
 * as objects instead (tls_config, tls_context, tls_session).
 */
#ifndef FETCHD_TLS_H
#define FETCHD_TLS_H

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>
#include <stddef.h>
#include <stdint.h>

#include "stats.h"

#define TLS_DEFAULT_CA_FILE "/etc/ssl/certs/ca-certificates.crt"
/* Configurations cached at once (one per CA file, verification and client
 * certificate in use); the oldest goes first. */
#define TLS_MAX_CONFIGS 16
/* Room for mbedTLS's ciphersuites and curves in fetchd's order (2.28 has
 * about 150 suites and 13 curves; what does not fit is left out). */
#define TLS_MAX_SUITES 256
#define TLS_MAX_CURVES 32

typedef struct tls tls_t;
typedef struct tls_config tls_config_t;
typedef struct tls_conn tls_conn_t;
typedef struct tls_session_entry tls_session_entry_t;

struct tls_config {
    unsigned refcnt;
    unsigned id;  /* read-only: distinguishes pools of different configs */
    int insecure; /* read-only */
    char *key;    /* owned: "insecure|ca|cert|key" cache key */
    tls_t *tls;   /* borrowed */
    mbedtls_ssl_config conf;
    mbedtls_x509_crt ca;
    mbedtls_x509_crt cert;
    mbedtls_pk_context pk;
    tls_config_t *next; /* the cache list */
};

struct tls {
    stats_t *stats;       /* borrowed */
    char *ca_file;        /* owned: the daemon's CA bundle */
    char *cert_file;      /* owned: the daemon's client certificate, or NULL */
    char *key_file;       /* owned */
    size_t max_sessions;  /* public: bound of the session cache */
    uint64_t handshakes;  /* read-only: handshakes completed */
    uint64_t resumptions; /* read-only: of which resumed a session */
    /* private */
    int seeded;
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    tls_config_t *configs; /* owned references */
    size_t nconfigs;
    unsigned next_id;
    tls_session_entry_t *sessions; /* owned, most recent first */
    size_t nsessions;
    /* Connections leading or waiting for a full handshake, in the order
     * they came (borrowed: each unlinks itself, see tls_conn_leave()). */
    tls_conn_t *turns_head, *turns_tail;
    /* Every configuration's preferences (mbedTLS keeps pointers to them):
     * zero-terminated, see order_suites() and order_curves(). */
    int suites[TLS_MAX_SUITES + 1];
    mbedtls_ecp_group_id curves[TLS_MAX_CURVES + 1];
};

/* Sends ciphertext on the connection's socket; returns 0 or a negative
 * error. The bytes must be copied or written before it returns. */
typedef int (*tls_send_fn)(void *ctx, const unsigned char *buf, size_t len);

/* Tells a connection that waited (tls_conn_begin() returned TLS_WAIT) that
 * it may start its handshake now; it is no longer waiting when called. */
typedef void (*tls_wake_fn)(void *ctx);

/* Where a connection stands in its origin's handshake turns. */
typedef enum tls_turn {
    TLS_TURN_NONE,    /* not begun, resuming, or done */
    TLS_TURN_LEADING, /* its full handshake is the origin's one in flight */
    TLS_TURN_WAITING  /* waits for the leader's outcome */
} tls_turn_t;

struct tls_conn {
    mbedtls_ssl_context ssl;
    tls_t *tls;           /* borrowed */
    tls_config_t *config; /* owned reference */
    char *session_key;    /* owned: where its session is cached */
    int handshake_done;   /* read-only */
    int resumed;          /* read-only: the handshake resumed a session */
    char errmsg[256];     /* read-only: why the last call failed */
    /* private */
    tls_send_fn send;
    void *send_ctx;
    int send_err; /* the send function's last error (a fetchd code), or 0 */
    tls_turn_t turn;
    tls_conn_t *turn_prev, *turn_next; /* borrowed: tls->turns_head's list */
    tls_wake_fn wake;
    void *wake_ctx;
    const unsigned char *in; /* borrowed: ciphertext fed and not yet consumed */
    size_t in_len;
    int verify_called;
    int notified;
    int leaf_self_signed;
    int host_is_ip;
    unsigned char ip[16];
    size_t ip_len;
    char host[256];
};

/* Initialises t; the CA bundle and client certificate files are read when a
 * configuration first needs them. ca_file NULL means the system bundle.
 * Returns 0 or an error with errmsg filled in. */
int tls_init(tls_t *t, stats_t *stats, const char *ca_file, const char *cert_file,
             const char *key_file, char *errmsg, size_t errlen);

/* Frees the caches. Configurations still referenced are a bug (asserted). */
void tls_dispose(tls_t *t);

/* Switches to new daemon-wide files (ca_file NULL: the system bundle) after
 * checking that they load; connections already open keep their
 * configuration, new ones get the new files. Returns 0 or an error with
 * errmsg naming the file (then nothing changed). */
int tls_reload(tls_t *t, const char *ca_file, const char *cert_file, const char *key_file,
               char *errmsg, size_t errlen);

/* Returns (a new reference to) the configuration for this combination of
 * CA file (NULL: the daemon's), verification and client certificate (NULL:
 * the daemon's), creating and caching it on first use. Returns 0, or
 * ERR_INVALID_REQUEST with errmsg naming the file that could not be loaded,
 * or ERR_NO_MEMORY. */
int tls_config_get(tls_t *t, const char *ca_file, int insecure, const char *cert_file,
                   const char *key_file, tls_config_t **out, char *errmsg, size_t errlen);

/* Drops the cache's references: every configuration is loaded again on its
 * next use; those in use live on with their connections. */
void tls_forget_configs(tls_t *t);

void tls_config_incref(tls_config_t *c);
int tls_config_decref(tls_config_t *c);

/* Creates a TLS client for host (host_is_ip: an IPv4/IPv6 literal) with the
 * session cache slot session_key; send carries its records to the socket.
 * Returns NULL on allocation failure. */
tls_conn_t *tls_conn_create(tls_config_t *config, const char *host, int host_is_ip,
                            const char *session_key, tls_send_fn send, void *send_ctx);
/* Sends a close_notify alert once, if the session is up (best effort: the
 * connection is being closed). */
void tls_conn_close_notify(tls_conn_t *tc);

/* Frees everything; leaves the origin's turns first (tls_conn_leave()). */
void tls_conn_destroy(tls_conn_t *tc);

#define TLS_WAIT 3

/* Takes the connection's turn before its first handshake step. Returns 0
 * when it may start now: it resumes the origin's cached session, or none is
 * cached and no other full handshake to the origin is in flight, so it
 * leads one. Returns TLS_WAIT when another connection leads: wake(ctx) is
 * called once when this one may start (with a fresh session to resume, or
 * to lead in turn), unless it leaves first. */
int tls_conn_begin(tls_conn_t *tc, tls_wake_fn wake, void *ctx);

/* Ends the connection's part in its origin's turns (call it once its
 * handshake completed, and when it closes; a second call does nothing): a
 * waiter leaves the queue; a leader's end wakes the waiters, which resume
 * the session it left in the cache or, if there is none, the first of
 * them leads. The wake callbacks run before this returns. */
void tls_conn_leave(tls_conn_t *tc);

/* Hands ciphertext to the connection; it stays borrowed until the next
 * tls_conn_handshake() / tls_conn_read() that consumes it all. */
void tls_conn_feed(tls_conn_t *tc, const char *in, size_t len);

#define TLS_AGAIN 1
#define TLS_EOF   2

/* Advances the handshake with what was fed. Returns 0 once it is complete,
 * TLS_AGAIN when it needs more input, or ERR_TLS_VERIFY / ERR_TLS_HANDSHAKE
 * (tc->errmsg says why; also when the server sent bytes to a connection
 * still waiting for its turn). */
int tls_conn_handshake(tls_conn_t *tc);

/* Decrypts into out. Returns the number of bytes (> 0); 0 with *status set
 * to TLS_AGAIN (it needs more input) or TLS_EOF (the peer sent
 * close_notify); or ERR_PROTOCOL for a TLS failure (tc->errmsg says why). */
int tls_conn_read(tls_conn_t *tc, char *out, size_t len, int *status);

/* Encrypts and sends all of buf. Returns 0 or an error. */
int tls_conn_write(tls_conn_t *tc, const char *buf, size_t len);

#endif
