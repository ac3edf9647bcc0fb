"""The operator's page (issue 17) in a real browser: headless Chromium loads
GET / from a running fetchd during a short soak-like run (a few thousand
fetches from a private nginx: done 200s, done 404s, refused connections)
and

- the DOM it builds (--dump-dom) holds every series the issue names, each a
  polyline of the SVG the page draws, and the gauges' warm-up marks;
- its screenshot (--screenshot) is not blank: the PNG, decoded with the
  standard library (zlib), has many colours and a real pixel variance;
- the page is served within its size budget (64 KiB) and its history
  within a bound, and the counts the page shows agree with /metrics.

And the staircase: fetchd-leaky (which loses a read buffer on every failed
or >= 400 job) run in waves ends each idle moment one step higher, and the
page marks buffers in use red; the real fetchd, same waves, comes back to
its warm-up level every time and nothing is marked.

Chromium runs as root only with --no-sandbox; every run has its own
--user-data-dir and a bounded time, and is killed (its whole process group)
when that runs out. Without Chromium (Debian package chromium) the tests
skip, except under CI=true, where they fail.
"""

import html.parser
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import unittest
import zlib

from fetchtest import BIN_DIR, REPO, Nginx, free_port, remove_tree, tmpdir

sys.path.insert(0, os.path.join(REPO, "tests", "soak"))
import soak  # noqa: E402

FETCHD = os.path.join(BIN_DIR, "fetchd")
TEST_BIN_DIR = os.environ.get("FETCHD_TEST_BIN_DIR") or os.path.join(REPO, "build", "tests")
FETCHD_LEAKY = os.path.join(TEST_BIN_DIR, "fetchd-leaky")
LEAK_WAVES = 3
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_TIMEOUT = 90.0
IO_TIMEOUT = 30.0
PAGE_BUDGET = 64 * 1024
HISTORY_BUDGET = 512 * 1024
FETCHES = 3000
WAVE = 500
SAMPLES_AFTER = 3
RUN_TIMEOUT = 300.0

# Every series the issue names, as "panel/name" (the page's data-series).
REQUIRED_SERIES = (
    ["connections/" + s for s in ("connecting", "active", "idle")]
    + ["buffers/in_use", "buffers/free"]
    + ["jobs/" + s for s in ("queued", "running", "retained")]
    + ["heap_blocks/" + c for c in ("fetchd", "libuv", "jansson")]
    + ["heap_bytes/" + c for c in ("fetchd", "libuv", "jansson")]
    + ["objects/" + t for t in ("conn", "job", "origin", "dns_entry", "buffer", "request",
                                "ctl_client", "metrics_client", "history")]
    + ["rss/resident", "fds/open"]
    + ["finished/" + r for r in ("done", "failed", "cancelled")]
    + ["received/received"])
RATES = ("finished/", "received/")


def find_chromium():
    for path in CHROMIUM_CANDIDATES:
        if os.path.exists(path):
            return path
    return None


class DomSeries(html.parser.HTMLParser):
    """Collects the data-series of polylines, the data-warm of lines and the
    data-series of legend entries from the DOM Chromium dumped."""

    def __init__(self):
        super().__init__()
        self.lines, self.warm, self.legend, self.up = {}, set(), set(), set()
        self.status = ""
        self._in_status = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "polyline" and "data-series" in a:
            self.lines[a["data-series"]] = a.get("points", "")
        elif tag == "line" and "data-warm" in a:
            self.warm.add(a["data-warm"])
        elif tag == "li" and "data-series" in a:
            self.legend.add(a["data-series"])
            if "up" in a.get("class", "").split():
                self.up.add(a["data-series"])
        self._in_status = a.get("id") == "status"

    def handle_data(self, data):
        if self._in_status:
            self.status += data

    def handle_endtag(self, tag):
        self._in_status = False


def png_pixels(data):
    """Decodes an 8-bit RGB or RGBA, non-interlaced PNG: (width, height,
    channels, rows of bytes)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        elif kind == b"IEND":
            break
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = ihdr
    if depth != 8 or colour not in (2, 6) or interlace != 0:
        raise ValueError("unsupported PNG: depth %d colour %d interlace %d"
                         % (depth, colour, interlace))
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + ((a + b) >> 1)) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, bpp, rows


def pixel_stats(width, height, bpp, rows, step=2):
    """Luminance variance, the share of non-white pixels and the number of
    distinct colours, over every step-th pixel of every step-th row."""
    n = total = total2 = dark = 0
    colours = set()
    for y in range(0, height, step):
        row = rows[y]
        for x in range(0, width, step):
            r, g, b = row[x * bpp], row[x * bpp + 1], row[x * bpp + 2]
            lum = (299 * r + 587 * g + 114 * b) / 1000
            n += 1
            total += lum
            total2 += lum * lum
            dark += lum < 240
            colours.add((r, g, b))
    mean = total / n
    return total2 / n - mean * mean, dark / n, len(colours)


class Page(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.nginx = Nginx().start()
        cls.addClassCleanup(cls.nginx.stop)

    ARGS = ["--history-interval", "1", "--history-warmup", "2", "--idle-timeout", "1",
            "--log-jobs", "off"]

    def setUp(self):
        self.chromium = find_chromium()
        if self.chromium is None:
            msg = "chromium is not installed (Debian package chromium)"
            if os.environ.get("CI") == "true":
                self.fail(msg + "; CI needs it")
            self.skipTest(msg)
        self.work = tmpdir("page-")
        self.addCleanup(remove_tree, self.work)

    def start_daemon(self, binary=FETCHD, args=()):
        """A sample a second and a warm-up mark after two: a run spans many
        samples, and the marks are on the page."""
        if not os.path.exists(binary):
            self.fail("%s not found (build first)" % binary)
        self.daemon = soak.Daemon(binary, self.work, self.ARGS + list(args))
        if binary == FETCHD:
            self.addCleanup(self.check_clean_exit)
        self.addCleanup(self.daemon.stop)
        try:
            self.daemon.start()
        except soak.SetupError as exc:
            self.fail(str(exc))

    def check_clean_exit(self):
        log = self.daemon.log()
        for mark in ("Sanitizer", "runtime error:"):
            self.assertNotIn(mark, log)
        self.assertEqual(self.daemon.proc.returncode, 0, self.daemon.log_tail())

    def history(self):
        status, body = soak.http_get(self.daemon.port, "/history.json")
        self.assertEqual(status, 200, body)
        self.assertLess(len(body), HISTORY_BUDGET)
        return json.loads(body)

    def wait_samples(self, n):
        """Until n more samples were taken (bounded)."""
        want = self.history()["taken"] + n
        deadline = time.monotonic() + IO_TIMEOUT
        while self.history()["taken"] < want and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertGreaterEqual(self.history()["taken"], want)

    def soak_run(self, fetches=FETCHES):
        """Jobs in waves of WAVE: 200s, 404s and refused ones."""
        refused = "http://127.0.0.1:%d/" % free_port()
        urls = [self.nginx.url("/small.txt"), self.nginx.url("/1k.bin"),
                self.nginx.url("/status/404"), refused]
        client = self.daemon.rpc()
        try:
            client.result("subscribe", {"events": ["finished"]})
            states = {}
            for start in range(0, fetches, WAVE):
                specs = [{"url": urls[i % len(urls)]} for i in range(start, start + WAVE)]
                ids = client.result("submit", {"jobs": specs}, IO_TIMEOUT)["ids"]
                for jid in ids:
                    job = client.finished_job(jid, IO_TIMEOUT)
                    states[job["state"]] = states.get(job["state"], 0) + 1
            return states
        finally:
            client.close()

    def chromium_run(self, *args):
        """Runs Chromium on the page with args; returns its stdout."""
        profile = os.path.join(self.work, "chromium-profile")
        shutil.rmtree(profile, ignore_errors=True)
        cmd = [self.chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
               "--no-first-run", "--no-default-browser-check", "--disable-extensions",
               "--user-data-dir=" + profile, "--virtual-time-budget=10000"] + list(args)
        cmd.append("http://127.0.0.1:%d/" % self.daemon.port)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True,
                                env=dict(os.environ, HOME=self.work))
        try:
            out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            self.fail("chromium did not finish within %.0f s" % CHROMIUM_TIMEOUT)
        finally:
            # Whatever of its helpers is left goes with it.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.assertEqual(proc.returncode, 0, err.decode(errors="replace")[-3000:])
        return out

    def test_page_in_chromium_during_a_run(self):
        self.start_daemon()
        self.wait_samples(3)  # past the warm-up mark
        outcome = {}

        def run():
            try:
                outcome["states"] = self.soak_run()
            except Exception as exc:  # reported by the main thread
                outcome["error"] = exc
        runner = threading.Thread(target=run, daemon=True)
        runner.start()
        # The DOM is taken while the jobs run (once the first have finished).
        deadline = time.monotonic() + IO_TIMEOUT
        while (soak.scrape(self.daemon.port).get("fetchd_jobs_finished_total", result="done") == 0
               and runner.is_alive() and time.monotonic() < deadline):
            time.sleep(0.05)
        dom = DomSeries()
        dom.feed(self.chromium_run("--dump-dom").decode())
        runner.join(RUN_TIMEOUT)
        self.assertFalse(runner.is_alive(), "the run did not end within %.0f s" % RUN_TIMEOUT)
        if "error" in outcome:
            raise outcome["error"]
        states = outcome["states"]
        self.assertEqual(sum(states.values()), FETCHES)
        # Three of every four URLs answer (200, 200, 404: done), one refuses.
        self.assertEqual(states, {"done": FETCHES * 3 // 4, "failed": FETCHES // 4}, states)
        self.wait_samples(SAMPLES_AFTER)

        status, page = soak.http_get(self.daemon.port, "/")
        self.assertEqual(status, 200)
        self.assertLess(len(page), PAGE_BUDGET, "the page is %d bytes" % len(page))
        missing = [s for s in REQUIRED_SERIES if s not in dom.lines]
        self.assertEqual(missing, [], "series missing from the DOM; status: %r" % dom.status)
        for name in REQUIRED_SERIES:
            self.assertIn(name, dom.legend)
            # A line through the samples so far, not an empty path.
            self.assertGreater(len(dom.lines[name].split()), 2, name)
            if not name.startswith(RATES):
                self.assertIn(name, dom.warm, "no warm-up mark for " + name)
        self.assertIn("samples every 1 s", dom.status)

        # The page's figures are the endpoint's: jobs finished per second
        # were drawn from the counters /metrics exports.
        h = self.history()
        panels = {p["id"]: {s["name"]: s for s in p["series"]} for p in h["panels"]}
        self.assertGreater(max(panels["finished"]["done"]["v"]), 0)
        self.assertGreater(max(panels["received"]["received"]["v"]), 0)
        s = soak.scrape(self.daemon.port)
        self.assertEqual(panels["objects"]["history"]["v"][-1], s.get("fetchd_objects",
                                                                      type="history"))

        shot = os.path.join(self.work, "page.png")
        # The screenshot after the run: the whole hour so far, with the run.
        self.chromium_run("--screenshot=" + shot, "--window-size=1400,1800",
                          "--hide-scrollbars")
        with open(shot, "rb") as f:
            data = f.read()
        keep = os.environ.get("FETCHD_TEST_TMP")
        if keep:
            # The last screenshot stays for a look: build/test-tmp/page.png.
            os.makedirs(keep, exist_ok=True)
            with open(os.path.join(keep, "page.png"), "wb") as f:
                f.write(data)
        width, height, bpp, rows = png_pixels(data)
        self.assertEqual((width, height), (1400, 1800))
        variance, dark, colours = pixel_stats(width, height, bpp, rows)
        self.assertGreater(variance, 100, "a blank screenshot (variance %.1f)" % variance)
        self.assertGreater(dark, 0.01, "a blank screenshot (%.2f%% not white)" % (dark * 100))
        self.assertGreater(colours, 20, "a blank screenshot (%d colours)" % colours)

    def staircase(self, binary):
        """Waves of fetches, each followed by an idle moment with nothing
        retained; returns the buffers in use at each idle moment, the
        warm-up level, and the page's DOM at the end."""
        self.start_daemon(binary, ["--retain-jobs", "0"])
        self.wait_samples(3)
        levels = []
        for _ in range(LEAK_WAVES):
            self.soak_run(WAVE)
            self.wait_samples(2)
            levels.append(soak.scrape(self.daemon.port).get("fetchd_buffers", state="in_use"))
        panels = {p["id"]: {s["name"]: s for s in p["series"]} for p in self.history()["panels"]}
        dom = DomSeries()
        dom.feed(self.chromium_run("--dump-dom").decode())
        return levels, panels["buffers"]["in_use"]["warm"], dom

    def test_a_leak_shows_as_a_staircase(self):
        """fetchd-leaky loses a read buffer on every failed or >= 400 job:
        after each wave the idle level of buffers in use is higher, and the
        page marks that gauge (red, class "up") above its warm-up level."""
        levels, warm, dom = self.staircase(FETCHD_LEAKY)
        self.assertEqual(warm, 0)
        self.assertTrue(all(b > a for a, b in zip([warm] + levels, levels)), levels)
        self.assertEqual(dom.up, {"buffers/in_use"}, dom.status)

    def test_a_flat_daemon_is_not_marked(self):
        """The same waves on the real fetchd: back to the warm-up level after
        each, and nothing marked."""
        levels, warm, dom = self.staircase(FETCHD)
        self.assertEqual(levels, [warm] * LEAK_WAVES)
        self.assertEqual(dom.up, set(), dom.status)

    def test_blank_png_is_caught(self):
        """The blank check itself: a white PNG made here fails it."""
        width, height = 64, 32
        raw = b"".join(b"\x00" + b"\xff" * (width * 3) for _ in range(height))

        def chunk(kind, body):
            return (struct.pack(">I", len(body)) + kind + body
                    + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
        png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                                                                  8, 2, 0, 0, 0))
               + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
        variance, dark, colours = pixel_stats(*png_pixels(png))
        self.assertEqual((variance, dark, colours), (0, 0, 1))


if __name__ == "__main__":
    unittest.main()
