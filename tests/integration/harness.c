/* fetchd-harness — runs a script of jobs through the real engine (the same
 * struct daemon fetchd runs) and prints what happened as JSON lines, so the
 * integration tests can drive the engine against real servers. The protocol
 * is documented in tests/integration/README.md.
 *
 * At the end it tears the engine down completely and checks that every live
 * object count and fetchd's own heap are back at zero: exit status 1 if not.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "daemon.h"
#include "err.h"
#include "jobspec.h"
#include "mem.h"

typedef struct harness {
    daemon_t d;
    job_t **jobs; /* one reference each; plain malloc: not part of the engine's heap */
    size_t njobs, cap;
    size_t finished;
    uv_timer_t sleep_timer;
    int slept;
} harness_t;

static void emit(json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT);
    if (s) {
        printf("%s\n", s);
        fflush(stdout);
        mem_free(s); /* jansson allocated it through the counting allocator */
    }
    json_decref(o);
}

static void on_event(sched_t *s, job_t *j, sched_event_t ev, void *data)
{
    harness_t *h = data;
    (void)s;
    if (ev != SCHED_EV_FINISHED)
        return;
    h->finished++;
    emit(json_pack("{s:s, s:I, s:o}", "event", "job", "index", (json_int_t)(size_t)j->data, "job",
                   jobspec_encode_job(j)));
}

static void on_deadline(int sig)
{
    static const char msg[] = "fetchd-harness: deadline passed\n";
    (void)sig;
    if (write(2, msg, sizeof(msg) - 1) < 0) {
        /* nothing more to do */
    }
    _exit(3);
}

static int job_finished(harness_t *h, size_t i)
{
    return i < h->njobs && job_is_finished(h->jobs[i]);
}

static void wait_all(harness_t *h)
{
    while (h->finished < h->njobs)
        uv_run(&h->d.loop, UV_RUN_ONCE);
}

static void on_sleep(uv_timer_t *t)
{
    harness_t *h = t->data;
    h->slept = 1;
}

static void submit(harness_t *h, json_t *spec_json)
{
    job_spec_t spec;
    char err[256];
    job_t *j;
    size_t index = h->njobs;
    int rc;

    if (h->njobs == h->cap) {
        h->cap = h->cap ? 2 * h->cap : 64;
        h->jobs = realloc(h->jobs, h->cap * sizeof(*h->jobs));
        if (h->jobs == NULL) {
            fprintf(stderr, "fetchd-harness: out of memory\n");
            exit(2);
        }
    }
    rc = jobspec_decode(spec_json, &spec, err, sizeof(err));
    if (rc == 0)
        rc = sched_submit(&h->d.sched, &spec, &j, err, sizeof(err));
    if (rc != 0) {
        /* A rejected line still takes an index, so the script's numbering
         * stays the submission order. */
        h->jobs[h->njobs++] = NULL;
        h->finished++;
        emit(json_pack("{s:s, s:I, s:o}", "event", "rejected", "index", (json_int_t)index, "error",
                       jobspec_encode_error(rc, err)));
        return;
    }
    job_incref(j);
    j->data = (void *)index;
    h->jobs[h->njobs++] = j;
    emit(json_pack("{s:s, s:I, s:s}", "event", "submitted", "index", (json_int_t)index, "id",
                   j->id));
}

static int run_command(harness_t *h, json_t *line)
{
    const char *cmd = json_string_value(json_object_get(line, "cmd"));
    json_t *index = json_object_get(line, "index");

    if (cmd == NULL) {
        submit(h, line);
    } else if (strcmp(cmd, "wait") == 0) {
        if (json_is_integer(index)) {
            size_t i = (size_t)json_integer_value(index);
            while (i < h->njobs && h->jobs[i] && !job_finished(h, i))
                uv_run(&h->d.loop, UV_RUN_ONCE);
        } else {
            wait_all(h);
        }
    } else if (strcmp(cmd, "sleep") == 0) {
        h->slept = 0;
        uv_timer_start(&h->sleep_timer, on_sleep,
                       (uint64_t)json_integer_value(json_object_get(line, "ms")), 0);
        while (!h->slept)
            uv_run(&h->d.loop, UV_RUN_ONCE);
    } else if (strcmp(cmd, "stats") == 0) {
        emit(json_pack("{s:s, s:o}", "event", "stats", "stats", daemon_stats_json(&h->d)));
    } else if (strcmp(cmd, "cancel") == 0) {
        size_t i = (size_t)json_integer_value(index);
        if (i < h->njobs && h->jobs[i])
            sched_cancel(&h->d.sched, h->jobs[i]);
    } else if (strcmp(cmd, "fail_alloc") == 0) {
        /* The n-th allocation of fetchd's own from now on fails, once; 0
         * cancels, and the event says whether the failure happened. */
        long after = (long)json_integer_value(json_object_get(line, "after"));
        if (after == 0)
            emit(json_pack("{s:s, s:b}", "event", "fail_alloc", "fired", !mem_fail_pending()));
        mem_fail_after(after);
    } else if (strcmp(cmd, "close_idle") == 0) {
        pool_close_idle(&h->d.pool, STATS_CLOSE_SHUTDOWN);
    } else {
        fprintf(stderr, "fetchd-harness: unknown command \"%s\"\n", cmd);
        return -1;
    }
    return 0;
}

static int run_script(harness_t *h, FILE *in)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    unsigned lineno = 0;
    int rc = 0;

    while (rc == 0 && (n = getline(&line, &cap, in)) > 0) {
        json_error_t jerr;
        json_t *o;
        lineno++;
        if (strspn(line, " \t\r\n") == (size_t)n)
            continue;
        o = json_loads(line, 0, &jerr);
        if (o == NULL || !json_is_object(o)) {
            fprintf(stderr, "fetchd-harness: script line %u: %s\n", lineno,
                    o ? "not a JSON object" : jerr.text);
            json_decref(o);
            rc = -1;
            break;
        }
        rc = run_command(h, o);
        json_decref(o);
    }
    free(line);
    return rc;
}

/* Lists every count that is not back to zero after teardown. */
static json_t *leaks(harness_t *h)
{
    json_t *l = json_array();
    char what[64];
    uint64_t blocks;

    for (int t = 0; t < STATS_OBJ__COUNT; t++) {
        if (h->d.stats.objects[t] != 0) {
            snprintf(what, sizeof(what), "%s=%lld", stats_obj_label(t),
                     (long long)h->d.stats.objects[t]);
            json_array_append_new(l, json_string(what));
        }
    }
    mem_get(MEM_FETCHD, &blocks, NULL);
    if (blocks != 0) {
        snprintf(what, sizeof(what), "heap.fetchd=%llu", (unsigned long long)blocks);
        json_array_append_new(l, json_string(what));
    }
    mem_get(MEM_LIBUV, &blocks, NULL);
    if (blocks != 0) {
        snprintf(what, sizeof(what), "heap.libuv=%llu", (unsigned long long)blocks);
        json_array_append_new(l, json_string(what));
    }
    return l;
}

static void usage(void)
{
    fprintf(stderr, "usage: fetchd-harness [--max-connections N] [--max-per-host N] "
                    "[--max-running N] [--idle-timeout-ms N] [--download-dir DIR] "
                    "[--retain-jobs N] [--retain-seconds S] [--deadline-ms N] SCRIPT|-\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"max-connections", required_argument, NULL, 'c'},
        {"max-per-host", required_argument, NULL, 'p'},
        {"max-running", required_argument, NULL, 'r'},
        {"idle-timeout-ms", required_argument, NULL, 'i'},
        {"download-dir", required_argument, NULL, 'd'},
        {"retain-jobs", required_argument, NULL, 'j'},
        {"retain-seconds", required_argument, NULL, 's'},
        {"deadline-ms", required_argument, NULL, 'D'},
        {"ca-file", required_argument, NULL, 'a'},
        {"client-cert", required_argument, NULL, 'C'},
        {"client-key", required_argument, NULL, 'K'},
        {NULL, 0, NULL, 0},
    };
    harness_t *h = calloc(1, sizeof(*h));
    daemon_config_t cfg;
    unsigned long deadline_ms = 60000;
    char err[256];
    FILE *in;
    int c, rc;
    json_t *final, *leak;

    if (h == NULL || mem_install() != 0)
        return 2;
    log_init(getenv("FETCHD_HARNESS_DEBUG") ? LOG_LEVEL_DEBUG : LOG_LEVEL_WARN);
    daemon_config_init(&cfg);
    cfg.max_connections = 64;
    cfg.max_per_host = 64;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        const char *key = NULL;
        switch (c) {
        case 'c':
            key = "max_connections";
            break;
        case 'p':
            key = "max_per_host";
            break;
        case 'r':
            key = "max_running";
            break;
        case 'd':
            key = "download_dir";
            break;
        case 'j':
            key = "retain_jobs";
            break;
        case 's':
            key = "retain_seconds";
            break;
        case 'a':
            key = "ca_file";
            break;
        case 'C':
            key = "client_cert";
            break;
        case 'K':
            key = "client_key";
            break;
        case 'i':
            cfg.idle_timeout_ms = strtoull(optarg, NULL, 10);
            continue;
        case 'D':
            deadline_ms = strtoul(optarg, NULL, 10);
            continue;
        default:
            usage();
            return 2;
        }
        if (config_set(&cfg, key, optarg, err, sizeof(err)) != 0) {
            fprintf(stderr, "fetchd-harness: %s\n", err);
            return 2;
        }
    }
    if (optind != argc - 1) {
        usage();
        return 2;
    }
    in = strcmp(argv[optind], "-") == 0 ? stdin : fopen(argv[optind], "r");
    if (in == NULL) {
        perror(argv[optind]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_deadline);
    alarm((unsigned)((deadline_ms + 999) / 1000));
    if (daemon_init(&h->d, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "fetchd-harness: %s\n", err);
        return 2;
    }
    h->d.sched.on_event = on_event;
    h->d.sched.event_data = h;
    uv_timer_init(&h->d.loop, &h->sleep_timer);
    h->sleep_timer.data = h;

    rc = run_script(h, in) == 0 ? 0 : 2;
    if (in != stdin)
        fclose(in);
    wait_all(h);

    /* Teardown: everything the engine made must be gone afterwards. */
    daemon_close(&h->d);
    for (size_t i = 0; i < h->njobs; i++)
        if (h->jobs[i])
            job_decref(h->jobs[i]);
    uv_close((uv_handle_t *)&h->sleep_timer, NULL);
    uv_run(&h->d.loop, UV_RUN_DEFAULT);
    if (daemon_dispose(&h->d) != 0) {
        fprintf(stderr, "fetchd-harness: the loop still has open handles\n");
        rc = rc ? rc : 1;
    }
    final = daemon_stats_json(&h->d);
    leak = leaks(h);
    if (json_array_size(leak) > 0 && rc == 0)
        rc = 1;
    emit(json_pack("{s:s, s:o, s:o}", "event", "final", "stats", final, "leaks", leak));
    free(h->jobs);
    free(h);
    return rc;
}
