"""The fetchd binary itself: its options, exit statuses, configuration errors,
logging and a clean stop on SIGTERM and SIGINT."""

import glob
import json
import os
import pwd
import select
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from fetchtest import BIN_DIR, tmpdir, remove_tree

FETCHD = os.path.join(BIN_DIR, "fetchd")

# The options DESIGN.md promises; --help must describe every one.
DOCUMENTED_OPTIONS = [
    "--config", "--control", "--metrics", "--download-dir", "--state-dir",
    "--max-connections", "--max-per-host", "--max-jobs", "--idle-timeout", "--ca-file",
    "--retain-jobs", "--retain-seconds", "--help", "--version",
]


def run(args, env=None, timeout=10):
    return subprocess.run([FETCHD] + args, capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL)


class Options(unittest.TestCase):
    def test_help_lists_every_option(self):
        p = run(["--help"])
        self.assertEqual(p.returncode, 0, p.stderr)
        for opt in DOCUMENTED_OPTIONS:
            self.assertIn(opt, p.stdout)
        self.assertEqual(run(["-h"]).stdout, p.stdout)

    def test_version(self):
        p = run(["--version"])
        self.assertEqual(p.returncode, 0)
        self.assertRegex(p.stdout, r"^fetchd \d+\.\d+\.\d+\n$")

    def test_usage_errors_exit_64(self):
        for args, words in [(["--bogus"], "unknown option"),
                            (["--max-connections"], "needs a value"),
                            (["--max-connections", "0"], "between 1 and"),
                            (["--max-per-host", "x"], "not a non-negative integer"),
                            (["--log-level", "loud"], "log_level"),
                            (["stray"], "unexpected argument")]:
            p = run(args)
            self.assertEqual(p.returncode, 64, (args, p.stderr))
            self.assertIn(words, p.stderr, args)


class Config(unittest.TestCase):
    def write(self, text):
        d = tmpdir()
        self.addCleanup(remove_tree, d)
        path = os.path.join(d, "fetchd.json")
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_bad_configs_exit_78_with_path_and_line(self):
        cases = [
            ('{\n  "max_connections": 10,,\n}\n', ":2:"),
            ('{\n  "max_connections": 10,\n  "bogus": 1\n}\n', ':3: unknown key "bogus"'),
            ('{\n  "idle_timeout": "soon"\n}\n', ":2:"),
            ('{\n  "max_per_host": 0\n}\n', ":2: max_per_host: must be between"),
            ('[1, 2]\n', ":1: the configuration must be a JSON object"),
        ]
        for text, words in cases:
            path = self.write(text)
            p = run(["-c", path])
            self.assertEqual(p.returncode, 78, (text, p.stderr))
            self.assertIn(path + words, p.stderr, text)

    def test_missing_config_file(self):
        p = run(["-c", "/nonexistent/fetchd.json"])
        self.assertEqual(p.returncode, 78)
        self.assertIn("/nonexistent/fetchd.json: No such file", p.stderr)

    def test_missing_download_dir_is_a_config_error(self):
        p = run(["--download-dir", "/nonexistent/downloads"])
        self.assertEqual(p.returncode, 78, p.stderr)
        self.assertIn("/nonexistent/downloads", p.stderr)

    def test_options_override_the_file(self):
        path = self.write('{"max_connections": 10, "max_per_host": 3}')
        d = Daemon(["-c", path, "--max-connections", "7"])
        try:
            line = d.wait_for_line("started")
            self.assertIn("max 7 connections, 3 per host", line)
        finally:
            d.stop(signal.SIGTERM)


class Daemon:
    """fetchd running in the foreground, its stderr read line by line.

    Each one gets a runtime directory of its own (XDG_RUNTIME_DIR), so its
    default control socket never meets a real daemon's or another test's.
    """

    def __init__(self, args, env=None):
        self.runtime = tmpdir("fetchd-run-")
        env = dict(os.environ if env is None else env)
        env.pop("RUNTIME_DIRECTORY", None)
        env["XDG_RUNTIME_DIR"] = self.runtime
        # Port 0: never collide with a real daemon's (or another test's) 9464.
        if not any(a.startswith("--metrics") for a in args):
            args = args + ["--metrics", "127.0.0.1:0"]
        self.proc = subprocess.Popen([FETCHD] + args, stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                     env=env)
        self.lines = []
        self._partial = b""

    def _read_some(self, timeout):
        """Reads what stderr has (unbuffered: select() sees every byte)."""
        ready, _, _ = select.select([self.proc.stderr], [], [], timeout)
        if not ready:
            return True
        data = os.read(self.proc.stderr.fileno(), 65536)
        if not data:
            return False
        self._partial += data
        *done, self._partial = self._partial.split(b"\n")
        self.lines += [l.decode(errors="replace") + "\n" for l in done]
        return True

    def wait_for_line(self, needle, timeout=10):
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if needle in line:
                    return line
            seen = len(self.lines)
            left = deadline - time.monotonic()
            if left <= 0 or not self._read_some(min(left, 0.2)):
                break
        raise AssertionError("no line with %r in %r" % (needle, self.lines))

    def stop(self, sig, timeout=10):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        while self._read_some(0):
            pass
        self.proc.stderr.close()
        remove_tree(self.runtime)
        return rc


class Lifecycle(unittest.TestCase):
    def test_starts_with_defaults_and_stops_on_sigterm(self):
        d = Daemon([])
        sock = os.path.join(d.runtime, "fetchd", "control.sock")
        try:
            d.wait_for_line("started")
            # The default control socket: $XDG_RUNTIME_DIR/fetchd/control.sock, 0600.
            self.assertEqual(os.stat(sock).st_mode & 0o777, 0o600)
        finally:
            rc = d.stop(signal.SIGTERM)
        self.assertEqual(rc, 0, d.lines)
        self.assertTrue(any("stopped" in l for l in d.lines), d.lines)
        self.assertFalse(os.path.exists(sock), "the socket file outlived the daemon")

    def test_stops_on_sigint(self):
        d = Daemon([])
        try:
            d.wait_for_line("started")
        finally:
            rc = d.stop(signal.SIGINT)
        self.assertEqual(rc, 0, d.lines)

    def test_journal_priority_prefixes(self):
        env = dict(os.environ, JOURNAL_STREAM="8:12345")
        d = Daemon([], env=env)
        try:
            line = d.wait_for_line("started")
        finally:
            d.stop(signal.SIGTERM)
        self.assertRegex(line, r"^<5>fetchd \d")
        for l in d.lines:
            self.assertRegex(l, r"^<[0-7]>")

    def test_plain_logs_without_journal(self):
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        d = Daemon([], env=env)
        try:
            line = d.wait_for_line("started")
        finally:
            d.stop(signal.SIGTERM)
        self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} fetchd\[notice\] ")


class StateDir(unittest.TestCase):
    """--state-dir: checked at start, corrupt files kept, a failed final save
    reported in the exit status."""

    def setUp(self):
        self.dir = tmpdir("state-")
        self.addCleanup(remove_tree, self.dir)
        self.state = os.path.join(self.dir, "state")
        os.mkdir(self.state)

    def start(self, args=(), **kw):
        d = Daemon(["--state-dir", self.state] + list(args), **kw)
        self.addCleanup(lambda: d.proc.poll() is None and d.stop(signal.SIGKILL))
        return d

    def run_to_exit(self, args, env=None, preexec_fn=None, binary=FETCHD):
        """Runs fetchd, which must exit by itself (bounded); returns (rc, stderr)."""
        proc = subprocess.Popen([binary] + args, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=env, preexec_fn=preexec_fn)
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            self.fail("fetchd kept running with %r:\n%s" % (args, err))
        return proc.returncode, err

    def run_once_with(self, text):
        with open(os.path.join(self.state, "queue.json"), "w") as f:
            f.write(text)
        d = self.start()
        d.wait_for_line("started")
        rc = d.stop(signal.SIGTERM)
        self.assertEqual(rc, 0, d.lines)
        return d.lines

    def test_each_corrupt_queue_file_is_kept(self):
        first = self.run_once_with("{not json at all")
        second = self.run_once_with('{"version": 1, "jobs": "second"}')
        kept = sorted(glob.glob(os.path.join(self.state, "queue.json.bad*")))
        self.assertEqual(len(kept), 2, (kept, first, second))
        contents = set()
        for path in kept:
            with open(path) as f:
                contents.add(f.read())
        self.assertEqual(contents, {"{not json at all", '{"version": 1, "jobs": "second"}'})
        # Each run's log says where its file went.
        for lines in (first, second):
            said = [path for path in kept if any("kept as " + path in l for l in lines)]
            self.assertEqual(len(said), 1, (kept, lines))

    def test_a_job_that_cannot_be_restored_keeps_the_file(self):
        # One good job and one that cannot be restored: the good one runs,
        # and the file is kept as it was, so the other is not lost when the
        # next save replaces queue.json.
        text = json.dumps({"version": 1, "jobs": [
            {"id": "good1", "spec": {"url": "http://127.0.0.1:9/"}},
            {"id": "bad2", "spec": {"url": "no scheme at all"}}]})
        lines = self.run_once_with(text)
        kept = glob.glob(os.path.join(self.state, "queue.json.bad*"))
        self.assertEqual(len(kept), 1, (kept, lines))
        with open(kept[0]) as f:
            self.assertEqual(f.read(), text)
        self.assertTrue(any("1 job(s) not restored" in l and "kept as " + kept[0] in l
                            for l in lines), lines)

    def test_missing_or_unusable_state_dir_exits_78(self):
        missing = os.path.join(self.dir, "missing")
        plain = os.path.join(self.dir, "file")
        with open(plain, "w") as f:
            f.write("not a directory")
        for path, words in [(missing, "No such file"), (plain, "Not a directory")]:
            rc, err = self.run_to_exit(["--state-dir", path, "--metrics", "off",
                                        "--control", os.path.join(self.dir, "c.sock")])
            self.assertEqual(rc, 78, (path, err))
            self.assertIn(path, err)
            self.assertIn(words, err)

    def test_unwritable_state_dir_exits_78(self):
        # As root the permission bits do not stop fetchd: run it as nobody,
        # with a state dir that root owns (mode 0755). nobody may not reach
        # the build tree (a clone under /root, say), so the binary and the
        # directories are put where it can: a fresh directory under /tmp.
        preexec, runtime, binary, state = None, tmpdir("fetchd-run-"), FETCHD, self.state
        self.addCleanup(remove_tree, runtime)
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            reach = tempfile.mkdtemp(prefix="fetchd-nobody-", dir="/tmp")
            self.addCleanup(remove_tree, reach)
            os.chmod(reach, 0o755)
            binary = os.path.join(reach, "fetchd")
            shutil.copy(FETCHD, binary)
            os.chmod(binary, 0o755)
            state = os.path.join(reach, "state")
            os.mkdir(state, 0o755)
            remove_tree(runtime)
            runtime = os.path.join(reach, "run")
            os.mkdir(runtime, 0o700)
            os.chown(runtime, nobody.pw_uid, nobody.pw_gid)

            def preexec():
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
        else:
            os.chmod(self.state, 0o555)
            self.addCleanup(os.chmod, self.state, 0o755)
        env = dict(os.environ, XDG_RUNTIME_DIR=runtime)
        env.pop("RUNTIME_DIRECTORY", None)
        rc, err = self.run_to_exit(["--state-dir", state, "--metrics", "off"], env=env,
                                   preexec_fn=preexec, binary=binary)
        self.assertEqual(rc, 78, err)
        self.assertIn(state, err)
        self.assertIn("Permission denied", err)
        self.assertEqual(os.listdir(state), [])

    def test_failed_final_save_exits_1(self):
        d = self.start()
        d.wait_for_line("started")
        # The state dir goes away under the running daemon: the save at the
        # stop fails, and the exit status must say so.
        shutil.rmtree(self.state)
        rc = d.stop(signal.SIGTERM)
        self.assertEqual(rc, 1, d.lines)
        self.assertTrue(any("could not be saved" in l for l in d.lines), d.lines)


if __name__ == "__main__":
    unittest.main()
