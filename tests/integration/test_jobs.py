"""Job semantics: redirects, retries, HTTP errors, cancellation, priority,
retention and timeouts."""

import json
import unittest
import urllib.parse

from faultserver import FaultServer
from fetchtest import HarnessTestCase, NginxTestCase, free_port, inline_bytes

WAIT = {"cmd": "wait"}
STATS = {"cmd": "stats"}


def sleep(ms):
    return {"cmd": "sleep", "ms": ms}


def redir(status, to):
    return "/redir?status=%d&to=%s" % (status, urllib.parse.quote(to, safe=""))


class Redirects(HarnessTestCase):
    def setUp(self):
        self.srv = FaultServer().start()
        self.addCleanup(self.srv.stop)

    def post_through(self, status, target=None):
        """POSTs "payload" to a redirect; returns (job, echo document)."""
        target = target or self.srv.url("/echo")
        events, rc = self.run_harness([{
            "url": self.srv.url(redir(status, target)),
            "method": "POST",
            "body": "payload",
            "headers": {"Content-Type": "text/plain"},
            "output": "inline",
        }])
        self.assert_clean(events, rc)
        job = self.job(events, 0)
        self.assert_done(job, 200)
        self.assertEqual(job["redirects"], 1, job)
        self.assertEqual(job["effective_url"], target, job)
        return job, json.loads(inline_bytes(job))

    def assert_became_get(self, status):
        _, echo = self.post_through(status)
        self.assertEqual(echo["method"], "GET", echo)
        self.assertEqual(echo["body_length"], 0, echo)

    def assert_kept_post(self, status):
        _, echo = self.post_through(status)
        self.assertEqual(echo["method"], "POST", echo)
        self.assertEqual(echo["body_length"], len("payload"), echo)

    def test_301_after_post_becomes_get(self):
        self.assert_became_get(301)

    def test_302_after_post_becomes_get(self):
        self.assert_became_get(302)

    def test_303_becomes_get(self):
        self.assert_became_get(303)

    def test_307_keeps_post_and_body(self):
        self.assert_kept_post(307)

    def test_308_keeps_post_and_body(self):
        self.assert_kept_post(308)

    def test_relative_location(self):
        events, rc = self.run_harness([{"url": self.srv.url(redir(302, "/echo")),
                                        "output": "inline"}])
        self.assert_clean(events, rc)
        job = self.job(events, 0)
        self.assert_done(job, 200)
        self.assertEqual(job["redirects"], 1)
        self.assertEqual(job["effective_url"], self.srv.url("/echo"))
        self.assertEqual(job["url"], self.srv.url(redir(302, "/echo")))

    def credentials_after_redirect(self, target_server):
        events, rc = self.run_harness([{
            "url": self.srv.url(redir(302, target_server.url("/echo"))),
            "headers": {"Authorization": "Bearer secret", "Cookie": "session=1",
                        "X-Custom": "kept"},
            "output": "inline",
        }])
        self.assert_clean(events, rc)
        job = self.job(events, 0)
        self.assert_done(job, 200)
        self.assertEqual(job["effective_url"], target_server.url("/echo"))
        echo = json.loads(inline_bytes(job))
        recorded = [r for r in target_server.requests() if r["path"] == "/echo"]
        self.assertEqual(len(recorded), 1)
        names = {name.lower() for name, _ in recorded[0]["headers"]}
        return echo["headers"], names

    def test_redirect_chain_over_connections_that_go_stale(self):
        # Each hop reuses the connection the redirect came on, which the
        # server has dropped: every hop gets its own silent retry.
        events, rc = self.run_harness([{"url": self.srv.url("/stale-redir?n=3")}])
        self.assert_clean(events, rc)
        job = self.job(events, 0)
        self.assert_done(job, 200)
        self.assertEqual(job["redirects"], 3)

    def test_cross_origin_redirect_drops_credentials(self):
        with FaultServer() as other:
            headers, names = self.credentials_after_redirect(other)
        self.assertNotIn("authorization", headers)
        self.assertNotIn("cookie", headers)
        self.assertNotIn("authorization", names)
        self.assertNotIn("cookie", names)

    def test_same_origin_redirect_keeps_credentials(self):
        headers, names = self.credentials_after_redirect(self.srv)
        self.assertEqual(headers.get("authorization"), "Bearer secret")
        self.assertEqual(headers.get("cookie"), "session=1")
        self.assertEqual(headers.get("x-custom"), "kept")


class NginxRedirects(NginxTestCase):
    def test_redirect_chain(self):
        events, rc = self.run_harness([{"url": self.nginx.url("/redirect/3"), "sha256": True}])
        self.assert_clean(events, rc)
        job = self.job(events, 0)
        self.assert_done(job, 200)
        self.assertEqual(job["redirects"], 4)
        self.assertEqual(job["effective_url"], self.nginx.url("/small.txt"))
        self.assertEqual(job["sha256"], self.nginx.sha256("/small.txt"))

    def test_metadata_is_the_final_responses(self):
        """content_type, content_length, etag and last_modified come from the
        response after the redirects, not from the 302s before it."""
        events, rc = self.run_harness([{"url": self.nginx.url("/redirect/2")}])
        self.assert_clean(events, rc)
        job = self.job(events, 0)
        self.assert_done(job, 200)
        size = len(self.nginx.files["/small.txt"])
        self.assertEqual(job["content_length"], size, job)
        self.assertEqual(job["content_type"], "application/octet-stream", job)
        self.assertRegex(job["etag"], r'^"[0-9a-f]+-[0-9a-f]+"$', job)
        self.assertRegex(job["last_modified"], r"^[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} ", job)

    def test_404_is_done_without_fail_on_http_error(self):
        events, rc = self.run_harness([{"url": self.nginx.url("/status/404")}])
        self.assert_clean(events, rc)
        self.assert_done(self.job(events, 0), 404)

    def test_404_fails_with_fail_on_http_error(self):
        events, rc = self.run_harness(
            [{"url": self.nginx.url("/status/404"), "fail_on_http_error": True}])
        self.assert_clean(events, rc)
        job = self.job(events, 0)
        self.assert_failed(job, "http_error")
        self.assertEqual(job["http_status"], 404)


class Retries(HarnessTestCase):
    def setUp(self):
        self.srv = FaultServer().start()
        self.addCleanup(self.srv.stop)

    def run_one(self, spec):
        events, rc = self.run_harness([spec])
        self.assert_clean(events, rc)
        return self.job(events, 0)

    def test_503_retried_until_success(self):
        target = "/flaky?n=2&status=503&retry_after=0"
        job = self.run_one({"url": self.srv.url(target), "retries": 3})
        self.assert_done(job, 200)
        self.assertEqual(job["attempts"], 3, job)
        self.assertEqual(self.srv.hits_for(target), 3)

    def test_503_without_retries_is_done(self):
        target = "/flaky?n=2&status=503&retry_after=0"
        job = self.run_one({"url": self.srv.url(target)})
        self.assert_done(job, 503)
        self.assertEqual(job["attempts"], 1, job)
        self.assertEqual(self.srv.hits_for(target), 1)

    def test_502_on_post_not_retried(self):
        target = "/flaky?n=1&status=502&retry_after=0"
        job = self.run_one({"url": self.srv.url(target), "method": "POST", "body": "x",
                            "retries": 3})
        self.assert_done(job, 502)
        self.assertEqual(job["attempts"], 1, job)
        self.assertEqual(self.srv.hits_for(target), 1)

    def test_502_on_get_retried(self):
        target = "/flaky?n=1&status=502&retry_after=0"
        job = self.run_one({"url": self.srv.url(target), "retries": 3})
        self.assert_done(job, 200)
        self.assertEqual(job["attempts"], 2, job)

    def test_429_with_retry_after_retried(self):
        target = "/flaky?n=1&status=429&retry_after=0"
        job = self.run_one({"url": self.srv.url(target), "retries": 3})
        self.assert_done(job, 200)
        self.assertEqual(job["attempts"], 2, job)

    def test_connect_refused_retried(self):
        job = self.run_one({"url": "http://127.0.0.1:%d/" % free_port(), "retries": 2})
        self.assert_failed(job, "connect_refused")
        self.assertEqual(job["attempts"], 3, job)


class Cancellation(HarnessTestCase):
    def setUp(self):
        self.srv = FaultServer().start()
        self.addCleanup(self.srv.stop)

    def test_cancel_running_job(self):
        events, rc = self.run_harness([
            {"url": self.srv.url("/never"), "timeouts": {"first_byte": 30}},
            sleep(300),
            {"cmd": "cancel", "index": 0},
            WAIT,
        ])
        self.assert_clean(events, rc)
        job = self.job(events, 0)
        self.assertEqual(job["state"], "cancelled", job)
        self.assertEqual(job["error"]["code"], "cancelled", job)

    def test_cancel_queued_job(self):
        events, rc = self.run_harness([
            {"url": self.srv.url("/never"), "timeouts": {"first_byte": 2}},
            {"url": self.srv.url("/cl?size=10")},
            sleep(100),
            {"cmd": "cancel", "index": 1},
            WAIT,
        ], ["--max-running", 1])
        self.assert_clean(events, rc)
        self.assert_failed(self.job(events, 0), "timeout")
        job = self.job(events, 1)
        self.assertEqual(job["state"], "cancelled", job)
        self.assertEqual(job["error"]["code"], "cancelled", job)
        self.assertEqual(self.srv.path_hits("/cl"), 0)


class Priority(HarnessTestCase):
    def setUp(self):
        self.srv = FaultServer().start()
        self.addCleanup(self.srv.stop)

    def blocker(self):
        return {"url": self.srv.url("/drip?bytes=5&interval_ms=100")}

    def test_higher_priority_first(self):
        events, rc = self.run_harness([
            self.blocker(),
            sleep(100),
            {"url": self.srv.url("/cl?size=1"), "priority": 0},
            {"url": self.srv.url("/cl?size=2"), "priority": 5},
            {"url": self.srv.url("/cl?size=3"), "priority": 10},
            WAIT,
        ], ["--max-running", 1])
        self.assert_clean(events, rc)
        self.assertEqual(self.job_order(events), [0, 3, 2, 1])
        self.assertEqual(self.job(events, 3)["priority"], 10)

    def test_fifo_among_equal_priorities(self):
        events, rc = self.run_harness(
            [self.blocker(), sleep(100)]
            + [{"url": self.srv.url("/cl?size=%d" % n), "priority": 3} for n in range(1, 5)]
            + [WAIT], ["--max-running", 1])
        self.assert_clean(events, rc)
        self.assertEqual(self.job_order(events), [0, 1, 2, 3, 4])


class Retention(HarnessTestCase):
    def test_retain_jobs_bound(self):
        with FaultServer() as srv:
            events, rc = self.run_harness(
                [{"url": srv.url("/cl?size=%d" % n), "labels": {"n": str(n)}} for n in range(6)]
                + [WAIT, STATS], ["--retain-jobs", 3])
        self.assert_clean(events, rc)
        jobs = self.jobs_by_index(events)
        self.assertEqual(sorted(jobs), list(range(6)))
        for index, job in jobs.items():
            self.assertEqual(job["labels"], {"n": str(index)})
        stats = self.stats_events(events)[-1]
        self.assertEqual(stats["jobs"]["retained"], 3, stats)
        self.assertEqual(stats["jobs_finished_total"]["done"], 6, stats)


class Timeouts(HarnessTestCase):
    def setUp(self):
        self.srv = FaultServer().start()
        self.addCleanup(self.srv.stop)

    def run_one(self, path, timeouts):
        events, rc = self.run_harness([{"url": self.srv.url(path), "timeouts": timeouts}])
        self.assert_clean(events, rc)
        return self.job(events, 0)

    def test_first_byte(self):
        self.assert_failed(self.run_one("/never", {"first_byte": 0.5}), "timeout")

    def test_idle_not_exceeded(self):
        job = self.run_one("/drip?bytes=20&interval_ms=100", {"idle": 1})
        self.assert_done(job, 200)
        self.assertEqual(job["bytes"], 20)

    def test_idle_exceeded(self):
        self.assert_failed(self.run_one("/drip?bytes=3&interval_ms=1500", {"idle": 0.3}),
                           "timeout")

    def test_total(self):
        self.assert_failed(self.run_one("/drip?bytes=20&interval_ms=100", {"total": 0.5}),
                           "timeout")


if __name__ == "__main__":
    unittest.main()
