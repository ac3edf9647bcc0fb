/* log — stderr logging with optional journald priority prefixes; see log.h. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Process-wide like stderr itself; set once at start and on reload. */
static log_level_t threshold = LOG_LEVEL_INFO;
static int journal;

static const struct {
    const char *name;
    log_level_t level;
} levels[] = {
    {"error", LOG_LEVEL_ERROR},   {"warn", LOG_LEVEL_WARN}, {"warning", LOG_LEVEL_WARN},
    {"notice", LOG_LEVEL_NOTICE}, {"info", LOG_LEVEL_INFO}, {"debug", LOG_LEVEL_DEBUG},
};

void log_init(log_level_t level)
{
    threshold = level;
    /* systemd sets JOURNAL_STREAM when stderr is connected to the journal;
     * then the journal adds its own timestamps and reads our priorities. */
    journal = getenv("JOURNAL_STREAM") != NULL;
}

void log_set_level(log_level_t level)
{
    threshold = level;
}

log_level_t log_get_level(void)
{
    return threshold;
}

int log_level_parse(const char *s, log_level_t *out)
{
    for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++) {
        if (strcmp(s, levels[i].name) == 0) {
            *out = levels[i].level;
            return 0;
        }
    }
    return -1;
}

static const char *level_word(log_level_t level)
{
    switch (level) {
    case LOG_LEVEL_ERROR:
        return "error";
    case LOG_LEVEL_WARN:
        return "warn";
    case LOG_LEVEL_NOTICE:
        return "notice";
    case LOG_LEVEL_INFO:
        return "info";
    default:
        return "debug";
    }
}

void log_msg(log_level_t level, const char *fmt, ...)
{
    char line[1024];
    int n;
    va_list ap;

    if (level > threshold)
        return;
    if (journal) {
        n = snprintf(line, sizeof(line), "<%d>", (int)level);
    } else {
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        localtime_r(&ts.tv_sec, &tm);
        n = (int)strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
        n += snprintf(line + n, sizeof(line) - (size_t)n, ".%03ld fetchd[%s] ",
                      ts.tv_nsec / 1000000, level_word(level));
    }
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    va_end(ap);
    /* One write per line so concurrent writers never interleave mid-line. */
    fprintf(stderr, "%s\n", line);
}
