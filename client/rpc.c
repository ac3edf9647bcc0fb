/* rpc — fetchctl's connection to fetchd's control socket; see rpc.h. */
#include "rpc.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define RPC_READ_CHUNK (64 * 1024)

/* Set from a signal handler, which cannot reach any rpc_t: that is why it
 * is the one piece of process-wide state here. */
static volatile sig_atomic_t interrupted;

void rpc_interrupt(void)
{
    interrupted = 1;
}

void rpc_interrupt_clear(void)
{
    interrupted = 0;
}

int rpc_interrupted(void)
{
    return interrupted != 0;
}

int rpc_connect(rpc_t *r, const char *path)
{
    struct sockaddr_un sa;
    int fd, flags;

    memset(r, 0, sizeof(*r));
    r->fd = -1;
    r->next_id = 1;
    jsonr_init(&r->msg, realloc, free);
    if (strlen(path) >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    while (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        int e = errno;
        if (e == EINTR)
            continue;
        close(fd);
        return -e;
    }
    /* Non-blocking from here on: poll() decides when to read and write. */
    flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    r->fd = fd;
    return 0;
}

void rpc_close(rpc_t *r)
{
    if (r->fd >= 0)
        close(r->fd);
    free(r->in);
    free(r->out);
    jsonr_free(&r->msg);
    json_decref(r->tree);
    memset(r, 0, sizeof(*r));
    r->fd = -1;
}

/* Makes room for n more bytes at the end of the output buffer, first
 * dropping what was written already. */
static int out_reserve(rpc_t *r, size_t n)
{
    if (r->out_off > 0) {
        memmove(r->out, r->out + r->out_off, r->out_len - r->out_off);
        r->out_len -= r->out_off;
        r->out_off = 0;
    }
    if (r->out_len + n > r->out_cap) {
        size_t cap = r->out_cap ? r->out_cap : RPC_READ_CHUNK;
        char *p;
        while (cap < r->out_len + n)
            cap *= 2;
        p = realloc(r->out, cap);
        if (p == NULL)
            return -1;
        r->out = p;
        r->out_cap = cap;
    }
    return 0;
}

int rpc_send_raw(rpc_t *r, const char *text, size_t n)
{
    if (out_reserve(r, n + 1) != 0)
        return -1;
    memcpy(r->out + r->out_len, text, n);
    r->out[r->out_len + n] = '\n';
    r->out_len += n + 1;
    return 0;
}

int rpc_send_json(rpc_t *r, const json_t *v)
{
    char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    int rc;
    if (text == NULL)
        return -1;
    rc = rpc_send_raw(r, text, strlen(text));
    free(text);
    return rc;
}

json_t *rpc_call_object(rpc_t *r, const char *method, json_t *params, json_int_t *id)
{
    json_t *call =
        json_pack("{s:s, s:I, s:s}", "jsonrpc", "2.0", "id", r->next_id, "method", method);
    if (call == NULL || (params != NULL && json_object_set_new(call, "params", params) != 0)) {
        /* json_object_set_new() releases params itself when it fails. */
        if (call == NULL)
            json_decref(params);
        json_decref(call);
        return NULL;
    }
    *id = r->next_id++;
    return call;
}

json_int_t rpc_reserve_id(rpc_t *r)
{
    return r->next_id++;
}

json_int_t rpc_request(rpc_t *r, const char *method, json_t *params)
{
    json_int_t id = 0;
    json_t *call = rpc_call_object(r, method, params, &id);
    int rc = call != NULL ? rpc_send_json(r, call) : -1;
    json_decref(call);
    return rc == 0 ? id : -1;
}

/* Appends s as a JSON string (quoted, escaped) to r's output, which has
 * room for 6 bytes a byte of s and the quotes. */
static void put_string(rpc_t *r, const char *s)
{
    static const char hex[] = "0123456789abcdef";

    r->out[r->out_len++] = '"';
    for (; *s != '\0'; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            r->out[r->out_len++] = '\\';
            r->out[r->out_len++] = (char)ch;
        } else if (ch < 0x20) {
            memcpy(r->out + r->out_len, "\\u00", 4);
            r->out[r->out_len + 4] = hex[ch >> 4];
            r->out[r->out_len + 5] = hex[ch & 15];
            r->out_len += 6;
        } else {
            r->out[r->out_len++] = (char)ch;
        }
    }
    r->out[r->out_len++] = '"';
}

/* Writes "{"jsonrpc":"2.0","id":ID,"method":"METHOD","params":{"id":" at
 * head, which has room for it (at most 72 bytes and the method's, which is
 * at most 32): by hand, as it is written once per job. Returns its length. */
static size_t call_head(char *head, json_int_t id, const char *method)
{
    static const char a[] = "{\"jsonrpc\":\"2.0\",\"id\":", b[] = ",\"method\":\"",
                      c[] = "\",\"params\":{\"id\":";
    char digits[24], *d = digits + sizeof(digits);
    unsigned long long u = id < 0 ? 0ull - (unsigned long long)id : (unsigned long long)id;
    size_t n = 0, k = strlen(method);

    do
        *--d = (char)('0' + u % 10);
    while ((u /= 10) != 0);
    if (id < 0)
        *--d = '-';
    memcpy(head, a, sizeof(a) - 1);
    n += sizeof(a) - 1;
    memcpy(head + n, d, (size_t)(digits + sizeof(digits) - d));
    n += (size_t)(digits + sizeof(digits) - d);
    memcpy(head + n, b, sizeof(b) - 1);
    n += sizeof(b) - 1;
    memcpy(head + n, method, k);
    n += k;
    memcpy(head + n, c, sizeof(c) - 1);
    return n + sizeof(c) - 1;
}

json_int_t rpc_request_job(rpc_t *r, const char *method, const char *job_id)
{
    size_t n;

    if (strlen(method) > 32 || out_reserve(r, 128 + 6 * strlen(job_id) + 2 + 3) != 0)
        return -1;
    n = call_head(r->out + r->out_len, r->next_id, method);
    r->out_len += n;
    put_string(r, job_id);
    memcpy(r->out + r->out_len, "}}\n", 3);
    r->out_len += 3;
    return r->next_id++;
}

/* A line jsonr refused: jansson decides, since fetchctl reads lines with
 * JSON_ALLOW_NUL (which jsonr's flag extends to keys, where jansson refuses
 * a NUL). What it reads is held as a tree, and r->msg reads the tree. */
__attribute__((cold, noinline)) static int tree_line(rpc_t *r, const char *start, size_t n)
{
    json_t *tree = json_loadb(start, n, JSON_ALLOW_NUL, NULL);
    if (tree == NULL || jsonr_from_json(&r->msg, tree) != 0) {
        json_decref(tree);
        return RPC_BAD_LINE;
    }
    r->tree = tree;
    return 1;
}

/* Parses the next complete non-blank line in the input buffer into r->msg:
 * 1, 0 when no full line is there yet, or RPC_BAD_LINE. */
static int next_line(rpc_t *r)
{
    if (r->tree != NULL) {
        json_decref(r->tree);
        r->tree = NULL;
    }
    for (;;) {
        char *start = r->in + r->in_off;
        char *nl = memchr(r->in + r->in_scan, '\n', r->in_len - r->in_scan);
        size_t n, blank = 0;
        if (nl == NULL) {
            r->in_scan = r->in_len;
            return 0;
        }
        n = (size_t)(nl - start);
        r->in_off = r->in_scan = (size_t)(nl - r->in) + 1;
        /* The buffer holds no NUL: a bounded scan, not strspn(). */
        while (blank < n && (start[blank] == ' ' || start[blank] == '\t' || start[blank] == '\r'))
            blank++;
        if (blank == n)
            continue;
        if (jsonr_parse(&r->msg, start, n) == 0)
            return 1;
        return tree_line(r, start, n);
    }
}

/* Reads what the socket has into the input buffer: 1 when bytes came, 0 at
 * EOF, or a negative errno (-EAGAIN when nothing is there). */
static int fill(rpc_t *r)
{
    ssize_t n;
    if (r->in_off > 0) {
        memmove(r->in, r->in + r->in_off, r->in_len - r->in_off);
        r->in_len -= r->in_off;
        r->in_scan -= r->in_off;
        r->in_off = 0;
    }
    if (r->in_cap - r->in_len < RPC_READ_CHUNK) {
        size_t cap = r->in_cap ? r->in_cap * 2 : 2 * RPC_READ_CHUNK;
        char *p = realloc(r->in, cap);
        if (p == NULL)
            return -ENOMEM;
        r->in = p;
        r->in_cap = cap;
    }
    do
        n = read(r->fd, r->in + r->in_len, r->in_cap - r->in_len);
    while (n < 0 && errno == EINTR && !interrupted);
    if (n < 0)
        return -errno;
    r->in_len += (size_t)n;
    return n > 0;
}

/* Writes as much queued output as the socket takes: 0 or a negative errno. */
static int flush(rpc_t *r)
{
    while (r->out_off < r->out_len) {
        ssize_t n = send(r->fd, r->out + r->out_off, r->out_len - r->out_off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR && !interrupted)
            continue;
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
        r->out_off += (size_t)n;
    }
    return 0;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* One poll() round: waits for the socket (at most timeout_ms), then writes
 * and reads what it can. Returns 0 (setting *eof at end of input),
 * -ETIMEDOUT, or a negative errno. */
static int pump(rpc_t *r, int timeout_ms, int *eof)
{
    struct pollfd p = {r->fd, POLLIN, 0};
    int rc;
    if (r->out_off < r->out_len)
        p.events |= POLLOUT;
    rc = poll(&p, 1, timeout_ms);
    if (rc < 0)
        return errno == EINTR ? 0 : -errno;
    if (rc == 0)
        return -ETIMEDOUT;
    if ((p.revents & POLLOUT) && (rc = flush(r)) != 0) {
        if (rc != -EPIPE && rc != -ECONNRESET)
            return rc;
        /* The daemon hung up, maybe after saying why (too many clients):
         * drop what cannot be sent and read on to its last words. */
        r->out_off = r->out_len;
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
        rc = fill(r);
        if (rc == 0)
            *eof = 1;
        else if (rc < 0 && rc != -EAGAIN)
            return rc;
    }
    return 0;
}

int rpc_read(rpc_t *r, int timeout_ms)
{
    long long deadline = timeout_ms >= 0 ? now_ms() + timeout_ms : -1;
    int eof = 0;
    for (;;) {
        int rc, wait_ms = -1;
        if (interrupted)
            return RPC_INTERRUPTED;
        if (r->in != NULL && (rc = next_line(r)) != 0)
            return rc;
        if (eof)
            return RPC_EOF;
        if (deadline >= 0) {
            long long left = deadline - now_ms();
            wait_ms = left > 0 ? (int)left : 0;
        }
        rc = pump(r, wait_ms, &eof);
        if (rc != 0)
            return rc;
    }
}

int rpc_wait(rpc_t *r, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    int eof = 0;
    for (;;) {
        long long left = deadline - now_ms();
        if (interrupted || eof ||
            (r->in != NULL && memchr(r->in + r->in_scan, '\n', r->in_len - r->in_scan) != NULL))
            return 1;
        if (left <= 0)
            return 0;
        int rc = pump(r, (int)left, &eof);
        if (rc == -ETIMEDOUT)
            return 0;
        if (rc != 0)
            return 1; /* rpc_read() meets the error again and reports it */
    }
}
