"""Allocation failure: every one of fetchd's own allocations, failed in turn.

For each N the harness fails the N-th allocation after the script starts and
runs a mix of jobs (plain, chunked, redirected, file output, a refused
connection). Whatever N hits, every job must end as done or with the
no_memory error, nothing may crash, and teardown must find every count back
at zero. N runs until the injected failure no longer happens: every
allocation point of this workload has then been failed once.
"""

import os
import sys
import unittest

from faultserver import FaultServer
from fetchtest import HarnessTestCase, Nginx, free_port

MAX_INJECTION_POINTS = 400


class AllocationFailure(HarnessTestCase):
    def test_every_allocation_failure_is_contained(self):
        with Nginx().start() as nginx, FaultServer().start() as srv:
            out = self.make_tmpdir()
            closed = free_port()
            jobs = [
                {"url": nginx.url("/small.txt"), "sha256": True},
                {"url": srv.url("/chunked"), "output": "inline"},
                {"url": nginx.url("/redirect/2")},
                {"url": nginx.url("/1k.bin"), "output": "f.bin"},
                {"url": "http://127.0.0.1:%d/" % closed},
            ]
            tried = 0
            for n in range(1, MAX_INJECTION_POINTS + 1):
                script = [{"cmd": "fail_alloc", "after": n}] + jobs + [{"cmd": "wait"}]
                # The same jobs again on warm pools: reuse paths allocate too.
                script += jobs + [{"cmd": "wait"}, {"cmd": "fail_alloc", "after": 0}]
                events, rc = self.run_harness(script, ["--download-dir", out])
                self.assert_clean(events, rc)
                hit = False
                for e in events:
                    if e.get("event") == "rejected":
                        self.assertEqual(e["error"]["code"], "no_memory", (n, e))
                        hit = True
                    elif e.get("event") == "job":
                        job = e["job"]
                        if job["state"] == "done":
                            continue
                        code = job["error"]["code"]
                        if code == "connect_refused" and job["url"].endswith(":%d/" % closed):
                            continue
                        self.assertEqual(code, "no_memory", (n, job))
                        hit = True
                leftovers = [f for f in os.listdir(out) if ".fetchd-part-" in f]
                self.assertEqual(leftovers, [], "partial files left (n=%d)" % n)
                tried = n
                fired = [e["fired"] for e in events if e.get("event") == "fail_alloc"]
                self.assertEqual(len(fired), 1, events)
                if not fired[0]:
                    self.assertFalse(hit, "a job failed with no_memory, but no allocation failed")
                    break
            self.assertGreater(tried, 20, "too few allocation points exercised")
            self.assertLess(tried, MAX_INJECTION_POINTS, "injection never ran out")
            print("ALLOC: %d allocation points failed in turn, all contained" % (tried - 1),
                  file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
