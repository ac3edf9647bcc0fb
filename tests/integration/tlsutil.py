"""TLS helpers for the integration tests: certificates, nginx with TLS, and
python `ssl` servers that misbehave on purpose.

Certificates are generated at test time with the openssl CLI (EC P-256 keys)
into one temp dir per test process; `certs()` returns the cached set:

  ca, ca_key            the trusted test CA
  valid                 leaf for DNS:localhost + IP:127.0.0.1, signed by ca
  expired               same names, validity ended a year ago
  future                same names, validity starts in a year
  wrong_host            leaf for DNS:wrong.example only (no IP SAN), signed by ca
  self_signed           self-signed leaf for DNS:localhost + IP:127.0.0.1
  untrusted             leaf for localhost/127.0.0.1 signed by other_ca, which
                        is never given to the engine
  client                client certificate (EKU clientAuth) signed by ca

Each leaf is a `Pair` with `.cert` and `.key` (PEM paths).  Dates are written
with `openssl ca -startdate/-enddate`, because `openssl x509 -req` in
OpenSSL 3.0 cannot set a start date.

`TlsNginx` is the `fetchtest.Nginx` fixture with TLS on its port (cert
`valid`, TLS 1.2 and 1.3, session cache and tickets) and a second port
(`client_port`) that requires a client certificate from the test CA.

`TlsServer` is a threaded python `ssl` server on 127.0.0.1 with a mode:
  "ok"        answers every request with 200 and BODY (Content-Length), keep-alive;
              a path starting /echo-sha256 gets the hex SHA-256 of the request
              body (Content-Length bodies only) instead
  "stall"     accepts TCP and never answers the ClientHello
  "truncate"  answers the first request with Content-Length 1000 and 100 body
              bytes, then closes the TCP socket without a TLS close_notify
  "truncate-notify"  the same, but sends close_notify before closing

Run standalone for manual checks with curl / openssl s_client:

    python3 tlsutil.py     # prints the cert dir and the ports, Ctrl-C stops
"""

import atexit
import datetime
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import warnings

from fetchtest import KEEP_TMP, Nginx, free_port, tmpdir

OPENSSL = "openssl"
BODY = b"hello over tls\n"
TRUNCATED_LENGTH = 1000
TRUNCATED_SENT = 100
POLL_SECONDS = 0.1
SERVER_IO_TIMEOUT = 10.0

_CONFIG = """\
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = unused

[ ca ]
default_ca = testca
[ testca ]
dir = %(dir)s
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
email_in_dn = no
[ policy_any ]
commonName = supplied

[ v3_ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ server_localhost ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ server_wrong_host ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:wrong.example
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ client ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def _openssl(*args):
    proc = subprocess.run([OPENSSL] + list(args), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise RuntimeError("openssl %s failed (%d):\n%s" % (
            " ".join(args), proc.returncode, proc.stderr.decode(errors="replace")))
    return proc.stdout.decode(errors="replace")


def _asn1_time(when):
    """UTCTime as `openssl ca -startdate/-enddate` takes it (years < 2050)."""
    return when.astimezone(datetime.timezone.utc).strftime("%y%m%d%H%M%SZ")


class Pair:
    """A certificate and its key, both PEM files."""

    def __init__(self, cert, key):
        self.cert = cert
        self.key = key

    def dates(self):
        """`openssl x509 -noout -dates` output, for diagnostics."""
        return _openssl("x509", "-noout", "-dates", "-in", self.cert)


class _Ca:
    """A CA with its own `openssl ca` database in its own directory."""

    def __init__(self, root, name, subject, now):
        self.dir = os.path.join(root, name)
        os.makedirs(os.path.join(self.dir, "newcerts"))
        with open(os.path.join(self.dir, "index.txt"), "w"):
            pass
        with open(os.path.join(self.dir, "serial"), "w") as f:
            f.write("1000\n")
        self.config = os.path.join(self.dir, "ca.cnf")
        with open(self.config, "w") as f:
            f.write(_CONFIG % {"dir": self.dir})
        self.key = _new_key(os.path.join(self.dir, "ca.key"))
        self.cert = os.path.join(self.dir, "ca.pem")
        csr = _new_csr(self.config, self.key, subject, os.path.join(self.dir, "ca.csr"))
        self.sign(csr, self.cert, "v3_ca", now - datetime.timedelta(days=3 * 365),
                  now + datetime.timedelta(days=10 * 365), selfsign=True)

    def sign(self, csr, out, extensions, start, end, selfsign=False):
        args = ["ca", "-batch", "-notext", "-config", self.config, "-extensions", extensions,
                "-keyfile", self.key, "-startdate", _asn1_time(start),
                "-enddate", _asn1_time(end), "-in", csr, "-out", out]
        if selfsign:
            args.append("-selfsign")
        else:
            args += ["-cert", self.cert]
        _openssl(*args)
        return out

    def leaf(self, root, name, subject, extensions, start, end):
        key = _new_key(os.path.join(root, name + ".key"))
        csr = _new_csr(self.config, key, subject, os.path.join(root, name + ".csr"))
        cert = self.sign(csr, os.path.join(root, name + ".pem"), extensions, start, end)
        return Pair(cert, key)


def _new_key(path):
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", path)
    return path


def _new_csr(config, key, subject, path):
    _openssl("req", "-new", "-config", config, "-key", key, "-subj", subject, "-out", path)
    return path


class CertSet:
    """Every certificate the TLS tests need, generated into `dir`."""

    def __init__(self, directory):
        self.dir = directory
        now = datetime.datetime.now(datetime.timezone.utc)
        day = datetime.timedelta(days=1)
        ca = _Ca(directory, "ca", "/CN=fetchd test CA", now)
        other = _Ca(directory, "other-ca", "/CN=fetchd untrusted CA", now)
        self.ca = ca.cert
        self.ca_key = ca.key
        self.other_ca = other.cert
        d = directory
        self.valid = ca.leaf(d, "valid", "/CN=localhost", "server_localhost",
                             now - day, now + 365 * day)
        self.expired = ca.leaf(d, "expired", "/CN=localhost", "server_localhost",
                               now - 730 * day, now - 365 * day)
        self.future = ca.leaf(d, "future", "/CN=localhost", "server_localhost",
                              now + 365 * day, now + 730 * day)
        self.wrong_host = ca.leaf(d, "wrong-host", "/CN=wrong.example", "server_wrong_host",
                                  now - day, now + 365 * day)
        self.untrusted = other.leaf(d, "untrusted", "/CN=localhost", "server_localhost",
                                    now - day, now + 365 * day)
        self.client = ca.leaf(d, "client", "/CN=fetchd test client", "client",
                              now - day, now + 365 * day)
        self.self_signed = self._self_signed(ca.config, now, day)

    def _self_signed(self, config, now, day):
        key = _new_key(os.path.join(self.dir, "self-signed.key"))
        cert = os.path.join(self.dir, "self-signed.pem")
        _openssl("req", "-x509", "-new", "-config", config, "-extensions", "server_localhost",
                 "-key", key, "-subj", "/CN=localhost", "-days", "365", "-out", cert)
        return Pair(cert, key)


_CERTS = None


def certs():
    """The process-wide CertSet, generated on first use, removed at exit."""
    global _CERTS
    if _CERTS is None:
        directory = tmpdir("tls-certs-")
        if not KEEP_TMP:
            atexit.register(shutil.rmtree, directory, True)
        _CERTS = CertSet(directory)
    return _CERTS


class TlsNginx(Nginx):
    """nginx with TLS: `port` serves the `valid` cert, `client_port` also
    requires a client certificate issued by the test CA.  Same files and
    locations as `Nginx`.  URLs use the name `localhost` unless `host` is
    given (e.g. "127.0.0.1" for the IP SAN)."""

    def __init__(self, cert_set=None):
        super().__init__()
        self.certs = cert_set or certs()
        self.client_port = None

    def url(self, path, host="localhost"):
        return "https://%s:%d%s" % (host, self.port, path)

    def client_url(self, path, host="localhost"):
        return "https://%s:%d%s" % (host, self.client_port, path)

    def _server_block(self, port, extra):
        c = self.certs
        return """server {
        listen 127.0.0.1:%(port)d ssl;
        server_name localhost;
        root %(p)s/html;
        ssl_certificate %(cert)s;
        ssl_certificate_key %(key)s;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:1m;
        ssl_session_timeout 10m;
        ssl_session_tickets on;
        %(extra)s
        location = /status/404 { return 404; }
        location = /status/500 { return 500; }
    }""" % {"port": port, "p": self.prefix, "cert": c.valid.cert, "key": c.valid.key,
            "extra": extra}

    def _config(self):
        p = self.prefix
        client = "ssl_verify_client on;\n        ssl_client_certificate %s;" % self.certs.ca
        return self._http_prologue() + """    %(main)s
    %(client)s
}
""" % {"p": p, "main": self._server_block(self.port, ""),
       "client": self._server_block(self.client_port, client)}

    def start(self):
        if self.proc is None:
            # Nginx.start picks `port` afterwards; should it pick the same
            # number, nginx fails to start with a clear "address in use".
            self.client_port = free_port()
        return super().start()


def server_context(pair, sni_callback=None, client_ca=None, max_version=None):
    """An ssl.SSLContext for a python test server with the given cert; it
    offers ALPN http/1.1 and session tickets (OpenSSL's defaults).

    `client_ca`: require a client certificate issued by this CA (the
    handshake fails without one).  `max_version`: an ssl.TLSVersion below
    1.2 makes a server only an old client could talk to."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if max_version is not None and max_version < ssl.TLSVersion.TLSv1_2:
        # OpenSSL 3.0 refuses TLS 1.0/1.1 above security level 0.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = max_version
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(pair.cert, pair.key)
    ctx.set_alpn_protocols(["http/1.1"])
    if client_ca is not None:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    if sni_callback is not None:
        ctx.sni_callback = sni_callback
    return ctx


class TlsServer:
    """A threaded TLS server on 127.0.0.1:<free port>; see the module docstring.

    `fresh_context=True` gives every connection a new SSLContext, so a
    session ticket or ID from an earlier connection is never accepted (the
    client must fall back to a full handshake).  `client_ca` and
    `max_version` are passed to `server_context`.  `idle_close_ms`: when no
    further request arrives that long after a response, the server sends
    close_notify and closes (like nginx's keepalive_timeout).

    Recorded (read after `wait_closed()` or `stop()`): `accepted`,
    `handshakes`, `requests`, `errors` (exception reprs) and `connections`,
    one dict per completed handshake: sni (None without SNI), alpn, version,
    reused (the server resumed a session), end ("close_notify" when the
    client closed cleanly, "eof" for a TCP close without close_notify,
    "server_close_notify" after `idle_close_ms`, None when the server ended
    the connection otherwise).
    """

    MODES = ("ok", "stall", "truncate", "truncate-notify")

    def __init__(self, pair, mode="ok", fresh_context=False, client_ca=None, max_version=None,
                 idle_close_ms=None):
        if mode not in self.MODES:
            raise ValueError("unknown mode %r" % mode)
        self.mode = mode
        self.pair = pair
        self.fresh_context = fresh_context
        self.idle_close_ms = idle_close_ms
        self._ctx_options = {"client_ca": client_ca, "max_version": max_version}
        self.ctx = self._new_context()
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        # Notified whenever accepted, handshakes or requests grow.
        self._changed = threading.Condition(self._lock)
        self._socks = set()
        self._threads = []
        self._sni = {}
        self.accepted = 0
        self.handshakes = 0
        self.requests = 0
        self.errors = []
        self.connections = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(POLL_SECONDS)
        self.port = self._listener.getsockname()[1]
        self._acceptor = None

    def url(self, path="/", host="localhost"):
        return "https://%s:%d%s" % (host, self.port, path)

    def start(self):
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                          name="tlsserver-accept")
        self._acceptor.start()
        return self

    def stop(self):
        """Stops accepting, shuts every connection down and joins (bounded)."""
        self.stopping.set()
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            try:
                # The plain socket method: an SSLSocket's own shutdown would
                # touch the SSL object another thread is using.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass
        if self._acceptor is not None:
            self._acceptor.join(5)
        for thread in list(self._threads):
            thread.join(5)
        self._listener.close()

    def wait_closed(self, timeout=5.0):
        """Waits (bounded) until every accepted connection has ended; True
        when they all did."""
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def wait_until(self, predicate, timeout=10.0):
        """Waits (bounded) until predicate(self) holds; returns whether it did.
        The server's threads count an event some time after the client saw
        it: a test waits for the count instead of assuming the machine idle."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def _new_context(self):
        return server_context(self.pair, self._on_sni, **self._ctx_options)

    def _on_sni(self, sslsock, server_name, ctx):
        with self._lock:
            self._sni[id(sslsock)] = server_name

    def _pop_sni(self, tls):
        with self._lock:
            return self._sni.pop(id(tls), None)

    def _track(self, sock, add):
        with self._lock:
            if add:
                self._socks.add(sock)
            else:
                self._socks.discard(sock)

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
                self._changed.notify_all()
            self._track(sock, True)
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True,
                                      name="tlsserver-conn")
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock):
        tls = None
        try:
            if self.mode == "stall":
                self.stopping.wait(60)
                return
            sock.settimeout(SERVER_IO_TIMEOUT)
            ctx = self._new_context() if self.fresh_context else self.ctx
            # Ragged EOFs raise, so a missing close_notify is seen.
            tls = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False,
                                  suppress_ragged_eofs=False)
            self._track(sock, False)
            self._track(tls, True)
            tls.do_handshake()
            record = {"sni": self._pop_sni(tls), "alpn": tls.selected_alpn_protocol(),
                      "version": tls.version(), "reused": tls.session_reused, "end": None}
            with self._lock:
                self.handshakes += 1
                self.connections.append(record)
                self._changed.notify_all()
            try:
                self._serve_requests(tls, record)
            except ssl.SSLEOFError:
                record["end"] = "eof"
        except (OSError, ValueError) as exc:
            with self._lock:
                self.errors.append(repr(exc))
        finally:
            self._track(sock, False)
            if tls is not None:
                self._track(tls, False)
                _close_without_close_notify(tls)
            else:
                sock.close()

    def _serve_requests(self, tls, record):
        buf = bytearray()
        idle_timeout = None
        while not self.stopping.is_set():
            head = self._read_head(tls, buf, record, idle_timeout)
            if head is None:
                return
            if self.idle_close_ms is not None:
                idle_timeout = self.idle_close_ms / 1000.0
            body = self._read_body(tls, buf, head, record)
            if body is None:
                return
            with self._lock:
                self.requests += 1
                self._changed.notify_all()
            if self.mode.startswith("truncate"):
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
                            % TRUNCATED_LENGTH + b"x" * TRUNCATED_SENT)
                # Let the client read what was sent before the FIN.
                self.stopping.wait(0.2)
                if self.mode == "truncate-notify":
                    _send_close_notify(tls)
                return
            target = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"/"
            reply = BODY
            if target.startswith(b"/echo-sha256"):
                reply = hashlib.sha256(body).hexdigest().encode()
            close = b"connection: close" in head.lower()
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (
                len(reply), b"Connection: close\r\n" if close else b"", reply))
            if close:
                return

    @staticmethod
    def _fill(tls, buf, record):
        data = tls.recv(65536)
        if not data:
            record["end"] = "close_notify"
            return False
        buf += data
        return True

    def _read_head(self, tls, buf, record, idle_timeout=None):
        """The next request head (bytes, without the blank line); None at EOF
        or, after `idle_timeout` seconds without one, a close_notify sent."""
        tls.settimeout(idle_timeout or SERVER_IO_TIMEOUT)
        try:
            while b"\r\n\r\n" not in buf:
                if not self._fill(tls, buf, record):
                    return None
        except socket.timeout:
            if idle_timeout is None:
                raise
            record["end"] = "server_close_notify"
            _send_close_notify(tls)
            return None
        finally:
            tls.settimeout(SERVER_IO_TIMEOUT)
        end = buf.index(b"\r\n\r\n")
        head = bytes(buf[:end])
        del buf[:end + 4]
        return head

    def _read_body(self, tls, buf, head, record):
        """The request body per Content-Length (chunked is not supported)."""
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(buf) < length:
            if not self._fill(tls, buf, record):
                return None
        body = bytes(buf[:length])
        del buf[:length]
        return body


def _send_close_notify(tls):
    """Sends close_notify; the peer's answer is waited for a second at most."""
    tls.settimeout(1.0)
    try:
        tls.unwrap()
    except (OSError, ValueError):
        pass


def _close_without_close_notify(tls):
    """Closes the TCP connection under `tls` with a FIN and no close_notify:
    the SSL object is detached, never shut down."""
    fd = tls.detach()
    raw = socket.socket(fileno=fd)
    try:
        raw.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    raw.close()


def main():
    c = certs()
    print("certs in %s" % c.dir, flush=True)
    nginx = TlsNginx(c).start()
    servers = {name: TlsServer(getattr(c, name)).start()
               for name in ("expired", "future", "wrong_host", "self_signed", "untrusted")}
    servers["stall"] = TlsServer(c.valid, "stall").start()
    servers["truncate"] = TlsServer(c.valid, "truncate").start()
    print("nginx https port %d, client-cert port %d" % (nginx.port, nginx.client_port))
    for name, srv in servers.items():
        print("%s port %d" % (name, srv.port), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for srv in servers.values():
            srv.stop()
        nginx.stop()


if __name__ == "__main__":
    main()
