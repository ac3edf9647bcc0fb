"""https:// through the engine: certificate verification and its failure
reasons, insecure mode, pool separation, handshake timeout, truncation
without close_notify, session resumption, keep-alive reuse and client
certificates.  Certificates and servers come from tlsutil.py."""

import base64
import fcntl
import hashlib
import os
import socket
import ssl
import struct
import subprocess
import termios
import threading
import sys
import time
import unittest
import urllib.parse

from faultserver import FaultServer, pattern
from fetchtest import SLOWDOWN, HarnessTestCase, inline_bytes, sha256_hex
from tlsutil import BODY, TRUNCATED_LENGTH, TlsNginx, TlsServer, certs, server_context

WAIT = {"cmd": "wait"}
STATS = {"cmd": "stats"}
CLOSE_IDLE = {"cmd": "close_idle"}
REASONS = ("expired", "not yet valid", "hostname mismatch", "self-signed", "untrusted issuer")
NO_CLIENT_CERT_PAGE = b"No required SSL certificate was sent"


def scaled(spec):
    """The spec, with the default 10 s connect timeout (which covers the TLS
    handshake) scaled under valgrind, unless the spec sets its own: several
    handshakes at once under valgrind on a busy machine outran 10 s."""
    if SLOWDOWN > 1 and "timeouts" not in spec:
        spec = dict(spec, timeouts={"connect": 10.0 * SLOWDOWN})
    return spec


def sleep(ms):
    """A harness sleep, longer under valgrind where everything is slower."""
    return {"cmd": "sleep", "ms": ms * SLOWDOWN}


class TlsTestCase(HarnessTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.certs = certs()

    def run_harness(self, script, options=(), deadline_ms=60000):
        """Every job spec of the script gets the scaled connect timeout."""
        script = [item if not isinstance(item, dict) or "cmd" in item else scaled(item)
                  for item in script]
        return super().run_harness(script, options, deadline_ms)

    def assert_tls_clean(self, events, rc):
        """assert_clean, and the TLS object counts exist (so that their zero
        after teardown is really checked)."""
        self.assert_clean(events, rc)
        objects = self.final(events)["stats"]["objects"]
        for name in ("tls_context", "tls_session"):
            self.assertIn(name, objects, "no objects.%s in the final stats%s"
                          % (name, self.context()))

    def assert_verify_failed(self, job, reason):
        self.assert_failed(job, "tls_verify")
        message = job["error"]["message"].lower()
        found = [word for word in REASONS if word in message]
        self.assertEqual(found, [reason], "reason words in %r%s" % (message, self.context()))

    def fetch_one(self, spec, options=()):
        events, rc = self.run_harness([spec], options)
        self.assert_tls_clean(events, rc)
        return events, self.job(events, 0)

    def final_stats(self, events):
        return self.final(events)["stats"]


class NginxTls(TlsTestCase):
    """Against one TLS nginx for the whole class."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.nginx = TlsNginx(cls.certs).start()
        cls.addClassCleanup(cls.nginx.stop)

    def spec(self, path, host="localhost", **extra):
        job = {"url": self.nginx.url(path, host), "sha256": True, "ca_file": self.certs.ca}
        job.update(extra)
        return job

    def assert_body(self, job, path):
        self.assert_done(job, 200)
        self.assertEqual(job.get("sha256"), self.nginx.sha256(path), job)
        self.assertEqual(job.get("bytes"), len(self.nginx.files[path]), job)

    def test_valid_chain_job_ca_file(self):
        events, rc = self.run_harness([self.spec("/small.txt"), WAIT, self.spec("/1m.bin")])
        self.assert_tls_clean(events, rc)
        self.assert_body(self.job(events, 0), "/small.txt")
        self.assert_body(self.job(events, 1), "/1m.bin")
        stats = self.final_stats(events)
        self.assertEqual(stats["tls_handshakes_total"], 1, stats)
        self.assertEqual(stats["connections_opened_total"], 1, stats)

    def test_valid_chain_daemon_ca_file(self):
        spec = {"url": self.nginx.url("/1k.bin"), "sha256": True}
        _, job = self.fetch_one(spec, ["--ca-file", self.certs.ca])
        self.assert_body(job, "/1k.bin")

    def test_system_bundle_does_not_trust_test_ca(self):
        # Without the test CA (system bundle only) the same server is refused.
        _, job = self.fetch_one({"url": self.nginx.url("/small.txt")})
        self.assert_verify_failed(job, "untrusted issuer")

    def test_ip_san(self):
        _, job = self.fetch_one(self.spec("/small.txt", host="127.0.0.1"))
        self.assert_body(job, "/small.txt")

    def test_insecure_and_verified_do_not_share_a_pool(self):
        # Only `insecure` differs between the jobs: the CA comes from the
        # daemon, so a pool keyed on the job's ca_file cannot hide a bug.
        insecure = {"url": self.nginx.url("/small.txt"), "insecure": True}
        verified = {"url": self.nginx.url("/small.txt"), "sha256": True}
        events, rc = self.run_harness([insecure, WAIT, verified, WAIT, verified, WAIT],
                                      ["--ca-file", self.certs.ca])
        self.assert_tls_clean(events, rc)
        for index in (0, 1, 2):
            self.assert_done(self.job(events, index), 200)
        stats = self.final_stats(events)
        # The second verified job reuses the first verified connection, never
        # the insecure one: two connections, one reuse.
        self.assertEqual(stats["connections_opened_total"], 2, stats)
        self.assertEqual(stats["connection_reuses_total"], 1, stats)

    def test_other_ca_file_does_not_reuse_connection(self):
        # A job trusting only the other CA must not ride on a connection
        # that was verified against the test CA.
        events, rc = self.run_harness(
            [self.spec("/small.txt"), WAIT, self.spec("/small.txt", ca_file=self.certs.other_ca)])
        self.assert_tls_clean(events, rc)
        self.assert_body(self.job(events, 0), "/small.txt")
        self.assert_verify_failed(self.job(events, 1), "untrusted issuer")

    def test_session_resumption(self):
        events, rc = self.run_harness(
            [self.spec("/small.txt"), WAIT, CLOSE_IDLE, self.spec("/small.txt"), WAIT, STATS])
        self.assert_tls_clean(events, rc)
        self.assert_body(self.job(events, 0), "/small.txt")
        self.assert_body(self.job(events, 1), "/small.txt")
        stats = self.final_stats(events)
        self.assertEqual(stats["connections_opened_total"], 2, stats)
        self.assertEqual(stats["tls_handshakes_total"], 2, stats)
        self.assertEqual(stats["tls_resumptions_total"], 1, stats)
        mid = self.stats_events(events)[-1]
        self.assertGreaterEqual(mid["objects"]["tls_session"], 1, mid)

    def test_thousand_fetches_keep_alive(self):
        fetches = 1000
        script = [self.spec("/small.txt")] * fetches + [WAIT]
        started = time.monotonic()
        events, rc = self.run_harness(script, ["--max-connections", 8], deadline_ms=120000)
        wall = time.monotonic() - started
        self.assert_tls_clean(events, rc)
        jobs = self.jobs_by_index(events)
        self.assertEqual(len(jobs), fetches)
        bad = [j for j in jobs.values()
               if j["state"] != "done" or j.get("http_status") != 200
               or j.get("sha256") != self.nginx.sha256("/small.txt")]
        self.assertEqual(bad[:3], [], "%d jobs not done right" % len(bad))
        stats = self.final_stats(events)
        opened = stats["connections_opened_total"]
        print("TLSREUSE: fetches=%d opened=%d reuses=%d handshakes=%d resumptions=%d wall_s=%.2f"
              % (fetches, opened, stats["connection_reuses_total"],
                 stats["tls_handshakes_total"], stats["tls_resumptions_total"], wall),
              file=sys.stderr)
        self.assertLessEqual(opened, 8, stats)
        self.assertLessEqual(stats["tls_handshakes_total"], opened, stats)
        self.assertEqual(stats["jobs_finished_total"]["done"], fetches, stats)

    def test_client_cert_missing(self):
        # nginx 1.22 finishes the handshake without a client certificate and
        # answers 400 with this page (checked with curl, TLS 1.2 and 1.3).
        spec = {"url": self.nginx.client_url("/small.txt"), "ca_file": self.certs.ca,
                "output": "inline"}
        _, job = self.fetch_one(spec)
        self.assert_done(job, 400)
        self.assertIn(NO_CLIENT_CERT_PAGE, inline_bytes(job), job)

    def test_client_cert_per_job(self):
        spec = {"url": self.nginx.client_url("/small.txt"), "ca_file": self.certs.ca,
                "sha256": True, "client_cert": self.certs.client.cert,
                "client_key": self.certs.client.key}
        _, job = self.fetch_one(spec)
        self.assert_body(job, "/small.txt")

    def test_client_cert_daemon(self):
        spec = {"url": self.nginx.client_url("/small.txt"), "sha256": True}
        options = ["--ca-file", self.certs.ca, "--client-cert", self.certs.client.cert,
                   "--client-key", self.certs.client.key]
        _, job = self.fetch_one(spec, options)
        self.assert_body(job, "/small.txt")

    def test_client_key_not_matching_the_cert_is_refused(self):
        # mbedTLS does not check the pair itself; fetchd must, at submission.
        spec = {"url": self.nginx.client_url("/small.txt"), "ca_file": self.certs.ca,
                "client_cert": self.certs.client.cert, "client_key": self.certs.valid.key}
        events, rc = self.run_harness([spec])
        self.assert_clean(events, rc)
        self.assert_rejected(events, 0)
        message = self.rejected_by_index(events)[0]["error"]["message"]
        self.assertIn("does not go with", message)

    def test_client_cert_connection_not_reused_without_cert(self):
        # A job without a client certificate must not reuse a connection
        # that another job authenticated with one.
        with_cert = {"url": self.nginx.client_url("/small.txt"), "ca_file": self.certs.ca,
                     "client_cert": self.certs.client.cert, "client_key": self.certs.client.key}
        without = {"url": self.nginx.client_url("/small.txt"), "ca_file": self.certs.ca}
        events, rc = self.run_harness([with_cert, WAIT, without, WAIT])
        self.assert_tls_clean(events, rc)
        self.assert_done(self.job(events, 0), 200)
        self.assert_done(self.job(events, 1), 400)
        self.assertEqual(self.final_stats(events)["connections_opened_total"], 2)

    def test_redirect_from_http_to_https(self):
        # The redirected request uses the job's TLS settings.
        target = self.nginx.url("/small.txt")
        with FaultServer() as plain:
            url = plain.url("/redir?to=" + urllib.parse.quote(target, safe=""))
            _, job = self.fetch_one({"url": url, "ca_file": self.certs.ca, "sha256": True})
        self.assert_body(job, "/small.txt")
        self.assertEqual(job["effective_url"], target, job)
        self.assertEqual(job["redirects"], 1, job)

    def test_plain_http_alongside(self):
        with FaultServer() as plain:
            events, rc = self.run_harness(
                [self.spec("/1k.bin"), {"url": plain.url("/cl?size=5000"), "sha256": True},
                 WAIT])
        self.assert_tls_clean(events, rc)
        self.assert_body(self.job(events, 0), "/1k.bin")
        job = self.job(events, 1)
        self.assert_done(job, 200)
        self.assertEqual(job.get("sha256"), sha256_hex(pattern(5000)), job)
        stats = self.final_stats(events)
        self.assertEqual(stats["connections_opened_total"], 2, stats)
        self.assertEqual(stats["tls_handshakes_total"], 1, stats)


class VerifyFailures(TlsTestCase):
    """Python ssl servers with bad certificates; the job trusts the test CA."""

    def fetch_from(self, pair, host="localhost", options=(), **extra):
        with TlsServer(pair) as srv:
            spec = {"url": srv.url("/", host), "ca_file": self.certs.ca}
            spec.update(extra)
            _, job = self.fetch_one(spec, options)
        return job

    def test_expired(self):
        self.assert_verify_failed(self.fetch_from(self.certs.expired), "expired")

    def test_not_yet_valid(self):
        self.assert_verify_failed(self.fetch_from(self.certs.future), "not yet valid")

    def test_wrong_host(self):
        # Regression test: mbedTLS skips the name check without
        # mbedtls_ssl_set_hostname, and this cert is otherwise fine.
        job = self.fetch_from(self.certs.wrong_host)
        self.assert_verify_failed(job, "hostname mismatch")

    def test_wrong_host_daemon_ca_file(self):
        with TlsServer(self.certs.wrong_host) as srv:
            _, job = self.fetch_one({"url": srv.url("/")}, ["--ca-file", self.certs.ca])
        self.assert_verify_failed(job, "hostname mismatch")

    def test_wrong_host_ip_literal(self):
        # The cert has no IP SAN, so 127.0.0.1 does not match it.
        job = self.fetch_from(self.certs.wrong_host, host="127.0.0.1")
        self.assert_verify_failed(job, "hostname mismatch")

    def test_job_ca_file_replaces_daemon_ca_file(self):
        # The job's bundle replaces the daemon's; it does not add to it.
        with TlsServer(self.certs.valid) as srv:
            _, refused = self.fetch_one({"url": srv.url("/"), "ca_file": self.certs.other_ca},
                                        ["--ca-file", self.certs.ca])
            _, accepted = self.fetch_one({"url": srv.url("/"), "ca_file": self.certs.ca},
                                         ["--ca-file", self.certs.other_ca])
        self.assert_verify_failed(refused, "untrusted issuer")
        self.assert_done(accepted, 200)

    def test_self_signed(self):
        self.assert_verify_failed(self.fetch_from(self.certs.self_signed), "self-signed")

    def missing_ca_message(self, spec, options=()):
        events, rc = self.run_harness([spec, WAIT], options)
        self.assert_clean(events, rc)
        self.assert_rejected(events, 0)
        message = self.rejected_by_index(events)[0]["error"]["message"]
        self.assertIn("cannot load CA certificates from /nonexistent/ca.pem", message)
        return message

    def test_missing_job_ca_file_names_the_job(self):
        # The message says where the path came from: here the job's spec.
        message = self.missing_ca_message({"url": "https://localhost:1/",
                                           "ca_file": "/nonexistent/ca.pem"})
        self.assertIn("(the job's ca_file)", message)

    def test_missing_daemon_ca_file_names_the_option(self):
        # Not the job's ca_file, which this job never set: the daemon's.
        message = self.missing_ca_message({"url": "https://localhost:1/"},
                                          ["--ca-file", "/nonexistent/ca.pem"])
        self.assertIn("(the daemon's --ca-file or config ca_file)", message)
        self.assertNotIn("job", message)

    def test_untrusted_ca(self):
        self.assert_verify_failed(self.fetch_from(self.certs.untrusted), "untrusted issuer")

    def test_insecure_self_signed(self):
        with TlsServer(self.certs.self_signed) as srv:
            events, job = self.fetch_one({"url": srv.url("/"), "insecure": True,
                                          "output": "inline"})
        self.assert_done(job, 200)
        self.assertEqual(inline_bytes(job), BODY)
        stats = self.final_stats(events)
        self.assertEqual(stats["tls_handshakes_total"], 1, stats)
        self.assertEqual(stats["tls_resumptions_total"], 0, stats)


class PythonServerHandshakes(TlsTestCase):
    """What the server sees of the engine's handshakes (valid cert)."""

    def run_two_with_close_idle(self, srv, **extra):
        spec = {"url": srv.url("/"), "ca_file": self.certs.ca}
        spec.update(extra)
        events, rc = self.run_harness([spec, WAIT, CLOSE_IDLE, spec, WAIT])
        self.assert_tls_clean(events, rc)
        self.assert_done(self.job(events, 0), 200)
        self.assert_done(self.job(events, 1), 200)
        self.assertTrue(srv.wait_closed(), "server connections still open")
        return self.final_stats(events)

    def test_sni_alpn_version_and_close_notify(self):
        with TlsServer(self.certs.valid) as srv:
            events, job = self.fetch_one({"url": srv.url("/"), "ca_file": self.certs.ca,
                                          "output": "inline"})
            self.assertTrue(srv.wait_closed(), "server connection still open")
            conns = srv.connections
        self.assert_done(job, 200)
        self.assertEqual(inline_bytes(job), BODY)
        self.assertEqual(len(conns), 1, conns)
        self.assertEqual(conns[0]["sni"], "localhost", conns)
        self.assertEqual(conns[0]["alpn"], "http/1.1", conns)
        self.assertIn(conns[0]["version"], ("TLSv1.2", "TLSv1.3"), conns)
        # Teardown closes the idle connection with a close_notify.
        self.assertEqual(conns[0]["end"], "close_notify", conns)

    def test_no_sni_for_ip_literal(self):
        with TlsServer(self.certs.valid) as srv:
            _, job = self.fetch_one({"url": srv.url("/", "127.0.0.1"), "ca_file": self.certs.ca})
            self.assertTrue(srv.wait_closed(), "server connection still open")
            conns = srv.connections
        self.assert_done(job, 200)
        self.assertEqual([c["sni"] for c in conns], [None], conns)

    def test_resumption_seen_by_server(self):
        with TlsServer(self.certs.valid) as srv:
            stats = self.run_two_with_close_idle(srv)
            conns = srv.connections
        self.assertEqual([c["reused"] for c in conns], [False, True], conns)
        self.assertEqual(stats["tls_handshakes_total"], 2, stats)
        self.assertEqual(stats["tls_resumptions_total"], 1, stats)

    def test_insecure_resumption(self):
        with TlsServer(self.certs.self_signed) as srv:
            stats = self.run_two_with_close_idle(srv, insecure=True)
            conns = srv.connections
        self.assertEqual([c["reused"] for c in conns], [False, True], conns)
        self.assertEqual(stats["tls_handshakes_total"], 2, stats)
        self.assertEqual(stats["tls_resumptions_total"], 1, stats)

    def test_large_request_body(self):
        # Several TLS records each way: a 1 MiB POST body, echoed as SHA-256.
        body = pattern(1024 * 1024)
        with TlsServer(self.certs.valid) as srv:
            _, job = self.fetch_one({"url": srv.url("/echo-sha256"), "ca_file": self.certs.ca,
                                     "method": "POST", "body_base64":
                                     base64.b64encode(body).decode(), "output": "inline"})
        self.assert_done(job, 200)
        self.assertEqual(inline_bytes(job).decode(), sha256_hex(body))

    def test_rejected_session_falls_back_to_full_handshake(self):
        # A new server context per connection: the first connection's ticket
        # and session ID mean nothing to the second.
        with TlsServer(self.certs.valid, fresh_context=True) as srv:
            stats = self.run_two_with_close_idle(srv)
            conns = srv.connections
        self.assertEqual([c["reused"] for c in conns], [False, False], conns)
        self.assertEqual(stats["tls_handshakes_total"], 2, stats)
        self.assertEqual(stats["tls_resumptions_total"], 0, stats)


class BrokenServers(TlsTestCase):
    def test_idle_connection_closed_by_server_close_notify(self):
        with TlsServer(self.certs.valid, idle_close_ms=100) as srv:
            spec = {"url": srv.url("/"), "ca_file": self.certs.ca}
            events, rc = self.run_harness([spec, WAIT, sleep(500), spec, WAIT])
            self.assertTrue(srv.wait_closed(), "server connections still open")
            conns = srv.connections
        self.assert_tls_clean(events, rc)
        self.assert_done(self.job(events, 0), 200)
        self.assert_done(self.job(events, 1), 200)
        self.assertEqual(conns[0]["end"], "server_close_notify", conns)
        stats = self.final_stats(events)
        self.assertEqual(stats["connections_opened_total"], 2, stats)
        self.assertEqual(stats["connections_closed_total"]["peer_closed"], 1, stats)

    def test_cancel_during_handshake(self):
        with TlsServer(self.certs.valid, "stall") as srv:
            events, rc = self.run_harness(
                [{"url": srv.url("/"), "ca_file": self.certs.ca, "timeouts": {"connect": 10}},
                 sleep(300), STATS, {"cmd": "cancel", "index": 0}, WAIT])
        self.assert_tls_clean(events, rc)
        # The cancel hit the handshake, not the TCP connect.
        mid = self.stats_events(events)[0]
        self.assertEqual(mid["objects"]["tls_context"], 1, mid)
        job = self.job(events, 0)
        self.assertEqual(job["state"], "cancelled", job)

    def test_parallel_verify_failures(self):
        with TlsServer(self.certs.expired) as srv:
            spec = {"url": srv.url("/"), "ca_file": self.certs.ca}
            events, rc = self.run_harness([spec] * 20 + [WAIT], ["--max-connections", 8])
        self.assert_tls_clean(events, rc)
        for index in range(20):
            self.assert_verify_failed(self.job(events, index), "expired")

    def test_client_cert_required_and_missing(self):
        # Unlike nginx, OpenSSL with CERT_REQUIRED fails the handshake.
        with TlsServer(self.certs.valid, client_ca=self.certs.ca) as srv:
            _, job = self.fetch_one({"url": srv.url("/"), "ca_file": self.certs.ca})
        self.assert_failed(job, "tls_handshake")

    def test_client_cert_required_and_presented(self):
        with TlsServer(self.certs.valid, client_ca=self.certs.ca) as srv:
            _, job = self.fetch_one({"url": srv.url("/"), "ca_file": self.certs.ca,
                                     "client_cert": self.certs.client.cert,
                                     "client_key": self.certs.client.key})
        self.assert_done(job, 200)

    def test_protocol_version_too_low(self):
        with TlsServer(self.certs.valid, max_version=ssl.TLSVersion.TLSv1_1) as srv:
            _, job = self.fetch_one({"url": srv.url("/"), "ca_file": self.certs.ca})
            handshakes = srv.handshakes
        self.assertEqual(handshakes, 0)
        self.assert_failed(job, "tls_handshake")

    def test_handshake_stall_times_out(self):
        # An IP literal: the connect timeout also covers the name lookup, and
        # resolving "localhost" took 0.9 s under valgrind on a busy machine,
        # so a 0.5 s timeout ran out before the TCP connect (accepted was 0).
        # The timeout scales with valgrind's slowdown for the same reason.
        with TlsServer(self.certs.valid, "stall") as srv:
            _, job = self.fetch_one({"url": srv.url("/", "127.0.0.1"), "ca_file": self.certs.ca,
                                     "timeouts": {"connect": 1.0 * SLOWDOWN}})
            # The kernel completed the TCP handshake before fetchd gave up;
            # the server's accept thread may count it only later.
            srv.wait_until(lambda s: s.accepted >= 1, 10.0 * SLOWDOWN)
            accepted = srv.accepted
        self.assertEqual(accepted, 1, "the TCP connection was not accepted")
        self.assert_failed(job, "tls_handshake")
        self.assertIn("timed out", job["error"]["message"], job)

    def test_truncated_without_close_notify(self):
        with TlsServer(self.certs.valid, "truncate") as srv:
            _, job = self.fetch_one({"url": srv.url("/"), "ca_file": self.certs.ca})
            requests = srv.requests
        self.assertEqual(requests, 1)
        self.assert_failed(job, "truncated")
        self.assertLess(job.get("bytes", 0), TRUNCATED_LENGTH, job)

    def test_truncated_with_close_notify(self):
        # A clean TLS close does not make an incomplete body complete.
        with TlsServer(self.certs.valid, "truncate-notify") as srv:
            _, job = self.fetch_one({"url": srv.url("/"), "ca_file": self.certs.ca})
        self.assert_failed(job, "truncated")


class LoggingTlsNginx(TlsNginx):
    """TlsNginx whose main port logs, per request, what the handshake
    negotiated (`negotiated()`), with `extra` directives in its server block
    (`ssl_ecdh_curve`, `ssl_ciphers`, a second certificate...)."""

    LOG_FORMAT = "log_format negotiated '$ssl_protocol $ssl_cipher $ssl_curve $ssl_session_reused';"

    def __init__(self, cert_set, extra=""):
        super().__init__(cert_set)
        self.extra = extra

    def _config(self):
        log = "access_log %s/negotiated.log negotiated;" % self.prefix
        return self._http_prologue() + """    %(format)s
    %(main)s
}
""" % {"format": self.LOG_FORMAT, "main": self._server_block(self.port, log + self.extra)}

    def negotiated(self):
        """One (protocol, cipher, curve, reused) tuple per request so far."""
        with open(os.path.join(self.prefix, "negotiated.log")) as f:
            return [tuple(line.split()) for line in f if line.strip()]


def rsa_leaf(cert_set, directory):
    """An RSA-2048 leaf for localhost signed by the test CA, and ffdhe2048
    parameters: what a DHE-RSA-only server needs (there is no DHE-ECDSA)."""
    key = os.path.join(directory, "rsa.key")
    csr = os.path.join(directory, "rsa.csr")
    cert = os.path.join(directory, "rsa.pem")
    ext = os.path.join(directory, "rsa.ext")
    dh = os.path.join(directory, "dh.pem")
    with open(ext, "w") as f:
        f.write("subjectAltName = DNS:localhost, IP:127.0.0.1\n"
                "extendedKeyUsage = serverAuth\n")
    for args in (["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                  "-out", key],
                 ["req", "-new", "-key", key, "-subj", "/CN=localhost", "-out", csr],
                 ["x509", "-req", "-in", csr, "-CA", cert_set.ca, "-CAkey", cert_set.ca_key,
                  "-CAcreateserial", "-days", "30", "-sha256", "-extfile", ext, "-out", cert],
                 ["genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", "group:ffdhe2048",
                  "-out", dh]):
        subprocess.run(["openssl"] + args, check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return cert, key, dh


class Negotiation(TlsTestCase):
    """What fetchd offers, as the server saw it: X25519 against a default
    nginx (mbedTLS's own order gave secp521r1, 2.8 times the key exchange's
    cost) with ChaCha20-Poly1305 (mbedTLS's fastest bulk cipher), and
    servers that accept only what fetchd offers last still connect."""

    def fetch_from(self, extra="", jobs=1, reconnect=False):
        with LoggingTlsNginx(self.certs, extra) as nginx:
            spec = {"url": nginx.url("/1k.bin"), "sha256": True, "ca_file": self.certs.ca}
            script = []
            for _ in range(jobs):
                script += [spec, WAIT] + ([CLOSE_IDLE] if reconnect else [])
            events, rc = self.run_harness(script + [STATS])
            self.assert_tls_clean(events, rc)
            for index in range(jobs):
                self.assert_done(self.job(events, index), 200)
                self.assertEqual(self.job(events, index).get("sha256"), nginx.sha256("/1k.bin"))
            return nginx.negotiated(), self.final_stats(events)

    def test_default_server_gets_x25519_and_chacha20(self):
        seen, _ = self.fetch_from()
        self.assertEqual(seen, [("TLSv1.2", "ECDHE-ECDSA-CHACHA20-POLY1305", "X25519", ".")])

    def test_every_reconnect_resumes(self):
        seen, stats = self.fetch_from(jobs=5, reconnect=True)
        self.assertEqual([entry[3] for entry in seen], [".", "r", "r", "r", "r"], seen)
        self.assertEqual(stats["connections_opened_total"], 5, stats)
        self.assertEqual(stats["tls_handshakes_total"], 5, stats)
        self.assertEqual(stats["tls_resumptions_total"], 4, stats)

    def test_server_with_only_secp384r1(self):
        seen, _ = self.fetch_from("ssl_ecdh_curve secp384r1;")
        self.assertEqual(seen, [("TLSv1.2", "ECDHE-ECDSA-CHACHA20-POLY1305", "secp384r1", ".")])

    def test_server_with_only_dhe(self):
        directory = self.make_tmpdir("tls-dhe-")
        cert, key, dh = rsa_leaf(self.certs, directory)
        seen, _ = self.fetch_from("ssl_certificate %s; ssl_certificate_key %s; ssl_dhparam %s; "
                                  "ssl_ciphers DHE-RSA-AES128-GCM-SHA256;" % (cert, key, dh))
        self.assertEqual([entry[:2] for entry in seen], [("TLSv1.2", "DHE-RSA-AES128-GCM-SHA256")])


class FirstHelloServer(TlsServer):
    """TlsServer whose first connection to send anything (a ClientHello) is
    treated by `first`: "garble" answers it with plain-text bytes and
    closes, "stall" never answers; every other connection is served as
    usual. A connection waiting for another's handshake sends nothing, so
    with fetchd the first ClientHello is the leader's. `hellos` counts the
    connections that sent one."""

    HELLO_WAIT = 30.0

    def __init__(self, pair, first):
        super().__init__(pair)
        self.first = first
        self.hellos = 0

    def _serve(self, sock):
        try:
            sock.settimeout(self.HELLO_WAIT * SLOWDOWN)
            data = sock.recv(1, socket.MSG_PEEK)
        except OSError:
            data = b""
        with self._lock:
            self.hellos += 1 if data else 0
            mine = bool(data) and self.hellos == 1
            self._changed.notify_all()
        if not mine:
            super()._serve(sock)
            return
        try:
            if self.first == "garble":
                sock.recv(16384)
                sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(16384):  # until fetchd closes (bounded by the timeout)
                    pass
            else:
                self.stopping.wait(60)
        except OSError:
            pass
        finally:
            self._track(sock, False)
            sock.close()


class OneFullHandshakePerOrigin(TlsTestCase):
    """Connections opened at once to an origin without a cached session: one
    leads a full handshake, the others wait for it (after their TCP connect)
    and resume its session; when the leader fails or goes, the next leads."""

    JOBS = 16

    def test_sixteen_at_once_one_full_handshake(self):
        with LoggingTlsNginx(self.certs) as nginx:
            spec = {"url": nginx.url("/1k.bin"), "sha256": True, "ca_file": self.certs.ca}
            events, rc = self.run_harness([spec] * self.JOBS + [WAIT, STATS],
                                          ["--max-per-host", self.JOBS,
                                           "--max-connections", self.JOBS])
            seen = nginx.negotiated()
        self.assert_tls_clean(events, rc)
        for index in range(self.JOBS):
            self.assert_done(self.job(events, index), 200)
        stats = self.final_stats(events)
        self.assertEqual(stats["connections_opened_total"], self.JOBS, stats)
        self.assertEqual(sorted(entry[3] for entry in seen), ["."] + ["r"] * (self.JOBS - 1), seen)
        self.assertEqual(stats["tls_handshakes_total"], self.JOBS, stats)
        self.assertEqual(stats["tls_resumptions_total"], self.JOBS - 1, stats)

    def test_leader_fails_next_leads(self):
        jobs = 4
        with FirstHelloServer(self.certs.valid, "garble") as srv:
            spec = {"url": srv.url("/"), "ca_file": self.certs.ca, "retries": 0}
            events, rc = self.run_harness([spec] * jobs + [WAIT])
            srv.wait_until(lambda s: s.handshakes >= jobs - 1, 10.0 * SLOWDOWN)
            conns = srv.connections
            hellos = srv.hellos
        self.assert_tls_clean(events, rc)
        states = sorted((self.job(events, i)["state"], (self.job(events, i).get("error") or {})
                         .get("code")) for i in range(jobs))
        self.assertEqual(states, [("done", None)] * (jobs - 1) + [("failed", "tls_handshake")],
                         "%r%s" % (states, self.context()))
        self.assertEqual(hellos, jobs, conns)
        # The second leader's handshake was full; the others resumed it.
        self.assertEqual(sorted(c["reused"] for c in conns), [False] + [True] * (jobs - 2), conns)

    def test_leader_cancelled_mid_handshake_next_leads(self):
        with FirstHelloServer(self.certs.valid, "stall") as srv:
            spec = {"url": srv.url("/"), "ca_file": self.certs.ca, "retries": 0,
                    "timeouts": {"connect": 30 * SLOWDOWN}}
            events, rc = self.run_harness(
                [spec, sleep(300), spec, spec, spec, sleep(300), STATS,
                 {"cmd": "cancel", "index": 0}, WAIT])
            srv.wait_until(lambda s: s.handshakes >= 3, 10.0 * SLOWDOWN)
            conns = srv.connections
        self.assert_tls_clean(events, rc)
        # While the leader stalled, four TLS contexts lived, one ClientHello
        # had gone out.
        mid = self.stats_events(events)[0]
        self.assertEqual(mid["objects"]["tls_context"], 4, mid)
        self.assertEqual(self.job(events, 0)["state"], "cancelled")
        for index in (1, 2, 3):
            self.assert_done(self.job(events, index), 200)
        self.assertEqual(sorted(c["reused"] for c in conns), [False, True, True], conns)

    def test_waiter_times_out_while_leader_stalls(self):
        # The connect timeout covers the wait; when it ends the waiter leaves
        # the queue (ASan and valgrind_tls see no dangling entry when the
        # leader goes later), and it never sent a ClientHello.
        with FirstHelloServer(self.certs.valid, "stall") as srv:
            leader = {"url": srv.url("/", "127.0.0.1"), "ca_file": self.certs.ca,
                      "retries": 0, "timeouts": {"connect": 60 * SLOWDOWN}}
            waiter = dict(leader, timeouts={"connect": 1.0 * SLOWDOWN})
            events, rc = self.run_harness(
                [leader, sleep(300), waiter, {"cmd": "wait", "index": 1}, STATS,
                 {"cmd": "cancel", "index": 0}, WAIT])
            hellos = srv.hellos
        self.assert_tls_clean(events, rc)
        job = self.job(events, 1)
        self.assert_failed(job, "tls_handshake")
        self.assertIn("timed out", job["error"]["message"], job)
        # The waiter's connection closed; the leader's still connects.
        mid = self.stats_events(events)[0]
        self.assertEqual(mid["connections"]["connecting"], 1, mid)
        self.assertEqual(mid["connections_closed_total"]["connect_failed"], 1, mid)
        self.assertEqual(self.job(events, 0)["state"], "cancelled")
        self.assertEqual(hellos, 1)


class StalledReader:
    """A one-connection TLS server on 127.0.0.1 that, once the request head
    is in, stops reading until its receive queue stops growing (a full queue
    behind a small receive buffer: the client's socket refused more), then
    reads the Content-Length body and answers with its SHA-256 in hex.

    With a body larger than the kernel can hold on both sides (the client's
    send buffer is at most net.ipv4.tcp_wmem's 4 MiB), the client's records
    must partly wait in its own queue: records tried at once and records
    queued behind a partial write must still arrive whole and in order."""

    RCVBUF = 32 * 1024
    POLL = 0.02
    STABLE_POLLS = 5

    def __init__(self, pair):
        self.ctx = server_context(pair)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.RCVBUF)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sock.settimeout(30.0 * SLOWDOWN)
        self.port = self.sock.getsockname()[1]
        self.queued_max = 0
        self.error = None
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def url(self, path):
        return "https://localhost:%d%s" % (self.port, path)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.sock.close()
        self.thread.join(60.0 * SLOWDOWN)
        return False

    def _queued(self, sock):
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]

    def _wait_full(self, sock):
        """Until the receive queue held the same bytes STABLE_POLLS times in
        a row (bounded: the client may be slow under valgrind)."""
        last, stable = -1, 0
        for _ in range(int(30.0 * SLOWDOWN / self.POLL)):
            now = self._queued(sock)
            self.queued_max = max(self.queued_max, now)
            stable = stable + 1 if now == last and now > 0 else 0
            if stable >= self.STABLE_POLLS:
                return
            last = now
            threading.Event().wait(self.POLL)

    def _serve(self):
        try:
            raw, _ = self.sock.accept()
            raw.settimeout(30.0 * SLOWDOWN)
            with self.ctx.wrap_socket(raw, server_side=True) as tls:
                buf = b""
                while b"\r\n\r\n" not in buf:
                    chunk = tls.recv(65536)
                    if not chunk:
                        raise EOFError("no request head")
                    buf += chunk
                head, body = buf.split(b"\r\n\r\n", 1)
                length = int([line.split(b":", 1)[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")][0])
                self._wait_full(tls)
                digest = hashlib.sha256(body)
                received = len(body)
                while received < length:
                    chunk = tls.recv(min(65536, length - received))
                    if not chunk:
                        raise EOFError("body cut at %d of %d" % (received, length))
                    digest.update(chunk)
                    received += len(chunk)
                answer = digest.hexdigest().encode()
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close"
                            b"\r\n\r\n%s" % (len(answer), answer))
                tls.unwrap()
        except (OSError, EOFError, ValueError, IndexError) as exc:
            self.error = exc


class RecordWrites(TlsTestCase):
    """TLS records are written at once when the socket takes them, and
    queued (copied) when it does not; either way in order."""

    def test_body_larger_than_the_socket_buffers_arrives_in_order(self):
        body = pattern(16 * 1024 * 1024)
        with StalledReader(self.certs.valid) as srv:
            _, job = self.fetch_one({"url": srv.url("/echo-sha256"), "ca_file": self.certs.ca,
                                     "method": "POST", "output": "inline",
                                     "body_base64": base64.b64encode(body).decode()})
        self.assertIsNone(srv.error, srv.error)
        self.assertGreater(srv.queued_max, 0, "the server never saw its queue fill")
        self.assert_done(job, 200)
        self.assertEqual(inline_bytes(job).decode(), sha256_hex(body))


if __name__ == "__main__":
    unittest.main()
