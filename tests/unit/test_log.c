/* Unit tests for daemon/log.c: every control byte in a message is escaped,
 * so no value from outside can start a forged line or reach a terminal as
 * an escape sequence; the "<N>" journal prefix stays intact. */
#include <stdlib.h>
#include <unistd.h>

#include "log.h"
#include "test.h"

static const char *esc(const char *s, size_t len)
{
    static char out[256];
    log_escape(out, sizeof(out), s, len);
    return out;
}

#define ESC(lit) esc(lit, sizeof(lit) - 1)

static void test_escape_controls(void)
{
    CHECK_STR(ESC("plain text, 100% ok"), "plain text, 100% ok");
    CHECK_STR(ESC("a\nb"), "a\\nb");
    CHECK_STR(ESC("a\r\nb"), "a\\r\\nb");
    CHECK_STR(ESC("tab\there"), "tab\\there");
    CHECK_STR(ESC("\x1b[31mred"), "\\x1B[31mred");
    CHECK_STR(ESC("del\x7f"), "del\\x7F");
    CHECK_STR(ESC("nul\0end"), "nul\\x00end");
    CHECK_STR(ESC("\x01\x1f"), "\\x01\\x1F");
    /* The backslash is escaped too, so "\n" in a name reads differently
     * from a newline. */
    CHECK_STR(ESC("C:\\new"), "C:\\\\new");
}

static void test_escape_every_byte(void)
{
    char out[8];
    for (int c = 0; c < 256; c++) {
        char in = (char)c;
        size_t n = log_escape(out, sizeof(out), &in, 1);
        CHECK(n == strlen(out));
        for (size_t i = 0; i < n; i++) {
            unsigned char o = (unsigned char)out[i];
            CHECK(o >= 0x20 && o != 0x7f);
        }
        if (c >= 0x20 && c != 0x7f && c != '\\')
            CHECK_INT(n, 1);
        else
            CHECK(n == 2 || n == 4);
    }
}

static void test_escape_c1_and_utf8(void)
{
    /* U+009B (CSI) in UTF-8 is escaped; other UTF-8 passes as it is. */
    CHECK_STR(ESC("\xc2\x9b"
                  "2J"),
              "\\xC2\\x9B2J");
    CHECK_STR(ESC("\xc2\x85"), "\\xC2\\x85");
    CHECK_STR(ESC("caf\xc3\xa9 \xc2\xa0"), "caf\xc3\xa9 \xc2\xa0");
    /* A lone C2 at the end is left alone (it is not a control). */
    CHECK_STR(ESC("x\xc2"), "x\xc2");
}

static void test_escape_never_splits(void)
{
    char out[5];
    /* "ab\n": "ab" and "\\n" need 4 bytes plus the NUL: all fit. */
    CHECK_INT(log_escape(out, sizeof(out), "ab\n", 3), 4);
    CHECK_STR(out, "ab\\n");
    /* "abc\n": the escape does not fit whole, so it is left out. */
    CHECK_INT(log_escape(out, sizeof(out), "abc\n", 4), 3);
    CHECK_STR(out, "abc");
    CHECK_INT(log_escape(out, 1, "abc", 3), 0);
    CHECK_STR(out, "");
}

/* Runs log_msg(level, "%s%s%s", before, arg, after) with stderr sent to a
 * file; returns what was written. */
static const char *capture(log_level_t level, const char *before, const char *arg,
                           const char *after)
{
    static char got[8192];
    char path[] = "/tmp/fetchd-test-log-XXXXXX";
    int fd = mkstemp(path);
    int saved = dup(2);
    ssize_t n;

    got[0] = '\0';
    if (fd < 0 || saved < 0)
        return got;
    unlink(path);
    fflush(stderr);
    dup2(fd, 2);
    if (before == NULL) /* log_text() with arg's first strlen(after) bytes */
        log_text(level, arg, strlen(after));
    else
        log_msg(level, "%s%s%s", before, arg, after);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    n = pread(fd, got, sizeof(got) - 1, 0);
    got[n > 0 ? n : 0] = '\0';
    close(fd);
    return got;
}

static size_t count_char(const char *s, char c)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == c;
    return n;
}

static void test_log_msg_writes_one_line(void)
{
    const char *forged = "/dl/a.fetchd-part-1\n2026-12-01T00:00:00.000 fetchd[error] forged";
    const char *got;

    unsetenv("JOURNAL_STREAM");
    log_init(LOG_LEVEL_INFO);
    got = capture(LOG_LEVEL_WARN, "", forged, ": cannot create");
    CHECK_INT(count_char(got, '\n'), 1);
    CHECK(got[strlen(got) - 1] == '\n');
    CHECK(strstr(got, "fetchd[warn] /dl/a.fetchd-part-1\\n2026-12-01") != NULL);
    CHECK(strstr(got, "\x1b") == NULL);
    got = capture(LOG_LEVEL_WARN, "server said ", "\x1b]0;title\x07\r", "");
    CHECK(strstr(got, "server said \\x1B]0;title\\x07\\r\n") != NULL);
    CHECK_INT(count_char(got, '\r'), 0);
    /* Below the threshold nothing is written. */
    got = capture(LOG_LEVEL_DEBUG, "", "hidden", "");
    CHECK_STR(got, "");
}

static void test_journal_prefix_intact(void)
{
    const char *got;

    setenv("JOURNAL_STREAM", "8:1234", 1);
    log_init(LOG_LEVEL_INFO);
    got = capture(LOG_LEVEL_WARN, "", "a\n<3>forged error", "");
    CHECK_STR(got, "<4>a\\n<3>forged error\n");
    got = capture(LOG_LEVEL_ERROR, "", "plain", "");
    CHECK_STR(got, "<3>plain\n");
    unsetenv("JOURNAL_STREAM");
    log_init(LOG_LEVEL_INFO);
}

static void test_long_message_is_cut_whole(void)
{
    static char big[3 * LOG_MAX_MESSAGE];
    const char *got;

    memset(big, '\n', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    setenv("JOURNAL_STREAM", "8:1234", 1);
    log_init(LOG_LEVEL_INFO);
    got = capture(LOG_LEVEL_NOTICE, "", big, "");
    CHECK_INT(count_char(got, '\n'), 1);
    CHECK(strncmp(got, "<5>\\n\\n", 7) == 0);
    CHECK(strlen(got) > 3 + 2 * (LOG_MAX_MESSAGE - 1));
    CHECK(strcmp(got + strlen(got) - 4, "...\n") == 0);
    unsetenv("JOURNAL_STREAM");
    log_init(LOG_LEVEL_INFO);
}

/* log_text(): the same line as log_msg() for a message already made, n
 * bytes of it (not up to a NUL), cut with "..." past LOG_MAX_MESSAGE. */
static void test_log_text(void)
{
    static char big[LOG_MAX_MESSAGE + 2];
    const char *got;

    setenv("JOURNAL_STREAM", "8:1234", 1);
    log_init(LOG_LEVEL_INFO);
    got = capture(LOG_LEVEL_INFO, NULL, "job 1 done\x1b]url=x and more", "01234567890123456");
    CHECK_STR(got, "<6>job 1 done\\x1B]url=x\n");
    got = capture(LOG_LEVEL_DEBUG, NULL, "hidden", "hidden");
    CHECK_STR(got, "");
    memset(big, 'a', sizeof(big) - 1);
    got = capture(LOG_LEVEL_INFO, NULL, big, big); /* LOG_MAX_MESSAGE + 1 bytes */
    CHECK_INT(strlen(got), 3 + LOG_MAX_MESSAGE + 4);
    CHECK(strcmp(got + strlen(got) - 5, "a...\n") == 0);
    unsetenv("JOURNAL_STREAM");
    log_init(LOG_LEVEL_INFO);
}

/* Batching: log_text() lines wait for log_flush(); a log_msg() line writes
 * them first, so the order holds; off flushes. */
static void test_batch(void)
{
    static char got[4096];
    char path[] = "/tmp/fetchd-test-log-XXXXXX";
    int fd = mkstemp(path), saved = dup(2);
    ssize_t n;
    off_t mark;

    CHECK(fd >= 0 && saved >= 0);
    unlink(path);
    setenv("JOURNAL_STREAM", "8:1234", 1);
    log_init(LOG_LEVEL_INFO);
    fflush(stderr);
    dup2(fd, 2);
    log_batch(1);
    log_text(LOG_LEVEL_INFO, "one", 3);
    log_text(LOG_LEVEL_INFO, "two", 3);
    mark = lseek(fd, 0, SEEK_END); /* nothing written yet */
    log_msg(LOG_LEVEL_WARN, "three");
    log_text(LOG_LEVEL_INFO, "four", 4);
    log_flush();
    log_text(LOG_LEVEL_INFO, "five", 4);
    log_batch(0);
    log_text(LOG_LEVEL_INFO, "six", 3);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    n = pread(fd, got, sizeof(got) - 1, 0);
    got[n > 0 ? n : 0] = '\0';
    close(fd);
    CHECK_INT(mark, 0);
    CHECK_STR(got, "<6>one\n<6>two\n<4>three\n<6>four\n<6>five\n<6>six\n");
    unsetenv("JOURNAL_STREAM");
    log_init(LOG_LEVEL_INFO);
}

TEST_MAIN(TEST_CASE(test_escape_controls), TEST_CASE(test_escape_every_byte),
          TEST_CASE(test_escape_c1_and_utf8), TEST_CASE(test_escape_never_splits),
          TEST_CASE(test_log_msg_writes_one_line), TEST_CASE(test_journal_prefix_intact),
          TEST_CASE(test_long_message_is_cut_whole), TEST_CASE(test_log_text),
          TEST_CASE(test_batch))
