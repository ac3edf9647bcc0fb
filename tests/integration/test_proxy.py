"""Proxies, through the real fetchd and fetchctl: a real tinyproxy (absolute-
form http and CONNECT to the TLS nginx, Basic authentication), a real danted
(SOCKS5 and socks5h, its username method refusing), the scripted proxies of
proxyfault.py (407, 502 and a cut on CONNECT, SOCKS reply 0x05 and a cut, a
proxy that never answers, a SOCKS5 relay with user name and password), the
selection rule (environment read at start, configuration re-read on SIGHUP,
the job's proxy and no_proxy, redirects), credentials absent from every
output, and every count back at its baseline after each test (ControlTestCase
checks objects, proxy included, connections and buffers at the end).

danted's "socksmethod: username" checks the user against the system's
password and shadow databases. A test must not add a user to the machine,
so danted runs under nss_wrapper (Debian's libnss-wrapper, the preload
library Samba's tests use): its getpwnam() and getspnam() read a passwd and
a shadow file in the test's temp dir, holding one user whose password
(hashed with `openssl passwd -6`) has characters a proxy URL must
percent-encode. danted then accepts fetchd's RFC 1929 exchange with those
credentials and refuses a wrong password and a client without any.
"""

import base64
import glob
import json
import os
import pwd
import re
import signal
import socket
import subprocess
import time
import unittest
import urllib.parse
import urllib.request

import test_alloc
from ctltest import FETCHCTL, ControlTestCase, clean_env, spec
from faultserver import FaultServer
from fetchtest import (SLOWDOWN, HarnessTestCase, Nginx, free_port, missing_tools, remove_tree,
                       tmpdir)
from proxyfault import ProxyFault
from tlsutil import TlsNginx, certs

USER, PASSWORD = "alice", "s3cret"
PROXY_ENV = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
             "no_proxy", "NO_PROXY")
START_LIMIT = 10.0 * SLOWDOWN


def proxy_env(**extra):
    """fetchd's environment: the caller's proxy variables removed, extra added."""
    env = clean_env()
    for name in PROXY_ENV:
        env.pop(name, None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def wait_port(port, proc, what, host="127.0.0.1"):
    """Returns once host:port accepts (bounded); raises if proc exits first."""
    deadline = time.monotonic() + START_LIMIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("%s exited at startup with %r" % (what, proc.returncode))
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("%s did not listen on %s:%d" % (what, host, port))


class Daemon:
    """A server process in its own temp dir with a generated config."""

    name = "server"

    def __init__(self):
        self.dir = tmpdir(self.name + "-")
        self.port = free_port()
        self.proc = None

    def config(self):
        raise NotImplementedError

    def environment(self):
        """The server's environment: None inherits the test's."""
        return None

    def command(self, conf):
        raise NotImplementedError

    def start(self):
        conf = os.path.join(self.dir, self.name + ".conf")
        with open(conf, "w") as f:
            f.write(self.config())
        self.out = open(os.path.join(self.dir, "stdout"), "wb")
        self.proc = subprocess.Popen(self.command(conf), stdin=subprocess.DEVNULL,
                                     stdout=self.out, stderr=subprocess.STDOUT,
                                     env=self.environment(), start_new_session=True)
        wait_port(self.port, self.proc, self.name)
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.proc is not None:
            self.out.close()
        remove_tree(self.dir)

    def log(self):
        try:
            with open(os.path.join(self.dir, "log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def url(self, userinfo=""):
        return "%s://%s127.0.0.1:%d" % (self.scheme, userinfo + "@" if userinfo else "", self.port)


class Tinyproxy(Daemon):
    name = "tinyproxy"
    scheme = "http"

    def __init__(self, auth=None, max_clients=64):
        super().__init__()
        self.auth = auth
        self.max_clients = max_clients

    def config(self):
        lines = ["Port %d" % self.port, "Listen 127.0.0.1", "Timeout 30", "MaxClients %d" % self.max_clients,
                 "Allow 127.0.0.1", "LogLevel Info", 'LogFile "%s/log"' % self.dir,
                 'PidFile "%s/pid"' % self.dir]
        if self.auth:
            lines.append("BasicAuth %s %s" % self.auth)
        return "\n".join(lines) + "\n"

    def command(self, conf):
        return ["tinyproxy", "-d", "-c", conf]


SOCKS_USER, SOCKS_PASSWORD = "socksuser", "p@ss w:rd/%"


def nss_wrapper():
    """The path of nss_wrapper's preload library, or None."""
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"):
        path = os.path.join(d, "libnss_wrapper.so")
        if os.path.exists(path):
            return path
    for d in glob.glob("/usr/lib/*-linux-gnu*"):
        path = os.path.join(d, "libnss_wrapper.so")
        if os.path.exists(path):
            return path
    return None


class Danted(Daemon):
    """danted; with users ({name: password}), its password and shadow
    databases are files of its own, read through nss_wrapper."""

    name = "danted"

    def __init__(self, method="none", scheme="socks5", users=None):
        super().__init__()
        self.method = method
        self.scheme = scheme
        self.users = users

    def environment(self):
        if not self.users:
            return None
        passwd, shadow, group = (os.path.join(self.dir, n) for n in ("passwd", "shadow", "group"))
        with open("/etc/passwd") as src, open(passwd, "w") as f:
            f.write(src.read())
        with open("/etc/group") as src, open(group, "w") as f:
            f.write(src.read())
        with open(passwd, "a") as pf, open(shadow, "w") as sf:
            for i, (name, password) in enumerate(sorted(self.users.items())):
                digest = subprocess.run(["openssl", "passwd", "-6", "-stdin"],
                                        input=password.encode(), capture_output=True,
                                        check=True, timeout=10).stdout.decode().strip()
                pf.write("%s:x:%d:%d::/nonexistent:/usr/sbin/nologin\n" % (name, 64000 + i, 64000 + i))
                sf.write("%s:%s:19000:0:99999:7:::\n" % (name, digest))
        env = dict(os.environ)
        env.update(LD_PRELOAD=nss_wrapper(), NSS_WRAPPER_PASSWD=passwd, NSS_WRAPPER_GROUP=group,
                   NSS_WRAPPER_SHADOW=shadow)
        return env

    def config(self):
        user = pwd.getpwuid(os.getuid()).pw_name
        return """logoutput: %(dir)s/log
internal: 127.0.0.1 port = %(port)d
external: 127.0.0.1
socksmethod: %(method)s
clientmethod: none
user.privileged: %(user)s
user.unprivileged: %(user)s
client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }
socks pass { from: 127.0.0.0/8 to: 0.0.0.0/0 %(log)s}
""" % {"dir": self.dir, "port": self.port, "method": self.method, "user": user,
       "log": "log: connect " if self.users else ""}

    def command(self, conf):
        return ["danted", "-f", conf, "-p", os.path.join(self.dir, "pid"), "-N", "1"]


class ProxyTestCase(ControlTestCase):
    """Starts a plain nginx, a TLS nginx and a fault server for the class."""

    TOOLS = (("nginx", "nginx"),)

    @classmethod
    def setUpClass(cls):
        reason = missing_tools(*cls.TOOLS)
        if reason:
            raise unittest.SkipTest(reason)  # a failure under CI=true (fetchtest)
        cls.certs = certs()
        cls.nginx = Nginx().start()
        cls.addClassCleanup(cls.nginx.stop)
        cls.tls = TlsNginx(cls.certs).start()
        cls.addClassCleanup(cls.tls.stop)
        cls.origin = FaultServer().start()
        cls.addClassCleanup(cls.origin.stop)

    def start(self, args=(), **env):
        """fetchd with these environment variables (and no inherited proxy
        variables); idle connections go after 1 s so the end check sees none."""
        return self.start_fetchd(["--idle-timeout", "1", "--log-level", "debug"] + list(args),
                                 env=proxy_env(**env))

    def fetch(self, client, *specs):
        ids = self.submit(client, list(specs))
        return [self.wait_job(client, jid, timeout=30 * SLOWDOWN) for jid in ids]

    def https(self, path="/small.txt", **fields):
        fields.setdefault("ca_file", self.certs.ca)
        return spec(self.tls.url(path), sha256=True, **fields)

    def http(self, path="/small.txt", **fields):
        return spec(self.nginx.url(path), sha256=True, **fields)

    def assert_body(self, job, server, path):
        self.assertEqual(job["state"], "done", "%r%s" % (job, self.ctx()))
        self.assertEqual(job.get("http_status"), 200, job)
        self.assertEqual(job.get("sha256"), server.sha256(path), job)

    def assert_failed(self, job, code, *words):
        self.assertEqual(job["state"], "failed", "%r%s" % (job, self.ctx()))
        self.assertEqual(job["error"]["code"], code, job)
        for word in words:
            self.assertIn(word, job["error"]["message"], job)

    def proxy_counts(self, client):
        """{"connect.ok": n, ...} for the counts that are not zero."""
        counts = self.stats(client)["proxy_connects_total"]
        return {"%s.%s" % (k, r): n for k, v in counts.items() for r, n in v.items() if n}

    def wait_no_connections(self, client, limit=20.0):
        deadline = time.monotonic() + limit * SLOWDOWN
        while time.monotonic() < deadline:
            conns = self.stats(client)["connections"]
            if not any(conns.values()):
                return
            time.sleep(0.05)
        self.fail("connections still open: %r" % conns)


class EnvironmentAndSelection(ProxyTestCase):
    """The selection rule, with proxies that are dead ports: a job that goes
    through one fails, one that goes direct succeeds."""

    def setUp(self):
        self.dead = "http://127.0.0.1:%d" % free_port()

    def test_env_proxy_is_used_not_bypassed(self):
        # The issue: started with http_proxy and all_proxy at a dead port,
        # fetchd fetched directly. Now the proxy is used, and named.
        d = self.start(http_proxy=self.dead, all_proxy=self.dead)
        c = self.connect(d)
        http, https = self.fetch(c, self.http(), self.https())
        port = self.dead.rsplit(":", 1)[1]
        self.assert_failed(http, "connect_refused", "proxy http://127.0.0.1:" + port)
        self.assert_failed(https, "connect_refused", "proxy http://127.0.0.1:" + port)
        self.assertEqual(self.proxy_counts(c), {"http.refused": 1, "connect.refused": 1})

    def test_https_proxy_upper_case_and_all_proxy(self):
        d = self.start(HTTPS_PROXY=self.dead, ALL_PROXY="socks5://127.0.0.1:%d" % free_port())
        c = self.connect(d)
        http, https = self.fetch(c, self.http(), self.https())
        self.assert_failed(https, "connect_refused", "proxy http://")
        self.assert_failed(http, "connect_refused", "proxy socks5://")

    def test_upper_case_http_proxy_is_ignored(self):
        # As curl: HTTP_PROXY may come from a request's Proxy header (CGI).
        d = self.start(HTTP_PROXY=self.dead)
        job, = self.fetch(self.connect(d), self.http())
        self.assert_body(job, self.nginx, "/small.txt")

    def test_no_proxy(self):
        d = self.start(http_proxy=self.dead, https_proxy=self.dead,
                       no_proxy="example.com, .localhost,127.0.0.0/8")
        c = self.connect(d)
        http, https = self.fetch(c, self.http(), self.https())
        self.assert_body(http, self.nginx, "/small.txt")
        self.assert_body(https, self.tls, "/small.txt")
        self.assertEqual(self.proxy_counts(c), {})

    def test_no_proxy_star_upper_case(self):
        d = self.start(http_proxy=self.dead, NO_PROXY="*")
        job, = self.fetch(self.connect(d), self.http())
        self.assert_body(job, self.nginx, "/small.txt")

    def test_job_fields_override(self):
        d = self.start(http_proxy=self.dead)
        c = self.connect(d)
        direct, excepted, other = self.fetch(
            c, self.http(proxy=""), self.http(no_proxy="127.0.0.1"),
            self.http(proxy="socks5h://127.0.0.1:%d" % free_port()))
        self.assert_body(direct, self.nginx, "/small.txt")
        self.assert_body(excepted, self.nginx, "/small.txt")
        self.assert_failed(other, "connect_refused", "proxy socks5h://")

    def test_bad_proxies_are_refused_without_echoing_credentials(self):
        d = self.start()
        c = self.connect(d)
        for bad in ("https://u:topsecret@127.0.0.1:1", "socks4://127.0.0.1", "http://h:0",
                    "http://u:topsecret@h/path"):
            resp = c.call("submit", {"jobs": [self.http(proxy=bad)]})
            err = self.assert_error(resp, -32602, "invalid_request")
            self.assertIn("proxy", json.dumps(resp), resp)
            self.assertNotIn("topsecret", json.dumps(resp), resp)
        # From the environment, a bad proxy fails the jobs that would use it.
        d2 = self.start(http_proxy="ftp://u:topsecret@127.0.0.1:1")
        job, = self.fetch(self.connect(d2), self.http())
        self.assert_failed(job, "proxy", "http_proxy", "unsupported proxy scheme")
        self.assertNotIn("topsecret", json.dumps(job))
        self.assertNotIn("topsecret", d2.log())

    def test_address_literal_checked_through_proxy(self):
        # The proxy would resolve names, but a literal is ours to check.
        d = self.start(http_proxy=self.dead)
        job, = self.fetch(self.connect(d), spec("http://169.254.169.254/latest/meta-data"))
        self.assert_failed(job, "forbidden", "169.254.169.254")

    def test_config_proxy_and_sighup(self):
        conf = os.path.join(tmpdir("proxy-conf-"), "fetchd.json")
        self.addCleanup(remove_tree, os.path.dirname(conf))
        with open(conf, "w") as f:
            json.dump({"proxy": self.dead, "no_proxy": "example.org"}, f)
        # The configuration wins over the environment.
        d = self.start(["-c", conf], http_proxy="http://127.0.0.1:1")
        c = self.connect(d)
        job, = self.fetch(c, self.http())
        self.assert_failed(job, "connect_refused", self.dead)
        with open(conf, "w") as f:
            json.dump({"proxy": "", "no_proxy": ""}, f)
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10 * SLOWDOWN
        while "configuration reloaded" not in d.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIn("configuration reloaded", d.log())
        job, = self.fetch(c, self.http())
        self.assert_body(job, self.nginx, "/small.txt")

    def test_bad_config_proxy_is_a_config_error(self):
        conf = os.path.join(tmpdir("proxy-conf-"), "fetchd.json")
        self.addCleanup(remove_tree, os.path.dirname(conf))
        with open(conf, "w") as f:
            f.write('{\n  "proxy": "gopher://u:topsecret@h"\n}\n')
        p = subprocess.run([self.daemon_binary(), "-c", conf, "--metrics", "off"],
                           capture_output=True, text=True, timeout=10 * SLOWDOWN,
                           env=proxy_env())
        self.assertEqual(p.returncode, 78, p.stderr)
        self.assertIn("proxy", p.stderr)
        self.assertIn(":2:", p.stderr)
        self.assertNotIn("topsecret", p.stderr)

    @staticmethod
    def daemon_binary():
        return os.path.join(os.path.dirname(FETCHCTL), "fetchd")


class TinyproxyTests(ProxyTestCase):
    TOOLS = (("nginx", "nginx"), ("tinyproxy", "tinyproxy"))

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.proxy = Tinyproxy().start()
        cls.addClassCleanup(cls.proxy.stop)
        cls.authproxy = Tinyproxy(auth=(USER, PASSWORD)).start()
        cls.addClassCleanup(cls.authproxy.stop)

    def test_absolute_form(self):
        d = self.start(http_proxy=self.proxy.url())
        c = self.connect(d)
        for job in self.fetch(c, self.http("/1k.bin"), self.http("/1m.bin")):
            self.assertEqual(job["state"], "done", job)
        jobs = self.fetch(c, self.http("/1k.bin"))
        self.assert_body(jobs[0], self.nginx, "/1k.bin")
        self.assertIn("GET http://127.0.0.1:%d/1m.bin" % self.nginx.port, self.proxy.log())
        counts = self.proxy_counts(c)
        self.assertGreaterEqual(counts.get("http.ok", 0), 1, counts)
        self.assertEqual(set(counts), {"http.ok"}, counts)

    def test_connect_tunnel_verifies_and_is_reused(self):
        d = self.start(https_proxy=self.proxy.url())
        c = self.connect(d)
        first, = self.fetch(c, self.https("/1k.bin"))
        second, = self.fetch(c, self.https("/small.txt"))
        self.assert_body(first, self.tls, "/1k.bin")
        self.assert_body(second, self.tls, "/small.txt")
        stats = self.stats(c)
        self.assertEqual(stats["connections_opened_total"], 1, stats)
        self.assertEqual(stats["connection_reuses_total"], 1, stats)
        self.assertEqual(self.proxy_counts(c), {"connect.ok": 1})
        self.assertIn("CONNECT localhost:%d" % self.tls.port, self.proxy.log())
        # Verification is as strict inside the tunnel: another CA fails.
        bad, = self.fetch(c, self.https(ca_file=self.certs.other_ca))
        self.assert_failed(bad, "tls_verify")

    def test_connect_session_resumption(self):
        d = self.start(https_proxy=self.proxy.url())
        c = self.connect(d)
        first, = self.fetch(c, self.https())
        self.wait_no_connections(c)  # idle timeout: the tunnel is gone
        second, = self.fetch(c, self.https())
        self.assert_body(first, self.tls, "/small.txt")
        self.assert_body(second, self.tls, "/small.txt")
        stats = self.stats(c)
        self.assertEqual(stats["tls_handshakes_total"], 2, stats)
        self.assertEqual(stats["tls_resumptions_total"], 1, stats)
        self.assertEqual(self.proxy_counts(c), {"connect.ok": 2})

    def test_basic_auth(self):
        d = self.start()
        c = self.connect(d)
        good = self.authproxy.url("%s:%s" % (USER, PASSWORD))
        wrong = self.authproxy.url("%s:wrong" % USER)
        jobs = self.fetch(c, self.http(proxy=good), self.https(proxy=good),
                          self.http(proxy=self.authproxy.url()),
                          self.https(proxy=self.authproxy.url()),
                          self.https(proxy=wrong), self.http(proxy=wrong))
        self.assert_body(jobs[0], self.nginx, "/small.txt")
        self.assert_body(jobs[1], self.tls, "/small.txt")
        for job in jobs[2:4]:
            self.assert_failed(job, "proxy", "proxy requires authentication", "407")
        # tinyproxy 1.11 answers wrong credentials with 401, not 407: on
        # CONNECT that is the proxy refusing them; in absolute form it cannot
        # be told from the origin's own 401, so it is the response.
        self.assert_failed(jobs[4], "proxy", "refused the credentials", "401")
        self.assertEqual(jobs[5]["state"], "done", jobs[5])
        self.assertEqual(jobs[5]["http_status"], 401, jobs[5])
        counts = self.proxy_counts(c)
        self.assertEqual(counts.get("connect.auth"), 2, counts)
        self.assertEqual(counts.get("connect.ok"), 1, counts)

    def test_redirect_redecides(self):
        # 127.0.0.1 goes through the proxy; the redirect to localhost is in
        # no_proxy and goes direct.
        target = "http://localhost:%d/small.txt" % self.nginx.port
        d = self.start(http_proxy=self.proxy.url(), no_proxy="localhost")
        c = self.connect(d)
        job, = self.fetch(c, spec(self.origin.url("/redir?to=" + target), sha256=True))
        self.assert_body(job, self.nginx, "/small.txt")
        self.assertEqual(job["redirects"], 1, job)
        log = self.proxy.log()
        self.assertIn("GET http://127.0.0.1:%d/redir" % self.origin.port, log)
        self.assertNotIn("GET http://localhost:%d" % self.nginx.port, log)

    def test_fetchctl_proxy_and_noproxy(self):
        d = self.start()
        env = proxy_env(FETCHD_SOCKET=d.socket)
        url = self.nginx.url("/1k.bin")
        p = subprocess.run([FETCHCTL, "--json", "submit", "--wait", "--sha256", "--proxy",
                            self.authproxy.url("%s:%s" % (USER, PASSWORD)), url],
                           capture_output=True, text=True, env=env, timeout=60 * SLOWDOWN)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn(self.nginx.sha256("/1k.bin"), p.stdout)
        self.assertNotIn(PASSWORD, p.stdout + p.stderr)
        p = subprocess.run([FETCHCTL, "submit", "--wait", "--proxy",
                            "http://127.0.0.1:%d" % free_port(), "--noproxy", "127.0.0.1", url],
                           capture_output=True, text=True, env=env, timeout=60 * SLOWDOWN)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        p = subprocess.run([FETCHCTL, "submit", "--wait", "--proxy", "ftp://x", url],
                           capture_output=True, text=True, env=env, timeout=60 * SLOWDOWN)
        self.assertEqual(p.returncode, 4, p.stdout + p.stderr)
        self.assertIn("proxy", p.stderr)

    def test_credentials_never_shown(self):
        secret = "%s:%s" % (USER, PASSWORD)
        token = base64.b64encode(secret.encode()).decode()
        good, wrong = self.authproxy.url(secret), self.authproxy.url(USER + ":" + PASSWORD + "x")
        d = self.start(["--metrics", "127.0.0.1:0"], https_proxy=good, all_proxy=wrong)
        c = self.connect(d)
        watcher = self.connect(d)
        watcher.result("subscribe")
        jobs = self.fetch(c, self.https(), self.http(), self.http(proxy=wrong),
                          self.https(proxy=wrong),
                          spec("https://localhost:%d/" % free_port(), proxy=good))
        self.assert_body(jobs[0], self.tls, "/small.txt")
        self.assert_failed(jobs[3], "proxy", "refused the credentials")
        outputs = [json.dumps(jobs)]
        for job in jobs:
            outputs.append(json.dumps(c.result("status", {"id": job["id"]})))
        outputs.append(json.dumps(self.list_all(c)))
        outputs.append(json.dumps(self.stats(c)))
        events = []
        deadline = time.monotonic() + 10 * SLOWDOWN
        while len([e for e in events if e["event"] == "finished"]) < len(jobs):
            self.assertLess(time.monotonic(), deadline, events)
            events.append(watcher.notification(timeout=10 * SLOWDOWN))
        outputs.append(json.dumps(events))
        p = subprocess.run([FETCHCTL, "--json", "status"] + [j["id"] for j in jobs],
                           capture_output=True, text=True, env=proxy_env(FETCHD_SOCKET=d.socket),
                           timeout=30 * SLOWDOWN)
        outputs.append(p.stdout + p.stderr)
        m = d.wait_log(r"metrics: listening on 127\.0\.0\.1:0 \(port (\d+)\)")
        self.assertIsNotNone(m, d.log_tail())
        with urllib.request.urlopen("http://127.0.0.1:%s/metrics" % m.group(1), timeout=10) as r:
            metrics = r.read().decode()
        self.assertIn('fetchd_proxy_connects_total{kind="connect",result="ok"} 1', metrics)
        self.assertIn('fetchd_objects{type="proxy"}', metrics)
        outputs.append(metrics)
        outputs.append(d.log())
        for text in outputs:
            for needle in (PASSWORD, token, USER + ":"):
                self.assertNotIn(needle, text)
        self.assertIn("proxy http://127.0.0.1:%d" % self.authproxy.port, jobs[3]["error"]["message"])


class FaultyProxies(ProxyTestCase):
    """The scripted proxies: each failure is a proxy error naming the
    proxy, with what it said, and counted."""

    def run_one(self, mode, job_spec, **kw):
        with ProxyFault(mode, **kw) as px:
            d = self.start()
            c = self.connect(d)
            job, = self.fetch(c, job_spec(px))
            counts = self.proxy_counts(c)
            self.wait_no_connections(c)
        return job, counts, px

    def test_connect_407(self):
        job, counts, _ = self.run_one("http407", lambda px: self.https(proxy=px.url("http")))
        self.assert_failed(job, "proxy", "proxy requires authentication",
                           "HTTP/1.1 407 Proxy Authentication Required")
        self.assertEqual(counts, {"connect.auth": 1})

    def test_absolute_form_407(self):
        job, counts, _ = self.run_one("http407", lambda px: self.http(proxy=px.url("http")))
        self.assert_failed(job, "proxy", "proxy requires authentication (407)")
        self.assertEqual(counts, {"http.ok": 1})

    def test_connect_502(self):
        job, counts, px = self.run_one("http502", lambda px: self.https(proxy=px.url("http")))
        self.assert_failed(job, "proxy", "CONNECT localhost:%d refused" % self.tls.port,
                           "HTTP/1.1 502 Bad Gateway", "proxy http://127.0.0.1:")
        self.assertEqual(counts, {"connect.refused": 1})
        self.assertIn(b"CONNECT localhost:%d HTTP/1.1\r\n" % self.tls.port, px.heads[0])
        self.assertNotIn(b"Proxy-Authorization", px.heads[0])

    def test_connect_sends_basic_credentials(self):
        job, _, px = self.run_one(
            "http502", lambda px: self.https(proxy=px.url("http", "al%40ice:p%3Aw")))
        self.assert_failed(job, "proxy")
        token = base64.b64encode(b"al@ice:p:w")
        self.assertIn(b"\r\nProxy-Authorization: Basic " + token + b"\r\n", px.heads[0])
        self.assertNotIn("al@ice", json.dumps(job))

    def test_connect_cut_mid_handshake(self):
        job, counts, _ = self.run_one("http_cut", lambda px: self.https(proxy=px.url("http")))
        self.assert_failed(job, "proxy", "closed the connection during the CONNECT handshake")
        self.assertEqual(counts, {"connect.error": 1})

    def test_absolute_form_connection_serves_any_http_origin(self):
        # Names fetchd cannot resolve: only the proxy sees them. One pooled
        # connection to the proxy carries the requests of both origins.
        with ProxyFault("http_echo") as px:
            d = self.start()
            c = self.connect(d)
            via = px.url("http", "u:p")
            first, = self.fetch(c, spec("http://a.invalid/x?1", proxy=via, output="inline"))
            second, = self.fetch(c, spec("http://b.invalid:8080/y", proxy=via, output="inline"))
            stats = self.stats(c)
            self.wait_no_connections(c)
        self.assertEqual(first["state"], "done", first)
        self.assertEqual(first["inline"]["data"], "GET http://a.invalid/x?1 HTTP/1.1", first)
        self.assertEqual(second["inline"]["data"], "GET http://b.invalid:8080/y HTTP/1.1")
        self.assertEqual(px.accepted, 1)
        self.assertEqual(stats["connections_opened_total"], 1, stats)
        self.assertEqual(stats["dns_lookups_total"], 0, stats)  # 127.0.0.1 is a literal
        self.assertIn(b"\r\nHost: b.invalid:8080\r\n", px.heads[1])
        self.assertIn(b"\r\nProxy-Authorization: Basic dTpw\r\n", px.heads[1])

    def test_socks_reply_refused(self):
        job, counts, _ = self.run_one("socks_refuse",
                                      lambda px: self.http(proxy=px.url("socks5h")))
        self.assert_failed(job, "proxy", "reply 0x05 (connection refused)",
                           "127.0.0.1:%d" % self.nginx.port)
        self.assertEqual(counts, {"socks5.refused": 1})

    def test_socks_cut(self):
        job, counts, _ = self.run_one("socks_cut", lambda px: self.https(proxy=px.url("socks5")))
        self.assert_failed(job, "proxy", "closed the connection during the SOCKS5 handshake")
        self.assertEqual(counts, {"socks5.error": 1})

    def test_silent_proxy_times_out(self):
        for scheme, kind in (("http", "connect"), ("socks5h", "socks5")):
            job, counts, _ = self.run_one(
                "silent", lambda px: self.https(proxy=px.url(scheme), timeouts={"connect": 0.5}))
            self.assert_failed(job, "connect_timeout", "through proxy %s://" % scheme)
            self.assertEqual(counts, {kind + ".timeout": 1})

    def test_socks_relay_with_credentials(self):
        # The scripted relay checks the RFC 1929 exchange (danted would need
        # a system user); the credentials are percent-decoded.
        with ProxyFault("socks", user="al@ice", password="p:w%") as px:
            d = self.start()
            c = self.connect(d)
            good = px.url("socks5h", "al%40ice:p%3Aw%25")
            jobs = self.fetch(c, self.https(proxy=good), self.http(proxy=good),
                              self.https(proxy=px.url("socks5", "al%40ice:p%3Aw%25")),
                              self.https(proxy=px.url("socks5h", "al%40ice:nope")),
                              self.https(proxy=px.url("socks5h")))
            self.wait_no_connections(c)
        self.assert_body(jobs[0], self.tls, "/small.txt")
        self.assert_body(jobs[1], self.nginx, "/small.txt")
        self.assert_body(jobs[2], self.tls, "/small.txt")
        self.assert_failed(jobs[3], "proxy", "refused the user name and password")
        self.assert_failed(jobs[4], "proxy", "accepts none of our authentication methods")
        asked = {(a.get("atyp"), a.get("host"), a.get("user")) for a in px.asked if "atyp" in a}
        self.assertIn((3, "localhost", b"al@ice"), asked)  # socks5h: the name
        self.assertIn((1, "127.0.0.1", b"al@ice"), asked)  # socks5: the address
        self.assertIn(b"p:w%", [a.get("password") for a in px.asked])

    def test_socks5_ipv6_origin(self):
        # An IPv6 literal goes as address type 4 with either kind; the
        # scripted relay connects to it (an http.server on ::1).
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = b"v6 hello\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            address_family = socket.AF_INET6

        try:
            server = Server(("::1", 0), Handler)
        except OSError as exc:
            self.skipTest("no IPv6 loopback: %s" % exc)
        thread = threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True)
        thread.start()
        self.addCleanup(thread.join, 5)
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        url = "http://[::1]:%d/" % server.server_address[1]
        with ProxyFault("socks") as px:
            d = self.start()
            c = self.connect(d)
            jobs = self.fetch(c, spec(url, proxy=px.url("socks5"), output="inline"),
                              spec(url, proxy=px.url("socks5h"), output="inline"))
            self.wait_no_connections(c)
        for job in jobs:
            self.assertEqual(job["state"], "done", job)
            self.assertEqual(job["inline"]["data"], "v6 hello\n", job)
        self.assertEqual([(a["atyp"], a["host"]) for a in px.asked], [(4, "::1"), (4, "::1")])

    def test_socks5_local_resolution_checks_destination_rules(self):
        # localhost resolves to 127.0.0.1, denied here; the proxy listens on
        # 127.0.0.2. With socks5:// fetchd resolves and refuses; with
        # socks5h:// the proxy resolves, and only its own address is checked.
        url = "http://localhost:%d/small.txt" % self.nginx.port
        with ProxyFault("socks", host="127.0.0.2") as px:
            d = self.start(["--deny-networks", "127.0.0.1/32"])
            c = self.connect(d)
            local, remote = self.fetch(c, spec(url, proxy=px.url("socks5")),
                                       spec(url, proxy=px.url("socks5h"), sha256=True))
            self.wait_no_connections(c)
        self.assert_failed(local, "forbidden", "127.0.0.1")
        self.assert_body(remote, self.nginx, "/small.txt")


class DantedTests(ProxyTestCase):
    TOOLS = (("nginx", "nginx"), ("danted", "dante-server"))

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.socks = Danted().start()
        cls.addClassCleanup(cls.socks.stop)
        if nss_wrapper() is None:
            # A failure under CI=true (fetchtest), as for a missing tool.
            raise unittest.SkipTest("libnss_wrapper.so not installed: apt-get install "
                                    "libnss-wrapper (deploy/install-deps.sh installs it)")
        cls.socks_user = Danted(method="username", users={SOCKS_USER: SOCKS_PASSWORD}).start()
        cls.addClassCleanup(cls.socks_user.stop)

    def test_socks5_and_socks5h(self):
        for scheme in ("socks5", "socks5h"):
            d = self.start(all_proxy=self.socks.url().replace("socks5", scheme, 1))
            c = self.connect(d)
            http, https = self.fetch(c, self.http("/1m.bin"), self.https("/1k.bin"))
            self.assert_body(http, self.nginx, "/1m.bin")
            self.assert_body(https, self.tls, "/1k.bin")
            self.assertEqual(self.proxy_counts(c), {"socks5.ok": 2})

    def test_reply_code_from_danted(self):
        d = self.start(all_proxy=self.socks.url().replace("socks5", "socks5h", 1))
        c = self.connect(d)
        job, = self.fetch(c, spec("http://127.0.0.1:%d/" % free_port()))
        self.assert_failed(job, "proxy", "SOCKS5 connect to 127.0.0.1:", "reply 0x05",
                           "connection refused")
        self.assertEqual(self.proxy_counts(c), {"socks5.refused": 1})

    def test_username_method_accepts_the_users_password(self):
        """danted's own check of user name and password (RFC 1929) passes
        with the percent-decoded credentials of the proxy URL, for http and
        for https through the tunnel, and for socks5h."""
        userinfo = "%s:%s" % (SOCKS_USER, urllib.parse.quote(SOCKS_PASSWORD, safe=""))
        d = self.start(all_proxy=self.socks_user.url(userinfo))
        c = self.connect(d)
        http, https, remote = self.fetch(
            c, self.http("/1m.bin"), self.https("/1k.bin"),
            spec(self.nginx.url("/small.txt").replace("127.0.0.1", "localhost", 1),
                 proxy=self.socks_user.url(userinfo).replace("socks5", "socks5h", 1), sha256=True))
        self.assert_body(http, self.nginx, "/1m.bin")
        self.assert_body(https, self.tls, "/1k.bin")
        self.assert_body(remote, self.nginx, "/small.txt")
        self.assertEqual(self.proxy_counts(c), {"socks5.ok": 3})
        # danted logs each connection with the user it authenticated.
        self.assertIn("username%%%s@127.0.0.1" % SOCKS_USER, self.socks_user.log())
        out = json.dumps([http, https, remote]) + d.log()
        self.assertNotIn(SOCKS_PASSWORD, out)
        self.assertNotIn(urllib.parse.quote(SOCKS_PASSWORD, safe=""), out)

    def test_username_method_refuses(self):
        d = self.start()
        c = self.connect(d)
        wrong = "%s:%s" % (SOCKS_USER, urllib.parse.quote(PASSWORD, safe=""))
        unknown, bad_password, without = self.fetch(
            c, self.http(proxy=self.socks_user.url("nosuchuser:%s" % PASSWORD)),
            self.http(proxy=self.socks_user.url(wrong)),
            self.http(proxy=self.socks_user.url()))
        self.assert_failed(unknown, "proxy", "refused the user name and password")
        self.assert_failed(bad_password, "proxy", "refused the user name and password")
        self.assert_failed(without, "proxy", "accepts none of our authentication methods")
        self.assertNotIn(PASSWORD, json.dumps([unknown, bad_password, without]) + d.log())
        self.assertEqual(self.proxy_counts(c), {"socks5.auth": 3})


class StaleReuseBehindWaiters(HarnessTestCase):
    """A proxy that says nothing of closing and closes after every response
    (tinyproxy 1.11 in absolute form) made fetchd fail requests under load:
    the retry of a request whose reused connection turned out dead must get
    a new connection even when it has to wait behind other jobs. /stale
    closes a connection at its second request, deterministically."""

    def test_retry_after_stale_gets_a_new_connection_from_the_queue(self):
        with FaultServer() as srv:
            jobs = [{"url": srv.url("/stale")} for _ in range(4)]
            events, rc = self.run_harness(jobs + [{"cmd": "wait"}], ["--max-per-host", "1"])
            self.assert_clean(events, rc)
            for i in range(4):
                self.assert_done(self.job(events, i), 200)


class ProxyAllocFailures(HarnessTestCase):
    """Allocation failure at every index of proxied fetches, in the engine
    (the harness, as test_alloc.py): through tinyproxy in absolute form and
    by CONNECT with TLS, and through the scripted SOCKS5 relay with local
    and remote resolution. Each job is done or fails with no_memory, and
    every count is back at zero at teardown (assert_clean)."""

    torture = test_alloc.Torture.torture
    run_once = test_alloc.Torture.run_once
    check_jobs = test_alloc.Torture.check_jobs
    fetch_scenario = test_alloc.Torture.fetch_scenario

    def test_proxied_fetches(self):
        reason = missing_tools(("nginx", "nginx"), ("tinyproxy", "tinyproxy"))
        if reason:
            self.skipTest(reason)
        tls_certs = certs()
        nginx = Nginx().start()
        self.addCleanup(nginx.stop)
        tls = TlsNginx(tls_certs).start()
        self.addCleanup(tls.stop)
        proxy = Tinyproxy().start()
        self.addCleanup(proxy.stop)
        socks = ProxyFault("socks", user="u", password="p").start()
        self.addCleanup(socks.stop)
        jobs = [
            {"url": nginx.url("/1k.bin"), "sha256": True, "proxy": proxy.url("u:p")},
            {"url": tls.url("/small.txt"), "sha256": True, "proxy": proxy.url()},
            {"url": tls.url("/small.txt"), "proxy": socks.url("socks5", "u:p")},
            {"url": nginx.url("/small.txt"), "proxy": socks.url("socks5h", "u:p")},
        ]
        self.fetch_scenario("proxy", jobs, ["--ca-file", tls_certs.ca])


if __name__ == "__main__":
    unittest.main()
