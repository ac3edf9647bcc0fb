/* Unit tests for daemon/url.c: strict parsing, reference resolution (RFC 3986
 * section 5.4), copies, and that nothing stays on fetchd's heap. */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "err.h"
#include "mem.h"
#include "test.h"
#include "url.h"

static uint64_t live_blocks(void)
{
    uint64_t blocks, bytes;
    mem_get(MEM_FETCHD, &blocks, &bytes);
    return blocks;
}

static int is_zeroed(const url_t *u)
{
    static const url_t zero;
    return memcmp(u, &zero, sizeof(zero)) == 0;
}

typedef struct good_case {
    const char *in;
    url_scheme_t scheme;
    const char *host;
    unsigned port;
    int is_ip;
    const char *target;
    const char *authority;
    const char *href;
} good_case_t;

static const good_case_t good[] = {
    {"http://example.com", URL_HTTP, "example.com", 80, 0, "/", "example.com",
     "http://example.com/"},
    {"HTTPS://Example.COM:8443/a/B?x=Y#frag", URL_HTTPS, "example.com", 8443, 0, "/a/B?x=Y",
     "example.com:8443", "https://example.com:8443/a/B?x=Y"},
    {"HtTp://WWW.Example.org/Path", URL_HTTP, "www.example.org", 80, 0, "/Path", "www.example.org",
     "http://www.example.org/Path"},
    {"https://h:443/", URL_HTTPS, "h", 443, 0, "/", "h", "https://h/"},
    {"https://h:80/", URL_HTTPS, "h", 80, 0, "/", "h:80", "https://h:80/"},
    {"http://h:443/", URL_HTTP, "h", 443, 0, "/", "h:443", "http://h:443/"},
    {"http://h:/p", URL_HTTP, "h", 80, 0, "/p", "h", "http://h/p"},
    {"http://h:080/p", URL_HTTP, "h", 80, 0, "/p", "h", "http://h/p"},
    {"http://h:1", URL_HTTP, "h", 1, 0, "/", "h:1", "http://h:1/"},
    {"http://h:65535/", URL_HTTP, "h", 65535, 0, "/", "h:65535", "http://h:65535/"},
    {"http://127.0.0.1:8080/x", URL_HTTP, "127.0.0.1", 8080, 1, "/x", "127.0.0.1:8080",
     "http://127.0.0.1:8080/x"},
    {"http://[::1]/", URL_HTTP, "::1", 80, 1, "/", "[::1]", "http://[::1]/"},
    {"http://[::1]", URL_HTTP, "::1", 80, 1, "/", "[::1]", "http://[::1]/"},
    {"https://[2001:DB8::1]:8443/p", URL_HTTPS, "2001:db8::1", 8443, 1, "/p", "[2001:db8::1]:8443",
     "https://[2001:db8::1]:8443/p"},
    {"http://[::ffff:192.0.2.1]:/", URL_HTTP, "::ffff:192.0.2.1", 80, 1, "/", "[::ffff:192.0.2.1]",
     "http://[::ffff:192.0.2.1]/"},
    {"http://a?q=1", URL_HTTP, "a", 80, 0, "/?q=1", "a", "http://a/?q=1"},
    {"http://a/p?", URL_HTTP, "a", 80, 0, "/p?", "a", "http://a/p?"},
    {"http://a#f", URL_HTTP, "a", 80, 0, "/", "a", "http://a/"},
    {"http://a/p?q#f?g", URL_HTTP, "a", 80, 0, "/p?q", "a", "http://a/p?q"},
    {"http://my_host-1.Example./p%20q%2F?%41=%e9", URL_HTTP, "my_host-1.example.", 80, 0,
     "/p%20q%2F?%41=%e9", "my_host-1.example.", "http://my_host-1.example./p%20q%2F?%41=%e9"},
    {"http://a/./b/../c", URL_HTTP, "a", 80, 0, "/./b/../c", "a", "http://a/./b/../c"},
    {"http://a/{x}|y^z?[1]=@:/", URL_HTTP, "a", 80, 0, "/{x}|y^z?[1]=@:/", "a",
     "http://a/{x}|y^z?[1]=@:/"},
    {"http://a.0xg/", URL_HTTP, "a.0xg", 80, 0, "/", "a.0xg", "http://a.0xg/"},
    {"http://123.example/", URL_HTTP, "123.example", 80, 0, "/", "123.example",
     "http://123.example/"},
};

static void test_parse_good(void)
{
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        const good_case_t *c = &good[i];
        const char *msg = NULL;
        url_t u;
        int rc = url_parse(&u, c->in, &msg);
        if (rc != 0)
            fprintf(stderr, "  input: %s (%s)\n", c->in, msg ? msg : "");
        CHECK_INT(rc, 0);
        if (rc != 0)
            continue;
        CHECK_INT(u.scheme, c->scheme);
        CHECK_STR(u.host, c->host);
        CHECK_INT(u.port, c->port);
        CHECK_INT(u.host_is_ip, c->is_ip);
        CHECK_STR(u.target, c->target);
        CHECK_STR(u.authority, c->authority);
        CHECK_STR(u.href, c->href);
        url_dispose(&u);
        CHECK(is_zeroed(&u));
    }
    CHECK_INT(live_blocks(), 0);
}

typedef struct bad_case {
    const char *in;
    const char *why; /* a substring of the expected message */
} bad_case_t;

static const bad_case_t bad[] = {
    {"", "empty"},
    {"http://a/\r\n", "CR or LF"},
    {"http://a/b\nc", "CR or LF"},
    {"http://a/b\rc", "CR or LF"},
    {"http://a/\r\nHost: evil", "CR or LF"},
    {"http://a/ b", "space"},
    {" http://a/", "space"},
    {"http://a/ ", "space"},
    {"http://a/\tb", "control byte"},
    {"http://a/\x01", "control byte"},
    {"http://a/\x1f", "control byte"},
    {"http://a/\x7f", "control byte"},
    {"http://a/#\x01", "control byte"},
    {"http://a/\x80", "non-ASCII"},
    {"http://a/caf\xc3\xa9", "non-ASCII"},
    {"http://\xc3\xa9.example/", "non-ASCII"},
    {"http://a\\b/", "backslash"},
    {"http://a/b\\c", "backslash"},
    {"http://a:0/", "port out of range"},
    {"http://a:00/", "port out of range"},
    {"http://a:65536/", "port out of range"},
    {"http://a:99999999999999999999999/", "port out of range"},
    {"http://a:8o/", "invalid port"},
    {"http://a:-1/", "invalid port"},
    {"http://a::80/", "invalid port"},
    {"http://a:80:81/", "invalid port"},
    {"http://[::1/", "missing ']'"},
    {"http://[::1]x/", "after IPv6"},
    {"http://[::1]:0/", "port out of range"},
    {"http://[fe80::1%25eth0]/", "zone"},
    {"http://[fe80::1%eth0]/", "zone"},
    {"http://[::g]/", "invalid IPv6"},
    {"http://[]/", "invalid IPv6"},
    {"http://[1.2.3.4]/", "invalid IPv6"},
    {"http://::1/", "missing host"},
    {"http://user:pw@a/", "credentials in URLs are not supported"},
    {"http://user@a/", "credentials in URLs are not supported"},
    {"http://@a/", "credentials in URLs are not supported"},
    {"http://", "missing host"},
    {"http:///x", "missing host"},
    {"http://:80/", "missing host"},
    {"http://?q", "missing host"},
    {"http:/x", "missing \"//\""},
    {"http:x", "missing \"//\""},
    {"http:", "missing \"//\""},
    {"ftp://a/", "unsupported scheme"},
    {"file:///etc/passwd", "unsupported scheme"},
    {"mailto:x@y", "unsupported scheme"},
    {"httpx://a/", "unsupported scheme"},
    {"//a/b", "missing scheme"},
    {"/abs", "missing scheme"},
    {"a/b", "missing scheme"},
    {"example.com", "missing scheme"},
    {"1http://a/", "missing scheme"},
    {"http://a/%", "percent escape"},
    {"http://a/%4", "percent escape"},
    {"http://a/%zz", "percent escape"},
    {"http://a/?q=%g1", "percent escape"},
    {"http://a/?q=%", "percent escape"},
    {"http://a b/", "space"},
    {"http://a!b/", "invalid character in host"},
    {"http://a%41/", "invalid character in host"},
    {"http://a,b/", "invalid character in host"},
    {"http://1.2.3/", "invalid IPv4"},
    {"http://127.1/", "invalid IPv4"},
    {"http://0x7f000001/", "invalid IPv4"},
    {"http://0x7f.0.0.1/", "invalid IPv4"},
    {"http://2130706433/", "invalid IPv4"},
    {"http://1.2.3.256/", "invalid IPv4"},
    {"http://01.2.3.4/", "invalid IPv4"},
    {"http://1.2.3.4./", "invalid IPv4"},
    {"http://a.123/", "invalid IPv4"},
    {"http://a.0x/", "invalid IPv4"},
    {"http://a.0X1f./", "invalid IPv4"},
};

static void test_parse_bad(void)
{
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *msg = NULL;
        url_t u;
        memset(&u, 0xa5, sizeof(u));
        int rc = url_parse(&u, bad[i].in, &msg);
        if (rc != ERR_INVALID_REQUEST || msg == NULL || strstr(msg, bad[i].why) == NULL)
            fprintf(stderr, "  input: \"%s\" -> %d (%s)\n", bad[i].in, rc, msg ? msg : "");
        CHECK_INT(rc, ERR_INVALID_REQUEST);
        CHECK(msg != NULL && strstr(msg, bad[i].why) != NULL);
        CHECK(is_zeroed(&u));
    }
    /* A NULL msg is allowed, and NULL input is refused rather than crashing. */
    url_t u;
    CHECK_INT(url_parse(&u, "ftp://a/", NULL), ERR_INVALID_REQUEST);
    CHECK_INT(url_parse(&u, NULL, NULL), ERR_INVALID_REQUEST);
    CHECK_INT(live_blocks(), 0);
}

/* Writes "http://" + a host of n characters (63-character labels) + "/". */
static void long_host_url(char *buf, size_t n)
{
    size_t pos = (size_t)sprintf(buf, "http://");
    for (size_t i = 0; i < n; i++)
        buf[pos++] = i % 64 == 63 ? '.' : 'a';
    strcpy(buf + pos, "/");
}

static void test_parse_host_length(void)
{
    char in[300];
    url_t u;
    const char *msg = NULL;
    long_host_url(in, 253);
    CHECK_INT(url_parse(&u, in, &msg), 0);
    CHECK_INT(u.host ? strlen(u.host) : 0, 253);
    url_dispose(&u);
    long_host_url(in, 254);
    CHECK_INT(url_parse(&u, in, &msg), ERR_INVALID_REQUEST);
    CHECK(msg != NULL && strstr(msg, "too long") != NULL);
    CHECK_INT(live_blocks(), 0);
}

typedef struct resolve_case {
    const char *ref;
    const char *href; /* NULL: refused */
} resolve_case_t;

/* RFC 3986 sections 5.4.1 and 5.4.2 with the base "http://a/b/c/d;p?q". */
static const resolve_case_t rfc[] = {
    {"g:h", NULL},
    {"g", "http://a/b/c/g"},
    {"./g", "http://a/b/c/g"},
    {"g/", "http://a/b/c/g/"},
    {"/g", "http://a/g"},
    {"//g", "http://g/"},
    {"?y", "http://a/b/c/d;p?y"},
    {"g?y", "http://a/b/c/g?y"},
    {"#s", "http://a/b/c/d;p?q"},
    {"g#s", "http://a/b/c/g"},
    {"g?y#s", "http://a/b/c/g?y"},
    {";x", "http://a/b/c/;x"},
    {"g;x", "http://a/b/c/g;x"},
    {"g;x?y#s", "http://a/b/c/g;x?y"},
    {"", "http://a/b/c/d;p?q"},
    {".", "http://a/b/c/"},
    {"./", "http://a/b/c/"},
    {"..", "http://a/b/"},
    {"../", "http://a/b/"},
    {"../g", "http://a/b/g"},
    {"../..", "http://a/"},
    {"../../", "http://a/"},
    {"../../g", "http://a/g"},
    {"../../../g", "http://a/g"},
    {"../../../../g", "http://a/g"},
    {"/./g", "http://a/g"},
    {"/../g", "http://a/g"},
    {"g.", "http://a/b/c/g."},
    {".g", "http://a/b/c/.g"},
    {"g..", "http://a/b/c/g.."},
    {"..g", "http://a/b/c/..g"},
    {"./../g", "http://a/b/g"},
    {"./g/.", "http://a/b/c/g/"},
    {"g/./h", "http://a/b/c/g/h"},
    {"g/../h", "http://a/b/c/h"},
    {"g;x=1/./y", "http://a/b/c/g;x=1/y"},
    {"g;x=1/../y", "http://a/b/c/y"},
    {"g?y/./x", "http://a/b/c/g?y/./x"},
    {"g?y/../x", "http://a/b/c/g?y/../x"},
    {"g#s/./x", "http://a/b/c/g"},
    {"g#s/../x", "http://a/b/c/g"},
    {"http:g", NULL}, /* strict parsers refuse it (section 5.4.2) */
};

static void check_resolve(const url_t *base, const resolve_case_t *c)
{
    url_t out;
    const char *msg = NULL;
    int rc = url_resolve(&out, base, c->ref, &msg);
    if (c->href == NULL) {
        CHECK_INT(rc, ERR_INVALID_REQUEST);
        CHECK(msg != NULL);
        CHECK(is_zeroed(&out));
        return;
    }
    if (rc != 0)
        fprintf(stderr, "  ref: \"%s\" (%s)\n", c->ref, msg ? msg : "");
    CHECK_INT(rc, 0);
    if (rc == 0 && strcmp(out.href, c->href) != 0)
        fprintf(stderr, "  ref: \"%s\"\n", c->ref);
    CHECK_STR(out.href, c->href);
    url_dispose(&out);
}

static void test_resolve_rfc(void)
{
    url_t base;
    CHECK_INT(url_parse(&base, "http://a/b/c/d;p?q", NULL), 0);
    for (size_t i = 0; i < sizeof(rfc) / sizeof(rfc[0]); i++)
        check_resolve(&base, &rfc[i]);
    url_dispose(&base);
    CHECK_INT(live_blocks(), 0);
}

static const resolve_case_t more[] = {
    {"HTTPS://Other.Example:8443/x/../y#f", "https://other.example:8443/y"},
    {"https://other.example:443/", "https://other.example/"},
    {"//other/p", "https://other/p"},
    {"//other:8443", "https://other:8443/"},
    {"/c?d=e", "https://h:8443/c?d=e"},
    {"c", "https://h:8443/a/c"},
    {"?", "https://h:8443/a/b?"},
    {"/%7Euser/../x", "https://h:8443/x"},
    {"ftp://x/", NULL},
    {"javascript:alert(1)", NULL},
    {"data:text/plain,x", NULL},
    {" /x", NULL},
    {"/x ", NULL},
    {"/x\r\n", NULL},
    {"\t/x", NULL},
    {"/x\x80", NULL},
    {"/x\\y", NULL},
    {"/%zz", NULL},
    {"//user@evil/", NULL},
    {"//", NULL},
    {"https:/x", NULL},
};

static void test_resolve_more(void)
{
    url_t base, v6;
    const char *msg = NULL;
    CHECK_INT(url_parse(&base, "https://H:8443/a/b?q#f", NULL), 0);
    for (size_t i = 0; i < sizeof(more) / sizeof(more[0]); i++)
        check_resolve(&base, &more[i]);

    url_t out;
    CHECK_INT(url_resolve(&out, &base, "ftp://x/", &msg), ERR_INVALID_REQUEST);
    CHECK(msg != NULL && strstr(msg, "unsupported scheme") != NULL);
    CHECK_INT(url_resolve(&out, &base, "//u:p@h/", &msg), ERR_INVALID_REQUEST);
    CHECK(msg != NULL && strstr(msg, "credentials") != NULL);
    url_dispose(&base);

    CHECK_INT(url_parse(&v6, "http://[::1]:81/a/b", NULL), 0);
    CHECK_INT(url_resolve(&out, &v6, "../c", NULL), 0);
    CHECK_STR(out.href, "http://[::1]:81/c");
    CHECK_STR(out.host, "::1");
    CHECK_INT(out.port, 81);
    CHECK_INT(out.host_is_ip, 1);
    url_dispose(&out);
    url_dispose(&v6);
    CHECK_INT(live_blocks(), 0);
}

static void test_copy_and_origin(void)
{
    url_t a, b, c, d, copy, zero;
    CHECK_INT(url_parse(&a, "http://A/x", NULL), 0);
    CHECK_INT(url_parse(&b, "http://a:80/y?z", NULL), 0);
    CHECK_INT(url_parse(&c, "https://a/x", NULL), 0);
    CHECK_INT(url_parse(&d, "http://a:8080/x", NULL), 0);
    CHECK(url_same_origin(&a, &b));
    CHECK(!url_same_origin(&a, &c));
    CHECK(!url_same_origin(&a, &d));

    CHECK_INT(url_copy(&copy, &b), 0);
    CHECK(copy.href != b.href);
    CHECK_STR(copy.href, "http://a/y?z");
    CHECK_STR(copy.host, "a");
    CHECK_STR(copy.authority, "a");
    CHECK_STR(copy.target, "/y?z");
    CHECK_INT(copy.port, 80);
    url_dispose(&b);
    /* The copy is independent: it outlives the original. */
    CHECK_STR(copy.target, "/y?z");
    CHECK(url_same_origin(&a, &copy));
    url_dispose(&copy);

    memset(&zero, 0, sizeof(zero));
    CHECK_INT(url_copy(&copy, &zero), 0);
    CHECK(is_zeroed(&copy));
    url_dispose(&copy);
    url_dispose(&a);
    url_dispose(&c);
    url_dispose(&d);
    CHECK_STR(url_scheme_name(URL_HTTP), "http");
    CHECK_STR(url_scheme_name(URL_HTTPS), "https");
    CHECK_INT(live_blocks(), 0);
}

static void test_no_memory(void)
{
    url_t u, base, out;
    CHECK_INT(url_parse(&base, "http://a/b/c", NULL), 0);

    mem_fail_after(1);
    CHECK_INT(url_parse(&u, "http://a/", NULL), ERR_NO_MEMORY);
    CHECK(is_zeroed(&u));
    for (long n = 1; n <= 2; n++) {
        mem_fail_after(n);
        CHECK_INT(url_resolve(&out, &base, "../d", NULL), ERR_NO_MEMORY);
        CHECK(is_zeroed(&out));
    }
    mem_fail_after(1);
    CHECK_INT(url_copy(&out, &base), ERR_NO_MEMORY);
    CHECK(is_zeroed(&out));
    mem_fail_after(0);

    url_dispose(&base);
    url_dispose(&base); /* safe on a zeroed url_t */
    CHECK_INT(live_blocks(), 0);
}

/* url_parse_into(): a URL whose strings fit the room takes no allocation
 * and is not freed by url_dispose(); one that does not fit gets a block of
 * its own; a copy of a URL in a room is a block of its own. */
static void test_parse_into_room(void)
{
    char room[96], small[16];
    uint64_t total = mem_allocations_total(MEM_FETCHD);
    const char *msg = NULL;
    url_t u, v, w;

    CHECK_INT(url_parse_into(&u, "HTTP://Example.COM:80/a/b?q=1", &msg, room, sizeof(room)), 0);
    CHECK_INT(mem_allocations_total(MEM_FETCHD), total);
    CHECK_INT(u.in_room, 1);
    CHECK(u.href >= room && u.href < room + sizeof(room));
    CHECK_STR(u.href, "http://example.com/a/b?q=1");
    CHECK_STR(u.host, "example.com");
    CHECK_STR(u.authority, "example.com");
    CHECK_STR(u.target, "/a/b?q=1");
    CHECK_INT(url_copy(&v, &u), 0);
    CHECK_INT(v.in_room, 0);
    CHECK(v.href < room || v.href >= room + sizeof(room));
    CHECK_STR(v.href, u.href);
    url_dispose(&u);
    CHECK_STR(v.target, "/a/b?q=1");
    url_dispose(&v);
    CHECK_INT(url_parse_into(&w, "http://example.com/a/b?q=1", &msg, small, sizeof(small)), 0);
    CHECK_INT(w.in_room, 0);
    CHECK_STR(w.host, "example.com");
    CHECK_INT(mem_allocations_total(MEM_FETCHD), total + 2);
    url_dispose(&w);
    CHECK_INT(live_blocks(), 0);
}

/* A host of dot-separated numbers is an address exactly when inet_pton()
 * takes it (url.c finds the plain form without it). */
static void test_ipv4_like_inet_pton(void)
{
    static const char *const part[] = {"0", "1", "00", "01", "9", "255", "256", "1000", ""};
    const size_t np = sizeof(part) / sizeof(part[0]);
    size_t idx[5];

    for (size_t count = 3; count <= 5; count++) {
        size_t combos = 1;
        for (size_t k = 0; k < count; k++)
            combos *= np;
        for (size_t c = 0; c < combos; c++) {
            char host[64] = "", url[96];
            unsigned char addr[4];
            const char *msg = NULL;
            size_t x = c;
            url_t u;
            int ok, want;

            for (size_t k = 0; k < count; k++, x /= np)
                idx[k] = x % np;
            for (size_t k = 0; k < count; k++)
                snprintf(host + strlen(host), sizeof(host) - strlen(host), "%s%s", k ? "." : "",
                         part[idx[k]]);
            snprintf(url, sizeof(url), "http://%s/", host);
            ok = url_parse(&u, url, &msg) == 0;
            want = inet_pton(AF_INET, host, addr) == 1;
            if (ok && !u.host_is_ip)
                ok = -1; /* a name, not an address: not what this test makes */
            if (ok != want && ok != -1) {
                fprintf(stderr, "  host \"%s\": url_parse %d, inet_pton %d\n", host, ok, want);
                CHECK_INT(ok, want);
                url_dispose(&u);
                return;
            }
            if (ok != 0)
                url_dispose(&u);
        }
    }
    CHECK_INT(live_blocks(), 0);
}

TEST_MAIN(TEST_CASE(test_parse_good), TEST_CASE(test_ipv4_like_inet_pton),
          TEST_CASE(test_parse_into_room), TEST_CASE(test_parse_bad),
          TEST_CASE(test_parse_host_length), TEST_CASE(test_resolve_rfc),
          TEST_CASE(test_resolve_more), TEST_CASE(test_copy_and_origin), TEST_CASE(test_no_memory))
