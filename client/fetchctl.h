/* fetchctl — the command-line client of fetchd's control socket.
 *
 * fetchctl.c holds main(), the option parsing shared by every command, the
 * output helpers and the small commands; submit.c holds `submit`, the one
 * command with a pipeline of its own. Every command returns an exit code.
 */
#ifndef FETCHCTL_H
#define FETCHCTL_H

#include <stddef.h>
#include <jansson.h>

#include "rpc.h"

/* Exit codes (the same in fetchctl(1) and proto/PROTOCOL.md). */
enum {
    EXIT_OK = 0,          /* success */
    EXIT_JOB = 1,         /* wait, submit --wait: a job failed or was cancelled */
    EXIT_USAGE = 2,       /* bad command line or unreadable input file */
    EXIT_UNREACHABLE = 3, /* no daemon answered on the socket */
    EXIT_SERVER = 4,      /* an error response, a lost connection, an invalid job */
    EXIT_SIGNAL = 130     /* interrupted (SIGINT or SIGTERM) while waiting */
};

/* Options that each command accepts too, besides its own. */
#define CTL_OPT_SOCKET 's'
#define CTL_OPT_JSON   1000
#define CTL_OPT_HELP   'h'

/* What every command works with. */
typedef struct ctl {
    const char *socket; /* borrowed: from argv or the environment, or socket_buf */
    char socket_buf[256];
    int json;           /* --json: machine output */
    int progress;       /* a progress line may be drawn on stderr */
    int progress_shown; /* it is on screen now */
    rpc_t rpc;          /* owned once connected */
    int connected;
} ctl_t;

/* Handles a global option returned by getopt_long (-s, --json, -h is not
 * one of them); returns 1 when opt was one. */
int ctl_global_option(ctl_t *c, int opt, const char *arg);

/* Prints "Try 'fetchctl CMD --help'." and returns EXIT_USAGE. */
int ctl_usage_error(const char *cmd);

/* Connects to the daemon; on failure prints which socket was tried and how
 * to start fetchd, and returns EXIT_UNREACHABLE. */
int ctl_connect(ctl_t *c);

/* The next message from the daemon in *msg (a new reference): 0, or an exit
 * code after printing why there is none (lost connection, interrupt, an
 * error the daemon sent outside any call). */
int ctl_recv(ctl_t *c, json_t **msg);

/* The responses in msg (one object or a batch array): count and item. */
size_t ctl_msg_count(json_t *msg);
json_t *ctl_msg_item(json_t *msg, size_t i);

/* The id of a response, or 0 when it has none that fetchctl sent. */
json_int_t ctl_resp_id(json_t *resp);

/* Prints "fetchctl: [what: ]message" for an error response's error object
 * and returns EXIT_SERVER. what may be NULL. */
int ctl_print_error(const char *what, json_t *error);

/* Prints a job: one readable line "ID STATE HTTP BYTES URL [code: message]",
 * or with --json the object on one line. */
void ctl_print_job(ctl_t *c, json_t *job);

/* Prints what a job object says of its final response, indented under its
 * line: redirects, final URL, content type and length, ETag, Last-Modified
 * and kept header fields. Nothing with --json. */
void ctl_print_details(ctl_t *c, json_t *job);

/* 1 when job (a job object) finished in state "done". */
int ctl_job_done(json_t *job);

/* Draws or updates the "N of M finished" line on stderr (when allowed), and
 * removes it before normal output. */
void ctl_progress(ctl_t *c, size_t done, size_t total);
void ctl_progress_clear(ctl_t *c);

/* Flushes stdout; returns 0, or EXIT_SERVER after reporting a write error. */
int ctl_flush(void);

int cmd_submit(ctl_t *c, int argc, char **argv);

#endif
