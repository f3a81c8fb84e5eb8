"""results/report.html rendered by a real headless Chromium, driven over the DevTools protocol:
every figure loads, every section, table and verdict is there, the console stays clean."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import websocket
from test_report import PAGES, _results

from frernn import claims, report

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1280,900",
)
INSPECT = """(() => ({
  images: [...document.images].map(i => ({complete: i.complete, width: i.naturalWidth})),
  sections: [...document.querySelectorAll("section")].map(s => ({
    id: s.id, tables: s.querySelectorAll("table").length, images: s.querySelectorAll("img").length
  })),
  verdicts: [...document.querySelectorAll(".verdict")].map(v => v.textContent),
  claims: (document.querySelector("table") || {innerText: ""}).innerText,
  height: document.documentElement.scrollHeight,
}))()"""


class DevTools:
    """A minimal client of Chromium's DevTools protocol over its page websocket."""

    def __init__(self, url: str) -> None:
        self.socket = websocket.create_connection(url, timeout=60)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        """Send one command and wait for its reply, keeping the events that arrive meanwhile."""
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 60) -> None:
        """Block until ``event`` has arrived."""
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(event)
            self.events.append(json.loads(self.socket.recv()))

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads the page reported."""
        found = []
        for e in self.events:
            params = e.get("params", {})
            if e.get("method") == "Runtime.exceptionThrown":
                found.append(params["exceptionDetails"].get("text", "exception"))
            elif e.get("method") == "Runtime.consoleAPICalled" and params["type"] == "error":
                found.append(" ".join(str(a.get("value")) for a in params["args"]))
            elif e.get("method") == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"]["text"])
        return found


def render(page: Path, screenshot: Path, profile: Path) -> tuple[dict, list[str]]:
    """Open ``page`` in headless Chromium; return what the DOM holds and the errors, and save
    a full-page screenshot."""
    browser = subprocess.Popen(
        [CHROMIUM, *FLAGS, "--remote-debugging-port=0", f"--user-data-dir={profile}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            assert browser.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as reply:
            target = next(t for t in json.load(reply) if t["type"] == "page")
        tools = DevTools(target["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log"):
            tools.call(f"{domain}.enable")
        tools.call("Page.navigate", url=page.resolve().as_uri())
        tools.wait_for("Page.loadEventFired")
        result = tools.call("Runtime.evaluate", expression=INSPECT, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        dom = result["result"]["value"]
        shot = tools.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        tools.socket.close()
        return dom, tools.errors()
    finally:
        browser.terminate()
        browser.wait(timeout=30)


def check(dom: dict, errors: list[str], names: list[str]) -> None:
    """Every figure decoded, a section with table and image per page, every verdict shown."""
    assert dom["images"] and all(i["complete"] and i["width"] > 0 for i in dom["images"])
    assert [s["id"] for s in dom["sections"]] == names
    assert all(s["tables"] >= 1 and s["images"] == 1 for s in dom["sections"])
    assert len(dom["verdicts"]) == len(claims.CLAIMS)
    for claim in claims.CLAIMS:
        assert claim.text in dom["claims"], claim.text
    assert not errors, errors


def test_report_of_contract_csvs_renders_in_chromium(tmp_path: Path) -> None:
    results = _results(tmp_path)
    page = results / "report.html"
    page.write_text(report.build(results))
    dom, errors = render(page, results / "logs" / "report.png", tmp_path / "profile")
    check(dom, errors, [p.name for p in PAGES])
    assert dom["height"] > 2000 and (results / "logs" / "report.png").stat().st_size > 10_000


def test_broken_image_and_console_errors_are_seen(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text(
        "<html><body><img src='data:image/png;base64,AAAA'>"
        "<script>console.error('boom'); undefinedName();</script></body></html>"
    )
    dom, errors = render(page, tmp_path / "shot.png", tmp_path / "profile")
    assert dom["images"] == [{"complete": True, "width": 0}]
    assert "boom" in errors and any("undefinedName" in e or "Uncaught" in e for e in errors)
    with pytest.raises(AssertionError):
        check(dom, [], [])


@pytest.mark.slow
def test_smoke_pipeline_report_renders_in_chromium(smoke_pipeline: Path) -> None:
    """The smoke run's page; the screenshot stays in results/logs/ for a person to look at."""
    results = smoke_pipeline / "results"
    screenshot = results / "logs" / "report.png"
    dom, errors = render(results / "report.html", screenshot, smoke_pipeline / "chromium")
    check(dom, errors, [p.name for p in PAGES])
    assert screenshot.stat().st_size > 10_000
