/* Unit tests for daemon/proxy.c: proxy URLs, no_proxy matching (curl's
 * rules) and the selection order. */
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "mem.h"
#include "proxy.h"
#include "stats.h"
#include "test.h"

static stats_t st;

static proxy_t *parse_ok(const char *s)
{
    char why[160] = "";
    proxy_t *p = NULL;
    int rc = proxy_parse(s, &st, &p, why, sizeof(why));
    if (rc != 0)
        fprintf(stderr, "parse %s: %s\n", s, why);
    CHECK_INT(rc, 0);
    return p;
}

static void test_parse(void)
{
    proxy_t *p = parse_ok("http://proxy.example:3128");
    CHECK(p->kind == PROXY_HTTP);
    CHECK_STR(p->host, "proxy.example");
    CHECK_INT(p->port, 3128);
    CHECK(p->user == NULL && p->basic == NULL && p->cred_id == 0);
    CHECK_STR(p->shown, "http://proxy.example:3128");
    CHECK_INT(st.objects[STATS_OBJ_PROXY], 1);
    CHECK_INT(proxy_decref(p), 1);
    CHECK_INT(st.objects[STATS_OBJ_PROXY], 0);

    /* The default port is 1080 for every kind, as in curl. */
    p = parse_ok("socks5h://Proxy.Example");
    CHECK(p->kind == PROXY_SOCKS5H);
    CHECK_INT(p->port, 1080);
    CHECK_STR(p->host, "proxy.example");
    proxy_decref(p);
    p = parse_ok("http://10.0.0.1/");
    CHECK_INT(p->port, 1080);
    CHECK(p->host_is_ip);
    proxy_decref(p);
    /* No scheme: an HTTP proxy, as curl takes it. */
    p = parse_ok("127.0.0.1:8080");
    CHECK(p->kind == PROXY_HTTP);
    CHECK_INT(p->port, 8080);
    proxy_decref(p);
    p = parse_ok("socks5://[::1]:1081");
    CHECK(p->kind == PROXY_SOCKS5 && p->host_is_ip);
    CHECK_STR(p->host, "::1");
    CHECK_STR(p->shown, "socks5://[::1]:1081");
    proxy_decref(p);
}

static void test_credentials(void)
{
    proxy_t *p = parse_ok("http://al%40ice:s%3Acret%25@127.0.0.1:3128");
    CHECK_STR(p->user, "al@ice");
    CHECK_STR(p->pass, "s:cret%");
    /* base64("al@ice:s:cret%") */
    CHECK_STR(p->basic, "YWxAaWNlOnM6Y3JldCU=");
    CHECK(p->cred_id != 0);
    CHECK_STR(p->shown, "http://127.0.0.1:3128");
    CHECK(strstr(p->shown, "ice") == NULL);
    proxy_decref(p);
    p = parse_ok("socks5://bob@h:1");
    CHECK_STR(p->user, "bob");
    CHECK_STR(p->pass, "");
    proxy_decref(p);
}

static void test_refused(void)
{
    static const char *const bad[] = {
        "https://proxy:443",  "socks4://proxy",     "ftp://proxy",    "http://",
        "http://proxy:0",     "http://proxy:65536", "http://proxy:x", "http://pro xy",
        "http://proxy/path",  "http://proxy?q",     "http://[::1",    "http://u:%zz@proxy",
        "http://u:%00@proxy", "http://[nothex]:1",
    };
    char why[160];
    proxy_t *p = NULL;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        why[0] = '\0';
        if (proxy_parse(bad[i], &st, &p, why, sizeof(why)) != ERR_INVALID_REQUEST) {
            fprintf(stderr, "accepted %s\n", bad[i]);
            CHECK(0);
            proxy_decref(p);
        }
        CHECK(why[0] != '\0');
        CHECK_INT(proxy_validate(bad[i], why, sizeof(why)), ERR_INVALID_REQUEST);
    }
    CHECK(proxy_parse("https://proxy", &st, &p, why, sizeof(why)) == ERR_INVALID_REQUEST &&
          strstr(why, "unsupported proxy scheme") != NULL);
    /* The message never quotes the credentials. */
    CHECK(proxy_parse("http://user:topsecret@proxy/x", &st, &p, why, sizeof(why)) != 0);
    CHECK(strstr(why, "topsecret") == NULL);
    CHECK_INT(proxy_validate("", why, sizeof(why)), 0);
    /* RFC 1929 allows 255 bytes of user name and of password (decoded). */
    {
        char url[1024], name[300];
        memset(name, 'u', 255);
        name[255] = '\0';
        snprintf(url, sizeof(url), "socks5://%s:%%41@h", name);
        CHECK_INT(proxy_validate(url, why, sizeof(why)), 0);
        p = parse_ok(url);
        CHECK_INT(strlen(p->user), 255);
        CHECK_STR(p->pass, "A");
        proxy_decref(p);
        snprintf(url, sizeof(url), "socks5://%su:x@h", name);
        CHECK_INT(proxy_validate(url, why, sizeof(why)), ERR_INVALID_REQUEST);
        CHECK_INT(proxy_validate("http://u:%4@h", why, sizeof(why)), ERR_INVALID_REQUEST);
        CHECK_INT(proxy_validate("http://u:%4", why, sizeof(why)), ERR_INVALID_REQUEST);
    }
    CHECK_INT(st.objects[STATS_OBJ_PROXY], 0);
}

static void test_no_proxy(void)
{
    /* Host suffixes on a label boundary, a leading dot ignored. */
    CHECK(proxy_no_proxy_match("example.com", "example.com"));
    CHECK(proxy_no_proxy_match("example.com", "www.example.com"));
    CHECK(proxy_no_proxy_match(".example.com", "example.com"));
    CHECK(proxy_no_proxy_match(".example.com", "a.b.example.com"));
    CHECK(!proxy_no_proxy_match("example.com", "badexample.com"));
    CHECK(!proxy_no_proxy_match("www.example.com", "example.com"));
    CHECK(proxy_no_proxy_match("EXAMPLE.com", "www.example.COM"));
    CHECK(proxy_no_proxy_match("foo, bar.org ,example.com", "x.example.com"));
    CHECK(proxy_no_proxy_match("foo bar.org", "bar.org"));
    CHECK(proxy_no_proxy_match("example.com:8080", "example.com"));
    CHECK(proxy_no_proxy_match("example.com", "example.com."));
    /* "*" alone matches everything; inside a name it is not a wildcard. */
    CHECK(proxy_no_proxy_match("*", "anything.at.all"));
    CHECK(proxy_no_proxy_match("a.org,*", "b.org"));
    CHECK(!proxy_no_proxy_match("*.example.com", "www.example.com"));
    /* IP literals and CIDR networks. */
    CHECK(proxy_no_proxy_match("127.0.0.1", "127.0.0.1"));
    CHECK(!proxy_no_proxy_match("127.0.0.1", "127.0.0.2"));
    CHECK(proxy_no_proxy_match("10.0.0.0/8", "10.1.2.3"));
    CHECK(!proxy_no_proxy_match("10.0.0.0/8", "11.1.2.3"));
    CHECK(proxy_no_proxy_match("192.168.1.0/24", "192.168.1.77"));
    CHECK(proxy_no_proxy_match("::1", "::1"));
    CHECK(proxy_no_proxy_match("[::1]", "::1"));
    CHECK(proxy_no_proxy_match("fd00::/8", "fd12::5"));
    CHECK(!proxy_no_proxy_match("fd00::/8", "fe80::1"));
    CHECK(!proxy_no_proxy_match("10.0.0.0/8", "ten.example"));
    /* Empty lists and entries match nothing. */
    CHECK(!proxy_no_proxy_match(NULL, "example.com"));
    CHECK(!proxy_no_proxy_match("", "example.com"));
    CHECK(!proxy_no_proxy_match(",, ,", "example.com"));
    CHECK(!proxy_no_proxy_match(".", "example.com"));
}

static url_t url_of(const char *s)
{
    url_t u;
    const char *msg;
    CHECK_INT(url_parse(&u, s, &msg), 0);
    return u;
}

/* The shown form of the proxy chosen for url, or "direct". */
static const char *chosen(const proxy_conf_t *pc, const char *url, const char *job_proxy,
                          const char *job_no)
{
    static char out[200];
    char why[160];
    proxy_t *p = NULL;
    url_t u = url_of(url);
    int rc = proxy_select(pc, &u, job_proxy, job_no, &p, why, sizeof(why));

    if (rc != 0)
        snprintf(out, sizeof(out), "error %s: %s", err_name(rc), why);
    else
        snprintf(out, sizeof(out), "%s", p ? p->shown : "direct");
    if (p)
        proxy_decref(p);
    url_dispose(&u);
    return out;
}

static void test_select(void)
{
    proxy_conf_t pc;

    setenv("http_proxy", "http://h:1", 1);
    setenv("HTTP_PROXY", "http://upper:9", 1);
    setenv("HTTPS_PROXY", "http://s:2", 1);
    setenv("ALL_PROXY", "socks5h://all:3", 1);
    setenv("NO_PROXY", "internal.example,10.0.0.0/8", 1);
    unsetenv("https_proxy");
    unsetenv("all_proxy");
    unsetenv("no_proxy");
    proxy_conf_init(&pc, &st);
    CHECK_INT(proxy_conf_load_env(&pc), 0);

    /* The environment, by scheme; upper-case HTTP_PROXY is never read. */
    CHECK_STR(chosen(&pc, "http://a.example/", NULL, NULL), "http://h:1");
    CHECK_STR(chosen(&pc, "https://a.example/", NULL, NULL), "http://s:2");
    CHECK_STR(chosen(&pc, "http://x.internal.example/", NULL, NULL), "direct");
    CHECK_STR(chosen(&pc, "https://10.2.3.4/", NULL, NULL), "direct");
    /* The environment was read once: changing it now changes nothing. */
    setenv("http_proxy", "http://later:5", 1);
    CHECK_STR(chosen(&pc, "http://a.example/", NULL, NULL), "http://h:1");
    proxy_conf_dispose(&pc);

    unsetenv("http_proxy");
    proxy_conf_init(&pc, &st);
    CHECK_INT(proxy_conf_load_env(&pc), 0);
    /* Without http_proxy (HTTP_PROXY does not count), all_proxy. */
    CHECK_STR(chosen(&pc, "http://a.example/", NULL, NULL), "socks5h://all:3");

    /* The configuration beats the environment; "" is direct. */
    pc.cfg_proxy = "http://cfg:4";
    CHECK_STR(chosen(&pc, "https://a.example/", NULL, NULL), "http://cfg:4");
    CHECK_STR(chosen(&pc, "https://internal.example/", NULL, NULL), "direct");
    pc.cfg_no_proxy = "a.example";
    CHECK_STR(chosen(&pc, "https://internal.example/", NULL, NULL), "http://cfg:4");
    CHECK_STR(chosen(&pc, "https://a.example/", NULL, NULL), "direct");
    pc.cfg_proxy = "";
    CHECK_STR(chosen(&pc, "https://b.example/", NULL, NULL), "direct");

    /* The job beats both; its no_proxy beats the others' lists. */
    pc.cfg_proxy = "http://cfg:4";
    CHECK_STR(chosen(&pc, "https://b.example/", "socks5://job:6", NULL), "socks5://job:6");
    CHECK_STR(chosen(&pc, "https://b.example/", "", NULL), "direct");
    CHECK_STR(chosen(&pc, "https://a.example/", "socks5://job:6", NULL), "direct");
    CHECK_STR(chosen(&pc, "https://a.example/", "socks5://job:6", ""), "socks5://job:6");
    CHECK_STR(chosen(&pc, "https://b.example/", NULL, "*"), "direct");

    /* A bad proxy from the configuration or environment fails with proxy. */
    pc.cfg_proxy = "https://bad";
    CHECK(strncmp(chosen(&pc, "https://b.example/", NULL, NULL), "error proxy: the configuration",
                  30) == 0);
    proxy_conf_dispose(&pc);
    unsetenv("HTTP_PROXY");
    unsetenv("HTTPS_PROXY");
    unsetenv("ALL_PROXY");
    unsetenv("NO_PROXY");
    CHECK_INT(st.objects[STATS_OBJ_PROXY], 0);
}

static void test_literal_acl(void)
{
    netacl_t acl;
    char why[160];
    url_t u = url_of("http://169.254.169.254/latest");

    CHECK_INT(netacl_init(&acl, NULL, NULL, why, sizeof(why)), 0);
    CHECK_INT(proxy_check_literal(&acl, &u, why, sizeof(why)), ERR_FORBIDDEN);
    url_dispose(&u);
    u = url_of("http://metadata.example/");
    CHECK_INT(proxy_check_literal(&acl, &u, why, sizeof(why)), 0);
    url_dispose(&u);
    u = url_of("http://[fe80::1]/");
    CHECK_INT(proxy_check_literal(&acl, &u, why, sizeof(why)), ERR_FORBIDDEN);
    url_dispose(&u);
    netacl_dispose(&acl);
}

static void test_no_leaks(void)
{
    uint64_t blocks, bytes;
    mem_get(MEM_FETCHD, &blocks, &bytes);
    CHECK_INT(blocks, 0);
}

TEST_MAIN(TEST_CASE(test_parse), TEST_CASE(test_credentials), TEST_CASE(test_refused),
          TEST_CASE(test_no_proxy), TEST_CASE(test_select), TEST_CASE(test_literal_acl),
          TEST_CASE(test_no_leaks))
