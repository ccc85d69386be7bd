"""Drive a real headless Chromium over the DevTools protocol (for tests that look at pages).

``with Chromium() as browser:`` starts Debian's ``chromium`` with a fresh profile, and
``browser.goto(url)``, ``browser.wait_for(js)``, ``browser.evaluate(js)`` and
``browser.screenshot(path)`` drive one tab. Waiting happens inside the page: ``wait_for``
evaluates a JavaScript condition after every DOM change (a ``MutationObserver``) until it holds
or the timeout passes, so a test never sleeps a fixed time.

The protocol runs over one websocket (``websocket-client``) to the browser endpoint that
Chromium prints on start (``--remote-debugging-port=0`` picks a free port); the tab is attached
with ``flatten`` sessions, so every command names its ``sessionId``.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
)
INSTALL_HINT = (
    "install it with `apt-get install -y chromium` (`make test` does as root) or set CHROMIUM"
)
LISTENING = "DevTools listening on "

# Resolves once `condition` (a JS expression) is truthy; re-checked after every DOM mutation.
_WAIT_JS = """
new Promise((resolve, reject) => {
  const check = () => { try { return Boolean(%(condition)s); } catch (e) { return false; } };
  if (check()) { resolve(true); return; }
  const observer = new MutationObserver(() => {
    if (check()) { observer.disconnect(); clearTimeout(timer); resolve(true); }
  });
  const timer = setTimeout(() => {
    observer.disconnect();
    reject(new Error("timed out after %(timeout_ms)d ms waiting for: " + %(quoted)s));
  }, %(timeout_ms)d);
  observer.observe(document, {subtree: true, childList: true, characterData: true, attributes: true});
})
"""


class BrowserError(RuntimeError):
    """Chromium could not be started, or a DevTools command failed."""


def chromium_executable() -> str:
    """``$CHROMIUM``, else ``chromium`` on the PATH, else ``/usr/bin/chromium``."""
    candidate = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(candidate).is_file():
        raise BrowserError(f"no Chromium at {candidate}: {INSTALL_HINT}")
    return candidate


class Chromium:
    """One headless Chromium with one tab, driven over the DevTools protocol."""

    def __init__(self, width: int = 1400, height: int = 900, start_timeout_s: float = 60.0):
        self.width, self.height = width, height
        self.start_timeout_s = start_timeout_s
        self._profile: tempfile.TemporaryDirectory | None = None
        self._process: subprocess.Popen | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._output: list[str] = []
        self._socket: Any = None
        self._session: str | None = None
        self._next_id = 0
        self._events: list[dict] = []

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Chromium:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _start(self) -> None:
        """Start Chromium with a fresh profile, connect, and open one tab of the set size."""
        import websocket

        self._profile = tempfile.TemporaryDirectory(prefix="chromium-profile-")
        command = [chromium_executable(), *CHROMIUM_FLAGS]
        command += [f"--user-data-dir={self._profile.name}", "about:blank"]
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read_output, daemon=True).start()
        endpoint = self._wait_for_endpoint()
        self._socket = websocket.create_connection(endpoint, suppress_origin=True, timeout=60)
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        attached = self.send("Target.attachToTarget", targetId=target, flatten=True)
        self._session = attached["sessionId"]
        self.send("Page.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def _read_output(self) -> None:
        """Forward Chromium's stderr lines to the queue (None at its end)."""
        assert self._process is not None and self._process.stderr is not None
        for line in self._process.stderr:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _wait_for_endpoint(self) -> str:
        """The browser's websocket address, from the line Chromium prints when it listens."""
        deadline = time.monotonic() + self.start_timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise BrowserError(f"Chromium exited on start:\n{self.output()}")
            self._output.append(line)
            if line.startswith(LISTENING):
                return line.removeprefix(LISTENING).strip()
        raise BrowserError(
            f"Chromium did not listen within {self.start_timeout_s} s:\n{self.output()}"
        )

    def output(self) -> str:
        """What Chromium printed so far (its last 4,000 characters)."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self._output.append(line)
        return "\n".join(self._output)[-4000:]

    def close(self) -> None:
        """Close the connection, stop Chromium and remove its profile."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._process is not None and self._process.poll() is None:
            # Chromium runs in a session of its own: its process group holds its helpers
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(timeout=30)
        if self._profile is not None:
            self._profile.cleanup()
            self._profile = None

    # ------------------------------------------------------------------ protocol

    def _receive(self, what: str, timeout_s: float) -> dict:
        """The next protocol message; BrowserError naming ``what`` if none comes in time."""
        import websocket

        self._socket.settimeout(timeout_s)
        try:
            return json.loads(self._socket.recv())
        except websocket.WebSocketTimeoutException:
            raise BrowserError(f"{what}: no answer within {timeout_s} s") from None
        except (websocket.WebSocketException, OSError) as exc:
            raise BrowserError(f"{what}: connection lost ({exc}):\n{self.output()}") from None

    def send(self, method: str, timeout_s: float = 60.0, **params: Any) -> dict:
        """Send one DevTools command (to the tab once attached) and return its result.

        Events that arrive meanwhile are kept for :meth:`wait_event`.
        """
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self._session is not None:
            message["sessionId"] = self._session
        self._socket.send(json.dumps(message))
        while True:
            reply = self._receive(method, timeout_s)
            if "method" in reply:
                self._events.append(reply)
            if reply.get("id") != self._next_id:
                continue  # an event, or the answer to an abandoned command
            if "error" in reply:
                raise BrowserError(f"{method}: {reply['error'].get('message', reply['error'])}")
            return reply.get("result", {})

    def wait_event(self, method: str, timeout_s: float = 60.0) -> dict:
        """The parameters of the first event ``method`` (kept or still to come), consumed."""
        for index, event in enumerate(self._events):
            if event["method"] == method:
                return self._events.pop(index).get("params", {})
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            event = self._receive(f"waiting for {method}", left)
            if event.get("method") == method:
                return event.get("params", {})
            if "method" in event:
                self._events.append(event)
        raise BrowserError(f"no {method} within {timeout_s} s")

    def evaluate(self, expression: str, timeout_s: float = 60.0) -> Any:
        """The value of a JavaScript expression in the tab (promises are awaited)."""
        result = self.send(
            "Runtime.evaluate",
            timeout_s=timeout_s + 10,
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"JavaScript error: {text}")
        return result["result"].get("value")

    # ------------------------------------------------------------------ page actions

    def goto(self, url: str, timeout_s: float = 120.0) -> None:
        """Navigate the tab to ``url``; a new document is waited for until its load event
        (a change of the ``#fragment`` only, as in single-page apps, returns at once)."""
        self._events.clear()
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")
        if result.get("loaderId"):  # a new document (absent for same-document navigation)
            self.wait_event("Page.loadEventFired", timeout_s)

    def wait_for(self, condition: str, timeout_s: float = 60.0) -> None:
        """Wait until the JavaScript expression ``condition`` is truthy in the page."""
        script = _WAIT_JS % {
            "condition": condition,
            "timeout_ms": int(timeout_s * 1000),
            "quoted": json.dumps(condition),
        }
        self.evaluate(script, timeout_s=timeout_s)

    def text(self) -> str:
        """The page's visible text."""
        return self.evaluate("document.body ? document.body.innerText : ''")

    def url(self) -> str:
        """The tab's current address (single-page apps change it without loading)."""
        return self.evaluate("window.location.href")

    def screenshot(self, path: Path) -> Path:
        """Write a PNG of the visible viewport to ``path``."""
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path
