"""Local stand-ins for FCM (HTTP v1 and Google's OAuth token endpoint) and APNs (HTTP/2, token
auth) that check each request the way the providers document it and record what they got.

Each check that fails is recorded in ``problems`` (and the request answered 400), so a test
asserts both what arrived and that nothing was malformed.

- FCM: the OAuth 2.0 JWT-bearer grant (RFC 7523) signed RS256 by the service account's key,
  ``aud`` Google's token endpoint, ``scope`` firebase.messaging; then ``POST /v1/projects/{p}/messages:send``
  with that bearer token and a v1 ``message``: ``token``, string-only ``data``,
  ``android.priority`` ``HIGH``/``NORMAL``, ``android.collapse_key``. Registration tokens that
  start with ``gone`` answer 404 ``UNREGISTERED``.
- APNs: HTTP/2 (prior knowledge over TCP), ``POST /3/device/<hex token>``, ``authorization:
  bearer`` an ES256 JWT with ``kid`` and ``iss``/``iat``, ``apns-topic``, ``apns-push-type``,
  ``apns-priority`` 10 or 5, ``apns-collapse-id`` at most 64 bytes, ``apns-expiration``, a JSON
  body with ``aps``. Device tokens that start with ``dead`` answer 410 ``Unregistered``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import h2.config
import h2.connection
import h2.events
import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
PROJECT = "tidings-test"
KEY_ID, TEAM_ID, TOPIC = "ABCDE12345", "TEAM123456", "chat.tidings.test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class FakeConfig:
    fcm_port: int
    apns_port: int
    fcm_public_pem: bytes
    apns_public_pem: bytes
    env: dict[str, str]

    @property
    def token_uri(self) -> str:
        return f"http://127.0.0.1:{self.fcm_port}/token"


def prepare(folder: Path) -> FakeConfig:
    """Keys, a service account file and ports, before the system starts (its env names them)."""
    folder.mkdir(parents=True, exist_ok=True)
    fcm_port, apns_port = _free_port(), _free_port()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    account = {
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "k1",
        "private_key": _pem(rsa_key).decode(),
        "client_email": f"push@{PROJECT}.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": f"http://127.0.0.1:{fcm_port}/token",
    }
    (folder / "fcm-service-account.json").write_bytes(orjson.dumps(account))
    ec_key = ec.generate_private_key(ec.SECP256R1())
    (folder / "apns-key.p8").write_bytes(_pem(ec_key))
    public = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    return FakeConfig(
        fcm_port,
        apns_port,
        rsa_key.public_key().public_bytes(*public),
        ec_key.public_key().public_bytes(*public),
        {
            "TIDINGS_PUSH_FCM_CREDENTIALS_FILE": str(folder / "fcm-service-account.json"),
            "TIDINGS_PUSH_FCM_BASE_URL": f"http://127.0.0.1:{fcm_port}",
            "TIDINGS_PUSH_APNS_KEY_FILE": str(folder / "apns-key.p8"),
            "TIDINGS_PUSH_APNS_KEY_ID": KEY_ID,
            "TIDINGS_PUSH_APNS_TEAM_ID": TEAM_ID,
            "TIDINGS_PUSH_APNS_TOPIC": TOPIC,
            "TIDINGS_PUSH_APNS_BASE_URL": f"http://127.0.0.1:{apns_port}",
        },
    )


@dataclass
class Recorded:
    headers: dict[str, str]
    body: Any
    at: float = field(default_factory=time.time)


class FakeFcm:
    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.sends: list[Recorded] = []
        self.problems: list[str] = []
        self.tokens: set[str] = set()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status, body = fake.handle(self.path, {k.lower(): v for k, v in self.headers.items()}, raw)
                payload = orjson.dumps(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", config.fcm_port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _problem(self, text: str) -> tuple[int, Any]:
        with self._lock:
            self.problems.append(text)
        return 400, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": text}}

    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, Any]:
        if path == "/token":
            form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
                return self._problem(f"grant_type {form.get('grant_type')!r}")
            try:
                claims = jwt.decode(
                    form.get("assertion", ""),
                    self.config.fcm_public_pem,
                    algorithms=["RS256"],
                    # Google's token endpoint, whatever address the token request goes to
                    audience=GOOGLE_TOKEN_AUDIENCE,
                )
            except jwt.PyJWTError as exc:
                return self._problem(f"assertion: {exc!r}")
            if claims.get("scope") != FCM_SCOPE or not str(claims.get("iss", "")).endswith(
                ".iam.gserviceaccount.com"
            ):
                return self._problem(f"assertion claims {claims}")
            token = f"ya29.fake-{uuid.uuid4().hex}"
            with self._lock:
                self.tokens.add(token)
            return 200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}
        if path != f"/v1/projects/{PROJECT}/messages:send":
            return 404, {"error": {"code": 404, "status": "NOT_FOUND", "message": path}}
        bearer = headers.get("authorization", "")
        if not bearer.startswith("Bearer ") or bearer[7:] not in self.tokens:
            return 401, {"error": {"code": 401, "status": "UNAUTHENTICATED"}}
        try:
            message = orjson.loads(raw)["message"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return self._problem("body is not {message: ...}")
        android = message.get("android") or {}
        checks = [
            (isinstance(message.get("token"), str) and message["token"], "message.token"),
            (
                isinstance(message.get("data"), dict)
                and all(isinstance(v, str) for v in message["data"].values()),
                "message.data values must be strings",
            ),
            (android.get("priority") in ("HIGH", "NORMAL"), f"android.priority {android.get('priority')!r}"),
            (
                isinstance(android.get("collapse_key"), str) and android["collapse_key"],
                "android.collapse_key",
            ),
            (headers.get("content-type", "").startswith("application/json"), "content-type"),
        ]
        for ok, what in checks:
            if not ok:
                return self._problem(what)
        with self._lock:
            self.sends.append(Recorded(headers, message))
        if message["token"].startswith("gone"):
            return 404, {
                "error": {
                    "code": 404,
                    "status": "NOT_FOUND",
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                            "errorCode": "UNREGISTERED",
                        }
                    ],
                }
            }
        return 200, {"name": f"projects/{PROJECT}/messages/{uuid.uuid4().int % 10**16}"}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class FakeApns:
    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.sends: list[Recorded] = []
        self.problems: list[str] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._transports: set[asyncio.Transport] = set()
        fake = self

        class Protocol(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport: asyncio.Transport = transport  # type: ignore[assignment]
                fake._transports.add(self.transport)
                self.conn = h2.connection.H2Connection(
                    h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
                )
                self.streams: dict[int, tuple[dict[str, str], bytearray]] = {}
                self.conn.initiate_connection()
                self.transport.write(self.conn.data_to_send())

            def data_received(self, data: bytes) -> None:
                for event in self.conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        self.streams[event.stream_id] = (dict(event.headers), bytearray())  # type: ignore[arg-type]
                    elif isinstance(event, h2.events.DataReceived):
                        self.streams[event.stream_id][1].extend(event.data or b"")
                        self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        headers, body = self.streams.pop(event.stream_id)
                        status, out = fake.handle(headers, bytes(body))
                        payload = orjson.dumps(out) if out is not None else b""
                        self.conn.send_headers(
                            event.stream_id,
                            [
                                (":status", str(status)),
                                ("apns-id", headers.get("apns-id", "")),
                                ("content-length", str(len(payload))),
                            ],
                            end_stream=not payload,
                        )
                        if payload:
                            self.conn.send_data(event.stream_id, payload, end_stream=True)
                self.transport.write(self.conn.data_to_send())

        async def start() -> asyncio.base_events.Server:
            return await self._loop.create_server(Protocol, "127.0.0.1", config.apns_port)

        self._server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)

    def _problem(self, text: str) -> tuple[int, Any]:
        with self._lock:
            self.problems.append(text)
        return 400, {"reason": "BadRequest", "detail": text}

    def handle(self, headers: dict[str, str], raw: bytes) -> tuple[int, Any]:
        path = headers.get(":path", "")
        if headers.get(":method") != "POST" or not path.startswith("/3/device/"):
            return 405 if headers.get(":method") != "POST" else 404, {"reason": "BadPath"}
        device = path.removeprefix("/3/device/")
        auth = headers.get("authorization", "")
        if not auth.startswith("bearer "):
            return 403, {"reason": "MissingProviderToken"}
        try:
            header = jwt.get_unverified_header(auth[7:])
            claims = jwt.decode(auth[7:], self.config.apns_public_pem, algorithms=["ES256"])
        except jwt.PyJWTError as exc:
            self._problem(f"provider token: {exc!r}")
            return 403, {"reason": "InvalidProviderToken"}
        if (
            header.get("kid") != KEY_ID
            or claims.get("iss") != TEAM_ID
            or abs(time.time() - claims.get("iat", 0)) > 3600
        ):
            self._problem(f"provider token header {header} claims {claims}")
            return 403, {"reason": "InvalidProviderToken"}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._problem("body is not JSON")
        checks = [
            (
                all(c in "0123456789abcdefABCDEF" for c in device) and len(device) >= 64,
                f"device token {device!r}",
            ),
            (headers.get("apns-topic") == TOPIC, f"apns-topic {headers.get('apns-topic')!r}"),
            (headers.get("apns-push-type") == "alert", f"apns-push-type {headers.get('apns-push-type')!r}"),
            (headers.get("apns-priority") in ("10", "5"), f"apns-priority {headers.get('apns-priority')!r}"),
            (0 < len(headers.get("apns-collapse-id", "").encode()) <= 64, "apns-collapse-id"),
            (headers.get("apns-expiration", "x").isdigit(), "apns-expiration"),
            (isinstance(body, dict) and isinstance(body.get("aps"), dict), "aps"),
        ]
        for ok, what in checks:
            if not ok:
                return self._problem(what)
        with self._lock:
            self.sends.append(Recorded(headers, body))
        if device.startswith("dead"):
            return 410, {"reason": "Unregistered", "timestamp": int(time.time() * 1000)}
        return 200, None

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            for transport in self._transports:
                transport.close()
            await asyncio.sleep(0.1)  # the transports' close callbacks

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
