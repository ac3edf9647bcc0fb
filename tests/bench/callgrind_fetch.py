#!/usr/bin/env python3
"""Instructions per fetch: fetchd under callgrind, 1 KiB keep-alive GETs.

A Release build of fetchd runs under `valgrind --tool=callgrind` against a
private nginx on loopback (the integration tests' fixture). `fetchctl submit
-i FILE --wait` hands it N GETs of /1k.bin, which it runs over at most 64
keep-alive connections; then fetchd is stopped with SIGTERM and callgrind's
total instruction count (Ir, every thread) is read from its output file.

Two runs, with --small and --large fetches (500 and 2,500 by default); the
marginal cost is

    (Ir(large) - Ir(small)) / (large - small)

so start-up, shutdown and the connections' set-up cancel out. Each run is
repeated --repeat times and the median count is used. This is a measurement,
not a test: it prints numbers and asserts nothing about them.

    python3 tests/bench/callgrind_fetch.py                   # builds this tree
    python3 tests/bench/callgrind_fetch.py --src /tmp/old    # another checkout
    python3 tests/bench/callgrind_fetch.py --bin-dir /tmp/fetchd-release/bin

With --client, fetchctl is the one profiled instead: fetchd runs
natively and `fetchctl submit -i FILE --wait` runs under callgrind, so the
marginal count is the client's cost per job (submitting it, waiting on it,
printing its line).

    python3 tests/bench/callgrind_fetch.py --client --bin-dir build-rel/bin

Standard library only. Every process it starts (nginx, fetchd under
valgrind, fetchctl) it stops; the temporary build and files are removed.
"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

from fetchtest import Nginx  # noqa: E402  (the integration tests' fixture)

CONNECTIONS = 64
START_TIMEOUT = 120.0  # valgrind's start-up is slow
STOP_TIMEOUT = 120.0


class CallgrindError(RuntimeError):
    """A run under callgrind could not be made."""


def fail(msg):
    print("callgrind_fetch: " + msg, file=sys.stderr)
    sys.exit(1)


def need_tools(tools=("valgrind", "cmake")):
    for tool in tools:
        if shutil.which(tool) is None:
            fail("%s is not installed" % tool)


def build(src, out):
    """A Release build of fetchd and fetchctl from the tree src into out."""
    steps = [["cmake", "-S", src, "-B", out, "-DCMAKE_BUILD_TYPE=Release"],
             ["cmake", "--build", out, "-j2", "--target", "fetchd", "fetchctl"]]
    for cmd in steps:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=1800)
        if r.returncode != 0:
            fail("%s failed:\n%s" % (" ".join(cmd), r.stdout.decode(errors="replace")[-3000:]))
    return os.path.join(out, "bin")


def wait_socket(path, proc, timeout):
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(1.0)
            s.connect(path)
            return True
        except OSError:
            time.sleep(0.1)
        finally:
            s.close()
    return False


def stop(proc, timeout):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    return proc.returncode


# The allocation functions whose calls count as heap allocations. glibc's
# symbols may show up under their internal names.
ALLOC_FN = re.compile(r"^(?:__libc_|__GI___libc_)?(malloc|calloc|realloc|memalign|"
                      r"posix_memalign|aligned_alloc)$")


def callgrind_totals(out_file):
    """(Ir, allocations) of a callgrind output file: the `summary:` (or
    `totals:`) instruction count, and the calls made to malloc, calloc,
    realloc and the aligned allocators, from every caller (the `calls=` line
    after each `cfn=` that names one of them)."""
    names = {}
    ir = None
    allocs = 0
    counting = False
    with open(out_file, errors="replace") as f:
        for line in f:
            if line.startswith(("fn=", "cfn=")):
                m = re.match(r"^c?fn=(?:\((\d+)\))?\s*(.*)$", line.rstrip("\n"))
                ident, name = m.group(1), m.group(2)
                if ident is not None and name:
                    names[ident] = name
                elif ident is not None:
                    name = names.get(ident, "")
                counting = line.startswith("cfn=") and bool(ALLOC_FN.match(name))
                continue
            if line.startswith("calls="):
                if counting:
                    allocs += int(line[6:].split()[0])
                counting = False
                continue
            m = re.match(r"^(summary|totals):\s+(\d+)", line)
            if m and ir is None:
                ir = int(m.group(2))
    if ir is None:
        raise CallgrindError("no instruction total in %s" % out_file)
    return ir, allocs


def clean_env():
    return {k: v for k, v in os.environ.items()
            if k not in ("RUNTIME_DIRECTORY", "NOTIFY_SOCKET", "XDG_RUNTIME_DIR",
                         "LISTEN_FDS", "LISTEN_PID", "JOURNAL_STREAM", "FETCHD_SOCKET",
                         "WATCHDOG_USEC", "WATCHDOG_PID")}


def one_run(bin_dir, url, n, timeout, keep=None, client=False):
    """fetchd under callgrind does n GETs of url; returns its (Ir total,
    allocation calls). With client, fetchctl runs under callgrind instead
    (and fetchd natively). With keep, callgrind's output file is copied
    there as callgrind.N.out (callgrind.fetchctl.N.out)."""
    work = tempfile.mkdtemp(prefix="fetchd-cg-")
    try:
        sock = os.path.join(work, "control.sock")
        out = os.path.join(work, "callgrind.out")
        jobs = os.path.join(work, "jobs.txt")
        with open(jobs, "w") as f:
            f.write((url + "\n") * n)
        valgrind = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out]
        cmd = [os.path.join(bin_dir, "fetchd"), "--control", sock, "--metrics", "off",
               "--max-connections", str(CONNECTIONS), "--max-per-host", str(CONNECTIONS)]
        ctl = [os.path.join(bin_dir, "fetchctl"), "-s", sock, "submit", "-i", jobs, "--wait"]
        if client:
            ctl = valgrind + ctl
        else:
            cmd = valgrind + cmd
        with open(os.path.join(work, "fetchd.log"), "wb") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env=clean_env(), start_new_session=True)
        try:
            if not wait_socket(sock, proc, START_TIMEOUT):
                raise CallgrindError("fetchd under valgrind did not start:\n" + read_tail(work))
            r = subprocess.run(ctl, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, timeout=timeout, env=clean_env())
            if r.returncode != 0:
                raise CallgrindError("fetchctl submit exited %d: %s" % (
                    r.returncode, r.stderr.decode(errors="replace")[-2000:]))
        finally:
            rc = stop(proc, STOP_TIMEOUT)
        if rc != 0:
            raise CallgrindError("fetchd exited %r:\n%s" % (rc, read_tail(work)))
        if keep:
            os.makedirs(keep, exist_ok=True)
            name = "callgrind.fetchctl.%d.out" if client else "callgrind.%d.out"
            shutil.copy(out, os.path.join(keep, name % n))
        return callgrind_totals(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def curl_command(config, conc):
    """The curl that bench.py runs: n transfers from a --config file, conc at
    a time, each one's status and size written out as fetchd reports each
    job's end."""
    return ["curl", "--silent", "--show-error", "--parallel", "--parallel-max", str(conc),
            "--write-out", "%{http_code} %{size_download}\\n", "--config", config]


def curl_run(url, n, timeout, keep=None, conc=CONNECTIONS):
    """curl --parallel under callgrind does n GETs of url, conc at a time;
    returns its (Ir total, allocation calls)."""
    work = tempfile.mkdtemp(prefix="fetchd-cg-curl-")
    try:
        out = os.path.join(work, "callgrind.out")
        config = os.path.join(work, "urls.conf")
        with open(config, "w") as f:
            f.write(('url = "%s"\noutput = "/dev/null"\n' % url) * n)
        cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out]
        cmd += curl_command(config, conc)
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout, env=clean_env())
        ok = sum(1 for line in r.stdout.decode(errors="replace").splitlines()
                 if line.startswith("200 "))
        if r.returncode != 0 or ok != n:
            raise CallgrindError("curl under valgrind exited %d with %d of %d answers: %s" % (
                r.returncode, ok, n, r.stderr.decode(errors="replace")[-2000:]))
        if keep:
            os.makedirs(keep, exist_ok=True)
            shutil.copy(out, os.path.join(keep, "callgrind.curl.%d.out" % n))
        return callgrind_totals(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def marginal(run, small, large, repeat):
    """Runs run(n) `repeat` times for n = small and large; returns the
    median (Ir, allocations) of each length and the marginal cost per fetch
    of both: {"runs": {n: [(ir, allocs), ...]}, "ir": per fetch, "allocs":
    per fetch}."""
    runs = {}
    med = {}
    for n in (small, large):
        runs[n] = [run(n) for _ in range(repeat)]
        med[n] = (statistics.median(r[0] for r in runs[n]),
                  statistics.median(r[1] for r in runs[n]))
    span = large - small
    return {"runs": runs, "ir": (med[large][0] - med[small][0]) / span,
            "allocs": (med[large][1] - med[small][1]) / span}


def read_tail(work):
    try:
        with open(os.path.join(work, "fetchd.log"), errors="replace") as f:
            return f.read()[-3000:]
    except OSError:
        return ""


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", default=REPO,
                    help="source tree to build in Release mode (default: this one)")
    ap.add_argument("--bin-dir", help="use this build's fetchd and fetchctl instead of building")
    ap.add_argument("--small", type=int, default=500, help="fetches of the short run")
    ap.add_argument("--large", type=int, default=2500, help="fetches of the long run")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each size; the median is used")
    ap.add_argument("--timeout", type=float, default=1800.0, help="limit for one run (s)")
    ap.add_argument("--curl", action="store_true",
                    help="also measure curl --parallel the same way, and print the ratio")
    ap.add_argument("--client", action="store_true",
                    help="profile fetchctl submit -i FILE --wait instead of fetchd (which "
                         "then runs natively)")
    ap.add_argument("--keep", metavar="DIR",
                    help="copy callgrind's output files there (callgrind.N.out), for "
                         "callgrind_annotate")
    args = ap.parse_args()
    if not 0 < args.small < args.large or args.repeat < 1:
        ap.error("need 0 < --small < --large and --repeat >= 1")
    return args


def print_marginal(who, m, small, large):
    for n in (small, large):
        print("%s: %5d fetches: %d instructions, %d allocations (runs: %s)"
              % (who, n, statistics.median(r[0] for r in m["runs"][n]),
                 statistics.median(r[1] for r in m["runs"][n]),
                 ", ".join(str(r[0]) for r in m["runs"][n])))
    print("%s: instructions per fetch: %.0f; heap allocations per fetch: %.2f"
          % (who, m["ir"], m["allocs"]))


def main():
    args = parse_args()
    need_tools(("valgrind", "cmake", "curl") if args.curl else ("valgrind", "cmake"))
    tmp_build = None
    nginx = None
    try:
        if args.bin_dir:
            bin_dir = os.path.abspath(args.bin_dir)
        else:
            tmp_build = tempfile.mkdtemp(prefix="fetchd-cg-build-")
            bin_dir = build(os.path.abspath(args.src), tmp_build)
        nginx = Nginx().start()
        url = nginx.url("/1k.bin")
        if args.client:
            ctl = marginal(lambda n: one_run(bin_dir, url, n, args.timeout, args.keep, True),
                           args.small, args.large, args.repeat)
            print_marginal("fetchctl", ctl, args.small, args.large)
            return
        fetchd = marginal(lambda n: one_run(bin_dir, url, n, args.timeout, args.keep),
                          args.small, args.large, args.repeat)
        print_marginal("fetchd", fetchd, args.small, args.large)
        if args.curl:
            curl = marginal(lambda n: curl_run(url, n, args.timeout, args.keep),
                            args.small, args.large, args.repeat)
            print_marginal("curl", curl, args.small, args.large)
            print("curl/fetchd instructions per fetch: %.2fx" % (curl["ir"] / fetchd["ir"]))
    except CallgrindError as exc:
        fail(str(exc))
    finally:
        if nginx is not None:
            nginx.stop()
        if tmp_build is not None:
            shutil.rmtree(tmp_build, ignore_errors=True)


if __name__ == "__main__":
    main()
