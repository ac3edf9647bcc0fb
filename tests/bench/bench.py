#!/usr/bin/env python3
"""Puts fetchd beside curl, undici and wrk against the same nginx on loopback,
runs issue 15's workloads W1-W7 by name and prints, per workload, each
contender's throughput and fetchd's ratio to each peer next to the issue's
target (met or missed).

    python3 tests/bench/bench.py [--workloads w1,w2,...] [--repeat 3]
        [--requests 100000] [--concurrency 64] [--skip undici,wrk]
        [--callgrind] [--syscalls] [--plot ratios.png] [--json results.json] [--quick]
        [--bin-dir DIR]

Workloads (each bounded by a count and by --timeout):
  w1  --requests GETs of /1k.bin (1 KiB), --concurrency keep-alive connections
  w2  w1 over TLS (nginx with a certificate the openssl CLI made for the
      test CA), and the CPU time one full TLS handshake costs fetchd
  w3  --large-count GETs of a --large-mib MiB file, all at once, over http
      and over https (MiB/s)
  w4  --sequential-requests GETs of /1k.bin over one connection, one after
      another (fetchd --max-connections 1, curl without --parallel, undici
      with one connection, wrk -c1 -t1)
  w5  --origins origins (one nginx listening on 127.1.x.y, one address per
      origin), --per-origin GETs of /1k.bin each, round-robin, --concurrency
      at once
  w6  jobs accepted through the control socket per second: --submit-jobs
      jobs in batches of --batch to a server that accepts and never
      answers, with --max-running 1, so that nothing but the submits costs
  w7  resident memory per idle pooled connection, plain and TLS
      (--idle-connections of them)
  proxy, proxy-https  the w1 workload through a tinyproxy on loopback
      (fetchd and curl -x only)

Every repetition runs every contender once, round-robin (the starting one
rotates), so that machine noise hits them alike; each contender's median
run is shown. Ratios are fetchd's throughput over the peer's (above 1.00x:
fetchd was faster).

--callgrind adds the per-fetch costs that do not move with the machine's
noise: valgrind's instruction count for fetchd and curl --parallel (the
marginal cost between two run lengths, so start-up cancels) and the heap
allocations per fetch (malloc-family calls counted by callgrind; fetchd's own
cumulative counter is read in W1 when it has one). --syscalls adds syscalls
per fetch under strace -f -c (marginal likewise).

It is a measurement, not a test: it asserts nothing about speed. Loopback
only; every process it starts is stopped. Quote figures from an optimised
build (Release or RelWithDebInfo), not Debug.
"""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import callgrind_fetch  # noqa: E402
import ctltest  # noqa: E402
from fetchtest import Nginx, remove_tree, tmpdir  # noqa: E402
from tlsutil import certs  # noqa: E402

TOOLS = ("fetchd", "curl", "undici", "wrk")
WORKLOADS = ("w1", "w2", "w3", "w4", "w5", "w6", "w7", "proxy", "proxy-https")
DEFAULT_WORKLOADS = ("w1", "w2", "w3", "w4", "w5", "w6", "w7")
UNDICI_SCRIPT = os.path.join(HERE, "undici_bench.mjs")
UNDICI_MODULE = os.path.join(HERE, "node_modules", "undici")
UNDICI_INSTALL = "cd tests/bench && npm install"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1024.0 * 1024.0
# A one-minute load average above this at the start means other work shares
# the CPUs with the run (the benchmark itself runs several busy processes).
BUSY_LOAD = 0.5

# Issue 15's targets. Ratios are fetchd's throughput over the peer's.
RATIO_TARGETS = {
    "w1": {"curl": 3.0, "undici": 2.0, "wrk": 0.6},
    "w2": {"curl": 2.0, "undici": 1.5},
    "w3": {"curl": 1.0},
    "w3-tls": {"curl": 1.0},
    "w4": {"wrk": 0.8},
    "w5": {"curl": 2.0},
}
HANDSHAKE_MS_TARGET = 2.0
SUBMIT_RATE_TARGET = 500000.0
IDLE_PLAIN_BYTES_TARGET = 4096.0
IR_TARGET = 30000.0
IR_CURL_RATIO_TARGET = 6.0
SYSCALLS_TARGET = 2.2
ALLOCS_TARGET = 2.0

# --quick: a smoke run of seconds (every workload, tiny sizes, one repetition).
QUICK = {"requests": 500, "large_count": 2, "large_mib": 8, "sequential_requests": 200,
         "origins": 20, "per_origin": 2, "submit_jobs": 2000, "idle_connections": 20,
         "handshakes": 8, "wrk_seconds": 1, "repeat": 1, "cg_small": 50, "cg_large": 150,
         "strace_small": 100, "strace_large": 300}


class Result:
    """One contender's run of one workload; `error` set when it could not run."""

    def __init__(self, tool, requests=0, ok=0, seconds=0.0, nbytes=0, cpu=None,
                 note="", error=None, extra=None):
        self.tool = tool
        self.requests = requests
        self.ok = ok
        self.seconds = seconds
        self.bytes = nbytes
        self.cpu = cpu
        self.note = note
        self.error = error
        self.extra = extra or {}

    @property
    def rps(self):
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    @property
    def mibps(self):
        return self.bytes / MIB / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self):
        d = {"tool": self.tool}
        if self.error is not None:
            d["error"] = self.error
            return d
        d.update(requests=self.requests, ok=self.ok, seconds=round(self.seconds, 4),
                 bytes=self.bytes, rps=round(self.rps, 1), mibps=round(self.mibps, 2),
                 cpu=self.cpu, note=self.note)
        d.update(self.extra)
        return d


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


def proc_rss(pid):
    """Resident bytes of a running process, from /proc/PID/statm."""
    with open("/proc/%d/statm" % pid) as f:
        return int(f.read().split()[1]) * PAGE


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


# nginx ----------------------------------------------------------------------

class BenchNginx(Nginx):
    """The integration tests' nginx (one worker, keep-alive unlimited, access
    log off), with room for thousands of connections, optionally TLS (the
    test CA's `valid` certificate, made with the openssl CLI), optionally a
    large file (sparse, in nginx's temp tree, never in the repository) and
    extra listening addresses on the same port (one origin each)."""

    def __init__(self, tls=False, large_mib=0, addresses=(), resumption=True):
        super().__init__()
        self.tls = tls
        self.large_mib = large_mib
        self.addresses = list(addresses)
        self.resumption = resumption

    def url(self, path, host="127.0.0.1"):
        return "%s://%s:%d%s" % ("https" if self.tls else "http", host, self.port, path)

    def origin_urls(self, path):
        return [self.url(path, host=a) for a in self.addresses]

    def _http_prologue(self):
        text = super()._http_prologue()
        text = text.replace("events { worker_connections 1024; }",
                            "worker_rlimit_nofile 16384;\n"
                            "events { worker_connections 8192; }")
        return text

    def _config(self):
        listens = ["127.0.0.1:%d" % self.port]
        listens += ["%s:%d" % (a, self.port) for a in self.addresses]
        ssl = ""
        suffix = " ssl" if self.tls else ""
        if self.tls:
            pair = certs().valid
            ssl = ("ssl_certificate %s;\n        ssl_certificate_key %s;\n"
                   "        ssl_protocols TLSv1.2 TLSv1.3;\n" % (pair.cert, pair.key))
            if self.resumption:
                ssl += ("        ssl_session_cache shared:SSL:1m;\n"
                        "        ssl_session_tickets on;\n")
            else:
                ssl += "        ssl_session_cache off;\n        ssl_session_tickets off;\n"
        return self._http_prologue() + """    server {
        %(listen)s
        server_name localhost;
        root %(p)s/html;
        %(ssl)s
    }
}
""" % {"listen": "\n        ".join("listen %s%s;" % (a, suffix) for a in listens),
       "p": self.prefix, "ssl": ssl}

    def _write_tree(self):
        conf = super()._write_tree()
        if self.large_mib:
            # A sparse file: nginx reads zeros from the page cache, and the
            # temp tree holds no 100 MiB of real data.
            with open(os.path.join(self.prefix, "html", "large.bin"), "wb") as f:
                f.truncate(self.large_mib * 1024 * 1024)
        return conf


# fetchd ---------------------------------------------------------------------

class FinishedCounter(threading.Thread):
    """Reads a subscribed control connection until `want` finished events came.

    A thread of its own, so that fetchd's events are drained while the main
    thread is still submitting (fetchd disconnects a client that lets 8 MiB
    of output pile up). While the clock runs it only keeps the bytes and
    counts the finished events in them; the events are parsed and checked
    once the last has come, as curl's per-transfer output is read only after
    curl has exited (parsing 100,000 events with python's json costs about
    1 s of CPU, which would be taken from fetchd's two cores).
    """

    MARKER = b'"event":"finished"'  # a string's quotes are escaped, so only the member matches

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
            chunks = [bytes(self.client.buf)]
            self.client.buf.clear()
            marked = chunks[0].count(self.MARKER)
            tail = chunks[0][-(len(self.MARKER) - 1):]
            # Every event is read whole: the last one's marker comes before
            # its job object.
            while marked < self.want or not chunks[-1].endswith(b"\n"):
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("%d of %d jobs finished before the time limit"
                                       % (marked, self.want))
                self.client.sock.settimeout(left)
                data = self.client.sock.recv(1 << 20)
                if not data:
                    raise EOFError("fetchd closed the event connection")
                if marked < self.want:
                    marked += (tail + data).count(self.MARKER)
                    tail = (tail + data)[-(len(self.MARKER) - 1):]
                    if marked >= self.want:
                        self.end = time.monotonic()
                chunks.append(data)
            if self.end is None:
                self.end = time.monotonic()
            self.client.sock.settimeout(self.client.timeout)
            for line in b"".join(chunks).split(b"\n"):
                if line.strip():
                    self.count(json.loads(line))
            if self.seen != marked:
                raise RuntimeError("%d finished events counted while reading, %d parsed"
                                   % (marked, self.seen))
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


def encode_submits(specs, batch, first_id):
    """The submit requests as bytes, one JSON-RPC line per batch, encoded
    before the clock starts so that python's JSON work is not timed."""
    lines = []
    rids = []
    for k, i in enumerate(range(0, len(specs), batch)):
        rid = first_id + k
        rids.append(rid)
        lines.append(json.dumps({"jsonrpc": "2.0", "id": rid, "method": "submit",
                                 "params": {"jobs": specs[i:i + batch]}},
                                separators=(",", ":")) + "\n")
    return "".join(lines).encode(), rids


def collect_ids(client, rids):
    ids = []
    for rid in rids:
        resp = client.response(rid)
        if "error" in resp:
            raise RuntimeError("submit failed: %r" % resp["error"])
        ids += resp["result"]["ids"]
    return ids


def alloc_counter(stats):
    """fetchd's cumulative heap allocation count from a stats answer, or None
    when it has none (issue 15 asks for fetchd_heap_allocations_total): the
    sum of every numeric field named *allocations_total."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if "allocations_total" in k and isinstance(v, (int, float)):
                    found.append(v)
                elif "allocations_total" in k and isinstance(v, dict):
                    found.extend(x for x in v.values() if isinstance(x, (int, float)))
                else:
                    walk(v)

    walk(stats)
    return sum(found) if found else None


def start_fetchd(args, daemon_args):
    cmd = list(daemon_args) + ["--metrics", "off"] + list(args.fetchd_arg)
    daemon = ctltest.Fetchd(cmd, download_dir=False, metrics=None)
    daemon.wait_ready()
    return daemon


def stop_fetchd(daemon):
    if daemon.stop() != 0:
        print("note: fetchd exited with %r%s" % (daemon.returncode, daemon.log_tail(1500)))
    remove_tree(daemon.dir)


def run_fetchd(urls, n, conc, args, extra_spec=None):
    """A fresh daemon fetches n URLs (round-robin over urls), conc connections."""
    daemon = start_fetchd(args, ["--max-connections", conc, "--max-per-host", conc,
                                 "--max-jobs", max(n, 100000)])
    try:
        specs = [dict(url=urls[i % len(urls)], **(extra_spec or {})) for i in range(n)]
        with daemon.client(args.timeout) as sub, daemon.client(args.timeout) as ctl:
            sub.result("subscribe", {"events": ["finished"]})
            stats0 = ctl.result("stats")
            data, rids = encode_submits(specs, args.batch, 1000)
            counter = FinishedCounter(sub, n, time.monotonic() + args.timeout)
            cpu0 = proc_cpu(daemon.proc.pid)
            t0 = time.monotonic()
            counter.start()
            ctl.send_raw(data)
            ids = collect_ids(ctl, rids)
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
        extra = {}
        a0, a1 = alloc_counter(stats0), alloc_counter(stats)
        if a0 is not None and a1 is not None:
            extra["allocs_per_fetch"] = (a1 - a0) / n
        return Result("fetchd", n, counter.done, wall, counter.bytes, cpu, note, extra=extra)
    finally:
        stop_fetchd(daemon)


# curl -----------------------------------------------------------------------

def run_curl(urls, n, conc, args, cafile=None, proxy=None):
    """One curl process, n transfers from a --config file; conc=None runs
    them one after another (curl reuses its one connection)."""
    work = tmpdir("bench-curl-")
    try:
        config = os.path.join(work, "urls.conf")
        with open(config, "w") as f:
            for i in range(n):
                f.write('url = "%s"\noutput = "/dev/null"\n' % urls[i % len(urls)])
        if conc is None:
            cmd = ["curl", "--silent", "--show-error",
                   "--write-out", "%{http_code} %{size_download}\\n", "--config", config]
        else:
            cmd = callgrind_fetch.curl_command(config, conc)
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


def run_undici(urls, n, conc, args, cafile=None):
    work = None
    cmd = ["node", UNDICI_SCRIPT, "--requests", str(n), "--connections", str(conc)]
    if len(urls) == 1:
        cmd += ["--url", urls[0]]
    else:
        work = tmpdir("bench-undici-")
        path = os.path.join(work, "urls.txt")
        with open(path, "w") as f:
            f.write("\n".join(urls) + "\n")
        cmd += ["--url-file", path]
    if cafile:
        cmd += ["--ca", cafile]
    try:
        out, err, rc, _, cpu = run_child(cmd, args.timeout, cwd=HERE)
    finally:
        if work:
            remove_tree(work)
    if rc != 0:
        return Result("undici", n, error="exit %d: %s" % (rc, err.strip()[-300:]))
    doc = json.loads(out.strip().splitlines()[-1])
    note = ""
    if doc["failed"]:
        note = "failed %d (statuses %s, errors %s)" % (doc["failed"], doc["statuses"],
                                                       doc["errors"])
    return Result("undici", n, doc["ok"], doc["seconds"], doc["bytes"], cpu, note)


# wrk ------------------------------------------------------------------------

WRK_UNITS = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}


def run_wrk(url, conc, args, threads=2):
    threads = min(threads, conc)
    # wrk's default 2 s response timeout cuts W3's 100 MiB bodies short.
    cmd = ["wrk", "-c", str(conc), "-t", str(threads), "-d", "%ds" % args.wrk_seconds,
           "--timeout", "%ds" % max(30, 2 * args.wrk_seconds), url]
    out, err, rc, _, cpu = run_child(cmd, args.timeout)
    if rc != 0:
        return Result("wrk", error="exit %d: %s" % (rc, (err or out).strip()[-300:]))
    requests = seconds = None
    nbytes = 0
    bad = ""
    for line in out.splitlines():
        # "  123456 requests in 5.00s, 28.37MB read"
        m = re.match(r"^\s*(\d+) requests in ([\d.]+)(\w+), ([\d.]+)([KMGT]?B) read", line)
        if m:
            requests = int(m.group(1))
            seconds = float(m.group(2)) * {"ms": 0.001, "s": 1, "m": 60}.get(m.group(3), 1)
            nbytes = int(float(m.group(4)) * WRK_UNITS[m.group(5)])
        elif line.strip().startswith(("Non-2xx", "Socket errors")):
            bad += line.strip() + " "
    if requests is None:
        return Result("wrk", error="could not parse wrk's output:\n" + out[-500:])
    # wrk counts non-2xx answers as requests too; they are reported, not
    # subtracted, since these workloads have none unless something is wrong.
    # Its byte count includes the response heads.
    note = "duration-based (-d %ds -c %d -t %d)" % (args.wrk_seconds, conc, threads)
    if bad:
        note += "; " + bad.strip()
    return Result("wrk", requests, requests, seconds, nbytes, cpu, note)


# the contest ----------------------------------------------------------------

def attempt(tool, fn):
    try:
        return fn()
    except Exception as exc:  # a tool that fails is reported, the others still run
        return Result(tool, error="%s: %s" % (type(exc).__name__, exc))


def contest(runners, repeat, metric):
    """Runs every (tool, fn) of runners once per repetition, round-robin, the
    first one rotating; returns each tool's median run by `metric` ("rps" or
    "mibps"), or its first failed run."""
    runs = {tool: [] for tool, _ in runners}
    failed = {}
    for rep in range(repeat):
        k = rep % len(runners)
        for tool, fn in runners[k:] + runners[:k]:
            if tool in failed:
                continue
            r = attempt(tool, fn)
            if r.error is not None:
                failed[tool] = r
            else:
                runs[tool].append(r)
    results = []
    for tool, _ in runners:
        if tool in failed:
            results.append(failed[tool])
            continue
        rs = sorted(runs[tool], key=lambda r: getattr(r, metric))
        median = rs[len(rs) // 2]
        if repeat > 1:
            unit = "req/s" if metric == "rps" else "MiB/s"
            spread = "median of %d runs (%s %.0f..%.0f)" % (
                repeat, unit, getattr(rs[0], metric), getattr(rs[-1], metric))
            median.note = spread + ("; " + median.note if median.note else "")
        results.append(median)
    return results


class Report:
    """Everything measured, for the summary, --json and --plot."""

    def __init__(self):
        self.tables = {}  # workload key -> {"title", "metric", "results"}
        self.ratios = []  # (workload key, peer, ratio, target or None)
        self.figures = []  # (name, value, unit, target text, met or None)
        self.notes = []

    def add_table(self, key, title, metric, results):
        self.tables[key] = {"title": title, "metric": metric, "results": results}
        base = find(results, "fetchd")
        targets = RATIO_TARGETS.get(key, {})
        for r in results:
            if r.tool == "fetchd" or r.error is not None or base is None:
                continue
            peer = getattr(r, metric)
            if peer > 0:
                self.ratios.append((key, r.tool, getattr(base, metric) / peer,
                                    targets.get(r.tool)))
        for peer, target in targets.items():
            if not any(k == key and p == peer for k, p, _, _ in self.ratios):
                self.ratios.append((key, peer, None, target))

    def figure(self, name, value, unit, target=None, met=None):
        self.figures.append((name, value, unit, target, met))


def find(results, tool):
    return next((r for r in results if r.tool == tool and r.error is None
                 and (r.rps > 0 or r.mibps > 0)), None)


def verdict(ratio, target):
    if target is None:
        return ""
    if ratio is None:
        return "(target >= %.2fx: not measured)" % target
    return "(target >= %.2fx: %s)" % (target, "met" if ratio >= target else "missed")


def print_table(report, key):
    t = report.tables[key]
    results, metric = t["results"], t["metric"]
    mib = metric == "mibps"
    print()
    print(t["title"])
    head = "  %-7s %9s %9s %8s %10s" % ("tool", "requests", "ok", "wall s", "req/s")
    if mib:
        head += " %9s" % "MiB/s"
    head += " %7s" % "CPU s"
    print(head)
    for r in results:
        if r.error is not None:
            print("  %-7s %s" % (r.tool, r.error))
            continue
        line = "  %-7s %9d %9d %8.2f %10.0f" % (r.tool, r.requests, r.ok, r.seconds, r.rps)
        if mib:
            line += " %9.1f" % r.mibps
        line += " %7s" % ("%.2f" % r.cpu if r.cpu is not None else "-")
        print(line)
    for r in results:
        if r.error is None and r.note:
            print("    %s: %s" % (r.tool, r.note))
    for k, peer, ratio, target in report.ratios:
        if k != key:
            continue
        shown = "%.2fx" % ratio if ratio is not None else "-"
        print("  fetchd/%-6s = %-7s %s" % (peer, shown, verdict(ratio, target)))
    sys.stdout.flush()


def workload_runners(args, urls, n, conc, cafile=None, proxy=None, wrk=True,
                     sequential=False):
    extra = {"ca_file": cafile} if cafile else {}
    if proxy:
        extra["proxy"] = proxy
    runners = []
    if "fetchd" not in args.skip:
        runners.append(("fetchd", lambda: run_fetchd(urls, n, conc, args, extra)))
    if "curl" not in args.skip:
        curl_conc = None if sequential else conc
        if shutil.which("curl") is None:
            runners.append(("curl", lambda: Result("curl", error="missing: curl is not "
                                                   "installed (deploy/install-deps.sh)")))
        else:
            runners.append(("curl", lambda: run_curl(urls, n, curl_conc, args, cafile, proxy)))
    if proxy:
        return runners  # undici and wrk are not pointed at proxies here
    if "undici" not in args.skip:
        why = undici_missing()
        if why:
            runners.append(("undici", lambda: Result("undici", error="missing: " + why)))
        else:
            runners.append(("undici", lambda: run_undici(urls, n, conc, args, cafile)))
    if "wrk" not in args.skip and wrk and len(urls) == 1:
        threads = 1 if sequential else 2
        if shutil.which("wrk") is None:
            runners.append(("wrk", lambda: Result("wrk", error="missing: wrk is not installed "
                                                  "(deploy/install-deps.sh)")))
        else:
            runners.append(("wrk", lambda: run_wrk(urls[0], conc, args, threads)))
    return runners


def run_table(report, key, title, runners, args, metric="rps"):
    report.add_table(key, title, metric, contest(runners, args.repeat, metric))
    print_table(report, key)


# W1-W5 ----------------------------------------------------------------------

def w1(report, args):
    n, c = args.requests, args.concurrency
    with BenchNginx() as nginx:
        url = nginx.url("/1k.bin")
        run_table(report, "w1", "W1: %d x %s (1 KiB), %d connections" % (n, url, c),
                  workload_runners(args, [url], n, c), args)
        res = find(report.tables["w1"]["results"], "fetchd")
        if res is not None and "allocs_per_fetch" in res.extra:
            per = res.extra["allocs_per_fetch"]
            report.figure("heap allocations per fetch (fetchd counter, W1)", per, "",
                          "<= %.0f" % ALLOCS_TARGET, per <= ALLOCS_TARGET)
            print("  heap allocations per fetch (fetchd's own counter): %.2f" % per)
        elif res is not None:
            print("  heap allocations per fetch: fetchd has no cumulative allocation counter "
                  "(fetchd_heap_allocations_total) yet; --callgrind counts malloc calls")


def w2(report, args):
    n, c = args.requests, args.concurrency
    cafile = certs().ca
    with BenchNginx(tls=True) as nginx:
        url = nginx.url("/1k.bin")
        run_table(report, "w2", "W2: %d x %s (1 KiB, TLS, test CA), %d connections"
                  % (n, url, c), workload_runners(args, [url], n, c, cafile), args)
    if "fetchd" not in args.skip:
        handshake_cost(report, args, cafile)


def handshake_cost(report, args, cafile):
    """fetchd's CPU time for one full TLS handshake: K jobs at once, each on a
    new connection, against nginx with session resumption off, minus the same
    K jobs over plain http; divided by K. Median of --repeat pairs."""
    k = args.handshakes
    per = []
    notes = set()
    with BenchNginx(tls=True, resumption=False) as tls, BenchNginx() as plain:
        for _ in range(args.repeat):
            try:
                cpu_tls, st = cpu_of_batch(args, tls.url("/1k.bin"), k, {"ca_file": cafile})
                cpu_plain, _ = cpu_of_batch(args, plain.url("/1k.bin"), k, {})
            except Exception as exc:
                report.figure("full TLS handshake, fetchd CPU", None, "ms",
                              "<= %.1f" % HANDSHAKE_MS_TARGET, None)
                print("  full TLS handshake: could not measure: %s" % exc)
                return
            per.append((cpu_tls - cpu_plain) / k * 1000.0)
            notes.add("%d handshakes, %d resumed, %d connections"
                      % (st["tls_handshakes_total"], st["tls_resumptions_total"],
                         st["connections_opened_total"]))
    ms = statistics.median(per)
    report.figure("full TLS handshake, fetchd CPU", ms, "ms", "<= %.1f" % HANDSHAKE_MS_TARGET,
                  ms <= HANDSHAKE_MS_TARGET)
    print("  full TLS handshake: %.2f ms of fetchd CPU each (target <= %.1f ms: %s); "
          "%d jobs at once, TLS CPU minus plain CPU, median of %d (%s); %s"
          % (ms, HANDSHAKE_MS_TARGET, "met" if ms <= HANDSHAKE_MS_TARGET else "missed", k,
             len(per), ", ".join("%.2f" % x for x in per), "; ".join(sorted(notes))))


def cpu_of_batch(args, url, k, extra, conns=None):
    """A fresh daemon runs k jobs at once (k connections); returns its CPU
    time for them and its stats afterwards."""
    conns = conns or k
    daemon = start_fetchd(args, ["--max-connections", conns, "--max-per-host", conns])
    try:
        with daemon.client(args.timeout) as ctl:
            cpu0 = proc_cpu(daemon.proc.pid)
            ids = ctl.result("submit", {"jobs": [dict(url=url, **extra)] * k})["ids"]
            wait_all(ctl, ids, args.timeout)
            cpu = proc_cpu(daemon.proc.pid) - cpu0
            return cpu, ctl.result("stats")
    finally:
        stop_fetchd(daemon)


def wait_all(ctl, ids, timeout):
    """Waits for every job (one `wait` call each, all sent at once); raises
    unless every one got a 200."""
    deadline = time.monotonic() + timeout
    rids = [ctl.request("wait", {"id": jid}) for jid in ids]
    jobs = []
    for rid in rids:
        resp = ctl.response(rid, timeout=max(0.1, deadline - time.monotonic()))
        if "error" in resp:
            raise RuntimeError("wait failed: %r" % resp["error"])
        jobs.append(resp["result"])
    bad = [j for j in jobs if j.get("state") != "done" or j.get("http_status") != 200]
    if bad:
        raise RuntimeError("%d of %d jobs failed, e.g. %s" % (len(bad), len(jobs), bad[0]))
    return jobs


def w3(report, args):
    n, mib = args.large_count, args.large_mib
    for tls in (False, True):
        key = "w3-tls" if tls else "w3"
        cafile = certs().ca if tls else None
        with BenchNginx(tls=tls, large_mib=mib) as nginx:
            url = nginx.url("/large.bin")
            run_table(report, key, "W3%s: %d x %s (%d MiB), %d at once"
                      % (" over TLS" if tls else "", n, url, mib, n),
                      workload_runners(args, [url], n, n, cafile), args, metric="mibps")


def w4(report, args):
    n = args.sequential_requests
    with BenchNginx() as nginx:
        url = nginx.url("/1k.bin")
        run_table(report, "w4", "W4: %d x %s (1 KiB), one connection, sequential" % (n, url),
                  workload_runners(args, [url], n, 1, sequential=True), args)


def origin_addresses(count):
    """count loopback addresses, 127.1.0.1, 127.1.0.2, ... (Linux routes all
    of 127.0.0.0/8 to lo)."""
    return ["127.1.%d.%d" % (i // 250, i % 250 + 1) for i in range(count)]


def w5(report, args):
    c = args.concurrency
    n = args.origins * args.per_origin
    with BenchNginx(addresses=origin_addresses(args.origins)) as nginx:
        urls = nginx.origin_urls("/1k.bin")
        run_table(report, "w5", "W5: %d origins (%s .. %s), %d GETs of /1k.bin each, "
                  "round-robin, %d connections" % (args.origins, urls[0], urls[-1],
                                                   args.per_origin, c),
                  workload_runners(args, urls, n, c), args)


# W6 -------------------------------------------------------------------------

class SilentServer:
    """A TCP listener on 127.0.0.1 that accepts connections and never answers
    (the kernel's backlog would do too, but accepting keeps it from filling)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def stop(self):
        self.stopping = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5.0)
        for c in self.conns:
            c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


def run_submits(url, m, args):
    """A fresh daemon (--max-running 1) takes m jobs in batches of --batch,
    sent back to back on one connection; returns the time from the first
    byte sent to the last answer read."""
    daemon = start_fetchd(args, ["--max-running", 1, "--max-jobs", m + 10,
                                 "--max-queue-bytes", 1 << 36, "--shutdown-grace", 0])
    try:
        specs = [{"url": url}] * m
        with daemon.client(args.timeout) as ctl:
            data, rids = encode_submits(specs, args.batch, 1000)
            sender = threading.Thread(target=ctl.send_raw, args=(data,), daemon=True)
            cpu0 = proc_cpu(daemon.proc.pid)
            t0 = time.monotonic()
            sender.start()
            ids = collect_ids(ctl, rids)
            wall = time.monotonic() - t0
            cpu = proc_cpu(daemon.proc.pid) - cpu0
            sender.join(args.timeout)
            stats = ctl.result("stats")
        note = "batches of %d; %d queued, %d running afterwards" % (
            args.batch, stats["jobs"]["queued"], stats["jobs"]["running"])
        return Result("fetchd", m, len(ids), wall, 0, cpu, note)
    finally:
        stop_fetchd(daemon)


def w6(report, args):
    if "fetchd" in args.skip:
        return
    m = args.submit_jobs
    with SilentServer() as server:
        url = "http://127.0.0.1:%d/never" % server.port
        results = contest([("fetchd", lambda: run_submits(url, m, args))], args.repeat, "rps")
    report.add_table("w6", "W6: %d jobs submitted through the control socket (%s never "
                     "answers; --max-running 1)" % (m, url), "rps", results)
    print_table(report, "w6")
    r = results[0]
    if r.error is None:
        report.figure("W6 jobs accepted per second", r.rps, "jobs/s",
                      ">= %.0f" % SUBMIT_RATE_TARGET, r.rps >= SUBMIT_RATE_TARGET)
        print("  jobs accepted: %.0f/s (target >= %.0f/s: %s)"
              % (r.rps, SUBMIT_RATE_TARGET, "met" if r.rps >= SUBMIT_RATE_TARGET else "missed"))
    else:
        report.figure("W6 jobs accepted per second", None, "jobs/s",
                      ">= %.0f" % SUBMIT_RATE_TARGET, None)


# W7 -------------------------------------------------------------------------

def idle_memory(args, url, n, conns, extra):
    """A fresh daemon runs n jobs at once over at most conns connections and
    keeps them idle; returns (RSS bytes, fetchd-counted heap bytes, idle
    connections, free buffer bytes) once they are all idle."""
    daemon = start_fetchd(args, ["--max-connections", conns, "--max-per-host", conns,
                                 "--idle-timeout", 3600])
    try:
        with daemon.client(args.timeout) as ctl:
            ids = ctl.result("submit", {"jobs": [dict(url=url, **extra)] * n})["ids"]
            wait_all(ctl, ids, args.timeout)
            deadline = time.monotonic() + 10.0
            while True:
                st = ctl.result("stats")
                c = st["connections"]
                if c["connecting"] == 0 and c["active"] == 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("connections did not turn idle: %r" % c)
                time.sleep(0.05)
            heap = sum(v["bytes"] for v in st["heap"].values())
            return (proc_rss(daemon.proc.pid), heap, c["idle"],
                    st["buffer_bytes"]["free"])
    finally:
        stop_fetchd(daemon)


def w7(report, args):
    if "fetchd" in args.skip:
        return
    n = args.idle_connections
    print()
    print("W7: memory of idle pooled connections: %d jobs at once with --max-connections "
          "%d (all idle afterwards) against --max-connections 1; the difference over the "
          "difference in idle connections" % (n, n))
    cafile = certs().ca
    for tls in (False, True):
        label = "TLS" if tls else "plain"
        # The loop does N handshakes one after another, some 10 ms each: the
        # last would pass the default 10 s connect timeout.
        extra = {"timeouts": {"connect": 3600, "first_byte": 3600}}
        if tls:
            extra["ca_file"] = cafile
        per_rss, per_heap = [], []
        detail = ""
        try:
            with BenchNginx(tls=tls) as nginx:
                url = nginx.url("/1k.bin")
                for _ in range(args.repeat):
                    many = idle_memory(args, url, n, n, extra)
                    one = idle_memory(args, url, n, 1, extra)
                    idle = many[2] - one[2]
                    if idle <= 0:
                        raise RuntimeError("no more idle connections with %d allowed" % n)
                    per_rss.append((many[0] - one[0]) / idle)
                    per_heap.append((many[1] - one[1]) / idle)
                    detail = ("%d idle: RSS %.1f MiB, heap %.1f MiB, free buffers %.1f MiB; "
                              "1 idle: RSS %.1f MiB, heap %.1f MiB"
                              % (many[2], many[0] / MIB, many[1] / MIB, many[3] / MIB,
                                 one[0] / MIB, one[1] / MIB))
        except Exception as exc:
            print("  %s: could not measure: %s" % (label, exc))
            report.figure("W7 RSS per idle connection, %s" % label, None, "bytes",
                          "<= 4096" if not tls else "measured", None)
            continue
        rss, heap = statistics.median(per_rss), statistics.median(per_heap)
        if tls:
            report.figure("W7 RSS per idle connection, TLS", rss, "bytes", "measured", None)
            mark = "(no target: measured)"
        else:
            ok = rss <= IDLE_PLAIN_BYTES_TARGET
            report.figure("W7 RSS per idle connection, plain", rss, "bytes", "<= 4096", ok)
            mark = "(target <= 4 KiB: %s)" % ("met" if ok else "missed")
        report.figure("W7 counted heap per idle connection, %s" % label, heap, "bytes")
        print("  %-5s: %7.0f bytes RSS per idle connection %s; %7.0f bytes of fetchd-counted "
              "heap (mbedTLS's is not counted); median of %d" % (label, rss, mark, heap,
                                                                  len(per_rss)))
        print("         %s" % detail)


# proxies --------------------------------------------------------------------

def proxy_workloads(report, args):
    """The proxy workloads: one tinyproxy (test_proxy.py's) for both."""
    from test_proxy import Tinyproxy  # noqa: E402 (tinyproxy is needed only here)

    n, c = args.requests, args.concurrency
    proxy = Tinyproxy(max_clients=4 * c).start()
    try:
        if "proxy" in args.workloads:
            with BenchNginx() as nginx:
                url = nginx.url("/1k.bin")
                run_table(report, "proxy", "proxy: %d x %s through tinyproxy %s, %d connections"
                          % (n, url, proxy.url(), c),
                          workload_runners(args, [url], n, c, proxy=proxy.url()), args)
        if "proxy-https" in args.workloads:
            with BenchNginx(tls=True) as nginx:
                url = nginx.url("/1k.bin")
                run_table(report, "proxy-https", "proxy-https: %d x %s through tinyproxy %s "
                          "(CONNECT), %d connections" % (n, url, proxy.url(), c),
                          workload_runners(args, [url], n, c, certs().ca, proxy=proxy.url()),
                          args)
    finally:
        proxy.stop()


# per-fetch costs: callgrind, strace -----------------------------------------

def strace_counts(path):
    """{syscall: calls} and the total from an `strace -c` summary file."""
    counts = {}
    with open(path, errors="replace") as f:
        for line in f:
            words = line.split()
            # % time, seconds, usecs/call, calls, [errors,] syscall
            if len(words) >= 5 and re.match(r"^[\d.]+$", words[0]) and words[3].isdigit():
                counts[words[-1]] = int(words[3])
    return counts


def strace_fetchd(bin_dir, url, n, timeout):
    work = tempfile.mkdtemp(prefix="fetchd-strace-")
    try:
        sock = os.path.join(work, "control.sock")
        out = os.path.join(work, "strace.txt")
        jobs = os.path.join(work, "jobs.txt")
        with open(jobs, "w") as f:
            f.write((url + "\n") * n)
        cmd = ["strace", "-f", "-c", "-o", out, os.path.join(bin_dir, "fetchd"),
               "--control", sock, "--metrics", "off",
               "--max-connections", "64", "--max-per-host", "64"]
        with open(os.path.join(work, "fetchd.log"), "wb") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env=callgrind_fetch.clean_env(), start_new_session=True)
        try:
            if not callgrind_fetch.wait_socket(sock, proc, 60.0):
                raise RuntimeError("fetchd under strace did not start")
            r = subprocess.run([os.path.join(bin_dir, "fetchctl"), "-s", sock, "submit", "-i",
                                jobs, "--wait"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               timeout=timeout)
            if r.returncode != 0:
                raise RuntimeError("fetchctl submit exited %d" % r.returncode)
        finally:
            # SIGTERM to fetchd itself (strace's child); strace then writes
            # its summary and exits.
            for child in children_of(proc.pid):
                os.kill(child, signal.SIGTERM)
            try:
                proc.wait(60.0)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10.0)
        return strace_counts(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def children_of(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def strace_curl(url, n, timeout):
    work = tempfile.mkdtemp(prefix="fetchd-strace-curl-")
    try:
        out = os.path.join(work, "strace.txt")
        config = os.path.join(work, "urls.conf")
        with open(config, "w") as f:
            f.write(('url = "%s"\noutput = "/dev/null"\n' % url) * n)
        cmd = ["strace", "-f", "-c", "-o", out] + callgrind_fetch.curl_command(config, 64)
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError("curl under strace exited %d" % r.returncode)
        return strace_counts(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def marginal_syscalls(run, small, large):
    a, b = run(small), run(large)
    per = {k: (b.get(k, 0) - a.get(k, 0)) / (large - small) for k in set(a) | set(b)}
    total = per.pop("total", None)
    if total is None:
        total = sum(per.values())
    return total, per


def per_fetch_costs(report, args):
    bin_dir = os.path.abspath(args.bin_dir)
    print()
    print("Per-fetch costs: 1 KiB keep-alive GETs, 64 connections; fetchd driven by "
          "`fetchctl submit -i FILE --wait`, curl by `curl --parallel --parallel-max 64 "
          "--config FILE`; marginal between two run lengths")
    with Nginx() as nginx:
        url = nginx.url("/1k.bin")
        cg = {}
        if not args.callgrind:
            pass
        elif shutil.which("valgrind") is None:
            print("  callgrind: valgrind is not installed (deploy/install-deps.sh)")
        else:
            for tool in ("fetchd", "curl"):
                if tool in args.skip:
                    continue
                if tool == "fetchd":
                    def fn(n):
                        return callgrind_fetch.one_run(bin_dir, url, n, args.timeout)
                else:
                    def fn(n):
                        return callgrind_fetch.curl_run(url, n, args.timeout)
                try:
                    cg[tool] = callgrind_fetch.marginal(fn, args.cg_small, args.cg_large, 1)
                except Exception as exc:
                    print("  callgrind %s: could not measure: %s" % (tool, exc))
                    continue
                print("  callgrind %-6s: %8.0f instructions per fetch, %6.2f heap allocations "
                      "per fetch (malloc-family calls; %d and %d fetches)"
                      % (tool, cg[tool]["ir"], cg[tool]["allocs"], args.cg_small, args.cg_large))
        if "fetchd" in cg:
            ir = cg["fetchd"]["ir"]
            report.figure("instructions per fetch, fetchd (callgrind)", ir, "",
                          "<= %.0f" % IR_TARGET, ir <= IR_TARGET)
            report.figure("heap allocations per fetch, fetchd (callgrind malloc calls)",
                          cg["fetchd"]["allocs"], "", "<= %.0f" % ALLOCS_TARGET,
                          cg["fetchd"]["allocs"] <= ALLOCS_TARGET)
        if "curl" in cg:
            report.figure("instructions per fetch, curl (callgrind)", cg["curl"]["ir"], "")
            report.figure("heap allocations per fetch, curl (callgrind malloc calls)",
                          cg["curl"]["allocs"], "")
        if "fetchd" in cg and "curl" in cg:
            ratio = cg["curl"]["ir"] / cg["fetchd"]["ir"]
            report.figure("curl/fetchd instructions per fetch", ratio, "x",
                          ">= %.0fx" % IR_CURL_RATIO_TARGET, ratio >= IR_CURL_RATIO_TARGET)
            print("  curl/fetchd instructions per fetch: %.2fx (target >= %.0fx: %s); fetchd "
                  "%.0f (target <= %.0f: %s)"
                  % (ratio, IR_CURL_RATIO_TARGET,
                     "met" if ratio >= IR_CURL_RATIO_TARGET else "missed", ir, IR_TARGET,
                     "met" if ir <= IR_TARGET else "missed"))
        if not args.syscalls:
            return
        if shutil.which("strace") is None:
            print("  syscalls: strace is not installed (apt-get install strace)")
            report.figure("syscalls per fetch, fetchd (strace)", None, "",
                          "<= %.1f" % SYSCALLS_TARGET, None)
            return
        for tool in ("fetchd", "curl"):
            if tool in args.skip:
                continue
            if tool == "fetchd":
                def fn(n):
                    return strace_fetchd(bin_dir, url, n, args.timeout)
            else:
                def fn(n):
                    return strace_curl(url, n, args.timeout)
            try:
                total, per = marginal_syscalls(fn, args.strace_small, args.strace_large)
            except Exception as exc:
                print("  syscalls %s: could not measure: %s" % (tool, exc))
                continue
            top = sorted(((v, k) for k, v in per.items() if v >= 0.01), reverse=True)[:8]
            print("  syscalls %-6s: %.2f per fetch (%s; strace -f -c, %d and %d fetches)"
                  % (tool, total, ", ".join("%s %.2f" % (k, v) for v, k in top),
                     args.strace_small, args.strace_large))
            if tool == "fetchd":
                report.figure("syscalls per fetch, fetchd (strace)", total, "",
                              "<= %.1f" % SYSCALLS_TARGET, total <= SYSCALLS_TARGET)
            else:
                report.figure("syscalls per fetch, curl (strace)", total, "")


# summary, --json, --plot ----------------------------------------------------

def print_summary(report):
    print()
    print("Summary against issue 15's targets")
    print("  %-60s %12s  %-10s %s" % ("measure", "value", "target", ""))
    for key, peer, ratio, target in report.ratios:
        if target is None:
            continue
        shown = "%.2fx" % ratio if ratio is not None else "-"
        state = "" if ratio is None else ("met" if ratio >= target else "missed")
        print("  %-60s %12s  %-10s %s" % ("%s fetchd/%s" % (key.upper(), peer), shown,
                                          ">= %.2fx" % target, state or "not measured"))
    for name, value, unit, target, met in report.figures:
        if value is None:
            shown = "-"
        elif unit == "bytes":
            shown = "%.0f B" % value
        elif unit == "x":
            shown = "%.2fx" % value
        elif abs(value) >= 100:
            shown = "%.0f %s" % (value, unit)
        else:
            shown = "%.2f %s" % (value, unit)
        state = "" if met is None else ("met" if met else "missed")
        if value is None:
            state = "not measured"
        print("  %-60s %12s  %-10s %s" % (name, shown.strip(), target or "", state))


def write_json(report, path, args, header):
    doc = {"header": header, "args": {k: v for k, v in vars(args).items()
                                      if isinstance(v, (int, float, str, list, bool))},
           "workloads": {}, "ratios": [], "figures": []}
    for key, t in report.tables.items():
        doc["workloads"][key] = {"title": t["title"], "metric": t["metric"],
                                 "results": [r.as_dict() for r in t["results"]]}
    for key, peer, ratio, target in report.ratios:
        doc["ratios"].append({"workload": key, "peer": peer, "ratio": ratio, "target": target,
                              "met": None if ratio is None or target is None
                              else ratio >= target})
    for name, value, unit, target, met in report.figures:
        doc["figures"].append({"name": name, "value": value, "unit": unit, "target": target,
                               "met": met})
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def write_plot(report, path):
    """A gnuplot PNG: one bar per (workload, peer) ratio, the target drawn as
    a horizontal mark over its bar, and a line at 1.0 (parity)."""
    if shutil.which("gnuplot") is None:
        print("note: gnuplot is not installed (apt-get install gnuplot-nox); no plot")
        return False
    keys = [k for k in report.tables if any(r[0] == k and r[2] is not None
                                            for r in report.ratios)]
    if not keys:
        print("note: no ratios to plot")
        return False
    peers = ["curl", "undici", "wrk"]
    work = tempfile.mkdtemp(prefix="bench-plot-")
    try:
        data = os.path.join(work, "ratios.dat")
        with open(data, "w") as f:
            for i, key in enumerate(keys):
                for j, peer in enumerate(peers):
                    for k, p, ratio, target in report.ratios:
                        if k == key and p == peer and ratio is not None:
                            x = i + (j - 1) * 0.27
                            f.write("%s %.3f %d %.4f %s\n" % (peer, x, j, ratio,
                                                              "%.3f" % target if target
                                                              else "NaN"))
        xtics = ", ".join('"%s" %d' % (k.upper(), i) for i, k in enumerate(keys))
        tops = [v for k, _, ratio, target in report.ratios if k in keys
                for v in (ratio, target) if v is not None]
        ymax = max(tops + [1.0]) * 1.15
        plots = []
        for j, peer in enumerate(peers):
            plots.append("'%s' using ($3==%d ? $2 : NaN):4 with boxes lc %d title 'fetchd/%s'"
                         % (data, j, j + 1, peer))
        plots.append("'%s' using 2:5:(0.12) with xerrorbars pt -1 lc rgb 'black' lw 2 "
                     "title 'target'" % data)
        plots.append("1 with lines dt 2 lc rgb 'gray40' title 'parity'")
        script = """set terminal png size 1000,560
set output '%s'
set title "fetchd's throughput over each peer's (higher is better for fetchd)"
set ylabel 'fetchd / peer'
set style fill solid 0.8 border -1
set boxwidth 0.25
set xrange [-0.6:%f]
set yrange [0:%f]
set xtics (%s)
set key top right
set grid ytics
plot %s
""" % (path, len(keys) - 0.4, ymax, xtics, ", \\\n     ".join(plots))
        gp = os.path.join(work, "ratios.gp")
        with open(gp, "w") as f:
            f.write(script)
        r = subprocess.run(["gnuplot", gp], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60)
        if r.returncode != 0:
            print("note: gnuplot failed: %s" % r.stdout.decode(errors="replace")[-1000:])
            return False
        print("plot: %s" % path)
        return True
    finally:
        shutil.rmtree(work, ignore_errors=True)


# arguments and header ---------------------------------------------------------

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


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default=list(DEFAULT_WORKLOADS),
                    type=lambda s: csv(s, WORKLOADS),
                    help="which workloads, comma-separated (default: w1,...,w7)")
    ap.add_argument("--requests", type=int, default=100000,
                    help="W1, W2 (and proxy) GETs per contender (default 100000)")
    ap.add_argument("--concurrency", type=int, default=64,
                    help="connections in W1, W2, W5 (default 64)")
    ap.add_argument("--large-count", type=int, default=10, help="W3's transfers (default 10)")
    ap.add_argument("--large-mib", type=int, default=100, help="W3's file size (default 100)")
    ap.add_argument("--sequential-requests", type=int, default=10000,
                    help="W4's GETs (default 10000)")
    ap.add_argument("--origins", type=int, default=1000, help="W5's origins (default 1000)")
    ap.add_argument("--per-origin", type=int, default=10,
                    help="W5's GETs per origin (default 10)")
    ap.add_argument("--submit-jobs", type=int, default=100000,
                    help="W6's jobs per run (default 100000)")
    ap.add_argument("--idle-connections", type=int, default=1000,
                    help="W7's idle connections (default 1000)")
    ap.add_argument("--handshakes", type=int, default=64,
                    help="W2's full TLS handshakes per measurement (default 64)")
    ap.add_argument("--wrk-seconds", type=int, default=5, help="wrk's run time (default 5)")
    ap.add_argument("--batch", type=int, default=1000,
                    help="fetchd jobs per submit call (default 1000)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="repetitions; each contender's median is shown (default 3)")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="limit for any one run, seconds (default 600)")
    ap.add_argument("--skip", action="append", default=[],
                    type=lambda s: csv(s, TOOLS), help="contenders to leave out, e.g. undici,wrk")
    ap.add_argument("--bin-dir", default=ctltest.BIN_DIR,
                    help="where fetchd and fetchctl are (default: $FETCHD_BIN_DIR or build/bin)")
    ap.add_argument("--fetchd-arg", action="append", default=[],
                    help="an extra fetchd option for every run (repeatable), e.g. "
                         "--fetchd-arg=--log-jobs --fetchd-arg=off")
    ap.add_argument("--callgrind", action="store_true",
                    help="also measure instructions and heap allocations per fetch (valgrind)")
    ap.add_argument("--syscalls", action="store_true",
                    help="also measure syscalls per fetch (strace -f -c)")
    ap.add_argument("--cg-small", type=int, default=500, help="callgrind's short run (500)")
    ap.add_argument("--cg-large", type=int, default=2500, help="callgrind's long run (2500)")
    ap.add_argument("--strace-small", type=int, default=1000, help="strace's short run (1000)")
    ap.add_argument("--strace-large", type=int, default=5000, help="strace's long run (5000)")
    ap.add_argument("--plot", metavar="FILE.png", help="write a gnuplot PNG of the ratios")
    ap.add_argument("--json", metavar="FILE", help="write every result as JSON")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run of seconds: tiny sizes, one repetition (explicit "
                         "options still win)")
    given = set()
    for a in (argv if argv is not None else sys.argv[1:]):
        if a.startswith("--"):
            given.add(a[2:].split("=", 1)[0].replace("-", "_"))
    args = ap.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            if name not in given:
                setattr(args, name, value)
    args.skip = {tool for group in args.skip for tool in group}
    for name in ("requests", "concurrency", "large_count", "large_mib", "sequential_requests",
                 "origins", "per_origin", "submit_jobs", "idle_connections", "handshakes",
                 "wrk_seconds", "batch", "repeat"):
        if getattr(args, name) < 1:
            ap.error("--%s must be at least 1" % name.replace("_", "-"))
    if args.idle_connections < 2:
        ap.error("--idle-connections must be at least 2")
    if args.origins > 250 * 250:
        ap.error("--origins: at most 62500")
    if not 0 < args.cg_small < args.cg_large or not 0 < args.strace_small < args.strace_large:
        ap.error("need 0 < --cg-small < --cg-large and 0 < --strace-small < --strace-large")
    return args


def print_header(args):
    lines = []
    for tool in ("curl", "wrk"):
        if tool not in args.skip and shutil.which(tool) is None:
            lines.append("note: %s is not installed (deploy/install-deps.sh); it is reported "
                         "missing" % tool)
    if "undici" not in args.skip and undici_missing():
        lines.append("note: undici is missing: %s" % undici_missing())
    kind = build_type(os.path.abspath(args.bin_dir))
    lines.append("fetchd: %s (build type %s)%s" % (ctltest.FETCHD, kind,
                 "  -- a Debug build is not what to quote" if kind == "Debug" else ""))
    lines.append("tools: " + "; ".join(tool_versions()))
    load = os.getloadavg()[0]
    lines.append("host: %d CPUs, load average %.2f; nginx: 1 worker; loopback%s"
                 % (os.cpu_count(), load, "  -- the machine is busy, figures will be noisy"
                    if load > BUSY_LOAD else ""))
    lines.append("repetitions: %d, round-robin; fetchd options added: %s"
                 % (args.repeat, " ".join(args.fetchd_arg) or "none"))
    for line in lines:
        print(line)
    sys.stdout.flush()
    return lines


def main(argv=None):
    args = parse_args(argv)
    ctltest.FETCHD = os.path.join(os.path.abspath(args.bin_dir), "fetchd")
    header = print_header(args)
    report = Report()
    steps = (("w1", w1), ("w2", w2), ("w3", w3), ("w4", w4), ("w5", w5), ("w6", w6),
             ("w7", w7))
    for name, fn in steps:
        if name in args.workloads:
            fn(report, args)
    if "proxy" in args.workloads or "proxy-https" in args.workloads:
        proxy_workloads(report, args)
    if args.callgrind or args.syscalls:
        per_fetch_costs(report, args)
    print_summary(report)
    if args.json:
        write_json(report, args.json, args, header)
    if args.plot:
        write_plot(report, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
