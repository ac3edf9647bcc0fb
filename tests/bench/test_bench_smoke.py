"""The benchmark's smoke test (ctest: bench_smoke, label bench).

Runs `bench.py --quick` once, with every workload W1-W7, the callgrind
costs at tiny run lengths and the plot, and checks only that the script
exits 0 and that every workload produced a number for every contender that
took part: it never asserts anything about speed.

undici is left out (`--skip undici`): it comes from the npm registry
(`cd tests/bench && npm install`), which CI does not do. Every other tool is
a Debian package from deploy/install-deps.sh; a missing one skips the test
outside CI and fails it under CI=true (fetchtest's rule).
"""

import json
import os
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from fetchtest import missing_tools, remove_tree, tmpdir  # noqa: E402

BENCH = os.path.join(HERE, "bench.py")
TIMEOUT = 600
TOOLS = (("nginx", "nginx-light"), ("curl", "curl"), ("wrk", "wrk"), ("openssl", "openssl"),
         ("valgrind", "valgrind"), ("gnuplot", "gnuplot-nox"))
# Workload tables and the contenders each must show (undici is skipped).
TABLES = {"w1": ("fetchd", "curl", "wrk"), "w2": ("fetchd", "curl", "wrk"),
          "w3": ("fetchd", "curl", "wrk"), "w3-tls": ("fetchd", "curl", "wrk"),
          "w4": ("fetchd", "curl", "wrk"), "w5": ("fetchd", "curl"), "w6": ("fetchd",)}
FIGURES = ("full TLS handshake, fetchd CPU", "W6 jobs accepted per second",
           "W7 RSS per idle connection, plain", "W7 RSS per idle connection, TLS",
           "instructions per fetch, fetchd (callgrind)", "instructions per fetch, curl (callgrind)",
           "heap allocations per fetch, fetchd (callgrind malloc calls)")


class BenchSmokeTest(unittest.TestCase):
    def setUp(self):
        # nginx lives in /usr/sbin, which a user's PATH may lack.
        os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin"
        reason = missing_tools(*TOOLS)
        if reason:
            self.skipTest(reason)
        self.dir = tmpdir("bench-smoke-")
        self.addCleanup(remove_tree, self.dir)

    def test_quick_run_gives_every_number(self):
        out_json = os.path.join(self.dir, "bench.json")
        out_png = os.path.join(self.dir, "ratios.png")
        cmd = [sys.executable, BENCH, "--quick", "--repeat", "1", "--skip", "undici",
               "--callgrind", "--cg-small", "10", "--cg-large", "30",
               "--json", out_json, "--plot", out_png]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=TIMEOUT)
        text = proc.stdout.decode(errors="replace")
        self.assertEqual(proc.returncode, 0, text[-4000:])
        with open(out_json) as f:
            doc = json.load(f)
        for key, tools in TABLES.items():
            self.assertIn(key, doc["workloads"], text[-4000:])
            results = {r["tool"]: r for r in doc["workloads"][key]["results"]}
            metric = doc["workloads"][key]["metric"]
            for tool in tools:
                r = results.get(tool)
                self.assertIsNotNone(r, "%s: no %s result\n%s" % (key, tool, text[-4000:]))
                self.assertNotIn("error", r, "%s: %s\n%s" % (key, tool, text[-4000:]))
                self.assertGreater(r[metric], 0, "%s: %s" % (key, tool))
                self.assertEqual(r["ok"], r["requests"], "%s: %s: %r" % (key, tool, r))
            self.assertNotIn("undici", results, "%s: undici was to be skipped" % key)
        figures = {f["name"]: f for f in doc["figures"]}
        for name in FIGURES:
            self.assertIn(name, figures, text[-4000:])
            self.assertIsNotNone(figures[name]["value"], "%s\n%s" % (name, text[-4000:]))
        # Every ratio with a target was measured (undici's are skipped).
        for ratio in doc["ratios"]:
            if ratio["peer"] != "undici" and ratio["target"] is not None:
                self.assertIsNotNone(ratio["ratio"], "%r\n%s" % (ratio, text[-4000:]))
        with open(out_png, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n", "not a PNG")


if __name__ == "__main__":
    unittest.main()
