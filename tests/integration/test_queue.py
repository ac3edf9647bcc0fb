"""Many fetchd instances consume one Redis Streams queue (--queue, issue 16).

Every test starts a private `redis-server` (its own loopback port, config
file and directory, append-only file on), real `fetchd` processes with
`--queue redis://127.0.0.1:PORT/STREAM?...`, and real HTTP servers (nginx from
fetchtest, the scripted FaultServer for slow downloads). Entries are added and
results read with a small RESP client written on the standard library.

What is checked: every entry has exactly one result per delivery and the
results stream holds them all; kill -9 of an instance loses nothing and
duplicates at most what it held; Redis stopped for 5 s and started again loses
nothing and every instance reconnects; malformed entries are failed and acked;
a job longer than claim_idle is not stolen; max_deliveries fails an entry;
SIGTERM hands back what has not started; the password appears nowhere; live
counts (queue entries, Redis connections, jobs, connections) come back to
their baseline.

FETCHD_QUEUE_N sets the size of the big run (default 20000). The closing
note's measurements: `python3 test_queue.py measure [N]` (see the bottom).
"""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import unittest

from ctltest import ControlTestCase, Fetchd
from faultserver import FaultServer
from fetchtest import SLOWDOWN, Nginx, free_port, missing_tools, remove_tree, require_tool, tmpdir

BIG_N = int(os.environ.get("FETCHD_QUEUE_N", "20000"))
REDIS_START_TIMEOUT = 10.0
WAIT_LIMIT = 120.0 * SLOWDOWN


# ---- a RESP client (standard library only) ---------------------------------------


class RespError(Exception):
    pass


class Resp:
    """One connection to Redis; replies parsed into str/int/list/None, errors
    as RespError objects (raised by command(), returned by pipeline())."""

    def __init__(self, port, password=None, timeout=30.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = bytearray()
        if password is not None:
            self.command("AUTH", password)

    def close(self):
        self.sock.close()

    @staticmethod
    def encode(args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return line
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("redis closed the connection")
            self.buf += data

    def _exact(self, n):
        while len(self.buf) < n + 2:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("redis closed the connection")
            self.buf += data
        out = bytes(self.buf[:n])
        del self.buf[: n + 2]
        return out

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode("utf-8", "replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise ConnectionError("not RESP: %r" % line)

    def pipeline(self, commands):
        self.sock.sendall(b"".join(self.encode(c) for c in commands))
        return [self._reply() for _ in commands]

    def command(self, *args):
        reply = self.pipeline([args])[0]
        if isinstance(reply, RespError):
            raise reply
        return reply


# ---- a private redis-server -------------------------------------------------------


class RedisServer:
    """redis-server on 127.0.0.1:<free port>, its own config and directory;
    the append-only file keeps the streams across a stop and start."""

    def __init__(self, password=None):
        self.dir = tmpdir("redis-")
        self.port = free_port()
        self.password = password
        self.proc = None
        self.conf = os.path.join(self.dir, "redis.conf")
        lines = ["bind 127.0.0.1", "port %d" % self.port, "dir %s" % self.dir,
                 "daemonize no", "save \"\"", "appendonly yes", "appendfsync everysec",
                 "logfile %s" % os.path.join(self.dir, "redis.log"), "databases 4"]
        if password:
            lines.append("requirepass %s" % password)
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start(self):
        self.proc = subprocess.Popen(["redis-server", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + REDIS_START_TIMEOUT * SLOWDOWN
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited at startup:\n" + self.log())
            try:
                c = self.client()
                c.command("PING")
                c.close()
                return self
            except (OSError, RespError):
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer on port %d" % self.port)

    def stop(self):
        """SIGTERM: Redis writes its append-only file and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def cleanup(self):
        self.stop()
        remove_tree(self.dir)

    def log(self):
        try:
            with open(os.path.join(self.dir, "redis.log"), errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def client(self):
        return Resp(self.port, self.password)

    def url(self, stream="jobs", password=None, **params):
        auth = ":%s@" % password if password else ""
        q = "&".join("%s=%s" % kv for kv in sorted(params.items()))
        return "redis://%s127.0.0.1:%d/%s%s" % (auth, self.port, stream, "?" + q if q else "")


# ---- helpers ----------------------------------------------------------------------


def metrics_port(daemon):
    m = daemon.wait_log(r"metrics: listening on \S+ \(port (\d+)\)")
    if not m:
        raise AssertionError("no metrics port in the log" + daemon.log_tail())
    return int(m.group(1))


def scrape(daemon):
    """The /metrics page as text."""
    conn = http.client.HTTPConnection("127.0.0.1", daemon.metrics_port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def queue_figures(daemon):
    """{"read": n, "acked": n, "claimed": n, "failed": n, "pending": n,
    "connected": n, "reconnects": n, "cpu": s} from /metrics."""
    page = scrape(daemon)
    out = {}
    for m in re.finditer(r'^fetchd_queue_entries_total\{result="(\w+)"\} (\d+)$', page, re.M):
        out[m.group(1)] = int(m.group(2))
    for key in ("pending", "connected", "reconnects_total"):
        m = re.search(r"^fetchd_queue_%s (\d+)$" % key, page, re.M)
        out[key.replace("_total", "")] = int(m.group(1)) if m else None
    m = re.search(r"^process_cpu_seconds_total ([\d.]+)$", page, re.M)
    out["cpu"] = float(m.group(1)) if m else 0.0
    return out


def wait_for(pred, what, limit=WAIT_LIMIT, ctx=lambda: ""):
    """Polls pred (bounded) until it returns a true value, which it returns."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %s%s" % (what, ctx()))


def add_entries(redis, stream, jobs, batch=1000):
    """XADDs one entry per job (a dict, or raw field list); returns the ids in order."""
    c = redis.client()
    ids = []
    try:
        for i in range(0, len(jobs), batch):
            cmds = []
            for job in jobs[i:i + batch]:
                fields = job if isinstance(job, list) else ["job", json.dumps(job)]
                cmds.append(["XADD", stream, "*"] + fields)
            for reply in c.pipeline(cmds):
                if isinstance(reply, RespError):
                    raise reply
                ids.append(reply)
    finally:
        c.close()
    return ids


def read_results(redis, stream):
    """Every result: a list of {"entry", "consumer", "result" (parsed)}."""
    c = redis.client()
    out, start = [], "-"
    try:
        for _ in range(100000):
            page = c.command("XRANGE", stream, start, "+", "COUNT", 5000)
            if not page:
                return out
            for rid, fields in page:
                f = dict(zip(fields[::2], fields[1::2]))
                out.append({"entry": f.get("entry"), "consumer": f.get("consumer"),
                            "result": json.loads(f["result"])})
            start = "(" + page[-1][0]
    finally:
        c.close()
    raise AssertionError("XRANGE paging did not end")


def xlen(redis, stream):
    c = redis.client()
    try:
        return c.command("XLEN", stream)
    finally:
        c.close()


def pending_count(redis, stream, group="fetchd"):
    c = redis.client()
    try:
        return c.command("XPENDING", stream, group)[0]
    finally:
        c.close()


@unittest.skipIf(missing_tools(("redis-server", "redis-server"), ("nginx", "nginx-light")),
                 missing_tools(("redis-server", "redis-server"), ("nginx", "nginx-light")))
class QueueTestCase(ControlTestCase):

    @classmethod
    def setUpClass(cls):
        cls.nginx = Nginx().start()

    @classmethod
    def tearDownClass(cls):
        cls.nginx.stop()

    def setUp(self):
        require_tool(self, "redis-server", "redis-server")

    def start_redis(self, password=None):
        r = RedisServer(password)
        self.addCleanup(r.cleanup)
        r.start()
        return r

    def start_instance(self, url, args=(), baseline=True):
        """A fetchd consuming url; once both its connections are up, its
        baseline is taken and the test's end checks every count against it."""
        d = Fetchd(["--queue", url, "--idle-timeout", "1"] + list(args))
        self.addCleanup(d.cleanup)
        d.wait_ready()
        d.metrics_port = metrics_port(d)
        wait_for(lambda: queue_figures(d)["connected"] == 1, "the queue to connect",
                 ctx=d.log_tail)
        if baseline:
            self.addCleanup(self.check_clean_end, d, self.take_baseline(d))
        return d

    def assert_one_result_each(self, results, ids, state="done"):
        by_entry = {}
        for r in results:
            by_entry.setdefault(r["entry"], []).append(r)
        self.assertEqual(set(by_entry), set(ids))
        dups = {k: len(v) for k, v in by_entry.items() if len(v) != 1}
        self.assertEqual(dups, {}, "entries with more than one result")
        for r in results:
            self.assertEqual(r["result"]["state"], state, r)
        return by_entry


class TestQueue(QueueTestCase):

    def test_three_instances_share_one_stream(self):
        redis = self.start_redis()
        url = redis.url(create=1, claim_idle=30000)
        daemons = [self.start_instance(url) for _ in range(3)]
        jobs = [{"url": self.nginx.url("/small.txt"), "labels": {"n": i}} for i in range(BIG_N)]
        t0 = time.monotonic()
        ids = add_entries(redis, "jobs", jobs)
        wait_for(lambda: xlen(redis, "jobs:results") >= BIG_N, "%d results" % BIG_N,
                 limit=WAIT_LIMIT + BIG_N / 100.0)
        elapsed = time.monotonic() - t0
        # Every ack lands right after its result: wait for the last ones.
        wait_for(lambda: pending_count(redis, "jobs") == 0, "no pending entry")
        results = read_results(redis, "jobs:results")
        self.assertEqual(len(results), BIG_N)
        by_entry = self.assert_one_result_each(results, ids)
        n_of = dict(zip(ids, range(BIG_N)))
        for entry, (r,) in by_entry.items():
            self.assertEqual(r["result"]["labels"], {"n": n_of[entry]}, r)
            self.assertEqual(r["result"]["http_status"], 200, r)
        figures = [queue_figures(d) for d in daemons]
        self.assertEqual(sum(f["read"] for f in figures), BIG_N, figures)
        self.assertEqual(sum(f["acked"] for f in figures), BIG_N, figures)
        for f in figures:
            self.assertGreater(f["read"], 0, "an instance took no entry: %r" % figures)
            self.assertEqual(f["pending"], 0, figures)
            self.assertEqual(f["failed"], 0, figures)
        consumers = {r["consumer"] for r in results}
        self.assertEqual(len(consumers), 3, consumers)
        sys.stderr.write("\n[queue] %d entries through 3 instances in %.1f s (%.0f/s)\n"
                         % (BIG_N, elapsed, BIG_N / elapsed))

    def test_kill_9_loses_nothing(self):
        redis = self.start_redis()
        url = redis.url(create=1, claim_idle=1000)
        with FaultServer() as slow:
            victim = self.start_instance(url, ["--max-running", "8"], baseline=False)
            others = [self.start_instance(url, ["--max-running", "8"]) for _ in range(2)]
            n = 240
            jobs = [{"url": slow.url("/drip?bytes=3&interval_ms=100"), "labels": {"n": i}}
                    for i in range(n)]
            ids = add_entries(redis, "jobs", jobs)
            wait_for(lambda: queue_figures(victim)["acked"] >= 5, "the victim to ack some",
                     ctx=victim.log_tail)
            os.killpg(victim.proc.pid, signal.SIGKILL)
            victim.proc.wait(10)
            victim.returncode = "killed by the test"
            # The dead consumer (hostname-pid) and the entries it held, unacked.
            c = redis.client()
            info = [dict(zip(x[::2], x[1::2]))
                    for x in c.command("XINFO", "CONSUMERS", "jobs", "fetchd")]
            c.close()
            held = next(x["pending"] for x in info
                        if x["name"].endswith("-%d" % victim.proc.pid))
            self.assertGreater(held, 0, "the victim held nothing when killed")
            wait_for(lambda: pending_count(redis, "jobs") == 0 and
                     len({r["entry"] for r in read_results(redis, "jobs:results")}) == n,
                     "every entry to have a result")
        results = read_results(redis, "jobs:results")
        entries = [r["entry"] for r in results]
        self.assertEqual(set(entries), set(ids))
        duplicates = len(entries) - len(set(entries))
        self.assertLessEqual(duplicates, held)
        claimed = sum(queue_figures(d)["claimed"] for d in others)
        self.assertGreaterEqual(claimed, held - duplicates)
        for r in results:
            self.assertEqual(r["result"]["state"], "done", r)
        sys.stderr.write("\n[queue] kill -9: %d entries held by the victim, %d claimed by the "
                         "others, %d duplicate results of %d entries\n"
                         % (held, claimed, duplicates, n))

    def test_redis_restart_loses_nothing(self):
        redis = self.start_redis()
        url = redis.url(create=1, claim_idle=30000)
        with FaultServer() as slow:
            daemons = [self.start_instance(url, ["--max-running", "16"]) for _ in range(3)]
            n = 240
            jobs = [{"url": slow.url("/drip?bytes=3&interval_ms=100"), "labels": {"n": i}}
                    for i in range(n)]
            ids = add_entries(redis, "jobs", jobs)
            wait_for(lambda: xlen(redis, "jobs:results") >= n // 4, "a quarter of the results")
            redis.stop()
            for d in daemons:
                wait_for(lambda: queue_figures(d)["connected"] == 0, "the loss to be seen",
                         ctx=d.log_tail)
            # Redis stays away 5 s; the jobs that were running go on meanwhile.
            time.sleep(5)
            during = [queue_figures(d) for d in daemons]
            redis.start()
            for d in daemons:
                wait_for(lambda: queue_figures(d)["connected"] == 1, "a reconnect",
                         ctx=d.log_tail)
            wait_for(lambda: pending_count(redis, "jobs") == 0 and
                     len({r["entry"] for r in read_results(redis, "jobs:results")}) == n,
                     "every entry to have a result", ctx=lambda: redis.log())
        results = read_results(redis, "jobs:results")
        entries = [r["entry"] for r in results]
        self.assertEqual(set(entries), set(ids))
        duplicates = len(entries) - len(set(entries))
        reconnects = [queue_figures(d)["reconnects"] for d in daemons]
        for rc in reconnects:
            self.assertGreaterEqual(rc, 2, "both connections of every instance reconnect")
        sys.stderr.write("\n[queue] redis restart: %d entries, %d duplicate results, held "
                         "while away %r, reconnects %r\n"
                         % (n, duplicates, [f["pending"] for f in during], reconnects))
        # Only a result written whose ack was lost with Redis can come twice.
        self.assertLessEqual(duplicates, sum(f["pending"] for f in during))

    def test_malformed_entries_fail_and_are_acked(self):
        redis = self.start_redis()
        d = self.start_instance(redis.url(create=1))
        good = {"url": self.nginx.url("/small.txt")}
        entries = [["job", "not json"], ["other", "x"], ["job", "[1, 2]"],
                   ["job", json.dumps({"url": self.nginx.url("/"), "retry": 3})],
                   ["job", json.dumps({"url": "ftp://127.0.0.1/x"})],
                   ["job", json.dumps(good)]]
        ids = add_entries(redis, "jobs", entries)
        wait_for(lambda: xlen(redis, "jobs:results") >= len(ids) and
                 pending_count(redis, "jobs") == 0, "every result and ack")
        results = {r["entry"]: r["result"] for r in read_results(redis, "jobs:results")}
        self.assertEqual(set(results), set(ids))
        for entry in ids[:5]:
            self.assertEqual(results[entry]["state"], "failed", results[entry])
            self.assertEqual(results[entry]["error"]["code"], "invalid_request", results[entry])
        self.assertIn("retry", results[ids[3]]["error"]["message"])
        self.assertEqual(results[ids[4]]["url"], "ftp://127.0.0.1/x")
        self.assertEqual(results[ids[5]]["state"], "done", results[ids[5]])
        f = queue_figures(d)
        self.assertEqual((f["read"], f["acked"], f["failed"], f["pending"]), (6, 6, 5, 0), f)
        with d.client() as c:
            self.assertEqual(c.result("stats")["queue"],
                             {"read": 6, "acked": 6, "claimed": 0, "failed": 5, "pending": 0,
                              "connected": True, "reconnects_total": 0})

    def test_max_inflight_bounds_what_an_instance_holds(self):
        # Two entries held at a time, acks included: each ack makes room for
        # the next read, so the stream drains without any other event.
        redis = self.start_redis()
        d = self.start_instance(redis.url(create=1, max_inflight=2))
        ids = add_entries(redis, "jobs", [{"url": self.nginx.url("/small.txt")}] * 12)
        wait_for(lambda: xlen(redis, "jobs:results") >= 12 and
                 pending_count(redis, "jobs") == 0, "all twelve", limit=30 * SLOWDOWN,
                 ctx=d.log_tail)
        self.assert_one_result_each(read_results(redis, "jobs:results"), ids)

    def test_long_job_is_not_stolen(self):
        redis = self.start_redis()
        url = redis.url(create=1, claim_idle=1000)
        with FaultServer() as slow:
            a = self.start_instance(url)
            b = self.start_instance(url)
            # 3.2 s: more than three times claim_idle.
            ids = add_entries(redis, "jobs", [{"url": slow.url("/drip?bytes=4&interval_ms=800")}])
            wait_for(lambda: xlen(redis, "jobs:results") >= 1, "the result", ctx=a.log_tail)
            wait_for(lambda: pending_count(redis, "jobs") == 0, "the ack")
            self.assertEqual(slow.path_hits("/drip"), 1, "the job ran more than once")
        results = read_results(redis, "jobs:results")
        self.assertEqual([r["entry"] for r in results], ids)
        self.assertEqual(results[0]["result"]["state"], "done", results)
        self.assertGreaterEqual(results[0]["result"]["timings"]["total_ms"], 2000, results)
        for d in (a, b):
            self.assertEqual(queue_figures(d)["claimed"], 0, d.log_tail())

    def test_max_deliveries_fails_an_entry(self):
        redis = self.start_redis()
        c = redis.client()
        self.addCleanup(c.close)
        c.command("XGROUP", "CREATE", "jobs", "fetchd", "0", "MKSTREAM")
        poison, ok = add_entries(redis, "jobs", [{"url": self.nginx.url("/small.txt")}] * 2)
        # Two consumers that died: the first entry was delivered twice, the
        # second once; both are left idle.
        c.command("XREADGROUP", "GROUP", "fetchd", "ghost1", "COUNT", "2", "STREAMS", "jobs", ">")
        c.command("XCLAIM", "jobs", "fetchd", "ghost2", "0", poison)
        self.assertEqual([p[3] for p in c.command("XPENDING", "jobs", "fetchd", "-", "+", 10)],
                         [2, 1])
        d = self.start_instance(redis.url(claim_idle=300, max_deliveries=2))
        wait_for(lambda: xlen(redis, "jobs:results") >= 2 and
                 pending_count(redis, "jobs") == 0, "both results and acks", ctx=d.log_tail)
        results = {r["entry"]: r["result"] for r in read_results(redis, "jobs:results")}
        self.assertEqual(results[poison]["state"], "failed", results)
        self.assertEqual(results[poison]["error"]["code"], "max_deliveries", results)
        self.assertEqual(results[ok]["state"], "done", results)
        f = queue_figures(d)
        self.assertEqual((f["claimed"], f["failed"], f["acked"]), (1, 1, 2), f)

    def test_sigterm_finishes_running_and_hands_back_the_rest(self):
        redis = self.start_redis()
        url = redis.url(create=1, claim_idle=500, max_inflight=6)
        with FaultServer() as slow:
            first = self.start_instance(url, ["--max-running", "2"], baseline=False)
            jobs = [{"url": slow.url("/drip?bytes=3&interval_ms=300"), "labels": {"n": i}}
                    for i in range(6)]
            ids = add_entries(redis, "jobs", jobs)
            wait_for(lambda: queue_figures(first)["read"] == 6, "six entries read")
            self.assertEqual(first.stop(signal.SIGTERM), 0, first.log_tail())
            log = first.log()
            self.assertIn("4 entries not started are handed back", log)
            self.assertEqual(xlen(redis, "jobs:results"), 2, log[-3000:])
            self.assertEqual(pending_count(redis, "jobs"), 4)
            second = self.start_instance(url)
            wait_for(lambda: xlen(redis, "jobs:results") >= 6 and
                     pending_count(redis, "jobs") == 0, "the rest", ctx=second.log_tail)
        self.assert_one_result_each(read_results(redis, "jobs:results"), ids)
        self.assertEqual(queue_figures(second)["claimed"], 4)

    def test_sigterm_past_the_grace_hands_back_running_jobs(self):
        redis = self.start_redis()
        url = redis.url(create=1, claim_idle=500)
        with FaultServer() as slow:
            first = self.start_instance(url, ["--max-running", "2", "--shutdown-grace", "1"],
                                        baseline=False)
            # About 4 s each: longer than the grace.
            ids = add_entries(redis, "jobs", [{"url": slow.url("/drip?bytes=4&interval_ms=1000"),
                                               "labels": {"n": i}} for i in range(2)])
            wait_for(lambda: slow.path_hits("/drip") == 2, "both jobs to start")
            self.assertEqual(first.stop(signal.SIGTERM), 0, first.log_tail())
            self.assertIn("queue: 2 entries left unacked", first.log())
            self.assertEqual(xlen(redis, "jobs:results"), 0, "a cut job wrote a result")
            self.assertEqual(pending_count(redis, "jobs"), 2)
            second = self.start_instance(url)
            wait_for(lambda: xlen(redis, "jobs:results") >= 2 and
                     pending_count(redis, "jobs") == 0, "the others to run them",
                     ctx=second.log_tail)
        self.assert_one_result_each(read_results(redis, "jobs:results"), ids)
        self.assertEqual(queue_figures(second)["claimed"], 2)

    def test_password_stays_secret(self):
        secret = "s3cret-Pw-for-fetchd"
        redis = self.start_redis(password=secret)
        d = self.start_instance(redis.url(create=1, password=secret, db=2))
        ids = add_entries(redis, "jobs", [{"url": self.nginx.url("/small.txt")}])
        # db=2: the entry added in db 0 is not seen; add it where fetchd reads.
        c = redis.client()
        c.command("SELECT", 2)
        entry = c.command("XADD", "jobs", "*", "job", json.dumps({"url": self.nginx.url("/")}))
        wait_for(lambda: c.command("XLEN", "jobs:results") == 1, "the result in db 2")
        results = c.command("XRANGE", "jobs:results", "-", "+")
        c.close()
        self.assertEqual(results[0][1][1], entry)
        self.assertEqual(xlen(redis, "jobs:results"), 0, ids)
        for text in (d.log(), scrape(d), json.dumps(results)):
            self.assertNotIn(secret, text)
        self.assertIn("redis://:***@127.0.0.1:%d/jobs" % redis.port, d.log())
        # A wrong password: refused, said once, and still no password in the log.
        bad = Fetchd(["--queue", redis.url(password="wrong-pass-xyz")])
        self.addCleanup(bad.cleanup)
        bad.wait_ready()
        wait_for(lambda: "refused the connection's setup" in bad.log(), "the refusal",
                 ctx=bad.log_tail)
        self.assertNotIn("wrong-pass-xyz", bad.log())

    def test_silent_redis_is_dropped_and_tried_again(self):
        # A port that accepts connections (the kernel's backlog) and never
        # answers: a Redis host gone silent. fetchd must not wait forever.
        silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        d = Fetchd(["--queue", "redis://127.0.0.1:%d/jobs" % port])
        self.addCleanup(d.cleanup)
        d.wait_ready()
        wait_for(lambda: d.log().count("no answer from") >= 2, "two silent connections dropped",
                 limit=60 * SLOWDOWN, ctx=d.log_tail)
        with d.client() as c:
            s = c.result("stats")
        self.assertLessEqual(s["objects"]["redis_conn"], 2, s)
        self.assertEqual(s["queue"]["connected"], False, s)

    def test_bad_urls_are_a_configuration_error(self):
        for url, says in (("rediss://127.0.0.1:6379/jobs", "out of scope"),
                          ("redis://127.0.0.1:6379/", "no stream"),
                          ("redis://127.0.0.1:6379/jobs?bogus=1", "unknown parameter"),
                          ("redis://127.0.0.1:99999/jobs", "HOST:PORT"),
                          ("redis://127.0.0.1/jobs?claim_idle=5", "claim_idle"),
                          ("http://127.0.0.1/jobs", "not a redis:// URL")):
            d = Fetchd(["--queue", url])
            self.addCleanup(d.cleanup)
            self.assertEqual(d.wait_exit(), 78, d.log_tail())
            self.assertIn(says, d.log(), url)

    def test_metrics_pass_promtool(self):
        promtool = require_tool(self, "promtool", "prometheus")
        redis = self.start_redis()
        d = self.start_instance(redis.url(create=1))
        page = scrape(d)
        for name in ("fetchd_queue_entries_total", "fetchd_queue_pending",
                     "fetchd_queue_connected", "fetchd_queue_reconnects_total"):
            self.assertIn("# TYPE %s " % name, page)
        self.assertIn('fetchd_objects{type="redis_conn"} 2', page)
        proc = subprocess.run([promtool, "check", "metrics"], input=page.encode(),
                              capture_output=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)


# ---- measurements for the closing note --------------------------------------------


def measure(n):
    """Entries/s through one stream with 1, 2 and 3 instances, and the CPU
    each instance used (process_cpu_seconds_total), against nginx."""
    with Nginx() as nginx:
        for k in (1, 2, 3):
            redis = RedisServer().start()
            daemons = []
            try:
                url = redis.url(create=1)
                for _ in range(k):
                    d = Fetchd(["--queue", url]).wait_ready()
                    d.metrics_port = metrics_port(d)
                    wait_for(lambda: queue_figures(d)["connected"] == 1, "connect")
                    daemons.append(d)
                cpu0 = [queue_figures(d)["cpu"] for d in daemons]
                rcpu0 = redis_cpu(redis)
                t0 = time.monotonic()
                add_entries(redis, "jobs", [{"url": nginx.url("/small.txt")}] * n)
                wait_for(lambda: xlen(redis, "jobs:results") >= n, "results", limit=3600)
                dt = time.monotonic() - t0
                cpu = [queue_figures(d)["cpu"] - c for d, c in zip(daemons, cpu0)]
                print("%d instance(s): %d entries in %.2f s = %.0f entries/s; CPU per instance "
                      "%s s; redis-server %.2f s" % (k, n, dt, n / dt,
                                                     ", ".join("%.2f" % c for c in cpu),
                                                     redis_cpu(redis) - rcpu0))
            finally:
                for d in daemons:
                    d.cleanup()
                redis.cleanup()


def redis_cpu(redis):
    c = redis.client()
    info = c.command("INFO", "cpu")
    c.close()
    f = dict(line.split(":", 1) for line in info.split("\r\n") if ":" in line)
    return float(f["used_cpu_user"]) + float(f["used_cpu_sys"])


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "measure":
        measure(int(sys.argv[2]) if len(sys.argv) > 2 else BIG_N)
    else:
        unittest.main()
