"""The metrics endpoint of the real fetchd: HTTP behaviour, the Prometheus
text format (checked by promtool and scraped by a real Prometheus), the names
DESIGN.md promises, the control protocol's `stats` agreeing with /metrics,
the urllib2 scenario: error fetches leave nothing behind, and a daemon
built to leak (fetchd-leaky) is caught by the same check; and hostile
clients (issue 9): trickling request heads or thousands of held connections
taking every slot still let a scrape through, are closed, and leave the
counts where they were.

The daemon launcher, the JSON-RPC client and the text-format parser are the
soak harness's (tests/soak/soak.py).
"""

import json
import os
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest
import urllib.parse
import urllib.request

from fetchtest import BIN_DIR, REPO, Nginx, free_port, remove_tree, tmpdir

sys.path.insert(0, os.path.join(REPO, "tests", "soak"))
import soak  # noqa: E402

FETCHD = os.path.join(BIN_DIR, "fetchd")
TEST_BIN_DIR = os.environ.get("FETCHD_TEST_BIN_DIR") or os.path.join(REPO, "build", "tests")
FETCHD_LEAKY = os.path.join(TEST_BIN_DIR, "fetchd-leaky")
PROMTOOL = "/usr/bin/promtool"
PROMETHEUS = "/usr/bin/prometheus"
IO_TIMEOUT = 10.0
SETTLE_LIMIT = 15.0
PROMETHEUS_LIMIT = 30.0
MAX_HEAD = 8 * 1024
# daemon/metrics.h: METRICS_MAX_CLIENTS, METRICS_REQUEST_TIMEOUT_MS.
MAX_CLIENTS = 128
REQUEST_TIMEOUT = 5.0
# Bounds on waiting for the attackers to be closed: above the request
# deadline, well below the 30 s idle timeout that bytes used to restart.
ATTACK_CLOSE_LIMIT = 15.0
HELD_CONNECTIONS = 2000
TRICKLE_EVERY = 0.1

# Every metric name DESIGN.md lists, with its type.
DESIGN_METRICS = {
    "fetchd_connections": "gauge",
    "fetchd_connections_opened_total": "counter",
    "fetchd_connections_closed_total": "counter",
    "fetchd_connection_reuses_total": "counter",
    "fetchd_buffers": "gauge",
    "fetchd_buffer_bytes": "gauge",
    "fetchd_jobs": "gauge",
    "fetchd_jobs_finished_total": "counter",
    "fetchd_heap_allocations": "gauge",
    "fetchd_heap_bytes": "gauge",
    "fetchd_tls_sessions": "gauge",
    "fetchd_control_clients": "gauge",
    "fetchd_objects": "gauge",
    "fetchd_received_bytes_total": "counter",
    "fetchd_fetch_duration_seconds": "histogram",
    "process_resident_memory_bytes": "gauge",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
    "process_cpu_seconds_total": "counter",
    "process_start_time_seconds": "gauge",
}

# The page (issue 17): its size budget and its panels, in order.
PAGE_BUDGET = 64 * 1024
PAGE_PANELS = ["connections", "buffers", "jobs", "heap_blocks", "heap_bytes", "objects", "rss",
               "fds", "finished", "received"]
# The stable error codes DESIGN.md lists: each has a fetchd_job_errors_total series.
DESIGN_ERROR_CODES = {
    "invalid_request", "dns", "connect_refused", "connect_timeout", "tls_handshake",
    "tls_verify", "timeout", "truncated", "protocol", "headers_too_large", "body_too_large",
    "too_many_redirects", "empty_reply", "checksum_mismatch", "io", "cancelled", "shutdown",
    "no_memory", "http_error", "content_decoding", "exists"}

# Label values DESIGN.md lists for the labelled families.
DESIGN_LABELS = {
    ("fetchd_connections", "state"): {"connecting", "active", "idle"},
    ("fetchd_buffers", "state"): {"in_use", "free"},
    ("fetchd_buffer_bytes", "state"): {"in_use", "free"},
    ("fetchd_jobs", "state"): {"queued", "running", "retained"},
    ("fetchd_jobs_finished_total", "result"): {"done", "failed", "cancelled"},
    ("fetchd_heap_allocations", "component"): {"libuv", "jansson", "fetchd"},
    ("fetchd_heap_bytes", "component"): {"libuv", "jansson", "fetchd"},
    ("fetchd_objects", "type"): {"conn", "job", "origin", "dns_entry"},
}


# ---- raw HTTP on one socket -------------------------------------------------------


class RawHttp:
    """One TCP connection to the endpoint; requests and responses by hand,
    so keep-alive and the limits can be seen exactly."""

    def __init__(self, port, timeout=IO_TIMEOUT):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def close(self):
        self.sock.close()

    def send(self, data):
        self.sock.sendall(data)

    def request(self, method, path, headers=()):
        lines = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1"]
        lines += ["%s: %s" % h for h in headers]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the endpoint closed the connection")
        self.buf += data

    def response(self, head_only=False):
        """Reads one response: (status, {lower name: value}, body)."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head_only else int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def at_eof(self, timeout=IO_TIMEOUT):
        """True when the peer closes (FIN or RST) within the timeout; the
        bytes read on the way are kept in self.buf."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not data:
                return True
            self.buf += data
        return False


# ---- the daemon -------------------------------------------------------------------


class MetricsTestCase(unittest.TestCase):
    maxDiff = None

    def have_tool(self, path, package):
        """True when the tool is installed; False when it is not and it is
        optional here. Under CI=true a missing tool fails the test."""
        if os.path.exists(path):
            return True
        if os.environ.get("CI") == "true":
            self.fail("%s is not installed (Debian package %s); CI needs it" % (path, package))
        return False

    def require_tool(self, path, package):
        """Skips the test when the tool is missing, except under CI=true,
        where that fails it."""
        if not self.have_tool(path, package):
            self.skipTest("%s is not installed (Debian package %s)" % (path, package))

    def start_daemon(self, args=(), binary=FETCHD, metrics=True):
        if not os.path.exists(binary):
            self.fail("%s not found (build first: cmake -S . -B build && cmake --build build)"
                      % binary)
        work = tmpdir("metrics-")
        self.addCleanup(remove_tree, work)
        d = soak.Daemon(binary, work, args, metrics=metrics)
        self.addCleanup(self.check_clean_exit, d, binary)
        self.addCleanup(d.stop)
        try:
            d.start()
        except soak.SetupError as exc:
            self.fail(str(exc))
        self.daemon = d
        return d

    def check_clean_exit(self, d, binary):
        """After d.stop(): fetchd exited 0 and, in a sanitizer build, with
        no ASan, LeakSanitizer or UBSan report (fetchd-leaky leaks on
        purpose and is not checked)."""
        if binary != FETCHD or d.proc is None:
            return
        log = d.log()
        for mark in ("Sanitizer", "runtime error:"):
            self.assertNotIn(mark, log, "fetchd reported%s" % d.log_tail(8000))
        self.assertEqual(d.proc.returncode, 0, "fetchd's exit status%s" % d.log_tail())

    def rpc(self, daemon=None):
        client = (daemon or self.daemon).rpc()
        self.addCleanup(client.close)
        return client

    def scrape(self, daemon=None):
        return soak.scrape((daemon or self.daemon).port)

    def get(self, path, daemon=None):
        return soak.http_get((daemon or self.daemon).port, path)

    def ctx(self, daemon=None):
        d = daemon or getattr(self, "daemon", None)
        return d.log_tail() if d is not None else ""

    def fetch(self, client, spec):
        """Submits one job and waits for it (the job stays retained long
        enough for the wait: nothing else finishes meanwhile)."""
        jid = client.result("submit", {"jobs": [spec]})["ids"][0]
        return client.result("wait", {"id": jid, "timeout": IO_TIMEOUT}, IO_TIMEOUT + 5)

    def wait_idle_closed(self, daemon=None):
        """Waits (bounded) until no connection is open; returns that scrape."""
        s = soak.wait_idle_closed((daemon or self.daemon).port, SETTLE_LIMIT)
        conns = s.by_label("fetchd_connections", "state")
        self.assertTrue(all(v == 0 for v in conns.values()),
                        "connections still open after %.0f s: %r%s"
                        % (SETTLE_LIMIT, conns, self.ctx(daemon)))
        return s


class NginxMetricsTestCase(MetricsTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.nginx = Nginx().start()
        cls.addClassCleanup(cls.nginx.stop)


# ---- the endpoint ---------------------------------------------------------------------


class Endpoint(MetricsTestCase):
    def setUp(self):
        self.start_daemon()

    def test_metrics_and_healthz(self):
        status, body = self.get("/metrics")
        self.assertEqual(status, 200, body)
        self.assertIn(b"# TYPE fetchd_connections gauge", body)
        status, body = self.get("/healthz")
        self.assertEqual(status, 200, body)
        conn = RawHttp(self.daemon.port)
        self.addCleanup(conn.close)
        conn.request("GET", "/metrics")
        status, headers, body = conn.response()
        self.assertEqual(status, 200)
        self.assertRegex(headers.get("content-type", ""), r"^text/plain; version=0\.0\.4")
        self.assertEqual(int(headers["content-length"]), len(body))
        self.assertIn(b"# HELP fetchd_objects ", body)

    def test_query_string_is_ignored(self):
        status, _ = self.get("/metrics?x=1")
        self.assertEqual(status, 200)

    def test_other_paths_are_404(self):
        for path in ("/index.html", "/metricsx", "/healthz/extra", "/favicon.ico", "/x" * 100,
                     "/history.jsonx"):
            status, _ = self.get(path)
            self.assertEqual(status, 404, path)

    def test_page_and_history(self):
        """GET / is one self-contained HTML page (issue 17): no asset from
        elsewhere, a policy header that forbids them, within 64 KiB; GET
        /history.json is the JSON it plots."""
        conn = RawHttp(self.daemon.port)
        self.addCleanup(conn.close)
        conn.request("GET", "/")
        status, headers, body = conn.response()
        self.assertEqual(status, 200)
        self.assertEqual(headers.get("content-type"), "text/html; charset=utf-8")
        self.assertIn("default-src 'none'", headers.get("content-security-policy", ""))
        self.assertLess(len(body), PAGE_BUDGET)
        page = body.decode()
        self.assertTrue(page.startswith("<!DOCTYPE html>"))
        self.assertNotRegex(page, r"""(src|href)\s*=\s*["']?(https?:)?//""")
        self.assertNotRegex(page, r"@import|url\(")
        conn.request("GET", "/history.json")
        status, headers, body = conn.response()
        self.assertEqual(status, 200)
        self.assertEqual(headers.get("content-type"), "application/json")
        doc = json.loads(body)
        self.assertGreaterEqual(doc["samples"], 1)
        self.assertEqual(len(doc["t"]), doc["samples"])
        self.assertEqual([p["id"] for p in doc["panels"]], PAGE_PANELS)
        for p in doc["panels"]:
            for series in p["series"]:
                self.assertEqual(len(series["v"]), doc["samples"], (p["id"], series["name"]))
        conn.request("HEAD", "/")
        status, headers, _ = conn.response(head_only=True)
        self.assertEqual((status, int(headers["content-length"])), (200, len(page.encode())))

    def test_post_is_405(self):
        conn = RawHttp(self.daemon.port)
        self.addCleanup(conn.close)
        conn.send(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        status, headers, _ = conn.response()
        self.assertEqual(status, 405)
        self.assertIn("GET", headers.get("allow", ""))

    def test_head(self):
        conn = RawHttp(self.daemon.port)
        self.addCleanup(conn.close)
        conn.request("HEAD", "/metrics")
        status, headers, body = conn.response(head_only=True)
        self.assertEqual(status, 200)
        self.assertGreater(int(headers["content-length"]), 0)
        # No body follows the head: the next answer on this connection
        # starts right after it.
        conn.request("GET", "/healthz")
        status, _, body = conn.response()
        self.assertEqual(status, 200)
        self.assertEqual(conn.buf, b"")

    def test_keep_alive_two_requests_on_one_connection(self):
        conn = RawHttp(self.daemon.port)
        self.addCleanup(conn.close)
        conn.request("GET", "/metrics")
        first = conn.response()
        conn.request("GET", "/metrics")
        second = conn.response()
        self.assertEqual((first[0], second[0]), (200, 200))
        self.assertNotIn("close", first[1].get("connection", "").lower())
        # Both answers came over this one connection, and the endpoint
        # counts it once.
        s = soak.Scrape(second[2].decode())
        self.assertEqual(s.get("fetchd_objects", type="metrics_client"), 1)

    def test_connection_close_is_honoured(self):
        conn = RawHttp(self.daemon.port)
        self.addCleanup(conn.close)
        conn.request("GET", "/healthz", [("Connection", "close")])
        status, _, _ = conn.response()
        self.assertEqual(status, 200)
        self.assertTrue(conn.at_eof(), "connection not closed after Connection: close")

    def test_request_head_over_8k_is_refused(self):
        conn = RawHttp(self.daemon.port)
        self.addCleanup(conn.close)
        conn.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEAD + 1024)
                  + b"\r\n\r\n")
        self.assertTrue(conn.at_eof(), "an oversized request head did not end the connection")
        self.assertFalse(conn.buf.startswith(b"HTTP/1.1 200"),
                         "an oversized request head was answered 200: %r" % conn.buf[:200])
        if conn.buf:
            self.assertTrue(conn.buf.startswith(b"HTTP/1.1 4"), conn.buf[:200])
        # A head that keeps coming is cut off too, not buffered without end.
        endless = RawHttp(self.daemon.port)
        self.addCleanup(endless.close)
        endless.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        refused = False
        try:
            for i in range(64):
                endless.send(b"X-H-%d: %s\r\n" % (i, b"b" * 1000))
        except (BrokenPipeError, ConnectionResetError):
            refused = True
        self.assertTrue(refused or endless.at_eof(),
                        "64 KiB of request head without an end was not refused")
        status, _ = self.get("/healthz")
        self.assertEqual(status, 200)
        s = self.scrape()
        self.assertEqual(s.get("fetchd_objects", type="metrics_client"), 1, self.ctx())

    def test_full_slots_evict_the_oldest_idle_client(self):
        """With every slot held by a kept-alive client, a new client is
        served and the client idle longest is closed to make room."""
        conns = []
        for _ in range(MAX_CLIENTS):
            c = RawHttp(self.daemon.port)
            self.addCleanup(c.close)
            c.request("GET", "/healthz")
            self.assertEqual(c.response()[0], 200)
            conns.append(c)
        extra = RawHttp(self.daemon.port)
        self.addCleanup(extra.close)
        extra.request("GET", "/metrics")
        status, _, body = extra.response()
        self.assertEqual(status, 200, self.ctx())
        s = soak.Scrape(body.decode())
        self.assertEqual(s.get("fetchd_metrics_clients"), MAX_CLIENTS)
        self.assertEqual(s.get("fetchd_metrics_clients_dropped_total", reason="evicted"), 1)
        self.assertTrue(conns[0].at_eof(), "the oldest idle client was not evicted")
        # The others keep their connection and are served on it.
        for c in conns[1:3] + conns[-2:]:
            c.request("GET", "/healthz")
            self.assertEqual(c.response()[0], 200)
        for c in conns + [extra]:
            c.close()
        # Once they are gone, nothing is left of them.
        deadline = time.monotonic() + SETTLE_LIMIT
        while True:
            s = self.scrape()
            if s.get("fetchd_metrics_clients") == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(s.get("fetchd_metrics_clients"), 1, self.ctx())
        self.assertEqual(s.get("fetchd_objects", type="metrics_client"), 1, self.ctx())

    def test_port_zero_logs_the_port(self):
        m = re.search(r"metrics: listening on 127\.0\.0\.1:0 \(port (\d+)\)", self.daemon.log())
        self.assertIsNotNone(m, self.ctx())
        port = int(m.group(1))
        self.assertGreater(port, 0)
        status, _ = soak.http_get(port, "/healthz")
        self.assertEqual(status, 200)


# ---- hostile clients ----------------------------------------------------------------


def raise_fd_limit(want):
    """Raises this process's open-files limit toward `want`; returns the
    soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


class Attackers:
    """Many client connections watched on one selector: which of them the
    endpoint has closed (EOF or reset), and, for tricklers, one more byte of
    a never-ending request head for each every TRICKLE_EVERY seconds, sent
    from a thread until the endpoint closes the connection or stop()."""

    HEAD = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "

    def __init__(self):
        self.socks = []
        self.closed = set()
        self.lock = threading.Lock()
        self.sel = selectors.DefaultSelector()
        self.stopping = threading.Event()
        self.thread = None

    def connect(self, port, count, time_limit):
        deadline = time.monotonic() + time_limit
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
            sock.setblocking(False)
            self.sel.register(sock, selectors.EVENT_READ, len(self.socks))
            self.socks.append(sock)
        return len(self.socks)

    def poll(self, timeout=0.0):
        """Notes every connection the endpoint closed; returns how many are."""
        for key, _ in self.sel.select(timeout):
            try:
                data = key.fileobj.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                self.sel.unregister(key.fileobj)
                with self.lock:
                    self.closed.add(key.data)
        with self.lock:
            return len(self.closed)

    def start_trickling(self, time_limit):
        for sock in self.socks:
            sock.send(self.HEAD)
        self.thread = threading.Thread(target=self._trickle, args=(time_limit,), daemon=True)
        self.thread.start()

    def _trickle(self, time_limit):
        deadline = time.monotonic() + time_limit
        while not self.stopping.is_set() and time.monotonic() < deadline:
            for i, sock in enumerate(self.socks):
                with self.lock:
                    if i in self.closed:
                        continue
                try:
                    sock.send(b"a")
                except BlockingIOError:
                    pass
                except OSError:
                    with self.lock:
                        self.closed.add(i)
            self.stopping.wait(TRICKLE_EVERY)

    def wait_all_closed(self, limit):
        deadline = time.monotonic() + limit
        while self.poll(0.05) < len(self.socks) and time.monotonic() < deadline:
            pass
        return self.poll()

    def trickling(self):
        return self.thread is not None and self.thread.is_alive()

    def stop(self):
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(IO_TIMEOUT)
        self.sel.close()
        for sock in self.socks:
            sock.close()


class HostileClients(MetricsTestCase):
    """Issue 9: held or trickling connections taking every slot must not
    silence the endpoint; they are closed (evicted, or at the request
    deadline, which bytes do not move) and leave nothing behind."""

    def setUp(self):
        self.start_daemon()
        self.client = self.rpc()
        # Warm up the endpoint (a scrape) and the control socket, then take
        # the figures every attack must return to.
        self.assertEqual(self.get("/metrics")[0], 200)
        self.baseline = self.settled_figures()

    def figures(self):
        st = self.client.result("stats")
        out = {"objects." + k: v for k, v in st["objects"].items()}
        out["heap_blocks_fetchd"] = st["heap"]["fetchd"]["blocks"]
        out["buffers.in_use"] = st["buffers"]["in_use"]
        out["process_open_fds"] = st["process_open_fds"]
        return out

    def settled_figures(self):
        """The figures once no metrics client is left (bounded wait)."""
        deadline = time.monotonic() + SETTLE_LIMIT
        while True:
            f = self.figures()
            if f["objects.metrics_client"] == 0 or time.monotonic() > deadline:
                return f
            time.sleep(0.05)

    def attackers(self):
        a = Attackers()
        self.addCleanup(a.stop)
        return a

    def wait_metrics_clients(self, n):
        deadline = time.monotonic() + SETTLE_LIMIT
        while True:
            got = self.figures()["objects.metrics_client"]
            if got == n or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def assert_scrape_answered(self):
        """A real scraper's GET /metrics gets a complete, valid page."""
        try:
            status, body = soak.http_get(self.daemon.port, "/metrics", timeout=IO_TIMEOUT)
        except OSError as exc:
            self.fail("the scrape under attack failed: %r%s" % (exc, self.ctx()))
        self.assertEqual(status, 200, body[:200])
        s = soak.Scrape(body.decode())
        for name in DESIGN_METRICS:
            self.assertIn(name, s.types, name)
        self.assertTrue(body.endswith(b"\n"))
        if self.have_tool(PROMTOOL, "prometheus"):
            proc = subprocess.run([PROMTOOL, "check", "metrics"], input=body,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
            self.assertEqual(proc.returncode, 0, proc.stdout.decode(errors="replace"))
        return s

    def assert_back_at_baseline(self):
        after = self.settled_figures()
        diff = {k: (self.baseline.get(k), after.get(k))
                for k in set(self.baseline) | set(after) if self.baseline.get(k) != after.get(k)}
        self.assertEqual(diff, {}, "figures changed (before, after)%s" % self.ctx())

    def test_trickling_clients_holding_every_slot(self):
        a = self.attackers()
        self.assertEqual(a.connect(self.daemon.port, MAX_CLIENTS, SETTLE_LIMIT), MAX_CLIENTS)
        a.start_trickling(ATTACK_CLOSE_LIMIT + SETTLE_LIMIT)
        held = self.wait_metrics_clients(MAX_CLIENTS)
        s = self.assert_scrape_answered()
        self.assertEqual(held, MAX_CLIENTS, "the tricklers did not hold every slot%s" % self.ctx())
        self.assertEqual(s.get("fetchd_metrics_clients"), MAX_CLIENTS, self.ctx())
        # Bytes keep coming, yet every trickler is closed: the deadline for
        # a whole request is not restarted by them.
        closed = a.wait_all_closed(ATTACK_CLOSE_LIMIT)
        self.assertTrue(a.trickling(), "the tricklers stopped before the endpoint closed them")
        self.assertEqual(closed, MAX_CLIENTS, "tricklers still connected after %.0f s%s"
                         % (ATTACK_CLOSE_LIMIT, self.ctx()))
        a.stop()
        self.assert_back_at_baseline()
        s = self.scrape()
        dropped = s.by_label("fetchd_metrics_clients_dropped_total", "reason")
        self.assertEqual(dropped["evicted"] + dropped["request_timeout"], MAX_CLIENTS, dropped)
        self.assertGreaterEqual(dropped["evicted"], 1, dropped)

    def test_two_thousand_held_connections(self):
        want = HELD_CONNECTIONS + 200
        limit = raise_fd_limit(want)
        if limit < want:
            self.fail("this test needs %d open files; the limit is %d" % (want, limit))
        fds_before = open_fds(self.daemon.proc.pid)
        a = self.attackers()
        n = a.connect(self.daemon.port, HELD_CONNECTIONS, 60.0)
        self.assertEqual(n, HELD_CONNECTIONS)
        held = self.wait_metrics_clients(MAX_CLIENTS)
        fds_held = open_fds(self.daemon.proc.pid)
        self.assert_scrape_answered()
        self.assertEqual(held, MAX_CLIENTS, self.ctx())
        # The endpoint holds at most one fd per slot, however many connect.
        self.assertLessEqual(fds_held, fds_before + MAX_CLIENTS)
        self.assertGreaterEqual(a.poll(), HELD_CONNECTIONS - MAX_CLIENTS)
        # The ones still held are closed at the request deadline.
        closed = a.wait_all_closed(ATTACK_CLOSE_LIMIT)
        self.assertEqual(closed, HELD_CONNECTIONS, "held connections still open after %.0f s%s"
                         % (ATTACK_CLOSE_LIMIT, self.ctx()))
        a.stop()
        self.assert_back_at_baseline()
        self.assertLessEqual(open_fds(self.daemon.proc.pid), fds_before)


def tcp_listen_inodes():
    """Socket inodes of every TCP socket in LISTEN state (IPv4 and IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A":
                        inodes.add(fields[9])
        except OSError:
            pass
    return inodes


def socket_inodes(pid):
    out = set()
    fd_dir = "/proc/%d/fd" % pid
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        m = re.match(r"socket:\[(\d+)\]$", target)
        if m:
            out.add(m.group(1))
    return out


class MetricsOff(MetricsTestCase):
    def test_off_binds_nothing(self):
        d = self.start_daemon(metrics=False)
        self.assertNotIn("metrics: listening", d.log())
        listening = socket_inodes(d.proc.pid) & tcp_listen_inodes()
        self.assertEqual(listening, set(), "fetchd listens on TCP with --metrics off%s"
                         % self.ctx())
        client = self.rpc()
        self.assertIn("objects", client.result("stats"))


# ---- the figures ------------------------------------------------------------------------


class Figures(NginxMetricsTestCase):
    def setUp(self):
        self.start_daemon(["--idle-timeout", "1"])
        self.client = self.rpc()
        n = self.nginx
        for spec in ({"url": n.url("/small.txt")}, {"url": n.url("/1k.bin"), "sha256": True},
                     {"url": n.url("/status/404")},
                     {"url": n.url("/status/500"), "fail_on_http_error": True},
                     {"url": n.url("/redirect/1")},
                     {"url": "http://127.0.0.1:%d/" % free_port()}):
            self.fetch(self.client, spec)

    def test_promtool_check_metrics(self):
        self.require_tool(PROMTOOL, "prometheus")
        status, body = self.get("/metrics")
        self.assertEqual(status, 200)
        proc = subprocess.run([PROMTOOL, "check", "metrics"], input=body,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        self.assertEqual(proc.returncode, 0, "promtool check metrics:\n%s\n--- page ---\n%s"
                         % (proc.stdout.decode(errors="replace"), body.decode()[:3000]))

    def test_every_design_metric_is_present(self):
        s = self.scrape()
        for name, typ in DESIGN_METRICS.items():
            self.assertIn(name, s.types, "no TYPE line for %s" % name)
            self.assertEqual(s.types[name], typ, name)
            if typ == "histogram":
                for suffix in ("_bucket", "_sum", "_count"):
                    self.assertIn(name + suffix, s.names(), name)
            else:
                self.assertIn(name, s.names(), name)
        for (name, label), values in DESIGN_LABELS.items():
            seen = set(s.by_label(name, label))
            self.assertLessEqual(values, seen, "%s{%s=...} lacks some values" % (name, label))
        self.assertIn(b"# HELP fetchd_connections ", self.get("/metrics")[1])

    def test_histogram_counts_every_finished_job(self):
        s = self.scrape()
        finished = sum(s.by_label("fetchd_jobs_finished_total", "result").values())
        self.assertEqual(s.get("fetchd_fetch_duration_seconds_count"), finished)
        self.assertEqual(s.get("fetchd_fetch_duration_seconds_bucket", le="+Inf"), finished)
        buckets = sorted((float(le), v) for le, v in
                         s.by_label("fetchd_fetch_duration_seconds_bucket", "le").items())
        counts = [v for _, v in buckets]
        self.assertEqual(counts, sorted(counts), "histogram buckets are not cumulative")

    def test_stats_method_gives_the_same_figures(self):
        self.wait_idle_closed()
        s = self.scrape()
        st = self.client.result("stats")
        self.assertEqual(st["connections"], {k: int(v) for k, v in
                                             s.by_label("fetchd_connections", "state").items()})
        self.assertEqual(st["connections_opened_total"],
                         s.get("fetchd_connections_opened_total"))
        self.assertEqual(st["connections_closed_total"], {
            k: int(v) for k, v in s.by_label("fetchd_connections_closed_total",
                                             "reason").items()})
        self.assertEqual(st["jobs"], {k: int(v) for k, v in
                                      s.by_label("fetchd_jobs", "state").items()})
        self.assertEqual(st["jobs_finished_total"], {
            k: int(v) for k, v in s.by_label("fetchd_jobs_finished_total", "result").items()})
        self.assertEqual(st["received_bytes_total"], s.get("fetchd_received_bytes_total"))
        self.assertEqual(st["connection_reuses_total"], s.get("fetchd_connection_reuses_total"))
        # The scrape holds a metrics client and its read buffer, the stats
        # call a control client and its writes; the engine's objects match.
        objects = s.by_label("fetchd_objects", "type")
        for typ in ("conn", "job", "origin", "dns_entry", "request", "tls_config",
                    "tls_context", "tls_session"):
            self.assertEqual(st["objects"].get(typ), objects.get(typ), typ)
        self.assertEqual(st["jobs_finished_total"]["done"], 4)
        self.assertEqual(st["jobs_finished_total"]["failed"], 2)

    def test_build_info(self):
        s = self.scrape()
        self.assertEqual(s.types.get("fetchd_build_info"), "gauge")
        page = self.get("/metrics")[1].decode()
        m = re.search(r'^fetchd_build_info\{version="([^"]+)",libuv="(\d+\.\d+\.\d+)",'
                      r'llhttp="(\d+\.\d+\.\d+)",mbedtls="(\d+\.\d+\.\d+)",'
                      r'jansson="(\d+\.\d+(\.\d+)?)"\} 1$', page, re.M)
        self.assertIsNotNone(m, page[:2000])
        version = self.client.result("version")["version"]
        self.assertEqual(m.group(1), version)

    def test_responses_by_class_and_errors_by_code(self):
        """The six jobs of setUp: 200, 200, 404 (done), 500 with --fail
        (failed, http_error), a redirect to a 200, a refused connection."""
        s = self.scrape()
        self.assertEqual(s.types.get("fetchd_responses_total"), "counter")
        self.assertEqual(s.by_label("fetchd_responses_total", "code_class"),
                         {"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 1, "5xx": 1})
        errors = s.by_label("fetchd_job_errors_total", "code")
        self.assertLessEqual(DESIGN_ERROR_CODES, set(errors))
        self.assertEqual({k: v for k, v in errors.items() if v},
                         {"http_error": 1, "connect_refused": 1})
        # The 404 stays a done job (DESIGN.md): the class series is what
        # an alert on upstream errors reads.
        self.assertEqual(s.get("fetchd_jobs_finished_total", result="done"), 4)
        st = self.client.result("stats")
        self.assertEqual(st["responses_total"], s.by_label("fetchd_responses_total", "code_class"))
        self.assertEqual(st["job_errors_total"], errors)

    def test_stats_and_metrics_agree_on_idle_buffers(self):
        """Issue 17: `stats` said buffers.in_use 1 on an idle daemon (its own
        connection's read buffer) while /metrics said 0."""
        self.wait_idle_closed()
        s = self.scrape()
        st = self.client.result("stats")
        self.assertEqual(s.get("fetchd_buffers", state="in_use"), 0)
        self.assertEqual(st["buffers"]["in_use"], 0, st["buffers"])
        self.assertEqual(st["buffer_bytes"]["in_use"], 0, st["buffer_bytes"])


# ---- the urllib2 scenario ---------------------------------------------------------------


def flat_figures(s):
    """What must be identical before and after: fetchd's heap blocks, every
    object type, connections and buffers."""
    out = {"heap_blocks_fetchd": s.get("fetchd_heap_allocations", component="fetchd")}
    for typ, v in s.by_label("fetchd_objects", "type").items():
        out["objects." + typ] = v
    for state, v in s.by_label("fetchd_connections", "state").items():
        out["connections." + state] = v
    for state, v in s.by_label("fetchd_buffers", "state").items():
        out["buffers." + state] = v
    return out


class Urllib2Scenario(NginxMetricsTestCase):
    """Python 2's urllib2 kept every HTTPResponse alive through the cycle
    r.recv = r.read, and on the HTTPError path nothing freed it.  Here: five
    fetches that end in an HTTP error, five that succeed, and afterwards
    (idle connections closed) everything is exactly where it was."""

    def run_scenario(self, binary):
        # --retain-jobs 1: the job retention keeps is always the last one,
        # a successful fetch of the same URL before and after.
        d = self.start_daemon(["--idle-timeout", "1", "--retain-jobs", "1"], binary=binary)
        client = self.rpc(d)
        n = self.nginx
        warm = self.fetch(client, {"url": n.url("/small.txt")})
        self.assertEqual(warm.get("http_status"), 200, warm)
        before = flat_figures(self.wait_idle_closed(d))
        errors = [{"url": n.url("/status/404")}, {"url": n.url("/status/500")},
                  {"url": n.url("/no/such/file")},
                  {"url": n.url("/status/404"), "fail_on_http_error": True},
                  {"url": n.url("/status/500"), "fail_on_http_error": True}]
        for spec in errors:
            job = self.fetch(client, spec)
            self.assertIn(job.get("http_status"), (404, 500), job)
        for _ in range(5):
            job = self.fetch(client, {"url": n.url("/small.txt")})
            self.assertEqual((job["state"], job.get("http_status")), ("done", 200), job)
        after = flat_figures(self.wait_idle_closed(d))
        return before, after, len(errors)

    def test_error_fetches_leave_nothing_behind(self):
        before, after, _ = self.run_scenario(FETCHD)
        diff = {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                if before.get(k) != after.get(k)}
        self.assertEqual(diff, {}, "figures changed (before, after)%s" % self.ctx())

    def test_the_check_catches_a_leak(self):
        """fetchd-leaky loses one read buffer per failed or >= 400 job: the
        same comparison must show it."""
        before, after, nerrors = self.run_scenario(FETCHD_LEAKY)
        self.assertNotEqual(before, after, "the leaky daemon passed the check")
        leaked = after["buffers.in_use"] - before["buffers.in_use"]
        self.assertGreaterEqual(leaked, nerrors, "buffers in use: %r -> %r"
                                % (before["buffers.in_use"], after["buffers.in_use"]))
        self.assertGreater(after["heap_blocks_fetchd"], before["heap_blocks_fetchd"])
        self.assertEqual(after["objects.buffer"] - before["objects.buffer"],
                         after["buffers.in_use"] + after["buffers.free"]
                         - before["buffers.in_use"] - before["buffers.free"])


# ---- allocations made (issue 15) ---------------------------------------------------------

ALLOC_FETCHES = 20


class HeapAllocationsTotal(NginxMetricsTestCase):
    """fetchd_heap_allocations_total{component}: every allocation made, a
    counter beside the live-blocks gauge. N fetches make at least N of
    fetchd's own (each job is one), no component's count ever falls, and the
    stats method reports the same figures."""

    def totals(self, s):
        return s.by_label("fetchd_heap_allocations_total", "component")

    def test_counts_every_allocation_and_never_falls(self):
        self.start_daemon(["--idle-timeout", "1"])
        client = self.rpc()
        n = self.nginx
        first = self.scrape()
        self.assertEqual(first.types.get("fetchd_heap_allocations_total"), "counter",
                         "no counter TYPE line for fetchd_heap_allocations_total")
        before = self.totals(first)
        self.assertLessEqual({"fetchd", "libuv", "jansson", "zlib", "brotli", "zstd"},
                             set(before), before)
        live = first.by_label("fetchd_heap_allocations", "component")
        for comp, made in before.items():
            self.assertGreaterEqual(made, live[comp], "%s: fewer made than live" % comp)
        self.assertGreater(before["fetchd"], 0, before)
        seen = [before]
        for i in range(ALLOC_FETCHES):
            job = self.fetch(client, {"url": n.url("/small.txt")})
            self.assertEqual((job["state"], job.get("http_status")), ("done", 200), job)
            if i % 5 == 4:
                seen.append(self.totals(self.scrape()))
        seen.append(self.totals(self.wait_idle_closed()))
        for earlier, later in zip(seen, seen[1:]):
            for comp in before:
                self.assertGreaterEqual(later[comp], earlier[comp],
                                        "fetchd_heap_allocations_total{component=%s} fell: "
                                        "%r%s" % (comp, [t[comp] for t in seen], self.ctx()))
        after = seen[-1]
        self.assertGreaterEqual(after["fetchd"] - before["fetchd"], ALLOC_FETCHES,
                                "%d fetches, fetchd allocations %d -> %d"
                                % (ALLOC_FETCHES, before["fetchd"], after["fetchd"]))
        self.assertGreaterEqual(after["jansson"] - before["jansson"], ALLOC_FETCHES, after)
        # The stats method's figures: read after a scrape, so each must be
        # at least the scrape's, and no more than a second scrape's.
        s1 = self.totals(self.scrape())
        heap = client.result("stats")["heap"]
        s2 = self.totals(self.scrape())
        for comp in before:
            self.assertIn("allocations_total", heap[comp], heap)
            self.assertGreaterEqual(heap[comp]["allocations_total"], s1[comp], comp)
            self.assertLessEqual(heap[comp]["allocations_total"], s2[comp], comp)


# ---- a real Prometheus ------------------------------------------------------------------


class RealPrometheus(NginxMetricsTestCase):
    def start_prometheus(self, target_port):
        self.require_tool(PROMETHEUS, "prometheus")
        work = tmpdir("prometheus-")
        self.addCleanup(remove_tree, work)
        config = os.path.join(work, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: fetchd\n    static_configs:\n"
                    "      - targets: ['127.0.0.1:%d']\n" % target_port)
        port = free_port()
        log = open(os.path.join(work, "prometheus.log"), "wb")
        self.addCleanup(log.close)
        proc = subprocess.Popen(
            [PROMETHEUS, "--config.file=" + config,
             "--storage.tsdb.path=" + os.path.join(work, "data"),
             "--web.listen-address=127.0.0.1:%d" % port],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=work, start_new_session=True)
        self.addCleanup(self.stop_prometheus, proc)
        self.prometheus_log = os.path.join(work, "prometheus.log")
        return port

    @staticmethod
    def stop_prometheus(proc):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(15)

    def prometheus_tail(self):
        try:
            with open(self.prometheus_log, errors="replace") as f:
                return "\n--- prometheus log (tail) ---\n" + f.read()[-3000:]
        except OSError:
            return ""

    @staticmethod
    def query(port, expr):
        url = "http://127.0.0.1:%d/api/v1/query?query=%s" % (port, urllib.parse.quote(expr))
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                doc = json.loads(resp.read())
        except (OSError, ValueError):
            return None
        if doc.get("status") != "success":
            return None
        return {tuple(sorted(r["metric"].items())): float(r["value"][1])
                for r in doc["data"]["result"]}

    def test_prometheus_scrapes_fetchd(self):
        d = self.start_daemon(["--idle-timeout", "600"])
        client = self.rpc(d)
        for _ in range(3):
            job = self.fetch(client, {"url": self.nginx.url("/small.txt")})
            self.assertEqual(job.get("http_status"), 200, job)
        port = self.start_prometheus(d.port)
        # One idle pooled connection, nothing else: a state Prometheus and
        # fetchd's own page must agree on.
        deadline = time.monotonic() + PROMETHEUS_LIMIT
        series = None
        while time.monotonic() < deadline:
            series = self.query(port, "fetchd_connections")
            if series and len(series) >= 3:
                break
            time.sleep(0.5)
        self.assertTrue(series and len(series) >= 3, "Prometheus returned no fetchd_connections "
                        "within %.0f s: %r%s" % (PROMETHEUS_LIMIT, series, self.prometheus_tail()))
        by_state = {dict(k)["state"]: v for k, v in series.items()}
        for key in series:
            labels = dict(key)
            self.assertEqual(labels.get("job"), "fetchd", labels)
            self.assertEqual(labels.get("instance"), "127.0.0.1:%d" % d.port, labels)
        own = self.scrape(d)
        self.assertEqual(by_state, {k: v for k, v in
                                    own.by_label("fetchd_connections", "state").items()},
                         self.prometheus_tail())
        self.assertEqual(by_state["idle"], 1)
        done = self.query(port, 'fetchd_jobs_finished_total{result="done"}')
        self.assertEqual(list(done.values()), [3.0], done)
        up = self.query(port, 'up{job="fetchd"}')
        self.assertEqual(list(up.values()), [1.0], up)


if __name__ == "__main__":
    unittest.main()
