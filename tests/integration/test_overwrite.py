"""An existing output file is never clobbered by surprise (issue 14).

A non-2xx final response never replaces the target (the job is done with
its status; the first 4 KiB of the body are in error_body); the overwrite
policy (replace, never, newer) decides what a 2xx does; mkdirs creates
missing directories only inside the download directory; the file gets the
server's Last-Modified as its mtime.

Every test drives the real fetchd over its control socket (ctltest), against
nginx (fetchtest.Nginx) and the fault server (faultserver.py), and ends with
every live count back at its baseline (ControlTestCase.check_clean_end).
"""

import email.utils
import hashlib
import os
import subprocess
import unittest

from ctltest import FETCHCTL, ControlTestCase, spec
from faultserver import FaultServer, pattern
from fetchtest import NGINX, SLOWDOWN, Nginx, missing_tools, remove_tree, tmpdir

LIMIT = 30.0 * SLOWDOWN
OLD = b"the good old file\n" * 200
OLD_MTIME = 1000000000  # 2001-09-09
LM = "Wed, 21 Oct 2015 07:28:00 GMT"
LM_EPOCH = 1445412480


def header(req, name):
    for key, value in req["headers"]:
        if key.lower() == name:
            return value
    return None


def http_date(t):
    return email.utils.formatdate(t, usegmt=True)


class OverwriteTest(ControlTestCase):
    """Every policy against 200, 206, 304, 404 and 500 from the fault server."""

    # What each status is: the path and extra request headers.
    RESPONSES = {
        200: ("/ranged?size=5000", {}),
        206: ("/ranged?size=5000", {"Range": "bytes=1000-"}),
        304: ("/not-modified", {}),
        404: ("/status?code=404", {}),
        500: ("/status?code=500", {}),
    }

    def setUp(self):
        self.srv = FaultServer().start()
        self.d = self.start_fetchd()
        self.addCleanup(self.srv.stop)  # before the count check: idle connections close
        self.c = self.connect()

    def target(self, name):
        return os.path.join(self.d.download_dir, name)

    def plant(self, name):
        path = self.target(name)
        with open(path, "wb") as f:
            f.write(OLD)
        os.utime(path, (OLD_MTIME, OLD_MTIME))
        return path

    def run_job(self, url, output, **fields):
        jid = self.submit(self.c, [spec(url, output=output, **fields)])[0]
        return self.wait_job(self.c, jid, timeout=LIMIT)

    def assert_untouched(self, path):
        with open(path, "rb") as f:
            self.assertEqual(f.read(), OLD)
        self.assertEqual(int(os.stat(path).st_mtime), OLD_MTIME)

    def assert_only(self, names):
        self.assertEqual(sorted(os.listdir(self.d.download_dir)), sorted(names))
        # Nothing beside the download directory either.
        self.assertEqual(sorted(os.listdir(self.d.dir)), ["control.sock", "downloads",
                                                          "fetchd.log"])

    def check(self, policy, status):
        name = "%s-%d.bin" % (policy, status)
        path = self.plant(name)
        target, headers = self.RESPONSES[status]
        url = self.srv.url(target + ("&" if "?" in target else "?") + "p=" + name)
        hits = len(self.srv.requests())
        job = self.run_job(url, name, overwrite=policy, headers=headers)
        sent = self.srv.requests()[hits:]
        if policy == "never":
            self.assertEqual(job["state"], "failed", job)
            self.assertEqual(job["error"]["code"], "exists", job)
            self.assertEqual(sent, [], "a request was sent")
            self.assert_untouched(path)
            return
        self.assertEqual(job["state"], "done", job)
        self.assertEqual(job["http_status"], status, job)
        self.assertEqual(len(sent), 1, sent)
        ims = header(sent[0], "if-modified-since")
        self.assertEqual(ims, http_date(OLD_MTIME) if policy == "newer" else None, sent[0])
        if status in (200, 206):
            with open(path, "rb") as f:
                self.assertEqual(f.read(), pattern(5000)[1000 if status == 206 else 0:])
            self.assertEqual(int(os.stat(path).st_mtime), LM_EPOCH)
            self.assertEqual(job["output"], path, job)
            self.assertNotIn("error_body", job)
        else:
            self.assert_untouched(path)
            self.assertNotIn("output", job)
            self.assertEqual(job.get("not_modified", False), status == 304 and policy == "newer",
                             job)
            if status >= 400:
                self.assertEqual(job["error_body"], {"encoding": "text",
                                                     "data": "status %d\n" % status}, job)

    def test_every_policy_and_status(self):
        names = []
        for policy in ("replace", "never", "newer"):
            for status in sorted(self.RESPONSES):
                with self.subTest(policy=policy, status=status):
                    self.check(policy, status)
                names.append("%s-%d.bin" % (policy, status))
        self.assert_only(names)

    def test_never_writes_a_missing_target(self):
        job = self.run_job(self.srv.url("/ranged?size=5000"), "new.bin", overwrite="never")
        self.assertEqual(job["state"], "done", job)
        with open(self.target("new.bin"), "rb") as f:
            self.assertEqual(f.read(), pattern(5000))

    def test_error_body_is_capped(self):
        self.srv.serve_raw("/big-404", b"HTTP/1.1 404 Not Found\r\nContent-Length: 100000\r\n"
                           b"Connection: close\r\n\r\n" + b"e" * 100000)
        path = self.plant("capped.bin")
        job = self.run_job(self.srv.url("/big-404"), "capped.bin")
        self.assertEqual(job["state"], "done", job)
        self.assertEqual(job["bytes"], 100000, job)
        self.assert_untouched(path)
        self.assertEqual(job["error_body"]["data"], "e" * 4096, job)

    def test_404_and_304_never_clobber_by_default(self):
        """The regression of issue 14: a 404 replaced the file with the error
        page, a 304 with an empty file. No new field is used here."""
        for target in ("/status?code=404", "/not-modified"):
            with self.subTest(target=target):
                path = self.plant("default.bin")
                job = self.run_job(self.srv.url(target), "default.bin")
                self.assertEqual(job["state"], "done", job)
                self.assert_untouched(path)
                self.assertNotIn("output", job)
        self.assert_only(["default.bin"])

    def test_fail_on_http_error_leaves_the_target(self):
        path = self.plant("fail.bin")
        job = self.run_job(self.srv.url("/status?code=404"), "fail.bin", fail_on_http_error=True)
        self.assertEqual(job["error"]["code"], "http_error", job)
        self.assert_untouched(path)
        self.assert_only(["fail.bin"])

    def test_bad_policy_is_refused(self):
        resp = self.c.call("submit", {"jobs": [spec(self.srv.url("/cl"), output="x",
                                                    overwrite="sometimes")]})
        err = self.assert_error(resp, -32602)
        self.assertIn("overwrite", err["message"] + str(err.get("data")))


class MkdirsTest(ControlTestCase):
    def setUp(self):
        self.srv = FaultServer().start()
        self.d = self.start_fetchd()
        self.addCleanup(self.srv.stop)
        self.c = self.connect()
        self.outside = tmpdir("outside-")
        self.addCleanup(remove_tree, self.outside)

    def submit_one(self, output, **fields):
        return self.c.call("submit", {"jobs": [spec(self.srv.url("/ranged?size=100"),
                                                    output=output, **fields)]})

    def test_creates_missing_directories(self):
        jid = self.assert_result(self.submit_one("a/b/c/file.bin", mkdirs=True))["ids"][0]
        job = self.wait_job(self.c, jid, timeout=LIMIT)
        self.assertEqual(job["state"], "done", job)
        with open(os.path.join(self.d.download_dir, "a/b/c/file.bin"), "rb") as f:
            self.assertEqual(f.read(), pattern(100))

    def test_without_mkdirs_a_missing_directory_is_refused(self):
        self.assert_error(self.submit_one("nope/file.bin"), -32602)
        self.assertEqual(os.listdir(self.d.download_dir), [])

    def test_never_escapes(self):
        link = os.path.join(self.d.download_dir, "link")
        os.symlink(self.outside, link)
        before = sorted(os.listdir(os.path.dirname(self.d.download_dir)))
        for output in ("../escape/file.bin", "link/new/file.bin", "a/../../escape/file.bin",
                       os.path.join(self.outside, "abs/file.bin")):
            with self.subTest(output=output):
                self.assert_error(self.submit_one(output, mkdirs=True), -32602)
        self.assertEqual(os.listdir(self.outside), [])
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.d.download_dir))), before)
        self.assertEqual(os.listdir(self.d.download_dir), ["link"])


class DefaultPolicyTest(ControlTestCase):
    def test_daemon_default_never(self):
        srv = FaultServer().start()
        d = self.start_fetchd(["--overwrite", "never"])
        self.addCleanup(srv.stop)
        c = self.connect()
        with open(os.path.join(d.download_dir, "kept.bin"), "wb") as f:
            f.write(OLD)
        jid = self.submit(c, [spec(srv.url("/ranged?size=10"), output="kept.bin")])[0]
        job = self.wait_job(c, jid, timeout=LIMIT)
        self.assertEqual(job["error"]["code"], "exists", job)
        # The job's own policy wins over the daemon's.
        jid = self.submit(c, [spec(srv.url("/ranged?size=10"), output="kept.bin",
                                   overwrite="replace")])[0]
        self.assertEqual(self.wait_job(c, jid, timeout=LIMIT)["state"], "done")

    def test_fetchctl_options(self):
        srv = FaultServer().start()
        d = self.start_fetchd()
        self.addCleanup(srv.stop)
        with open(os.path.join(d.download_dir, "f.bin"), "wb") as f:
            f.write(OLD)
        base = [FETCHCTL, "-s", d.socket, "submit", "--wait"]
        p = subprocess.run(base + ["--overwrite", "never", "-o", "f.bin",
                                   srv.url("/ranged?size=10")],
                           capture_output=True, text=True, timeout=LIMIT)
        self.assertEqual(p.returncode, 1, p)
        self.assertIn("exists", p.stdout + p.stderr)
        p = subprocess.run(base + ["--mkdirs", "-o", "x/y/g.bin", srv.url("/ranged?size=10")],
                           capture_output=True, text=True, timeout=LIMIT)
        self.assertEqual(p.returncode, 0, p)
        self.assertTrue(os.path.exists(os.path.join(d.download_dir, "x/y/g.bin")))


class NginxNewerTest(ControlTestCase):
    """Against a real nginx: the file gets the Last-Modified of nginx's file as
    its mtime, so a second job with overwrite "newer" gets a 304 (nginx's
    If-Modified-Since is exact by default) and leaves the file alone; a 404
    from nginx never replaces it."""

    def test_newer_round_trip(self):
        reason = missing_tools((NGINX, "nginx"))
        if reason:
            self.skipTest(reason)
        nginx = Nginx().start()
        self.addCleanup(nginx.stop)
        d = self.start_fetchd()
        c = self.connect()
        url = nginx.url("/1m.bin")
        path = os.path.join(d.download_dir, "1m.bin")
        served = os.path.join(nginx.prefix, "html", "1m.bin")

        jid = self.submit(c, [spec(url, output="1m.bin", overwrite="newer", sha256=True)])[0]
        job = self.wait_job(c, jid, timeout=LIMIT)
        self.assertEqual((job["state"], job["http_status"]), ("done", 200), job)
        self.assertEqual(job["sha256"], nginx.sha256("/1m.bin"), job)
        self.assertEqual(int(os.stat(path).st_mtime), int(os.stat(served).st_mtime))
        inode = os.stat(path).st_ino

        jid = self.submit(c, [spec(url, output="1m.bin", overwrite="newer")])[0]
        job = self.wait_job(c, jid, timeout=LIMIT)
        self.assertEqual((job["state"], job["http_status"]), ("done", 304), job)
        self.assertTrue(job.get("not_modified"), job)
        self.assertEqual(os.stat(path).st_ino, inode)
        with open(path, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), nginx.sha256("/1m.bin"))

        jid = self.submit(c, [spec(nginx.url("/status/404"), output="1m.bin")])[0]
        job = self.wait_job(c, jid, timeout=LIMIT)
        self.assertEqual((job["state"], job["http_status"]), ("done", 404), job)
        self.assertEqual(os.stat(path).st_ino, inode)
        self.assertIn("404", job["error_body"]["data"], job)
        self.assertEqual(sorted(os.listdir(d.download_dir)), ["1m.bin"])
        nginx.stop()  # before the count check: its idle connection closes


if __name__ == "__main__":
    unittest.main()
