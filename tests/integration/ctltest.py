"""Helpers for the control-socket tests: a real fetchd, a JSON-RPC client.

`Fetchd` starts `build/bin/fetchd` in the foreground with its control socket
in a private temp dir (and a download dir next to it), waits until the
socket accepts, and stops it with SIGTERM (SIGKILL after a bounded wait).
Its stderr goes to a file that `log()` reads, so the pipe can never fill.

`RpcClient` is an independent JSON-RPC 2.0 client written with the standard
library only: it sends one JSON text per line over AF_UNIX and reads lines,
keeping notifications and out-of-order responses aside until asked for them
(responses are matched by id).

`ControlTestCase` gives each test helpers that check the contract's error
shape and that live counts come back to their baseline.
"""

import json
import os
import re
import signal
import socket
import subprocess
import time
import unittest

from fetchtest import BIN_DIR, SLOWDOWN, remove_tree, tmpdir

FETCHD = os.path.join(BIN_DIR, "fetchd")
FETCHCTL = os.path.join(BIN_DIR, "fetchctl")
ID_RE = re.compile(r"^[0-9a-f]{16}$")
LINE_MAX = 1048576
OUTPUT_MAX = 8 * 1024 * 1024
SUBMIT_MAX = 10000  # job specs per submit call
WAITS_MAX = 10000  # open waits per client
SUBS_MAX = 64  # subscriptions per client
HELD_MAX = 1048576  # bytes of wait ids, and of subscription id lists, per client
START_TIMEOUT = 10.0 * SLOWDOWN
STOP_TIMEOUT = 10.0 * SLOWDOWN
IO_TIMEOUT = 20.0 * SLOWDOWN

# Standard JSON-RPC codes and the data.code the contract pairs them with.
PARSE_ERROR = (-32700, "parse_error")
INVALID_REQUEST = (-32600, "invalid_request")
METHOD_NOT_FOUND = (-32601, "method_not_found")
INVALID_PARAMS = (-32602, "invalid_params")
APP_ERROR = -32000

# Environment variables that change fetchd's default socket path or mode; the
# tests clear them so that the caller's session cannot influence a run.
SOCKET_ENV = ("RUNTIME_DIRECTORY", "NOTIFY_SOCKET", "XDG_RUNTIME_DIR", "LISTEN_FDS",
              "LISTEN_PID", "JOURNAL_STREAM", "FETCHD_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in SOCKET_ENV}
    env.update({k: str(v) for k, v in extra.items()})
    return env


class DaemonError(AssertionError):
    pass


class Fetchd:
    """One fetchd process with a control socket in its own temp dir."""

    def __init__(self, args=(), control=True, env=None, download_dir=True,
                 metrics="127.0.0.1:0"):
        if not os.path.exists(FETCHD):
            raise DaemonError("fetchd not found at %s (build first: cmake -S . -B build && "
                              "cmake --build build, or set FETCHD_BIN_DIR)" % FETCHD)
        self.dir = tmpdir("ctl-")
        os.chmod(self.dir, 0o700)
        self.socket = os.path.join(self.dir, "control.sock") if control is True else control
        self.download_dir = None
        cmd = [FETCHD]
        if self.socket:
            cmd += ["--control", self.socket]
        if download_dir:
            self.download_dir = os.path.join(self.dir, "downloads")
            os.mkdir(self.download_dir)
            cmd += ["--download-dir", self.download_dir]
        # The default metrics port is fixed (9464): tests that run side by
        # side would collide on it, so each daemon takes a free port.
        if metrics:
            cmd += ["--metrics", metrics]
        cmd += [str(a) for a in args]
        self.cmd = cmd
        self.log_path = os.path.join(self.dir, "fetchd.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log,
                                         env=clean_env() if env is None else env,
                                         start_new_session=True)
        self.returncode = None

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_log(self, pattern, timeout=START_TIMEOUT):
        """The first match of pattern (a regex) in the log, waited for,
        bounded: the control socket accepts (wait_ready()) a moment before
        fetchd has logged everything it does at start, such as the metrics
        port. None when it never comes."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log())
            if m or time.monotonic() > deadline or self.proc.poll() is not None:
                return m
            time.sleep(0.02)

    def log_tail(self, n=4000):
        return "\n--- fetchd stderr (tail) ---\n" + self.log()[-n:]

    def wait_ready(self, path=None, timeout=START_TIMEOUT):
        """Returns once the socket accepts; raises when fetchd exits or the time passes."""
        path = path or self.socket
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DaemonError("fetchd exited with %r at startup%s"
                                  % (self.proc.returncode, self.log_tail()))
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(1.0)
                sock.connect(path)
                return self
            except OSError:
                time.sleep(0.05)
            finally:
                sock.close()
        raise DaemonError("fetchd did not accept on %s within %.0f s%s"
                          % (path, timeout, self.log_tail()))

    def wait_exit(self, timeout=STOP_TIMEOUT):
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Sends sig, waits (bounded), then SIGKILLs; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                self.proc.wait(timeout)
                self.returncode = "killed after %s was ignored" % sig
                return self.returncode
        self.returncode = self.proc.returncode
        return self.returncode

    def cleanup(self):
        self.stop()
        remove_tree(self.dir)

    def client(self, timeout=IO_TIMEOUT):
        return RpcClient(self.socket, timeout)


class RpcClient:
    """A line-oriented JSON-RPC 2.0 client over AF_UNIX (standard library only)."""

    def __init__(self, path, timeout=IO_TIMEOUT):
        self.path = path
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = bytearray()
        self.pending = []  # parsed messages read but not yet asked for
        self.eof = False
        self.next_id = 1
        self.bytes_read = 0

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # Sending.
    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, obj):
        self.send_raw(json.dumps(obj).encode() + b"\n")

    def new_id(self):
        rid = self.next_id
        self.next_id += 1
        return rid

    def request(self, method, params=None, rid=None):
        """Sends a request (rid=None picks a fresh integer id); returns its id."""
        if rid is None:
            rid = self.new_id()
        msg = {"jsonrpc": "2.0", "method": method, "id": rid}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        return rid

    def notify(self, method, params=None):
        msg = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)

    # Receiving.
    def read_line(self, timeout=None):
        """Returns the next line (without newline), or None at EOF; raises on timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            idx = self.buf.find(b"\n")
            if idx >= 0:
                line = bytes(self.buf[:idx])
                del self.buf[: idx + 1]
                return line
            if self.eof:
                if self.buf:
                    line = bytes(self.buf)
                    self.buf.clear()
                    return line
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no line from fetchd within the timeout")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError:
                data = b""
            finally:
                self.sock.settimeout(self.timeout)
            if not data:
                self.eof = True
            self.bytes_read += len(data)
            self.buf += data

    def read_message(self, timeout=None):
        """The next message: a pending one first, else one read; None at EOF."""
        if self.pending:
            return self.pending.pop(0)
        return self._read_parsed(timeout)

    def _read_parsed(self, timeout=None):
        while True:
            line = self.read_line(timeout)
            if line is None:
                return None
            if line.strip():
                return json.loads(line)

    def _take(self, pred, timeout=None):
        for i, msg in enumerate(self.pending):
            if pred(msg):
                return self.pending.pop(i)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no matching message within the timeout; pending: %r"
                                     % self.pending[:5])
            msg = self._read_parsed(left)
            if msg is None:
                raise EOFError("fetchd closed the connection; pending: %r" % self.pending[:5])
            if pred(msg):
                return msg
            self.pending.append(msg)

    def response(self, rid, timeout=None):
        """The response with this id (other messages are kept aside)."""
        return self._take(lambda m: isinstance(m, dict) and "id" in m and m["id"] == rid
                          and type(m["id"]) is type(rid)
                          and ("result" in m or "error" in m), timeout)

    def notification(self, pred=None, timeout=None):
        """The next `event` notification (matching pred when given)."""
        def match(m):
            return (isinstance(m, dict) and m.get("method") == "event" and "id" not in m
                    and (pred is None or pred(m["params"])))
        return self._take(match, timeout)["params"]

    def call(self, method, params=None, timeout=None, rid=None):
        """Sends a request and returns its whole response object."""
        return self.response(self.request(method, params, rid), timeout)

    def result(self, method, params=None, timeout=None):
        """Sends a request and returns its result; an error response fails."""
        resp = self.call(method, params, timeout)
        if "error" in resp:
            raise AssertionError("%s %r answered with an error: %r" % (method, params, resp))
        return resp["result"]

    def at_eof(self, timeout=None):
        """Reads (and discards) until EOF; True when EOF came within the timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            while time.monotonic() < deadline:
                if self.read_line(max(0.01, deadline - time.monotonic())) is None:
                    return True
        except (socket.timeout, OSError):
            pass
        return self.eof

    def events_until_marker(self, timeout=None):
        """Sends a `version` call and returns every notification read before its answer.

        fetchd runs on one loop thread, so notifications for events that
        happened before the call was read are queued ahead of the answer.
        """
        rid = self.request("version")
        resp = self.response(rid, timeout)
        if "error" in resp:
            raise AssertionError("version failed: %r" % resp)
        events = [m["params"] for m in self.pending
                  if isinstance(m, dict) and m.get("method") == "event"]
        self.pending = [m for m in self.pending
                        if not (isinstance(m, dict) and m.get("method") == "event")]
        return events


def spec(url, **fields):
    doc = {"url": url}
    doc.update(fields)
    return doc


def objects_expected(baseline, now):
    """Baseline object counts, with `job` moved by the change in jobs held.

    Finished jobs are retained on purpose (for status queries), so the job
    count may differ from the baseline exactly by the jobs the scheduler still
    holds; every other type must be back where it was.
    """
    expected = dict(baseline["objects"])
    held = lambda s: s["jobs"]["queued"] + s["jobs"]["running"] + s["jobs"]["retained"]
    if "job" in expected:
        expected["job"] += held(now) - held(baseline)
    return expected


class ControlTestCase(unittest.TestCase):
    """Base class: start daemons and clients that are cleaned up afterwards."""

    maxDiff = None

    def start_fetchd(self, args=(), check_end=True, clean_stop=False, **kw):
        """Starts fetchd (stopped in cleanup); with check_end, the test's end
        also checks that no control client, connection or object is left;
        with clean_stop, that fetchd then stops with status 0 and, in a
        sanitizer build, no report in its log."""
        d = Fetchd(args, **kw)
        self.addCleanup(d.cleanup)
        d.wait_ready()
        self.daemon = d
        if clean_stop:
            self.addCleanup(self.check_clean_stop, d)
        if check_end:
            self.addCleanup(self.check_clean_end, d, self.take_baseline(d))
        return d

    def check_clean_stop(self, d):
        """A daemon still running stops with status 0; no sanitizer spoke."""
        if d.proc.poll() is None:
            self.assertEqual(d.stop(), 0, "fetchd's exit status" + d.log_tail())
        for mark in ("Sanitizer", "runtime error:"):
            self.assertNotIn(mark, d.log(), "fetchd reported" + d.log_tail(8000))

    # Object types that are caches, not leaks: they may outlive a test.
    CACHE_TYPES = ("buffer", "tls_config", "tls_context", "tls_session", "origin", "dns_entry")

    def admitted_client(self, daemon, limit=10.0):
        """A client that fetchd admitted: clients just closed may still count
        against the cap for a moment, so retry (bounded) on too_many_clients."""
        deadline = time.monotonic() + limit * SLOWDOWN
        while True:
            c = daemon.client()
            try:
                c.result("version")
                return c
            except EOFError:
                c.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def take_baseline(self, daemon, limit=10.0):
        """Stats with exactly one client (this one) connected: earlier probes
        are closed asynchronously, so poll (bounded) until they are gone."""
        with daemon.client() as c:
            deadline = time.monotonic() + limit * SLOWDOWN
            s = self.stats(c)
            while s.get("control_clients") != 1 and time.monotonic() < deadline:
                time.sleep(0.02)
                s = self.stats(c)
            return s

    def check_clean_end(self, daemon, baseline, limit=20.0):
        """Cancels what is still queued or running, then polls (bounded) until
        the counts are those seen at the start with one client connected:
        control clients, connections, buffers in use and every object type
        but caches and retained jobs."""
        if daemon.proc.poll() is not None:
            # A test that stopped the daemon itself set returncode; any other
            # exit (a crash, a sanitizer's abort) fails the test.
            if daemon.returncode is None:
                self.fail("fetchd exited during the test with status %r%s"
                          % (daemon.proc.returncode, daemon.log_tail()))
            return
        with self.admitted_client(daemon) as c:
            for state in ("queued", "running"):
                for job in self.list_all(c, state=state):
                    c.result("cancel", {"id": job["id"]})
            deadline = time.monotonic() + limit * SLOWDOWN
            now, bad = None, {}
            while time.monotonic() < deadline:
                now = self.stats(c)
                want = objects_expected(baseline, now)
                bad = {k: v for k, v in now["connections"].items() if v != 0}
                for key, value in now["objects"].items():
                    if key not in self.CACHE_TYPES and value != want.get(key, 0):
                        bad["objects." + key] = (want.get(key, 0), value)
                if now["buffers"]["in_use"] != baseline["buffers"]["in_use"]:
                    bad["buffers.in_use"] = (baseline["buffers"]["in_use"],
                                             now["buffers"]["in_use"])
                if now.get("control_clients") != 1:
                    bad["control_clients"] = now.get("control_clients")
                if not bad:
                    return
                time.sleep(0.1)
            self.fail("after the test, live counts are not back to the baseline "
                      "(expected, seen): %r\nstats: %s%s" % (bad, json.dumps(now),
                                                              daemon.log_tail()))

    def connect(self, daemon=None, timeout=IO_TIMEOUT):
        c = (daemon or self.daemon).client(timeout)
        self.addCleanup(c.close)
        return c

    def ctx(self, daemon=None):
        d = daemon or getattr(self, "daemon", None)
        return d.log_tail() if d is not None else ""

    def assert_error(self, resp, code, data_code=None, rid="any"):
        """resp is an error response with this code (and data.code, and id)."""
        if isinstance(code, tuple):
            code, data_code = code
        self.assertIsInstance(resp, dict, resp)
        self.assertEqual(resp.get("jsonrpc"), "2.0", resp)
        self.assertNotIn("result", resp, resp)
        self.assertIn("error", resp, resp)
        err = resp["error"]
        self.assertEqual(err.get("code"), code, resp)
        self.assertIsInstance(err.get("message"), str, resp)
        self.assertTrue(err["message"], resp)
        self.assertIsInstance(err.get("data"), dict, "error without data: %r" % resp)
        self.assertIsInstance(err["data"].get("code"), str, resp)
        if data_code is not None:
            self.assertEqual(err["data"]["code"], data_code, resp)
        if rid != "any":
            self.assertIn("id", resp, resp)
            self.assertEqual(resp["id"], rid, resp)
        return err

    def assert_result(self, resp, rid="any"):
        self.assertIsInstance(resp, dict, resp)
        self.assertEqual(resp.get("jsonrpc"), "2.0", resp)
        self.assertNotIn("error", resp, resp)
        self.assertIn("result", resp, resp)
        if rid != "any":
            self.assertEqual(resp.get("id"), rid, resp)
        return resp["result"]

    def assert_usable(self, client):
        """The connection still answers: version comes back."""
        result = client.result("version")
        self.assertEqual(result.get("protocol"), 1, result)

    def submit(self, client, specs):
        result = client.result("submit", {"jobs": specs})
        ids = result["ids"]
        self.assertEqual(len(ids), len(specs), result)
        for jid in ids:
            self.assertRegex(jid, ID_RE)
        return ids

    def wait_job(self, client, jid, timeout=None):
        params = {"id": jid}
        if timeout is not None:
            params["timeout"] = timeout
        return client.result("wait", params, timeout=IO_TIMEOUT + (timeout or 0))

    def wait_state(self, client, jid, state, limit=IO_TIMEOUT):
        """Polls status until the job is in `state` (bounded)."""
        deadline = time.monotonic() + limit
        job = None
        while time.monotonic() < deadline:
            job = client.result("status", {"id": jid})
            if job["state"] == state:
                return job
            time.sleep(0.02)
        self.fail("job %s never reached %s: %r%s" % (jid, state, job, self.ctx()))

    def list_all(self, client, limit=1000, state=None):
        """Every job via list pages; asserts the paging terminates."""
        jobs, after = [], None
        for _ in range(100000):
            params = {"limit": limit}
            if state is not None:
                params["state"] = state
            if after is not None:
                params["after"] = after
            page = client.result("list", params)
            jobs += page["jobs"]
            after = page["next"]
            if after is None:
                return jobs
        self.fail("list paging did not end")

    def stats(self, client):
        return client.result("stats")

    def wait_clients(self, client, n, limit=10.0):
        """Polls (bounded) until fetchd counts n control clients; returns the stats.
        Closes are seen asynchronously, so a count right after one may be stale."""
        deadline = time.monotonic() + limit * SLOWDOWN
        s = self.stats(client)
        while s.get("control_clients") != n and time.monotonic() < deadline:
            time.sleep(0.02)
            s = self.stats(client)
        self.assertEqual(s.get("control_clients"), n, s)
        return s

    def wait_baseline(self, client, baseline, limit=20.0, keys=("control_clients",)):
        """Polls stats until objects (see objects_expected), open connections and
        the given top-level keys are back at the baseline; fails otherwise."""
        deadline = time.monotonic() + limit * SLOWDOWN
        now = None
        while time.monotonic() < deadline:
            now = self.stats(client)
            conns = {k: v for k, v in now["connections"].items() if v != 0}
            if (now["objects"] == objects_expected(baseline, now) and not conns
                    and all(now.get(k) == baseline.get(k) for k in keys)
                    and now["jobs"]["queued"] == 0 and now["jobs"]["running"] == 0):
                return now
            time.sleep(0.1)
        diff = {k: (baseline.get(k), now.get(k)) for k in ("objects", "connections", "jobs")
                + tuple(keys)}
        self.fail("live counts not back at baseline (baseline, now): %r\nexpected objects: %r%s"
                  % (diff, objects_expected(baseline, now), self.ctx()))

