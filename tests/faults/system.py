"""The running system for the fault suite: two gateways, the two worker roles, and service
instances of its own (other ports, another state folder) that it may stop and restart.

Nothing here touches the services of ``tidings services up`` (the ports in ``Settings``'
defaults): every process this starts gets the fault ports in its environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.e2e.conftest import System, _free_port
from tidings import processes
from tidings.settings import Settings

# Own instances: another state folder and other ports than the development defaults, so the
# suite can stop and restart them while others use theirs. The jar cache stays shared.
FAULT_ENV = {
    "TIDINGS_STATE_DIR": str(Path.home() / ".local" / "share" / "tidings-faults" / "state"),
    "TIDINGS_KAFKA_BOOTSTRAP": "127.0.0.1:29092",
    "TIDINGS_KAFKA_CONTROLLER_PORT": "29093",
    "TIDINGS_CASSANDRA_PORT": "29042",
    "TIDINGS_CASSANDRA_STORAGE_PORT": "27000",
    "TIDINGS_REDIS_PORT": "26379",
    "TIDINGS_S3_PORT": "29070",
}


def fault_settings() -> Settings:
    env = {k: os.environ.get(k.replace("TIDINGS_", "TIDINGS_FAULTS_"), v) for k, v in FAULT_ENV.items()}
    overrides: dict[str, Any] = {k.removeprefix("TIDINGS_").lower(): v for k, v in env.items()}
    return Settings(**overrides)


def settings_env(settings: Settings) -> dict[str, str]:
    return {
        "TIDINGS_STATE_DIR": str(settings.state_dir),
        "TIDINGS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "TIDINGS_KAFKA_CONTROLLER_PORT": str(settings.kafka_controller_port),
        "TIDINGS_CASSANDRA_PORT": str(settings.cassandra_port),
        "TIDINGS_CASSANDRA_STORAGE_PORT": str(settings.cassandra_storage_port),
        "TIDINGS_REDIS_PORT": str(settings.redis_port),
        "TIDINGS_S3_PORT": str(settings.s3_port),
    }


class FaultSystem(System):
    """``System`` with several gateways (``gateway``, ``gateway2``) and extra workers
    (``deliver2``, ``persist2``), each a process that can be killed and started again."""

    STARTED = ("deliver", "persist", "notify", "push", "gateway", "gateway2")

    def __init__(self, settings: Settings, logs: Path, *, fanout_threshold: int) -> None:
        super().__init__(settings, logs)
        self.env.update(settings_env(settings))
        self.env["TIDINGS_AUTH_SECRET"] = settings.resolved_auth_secret()
        self.env["TIDINGS_FANOUT_THRESHOLD"] = str(fanout_threshold)
        self.ports = {"gateway": self.port, "gateway2": _free_port()}

    def ws_urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{p}/v1/ws" for p in self.ports.values()]

    def start(self, name: str) -> None:
        env = {**self.env, "TIDINGS_WORKER_WEB_PORT": str(_free_port())}
        if name in self.ports:
            env["TIDINGS_HTTP_PORT"] = str(self.ports[name])
        self.procs[name] = processes.spawn(name, env, log=self.logs / f"{name}.log")

    def interrupt(self, name: str, timeout_s: float = 30) -> None:
        """A clean stop, as an operator scaling down does."""
        processes.stop([self.procs.pop(name)], timeout_s=timeout_s)

    def wait_gateway(self, name: str, timeout_s: float = 60) -> None:
        self.wait_http(f"http://127.0.0.1:{self.ports[name]}/readyz", timeout_s)

    def wait_ready(self, timeout_s: float = 90) -> None:
        for name in self.ports:
            if name in self.procs:
                self.wait_gateway(name, timeout_s)

    def log_texts(self) -> dict[str, str]:
        return {p.name: p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log"))}
