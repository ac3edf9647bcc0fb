/* job — one fetch and its state machine; see job.h.
 *
 * Phases of a running job (job_phase_t, job.h):
 *
 *   QUEUED -> WAIT_CONN -> RESOLVING -> CONNECTING -> REQUEST -> RESPONSE
 *                 \________________(reused connection)___/          |
 *   RESPONSE -> (redirect or retry) -> [BACKOFF ->] [HOST_WAIT ->] back to the start
 *   WAIT_CONN, RESOLVING, CONNECTING -> (pause) -> PAUSED -> (resume) -> start
 *   REQUEST, RESPONSE -> (pause: reads stop, the connection is kept;
 *                        past the owner's keep bound) -> PAUSED
 *   any phase -> FINISHING (the sink commits or aborts) -> FINISHED
 *
 * job_set_phase() is the only writer of the phase, and its switch runs what
 * entering a phase implies: the phase's timer, its timing, the job's state,
 * the counters, and the events the owner hears (started, retrying,
 * finished), as curl's mstate(). finish() is the one way out: entering
 * FINISHING releases whatever the job holds (DNS waiter, pool wait,
 * connection, timers) on every path, success and error alike.
 *
 * The job reaches the world only through its environment (j->env, given by
 * the scheduler); it calls no scheduler function.
 */
#include "job.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "err.h"
#include "fmt.h"
#include "http.h"
#include "log.h"
#include "mem.h"
#include "pool.h"
#include "proxy.h"
#include "retry.h"

/* What the response being read is for. RESP_RESTART: the server refused
 * the partial file (a 206 from elsewhere, a 416 that does not say it is
 * complete); it is removed and the fetch starts over from byte 0. */
enum { RESP_FINAL, RESP_REDIRECT, RESP_RETRY, RESP_RESTART };

/* Sink backpressure: stop reading above HIGH bytes queued for the disk and
 * resume below LOW. */
#define SINK_HIGH_WATER (8u << 20)
#define SINK_LOW_WATER  (2u << 20)

/* The time constant (ms) of the speed's moving average. */
#define PROGRESS_TAU_MS 3000u

static void attempt(job_t *j);
static void job_set_phase(job_t *j, job_phase_t ph, uint64_t backoff_ms);
static void finish(job_t *j, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void on_timer(uv_timer_t *t);
static void on_sink_drain(sink_t *s, int status);
static void on_rate_resume(job_t *j);
static void restart(job_t *j);

/* ---- small helpers --------------------------------------------------------- */

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t mono_ms(void)
{
    return uv_hrtime() / 1000000u;
}

static const char *job_method(const job_t *j)
{
    return j->method ? j->method : "GET";
}

static void set_error_msg(job_t *j, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

static void set_error_msg(job_t *j, const char *fmt, va_list ap)
{
    vsnprintf(j->error_msg, sizeof(j->error_msg), fmt, ap);
}

/* ---- the timer ---------------------------------------------------------------
 *
 * One uv timer serves the job's two clocks: the total timeout (total_due)
 * and the phase's (phase_due: connect, first byte, idle, backoff, host
 * wait). Each is a loop time (ms), JOB_NOT_DUE when it is not running; the
 * timer is set for the earlier of the two, and on_timer() finds which one
 * came. One handle instead of two keeps job_t 152 bytes smaller. */

/* Sets the timer for the earlier clock, or stops it. A timer already due at
 * that moment (set earlier in the same loop turn: a request written at once
 * starts the first-byte clock twice) is left as it is: restarting it would
 * change nothing but cost a heap removal and insertion. */
static void timer_arm(job_t *j)
{
    uint64_t due = j->phase_due < j->total_due ? j->phase_due : j->total_due;
    uint64_t now = uv_now(j->env->loop);
    uint64_t in = due > now ? due - now : 0;

    if (due == JOB_NOT_DUE) {
        uv_timer_stop(&j->timer);
        return;
    }
    if (uv_is_active((uv_handle_t *)&j->timer) && uv_timer_get_due_in(&j->timer) == in)
        return;
    uv_timer_start(&j->timer, on_timer, in, 0);
}

/* Starts the phase clock ms from the loop's now (0: due at once). */
static void phase_timer_start(job_t *j, uint64_t ms)
{
    j->phase_due = uv_now(j->env->loop) + ms;
    timer_arm(j);
}

static void phase_timer_stop(job_t *j)
{
    if (j->phase_due == JOB_NOT_DUE)
        return;
    j->phase_due = JOB_NOT_DUE;
    timer_arm(j);
}

/* Sets the phase clock to ms from the loop's now; 0 stops it (a timeout of
 * 0 is none). */
static void phase_timer(job_t *j, uint64_t ms)
{
    if (ms == 0)
        phase_timer_stop(j);
    else
        phase_timer_start(j, ms);
}

/* ---- pairs ----------------------------------------------------------------- */

int job_pairs_add(job_pairs_t *p, const char *name, size_t nlen, const char *value, size_t vlen,
                  unsigned max_pairs, size_t max_bytes)
{
    size_t need = nlen + vlen + 2, cap;
    char *nb;

    /* The terminators are not counted against max_bytes: it bounds text. */
    if (p->n >= max_pairs || nlen > UINT32_MAX / 4 || vlen > UINT32_MAX / 4 ||
        (size_t)p->len - 2 * (size_t)p->n + nlen + vlen > max_bytes ||
        (size_t)p->len + need > UINT32_MAX / 2) {
        p->truncated = 1;
        return 1;
    }
    if (p->len + need > p->cap) {
        cap = p->cap ? p->cap : 256;
        while (cap < p->len + need)
            cap *= 2;
        nb = mem_realloc(p->buf, cap);
        if (nb == NULL)
            return ERR_NO_MEMORY;
        p->buf = nb;
        p->cap = (uint32_t)cap;
    }
    memcpy(p->buf + p->len, name, nlen);
    p->buf[p->len + nlen] = '\0';
    memcpy(p->buf + p->len + nlen + 1, value, vlen);
    p->buf[p->len + nlen + 1 + vlen] = '\0';
    p->len += (uint32_t)need;
    p->n++;
    return 0;
}

void job_pairs_dispose(job_pairs_t *p)
{
    mem_free(p->buf);
    memset(p, 0, sizeof(*p));
}

int job_pairs_next(const job_pairs_t *p, size_t *at, const char **name, const char **value)
{
    if (*at >= p->len)
        return 0;
    *name = p->buf + *at;
    *value = *name + strlen(*name) + 1;
    *at = (size_t)(*value - p->buf) + strlen(*value) + 1;
    return 1;
}

/* job_pairs_add() on a list allocated on first use. */
static int pairs_add(job_pairs_t **pp, const char *name, size_t nlen, const char *value,
                     size_t vlen, unsigned max_pairs, size_t max_bytes)
{
    if (*pp == NULL && (*pp = mem_calloc(1, sizeof(**pp))) == NULL)
        return ERR_NO_MEMORY;
    return job_pairs_add(*pp, name, nlen, value, vlen, max_pairs, max_bytes);
}

static void pairs_destroy(job_pairs_t **pp)
{
    if (*pp == NULL)
        return;
    job_pairs_dispose(*pp);
    mem_free(*pp);
    *pp = NULL;
}

/* ---- HTTP dates ------------------------------------------------------------- */

static const char *const month_names[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                          "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

/* Formats t as an IMF-fixdate (RFC 9110 5.6.7), whatever the locale. */
static void http_date(int64_t t, char out[40])
{
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    time_t tt = (time_t)t;
    struct tm tm;

    gmtime_r(&tt, &tm);
    snprintf(out, 40, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday % 7], tm.tm_mday,
             month_names[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* Parses an HTTP-date in any of the three forms a recipient must accept
 * (IMF-fixdate, RFC 850, asctime); returns unix seconds, or 0. */
static int64_t http_date_parse(const char *v)
{
    char mon[4] = "";
    struct tm tm;
    int n = 0;

    memset(&tm, 0, sizeof(tm));
    if (v == NULL)
        return 0;
    if (sscanf(v, "%*3s, %d %3s %d %d:%d:%d GMT%n", &tm.tm_mday, mon, &tm.tm_year, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &n) == 6 &&
        n > 0) {
        /* IMF-fixdate */
    } else if (sscanf(v, "%*[A-Za-z], %d-%3s-%d %d:%d:%d GMT%n", &tm.tm_mday, mon, &tm.tm_year,
                      &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) == 6 &&
               n > 0) {
        tm.tm_year += tm.tm_year < 70 ? 2000 : tm.tm_year < 100 ? 1900 : 0; /* RFC 850 */
    } else if (sscanf(v, "%*3s %3s %d %d:%d:%d %d", mon, &tm.tm_mday, &tm.tm_hour, &tm.tm_min,
                      &tm.tm_sec, &tm.tm_year) != 6) {
        return 0; /* not asctime either */
    }
    tm.tm_mon = -1;
    for (int i = 0; i < 12; i++)
        if (strcmp(mon, month_names[i]) == 0)
            tm.tm_mon = i;
    if (tm.tm_mon < 0 || tm.tm_year < 1970 || tm.tm_mday < 1 || tm.tm_mday > 31 ||
        tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 60)
        return 0;
    tm.tm_year -= 1900;
    return (int64_t)timegm(&tm);
}

/* The job's overwrite policy: its own, else the daemon's, else replace. */
static job_overwrite_t overwrite_policy(const job_t *j)
{
    if (j->spec.overwrite != JOB_OVERWRITE_DEFAULT)
        return j->spec.overwrite;
    return j->env->overwrite != JOB_OVERWRITE_DEFAULT ? j->env->overwrite : JOB_OVERWRITE_REPLACE;
}

/* ---- spec ------------------------------------------------------------------ */

void job_spec_init(job_spec_t *spec)
{
    memset(spec, 0, sizeof(*spec));
    spec->output = JOB_OUTPUT_DISCARD;
    spec->inline_max = JOB_DEFAULT_INLINE_MAX;
    spec->connect_timeout_ms = JOB_DEFAULT_CONNECT_TIMEOUT_MS;
    spec->first_byte_timeout_ms = JOB_DEFAULT_FIRST_BYTE_TIMEOUT_MS;
    spec->idle_timeout_ms = JOB_DEFAULT_IDLE_TIMEOUT_MS;
    spec->max_redirects = JOB_DEFAULT_MAX_REDIRECTS;
}

void job_spec_dispose(job_spec_t *spec)
{
    if (!spec->url_borrowed)
        mem_free(spec->url);
    mem_free(spec->method);
    for (size_t i = 0; i < spec->nheaders; i++) {
        mem_free(spec->headers[i].name);
        mem_free(spec->headers[i].value);
    }
    mem_free(spec->headers);
    mem_free(spec->body);
    mem_free(spec->output_path);
    mem_free(spec->expected_sha256);
    mem_free(spec->ca_file);
    mem_free(spec->client_cert);
    mem_free(spec->client_key);
    mem_free(spec->proxy);
    mem_free(spec->no_proxy);
    if (spec->labels)
        json_decref(spec->labels);
    memset(spec, 0, sizeof(*spec));
}

/* ---- creation and destruction ----------------------------------------------- */

/* mkdirs: creates the missing directories of rel (a directory path relative
 * to dir) one component at a time with mkdirat(), under descriptors opened
 * from dir without following any symlink, so it never creates anything
 * outside dir: "..", a symlink or a non-directory on the way refuses. */
static int make_dirs(const char *dir, const char *rel, char *err, size_t errlen)
{
    char copy[PATH_MAX], *save = NULL;
    int cur = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC), next;

    if (cur < 0 || strlen(rel) >= sizeof(copy)) {
        snprintf(err, errlen, "output: mkdirs: %s", cur < 0 ? strerror(errno) : "path too long");
        if (cur >= 0)
            close(cur);
        return ERR_INVALID_REQUEST;
    }
    /* ".." anywhere refuses before anything is created. */
    for (const char *p = rel; (p = strstr(p, "..")) != NULL; p += 2) {
        if ((p == rel || p[-1] == '/') && (p[2] == '\0' || p[2] == '/')) {
            snprintf(err, errlen,
                     "output: mkdirs: \"..\" in the path; mkdirs never leaves the "
                     "download directory");
            close(cur);
            return ERR_INVALID_REQUEST;
        }
    }
    memcpy(copy, rel, strlen(rel) + 1);
    for (char *c = strtok_r(copy, "/", &save); c != NULL; c = strtok_r(NULL, "/", &save)) {
        if (strcmp(c, ".") == 0)
            continue;
        next = strcmp(c, "..") == 0 ? -1
                                    : openat(cur, c, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (next < 0 && errno == ENOENT && strcmp(c, "..") != 0) {
            if (mkdirat(cur, c, 0755) != 0 && errno != EEXIST) {
                snprintf(err, errlen, "output: mkdirs \"%.60s\": %s", c, strerror(errno));
                close(cur);
                return ERR_INVALID_REQUEST;
            }
            next = openat(cur, c, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        }
        if (next < 0) {
            snprintf(err, errlen,
                     "output: mkdirs: \"%.60s\" is \"..\", a symlink or not a directory; "
                     "mkdirs never leaves the download directory",
                     c);
            close(cur);
            return ERR_INVALID_REQUEST;
        }
        close(cur);
        cur = next;
    }
    close(cur);
    return 0;
}

/* The parent directory of full (an absolute path) relative to dir, for
 * mkdirs; NULL when it is not under dir. */
static const char *rel_to(const char *dir, const char *parent)
{
    size_t dlen = strlen(dir);
    if (strncmp(parent, dir, dlen) != 0 || (parent[dlen] != '\0' && parent[dlen] != '/'))
        return NULL;
    return parent + dlen + (parent[dlen] == '/');
}

/* Confines the output path to the download directory: the parent directory
 * must exist (or, with mkdirs, is created beneath it) and resolve (symlinks
 * included) inside it, and the last component must be a plain name. A
 * symlink at the final name is harmless: rename() replaces the link, never
 * its target. */
static int resolve_output(job_t *j, const char *dir, char *err, size_t errlen)
{
    const char *path = j->spec.output_path;
    char full[PATH_MAX], parent[PATH_MAX], real[PATH_MAX], final[PATH_MAX];
    const char *base;
    char *slash;
    size_t dlen;
    struct stat st;
    int n;

    if (dir == NULL) {
        snprintf(err, errlen, "output: file output needs a download directory (--download-dir)");
        return ERR_INVALID_REQUEST;
    }
    n = path[0] == '/' ? snprintf(full, sizeof(full), "%s", path)
                       : snprintf(full, sizeof(full), "%s/%s", dir, path);
    if (n < 0 || (size_t)n >= sizeof(full)) {
        snprintf(err, errlen, "output: path too long");
        return ERR_INVALID_REQUEST;
    }
    memcpy(parent, full, (size_t)n + 1);
    slash = strrchr(parent, '/');
    *slash = '\0';
    base = full + (slash - parent) + 1;
    if (*base == '\0' || strcmp(base, ".") == 0 || strcmp(base, "..") == 0) {
        snprintf(err, errlen, "output: \"%s\" does not name a file", path);
        return ERR_INVALID_REQUEST;
    }
    if (realpath(parent[0] ? parent : "/", real) == NULL && errno == ENOENT && j->spec.mkdirs) {
        const char *rel = rel_to(dir, parent);
        int rc;
        if (rel == NULL) {
            snprintf(err, errlen, "output: \"%s\" is outside the download directory", path);
            return ERR_INVALID_REQUEST;
        }
        rc = make_dirs(dir, rel, err, errlen);
        if (rc != 0)
            return rc;
    }
    if (realpath(parent[0] ? parent : "/", real) == NULL) {
        snprintf(err, errlen, "output: directory of \"%s\": %s", path, strerror(errno));
        return ERR_INVALID_REQUEST;
    }
    dlen = strlen(dir);
    if (strncmp(real, dir, dlen) != 0 || (real[dlen] != '\0' && real[dlen] != '/')) {
        snprintf(err, errlen, "output: \"%s\" is outside the download directory", path);
        return ERR_INVALID_REQUEST;
    }
    n = snprintf(final, sizeof(final), "%s/%s", real, base);
    if (n < 0 || (size_t)n >= sizeof(final)) {
        snprintf(err, errlen, "output: path too long");
        return ERR_INVALID_REQUEST;
    }
    if (lstat(final, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "output: \"%s\" is a directory", path);
        return ERR_INVALID_REQUEST;
    }
    j->file_path = mem_strdup(final);
    return j->file_path ? 0 : ERR_NO_MEMORY;
}

/* Finds the TLS configuration the job's spec asks for (CA file, insecure,
 * client certificate), the first time an https URL needs it. */
static int ensure_tls(job_t *j, char *err, size_t errlen)
{
    const job_spec_t *sp = &j->spec;
    if (j->tls_config != NULL)
        return 0;
    if (sp->insecure)
        log_notice("job %s: TLS certificate verification is disabled for this job (insecure)",
                   j->id[0] ? j->id : "(new)");
    return tls_config_get(j->env->tls, sp->ca_file, sp->insecure, sp->client_cert, sp->client_key,
                          &j->tls_config, err, errlen);
}

/* Makes spec.url the job's own. The submitted URL is most often already
 * normalised: then the spec shares the parsed URL's text instead of holding
 * a second copy, and a borrowed text (the decoder's room, which dies when
 * job_create() returns) costs no allocation. Otherwise a borrowed text is
 * copied here, before the room can go. */
static int keep_url(job_t *j)
{
    job_spec_t *sp = &j->spec;
    char *copy;

    if (strcmp(sp->url, j->url.href) == 0) {
        if (!sp->url_borrowed)
            mem_free(sp->url);
        sp->url = j->url.href;
        sp->url_borrowed = 0;
        j->url_shared = 1;
        return 0;
    }
    if (!sp->url_borrowed)
        return 0;
    copy = mem_strdup(sp->url);
    if (copy == NULL)
        return ERR_NO_MEMORY; /* still borrowed: job_spec_dispose() leaves it */
    sp->url = copy;
    sp->url_borrowed = 0;
    return 0;
}

static int validate(job_t *j, char *err, size_t errlen)
{
    const char *msg = NULL;
    int rc;

    rc = url_parse_into(&j->url, j->spec.url, &msg, j->url_room, sizeof(j->url_room));
    if (rc != 0) {
        snprintf(err, errlen, "url: %s", msg ? msg : err_str(rc));
        return rc;
    }
    if (j->url.scheme == URL_HTTPS) {
        rc = ensure_tls(j, err, errlen);
        if (rc != 0)
            return rc;
    }
    if (j->spec.proxy && proxy_validate(j->spec.proxy, err + 7, errlen - 7) != 0) {
        memcpy(err, "proxy: ", 7);
        return ERR_INVALID_REQUEST;
    }
    if (j->spec.method &&
        (!http_is_token(j->spec.method, strlen(j->spec.method)) || strlen(j->spec.method) > 32)) {
        snprintf(err, errlen, "method: not a valid HTTP method token");
        return ERR_INVALID_REQUEST;
    }
    for (size_t i = 0; i < j->spec.nheaders; i++) {
        const job_header_t *h = &j->spec.headers[i];
        if (!http_is_token(h->name, strlen(h->name))) {
            snprintf(err, errlen, "headers: invalid header name \"%.40s\"", h->name);
            return ERR_INVALID_REQUEST;
        }
        if (!http_is_field_value(h->value, strlen(h->value))) {
            snprintf(err, errlen, "headers: value of \"%.40s\" contains CR, LF or a control byte",
                     h->name);
            return ERR_INVALID_REQUEST;
        }
    }
    if (j->spec.resume && (j->spec.output != JOB_OUTPUT_FILE || j->spec.decode > 0)) {
        snprintf(err, errlen,
                 "resume: needs a file output, and no \"decode\": true (a range of "
                 "an encoded body cannot be appended to a decoded file)");
        return ERR_INVALID_REQUEST;
    }
    if (j->spec.output == JOB_OUTPUT_FILE) {
        rc = resolve_output(j, j->env->download_dir, err, errlen);
        if (rc != 0)
            return rc;
    }
    j->effective_url = j->url.href;
    rc = keep_url(j);
    if (rc != 0)
        return rc;
    if (j->spec.method) {
        j->method = mem_strdup(j->spec.method);
        if (j->method == NULL)
            return ERR_NO_MEMORY;
    }
    return 0;
}

/* Gives spec.url its own copy before the URL it shares goes away. */
static int unshare_url(job_t *j)
{
    char *copy;

    if (!j->url_shared)
        return 0;
    copy = mem_strdup(j->url.href);
    if (copy == NULL)
        return ERR_NO_MEMORY;
    j->spec.url = copy;
    j->url_shared = 0;
    return 0;
}

static size_t str_cost(const char *s)
{
    return s ? strlen(s) + 1 : 0;
}

/* A JSON value's rough heap size: jansson's node plus its text. The
 * control protocol bounds the nesting (2048 levels), so the recursion is
 * bounded too; the depth check only guards other callers. */
static size_t json_cost(json_t *v, int depth)
{
    size_t n = 64, i;
    const char *k;
    json_t *e;

    if (v == NULL || depth > 4096)
        return 0;
    if (json_is_string(v)) {
        n += json_string_length(v) + 1;
    } else if (json_is_array(v)) {
        json_array_foreach (v, i, e) {
            n += 8 + json_cost(e, depth + 1);
        }
    } else if (json_is_object(v)) {
        json_object_foreach (v, k, e) {
            n += strlen(k) + 1 + 32 + json_cost(e, depth + 1);
        }
    }
    return n;
}

size_t job_cost(const job_t *j)
{
    const job_spec_t *sp = &j->spec;
    size_t n = sizeof(*j);

    n += j->url_shared ? 0 : str_cost(sp->url);
    n += str_cost(j->url.href) + str_cost(j->url.host) + str_cost(j->url.authority);
    n += str_cost(sp->method) + str_cost(j->method);
    n += sp->nheaders * sizeof(*sp->headers);
    for (size_t i = 0; i < sp->nheaders; i++)
        n += str_cost(sp->headers[i].name) + str_cost(sp->headers[i].value);
    n += sp->body ? sp->body_len + 1 : 0;
    n += str_cost(sp->output_path) + str_cost(j->file_path) + str_cost(sp->expected_sha256);
    n += str_cost(sp->ca_file) + str_cost(sp->client_cert) + str_cost(sp->client_key);
    n += str_cost(sp->proxy) + str_cost(sp->no_proxy);
    n += json_cost(sp->labels, 0);
    return n;
}

int job_create(const job_env_t *env, job_spec_t *spec, job_t **out, char *errmsg, size_t errlen)
{
    job_t *j = mem_alloc(sizeof(*j));
    int rc;

    if (j == NULL) {
        job_spec_dispose(spec);
        snprintf(errmsg, errlen, "%s", err_str(ERR_NO_MEMORY));
        return ERR_NO_MEMORY;
    }
    /* The sink, the timer and the rooms at the end are initialised by their
     * own init functions or written before they are read: clearing them too
     * would double the job's largest cost at creation. */
    memset(j, 0, offsetof(job_t, sink));
    j->spec = *spec;
    memset(spec, 0, sizeof(*spec));
    j->refcnt = 1;
    j->env = env;
    j->content_length = -1;
    job_set_phase(j, JOB_PH_QUEUED, 0);
    j->timings.created = wall_now();
    stats_obj_created(env->stats, STATS_OBJ_JOB);
    uv_timer_init(env->loop, &j->timer);
    j->timer.data = j;
    j->total_due = JOB_NOT_DUE;
    j->phase_due = JOB_NOT_DUE;
    j->handles_open = 1;
    sink_init(&j->sink, env->loop, env->stats, j->spec.sha256 || j->spec.expected_sha256);
    j->sink.data = j;
    j->sink.on_drain = on_sink_drain;
    j->rl.on_resume = on_rate_resume;
    if (j->spec.output == JOB_OUTPUT_INLINE)
        sink_set_memory(&j->sink, j->spec.inline_max);
    sink_set_limit(&j->sink, j->spec.max_body); /* on the decoded size */
    rc = validate(j, errmsg, errlen);
    if (rc != 0) {
        if (rc == ERR_NO_MEMORY)
            snprintf(errmsg, errlen, "%s", err_str(ERR_NO_MEMORY));
        job_decref(j);
        return rc;
    }
    assert(!j->spec.url_borrowed);
    j->cost = job_cost(j);
    *out = j;
    return 0;
}

static void on_job_handle_close(uv_handle_t *h)
{
    job_t *j = h->data;
    if (--j->handles_open > 0)
        return;
    stats_obj_destroyed(j->env->stats, STATS_OBJ_JOB);
    mem_free(j);
}

/* Frees a metadata string unless it lies in the job's meta[]. */
static void meta_release(job_t *j, char *p)
{
    if (p != NULL && (p < j->meta || p >= j->meta + sizeof(j->meta)))
        mem_free(p);
}

static void job_destroy(job_t *j)
{
    assert(j->conn == NULL && !pool_wait_pending(&j->pool_wait));
    sink_dispose(&j->sink);
    if (j->url_shared)
        j->spec.url = NULL; /* url.href's, freed with it */
    job_spec_dispose(&j->spec);
    url_dispose(&j->url);
    mem_free(j->output);
    mem_free(j->inline_body);
    mem_free(j->method);
    mem_free(j->location);
    mem_free(j->retry_after);
    mem_free(j->content_encoding);
    meta_release(j, j->content_type);
    meta_release(j, j->etag);
    meta_release(j, j->last_modified);
    pairs_destroy(&j->headers);
    pairs_destroy(&j->redirect_chain);
    mem_free(j->file_path);
    mem_free(j->error_body);
    mem_free(j->content_range);
    mem_free(j->if_range);
    if (j->tls_config)
        tls_config_decref(j->tls_config);
    /* The memory goes when the timer has closed. */
    uv_close((uv_handle_t *)&j->timer, on_job_handle_close);
}

void job_incref(job_t *j)
{
    j->refcnt++;
}

int job_decref(job_t *j)
{
    assert(j->refcnt > 0);
    if (--j->refcnt > 0)
        return 0;
    job_destroy(j);
    return 1;
}

/* ---- the request ------------------------------------------------------------ */

static int header_is(const job_header_t *h, const char *name)
{
    return strcasecmp(h->name, name) == 0;
}

static int user_has_header(const job_t *j, const char *name)
{
    for (size_t i = 0; i < j->spec.nheaders; i++)
        if (header_is(&j->spec.headers[i], name))
            return 1;
    return 0;
}

/* Whether this job asks for and decodes compressed content. */
static int decodes(const job_t *j)
{
    /* A resumable job asks for the identity: its ranges are appended as sent. */
    return j->spec.decode > 0 || (j->spec.decode == 0 && j->env->decode && !j->spec.resume);
}

static int sends_body(const job_t *j)
{
    return j->spec.body != NULL && !j->body_dropped;
}

/* A string literal and its length, for fmt_put(). */
#define S_(lit) lit, sizeof(lit) - 1

/* Serialises the request head into stack (size bytes) when it fits, else
 * into a new heap block; *out is where it went (the caller frees it unless
 * it is stack), *out_len its length. Returns 0 or ERR_NO_MEMORY. */
static int build_request(job_t *j, const proxy_t *px, char *stack, size_t size, char **out,
                         size_t *out_len)
{
    const char *m = job_method(j);
    /* Through an HTTP proxy a plain http request is in absolute form. */
    int fwd = px != NULL && px->kind == PROXY_HTTP && j->url.scheme == URL_HTTP;
    const char *target = fwd ? j->url.href : j->url.target;
    const char *basic = fwd && !user_has_header(j, "Proxy-Authorization") ? px->basic : NULL;
    size_t need = strlen(m) + strlen(target) + strlen(j->url.authority) + 128 +
                  sizeof("Accept-Encoding: " DECODE_ACCEPT "\r\n") +
                  (basic ? strlen(basic) + 32 : 0) + 128 + (j->if_range ? strlen(j->if_range) : 0);
    char date[40];
    int ua = !user_has_header(j, "User-Agent"), accept = !user_has_header(j, "Accept");
    int accept_enc = decodes(j) && !user_has_header(j, "Accept-Encoding");
    fmtbuf_t b;
    char *p;

    for (size_t i = 0; i < j->spec.nheaders; i++)
        need += strlen(j->spec.headers[i].name) + strlen(j->spec.headers[i].value) + 4;
    p = need <= size ? stack : mem_alloc(need);
    if (p == NULL)
        return ERR_NO_MEMORY;
    *out = p;
    /* need bounds every append below: nothing is cut (fmtbuf, no printf). */
    b = (fmtbuf_t){.p = p, .cap = need};
    fmt_str(&b, m);
    fmt_put(&b, " ", 1);
    fmt_str(&b, target);
    fmt_put(&b, S_(" HTTP/1.1\r\nHost: "));
    fmt_str(&b, j->url.authority);
    fmt_put(&b, S_("\r\n"));
    if (basic) {
        fmt_put(&b, S_("Proxy-Authorization: Basic "));
        fmt_str(&b, basic);
        fmt_put(&b, S_("\r\n"));
    }
    if (ua)
        fmt_put(&b, S_("User-Agent: fetchd/" FETCHD_VERSION "\r\n"));
    if (accept)
        fmt_put(&b, S_("Accept: */*\r\n"));
    if (accept_enc)
        fmt_put(&b, S_("Accept-Encoding: " DECODE_ACCEPT "\r\n"));
    for (size_t i = 0; i < j->spec.nheaders; i++) {
        const job_header_t *h = &j->spec.headers[i];
        /* Credentials never follow a redirect to another origin. */
        if (j->cross_origin && (header_is(h, "Authorization") || header_is(h, "Cookie") ||
                                header_is(h, "Proxy-Authorization")))
            continue;
        fmt_str(&b, h->name);
        fmt_put(&b, ": ", 2);
        fmt_str(&b, h->value);
        fmt_put(&b, S_("\r\n"));
    }
    /* The file output's conditions (plan_file()). */
    if (j->range_from > 0) {
        fmt_put(&b, S_("Range: bytes="));
        fmt_dec(&b, j->range_from);
        fmt_put(&b, S_("-\r\nIf-Range: "));
        fmt_str(&b, j->if_range);
        fmt_put(&b, S_("\r\n"));
    }
    if (j->ims != 0) {
        http_date(j->ims, date);
        fmt_put(&b, S_("If-Modified-Since: "));
        fmt_str(&b, date);
        fmt_put(&b, S_("\r\n"));
    }
    if (sends_body(j)) {
        fmt_put(&b, S_("Content-Length: "));
        fmt_dec(&b, j->spec.body_len);
        fmt_put(&b, S_("\r\n"));
    } else if (!strcmp(m, "POST") || !strcmp(m, "PUT") || !strcmp(m, "PATCH")) {
        fmt_put(&b, S_("Content-Length: 0\r\n"));
    }
    fmt_put(&b, S_("\r\n"));
    assert(!b.over);
    p[b.len] = '\0';
    *out_len = b.len;
    return 0;
}

/* Builds the request head and sends it (with the body). The head is built
 * on the stack when it fits: conn_send() copies what the socket does not
 * take at once, so a usual request costs no allocation. The proxy is the
 * connection's: its origin was chosen with the one attempt() selected. */
static void send_request(job_t *j)
{
    char stack[1024], *head = NULL;
    size_t len = 0;
    uv_buf_t bufs[2];
    unsigned n = 1;
    int rc;

    rc = build_request(j, j->conn->env->proxy, stack, sizeof(stack), &head, &len);
    if (rc != 0) {
        finish(j, rc, "building the request: %s", err_str(rc));
        return;
    }
    bufs[0] = uv_buf_init(head, (unsigned)len);
    if (sends_body(j) && j->spec.body_len > 0)
        bufs[n++] = uv_buf_init(j->spec.body, (unsigned)j->spec.body_len);
    job_set_phase(j, JOB_PH_REQUEST, 0);
    rc = conn_send(j->conn, bufs, n, strcmp(job_method(j), "HEAD") == 0);
    if (head != stack)
        mem_free(head);
    if (rc != 0)
        finish(j, rc, "sending the request: %s", err_str(rc));
}

/* ---- connecting ------------------------------------------------------------- */

/* Forgets the metadata of a response that is not the final one (a redirect,
 * a retried status), so that only the final response's ever shows. */
static void drop_metadata(job_t *j)
{
    meta_release(j, j->content_type);
    meta_release(j, j->etag);
    meta_release(j, j->last_modified);
    j->content_type = j->etag = j->last_modified = NULL;
    j->meta_used = 0;
    j->content_length = -1;
    pairs_destroy(&j->headers);
}

static void reset_response(job_t *j)
{
    mem_free(j->location);
    mem_free(j->retry_after);
    mem_free(j->content_range);
    j->location = NULL;
    j->retry_after = NULL;
    j->content_range = NULL;
    j->range_complete = 0;
    j->resumed_from = 0;
    j->not_modified = 0;
    j->disposition = RESP_FINAL;
    mem_free(j->content_encoding);
    j->content_encoding = NULL;
    drop_metadata(j);
}

/* Every address the connection may try must pass the destination rules,
 * whether it came from a lookup or the cache, for the first request and
 * for every redirect: one denied address fails the job, so a name that
 * also resolves to a metadata address is never half-trusted. */
static int check_addresses(job_t *j, const dns_entry_t *e)
{
    char why[128];

    for (size_t i = 0; i < e->naddrs; i++) {
        if (netacl_check(j->env->acl, (const struct sockaddr *)&e->addrs[i], why, sizeof(why)) !=
            0) {
            /* A copy: finish() closes the connection, and the proxy may go with it. */
            char host[80];
            const char *px = j->conn ? conn_proxy_shown(j->conn) : NULL;
            snprintf(host, sizeof(host), "%s", px ? px : j->url.host);
            finish(j, ERR_FORBIDDEN, "%.60s: %s", host, why);
            return ERR_FORBIDDEN;
        }
    }
    return 0;
}

static void start_connect(job_t *j, dns_entry_t *e)
{
    int rc;

    j->timings.dns_ms = mono_ms() - j->phase_start_ms;
    if (e->status != 0) {
        finish(j, e->status, "%s", e->errmsg[0] ? e->errmsg : err_str(e->status));
        return;
    }
    if (check_addresses(j, e) != 0)
        return;
    job_set_phase(j, JOB_PH_CONNECTING, 0);
    rc = conn_connect(j->conn, e);
    if (rc != 0)
        finish(j, rc, "connecting: %s", err_str(rc));
}

static void on_dns(dns_waiter_t *w, dns_entry_t *e)
{
    job_t *j = w->data;

    job_incref(j);
    start_connect(j, e);
    dns_entry_decref(e);
    job_decref(j);
}

static const conn_user_ops_t conn_ops;

/* A connection the job asked its origin for is ready: c is a new reference
 * (NULL: no memory), reused says whether it served a request before. */
static void on_conn(job_t *j, conn_t *c, int reused)
{
    dns_entry_t *e = NULL;
    const char *hop;
    uint16_t hop_port;
    int rc;

    if (c == NULL) {
        finish(j, ERR_NO_MEMORY, "no memory for a connection");
        return;
    }
    conn_attach(c, &conn_ops, j);
    j->conn = c;
    conn_decref(c); /* the pool's reference: j->conn holds the one attaching took */
    if (reused) {
        j->timings.dns_ms = 0;
        j->timings.connect_ms = 0;
        send_request(j);
        return;
    }
    job_set_phase(j, JOB_PH_RESOLVING, 0);
    j->dns_waiter.cb = on_dns;
    j->dns_waiter.data = j;
    /* Through a proxy, the proxy's name is the one resolved here. */
    hop = conn_hop_host(c, &hop_port);
    rc = dns_lookup(j->env->dns, hop, hop_port, &j->dns_waiter, &e);
    if (rc == DNS_PENDING)
        return;
    if (rc < 0) {
        char name[256]; /* a copy: finish() closes c, and its proxy may go with it */
        snprintf(name, sizeof(name), "%s", hop);
        finish(j, rc, "resolving %s: %s", name, err_str(rc));
        return;
    }
    start_connect(j, e);
    dns_entry_decref(e);
}

/* Retries made so far: the policy's backoff grows with them. */
static unsigned retries_done(const job_t *j)
{
    return (unsigned)(j->spec.retries - j->retries_left);
}

static uint64_t backoff_ms(job_t *j)
{
    const job_env_t *env = j->env;
    return retry_backoff_ms(&env->retry, retries_done(j), env->ops->random, env->owner);
}

/* A redirect or a retry is another request to a host: the host's rate and
 * delay hold it as they held the job's start (ratelimit_request()). */
static void attempt_next(job_t *j)
{
    /* A paused job sends nothing: attempt() parks it, and takes no token. */
    uint64_t wait_ns = j->env->rl != NULL && !j->paused ? ratelimit_request(j->env->rl, j) : 0;

    if (wait_ns > 0)
        job_set_phase(j, JOB_PH_HOST_WAIT, (wait_ns + 999999u) / 1000000u);
    else
        attempt(j);
}

static void on_backoff(job_t *j)
{
    j->retried_stale = 0; /* a new request after the backoff */
    attempt_next(j);
}

static void schedule_retry(job_t *j, uint64_t delay_ms, int err, const char *why)
{
    j->retries_left--;
    j->last_retry_err = err;
    /* The retrying event tells why; the job has no error after it. */
    snprintf(j->error_msg, sizeof(j->error_msg), "%.*s", (int)sizeof(j->error_msg) - 1, why);
    job_set_phase(j, JOB_PH_BACKOFF, delay_ms);
    j->error_msg[0] = '\0';
}

static void retry_or_fail(job_t *j, int err, const char *msg)
{
    if (retry_error_retryable(err) && j->retries_left > 0) {
        schedule_retry(j, backoff_ms(j), err, msg);
        return;
    }
    finish(j, err, "%s", msg);
}

static void on_conn_connected(void *user, int status, const char *msg)
{
    job_t *j = user;

    if (j->phase != JOB_PH_CONNECTING)
        return;
    if (status != 0) {
        retry_or_fail(j, status, msg ? msg : err_str(status));
        return;
    }
    j->timings.connect_ms = mono_ms() - j->connect_start_ms;
    send_request(j);
}

/* ---- the response ----------------------------------------------------------- */

static void on_conn_request_sent(void *user)
{
    job_t *j = user;

    if (j->phase == JOB_PH_REQUEST && !j->paused) {
        /* The first-byte clock starts once the request is on the wire. */
        j->phase_start_ms = mono_ms();
        phase_timer(j, j->spec.first_byte_timeout_ms);
    }
}

static void on_conn_read(void *user)
{
    job_t *j = user;

    if (j->phase == JOB_PH_REQUEST)
        job_set_phase(j, JOB_PH_RESPONSE, 0);
    if (j->phase == JOB_PH_RESPONSE && !j->read_paused && !j->rl.paused && !j->paused)
        phase_timer(j, j->spec.idle_timeout_ms);
}

/* Several Content-Encoding fields are one list (RFC 9110 section 5.3). */
static int add_content_encoding(job_t *j, const char *value, size_t vlen)
{
    size_t old = j->content_encoding ? strlen(j->content_encoding) : 0;
    char *p = mem_realloc(j->content_encoding, old + vlen + 3);
    if (p == NULL)
        return ERR_NO_MEMORY;
    if (old > 0) {
        memcpy(p + old, ", ", 2);
        old += 2;
    }
    memcpy(p + old, value, vlen);
    p[old + vlen] = '\0';
    j->content_encoding = p;
    return 0;
}

/* Keeps a metadata field of the final response (content_type, etag,
 * last_modified) in the job's own meta[] when it fits, else on the heap: a
 * usual response's three fit, and cost no allocation. A repeated field
 * leaves its earlier copy's room in meta[] unused until drop_metadata(). */
static int keep_meta(job_t *j, char **slot, const char *value, size_t vlen)
{
    meta_release(j, *slot);
    *slot = NULL;
    if (vlen < sizeof(j->meta) - j->meta_used) {
        char *p = j->meta + j->meta_used;
        memcpy(p, value, vlen);
        p[vlen] = '\0';
        j->meta_used += (unsigned)vlen + 1;
        *slot = p;
        return 0;
    }
    *slot = mem_strndup(value, vlen);
    return *slot ? 0 : ERR_NO_MEMORY;
}

static int keep_header(char **slot, const char *value, size_t vlen)
{
    mem_free(*slot);
    *slot = mem_strndup(value, vlen);
    return *slot ? 0 : ERR_NO_MEMORY;
}

/* keep_headers: one more field of the response. Fields past the bounds are
 * dropped (headers->truncated says so). Out of line, so that the callback
 * stays as lean as it was for the jobs that do not keep fields. */
static __attribute__((noinline)) int keep_field(job_t *j, const char *name, size_t nlen,
                                                const char *value, size_t vlen)
{
    int rc = pairs_add(&j->headers, name, nlen, value, vlen, JOB_KEEP_HEADERS_MAX,
                       JOB_KEEP_HEADERS_BYTES);
    return rc == ERR_NO_MEMORY ? rc : 0;
}

/* 1 when the n bytes of a field name are want (lowercase letters and '-',
 * n bytes), ignoring case: the connection hands over names that are
 * tokens, and no token byte but a letter's case changes with | 0x20 into a
 * letter or '-'. */
static int name_is(const char *name, const char *want, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((name[i] | 0x20) != want[i])
            return 0;
    return 1;
}

static int on_conn_header(void *user, const char *name, size_t nlen, const char *value, size_t vlen,
                          conn_why_t *why)
{
    job_t *j = user;

    (void)why;
    /* The only cost of keep_headers to a job without it: this test. */
    if (j->spec.keep_headers && keep_field(j, name, nlen, value, vlen) != 0)
        return ERR_NO_MEMORY;
    switch (nlen) {
    case 4:
        return name_is(name, "etag", 4) ? keep_meta(j, &j->etag, value, vlen) : 0;
    case 8:
        return name_is(name, "location", 8) ? keep_header(&j->location, value, vlen) : 0;
    case 11:
        return name_is(name, "retry-after", 11) ? keep_header(&j->retry_after, value, vlen) : 0;
    case 12:
        return name_is(name, "content-type", 12) ? keep_meta(j, &j->content_type, value, vlen) : 0;
    case 13:
        if (name_is(name, "last-modified", 13))
            return keep_meta(j, &j->last_modified, value, vlen);
        if (name_is(name, "content-range", 13))
            return keep_header(&j->content_range, value, vlen);
        return 0;
    case 16:
        return name_is(name, "content-encoding", 16) ? add_content_encoding(j, value, vlen) : 0;
    default:
        return 0;
    }
}

static int is_redirect(int status)
{
    return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

/* A Location that is absent or empty says nowhere to go: the 3xx is then a
 * final response (RFC 9110 15.4), not a redirect to the same URL. */
static int usable_location(const char *v)
{
    if (v == NULL)
        return 0;
    while (*v == ' ' || *v == '\t')
        v++;
    return *v != '\0';
}

static int fail_response(conn_why_t *why, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes why a parser callback is failing the response; the connection
 * hands the message back with err to on_conn_error(). */
static int fail_response(conn_why_t *why, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why->msg, sizeof(why->msg), fmt, ap);
    va_end(ap);
    return err;
}

/* Puts a decoder chain in front of the sink when the body needs one: the
 * transfer codings before the final chunked (gzip, deflate: a recipient
 * must undo them, RFC 9112 6.1), and, for a job that decodes, the content
 * codings under them (a coding it cannot decode fails it, as curl does; any
 * other job only reports the field). The server applied the content codings
 * first, so they come first in the chain, which undoes the last one first. */
static int start_decoding(job_t *j, const char *transfer_codings, conn_why_t *w)
{
    decode_coding_t codings[2 * DECODE_MAX_CODINGS];
    decode_chain_t *d;
    char why[96];
    int nc = 0, nt = 0, chunked, rc;

    j->decoded = 0;
    if (j->content_encoding != NULL && decodes(j)) {
        nc = decode_parse(j->content_encoding, codings, why, sizeof(why));
        if (nc < 0)
            return fail_response(w, nc, "%s", why);
    }
    if (transfer_codings != NULL) {
        nt = decode_parse_transfer(transfer_codings, codings + nc, &chunked, why, sizeof(why));
        if (nt < 0)
            return fail_response(w, nt, "%s", why);
    }
    if (nc + nt == 0)
        return 0; /* identity, or chunked alone */
    if (nc + nt > DECODE_MAX_CODINGS)
        return fail_response(w, ERR_CONTENT_DECODING, "more than %d codings stacked",
                             DECODE_MAX_CODINGS);
    rc = decode_create(&d, codings, (size_t)(nc + nt), j->env->decode_max_ratio, j->env->stats);
    if (rc != 0)
        return fail_response(w, rc, "starting the decoder: %s", err_str(rc));
    sink_set_decoder(&j->sink, d, j->env->bufs);
    j->decoded = nc > 0;
    return 0;
}

/* Content-Range "bytes A-B/T" (206): A; "bytes *\/T" (416): T. Returns 0
 * when the field is absent or says otherwise. */
static int content_range_at(const char *v, int unsatisfied, uint64_t *out)
{
    unsigned long long a, b, t;
    int n = 0;

    if (v == NULL)
        return 0;
    if (unsatisfied) {
        if (sscanf(v, " bytes */%llu%n", &t, &n) != 1 || n == 0)
            return 0;
        *out = t;
        return 1;
    }
    if (sscanf(v, " bytes %llu-%llu/%n", &a, &b, &n) != 2 || n == 0 || b < a)
        return 0;
    *out = a;
    return 1;
}

/* The final response of a file output decides what happens to the target:
 * a 2xx body goes to the (temporary or partial) file that replaces it at
 * commit; a 206 or 416 answering the job's Range continues the partial
 * file; any other status never touches the target, and the first
 * JOB_ERROR_BODY_MAX bytes of its body are kept as error_body. */
static int open_output(job_t *j, int status, conn_why_t *why)
{
    sink_t *s = &j->sink;
    const char *validator;
    uint64_t from = 0, at = 0;
    int64_t lm;
    int rc;

    if (j->range_from > 0 && (status == 206 || status == 416)) {
        if (!content_range_at(j->content_range, status == 416, &at) || at != j->range_from) {
            log_info("job %s: HTTP %d with Content-Range \"%.80s\" does not continue the "
                     "partial file of %" PRIu64 " bytes; starting over",
                     j->id, status, j->content_range ? j->content_range : "", j->range_from);
            j->disposition = RESP_RESTART;
            return 0;
        }
        from = j->range_from;
        j->resumed_from = from;
        j->range_complete = status == 416; /* the partial file is the whole */
    } else if (status < 200 || status > 299) {
        j->not_modified = status == 304 && j->ims != 0;
        sink_set_memory_cut(s, JOB_ERROR_BODY_MAX);
        return 0;
    }
    if (j->spec.resume)
        sink_set_partial(s, from);
    if (overwrite_policy(j) == JOB_OVERWRITE_NEVER)
        sink_set_no_replace(s);
    lm = http_date_parse(j->last_modified);
    if (lm > 0)
        sink_set_mtime(s, lm);
    rc = sink_open_file(s, j->env->download_dir, j->file_path, j->id);
    if (rc != 0)
        return fail_response(why, rc, "cannot create the output file (%s): %s",
                             sink_strerror(s, rc), j->file_path);
    if (!j->spec.resume || j->range_complete)
        return 0;
    /* If-Range takes a strong validator only (RFC 9110 13.1.5). */
    validator = j->etag && strncmp(j->etag, "W/", 2) != 0 ? j->etag
                : j->last_modified                        ? j->last_modified
                                                          : j->if_range;
    if (sink_write_meta(s, from > 0 || validator != j->if_range ? validator : NULL, j->spec.url) !=
        0)
        log_warn("job %s: cannot keep the validator beside %s: it will not be resumed", j->id,
                 j->file_path);
    return 0;
}

static int on_conn_head(void *user, int status, int64_t content_length,
                        const char *transfer_codings, conn_why_t *why)
{
    job_t *j = user;
    int rc;

    if (is_redirect(status) && usable_location(j->location)) {
        j->disposition = RESP_REDIRECT;
        j->redirect_status = status;
        drop_metadata(j);
        return 0;
    }
    if (retry_status_retryable(status, job_method(j)) && j->retries_left > 0) {
        j->disposition = RESP_RETRY;
        j->retry_status = status;
        drop_metadata(j);
        return 0;
    }
    j->disposition = RESP_FINAL;
    j->http_status = status;
    j->content_length = content_length;
    j->prog_ms = uv_now(j->env->loop); /* the body's progress is measured from here */
    j->prog_bytes = j->speed = 0;
    if (j->spec.fail_on_http_error && status >= 400 && status <= 599)
        return fail_response(why, ERR_HTTP_ERROR, "HTTP status %d", status);
    if (j->spec.max_body && content_length > 0 && (uint64_t)content_length > j->spec.max_body)
        return fail_response(why, ERR_BODY_TOO_LARGE,
                             "Content-Length %" PRId64 " exceeds max_body %" PRIu64, content_length,
                             j->spec.max_body);
    if (j->spec.output == JOB_OUTPUT_FILE && j->sink.kind == SINK_DISCARD) {
        rc = open_output(j, status, why);
        if (rc != 0 || j->disposition != RESP_FINAL || j->range_complete)
            return rc;
    }
    return start_decoding(j, transfer_codings, why);
}

/* The speed's moving average with the rate since the last sample blended
 * in, weighted by the time that rate covers against PROGRESS_TAU_MS: a
 * 500 ms sample moves it a seventh of the way, so it follows the last few
 * seconds. The first sample of a body is its rate alone. */
static uint64_t progress_speed(const job_t *j, uint64_t now)
{
    uint64_t dt = now - j->prog_ms, rate;

    if (j->prog_ms == 0 || dt == 0 || now < j->prog_ms)
        return j->speed;
    rate = (j->wire_bytes - j->prog_bytes) * 1000 / dt;
    if (j->prog_bytes == 0 && j->speed == 0)
        return rate;
    if (dt > PROGRESS_TAU_MS * 100)
        dt = PROGRESS_TAU_MS * 100; /* the old average weighs nothing then; no overflow */
    return (j->speed * PROGRESS_TAU_MS + rate * dt) / (PROGRESS_TAU_MS + dt);
}

/* Takes a progress sample, from a body read at least a progress interval
 * after the last one, and tells the owner only when someone subscribed to
 * progress events: no timer per job, and nothing per read but a compare. */
static void progress_sample(job_t *j)
{
    uint64_t now = uv_now(j->env->loop);

    j->speed = progress_speed(j, now);
    j->prog_ms = now;
    j->prog_bytes = j->wire_bytes;
    if (j->env->progress_subs > 0)
        j->env->ops->on_event(j->env->owner, j, JOB_EV_PROGRESS);
}

void job_progress(const job_t *j, job_progress_t *out)
{
    uint64_t left;

    out->total = j->content_length;
    out->speed = 0;
    if (j->state == JOB_RUNNING && j->prog_ms != 0) /* else no body yet */
        out->speed = progress_speed(j, uv_now(j->env->loop));
    out->eta = -1;
    if (out->total >= 0 && out->speed > 0) {
        left = (uint64_t)out->total > j->wire_bytes ? (uint64_t)out->total - j->wire_bytes : 0;
        out->eta = (int64_t)((left + out->speed - 1) / out->speed);
    }
}

static int on_conn_body(void *user, buf_t *b, const char *at, size_t len, conn_why_t *why)
{
    job_t *j = user;
    int rc;

    if (j->env->rl != NULL && ratelimit_charge(j->env->rl, j, len))
        phase_timer_stop(j); /* the byte rate, not the peer, is slow */
    if (j->disposition != RESP_FINAL || j->range_complete)
        return 0; /* a redirect's, retried or refused response's body is read and dropped */
    rc = sink_write(&j->sink, b, at, len);
    j->wire_bytes = j->sink.wire_bytes;
    j->bytes = j->sink.bytes;
    if (rc == ERR_BODY_TOO_LARGE && j->sink.over_max)
        return fail_response(why, rc, "%sbody exceeds max_body %" PRIu64 " bytes",
                             j->decoded ? "decoded " : "", j->spec.max_body);
    if (rc == ERR_BODY_TOO_LARGE)
        return fail_response(why, rc, "inline body exceeds %" PRIu64 " bytes", j->spec.inline_max);
    if (rc == ERR_CONTENT_DECODING)
        return fail_response(why, rc, "decoding the body (Content-Encoding: %.40s): %s",
                             j->content_encoding, sink_strerror(&j->sink, rc));
    if (rc != 0)
        return fail_response(why, rc, "writing the body: %s", sink_strerror(&j->sink, rc));
    if (uv_now(j->env->loop) - j->prog_ms >= j->env->progress_ms)
        progress_sample(j);
    if (sink_pending(&j->sink) > SINK_HIGH_WATER && j->conn) {
        conn_pause(j->conn);
        j->read_paused = 1;
        phase_timer_stop(j); /* the disk, not the peer, is slow */
    }
    return 0;
}

static void on_sink_drain(sink_t *s, int status)
{
    job_t *j = s->data;
    (void)status; /* a write error surfaces at the next write or at commit */
    if (j->restart_on_drain) {
        if (sink_pending(s) == 0)
            restart(j);
        return;
    }
    if (j->read_paused && sink_pending(s) < SINK_LOW_WATER && j->conn) {
        j->read_paused = 0;
        if (!j->rl.paused && !j->paused) {
            conn_resume(j->conn);
            phase_timer(j, j->spec.idle_timeout_ms);
        }
    }
}

/* The byte rates let the job read again (unless the disk still lags). */
static void on_rate_resume(job_t *j)
{
    if (!j->read_paused && !j->paused && j->conn) {
        conn_resume(j->conn);
        phase_timer(j, j->spec.idle_timeout_ms);
    }
}

/* Adds the URL that answered with a redirect, and its status, to the chain.
 * max_redirects (at most JOB_MAX_REDIRECTS_LIMIT) bounds its length, and a
 * Location's length (4 KiB) its entries'. */
static int record_redirect(job_t *j, int status)
{
    char code[16];
    int n = snprintf(code, sizeof(code), "%d", status);
    return pairs_add(&j->redirect_chain, code, (size_t)n, j->url.href, strlen(j->url.href),
                     UINT_MAX, SIZE_MAX);
}

static void follow_redirect(job_t *j)
{
    char loc[4096];
    const char *msg = NULL, *v = j->location;
    size_t n;
    url_t next;
    int status = j->redirect_status, rc;

    if (j->redirects >= (unsigned)j->spec.max_redirects) {
        finish(j, ERR_TOO_MANY_REDIRECTS, "more than %d redirects", j->spec.max_redirects);
        return;
    }
    while (*v == ' ' || *v == '\t')
        v++;
    n = strlen(v);
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    if (n >= sizeof(loc)) {
        finish(j, ERR_PROTOCOL, "Location header too long");
        return;
    }
    memcpy(loc, v, n);
    loc[n] = '\0';
    rc = url_resolve(&next, &j->url, loc, &msg);
    if (rc != 0) {
        finish(j, rc == ERR_NO_MEMORY ? rc : ERR_PROTOCOL, "bad Location \"%.100s\": %s", loc,
               msg ? msg : err_str(rc));
        return;
    }
    if (j->url.scheme == URL_HTTPS && next.scheme == URL_HTTP && !j->spec.allow_downgrade) {
        finish(j, ERR_INVALID_REQUEST,
               "refusing redirect from https to %.100s (set allow_downgrade to permit it)",
               next.href);
        url_dispose(&next);
        return;
    }
    if (next.scheme == URL_HTTPS) {
        char why[192];
        rc = ensure_tls(j, why, sizeof(why));
        if (rc != 0) {
            url_dispose(&next);
            finish(j, rc, "redirect to https: %s", why);
            return;
        }
    }
    if (unshare_url(j) != 0) {
        url_dispose(&next);
        finish(j, ERR_NO_MEMORY, "no memory for the redirect");
        return;
    }
    if (record_redirect(j, status) == ERR_NO_MEMORY) {
        url_dispose(&next);
        finish(j, ERR_NO_MEMORY, "no memory for the redirect chain");
        return;
    }
    if (!url_same_origin(&j->url, &next))
        j->cross_origin = 1;
    /* RFC 9110 15.4: 303 turns anything but HEAD into GET; browsers and curl
     * do the same to a POST answered with 301 or 302. */
    if ((status == 303 && strcmp(job_method(j), "HEAD") != 0) ||
        ((status == 301 || status == 302) && strcmp(job_method(j), "POST") == 0)) {
        mem_free(j->method);
        j->method = NULL; /* GET */
        j->body_dropped = 1;
    }
    url_dispose(&j->url);
    j->url = next;
    j->effective_url = j->url.href;
    j->redirects++;
    j->env->stats->redirects++;
    /* A new request: it may once more meet a connection the server has
     * just closed (the one the redirect came on, often). */
    j->retried_stale = 0;
    j->env->ops->on_event(j->env->owner, j, JOB_EV_REDIRECTED);
    attempt_next(j);
}

static void succeed(job_t *j)
{
    /* A body whose framing was complete but whose coding stopped early is
     * not the content: content_decoding, never a done job. */
    int rc = sink_finish_decoding(&j->sink);
    if (rc != 0) {
        finish(j, rc, "decoding the body (Content-Encoding: %.40s): %s", j->content_encoding,
               sink_strerror(&j->sink, rc));
        return;
    }
    sink_digest(&j->sink);
    if (j->sink.want_sha256)
        sink_sha256_hex(&j->sink, j->sha256);
    if (j->spec.expected_sha256 && strcmp(j->sha256, j->spec.expected_sha256) != 0) {
        finish(j, ERR_CHECKSUM_MISMATCH, "expected sha256 %s, got %s", j->spec.expected_sha256,
               j->sha256);
        return;
    }
    finish(j, 0, "%s", "");
}

static void on_conn_complete(void *user)
{
    job_t *j = user;
    const job_env_t *env = j->env;
    uint64_t delay;
    char why[64];

    phase_timer_stop(j);
    switch (j->disposition) {
    case RESP_REDIRECT:
        follow_redirect(j);
        break;
    case RESP_RESTART:
        j->no_resume = 1;
        (void)sink_remove_partial(env->download_dir, j->file_path);
        attempt(j);
        break;
    case RESP_RETRY:
        delay = retry_delay_ms(&env->retry, j->retry_after, time(NULL), retries_done(j),
                               env->ops->random, env->owner);
        snprintf(why, sizeof(why), "HTTP status %d", j->retry_status);
        schedule_retry(j, delay, 0, why);
        break;
    default:
        succeed(j);
        break;
    }
}

static void on_conn_error(void *user, int err, const char *msg, int reused, uint64_t resp_bytes)
{
    job_t *j = user;

    /* A server may close a kept-alive connection just as we reuse it. Such a
     * request never reached the application, so an idempotent one is sent
     * again, once, on a fresh connection. */
    if (err == ERR_EMPTY_REPLY && reused && resp_bytes == 0 && !j->retried_stale &&
        retry_idempotent(job_method(j))) {
        j->retried_stale = 1;
        j->force_new = 1;
        log_debug("job %s: reused connection closed before a response; retrying on a new one",
                  j->id);
        attempt(j);
        return;
    }
    /* The server may have closed the connection the job kept while paused:
     * what is left of the response is fetched again, once. */
    if ((err == ERR_TRUNCATED || err == ERR_EMPTY_REPLY) && j->resumed_held &&
        retry_idempotent(job_method(j))) {
        log_debug("job %s: the connection kept while paused broke; starting over", j->id);
        j->resumed_held = 0;
        job_set_phase(j, JOB_PH_PAUSED, 0);
        restart(j);
        return;
    }
    finish(j, err, "%s", msg ? msg : err_str(err));
}

/* ---- timers ----------------------------------------------------------------- */

static void on_total_timeout(job_t *j)
{
    finish(j, ERR_TIMEOUT, "total timeout of %.3g s exceeded", j->spec.total_timeout_ms / 1e3);
}

static void on_phase_timeout(job_t *j)
{
    const char *px = j->conn ? conn_proxy_shown(j->conn) : NULL;
    char msg[384], via[128];

    /* A copy: the proxy may go with the connection closed below. */
    snprintf(via, sizeof(via), "%s%s", px ? " through proxy " : "", px ? px : "");

    switch (j->phase) {
    case JOB_PH_RESOLVING:
    case JOB_PH_CONNECTING:
        if (j->conn && conn_handshaking(j->conn)) {
            conn_close(j->conn, STATS_CLOSE_CONNECT_FAILED);
            finish(j, ERR_TLS_HANDSHAKE, "TLS handshake with %s timed out after %.3g s",
                   j->url.authority, j->spec.connect_timeout_ms / 1e3);
            break;
        }
        dns_cancel(&j->dns_waiter);
        if (j->conn)
            conn_close(j->conn, STATS_CLOSE_CONNECT_FAILED);
        snprintf(msg, sizeof(msg), "no connection to %.100s%s within %.3g s", j->url.authority, via,
                 j->spec.connect_timeout_ms / 1e3);
        retry_or_fail(j, ERR_CONNECT_TIMEOUT, msg);
        break;
    case JOB_PH_REQUEST:
        finish(j, ERR_TIMEOUT, "no response within %.3g s", j->spec.first_byte_timeout_ms / 1e3);
        break;
    case JOB_PH_RESPONSE:
        finish(j, ERR_TIMEOUT, "no data for %.3g s while reading the response",
               j->spec.idle_timeout_ms / 1e3);
        break;
    case JOB_PH_BACKOFF:
        on_backoff(j);
        break;
    case JOB_PH_HOST_WAIT:
        attempt_next(j);
        break;
    default:
        break;
    }
}

/* The earlier clock came (or both): the total timeout ends the job; the
 * phase's is stopped before its handler runs, which may start it again. */
static void on_timer(uv_timer_t *t)
{
    job_t *j = t->data;
    uint64_t now = uv_now(j->env->loop);

    if (j->total_due <= now) {
        j->total_due = JOB_NOT_DUE;
        on_total_timeout(j);
    } else if (j->phase_due <= now) {
        j->phase_due = JOB_NOT_DUE;
        timer_arm(j); /* for the total timeout, if it runs */
        on_phase_timeout(j);
    } else {
        timer_arm(j);
    }
}

/* ---- starting, cancelling, finishing ---------------------------------------- */

/* The pool's callback: the connection the job waited for. */
static void on_pool_conn(pool_wait_t *w, conn_t *c, int reused)
{
    on_conn(w->data, c, reused);
}

/* The conditions a file output's request carries, decided anew for every
 * request: Range and If-Range when a partial file of the target can be
 * resumed, If-Modified-Since the target's mtime under overwrite "newer".
 * A condition the user set as a header is left to the user. */
static void plan_file(job_t *j)
{
    char validator[1024];
    uint64_t size = 0;
    struct stat st;

    j->range_from = 0;
    j->ims = 0;
    mem_free(j->if_range);
    j->if_range = NULL;
    if (j->spec.output != JOB_OUTPUT_FILE || j->file_path == NULL)
        return;
    if (j->spec.resume && !j->no_resume && !user_has_header(j, "Range") &&
        sink_probe_partial(j->env->download_dir, j->file_path, j->spec.url, &size, validator,
                           sizeof(validator)) == 1 &&
        (j->if_range = mem_strdup(validator)) != NULL)
        j->range_from = size;
    if (overwrite_policy(j) == JOB_OVERWRITE_NEWER && !user_has_header(j, "If-Modified-Since") &&
        lstat(j->file_path, &st) == 0 && S_ISREG(st.st_mode))
        j->ims = (int64_t)st.st_mtime;
}

static void attempt(job_t *j)
{
    conn_t *c = NULL;
    proxy_t *px = NULL;
    char why[192];
    int rc;

    if (j->paused) {
        /* A redirect or a retry came due during a pause: resume starts it. */
        job_set_phase(j, JOB_PH_PAUSED, 0);
        return;
    }
    j->attempts++;
    j->resumed_held = 0;
    reset_response(j);
    /* Chosen anew for every request: a redirect may lead elsewhere. */
    rc = proxy_select(j->env->proxies, &j->url, j->spec.proxy, j->spec.no_proxy, &px, why,
                      sizeof(why));
    if (rc == 0 && px != NULL &&
        (rc = proxy_check_literal(j->env->acl, &j->url, why, sizeof(why))) != 0)
        proxy_decref(px);
    if (rc != 0) {
        finish(j, rc, "%s", why);
        return;
    }
    plan_file(j);
    job_set_phase(j, JOB_PH_WAIT_CONN, 0);
    rc = pool_connect_via(j->env->pool, &j->pool_wait, &j->url, j->tls_config, px, j->force_new,
                          on_pool_conn, j, &c);
    if (px)
        proxy_decref(px); /* the origin holds its own */
    j->force_new = 0;
    switch (rc) {
    case POOL_REUSED:
        on_conn(j, c, 1);
        break;
    case POOL_NEW:
        on_conn(j, c, 0);
        break;
    case POOL_WAIT:
        break;
    default:
        finish(j, rc, "no connection: %s", err_str(rc));
        break;
    }
}

void job_start(job_t *j)
{
    struct stat st;

    assert(j->phase == JOB_PH_QUEUED);
    j->retries_left = j->spec.retries;
    job_set_phase(j, JOB_PH_WAIT_CONN, 0); /* started: the owner hears of it */
    if (j->phase != JOB_PH_WAIT_CONN)      /* unless the owner cancelled it then */
        return;
    if (j->spec.output == JOB_OUTPUT_FILE && overwrite_policy(j) == JOB_OVERWRITE_NEVER &&
        lstat(j->file_path, &st) == 0) {
        finish(j, ERR_EXISTS, "%s exists (overwrite: never)", j->file_path);
        return;
    }
    attempt(j);
}

/* The job's result, once the sink has settled: its state follows from its
 * error, and a done job takes its output from the sink. */
static void finalize(job_t *j)
{
#ifdef FETCHD_INJECT_LEAK
    /* Test builds only (fetchd-leaky): lose one read buffer on every error
     * path, the way urllib2 lost its HTTPError responses, so the tests can
     * show that the soak and metrics checks catch such a leak. */
    if (j->error != 0 || j->http_status >= 400)
        (void)buf_get(j->env->bufs);
#endif
    if (j->error == 0) {
        if (j->spec.output == JOB_OUTPUT_FILE && j->sink.kind == SINK_FILE) {
            j->output = j->file_path;
            j->file_path = NULL;
        } else if (j->spec.output == JOB_OUTPUT_FILE && j->sink.kind == SINK_MEMORY) {
            j->error_body = sink_take_mem(&j->sink, &j->error_body_len);
        } else if (j->spec.output == JOB_OUTPUT_INLINE) {
            j->inline_body = sink_take_mem(&j->sink, &j->inline_len);
        }
    }
    /* The sink has settled and nothing reads it again: a retained job keeps
     * only its result, not the sink's spare write requests and hash state. */
    sink_dispose(&j->sink);
    job_set_phase(j, JOB_PH_FINISHED, 0);
}

static void on_sink_done(sink_t *s, int status)
{
    job_t *j = s->data;

    if (status != 0 && j->error == 0 && s->no_replace && s->cause == UV_EEXIST) {
        j->error = ERR_EXISTS;
        snprintf(j->error_msg, sizeof(j->error_msg), "%s appeared meanwhile (overwrite: never)",
                 j->file_path);
    } else if (status != 0 && j->error == 0) {
        j->error = status;
        snprintf(j->error_msg, sizeof(j->error_msg), "writing the output file (%s): %s",
                 sink_strerror(s, status), j->file_path);
    }
    finalize(j);
    job_decref(j); /* held across the sink's callback */
}

static stats_close_t close_reason(const conn_t *c, int err)
{
    if (c->state == CONN_CONNECTING)
        return STATS_CLOSE_CONNECT_FAILED;
    if (err == ERR_CANCELLED || err == ERR_SHUTDOWN)
        return STATS_CLOSE_CANCELLED;
    return STATS_CLOSE_ERROR;
}

static void finish(job_t *j, int err, const char *fmt, ...)
{
    va_list ap;
    int rc;

    if (j->phase >= JOB_PH_FINISHING)
        return;
    j->error = err;
    if (err == 0) {
        j->error_msg[0] = '\0'; /* a success has no message: nothing to format */
    } else {
        va_start(ap, fmt);
        set_error_msg(j, fmt, ap);
        va_end(ap);
    }
    if (err != 0 && j->error_msg[0] == '\0')
        snprintf(j->error_msg, sizeof(j->error_msg), "%s", err_str(err));
    job_set_phase(j, JOB_PH_FINISHING, 0); /* lets go of timers, waits, connection */
    rc = err ? sink_abort(&j->sink, on_sink_done) : sink_commit(&j->sink, on_sink_done);
    if (rc == SINK_PENDING) {
        job_incref(j);
        return;
    }
    if (rc < 0 && j->error == 0) {
        j->error = rc;
        snprintf(j->error_msg, sizeof(j->error_msg), "finishing the output: %s", err_str(rc));
    }
    finalize(j);
}

/* The one writer of j->phase. Entering a phase runs what it implies, here
 * and nowhere else: its timer, its timing, the job's state and counters,
 * and the owner's events (as curl's mstate()). backoff_ms is the delay of
 * JOB_PH_BACKOFF and JOB_PH_HOST_WAIT; the other phases take their timeouts
 * from the spec. */
static void job_set_phase(job_t *j, job_phase_t ph, uint64_t backoff_ms)
{
    const job_env_t *env = j->env;
    job_phase_t old = j->phase;
    stats_result_t r;

    j->phase = ph;
    switch (ph) {
    case JOB_PH_QUEUED:
        j->state = JOB_QUEUED;
        break;
    case JOB_PH_WAIT_CONN:
        /* No phase timer while the pool finds a connection. */
        phase_timer_stop(j);
        if (old != JOB_PH_QUEUED)
            break;
        j->state = JOB_RUNNING;
        j->timings.started = wall_now();
        j->timings.queued_ms = (uint64_t)((j->timings.started - j->timings.created) * 1000);
        j->start_ms = mono_ms();
        if (j->spec.total_timeout_ms) {
            j->total_due = uv_now(env->loop) + j->spec.total_timeout_ms;
            timer_arm(j);
        }
        env->ops->on_event(env->owner, j, JOB_EV_STARTED);
        break;
    case JOB_PH_RESOLVING:
        j->phase_start_ms = mono_ms();
        /* The connect timeout covers name resolution too, as curl's does. */
        phase_timer(j, j->spec.connect_timeout_ms);
        break;
    case JOB_PH_CONNECTING:
        j->connect_start_ms = mono_ms(); /* the connect timer goes on */
        break;
    case JOB_PH_REQUEST:
        j->phase_start_ms = mono_ms();
        phase_timer(j, j->spec.first_byte_timeout_ms);
        break;
    case JOB_PH_RESPONSE:
        j->timings.ttfb_ms = mono_ms() - j->phase_start_ms; /* reads restart the idle timer */
        break;
    case JOB_PH_BACKOFF:
        env->stats->retries++;
        env->ops->on_event(env->owner, j, JOB_EV_RETRYING);
        phase_timer_start(j, backoff_ms);
        break;
    case JOB_PH_HOST_WAIT:
        /* The wait (backoff_ms here) keeps the running slot, not a connection. */
        phase_timer_start(j, backoff_ms);
        break;
    case JOB_PH_PAUSED:
        /* Paused holding nothing but the total timer and the sink. */
        phase_timer_stop(j);
        dns_cancel(&j->dns_waiter);
        pool_cancel_connect(&j->pool_wait);
        if (j->conn)
            conn_close(j->conn, old == JOB_PH_REQUEST || old == JOB_PH_RESPONSE
                                    ? STATS_CLOSE_IDLE_TIMEOUT
                                    : STATS_CLOSE_CANCELLED);
        break;
    case JOB_PH_FINISHING:
        j->total_due = JOB_NOT_DUE;
        j->phase_due = JOB_NOT_DUE;
        uv_timer_stop(&j->timer);
        dns_cancel(&j->dns_waiter);
        pool_cancel_connect(&j->pool_wait);
        if (j->conn)
            conn_close(j->conn, close_reason(j->conn, j->error));
        break;
    case JOB_PH_FINISHED:
        if (j->error == 0) {
            j->state = JOB_DONE;
            r = STATS_RESULT_DONE;
        } else if (j->error == ERR_CANCELLED || j->error == ERR_SHUTDOWN) {
            j->state = JOB_CANCELLED;
            r = STATS_RESULT_CANCELLED;
        } else {
            j->state = JOB_FAILED;
            r = STATS_RESULT_FAILED;
        }
        j->timings.finished = wall_now();
        j->finished_ms = uv_now(env->loop);
        if (j->start_ms) {
            j->timings.total_ms = mono_ms() - j->start_ms;
            stats_observe_duration(env->stats, j->timings.total_ms / 1e3);
        }
        env->stats->jobs_finished[r]++;
        env->ops->on_finished(env->owner, j);
        break;
    }
}

int job_cancel(job_t *j, int err)
{
    if (j->phase >= JOB_PH_FINISHING)
        return j->phase == JOB_PH_FINISHED ? ERR_INVALID_REQUEST : 0;
    finish(j, err, "%s",
           err == ERR_SHUTDOWN ? "cancelled: the daemon is shutting down" : "cancelled by request");
    return 0;
}

/* ---- pause ------------------------------------------------------------------ */

/* Empties the sink for a fresh attempt, as the new response starts over:
 * what the last one stored is dropped (a temporary file is removed). The
 * sink has no write in flight. */
static void reset_sink(job_t *j)
{
    const job_env_t *env = j->env;

    sink_dispose(&j->sink);
    sink_init(&j->sink, env->loop, env->stats, j->spec.sha256 || j->spec.expected_sha256);
    j->sink.data = j;
    j->sink.on_drain = on_sink_drain;
    if (j->spec.output == JOB_OUTPUT_INLINE)
        sink_set_memory(&j->sink, j->spec.inline_max);
    sink_set_limit(&j->sink, j->spec.max_body);
    j->read_paused = 0;
    j->bytes = j->wire_bytes = 0;
    j->http_status = 0;
    j->decoded = 0;
}

/* A resumed job leaves JOB_PH_PAUSED with a fresh attempt, once its sink has
 * no write in flight (on_sink_drain() calls again when the last one lands). */
static void restart(job_t *j)
{
    if (sink_pending(&j->sink) > 0) {
        j->restart_on_drain = 1;
        return;
    }
    j->restart_on_drain = 0;
    reset_sink(j);
    j->retried_stale = 0;
    attempt(j);
}

int job_pause(job_t *j, char *why, size_t len)
{
    if (j->phase >= JOB_PH_FINISHING) {
        snprintf(why, len, "job %s has already finished", j->id);
        return ERR_INVALID_REQUEST;
    }
    if ((j->phase == JOB_PH_REQUEST || j->phase == JOB_PH_RESPONSE) && !j->paused &&
        !retry_idempotent(job_method(j))) {
        snprintf(why, len, "job %s: its %s request is sent and cannot be sent again on resume",
                 j->id, job_method(j));
        return ERR_INVALID_REQUEST;
    }
    j->paused = 1;
    j->restart_on_drain = 0; /* a restart waiting for the sink waits for resume again */
    switch (j->phase) {
    case JOB_PH_WAIT_CONN:
    case JOB_PH_RESOLVING:
    case JOB_PH_CONNECTING:
        job_set_phase(j, JOB_PH_PAUSED, 0);
        return 0;
    case JOB_PH_REQUEST:
    case JOB_PH_RESPONSE:
        /* Composes with the sink's and the byte rate's pauses: reading goes
         * on only when none of the three holds it. */
        if (j->conn)
            conn_pause(j->conn);
        phase_timer_stop(j);
        return 1;
    default:
        /* Queued; paused already; or in a backoff, whose timer runs on and
         * then finds the job paused (attempt()). */
        return 0;
    }
}

void job_resume(job_t *j)
{
    if (!j->paused || j->phase >= JOB_PH_FINISHING)
        return;
    j->paused = 0;
    switch (j->phase) {
    case JOB_PH_REQUEST:
        j->resumed_held = 1;
        if (j->conn)
            conn_resume(j->conn);
        phase_timer(j, j->spec.first_byte_timeout_ms);
        break;
    case JOB_PH_RESPONSE:
        j->resumed_held = 1;
        if (!j->read_paused && !j->rl.paused && j->conn) {
            conn_resume(j->conn);
            phase_timer(j, j->spec.idle_timeout_ms);
        }
        break;
    case JOB_PH_PAUSED:
        restart(j);
        break;
    default:
        break;
    }
}

void job_pause_expire(job_t *j)
{
    if (j->paused && (j->phase == JOB_PH_REQUEST || j->phase == JOB_PH_RESPONSE)) {
        log_debug("job %s: paused past the keep bound; its connection is closed", j->id);
        job_set_phase(j, JOB_PH_PAUSED, 0);
    }
}

/* ---- names ------------------------------------------------------------------ */

static const char *const state_names[] = {"queued", "running", "done", "failed", "cancelled"};

const char *job_state_name(job_state_t s)
{
    return (unsigned)s < sizeof(state_names) / sizeof(state_names[0]) ? state_names[s] : "unknown";
}

int job_state_from_name(const char *name, job_state_t *out)
{
    for (size_t i = 0; i < sizeof(state_names) / sizeof(state_names[0]); i++) {
        if (strcmp(name, state_names[i]) == 0) {
            *out = (job_state_t)i;
            return 0;
        }
    }
    return -1;
}

int job_is_finished(const job_t *j)
{
    return j->state >= JOB_DONE;
}

int job_is_queued(const job_t *j)
{
    return j->phase == JOB_PH_QUEUED;
}

int job_is_cancellable(const job_t *j)
{
    return j->phase < JOB_PH_FINISHING;
}

/* ---- the connection's user -------------------------------------------------- */

static void conn_user_incref(void *user)
{
    job_incref(user);
}

static void conn_user_decref(void *user)
{
    job_decref(user);
}

static void on_conn_detach(void *user)
{
    job_t *j = user;
    if (j->env->rl != NULL)
        ratelimit_job_detach(j->env->rl, j);
    j->conn = NULL;
}

static const conn_user_ops_t conn_ops = {
    .incref = conn_user_incref,
    .decref = conn_user_decref,
    .on_detach = on_conn_detach,
    .on_connected = on_conn_connected,
    .on_request_sent = on_conn_request_sent,
    .on_read = on_conn_read,
    .on_header = on_conn_header,
    .on_head = on_conn_head,
    .on_body = on_conn_body,
    .on_complete = on_conn_complete,
    .on_error = on_conn_error,
};
