/* config — configuration file and options; see config.h. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "job.h"
#include "log.h"
#include "mem.h"
#include "netacl.h"
#include "ratelimit.h"
#include "proxy.h"

typedef enum {
    OPT_STRING,
    OPT_UINT,
    OPT_SECONDS,
    OPT_LEVEL,
    OPT_NETS,
    OPT_BOOL,
    OPT_U64,
    OPT_RATE, /* bytes/s: an integer, or a string with a K, M or G suffix */
    OPT_HOSTS,
    OPT_PROXY,    /* a proxy URL, or "" (direct) */
    OPT_TEXT,     /* a string that may be empty */
    OPT_OVERWRITE /* replace, never or newer (job_overwrite_t) */
} opt_kind_t;

typedef struct option_def {
    const char *key;
    opt_kind_t kind;
    size_t offset;
    uint64_t min, max;
} option_def_t;

#define OFF(f) offsetof(daemon_config_t, f)

static const option_def_t options[] = {
    {"control", OPT_STRING, OFF(control_path), 0, 0},
    {"metrics", OPT_STRING, OFF(metrics_addr), 0, 0},
    {"download_dir", OPT_STRING, OFF(download_dir), 0, 0},
    {"state_dir", OPT_STRING, OFF(state_dir), 0, 0},
    {"ca_file", OPT_STRING, OFF(ca_file), 0, 0},
    {"client_cert", OPT_STRING, OFF(client_cert), 0, 0},
    {"client_key", OPT_STRING, OFF(client_key), 0, 0},
    {"max_connections", OPT_UINT, OFF(max_connections), 1, 100000},
    {"max_per_host", OPT_UINT, OFF(max_per_host), 1, 100000},
    {"max_jobs", OPT_UINT, OFF(max_jobs), 1, 100000000},
    {"max_running", OPT_UINT, OFF(max_running), 1, 1000000},
    {"max_clients", OPT_UINT, OFF(max_clients), 1, 10000},
    {"idle_timeout", OPT_SECONDS, OFF(idle_timeout_ms), 1, 86400},
    {"pause_keep", OPT_SECONDS, OFF(pause_keep_ms), 0, 86400},
    {"retain_jobs", OPT_UINT, OFF(retain_jobs), 0, 100000000},
    {"retain_seconds", OPT_SECONDS, OFF(retain_ms), 0, 86400 * 365},
    {"log_level", OPT_LEVEL, OFF(log_level), 0, 0},
    {"shutdown_grace", OPT_SECONDS, OFF(shutdown_grace_ms), 0, 3600},
    {"max_queue_bytes", OPT_UINT, OFF(max_queue_bytes), 65536, (uint64_t)1 << 40},
    {"deny_networks", OPT_NETS, OFF(deny_networks), 0, 0},
    {"allow_networks", OPT_NETS, OFF(allow_networks), 0, 0},
    {"decode", OPT_BOOL, OFF(decode), 0, 0},
    {"decode_max_ratio", OPT_UINT, OFF(decode_max_ratio), 0, 1000000000},
    {"queue", OPT_STRING, OFF(queue), 0, 0},
    {"log_jobs", OPT_BOOL, OFF(log_jobs), 0, 0},
    {"history_interval", OPT_SECONDS, OFF(page_interval_ms), 1, 3600},
    {"history_warmup", OPT_SECONDS, OFF(page_warmup_ms), 0, 86400},
    {"host_limits", OPT_HOSTS, OFF(host_limits), 0, 0},
    {"bandwidth", OPT_RATE, OFF(bandwidth), 0, (uint64_t)1 << 50},
    {"limit_rate", OPT_RATE, OFF(limit_rate), 0, (uint64_t)1 << 50},
    {"max_limit_rate", OPT_RATE, OFF(max_limit_rate), 0, (uint64_t)1 << 50},
    {"proxy", OPT_PROXY, OFF(proxy), 0, 0},
    {"no_proxy", OPT_TEXT, OFF(no_proxy), 0, 0},
    {"progress_interval", OPT_U64, OFF(progress_ms), 10, 3600000},
    {"overwrite", OPT_OVERWRITE, OFF(overwrite), 0, 0},
    {"partial_keep", OPT_SECONDS, OFF(partial_keep_ms), 0, 86400 * 365},
};

static const option_def_t *find(const char *key)
{
    for (size_t i = 0; i < sizeof(options) / sizeof(options[0]); i++)
        if (strcmp(options[i].key, key) == 0)
            return &options[i];
    return NULL;
}

/* Stores v into the field; unsigned fields differ in width, so write by size. */
static void store_uint(daemon_config_t *cfg, const option_def_t *o, uint64_t v)
{
    char *field = (char *)cfg + o->offset;
    if (o->kind == OPT_SECONDS) {
        *(uint64_t *)(void *)field = v * 1000;
    } else if (o->kind == OPT_U64 || o->kind == OPT_RATE) {
        *(uint64_t *)(void *)field = v;
    } else if (o->offset == OFF(max_jobs) || o->offset == OFF(retain_jobs) ||
               o->offset == OFF(max_queue_bytes)) {
        *(size_t *)(void *)field = (size_t)v;
    } else {
        *(unsigned *)(void *)field = (unsigned)v;
    }
}

/* Bytes per second: a number with an optional K, M or G (powers of 1024),
 * as curl's --limit-rate and fetchctl's take it ("100K", "1.5M"). 0 or -1. */
static int parse_rate(const char *s, uint64_t *out)
{
    static const char units[] = "KMG";
    const char *u;
    char *end;
    double v;

    if (!isdigit((unsigned char)s[0]))
        return -1;
    errno = 0;
    v = strtod(s, &end);
    if (errno != 0)
        return -1;
    if (*end != '\0' && (u = strchr(units, toupper((unsigned char)*end))) != NULL) {
        for (const char *k = units; k <= u; k++)
            v *= 1024;
        end++;
    }
    if (*end != '\0' || !(v < 18e18))
        return -1;
    *out = (uint64_t)v;
    return 0;
}

/* Replaces the string option o of cfg with a copy of v. */
static int store_string(daemon_config_t *cfg, const option_def_t *o, const char *v, char *err,
                        size_t errlen)
{
    char **field = (char **)(void *)((char *)cfg + o->offset);
    char *copy = mem_strdup(v);

    if (copy == NULL) {
        snprintf(err, errlen, "%s: out of memory", o->key);
        return -1;
    }
    mem_free(*field);
    *field = copy;
    return 0;
}

static int set_string(daemon_config_t *cfg, const option_def_t *o, const char *v, char *err,
                      size_t errlen)
{
    if (*v == '\0') {
        snprintf(err, errlen, "%s: must not be empty", o->key);
        return -1;
    }
    return store_string(cfg, o, v, err, errlen);
}

static int set_number(daemon_config_t *cfg, const option_def_t *o, uint64_t v, char *err,
                      size_t errlen)
{
    if (v < o->min || v > o->max) {
        snprintf(err, errlen, "%s: must be between %llu and %llu", o->key,
                 (unsigned long long)o->min, (unsigned long long)o->max);
        return -1;
    }
    store_uint(cfg, o, v);
    return 0;
}

/* A network list: checked now, so a bad entry is reported with its file
 * and line; stored as text (the daemon builds its rules from it). An empty
 * list is valid: it denies (or allows) nothing. */
static int set_nets(daemon_config_t *cfg, const option_def_t *o, const char *v, char *err,
                    size_t errlen)
{
    char why[160];
    netacl_net_t *nets;
    size_t n;

    if (netacl_parse(v, &nets, &n, why, sizeof(why)) != 0) {
        snprintf(err, errlen, "%s: %s", o->key, why);
        return -1;
    }
    mem_free(nets);
    return store_string(cfg, o, v, err, errlen);
}

/* The host rules: JSON text, checked now and stored as text. */
static int set_hosts(daemon_config_t *cfg, const option_def_t *o, const char *v, char *err,
                     size_t errlen)
{
    rl_rules_t rules;

    if (rl_rules_parse(v, &rules, err, errlen) != 0)
        return -1;
    rl_rules_dispose(&rules);
    return store_string(cfg, o, v, err, errlen);
}

/* A switch: "true"/"false" as in the file, or yes/no, on/off, 1/0. */
static int set_bool(daemon_config_t *cfg, const option_def_t *o, const char *v, char *err,
                    size_t errlen)
{
    static const char *const yes[] = {"true", "yes", "on", "1"}, *const no[] = {"false", "no",
                                                                                "off", "0"};
    int *field = (int *)(void *)((char *)cfg + o->offset);

    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (strcasecmp(v, yes[i]) == 0 || strcasecmp(v, no[i]) == 0) {
            *field = strcasecmp(v, yes[i]) == 0;
            return 0;
        }
    }
    snprintf(err, errlen, "%s: \"%s\" is not true or false", o->key, v);
    return -1;
}

int config_set(daemon_config_t *cfg, const char *key, const char *value, char *err, size_t errlen)
{
    const option_def_t *o = find(key);
    unsigned long long v;
    char *end;

    if (o == NULL) {
        snprintf(err, errlen, "unknown option \"%s\"", key);
        return -1;
    }
    switch (o->kind) {
    case OPT_STRING:
        return set_string(cfg, o, value, err, errlen);
    case OPT_NETS:
        return set_nets(cfg, o, value, err, errlen);
    case OPT_PROXY: {
        char why[160];
        if (proxy_validate(value, why, sizeof(why)) != 0) {
            snprintf(err, errlen, "%s: %s", o->key, why);
            return -1;
        }
        return store_string(cfg, o, value, err, errlen);
    }
    case OPT_TEXT:
        return store_string(cfg, o, value, err, errlen);
    case OPT_BOOL:
        return set_bool(cfg, o, value, err, errlen);
    case OPT_OVERWRITE:
        cfg->overwrite = !strcmp(value, "replace") ? JOB_OVERWRITE_REPLACE
                         : !strcmp(value, "never") ? JOB_OVERWRITE_NEVER
                         : !strcmp(value, "newer") ? JOB_OVERWRITE_NEWER
                                                   : -1;
        if (cfg->overwrite >= 0)
            return 0;
        snprintf(err, errlen, "%s: expected replace, never or newer", key);
        cfg->overwrite = 0;
        return -1;
    case OPT_HOSTS:
        return set_hosts(cfg, o, value, err, errlen);
    case OPT_RATE: {
        uint64_t rate;
        if (parse_rate(value, &rate) != 0) {
            snprintf(err, errlen, "%s: \"%s\" is not bytes per second (like 500000, 100K or 1M)",
                     key, value);
            return -1;
        }
        return set_number(cfg, o, rate, err, errlen);
    }
    case OPT_LEVEL:
        if (log_level_parse(value, &cfg->log_level) != 0) {
            snprintf(err, errlen, "%s: expected error, warn, notice, info or debug", key);
            return -1;
        }
        return 0;
    default:
        errno = 0;
        v = strtoull(value, &end, 10);
        if (errno || end == value || *end != '\0' || value[0] == '-') {
            snprintf(err, errlen, "%s: \"%s\" is not a non-negative integer", key, value);
            return -1;
        }
        return set_number(cfg, o, v, err, errlen);
    }
}

/* The line of the first occurrence of "key" in text: jansson keeps no
 * positions for the values it parsed, and a user wants the line. */
static int key_line(const char *text, const char *key)
{
    size_t klen = strlen(key);
    int line = 1;

    for (const char *p = text; *p; p++) {
        if (*p == '\n')
            line++;
        else if (*p == '"' && strncmp(p + 1, key, klen) == 0 && p[1 + klen] == '"')
            return line;
    }
    return 0;
}

/* A network list in the file: an array of strings (or one string), joined
 * with commas into the text form the command line uses. */
static int set_json_nets(daemon_config_t *cfg, const option_def_t *o, json_t *v, char *why,
                         size_t len)
{
    size_t i, total = 1, at = 0;
    json_t *e;
    char *text;
    int rc;

    if (json_is_string(v) && strlen(json_string_value(v)) == json_string_length(v))
        return set_nets(cfg, o, json_string_value(v), why, len);
    if (!json_is_array(v)) {
        snprintf(why, len, "\"%s\" must be an array of networks (strings)", o->key);
        return -1;
    }
    json_array_foreach (v, i, e) {
        if (!json_is_string(e) || strlen(json_string_value(e)) != json_string_length(e)) {
            snprintf(why, len, "\"%s\"[%zu] must be a string", o->key, i);
            return -1;
        }
        total += json_string_length(e) + 1;
    }
    text = mem_alloc(total);
    if (text == NULL) {
        snprintf(why, len, "%s: out of memory", o->key);
        return -1;
    }
    json_array_foreach (v, i, e) {
        memcpy(text + at, json_string_value(e), json_string_length(e));
        at += json_string_length(e);
        text[at++] = ',';
    }
    text[at] = '\0';
    rc = set_nets(cfg, o, text, why, len);
    mem_free(text);
    return rc;
}

static int set_json(daemon_config_t *cfg, const char *key, json_t *v, char *why, size_t len)
{
    const option_def_t *o = find(key);

    if (o == NULL) {
        snprintf(why, len, "unknown key \"%s\"", key);
        return -1;
    }
    if (o->kind == OPT_NETS)
        return set_json_nets(cfg, o, v, why, len);
    if (o->kind == OPT_HOSTS) {
        char *text = json_dumps(v, JSON_COMPACT);
        int rc = text ? set_hosts(cfg, o, text, why, len) : -1;
        if (text == NULL)
            snprintf(why, len, "%s: out of memory", key);
        mem_free(text);
        return rc;
    }
    if (o->kind == OPT_BOOL) {
        if (!json_is_boolean(v)) {
            snprintf(why, len, "\"%s\" must be true or false", key);
            return -1;
        }
        *(int *)(void *)((char *)cfg + o->offset) = json_is_true(v);
        return 0;
    }
    if (o->kind == OPT_RATE && json_is_string(v))
        return config_set(cfg, key, json_string_value(v), why, len);
    if (o->kind == OPT_STRING || o->kind == OPT_LEVEL || o->kind == OPT_PROXY ||
        o->kind == OPT_TEXT || o->kind == OPT_OVERWRITE) {
        if (!json_is_string(v)) {
            snprintf(why, len, "\"%s\" must be a string", key);
            return -1;
        }
        return config_set(cfg, key, json_string_value(v), why, len);
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        snprintf(why, len, "\"%s\" must be a non-negative integer", key);
        return -1;
    }
    return set_number(cfg, o, (uint64_t)json_integer_value(v), why, len);
}

static char *read_file(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    char *text = NULL;
    size_t len = 0, cap = 0, n;

    if (f == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    do {
        if (cap - len < 4096) {
            char *t = mem_realloc(text, cap + 65536);
            if (t == NULL) {
                snprintf(err, errlen, "%s: out of memory", path);
                mem_free(text);
                fclose(f);
                return NULL;
            }
            text = t;
            cap += 65536;
        }
        n = fread(text + len, 1, cap - len - 1, f);
        len += n;
    } while (n > 0 && len < (16u << 20));
    if (ferror(f) || len >= (16u << 20)) {
        snprintf(err, errlen, "%s: %s", path, ferror(f) ? strerror(errno) : "file too large");
        mem_free(text);
        fclose(f);
        return NULL;
    }
    fclose(f);
    text[len] = '\0';
    return text;
}

int config_load_file(daemon_config_t *cfg, const char *path, char *err, size_t errlen)
{
    char *text = read_file(path, err, errlen);
    json_error_t jerr;
    json_t *root, *v;
    const char *key;
    char why[256];
    int rc = 0;

    if (text == NULL)
        return -1;
    root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        snprintf(err, errlen, "%s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
        rc = -1;
    } else if (!json_is_object(root)) {
        snprintf(err, errlen, "%s:1: the configuration must be a JSON object", path);
        rc = -1;
    } else {
        json_object_foreach (root, key, v) {
            if (set_json(cfg, key, v, why, sizeof(why)) != 0) {
                snprintf(err, errlen, "%s:%d: %s", path, key_line(text, key), why);
                rc = -1;
                break;
            }
        }
    }
    json_decref(root);
    mem_free(text);
    return rc;
}

/* ---- the command line ----------------------------------------------------------- */

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
    {"max-clients", required_argument, NULL, 0},
    {"idle-timeout", required_argument, NULL, 0},
    {"pause-keep", required_argument, NULL, 0},
    {"ca-file", required_argument, NULL, 0},
    {"client-cert", required_argument, NULL, 0},
    {"client-key", required_argument, NULL, 0},
    {"retain-jobs", required_argument, NULL, 0},
    {"retain-seconds", required_argument, NULL, 0},
    {"shutdown-grace", required_argument, NULL, 0},
    {"log-level", required_argument, NULL, 0},
    {"max-queue-bytes", required_argument, NULL, 0},
    {"deny-networks", required_argument, NULL, 0},
    {"allow-networks", required_argument, NULL, 0},
    {"decode", required_argument, NULL, 0},
    {"decode-max-ratio", required_argument, NULL, 0},
    {"queue", required_argument, NULL, 0},
    {"log-jobs", required_argument, NULL, 0},
    {"history-interval", required_argument, NULL, 0},
    {"history-warmup", required_argument, NULL, 0},
    {"host-limits", required_argument, NULL, 0},
    {"bandwidth", required_argument, NULL, 0},
    {"limit-rate", required_argument, NULL, 0},
    {"max-limit-rate", required_argument, NULL, 0},
    {"proxy", required_argument, NULL, 0},
    {"no-proxy", required_argument, NULL, 0},
    {"progress-interval", required_argument, NULL, 0},
    {"overwrite", required_argument, NULL, 0},
    {"partial-keep", required_argument, NULL, 0},
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

int config_from_args(daemon_config_t *cfg, int argc, char **argv, const char **config_path,
                     char *err, size_t errlen)
{
    char why[512], key[64];
    int c, idx;

    /* Two passes, so -c FILE is read first and every other option overrides
     * it wherever it stands. optind = 0 makes glibc start over (reload). */
    *config_path = NULL;
    opterr = 0;
    optind = 0;
    while ((c = getopt_long(argc, argv, ":c:hV", long_options, &idx)) != -1) {
        switch (c) {
        case 'c':
            *config_path = optarg;
            if (config_load_file(cfg, optarg, why, sizeof(why)) != 0) {
                snprintf(err, errlen, "bad configuration: %s", why);
                return CONFIG_EX_CONFIG;
            }
            break;
        case 'h':
            return CONFIG_HELP;
        case 'V':
            return CONFIG_VERSION;
        case 0:
            break;
        case ':':
            snprintf(err, errlen, "option %s needs a value", argv[optind - 1]);
            return CONFIG_EX_USAGE;
        default:
            snprintf(err, errlen, "unknown option %s (see fetchd --help)", argv[optind - 1]);
            return CONFIG_EX_USAGE;
        }
    }
    if (optind < argc) {
        snprintf(err, errlen, "unexpected argument \"%s\" (see fetchd --help)", argv[optind]);
        return CONFIG_EX_USAGE;
    }
    optind = 0;
    while ((c = getopt_long(argc, argv, ":c:hV", long_options, &idx)) != -1) {
        if (c != 0)
            continue;
        option_key(long_options[idx].name, key, sizeof(key));
        if (config_set(cfg, key, optarg, why, sizeof(why)) != 0) {
            snprintf(err, errlen, "--%s: %s", long_options[idx].name, why);
            return CONFIG_EX_USAGE;
        }
    }
    return 0;
}
