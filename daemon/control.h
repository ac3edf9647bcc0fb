/* control — the control socket's server (proto/PROTOCOL.md): a Unix stream
 * socket, one JSON text per line each way. It accepts clients, splits their
 * bytes into lines, hands each line to the JSON-RPC framing (rpc.h), whose
 * calls run the methods (methods.h), and writes what they answer. Clients
 * submit and follow jobs; jobs never belong to the connection that
 * submitted them, so a client that goes away frees only its own waits and
 * subscriptions. Modules call down only: control -> methods -> rpc; the
 * framing and the methods reach a client through the rpc_peer_ops_t hooks
 * the server registers.
 *
 * Ownership: the control server owns its clients; a client owns its read
 * buffer, its queued writes and its methods session (its waits and
 * subscriptions). Every client handler runs inside a reference to the
 * client, so a disconnect inside it only marks the client (peer.closing).
 *
 * Walks: every walk over clients, a client's subscriptions or waits, a
 * job's waits or a batch's members either holds a reference on the element
 * it stands on or relies on the element being unlinked before anything is
 * sent; a client leaves the client list, and frees its subscriptions, only
 * when its last reference goes. Each walk (control.c, methods.c, rpc.c)
 * says which.
 *
 * Per client at most 10,000 open waits and 64 subscriptions (and 1 MiB of
 * ids held for each); a `submit` takes at most 10,000 specs within the
 * 1 MiB line (proto/PROTOCOL.md §2).
 */
#ifndef FETCHD_CONTROL_H
#define FETCHD_CONTROL_H

#include <stddef.h>
#include <uv.h>

#include "daemon.h"
#include "jsonr.h"
#include "methods.h"

typedef struct ctl_client ctl_client_t;

typedef struct control {
    daemon_t *d;          /* borrowed */
    char *path;           /* owned: the socket path */
    unsigned max_clients; /* read-only: the daemon's max_clients */
    size_t max_line;      /* public: 1 MiB */
    size_t max_output;    /* public: unsent bytes per client before it is dropped, 8 MiB;
                           * a client's batch answers are held to the value at its accept */
    unsigned nclients;    /* read-only */
    unsigned nreading;    /* read-only: read buffers held while clients' lines are answered;
                           * stats and /metrics leave them out of "in use" */
    /* private */
    uv_pipe_t server;
    uv_pipe_t reject; /* accepts and closes a connection when a client cannot be allocated */
    int listening, closing, rejecting, reject_waiting;
    ctl_client_t *clients; /* owned */
    ctl_client_t *pending; /* clients with lines queued this loop turn (each holds a reference) */
    uv_prepare_t flush;    /* before the loop waits: one write per pending client */
    int flush_on;          /* it is initialised (closed by control_close()) */
    methods_t methods;     /* what the clients' method sessions share */
    jsonr_t reader;        /* parses every client's lines: one line is handled at a time, and
                            * a shared reader leaves an idle client holding no block */
    strbuf_t event_job;    /* the job text of this turn's events (see control_on_event()) */
    int event_busy;        /* an event is being sent with it */
} control_t;

/* Binds and listens on path (mode 0660 under systemd, else 0600), replacing
 * a stale socket file but refusing when a live daemon answers on it.
 * Returns 0, or an error with errmsg naming the path and the reason. */
int control_start(control_t *ctl, daemon_t *d, const char *path, char *errmsg, size_t errlen);

/* Serves on a listening socket systemd passed (socket activation). */
int control_start_fd(control_t *ctl, daemon_t *d, int fd, char *errmsg, size_t errlen);

/* Stops listening, disconnects every client (their waits and
 * subscriptions are freed; jobs are untouched) and removes the socket
 * file. Run the loop afterwards so the handles close. */
void control_close(control_t *ctl);

/* Answers waits and notifies subscribers of a job event; whoever observes
 * the scheduler forwards its events here. data is the control_t. */
void control_on_event(sched_t *s, job_t *j, sched_event_t ev, void *data);

/* Writes the default socket path into buf (see proto/PROTOCOL.md): under
 * systemd $RUNTIME_DIRECTORY/control.sock, else
 * $XDG_RUNTIME_DIR/fetchd/control.sock, else /tmp/fetchd-$UID/control.sock.
 * Returns 0, or -1 when it does not fit. */
int control_default_path(char *buf, size_t len);

#endif
