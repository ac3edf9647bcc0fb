/* fetchd — the daemon's entry point: the command line, then the service
 * (daemon/service.c) runs until SIGTERM or SIGINT. */
#include <signal.h>
#include <stdio.h>

#include "config.h"
#include "log.h"
#include "mem.h"
#include "service.h"
#include "tls.h"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: fetchd [OPTIONS]\n"
            "Event-driven HTTP(S) fetcher daemon. Runs in the foreground and logs to stderr.\n"
            "\n"
            "  -c, --config FILE        JSON configuration file (keys are the long option\n"
            "                           names with '_' for '-'); options given here override it;\n"
            "                           SIGHUP re-reads it\n"
            "      --control PATH       control socket (default: $RUNTIME_DIRECTORY/control.sock\n"
            "                           under systemd, else $XDG_RUNTIME_DIR/fetchd/control.sock,\n"
            "                           else /tmp/fetchd-$UID/control.sock)\n"
            "      --metrics HOST:PORT  Prometheus endpoint (default 127.0.0.1:9464; 'off'\n"
            "                           disables it; port 0 picks a free port and logs it)\n"
            "      --download-dir DIR   jobs may write output files only under DIR;\n"
            "                           without it file output is refused\n"
            "      --state-dir DIR      keep unfinished jobs in DIR/queue.json across restarts\n"
            "                           (DIR must exist and be writable)\n"
            "      --max-connections N  open connections in all (default 256)\n"
            "      --max-per-host N     open connections per origin (default 32)\n"
            "      --max-jobs N         queued jobs; more are refused (default 100000)\n"
            "      --max-queue-bytes N  memory queued jobs may hold; more are refused\n"
            "                           (default 268435456, 256 MiB)\n"
            "      --max-running N      jobs running at once (default 1024)\n"
            "      --max-clients N      control socket clients at once (default 64)\n"
            "      --idle-timeout SEC   close pooled connections idle this long (default 30)\n"
            "      --deny-networks LIST never connect to these networks (comma-separated\n"
            "                           CIDRs; 'default' stands for link-local, cloud\n"
            "                           metadata, 0.0.0.0/8 and ::/128, the default)\n"
            "      --allow-networks LIST exceptions to --deny-networks\n"
            "      --proxy URL          http://, socks5:// or socks5h:// proxy (\"\" direct;\n"
            "                           default: http_proxy, https_proxy, all_proxy)\n"
            "      --no-proxy LIST      hosts fetched directly (default: no_proxy)\n"
            "      --overwrite POLICY   replace, never or newer: what jobs do to an existing\n"
            "                           output file (default replace)\n"
            "      --partial-keep SEC   keep resumable partial files this long (default 86400)\n"
            "      --decode on|off      jobs ask for and decode gzip, deflate, br and zstd\n"
            "                           unless they say \"decode\": false (default off)\n"
            "      --decode-max-ratio N a decoded body may be at most N times its encoded\n"
            "                           size past 1 MiB (default 1000; 0: no cap)\n"
            "      --host-limits JSON   per-host request rates and delays (see fetchd(8)):\n"
            "                           [{\"host\":\"*.example.com\",\"rate\":2,\"burst\":4}]\n"
            "      --bandwidth RATE     body bytes/s of all jobs together (default 0: none);\n"
            "                           RATE takes K, M or G (1024s): 100K, 1.5M\n"
            "      --limit-rate RATE    body bytes/s of a job that sets none (default 0: none)\n"
            "      --max-limit-rate RATE  the most bytes/s a job may ask for (default 0: no cap)\n"
            "      --progress-interval MS  a running job's progress sample and event, at most\n"
            "                           one per MS milliseconds (default 500)\n"
            "      --ca-file FILE       CA bundle that verifies https servers (default\n"
            "                           " TLS_DEFAULT_CA_FILE ")\n"
            "      --client-cert FILE   client certificate (PEM) for https servers that ask\n"
            "      --client-key FILE    its private key (PEM)\n"
            "      --retain-jobs N      finished jobs kept for status queries (default 10000)\n"
            "      --retain-seconds S   how long finished jobs are kept (default 3600)\n"
            "      --pause-keep SEC     how long a paused job keeps its connection (default:\n"
            "                           the idle timeout)\n"
            "      --queue URL          also take jobs from a Redis stream's consumer group:\n"
            "                           redis://[USER:PASS@]HOST:PORT/STREAM?group=G&...\n"
            "                           (see fetchd(8))\n"
            "      --shutdown-grace S   on SIGTERM, how long running jobs may finish (default 20)\n"
            "      --log-level LEVEL    error, warn, notice, info (default) or debug\n"
            "      --log-jobs on|off    one info line per finished job (default on)\n"
            "      --history-interval S the page's sampling interval (default 10)\n"
            "      --history-warmup S   when the page marks each gauge's level (default 300)\n"
            "  -h, --help               show this help and exit\n"
            "  -V, --version            show the version and exit\n"
            "\n"
            "Signals: SIGHUP reloads the configuration; SIGTERM and SIGINT stop gracefully\n"
            "(a second one stops at once).\n"
            "Exit status: 0 after a clean stop, 64 on a usage error, 78 on a bad\n"
            "configuration (or a state directory it cannot write in), 1 on any other\n"
            "failure (such as a queue that could not be saved at the stop).\n");
}

int main(int argc, char **argv)
{
    daemon_config_t cfg;
    const char *config_path;
    char err[600];
    int rc;

    if (mem_install() != 0) {
        fprintf(stderr, "fetchd: cannot install the counting allocator\n");
        return 1;
    }
    daemon_config_init(&cfg);
    rc = config_from_args(&cfg, argc, argv, &config_path, err, sizeof(err));
    if (rc == CONFIG_HELP || rc == CONFIG_VERSION) {
        if (rc == CONFIG_HELP)
            usage(stdout);
        else
            printf("fetchd %s\n", FETCHD_VERSION);
        daemon_config_dispose(&cfg);
        return 0;
    }
    if (rc != 0) {
        fprintf(stderr, "fetchd: %s\n", err);
        daemon_config_dispose(&cfg);
        return rc;
    }
    log_init(cfg.log_level);
    signal(SIGPIPE, SIG_IGN);
    return service_run(&cfg, argc, argv);
}
