/* service — fetchd as a long-running service: the daemon, its control and
 * metrics sockets, systemd notification, signals, configuration reload,
 * the graceful stop and queue persistence.
 *
 * Start: restore the persisted queue, open the control socket (or take the
 * one systemd passed), open the metrics endpoint, then READY=1.
 * SIGHUP: RELOADING=1, re-read the configuration (a bad one is reported and
 * the old one kept), READY=1. SIGTERM/SIGINT: STOPPING=1, refuse new jobs,
 * give running ones the grace period, persist what has not finished,
 * cancel the rest with "shutdown", exit 0 (1 when that last save failed).
 * A state dir fetchd cannot write in is refused at start (exit 78).
 */
#ifndef FETCHD_SERVICE_H
#define FETCHD_SERVICE_H

#include "daemon.h"

/* Runs fetchd until it is stopped. cfg (taken over) holds the configuration
 * argv gave; argc/argv are kept to apply the same options again on SIGHUP.
 * Returns the process exit status. */
int service_run(daemon_config_t *cfg, int argc, char **argv);

#endif
