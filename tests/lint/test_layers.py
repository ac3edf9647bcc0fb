#!/usr/bin/env python3
"""Self-test of layers.py: tiny module graphs compiled at test time.

Each case writes a few one-function C files and a layer table into a
temporary directory, compiles them with the C compiler ($CC, else cc), and
runs layers.py on the objects, so the check is shown to catch an upward call
and a cycle, and to pass a graph that only calls down. Under CI=true a
missing compiler or nm fails the test instead of skipping it.
"""

import io
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import layers  # noqa: E402

CC = os.environ.get("CC", "cc")
NM = os.environ.get("NM", "nm")

TABLE = """# a test table
1 low    low util
2 high   high
3 top    top
"""


def tools_missing():
    return [t for t in (CC, NM) if shutil.which(t) is None]


class LayersSelfTest(unittest.TestCase):
    def setUp(self):
        missing = tools_missing()
        if missing:
            msg = "missing tools: %s" % " ".join(missing)
            if os.environ.get("CI") == "true":
                self.fail(msg)
            self.skipTest(msg)
        self.dir = tempfile.mkdtemp(prefix="layers-test-")
        self.addCleanup(shutil.rmtree, self.dir)
        self.table = self.write("layers.txt", TABLE)

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def module(self, name, calls=()):
        """Compiles NAME.c defining NAME_fn() that calls each CALLS_fn()."""
        decls = "".join("void %s_fn(void);\n" % c for c in calls)
        body = "".join("    %s_fn();\n" % c for c in calls)
        src = self.write(name + ".c", "%svoid %s_fn(void);\nvoid %s_fn(void)\n{\n%s}\n"
                         % (decls, name, name, body))
        obj = os.path.join(self.dir, name + ".c.o")
        subprocess.run([CC, "-c", "-o", obj, src], check=True, timeout=60)
        return obj

    def check(self, objs, *extra):
        out = io.StringIO()
        args = ["--table", self.table, "--nm", NM, *extra, "--objects", *objs]
        rc = layers.run(layers.parse_args(args), out)
        return rc, out.getvalue()

    def test_upward_call_is_a_violation(self):
        objs = [self.module("low", ["high"]), self.module("high")]
        rc, out = self.check(objs)
        self.assertEqual(rc, 1, out)
        self.assertIn("VIOLATION low (1 low) -> high (2 high): high_fn", out)
        self.assertIn("1 upward (1 not known)", out)

    def test_downward_calls_pass(self):
        objs = [self.module("low"), self.module("util"), self.module("high", ["low", "util"]),
                self.module("top", ["high", "low"])]
        rc, out = self.check(objs)
        self.assertEqual(rc, 0, out)
        self.assertNotIn("VIOLATION", out)
        self.assertIn("4 modules, 4 edges, 0 upward", out)

    def test_cycle_is_reported(self):
        # Both calls go up or down, and one is upward: a violation and a cycle.
        objs = [self.module("low", ["high"]), self.module("high", ["low"])]
        rc, out = self.check(objs)
        self.assertEqual(rc, 1, out)
        self.assertIn("CYCLE among high, low: high->low, low->high", out)

    def test_cycle_inside_one_layer_is_reported(self):
        objs = [self.module("low", ["util"]), self.module("util", ["low"])]
        rc, out = self.check(objs)
        self.assertEqual(rc, 1, out)
        self.assertNotIn("VIOLATION", out)
        self.assertIn("CYCLE among low, util", out)

    def test_known_edge_does_not_fail_and_stale_one_is_named(self):
        known = self.write("known.txt", "low high high_fn\nhigh top top_fn\n")
        objs = [self.module("low", ["high"]), self.module("high", ["low"])]
        rc, out = self.check(objs, "--known", known)
        self.assertEqual(rc, 0, out)
        self.assertIn("known low (1 low) -> high (2 high): high_fn", out)
        self.assertIn("stale known edge", out)
        self.assertNotIn("CYCLE", out)

    def test_unplaced_module_fails(self):
        objs = [self.module("low"), self.module("stray", ["low"])]
        rc, out = self.check(objs)
        self.assertEqual(rc, 1, out)
        self.assertIn("UNPLACED module stray", out)

    def test_list_prints_every_edge(self):
        objs = [self.module("low", ["high"]), self.module("high", ["util"]), self.module("util")]
        rc, out = self.check(objs, "--list")
        self.assertEqual(rc, 0, out)
        self.assertIn("UP    low (1 low) -> high (2 high): high_fn", out)
        self.assertIn("down  high (2 high) -> util (1 low): util_fn", out)

    def test_command_line_exit_status(self):
        objs = [self.module("low", ["high"]), self.module("high")]
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "layers.py")
        res = subprocess.run([sys.executable, script, "--table", self.table, "--nm", NM,
                              "--objects", *objs], capture_output=True, text=True, timeout=60)
        self.assertEqual(res.returncode, 1, res.stdout + res.stderr)
        self.assertIn("VIOLATION", res.stdout)
        res = subprocess.run([sys.executable, script, "--table", self.table, "--nm", NM,
                              os.path.join(self.dir, "no-such-build")],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(res.returncode, 2, res.stdout + res.stderr)


if __name__ == "__main__":
    unittest.main()
