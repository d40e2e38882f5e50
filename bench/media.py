"""Media (``media``): uploads, downloads and thumbnails through the gateway and the real object
store (versitygw), over the client protocol.

- direct uploads (``POST /v1/media``) of 100 KB and 5 MB files, ``--concurrency`` at a time:
  uploads/s and MB/s;
- four direct uploads of 25 MB at once, the gateway's RSS sampled every 50 ms (each upload holds
  at most one 5 MiB part and the 1 MiB head of an image);
- a presigned upload of ``--big-mb`` (1024: 1 GB): the client PUTs to the store, then
  ``complete`` makes the gateway read the object back through sha256; the gateway's RSS (all of
  its processes) is sampled every 100 ms from before the PUT to the end of ``complete`` and must
  stay flat (the gateway holds at most one read chunk, never the file);
- downloads by a member (``GET /v1/media/{id}``: the 302, then the bytes from the store): P50
  and P99 of the redirect and of the whole download;
- thumbnails: ``--photos`` 12-megapixel JPEGs uploaded at once; thumbnails/s from the first
  upload until every thumbnail answers, and the thumbnail function alone on one core.

It starts its own system in namespace ``benchmedia`` (keyspace, topics, Redis db 7, bucket
``tidings-benchmedia``, gateway on ``--port``), or uses a running gateway with ``--no-start``::

    .venv/bin/python -m bench.media            # about a minute and a half on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
from PIL import Image

from bench.common import fmt, machine_line, new_hist, percentiles_ms, record_us
from bench.system import BenchSystem, namespace_env
from commands.adapters.images import thumbnail
from query_api.auth import issue_token
from tidings.settings import Settings

MB = 1024 * 1024


def photo() -> bytes:
    """A 4000x3000 JPEG (12 MP), as phones take them; noise so it compresses like a photo."""
    small = Image.frombytes("RGB", (400, 300), os.urandom(400 * 300 * 3))
    out = io.BytesIO()
    small.resize((4000, 3000), Image.Resampling.BILINEAR).save(out, format="JPEG", quality=85)
    return out.getvalue()


class Client:
    def __init__(self, base: str, secret: str) -> None:
        self.base = base
        self.secret = secret
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600))

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(self.secret, user)}"}

    async def upload(self, user: str, data: bytes, ctype: str) -> dict[str, Any]:
        async with self.session.post(
            f"{self.base}/v1/media", data=data, headers={**self.auth(user), "Content-Type": ctype}
        ) as r:
            body = await r.read()
            assert r.status == 201, (r.status, body[:300])
            return dict(orjson.loads(body))

    async def json(self, method: str, path: str, user: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(
            method, f"{self.base}{path}", json=body, headers=self.auth(user), allow_redirects=False
        ) as r:
            raw = await r.read()
            return r.status, orjson.loads(raw) if raw and r.content_type == "application/json" else None

    async def close(self) -> None:
        await self.session.close()


def gateway_rss(root_pid: int | None) -> int:
    """RSS in bytes of the gateway process and its Sanic workers."""
    if root_pid is None:
        procs = [
            p for p in psutil.process_iter(["cmdline"]) if "gateway" in " ".join(p.info["cmdline"] or [])
        ]
    else:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


async def uploads(client: Client, size: int, count: int, concurrency: int) -> dict[str, float]:
    data = os.urandom(size)
    user = f"bu{uuid.uuid4().hex[:8]}"
    queue = list(range(count))
    started = time.perf_counter()

    async def one_lane() -> None:
        while queue:
            queue.pop()
            await client.upload(user, data, "application/octet-stream")

    await asyncio.gather(*(one_lane() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"uploads_per_s": count / elapsed, "mb_per_s": count * size / MB / elapsed, "seconds": elapsed}


async def direct_rss(client: Client, gateway_pid: int | None, size: int, count: int) -> dict[str, float]:
    """``count`` direct uploads of ``size`` bytes at once, the gateway's RSS sampled meanwhile."""
    data = os.urandom(size)
    user = f"br{uuid.uuid4().hex[:8]}"
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(gateway_rss(gateway_pid))
            time.sleep(0.05)

    baseline = gateway_rss(gateway_pid)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    await asyncio.gather(*(client.upload(user, data, "application/octet-stream") for _ in range(count)))
    elapsed = time.perf_counter() - t0
    stop.set()
    sampler.join()
    return {
        "seconds": elapsed,
        "mb_per_s": count * size / MB / elapsed,
        "rss_before_mb": baseline / MB,
        "rss_peak_mb": max(samples) / MB,
        "rss_growth_mb": (max(samples) - baseline) / MB,
    }


async def big_presigned(client: Client, size_mb: int, gateway_pid: int | None) -> dict[str, float]:
    block = os.urandom(MB)
    digest = hashlib.sha256()
    for _ in range(size_mb):
        digest.update(block)
    user = f"bb{uuid.uuid4().hex[:8]}"
    status, started = await client.json(
        "POST",
        "/v1/media/uploads",
        user,
        {"content_type": "application/zip", "size": size_mb * MB, "sha256": digest.hexdigest()},
    )
    assert status == 201, started
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(gateway_rss(gateway_pid))
            time.sleep(0.1)

    baseline = gateway_rss(gateway_pid)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    async def body():  # type: ignore[no-untyped-def]
        for _ in range(size_mb):
            yield block

    t0 = time.perf_counter()
    async with client.session.put(
        started["upload_url"],
        data=body(),
        headers={"Content-Type": "application/zip", "Content-Length": str(size_mb * MB)},
    ) as r:
        assert r.status == 200, (r.status, await r.text())
    put_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    status, media = await client.json("POST", f"/v1/media/{started['media_id']}/complete", user)
    complete_s = time.perf_counter() - t1
    stop.set()
    sampler.join()
    assert status == 201, media
    return {
        "put_s": put_s,
        "put_mb_per_s": size_mb / put_s,
        "complete_s": complete_s,
        "complete_mb_per_s": size_mb / complete_s,
        "rss_before_mb": baseline / MB,
        "rss_peak_mb": max(samples) / MB,
        "rss_growth_mb": (max(samples) - baseline) / MB,
    }


async def downloads(client: Client, count: int) -> dict[str, Any]:
    owner, member = f"do{uuid.uuid4().hex[:8]}", f"dm{uuid.uuid4().hex[:8]}"
    media = await client.upload(owner, os.urandom(100_000), "application/pdf")
    cid = f"dm:{min(owner, member)}:{max(owner, member)}"
    status, _ = await client.json(
        "POST",
        f"/v1/conversations/{cid}/messages",
        owner,
        {"client_msg_id": "b1", "kind": "file", "body": "", "media_id": media["media_id"]},
    )
    assert status == 202
    redirect, whole = new_hist(), new_hist()
    for _ in range(count):
        t0 = time.perf_counter_ns()
        async with client.session.get(
            f"{client.base}/v1/media/{media['media_id']}", headers=client.auth(member), allow_redirects=False
        ) as r:
            assert r.status == 302, r.status
            location = r.headers["Location"]
        t1 = time.perf_counter_ns()
        async with client.session.get(location) as r:
            data = await r.read()
            assert r.status == 200 and len(data) == 100_000
        t2 = time.perf_counter_ns()
        record_us(redirect, t1 - t0)
        record_us(whole, t2 - t0)
    pcts = (50.0, 99.0)
    return {"redirect_ms": percentiles_ms(redirect, pcts), "download_ms": percentiles_ms(whole, pcts)}


async def thumbnails(client: Client, count: int) -> dict[str, float]:
    user = f"bt{uuid.uuid4().hex[:8]}"
    photos = [photo() for _ in range(min(count, 4))]
    t0 = time.perf_counter()
    made = [await client.upload(user, photos[i % len(photos)], "image/jpeg") for i in range(count)]
    uploaded_s = time.perf_counter() - t0
    pending = {m["media_id"] for m in made}
    while pending:
        for media_id in list(pending):
            status, _ = await client.json("GET", f"/v1/media/{media_id}/thumbnail", user)
            if status == 302:
                pending.discard(media_id)
        if time.perf_counter() - t0 > 300:
            raise SystemExit(f"{len(pending)} thumbnails missing after 300 s")
        await asyncio.sleep(0.1)
    total_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    for p in photos:
        thumbnail(p, longest_side=320, max_pixels=50_000_000)
    alone = len(photos) / (time.perf_counter() - t1)
    return {
        "photo_mb": sum(len(p) for p in photos) / len(photos) / MB,
        "upload_s": uploaded_s,
        "all_thumbnails_s": total_s,
        "thumbnails_per_s": count / total_s,
        "thumbnail_fn_per_s_one_core": alone,
    }


async def run(args: argparse.Namespace, base: str, secret: str, gateway_pid: int | None) -> dict[str, Any]:
    client = Client(base, secret)
    try:
        results: dict[str, Any] = {}
        results["upload_100kb"] = await uploads(client, 100_000, args.small, args.concurrency)
        print("upload 100 KB:", fmt(results["upload_100kb"]), flush=True)
        results["upload_5mb"] = await uploads(client, 5_000_000, args.large, max(1, args.concurrency // 2))
        print("upload 5 MB:", fmt(results["upload_5mb"]), flush=True)
        results["download_100kb"] = await downloads(client, args.downloads)
        print("download 100 KB:", results["download_100kb"], flush=True)
        results["thumbnails"] = await thumbnails(client, args.photos)
        print("thumbnails:", fmt(results["thumbnails"]), flush=True)
        results["direct_25mb_x4"] = await direct_rss(client, gateway_pid, 25 * MB, 4)
        print("direct 4 x 25 MB at once:", fmt(results["direct_25mb_x4"]), flush=True)
        results["presigned_big"] = await big_presigned(client, args.big_mb, gateway_pid)
        print(f"presigned {args.big_mb} MB:", fmt(results["presigned_big"]), flush=True)
        return results
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=8798)
    parser.add_argument("--no-start", action="store_true", help="use the gateway already on --port")
    parser.add_argument("--small", type=int, default=300, help="100 KB uploads")
    parser.add_argument("--large", type=int, default=20, help="5 MB uploads")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--downloads", type=int, default=300)
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument("--big-mb", type=int, default=1024)
    args = parser.parse_args()
    print(machine_line())
    namespace = "benchmedia"
    env = {
        **namespace_env(namespace, redis_db=7, http_port=args.port, gateway_workers=1),
        "TIDINGS_S3_BUCKET": f"tidings-{namespace}",
        "TIDINGS_RATE_MEDIA_PER_S": "100000",
        "TIDINGS_RATE_MEDIA_BURST": "100000",
        "TIDINGS_MEDIA_DAILY_BYTES": str(1 << 50),
    }
    os.environ.update(env)
    secret = Settings().resolved_auth_secret()
    base = f"http://127.0.0.1:{args.port}"
    if args.no_start:
        print(orjson.dumps(asyncio.run(run(args, base, secret, None))).decode())
        return
    logs = Path(tempfile.mkdtemp(prefix="bench-media-"))
    system = BenchSystem({**env, "TIDINGS_AUTH_SECRET": secret}, logs)
    system.migrate()
    system.start()
    try:
        system.wait_ready()
        results = asyncio.run(run(args, base, secret, system.pids()["gateway"]))
        print(orjson.dumps(results).decode())
    finally:
        system.stop()


if __name__ == "__main__":
    main()
