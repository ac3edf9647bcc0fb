/* queue — the Redis Streams job source; see queue.h. */
#include "queue.h"

#include <errno.h>
#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "err.h"
#include "jobspec.h"
#include "jsonr.h"
#include "log.h"
#include "mem.h"

#define QUEUE_DEFAULT_PORT       6379
#define QUEUE_BACKOFF_MIN_MS     100
#define QUEUE_BACKOFF_MAX_MS     2000
#define QUEUE_REFRESH_CHUNK      512 /* ids per XCLAIM ... JUSTID */
#define QUEUE_PENDING_SCAN       100 /* entries per XPENDING */
#define QUEUE_CLAIM_EVERY_MAX_MS 5000
#define QUEUE_ID_MAX             48
#define QUEUE_SILENCE_MS         10000 /* replies owed, nothing heard: connect again */

/* Where an entry is; entry_set() is the one function that changes it. */
typedef enum entry_state {
    ENTRY_RUNNING, /* its job is queued or running here */
    ENTRY_RESULT,  /* finished: the result waits for the writer */
    ENTRY_ADDING,  /* XADD of the result sent */
    ENTRY_ACK,     /* the result is in the results stream: XACK waits for the writer */
    ENTRY_ACKING,  /* XACK sent */
} entry_state_t;

/* One stream entry this instance holds. Owned by the queue (on q->held
 * while running, on q->out afterwards); owns a job reference while running
 * and its result text until the result is written. */
struct queue_entry {
    queue_t *q; /* borrowed */
    entry_state_t state;
    job_t *job;      /* owned reference while running, else NULL */
    int handed_back; /* cancelled by queue_drain(): no result, no ack */
    char *result;    /* owned: the result's JSON text once finished */
    size_t result_len;
    queue_entry_t *prev, *next; /* borrowed: the list it is on */
    char id[QUEUE_ID_MAX];
};

static void kick(queue_t *q);
static void flush(queue_t *q);
static void send_one(queue_entry_t *e);

/* ---- the URL ------------------------------------------------------------------ */

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* A new copy of p[0..len) with %XX decoded; NULL when invalid (or a NUL). */
static char *decoded(const char *p, size_t len)
{
    char *out = mem_alloc(len + 1), *o = out;

    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        int c = (unsigned char)p[i];
        if (c == '%') {
            int hi = i + 2 < len ? hexval(p[i + 1]) : -1;
            int lo = hi >= 0 ? hexval(p[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                mem_free(out);
                return NULL;
            }
            c = hi * 16 + lo;
            i += 2;
        }
        *o++ = (char)c;
    }
    *o = '\0';
    return out;
}

static int parse_num(const char *v, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    unsigned long long n;

    errno = 0;
    n = strtoull(v, &end, 10);
    if (errno || end == v || *end != '\0' || v[0] == '-' || n < min || n > max)
        return -1;
    *out = n;
    return 0;
}

/* Stores n into the numeric field at offset off of u, whose width is size. */
static void store_num(queue_url_t *u, size_t off, size_t size, uint64_t n)
{
    char *field = (char *)u + off;

    if (size == sizeof(uint64_t))
        *(uint64_t *)(void *)field = n;
    else if (size == sizeof(unsigned))
        *(unsigned *)(void *)field = (unsigned)n;
}

#define QOFF(f) offsetof(queue_url_t, f), sizeof(((queue_url_t *)0)->f)

/* One query parameter. */
static int set_param(queue_url_t *u, const char *key, char *val, char *err, size_t errlen)
{
    static const struct {
        const char *key;
        uint64_t min, max;
        size_t off, size;
    } nums[] = {
        {"claim_idle", 100, 86400000, QOFF(claim_idle_ms)},
        {"max_deliveries", 0, 1000000, QOFF(max_deliveries)},
        {"block", 10, 60000, QOFF(block_ms)},
        {"count", 1, 100000, QOFF(count)},
        {"max_inflight", 0, 10000000, QOFF(max_inflight)},
        {"results_maxlen", 1, 1ull << 40, QOFF(results_maxlen)},
        {"max_unsent", 0, 1ull << 40, QOFF(max_unsent)},
        {"db", 0, 1000000, QOFF(db)},
        {"create", 0, 1, QOFF(create)},
    };
    char **strs[] = {&u->group, &u->consumer, &u->results};
    static const char *const str_keys[] = {"group", "consumer", "results"};
    uint64_t n;

    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
        if (strcmp(key, str_keys[i]) != 0)
            continue;
        if (*val == '\0') {
            snprintf(err, errlen, "queue: %s must not be empty", key);
            return -1;
        }
        mem_free(*strs[i]);
        *strs[i] = mem_strdup(val);
        return *strs[i] ? 0 : -1;
    }
    for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
        if (strcmp(key, nums[i].key) != 0)
            continue;
        if (parse_num(val, nums[i].min, nums[i].max, &n) != 0) {
            snprintf(err, errlen, "queue: %s must be an integer from %llu to %llu", key,
                     (unsigned long long)nums[i].min, (unsigned long long)nums[i].max);
            return -1;
        }
        store_num(u, nums[i].off, nums[i].size, n);
        return 0;
    }
    snprintf(err, errlen, "queue: unknown parameter \"%.40s\"", key);
    return -1;
}

static int parse_query(queue_url_t *u, const char *q, char *err, size_t errlen)
{
    while (q && *q) {
        const char *amp = strchr(q, '&'), *end = amp ? amp : q + strlen(q);
        const char *eq = memchr(q, '=', (size_t)(end - q));
        char *key, *val;
        int rc;

        if (eq == NULL) {
            snprintf(err, errlen, "queue: parameter \"%.*s\" has no value", (int)(end - q), q);
            return -1;
        }
        key = decoded(q, (size_t)(eq - q));
        val = decoded(eq + 1, (size_t)(end - eq - 1));
        rc = key && val ? set_param(u, key, val, err, errlen) : -1;
        if (rc != 0 && (!key || !val))
            snprintf(err, errlen, "queue: a parameter is not valid percent-encoding");
        mem_free(key);
        mem_free(val);
        if (rc != 0)
            return -1;
        q = amp ? amp + 1 : NULL;
    }
    return 0;
}

/* user:pass@ (or pass@, or user:@...) before the host. */
static int parse_userinfo(queue_url_t *u, const char *p, size_t len)
{
    const char *colon = memchr(p, ':', len);

    if (colon == NULL) {
        u->pass = decoded(p, len);
        return u->pass ? 0 : -1;
    }
    if (colon > p && (u->user = decoded(p, (size_t)(colon - p))) == NULL)
        return -1;
    u->pass = decoded(colon + 1, (size_t)(p + len - colon - 1));
    return u->pass ? 0 : -1;
}

/* host:port, host, [v6]:port or [v6]. */
static int parse_hostport(queue_url_t *u, const char *p, size_t len)
{
    const char *host = p, *colon = NULL;
    size_t hlen = len;
    uint64_t port = QUEUE_DEFAULT_PORT;
    char num[8];

    if (len > 0 && p[0] == '[') {
        const char *close = memchr(p, ']', len);
        if (close == NULL)
            return -1;
        host = p + 1;
        hlen = (size_t)(close - p - 1);
        if (close + 1 < p + len) {
            if (close[1] != ':')
                return -1;
            colon = close + 1;
        }
    } else if ((colon = memchr(p, ':', len)) != NULL) {
        hlen = (size_t)(colon - p);
    }
    if (colon != NULL) {
        size_t plen = (size_t)(p + len - colon - 1);
        if (plen == 0 || plen >= sizeof(num))
            return -1;
        memcpy(num, colon + 1, plen);
        num[plen] = '\0';
        if (parse_num(num, 1, 65535, &port) != 0)
            return -1;
    }
    if (hlen == 0)
        return -1;
    u->host = mem_strndup(host, hlen);
    u->port = (int)port;
    return u->host ? 0 : -1;
}

static int make_defaults(queue_url_t *u)
{
    char host[256], name[300];

    if (u->group == NULL && (u->group = mem_strdup("fetchd")) == NULL)
        return -1;
    if (u->consumer == NULL) {
        if (gethostname(host, sizeof(host)) != 0)
            snprintf(host, sizeof(host), "fetchd");
        host[sizeof(host) - 1] = '\0';
        snprintf(name, sizeof(name), "%s-%d", host, (int)getpid());
        if ((u->consumer = mem_strdup(name)) == NULL)
            return -1;
    }
    if (u->results == NULL) {
        size_t n = strlen(u->stream) + sizeof(":results");
        if ((u->results = mem_alloc(n)) == NULL)
            return -1;
        snprintf(u->results, n, "%s:results", u->stream);
    }
    return 0;
}

/* The URL for logs: scheme, host, port, stream and group; never the password. */
static int make_display(queue_url_t *u)
{
    int v6 = strchr(u->host, ':') != NULL;
    size_t n = strlen(u->host) + strlen(u->stream) + strlen(u->group) +
               (u->user ? strlen(u->user) : 0) + 64;

    u->display = mem_alloc(n);
    if (u->display == NULL)
        return -1;
    snprintf(u->display, n, "redis://%s%s%s%s%s%s:%d/%s?group=%s", u->user ? u->user : "",
             u->pass ? ":***" : "", u->user || u->pass ? "@" : "", v6 ? "[" : "", u->host,
             v6 ? "]" : "", u->port, u->stream, u->group);
    return 0;
}

static int parse_url(queue_url_t *u, const char *url, char *err, size_t errlen)
{
    const char *p, *slash, *at, *qm;

    if (strncasecmp(url, "rediss://", 9) == 0) {
        snprintf(err, errlen,
                 "queue: rediss:// (Redis over TLS) is out of scope; use redis:// "
                 "on a trusted network or a TLS tunnel (stunnel, spiped) to Redis");
        return -1;
    }
    if (strncasecmp(url, "redis://", 8) != 0) {
        snprintf(err, errlen, "queue: \"%.40s\" is not a redis:// URL", url);
        return -1;
    }
    p = url + 8;
    slash = strchr(p, '/');
    if (slash == NULL || slash[1] == '\0' || slash[1] == '?') {
        snprintf(err, errlen, "queue: the URL names no stream (redis://HOST:PORT/STREAM)");
        return -1;
    }
    at = memchr(p, '@', (size_t)(slash - p));
    if (at != NULL) {
        /* The last @ before the path ends the userinfo. */
        const char *a;
        while ((a = memchr(at + 1, '@', (size_t)(slash - at - 1))) != NULL)
            at = a;
        if (parse_userinfo(u, p, (size_t)(at - p)) != 0) {
            snprintf(err, errlen, "queue: the user or password is not valid percent-encoding");
            return -1;
        }
        p = at + 1;
    }
    if (parse_hostport(u, p, (size_t)(slash - p)) != 0) {
        snprintf(err, errlen, "queue: the URL has no valid HOST:PORT");
        return -1;
    }
    qm = strchr(slash, '?');
    u->stream = decoded(slash + 1, qm ? (size_t)(qm - slash - 1) : strlen(slash + 1));
    if (u->stream == NULL || *u->stream == '\0') {
        snprintf(err, errlen, "queue: the stream name is not valid");
        return -1;
    }
    if (qm && parse_query(u, qm + 1, err, errlen) != 0)
        return -1;
    if (make_defaults(u) != 0 || make_display(u) != 0) {
        snprintf(err, errlen, "queue: out of memory");
        return -1;
    }
    return 0;
}

static void qurl_dispose(queue_url_t *u)
{
    mem_free(u->host);
    mem_free(u->user);
    if (u->pass)
        memset(u->pass, 0, strlen(u->pass));
    mem_free(u->pass);
    mem_free(u->stream);
    mem_free(u->group);
    mem_free(u->consumer);
    mem_free(u->results);
    mem_free(u->display);
    memset(u, 0, sizeof(*u));
}

int queue_init(queue_t *q, const char *url, char *err, size_t errlen)
{
    memset(q, 0, sizeof(*q));
    q->url.claim_idle_ms = 60000;
    q->url.block_ms = 2000;
    q->url.max_deliveries = 5;
    q->url.count = 256;
    q->url.results_maxlen = 1000000;
    q->url.max_unsent = (size_t)64 << 20;
    if (parse_url(&q->url, url, err, errlen) != 0) {
        qurl_dispose(&q->url);
        return -1;
    }
    return 0;
}

void queue_dispose(queue_t *q)
{
    qurl_dispose(&q->url);
}

/* ---- entries ------------------------------------------------------------------ */

static void list_remove(queue_entry_t **head, queue_entry_t **tail, queue_entry_t *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        *head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else if (tail)
        *tail = e->prev;
    e->prev = e->next = NULL;
}

static void list_append(queue_entry_t **head, queue_entry_t **tail, queue_entry_t *e)
{
    e->next = NULL;
    e->prev = *tail;
    if (*tail)
        (*tail)->next = e;
    else
        *head = e;
    *tail = e;
}

static size_t held_total(const queue_t *q)
{
    return q->nheld + q->nout;
}

static void update_pending(queue_t *q)
{
    q->d->stats.queue.pending = held_total(q);
    if (q->draining && !q->closing && held_total(q) == 0 && q->settled_cb)
        q->settled_cb(q->settled_data);
}

static queue_entry_t *entry_create(queue_t *q, const char *id, size_t idlen)
{
    queue_entry_t *e;

    if (idlen == 0 || idlen >= QUEUE_ID_MAX || (e = mem_calloc(1, sizeof(*e))) == NULL)
        return NULL;
    e->q = q;
    memcpy(e->id, id, idlen);
    e->state = ENTRY_RUNNING;
    /* held needs no order, so no tail: new entries go first. */
    e->next = q->held;
    if (q->held)
        q->held->prev = e;
    q->held = e;
    q->nheld++;
    stats_obj_created(&q->d->stats, STATS_OBJ_QUEUE_ENTRY);
    update_pending(q);
    return e;
}

/* Drops e without an ack: the entry stays pending in Redis, to be claimed
 * again (by this instance or another) once idle for claim_idle. */
static void entry_free(queue_entry_t *e)
{
    queue_t *q = e->q;

    if (e->state == ENTRY_RUNNING) {
        list_remove(&q->held, NULL, e);
        q->nheld--;
    } else {
        list_remove(&q->out, &q->out_tail, e);
        q->nout--;
        if (e->result)
            q->unsent_bytes -= e->result_len;
    }
    if (e->job) {
        e->job->data = NULL;
        job_decref(e->job);
    }
    mem_free(e->result);
    stats_obj_destroyed(&q->d->stats, STATS_OBJ_QUEUE_ENTRY);
    mem_free(e);
    update_pending(q);
}

/* The one place an entry changes state; leaving ENTRY_RUNNING moves it to
 * the out list. */
static void entry_set(queue_entry_t *e, entry_state_t st)
{
    queue_t *q = e->q;

    if (e->state == ENTRY_RUNNING && st != ENTRY_RUNNING) {
        list_remove(&q->held, NULL, e);
        q->nheld--;
        list_append(&q->out, &q->out_tail, e);
        q->nout++;
    }
    e->state = st;
}

static queue_entry_t *entry_find(queue_t *q, const char *id, size_t len)
{
    queue_entry_t *lists[] = {q->held, q->out};

    for (int i = 0; i < 2; i++)
        for (queue_entry_t *e = lists[i]; e; e = e->next)
            if (strlen(e->id) == len && memcmp(e->id, id, len) == 0)
                return e;
    return NULL;
}

/* Gives e its result (a new reference, stolen; NULL: out of memory) and
 * queues it for the writer. A result that would pass max_unsent is not
 * kept: the entry is dropped unacked and will be delivered again. */
static void entry_finish(queue_entry_t *e, json_t *result)
{
    queue_t *q = e->q;
    char *text = result ? json_dumps(result, JSON_COMPACT) : NULL;

    json_decref(result);
    if (e->job) {
        e->job->data = NULL;
        job_decref(e->job);
        e->job = NULL;
    }
    if (text == NULL || (q->url.max_unsent && q->unsent_bytes + strlen(text) > q->url.max_unsent)) {
        log_warn("queue: entry %s: %s; it stays pending and will be delivered again", e->id,
                 text ? "too many results wait for Redis (max_unsent)" : "out of memory");
        mem_free(text);
        entry_free(e);
        return;
    }
    e->result = text;
    e->result_len = strlen(text);
    q->unsent_bytes += e->result_len;
    entry_set(e, ENTRY_RESULT);
    send_one(e);
}

/* A failed result for an entry that never became a job. */
static json_t *failed_result(const char *code, const char *message, const char *url)
{
    json_t *o = json_pack("{s:s, s:{s:s, s:s}}", "state", "failed", "error", "code", code,
                          "message", message);
    if (o && url)
        json_object_set_new(o, "url", json_string(url));
    return o;
}

/* ---- links: one hiredis connection each --------------------------------------- */

static int link_send(qlink_t *l, redisCallbackFn *fn, void *priv, int argc, const char **argv,
                     const size_t *lens)
{
    if (l->state != QLINK_READY || l->ac == NULL)
        return -1;
    /* The silence watchdog counts from the first command awaiting a reply. */
    if (l->ac->replies.head == NULL)
        l->heard_ms = uv_now(&l->q->d->loop);
    return redisAsyncCommandArgv(l->ac, fn, priv, argc, argv, lens) == REDIS_OK ? 0 : -1;
}

static void update_connected(queue_t *q)
{
    q->d->stats.queue.connected = q->rd.state == QLINK_READY && q->wr.state == QLINK_READY;
}

static void on_retry(uv_timer_t *t);

static void link_retry_later(qlink_t *l, uint64_t ms)
{
    queue_t *q = l->q;

    if (q->closing || (q->draining && l == &q->rd))
        return;
    if (ms == 0) {
        l->backoff_ms = l->backoff_ms ? l->backoff_ms * 2 : QUEUE_BACKOFF_MIN_MS;
        if (l->backoff_ms > QUEUE_BACKOFF_MAX_MS)
            l->backoff_ms = QUEUE_BACKOFF_MAX_MS;
        /* Jitter, so that many instances do not knock on a restarted Redis at once. */
        ms = l->backoff_ms / 2 + (uint64_t)(sched_random(&q->d->sched) * (double)l->backoff_ms / 2);
    }
    uv_timer_start(&l->retry, on_retry, ms, 0);
}

/* The link's context is gone (hiredis frees it when this returns, or freed
 * it already): count it, and connect again later. */
static void link_down(qlink_t *l, const char *why)
{
    queue_t *q = l->q;
    int was_ready = l->state == QLINK_READY;

    l->ac = NULL;
    l->state = QLINK_DOWN;
    stats_obj_destroyed(&q->d->stats, STATS_OBJ_REDIS_CONN);
    update_connected(q);
    if (q->closing || (q->draining && l == &q->rd))
        return;
    /* One line per outage, not one per attempt. */
    if (was_ready)
        log_warn("queue: %s: lost %s (%s); running jobs go on, reconnecting", l->name,
                 q->url.display, why ? why : "disconnected");
    else if (l->failures == 0)
        log_warn("queue: %s: cannot connect to %s (%s); retrying with backoff", l->name,
                 q->url.display, why ? why : "failed");
    l->failures++;
    link_retry_later(l, 0);
}

/* Closes the link now (SIGTERM's reader, or queue_close()): its pending
 * callbacks run with no reply and see that the link no longer has them. */
static void link_close(qlink_t *l)
{
    redisAsyncContext *ac = l->ac;

    uv_timer_stop(&l->retry);
    if (l->gai_active)
        uv_cancel((uv_req_t *)&l->gai);
    if (ac == NULL) {
        l->state = QLINK_DOWN;
        return;
    }
    l->ac = NULL;
    l->state = QLINK_DOWN;
    ac->data = NULL; /* on_disconnect: not ours any more */
    redisAsyncFree(ac);
    stats_obj_destroyed(&l->q->d->stats, STATS_OBJ_REDIS_CONN);
    update_connected(l->q);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    qlink_t *l = ac->data;

    if (l == NULL || status == REDIS_OK)
        return;
    link_down(l, ac->errstr);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    qlink_t *l = ac->data;

    (void)status;
    if (l != NULL)
        link_down(l, ac->err ? ac->errstr : NULL);
}

static void link_ready(qlink_t *l)
{
    queue_t *q = l->q;

    l->state = QLINK_READY;
    l->failures = 0;
    l->backoff_ms = 0;
    update_connected(q);
    if (l->was_ready) {
        q->d->stats.queue.reconnects++;
        log_notice("queue: %s: reconnected to %s", l->name, q->url.display);
    } else {
        log_notice("queue: %s: connected to %s as consumer %s", l->name, q->url.display,
                   q->url.consumer);
    }
    l->was_ready = 1;
    if (l == &q->wr) {
        q->last_refresh_ms = 0; /* refresh our claims first thing */
        flush(q);
    } else {
        kick(q);
    }
}

/* Replies to AUTH, SELECT, XGROUP CREATE and the closing PING. */
static void on_setup(redisAsyncContext *c, void *r, void *priv)
{
    qlink_t *l = priv;
    redisReply *reply = r;

    if (reply == NULL || l->ac != c || l->state != QLINK_CONNECTING)
        return;
    if (reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "BUSYGROUP", 9) != 0) {
        if (l->failures == 0 && !l->setup_failed)
            log_error("queue: %s: %s refused the connection's setup: %s", l->name,
                      l->q->url.display, reply->str);
        l->setup_failed = 1;
    }
    if (--l->setup_left > 0)
        return;
    if (l->setup_failed)
        redisAsyncFree(c); /* hiredis frees it after this callback: on_disconnect follows */
    else
        link_ready(l);
}

static int send_setup(qlink_t *l)
{
    queue_url_t *u = &l->q->url;
    char db[16];
    const char *argv[7];
    int rc = REDIS_OK;

    l->setup_left = 0;
    l->setup_failed = 0;
    if (u->pass) {
        int n = 0;
        argv[n++] = "AUTH";
        if (u->user)
            argv[n++] = u->user;
        argv[n++] = u->pass;
        rc |= redisAsyncCommandArgv(l->ac, on_setup, l, n, argv, NULL);
        l->setup_left++;
    }
    if (u->db) {
        snprintf(db, sizeof(db), "%u", u->db);
        argv[0] = "SELECT";
        argv[1] = db;
        rc |= redisAsyncCommandArgv(l->ac, on_setup, l, 2, argv, NULL);
        l->setup_left++;
    }
    if (u->create && l == &l->q->rd) {
        /* From the stream's start, so entries added before the group
         * existed are not skipped. */
        const char *x[] = {"XGROUP", "CREATE", u->stream, u->group, "0", "MKSTREAM"};
        rc |= redisAsyncCommandArgv(l->ac, on_setup, l, 6, x, NULL);
        l->setup_left++;
    }
    argv[0] = "PING";
    rc |= redisAsyncCommandArgv(l->ac, on_setup, l, 1, argv, NULL);
    l->setup_left++;
    return rc == REDIS_OK ? 0 : -1;
}

/* hiredis 0.14's libuv adapter drops a poll error: libuv reports POLLERR (a
 * refused connect, a reset) as a status and stops the handle, and the
 * adapter returns without telling hiredis, so the link hangs for good.
 * These replace the adapter's four event hooks with ones whose callback
 * hands an error to hiredis as the events it waited for (what hiredis 1.0's
 * adapter does): its read or write then meets the socket's error. */
static void on_poll(uv_poll_t *h, int status, int events)
{
    redisLibuvEvents *p = h->data;
    int ev = status != 0 ? p->events : events;
    qlink_t *l = p->context ? p->context->data : NULL;

    if (l != NULL && (ev & UV_READABLE))
        l->heard_ms = uv_now(&l->q->d->loop);
    if (p->context != NULL && (ev & UV_READABLE))
        redisAsyncHandleRead(p->context);
    if (p->context != NULL && (ev & UV_WRITABLE))
        redisAsyncHandleWrite(p->context);
}

static void poll_update(redisLibuvEvents *p, int add, int del)
{
    p->events = (p->events | add) & ~del;
    if (p->events)
        uv_poll_start(&p->handle, p->events, on_poll);
    else
        uv_poll_stop(&p->handle);
}

static void poll_add_read(void *data)
{
    poll_update(data, UV_READABLE, 0);
}

static void poll_del_read(void *data)
{
    poll_update(data, 0, UV_READABLE);
}

static void poll_add_write(void *data)
{
    poll_update(data, UV_WRITABLE, 0);
}

static void poll_del_write(void *data)
{
    poll_update(data, 0, UV_WRITABLE);
}

static void link_open(qlink_t *l, const char *ip)
{
    queue_t *q = l->q;
    redisAsyncContext *ac = redisAsyncConnect(ip, q->url.port);
    const char *why = NULL;
    char buf[128];

    if (ac == NULL) {
        why = "out of memory";
    } else if (ac->err) {
        snprintf(buf, sizeof(buf), "%s", ac->errstr);
        why = buf;
    } else if (redisLibuvAttach(ac, &q->d->loop) != REDIS_OK) {
        ac->ev.cleanup = NULL; /* the adapter did not attach: nothing of it to clean up */
        why = "cannot watch the socket";
    }
    if (why != NULL) {
        if (ac != NULL)
            redisAsyncFree(ac);
        l->state = QLINK_DOWN;
        if (l->failures++ == 0)
            log_warn("queue: %s: cannot connect to %s (%s); retrying with backoff", l->name,
                     q->url.display, why);
        link_retry_later(l, 0);
        return;
    }
    ac->ev.addRead = poll_add_read;
    ac->ev.delRead = poll_del_read;
    ac->ev.addWrite = poll_add_write;
    ac->ev.delWrite = poll_del_write;
    stats_obj_created(&q->d->stats, STATS_OBJ_REDIS_CONN);
    l->ac = ac;
    l->state = QLINK_CONNECTING;
    l->heard_ms = uv_now(&q->d->loop);
    ac->data = l;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (send_setup(l) != 0) {
        link_close(l);
        l->failures++;
        link_retry_later(l, 0);
    }
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    qlink_t *l = req->data;
    char ip[64] = "";

    l->gai_active = 0;
    if (status == 0 && res != NULL) {
        if (res->ai_family == AF_INET6)
            uv_ip6_name((struct sockaddr_in6 *)res->ai_addr, ip, sizeof(ip));
        else
            uv_ip4_name((struct sockaddr_in *)res->ai_addr, ip, sizeof(ip));
    }
    uv_freeaddrinfo(res);
    if (l->q->closing || (l->q->draining && l == &l->q->rd))
        return;
    if (ip[0] == '\0') {
        if (l->failures++ == 0)
            log_warn("queue: %s: cannot resolve %s: %s; retrying", l->name, l->q->url.host,
                     status ? uv_strerror(status) : "no address");
        l->state = QLINK_DOWN;
        link_retry_later(l, 0);
        return;
    }
    link_open(l, ip);
}

static void link_connect(qlink_t *l)
{
    struct addrinfo hints;
    char port[8];
    int rc;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof(port), "%d", l->q->url.port);
    l->state = QLINK_RESOLVING;
    l->gai.data = l;
    rc = uv_getaddrinfo(&l->q->d->loop, &l->gai, on_resolved, l->q->url.host, port, &hints);
    if (rc != 0) {
        l->state = QLINK_DOWN;
        link_retry_later(l, 0);
        return;
    }
    l->gai_active = 1;
}

static void on_retry(uv_timer_t *t)
{
    qlink_t *l = t->data;

    if (l->q->closing)
        return;
    if (l->state == QLINK_DOWN)
        link_connect(l);
    else if (l == &l->q->rd)
        kick(l->q); /* a failed read, tried again */
}

/* ---- reading entries ---------------------------------------------------------- */

/* How many more entries this instance may take: free running slots and
 * queue space, within max_inflight held entries and count per command. */
static size_t room(const queue_t *q)
{
    const sched_t *s = &q->d->sched;
    size_t cap = q->url.max_inflight ? q->url.max_inflight : s->max_running;
    size_t busy = s->nrunning + s->nqueued, held = held_total(q);
    size_t slots = (size_t)s->max_running + (s->max_queued ? s->max_queued : SIZE_MAX / 4);
    size_t r = slots > busy ? slots - busy : 0;

    if (s->max_queued_bytes && s->queued_bytes >= s->max_queued_bytes)
        return 0;
    if (cap <= held)
        return 0;
    if (r > cap - held)
        r = cap - held;
    return r < q->url.count ? r : q->url.count;
}

/* The value of field name in an entry's [f, v, f, v, ...] array, or NULL. */
static const redisReply *field(const redisReply *fields, const char *name)
{
    size_t n = strlen(name);

    for (size_t i = 0; i + 1 < fields->elements; i += 2) {
        const redisReply *f = fields->element[i];
        if (f->type == REDIS_REPLY_STRING && (size_t)f->len == n && memcmp(f->str, name, n) == 0)
            return fields->element[i + 1];
    }
    return NULL;
}

/* A malformed entry: a failed result with invalid_request, acked. */
static void entry_reject(queue_entry_t *e, const char *message, const char *url)
{
    log_info("queue: entry %s is not a valid job (%s): failed and acked", e->id, message);
    e->q->d->stats.queue.failed++;
    entry_finish(e, failed_result(err_name(ERR_INVALID_REQUEST), message, url));
}

/* Turns one entry's job into a job of the scheduler. */
static void entry_submit(queue_entry_t *e, const redisReply *fields)
{
    queue_t *q = e->q;
    const redisReply *v = fields && fields->type == REDIS_REPLY_ARRAY ? field(fields, "job") : NULL;
    char err[256], why[300];
    job_spec_t spec;
    jsonr_t r;
    uint32_t dup;
    job_t *j;
    int rc;

    if (v == NULL || v->type != REDIS_REPLY_STRING) {
        entry_reject(e, "the entry has no field \"job\"", NULL);
        return;
    }
    jsonr_init(&r, mem_realloc, mem_free);
    rc = jsonr_parse(&r, v->str, (size_t)v->len);
    if (rc == 0)
        rc = jsonr_find_duplicate(&r, &dup);
    if (rc == -2) {
        jsonr_free(&r);
        log_warn("queue: entry %s not taken now (%s); it stays pending for a claim", e->id,
                 err_str(ERR_NO_MEMORY));
        entry_free(e);
        return;
    }
    if (rc != 0 || jsonr_type(&r, 0) != JSONR_OBJECT) {
        size_t klen = 0;
        const char *key = rc == 1 ? jsonr_key(&r, dup, &klen) : NULL;
        if (rc == 1)
            snprintf(why, sizeof(why), "job: duplicate object key \"%.*s\"",
                     (int)(klen < 64 ? klen : 64), key);
        else
            snprintf(why, sizeof(why), "job: %s", rc == 0 ? "not a JSON object" : r.error);
        jsonr_free(&r);
        entry_reject(e, why, NULL);
        return;
    }
    rc = jobspec_decode_r(&r, 0, &spec, err, sizeof(err));
    if (rc == 0)
        rc = sched_submit(&q->d->sched, &spec, &j, err, sizeof(err));
    if (rc == ERR_INVALID_REQUEST) {
        size_t n = 0;
        const char *u = jsonr_str(&r, jsonr_get(&r, 0, "url"), &n);
        char *url = u != NULL ? mem_strndup(u, n) : NULL;
        snprintf(why, sizeof(why), "job: %s", err);
        entry_reject(e, why, url);
        mem_free(url);
    } else if (rc != 0) {
        /* Not the entry's fault (a full queue, memory): leave it pending. */
        log_warn("queue: entry %s not taken now (%s); it stays pending for a claim", e->id,
                 err_str(rc));
        entry_free(e);
    } else {
        job_incref(j);
        e->job = j;
        j->data = e;
    }
    jsonr_free(&r);
}

/* Entries from XREADGROUP or XAUTOCLAIM: [[id, [field, value, ...]], ...]. */
static size_t take_entries(queue_t *q, const redisReply *arr, int claimed)
{
    size_t taken = 0;

    if (arr == NULL || arr->type != REDIS_REPLY_ARRAY)
        return 0;
    for (size_t i = 0; i < arr->elements; i++) {
        const redisReply *it = arr->element[i];
        const redisReply *id =
            it->type == REDIS_REPLY_ARRAY && it->elements == 2 ? it->element[0] : NULL;
        queue_entry_t *e;

        if (id == NULL || id->type != REDIS_REPLY_STRING)
            continue;
        /* Claimed back while we still run it (Redis was away too long): keep one copy. */
        if (entry_find(q, id->str, (size_t)id->len) != NULL)
            continue;
        e = entry_create(q, id->str, (size_t)id->len);
        if (e == NULL) {
            log_warn("queue: no memory for entry %.*s: it stays pending", (int)id->len, id->str);
            continue;
        }
        if (claimed)
            q->d->stats.queue.claimed++;
        else
            q->d->stats.queue.read++;
        taken++;
        entry_submit(e, it->element[1]);
    }
    return taken;
}

static void on_read(redisAsyncContext *c, void *r, void *priv)
{
    queue_t *q = priv;
    redisReply *reply = r;

    q->reading = 0; /* a closed link's read is gone too */
    if (q->rd.ac != c || reply == NULL || q->closing || q->draining)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        if (!q->read_failing)
            log_error("queue: XREADGROUP on %s: %s; retrying every second", q->url.display,
                      reply->str);
        q->read_failing = 1;
        link_retry_later(&q->rd, 1000);
        return;
    }
    if (q->read_failing)
        log_notice("queue: reading from %s again", q->url.display);
    q->read_failing = 0;
    /* [[stream, entries]], or nil when BLOCK timed out. */
    if (reply->type == REDIS_REPLY_ARRAY)
        for (size_t i = 0; i < reply->elements; i++)
            if (reply->element[i]->type == REDIS_REPLY_ARRAY && reply->element[i]->elements == 2)
                take_entries(q, reply->element[i]->element[1], 0);
    kick(q);
}

/* Reads more entries when there is room and no read is waiting. */
static void kick(queue_t *q)
{
    char count[24], block[24];
    size_t n;

    if (!q->started || q->draining || q->closing || q->reading || q->read_failing ||
        q->rd.state != QLINK_READY)
        return;
    n = room(q);
    if (n == 0)
        return;
    snprintf(count, sizeof(count), "%zu", n);
    snprintf(block, sizeof(block), "%" PRIu64, q->url.block_ms);
    const char *argv[] = {"XREADGROUP", "GROUP", q->url.group, q->url.consumer, "COUNT", count,
                          "BLOCK",      block,   "STREAMS",    q->url.stream,   ">"};
    if (link_send(&q->rd, on_read, q, 11, argv, NULL) == 0)
        q->reading = 1;
}

/* ---- results and acks --------------------------------------------------------- */

static void send_ack(queue_entry_t *e);

static void on_added(redisAsyncContext *c, void *r, void *priv)
{
    queue_entry_t *e = priv;
    queue_t *q = e->q;
    redisReply *reply = r;

    (void)c;
    if (e->state != ENTRY_ADDING)
        return;
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        /* Sent again on reconnect, or by the tick after an error. */
        if (reply && !q->write_failing)
            log_error("queue: XADD to %s: %s; retrying", q->url.results, reply->str);
        q->write_failing = reply != NULL;
        entry_set(e, ENTRY_RESULT);
        return;
    }
    q->write_failing = 0;
    q->unsent_bytes -= e->result_len;
    mem_free(e->result);
    e->result = NULL;
    e->result_len = 0;
    entry_set(e, ENTRY_ACK);
    send_ack(e);
}

static void on_acked(redisAsyncContext *c, void *r, void *priv)
{
    queue_entry_t *e = priv;
    queue_t *q = e->q;
    redisReply *reply = r;

    (void)c;
    if (e->state != ENTRY_ACKING)
        return;
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        if (reply)
            log_error("queue: XACK %s: %s; retrying", e->id, reply->str);
        entry_set(e, ENTRY_ACK);
        return;
    }
    q->d->stats.queue.acked++;
    entry_free(e);
    kick(q); /* held entries count against max_inflight until acked */
}

static void send_result(queue_entry_t *e)
{
    queue_t *q = e->q;
    char maxlen[24];
    const char *argv[] = {"XADD", q->url.results, "MAXLEN",        "~",      maxlen,   "*", "entry",
                          e->id,  "consumer",     q->url.consumer, "result", e->result};
    size_t lens[12];

    snprintf(maxlen, sizeof(maxlen), "%zu", q->url.results_maxlen);
    for (int i = 0; i < 12; i++)
        lens[i] = strlen(argv[i]);
    lens[11] = e->result_len;
    if (link_send(&q->wr, on_added, e, 12, argv, lens) == 0)
        entry_set(e, ENTRY_ADDING);
}

static void send_ack(queue_entry_t *e)
{
    queue_t *q = e->q;
    const char *argv[] = {"XACK", q->url.stream, q->url.group, e->id};

    if (link_send(&q->wr, on_acked, e, 4, argv, NULL) == 0)
        entry_set(e, ENTRY_ACKING);
}

static void send_one(queue_entry_t *e)
{
    if (e->state == ENTRY_RESULT)
        send_result(e);
    else if (e->state == ENTRY_ACK)
        send_ack(e);
}

/* Sends every result and ack that waits (the writer came back, or the tick). */
static void flush(queue_t *q)
{
    queue_entry_t *e, *next;

    if (q->closing || q->wr.state != QLINK_READY)
        return;
    for (e = q->out; e; e = next) {
        next = e->next;
        send_one(e);
    }
}

/* ---- claims ------------------------------------------------------------------- */

static void on_refreshed(redisAsyncContext *c, void *r, void *priv)
{
    queue_t *q = priv;
    redisReply *reply = r;

    (void)c;
    if (reply && reply->type == REDIS_REPLY_ERROR && !q->closing)
        log_warn("queue: refreshing our claims: %s", reply->str);
}

/* XCLAIM ... 0 id... JUSTID for every entry held: resets their idle time,
 * so that nobody's XAUTOCLAIM takes an entry whose job still runs here. */
static void refresh_claims(queue_t *q)
{
    const char *argv[6 + QUEUE_REFRESH_CHUNK + 1];
    queue_entry_t *lists[] = {q->held, q->out};
    int n = 0;

    argv[0] = "XCLAIM";
    argv[1] = q->url.stream;
    argv[2] = q->url.group;
    argv[3] = q->url.consumer;
    argv[4] = "0";
    for (int i = 0; i < 2; i++) {
        for (queue_entry_t *e = lists[i]; e; e = e->next) {
            argv[5 + n++] = e->id;
            if (n == QUEUE_REFRESH_CHUNK) {
                argv[5 + n] = "JUSTID";
                link_send(&q->wr, on_refreshed, q, 6 + n, argv, NULL);
                n = 0;
            }
        }
    }
    if (n > 0) {
        argv[5 + n] = "JUSTID";
        link_send(&q->wr, on_refreshed, q, 6 + n, argv, NULL);
    }
}

static void on_autoclaimed(redisAsyncContext *c, void *r, void *priv)
{
    queue_t *q = priv;
    redisReply *reply = r;
    size_t n;

    (void)c;
    q->claiming = 0;
    if (reply == NULL || q->closing)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        /* NOGROUP until the reader has created the group, for one: once a streak. */
        if (!q->claim_failing)
            log_info("queue: XAUTOCLAIM on %s: %s", q->url.display, reply->str);
        q->claim_failing = 1;
        return;
    }
    q->claim_failing = 0;
    /* [next cursor, [entries], [ids deleted meanwhile]] (Redis 7). */
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 2)
        return;
    if (reply->element[0]->type == REDIS_REPLY_STRING &&
        (size_t)reply->element[0]->len < sizeof(q->claim_cursor))
        snprintf(q->claim_cursor, sizeof(q->claim_cursor), "%s", reply->element[0]->str);
    if (q->draining) {
        /* Taken while stopping: they stay pending and go to the others. */
        return;
    }
    n = take_entries(q, reply->element[1], 1);
    if (n > 0)
        log_info("queue: claimed %zu entries idle for more than %" PRIu64 " ms", n,
                 q->url.claim_idle_ms);
}

static void send_autoclaim(queue_t *q)
{
    char idle[24], count[24];
    size_t n = room(q);

    if (n == 0 || q->draining) {
        q->claiming = 0;
        return;
    }
    snprintf(idle, sizeof(idle), "%" PRIu64, q->url.claim_idle_ms);
    snprintf(count, sizeof(count), "%zu", n);
    const char *argv[] = {"XAUTOCLAIM", q->url.stream,
                          q->url.group, q->url.consumer,
                          idle,         q->claim_cursor[0] ? q->claim_cursor : "0-0",
                          "COUNT",      count};
    if (link_send(&q->wr, on_autoclaimed, q, 8, argv, NULL) != 0)
        q->claiming = 0;
}

/* An entry delivered max_deliveries times was claimed (or not, when another
 * instance was quicker): fail it and ack it. */
static void on_poison_claimed(redisAsyncContext *c, void *r, void *priv)
{
    queue_entry_t *e = priv;
    queue_t *q = e->q;
    redisReply *reply = r;
    char msg[160];

    (void)c;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements == 0 || q->closing) {
        entry_free(e);
        return;
    }
    snprintf(msg, sizeof(msg), "the entry was delivered %u times (max_deliveries) without a result",
             q->url.max_deliveries);
    log_warn("queue: entry %s: %s: failed and acked", e->id, msg);
    q->d->stats.queue.failed++;
    entry_finish(e, failed_result("max_deliveries", msg, NULL));
}

/* XPENDING's [[id, consumer, idle ms, deliveries], ...]: those delivered
 * max_deliveries times are claimed (only if still idle) to be failed; then
 * the rest of the idle entries are claimed to run here. */
static void on_pending(redisAsyncContext *c, void *r, void *priv)
{
    queue_t *q = priv;
    redisReply *reply = r;
    char idle[24];

    (void)c;
    if (reply == NULL || q->closing) {
        q->claiming = 0;
        return;
    }
    snprintf(idle, sizeof(idle), "%" PRIu64, q->url.claim_idle_ms);
    for (size_t i = 0; reply->type == REDIS_REPLY_ARRAY && i < reply->elements; i++) {
        const redisReply *p = reply->element[i];
        queue_entry_t *e;

        if (p->type != REDIS_REPLY_ARRAY || p->elements < 4 ||
            p->element[0]->type != REDIS_REPLY_STRING ||
            p->element[3]->type != REDIS_REPLY_INTEGER ||
            p->element[3]->integer < (long long)q->url.max_deliveries ||
            entry_find(q, p->element[0]->str, (size_t)p->element[0]->len) != NULL)
            continue;
        e = entry_create(q, p->element[0]->str, (size_t)p->element[0]->len);
        if (e == NULL)
            continue;
        const char *argv[] = {"XCLAIM", q->url.stream, q->url.group, q->url.consumer,
                              idle,     e->id,         "JUSTID"};
        if (link_send(&q->wr, on_poison_claimed, e, 7, argv, NULL) != 0)
            entry_free(e);
    }
    send_autoclaim(q);
}

static void claim_round(queue_t *q)
{
    char idle[24], count[24];

    q->claiming = 1;
    if (q->url.max_deliveries == 0) {
        send_autoclaim(q);
        return;
    }
    snprintf(idle, sizeof(idle), "%" PRIu64, q->url.claim_idle_ms);
    snprintf(count, sizeof(count), "%d", QUEUE_PENDING_SCAN);
    const char *argv[] = {"XPENDING", q->url.stream, q->url.group, "IDLE", idle, "-", "+", count};
    if (link_send(&q->wr, on_pending, q, 8, argv, NULL) != 0)
        q->claiming = 0;
}

static uint64_t claim_every_ms(const queue_t *q)
{
    uint64_t ms = q->url.claim_idle_ms / 2;
    return ms < QUEUE_CLAIM_EVERY_MAX_MS ? ms : QUEUE_CLAIM_EVERY_MAX_MS;
}

/* A connection that owes replies and has been silent too long (a host gone
 * without a FIN or RST, a connect that never completes) is dropped and made
 * again: TCP alone would wait for many minutes. */
static void watch_link(qlink_t *l, uint64_t now)
{
    uint64_t limit = QUEUE_SILENCE_MS + (l == &l->q->rd ? l->q->url.block_ms : 0);

    if (l->ac == NULL || (l->state == QLINK_READY && l->ac->replies.head == NULL) ||
        now - l->heard_ms < limit)
        return;
    log_warn("queue: %s: no answer from %s for %" PRIu64 " ms; connecting again", l->name,
             l->q->url.display, now - l->heard_ms);
    link_close(l);
    l->failures++;
    link_retry_later(l, 0);
}

static void on_tick(uv_timer_t *t)
{
    queue_t *q = t->data;
    uint64_t now = uv_now(&q->d->loop);

    if (!q->closing) {
        watch_link(&q->rd, now);
        watch_link(&q->wr, now);
    }
    if (q->closing || q->wr.state != QLINK_READY)
        return;
    flush(q); /* results and acks that met an error */
    if (held_total(q) > 0 && now - q->last_refresh_ms >= q->url.claim_idle_ms / 3) {
        q->last_refresh_ms = now;
        refresh_claims(q);
    }
    if (!q->draining && !q->claiming && now - q->last_claim_ms >= claim_every_ms(q)) {
        q->last_claim_ms = now;
        claim_round(q);
    }
}

/* ---- the service's interface -------------------------------------------------- */

static void link_init(queue_t *q, qlink_t *l, const char *name)
{
    l->q = q;
    l->name = name;
    uv_timer_init(&q->d->loop, &l->retry);
    l->retry.data = l;
}

int queue_start(queue_t *q, daemon_t *d)
{
    uint64_t tick;

    q->d = d;
    link_init(q, &q->rd, "reader");
    link_init(q, &q->wr, "writer");
    uv_timer_init(&d->loop, &q->tick);
    q->tick.data = q;
    tick = q->url.claim_idle_ms / 6;
    tick = tick < 50 ? 50 : tick > 1000 ? 1000 : tick;
    uv_timer_start(&q->tick, on_tick, tick, tick);
    q->started = 1;
    d->stats.queue.enabled = 1;
    log_notice("queue: consuming %s as %s; results to %s", q->url.display, q->url.consumer,
               q->url.results);
    link_connect(&q->rd);
    link_connect(&q->wr);
    return 0;
}

void queue_on_event(queue_t *q, job_t *j, sched_event_t ev)
{
    queue_entry_t *e = j->data;

    if (!q->started || q->closing || ev != SCHED_EV_FINISHED)
        return;
    if (e != NULL && e->q == q && e->job == j) {
        if (e->handed_back || (j->state == JOB_CANCELLED && j->error == ERR_SHUTDOWN))
            entry_free(e); /* pending in Redis: another instance claims it */
        else
            entry_finish(e, jobspec_encode_job(j));
    }
    kick(q);
}

void queue_drain(queue_t *q)
{
    queue_entry_t *e, *next;
    size_t n = 0;

    if (!q->started || q->draining || q->closing)
        return;
    q->draining = 1;
    link_close(&q->rd);
    for (e = q->held; e; e = next) {
        next = e->next;
        if (e->job && job_is_queued(e->job)) {
            e->handed_back = 1;
            n++;
            sched_cancel(&q->d->sched, e->job);
        }
    }
    log_notice("queue: stopped reading; %zu entries not started are handed back, %zu finish "
               "here",
               n, held_total(q));
    update_pending(q);
}

int queue_settled(const queue_t *q)
{
    return !q->started || held_total(q) == 0;
}

void queue_close(queue_t *q)
{
    size_t left;

    if (!q->started || q->closing)
        return;
    q->closing = 1;
    link_close(&q->rd);
    link_close(&q->wr);
    uv_close((uv_handle_t *)&q->rd.retry, NULL);
    uv_close((uv_handle_t *)&q->wr.retry, NULL);
    uv_close((uv_handle_t *)&q->tick, NULL);
    left = held_total(q);
    while (q->held)
        entry_free(q->held);
    while (q->out)
        entry_free(q->out);
    if (left > 0)
        log_warn("queue: %zu entries left unacked: they stay pending, and other instances "
                 "claim them after %" PRIu64 " ms",
                 left, q->url.claim_idle_ms);
    q->d->stats.queue.connected = 0;
}
