/* sd — the systemd protocols fetchd speaks, implemented directly: service
 * notification (READY=1, RELOADING=1, STOPPING=1, STATUS=, WATCHDOG=1) over
 * the datagram socket in $NOTIFY_SOCKET, and socket activation
 * ($LISTEN_FDS, $LISTEN_PID, $LISTEN_FDNAMES). They are a few lines of
 * sendmsg() and getenv(); linking libsystemd for them would add a
 * dependency to every build. Outside systemd all of this does nothing.
 */
#ifndef FETCHD_SD_H
#define FETCHD_SD_H

#include <stdint.h>
#include <uv.h>

typedef struct sd {
    int notify_fd;                                        /* private: -1 without $NOTIFY_SOCKET */
    uint64_t watchdog_usec;                               /* read-only: 0 without a watchdog */
    uv_timer_t watchdog;                                  /* private */
    uv_timer_t status;                                    /* private: refreshes STATUS= */
    int timers_open;                                      /* private */
    void (*status_cb)(char *buf, size_t len, void *data); /* public: writes the STATUS= text */
    void *status_data;                                    /* public */
} sd_t;

/* Reads $NOTIFY_SOCKET and $WATCHDOG_USEC (honouring $WATCHDOG_PID), and
 * starts the watchdog timer at half the interval. Returns 0 (also when not
 * under systemd). */
int sd_init(sd_t *sd, uv_loop_t *loop);

/* Sends one notification such as "READY=1"; ignored outside systemd. */
void sd_notify(sd_t *sd, const char *state);

/* Sends READY=1 with a fresh STATUS= line and keeps STATUS= current every
 * few seconds from then on. */
void sd_ready(sd_t *sd);

/* Stops the timers (closing them); run the loop afterwards. */
void sd_close(sd_t *sd);

/* The socket systemd passed with the given name (LISTEN_FDNAMES), or the
 * first one when name is NULL or no names were given; -1 when none. */
int sd_listen_fd(const char *name);

#endif
