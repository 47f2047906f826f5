"""A real headless Chromium driven over the Chrome DevTools Protocol, for the browser tests.

Debian's ``chromium`` is started with ``--remote-debugging-port=0`` and its own profile; the page's
DevTools websocket is spoken to with a small RFC 6455 client on a plain socket (no browser or
driver is downloaded, no websocket package needed). A test opens pages, evaluates JavaScript in
them, waits on a condition with a deadline, clicks, and takes screenshots.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from celery_agent.testing import wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--mute-audio", "--disable-dev-shm-usage"]  # fmt: skip


#: what DevTools says when an expression meets a page being replaced (a navigation under way)
NAVIGATING = ("navigated or closed", "Cannot find context", "context was destroyed")


class BrowserError(RuntimeError):
    """The browser did not start, answered with an error, or a page condition never held."""


class _Socket:
    """A websocket client connection: text frames out (masked), frames in, nothing else."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n")  # fmt: skip
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise BrowserError("the DevTools websocket closed during its handshake")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise BrowserError(f"the DevTools websocket refused: {head[:200]!r}")

    def send(self, text: str) -> None:
        data, mask = text.encode(), os.urandom(4)
        size = len(data)
        if size < 126:
            head = struct.pack("!BB", 0x81, 0x80 | size)
        elif size < 1 << 16:
            head = struct.pack("!BBH", 0x81, 0x80 | 126, size)
        else:
            head = struct.pack("!BBQ", 0x81, 0x80 | 127, size)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def recv(self) -> str:
        message = b""
        while True:
            first, second = self._exact(2)
            size = second & 0x7F
            if size == 126:
                size = struct.unpack("!H", self._exact(2))[0]
            elif size == 127:
                size = struct.unpack("!Q", self._exact(8))[0]
            payload = self._exact(size)
            opcode = first & 0x0F
            if opcode == 8:
                raise BrowserError("the browser closed the DevTools connection")
            if opcode in (9, 10):  # (ping, pong: Chromium sends none, but they are allowed)
                continue
            message += payload
            if first & 0x80:
                return message.decode()

    def _exact(self, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            chunk = self.sock.recv(size - len(out))
            if not chunk:
                raise BrowserError("the DevTools connection ended")
            out += chunk
        return bytes(out)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Browser:
    """One headless Chromium with one page (a tab), driven over DevTools."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 900) -> None:
        if CHROMIUM is None:
            raise BrowserError("chromium is not installed (apt-get install chromium)")
        argv = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                f"--window-size={width},{height}", "about:blank"]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        self._next = 0
        self.events: list[dict[str, Any]] = []
        try:
            port = _port(profile / "DevToolsActivePort", self.proc)
            self.ws = _Socket(_page_socket(port), timeout=30)
            self.call("Page.enable")
            self.call("Runtime.enable")
        except BaseException:
            self.close()
            raise

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (events meanwhile are kept)."""
        self._next += 1
        self.ws.send(json.dumps({"id": self._next, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._next:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return dict(message.get("result") or {})
            if "method" in message:
                self.events.append(message)

    def headers(self, **headers: str) -> None:
        """Send these HTTP headers with every request of the page (e.g. Authorization)."""
        self.call("Network.enable")
        self.call("Network.setExtraHTTPHeaders", headers=headers)

    def open(self, url: str, timeout: float = 30) -> None:
        """Go to ``url`` and wait until its load event."""
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait("document.readyState === 'complete' && location.href !== 'about:blank'", timeout)

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        got = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=True)  # fmt: skip
        if "exceptionDetails" in got:
            raise BrowserError(f"{expression}: {got['exceptionDetails'].get('text')}")
        return got.get("result", {}).get("value")

    def wait(self, expression: str, timeout: float = 10, every: float = 0.02) -> Any:
        """Evaluate ``expression`` until it is truthy; its value. AssertionError at the deadline."""

        def value() -> Any:
            try:
                return self.eval(expression)
            except BrowserError as err:  # a click's navigation under way: ask the next page
                if not any(what in str(err) for what in NAVIGATING):
                    raise
                return None

        return wait_for(f"{expression} to be true", value, timeout, every)

    def text(self, selector: str) -> str:
        """The text of the first element matching a CSS selector ('' when none does)."""
        return str(
            self.eval(f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent || ''")
        )

    def click(self, selector: str) -> None:
        """Click the first element matching a CSS selector (BrowserError when none does)."""
        found = self.eval(
            f"(e => e ? (e.click(), true) : false)(document.querySelector({json.dumps(selector)}))"
        )
        if not found:
            raise BrowserError(f"nothing matches {selector!r}")

    def screenshot(self, path: Path) -> Path:
        """Save the page as a PNG at ``path``."""
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        """Stop the browser and every process it started."""
        with contextlib.suppress(AttributeError):
            self.ws.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def _port(marker: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """The DevTools port Chromium writes into its profile once it listens."""

    def written() -> int | None:
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            return int(marker.read_text().splitlines()[0])
        if proc.poll() is not None:
            raise BrowserError(f"chromium exited with {proc.returncode} before it listened")
        return None

    return wait_for(f"chromium to write {marker}", written, timeout)


def _page_socket(port: int) -> str:
    """The websocket URL of the browser's page target."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
        targets = json.loads(resp.read())
    pages = [t for t in targets if t.get("type") == "page"]
    if not pages:
        raise BrowserError(f"chromium has no page target: {targets}")
    return str(pages[0]["webSocketDebuggerUrl"])
