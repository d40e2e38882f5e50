"""The running system: a real gateway and a real Faust worker as child processes, over the
real services, driven through the client protocol only."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from query_api.auth import issue_token
from tests.e2e import push_fakes
from tests.polling import wait_until as wait_until  # re-exported: the e2e tests import it from here
from tidings import processes
from tidings.settings import Settings

ROOT = processes.ROOT
FANOUT_THRESHOLD = 10
PRESENCE_TTL_S, IDLE_CLOSE_S, HEARTBEAT_S = 4.0, 8.0, 0.5
# UNREAD: test clients read frames only when a test expects one, and keep the rest in a
# backlog; a real client reads all the time. With websockets' flow control (16 frames) a
# socket holding more unread pushes stops reading, so it never reads the pong its keepalive
# waits for, sends no further ping, and is closed as silent (4408) after IDLE_CLOSE_S: the
# CI failure of test_history_tiers (80 own messages pushed while the archive ran). Test
# sockets therefore buffer without limit (max_queue=None); tests of slow readers open
# their own sockets.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class System:
    def __init__(self, settings: Settings, logs: Path, env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.settings = settings
        self.logs = logs
        # FCM and APNs point at the local fakes of tests/e2e/push_fakes.py (started by the tests).
        self.push_fakes = push_fakes.prepare(logs / "push-fakes")
        self.env = {
            **os.environ,
            "TIDINGS_HTTP_PORT": str(self.port),
            # Low, so that small groups, large groups and the switch between them all happen.
            "TIDINGS_FANOUT_THRESHOLD": str(FANOUT_THRESHOLD),
            # Tests send hundreds of messages in a row; the limits are tested on gateways of
            # their own with the defaults (tests/e2e/test_abuse.py).
            "TIDINGS_RATE_SEND_PER_S": "10000",
            "TIDINGS_RATE_SEND_BURST": "10000",
            # Search tests poll until a message is searchable.
            "TIDINGS_RATE_SEARCH_PER_S": "10000",
            "TIDINGS_RATE_SEARCH_BURST": "10000",
            # Presence timings scaled down so that lapses and silence closes happen in seconds;
            # test clients send WebSocket pings every HEARTBEAT_S.
            "TIDINGS_PRESENCE_TTL_S": str(PRESENCE_TTL_S),
            "TIDINGS_IDLE_CLOSE_S": str(IDLE_CLOSE_S),
            "TIDINGS_PRESENCE_SWEEP_S": "0.25",
            "TIDINGS_ARCHIVE_DIR": str(logs / "archive"),
            # The push tests play the Web Push service on this host (tests/e2e/test_push.py).
            "TIDINGS_PUSH_WEBPUSH_HOSTS": "127.0.0.1",
            **self.push_fakes.env,
            "TIDINGS_SEARCH_DIR": str(logs / "search"),
            **(env or {}),
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        # role -> port of its Prometheus /metrics (workers)
        self.metrics_ports: dict[str, int] = {}
        self.http = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}/v1/ws"

    # the processes a system starts (more of a role may be started: `gateway2`, ...)
    COMMANDS = processes.ROLES

    def start(self, name: str) -> None:
        self.metrics_ports[name] = _free_port()
        env = {**self.env, "TIDINGS_WORKER_WEB_PORT": str(self.metrics_ports[name])}
        self.procs[name] = processes.spawn(name, env, log=self.logs / f"{name}.log")

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        processes.stop(self.procs.values())
        self.procs.clear()

    def wait_ready(self, timeout_s: float = 60) -> None:
        self.wait_http(f"{self.http}/readyz", timeout_s)

    def wait_reading(self, timeout_s: float = 60) -> None:
        """Until every worker started says its consumer groups read (``tidings_consumer_ready``)."""
        workers = {
            name: port
            for name, port in self.metrics_ports.items()
            if name in self.procs and processes.role_of(name) != "gateway"
        }
        try:
            processes.wait_reading(workers, self.procs, timeout_s=timeout_s)
        except processes.Exited as exc:
            log = (self.logs / f"{exc.name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{exc}: {log}") from exc

    @contextmanager
    def running(self, names: Iterable[str]) -> Iterator[None]:
        """Start ``names``, wait until the gateway answers and the deliver worker pushes; stop
        them all on the way out."""
        for name in names:
            self.start(name)
        try:
            self.wait_ready()
            self.wait_reading()
            asyncio.run(self.wait_delivering())
            yield
        finally:
            self.stop()

    def wait_http(self, url: str, timeout_s: float) -> None:
        """Until ``url`` answers; the log of a process that exited meanwhile in the error."""
        try:
            processes.wait_ready(url, self.procs, timeout_s=timeout_s)
        except processes.Exited as exc:
            log = (self.logs / f"{exc.name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{exc}: {log}") from exc

    async def wait_delivering(self, timeout_s: float = 60) -> None:
        """Until a message sent now is pushed: the delivery group has its partitions (it starts
        at the end of the log, so what is sent before that would not be pushed)."""
        a, b = f"w{uuid.uuid4().hex[:10]}", f"w{uuid.uuid4().hex[:10]}"
        cid = f"dm:{min(a, b)}:{max(a, b)}"
        deadline = time.monotonic() + timeout_s
        async with self.connect(b) as receiver, self.connect(a) as sender:
            while time.monotonic() < deadline:
                await sender.send_message(cid, "warm-up")
                try:
                    await receiver.expect("message", timeout=1.0)
                    return
                except AssertionError:
                    continue
        raise RuntimeError("the delivery worker never pushed")

    def token(self, user: str, device: str = "default", ttl_s: int = 3600) -> str:
        return issue_token(self.settings.resolved_auth_secret(), user, device_id=device, ttl_s=ttl_s)

    @asynccontextmanager
    async def connect(
        self, user: str, device: str = "default", *, heartbeat: bool = True
    ) -> AsyncIterator[Client]:
        """A client socket; it heartbeats with WebSocket pings unless told not to."""
        async with websockets.connect(
            f"{self.ws}?token={self.token(user, device)}",
            max_size=None,
            max_queue=None,  # see UNREAD
            ping_interval=HEARTBEAT_S if heartbeat else None,
        ) as ws:
            yield Client(ws)

    def request(
        self,
        method: str,
        path: str,
        *,
        user: str | None = None,
        body: Any = None,
        token: str | None = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        req = urllib.request.Request(f"{self.http}{path}", data=data, method=method)
        if token is None and user is not None:
            token = self.token(user)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                payload = r.read()
                return r.status, orjson.loads(payload) if payload else None
        except urllib.error.HTTPError as err:
            payload = err.read()
            return err.code, orjson.loads(payload) if payload else None


async def run_cli(system: System, *args: str, timeout_s: float = 300) -> str:
    """``python -m tidings ARGS`` against the test system, off the event loop: a test's open
    sockets must keep heartbeating meanwhile (a blocked loop sends no pings, and the gateway
    closes the socket as silent, 4408). Its standard output; a failure fails the test."""
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tidings", *args],
        cwd=ROOT,
        env=system.env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


class Client:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.backlog: list[dict[str, Any]] = []

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(frame if isinstance(frame, (str, bytes)) else orjson.dumps(frame).decode())

    async def expect(self, kind: str, timeout: float = 10, **match: Any) -> dict[str, Any]:  # noqa: ASYNC109
        """The first frame of ``kind`` (matching ``match``), keeping other frames for later."""
        for i, frame in enumerate(self.backlog):
            if frame["type"] == kind and all(frame.get(k) == v for k, v in match.items()):
                return self.backlog.pop(i)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"no {kind} frame {match} within {timeout}s; got {self.backlog}")
            try:
                frame = orjson.loads(await asyncio.wait_for(self.ws.recv(), remaining))
            except TimeoutError:
                continue  # reported by the check above
            if frame["type"] == kind and all(frame.get(k) == v for k, v in match.items()):
                return frame
            self.backlog.append(frame)

    async def settled(self, timeout: float = 10) -> None:  # noqa: ASYNC109
        """Until the gateway has handled every frame sent so far on this socket (it handles a
        connection's frames in order, so a ping's ``pong`` comes after them) and, on a new
        socket, registered it for deliveries and presence (done before it reads frames)."""
        ref = f"settled-{uuid.uuid4().hex[:8]}"
        await self.send({"type": "ping", "ref": ref})
        await self.expect("pong", timeout=timeout, ref=ref)

    async def expect_none(self, kind: str, within: float = 0.7, **match: Any) -> None:
        """Fail if a frame of ``kind`` (matching ``match``) arrives within ``within`` seconds."""
        try:
            frame = await self.expect(kind, timeout=within, **match)
        except AssertionError:
            return
        raise AssertionError(f"unexpected {kind} frame: {frame}")

    async def send_message(self, cid: str, body: str, client_msg_id: str | None = None) -> dict[str, Any]:
        ref = uuid.uuid4().hex
        await self.send(
            {
                "type": "send",
                "ref": ref,
                "client_msg_id": client_msg_id or uuid.uuid4().hex,
                "conversation_id": cid,
                "kind": "text",
                "body": body,
            }
        )
        return await self.expect("ack", ref=ref)


class Gateway:
    """One more gateway process over the same services (as another host would run), with the
    system's settings changed by ``env``; ``default_limits`` drops the test system's raised
    rate limits, ``origins`` sets a WebSocket Origin allow-list."""

    def __init__(
        self,
        system: System,
        name: str,
        *,
        env: dict[str, str] | None = None,
        default_limits: bool = False,
        origins: list[str] | None = None,
    ) -> None:
        self.system = system
        self.port = _free_port()
        self.ws = f"ws://127.0.0.1:{self.port}/v1/ws"
        self.http = f"http://127.0.0.1:{self.port}"
        base = {k: v for k, v in system.env.items() if not (default_limits and k.startswith("TIDINGS_RATE_"))}
        base["TIDINGS_HTTP_PORT"] = str(self.port)
        if origins is not None:
            base["TIDINGS_ALLOWED_ORIGINS"] = orjson.dumps(origins).decode()
        self.log = system.logs / f"gateway-{name}.log"
        self.proc = processes.spawn("gateway", {**base, **(env or {})}, log=self.log)
        try:
            processes.wait_ready(f"{self.http}/readyz", {"gateway": self.proc}, timeout_s=90)
        except processes.Exited as exc:
            raise RuntimeError(f"{exc}: {self.log.read_text()[-3000:]}") from exc

    @asynccontextmanager
    async def connect(self, user: str, device: str = "default") -> AsyncIterator[Client]:
        """A client socket on this gateway, heartbeating with WebSocket pings."""
        async with websockets.connect(
            f"{self.ws}?token={self.system.token(user, device)}",
            max_size=None,
            max_queue=None,  # see UNREAD
            ping_interval=HEARTBEAT_S,
        ) as ws:
            yield Client(ws)

    def stop(self) -> None:
        processes.stop([self.proc])


@pytest.fixture(scope="session")
def system(
    services: Settings, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    """The system on the shared services; with ``TIDINGS_TEST_REDIS_CLUSTER=1`` its gateways and
    workers use a Redis Cluster of this run's own instead of the shared Redis (the
    ``redis_cluster`` fixture), and ``system.settings`` say so."""
    settings, env = services, None
    if os.environ.get("TIDINGS_TEST_REDIS_CLUSTER") == "1":
        cluster: Settings = request.getfixturevalue("redis_cluster")
        settings = services.model_copy(
            update={"redis_cluster_nodes": cluster.redis_cluster_nodes, "redis_db": 0}
        )
        env = {"TIDINGS_REDIS_CLUSTER_NODES": cluster.redis_cluster_nodes, "TIDINGS_REDIS_DB": "0"}
    system = System(settings, tmp_path_factory.mktemp("system-logs"), env)
    with system.running(System.COMMANDS):
        yield system


async def settled(*clients: Client) -> None:
    """``Client.settled`` on each of ``clients``, together."""
    await asyncio.gather(*(c.settled() for c in clients))


def user() -> str:
    """A fresh user id per test, so tests never see each other's messages."""
    return f"u{uuid.uuid4().hex[:12]}"
