"""The cluster profile's HAProxy (tidings/services/haproxy.py), the real one from Debian, in
front of small stand-in gateways (HTTP servers answering ``/readyz`` and naming themselves):
WebSocket paths go by a consistent hash of the token's user, a gateway whose ``/readyz`` fails
is taken out and comes back, ``drain`` stops new connections to one, and a reload for another
gateway count keeps the master running. The real gateways behind it: tests/cluster.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from query_api.auth import issue_token
from tidings.services import _process
from tidings.services.haproxy import STATS_PORT_OFFSET, HAProxy
from tidings.settings import Settings

SECRET = "haproxy-test-secret-not-checked-by-haproxy"


class StandIn:
    """A gateway stand-in: ``/readyz`` answers ``ready`` (200) or 503, anything else its name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ready = True
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/readyz":
                    status, body = (200, b"ok") if stand_in.ready else (503, b"draining")
                else:
                    status, body = 200, stand_in.name.encode()
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _free_pair() -> int:
    """A port p with p and its stats port (p + STATS_PORT_OFFSET) both free."""
    for _ in range(50):
        # Both bound, not only probed for a listener: a port that is some client socket's local
        # end (an ephemeral port) refuses HAProxy's bind too, and a connect probe misses it.
        with socket.socket() as sock, socket.socket() as stats:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port + STATS_PORT_OFFSET <= 1024:
                continue
            try:
                stats.bind(("127.0.0.1", port + STATS_PORT_OFFSET))
            except OSError:
                continue
            return port
    raise AssertionError("no free port pair")


@pytest.fixture
def stand_ins() -> Iterator[list[StandIn]]:
    gateways = [StandIn(f"gw{i + 1}") for i in range(3)]
    yield gateways
    for gateway in gateways:
        gateway.close()


@pytest.fixture
def haproxy(tmp_path: Path, stand_ins: list[StandIn]) -> Iterator[HAProxy]:
    settings = Settings(state_dir=tmp_path / "state", http_port=_free_pair(), gateway_max_connections=50)
    proxy = HAProxy(settings, [g.port for g in stand_ins[:2]])
    proxy.up(print)
    try:
        yield proxy
    finally:
        proxy.down(print)


def _get(proxy: HAProxy, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://{proxy.host}:{proxy.port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _ws_gateway(proxy: HAProxy, user: str, *, bearer: bool = False) -> str:
    token = issue_token(SECRET, user)
    if bearer:
        status, body = _get(proxy, "/v1/ws", {"Authorization": f"Bearer {token}"})
    else:
        status, body = _get(proxy, f"/v1/ws?token={token}")
    assert status == 200, (status, body)
    return body


def _until(check: Callable[[], bool], timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.2)


def _up(proxy: HAProxy) -> dict[str, str]:
    """Operational state of each gateway of the WebSocket backend (``show stat``)."""
    lines = proxy.admin("show stat").lstrip("# ").splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
    return {
        r["svname"]: r["status"]
        for r in rows
        if r["pxname"] == "gateways_ws" and r["svname"].startswith("gw")
    }


def test_websockets_go_by_user_and_http_round_robin(haproxy: HAProxy) -> None:
    _until(lambda: _up(haproxy) == {"gw1": "UP", "gw2": "UP"})
    users = [f"user{i}" for i in range(24)]
    placed = {u: _ws_gateway(haproxy, u) for u in users}
    assert set(placed.values()) == {"gw1", "gw2"}  # 24 users, both gateways
    for u in users:  # the same gateway every time, by query token or by bearer header
        assert _ws_gateway(haproxy, u) == placed[u]
        assert _ws_gateway(haproxy, u, bearer=True) == placed[u]
    answers = [_get(haproxy, "/v1/conversations")[1] for _ in range(6)]
    assert answers.count("gw1") == answers.count("gw2") == 3


def test_a_gateway_failing_readyz_is_taken_out_and_comes_back(
    haproxy: HAProxy, stand_ins: list[StandIn]
) -> None:
    _until(lambda: _up(haproxy) == {"gw1": "UP", "gw2": "UP"})
    stand_ins[0].ready = False  # what a draining gateway answers
    _until(lambda: _up(haproxy)["gw1"] == "DOWN")
    assert {_ws_gateway(haproxy, f"user{i}") for i in range(24)} == {"gw2"}
    stand_ins[0].ready = True
    _until(lambda: _up(haproxy)["gw1"] == "UP")
    assert {_ws_gateway(haproxy, f"user{i}") for i in range(24)} == {"gw1", "gw2"}


def test_drain_stops_new_connections_to_one_gateway(haproxy: HAProxy) -> None:
    _until(lambda: _up(haproxy) == {"gw1": "UP", "gw2": "UP"})
    haproxy.drain("gw1")
    assert _up(haproxy)["gw1"] == "DRAIN"
    assert {_get(haproxy, "/v1/conversations")[1] for _ in range(6)} == {"gw2"}


def test_reload_adds_a_gateway_and_keeps_the_master(haproxy: HAProxy, stand_ins: list[StandIn]) -> None:
    master = _process.read_pid(haproxy.pid_file)
    placed = {f"user{i}": _ws_gateway(haproxy, f"user{i}") for i in range(48)}
    haproxy.reload([g.port for g in stand_ins], print)
    _until(lambda: _up(haproxy) == {"gw1": "UP", "gw2": "UP", "gw3": "UP"})
    assert _process.read_pid(haproxy.pid_file) == master and _process.is_alive(master or 0)
    moved = {u for u in placed if _ws_gateway(haproxy, u) != placed[u]}
    # Consistent hashing: the users that move go to the new gateway, the others stay.
    assert moved and all(_ws_gateway(haproxy, u) == "gw3" for u in moved)
    assert len(moved) < len(placed) * 2 // 3
