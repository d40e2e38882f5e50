"""``compose.yaml`` against the Compose Specification's JSON schema (vendored in ``data/``, see
its README), and the invariants Tidings relies on: Redis persists (send idempotency and the
worker-id leases live there), the workers run in the roles ``tidings up`` runs them, every
long-running service has a health check, the application waits for healthy services, and
every ``TIDINGS_*`` variable is a setting."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tidings.processes import ROLES
from tidings.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"
APP_SERVICES = ("migrate", "deliver", "persist", "search", "gateway")
BACKING_SERVICES = ("kafka", "scylla", "redis")


@cache
def _compose() -> dict[str, Any]:
    # PyYAML resolves the anchors and aliases (`*tidings-env`) as Compose does.
    loaded = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _services() -> dict[str, Any]:
    """The single-node services: those of plain ``docker compose up`` (no profile)."""
    return {name: s for name, s in _compose()["services"].items() if "profiles" not in s}


def _cluster() -> dict[str, Any]:
    """The cluster profile's own services (``--profile cluster``)."""
    return {name: s for name, s in _compose()["services"].items() if "cluster" in s.get("profiles", [])}


def _all_services() -> dict[str, Any]:
    return dict(_compose()["services"])


def _schema_errors(document: dict[str, Any]) -> list[str]:
    schema = json.loads((DATA / "compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    assert _schema_errors(_compose()) == []


def test_the_schema_check_can_fail() -> None:
    """The vendored schema rejects what Compose rejects (it is the real one, not an empty one)."""
    broken = json.loads(json.dumps(_compose()))
    broken["services"]["redis"]["healthcheck"]["interval"] = 5
    broken["services"]["gateway"]["depends_on"]["redis"]["condition"] = "service_up"
    broken["services"]["deliver"]["restart_policy"] = "always"
    errors = _schema_errors(broken)
    assert any(e.startswith("services/redis/healthcheck/interval") for e in errors), errors
    assert any(e.startswith("services/gateway/depends_on") for e in errors), errors
    assert any("restart_policy" in e for e in errors), errors


def _redis_flags(command: list[str]) -> dict[str, str]:
    assert command[0] == "redis-server", command
    args = command[1:]
    assert len(args) % 2 == 0 and all(a.startswith("--") for a in args[::2]), args
    return {name[2:]: value for name, value in zip(args[::2], args[1::2], strict=True)}


def test_redis_persists_like_the_local_launcher() -> None:
    redis = _services()["redis"]
    flags = _redis_flags(redis["command"])
    assert flags["appendonly"] == "yes"
    assert flags["appendfsync"] in ("everysec", "always")
    # The append-only file is written to --dir, which must be a volume that outlives the container.
    mounts = {m.split(":")[1]: m.split(":")[0] for m in redis["volumes"]}
    assert flags.get("dir", "/data") in mounts
    assert mounts[flags.get("dir", "/data")] in _compose()["volumes"]


def test_redis_flags_match_the_launcher() -> None:
    """The same persistence flags as ``tidings/services/redis.py`` gives its redis-server."""
    source = (ROOT / "tidings" / "services" / "redis.py").read_text()
    flags = _redis_flags(_services()["redis"]["command"])
    for name in ("save", "appendonly", "appendfsync"):
        assert re.search(rf'"--{name}",\s*"{re.escape(flags[name])}"', source), name


def test_workers_run_in_the_roles_tidings_up_runs() -> None:
    services = _services()
    worker_roles = {name: argv for name, argv in ROLES.items() if argv[0] == "worker"}
    assert {"deliver", "persist"} <= set(worker_roles)
    for role, argv in worker_roles.items():
        assert services[role]["command"] == argv
    assert services["gateway"]["command"] == ROLES["gateway"]
    # No worker in role "all" (or without a role) beside them: it would project everything twice
    # under another consumer group.
    workers = [name for name, s in services.items() if s.get("command", [None])[0] == "worker"]
    assert sorted(workers) == sorted(worker_roles)
    for name in workers:
        assert "TIDINGS_WORKER_ROLE" not in services[name]["environment"]


def test_every_long_running_service_has_a_health_check() -> None:
    for name, service in _all_services().items():
        if name in ("migrate", "c-migrate", "redis-cluster-init"):
            assert service["restart"] == "no"
            continue
        check = service.get("healthcheck")
        assert check and check["test"] and not check.get("disable"), name
        assert service["restart"] == "unless-stopped", name


@pytest.mark.parametrize("name", APP_SERVICES)
def test_the_application_waits_for_healthy_services(name: str) -> None:
    depends = _services()[name]["depends_on"]
    for backing in BACKING_SERVICES:
        assert depends[backing]["condition"] == "service_healthy", (name, backing)
    if name != "migrate":
        assert depends["migrate"]["condition"] == "service_completed_successfully", name


def test_every_tidings_variable_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    fields = {f"TIDINGS_{f.upper()}" for f in Settings.model_fields}
    for name in APP_SERVICES:
        env = _services()[name]["environment"]
        unknown = {k for k in env if k.startswith("TIDINGS_")} - fields
        assert not unknown, (name, unknown)
        assert all(k.startswith("TIDINGS_") for k in env), name
    # And they parse as the containers' environment (the secret is interpolated by Compose).
    for key, value in _services()["gateway"]["environment"].items():
        monkeypatch.setenv(key, "s" * 32 if key == "TIDINGS_AUTH_SECRET" else str(value))
    parsed = Settings()
    assert parsed.cassandra_hosts == ["scylla"] and parsed.kafka_bootstrap == "kafka:19092"
    assert parsed.redis_host == "redis" and parsed.cassandra_protocol_version == 4


def test_docker_md_names_the_services_of_compose() -> None:
    text = (ROOT / "docs" / "docker.md").read_text()
    table = text.split("## What runs", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([a-z0-9-]+)` \|", table, flags=re.M))
    assert listed == set(_services())
    assert "no persistence" not in table


# --- The cluster profile (docs/scaling.md) ---

CLUSTER_KAFKA = ("kafka-1", "kafka-2", "kafka-3")
CLUSTER_SCYLLA = ("scylla-1", "scylla-2", "scylla-3")
CLUSTER_REDIS = tuple(f"redis-{i}" for i in range(1, 7))


def _depends(name: str) -> set[str]:
    """Every service ``name`` needs, transitively (what `docker compose up name` starts)."""
    services = _all_services()
    seen: set[str] = set()
    todo = [name]
    while todo:
        for dependency in services[todo.pop()].get("depends_on", {}):
            if dependency not in seen:
                seen.add(dependency)
                todo.append(dependency)
    return seen


def test_the_cluster_profile_has_three_brokers_three_nodes_and_a_redis_cluster() -> None:
    cluster = _cluster()
    assert set(CLUSTER_KAFKA + CLUSTER_SCYLLA + CLUSTER_REDIS) <= set(cluster)
    assert "haproxy" in cluster and "redis-cluster-init" in cluster
    # `docker compose --profile cluster up haproxy` brings the cluster and none of the single
    # node's Kafka or ScyllaDB (Redis and S3 are shared until the code speaks Redis Cluster).
    needed = _depends("haproxy")
    assert {"kafka", "scylla"}.isdisjoint(needed)
    assert set(CLUSTER_KAFKA + CLUSTER_SCYLLA) | {"c-gateway", "c-migrate"} <= needed


def test_cluster_kafka_is_one_quorum_of_three_with_replication_three() -> None:
    envs = [_cluster()[name]["environment"] for name in CLUSTER_KAFKA]
    assert sorted(e["KAFKA_NODE_ID"] for e in envs) == ["1", "2", "3"]
    assert len({e["CLUSTER_ID"] for e in envs}) == 1
    for env in envs:
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka-1:29093,2@kafka-2:29093,3@kafka-3:29093"
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://kafka-{env['KAFKA_NODE_ID']}:19092"


def test_cluster_scylla_nodes_share_a_seed_and_join_one_at_a_time() -> None:
    cluster = _cluster()
    for i, name in enumerate(CLUSTER_SCYLLA):
        command = cluster[name]["command"]
        assert command[command.index("--seeds") + 1] == "scylla-1"
        if i:
            assert cluster[name]["depends_on"] == {CLUSTER_SCYLLA[i - 1]: {"condition": "service_healthy"}}


def test_cluster_redis_nodes_are_cluster_enabled_and_persist() -> None:
    for name in CLUSTER_REDIS:
        flags = _redis_flags(_cluster()[name]["command"])
        assert flags["cluster-enabled"] == "yes" and flags["appendonly"] == "yes", name
    init = " ".join(_cluster()["redis-cluster-init"]["command"])
    assert "--cluster-replicas 1" in init and all(f"{n}:6379" in init for n in CLUSTER_REDIS)


def test_cluster_applications_replicate_and_read_at_quorum(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = _cluster()
    worker_roles = {name: argv for name, argv in ROLES.items() if argv[0] == "worker"}
    for role, argv in worker_roles.items():
        assert cluster[f"c-{role}"]["command"] == argv
        assert cluster[f"c-{role}"]["deploy"]["replicas"] == 2
    assert cluster["c-gateway"]["command"] == ROLES["gateway"] and "ports" not in cluster["c-gateway"]
    for name in ("c-gateway", *(f"c-{role}" for role in worker_roles)):
        for backing in (*CLUSTER_KAFKA, *CLUSTER_SCYLLA):
            assert cluster[name]["depends_on"][backing]["condition"] == "service_healthy", name
        assert cluster[name]["depends_on"]["c-migrate"]["condition"] == "service_completed_successfully"
    for key, value in cluster["c-gateway"]["environment"].items():
        monkeypatch.setenv(key, "s" * 32 if key == "TIDINGS_AUTH_SECRET" else str(value))
    parsed = Settings()
    assert parsed.kafka_replication == 3 and parsed.kafka_min_insync_replicas == 2
    assert parsed.cassandra_hosts == list(CLUSTER_SCYLLA)
    assert parsed.cassandra_replication_map() == {"class": "NetworkTopologyStrategy", "datacenter1": 3}
    assert parsed.cassandra_consistency == "LOCAL_QUORUM"


def test_cluster_haproxy_balances_as_the_launcher_does() -> None:
    """The compose HAProxy config keeps the launcher's rules (tidings/services/haproxy.py):
    /readyz checks, WebSockets by a consistent hash of the user, maxconn the gateway capacity."""
    from tidings.services.haproxy import HAProxy

    content = _compose()["configs"]["haproxy-cfg"]["content"]
    launcher = HAProxy(Settings(), [1, 2]).haproxy_cfg()
    for line in (
        "option httpchk GET /readyz",
        "http-check expect status 200",
        "balance hash var(txn.user)",
        "hash-type consistent",
        "url_param(token),jwt_payload_query('$.sub') if query_token",
        "http_auth_bearer,jwt_payload_query('$.sub') unless query_token",
        "use_backend gateways_ws if { path /v1/ws }",
        "timeout tunnel 120s",
        "hard-stop-after 60s",
    ):
        assert line in content and line in launcher, line
    capacity = Settings.model_fields["gateway_max_connections"].default
    assert f"maxconn {capacity} resolvers docker" in content
    assert "server-template gw 1-8 c-gateway:8787" in content


def test_cluster_gateways_stay_unready_as_long_as_the_launcher_s() -> None:
    """A stopping c-gateway answers /readyz 503 long enough for HAProxy's checks to take it out
    (the launcher's value, tidings/services/haproxy.py)."""
    from tidings.services.haproxy import DRAIN_UNREADY_S

    env = _compose()["services"]["c-gateway"]["environment"]
    assert float(env["TIDINGS_DRAIN_UNREADY_S"]) == DRAIN_UNREADY_S
