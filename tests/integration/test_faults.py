"""Broken servers and bad requests: each must fail with its exact error code,
and the engine must come back to zero objects afterwards."""

import unittest

from faultserver import BacklogFull, FaultServer
from fetchtest import HarnessTestCase, free_port


class ResponseFaults(HarnessTestCase):
    def setUp(self):
        self.srv = FaultServer().start()
        self.addCleanup(self.srv.stop)

    def fetch(self, path, **spec):
        job_spec = {"url": self.srv.url(path)}
        job_spec.update(spec)
        events, rc = self.run_harness([job_spec])
        self.assert_clean(events, rc)
        return self.job(events, 0)

    def expect_failure(self, path, code, **spec):
        job = self.fetch(path, **spec)
        self.assert_failed(job, code)
        return job

    def test_truncated_content_length(self):
        self.expect_failure("/truncated-cl", "truncated")

    def test_truncated_chunked(self):
        self.expect_failure("/truncated-chunked", "truncated")

    def test_reset_mid_body(self):
        self.expect_failure("/reset-mid-body", "truncated")

    def test_empty_reply(self):
        self.expect_failure("/empty", "empty_reply")

    def test_reset_before_any_byte(self):
        self.expect_failure("/reset-before", "empty_reply")

    def test_garbage_status_line(self):
        self.expect_failure("/garbage-status", "protocol")

    def test_one_digit_status(self):
        self.expect_failure("/one-digit-status", "protocol")

    def test_duplicate_identical_content_length_is_one(self):
        # RFC 9110 8.6: identical repeated values may be taken as one.
        job = self.fetch("/dup-cl-same")
        self.assert_done(job, 200)
        self.assertEqual(job["bytes"], 5)

    def test_different_content_lengths(self):
        self.expect_failure("/dup-cl-diff", "protocol")

    def test_content_length_with_transfer_encoding(self):
        self.expect_failure("/cl-and-te", "protocol")

    def test_bad_chunk_size(self):
        self.expect_failure("/bad-chunk-size", "protocol")

    def test_huge_header(self):
        self.expect_failure("/huge-header", "headers_too_large")

    def test_too_many_headers(self):
        self.expect_failure("/many-headers", "headers_too_large")

    def test_obs_fold_is_unfolded(self):
        # RFC 9112 5.2: a user agent replaces obs-fold with SP.
        job = self.fetch("/obs-fold")
        self.assert_done(job, 200)
        self.assertEqual(job["bytes"], 2)

    def test_204_with_body(self):
        self.expect_failure("/no-content-body", "protocol")

    def test_never_answers_first_byte_timeout(self):
        self.expect_failure("/never", "timeout", timeouts={"first_byte": 0.5})

    def test_slow_drip_within_idle_timeout(self):
        job = self.fetch("/drip?bytes=20&interval_ms=100", timeouts={"idle": 1})
        self.assert_done(job, 200)
        self.assertEqual(job["bytes"], 20)

    def test_slow_drip_total_timeout(self):
        self.expect_failure("/drip?bytes=20&interval_ms=100", "timeout", timeouts={"total": 0.5})

    def test_redirect_loop(self):
        job = self.expect_failure("/loop", "too_many_redirects", max_redirects=5)
        self.assertEqual(job["redirects"], 5)

    def test_max_body_content_length(self):
        self.expect_failure("/cl?size=1024", "body_too_large", max_body=100)

    def test_max_body_chunked(self):
        self.expect_failure("/chunked", "body_too_large", max_body=100)


class ConnectFaults(HarnessTestCase):
    def test_connect_refused(self):
        port = free_port()
        events, rc = self.run_harness([{"url": "http://127.0.0.1:%d/" % port}])
        self.assert_clean(events, rc)
        self.assert_failed(self.job(events, 0), "connect_refused")

    def test_connect_timeout(self):
        with BacklogFull() as backlog:
            if not backlog.hangs:
                self.skipTest("a full listen backlog does not make connect hang here "
                              "(SYNs are answered), so connect timeouts cannot be provoked")
            events, rc = self.run_harness(
                [{"url": backlog.url("/"), "timeouts": {"connect": 0.5}}])
        self.assert_clean(events, rc)
        self.assert_failed(self.job(events, 0), "connect_timeout")

    def test_dns_failure(self):
        events, rc = self.run_harness([{"url": "http://nonexistent.invalid/"}])
        self.assert_clean(events, rc)
        self.assert_failed(self.job(events, 0), "dns")


class InvalidRequests(HarnessTestCase):
    BAD_URLS = ["http://exa mple.com/", "http://a/\r\nX: y", "ftp://x/", "http://:80/"]

    def test_malformed_urls_rejected(self):
        events, rc = self.run_harness([{"url": u} for u in self.BAD_URLS])
        self.assert_clean(events, rc)
        for index in range(len(self.BAD_URLS)):
            self.assert_rejected(events, index)

    def test_header_value_with_crlf_rejected(self):
        events, rc = self.run_harness([
            {"url": "http://127.0.0.1:1/", "headers": {"X-Test": "a\r\nInjected: 1"}},
            {"url": "http://127.0.0.1:1/", "headers": {"X-Test": "a\nInjected: 1"}},
        ])
        self.assert_clean(events, rc)
        self.assert_rejected(events, 0)
        self.assert_rejected(events, 1)


if __name__ == "__main__":
    unittest.main()
