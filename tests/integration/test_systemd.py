"""fetchd under systemd: the units in deploy/, and the daemon's side of the
systemd protocols, driven without systemd itself.

- The units: `systemd-analyze verify` on each (with the man pages they name
  and a copy of the service that points at the built binary), the exposure
  score of `systemd-analyze security --offline=yes` (at most 1.5), and the
  directives the service promises; the packaged fetchd.json starts a daemon.
- A NOTIFY_SOCKET harness: an AF_UNIX datagram socket that records every
  notification with the kernel's receive timestamp. READY=1 comes only once
  the control socket accepts and the persisted queue is loaded; WATCHDOG=1 at
  half of WATCHDOG_USEC; RELOADING=1 then READY=1 on SIGHUP; STOPPING=1 on
  SIGTERM.
- Socket activation with `systemd-socket-activate` and a real fetchctl.
- SIGHUP with a good and with a broken config file.
- SIGTERM with 50 jobs running and 5,000 queued, a restart with the same
  state dir, and a count of the requests the server saw for each job: none is
  lost, and only jobs that were running at the stop run twice (at least once).
- kill -9: the queue of the last checkpoint comes back.
"""

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ctltest import FETCHCTL, FETCHD, RpcClient, clean_env
from fetchtest import REPO, SLOWDOWN, remove_tree, skip_unless_tools, tmpdir

DEPLOY = os.path.join(REPO, "deploy")
SERVICE = os.path.join(DEPLOY, "fetchd.service")
SOCKET_UNIT = os.path.join(DEPLOY, "fetchd.socket")
TEMPLATE_UNIT = os.path.join(DEPLOY, "fetchd@.service")
CONFIG = os.path.join(DEPLOY, "fetchd.json")
MAN_PAGES = {"man8/fetchd.8": os.path.join(DEPLOY, "fetchd.8"),
             "man1/fetchctl.1": os.path.join(REPO, "client", "fetchctl.1")}
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
MAX_EXPOSURE = 1.5
START_TIMEOUT = 15.0 * SLOWDOWN
STOP_TIMEOUT = 20.0 * SLOWDOWN
# SO_TIMESTAMPNS / SCM_TIMESTAMPNS on Linux (asm-generic/socket.h).
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def report(text):
    """A line for the test log (the restart counts, the exposure score)."""
    sys.stderr.write("\n[test_systemd] %s\n" % text)
    sys.stderr.flush()


# ---- the units ---------------------------------------------------------------

def unit_directives(path):
    """[(section, key, value, comment_above)] of a unit file."""
    out, section, comment = [], None, ""
    with open(path) as f:
        for raw in f:
            line = raw.strip()
            if line.startswith("#"):
                comment = line
            elif line.startswith("["):
                section, comment = line.strip("[]"), ""
            elif "=" in line:
                key, value = line.split("=", 1)
                out.append((section, key.strip(), value.strip(), comment))
                comment = ""
            elif not line:
                comment = ""
    return out


@skip_unless_tools(("systemd-analyze", "systemd"))
class Units(unittest.TestCase):
    def setUp(self):
        self.dir = tmpdir("units-")
        self.addCleanup(remove_tree, self.dir)

    def man_tree(self):
        """A MANPATH with the two pages the units' Documentation= names."""
        root = os.path.join(self.dir, "man")
        for rel, src in MAN_PAGES.items():
            self.assertTrue(os.path.exists(src), "missing man page " + src)
            os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
            shutil.copy(src, os.path.join(root, rel))
        return root

    def test_verify_every_unit(self):
        # verify checks that ExecStart's binary exists, and the packaged unit
        # names /usr/bin/fetchd: the copy runs the built binary instead.
        units = os.path.join(self.dir, "units")
        os.mkdir(units)
        with open(SERVICE) as f:
            text = f.read()
        self.assertIn("ExecStart=/usr/bin/fetchd ", text)
        with open(os.path.join(units, "fetchd.service"), "w") as f:
            f.write(text.replace("ExecStart=/usr/bin/fetchd ", "ExecStart=%s " % FETCHD))
        shutil.copy(SOCKET_UNIT, units)
        # The queue consumers' template, verified through an instance of it.
        with open(TEMPLATE_UNIT) as f:
            text = f.read()
        self.assertIn("ExecStart=/usr/bin/fetchd ", text)
        with open(os.path.join(units, "fetchd@.service"), "w") as f:
            f.write(text.replace("ExecStart=/usr/bin/fetchd ", "ExecStart=%s " % FETCHD))
        env = dict(os.environ, MANPATH=self.man_tree(), SYSTEMD_LOG_LEVEL="notice")
        p = subprocess.run([SYSTEMD_ANALYZE, "verify", os.path.join(units, "fetchd.service"),
                            os.path.join(units, "fetchd.socket"),
                            os.path.join(units, "fetchd@1.service")],
                           capture_output=True, text=True, env=env, timeout=60)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertEqual(p.stdout + p.stderr, "", "verify printed warnings")

    def test_security_exposure(self):
        p = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", SERVICE],
                           capture_output=True, text=True, timeout=60)
        m = re.search(r"Overall exposure level for fetchd\.service: (\d+\.\d+)", p.stdout)
        self.assertIsNotNone(m, p.stdout + p.stderr)
        score = float(m.group(1))
        report("systemd-analyze security --offline=yes: exposure %.1f" % score)
        self.assertLessEqual(score, MAX_EXPOSURE, p.stdout)

    def test_service_directives(self):
        d = {key: value for section, key, value, _ in unit_directives(SERVICE)
             if section == "Service"}
        self.assertEqual(d.get("Type"), "notify")
        self.assertEqual(d.get("ExecStart"), "/usr/bin/fetchd -c /etc/fetchd/fetchd.json")
        self.assertEqual(d.get("ExecReload"), "/bin/kill -HUP $MAINPID")
        self.assertEqual(d.get("Restart"), "on-failure")
        self.assertEqual(d.get("RuntimeDirectory"), "fetchd")
        self.assertIn("fetchd", d.get("StateDirectory", "").split())
        self.assertTrue(d.get("DynamicUser") == "yes" or d.get("User") not in (None, "root"))
        self.assertGreaterEqual(int(d.get("LimitNOFILE", "0")), 65536)
        self.assertGreater(int(d.get("WatchdogSec", "0")), 0)
        # Running jobs get shutdown_grace, then fetchd writes its queue: systemd
        # must not SIGKILL it before that.
        with open(CONFIG) as f:
            grace = json.load(f).get("shutdown_grace", 20)
        self.assertGreater(int(d.get("TimeoutStopSec", "0")), grace + 5)

    def test_every_hardening_directive_says_why(self):
        plain = {"Type", "ExecStart", "ExecReload", "WatchdogSec", "Restart", "TimeoutStopSec",
                 "User", "Group", "RuntimeDirectory", "StateDirectory", "LimitNOFILE",
                 "RuntimeDirectoryPreserve", "DynamicUser", "Environment"}
        seen = [(k, c) for s, k, _, c in unit_directives(SERVICE) if s == "Service"]
        missing = [k for i, (k, c) in enumerate(seen)
                   if k not in plain and not c and not (i and seen[i - 1][0] == k)
                   and not (i and seen[i - 1][0] == "SystemCallFilter")]
        self.assertEqual(missing, [], "hardening directives without a comment line")

    def test_socket_unit(self):
        d = {key: value for section, key, value, _ in unit_directives(SOCKET_UNIT)
             if section == "Socket"}
        self.assertEqual(d.get("ListenStream"), "%t/fetchd/control.sock")
        self.assertEqual(d.get("FileDescriptorName"), "control")
        self.assertEqual(d.get("SocketMode"), "0660")

    def test_packaged_config_starts_fetchd(self):
        """deploy/fetchd.json with its directories moved into a temp dir."""
        with open(CONFIG) as f:
            cfg = json.load(f)
        for key in ("control", "download_dir", "state_dir"):
            self.assertIn(key, cfg)
        cfg["control"] = os.path.join(self.dir, "control.sock")
        cfg["download_dir"] = os.path.join(self.dir, "downloads")
        cfg["state_dir"] = os.path.join(self.dir, "state")
        cfg["metrics"] = "127.0.0.1:0"
        os.mkdir(cfg["download_dir"])
        os.mkdir(cfg["state_dir"])
        path = os.path.join(self.dir, "fetchd.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        d = Daemon(["-c", path], self.dir, control=cfg["control"])
        self.addCleanup(d.cleanup)
        d.wait_accepting()
        with RpcClient(cfg["control"]) as c:
            self.assertEqual(c.result("version")["protocol"], 1)
        self.assertEqual(d.stop(), 0, d.log())


# ---- a fetchd with its notifications -----------------------------------------

class Notifications:
    """The receiving end of NOTIFY_SOCKET: records (timestamp, fields)."""

    def __init__(self, directory):
        self.path = os.path.join(directory, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind(self.path)
        self.messages = []  # (kernel receive time in ns since the epoch, {key: value})

    def close(self):
        self.sock.close()

    def _receive(self, timeout):
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, anc, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(16))
        except socket.timeout:
            return None
        stamp = time.time_ns()
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                sec, nsec = struct.unpack("qq", payload[:16])
                stamp = sec * 1000000000 + nsec
        fields = {}
        for line in data.decode(errors="replace").split("\n"):
            if "=" in line:
                k, v = line.split("=", 1)
                fields[k] = v
        msg = (stamp, fields)
        self.messages.append(msg)
        return msg

    def wait_for(self, key, value=None, timeout=START_TIMEOUT, start=0):
        """The first message from index `start` on that has key (=value); its index."""
        deadline = time.monotonic() + timeout
        i = start
        while True:
            while i < len(self.messages):
                fields = self.messages[i][1]
                if key in fields and (value is None or fields[key] == value):
                    return i
                i += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no %s=%s notification within %.0f s; got %r"
                                     % (key, value, timeout,
                                        [m[1] for m in self.messages[start:]][-20:]))
            self._receive(min(left, 0.2))

    def collect(self, seconds):
        """Everything that arrives within `seconds`; returns the new messages."""
        first = len(self.messages)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._receive(deadline - time.monotonic())
        return self.messages[first:]


class Daemon:
    """fetchd in the foreground, its stderr in a file, stopped and reaped in cleanup."""

    def __init__(self, args, directory, control=None, env=None, argv0=None):
        self.dir = directory
        self.control = control
        self.log_path = os.path.join(directory, "fetchd-%d.log" % time.monotonic_ns())
        cmd = (argv0 or [FETCHD]) + [str(a) for a in args]
        if control and not argv0:
            cmd += ["--control", control]
        if not argv0 and not any(str(a).startswith("--metrics") for a in args):
            cmd += ["--metrics", "off"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log,
                                         env=env if env is not None else clean_env(),
                                         start_new_session=True)

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_log(self, needle, timeout=START_TIMEOUT, start=0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            idx = text.find(needle, start)
            if idx >= 0:
                return text[idx:text.find("\n", idx)]
            time.sleep(0.05)
        raise AssertionError("no %r in fetchd's log:\n%s" % (needle, self.log()[-4000:]))

    def wait_accepting(self, path=None, timeout=START_TIMEOUT):
        path = path or self.control
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("fetchd exited with %r:\n%s"
                                     % (self.proc.returncode, self.log()[-4000:]))
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                return
            except OSError:
                time.sleep(0.02)
            finally:
                s.close()
        raise AssertionError("fetchd never accepted on %s:\n%s" % (path, self.log()[-4000:]))

    def send(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Sends sig and returns the exit status (SIGKILL after the timeout: an error)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError("fetchd ignored %s for %.0f s:\n%s"
                                     % (sig, timeout, self.log()[-4000:]))
        return self.proc.returncode

    def wait(self, timeout=STOP_TIMEOUT):
        """The exit status once fetchd exits by itself (SIGKILL after the timeout: an error)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("fetchd did not exit within %.0f s:\n%s"
                                 % (timeout, self.log()[-4000:]))

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)

    def cleanup(self):
        self.kill()


# ---- a loopback HTTP server that counts and holds requests -------------------

class CountingServer:
    """HTTP/1.1 on 127.0.0.1: counts requests per path (and per phase) and
    the responses it finished writing. /hold/MS/... waits MS milliseconds
    before answering, /gate/NAME/... until gates[NAME] opens (60 s at most);
    everything else answers at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.phase = 1
        self.requests = {}   # path -> [count in phase 1, count in phase 2, ...]
        self.completed = {}  # path -> responses fully written
        self.release = threading.Event()
        self.gates = {"quick": threading.Event(), "slow": threading.Event()}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                outer._count(self.path)
                m = re.match(r"^/hold/(\d+)/", self.path)
                if m:
                    outer.release.wait(int(m.group(1)) / 1000.0)
                m = re.match(r"^/gate/(\w+)/", self.path)
                if m:
                    outer.gates[m.group(1)].wait(60)
                body = b"ok\n"
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    self.wfile.flush()
                except OSError:
                    return
                with outer.lock:
                    outer.completed[self.path] = outer.completed.get(self.path, 0) + 1

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 1024  # the listen backlog: 50 connect at once

            def handle_error(self, request, client_address):
                pass  # fetchd resets connections it cancels; that is no error here

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _count(self, path):
        with self.lock:
            counts = self.requests.setdefault(path, [0, 0, 0])
            counts[self.phase - 1] += 1

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def stop(self):
        self.release.set()
        for gate in self.gates.values():
            gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def file_identity(path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


# ---- the tests of the daemon side ----------------------------------------------

class _DaemonTest(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        self.dir = tmpdir("sd-")
        os.chmod(self.dir, 0o700)
        self.addCleanup(remove_tree, self.dir)
        self.control = os.path.join(self.dir, "control.sock")
        self.notify = Notifications(self.dir)
        self.addCleanup(self.notify.close)

    def start(self, args=(), notify=True, env_extra=None, control=None, argv0=None):
        env = clean_env(**(env_extra or {}))
        if notify:
            env["NOTIFY_SOCKET"] = self.notify.path
        d = Daemon(list(args), self.dir, control=control or self.control, env=env, argv0=argv0)
        self.addCleanup(d.cleanup)
        return d

    def server(self):
        srv = CountingServer()
        self.addCleanup(srv.stop)
        return srv

    def client(self, path=None, timeout=30.0 * SLOWDOWN):
        c = RpcClient(path or self.control, timeout)
        self.addCleanup(c.close)
        return c

    def submit(self, client, urls, batch=1000):
        ids = []
        for i in range(0, len(urls), batch):
            ids += client.result("submit", {"jobs": [{"url": u} for u in urls[i:i + batch]]},
                                 timeout=60)["ids"]
        self.assertEqual(len(ids), len(urls))
        return ids

    def wait_requests(self, srv, n, limit=30.0):
        """Waits until the server has seen n requests (fetchd counts a job as
        running from before its connection is made)."""
        deadline = time.monotonic() + limit * SLOWDOWN
        seen = 0
        while time.monotonic() < deadline:
            with srv.lock:
                seen = sum(sum(v) for v in srv.requests.values())
            if seen >= n:
                break
            time.sleep(0.02)
        with srv.lock:
            seen_paths = {p: v for p, v in srv.requests.items() if v != [1, 0, 0]}
        self.assertEqual(seen, n, "requests the server saw; not once: %r" % seen_paths)

    def list_all(self, client, state=None):
        jobs, after = [], None
        while True:
            params = {"limit": 1000}
            if state:
                params["state"] = state
            if after:
                params["after"] = after
            page = client.result("list", params, timeout=60)
            jobs += page["jobs"]
            after = page["next"]
            if after is None:
                return jobs

    def wait_stats(self, client, pred, what, limit=30.0):
        deadline = time.monotonic() + limit * SLOWDOWN
        stats = None
        while time.monotonic() < deadline:
            stats = client.result("stats")
            if pred(stats):
                return stats
            time.sleep(0.05)
        self.fail("never %s; last stats jobs: %r" % (what, stats and stats.get("jobs")))


class Readiness(_DaemonTest):
    def test_ready_only_once_the_socket_accepts(self):
        d = self.start(["--log-level", "debug"],
                       env_extra={"JOURNAL_STREAM": "8:12345"})
        i = self.notify.wait_for("READY", "1")
        # Connect at once, no retry: the socket must be listening already.
        with RpcClient(self.control, 10) as c:
            self.assertEqual(c.result("version")["protocol"], 1)
        # The kernel stamped the READY datagram when fetchd sent it; the
        # socket file got its mtime when it was bound (from a clock that can
        # only lag, so this can miss a late READY but never invents one).
        ready_ns = self.notify.messages[i][0]
        self.assertGreaterEqual(ready_ns, os.stat(self.control).st_mtime_ns,
                                "READY=1 was sent before the control socket was bound")
        self.assertTrue(all("READY" not in f for _, f in self.notify.messages[:i]))
        status = self.notify.messages[i][1].get("STATUS")
        if status is None:
            status = self.notify.messages[self.notify.wait_for("STATUS")][1]["STATUS"]
        self.assertRegex(status, r"\d")
        self.assertEqual(d.stop(), 0, d.log())
        # Under JOURNAL_STREAM every line carries a syslog priority.
        lines = [l for l in d.log().splitlines() if l]
        self.assertTrue(lines)
        for line in lines:
            self.assertRegex(line, r"^<[0-7]>")

    def test_status_is_refreshed(self):
        d = self.start()
        self.notify.wait_for("READY", "1")
        first = len(self.notify.messages)
        self.notify.wait_for("STATUS", start=first, timeout=12 * SLOWDOWN)
        self.assertEqual(d.stop(), 0, d.log())

    def test_ready_after_the_persisted_queue_is_loaded(self):
        srv = self.server()
        state = os.path.join(self.dir, "state")
        os.mkdir(state)
        args = ["--state-dir", state, "--max-running", "1", "--shutdown-grace", "0"]
        d = self.start(args, notify=False)
        d.wait_accepting()
        c = self.client()
        ids = self.submit(c, [srv.url("/hold/60000/%d" % n) for n in range(300)])
        self.wait_stats(c, lambda s: s["jobs"]["running"] == 1, "one job running")
        c.close()
        self.assertEqual(d.stop(), 0, d.log())
        self.assertTrue(os.path.exists(os.path.join(state, "queue.json")))

        d = self.start(args)
        self.notify.wait_for("READY", "1")
        c = self.client()
        jobs = {j["id"]: j for j in self.list_all(c)}
        self.assertEqual(sorted(jobs), sorted(ids), "the reloaded queue at READY=1")
        self.assertEqual(d.stop(), 0, d.log())


class Watchdog(_DaemonTest):
    def test_watchdog_cadence(self):
        # WATCHDOG_USEC=400000: WATCHDOG=1 every 200 ms. The test waits for
        # six of them (bounded) rather than counting what arrives in a fixed
        # time, which a busy host would starve; the bounds only catch a
        # missing or badly wrong timer: no gap under 50 ms, and a median gap
        # under WATCHDOG_USEC (a pause or two of a slow host do not move it).
        d = self.start(env_extra={"WATCHDOG_USEC": "400000"})
        i = self.notify.wait_for("READY", "1")
        got = []
        for _ in range(6):
            i = self.notify.wait_for("WATCHDOG", "1", start=i + 1)
            got.append(self.notify.messages[i])
        gaps = sorted((b[0] - a[0]) / 1e6 for a, b in zip(got, got[1:]))
        self.assertGreater(gaps[0], 50, "WATCHDOG=1 far too often: gaps %r ms" % gaps)
        self.assertLess(gaps[len(gaps) // 2], 400, "WATCHDOG=1 too rare: gaps %r ms" % gaps)
        self.assertEqual(d.stop(), 0, d.log())

    def test_watchdog_for_another_pid_is_ignored(self):
        d = self.start(env_extra={"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
        self.notify.wait_for("READY", "1")
        got = [m for m in self.notify.collect(1.0) if "WATCHDOG" in m[1]]
        self.assertEqual(got, [])
        self.assertEqual(d.stop(), 0, d.log())


class Signals(_DaemonTest):
    def write_config(self, text):
        path = os.path.join(self.dir, "fetchd.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, path)
        return path

    def test_sighup_reloading_then_ready(self):
        path = self.write_config('{"max_connections": 10}\n')
        d = self.start(["-c", path])
        self.notify.wait_for("READY", "1")
        mark = len(self.notify.messages)
        before = time.monotonic_ns() // 1000
        d.send(signal.SIGHUP)
        i = self.notify.wait_for("RELOADING", "1", start=mark)
        j = self.notify.wait_for("READY", "1", start=i + 1)
        self.assertGreater(j, i)
        usec = int(self.notify.messages[i][1].get("MONOTONIC_USEC", "0"))
        self.assertTrue(before <= usec <= time.monotonic_ns() // 1000,
                        "MONOTONIC_USEC=%d is not CLOCK_MONOTONIC at the reload" % usec)
        self.assertEqual(d.stop(), 0, d.log())

    def test_sigterm_stopping(self):
        d = self.start()
        self.notify.wait_for("READY", "1")
        mark = len(self.notify.messages)
        d.send(signal.SIGTERM)
        self.notify.wait_for("STOPPING", "1", start=mark)
        self.assertEqual(d.wait(), 0, d.log())

    def test_sighup_good_and_broken_config(self):
        srv = self.server()
        # shutdown_grace 1: the held jobs must not keep the final stop waiting.
        path = self.write_config(
            '{\n  "max_running": 2,\n  "log_level": "info",\n  "shutdown_grace": 1\n}\n')
        d = self.start(["-c", path])
        self.notify.wait_for("READY", "1")
        c = self.client()
        self.submit(c, [srv.url("/hold/60000/%d" % n) for n in range(8)])
        self.wait_stats(c, lambda s: s["jobs"]["running"] == 2, "2 running (max_running 2)")

        # A broken file (line 3): the old configuration stays, the daemon works.
        self.write_config('{\n  "max_running": 8,\n  "max_connections": ,\n}\n')
        log_mark = len(d.log())
        mark = len(self.notify.messages)
        d.send(signal.SIGHUP)
        i = self.notify.wait_for("RELOADING", "1", start=mark)
        self.notify.wait_for("READY", "1", start=i + 1)
        line = d.wait_log("reload failed: ", start=log_mark)
        self.assertIn(path + ":3:", line)
        self.assertEqual(c.result("version")["protocol"], 1)
        time.sleep(0.5)
        self.assertEqual(c.result("stats")["jobs"]["running"], 2, "max_running 8 took effect")

        # A good file: the new limit starts more of the queued jobs at once.
        self.write_config(
            '{\n  "max_running": 5,\n  "log_level": "info",\n  "shutdown_grace": 1\n}\n')
        mark = len(self.notify.messages)
        d.send(signal.SIGHUP)
        i = self.notify.wait_for("RELOADING", "1", start=mark)
        self.notify.wait_for("READY", "1", start=i + 1)
        self.wait_stats(c, lambda s: s["jobs"]["running"] == 5, "5 running after the reload",
                        limit=5)
        self.submit(c, [srv.url("/fast")])
        self.assertEqual(d.proc.poll(), None)
        self.assertEqual(d.stop(), 0, d.log())


@skip_unless_tools(("systemd-socket-activate", "systemd"))
class SocketActivation(_DaemonTest):
    def fetchctl(self, *args, timeout=30):
        if os.path.exists(FETCHCTL):
            return subprocess.run([FETCHCTL, "-s", self.control] + list(args),
                                  capture_output=True, text=True, timeout=timeout,
                                  env=clean_env(), stdin=subprocess.DEVNULL)
        return None

    def test_passed_socket_is_the_control_socket(self):
        srv = self.server()
        own = os.path.join(self.dir, "own.sock")
        # systemd-socket-activate hands its child a fresh environment: only
        # what -E names (and LISTEN_*) gets through.
        argv0 = [SOCKET_ACTIVATE, "-l", self.control, "--fdname=control",
                 "-E", "NOTIFY_SOCKET=" + self.notify.path, FETCHD,
                 "--control", own, "--metrics", "off"]
        d = self.start(argv0=argv0, control=self.control)
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(self.control) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertTrue(os.path.exists(self.control), d.log())
        # The first connection makes systemd-socket-activate exec fetchd with
        # the listening socket; fetchd answers on it.
        p = self.fetchctl("version")
        if p is None:
            with RpcClient(self.control, 20) as c:
                self.assertEqual(c.result("version")["protocol"], 1)
            with RpcClient(self.control, 20) as c:
                jid = c.result("submit", {"jobs": [{"url": srv.url("/sa")}]})["ids"][0]
                self.assertEqual(c.result("wait", {"id": jid})["state"], "done")
        else:
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr + d.log())
            p = self.fetchctl("submit", "--wait", srv.url("/sa"))
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr + d.log())
        self.assertEqual(srv.requests.get("/sa", [0])[0], 1)
        self.notify.wait_for("READY", "1")
        self.assertFalse(os.path.exists(own), "fetchd bound its own socket as well")
        self.assertEqual(d.stop(), 0, d.log())
        # The socket belongs to whoever passed it (systemd): fetchd must not
        # unlink it, or fetchd.socket would listen on a path nobody can reach.
        self.assertTrue(os.path.exists(self.control), "fetchd removed the passed socket")


class Persistence(_DaemonTest):
    RUNNING = 50
    QUEUED = 5000

    def test_sigterm_with_running_and_queued_jobs_then_restart(self):
        srv = self.server()
        state = os.path.join(self.dir, "state")
        os.mkdir(state)
        args = ["--state-dir", state, "--max-running", str(self.RUNNING),
                "--shutdown-grace", "1", "--max-per-host", "64", "--max-connections", "128",
                "--retain-jobs", "100000"]
        d = self.start(args)
        self.notify.wait_for("READY", "1")
        c = self.client()
        # The first 50 run at the stop and wait for a gate: 25 answer as soon
        # as the stop begins (well within the grace), 25 only after fetchd exits.
        quick = ["/gate/quick/%d" % n for n in range(self.RUNNING // 2)]
        slow = ["/gate/slow/%d" % n for n in range(self.RUNNING - len(quick))]
        rest = ["/fast/%d" % n for n in range(self.QUEUED)]
        paths = quick + slow + rest
        ids = self.submit(c, [srv.url(p) for p in paths])
        by_id = dict(zip(ids, paths))
        self.wait_requests(srv, self.RUNNING)
        stats = c.result("stats")
        self.assertEqual((stats["jobs"]["running"], stats["jobs"]["queued"]),
                         (self.RUNNING, self.QUEUED))
        with srv.lock:
            self.assertEqual(sorted(srv.requests), sorted(quick + slow))

        mark = len(self.notify.messages)
        d.send(signal.SIGTERM)
        self.notify.wait_for("STOPPING", "1", start=mark)
        srv.gates["quick"].set()
        # Submits are refused while the running jobs get their grace.
        resp = c.call("submit", {"jobs": [{"url": srv.url("/late")}]})
        self.assertIn("error", resp, resp)
        self.assertEqual(resp["error"].get("data", {}).get("code"), "shutdown", resp)
        # A second SIGTERM would cut the grace short: wait for the exit.
        self.assertEqual(d.wait(), 0, d.log())
        log1 = d.log()
        c.close()
        with srv.lock:
            srv.phase = 2
            done1 = {p for p, n in srv.completed.items() if n}
        srv.gates["slow"].set()  # held responses go out now, to closed connections
        self.assertEqual(done1, set(quick), "the quick jobs finish within the grace")
        with open(os.path.join(state, "queue.json")) as f:
            json.load(f)

        mark = len(self.notify.messages)
        d = self.start(args)
        self.notify.wait_for("READY", "1", start=mark)
        c = self.client()
        unfinished = [i for i in ids if by_id[i] not in done1]
        stats = c.result("stats")
        held = sum(stats["jobs"][k] for k in ("queued", "running", "retained"))
        if held != len(unfinished):
            extra = [j for j in self.list_all(c) if j["id"] not in set(unfinished)]
            self.fail("%d jobs held at READY after the restart, %d expected; the others: %s%s"
                      % (held, len(unfinished),
                         [(by_id.get(j["id"]), j["state"]) for j in extra][:10],
                         log1[-3000:]))
        self.wait_stats(c, lambda s: s["jobs"]["queued"] + s["jobs"]["running"] == 0,
                        "every reloaded job finished", limit=120)
        jobs = {j["id"]: j for j in self.list_all(c)}
        self.assertEqual(sorted(jobs), sorted(unfinished), "the jobs the restart ran")
        bad = [j for j in jobs.values() if j["state"] != "done" or j.get("http_status") != 200]
        self.assertEqual(bad[:5], [], "%d reloaded jobs did not succeed" % len(bad))
        self.assertEqual(d.stop(), 0, d.log())

        with srv.lock:
            counts = {p: list(srv.requests.get(p, [0, 0, 0])) for p in paths}
        lost = [p for p, n in counts.items() if n[0] + n[1] == 0]
        twice_in_run2 = [p for p, n in counts.items() if n[1] > 1]
        rerun = sorted(p for p, n in counts.items() if n[0] and n[1])
        self.assertEqual(lost, [], "jobs never fetched")
        self.assertEqual(twice_in_run2, [], "jobs fetched twice after the restart")
        self.assertEqual(rerun, sorted(slow), "only the jobs cancelled by the stop run again")
        self.assertNotIn("/late", srv.requests)
        total = sum(n[0] + n[1] for n in counts.values())
        report("restart: %d jobs (%d running, %d queued at SIGTERM); %d finished in the "
               "grace, %d cancelled by the shutdown and run again, %d run after the restart; "
               "requests seen %d, duplicates %d (all of them jobs running at the stop), lost %d"
               % (len(paths), self.RUNNING, self.QUEUED, len(done1), len(rerun),
                  len(unfinished), total, total - len(paths), len(lost)))

    def test_kill_9_brings_back_the_last_checkpoint(self):
        srv = self.server()
        state = os.path.join(self.dir, "state")
        os.mkdir(state)
        args = ["--state-dir", state, "--max-running", "1", "--shutdown-grace", "0"]
        d = self.start(args, notify=False)
        d.wait_accepting()
        c = self.client()
        # A checkpoint renames a new file into place: a new inode. Whatever
        # file is there before the submit cannot hold the jobs.
        queue = os.path.join(state, "queue.json")
        before = file_identity(queue)
        ids = self.submit(c, [srv.url("/hold/60000/k%d" % n) for n in range(100)])
        deadline = time.monotonic() + 15 * SLOWDOWN
        while file_identity(queue) == before and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertNotEqual(file_identity(queue), before, "no checkpoint within 15 s:\n"
                            + d.log())
        time.sleep(0.2)
        d.kill()
        c.close()

        d = self.start(args, notify=False)
        d.wait_accepting()
        c = self.client()
        self.assertEqual(sorted(j["id"] for j in self.list_all(c)), sorted(ids))
        self.assertEqual(d.stop(), 0, d.log())


if __name__ == "__main__":
    unittest.main()
