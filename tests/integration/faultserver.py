"""A scripted HTTP/1.1 server that misbehaves on purpose.

FaultServer listens on 127.0.0.1 on a free port, one daemon thread per
connection, and picks what to send by the request path.  It is used
in-process as a context manager:

    with FaultServer() as srv:
        url = srv.url("/chunked")
        ...
        srv.hits_for("/chunked")

and can be run on its own for manual checks with curl:

    python3 faultserver.py --port 8081
    curl -v --raw http://127.0.0.1:8081/chunked

Every request is read completely (head, then the body per Content-Length or
chunked framing) before the behaviour runs, so closing the socket afterwards
sends a FIN, never an RST, unless the behaviour asks for an RST.  After a
complete response that allows keep-alive, the server reads the next request on
the same connection.  A request with "Connection: close" is answered and the
connection closed.  Any method is accepted; HEAD gets the would-be headers
(including Content-Length) and no body on every path that sends a normal body.

Recorded for the tests (all guarded by a lock, read them via the methods):
  requests()             list of dicts: conn, seq, method, target, path, query,
                         headers (list of (name, value)), body (bytes)
  hits_for(target)       requests whose full target (path?query) matched
  path_hits(path)        requests whose path (without query) matched
  conn_request_counts()  {connection number: requests read on it}
  connections_accepted() number of accepted connections

Well-formed responses
  /cl?size=N             200, Content-Length N (default 1000) of pattern(N)
  /chunked               200, chunked with chunk extensions and trailers;
                         decoded body is CHUNKED_BODY
  /close-delimited       200, no length, Connection: close, CLOSE_BODY, close
  /http10                HTTP/1.0 200 with Content-Length, then close
  /interim               100 Continue, 103 Early Hints, then 200 "hello"
  /no-content            204, no body
  /not-modified          304 with an ETag, no body
  /echo                  200, JSON {method, target, path, headers (lower-case
                         name -> value), body_length, body_sha256}
  /redir?status=S&to=U   redirect with status S (default 302) to U, which may
                         be absolute or relative (URL-encode it in the query)
  /loop                  302 to its own absolute URL, forever
  /flaky?n=K&status=S&retry_after=R
                         status S (default 503) for the first K requests of this
                         exact target, then 200; Retry-After: R when given
  /status?code=N&retry_after=R
                         status N with a short body (none for 1xx/204/304)
  /drip?bytes=N&interval_ms=M
                         200, Content-Length N (default 20), one byte of
                         pattern(N) every M ms (default 100)
  /close-after?ms=M      200 "hello" with keep-alive; if no further request
                         arrives within M ms (default 200) the server closes
  /stale-redir?n=N       a chain of N 302s ending in 200, each connection
                         silently stale after one response (as /stale)
  /stale                 first request on a connection gets 200 "stale-ok"
                         with keep-alive; the next request on that same
                         connection (any path) is read and the connection
                         closed without a byte.  A new connection starts over.

Ranges (resume)
  /ranged?size=N         200 with pattern(N) (default 1000), Accept-Ranges,
                         the ETag srv.ranged_etag and Last-Modified
                         srv.ranged_last_modified (either None: not sent);
                         "Range: bytes=A-" is answered 206 from A (416 with
                         "bytes */N" when A >= N) unless an If-Range does not
                         match the current ETag or Last-Modified (then 200).
                         While srv.ranged_cuts > 0 each response stops once
                         srv.ranged_cut_at bytes of the file are sent (and
                         decrements it): closed, or held until the client
                         closes when srv.ranged_stall is true.

Faults
  /truncated-cl          Content-Length 1000, 500 bytes sent, then FIN
  /truncated-chunked     chunked, two chunks, FIN before the last chunk
  /reset-mid-body        Content-Length 1000, 500 bytes, pause, then RST
  /empty                 FIN without sending a byte
  /reset-before          RST without sending a byte
  /garbage-status        a status line that is not HTTP
  /one-digit-status      "HTTP/1.1 2 OK"
  /dup-cl-same           two identical Content-Length headers
  /dup-cl-diff           two different Content-Length headers
  /cl-and-te             Content-Length together with Transfer-Encoding: chunked
  /bad-chunk-size        a chunk size line that is not hex
  /huge-header           one header of HUGE_HEADER_BYTES (~100 KiB)
  /many-headers          MANY_HEADERS (1000) small headers
  /obs-fold              a header continued with obs-fold (line starting with SP)
  /never                 reads the request, never answers (until stop or the
                         client closes)
  /leftover              200 "hello" followed by stray bytes after the body
  /no-content-body       204 with Content-Length: 5 and "hello"

Exact bytes
  srv.serve_raw(path, data, keep=False, split=False) makes `path` answer
  every request with `data`, byte for byte (HEAD included), then close the
  connection (or keep it, with keep=True).  split=True sends one byte per
  send() with TCP_NODELAY and a short pause, so the client sees the bytes
  spread over many reads.  The conformance table (test_conformance.py) is
  served this way.

BacklogFull is a separate helper: a listening socket with backlog 0 that never
accepts and is filled with client connections so that further SYNs are
dropped; connecting to it hangs, which is how connect timeouts are tested.
"""

import argparse
import hashlib
import json
import socket
import struct
import threading
import time
import urllib.parse

CHUNKED_BODY = b"hello, chunked world! " * 10
CLOSE_BODY = b"close-delimited body\n" * 50
HTTP10_BODY = b"an HTTP/1.0 response\n"
HUGE_HEADER_BYTES = 100 * 1024
MANY_HEADERS = 1000
MAX_REQUEST_HEAD = 1024 * 1024
POLL_SECONDS = 0.1
SPLIT_PAUSE_SECONDS = 0.001


def pattern(n):
    """Returns n deterministic bytes; /cl and /drip bodies are made of these."""
    block = bytes(range(256))
    return (block * (n // 256 + 1))[:n]


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


class _Request:
    def __init__(self, method, target, version, headers, body):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.body = body
        split = urllib.parse.urlsplit(target)
        self.path = split.path
        self.query = dict(urllib.parse.parse_qsl(split.query))

    def header(self, name):
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def wants_close(self):
        value = (self.header("connection") or "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" not in value
        return "close" in value


class _Closed(Exception):
    """The peer closed, the server is stopping, or a read deadline passed."""


class _Conn:
    """One accepted connection: a byte buffer over the socket plus state."""

    def __init__(self, server, sock, number):
        self.server = server
        self.sock = sock
        self.number = number
        self.buf = bytearray()
        self.served = 0
        self.stale_armed = False
        self.idle_deadline = None
        sock.settimeout(POLL_SECONDS)

    def _fill(self, deadline=None):
        """Reads more bytes into buf; raises _Closed on EOF, stop or deadline."""
        while True:
            if self.server.stopping.is_set():
                raise _Closed()
            if deadline is not None and time.monotonic() >= deadline:
                raise _Closed()
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                raise _Closed()
            if not data:
                raise _Closed()
            self.buf += data
            return

    def _take_line(self, deadline=None):
        while True:
            idx = self.buf.find(b"\r\n")
            if idx >= 0:
                line = bytes(self.buf[:idx])
                del self.buf[: idx + 2]
                return line
            if len(self.buf) > MAX_REQUEST_HEAD:
                raise _Closed()
            self._fill(deadline)

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_request(self, deadline=None):
        """Reads one whole request; None when the connection ended first."""
        try:
            line = self._take_line(deadline)
            while line == b"":
                line = self._take_line(deadline)
            parts = line.decode("latin-1").split(" ")
            if len(parts) != 3:
                return None
            headers = []
            while True:
                hline = self._take_line()
                if hline == b"":
                    break
                name, _, value = hline.decode("latin-1").partition(":")
                headers.append((name.strip(), value.strip()))
            req = _Request(parts[0], parts[1], parts[2], headers, b"")
            req.body = self._read_body(req)
            return req
        except _Closed:
            return None

    def _read_body(self, req):
        te = (req.header("transfer-encoding") or "").lower()
        if "chunked" in te:
            body = bytearray()
            while True:
                size = int(self._take_line().split(b";")[0].strip(), 16)
                if size == 0:
                    while self._take_line() != b"":
                        pass
                    return bytes(body)
                body += self._take(size)
                self._take_line()
        length = req.header("content-length")
        if length:
            return self._take(int(length))
        return b""

    def send(self, data):
        self.sock.settimeout(10)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.settimeout(POLL_SECONDS)

    def sleep(self, seconds):
        """Sleeps, but returns early (False) when the server is stopping."""
        return not self.server.stopping.wait(seconds)

    def reset(self):
        """Makes the coming close send an RST instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def wait_for_peer_close(self):
        """Holds the connection until the client closes it or the server stops."""
        try:
            while True:
                self._fill()
                self.buf.clear()
        except _Closed:
            pass


KEEP = True
CLOSE = False


def _head(status, reason, headers, version="HTTP/1.1"):
    lines = ["%s %s %s" % (version, status, reason)]
    lines += ["%s: %s" % (k, v) for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


REASONS = {
    100: "Continue", 103: "Early Hints", 200: "OK", 204: "No Content",
    301: "Moved Permanently", 302: "Found", 303: "See Other",
    304: "Not Modified", 307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 404: "Not Found", 429: "Too Many Requests",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
}


def _respond(conn, req, status, body=b"", headers=()):
    """Sends a well-framed response with Content-Length; HEAD gets no body."""
    hdrs = list(headers)
    if status >= 200 and status not in (204, 304):
        hdrs.append(("Content-Length", str(len(body))))
    else:
        body = b""
    if req.wants_close():
        hdrs.append(("Connection", "close"))
    data = _head(status, REASONS.get(status, "Status"), hdrs)
    if req.method != "HEAD":
        data += body
    conn.send(data)
    return CLOSE if req.wants_close() else KEEP


def _int(req, name, default):
    try:
        return int(req.query.get(name, default))
    except ValueError:
        return default


class _Behaviours:
    """Maps a request path to a handler; each returns KEEP or CLOSE."""

    def __init__(self, server):
        self.server = server
        self.table = {
            "/cl": self.cl,
            "/chunked": self.chunked,
            "/close-delimited": self.close_delimited,
            "/http10": self.http10,
            "/interim": self.interim,
            "/no-content": self.no_content,
            "/not-modified": self.not_modified,
            "/echo": self.echo,
            "/redir": self.redir,
            "/loop": self.loop,
            "/flaky": self.flaky,
            "/status": self.status,
            "/drip": self.drip,
            "/close-after": self.close_after,
            "/stale": self.stale,
            "/stale-redir": self.stale_redir,
            "/truncated-cl": self.truncated_cl,
            "/truncated-chunked": self.truncated_chunked,
            "/reset-mid-body": self.reset_mid_body,
            "/empty": self.empty,
            "/reset-before": self.reset_before,
            "/garbage-status": self.raw(b"garbage line, not http\r\n\r\n"),
            "/one-digit-status": self.raw(
                b"HTTP/1.1 2 OK\r\nContent-Length: 2\r\n\r\nok"),
            "/dup-cl-same": self.raw(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
            "/dup-cl-diff": self.raw(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
            "/cl-and-te": self.raw(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n0\r\n\r\n"),
            "/bad-chunk-size": self.raw(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"zz\r\nhello\r\n0\r\n\r\n"),
            "/huge-header": self.raw(
                b"HTTP/1.1 200 OK\r\nX-Huge: " + b"a" * HUGE_HEADER_BYTES
                + b"\r\nContent-Length: 2\r\n\r\nok"),
            "/many-headers": self.raw(
                b"HTTP/1.1 200 OK\r\n"
                + b"".join(b"X-H-%d: v\r\n" % i for i in range(MANY_HEADERS))
                + b"Content-Length: 2\r\n\r\nok"),
            "/obs-fold": self.raw(
                b"HTTP/1.1 200 OK\r\nX-Folded: first\r\n  continued\r\n"
                b"Content-Length: 2\r\n\r\nok"),
            "/never": self.never,
            "/ranged": self.ranged,
            "/leftover": self.raw(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloSTRAY-BYTES", KEEP),
            "/no-content-body": self.raw(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello"),
        }

    def dispatch(self, conn, req):
        handler = self.table.get(req.path)
        if handler is None:
            return _respond(conn, req, 404, b"no such behaviour\n")
        return handler(conn, req)

    @staticmethod
    def raw(data, after=CLOSE, split=False):
        def handler(conn, req):
            if not split:
                conn.send(data)
                return after
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(len(data)):
                conn.send(data[i:i + 1])
                if not conn.sleep(SPLIT_PAUSE_SECONDS):
                    return CLOSE
            return after
        return handler

    def cl(self, conn, req):
        return _respond(conn, req, 200, pattern(_int(req, "size", 1000)))

    def chunked(self, conn, req):
        body = CHUNKED_BODY
        parts = [body[:5], body[5:60], body[60:]]
        data = _head(200, "OK", [("Transfer-Encoding", "chunked"),
                                 ("Trailer", "X-Checksum, X-Extra")])
        if req.method == "HEAD":
            conn.send(data)
            return KEEP
        data += b"%x;ext=1\r\n%s\r\n" % (len(parts[0]), parts[0])
        data += b'%X;name="quoted value";flag\r\n%s\r\n' % (len(parts[1]), parts[1])
        data += b"%x\r\n%s\r\n" % (len(parts[2]), parts[2])
        data += b"0;last=yes\r\nX-Checksum: %s\r\nX-Extra: trailer\r\n\r\n" % (
            sha256_hex(body).encode())
        conn.send(data)
        return CLOSE if req.wants_close() else KEEP

    def close_delimited(self, conn, req):
        data = _head(200, "OK", [("Content-Type", "text/plain"), ("Connection", "close")])
        conn.send(data + (b"" if req.method == "HEAD" else CLOSE_BODY))
        return CLOSE

    def http10(self, conn, req):
        hdrs = [("Content-Length", str(len(HTTP10_BODY)))]
        data = _head(200, "OK", hdrs, version="HTTP/1.0")
        conn.send(data + (b"" if req.method == "HEAD" else HTTP10_BODY))
        return CLOSE

    def interim(self, conn, req):
        conn.send(b"HTTP/1.1 100 Continue\r\n\r\n"
                  b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        return _respond(conn, req, 200, b"hello")

    def no_content(self, conn, req):
        return _respond(conn, req, 204)

    def not_modified(self, conn, req):
        return _respond(conn, req, 304, headers=[("ETag", '"v1"')])

    def echo(self, conn, req):
        headers = {}
        for name, value in req.headers:
            key = name.lower()
            headers[key] = headers[key] + ", " + value if key in headers else value
        doc = {
            "method": req.method,
            "target": req.target,
            "path": req.path,
            "headers": headers,
            "body_length": len(req.body),
            "body_sha256": sha256_hex(req.body),
        }
        body = json.dumps(doc, sort_keys=True).encode()
        return _respond(conn, req, 200, body, [("Content-Type", "application/json")])

    def redir(self, conn, req):
        status = _int(req, "status", 302)
        to = req.query.get("to", "/echo")
        return _respond(conn, req, status, b"redirect\n", [("Location", to)])

    def loop(self, conn, req):
        return _respond(conn, req, 302, b"loop\n", [("Location", self.server.url("/loop"))])

    def flaky(self, conn, req):
        failures = _int(req, "n", 1)
        if self.server.hits_for(req.target) <= failures:
            headers = []
            if "retry_after" in req.query:
                headers.append(("Retry-After", req.query["retry_after"]))
            return _respond(conn, req, _int(req, "status", 503), b"not yet\n", headers)
        return _respond(conn, req, 200, b"finally\n")

    def status(self, conn, req):
        headers = []
        if "retry_after" in req.query:
            headers.append(("Retry-After", req.query["retry_after"]))
        code = _int(req, "code", 200)
        return _respond(conn, req, code, b"status %d\n" % code, headers)

    def drip(self, conn, req):
        n = _int(req, "bytes", 20)
        interval = _int(req, "interval_ms", 100) / 1000.0
        conn.send(_head(200, "OK", [("Content-Length", str(n))]))
        if req.method == "HEAD":
            return KEEP
        for byte in pattern(n):
            if not conn.sleep(interval):
                return CLOSE
            conn.send(bytes([byte]))
        return CLOSE if req.wants_close() else KEEP

    def close_after(self, conn, req):
        if _respond(conn, req, 200, b"hello") == CLOSE:
            return CLOSE
        conn.idle_deadline = time.monotonic() + _int(req, "ms", 200) / 1000.0
        return KEEP

    def stale(self, conn, req):
        if _respond(conn, req, 200, b"stale-ok") == CLOSE:
            return CLOSE
        conn.stale_armed = True
        return KEEP

    def stale_redir(self, conn, req):
        """A redirect chain from a server that silently drops every
        connection after one response (no Connection: close)."""
        n = _int(req, "n", 3)
        if n <= 0:
            rc = _respond(conn, req, 200, b"end of the chain\n")
        else:
            rc = _respond(conn, req, 302, b"redirect\n",
                          [("Location", "/stale-redir?n=%d" % (n - 1))])
        if rc == CLOSE:
            return CLOSE
        conn.stale_armed = True
        return KEEP

    def truncated_cl(self, conn, req):
        conn.send(_head(200, "OK", [("Content-Length", "1000")]) + pattern(500))
        return CLOSE

    def truncated_chunked(self, conn, req):
        conn.send(_head(200, "OK", [("Transfer-Encoding", "chunked")])
                  + b"10\r\n" + pattern(16) + b"\r\n" + b"10\r\n" + pattern(16) + b"\r\n")
        return CLOSE

    def reset_mid_body(self, conn, req):
        conn.send(_head(200, "OK", [("Content-Length", "1000")]) + pattern(500))
        # Give the client time to read what was sent: an RST can make the
        # kernel drop data the client has not read yet.
        conn.sleep(0.2)
        conn.reset()
        return CLOSE

    def empty(self, conn, req):
        return CLOSE

    def ranged(self, conn, req):
        srv = self.server
        size = _int(req, "size", 1000)
        body = srv.ranged_body(size)
        etag, lm = srv.ranged_etag, srv.ranged_last_modified
        validators = [("Accept-Ranges", "bytes")]
        validators += [("ETag", etag)] if etag else []
        validators += [("Last-Modified", lm)] if lm else []
        start, rng, if_range = 0, req.header("range"), req.header("if-range")
        if rng and rng.startswith("bytes=") and rng.endswith("-") and rng[6:-1].isdigit():
            if if_range is None or if_range in (etag, lm):
                start = int(rng[6:-1])
                if start >= size:
                    return _respond(conn, req, 416, b"range not satisfiable\n",
                                    validators + [("Content-Range", "bytes */%d" % size)])
        if start > 0:
            head = _head(206, "Partial Content", validators + [
                ("Content-Range", "bytes %d-%d/%d" % (start, size - 1, size)),
                ("Content-Length", str(size - start))])
        else:
            head = _head(200, "OK", validators + [("Content-Length", str(size))])
        end = size
        with srv._lock:
            if srv.ranged_cuts > 0:
                srv.ranged_cuts -= 1
                end = max(start, min(size, srv.ranged_cut_at))
            stall = srv.ranged_stall
        conn.send(head)
        if req.method == "HEAD":
            return KEEP
        view = memoryview(body)
        for at in range(start, end, 1 << 20):
            conn.send(view[at:min(end, at + (1 << 20))])
        if end < size:
            if stall:
                conn.wait_for_peer_close()
            return CLOSE
        return CLOSE if req.wants_close() else KEEP

    def reset_before(self, conn, req):
        conn.reset()
        return CLOSE

    def never(self, conn, req):
        conn.wait_for_peer_close()
        return CLOSE


class FaultServer:
    """The threaded fault server; see the module docstring for behaviours."""

    def __init__(self, port=0, gauge=None):
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._requests = []
        self._conn_counts = {}
        self._accepted = 0
        self._threads = []
        self._socks = set()
        self._behaviours = _Behaviours(self)
        self.gauge = gauge
        # /ranged's resource; the tests change these between requests.
        self.ranged_etag = '"v1"'
        self.ranged_last_modified = "Wed, 21 Oct 2015 07:28:00 GMT"
        self.ranged_cuts = 0
        self.ranged_cut_at = 0
        self.ranged_stall = False
        self._ranged_bodies = {}
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(128)
        self._listener.settimeout(POLL_SECONDS)
        self.port = self._listener.getsockname()[1]
        self.origin = "http://127.0.0.1:%d" % self.port
        self._acceptor = None

    def url(self, target):
        return self.origin + target

    def ranged_body(self, size):
        """The bytes /ranged?size=N serves: pattern(N), made once per size."""
        with self._lock:
            if size not in self._ranged_bodies:
                self._ranged_bodies[size] = pattern(size)
            return self._ranged_bodies[size]

    def serve_raw(self, path, data, keep=False, split=False):
        """Makes `path` answer with exactly `data` (see "Exact bytes")."""
        handler = _Behaviours.raw(bytes(data), KEEP if keep else CLOSE, split)
        with self._lock:
            self._behaviours.table[path] = handler

    def start(self):
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                          name="faultserver-accept")
        self._acceptor.start()
        return self

    def stop(self):
        """Stops accepting, wakes every connection thread and joins them (bounded)."""
        self.stopping.set()
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._acceptor is not None:
            self._acceptor.join(5)
        for thread in list(self._threads):
            thread.join(5)
        self._listener.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    # Recorded data, read by the tests.
    def requests(self):
        with self._lock:
            return list(self._requests)

    def hits_for(self, target):
        with self._lock:
            return sum(1 for r in self._requests if r["target"] == target)

    def path_hits(self, path):
        with self._lock:
            return sum(1 for r in self._requests if r["path"] == path)

    def conn_request_counts(self):
        with self._lock:
            return dict(self._conn_counts)

    def connections_accepted(self):
        with self._lock:
            return self._accepted

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self._accepted += 1
                number = self._accepted
                self._conn_counts[number] = 0
                self._socks.add(sock)
            if self.gauge is not None:
                self.gauge.opened()
            thread = threading.Thread(target=self._serve, args=(sock, number), daemon=True,
                                      name="faultserver-conn-%d" % number)
            self._threads.append(thread)
            thread.start()

    def _record(self, conn, req):
        with self._lock:
            self._conn_counts[conn.number] += 1
            self._requests.append({
                "conn": conn.number,
                "seq": self._conn_counts[conn.number],
                "method": req.method,
                "target": req.target,
                "path": req.path,
                "query": req.query,
                "headers": list(req.headers),
                "body": req.body,
            })

    def _serve(self, sock, number):
        conn = _Conn(self, sock, number)
        try:
            while not self.stopping.is_set():
                req = conn.read_request(conn.idle_deadline)
                conn.idle_deadline = None
                if req is None:
                    break
                self._record(conn, req)
                if conn.stale_armed:
                    break
                if self._behaviours.dispatch(conn, req) == CLOSE:
                    break
        except OSError:
            pass
        finally:
            with self._lock:
                self._socks.discard(sock)
            if self.gauge is not None:
                self.gauge.closed()
            try:
                sock.close()
            except OSError:
                pass


class ConnectionGauge:
    """Counts connections open at once across several FaultServers."""

    def __init__(self):
        self._lock = threading.Lock()
        self.current = 0
        self.maximum = 0

    def opened(self):
        with self._lock:
            self.current += 1
            self.maximum = max(self.maximum, self.current)

    def closed(self):
        with self._lock:
            self.current -= 1


class BacklogFull:
    """A listener whose accept queue is full, so a connect to it hangs.

    Linux drops a SYN when the listener's accept queue is full; with
    listen(0) and a few connections that are never accepted, further connection
    attempts get no answer and time out.  `hangs` says whether a probe connect
    with a 1 s timeout indeed hung; tests skip when it did not.
    """

    def __init__(self, fillers=8):
        self._fillers_wanted = fillers
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        self.port = self._listener.getsockname()[1]
        self.origin = "http://127.0.0.1:%d" % self.port
        self._fillers = []
        self.hangs = False

    def url(self, target):
        return self.origin + target

    def _fill(self):
        for _ in range(self._fillers_wanted):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(("127.0.0.1", self.port))
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                sock.close()
                continue
            self._fillers.append(sock)
        time.sleep(0.2)

    def probe(self, timeout=1.0):
        """True when a fresh connect does not complete within timeout."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(("127.0.0.1", self.port))
            return False
        except socket.timeout:
            return True
        except OSError:
            return False
        finally:
            sock.close()

    def __enter__(self):
        self._fill()
        self.hangs = self.probe()
        return self

    def __exit__(self, *exc):
        for sock in self._fillers:
            sock.close()
        self._listener.close()
        return False


def main():
    parser = argparse.ArgumentParser(description="Run the fault server standalone.")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = FaultServer(port=args.port).start()
    print("fault server listening on %s" % server.origin, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
