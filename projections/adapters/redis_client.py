"""The one way Tidings opens a Redis connection pool: with retries, as redis-py's ``from_url``
has none by default and a restarted server otherwise fails the first command."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError, TimeoutError


def make_redis(host: str, port: int, db: int = 0, *, max_connections: int = 64) -> Redis:
    """A client whose pool waits for a free connection (up to 5 s) instead of failing: redis-py's
    default pool raises ``MaxConnectionsError`` at once when many requests are in flight."""
    pool = BlockingConnectionPool(
        host=host,
        port=port,
        db=db,
        max_connections=max_connections,
        timeout=5,
        socket_timeout=5,
        socket_connect_timeout=5,
        health_check_interval=15,
        retry=Retry(ExponentialWithJitterBackoff(cap=2, base=0.1), 5),
        retry_on_error=[ConnectionError, TimeoutError],
    )
    return Redis.from_pool(pool)  # owns the pool: aclose() closes its connections
