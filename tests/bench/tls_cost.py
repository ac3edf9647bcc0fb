#!/usr/bin/env python3
"""Measures what TLS costs fetchd, with the engine harness against nginx on
loopback: the resident memory of one idle pooled TLS connection (RSS with
N idle TLS connections minus RSS with N idle plain ones, over N), and the
time of a full handshake against a resumed one (median duration of a
one-request job whose new connection did a full or a resumed handshake;
the jobs differ in nothing else).

    python3 tests/bench/tls_cost.py [--connections 1000] [--handshakes 50]

It is a measurement, not a test: it prints numbers and asserts nothing.
"""

import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from fetchtest import Nginx, run_harness  # noqa: E402
from tlsutil import TlsNginx, certs  # noqa: E402


def stats_of(events):
    return [e["stats"] for e in events if e.get("event") == "stats"]


def idle_rss(url, n, extra):
    script = [dict(url=url, **extra) for _ in range(n)] + [{"cmd": "wait"}, {"cmd": "stats"}]
    opts = ["--max-connections", str(n), "--max-per-host", str(n)]
    events, rc, err = run_harness(script, opts, deadline_ms=120000)
    if rc != 0:
        sys.exit("harness failed (%d): %s" % (rc, err[-2000:]))
    s = stats_of(events)[-1]
    return s["process_resident_memory_bytes"], s["connections"]["idle"]


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
        rss_plain, idle_plain = idle_rss(plain.url("/small.txt"), n, {})
        rss_tls, idle_tls = idle_rss(tls.url("/small.txt"), n, {"ca_file": cs.ca})
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


if __name__ == "__main__":
    main()
