"""Redis from Debian's ``redis-server``, daemonised, with an append-only file (fsync every second).

Redis holds the idempotency records of sends: a Redis that comes back empty forgets them, and a
client's retry of a send whose ack it missed then appends the message a second time (the fault
suite's Redis restart found exactly that). So it persists; the caches in it are disposable.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from tidings.services import _probes, _process
from tidings.services._base import Service
from tidings.services._common import Echo, ServiceError


class Redis(Service):
    name = "redis"
    ready_timeout_s = 30.0

    @property
    def host(self) -> str:
        return self.settings.redis_host

    @property
    def port(self) -> int:
        return self.settings.redis_port

    def answering(self) -> bool:
        return _probes.redis_ping(self.host, self.port)

    def log_files(self) -> list[Path]:
        return [self.dir / "redis.log", self.dir / "redis.out"]

    def extra_args(self) -> list[str]:
        """More ``redis-server`` options (a cluster node's)."""
        return []

    def launch(self, echo: Echo) -> int:
        server = shutil.which("redis-server")
        if server is None:
            raise ServiceError("redis-server not found: apt-get install redis-server")
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [
            server,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--daemonize",
            "yes",
            "--dir",
            str(self.dir),
            "--pidfile",
            str(self.pid_file),
            "--logfile",
            str(self.dir / "redis.log"),
            # Keep argv in /proc/<pid>/cmdline (the default title hides --dir), so that the
            # ownership check, and `ps`, can tell our server from another one.
            "--set-proc-title",
            "no",
            *self.extra_args(),
        ]
        echo(f"starting {self.name} on {self.host}:{self.port}")
        with (self.dir / "redis.out").open("ab") as out:
            # The parent forks the daemon and exits; the daemon writes the pid file.
            result = subprocess.run(
                argv,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=30,
                check=False,
            )
        if result.returncode != 0:
            raise ServiceError(f"redis-server exited with {result.returncode}\n{self._tails()}")
        deadline = time.monotonic() + 10
        while (pid := _process.read_pid(self.pid_file)) is None:
            if time.monotonic() > deadline:
                raise ServiceError(f"redis wrote no pid file {self.pid_file}\n{self._tails()}")
            time.sleep(0.05)
        return pid
