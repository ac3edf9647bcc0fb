/* log — human-readable log lines on stderr.
 *
 * When JOURNAL_STREAM is set (we run under systemd), every line starts with a
 * "<N>" syslog priority prefix so journald files it at the right level. The
 * level threshold is process-wide, like the stream it writes to.
 */
#ifndef FETCHD_LOG_H
#define FETCHD_LOG_H

typedef enum log_level {
    LOG_LEVEL_ERROR = 3, /* syslog LOG_ERR */
    LOG_LEVEL_WARN = 4,
    LOG_LEVEL_NOTICE = 5,
    LOG_LEVEL_INFO = 6,
    LOG_LEVEL_DEBUG = 7,
} log_level_t;

/* Sets the threshold and decides on priority prefixes (from JOURNAL_STREAM). */
void log_init(log_level_t level);
void log_set_level(log_level_t level);
log_level_t log_get_level(void);
/* Parses "error", "warn", "notice", "info", "debug"; returns 0 or -1. */
int log_level_parse(const char *s, log_level_t *out);

void log_msg(log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...)  log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warn(...)   log_msg(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_notice(...) log_msg(LOG_LEVEL_NOTICE, __VA_ARGS__)
#define log_info(...)   log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...)  log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__)

#endif
