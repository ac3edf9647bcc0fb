"""Content decoding end to end: the real fetchd and fetchctl against nginx
(its gzip filter and gzip_static) and the fault server serving bodies made
here with python's gzip and zlib and the zstd and brotli tools.

Covers every coding, stacked codings, truncated and corrupt streams, a
decompression bomb (ratio cap), max_body on the decoded size, an unknown
coding, the daemon-wide default, and the same bodies without `decode`
(stored as received, content_encoding reported).  Each test ends with the
live object counts back at their baseline (ControlTestCase) and the
decoders' heap components (zlib, brotli, zstd) back where they were.
"""

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import unittest
import zlib

from ctltest import FETCHCTL, ControlTestCase, Fetchd, clean_env, spec
from faultserver import FaultServer, _respond
from fetchtest import Nginx, file_sha256, inline_bytes, remove_tree, tmpdir

CI = os.environ.get("CI") == "true"
DECODER_HEAP = ("zlib", "brotli", "zstd")
TOOL_TIMEOUT = 60


def text_body(size):
    """Compressible text that is not all the same byte."""
    line = b"fetchd decodes gzip, deflate, br and zstd as the body streams in. %06d\n"
    out, i = [], 0
    total = 0
    while total < size:
        chunk = line % i
        out.append(chunk)
        total += len(chunk)
        i += 1
    return b"".join(out)[:size]


def sha(data):
    return hashlib.sha256(data).hexdigest()


def tool(name):
    """The path of a command-line tool; missing fails under CI=true, else skips."""
    path = shutil.which(name)
    if path is None:
        if CI:
            raise AssertionError("%s is required under CI=true (Debian package %s)"
                                 % (name, name))
        raise unittest.SkipTest("%s not installed (Debian package %s)" % (name, name))
    return path


def run_tool(argv, data):
    p = subprocess.run(argv, input=data, capture_output=True, timeout=TOOL_TIMEOUT)
    if p.returncode != 0:
        raise AssertionError("%s failed: %s" % (argv, p.stderr[-500:]))
    return p.stdout


def zstd_encode(data):
    return run_tool([tool("zstd"), "-q", "-c", "-3"], data)


def br_encode(data):
    return run_tool([tool("brotli"), "-c", "-q", "5"], data)


def raw_deflate(data):
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def gzip_zeros(total, chunk=1 << 20):
    """gzip of `total` zero bytes, streamed (never holds the zeros at once)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(chunk)
    parts = [c.compress(zeros) for _ in range(total // chunk)]
    parts.append(c.flush())
    return b"".join(parts)


PLAIN = text_body(300 * 1024)
BIG = text_body(3 * 1024 * 1024)


class DecodingNginx(Nginx):
    """nginx with its gzip filter on /gz/ and gzip_static on /static/."""

    def __init__(self):
        super().__init__()
        self.extra = {"/gz/text.txt": BIG, "/static/page.txt": PLAIN,
                      "/static/page.txt.gz": gzip.compress(PLAIN, 6, mtime=0)}
        self.gz_static = self.extra["/static/page.txt.gz"]

    def _config(self):
        base = super()._config()
        extra = """        location /gz/ { gzip on; gzip_types *; gzip_min_length 0; gzip_comp_level 5; }
        location /static/ { gzip_static on; }
"""
        at = base.index("        location = /status/404")
        return base[:at] + extra + base[at:]

    def _write_tree(self):
        conf = super()._write_tree()
        html = os.path.join(self.prefix, "html")
        for d in ("gz", "static"):
            os.makedirs(os.path.join(html, d))
        for path, data in self.extra.items():
            with open(html + path, "wb") as f:
                f.write(data)
        return conf


def serve(srv, path, body, headers):
    """Adds a route to the fault server that answers with these bytes."""
    def handler(conn, req):
        return _respond(conn, req, 200, body, headers)
    srv._behaviours.table[path] = handler


def start_checked(case, args):
    """Starts fetchd for case; at the end (in this order): counts back at the
    baseline, then a clean exit (status 0, and in a sanitizer build no ASan,
    LeakSanitizer or UBSan report), then the daemon's files removed."""
    d = case.start_fetchd(args, check_end=False)
    baseline = case.take_baseline(d)
    case.addCleanup(check_clean_exit, case, d)
    case.addCleanup(case.check_clean_end, d, baseline)
    return d


def check_clean_exit(case, d):
    if d.proc.poll() is None:
        d.stop()
    log = d.log()
    for mark in ("Sanitizer", "runtime error:"):
        case.assertNotIn(mark, log, "fetchd reported%s" % d.log_tail(8000))
    case.assertEqual(d.proc.returncode, 0, "fetchd's exit status%s" % d.log_tail())


class Decoding(ControlTestCase):
    ARGS = []

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.nginx = DecodingNginx().start()
        cls.addClassCleanup(cls.nginx.stop)
        cls.srv = FaultServer().start()
        cls.addClassCleanup(cls.srv.stop)
        gz = gzip.compress(PLAIN, 6, mtime=0)
        routes = {
            "/gzip": (gz, "gzip"),
            "/x-gzip": (gz, "x-gzip"),
            "/deflate": (zlib.compress(PLAIN, 6), "deflate"),
            "/raw-deflate": (raw_deflate(PLAIN), "deflate"),
            "/identity": (PLAIN, "identity"),
            "/members": (gz + gzip.compress(PLAIN, 1, mtime=0), "gzip"),
            "/truncated": (gz[:len(gz) // 2], "gzip"),
            "/no-trailer": (gz[:-8], "gzip"),
            "/corrupt": (gz[:100] + bytes(b ^ 0x55 for b in gz[100:400]) + gz[400:], "gzip"),
            "/not-gzip": (PLAIN[:5000], "gzip"),
            "/unknown": (PLAIN[:5000], "compress"),
            "/bomb": (gzip.compress(gzip_zeros(256 << 20), 9, mtime=0), "gzip, gzip"),
            "/big-gzip": (gzip.compress(BIG, 6, mtime=0), "gzip"),
        }
        for path, (body, coding) in routes.items():
            serve(cls.srv, path, body, [("Content-Encoding", coding)])
        cls.bodies = {path: body for path, (body, coding) in routes.items()}

    def setUp(self):
        start_checked(self, ["--idle-timeout", "1"] + self.ARGS)
        self.c = self.connect()
        self.heap0 = self.decoder_heap()
        self.addCleanup(self.check_decoder_heap)

    def decoder_heap(self):
        heap = self.stats(self.c)["heap"]
        return {k: heap[k]["blocks"] for k in DECODER_HEAP}

    def check_decoder_heap(self):
        if self.daemon.proc.poll() is None:
            self.assertEqual(self.decoder_heap(), self.heap0, self.ctx())

    def fetch(self, url, **fields):
        fields.setdefault("output", "inline")
        fields.setdefault("sha256", True)
        jid = self.submit(self.c, [spec(url, **fields)])[0]
        return self.wait_job(self.c, jid)

    def assert_decoded(self, job, body, coding):
        self.assertEqual(job["state"], "done", job)
        self.assertEqual(job["content_encoding"], coding, job)
        self.assertTrue(job.get("decoded"), job)
        self.assertEqual(job["bytes"], len(body), job)
        self.assertEqual(job["sha256"], sha(body), job)
        if "inline" in job:
            self.assertEqual(inline_bytes(job), body)

    def assert_failed(self, job, code):
        self.assertEqual(job["state"], "failed", job)
        self.assertEqual(job["error"]["code"], code, job)

    # ---- the fault server: every coding -----------------------------------------

    def test_every_coding_decoded(self):
        cases = [("/gzip", "gzip"), ("/x-gzip", "x-gzip"), ("/deflate", "deflate"),
                 ("/raw-deflate", "deflate"), ("/members", "gzip")]
        for path, coding in cases:
            with self.subTest(path=path):
                job = self.fetch(self.srv.url(path), decode=True)
                want = PLAIN * 2 if path == "/members" else PLAIN
                self.assert_decoded(job, want, coding)
                self.assertEqual(job["wire_bytes"], len(self.bodies[path]), job)
                self.assertLess(job["wire_bytes"], job["bytes"], job)

    def test_request_offers_every_coding(self):
        before = len([r for r in self.srv.requests() if r["path"] == "/gzip"])
        self.fetch(self.srv.url("/gzip"), decode=True)
        self.fetch(self.srv.url("/gzip"))
        hits = [r for r in self.srv.requests() if r["path"] == "/gzip"][before:]
        self.assertEqual(len(hits), 2)
        offered = [dict((k.lower(), v) for k, v in h["headers"]).get("accept-encoding")
                   for h in hits]
        self.assertEqual(offered, ["gzip, deflate, br, zstd", None])

    def test_zstd_and_stacked(self):
        zs = zstd_encode(PLAIN)
        serve(self.srv, "/zstd", zs, [("Content-Encoding", "zstd")])
        self.assert_decoded(self.fetch(self.srv.url("/zstd"), decode=True), PLAIN, "zstd")
        # Applied in order: gzip first, then zstd; two fields are one list.
        stacked = zstd_encode(gzip.compress(PLAIN, mtime=0))
        serve(self.srv, "/gzip-zstd", stacked,
              [("Content-Encoding", "gzip"), ("Content-Encoding", "zstd")])
        self.assert_decoded(self.fetch(self.srv.url("/gzip-zstd"), decode=True), PLAIN,
                            "gzip, zstd")

    def test_br_and_stacked(self):
        br = br_encode(PLAIN)
        serve(self.srv, "/br", br, [("Content-Encoding", "br")])
        self.assert_decoded(self.fetch(self.srv.url("/br"), decode=True), PLAIN, "br")
        three = br_encode(zstd_encode(gzip.compress(PLAIN, mtime=0)))
        serve(self.srv, "/three", three, [("Content-Encoding", "gzip, zstd, br")])
        self.assert_decoded(self.fetch(self.srv.url("/three"), decode=True), PLAIN,
                            "gzip, zstd, br")

    def test_head_has_nothing_to_decode(self):
        job = self.fetch(self.srv.url("/gzip"), decode=True, method="HEAD")
        self.assertEqual(job["state"], "done", job)
        self.assertEqual(job["content_encoding"], "gzip")
        self.assertEqual(job["bytes"], 0)
        self.assertEqual(job["wire_bytes"], 0)
        self.assertEqual(job["sha256"], sha(b""))

    def test_identity_is_not_decoding(self):
        job = self.fetch(self.srv.url("/identity"), decode=True)
        self.assertEqual(job["state"], "done", job)
        self.assertEqual(job["content_encoding"], "identity")
        self.assertNotIn("decoded", job)
        self.assertEqual(job["bytes"], len(PLAIN))
        self.assertEqual(job["wire_bytes"], len(PLAIN))

    # ---- without decode: stored as received, reported ---------------------------

    def test_without_decode_body_is_left_as_is(self):
        job = self.fetch(self.srv.url("/gzip"))
        self.assertEqual(job["state"], "done", job)
        self.assertEqual(job["content_encoding"], "gzip")
        self.assertNotIn("decoded", job)
        self.assertEqual(job["bytes"], len(self.bodies["/gzip"]))
        self.assertEqual(job["wire_bytes"], len(self.bodies["/gzip"]))
        self.assertEqual(inline_bytes(job), self.bodies["/gzip"])
        # Even an unknown or corrupt coding is not our business then.
        for path in ("/unknown", "/corrupt", "/truncated"):
            job = self.fetch(self.srv.url(path))
            self.assertEqual(job["state"], "done", job)
            self.assertEqual(inline_bytes(job), self.bodies[path])

    def test_decode_false_overrides_nothing_by_default(self):
        job = self.fetch(self.srv.url("/gzip"), decode=False)
        self.assertEqual(job["bytes"], len(self.bodies["/gzip"]), job)

    # ---- broken streams ---------------------------------------------------------

    def test_truncated_stream_with_complete_framing(self):
        for path in ("/truncated", "/no-trailer"):
            with self.subTest(path=path):
                job = self.fetch(self.srv.url(path), decode=True)
                self.assert_failed(job, "content_decoding")
                self.assertIn("truncated", job["error"]["message"])

    def test_corrupt_stream(self):
        for path in ("/corrupt", "/not-gzip"):
            with self.subTest(path=path):
                job = self.fetch(self.srv.url(path), decode=True)
                self.assert_failed(job, "content_decoding")
                self.assertIn("gzip", job["error"]["message"])

    def test_unknown_coding_refused_when_decoding(self):
        job = self.fetch(self.srv.url("/unknown"), decode=True)
        self.assert_failed(job, "content_decoding")
        self.assertIn("unknown content coding 'compress'", job["error"]["message"])

    def test_truncated_file_leaves_no_file(self):
        job = self.fetch(self.srv.url("/truncated"), decode=True, output="cut.txt")
        self.assert_failed(job, "content_decoding")
        self.assertEqual(os.listdir(self.daemon.download_dir), [])

    # ---- bounds -----------------------------------------------------------------

    def test_bomb_stopped_by_ratio_cap(self):
        # 256 MiB of zeros in two layers of gzip: a few hundred bytes on the wire.
        self.assertLess(len(self.bodies["/bomb"]), 1 << 20)
        job = self.fetch(self.srv.url("/bomb"), decode=True, output="discard", sha256=False)
        self.assert_failed(job, "content_decoding")
        self.assertIn("times the encoded size", job["error"]["message"])
        self.assertLess(job["bytes"], 64 << 20, job)

    def test_max_body_applies_to_decoded_size(self):
        wire = len(self.bodies["/big-gzip"])
        self.assertLess(wire, 1 << 20)
        job = self.fetch(self.srv.url("/big-gzip"), decode=True, output="discard",
                         max_body=1 << 20)
        self.assert_failed(job, "body_too_large")
        self.assertIn("decoded body exceeds max_body", job["error"]["message"])
        # Without decoding, the same limit lets the compressed bytes through.
        job = self.fetch(self.srv.url("/big-gzip"), output="discard", max_body=1 << 20)
        self.assertEqual(job["state"], "done", job)
        self.assertEqual(job["bytes"], wire)

    # ---- nginx ------------------------------------------------------------------

    def test_nginx_gzip_filter_to_file(self):
        job = self.fetch(self.nginx.url("/gz/text.txt"), decode=True, output="text.txt")
        self.assert_decoded(job, BIG, "gzip")
        self.assertLess(job["wire_bytes"], len(BIG) // 4, job)
        path = os.path.join(self.daemon.download_dir, "text.txt")
        self.assertEqual(file_sha256(path), sha(BIG))

    def test_nginx_without_decode_sends_identity(self):
        job = self.fetch(self.nginx.url("/gz/text.txt"), output="discard")
        self.assertEqual(job["state"], "done", job)
        self.assertNotIn("content_encoding", job)
        self.assertEqual(job["bytes"], len(BIG))
        self.assertEqual(job["wire_bytes"], len(BIG))
        self.assertEqual(job["sha256"], sha(BIG))

    def test_nginx_gzip_static_asked_by_hand(self):
        # The job's own Accept-Encoding without decode: curl's behaviour, the
        # .gz file as it is, its coding reported.
        url = self.nginx.url("/static/page.txt")
        job = self.fetch(url, headers=[["Accept-Encoding", "gzip"]])
        self.assertEqual(job["state"], "done", job)
        self.assertEqual(job["content_encoding"], "gzip")
        self.assertEqual(inline_bytes(job), self.nginx.gz_static)
        job = self.fetch(url, decode=True)
        self.assert_decoded(job, PLAIN, "gzip")
        self.assertEqual(job["wire_bytes"], len(self.nginx.gz_static))

    # ---- fetchctl ---------------------------------------------------------------

    def ctl(self, *args):
        p = subprocess.run([FETCHCTL] + [str(a) for a in args], capture_output=True, text=True,
                           env=clean_env(FETCHD_SOCKET=self.daemon.socket), timeout=120,
                           stdin=subprocess.DEVNULL)
        return p

    def test_fetchctl_compressed(self):
        p = self.ctl("submit", "--wait", "--json", "--compressed", "--sha256", "-o", "c.txt",
                     self.nginx.url("/gz/text.txt"))
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        job = json.loads(p.stdout.splitlines()[-1])
        self.assert_decoded(job, BIG, "gzip")
        self.assertEqual(file_sha256(os.path.join(self.daemon.download_dir, "c.txt")), sha(BIG))
        p = self.ctl("submit", "--wait", "--compressed", self.srv.url("/truncated"))
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("content_decoding", p.stdout + p.stderr)

    def test_fetchctl_help_names_compressed(self):
        p = self.ctl("submit", "--help")
        self.assertIn("--compressed", p.stdout + p.stderr)


class DecodingByDefault(ControlTestCase):
    """decode on in the daemon: jobs decode unless they say decode: false."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.srv = FaultServer().start()
        cls.addClassCleanup(cls.srv.stop)
        serve(cls.srv, "/gzip", gzip.compress(PLAIN, mtime=0), [("Content-Encoding", "gzip")])
        serve(cls.srv, "/bomb", gzip_zeros(64 << 20), [("Content-Encoding", "gzip")])

    def test_default_and_override(self):
        start_checked(self, ["--idle-timeout", "1", "--decode", "on", "--decode-max-ratio", "100"])
        c = self.connect()
        jid = self.submit(c, [spec(self.srv.url("/gzip"), output="inline")])[0]
        job = self.wait_job(c, jid)
        self.assertTrue(job.get("decoded"), job)
        self.assertEqual(inline_bytes(job), PLAIN)
        jid = self.submit(c, [spec(self.srv.url("/gzip"), output="inline", decode=False)])[0]
        job = self.wait_job(c, jid)
        self.assertNotIn("decoded", job)
        self.assertEqual(job["bytes"], job["wire_bytes"])
        # 64 MiB of zeros in one gzip layer is a ratio of about 1000: past 100.
        jid = self.submit(c, [spec(self.srv.url("/bomb"))])[0]
        job = self.wait_job(c, jid)
        self.assertEqual(job["state"], "failed", job)
        self.assertEqual(job["error"]["code"], "content_decoding", job)

    def test_default_is_off(self):
        start_checked(self, ["--idle-timeout", "1"])
        c = self.connect()
        jid = self.submit(c, [spec(self.srv.url("/gzip"), output="inline")])[0]
        job = self.wait_job(c, jid)
        self.assertNotIn("decoded", job)
        self.assertEqual(job["content_encoding"], "gzip")

    def test_config_file(self):
        conf = os.path.join(tmpdir("decode-conf-"), "fetchd.json")
        self.addCleanup(remove_tree, os.path.dirname(conf))
        with open(conf, "w") as f:
            json.dump({"decode": True, "decode_max_ratio": 0}, f)
        start_checked(self, ["--idle-timeout", "1", "-c", conf])
        c = self.connect()
        # No ratio cap: 64 MiB of zeros decodes (and is discarded).
        jid = self.submit(c, [spec(self.srv.url("/bomb"))])[0]
        job = self.wait_job(c, jid)
        self.assertEqual(job["state"], "done", job)
        self.assertTrue(job.get("decoded"), job)
        self.assertEqual(job["bytes"], 64 << 20)

    def test_bad_setting_refused(self):
        d = Fetchd(["--decode", "maybe"])
        self.addCleanup(d.cleanup)
        self.assertEqual(d.wait_exit(), 64, d.log_tail())
        self.assertIn("decode", d.log())
        conf = os.path.join(tmpdir("decode-conf-"), "fetchd.json")
        self.addCleanup(remove_tree, os.path.dirname(conf))
        with open(conf, "w") as f:
            f.write('{\n  "decode": "yes"\n}\n')
        d = Fetchd(["-c", conf])
        self.addCleanup(d.cleanup)
        self.assertEqual(d.wait_exit(), 78, d.log_tail())
        self.assertIn("fetchd.json:2: \"decode\" must be true or false", d.log())


if __name__ == "__main__":
    unittest.main()
