"""`tidings up` as a newcomer runs it: it prints where to connect, two users can talk through
it, and Ctrl-C leaves no process or port behind. (The services are already up for the suite, so
`up` reuses them and, rightly, leaves them running.)"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path

import orjson
import pytest
from websockets.sync.client import connect

from tests.conftest import NAMESPACE
from tests.e2e.conftest import ROOT, _free_port
from tidings.settings import Settings


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            child = int(stat.parent.name)
            found += [child, *_children(child)]
    return found


def _still_running(pids: list[int], grace_s: float) -> list[str]:
    """The command lines of ``pids`` still alive after ``grace_s`` (zombies count as gone)."""
    deadline = time.monotonic() + grace_s
    while True:
        alive = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if state != "Z":
                alive.append(f"{pid} {cmd}")
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def _free_block(n: int) -> int:
    """The first of ``n`` consecutive ports free now, below the ephemeral range (32768-60999
    here), where the suite's client sockets would take the ports after a lone free one."""
    start = 20000 + (zlib.crc32(NAMESPACE.encode()) % 1000) * 10
    for base in [*range(start, 32000, 10), *range(20000, start, 10)]:
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + n):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise RuntimeError(f"no {n} free ports in a row in 20000-31999")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_up_serves_a_scripted_exchange_and_ctrl_c_cleans_up(services: Settings) -> None:
    port = _free_port()
    # Its own topics, keyspace and consumer groups: in the suite's groups, its workers' joining
    # and leaving paused the shared system's delivery for seconds (rebalances) under other tests.
    ns = f"{NAMESPACE}up"
    env = {
        **os.environ,
        "TIDINGS_HTTP_PORT": str(port),
        "TIDINGS_WORKER_WEB_PORT": str(_free_block(5)),  # `up` serves workers' metrics on 5 ports
        "TIDINGS_CASSANDRA_KEYSPACE": f"tidings_{ns}",
        "TIDINGS_TOPIC_PREFIX": f"{ns}.",
        "TIDINGS_WORKER_APP_ID": f"tidings-{ns}-projector",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidings", "up"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            output.append(line)
            if "Ctrl-C stops" in line:
                break
        text = "".join(output)
        assert f"ws://127.0.0.1:{port}/v1/ws" in text, text
        assert "tidings token" in text
        children = _children(proc.pid)
        assert len(children) >= 2  # gateway and worker

        alice, bob = f"a{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}"

        def token(user: str) -> str:
            out = subprocess.run(
                [sys.executable, "-m", "tidings", "token", user],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            return out.stdout.strip()

        cid = f"dm:{min(alice, bob)}:{max(alice, bob)}"
        url = f"ws://127.0.0.1:{port}/v1/ws?token="
        with connect(url + token(bob)) as bob_ws, connect(url + token(alice)) as alice_ws:
            time.sleep(0.2)
            alice_ws.send(
                orjson.dumps(
                    {
                        "type": "send",
                        "ref": "1",
                        "client_msg_id": "hello",
                        "conversation_id": cid,
                        "body": "hi bob",
                    }
                ).decode()
            )
            # Her own message may be pushed to her socket before the ack reaches it.
            frames = [orjson.loads(alice_ws.recv(timeout=10)) for _ in range(2)]
            assert sorted(f["type"] for f in frames) == ["ack", "message"]
            frame = orjson.loads(bob_ws.recv(timeout=10))
            assert frame["type"] == "message" and frame["message"]["body"] == "hi bob"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=60)  # also closes the pipe
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("tidings up did not stop on Ctrl-C")
    alive = _still_running(children, grace_s=5)
    assert alive == [], f"left running: {alive}"
    assert _port_free(port)
    assert proc.returncode == 0, rest
