/* fetchctl — the command-line client of fetchd's control socket.
 *
 * Usage: fetchctl [-s SOCKET] [--json] COMMAND [OPTIONS] [ARGS]; the global
 * options may also follow the command. See fetchctl(1) (client/fetchctl.1)
 * and proto/PROTOCOL.md.
 */
#include "fetchctl.h"

#include "ctlpath.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef FETCHD_VERSION
#define FETCHD_VERSION "unknown"
#endif

/* Calls per JSON-RPC batch line for status and cancel: far below the
 * daemon's 1 MiB line limit. */
#define CTL_BATCH_CALLS 1000
/* Jobs per list page: the daemon's maximum. */
#define CTL_LIST_PAGE 1000

static const char usage_text[] =
    "Usage: fetchctl [-s SOCKET] [--json] COMMAND [OPTIONS] [ARGS]\n"
    "Control fetchd, the HTTP fetcher daemon, through its control socket.\n"
    "\n"
    "Commands:\n"
    "  submit [OPTIONS] URL...   queue fetch jobs; prints one job id per line\n"
    "  submit -i FILE            queue one job per line of FILE ('-' = stdin)\n"
    "  status ID...              show jobs\n"
    "  wait [--timeout SEC] ID...  wait until the jobs finish\n"
    "  cancel ID...              cancel jobs\n"
    "  pause ID...               pause jobs (queued ones stay queued)\n"
    "  resume ID...              resume paused jobs\n"
    "  set [OPTIONS] ID...       change a job's priority and limits\n"
    "  list [--state S] [--limit N]  list jobs in submission order\n"
    "  stats                     show the daemon's counters\n"
    "  watch [--events LIST] [ID...]  print job events until interrupted\n"
    "  version                   show the fetchctl and fetchd versions\n"
    "\n"
    "Global options (before or after the command):\n"
    "  -s, --socket PATH   control socket (default: $FETCHD_SOCKET, else\n"
    "                      $RUNTIME_DIRECTORY/control.sock, else\n"
    "                      $XDG_RUNTIME_DIR/fetchd/control.sock, else\n"
    "                      /tmp/fetchd-$UID/control.sock; if nothing is\n"
    "                      there, " CTLPATH_SERVICE ")\n"
    "      --json          machine output: one JSON object per line\n"
    "  -h, --help          show help (fetchctl COMMAND --help for a command)\n"
    "\n"
    "Exit status: 0 ok, 1 a job failed or was cancelled (wait, submit --wait),\n"
    "2 usage error, 3 fetchd unreachable, 4 error reported by fetchd.\n";

/* ---- shared helpers ------------------------------------------------------------- */

/* The default socket path: the daemon's own default (proto/ctlpath.c); and
 * when nothing listens there but the packaged service's socket exists, that
 * one, so `fetchctl` finds a systemd-run fetchd without -s. */
static void default_socket(ctl_t *c)
{
    const char *env = getenv("FETCHD_SOCKET");

    if (env != NULL && *env != '\0') {
        c->socket = env;
        return;
    }
    if (ctlpath_default(c->socket_buf, sizeof(c->socket_buf)) != 0 ||
        (access(c->socket_buf, F_OK) != 0 && getenv("RUNTIME_DIRECTORY") == NULL &&
         access(CTLPATH_SERVICE, F_OK) == 0))
        snprintf(c->socket_buf, sizeof(c->socket_buf), "%s", CTLPATH_SERVICE);
    c->socket = c->socket_buf;
}

int ctl_global_option(ctl_t *c, int opt, const char *arg)
{
    if (opt == CTL_OPT_SOCKET)
        c->socket = arg;
    else if (opt == CTL_OPT_JSON)
        c->json = 1;
    else
        return 0;
    return 1;
}

int ctl_usage_error(const char *cmd)
{
    fprintf(stderr, "Try 'fetchctl %s%s--help'.\n", cmd ? cmd : "", cmd ? " " : "");
    return EXIT_USAGE;
}

int ctl_connect(ctl_t *c)
{
    int rc = rpc_connect(&c->rpc, c->socket);
    if (rc != 0) {
        fprintf(stderr, "fetchctl: cannot connect to fetchd at %s: %s\n", c->socket,
                rc == -ENAMETOOLONG ? "path too long for a Unix socket" : strerror(-rc));
        fprintf(stderr, "fetchctl: start it with: fetchd --control %s\n", c->socket);
        return EXIT_UNREACHABLE;
    }
    c->connected = 1;
    return 0;
}

/* A text for the terminal: control bytes (which could move the cursor or
 * fake a line) become '?'. Returns a pointer into buf, or "-" for NULL. */
static const char *shown(const char *s, char *buf, size_t len)
{
    size_t i;
    if (s == NULL)
        return "-";
    for (i = 0; s[i] != '\0' && i + 1 < len; i++)
        buf[i] = ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) ? '?' : s[i];
    buf[i] = '\0';
    return buf;
}

/* shown() for n bytes (a message's string, not NUL-terminated). */
static const char *shown_n(const char *s, size_t n, char *buf, size_t len)
{
    size_t i;
    if (s == NULL)
        return "-";
    for (i = 0; i < n && i + 1 < len; i++)
        buf[i] = ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) ? '?' : s[i];
    buf[i] = '\0';
    return buf;
}

long long ctl_int(const jsonr_t *m, uint32_t v)
{
    long long i;
    return jsonr_int(m, v, &i) == 0 ? i : 0;
}

const char *ctl_str(const jsonr_t *m, uint32_t v, size_t *len)
{
    const char *s = jsonr_str(m, v, len);
    /* Only a message read from a tree (a line with \u0000, see rpc_read)
     * holds a NUL, and has no source text (jsonr_from_json): the string
     * ends at the NUL, as json_string_value() showed it. */
    if (s != NULL && m->len == 0)
        *len = strnlen(s, *len);
    return s;
}

int ctl_str_is(const jsonr_t *m, uint32_t v, const char *s)
{
    size_t n;
    const char *p = ctl_str(m, v, &n);
    return p != NULL && strlen(s) == n && memcmp(p, s, n) == 0;
}

/* shown() of the string member key of o. */
static const char *shown_field(const jsonr_t *m, uint32_t o, const char *key, char *buf, size_t len)
{
    size_t n;
    const char *s = ctl_str(m, jsonr_get(m, o, key), &n);
    return shown_n(s, n, buf, len);
}

int ctl_print_error(const char *what, const jsonr_t *m, uint32_t error)
{
    size_t n, cn;
    const char *msg = ctl_str(m, jsonr_get(m, error, "message"), &n);
    const char *code = ctl_str(m, jsonr_get(m, jsonr_get(m, error, "data"), "code"), &cn);
    char buf[1024];

    fprintf(stderr, "fetchctl: %s%s%s", what ? what : "", what ? ": " : "",
            msg ? shown_n(msg, n, buf, sizeof(buf)) : "error without a message");
    if (code != NULL)
        fprintf(stderr, " (%s)", shown_n(code, cn, buf, sizeof(buf)));
    fputc('\n', stderr);
    return EXIT_SERVER;
}

int ctl_recv(ctl_t *c)
{
    int rc;
    if (ctl_flush() != 0)
        return EXIT_SERVER;
    rc = rpc_read(&c->rpc, -1);
    if (rc == 1) {
        const jsonr_t *m = &c->rpc.msg;
        uint32_t id = jsonr_get(m, 0, "id"), error = jsonr_get(m, 0, "error");
        if (id != JSONR_NONE && jsonr_type(m, id) == JSONR_NULL && error != JSONR_NONE) {
            /* An answer to no call of ours: the daemon refuses the whole
             * connection (too many clients) or could not read a line. */
            ctl_progress_clear(c);
            return ctl_print_error("fetchd", m, error);
        }
        return 0;
    }
    ctl_progress_clear(c);
    if (rc == RPC_INTERRUPTED)
        return EXIT_SIGNAL;
    if (rc == RPC_EOF)
        fprintf(stderr, "fetchctl: fetchd closed the connection\n");
    else if (rc == RPC_BAD_LINE)
        fprintf(stderr, "fetchctl: fetchd sent a line that is not JSON\n");
    else
        fprintf(stderr, "fetchctl: reading from fetchd: %s\n", strerror(-rc));
    return EXIT_SERVER;
}

uint32_t ctl_msg_first(const jsonr_t *m)
{
    return jsonr_type(m, 0) == JSONR_ARRAY ? jsonr_first(m, 0) : 0;
}

json_int_t ctl_resp_id(const jsonr_t *m, uint32_t resp)
{
    long long id;
    if (jsonr_get(m, resp, "method") != JSONR_NONE ||
        jsonr_int(m, jsonr_get(m, resp, "id"), &id) != 0)
        return 0;
    return id;
}

void ctl_job_read(const jsonr_t *m, uint32_t job, ctl_job_t *j)
{
    j->id = j->state = j->url = j->http_status = j->bytes = j->error = JSONR_NONE;
    if (jsonr_type(m, job) != JSONR_OBJECT)
        return;
    for (uint32_t v = jsonr_first(m, job); v != JSONR_NONE; v = jsonr_next(m, v)) {
        size_t n;
        const char *k = jsonr_key(m, v, &n);
        uint32_t *slot = NULL;
        if (n == 2 && memcmp(k, "id", 2) == 0)
            slot = &j->id;
        else if (n == 3 && memcmp(k, "url", 3) == 0)
            slot = &j->url;
        else if (n == 5 && memcmp(k, "state", 5) == 0)
            slot = &j->state;
        else if (n == 5 && memcmp(k, "bytes", 5) == 0)
            slot = &j->bytes;
        else if (n == 5 && memcmp(k, "error", 5) == 0)
            slot = &j->error;
        else if (n == 11 && memcmp(k, "http_status", 11) == 0)
            slot = &j->http_status;
        if (slot != NULL)
            *slot = v;
    }
}

int ctl_job_done(const jsonr_t *m, uint32_t job)
{
    return ctl_str_is(m, jsonr_get(m, job, "state"), "done");
}

void ctl_print_json(ctl_t *c, const jsonr_t *m, uint32_t v)
{
    jsonr_type_t t = jsonr_type(m, v);

    c->dump.len = 0;
    /* As json_dumpf() without JSON_ENCODE_ANY: only an object or an array
     * is written; out of memory, what was written goes out. */
    if (v != JSONR_NONE && (t == JSONR_OBJECT || t == JSONR_ARRAY))
        jdump_value(&c->dump, m, v);
    fwrite(c->dump.buf, 1, c->dump.len, stdout);
    fputc('\n', stdout);
}

/* Appends s to the line in d, padded with spaces to width (on the left
 * when right is set), as printf's "%-*s" and "%*s" do; then sep. */
static void column(jdump_t *d, const char *s, int width, int right, const char *sep)
{
    size_t n = strlen(s), pad = (size_t)width > n ? (size_t)width - n : 0;
    static const char spaces[] = "                ";

    if (right)
        jdump_raw(d, spaces, pad);
    jdump_raw(d, s, n);
    if (!right)
        jdump_raw(d, spaces, pad);
    jdump_raw(d, sep, strlen(sep));
}

/* "%lld" of x into buf (24 bytes). */
static const char *decimal(long long x, char *buf)
{
    char *p = buf + 23;
    unsigned long long u = x < 0 ? 0ull - (unsigned long long)x : (unsigned long long)x;

    *p = '\0';
    do
        *--p = (char)('0' + u % 10);
    while ((u /= 10) != 0);
    if (x < 0)
        *--p = '-';
    return p;
}

void ctl_print_job(ctl_t *c, const jsonr_t *m, uint32_t job)
{
    ctl_job_t j;
    long long http;
    size_t n;
    char b1[32], b2[16], b3[4096], b4[1024], b5[1024], status[24], bytes[24];
    const char *s;
    jdump_t *d = &c->dump;

    ctl_progress_clear(c);
    if (c->json) {
        ctl_print_json(c, m, job);
        return;
    }
    ctl_job_read(m, job, &j);
    /* The line of printf("%-16s  %-9s  %4s  %10lld  %s"), put together by
     * hand: this runs once per job. */
    d->len = 0;
    s = ctl_str(m, j.id, &n);
    column(d, shown_n(s, n, b1, sizeof(b1)), 16, 0, "  ");
    s = ctl_str(m, j.state, &n);
    column(d, shown_n(s, n, b2, sizeof(b2)), 9, 0, "  ");
    column(d, jsonr_int(m, j.http_status, &http) == 0 ? decimal(http, status) : "-", 4, 1, "  ");
    column(d, decimal(ctl_int(m, j.bytes), bytes), 10, 1, "  ");
    s = ctl_str(m, j.url, &n);
    column(d, shown_n(s, n, b3, sizeof(b3)), 0, 0, "");
    if (j.error != JSONR_NONE) {
        column(d, "  ", 0, 0, shown_field(m, j.error, "code", b4, sizeof(b4)));
        column(d, ": ", 0, 0, shown_field(m, j.error, "message", b5, sizeof(b5)));
    }
    jdump_raw(d, "\n", 1);
    fwrite(d->buf, 1, d->len, stdout);
}

/* One indented "label  value" line of a job's details. */
static void detail(const char *label, const char *value, size_t n)
{
    char buf[4096];
    if (value != NULL)
        printf("  %-14s %s\n", label, shown_n(value, n, buf, sizeof(buf)));
}

/* detail() of the string member key of o. */
static void detail_field(const char *label, const jsonr_t *m, uint32_t o, const char *key)
{
    size_t n;
    const char *s = ctl_str(m, jsonr_get(m, o, key), &n);
    detail(label, s, n);
}

void ctl_print_details(ctl_t *c, const jsonr_t *m, uint32_t job)
{
    uint32_t chain = jsonr_get(m, job, "redirect_chain"), hop, pair;
    uint32_t headers = jsonr_get(m, job, "headers");
    long long length;
    size_t ne = 0, nu = 0;
    const char *eff, *url;
    char label[32], num[32];

    if (c->json)
        return;
    for (hop = jsonr_type(m, chain) == JSONR_ARRAY ? jsonr_first(m, chain) : JSONR_NONE;
         hop != JSONR_NONE; hop = jsonr_next(m, hop)) {
        snprintf(label, sizeof(label), "redirect %lld", ctl_int(m, jsonr_get(m, hop, "status")));
        detail_field(label, m, hop, "url");
    }
    eff = ctl_str(m, jsonr_get(m, job, "effective_url"), &ne);
    url = ctl_str(m, jsonr_get(m, job, "url"), &nu);
    if ((jsonr_type(m, chain) == JSONR_ARRAY && jsonr_count(m, chain) > 0) || ne != nu ||
        (ne > 0 && memcmp(eff, url, ne) != 0))
        detail("final URL", eff, ne);
    detail_field("content-type", m, job, "content_type");
    if (jsonr_int(m, jsonr_get(m, job, "content_length"), &length) == 0) {
        snprintf(num, sizeof(num), "%lld", length);
        detail("content-length", num, strlen(num));
    }
    detail_field("etag", m, job, "etag");
    detail_field("last-modified", m, job, "last_modified");
    for (pair = jsonr_type(m, headers) == JSONR_ARRAY ? jsonr_first(m, headers) : JSONR_NONE;
         pair != JSONR_NONE; pair = jsonr_next(m, pair)) {
        char n[256], v[4096];
        size_t ln = 0, lv = 0;
        const char *name = ctl_str(m, jsonr_at(m, pair, 0), &ln);
        const char *value = ctl_str(m, jsonr_at(m, pair, 1), &lv);
        printf("  < %s: %s\n", shown_n(name, ln, n, sizeof(n)), shown_n(value, lv, v, sizeof(v)));
    }
    if (jsonr_type(m, jsonr_get(m, job, "headers_truncated")) == JSONR_TRUE)
        fputs("  < (later fields dropped: fetchd keeps 100 fields, 64 KiB)\n", stdout);
}

void ctl_progress(ctl_t *c, size_t done, size_t total)
{
    if (!c->progress)
        return;
    fflush(stdout);
    fprintf(stderr, "\r\033[Kfetchctl: %zu of %zu finished", done, total);
    c->progress_shown = 1;
}

void ctl_progress_clear(ctl_t *c)
{
    if (!c->progress_shown)
        return;
    fputs("\r\033[K", stderr);
    c->progress_shown = 0;
}

int ctl_flush(void)
{
    if (fflush(stdout) == 0 && !ferror(stdout))
        return 0;
    /* A reader that went away (fetchctl list | head) is no error to shout. */
    if (errno != EPIPE)
        fprintf(stderr, "fetchctl: writing the output: %s\n", strerror(errno));
    return EXIT_SERVER;
}

/* Parses the options of a command that has no options of its own besides
 * the global ones; returns -1 to go on, or an exit code. */
static int simple_options(ctl_t *c, int argc, char **argv, const char *help,
                          const struct option *extra,
                          int (*own)(ctl_t *, int, const char *, void *), void *ctx,
                          const char *shortopts)
{
    struct option opts[16] = {{"socket", required_argument, NULL, CTL_OPT_SOCKET},
                              {"json", no_argument, NULL, CTL_OPT_JSON},
                              {"help", no_argument, NULL, CTL_OPT_HELP}};
    size_t n = 3;
    int opt;
    for (; extra != NULL && extra->name != NULL && n + 1 < 16; extra++)
        opts[n++] = *extra;
    while ((opt = getopt_long(argc, argv, shortopts, opts, NULL)) != -1) {
        if (opt == CTL_OPT_HELP) {
            fputs(help, stdout);
            return EXIT_OK;
        }
        if (ctl_global_option(c, opt, optarg))
            continue;
        if (own == NULL || opt == '?' || own(c, opt, optarg, ctx) != 0)
            return ctl_usage_error(argv[0] + strlen("fetchctl "));
    }
    return -1;
}

/* ---- status, cancel: batch calls ------------------------------------------------ */

static const char status_help[] =
    "Usage: fetchctl status [--json] ID...\n"
    "Show jobs: a line ID STATE HTTP BYTES URL [error-code: message], then\n"
    "indented lines with what is known of the final response: each redirect\n"
    "(status and URL), the final URL, content-type, content-length, etag,\n"
    "last-modified, and the kept header fields ('< Name: value', keep_headers).\n"
    "Exits 0 whatever the jobs' states; 4 when an id is unknown.\n";

static const char cancel_help[] =
    "Usage: fetchctl cancel [--json] ID...\n"
    "Cancel queued or running jobs and show them afterwards (a finished job is\n"
    "shown unchanged). Exits 4 when an id is unknown.\n";

/* Sends method for every id (in batches) and prints the answers in the
 * order of the ids. */
static int per_id_batches(ctl_t *c, const char *method, char **ids, size_t n)
{
    json_t **answers = calloc(n, sizeof(*answers));
    json_int_t base = c->rpc.next_id;
    jsonr_t one;
    size_t pending = n;
    int rc = answers ? 0 : EXIT_SERVER;

    for (size_t i = 0; rc == 0 && i < n; i += CTL_BATCH_CALLS) {
        json_t *batch = json_array();
        json_int_t id;
        for (size_t k = i; batch && k < n && k < i + CTL_BATCH_CALLS; k++)
            json_array_append_new(
                batch, rpc_call_object(&c->rpc, method, json_pack("{s:s}", "id", ids[k]), &id));
        if (batch == NULL || rpc_send_json(&c->rpc, batch) != 0)
            rc = EXIT_SERVER;
        json_decref(batch);
    }
    while (rc == 0 && pending > 0) {
        const jsonr_t *m = &c->rpc.msg;
        if ((rc = ctl_recv(c)) != 0)
            break;
        /* The answers are kept until the earlier ids' have come: as trees,
         * since the message's text moves with the next read. */
        for (uint32_t resp = ctl_msg_first(m); resp != JSONR_NONE; resp = jsonr_next(m, resp)) {
            json_int_t id = ctl_resp_id(m, resp);
            if (id >= base && id < base + (json_int_t)n && answers[id - base] == NULL) {
                if ((answers[id - base] = jsonr_to_json(m, resp)) == NULL)
                    rc = EXIT_SERVER;
                pending--;
            }
        }
    }
    jsonr_init(&one, realloc, free);
    for (size_t i = 0; i < n && answers != NULL; i++) {
        uint32_t result;
        if (answers[i] == NULL)
            continue;
        if (jsonr_from_json(&one, answers[i]) != 0) {
            rc = EXIT_SERVER;
        } else if ((result = jsonr_get(&one, 0, "result")) != JSONR_NONE) {
            ctl_print_job(c, &one, result);
            if (strcmp(method, "status") == 0)
                ctl_print_details(c, &one, result);
        } else if (ctl_print_error(ids[i], &one, jsonr_get(&one, 0, "error")) > rc) {
            rc = EXIT_SERVER;
        }
        json_decref(answers[i]);
    }
    jsonr_free(&one);
    free(answers);
    return rc;
}

static int cmd_by_id(ctl_t *c, int argc, char **argv, const char *method, const char *help)
{
    int rc = simple_options(c, argc, argv, help, NULL, NULL, NULL, "s:h");
    if (rc >= 0)
        return rc;
    if (optind >= argc) {
        fprintf(stderr, "%s: at least one job id is required\n", argv[0]);
        return ctl_usage_error(method);
    }
    if ((rc = ctl_connect(c)) != 0)
        return rc;
    return per_id_batches(c, method, argv + optind, (size_t)(argc - optind));
}

/* ---- wait ----------------------------------------------------------------------- */

static const char wait_help[] =
    "Usage: fetchctl wait [--timeout SEC] [--json] ID...\n"
    "Wait until the jobs finish, printing each one as it finishes. On a terminal\n"
    "a progress line (N of M finished) is shown on stderr.\n"
    "  --timeout SEC   give up waiting after SEC seconds (the jobs run on)\n"
    "Exits 0 when every job is done, 1 when one failed or was cancelled, 4 on\n"
    "an unknown id or when the timeout passed.\n";

/* fetchd holds at most 10000 open wait calls per client (PROTOCOL.md): the
 * calls for later ids are sent as earlier ones are answered. */
#define CTL_MAX_WAITS 8192

typedef struct waitset {
    json_int_t base; /* the id of the first wait call; the i-th id's is base + i */
    size_t n, pending, done, sent;
    char **ids; /* borrowed: the job ids, for messages */
    double timeout;
    int rc;
} waitset_t;

/* Records one wait answer; returns 1 when it was one of this set's. */
static int wait_answer(ctl_t *c, waitset_t *w, const jsonr_t *m, uint32_t resp)
{
    json_int_t id = ctl_resp_id(m, resp);
    uint32_t job = jsonr_get(m, resp, "result");
    int rc;

    if (id < w->base || id >= w->base + (json_int_t)w->sent)
        return 0;
    w->pending--;
    w->done++;
    if (job != JSONR_NONE) {
        ctl_print_job(c, m, job);
        rc = ctl_job_done(m, job) ? EXIT_OK : EXIT_JOB;
    } else {
        ctl_progress_clear(c);
        rc = ctl_print_error(w->ids[id - w->base], m, jsonr_get(m, resp, "error"));
    }
    if (rc > w->rc)
        w->rc = rc;
    ctl_progress(c, w->done, w->n);
    return 1;
}

static int ascii(const char *s);

/* Sends the wait calls of the next ids while fewer than CTL_MAX_WAITS are
 * open: 0, or EXIT_SERVER. */
static int wait_send(ctl_t *c, waitset_t *w)
{
    for (; w->sent < w->n && w->sent - w->done < CTL_MAX_WAITS; w->sent++) {
        const char *id = w->ids[w->sent];
        json_t *params;
        /* An ASCII id is written straight; json_pack() checks any other's
         * UTF-8 (a bad one ends the command, as it did). */
        if (w->timeout <= 0 && ascii(id)) {
            if (rpc_request_job(&c->rpc, "wait", id) < 0)
                return EXIT_SERVER;
            continue;
        }
        params = json_pack("{s:s}", "id", id);
        if (params != NULL && w->timeout > 0)
            json_object_set_new(params, "timeout", json_real(w->timeout));
        if (params == NULL || rpc_request(&c->rpc, "wait", params) < 0)
            return EXIT_SERVER;
    }
    return 0;
}

static int ascii(const char *s)
{
    for (; *s != '\0'; s++)
        if ((unsigned char)*s >= 0x80)
            return 0;
    return 1;
}

/* Waits on n jobs with one wait call each, so each prints the moment it
 * finishes (a batch would be answered only when all had). */
static int wait_ids(ctl_t *c, char **ids, size_t n, double timeout)
{
    waitset_t w = {c->rpc.next_id, n, n, 0, 0, ids, timeout, EXIT_OK};
    int rc = wait_send(c, &w);

    if (rc != 0)
        return rc;
    ctl_progress(c, 0, n);
    while (w.pending > 0) {
        const jsonr_t *m = &c->rpc.msg;
        if ((rc = ctl_recv(c)) != 0)
            return rc;
        for (uint32_t resp = ctl_msg_first(m); resp != JSONR_NONE; resp = jsonr_next(m, resp))
            wait_answer(c, &w, m, resp);
        if ((rc = wait_send(c, &w)) != 0)
            return rc;
    }
    ctl_progress_clear(c);
    return w.rc;
}

static int parse_seconds(const char *s, double *out)
{
    char *end;
    errno = 0;
    *out = strtod(s, &end);
    return (errno != 0 || end == s || *end != '\0' || !(*out > 0)) ? -1 : 0;
}

static int wait_option(ctl_t *c, int opt, const char *arg, void *ctx)
{
    (void)c;
    if (opt != 't' || parse_seconds(arg, ctx) != 0) {
        if (opt == 't')
            fprintf(stderr, "fetchctl wait: --timeout: a positive number of seconds\n");
        return -1;
    }
    return 0;
}

static int cmd_wait(ctl_t *c, int argc, char **argv)
{
    static const struct option extra[] = {{"timeout", required_argument, NULL, 't'}, {0}};
    double timeout = 0;
    int rc = simple_options(c, argc, argv, wait_help, extra, wait_option, &timeout, "s:h");
    if (rc >= 0)
        return rc;
    if (optind >= argc) {
        fprintf(stderr, "fetchctl wait: at least one job id is required\n");
        return ctl_usage_error("wait");
    }
    if ((rc = ctl_connect(c)) != 0)
        return rc;
    return wait_ids(c, argv + optind, (size_t)(argc - optind), timeout);
}

/* ---- one call, one answer ------------------------------------------------------- */

/* Calls method with params (stolen) and finds its answer's result in
 * c->rpc.msg (until the next read): 0 with *result set, or an exit code. */
static int call(ctl_t *c, const char *method, json_t *params, uint32_t *result)
{
    const jsonr_t *m = &c->rpc.msg;
    json_int_t id = rpc_request(&c->rpc, method, params);
    uint32_t resp = JSONR_NONE;
    int rc;
    *result = JSONR_NONE;
    if (id < 0)
        return EXIT_SERVER;
    while (resp == JSONR_NONE) {
        if ((rc = ctl_recv(c)) != 0)
            return rc;
        /* The last answer with this id in the message, as before. */
        for (uint32_t r = ctl_msg_first(m); r != JSONR_NONE; r = jsonr_next(m, r))
            if (ctl_resp_id(m, r) == id)
                resp = r;
    }
    if ((*result = jsonr_get(m, resp, "result")) != JSONR_NONE)
        return 0;
    return ctl_print_error(method, m, jsonr_get(m, resp, "error"));
}

/* ---- pause, resume, set --------------------------------------------------------- */

static const char pause_help[] =
    "Usage: fetchctl pause [--json] ID...\n"
    "Pause jobs and show them afterwards. A queued job stays queued and is not\n"
    "started until resumed; a running job stops reading (its connection is kept\n"
    "for fetchd's idle timeout, then closed: it starts over when resumed). Exits\n"
    "4 when an id is unknown or its job has finished.\n";

static const char resume_help[] =
    "Usage: fetchctl resume [--json] ID...\n"
    "Resume paused jobs and show them afterwards (a job that is not paused is\n"
    "shown unchanged). Exits 4 when an id is unknown or its job has finished.\n";

static const char set_help[] =
    "Usage: fetchctl set [OPTIONS] [--json] ID...\n"
    "Change jobs and show them afterwards. Priority, rate and delay change only\n"
    "while a job is queued; the limit rate also while it runs.\n"
    "  --priority N        higher runs first (-1000..1000)\n"
    "  --rate N[/s|/m|/h]  start requests to the job's host at most N per second\n"
    "                      (minute, hour)\n"
    "  --delay SEC         wait SEC since the last request start to the host\n"
    "  --limit-rate RATE   read the body at most RATE bytes/s (100K, 1M, 2G: powers\n"
    "                      of 1024; 0: fetchd's default)\n"
    "Exits 4 when an id is unknown, a job has finished or a change is refused.\n";

/* A number with an optional suffix: K, M, G (powers of 1024) for
 * --limit-rate, /s, /m, /h for --rate. -1 when arg is not one. */
static double set_number(int opt, const char *arg)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(arg, &end);
    if (errno != 0 || end == arg || !(v >= 0))
        return -1;
    if (opt == 'L' && *end != '\0' && strchr("kKmMgG", *end) != NULL && end[1] == '\0') {
        for (const char *u = "kmg"; *u && *u != (*end | 0x20); u++)
            v *= 1024;
        v *= 1024;
        end++;
    } else if (opt == 'r' && *end == '/' && end[1] != '\0' && end[2] == '\0') {
        double per = end[1] == 's' ? 1 : end[1] == 'm' ? 60 : end[1] == 'h' ? 3600 : 0;
        if (per == 0)
            return -1;
        v /= per;
        end += 2;
    }
    return *end == '\0' ? v : -1;
}

static int set_option(ctl_t *c, int opt, const char *arg, void *ctx)
{
    json_t *changes = ctx;
    double v = set_number(opt, arg);
    char *end;
    long long n;

    (void)c;
    switch (opt) {
    case 'p':
        errno = 0;
        n = strtoll(arg, &end, 10);
        if (errno == 0 && end != arg && *end == '\0')
            return json_object_set_new(changes, "priority", json_integer(n));
        fprintf(stderr, "fetchctl set: --priority: an integer is required, not '%s'\n", arg);
        return -1;
    case 'r':
        if (v > 0)
            return json_object_set_new(changes, "rate", json_real(v));
        fprintf(stderr, "fetchctl set: --rate: N, N/s, N/m or N/h, not '%s'\n", arg);
        return -1;
    case 'd':
        if (v >= 0 && strchr(arg, '/') == NULL)
            return json_object_set_new(changes, "delay", json_real(v));
        fprintf(stderr, "fetchctl set: --delay: a number of seconds, not '%s'\n", arg);
        return -1;
    case 'L':
        if (v >= 0 && v <= 1e15)
            return json_object_set_new(changes, "limit_rate", json_integer((json_int_t)v));
        fprintf(stderr,
                "fetchctl set: --limit-rate: bytes per second (like 100K or 1M), not "
                "'%s'\n",
                arg);
        return -1;
    default:
        return -1;
    }
}

/* Sends `set` with the changes for every id, CTL_BATCH_CALLS ids per call
 * (each call all or nothing), and prints the jobs in the order of the ids. */
static int set_ids(ctl_t *c, json_t *changes, char **ids, size_t n)
{
    int rc = 0;

    for (size_t i = 0; rc == 0 && i < n; i += CTL_BATCH_CALLS) {
        json_t *params = json_deep_copy(changes), *list = json_array();
        const jsonr_t *m = &c->rpc.msg;
        uint32_t result, jobs;
        size_t k;
        for (k = i; list && k < n && k < i + CTL_BATCH_CALLS; k++)
            json_array_append_new(list, json_string(ids[k]));
        if (params == NULL || list == NULL || json_object_set_new(params, "ids", list) != 0) {
            json_decref(params);
            return EXIT_SERVER;
        }
        if ((rc = call(c, "set", params, &result)) != 0)
            return rc;
        jobs = jsonr_get(m, result, "jobs");
        for (uint32_t job = jsonr_type(m, jobs) == JSONR_ARRAY ? jsonr_first(m, jobs) : JSONR_NONE;
             job != JSONR_NONE; job = jsonr_next(m, job))
            ctl_print_job(c, m, job);
    }
    return rc;
}

static int cmd_set(ctl_t *c, int argc, char **argv)
{
    static const struct option extra[] = {{"priority", required_argument, NULL, 'p'},
                                          {"rate", required_argument, NULL, 'r'},
                                          {"delay", required_argument, NULL, 'd'},
                                          {"limit-rate", required_argument, NULL, 'L'},
                                          {0}};
    json_t *changes = json_object();
    int rc = changes ? simple_options(c, argc, argv, set_help, extra, set_option, changes, "s:h")
                     : EXIT_SERVER;

    if (rc < 0 && json_object_size(changes) == 0) {
        fprintf(stderr, "fetchctl set: nothing to change: give --priority, --rate, --delay or "
                        "--limit-rate\n");
        rc = ctl_usage_error("set");
    } else if (rc < 0 && optind >= argc) {
        fprintf(stderr, "fetchctl set: at least one job id is required\n");
        rc = ctl_usage_error("set");
    } else if (rc < 0 && (rc = ctl_connect(c)) == 0) {
        rc = set_ids(c, changes, argv + optind, (size_t)(argc - optind));
    }
    json_decref(changes);
    return rc;
}

/* ---- list ----------------------------------------------------------------------- */

static const char list_help[] =
    "Usage: fetchctl list [--state S] [--limit N] [--json]\n"
    "List the jobs fetchd knows (queued, running and retained finished jobs)\n"
    "in submission order, as a table: ID STATE HTTP BYTES URL.\n"
    "  --state S   only jobs in state S: queued, running, done, failed, cancelled\n"
    "  --limit N   show at most N jobs (default: all)\n";

typedef struct list_opts {
    const char *state;
    long long limit;
} list_opts_t;

static int list_option(ctl_t *c, int opt, const char *arg, void *ctx)
{
    static const char *const states[] = {"queued", "running", "done", "failed", "cancelled"};
    list_opts_t *o = ctx;
    char *end;
    (void)c;
    if (opt == 'S') {
        for (size_t i = 0; i < sizeof(states) / sizeof(states[0]); i++)
            if (strcmp(arg, states[i]) == 0)
                o->state = arg;
        if (o->state == NULL)
            fprintf(stderr, "fetchctl list: --state: one of queued, running, done, failed, "
                            "cancelled\n");
        return o->state != NULL ? 0 : -1;
    }
    if (opt == 'n') {
        errno = 0;
        o->limit = strtoll(arg, &end, 10);
        if (errno == 0 && end != arg && *end == '\0' && o->limit > 0)
            return 0;
        fprintf(stderr, "fetchctl list: --limit: a positive integer\n");
    }
    return -1;
}

/* Prints one page; returns the jobs printed. */
static size_t list_page(ctl_t *c, uint32_t jobs)
{
    const jsonr_t *m = &c->rpc.msg;
    if (jsonr_type(m, jobs) != JSONR_ARRAY)
        return 0;
    for (uint32_t job = jsonr_first(m, jobs); job != JSONR_NONE; job = jsonr_next(m, job))
        ctl_print_job(c, m, job);
    return jsonr_count(m, jobs);
}

static int cmd_list(ctl_t *c, int argc, char **argv)
{
    static const struct option extra[] = {
        {"state", required_argument, NULL, 'S'}, {"limit", required_argument, NULL, 'n'}, {0}};
    list_opts_t o = {NULL, -1};
    char *after = NULL;
    int rc = simple_options(c, argc, argv, list_help, extra, list_option, &o, "s:h");
    if (rc >= 0)
        return rc;
    if (optind < argc) {
        fprintf(stderr, "fetchctl list: unexpected argument '%s'\n", argv[optind]);
        return ctl_usage_error("list");
    }
    if ((rc = ctl_connect(c)) != 0)
        return rc;
    if (!c->json)
        printf("%-16s  %-9s  %4s  %10s  %s\n", "ID", "STATE", "HTTP", "BYTES", "URL");
    while (o.limit != 0) {
        long long page = o.limit > 0 && o.limit < CTL_LIST_PAGE ? o.limit : CTL_LIST_PAGE;
        json_t *params = json_pack("{s:I}", "limit", (json_int_t)page);
        const jsonr_t *m = &c->rpc.msg;
        uint32_t result;
        size_t n;
        const char *next;
        if (params != NULL && o.state != NULL)
            json_object_set_new(params, "state", json_string(o.state));
        if (params != NULL && after != NULL)
            json_object_set_new(params, "after", json_string(after));
        free(after);
        after = NULL;
        if ((rc = call(c, "list", params, &result)) != 0)
            return rc;
        if (o.limit > 0)
            o.limit -= (long long)list_page(c, jsonr_get(m, result, "jobs"));
        else
            list_page(c, jsonr_get(m, result, "jobs"));
        if ((next = ctl_str(m, jsonr_get(m, result, "next"), &n)) != NULL)
            after = strndup(next, n);
        if (after == NULL)
            break;
        if ((rc = ctl_flush()) != 0)
            break;
    }
    free(after);
    return rc;
}

/* ---- stats ---------------------------------------------------------------------- */

static const char stats_help[] =
    "Usage: fetchctl stats [--json]\n"
    "Show fetchd's counters (the figures of its /metrics endpoint), one\n"
    "'name value' line each; nested names are joined with dots\n"
    "(connections.active). With --json, the stats object on one line.\n";

typedef struct stat_line {
    char *name;
    char *value;
} stat_line_t;

typedef struct stat_table {
    stat_line_t *lines;
    size_t n, cap, width;
} stat_table_t;

static void stats_add(stat_table_t *t, const char *name, json_t *v)
{
    char *text;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        stat_line_t *p = realloc(t->lines, cap * sizeof(*p));
        if (p == NULL)
            return;
        t->lines = p;
        t->cap = cap;
    }
    text = json_is_string(v) ? strdup(json_string_value(v)) : json_dumps(v, JSON_ENCODE_ANY);
    t->lines[t->n].name = strdup(name);
    t->lines[t->n].value = text;
    if (strlen(name) > t->width)
        t->width = strlen(name);
    t->n++;
}

/* Walks the stats object depth first, naming leaves "outer.inner". */
static void stats_flatten(stat_table_t *t, const char *prefix, json_t *v)
{
    char name[512];
    const char *key;
    json_t *sub;
    size_t i;

    if (json_is_object(v)) {
        json_object_foreach (v, key, sub) {
            snprintf(name, sizeof(name), "%s%s%s", prefix, *prefix ? "." : "", key);
            stats_flatten(t, name, sub);
        }
    } else if (json_is_array(v)) {
        json_array_foreach (v, i, sub) {
            snprintf(name, sizeof(name), "%s%s%zu", prefix, *prefix ? "." : "", i);
            stats_flatten(t, name, sub);
        }
    } else {
        stats_add(t, prefix, v);
    }
}

static int cmd_stats(ctl_t *c, int argc, char **argv)
{
    stat_table_t t = {NULL, 0, 0, 0};
    json_t *tree;
    uint32_t result;
    char b1[512], b2[512];
    int rc = simple_options(c, argc, argv, stats_help, NULL, NULL, NULL, "s:h");
    if (rc >= 0)
        return rc;
    if (optind < argc) {
        fprintf(stderr, "fetchctl stats: unexpected argument '%s'\n", argv[optind]);
        return ctl_usage_error("stats");
    }
    if ((rc = ctl_connect(c)) != 0 || (rc = call(c, "stats", NULL, &result)) != 0)
        return rc;
    if (c->json) {
        ctl_print_json(c, &c->rpc.msg, result);
    } else {
        /* One answer, walked in full: a tree is the simple way. */
        if ((tree = jsonr_to_json(&c->rpc.msg, result)) == NULL)
            return EXIT_SERVER;
        stats_flatten(&t, "", tree);
        json_decref(tree);
        for (size_t i = 0; i < t.n; i++) {
            printf("%-*s  %s\n", (int)t.width, shown(t.lines[i].name, b1, sizeof(b1)),
                   shown(t.lines[i].value, b2, sizeof(b2)));
            free(t.lines[i].name);
            free(t.lines[i].value);
        }
        free(t.lines);
    }
    return EXIT_OK;
}

/* ---- watch ---------------------------------------------------------------------- */

static const char watch_help[] =
    "Usage: fetchctl watch [--events LIST] [--reconnect-for SEC] [--json] [ID...]\n"
    "Print job events as they happen, one 'EVENT ID STATE HTTP ERROR URL' line\n"
    "each (HTTP: the final status, ERROR: the error code; '-' when there is\n"
    "none; a progress event adds BYTES/TOTAL SPEED/s ETA), until interrupted\n"
    "(Ctrl-C ends it with exit status 0).\n"
    "  --events LIST        comma-separated events to follow: queued, started,\n"
    "                       redirected, retrying, paused, resumed, finished\n"
    "                       (default: these seven), progress (a running job's\n"
    "                       bytes, at most one event per job per fetchd\n"
    "                       --progress-interval)\n"
    "  --reconnect-for SEC  when the connection is lost (fetchd restarts), keep\n"
    "                       reconnecting for up to SEC seconds, waiting 0.1 s,\n"
    "                       0.2 s, ... up to 5 s between tries, and saying so on\n"
    "                       stderr; then exit 3 (default 600; 0: exit at once)\n"
    "  ID...                only these jobs (default: every job)\n"
    "With --json, each event's params object on one line.\n";

/* How long to wait between reconnection attempts: doubling up to a cap. */
#define WATCH_BACKOFF_FIRST_MS 100
#define WATCH_BACKOFF_MAX_MS   5000

typedef struct watch_opts {
    json_t *events;     /* owned: the event names, or NULL for all */
    long reconnect_for; /* seconds */
} watch_opts_t;

static int watch_events(json_t **events, const char *arg)
{
    static const char *const names[] = {"queued", "started", "redirected", "retrying",
                                        "paused", "resumed", "finished",   "progress"};
    char *copy = strdup(arg), *save = NULL, *tok;
    int rc = copy != NULL ? 0 : -1;
    if (rc == 0 && *events == NULL)
        *events = json_array();
    for (tok = copy ? strtok_r(copy, ",", &save) : NULL; rc == 0 && tok;
         tok = strtok_r(NULL, ",", &save)) {
        size_t i = 0;
        while (i < sizeof(names) / sizeof(names[0]) && strcmp(tok, names[i]) != 0)
            i++;
        if (i == sizeof(names) / sizeof(names[0])) {
            fprintf(stderr,
                    "fetchctl watch: unknown event '%s' (known: queued, started, "
                    "redirected, retrying, paused, resumed, finished, progress)\n",
                    tok);
            rc = -1;
        } else {
            json_array_append_new(*events, json_string(tok));
        }
    }
    free(copy);
    return rc;
}

static int watch_option(ctl_t *c, int opt, const char *arg, void *ctx)
{
    watch_opts_t *o = ctx;
    char *end;
    (void)c;
    if (opt == 'e')
        return watch_events(&o->events, arg);
    if (opt == 'r') {
        errno = 0;
        o->reconnect_for = strtol(arg, &end, 10);
        if (errno || end == arg || *end != '\0' || o->reconnect_for < 0 ||
            o->reconnect_for > 86400 * 365) {
            fprintf(stderr, "fetchctl watch: --reconnect-for: '%s' is not a number of seconds\n",
                    arg);
            return -1;
        }
        return 0;
    }
    return -1;
}

/* "  1048576/4194304 1061234/s ETA 3s" ('-' for an unknown total or ETA). */
static void print_progress(const jsonr_t *m, uint32_t job)
{
    long long total, eta;
    printf("  %lld/", ctl_int(m, jsonr_get(m, job, "wire_bytes")));
    if (jsonr_int(m, jsonr_get(m, job, "total"), &total) == 0)
        printf("%lld", total);
    else
        putchar('-');
    printf(" %lld/s ETA ", ctl_int(m, jsonr_get(m, job, "speed")));
    if (jsonr_int(m, jsonr_get(m, job, "eta"), &eta) == 0)
        printf("%llds", eta);
    else
        putchar('-');
}

static void print_event(ctl_t *c, const jsonr_t *m, uint32_t params)
{
    uint32_t job = jsonr_get(m, params, "job");
    uint32_t err = jsonr_get(m, job, "error");
    long long http;
    char b1[32], b2[32], b3[16], b4[4096], b5[64], status[24] = "-";
    if (c->json) {
        ctl_print_json(c, m, params);
    } else {
        if (jsonr_int(m, jsonr_get(m, job, "http_status"), &http) == 0)
            snprintf(status, sizeof(status), "%lld", http);
        printf(
            "%-10s  %-16s  %-9s  %4s  %-18s  %s", shown_field(m, params, "event", b1, sizeof(b1)),
            shown_field(m, job, "id", b2, sizeof(b2)), shown_field(m, job, "state", b3, sizeof(b3)),
            status, err != JSONR_NONE ? shown_field(m, err, "code", b5, sizeof(b5)) : "-",
            shown_field(m, job, "url", b4, sizeof(b4)));
        if (strcmp(b1, "progress") == 0) /* the wire bytes against the total */
            print_progress(m, job);
        fputc('\n', stdout);
    }
    /* Events are for following live, also through a pipe. */
    fflush(stdout);
}

static int watch_loop(ctl_t *c, json_int_t sub)
{
    const jsonr_t *m = &c->rpc.msg;
    for (;;) {
        int rc = ctl_recv(c);
        if (rc != 0)
            return rc == EXIT_SIGNAL ? EXIT_OK : rc;
        if (ctl_str_is(m, jsonr_get(m, 0, "method"), "event")) {
            uint32_t params = jsonr_get(m, 0, "params");
            if (ctl_int(m, jsonr_get(m, params, "subscription")) == sub)
                print_event(c, m, params);
        }
    }
}

/* Subscribes with a copy of params (borrowed) on the open connection and
 * prints events until the connection ends or a signal arrives; *subscribed
 * says whether the subscription was made. */
static int watch_once(ctl_t *c, json_t *params, int *subscribed)
{
    uint32_t result;
    int rc = call(c, "subscribe", json_deep_copy(params), &result);
    *subscribed = rc == 0;
    if (rc != 0)
        return rc;
    return watch_loop(c, ctl_int(&c->rpc.msg, jsonr_get(&c->rpc.msg, result, "subscription")));
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The connection was lost: tries to connect again, with a doubling wait,
 * until deadline (monotonic seconds; seconds is how long that was in all).
 * Returns 0 once connected, EXIT_OK when interrupted, or EXIT_UNREACHABLE
 * when the time is up. */
static int watch_reconnect(ctl_t *c, double deadline, long seconds)
{
    long wait_ms = WATCH_BACKOFF_FIRST_MS;
    int last = 0;

    if (c->connected) {
        rpc_close(&c->rpc);
        c->connected = 0;
    }
    fprintf(stderr,
            "fetchctl watch: connection to fetchd lost; reconnecting to %s for up to %ld s\n",
            c->socket, seconds);
    while (!rpc_interrupted() && now_s() < deadline) {
        struct timespec ts = {wait_ms / 1000, (wait_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL); /* a signal cuts it short; the loop then ends */
        if (rpc_interrupted())
            break;
        last = rpc_connect(&c->rpc, c->socket);
        if (last == 0) {
            c->connected = 1;
            fprintf(stderr, "fetchctl watch: reconnected to fetchd at %s\n", c->socket);
            return 0;
        }
        wait_ms = wait_ms * 2 > WATCH_BACKOFF_MAX_MS ? WATCH_BACKOFF_MAX_MS : wait_ms * 2;
    }
    if (rpc_interrupted())
        return EXIT_OK;
    fprintf(stderr, "fetchctl watch: gave up after %ld s: cannot connect to fetchd at %s: %s\n",
            seconds, c->socket, last ? strerror(-last) : "no attempt");
    return EXIT_UNREACHABLE;
}

static int cmd_watch(ctl_t *c, int argc, char **argv)
{
    static const struct option extra[] = {{"events", required_argument, NULL, 'e'},
                                          {"reconnect-for", required_argument, NULL, 'r'},
                                          {0}};
    watch_opts_t o = {NULL, 600};
    json_t *params, *ids;
    double deadline = now_s() + 600;
    int rc = simple_options(c, argc, argv, watch_help, extra, watch_option, &o, "s:h");
    if (rc >= 0 || (params = json_object()) == NULL) {
        json_decref(o.events);
        return rc >= 0 ? rc : EXIT_SERVER;
    }
    if (o.events != NULL)
        json_object_set_new(params, "events", o.events);
    if (optind < argc) {
        ids = json_array();
        for (int i = optind; i < argc; i++)
            json_array_append_new(ids, json_string(argv[i]));
        json_object_set_new(params, "ids", ids);
    }
    deadline = now_s() + (double)o.reconnect_for;
    rc = ctl_connect(c);
    /* Bounded: the time to get a subscription back runs from the moment
     * the last one was lost, whatever happens in between. */
    while (rc == 0) {
        int subscribed;
        rc = watch_once(c, params, &subscribed);
        if (rc == EXIT_OK || rpc_interrupted() || o.reconnect_for == 0)
            break;
        if (subscribed)
            deadline = now_s() + (double)o.reconnect_for;
        rc = watch_reconnect(c, deadline, o.reconnect_for);
    }
    json_decref(params);
    return rc;
}

/* ---- version -------------------------------------------------------------------- */

static const char version_help[] = "Usage: fetchctl version [--json]\n"
                                   "Show the versions of fetchctl and of the fetchd it talks "
                                   "to, and the protocol version.\n";

static int cmd_version(ctl_t *c, int argc, char **argv)
{
    const jsonr_t *m;
    uint32_t result;
    char b1[64], b2[64];
    int rc = simple_options(c, argc, argv, version_help, NULL, NULL, NULL, "s:h");
    if (rc >= 0)
        return rc;
    if (!c->json) {
        printf("fetchctl %s\n", FETCHD_VERSION);
        fflush(stdout);
    }
    if ((rc = ctl_connect(c)) != 0 || (rc = call(c, "version", NULL, &result)) != 0)
        return rc;
    m = &c->rpc.msg;
    if (c->json)
        printf("{\"fetchctl\":\"%s\",\"fetchd\":\"%s\",\"protocol\":%lld}\n", FETCHD_VERSION,
               shown_field(m, result, "version", b1, sizeof(b1)),
               ctl_int(m, jsonr_get(m, result, "protocol")));
    else
        printf("fetchd %s (protocol %lld)\n", shown_field(m, result, "version", b2, sizeof(b2)),
               ctl_int(m, jsonr_get(m, result, "protocol")));
    return EXIT_OK;
}

/* ---- main ----------------------------------------------------------------------- */

static int cmd_status(ctl_t *c, int argc, char **argv)
{
    return cmd_by_id(c, argc, argv, "status", status_help);
}

static int cmd_cancel(ctl_t *c, int argc, char **argv)
{
    return cmd_by_id(c, argc, argv, "cancel", cancel_help);
}

static int cmd_pause(ctl_t *c, int argc, char **argv)
{
    return cmd_by_id(c, argc, argv, "pause", pause_help);
}

static int cmd_resume(ctl_t *c, int argc, char **argv)
{
    return cmd_by_id(c, argc, argv, "resume", resume_help);
}

static const struct {
    const char *name;
    int (*fn)(ctl_t *c, int argc, char **argv);
} commands[] = {
    {"submit", cmd_submit}, {"status", cmd_status}, {"wait", cmd_wait},   {"cancel", cmd_cancel},
    {"list", cmd_list},     {"stats", cmd_stats},   {"watch", cmd_watch}, {"version", cmd_version},
    {"pause", cmd_pause},   {"resume", cmd_resume}, {"set", cmd_set},
};

static void on_signal(int sig)
{
    (void)sig;
    rpc_interrupt();
}

static void setup_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    /* No SA_RESTART: poll() must return so the command can tidy up. */
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    /* Writes to a closed socket or pipe fail with EPIPE instead. */
    signal(SIGPIPE, SIG_IGN);
}

/* Parses the global options before the command; returns the index of the
 * command in argv, or -1 with *rc set. */
static int global_options(ctl_t *c, int argc, char **argv, int *rc)
{
    static const struct option opts[] = {{"socket", required_argument, NULL, CTL_OPT_SOCKET},
                                         {"json", no_argument, NULL, CTL_OPT_JSON},
                                         {"help", no_argument, NULL, CTL_OPT_HELP},
                                         {0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "+s:h", opts, NULL)) != -1) {
        if (opt == CTL_OPT_HELP) {
            fputs(usage_text, stdout);
            *rc = EXIT_OK;
            return -1;
        }
        if (!ctl_global_option(c, opt, optarg)) {
            *rc = ctl_usage_error(NULL);
            return -1;
        }
    }
    if (optind >= argc) {
        fputs(usage_text, stderr);
        *rc = EXIT_USAGE;
        return -1;
    }
    return optind;
}

int main(int argc, char **argv)
{
    ctl_t c;
    char name[64];
    int rc = EXIT_USAGE, first;
    size_t i;

    memset(&c, 0, sizeof(c));
    c.progress = isatty(STDOUT_FILENO) && isatty(STDERR_FILENO);
    setup_signals();
    first = global_options(&c, argc, argv, &rc);
    if (first < 0)
        return rc;
    for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(argv[first], commands[i].name) == 0)
            break;
    if (i == sizeof(commands) / sizeof(commands[0])) {
        fprintf(stderr, "fetchctl: unknown command '%s'\n", argv[first]);
        return ctl_usage_error(NULL);
    }
    if (c.socket == NULL)
        default_socket(&c);
    /* The command parses the rest; its messages name it ("fetchctl wait"). */
    snprintf(name, sizeof(name), "fetchctl %s", commands[i].name);
    argv[first] = name;
    optind = 0;
    rc = commands[i].fn(&c, argc - first, argv + first);
    if (c.connected)
        rpc_close(&c.rpc);
    jdump_free(&c.dump);
    if (ctl_flush() != 0 && rc == EXIT_OK)
        rc = EXIT_SERVER;
    return rc;
}
