"""submit through the control socket: what a submitted job costs, and that
its URL is its own (issue 15).

The daemon decodes each job's url into one room it lends to the whole batch
and the job shares its parsed URL's text, or copies the text when it is not
normalised, before the room is reused. These tests check, from the outside,
that an already normalised URL costs the job's allocation and nothing more
(heap.fetchd.allocations_total), and that a URL that is not normalised is
still the one submitted, in status, after later batches reused the room.
Under ASan (build-asan) a job that kept the room would be a report in the
log, which the clean stop checks.
"""

import unittest

from ctltest import ControlTestCase, spec
from faultserver import FaultServer

BATCH = 200


class SubmitTest(ControlTestCase):

    def setUp(self):
        self.srv = FaultServer().start()
        self.addCleanup(self.srv.stop)
        # One job runs (it waits on /never, which never answers); every other
        # stays queued, so a submit's allocations are the submit's own.
        self.start_fetchd(["--max-running", 1, "--idle-timeout", 1], clean_stop=True,
                          download_dir=False, metrics=None)
        self.c = self.connect()
        self.base = "http://127.0.0.1:%d" % self.srv.port
        first = self.c.result("submit", {"jobs": [spec(self.srv.url("/never"))]})["ids"][0]
        self.addCleanup(self.c.call, "cancel", {"id": first})

    def allocations(self):
        return self.c.result("stats")["heap"]["fetchd"]["allocations_total"]

    def submit(self, urls):
        before = self.allocations()
        ids = self.c.result("submit", {"jobs": [spec(u) for u in urls]})["ids"]
        self.assertEqual(len(ids), len(urls))
        return ids, self.allocations() - before

    def test_normalised_url_costs_only_the_job(self):
        self.submit([self.base + "/warm/%d" % i for i in range(BATCH)])  # queue growth
        ids, allocs = self.submit([self.base + "/a/%d?x=%d" % (i, i) for i in range(BATCH)])
        # One allocation per job, and a few per call (the answer's ids, the
        # stats call's own): a copy of each URL would double it.
        self.assertGreaterEqual(allocs, BATCH)
        self.assertLess(allocs, BATCH + BATCH // 4, "allocations for %d jobs" % BATCH)
        job = self.c.result("status", {"id": ids[7]})
        self.assertEqual(job["url"], self.base + "/a/7?x=7")

    def test_unnormalised_url_survives_later_batches(self):
        # Not normalised (upper-case scheme and host, a fragment, a default
        # port): the job cannot share its parsed URL and must own a copy.
        odd = ["HTTP://127.0.0.1:%d/b/%d#frag-%d" % (self.srv.port, i, i) for i in range(BATCH)]
        ids, allocs = self.submit(odd)
        self.assertGreaterEqual(allocs, 2 * BATCH)  # the jobs and their copies
        # Later batches, longer and shorter URLs, reuse the room many times.
        self.submit([self.base + "/" + "z" * (i % 300) for i in range(BATCH)])
        self.submit(["http://x/"] * BATCH)
        for i in (0, 1, BATCH // 2, BATCH - 1):
            job = self.c.result("status", {"id": ids[i]})
            self.assertEqual(job["url"], odd[i])
            self.assertEqual(job["state"], "queued")
        listed = {j["id"]: j["url"] for j in self.list_all(self.c, state="queued")}
        self.assertEqual([listed[i] for i in ids], odd)

    def test_refused_batch_leaves_nothing(self):
        before = self.c.result("stats")
        resp = self.c.call("submit", {"jobs": [spec(self.base + "/ok"),
                                               spec("HTTP://127.0.0.1:1/x#y"),
                                               spec("ftp://127.0.0.1/")]})
        self.assertIn("error", resp)
        self.assertEqual(resp["error"]["data"]["index"], 2)
        after = self.c.result("stats")
        self.assertEqual(after["jobs"]["queued"], before["jobs"]["queued"])
        self.assertEqual(after["objects"]["job"], before["objects"]["job"])


if __name__ == "__main__":
    unittest.main()
