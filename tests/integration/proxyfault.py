"""Scripted proxies for test_proxy.py (python3 standard library only).

`ProxyFault(mode)` listens on 127.0.0.1 (a free port) and plays one part:

  http407       answers any request head with 407 (Proxy-Authenticate: Basic)
  http502       answers 502 Bad Gateway with a small body, then closes
  http_cut      answers "HTTP/1.1 200 Conn" and closes mid-line
  silent        accepts and reads, never answers (until stopped)
  http_echo     a keep-alive HTTP proxy that answers every request itself:
                200 with the request line as the body (no origin is contacted)
  socks_refuse  SOCKS5 without authentication, then reply 0x05 (connection refused)
  socks_cut     SOCKS5 method choice, then closes when the request arrives
  socks         a working SOCKS5 relay (RFC 1928), with RFC 1929
                user name/password when `user` is given; records what the
                client asked for (address type, host, port, credentials)

Every connection runs in its own thread; every wait is bounded (POLL
seconds at a time, until stop()), and stop() closes every socket and joins
every thread (bounded), so a test that starts one always stops it.
"""

import socket
import struct
import threading

POLL = 0.2
JOIN = 5.0


class ProxyFault:
    def __init__(self, mode, user=None, password=None, host="127.0.0.1"):
        self.mode = mode
        self.host = host
        self.user = user
        self.password = password
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._socks = set()
        self._threads = []
        self.accepted = 0
        self.heads = []  # request heads (HTTP modes), bytes
        self.asked = []  # socks mode: dicts of what each client asked for
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(64)
        self._listener.settimeout(POLL)
        self.port = self._listener.getsockname()[1]
        self._acceptor = None

    def url(self, scheme, userinfo=""):
        return "%s://%s%s:%d" % (scheme, userinfo + "@" if userinfo else "", self.host, self.port)

    def start(self):
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                          name="proxyfault-accept")
        self._acceptor.start()
        return self

    def stop(self):
        self.stopping.set()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._acceptor is not None:
            self._acceptor.join(JOIN)
        for t in list(self._threads):
            t.join(JOIN)
        for s in socks:
            s.close()
        self._listener.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    # ---- plumbing -------------------------------------------------------

    def _track(self, s):
        with self._lock:
            self._socks.add(s)
        s.settimeout(POLL)
        return s

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.accepted += 1
            self._track(sock)
            t = threading.Thread(target=self._serve, args=(sock,), daemon=True,
                                 name="proxyfault-conn")
            self._threads.append(t)
            t.start()

    def _recv(self, sock, n=65536):
        """Bytes, or b"" at EOF or on stop (bounded polls)."""
        while not self.stopping.is_set():
            try:
                return sock.recv(n)
            except socket.timeout:
                continue
            except OSError:
                return b""
        return b""

    def _recv_exact(self, sock, n):
        data = b""
        while len(data) < n:
            chunk = self._recv(sock, n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def _read_head(self, sock):
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = self._recv(sock)
            if not chunk:
                return None
            data += chunk
        with self._lock:
            self.heads.append(data)
        return data

    def _serve(self, sock):
        try:
            getattr(self, "_mode_" + self.mode)(sock)
        except OSError:
            pass

    # ---- HTTP modes -----------------------------------------------------

    def _mode_http407(self, sock):
        if self._read_head(sock) is not None:
            sock.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                         b"Proxy-Authenticate: Basic realm=\"test\"\r\n"
                         b"Content-Length: 0\r\n\r\n")
            self._recv(sock)  # until the client closes (or stop)

    def _mode_http502(self, sock):
        if self._read_head(sock) is not None:
            sock.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 11\r\n"
                         b"Connection: close\r\n\r\nbad gateway")
            sock.shutdown(socket.SHUT_WR)
            self._recv(sock)

    def _mode_http_cut(self, sock):
        if self._read_head(sock) is not None:
            sock.sendall(b"HTTP/1.1 200 Conn")
            sock.shutdown(socket.SHUT_WR)
            self._recv(sock)

    def _mode_http_echo(self, sock):
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                chunk = self._recv(sock)
                if not chunk:
                    return
                buf += chunk
            head, buf = buf.split(b"\r\n\r\n", 1)
            with self._lock:
                self.heads.append(head + b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0]
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(line), line))

    def _mode_silent(self, sock):
        while self._recv(sock):
            pass

    # ---- SOCKS5 modes ---------------------------------------------------

    def _greeting(self, sock):
        head = self._recv_exact(sock, 2)
        if head is None or head[0] != 5:
            return None
        return self._recv_exact(sock, head[1])

    def _request(self, sock):
        head = self._recv_exact(sock, 4)
        if head is None:
            return None
        atyp = head[3]
        if atyp == 1:
            host = socket.inet_ntop(socket.AF_INET, self._recv_exact(sock, 4))
        elif atyp == 4:
            host = socket.inet_ntop(socket.AF_INET6, self._recv_exact(sock, 16))
        elif atyp == 3:
            n = self._recv_exact(sock, 1)[0]
            host = self._recv_exact(sock, n).decode("ascii", "replace")
        else:
            return None
        port = struct.unpack("!H", self._recv_exact(sock, 2))[0]
        return {"cmd": head[1], "atyp": atyp, "host": host, "port": port}

    def _mode_socks_refuse(self, sock):
        if self._greeting(sock) is None:
            return
        sock.sendall(b"\x05\x00")
        if self._request(sock) is not None:
            sock.sendall(b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00")
            sock.shutdown(socket.SHUT_WR)
            self._recv(sock)

    def _mode_socks_cut(self, sock):
        if self._greeting(sock) is None:
            return
        sock.sendall(b"\x05\x00")
        self._request(sock)
        sock.shutdown(socket.SHUT_WR)
        self._recv(sock)

    def _auth(self, sock, methods, asked):
        if self.user is None:
            if 0 not in methods:
                sock.sendall(b"\x05\xff")
                return False
            sock.sendall(b"\x05\x00")
            return True
        if 2 not in methods:
            sock.sendall(b"\x05\xff")
            return False
        sock.sendall(b"\x05\x02")
        ver = self._recv_exact(sock, 2)
        if ver is None:
            return False
        user = self._recv_exact(sock, ver[1])
        plen = self._recv_exact(sock, 1)[0]
        password = self._recv_exact(sock, plen)
        asked["user"], asked["password"] = user, password
        ok = user == self.user.encode() and password == self.password.encode()
        sock.sendall(b"\x01\x00" if ok else b"\x01\x01")
        return ok

    def _mode_socks(self, sock):
        methods = self._greeting(sock)
        if methods is None:
            return
        asked = {"methods": list(methods)}
        with self._lock:
            self.asked.append(asked)
        if not self._auth(sock, methods, asked):
            return
        req = self._request(sock)
        if req is None:
            return
        asked.update(req)
        try:
            upstream = socket.create_connection((req["host"], req["port"]), timeout=5)
        except OSError:
            sock.sendall(b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00")
            return
        self._track(upstream)
        sock.sendall(b"\x05\x00\x00\x01\x7f\x00\x00\x01" + struct.pack("!H", 1))
        pump = threading.Thread(target=self._pump, args=(upstream, sock), daemon=True,
                                name="proxyfault-pump")
        self._threads.append(pump)
        pump.start()
        self._pump(sock, upstream)

    def _pump(self, src, dst):
        while True:
            data = self._recv(src)
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            try:
                dst.sendall(data)
            except OSError:
                return
