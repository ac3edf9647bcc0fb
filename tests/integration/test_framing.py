"""Response framing: every way a well-formed HTTP/1.x response can end."""

import unittest

from faultserver import CHUNKED_BODY, CLOSE_BODY, HTTP10_BODY, FaultServer, pattern
from fetchtest import HarnessTestCase, NginxTestCase, sha256_hex

WAIT = {"cmd": "wait"}


class FaultServerFraming(HarnessTestCase):
    def setUp(self):
        self.srv = FaultServer().start()
        self.addCleanup(self.srv.stop)

    def fetch_one(self, path, **spec):
        job_spec = {"url": self.srv.url(path), "sha256": True}
        job_spec.update(spec)
        events, rc = self.run_harness([job_spec])
        self.assert_clean(events, rc)
        return self.job(events, 0), events

    def test_content_length(self):
        job, _ = self.fetch_one("/cl?size=5000")
        self.assert_done(job, 200)
        self.assertEqual(job["bytes"], 5000)
        self.assertEqual(job["sha256"], sha256_hex(pattern(5000)))

    def test_chunked_with_extensions_and_trailers(self):
        job, _ = self.fetch_one("/chunked")
        self.assert_done(job, 200)
        self.assertEqual(job["bytes"], len(CHUNKED_BODY))
        self.assertEqual(job["sha256"], sha256_hex(CHUNKED_BODY))

    def test_close_delimited(self):
        job, _ = self.fetch_one("/close-delimited")
        self.assert_done(job, 200)
        self.assertEqual(job["bytes"], len(CLOSE_BODY))
        self.assertEqual(job["sha256"], sha256_hex(CLOSE_BODY))

    def test_http10_response(self):
        job, _ = self.fetch_one("/http10")
        self.assert_done(job, 200)
        self.assertEqual(job["bytes"], len(HTTP10_BODY))

    def test_interim_responses_before_final(self):
        job, _ = self.fetch_one("/interim")
        self.assert_done(job, 200)
        self.assertEqual(job["bytes"], 5)
        self.assertEqual(job["sha256"], sha256_hex(b"hello"))

    def test_204_then_connection_reused(self):
        events, rc = self.run_harness([
            {"url": self.srv.url("/no-content")},
            WAIT,
            {"url": self.srv.url("/cl?size=10")},
        ])
        self.assert_clean(events, rc)
        first, second = self.job(events, 0), self.job(events, 1)
        self.assert_done(first, 204)
        self.assertEqual(first["bytes"], 0)
        self.assert_done(second, 200)
        self.assertEqual(second["bytes"], 10)
        stats = self.final(events)["stats"]
        self.assertGreaterEqual(stats["connection_reuses_total"], 1, stats)
        self.assertEqual(self.srv.connections_accepted(), 1)

    def reuse_after(self, data, status):
        """Two fetches of a response served as `data` on a kept-alive
        connection: a normalised response leaves the connection reusable."""
        self.srv.serve_raw("/raw", data, keep=True)
        events, rc = self.run_harness([
            {"url": self.srv.url("/raw"), "output": "inline"},
            WAIT,
            {"url": self.srv.url("/raw"), "output": "inline"},
        ])
        self.assert_clean(events, rc)
        for index in (0, 1):
            self.assert_done(self.job(events, index), status)
        stats = self.final(events)["stats"]
        self.assertEqual(stats["connection_reuses_total"], 1, stats)
        self.assertEqual(self.srv.connections_accepted(), 1)
        return events

    def test_bare_lf_chunked_then_connection_reused(self):
        events = self.reuse_after(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n"
                                  b"5\nhello\n0\nX-T: 1\n\n", 200)
        self.assertEqual(self.job(events, 1)["inline"]["data"], "hello")
        self.assertEqual(self.final(events)["stats"]["http_lenient_total"]["bare_lf"], 2)

    def test_204_with_transfer_encoding_then_connection_reused(self):
        events = self.reuse_after(
            b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n", 204)
        self.assertEqual(self.job(events, 0)["bytes"], 0)

    def test_interim_fields_folded_and_bare_lf_then_connection_reused(self):
        self.reuse_after(b"HTTP/1.1 103 Early Hints\nLink: </a>;\n rel=preload\n\n"
                         b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200)

    def test_304(self):
        job, _ = self.fetch_one("/not-modified")
        self.assert_done(job, 304)
        self.assertEqual(job["bytes"], 0)

    def test_head_on_fault_server(self):
        job, _ = self.fetch_one("/cl?size=777", method="HEAD")
        self.assert_done(job, 200)
        self.assertEqual(job["bytes"], 0)

    def test_leftover_bytes_close_the_connection(self):
        events, rc = self.run_harness([
            {"url": self.srv.url("/leftover")},
            WAIT,
            {"url": self.srv.url("/cl?size=10")},
        ])
        self.assert_clean(events, rc)
        self.assert_done(self.job(events, 0), 200)
        self.assertEqual(self.job(events, 0)["bytes"], 5)
        self.assert_done(self.job(events, 1), 200)
        stats = self.final(events)["stats"]
        self.assertEqual(stats["connections_opened_total"], 2, stats)
        self.assertEqual(self.srv.connections_accepted(), 2)


class NginxFraming(NginxTestCase):
    def test_head_1m(self):
        events, rc = self.run_harness([{"url": self.nginx.url("/1m.bin"), "method": "HEAD"}])
        self.assert_clean(events, rc)
        job = self.job(events, 0)
        self.assert_done(job, 200)
        self.assertEqual(job["bytes"], 0)

    def test_files_sha256(self):
        paths = ["/small.txt", "/1m.bin", "/4m.bin"]
        events, rc = self.run_harness(
            [{"url": self.nginx.url(p), "sha256": True} for p in paths])
        self.assert_clean(events, rc)
        for index, path in enumerate(paths):
            job = self.job(events, index)
            self.assert_done(job, 200)
            self.assertEqual(job["bytes"], len(self.nginx.files[path]), path)
            self.assertEqual(job["sha256"], self.nginx.sha256(path), path)
            self.assertEqual(job["effective_url"], self.nginx.url(path))

    def test_two_sequential_jobs_share_one_connection(self):
        events, rc = self.run_harness([
            {"url": self.nginx.url("/small.txt")},
            WAIT,
            {"url": self.nginx.url("/1k.bin")},
        ])
        self.assert_clean(events, rc)
        self.assert_done(self.job(events, 0), 200)
        self.assert_done(self.job(events, 1), 200)
        stats = self.final(events)["stats"]
        self.assertEqual(stats["connections_opened_total"], 1, stats)
        self.assertEqual(stats["connection_reuses_total"], 1, stats)


if __name__ == "__main__":
    unittest.main()
