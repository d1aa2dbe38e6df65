"""A minimal Chrome DevTools Protocol client for tests: headless Chromium driven over ``--remote-debugging-pipe``.

Why a pipe and not a websocket: the pipe transport is plain NUL-terminated JSON on two file descriptors
(Chromium reads commands from fd 3 and writes replies and events to fd 4), so the standard library is enough;
no websocket package or chromedriver is needed. One page (target) is opened and attached with ``flatten``, so
every command carries its ``sessionId``. Mouse clicks and typing go through ``Input.*`` (real input events);
``Runtime.evaluate`` reads the DOM. ``CDP_DEBUG=1`` shows Chromium's own log on stderr.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _high_pipe() -> tuple[int, int]:
    """A pipe whose ends are above fd 9, so moving them onto fds 3 and 4 in the child cannot clobber them."""
    ends = []
    for fd in os.pipe():
        ends.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10))
        os.close(fd)
    return ends[0], ends[1]


class CDPError(RuntimeError):
    pass


class Browser:
    """Headless Chromium with one page; use as a context manager (on exit it is closed, then its process group
    is killed so no helper process outlives the test)."""

    def __init__(self, binary: str, profile_dir: Path, width: int = 1100, height: int = 860) -> None:
        cmd_r, self._cmd_w = _high_pipe()  # we write commands; Chromium reads fd 3
        self._evt_r, evt_w = _high_pipe()  # Chromium writes fd 4; we read
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
                f"--window-size={width},{height}", f"--user-data-dir={profile_dir}", "--remote-debugging-pipe",
                "about:blank"]
        # A shell moves the pipe ends onto fds 3 and 4 (no preexec_fn: the test process has threads).
        script = f'exec "$0" "$@" 3<&{cmd_r} 4>&{evt_w} {cmd_r}<&- {evt_w}>&-'
        self.proc = subprocess.Popen(["bash", "-c", script, *args], pass_fds=(cmd_r, evt_w),
                                     stdout=subprocess.DEVNULL,
                                     stderr=None if os.environ.get("CDP_DEBUG") else subprocess.DEVNULL,  # its log
                                     start_new_session=True)
        os.close(cmd_r)
        os.close(evt_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
            self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                     session=False)["sessionId"]
            for domain in ("Page", "Runtime", "Network"):
                self.call(f"{domain}.enable")
            self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                              "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.close()  # no browser left behind when it did not come up
            raise

    # -- transport ---------------------------------------------------------------------------------------

    def _read_message(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buf:
            if time.monotonic() > deadline:
                raise CDPError(f"no message from Chromium within {timeout}s")
            ready, _, _ = select.select([self._evt_r], [], [], 0.5)
            if ready:
                chunk = os.read(self._evt_r, 1 << 20)
                if not chunk:
                    raise CDPError(f"Chromium closed the pipe (exit code {self.proc.poll()})")
                self._buf += chunk
        raw, _, self._buf = self._buf.partition(b"\0")
        return json.loads(raw)

    def call(self, method: str, params: dict[str, Any] | None = None, *, session: bool = True,
             timeout: float = 30.0) -> dict[str, Any]:
        """Send one command and wait for its reply (events that arrive meanwhile are kept in ``events``)."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read_message(timeout)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    # -- page helpers ------------------------------------------------------------------------------------

    def navigate(self, url: str, timeout: float = 30.0) -> None:
        self.call("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete' && location.href.startsWith(" + json.dumps(url) + ")",
                      timeout)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (awaits promises)."""
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            raise CDPError(f"{expression!r}: {res['exceptionDetails'].get('exception', {}).get('description')}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Poll until the expression's JSON value is truthy; returns it. (A DOM node comes back as ``{}``, which
        is falsy here: test for one with ``!!document.querySelector(...)``.)"""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise CDPError(f"timed out after {timeout}s waiting for {expression}")
            time.sleep(0.1)

    def click(self, selector: str) -> None:
        """A real mouse click (press + release) at the centre of the first element matching ``selector``."""
        box = self.wait_for(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
                            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
                            " return r.width > 0 ? {x: r.x + r.width / 2, y: r.y + r.height / 2} : null; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": box["x"], "y": box["y"], "button": "left",
                                                   "clickCount": 1})

    def type_into(self, selector: str, text: str) -> None:
        """Click the field, then insert ``text`` as keyboard input would."""
        self.click(selector)
        self.call("Input.insertText", {"text": text})

    def fill(self, selector: str, text: str) -> None:
        """Replace a field's value by typing (the old value is cleared first)."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).value = ''")
        self.type_into(selector, text)

    def press_enter(self) -> None:
        """Enter in the focused element, as a keyboard sends it (keydown with the carriage return, keyup)."""
        key = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13}
        self.call("Input.dispatchKeyEvent", {"type": "keyDown", "text": "\r", **key})
        self.call("Input.dispatchKeyEvent", {"type": "keyUp", **key})

    def requested_urls(self) -> list[str]:
        """Every URL the page asked for so far (Network events)."""
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False})["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            os.write(self._cmd_w, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            try:  # the browser's own helper processes share its session (start_new_session)
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
            for fd in (self._cmd_w, self._evt_r):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
