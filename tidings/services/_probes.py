"""Protocol-level readiness probes: one attempt each, False (never an exception) when not ready.

An accepted TCP connection proves little (Kafka accepts before it is unfenced, Cassandra's
native transport starts last), so each probe speaks a line of the real protocol.
"""

from __future__ import annotations

import socket
import struct

_CLIENT_ID = b"tidings-probe"


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed mid-reply")
        chunks += chunk
    return bytes(chunks)


def _kafka_request(host: str, port: int, api_key: int, version: int, body: bytes, timeout: float) -> bytes:
    """Send one request with header v1 and return the response body after the correlation id."""
    correlation_id = 0x7D1D
    header = struct.pack(">hhih", api_key, version, correlation_id, len(_CLIENT_ID)) + _CLIENT_ID
    payload = header + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(payload)) + payload)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        reply = _recv_exact(sock, size)
    (got_id,) = struct.unpack_from(">i", reply)
    if got_id != correlation_id:
        raise ConnectionError(f"correlation id {got_id} != {correlation_id}")
    return reply[4:]


def kafka_api_versions(host: str, port: int, timeout: float = 2.0) -> bool:
    """ApiVersions v0 (api_key 18): the broker processes requests and answers error_code 0."""
    try:
        body = _kafka_request(host, port, 18, 0, b"", timeout)
    except (OSError, struct.error):
        return False
    return len(body) >= 2 and struct.unpack_from(">h", body)[0] == 0


def kafka_metadata_brokers(host: str, port: int, timeout: float = 2.0) -> int:
    """Metadata v1 for all topics: how many brokers the cluster reports (0 before registration)."""
    try:
        body = _kafka_request(host, port, 3, 1, struct.pack(">i", -1), timeout)
        (count,) = struct.unpack_from(">i", body)
    except (OSError, struct.error):
        return 0
    return max(count, 0)


def cql_supported(host: str, port: int, timeout: float = 2.0) -> bool:
    """CQL v4 OPTIONS frame; ready when the reply is a response frame with opcode SUPPORTED."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(bytes([0x04, 0x00, 0x00, 0x00, 0x05, 0, 0, 0, 0]))
            header = _recv_exact(sock, 9)
    except OSError:
        return False
    return bool(header[0] & 0x80) and header[4] == 0x06


def cql_release_version(
    host: str, port: int, protocol_version: int, local_dc: str, timeout: float = 10.0
) -> str | None:
    """``release_version`` from ``system.local`` through cassandra-driver, or None on failure."""
    # Imported here: the driver is slow to import and nothing should connect at import time.
    from cassandra import DriverException
    from cassandra.cluster import (
        EXEC_PROFILE_DEFAULT,
        Cluster,
        ExecutionProfile,
        NoHostAvailable,
    )
    from cassandra.connection import ConnectionException
    from cassandra.policies import DCAwareRoundRobinPolicy

    profile = ExecutionProfile(
        load_balancing_policy=DCAwareRoundRobinPolicy(local_dc=local_dc), request_timeout=timeout
    )
    cluster = Cluster(
        [host],
        port=port,
        protocol_version=protocol_version,
        connect_timeout=timeout,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
    )
    try:
        session = cluster.connect()
        row = session.execute("SELECT release_version FROM system.local").one()
    except (NoHostAvailable, DriverException, ConnectionException, OSError):
        return None
    finally:
        cluster.shutdown()
    return str(row.release_version) if row is not None else None


def redis_ping(host: str, port: int, timeout: float = 2.0) -> bool:
    """An inline PING; ready on ``+PONG``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith(b"+PONG")


def redis_cluster_info(host: str, port: int, timeout: float = 2.0) -> dict[str, str] | None:
    """A node's ``CLUSTER INFO`` (``cluster_state``, ``cluster_slots_assigned``,
    ``cluster_known_nodes``, ...), or None when it does not answer it."""
    return _redis_fields(host, port, b"CLUSTER INFO", timeout)


def redis_replication(host: str, port: int, timeout: float = 2.0) -> dict[str, str] | None:
    """A server's ``INFO replication`` (``role``, ``master_link_status``, ...), or None."""
    return _redis_fields(host, port, b"INFO replication", timeout)


def _redis_fields(host: str, port: int, command: bytes, timeout: float) -> dict[str, str] | None:
    """The ``key:value`` lines of an inline command's bulk reply."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(command + b"\r\n")
            reader = sock.makefile("rb")
            header = reader.readline()
            if not header.startswith(b"$"):
                return None  # an error: not a cluster node, or still loading
            body = reader.read(int(header[1:]))
    except (OSError, ValueError):
        return None
    lines = (line.split(":", 1) for line in body.decode().splitlines() if ":" in line)
    return {key: value for key, value in lines}
