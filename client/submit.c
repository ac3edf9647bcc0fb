/* submit — fetchctl's `submit` command.
 *
 * Jobs come from the command line or, with -i, from a file streamed line by
 * line. They go to fetchd in `submit` calls of up to SUBMIT_BATCH_JOBS specs
 * (and under the daemon's 1 MiB line limit), with up to SUBMIT_DEPTH calls
 * in flight: the next batches are written while the answers to the earlier
 * ones are read, so the daemon never waits for a round trip. Ids are printed
 * in input order whatever order the answers come in. With --wait, one
 * `wait` call per job follows as soon as its id is known; on a terminal
 * (stderr) a live status line follows the jobs through a subscription to
 * their started and progress events, and a summary ends the run.
 *
 * Each call is all or nothing on the daemon's side; a refused batch stops
 * the reading, and the batches accepted before it stay queued (their ids are
 * printed, so they can be cancelled).
 */
#include "fetchctl.h"

#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <mbedtls/base64.h>

#define SUBMIT_BATCH_JOBS 1000
#define SUBMIT_DEPTH      4
/* fetchd holds at most 10000 open wait calls per client (PROTOCOL.md);
 * the waits of later jobs are sent as earlier ones are answered. */
#define SUBMIT_MAX_WAITS 8192
/* The daemon refuses longer lines; keep a margin for the envelope. */
#define SUBMIT_MAX_LINE (1024 * 1024 - 256)

#define NO_ID SIZE_MAX

/* One submit call in flight. */
typedef struct batch {
    json_int_t id;        /* the call's id */
    size_t first, n;      /* its jobs: first (counted from 0 over the whole input) .. + n */
    unsigned long *lines; /* owned: the input line of each job (with -i) */
    char **urls;          /* owned: each job's URL (for --json output), or NULL */
    char *id_text;        /* owned: the ids answered, each NUL-terminated */
    size_t *id_off;       /* owned: where each starts in id_text; NO_ID for a non-string */
    size_t nid;           /* entries of id_off */
    int has_ids;          /* the answer had "ids" */
    int answered;
} batch_t;

/* The live line: drawn at most 10 times a second, and at least once a
 * second while waiting (10 times while it is off the screen); the aggregate
 * rate is the bytes of the last 3 seconds. */
#define TERM_REDRAW_S  0.1
#define TERM_TICK_MS   1000
#define TERM_HIDDEN_MS 100
#define TERM_RATE_S    3.0
#define TERM_RATE_RING 64
/* At Ctrl-C, more unfinished ids than this go to a file, not the screen. */
#define TERM_HINT_IDS 20

enum { TJ_QUEUED, TJ_RUNNING, TJ_FINISHED };

/* One job of this run, as the live line counts it. */
typedef struct tjob {
    uint64_t key;   /* a hash of its id; 0: a free slot */
    uint64_t bytes; /* body bytes so far */
    int state;      /* TJ_* */
} tjob_t;

/* What --wait shows on a terminal, and the counts of its summary. */
typedef struct term {
    int on;              /* stderr is a terminal: draw the line and the summary */
    json_int_t sub_call; /* the subscribe call */
    json_int_t sub;      /* its subscription; 0 until answered (or when refused) */
    tjob_t *jobs;        /* owned: open addressing over key; cap is a power of two */
    size_t cap, known, running, finished;
    size_t states[3];  /* finished jobs: done, failed, cancelled */
    size_t classes[6]; /* finished jobs by status class: [k] = kxx, [0] = no response */
    json_t *errors;    /* owned: {error code: jobs} */
    uint64_t bytes;    /* body bytes of all jobs so far */
    json_t *one;       /* owned: the latest job object of a run of one job */
    double start, drawn;
    double ring_t[TERM_RATE_RING]; /* (time, bytes) samples for the aggregate rate */
    uint64_t ring_b[TERM_RATE_RING];
    size_t ring_head, ring_n;
} term_t;

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
    int to_stdout;   /* -o -: the body (inline) goes to stdout */
    int remote_name; /* -O: each URL's output file is named after its last segment */
    int include;     /* --include: keep_headers, and show them */
    char **urls;     /* borrowed: the command line's URLs */
    size_t nurls, next_url;
    jsonr_t spec;  /* owned: the reader of -i FILE's JSON lines */
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
    char **later;    /* owned: ids whose wait waits for room, from later_head to later_n */
    size_t later_head, later_n, later_cap;
    size_t waits_open; /* wait calls sent and not answered */
    size_t wait_cap;
    json_int_t wait_base;
    size_t waits_pending, waits_done;
    int rc;
    int cancel_on_interrupt;
    term_t term;
    json_int_t cancel_base; /* the cancel calls after Ctrl-C: ids base .. base + n */
    size_t cancel_n, cancels_pending, cancelled;
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
    "                       finishes (ID STATE HTTP BYTES URL [error]); exit 0 only\n"
    "                       if every job is done. On a terminal, a live status line\n"
    "                       (a bar for one job) and a summary go to stderr. Ctrl-C\n"
    "                       leaves the jobs running and says how to cancel them\n"
    "      --cancel-on-interrupt  with --wait: Ctrl-C cancels the unfinished jobs\n"
    "  -o, --output FILE    write the body to FILE (one URL only; relative paths are\n"
    "                       resolved by fetchd inside its --download-dir)\n"
    "  -o -                 wait and write the body to stdout, byte for byte (fetchd\n"
    "                       returns it inline: up to 1 MiB, else the job fails)\n"
    "  -O, --remote-name    name each output file after its URL's last path segment,\n"
    "                       as it is in the URL (no percent-decoding)\n"
    "      --include        keep the response's header fields (keep_headers) and show\n"
    "                       them: before the body with -o -, under the job with --wait\n"
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
    OPT_CANCEL_ON_INTERRUPT,
    OPT_INCLUDE,
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
    {"cancel-on-interrupt", no_argument, NULL, OPT_CANCEL_ON_INTERRUPT},
    {"remote-name", no_argument, NULL, 'O'},
    {"include", no_argument, NULL, OPT_INCLUDE},
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
    case 'O':
        s->remote_name = 1;
        return 0;
    case OPT_INCLUDE:
        s->include = 1;
        return json_object_set_new(d, "keep_headers", json_true());
    case OPT_WAIT:
        s->wait = 1;
        return 0;
    case OPT_CANCEL_ON_INTERRUPT:
        s->cancel_on_interrupt = 1;
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
    else if (s->cancel_on_interrupt && !s->wait)
        why = "--cancel-on-interrupt goes with --wait";
    else if (s->remote_name && s->output != NULL)
        why = "-O and -o exclude each other";
    else if (s->output != NULL && strcmp(s->output, "-") == 0 && s->c->json)
        why = "-o - writes the body to stdout: it excludes --json";
    if (why == NULL)
        return 0;
    fprintf(stderr, "fetchctl submit: %s\n", why);
    return ctl_usage_error("submit");
}

static int parse_options(submit_t *s, int argc, char **argv)
{
    int opt;
    while ((opt = getopt_long(argc, argv, "s:hi:qo:OX:H:d:C", submit_opts, NULL)) != -1) {
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
    if (s->output != NULL && strcmp(s->output, "-") == 0) {
        /* The body comes back in the job object; only it goes to stdout. */
        s->to_stdout = s->wait = s->quiet = 1;
        json_object_set_new(s->defaults, "output", json_string("inline"));
    } else if (s->output != NULL) {
        json_object_set_new(s->defaults, "output", json_string(s->output));
    }
    return -1;
}

/* ---- reading jobs --------------------------------------------------------------- */

/* -O: the URL's last path segment (query and fragment cut off), as it is
 * in the URL: like curl, no percent-decoding, so the name never holds a '/'
 * that the URL did not. Returns its length (at *name), or 0 when there is
 * none to use: no path, a path ending in '/', "." or "..". */
static size_t last_segment(const char *url, size_t n, const char **name)
{
    const char *p = memchr(url, ':', n), *end = url + n, *seg;
    if (p != NULL && end - p > 2 && p[1] == '/' && p[2] == '/') {
        p = p + 3;
        while (p < end && *p != '/' && *p != '?' && *p != '#')
            p++; /* the authority */
    } else {
        p = url;
    }
    for (seg = p; p < end && *p != '?' && *p != '#'; p++)
        if (*p == '/')
            seg = p + 1;
    *name = seg;
    if (p == seg || (p - seg == 1 && seg[0] == '.') ||
        (p - seg == 2 && seg[0] == '.' && seg[1] == '.'))
        return 0;
    return (size_t)(p - seg);
}

/* The job spec for a URL: {"url": URL, ...defaults}, and with -O its
 * "output"; the strings escaped as jansson would. -1 when the URL is not
 * valid UTF-8 (or memory ran out). */
static int url_spec(submit_t *s, const char *url, size_t n, pending_t *p)
{
    jdump_t *d = &s->c->dump;
    size_t dlen = strlen(s->defaults_text), nl;
    const char *name;

    if (!jdump_utf8_valid(url, n))
        return -1;
    d->len = 0;
    if (jdump_raw(d, "{\"url\":", 7) != 0 || jdump_string(d, url, n) != 0)
        return -1;
    if (s->remote_name) {
        nl = last_segment(url, n, &name);
        if (jdump_raw(d, ",\"output\":", 10) != 0 || jdump_string(d, name, nl) != 0)
            return -1;
    }
    if ((dlen > 0 && (jdump_raw(d, ",", 1) != 0 || jdump_raw(d, s->defaults_text, dlen) != 0)) ||
        jdump_raw(d, "}", 1) != 0)
        return -1;
    if ((p->text = malloc(d->len)) == NULL)
        return -1;
    memcpy(p->text, d->buf, d->len);
    p->len = d->len;
    if (s->c->json)
        p->url = strndup(url, n);
    return 0;
}

/* A JSON job line, checked to be one object and then sent as it is. */
static int json_spec(submit_t *s, const char *text, size_t n, pending_t *p)
{
    json_error_t err;
    json_t *obj = NULL;
    const char *url = NULL;
    size_t ulen = 0;
    /* jsonr accepts exactly what json_loadb() does; jansson reads a line
     * only when jsonr refuses it, to say why in its words. */
    int rc = jsonr_parse(&s->spec, text, n);

    if (rc != 0)
        obj = json_loadb(text, n, 0, &err);
    if ((rc == 0 && jsonr_type(&s->spec, 0) != JSONR_OBJECT) || (rc != 0 && !json_is_object(obj))) {
        fprintf(stderr, "fetchctl: job %zu: %s%s\nfetchctl: (%s line %lu)\n", s->njobs,
                rc == 0 || obj ? "not a JSON object" : "invalid JSON: ",
                rc == 0 || obj ? "" : err.text, s->input, s->line);
        json_decref(obj);
        return EXIT_SERVER;
    }
    if (s->c->json && rc == 0) {
        url = jsonr_str(&s->spec, jsonr_get(&s->spec, 0, "url"), &ulen);
    } else if (s->c->json && json_is_string(json_object_get(obj, "url"))) {
        url = json_string_value(json_object_get(obj, "url"));
        ulen = strlen(url);
    }
    if (url != NULL)
        p->url = strndup(url, ulen);
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
    const char *text, *name;
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
    if (s->remote_name && last_segment(text, n, &name) == 0) {
        fprintf(stderr,
                "fetchctl: job %zu: -O: the URL has no file name at the end of its path"
                " ('%.*s'): use -o FILE\n",
                s->njobs, (int)(n > 200 ? 200 : n), text);
        if (s->fp != NULL)
            fprintf(stderr, "fetchctl: (%s line %lu)\n", s->input, s->line);
        return -EXIT_USAGE;
    }
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
    free(b->id_text);
    free(b->id_off);
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

/* ---- the terminal: the live line and the summary ---------------------------------- */

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* FNV-1a of a job id; never 0, which marks a free slot. */
static uint64_t id_key(const char *id, size_t n)
{
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)id[i]) * 1099511628211ull;
    return h ? h : 1;
}

static tjob_t *tj_slot(tjob_t *jobs, size_t cap, uint64_t key)
{
    size_t i = (size_t)key & (cap - 1);
    while (jobs[i].key != 0 && jobs[i].key != key)
        i = (i + 1) & (cap - 1);
    return &jobs[i];
}

/* The job with this id; with add, a new queued one when it is not there.
 * NULL when it is not (or memory ran out: that job is then not shown). */
static tjob_t *tj_find(term_t *t, const char *id, size_t n, int add)
{
    uint64_t key = id_key(id, n);
    tjob_t *e;

    if (add && (t->known + 1) * 2 > t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 1024;
        tjob_t *jobs = calloc(cap, sizeof(*jobs));
        if (jobs == NULL)
            return NULL;
        for (size_t i = 0; i < t->cap; i++)
            if (t->jobs[i].key != 0)
                *tj_slot(jobs, cap, t->jobs[i].key) = t->jobs[i];
        free(t->jobs);
        t->jobs = jobs;
        t->cap = cap;
    }
    if (t->cap == 0)
        return NULL;
    e = tj_slot(t->jobs, t->cap, key);
    if (e->key == 0 && add) {
        e->key = key;
        t->known++;
    }
    return e->key != 0 ? e : NULL;
}

/* The job's bytes so far (bytes: its "bytes" member) count for it. */
static void tj_bytes(term_t *t, tjob_t *e, const jsonr_t *m, uint32_t bytes)
{
    long long b = ctl_int(m, bytes);
    uint64_t now = b > 0 ? (uint64_t)b : 0;
    t->bytes = t->bytes - e->bytes + now;
    e->bytes = now;
}

/* The ids of an answered submit call join the run, queued. */
static void term_register(submit_t *s, const jsonr_t *m, uint32_t ids)
{
    if (!s->term.on || jsonr_type(m, ids) != JSONR_ARRAY)
        return;
    for (uint32_t id = jsonr_first(m, ids); id != JSONR_NONE; id = jsonr_next(m, id)) {
        size_t n;
        const char *text = ctl_str(m, id, &n);
        if (text != NULL)
            tj_find(&s->term, text, n, 1);
    }
}

/* A started or progress event of the subscription: the job runs. */
static void term_event(submit_t *s, const jsonr_t *m, uint32_t params)
{
    term_t *t = &s->term;
    uint32_t job = jsonr_get(m, params, "job");
    size_t n;
    const char *id = ctl_str(m, jsonr_get(m, job, "id"), &n);
    tjob_t *e;

    if (t->sub == 0 || ctl_int(m, jsonr_get(m, params, "subscription")) != t->sub || id == NULL ||
        (e = tj_find(t, id, n, 0)) == NULL || e->state == TJ_FINISHED)
        return;
    if (e->state == TJ_QUEUED) {
        e->state = TJ_RUNNING;
        t->running++;
    }
    tj_bytes(t, e, m, jsonr_get(m, job, "bytes"));
    if (t->known == 1) {
        /* A run of one job draws its bar from it (a tree: bar_line). */
        json_decref(t->one);
        t->one = jsonr_to_json(m, job);
    }
}

/* Counts a finished job's error code, or "other" for a code that is not
 * one of the daemon's own (only those reach the terminal). */
static void term_error(term_t *t, const char *code, size_t n)
{
    static const char allowed[] = "abcdefghijklmnopqrstuvwxyz0123456789_";
    char buf[128], *key = n < sizeof(buf) ? buf : malloc(n + 1);
    const char *name;

    if (key == NULL)
        return;
    memcpy(key, code, n);
    key[n] = '\0';
    name = strspn(key, allowed) == n ? key : "other";
    if (t->errors != NULL || (t->errors = json_object()) != NULL)
        json_object_set_new(t->errors, name,
                            json_integer(json_integer_value(json_object_get(t->errors, name)) + 1));
    if (key != buf)
        free(key);
}

/* Counts a finished job (a wait's answer) for the line and the summary. */
static void term_finished(submit_t *s, const jsonr_t *m, uint32_t job)
{
    static const char *const states[3] = {"done", "failed", "cancelled"};
    term_t *t = &s->term;
    ctl_job_t j;
    long long http;
    size_t n;
    const char *code, *id;
    tjob_t *e;

    ctl_job_read(m, job, &j);
    http = ctl_int(m, j.http_status);
    for (int k = 0; k < 3; k++)
        if (ctl_str_is(m, j.state, states[k]))
            t->states[k]++;
    t->classes[http >= 100 && http <= 599 ? http / 100 : 0]++;
    if (j.error != JSONR_NONE && (code = ctl_str(m, jsonr_get(m, j.error, "code"), &n)) != NULL)
        term_error(t, code, n);
    t->finished++;
    id = ctl_str(m, j.id, &n);
    e = id != NULL ? tj_find(t, id, n, 0) : NULL;
    if (e == NULL || e->state == TJ_FINISHED)
        return;
    if (e->state == TJ_RUNNING)
        t->running--;
    e->state = TJ_FINISHED;
    tj_bytes(t, e, m, j.bytes);
}

static int term_cols(void)
{
    struct winsize ws;
    if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20)
        return ws.ws_col < 400 ? ws.ws_col : 400;
    return 80;
}

/* "812.4 MiB", powers of 1024 as the --limit-rate option reads them. */
static const char *human(double n, char *buf, size_t len)
{
    static const char *const units[] = {"KiB", "MiB", "GiB", "TiB", "PiB"};
    int u = -1;
    if (n < 1024) {
        snprintf(buf, len, "%.0f B", n);
        return buf;
    }
    while (n >= 1024 && u < 4) {
        n /= 1024;
        u++;
    }
    snprintf(buf, len, "%.1f %s", n, units[u]);
    return buf;
}

/* "27s", "4m05s", "2h07m". */
static const char *duration(double sec, char *buf, size_t len)
{
    unsigned long s = sec > 0 ? (unsigned long)(sec + 0.5) : 0;
    if (s < 60)
        snprintf(buf, len, "%lus", s);
    else if (s < 3600)
        snprintf(buf, len, "%lum%02lus", s / 60, s % 60);
    else
        snprintf(buf, len, "%luh%02lum", s / 3600, s / 60 % 60);
    return buf;
}

/* Bytes/s over the last TERM_RATE_S seconds, taking a sample now. */
static double term_rate(term_t *t, double now)
{
    size_t last = (t->ring_head + t->ring_n) % TERM_RATE_RING;
    double rate = 0;

    while (t->ring_n > 1 && now - t->ring_t[(t->ring_head + 1) % TERM_RATE_RING] >= TERM_RATE_S) {
        t->ring_head = (t->ring_head + 1) % TERM_RATE_RING;
        t->ring_n--;
    }
    if (t->ring_n > 0 && now - t->ring_t[t->ring_head] > 0.05)
        rate = (double)(t->bytes - t->ring_b[t->ring_head]) / (now - t->ring_t[t->ring_head]);
    if (t->ring_n == TERM_RATE_RING) {
        t->ring_head = (t->ring_head + 1) % TERM_RATE_RING;
        t->ring_n--;
        last = (t->ring_head + t->ring_n) % TERM_RATE_RING;
    }
    t->ring_t[last] = now;
    t->ring_b[last] = t->bytes;
    t->ring_n++;
    return rate;
}

/* "45% [=========>           ] 90.0 MiB / 200.0 MiB, 4.0 MiB/s, ETA 27s":
 * the wire bytes against the total (Content-Length counts them). */
static void bar_line(json_t *job, int cols, char *line, size_t len)
{
    json_int_t wire = json_integer_value(json_object_get(job, "wire_bytes"));
    json_t *total = json_object_get(job, "total"), *eta = json_object_get(job, "eta");
    char b1[32], b2[32], b3[32], b4[32], rest[160], bar[64];
    int width, fill, pct;

    snprintf(rest, sizeof(rest), "%s%s%s, %s/s%s%s", human((double)wire, b1, sizeof(b1)),
             json_is_integer(total) ? " / " : "",
             json_is_integer(total) ? human((double)json_integer_value(total), b2, sizeof(b2)) : "",
             human((double)json_integer_value(json_object_get(job, "speed")), b3, sizeof(b3)),
             json_is_integer(eta) ? ", ETA " : "",
             json_is_integer(eta) ? duration((double)json_integer_value(eta), b4, sizeof(b4)) : "");
    if (!json_is_integer(total) || json_integer_value(total) <= 0) {
        snprintf(line, len, "%s", rest);
        return;
    }
    pct = (int)(wire >= json_integer_value(total) ? 100 : wire * 100 / json_integer_value(total));
    width = cols - 1 - (int)strlen(rest) - 8;
    width = width < 10 ? 10 : width > (int)sizeof(bar) - 1 ? (int)sizeof(bar) - 1 : width;
    fill = pct * width / 100;
    memset(bar, ' ', (size_t)width);
    memset(bar, '=', (size_t)fill);
    if (fill < width && fill > 0)
        bar[fill - 1] = '>';
    bar[width] = '\0';
    snprintf(line, len, "%3d%% [%s] %s", pct, bar, rest);
}

/* "[12s] 8412 of 10000 finished (8300 done, 112 failed), 64 running, 1524
 * queued, 812.4 MiB, 104.2 MiB/s", or a shorter form where that is too wide. */
static void counts_line(submit_t *s, double now, double rate, int cols, char *line, size_t len)
{
    term_t *t = &s->term;
    size_t busy = t->running + t->finished;
    size_t queued = t->known > busy ? t->known - busy : 0;
    char b1[32], b2[32], el[32], cancelled[48] = "";
    int n;

    duration(now - t->start, el, sizeof(el));
    human((double)t->bytes, b1, sizeof(b1));
    human(rate, b2, sizeof(b2));
    if (t->states[2] > 0)
        snprintf(cancelled, sizeof(cancelled), ", %zu cancelled", t->states[2]);
    n = snprintf(line, len,
                 "[%s] %zu of %zu%s finished (%zu done, %zu failed%s), %zu running, %zu queued, "
                 "%s, %s/s",
                 el, t->finished, t->known, s->eof ? "" : "+", t->states[0], t->states[1],
                 cancelled, t->running, queued, b1, b2);
    if (n >= cols)
        snprintf(line, len,
                 "[%s] %zu of %zu%s: %zu done, %zu failed%s, %zu running, %zu queued, %s/s", el,
                 t->finished, t->known, s->eof ? "" : "+", t->states[0], t->states[1], cancelled,
                 t->running, queued, b2);
}

/* Redraws the live line in place (\r, erase line), at most 10 times a
 * second; stdout is flushed first, as it may be the same terminal. */
static void term_draw(submit_t *s)
{
    term_t *t = &s->term;
    double now = mono_s(), rate;
    char line[512];
    int cols;

    if (!t->on || now - t->drawn < TERM_REDRAW_S)
        return;
    t->drawn = now;
    cols = term_cols();
    rate = term_rate(t, now);
    if (t->known == 1 && s->eof && s->count == 0 && t->finished == 0) {
        if (t->running == 0)
            snprintf(line, sizeof(line), "queued");
        else if (t->one != NULL)
            bar_line(t->one, cols, line, sizeof(line));
        else
            snprintf(line, sizeof(line), "running");
    } else if (t->known > 0 || s->stop) {
        counts_line(s, now, rate, cols, line, sizeof(line));
    } else {
        return; /* nothing to count yet */
    }
    fflush(stdout);
    fprintf(stderr, "\r\033[K%.*s", cols - 1, line);
    s->c->progress_shown = 1;
}

/* A run of one job keeps its final bar on the screen, curl-like. */
static void term_final_bar(submit_t *s, const jsonr_t *m, uint32_t job)
{
    term_t *t = &s->term;
    json_int_t len, ms, wire;
    json_t *shown;
    char line[512], b[32];

    /* Only a terminal showing one known job gets the bar: it is looked at
     * and copied for it alone, not for each of a long input's answers. */
    if (!t->on || t->known != 1 || !s->eof)
        return;
    len = ctl_int(m, jsonr_get(m, job, "content_length"));
    ms = ctl_int(m, jsonr_get(m, jsonr_get(m, job, "timings"), "total_ms"));
    wire = ctl_int(m, jsonr_get(m, job, "wire_bytes"));
    if (wire <= 0 || (shown = jsonr_to_json(m, job)) == NULL)
        return;
    /* The average over the whole transfer, and the time it took. */
    json_object_set_new(shown, "speed", json_integer(ms > 0 ? wire * 1000 / ms : 0));
    if (jsonr_get(m, job, "content_length") != JSONR_NONE)
        json_object_set_new(shown, "total", json_integer(len));
    json_object_del(shown, "eta");
    bar_line(shown, term_cols() - 8, line, sizeof(line));
    json_decref(shown);
    ctl_progress_clear(s->c);
    fflush(stdout);
    fprintf(stderr, "%s in %s\n", line, duration(ms / 1000.0, b, sizeof(b)));
}

/* Counts by state, by status class and by error code, on stderr. */
static void term_summary(submit_t *s)
{
    static const char *const classes[6] = {"no response", "1xx", "2xx", "3xx", "4xx", "5xx"};
    term_t *t = &s->term;
    double el = mono_s() - t->start;
    const char *code;
    json_t *n;
    char b1[32], b2[32];
    int first = 1;

    if (t->known != 1) {
        t->drawn = 0; /* the final counts, drawn once whatever the time */
        term_draw(s);
    }
    ctl_progress_clear(s->c);
    fflush(stdout);
    if (t->finished < t->known)
        fprintf(stderr, "fetchctl: %zu of", t->finished);
    else
        fputs("fetchctl:", stderr);
    fprintf(stderr,
            " %zu job%s finished in %.1f s: %zu done, %zu failed, %zu cancelled; "
            "%s at %s/s\n",
            t->known, t->known == 1 ? "" : "s", el, t->states[0], t->states[1], t->states[2],
            human((double)t->bytes, b1, sizeof(b1)),
            human(el > 0 ? (double)t->bytes / el : 0, b2, sizeof(b2)));
    fprintf(stderr, "fetchctl: HTTP status:");
    for (int k = 1; k <= 6; k++) {
        size_t v = t->classes[k % 6]; /* "no response" last */
        if (v > 0)
            fprintf(stderr, "%s %s %zu", first ? "" : ",", classes[k % 6], v);
        first = first && v == 0;
    }
    fprintf(stderr, "%s\n", first ? " none" : "");
    if (t->errors == NULL || json_object_size(t->errors) == 0)
        return;
    fprintf(stderr, "fetchctl: errors:");
    first = 1;
    json_object_foreach (t->errors, code, n) {
        fprintf(stderr, "%s %s %" JSON_INTEGER_FORMAT, first ? "" : ",", code,
                json_integer_value(n));
        first = 0;
    }
    fputc('\n', stderr);
}

static void term_dispose(term_t *t)
{
    free(t->jobs);
    json_decref(t->errors);
    json_decref(t->one);
}

/* ---- answers -------------------------------------------------------------------- */

/* Sends the wait call for the job id (owned; this function takes it) and
 * remembers which job it is for. 0 or -1. */
static int send_wait(submit_t *s, char *id)
{
    json_int_t call = rpc_request_job(&s->c->rpc, "wait", id);
    size_t slot = (size_t)(call - s->wait_base);
    if (call < 0) {
        free(id);
        return -1;
    }
    if (slot >= s->wait_cap) {
        size_t cap = s->wait_cap ? s->wait_cap * 2 : 4096;
        char **p;
        while (cap <= slot)
            cap *= 2;
        if ((p = realloc(s->wait_job, cap * sizeof(*p))) == NULL) {
            free(id);
            return -1;
        }
        memset(p + s->wait_cap, 0, (cap - s->wait_cap) * sizeof(*p));
        s->wait_job = p;
        s->wait_cap = cap;
    }
    s->wait_job[slot] = id;
    s->waits_open++;
    return 0;
}

/* Waits on the job: at once while fewer than SUBMIT_MAX_WAITS calls are
 * open, else once earlier ones are answered (send_later). 0 or -1. */
static int queue_wait(submit_t *s, const char *text)
{
    char *id = strdup(text);
    if (id == NULL)
        return -1;
    s->waits_pending++;
    if (s->waits_open < SUBMIT_MAX_WAITS && s->later_n == s->later_head)
        return send_wait(s, id);
    if (s->later_n == s->later_cap) {
        size_t live = s->later_n - s->later_head, cap;
        char **p;
        if (live > 0)
            memmove(s->later, s->later + s->later_head, live * sizeof(*s->later));
        s->later_head = 0;
        s->later_n = live;
        cap = live * 2 > s->later_cap ? live * 2 : s->later_cap;
        cap = cap > 0 ? cap : 4096;
        if (cap > s->later_cap) {
            if ((p = realloc(s->later, cap * sizeof(*p))) == NULL) {
                free(id);
                return -1;
            }
            s->later = p;
            s->later_cap = cap;
        }
    }
    s->later[s->later_n++] = id;
    return 0;
}

/* Sends the waits that were kept for room, while there is room (and the
 * run is not stopping). 0 or -1. */
static int send_later(submit_t *s)
{
    while (!s->stop && s->waits_open < SUBMIT_MAX_WAITS && s->later_head < s->later_n) {
        char *id = s->later[s->later_head++];
        if (s->later_head == s->later_n)
            s->later_head = s->later_n = 0;
        if (send_wait(s, id) != 0)
            return -1;
    }
    return 0;
}

/* The id of the next unfinished job at or after *pos (those with an open
 * wait, then those whose wait is kept for room), moving *pos past it; NULL
 * after the last. */
static const char *next_unfinished(submit_t *s, size_t *pos)
{
    for (; *pos < s->wait_cap; (*pos)++)
        if (s->wait_job[*pos] != NULL)
            return s->wait_job[(*pos)++];
    if (*pos - s->wait_cap < s->later_n - s->later_head)
        return s->later[s->later_head + (*pos)++ - s->wait_cap];
    return NULL;
}

/* --json: the line {"id":ID,"url":URL} of a job ("url":null when it is not
 * known), as json_pack("{s:s, s:s?}") and jansson's dump wrote it. */
static void print_id_json(submit_t *s, const char *id, const char *url)
{
    jdump_t *d = &s->c->dump;
    d->len = 0;
    if (jdump_raw(d, "{\"id\":", 6) != 0 || jdump_string(d, id, strlen(id)) != 0 ||
        jdump_raw(d, ",\"url\":", 7) != 0 ||
        (url != NULL ? jdump_string(d, url, strlen(url)) : jdump_raw(d, "null", 4)) != 0 ||
        jdump_raw(d, "}\n", 2) != 0)
        d->len = 0;
    fwrite(d->buf, 1, d->len, stdout);
}

/* Prints (or waits on) the ids of an answered batch. */
static int batch_output(submit_t *s, batch_t *b)
{
    ctl_progress_clear(s->c);
    for (size_t i = 0; i < b->nid; i++) {
        const char *text = b->id_text + b->id_off[i];
        if (b->id_off[i] == NO_ID)
            continue;
        s->nids++;
        /* The ids come first, also with --wait: a script has them even if
         * the wait is interrupted. */
        if (s->c->json && !s->quiet)
            print_id_json(s, text, b->urls[i]);
        else if (!s->quiet)
            puts(text);
        if (s->wait && queue_wait(s, text) != 0)
            return EXIT_SERVER;
    }
    return 0;
}

/* Reports a refused batch. */
static void batch_error(submit_t *s, batch_t *b, const jsonr_t *m, uint32_t error)
{
    uint32_t data = jsonr_get(m, error, "data");
    long long index;
    size_t n;
    const char *msg = ctl_str(m, jsonr_get(m, data, "message"), &n);

    ctl_progress_clear(s->c);
    if (jsonr_int(m, jsonr_get(m, data, "index"), &index) == 0 && index >= 0 &&
        (size_t)index < b->n && msg != NULL) {
        fprintf(stderr, "fetchctl: job %zu: %.*s\n", b->first + (size_t)index, (int)n, msg);
        if (s->input != NULL)
            fprintf(stderr, "fetchctl: (%s line %lu)\n", s->input, b->lines[index]);
    } else {
        ctl_print_error("submit", m, error);
    }
}

/* Keeps a copy of the ids an answer gives (the message's text moves with
 * the next read) until the batch retires. 0 or -1 (no memory). */
static int batch_keep_ids(batch_t *b, const jsonr_t *m, uint32_t ids)
{
    size_t bytes = 0, off = 0, n = jsonr_type(m, ids) == JSONR_ARRAY ? jsonr_count(m, ids) : 0;
    uint32_t id;

    b->has_ids = 1;
    if (n == 0)
        return 0;
    for (id = jsonr_first(m, ids); id != JSONR_NONE; id = jsonr_next(m, id)) {
        size_t len;
        if (ctl_str(m, id, &len) != NULL)
            bytes += len + 1;
    }
    b->id_off = malloc(n * sizeof(*b->id_off));
    b->id_text = malloc(bytes ? bytes : 1);
    if (b->id_off == NULL || b->id_text == NULL)
        return -1;
    for (id = jsonr_first(m, ids); id != JSONR_NONE; id = jsonr_next(m, id)) {
        size_t len;
        const char *text = ctl_str(m, id, &len);
        b->id_off[b->nid++] = text != NULL ? off : NO_ID;
        if (text == NULL)
            continue;
        memcpy(b->id_text + off, text, len);
        b->id_text[off + len] = '\0';
        off += len + 1;
    }
    return 0;
}

static void on_submit_answer(submit_t *s, batch_t *b, const jsonr_t *m, uint32_t resp)
{
    uint32_t result = jsonr_get(m, resp, "result");
    b->answered = 1;
    if (result != JSONR_NONE) {
        uint32_t ids = jsonr_get(m, result, "ids");
        if (ids != JSONR_NONE && batch_keep_ids(b, m, ids) != 0) {
            s->stop = 1;
            s->rc = EXIT_SERVER;
        }
        term_register(s, m, ids); /* now: their events may come before the batch retires */
        return;
    }
    if (!s->stop)
        batch_error(s, b, m, jsonr_get(m, resp, "error"));
    s->stop = 1;
    s->rc = EXIT_SERVER;
}

/* -o -: the header fields (with --include) as "Name: value" lines and an
 * empty line, CRLF-terminated as curl -i writes them. */
static void write_fields(const jsonr_t *m, uint32_t job)
{
    uint32_t headers = jsonr_get(m, job, "headers");
    for (uint32_t pair = jsonr_type(m, headers) == JSONR_ARRAY ? jsonr_first(m, headers)
                                                               : JSONR_NONE;
         pair != JSONR_NONE; pair = jsonr_next(m, pair)) {
        size_t ln = 0, lv = 0;
        const char *name = jsonr_str(m, jsonr_at(m, pair, 0), &ln);
        const char *value = jsonr_str(m, jsonr_at(m, pair, 1), &lv);
        fwrite(name, 1, name ? ln : 0, stdout);
        fputs(": ", stdout);
        fwrite(value, 1, value ? lv : 0, stdout);
        fputs("\r\n", stdout);
    }
    fputs("\r\n", stdout);
}

/* A string member as a new C string (cut at a NUL), or NULL. */
static char *str_dup(const jsonr_t *m, uint32_t o, const char *key)
{
    size_t n;
    const char *s = ctl_str(m, jsonr_get(m, o, key), &n);
    return s != NULL ? strndup(s, n) : NULL;
}

/* -o -: why nothing was written for a job that did not finish done. */
static void body_refused(const jsonr_t *m, uint32_t job)
{
    uint32_t err = jsonr_get(m, job, "error");
    char *code = str_dup(m, err, "code"), *msg = str_dup(m, err, "message");
    char *id = str_dup(m, job, "id"), *state = str_dup(m, job, "state");

    if (code != NULL && strcmp(code, "body_too_large") == 0 && msg != NULL &&
        strncmp(msg, "inline", 6) == 0)
        fprintf(stderr,
                "fetchctl: job %s: the body is too large for -o - (%s); nothing was"
                " written: use -o FILE\n",
                id ? id : "?", msg);
    else
        fprintf(stderr, "fetchctl: job %s is %s%s%s%s%s; nothing was written\n", id ? id : "?",
                state ? state : "?", code ? ": " : "", code ? code : "", msg ? ": " : "",
                msg ? msg : "");
    free(code);
    free(msg);
    free(id);
    free(state);
}

/* -o -: writes the inline body of a done job to stdout, exactly; a job
 * that did not finish done writes nothing and says why. Returns the exit
 * code of this job. */
static int write_body(submit_t *s, const jsonr_t *m, uint32_t job)
{
    uint32_t in = jsonr_get(m, job, "inline");
    size_t n = 0, olen = 0;
    const char *data = jsonr_str(m, jsonr_get(m, in, "data"), &n);
    char *enc = str_dup(m, in, "encoding"), *id;
    unsigned char *raw;

    ctl_progress_clear(s->c);
    if (!ctl_job_done(m, job) || data == NULL || enc == NULL) {
        free(enc);
        body_refused(m, job);
        return EXIT_JOB;
    }
    if (s->include)
        write_fields(m, job);
    if (strcmp(enc, "text") == 0) {
        free(enc);
        fwrite(data, 1, n, stdout);
        return EXIT_OK;
    }
    free(enc);
    raw = malloc(n / 4 * 3 + 3);
    if (raw == NULL ||
        mbedtls_base64_decode(raw, n / 4 * 3 + 3, &olen, (const unsigned char *)data, n) != 0) {
        free(raw);
        id = str_dup(m, job, "id");
        fprintf(stderr, "fetchctl: job %s: the inline body is not valid base64\n", id ? id : "?");
        free(id);
        return EXIT_SERVER;
    }
    fwrite(raw, 1, olen, stdout);
    free(raw);
    return EXIT_OK;
}

static void on_wait_answer(submit_t *s, size_t slot, const jsonr_t *m, uint32_t resp)
{
    uint32_t job = jsonr_get(m, resp, "result");
    int rc;
    s->waits_pending--;
    s->waits_open--;
    s->waits_done++;
    if (job != JSONR_NONE) {
        term_finished(s, m, job);
        term_final_bar(s, m, job);
    }
    if (job != JSONR_NONE && s->to_stdout) {
        rc = write_body(s, m, job);
    } else if (job != JSONR_NONE) {
        ctl_print_job(s->c, m, job);
        if (s->include)
            ctl_print_details(s->c, m, job);
        rc = ctl_job_done(m, job) ? EXIT_OK : EXIT_JOB;
    } else {
        ctl_progress_clear(s->c);
        rc = ctl_print_error(s->wait_job[slot], m, jsonr_get(m, resp, "error"));
    }
    free(s->wait_job[slot]);
    s->wait_job[slot] = NULL;
    if (send_later(s) != 0)
        rc = EXIT_SERVER;
    if (rc > s->rc)
        s->rc = rc;
}

/* Answers that are not a submit's or a wait's: the subscription, the
 * cancel calls after Ctrl-C, and the events. Returns 1 when resp was one. */
static int on_other(submit_t *s, const jsonr_t *m, uint32_t resp, json_int_t id)
{
    uint32_t method = jsonr_get(m, resp, "method");
    uint32_t result = jsonr_get(m, resp, "result");
    size_t n;

    if (ctl_str_is(m, method, "event")) {
        term_event(s, m, jsonr_get(m, resp, "params"));
        return 1;
    }
    if (id != 0 && id == s->term.sub_call) {
        /* A daemon without progress events refuses: the line then counts
         * finished jobs only. */
        s->term.sub = ctl_int(m, jsonr_get(m, result, "subscription"));
        return 1;
    }
    if (id >= s->cancel_base && id < s->cancel_base + (json_int_t)s->cancel_n) {
        s->cancels_pending--;
        s->cancelled += ctl_str_is(m, jsonr_get(m, result, "state"), "cancelled");
        return 1;
    }
    return ctl_str(m, method, &n) != NULL;
}

static void on_response(submit_t *s, const jsonr_t *m, uint32_t resp)
{
    json_int_t id = ctl_resp_id(m, resp);
    size_t slot = (size_t)(id - s->wait_base);
    if (on_other(s, m, resp, id))
        return;
    for (size_t i = 0; i < s->count; i++) {
        batch_t *b = &s->ring[(s->head + i) % SUBMIT_DEPTH];
        if (b->id == id && !b->answered) {
            on_submit_answer(s, b, m, resp);
            return;
        }
    }
    if (id >= s->wait_base && slot < s->wait_cap && s->wait_job[slot] != NULL)
        on_wait_answer(s, slot, m, resp);
}

/* Retires answered batches from the head, in input order. */
static int retire(submit_t *s)
{
    while (s->count > 0 && s->ring[s->head].answered) {
        batch_t *b = &s->ring[s->head];
        int rc = b->has_ids ? batch_output(s, b) : 0;
        batch_free(b);
        s->head = (s->head + 1) % SUBMIT_DEPTH;
        s->count--;
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* ctl_recv(), waking on a terminal to redraw the live line meanwhile. */
static int recv_msg(submit_t *s)
{
    while (s->term.on &&
           !rpc_wait(&s->c->rpc, s->c->progress_shown ? TERM_TICK_MS : TERM_HIDDEN_MS))
        term_draw(s);
    return ctl_recv(s->c);
}

/* Reads one message and handles what it answers: 0 or an exit code. */
static int step(submit_t *s)
{
    const jsonr_t *m = &s->c->rpc.msg;
    int rc = recv_msg(s);
    if (rc != 0)
        return rc;
    for (uint32_t resp = ctl_msg_first(m); resp != JSONR_NONE; resp = jsonr_next(m, resp))
        on_response(s, m, resp);
    if ((rc = retire(s)) != 0)
        return rc;
    term_draw(s);
    return 0;
}

/* Prints w as one shell word: as it is when it is plain, else quoted. */
static void shell_word(const char *w)
{
    static const char plain[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                "0123456789/._+-:=@,%";
    if (*w != '\0' && strspn(w, plain) == strlen(w)) {
        fputs(w, stderr);
        return;
    }
    fputc('\'', stderr);
    for (; *w; w++) {
        if (*w == '\'')
            fputs("'\\''", stderr);
        else
            fputc((unsigned char)*w < 0x20 || *w == 0x7f ? '?' : *w, stderr);
    }
    fputc('\'', stderr);
}

/* "fetchctl [-s SOCKET] cancel": -s when the socket came from the command
 * line, not from $FETCHD_SOCKET or the default. */
static void cancel_command(submit_t *s)
{
    const char *sock = s->c->socket;
    fputs("fetchctl ", stderr);
    if (sock != s->c->socket_buf && sock != getenv("FETCHD_SOCKET")) {
        fputs("-s ", stderr);
        shell_word(sock);
        fputc(' ', stderr);
    }
    fputs("cancel", stderr);
}

/* Writes the ids of the unfinished jobs to a new file under $TMPDIR (or
 * /tmp); returns its path in buf, or NULL. */
static const char *ids_file(submit_t *s, char *buf, size_t len)
{
    const char *dir = getenv("TMPDIR");
    const char *id;
    FILE *f;
    int fd, bad;

    snprintf(buf, len, "%s/fetchctl-unfinished-XXXXXX", dir && *dir ? dir : "/tmp");
    fd = mkstemp(buf);
    if (fd < 0 || (f = fdopen(fd, "w")) == NULL) {
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    for (size_t pos = 0; (id = next_unfinished(s, &pos)) != NULL;)
        fprintf(f, "%s\n", id);
    bad = ferror(f);
    if (fclose(f) != 0 || bad) {
        unlink(buf);
        return NULL;
    }
    return buf;
}

/* Ctrl-C without --cancel-on-interrupt: the jobs run on; says so, and
 * the exact command that cancels them. */
static void interrupt_hint(submit_t *s)
{
    size_t n = s->waits_pending;
    char path[4096];
    const char *file, *id;

    if (n == 0) {
        fprintf(stderr, "fetchctl: interrupted; every job had finished\n");
        return;
    }
    fprintf(stderr, "fetchctl: interrupted: %zu job%s keep%s running in fetchd", n,
            n == 1 ? "" : "s", n == 1 ? "s" : "");
    if (s->term.on)
        fprintf(stderr, " (%zu running, %zu queued)", s->term.running,
                n > s->term.running ? n - s->term.running : 0);
    fputc('\n', stderr);
    file = n > TERM_HINT_IDS ? ids_file(s, path, sizeof(path)) : NULL;
    if (file != NULL) {
        fprintf(stderr, "fetchctl: their ids are in %s; to cancel them:\n  xargs ", file);
        cancel_command(s);
        fputs(" < ", stderr);
        shell_word(file);
        fputc('\n', stderr);
        return;
    }
    fprintf(stderr, "fetchctl: to cancel %s:\n  ", n == 1 ? "it" : "them");
    cancel_command(s);
    for (size_t pos = 0; (id = next_unfinished(s, &pos)) != NULL;) {
        fputc(' ', stderr);
        shell_word(id);
    }
    fputc('\n', stderr);
}

/* --cancel-on-interrupt: one cancel call per unfinished job, in batches of
 * 1000 calls; their answers (and the waits' ones) are read. */
static int cancel_unfinished(submit_t *s)
{
    json_t *batch = NULL;
    const char *job;
    size_t n = 0, pos = 0;
    int rc = 0;

    s->cancel_base = s->c->rpc.next_id;
    while (rc == 0 && (job = next_unfinished(s, &pos)) != NULL) {
        json_int_t id;
        if (batch == NULL && (batch = json_array()) == NULL)
            return EXIT_SERVER;
        if (json_array_append_new(batch, rpc_call_object(&s->c->rpc, "cancel",
                                                         json_pack("{s:s}", "id", job), &id)) != 0)
            rc = EXIT_SERVER;
        else
            n++;
        if (json_array_size(batch) == 1000) {
            rc = rc == 0 && rpc_send_json(&s->c->rpc, batch) != 0 ? EXIT_SERVER : rc;
            json_decref(batch);
            batch = NULL;
        }
    }
    if (batch != NULL) {
        rc = rc == 0 && rpc_send_json(&s->c->rpc, batch) != 0 ? EXIT_SERVER : rc;
        json_decref(batch);
    }
    s->cancel_n = s->cancels_pending = n;
    while (rc == 0 && s->cancels_pending > 0)
        rc = step(s);
    return rc;
}

/* Ctrl-C during --wait. The batches in flight were queued in fetchd: their
 * ids are learnt first. Then the unfinished jobs are cancelled
 * (--cancel-on-interrupt) or left running with a word on how to cancel
 * them. A second Ctrl-C stops at once. Returns EXIT_SIGNAL. */
static int interrupted(submit_t *s)
{
    int rc = 0;

    ctl_progress_clear(s->c);
    rpc_interrupt_clear();
    s->stop = 1;
    while (rc == 0 && s->count > 0)
        rc = step(s);
    if (rc == 0 && s->cancel_on_interrupt)
        rc = cancel_unfinished(s);
    if (s->term.on)
        term_summary(s);
    ctl_progress_clear(s->c);
    if (rc == 0 && s->cancel_on_interrupt)
        fprintf(stderr,
                "fetchctl: interrupted: cancelled %zu job%s (--cancel-on-interrupt); %zu had "
                "finished meanwhile\n",
                s->cancelled, s->cancelled == 1 ? "" : "s", s->cancel_n - s->cancelled);
    else
        interrupt_hint(s);
    return EXIT_SIGNAL;
}

static int run(submit_t *s)
{
    int rc;
    if (s->term.on) {
        /* Before the first submit: the events of every job of this run
         * come after the answer that names it. */
        s->term.sub_call = rpc_request(&s->c->rpc, "subscribe",
                                       json_pack("{s:[ss]}", "events", "started", "progress"));
        term_draw(s);
    }
    for (;;) {
        if ((rc = fill_pipeline(s)) != 0)
            s->rc = rc;
        if (s->count == 0 && (s->waits_pending == 0 || s->stop))
            break;
        if ((rc = step(s)) != 0)
            return rc == EXIT_SIGNAL && s->wait ? interrupted(s) : rc;
    }
    ctl_progress_clear(s->c);
    if (s->stop && s->nids > 0)
        fprintf(stderr, "fetchctl: %zu jobs of other batches were queued\n", s->nids);
    if (s->term.on)
        term_summary(s);
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
    for (size_t i = s->later_head; i < s->later_n; i++)
        free(s->later[i]);
    free(s->later);
    term_dispose(&s->term);
    free(s->pending.text);
    free(s->pending.url);
    free(s->out);
    free(s->linebuf);
    free(s->defaults_text);
    json_decref(s->defaults);
    jsonr_free(&s->spec);
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
    jsonr_init(&s.spec, realloc, free);
    s.defaults = json_object();
    rc = s.defaults ? parse_options(&s, argc, argv) : EXIT_SERVER;
    if (rc < 0 && defaults_text(&s) != 0)
        rc = EXIT_SERVER;
    if (rc < 0 && (rc = open_input(&s)) == 0 && (rc = ctl_connect(c)) == 0) {
        /* Wait calls get ids from here on; submits are told apart by the ring. */
        s.wait_base = c->rpc.next_id;
        s.term.on = s.wait && isatty(STDERR_FILENO);
        s.term.start = mono_s();
        rc = run(&s);
    }
    submit_dispose(&s);
    return rc;
}
