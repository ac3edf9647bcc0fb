/* netacl — destination address rules; see netacl.h. */
#include "netacl.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "mem.h"

#define NETACL_MAX_ENTRY 64
#define NETACL_MAX_NETS  4096

static const uint8_t v4_mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static int is_v4_mapped(const uint8_t a[16])
{
    return memcmp(a, v4_mapped_prefix, 12) == 0;
}

/* Whether addr lies in net: its first net->bits bits are net's. */
static int net_contains(const netacl_net_t *net, const uint8_t addr[16])
{
    unsigned full = net->bits / 8, rest = net->bits % 8;

    if (memcmp(net->addr, addr, full) != 0)
        return 0;
    if (rest == 0)
        return 1;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (net->addr[full] & mask) == (addr[full] & mask);
}

static int host_bits_clear(const netacl_net_t *net)
{
    for (unsigned i = net->bits; i < 128; i++)
        if (net->addr[i / 8] & (0x80 >> (i % 8)))
            return 0;
    return 1;
}

/* Parses one "address[/prefix]" entry. */
static int parse_net(const char *s, netacl_net_t *net, char *err, size_t errlen)
{
    char text[NETACL_MAX_ENTRY];
    char *slash, *end;
    unsigned max;
    struct in_addr a4;
    long bits;

    if (strlen(s) >= sizeof(text)) {
        snprintf(err, errlen, "network \"%.40s...\" is too long", s);
        return ERR_INVALID_REQUEST;
    }
    strcpy(text, s);
    slash = strchr(text, '/');
    if (slash)
        *slash = '\0';
    memset(net, 0, sizeof(*net));
    if (inet_pton(AF_INET, text, &a4) == 1) {
        memcpy(net->addr, v4_mapped_prefix, 12);
        memcpy(net->addr + 12, &a4, 4);
        max = 32;
    } else if (inet_pton(AF_INET6, text, net->addr) == 1) {
        max = 128;
    } else {
        snprintf(err, errlen, "\"%s\" is not an IPv4 or IPv6 network", s);
        return ERR_INVALID_REQUEST;
    }
    bits = max;
    if (slash) {
        errno = 0;
        bits = strtol(slash + 1, &end, 10);
        if (errno || end == slash + 1 || *end != '\0' || slash[1] == '-' || slash[1] == '+' ||
            bits < 0 || bits > (long)max) {
            snprintf(err, errlen, "\"%s\": the prefix length must be 0 to %u", s, max);
            return ERR_INVALID_REQUEST;
        }
    }
    net->bits = (unsigned)bits + (128 - max);
    if (!host_bits_clear(net)) {
        snprintf(err, errlen, "\"%s\" has bits set below its /%ld prefix", s, bits);
        return ERR_INVALID_REQUEST;
    }
    return 0;
}

static int is_sep(char c)
{
    return c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Appends the networks of list to *v (depth guards "default" inside the
 * default list, which has none, against a future loop). */
static int parse_into(const char *list, netacl_net_t **v, size_t *n, size_t *cap, int depth,
                      char *err, size_t errlen)
{
    const char *p = list;

    while (*p) {
        char entry[NETACL_MAX_ENTRY + 1];
        size_t len = 0;
        int rc;

        while (is_sep(*p))
            p++;
        if (*p == '\0')
            break;
        while (p[len] && !is_sep(p[len]))
            len++;
        if (len >= sizeof(entry)) {
            snprintf(err, errlen, "network \"%.40s...\" is too long", p);
            return ERR_INVALID_REQUEST;
        }
        memcpy(entry, p, len);
        entry[len] = '\0';
        p += len;
        if (strcmp(entry, "default") == 0 && depth == 0) {
            rc = parse_into(NETACL_DEFAULT_DENY, v, n, cap, 1, err, errlen);
            if (rc != 0)
                return rc;
            continue;
        }
        if (*n == *cap) {
            size_t ncap = *cap ? 2 * *cap : 8;
            netacl_net_t *t;
            if (ncap > NETACL_MAX_NETS) {
                snprintf(err, errlen, "more than %d networks", NETACL_MAX_NETS);
                return ERR_INVALID_REQUEST;
            }
            t = mem_realloc(*v, ncap * sizeof(*t));
            if (t == NULL) {
                snprintf(err, errlen, "%s", err_str(ERR_NO_MEMORY));
                return ERR_NO_MEMORY;
            }
            *v = t;
            *cap = ncap;
        }
        rc = parse_net(entry, &(*v)[*n], err, errlen);
        if (rc != 0)
            return rc;
        (*n)++;
    }
    return 0;
}

int netacl_parse(const char *list, netacl_net_t **out, size_t *n, char *err, size_t errlen)
{
    netacl_net_t *v = NULL;
    size_t count = 0, cap = 0;
    int rc = parse_into(list, &v, &count, &cap, 0, err, errlen);

    if (rc != 0 || count == 0) {
        mem_free(v);
        v = NULL;
        count = 0;
    }
    *out = v;
    *n = count;
    return rc;
}

int netacl_init(netacl_t *acl, const char *deny, const char *allow, char *err, size_t errlen)
{
    int rc;

    memset(acl, 0, sizeof(*acl));
    rc = netacl_parse(deny ? deny : NETACL_DEFAULT_DENY, &acl->deny, &acl->ndeny, err, errlen);
    if (rc == 0 && allow)
        rc = netacl_parse(allow, &acl->allow, &acl->nallow, err, errlen);
    if (rc != 0)
        netacl_dispose(acl);
    return rc;
}

void netacl_dispose(netacl_t *acl)
{
    mem_free(acl->deny);
    mem_free(acl->allow);
    memset(acl, 0, sizeof(*acl));
}

void netacl_format(const netacl_net_t *net, char *out, size_t len)
{
    char a[INET6_ADDRSTRLEN];

    if (is_v4_mapped(net->addr) && net->bits >= 96) {
        inet_ntop(AF_INET, net->addr + 12, a, sizeof(a));
        snprintf(out, len, "%s/%u", a, net->bits - 96);
    } else {
        inet_ntop(AF_INET6, net->addr, a, sizeof(a));
        snprintf(out, len, "%s/%u", a, net->bits);
    }
}

static const netacl_net_t *find(const netacl_net_t *v, size_t n, const uint8_t addr[16])
{
    for (size_t i = 0; i < n; i++)
        if (net_contains(&v[i], addr))
            return &v[i];
    return NULL;
}

int netacl_check(const netacl_t *acl, const struct sockaddr *sa, char *msg, size_t msglen)
{
    uint8_t addr[16];
    const netacl_net_t *hit;
    char shown[INET6_ADDRSTRLEN], rule[INET6_ADDRSTRLEN + 8];

    if (acl == NULL)
        return 0;
    if (sa->sa_family == AF_INET) {
        memcpy(addr, v4_mapped_prefix, 12);
        memcpy(addr + 12, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        memcpy(addr, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
    } else {
        snprintf(msg, msglen, "address family %d is not allowed", sa->sa_family);
        return ERR_FORBIDDEN;
    }
    hit = find(acl->deny, acl->ndeny, addr);
    if (hit == NULL || find(acl->allow, acl->nallow, addr) != NULL)
        return 0;
    if (is_v4_mapped(addr))
        inet_ntop(AF_INET, addr + 12, shown, sizeof(shown));
    else
        inet_ntop(AF_INET6, addr, shown, sizeof(shown));
    netacl_format(hit, rule, sizeof(rule));
    snprintf(msg, msglen, "address %s is forbidden by deny_networks %s", shown, rule);
    return ERR_FORBIDDEN;
}
