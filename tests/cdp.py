"""One headless Chromium session for many pages: the DevTools protocol over --remote-debugging-pipe.

The suite lays out hundreds of messages; a browser process per page would cost a second each. Chromium reads
commands on fd 3 and answers on fd 4, each JSON message ended by NUL; this client sends one command at a
time and waits for its answer, with a deadline on every read.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--disable-extensions", "--mute-audio", "--remote-debugging-pipe"]


def chromium_path() -> str | None:
    return shutil.which("chromium") or (CHROMIUM if os.access(CHROMIUM, os.X_OK) else None)


class CdpError(Exception):
    pass


class Browser:
    """A headless Chromium with one page; `with Browser() as b:` starts and always stops it."""

    def __init__(self, deadline: float = 30.0) -> None:
        self.deadline = deadline
        self._next = 0
        self._buffer = b""

    def __enter__(self) -> Browser:
        path = chromium_path()
        if path is None:
            raise CdpError("headless Chromium not found at /usr/bin/chromium: run tests/system-deps.sh (as root)")
        self._profile = tempfile.TemporaryDirectory(prefix="ee-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # --remote-debugging-pipe reads commands on fd 3 and answers on fd 4: the shell puts the pipes there
        # and execs the browser (bash: dash refuses fds above 9 in redirections).
        self._proc = subprocess.Popen(
            ["/bin/bash", "-c", f'exec "$0" "$@" 3<&{to_child_r} 4>&{from_child_w}', path, *FLAGS,
             f"--user-data-dir={self._profile.name}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(to_child_r, from_child_w), start_new_session=True)
        os.close(to_child_r)
        os.close(from_child_w)
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session=True)
        self._frame = self.call("Page.getFrameTree", session=True)["frameTree"]["frame"]["id"]
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)
        self._profile.cleanup()

    def call(self, method: str, *, session: bool = False, **params: Any) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        ends = time.monotonic() + self.deadline
        while True:
            for raw in self._messages(ends):
                answer = json.loads(raw)
                if answer.get("id") == self._next:
                    if "error" in answer:
                        raise CdpError(f"{method}: {answer['error']}")
                    return answer.get("result", {})

    def _messages(self, ends: float) -> list[bytes]:
        while b"\0" not in self._buffer:
            left = ends - time.monotonic()
            if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
                raise CdpError(f"chromium did not answer within {self.deadline:.0f} s")
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                raise CdpError("chromium closed the pipe")
            self._buffer += chunk
        *complete, self._buffer = self._buffer.split(b"\0")
        return complete

    def load(self, html: str) -> None:
        """Replace the page's document with this HTML (no network: messages carry no remote resources)."""
        self.call("Page.setDocumentContent", session=True, frameId=self._frame, html=html)

    def viewport(self, width: int, height: int = 900) -> None:
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise CdpError(f"script failed: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        """The whole page as PNG, however long it is, at the current width."""
        width = int(self.evaluate("document.documentElement.clientWidth"))
        self.viewport(width, 100)  # the document is at least as tall as the viewport: measure it in a short one
        height = int(self.evaluate("Math.ceil(document.documentElement.scrollHeight)") or 900)
        self.viewport(width, height)
        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        path.write_bytes(base64.b64decode(data))
