"""The web client's test harness: a gateway with the development sign-in on, which can be killed
and started again on the same port (a browser reconnects to the same origin), and a real
headless Chromium (Debian's, driven by Playwright; never a downloaded browser)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, expect, sync_playwright

from tests.e2e.conftest import System, _free_port
from tidings import processes
from tidings.settings import Settings

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1000, "height": 640}
# Where screenshots go besides the test's tmp folder (docs/web when refreshing the committed ones).
SCREENSHOTS_ENV = "TIDINGS_WEB_SCREENSHOTS"


class WebGateway:
    """One gateway process over the test system's services, on a port of its own that stays the
    same across a kill and a restart."""

    def __init__(self, system: System, logs: Path, env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.http = f"http://127.0.0.1:{self.port}"
        self.env = {
            **system.env,
            "TIDINGS_HTTP_PORT": str(self.port),
            "TIDINGS_DEV_LOGIN": "true",
            # The web client heartbeats every 25 s, as the protocol asks with the default idle
            # close (90 s); the e2e system's (8 s) would close a quiet tab as silent (4408) and
            # have it reconnect every few seconds.
            "TIDINGS_IDLE_CLOSE_S": str(Settings.model_fields["idle_close_s"].default),
            **(env or {}),
        }
        self.log = logs / f"web-gateway-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = processes.spawn("gateway", self.env, log=self.log)
        try:
            processes.wait_ready(f"{self.http}/readyz", {"gateway": self.proc}, timeout_s=90)
        except processes.Exited as exc:
            raise RuntimeError(f"{exc}: {self.log.read_text()[-3000:]}") from exc

    def kill(self) -> None:
        """SIGKILL: no drain, no reconnect frame; clients see the connection drop."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            processes.stop([self.proc])
            self.proc = None


def chromium_path() -> str:
    path = shutil.which("chromium")
    assert path, (
        "Debian's chromium is missing: `python3 -m tidings test` installs it (apt-get install chromium)"
    )
    return path


# Chromium's console line for a request whose connection the gateway reset, refused or closed.
_LOST_REQUEST = re.compile(r"^Failed to load resource: net::ERR_CONNECTION_(RESET|REFUSED|CLOSED)$")


@contextmanager
def gateway_outage(*tabs: Tab) -> Iterator[None]:
    """The test takes the gateway down (and back up, and waits for the tabs to reconnect)
    inside: a request the dying or absent gateway resets, refuses or closes is not a page error
    there."""
    for tab in tabs:
        tab.gateway_down = True
    try:
        yield
    finally:
        for tab in tabs:
            tab.gateway_down = False


@contextmanager
def browser() -> Iterator[Browser]:
    """A headless Chromium; when the test fails inside it, each tab's wire log is printed first
    (pytest shows it with the failure)."""
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        except BaseException:
            for n, tab in enumerate(_TABS.pop(b, [])):
                who = tab.user or "not signed in"
                print(f"--- tab {n} ({who}): its last frames and requests, by the browser's clock")
                print("\n".join(tab.wire()))
            raise
        finally:
            _TABS.pop(b, None)
            b.close()


A11Y_AUDIT = (Path(__file__).parent / "a11y_audit.js").read_text()
# Installed in every page before its own scripts: records the WebSocket frames and HTTP calls
# with the browser's clock, for the failure report (`Tab.wire`).
WIRE_LOG = (Path(__file__).parent / "wire_log.js").read_text()
_TABS: dict[Browser, list[Tab]] = {}


class Tab:
    """One user's browser context and page; console errors and CSP reports are collected."""

    def __init__(self, b: Browser, base_url: str, shots: list[Path]) -> None:
        self.context: BrowserContext = b.new_context(viewport=VIEWPORT, base_url=base_url)  # type: ignore[arg-type]
        self.context.add_init_script(WIRE_LOG)
        self.page: Page = self.context.new_page()
        self.user = ""
        _TABS.setdefault(b, []).append(self)
        self.errors: list[str] = []
        # Set by ``gateway_outage`` while the test has the gateway down on purpose.
        self.gateway_down = False
        self.shots = shots
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))

    def _console(self, msg: ConsoleMessage) -> None:
        # A refused WebSocket while the gateway is down is expected, and so is a request that
        # the gateway the test kills or stops resets or refuses; anything else is not.
        if msg.type != "error" or "WebSocket connection" in msg.text:
            return
        if self.gateway_down and _LOST_REQUEST.search(msg.text):
            return
        self.errors.append(msg.text)

    def sign_in(self, user: str) -> None:
        self.user = user
        self.page.goto("/")
        self.page.get_by_label("User id", exact=True).fill(user)
        self.page.get_by_role("button", name="Sign in").click()
        self.expect_connected()

    def expect_connected(self, timeout_ms: float = 30_000) -> None:
        expect(self.page.locator("#connection")).to_have_attribute("data-state", "online", timeout=timeout_ms)

    def open_direct(self, other: str) -> None:
        self.page.get_by_label("Chat with user").fill(other)
        self.page.get_by_role("button", name="Open", exact=True).click()
        expect(self.page.locator("#conversation-title")).to_have_text(other)

    def open_conversation(self, cid: str) -> None:
        self.page.locator(f'#inbox li[data-conversation-id="{cid}"] button').click()
        expect(self.page.locator(f'#inbox li[data-conversation-id="{cid}"]')).to_have_attribute(
            "aria-current", "true"
        )

    def type_and_send(self, text: str) -> None:
        box = self.page.get_by_label("Message", exact=True)
        box.fill(text)
        box.press("Enter")

    def message(self, text: str):  # type: ignore[no-untyped-def]
        return self.page.locator("#messages li.message", has_text=text)

    def audit(self) -> list[str]:
        """Accessibility problems of what the page shows now (labels, contrast)."""
        problems: list[str] = self.page.evaluate(A11Y_AUDIT)
        return problems

    def hold_sockets(self) -> None:
        """Close the page's WebSockets, as a lost network would end them, and fail its new ones
        until ``release_sockets`` (its HTTP calls still go through)."""
        self.page.evaluate("() => { window.__held = true; for (const s of window.__sockets) s.close(); }")

    def release_sockets(self) -> None:
        self.page.evaluate("() => { window.__held = false; }")

    def wait_synced_since_connected(self) -> None:
        """Until a /v1/sync of the page's current connection has been answered."""
        self.page.wait_for_function(
            """() => { const w = window.__wire; const opened = w.findLastIndex((l) => l.endsWith(" ws open"));
                return opened >= 0 && w.slice(opened).some((l) => l.includes(" http 200 GET /v1/sync")); }"""
        )

    def wire(self) -> list[str]:
        """What the page sent and received lately, and its connection state and notice now."""
        if self.page.is_closed():
            return ["(closed)"]
        try:
            lines: list[str] = self.page.evaluate(
                """() => [...(window.__wire || []),
                    `now: connection ${document.getElementById("connection")?.dataset.state}, ` +
                    `notice ${JSON.stringify(document.getElementById("notice")?.textContent)}`]"""
            )
        except Exception as exc:  # noqa: BLE001 - a report of a failure must not hide it
            return [f"(wire log unreadable: {exc})"]
        return lines

    def shot(self, name: str) -> None:
        path = self.shots[0] / f"{name}.png"
        self.page.screenshot(path=path)
        for extra in self.shots[1:]:
            shutil.copyfile(path, extra / f"{name}.png")

    def close(self) -> None:
        self.context.close()


def screenshot_dirs(tmp: Path) -> list[Path]:
    dirs = [tmp / "screenshots"]
    if os.environ.get(SCREENSHOTS_ENV):
        dirs.append(Path(os.environ[SCREENSHOTS_ENV]))
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    return dirs
