"""One typed settings object for every runnable, read from ``TIDINGS_*`` environment variables.

Nothing here connects to anything; composition roots take a ``Settings`` and build from it.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_STRATEGIES = {"SimpleStrategy", "NetworkTopologyStrategy"}
_DATA_CENTRE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_cassandra_replication(replication: Mapping[str, object]) -> None:
    """``ValueError`` unless ``replication`` is a keyspace replication map Cassandra takes:
    ``SimpleStrategy`` with a ``replication_factor``, or ``NetworkTopologyStrategy`` with a
    factor per data centre (a whole number of at least 1 each)."""
    strategy = str(replication.get("class", "")).rsplit(".", 1)[-1]
    if strategy not in _STRATEGIES:
        raise ValueError(f"cassandra replication class must be one of {sorted(_STRATEGIES)}: {replication}")
    factors = {k: v for k, v in replication.items() if k != "class"}
    if strategy == "SimpleStrategy" and set(factors) != {"replication_factor"}:
        raise ValueError(f"SimpleStrategy takes replication_factor only: {replication}")
    if strategy == "NetworkTopologyStrategy" and not factors:
        raise ValueError(f"NetworkTopologyStrategy needs a factor per data centre: {replication}")
    for name, factor in factors.items():
        if not _DATA_CENTRE.fullmatch(name):
            raise ValueError(f"not a data centre name: {name!r}")
        if isinstance(factor, bool) or not str(factor).isdigit() or int(str(factor)) < 1:
            raise ValueError(f"replication factor of {name} must be a whole number >= 1: {factor!r}")


def _default_home() -> Path:
    return Path.home() / ".local" / "share" / "tidings"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TIDINGS_", extra="ignore", frozen=True)

    # Where the local launcher keeps service data, logs and pid files, and where downloaded
    # jars are cached. Both live outside the repository.
    state_dir: Path = Field(default_factory=lambda: _default_home() / "state")
    cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "tidings")

    # Kafka
    kafka_bootstrap: str = "127.0.0.1:19092"
    kafka_controller_port: int = 19093
    topic_prefix: str = "tidings."
    topic_partitions: int = 12
    # The gateway producer's linger, only while other sends are in flight (a lone send goes at
    # once): commands.adapters.kafka_log.LingeringProducer.
    kafka_linger_ms: int = Field(default=2, ge=0)
    # Replication of the topics `tidings migrate` creates (and of Faust's own), and their
    # `min.insync.replicas`: the producers write with acks=all, so a send is acknowledged once
    # this many replicas have it. One broker needs 1 and 1; a cluster of three, e.g. 3 and 2.
    kafka_replication: int = Field(default=1, ge=1)
    kafka_min_insync_replicas: int = Field(default=1, ge=1)

    # Cassandra / ScyllaDB
    cassandra_hosts: list[str] = ["127.0.0.1"]
    cassandra_port: int = 19042
    cassandra_storage_port: int = 17000
    cassandra_keyspace: str = "tidings"
    # The keyspace's replication map, JSON in the environment, e.g.
    # TIDINGS_CASSANDRA_REPLICATION='{"class": "NetworkTopologyStrategy", "datacenter1": 3}'.
    # Unset: SimpleStrategy with `cassandra_replication_factor` (1: one node).
    cassandra_replication: dict[str, str | int] | None = None
    cassandra_replication_factor: int = Field(default=1, ge=1)
    # 5 for Cassandra 5.0, 4 for ScyllaDB.
    cassandra_protocol_version: int = 5
    cassandra_local_dc: str = "datacenter1"
    # The consistency level of every read and write. One node: LOCAL_ONE (the driver's own
    # default). The cluster profile (replication 3) sets LOCAL_QUORUM: 2 of the 3 replicas in
    # the local data centre for reads and writes, so a read sees every acknowledged write and
    # one node may be down. LOCAL_ rather than plain QUORUM: the same 2 of 3 in one data
    # centre, and no cross-DC round trip once there is a second one (docs/scaling.md).
    cassandra_consistency: Literal["ONE", "LOCAL_ONE", "QUORUM", "LOCAL_QUORUM", "EACH_QUORUM", "ALL"] = (
        "LOCAL_ONE"
    )
    # How many partitions' small row groups the persist worker and replay may put in one
    # UNLOGGED batch (projections/adapters/cql.py). The node's own thresholds bound it too: the
    # client reads `unlogged_batch_across_partitions_warn_threshold` and the batch size
    # thresholds from system_views.settings and stays below them (upstream: 10 partitions,
    # 5 KiB; Tidings' node: 100, 64 KiB, tidings/services/cassandra.py), so no request draws
    # the node's warning. The coordinator a batch is routed to (by its first partition)
    # forwards the other partitions' mutations to their replicas: free while every node holds
    # every partition (one node; three nodes at replication 3), a hop per partition once nodes
    # outnumber the replication factor, where 1 (one batch per partition, token-aware) is the
    # choice.
    cassandra_batch_partitions: int = Field(default=100, ge=1, le=1000)

    # Redis
    redis_host: str = "127.0.0.1"
    redis_port: int = 16379
    redis_db: int = 0
    # Redis Cluster seed nodes, ``host:port,host:port`` (any of the cluster's nodes; the client
    # discovers the rest). Empty: one Redis at redis_host:redis_port, database redis_db. A
    # cluster has no database numbers, so redis_db must stay 0 with it (docs/operations.md).
    redis_cluster_nodes: str = ""
    # Where the launcher's Redis Cluster (tidings/services/redis_cluster.py) puts its six nodes:
    # this port and the next five (and each port + 10000 for the cluster bus).
    redis_cluster_base_port: int = 7101

    # Gateway
    http_host: str = "127.0.0.1"
    http_port: int = 8787
    gateway_workers: int = 1
    # The WebSockets one gateway (all its worker processes) is sized for. The gateway does not
    # refuse past it: HAProxy's `maxconn` per gateway server is this (tidings/services/haproxy.py),
    # and the alert "connections over 80 % of capacity" (docs/alerts.yml) uses the same number.
    gateway_max_connections: int = Field(default=10_000, ge=1)
    # HS256 secret for client JWTs. When unset, `tidings` uses (and creates) a secret kept in
    # the state folder, so that `tidings up` and `tidings token` agree on a development machine.
    auth_secret: SecretStr | None = None

    # Presence (lazy): a socket's presence lives `presence_ttl_s` past its last heartbeat;
    # clients heartbeat every `heartbeat_interval_s` (told in the protocol); a socket silent for
    # `idle_close_s` is closed. Every `presence_sweep_s` each gateway reports the heartbeats it
    # heard, closes silent sockets and reaps users whose sockets lapsed.
    presence_ttl_s: float = 60.0
    heartbeat_interval_s: float = 30.0
    idle_close_s: float = 90.0
    presence_sweep_s: float = 5.0
    max_watch: int = 500
    # A socket that sent no frame but pings for this long counts as away (until its next frame);
    # the user is away when all their sockets are.
    presence_away_after_s: float = 300.0
    # A draining gateway (SIGTERM) tells each socket to reconnect after a random delay up to
    # this, then closes it with 1012, so its clients do not all reconnect at once.
    drain_spread_s: float = 3.0
    # Before that, it answers /readyz 503 for this long while still serving its sockets, so a
    # load balancer's health checks take it out first and the reconnects land on the others
    # (the cluster profile: 9 s, HAProxy's 2 failed checks even if each takes its 3 s timeout).
    drain_unready_s: float = 0.0

    # Worker
    worker_app_id: str = "tidings-projector"
    # "deliver": hot cache and pushes; "persist": Cassandra read models; "all": both in one
    # process. Each role is its own consumer group, so pushes never wait for Cassandra.
    # "notify"/"push": offline notifications (docs/push.md); "search": the full-text index shards
    # (projections.adapters.search), each its own consumer group.
    worker_role: Literal["all", "deliver", "persist", "notify", "push", "search"] = "all"
    worker_web_port: int = 6066
    worker_batch_size: int = 500
    # How long a batch waits for more events after its first one (streams.adapters.faust_take):
    # the deliver role's events are pushed after it, so it is short.
    worker_batch_window_s: float = 0.002
    # The persist, notify and search roles gather a batch for up to their window: each of their
    # Kafka fetches waits at the broker for it (then the short window above collects what the
    # fetch brought). Nobody waits on them (pushes and the hot cache come from the deliver
    # role), and fuller, fewer fetches and batches cost less per event: at 200 msgs/s, 50 ms
    # for all three cost those roles and Cassandra 0.4-0.7 ms of CPU per message more than
    # these (docs/benchmarks.md, session 16). Persist is the warm tier behind history pages,
    # the inbox and /v1/sync (the hot tier and the pushes cover its lag); a notification goes
    # to an offline device; the search freshness bound counts from the ack, so the window is
    # inside it.
    worker_persist_batch_window_s: float = Field(default=0.1, gt=0)
    worker_notify_batch_window_s: float = Field(default=0.25, gt=0)
    worker_search_batch_window_s: float = Field(default=0.25, gt=0)
    # How fast a dead worker's partitions move to a live one (Kafka's default is 45 s).
    worker_session_timeout_s: float = 10.0

    # Tracing (OpenTelemetry): "off" makes no span objects at all; "console" prints spans;
    # "otlp" sends them to an OTLP/HTTP collector at `otlp_endpoint` (needs the `otlp` extra);
    # "file" appends them as JSON lines to `tracing_file` (tests, debugging).
    tracing: Literal["off", "console", "otlp", "file"] = "off"
    otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"
    tracing_file: Path | None = None
    # How often a worker reads its consumer group's committed and end offsets (lag metrics).
    lag_interval_s: float = 5.0

    # Domain limits (the protocol's defaults)
    max_body_chars: int = 4000
    max_frame_bytes: int = 64 * 1024
    fanout_threshold: int = 500
    max_group_members: int = 200_000
    hot_history_size: int = 50
    idempotency_ttl_s: int = 24 * 3600
    # Cassandra `messages` partitions are (conversation, bucket); a bucket spans this many ms.
    message_bucket_ms: int = 10 * 24 * 3600 * 1000

    # Cold archive: Parquet plus its manifest (default: <state_dir>/archive). Gateways read it
    # for old history, so on several hosts it must be shared storage.
    archive_dir: Path | None = None
    # Events older than this are archived (the warm window), e.g. "90d", "12h", "0s".
    archive_older_than: str = "90d"
    archive_chunk_events: int = 500_000

    # Abuse limits, per user and shared by every gateway process (token buckets in Redis):
    # a rate per second and a burst. Far above what a person or a reconnecting client does.
    rate_send_per_s: float = 20.0
    rate_send_burst: int = 50
    rate_typing_per_s: float = 5.0
    rate_typing_burst: int = 20
    rate_presence_per_s: float = 2.0
    rate_presence_burst: int = 20
    rate_connect_per_s: float = 1.0
    rate_connect_burst: int = 30
    # Origins allowed to open a WebSocket (browsers send one; other clients none). Empty:
    # any. JSON in the environment: TIDINGS_ALLOWED_ORIGINS='["https://chat.example"]'.
    allowed_origins: list[str] = []

    # Web client (query_api.web): `POST /v1/dev/token` hands a token to anyone who names a user.
    # For local development only (`tidings up` turns it on); never in production.
    dev_login: bool = False

    # Media: an S3-compatible object store (the launcher's versitygw on loopback by default;
    # any S3 or R2 endpoint in production). Development credentials; set real ones in production.
    s3_host: str = "127.0.0.1"
    s3_port: int = 19070
    # The endpoint the gateway and workers use; default http://<s3_host>:<s3_port>.
    s3_endpoint: str | None = None
    # The endpoint clients reach the store by, when it differs (containers): presigned URLs are
    # signed for it. Default: s3_endpoint.
    s3_public_endpoint: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key: str = "tidings-dev"
    s3_secret_key: SecretStr = SecretStr("tidings-dev-secret-key-change-me")
    s3_bucket: str = "tidings-media"
    # Size limits: a direct upload streams through the gateway; a presigned one goes to the store.
    media_max_direct_bytes: int = 25 * 1024 * 1024
    media_max_upload_bytes: int = 2 * 1024 * 1024 * 1024
    # How long a presigned download or upload URL lives (the protocol: <= 15 min to download).
    media_url_ttl_s: int = 900
    media_allowed_types: list[str] = [
        "image/jpeg",
        "image/png",
        "image/webp",
        "image/gif",
        "video/mp4",
        "video/webm",
        "audio/mpeg",
        "audio/ogg",
        "application/pdf",
        "text/plain",
        "application/octet-stream",
        "application/zip",
    ]
    # Images larger than this many pixels are refused (decompression bombs).
    media_max_pixels: int = 50_000_000
    media_thumbnail_px: int = 320
    # Uploads per user: a rate (token bucket) and bytes per UTC day, shared by every gateway.
    rate_media_per_s: float = 2.0
    rate_media_burst: int = 20
    media_daily_bytes: int = 2 * 1024 * 1024 * 1024
    # Search: the index shards (default: <state_dir>/search; the search worker writes them and
    # gateways on the same host read them), and searches per user.
    search_dir: Path | None = None
    # How often each shard commits while it has new messages: the time to searchable (the
    # contract: within 2 s of the ack). A commit costs 7-12 ms of CPU here whatever it holds (a
    # segment of 6 files, each registered in tantivy's .managed.json, all fsynced): with 12
    # shards, 1 s is 12 commits a second at most, 0.5 s was 24 (docs/search.md, "Freshness").
    search_commit_interval_s: float = 1.0
    # While caught up, a shard whose news came within the interval of its last commit waits
    # until its oldest pending message is this old (from its ack) before committing: with a
    # steady stream, a commit per shard every ~1.4 s instead of every 1 s, each message
    # searchable at most this long after its ack plus the commit (the contract's 2 s). A shard
    # quiet for the interval still commits at once. Below the interval: no effect.
    search_commit_age_s: float = 1.5
    # Behind (a catch-up, a backlog), a shard waits half its events' lateness between commits,
    # up to this long: fewer, larger segments while freshness is lost anyway (docs/search.md).
    search_commit_most_s: float = 5.0
    rate_search_per_s: float = 5.0
    rate_search_burst: int = 30
    # Uploaded but never sent for this long: deleted by `tidings media gc-orphans`.
    media_orphan_age_s: int = 24 * 3600

    # Push notifications to offline devices (the `notify` worker role; docs/push.md). Webhook
    # bodies are signed with this secret (HMAC-SHA256); unset: a development secret in the
    # state folder. Registrations may point only at the hosts listed (comma-separated).
    push_webhook_secret: SecretStr | None = None
    push_webhook_hosts: str = "127.0.0.1,localhost"
    push_webpush_hosts: str = (
        "fcm.googleapis.com,updates.push.services.mozilla.com,web.push.apple.com,"
        "wns2-par02p.notify.windows.com"
    )
    # Web Push (RFC 8292) VAPID: the server's P-256 key (PEM; unset: one generated into the state
    # folder) and the contact the push services see in each token.
    push_vapid_private_key: SecretStr | None = None
    push_vapid_subject: str = "mailto:push@tidings.invalid"
    # How long a push service keeps an undelivered Web Push notification (its TTL header).
    push_webpush_ttl_s: int = 24 * 3600
    # FCM (HTTP v1): a service account's JSON key file; unset: FCM registrations are accepted
    # and their notifications dead-lettered. The project defaults to the key's project_id.
    push_fcm_credentials_file: Path | None = None
    push_fcm_project_id: str | None = None
    push_fcm_base_url: str = "https://fcm.googleapis.com"
    # APNs (token auth): the .p8 key, its key id, the team id and the app's bundle id (topic).
    push_apns_key_file: Path | None = None
    push_apns_key_id: str | None = None
    push_apns_team_id: str | None = None
    push_apns_topic: str | None = None
    push_apns_base_url: str = "https://api.push.apple.com"
    push_apns_expiration_s: int = 24 * 3600
    # Messages to one device within this window go in one notification.
    push_window_s: float = 2.0
    # One delivery attempt's limit; failed deliveries are retried with backoff (doubling up to
    # push_max_backoff_s) for push_retry_for_s, then dead-lettered.
    push_timeout_s: float = 5.0
    push_retry_for_s: float = 600.0
    push_first_backoff_s: float = 1.0
    push_max_backoff_s: float = 60.0
    # Deliveries at once per sender process (each reads Cassandra, POSTs and writes Redis).
    push_max_in_flight: int = 256

    @model_validator(mode="after")
    def _check_replication(self) -> Settings:
        if self.kafka_min_insync_replicas > self.kafka_replication:
            raise ValueError(
                f"kafka_min_insync_replicas ({self.kafka_min_insync_replicas}) is more than "
                f"kafka_replication ({self.kafka_replication}): no acks=all write could succeed"
            )
        if self.cassandra_replication is not None:
            check_cassandra_replication(self.cassandra_replication)
        return self

    @model_validator(mode="after")
    def _check_redis_cluster(self) -> Settings:
        for item in filter(None, (part.strip() for part in self.redis_cluster_nodes.split(","))):
            host, _, port = item.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"redis_cluster_nodes: {item!r} is not host:port")
        if self.redis_cluster_nodes.strip() and self.redis_db != 0:
            raise ValueError(f"redis_db is {self.redis_db}: a Redis Cluster has only database 0")
        return self

    def cassandra_replication_map(self) -> dict[str, str | int]:
        """The replication map every keyspace is created with."""
        if self.cassandra_replication is not None:
            return dict(self.cassandra_replication)
        return {"class": "SimpleStrategy", "replication_factor": self.cassandra_replication_factor}

    def background_fetch_wait_ms(self, role: Literal["persist", "notify", "search"]) -> int:
        """How long a Kafka fetch of the persist, notify or search role gathers events: the
        role's batch window, so its fetches and batches per second stay near 1 / window at any
        rate."""
        window = {
            "persist": self.worker_persist_batch_window_s,
            "notify": self.worker_notify_batch_window_s,
            "search": self.worker_search_batch_window_s,
        }[role]
        return max(1, round(window * 1000))

    @property
    def kafka_host(self) -> str:
        return self.kafka_bootstrap.split(",")[0].rsplit(":", 1)[0]

    @property
    def kafka_port(self) -> int:
        return int(self.kafka_bootstrap.split(",")[0].rsplit(":", 1)[1])

    @property
    def archive_root(self) -> Path:
        return self.archive_dir if self.archive_dir is not None else self.state_dir / "archive"

    @property
    def search_root(self) -> Path:
        return self.search_dir if self.search_dir is not None else self.state_dir / "search"

    @property
    def faust_root(self) -> Path:
        """Where the workers' Faust apps make their (empty) directories (``streams.app``)."""
        return self.state_dir / "faust"

    @property
    def s3_endpoint_url(self) -> str:
        return self.s3_endpoint or f"http://{self.s3_host}:{self.s3_port}"

    @property
    def redis_cluster(self) -> list[tuple[str, int]]:
        """The Redis Cluster seed nodes, ``[]`` in single-instance mode."""
        nodes = []
        for item in filter(None, (part.strip() for part in self.redis_cluster_nodes.split(","))):
            host, _, port = item.rpartition(":")
            nodes.append((host, int(port)))
        return nodes

    @property
    def redis_url(self) -> str:
        return f"redis://{self.redis_host}:{self.redis_port}/{self.redis_db}"

    def resolved_auth_secret(self) -> str:
        """The JWT secret: ``TIDINGS_AUTH_SECRET``, else a development secret in the state folder."""
        if self.auth_secret is not None:
            return self.auth_secret.get_secret_value()
        path = self.state_dir / "auth-secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text().strip()

    def resolved_push_webhook_secret(self) -> str:
        """The webhook signing secret: ``TIDINGS_PUSH_WEBHOOK_SECRET``, else a development
        secret in the state folder (so tests and local receivers can check signatures)."""
        if self.push_webhook_secret is not None:
            return self.push_webhook_secret.get_secret_value()
        return self._state_secret("push-webhook-secret", lambda: secrets.token_urlsafe(32))

    def resolved_vapid_private_pem(self) -> bytes:
        """The VAPID key: ``TIDINGS_PUSH_VAPID_PRIVATE_KEY``, else a development key in the
        state folder (the gateway hands its public half to web clients)."""
        if self.push_vapid_private_key is not None:
            return self.push_vapid_private_key.get_secret_value().encode()
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        def new_key() -> str:
            key = ec.generate_private_key(ec.SECP256R1())
            return key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode()

        return self._state_secret("vapid-private.pem", new_key).encode()

    def _state_secret(self, name: str, make: Callable[[], str]) -> str:
        """A development secret kept in the state folder, made once. Made whole beside it,
        then linked into place: of processes starting together, the first link wins and
        every one reads the same secret."""
        path = self.state_dir / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            draft = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
            draft.write_text(make())
            draft.chmod(0o600)
            try:
                os.link(draft, path)
            except FileExistsError:
                pass
            finally:
                draft.unlink()
        return path.read_text().strip()

    def hosts(self, listed: str) -> list[str]:
        return [h.strip().lower() for h in listed.split(",") if h.strip()]
