"""The life cycle every local service shares: reuse, clean stale pid files, start, wait, stop.

A subclass says how to launch its server and how to ask it whether it is ready; this class
decides when to do either, and never touches a process that another tool started.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from tidings.services import _process
from tidings.services._common import Echo, ServiceError, ServiceStatus
from tidings.settings import Settings

_POLL_S = 0.25
PORTS_FREE_S = 10.0  # how long an exited server's ports may take to close


class Service(ABC):
    # A class attribute for one-of-a-kind services; a node of a cluster sets its own per
    # instance ("kafka-2"), before this __init__ derives its folder from it.
    name: str
    ready_timeout_s: ClassVar[float]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Resolved, so that the ownership check matches the path the process was started with.
        self.dir: Path = (settings.state_dir / self.name).resolve()
        self.pid_file = self.dir / f"{self.name}.pid"

    @property
    @abstractmethod
    def host(self) -> str: ...

    @property
    @abstractmethod
    def port(self) -> int: ...

    def ports(self) -> list[int]:
        """Every port the server binds; all must be free before it starts."""
        return [self.port]

    @abstractmethod
    def answering(self) -> bool:
        """A quick protocol-level check, used by `status` and to reuse a running server."""

    def ready(self) -> bool:
        """The full readiness check after a start; by default the quick one."""
        return self.answering()

    def prepare(self, echo: Echo) -> None:
        """Work before a start that should not count as start-up time (e.g. resolving jars)."""
        self.dir.mkdir(parents=True, exist_ok=True)

    @abstractmethod
    def launch(self, echo: Echo) -> int:
        """Write configuration, start the server detached, record and return its pid."""

    @abstractmethod
    def log_files(self) -> list[Path]:
        """Logs whose tails explain a failed start."""

    def _status(
        self, *, running: bool, pid: int | None, started_by_us: bool = False, detail: str = ""
    ) -> ServiceStatus:
        return ServiceStatus(self.name, self.host, self.port, running, pid, started_by_us, detail)

    def status(self) -> ServiceStatus:
        pid = _process.read_pid(self.pid_file)
        if pid is None or not _process.is_ours(pid, self.dir):
            busy = self._busy_ports()
            detail = f"not running; {self._stranger(busy)}" if busy else "not running"
            return self._status(running=False, pid=None, detail=detail)
        detail = "ready" if self.answering() else f"pid {pid} alive but not answering"
        return self._status(running=True, pid=pid, detail=detail)

    def up(self, echo: Echo) -> ServiceStatus:
        with _process.locked(self.dir / ".lock"):
            pid = _process.owned_pid(self.pid_file, self.dir)
            if pid is not None:
                if not self.answering():
                    echo(f"{self.name}: pid {pid} is running but not answering yet; waiting")
                    self._wait_ready(pid, time.monotonic())
                return self._status(running=True, pid=pid, detail="ready (already running)")
            self._wait_ports_free()
            busy = self._busy_ports()
            if busy:
                raise ServiceError(f"cannot start {self.name}: {self._stranger(busy)}")
            self.prepare(echo)
            started = time.monotonic()
            pid = self.launch(echo)
            try:
                self._wait_ready(pid, started)
            except ServiceError:
                if _process.is_ours(pid, self.dir):
                    _process.stop(pid, self.dir)
                self.pid_file.unlink(missing_ok=True)
                raise
            elapsed = time.monotonic() - started
            echo(f"{self.name} ready on {self.host}:{self.port} in {elapsed:.1f} s (pid {pid})")
            return self._status(running=True, pid=pid, started_by_us=True, detail=f"ready in {elapsed:.1f} s")

    def down(self, echo: Echo) -> ServiceStatus:
        with _process.locked(self.dir / ".lock"):
            pid = _process.owned_pid(self.pid_file, self.dir)
            if pid is None:
                return self._status(running=False, pid=None, detail="not running")
            echo(f"stopping {self.name} (pid {pid})")
            seconds = _process.stop(pid, self.dir)
            self.pid_file.unlink(missing_ok=True)
            seconds += self._wait_ports_free()
            echo(f"{self.name} stopped in {seconds:.1f} s")
            return self._status(running=False, pid=None, detail=f"stopped pid {pid} in {seconds:.1f} s")

    def _wait_ready(self, pid: int, started: float) -> None:
        deadline = started + self.ready_timeout_s
        while True:
            if not _process.is_alive(pid):
                raise ServiceError(f"{self.name} (pid {pid}) exited during start-up\n{self._tails()}")
            if self.ready():
                return
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{self.name} (pid {pid}) not ready after {self.ready_timeout_s:.0f} s; "
                    f"stopping it\n{self._tails()}"
                )
            time.sleep(_POLL_S)

    def _wait_ports_free(self) -> float:
        """Wait up to ``PORTS_FREE_S`` until nothing accepts on the server's ports; the seconds
        waited. A server that has exited may still be seen listening for a moment (its
        sockets closed last; seen on a loaded machine as a restarted Redis Cluster node's own
        ports "taken by a stranger"), so ``down`` returns once they are free, and ``up`` gives a
        just-stopped server that moment before it calls the ports a stranger's."""
        started = time.monotonic()
        while self._busy_ports() and time.monotonic() - started < PORTS_FREE_S:
            time.sleep(_POLL_S)
        return time.monotonic() - started

    def _busy_ports(self) -> list[int]:
        return [port for port in self.ports() if _process.port_open(self.host, port)]

    def _stranger(self, busy: list[int]) -> str:
        ports = ", ".join(str(port) for port in busy)
        what = f"ports {ports} are" if len(busy) > 1 else f"port {ports} is"
        return (
            f"{what} taken on {self.host} by a process tidings did not start (no live pid "
            f"file in {self.dir}); stop it or choose other ports in settings"
        )

    def _tails(self) -> str:
        return "\n".join(_process.tail(path) for path in self.log_files())

    @staticmethod
    def write_pid(pid_file: Path, pid: int) -> None:
        pid_file.write_text(f"{pid}\n")
