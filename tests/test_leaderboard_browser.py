"""The leaderboard in a real headless Chromium: `harness leaderboard` serves the committed results
on a loopback port; the browser (driven over the Chrome DevTools Protocol) must show every
committed reference result on the overview, and each view renders. A screenshot per view goes to
the test's tmp_path (pytest keeps the last runs' under its basetemp), never into the working tree.
Every check waits for its condition with a generous deadline: Streamlit renders client-side, in
pieces, and a loaded machine renders slowly. Slow tests (`make test-slow`): Chromium and a
Streamlit server take most of a minute to start on a loaded 2-core machine.

Chromium is Debian's `chromium`; when it is missing the set-up installs it with apt-get, and the
test is skipped (with the reason) only when that is impossible here."""

import base64
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

import pytest

from harness.leaderboard import loader

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 300  # per page: generous, a deadline for a condition rather than a timing assert

pytestmark = pytest.mark.slow


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and apt-get cannot run here (not root or no apt)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if r.returncode != 0:
            pytest.skip(f"chromium missing and `{' '.join(cmd)}` failed: {r.stderr.strip()[-300:]}")
    path = shutil.which("chromium")
    if not path:
        pytest.skip("apt-get installed no chromium binary")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout} s")


class CDP:
    """The few DevTools Protocol calls the test needs, over the page's websocket."""

    def __init__(self, ws):
        self.ws = ws
        self.next = 0

    def call(self, method: str, **params):
        self.next += 1
        self.ws.send(json.dumps({"id": self.next, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=DEADLINE_S))
            if msg.get("id") == self.next:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def text(self) -> str:
        r = self.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''", returnByValue=True)
        return r.get("result", {}).get("value", "")

    def open(self, url: str, expect: list[str], timeout: float = DEADLINE_S) -> str:
        """Navigate and wait until the page text holds every expected string (Streamlit renders
        client-side over its websocket, table by table) and the app has stopped running."""
        self.call("Page.navigate", url=url)
        end, text = time.time() + timeout, ""
        while time.time() < end:
            text = self.text()
            running = self.call(
                "Runtime.evaluate",
                returnByValue=True,
                expression=("!!document.querySelector('[data-testid=\"stStatusWidget\"]')"),
            )["result"].get("value")
            if all(e in text for e in expect) and not running:
                time.sleep(1.0)  # let charts finish drawing before the screenshot
                return self.text()
            time.sleep(0.5)
        missing = [e for e in expect if e not in text]
        raise AssertionError(f"{url}: page never showed {missing}; page text starts: {text[:800]!r}")

    def screenshot(self, path: Path) -> None:
        height = (
            self.call(
                "Runtime.evaluate",
                returnByValue=True,
                expression=(
                    "Math.max(document.body.scrollHeight, ...Array.from(document.querySelectorAll('section, div'))"
                    ".map(e => e.scrollHeight))"
                ),
            )["result"].get("value")
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
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))


def _stop_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def browser_app():
    chromium = _chromium()
    port = _free_port()
    app = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "leaderboard", "--results", str(ROOT / "results"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    profile = tempfile.mkdtemp(prefix="board-chromium-")
    browser = None
    try:
        _wait_http(f"http://127.0.0.1:{port}/_stcore/health", DEADLINE_S)
        browser = subprocess.Popen(
            [
                chromium,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
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
        port_file = Path(profile) / "DevToolsActivePort"
        end = time.time() + DEADLINE_S
        while not (port_file.is_file() and port_file.read_text().strip()) and time.time() < end:
            time.sleep(0.2)
        devtools = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{devtools}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        from websockets.sync.client import connect

        with connect(page["webSocketDebuggerUrl"], max_size=2**28, open_timeout=20) as ws:
            cdp = CDP(ws)
            cdp.call("Page.enable")
            yield cdp, f"http://127.0.0.1:{port}"
    finally:
        for proc in (browser, app):  # each with every process it started
            if proc is not None:
                _stop_group(proc)
        shutil.rmtree(profile, ignore_errors=True)


def test_overview_in_chromium_shows_the_committed_results(browser_app, tmp_path):
    cdp, base = browser_app
    committed = loader.load(ROOT / "results")
    assert committed.runs and not committed.skipped
    tasks = sorted({r.task for r in committed.runs})
    methods = sorted({r.method for r in committed.runs})  # every committed method, in its task's table
    best = max((r for r in committed.runs if r.task == "needle"), key=lambda r: r.main_value)
    expect = (
        ["Overview", "Mean win rate", "zoo model", "not for real LLMs", f"{best.main_value:.3f}"] + tasks + methods
    )  # the schema's format of the main metric
    text = cdp.open(f"{base}/?view=overview", expect)  # waits until all of it has rendered
    assert [m for m in methods if m not in text] == []
    cdp.screenshot(tmp_path / "overview.png")
    assert (tmp_path / "overview.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "view,query,expect",
    [
        ("task", "task=needle", ["Needle accuracy by context length and depth", "Metrics by number"]),
        ("run", "", ["Run detail", "Metrics", "Samples"]),
        ("compare", "", ["Compare two runs", "shared samples"]),
    ],
)
def test_each_view_renders_in_chromium(browser_app, tmp_path, view, query, expect):
    cdp, base = browser_app
    text = cdp.open(f"{base}/?view={view}&{query}", expect)
    assert "Traceback" not in text and "Error" not in text.split("Samples")[0]
    cdp.screenshot(tmp_path / f"{view}.png")
    assert (tmp_path / f"{view}.png").stat().st_size > 10_000
