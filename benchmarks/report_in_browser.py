"""Open a drift report.html in headless Chromium the way a reviewer would, and check it really is self-contained.

    python benchmarks/report_in_browser.py REPORT_DIR_OR_HTML [--chromium /usr/bin/chromium] [--width 1280]

Passes when the page loads with no console error, asks the network for nothing (only the page itself and data:
URLs are loaded), shows every expected section (from drift.json beside it: one per candidate, each with its
summary, photo panels and per-class chart), decodes every embedded image and renders no text below 14 px. Saves a
full-page screenshot as report.png beside the page. Prints a Markdown table; exits 0 on a pass, 1 on a failed
check, 2 when Chromium or the page is missing.

Chromium is driven over its DevTools protocol on a pipe (--remote-debugging-pipe: the browser reads commands on
fd 3 and writes replies and events on fd 4, NUL-terminated JSON). Unlike a --remote-debugging-port it needs no
free port (several engineers run browsers on one machine) and no websocket package. Console errors come from
three events because each misses some: Runtime.consoleAPICalled (console.error/assert), Runtime.exceptionThrown
(uncaught exceptions) and Log.entryAdded (the browser's own errors: failed loads, blocked content). Parsing
--enable-logging=stderr is not reliable: Chromium's stderr is full of unrelated ERROR lines (D-Bus, GPU) and
does not carry failed resource loads.
"""
from __future__ import annotations

import argparse
import base64
import fcntl
import json
import math
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
MIN_TEXT_PX = 14
MAX_SCREENSHOT_PX = 16384          # Chromium's limit for one captured surface
SETTLE_SECONDS = 0.5               # after the load event, for errors reported late (image decoding)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--no-default-browser-check", "--mute-audio", "--hide-scrollbars",
         "--remote-debugging-pipe")

# What the page shows, measured by the browser itself (the page has no script; this runs in the checker).
PAGE_FACTS = """(() => {
  const textOf = (element) => [...element.childNodes].filter((node) => node.nodeType === Node.TEXT_NODE)
      .map((node) => node.textContent.trim()).join(' ').trim();
  let smallest = null;
  for (const element of document.querySelectorAll('body *')) {
    const text = textOf(element);
    if (!text) continue;
    const svg = element.closest('svg');
    // Inline SVG scaled by its viewBox draws text smaller than its computed font size.
    const scale = svg && svg.viewBox.baseVal && svg.viewBox.baseVal.width
        ? svg.getBoundingClientRect().width / svg.viewBox.baseVal.width : 1;
    const px = parseFloat(getComputedStyle(element).fontSize) * scale;
    if (smallest === null || px < smallest.px) smallest = {px: px, text: text.slice(0, 60)};
  }
  return {
    title: document.title,
    sections: [...document.querySelectorAll('section[id]')].map((section) => ({
      id: section.id, headings: [...section.querySelectorAll('h2, h3')].map((h) => h.textContent.trim())})),
    images: [...document.images].map((image) => ({decoded: image.complete && image.naturalWidth > 0,
                                                 alt: image.alt})),
    charts: [...document.querySelectorAll('section[id] svg.iou-chart')].map((svg) => svg.closest('section').id),
    smallest: smallest,
  };
})()"""


@dataclass
class BrowserCheck:
    page: Path
    load_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)        # console errors, exceptions, failed loads
    warnings: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)      # anything fetched besides the page and data: URLs
    facts: dict = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)       # expected sections or headings not shown
    screenshot: Path | None = None
    screenshot_size: tuple[int, int] = (0, 0)

    def problems(self) -> list[str]:
        images = self.facts.get("images", [])
        smallest = self.facts.get("smallest") or {}
        problems = [f"console error: {error}" for error in self.errors]
        problems += [f"network request: {url}" for url in self.requests]
        problems += [f"missing: {what}" for what in self.missing]
        problems += [f"image not decoded: {image['alt']}" for image in images if not image["decoded"]]
        if smallest and smallest["px"] < MIN_TEXT_PX - 0.01:
            problems.append(f"text at {smallest['px']:.1f} px (< {MIN_TEXT_PX}): {smallest['text']!r}")
        return problems


# ------------------------------------------------------------------------------------------ DevTools on a pipe

class DevTools:
    """One Chromium process and its DevTools pipe; `call` waits for its reply and keeps events for later."""

    def __init__(self, chromium: str, profile: Path, log):
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        # Numbers ≥ 10, so the dup2 onto 3 and 4 in the child cannot overwrite one end with the other.
        child_read = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD_CLOEXEC, 10)
        child_write = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_browser_read)
        os.close(from_browser_write)

        def hand_over_pipe():
            os.dup2(child_read, 3)       # dup2 makes 3 and 4 inheritable; everything else stays close-on-exec
            os.dup2(child_write, 4)

        self.process = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=False,
                                        preexec_fn=hand_over_pipe)
        os.close(child_read)
        os.close(child_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline, f"the reply to {method}")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            event = self._receive(deadline, method)
            self.events.append(event)
            if event.get("method") == method and event.get("sessionId") == session:
                return event

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.events.append(self._receive(deadline, "events"))
        except TimeoutError:
            pass

    def _receive(self, deadline: float, waiting_for: str) -> dict:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._from_browser], [], [], remaining)[0]:
                raise TimeoutError(f"Chromium sent nothing while waiting for {waiting_for}")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed its DevTools pipe (exit code {self.process.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


# --------------------------------------------------------------------------------------------------- the check

def check_report(page: Path, chromium: str = CHROMIUM, screenshot: Path | None = None, width: int = 1280,
                 timeout: float = 60.0) -> BrowserCheck:
    """Load `page` in headless Chromium, collect what went wrong, and save a full-page screenshot."""
    page = page.resolve()
    result = BrowserCheck(page)
    with tempfile.TemporaryDirectory(prefix="report-in-browser-") as scratch, \
            open(Path(scratch) / "chromium.log", "wb") as log:
        browser = DevTools(chromium, Path(scratch) / "profile", log)
        try:
            session = _open_page(browser, page.as_uri(), width, timeout, result)
            result.facts = browser.call("Runtime.evaluate", {"expression": PAGE_FACTS, "returnByValue": True},
                                        session)["result"]["value"]
            if screenshot is not None:
                result.screenshot_size = _save_screenshot(browser, session, width, screenshot)
                result.screenshot = screenshot
            _collect(browser.events, session, page.as_uri(), result)
        finally:
            browser.close()
    result.missing = _missing_sections(result.facts, _expected_candidates(page))
    return result


def _open_page(browser: DevTools, uri: str, width: int, timeout: float, result: BrowserCheck) -> str:
    target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.call(f"{domain}.enable", session=session)
    browser.call("Emulation.setDeviceMetricsOverride",
                 {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session)
    started = time.monotonic()
    navigation = browser.call("Page.navigate", {"url": uri}, session)
    if navigation.get("errorText"):
        result.errors.append(f"navigation to {uri} failed: {navigation['errorText']}")
        return session
    browser.wait_for("Page.loadEventFired", session, timeout)
    result.load_seconds = time.monotonic() - started
    browser.drain(SETTLE_SECONDS)
    return session


def _save_screenshot(browser: DevTools, session: str, width: int, path: Path) -> tuple[int, int]:
    content = browser.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
    height = min(math.ceil(content["height"]), MAX_SCREENSHOT_PX)
    browser.call("Emulation.setDeviceMetricsOverride",
                 {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
    shot = browser.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session)
    from groupvit_edge.files import write_bytes_atomic
    write_bytes_atomic(path, base64.b64decode(shot["data"]))
    return width, height


def _collect(events: list[dict], session: str, uri: str, result: BrowserCheck) -> None:
    """Sort the page's events into errors, warnings and requests that left the page."""
    for event in events:
        if event.get("sessionId") != session:
            continue
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            result.errors.append(details.get("exception", {}).get("description") or details.get("text", "?"))
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert", "warning"):
            text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params["args"])
            (result.warnings if params["type"] == "warning" else result.errors).append(f"console: {text}")
        elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
            entry = params["entry"]
            text = f"{entry['source']}: {entry['text']}" + (f" ({entry['url']})" if entry.get("url") else "")
            (result.errors if entry["level"] == "error" else result.warnings).append(text)
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if url != uri and not url.startswith("data:"):
                result.requests.append(url)
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            result.errors.append(f"load failed: {params.get('errorText')}")


def _expected_candidates(page: Path) -> int | None:
    drift_json = page.parent / "drift.json"
    return len(json.loads(drift_json.read_text())["candidates"]) if drift_json.is_file() else None


def _missing_sections(facts: dict, candidates: int | None) -> list[str]:
    """Expected sections and headings the page does not show; without drift.json, at least one candidate."""
    from groupvit_edge.metrics.html_report import (CANDIDATE_HEADINGS, LEGEND_SECTION, RUN_SECTION,
                                                   candidate_section_id)
    shown = {section["id"]: section["headings"] for section in facts.get("sections", [])}
    charts = facts.get("charts", [])
    missing = [f"section #{name}" for name in (RUN_SECTION, LEGEND_SECTION) if name not in shown]
    for index in range(1, (candidates or 1) + 1):
        section = candidate_section_id(index)
        if section not in shown:
            missing.append(f"section #{section}")
            continue
        missing += [f"heading {heading!r} in #{section}" for heading in CANDIDATE_HEADINGS
                    if heading not in shown[section]]
        if section not in charts:
            missing.append(f"per-class IoU chart in #{section}")
    return missing


# ------------------------------------------------------------------------------------------------------ output

def table(result: BrowserCheck) -> str:
    facts = result.facts
    images = facts.get("images", [])
    smallest = facts.get("smallest") or {}
    sections = ", ".join(f"#{section['id']}" for section in facts.get("sections", [])) or "none"
    rows = [("page", f"{result.page} ({result.page.stat().st_size / 1e6:.1f} MB)"),
            ("loaded", f"in {result.load_seconds:.2f} s, title {facts.get('title', '')!r}"),
            ("console errors", "; ".join(result.errors) or "none"),
            ("console warnings", "; ".join(result.warnings) or "none"),
            ("network requests besides the page", "; ".join(result.requests) or "none"),
            ("sections", sections),
            ("missing", "; ".join(result.missing) or "nothing"),
            ("images decoded", f"{sum(image['decoded'] for image in images)}/{len(images)}"),
            ("per-class charts", str(len(facts.get("charts", [])))),
            ("smallest text", f"{smallest.get('px', 0):.1f} px ({smallest.get('text', '')!r})"),
            ("screenshot", f"{result.screenshot} ({result.screenshot_size[0]}×{result.screenshot_size[1]})"
             if result.screenshot else "not taken")]
    lines = ["| check | result |", "|---|---|"] + [f"| {name} | {_cell(value)} |" for name, value in rows]
    problems = result.problems()
    lines += ["", "FAILED:\n" + "\n".join(f"- {problem}" for problem in problems) if problems else "PASSED"]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "/").split())     # one table row, whatever a browser message holds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a drift report folder, or its report.html")
    parser.add_argument("--chromium", default=CHROMIUM)
    parser.add_argument("--width", type=int, default=1280, help="viewport width in CSS px")
    args = parser.parse_args()
    page = args.report / "report.html" if args.report.is_dir() else args.report
    if not page.is_file():
        print(f"no report page at {page}: pass a drift --report folder or its report.html", file=sys.stderr)
        return 2
    if not shutil.which(args.chromium):
        print(f"no Chromium at {args.chromium}: apt-get install -y chromium, or pass --chromium", file=sys.stderr)
        return 2
    result = check_report(page, args.chromium, screenshot=page.parent / "report.png", width=args.width)
    print(table(result))
    return 1 if result.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
