"""Log injection: values that come from outside (output names, URLs) reach
fetchd's stderr escaped, so a newline in them cannot forge a log line and an
ESC byte cannot reach a terminal; under systemd (JOURNAL_STREAM) every line
still starts with its "<N>" priority prefix.

The real fetchd runs against a private nginx. The output name that gets
logged is one whose temporary name ("NAME.fetchd-part-ID") is longer than a
file name may be, so creating it fails and sink.c logs that path.
"""

import os
import re
import socket
import sys
import time
import unittest

from fetchtest import BIN_DIR, REPO, Nginx, remove_tree, tmpdir

sys.path.insert(0, os.path.join(REPO, "tests", "soak"))
import soak  # noqa: E402

FETCHD = os.path.join(BIN_DIR, "fetchd")
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
            # The mark may only appear inside the one escaped line.
            self.assertTrue(MARK not in line or LOGGED in line,
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


if __name__ == "__main__":
    unittest.main()
