"""The connection pool: reuse, limits, idle sweeping, stale connections."""

import sys
import time
import unittest

from faultserver import FaultServer
from fetchtest import HarnessTestCase, NginxTestCase

WAIT = {"cmd": "wait"}
STATS = {"cmd": "stats"}


def sleep(ms):
    return {"cmd": "sleep", "ms": ms}


class NginxReuse(NginxTestCase):
    FETCHES = 10000

    def test_ten_thousand_fetches_reuse_connections(self):
        script = [{"url": self.nginx.url("/small.txt")}] * self.FETCHES + [WAIT]
        started = time.monotonic()
        events, rc = self.run_harness(script, ["--max-connections", 64], deadline_ms=180000)
        wall = time.monotonic() - started
        self.assert_clean(events, rc)
        jobs = self.jobs_by_index(events)
        self.assertEqual(len(jobs), self.FETCHES)
        not_done = [j for j in jobs.values() if j["state"] != "done" or j["http_status"] != 200]
        self.assertEqual(not_done[:3], [], "%d jobs not done" % len(not_done))
        stats = self.final(events)["stats"]
        opened = stats["connections_opened_total"]
        reuses = stats["connection_reuses_total"]
        print("REUSE: fetches=%d connections_opened=%d reuses=%d wall_s=%.2f"
              % (self.FETCHES, opened, reuses, wall), file=sys.stderr)
        self.assertLessEqual(opened, 64, stats)
        self.assertGreaterEqual(opened + reuses, self.FETCHES, stats)
        self.assertEqual(stats["jobs_finished_total"]["done"], self.FETCHES, stats)
        self.assertEqual(stats["connections"]["active"], 0, stats)
        self.assertEqual(stats["buffers"]["in_use"], 0, stats)

    def test_global_limit_single_origin(self):
        script = [{"url": self.nginx.url("/1k.bin")}] * 30 + [WAIT]
        events, rc = self.run_harness(script, ["--max-connections", 4])
        self.assert_clean(events, rc)
        jobs = self.jobs_by_index(events)
        self.assertEqual(sorted(jobs), list(range(30)))
        for job in jobs.values():
            self.assert_done(job, 200)
        stats = self.final(events)["stats"]
        self.assertLessEqual(stats["connections_opened_total"], 4, stats)


class PoolBehaviour(HarnessTestCase):
    def setUp(self):
        self.srv = FaultServer().start()
        self.addCleanup(self.srv.stop)

    def test_per_host_limit(self):
        url = self.srv.url("/drip?bytes=5&interval_ms=20")
        events, rc = self.run_harness([{"url": url}] * 10 + [WAIT], ["--max-per-host", 2])
        self.assert_clean(events, rc)
        jobs = self.jobs_by_index(events)
        self.assertEqual(sorted(jobs), list(range(10)))
        for job in jobs.values():
            self.assert_done(job, 200)
            self.assertEqual(job["bytes"], 5)
        stats = self.final(events)["stats"]
        self.assertLessEqual(stats["connections_opened_total"], 2, stats)
        self.assertLessEqual(self.srv.connections_accepted(), 2)

    def test_idle_sweep(self):
        events, rc = self.run_harness(
            [{"url": self.srv.url("/cl?size=10")}, WAIT, sleep(1500), STATS],
            ["--idle-timeout-ms", 300])
        self.assert_clean(events, rc)
        self.assert_done(self.job(events, 0), 200)
        stats = self.stats_events(events)[-1]
        self.assertEqual(stats["connections"]["idle"], 0, stats)
        self.assertGreaterEqual(stats["connections_closed_total"]["idle_timeout"], 1, stats)

    def test_server_closes_idle_connection(self):
        events, rc = self.run_harness(
            [{"url": self.srv.url("/close-after?ms=200")}, WAIT, STATS, sleep(1000), STATS])
        self.assert_clean(events, rc)
        self.assert_done(self.job(events, 0), 200)
        before, after = self.stats_events(events)
        self.assertEqual(before["connections"]["idle"], 1, before)
        self.assertEqual(after["connections"]["idle"], 0, after)
        self.assertEqual(after["connections_closed_total"]["peer_closed"], 1, after)

    def test_stale_connection_get_is_retried_silently(self):
        events, rc = self.run_harness(
            [{"url": self.srv.url("/stale")}, WAIT, {"url": self.srv.url("/stale")}])
        self.assert_clean(events, rc)
        first, second = self.job(events, 0), self.job(events, 1)
        self.assert_done(first, 200)
        self.assert_done(second, 200)
        self.assertEqual(second["attempts"], 2, second)
        self.assertEqual(self.srv.connections_accepted(), 2)

    def test_stale_connection_post_is_not_retried(self):
        events, rc = self.run_harness([
            {"url": self.srv.url("/stale")},
            WAIT,
            {"url": self.srv.url("/stale"), "method": "POST", "body": "payload"},
        ])
        self.assert_clean(events, rc)
        self.assert_done(self.job(events, 0), 200)
        second = self.job(events, 1)
        self.assert_failed(second, "empty_reply")
        self.assertEqual(second["attempts"], 1, second)
        posts = [r for r in self.srv.requests() if r["method"] == "POST"]
        self.assertEqual(len(posts), 1, posts)


class GlobalLimit(HarnessTestCase):
    def setUp(self):
        self.servers = [FaultServer().start() for _ in range(3)]
        for srv in self.servers:
            self.addCleanup(srv.stop)

    def test_global_limit_across_origins(self):
        jobs = [{"url": self.servers[i % 3].url("/drip?bytes=4&interval_ms=25")}
                for i in range(30)]
        samples = []
        for _ in range(10):
            samples += [sleep(50), STATS]
        events, rc = self.run_harness(jobs + samples + [WAIT, STATS], ["--max-connections", 4])
        self.assert_clean(events, rc)
        done = self.jobs_by_index(events)
        self.assertEqual(sorted(done), list(range(30)))
        for job in done.values():
            self.assert_done(job, 200)
        for stats in self.stats_events(events):
            in_use = sum(stats["connections"].values())
            self.assertLessEqual(in_use, 4, stats)


if __name__ == "__main__":
    unittest.main()
