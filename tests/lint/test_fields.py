"""Self-test of fields.py on tiny source trees written here: it counts a
chain through a back-pointer (and not one through a plain borrowed pointer),
fails on an outside write to a read-only or private field, allows the
module's own writes and those its label names, and honours --known."""
import io
import os
import shutil
import tempfile
import unittest
from contextlib import redirect_stdout

import fields

OWNER_H = """
typedef struct child child_t;
typedef struct env env_t;
/* The owner: owns its children. */
typedef struct owner {
    int knob;          /* public */
    int count;         /* read-only */
    child_t **kids;    /* owned */
    /* private */
    int secret;
} owner_t;
"""
CHILD_H = """
typedef struct owner owner_t;
struct env {
    int loop;
};
struct child {
    owner_t *owner;    /* borrowed: the owner outlives it */
    const env_t *env;  /* borrowed: given by the owner */
    /* private: the owner's and the child module's */
    int slot;
};
"""
OWNER_C = """
#include "owner.h"
void owner_bump(owner_t *o, child_t *c)
{
    o->count++;
    o->secret = 1;
    c->slot = 2;
}
"""


class FieldsTest(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="fields-test-")
        os.mkdir(os.path.join(self.root, "daemon"))
        self.write("daemon/owner.h", OWNER_H)
        self.write("daemon/child.h", CHILD_H)
        self.write("daemon/owner.c", OWNER_C)

    def tearDown(self):
        shutil.rmtree(self.root, ignore_errors=True)

    def write(self, rel, text):
        path = os.path.join(self.root, rel)
        with open(path, "w") as f:
            f.write(text)
        return path

    def run_tool(self, *args):
        out = io.StringIO()
        with redirect_stdout(out):
            rc = fields.main(["--root", self.root, "--list"] + list(args))
        return rc, out.getvalue()

    def test_clean_tree_passes(self):
        self.write("daemon/child.c", "#include \"child.h\"\n"
                   "int child_loop(child_t *c)\n{\n    return c->env->loop;\n}\n")
        rc, out = self.run_tool("--check")
        self.assertEqual(rc, 0, out)
        self.assertNotIn("WRITE", out)
        self.assertNotIn("  chain ", out)  # through env: borrowed, but no owner of a child
        self.assertIn("total                        0       0", out)

    def test_chain_through_back_pointer_is_counted(self):
        self.write("daemon/child.c", "#include \"child.h\"\n"
                   "int child_knob(child_t *c)\n{\n    return c->owner->knob;\n}\n")
        rc, out = self.run_tool("--check")
        self.assertEqual(rc, 0, out)  # chains are counted, not failed
        self.assertIn("chain daemon/child.c:4 c->owner->knob (through child.owner)", out)

    def test_outside_write_fails_and_known_passes(self):
        self.write("daemon/child.c", "#include \"child.h\"\n"
                   "void child_poke(child_t *c)\n{\n    c->owner->count += 1;\n"
                   "    ++c->owner->secret;\n    c->owner->knob = 3;\n}\n")
        rc, out = self.run_tool("--check")
        self.assertEqual(rc, 1, out)
        self.assertIn("WRITE daemon/child.c:4 c->owner->count (read-only owner.count)", out)
        self.assertIn("WRITE daemon/child.c:5 c->owner->secret (private owner.secret)", out)
        self.assertNotIn("owner.knob", out)  # public
        known = self.write("known.txt", "daemon/child.c owner.count reason\n"
                           "daemon/child.c owner.secret reason\n"
                           "daemon/gone.c owner.count reason\n")
        rc, out = self.run_tool("--check", "--known", known)
        self.assertEqual(rc, 0, out)
        self.assertIn("known daemon/child.c:4", out)
        self.assertIn("stale known write", out)

    def test_label_names_the_other_writer(self):
        # owner.c writes child.slot, whose label names the owner: allowed;
        # a third module writing it is not.
        rc, out = self.run_tool("--check")
        self.assertEqual(rc, 0, out)
        self.write("daemon/third.c", "#include \"child.h\"\n"
                   "void third(child_t *c)\n{\n    c->slot = 0;\n}\n")
        rc, out = self.run_tool("--check")
        self.assertEqual(rc, 1, out)
        self.assertIn("WRITE daemon/third.c:4 c->slot (private child.slot)", out)


if __name__ == "__main__":
    unittest.main()
