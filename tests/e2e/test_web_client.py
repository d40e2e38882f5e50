"""The web client in a real headless Chromium: two browser contexts as two users chat against
the running system (the gateway serving the page at ``/`` with the development sign-in on)."""

from __future__ import annotations

import base64
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import http_ece
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from playwright.sync_api import FilePayload, expect
from websockets.sync.client import ClientConnection, connect

from tests.e2e.conftest import System, user
from tests.e2e.push_receiver import Receiver
from tests.e2e.web_support import Tab, WebGateway, browser, gateway_outage, screenshot_dirs
from tests.media_images import jpeg


@pytest.fixture
def web(system: System, tmp_path: Path) -> Iterator[WebGateway]:
    gateway = WebGateway(system, tmp_path)
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


def named(name: str) -> str:
    """A fresh user id that reads well in screenshots."""
    return f"{name}-{user()[1:7]}"


def dm(a: str, b: str) -> str:
    return f"dm:{min(a, b)}:{max(a, b)}"


def post_message(system: System, sender: str, cid: str, body: str) -> None:
    """``sender`` sends a text through the system's own gateway (HTTP), not the page's."""
    status, _ = system.request(
        "POST",
        f"/v1/conversations/{cid}/messages",
        user=sender,
        body={"client_msg_id": uuid.uuid4().hex, "body": body},
    )
    assert status == 202


def test_two_browsers_chat_ticks_typing_presence_reload_and_reconnect(
    system: System, web: WebGateway, tmp_path: Path
) -> None:
    alice, bob = named("alice"), named("bob")
    cid = dm(alice, bob)
    shots = screenshot_dirs(tmp_path)
    with browser() as b:
        a, bb = Tab(b, web.http, shots), Tab(b, web.http, shots)
        a.page.goto("/")
        expect(a.page.get_by_role("heading", name="Sign in")).to_be_visible()
        a.shot("1-sign-in")
        assert a.audit() == []
        # the audit does see a pale text and an unlabelled field
        a.page.evaluate(
            """() => { const p = document.createElement("p"); p.textContent = "pale"; p.style.color = "#bbb";
                const i = document.createElement("input"); document.getElementById("login").append(p, i); }"""
        )
        assert [p.split(":")[0] for p in a.audit()] == ["no label", "contrast 1.92"]
        a.page.reload()
        a.sign_in(alice)
        bb.sign_in(bob)

        # A message typed in one browser appears in the other, with an optimistic display first.
        a.open_direct(bob)
        a.type_and_send("Hello Bob!")
        mine = a.message("Hello Bob!")
        expect(mine).to_have_count(1)
        expect(mine).to_have_attribute("data-message-id", re.compile(r"^\d+$"))  # acknowledged

        # Bob's inbox: the conversation, its preview and one unread; Alice's tick: delivered.
        row = bb.page.locator(f'#inbox li[data-conversation-id="{cid}"]')
        expect(row).to_have_attribute("data-unread", "1")
        expect(row).to_contain_text("Hello Bob!")
        expect(row.get_by_label("1 unread")).to_be_visible()
        expect(mine).to_have_attribute("data-status", "delivered")
        bb.shot("2-inbox-unread")

        # Bob opens it: the message is there, his unread count clears, Alice's tick turns read.
        bb.open_conversation(cid)
        expect(bb.message("Hello Bob!")).to_have_count(1)
        expect(row).to_have_attribute("data-unread", "0")
        expect(mine).to_have_attribute("data-status", "read")
        expect(mine.locator(".ticks")).to_have_text("✓✓")

        # Presence: Alice sees Bob online.
        expect(a.page.locator("#presence")).to_have_text("online")

        # Typing shows on the other side, and stops when the message is sent.
        bb.page.get_by_label("Message", exact=True).press_sequentially("On my w", delay=30)
        expect(a.page.locator("#typing")).to_have_text(f"{bob} is typing…")
        a.shot("3-conversation-typing")
        assert a.audit() == [] and bb.audit() == []
        bb.page.get_by_label("Message", exact=True).press_sequentially("ay", delay=30)
        bb.page.get_by_label("Message", exact=True).press("Enter")
        expect(a.message("On my way")).to_have_count(1)
        expect(a.page.locator("#typing")).to_have_text("")
        expect(bb.message("On my way")).to_have_attribute("data-status", "read")  # Alice has it open

        # A reload keeps the session (sessionStorage) and the history.
        a.page.reload()
        a.expect_connected()
        a.open_conversation(cid)
        expect(a.message("Hello Bob!")).to_have_count(1)
        expect(a.message("On my way")).to_have_count(1)
        expect(a.message("Hello Bob!")).to_have_attribute("data-status", "read")

        # A dropped connection (the gateway killed) reconnects; what was sent meanwhile arrives
        # exactly once: Bob's send waits in his outbox, and a message sent through another
        # gateway comes to Alice by sync.
        with gateway_outage(a, bb):
            web.kill()
            expect(a.page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
            expect(a.page.locator("#connection")).to_contain_text("reconnecting in")
            a.shot("4-reconnecting")
            bb.type_and_send("Sent while the gateway was down")
            expect(bb.message("Sent while the gateway was down")).to_have_attribute("data-status", "sending")
            post_message(system, bob, cid, "Through the other gateway")
            web.start()
            a.expect_connected(timeout_ms=60_000)
            bb.expect_connected(timeout_ms=60_000)
        expect(a.message("Sent while the gateway was down")).to_have_count(1)
        expect(a.message("Through the other gateway")).to_have_count(1)
        expect(bb.message("Sent while the gateway was down")).to_have_count(1)
        expect(bb.message("Sent while the gateway was down")).to_have_attribute("data-status", "read")
        # the outbox resent with the same client_msg_id: the server holds one message
        status, page = system.request("GET", f"/v1/conversations/{cid}/messages", user=alice)
        assert status == 200
        bodies = [m["body"] for m in page["messages"]]
        assert bodies.count("Sent while the gateway was down") == 1, bodies

        # A draining gateway (SIGTERM) says when to come back: the client follows its
        # `reconnect` frame rather than its own backoff, and catches up once it is back.
        with gateway_outage(a, bb):
            web.stop()
            expect(a.page.locator("#connection")).to_have_attribute("data-server-reconnects", "1")
            web.start()
            a.expect_connected(timeout_ms=60_000)
            bb.expect_connected(timeout_ms=60_000)
        bb.type_and_send("After the restart")
        expect(a.message("After the restart")).to_have_count(1)

        # Bob leaves: Alice sees him go offline with a last-seen time.
        bb.close()
        expect(a.page.locator("#presence")).to_have_text(re.compile(r"^last seen \d"), timeout=30_000)
        a.shot("5-last-seen")

        assert a.errors == [], a.errors
        assert bb.errors == [], bb.errors
        a.close()


def test_a_message_pushed_between_two_sockets_comes_by_a_follow_up_sync(
    system: System, web: WebGateway, tmp_path: Path
) -> None:
    """Bob's message is pushed while Alice's page is between two sockets (no socket of hers is
    registered), and the persist worker, paused, has not applied it when her resume sync runs:
    neither brings it. A follow-up sync does, once the worker has applied it (docs/protocol.md,
    "Sync again while the sync read model lags the pushes")."""
    alice, bob = named("alice"), named("bob")
    cid = dm(alice, bob)
    text = "Sent while your page was between sockets"
    with browser() as b:
        a = Tab(b, web.http, screenshot_dirs(tmp_path))
        a.sign_in(alice)
        a.open_direct(bob)
        # The path warm first (a fresh system's first send is slow): the paused stretch below
        # must stay well within the persist worker's session timeout.
        post_message(system, bob, cid, "Warming up")
        expect(a.message("Warming up")).to_have_count(1)

        a.hold_sockets()  # her reconnects fail until they are released
        expect(a.page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
        persist = system.procs["persist"]
        persist.send_signal(signal.SIGSTOP)  # for a few seconds: well within its session timeout
        try:
            # Bob's phone: opened here, as the e2e gateway closes a socket silent for 8 s.
            with connect(f"{system.ws}?token={system.token(bob, 'phone')}") as phone:
                phone.send(orjson.dumps({"type": "ping", "ref": "registered"}).decode())
                _next_frame(phone, "pong")  # pushes reach it now
                post_message(system, bob, cid, text)
                # The phone has it pushed, so the deliver worker has pushed it to Alice too: to
                # no socket.
                assert _next_frame(phone, "message")["message"]["body"] == text
            a.release_sockets()
            a.expect_connected()
            a.wait_synced_since_connected()
            expect(a.message(text)).to_have_count(0)  # not in the resume sync: not applied yet
        finally:
            persist.send_signal(signal.SIGCONT)
        expect(a.message(text)).to_have_count(1, timeout=15_000)  # the 5 s follow-up at the latest
        assert a.errors == [], a.errors


def _next_frame(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """The socket's next frame of type ``kind``; others before it (receipts of the warm-up
    message, say) are passed over."""
    while True:
        frame: dict[str, Any] = orjson.loads(ws.recv(timeout=30))
        if frame["type"] == kind:
            return frame


def test_history_paging_and_groups(system: System, web: WebGateway, tmp_path: Path) -> None:
    alice, bob, carol = named("alice"), named("bob"), named("carol")
    cid = dm(alice, bob)
    for i in range(60):
        status, _ = system.request(
            "POST",
            f"/v1/conversations/{cid}/messages",
            user=bob,
            body={"client_msg_id": f"seed-{i}", "body": f"seed message {i:02d}"},
        )
        assert status == 202
    shots = screenshot_dirs(tmp_path)
    with browser() as b:
        a, bb = Tab(b, web.http, shots), Tab(b, web.http, shots)
        a.sign_in(alice)
        bb.sign_in(bob)

        # Inbox from the starting sync: 60 unread; the conversation shows the newest 50 first.
        row = a.page.locator(f'#inbox li[data-conversation-id="{cid}"]')
        expect(row).to_have_attribute("data-unread", "60")
        a.open_conversation(cid)
        expect(a.page.locator("#messages li.message")).to_have_count(50)
        expect(a.message("seed message 00")).to_have_count(0)
        a.page.get_by_role("button", name="Load older messages").click()
        expect(a.page.locator("#messages li.message")).to_have_count(60)
        expect(a.page.locator("#messages li.message").first).to_contain_text("seed message 00")
        expect(a.page.get_by_role("button", name="Load older messages")).to_be_hidden()

        # Groups: create with a member; the member's inbox gets it at once.
        a.page.get_by_text("New group").click()
        a.page.get_by_label("Group title").fill("Lunch plans")
        a.page.get_by_label("Members (user ids, separated by spaces or commas)").fill(bob)
        a.page.get_by_role("button", name="Create group").click()
        expect(a.page.locator("#conversation-title")).to_have_text("Lunch plans")
        expect(a.page.locator("#presence")).to_have_text("2 members")
        group_row = bb.page.locator("#inbox li", has_text="Lunch plans")
        expect(group_row).to_have_count(1)
        gid = group_row.get_attribute("data-conversation-id")
        assert gid and gid.startswith("g:")

        # Add a member through the form; the count follows on both sides.
        a.page.get_by_label("Add member").fill(carol)
        a.page.get_by_role("button", name="Add", exact=True).click()
        expect(a.page.locator("#notice")).to_have_text(f"Added {carol}.")
        expect(a.page.locator("#presence")).to_have_text("3 members")
        a.type_and_send("Noodles at noon?")
        bb.open_conversation(gid)
        expect(bb.message("Noodles at noon?")).to_have_count(1)
        expect(bb.message("Noodles at noon?").locator(".sender")).to_have_text(alice)
        bb.shot("6-group")
        assert bb.audit() == []

        # Bob leaves: it is gone from his inbox, and Alice's count drops.
        bb.page.get_by_role("button", name="Leave group").click()
        expect(group_row).to_have_count(0)
        expect(bb.page.locator("#empty")).to_be_visible()
        expect(a.page.locator("#presence")).to_have_text("2 members")
        status, _ = system.request("GET", f"/v1/conversations/{gid}/messages", user=bob)
        assert status == 403
        # A sync after leaving (a reconnect's here; a follow-up sync's as well) carries the
        # group's messages from before the leave: they do not bring the group back.
        bb.hold_sockets()
        expect(bb.page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
        bb.release_sockets()
        bb.expect_connected()
        bb.wait_synced_since_connected()
        expect(bb.page.locator(f'#inbox li[data-conversation-id="{gid}"]')).to_have_count(0)
        expect(bb.page.locator("#notice")).to_have_text("")

        # The owner cannot leave before handing over: the refusal is shown, nothing changes.
        a.page.get_by_role("button", name="Leave group").click()
        expect(a.page.locator("#notice")).to_contain_text("owner")
        expect(a.page.locator("#conversation-title")).to_have_text("Lunch plans")

        assert [e for e in a.errors if "409 (Conflict)" not in e] == [], a.errors  # the refused leave
        assert bb.errors == [], bb.errors
        a.close()
        bb.close()


def test_a_token_signs_in_when_the_development_sign_in_is_off(system: System, tmp_path: Path) -> None:
    """The system's own gateway has TIDINGS_DEV_LOGIN off: the page says so, and a token from
    `tidings token` signs in instead."""
    alice = user()
    with browser() as b:
        tab = Tab(b, system.http, screenshot_dirs(tmp_path))
        tab.page.goto("/")
        tab.page.get_by_label("User id", exact=True).fill(alice)
        tab.page.get_by_role("button", name="Sign in").click()
        expect(tab.page.locator("#login-error")).to_contain_text("Development sign-in is off")
        tab.page.get_by_label(re.compile(r"^Token")).fill(system.token(alice, "laptop"))
        tab.page.get_by_role("button", name="Use token").click()
        tab.expect_connected()
        expect(tab.page.locator("#me")).to_have_text(alice)
        # the token is kept for this tab only, never in the address
        assert "token" not in tab.page.url
        assert tab.page.evaluate("Object.keys(localStorage).length") == 0
        # reconnect delays: exponential from 1 s to 30 s, with jitter (half to all of the step)
        delays = tab.page.evaluate(
            "import('/web/socket.js').then(m => [...Array(12).keys()].map(a => "
            "[...Array(200)].map(() => m.backoffDelay(a))))"
        )
        for attempt, samples in enumerate(delays):
            step = min(30_000, 1000 * 2**attempt)
            assert step / 2 <= min(samples) and max(samples) <= step, (attempt, min(samples), max(samples))
            assert max(samples) - min(samples) > step / 4  # jittered, not one fixed delay
        # the expected 404 of the sign-in attempt is the one console error
        assert all("404" in e for e in tab.errors), tab.errors
        tab.close()


def test_an_expired_session_goes_back_to_sign_in(system: System, web: WebGateway, tmp_path: Path) -> None:
    """A connection lost after the token expired does not retry for ever: the page asks to sign
    in again (the gateway would refuse the token)."""
    alice = named("alice")
    with browser() as b:
        tab = Tab(b, web.http, screenshot_dirs(tmp_path))
        tab.page.goto("/")
        tab.page.get_by_label(re.compile(r"^Token")).fill(system.token(alice, ttl_s=4))
        tab.page.get_by_role("button", name="Use token").click()
        tab.expect_connected()
        time.sleep(4.5)
        web.kill()
        expect(tab.page.locator("#login")).to_be_visible(timeout=15_000)
        expect(tab.page.locator("#login-error")).to_have_text("Your session has ended: sign in again.")
        assert tab.page.evaluate("sessionStorage.length") == 0
        web.start()  # for the fixture's stop
        tab.close()


def test_a_request_the_gateway_resets_is_a_page_error_except_while_the_test_takes_it_down() -> None:
    class Message:
        type = "error"

        def __init__(self, text: str) -> None:
            self.text = text

    tab = Tab.__new__(Tab)  # the console filter alone, no browser
    tab.errors, tab.gateway_down = [], False
    reset = "Failed to load resource: net::ERR_CONNECTION_RESET"
    tab._console(Message(reset))  # type: ignore[arg-type]
    assert tab.errors == [reset]
    with gateway_outage(tab):
        tab._console(Message(reset))  # type: ignore[arg-type]
        tab._console(Message("Failed to load resource: net::ERR_CONNECTION_REFUSED"))  # type: ignore[arg-type]
        tab._console(Message("Failed to load resource: the server responded with a status of 500 ()"))  # type: ignore[arg-type]
        tab._console(Message("WebSocket connection to 'ws://x' failed"))  # type: ignore[arg-type]
    assert tab.errors == [reset, "Failed to load resource: the server responded with a status of 500 ()"]
    assert tab.gateway_down is False


def test_an_image_uploaded_in_one_browser_shows_as_a_thumbnail_in_the_other(
    system: System, web: WebGateway, tmp_path: Path
) -> None:
    """The sender picks an image: it shows at once from the file, is uploaded (POST /v1/media)
    and sent with its media_id; the other browser fetches the server's WebP thumbnail through the
    media API (a 302 to the object store, followed under the page's CSP) and shows it."""
    alice, bob = named("alice"), named("bob")
    cid = dm(alice, bob)
    photo = jpeg()  # 400 x 200, EXIF orientation 6: the thumbnail is upright, 160 x 320
    with browser() as b:
        shots = screenshot_dirs(tmp_path)
        a, bb = Tab(b, web.http, shots), Tab(b, web.http, shots)
        a.sign_in(alice)
        bb.sign_in(bob)
        a.open_direct(bob)
        a.page.set_input_files(
            "#composer-image", files=[FilePayload(name="photo.jpg", mimeType="image/jpeg", buffer=photo)]
        )
        mine = a.page.locator("#messages li.message.mine").filter(has=a.page.locator("img.thumb"))
        expect(mine).to_have_count(1)
        expect(mine).to_have_attribute("data-message-id", re.compile(r"^\d+$"), timeout=30_000)
        message_id = mine.get_attribute("data-message-id")

        # The server has an image message carrying the media object. The page shows the id at
        # the ack, which comes before the history read models have the message: asked until
        # they do (CI once asked a few milliseconds too early).
        deadline = time.monotonic() + 30
        while True:
            status, page = system.request("GET", f"/v1/conversations/{cid}/messages", user=bob)
            assert status == 200
            found = [m for m in page["messages"] if m["message_id"] == message_id]
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        [stored] = found
        assert stored["kind"] == "image" and stored["media"]["content_type"] == "image/jpeg"
        assert stored["media"]["size"] == len(photo)

        bb.open_conversation(cid)
        thumb = bb.page.locator(f'#messages li[data-message-id="{message_id}"] img.thumb')
        expect(thumb).to_be_visible(timeout=60_000)  # the worker makes the thumbnail after the upload
        expect(thumb).to_have_attribute("alt", f"Image from {alice}")
        src = thumb.get_attribute("src") or ""
        assert src.startswith("blob:"), src
        size = thumb.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        assert size == [160, 320], size  # the server's thumbnail, not the original (400 x 200)
        bb.page.wait_for_function("() => document.querySelector('img.thumb[data-media-id]').complete")
        bb.shot("7-image-thumbnail")
        assert bb.audit() == []
        assert a.errors == [], a.errors
        # the thumbnail is 404 until the media worker made it: the page asked again meanwhile
        assert [e for e in bb.errors if "404 (Not Found)" not in e] == [], bb.errors
        a.close()
        bb.close()


STAND_IN_PUSH_SERVICE = """
([endpoint, p256dh, auth]) => {
  // Headless Chromium's pushManager.subscribe needs Google's push service (not reachable here):
  // the browser's subscription is replaced by one whose endpoint is the test's push service and
  // whose keys the test holds. Everything around it is the page's own code.
  const keys = { p256dh, auth };
  const subscription = { endpoint, toJSON: () => ({ endpoint, expirationTime: null, keys }) };
  PushManager.prototype.subscribe = async function (options) {
    const keyLength = options.applicationServerKey.byteLength;
    window.__subscribeOptions = { userVisibleOnly: options.userVisibleOnly, keyLength };
    return subscription;
  };
  PushManager.prototype.getSubscription = async () => null;
}
"""


def _until_offline(system: System, who: str, timeout_s: float = 30) -> bool:
    """Until ``who`` has no live socket (their presence, as they read it themselves, is
    offline): the notifier's test of a device with no open socket."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, body = system.request("GET", f"/v1/users/{who}/presence", user=who)
        if (status == 200 and body["state"] == "offline") or time.monotonic() > deadline:
            return status == 200 and body["state"] == "offline"
        time.sleep(0.1)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_web_push_registration_through_the_service_worker(
    system: System, web: WebGateway, tmp_path: Path
) -> None:
    """The service worker registers under the page's CSP; the browser's own pushManager.subscribe
    is tried (and cannot reach a push service here: the page says so); with a stand-in push
    service the page's subscription reaches the server, the server's encrypted Web Push reaches
    that service, and its payload pushed into the real service worker (DevTools'
    ServiceWorker.deliverPushMessage) is shown as a notification."""
    alice, bob = named("alice"), named("bob")
    cid = dm(alice, bob)
    receiver = Receiver()
    try:
        with browser() as b:
            shots = screenshot_dirs(tmp_path)
            # 1. The real browser: the worker registers; the subscription needs a push service.
            real = Tab(b, web.http, shots)
            real.context.grant_permissions(["notifications"], origin=web.http)
            real.sign_in(bob)
            real.page.get_by_role("button", name="Enable notifications").click()
            state = real.page.locator("#push-state")
            expect(state).to_have_attribute("data-state", re.compile("^(failed|on)$"), timeout=30_000)
            worker = real.page.evaluate(
                "navigator.serviceWorker.getRegistration('/web/')"
                ".then(r => r && r.active && [r.active.state, r.scope])"
            )
            assert worker == ["activated", f"{web.http}/web/"], worker
            real_outcome = state.text_content()
            assert state.get_attribute("data-state") == "failed", real_outcome  # no push service here
            assert "(subscription)" in (real_outcome or ""), real_outcome
            real.shot("8-push-unavailable")
            real.close()

            # 2. A stand-in push service: the page's subscription reaches the server.
            browser_key = ec.generate_private_key(ec.SECP256R1())
            point = browser_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
            secret = os.urandom(16)
            name = f"web-{bob}"
            tab = Tab(b, web.http, shots)
            tab.context.grant_permissions(["notifications"], origin=web.http)
            arguments = orjson.dumps([receiver.url("ok", name), _b64(point), _b64(secret)]).decode()
            tab.context.add_init_script(script=f"({STAND_IN_PUSH_SERVICE})({arguments})")
            tab.sign_in(bob)
            tab.page.get_by_role("button", name="Enable notifications").click()
            expect(tab.page.locator("#push-state")).to_have_attribute("data-state", "on", timeout=30_000)
            expect(tab.page.locator("#push-state")).to_have_text("Notifications are on for this browser.")
            # applicationServerKey was the server's VAPID key (65 bytes, an uncompressed P-256 point)
            assert tab.page.evaluate("window.__subscribeOptions") == {
                "userVisibleOnly": True,
                "keyLength": 65,
            }
            device = tab.page.evaluate("JSON.parse(sessionStorage.getItem('tidings.session')).device_id")
            tab.shot("9-push-on")
            # Bob's tab goes to another page: the device has no socket, so it is notified.
            tab.page.goto("about:blank")
            assert _until_offline(system, bob), "bob's socket is still open"
            status, _ = system.request(
                "POST",
                f"/v1/conversations/{cid}/messages",
                user=alice,
                body={"client_msg_id": uuid.uuid4().hex, "kind": "text", "body": "are you there, bob?"},
            )
            assert status == 202
            [post] = receiver.wait("ok", name, timeout_s=30)
            assert post.headers["content-encoding"] == "aes128gcm"
            payload = http_ece.decrypt(
                post.body, private_key=browser_key, auth_secret=secret, version="aes128gcm"
            )
            note = orjson.loads(payload)
            assert (note["user_id"], note["device_id"]) == (bob, device)
            assert note["conversations"][0]["preview"] == "are you there, bob?"

            # 3. That payload, pushed into the page's real service worker, is shown.
            tab.page.goto("/")
            tab.expect_connected()
            cdp = tab.context.new_cdp_session(tab.page)
            registrations: list[dict[str, object]] = []
            cdp.on(
                "ServiceWorker.workerRegistrationUpdated", lambda e: registrations.extend(e["registrations"])
            )
            cdp.send("ServiceWorker.enable")
            deadline = time.monotonic() + 10
            while not any(r["scopeURL"] == f"{web.http}/web/" for r in registrations):
                assert time.monotonic() < deadline, registrations
                tab.page.wait_for_timeout(100)
            [registration] = [
                r for r in registrations if r["scopeURL"] == f"{web.http}/web/" and not r["isDeleted"]
            ][:1]
            cdp.send(
                "ServiceWorker.deliverPushMessage",
                {
                    "origin": web.http,
                    "registrationId": registration["registrationId"],
                    "data": payload.decode(),
                },
            )
            tab.page.wait_for_function(
                "() => navigator.serviceWorker.getRegistration('/web/').then(r => r.getNotifications())"
                ".then(ns => ns.length > 0)",
                timeout=15_000,
            )
            shown = tab.page.evaluate(
                "navigator.serviceWorker.getRegistration('/web/').then(r => r.getNotifications())"
                ".then(ns => ns.map(n => [n.title, n.body, n.tag]))"
            )
            assert shown == [
                [f"New message from {alice}", f"{alice}: are you there, bob?", note["notification_id"]]
            ], shown
            assert tab.errors == [], tab.errors
            tab.close()
    finally:
        receiver.close()
