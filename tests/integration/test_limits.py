"""Limits against hostile input, through the real fetchd and its control
socket: the destination deny-list (deny_networks / allow_networks), the
https -> http redirect with allow_downgrade, the byte budget of the queue
(max_queue_bytes) and memory given back after a burst of jobs."""

import json
import os
import signal
import socket
import subprocess
import threading
import time
import unittest
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ctltest import FETCHD, ControlTestCase, clean_env, spec
from faultserver import FaultServer
from fetchtest import SLOWDOWN, remove_tree, tmpdir
from tlsutil import TlsNginx, certs

WAIT_LIMIT = 30.0 * SLOWDOWN


def redir(status, to):
    return "/redir?status=%d&to=%s" % (status, urllib.parse.quote(to, safe=""))


class Listener:
    """A socket listening on a loopback address that never accepts: a
    connection fetchd makes completes in the kernel and waits in the
    backlog, so `connections()` tells afterwards whether one was made."""

    def __init__(self, host="127.0.0.2"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.accepted = 0

    def url(self, path="/", host=None):
        return "http://%s:%d%s" % (host or self.host, self.port, path)

    def connections(self):
        """Connections made so far (accepted and closed here, bounded)."""
        for _ in range(1000):
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                break
            conn.close()
            self.accepted += 1
        return self.accepted

    def close(self):
        self.sock.close()


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class OkServer:
    """A plain HTTP server answering 200 "ok" on the given loopback address."""

    def __init__(self, host="127.0.0.2"):
        self.httpd = ThreadingHTTPServer((host, 0), _Ok)
        self.httpd.daemon_threads = True
        self.host = host
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path="/"):
        return "http://%s:%d%s" % (self.host, self.port, path)

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


class GatedServer:
    """Plain HTTP/1.1 keep-alive on 127.0.0.1: the first response waits until
    `gate` is set (bounded), later ones are sent at once. Counts accepted
    connections and requests."""

    def __init__(self):
        self.gate = threading.Event()
        self.got_request = threading.Event()
        self.stopping = threading.Event()
        self.accepted = 0
        self.requests = 0
        self.lock = threading.Lock()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.socks = []
        self.threads = [threading.Thread(target=self._accept_loop, daemon=True)]
        self.threads[0].start()

    def url(self, path="/"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                self.socks.append(sock)
            t = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, sock):
        sock.settimeout(0.05)
        buf = b""
        while not self.stopping.is_set():
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            buf += data
            while b"\r\n\r\n" in buf:
                _, buf = buf.split(b"\r\n\r\n", 1)
                with self.lock:
                    self.requests += 1
                    first = self.requests == 1
                if first:
                    self.got_request.set()
                    self.gate.wait(WAIT_LIMIT)
                try:
                    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                except OSError:
                    return

    def stop(self):
        self.stopping.set()
        self.gate.set()
        with self.lock:
            socks = list(self.socks)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads:
            t.join(5)
        for sock in socks:
            sock.close()
        self.listener.close()


class LimitsCase(ControlTestCase):
    """Servers a test starts are stopped before the end-of-test check, so
    the idle connections fetchd keeps to them close and are not counted."""

    def setUp(self):
        super().setUp()
        self.servers = []
        self.addCleanup(self.stop_servers)

    def stop_servers(self):
        while self.servers:
            self.servers.pop().stop()

    def start_fetchd(self, args=(), **kw):
        d = super().start_fetchd(args, **kw)
        self.addCleanup(self.stop_servers)
        return d

    def server(self, srv):
        self.servers.append(srv)
        return srv

    def fetch(self, client, url, **fields):
        jid = self.submit(client, [spec(url, **fields)])[0]
        return self.wait_job(client, jid, timeout=WAIT_LIMIT)

    def assert_forbidden(self, job, address, rule):
        self.assertEqual(job["state"], "failed", job)
        self.assertEqual(job["error"]["code"], "forbidden", job)
        message = job["error"]["message"]
        self.assertIn(address, message, job)
        self.assertIn(rule, message, job)

    def listener(self, host="127.0.0.2"):
        lst = Listener(host)
        self.addCleanup(lst.close)
        return lst

    def fault_server(self):
        return self.server(FaultServer().start())

    def write_config(self, doc):
        d = tmpdir("limits-cfg-")
        self.addCleanup(remove_tree, d)
        path = os.path.join(d, "fetchd.json")
        with open(path, "w") as f:
            json.dump(doc, f)
        return path


class DenyList(LimitsCase):
    def test_denied_loopback_subrange(self):
        lst = self.listener()
        d = self.start_fetchd(["--deny-networks", "127.0.0.2/32"])
        with d.client() as c:
            job = self.fetch(c, lst.url("/x"))
        self.assert_forbidden(job, "127.0.0.2", "deny_networks 127.0.0.2/32")
        self.assertEqual(lst.connections(), 0, "fetchd connected to a denied address")

    def test_ipv4_mapped_ipv6_is_matched_as_ipv4(self):
        lst = self.listener()
        d = self.start_fetchd(["--deny-networks", "127.0.0.2/32"])
        with d.client() as c:
            job = self.fetch(c, lst.url("/x", host="[::ffff:127.0.0.2]"))
        self.assert_forbidden(job, "127.0.0.2", "127.0.0.2/32")
        self.assertEqual(lst.connections(), 0)

    def test_redirect_to_denied_address(self):
        lst = self.listener()
        srv = self.fault_server()
        d = self.start_fetchd(["--deny-networks", "127.0.0.2/32"])
        with d.client() as c:
            job = self.fetch(c, srv.url(redir(302, lst.url("/secret"))))
        self.assert_forbidden(job, "127.0.0.2", "127.0.0.2/32")
        self.assertEqual(job["redirects"], 1, job)
        self.assertEqual(len(srv.requests()), 1, "the allowed first hop was fetched")
        self.assertEqual(lst.connections(), 0)

    def test_allow_networks_wins_over_deny(self):
        lst = self.listener()
        srv = self.fault_server()
        d = self.start_fetchd(["--deny-networks", "127.0.0.0/8,::1",
                               "--allow-networks", "127.0.0.1/32"])
        with d.client() as c:
            ok = self.fetch(c, srv.url("/cl?size=10"))
            denied = self.fetch(c, lst.url("/"))
        self.assertEqual(ok["state"], "done", ok)
        self.assertEqual(ok["http_status"], 200, ok)
        self.assert_forbidden(denied, "127.0.0.2", "127.0.0.0/8")
        self.assertEqual(lst.connections(), 0)

    def test_cached_name_is_checked_again(self):
        # localhost resolves to 127.0.0.1 and ::1; the second job is answered
        # from the DNS cache and must be refused all the same.
        srv = self.fault_server()
        d = self.start_fetchd(["--deny-networks", "127.0.0.0/8,::1/128"])
        url = "http://localhost:%d/cl?size=10" % srv.port
        with d.client() as c:
            first = self.fetch(c, url)
            hits = self.stats(c)["dns_cache_hits_total"]
            second = self.fetch(c, url)
            self.assertGreater(self.stats(c)["dns_cache_hits_total"], hits)
        for job in (first, second):
            self.assertEqual(job["error"]["code"], "forbidden", job)
            self.assertIn("localhost", job["error"]["message"], job)
        self.assertEqual(srv.connections_accepted(), 0)

    def test_default_denies_this_host_address(self):
        # 0.0.0.0 reaches the local host on Linux: the classic way around a
        # loopback block. The built-in list denies 0.0.0.0/8 and ::/128.
        srv = self.fault_server()
        d = self.start_fetchd()
        with d.client() as c:
            job = self.fetch(c, "http://0.0.0.0:%d/cl?size=10" % srv.port)
            job6 = self.fetch(c, "http://[::]:%d/cl?size=10" % srv.port)
            ok = self.fetch(c, srv.url("/cl?size=10"))
        self.assert_forbidden(job, "0.0.0.0", "deny_networks 0.0.0.0/8")
        self.assert_forbidden(job6, "::", "deny_networks ::/128")
        self.assertEqual(ok["state"], "done", ok)
        self.assertEqual(srv.connections_accepted(), 1, "only the allowed job connected")

    def test_config_file_and_reload(self):
        ok_srv = self.server(OkServer("127.0.0.2"))
        path = self.write_config({"deny_networks": ["default"], "allow_networks": []})
        d = self.start_fetchd(["-c", path])
        with d.client() as c:
            before = self.fetch(c, ok_srv.url("/"))
            self.assertEqual(before["state"], "done", before)
            self.reload(d, path, {"deny_networks": ["default", "127.0.0.2/32"]})
            after = self.fetch(c, ok_srv.url("/"))
        self.assert_forbidden(after, "127.0.0.2", "127.0.0.2/32")

    def reload(self, d, path, doc):
        with open(path, "w") as f:
            json.dump(doc, f)
        reloads = d.log().count("configuration reloaded")
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + WAIT_LIMIT
        while d.log().count("configuration reloaded") == reloads:
            self.assertLess(time.monotonic(), deadline, "no reload" + d.log_tail())
            time.sleep(0.05)

    def test_connection_in_use_at_reload_is_not_reused(self):
        # A request in flight when 127.0.0.1 becomes denied may finish, but
        # its connection must not serve the next job: reuse skips the check
        # made before connecting.
        srv = self.server(GatedServer())
        path = self.write_config({"deny_networks": []})
        d = self.start_fetchd(["-c", path])
        with d.client() as c:
            first = self.submit(c, [spec(srv.url("/first"))])[0]
            self.assertTrue(srv.got_request.wait(WAIT_LIMIT), "no request arrived")
            self.reload(d, path, {"deny_networks": ["127.0.0.1/32"]})
            srv.gate.set()
            job = self.wait_job(c, first, timeout=WAIT_LIMIT)
            self.assertEqual(job["state"], "done", job)
            second = self.fetch(c, srv.url("/second"))
            self.assertEqual(self.stats(c)["connections"]["idle"], 0)
        self.assert_forbidden(second, "127.0.0.1", "deny_networks 127.0.0.1/32")
        self.assertEqual((srv.accepted, srv.requests), (1, 1))

    def test_bad_network_is_a_config_error(self):
        path = self.write_config({"max_jobs": 10,
                                  "deny_networks": ["10.0.0.0/8", "10.0.0.1/8"]})
        d = tmpdir("limits-bad-")
        self.addCleanup(remove_tree, d)
        proc = subprocess.run([FETCHD, "-c", path, "--control", os.path.join(d, "s")],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              env=clean_env(), timeout=30)
        self.assertEqual(proc.returncode, 78, proc.stderr)
        self.assertIn("%s:1:" % path, proc.stderr)
        self.assertIn("10.0.0.1/8", proc.stderr)
        proc = subprocess.run([FETCHD, "--deny-networks", "300.0.0.0/8", "--control",
                               os.path.join(d, "s")], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, env=clean_env(), timeout=30)
        self.assertEqual(proc.returncode, 64, proc.stderr)
        self.assertIn("--deny-networks", proc.stderr)


class DowngradeNginx(TlsNginx):
    """TLS nginx whose /downgrade answers 302 to a plain http URL."""

    def __init__(self, target, cert_set):
        super().__init__(cert_set)
        self.target = target

    def _config(self):
        p = self.prefix
        extra = "location = /downgrade { return 302 %s; }" % self.target
        client = "ssl_verify_client on;\n        ssl_client_certificate %s;" % self.certs.ca
        return self._http_prologue() + """    %(main)s
    %(client)s
}
""" % {"p": p, "main": self._server_block(self.port, extra),
       "client": self._server_block(self.client_port, client)}


class Downgrade(LimitsCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.certs = certs()

    def test_allow_downgrade_reaches_the_plain_server(self):
        plain = self.fault_server()
        nginx = self.server(DowngradeNginx(plain.url("/echo"), self.certs).start())
        d = self.start_fetchd()
        with d.client() as c:
            job = self.fetch(c, nginx.url("/downgrade"), ca_file=self.certs.ca,
                             allow_downgrade=True, output="inline")
            refused = self.fetch(c, nginx.url("/downgrade"), ca_file=self.certs.ca)
        self.assertEqual(job["state"], "done", job)
        self.assertEqual(job["http_status"], 200, job)
        self.assertEqual(job["effective_url"], plain.url("/echo"), job)
        self.assertEqual(plain.path_hits("/echo"), 1, plain.requests())
        self.assertEqual(refused["state"], "failed", refused)
        self.assertIn("allow_downgrade", refused["error"]["message"], refused)


def heap_bytes(stats):
    return stats["heap"]["fetchd"]["bytes"]


def heap_without_cache(stats):
    """fetchd's counted heap less the free read buffers the buffer pool
    keeps for reuse (a bounded cache, not a leak)."""
    return heap_bytes(stats) - stats["buffer_bytes"]["free"]


class QueueBytes(LimitsCase):
    def hold_running_slot(self, c, srv):
        """One job that never gets an answer keeps --max-running 1 busy, so
        later jobs stay queued."""
        jid = self.submit(c, [spec(srv.url("/never"))])[0]
        self.wait_state(c, jid, "running")
        return jid

    def test_long_url_is_held_once(self):
        srv = self.fault_server()
        d = self.start_fetchd(["--max-running", "1"])
        url = srv.url("/cl?size=1&pad=" + "a" * (512 * 1024))
        with d.client() as c:
            self.hold_running_slot(c, srv)
            before = self.stats(c)
            # Submitted on a client of its own, closed before measuring: the
            # control connection's line buffer is not the job's.
            with d.client() as other:
                jid = self.submit(other, [spec(url)])[0]
            after = self.wait_clients(c, 1)
            grown = heap_bytes(after) - heap_bytes(before)
            self.assertEqual(after["jobs"]["queued"], 1, after)
            # The URL text once, plus the job and small change: before, the
            # spec, the parsed URL's href and target and effective_url each
            # held a copy (four).
            self.assertLess(grown, 512 * 1024 * 1.25, "queued job grew the heap by %d" % grown)
            self.assertGreaterEqual(after["queued_bytes"], 512 * 1024, after)
            self.assertLess(after["queued_bytes"], 512 * 1024 * 1.25, after)
            job = c.result("status", {"id": jid})
            self.assertEqual(job["url"], url)
            self.assertEqual(job["effective_url"], url)

    def test_byte_budget_refuses_all_or_nothing(self):
        srv = self.fault_server()
        d = self.start_fetchd(["--max-running", "1", "--max-queue-bytes", str(1 << 20)])
        big = lambda tag: spec(srv.url("/cl?size=1&%s=%s" % (tag, "b" * (400 * 1024))))
        with d.client() as c:
            self.hold_running_slot(c, srv)
            self.submit(c, [big("first")])
            # Two more would pass 1 MiB: neither is queued.
            resp = c.call("submit", {"jobs": [spec(srv.url("/cl?size=1")), big("second"),
                                              big("third")]})
            self.assert_error(resp, -32000, "queue_full")
            self.assertIn("max_queue_bytes", resp["error"]["message"], resp)
            s = self.stats(c)
            self.assertEqual(s["jobs"]["queued"], 1, s)
            # One still fits.
            self.submit(c, [big("second")])
            resp = c.call("submit", {"jobs": [big("third")]})
            self.assert_error(resp, -32000, "queue_full")
            s = self.stats(c)
            self.assertEqual(s["jobs"]["queued"], 2, s)
            self.assertLessEqual(s["queued_bytes"], 1 << 20, s)


def resident(stats):
    return stats["process_resident_memory_bytes"]


def asan_build():
    """True when fetchd was built with AddressSanitizer: its allocator keeps
    freed memory in quarantine and never trims, so RSS says nothing there
    (the counted heap still does)."""
    cache = os.path.join(os.environ.get("FETCHD_BUILD_DIR", ""), "CMakeCache.txt")
    try:
        with open(cache) as f:
            return any(line.strip() == "FETCHD_ASAN:BOOL=ON" for line in f)
    except OSError:
        return False


class Burst(LimitsCase):
    JOBS = 40000
    BATCH = 1000

    def burst(self, c, srv):
        """Queues JOBS jobs that never get an answer, then cancels them all."""
        ids = []
        for _ in range(self.JOBS // self.BATCH):
            ids += self.submit(c, [spec(srv.url("/never"))] * self.BATCH)
        s = self.stats(c)
        self.assertGreaterEqual(s["jobs"]["queued"], self.JOBS - 2, s)
        # Pipelined single requests, BATCH at a time (not JSON-RPC batches:
        # those are the control socket's own subject).
        for k in range(0, len(ids), self.BATCH):
            chunk = ids[k:k + self.BATCH]
            lines = [json.dumps({"jsonrpc": "2.0", "id": n, "method": "cancel",
                                 "params": {"id": jid}}) for n, jid in enumerate(chunk)]
            c.send_raw(("\n".join(lines) + "\n").encode())
            for n in range(len(chunk)):
                resp = c.response(n, timeout=WAIT_LIMIT)
                self.assertEqual(resp["result"]["state"], "cancelled", resp)
        return s

    def settled(self, c, baseline, limit_bytes):
        """Polls (bounded) until nothing is queued, running or retained, the
        counted heap is back at the baseline and RSS within limit_bytes of
        it; returns the last stats."""
        deadline = time.monotonic() + WAIT_LIMIT
        while True:
            s = self.stats(c)
            jobs = s["jobs"]
            if asan_build():
                limit_bytes = float("inf")
            if (jobs["queued"] == 0 and jobs["running"] == 0 and jobs["retained"] == 0
                    and s["control_clients"] == 1
                    and heap_without_cache(s) == heap_without_cache(baseline)
                    and resident(s) < resident(baseline) + limit_bytes):
                return s
            if time.monotonic() > deadline:
                self.fail("after the burst (baseline, now): heap %d, %d; rss %d, %d; jobs %r%s"
                          % (heap_without_cache(baseline), heap_without_cache(s), resident(baseline),
                             resident(s), jobs, self.ctx()))
            time.sleep(0.1)

    def test_memory_comes_back_after_bursts(self):
        srv = self.fault_server()
        d = self.start_fetchd(["--max-running", "2", "--retain-seconds", "1"])
        with d.client() as c:
            baseline = self.stats(c)
            for _ in range(2):
                # A client of its own, closed afterwards: the control
                # connection's grown line buffers are not the queue's.
                with d.client() as other:
                    peak = self.burst(other, srv)
                s = self.settled(c, baseline, 16 << 20)
                self.assertGreater(peak.get("queued_bytes", 0), 0, peak)
                self.assertEqual(s["queued_bytes"], 0, s)
            print("burst: baseline rss %.1f MiB, peak rss %.1f MiB, after %.1f MiB"
                  % (resident(baseline) / 2**20, resident(peak) / 2**20, resident(s) / 2**20))


if __name__ == "__main__":
    unittest.main()
