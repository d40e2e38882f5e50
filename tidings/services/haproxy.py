"""HAProxy (Debian's ``haproxy``, 2.6) in front of the cluster profile's gateways.

The configuration is generated here (``haproxy_cfg``). What it does, and why:

- Health: every gateway is checked with ``GET /readyz`` each second; two failures take it out,
  two successes put it back. A draining gateway (SIGTERM) answers 503 at once and, in the
  cluster profile, keeps serving its sockets ``DRAIN_UNREADY_S`` (9 s) before it tells its
  clients to reconnect (query_api/drain.py): HAProxy has taken it out by then, so the
  reconnects go to the other gateways.
- WebSockets (``/v1/ws``) are balanced by a consistent hash of the user id, read from the token
  (``?token=`` or ``Authorization: Bearer``; HAProxy only reads the ``sub`` claim to route, the
  gateway verifies the signature). All of a user's devices then share one gateway, so a message
  to them is one pub/sub delivery to one gateway, not one per device's gateway
  (shared/notes/performance.md: "pub/sub per gateway, not per user"); and adding or removing a
  gateway moves only about 1/N of the users instead of reshuffling everyone, as a modulo hash
  would. Cost: a heavy user cannot be spread, and users are not perfectly even (``maxconn``
  bounds any one gateway). A socket without a token hashes to nothing and goes round robin
  (the gateway refuses it anyway).
- Plain HTTP is round robin: requests are short and carry no per-user state in the gateway.
  Its servers ``track`` the WebSocket backend's: one check per gateway per second, not two.
- A gateway that died since its last check: a refused connection is retried on another gateway
  (``retries 2``, ``option redispatch 1``) rather than answered 503 until the checks notice.
- Capacity: ``maxconn`` per gateway is ``TIDINGS_GATEWAY_MAX_CONNECTIONS``; past it HAProxy
  queues connections instead of overloading the gateway. The same number is the capacity of the
  80 % alert (docs/alerts.yml).
- Draining on reload: HAProxy runs master-worker (``-W``); ``reload`` rewrites the config and
  sends SIGUSR2, the new worker takes new connections and the old one keeps its open sockets
  until they close or ``hard-stop-after`` (60 s) ends them. ``drain(server)`` sets one gateway to
  DRAIN over the admin socket: no new connections, existing ones kept.
- Metrics: HAProxy's own Prometheus exporter on the stats port (``/metrics``; e.g.
  ``haproxy_server_current_sessions``), the stats page on ``/stats`` and ``/healthz``.
"""

from __future__ import annotations

import resource
import shutil
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tidings.services import _process
from tidings.services._base import Service
from tidings.services._common import Echo, ServiceError
from tidings.settings import Settings

STATS_PORT_OFFSET = -383  # 21787 -> 21404
# Health checks: every CHECK_INTER_S, each given CHECK_TIMEOUT_S to answer; CHECK_FALL
# failures in a row take a gateway out.
CHECK_INTER_S = 1
CHECK_TIMEOUT_S = 3
CHECK_FALL = 2
# How long a stopping gateway answers /readyz 503 before it hands its sockets over
# (TIDINGS_DRAIN_UNREADY_S): HAProxy's checks have seen CHECK_FALL failures by then even when
# each one ran into its timeout (a loaded gateway's answer can come late), so the reconnects go
# to the other gateways, not back to the one that is leaving. 3 s (two prompt failures) was too
# short on the loaded 2-core machine: 11 sockets were sent to a draining gateway.
DRAIN_UNREADY_S = CHECK_INTER_S + CHECK_FALL * (CHECK_TIMEOUT_S + CHECK_INTER_S)


class HAProxy(Service):
    name = "haproxy"
    ready_timeout_s = 30.0

    def __init__(self, settings: Settings, gateway_ports: Sequence[int]) -> None:
        super().__init__(settings)
        self.gateway_ports = list(gateway_ports)
        self.config = self.dir / "haproxy.cfg"
        self.admin_socket = self.dir / "admin.sock"

    @property
    def host(self) -> str:
        return self.settings.http_host

    @property
    def port(self) -> int:
        return self.settings.http_port

    @property
    def stats_port(self) -> int:
        return self.port + STATS_PORT_OFFSET

    def ports(self) -> list[int]:
        return [self.port, self.stats_port]

    def answering(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.stats_port}/healthz", timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def log_files(self) -> list[Path]:
        return [self.dir / "haproxy.out"]

    def global_maxconn(self) -> int:
        """Every gateway's capacity plus room for HTTP, within the file-descriptor limit HAProxy
        inherits (two descriptors per proxied connection; it refuses to start otherwise)."""
        wanted = self.settings.gateway_max_connections * max(1, len(self.gateway_ports)) + 1000
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return wanted
        return max(100, min(wanted, (soft - 200) // 2))

    def haproxy_cfg(self) -> str:
        capacity = self.settings.gateway_max_connections
        servers = "\n".join(
            f"    server gw{i + 1} 127.0.0.1:{port}" for i, port in enumerate(self.gateway_ports)
        )
        # The HTTP backend's servers follow the WebSocket backend's checks: one /readyz per
        # gateway per interval, not two (a loaded gateway's /readyz asks every store in turn).
        tracking = "\n".join(
            f"    server gw{i + 1} 127.0.0.1:{port} no-check track gateways_ws/gw{i + 1}"
            for i, port in enumerate(self.gateway_ports)
        )
        return f"""\
# Generated by tidings/services/haproxy.py (its docstring says why each setting is so).
global
    # Within the fd limit (global_maxconn); each gateway still gets its own maxconn below.
    maxconn {self.global_maxconn()}
    hard-stop-after 60s
    stats socket {self.admin_socket} mode 600 level admin

defaults
    mode http
    option dontlognull
    timeout connect 3s
    timeout client 60s
    timeout server 60s
    # An upgraded WebSocket is a tunnel; clients ping every 30 s, gateways close at 90 s silent.
    timeout tunnel 120s
    timeout client-fin 5s
    timeout http-request 10s
    timeout queue 10s
    # A check's whole exchange; unset it would be `inter` (1 s), and a loaded gateway's /readyz
    # (Kafka, Cassandra and Redis asked in turn) can take longer than that without being down.
    timeout check {CHECK_TIMEOUT_S}s
    # A connection refused by a gateway that died since its last check is tried again on
    # another one (before anything was sent: safe for any request), instead of a 503 to the
    # client until the checks take the dead one out.
    retries 2
    option redispatch 1
    default-server check inter {CHECK_INTER_S}s fall {CHECK_FALL} rise 2 maxconn {capacity}

frontend stats
    bind {self.host}:{self.stats_port}
    monitor-uri /healthz
    http-request use-service prometheus-exporter if {{ path /metrics }}
    stats enable
    stats uri /stats

frontend tidings
    bind {self.host}:{self.port}
    use_backend gateways_ws if {{ path /v1/ws }}
    default_backend gateways_http

backend gateways_ws
    acl query_token url_param(token) -m found
    http-request set-var(txn.user) url_param(token),jwt_payload_query('$.sub') if query_token
    http-request set-var(txn.user) http_auth_bearer,jwt_payload_query('$.sub') unless query_token
    balance hash var(txn.user)
    hash-type consistent
    option httpchk GET /readyz
    http-check expect status 200
{servers}

backend gateways_http
    balance roundrobin
{tracking}
"""

    def _haproxy(self) -> str:
        found = shutil.which("haproxy")
        if found is None:
            raise ServiceError("haproxy not found: apt-get install haproxy")
        return found

    def _write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self.haproxy_cfg())
        check = subprocess.run(
            [self._haproxy(), "-c", "-q", "-f", str(self.config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if check.returncode != 0:
            raise ServiceError(f"haproxy refuses {self.config}:\n{check.stdout}{check.stderr}")

    def launch(self, echo: Echo) -> int:
        self._write_config()
        ports = ", ".join(str(p) for p in self.gateway_ports)
        echo(f"starting haproxy on {self.host}:{self.port} in front of gateways on {ports}")
        # -W: master-worker, so that SIGUSR2 reloads with a soft stop of the old worker;
        # -db: stays in the foreground, the pid we keep is the master's.
        argv = [self._haproxy(), "-W", "-db", "-f", str(self.config)]
        pid = _process.spawn(argv, cwd=self.dir, log=self.log_files()[0])
        self.write_pid(self.pid_file, pid)
        return pid

    def reload(self, gateway_ports: Sequence[int], echo: Echo = print) -> None:
        """Regenerate the config for ``gateway_ports`` and reload: open sockets stay on the old
        worker (drained), new ones go by the new config."""
        pid = _process.owned_pid(self.pid_file, self.dir)
        if pid is None:
            raise ServiceError("haproxy is not running (no live pid file of ours)")
        self.gateway_ports = list(gateway_ports)
        self._write_config()
        echo(f"reloading haproxy (pid {pid}) for gateways on {', '.join(map(str, gateway_ports))}")
        _process.signal_pid(pid, signal.SIGUSR2)

    def admin(self, command: str) -> str:
        """One command on HAProxy's admin socket (e.g. ``show servers state``)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.admin_socket))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def drain(self, server: str) -> None:
        """Stop sending new connections to gateway ``server`` (``gw1``...) in both backends."""
        for backend in ("gateways_ws", "gateways_http"):
            answer = self.admin(f"set server {backend}/{server} state drain").strip()
            if answer:
                raise ServiceError(f"haproxy: set server {backend}/{server} state drain: {answer}")
