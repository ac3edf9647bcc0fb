/* netacl — the destination address rules: deny_networks and allow_networks.
 *
 * Every address a job is about to connect to is checked against two CIDR
 * lists. The rule: an address is forbidden when it lies in some network of
 * the deny list and in no network of the allow list; the allow list wins
 * whatever the prefix lengths. IPv4 addresses are held as IPv4-mapped IPv6
 * addresses (::ffff:a.b.c.d), so an IPv4 network also covers the mapped
 * form of its addresses and ::ffff:127.0.0.2 is matched as 127.0.0.2.
 *
 * A list is text: networks separated by commas or white space, each an
 * address with an optional /prefix ("169.254.0.0/16", "::1", "fe80::/10");
 * the word "default" stands for NETACL_DEFAULT_DENY. Host bits below the
 * prefix must be zero.
 *
 * Ownership: a netacl_t owns its rule arrays; netacl_dispose() frees them.
 */
#ifndef FETCHD_NETACL_H
#define FETCHD_NETACL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Link-local, cloud metadata and "this host" addresses: what fetchd denies
 * when no deny_networks is configured. Loopback is not in it. */
#define NETACL_DEFAULT_DENY                                                              \
    "0.0.0.0/8, 169.254.0.0/16, 100.100.100.200/32, 192.0.0.192/32, ::/128, fe80::/10, " \
    "fd00:ec2::254/128"

typedef struct netacl_net {
    uint8_t addr[16]; /* IPv6, or IPv4-mapped IPv6 */
    unsigned bits;    /* prefix length over the 128 bits */
} netacl_net_t;

typedef struct netacl {
    netacl_net_t *deny; /* owned */
    size_t ndeny;
    netacl_net_t *allow; /* owned */
    size_t nallow;
} netacl_t;

/* Parses one list into *out (a new array the caller owns, NULL when the list
 * is empty) and *n. Returns 0, ERR_INVALID_REQUEST with errmsg naming the
 * entry at fault, or ERR_NO_MEMORY. */
int netacl_parse(const char *list, netacl_net_t **out, size_t *n, char *errmsg, size_t errlen);

/* Builds acl from the two lists; deny NULL means NETACL_DEFAULT_DENY and
 * allow NULL an empty list. On failure acl is left zeroed (nothing to
 * dispose). Returns as netacl_parse(). */
int netacl_init(netacl_t *acl, const char *deny, const char *allow, char *errmsg, size_t errlen);

void netacl_dispose(netacl_t *acl);

/* Checks one address (AF_INET or AF_INET6). Returns 0 when it may be
 * connected to, or ERR_FORBIDDEN with msg naming the address and the deny
 * network that matched. A NULL acl allows everything. */
int netacl_check(const netacl_t *acl, const struct sockaddr *sa, char *msg, size_t msglen);

/* Writes net as "a.b.c.d/n" or "x::y/n" into out. */
void netacl_format(const netacl_net_t *net, char *out, size_t len);

#endif
