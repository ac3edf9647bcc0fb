"""Where bodies go: files under the download dir, inline, SHA-256."""

import os
import unittest

from faultserver import FaultServer
from fetchtest import NginxTestCase, file_sha256, inline_bytes

WAIT = {"cmd": "wait"}
WRONG_SHA256 = "0" * 64


class Sinks(NginxTestCase):
    def setUp(self):
        self.dir = self.make_tmpdir("downloads-")
        self.outside = self.make_tmpdir("outside-")

    def run_sink(self, script, extra_options=()):
        return self.run_harness(script, ["--download-dir", self.dir] + list(extra_options))

    def part_files(self):
        # Temporary names are hidden (".fetchd-part-..."): glob would skip them.
        return [os.path.join(top, name) for top, dirs, files in os.walk(self.dir)
                for name in dirs + files if ".fetchd-part-" in name]

    def assert_no_part_files(self):
        self.assertEqual(self.part_files(), [])

    def test_file_output_relative_path(self):
        events, rc = self.run_sink([{"url": self.nginx.url("/1m.bin"), "output": "out.bin"}])
        self.assert_clean(events, rc)
        job = self.job(events, 0)
        self.assert_done(job, 200)
        path = os.path.join(self.dir, "out.bin")
        self.assertEqual(os.path.realpath(job["output"]), os.path.realpath(path))
        self.assertEqual(file_sha256(path), self.nginx.sha256("/1m.bin"))
        self.assert_no_part_files()

    def test_file_output_in_existing_subdirectory(self):
        os.mkdir(os.path.join(self.dir, "sub"))
        events, rc = self.run_sink([{"url": self.nginx.url("/1k.bin"), "output": "sub/a.bin"}])
        self.assert_clean(events, rc)
        self.assert_done(self.job(events, 0), 200)
        path = os.path.join(self.dir, "sub", "a.bin")
        self.assertEqual(file_sha256(path), self.nginx.sha256("/1k.bin"))
        self.assert_no_part_files()

    def test_absolute_path_inside_dir(self):
        path = os.path.join(self.dir, "abs.bin")
        events, rc = self.run_sink([{"url": self.nginx.url("/1k.bin"), "output": path}])
        self.assert_clean(events, rc)
        self.assert_done(self.job(events, 0), 200)
        self.assertEqual(file_sha256(path), self.nginx.sha256("/1k.bin"))

    def test_failed_job_leaves_no_file(self):
        with FaultServer() as srv:
            events, rc = self.run_sink([{"url": srv.url("/truncated-cl"), "output": "t.bin"}])
        self.assert_clean(events, rc)
        self.assert_failed(self.job(events, 0), "truncated")
        self.assertEqual(os.listdir(self.dir), [])

    def test_escaping_paths_rejected(self):
        os.symlink(self.outside, os.path.join(self.dir, "escape"))
        bad = ["../x", os.path.join(self.outside, "abs.bin"), "escape/x", "sub/../../x"]
        events, rc = self.run_sink([{"url": self.nginx.url("/small.txt"), "output": p}
                                    for p in bad])
        self.assert_clean(events, rc)
        for index in range(len(bad)):
            self.assert_rejected(events, index)
        self.assertEqual(os.listdir(self.outside), [])
        self.assertFalse(os.path.exists(os.path.join(os.path.dirname(self.dir), "x")))

    def test_symlink_at_final_name_leaves_target_untouched(self):
        target = os.path.join(self.outside, "victim")
        with open(target, "wb") as f:
            f.write(b"original")
        os.symlink(target, os.path.join(self.dir, "link.bin"))
        events, rc = self.run_sink([{"url": self.nginx.url("/1k.bin"), "output": "link.bin"}])
        self.assert_clean(events, rc)
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"original")
        self.assertEqual(os.listdir(self.outside), ["victim"])
        self.assert_no_part_files()

    def test_sha256(self):
        events, rc = self.run_sink([{"url": self.nginx.url("/1k.bin"), "sha256": True}])
        self.assert_clean(events, rc)
        job = self.job(events, 0)
        self.assert_done(job, 200)
        self.assertEqual(job["sha256"], self.nginx.sha256("/1k.bin"))

    def test_expected_sha256_mismatch(self):
        events, rc = self.run_sink([{"url": self.nginx.url("/1k.bin"), "output": "c.bin",
                                     "expected_sha256": WRONG_SHA256}])
        self.assert_clean(events, rc)
        self.assert_failed(self.job(events, 0), "checksum_mismatch")
        self.assertEqual(os.listdir(self.dir), [])

    def test_expected_sha256_match(self):
        events, rc = self.run_sink([{"url": self.nginx.url("/1k.bin"), "output": "c.bin",
                                     "expected_sha256": self.nginx.sha256("/1k.bin")}])
        self.assert_clean(events, rc)
        self.assert_done(self.job(events, 0), 200)
        self.assertEqual(file_sha256(os.path.join(self.dir, "c.bin")),
                         self.nginx.sha256("/1k.bin"))

    def test_inline_text(self):
        events, rc = self.run_sink([{"url": self.nginx.url("/small.txt"), "output": "inline"}])
        self.assert_clean(events, rc)
        job = self.job(events, 0)
        self.assert_done(job, 200)
        self.assertEqual(job["inline"]["encoding"], "text")
        self.assertEqual(job["inline"]["data"], "hello\n")

    def test_inline_binary(self):
        events, rc = self.run_sink([{"url": self.nginx.url("/1k.bin"), "output": "inline"}])
        self.assert_clean(events, rc)
        job = self.job(events, 0)
        self.assert_done(job, 200)
        self.assertEqual(job["inline"]["encoding"], "base64")
        self.assertEqual(inline_bytes(job), self.nginx.files["/1k.bin"])

    def test_inline_over_limit(self):
        events, rc = self.run_sink([{"url": self.nginx.url("/1k.bin"), "output": "inline",
                                     "inline_max": 100}])
        self.assert_clean(events, rc)
        self.assert_failed(self.job(events, 0), "body_too_large")

    def test_concurrent_file_downloads(self):
        count = 20
        events, rc = self.run_sink(
            [{"url": self.nginx.url("/1m.bin"), "output": "f%02d.bin" % i} for i in range(count)]
            + [WAIT])
        self.assert_clean(events, rc)
        for i in range(count):
            self.assert_done(self.job(events, i), 200)
            self.assertEqual(file_sha256(os.path.join(self.dir, "f%02d.bin" % i)),
                             self.nginx.sha256("/1m.bin"))
        self.assertEqual(len(os.listdir(self.dir)), count)
        self.assert_no_part_files()


if __name__ == "__main__":
    unittest.main()
