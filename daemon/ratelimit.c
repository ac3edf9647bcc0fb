/* ratelimit — per-host request rates and byte rates; see ratelimit.h. */
#include "ratelimit.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "conn.h"
#include "err.h"
#include "http.h"
#include "job.h"
#include "mem.h"

/* A host whose wait is below this is ready: uv timers count whole
 * milliseconds, and waking again for the last fraction would only add a
 * loop turn to every start. The buckets keep the debt, so the long-run
 * rate stays exact. */
#define RL_SLACK_NS   1000000u
#define RL_SWEEP_NS   ((uint64_t)1000000000u)
#define RL_TABLE_SIZE 256
#define NS_PER_S      1e9

/* A host the limiter knows. Owned by the limiter's table. */
struct rl_host {
    rl_host_t *hnext;         /* the table's chain */
    rl_host_t *bprev, *bnext; /* the blocked list, while blocked */
    int blocked;
    rl_bucket_t bucket; /* requests */
    uint64_t delay_ns;  /* the rule's minimum gap between starts */
    uint64_t last_start_ns;
    int started;         /* last_start_ns is set */
    uint64_t max_gap_ns; /* the longest gap any job asked for here */
    job_t *head, *tail;  /* borrowed: parked jobs, in start order */
    job_t *released;     /* borrowed: the job released and not yet started */
    char name[];
};

/* ---- token buckets -------------------------------------------------------------- */

void rl_bucket_init(rl_bucket_t *b, double rate, double burst, uint64_t now_ns)
{
    b->rate = rate;
    b->burst = burst;
    b->tokens = burst;
    b->last_ns = now_ns;
}

void rl_bucket_refill(rl_bucket_t *b, uint64_t now_ns)
{
    if (now_ns <= b->last_ns)
        return;
    if (b->rate > 0) {
        b->tokens += b->rate * (double)(now_ns - b->last_ns) / NS_PER_S;
        if (b->tokens > b->burst)
            b->tokens = b->burst;
    }
    b->last_ns = now_ns;
}

uint64_t rl_bucket_wait_ns(rl_bucket_t *b, double want, uint64_t now_ns)
{
    double ns;

    if (b->rate <= 0)
        return 0;
    rl_bucket_refill(b, now_ns);
    if (b->tokens >= want)
        return 0;
    ns = ceil((want - b->tokens) / b->rate * NS_PER_S);
    return ns < 1 ? 1 : (uint64_t)ns;
}

void rl_bucket_set(rl_bucket_t *b, double rate, double burst, uint64_t now_ns)
{
    rl_bucket_refill(b, now_ns);
    if (b->rate <= 0)
        b->tokens = burst; /* was unlimited: start full */
    b->rate = rate;
    b->burst = burst;
    if (b->tokens > burst)
        b->tokens = burst;
}

/* ---- rules ------------------------------------------------------------------------- */

void rl_rules_dispose(rl_rules_t *r)
{
    for (size_t i = 0; i < r->n; i++)
        mem_free(r->v[i].pattern);
    mem_free(r->v);
    r->v = NULL;
    r->n = 0;
}

static int valid_pattern(const char *p)
{
    const char *rest = p;

    if (strcmp(p, "*") == 0)
        return 1;
    if (p[0] == '*') {
        if (p[1] != '.' || p[2] == '\0')
            return 0;
        rest = p + 2;
    }
    if (*rest == '\0' || *rest == '.')
        return 0;
    for (; *rest; rest++)
        if (*rest == '*' || *rest == '/' || *rest == ' ' || (unsigned char)*rest < 0x21)
            return 0;
    return 1;
}

/* One {"host":..., "rate":..., "burst":..., "delay_ms":...} object. */
static int parse_rule(json_t *o, size_t i, rl_rule_t *r, char *why, size_t len)
{
    json_t *v;
    const char *k, *host;

    if (!json_is_object(o)) {
        snprintf(why, len, "host_limits[%zu] must be an object", i);
        return -1;
    }
    json_object_foreach (o, k, v) {
        if (strcmp(k, "host") != 0 && strcmp(k, "rate") != 0 && strcmp(k, "burst") != 0 &&
            strcmp(k, "delay_ms") != 0) {
            snprintf(why, len, "host_limits[%zu]: unknown key \"%.40s\"", i, k);
            return -1;
        }
    }
    host = json_string_value(json_object_get(o, "host"));
    if (host == NULL || !valid_pattern(host)) {
        snprintf(why, len, "host_limits[%zu].host must be a host name, \"*.suffix\" or \"*\"", i);
        return -1;
    }
    v = json_object_get(o, "rate");
    r->rate = v ? json_number_value(v) : 0;
    if (v && (!json_is_number(v) ||
              !(r->rate == 0 || (r->rate >= RL_MIN_RATE && r->rate <= RL_MAX_RATE)))) {
        snprintf(why, len,
                 "host_limits[%zu].rate must be 0 (unlimited) or from %g to %g requests/s", i,
                 RL_MIN_RATE, RL_MAX_RATE);
        return -1;
    }
    v = json_object_get(o, "burst");
    r->burst = v ? json_number_value(v) : 1;
    if (v && (!json_is_number(v) || !(r->burst >= 1 && r->burst <= RL_MAX_RATE))) {
        snprintf(why, len, "host_limits[%zu].burst must be a number from 1 to %g", i, RL_MAX_RATE);
        return -1;
    }
    v = json_object_get(o, "delay_ms");
    if (v && (!json_is_integer(v) || json_integer_value(v) < 0 ||
              json_integer_value(v) > RL_MAX_DELAY_S * 1000)) {
        snprintf(why, len, "host_limits[%zu].delay_ms must be an integer from 0 to %d", i,
                 RL_MAX_DELAY_S * 1000);
        return -1;
    }
    r->delay_ns = v ? (uint64_t)json_integer_value(v) * 1000000u : 0;
    r->pattern = mem_strdup(host);
    if (r->pattern == NULL) {
        snprintf(why, len, "host_limits: out of memory");
        return -1;
    }
    for (char *p = r->pattern; *p; p++)
        *p = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
    return 0;
}

int rl_rules_parse(const char *text, rl_rules_t *out, char *why, size_t len)
{
    json_error_t jerr;
    json_t *root, *o;
    rl_rules_t r = {NULL, 0};
    size_t i;

    *out = r;
    if (text == NULL || *text == '\0')
        return 0;
    root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL || !json_is_array(root)) {
        snprintf(why, len,
                 "host_limits must be an array of {\"host\", \"rate\", \"burst\", "
                 "\"delay_ms\"} objects%s%s",
                 root ? "" : ": ", root ? "" : jerr.text);
        json_decref(root);
        return -1;
    }
    if (json_array_size(root) == 0) {
        json_decref(root);
        return 0;
    }
    r.v = mem_calloc(json_array_size(root), sizeof(*r.v));
    if (r.v == NULL) {
        snprintf(why, len, "host_limits: out of memory");
        json_decref(root);
        return -1;
    }
    json_array_foreach (root, i, o) {
        if (parse_rule(o, i, &r.v[i], why, len) != 0)
            goto fail;
        r.n++;
        for (size_t k = 0; k < i; k++) {
            if (strcmp(r.v[k].pattern, r.v[i].pattern) == 0) {
                snprintf(why, len, "host_limits[%zu]: \"%.60s\" is listed twice", i,
                         r.v[i].pattern);
                goto fail;
            }
        }
    }
    json_decref(root);
    *out = r;
    return 0;
fail:
    rl_rules_dispose(&r);
    json_decref(root);
    return -1;
}

const rl_rule_t *rl_rules_match(const rl_rules_t *r, const char *host)
{
    const rl_rule_t *best = NULL;
    size_t best_len = 0, hlen = strlen(host);

    for (size_t i = 0; i < r->n; i++) {
        const char *p = r->v[i].pattern;
        size_t plen = strlen(p);
        if (p[0] != '*') {
            if (strcasecmp(p, host) == 0)
                return &r->v[i]; /* an exact name is the most specific */
        } else if (plen == 1) {
            if (best == NULL)
                best = &r->v[i];
        } else if (hlen > plen - 1 && strcasecmp(host + hlen - (plen - 1), p + 1) == 0 &&
                   plen > best_len) {
            /* "*.example.com" matches below example.com, not example.com itself */
            best = &r->v[i];
            best_len = plen;
        }
    }
    return best;
}

/* ---- the limiter ------------------------------------------------------------------ */

static uint64_t default_clock(void *data)
{
    (void)data;
    return uv_hrtime();
}

static uint64_t now_ns(const ratelimit_t *rl)
{
    return rl->clock(rl->clock_data);
}

static void on_wake_timer(uv_timer_t *t);
static void on_bytes_timer(uv_timer_t *t);
static void arm_wake(ratelimit_t *rl, uint64_t wait_ns);

int ratelimit_init(ratelimit_t *rl, uv_loop_t *loop, stats_t *stats)
{
    memset(rl, 0, sizeof(*rl));
    rl->loop = loop;
    rl->stats = stats;
    rl->clock = default_clock;
    rl->min_burst = 64 * 1024;
    rl->table_size = RL_TABLE_SIZE;
    rl->table = mem_calloc(rl->table_size, sizeof(*rl->table));
    if (rl->table == NULL)
        return ERR_NO_MEMORY;
    uv_timer_init(loop, &rl->wake_timer);
    uv_timer_init(loop, &rl->bytes_timer);
    rl->wake_timer.data = rl;
    rl->bytes_timer.data = rl;
    rl->handles_open = 2;
    return 0;
}

static uint64_t max_u64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

/* The gap a job asks for between the previous start to its host and its own. */
static uint64_t job_gap_ns(const job_t *j)
{
    uint64_t gap = j->spec.delay_ms * 1000000u;
    if (j->spec.rate > 0)
        gap = max_u64(gap, (uint64_t)ceil(NS_PER_S / j->spec.rate));
    return gap;
}

static rl_host_t **slot(ratelimit_t *rl, const char *name)
{
    rl_host_t **pp = &rl->table[http_hash(name) & (rl->table_size - 1)];
    while (*pp && strcmp((*pp)->name, name) != 0)
        pp = &(*pp)->hnext;
    return pp;
}

/* Doubles the table once it holds more entries than buckets; a failed
 * allocation only leaves the chains longer. */
static void grow(ratelimit_t *rl)
{
    size_t n = rl->table_size * 2;
    rl_host_t **t = mem_calloc(n, sizeof(*t));

    if (t == NULL)
        return;
    for (size_t i = 0; i < rl->table_size; i++) {
        rl_host_t *h = rl->table[i], *hn;
        for (; h; h = hn) {
            size_t k = http_hash(h->name) & (n - 1);
            hn = h->hnext;
            h->hnext = t[k];
            t[k] = h;
        }
    }
    mem_free(rl->table);
    rl->table = t;
    rl->table_size = n;
}

static void apply_rule(rl_host_t *h, const rl_rule_t *rule, uint64_t now)
{
    rl_bucket_set(&h->bucket, rule ? rule->rate : 0, rule ? rule->burst : 1, now);
    h->delay_ns = rule ? rule->delay_ns : 0;
}

static rl_host_t *host_create(ratelimit_t *rl, const char *name, uint64_t now)
{
    size_t n = strlen(name);
    rl_host_t *h = mem_calloc(1, sizeof(*h) + n + 1);

    if (h == NULL)
        return NULL;
    if (rl->nhosts >= rl->table_size)
        grow(rl);
    memcpy(h->name, name, n + 1);
    rl_bucket_init(&h->bucket, 0, 1, now);
    apply_rule(h, rl_rules_match(&rl->rules, name), now);
    *slot(rl, name) = h;
    rl->nhosts++;
    stats_obj_created(rl->stats, STATS_OBJ_HOST_LIMIT);
    arm_wake(rl, RL_SWEEP_NS); /* the sweep that will free it */
    return h;
}

static void host_destroy(ratelimit_t *rl, rl_host_t *h)
{
    rl_host_t **pp = slot(rl, h->name);
    assert(*pp == h && h->head == NULL && h->released == NULL && !h->blocked);
    *pp = h->hnext;
    rl->nhosts--;
    stats_obj_destroyed(rl->stats, STATS_OBJ_HOST_LIMIT);
    mem_free(h);
}

/* How long until the host may start job j (0: now). */
static uint64_t host_wait_ns(rl_host_t *h, const job_t *j, uint64_t now)
{
    uint64_t wait = rl_bucket_wait_ns(&h->bucket, 1.0, now);
    uint64_t gap = max_u64(h->delay_ns, job_gap_ns(j));

    if (h->started && gap > 0 && h->last_start_ns + gap > now)
        wait = max_u64(wait, h->last_start_ns + gap - now);
    return wait <= RL_SLACK_NS ? 0 : wait;
}

/* A host is blocked while it has parked jobs and none released. */
static void update_blocked(ratelimit_t *rl, rl_host_t *h)
{
    int want = h->head != NULL && h->released == NULL;

    if (want == h->blocked)
        return;
    h->blocked = want;
    if (want) {
        h->bprev = NULL;
        h->bnext = rl->blocked;
        if (rl->blocked)
            rl->blocked->bprev = h;
        rl->blocked = h;
    } else {
        if (h->bprev)
            h->bprev->bnext = h->bnext;
        else
            rl->blocked = h->bnext;
        if (h->bnext)
            h->bnext->bprev = h->bprev;
        h->bprev = h->bnext = NULL;
    }
}

/* Starts the wake timer for a host due in wait_ns, unless it fires sooner. */
static void arm_wake(ratelimit_t *rl, uint64_t wait_ns)
{
    uint64_t ms = (wait_ns + 999999u) / 1000000u;

    if (rl->closing)
        return;
    if (uv_is_active((uv_handle_t *)&rl->wake_timer) && uv_timer_get_due_in(&rl->wake_timer) <= ms)
        return;
    uv_timer_start(&rl->wake_timer, on_wake_timer, ms, 0);
}

/* Same order as the scheduler's queue: priority, then submission. */
static int starts_before(const job_t *a, const job_t *b)
{
    if (a->spec.priority != b->spec.priority)
        return a->spec.priority > b->spec.priority;
    return a->seq < b->seq;
}

static void park(ratelimit_t *rl, rl_host_t *h, job_t *j, uint64_t now)
{
    job_t *after = h->tail;

    while (after && starts_before(j, after))
        after = after->rl.prev;
    j->rl.prev = after;
    j->rl.next = after ? after->rl.next : h->head;
    if (j->rl.next)
        j->rl.next->rl.prev = j;
    else
        h->tail = j;
    if (after)
        after->rl.next = j;
    else
        h->head = j;
    if (j->rl.state == RL_JOB_NONE)
        rl->host_waits++;
    j->rl.state = RL_JOB_PARKED;
    j->rl.parked = 1;
    j->rl.host = h;
    rl->nparked++;
    update_blocked(rl, h);
    arm_wake(rl, host_wait_ns(h, h->head, now));
}

static void unpark(ratelimit_t *rl, rl_host_t *h, job_t *j)
{
    if (j->rl.prev)
        j->rl.prev->rl.next = j->rl.next;
    else
        h->head = j->rl.next;
    if (j->rl.next)
        j->rl.next->rl.prev = j->rl.prev;
    else
        h->tail = j->rl.prev;
    j->rl.prev = j->rl.next = NULL;
    j->rl.parked = 0;
    rl->nparked--;
}

/* The byte rate of a job's run: its own, else the default, within the cap. */
static void setup_bytes(ratelimit_t *rl, job_t *j, uint64_t now)
{
    uint64_t rate = j->spec.limit_rate ? j->spec.limit_rate : rl->limit_rate;
    double burst;

    if (rl->max_limit_rate && (rate == 0 || rate > rl->max_limit_rate))
        rate = rl->max_limit_rate;
    burst = (double)rate / 10 > (double)rl->min_burst ? (double)rate / 10 : (double)rl->min_burst;
    rl_bucket_init(&j->rl.bytes, (double)rate, burst, now);
}

/* A request to h starts now: it takes a token and sets the delay's clock. */
static void count_start(ratelimit_t *rl, rl_host_t *h, uint64_t gap, uint64_t now)
{
    if (h->bucket.rate > 0)
        h->bucket.tokens -= 1;
    h->last_start_ns = now;
    h->started = 1;
    h->max_gap_ns = max_u64(h->max_gap_ns, gap);
    update_blocked(rl, h);
    if (h->head)
        arm_wake(rl, host_wait_ns(h, h->head, now));
}

int ratelimit_admit(ratelimit_t *rl, job_t *j)
{
    uint64_t now = now_ns(rl), gap = job_gap_ns(j), wait;
    rl_host_t *h = j->rl.host;

    setup_bytes(rl, j, now);
    if (h == NULL)
        h = *slot(rl, j->url.host);
    if (h == NULL) {
        if (gap == 0 && rl_rules_match(&rl->rules, j->url.host) == NULL)
            return 0; /* nothing limits this host or this job */
        h = host_create(rl, j->url.host, now);
        if (h == NULL)
            return 0; /* no memory to keep a limit with: start rather than stall */
    }
    if (j->rl.state == RL_JOB_RELEASED) {
        h->released = NULL;
        j->rl.host = NULL;
    } else if (h->head != NULL || h->released != NULL) {
        park(rl, h, j, now); /* behind the jobs already waiting for this host */
        return 1;
    }
    wait = host_wait_ns(h, j, now);
    if (wait > 0) {
        park(rl, h, j, now);
        return 1;
    }
    j->rl.state = RL_JOB_NONE;
    count_start(rl, h, gap, now);
    return 0;
}

uint64_t ratelimit_request(ratelimit_t *rl, job_t *j)
{
    uint64_t now = now_ns(rl), gap = job_gap_ns(j), wait;
    rl_host_t *h = *slot(rl, j->url.host);

    if (h == NULL) {
        if (gap == 0 && rl_rules_match(&rl->rules, j->url.host) == NULL)
            return 0;
        h = host_create(rl, j->url.host, now);
        if (h == NULL)
            return 0; /* as in ratelimit_admit() */
    }
    wait = host_wait_ns(h, j, now);
    if (wait > 0) {
        if (!j->rl.holding)
            rl->host_waits++; /* once per request, however often it asks */
        j->rl.holding = 1;
        return wait;
    }
    j->rl.holding = 0;
    count_start(rl, h, gap, now);
    return 0;
}

void ratelimit_dequeue(ratelimit_t *rl, job_t *j)
{
    rl_host_t *h = j->rl.host;

    if (j->rl.state == RL_JOB_NONE)
        return;
    if (j->rl.state == RL_JOB_PARKED)
        unpark(rl, h, j);
    else
        h->released = NULL;
    j->rl.state = RL_JOB_NONE;
    j->rl.host = NULL;
    update_blocked(rl, h);
    if (h->blocked)
        arm_wake(rl, host_wait_ns(h, h->head, now_ns(rl)));
}

/* Releases the first parked job of every host that is due; returns the
 * wait until the next host is due (UINT64_MAX: none). */
static uint64_t release_due(ratelimit_t *rl, uint64_t now)
{
    uint64_t next = UINT64_MAX;
    rl_host_t *h = rl->blocked, *hn;

    for (; h; h = hn) {
        uint64_t wait = host_wait_ns(h, h->head, now);
        job_t *j = h->head;
        hn = h->bnext;
        if (wait > 0) {
            next = wait < next ? wait : next;
            continue;
        }
        unpark(rl, h, j);
        j->rl.state = RL_JOB_RELEASED;
        h->released = j;
        update_blocked(rl, h);
        if (rl->on_ready)
            rl->on_ready(rl, j, rl->ready_data);
    }
    return next;
}

/* Whether a host entry is as good as none: nothing waits, its bucket is
 * full and every gap asked for has passed. */
static int forgettable(rl_host_t *h, uint64_t now)
{
    uint64_t idle = max_u64(RL_FORGET_NS, max_u64(h->max_gap_ns, h->delay_ns));

    if (h->head || h->released)
        return 0;
    if (h->started && now - h->last_start_ns < idle)
        return 0;
    return rl_bucket_wait_ns(&h->bucket, h->bucket.burst, now) == 0;
}

static void sweep(ratelimit_t *rl, uint64_t now)
{
    for (size_t i = 0; i < rl->table_size; i++) {
        rl_host_t *h = rl->table[i], *hn;
        for (; h; h = hn) {
            hn = h->hnext;
            if (forgettable(h, now))
                host_destroy(rl, h);
        }
    }
    rl->next_sweep_ns = now + RL_SWEEP_NS;
}

static void poll_hosts(ratelimit_t *rl)
{
    uint64_t now = now_ns(rl), next = release_due(rl, now);

    if (rl->nhosts > 0 && now >= rl->next_sweep_ns)
        sweep(rl, now);
    if (rl->closing)
        return;
    if (rl->nhosts > 0 && rl->next_sweep_ns - now < next)
        next = rl->next_sweep_ns - now;
    if (next == UINT64_MAX)
        uv_timer_stop(&rl->wake_timer);
    else
        uv_timer_start(&rl->wake_timer, on_wake_timer, (next + 999999u) / 1000000u, 0);
}

static void on_wake_timer(uv_timer_t *t)
{
    poll_hosts(t->data);
}

void ratelimit_set_rules(ratelimit_t *rl, rl_rules_t *rules)
{
    uint64_t now = now_ns(rl);

    rl_rules_dispose(&rl->rules);
    rl->rules = *rules;
    rules->v = NULL;
    rules->n = 0;
    for (size_t i = 0; i < rl->table_size; i++)
        for (rl_host_t *h = rl->table[i]; h; h = h->hnext)
            apply_rule(h, rl_rules_match(&rl->rules, h->name), now);
    if (rl->blocked)
        arm_wake(rl, 0); /* a host may be free now */
}

/* ---- bytes ------------------------------------------------------------------------- */

static void global_refill(ratelimit_t *rl, uint64_t now)
{
    if (rl->global_rate != rl->bandwidth) {
        double burst = (double)rl->bandwidth / 10;
        if (burst < (double)rl->min_burst)
            burst = (double)rl->min_burst;
        rl_bucket_set(&rl->global, (double)rl->bandwidth, burst, now);
        rl->global_rate = rl->bandwidth;
    }
    rl_bucket_refill(&rl->global, now);
}

/* How long until j may read again: both buckets out of debt. */
static uint64_t bytes_wait_ns(ratelimit_t *rl, job_t *j, uint64_t now)
{
    uint64_t wait = max_u64(rl_bucket_wait_ns(&j->rl.bytes, 0, now),
                            rl->bandwidth ? rl_bucket_wait_ns(&rl->global, 0, now) : 0);
    return wait <= RL_SLACK_NS ? 0 : wait;
}

static void arm_bytes(ratelimit_t *rl, uint64_t wait_ns)
{
    uint64_t ms = (wait_ns + 999999u) / 1000000u;

    if (rl->closing)
        return;
    if (uv_is_active((uv_handle_t *)&rl->bytes_timer) &&
        uv_timer_get_due_in(&rl->bytes_timer) <= ms)
        return;
    uv_timer_start(&rl->bytes_timer, on_bytes_timer, ms, 0);
}

static void unlink_paused(ratelimit_t *rl, job_t *j, uint64_t now)
{
    if (j->rl.pprev)
        j->rl.pprev->rl.pnext = j->rl.pnext;
    else
        rl->paused_head = j->rl.pnext;
    if (j->rl.pnext)
        j->rl.pnext->rl.pprev = j->rl.pprev;
    j->rl.pprev = j->rl.pnext = NULL;
    j->rl.paused = 0;
    rl->npaused--;
    rl->paused_ns += now - j->rl.paused_since_ns;
}

int ratelimit_charge(ratelimit_t *rl, job_t *j, size_t n)
{
    uint64_t now;
    int debt = 0;

    if (j->rl.bytes.rate <= 0 && rl->bandwidth == 0)
        return j->rl.paused;
    now = now_ns(rl);
    if (j->rl.bytes.rate > 0) {
        rl_bucket_refill(&j->rl.bytes, now);
        j->rl.bytes.tokens -= (double)n;
        debt = j->rl.bytes.tokens < 0;
    }
    if (rl->bandwidth) {
        global_refill(rl, now);
        rl->global.tokens -= (double)n;
        debt |= rl->global.tokens < 0;
        /* A newcomer starts level with the others, not owed their past. */
        if (j->rl.served < rl->served_floor)
            j->rl.served = rl->served_floor;
        j->rl.served += n;
    }
    if (!debt || j->rl.paused || j->conn == NULL)
        return j->rl.paused;
    conn_pause(j->conn);
    j->rl.paused = 1;
    j->rl.paused_since_ns = now;
    j->rl.pprev = NULL;
    j->rl.pnext = rl->paused_head;
    if (rl->paused_head)
        rl->paused_head->rl.pprev = j;
    rl->paused_head = j;
    rl->npaused++;
    arm_bytes(rl, bytes_wait_ns(rl, j, now));
    return 1;
}

void ratelimit_job_detach(ratelimit_t *rl, job_t *j)
{
    if (j->rl.paused)
        unlink_paused(rl, j, now_ns(rl));
}

/* The paused job that is out of debt and has been served least, or NULL;
 * *next gets the shortest wait of the others. */
static job_t *least_served(ratelimit_t *rl, uint64_t now, uint64_t *next)
{
    job_t *best = NULL;

    for (job_t *j = rl->paused_head; j; j = j->rl.pnext) {
        uint64_t wait = bytes_wait_ns(rl, j, now);
        if (wait > 0) {
            *next = wait < *next ? wait : *next;
            continue;
        }
        if (best == NULL || j->rl.served < best->rl.served)
            best = j;
    }
    return best;
}

static void resume(ratelimit_t *rl, job_t *j, uint64_t now)
{
    unlink_paused(rl, j, now);
    if (j->rl.on_resume)
        j->rl.on_resume(j);
}

/* Resumes the paused jobs whose buckets are out of debt. Under a global
 * bandwidth they take turns, the least served first (so a job whose socket
 * yields short reads is not left behind): each resumed job is expected to
 * read about one buffer (min_burst) before it is in debt again, so only as
 * many resume as the budget covers, at least one; the rest wait for the
 * next turn. */
static void poll_bytes(ratelimit_t *rl)
{
    uint64_t now = now_ns(rl), next = UINT64_MAX;
    job_t *j, *jn;

    if (rl->bandwidth) {
        double budget;
        global_refill(rl, now);
        budget = rl->global.tokens;
        do {
            j = least_served(rl, now, &next);
            if (j == NULL)
                break;
            rl->served_floor = j->rl.served;
            resume(rl, j, now);
            budget -= (double)rl->min_burst;
        } while (budget > 0);
        if (j != NULL && rl->paused_head != NULL) {
            /* The next turn comes when the budget covers one more read. */
            double want = (double)rl->min_burst;
            uint64_t wait;
            if (want > rl->global.burst)
                want = rl->global.burst;
            wait = rl_bucket_wait_ns(&rl->global, rl->global.tokens + want, now);
            wait = wait <= RL_SLACK_NS ? RL_SLACK_NS + 1 : wait;
            next = wait < next ? wait : next;
        }
    } else {
        for (j = rl->paused_head; j; j = jn) {
            uint64_t wait = bytes_wait_ns(rl, j, now);
            jn = j->rl.pnext;
            if (wait > 0)
                next = wait < next ? wait : next;
            else
                resume(rl, j, now);
        }
    }
    if (rl->closing)
        return;
    if (next == UINT64_MAX)
        uv_timer_stop(&rl->bytes_timer);
    else
        uv_timer_start(&rl->bytes_timer, on_bytes_timer, (next + 999999u) / 1000000u, 0);
}

static void on_bytes_timer(uv_timer_t *t)
{
    poll_bytes(t->data);
}

void ratelimit_poll(ratelimit_t *rl)
{
    poll_hosts(rl);
    poll_bytes(rl);
}

/* ---- figures and teardown ------------------------------------------------------- */

uint64_t ratelimit_paused_ns(const ratelimit_t *rl)
{
    uint64_t now = now_ns(rl), paused = rl->paused_ns;

    for (const job_t *j = rl->paused_head; j; j = j->rl.pnext)
        paused += now - j->rl.paused_since_ns;
    return paused;
}

json_t *ratelimit_stats_json(const ratelimit_t *rl)
{
    uint64_t paused = ratelimit_paused_ns(rl);
    json_t *rules = json_array(), *o;

    for (size_t i = 0; rules && i < rl->rules.n; i++) {
        const rl_rule_t *r = &rl->rules.v[i];
        if (json_array_append_new(rules, json_pack("{s:s, s:f, s:f, s:I}", "host", r->pattern,
                                                   "rate", r->rate, "burst", r->burst, "delay_ms",
                                                   (json_int_t)(r->delay_ns / 1000000u))) != 0) {
            json_decref(rules);
            rules = NULL;
        }
    }
    if (rules == NULL)
        return NULL;
    o = json_pack("{s:o, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f}", "host_limits", rules,
                  "bandwidth", (json_int_t)rl->bandwidth, "limit_rate", (json_int_t)rl->limit_rate,
                  "max_limit_rate", (json_int_t)rl->max_limit_rate, "hosts", (json_int_t)rl->nhosts,
                  "jobs_waiting", (json_int_t)rl->nparked, "host_waits_total",
                  (json_int_t)rl->host_waits, "jobs_paused", (json_int_t)rl->npaused,
                  "bandwidth_paused_seconds_total", paused / NS_PER_S);
    return o;
}

static void on_close(uv_handle_t *h)
{
    ratelimit_t *rl = h->data;
    rl->handles_open--;
}

void ratelimit_close(ratelimit_t *rl)
{
    if (rl->closing)
        return;
    rl->closing = 1;
    uv_close((uv_handle_t *)&rl->wake_timer, on_close);
    uv_close((uv_handle_t *)&rl->bytes_timer, on_close);
}

void ratelimit_dispose(ratelimit_t *rl)
{
    assert(rl->handles_open == 0 && rl->nparked == 0 && rl->npaused == 0);
    for (size_t i = 0; rl->table && i < rl->table_size; i++) {
        rl_host_t *h = rl->table[i], *hn;
        for (; h; h = hn) {
            hn = h->hnext;
            h->blocked = 0;
            host_destroy(rl, h);
        }
    }
    rl->blocked = NULL;
    mem_free(rl->table);
    rl->table = NULL;
    rl_rules_dispose(&rl->rules);
}
