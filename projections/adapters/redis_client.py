"""The one way Tidings opens Redis: a single instance, or a Redis Cluster when
``TIDINGS_REDIS_CLUSTER_NODES`` names its nodes. Both with retries, as redis-py's defaults
have none for a single instance and a restarted server otherwise fails the first command.

The two modes differ in three places, all handled here or by a helper from here:

- the client (``Redis`` on a blocking pool, or ``RedisCluster``, which routes each command to
  its key's slot and splits pipelines per node);
- delivery channels: plain ``PUBLISH``/``SUBSCRIBE`` on one instance, sharded
  ``SPUBLISH``/``SSUBSCRIBE`` on a cluster (a plain PUBLISH there is broadcast to every node
  over the cluster bus; a sharded one goes only to the channel's slot's node): ``publish``;
- keys: every multi-key command, script and transaction must touch one slot, which the key
  builders' hash tags see to (``events.keys``), so nothing here.
"""

from __future__ import annotations

from typing import Any, TypeAlias

from redis.asyncio import BlockingConnectionPool, Connection, Redis, RedisCluster
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, ClusterPipeline
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError, TimeoutError
from redis.utils import HIREDIS_AVAILABLE

RedisClient: TypeAlias = Redis | RedisCluster
AnyPipeline: TypeAlias = Pipeline | ClusterPipeline

# Connections per cluster node. redis-py's cluster pool has no blocking mode: past this many
# commands in flight to one node it raises MaxConnectionsError (a 503 to the client) instead of
# waiting, so it is set well above what the pipelined adapters keep in flight.
CLUSTER_MAX_CONNECTIONS = 256


def _retry() -> Retry:
    return Retry(ExponentialWithJitterBackoff(cap=2, base=0.1), 5)


class HiredisPackingConnection(Connection):
    """redis-py's asyncio connection, packing commands with hiredis as its sync client does:
    the asyncio client packs in pure Python (redis-py issue #4176), 2.2-3.5 µs a command on this
    box against 0.3-0.5 µs, the same bytes (``tests/unit/test_redis_packing.py``). Given to the
    pool as its documented ``connection_class``; the Python packer stays for a client that
    encodes other than UTF-8 (hiredis writes UTF-8), and when hiredis is not installed."""

    _packer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        encoder = self.encoder
        if (
            not HIREDIS_AVAILABLE
            or encoder.encoding.lower() not in ("utf-8", "utf8")
            or encoder.encoding_errors != "strict"
        ):
            return super().pack_command(*args)
        return self._packer.pack(*args)


def make_redis(host: str, port: int, db: int = 0, *, max_connections: int = 64) -> Redis:
    """A client whose pool waits for a free connection (up to 5 s) instead of failing: redis-py's
    default pool raises ``MaxConnectionsError`` at once when many requests are in flight."""
    pool = BlockingConnectionPool(
        connection_class=HiredisPackingConnection,
        host=host,
        port=port,
        db=db,
        max_connections=max_connections,
        timeout=5,
        socket_timeout=5,
        socket_connect_timeout=5,
        health_check_interval=15,
        retry=_retry(),
        retry_on_error=[ConnectionError, TimeoutError],
    )
    return Redis.from_pool(pool)  # owns the pool: aclose() closes its connections


class InitializedRedisCluster(RedisCluster):
    """redis-py's cluster client, which learns the slots before it routes a command.

    redis-py 8.1 picks a command's routing policy before it initializes. A client with no
    default node yet routes the command as keyless. That is true of a new client, and of one
    just closed by ``aclose``, which redis-py itself calls after every fifth MOVED and on
    CLUSTERDOWN. A keyless command goes to the default node, which answers MOVED, and the
    fifth MOVED closes every connection. Commands in flight on other tasks then lose their
    replies and are retried (a retried ``SET NX`` finds its own key), or fail inside
    redis-py if still connecting. Initializing first (``initialize`` takes a lock, and
    returns at once when done) routes every command by its key's slot."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self.nodes_manager.default_node is None:
            await self.initialize()
        return await super().execute_command(*args, **kwargs)


def make_redis_cluster(nodes: list[tuple[str, int]]) -> RedisCluster:
    """A cluster client seeded with ``nodes`` (it discovers the others with CLUSTER SLOTS and
    follows MOVED/ASK redirections and failovers)."""
    return InitializedRedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        max_connections=CLUSTER_MAX_CONNECTIONS,
        socket_timeout=5,
        socket_connect_timeout=5,
        health_check_interval=15,
        retry=_retry(),
    )


def redis_from(cluster_nodes: list[tuple[str, int]], host: str, port: int, db: int) -> RedisClient:
    """A cluster client when ``cluster_nodes`` (``Settings.redis_cluster``) names any, else one
    instance's at ``host:port``, database ``db``."""
    if cluster_nodes:
        return make_redis_cluster(cluster_nodes)
    return make_redis(host, port, db)


def is_cluster(client: RedisClient | AnyPipeline) -> bool:
    return isinstance(client, (RedisCluster, ClusterPipeline))


def publish(pipe: AnyPipeline, channel: str, payload: bytes) -> None:
    """Queue a delivery publish on ``pipe``: sharded (SPUBLISH, to the channel's slot's node) on
    a cluster, plain PUBLISH on one instance. The hub subscribes to match (``ShardedSubscriber``)."""
    if isinstance(pipe, ClusterPipeline):
        pipe.spublish(channel, payload)
    else:
        pipe.publish(channel, payload)
