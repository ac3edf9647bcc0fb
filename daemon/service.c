/* service — fetchd's lifecycle; see service.h. */
#include "service.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "control.h"
#include "err.h"
#include "fmt.h"
#include "history.h"
#include "log.h"
#include "metrics.h"
#include "queue.h"
#include "sd.h"
#include "sink.h"
#include "state.h"

#define CHECKPOINT_EVERY_MS 5000
/* A save blocks the loop (about 1 s for 100,000 queued jobs): the next one
 * waits at least this many times as long, so saving takes at most 5% of
 * the loop's time whatever the queue's size. */
#define CHECKPOINT_COST_FACTOR 20

typedef struct service {
    daemon_t d;
    control_t ctl;
    metrics_t metrics;
    history_t history; /* the page's samples; started with the metrics endpoint */
    int history_on;
    sd_t sd;
    queue_t queue; /* the Redis queue (--queue); started only when configured */
    uv_signal_t sigint, sigterm, sighup;
    uv_timer_t grace;       /* the graceful stop's deadline */
    uv_timer_t checkpoint;  /* saves the queue while it changes */
    uv_timer_t sweep;       /* hourly: removes expired partial files */
    uv_prepare_t log_flush; /* before each wait for I/O: the batched log lines go out */
    int argc;
    char **argv; /* borrowed: main's */
    int stopping, stopped;
    int save_failed;      /* the final save failed: the exit status says so */
    int dirty;            /* the queue changed since the last checkpoint */
    uint64_t saved_at_ms; /* loop time the last save ended */
    uint64_t save_ms;     /* how long the last save took */
} service_t;

/* ---- status and persistence --------------------------------------------------- */

static void write_status(char *buf, size_t len, void *data)
{
    service_t *svc = data;
    snprintf(buf, len, "%zu queued, %zu running, %u connections (%u idle), %u control clients",
             svc->d.sched.nqueued, svc->d.sched.nrunning, svc->d.pool.nconns, svc->d.pool.nidle,
             svc->ctl.nclients);
}

/* Saves the queue; returns 0, or -1 when the save failed (logged). */
static int save_queue(service_t *svc, const char *why)
{
    const char *dir = svc->d.cfg.state_dir;
    uint64_t t0 = uv_hrtime();
    char err[512];
    long n;

    if (dir == NULL)
        return 0;
    n = state_save(&svc->d.sched, dir, 1, err, sizeof(err));
    if (n < 0)
        log_error("state: %s", err);
    else
        log_info("state: %s: saved %ld unfinished jobs to %s/queue.json in %.1f ms", why, n, dir,
                 (uv_hrtime() - t0) / 1e6);
    svc->save_ms = (uv_hrtime() - t0) / 1000000u;
    uv_update_time(&svc->d.loop);
    svc->saved_at_ms = uv_now(&svc->d.loop);
    svc->dirty = n < 0;
    return n < 0 ? -1 : 0;
}

/* Resumable jobs' partial files older than partial_keep go, at start and
 * hourly; each sweep looks at a bounded number of directory entries. */
static void sweep_partials(service_t *svc)
{
    if (svc->d.sched.download_dir != NULL && svc->d.cfg.partial_keep_ms > 0)
        (void)sink_sweep_partials(svc->d.sched.download_dir, svc->d.cfg.partial_keep_ms / 1000,
                                  time(NULL), 100000);
}

static void on_sweep(uv_timer_t *t)
{
    sweep_partials(t->data);
}

static void on_log_flush(uv_prepare_t *p)
{
    (void)p;
    log_flush();
}

static void on_checkpoint(uv_timer_t *t)
{
    service_t *svc = t->data;
    uint64_t wait = svc->save_ms * CHECKPOINT_COST_FACTOR;

    if (wait < CHECKPOINT_EVERY_MS)
        wait = CHECKPOINT_EVERY_MS;
    if (svc->dirty && uv_now(&svc->d.loop) - svc->saved_at_ms >= wait)
        save_queue(svc, "checkpoint");
}

/* ---- stopping ----------------------------------------------------------------- */

static void on_grace(uv_timer_t *t);

/* The end of the graceful stop: persist what has not finished, then close
 * everything; the loop ends when the last handle has closed. */
static void finish_stop(service_t *svc)
{
    size_t left = svc->d.sched.nqueued + svc->d.sched.nrunning;

    if (svc->stopped)
        return;
    svc->stopped = 1;
    if (svc->d.cfg.state_dir && save_queue(svc, "shutdown") != 0) {
        /* A service manager must see that the queue was lost, not a clean stop. */
        log_error("state: the queue could not be saved at shutdown: %zu unfinished jobs are lost; "
                  "exit status 1",
                  left);
        svc->save_failed = 1;
    } else if (!svc->d.cfg.state_dir && left > 0)
        log_warn("%zu unfinished jobs are dropped: no --state-dir to keep them in", left);
    queue_close(&svc->queue); /* before the jobs are cancelled: their entries stay pending */
    uv_close((uv_handle_t *)&svc->grace, NULL);
    uv_close((uv_handle_t *)&svc->checkpoint, NULL);
    uv_close((uv_handle_t *)&svc->sweep, NULL);
    uv_close((uv_handle_t *)&svc->log_flush, NULL);
    uv_close((uv_handle_t *)&svc->sigint, NULL);
    uv_close((uv_handle_t *)&svc->sigterm, NULL);
    uv_close((uv_handle_t *)&svc->sighup, NULL);
    if (svc->history_on)
        history_close(&svc->history);
    metrics_close(&svc->metrics);
    control_close(&svc->ctl);
    sd_close(&svc->sd);
    daemon_close(&svc->d); /* cancels the rest with "shutdown" */
}

static void begin_stop(service_t *svc, const char *why)
{
    if (svc->stopping) {
        log_notice("%s again: stopping now", why);
        finish_stop(svc);
        return;
    }
    svc->stopping = 1;
    sd_notify(&svc->sd, "STOPPING=1");
    sched_drain(&svc->d.sched);
    queue_drain(&svc->queue);
    log_notice("%s: stopping; %zu running jobs have %.3g s to finish, %zu queued wait", why,
               svc->d.sched.nrunning, svc->d.cfg.shutdown_grace_ms / 1e3, svc->d.sched.nqueued);
    uv_timer_start(
        &svc->grace, on_grace,
        svc->d.sched.nrunning == 0 && queue_settled(&svc->queue) ? 0 : svc->d.cfg.shutdown_grace_ms,
        0);
}

static void on_grace(uv_timer_t *t)
{
    finish_stop(t->data);
}

/* ---- reloading ---------------------------------------------------------------- */

static void reload(service_t *svc)
{
    daemon_config_t cfg;
    const char *path = NULL;
    char err[512], msg[80];
    struct timespec now;
    int rc;

    clock_gettime(CLOCK_MONOTONIC, &now);
    snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)now.tv_sec * 1000000ull + (unsigned long long)now.tv_nsec / 1000);
    sd_notify(&svc->sd, msg);
    daemon_config_init(&cfg);
    rc = config_from_args(&cfg, svc->argc, svc->argv, &path, err, sizeof(err));
    if (rc == 0)
        rc = daemon_reconfigure(&svc->d, &cfg, err, sizeof(err));
    if (rc == 0)
        svc->d.cfg.log_jobs = cfg.log_jobs;
    if (rc != 0)
        log_error("reload failed: %s; the running configuration is kept", err);
    else
        log_notice("configuration reloaded%s%s", path ? " from " : "", path ? path : "");
    daemon_config_dispose(&cfg);
    sd_ready(&svc->sd);
}

static void on_signal(uv_signal_t *h, int signum)
{
    service_t *svc = h->data;
    if (signum == SIGHUP)
        reload(svc);
    else
        begin_stop(svc, signum == SIGINT ? "SIGINT" : "SIGTERM");
}

/* ---- events ------------------------------------------------------------------- */

/* The URL as submitted, without its userinfo (a password must not reach
 * the log), into buf. */
static const char *url_for_log(const char *url, char *buf, size_t len)
{
    const char *auth = strstr(url, "://"), *end, *at;

    if (auth == NULL)
        return url;
    auth += 3;
    end = auth + strcspn(auth, "/?#");
    at = memchr(auth, '@', (size_t)(end - auth));
    while (at != NULL && memchr(at + 1, '@', (size_t)(end - at - 1)) != NULL)
        at = memchr(at + 1, '@', (size_t)(end - at - 1));
    if (at == NULL)
        return url;
    snprintf(buf, len, "%.*s%s", (int)(auth - url), url, at + 1);
    return buf;
}

/* One line per finished job (log_jobs), made without printf (one per
 * fetch); log_text() escapes what came from outside (the URL):
 * "job ID STATE: status=S bytes=N duration=S.mmms error=CODE url=URL". */
static void log_finished(const job_t *j)
{
    static const char *const results[] = {
        [JOB_DONE] = "done", [JOB_FAILED] = "failed", [JOB_CANCELLED] = "cancelled"};
    char text[LOG_MAX_MESSAGE + 1], url[LOG_MAX_MESSAGE / 2];
    fmtbuf_t b = {text, 0, sizeof(text), 0};
    uint64_t ms = j->timings.total_ms % 1000;
    char frac[5] = {'.', (char)('0' + ms / 100), (char)('0' + ms / 10 % 10), (char)('0' + ms % 10),
                    's'};

    fmt_str(&b, "job ");
    fmt_str(&b, j->id);
    fmt_put(&b, " ", 1);
    fmt_str(&b, j->state <= JOB_CANCELLED && results[j->state] ? results[j->state] : "?");
    fmt_str(&b, ": status=");
    if (j->http_status > 0)
        fmt_dec(&b, (uint64_t)j->http_status);
    else
        fmt_put(&b, "-", 1);
    fmt_str(&b, " bytes=");
    fmt_dec(&b, j->bytes);
    /* The duration from whole milliseconds, without a floating-point printf. */
    fmt_str(&b, " duration=");
    fmt_dec(&b, j->timings.total_ms / 1000);
    fmt_put(&b, frac, sizeof(frac));
    fmt_str(&b, " error=");
    fmt_str(&b, j->error ? err_name(j->error) : "-");
    fmt_str(&b, " url=");
    fmt_str(&b, url_for_log(j->spec.url, url, sizeof(url)));
    /* A cut line (b.over: LOG_MAX_MESSAGE bytes made) ends in "...". */
    log_text(LOG_LEVEL_INFO, text, b.len + (size_t)b.over);
}

static void on_event(sched_t *s, job_t *j, sched_event_t ev, void *data)
{
    service_t *svc = data;

    if (ev == SCHED_EV_FINISHED) {
        metrics_job_finished(&svc->d.stats, j);
        if (svc->d.cfg.log_jobs)
            log_finished(j);
    }
    if (ev == SCHED_EV_QUEUED || ev == SCHED_EV_FINISHED)
        svc->dirty = 1;
    control_on_event(s, j, ev, &svc->ctl);
    queue_on_event(&svc->queue, j, ev);
    /* The last running job of a graceful stop (and the queue's last ack):
     * end it on the next turn. */
    if (svc->stopping && ev == SCHED_EV_FINISHED && s->nrunning == 0 && !svc->stopped &&
        queue_settled(&svc->queue))
        uv_timer_start(&svc->grace, on_grace, 0, 0);
}

/* The queue acked its last entry during a graceful stop. */
static void on_queue_settled(void *data)
{
    service_t *svc = data;
    if (svc->stopping && svc->d.sched.nrunning == 0 && !svc->stopped)
        uv_timer_start(&svc->grace, on_grace, 0, 0);
}

/* ---- start -------------------------------------------------------------------- */

static int open_sockets(service_t *svc)
{
    daemon_t *d = &svc->d;
    const char *metrics = d->cfg.metrics_addr ? d->cfg.metrics_addr : "127.0.0.1:9464";
    char err[512], path[256];
    int fd = sd_listen_fd("control"), rc;

    if (fd >= 0) {
        rc = control_start_fd(&svc->ctl, d, fd, err, sizeof(err));
    } else if (d->cfg.control_path == NULL && control_default_path(path, sizeof(path)) != 0) {
        snprintf(err, sizeof(err), "the default control socket path is too long; use --control");
        rc = -1;
    } else {
        rc = control_start(&svc->ctl, d, d->cfg.control_path ? d->cfg.control_path : path, err,
                           sizeof(err));
    }
    if (rc != 0) {
        log_error("%s", err);
        return -1;
    }
    if (strcmp(metrics, "off") != 0 &&
        metrics_start(&svc->metrics, d, &svc->ctl, metrics, err, sizeof(err)) != 0) {
        log_error("%s", err);
        control_close(&svc->ctl);
        return -1;
    }
    /* The page's history: only where the endpoint can show it. Without
     * memory for it the page says so and everything else runs. */
    if (strcmp(metrics, "off") != 0) {
        if (history_init(&svc->history, d, d->cfg.page_interval_ms, d->cfg.page_warmup_ms) == 0) {
            svc->history.hidden_bufs = &svc->ctl.nreading;
            svc->metrics.history = &svc->history;
            svc->history_on = 1;
        } else {
            log_error("metrics: no memory for the page's history; GET /history.json is off");
        }
    }
    return 0;
}

static void restore_queue(service_t *svc)
{
    char err[512];
    long n;

    if (svc->d.cfg.state_dir == NULL)
        return;
    n = state_load(&svc->d.sched, svc->d.cfg.state_dir, err, sizeof(err));
    if (n < 0)
        log_error("state: %s", err);
    else if (n > 0)
        log_notice("state: restored %ld unfinished jobs from %s/queue.json", n,
                   svc->d.cfg.state_dir);
}

static void init_handles(service_t *svc)
{
    uv_loop_t *loop = &svc->d.loop;

    uv_timer_init(loop, &svc->grace);
    uv_timer_init(loop, &svc->checkpoint);
    uv_timer_init(loop, &svc->sweep);
    svc->grace.data = svc->checkpoint.data = svc->sweep.data = svc;
    uv_timer_start(&svc->sweep, on_sweep, 3600 * 1000, 3600 * 1000);
    /* The per-job lines of one loop turn go out in one write, before the
     * loop waits; the handle does not keep the loop alive. */
    uv_prepare_init(loop, &svc->log_flush);
    uv_prepare_start(&svc->log_flush, on_log_flush);
    uv_unref((uv_handle_t *)&svc->log_flush);
    log_batch(1);
    uv_signal_init(loop, &svc->sigint);
    uv_signal_init(loop, &svc->sigterm);
    uv_signal_init(loop, &svc->sighup);
    svc->sigint.data = svc->sigterm.data = svc->sighup.data = svc;
    uv_signal_start(&svc->sigint, on_signal, SIGINT);
    uv_signal_start(&svc->sigterm, on_signal, SIGTERM);
    uv_signal_start(&svc->sighup, on_signal, SIGHUP);
    if (svc->d.cfg.state_dir) {
        svc->saved_at_ms = uv_now(loop);
        uv_timer_start(&svc->checkpoint, on_checkpoint, 1000, 1000);
    }
}

int service_run(daemon_config_t *cfg, int argc, char **argv)
{
    static service_t svc; /* the one struct daemon lives here, for the process */
    char err[512];
    int rc;

    svc.argc = argc;
    svc.argv = argv;
    /* A bad queue URL is a bad configuration, refused before anything starts. */
    if (cfg->queue != NULL && queue_init(&svc.queue, cfg->queue, err, sizeof(err)) != 0) {
        log_error("%s", err);
        daemon_config_dispose(cfg);
        return CONFIG_EX_CONFIG;
    }
    /* Like a bad configuration: a state dir the queue cannot be saved in is
     * refused now, not found out at the first checkpoint or at the stop. */
    if (cfg->state_dir != NULL && state_check_dir(cfg->state_dir, err, sizeof(err)) != 0) {
        log_error("%s", err);
        daemon_config_dispose(cfg);
        queue_dispose(&svc.queue);
        return CONFIG_EX_CONFIG;
    }
    if (daemon_init(&svc.d, cfg, err, sizeof(err)) != 0) {
        log_error("%s", err);
        queue_dispose(&svc.queue);
        return CONFIG_EX_CONFIG;
    }
    sd_init(&svc.sd, &svc.d.loop);
    svc.sd.status_cb = write_status;
    svc.sd.status_data = &svc;
    restore_queue(&svc);
    sweep_partials(&svc);
    if (open_sockets(&svc) != 0) {
        sd_close(&svc.sd);
        daemon_close(&svc.d);
        uv_run(&svc.d.loop, UV_RUN_DEFAULT);
        daemon_dispose(&svc.d);
        queue_dispose(&svc.queue);
        return 1;
    }
    svc.d.sched.on_event = on_event;
    svc.d.sched.event_data = &svc;
    init_handles(&svc);
    svc.queue.settled_cb = on_queue_settled;
    svc.queue.settled_data = &svc;
    if (svc.d.cfg.queue != NULL)
        queue_start(&svc.queue, &svc.d);
    if (svc.history_on)
        history_start(&svc.history);
    log_notice("fetchd %s started (pid %d); max %u connections, %u per host", FETCHD_VERSION,
               (int)getpid(), svc.d.pool.max_conns, svc.d.pool.max_per_host);
    sd_ready(&svc.sd);
    uv_run(&svc.d.loop, UV_RUN_DEFAULT);
    log_batch(0);
    rc = daemon_dispose(&svc.d);
    queue_dispose(&svc.queue);
    log_notice("fetchd stopped");
    return rc == 0 && !svc.save_failed ? 0 : 1;
}
