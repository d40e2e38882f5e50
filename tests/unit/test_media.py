"""Media commands over in-memory fakes: limits while streaming, type checks against the bytes,
who may read and send, presigned completion, quotas, the thumbnail stage and the orphan job."""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterator

import pytest
from PIL import Image

from commands.adapters.images import ImageRefused, has_location, identify_image, thumbnail, without_location
from commands.adapters.videos import VideoThumbnails, video_thumbnail
from commands.media import MediaPolicy, MediaService
from commands.media_gc import collect_orphans
from commands.media_memory import MemoryByteQuota, MemoryMediaIndex, MemoryObjectStore, MemoryPendingUploads
from commands.memory import MemoryDirectory, MemoryEventLog
from events import MediaDeleted, MediaStored, ThumbnailMade
from events.errors import Conflict, Forbidden, Invalid, NotFound, RateLimited, TooLarge
from streams.media import Thumbnailer
from tests.media_images import jpeg, mp4, png, png_bomb

pytestmark = pytest.mark.unit

POLICY = MediaPolicy(
    allowed_types=frozenset({"image/jpeg", "image/png", "application/pdf", "application/octet-stream"}),
    max_direct_bytes=100_000,
    max_upload_bytes=1_000_000,
    max_pixels=10_000_000,
    url_ttl_s=900,
    daily_bytes=250_000,
)


def make() -> tuple[MediaService, MemoryObjectStore, MemoryMediaIndex, MemoryEventLog]:
    store, index, log = MemoryObjectStore(), MemoryMediaIndex(), MemoryEventLog()
    service = MediaService(
        store=store,
        index=index,
        log=log,
        directory=MemoryDirectory(),
        pending=MemoryPendingUploads(),
        quota=MemoryByteQuota(),
        policy=POLICY,
        identify_image=identify_image,
        clock=lambda: 1_800_000_000.0,
    )
    return service, store, index, log


async def body(data: bytes, chunk: int = 10_000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), chunk):
        yield data[i : i + chunk]


async def test_upload_records_the_media_with_its_sha256_and_size() -> None:
    service, store, index, log = make()
    photo = jpeg()

    media = await service.upload("alice", "image/jpeg; charset=x", body(photo))

    assert media["sha256"] == hashlib.sha256(photo).hexdigest() and media["size"] == len(photo)
    assert (media["width"], media["height"], media["thumbnail"]) == (400, 200, False)
    [event] = log.events
    assert isinstance(event, MediaStored) and event.media_id == media["media_id"]
    assert event.object_key.startswith("o/") and str(media["media_id"]) not in event.object_key
    assert store.objects[event.object_key][0] == photo
    assert index.rows[event.media_id].uploader_id == "alice"  # written through


async def test_the_limit_is_enforced_while_streaming() -> None:
    service, store, _, log = make()
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        while True:
            sent += 10_000
            yield b"x" * 10_000

    with pytest.raises(TooLarge):
        await service.upload("alice", "application/octet-stream", endless())
    assert sent <= POLICY.max_direct_bytes + 10_000  # stopped at the limit, not at the end
    assert store.objects == {} and log.events == []
    with pytest.raises(TooLarge):  # a declared length over the limit: refused before reading
        await service.upload("alice", "application/pdf", endless(), declared_size=POLICY.max_direct_bytes + 1)


@pytest.mark.parametrize(
    ("data", "ctype"),
    [
        (png(), "image/jpeg"),  # a lie about the type
        (b"not an image at all", "image/png"),
        (png_bomb(), "image/png"),  # 10 gigapixels in the header
        (b"whatever", "application/x-msdownload"),  # not allowed
        (b"", "application/pdf"),  # empty
        (b"x", None),
    ],
)
async def test_bad_uploads_are_invalid_and_leave_nothing(data: bytes, ctype: str | None) -> None:
    service, store, _, log = make()
    with pytest.raises(Invalid):
        await service.upload("alice", ctype, body(data))
    assert store.objects == {} and log.events == []


async def test_a_declared_sha256_or_size_that_does_not_match_leaves_nothing() -> None:
    service, store, _, log = make()
    with pytest.raises(Invalid):
        await service.upload("a", "application/pdf", body(b"abc"), declared_sha256="0" * 64)
    with pytest.raises(Invalid):
        await service.upload("a", "application/pdf", body(b"abc"), declared_size=4)
    assert store.objects == {} and log.events == []


async def test_reading_is_for_the_uploader_and_members_where_it_was_sent() -> None:
    service, _, _, _ = make()
    media = await service.upload("alice", "application/pdf", body(b"%PDF"))
    mid = str(media["media_id"])
    with pytest.raises(Forbidden):
        await service.download_url("bob", mid)
    with pytest.raises(NotFound):
        await service.download_url("bob", "f" * 32)
    assert "get" in await service.download_url("alice", mid)

    ref = await service.for_send("alice", mid, "file")
    assert ref is not None
    await service.sent(ref, "dm:alice:bob", 1)
    assert "get" in await service.download_url("bob", mid)
    with pytest.raises(Forbidden):
        await service.download_url("carol", mid)


async def test_other_members_get_an_image_only_once_its_location_is_removed() -> None:
    service, _, index, _ = make()
    media = await service.upload("alice", "image/jpeg", body(jpeg()))
    mid = str(media["media_id"])
    ref = await service.for_send("alice", mid, "image")
    assert ref is not None
    await service.sent(ref, "dm:alice:bob", 1)
    with pytest.raises(NotFound):  # not processed yet
        await service.download_url("bob", mid)
    await index.apply(
        [ThumbnailMade(media_id=mid, thumbnail_key="t/1", shared_key="s/1", location_removed=True, ts=1)]
    )
    assert (await service.download_url("bob", mid)).startswith("memory://s/1")
    assert (await service.download_url("alice", mid)).startswith("memory://o/")
    assert (await service.thumbnail_url("bob", mid)).startswith("memory://t/1")


async def test_only_the_uploader_sends_media_and_kinds_need_their_type() -> None:
    service, _, _, _ = make()
    pdf = str((await service.upload("alice", "application/pdf", body(b"%PDF")))["media_id"])
    with pytest.raises(Forbidden):
        await service.for_send("bob", pdf, "file")
    with pytest.raises(Invalid):
        await service.for_send("alice", pdf, "image")
    with pytest.raises(NotFound):
        await service.for_send("alice", "0" * 32, "file")
    ref = await service.for_send("alice", pdf, "file")
    assert ref is not None and ref.media_id == pdf and ref.content_type == "application/pdf"


async def test_presigned_upload_completes_only_when_size_and_sha256_match() -> None:
    service, store, index, _ = make()
    data = b"z" * 5000
    digest = hashlib.sha256(data).hexdigest()
    started = await service.begin_upload("alice", "application/octet-stream", len(data), digest)
    mid = str(started["media_id"])
    key = str(started["upload_url"]).removeprefix("memory://").split("?")[0]

    with pytest.raises(Conflict):  # nothing PUT yet
        await service.complete_upload("alice", mid)
    store.objects[key] = (b"y" * 5000, "application/octet-stream")  # the wrong bytes
    with pytest.raises(Conflict):
        await service.complete_upload("alice", mid)
    assert key not in store.objects  # discarded
    with pytest.raises(NotFound):
        await service.complete_upload("alice", mid)

    again = await service.begin_upload("alice", "application/octet-stream", len(data), digest)
    key = str(again["upload_url"]).removeprefix("memory://").split("?")[0]
    store.objects[key] = (data, "application/octet-stream")
    with pytest.raises(NotFound):  # someone else's upload
        await service.complete_upload("bob", str(again["media_id"]))
    media = await service.complete_upload("alice", str(again["media_id"]))
    assert media["sha256"] == digest and index.rows[str(again["media_id"])].object_key == key
    assert await service.complete_upload("alice", str(again["media_id"])) == media  # idempotent
    with pytest.raises(TooLarge):
        await service.begin_upload("alice", "application/pdf", POLICY.max_upload_bytes + 1, digest)


async def test_the_daily_byte_quota() -> None:
    service, _, _, _ = make()
    await service.upload("alice", "application/pdf", body(b"a" * 90_000))
    await service.upload("alice", "application/pdf", body(b"a" * 90_000))
    with pytest.raises(RateLimited) as refused:
        await service.upload("alice", "application/pdf", body(b"a" * 90_000), declared_size=90_000)
    assert refused.value.retry_after is not None and refused.value.retry_after > 0
    with pytest.raises(RateLimited):
        await service.begin_upload("alice", "application/pdf", 90_000, "0" * 64)
    await service.upload("bob", "application/pdf", body(b"a" * 90_000))  # per user


def test_thumbnail_is_an_upright_webp_within_320_px() -> None:
    thumb = thumbnail(jpeg(1600, 800), longest_side=320, max_pixels=10**8)
    with Image.open(io.BytesIO(thumb)) as im:
        assert im.format == "WEBP" and im.size == (160, 320)  # orientation 6: turned upright


def test_location_is_removed_and_the_rest_kept() -> None:
    photo = jpeg()
    assert has_location(photo, max_pixels=10**8)
    clean = without_location(photo, max_pixels=10**8)
    assert not has_location(clean, max_pixels=10**8)
    with Image.open(io.BytesIO(clean)) as im:
        assert im.size == (400, 200) and im.getexif().get(0x0112) == 6


async def test_thumbnailer_makes_thumbnail_and_clean_copy_and_survives_a_bomb() -> None:
    store, index, log = MemoryObjectStore(), MemoryMediaIndex(), MemoryEventLog()
    stage = Thumbnailer(
        _returns(store), index, log.append, longest_side=320, max_pixels=10_000_000, max_bytes=10**7
    )

    def stored(media_id: str, data: bytes, ctype: str) -> MediaStored:
        store.objects[f"o/{media_id}"] = (data, ctype)
        return MediaStored(
            media_id=media_id,
            uploader_id="a",
            object_key=f"o/{media_id}",
            content_type=ctype,
            size=len(data),
            sha256="0" * 64,
            ts=1,
        )

    photo, plain, bomb = (
        stored("p", jpeg(), "image/jpeg"),
        stored("q", png(), "image/png"),
        stored("b", png_bomb(), "image/png"),
    )
    await stage.apply([photo, plain, bomb, stored("d", b"%PDF", "application/pdf")])

    made = {e.media_id: e for e in log.events if isinstance(e, ThumbnailMade)}
    assert set(made) == {"p", "q", "b"}
    assert made["p"].location_removed and made["p"].shared_key not in (None, "o/p")
    shared = store.objects[str(made["p"].shared_key)][0]
    assert not has_location(shared, max_pixels=10**8)
    assert made["q"].shared_key == "o/q" and not made["q"].location_removed
    assert made["b"].thumbnail_key is None and made["b"].shared_key is None  # refused, not crashed
    for event in ("p", "q"):
        with Image.open(io.BytesIO(store.objects[str(made[event].thumbnail_key)][0])) as im:
            assert im.format == "WEBP" and max(im.size) <= 320
    # A redelivery after the read model has them changes nothing.
    await index.apply([photo, plain, *made.values()])
    count = len(log.events)
    await stage.apply([photo, plain])
    assert len(log.events) == count


def test_video_thumbnail_is_the_first_frame_within_320_px() -> None:
    thumb = video_thumbnail(mp4(), longest_side=320, max_pixels=10**8)
    with Image.open(io.BytesIO(thumb)) as im:
        assert im.format == "WEBP" and im.size == (320, 180)
        red, green, _ = im.convert("RGB").getpixel((10, 10))  # type: ignore[misc]
        assert red > 150 and green < 60
    with pytest.raises(ImageRefused):
        video_thumbnail(b"not a video" * 100, longest_side=320, max_pixels=10**8)
    with pytest.raises(ImageRefused):  # frame size checked before decoding
        video_thumbnail(mp4(), longest_side=320, max_pixels=640 * 360 - 1)


async def test_thumbnailer_thumbnails_videos_in_a_process_of_its_own() -> None:
    store, index, log = MemoryObjectStore(), MemoryMediaIndex(), MemoryEventLog()
    videos = VideoThumbnails(longest_side=320, max_pixels=10**8)
    stage = Thumbnailer(
        _returns(store), index, log.append, longest_side=320, max_pixels=10**8, max_bytes=10**7, videos=videos
    )
    try:
        for media_id, data in (("v", mp4()), ("x", b"junk" * 100)):
            store.objects[f"o/{media_id}"] = (data, "video/mp4")
            event = MediaStored(
                media_id=media_id,
                uploader_id="a",
                object_key=f"o/{media_id}",
                content_type="video/mp4",
                size=len(data),
                sha256="0" * 64,
                ts=1,
            )
            await stage.apply([event])
    finally:
        videos.close()
    made = {e.media_id: e for e in log.events if isinstance(e, ThumbnailMade)}
    assert made["v"].thumbnail_key is not None and made["v"].shared_key == "o/v"
    with Image.open(io.BytesIO(store.objects[made["v"].thumbnail_key][0])) as im:
        assert im.size == (320, 180)
    assert made["x"].thumbnail_key is None and made["x"].shared_key == "o/x"  # refused, not crashed


async def test_a_video_that_takes_too_long_is_refused_and_the_decoder_replaced() -> None:
    clip = mp4()
    videos = VideoThumbnails(longest_side=320, max_pixels=10**8, timeout_s=0.001)
    try:
        with pytest.raises(ImageRefused, match="killed"):
            await videos.make(clip)  # not even the process starts that fast
        videos._timeout_s = 60
        thumb = await videos.make(clip)  # a fresh process
        with Image.open(io.BytesIO(thumb)) as im:
            assert im.size == (320, 180)
    finally:
        videos.close()


async def test_orphan_job_deletes_only_old_unsent_media_and_stray_objects() -> None:
    store, index, log = MemoryObjectStore(), MemoryMediaIndex(), MemoryEventLog()
    day = 86_400_000

    def stored(media_id: str, ts: int) -> MediaStored:
        store.objects[f"o/{media_id}"] = (b"x", "application/pdf")
        return MediaStored(
            media_id=media_id,
            uploader_id="a",
            object_key=f"o/{media_id}",
            content_type="application/pdf",
            size=1,
            sha256="0" * 64,
            ts=ts,
        )

    now = 10 * day
    await index.apply(
        [stored("old", now - 2 * day), stored("sent", now - 2 * day), stored("new", now - 1000)]
    )
    await index.grant("sent", "dm:a:b", 1)
    store.objects["o/stray"] = (b"x", "image/png")

    done = await collect_orphans(index, store, log, now_ms=now, older_than_ms=day)

    assert done.media == ["old"] and sorted(done.objects) == ["o/old", "o/stray"]
    assert [type(e) for e in log.events] == [MediaDeleted]
    assert set(store.objects) == {"o/sent", "o/new"}
    assert index.rows["old"].deleted


def _returns(store: MemoryObjectStore):  # type: ignore[no-untyped-def]
    async def get() -> MemoryObjectStore:
        return store

    return get
