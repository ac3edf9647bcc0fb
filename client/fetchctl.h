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

#include "jdump.h"
#include "jsonr.h"
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
    jdump_t dump; /* owned: --json output is written here, then to stdout */
} ctl_t;

/* Handles a global option returned by getopt_long (-s, --json, -h is not
 * one of them); returns 1 when opt was one. */
int ctl_global_option(ctl_t *c, int opt, const char *arg);

/* Prints "Try 'fetchctl CMD --help'." and returns EXIT_USAGE. */
int ctl_usage_error(const char *cmd);

/* Connects to the daemon; on failure prints which socket was tried and how
 * to start fetchd, and returns EXIT_UNREACHABLE. */
int ctl_connect(ctl_t *c);

/* Reads the next message from the daemon into c->rpc.msg (borrowed until
 * the next read): 0, or an exit code after printing why there is none (lost
 * connection, interrupt, an error the daemon sent outside any call). */
int ctl_recv(ctl_t *c);

/* The responses in a message (one object or a batch array): the first one
 * (JSONR_NONE for an empty batch), then jsonr_next() of each. */
uint32_t ctl_msg_first(const jsonr_t *m);

/* Readings of message values as jansson gave them to fetchctl: an
 * integer's value or 0 (json_integer_value); a string up to its first NUL,
 * *len long, or NULL (json_string_value); whether v is the string s
 * (strcmp). v may be JSONR_NONE. */
long long ctl_int(const jsonr_t *m, uint32_t v);
const char *ctl_str(const jsonr_t *m, uint32_t v, size_t *len);
int ctl_str_is(const jsonr_t *m, uint32_t v, const char *s);

/* The members of a job object that fetchctl reads for every job, found in
 * one pass over it (JSONR_NONE when absent; of a repeated key the last, as
 * jsonr_get() finds it). */
typedef struct ctl_job {
    uint32_t id, state, url, http_status, bytes, error;
} ctl_job_t;

void ctl_job_read(const jsonr_t *m, uint32_t job, ctl_job_t *j);

/* The id of a response, or 0 when it has none that fetchctl sent. */
json_int_t ctl_resp_id(const jsonr_t *m, uint32_t resp);

/* Prints "fetchctl: [what: ]message" for an error response's error object
 * (JSONR_NONE when there is none) and returns EXIT_SERVER. what may be
 * NULL. */
int ctl_print_error(const char *what, const jsonr_t *m, uint32_t error);

/* Prints a job: one readable line "ID STATE HTTP BYTES URL [code: message]",
 * or with --json the object on one line. */
void ctl_print_job(ctl_t *c, const jsonr_t *m, uint32_t job);

/* Prints what a job object says of its final response, indented under its
 * line: redirects, final URL, content type and length, ETag, Last-Modified
 * and kept header fields. Nothing with --json. */
void ctl_print_details(ctl_t *c, const jsonr_t *m, uint32_t job);

/* Writes value v as one line of compact JSON (as jansson's json_dumpf
 * would) to stdout. */
void ctl_print_json(ctl_t *c, const jsonr_t *m, uint32_t v);

/* 1 when job (a job object) finished in state "done". */
int ctl_job_done(const jsonr_t *m, uint32_t job);

/* Draws or updates the "N of M finished" line on stderr (when allowed), and
 * removes it before normal output. */
void ctl_progress(ctl_t *c, size_t done, size_t total);
void ctl_progress_clear(ctl_t *c);

/* Flushes stdout; returns 0, or EXIT_SERVER after reporting a write error. */
int ctl_flush(void);

int cmd_submit(ctl_t *c, int argc, char **argv);

#endif
