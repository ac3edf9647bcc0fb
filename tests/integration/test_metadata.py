"""Response metadata end to end: the real fetchd and fetchctl against a real
nginx and the scripted fault server, on loopback.

Covers the redirect chain (301 -> 302 -> 200, odd statuses, a chain cut by
max_redirects), metadata of the final response only, keep_headers (order,
duplicates, the bound of 100 fields), and fetchctl's `submit -o -` (the
body on stdout byte for byte, refused past the inline limit), `-O` (the
file named after the URL's last segment, refused without one), `--include`
and the details `status` shows. Every test ends with the daemon's counts
back at their baseline (ControlTestCase.check_clean_end).
"""

import os
import subprocess

import test_alloc
import test_fetchctl
from ctltest import FETCHCTL, clean_env, spec
from fetchtest import HarnessTestCase, Nginx

RUN_TIMEOUT = 120
LAST_MODIFIED = "Tue, 01 Dec 2026 10:00:00 GMT"


def raw_response(status, reason, fields, body=b""):
    """An HTTP/1.1 response with exactly these fields (and Content-Length)."""
    head = "HTTP/1.1 %d %s\r\n" % (status, reason)
    head += "".join("%s: %s\r\n" % (k, v) for k, v in fields)
    head += "Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    return head.encode("latin-1") + body


class MetadataCase(test_fetchctl.FetchctlCase):
    """fetchctl's fixture: nginx, the fault server, fetchd and a work dir."""

    def ctl(self, *args, binary=False):
        """Runs fetchctl against this test's daemon; stdout as bytes when binary."""
        env = clean_env(FETCHD_SOCKET=self.daemon.socket)
        p = subprocess.run([FETCHCTL] + [str(a) for a in args], env=env, capture_output=True,
                           text=not binary, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
        p.args_shown = "fetchctl " + " ".join(str(a) for a in args)
        return p

    def why(self, p):
        err = p.stderr.decode(errors="replace") if isinstance(p.stderr, bytes) else p.stderr
        out = p.stdout[-2000:]
        return "%s -> %r\nstdout: %r\nstderr: %s%s" % (p.args_shown, p.returncode, out,
                                                       err[-2000:], self.ctx())

    def fetch(self, url, **fields):
        jid = self.submit(self.c, [spec(url, **fields)])[0]
        return self.wait_job(self.c, jid)


class RedirectChain(MetadataCase):
    def test_301_302_200(self):
        """Each redirect's URL and status in order; the final URL is
        effective_url; the metadata is the 200's, never a redirect's."""
        self.srv.serve_raw("/chain/a", raw_response(301, "Moved Permanently", [
            ("Location", "/chain/b"), ("Content-Type", "text/x-first"),
            ("ETag", '"first"'), ("Last-Modified", LAST_MODIFIED)], b"moved\n"))
        self.srv.serve_raw("/chain/b", raw_response(302, "Found", [
            ("Location", self.srv.url("/chain/c")), ("Content-Type", "text/x-second"),
            ("ETag", '"second"')], b"found\n"))
        self.srv.serve_raw("/chain/c", raw_response(200, "OK", [
            ("Content-Type", "text/plain; charset=utf-8")], b"the end\n"))
        job = self.fetch(self.srv.url("/chain/a"))
        self.assertEqual(job["state"], "done", job)
        self.assertEqual(job["http_status"], 200, job)
        self.assertEqual(job["redirect_chain"], [
            {"url": self.srv.url("/chain/a"), "status": 301},
            {"url": self.srv.url("/chain/b"), "status": 302}], job)
        self.assertEqual(job["redirects"], 2, job)
        self.assertEqual(job["effective_url"], self.srv.url("/chain/c"), job)
        self.assertEqual(job["content_type"], "text/plain; charset=utf-8", job)
        self.assertEqual(job["content_length"], len(b"the end\n"), job)
        self.assertNotIn("etag", job)
        self.assertNotIn("last_modified", job)

    def test_odd_statuses(self):
        """307, 308 and 303 are recorded as they came (the 303 turns the
        POST into a GET); a 300 with a Location is a final response."""
        self.srv.serve_raw("/odd/1", raw_response(307, "Temporary Redirect",
                                                  [("Location", "/odd/2")]))
        self.srv.serve_raw("/odd/2", raw_response(308, "Permanent Redirect",
                                                  [("Location", "/odd/3?x=1")]))
        self.srv.serve_raw("/odd/3", raw_response(303, "See Other", [("Location", "/echo")]))
        job = self.fetch(self.srv.url("/odd/1"), method="POST", body="data")
        self.assertEqual(job["state"], "done", job)
        self.assertEqual([(h["status"], h["url"]) for h in job["redirect_chain"]], [
            (307, self.srv.url("/odd/1")), (308, self.srv.url("/odd/2")),
            (303, self.srv.url("/odd/3?x=1"))], job)
        self.assertEqual(job["effective_url"], self.srv.url("/echo"), job)
        self.assertEqual(job["content_type"], "application/json", job)

        self.srv.serve_raw("/odd/300", raw_response(300, "Multiple Choices", [
            ("Location", "/echo"), ("ETag", '"choices"')], b"choose\n"))
        job = self.fetch(self.srv.url("/odd/300"))
        self.assertEqual(job["state"], "done", job)
        self.assertEqual(job["http_status"], 300, job)
        self.assertNotIn("redirect_chain", job)
        self.assertEqual(job["etag"], '"choices"', job)

    def test_cut_by_max_redirects(self):
        """A chain longer than max_redirects fails the job; the chain holds
        the redirects followed, and no redirect's metadata shows."""
        self.srv.serve_raw("/spin", raw_response(302, "Found", [
            ("Location", "/spin"), ("Content-Type", "text/html"), ("ETag", '"spin"')],
            b"<p>again</p>\n"))
        job = self.fetch(self.srv.url("/spin"), max_redirects=3)
        self.assertEqual(job["state"], "failed", job)
        self.assertEqual(job["error"]["code"], "too_many_redirects", job)
        self.assertEqual(job["redirect_chain"], [{"url": self.srv.url("/spin"), "status": 302}] * 3)
        for key in ("content_type", "etag", "content_length", "http_status"):
            self.assertNotIn(key, job)

    def test_no_redirect_no_chain(self):
        job = self.fetch(self.nginx.url("/small.txt"))
        self.assertEqual(job["state"], "done", job)
        self.assertNotIn("redirect_chain", job)
        self.assertNotIn("headers", job)


class KeepHeaders(MetadataCase):
    def test_order_and_duplicates(self):
        """Every field of the final response, in order, repeated ones too;
        the redirect's and the 1xx's fields are not among them."""
        self.srv.serve_raw("/kh/r", raw_response(302, "Found", [
            ("Location", "/kh/final"), ("X-Redirect", "yes")]))
        self.srv.serve_raw("/kh/final", b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
                           + raw_response(200, "OK", [
                               ("Set-Cookie", "a=1"), ("X-Mixed-Case", "One"),
                               ("Set-Cookie", "b=2"), ("Cache-Control", "no-cache"),
                               ("Set-Cookie", "a=1"), ("X-Empty", "")], b"ok"))
        job = self.fetch(self.srv.url("/kh/r"), keep_headers=True)
        self.assertEqual(job["state"], "done", job)
        self.assertEqual(job["headers"], [
            ["Set-Cookie", "a=1"], ["X-Mixed-Case", "One"], ["Set-Cookie", "b=2"],
            ["Cache-Control", "no-cache"], ["Set-Cookie", "a=1"], ["X-Empty", ""],
            ["Connection", "close"], ["Content-Length", "2"]], job)
        self.assertNotIn("headers_truncated", job)

    def test_bound(self):
        """Past 100 fields the rest are dropped and flagged; the job is done."""
        fields = [("X-F-%03d" % i, "v%d" % i) for i in range(150)]
        self.srv.serve_raw("/kh/many", raw_response(200, "OK", fields, b"many"))
        job = self.fetch(self.srv.url("/kh/many"), keep_headers=True, output="inline")
        self.assertEqual(job["state"], "done", job)
        self.assertEqual(len(job["headers"]), 100, job["headers"][-3:])
        self.assertEqual(job["headers"], [list(f) for f in fields[:100]])
        self.assertIs(job["headers_truncated"], True, job)
        self.assertEqual(job["inline"]["data"], "many")

    def test_off_by_default(self):
        self.srv.serve_raw("/kh/off", raw_response(200, "OK", [("X-A", "1")], b"x"))
        job = self.fetch(self.srv.url("/kh/off"))
        self.assertEqual(job["state"], "done", job)
        self.assertNotIn("headers", job)
        self.assertNotIn("headers_truncated", job)

    def test_refused_when_not_boolean(self):
        resp = self.c.call("submit", {"jobs": [spec(self.nginx.url("/small.txt"),
                                                   keep_headers="yes")]})
        self.assertIn("error", resp, resp)
        self.assertIn("keep_headers", str(resp["error"]), resp)


class Stdout(MetadataCase):
    def test_text_and_binary_byte_exact(self):
        for path in ("/small.txt", "/1k.bin", "/1m.bin"):
            p = self.ctl("submit", "-o", "-", self.nginx.url(path), binary=True)
            self.assertEqual(p.returncode, 0, self.why(p))
            self.assertEqual(p.stdout, self.nginx.files[path], "%s differs" % path)
        # Bytes a text channel could mangle: NUL, CR LF, invalid UTF-8, a
        # lone surrogate, and a last line without a newline.
        body = b"\x00\r\n\xff\xfe\xed\xa0\x80caf\xc3\xa9\n\r\x00end"
        self.srv.serve_raw("/bin/odd", raw_response(200, "OK", [], body))
        p = self.ctl("submit", "-o", "-", self.srv.url("/bin/odd"), binary=True)
        self.assertEqual(p.returncode, 0, self.why(p))
        self.assertEqual(p.stdout, body)
        self.srv.serve_raw("/bin/empty", raw_response(200, "OK", [], b""))
        p = self.ctl("submit", "-o", "-", self.srv.url("/bin/empty"), binary=True)
        self.assertEqual((p.returncode, p.stdout), (0, b""), self.why(p))

    def test_too_large_is_refused(self):
        p = self.ctl("submit", "-o", "-", self.nginx.url("/4m.bin"), binary=True)
        self.assertEqual(p.returncode, 1, self.why(p))
        self.assertEqual(p.stdout, b"", "part of a body too large was written")
        err = p.stderr.decode()
        self.assertIn("too large", err)
        self.assertIn("-o FILE", err)

    def test_failed_job_writes_nothing(self):
        p = self.ctl("submit", "-o", "-", "--fail", self.nginx.url("/status/404"), binary=True)
        self.assertEqual(p.returncode, 1, self.why(p))
        self.assertEqual(p.stdout, b"")
        self.assertIn(b"http_error", p.stderr)

    def test_include_puts_the_fields_first(self):
        self.srv.serve_raw("/inc", raw_response(200, "OK", [
            ("Content-Type", "text/plain"), ("X-Dup", "1"), ("X-Dup", "2")], b"body\n"))
        p = self.ctl("submit", "--include", "-o", "-", self.srv.url("/inc"), binary=True)
        self.assertEqual(p.returncode, 0, self.why(p))
        self.assertEqual(p.stdout, b"Content-Type: text/plain\r\nX-Dup: 1\r\nX-Dup: 2\r\n"
                         b"Connection: close\r\nContent-Length: 5\r\n\r\nbody\n")

    def test_json_excluded(self):
        p = self.ctl("--json", "submit", "-o", "-", self.nginx.url("/small.txt"))
        self.assertEqual(p.returncode, 2, self.why(p))
        self.assertEqual(self.list_all(self.c), [])


class RemoteName(MetadataCase):
    def test_named_after_the_last_segment(self):
        p = self.ctl("submit", "--wait", "-O", self.nginx.url("/1k.bin"),
                     self.srv.url("/cl?size=10#frag"))
        self.assertEqual(p.returncode, 0, self.why(p))
        with open(os.path.join(self.daemon.download_dir, "1k.bin"), "rb") as f:
            self.assertEqual(f.read(), self.nginx.files["/1k.bin"])
        self.assertEqual(os.path.getsize(os.path.join(self.daemon.download_dir, "cl")), 10)

    def test_no_percent_decoding(self):
        self.srv.serve_raw("/dir/a%20b%2Fc.txt", raw_response(200, "OK", [], b"pct"))
        p = self.ctl("submit", "--wait", "-O", self.srv.url("/dir/a%20b%2Fc.txt"))
        self.assertEqual(p.returncode, 0, self.why(p))
        self.assertEqual(os.listdir(self.daemon.download_dir), ["a%20b%2Fc.txt"])

    def test_refused_without_a_segment(self):
        for url in (self.nginx.url("/"), self.nginx.url("/dir/?q=1"),
                    "http://127.0.0.1:%d" % self.nginx.port, self.nginx.url("/a/..")):
            p = self.ctl("submit", "-O", url)
            self.assertEqual(p.returncode, 2, self.why(p))
            self.assertIn("-O", p.stderr)
            self.assertIn("no file name", p.stderr)
        p = self.ctl("submit", "-O", "-o", "x", self.nginx.url("/small.txt"))
        self.assertEqual(p.returncode, 2, self.why(p))
        self.assertEqual(self.list_all(self.c), [])


class HumanOutput(MetadataCase):
    def test_status_shows_the_details(self):
        job = self.fetch(self.nginx.url("/redirect/1"))
        self.assertEqual(job["state"], "done", job)
        p = self.ctl("status", job["id"])
        self.assertEqual(p.returncode, 0, self.why(p))
        lines = p.stdout.splitlines()
        self.assertIn(job["id"], lines[0])
        shown = "\n".join(lines[1:])
        self.assertIn("redirect 302   " + self.nginx.url("/redirect/1"), shown)
        self.assertIn("redirect 302   " + self.nginx.url("/redirect/0"), shown)
        self.assertIn("final URL      " + self.nginx.url("/small.txt"), shown)
        self.assertIn("content-type   application/octet-stream", shown)
        self.assertIn("content-length 6", shown)
        self.assertIn("etag           " + job["etag"], shown)
        self.assertIn("last-modified  " + job["last_modified"], shown)

    def test_wait_include_shows_the_fields(self):
        self.srv.serve_raw("/human", raw_response(200, "OK", [("X-Human", "yes")], b"h"))
        p = self.ctl("submit", "--wait", "--include", self.srv.url("/human"))
        self.assertEqual(p.returncode, 0, self.why(p))
        self.assertIn("< X-Human: yes", p.stdout)
        self.assertIn("< Content-Length: 1", p.stdout)


class AllocationFailure(HarnessTestCase):
    """keep_headers and a redirect chain with each of fetchd's allocations
    failing in turn (test_alloc's torture, on this scenario only): every job
    is done or says no_memory, and teardown finds every count at zero."""

    torture = test_alloc.Torture.torture
    run_once = test_alloc.Torture.run_once
    check_jobs = test_alloc.Torture.check_jobs
    fetch_scenario = test_alloc.Torture.fetch_scenario

    def test_keep_headers_and_redirect_chain(self):
        with Nginx().start() as nginx:
            self.fetch_scenario("keep_headers", [{"url": nginx.url("/redirect/3"),
                                                  "keep_headers": True, "output": "inline"}])
