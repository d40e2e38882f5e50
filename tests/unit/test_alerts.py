"""The alert rules Tidings ships (docs/alerts.yml): promtool accepts them, its rule unit tests
(docs/alerts.test.yml: each alert fires past its threshold and stays quiet inside it) pass, and
every ``tidings_*`` series a rule reads is one Tidings exports.

promtool comes from Debian's ``prometheus`` package; ``python3 -m tidings test`` installs it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import projections.delivery_metrics
import query_api.metrics
import streams.adapters.metrics
import streams.push_metrics
from tidings.settings import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs"
RULES = DOCS / "alerts.yml"
RULE_TESTS = DOCS / "alerts.test.yml"
EXPORTERS = (query_api.metrics, streams.adapters.metrics, streams.push_metrics, projections.delivery_metrics)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (python3 -m tidings test does it)"
    return subprocess.run(
        [promtool, *args], cwd=DOCS, capture_output=True, text=True, timeout=120, check=False
    )


def _rules() -> list[dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_accepts_the_rules() -> None:
    result = _promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_the_rules_fire_and_stay_quiet_as_their_tests_say() -> None:
    result = _promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_rule_tests_can_fail(tmp_path: Path) -> None:
    """A rule whose threshold moved fails its promtool test: the tests check the thresholds."""
    (tmp_path / "alerts.yml").write_text(RULES.read_text().replace("> 0.2\n", "> 0.5\n"))
    (tmp_path / "alerts.test.yml").write_text(RULE_TESTS.read_text())
    promtool = shutil.which("promtool")
    assert promtool
    result = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "TidingsDeliveryP99High" in result.stdout + result.stderr


def _exported_series() -> set[str]:
    assert all(EXPORTERS)  # imported for their metrics' registration
    names: set[str] = set()
    for family in REGISTRY.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def test_every_tidings_series_in_the_rules_is_exported() -> None:
    used = {name for rule in _rules() for name in re.findall(r"\btidings_[a-z_]+", str(rule["expr"]))}
    assert len(used) >= 7
    assert used - _exported_series() == set()


@pytest.mark.parametrize(
    "alert",
    [
        "TidingsDeliveryP99High",
        "TidingsGatewayConnectionsNearCapacity",
        "TidingsConsumerLagGrowing",
        "TidingsEventsDeadLettered",
        "TidingsCassandraWriteP99High",
        "KafkaBrokerDown",
        "CassandraNodeDown",
        "RedisClusterMasterMissing",
    ],
)
def test_the_monitoring_list_is_covered_and_tested(alert: str) -> None:
    assert alert in {rule["alert"] for rule in _rules()}
    assert f"alertname: {alert}\n" in RULE_TESTS.read_text()


def test_the_capacity_alert_uses_the_gateways_configured_capacity() -> None:
    rule = next(r for r in _rules() if r["alert"] == "TidingsGatewayConnectionsNearCapacity")
    capacity = Settings.model_fields["gateway_max_connections"].default
    assert str(rule["expr"]).endswith(f"> 0.8 * {capacity}")
