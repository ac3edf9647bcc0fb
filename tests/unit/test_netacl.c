/* Unit tests for daemon/netacl.c: the CIDR parser and the deny/allow rule. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "err.h"
#include "mem.h"
#include "netacl.h"
#include "test.h"

static struct sockaddr_storage addr_of(const char *text)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (strchr(text, ':')) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(80);
        if (inet_pton(AF_INET6, text, &a->sin6_addr) != 1)
            fprintf(stderr, "bad test address %s\n", text);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons(80);
        if (inet_pton(AF_INET, text, &a->sin_addr) != 1)
            fprintf(stderr, "bad test address %s\n", text);
    }
    return ss;
}

/* ERR_FORBIDDEN or 0 for text under acl; msg gets the reason. */
static int check(const netacl_t *acl, const char *text, char *msg, size_t len)
{
    struct sockaddr_storage ss = addr_of(text);
    msg[0] = '\0';
    return netacl_check(acl, (struct sockaddr *)&ss, msg, len);
}

static int denied(const netacl_t *acl, const char *text)
{
    char msg[160];
    return check(acl, text, msg, sizeof(msg)) == ERR_FORBIDDEN;
}

static void test_parse_and_format(void)
{
    static const struct {
        const char *in, *out;
    } ok[] = {
        {"10.0.0.0/8", "10.0.0.0/8"},
        {"127.0.0.2", "127.0.0.2/32"},
        {"0.0.0.0/0", "0.0.0.0/0"},
        {"::", "::/128"},
        {"::1/128", "::1/128"},
        {"fe80::/10", "fe80::/10"},
        {"FD00:EC2::254", "fd00:ec2::254/128"},
        {"::ffff:127.0.0.0/104", "127.0.0.0/8"}, /* the mapped form is the IPv4 network */
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        netacl_net_t *v = NULL;
        size_t n = 0;
        char err[160] = "", out[80];
        CHECK_INT(netacl_parse(ok[i].in, &v, &n, err, sizeof(err)), 0);
        CHECK_INT(n, 1);
        if (n == 1) {
            netacl_format(&v[0], out, sizeof(out));
            CHECK_STR(out, ok[i].out);
        }
        mem_free(v);
    }
}

static void test_parse_refuses(void)
{
    static const char *const bad[] = {
        "10.0.0.1/8",     /* host bits set */
        "10.0.0.0/33",    /* prefix too long for IPv4 */
        "::/129",         /* and for IPv6 */
        "10.0.0.0/",      /* empty prefix */
        "10.0.0.0/-1",    /* negative */
        "10.0.0.0/+8",    /* signed */
        "10.0.0.0/8x",    /* trailing junk */
        "10.0.0",         /* not an address */
        "example.com/32", /* names are not networks */
        "1.2.3.4/32/1",   /* two slashes */
        "fe80::1%eth0",   /* zone ids are not networks */
        "0x7f000001",     /* no inet_aton forms */
        "127.1",          /* ... nor short ones */
        "1111111111111111111111111111111111111111111111111111111111111111111111/8",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        netacl_net_t *v = (netacl_net_t *)1;
        size_t n = 7;
        char err[160] = "";
        CHECK_INT(netacl_parse(bad[i], &v, &n, err, sizeof(err)), ERR_INVALID_REQUEST);
        CHECK(v == NULL && n == 0);
        CHECK(err[0] != '\0');
        if (strlen(bad[i]) < 40 && strstr(err, bad[i]) == NULL) {
            fprintf(stderr, "message for %s does not name it: %s\n", bad[i], err);
            CHECK(0);
        }
    }
}

static void test_lists(void)
{
    netacl_net_t *v = NULL;
    size_t n = 0;
    char err[160];

    /* Commas and white space separate; empty lists are valid and empty. */
    CHECK_INT(netacl_parse(" 10.0.0.0/8,, ::1\n192.168.0.0/16 ,", &v, &n, err, sizeof(err)), 0);
    CHECK_INT(n, 3);
    mem_free(v);
    CHECK_INT(netacl_parse("", &v, &n, err, sizeof(err)), 0);
    CHECK(v == NULL && n == 0);
    CHECK_INT(netacl_parse(" , ", &v, &n, err, sizeof(err)), 0);
    CHECK(v == NULL && n == 0);
    /* "default" expands to the built-in list, once. */
    CHECK_INT(netacl_parse("default, 127.0.0.0/8", &v, &n, err, sizeof(err)), 0);
    CHECK_INT(n, 8);
    mem_free(v);
    /* A bad entry after good ones: nothing is returned, nothing leaks. */
    CHECK_INT(netacl_parse("10.0.0.0/8, 1.2.3.4/40", &v, &n, err, sizeof(err)),
              ERR_INVALID_REQUEST);
    CHECK(v == NULL && n == 0);
    CHECK(strstr(err, "1.2.3.4/40") != NULL);
}

static void test_default_rules(void)
{
    netacl_t acl;
    char err[160], msg[160];

    CHECK_INT(netacl_init(&acl, NULL, NULL, err, sizeof(err)), 0);
    CHECK(denied(&acl, "169.254.169.254"));
    CHECK(denied(&acl, "::ffff:169.254.169.254")); /* mapped: matched as IPv4 */
    CHECK(denied(&acl, "0.0.0.0"));
    CHECK(denied(&acl, "0.1.2.3"));
    CHECK(denied(&acl, "::"));
    CHECK(denied(&acl, "::ffff:0.0.0.0"));
    CHECK(denied(&acl, "fe80::1"));
    CHECK(denied(&acl, "febf::1"));
    CHECK(denied(&acl, "fd00:ec2::254"));
    CHECK(denied(&acl, "100.100.100.200"));
    /* Loopback and ordinary addresses stay allowed. */
    CHECK(!denied(&acl, "127.0.0.1"));
    CHECK(!denied(&acl, "::1"));
    CHECK(!denied(&acl, "::ffff:127.0.0.1"));
    CHECK(!denied(&acl, "169.255.0.1"));
    CHECK(!denied(&acl, "fec0::1"));
    CHECK(!denied(&acl, "fd00:ec2::253"));
    CHECK(!denied(&acl, "1.0.0.0"));
    /* The message names the address and the rule. */
    CHECK_INT(check(&acl, "169.254.169.254", msg, sizeof(msg)), ERR_FORBIDDEN);
    CHECK(strstr(msg, "169.254.169.254") != NULL);
    CHECK(strstr(msg, "deny_networks 169.254.0.0/16") != NULL);
    CHECK_INT(check(&acl, "fe80::1", msg, sizeof(msg)), ERR_FORBIDDEN);
    CHECK(strstr(msg, "fe80::1") != NULL && strstr(msg, "fe80::/10") != NULL);
    netacl_dispose(&acl);
}

static void test_allow_wins(void)
{
    netacl_t acl;
    char err[160];

    CHECK_INT(netacl_init(&acl, "127.0.0.0/8, ::1", "127.0.0.1/32", err, sizeof(err)), 0);
    CHECK(!denied(&acl, "127.0.0.1"));
    CHECK(!denied(&acl, "::ffff:127.0.0.1"));
    CHECK(denied(&acl, "127.0.0.2"));
    CHECK(denied(&acl, "::ffff:127.0.0.2"));
    CHECK(denied(&acl, "127.255.255.255"));
    CHECK(denied(&acl, "::1"));
    /* The default deny list is replaced, not extended, by a given one. */
    CHECK(!denied(&acl, "169.254.169.254"));
    netacl_dispose(&acl);

    /* Allow wins even when it is the wider network. */
    CHECK_INT(netacl_init(&acl, "10.1.2.3/32", "10.0.0.0/8", err, sizeof(err)), 0);
    CHECK(!denied(&acl, "10.1.2.3"));
    netacl_dispose(&acl);

    /* An empty deny list denies nothing; ::/0 covers IPv4 too. */
    CHECK_INT(netacl_init(&acl, "", NULL, err, sizeof(err)), 0);
    CHECK(!denied(&acl, "169.254.169.254"));
    CHECK(!denied(&acl, "::"));
    netacl_dispose(&acl);
    CHECK_INT(netacl_init(&acl, "::/0", "2001:db8::/32", err, sizeof(err)), 0);
    CHECK(denied(&acl, "8.8.8.8"));
    CHECK(denied(&acl, "2001:db9::1"));
    CHECK(!denied(&acl, "2001:db8::1"));
    netacl_dispose(&acl);

    /* Odd prefix lengths cut inside a byte. */
    CHECK_INT(netacl_init(&acl, "192.168.0.0/23", NULL, err, sizeof(err)), 0);
    CHECK(denied(&acl, "192.168.1.255"));
    CHECK(!denied(&acl, "192.168.2.0"));
    netacl_dispose(&acl);

    /* A bad list leaves nothing behind. */
    CHECK_INT(netacl_init(&acl, "10.0.0.0/8", "nonsense", err, sizeof(err)), ERR_INVALID_REQUEST);
    CHECK(acl.deny == NULL && acl.allow == NULL);
    CHECK(netacl_check(NULL, (struct sockaddr *)&(struct sockaddr_storage){0}, err, sizeof(err)) ==
          0);
}

static void test_no_leaks(void)
{
    uint64_t blocks, bytes;
    mem_get(MEM_FETCHD, &blocks, &bytes);
    CHECK_INT(blocks, 0);
}

TEST_MAIN(TEST_CASE(test_parse_and_format), TEST_CASE(test_parse_refuses), TEST_CASE(test_lists),
          TEST_CASE(test_default_rules), TEST_CASE(test_allow_wins), TEST_CASE(test_no_leaks))
