"""Headless Chromium driven over the Chrome DevTools Protocol (websockets, no Playwright), and a
`harness leaderboard` server on a loopback port: shared by the browser tests
(tests/test_leaderboard_browser.py) and the paint-time benchmark (benchmarks/leaderboard_paint.py).

Chromium is Debian's `chromium`; find_chromium() installs it with apt-get when it is missing and
raises BrowserUnavailable (the tests turn that into a skip) when that is impossible here."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

DEADLINE_S = 300  # per page: generous, a deadline for a condition rather than a timing assert

# Injected before any page script runs: records, in the page's own clock (ms since navigation
# start), when the first ranking table has rows in the DOM (a Markdown table since issue 29, an
# st.table before) and when the frame after it is painted (two animation frames: the first runs
# before that paint, the second after it).
PAINT_PROBE = """
(() => {
  window.__paint = {};
  const seen = () => document.querySelector(
    '[data-testid="stMarkdownContainer"] table tbody tr, [data-testid="stTable"] table tbody tr');
  const done = () => {
    if (window.__paint.table_dom) return;
    window.__paint.table_dom = performance.now();
    requestAnimationFrame(() => requestAnimationFrame(() => { window.__paint.table_paint = performance.now(); }));
  };
  const watch = () => {
    if (seen()) { done(); return; }
    new MutationObserver((_, obs) => { if (seen()) { obs.disconnect(); done(); } })
      .observe(document.documentElement, {childList: true, subtree: true});
  };
  if (document.documentElement) watch(); else document.addEventListener('DOMContentLoaded', watch);
})();
"""


class BrowserUnavailable(RuntimeError):
    pass


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BrowserUnavailable("chromium is not installed and apt-get cannot run here (not root or no apt)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if r.returncode != 0:
            raise BrowserUnavailable(f"chromium missing and `{' '.join(cmd)}` failed: {r.stderr.strip()[-300:]}")
    path = shutil.which("chromium")
    if not path:
        raise BrowserUnavailable("apt-get installed no chromium binary")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def stop_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class CDP:
    """The few DevTools Protocol calls the tests and the benchmark need, over the page's websocket."""

    def __init__(self, ws):
        self.ws = ws
        self.next = 0
        self.events: list[dict] = []

    def call(self, method: str, **params):
        self.next += 1
        self.ws.send(json.dumps({"id": self.next, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=DEADLINE_S))
            if msg.get("id") == self.next:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg and len(self.events) < 10_000:
                self.events.append(msg)

    def js(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"{expression[:80]}: {r['exceptionDetails'].get('text')}")
        return r.get("result", {}).get("value")

    def text(self) -> str:
        return self.js("document.body ? document.body.innerText : ''") or ""

    def running(self) -> bool:
        return bool(self.js("!!document.querySelector('[data-testid=\"stStatusWidget\"]')"))

    def url(self) -> str:
        return self.js("window.location.href") or ""

    def wait_for(self, expect: list[str], timeout: float = DEADLINE_S, what: str = "") -> str:
        """Wait until the page text holds every expected string and the app has stopped running."""
        end, text = time.time() + timeout, ""
        while time.time() < end:
            text = self.text()
            if all(e in text for e in expect) and not self.running():
                time.sleep(1.0)  # let charts finish drawing
                if not self.running():
                    return self.text()
            time.sleep(0.3)
        missing = [e for e in expect if e not in text]
        raise AssertionError(f"{what}: page never showed {missing}; page text starts: {text[:800]!r}")

    def open(self, url: str, expect: list[str], timeout: float = DEADLINE_S) -> str:
        """Navigate and wait until the page text holds every expected string (Streamlit renders
        client-side over its websocket, table by table) and the app has stopped running."""
        self.call("Page.navigate", url=url)
        return self.wait_for(expect, timeout, url)

    def screenshot(self, path: Path) -> None:
        import base64

        height = (
            self.js(
                "Math.max(document.body.scrollHeight, ...Array.from(document.querySelectorAll('section, div'))"
                ".map(e => e.scrollHeight))"
            )
            or 1200
        )
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=1400,
            height=min(int(height), 6000),
            deviceScaleFactor=1,
            mobile=False,
        )
        time.sleep(0.5)
        data = self.call("Page.captureScreenshot", format="png")["data"]
        self.call("Emulation.clearDeviceMetricsOverride")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))


@contextlib.contextmanager
def leaderboard_server(results: Path, env: dict | None = None):
    """`harness leaderboard --results RESULTS` on a free loopback port; yields (base url, process,
    seconds from start until its health endpoint answered)."""
    port = free_port()
    t0 = time.perf_counter()
    app = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "leaderboard", "--results", str(results), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=dict(os.environ, **(env or {})),
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health", DEADLINE_S)
        yield f"http://127.0.0.1:{port}", app, time.perf_counter() - t0
    finally:
        stop_group(app)


@contextlib.contextmanager
def chromium_page(chromium: str | None = None, download_dir: Path | None = None):
    """A headless Chromium with one page; yields its CDP session (Page and Runtime enabled)."""
    chromium = chromium or find_chromium()
    profile = tempfile.mkdtemp(prefix="board-chromium-")
    browser = subprocess.Popen(
        [
            chromium,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
            f"--user-data-dir={profile}",
            "--window-size=1400,1200",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        end = time.time() + DEADLINE_S
        while not (port_file.is_file() and port_file.read_text().strip()) and time.time() < end:
            time.sleep(0.1)
        devtools = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{devtools}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        from websockets.sync.client import connect

        with connect(page["webSocketDebuggerUrl"], max_size=2**28, open_timeout=20) as ws:
            cdp = CDP(ws)
            cdp.browser_pid = browser.pid  # its process group holds every Chromium process
            cdp.call("Page.enable")
            cdp.call("Runtime.enable")
            if download_dir is not None:
                download_dir.mkdir(parents=True, exist_ok=True)
                cdp.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(download_dir))
            yield cdp
    finally:
        stop_group(browser)
        shutil.rmtree(profile, ignore_errors=True)


def measure_paint(cdp: CDP, url: str, timeout: float = 120) -> dict:
    """Open url in a fresh page load and return, in seconds since navigation start (the page's own
    clock), when the first ranking table had rows in the DOM and when it was painted."""
    ident = cdp.call("Page.addScriptToEvaluateOnNewDocument", source=PAINT_PROBE)["identifier"]
    try:
        cdp.call("Page.navigate", url=url)
        end = time.time() + timeout
        while time.time() < end:
            got = cdp.js("window.__paint && window.__paint.table_paint ? window.__paint : null")
            if got:
                return {k: v / 1000 for k, v in got.items()}
            time.sleep(0.1)
        raise AssertionError(f"{url}: no ranking table within {timeout} s")
    finally:
        cdp.call("Page.removeScriptToEvaluateOnNewDocument", identifier=ident)
