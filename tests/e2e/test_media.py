"""Media over the client protocol, against the real object store (versitygw): a photo sent in a
group reaches every member, who download it (without its location) and its thumbnail, while a
stranger cannot; the presigned flow, the store refusing a tampered URL; bad input refused with
nothing left behind; the upload limits."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Iterator

import orjson
import pytest
from PIL import Image

from tests.e2e.conftest import System, user
from tests.e2e.media_support import (
    call,
    download,
    fetch,
    has_gps,
    jpeg,
    mp4,
    png,
    png_bomb,
    raw_request,
    sha256,
    stored_keys,
    upload,
    url_ttl_s,
)
from tests.e2e.test_groups import create_group
from tidings.settings import Settings

SMALL_LIMIT = 300_000
DAILY_BYTES = 600_000


@pytest.fixture(scope="module")
def smalls(
    system: System, services: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[System, System]]:
    """Two more gateways with small media limits (the session's workers do the rest)."""
    gateways = []
    for name in ("media-small", "media-small2"):
        gateway = System(
            services,
            tmp_path_factory.mktemp(name),
            env={
                "TIDINGS_MEDIA_MAX_DIRECT_BYTES": str(SMALL_LIMIT),
                "TIDINGS_MEDIA_MAX_UPLOAD_BYTES": str(SMALL_LIMIT),
                "TIDINGS_MEDIA_DAILY_BYTES": str(DAILY_BYTES),
                "TIDINGS_RATE_MEDIA_PER_S": "0.01",
                "TIDINGS_RATE_MEDIA_BURST": "8",
            },
        )
        gateway.env["TIDINGS_AUTH_SECRET"] = services.resolved_auth_secret()
        gateway.start("gateway")
        gateways.append(gateway)
    try:
        for gateway in gateways:
            gateway.wait_ready()
        yield gateways[0], gateways[1]
    finally:
        for gateway in gateways:
            gateway.stop()


@pytest.fixture(scope="module")
def small(smalls: tuple[System, System]) -> System:
    return smalls[0]


def test_a_photo_sent_in_a_group_reaches_members_who_download_it_a_stranger_cannot(system: System) -> None:
    owner, member, stranger = user(), user(), user()
    photo = jpeg()
    assert has_gps(photo)

    status, media = upload(system, owner, photo, "image/jpeg")
    assert status == 201, media
    assert media["content_type"] == "image/jpeg" and media["size"] == len(photo)
    assert media["sha256"] == sha256(photo)
    assert (media["width"], media["height"]) == (400, 200)
    media_id = media["media_id"]
    cid = create_group(system, owner, [member])

    async def send_and_receive() -> list[dict[str, object]]:
        async with (
            system.connect(member) as m,
            system.connect(member, "tablet") as m2,
            system.connect(owner) as o,
        ):
            status, ack = system.request(
                "POST",
                f"/v1/conversations/{cid}/messages",
                user=owner,
                body={"client_msg_id": "p1", "kind": "image", "body": "look", "media_id": media_id},
            )
            assert status == 202, ack
            frames = [await c.expect("message", timeout=15) for c in (m, m2, o)]
        return [f["message"] for f in frames]

    for message in asyncio.run(send_and_receive()):
        assert message["kind"] == "image" and message["body"] == "look"
        carried = message["media"]
        assert isinstance(carried, dict)
        assert carried["media_id"] == media_id and carried["content_type"] == "image/jpeg"
        assert carried["size"] == len(photo) and carried["sha256"] == sha256(photo)

    # The member gets the photo without its location; the uploader gets the original.
    status, url, theirs = download(system, member, f"/v1/media/{media_id}")
    assert status == 302 and url is not None and url_ttl_s(url) <= 900
    assert not has_gps(theirs)
    with Image.open(io.BytesIO(theirs)) as im:
        assert im.size == (400, 200) and im.getexif().get(0x0112) == 6
    status, _, mine = download(system, owner, f"/v1/media/{media_id}")
    assert status == 302 and mine == photo

    # The thumbnail: a WebP, longest side <= 320, turned upright by the EXIF orientation.
    status, _, thumb = download(system, member, f"/v1/media/{media_id}/thumbnail")
    assert status == 302
    with Image.open(io.BytesIO(thumb)) as im:
        assert im.format == "WEBP" and im.size == (160, 320)

    # A stranger: refused, and no URL.
    for path in (f"/v1/media/{media_id}", f"/v1/media/{media_id}/thumbnail"):
        status, headers, body = call(system, "GET", path, user=stranger)
        assert status == 403 and body["error"]["code"] == "forbidden"
        assert "location" not in headers
    # The history carries the media object too.
    status, page = system.request("GET", f"/v1/conversations/{cid}/messages", user=member)
    assert status == 200 and page["messages"][-1]["media"]["media_id"] == media_id


def test_sending_media_only_by_the_uploader_and_of_the_right_type(system: System) -> None:
    a, b = user(), user()
    cid = f"dm:{min(a, b)}:{max(a, b)}"
    status, pdf = upload(system, a, b"%PDF-1.4 not much of a pdf", "application/pdf")
    assert status == 201, pdf

    def send(who: str, kind: str, media_id: str | None) -> int:
        body = {"client_msg_id": uuid.uuid4().hex, "kind": kind, "body": "", "media_id": media_id}
        return system.request("POST", f"/v1/conversations/{cid}/messages", user=who, body=body)[0]

    assert send(b, "file", pdf["media_id"]) == 403  # not the uploader
    assert send(a, "image", pdf["media_id"]) == 400  # a PDF is no image
    assert send(a, "file", None) == 400
    assert send(a, "file", uuid.uuid4().hex) == 404
    assert call(system, "GET", f"/v1/media/{pdf['media_id']}", user=b)[0] == 403  # not sent yet
    assert send(a, "file", pdf["media_id"]) == 202

    async def over_websocket() -> dict[str, object]:
        async with system.connect(a) as client:
            await client.send(
                {
                    "type": "send",
                    "ref": "w1",
                    "client_msg_id": uuid.uuid4().hex,
                    "conversation_id": cid,
                    "kind": "file",
                    "body": "again",
                    "media_id": pdf["media_id"],
                }
            )
            await client.expect("ack", ref="w1")
            while True:  # the HTTP send's frame may come first
                message: dict[str, object] = (await client.expect("message"))["message"]
                if message["body"] == "again":
                    return message

    message = asyncio.run(over_websocket())
    assert message["kind"] == "file" and message["media"]["media_id"] == pdf["media_id"]  # type: ignore[index]
    status, _, data = download(system, b, f"/v1/media/{pdf['media_id']}")
    assert status == 302 and data == b"%PDF-1.4 not much of a pdf"
    assert call(system, "GET", f"/v1/media/{pdf['media_id']}/thumbnail", user=b)[0] == 404


def test_a_video_gets_a_thumbnail_of_its_first_frame(system: System) -> None:
    a, b = user(), user()
    cid = f"dm:{min(a, b)}:{max(a, b)}"
    clip = mp4()
    status, video = upload(system, a, clip, "video/mp4")
    assert status == 201 and video["size"] == len(clip) and "width" not in video
    body = {"client_msg_id": "v1", "kind": "image", "body": "", "media_id": video["media_id"]}
    assert system.request("POST", f"/v1/conversations/{cid}/messages", user=a, body=body)[0] == 400
    body["kind"] = "video"
    assert system.request("POST", f"/v1/conversations/{cid}/messages", user=a, body=body)[0] == 202

    status, _, thumb = download(system, b, f"/v1/media/{video['media_id']}/thumbnail")
    assert status == 302
    with Image.open(io.BytesIO(thumb)) as im:
        assert im.format == "WEBP" and im.size == (320, 180)
    status, _, data = download(system, b, f"/v1/media/{video['media_id']}")
    assert status == 302 and data == clip


def test_bad_uploads_are_refused_and_leave_nothing(system: System, services: Settings) -> None:
    u = user()
    before = stored_keys(services)

    assert upload(system, u, png(), "image/jpeg")[0] == 400  # a PNG that says it is a JPEG
    assert upload(system, u, b"just text", "image/png")[0] == 400
    status, body = upload(system, u, png_bomb(), "image/png")
    assert status == 400 and "pixels" in body["error"]["message"]
    assert upload(system, u, b"MZ...", "application/x-msdownload")[0] == 400
    assert upload(system, u, b"", "text/plain")[0] == 400
    status, body = upload(system, u, b"hello", "text/plain", **{"X-Content-SHA256": sha256(b"other")})
    assert status == 400, body
    assert call(system, "GET", f"/v1/media/{uuid.uuid4().hex}", user=u)[0] == 404
    assert call(system, "GET", "/v1/media/not-an-id", user=u)[0] == 404

    assert stored_keys(services) == before


def test_over_the_limit_while_streaming_is_413_and_leaves_nothing(small: System, services: Settings) -> None:
    u = user()
    before = stored_keys(services)
    token = small.token(u)
    # Chunked: no length up front, so the limit can only be enforced while the body streams.
    chunk = b"x" * 50_000
    count = SMALL_LIMIT // len(chunk) + 1
    parts = [b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(count)] + [b"0\r\n\r\n"]
    head = (
        f"POST /v1/media HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    answer = raw_request(small.port, head, parts)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"too_large"' in answer

    # A declared length over the limit is refused before any body is read.
    head = (
        f"POST /v1/media HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: image/png\r\nContent-Length: {SMALL_LIMIT + 1}\r\nExpect: 100-continue\r\n\r\n"
    )
    answer = raw_request(small.port, head, [])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert stored_keys(services) == before


def test_a_truncated_upload_leaves_nothing(system: System, services: Settings) -> None:
    before = stored_keys(services)
    size = 6 * 1024 * 1024  # past one multipart part, so a multipart upload has begun
    head = (
        f"POST /v1/media HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {system.token(user())}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
    )
    raw_request(system.port, head, [b"y" * (size - 1024)], read=False)  # then the client vanishes
    time.sleep(1.0)  # the gateway has had the bytes and the hang-up by now
    deadline = time.monotonic() + 15
    while stored_keys(services) != before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stored_keys(services) == before


def test_presigned_upload_complete_and_mismatches(system: System, services: Settings) -> None:
    u, other = user(), user()
    data = b"large file " * 10_000

    def begin(content: bytes, content_type: str = "application/zip") -> dict[str, object]:
        status, _, body = call(
            system,
            "POST",
            "/v1/media/uploads",
            user=u,
            body=orjson.dumps(
                {"content_type": content_type, "size": len(content), "sha256": sha256(content)}
            ),
            headers={"Content-Type": "application/json"},
        )
        assert status == 201, body
        assert url_ttl_s(str(body["upload_url"])) >= 900
        return dict(body)

    started = begin(data)
    url, media_id = str(started["upload_url"]), str(started["media_id"])
    assert media_id not in url  # the object key is not the media id
    signature = url.index("X-Amz-Signature=") + len("X-Amz-Signature=")
    tampered = url[:signature] + ("0" if url[signature] != "0" else "1") + url[signature + 1 :]
    headers = {"Content-Type": "application/zip"}
    assert fetch(tampered, "PUT", data, headers)[0] == 403  # refused by the store itself
    assert call(system, "POST", f"/v1/media/{media_id}/complete", user=u)[0] == 409  # nothing there yet
    assert fetch(url, "PUT", data, headers)[0] == 200
    assert call(system, "POST", f"/v1/media/{media_id}/complete", user=other)[0] == 404
    status, _, media = call(system, "POST", f"/v1/media/{media_id}/complete", user=u)
    assert status == 201 and media["size"] == len(data) and media["sha256"] == sha256(data)
    status, _, got = download(system, u, f"/v1/media/{media_id}")
    assert status == 302 and got == data

    # Bytes of the declared size but not the declared sha256: 409, and the object is gone.
    before = stored_keys(services)
    wrong = begin(data)
    assert fetch(str(wrong["upload_url"]), "PUT", data[::-1], headers)[0] == 200
    status, _, body = call(system, "POST", f"/v1/media/{wrong['media_id']}/complete", user=u)
    assert status == 409 and body["error"]["code"] == "conflict"
    assert stored_keys(services) == before
    assert call(system, "POST", f"/v1/media/{wrong['media_id']}/complete", user=u)[0] == 404
    # Another size than declared: the store refuses the PUT (the length is signed), so
    # complete finds nothing.
    short = begin(data)
    assert fetch(str(short["upload_url"]), "PUT", data[:-5], headers)[0] == 403
    assert fetch(str(short["upload_url"]), "PUT", data + b"more", headers)[0] == 403
    assert call(system, "POST", f"/v1/media/{short['media_id']}/complete", user=u)[0] == 409
    assert stored_keys(services) == before
    # An image checked at complete too: a decompression bomb's header is 400, and discarded.
    bomb = png_bomb()
    status, _, started = call(
        system,
        "POST",
        "/v1/media/uploads",
        user=u,
        body=orjson.dumps({"content_type": "image/png", "size": len(bomb), "sha256": sha256(bomb)}),
    )
    assert status == 201, started
    assert fetch(started["upload_url"], "PUT", bomb, {"Content-Type": "image/png"})[0] == 200
    status, _, body = call(system, "POST", f"/v1/media/{started['media_id']}/complete", user=u)
    assert status == 400 and "pixels" in body["error"]["message"]
    assert stored_keys(services) == before


def test_upload_rate_and_daily_bytes_are_limited_across_gateways(smalls: tuple[System, System]) -> None:
    one, two = smalls
    u = user()
    blob = b"z" * 250_000
    assert upload(one, u, blob, "application/octet-stream")[0] == 201
    assert upload(two, u, blob, "application/octet-stream")[0] == 201
    # 500,000 bytes today of 600,000: another 250,000 is refused, on either gateway.
    for gateway in (one, two):
        status, headers, body = call(
            gateway,
            "POST",
            "/v1/media",
            user=u,
            body=blob,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert status == 429 and body["error"]["code"] == "rate_limited", body
        assert int(headers["retry-after"]) >= 1
    status, _, body = call(
        two,
        "POST",
        "/v1/media/uploads",
        user=u,
        body=orjson.dumps({"content_type": "application/zip", "size": 200_000, "sha256": sha256(b"x")}),
    )
    assert status == 429, body
    # The rate: a burst of 8 uploads between both gateways, then 429 whatever their size.
    v = user()
    codes = [upload((one, two)[i % 2], v, b"tiny", "text/plain")[0] for i in range(10)]
    assert codes[:8] == [201] * 8 and codes[8:] == [429, 429]
