/* libFuzzer target: the state file loader (state_load(), as fetchd runs it
 * at start with --state-dir).
 *
 * Each input is the bytes of DIR/queue.json. Set up once: a daemon_t (its
 * scheduler is what the jobs are restored into) in a temporary state
 * directory. Per input the target writes the file, loads it, and checks:
 *  - the result is the number of jobs now queued, or a negative error;
 *    a file that is refused is moved aside as queue.json.bad-<time>-<pid>
 *    (state.h), and one that loads with some jobs it could not restore
 *    leaves such a copy too; either way the kept file holds the input;
 *  - what was restored saves again (state_save()) and that file loads as
 *    valid JSON with the same number of jobs;
 *  - after every restored job is cancelled and forgotten, and the TLS
 *    configurations an https job cached are dropped, no job, request or
 *    connection is left and fetchd's and jansson's heaps are back where
 *    they were.
 * The loop never runs while a restored job is queued: none of them starts,
 * whatever URL the input names (sandbox.c would refuse it anyway).
 */
#include <dirent.h>
#include <jansson.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon.h"
#include "mem.h"
#include "state.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct {
    daemon_t d;
    char dir[64], file[96];
} fz;

static void fail(const char *why, long n, const char *err)
{
    fprintf(stderr, "fuzz_state: %s (result %ld): %s\n", why, n, err);
    abort();
}

static void teardown(void)
{
    uint64_t fetchd;
    int loop_rc;

    daemon_close(&fz.d);
    uv_run(&fz.d.loop, UV_RUN_DEFAULT);
    loop_rc = daemon_dispose(&fz.d);
    unlink(fz.file);
    rmdir(fz.dir);
    mem_get(MEM_FETCHD, &fetchd, NULL);
    if (loop_rc != 0 || fetchd != 0) {
        fprintf(stderr, "fuzz_state: teardown: loop_close=%d fetchd heap blocks=%llu\n", loop_rc,
                (unsigned long long)fetchd);
        abort();
    }
}

/* Removes the kept copies of the state file (queue.json.bad-*), checking
 * that each holds the input; returns how many there were. */
static int take_kept(const uint8_t *data, size_t size, long n, const char *err)
{
    DIR *dir = opendir(fz.dir);
    struct dirent *e;
    int kept = 0;

    if (dir == NULL)
        abort();
    while ((e = readdir(dir)) != NULL) {
        char path[sizeof(fz.dir) + 256];
        static char copy[(1 << 20) + 1];
        size_t got;
        FILE *f;

        if (strncmp(e->d_name, "queue.json.bad-", 15) != 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", fz.dir, e->d_name);
        f = fopen(path, "rb");
        if (f == NULL)
            abort();
        got = fread(copy, 1, sizeof(copy), f);
        fclose(f);
        if (got != size || memcmp(copy, data, size) != 0)
            fail("a kept state file does not hold the input", n, err);
        unlink(path);
        kept++;
    }
    closedir(dir);
    return kept;
}

static void setup(void)
{
    daemon_config_t cfg;
    char err[512];

    signal(SIGPIPE, SIG_IGN);
    if (mem_install() != 0)
        abort();
    snprintf(fz.dir, sizeof(fz.dir), "/tmp/fetchd-fuzz-state-XXXXXX");
    if (mkdtemp(fz.dir) == NULL)
        abort();
    snprintf(fz.file, sizeof(fz.file), "%s/queue.json", fz.dir);
    daemon_config_init(&cfg);
    cfg.retain_jobs = 0;
    cfg.log_level = LOG_LEVEL_ERROR;
    if (daemon_init(&fz.d, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "fuzz_state: %s\n", err);
        abort();
    }
    /* Silence: every bad job of every input would log an error line. */
    log_set_level((log_level_t)(LOG_LEVEL_ERROR - 1));
    atexit(teardown);
}

/* The saved file of what was restored must load as JSON with n jobs. */
static void check_saved(long n)
{
    char err[512] = "";
    long saved = state_save(&fz.d.sched, fz.dir, 1, err, sizeof(err));
    json_error_t jerr;
    json_t *doc;

    if (saved != n)
        fail("saving the restored jobs wrote another number of jobs", saved, err);
    doc = json_load_file(fz.file, 0, &jerr);
    if (doc == NULL || (long)json_array_size(json_object_get(doc, "jobs")) != n)
        fail("the saved file does not hold the restored jobs", n, jerr.text);
    json_decref(doc);
}

static void drop_jobs(void)
{
    job_t *j = NULL, *next;

    for (j = sched_next(&fz.d.sched, NULL); j; j = next) {
        next = sched_next(&fz.d.sched, j);
        sched_cancel(&fz.d.sched, j);
    }
    sched_forget_finished(&fz.d.sched);
    /* An https job caches its TLS configuration for the daemon's life. */
    tls_forget_configs(&fz.d.tls);
    /* Cancelling may leave handle work for the loop (no job is queued now). */
    for (int i = 0; i < 4; i++)
        uv_run(&fz.d.loop, UV_RUN_NOWAIT);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    uint64_t before[2], after[2];
    char err[512] = "";
    FILE *f;
    long n;

    if (size > 1 << 20)
        return -1;
    if (!ready) {
        setup();
        ready = 1;
    }
    f = fopen(fz.file, "wb");
    if (f == NULL || fwrite(data, 1, size, f) != size || fclose(f) != 0)
        abort();
    mem_get(MEM_FETCHD, &before[0], NULL);
    mem_get(MEM_JANSSON, &before[1], NULL);
    n = state_load(&fz.d.sched, fz.dir, err, sizeof(err));
    if (n >= 0) {
        if ((long)fz.d.sched.nqueued != n)
            fail("the result is not the number of jobs queued", n, err);
        if (take_kept(data, size, n, err) > 1)
            fail("a file that loaded was kept more than once", n, err);
        if (access(fz.file, F_OK) != 0)
            fail("a file that loaded is gone", n, err);
        check_saved(n);
    } else {
        if (take_kept(data, size, n, err) != 1)
            fail("a refused file was not kept as queue.json.bad-*", n, err);
        if (access(fz.file, F_OK) == 0)
            fail("a refused file was kept and left in place", n, err);
    }
    drop_jobs();
    unlink(fz.file);
    mem_get(MEM_FETCHD, &after[0], NULL);
    mem_get(MEM_JANSSON, &after[1], NULL);
    if (fz.d.stats.objects[STATS_OBJ_JOB] != 0 || fz.d.stats.objects[STATS_OBJ_CONN] != 0 ||
        fz.d.sched.nqueued != 0 || after[0] != before[0] || after[1] != before[1]) {
        fprintf(stderr,
                "fuzz_state: left behind: job=%lld queued=%zu heap fetchd %llu -> %llu "
                "jansson %llu -> %llu\n",
                (long long)fz.d.stats.objects[STATS_OBJ_JOB], fz.d.sched.nqueued,
                (unsigned long long)before[0], (unsigned long long)after[0],
                (unsigned long long)before[1], (unsigned long long)after[1]);
        abort();
    }
    return 0;
}
