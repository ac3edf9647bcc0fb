#!/usr/bin/env python3
"""Measures what TLS costs fetchd, with the engine harness against nginx on
loopback: the resident memory of one idle pooled TLS connection (RSS with
N idle TLS connections minus RSS with N idle plain ones, over N), the
time of a full handshake against a resumed one (median duration of a
one-request job whose new connection did a full or a resumed handshake;
the jobs differ in nothing else), and the loop thread's CPU per full
handshake: N one-request jobs, each on a new connection with the same
configuration, against an nginx that never resumes, minus the same against
one that always does, over N (the harness's CPU time from getrusage; the
harness is one loop thread, and 127.0.0.1 needs no DNS thread). That is
measured twice: with the fixture's P-256 ECDSA certificate, and with an
RSA-2048 one (what most public servers present). The idle-memory run also
says how many of its N connections, opened at once to a fresh origin, did
a full handshake (one: the others wait for its session and resume it).

    python3 tests/bench/tls_cost.py [--connections 1000] [--handshakes 50]

It is a measurement, not a test: it prints numbers and asserts nothing.
"""

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from fetchtest import Nginx, run_harness  # noqa: E402
from tlsutil import TlsNginx, certs  # noqa: E402
from test_tls import rsa_leaf  # noqa: E402


class FullHandshakeNginx(TlsNginx):
    """The TLS fixture without session cache or tickets (every handshake is
    a full one), optionally with another certificate."""

    def __init__(self, cert_set, pair=None):
        super().__init__(cert_set)
        self.pair = pair

    def _server_block(self, port, extra):
        block = super()._server_block(port, extra)
        block = block.replace("ssl_session_cache shared:SSL:1m;", "ssl_session_cache off;")
        block = block.replace("ssl_session_tickets on;", "ssl_session_tickets off;")
        if self.pair is not None:
            block = block.replace(self.certs.valid.cert, self.pair[0])
            block = block.replace(self.certs.valid.key, self.pair[1])
        return block


def harness_cpu(script):
    """Runs the harness on script; returns (events, its CPU seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    events, rc, err = run_harness(script, deadline_ms=300000)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        sys.exit("harness failed (%d): %s" % (rc, err[-2000:]))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return events, cpu


def handshake_cpu_ms(full_url, resumed_url, ca, n):
    """Loop-thread CPU of a full handshake: n reconnects that must do a full
    one, minus n that resume, over n. Returns (ms, resumptions seen)."""
    def script(url):
        job = {"url": url, "ca_file": ca}
        return [job, {"cmd": "wait"}, {"cmd": "close_idle"}] * n + [{"cmd": "stats"}]

    full_events, full = harness_cpu(script(full_url))
    resumed_events, resumed = harness_cpu(script(resumed_url))
    counted = (stats_of(full_events)[-1]["tls_resumptions_total"],
               stats_of(resumed_events)[-1]["tls_resumptions_total"])
    return (full - resumed) * 1000 / n, counted


def stats_of(events):
    return [e["stats"] for e in events if e.get("event") == "stats"]


def idle_rss(url, n, extra):
    script = [dict(url=url, **extra) for _ in range(n)] + [{"cmd": "wait"}, {"cmd": "stats"}]
    opts = ["--max-connections", str(n), "--max-per-host", str(n)]
    events, rc, err = run_harness(script, opts, deadline_ms=120000)
    if rc != 0:
        sys.exit("harness failed (%d): %s" % (rc, err[-2000:]))
    s = stats_of(events)[-1]
    return (s["process_resident_memory_bytes"], s["connections"]["idle"],
            s.get("tls_handshakes_total", 0), s.get("tls_resumptions_total", 0))


def handshake_ms(url, ca, n):
    # Full handshakes: a new session cache slot each time, because every job
    # names its own copy of the CA file (a distinct TLS configuration).
    copies = []
    for i in range(n):
        path = "%s.copy%d.pem" % (ca, i)
        with open(ca, "rb") as src, open(path, "wb") as dst:
            dst.write(src.read())
        copies.append(path)
    script = []
    for path in copies:
        script += [{"url": url, "ca_file": path}, {"cmd": "wait"}, {"cmd": "close_idle"}]
    # Resumed handshakes: the same configuration again and again.
    for _ in range(n + 1):
        script += [{"url": url, "ca_file": ca}, {"cmd": "wait"}, {"cmd": "close_idle"}]
    script.append({"cmd": "stats"})
    events, rc, err = run_harness(script, deadline_ms=120000)
    if rc != 0:
        sys.exit("harness failed (%d): %s" % (rc, err[-2000:]))
    jobs = [e["job"] for e in events if e.get("event") == "job"]
    def ms(j):
        return (j["timings"]["finished"] - j["timings"]["started"]) * 1000

    full = [ms(j) for j in jobs[:n]]
    resumed = [ms(j) for j in jobs[n + 1:]]
    s = stats_of(events)[-1]
    for p in copies:
        os.unlink(p)
    return full, resumed, s["tls_resumptions_total"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--handshakes", type=int, default=50)
    args = ap.parse_args()
    cs = certs()
    with Nginx() as plain, TlsNginx() as tls:
        n = args.connections
        rss_plain, idle_plain, _, _ = idle_rss(plain.url("/small.txt"), n, {})
        rss_tls, idle_tls, shakes, resumed = idle_rss(tls.url("/small.txt"), n,
                                                      {"ca_file": cs.ca})
        # n connections opened at once to a fresh origin: one full handshake
        # leads, the others wait for its session and resume it.
        print("HANDSHAKES_AT_ONCE: %d jobs at once to a fresh origin: %d handshakes, "
              "%d resumed" % (n, shakes, resumed))
        if idle_plain != idle_tls:
            print("note: %d plain and %d TLS connections were idle" % (idle_plain, idle_tls))
        per_conn = (rss_tls - rss_plain) / idle_tls
        print("idle connections: plain %d (RSS %.1f MiB), TLS %d (RSS %.1f MiB)"
              % (idle_plain, rss_plain / 2**20, idle_tls, rss_tls / 2**20))
        print("TLS_IDLE_CONN_BYTES: %.0f (about %.1f KiB more per idle TLS connection)"
              % (per_conn, per_conn / 1024))
        full, resumed, resumptions = handshake_ms(tls.url("/small.txt"), cs.ca,
                                                  args.handshakes)
        print("HANDSHAKE_MS: job with a full handshake median %.2f (n=%d), with a resumed "
              "one median %.2f (n=%d, %d resumptions counted)" % (statistics.median(full), len(full),
                                           statistics.median(resumed), len(resumed),
                                           resumptions))
        n = args.handshakes
        resumed_url = tls.url("/small.txt", host="127.0.0.1")
        with FullHandshakeNginx(cs) as ecdsa:
            ms, counted = handshake_cpu_ms(ecdsa.url("/small.txt", host="127.0.0.1"),
                                           resumed_url, cs.ca, n)
        print("HANDSHAKE_CPU_MS: %.2f per full handshake, P-256 ECDSA certificate "
              "(n=%d; resumptions counted: %d full run, %d resumed run)" % ((ms, n) + counted))
        work = tempfile.mkdtemp(prefix="fetchd-tls-cost-")
        try:
            cert, key, _ = rsa_leaf(cs, work)
            with FullHandshakeNginx(cs, (cert, key)) as rsa:
                ms, counted = handshake_cpu_ms(rsa.url("/small.txt", host="127.0.0.1"),
                                               resumed_url, cs.ca, n)
        finally:
            shutil.rmtree(work, True)
        print("HANDSHAKE_CPU_MS_RSA: %.2f per full handshake, RSA-2048 certificate "
              "(n=%d; resumptions counted: %d full run, %d resumed run)" % ((ms, n) + counted))


if __name__ == "__main__":
    main()
