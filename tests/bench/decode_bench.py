#!/usr/bin/env python3
"""Decoding throughput: fetchd's `decode` against `curl --compressed` on the
same gzip body from the same nginx on loopback, in one run.

    python3 tests/bench/decode_bench.py [--mib 100] [--repeat 3] [--bin-dir DIR]
        [--timeout 300]

nginx serves a text file of --mib MiB (decoded size) through gzip_static,
its .gz made once here with zlib level 6, so nginx spends no CPU
compressing. Each run fetches it once:

  fetchd decode   a job with "decode": true, body discarded (decoded, then
                  dropped); wall time from submit to the `wait` answer; CPU
                  is the daemon's user+system time for the run (/proc/PID/stat)
  fetchd raw      the same job with the client's own "Accept-Encoding: gzip"
                  and no decode: the gzip bytes as received (transfer only)
  curl decode     curl --compressed -o /dev/null (curl decodes with zlib)
  curl raw        curl -H 'Accept-Encoding: gzip' -o /dev/null (no decoding)

Each runs --repeat times; the median wall time is shown, with MiB/s of the
decoded size (decoding rows) or of the wire size (raw rows); "vs fetchd" is
fetchd decode's wall time divided by the row's (above 1.00x: faster). It is a measurement, not a test: it asserts nothing about speed and
is not registered with CTest. Loopback only; every process it starts is
stopped.
"""

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import ctltest  # noqa: E402
from fetchtest import Nginx  # noqa: E402

WORDS = ("fetch daemon body stream decode gzip deflate brotli zstd window buffer "
         "socket event loop pool connection header chunk trailer status content "
         "length encoding transfer request response server client metric").split()


def make_text(mib, seed=20261201):
    """mib MiB of word salad: a 1 MiB block repeated (deflate's 32 KiB window
    cannot see the repeats, so the ratio is that of the block)."""
    rng = random.Random(seed)
    block = []
    size = 0
    while size < 1 << 20:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14)))
        line += " %d\n" % rng.randint(0, 1 << 30)
        block.append(line)
        size += len(line)
    one = "".join(block).encode()[:1 << 20]
    return one, mib


class GzipStaticNginx(Nginx):
    def __init__(self, block, mib):
        super().__init__()
        self.block, self.mib = block, mib
        self.gz_size = 0

    def _config(self):
        base = super()._config()
        at = base.index("        location = /status/404")
        return base[:at] + "        location /big/ { gzip_static on; }\n" + base[at:]

    def _write_tree(self):
        conf = super()._write_tree()
        d = os.path.join(self.prefix, "html", "big")
        os.makedirs(d)
        comp = zlib.compressobj(6, zlib.DEFLATED, 31)
        with open(os.path.join(d, "text.txt"), "wb") as plain, \
                open(os.path.join(d, "text.txt.gz"), "wb") as gz:
            for _ in range(self.mib):
                plain.write(self.block)
                gz.write(comp.compress(self.block))
            gz.write(comp.flush())
            self.gz_size = gz.tell()
        return conf


def cpu_of(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_fetchd(daemon, client, url, decode, timeout):
    spec = {"url": url, "output": "discard"}
    if decode:
        spec["decode"] = True
    else:
        spec["headers"] = [["Accept-Encoding", "gzip"]]
    cpu0 = cpu_of(daemon.proc.pid)
    t0 = time.monotonic()
    jid = client.result("submit", {"jobs": [spec]})["ids"][0]
    job = client.result("wait", {"id": jid, "timeout": timeout}, timeout=timeout + 10)
    wall = time.monotonic() - t0
    cpu = cpu_of(daemon.proc.pid) - cpu0
    if job["state"] != "done":
        raise SystemExit("fetchd job failed: %r" % job)
    return wall, cpu, job["bytes"], job["wire_bytes"]


def run_curl(curl, url, decode, timeout):
    args = [curl, "-s", "-S", "-o", "/dev/null", "-w", "%{size_download}"]
    args += ["--compressed"] if decode else ["-H", "Accept-Encoding: gzip"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    p = subprocess.run(args + [url], capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit("curl failed: %s" % p.stderr)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, None, int(p.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=100, help="decoded size in MiB")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bin-dir", default=None)
    ap.add_argument("--timeout", type=float, default=300)
    a = ap.parse_args()
    if a.bin_dir:
        ctltest.FETCHD = os.path.join(a.bin_dir, "fetchd")
    curl = shutil.which("curl")
    if curl is None:
        raise SystemExit("curl is required")
    block, mib = make_text(a.mib)
    nginx = GzipStaticNginx(block, mib)
    daemon = None
    try:
        nginx.start()
        url = nginx.url("/big/text.txt")
        decoded = mib << 20
        print("body: %d MiB decoded, %.1f MiB gzip (ratio %.2f)"
              % (mib, nginx.gz_size / 2**20, decoded / nginx.gz_size))
        daemon = ctltest.Fetchd(["--idle-timeout", "5"])
        daemon.wait_ready()
        client = daemon.client(timeout=a.timeout)
        rows = []
        for name, fn in (("fetchd decode", lambda: run_fetchd(daemon, client, url, True,
                                                                a.timeout)),
                         ("curl --compressed", lambda: run_curl(curl, url, True, a.timeout)),
                         ("fetchd raw (no decode)", lambda: run_fetchd(daemon, client, url,
                                                                         False, a.timeout)),
                         ("curl raw (no decode)", lambda: run_curl(curl, url, False,
                                                                   a.timeout))):
            runs = [fn() for _ in range(a.repeat)]
            walls = [r[0] for r in runs]
            med = statistics.median(walls)
            run = runs[walls.index(med)]
            rows.append((name, med, run[1], run[2], run[3]))
        base = rows[0][1]
        print("%-24s %9s %9s %10s %12s %8s" % ("tool", "wall s", "cpu s", "MiB/s",
                                             "wire bytes", "vs fetchd"))
        for name, wall, cpu, nbytes, wire in rows:
            # Decoding rows: decoded MiB per second; raw rows: wire MiB per second.
            size = decoded if "raw" not in name else wire
            print("%-24s %9.3f %9.3f %10.1f %12d %7.2fx" % (
                name, wall, cpu, (size / 2**20) / wall, wire, base / wall))
        client.close()
    finally:
        if daemon is not None:
            daemon.cleanup()
        nginx.stop()


if __name__ == "__main__":
    main()
