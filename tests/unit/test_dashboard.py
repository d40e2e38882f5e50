"""The Grafana dashboard has a panel for every metric the gateway and the workers export."""

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from query_api import metrics as gateway_metrics
from streams import push_metrics
from streams.adapters import metrics as worker_metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"


def _metric_names() -> set[str]:
    names = set()
    for module in (gateway_metrics, worker_metrics, push_metrics):
        for value in vars(module).values():
            if isinstance(value, (Counter, Gauge, Histogram)):
                names.add(value._name)
    return names


def test_every_metric_has_a_panel() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    used = set(re.findall(r"tidings_[a-z_]+", exprs))
    missing = {n for n in _metric_names() if not any(u.startswith(n) for u in used)}
    assert not missing, f"no panel for {sorted(missing)}"
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


ALERTS = DASHBOARD.parent / "alerts.yml"
# The exporters docs/alerts.yml assumes beside Tidings' own, and HAProxy's (its stats port).
OTHER_METRICS = {"up", "redis_up", "redis_instance_info", "haproxy_server_current_sessions"}
OTHER_METRICS |= {"haproxy_server_limit_sessions", "haproxy_server_status"}


def _panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = json.loads(DASHBOARD.read_text())["panels"]
    return panels


def _promql(expr: str) -> str:
    """A panel's expression with Grafana's variables as a rule file would have them."""
    return (
        expr.replace("$__rate_interval", "5m").replace("$__range", "1h").replace("$gateway_capacity", "10000")
    )


def test_the_cluster_row_has_its_panels_on_real_series() -> None:
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in _panels()}
    cluster = {
        "WebSockets per gateway vs capacity": ["tidings_ws_connections", "haproxy_server_limit_sessions"],
        "Send → deliver P99 per gateway": ["sum by (instance, le)", "tidings_delivery_seconds_bucket"],
        "Consumer lag per group": ["sum by (group)", "tidings_consumer_lag"],
        "Consumer lag per group and partition": ["by (group, topic, partition)"],
        "Nodes up: Kafka brokers, Cassandra nodes, Redis, gateways, workers": [
            'up{job="kafka"}',
            'up{job="cassandra"}',
            'redis_up{job="redis"}',
        ],
        "Redis Cluster masters answering": ['redis_instance_info{job="redis", role="master"}'],
    }
    for title, needles in cluster.items():
        assert title in exprs, title
        for needle in needles:
            assert needle in exprs[title], (title, needle)
    # Every job a panel names is one the alert rules' header documents.
    header = ALERTS.read_text().split("assume these job names:")[1].split("groups:")[0]
    documented = {
        j for line in header.splitlines() for j in re.split(r"[ ,]+", line[1:].strip().split("  ")[0]) if j
    }
    named = {j for p in re.findall(r'job=~?"([^"]+)"', " ".join(exprs.values())) for j in p.split("|")}
    assert named and named <= documented, (named, documented)
    # Every other series is one of the known exporters'.
    selected = set(re.findall(r"\b([a-z_]+)\s*[{\[]", " ".join(exprs.values())))
    foreign = {s for s in selected if not s.startswith("tidings_")}
    assert foreign and foreign <= OTHER_METRICS, foreign - OTHER_METRICS


def test_the_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], int] = {}
    for p in _panels():
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, (p["title"], cells.get((x, y)))
                cells[(x, y)] = p["id"]


def test_promtool_parses_every_panel_expression(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (python3 -m tidings test does it)"
    rules = [
        {"record": f"panel_{p['id']}_{t['refId']}", "expr": _promql(t["expr"])}
        for p in _panels()
        for t in p["targets"]
    ]
    path = tmp_path / "panels.yml"
    path.write_text(json.dumps({"groups": [{"name": "panels", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
