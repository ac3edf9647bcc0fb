"""Log injection: values that come from outside (output names, URLs) reach
fetchd's stderr escaped, so a newline in them cannot forge a log line and an
ESC byte cannot reach a terminal; under systemd (JOURNAL_STREAM) every line
still starts with its "<N>" priority prefix.

The operator's view of finished jobs (issue 17): one info line per finished
job of each kind (done 200, done 404, failed with a code, cancelled) with
its id, URL without userinfo, status, bytes, duration and error code; none
with log_jobs off; control clients' connects only at debug; and `fetchctl
watch`, which shows each event's status and error code and reconnects when
the daemon restarts.

The real fetchd runs against a private nginx. The output name that gets
logged is one whose temporary name ("NAME.fetchd-part-ID") is longer than a
file name may be, so creating it fails and sink.c logs that path.
"""

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

from fetchtest import BIN_DIR, REPO, Nginx, remove_tree, tmpdir

sys.path.insert(0, os.path.join(REPO, "tests", "soak"))
import soak  # noqa: E402

FETCHD = os.path.join(BIN_DIR, "fetchd")
FETCHCTL = os.path.join(BIN_DIR, "fetchctl")
IO_TIMEOUT = 10.0
MARK = "FORGED-BY-TEST"
# A line that looks like one of fetchd's own, in both of its formats.
FORGED = "2026-12-01T00:00:00.000 fetchd[error] " + MARK
FORGED_JOURNAL = "<3>" + MARK
ESC = "\x1b[2J\x1b]0;" + MARK + "\x07"
PLAIN_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} fetchd\[(error|warn|notice|info|debug)\] ")
# What sink.c's line about a failed file operation holds.
LOGGED = "(temporary file "
JOURNAL_LINE = re.compile(r"^<[3-7]>")
# The line service.c writes for every finished job.
JOB_LINE = re.compile(r"(?:fetchd\[info\] |^<6>)job (?P<id>[0-9a-f]{16}) (?P<result>done|failed|cancelled): "
                      r"status=(?P<status>\d+|-) bytes=(?P<bytes>\d+) "
                      r"duration=(?P<duration>\d+\.\d{3})s error=(?P<error>[a-z_]+|-) "
                      r"url=(?P<url>\S+)$")


def long_name(forged_line):
    """A file name of 250 bytes (NAME_MAX is 255) that carries a newline and
    a forged log line."""
    head = "out\n" + forged_line + "\r\n" + ESC + "\\n"
    return head + "x" * (250 - len(head.encode()))


class LogInjection(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.nginx = Nginx().start()
        cls.addClassCleanup(cls.nginx.stop)

    def start_daemon(self, journal):
        if not os.path.exists(FETCHD):
            self.fail("%s not found (build first)" % FETCHD)
        work = tmpdir("log-")
        self.addCleanup(remove_tree, work)
        d = soak.Daemon(FETCHD, work, metrics=False)
        if journal:
            # What systemd sets when stderr is the journal: "<N>" prefixes.
            d.env["JOURNAL_STREAM"] = "8:12345"
        self.addCleanup(d.stop)
        try:
            d.start()
        except soak.SetupError as exc:
            self.fail(str(exc))
        client = d.rpc()
        self.addCleanup(client.close)
        return d, client

    def submit_and_wait(self, client, spec):
        resp = client.response(client.send("submit", {"jobs": [spec]}), IO_TIMEOUT)
        if "error" in resp:
            return None
        jid = resp["result"]["ids"][0]
        return client.result("wait", {"id": jid, "timeout": IO_TIMEOUT}, IO_TIMEOUT + 5)

    def run_injections(self, journal):
        d, client = self.start_daemon(journal)
        forged = FORGED_JOURNAL if journal else FORGED
        name = long_name(forged)
        # A directory takes the name after the submit and before the answer:
        # the rename into place fails, and sink.c logs the target's path.
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.settimeout(IO_TIMEOUT)
            url = "http://127.0.0.1:%d/" % listener.getsockname()[1]
            resp = client.response(client.send("submit", {"jobs": [{"url": url, "output": name}]}),
                                   IO_TIMEOUT)
            self.assertIn("result", resp, "the job with a newline in its output name was refused")
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(IO_TIMEOUT)
                conn.recv(65536)
                os.mkdir(os.path.join(d.download_dir, name))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            job = client.result("wait", {"id": resp["result"]["ids"][0], "timeout": IO_TIMEOUT},
                                IO_TIMEOUT + 5)
        self.assertEqual(job["state"], "failed", job)
        self.assertEqual(job["error"]["code"], "io", job)
        # A URL with an encoded and with a raw newline (JSON "\n"), and a
        # header value with one: refused or fetched, never a log line.
        for spec in ({"url": self.nginx.url("/small.txt?%0a" + forged)},
                     {"url": self.nginx.url("/small.txt\n" + forged)},
                     {"url": self.nginx.url("/small.txt"),
                      "headers": {"X-Test": "a\n" + forged}}):
            self.submit_and_wait(client, spec)
        # The failed rename is logged (sink.c), with the name escaped.
        deadline = time.monotonic() + IO_TIMEOUT
        while LOGGED not in d.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        rc = d.stop()
        log = d.log()
        # In a sanitizer build, no ASan, LeakSanitizer or UBSan report.
        self.assertNotIn("Sanitizer", log)
        self.assertNotIn("runtime error:", log)
        self.assertEqual(rc, 0, "fetchd's exit status:\n" + log)
        return log, name

    def check(self, log, journal):
        lines = log.split("\n")
        self.assertEqual(lines[-1], "", "stderr does not end with a newline:\n" + log)
        lines = lines[:-1]
        pattern = JOURNAL_LINE if journal else PLAIN_LINE
        for line in lines:
            self.assertRegex(line, pattern, "a line fetchd did not start:\n" + log)
            # The mark may only appear inside the one escaped line, or in
            # a finished job's line (its URL carries the mark, escaped).
            self.assertTrue(MARK not in line or LOGGED in line or JOB_LINE.search(line),
                            "a forged line:\n" + log)
            self.assertNotIn("\x1b", line)
            self.assertNotIn("\r", line)
            self.assertNotIn("\x07", line)
        created = [line for line in lines if LOGGED in line]
        self.assertEqual(len(created), 1, "no (or more than one) %r line:\n%s" % (LOGGED, log))
        line = created[0]
        self.assertIn("out\\n", line)
        self.assertIn("\\r\\n\\x1B[2J\\x1B]0;" + MARK + "\\x07\\\\n", line)

    def test_output_name_with_newline_forges_no_line(self):
        log, _ = self.run_injections(journal=False)
        self.check(log, journal=False)

    def test_journal_prefixes_stay_intact(self):
        log, _ = self.run_injections(journal=True)
        self.check(log, journal=True)


# ---- one line per finished job -------------------------------------------------------


class JobLines(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.nginx = Nginx().start()
        cls.addClassCleanup(cls.nginx.stop)

    def start_daemon(self, args=()):
        if not os.path.exists(FETCHD):
            self.fail("%s not found (build first)" % FETCHD)
        work = tmpdir("joblog-")
        self.addCleanup(remove_tree, work)
        d = soak.Daemon(FETCHD, work, args, metrics=False)
        self.addCleanup(d.stop)
        try:
            d.start()
        except soak.SetupError as exc:
            self.fail(str(exc))
        client = d.rpc()
        self.addCleanup(client.close)
        return d, client

    def submit(self, client, spec):
        return client.result("submit", {"jobs": [spec]})["ids"][0]

    def wait(self, client, jid):
        return client.result("wait", {"id": jid, "timeout": IO_TIMEOUT}, IO_TIMEOUT + 5)

    def run_each_kind(self, client):
        """Runs one job of each kind; returns {kind: finished job}."""
        n = self.nginx
        jobs = {}
        jobs["done_200"] = self.wait(client, self.submit(client, {"url": n.url("/small.txt")}))
        jobs["done_404"] = self.wait(client, self.submit(client, {"url": n.url("/status/404")}))
        with socket.create_server(("127.0.0.1", 0)) as refused:
            port = refused.getsockname()[1]
        jobs["failed"] = self.wait(client, self.submit(
            client, {"url": "http://127.0.0.1:%d/" % port}))
        # A server that accepts (in the kernel's backlog) and never answers:
        # the job runs until it is cancelled.
        with socket.create_server(("127.0.0.1", 0)) as silent:
            jid = self.submit(client, {"url": "http://127.0.0.1:%d/slow" % silent.getsockname()[1]})
            deadline = time.monotonic() + IO_TIMEOUT
            while (client.result("status", {"id": jid})["state"] != "running"
                   and time.monotonic() < deadline):
                time.sleep(0.02)
            client.result("cancel", {"id": jid})
            jobs["cancelled"] = self.wait(client, jid)
        return jobs

    def job_lines(self, d, ids):
        """The finished-job lines of ids, waiting (bounded) for all of them."""
        deadline = time.monotonic() + IO_TIMEOUT
        while True:
            found = {}
            for line in d.log().split("\n"):
                m = JOB_LINE.search(line)
                if m and m.group("id") in ids:
                    found.setdefault(m.group("id"), []).append(m)
            if len(found) == len(ids) or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)

    def test_one_line_per_finished_job_of_each_kind(self):
        d, client = self.start_daemon()
        jobs = self.run_each_kind(client)
        self.assertEqual([j["state"] for j in jobs.values()],
                         ["done", "done", "failed", "cancelled"], jobs)
        found = self.job_lines(d, {j["id"] for j in jobs.values()})
        for kind, job in jobs.items():
            lines = found.get(job["id"], [])
            self.assertEqual(len(lines), 1, "%s: %d lines%s" % (kind, len(lines), d.log_tail()))
            m = lines[0]
            self.assertEqual(m.group("result"), job["state"], kind)
            self.assertEqual(m.group("status"), str(job.get("http_status", "-")), kind)
            self.assertEqual(int(m.group("bytes")), job.get("bytes", 0), kind)
            self.assertEqual(m.group("error"), job["error"]["code"] if "error" in job else "-",
                             kind)
        self.assertEqual(found[jobs["done_200"]["id"]][0].group("url"), self.nginx.url("/small.txt"))
        self.assertEqual(found[jobs["done_404"]["id"]][0].group("status"), "404")
        self.assertEqual(found[jobs["failed"]["id"]][0].group("error"), "connect_refused")
        self.assertEqual(found[jobs["cancelled"]["id"]][0].group("error"), "cancelled")
        # Control clients connect at debug: not one line for them at info.
        self.assertNotIn("client connected", d.log())

    def test_log_jobs_off(self):
        d, client = self.start_daemon(["--log-jobs", "off"])
        jobs = self.run_each_kind(client)
        self.assertEqual(len(jobs), 4)
        self.assertEqual(self.job_lines(d, {j["id"] for j in jobs.values()}), {}, d.log_tail())

    def test_client_connects_at_debug(self):
        d, client = self.start_daemon(["--log-level", "debug"])
        client.result("version")
        deadline = time.monotonic() + IO_TIMEOUT
        while "client connected" not in d.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        lines = [line for line in d.log().split("\n") if "client connected" in line]
        self.assertTrue(lines, d.log_tail())
        for line in lines:
            self.assertIn("fetchd[debug] control: client connected", line)


# ---- fetchctl watch -------------------------------------------------------------------


class Watch(unittest.TestCase):
    """`fetchctl watch` against the real daemon: the status and error code
    of each event, and a reconnection when the daemon restarts."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.nginx = Nginx().start()
        cls.addClassCleanup(cls.nginx.stop)

    def setUp(self):
        for path in (FETCHD, FETCHCTL):
            if not os.path.exists(path):
                self.fail("%s not found (build first)" % path)
        work = tmpdir("watch-")
        self.addCleanup(remove_tree, work)
        self.daemon = soak.Daemon(FETCHD, work, metrics=False)
        self.addCleanup(self.daemon.stop)
        self.start_daemon()

    def start_daemon(self):
        try:
            self.daemon.start()
        except soak.SetupError as exc:
            self.fail(str(exc))

    def start_watch(self, *args):
        proc = subprocess.Popen([FETCHCTL, "-s", self.daemon.socket, "watch"] + list(args),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        lines = {"stdout": queue.Queue(), "stderr": queue.Queue()}
        threads = []
        for name in lines:
            t = threading.Thread(target=self.pump, args=(getattr(proc, name), lines[name]),
                                 daemon=True)
            t.start()
            threads.append(t)
        self.addCleanup(self.close_watch, proc, threads)
        return proc, lines

    def close_watch(self, proc, threads):
        self.stop_watch(proc)
        for t in threads:
            t.join(IO_TIMEOUT)
        proc.stdout.close()
        proc.stderr.close()

    @staticmethod
    def pump(stream, q):
        for line in stream:
            q.put(line.rstrip("\n"))
        q.put(None)

    @staticmethod
    def stop_watch(proc):
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(IO_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(IO_TIMEOUT)

    def read_until(self, q, pred, what):
        """Lines from q until one satisfies pred (bounded in time)."""
        seen = []
        deadline = time.monotonic() + IO_TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            seen.append(line)
            if pred(line):
                return line
        self.fail("no %s within %.0f s; got:\n%s%s" % (what, IO_TIMEOUT, "\n".join(seen),
                                                       self.daemon.log_tail()))

    def wait_subscribed(self, n=1):
        """Until the daemon holds n subscriptions (bounded)."""
        deadline = time.monotonic() + IO_TIMEOUT
        client = self.daemon.rpc()
        try:
            while time.monotonic() < deadline:
                if client.result("stats")["objects"].get("ctl_subscription", 0) >= n:
                    return
                time.sleep(0.02)
        finally:
            client.close()
        self.fail("fetchctl watch did not subscribe" + self.daemon.log_tail())

    def submit(self, url):
        client = self.daemon.rpc()
        try:
            return client.result("submit", {"jobs": [{"url": url}]})["ids"][0]
        finally:
            client.close()

    def finished(self, q, jid):
        line = self.read_until(q, lambda l: l.startswith("finished") and jid in l,
                               "finished event for %s" % jid)
        return line.split()

    def test_status_and_error_code(self):
        proc, lines = self.start_watch("--events", "finished")
        self.wait_subscribed()
        with socket.create_server(("127.0.0.1", 0)) as refused:
            port = refused.getsockname()[1]
        cases = [(self.nginx.url("/small.txt"), "done", "200", "-"),
                 (self.nginx.url("/status/404"), "done", "404", "-"),
                 ("http://127.0.0.1:%d/" % port, "failed", "-", "connect_refused")]
        for url, state, status, code in cases:
            jid = self.submit(url)
            fields = self.finished(lines["stdout"], jid)
            self.assertEqual(fields, ["finished", jid, state, status, code, url])
        self.stop_watch(proc)
        self.assertEqual(proc.returncode, 0)

    def test_reconnects_when_the_daemon_restarts(self):
        proc, lines = self.start_watch("--events", "finished", "--reconnect-for", "30")
        self.wait_subscribed()
        jid = self.submit(self.nginx.url("/small.txt"))
        self.finished(lines["stdout"], jid)
        self.assertEqual(self.daemon.stop(), 0)
        self.read_until(lines["stderr"], lambda l: "reconnecting" in l, "reconnecting notice")
        self.start_daemon()
        self.read_until(lines["stderr"], lambda l: "reconnected" in l, "reconnected notice")
        self.wait_subscribed()
        jid = self.submit(self.nginx.url("/status/404"))
        self.assertEqual(self.finished(lines["stdout"], jid)[2:5], ["done", "404", "-"])
        self.assertIsNone(proc.poll())
        self.stop_watch(proc)
        self.assertEqual(proc.returncode, 0)

    def test_gives_up_after_reconnect_for(self):
        proc, lines = self.start_watch("--reconnect-for", "1")
        self.wait_subscribed()
        self.assertEqual(self.daemon.stop(), 0)
        self.read_until(lines["stderr"], lambda l: "gave up after 1 s" in l, "give-up notice")
        proc.wait(IO_TIMEOUT)
        self.assertEqual(proc.returncode, 3)


if __name__ == "__main__":
    unittest.main()
