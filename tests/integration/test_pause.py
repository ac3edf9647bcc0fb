"""Pause, resume and priorities (issue 14), through the real fetchd, its
control socket and fetchctl, against a private nginx and the fault server:
a paused queued job is not started until resumed and keeps its place; `set`
changes the dispatch order and the limits; a paused running download stops
reading, keeps its connection within the bound (the pool's idle timeout)
and ends with the right SHA-256 whether it resumes on that connection or,
past the bound or after the server gave up on it, on a fresh attempt; pause
then cancel, pause then stop. Every case ends with the live counts back at
their baseline (connections, buffers, every object type).

Nothing here asserts a duration: every wait is for an event (a job state,
a byte count, a line in nginx's log), bounded in count and time.
"""

import hashlib
import json
import os
import random
import re
import subprocess
import time
import unittest
import urllib.request

from ctltest import FETCHCTL, IO_TIMEOUT, ControlTestCase, clean_env, spec
from faultserver import FaultServer
from fetchtest import SLOWDOWN, Nginx

MIB = 1024 * 1024
WAIT_LIMIT = 60.0 * SLOWDOWN


class PauseNginx(Nginx):
    """The shared nginx fixture with a 32 MiB file, large enough that a paused
    reader leaves nginx with unsent bytes after every socket buffer is full."""

    def __init__(self, send_timeout=None):
        super().__init__()
        self.send_timeout = send_timeout
        data = random.Random(14).randbytes(32 * MIB)
        self.files["/32m.bin"] = data
        self._digests["/32m.bin"] = hashlib.sha256(data).hexdigest()

    def _http_prologue(self):
        text = super()._http_prologue()
        if self.send_timeout is None:
            return text
        # A client that reads nothing for send_timeout is reset (and logged
        # at info level, which the test waits for).
        text = text.replace("/error.log;", "/error.log info;", 1)
        return text + ("    send_timeout %ds;\n    reset_timedout_connection on;\n"
                       % self.send_timeout)


class PauseTestCase(ControlTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.nginx = PauseNginx().start()
        cls.addClassCleanup(cls.nginx.stop)

    def start_fetchd(self, args=(), **kw):
        # Idle connections close within a second, so the end-of-test check
        # sees none left open; a paused job keeps its connection for a
        # minute unless the test says otherwise (later --pause-keep wins).
        args = ["--idle-timeout", "1", "--pause-keep", "60"] + list(args)
        return super().start_fetchd(args, clean_stop=True, **kw)

    def fetchctl(self, *args, expect=0):
        cmd = [FETCHCTL, "-s", self.daemon.socket, "--json"] + [str(a) for a in args]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=IO_TIMEOUT,
                           env=clean_env())
        self.assertEqual(p.returncode, expect, "%r: %s%s" % (cmd, p.stderr, self.ctx()))
        return [json.loads(line) for line in p.stdout.splitlines()], p.stderr

    def scrape(self, daemon):
        m = daemon.wait_log(r"metrics: listening on \S+ \(port (\d+)\)")
        self.assertIsNotNone(m, "no metrics port in the log" + daemon.log_tail())
        url = "http://127.0.0.1:%d/metrics" % int(m.group(1))
        with urllib.request.urlopen(url, timeout=IO_TIMEOUT) as resp:
            text = resp.read().decode()
        return {name: float(value) for name, value in
                (line.rsplit(" ", 1) for line in text.splitlines()
                 if line and not line.startswith("#"))}

    def wait_until(self, what, probe, limit=WAIT_LIMIT):
        """Polls probe() (bounded) until it returns something true; returns it."""
        deadline = time.monotonic() + limit
        value = None
        while time.monotonic() < deadline:
            value = probe()
            if value:
                return value
            time.sleep(0.02)
        self.fail("%s never happened (last: %r)%s" % (what, value, self.ctx()))

    def wait_bytes(self, c, jid, at_least):
        return self.wait_until(
            "job %s reaching %d bytes" % (jid, at_least),
            lambda: (lambda j: j if j["bytes"] >= at_least else None)(
                c.result("status", {"id": jid})))

    def assert_frozen(self, c, jid, polls=25):
        """While paused, the byte count does not move: the same value over
        polls status calls (each a round trip through the daemon's loop)."""
        first = c.result("status", {"id": jid})
        for _ in range(polls):
            time.sleep(0.02)
            now = c.result("status", {"id": jid})
            self.assertEqual(now["bytes"], first["bytes"], "bytes grew while paused" + self.ctx())
        return first

    def blocker(self, c, srv):
        """A running job that never gets an answer: it holds the one running slot."""
        jid = self.submit(c, [spec(srv.url("/never"))])[0]
        self.wait_state(c, jid, "running")
        return jid


class PauseQueued(PauseTestCase):
    def test_paused_queued_job_waits_until_resumed(self):
        self.start_fetchd(["--max-running", "1"])
        c = self.connect()
        sub = c.result("subscribe", {"events": ["paused", "resumed"]})["subscription"]
        with FaultServer() as srv:
            block = self.blocker(c, srv)
            held, after = self.submit(c, [spec(self.nginx.url("/1k.bin"), sha256=True),
                                          spec(self.nginx.url("/small.txt"))])
            jobs, _ = self.fetchctl("pause", held)
            self.assertEqual(jobs[0]["state"], "queued", jobs)
            self.assertIs(jobs[0].get("paused"), True, jobs)
            ev = c.notification(lambda p: p["event"] == "paused")
            self.assertEqual((ev["subscription"], ev["job"]["id"]), (sub, held), ev)
            self.assertEqual(self.stats(c)["jobs_paused"], 1)
            self.assertEqual(self.scrape(self.daemon)["fetchd_jobs_paused"], 1)
            # Pausing twice changes nothing.
            self.assertIs(c.result("pause", {"id": held})["paused"], True)

            # The slot frees: the job submitted after the paused one runs
            # and finishes, the paused one stays queued and untouched.
            c.result("cancel", {"id": block})
            self.assertEqual(self.wait_job(c, after, timeout=WAIT_LIMIT)["state"], "done")
            job = c.result("status", {"id": held})
            self.assertEqual((job["state"], job["attempts"], job.get("paused")),
                             ("queued", 0, True), job)
            self.assertNotIn("started", job["timings"], job)

            jobs, _ = self.fetchctl("resume", held)
            self.assertNotIn("paused", jobs[0], jobs)
            ev = c.notification(lambda p: p["event"] == "resumed")
            self.assertEqual(ev["job"]["id"], held, ev)
            job = self.wait_job(c, held, timeout=WAIT_LIMIT)
            self.assertEqual((job["state"], job["sha256"]),
                             ("done", self.nginx.sha256("/1k.bin")), job)
            self.assertEqual(self.stats(c)["jobs_paused"], 0)
            self.assertEqual(self.scrape(self.daemon)["fetchd_jobs_paused"], 0)

    def test_resumed_job_keeps_its_place(self):
        """A paused job goes back to its place (priority, then submission order),
        ahead of the jobs submitted after it."""
        self.start_fetchd(["--max-running", "1"])
        c = self.connect()
        with FaultServer() as srv:
            block = self.blocker(c, srv)
            ids = self.submit(c, [spec(self.nginx.url("/small.txt")) for _ in range(4)])
            c.result("pause", {"ids": [ids[0], ids[1]]})
            c.result("resume", {"id": ids[0]})
            c.result("cancel", {"id": block})
            for jid in (ids[0], ids[2], ids[3]):
                self.assertEqual(self.wait_job(c, jid, timeout=WAIT_LIMIT)["state"], "done")
            self.assertEqual(c.result("status", {"id": ids[1]})["state"], "queued")
            c.result("resume", {"id": ids[1]})
            self.assertEqual(self.wait_job(c, ids[1], timeout=WAIT_LIMIT)["state"], "done")
        started = {jid: c.result("status", {"id": jid})["timings"]["started"] for jid in ids}
        order = sorted(ids, key=lambda jid: started[jid])
        self.assertEqual(order, [ids[0], ids[2], ids[3], ids[1]], started)

    def test_pause_queued_then_cancel_and_errors(self):
        self.start_fetchd(["--max-running", "1"])
        c = self.connect()
        with FaultServer() as srv:
            block = self.blocker(c, srv)
            jid = self.submit(c, [spec(self.nginx.url("/small.txt"))])[0]
            c.result("pause", {"id": jid})
            job = c.result("cancel", {"id": jid})
            self.assertEqual(job["state"], "cancelled", job)
            self.assertNotIn("paused", job, job)
            self.assertEqual(self.stats(c)["jobs_paused"], 0)
            # A finished job cannot be paused or resumed; an unknown one is not found.
            for method in ("pause", "resume"):
                err = self.assert_error(c.call(method, {"id": jid}), -32000, "finished")
                self.assertIn(jid, err["message"])
                self.assert_error(c.call(method, {"id": "0123456789abcdef"}), -32000,
                                  "not_found")
                # ids: all looked up first, so an unknown one changes nothing.
                self.assert_error(c.call(method, {"ids": [block, "0123456789abcdef"]}),
                                  -32000, "not_found")
            self.assertNotIn("paused", c.result("status", {"id": block}))
            _, err = self.fetchctl("pause", jid, expect=4)
            self.assertIn("finished", err)
            c.result("cancel", {"id": block})


class SetPriority(PauseTestCase):
    def test_set_priority_changes_dispatch_order(self):
        self.start_fetchd(["--max-running", "1"])
        c = self.connect()
        with FaultServer() as srv:
            block = self.blocker(c, srv)
            ids = self.submit(c, [spec(self.nginx.url("/small.txt")) for _ in range(4)])
            jobs, _ = self.fetchctl("set", "--priority", 10, ids[3])
            self.assertEqual(jobs[0]["priority"], 10, jobs)
            jobs, _ = self.fetchctl("set", "--priority", -5, "--limit-rate", "1M", ids[0])
            self.assertEqual((jobs[0]["priority"], jobs[0]["limit_rate"]), (-5, MIB), jobs)
            # A paused job whose priority rises still waits for its resume.
            c.result("pause", {"id": ids[1]})
            self.assertEqual(c.result("set", {"id": ids[1], "priority": 20})["priority"], 20)
            c.result("cancel", {"id": block})
            for jid in (ids[3], ids[2], ids[0]):
                self.assertEqual(self.wait_job(c, jid, timeout=WAIT_LIMIT)["state"], "done")
            c.result("resume", {"id": ids[1]})
            self.assertEqual(self.wait_job(c, ids[1], timeout=WAIT_LIMIT)["state"], "done")
        started = {jid: c.result("status", {"id": jid})["timings"]["started"] for jid in ids}
        order = sorted(ids, key=lambda jid: started[jid])
        self.assertEqual(order, [ids[3], ids[2], ids[0], ids[1]], started)

    def test_set_validates_like_submit(self):
        self.start_fetchd(["--max-running", "1"])
        c = self.connect()
        with FaultServer() as srv:
            block = self.blocker(c, srv)
            jid = self.submit(c, [spec(self.nginx.url("/small.txt"))])[0]
            cases = [({"priority": 1001}, "priority"), ({"priority": "1"}, "priority"),
                     ({"rate": 0}, "rate"), ({"delay": -1}, "delay"),
                     ({"limit_rate": -1}, "limit_rate"), ({"retries": 1}, "retries"),
                     ({}, "params")]
            for change, field in cases:
                params = dict(change, id=jid)
                err = self.assert_error(c.call("set", params), -32602, "invalid_params")
                self.assertEqual(err["data"].get("field"), field, err)
                self.assertTrue(err["message"].startswith(field + ": "), err)
            job = c.result("set", {"id": jid, "rate": 2, "delay": 0.5, "limit_rate": 1000})
            self.assertEqual((job["rate"], job["delay"], job["limit_rate"]), (2, 0.5, 1000), job)
            # A running job: only limit_rate may change.
            err = self.assert_error(c.call("set", {"id": block, "priority": 3}), -32000,
                                    "invalid_request")
            self.assertTrue(err["message"].startswith("priority: "), err)
            self.assertEqual(c.result("set", {"id": block, "limit_rate": 5000})["limit_rate"],
                             5000)
            _, err = self.fetchctl("set", "--delay", 1, block, expect=4)
            self.assertIn("delay: ", err)
            _, err = self.fetchctl("set", jid, expect=2)
            self.assertIn("nothing to change", err)
            c.result("cancel", {"id": block})
            self.assertEqual(self.wait_job(c, jid, timeout=WAIT_LIMIT)["state"], "done")
            self.assert_error(c.call("set", {"id": jid, "priority": 1}), -32000, "finished")


class PauseRunning(PauseTestCase):
    PATH = "/32m.bin"

    def running_download(self, c, rate=4 * MIB, **fields):
        jid = self.submit(c, [spec(self.nginx.url(self.PATH), sha256=True, limit_rate=rate,
                                   **fields)])[0]
        self.wait_bytes(c, jid, 256 * 1024)
        return jid

    def finish_fast(self, c, jid):
        """Lifts the job's byte rate and waits for it: done, the whole file."""
        c.result("set", {"id": jid, "limit_rate": 0})
        job = self.wait_job(c, jid, timeout=WAIT_LIMIT)
        self.assertEqual((job["state"], job["bytes"], job["sha256"]),
                         ("done", 32 * MIB, self.nginx.sha256(self.PATH)),
                         "%r%s" % (job, self.ctx()))
        return job

    def test_pause_running_download_then_resume_on_the_same_connection(self):
        self.start_fetchd()
        c = self.connect()
        jid = self.running_download(c)
        job = c.result("pause", {"id": jid})
        self.assertEqual((job["state"], job.get("paused")), ("running", True), job)
        frozen = self.assert_frozen(c, jid)
        self.assertLess(frozen["bytes"], 32 * MIB, frozen)
        s = self.stats(c)
        self.assertEqual((s["jobs_paused"], s["connections"]["active"]), (1, 1), s)
        job = c.result("resume", {"id": jid})
        self.assertNotIn("paused", job, job)
        self.wait_bytes(c, jid, frozen["bytes"] + 1)
        job = self.finish_fast(c, jid)
        self.assertEqual(job["attempts"], 1, job)
        self.assertEqual(self.stats(c)["jobs_paused"], 0)

    def test_pause_composes_with_the_byte_rate(self):
        """A job held by its byte rate and by a pause reads again only once
        both let go: resumed while the rate still holds it, it waits for the
        rate; paused while the rate holds it, the rate's resume does not
        restart it."""
        self.start_fetchd()
        c = self.connect()
        # 64 KiB/s: after its first burst the job is held by the rate most
        # of the time, so pause and resume land while the rate holds it.
        jid = self.running_download(c, rate=64 * 1024)
        for _ in range(3):
            c.result("pause", {"id": jid})
            frozen = self.assert_frozen(c, jid, polls=10)
            c.result("resume", {"id": jid})
            self.wait_bytes(c, jid, frozen["bytes"] + 1)
        self.assertEqual(self.finish_fast(c, jid)["attempts"], 1)

    def test_idle_timeout_stops_while_paused_total_timeout_does_not(self):
        self.start_fetchd()
        c = self.connect()
        # Paused longer than its idle timeout (measured by a job that takes
        # longer: 12 bytes 100 ms apart), the job is still running.
        idle = self.running_download(c, timeouts={"idle": 0.3})
        total = self.running_download(c, timeout=3)
        c.result("pause", {"ids": [idle, total]})
        with FaultServer() as srv:
            slow = self.submit(c, [spec(srv.url("/drip?bytes=12&interval_ms=100"))])[0]
            self.assertEqual(self.wait_job(c, slow, timeout=WAIT_LIMIT)["state"], "done")
        job = c.result("status", {"id": idle})
        self.assertEqual((job["state"], job.get("paused")), ("running", True), job)
        # The total timeout runs on: the paused job ends with it.
        job = self.wait_job(c, total, timeout=WAIT_LIMIT)
        self.assertEqual((job["state"], job["error"]["code"]), ("failed", "timeout"), job)
        self.assertEqual(self.stats(c)["jobs_paused"], 1)
        c.result("resume", {"id": idle})
        self.assertEqual(self.finish_fast(c, idle)["attempts"], 1)

    def test_pause_past_the_keep_bound_restarts_with_a_fresh_attempt(self):
        d = self.start_fetchd(["--pause-keep", "1"])
        c = self.connect()
        jid = self.running_download(c, output="big.bin")
        c.result("pause", {"id": jid})
        # The bound passes: the connection is closed, the job stays paused.
        s = self.wait_until("the paused job's connection closing",
                            lambda: (lambda s: s if s["connections"]["active"] == 0 else None)(
                                self.stats(c)))
        self.assertEqual(s["jobs_paused"], 1, s)
        job = c.result("status", {"id": jid})
        self.assertEqual((job["state"], job.get("paused"), job["attempts"]),
                         ("running", True, 1), job)
        c.result("resume", {"id": jid})
        job = self.finish_fast(c, jid)
        self.assertEqual(job["attempts"], 2, job)
        with open(os.path.join(d.download_dir, "big.bin"), "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), self.nginx.sha256(self.PATH))
        leftovers = [n for n in os.listdir(d.download_dir) if n != "big.bin"]
        self.assertEqual(leftovers, [], "partial files left behind")

    def test_pause_running_then_cancel(self):
        d = self.start_fetchd()
        c = self.connect()
        jid = self.running_download(c, output="cancelled.bin")
        c.result("pause", {"id": jid})
        job = c.result("cancel", {"id": jid})
        self.assertEqual(job["error"]["code"], "cancelled", job)
        self.assertNotIn("paused", job, job)
        job = self.wait_job(c, jid, timeout=WAIT_LIMIT)
        self.assertEqual(job["state"], "cancelled", job)
        s = self.wait_until("the cancelled job's connection closing",
                            lambda: (lambda s: s if s["connections"]["active"] == 0 else None)(
                                self.stats(c)))
        self.assertEqual(s["jobs_paused"], 0, s)
        self.assertEqual(os.listdir(d.download_dir), [], "the partial file stayed")

    def test_pause_then_stop(self):
        """A paused running job and a paused queued one, then SIGTERM: fetchd
        stops within its grace period, with status 0 and (in a sanitizer
        build) no report."""
        d = self.start_fetchd(["--max-running", "1", "--shutdown-grace", "1"])
        c = self.connect()
        jid = self.running_download(c, output="stopped.bin")
        queued = self.submit(c, [spec(self.nginx.url("/small.txt"))])[0]
        c.result("pause", {"ids": [jid, queued]})
        self.assertEqual(self.stats(c)["jobs_paused"], 2)
        c.close()
        d.returncode = d.stop()
        self.assertEqual(d.returncode, 0, d.log_tail())
        self.assertEqual(os.listdir(d.download_dir), [], "the partial file stayed")


class ServerGivesUp(PauseTestCase):
    """nginx resets a connection that reads nothing for a second: the job,
    paused meanwhile, starts over when resumed and still ends right."""

    @classmethod
    def setUpClass(cls):
        ControlTestCase.setUpClass()
        cls.nginx = PauseNginx(send_timeout=1).start()
        cls.addClassCleanup(cls.nginx.stop)

    def test_pause_then_the_server_closes(self):
        self.start_fetchd()
        c = self.connect()
        jid = self.submit(c, [spec(self.nginx.url("/32m.bin"), sha256=True,
                                   limit_rate=4 * MIB)])[0]
        self.wait_bytes(c, jid, 256 * 1024)
        c.result("pause", {"id": jid})
        self.wait_until("nginx timing the paused reader out",
                        lambda: "timed out" in self.nginx.error_log())
        self.assertEqual(self.stats(c)["connections"]["active"], 1)
        c.result("resume", {"id": jid})
        c.result("set", {"id": jid, "limit_rate": 0})
        job = self.wait_job(c, jid, timeout=WAIT_LIMIT)
        self.assertEqual((job["state"], job["bytes"], job["sha256"], job["attempts"]),
                         ("done", 32 * MIB, self.nginx.sha256("/32m.bin"), 2),
                         "%r%s" % (job, self.ctx()))


class FetchctlHelp(unittest.TestCase):
    def test_help_names_the_commands(self):
        p = subprocess.run([FETCHCTL, "--help"], capture_output=True, text=True,
                           timeout=IO_TIMEOUT)
        for cmd in ("pause ID", "resume ID", "set [OPTIONS] ID"):
            self.assertIn(cmd, p.stdout)
        for cmd, words in (("pause", "stays queued"), ("resume", "paused jobs"),
                           ("set", "--limit-rate")):
            p = subprocess.run([FETCHCTL, cmd, "--help"], capture_output=True, text=True,
                               timeout=IO_TIMEOUT)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn(words, p.stdout)


if __name__ == "__main__":
    unittest.main()
