"""The launcher's life cycle (``tidings/services/_base.py``) on a throwaway process and a
loopback socket: no real server needed."""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

import pytest

from tidings.services import _base, _process
from tidings.services._common import Echo
from tidings.settings import Settings


class _Sleeper(_base.Service):
    """A "server" that is a sleeping Python process; its port is a listener this test holds."""

    name = "sleeper"
    ready_timeout_s = 5.0

    def __init__(self, settings: Settings, listener: socket.socket) -> None:
        super().__init__(settings)
        self._port = int(listener.getsockname()[1])

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return self._port

    def answering(self) -> bool:
        return True

    def launch(self, echo: Echo) -> int:
        self.dir.mkdir(parents=True, exist_ok=True)
        code = "import time; time.sleep(60)"
        pid = _process.spawn([sys.executable, "-c", code], cwd=self.dir, log=self.dir / "out.log")
        self.write_pid(self.pid_file, pid)
        return pid

    def log_files(self) -> list[Path]:
        return [self.dir / "out.log"]


@pytest.fixture
def listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_down_returns_only_once_the_stopped_servers_ports_are_free(
    tmp_path: Path, listener: socket.socket
) -> None:
    service = _Sleeper(Settings(state_dir=tmp_path), listener)
    pid = service.launch(lambda _: None)
    # The process exits at SIGTERM at once; its port closes a moment later (here: this test's
    # listener, closed 1 s after the stop began), as a loaded machine has shown.
    closer = threading.Timer(1.0, listener.close)
    closer.start()
    try:
        status = service.down(lambda _: None)
    finally:
        closer.cancel()
    assert not _process.is_alive(pid)
    assert not status.running
    assert not _process.port_open("127.0.0.1", service.port)


def test_up_waits_for_a_just_stopped_servers_port_but_a_stranger_is_still_an_error(
    tmp_path: Path, listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = _Sleeper(Settings(state_dir=tmp_path), listener)
    closer = threading.Timer(1.0, listener.close)
    closer.start()
    status = service.up(lambda _: None)  # the port frees within the wait: started
    assert status.running and status.started_by_us
    service.down(lambda _: None)

    monkeypatch.setattr(_base, "PORTS_FREE_S", 0.5)
    stranger = socket.socket()
    stranger.bind(("127.0.0.1", 0))
    stranger.listen()
    try:
        with pytest.raises(_base.ServiceError, match=r"taken .* by a process tidings did not start"):
            _Sleeper(Settings(state_dir=tmp_path / "other"), stranger).up(lambda _: None)
    finally:
        stranger.close()
