/* daemon — assembly and teardown of the engine; see daemon.h. */
#include "daemon.h"

#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "err.h"
#include "mem.h"

void daemon_config_init(daemon_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->max_connections = 256;
    cfg->max_per_host = 32;
    cfg->max_jobs = 100000;
    cfg->max_running = 1024;
    cfg->max_clients = 64;
    cfg->idle_timeout_ms = 30000;
    cfg->retain_jobs = 10000;
    cfg->retain_ms = 3600 * 1000;
    cfg->log_level = LOG_LEVEL_INFO;
    cfg->shutdown_grace_ms = 20000;
    cfg->max_queue_bytes = DAEMON_DEFAULT_QUEUE_BYTES;
    cfg->decode_max_ratio = DAEMON_DEFAULT_DECODE_RATIO;
    cfg->log_jobs = 1;
    cfg->page_interval_ms = 10000;
    cfg->page_warmup_ms = 300000;
    cfg->progress_ms = JOB_DEFAULT_PROGRESS_MS;
    cfg->partial_keep_ms = 24ull * 3600 * 1000;
}

void daemon_config_dispose(daemon_config_t *cfg)
{
    mem_free(cfg->control_path);
    mem_free(cfg->metrics_addr);
    mem_free(cfg->download_dir);
    mem_free(cfg->state_dir);
    mem_free(cfg->ca_file);
    mem_free(cfg->client_cert);
    mem_free(cfg->client_key);
    mem_free(cfg->deny_networks);
    mem_free(cfg->allow_networks);
    mem_free(cfg->queue);
    mem_free(cfg->host_limits);
    mem_free(cfg->proxy);
    mem_free(cfg->no_proxy);
    memset(cfg, 0, sizeof(*cfg));
}

static void apply_limits(daemon_t *d)
{
    d->pool.max_conns = d->cfg.max_connections;
    d->pool.max_per_host = d->cfg.max_per_host;
    d->pool.idle_timeout_ms = d->cfg.idle_timeout_ms;
    d->sched.max_queued = d->cfg.max_jobs;
    d->sched.max_queued_bytes = d->cfg.max_queue_bytes;
    d->sched.env.decode = d->cfg.decode;
    d->sched.env.overwrite = (job_overwrite_t)d->cfg.overwrite;
    d->sched.env.decode_max_ratio = d->cfg.decode_max_ratio;
    d->sched.env.progress_ms = d->cfg.progress_ms;
    d->sched.max_running = d->cfg.max_running;
    d->sched.retain_jobs = d->cfg.retain_jobs;
    d->sched.retain_ms = d->cfg.retain_ms;
    d->sched.keep_ms = d->cfg.pause_keep_ms;
    d->sched.rl.bandwidth = d->cfg.bandwidth;
    d->sched.rl.limit_rate = d->cfg.limit_rate;
    d->sched.rl.max_limit_rate = d->cfg.max_limit_rate;
    d->sched.rl.min_burst = DAEMON_BUF_SIZE;
    d->pool.proxies.cfg_proxy = d->cfg.proxy;
    d->pool.proxies.cfg_no_proxy = d->cfg.no_proxy;
}

/* The host rules from their text (checked when the configuration was read,
 * so only memory can fail here: the old rules then stay). */
static int apply_host_limits(daemon_t *d, char *errmsg, size_t errlen)
{
    rl_rules_t rules;

    if (rl_rules_parse(d->cfg.host_limits, &rules, errmsg, errlen) != 0)
        return ERR_INVALID_REQUEST;
    ratelimit_set_rules(&d->sched.rl, &rules);
    return 0;
}

static int same(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* Takes over a string setting: frees the old value, steals the new one. */
static void take(char **dst, char **src)
{
    mem_free(*dst);
    *dst = *src;
    *src = NULL;
}

/* New destination rules: they apply to every connection opened from now on;
 * idle connections are closed, and those in use are checked when they come
 * back (pool_return), so none made under the old rules is reused. The TLS files are checked before
 * this, so a failure here leaves them changed but is still reported. */
static int reload_acl(daemon_t *d, daemon_config_t *cfg, char *errmsg, size_t errlen)
{
    netacl_t acl;
    int rc = netacl_init(&acl, cfg->deny_networks, cfg->allow_networks, errmsg, errlen);

    if (rc != 0)
        return rc;
    netacl_dispose(&d->acl);
    d->acl = acl;
    take(&d->cfg.deny_networks, &cfg->deny_networks);
    take(&d->cfg.allow_networks, &cfg->allow_networks);
    d->pool.acl_gen++;
    pool_close_idle(&d->pool, STATS_CLOSE_NOT_REUSABLE);
    return 0;
}

int daemon_reconfigure(daemon_t *d, daemon_config_t *cfg, char *errmsg, size_t errlen)
{
    static const char *const restart_only[] = {"control", "metrics", "download_dir", "state_dir",
                                               "queue"};
    const char *old[] = {d->cfg.control_path, d->cfg.metrics_addr, d->cfg.download_dir,
                         d->cfg.state_dir, d->cfg.queue};
    const char *now[] = {cfg->control_path, cfg->metrics_addr, cfg->download_dir, cfg->state_dir,
                         cfg->queue};
    int rc;

    if (!same(d->cfg.ca_file, cfg->ca_file) || !same(d->cfg.client_cert, cfg->client_cert) ||
        !same(d->cfg.client_key, cfg->client_key)) {
        rc = tls_reload(&d->tls, cfg->ca_file, cfg->client_cert, cfg->client_key, errmsg, errlen);
        if (rc != 0)
            return rc;
        take(&d->cfg.ca_file, &cfg->ca_file);
        take(&d->cfg.client_cert, &cfg->client_cert);
        take(&d->cfg.client_key, &cfg->client_key);
    }
    if (!same(d->cfg.deny_networks, cfg->deny_networks) ||
        !same(d->cfg.allow_networks, cfg->allow_networks)) {
        rc = reload_acl(d, cfg, errmsg, errlen);
        if (rc != 0)
            return rc;
    }
    for (size_t i = 0; i < sizeof(old) / sizeof(old[0]); i++)
        if (!same(old[i], now[i]))
            log_warn("reload: a new %s takes effect at the next restart", restart_only[i]);
    d->cfg.max_connections = cfg->max_connections;
    d->cfg.max_per_host = cfg->max_per_host;
    d->cfg.max_jobs = cfg->max_jobs;
    d->cfg.max_running = cfg->max_running;
    d->cfg.max_clients = cfg->max_clients;
    d->cfg.idle_timeout_ms = cfg->idle_timeout_ms;
    d->cfg.pause_keep_ms = cfg->pause_keep_ms;
    d->cfg.retain_jobs = cfg->retain_jobs;
    d->cfg.retain_ms = cfg->retain_ms;
    d->cfg.shutdown_grace_ms = cfg->shutdown_grace_ms;
    d->cfg.max_queue_bytes = cfg->max_queue_bytes;
    d->cfg.decode = cfg->decode;
    d->cfg.overwrite = cfg->overwrite;
    d->cfg.partial_keep_ms = cfg->partial_keep_ms;
    d->cfg.decode_max_ratio = cfg->decode_max_ratio;
    d->cfg.log_level = cfg->log_level;
    d->cfg.bandwidth = cfg->bandwidth;
    d->cfg.limit_rate = cfg->limit_rate;
    d->cfg.max_limit_rate = cfg->max_limit_rate;
    take(&d->cfg.proxy, &cfg->proxy); /* a new proxy applies to requests from now on */
    take(&d->cfg.no_proxy, &cfg->no_proxy);
    log_set_level(cfg->log_level);
    if (!same(d->cfg.host_limits, cfg->host_limits)) {
        char *prev = d->cfg.host_limits;
        d->cfg.host_limits = cfg->host_limits;
        if (apply_host_limits(d, errmsg, errlen) != 0) {
            d->cfg.host_limits = prev;
            return ERR_INVALID_REQUEST;
        }
        cfg->host_limits = prev; /* freed with cfg */
    }
    apply_limits(d);
    /* Raised limits must not wait for the next event to take effect. */
    sched_kick(&d->sched);
    pool_kick(&d->pool);
    return 0;
}

int daemon_init(daemon_t *d, daemon_config_t *cfg, char *errmsg, size_t errlen)
{
    rl_rules_t rules;
    int rc;

    memset(d, 0, sizeof(*d));
    d->cfg = *cfg;
    memset(cfg, 0, sizeof(*cfg));
    if (rl_rules_parse(d->cfg.host_limits, &rules, errmsg, errlen) != 0) {
        daemon_config_dispose(&d->cfg);
        return ERR_INVALID_REQUEST;
    }
    rc = uv_loop_init(&d->loop);
    if (rc != 0) {
        rl_rules_dispose(&rules);
        snprintf(errmsg, errlen, "event loop: %s", uv_strerror(rc));
        daemon_config_dispose(&d->cfg);
        return err_from_uv(rc);
    }
    stats_init(&d->stats);
    rc = netacl_init(&d->acl, d->cfg.deny_networks, d->cfg.allow_networks, errmsg, errlen);
    if (rc != 0) {
        rl_rules_dispose(&rules);
        uv_loop_close(&d->loop);
        daemon_config_dispose(&d->cfg);
        return rc;
    }
    rc = tls_init(&d->tls, &d->stats, d->cfg.ca_file, d->cfg.client_cert, d->cfg.client_key, errmsg,
                  errlen);
    if (rc != 0) {
        rl_rules_dispose(&rules);
        netacl_dispose(&d->acl);
        uv_loop_close(&d->loop);
        daemon_config_dispose(&d->cfg);
        return rc;
    }
    buf_pool_init(&d->bufs, DAEMON_BUF_SIZE, DAEMON_BUF_MAX_FREE, &d->stats);
    rc = dns_init(&d->dns, &d->loop, &d->stats);
    if (rc == 0) {
        rc = pool_init(&d->pool, &d->loop, &d->stats, &d->bufs);
        if (rc == 0) {
            rc = sched_init(&d->sched, &d->loop, &d->stats, &d->pool, &d->dns, &d->bufs,
                            d->cfg.download_dir);
            if (rc == 0) {
                d->sched.env.tls = &d->tls;
                d->sched.env.acl = &d->acl;
                d->sched.env.proxies = &d->pool.proxies;
                d->pool.acl = &d->acl;
                d->pool.dns = &d->dns;
                /* The environment's proxies are read once, at start. */
                if (proxy_conf_load_env(&d->pool.proxies) != 0)
                    log_warn("no memory for the proxy environment variables");
                apply_limits(d);
                ratelimit_set_rules(&d->sched.rl, &rules);
                return 0;
            }
            snprintf(errmsg, errlen, "download directory %s: %s",
                     d->cfg.download_dir ? d->cfg.download_dir : "-",
                     rc == ERR_IO ? "does not exist or is not accessible" : err_str(rc));
            pool_close(&d->pool);
        } else {
            snprintf(errmsg, errlen, "connection pool: %s", err_str(rc));
        }
        dns_dispose(&d->dns);
    } else {
        snprintf(errmsg, errlen, "DNS cache: %s", err_str(rc));
    }
    uv_run(&d->loop, UV_RUN_DEFAULT); /* let the closes finish */
    rl_rules_dispose(&rules);
    pool_dispose(&d->pool);
    buf_pool_dispose(&d->bufs);
    tls_dispose(&d->tls);
    netacl_dispose(&d->acl);
    uv_loop_close(&d->loop);
    daemon_config_dispose(&d->cfg);
    return rc;
}

void daemon_close(daemon_t *d)
{
    if (d->closing)
        return;
    d->closing = 1;
    sched_close(&d->sched);
    pool_close(&d->pool);
    dns_dispose(&d->dns);
}

int daemon_dispose(daemon_t *d)
{
    int rc;
    sched_dispose(&d->sched);
    pool_dispose(&d->pool);
    buf_pool_dispose(&d->bufs);
    tls_dispose(&d->tls);
    netacl_dispose(&d->acl);
    rc = uv_loop_close(&d->loop);
    daemon_config_dispose(&d->cfg);
    return rc;
}

/* ---- the figures as JSON ----------------------------------------------------- */

/* Resident set size from /proc/self/statm (its second field, in pages). */
static uint64_t resident_bytes(void)
{
    unsigned long long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f == NULL)
        return 0;
    if (fscanf(f, "%llu %llu", &size, &resident) != 2)
        resident = 0;
    fclose(f);
    return resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

static uint64_t open_fds(void)
{
    uint64_t n = 0;
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    if (d == NULL)
        return 0;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n > 0 ? n - 1 : 0; /* not the one opendir() holds */
}

static int set_u64(json_t *o, const char *k, uint64_t v)
{
    return json_object_set_new(o, k, json_integer((json_int_t)v));
}

static json_t *pair(const char *k1, uint64_t v1, const char *k2, uint64_t v2)
{
    json_t *o = json_object();
    if (o && (set_u64(o, k1, v1) || set_u64(o, k2, v2))) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* {"http": {"ok": n, ...}, "connect": {...}, "socks5": {...}} */
static json_t *proxy_connects_json(const stats_t *st)
{
    json_t *o = json_object();
    for (int k = 0; o && k < STATS_PROXY__KINDS; k++) {
        json_t *r = json_object();
        for (int i = 0; r && i < STATS_PROXY__RESULTS; i++)
            if (set_u64(r, stats_proxy_result_label(i), st->proxy_connects[k][i]) != 0)
                r = (json_decref(r), NULL);
        if (r == NULL || json_object_set_new(o, stats_proxy_kind_label(k), r) != 0)
            o = (json_decref(o), NULL);
    }
    return o;
}

json_t *daemon_stats_json(daemon_t *d)
{
    stats_t *st = &d->stats;
    json_t *o = json_object(), *objects = json_object(), *closed = json_object();
    json_t *conns = json_object(), *jobs = json_object(), *finished = json_object();
    json_t *heap = json_object(), *lenient = json_object();
    int bad = !o || !objects || !closed || !conns || !jobs || !finished || !heap || !lenient;

    for (int t = 0; !bad && t < STATS_OBJ__COUNT; t++)
        bad |= set_u64(objects, stats_obj_label(t), (uint64_t)st->objects[t]);
    for (int r = 0; !bad && r < STATS_CLOSE__COUNT; r++)
        bad |= set_u64(closed, stats_close_label(r), st->conns_closed[r]);
    for (int r = 0; !bad && r < STATS_RESULT__COUNT; r++)
        bad |= set_u64(finished, stats_result_label(r), st->jobs_finished[r]);
    for (int k = 0; !bad && k < STATS_LENIENT__COUNT; k++)
        bad |= set_u64(lenient, stats_lenient_label(k), st->lenient[k]);
    for (int c = 0; !bad && c < MEM__COUNT; c++) {
        uint64_t blocks, bytes;
        mem_get(c, &blocks, &bytes);
        bad |= json_object_set_new(heap, mem_component_name(c),
                                   pair("blocks", blocks, "bytes", bytes));
        if (!bad)
            bad |= set_u64(json_object_get(heap, mem_component_name(c)), "allocations_total",
                           mem_allocations_total(c));
    }
    if (!bad) {
        bad |= set_u64(conns, "connecting", d->pool.nconnecting);
        bad |= set_u64(conns, "active", d->pool.nactive);
        bad |= set_u64(conns, "idle", d->pool.nidle);
        bad |= set_u64(jobs, "queued", d->sched.nqueued);
        bad |= set_u64(jobs, "running", d->sched.nrunning);
        bad |= set_u64(jobs, "retained", d->sched.nretained);
        bad |= set_u64(o, "queued_bytes", d->sched.queued_bytes);
        bad |= json_object_set(o, "objects", objects);
        bad |= json_object_set(o, "connections", conns);
        bad |= set_u64(o, "connections_opened_total", st->conns_opened);
        bad |= json_object_set(o, "connections_closed_total", closed);
        bad |= set_u64(o, "connection_reuses_total", st->conn_reuses);
        bad |= json_object_set_new(o, "buffers",
                                   pair("in_use", d->bufs.in_use, "free", d->bufs.nfree));
        bad |= json_object_set_new(
            o, "buffer_bytes",
            pair("in_use", d->bufs.in_use * d->bufs.size, "free", d->bufs.nfree * d->bufs.size));
        bad |= json_object_set(o, "jobs", jobs);
        bad |= json_object_set(o, "jobs_finished_total", finished);
        bad |= json_object_set(o, "heap", heap);
        bad |= set_u64(o, "received_bytes_total", st->received_bytes);
        bad |= set_u64(o, "retries_total", st->retries);
        bad |= set_u64(o, "redirects_total", st->redirects);
        bad |= json_object_set(o, "http_lenient_total", lenient);
        bad |= set_u64(o, "process_resident_memory_bytes", resident_bytes());
        bad |= set_u64(o, "process_open_fds", open_fds());
        bad |= set_u64(o, "tls_handshakes_total", d->tls.handshakes);
        bad |= set_u64(o, "tls_resumptions_total", d->tls.resumptions);
        bad |= set_u64(o, "dns_lookups_total", d->dns.lookups);
        bad |= set_u64(o, "dns_cache_hits_total", d->dns.hits);
        if (st->queue.enabled) /* the Redis queue (--queue): the figures /metrics shows */
            bad |= json_object_set_new(
                o, "queue",
                json_pack("{s:I, s:I, s:I, s:I, s:I, s:b, s:I}", "read", (json_int_t)st->queue.read,
                          "acked", (json_int_t)st->queue.acked, "claimed",
                          (json_int_t)st->queue.claimed, "failed", (json_int_t)st->queue.failed,
                          "pending", (json_int_t)st->queue.pending, "connected",
                          st->queue.connected, "reconnects_total",
                          (json_int_t)st->queue.reconnects));
        bad |= json_object_set_new(o, "proxy_connects_total", proxy_connects_json(st));
    }
    json_decref(objects);
    json_decref(closed);
    json_decref(conns);
    json_decref(jobs);
    json_decref(finished);
    json_decref(heap);
    json_decref(lenient);
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}
