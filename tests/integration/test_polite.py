"""Politeness and bandwidth (issue 13), through the real fetchd and its
control socket against a private nginx: per-host request rates and delays
(host_limits, a job's own rate and delay), the per-job and global byte rates
(limit_rate, bandwidth), the figures on /metrics and in stats, SIGHUP, and
counts back at their baseline after every case.

The accuracy checks read the daemon's own job timings (start timestamps,
total_ms), never the test's wall clock: "10 requests/s over 10 s" is the
span of the starts the daemon recorded, "1 MiB/s" is a job's bytes over its
own duration. Each has a tolerance of 10 %, as the issue asks.
"""

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import unittest
import urllib.request

from ctltest import FETCHCTL, IO_TIMEOUT, ControlTestCase, clean_env, spec
from fetchtest import SLOWDOWN, Nginx

MIB = 1024 * 1024
TOLERANCE = 0.10
WAIT_LIMIT = 60.0 * SLOWDOWN


class PoliteNginx(Nginx):
    """The shared nginx fixture with two more files: 100 KiB (just above
    one read buffer) and 10 MiB (ten seconds at 1 MiB/s)."""

    def __init__(self):
        super().__init__()
        rng = random.Random(13)
        for path, size in (("/100k.bin", 100 * 1024), ("/10m.bin", 10 * MIB)):
            self.files[path] = rng.randbytes(size)
            self._digests[path] = hashlib.sha256(self.files[path]).hexdigest()


class PoliteTestCase(ControlTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.nginx = PoliteNginx().start()
        cls.addClassCleanup(cls.nginx.stop)

    def start_fetchd(self, args=(), **kw):
        # Idle connections close within a second, so the end-of-test check
        # sees none left open; after that check, fetchd must stop cleanly.
        return super().start_fetchd(["--idle-timeout", "1"] + list(args), clean_stop=True, **kw)

    def url(self, path, host="127.0.0.1"):
        return self.nginx.url(path).replace("127.0.0.1", host, 1)

    def metrics_port(self, daemon):
        m = daemon.wait_log(r"metrics: listening on \S+ \(port (\d+)\)")
        self.assertIsNotNone(m, "no metrics port in the log" + daemon.log_tail())
        return int(m.group(1))

    def scrape(self, daemon):
        """The /metrics page as {name or name{labels}: value}."""
        url = "http://127.0.0.1:%d/metrics" % self.metrics_port(daemon)
        with urllib.request.urlopen(url, timeout=IO_TIMEOUT) as resp:
            text = resp.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def wait_all(self, client, ids):
        jobs = []
        for jid in ids:
            job = self.wait_job(client, jid, timeout=WAIT_LIMIT)
            self.assertEqual(job["state"], "done", "%r%s" % (job, self.ctx()))
            jobs.append(job)
        return jobs

    def assert_within(self, measured, expected, what):
        # The figures for the record (issue 13's closing note quotes them).
        sys.stderr.write("\n  measured %s: %.4g, expected %.4g (%+.2f %%)\n"
                         % (what, measured, expected, 100.0 * (measured - expected) / expected))
        self.assertLessEqual(abs(measured - expected) / expected, TOLERANCE,
                             "%s: measured %.4g, expected %.4g +- %d %%%s"
                             % (what, measured, expected, TOLERANCE * 100, self.ctx()))


class HostRate(PoliteTestCase):
    def test_ten_per_second_over_ten_seconds_other_host_unaffected(self):
        rules = [{"host": "127.0.0.1", "rate": 10}]
        d = self.start_fetchd(["--host-limits", json.dumps(rules)])
        c = self.connect()
        limited = self.submit(c, [spec(self.url("/small.txt")) for _ in range(101)])

        # While they wait, the waiting jobs hold no running slot and no
        # connection: at most the one job that got its token runs.
        s = self.stats(c)
        for _ in range(100):
            if s["limits"]["jobs_waiting"] > 50:
                break
            time.sleep(0.02)
            s = self.stats(c)
        self.assertGreater(s["limits"]["jobs_waiting"], 50, s)
        self.assertEqual(s["limits"]["jobs_waiting"], s["jobs"]["queued"], s)
        self.assertLessEqual(s["jobs"]["running"], 1, s)
        self.assertLessEqual(s["connections"]["active"] + s["connections"]["connecting"],
                             s["jobs"]["running"], s)
        self.assertEqual(s["objects"]["host_limit"], 1, s)
        m = self.scrape(d)
        self.assertGreater(m["fetchd_host_waiting_jobs"], 0, m)
        # The same server under another name, while the first waits: no
        # rule matches "localhost".
        free = self.submit(c, [spec(self.url("/small.txt", "localhost")) for _ in range(30)])

        jobs = self.wait_all(c, limited)
        starts = sorted(j["timings"]["started"] for j in jobs)
        span = starts[-1] - starts[0]
        self.assert_within(100 / span, 10.0, "requests/s to the limited host")
        in_window = sum(1 for t in starts if t - starts[0] < 10.0)
        self.assert_within(in_window, 100, "starts in the first 10 s")
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        self.assertGreaterEqual(min(gaps), 0.1 * (1 - TOLERANCE), "burst 1 spaces every start")

        others = self.wait_all(c, free)
        # Held at 10/s they would need 3 s; unheld they are done at once.
        self.assertLess(max(j["timings"]["queued_ms"] for j in others), 1500, others[-1])
        self.assertLess(max(j["timings"]["started"] for j in others), starts[-1] - 5, others[-1])

        s = self.stats(c)
        self.assertGreaterEqual(s["limits"]["host_waits_total"], 100, s)
        self.assertEqual(s["limits"]["jobs_waiting"], 0, s)
        m = self.scrape(d)
        self.assertEqual(m["fetchd_host_waits_total"], s["limits"]["host_waits_total"], m)
        # The host's entry is forgotten once idle: the baseline check at the
        # end (a cleanup) waits for fetchd_objects{type="host_limit"} to be 0.

    def test_job_delay_and_rate_only_slow_a_job_down(self):
        # The host allows 1000/s; the jobs ask for 0.4 s between starts.
        rules = [{"host": "*", "rate": 1000, "burst": 100}]
        self.start_fetchd(["--host-limits", json.dumps(rules)])
        c = self.connect()
        ids = self.submit(c, [spec(self.url("/small.txt"), delay=0.4) for _ in range(4)])
        ids += self.submit(c, [spec(self.url("/small.txt"), rate=2.5) for _ in range(2)])
        jobs = self.wait_all(c, ids)
        starts = sorted(j["timings"]["started"] for j in jobs)
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        self.assertGreaterEqual(min(gaps), 0.4 * (1 - TOLERANCE), gaps)
        self.assertEqual(jobs[0]["delay"], 0.4, jobs[0])
        self.assertEqual(jobs[-1]["rate"], 2.5, jobs[-1])
        bad = [spec(self.url("/"), rate=0), spec(self.url("/"), delay=-1),
               spec(self.url("/"), delay=3601), spec(self.url("/"), limit_rate="1M"),
               spec(self.url("/"), rate="fast")]
        for s in bad:
            resp = c.call("submit", {"jobs": [s]})
            err = self.assert_error(resp, -32602)
            self.assertIn(err["data"].get("field"), ("rate", "delay", "limit_rate"), err)

    def test_redirects_are_held_like_starts(self):
        """A redirect is another request to the host: at 2/s, a job that
        follows 4 redirects makes its 5 requests over at least 2 s (its own
        total_ms), not at once."""
        rules = [{"host": "127.0.0.1", "rate": 2}]
        d = self.start_fetchd(["--host-limits", json.dumps(rules)])
        c = self.connect()
        [jid] = self.submit(c, [spec(self.url("/redirect/3"), sha256=True)])
        job = self.wait_job(c, jid, timeout=WAIT_LIMIT)
        self.assertEqual(job["state"], "done", job)
        self.assertEqual(job["redirects"], 4, job)
        self.assertEqual(job["sha256"], self.nginx.sha256("/small.txt"), job)
        self.assertGreaterEqual(job["timings"]["total_ms"], 4 * 500 * (1 - TOLERANCE), job)
        s = self.stats(c)
        self.assertEqual(s["limits"]["host_waits_total"], 4, s)  # each redirect, once
        self.assertEqual(s["jobs"]["running"], 0, s)

    def test_job_rate_cannot_exceed_the_host_rule(self):
        rules = [{"host": "127.0.0.1", "rate": 4}]
        self.start_fetchd(["--host-limits", json.dumps(rules)])
        c = self.connect()
        ids = self.submit(c, [spec(self.url("/small.txt"), rate=1000) for _ in range(5)])
        jobs = self.wait_all(c, ids)
        starts = sorted(j["timings"]["started"] for j in jobs)
        self.assertGreaterEqual(starts[-1] - starts[0], 1.0 * (1 - TOLERANCE), starts)

    def test_sighup_rereads_the_limits(self):
        cfg = os.path.join(self.make_dir(), "fetchd.json")
        with open(cfg, "w") as f:
            json.dump({"host_limits": [{"host": "127.0.0.1", "rate": 0.1}]}, f)
        d = self.start_fetchd(["-c", cfg])
        c = self.connect()
        ids = self.submit(c, [spec(self.url("/small.txt")) for _ in range(3)])
        self.wait_job(c, ids[0], timeout=WAIT_LIMIT)
        s = self.stats(c)
        self.assertEqual(s["limits"]["jobs_waiting"], 2, s)  # 10 s apart
        with open(cfg, "w") as f:
            json.dump({"host_limits": [{"host": "*.example.com", "rate": 1}]}, f)
        d.proc.send_signal(signal.SIGHUP)
        # Freed by the reload, the two start at once, not 10 and 20 s later.
        jobs = self.wait_all(c, ids[1:])
        self.assertLess(max(j["timings"]["queued_ms"] for j in jobs), 8000, jobs)
        s = self.stats(c)
        self.assertEqual(s["limits"]["host_limits"][0]["host"], "*.example.com", s)
        out = subprocess.run([FETCHCTL, "-s", d.socket, "stats"], env=clean_env(),
                             stdin=subprocess.DEVNULL, capture_output=True, timeout=IO_TIMEOUT)
        self.assertEqual(out.returncode, 0, out)
        self.assertRegex(out.stdout.decode(), r"limits\.host_limits\.0\.host +\*\.example\.com")
        self.assertRegex(out.stdout.decode(), r"limits\.host_waits_total +2\n")

    def test_cancel_a_waiting_job(self):
        rules = [{"host": "127.0.0.1", "rate": 0.25}]  # 4 s apart
        self.start_fetchd(["--host-limits", json.dumps(rules)])
        c = self.connect()
        ids = self.submit(c, [spec(self.url("/small.txt")) for _ in range(3)])
        self.wait_job(c, ids[0], timeout=WAIT_LIMIT)
        for jid in ids[1:]:
            c.result("cancel", {"id": jid})
            job = self.wait_job(c, jid, timeout=WAIT_LIMIT)
            self.assertEqual(job["state"], "cancelled", job)
            self.assertEqual(job["attempts"], 0, job)
        s = self.stats(c)
        self.assertEqual(s["limits"]["jobs_waiting"], 0, s)
        self.assertEqual(s["jobs"]["queued"], 0, s)

    def test_bad_byte_rates_are_config_errors(self):
        from ctltest import FETCHD
        cfg = os.path.join(self.make_dir(), "fetchd.json")
        with open(cfg, "w") as f:
            f.write('{\n  "limit_rate": "2Q"\n}\n')
        for args, message in ((["--bandwidth", "fast"], '--bandwidth: bandwidth: "fast" is not bytes per second'),
                              (["--limit-rate", "-1K"], '"-1K" is not bytes per second'),
                              (["--max-limit-rate", "2000000G"], "must be between 0 and"),
                              (["-c", cfg], 'fetchd.json:2: limit_rate: "2Q" is not bytes per second')):
            proc = subprocess.run([FETCHD, "--metrics", "off"] + args, env=clean_env(),
                                  stdin=subprocess.DEVNULL, capture_output=True, timeout=IO_TIMEOUT)
            self.assertIn(proc.returncode, (64, 78), proc)
            self.assertIn(message, proc.stderr.decode(), proc)

    def test_bad_host_limits_is_a_config_error(self):
        cfg = os.path.join(self.make_dir(), "fetchd.json")
        with open(cfg, "w") as f:
            f.write('{\n  "max_jobs": 10,\n  "host_limits": [{"host": "a*b", "rate": 1}]\n}\n')
        from ctltest import FETCHD
        proc = subprocess.run([FETCHD, "-c", cfg, "--metrics", "off"], env=clean_env(),
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=IO_TIMEOUT)
        self.assertEqual(proc.returncode, 78, proc)
        self.assertIn("fetchd.json:3: host_limits[0].host", proc.stderr.decode(), proc)

    def make_dir(self):
        from fetchtest import remove_tree, tmpdir
        path = tmpdir("polite-")
        self.addCleanup(remove_tree, path)
        return path


class Bandwidth(PoliteTestCase):
    def test_job_limit_rate_one_mib_per_second(self):
        d = self.start_fetchd()
        c = self.connect()
        jid = self.submit(c, [spec(self.url("/10m.bin"), limit_rate=MIB, sha256=True)])[0]
        # Mid-transfer the job is paused most of the time.
        s = self.stats(c)
        for _ in range(200):
            if s["limits"]["bandwidth_paused_seconds_total"] > 1:
                break
            time.sleep(0.05)
            s = self.stats(c)
        self.assertGreater(s["limits"]["bandwidth_paused_seconds_total"], 1, s)
        job = self.wait_all(c, [jid])[0]
        self.assertEqual(job["bytes"], 10 * MIB, job)
        self.assertEqual(job["sha256"], self.nginx.sha256("/10m.bin"), job)
        self.assertEqual(job["limit_rate"], MIB, job)
        rate = job["bytes"] / (job["timings"]["total_ms"] / 1000.0)
        self.assert_within(rate, MIB, "bytes/s of a job with limit_rate 1 MiB/s")
        m = self.scrape(d)
        self.assertGreater(m["fetchd_bandwidth_paused_seconds_total"], 5, m)
        self.assertEqual(m["fetchd_bandwidth_paused_jobs"], 0, m)

    def test_global_bandwidth_shared_by_two_jobs(self):
        self.start_fetchd(["--bandwidth", "1M"])  # K, M, G: powers of 1024, as curl
        c = self.connect()
        ids = self.submit(c, [spec(self.url("/4m.bin")), spec(self.url("/4m.bin"))])
        jobs = self.wait_all(c, ids)
        first = min(j["timings"]["started"] for j in jobs)
        last = max(j["timings"]["finished"] for j in jobs)
        total = sum(j["bytes"] for j in jobs)
        self.assertEqual(total, 8 * MIB)
        self.assert_within(total / (last - first), MIB, "bytes/s of both jobs together")
        # Fairly shared: each got about half, so they end close together.
        durations = [j["timings"]["total_ms"] / 1000.0 for j in jobs]
        self.assert_within(min(durations), max(durations), "the two jobs' durations")
        s = self.stats(c)
        self.assertEqual(s["limits"]["bandwidth"], MIB, s)

    def test_max_limit_rate_caps_a_job(self):
        self.start_fetchd(["--max-limit-rate", "0.5m"])
        c = self.connect()
        # Asks for 100 MiB/s, gets 512 KiB/s: 1 MiB takes about 2 s.
        jid = self.submit(c, [spec(self.url("/1m.bin"), limit_rate=100 * MIB)])[0]
        job = self.wait_all(c, [jid])[0]
        rate = job["bytes"] / (job["timings"]["total_ms"] / 1000.0)
        self.assertLess(rate, 512 * 1024 * (1 + TOLERANCE) + 64 * 1024, job)
        self.assertEqual(self.stats(c)["limits"]["max_limit_rate"], 512 * 1024)

    def test_connection_paused_at_the_end_is_reused(self):
        # Regression: the last read of a limited body leaves the job in debt
        # and pauses reading as the response completes; the connection went
        # back to the pool without reading, and the next request on it never
        # saw its response.
        self.start_fetchd(["--max-per-host", "1"])
        c = self.connect()
        first = self.submit(c, [spec(self.url("/100k.bin"), limit_rate=64 * 1024)])[0]
        self.wait_all(c, [first])
        before = self.stats(c)["connection_reuses_total"]
        second = self.submit(c, [spec(self.url("/small.txt"), timeouts={"first_byte": 3})])[0]
        job = self.wait_job(c, second, timeout=WAIT_LIMIT)
        self.assertEqual(job["state"], "done", job)
        self.assertEqual(self.stats(c)["connection_reuses_total"], before + 1)

    def test_fetchctl_limit_rate(self):
        d = self.start_fetchd()
        env = clean_env(FETCHD_SOCKET=d.socket)
        proc = subprocess.run([FETCHCTL, "submit", "--json", "--wait", "--limit-rate", "512K",
                               "--rate", "120/m", "--delay", "0.25", self.url("/1m.bin")],
                              env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=WAIT_LIMIT)
        self.assertEqual(proc.returncode, 0, proc)
        c = self.connect()
        job = [j for j in self.list_all(c)][-1]
        self.assertEqual(job["limit_rate"], 512 * 1024, job)
        self.assertEqual(job["rate"], 2.0, job)
        self.assertEqual(job["delay"], 0.25, job)
        rate = job["bytes"] / (job["timings"]["total_ms"] / 1000.0)
        self.assertLess(rate, 512 * 1024 * (1 + TOLERANCE) + 64 * 1024, job)
        bad = subprocess.run([FETCHCTL, "submit", "--limit-rate", "fast", self.url("/")],
                             env=env, stdin=subprocess.DEVNULL, capture_output=True,
                             timeout=IO_TIMEOUT)
        self.assertEqual(bad.returncode, 2, bad)


if __name__ == "__main__":
    unittest.main()
