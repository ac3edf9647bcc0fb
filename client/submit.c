/* submit — fetchctl's `submit` command.
 *
 * Jobs come from the command line or, with -i, from a file streamed line by
 * line. They go to fetchd in `submit` calls of up to SUBMIT_BATCH_JOBS specs
 * (and under the daemon's 1 MiB line limit), with up to SUBMIT_DEPTH calls
 * in flight: the next batches are written while the answers to the earlier
 * ones are read, so the daemon never waits for a round trip. Ids are printed
 * in input order whatever order the answers come in. With --wait, one
 * `wait` call per job follows as soon as its id is known.
 *
 * Each call is all or nothing on the daemon's side; a refused batch stops
 * the reading, and the batches accepted before it stay queued (their ids are
 * printed, so they can be cancelled).
 */
#include "fetchctl.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <mbedtls/base64.h>

#define SUBMIT_BATCH_JOBS 1000
#define SUBMIT_DEPTH      4
/* The daemon refuses longer lines; keep a margin for the envelope. */
#define SUBMIT_MAX_LINE (1024 * 1024 - 256)

/* One submit call in flight. */
typedef struct batch {
    json_int_t id;        /* the call's id */
    size_t first, n;      /* its jobs: first (counted from 0 over the whole input) .. + n */
    unsigned long *lines; /* owned: the input line of each job (with -i) */
    char **urls;          /* owned: each job's URL (for --json output), or NULL */
    json_t *ids;          /* owned: the ids answered, once answered */
    int answered;
} batch_t;

/* One job read from the input that is waiting for a place in a batch. */
typedef struct pending {
    char *text; /* owned: the job spec, serialised; NULL when there is none */
    size_t len;
    unsigned long line;
    char *url; /* owned, may be NULL */
} pending_t;

typedef struct submit {
    ctl_t *c;            /* borrowed */
    json_t *defaults;    /* owned: spec fields from the options */
    char *defaults_text; /* owned: the members of defaults, serialised, "" when none */
    const char *input;   /* borrowed: -i FILE, or NULL */
    const char *output;  /* borrowed: -o FILE, or NULL */
    int wait, quiet;
    char **urls; /* borrowed: the command line's URLs */
    size_t nurls, next_url;
    FILE *fp;      /* owned unless it is stdin */
    char *linebuf; /* owned: getline's buffer */
    size_t linecap;
    unsigned long line; /* lines read so far */
    int eof, stop;      /* no more input / stop reading (an error) */
    pending_t pending;
    char *out; /* owned: the batch line being built */
    size_t out_len, out_cap;
    batch_t ring[SUBMIT_DEPTH]; /* calls in flight, oldest at head */
    size_t head, count;
    size_t njobs;    /* jobs placed in batches so far */
    size_t nids;     /* ids received so far */
    char **wait_job; /* owned: for each call id - wait_base, the job a wait is for */
    size_t wait_cap;
    json_int_t wait_base;
    size_t waits_pending, waits_done;
    int rc;
} submit_t;

static const char submit_help[] =
    "Usage: fetchctl submit [OPTIONS] URL...\n"
    "       fetchctl submit [OPTIONS] -i FILE\n"
    "Queue fetch jobs and print one job id per line (with --json one\n"
    "{\"id\":...,\"url\":...} object per line).\n"
    "\n"
    "  -i, --input FILE     one job per line of FILE ('-' = stdin): a URL, or a JSON\n"
    "                       job object (taken as it is); blank lines and lines\n"
    "                       starting with # are skipped; sent in batches of 1000\n"
    "  -q, --quiet          do not print the ids\n"
    "      --wait           after the ids, wait for the jobs and print each as it\n"
    "                       finishes; exit 0 only if every job is done\n"
    "                       (ID STATE HTTP BYTES URL [error]) instead of the ids;\n"
    "                       exit 0 only if every job is done\n"
    "  -o, --output FILE    write the body to FILE (one URL only; relative paths are\n"
    "                       resolved by fetchd inside its --download-dir)\n"
    "  -X, --method METHOD  request method (default GET, or POST with -d)\n"
    "  -H, --header 'Name: value'  add a request header (repeatable)\n"
    "  -d, --data @FILE|STRING     request body: FILE's contents or STRING\n"
    "      --sha256         compute the body's SHA-256\n"
    "      --timeout SEC    total time limit of each job\n"
    "      --retries N      retry a failed attempt up to N times\n"
    "      --max-redirects N  follow at most N redirects\n"
    "      --max-body BYTES   fail a job whose body is larger\n"
    "      --fail           an HTTP status 400-599 fails the job\n"
    "      --insecure       do not verify TLS certificates\n"
    "      --compressed     ask for gzip, deflate, br or zstd and store the decoded\n"
    "                       body (--no-compressed: never, whatever fetchd's default)\n"
    "      --priority N     higher runs first (-1000..1000)\n"
    "      --limit-rate RATE  read the body at most RATE bytes/s (100K, 1M, 2G: powers\n"
    "                       of 1024, as curl)\n"
    "      --rate N[/s|/m|/h]  start requests to the job's host at most N per second\n"
    "                       (minute, hour); fetchd's host limits still apply\n"
    "      --delay SEC      wait SEC since the last request start to the host\n"
    "      --proxy URL      fetch through this proxy: http://[user:pass@]host[:port],\n"
    "                       socks5://... or socks5h://... (port 1080 by default);\n"
    "                       \"\" fetches directly, whatever fetchd's configuration\n"
    "      --noproxy LIST   hosts to fetch directly (comma-separated: host suffixes,\n"
    "                       IP addresses, CIDR networks, or *); replaces fetchd's list\n"
    "  -C, --continue       resumable -o: keep a failed job's partial file, and resume\n"
    "                       one left by an earlier job (Range + If-Range)\n"
    "      --overwrite POLICY  an existing -o file: replace (a 2xx replaces it), never\n"
    "                       (the job fails with 'exists'), newer (If-Modified-Since)\n"
    "      --mkdirs         create -o's missing directories inside the download dir\n"
    "The options apply to the URLs of the command line and to the URL lines of\n"
    "-i FILE, not to its JSON lines. fetchd checks every job; an invalid one is\n"
    "reported as 'job N: FIELD: MESSAGE' (N counts from 0) and nothing of its\n"
    "batch is queued (exit 4).\n";

/* ---- options -------------------------------------------------------------------- */

enum {
    OPT_WAIT = 2000,
    OPT_SHA256,
    OPT_TIMEOUT,
    OPT_RETRIES,
    OPT_MAX_REDIRECTS,
    OPT_MAX_BODY,
    OPT_FAIL,
    OPT_INSECURE,
    OPT_PRIORITY,
    OPT_COMPRESSED,
    OPT_NO_COMPRESSED,
    OPT_LIMIT_RATE,
    OPT_RATE,
    OPT_DELAY,
    OPT_PROXY,
    OPT_NOPROXY,
    OPT_OVERWRITE,
    OPT_MKDIRS
};

static const struct option submit_opts[] = {
    {"socket", required_argument, NULL, CTL_OPT_SOCKET},
    {"json", no_argument, NULL, CTL_OPT_JSON},
    {"help", no_argument, NULL, CTL_OPT_HELP},
    {"input", required_argument, NULL, 'i'},
    {"quiet", no_argument, NULL, 'q'},
    {"output", required_argument, NULL, 'o'},
    {"method", required_argument, NULL, 'X'},
    {"header", required_argument, NULL, 'H'},
    {"data", required_argument, NULL, 'd'},
    {"wait", no_argument, NULL, OPT_WAIT},
    {"sha256", no_argument, NULL, OPT_SHA256},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"retries", required_argument, NULL, OPT_RETRIES},
    {"max-redirects", required_argument, NULL, OPT_MAX_REDIRECTS},
    {"max-body", required_argument, NULL, OPT_MAX_BODY},
    {"fail", no_argument, NULL, OPT_FAIL},
    {"insecure", no_argument, NULL, OPT_INSECURE},
    {"compressed", no_argument, NULL, OPT_COMPRESSED},
    {"no-compressed", no_argument, NULL, OPT_NO_COMPRESSED},
    {"priority", required_argument, NULL, OPT_PRIORITY},
    {"limit-rate", required_argument, NULL, OPT_LIMIT_RATE},
    {"rate", required_argument, NULL, OPT_RATE},
    {"delay", required_argument, NULL, OPT_DELAY},
    {"proxy", required_argument, NULL, OPT_PROXY},
    {"noproxy", required_argument, NULL, OPT_NOPROXY},
    {"continue", no_argument, NULL, 'C'},
    {"overwrite", required_argument, NULL, OPT_OVERWRITE},
    {"mkdirs", no_argument, NULL, OPT_MKDIRS},
    {0},
};

/* An integer option; range checks are the daemon's (it names the field). */
static int opt_integer(json_t *defaults, const char *field, const char *opt, const char *arg)
{
    char *end;
    long long v;
    errno = 0;
    v = strtoll(arg, &end, 10);
    if (errno != 0 || end == arg || *end != '\0') {
        fprintf(stderr, "fetchctl submit: %s: an integer is required, not '%s'\n", opt, arg);
        return -1;
    }
    return json_object_set_new(defaults, field, json_integer(v));
}

static int opt_seconds(json_t *defaults, const char *arg)
{
    char *end;
    double v;
    errno = 0;
    v = strtod(arg, &end);
    if (errno != 0 || end == arg || *end != '\0' || !(v > 0)) {
        fprintf(stderr, "fetchctl submit: --timeout: a positive number of seconds, not '%s'\n",
                arg);
        return -1;
    }
    return json_object_set_new(defaults, "timeout", json_real(v));
}

/* --limit-rate: bytes/s with an optional K, M or G (powers of 1024, as curl). */
static int opt_limit_rate(json_t *defaults, const char *arg)
{
    static const char units[] = "kKmMgG";
    const char *u;
    char *end;
    double v;
    errno = 0;
    v = strtod(arg, &end);
    if (errno == 0 && end != arg && *end != '\0' && (u = strchr(units, *end)) != NULL) {
        for (long k = 0; k <= (u - units) / 2; k++)
            v *= 1024;
        end++;
    }
    if (errno != 0 || end == arg || *end != '\0' || !(v >= 1) || v > 1e15) {
        fprintf(stderr,
                "fetchctl submit: --limit-rate: bytes per second (like 100K or 1M), not '%s'\n",
                arg);
        return -1;
    }
    return json_object_set_new(defaults, "limit_rate", json_integer((json_int_t)v));
}

/* --rate: N requests per second, or N/s, N/m, N/h as curl's --rate. */
static int opt_rate(json_t *defaults, const char *arg)
{
    char *end;
    double v;
    errno = 0;
    v = strtod(arg, &end);
    if (errno == 0 && end != arg && *end == '/') {
        double per = end[1] == 's' ? 1 : end[1] == 'm' ? 60 : end[1] == 'h' ? 3600 : 0;
        if (per > 0 && end[2] == '\0') {
            v /= per;
            end += 2;
        }
    }
    if (errno != 0 || end == arg || *end != '\0' || !(v > 0)) {
        fprintf(stderr, "fetchctl submit: --rate: N, N/s, N/m or N/h, not '%s'\n", arg);
        return -1;
    }
    return json_object_set_new(defaults, "rate", json_real(v));
}

static int opt_delay(json_t *defaults, const char *arg)
{
    char *end;
    double v;
    errno = 0;
    v = strtod(arg, &end);
    if (errno != 0 || end == arg || *end != '\0' || !(v >= 0)) {
        fprintf(stderr, "fetchctl submit: --delay: a number of seconds, not '%s'\n", arg);
        return -1;
    }
    return json_object_set_new(defaults, "delay", json_real(v));
}

/* Reads all of path; returns a malloc'ed buffer (n bytes) or NULL. */
static char *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    char *data = NULL, *p;
    size_t cap = 0, got;

    *n = 0;
    if (f == NULL)
        return NULL;
    do {
        if (*n == cap) {
            cap = cap ? cap * 2 : 65536;
            if ((p = realloc(data, cap)) == NULL)
                break;
            data = p;
        }
        got = fread(data + *n, 1, cap - *n, f);
        *n += got;
    } while (got > 0);
    if (ferror(f) || *n == cap) {
        free(data);
        data = NULL;
    }
    fclose(f);
    return data;
}

/* The body as "body" when it is text JSON can carry (UTF-8 without NUL),
 * else as "body_base64". */
static int set_body(json_t *defaults, const char *data, size_t n)
{
    json_t *text = memchr(data, '\0', n) == NULL ? json_stringn(data, n) : NULL;
    unsigned char *b64;
    size_t cap = (n + 2) / 3 * 4 + 1, olen = 0;
    int rc;

    if (text != NULL)
        return json_object_set_new(defaults, "body", text);
    b64 = malloc(cap);
    if (b64 == NULL ||
        mbedtls_base64_encode(b64, cap, &olen, (const unsigned char *)data, n) != 0) {
        free(b64);
        return -1;
    }
    rc = json_object_set_new(defaults, "body_base64", json_stringn((char *)b64, olen));
    free(b64);
    return rc;
}

static int opt_data(json_t *defaults, const char *arg)
{
    size_t n;
    char *data;
    int rc;
    if (arg[0] != '@')
        return set_body(defaults, arg, strlen(arg));
    data = read_file(arg + 1, &n);
    if (data == NULL) {
        fprintf(stderr, "fetchctl submit: -d: cannot read %s: %s\n", arg + 1, strerror(errno));
        return -1;
    }
    rc = set_body(defaults, data, n);
    free(data);
    return rc;
}

static int opt_header(json_t *defaults, const char *arg)
{
    json_t *headers = json_object_get(defaults, "headers");
    if (headers == NULL) {
        headers = json_array();
        if (json_object_set_new(defaults, "headers", headers) != 0)
            return -1;
    }
    return json_array_append_new(headers, json_string(arg));
}

/* One option of submit's own; 0 or -1 (a usage error, already reported). */
static int submit_option(submit_t *s, int opt, const char *arg)
{
    json_t *d = s->defaults;
    switch (opt) {
    case 'i':
        s->input = arg;
        return 0;
    case 'q':
        s->quiet = 1;
        return 0;
    case 'o':
        s->output = arg;
        return 0;
    case OPT_WAIT:
        s->wait = 1;
        return 0;
    case 'X':
        return json_object_set_new(d, "method", json_string(arg));
    case 'H':
        return opt_header(d, arg);
    case 'd':
        return opt_data(d, arg);
    case OPT_SHA256:
        return json_object_set_new(d, "sha256", json_true());
    case OPT_TIMEOUT:
        return opt_seconds(d, arg);
    case OPT_RETRIES:
        return opt_integer(d, "retries", "--retries", arg);
    case OPT_MAX_REDIRECTS:
        return opt_integer(d, "max_redirects", "--max-redirects", arg);
    case OPT_MAX_BODY:
        return opt_integer(d, "max_body", "--max-body", arg);
    case OPT_FAIL:
        return json_object_set_new(d, "fail_on_http_error", json_true());
    case OPT_INSECURE:
        return json_object_set_new(d, "insecure", json_true());
    case OPT_COMPRESSED:
        return json_object_set_new(d, "decode", json_true());
    case OPT_NO_COMPRESSED:
        return json_object_set_new(d, "decode", json_false());
    case OPT_PRIORITY:
        return opt_integer(d, "priority", "--priority", arg);
    case OPT_LIMIT_RATE:
        return opt_limit_rate(d, arg);
    case OPT_RATE:
        return opt_rate(d, arg);
    case OPT_DELAY:
        return opt_delay(d, arg);
    case OPT_PROXY: /* checked by fetchd, which never echoes the credentials */
        return json_object_set_new(d, "proxy", json_string(arg));
    case OPT_NOPROXY:
        return json_object_set_new(d, "no_proxy", json_string(arg));
    case 'C': /* the file options: fetchd checks the values and names the field */
        return json_object_set_new(d, "resume", json_true());
    case OPT_OVERWRITE:
        return json_object_set_new(d, "overwrite", json_string(arg));
    case OPT_MKDIRS:
        return json_object_set_new(d, "mkdirs", json_true());
    default:
        return -1;
    }
}

/* Checks the combination of options and arguments; 0 or EXIT_USAGE. */
static int check_usage(submit_t *s)
{
    const char *why = NULL;
    if (s->input != NULL && s->nurls > 0)
        why = "give URLs or -i FILE, not both";
    else if (s->input == NULL && s->nurls == 0)
        why = "at least one URL (or -i FILE) is required";
    else if (s->output != NULL && (s->input != NULL || s->nurls != 1))
        why = "-o/--output needs exactly one URL (use JSON lines with -i)";
    else if (s->quiet && s->wait)
        why = "--quiet and --wait exclude each other";
    if (why == NULL)
        return 0;
    fprintf(stderr, "fetchctl submit: %s\n", why);
    return ctl_usage_error("submit");
}

static int parse_options(submit_t *s, int argc, char **argv)
{
    int opt;
    while ((opt = getopt_long(argc, argv, "s:hi:qo:X:H:d:C", submit_opts, NULL)) != -1) {
        if (opt == CTL_OPT_HELP) {
            fputs(submit_help, stdout);
            return EXIT_OK;
        }
        if (ctl_global_option(s->c, opt, optarg))
            continue;
        if (opt == '?' || submit_option(s, opt, optarg) != 0)
            return ctl_usage_error("submit");
    }
    s->urls = argv + optind;
    s->nurls = (size_t)(argc - optind);
    if (check_usage(s) != 0)
        return EXIT_USAGE;
    /* -d without -X means POST, as with curl. */
    if (json_object_get(s->defaults, "method") == NULL &&
        (json_object_get(s->defaults, "body") || json_object_get(s->defaults, "body_base64")))
        json_object_set_new(s->defaults, "method", json_string("POST"));
    if (s->output != NULL)
        json_object_set_new(s->defaults, "output", json_string(s->output));
    return -1;
}

/* ---- reading jobs --------------------------------------------------------------- */

/* The job spec for a URL: {"url": URL, ...defaults}. */
static int url_spec(submit_t *s, const char *url, size_t n, pending_t *p)
{
    json_t *js = json_stringn(url, n);
    char *quoted = js ? json_dumps(js, JSON_ENCODE_ANY) : NULL;
    size_t qlen = quoted ? strlen(quoted) : 0, dlen = strlen(s->defaults_text);

    json_decref(js);
    if (quoted == NULL)
        return -1;
    p->text = malloc(qlen + dlen + 16);
    if (p->text != NULL) {
        p->len =
            (size_t)sprintf(p->text, "{\"url\":%s%s%s}", quoted, dlen ? "," : "", s->defaults_text);
        if (s->c->json)
            p->url = strndup(url, n);
    }
    free(quoted);
    return p->text != NULL ? 0 : -1;
}

/* A JSON job line, checked to be one object and then sent as it is. */
static int json_spec(submit_t *s, const char *text, size_t n, pending_t *p)
{
    json_error_t err;
    json_t *obj = json_loadb(text, n, 0, &err);
    if (obj == NULL || !json_is_object(obj)) {
        fprintf(stderr, "fetchctl: job %zu: %s%s\nfetchctl: (%s line %lu)\n", s->njobs,
                obj ? "not a JSON object" : "invalid JSON: ", obj ? "" : err.text, s->input,
                s->line);
        json_decref(obj);
        return EXIT_SERVER;
    }
    if (s->c->json && json_is_string(json_object_get(obj, "url")))
        p->url = strdup(json_string_value(json_object_get(obj, "url")));
    json_decref(obj);
    p->text = strndup(text, n);
    p->len = n;
    return p->text != NULL ? 0 : EXIT_SERVER;
}

/* The next input line with its blanks trimmed; NULL at the end. */
static char *next_line(submit_t *s, size_t *n)
{
    for (;;) {
        ssize_t got = getline(&s->linebuf, &s->linecap, s->fp);
        char *p;
        if (got < 0)
            return NULL;
        s->line++;
        p = s->linebuf;
        while (got > 0 && strchr(" \t\r\n", p[got - 1]) != NULL)
            got--;
        while (got > 0 && (*p == ' ' || *p == '\t')) {
            p++;
            got--;
        }
        if (got > 0 && *p != '#') {
            *n = (size_t)got;
            return p;
        }
    }
}

/* Reads the next job into s->pending: 1, 0 at the end, or an exit code
 * (negated) after reporting a bad line. */
static int read_job(submit_t *s)
{
    pending_t *p = &s->pending;
    const char *text;
    size_t n = 0;
    int rc;

    if (s->fp == NULL) {
        if (s->next_url == s->nurls)
            return 0;
        text = s->urls[s->next_url++];
        n = strlen(text);
    } else if ((text = next_line(s, &n)) == NULL) {
        if (ferror(s->fp)) {
            fprintf(stderr, "fetchctl submit: reading %s: %s\n", s->input, strerror(errno));
            return -EXIT_USAGE;
        }
        return 0;
    }
    p->line = s->line;
    if (s->fp != NULL && text[0] == '{')
        return (rc = json_spec(s, text, n, p)) == 0 ? 1 : -rc;
    if (url_spec(s, text, n, p) == 0)
        return 1;
    fprintf(stderr, "fetchctl: job %zu: url: not valid UTF-8\n", s->njobs);
    if (s->fp != NULL)
        fprintf(stderr, "fetchctl: (%s line %lu)\n", s->input, s->line);
    return -EXIT_SERVER;
}

/* ---- batches -------------------------------------------------------------------- */

static int out_append(submit_t *s, const char *p, size_t n)
{
    if (s->out_len + n > s->out_cap) {
        size_t cap = s->out_cap ? s->out_cap : 65536;
        char *np;
        while (cap < s->out_len + n)
            cap *= 2;
        if ((np = realloc(s->out, cap)) == NULL)
            return -1;
        s->out = np;
        s->out_cap = cap;
    }
    memcpy(s->out + s->out_len, p, n);
    s->out_len += n;
    return 0;
}

static void batch_free(batch_t *b)
{
    for (size_t i = 0; b->urls != NULL && i < b->n; i++)
        free(b->urls[i]);
    free(b->urls);
    free(b->lines);
    json_decref(b->ids);
    memset(b, 0, sizeof(*b));
}

/* Moves the pending job into batch b. */
static int batch_take(submit_t *s, batch_t *b)
{
    pending_t *p = &s->pending;
    if ((b->n > 0 && out_append(s, ",", 1) != 0) || out_append(s, p->text, p->len) != 0)
        return -1;
    b->lines[b->n] = p->line;
    if (b->urls != NULL)
        b->urls[b->n] = p->url;
    else
        free(p->url);
    b->n++;
    free(p->text);
    memset(p, 0, sizeof(*p));
    return 0;
}

/* Fills b with the jobs that fit. Returns 0, or an exit code. */
static int batch_fill(submit_t *s, batch_t *b)
{
    static const char tail[] = "]}}";
    int rc;
    while (b->n < SUBMIT_BATCH_JOBS) {
        if (s->pending.text == NULL && (rc = read_job(s)) <= 0) {
            s->eof = 1;
            return -rc;
        }
        if (s->out_len + 1 + s->pending.len + sizeof(tail) > SUBMIT_MAX_LINE) {
            if (b->n > 0)
                return 0; /* the next batch takes it */
            fprintf(stderr, "fetchctl: job %zu: larger than a request line may be (1 MiB)\n",
                    s->njobs);
            return EXIT_SERVER;
        }
        if (batch_take(s, b) != 0)
            return EXIT_SERVER;
        s->njobs++;
    }
    return 0;
}

/* Reads up to a batch of jobs and queues its submit call; returns 0 (b->n
 * is 0 when the input had no more), or an exit code. */
static int batch_send(submit_t *s, batch_t *b)
{
    char head[128];
    int rc;

    memset(b, 0, sizeof(*b));
    b->first = s->njobs;
    b->id = rpc_reserve_id(&s->c->rpc);
    b->lines = calloc(SUBMIT_BATCH_JOBS, sizeof(*b->lines));
    if (s->c->json)
        b->urls = calloc(SUBMIT_BATCH_JOBS, sizeof(*b->urls));
    if (b->lines == NULL || (s->c->json && b->urls == NULL))
        return EXIT_SERVER;
    s->out_len = 0;
    snprintf(head, sizeof(head),
             "{\"jsonrpc\":\"2.0\",\"id\":%" JSON_INTEGER_FORMAT
             ",\"method\":\"submit\",\"params\":{\"jobs\":[",
             b->id);
    if (out_append(s, head, strlen(head)) != 0)
        return EXIT_SERVER;
    rc = batch_fill(s, b);
    if (rc != 0 || b->n == 0)
        return rc;
    if (out_append(s, "]}}", 3) != 0 || rpc_send_raw(&s->c->rpc, s->out, s->out_len) != 0)
        return EXIT_SERVER;
    return 0;
}

/* Sends batches until SUBMIT_DEPTH are in flight or the input ends. */
static int fill_pipeline(submit_t *s)
{
    while (!s->eof && !s->stop && s->count < SUBMIT_DEPTH) {
        batch_t *b = &s->ring[(s->head + s->count) % SUBMIT_DEPTH];
        int rc = batch_send(s, b);
        /* A batch with a bad line in it is not sent, like one fetchd refuses. */
        if (b->n > 0 && rc == 0)
            s->count++;
        else
            batch_free(b);
        if (rc != 0) {
            s->stop = 1;
            return rc;
        }
    }
    return 0;
}

/* ---- answers -------------------------------------------------------------------- */

/* Queues a wait call for the job and remembers which job it is for. */
static int queue_wait(submit_t *s, const char *id)
{
    json_int_t call = rpc_request(&s->c->rpc, "wait", json_pack("{s:s}", "id", id));
    size_t slot = (size_t)(call - s->wait_base);
    if (call < 0)
        return -1;
    if (slot >= s->wait_cap) {
        size_t cap = s->wait_cap ? s->wait_cap * 2 : 4096;
        char **p;
        while (cap <= slot)
            cap *= 2;
        if ((p = realloc(s->wait_job, cap * sizeof(*p))) == NULL)
            return -1;
        memset(p + s->wait_cap, 0, (cap - s->wait_cap) * sizeof(*p));
        s->wait_job = p;
        s->wait_cap = cap;
    }
    s->wait_job[slot] = strdup(id);
    s->waits_pending++;
    return s->wait_job[slot] != NULL ? 0 : -1;
}

/* Prints (or waits on) the ids of an answered batch. */
static int batch_output(submit_t *s, batch_t *b)
{
    size_t i;
    json_t *id;
    json_array_foreach (b->ids, i, id) {
        const char *text = json_string_value(id);
        if (text == NULL)
            continue;
        s->nids++;
        /* The ids come first, also with --wait: a script has them even if
         * the wait is interrupted. */
        if (s->c->json && !s->quiet) {
            json_t *o = json_pack("{s:s, s:s?}", "id", text, "url", b->urls[i]);
            json_dumpf(o, stdout, JSON_COMPACT);
            fputc('\n', stdout);
            json_decref(o);
        } else if (!s->quiet) {
            puts(text);
        }
        if (s->wait && queue_wait(s, text) != 0)
            return EXIT_SERVER;
    }
    if (s->wait)
        ctl_progress(s->c, s->waits_done, s->nids);
    return 0;
}

/* Reports a refused batch. */
static void batch_error(submit_t *s, batch_t *b, json_t *error)
{
    json_t *data = json_object_get(error, "data");
    json_t *index = json_object_get(data, "index");
    const char *msg = json_string_value(json_object_get(data, "message"));

    ctl_progress_clear(s->c);
    if (json_is_integer(index) && json_integer_value(index) >= 0 &&
        (size_t)json_integer_value(index) < b->n && msg != NULL) {
        size_t k = (size_t)json_integer_value(index);
        fprintf(stderr, "fetchctl: job %zu: %s\n", b->first + k, msg);
        if (s->input != NULL)
            fprintf(stderr, "fetchctl: (%s line %lu)\n", s->input, b->lines[k]);
    } else {
        ctl_print_error("submit", error);
    }
}

static void on_submit_answer(submit_t *s, batch_t *b, json_t *resp)
{
    json_t *result = json_object_get(resp, "result");
    b->answered = 1;
    if (result != NULL) {
        b->ids = json_incref(json_object_get(result, "ids"));
        return;
    }
    if (!s->stop)
        batch_error(s, b, json_object_get(resp, "error"));
    s->stop = 1;
    s->rc = EXIT_SERVER;
}

static void on_wait_answer(submit_t *s, size_t slot, json_t *resp)
{
    json_t *job = json_object_get(resp, "result");
    int rc;
    s->waits_pending--;
    s->waits_done++;
    if (job != NULL) {
        ctl_print_job(s->c, job);
        rc = ctl_job_done(job) ? EXIT_OK : EXIT_JOB;
    } else {
        ctl_progress_clear(s->c);
        rc = ctl_print_error(s->wait_job[slot], json_object_get(resp, "error"));
    }
    free(s->wait_job[slot]);
    s->wait_job[slot] = NULL;
    if (rc > s->rc)
        s->rc = rc;
    ctl_progress(s->c, s->waits_done, s->nids);
}

static void on_response(submit_t *s, json_t *resp)
{
    json_int_t id = ctl_resp_id(resp);
    size_t slot = (size_t)(id - s->wait_base);
    for (size_t i = 0; i < s->count; i++) {
        batch_t *b = &s->ring[(s->head + i) % SUBMIT_DEPTH];
        if (b->id == id && !b->answered) {
            on_submit_answer(s, b, resp);
            return;
        }
    }
    if (id >= s->wait_base && slot < s->wait_cap && s->wait_job[slot] != NULL)
        on_wait_answer(s, slot, resp);
}

/* Retires answered batches from the head, in input order. */
static int retire(submit_t *s)
{
    while (s->count > 0 && s->ring[s->head].answered) {
        batch_t *b = &s->ring[s->head];
        int rc = b->ids != NULL ? batch_output(s, b) : 0;
        batch_free(b);
        s->head = (s->head + 1) % SUBMIT_DEPTH;
        s->count--;
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int run(submit_t *s)
{
    int rc;
    for (;;) {
        json_t *msg;
        if ((rc = fill_pipeline(s)) != 0)
            s->rc = rc;
        if (s->count == 0 && (s->waits_pending == 0 || s->stop))
            break;
        if ((rc = ctl_recv(s->c, &msg)) != 0)
            return rc;
        for (size_t i = 0; i < ctl_msg_count(msg); i++)
            on_response(s, ctl_msg_item(msg, i));
        json_decref(msg);
        if ((rc = retire(s)) != 0)
            return rc;
    }
    ctl_progress_clear(s->c);
    if (s->stop && s->nids > 0)
        fprintf(stderr, "fetchctl: %zu jobs of other batches were queued\n", s->nids);
    return s->rc;
}

/* ---- the command ---------------------------------------------------------------- */

static int open_input(submit_t *s)
{
    if (s->input == NULL)
        return 0;
    s->fp = strcmp(s->input, "-") == 0 ? stdin : fopen(s->input, "r");
    if (s->fp != NULL)
        return 0;
    fprintf(stderr, "fetchctl submit: cannot open %s: %s\n", s->input, strerror(errno));
    return EXIT_USAGE;
}

static void submit_dispose(submit_t *s)
{
    while (s->count > 0) {
        batch_free(&s->ring[s->head]);
        s->head = (s->head + 1) % SUBMIT_DEPTH;
        s->count--;
    }
    for (size_t i = 0; i < s->wait_cap; i++)
        free(s->wait_job[i]);
    free(s->wait_job);
    free(s->pending.text);
    free(s->pending.url);
    free(s->out);
    free(s->linebuf);
    free(s->defaults_text);
    json_decref(s->defaults);
    if (s->fp != NULL && s->fp != stdin)
        fclose(s->fp);
}

/* The members of the defaults object as text to splice after "url". */
static int defaults_text(submit_t *s)
{
    char *text = json_dumps(s->defaults, JSON_COMPACT);
    size_t n;
    if (text == NULL)
        return -1;
    n = strlen(text);
    /* "{...}" -> "...": drop the braces. */
    memmove(text, text + 1, n - 2);
    text[n - 2] = '\0';
    s->defaults_text = text;
    return 0;
}

int cmd_submit(ctl_t *c, int argc, char **argv)
{
    submit_t s;
    int rc;

    memset(&s, 0, sizeof(s));
    s.c = c;
    s.defaults = json_object();
    rc = s.defaults ? parse_options(&s, argc, argv) : EXIT_SERVER;
    if (rc < 0 && defaults_text(&s) != 0)
        rc = EXIT_SERVER;
    if (rc < 0 && (rc = open_input(&s)) == 0 && (rc = ctl_connect(c)) == 0) {
        /* Wait calls get ids from here on; submits are told apart by the ring. */
        s.wait_base = c->rpc.next_id;
        rc = run(&s);
    }
    submit_dispose(&s);
    return rc;
}
