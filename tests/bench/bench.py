#!/usr/bin/env python3
"""Puts fetchd beside curl, undici and wrk against the same nginx on loopback
and prints, per workload, a table and each tool's throughput relative to
fetchd's.

    python3 tests/bench/bench.py [--requests 20000] [--concurrency 64]
        [--large-requests 200] [--wrk-seconds 5] [--repeat 3]
        [--skip undici,wrk] [--workloads small,large,https,proxy,proxy-https]
        [--bin-dir DIR]
        [--timeout 300]

Workloads (each bounded by a count and by --timeout):
  small   N GETs of /small.txt (6 bytes) with keep-alive, C at a time
  large   --large-requests GETs of /4m.bin, C at a time
  https   the small workload over TLS (nginx with the test CA's certificate)
  proxy   the small workload through a tinyproxy on loopback (absolute-form
          requests): fetchd with the job field `proxy`, curl with -x; undici
          and wrk do not take part
  proxy-https  the https workload through the same tinyproxy (CONNECT
          tunnels, TLS inside), fetchd and curl -x only

Tools:
  fetchd  a fresh daemon per run (--max-connections C --max-per-host C);
          jobs go in over the control socket in batches of --batch, and a
          subscription to `finished` events sees them end. Wall time runs from
          the first submit to the last `finished` event this script reads;
          the daemon's CPU time comes from /proc/PID/stat.
  curl    one `curl --parallel --parallel-max C --config FILE` process with
          N `url`/`output = "/dev/null"` entries; wall time is its lifetime.
  undici  undici_bench.mjs: an undici Pool with `connections: C`, N requests;
          wall time from its first request to its last body (node's start-up
          excluded). Needs `cd tests/bench && npm install`.
  wrk     `wrk -c C -t 2 -d Ss`: it runs for a duration, not a count, so
          compare its requests/s, not its wall time.

Each tool runs each workload --repeat times and the run with the median
requests/s is shown. The ratio column is the tool's requests/s divided by
fetchd's in the same workload (above 1.00x: the tool was faster). CPU is
the client's user+system time: fetchd's daemon process (not this script),
or the tool's process.

It is a measurement, not a test: it asserts nothing about speed and is not
registered with CTest. Loopback only; every process it starts is stopped.
For figures worth quoting, build fetchd optimised (the default build type,
RelWithDebInfo, or Release), not Debug.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import ctltest  # noqa: E402
from fetchtest import Nginx, remove_tree, tmpdir  # noqa: E402
from tlsutil import TlsNginx, certs  # noqa: E402

TOOLS = ("fetchd", "curl", "undici", "wrk")
WORKLOADS = ("small", "large", "https", "proxy", "proxy-https")
UNDICI_SCRIPT = os.path.join(HERE, "undici_bench.mjs")
UNDICI_MODULE = os.path.join(HERE, "node_modules", "undici")
UNDICI_INSTALL = "cd tests/bench && npm install"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024.0 * 1024.0
# A one-minute load average above this at the start means other work shares
# the CPUs with the run (the benchmark itself runs several busy processes).
BUSY_LOAD = 0.5


class Result:
    """One tool's run of one workload; `error` set when it could not run."""

    def __init__(self, tool, requests=0, ok=0, seconds=0.0, nbytes=0, cpu=None,
                 note="", error=None):
        self.tool = tool
        self.requests = requests
        self.ok = ok
        self.seconds = seconds
        self.bytes = nbytes
        self.cpu = cpu
        self.note = note
        self.error = error

    @property
    def rps(self):
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    @property
    def mibps(self):
        return self.bytes / MIB / self.seconds if self.seconds > 0 else 0.0


def children_cpu():
    """User+system seconds of every child this process has reaped so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def proc_cpu(pid):
    """User+system seconds of a running process, from /proc/PID/stat."""
    with open("/proc/%d/stat" % pid) as f:
        stat = f.read()
    # The command name may hold spaces and parentheses: fields start after
    # the last ')'. utime and stime are fields 14 and 15 (1-based).
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_child(cmd, timeout, cwd=None):
    """Runs cmd; returns (stdout, stderr, returncode, wall s, CPU s) or raises
    TimeoutError after killing it."""
    cpu0 = children_cpu()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise TimeoutError("%s did not finish within %.0f s" % (cmd[0], timeout))
    wall = time.monotonic() - t0
    return (out.decode(errors="replace"), err.decode(errors="replace"), proc.returncode,
            wall, children_cpu() - cpu0)


# fetchd ---------------------------------------------------------------------

class FinishedCounter(threading.Thread):
    """Reads a subscribed control connection until `want` finished events came.

    A thread of its own, so that fetchd's events are drained while the main
    thread is still submitting (fetchd disconnects a client that lets 8 MiB
    of output pile up).
    """

    def __init__(self, client, want, deadline):
        super().__init__(daemon=True)
        self.client = client
        self.want = want
        self.deadline = deadline
        self.seen = 0
        self.done = 0
        self.bytes = 0
        self.failures = {}
        self.first_created = None
        self.last_finished = None
        self.end = None
        self.error = None

    def run(self):
        try:
            while self.seen < self.want:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("%d of %d jobs finished before the time limit"
                                       % (self.seen, self.want))
                line = self.client.read_line(left)
                if line is None:
                    raise EOFError("fetchd closed the event connection")
                if line.strip():
                    self.count(json.loads(line))
            self.end = time.monotonic()
        except Exception as exc:  # reported by the main thread
            self.error = exc

    def count(self, msg):
        params = msg.get("params") or {}
        if msg.get("method") != "event" or params.get("event") != "finished":
            return
        job = params["job"]
        self.seen += 1
        if job["state"] == "done" and job.get("http_status") == 200:
            self.done += 1
            self.bytes += job.get("bytes", 0)
        else:
            key = (job.get("error") or {}).get("code") or "http_%s" % job.get("http_status")
            self.failures[key] = self.failures.get(key, 0) + 1
        timings = job.get("timings") or {}
        created, finished = timings.get("created"), timings.get("finished")
        if created is not None and (self.first_created is None or created < self.first_created):
            self.first_created = created
        if finished is not None and (self.last_finished is None or finished > self.last_finished):
            self.last_finished = finished


def submit_all(client, specs, batch):
    """Sends every batch without waiting, then collects the answers."""
    rids = []
    for i in range(0, len(specs), batch):
        rids.append(client.request("submit", {"jobs": specs[i:i + batch]}))
    ids = []
    for rid in rids:
        resp = client.response(rid)
        if "error" in resp:
            raise RuntimeError("submit failed: %r" % resp["error"])
        ids += resp["result"]["ids"]
    return ids


def run_fetchd(url, n, conc, args, extra_spec=None):
    daemon_args = ["--max-connections", conc, "--max-per-host", conc, "--metrics", "off"]
    daemon = ctltest.Fetchd(daemon_args, download_dir=False, metrics=None)
    try:
        daemon.wait_ready()
        spec = dict(url=url, **(extra_spec or {}))
        specs = [spec] * n
        with daemon.client(args.timeout) as sub, daemon.client(args.timeout) as ctl:
            sub.result("subscribe", {"events": ["finished"]})
            counter = FinishedCounter(sub, n, time.monotonic() + args.timeout)
            cpu0 = proc_cpu(daemon.proc.pid)
            t0 = time.monotonic()
            counter.start()
            ids = submit_all(ctl, specs, args.batch)
            counter.join(max(0.0, counter.deadline - time.monotonic()) + 1.0)
            if counter.is_alive() or counter.error is not None:
                raise RuntimeError(str(counter.error or "event reader did not end"))
            cpu = proc_cpu(daemon.proc.pid) - cpu0
            stats = ctl.result("stats")
        wall = counter.end - t0
        note = "%d conns opened, %d reuses" % (stats["connections_opened_total"],
                                                stats["connection_reuses_total"])
        if stats.get("tls_handshakes_total"):
            note += ", %d TLS handshakes (%d resumed)" % (stats["tls_handshakes_total"],
                                                          stats["tls_resumptions_total"])
        if counter.first_created is not None and counter.last_finished is not None:
            note += "; daemon-side span %.2f s" % (counter.last_finished - counter.first_created)
        if counter.failures:
            note += "; failures %s" % counter.failures
        if len(ids) != n:
            note += "; %d ids for %d jobs" % (len(ids), n)
        return Result("fetchd", n, counter.done, wall, counter.bytes, cpu, note)
    finally:
        if daemon.stop() != 0:
            print("note: fetchd exited with %r%s" % (daemon.returncode, daemon.log_tail(1500)))
        remove_tree(daemon.dir)


# curl -----------------------------------------------------------------------

def run_curl(url, n, conc, args, cafile=None, proxy=None):
    work = tmpdir("bench-curl-")
    try:
        config = os.path.join(work, "urls.conf")
        with open(config, "w") as f:
            entry = 'url = "%s"\noutput = "/dev/null"\n' % url
            f.write(entry * n)
        cmd = ["curl", "--silent", "--show-error", "--parallel", "--parallel-max", str(conc),
               "--write-out", "%{http_code} %{size_download}\\n", "--config", config]
        if cafile:
            cmd += ["--cacert", cafile]
        if proxy:
            cmd += ["--proxy", proxy]
        out, err, rc, wall, cpu = run_child(cmd, args.timeout)
    finally:
        remove_tree(work)
    ok = nbytes = 0
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "200":
            ok += 1
            nbytes += int(parts[1])
    note = "" if rc == 0 else "exit %d: %s" % (rc, err.strip()[-200:])
    return Result("curl", n, ok, wall, nbytes, cpu, note)


# undici ---------------------------------------------------------------------

def undici_missing():
    """Why undici cannot run, or None when it can."""
    if shutil.which("node") is None:
        return "node is not installed (deploy/install-deps.sh installs nodejs and npm)"
    if not os.path.isdir(UNDICI_MODULE):
        return "undici is not installed: run `%s` (needs the npm registry)" % UNDICI_INSTALL
    return None


def run_undici(url, n, conc, args, cafile=None):
    cmd = ["node", UNDICI_SCRIPT, "--url", url, "--requests", str(n),
           "--connections", str(conc)]
    if cafile:
        cmd += ["--ca", cafile]
    out, err, rc, _, cpu = run_child(cmd, args.timeout, cwd=HERE)
    if rc != 0:
        return Result("undici", n, error="exit %d: %s" % (rc, err.strip()[-300:]))
    doc = json.loads(out.strip().splitlines()[-1])
    note = ""
    if doc["failed"]:
        note = "failed %d (statuses %s, errors %s)" % (doc["failed"], doc["statuses"],
                                                       doc["errors"])
    return Result("undici", n, doc["ok"], doc["seconds"], doc["bytes"], cpu, note)


# wrk ------------------------------------------------------------------------

def run_wrk(url, conc, args):
    threads = min(2, conc)
    cmd = ["wrk", "-c", str(conc), "-t", str(threads), "-d", "%ds" % args.wrk_seconds, url]
    out, err, rc, _, cpu = run_child(cmd, args.timeout)
    if rc != 0:
        return Result("wrk", error="exit %d: %s" % (rc, (err or out).strip()[-300:]))
    requests = seconds = None
    bad = ""
    for line in out.splitlines():
        words = line.split()
        # "  123456 requests in 5.00s, 28.37MB read"
        if len(words) >= 4 and words[1] == "requests" and words[2] == "in":
            requests = int(words[0])
            seconds = float(words[3].rstrip(",s"))
        elif line.strip().startswith(("Non-2xx", "Socket errors")):
            bad += line.strip() + " "
    if requests is None:
        return Result("wrk", error="could not parse wrk's output:\n" + out[-500:])
    # wrk counts non-2xx answers as requests too; they are reported, not
    # subtracted, since this workload has none unless something is wrong.
    note = "duration-based (-d %ds -t %d)" % (args.wrk_seconds, threads)
    if bad:
        note += "; " + bad.strip()
    return Result("wrk", requests, requests, seconds, 0, cpu, note)


# running and printing -------------------------------------------------------

def attempt(tool, fn):
    try:
        return fn()
    except Exception as exc:  # a tool that fails is reported, the others still run
        return Result(tool, error="%s: %s" % (type(exc).__name__, exc))


def measure(tool, fn, repeat):
    """Runs fn `repeat` times; returns the run with the median requests/s.

    Loopback figures on a small machine vary from run to run (the client,
    nginx and the kernel share the CPUs), so one run is a poor sample. The
    first failed run is returned as it is.
    """
    runs = []
    for _ in range(repeat):
        r = attempt(tool, fn)
        if r.error is not None:
            return r
        runs.append(r)
    runs.sort(key=lambda r: r.rps)
    median = runs[len(runs) // 2]
    if repeat > 1:
        spread = "median of %d runs (req/s %.0f..%.0f)" % (repeat, runs[0].rps, runs[-1].rps)
        median.note = spread + ("; " + median.note if median.note else "")
    return median


def run_workload(name, url, n, conc, args, cafile=None, proxy=None):
    extra = {"ca_file": cafile} if cafile else {}
    if proxy:
        extra["proxy"] = proxy
    results = []
    skip = args.skip
    rep = args.repeat
    if "fetchd" not in skip:
        results.append(measure("fetchd", lambda: run_fetchd(url, n, conc, args, extra), rep))
    if "curl" not in skip:
        results.append(measure("curl", lambda: run_curl(url, n, conc, args, cafile, proxy),
                               rep))
    if proxy:
        return results  # undici and wrk are not pointed at proxies here
    if "undici" not in skip:
        why = undici_missing()
        if why:
            results.append(Result("undici", error="skipped: " + why))
        else:
            results.append(measure("undici", lambda: run_undici(url, n, conc, args, cafile),
                                   rep))
    if "wrk" not in skip and name != "large":
        results.append(measure("wrk", lambda: run_wrk(url, conc, args), rep))
    return results


def print_table(title, results, show_mib):
    print()
    print(title)
    base = next((r for r in results if r.tool == "fetchd" and r.error is None and r.rps > 0),
                None)
    head = "  %-7s %9s %9s %8s %10s" % ("tool", "requests", "ok", "wall s", "req/s")
    if show_mib:
        head += " %8s" % "MiB/s"
    head += " %7s %10s" % ("CPU s", "vs fetchd")
    print(head)
    for r in results:
        if r.error is not None:
            print("  %-7s %s" % (r.tool, r.error))
            continue
        line = "  %-7s %9d %9d %8.2f %10.0f" % (r.tool, r.requests, r.ok, r.seconds, r.rps)
        if show_mib:
            line += " %8.1f" % r.mibps
        line += " %7s" % ("%.2f" % r.cpu if r.cpu is not None else "-")
        line += " %10s" % ("%.2fx" % (r.rps / base.rps) if base else "-")
        print(line)
    for r in results:
        if r.error is None and r.note:
            print("    %s: %s" % (r.tool, r.note))
    if base:
        ratios = ["%s/fetchd = %.2fx" % (r.tool, r.rps / base.rps) for r in results
                  if r.tool != "fetchd" and r.error is None and r.rps > 0]
        if ratios:
            print("  ratios (req/s): " + ", ".join(ratios))
    sys.stdout.flush()


def build_type(bin_dir):
    try:
        with open(os.path.join(os.path.dirname(bin_dir), "CMakeCache.txt")) as f:
            for line in f:
                if line.startswith("CMAKE_BUILD_TYPE:"):
                    return line.split("=", 1)[1].strip() or "(none)"
    except OSError:
        pass
    return "unknown"


def tool_versions():
    """Short version strings of the tools, e.g. "curl 7.88.1"."""
    out = []
    for cmd, pick in ((["curl", "--version"], lambda w: " ".join(w[:2])),
                      (["node", "--version"], lambda w: "node " + w[0]),
                      (["wrk", "--version"], lambda w: " ".join(w[:2])),
                      (["/usr/sbin/nginx", "-v"], lambda w: w[-1].replace("/", " "))):
        if shutil.which(cmd[0]) is None:
            continue
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
        lines = proc.stdout.decode(errors="replace").strip().splitlines()
        words = lines[0].split() if lines else []
        out.append(pick(words) if words else cmd[0])
    try:
        with open(os.path.join(UNDICI_MODULE, "package.json")) as f:
            out.append("undici " + json.load(f)["version"])
    except (OSError, ValueError, KeyError):
        pass
    return out


def csv(text, allowed):
    items = [x for x in text.split(",") if x]
    bad = [x for x in items if x not in allowed]
    if bad:
        raise argparse.ArgumentTypeError("unknown: %s (choose from %s)"
                                         % (", ".join(bad), ", ".join(allowed)))
    return items


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20000, help="small GETs per tool")
    ap.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    ap.add_argument("--large-requests", type=int, default=200, help="GETs of /4m.bin per tool")
    ap.add_argument("--wrk-seconds", type=int, default=5, help="wrk's run time")
    ap.add_argument("--batch", type=int, default=1000, help="fetchd jobs per submit call")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per tool and workload; the median is shown")
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="limit for any one tool's run, seconds")
    ap.add_argument("--skip", action="append", default=[],
                    type=lambda s: csv(s, TOOLS), help="tools to leave out, e.g. undici,wrk")
    ap.add_argument("--workloads", default=["small", "large", "https"],
                    type=lambda s: csv(s, WORKLOADS),
                    help="which workloads (default: small,large,https)")
    ap.add_argument("--bin-dir", default=ctltest.BIN_DIR,
                    help="where fetchd is (default: $FETCHD_BIN_DIR or build/bin)")
    args = ap.parse_args()
    args.skip = {tool for group in args.skip for tool in group}
    for name in ("requests", "concurrency", "large_requests", "wrk_seconds", "batch",
                 "repeat"):
        if getattr(args, name) < 1:
            ap.error("--%s must be at least 1" % name.replace("_", "-"))
    return args


def print_header(args):
    for tool in ("curl", "wrk"):
        if tool not in args.skip and shutil.which(tool) is None:
            print("note: %s is not installed (deploy/install-deps.sh); skipping it" % tool)
            args.skip.add(tool)
    if "undici" not in args.skip and undici_missing():
        print("note: undici skipped: %s" % undici_missing())
    kind = build_type(os.path.abspath(args.bin_dir))
    print("fetchd: %s (build type %s)%s" % (ctltest.FETCHD, kind,
          "  -- a Debug build is not what to quote" if kind == "Debug" else ""))
    print("tools: " + "; ".join(tool_versions()))
    load = os.getloadavg()[0]
    print("host: %d CPUs, load average %.2f; nginx: 1 worker; loopback%s"
          % (os.cpu_count(), load, "  -- the machine is busy, figures will be noisy"
             if load > BUSY_LOAD else ""))


def main():
    args = parse_args()
    ctltest.FETCHD = os.path.join(os.path.abspath(args.bin_dir), "fetchd")
    print_header(args)
    n, c = args.requests, args.concurrency
    if "small" in args.workloads:
        with Nginx() as nginx:
            url = nginx.url("/small.txt")
            results = run_workload("small", url, n, c, args)
            print_table("small GETs over http: %d x %s, concurrency %d" % (n, url, c),
                        results, show_mib=False)
    if "large" in args.workloads:
        with Nginx() as nginx:
            url = nginx.url("/4m.bin")
            results = run_workload("large", url, args.large_requests, c, args)
            print_table("large GETs over http: %d x %s (4 MiB), concurrency %d"
                        % (args.large_requests, url, c), results, show_mib=True)
    if "https" in args.workloads:
        cafile = certs().ca
        with TlsNginx() as nginx:
            url = nginx.url("/small.txt", host="127.0.0.1")
            results = run_workload("https", url, n, c, args, cafile)
            print_table("small GETs over https: %d x %s, concurrency %d (test CA)"
                        % (n, url, c), results, show_mib=False)
    if "proxy" in args.workloads or "proxy-https" in args.workloads:
        run_proxy_workloads(args, n, c)


def run_proxy_workloads(args, n, c):
    """The proxy workloads: one tinyproxy (test_proxy.py's) for both."""
    from test_proxy import Tinyproxy  # noqa: E402 (tinyproxy is needed only here)

    proxy = Tinyproxy(max_clients=4 * c).start()
    try:
        if "proxy" in args.workloads:
            with Nginx() as nginx:
                url = nginx.url("/small.txt")
                results = run_workload("proxy", url, n, c, args, proxy=proxy.url())
                print_table("small GETs through tinyproxy %s: %d x %s, concurrency %d"
                            % (proxy.url(), n, url, c), results, show_mib=False)
        if "proxy-https" in args.workloads:
            with TlsNginx() as nginx:
                url = nginx.url("/small.txt", host="127.0.0.1")
                results = run_workload("proxy-https", url, n, c, args, certs().ca,
                                       proxy=proxy.url())
                print_table("small GETs over https through tinyproxy (CONNECT): %d x %s, "
                            "concurrency %d" % (n, url, c), results, show_mib=False)
    finally:
        proxy.stop()


if __name__ == "__main__":
    main()
