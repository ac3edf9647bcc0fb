/* fetchd — the daemon's entry point: options, configuration, signals, and
 * the loop. Everything else lives in the engine (libfetchd). */
#include <getopt.h>
#include <unistd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "control.h"
#include "daemon.h"
#include "err.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"

#define EX_USAGE  64
#define EX_CONFIG 78

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: fetchd [OPTIONS]\n"
            "Event-driven HTTP fetcher daemon. Runs in the foreground and logs to stderr.\n"
            "\n"
            "  -c, --config FILE        JSON configuration file (keys are the long option\n"
            "                           names with '_' for '-'); later options override it\n"
            "      --control PATH       control socket (default: $RUNTIME_DIRECTORY/control.sock\n"
            "                           under systemd, else $XDG_RUNTIME_DIR/fetchd/control.sock,\n"
            "                           else /tmp/fetchd-$UID/control.sock)\n"
            "      --metrics HOST:PORT  Prometheus endpoint (default 127.0.0.1:9464; 'off'\n"
            "                           disables it; port 0 picks a free port and logs it)\n"
            "      --download-dir DIR   jobs may write output files only under DIR;\n"
            "                           without it file output is refused\n"
            "      --state-dir DIR      where queued jobs will be persisted (not yet used)\n"
            "      --max-connections N  open connections in all (default 256)\n"
            "      --max-per-host N     open connections per origin (default 32)\n"
            "      --max-jobs N         queued jobs; more are refused (default 1000000)\n"
            "      --max-running N      jobs running at once (default 1024)\n"
            "      --idle-timeout SEC   close pooled connections idle this long (default 30)\n"
            "      --ca-file FILE       CA bundle that verifies https servers (default\n"
            "                           " TLS_DEFAULT_CA_FILE ")\n"
            "      --client-cert FILE   client certificate (PEM) for https servers that ask\n"
            "      --client-key FILE    its private key (PEM)\n"
            "      --retain-jobs N      finished jobs kept for status queries (default 10000)\n"
            "      --retain-seconds S   how long finished jobs are kept (default 3600)\n"
            "      --log-level LEVEL    error, warn, notice, info (default) or debug\n"
            "  -h, --help               show this help and exit\n"
            "  -V, --version            show the version and exit\n"
            "\n"
            "Exit status: 0 after a clean stop (SIGINT or SIGTERM), 64 on a usage error,\n"
            "78 on a bad configuration, 1 on any other failure.\n");
}

static const struct option long_options[] = {
    {"config", required_argument, NULL, 'c'},
    {"control", required_argument, NULL, 0},
    {"metrics", required_argument, NULL, 0},
    {"download-dir", required_argument, NULL, 0},
    {"state-dir", required_argument, NULL, 0},
    {"max-connections", required_argument, NULL, 0},
    {"max-per-host", required_argument, NULL, 0},
    {"max-jobs", required_argument, NULL, 0},
    {"max-running", required_argument, NULL, 0},
    {"idle-timeout", required_argument, NULL, 0},
    {"ca-file", required_argument, NULL, 0},
    {"client-cert", required_argument, NULL, 0},
    {"client-key", required_argument, NULL, 0},
    {"retain-jobs", required_argument, NULL, 0},
    {"retain-seconds", required_argument, NULL, 0},
    {"log-level", required_argument, NULL, 0},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

/* "max-connections" -> "max_connections", the configuration key. */
static void option_key(const char *name, char *key, size_t len)
{
    size_t i;
    for (i = 0; name[i] && i + 1 < len; i++)
        key[i] = name[i] == '-' ? '_' : name[i];
    key[i] = '\0';
}

/* Options are applied in two passes so that -c FILE is read first and every
 * other option overrides it, wherever it stands. */
static int parse_args(int argc, char **argv, daemon_config_t *cfg)
{
    char err[512], key[64];
    int c, idx;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":c:hV", long_options, &idx)) != -1) {
        switch (c) {
        case 'c':
            if (config_load_file(cfg, optarg, err, sizeof(err)) != 0) {
                fprintf(stderr, "fetchd: bad configuration: %s\n", err);
                return EX_CONFIG;
            }
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case 'V':
            printf("fetchd %s\n", FETCHD_VERSION);
            exit(0);
        case 0:
            break;
        case ':':
            fprintf(stderr, "fetchd: option %s needs a value\n", argv[optind - 1]);
            return EX_USAGE;
        default:
            fprintf(stderr, "fetchd: unknown option %s (see fetchd --help)\n", argv[optind - 1]);
            return EX_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "fetchd: unexpected argument \"%s\" (see fetchd --help)\n", argv[optind]);
        return EX_USAGE;
    }
    optind = 1;
    while ((c = getopt_long(argc, argv, ":c:hV", long_options, &idx)) != -1) {
        if (c != 0)
            continue;
        option_key(long_options[idx].name, key, sizeof(key));
        if (config_set(cfg, key, optarg, err, sizeof(err)) != 0) {
            fprintf(stderr, "fetchd: --%s: %s\n", long_options[idx].name, err);
            return EX_USAGE;
        }
    }
    return 0;
}

typedef struct signals {
    uv_signal_t sigint, sigterm;
    daemon_t *d;
    control_t *ctl;
    metrics_t *metrics;
} signals_t;

static void on_signal(uv_signal_t *h, int signum)
{
    signals_t *s = h->data;
    log_notice("received %s; stopping", signum == SIGINT ? "SIGINT" : "SIGTERM");
    metrics_close(s->metrics);
    control_close(s->ctl);
    daemon_close(s->d);
    uv_close((uv_handle_t *)&s->sigint, NULL);
    uv_close((uv_handle_t *)&s->sigterm, NULL);
}

int main(int argc, char **argv)
{
    daemon_config_t cfg;
    daemon_t d;
    control_t ctl;
    metrics_t metrics = {0};
    signals_t sig;
    char err[512], path[256];
    int rc;

    if (mem_install() != 0) {
        fprintf(stderr, "fetchd: cannot install the counting allocator\n");
        return 1;
    }
    daemon_config_init(&cfg);
    rc = parse_args(argc, argv, &cfg);
    if (rc != 0) {
        daemon_config_dispose(&cfg);
        return rc;
    }
    log_init(cfg.log_level);
    signal(SIGPIPE, SIG_IGN);
    if (daemon_init(&d, &cfg, err, sizeof(err)) != 0) {
        log_error("%s", err);
        return EX_CONFIG;
    }
    if (d.cfg.control_path == NULL && control_default_path(path, sizeof(path)) != 0) {
        log_error("the default control socket path is too long; use --control");
        rc = 1;
        goto fail;
    }
    if (control_start(&ctl, &d, d.cfg.control_path ? d.cfg.control_path : path, err, sizeof(err)) !=
        0) {
        log_error("%s", err);
        rc = 1;
        goto fail;
    }
    if (strcmp(d.cfg.metrics_addr ? d.cfg.metrics_addr : "127.0.0.1:9464", "off") != 0 &&
        metrics_start(&metrics, &d, &ctl,
                      d.cfg.metrics_addr ? d.cfg.metrics_addr : "127.0.0.1:9464", err,
                      sizeof(err)) != 0) {
        log_error("%s", err);
        control_close(&ctl);
        rc = 1;
        goto fail;
    }
    sig.d = &d;
    sig.ctl = &ctl;
    sig.metrics = &metrics;
    uv_signal_init(&d.loop, &sig.sigint);
    uv_signal_init(&d.loop, &sig.sigterm);
    sig.sigint.data = sig.sigterm.data = &sig;
    uv_signal_start(&sig.sigint, on_signal, SIGINT);
    uv_signal_start(&sig.sigterm, on_signal, SIGTERM);
    log_notice("fetchd %s started (pid %d); max %u connections, %u per host", FETCHD_VERSION,
               (int)getpid(), d.pool.max_conns, d.pool.max_per_host);
    uv_run(&d.loop, UV_RUN_DEFAULT);
    rc = daemon_dispose(&d);
    log_notice("fetchd stopped");
    return rc == 0 ? 0 : 1;
fail:
    daemon_close(&d);
    uv_run(&d.loop, UV_RUN_DEFAULT);
    daemon_dispose(&d);
    return rc;
}
