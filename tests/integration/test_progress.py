"""Progress (issue 14): a running job's `total`, `speed` and `eta`, the
`progress` events only subscribers that asked get (at most one per job per
progress interval), and fetchctl on a terminal: `submit --wait` under a
pseudo-terminal draws a live line (a bar for one job) and a summary by
state, status class and error code; on a pipe neither; Ctrl-C leaves the
jobs running and prints the exact command that cancels them, or with
--cancel-on-interrupt cancels them; `watch --events progress`.

Real fetchd and fetchctl against a private nginx (fetchd's own per-job
`limit_rate` makes a download last a known few seconds) and, for a body
without Content-Length, a chunked server in this file. Counts are checked
against the daemon's own timings (total_ms), never the test's clock; every
wait is bounded; every process and server a test starts, it stops; live
counts are back at their baseline after each test.
"""

import fcntl
import os
import re
import select
import shlex
import signal
import socket
import struct
import subprocess
import termios
import threading
import time
import unittest

from ctltest import FETCHCTL, IO_TIMEOUT, ControlTestCase, clean_env, spec
from fetchtest import SLOWDOWN, Nginx, free_port, tmpdir, remove_tree

MIB = 1024 * 1024
INTERVAL_S = 0.5  # fetchd's default --progress-interval
RUN_LIMIT = 60.0 * SLOWDOWN
SLOW = 256 * 1024  # limit_rate of jobs that must still run when the test acts


class ChunkedServer:
    """HTTP/1.1 on 127.0.0.1: every request gets `chunks` chunks of `size`
    bytes, one per `gap` seconds, without Content-Length."""

    def __init__(self, chunks=12, size=16384, gap=0.1):
        self.chunks, self.size, self.gap = chunks, size, gap
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def url(self, path="/"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def _serve(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                                 b"Connection: close\r\n\r\n")
                    for _ in range(self.chunks):
                        if self.stopping.wait(self.gap):
                            break
                        conn.sendall(b"%x\r\n%s\r\n" % (self.size, b"x" * self.size))
                    conn.sendall(b"0\r\n\r\n")
                except OSError:
                    pass

    def stop(self):
        self.stopping.set()
        self.sock.close()
        self.thread.join(10)


def run_in_pty(args, env, cols=100, act=None, limit=RUN_LIMIT):
    """Runs fetchctl with stdout and stderr on one pseudo-terminal of `cols`
    columns; act(output_so_far, proc) may act on it (once it returns True it
    is not called again). Returns (exit status, all output)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, cols, 0, 0))
    proc = subprocess.Popen([FETCHCTL] + list(args), env=env, stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave)
    os.close(slave)
    out, acted = b"", act is None
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline:
            if not acted:
                acted = act(out, proc)
            ready, _, _ = select.select([master], [], [], 0.05)
            if not ready:
                if proc.poll() is not None and acted:
                    # Drained: nothing more will come once it has exited.
                    ready, _, _ = select.select([master], [], [], 0.2)
                    if not ready:
                        break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the slave side is closed and drained
                break
            if not chunk:
                break
            out += chunk
        rc = proc.wait(max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
    return rc, out.decode(errors="replace")


def sent_sigint(pattern):
    """An act() for run_in_pty: SIGINT once the output matches pattern."""
    def act(out, proc):
        if re.search(pattern, out.decode(errors="replace")):
            proc.send_signal(signal.SIGINT)
            return True
        return False
    return act


class ProgressCase(ControlTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.nginx = Nginx().start()
        cls.addClassCleanup(cls.nginx.stop)

    def setUp(self):
        # Idle connections close within a second, so the end-of-test check
        # sees none left open.
        self.daemon = self.start_fetchd(["--idle-timeout", "1"] + list(self.fetchd_args()))
        self.c = self.connect()
        self.env = clean_env(FETCHD_SOCKET=self.daemon.socket)

    def fetchd_args(self):
        return []

    def url(self, path):
        return self.nginx.url(path)

    def progress_until_finished(self, client, jid):
        """The progress events of job jid up to its finished event (bounded)."""
        events = []
        deadline = time.monotonic() + RUN_LIMIT
        while time.monotonic() < deadline:
            ev = client.notification(lambda p: p["job"]["id"] == jid,
                                     timeout=deadline - time.monotonic())
            if ev["event"] == "finished":
                return events, ev["job"]
            self.assertEqual(ev["event"], "progress", ev)
            events.append(ev["job"])
        self.fail("job %s did not finish within %.0f s%s" % (jid, RUN_LIMIT, self.ctx()))


class ProgressEvents(ProgressCase):
    def test_progress_events_of_a_slow_download(self):
        asked = self.connect()
        sub = asked.result("subscribe", {"events": ["finished"], "progress": True})
        self.assertIsInstance(sub["subscription"], int)
        plain, named = self.connect(), self.connect()
        plain.result("subscribe", {})
        named.result("subscribe", {"events": ["started", "finished"]})
        jid = self.submit(self.c, [spec(self.url("/4m.bin"), limit_rate=MIB)])[0]
        events, job = self.progress_until_finished(asked, jid)

        self.assertEqual(job["state"], "done", job)
        seconds = job["timings"]["total_ms"] / 1000.0
        self.assertGreaterEqual(seconds, 2.5, job)  # 4 MiB at 1 MiB/s, past the first burst
        # At most one per interval, and not one per read (about 64 reads here).
        self.assertLessEqual(len(events), seconds / INTERVAL_S + 2, (seconds, events))
        self.assertGreaterEqual(len(events), 3, events)
        last = 0
        for ev in events:
            self.assertEqual(ev["state"], "running", ev)
            self.assertEqual(ev["total"], 4 * MIB, ev)
            self.assertGreater(ev["wire_bytes"], last, events)
            self.assertLess(ev["wire_bytes"], 4 * MIB + 1, ev)
            self.assertGreater(ev["speed"], 0, ev)
            self.assertIsInstance(ev["eta"], int, ev)
            self.assertGreaterEqual(ev["eta"], 0, ev)
            last = ev["wire_bytes"]
        # The moving average is near the limit once the first burst is past.
        self.assertLess(abs(events[-1]["speed"] - MIB), 0.5 * MIB, events[-1])
        # A finished job has no progress fields any more.
        for key in ("speed", "eta", "total"):
            self.assertNotIn(key, job)
        # Those that did not ask got none.
        for client in (plain, named):
            got = [e["event"] for e in client.events_until_marker()]
            self.assertNotIn("progress", got)
            self.assertIn("finished", got)

    def test_status_of_a_running_job(self):
        jid = self.submit(self.c, [spec(self.url("/4m.bin"), limit_rate=SLOW)])[0]
        deadline = time.monotonic() + IO_TIMEOUT
        job = self.c.result("status", {"id": jid})
        while time.monotonic() < deadline and job.get("speed", 0) == 0:
            time.sleep(0.05)
            job = self.c.result("status", {"id": jid})
        self.assertEqual(job["state"], "running", job)
        self.assertEqual(job["total"], 4 * MIB, job)
        self.assertGreater(job["speed"], 0, job)
        self.assertGreater(job["eta"], 0, job)
        self.assertLess(job["wire_bytes"], 4 * MIB, job)
        self.c.result("cancel", {"id": jid})
        self.assertEqual(self.wait_job(self.c, jid)["state"], "cancelled")

    def test_unknown_total(self):
        srv = ChunkedServer()
        self.addCleanup(srv.stop)
        asked = self.connect()
        asked.result("subscribe", {"events": ["progress", "finished"]})
        jid = self.submit(self.c, [spec(srv.url())])[0]
        events, job = self.progress_until_finished(asked, jid)
        self.assertEqual(job["state"], "done", job)
        self.assertEqual(job["wire_bytes"], srv.chunks * srv.size, job)
        self.assertGreaterEqual(len(events), 1, events)
        for ev in events:
            self.assertIsNone(ev["total"], ev)
            self.assertIsNone(ev["eta"], ev)
            self.assertGreater(ev["speed"], 0, ev)

    def test_unsubscribe_stops_them(self):
        asked = self.connect()
        sub = asked.result("subscribe", {"events": ["progress"], "ids": []})["subscription"]
        asked.result("unsubscribe", {"subscription": sub})
        other = self.connect()
        other.result("subscribe", {"progress": True})
        jid = self.submit(self.c, [spec(self.url("/1m.bin"), limit_rate=MIB // 2)])[0]
        self.assertEqual(self.wait_job(self.c, jid)["state"], "done")
        self.assertEqual(asked.events_until_marker(), [])
        self.assertIn("progress", [e["event"] for e in other.events_until_marker()])

    def test_subscribe_params(self):
        resp = self.c.call("subscribe", {"progress": "yes"})
        self.assert_error(resp, (-32602, "invalid_params"))
        resp = self.c.call("subscribe", {"events": ["progres"]})
        err = self.assert_error(resp, (-32602, "invalid_params"))
        self.assertIn("progress", err["message"])
        self.assertIsInstance(self.c.result("subscribe", {"events": ["progress"]})
                              ["subscription"], int)
        self.assertIsInstance(self.c.result("subscribe", {"progress": False})
                              ["subscription"], int)


class ProgressInterval(ProgressCase):
    def fetchd_args(self):
        return ["--progress-interval", "200"]

    def test_interval_option(self):
        asked = self.connect()
        asked.result("subscribe", {"progress": True, "events": ["finished"]})
        jid = self.submit(self.c, [spec(self.url("/4m.bin"), limit_rate=MIB)])[0]
        events, job = self.progress_until_finished(asked, jid)
        seconds = job["timings"]["total_ms"] / 1000.0
        self.assertLessEqual(len(events), seconds / 0.2 + 2, (seconds, len(events)))
        # More than the default interval would allow: the option is in force.
        self.assertGreater(len(events), seconds / INTERVAL_S + 2, (seconds, len(events)))

    def test_bad_interval(self):
        for value in ("0", "5", "x"):
            p = subprocess.run([os.path.join(os.path.dirname(FETCHCTL), "fetchd"),
                                "--progress-interval", value, "--control",
                                os.path.join(self.daemon.dir, "other.sock"), "--metrics", "off"],
                               capture_output=True, text=True, timeout=IO_TIMEOUT,
                               env=clean_env())
            self.assertEqual(p.returncode, 64, p.stderr)
            self.assertIn("progress", p.stderr)


class Terminal(ProgressCase):
    def three_jobs(self):
        return [self.url("/small.txt"), self.url("/status/404"),
                "http://127.0.0.1:%d/" % free_port()]

    def test_summary_on_a_terminal(self):
        rc, out = run_in_pty(["submit", "--wait"] + self.three_jobs(), self.env)
        self.assertEqual(rc, 1, out)  # one job failed
        self.assertIn("\r\x1b[K", out)  # the live line was drawn in place
        self.assertRegex(out, r"\b3 of 3 finished \(2 done, 1 failed\)", out)
        summary = out[out.index("fetchctl: 3 jobs finished"):]
        self.assertRegex(summary, r"finished in [0-9.]+ s: 2 done, 1 failed, 0 cancelled;")
        self.assertRegex(summary, r"HTTP status: 2xx 1, 4xx 1, no response 1\r\n")
        self.assertRegex(summary, r"errors: connect_refused 1\r\n")

    def test_nothing_drawn_on_a_pipe(self):
        p = subprocess.run([FETCHCTL, "submit", "--wait"] + self.three_jobs(), env=self.env,
                           capture_output=True, text=True, timeout=RUN_LIMIT)
        self.assertEqual(p.returncode, 1, p)
        self.assertNotIn("\r", p.stderr + p.stdout)
        self.assertNotIn("\x1b", p.stderr + p.stdout)
        self.assertNotIn("finished in", p.stderr)
        self.assertEqual(len(p.stdout.splitlines()), 6, p.stdout)  # 3 ids, 3 jobs

    def test_stdout_redirected_stderr_a_terminal(self):
        out_path = os.path.join(self.daemon.dir, "out.txt")
        with open(out_path, "w") as f:
            master, slave = os.openpty()
            try:
                p = subprocess.run([FETCHCTL, "submit", "--wait"] + self.three_jobs()[:2],
                                   env=self.env, stdout=f, stderr=slave,
                                   stdin=subprocess.DEVNULL, timeout=RUN_LIMIT)
                os.close(slave)
                slave = None
                err = b""
                while select.select([master], [], [], 0.2)[0]:
                    try:
                        chunk = os.read(master, 65536)
                    except OSError:
                        break
                    if not chunk:
                        break
                    err += chunk
            finally:
                if slave is not None:
                    os.close(slave)
                os.close(master)
        self.assertEqual(p.returncode, 0)
        self.assertIn(b"2 done, 0 failed", err)
        with open(out_path) as f:
            text = f.read()
        self.assertNotIn("\x1b", text)
        self.assertEqual(len(text.splitlines()), 4, text)

    def test_bar_of_one_download(self):
        rc, out = run_in_pty(["submit", "--wait", "--limit-rate", "1M", self.url("/4m.bin")],
                             self.env, cols=90)
        self.assertEqual(rc, 0, out)
        frames = [f for f in re.split(r"\r\x1b\[K", out) if "%" in f]
        mid = [f for f in frames if re.match(r" *\d+% \[=*>? *\] [0-9.]+ [KM]iB / 4\.0 MiB, "
                                             r"[0-9.]+ [KM]iB/s, ETA \d+s$", f)]
        self.assertTrue(mid, frames)
        for f in frames:
            self.assertLessEqual(len(f.split("\r\n")[0]), 89, f)  # fits the terminal
        self.assertRegex(out, r"100% \[=+\] 4\.0 MiB / 4\.0 MiB, [0-9.]+ [KM]iB/s in \d+s\r\n")
        self.assertRegex(out, r"fetchctl: 1 job finished in [0-9.]+ s: 1 done, 0 failed")

    def running_jobs(self, n, rate=SLOW, extra=()):
        return ["submit", "--wait", "--limit-rate", str(rate)] + list(extra) + \
            [self.url("/4m.bin")] * n

    def test_ctrl_c_leaves_the_jobs_running(self):
        rc, out = run_in_pty(self.running_jobs(3), self.env,
                             act=sent_sigint(r"3 running, 0 queued"))
        self.assertEqual(rc, 130, out)
        self.assertRegex(out, r"fetchctl: interrupted: 3 jobs keep running in fetchd", out)
        m = re.search(r"to cancel them:\r\n  (fetchctl cancel( [0-9a-f]{16}){3})\r\n", out)
        self.assertIsNotNone(m, out)
        ids = m.group(1).split()[2:]
        for jid in ids:
            self.assertEqual(self.c.result("status", {"id": jid})["state"], "running")
        # The printed command is the one that cancels them.
        p = subprocess.run(shlex.split(m.group(1).replace("fetchctl", FETCHCTL, 1)),
                           env=self.env, capture_output=True, text=True, timeout=IO_TIMEOUT)
        self.assertEqual(p.returncode, 0, p)
        for jid in ids:
            self.assertEqual(self.wait_job(self.c, jid)["state"], "cancelled")

    def test_ctrl_c_many_jobs_ids_in_a_file(self):
        tmp = tmpdir("ids-")
        self.addCleanup(remove_tree, tmp)
        env = dict(self.env, TMPDIR=tmp)
        rc, out = run_in_pty(self.running_jobs(25), env, act=sent_sigint(r"\b25 running"))
        self.assertEqual(rc, 130, out)
        self.assertIn("25 jobs keep running in fetchd", out)
        m = re.search(r"their ids are in (\S+); to cancel them:\r\n  (xargs fetchctl cancel "
                      r"< \S+)\r\n", out)
        self.assertIsNotNone(m, out)
        self.assertTrue(m.group(1).startswith(tmp + "/fetchctl-unfinished-"), m.group(1))
        with open(m.group(1)) as f:
            ids = f.read().split()
        self.assertEqual(len(ids), 25, ids)
        p = subprocess.run(m.group(2).replace("fetchctl", FETCHCTL, 1), shell=True, env=env,
                           capture_output=True, text=True, timeout=IO_TIMEOUT)
        self.assertEqual(p.returncode, 0, p)
        self.assertEqual([self.wait_job(self.c, j)["state"] for j in ids], ["cancelled"] * 25)

    def test_cancel_on_interrupt(self):
        rc, out = run_in_pty(self.running_jobs(3, extra=["--cancel-on-interrupt"]), self.env,
                             act=sent_sigint(r"3 running, 0 queued"))
        self.assertEqual(rc, 130, out)
        self.assertIn("cancelled 3 jobs (--cancel-on-interrupt)", out)
        ids = re.findall(r"^([0-9a-f]{16})\r$", out, re.M)
        self.assertEqual(len(ids), 3, out)
        for jid in ids:
            self.assertEqual(self.c.result("status", {"id": jid})["state"], "cancelled")
        self.assertRegex(out, r"fetchctl: 3 jobs finished in [0-9.]+ s: 0 done, 0 failed, "
                              r"3 cancelled")

    def test_ctrl_c_on_a_pipe(self):
        proc = subprocess.Popen([FETCHCTL] + self.running_jobs(2), env=self.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            ids = [proc.stdout.readline().strip() for _ in range(2)]
            for jid in ids:
                self.wait_state(self.c, jid, "running")
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=IO_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
        self.assertEqual(proc.returncode, 130, err)
        self.assertIn("2 jobs keep running in fetchd", err)
        self.assertIn("fetchctl cancel %s %s" % tuple(ids), err)
        self.assertNotIn("\r", err)

    def test_cancel_on_interrupt_needs_wait(self):
        p = subprocess.run([FETCHCTL, "submit", "--cancel-on-interrupt", self.url("/small.txt")],
                           env=self.env, capture_output=True, text=True, timeout=IO_TIMEOUT)
        self.assertEqual(p.returncode, 2, p)

    def test_watch_progress(self):
        jid = self.submit(self.c, [spec(self.url("/4m.bin"), limit_rate=2 * MIB)])[0]
        proc = subprocess.Popen([FETCHCTL, "watch", "--events", "progress,finished", jid],
                                env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        out = b""
        try:
            deadline = time.monotonic() + RUN_LIMIT
            while time.monotonic() < deadline and b"finished" not in out:
                if select.select([proc.stdout], [], [], 0.1)[0]:
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    out += chunk
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=10)
        lines = out.decode().splitlines()
        prog = [l for l in lines if l.startswith("progress")]
        self.assertTrue(prog, lines)
        for line in prog:
            self.assertRegex(line, r"%s  running\s+200 .* \d+/4194304 \d+/s ETA \d+s$" % jid)
        self.assertRegex(lines[-1], r"^finished\s+%s  done\s+200 " % jid)


if __name__ == "__main__":
    unittest.main()
