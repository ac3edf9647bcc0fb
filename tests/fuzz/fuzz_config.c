/* libFuzzer target: the configuration file parser (config_load_file(), as
 * fetchd -c FILE and SIGHUP run it).
 *
 * Each input is a configuration file's bytes; the target writes it to a
 * temporary file and loads it over the defaults. Checks:
 *  - the result is 0, or -1 with a message that starts with the file's path
 *    (config.h: "path:line: reason");
 *  - a loaded configuration keeps every limit within the ranges config.c
 *    accepts (no zero connection limits, for example);
 *  - after daemon_config_dispose() fetchd's and jansson's heaps are back
 *    where they were, also when an allocation fails: each fetchd allocation
 *    of the load is failed once in turn, and the load must then fail
 *    cleanly (or not notice, when the allocation was not needed).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "mem.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char path[64];

static void cleanup(void)
{
    unlink(path);
}

static void fail(const char *why, const char *err)
{
    fprintf(stderr, "fuzz_config: %s: %s\n", why, err);
    abort();
}

/* One load; returns its result. */
static int load(void)
{
    daemon_config_t cfg;
    char err[512] = "";
    uint64_t before[2], after[2];
    int rc;

    mem_get(MEM_FETCHD, &before[0], NULL);
    mem_get(MEM_JANSSON, &before[1], NULL);
    daemon_config_init(&cfg);
    rc = config_load_file(&cfg, path, err, sizeof(err));
    if (rc != 0 && rc != -1)
        fail("a result other than 0 or -1", err);
    if (rc == -1 && strncmp(err, path, strlen(path)) != 0)
        fail("an error that does not name the file", err);
    if (rc == 0 && (cfg.max_connections < 1 || cfg.max_per_host < 1 || cfg.max_running < 1 ||
                    cfg.max_clients < 1 || cfg.idle_timeout_ms < 1000))
        fail("a limit out of its range was accepted", "");
    daemon_config_dispose(&cfg);
    mem_get(MEM_FETCHD, &after[0], NULL);
    mem_get(MEM_JANSSON, &after[1], NULL);
    if (after[0] != before[0] || after[1] != before[1])
        fail("heap blocks leaked", err);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    FILE *f;

    if (!ready) {
        int fd;
        if (mem_install() != 0)
            abort();
        snprintf(path, sizeof(path), "/tmp/fetchd-fuzz-config-XXXXXX");
        if ((fd = mkstemp(path)) < 0)
            abort();
        close(fd);
        atexit(cleanup);
        ready = 1;
    }
    f = fopen(path, "wb");
    if (f == NULL || fwrite(data, 1, size, f) != size || fclose(f) != 0)
        abort();
    load();
    for (long n = 1; n < 128; n++) {
        mem_fail_after(n);
        load();
        if (mem_fail_pending())
            break;
    }
    mem_fail_after(0);
    return 0;
}
