"""fetchctl end to end: the real client against a real fetchd and a real nginx.

Covers submit (--wait, -o, -i with URLs and JSON lines, request options),
status, wait, cancel, list, stats, watch, version, --json output, where the
global options may stand, FETCHD_SOCKET, the exit codes and --help.  The
readable output format is the client's to choose; these tests only rely on
what the contract fixes (ids one per line, exit codes, one JSON object per
line with --json, the socket path named when the daemon is unreachable).
"""

import json
import os
import select
import signal
import subprocess
import time

from ctltest import FETCHCTL, ID_RE, ControlTestCase, clean_env, spec
from faultserver import FaultServer
from fetchtest import Nginx, file_sha256, remove_tree, require_tool, tmpdir

COMMANDS = ["submit", "status", "wait", "cancel", "list", "stats", "watch", "version"]
NEVER_SECONDS = 600
RUN_TIMEOUT = 120


class FetchctlCase(ControlTestCase):
    ARGS = []

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if not os.path.exists(FETCHCTL):
            raise AssertionError("fetchctl not found at %s (build first)" % FETCHCTL)
        cls.nginx = Nginx().start()
        cls.addClassCleanup(cls.nginx.stop)
        cls.srv = FaultServer().start()
        cls.addClassCleanup(cls.srv.stop)

    def setUp(self):
        self.start_fetchd(["--idle-timeout", "1"] + self.ARGS)
        self.c = self.connect()
        self.work = tmpdir("ctlwork-")
        self.addCleanup(remove_tree, self.work)

    def ctl(self, *args, env=None, input=None, sock=True, timeout=RUN_TIMEOUT):
        """Runs fetchctl (socket via FETCHD_SOCKET unless sock=False); returns the result."""
        if env is None:
            env = clean_env(FETCHD_SOCKET=self.daemon.socket) if sock else clean_env()
        p = subprocess.run([FETCHCTL] + [str(a) for a in args], env=env, capture_output=True,
                           text=True, timeout=timeout,
                           input=input if input is not None else "")
        p.args_shown = "fetchctl " + " ".join(str(a) for a in args)
        return p

    def why(self, p):
        return "%s -> %r\nstdout: %s\nstderr: %s%s" % (
            p.args_shown, p.returncode, p.stdout[-2000:], p.stderr[-2000:], self.ctx())

    def ok(self, *args, **kw):
        p = self.ctl(*args, **kw)
        self.assertEqual(p.returncode, 0, self.why(p))
        return p

    def json_lines(self, p):
        out = []
        for line in p.stdout.splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                self.fail("--json printed a line that is not JSON: %r\n%s" % (line, self.why(p)))
            self.assertIsInstance(doc, dict, line)
            out.append(doc)
        return out

    def ids(self, p):
        lines = [l for l in p.stdout.splitlines() if l.strip()]
        for l in lines:
            self.assertRegex(l, ID_RE, self.why(p))
        return lines

    def url(self, path):
        return self.nginx.url(path)

    def write(self, name, text):
        path = os.path.join(self.work, name)
        with open(path, "w") as f:
            f.write(text)
        return path


class Submit(FetchctlCase):
    def test_submit_prints_the_id(self):
        p = self.ok("submit", self.url("/small.txt"))
        ids = self.ids(p)
        self.assertEqual(len(ids), 1)
        self.assertEqual(self.wait_job(self.c, ids[0])["state"], "done")

    def test_submit_several_urls_in_order(self):
        urls = [self.url("/small.txt"), self.url("/1k.bin"), self.url("/status/404")]
        ids = self.ids(self.ok("submit", *urls))
        self.assertEqual([self.c.result("status", {"id": i})["url"] for i in ids], urls)

    def test_submit_wait_done(self):
        p = self.ok("submit", "--wait", self.url("/small.txt"))
        lines = p.stdout.splitlines()
        self.assertRegex(lines[0], ID_RE, self.why(p))
        jid = lines[0]
        self.assertTrue(any(jid in l and "done" in l for l in lines[1:]), self.why(p))
        self.assertEqual(self.c.result("status", {"id": jid})["state"], "done")

    def test_submit_wait_http_error(self):
        p = self.ctl("submit", "--wait", "--fail", self.url("/status/404"))
        self.assertEqual(p.returncode, 1, self.why(p))
        jid = p.stdout.splitlines()[0]
        job = self.c.result("status", {"id": jid})
        self.assertEqual(job["state"], "failed", job)
        # Without --fail a 404 is a finished fetch: state done, exit 0.
        p = self.ok("submit", "--wait", self.url("/status/404"))

    def test_submit_wait_json(self):
        p = self.ok("--json", "submit", "--wait", self.url("/small.txt"), self.url("/1k.bin"))
        docs = self.json_lines(p)
        heads = [d for d in docs if set(d) == {"id", "url"}]
        jobs = [d for d in docs if "state" in d]
        self.assertEqual([d["url"] for d in heads], [self.url("/small.txt"), self.url("/1k.bin")])
        self.assertEqual(sorted(j["id"] for j in jobs), sorted(d["id"] for d in heads))
        self.assertTrue(all(j["state"] == "done" for j in jobs), docs)

    def test_output_file_and_sha256(self):
        os.mkdir(os.path.join(self.daemon.download_dir, "sub"))
        p = self.ok("--json", "submit", "--wait", "--sha256", "-o", "sub/out.bin",
                    self.url("/1m.bin"))
        job = [d for d in self.json_lines(p) if "state" in d][0]
        path = os.path.join(self.daemon.download_dir, "sub", "out.bin")
        self.assertEqual(job["state"], "done", job)
        self.assertEqual(job["sha256"], self.nginx.sha256("/1m.bin"), job)
        self.assertEqual(file_sha256(path), self.nginx.sha256("/1m.bin"))
        self.assertEqual(os.path.realpath(job["output"]), os.path.realpath(path), job)

    @staticmethod
    def _drain(fd):
        data = b""
        while True:
            r, _, _ = select.select([fd], [], [], 0.5)
            if not r:
                return data
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the slave side is closed and drained
                return data
            if not chunk:
                return data
            data += chunk

    def test_progress_line_only_on_a_tty(self):
        out_master, out_slave = os.openpty()
        err_master, err_slave = os.openpty()
        try:
            env = clean_env(FETCHD_SOCKET=self.daemon.socket)
            proc = subprocess.Popen([FETCHCTL, "submit", "--wait", self.url("/small.txt"),
                                     self.url("/1k.bin")], env=env, stdout=out_slave,
                                    stderr=err_slave, stdin=subprocess.DEVNULL)
            os.close(out_slave)
            os.close(err_slave)
            rc = proc.wait(RUN_TIMEOUT)
            self._drain(out_master)
            err = self._drain(err_master).decode(errors="replace")
        finally:
            os.close(out_master)
            os.close(err_master)
        self.assertEqual(rc, 0, err)
        self.assertRegex(err, r"\b2 of 2\b", "no progress line on stderr with a TTY")
        p = self.ok("submit", "--wait", self.url("/small.txt"))
        self.assertNotRegex(p.stderr, r"\bof\b", "progress shown although stdout is no TTY")

    def test_output_only_with_one_url(self):
        p = self.ctl("submit", "-o", "x.bin", self.url("/small.txt"), self.url("/1k.bin"))
        self.assertEqual(p.returncode, 2, self.why(p))
        self.assertEqual(self.list_all(self.c), [])

    def test_request_options(self):
        body = self.write("body.txt", "hello body")
        p = self.ok("submit", "--wait", "-X", "PUT", "-H", "X-Test: yes", "-H", "X-Other: 2",
                    "-d", "@" + body, "-o", "echo.json", "--priority", "7",
                    self.srv.url("/echo"))
        jid = p.stdout.splitlines()[0]
        with open(os.path.join(self.daemon.download_dir, "echo.json")) as f:
            echoed = json.load(f)
        self.assertEqual(echoed["method"], "PUT")
        self.assertEqual(echoed["headers"]["x-test"], "yes")
        self.assertEqual(echoed["headers"]["x-other"], "2")
        self.assertEqual(echoed["body_length"], len("hello body"))
        job = self.c.result("status", {"id": jid})
        self.assertEqual(job["priority"], 7, job)
        self.assertEqual(job["method"], "PUT", job)
        p = self.ok("submit", "--wait", "-d", "literal", "-o", "echo2.json", self.srv.url("/echo"))
        with open(os.path.join(self.daemon.download_dir, "echo2.json")) as f:
            self.assertEqual(json.load(f)["body_length"], len("literal"))

    def test_limits_options(self):
        p = self.ctl("--json", "submit", "--wait", "--max-redirects", "1",
                     self.url("/redirect/3"))
        self.assertEqual(p.returncode, 1, self.why(p))
        job = [d for d in self.json_lines(p) if "state" in d][0]
        self.assertEqual(job["error"]["code"], "too_many_redirects", job)
        p = self.ctl("--json", "submit", "--wait", "--max-body", "100", self.url("/1k.bin"))
        self.assertEqual(p.returncode, 1, self.why(p))
        job = [d for d in self.json_lines(p) if "state" in d][0]
        self.assertEqual(job["error"]["code"], "body_too_large", job)
        p = self.ok("--json", "submit", "--wait", "--retries", "2",
                    self.srv.url("/flaky?n=1&status=503&retry_after=0&t=ctl"))
        job = [d for d in self.json_lines(p) if "state" in d][0]
        self.assertEqual(job["attempts"], 2, job)
        p = self.ctl("--json", "submit", "--wait", "--timeout", "0.5", self.srv.url("/never"))
        self.assertEqual(p.returncode, 1, self.why(p))
        job = [d for d in self.json_lines(p) if "state" in d][0]
        self.assertEqual(job["error"]["code"], "timeout", job)


class Input(FetchctlCase):
    def test_input_file_of_1000_urls(self):
        urls = [self.url("/small.txt") if i % 2 else self.url("/1k.bin") for i in range(1000)]
        path = self.write("urls.txt", "# a comment\n\n" + "\n".join(urls) + "\n")
        ids = self.ids(self.ok("submit", "-i", path))
        self.assertEqual(len(ids), 1000)
        self.assertEqual(len(set(ids)), 1000)
        p = self.ok("--json", "wait", *ids)
        jobs = self.json_lines(p)
        self.assertEqual(sorted(j["id"] for j in jobs), sorted(ids))
        self.assertTrue(all(j["state"] == "done" for j in jobs))
        listed = self.list_all(self.c)
        self.assertEqual([j["id"] for j in listed], ids)
        self.assertEqual([j["url"] for j in listed], urls)

    def test_input_json_lines(self):
        lines = ["# jobs", ""]
        for i in range(300):
            lines.append(json.dumps({"url": self.url("/small.txt"), "labels": {"n": str(i)},
                                     "priority": i % 3}))
        path = self.write("jobs.jsonl", "\n".join(lines) + "\n")
        ids = self.ids(self.ok("submit", "-i", path, "--priority", "9"))
        self.assertEqual(len(ids), 300)
        self.ok("wait", *ids)
        for i in (0, 1, 150, 299):
            job = self.c.result("status", {"id": ids[i]})
            self.assertEqual(job["labels"], {"n": str(i)}, job)
            self.assertEqual(job["priority"], i % 3, "JSON lines must be taken as they are")

    def test_input_stdin_and_defaults(self):
        text = self.url("/small.txt") + "\n" + self.url("/1k.bin") + "\n"
        ids = self.ids(self.ok("submit", "-i", "-", "--priority", "4", input=text))
        self.assertEqual(len(ids), 2)
        for jid in ids:
            self.assertEqual(self.c.result("status", {"id": jid})["priority"], 4)
        self.ok("wait", *ids)

    def test_input_mixed_wait(self):
        lines = [self.url("/small.txt"), json.dumps({"url": self.url("/status/404"),
                                                     "fail_on_http_error": True})]
        path = self.write("mixed.txt", "\n".join(lines) + "\n")
        p = self.ctl("submit", "--wait", "-i", path)
        self.assertEqual(p.returncode, 1, self.why(p))

    def test_input_bad_line_is_refused(self):
        path = self.write("bad.jsonl", self.url("/small.txt") + "\n"
                          + json.dumps({"url": self.url("/small.txt"), "retries": "x"}) + "\n")
        p = self.ctl("submit", "-i", path)
        self.assertIn(p.returncode, (2, 4), self.why(p))
        self.assertIn("retries", p.stderr, self.why(p))
        self.assertEqual(self.list_all(self.c), [], "part of a rejected batch was queued")


class Commands(FetchctlCase):
    def submit_ids(self, specs):
        return self.submit(self.c, specs)

    def test_status_and_wait(self):
        ids = self.submit_ids([spec(self.url("/small.txt")),
                               spec("http://127.0.0.1:1/", retries=0)])
        for jid in ids:
            self.wait_job(self.c, jid)
        p = self.ok("status", *ids)
        for jid in ids:
            self.assertIn(jid, p.stdout)
        docs = self.json_lines(self.ok("--json", "status", *ids))
        self.assertEqual([d["id"] for d in docs], ids)
        self.assertEqual([d["state"] for d in docs], ["done", "failed"])
        self.assertEqual(self.ok("wait", ids[0]).returncode, 0)
        p = self.ctl("wait", *ids)
        self.assertEqual(p.returncode, 1, self.why(p))

    def test_cancel(self):
        jid = self.submit_ids([spec(self.srv.url("/never"), timeout=NEVER_SECONDS)])[0]
        self.wait_state(self.c, jid, "running")
        p = self.ok("cancel", jid)
        self.assertIn(jid, p.stdout)
        self.assertEqual(self.c.result("status", {"id": jid})["state"], "cancelled")
        p = self.ctl("wait", jid)
        self.assertEqual(p.returncode, 1, self.why(p))
        docs = self.json_lines(self.ok("--json", "cancel", jid))
        self.assertEqual(docs[0]["state"], "cancelled")

    def test_list(self):
        done = self.submit_ids([spec(self.url("/small.txt")) for _ in range(3)])
        failed = self.submit_ids([spec("http://127.0.0.1:1/")])
        for jid in done + failed:
            self.wait_job(self.c, jid)
        p = self.ok("list")
        self.assertRegex(p.stdout.splitlines()[0], r"ID\s+STATE\s+HTTP\s+BYTES\s+URL", self.why(p))
        for jid in done + failed:
            self.assertIn(jid, p.stdout)
        p = self.ok("list", "--state", "done")
        for jid in done:
            self.assertIn(jid, p.stdout)
        self.assertNotIn(failed[0], p.stdout)
        docs = self.json_lines(self.ok("--json", "list", "--state", "failed"))
        self.assertEqual([d["id"] for d in docs], failed)
        p = self.ctl("list", "--state", "bogus")
        self.assertIn(p.returncode, (2, 4), self.why(p))

    def test_list_pages_through_everything(self):
        ids = self.submit_ids([spec(self.url("/small.txt")) for _ in range(2500)])
        for jid in ids[-1:]:
            self.wait_job(self.c, jid)
        # fetchctl pages through every job with the cursor (100 per page by default).
        docs = self.json_lines(self.ok("--json", "list"))
        self.assertEqual([d["id"] for d in docs], ids)
        readable = self.ok("list").stdout
        self.assertTrue(all(jid in readable for jid in ids))

    def test_stats(self):
        p = self.ok("stats")
        self.assertTrue(p.stdout.strip(), self.why(p))
        self.assertIn("control_clients", p.stdout)
        docs = self.json_lines(self.ok("--json", "stats"))
        self.assertEqual(len(docs), 1)
        self.assertIn("objects", docs[0])
        self.assertIn("control_clients", docs[0])

    def test_version(self):
        daemon_version = subprocess.run([self.daemon.cmd[0], "--version"], capture_output=True,
                                        text=True).stdout.split()[-1]
        p = self.ok("version")
        self.assertIn(daemon_version, p.stdout)
        docs = self.json_lines(self.ok("--json", "version"))
        self.assertEqual(len(docs), 1, docs)
        self.assertIn(daemon_version, json.dumps(docs[0]))

    def test_watch(self):
        env = clean_env(FETCHD_SOCKET=self.daemon.socket)
        proc = subprocess.Popen([FETCHCTL, "--json", "watch"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.addCleanup(self._reap, proc)
        buf = b""
        seen = set()
        # Wait (bounded) until watch is subscribed: it reports events for a
        # job submitted after that.
        deadline = time.monotonic() + 30
        probe = []
        while time.monotonic() < deadline and not seen & set(probe):
            probe += self.submit_ids([spec(self.url("/small.txt"))])
            end = time.monotonic() + 1
            while time.monotonic() < end:
                r, _, _ = select.select([proc.stdout], [], [], 0.1)
                if r:
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    buf += chunk
                    seen |= {json.loads(l)["job"]["id"] for l in buf.split(b"\n")[:-1]
                             if l.strip()}
        self.assertTrue(seen & set(probe), "watch printed nothing: %r %r" % (buf, proc.poll()))
        jid = self.submit_ids([spec(self.url("/small.txt"))])[0]
        self.wait_job(self.c, jid)
        deadline = time.monotonic() + 30
        events = []
        while time.monotonic() < deadline and "finished" not in events:
            r, _, _ = select.select([proc.stdout], [], [], 0.1)
            if r:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buf += chunk
                lines = buf.split(b"\n")
                docs = [json.loads(l) for l in lines[:-1] if l.strip()]
                events = [d["event"] for d in docs if d["job"]["id"] == jid]
        self.assertEqual(events, ["queued", "started", "finished"])
        proc.send_signal(signal.SIGINT)
        proc.wait(10)

    def test_watch_readable_with_filters(self):
        ids = self.submit_ids([spec(self.srv.url("/drip?bytes=10&interval_ms=200"))])
        env = clean_env(FETCHD_SOCKET=self.daemon.socket)
        proc = subprocess.Popen([FETCHCTL, "watch", "--events", "finished", ids[0]], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)
        self.addCleanup(self._reap, proc)
        out = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and ids[0].encode() not in out:
            r, _, _ = select.select([proc.stdout], [], [], 0.1)
            if r:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
        self.assertIn(ids[0].encode(), out)
        self.assertIn(b"finished", out)
        self.assertNotIn(b"started", out)
        proc.terminate()
        proc.wait(10)

    @staticmethod
    def _reap(proc):
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()


class GlobalOptions(FetchctlCase):
    def test_before_and_after_the_command(self):
        jid = self.submit(self.c, [spec(self.url("/small.txt"))])[0]
        self.wait_job(self.c, jid)
        sock = self.daemon.socket
        for args in (["-s", sock, "--json", "status", jid],
                     ["status", jid, "-s", sock, "--json"],
                     ["--socket", sock, "status", "--json", jid],
                     ["status", "--socket", sock, jid, "--json"]):
            with self.subTest(args=args):
                p = self.ok(*args, sock=False)
                docs = self.json_lines(p)
                self.assertEqual([d["id"] for d in docs], [jid])

    def test_fetchd_socket_env(self):
        env = clean_env(FETCHD_SOCKET=self.daemon.socket)
        self.ok("version", env=env)
        env = clean_env(FETCHD_SOCKET="/nonexistent/fetchd.sock")
        self.ok("-s", self.daemon.socket, "version", env=env)


class ExitCodes(FetchctlCase):
    def test_usage_errors_exit_2(self):
        for args in (["bogus-command"], ["submit", "--bogus", self.url("/x")], ["--bogus"],
                     ["submit"], ["list", "--limit", "abc"], ["status"], ["-s"]):
            with self.subTest(args=args):
                p = self.ctl(*args)
                self.assertEqual(p.returncode, 2, self.why(p))
                self.assertTrue(p.stderr.strip(), self.why(p))
        self.assertEqual(self.list_all(self.c), [])

    def test_no_daemon_exit_3(self):
        path = os.path.join(self.work, "nobody.sock")
        for args in (["-s", path, "version"], ["-s", path, "submit", self.url("/small.txt")]):
            p = self.ctl(*args, sock=False)
            self.assertEqual(p.returncode, 3, self.why(p))
            self.assertIn("cannot connect to fetchd at %s" % path, p.stderr)
            self.assertIn("fetchd --control %s" % path, p.stderr)
        p = self.ctl("version", env=clean_env(FETCHD_SOCKET=path))
        self.assertEqual(p.returncode, 3, self.why(p))
        self.assertIn(path, p.stderr)

    def test_server_error_exit_4(self):
        p = self.ctl("status", "0123456789abcdef")
        self.assertEqual(p.returncode, 4, self.why(p))
        self.assertIn("not_found", p.stderr + p.stdout)
        p = self.ctl("cancel", "0123456789abcdef")
        self.assertEqual(p.returncode, 4, self.why(p))
        p = self.ctl("submit", "ftp://127.0.0.1/x")
        self.assertEqual(p.returncode, 4, self.why(p))
        self.assertIn("url", p.stderr)

    def test_help_for_every_command(self):
        for args in (["--help"], ["-h"]) + tuple([c, "--help"] for c in COMMANDS) \
                + tuple(["help", c] for c in []):
            with self.subTest(args=args):
                p = self.ctl(*args, sock=False)
                self.assertEqual(p.returncode, 0, self.why(p))
                self.assertTrue(p.stdout.strip(), self.why(p))
                if args[0] in COMMANDS:
                    self.assertIn(args[0], p.stdout)
        top = self.ctl("--help", sock=False).stdout
        for c in COMMANDS:
            self.assertIn(c, top)

    def test_man_page(self):
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        path = os.path.join(repo, "client", "fetchctl.1")
        self.assertTrue(os.path.exists(path), path)
        with open(path) as f:
            text = f.read()
        self.assertIn(".TH", text)
        for c in COMMANDS:
            self.assertIn(c, text)
        groff = require_tool(self, "groff", "groff-base")
        p = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", path],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual((p.returncode, p.stderr.strip()), (0, ""), p.stderr)


class QueueFull(FetchctlCase):
    ARGS = ["--max-jobs", "1", "--max-running", "1"]

    def test_queue_full_exit_4(self):
        self.submit(self.c, [spec(self.srv.url("/never"), timeout=NEVER_SECONDS)])
        p = self.ctl("submit", self.url("/small.txt"), self.url("/small.txt"))
        self.assertEqual(p.returncode, 4, self.why(p))
        self.assertIn("queue_full", p.stderr + p.stdout)


if __name__ == "__main__":
    import unittest
    unittest.main()
