/* Unit tests for daemon/metrics.c's HTTP server, driven the way a fuzzer
 * drives it, through metrics.h alone: a daemon, the endpoint on
 * 127.0.0.1:0 (m->port), plain TCP clients, and the loop run until the
 * expected event happens (bounded in turns). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mem.h"
#include "metrics.h"
#include "test.h"

#define MAX_TURNS 20000 /* loop turns to wait for one event (each up to 1 ms) */

static daemon_t d;
static metrics_t m;
static uv_timer_t tick; /* keeps each loop turn short */

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static int setup(void)
{
    daemon_config_t cfg;
    char err[256];

    daemon_config_init(&cfg);
    cfg.log_level = LOG_LEVEL_ERROR;
    log_set_level(LOG_LEVEL_ERROR);
    if (daemon_init(&d, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "daemon_init: %s\n", err);
        return -1;
    }
    uv_timer_init(&d.loop, &tick);
    uv_timer_start(&tick, on_tick, 1, 1);
    if (metrics_start(&m, &d, NULL, "127.0.0.1:0", err, sizeof(err)) != 0) {
        fprintf(stderr, "metrics_start: %s\n", err);
        return -1;
    }
    return 0;
}

static void teardown(void)
{
    uint64_t blocks;

    metrics_close(&m);
    uv_close((uv_handle_t *)&tick, NULL);
    daemon_close(&d);
    uv_run(&d.loop, UV_RUN_DEFAULT);
    CHECK_INT(d.stats.objects[STATS_OBJ_METRICS_CLIENT], 0);
    CHECK_INT(daemon_dispose(&d), 0);
    mem_get(MEM_FETCHD, &blocks, NULL);
    CHECK_INT(blocks, 0);
}

static int client(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)m.port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* A loopback connect completes in the kernel, before the accept. */
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        perror("connect");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, O_NONBLOCK);
    return fd;
}

/* Runs the loop until fd is closed by the endpoint (1, with what it sent
 * before in out) or MAX_TURNS turns passed (0). */
static int until_closed(int fd, char *out, size_t outlen)
{
    size_t got = 0;

    out[0] = '\0';
    for (int i = 0; i < MAX_TURNS; i++) {
        ssize_t n;
        uv_run(&d.loop, UV_RUN_ONCE);
        while ((n = recv(fd, out + got, outlen - 1 - got, 0)) > 0)
            got += (size_t)n;
        out[got] = '\0';
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
            return 1;
    }
    return 0;
}

static void until_clients(unsigned n)
{
    for (int i = 0; i < MAX_TURNS && m.nclients != n; i++)
        uv_run(&d.loop, UV_RUN_ONCE);
    CHECK_INT(m.nclients, n);
}

static void send_str(int fd, const char *s)
{
    CHECK_INT(send(fd, s, strlen(s), MSG_NOSIGNAL), (long long)strlen(s));
}

static const char healthz[] = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

static void test_port_zero_and_healthz(void)
{
    char out[4096];
    int fd = client();

    CHECK(m.port > 0);
    CHECK(fd >= 0);
    if (fd < 0)
        return;
    send_str(fd, healthz);
    CHECK(until_closed(fd, out, sizeof(out)));
    CHECK(strncmp(out, "HTTP/1.1 200 OK\r\n", 17) == 0);
    CHECK(strstr(out, "\r\n\r\nok\n") != NULL);
    close(fd);
}

static void test_allocation_failure_on_accept(void)
{
    char out[4096];
    int fd = client();

    CHECK(fd >= 0);
    if (fd < 0)
        return;
    /* The next fetchd allocation is the client of this connection. */
    mem_fail_after(1);
    send_str(fd, healthz);
    CHECK(until_closed(fd, out, sizeof(out)));
    CHECK_STR(out, "");
    CHECK(!mem_fail_pending());
    mem_fail_after(0);
    close(fd);
    /* The endpoint still accepts and answers. */
    fd = client();
    CHECK(fd >= 0);
    if (fd < 0)
        return;
    send_str(fd, healthz);
    CHECK(until_closed(fd, out, sizeof(out)));
    CHECK(strncmp(out, "HTTP/1.1 200 OK\r\n", 17) == 0);
    close(fd);
}

static void test_request_deadline_is_not_moved_by_bytes(void)
{
    uint64_t before = m.closed[METRICS_CLOSE_REQUEST_TIMEOUT];
    char out[256];
    int fd = client(), closed = 0;

    m.request_timeout_ms = 200;
    CHECK(fd >= 0);
    if (fd < 0)
        return;
    send_str(fd, "GET /metrics HTTP/1.1\r\nX-Slow: ");
    /* One byte every few turns: the connection must still be closed. */
    for (int i = 0; i < MAX_TURNS && !closed; i++) {
        ssize_t n;
        if (i % 5 == 0)
            (void)send(fd, "a", 1, MSG_NOSIGNAL);
        uv_run(&d.loop, UV_RUN_ONCE);
        n = recv(fd, out, sizeof(out), 0);
        closed = n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
    }
    CHECK(closed);
    CHECK_INT(m.closed[METRICS_CLOSE_REQUEST_TIMEOUT], before + 1);
    m.request_timeout_ms = METRICS_REQUEST_TIMEOUT_MS;
    close(fd);
    until_clients(0);
}

static void test_full_slots_evict_the_oldest(void)
{
    uint64_t before = m.closed[METRICS_CLOSE_EVICTED];
    char out[4096];
    int a = client(), b = client(), c;

    m.max_clients = 2;
    CHECK(a >= 0 && b >= 0);
    until_clients(2);
    c = client();
    CHECK(c >= 0);
    if (a < 0 || b < 0 || c < 0)
        return;
    send_str(c, healthz);
    CHECK(until_closed(c, out, sizeof(out)));
    CHECK(strncmp(out, "HTTP/1.1 200 OK\r\n", 17) == 0);
    /* a, silent since it connected first, made room; b is still there. */
    CHECK(until_closed(a, out, sizeof(out)));
    CHECK_STR(out, "");
    CHECK_INT(m.closed[METRICS_CLOSE_EVICTED], before + 1);
    CHECK_INT(m.nclients, 1);
    m.max_clients = METRICS_MAX_CLIENTS;
    close(a);
    close(b);
    close(c);
    until_clients(0);
}

int main(void)
{
    static const test_case_t cases[] = {
        TEST_CASE(test_port_zero_and_healthz),
        TEST_CASE(test_allocation_failure_on_accept),
        TEST_CASE(test_request_deadline_is_not_moved_by_bytes),
        TEST_CASE(test_full_slots_evict_the_oldest),
    };
    int rc;

    signal(SIGPIPE, SIG_IGN);
    if (mem_install() != 0 || setup() != 0)
        return 1;
    rc = test_main(cases, sizeof(cases) / sizeof(cases[0]));
    test_checks_failed_in_case_ = 0;
    teardown();
    if (test_checks_failed_in_case_ != 0) {
        printf("FAIL teardown\n");
        rc = 1;
    }
    return rc;
}
