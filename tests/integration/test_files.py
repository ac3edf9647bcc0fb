"""Output files against a hostile or exhausted file system (issue 9): a
directory swapped for a symlink between submit and write, a full disk, the
longest legal file name, and a daemon out of file descriptors.

Every test drives the real fetchd over its control socket (ctltest) and
fetchctl against a gated HTTP server in this module, and ends with every
live count back at its baseline (ControlTestCase.check_clean_end).
"""

import errno
import http.server
import os
import resource
import shutil
import subprocess
import threading
import time
import unittest
import urllib.parse

from ctltest import FETCHCTL, ControlTestCase
from fetchtest import SLOWDOWN, remove_tree, tmpdir

IN_CI = os.environ.get("CI") == "true"
# Every bounded wait of this module, in seconds.
LIMIT = 30.0 * SLOWDOWN
PART = ".fetchd-part-"


def pattern(n):
    block = bytes(range(256))
    return (block * (n // 256 + 1))[:n]


class GateServer:
    """HTTP/1.1 on 127.0.0.1 that answers when the test says so.

    /data?size=N        200 with N bytes of pattern(N) at once
    /gate/NAME?size=N   holds the request until release(NAME), then as /data
    /split/NAME?size=N  sends the head and the first half of the body, then
                        holds the rest until release(NAME)
    Every response says "Connection: close". arrived(NAME) tells when a
    request for NAME came in; stop() releases every gate and waits (bounded)
    for the handler threads.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._arrived = {}
        self._release = {}
        self._stopping = False
        self._threads = []
        gate = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                gate._handle(self)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

            def process_request(self, request, client_address):
                t = threading.Thread(target=self.process_request_thread,
                                     args=(request, client_address), daemon=True)
                with gate._lock:
                    gate._threads.append(t)
                t.start()

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self._serve = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._serve.start()

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def _event(self, table, name):
        with self._lock:
            ev = table.get(name)
            if ev is None:
                ev = table[name] = threading.Event()
                if self._stopping:
                    ev.set()
            return ev

    def arrived(self, name, timeout=LIMIT):
        return self._event(self._arrived, name).wait(timeout)

    def release(self, name):
        self._event(self._release, name).set()

    def _handle(self, h):
        url = urllib.parse.urlsplit(h.path)
        size = int(urllib.parse.parse_qs(url.query).get("size", ["1000"])[0])
        parts = url.path.split("/")
        kind, name = parts[1], "/".join(parts[2:])
        body = pattern(size)
        if kind == "gate":
            self._event(self._arrived, name).set()
            self._event(self._release, name).wait(LIMIT)
        h.send_response(200)
        h.send_header("Content-Length", str(size))
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        try:
            if kind == "split":
                h.wfile.write(body[:size // 2])
                h.wfile.flush()
                self._event(self._arrived, name).set()
                self._event(self._release, name).wait(LIMIT)
                body = body[size // 2:]
            h.wfile.write(body)
        except OSError:
            pass

    def stop(self):
        with self._lock:
            self._stopping = True
            gates = list(self._release.values()) + list(self._arrived.values())
            threads = list(self._threads)
        for ev in gates:
            ev.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._serve.join(LIMIT)
        deadline = time.monotonic() + LIMIT
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))


class FilesCase(ControlTestCase):
    def setUp(self):
        self.srv = GateServer()
        self.addCleanup(self.srv.stop)

    def require(self, ok, why):
        """Skips outside CI when the machine cannot run the test; under
        CI=true a missing tool or privilege is a failure."""
        if ok:
            return
        if IN_CI:
            self.fail(why)
        self.skipTest(why)

    def part_files(self, root):
        return [os.path.join(top, name) for top, dirs, files in os.walk(root)
                for name in dirs + files if PART in name]

    def wait_for(self, what, pred, limit=LIMIT):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            value = pred()
            if value:
                return value
            time.sleep(0.02)
        self.fail("no %s within %.0f s%s" % (what, limit, self.ctx()))

    def outside_dir(self):
        path = tmpdir("outside-")
        self.addCleanup(remove_tree, path)
        return path


class OutputPaths(FilesCase):
    def test_directory_swapped_for_symlink_before_the_write(self):
        d = self.start_fetchd()
        outside = self.outside_dir()
        sub = os.path.join(d.download_dir, "sub")
        os.mkdir(sub)
        c = self.connect()
        [jid] = self.submit(c, [{"url": self.srv.url("/gate/swap?size=5000"),
                                 "output": "sub/out.bin"}])
        # Accepted at submit (sub is a real directory inside); while the
        # server holds the response, sub becomes a symlink to outside.
        self.assertTrue(self.srv.arrived("swap"), self.ctx())
        os.rename(sub, sub + ".old")
        os.symlink(outside, sub)
        self.srv.release("swap")
        job = self.wait_job(c, jid)
        self.assertEqual(os.listdir(outside), [], "fetchd wrote outside the download dir")
        self.assertEqual(job["state"], "failed", job)
        self.assertEqual(job["error"]["code"], "io", job)
        self.assertIn("symlink", job["error"]["message"], job)
        self.assertEqual(self.part_files(d.download_dir), [])
        self.assertEqual(os.listdir(sub + ".old"), [])

    def test_directory_swapped_while_writing_keeps_the_file_inside(self):
        d = self.start_fetchd()
        outside = self.outside_dir()
        sub = os.path.join(d.download_dir, "sub")
        os.mkdir(sub)
        c = self.connect()
        [jid] = self.submit(c, [{"url": self.srv.url("/split/mid?size=200000"),
                                 "output": "sub/out.bin"}])
        # The temporary file exists: the output is open. Swap now.
        self.assertTrue(self.srv.arrived("mid"), self.ctx())
        self.wait_for("temporary file", lambda: self.part_files(sub))
        os.rename(sub, sub + ".old")
        os.symlink(outside, sub)
        self.srv.release("mid")
        job = self.wait_job(c, jid)
        self.assertEqual(os.listdir(outside), [], "fetchd wrote outside the download dir")
        # The file went where it was opened: in the moved directory, inside.
        self.assertEqual(job["state"], "done", job)
        with open(os.path.join(sub + ".old", "out.bin"), "rb") as f:
            self.assertEqual(f.read(), pattern(200000))
        self.assertEqual(self.part_files(d.download_dir), [])

    def test_longest_legal_file_names(self):
        d = self.start_fetchd()
        os.mkdir(os.path.join(d.download_dir, "sub"))
        c = self.connect()
        names = ["n" * 250, "m" * 255, "sub/" + "s" * 255]
        ids = self.submit(c, [{"url": self.srv.url("/data?size=3000"), "output": name}
                              for name in names])
        for jid, name in zip(ids, names):
            job = self.wait_job(c, jid)
            self.assertEqual(job["state"], "done", (name, job))
            with open(os.path.join(d.download_dir, name), "rb") as f:
                self.assertEqual(f.read(), pattern(3000))
        self.assertEqual(self.part_files(d.download_dir), [])


class DiskFull(FilesCase):
    def mount_tmpfs(self, path, size):
        if shutil.which("mount") is None:
            self.require(False, "mount(8) is missing: apt-get install mount")
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", path],
                           capture_output=True, text=True, timeout=LIMIT)
        self.require(p.returncode == 0,
                     "cannot mount a tmpfs (needs root and CAP_SYS_ADMIN): %s" % p.stderr)
        self.addCleanup(subprocess.run, ["umount", "-l", path], capture_output=True,
                        timeout=LIMIT)

    def test_enospc_says_disk_full(self):
        d = self.start_fetchd()
        small = os.path.join(d.download_dir, "small")
        os.mkdir(small)
        self.mount_tmpfs(small, "1m")
        c = self.connect()
        [jid] = self.submit(c, [{"url": self.srv.url("/data?size=3000000"),
                                 "output": "small/big.bin"}])
        job = self.wait_job(c, jid)
        self.assertEqual(job["state"], "failed", job)
        self.assertEqual(job["error"]["code"], "io", job)
        self.assertIn("disk full", job["error"]["message"], job)
        self.assertEqual(os.listdir(small), [], "a partial file stayed behind")
        # The disk has room again: the next job succeeds.
        [jid] = self.submit(c, [{"url": self.srv.url("/data?size=3000"),
                                 "output": "small/ok.bin"}])
        self.assertEqual(self.wait_job(c, jid)["state"], "done")


    def test_full_disk_at_the_final_save_exits_1(self):
        state = tmpdir("state-")
        self.addCleanup(remove_tree, state)
        self.mount_tmpfs(state, "64k")
        d = self.start_fetchd(["--state-dir", state, "--max-running", "1",
                               "--shutdown-grace", "0"], check_end=False)
        c = self.connect()
        self.submit(c, [{"url": self.srv.url("/gate/never%d" % n)} for n in range(50)])
        # Fill the state dir's file system to the last block.
        fd = os.open(os.path.join(state, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for _ in range(100000):
                os.write(fd, b"x" * 4096)
            self.fail("a 64 KiB tmpfs took 400 MB")
        except OSError as e:
            self.assertEqual(e.errno, errno.ENOSPC, e)
        finally:
            os.close(fd)
        rc = d.stop()
        self.assertEqual(rc, 1, d.log_tail())
        log = d.log()
        self.assertIn("disk full", log)
        self.assertIn("could not be saved at shutdown: 50 unfinished jobs are lost", log)


class FileDescriptors(FilesCase):
    HEADROOM = 10
    JOBS = 40

    def open_fds(self, pid):
        return len(os.listdir("/proc/%d/fd" % pid))

    def test_out_of_descriptors_is_no_file_descriptors(self):
        d = self.start_fetchd(["--max-per-host", "256", "--max-connections", "256"])
        c = self.connect()
        self.submit(c, [{"url": self.srv.url("/data?size=10")}])  # warm up the thread pool
        pid = d.proc.pid
        self.wait_for("an idle daemon", lambda: self.stats(c)["jobs"]["running"] == 0)
        limit = self.open_fds(pid) + self.HEADROOM
        # The soft limit only: the test can raise it back afterwards.
        old = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, old[1]))
        ids = self.submit(c, [{"url": self.srv.url("/gate/held%d" % n)}
                              for n in range(self.JOBS)])
        # Each job either reaches the server (and is held there) or fails.
        names = {jid: "held%d" % n for n, jid in enumerate(ids)}
        failed, held = {}, set()
        deadline = time.monotonic() + LIMIT
        while len(failed) + len(held) < len(ids) and time.monotonic() < deadline:
            for jid in ids:
                if jid in failed or jid in held:
                    continue
                if self.srv.arrived(names[jid], timeout=0):
                    held.add(jid)
                    continue
                job = c.result("status", {"id": jid})
                if job["state"] == "failed":
                    failed[jid] = job
            time.sleep(0.02)
        self.assertEqual(len(failed) + len(held), len(ids), self.ctx())
        self.assertGreater(len(failed), 0, "no job ran out of descriptors" + self.ctx())
        self.assertLess(len(failed), self.JOBS, "no job got a descriptor" + self.ctx())
        for job in failed.values():
            self.assertEqual(job["error"]["code"], "no_file_descriptors", job)
            self.assertIn("file descriptors", job["error"]["message"], job)
        # The held ones finish once released; their descriptors come back.
        for n in range(self.JOBS):
            self.srv.release("held%d" % n)
        for jid in held:
            self.assertEqual(self.wait_job(c, jid)["state"], "done", self.ctx())
        # The daemon runs on, under the same limit: a new client (fetchctl)
        # and a new job work.
        p = subprocess.run([FETCHCTL, "-s", d.socket, "submit", "--wait",
                            self.srv.url("/data?size=100")],
                           capture_output=True, text=True, timeout=LIMIT)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr + self.ctx())
        self.assertIsNone(d.proc.poll())
        resource.prlimit(pid, resource.RLIMIT_NOFILE, old)


if __name__ == "__main__":
    unittest.main()
