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

/* log_text() lines waiting for log_flush() while batching is on: whole
 * lines only, so every write still carries whole lines. */
static char batch[64 * 1024];
static size_t batch_len;
static int batching;

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

/* The escape for byte c (and the byte after it, for a C1 control in
 * UTF-8), written to esc; returns its length, 0 when c stands as it is. */
static size_t escape_one(char esc[9], const unsigned char *p, size_t left)
{
    static const char hex[] = "0123456789ABCDEF";
    unsigned char c = p[0];

    switch (c) {
    case '\n':
        memcpy(esc, "\\n", 2);
        return 2;
    case '\r':
        memcpy(esc, "\\r", 2);
        return 2;
    case '\t':
        memcpy(esc, "\\t", 2);
        return 2;
    case '\\':
        memcpy(esc, "\\\\", 2);
        return 2;
    default:
        break;
    }
    if (c < 0x20 || c == 0x7f) {
        esc[0] = '\\';
        esc[1] = 'x';
        esc[2] = hex[c >> 4];
        esc[3] = hex[c & 15];
        return 4;
    }
    /* U+0080-U+009F: terminals that read UTF-8 may take them as C1
     * controls (U+009B is CSI), so both bytes are escaped. */
    if (c == 0xc2 && left > 1 && p[1] >= 0x80 && p[1] <= 0x9f) {
        memcpy(esc, "\\xC2\\x", 6);
        esc[6] = hex[p[1] >> 4];
        esc[7] = hex[p[1] & 15];
        return 8;
    }
    return 0;
}

/* 1 for the bytes that stand as they are in a log line: not a control,
 * not DEL, not the backslash, not 0xC2 (which may start a C1 control). */
static const unsigned char plain_byte[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};

size_t log_escape(char *dst, size_t dstlen, const char *src, size_t srclen)
{
    const unsigned char *p = (const unsigned char *)src;
    size_t out = 0, i = 0;
    char esc[9];

    while (i < srclen) {
        size_t n, used, run = i;

        /* A run of bytes that stand as they are, copied at once. */
        while (run < srclen && plain_byte[p[run]])
            run++;
        if (run > i) {
            size_t k = run - i < dstlen - 1 - out ? run - i : dstlen - 1 - out;
            memcpy(dst + out, p + i, k);
            out += k;
            i += k;
            if (i < run)
                break; /* dst is full */
            continue;
        }
        n = escape_one(esc, p + i, srclen - i);
        used = n == 8 ? 2 : 1;
        if (n == 0) {
            if (out + 1 >= dstlen)
                break;
            dst[out++] = (char)p[i];
        } else {
            if (out + n >= dstlen)
                break;
            memcpy(dst + out, esc, n);
            out += n;
        }
        i += used;
    }
    dst[out] = '\0';
    return out;
}

void log_flush(void)
{
    if (batch_len > 0)
        fwrite(batch, 1, batch_len, stderr);
    batch_len = 0;
}

void log_batch(int on)
{
    static int registered;

    log_flush();
    batching = on;
    if (on && !registered && atexit(log_flush) == 0)
        registered = 1; /* an exit() elsewhere still writes what waits */
}

/* Writes the line: the prefix, msg[0..n) escaped ("..." when cut is set),
 * a newline; into the batch when batchable and batching is on. */
static void write_line(log_level_t level, const char *msg, size_t n, int cut, int batchable)
{
    /* Every byte may become \xHH: four times the message, the prefix, "...",
     * the newline. */
    char line[4 * LOG_MAX_MESSAGE + 128];
    size_t len;
    int k;

    if (journal) {
        k = snprintf(line, sizeof(line), "<%d>", (int)level);
    } else {
        /* The date and time to the second, formatted once a second. */
        static time_t stamp_sec = (time_t)-1;
        static char stamp[32];
        static size_t stamp_len;
        struct timespec ts;
        unsigned ms;

        clock_gettime(CLOCK_REALTIME, &ts);
        if (ts.tv_sec != stamp_sec) {
            struct tm tm;
            localtime_r(&ts.tv_sec, &tm);
            stamp_len = strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
            stamp_sec = ts.tv_sec;
        }
        ms = (unsigned)(ts.tv_nsec / 1000000);
        memcpy(line, stamp, stamp_len);
        len = stamp_len;
        line[len++] = '.';
        line[len++] = (char)('0' + ms / 100);
        line[len++] = (char)('0' + ms / 10 % 10);
        line[len++] = (char)('0' + ms % 10);
        memcpy(line + len, " fetchd[", 8);
        len += 8;
        memcpy(line + len, level_word(level), strlen(level_word(level)));
        len += strlen(level_word(level));
        line[len++] = ']';
        line[len++] = ' ';
        k = (int)len;
    }
    len = (size_t)k;
    len += log_escape(line + len, sizeof(line) - len - 5, msg, n);
    if (cut) {
        memcpy(line + len, "...", 3);
        len += 3;
    }
    line[len++] = '\n';
    if (batching && batchable) {
        if (batch_len + len > sizeof(batch))
            log_flush();
        memcpy(batch + batch_len, line, len);
        batch_len += len;
        return;
    }
    /* One write per line (the batch first, to keep the order) so that
     * concurrent writers never interleave mid-line. */
    log_flush();
    fwrite(line, 1, len, stderr);
}

void log_text(log_level_t level, const char *msg, size_t n)
{
    if (level > threshold)
        return;
    write_line(level, msg, n < LOG_MAX_MESSAGE ? n : LOG_MAX_MESSAGE, n > LOG_MAX_MESSAGE, 1);
}

void log_msg(log_level_t level, const char *fmt, ...)
{
    char msg[LOG_MAX_MESSAGE + 1];
    va_list ap;
    int m;

    if (level > threshold)
        return;
    va_start(ap, fmt);
    m = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    write_line(level, msg, (size_t)m < sizeof(msg) ? (size_t)m : sizeof(msg) - 1,
               (size_t)m >= sizeof(msg), 0);
}
