"""The Debian package: `cpack -G DEB` builds it, and it holds what a user
installs: both binaries, the units, the sysusers entry, the default config
(as a conffile), both manual pages and the bash completion."""

import os
import shutil
import subprocess
import unittest

from fetchtest import tmpdir, remove_tree

BUILD_DIR = os.environ.get("FETCHD_BUILD_DIR", "")

EXPECTED = [
    "./usr/bin/fetchd",
    "./usr/bin/fetchctl",
    "./lib/systemd/system/fetchd.service",
    "./lib/systemd/system/fetchd.socket",
    "./usr/lib/sysusers.d/fetchd.conf",
    "./etc/fetchd/fetchd.json",
    "./usr/share/man/man8/fetchd.8",
    "./usr/share/man/man1/fetchctl.1",
    "./usr/share/bash-completion/completions/fetchctl",
]


@unittest.skipUnless(shutil.which("cpack") and shutil.which("dpkg-deb"),
                     "cpack and dpkg-deb are needed")
class DebianPackage(unittest.TestCase):
    def test_cpack_deb_contents(self):
        config = os.path.join(BUILD_DIR, "CPackConfig.cmake")
        self.assertTrue(os.path.exists(config), "no CPackConfig.cmake in %r" % BUILD_DIR)
        out = tmpdir("fetchd-pkg-")
        self.addCleanup(remove_tree, out)
        p = subprocess.run(["cpack", "-G", "DEB", "--config", config, "-B", out],
                           capture_output=True, text=True, timeout=600)
        self.assertEqual(p.returncode, 0, p.stdout[-2000:] + p.stderr[-2000:])
        debs = [f for f in os.listdir(out) if f.endswith(".deb")]
        self.assertEqual(len(debs), 1, os.listdir(out))
        deb = os.path.join(out, debs[0])
        listing = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True,
                                 check=True).stdout
        files = {line.split()[-1] for line in listing.splitlines() if line.strip()}
        for path in EXPECTED:
            self.assertIn(path, files)
        control = subprocess.run(["dpkg-deb", "-I", deb], capture_output=True, text=True,
                                 check=True).stdout
        self.assertIn("Package: fetchd", control)
        for dep in ("libuv1", "libjansson4", "libmbedtls14"):
            self.assertIn(dep, control)
        conffiles = subprocess.run(["dpkg-deb", "-I", deb, "conffiles"], capture_output=True,
                                   text=True).stdout
        self.assertIn("/etc/fetchd/fetchd.json", conffiles)


if __name__ == "__main__":
    unittest.main()
