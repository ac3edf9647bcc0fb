"""Resumable file output (issue 14): a job with "resume" keeps its partial
file beside the target (".<name>.fetchd-part", its validator in
".<name>.fetchd-meta"), and a later job for the same target asks for the
rest with Range and If-Range.

Every test drives the real fetchd over its control socket (ctltest) or
fetchctl, against the /ranged route of faultserver.py (a server that cuts
the connection after N bytes and honours Range/If-Range), and ends with
every live count back at its baseline (ControlTestCase.check_clean_end).
"""

import hashlib
import json
import os
import subprocess
import sys
import time
import unittest

from ctltest import FETCHCTL, ControlTestCase, Fetchd, spec
from faultserver import FaultServer, pattern
from fetchtest import SLOWDOWN, remove_tree, tmpdir

# Every bounded wait of this module, in seconds.
LIMIT = 60.0 * SLOWDOWN
BIG = 64 << 20
CUT = BIG * 3 // 10
LM = "Wed, 21 Oct 2015 07:28:00 GMT"
LM_EPOCH = 1445412480


def sha(data):
    return hashlib.sha256(data).hexdigest()


def header(req, name):
    for key, value in req["headers"]:
        if key.lower() == name:
            return value
    return None


class ResumeTest(ControlTestCase):

    def setUp(self):
        self.srv = FaultServer().start()
        self.addCleanup(self.srv.stop)

    def start(self, args=(), **kw):
        """fetchd, and the server stopped before the end's count check (the
        checks run last-registered first): an idle keep-alive connection to
        it is then closed by the server, as it must be."""
        d = self.start_fetchd(args, **kw)
        self.addCleanup(self.srv.stop)
        return d

    def assert_quiet(self, c, limit=20.0):
        """No connection, request or buffer left in use (bounded wait)."""
        deadline = time.monotonic() + limit * SLOWDOWN
        while True:
            s = self.stats(c)
            busy = (sum(s["connections"].values()), s["objects"]["conn"],
                    s["objects"]["request"], s["buffers"]["in_use"], s["jobs"]["running"])
            if busy == (0, 0, 0, 0, 0):
                return
            if time.monotonic() > deadline:
                self.fail("counts not back to zero: %r%s" % (busy, self.ctx()))
            time.sleep(0.1)

    def ranged(self):
        return [r for r in self.srv.requests() if r["path"] == "/ranged"]

    def files(self, d):
        return sorted(os.listdir(d.download_dir))

    def part(self, d, name):
        return os.path.join(d.download_dir, "." + name + ".fetchd-part")

    def meta(self, d, name):
        return os.path.join(d.download_dir, "." + name + ".fetchd-meta")

    def run_job(self, c, url, output, **fields):
        jid = self.submit(c, [spec(url, output=output, sha256=True, resume=True, **fields)])[0]
        return self.wait_job(c, jid, timeout=LIMIT)

    def cut_once(self, at, stall=False):
        self.srv.ranged_cuts = 1
        self.srv.ranged_cut_at = at
        self.srv.ranged_stall = stall

    def test_cut_at_30_percent_then_resumed(self):
        d = self.start()
        c = self.connect()
        url = self.srv.url("/ranged?size=%d" % BIG)
        self.cut_once(CUT)
        first = self.run_job(c, url, "big.bin")
        self.assertEqual(first["state"], "failed", first)
        self.assertEqual(first["error"]["code"], "truncated", first)
        self.assertEqual(first["bytes"], CUT, first)
        # The partial file stays, never under the target's name.
        self.assertEqual(self.files(d), [".big.bin.fetchd-meta", ".big.bin.fetchd-part"])
        self.assertEqual(os.path.getsize(self.part(d, "big.bin")), CUT)
        with open(self.meta(d, "big.bin")) as f:
            self.assertEqual(f.read(), '"v1"\n%s\n' % url)

        second = self.run_job(c, url, "big.bin")
        self.assertEqual(second["state"], "done", second)
        self.assertEqual(second["http_status"], 206, second)
        self.assertEqual(second["resumed_from"], CUT, second)
        self.assertEqual(second["bytes"], BIG - CUT, second)
        self.assertEqual(second["sha256"], sha(pattern(BIG)), second)
        reqs = self.ranged()
        self.assertEqual(len(reqs), 2, reqs)
        self.assertIsNone(header(reqs[0], "range"))
        self.assertEqual(header(reqs[1], "range"), "bytes=%d-" % CUT)
        self.assertEqual(header(reqs[1], "if-range"), '"v1"')
        path = os.path.join(d.download_dir, "big.bin")
        with open(path, "rb") as f:
            self.assertEqual(sha(f.read()), sha(pattern(BIG)))
        self.assertEqual(int(os.stat(path).st_mtime), LM_EPOCH)
        self.assertEqual(self.files(d), ["big.bin"])
        sys.stderr.write("\n  resume numbers: first attempt %d bytes (cut at 30%% of %d), "
                         "second attempt %d bytes after 'Range: %s', If-Range %s\n"
                         % (first["bytes"], BIG, second["bytes"], header(reqs[1], "range"),
                            header(reqs[1], "if-range")))

    def test_paused_past_the_keep_bound_resumes_with_range(self):
        """A resumable job paused until its connection goes (--pause-keep)
        continues its partial file with Range when resumed, rather than
        starting over (issue 14: "else the job resumes with a Range
        request")."""
        size = 4 << 20
        d = self.start(["--pause-keep", "1"])
        c = self.connect()
        url = self.srv.url("/ranged?size=%d" % size)
        jid = self.submit(c, [spec(url, output="paused.bin", sha256=True, resume=True,
                                   limit_rate=256 * 1024)])[0]
        deadline = time.monotonic() + LIMIT
        while c.result("status", {"id": jid})["wire_bytes"] < 256 * 1024:
            self.assertLess(time.monotonic(), deadline, "the download never started")
            time.sleep(0.05)
        c.result("pause", {"id": jid})
        while sum(self.stats(c)["connections"].values()) > 0:  # the keep bound passes
            self.assertLess(time.monotonic(), deadline, "the paused connection stayed")
            time.sleep(0.05)
        kept = os.path.getsize(self.part(d, "paused.bin"))
        self.assertGreater(kept, 0)
        c.result("set", {"id": jid, "limit_rate": 0})
        c.result("resume", {"id": jid})
        job = self.wait_job(c, jid, timeout=LIMIT)
        self.assertEqual((job["state"], job["http_status"]), ("done", 206), job)
        self.assertEqual(job["resumed_from"], kept, job)
        self.assertEqual(job["sha256"], sha(pattern(size)), job)
        reqs = self.ranged()
        self.assertEqual(len(reqs), 2, reqs)
        self.assertEqual(header(reqs[1], "range"), "bytes=%d-" % kept)
        self.assertEqual(header(reqs[1], "if-range"), '"v1"')
        with open(os.path.join(d.download_dir, "paused.bin"), "rb") as f:
            self.assertEqual(sha(f.read()), sha(pattern(size)))
        self.assertEqual(self.files(d), ["paused.bin"])

    def test_changed_etag_starts_over(self):
        d = self.start()
        c = self.connect()
        size = 4 << 20
        url = self.srv.url("/ranged?size=%d" % size)
        self.cut_once(size // 3)
        first = self.run_job(c, url, "f.bin")
        self.assertEqual(first["state"], "failed", first)
        self.srv.ranged_etag = '"v2"'
        second = self.run_job(c, url, "f.bin")
        self.assertEqual(second["state"], "done", second)
        self.assertEqual(second["http_status"], 200, second)
        self.assertNotIn("resumed_from", second)
        self.assertEqual(second["bytes"], size, second)
        self.assertEqual(second["sha256"], sha(pattern(size)), second)
        reqs = self.ranged()
        self.assertEqual(header(reqs[1], "range"), "bytes=%d-" % (size // 3))
        self.assertEqual(header(reqs[1], "if-range"), '"v1"')
        self.assertEqual(self.files(d), ["f.bin"])

    def test_last_modified_is_the_validator_without_a_strong_etag(self):
        d = self.start()
        c = self.connect()
        self.srv.ranged_etag = 'W/"weak"'
        url = self.srv.url("/ranged?size=100000")
        self.cut_once(40000)
        self.assertEqual(self.run_job(c, url, "lm.bin")["state"], "failed")
        second = self.run_job(c, url, "lm.bin")
        self.assertEqual(second["state"], "done", second)
        self.assertEqual(second["resumed_from"], 40000, second)
        self.assertEqual(header(self.ranged()[1], "if-range"), LM)
        self.assertEqual(second["sha256"], sha(pattern(100000)), second)
        self.assertEqual(self.files(d), ["lm.bin"])

    def test_no_validator_no_resume(self):
        d = self.start()
        c = self.connect()
        self.srv.ranged_etag = None
        self.srv.ranged_last_modified = None
        url = self.srv.url("/ranged?size=100000")
        self.cut_once(40000)
        self.assertEqual(self.run_job(c, url, "nv.bin")["state"], "failed")
        self.assertEqual(self.files(d), [".nv.bin.fetchd-part"])
        second = self.run_job(c, url, "nv.bin")
        self.assertEqual(second["state"], "done", second)
        self.assertIsNone(header(self.ranged()[1], "range"))
        self.assertEqual(second["bytes"], 100000, second)
        self.assertEqual(self.files(d), ["nv.bin"])

    def plant_partial(self, d, name, data, url, validator='"v1"'):
        with open(self.part(d, name), "wb") as f:
            f.write(data)
        with open(self.meta(d, name), "w") as f:
            f.write("%s\n%s\n" % (validator, url))

    def test_416_with_the_whole_file_completes_it(self):
        """Decision: a 416 whose Content-Range says "bytes */N", N the partial
        file's size, means the partial file is the whole: the job is done
        (http_status 416, resumed_from N) and the file takes the target's
        name, its SHA-256 over the whole file."""
        d = self.start()
        c = self.connect()
        url = self.srv.url("/ranged?size=5000")
        self.plant_partial(d, "whole.bin", pattern(5000), url)
        job = self.run_job(c, url, "whole.bin")
        self.assertEqual(job["state"], "done", job)
        self.assertEqual(job["http_status"], 416, job)
        self.assertEqual(job["resumed_from"], 5000, job)
        self.assertEqual(job["sha256"], sha(pattern(5000)), job)
        self.assertEqual(self.files(d), ["whole.bin"])
        with open(os.path.join(d.download_dir, "whole.bin"), "rb") as f:
            self.assertEqual(f.read(), pattern(5000))

    def test_416_otherwise_starts_over(self):
        """A partial file longer than the resource: the 416 says "bytes */N"
        with another N, so the partial file goes and the job starts over."""
        d = self.start()
        c = self.connect()
        url = self.srv.url("/ranged?size=5000")
        self.plant_partial(d, "long.bin", b"x" * 7000, url)
        job = self.run_job(c, url, "long.bin")
        self.assertEqual(job["state"], "done", job)
        self.assertEqual(job["http_status"], 200, job)
        self.assertEqual(job["sha256"], sha(pattern(5000)), job)
        reqs = self.ranged()
        self.assertEqual([header(r, "range") for r in reqs], ["bytes=7000-", None])
        self.assertEqual(self.files(d), ["long.bin"])

    def test_partial_of_another_url_is_not_resumed(self):
        d = self.start()
        c = self.connect()
        url = self.srv.url("/ranged?size=5000")
        self.plant_partial(d, "other.bin", b"y" * 100, self.srv.url("/elsewhere"))
        job = self.run_job(c, url, "other.bin")
        self.assertEqual(job["state"], "done", job)
        self.assertIsNone(header(self.ranged()[0], "range"))
        self.assertEqual(job["sha256"], sha(pattern(5000)), job)
        self.assertEqual(self.files(d), ["other.bin"])

    def test_without_resume_a_failed_job_leaves_nothing(self):
        d = self.start()
        c = self.connect()
        self.cut_once(40000)
        jid = self.submit(c, [spec(self.srv.url("/ranged?size=100000"), output="plain.bin")])[0]
        job = self.wait_job(c, jid, timeout=LIMIT)
        self.assertEqual(job["state"], "failed", job)
        self.assertEqual(self.files(d), [])

    def test_fetchctl_continue(self):
        d = self.start()
        url = self.srv.url("/ranged?size=300000")
        self.cut_once(100000)
        cmd = [FETCHCTL, "-s", d.socket, "submit", "--wait", "-C", "--sha256", "-o", "c.bin", url]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=LIMIT)
        self.assertEqual(p.returncode, 1, p)
        p = subprocess.run(cmd[:3] + ["--json"] + cmd[3:], capture_output=True, text=True,
                           timeout=LIMIT)
        self.assertEqual(p.returncode, 0, p)
        job = [json.loads(line) for line in p.stdout.splitlines() if line.strip()][-1]
        self.assertEqual(job.get("resumed_from"), 100000, p.stdout)
        self.assertEqual(job.get("sha256"), sha(pattern(300000)), p.stdout)

    def test_old_partial_files_are_swept_at_start(self):
        root = tmpdir("sweep-")
        self.addCleanup(remove_tree, root)
        os.makedirs(os.path.join(root, "sub"))
        old = [".a.bin.fetchd-part", ".a.bin.fetchd-meta", "sub/.b.bin.fetchd-part"]
        kept = [".fresh.bin.fetchd-part", "a.bin", "sub/.notes"]
        for name in old + kept:
            path = os.path.join(root, name)
            with open(path, "wb") as f:
                f.write(b"x")
            if name in old or name != kept[0]:
                t = time.time() - 7200
                os.utime(path, (t, t))
        d = self.start(["--download-dir", root, "--partial-keep", "3600"], download_dir=False)
        deadline = time.monotonic() + LIMIT
        while any(os.path.exists(os.path.join(root, n)) for n in old):
            if time.monotonic() > deadline:
                self.fail("old partial files are still there%s" % d.log_tail())
            time.sleep(0.05)
        for name in kept:
            self.assertTrue(os.path.exists(os.path.join(root, name)), name)
        self.assertIn("removed 3 partial file(s) older than 3600 s", d.log())

    def test_kill_9_mid_download_then_restart_resumes(self):
        root = tmpdir("resume-")
        self.addCleanup(remove_tree, root)
        dl, state = os.path.join(root, "dl"), os.path.join(root, "state")
        os.mkdir(dl)
        os.mkdir(state)
        args = ["--download-dir", dl, "--state-dir", state]
        url = self.srv.url("/ranged?size=%d" % BIG)
        self.cut_once(CUT, stall=True)

        first = Fetchd(args, download_dir=False)
        self.addCleanup(first.cleanup)
        first.wait_ready()
        with first.client() as c:
            jid = self.submit(c, [spec(url, output="k.bin", sha256=True, resume=True)])[0]
        # Events, with bounded waits: the job is in the state file and the
        # partial file holds every byte the server sent before it stalled.
        deadline = time.monotonic() + LIMIT
        part = os.path.join(dl, ".k.bin.fetchd-part")
        qfile = os.path.join(state, "queue.json")
        while time.monotonic() < deadline:
            saved = os.path.exists(qfile) and jid in open(qfile).read()
            if saved and os.path.exists(part) and os.path.getsize(part) == CUT:
                break
            time.sleep(0.05)
        else:
            self.fail("the job was not persisted, or the partial file never reached %d bytes%s"
                      % (CUT, first.log_tail()))
        first.proc.kill()
        first.proc.wait(LIMIT)
        first.returncode = "killed by the test"

        # The restored job runs from the start: the count check is explicit.
        second = self.start_fetchd(args, download_dir=False, check_end=False)
        c = self.connect(second)
        job = self.wait_job(c, jid, timeout=LIMIT)
        self.assertEqual(job["state"], "done", job)
        self.assertEqual(job["resumed_from"], CUT, job)
        self.assertEqual(job["sha256"], sha(pattern(BIG)), job)
        reqs = self.ranged()
        self.assertEqual(header(reqs[-1], "range"), "bytes=%d-" % CUT, reqs[-1])
        self.assertEqual(sorted(os.listdir(dl)), ["k.bin"])
        self.srv.stop()
        self.assert_quiet(c)
        sys.stderr.write("\n  kill -9 numbers: %d bytes before the kill, %d after the restart "
                         "(Range: %s)\n" % (CUT, job["bytes"], header(reqs[-1], "range")))


if __name__ == "__main__":
    unittest.main()
