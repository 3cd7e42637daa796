"""Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``): no port, no
websocket library, no browser download. Chromium reads commands from its file descriptor 3 and writes replies and
events to 4, each a JSON message ended by a NUL byte.

Enough of the protocol for the review page's browser test: open a page (a file), press keys as a user does
(``Input.dispatchKeyEvent``), type text, evaluate an expression, reload, accept a download into a folder, and take a
screenshot.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any


CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
    "--remote-debugging-pipe",
)  # fmt: skip
# Keys the page listens to, as a keyboard sends them: (key, code, Windows virtual key code).
_KEYS = {
    "Enter": ("Enter", "Enter", 13, "\r"),
    "Escape": ("Escape", "Escape", 27, ""),
    "ArrowLeft": ("ArrowLeft", "ArrowLeft", 37, ""),
    "ArrowRight": ("ArrowRight", "ArrowRight", 39, ""),
}


class BrowserError(RuntimeError):
    """The browser answered a command with an error, or did not answer in time."""


class Chromium:
    """One headless Chromium with a fresh profile and one page (a context manager)."""

    def __init__(self, width: int = 1280, height: int = 900, timeout_s: float = 60.0) -> None:
        self._profile = tempfile.TemporaryDirectory()
        self._timeout_s = timeout_s
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # The protocol wants fds 3 and 4 exactly: a shell moves the pipe ends there before exec'ing the browser.
        moved = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}'
        command = ["bash", "-c", moved, CHROMIUM, *FLAGS, f"--user-data-dir={self._profile.name}",
                   f"--window-size={width},{height}", "about:blank"]  # fmt: skip
        self._process = subprocess.Popen(command, pass_fds=(to_browser_r, from_browser_w),
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.page("Page.enable")
        self.page("Runtime.enable")
        self.page("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})  # fmt: skip

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(BrowserError, OSError):  # already gone: nothing to close
            self.call("Browser.close")
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self._profile.cleanup()

    def _send(self, message: dict[str, Any]) -> None:
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise BrowserError("the browser sent nothing in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise BrowserError(f"the browser closed its pipe: {self._process.stderr.read()[-2000:]!r}")  # type: ignore[union-attr]
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        document: dict[str, Any] = json.loads(message)
        return document

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        """Sends a command (to the browser, or to ``session``) and returns its result; events seen meanwhile are
        kept in :attr:`events`."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._send(message)
        deadline = time.monotonic() + self._timeout_s
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            self.events.append(reply)

    def page(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A command to the page."""
        return self.call(method, params, self._session)

    def wait_for_event(self, method: str, match: dict[str, Any] | None = None) -> dict[str, Any]:
        """The first event ``method`` (with ``match`` among its params) seen since the last wait, waiting for it."""
        deadline = time.monotonic() + self._timeout_s
        while True:
            for i, event in enumerate(self.events):
                params = event.get("params", {})
                if event.get("method") == method and all(params.get(k) == v for k, v in (match or {}).items()):
                    del self.events[: i + 1]
                    return event
            self.events.append(self._receive(deadline))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable values only)."""
        result = self.page("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})  # fmt: skip
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_until(self, expression: str) -> Any:
        """Evaluates ``expression`` until it is truthy; returns that value."""
        deadline = time.monotonic() + self._timeout_s
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise BrowserError(f"{expression} stayed false")

    def open(self, path: Path) -> None:
        """Loads a file and waits for its load event."""
        self.events.clear()
        self.page("Page.navigate", {"url": path.as_uri()})
        self.wait_for_event("Page.loadEventFired")

    def reload(self) -> None:
        self.events.clear()
        self.page("Page.reload", {"ignoreCache": True})
        self.wait_for_event("Page.loadEventFired")

    def press(self, key: str) -> None:
        """One key press (down, up) as a keyboard sends it: a printable character or a name of :data:`_KEYS`."""
        if key in _KEYS:
            name, code, vk, text = _KEYS[key]
        else:
            name, code, vk, text = key, f"Key{key.upper()}" if key.isalpha() else f"Digit{key}", ord(key.upper()), key
        down = {"type": "keyDown", "key": name, "code": code, "windowsVirtualKeyCode": vk}
        if text:
            down["text"] = text
        self.page("Input.dispatchKeyEvent", down)
        self.page("Input.dispatchKeyEvent", {"type": "keyUp", "key": name, "code": code, "windowsVirtualKeyCode": vk})

    def type_text(self, text: str) -> None:
        """Types ``text`` into the focused element."""
        self.page("Input.insertText", {"text": text})

    def allow_downloads(self, folder: Path) -> None:
        """Saves downloads into ``folder`` under their suggested names and reports their progress as events."""
        self.call("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder),
                                                  "eventsEnabled": True})  # fmt: skip

    def wait_for_download(self) -> dict[str, Any]:
        """Waits for a download to complete; returns its ``Browser.downloadWillBegin`` params."""
        begun = self.wait_for_event("Browser.downloadWillBegin")["params"]
        self.wait_for_event("Browser.downloadProgress", {"guid": begun["guid"], "state": "completed"})
        return begun

    def screenshot(self, path: Path) -> None:
        data = self.page("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))
