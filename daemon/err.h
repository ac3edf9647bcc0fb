/* err — fetchd's error codes.
 *
 * Every error in fetchd is a negative int. One X-macro table gives each code
 * its stable wire name (used in job results and on the control socket, never
 * renamed) and a short human message. libuv's negative codes are mapped into
 * this table with err_from_uv(); a function that returns one of these codes
 * never also calls its completion callback.
 */
#ifndef FETCHD_ERR_H
#define FETCHD_ERR_H

/* X(ENUM, wire-name, human message) — the wire names are a stable interface. */
#define ERR_MAP(X)                                                          \
    X(INVALID_REQUEST, "invalid_request", "invalid request")                \
    X(DNS, "dns", "name resolution failed")                                 \
    X(CONNECT_REFUSED, "connect_refused", "connection refused")             \
    X(CONNECT_TIMEOUT, "connect_timeout", "connection timed out")           \
    X(TLS_HANDSHAKE, "tls_handshake", "TLS handshake failed")               \
    X(TLS_VERIFY, "tls_verify", "TLS certificate verification failed")      \
    X(TIMEOUT, "timeout", "timed out")                                      \
    X(TRUNCATED, "truncated", "response truncated")                         \
    X(PROTOCOL, "protocol", "HTTP protocol error")                          \
    X(HEADERS_TOO_LARGE, "headers_too_large", "response headers too large") \
    X(BODY_TOO_LARGE, "body_too_large", "response body too large")          \
    X(TOO_MANY_REDIRECTS, "too_many_redirects", "too many redirects")       \
    X(EMPTY_REPLY, "empty_reply", "empty reply from server")                \
    X(CHECKSUM_MISMATCH, "checksum_mismatch", "checksum mismatch")          \
    X(IO, "io", "I/O error")                                                \
    X(CANCELLED, "cancelled", "cancelled")                                  \
    X(SHUTDOWN, "shutdown", "daemon shutting down")                         \
    X(NO_MEMORY, "no_memory", "out of memory")                              \
    X(HTTP_ERROR, "http_error", "HTTP error status")                        \
    X(QUEUE_FULL, "queue_full", "job queue is full")                        \
    X(FORBIDDEN, "forbidden", "destination address is forbidden")           \
    X(NO_FDS, "no_file_descriptors", "out of file descriptors")             \
    X(CONTENT_DECODING, "content_decoding", "content decoding failed")      \
    X(PROXY, "proxy", "proxy error")                                        \
    X(EXISTS, "exists", "the output file exists")

enum {
    ERR_OK = 0,
    /* Far below libuv's range (which ends above -4096) so the two never collide. */
    ERR__BASE = -10000,
#define X(e, name, msg) ERR_##e,
    ERR_MAP(X)
#undef X
        ERR__END
};

/* The stable wire name of err ("dns", "truncated", ...); "ok" for 0 and
 * "unknown" for a code outside the table. Never NULL. */
const char *err_name(int err);

/* A short human-readable message for err. Never NULL. */
const char *err_str(int err);

/* Looks a wire name up; returns the code, or 0 when name is not in the table. */
int err_from_name(const char *name);

/* Maps a negative libuv error code to the closest fetchd code for a generic
 * context (UV_ENOMEM -> ERR_NO_MEMORY, UV_ECONNREFUSED -> ERR_CONNECT_REFUSED,
 * UV_ETIMEDOUT -> ERR_CONNECT_TIMEOUT, UV_EOF/UV_ECONNRESET -> ERR_TRUNCATED,
 * UV_EAI_* -> ERR_DNS, filesystem errors -> ERR_IO). Codes already in fetchd's
 * range are returned unchanged. Callers that know better (a reset before any
 * response byte is ERR_EMPTY_REPLY, for example) decide for themselves. */
int err_from_uv(int uverr);

#endif
