#!/usr/bin/env python3
"""Soak test: run the real fetchd for many fetches and prove its counts stay flat.

The harness starts `fetchd` against a private nginx (plain and TLS) and the
python fault server, submits fetches in waves with a mix of outcomes (200,
404, 500, redirects, resets, truncation, timeouts, TLS failures, refused
connections, cancellations), and after every wave:

  1. waits for every job of the wave (control protocol `wait`);
  2. runs a "tail" of --retain-jobs identical fetches, so the jobs that
     retention keeps are always the same kind of job (their heap is the same);
  3. waits (bounded) until the pool's idle connections have been closed by
     the daemon's own idle timeout (`--idle-timeout 1`);
  4. scrapes /metrics (the text format is parsed here) and asserts that every
     gauge is back at the baseline taken after the warm-up waves.

See README.md in this directory for what exactly is asserted and how to read
the CSV and the plot.  Exit status: 0 success, 1 a failed assertion (the
message names the first one), 2 a setup problem (a server or the daemon did
not start).  With --expect-leak the first two are swapped: the run succeeds
only when an assertion trips (the regression check with fetchd-leaky).
"""

import argparse
import csv
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

import faultserver  # noqa: E402
import fetchtest  # noqa: E402
import tlsutil  # noqa: E402

DEFAULT_FETCHD = os.path.join(fetchtest.BIN_DIR, "fetchd")
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
RPC_TIMEOUT = 120.0
SETTLE_TIMEOUT = 15.0  # bound on waiting for idle connections to close
RETAIN_JOBS = 100

# libuv and jansson are not fetchd's code: their live blocks may move a
# little with things fetchd does not control (libuv's threadpool work
# requests, jansson's hashtable sizes for the JSON it happens to hold).  These
# are the documented bounds (README.md); fetchd's own blocks must be exact.
FOREIGN_HEAP_BOUND = {"libuv": 16, "jansson": 64}
# RSS is checked as a trend, not wave by wave: the median of the last
# RSS_WINDOW waves against the median of the first RSS_WINDOW after the
# warm-up. A wave of 5,000 jobs spreads about 17 MiB of heap, malloc_trim
# hands the free pages back after it, and the allocator then touches some
# of them again as it reuses those chunks, so one sample moves by 1 to 3 MiB
# with fetchd's own heap exactly flat (seen with the /proc smaps of the
# heap); a leak moves the median for good.
RSS_GROWTH_BOUND = 1024 * 1024
RSS_WINDOW = 10
RSS_SETTLE = 3.0  # s: how long a sample over the bound waits for fetchd's trim


class SoakFailure(Exception):
    """An assertion about the daemon's counts failed."""


class SetupError(Exception):
    """A server or the daemon could not be started."""


# ---- the Prometheus text format ---------------------------------------------------

_SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def parse_metrics(text):
    """Parses the text format 0.0.4 into {(name, ((label, value), ...)): float}.

    Also returns the TYPE of every metric family: (samples, types)."""
    samples, types = {}, {}
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) == 4 and parts[1] == "TYPE":
                types[parts[2]] = parts[3].strip()
            continue
        m = _SAMPLE_RE.match(line)
        if m is None:
            raise ValueError("unparsable metrics line: %r" % line)
        name, labels_text, value = m.groups()
        labels = []
        pos = 0
        while labels_text and pos < len(labels_text):
            lm = _LABEL_RE.match(labels_text, pos)
            if lm is None:
                raise ValueError("unparsable labels in line: %r" % line)
            labels.append((lm.group(1), lm.group(2)))
            pos = lm.end()
        samples[(name, tuple(sorted(labels)))] = float(value)
    return samples, types


class Scrape:
    """One parsed /metrics page with convenient accessors."""

    def __init__(self, text):
        self.text = text
        self.samples, self.types = parse_metrics(text)

    def get(self, name, **labels):
        key = (name, tuple(sorted(labels.items())))
        if key not in self.samples:
            raise KeyError("metric %s%s missing from the scrape" % (name, labels or ""))
        return self.samples[key]

    def by_label(self, name, label):
        """{label value: sample} for every sample of `name` with that label."""
        out = {}
        for (n, labels), value in self.samples.items():
            if n == name:
                for k, v in labels:
                    if k == label:
                        out[v] = value
        return out

    def names(self):
        return {n for n, _ in self.samples}


def http_get(port, path="/metrics", timeout=10.0):
    """GET http://127.0.0.1:port/path; returns (status, body bytes)."""
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(port):
    status, body = http_get(port)
    if status != 200:
        raise SoakFailure("GET /metrics answered %d" % status)
    return Scrape(body.decode("utf-8"))


# ---- the daemon and its control socket --------------------------------------------


class Rpc:
    """A small JSON-RPC 2.0 client over the control socket; responses are
    matched by id through a dict, so thousands of waits stay cheap."""

    def __init__(self, path, timeout=RPC_TIMEOUT):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.timeout = timeout
        self.buf = b""
        self.responses = {}
        self.finished = {}  # job id -> JOB, from "finished" event notifications
        self.next_id = 1

    def close(self):
        self.sock.close()

    def send(self, method, params=None):
        rid = self.next_id
        self.next_id += 1
        msg = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            msg["params"] = params
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        return rid

    def send_many(self, method, params_list):
        """Sends one request per params (one write); returns their ids."""
        ids, lines = [], []
        for params in params_list:
            rid = self.next_id
            self.next_id += 1
            ids.append(rid)
            lines.append(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method,
                                     "params": params}))
        if lines:
            self.sock.sendall(("\n".join(lines) + "\n").encode())
        return ids

    def _read_more(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("no answer from fetchd within %.0f s" % self.timeout)
        self.sock.settimeout(left)
        data = self.sock.recv(1 << 20)
        if not data:
            raise EOFError("fetchd closed the control connection")
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            msg = json.loads(line)
            for m in msg if isinstance(msg, list) else [msg]:
                if not isinstance(m, dict):
                    continue
                if "id" in m:
                    self.responses[m["id"]] = m
                elif m.get("method") == "event" and m["params"].get("event") == "finished":
                    job = m["params"]["job"]
                    self.finished[job["id"]] = job

    def response(self, rid, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while rid not in self.responses:
            self._read_more(deadline)
        return self.responses.pop(rid)

    def finished_job(self, jid, timeout=None):
        """The job as its "finished" notification carried it (needs a
        subscription); the notification is consumed."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while jid not in self.finished:
            self._read_more(deadline)
        return self.finished.pop(jid)

    def result(self, method, params=None, timeout=None):
        resp = self.response(self.send(method, params), timeout)
        if "error" in resp:
            raise SoakFailure("%s answered with an error: %r" % (method, resp["error"]))
        return resp["result"]


class Daemon:
    """fetchd in the foreground with a private control socket, runtime dir and
    download dir under `workdir`, metrics on 127.0.0.1:<port 0>."""

    def __init__(self, binary, workdir, args=(), metrics=True):
        self.binary = binary
        self.dir = workdir
        self.runtime = os.path.join(workdir, "run")
        self.download_dir = os.path.join(workdir, "downloads")
        os.makedirs(self.runtime, mode=0o700, exist_ok=True)
        os.makedirs(self.download_dir, exist_ok=True)
        self.socket = os.path.join(self.runtime, "control.sock")
        self.log_path = os.path.join(workdir, "fetchd.log")
        cmd = [binary, "--control", self.socket, "--download-dir", self.download_dir]
        self.metrics = metrics
        cmd += ["--metrics", "127.0.0.1:0" if metrics else "off"]
        self.cmd = cmd + [str(a) for a in args]
        env = {k: v for k, v in os.environ.items()
               if k not in ("RUNTIME_DIRECTORY", "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID",
                            "JOURNAL_STREAM", "FETCHD_SOCKET", "WATCHDOG_USEC",
                            "WATCHDOG_PID")}
        env["XDG_RUNTIME_DIR"] = self.runtime
        self.env = env
        self.proc = None
        self.port = None

    def start(self):
        if not os.path.exists(self.binary):
            raise SetupError("fetchd binary not found at %s (build first: cmake -S . -B "
                             "build && cmake --build build)" % self.binary)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log, env=self.env,
                                         start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SetupError("fetchd exited with %d at startup%s"
                                 % (self.proc.returncode, self.log_tail()))
            if self._ready():
                return self
            time.sleep(0.05)
        raise SetupError("fetchd did not become ready within %.0f s%s"
                         % (START_TIMEOUT, self.log_tail()))

    def _ready(self):
        if self.metrics and self.port is None:
            m = re.search(r"metrics: listening on .* \(port (\d+)\)", self.log())
            if m is None:
                return False
            self.port = int(m.group(1))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(1.0)
            sock.connect(self.socket)
            return True
        except OSError:
            return False
        finally:
            sock.close()

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_tail(self, n=3000):
        return "\n--- fetchd stderr (tail) ---\n" + self.log()[-n:]

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """SIGTERM, a bounded wait, then SIGKILL; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(STOP_TIMEOUT)
        return self.proc.returncode

    def rpc(self):
        return Rpc(self.socket)


def wait_idle_closed(port, limit=SETTLE_TIMEOUT):
    """Polls /metrics (bounded) until no connection is idle, active or
    connecting, and none is still closing (a conn object outlives its state
    until its handles have closed: a baseline taken then would count
    connections that are on their way out); returns the last scrape (the
    caller asserts on it)."""
    deadline = time.monotonic() + limit
    while True:
        s = scrape(port)
        conns = s.by_label("fetchd_connections", "state")
        closed = all(v == 0 for v in conns.values()) and s.get("fetchd_objects", type="conn") == 0
        if closed or time.monotonic() >= deadline:
            return s
        time.sleep(0.1)


# ---- the job mix --------------------------------------------------------------------


class Servers:
    """nginx (plain and TLS) and the fault server, started and stopped together."""

    def __init__(self):
        self.nginx = None
        self.tls = None
        self.faults = None
        self.certs = None
        self.closed_port = None

    def start(self):
        try:
            self.certs = tlsutil.certs()
            self.nginx = fetchtest.Nginx().start()
            self.tls = tlsutil.TlsNginx(self.certs).start()
            self.faults = QuietFaultServer().start()
        except (RuntimeError, OSError) as exc:
            self.stop()
            raise SetupError("could not start the test servers: %s" % exc)
        # A port that was free a moment ago: connecting to it is refused.
        self.closed_port = fetchtest.free_port()
        return self

    def stop(self):
        for srv in (self.faults, self.tls, self.nginx):
            if srv is not None:
                srv.stop()

    def prune(self):
        self.faults.prune()


class QuietFaultServer(faultserver.FaultServer):
    """The fault server without its per-request record, and with finished
    connection threads forgotten: a soak of a million fetches must not make
    the test's own memory grow."""

    def _record(self, conn, req):
        pass

    def prune(self):
        self._threads[:] = [t for t in self._threads if t.is_alive()]


def build_mix(srv):
    """The kinds of job one wave is made of: (name, weight, spec, expected).

    `expected` is (state, http_status or error code); it is checked on every
    job, so the mix really exercises the paths it claims to.  Weights are per
    1000 jobs.  Specs marked with "cancel" are cancelled right after submission.
    """
    n, t, f = srv.nginx, srv.tls, srv.faults
    ca, other = srv.certs.ca, srv.certs.other_ca
    short = {"connect": 5, "first_byte": 0.3}
    mix = [
        ("ok_small", 250, {"url": n.url("/small.txt")}, ("done", 200)),
        ("ok_1k_sha", 100, {"url": n.url("/1k.bin"), "sha256": True}, ("done", 200)),
        ("ok_inline", 40, {"url": n.url("/small.txt"), "output": "inline"}, ("done", 200)),
        ("ok_1m", 5, {"url": n.url("/1m.bin")}, ("done", 200)),
        ("http_404", 90, {"url": n.url("/status/404")}, ("done", 404)),
        ("http_500", 90, {"url": n.url("/status/500")}, ("done", 500)),
        ("fail_404", 30, {"url": n.url("/status/404"), "fail_on_http_error": True},
         ("failed", None)),
        ("missing", 20, {"url": n.url("/no/such/file")}, ("done", 404)),
        ("redirect", 50, {"url": n.url("/redirect/2")}, ("done", 200)),
        ("too_many_redirects", 10, {"url": n.url("/redirect/5"), "max_redirects": 2},
         ("failed", "too_many_redirects")),
        ("tls_ok", 100, {"url": t.url("/small.txt"), "ca_file": ca}, ("done", 200)),
        ("tls_404", 20, {"url": t.url("/status/404"), "ca_file": ca}, ("done", 404)),
        ("tls_500", 10, {"url": t.url("/status/500"), "ca_file": ca}, ("done", 500)),
        ("tls_wrong_ca", 20, {"url": t.url("/small.txt"), "ca_file": other},
         ("failed", "tls_verify")),
        ("reset_before", 20, {"url": f.url("/reset-before")}, ("failed", None)),
        ("reset_retried", 5, {"url": f.url("/reset-before"), "retries": 1},
         ("failed", None)),
        ("truncated_cl", 20, {"url": f.url("/truncated-cl")}, ("failed", "truncated")),
        ("truncated_chunked", 10, {"url": f.url("/truncated-chunked")},
         ("failed", "truncated")),
        ("empty", 10, {"url": f.url("/empty")}, ("failed", "empty_reply")),
        ("garbage", 10, {"url": f.url("/garbage-status")}, ("failed", "protocol")),
        ("chunked", 20, {"url": f.url("/chunked")}, ("done", 200)),
        ("fault_404", 10, {"url": f.url("/nothing-here")}, ("done", 404)),
        ("timeout", 5, {"url": f.url("/never"), "timeouts": short}, ("failed", "timeout")),
        ("refused", 10, {"url": "http://127.0.0.1:%d/x" % srv.closed_port},
         ("failed", "connect_refused")),
        ("cancel_running", 10, {"url": f.url("/drip?bytes=20&interval_ms=100"),
                                "cancel": True}, ("cancelled", None)),
        ("cancel_nginx", 10, {"url": n.url("/1m.bin"), "cancel": True}, (None, None)),
    ]
    return mix


def wave_specs(mix, size, wave_no):
    """`size` jobs drawn from the mix in proportion to the weights, in a fixed
    interleaved order (deterministic: wave N of any run is the same)."""
    total = sum(w for _, w, _, _ in mix)
    kinds = []
    for name, weight, spec, expected in mix:
        count = max(1, round(size * weight / total))
        kinds += [(name, spec, expected)] * count
    kinds = kinds[:size] if len(kinds) > size else kinds
    # Interleave: a stride walk spreads each kind over the whole wave.
    stride = 7919
    order = sorted(range(len(kinds)), key=lambda i: (i * stride + wave_no) % len(kinds))
    return [kinds[i] for i in order]


def check_outcome(name, expected, job):
    """Raises SoakFailure when a job did not end the way its kind should."""
    state, detail = expected
    if state is None:  # a cancel that may land after the job finished
        if job["state"] not in ("done", "cancelled"):
            raise SoakFailure("job kind %s ended %s: %r" % (name, job["state"], job))
        return
    if job["state"] != state:
        raise SoakFailure("job kind %s: expected state %s, got %s: %r"
                          % (name, state, job["state"], job))
    if detail is None:
        return
    if state == "done" and job.get("http_status") != detail:
        raise SoakFailure("job kind %s: expected HTTP %s: %r" % (name, detail, job))
    if state == "failed" and (job.get("error") or {}).get("code") != detail:
        raise SoakFailure("job kind %s: expected error %s: %r" % (name, detail, job))


def run_jobs(rpc, kinds, check=True):
    """Submits the jobs, cancels the marked ones, waits for all of them and
    checks each outcome; returns {kind: count}.

    Jobs are waited for through "finished" notifications (the caller has
    subscribed), not `wait` calls: with a small --retain-jobs a job may be
    finished and forgotten before a `wait` for it could arrive."""
    specs = []
    for name, spec, _ in kinds:
        s = {k: v for k, v in spec.items() if k != "cancel"}
        s["labels"] = {"kind": name}
        specs.append(s)
    ids = rpc.result("submit", {"jobs": specs})["ids"]
    cancel = [{"id": jid} for jid, (_, spec, _) in zip(ids, kinds) if spec.get("cancel")]
    for rid in rpc.send_many("cancel", cancel):
        resp = rpc.response(rid)
        # not_found: the job finished and retention already dropped it.
        if "error" in resp and resp["error"].get("data", {}).get("code") != "not_found":
            raise SoakFailure("cancel answered with an error: %r" % resp["error"])
    counts = {}
    for jid, (name, _, expected) in zip(ids, kinds):
        job = rpc.finished_job(jid, timeout=RPC_TIMEOUT)
        if check:
            check_outcome(name, expected, job)
        counts[name] = counts.get(name, 0) + 1
    return counts


# ---- the assertions -------------------------------------------------------------------

def snapshot(s):
    """The figures the soak asserts on and plots, from one scrape."""
    snap = {}
    for state, v in s.by_label("fetchd_connections", "state").items():
        snap["conn_" + state] = v
    for state, v in s.by_label("fetchd_buffers", "state").items():
        snap["buffers_" + state] = v
    for state, v in s.by_label("fetchd_jobs", "state").items():
        snap["jobs_" + state] = v
    for result, v in s.by_label("fetchd_jobs_finished_total", "result").items():
        snap["finished_" + result] = v
    for comp, v in s.by_label("fetchd_heap_allocations", "component").items():
        snap["heap_blocks_" + comp] = v
    for comp, v in s.by_label("fetchd_heap_bytes", "component").items():
        snap["heap_bytes_" + comp] = v
    for typ, v in s.by_label("fetchd_objects", "type").items():
        snap["obj_" + typ] = v
    snap["conns_opened_total"] = s.get("fetchd_connections_opened_total")
    snap["tls_sessions"] = s.get("fetchd_tls_sessions")
    snap["control_clients"] = s.get("fetchd_control_clients")
    snap["rss_bytes"] = s.get("process_resident_memory_bytes")
    snap["open_fds"] = s.get("process_open_fds")
    return {k: int(v) for k, v in snap.items()}


def check_flat(base, now, submitted, retain):
    """Returns the list of failed assertions (first one first), empty if flat."""
    bad = []
    for state in ("connecting", "active", "idle"):
        if now["conn_" + state] != 0:
            bad.append("fetchd_connections{state=%s} is %d, expected 0"
                       % (state, now["conn_" + state]))
    # A scrape is itself read into one pool buffer while the page is rendered,
    # so the baseline (taken by a scrape too) holds that one.
    if now["buffers_in_use"] != base["buffers_in_use"]:
        bad.append("fetchd_buffers{state=in_use} is %d, baseline %d (buffers held after "
                   "every job finished)" % (now["buffers_in_use"], base["buffers_in_use"]))
    for state in ("queued", "running"):
        if now["jobs_" + state] != 0:
            bad.append("fetchd_jobs{state=%s} is %d, expected 0" % (state, now["jobs_" + state]))
    want_retained = min(retain, submitted)
    if now["jobs_retained"] != want_retained:
        bad.append("fetchd_jobs{state=retained} is %d, retention explains %d"
                   % (now["jobs_retained"], want_retained))
    for key in sorted(k for k in base if k.startswith("obj_")):
        if now.get(key) != base[key]:
            bad.append("fetchd_objects{type=%s} is %s, baseline %d"
                       % (key[4:], now.get(key), base[key]))
    if now["heap_blocks_fetchd"] != base["heap_blocks_fetchd"]:
        bad.append("fetchd_heap_allocations{component=fetchd} is %d, baseline %d"
                   % (now["heap_blocks_fetchd"], base["heap_blocks_fetchd"]))
    for comp, bound in FOREIGN_HEAP_BOUND.items():
        key = "heap_blocks_" + comp
        if abs(now[key] - base[key]) > bound:
            bad.append("fetchd_heap_allocations{component=%s} is %d, baseline %d (bound +-%d)"
                       % (comp, now[key], base[key], bound))
    if now["open_fds"] != base["open_fds"]:
        bad.append("process_open_fds is %d, baseline %d" % (now["open_fds"], base["open_fds"]))
    if now["control_clients"] != base["control_clients"]:
        bad.append("fetchd_control_clients is %d, baseline %d"
                   % (now["control_clients"], base["control_clients"]))
    return bad


def check_rss_trend(samples):
    """The RSS trend over the waves since the warm-up (one sample each):
    a failed assertion, or None. Needs two windows' worth of samples (or,
    in a shorter run, compares its two halves)."""
    k = min(RSS_WINDOW, len(samples) // 2)
    if k == 0:
        return None
    first = statistics.median(samples[:k])
    last = statistics.median(samples[-k:])
    if last - first > RSS_GROWTH_BOUND:
        return ("process_resident_memory_bytes: the median of the last %d waves is %d bytes "
                "above the median of the first %d after the warm-up (%d -> %d; bound %d)"
                % (k, last - first, k, first, last, RSS_GROWTH_BOUND))
    return None


def settle_and_check(port, base, submitted, retain, limit):
    """Waits (bounded) for the counts to settle, then returns (snapshot, failures).

    Closing connections and their handles takes a loop turn or two after
    the idle sweep, so the checks are retried until they pass or `limit`
    seconds have passed; a real leak never comes back and trips at the bound.
    """
    deadline = time.monotonic() + limit
    rss_deadline = None
    while True:
        s = wait_idle_closed(port, max(0.5, deadline - time.monotonic()))
        now = snapshot(s)
        bad = check_flat(base, now, submitted, retain) if base else []
        if not bad and base and now["rss_bytes"] - base["rss_bytes"] > RSS_GROWTH_BOUND:
            # fetchd hands a burst's memory back at most once every 2 s:
            # the sample the trend is judged on is taken after that.
            if rss_deadline is None:
                rss_deadline = min(deadline, time.monotonic() + RSS_SETTLE)
            if time.monotonic() < rss_deadline:
                time.sleep(0.2)
                continue
        if not bad or time.monotonic() >= deadline:
            return now, bad
        time.sleep(0.2)


def check_split_line(socket_path, port, limit=SETTLE_TIMEOUT):
    """A request line that arrives in two reads must leave no heap block
    behind once it has been answered.

    The daemon copies a partial line into the client's line buffer; it once
    kept that buffer for the connection's life, so fetchd's heap count rose
    by one the first time the kernel happened to split one of the soak's
    large submit lines, and a wave failed one block above its baseline. The
    split is made on purpose here, on a new connection: the first half is
    sent, the check waits (bounded) until the daemon holds it, then sends
    the rest."""
    def fetchd_blocks():
        # Less one block per metrics client: an earlier scrape's client may
        # not have seen its EOF yet.
        s = scrape(port)
        return int(s.get("fetchd_heap_allocations", component="fetchd")
                   - s.get("fetchd_objects", type="metrics_client"))

    rpc = Rpc(socket_path)
    try:
        before = fetchd_blocks()
        line = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "stats"}).encode()
        half = len(line) // 2
        rpc.sock.sendall(line[:half])
        deadline = time.monotonic() + limit
        while fetchd_blocks() <= before:
            if time.monotonic() >= deadline:
                raise SoakFailure("split line: the daemon never buffered the first half "
                                  "(fetchd heap blocks stayed at %d)" % before)
            time.sleep(0.05)
        rpc.sock.sendall(line[half:] + b"\n")
        if "result" not in rpc.response(1):
            raise SoakFailure("split line: stats did not answer with a result")
        deadline = time.monotonic() + limit
        while True:
            now = fetchd_blocks()
            if now == before:
                return
            if time.monotonic() >= deadline:
                raise SoakFailure("split line: fetchd_heap_allocations{component=fetchd} is %d "
                                  "after the answer, %d before the line (a line buffer kept?)"
                                  % (now, before))
            time.sleep(0.05)
    finally:
        rpc.close()


# ---- the plot -------------------------------------------------------------------------

PLOT_SCRIPT = """\
set terminal png size 1400,1500 noenhanced
set output '%(png)s'
set datafile separator ','
set key outside right top
set grid
set xlabel 'fetches'
# Room above and below, so a flat line never hides in the frame.
set offsets 0, 0, graph 0.08, graph 0.05
set multiplot layout 4,1 title 'fetchd soak: %(title)s'
set title 'live counts that must be flat (objects, connections, buffers in use, jobs)'
plot %(objects)s
set title 'heap blocks by component (counting allocator)'
plot '%(csv)s' using 'fetches':'heap_blocks_fetchd' with linespoints title 'fetchd', \\
     '' using 'fetches':'heap_blocks_libuv' with linespoints title 'libuv', \\
     '' using 'fetches':'heap_blocks_jansson' with linespoints title 'jansson'
set title 'process: RSS (MiB) and open fds'
set ytics nomirror
set y2tics
set ylabel 'RSS MiB'
set y2label 'fds'
set yrange [0:*]
set y2range [0:*]
plot '%(csv)s' using 'fetches':(column('rss_bytes')/1048576.0) with linespoints title 'RSS MiB', \\
     '' using 'fetches':'open_fds' axes x1y2 with linespoints title 'open fds'
unset y2tics
unset y2label
set ylabel ''
set autoscale y
set offsets 0, 0, graph 0.05, 0
set title 'counters that grow: jobs finished, connections opened'
plot '%(csv)s' using 'fetches':'finished_done' with lines title 'done', \\
     '' using 'fetches':'finished_failed' with lines title 'failed', \\
     '' using 'fetches':'finished_cancelled' with lines title 'cancelled', \\
     '' using 'fetches':'conns_opened_total' with lines title 'connections opened'
unset multiplot
"""

FLAT_COLUMNS = ("conn_connecting", "conn_active", "conn_idle", "buffers_in_use", "buffers_free",
                "jobs_queued", "jobs_running", "jobs_retained", "control_clients")


def write_plot(csv_path, png_path, columns, title):
    """Renders the CSV with gnuplot; returns an error text or None."""
    flat = [c for c in columns if c.startswith("obj_") or c in FLAT_COLUMNS]
    objects = ", ".join("'%s' using 'fetches':'%s' with lines title '%s'" % (csv_path, c, c)
                        for c in flat)
    script = PLOT_SCRIPT % {"png": png_path, "csv": csv_path, "title": title,
                            "objects": objects}
    gp = shutil.which("gnuplot")
    if gp is None:
        return "gnuplot not found (Debian: gnuplot-nox); CSV written, no plot"
    try:
        proc = subprocess.run([gp], input=script.encode(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=120)
    except subprocess.TimeoutExpired:
        return "gnuplot did not finish within 120 s"
    if proc.returncode != 0:
        return "gnuplot failed: %s" % proc.stderr.decode(errors="replace")[-2000:]
    return None


# ---- the run ----------------------------------------------------------------------------


class Soak:
    def __init__(self, args):
        self.args = args
        self.servers = None
        self.daemon = None
        self.rpc = None
        self.work = None
        self.rows = []
        self.columns = None
        self.submitted = 0
        self.fetches = 0
        self.started = time.monotonic()
        self.outcomes = {}

    def log(self, text):
        print("soak: " + text, flush=True)

    def setup(self):
        self.work = tempfile.mkdtemp(prefix="fetchd-soak-", dir=fetchtest.tmp_root())
        self.servers = Servers().start()
        self.daemon = Daemon(self.args.fetchd, self.work, [
            "--idle-timeout", "1", "--retain-jobs", RETAIN_JOBS,
            "--retain-seconds", "31536000", "--ca-file", self.servers.certs.ca,
            "--max-connections", "256", "--max-per-host", "32",
        ]).start()
        self.rpc = self.daemon.rpc()
        self.rpc.result("subscribe", {"events": ["finished"]})
        self.mix = build_mix(self.servers)
        self.tail = [("tail", {"url": self.servers.nginx.url("/small.txt")}, ("done", 200))]

    def teardown(self, failed=False):
        """Stops everything and removes the work dir; after a failure the
        daemon's log is kept beside the CSV first (--out)."""
        if self.rpc is not None:
            self.rpc.close()
        rc = None
        if self.daemon is not None:
            rc = self.daemon.stop()
            if rc not in (0, None):
                self.log("fetchd exited with %r on SIGTERM%s" % (rc, self.daemon.log_tail()))
            if failed or rc not in (0, None):
                kept = os.path.join(self.args.out, "fetchd.log")
                try:
                    shutil.copyfile(self.daemon.log_path, kept)
                    self.daemon.log_path = kept
                except OSError as exc:
                    self.log("could not keep fetchd's log: %s" % exc)
        if self.servers is not None:
            self.servers.stop()
        if self.work is not None:
            fetchtest.remove_tree(self.work)
            self.work = None
        return rc

    def report_failure(self):
        """What a failed run leaves for diagnosis: the CSV's baseline and last
        rows, where the CSV and the log are, and the log's tail."""
        if getattr(self, "csv_path", None) and os.path.exists(self.csv_path):
            with open(self.csv_path) as f:
                rows = f.read().splitlines()
            shown = rows[:2] + (["..."] if len(rows) > 5 else []) + rows[max(2, len(rows) - 3):]
            print("soak: CSV kept in %s (%d rows):\n%s" % (self.csv_path, len(rows) - 1,
                                                           "\n".join(shown)),
                  file=sys.stderr, flush=True)
        else:
            print("soak: no CSV: the run failed before its baseline", file=sys.stderr, flush=True)
        if self.daemon is not None:
            tail = self.daemon.log()[-6000:]
            print("soak: fetchd's log kept in %s\n--- fetchd stderr (tail) ---\n%s"
                  % (self.daemon.log_path, tail or "(fetchd wrote nothing to stderr)"),
                  file=sys.stderr, flush=True)

    def one_wave(self, wave_no):
        kinds = wave_specs(self.mix, self.args.wave, wave_no)
        for name, count in run_jobs(self.rpc, kinds).items():
            self.outcomes[name] = self.outcomes.get(name, 0) + count
        # The jobs that retention keeps are the last RETAIN_JOBS to finish:
        # make them the same kind every wave so their heap is the same too.
        run_jobs(self.rpc, self.tail * RETAIN_JOBS)
        self.submitted += len(kinds) + RETAIN_JOBS
        self.fetches += len(kinds) + RETAIN_JOBS
        self.servers.prune()
        if not self.daemon.alive():
            raise SoakFailure("fetchd exited with %r during wave %d%s"
                              % (self.daemon.proc.returncode, wave_no, self.daemon.log_tail()))

    def record(self, wave_no, snap):
        row = {"wave": wave_no, "fetches": self.fetches,
               "elapsed_s": round(time.monotonic() - self.started, 3)}
        row.update(snap)
        if self.columns is None:
            self.columns = list(row.keys())
            self.csv_file = open(self.csv_path, "w", newline="")
            self.csv = csv.DictWriter(self.csv_file, self.columns, extrasaction="ignore")
            self.csv.writeheader()
        self.csv.writerow(row)
        self.csv_file.flush()

    def run(self):
        a = self.args
        os.makedirs(a.out, exist_ok=True)
        self.csv_path = os.path.join(a.out, "soak.csv")
        self.png_path = os.path.join(a.out, "soak.png")
        self.setup()
        self.log("fetchd %s, metrics port %d, %d fetches in waves of %d (+%d tail jobs)"
                 % (a.fetchd, self.daemon.port, a.fetches, a.wave, RETAIN_JOBS))
        base = None
        wave_no = 0
        try:
            check_split_line(self.daemon.socket, self.daemon.port)
            for _ in range(a.warmup):
                wave_no += 1
                self.one_wave(wave_no)
            base, bad = settle_and_check(self.daemon.port, None, self.submitted, RETAIN_JOBS,
                                         SETTLE_TIMEOUT)
            if base["conn_idle"] or base["conn_active"] or base["conn_connecting"]:
                raise SoakFailure("after the warm-up, connections did not close: %r" % base)
            self.baseline = base
            self.record(wave_no, base)
            self.log("baseline after %d warm-up waves (%d fetches): heap blocks fetchd %d "
                     "libuv %d jansson %d, RSS %d, fds %d"
                     % (a.warmup, self.fetches, base["heap_blocks_fetchd"],
                        base["heap_blocks_libuv"], base["heap_blocks_jansson"],
                        base["rss_bytes"], base["open_fds"]))
            counted_start = self.fetches
            rss = []
            while self.fetches - counted_start < a.fetches:
                wave_no += 1
                self.one_wave(wave_no)
                now, bad = settle_and_check(self.daemon.port, base, self.submitted,
                                            RETAIN_JOBS, SETTLE_TIMEOUT)
                self.record(wave_no, now)
                self.last = now
                rss.append(now["rss_bytes"])
                trend = check_rss_trend(rss) if len(rss) >= 2 * RSS_WINDOW else None
                if trend:
                    bad.append(trend)
                if bad:
                    raise SoakFailure("wave %d (%d fetches): %s\n(all failed assertions: %s)"
                                      % (wave_no, self.fetches, bad[0], "; ".join(bad)))
                if wave_no % a.report_every == 0:
                    self.log("wave %d: %d fetches, %.0f s, RSS %d (%+d), heap fetchd %d"
                             % (wave_no, self.fetches, time.monotonic() - self.started,
                                now["rss_bytes"], now["rss_bytes"] - base["rss_bytes"],
                                now["heap_blocks_fetchd"]))
            trend = check_rss_trend(rss)
            if trend:
                raise SoakFailure("after wave %d (%d fetches): %s"
                                  % (wave_no, self.fetches, trend))
        finally:
            if self.columns is not None:
                self.csv_file.close()
                err = write_plot(self.csv_path, self.png_path, self.columns,
                                 "%s, %d fetches" % (os.path.basename(a.fetchd), self.fetches))
                if err:
                    self.log(err)
        self.summary(base, self.last)

    def summary(self, base, last):
        self.log("outcomes by kind: %s" % json.dumps(dict(sorted(self.outcomes.items()))))
        self.log("RSS at warm-up %d, at the end %d (%+d bytes)"
                 % (base["rss_bytes"], last["rss_bytes"], last["rss_bytes"] - base["rss_bytes"]))
        for comp in ("fetchd", "libuv", "jansson"):
            key = "heap_blocks_" + comp
            self.log("heap blocks %s: baseline %d, final %d" % (comp, base[key], last[key]))
        self.log("%d fetches in %.0f s; CSV %s, plot %s"
                 % (self.fetches, time.monotonic() - self.started, self.csv_path,
                    self.png_path))


def parse_args(argv):
    p = argparse.ArgumentParser(description="Soak fetchd and check that its counts stay flat.")
    p.add_argument("--fetches", type=int, default=20000,
                   help="fetches after the warm-up (default 20000)")
    p.add_argument("--wave", type=int, default=500, help="jobs per wave (default 500)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up waves (default 2)")
    p.add_argument("--out", default=None,
                   help="directory for soak.csv and soak.png (default: a new temp dir)")
    p.add_argument("--fetchd", default=DEFAULT_FETCHD,
                   help="the daemon binary (default $FETCHD_BIN_DIR/fetchd, else "
                   "build/bin/fetchd)")
    p.add_argument("--expect-leak", action="store_true",
                   help="succeed only if an assertion trips (regression check)")
    p.add_argument("--report-every", type=int, default=10, help="progress line every N waves")
    a = p.parse_args(argv)
    if a.fetches < 1 or a.wave < 50 or a.warmup < 1:
        p.error("--fetches must be >= 1, --wave >= 50, --warmup >= 1")
    if a.out is None:
        a.out = tempfile.mkdtemp(prefix="fetchd-soak-out-", dir=fetchtest.tmp_root())
    return a


def main(argv=None):
    args = parse_args(argv)
    soak = Soak(args)
    try:
        soak.run()
    except SetupError as exc:
        soak.teardown()
        print("soak: SETUP FAILED: %s" % exc, file=sys.stderr, flush=True)
        return 2
    except (SoakFailure, socket.timeout, EOFError, OSError, KeyError, ValueError) as exc:
        expected = args.expect_leak and isinstance(exc, SoakFailure)
        soak.teardown(failed=not expected)
        if expected:
            print("soak: the leak was caught, as expected: %s" % exc, flush=True)
            return 0
        print("soak: FAILED: %s" % exc, file=sys.stderr, flush=True)
        soak.report_failure()
        return 1
    except BaseException:
        soak.teardown()
        raise
    rc = soak.teardown(failed=args.expect_leak)
    if rc != 0 and not args.expect_leak:
        print("soak: FAILED: fetchd did not stop cleanly on SIGTERM (exit status %r)" % rc,
              file=sys.stderr, flush=True)
        soak.report_failure()
        return 1
    if args.expect_leak:
        print("soak: FAILED: --expect-leak was given but every assertion held "
              "(the leak was not caught)", file=sys.stderr, flush=True)
        soak.report_failure()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
