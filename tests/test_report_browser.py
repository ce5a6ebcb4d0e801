"""Reports opened in a real browser: headless Chromium driven over the DevTools protocol.

Debian's `chromium` (installed by .ci/run) and websocket-client (test extra). The page is
loaded from file://, as a person opens it; the test collects console errors, uncaught
exceptions and failed resource loads, asks the page which images did not decode, and saves
a screenshot (in the test's tmp dir; pytest -s prints where).

Run as a script to check and photograph any report (docs/report.png was made so):
    python tests/test_report_browser.py outputs/<date>/<time>/report.html docs/report.png
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
from conftest import FAST
from test_reports import dangling as missing_refs

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
]

# in the page: images that did not load or decode, by src
BROKEN_IMAGES_JS = (
    "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
    ".map(i => i.getAttribute('src'))"
)


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    # CI installs it (.ci/run); a test run without it is a broken set-up, not a skip
    raise AssertionError("no chromium on PATH: apt-get install -y chromium (see .ci/run)")


class Browser:
    """One headless Chromium with a fresh profile, one page, spoken to over CDP."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 1000):
        import websocket

        self.proc = subprocess.Popen(
            [
                chromium_binary(),
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                exited = self.proc.poll() is not None
                err = self.proc.stderr.read().decode(errors="replace") if exited else ""
                self.close()
                raise AssertionError(f"chromium did not start its DevTools endpoint\n{err[-2000:]}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = []
        while not pages and time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as f:
                pages = [t for t in json.load(f) if t["type"] == "page"]
            time.sleep(0.05)
        self.ws = websocket.create_connection(
            pages[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True
        )
        self._id = 0
        self.events: List[Dict[str, Any]] = []
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def call(self, method: str, params: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params or {}}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while not any(e["method"] == method for e in self.events):
            self.ws.settimeout(max(0.1, end - time.monotonic()))
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {method}")

    def open(self, path: Path) -> None:
        self.events.clear()
        self.call("Page.navigate", {"url": path.resolve().as_uri()})
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        r = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in r:
            raise AssertionError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def problems(self) -> List[str]:
        """Console errors, uncaught exceptions and failed loads seen since the last open()."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                what = d.get("exception", {}).get("description") or d.get("text")
                out.append(f"exception: {what}")
            elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(
                    "console.error: "
                    + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", []))
                )
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def screenshot(self, out: Path, full_page: bool = False) -> Path:
        params: Dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params["clip"] = {
                "x": 0,
                "y": 0,
                "width": size["width"],
                "height": size["height"],
                "scale": 1,
            }
        out.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", params)["data"]))
        return out

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path / "chromium-profile")
    yield b
    b.close()


def _png_size_and_colours(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.size, len(im.convert("RGB").resize((160, 120)).getcolors(1 << 16) or [])


def test_the_browser_check_catches_a_broken_page(browser, tmp_path):
    """Known-bad page first: a missing image, a thrown error and console.error must all show."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!doctype html><html><body><h1>broken</h1><img src="plots/missing.png">'
        '<script>console.error("boom"); undefined_function();</script></body></html>'
    )
    browser.open(page)
    problems = browser.problems()
    assert any("boom" in p for p in problems), problems
    assert any("undefined_function" in p for p in problems), problems
    assert browser.evaluate(BROKEN_IMAGES_JS) == ["plots/missing.png"]
    good = tmp_path / "good.html"
    good.write_text("<!doctype html><html><body><p>fine</p></body></html>")
    browser.open(good)
    assert browser.problems() == [] and browser.evaluate(BROKEN_IMAGES_JS) == []


def test_baseline_report_renders_cleanly_in_chromium(cli, browser, tmp_path):
    r = cli([*FAST, "stage=baseline", "name=browser_check"])
    assert r.code in (0, 1), r.out
    report = r.run_dir / "report.html"
    browser.open(report)

    assert browser.problems() == []
    n_images = browser.evaluate("document.images.length")
    assert n_images >= 5  # curves, input grid, overfit loss, confusion matrix, ...
    assert browser.evaluate(BROKEN_IMAGES_JS) == []
    # every image is drawn at a readable size, and the header says how the checks went
    widths = browser.evaluate(
        "Array.from(document.images).map(i => i.getBoundingClientRect().width)"
    )
    assert min(widths) >= 200, widths
    checks = r.json("checks.json")
    counts = {s: sum(c["status"] == s for c in checks) for s in ("pass", "warn", "fail", "skip")}
    banner = browser.evaluate("document.getElementById('verdict').textContent")
    assert " / ".join(f"{counts[s]} {s}" for s in ("pass", "warn", "fail", "skip")) in banner
    facts = browser.evaluate(
        "Object.fromEntries(Array.from(document.querySelectorAll('.facts dt'))"
        ".map(dt => [dt.textContent, dt.nextElementSibling.textContent]))"
    )
    assert facts["stage"] == "baseline" and facts["experiment"] == "browser_check"
    assert facts["data"].startswith("synthetic · 256 train / 128 val · 4 classes")
    # in-page links (table of contents, check names) all land on an element
    dangling = browser.evaluate(
        "Array.from(document.querySelectorAll('a[href^=\"#\"]'))"
        ".map(a => a.getAttribute('href').slice(1))"
        ".filter(id => !document.getElementById(id))"
    )
    assert dangling == []
    # a single run is part of nothing; its footer links the run's files; nothing points nowhere
    html = report.read_text()
    assert "↑ " not in html
    for f in ("metrics.csv", "summary.json", "checks.json", "runner.log", ".hydra/overrides.yaml"):
        assert f'href="{f}"' in html, f
    assert missing_refs(report) == []

    shot = browser.screenshot(tmp_path / "report.png")
    full = browser.screenshot(tmp_path / "report_full.png", full_page=True)
    (w, h), colours = _png_size_and_colours(shot)
    assert (w, h) == (1280, 1000) and colours > 20  # a rendered page, not a blank one
    (fw, fh), _ = _png_size_and_colours(full)
    assert fw == 1280 and fh > 2000  # the whole report: checks, curves, config, ...
    print(f"screenshots: {shot} {full}")


def test_sortable_tables_sort_by_the_clicked_column(browser, tmp_path):
    """The one script a report may carry (sweep tables): it runs without errors and sorts
    numbers numerically with n/a last."""
    from runner.report import Report, table

    rows = [
        {"job": "a", "val_acc": 0.5},
        {"job": "b", "val_acc": None},
        {"job": "c", "val_acc": 0.9},
        {"job": "d", "val_acc": 0.10},
    ]
    rep = Report("sweep")
    rep.add("Runs", table(rows, sortable=True))
    page = tmp_path / "report.html"
    page.write_text(rep.render())
    browser.open(page)
    col = (
        "Array.from(document.querySelectorAll('table.sortable tr')).slice(1)"
        ".map(r => r.children[0].textContent)"
    )
    assert browser.evaluate(col) == ["a", "b", "c", "d"]
    browser.evaluate("document.querySelectorAll('table.sortable th')[1].click()")
    assert browser.evaluate(col) == ["d", "a", "c", "b"]  # 0.1 < 0.5 < 0.9, n/a last
    browser.evaluate("document.querySelectorAll('table.sortable th')[1].click()")
    assert browser.evaluate(col)[:3] == ["c", "a", "d"]
    assert browser.problems() == []


if __name__ == "__main__":
    import sys
    import tempfile

    if len(sys.argv) != 3:
        sys.exit("usage: python tests/test_report_browser.py REPORT.html OUT.png")
    with tempfile.TemporaryDirectory() as profile:
        b = Browser(Path(profile) / "chromium-profile", height=1100)
        try:
            b.open(Path(sys.argv[1]))
            issues = b.problems() + [f"broken image: {s}" for s in b.evaluate(BROKEN_IMAGES_JS)]
            b.screenshot(Path(sys.argv[2]))
        finally:
            b.close()
    print("\n".join(issues) or f"no console errors or broken images; wrote {sys.argv[2]}")
    sys.exit(1 if issues else 0)
