"""fetchctl waits on more jobs than fetchd holds open waits for one client.

fetchd answers a client's wait call past its 10,000th open one with
`too_many_waits` (proto/PROTOCOL.md). `fetchctl submit -i FILE --wait` and
`fetchctl wait ID...` with more unfinished jobs than that must still wait on
every one: here 10,050 jobs that cannot finish on their own (one runs, to a
server that never answers; the others stay queued) until they are
cancelled from another fetchctl. Each job is then printed as cancelled, no
wait is refused, and the exit status is 1 (a job was cancelled).
"""

import os
import subprocess
import time

from ctltest import FETCHCTL, WAITS_MAX, clean_env
from test_fetchctl import RUN_TIMEOUT, FetchctlCase

JOBS = WAITS_MAX + 50
# Time for fetchd to read the wait calls that fetchctl sent once it printed
# the ids: a refused one would be reported within it.
SETTLE = 2.0


class ManyWaits(FetchctlCase):
    # One job runs; the retained jobs outnumber the cancelled ones, so no
    # answer depends on which finished job fetchd would forget first.
    ARGS = ["--max-running", "1", "--retain-jobs", str(2 * JOBS)]

    def start(self, *args):
        """fetchctl args in the background; returns (process, stdout path, stderr path)."""
        out, err = os.path.join(self.work, "out"), os.path.join(self.work, "err")
        with open(out, "w") as o, open(err, "w") as e:
            p = subprocess.Popen([FETCHCTL] + list(args), stdout=o, stderr=e,
                                 stdin=subprocess.DEVNULL,
                                 env=clean_env(FETCHD_SOCKET=self.daemon.socket))
        self.addCleanup(lambda: p.poll() is None and (p.kill(), p.wait()))
        return p, out, err

    def read(self, path):
        with open(path) as f:
            return f.read()

    def wait_for_lines(self, p, path, n):
        deadline = time.monotonic() + RUN_TIMEOUT
        while len(self.read(path).splitlines()) < n:
            self.assertIsNone(p.poll(), "fetchctl ended early: %s" % self.read(path)[-500:])
            self.assertLess(time.monotonic(), deadline, "fetchctl printed too few lines")
            time.sleep(0.1)
        return self.read(path).splitlines()[:n]

    def cancel_and_check(self, p, out, err, ids, skip):
        """Cancels ids, then checks that p printed each as cancelled (after
        `skip` lines) and exits 1 with no refused wait."""
        time.sleep(SETTLE)
        self.assertFalse("too_many_waits" in self.read(err), self.read(err)[-500:])
        c = self.ctl("cancel", *ids)
        self.assertEqual(c.returncode, 0, self.why(c))
        rc = p.wait(RUN_TIMEOUT)
        lines = self.read(out).splitlines()[skip:]
        self.assertFalse("too_many_waits" in self.read(err), self.read(err)[-500:])
        self.assertEqual(rc, 1, self.read(err)[-2000:])
        self.assertEqual(len(lines), len(ids), self.read(err)[-2000:])
        self.assertEqual(sorted(l.split()[0] for l in lines), sorted(ids))
        self.assertEqual({l.split()[1] for l in lines}, {"cancelled"})

    def test_submit_wait_on_more_jobs_than_open_waits(self):
        path = self.write("jobs.txt", (self.srv.url("/never") + "\n") * JOBS)
        p, out, err = self.start("submit", "-i", path, "--wait")
        ids = self.wait_for_lines(p, out, JOBS)
        self.cancel_and_check(p, out, err, ids, JOBS)

    def test_wait_on_more_ids_than_open_waits(self):
        path = self.write("jobs.txt", (self.srv.url("/never") + "\n") * JOBS)
        ids = self.ok("submit", "-i", path).stdout.split()
        self.assertEqual(len(ids), JOBS)
        p, out, err = self.start("wait", *ids)
        self.cancel_and_check(p, out, err, ids, 0)


if __name__ == "__main__":
    import unittest
    unittest.main()
