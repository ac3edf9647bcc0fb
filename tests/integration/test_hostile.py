"""Hostile clients on the control socket, against a real fetchd.

The JSON-RPC 2.0 specification's own examples (section 7) sent verbatim,
batches of every element type, oversize lines, byte-at-a-time clients,
subscribers dropped in the middle of an event fan-out, clients that vanish
while they are owed answers, and one client piling up waits and
subscriptions until the per-client caps refuse more.

Every test runs a well-behaved client beside the hostile ones (`Served`: a
thread that keeps calling methods and checks each answer) and ends with
every count back where it was after the warm-up: each `fetchd_objects`
type, fetchd's, libuv's and jansson's heap blocks, buffers, connections and
control clients. The daemon must still be running then: a sanitizer build
(-DFETCHD_ASAN=ON -DFETCHD_UBSAN=ON) turns any invalid access into a crash,
and the test reports it with the daemon's log.

The daemons run with --max-running 1 and --retain-jobs 0: one job that
never ends (`blocker`, from the fault server) holds the only running slot,
so every other job stays queued and events are made by submit and cancel
alone, without network traffic; and no finished job is retained, so the
heap returns exactly to its baseline.
"""

import json
import socket
import threading
import time

from ctltest import (APP_ERROR, HELD_MAX, INVALID_PARAMS, INVALID_REQUEST, IO_TIMEOUT,
                     LINE_MAX, METHOD_NOT_FOUND, OUTPUT_MAX, SLOWDOWN, SUBS_MAX, WAITS_MAX,
                     ControlTestCase, RpcClient, spec)
from faultserver import FaultServer

ARGS = ["--idle-timeout", "1", "--retain-jobs", "0", "--max-running", "1"]
NEVER_SECONDS = 600
PAD = "p" * 2000  # a label that makes each job object about 2 KiB
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def rpc(method, rid=None, params=None):
    msg = {"jsonrpc": "2.0", "method": method}
    if rid is not None:
        msg["id"] = rid
    if params is not None:
        msg["params"] = params
    return msg


def line(obj):
    return json.dumps(obj).encode() + b"\n"


class Served:
    """A well-behaved client served throughout a hostile test: a thread that
    alternates version and stats calls (bounded in count and time) and
    records any failure or wrong answer."""

    LIMIT_CALLS = 100000
    LIMIT_SECONDS = 600 * SLOWDOWN

    def __init__(self, path):
        self.client = RpcClient(path)
        self.stopping = threading.Event()
        self.calls = 0
        self.errors = []
        self.thread = threading.Thread(target=self._run, daemon=True, name="served")
        self.thread.start()

    def _run(self):
        deadline = time.monotonic() + self.LIMIT_SECONDS
        try:
            for i in range(self.LIMIT_CALLS):
                if self.stopping.is_set() or time.monotonic() > deadline:
                    return
                if i % 2:
                    if self.client.result("version").get("protocol") != 1:
                        self.errors.append("version answered wrongly")
                elif "objects" not in self.client.result("stats"):
                    self.errors.append("stats without objects")
                self.calls += 1
                self.stopping.wait(0.005)
        except Exception as exc:  # reported by finish()
            self.errors.append(repr(exc))

    def stop(self):
        self.stopping.set()
        self.thread.join(IO_TIMEOUT)
        self.client.close()

    def finish(self, test):
        """Stops the thread after at least two answered calls; fails the test
        if any call failed. The client is closed afterwards."""
        deadline = time.monotonic() + IO_TIMEOUT
        while self.calls < 2 and not self.errors and time.monotonic() < deadline:
            time.sleep(0.01)
        self.stopping.set()
        self.thread.join(IO_TIMEOUT)
        test.assertFalse(self.thread.is_alive(), "the served client's thread hangs")
        test.assertEqual(self.errors, [], "the well-behaved client was not served"
                         + test.ctx())
        test.assertGreaterEqual(self.calls, 2)
        test.assertEqual(self.client.result("version")["protocol"], 1)
        self.client.close()


class HostileCase(ControlTestCase):
    """A fresh fetchd per test, warmed up, with its counts taken as the
    baseline; the test's end checks that they are all back."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.srv = FaultServer().start()
        cls.addClassCleanup(cls.srv.stop)

    def setUp(self):
        self.daemon = self.start_fetchd(ARGS, check_end=False)
        self.c = self.connect()
        # Warm-up: one job runs and is cancelled, so the connection, origin
        # and buffer caches exist before the baseline is taken.
        jid = self.submit(self.c, [self.never()])[0]
        self.wait_state(self.c, jid, "running")
        self.c.result("cancel", {"id": jid})
        self.baseline = self.settled(self.c)
        self.addCleanup(self.check_back_at_baseline)
        self.blocker = self.submit(self.c, [self.never()])[0]
        self.wait_state(self.c, self.blocker, "running")
        self.served = Served(self.daemon.socket)
        self.addCleanup(self.served.stop)

    def never(self, **fields):
        return spec(self.srv.url("/never"), timeout=NEVER_SECONDS, **fields)

    # -- counts ---------------------------------------------------------------------------

    @staticmethod
    def figures(s):
        out = {"control_clients": s["control_clients"], "jobs": s["jobs"]}
        for k, v in s["objects"].items():
            out["objects." + k] = v
        for comp, h in s["heap"].items():
            out["heap_blocks." + comp] = h["blocks"]
        for k, v in s["connections"].items():
            out["connections." + k] = v
        out["buffers.in_use"] = s["buffers"]["in_use"]
        return out

    def settled(self, client, limit=20.0):
        """Stats once only this client is connected and no connection is
        open (closes are seen asynchronously); returns its figures."""
        deadline = time.monotonic() + limit * SLOWDOWN
        while True:
            s = self.stats(client)
            if (s["control_clients"] == 1 and not any(s["connections"].values())
                    and not s["jobs"]["queued"] and not s["jobs"]["running"]):
                return self.figures(s)
            if time.monotonic() > deadline:
                self.fail("fetchd did not settle: %r%s" % (s, self.ctx()))
            time.sleep(0.05)

    def assert_alive(self):
        rc = self.daemon.proc.poll()
        log = self.daemon.log()
        marks = [m for m in SANITIZER_MARKS if m in log]
        self.assertTrue(rc is None and not marks, "fetchd exited (status %r) or a sanitizer "
                        "reported %r%s" % (rc, marks, self.ctx()))

    def check_back_at_baseline(self, limit=30.0):
        self.assert_alive()
        c = self.c  # the client connected when the baseline was taken
        for state in ("queued", "running"):
            for job in self.list_all(c, state=state):
                c.call("cancel", {"id": job["id"]})
        deadline = time.monotonic() + limit * SLOWDOWN
        while True:
            now = self.figures(self.stats(c))
            diff = {k: (self.baseline.get(k), now.get(k))
                    for k in set(self.baseline) | set(now)
                    if self.baseline.get(k) != now.get(k)}
            if not diff:
                break
            if time.monotonic() > deadline:
                self.fail("counts not back at the baseline (baseline, now): %r%s"
                          % (diff, self.ctx()))
            time.sleep(0.1)
        self.assert_alive()

    # -- helpers --------------------------------------------------------------------------

    def submit_many(self, client, n, per_call=200, **fields):
        ids = []
        for start in range(0, n, per_call):
            specs = [self.never(labels={"n": str(i), "pad": PAD}, **fields)
                     for i in range(start, min(n, start + per_call))]
            ids += self.submit(client, specs)
        return ids

    def cancel_all(self, client, ids, per_batch=200):
        """Cancels jobs with batches of cancel calls; returns the states."""
        states = []
        for start in range(0, len(ids), per_batch):
            chunk = ids[start:start + per_batch]
            client.send([rpc("cancel", "c%d" % i, {"id": jid}) for i, jid in enumerate(chunk)])
            answers = client._take(lambda m: isinstance(m, list))
            self.assertEqual(len(answers), len(chunk))
            states += [a.get("result", {}).get("state") for a in answers]
        return states

    def until_marker(self, client, marker):
        """Every message read before the answer to a `version` call with id
        marker (sent now); fetchd answers a connection's lines in order,
        except for deferred waits."""
        client.send(rpc("version", marker))
        before = []
        for _ in range(10000):
            msg = client.read_message()
            self.assertIsNotNone(msg, "closed before the marker" + self.ctx())
            if isinstance(msg, dict) and msg.get("id") == marker:
                self.assertIn("result", msg)
                return before
            before.append(msg)
        self.fail("no marker answer")

    def assert_rpc_error(self, resp, code, rid):
        self.assertIsInstance(resp, dict, resp)
        self.assertEqual(resp.get("jsonrpc"), "2.0", resp)
        self.assertIn("id", resp, resp)
        self.assertEqual(resp["id"], rid, resp)
        self.assertNotIn("result", resp, resp)
        self.assertEqual(resp["error"]["code"], code, resp)
        self.assertIsInstance(resp["error"]["message"], str, resp)


# ---- the specification's examples --------------------------------------------------------

# JSON-RPC 2.0 specification, section 7, verbatim (its multi-line batches on
# one line, as this protocol's framing wants), each with the answer the
# specification gives. fetchd has none of the example methods (subtract,
# update, foobar, sum, notify_hello, get_data ...), so where the
# specification shows a result, the conforming answer here is a -32601
# error with the same id; errors must match the specification exactly.
NOT_HERE = "method not found here"
SPEC_EXAMPLES = [
    ("rpc call with positional parameters",
     b'{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}',
     {"jsonrpc": "2.0", "result": 19, "id": 1}),
    ("rpc call with positional parameters, swapped",
     b'{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}',
     {"jsonrpc": "2.0", "result": -19, "id": 2}),
    ("rpc call with named parameters",
     b'{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, '
     b'"id": 3}',
     {"jsonrpc": "2.0", "result": 19, "id": 3}),
    ("rpc call with named parameters, reordered",
     b'{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, '
     b'"id": 4}',
     {"jsonrpc": "2.0", "result": 19, "id": 4}),
    ("a notification", b'{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}', None),
    ("a notification without params", b'{"jsonrpc": "2.0", "method": "foobar"}', None),
    ("rpc call of non-existent method", b'{"jsonrpc": "2.0", "method": "foobar", "id": "1"}',
     {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"}),
    ("rpc call with invalid JSON",
     b'{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]',
     {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}),
    ("rpc call with invalid Request object", b'{"jsonrpc": "2.0", "method": 1, "params": "bar"}',
     {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}),
    ("rpc call Batch, invalid JSON",
     b'[ {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"}, '
     b'{"jsonrpc": "2.0", "method" ]',
     {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}),
    ("rpc call with an empty Array", b"[]",
     {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}),
    ("rpc call with an invalid Batch (but not empty)", b"[1]",
     [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}]),
    ("rpc call with invalid Batch", b"[1,2,3]",
     [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}] * 3),
    ("rpc call Batch",
     b'[ {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"}, '
     b'{"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}, '
     b'{"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"}, '
     b'{"foo": "boo"}, '
     b'{"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"}, '
     b'{"jsonrpc": "2.0", "method": "get_data", "id": "9"} ]',
     [{"jsonrpc": "2.0", "result": 7, "id": "1"},
      {"jsonrpc": "2.0", "result": 19, "id": "2"},
      {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None},
      {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"},
      {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"}]),
    ("rpc call Batch (all notifications)",
     b'[ {"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]}, '
     b'{"jsonrpc": "2.0", "method": "notify_hello", "params": [7]} ]', None),
]


class SpecExamples(HostileCase):
    def check_answer(self, name, want, got):
        """got answers like want: same id; want's error code, or -32601 where
        the specification's server had the method."""
        self.assertEqual(got.get("jsonrpc"), "2.0", (name, got))
        self.assertIn("id", got, (name, got))
        self.assertEqual(got["id"], want["id"], (name, got))
        self.assertEqual(type(got["id"]), type(want["id"]), (name, got))
        self.assertEqual(len({"result", "error"} & set(got)), 1, (name, got))
        code = want["error"]["code"] if "error" in want else METHOD_NOT_FOUND[0]
        self.assertIn("error", got, (name, got))
        self.assertEqual(got["error"]["code"], code, (name, got))
        self.assertIsInstance(got["error"]["message"], str, (name, got))

    def test_section_7_examples(self):
        for n, (name, raw, want) in enumerate(SPEC_EXAMPLES):
            with self.subTest(example=name):
                self.c.send_raw(raw + b"\n")
                got = self.until_marker(self.c, "marker-%d" % n)
                if want is None:
                    self.assertEqual(got, [], "%s was answered" % name)
                    continue
                self.assertEqual(len(got), 1, (name, got))
                got = got[0]
                if isinstance(want, dict):
                    self.assertIsInstance(got, dict, (name, got))
                    self.check_answer(name, want, got)
                    continue
                # A batch: one array, an answer per element with an id (or
                # invalid), in any order (section 6); matched by id here.
                self.assertIsInstance(got, list, (name, got))
                self.assertEqual(len(got), len(want), (name, got))
                key = lambda r: json.dumps(r.get("id"))
                for w, g in zip(sorted(want, key=key), sorted(got, key=key)):
                    self.check_answer(name, w, g)
        self.served.finish(self)

    def test_examples_all_on_one_connection_pipelined(self):
        data = b"".join(raw + b"\n" for _, raw, _ in SPEC_EXAMPLES)
        self.c.send_raw(data * 20)
        answered = sum(1 for _, _, want in SPEC_EXAMPLES if want is not None) * 20
        got = self.until_marker(self.c, "end")
        self.assertEqual(len(got), answered)
        self.served.finish(self)


# ---- batches -----------------------------------------------------------------------------


class Batches(HostileCase):
    def test_every_element_type(self):
        ver = rpc("version", 1)
        elements = [
            ver,                                              # a call
            rpc("version"),                                   # a notification
            1, "x", None, True, {},                           # not requests
            [], [rpc("version", 2)], [[]],                    # nested arrays
            {"jsonrpc": "2.0", "method": "version", "id": {}},  # a bad id
            {"jsonrpc": "1.0", "method": "version", "id": 3},  # bad jsonrpc, id kept
            rpc("nope", 4),                                   # unknown method
            rpc("version", 5, [1]),                           # positional params
            rpc("version", params=[1]),                       # ... in a notification
            rpc("nope", params={"a": 1}),                     # unknown, notification
            rpc("status", 6, {"id": "0123456789abcdef"}),     # an app error
            rpc("wait", 7, {"id": self.blocker}),             # deferred until cancelled
            rpc("subscribe", 8, {"events": ["finished"], "ids": [self.blocker]}),
            rpc("wait", 9, {"id": self.blocker, "timeout": NEVER_SECONDS}),
        ]
        self.c.send(elements)
        other = self.connect()
        self.assertEqual(other.result("cancel", {"id": self.blocker})["state"], "cancelled")
        resp = self.c._take(lambda m: isinstance(m, list))
        ids = [r.get("id") for r in resp]
        self.assertEqual(ids, [1] + [None] * 9 + [3, 4, 5, 6, 7, 8, 9], resp)
        self.assertEqual(resp[0]["result"]["protocol"], 1)
        for r in resp[1:10]:
            self.assert_rpc_error(r, INVALID_REQUEST[0], None)
        self.assert_rpc_error(resp[10], INVALID_REQUEST[0], 3)
        self.assert_rpc_error(resp[11], METHOD_NOT_FOUND[0], 4)
        self.assert_rpc_error(resp[12], INVALID_PARAMS[0], 5)
        self.assert_error(resp[13], APP_ERROR, "not_found", rid=6)
        self.assertEqual(resp[14]["result"]["state"], "cancelled", resp[14])
        self.assertIsInstance(resp[15]["result"]["subscription"], int, resp[15])
        self.assertEqual(resp[16]["result"]["state"], "cancelled", resp[16])
        # The subscription made in the batch saw the job finish.
        self.assertEqual(self.c.notification()["event"], "finished")
        self.assertEqual(self.until_marker(self.c, "end"), [])
        self.c.result("unsubscribe", {"subscription": resp[15]["result"]["subscription"]})
        self.served.finish(self)

    def test_empty_and_nested_arrays(self):
        cases = [(b"[]", "object"), (b"[[]]", 1), (b"[[],[[]],[[[]]]]", 3),
                 (b"[[1,2],{\"jsonrpc\":\"2.0\"}]", 2), (b"[" * 100 + b"]" * 100, 1)]
        for raw, want in cases:
            with self.subTest(raw=raw[:20]):
                self.c.send_raw(raw + b"\n")
                got = self.until_marker(self.c, "m")
                self.assertEqual(len(got), 1, got)
                if want == "object":
                    self.assert_rpc_error(got[0], INVALID_REQUEST[0], None)
                else:
                    self.assertEqual(len(got[0]), want, got)
                    for r in got[0]:
                        self.assert_rpc_error(r, INVALID_REQUEST[0], None)
        self.served.finish(self)

    def test_notification_only_batches(self):
        batches = [[rpc("version")] * 50, [rpc("nope", params=[1])] * 50,
                   [rpc("wait", params={"id": self.blocker})] * 50,
                   [rpc("cancel", params=["x"]), rpc("stats"), rpc("list", params={"limit": 0})]]
        for b in batches:
            self.c.send(b)
        self.assertEqual(self.until_marker(self.c, "m"), [])
        self.assertEqual(self.stats(self.c)["objects"].get("ctl_wait", 0), 0)
        self.served.finish(self)

    def test_large_mixed_batches(self):
        kinds = [lambda i: rpc("version", i), lambda i: rpc("version"), lambda i: i,
                 lambda i: [i], lambda i: rpc("nope", i, [i]),
                 lambda i: rpc("wait", i, {"id": self.blocker}),
                 lambda i: rpc("status", i, {"id": self.blocker})]
        answered = {0, 2, 3, 4, 5, 6}
        n = 3000
        self.c.send([kinds[i % len(kinds)](i) for i in range(n)])
        self.c.send([kinds[i % len(kinds)](i) for i in range(n)])
        self.assertEqual(self.until_marker(self.c, "m"), [], "answered before its waits")
        self.c.result("cancel", {"id": self.blocker})
        for _ in range(2):
            resp = self.c._take(lambda m: isinstance(m, list))
            self.assertEqual(len(resp), sum(1 for i in range(n) if i % len(kinds) in answered))
            waits = [r for r in resp if "result" in r and r["result"].get("state") == "cancelled"
                     and r["id"] % len(kinds) == 5]
            self.assertEqual(len(waits), len(range(5, n, len(kinds))))
        self.served.finish(self)


    def test_batch_answer_over_the_output_limit(self):
        ids = self.submit_many(self.c, 1000)
        before = self.stats(self.c)["process_resident_memory_bytes"]
        with self.daemon.client() as big:
            # 60 pages of about 2.2 MiB each: 130 MiB of answers from an
            # 8 KiB line, were they all built.
            big.send([rpc("list", i, {"limit": 1000}) for i in range(60)])
            self.assertTrue(big.at_eof(), "the client was not dropped")
            self.assertLess(big.bytes_read, OUTPUT_MAX)
        # Were all 60 answers built, their text alone would be some 130 MiB.
        # The bound sits well under that and well over what the four pages
        # made before the drop cost in an ASan build, whose quarantine keeps
        # every freed block (the pages' trees) resident: about 64 MiB there.
        grown = self.stats(self.c)["process_resident_memory_bytes"] - before
        self.assertLess(grown, 96 << 20, "the batch's answers were built: RSS grew %d bytes"
                        % grown)
        self.assertRegex(self.daemon.log(), "over the output limit")
        self.assertEqual(len(self.cancel_all(self.c, ids)), len(ids))
        self.served.finish(self)


# ---- lines: oversize, slow ---------------------------------------------------------------


class Lines(HostileCase):
    def send_ignoring_close(self, client, data):
        try:
            client.send_raw(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def test_oversize_lines(self):
        body = json.dumps(rpc("version", 1)).encode()
        cases = [b"a" * (LINE_MAX + 1), b" " * (LINE_MAX + 1) + b"\n",
                 b"[" + b"1," * (LINE_MAX // 2) + b"1]\n",
                 body + b" " * (LINE_MAX - len(body) + 1) + b"\n"]
        for data in cases:
            with self.subTest(size=len(data)), self.daemon.client() as bad:
                self.send_ignoring_close(bad, data)
                resp = bad.read_message()
                self.assertIsNotNone(resp, "closed without line_too_long")
                self.assert_error(resp, INVALID_REQUEST[0], "line_too_long", rid=None)
                self.assertTrue(bad.at_eof(), "not closed after line_too_long")
        with self.daemon.client() as exact:
            exact.send_raw(body + b" " * (LINE_MAX - len(body)) + b"\n")
            self.assertEqual(exact.response(1)["result"]["protocol"], 1)
        self.served.finish(self)

    def test_reader_lets_go_of_big_and_escaped_lines(self):
        """The lines are parsed into one token array the daemon reuses; a line of half a
        million values grows it to megabytes, and escaped strings make it decode into a
        second buffer. After either, the daemon's heap is back where it was (blocks
        exactly, at cleanup; bytes within 64 KiB here), and the answers are right."""
        before = self.stats(self.c)["heap"]["fetchd"]["bytes"]
        body = json.dumps(rpc("version", 1)).encode()[:-1]
        values = b"0," * ((LINE_MAX - len(body) - 64) // 2) + b"0"
        escaped = (b'{"jsonrpc":"2.0","method":"version","id":"\\u0041\\n",'
                   b'"params":{"x":"a\\"b\\u00e9\\ud83d\\ude00"}}\n')
        with self.daemon.client() as big:
            big.send_raw(body + b',"params":{"x":[' + values + b"]}}\n")
            self.assertEqual(big.response(1)["result"]["protocol"], 1)
            big.send_raw(escaped)
            self.assertEqual(big.response("A\n")["result"]["protocol"], 1)
        after = self.stats(self.c)["heap"]["fetchd"]["bytes"]
        self.assertLess(after - before, 64 * 1024, "fetchd kept %d bytes after the big line"
                        % (after - before))
        self.served.finish(self)

    def test_oversize_line_sent_slowly_then_vanish(self):
        with self.daemon.client() as bad:
            for _ in range(LINE_MAX // 65536):
                bad.send_raw(b"x" * 65536)
            for _ in range(16):
                self.send_ignoring_close(bad, b"x")
            resp = bad.read_message()
            self.assert_error(resp, INVALID_REQUEST[0], "line_too_long", rid=None)
        with self.daemon.client() as half:
            half.send_raw(b"x" * (LINE_MAX - 10))
        self.served.finish(self)

    def test_byte_at_a_time_clients(self):
        requests = line([rpc("version", 1), rpc("status", 2, {"id": self.blocker}),
                         rpc("subscribe", 3, {"events": ["queued"]}), rpc("version")])
        requests += line(rpc("wait", 4, {"id": self.blocker, "timeout": NEVER_SECONDS}))
        requests += b"\r\n" + line(rpc("list", 5, {"limit": 1}))
        errors, answers = [], [None] * 6

        def slow(k):
            try:
                with RpcClient(self.daemon.socket) as c:
                    for i in range(len(requests)):
                        c.send_raw(requests[i:i + 1])
                        time.sleep(0.0005)
                    batch = c._take(lambda m: isinstance(m, list))
                    answers[k] = ([r.get("id") for r in batch], c.response(5)["result"])
                    if k % 2:
                        c.send_raw(b'{"jsonrpc":"2.0","id":6,"meth')  # and vanishes mid-line
            except Exception as exc:  # reported below
                errors.append((k, repr(exc)))

        threads = [threading.Thread(target=slow, args=(k,), daemon=True) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(errors, [], self.ctx())
        for ids, listed in answers:
            self.assertEqual(ids, [1, 2, 3])
            self.assertEqual(len(listed["jobs"]), 1)
        self.served.finish(self)


# ---- subscribers dropped in the middle of a fan-out ---------------------------------------


class FanOut(HostileCase):
    def slow_subscriber(self, subscriptions):
        slow = RpcClient(self.daemon.socket)
        self.addCleanup(slow.close)
        for params in subscriptions:
            slow.result("subscribe", params)
        return slow

    def assert_dropped(self, slow):
        self.assertTrue(slow.at_eof(timeout=60 * SLOWDOWN),
                        "the slow subscriber was not disconnected")
        self.assertLess(slow.bytes_read, OUTPUT_MAX + 4 * 1024 * 1024)
        self.assertRegex(self.daemon.log(), "slow reader")

    def test_subscriber_dropped_mid_fanout(self):
        # Clients are walked newest first: `early` comes after the slow one
        # in the walk, `late` before it.
        early = self.connect()
        early_sub = early.result("subscribe", {"events": ["finished"],
                                               "ids": [self.blocker]})["subscription"]
        slow = self.slow_subscriber([{}, {"events": ["queued"]}, {"ids": [self.blocker]},
                                     {"events": ["queued", "finished"]}])
        late = self.connect()
        late.result("subscribe", {"events": ["finished"], "ids": [self.blocker]})
        submitter = self.connect()
        # About 6000 queued events x 3 matching subscriptions x 2 KiB: the
        # slow reader's output passes 8 MiB during one fan-out.
        ids = self.submit_many(submitter, 6000)
        self.assert_dropped(slow)
        states = self.cancel_all(submitter, ids + [self.blocker])
        self.assertEqual(states, ["cancelled"] * len(states))
        for c in (early, late):
            ev = c.notification()
            self.assertEqual((ev["event"], ev["job"]["id"]), ("finished", self.blocker))
        self.assertEqual(early.result("unsubscribe", {"subscription": early_sub}), {"ok": True})
        self.served.finish(self)

    def test_subscriber_with_waits_dropped_while_answered(self):
        submitter = self.connect()
        ids = self.submit_many(submitter, 3000)
        slow = RpcClient(self.daemon.socket)
        self.addCleanup(slow.close)
        # Waits one per line and in batches, then subscriptions: nothing is
        # owed to it until the jobs finish.
        for jid in ids[:1500]:
            slow.request("wait", {"id": jid})
        for start in range(1500, 3000, 50):
            slow.send([rpc("wait", "b%d" % i, {"id": jid})
                       for i, jid in enumerate(ids[start:start + 50])])
        slow.result("subscribe", {"events": ["finished"]})
        slow.result("subscribe", {})
        self.assertEqual(self.stats(submitter)["objects"]["ctl_wait"], 3000)
        # Each cancel answers a wait and sends two events: the drop comes in
        # the middle of a job's waits and subscriptions.
        states = self.cancel_all(submitter, ids)
        self.assertEqual(states, ["cancelled"] * len(states))
        self.assert_dropped(slow)
        self.served.finish(self)

    def test_many_slow_subscribers(self):
        slows = [self.slow_subscriber([{}, {"events": ["queued"]}]) for _ in range(8)]
        submitter = self.connect()
        ids = self.submit_many(submitter, 4500)
        for s in slows:
            self.assert_dropped(s)
        self.cancel_all(submitter, ids)
        self.served.finish(self)


# ---- clients that vanish while they are owed answers --------------------------------------


class Vanishing(HostileCase):
    def test_close_right_after_a_batch_with_waits(self):
        queued = self.submit(self.c, [self.never() for _ in range(3)])
        half = []
        for k in range(40):
            c = RpcClient(self.daemon.socket)
            batch = [rpc("wait", 1, {"id": self.blocker}), rpc("version", 2),
                     rpc("wait", 3, {"id": queued[k % 3], "timeout": NEVER_SECONDS}),
                     rpc("subscribe", 4), rpc("wait", 5, {"id": self.blocker}),
                     rpc("status", 6, {"id": queued[0]})]
            data = line(batch) + line(rpc("wait", 7, {"id": queued[1]}))
            if k % 4 == 1:
                data += line(batch)
            c.send_raw(data)
            if k % 4 == 2:
                # Half-closed: still owed its answers (PROTOCOL.md section 1).
                c.sock.shutdown(socket.SHUT_WR)
                half.append(c)
                continue
            if k % 4 == 3:
                c.sock.shutdown(socket.SHUT_RDWR)
            c.close()
        # self.c, the served client and the half-closed ones; only the
        # half-closed ones' waits are left.
        self.wait_clients(self.c, 2 + len(half))
        for _ in range(100):
            if self.stats(self.c)["objects"].get("ctl_wait", 0) == 4 * len(half):
                break
            time.sleep(0.05)
        self.assertEqual(self.stats(self.c)["objects"].get("ctl_wait", 0), 4 * len(half))
        self.cancel_all(self.c, [self.blocker] + queued)
        for c in half:
            answers = c._take(lambda m: isinstance(m, list))
            self.assertEqual([a["id"] for a in answers], [1, 2, 3, 4, 5, 6], answers)
            self.assertEqual(c.response(7)["result"]["state"], "cancelled")
            c.close()
        # A half-closed subscriber stays until it closes, and fetchd (no
        # longer reading from it) sees that at its next write: an event.
        self.submit(self.c, [self.never()])
        self.wait_clients(self.c, 2)
        self.served.finish(self)

    def test_vanish_mid_answer(self):
        ids = self.submit_many(self.c, 1000)
        for k in range(10):
            c = RpcClient(self.daemon.socket)
            # Answers of about 2 MiB: the daemon is still writing them when
            # the client goes.
            c.send([rpc("list", 1, {"limit": 1000}), rpc("wait", "w", {"id": self.blocker})])
            c.send(rpc("list", "l", {"limit": 1000}))
            c.sock.recv(1000)
            c.close()
        self.wait_clients(self.c, 2)
        self.cancel_all(self.c, ids)
        self.served.finish(self)

    def test_waits_dropped_with_their_client(self):
        ids = self.submit(self.c, [self.never() for _ in range(10)])
        for k in range(10):
            c = RpcClient(self.daemon.socket)
            c.send([rpc("wait", i, {"id": jid}) for i, jid in enumerate(ids)])
            for jid in ids:
                c.request("wait", {"id": jid})
            c.result("version")
            c.close()
        self.cancel_all(self.c, ids)
        self.served.finish(self)


# ---- caps: waits and subscriptions per client ---------------------------------------------


class Caps(HostileCase):
    def open_waits(self, client, n, per_batch=1000):
        """Opens n waits on the blocker in batches; returns the count of lines."""
        for start in range(0, n, per_batch):
            client.send([rpc("wait", "w%d" % i, {"id": self.blocker})
                         for i in range(start, min(n, start + per_batch))])
        self.assertEqual(self.until_marker(client, "opened"), [])
        return (n + per_batch - 1) // per_batch

    def test_wait_cap(self):
        heavy = self.connect()
        before = self.stats(self.c)
        lines = self.open_waits(heavy, WAITS_MAX)
        now = self.stats(self.c)
        self.assertEqual(now["objects"]["ctl_wait"], WAITS_MAX)
        self.per_wait = ((now["heap"]["fetchd"]["bytes"] + now["heap"]["jansson"]["bytes"]
                          + now["heap"]["libuv"]["bytes"])
                         - (before["heap"]["fetchd"]["bytes"] + before["heap"]["jansson"]["bytes"]
                            + before["heap"]["libuv"]["bytes"])) / WAITS_MAX
        print("\nheap per open wait: %.0f bytes" % self.per_wait)
        err = self.assert_error(heavy.call("wait", {"id": self.blocker}), APP_ERROR,
                                "too_many_waits")
        self.assertIn(str(WAITS_MAX), err["message"])
        # In a batch the refusal takes its slot; the batch is not held.
        heavy.send([rpc("wait", "over", {"id": self.blocker}), rpc("version", "v")])
        resp = heavy._take(lambda m: isinstance(m, list))
        self.assert_error(resp[0], APP_ERROR, "too_many_waits", rid="over")
        self.assertEqual(resp[1]["id"], "v")
        # A wait on a finished job costs nothing and is still answered.
        done = self.submit(self.c, [self.never()])[0]
        self.c.result("cancel", {"id": done})
        self.assert_error(heavy.call("wait", {"id": done}), APP_ERROR, "not_found")
        # The cap is per client.
        rid = self.c.request("wait", {"id": self.blocker})
        self.assertEqual(self.stats(self.c)["objects"]["ctl_wait"], WAITS_MAX + 1)
        self.c.result("cancel", {"id": self.blocker})
        self.assertEqual(self.c.response(rid)["result"]["state"], "cancelled")
        for _ in range(lines):
            resp = heavy._take(lambda m: isinstance(m, list), timeout=60 * SLOWDOWN)
            self.assertTrue(all(r["result"]["state"] == "cancelled" for r in resp))
        # Answered waits free their places.
        other = self.submit(self.c, [self.never()])[0]
        heavy.request("wait", {"id": other})
        self.assertEqual(self.until_marker(heavy, "registered"), [])
        self.assertEqual(self.stats(self.c)["objects"]["ctl_wait"], 1)
        self.served.finish(self)

    def test_subscription_cap(self):
        heavy = self.connect()
        subs = [heavy.result("subscribe", {"events": ["queued"]})["subscription"]
                for _ in range(SUBS_MAX)]
        err = self.assert_error(heavy.call("subscribe", {}), APP_ERROR, "too_many_subscriptions")
        self.assertIn(str(SUBS_MAX), err["message"])
        heavy.result("unsubscribe", {"subscription": subs.pop()})
        subs.append(heavy.result("subscribe", {"events": ["queued"]})["subscription"])
        # A batch fills up to the cap and refuses the rest in their slots.
        fresh = self.connect()
        fresh.send([rpc("subscribe", i, {"events": ["queued"]}) for i in range(SUBS_MAX + 6)])
        answers = fresh._take(lambda m: isinstance(m, list))
        self.assertEqual(sum("result" in a for a in answers), SUBS_MAX)
        for a in answers[SUBS_MAX:]:
            self.assert_error(a, APP_ERROR, "too_many_subscriptions")
        # Every subscription gets the event.
        jid = self.submit(self.c, [self.never()])[0]
        for client, n in ((heavy, SUBS_MAX), (fresh, SUBS_MAX)):
            got = {client.notification(lambda p: p["job"]["id"] == jid)["subscription"]
                   for _ in range(n)}
            self.assertEqual(len(got), n)
        self.served.finish(self)

    def test_bytes_held_for_a_client(self):
        heavy = self.connect()
        # Waits keep their request ids: 200 KB ids fill the budget after 5.
        big_id = "w" * 200000
        n_ok = HELD_MAX // (len(big_id) + 2)
        for k in range(n_ok):
            heavy.request("wait", {"id": self.blocker}, rid=big_id[k:])
        err = self.assert_error(heavy.call("wait", {"id": self.blocker}, rid=big_id),
                                APP_ERROR, "too_many_waits")
        self.assertIn(str(HELD_MAX), err["message"])
        # Small ids still fit.
        heavy.request("wait", {"id": self.blocker}, rid="small")
        self.assertEqual(self.until_marker(heavy, "m"), [])
        self.assertEqual(self.stats(self.c)["objects"]["ctl_wait"], n_ok + 1)
        # Subscriptions keep their id lists.
        ids = ["%016x" % i for i in range(5000)]
        size = len(json.dumps(ids, separators=(",", ":")))
        n_ok = HELD_MAX // size
        self.assertLess(n_ok, SUBS_MAX)
        subs = [heavy.result("subscribe", {"ids": ids})["subscription"] for _ in range(n_ok)]
        err = self.assert_error(heavy.call("subscribe", {"ids": ids}), APP_ERROR,
                                "too_many_subscriptions")
        self.assertIn(str(HELD_MAX), err["message"])
        heavy.result("subscribe", {"ids": ids[:10]})
        heavy.result("unsubscribe", {"subscription": subs[0]})
        heavy.result("subscribe", {"ids": ids[:1000]})
        self.c.result("cancel", {"id": self.blocker})
        answered = {heavy.response(rid)["id"] for rid in
                    [big_id[k:] for k in range(HELD_MAX // (len(big_id) + 2))] + ["small"]}
        self.assertEqual(len(answered), HELD_MAX // (len(big_id) + 2) + 1)
        self.served.finish(self)

    def test_full_client_vanishes(self):
        heavy = RpcClient(self.daemon.socket)
        for _ in range(SUBS_MAX):
            heavy.result("subscribe", {"events": ["finished"]})
        self.open_waits(heavy, WAITS_MAX, per_batch=2000)
        heavy.send([rpc("wait", i, {"id": self.blocker}) for i in range(5)])
        heavy.close()
        self.wait_clients(self.c, 2)
        self.served.finish(self)


if __name__ == "__main__":
    import unittest
    unittest.main()
