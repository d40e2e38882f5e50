"""A Tidings system for benchmarks, in a namespace of its own: keyspace, topics, consumer
groups and Redis database apart from a developer's ``tidings up`` and from the tests.

It migrates the namespace, then starts the deliver worker, the persist worker and the gateway
(``--gateway-workers`` Sanic processes) as child processes of ``python -m tidings``
(``tidings.processes``), on the shared services, and stops them (SIGTERM, then SIGKILL) when
done. Logs go to ``logs/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tidings import processes
from tidings.processes import ROOT


def namespace_env(namespace: str, *, redis_db: int, http_port: int, gateway_workers: int) -> dict[str, str]:
    return {
        "TIDINGS_CASSANDRA_KEYSPACE": f"tidings_{namespace}",
        "TIDINGS_TOPIC_PREFIX": f"{namespace}.",
        "TIDINGS_WORKER_APP_ID": f"tidings-{namespace}-projector",
        "TIDINGS_REDIS_DB": str(redis_db),
        "TIDINGS_HTTP_PORT": str(http_port),
        "TIDINGS_GATEWAY_WORKERS": str(gateway_workers),
    }


@dataclass
class BenchSystem:
    env: dict[str, str]
    logs: Path
    worker_ports: tuple[int, int] = (6176, 6177)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.env['TIDINGS_HTTP_PORT']}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.env['TIDINGS_HTTP_PORT']}/v1/ws"

    def _env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **self.env, **extra}

    def migrate(self) -> None:
        subprocess.run([sys.executable, "-m", "tidings", "migrate"], cwd=ROOT, env=self._env(), check=True)

    def start(self, only: str | None = None) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        ports = {
            "deliver": str(self.worker_ports[0]),
            "persist": str(self.worker_ports[1]),
            # Its metrics on any free port: the benchmarks scrape the other two.
            "search": "0",
            "gateway": "0",
        }
        for name in processes.ROLES:
            if only is not None and name != only:
                continue
            env = self._env(TIDINGS_WORKER_WEB_PORT=ports.get(name, "0"))
            self.procs[name] = processes.spawn(name, env, log=self.logs / f"{name}.log")

    def restart_gateway(self) -> None:
        """A fresh gateway: freed socket memory is not returned to the OS, and a big heap
        makes later runs slower (docs/benchmarks.md), so memory and fan-out runs want one."""
        self.stop(only="gateway")
        self.start(only="gateway")
        self.wait_ready()

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.procs.items()}

    def wait_ready(self, timeout_s: float = 90) -> None:
        try:
            processes.wait_ready(f"{self.http}/readyz", self.procs, timeout_s=timeout_s)
        except processes.Exited as exc:
            tail = (self.logs / f"{exc.name}.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"{exc}:\n{tail}") from exc
        except TimeoutError as exc:
            raise SystemExit(f"{exc} (logs in {self.logs})") from exc

    def wait_delivering(self, secret: str, timeout_s: float = 90) -> float:
        """Until a message sent now is pushed (the deliver group starts at the log end, so what
        is sent before it has its partitions is never pushed); returns the seconds it took."""
        import orjson
        import websockets

        from query_api.auth import issue_token

        async def probe() -> float:
            started = time.monotonic()
            a, b = f"probe{uuid.uuid4().hex[:8]}", f"probe{uuid.uuid4().hex[:8]}"
            cid = f"dm:{min(a, b)}:{max(a, b)}"
            url = self.ws + "?token="
            async with (
                websockets.connect(url + issue_token(secret, b), proxy=None) as rx,
                websockets.connect(url + issue_token(secret, a), proxy=None) as tx,
            ):
                n = 0
                while time.monotonic() - started < timeout_s:
                    n += 1
                    frame = {"type": "send", "ref": str(n), "client_msg_id": f"p{n}",
                             "conversation_id": cid, "kind": "text", "body": "probe"}  # fmt: skip
                    await tx.send(orjson.dumps(frame).decode())
                    try:
                        while True:
                            got = orjson.loads(await asyncio.wait_for(rx.recv(), 1.0))
                            if got.get("type") == "message":
                                return time.monotonic() - started
                    except TimeoutError:
                        continue
            raise SystemExit("the deliver worker never pushed")

        return asyncio.run(probe())

    def stop(self, only: str | None = None) -> None:
        import psutil

        procs = {n: p for n, p in self.procs.items() if only is None or n == only}
        # Sanic's manager can exit before all of its workers (seen: one worker left running,
        # holding the port), so the whole tree is noted first and cleaned up after.
        tree: list[psutil.Process] = []
        for proc in procs.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                tree += psutil.Process(proc.pid).children(recursive=True)
        processes.stop(procs.values(), timeout_s=30)
        _, alive = psutil.wait_procs(tree, timeout=10)
        for left in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                left.kill()
        for name in procs:
            del self.procs[name]


def bench_system(
    namespace: str, *, redis_db: int, http_port: int, gateway_workers: int
) -> tuple[dict[str, str], BenchSystem]:
    """The environment of a benchmark run in ``namespace`` (the process's own, the namespace's
    settings and the JWT secret ``tidings up`` uses, as ``TIDINGS_AUTH_SECRET``), and a system to
    start in it, logging to a new temporary folder."""
    env = {
        **os.environ,
        **namespace_env(namespace, redis_db=redis_db, http_port=http_port, gateway_workers=gateway_workers),
    }
    from tidings.settings import Settings

    env["TIDINGS_AUTH_SECRET"] = env.get("TIDINGS_AUTH_SECRET") or Settings().resolved_auth_secret()
    logs = Path(tempfile.mkdtemp(prefix=f"tidings-{namespace}-logs-"))
    return env, BenchSystem(env={k: v for k, v in env.items() if k.startswith("TIDINGS_")}, logs=logs)
