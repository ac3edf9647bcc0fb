"""The Debian package: `cpack -G DEB` builds it, and it holds what a user
installs: both binaries, the units, the sysusers entry, the default config
(as a conffile), both manual pages and the bash completion.

Where the units go does not depend on the host: a systemd.pc that names other
directories changes nothing, and a directory cached by an older configure
(from pkg-config, or the prefix-relative fallback) does not survive a
reconfigure, while a directory the user gives with -D does."""

import os
import re
import subprocess
import unittest

from fetchtest import remove_tree, skip_unless_tools, tmpdir

BUILD_DIR = os.environ.get("FETCHD_BUILD_DIR", "")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNIT_DIR = "/lib/systemd/system"
SYSUSERS_DIR = "/usr/lib/sysusers.d"

EXPECTED = [
    "./usr/bin/fetchd",
    "./usr/bin/fetchctl",
    "./lib/systemd/system/fetchd.service",
    "./lib/systemd/system/fetchd@.service",
    "./lib/systemd/system/fetchd.socket",
    "./usr/lib/sysusers.d/fetchd.conf",
    "./etc/fetchd/fetchd.json",
    "./usr/share/man/man8/fetchd.8",
    "./usr/share/man/man1/fetchctl.1",
    "./usr/share/bash-completion/completions/fetchctl",
]


@skip_unless_tools(("cpack", "cmake"), ("dpkg-deb", "dpkg"))
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



# What another host's systemd.pc could say (bookworm's own says /lib/...).
OTHER_SYSTEMD_PC = """prefix=/usr
systemdsystemunitdir=/usr/lib/systemd/system
sysusersdir=/srv/sysusers.d
Name: systemd
Description: systemd System and Service Manager
Version: 252
"""


@skip_unless_tools(("cmake", "cmake"), ("pkg-config", "pkg-config"))
class UnitDirectory(unittest.TestCase):
    def setUp(self):
        self.dir = tmpdir("fetchd-cfg-")
        self.addCleanup(remove_tree, self.dir)
        pc = os.path.join(self.dir, "pc")
        os.mkdir(pc)
        with open(os.path.join(pc, "systemd.pc"), "w") as f:
            f.write(OTHER_SYSTEMD_PC)
        # A systemd.pc found first on PKG_CONFIG_PATH, whatever the host has.
        self.env = dict(os.environ, PKG_CONFIG_PATH=pc)
        self.build = os.path.join(self.dir, "build")

    def configure(self, *args):
        p = subprocess.run(["cmake", "-S", REPO, "-B", self.build] + list(args),
                           capture_output=True, text=True, env=self.env, timeout=300)
        self.assertEqual(p.returncode, 0, p.stdout[-3000:] + p.stderr[-3000:])
        with open(os.path.join(self.build, "CMakeCache.txt")) as f:
            cache = f.read()
        return {key: re.search(r"^%s:[A-Z]+=(.*)$" % key, cache, re.M).group(1)
                for key in ("FETCHD_SYSTEMD_UNIT_DIR", "FETCHD_SYSUSERS_DIR")}

    def test_host_systemd_pc_is_not_consulted(self):
        self.assertEqual(self.configure(), {"FETCHD_SYSTEMD_UNIT_DIR": UNIT_DIR,
                                            "FETCHD_SYSUSERS_DIR": SYSUSERS_DIR})

    def test_directory_cached_by_an_older_configure_is_replaced(self):
        # What an older deploy/install.cmake left in the cache, as -C preloads it.
        init = os.path.join(self.dir, "old-cache.cmake")
        with open(init, "w") as f:
            f.write('set(FETCHD_SYSTEMD_UNIT_DIR "lib/systemd/system" CACHE PATH '
                    '"Where the systemd units go (absolute, or relative to the prefix)")\n'
                    'set(FETCHD_SYSUSERS_DIR "lib/sysusers.d" CACHE PATH '
                    '"Where the sysusers.d snippet goes (absolute, or relative to the prefix)")\n')
        self.assertEqual(self.configure("-C", init)["FETCHD_SYSTEMD_UNIT_DIR"], UNIT_DIR)
        self.assertEqual(self.configure()["FETCHD_SYSTEMD_UNIT_DIR"], UNIT_DIR)

    def test_user_directory_survives_a_reconfigure(self):
        self.assertEqual(self.configure("-DFETCHD_SYSTEMD_UNIT_DIR=/opt/units")
                         ["FETCHD_SYSTEMD_UNIT_DIR"], "/opt/units")
        self.assertEqual(self.configure()["FETCHD_SYSTEMD_UNIT_DIR"], "/opt/units")


if __name__ == "__main__":
    unittest.main()
