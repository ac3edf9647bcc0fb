/* sched — queue, running set and retention; see sched.h. */
#include "sched.h"

#include <assert.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "err.h"
#include "fmt.h"
#include "http.h"
#include "mem.h"

#define SCHED_INITIAL_TABLE 1024
#define SCHED_INITIAL_HEAP  64
/* After a burst of at least this many jobs has mostly left (a quarter
 * remains), the memory it took is handed back: the table and the heap
 * shrink as they empty, and the allocator returns its free pages to the
 * system at most once per SCHED_TRIM_EVERY_MS. The quarter that leaves
 * after that trim is handed back too, once nothing is queued or running
 * (at least a quarter of SCHED_TRIM_MIN_PEAK jobs). */
#define SCHED_TRIM_MIN_PEAK 1024
#define SCHED_TRIM_EVERY_MS 2000

static void on_kick(uv_idle_t *h);
static void on_retain_timer(uv_timer_t *t);
static void on_trim_timer(uv_timer_t *t);
static void on_keep_timer(uv_timer_t *t);
static void keep_unlink(sched_t *s, job_t *j);
static void maybe_trim(sched_t *s);
static void sched_emit(sched_t *s, job_t *j, sched_event_t ev);
static void on_job_event(void *owner, job_t *j, job_event_t ev);
static void on_job_finished(void *owner, job_t *j);
static double owner_random(void *owner);

/* How the scheduler's jobs reach it (their environment's ops). */
static const job_owner_ops_t job_owner_ops = {
    .on_event = on_job_event,
    .on_finished = on_job_finished,
    .random = owner_random,
};
static void on_host_ready(ratelimit_t *rl, job_t *j, void *data);

static void on_handle_close(uv_handle_t *h)
{
    sched_t *s = h->data;
    s->handles_open--;
}

int sched_init(sched_t *s, uv_loop_t *loop, stats_t *stats, pool_t *pool, dns_t *dns,
               buf_pool_t *bufs, const char *download_dir)
{
    memset(s, 0, sizeof(*s));
    s->loop = loop;
    s->stats = stats;
    s->pool = pool;
    s->dns = dns;
    s->bufs = bufs;
    s->max_running = 1024;
    s->max_queued = 100000;
    s->max_queued_bytes = (size_t)256 << 20;
    s->retain_jobs = 10000;
    s->retain_ms = 3600 * 1000;
    s->accepting = 1;
    if (download_dir != NULL) {
        char real[PATH_MAX];
        if (realpath(download_dir, real) == NULL)
            return ERR_IO;
        s->download_dir = mem_strdup(real);
        if (s->download_dir == NULL)
            return ERR_NO_MEMORY;
    }
    s->env.loop = loop;
    s->env.stats = stats;
    s->env.pool = pool;
    s->env.dns = dns;
    s->env.bufs = bufs;
    s->env.rl = &s->rl;
    s->env.download_dir = s->download_dir;
    retry_policy_init(&s->env.retry);
    s->env.progress_ms = JOB_DEFAULT_PROGRESS_MS;
    s->env.ops = &job_owner_ops;
    s->env.owner = s;
    s->table_size = SCHED_INITIAL_TABLE;
    s->table = mem_calloc(s->table_size, sizeof(*s->table));
    s->heap_cap = SCHED_INITIAL_HEAP;
    s->heap = mem_alloc(s->heap_cap * sizeof(*s->heap));
    if (s->table == NULL || s->heap == NULL || ratelimit_init(&s->rl, loop, stats) != 0) {
        mem_free(s->table);
        mem_free(s->heap);
        mem_free(s->download_dir);
        return ERR_NO_MEMORY;
    }
    /* Ids are unique across restarts: the high half comes from the start
     * time and the pid, the low half counts submissions. */
    s->id_prefix = ((uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20)) & 0xffffffffu;
    s->rng = uv_hrtime() ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ull;
    uv_idle_init(loop, &s->kick);
    uv_timer_init(loop, &s->retain_timer);
    uv_timer_init(loop, &s->trim_timer);
    uv_timer_init(loop, &s->keep_timer);
    s->kick.data = s;
    s->retain_timer.data = s;
    s->trim_timer.data = s;
    s->keep_timer.data = s;
    s->handles_open = 4;
    s->rl.on_ready = on_host_ready;
    s->rl.ready_data = s;
    return 0;
}

double sched_random(sched_t *s)
{
    /* xorshift64*: plenty for backoff jitter, and no global state. */
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return (double)((s->rng * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}

/* The jobs' random source (job_owner_ops_t.random). */
static double owner_random(void *owner)
{
    return sched_random(owner);
}

/* ---- the id table ------------------------------------------------------------ */

/* Rehashes the id table into n buckets (a power of two). */
static void table_resize(sched_t *s, size_t n)
{
    job_t **t = mem_calloc(n, sizeof(*t));
    if (t == NULL)
        return; /* longer chains, or a larger table: still correct */
    for (size_t i = 0; i < s->table_size; i++) {
        job_t *j = s->table[i], *next;
        for (; j; j = next) {
            next = j->hnext;
            size_t k = j->id_hash & (n - 1);
            j->hnext = t[k];
            t[k] = j;
        }
    }
    mem_free(s->table);
    s->table = t;
    s->table_size = n;
}

/* The bucket index of an id: the low 32 bits of its hash, which the job
 * keeps (id_hash) so that a rehash does not hash every id again. */
static uint32_t id_hash(const char *id)
{
    return (uint32_t)http_hash(id);
}

static void table_insert(sched_t *s, job_t *j)
{
    size_t k;

    j->id_hash = id_hash(j->id);
    k = j->id_hash & (s->table_size - 1);
    j->hnext = s->table[k];
    s->table[k] = j;
    if (++s->njobs > s->table_size)
        table_resize(s, s->table_size * 2);
    if (s->njobs > s->peak_jobs)
        s->peak_jobs = s->njobs;
}

static void table_remove(sched_t *s, job_t *j)
{
    job_t **pp = &s->table[j->id_hash & (s->table_size - 1)];
    while (*pp != j)
        pp = &(*pp)->hnext;
    *pp = j->hnext;
    j->hnext = NULL;
    s->njobs--;
    s->left_jobs++;
    /* Shrink as the table empties, but never while sched_close() walks it. */
    if (s->accepting && s->table_size > SCHED_INITIAL_TABLE && s->njobs < s->table_size / 4)
        table_resize(s, s->table_size / 2);
    maybe_trim(s);
}

job_t *sched_find(sched_t *s, const char *id)
{
    job_t *j = s->table[id_hash(id) & (s->table_size - 1)];
    while (j && strcmp(j->id, id) != 0)
        j = j->hnext;
    return j;
}

/* ---- the priority queue ------------------------------------------------------ */

/* A queued job that may not start now: paused, or waiting for its host. */
static int held(const job_t *j)
{
    return j->rl.parked || j->paused;
}

static int runs_before(const job_t *a, const job_t *b)
{
    if (held(a) != held(b))
        return held(b); /* paused jobs and jobs waiting for their host come last */
    if (a->spec.priority != b->spec.priority)
        return a->spec.priority > b->spec.priority;
    return a->seq < b->seq;
}

static void heap_set(sched_t *s, size_t i, job_t *j)
{
    s->heap[i] = j;
    j->heap_index = i;
}

static void sift_up(sched_t *s, size_t i)
{
    job_t *j = s->heap[i];
    while (i > 0 && runs_before(j, s->heap[(i - 1) / 2])) {
        heap_set(s, i, s->heap[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    heap_set(s, i, j);
}

static void sift_down(sched_t *s, size_t i)
{
    job_t *j = s->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= s->nqueued)
            break;
        if (c + 1 < s->nqueued && runs_before(s->heap[c + 1], s->heap[c]))
            c++;
        if (!runs_before(s->heap[c], j))
            break;
        heap_set(s, i, s->heap[c]);
        i = c;
    }
    heap_set(s, i, j);
}

static int heap_push(sched_t *s, job_t *j)
{
    if (s->nqueued == s->heap_cap) {
        job_t **h = mem_realloc(s->heap, 2 * s->heap_cap * sizeof(*h));
        if (h == NULL)
            return ERR_NO_MEMORY;
        s->heap = h;
        s->heap_cap *= 2;
    }
    heap_set(s, s->nqueued++, j);
    sift_up(s, s->nqueued - 1);
    s->queued_bytes += j->cost;
    return 0;
}

/* Halves the heap's array once it is three quarters empty. */
static void heap_shrink(sched_t *s)
{
    job_t **h;

    if (s->heap_cap <= SCHED_INITIAL_HEAP || s->nqueued >= s->heap_cap / 4)
        return;
    h = mem_realloc(s->heap, s->heap_cap / 2 * sizeof(*h));
    if (h == NULL)
        return; /* the larger array still works */
    s->heap = h;
    s->heap_cap /= 2;
}

static void heap_remove(sched_t *s, job_t *j)
{
    size_t i = j->heap_index;
    assert(i < s->nqueued && s->heap[i] == j);
    assert(s->queued_bytes >= j->cost);
    ratelimit_dequeue(&s->rl, j);
    s->queued_bytes -= j->cost;
    if (i != --s->nqueued) {
        heap_set(s, i, s->heap[s->nqueued]);
        sift_down(s, i);
        sift_up(s, s->heap[i]->heap_index);
    }
    heap_shrink(s);
}

/* ---- dispatch ---------------------------------------------------------------- */

static void schedule_kick(sched_t *s)
{
    if (!s->kick_active && s->nqueued > 0 && s->nrunning < s->max_running && s->accepting &&
        !s->draining) {
        uv_idle_start(&s->kick, on_kick);
        s->kick_active = 1;
    }
}

/* Starts queued jobs from an idle handle, so submitting a batch never runs
 * connection code inside the submitter's call. */
static void on_kick(uv_idle_t *h)
{
    sched_t *s = h->data;

    uv_idle_stop(&s->kick);
    s->kick_active = 0;
    while (s->nqueued > 0 && s->nrunning < s->max_running && s->accepting && !s->draining) {
        job_t *j = s->heap[0];
        if (held(j))
            break; /* every queued job is paused or waits for its host */
        if (ratelimit_admit(&s->rl, j) != 0) {
            sift_down(s, 0); /* parked: it sorts after the jobs that may start */
            continue;
        }
        heap_remove(s, j);
        s->nrunning++;
        job_start(j);
    }
}

/* The rate limiter lets a parked job start: it sorts among the others again. */
static void on_host_ready(ratelimit_t *rl, job_t *j, void *data)
{
    sched_t *s = data;
    (void)rl;
    sift_up(s, j->heap_index);
    schedule_kick(s);
}

static int accepting_check(sched_t *s, size_t n, char *errmsg, size_t errlen)
{
    if (!s->accepting || s->draining) {
        snprintf(errmsg, errlen, "the daemon is shutting down");
        return ERR_SHUTDOWN;
    }
    if (s->max_queued && (s->nqueued + n > s->max_queued || n > s->max_queued)) {
        snprintf(errmsg, errlen, "the queue is full: %zu jobs are queued (max_jobs %zu)",
                 s->nqueued, s->max_queued);
        return ERR_QUEUE_FULL;
    }
    if (s->max_queued_bytes && s->queued_bytes >= s->max_queued_bytes) {
        snprintf(errmsg, errlen,
                 "the queue is full: queued jobs hold %zu bytes (max_queue_bytes %zu)",
                 s->queued_bytes, s->max_queued_bytes);
        return ERR_QUEUE_FULL;
    }
    return 0;
}

/* The byte budget, once the batch's jobs exist and their size is known. */
static int bytes_check(sched_t *s, job_t **jobs, size_t n, char *errmsg, size_t errlen)
{
    size_t add = 0;

    if (s->max_queued_bytes == 0)
        return 0;
    for (size_t k = 0; k < n; k++)
        add += jobs[k]->cost;
    if (add > s->max_queued_bytes || s->queued_bytes > s->max_queued_bytes - add) {
        snprintf(errmsg, errlen,
                 "the queue is full: %zu more bytes would exceed max_queue_bytes %zu "
                 "(%zu bytes queued)",
                 add, s->max_queued_bytes, s->queued_bytes);
        return ERR_QUEUE_FULL;
    }
    return 0;
}

/* Gives a validated job its id and queues it; the table takes the
 * creator's reference. Only fails for lack of memory (queue growth). */
static int enqueue(sched_t *s, job_t *j)
{
    int rc;

    j->seq = ++s->next_seq;
    if (j->id[0] == '\0') {
        /* 16 hex digits: the 32-bit prefix, then the sequence's low 32 bits. */
        char id[17];
        fmt_hex64(id, s->id_prefix & 0xffffffffu, 8);
        fmt_hex64(id + 8, j->seq & 0xffffffffu, 8);
        id[16] = '\0';
        memcpy(j->id, id, sizeof(id));
    }
    rc = heap_push(s, j);
    if (rc != 0)
        return rc;
    table_insert(s, j);
    j->aprev = s->all_tail;
    j->anext = NULL;
    if (s->all_tail)
        s->all_tail->anext = j;
    else
        s->all_head = j;
    s->all_tail = j;
    sched_emit(s, j, SCHED_EV_QUEUED);
    return 0;
}

int sched_submit(sched_t *s, job_spec_t *spec, job_t **out, char *errmsg, size_t errlen)
{
    long bad;
    return sched_submit_many(s, spec, 1, out, &bad, errmsg, errlen);
}

/* Makes room in the queue for n more jobs up front, so that enqueueing a
 * validated batch cannot fail halfway. */
static int reserve(sched_t *s, size_t n)
{
    size_t cap = s->heap_cap;
    job_t **h;

    if (s->nqueued + n <= cap)
        return 0;
    while (cap < s->nqueued + n)
        cap *= 2;
    h = mem_realloc(s->heap, cap * sizeof(*h));
    if (h == NULL)
        return ERR_NO_MEMORY;
    s->heap = h;
    s->heap_cap = cap;
    return 0;
}

int sched_submit_each(sched_t *s, size_t n, sched_spec_cb next, void *data, job_t **jobs, long *bad,
                      char *errmsg, size_t errlen)
{
    size_t created = 0;
    int rc;

    *bad = -1;
    rc = accepting_check(s, n, errmsg, errlen);
    while (rc == 0 && created < n) {
        job_spec_t spec;
        rc = next(data, created, &spec, errmsg, errlen);
        /* job_create() takes the spec, whether it succeeds or not. */
        if (rc == 0)
            rc = job_create(&s->env, &spec, &jobs[created], errmsg, errlen);
        if (rc == 0)
            created++;
        else if (rc != ERR_NO_MEMORY)
            *bad = (long)created;
    }
    if (rc == 0)
        rc = bytes_check(s, jobs, n, errmsg, errlen);
    if (rc == 0 && (rc = reserve(s, n)) != 0)
        snprintf(errmsg, errlen, "%s", err_str(rc));
    if (rc != 0) {
        for (size_t k = 0; k < created; k++)
            job_decref(jobs[k]);
        return rc;
    }
    for (size_t k = 0; k < n; k++) {
        rc = enqueue(s, jobs[k]);
        assert(rc == 0);
        (void)rc;
    }
    schedule_kick(s);
    return 0;
}

/* Moves specs[k] out of the array (which keeps a zeroed spec). */
static int spec_from_array(void *data, size_t k, job_spec_t *spec, char *errmsg, size_t errlen)
{
    job_spec_t *specs = data;
    (void)errmsg;
    (void)errlen;
    *spec = specs[k];
    memset(&specs[k], 0, sizeof(specs[k]));
    return 0;
}

int sched_submit_many(sched_t *s, job_spec_t *specs, size_t n, job_t **jobs, long *bad,
                      char *errmsg, size_t errlen)
{
    int rc = sched_submit_each(s, n, spec_from_array, specs, jobs, bad, errmsg, errlen);
    /* The specs the batch did not take (the taken ones are zeroed). */
    for (size_t k = 0; rc != 0 && k < n; k++)
        job_spec_dispose(&specs[k]);
    return rc;
}

int sched_restore(sched_t *s, job_spec_t *spec, const char *id, char *errmsg, size_t errlen)
{
    job_t *j;
    int rc;

    if (strlen(id) >= sizeof(j->id) || sched_find(s, id) != NULL) {
        job_spec_dispose(spec);
        snprintf(errmsg, errlen, "id %.40s is already in use or too long", id);
        return ERR_INVALID_REQUEST;
    }
    rc = accepting_check(s, 1, errmsg, errlen);
    if (rc != 0) {
        job_spec_dispose(spec);
        return rc;
    }
    rc = job_create(&s->env, spec, &j, errmsg, errlen);
    if (rc != 0)
        return rc;
    snprintf(j->id, sizeof(j->id), "%s", id);
    rc = bytes_check(s, &j, 1, errmsg, errlen);
    if (rc != 0 || (rc = reserve(s, 1)) != 0 || (rc = enqueue(s, j)) != 0) {
        if (rc != ERR_QUEUE_FULL)
            snprintf(errmsg, errlen, "%s", err_str(rc));
        job_decref(j);
        return rc;
    }
    schedule_kick(s);
    return 0;
}

void sched_kick(sched_t *s)
{
    schedule_kick(s);
}

void sched_drain(sched_t *s)
{
    s->draining = 1;
}

job_t *sched_next(sched_t *s, job_t *j)
{
    return j ? j->anext : s->all_head;
}

/* ---- finishing and retention -------------------------------------------------- */

static void forget(sched_t *s, job_t *j)
{
    if (j->rprev)
        j->rprev->rnext = j->rnext;
    else
        s->retained_head = j->rnext;
    if (j->rnext)
        j->rnext->rprev = j->rprev;
    else
        s->retained_tail = j->rprev;
    j->rprev = j->rnext = NULL;
    s->nretained--;
    if (j->aprev)
        j->aprev->anext = j->anext;
    else
        s->all_head = j->anext;
    if (j->anext)
        j->anext->aprev = j->aprev;
    else
        s->all_tail = j->aprev;
    j->aprev = j->anext = NULL;
    table_remove(s, j);
    job_decref(j);
}

static void expire(sched_t *s)
{
    uint64_t now = uv_now(s->loop);

    while (s->retained_head &&
           (s->nretained > s->retain_jobs || now - s->retained_head->finished_ms >= s->retain_ms))
        forget(s, s->retained_head);
    if (!s->accepting)
        return; /* the timer is closing */
    if (s->retained_head) {
        uint64_t due = s->retained_head->finished_ms + s->retain_ms;
        uint64_t in = due > now ? due - now : 1;
        /* Every finished job comes here; the oldest's deadline is most often
         * the one the timer already has. */
        if (!uv_is_active((uv_handle_t *)&s->retain_timer) ||
            uv_timer_get_due_in(&s->retain_timer) != in)
            uv_timer_start(&s->retain_timer, on_retain_timer, in, 0);
    } else {
        uv_timer_stop(&s->retain_timer);
    }
}

static void on_retain_timer(uv_timer_t *t)
{
    expire(t->data);
}

/* ---- giving memory back -------------------------------------------------------- */

static void trim_now(sched_t *s)
{
    s->last_trim_ms = uv_now(s->loop);
    s->peak_jobs = s->njobs;
    s->left_jobs = 0;
    s->trims++;
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

static void on_trim_timer(uv_timer_t *t)
{
    trim_now(t->data);
}

/* Once a large burst has mostly left, hand the pages it used back to the
 * system; the timer rate-limits the trim (it walks the whole heap). */
static void maybe_trim(sched_t *s)
{
    int burst = s->peak_jobs >= SCHED_TRIM_MIN_PEAK && s->njobs <= s->peak_jobs / 4;
    int tail = s->left_jobs >= SCHED_TRIM_MIN_PEAK / 4 && s->nqueued == 0 && s->nrunning == 0;
    uint64_t now, due;

    if (!s->accepting || !(burst || tail) || uv_is_active((uv_handle_t *)&s->trim_timer))
        return;
    now = uv_now(s->loop);
    due = s->last_trim_ms + SCHED_TRIM_EVERY_MS;
    /* Not inside the caller's call: a cancel of 40,000 jobs trims once. */
    uv_timer_start(&s->trim_timer, on_trim_timer, due > now ? due - now : 1, 0);
}

/* A job has finished (job_owner_ops_t.on_finished): into retention. */
static void on_job_finished(void *owner, job_t *j)
{
    sched_t *s = owner;

    if (j->timings.started > 0) {
        assert(s->nrunning > 0);
        s->nrunning--;
    }
    if (j->paused) {
        assert(s->npaused > 0);
        s->npaused--;
        keep_unlink(s, j);
    }
    j->rprev = s->retained_tail;
    j->rnext = NULL;
    if (s->retained_tail)
        s->retained_tail->rnext = j;
    else
        s->retained_head = j;
    s->retained_tail = j;
    s->nretained++;
    job_incref(j); /* observers may drop the last other reference */
    sched_emit(s, j, SCHED_EV_FINISHED);
    if (!s->accepting)
        forget(s, j); /* shutting down: nobody will ask for it */
    else
        expire(s);
    job_decref(j);
    schedule_kick(s);
}

int sched_cancel(sched_t *s, job_t *j)
{
    if (job_is_queued(j))
        heap_remove(s, j);
    return job_cancel(j, ERR_CANCELLED);
}

/* ---- pause, resume, set ------------------------------------------------------- */

static uint64_t keep_ms(const sched_t *s)
{
    return s->keep_ms ? s->keep_ms : s->pool->idle_timeout_ms;
}

static void keep_arm(sched_t *s)
{
    uint64_t now, due;

    if (!s->accepting)
        return; /* the timer is closing */
    if (s->kept_head == NULL) {
        uv_timer_stop(&s->keep_timer);
        return;
    }
    now = uv_now(s->loop);
    due = s->kept_head->paused_ms + keep_ms(s);
    uv_timer_start(&s->keep_timer, on_keep_timer, due > now ? due - now : 1, 0);
}

static int keep_linked(const sched_t *s, const job_t *j)
{
    return j->kprev != NULL || s->kept_head == j;
}

/* Takes j off the keep list if it is there. */
static void keep_unlink(sched_t *s, job_t *j)
{
    if (!keep_linked(s, j))
        return;
    if (j->kprev)
        j->kprev->knext = j->knext;
    else
        s->kept_head = j->knext;
    if (j->knext)
        j->knext->kprev = j->kprev;
    else
        s->kept_tail = j->kprev;
    j->kprev = j->knext = NULL;
}

static void keep_link(sched_t *s, job_t *j)
{
    j->paused_ms = uv_now(s->loop);
    j->kprev = s->kept_tail;
    j->knext = NULL;
    if (s->kept_tail)
        s->kept_tail->knext = j;
    else
        s->kept_head = j;
    s->kept_tail = j;
    if (s->kept_head == j)
        keep_arm(s);
}

/* Every job keeps its connection for the same time, so the list is in
 * deadline order: the jobs at its head whose time is up let go. */
static void on_keep_timer(uv_timer_t *t)
{
    sched_t *s = t->data;
    uint64_t now = uv_now(s->loop), keep = keep_ms(s);

    while (s->kept_head && s->kept_head->paused_ms + keep <= now) {
        job_t *j = s->kept_head;
        keep_unlink(s, j);
        job_pause_expire(j);
    }
    keep_arm(s);
}

static int finished_error(job_t *j, char *errmsg, size_t errlen)
{
    if (job_is_finished(j))
        snprintf(errmsg, errlen, "job %s has already finished (%s)", j->id,
                 job_state_name(j->state));
    else /* its end is being written: still "running", but past changing */
        snprintf(errmsg, errlen, "job %s has already finished", j->id);
    return ERR_INVALID_REQUEST;
}

int sched_pause(sched_t *s, job_t *j, char *errmsg, size_t errlen)
{
    int queued = job_is_queued(j), rc;

    if (job_is_finished(j) || !job_is_cancellable(j))
        return finished_error(j, errmsg, errlen);
    if (j->paused)
        return 0;
    if (queued)
        ratelimit_dequeue(&s->rl, j); /* a held place at its host would block the host */
    rc = job_pause(j, errmsg, errlen);
    if (rc < 0)
        return rc;
    s->npaused++;
    if (queued)
        sift_down(s, j->heap_index); /* after every job that may start */
    else if (rc == 1)
        keep_link(s, j);
    sched_emit(s, j, SCHED_EV_PAUSED);
    return 0;
}

int sched_resume(sched_t *s, job_t *j, char *errmsg, size_t errlen)
{
    if (job_is_finished(j) || !job_is_cancellable(j))
        return finished_error(j, errmsg, errlen);
    if (!j->paused)
        return 0;
    s->npaused--;
    keep_unlink(s, j);
    job_incref(j); /* a fresh attempt may finish it at once */
    job_resume(j);
    if (job_is_queued(j)) {
        sift_up(s, j->heap_index); /* back to its place: priority, then seq */
        schedule_kick(s);
    }
    if (!job_is_finished(j))
        sched_emit(s, j, SCHED_EV_RESUMED);
    job_decref(j);
    return 0;
}

/* A running job's byte rate follows its new limit_rate at once: its own,
 * else the daemon's default, within the daemon's cap (as ratelimit_admit()
 * sets it up); the tokens it has are kept. */
static void set_running_rate(sched_t *s, job_t *j)
{
    ratelimit_t *rl = &s->rl;
    uint64_t rate = j->spec.limit_rate ? j->spec.limit_rate : rl->limit_rate;
    double burst;

    if (rl->max_limit_rate && (rate == 0 || rate > rl->max_limit_rate))
        rate = rl->max_limit_rate;
    burst = (double)rate / 10 > (double)rl->min_burst ? (double)rate / 10 : (double)rl->min_burst;
    rl_bucket_set(&j->rl.bytes, (double)rate, burst, rl->clock(rl->clock_data));
}

int sched_set(sched_t *s, job_t *j, const job_spec_t *to, unsigned which, char *errmsg,
              size_t errlen)
{
    static const char *const names[] = {"priority", "rate", "delay"};

    if (job_is_finished(j) || !job_is_cancellable(j))
        return finished_error(j, errmsg, errlen);
    if (!job_is_queued(j)) {
        for (unsigned k = 0; k < 3; k++) {
            if (which & (1u << k)) {
                snprintf(errmsg, errlen, "%s: job %s is running; only limit_rate can change now",
                         names[k], j->id);
                return ERR_INVALID_REQUEST;
            }
        }
    }
    if (which & SCHED_SET_PRIORITY)
        j->spec.priority = to->priority;
    if (which & SCHED_SET_RATE)
        j->spec.rate = to->rate;
    if (which & SCHED_SET_DELAY)
        j->spec.delay_ms = to->delay_ms;
    if (which & SCHED_SET_LIMIT_RATE) {
        j->spec.limit_rate = to->limit_rate;
        if (!job_is_queued(j))
            set_running_rate(s, j);
    }
    if (!job_is_queued(j))
        return 0;
    if (which & (SCHED_SET_RATE | SCHED_SET_DELAY))
        ratelimit_dequeue(&s->rl, j); /* admitted again under its new limits */
    sift_up(s, j->heap_index);
    sift_down(s, j->heap_index);
    schedule_kick(s);
    return 0;
}

void sched_forget_finished(sched_t *s)
{
    while (s->retained_head)
        forget(s, s->retained_head);
}

static void sched_emit(sched_t *s, job_t *j, sched_event_t ev)
{
    if (s->on_event)
        s->on_event(s, j, ev, s->event_data);
}

/* A running job's events (job_owner_ops_t.on_event), passed on to the
 * scheduler's observer. */
static void on_job_event(void *owner, job_t *j, job_event_t ev)
{
    static const sched_event_t map[] = {
        [JOB_EV_STARTED] = SCHED_EV_STARTED,
        [JOB_EV_REDIRECTED] = SCHED_EV_REDIRECTED,
        [JOB_EV_RETRYING] = SCHED_EV_RETRYING,
        [JOB_EV_PROGRESS] = SCHED_EV_PROGRESS,
    };
    sched_emit(owner, j, map[ev]);
}

void sched_close(sched_t *s)
{
    if (!s->accepting)
        return;
    s->accepting = 0;
    while (s->nqueued > 0) {
        job_t *j = s->heap[0];
        heap_remove(s, j);
        job_cancel(j, ERR_SHUTDOWN);
    }
    /* Cancelling may change the chain under us (observers, finished jobs
     * leaving the table), so start the bucket over after each cancel. */
    for (size_t i = 0; i < s->table_size; i++) {
    again:
        for (job_t *j = s->table[i]; j; j = j->hnext) {
            if (job_is_cancellable(j)) {
                job_cancel(j, ERR_SHUTDOWN);
                goto again;
            }
        }
    }
    sched_forget_finished(s);
    uv_close((uv_handle_t *)&s->kick, on_handle_close);
    uv_close((uv_handle_t *)&s->retain_timer, on_handle_close);
    uv_close((uv_handle_t *)&s->trim_timer, on_handle_close);
    uv_close((uv_handle_t *)&s->keep_timer, on_handle_close);
    ratelimit_close(&s->rl);
}

void sched_dispose(sched_t *s)
{
    sched_forget_finished(s);
    assert(s->njobs == 0 && s->handles_open == 0);
    ratelimit_dispose(&s->rl);
    mem_free(s->table);
    mem_free(s->heap);
    mem_free(s->download_dir);
    s->table = NULL;
    s->heap = NULL;
    s->download_dir = NULL;
}

const char *sched_event_name(sched_event_t ev)
{
    static const char *const names[] = {"queued", "started", "redirected", "retrying",
                                        "paused", "resumed", "finished",   "progress"};
    return names[ev];
}
