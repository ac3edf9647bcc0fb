/* sd — systemd notification and socket activation; see sd.h. */
#include "sd.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define SD_LISTEN_FDS_START 3
#define SD_STATUS_EVERY_MS  5000

static void on_watchdog(uv_timer_t *t)
{
    sd_notify(t->data, "WATCHDOG=1");
}

static void on_status(uv_timer_t *t)
{
    sd_t *sd = t->data;
    char line[300], text[256];

    if (sd->status_cb == NULL)
        return;
    sd->status_cb(text, sizeof(text), sd->status_data);
    snprintf(line, sizeof(line), "STATUS=%s", text);
    sd_notify(sd, line);
}

static int open_notify_socket(void)
{
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa;
    socklen_t len;
    int fd;

    if (path == NULL || (path[0] != '/' && path[0] != '@') || strlen(path) >= sizeof(sa.sun_path))
        return -1;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path));
    if (path[0] == '@')
        sa.sun_path[0] = '\0'; /* the abstract namespace */
    len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path));
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, len) != 0) {
        log_warn("systemd: cannot reach NOTIFY_SOCKET %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

int sd_init(sd_t *sd, uv_loop_t *loop)
{
    const char *usec = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");

    memset(sd, 0, sizeof(*sd));
    sd->notify_fd = open_notify_socket();
    uv_timer_init(loop, &sd->watchdog);
    uv_timer_init(loop, &sd->status);
    sd->watchdog.data = sd->status.data = sd;
    sd->timers_open = 2;
    if (sd->notify_fd >= 0 && usec && (pid == NULL || atol(pid) == (long)getpid())) {
        sd->watchdog_usec = strtoull(usec, NULL, 10);
        if (sd->watchdog_usec > 0) {
            /* Half the interval, as sd_watchdog_enabled(3) advises. */
            uint64_t every = sd->watchdog_usec / 2000;
            if (every == 0)
                every = 1;
            uv_timer_start(&sd->watchdog, on_watchdog, every, every);
            log_info("systemd: watchdog every %llu ms", (unsigned long long)every);
        }
    }
    return 0;
}

void sd_notify(sd_t *sd, const char *state)
{
    if (sd->notify_fd < 0)
        return;
    if (send(sd->notify_fd, state, strlen(state), MSG_NOSIGNAL) < 0)
        log_warn("systemd: notify \"%s\" failed: %s", state, strerror(errno));
}

void sd_ready(sd_t *sd)
{
    char text[256], line[300];

    if (sd->status_cb) {
        sd->status_cb(text, sizeof(text), sd->status_data);
        snprintf(line, sizeof(line), "READY=1\nSTATUS=%s", text);
        sd_notify(sd, line);
    } else {
        sd_notify(sd, "READY=1");
    }
    if (sd->notify_fd >= 0 && !uv_is_active((uv_handle_t *)&sd->status))
        uv_timer_start(&sd->status, on_status, SD_STATUS_EVERY_MS, SD_STATUS_EVERY_MS);
}

static void on_timer_closed(uv_handle_t *h)
{
    sd_t *sd = h->data;
    if (--sd->timers_open == 0 && sd->notify_fd >= 0) {
        close(sd->notify_fd);
        sd->notify_fd = -1;
    }
}

void sd_close(sd_t *sd)
{
    if (sd->timers_open != 2)
        return;
    uv_close((uv_handle_t *)&sd->watchdog, on_timer_closed);
    uv_close((uv_handle_t *)&sd->status, on_timer_closed);
}

int sd_listen_fd(const char *name)
{
    const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
    const char *names = getenv("LISTEN_FDNAMES");
    long n, index = 0;

    if (pid == NULL || fds == NULL || atol(pid) != (long)getpid())
        return -1;
    n = atol(fds);
    if (n <= 0)
        return -1;
    if (name != NULL && names != NULL) {
        /* LISTEN_FDNAMES is ':'-separated, one name per descriptor. */
        const char *p = names;
        size_t len = strlen(name);
        for (index = 0; index < n; index++) {
            size_t seg = strcspn(p, ":");
            if (seg == len && strncmp(p, name, len) == 0)
                break;
            p += seg;
            if (*p == '\0') {
                index = n;
                break;
            }
            p++;
        }
        if (index >= n)
            return -1;
    }
    return SD_LISTEN_FDS_START + (int)index;
}
