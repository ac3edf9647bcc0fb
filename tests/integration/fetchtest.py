"""Shared helpers for the integration tests: temp dirs, nginx, the harness.

The tests drive `fetchd-harness` (tests/integration/harness.c), which runs a
script of jobs through the real engine and prints JSON events; see README.md
in this directory for the protocol.
"""

import atexit
import base64
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BIN_DIR = os.environ.get("FETCHD_BIN_DIR") or os.path.join(REPO, "build", "bin")
HARNESS = os.path.join(BIN_DIR, "fetchd-harness")
NGINX = "/usr/sbin/nginx"
VALGRIND = os.environ.get("FETCHD_VALGRIND") or None
# Everything takes far longer under valgrind; deadlines and timeouts scale.
SLOWDOWN = 20 if VALGRIND else 1
KEEP_TMP = bool(os.environ.get("FETCHD_KEEP_TMP"))
# Under CI (CI=true) nothing may be skipped: a missing tool is a broken test
# machine, and a skipped test is a test that did not run.
CI = os.environ.get("CI") == "true"

# fetchd reads proxies from the environment (as curl does): the tests talk to
# servers on loopback directly, whatever proxy the machine running them sets.
# test_proxy.py gives each daemon the variables it tests.
for _name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
              "no_proxy", "NO_PROXY"):
    os.environ.pop(_name, None)


# ---- no silent skips under CI ------------------------------------------------
#
# Every integration module imports this one, so the rule is enforced here, for
# every way a test can skip (skipTest, the skip decorators, SkipTest raised in
# setUpClass): under CI=true the runner's addSkip records a failure instead.
# Outside CI a skip stays a skip, and its reason says what to install.

def _skip_fails_under_ci(self, test, reason):
    try:
        raise AssertionError("skipped, and CI=true allows no skip: %s" % reason)
    except AssertionError:
        self.addFailure(test, sys.exc_info())


if CI:
    unittest.TestResult.addSkip = _skip_fails_under_ci
    unittest.TextTestResult.addSkip = _skip_fails_under_ci


def missing_tools(*pairs):
    """The skip reason when a tool of `pairs` ((tool, Debian package), ...) is
    not installed, saying what to install; None when all of them are."""
    missing = [(tool, pkg) for tool, pkg in pairs if shutil.which(tool) is None]
    if not missing:
        return None
    return "%s not installed: apt-get install %s (deploy/install-deps.sh installs it)" % (
        " and ".join(tool for tool, _ in missing), " ".join(sorted({p for _, p in missing})))


def skip_unless_tools(*pairs):
    """A class or method decorator: skip unless every tool of `pairs`
    ((tool, Debian package), ...) is installed; under CI=true the skip fails."""
    reason = missing_tools(*pairs)
    return unittest.skip(reason) if reason else (lambda obj: obj)


def require_tool(test, name, package):
    """In a test: the path of tool `name` (from Debian `package`), or skip the
    test saying what to install; under CI=true the skip fails."""
    reason = missing_tools((name, package))
    if reason:
        test.skipTest(reason)
    return shutil.which(name)


def free_port():
    """Returns a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tmp_root():
    root = os.environ.get("FETCHD_TEST_TMP")
    if root:
        os.makedirs(root, exist_ok=True)
    return root


def tmpdir(prefix="fetchd-"):
    """Creates a new directory under FETCHD_TEST_TMP (or the system temp dir)."""
    return tempfile.mkdtemp(prefix=prefix, dir=tmp_root())


def remove_tree(path):
    if not KEEP_TMP:
        shutil.rmtree(path, ignore_errors=True)


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def inline_bytes(job):
    """Decodes a job's `inline` member into bytes."""
    inline = job["inline"]
    if inline["encoding"] == "base64":
        return base64.b64decode(inline["data"])
    return inline["data"].encode("utf-8")


# A fixture that was never stopped must not leave nginx running after the
# test process exits.
_RUNNING_NGINX = set()


@atexit.register
def _stop_forgotten_nginx():
    for nginx in list(_RUNNING_NGINX):
        nginx.stop()


class Nginx:
    """A private nginx on 127.0.0.1:<free port> serving generated files.

    Files: /small.txt ("hello\\n"), /1k.bin, /1m.bin, /4m.bin (seeded random
    bytes); `files` maps the URL path to the content and `sha256(path)` gives
    the digest.  Locations: /status/404, /status/500, /redirect/N (N = 0..10)
    which 302s to /redirect/N-1 and /redirect/0 to /small.txt.
    """

    REDIRECT_MAX = 10
    START_TIMEOUT = 10.0
    STOP_TIMEOUT = 5.0

    def __init__(self):
        self.prefix = None
        self.port = None
        self.proc = None
        rng = random.Random(20240601)
        self.files = {
            "/small.txt": b"hello\n",
            "/1k.bin": rng.randbytes(1024),
            "/1m.bin": rng.randbytes(1024 * 1024),
            "/4m.bin": rng.randbytes(4 * 1024 * 1024),
        }
        self._digests = {path: sha256_hex(data) for path, data in self.files.items()}

    def sha256(self, path):
        return self._digests[path]

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def _http_prologue(self):
        """nginx.conf up to the first server block: every path under the
        prefix, and keep-alive that never ends a test's connections."""
        user = "user root;\n" if os.geteuid() == 0 else ""
        return """daemon off;
master_process on;
worker_processes 1;
%(user)spid %(p)s/nginx.pid;
error_log %(p)s/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path %(p)s/tmp/client_body;
    proxy_temp_path %(p)s/tmp/proxy;
    fastcgi_temp_path %(p)s/tmp/fastcgi;
    uwsgi_temp_path %(p)s/tmp/uwsgi;
    scgi_temp_path %(p)s/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
""" % {"p": self.prefix, "user": user}

    def _config(self):
        p = self.prefix
        redirects = ["location = /redirect/0 { return 302 /small.txt; }"]
        redirects += ["location = /redirect/%d { return 302 /redirect/%d; }" % (n, n - 1)
                      for n in range(1, self.REDIRECT_MAX + 1)]
        return self._http_prologue() + """    server {
        listen 127.0.0.1:%(port)d;
        server_name localhost;
        root %(p)s/html;
        location = /status/404 { return 404; }
        location = /status/500 { return 500; }
        %(redirects)s
    }
}
""" % {"p": p, "port": self.port, "redirects": "\n        ".join(redirects)}

    def _write_tree(self):
        os.makedirs(os.path.join(self.prefix, "tmp"))
        html = os.path.join(self.prefix, "html")
        os.makedirs(html)
        for path, data in self.files.items():
            with open(html + path, "wb") as f:
                f.write(data)
        conf = os.path.join(self.prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write(self._config())
        return conf

    def error_log(self):
        try:
            with open(os.path.join(self.prefix, "error.log"), errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def start(self):
        """Starts nginx; a second call (e.g. `with Nginx().start()`) is a no-op."""
        if self.proc is not None:
            return self
        self.prefix = tmpdir("nginx-")
        os.chmod(self.prefix, 0o755)
        self.port = free_port()
        conf = self._write_tree()
        error_log = os.path.join(self.prefix, "error.log")
        with open(os.path.join(self.prefix, "stdout.log"), "wb") as out:
            self.proc = subprocess.Popen(
                [NGINX, "-p", self.prefix, "-c", conf, "-e", error_log],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        _RUNNING_NGINX.add(self)
        deadline = time.monotonic() + self.START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.error_log()
                self.stop()
                raise RuntimeError("nginx exited at startup:\n" + log)
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        log = self.error_log()
        self.stop()
        raise RuntimeError("nginx did not accept on port %d:\n%s" % (self.port, log))

    def stop(self):
        """SIGQUIT (graceful), then SIGKILL to nginx's own process group."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(self.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(self.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
            self.proc = None
        _RUNNING_NGINX.discard(self)
        if self.prefix is not None:
            remove_tree(self.prefix)
            self.prefix = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


class HarnessError(AssertionError):
    pass


def _script_text(script):
    lines = []
    for item in script:
        lines.append(item if isinstance(item, str) else json.dumps(item))
    return "\n".join(lines) + "\n"


def run_harness(script, options=(), deadline_ms=60000, timeout=None):
    """Runs fetchd-harness on a script; returns (events, returncode, stderr).

    `script` is a list of dicts (JSON-encoded one per line) or raw strings.
    `deadline_ms` is passed as --deadline-ms; the subprocess itself is killed
    if it outlives the deadline by 30 s.  Both scale under valgrind.
    """
    if not os.path.exists(HARNESS):
        raise HarnessError("fetchd-harness not found at %s (build first: cmake -S . -B build "
                           "&& cmake --build build, or set FETCHD_BIN_DIR)" % HARNESS)
    work = tmpdir("script-")
    try:
        path = os.path.join(work, "script.jsonl")
        with open(path, "w") as f:
            f.write(_script_text(script))
        deadline_ms = int(deadline_ms * SLOWDOWN)
        cmd = [HARNESS] + [str(o) for o in options] + ["--deadline-ms", str(deadline_ms), path]
        if VALGRIND:
            cmd = [VALGRIND, "--quiet", "--error-exitcode=99", "--leak-check=full",
                   "--show-leak-kinds=definite,indirect,possible",
                   "--errors-for-leak-kinds=definite,indirect,possible",
                   "--num-callers=30"] + cmd
        if timeout is None:
            timeout = deadline_ms / 1000.0 + 30 * SLOWDOWN
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"")[-3000:].decode(errors="replace")
            err = (exc.stderr or b"")[-3000:].decode(errors="replace")
            raise HarnessError("harness did not exit within %.0f s\nstdout tail:\n%s\n"
                               "stderr tail:\n%s" % (timeout, out, err))
    finally:
        remove_tree(work)
    stderr = proc.stderr.decode(errors="replace")
    events = []
    for line in proc.stdout.decode(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except ValueError:
            events.append({"event": "_unparsable", "line": line})
    return events, proc.returncode, stderr


class HarnessTestCase(unittest.TestCase):
    """Base class: runs the harness and checks that teardown was clean."""

    maxDiff = None

    def make_tmpdir(self, prefix="fetchd-"):
        path = tmpdir(prefix)
        self.addCleanup(remove_tree, path)
        return path

    def run_harness(self, script, options=(), deadline_ms=60000):
        events, rc, stderr = run_harness(script, options, deadline_ms)
        self._last_stderr = stderr
        self._last_events = events
        return events, rc

    def context(self):
        """Text appended to assertion messages: the harness's stderr tail."""
        return "\n--- harness stderr (tail) ---\n" + getattr(self, "_last_stderr", "")[-3000:]

    @staticmethod
    def jobs_by_index(events):
        return {e["index"]: e["job"] for e in events if e.get("event") == "job"}

    @staticmethod
    def rejected_by_index(events):
        return {e["index"]: e for e in events if e.get("event") == "rejected"}

    @staticmethod
    def job_order(events):
        return [e["index"] for e in events if e.get("event") == "job"]

    @staticmethod
    def stats_events(events):
        return [e["stats"] for e in events if e.get("event") == "stats"]

    @staticmethod
    def final(events):
        finals = [e for e in events if e.get("event") == "final"]
        return finals[-1] if finals else None

    def job(self, events, index):
        jobs = self.jobs_by_index(events)
        self.assertIn(index, jobs, "no job event for index %d; events: %s%s"
                      % (index, events[:20], self.context()))
        return jobs[index]

    def assert_clean(self, events, rc):
        """The run exited 0 and teardown left nothing behind."""
        ctx = self.context()
        self.assertNotEqual(rc, 99, "valgrind reported errors" + ctx)
        self.assertEqual(rc, 0, "harness exit code %r" % rc + ctx)
        bad = [e for e in events if e.get("event") == "_unparsable"]
        self.assertEqual(bad, [], "harness printed non-JSON lines" + ctx)
        final = self.final(events)
        self.assertIsNotNone(final, "no final event" + ctx)
        self.assertEqual(final.get("leaks"), [], "leaks after teardown" + ctx)
        stats = final["stats"]
        live = {k: v for k, v in stats["objects"].items() if v != 0}
        self.assertEqual(live, {}, "live objects after teardown" + ctx)
        conns = {k: v for k, v in stats["connections"].items() if v != 0}
        self.assertEqual(conns, {}, "connections after teardown" + ctx)
        self.assertEqual(stats["buffers"]["in_use"], 0, "buffers in use after teardown" + ctx)
        self.assertEqual(stats["heap"]["fetchd"]["blocks"], 0,
                         "fetchd heap blocks after teardown" + ctx)

    def assert_done(self, job, status=200):
        self.assertEqual(job["state"], "done", "job not done: %s%s" % (job, self.context()))
        if status is not None:
            self.assertEqual(job.get("http_status"), status, "job: %s" % job)

    def assert_failed(self, job, code):
        self.assertEqual(job["state"], "failed", "job not failed: %s%s" % (job, self.context()))
        error = job.get("error") or {}
        self.assertEqual(error.get("code"), code, "job: %s" % job)
        self.assertTrue(error.get("message"), "empty error message: %s" % job)

    def assert_rejected(self, events, index, code="invalid_request"):
        rejected = self.rejected_by_index(events)
        self.assertIn(index, rejected, "index %d was not rejected; events: %s%s"
                      % (index, events[:20], self.context()))
        self.assertEqual(rejected[index]["error"]["code"], code, rejected[index])
        self.assertTrue(rejected[index]["error"].get("message"), rejected[index])
        self.assertNotIn(index, self.jobs_by_index(events))


class NginxTestCase(HarnessTestCase):
    """A HarnessTestCase with one nginx for the whole class (`cls.nginx`)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.nginx = Nginx().start()
        cls.addClassCleanup(cls.nginx.stop)
