/* log — human-readable log lines on stderr.
 *
 * When JOURNAL_STREAM is set (we run under systemd), every line starts with a
 * "<N>" syslog priority prefix so journald files it at the right level. The
 * level threshold is process-wide, like the stream it writes to.
 *
 * The formatted message is escaped before it is written, whatever the call
 * site passes: paths, URLs, header values and servers' error texts come from
 * outside, and a newline in one of them must not start a forged log line, nor
 * an ESC byte reach a terminal. Every control byte (below 0x20, and 0x7f) is
 * written as \n, \r, \t or \xHH, a C1 control character (U+0080-U+009F,
 * UTF-8 C2 80-C2 9F) as \xC2\xHH, and the backslash itself as \\, so an
 * escaped line reads back unambiguously. One call writes exactly one line.
 */
#ifndef FETCHD_LOG_H
#define FETCHD_LOG_H

#include <stddef.h>

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

/* Escapes src[0..srclen) into dst as log_msg() does (see above) and NUL-
 * terminates it. Never splits an escape sequence: when dst is too small the
 * output stops before the first byte that does not fit whole. Returns the
 * length written (without the NUL); dstlen must be at least 1. */
size_t log_escape(char *dst, size_t dstlen, const char *src, size_t srclen);

/* Formats, escapes and writes one line to stderr when level passes the
 * threshold. A message longer than LOG_MAX_MESSAGE bytes (before escaping)
 * is cut there and ends in "...". */
#define LOG_MAX_MESSAGE 1024
void log_msg(log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* log_msg() for a message already made: msg[0..n) is escaped and written
 * as one line (cut at LOG_MAX_MESSAGE bytes, then "..."). No printf: the
 * per-job line uses it. While batching is on (log_batch()), its lines wait
 * in a 64 KiB buffer for log_flush(), or for the next log_msg() line, which
 * writes them first: one write for many finished jobs, in order. */
void log_text(log_level_t level, const char *msg, size_t n);

/* Turns batching of log_text() lines on or off (off flushes). The daemon
 * turns it on and calls log_flush() once per loop turn, before it waits. */
void log_batch(int on);
/* Writes the batched lines now. */
void log_flush(void);

#define log_error(...)  log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warn(...)   log_msg(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_notice(...) log_msg(LOG_LEVEL_NOTICE, __VA_ARGS__)
#define log_info(...)   log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...)  log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__)

#endif
