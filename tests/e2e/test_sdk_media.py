"""Media and push through the Python SDK, against the real system and object store (versitygw):
a photo uploaded with ``client.media`` and sent with ``send_media`` reaches the other member as a
typed ``Media`` and downloads (original for the uploader, location-free for the member, a WebP
thumbnail); the presigned flow for files; refusals are the typed errors. Push: a webhook
registered with ``client.push`` receives the notification of a message sent while the device
is offline; a mute and an unregistration stop them; bad registrations are typed errors."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from tidings_client import (
    ConversationSettings,
    Forbidden,
    InvalidRequest,
    Media,
    MessageEvent,
    NotFound,
    PushRegistration,
    TooLarge,
    direct_conversation_id,
)

from tests.e2e.conftest import System, user, wait_until
from tests.e2e.consumers import push_settled
from tests.e2e.push_receiver import Receiver, signature_ok
from tests.e2e.test_sdk import sdk
from tests.media_images import has_gps, jpeg, png


async def test_a_photo_through_the_sdk_upload_send_receive_download_thumbnail(system: System) -> None:
    alice, bob, stranger = user(), user(), user()
    photo = jpeg()
    assert has_gps(photo)
    async with sdk(system, alice) as a, sdk(system, bob) as b, sdk(system, stranger) as s:
        media = await a.media.upload(photo, "image/jpeg")
        assert isinstance(media, Media) and media.message_kind == "image"
        assert (media.content_type, media.size) == ("image/jpeg", len(photo))
        assert media.sha256 == hashlib.sha256(photo).hexdigest()
        assert (media.width, media.height) == (400, 200)

        group = await a.create_group("photos", [bob])
        received = b.events(MessageEvent)
        sent = await a.send_media(group.conversation_id, media, caption="look")
        assert sent.kind == "image" and sent.body == "look" and sent.media == media
        got = (await received.next(timeout=30)).message
        assert got.message_id == sent.message_id and got.kind == "image" and got.body == "look"
        assert got.media is not None and got.media.media_id == media.media_id
        assert got.media.size == len(photo) and got.media.sha256 == media.sha256

        # The uploader gets the original; the member a copy without the location.
        assert await a.media.download(media.media_id) == photo
        theirs = await b.media.download(media.media_id, wait_s=30)
        assert not has_gps(theirs)
        with Image.open(io.BytesIO(theirs)) as im:
            assert im.size == (400, 200)
        thumb = await b.media.thumbnail(media.media_id, wait_s=30)
        with Image.open(io.BytesIO(thumb)) as im:
            assert im.format == "WEBP" and max(im.size) <= 320 and im.size == (160, 320)
        url = await b.media.url(media.media_id, thumbnail=True)
        assert url.startswith("http") and "X-Amz-Signature=" in url and system.http not in url

        # A stranger: a typed refusal, for the bytes and the thumbnail alike.
        for call in (s.media.download(media.media_id), s.media.thumbnail(media.media_id)):
            with pytest.raises(Forbidden) as refused:
                await call
            assert refused.value.code == "forbidden" and refused.value.status == 403
        # Only the uploader may send it.
        with pytest.raises(Forbidden):
            await b.send_media(group.conversation_id, media)
        # The history carries the media object.
        page = await b.history(group.conversation_id)
        assert page.messages[-1].media is not None and page.messages[-1].media.media_id == media.media_id


async def test_presigned_and_file_uploads_and_typed_refusals(system: System, tmp_path: Path) -> None:
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)
    data = os.urandom(300_000)
    source = tmp_path / "archive.zip"
    source.write_bytes(data)
    async with sdk(system, alice) as a, sdk(system, bob) as b:
        # The presigned flow: POST /v1/media/uploads, PUT to the object store, complete.
        via_store = await a.media.upload(data, "application/zip", presigned=True)
        assert via_store.size == len(data) and via_store.sha256 == hashlib.sha256(data).hexdigest()
        from_file = await a.media.upload_file(source, "application/zip", presigned=True)
        direct_file = await a.media.upload_file(source, "application/zip")
        assert len({via_store.media_id, from_file.media_id, direct_file.media_id}) == 3
        assert from_file.sha256 == direct_file.sha256 == via_store.sha256

        sent = await a.send_media(cid, from_file, caption="the files")
        assert sent.kind == "file"
        target = tmp_path / "downloaded.zip"
        assert await b.media.download_to(from_file.media_id, target) == len(data)
        assert target.read_bytes() == data
        # Not an image: no thumbnail, a typed NotFound.
        with pytest.raises(NotFound):
            await b.media.thumbnail(from_file.media_id)
        # Never sent to Bob: refused.
        with pytest.raises(Forbidden):
            await b.media.download(via_store.media_id)

        # Refusals carry the protocol code.
        with pytest.raises(InvalidRequest) as bad_image:
            await a.media.upload(b"not a png at all", "image/png")
        assert bad_image.value.status == 400
        with pytest.raises(InvalidRequest):
            await a.send_media(cid, via_store, kind="image")  # a zip is no image
        with pytest.raises(InvalidRequest):
            await a.media.upload(png(), "application/x-unknown")
        # Over the direct limit: refused before sending (the gateway would cut the connection).
        with pytest.raises(TooLarge) as too_large:
            await a.media.upload(b"\0" * (25 * 1024 * 1024 + 1), "application/octet-stream", presigned=False)
        assert too_large.value.status is None
        # Over the server's 2 GiB limit (a sparse file): the server's 413, before any byte moves.
        huge = tmp_path / "huge.bin"
        with huge.open("wb") as f:
            f.truncate(2 * 1024 * 1024 * 1024 + 1)
        with pytest.raises(TooLarge) as too_large:
            await a.media.upload_file(huge, "application/octet-stream")
        assert too_large.value.status == 413


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


async def test_push_registration_mute_and_unregister_through_the_sdk(
    system: System, receiver: Receiver
) -> None:
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)
    async with sdk(system, bob, device="phone") as phone:
        registration = await phone.push.register_webhook(receiver.url("ok", f"{bob}-phone"))
        assert registration == PushRegistration("phone", "webhook")
        with pytest.raises(InvalidRequest):  # not an allowed webhook host
            await phone.push.register_webhook("http://example.com/hook")
        key = await phone.push.webpush_key()
        assert len(key) == 87  # base64url of an uncompressed P-256 point
    # The phone's socket is closed: it is notified of Alice's message.
    async with sdk(system, alice) as a:
        await a.open_direct(bob)

        async def phone_offline() -> None:
            """Until the phone's socket has left the presence store, where the notifier looks
            for the devices with an open socket (not notified)."""

            async def offline() -> bool:
                return (await a.presence(bob)).state == "offline"

            assert await wait_until(offline, timeout=30), "bob's phone socket is still open"

        await phone_offline()
        sent = await a.send(cid, "ping the phone")
        [post] = await asyncio.to_thread(receiver.wait, "ok", f"{bob}-phone")
        assert signature_ok(system.settings.resolved_push_webhook_secret(), post)
        note = post.json
        assert (note["user_id"], note["device_id"]) == (bob, "phone")
        assert note["conversations"][0]["last_message_id"] == sent.message_id

        async with sdk(system, bob, device="phone") as phone:
            assert await phone.push.set_muted(cid, True) == ConversationSettings(cid, True)
        await phone_offline()
        await a.send(cid, "muted")
        await push_settled(system, [cid], [bob])
        assert len(receiver.to("ok", f"{bob}-phone")) == 1, "a muted conversation notifies nobody"

        async with sdk(system, bob, device="phone") as phone:
            assert await phone.push.set_muted(cid, False) == ConversationSettings(cid, False)
            await phone.push.unregister()
        await phone_offline()
        await a.send(cid, "unregistered")
        await push_settled(system, [cid], [bob])
        assert len(receiver.to("ok", f"{bob}-phone")) == 1, "an unregistered device is not notified"

    # The other providers register too (their delivery is tests/e2e/test_push.py's business).
    async with sdk(system, bob, device="tablet") as tablet:
        assert await tablet.push.register_fcm("fcm-token-0123456789abcdef") == PushRegistration(
            "tablet", "fcm"
        )
        assert await tablet.push.register_apns("ab" * 32) == PushRegistration("tablet", "apns")
        with pytest.raises(Forbidden):  # not a member
            await tablet.push.set_muted(direct_conversation_id(alice, user()), True)
