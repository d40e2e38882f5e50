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
    for name, service in _services().items():
        if name == "migrate":
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
