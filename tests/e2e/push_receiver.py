"""A real HTTP server the tests register as webhook endpoints: it records every POST and
answers by path (``/ok/...`` 200, ``/gone/...`` 410, ``/fail/...`` 500, ``/flaky/...`` 500 to
the first POST of each notification and 200 after, ``/hang/...`` after 8 s, past the sender's 5 s timeout).
A POST whose body never arrived in full (its sender killed) is not recorded."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


class Receiver:
    def __init__(self) -> None:
        self.posts: list[Post] = []
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:
                    # The sender died mid-request (the tests kill it -9): a real endpoint never
                    # got this notification, and nobody is there for an answer.
                    return
                post = Post(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
                try:
                    ident = str(post.json.get("notification_id"))
                except orjson.JSONDecodeError:
                    ident = hashlib.sha256(body).hexdigest()  # encrypted (Web Push)
                with receiver._lock:
                    receiver.posts.append(post)
                    first = ident not in receiver._seen
                    receiver._seen.add(ident)
                kind = self.path.split("/")[1]
                status = {"ok": 200, "gone": 410, "fail": 500}.get(kind, 200)
                if kind == "flaky":
                    status = 500 if first else 200
                if kind == "hang":
                    time.sleep(8)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False  # a hanging answer must not hold the teardown
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, kind: str, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{kind}/{name}"

    def to(self, kind: str, name: str) -> list[Post]:
        with self._lock:
            return [p for p in self.posts if p.path == f"/{kind}/{name}"]

    def wait(self, kind: str, name: str, count: int = 1, timeout_s: float = 20) -> list[Post]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self.to(kind, name)
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"{len(self.to(kind, name))} of {count} POSTs to /{kind}/{name} in {timeout_s}s")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def signature_ok(secret: str, post: Post) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), post.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, post.headers.get("x-tidings-signature", ""))
